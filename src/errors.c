/* errors.c - the portable error names Lua sees (README.md lists them). */
#include "np.h"

static const char *const err_names[NP_ERR_COUNT] = {
  "OK", "EOF", "WOULDBLOCK", "NOT_FOUND", "PIPE_BUSY", "BROKEN_PIPE",
  "NOT_CONNECTED", "ACCESS_DENIED", "TIMEOUT", "CLOSED", "CANCELLED",
  "INVALID_NAME", "INVALID_ARGUMENT", "ADDRESS_IN_USE", "NO_MEMORY",
  "IO_ERROR",
};

const char *np_err_name(np_err e) {
  return (e >= 0 && e < NP_ERR_COUNT) ? err_names[e] : "IO_ERROR";
}
