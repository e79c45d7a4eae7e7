/* errors_win.c - Win32 error codes to portable names and messages. */
#include <stdio.h>
#include <string.h>

#include "win.h"

np_err np_win_error(DWORD err, np_op op) {
  switch (err) {
    case ERROR_SUCCESS: return NP_OK;
    case ERROR_FILE_NOT_FOUND:
    case ERROR_PATH_NOT_FOUND: return NP_NOT_FOUND;
    case ERROR_PIPE_BUSY: return NP_PIPE_BUSY;
    /* A broken pipe on a read is the end of the stream
     * (docs/windows-internals.md #7). */
    case ERROR_BROKEN_PIPE:
    case ERROR_NO_DATA: return op == NP_OP_READ ? NP_EOF : NP_BROKEN_PIPE;
    case ERROR_PIPE_NOT_CONNECTED:
    case ERROR_PIPE_LISTENING: return NP_NOT_CONNECTED;
    case ERROR_ACCESS_DENIED: return NP_ACCESS_DENIED;
    case ERROR_SEM_TIMEOUT:
    case WAIT_TIMEOUT:
    case ERROR_TIMEOUT: return NP_TIMEOUT;
    case ERROR_OPERATION_ABORTED: return NP_CANCELLED;
    case ERROR_INVALID_NAME:
    case ERROR_BAD_PATHNAME:
    case ERROR_NO_UNICODE_TRANSLATION: return NP_INVALID_NAME;
    case ERROR_INVALID_PARAMETER:
    case ERROR_INVALID_SECURITY_DESCR: return NP_INVALID_ARGUMENT;
    case ERROR_NOT_ENOUGH_MEMORY:
    case ERROR_OUTOFMEMORY:
    case ERROR_NO_SYSTEM_RESOURCES: return NP_NO_MEMORY;
    default: return NP_IO_ERROR;
  }
}

void np_win_status(np_status *st, DWORD err, np_op op) {
  st->err = np_win_error(err, op);
  st->code = (long)err;
}

/* The OS's words come from FormatMessage. */
const char *np_status_message(const np_status *st, char *buf, size_t size) {
  const char *own = np_own_message(st);
  DWORD n;
  if (own) return own;
  if (st->code == 0) { /* an outcome of ours: FormatMessage would say "success" */
    snprintf(buf, size, "%s", np_err_name(st->err));
    return buf;
  }
  n = FormatMessageA(FORMAT_MESSAGE_FROM_SYSTEM | FORMAT_MESSAGE_IGNORE_INSERTS,
                     NULL, (DWORD)st->code, MAKELANGID(LANG_NEUTRAL, SUBLANG_DEFAULT),
                     buf, (DWORD)size, NULL);
  while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r' ||
                   buf[n - 1] == ' ' || buf[n - 1] == '.'))
    buf[--n] = '\0';
  if (n == 0) snprintf(buf, size, "%s (Win32 error %ld)", np_err_name(st->err), st->code);
  return buf;
}

/* A client end is connected from birth: ERROR_PIPE_NOT_CONNECTED there
 * means the server disconnected it, which a reader sees as the end of the
 * stream and a writer as a broken pipe (as over a socket, on Unix). A
 * server end with no client says so in more than one way. */
void np_pipe_status(const np_pipe *p, np_status *st, DWORD err, np_op op) {
  DWORD as = err;
  if (!p->is_server && err == ERROR_PIPE_NOT_CONNECTED) as = ERROR_BROKEN_PIPE;
  /* PeekNamedPipe on an instance no client has reached yet. */
  if (p->is_server && err == ERROR_BAD_PIPE) as = ERROR_PIPE_NOT_CONNECTED;
  /* A transact on a client whose server is gone (Wine: the pipe's state
   * is not one a transact can run in). */
  if (!p->is_server && err == ERROR_BAD_PIPE && op == NP_OP_TRANSACT)
    as = ERROR_BROKEN_PIPE;
  st->err = np_win_error(as, op);
  st->code = (long)err; /* the real Win32 code */
}
