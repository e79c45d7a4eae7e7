/* errors.c - the portable error names Lua sees (README.md lists them). */
#include "np.h"

static const char *const err_names[NP_ERR_COUNT] = {
  "OK", "EOF", "WOULDBLOCK", "NOT_FOUND", "PIPE_BUSY", "BROKEN_PIPE",
  "NOT_CONNECTED", "ACCESS_DENIED", "TIMEOUT", "CLOSED", "CANCELLED",
  "INVALID_NAME", "INVALID_ARGUMENT", "ADDRESS_IN_USE", "NO_MEMORY",
  "IO_ERROR",
};

/* The module's own outcomes read the same on every platform; NULL means
 * the OS has the words (FormatMessage, strerror). */
const char *np_own_message(const np_status *st) {
  switch (st->err) {
    case NP_EOF: return "end of stream (the peer closed the pipe)";
    case NP_CLOSED: return "pipe closed";
    case NP_CANCELLED: return "operation cancelled";
    case NP_WOULDBLOCK: return "operation would block";
    case NP_TIMEOUT: return st->code == 0 ? "timed out" : NULL;
    /* (ended by a disconnect() before the system saw it: no code) */
    case NP_NOT_CONNECTED: return st->code == 0 ? "not connected" : NULL;
    default: return NULL;
  }
}

const char *np_err_name(np_err e) {
  return (e >= 0 && e < NP_ERR_COUNT) ? err_names[e] : "IO_ERROR";
}
