/*
 * pipe_win.c - named pipe instances and clients over the loop's completion
 * port: create/open, connect, read, write, their non-blocking twins,
 * cancel, disconnect, info and close.
 */
#include "win.h" /* windows.h first: sddl.h needs it */

#include <sddl.h>
#include <stdlib.h>
#include <string.h>

/* Byte-mode reads and the first chunk of a message: the default pipe
 * buffer size. A larger read(n) is capped here per call (byte mode). */
#define READ_CHUNK NP_READ_CHUNK
#define READ_CAP (1u << 20)

/* UTF-16 of s: in buf (cap characters) when it fits, else malloc'ed (free
 * it when it is not buf). A pipe name always fits a name-sized buf: the
 * binding refuses names over 256 characters. */
#define WNAME_CAP 300

static wchar_t *to_wide(const char *s, wchar_t *buf, int cap, np_status *st) {
  int n = MultiByteToWideChar(CP_UTF8, MB_ERR_INVALID_CHARS, s, -1, NULL, 0);
  wchar_t *w;
  if (n <= 0) {
    np_win_status(st, GetLastError(), NP_OP_CONNECT);
    return NULL;
  }
  w = n <= cap ? buf : (wchar_t *)malloc((size_t)n * sizeof *w);
  if (!w) {
    np_win_status(st, ERROR_NOT_ENOUGH_MEMORY, NP_OP_CONNECT);
    return NULL;
  }
  MultiByteToWideChar(CP_UTF8, MB_ERR_INVALID_CHARS, s, -1, w, n);
  return w;
}

/* ------------------------------------------------------------ pipe blocks */

static void init_req(np_req *req, np_pipe *p, np_op op) {
  memset(req, 0, sizeof *req);
  req->pipe = p;
  req->op = op;
  req->state = REQ_IDLE;
  req->ref_cb = req->ref_data = NP_NOREF;
}

/* Takes ownership of h: on failure it is closed. */
static np_pipe *adopt_handle(np_loop *loop, HANDLE h, const char *name,
                             int is_server, np_mode read_mode, np_status *st) {
  size_t len = strlen(name);
  /* the name lives after the block: one heap block, not two */
  np_pipe *p = (np_pipe *)calloc(1, sizeof *p + len + 1);
  char *copy = p ? (char *)(p + 1) : NULL;
  if (!p) {
    CloseHandle(h);
    np_win_status(st, ERROR_NOT_ENOUGH_MEMORY, NP_OP_CONNECT);
    return NULL;
  }
  if (!CreateIoCompletionPort(h, loop->port, 0, 0)) {
    np_win_status(st, GetLastError(), NP_OP_CONNECT);
    free(p);
    CloseHandle(h);
    return NULL;
  }
  memcpy(copy, name, len + 1);
  p->loop = loop;
  p->h = h;
  p->is_server = is_server;
  p->read_mode = read_mode;
  p->state = is_server ? NP_STATE_LISTENING : NP_STATE_CONNECTED;
  p->name = copy;
  init_req(&p->connect_req, p, NP_OP_CONNECT);
  init_req(&p->read_req, p, NP_OP_READ);
  init_req(&p->writable_req, p, NP_OP_WRITABLE);
  np_pipe_list_add(loop, p);
  return p;
}

np_pipe *np_server_create(np_loop *loop, const char *name,
                          const np_server_options *o, np_status *st) {
  DWORD open_mode = FILE_FLAG_OVERLAPPED, pipe_mode;
  SECURITY_ATTRIBUTES sa;
  PSECURITY_DESCRIPTOR sd = NULL;
  HANDLE h;
  np_pipe *p;
  wchar_t wbuf[WNAME_CAP];
  wchar_t *wname = to_wide(name, wbuf, WNAME_CAP, st);
  if (!wname) return NULL;
  if (o->access_inbound) open_mode |= PIPE_ACCESS_INBOUND;
  if (o->access_outbound) open_mode |= PIPE_ACCESS_OUTBOUND;
  if (o->first_pipe_instance) open_mode |= FILE_FLAG_FIRST_PIPE_INSTANCE;
  if (o->write_dac) open_mode |= WRITE_DAC;
  if (o->write_owner) open_mode |= WRITE_OWNER;
  if (o->access_system_security) open_mode |= ACCESS_SYSTEM_SECURITY;
  pipe_mode = o->pipe_mode == NP_MODE_MESSAGE
                  ? PIPE_TYPE_MESSAGE | PIPE_READMODE_MESSAGE
                  : PIPE_TYPE_BYTE | PIPE_READMODE_BYTE;
  if (o->reject_remote_clients) pipe_mode |= PIPE_REJECT_REMOTE_CLIENTS;
  if (o->security) {
    wchar_t *wsddl = to_wide(o->security, NULL, 0, st);
    BOOL ok;
    if (!wsddl && st->err != NP_NO_MEMORY)
      st->err = NP_INVALID_ARGUMENT; /* not UTF-8: refused as SDDL text */
    if (!wsddl) {
      if (wname != wbuf) free(wname);
      return NULL;
    }
    ok = ConvertStringSecurityDescriptorToSecurityDescriptorW(
        wsddl, SDDL_REVISION_1, &sd, NULL);
    free(wsddl);
    if (!ok) {
      np_win_status(st, GetLastError(), NP_OP_CONNECT);
      st->err = NP_INVALID_ARGUMENT; /* the SDDL text was refused */
      if (wname != wbuf) free(wname);
      return NULL;
    }
    sa.nLength = sizeof sa;
    sa.lpSecurityDescriptor = sd;
    sa.bInheritHandle = FALSE;
  }
  h = CreateNamedPipeW(wname, open_mode, pipe_mode, o->max_instances,
                       o->out_buffer_size, o->in_buffer_size, 0,
                       sd ? &sa : NULL);
  if (h == INVALID_HANDLE_VALUE) np_win_status(st, GetLastError(), NP_OP_CONNECT);
  if (sd) LocalFree(sd);
  if (wname != wbuf) free(wname);
  if (h == INVALID_HANDLE_VALUE) return NULL;
  p = adopt_handle(loop, h, name, 1, o->pipe_mode, st);
  if (p) p->may_write = o->access_outbound != 0;
  return p;
}

np_pipe *np_client_open(np_loop *loop, const char *name,
                        const np_client_options *o, np_status *st) {
  HANDLE h;
  np_pipe *p;
  wchar_t wbuf[WNAME_CAP];
  wchar_t *wname;
  /* info() (GetNamedPipeInfo) needs FILE_READ_ATTRIBUTES, which a
   * write-only open would otherwise lack (Wine does not check it; Windows
   * does); SetNamedPipeHandleState needs FILE_WRITE_ATTRIBUTES, which a
   * read-only open would lack (docs/windows-internals.md #12). */
  DWORD access = FILE_READ_ATTRIBUTES, mode = PIPE_READMODE_MESSAGE;
  if (o->read) access |= GENERIC_READ;
  if (o->write) access |= GENERIC_WRITE;
  if (o->pipe_mode == NP_MODE_MESSAGE) access |= FILE_WRITE_ATTRIBUTES;
  wname = to_wide(name, wbuf, WNAME_CAP, st);
  if (!wname) return NULL;
  h = CreateFileW(wname, access, 0, NULL, OPEN_EXISTING,
                  FILE_FLAG_OVERLAPPED | SECURITY_SQOS_PRESENT |
                      o->security_qos_flags,
                  NULL);
  if (h == INVALID_HANDLE_VALUE) np_win_status(st, GetLastError(), NP_OP_CONNECT);
  if (wname != wbuf) free(wname);
  if (h == INVALID_HANDLE_VALUE) return NULL;
  if (o->pipe_mode == NP_MODE_MESSAGE &&
      !SetNamedPipeHandleState(h, &mode, NULL, NULL)) {
    np_win_status(st, GetLastError(), NP_OP_CONNECT);
    CloseHandle(h);
    return NULL;
  }
  p = adopt_handle(loop, h, name, 0, o->pipe_mode, st);
  if (p) p->may_write = o->write != 0;
  return p;
}

/* (np_pipe_set_user, np_pipe_name and the like: common.c) */

int np_pipe_busy(const np_pipe *p, np_op op) {
  switch (op) {
    case NP_OP_CONNECT: return p->connect_req.state != REQ_IDLE;
    case NP_OP_READ:
    case NP_OP_READABLE:
    case NP_OP_TRANSACT: return p->read_req.state != REQ_IDLE;
    case NP_OP_WRITABLE: return p->writable_req.state != REQ_IDLE;
    default: return p->nwrites - p->finished_writes;
  }
}

/* ------------------------------------------------------------- operations */

/* After a call that may have queued a packet: either the kernel owns the
 * request now, or it failed at once and we complete it ourselves. */
static void submitted(np_req *req, BOOL ok) {
  np_loop *loop = req->pipe->loop;
  DWORD err = ok ? ERROR_SUCCESS : GetLastError();
  if (ok || err == ERROR_IO_PENDING || err == ERROR_MORE_DATA) {
    np_req_kernel(loop, req);
    return;
  }
  np_req_finished(req, err, 0);
}

/* Hand out finished writes in start order: a write the kernel (or a
 * cancel) finished before an earlier one waits for it. From the oldest
 * not yet handed out: each write is passed once. */
static void deliver_writes(np_pipe *p) {
  np_req *w;
  for (w = p->wdeliver; w && w->state == REQ_DONE; w = w->wnext)
    np_req_ready(p->loop, w);
  p->wdeliver = w;
}

static void complete_now(np_req *req, np_err err, long code) {
  req->status.err = err;
  req->status.code = code;
  if (req->op == NP_OP_WRITE) {
    if (req->state == REQ_IDLE) np_req_wait(req->pipe->loop, req);
    req->state = REQ_DONE;
    deliver_writes(req->pipe);
    return;
  }
  np_req_ready(req->pipe->loop, req);
}

static void arm(np_req *req, int ref_cb) {
  memset(&req->ov, 0, sizeof req->ov);
  req->ref_cb = ref_cb;
  req->ref_data = NP_NOREF;
  req->status.err = NP_OK;
  req->status.code = 0;
  req->bytes = 0;
  req->more = 0;
  req->abort_reason = NP_OK;
  req->session = req->pipe->session;
}

void np_connect_start(np_pipe *p, int ref_cb) {
  np_req *req = &p->connect_req;
  /* after disconnect(): listening again, as the kernel's instance is */
  if (p->state == NP_STATE_DISCONNECTED) p->state = NP_STATE_LISTENING;
  arm(req, ref_cb);
  submitted(req, ConnectNamedPipe(p->h, &req->ov));
}

/* The read buffer given up once nothing is being read into it (read_req
 * idle) and what it held has been handed out (copied into a Lua string),
 * so an idle pipe holds none, as one never read from: kept by the loop
 * when of the usual size (NP_KEEP_RBUFS of them), as its one larger spare
 * when up to READ_CAP (a reader asking read(n) for a large n reads into
 * the same memory each time), else freed (a long message's). */
void np_read_buffer_give(np_pipe *p) {
  if (p->read_req.state == REQ_IDLE) np_read_buffer_drop(p);
}

/* The read buffer to the loop's spares, or freed (np_read_buffer_give's
 * rule); the caller knows nothing is read into it. */
void np_read_buffer_drop(np_pipe *p) {
  np_loop *loop = p->loop;
  if (!p->rbuf) return;
  if (p->rcap == READ_CHUNK && loop->n_free_rbufs < NP_KEEP_RBUFS) {
    loop->free_rbufs[loop->n_free_rbufs++] = p->rbuf;
  } else if (p->rcap > READ_CHUNK && p->rcap <= READ_CAP &&
             p->rcap >= loop->big_spare_cap) {
    free(loop->big_spare);
    loop->big_spare = p->rbuf;
    loop->big_spare_cap = p->rcap;
  } else {
    free(p->rbuf);
  }
  p->rbuf = NULL;
  p->rcap = 0;
}

void np_try_read_done(np_pipe *p) { np_read_buffer_give(p); }

static int reserve(np_pipe *p, size_t need) {
  np_loop *loop = p->loop;
  char *b;
  if (need <= p->rcap) return 1;
  if (!p->rbuf && need <= READ_CHUNK && loop->n_free_rbufs > 0) {
    p->rbuf = loop->free_rbufs[--loop->n_free_rbufs];
    p->rcap = READ_CHUNK;
    return 1;
  }
  if (!p->rbuf && need <= loop->big_spare_cap) {
    p->rbuf = loop->big_spare;
    p->rcap = loop->big_spare_cap;
    loop->big_spare = NULL;
    loop->big_spare_cap = 0;
    return 1;
  }
  b = (char *)realloc(p->rbuf, need);
  if (!b) return 0;
  p->rbuf = b;
  p->rcap = need;
  return 1;
}

/* Issue (or continue) the read: `want` more bytes after p->rlen, into the
 * caller's memory (rext: never more than rmax in all) or rbuf. */
static void issue_read(np_pipe *p, size_t want) {
  np_req *req = &p->read_req;
  char *base = p->rext;
  memset(&req->ov, 0, sizeof req->ov);
  if (!base) {
    if (!reserve(p, p->rlen + want)) {
      complete_now(req, NP_NO_MEMORY, ERROR_NOT_ENOUGH_MEMORY);
      return;
    }
    base = p->rbuf;
  }
  submitted(req, ReadFile(p->h, base + p->rlen, (DWORD)want, NULL, &req->ov));
}

void np_read_start(np_pipe *p, size_t max, char *ext, int ref_cb,
                   int ref_data) {
  size_t want = READ_CHUNK;
  arm(&p->read_req, ref_cb);
  p->read_req.op = NP_OP_READ;
  p->read_req.ref_data = ref_data;
  p->rext = ext;
  if (p->empty_message_taken) {
    p->empty_message_taken = 0;
    p->rlen = 0;
    complete_now(&p->read_req, NP_OK, 0);
    return;
  }
  p->rlen = 0;
  p->rmax = max;
  if (max > 0 && max < want) want = max;
  if (max > want && p->read_mode == NP_MODE_BYTE)
    want = max < READ_CAP ? max : READ_CAP;
  issue_read(p, want);
}

/* A zero-byte read completes when data arrives without consuming any
 * (docs/wine.md #4); the way to wait for readability without a buffer. */
void np_readable_start(np_pipe *p, int ref_cb) {
  np_req *req = &p->read_req;
  arm(req, ref_cb);
  req->op = NP_OP_READABLE;
  p->rlen = 0;
  if (p->empty_message_taken) {
    complete_now(req, NP_OK, 0);
    return;
  }
  submitted(req, ReadFile(p->h, &req->bytes, 0, NULL, &req->ov));
}

/* Has a server instance certainly no client: the Win32 error saying so,
 * or 0. A server whose connect() has not been dispatched may have its
 * client already: the kernel tells (PeekNamedPipe fails without one:
 * ERROR_PIPE_LISTENING, or ERROR_BAD_PIPE as Wine says; a handle it
 * refuses to peek for another reason is let through, and the call that
 * follows will tell). */
DWORD np_pipe_clientless(np_pipe *p) {
  if (p->state == NP_STATE_DISCONNECTED) return ERROR_PIPE_NOT_CONNECTED;
  if (p->state == NP_STATE_LISTENING &&
      !PeekNamedPipe(p->h, NULL, 0, NULL, NULL, NULL) &&
      (GetLastError() == ERROR_PIPE_LISTENING ||
       GetLastError() == ERROR_BAD_PIPE))
    return ERROR_PIPE_LISTENING;
  return 0;
}

/* What a write would be refused now, as try_write would find (1, in *st):
 * a handle without write access, a server with no client. */
static int write_refused(np_pipe *p, np_status *st) {
  DWORD err = p->may_write ? np_pipe_clientless(p) : ERROR_ACCESS_DENIED;
  if (!err) return 0;
  np_win_status(st, err, NP_OP_WRITE);
  return 1;
}

/* Writes are accepted whole (try_write as in mio), so "writable" means no
 * write is in flight any more. */
void np_writable_start(np_pipe *p, int ref_cb) {
  np_req *req = &p->writable_req;
  np_status st;
  arm(req, ref_cb);
  if (write_refused(p, &st)) {
    req->status = st;
    np_req_ready(p->loop, req);
  } else if (p->nwrites == p->finished_writes)
    np_req_ready(p->loop, req);
  else
    np_req_wait(p->loop, req);
}

/* One message written and one read back, in one kernel call; a reply
 * longer than the buffer comes in parts as a long message's read does.
 * The kernel refuses it (PIPE_BUSY) while unread data is in the pipe. */
void np_transact_start(np_pipe *p, const char *data, size_t len, int ref_cb,
                       int ref_data) {
  np_req *req = &p->read_req;
  arm(req, ref_cb);
  req->op = NP_OP_TRANSACT;
  req->ref_data = ref_data;
  p->rext = NULL;
  p->rlen = 0;
  p->rmax = 0;
  if (p->empty_message_taken) /* an unread (empty) message: as the kernel */
    complete_now(req, NP_PIPE_BUSY, ERROR_PIPE_BUSY);
  else if (len > 0xFFFFFFFFu)
    complete_now(req, NP_INVALID_ARGUMENT, ERROR_INVALID_PARAMETER);
  else if (!reserve(p, READ_CHUNK))
    complete_now(req, NP_NO_MEMORY, ERROR_NOT_ENOUGH_MEMORY);
  else if (p->wqueue_tail) {
    /* writes queued here, not yet the kernel's: after them (pump_writes) */
    req->wdata = data;
    req->wlen = (DWORD)len;
    p->transact_after = p->wqueue_tail;
    np_req_wait(p->loop, req);
  } else
    submitted(req, TransactNamedPipe(p->h, (void *)data, (DWORD)len, p->rbuf,
                                     READ_CHUNK, NULL, &req->ov));
}

/* The writes a waiting transact followed have gone to the kernel (or
 * ended without going): its turn. */
static void start_waiting_transact(np_pipe *p) {
  np_req *req = &p->read_req;
  p->transact_after = NULL;
  if (req->state != REQ_WAITING || req->op != NP_OP_TRANSACT) return;
  if (!reserve(p, READ_CHUNK)) {
    complete_now(req, NP_NO_MEMORY, ERROR_NOT_ENOUGH_MEMORY);
    return;
  }
  np_req_unwait(p->loop, req);
  submitted(req, TransactNamedPipe(p->h, (void *)req->wdata, req->wlen,
                                   p->rbuf, READ_CHUNK, NULL, &req->ov));
}

np_mode np_pipe_read_mode(const np_pipe *p) { return p->read_mode; }

/* docs/windows-internals.md #8: ERROR_MORE_DATA carries the first part of
 * a longer message. Ask how much of it is left and read on, into the same
 * buffer. */
static int continue_message(np_pipe *p) {
  DWORD left = 0;
  size_t want;
  if (p->closed || p->read_req.session != p->session ||
      !PeekNamedPipe(p->h, NULL, 0, NULL, NULL, &left) || left == 0)
    return 0;
  want = left;
  if (p->rmax > 0) {
    if (p->rlen >= p->rmax) return 0;
    if (want > p->rmax - p->rlen) want = p->rmax - p->rlen;
  }
  issue_read(p, want);
  return 1;
}

/* 1 when WriteFile finished the write in the call: the kernel took every
 * byte (its packet still comes, as for every call that returned TRUE). */
static int submit_write(np_req *req) {
  np_pipe *p = req->pipe;
  BOOL ok = WriteFile(p->h, req->wdata, req->wlen, NULL, &req->ov);
  submitted(req, ok);
  return ok != FALSE;
}

/* A zero-length write waits until no other write of the session is with
 * the kernel: the kernel (Wine's, at least) completes one at once, ahead of
 * writes still pending, so a cancel of those would leave it past a hole. */
static int write_may_go(const np_pipe *p, const np_req *req) {
  return p->session_writes < MAX_WRITES_IN_FLIGHT &&
         (req->wlen > 0 || p->session_writes == 0);
}

/* Hand queued writes to the kernel while there is room. A loop, not a
 * recursion: a write that fails at once finishes through here again. */
static void pump_writes(np_pipe *p) {
  if (p->pumping) return;
  p->pumping = 1;
  while (p->wqueue_head && !p->closed && write_may_go(p, p->wqueue_head)) {
    np_req *req = p->wqueue_head;
    p->wqueue_head = req->next;
    if (!p->wqueue_head) p->wqueue_tail = NULL;
    np_req_unwait(p->loop, req);
    if (req->session != p->session) /* np_disconnect flushes: never */
      complete_now(req, NP_NOT_CONNECTED, 0);
    else
      submit_write(req);
    if (req == p->transact_after) start_waiting_transact(p);
  }
  p->pumping = 0;
}

/* Queued writes that will never reach the kernel finish with `reason`,
 * after the earlier ones (deliver_writes keeps the order). */
static void flush_write_queue(np_pipe *p, np_err reason) {
  while (p->wqueue_head) {
    np_req *req = p->wqueue_head;
    p->wqueue_head = req->next;
    if (!p->wqueue_head) p->wqueue_tail = NULL;
    complete_now(req, reason, 0);
    /* (a cancel of writes leaves a transact alone: it goes now) */
    if (req == p->transact_after && !p->closed) start_waiting_transact(p);
  }
}

int np_write_start(np_pipe *p, const char *data, size_t len, int ref_cb,
                   int *keeps, int *done) {
  np_req *req = np_write_new(p);
  *keeps = 0;
  if (done) *done = 0;
  if (!req) return 0;
  *keeps = 1; /* the kernel reads data when it gets to it */
  arm(req, ref_cb);
  req->wdata = data;
  req->wlen = (DWORD)len;
  if (p->write_error.err != NP_OK) {
    complete_now(req, p->write_error.err, p->write_error.code);
    p->write_error.err = NP_OK;
  } else if (len > 0xFFFFFFFFu) {
    complete_now(req, NP_INVALID_ARGUMENT, ERROR_INVALID_PARAMETER);
  } else if (p->wqueue_head || !write_may_go(p, req)) {
    np_req_wait(p->loop, req); /* in order, behind the others */
    req->next = NULL;
    if (p->wqueue_tail)
      p->wqueue_tail->next = req;
    else
      p->wqueue_head = req;
    p->wqueue_tail = req;
  } else if (submit_write(req) && done &&
             p->nwrites - p->quiet_writes == 1 &&
             p->finished_writes < MAX_FINISHED_WRITES) {
    /* Finished in the call, the caller would only wait for it, and no
     * earlier write has a callback still to run (which must come first):
     * done now. Its packet, when it comes, calls nothing (as a
     * try_write's), and the kernel has its own copy of the bytes. (Whole:
     * no handle here is in PIPE_NOWAIT mode, where a write may finish
     * with a part.) */
    req->ref_cb = NP_NOREF;
    req->quiet = req->finished = 1;
    p->quiet_writes++;
    p->finished_writes++;
    p->session_writes--; /* finished: no longer in flight (write_may_go) */
    *keeps = 0;
    *done = 1;
  }
  return 1;
}

/* The write started last is the newest of p->writes (np_write_new). */
void np_write_keep(np_pipe *p, int ref_data) {
  p->writes_tail->ref_data = ref_data;
}

/* np_write_now never sends a part here (every write completes through the
 * port), so there is never a rest started without its callback. */
int np_write_attach(np_pipe *p, int ref_cb) {
  (void)p;
  (void)ref_cb;
  return 0;
}

/* What a finished request means: called for each dequeued packet, and for
 * calls that failed at once. May start the next part of a long message. */
static void finish(np_req *req, DWORD err, DWORD bytes) {
  np_pipe *p = req->pipe;
  int own = 0; /* the outcome is ours (a cancel, a close), not the OS's */
  req->bytes = bytes;
  if (NP_READS_DATA(req->op) && req->session != p->session && !p->closed &&
      !(err == 0 || (err == ERROR_MORE_DATA && p->rmax > 0 &&
                     p->rlen + bytes >= p->rmax))) {
    /* The server disconnected while this read was with the kernel, in the
     * middle of a message: the rest of it went with that client, so this
     * read ends there; what follows in the pipe is the next client's. (A
     * read that finished first keeps its bytes. One stopped before the
     * disconnect keeps that stop's reason, below.) */
    p->rlen = 0;
    bytes = 0;
    if (!(err == ERROR_OPERATION_ABORTED && req->abort_reason != NP_OK))
      err = ERROR_PIPE_NOT_CONNECTED;
  }
  if (req->op == NP_OP_READABLE && !p->closed &&
      (err == ERROR_MORE_DATA || err == ERROR_BROKEN_PIPE ||
       err == ERROR_NO_DATA ||
       /* a client whose server disconnected it: the end of its stream */
       (!p->is_server && err == ERROR_PIPE_NOT_CONNECTED)))
    err = 0; /* a message, or the end of the stream: try_read will tell */
  else if (req->op == NP_OP_READABLE && err == 0 &&
           p->read_mode == NP_MODE_MESSAGE && req->session == p->session)
    /* A zero-byte read succeeds on a message pipe only by taking a
     * zero-length message: the next read must still return it (unless it
     * was the old client's, taken before a disconnect). */
    p->empty_message_taken = 1;
  if (NP_READS_DATA(req->op) && (err == 0 || err == ERROR_MORE_DATA)) {
    p->rlen += bytes;
    if (err == ERROR_MORE_DATA) {
      if (continue_message(p)) return;
      req->more = 1;
    }
    err = 0;
  }
  if (NP_READS_DATA(req->op) && err != 0 && p->rlen > 0 && !p->closed) {
    /* Stopped (cancelled, timed out) in the middle of a long message: what
     * was read is real and the rest is still in the pipe, so deliver this
     * part as read(n) would, never drop it. */
    req->more = 1;
    err = 0;
  }
  if (req->op == NP_OP_CONNECT &&
      (err == ERROR_PIPE_CONNECTED || err == ERROR_NO_DATA))
    /* the client came first (and maybe went): docs/windows-internals.md #6 */
    err = 0;
  if (err == 0) {
    if (req->op == NP_OP_CONNECT && !p->closed) p->state = NP_STATE_CONNECTED;
    complete_now(req, NP_OK, 0);
    return;
  }
  if (err == ERROR_OPERATION_ABORTED || p->closed) {
    /* The first stop asked for says why, as on Linux, where it ends the
     * operation at once: a cancel's reason (TIMEOUT from a waiting call)
     * outlives a close or a disconnect that came before the packet. */
    np_err why = req->abort_reason != NP_OK ? req->abort_reason
                 : p->closed                ? NP_CLOSED
                                            : NP_CANCELLED;
    own = 1;
    /* our own outcomes read as on Linux: code 0, the module's message */
    complete_now(req, why,
                 why == NP_CLOSED || why == NP_CANCELLED || why == NP_TIMEOUT
                     ? 0
                     : (long)err);
  } else {
    np_status st;
    np_pipe_status(p, &st, err, req->op);
    complete_now(req, st.err, st.code);
  }
  /* A try_write's failure is told to the next write: one the OS gave in
   * this session. A cancel or timeout the caller aimed at later writes, or
   * a disconnect, would fail a write that has nothing to do with it. */
  if (req->op == NP_OP_WRITE && req->ref_cb == NP_NOREF && !own &&
      req->session == p->session)
    p->write_error = req->status;
}

void np_req_finished(np_req *req, DWORD err, DWORD bytes) {
  finish(req, err, bytes);
  /* every finished write makes room for a queued one */
  if (req->op == NP_OP_WRITE) pump_writes(req->pipe);
}

int np_try_read(np_pipe *p, size_t max, const char **data, size_t *len,
                int *more, np_status *st) {
  DWORD avail = 0, left = 0, want;
  OVERLAPPED ov;
  BOOL ok;
  DWORD err = 0;
  if (p->empty_message_taken) { /* see np_req_finished */
    p->empty_message_taken = 0;
    *data = p->rbuf ? p->rbuf : "";
    *len = 0;
    *more = 0;
    return 1;
  }
  if (!PeekNamedPipe(p->h, NULL, 0, NULL, &avail, &left)) {
    np_pipe_status(p, st, GetLastError(), NP_OP_READ);
    return 0;
  }
  if (avail == 0) {
    st->err = NP_WOULDBLOCK;
    st->code = 0;
    return 0;
  }
  want = p->read_mode == NP_MODE_MESSAGE && left > 0 ? left : avail;
  if (p->read_mode == NP_MODE_BYTE && want > READ_CAP) want = READ_CAP;
  if (max > 0 && want > max) want = (DWORD)max;
  if (!reserve(p, want)) {
    np_win_status(st, ERROR_NOT_ENOUGH_MEMORY, NP_OP_READ);
    return 0;
  }
  /* The low bit of hEvent keeps this read's completion off the port: it is
   * finished here, synchronously (the data is already there). */
  memset(&ov, 0, sizeof ov);
  ov.hEvent = (HANDLE)((ULONG_PTR)p->loop->try_event | 1);
  ok = ReadFile(p->h, p->rbuf, want, NULL, &ov);
  if (!ok) err = GetLastError();
  if (err == ERROR_IO_PENDING) {
    DWORD got;
    ok = GetOverlappedResult(p->h, &ov, &got, TRUE);
    err = ok ? 0 : GetLastError();
  }
  if (err != 0 && err != ERROR_MORE_DATA) {
    np_pipe_status(p, st, err, NP_OP_READ);
    return 0;
  }
  *data = p->rbuf;
  *len = (size_t)ov.InternalHigh; /* also right after ERROR_MORE_DATA */
  *more = err == ERROR_MORE_DATA;
  return 1;
}

/* Never without a request: the port reports every WriteFile, even one
 * that finished in the call, and that packet must find its request. A
 * waited-for write is done at once through np_write_start's done. */
int np_write_now(np_pipe *p, const char *data, size_t len, size_t *written) {
  (void)p;
  (void)data;
  (void)len;
  *written = 0;
  return 0;
}

int np_try_write(np_pipe *p, const char *data, size_t len, size_t *written,
                 int *keeps, np_status *st) {
  np_req *req;
  *keeps = 0;
  if (p->write_error.err != NP_OK) {
    *st = p->write_error;
    p->write_error.err = NP_OK;
    return 0;
  }
  if (p->nwrites > p->finished_writes) {
    st->err = NP_WOULDBLOCK;
    st->code = 0;
    return 0;
  }
  if (len > 0xFFFFFFFFu) {
    np_win_status(st, ERROR_INVALID_PARAMETER, NP_OP_WRITE);
    return 0;
  }
  /* As mio does: the write is accepted whole and finishes in the
   * background; until then the next try_write would block. */
  req = np_write_new(p);
  if (!req) {
    np_win_status(st, ERROR_NOT_ENOUGH_MEMORY, NP_OP_WRITE);
    return 0;
  }
  arm(req, NP_NOREF); /* its ref_data: np_write_keep, next */
  req->quiet = 1;
  p->quiet_writes++;
  if (!WriteFile(p->h, data, (DWORD)len, NULL, &req->ov)) {
    DWORD err = GetLastError();
    if (err != ERROR_IO_PENDING) { /* no packet will come: take it back */
      np_pipe_status(p, st, err, NP_OP_WRITE);
      np_write_drop(req);
      return 0;
    }
  }
  np_req_kernel(p->loop, req);
  *written = len;
  *keeps = 1;
  return 1;
}

static void cancel_req(np_pipe *p, np_req *req, np_err reason) {
  if (req->state != REQ_KERNEL) return;
  /* Kept even when the cancel finds nothing (ERROR_NOT_FOUND: the kernel
   * finished it already; a disconnect fails reads itself): if the packet
   * then says the operation failed or the pipe closed, this stop came
   * first, as on Linux. A packet of success is a success all the same. */
  if (req->abort_reason == NP_OK) req->abort_reason = reason;
  CancelIoEx(p->h, &req->ov);
}

/* The writes the kernel holds, newest first: once an older write is
 * cancelled, the pipe would take the next one in its place, and a write
 * that went whole after one that was cut would leave a hole in the stream
 * (seen under Wine). Cancelled newest first, no write is left behind the
 * one being cancelled, so what went is a prefix of what was written. */
static void cancel_kernel_writes(np_pipe *p, np_err reason) {
  np_req *w;
  for (w = p->writes_tail; w; w = w->wprev) cancel_req(p, w, reason);
}

static void cancel_waiting(np_pipe *p, np_req *req, np_err reason) {
  if (req->state != REQ_WAITING) return;
  req->status.err = reason;
  req->status.code = 0;
  np_req_ready(p->loop, req);
}

/* A transact waiting for queued writes (start_waiting_transact) ends. */
static void cancel_waiting_transact(np_pipe *p, np_err reason) {
  p->transact_after = NULL;
  cancel_waiting(p, &p->read_req, reason);
}

void np_cancel(np_pipe *p, np_op op, np_err reason) {
  if (p->closed) return;
  if (op == NP_OP_CONNECT) cancel_req(p, &p->connect_req, reason);
  if (op == NP_OP_READ || op == NP_OP_READABLE || op == NP_OP_TRANSACT) {
    cancel_req(p, &p->read_req, reason);
    cancel_waiting_transact(p, reason);
  }
  if (op == NP_OP_WRITABLE) cancel_waiting(p, &p->writable_req, reason);
  if (op == NP_OP_WRITE && p->writes_cancelled != p->writes_made) {
    flush_write_queue(p, reason);
    cancel_kernel_writes(p, reason);
    p->writes_cancelled = p->writes_made;
  }
}

/* The client's connection ends: everything started for it ends with
 * NOT_CONNECTED, and nothing of it may reach the next client. The kernel
 * fails the reads and writes it holds, but their packets are dequeued
 * later, maybe after the next client came: so the writes queued behind
 * them end here, never to be handed to the kernel, and the new session
 * tells the old operations' late completions from the new ones'. */
int np_disconnect(np_pipe *p, np_status *st) {
  if (!DisconnectNamedPipe(p->h)) {
    DWORD err = GetLastError();
    if (err != ERROR_PIPE_LISTENING && err != ERROR_PIPE_NOT_CONNECTED) {
      np_win_status(st, err, NP_OP_CONNECT);
      return 0;
    }
  }
  p->session++;
  p->session_writes = 0;
  p->write_error.err = NP_OK;
  p->state = NP_STATE_DISCONNECTED;
  p->empty_message_taken = 0; /* it was the old client's */
  /* Wine leaves a pending connect pending across DisconnectNamedPipe
   * (docs/wine.md #8); the kernel ends the rest, which costs nothing to make
   * sure of (a cancel of what has finished is refused). */
  cancel_req(p, &p->connect_req, NP_NOT_CONNECTED);
  cancel_req(p, &p->read_req, NP_NOT_CONNECTED);
  cancel_waiting_transact(p, NP_NOT_CONNECTED);
  flush_write_queue(p, NP_NOT_CONNECTED);
  cancel_kernel_writes(p, NP_NOT_CONNECTED);
  cancel_waiting(p, &p->writable_req, NP_NOT_CONNECTED);
  return 1;
}

int np_pipe_info(np_pipe *p, np_info *info, np_status *st) {
  DWORD flags = 0, out = 0, in = 0, max = 0;
  if (!GetNamedPipeInfo(p->h, &flags, &out, &in, &max)) {
    np_win_status(st, GetLastError(), NP_OP_CONNECT);
    return 0;
  }
  info->is_server = (flags & PIPE_SERVER_END) != 0;
  info->mode = (flags & PIPE_TYPE_MESSAGE) ? NP_MODE_MESSAGE : NP_MODE_BYTE;
  /* Windows reports unlimited as 255, Wine as 0xFFFFFFFF (docs/wine.md #7). */
  info->max_instances = (max >= PIPE_UNLIMITED_INSTANCES)
                            ? NP_UNLIMITED_INSTANCES
                            : (unsigned)max;
  info->out_buffer_size = out;
  info->in_buffer_size = in;
  return 1;
}

/* docs/windows-internals.md #2: cancel, close, and let the packets come
 * home; the block is freed by whoever releases its last request. */
void np_pipe_close(np_pipe *p) {
  if (p->closed) return;
  p->closed = 1;
  p->state = NP_STATE_CLOSED;
  /* Closing the handle cancels what is pending too; CancelIoEx first makes
   * it explicit, and costs a kernel call only when something is pending. */
  /* (CLOSED unless a cancel or a disconnect came first: finish) */
  if (p->kernel_writes > 0) cancel_kernel_writes(p, NP_CLOSED);
  if (p->connect_req.state == REQ_KERNEL || p->read_req.state == REQ_KERNEL ||
      p->kernel_writes > 0)
    CancelIoEx(p->h, NULL);
  CloseHandle(p->h);
  p->h = INVALID_HANDLE_VALUE;
  cancel_waiting(p, &p->writable_req, NP_CLOSED);
  cancel_waiting_transact(p, NP_CLOSED);
  flush_write_queue(p, NP_CLOSED);
  if (p->outstanding == 0) np_pipe_free(p);
}

/* PeekNamedPipe with no buffer: what is there, and what is left of the
 * next message (its whole size, as nothing of it was read). */
int np_pipe_peek(np_pipe *p, np_peek *peek, np_status *st) {
  DWORD avail = 0, left = 0;
  if (p->empty_message_taken) {
    /* The zero-byte read took an empty message: it is the next one, and
     * what waits behind it counts as available (as Linux counts it). */
    if (!PeekNamedPipe(p->h, NULL, 0, NULL, &avail, NULL)) avail = 0;
    peek->available = avail;
    peek->message = 0;
    return 1;
  }
  if (!PeekNamedPipe(p->h, NULL, 0, NULL, &avail, &left)) {
    np_pipe_status(p, st, GetLastError(), NP_OP_READ);
    return 0;
  }
  peek->available = avail;
  peek->message = p->read_mode == NP_MODE_MESSAGE && avail > 0 ? (long long)left : -1;
  return 1;
}
