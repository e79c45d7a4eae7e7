/* errors_unix.c - errno values to portable names and messages. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "unix.h"

np_err np_errno_err(int code) {
  switch (code) {
    case 0: return NP_OK;
    case ENOENT:
    case ECONNREFUSED: return NP_NOT_FOUND; /* a socket file nobody serves */
    case EAGAIN: return NP_PIPE_BUSY;       /* connect: the backlog is full */
    case EPIPE:
    case ECONNRESET: return NP_BROKEN_PIPE;
    case ENOTCONN: return NP_NOT_CONNECTED;
    case EACCES:
    case EPERM: return NP_ACCESS_DENIED;
    case ETIMEDOUT: return NP_TIMEOUT;
    case ENAMETOOLONG:
    case ENOTDIR:
    case ELOOP: return NP_INVALID_NAME;
    case EINVAL:
    case EMSGSIZE:
    case EPROTOTYPE: return NP_INVALID_ARGUMENT;
    case EADDRINUSE: return NP_ADDRESS_IN_USE;
    case ENOMEM:
    case ENOBUFS: return NP_NO_MEMORY;
    default: return NP_IO_ERROR;
  }
}

void np_status_errno(np_status *st, np_err err, int code) {
  st->err = err;
  st->code = code;
}

/* The module's own outcomes come from np_own_message (errors.c); the OS's
 * from strerror. */
const char *np_status_message(const np_status *st, char *buf, size_t size) {
  const char *own = np_own_message(st);
  if (own) return own;
  if (st->err == NP_PIPE_BUSY) /* EAGAIN would say less */
    return "all pipe instances are busy";
  if (st->code == 0) {
    snprintf(buf, size, "%s", np_err_name(st->err));
    return buf;
  }
  {
    /* GNU strerror_r (we define _GNU_SOURCE): may return a static string
     * instead of filling buf. */
    const char *msg = strerror_r((int)st->code, buf, size);
    if (msg != buf) snprintf(buf, size, "%s", msg);
  }
  return buf;
}
