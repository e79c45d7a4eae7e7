/*
 * pipe_unix.c - server instances and clients over Unix domain sockets:
 * create/open, connect, read, write, their non-blocking twins, cancel,
 * disconnect, info and close.
 *
 * A byte pipe is a SOCK_STREAM socket, a message pipe a SOCK_SEQPACKET one;
 * what Windows gives and SOCK_SEQPACKET does not is made up for in
 * message_unix.c, the reads and writes as the socket allows them are
 * io_unix.c's. Also:
 *  - directions: a client opened with read or write false, a server without
 *    access_inbound / access_outbound, gets ACCESS_DENIED for that
 *    direction; a client asking for a direction the server does not allow
 *    is refused at open (the server's lock file says which it allows).
 * Every send uses MSG_NOSIGNAL: a gone peer is EPIPE (BROKEN_PIPE), never
 * SIGPIPE.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "unix.h"

/* ------------------------------------------------------------ pipe blocks */

static np_pipe *pipe_new(np_loop *loop, const char *name, np_status *st) {
  size_t len = strlen(name);
  /* The name lives after the block: one heap block, not two. malloc, and
   * the block cleared up to the name, not calloc: glibc's calloc skips the
   * per-thread cache of freed blocks that malloc takes from (a block as
   * large as this one, freed by the last pipe closed, is there) and cost
   * 270 instructions a pipe. (Clearing the whole block would let the
   * compiler turn malloc and memset back into calloc.) */
  np_pipe *p = (np_pipe *)malloc(sizeof *p + len + 1);
  if (!p) {
    np_status_errno(st, NP_NO_MEMORY, ENOMEM);
    return NULL;
  }
  memset(p, 0, sizeof *p);
  p->name = (char *)(p + 1);
  memcpy(p->name, name, len + 1);
  p->watch = NP_WATCH_PIPE;
  p->loop = loop;
  p->fd = -1;
  p->read_size = NP_READ_SIZE;
  p->max_instances = NP_UNLIMITED_INSTANCES;
  p->connect_req.embedded = p->read_req.embedded = p->writable_req.embedded = 1;
  p->connect_req.pipe = p->read_req.pipe = p->writable_req.pipe = p;
  np_pipe_list_add(loop, p);
  return p;
}

/* A block that never got to be a pipe (create/open failed). */
static void pipe_discard(np_pipe *p) {
  p->closed = 1;
  np_pipe_free(p);
}

/* Change the mode and EPOLLOUT together, one epoll_ctl. The change polls
 * the socket (ep_modify): readiness from before it is reported too. On
 * failure (it cannot fail for a registered socket) nothing changes. */
int np_set_mask(np_pipe *p, int level, int out_armed) {
  np_readiness was = p->rd;
  if (level == was.level && out_armed == was.out_armed) return 1;
  p->rd.level = (unsigned char)level;
  p->rd.out_armed = (unsigned char)out_armed;
  if (np_watch_mod(p->loop, p->fd, np_socket_mask(&p->rd), p) == 0) {
#ifdef NP_DEBUG
    p->rd.mask = np_socket_mask(&p->rd);
#endif
    return 1;
  }
  p->rd = was;
  return 0;
}

/* A new socket for the pipe: SO_PASSCRED only for an unbound peer (see the
 * top of message_unix.c: empty message versus EOF), its readiness fresh. */
static int watch_socket(np_pipe *p, int fd, int passcred) {
  int one = 1;
  p->passcred = p->sock_type == SOCK_SEQPACKET && passcred;
  if (p->passcred &&
      setsockopt(fd, SOL_SOCKET, SO_PASSCRED, &one, sizeof one) != 0)
    return 0;
  np_readiness_fresh(&p->rd);
  if (np_watch_add(p->loop, fd, np_socket_mask(&p->rd), p) == 0) return 1;
  memset(&p->rd, 0, sizeof p->rd); /* no socket after all */
  return 0;
}

/* A write or writable() waits for room: from now on this socket reports
 * EPOLLOUT. The change polls the socket (ep_modify), so room made before it
 * is reported too. Should it fail (it cannot for a registered socket), a
 * write ends with the error and writable() at once (try_write tells). */
int np_want_writable(np_pipe *p) {
  return p->rd.out_armed || np_set_mask(p, p->rd.level, 1);
}

static void set_buffer(int fd, int opt, uint32_t size) {
  int v = size > INT_MAX ? INT_MAX : (int)size;
  if (size) setsockopt(fd, SOL_SOCKET, opt, &v, sizeof v); /* advisory */
}

int np_instance_attach(np_pipe *p, int fd, int peer_named) {
  set_buffer(fd, SO_SNDBUF, p->sndbuf);
  /* SO_RCVBUF waits for info() (rcvbuf_unset in unix.h) */
  if (!watch_socket(p, fd, !peer_named)) return 0;
  p->rcvbuf_unset = p->rcvbuf != 0;
  p->fd = fd;
  np_listener_set_free(p->listener, p, 0);
  if (p->pending_connect) {
    np_req *r = p->pending_connect;
    p->pending_connect = NULL;
    p->state = NP_STATE_CONNECTED;
    np_req_ready(r, NP_OK, 0);
  }
  return 1;
}

static void drop_socket(np_pipe *p) {
  if (p->fd >= 0) {
    np_watch_close(p->loop, p->fd);
    p->fd = -1;
  }
  free(p->rest);
  p->rest = NULL;
  p->rest_off = p->rest_len = 0;
  memset(&p->rd, 0, sizeof p->rd); /* the next socket starts afresh */
  p->rcvbuf_unset = 0;
}

void np_pipe_detach(np_pipe *p) {
  drop_socket(p);
  if (p->listener) np_listener_remove(p->listener, p);
}

/* Every pending operation of that kind finishes now, with err. Read and
 * readable share a slot: either name cancels what is in it. */
static void finish_pending(np_pipe *p, np_op op, np_err err, long code) {
  np_req *r;
  if (op == NP_OP_CONNECT && (r = p->pending_connect) != NULL) {
    p->pending_connect = NULL;
    np_req_ready(r, err, code);
  } else if ((op == NP_OP_READ || op == NP_OP_READABLE ||
              op == NP_OP_TRANSACT) &&
             (r = p->pending_read) != NULL) {
    p->pending_read = NULL;
    np_req_ready(r, err, code);
  } else if ((op == NP_OP_READ || op == NP_OP_READABLE ||
              op == NP_OP_TRANSACT) &&
             p->transact_write) {
    /* its request has not gone: it never will (a message goes whole or
     * not at all), and the caller may let its bytes go */
    np_req *w = p->transact_write;
    np_wq_unlink(p, w);
    p->transact_write = NULL;
    np_write_req_drop(p, w);
    np_req_ready(&p->read_req, err, code);
  } else if (op == NP_OP_WRITABLE && (r = p->pending_writable) != NULL) {
    p->pending_writable = NULL;
    np_req_ready(r, err, code);
  } else if (op == NP_OP_WRITE) {
    /* A partly sent write says how much went (len), as on Windows. A
     * transact's request queued behind them is the transact's, which a
     * cancel of writes leaves alone (its own stops are "transact", "read"
     * and "readable"): it stays, and goes once they are gone. */
    np_req *keep = NULL;
    while ((r = p->wq_head) != NULL) {
      np_wq_unlink(p, r);
      if (r == p->transact_write)
        keep = r;
      else
        np_req_ready(r, err, code);
    }
    if (keep) {
      np_wq_push(p, keep);
      np_pump_writes(p);
    }
  }
}

static void finish_all(np_pipe *p, np_err err, long code) {
  finish_pending(p, NP_OP_CONNECT, err, code);
  finish_pending(p, NP_OP_READ, err, code);
  finish_pending(p, NP_OP_WRITE, err, code);
  finish_pending(p, NP_OP_WRITABLE, err, code);
}

/* ---------------------------------------------------------------- create */

np_pipe *np_server_create(np_loop *loop, const char *name,
                          const np_server_options *o, np_status *st) {
  char path[NP_SUN_PATH];
  np_listener *l;
  np_pipe *p;
  /* As Windows: no direction at all is ERROR_INVALID_PARAMETER. */
  if ((!o->access_inbound && !o->access_outbound) || o->max_instances < 1 ||
      o->max_instances > NP_UNLIMITED_INSTANCES) {
    np_status_errno(st, NP_INVALID_ARGUMENT, EINVAL);
    return NULL;
  }
  if (!np_socket_path_cached(loop, name, 1, path, st)) return NULL;
  if (!(p = pipe_new(loop, name, st))) return NULL;
  l = np_listener_get(loop, path, o, st);
  if (!l && st->err == NP_NOT_FOUND && name[0] != '/') {
    /* The directory the loop made or checked is gone: once more, afresh. */
    np_dir_forget(loop);
    if (np_socket_path_cached(loop, name, 1, path, st))
      l = np_listener_get(loop, path, o, st);
  }
  if (!l) {
    pipe_discard(p);
    return NULL;
  }
  p->is_server = 1;
  p->sock_type = np_listener_type(l);
  p->read_message = o->pipe_mode == NP_MODE_MESSAGE;
  p->may_read = o->access_inbound != 0;
  p->may_write = o->access_outbound != 0;
  p->max_instances = o->max_instances;
  /* A byte-mode read(0) takes up to the pipe's buffer, as on Windows, but
   * never more than NP_READ_CAP: in_buffer_size = 4 GiB must not make
   * every read allocate 4 GiB (found by the Lua fuzz test). */
  if (o->in_buffer_size)
    p->read_size = o->in_buffer_size < NP_READ_CAP ? o->in_buffer_size
                                                   : NP_READ_CAP;
  /* The default leaves the socket's own send buffer (wmem_default, larger
   * than 65536 on every Linux we know): SO_SNDBUF on every accepted socket
   * was one system call in 18 of a connection's (README, Linux notes). */
  p->sndbuf = o->out_buffer_size == NP_DEFAULT_BUFFER_SIZE ? 0
                                                           : o->out_buffer_size;
  p->rcvbuf = o->in_buffer_size;
  p->out_given = o->out_buffer_size;
  p->in_given = o->in_buffer_size;
  p->state = NP_STATE_LISTENING;
  np_listener_add(l, p);
  np_listener_set_free(l, p, 1);
  /* A client queued since the listener's last edge is accepted now; one
   * whose edge epoll has not reported yet, at the next wait. */
  np_listener_service(l);
  return p;
}

static int connect_socket(const char *path, int sock_type, int *err) {
  struct sockaddr_un sa;
  int fd = socket(AF_UNIX, sock_type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    *err = errno;
    return -1;
  }
  memset(&sa, 0, sizeof sa);
  sa.sun_family = AF_UNIX;
  /* Autobind (a unique abstract name): our messages then carry an address,
   * which is how the server tells them from EOF (top of the file). Should
   * it fail, the server sees an unbound client and uses SO_PASSCRED. */
  if (sock_type == SOCK_SEQPACKET &&
      bind(fd, (struct sockaddr *)&sa, sizeof(sa_family_t)) != 0) { /* ok */ }
  memcpy(sa.sun_path, path, strlen(path) + 1);
  if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
    *err = errno;
    close(fd);
    return -1;
  }
  return fd;
}

np_pipe *np_client_open(np_loop *loop, const char *name,
                        const np_client_options *o, np_status *st) {
  char path[NP_SUN_PATH];
  np_pipe_meta meta;
  np_listener *own;
  int have_meta, sock_type, fd, err = 0;
  np_pipe *p;
  if (!np_socket_path_cached(loop, name, 0, path, st)) return NULL;
  /* A server of this loop: its description is at hand, no need to read
   * the lock file (open, lock test, read, close). */
  if ((own = np_listener_find(loop, path)) != NULL) {
    meta = *np_listener_meta(own);
    have_meta = 1;
  } else {
    have_meta = np_read_meta(path, &meta);
  }
  if (have_meta) {
    /* Windows checks the client's access against the pipe's directions
     * and a message read mode against the pipe's type, at open. */
    if ((o->write && !meta.inbound) || (o->read && !meta.outbound)) {
      np_status_errno(st, NP_ACCESS_DENIED, EACCES);
      return NULL;
    }
    if (o->pipe_mode == NP_MODE_MESSAGE && meta.sock_type == SOCK_STREAM) {
      np_status_errno(st, NP_INVALID_ARGUMENT, EPROTOTYPE);
      return NULL;
    }
    sock_type = meta.sock_type;
  } else {
    /* Not one of ours (socat...), or no description: try our own type; a
     * byte reader can read a message socket as a stream. */
    sock_type = o->pipe_mode == NP_MODE_MESSAGE ? SOCK_SEQPACKET : SOCK_STREAM;
  }
  fd = connect_socket(path, sock_type, &err);
  if (fd < 0 && err == EPROTOTYPE && !have_meta &&
      o->pipe_mode == NP_MODE_BYTE) {
    sock_type = SOCK_SEQPACKET;
    fd = connect_socket(path, sock_type, &err);
  }
  if (fd < 0) {
    np_status_errno(st, np_errno_err(err), err);
    return NULL;
  }
  if (!(p = pipe_new(loop, name, st))) {
    close(fd);
    return NULL;
  }
  p->sock_type = sock_type;
  p->read_message = o->pipe_mode == NP_MODE_MESSAGE;
  p->may_read = o->read != 0;
  p->may_write = o->write != 0;
  if (have_meta) p->max_instances = meta.max_instances;
  p->state = NP_STATE_CONNECTED;
  /* The server's socket has its listener's address: never SO_PASSCRED. */
  if (!watch_socket(p, fd, 0)) {
    np_status_errno(st, np_errno_err(errno), errno);
    close(fd);
    pipe_discard(p);
    return NULL;
  }
  p->fd = fd;
  /* A server of this loop takes its client now, as the open connects the
   * instance on Windows: into an instance listening now, not one that
   * starts listening before the next step. */
  if (own) np_listener_service_now(own);
  return p;
}

/* ------------------------------------------------------------ accessors */

/* (np_pipe_set_user, np_pipe_name and the like: common.c) */
np_mode np_pipe_read_mode(const np_pipe *p) {
  return p->read_message ? NP_MODE_MESSAGE : NP_MODE_BYTE;
}

int np_pipe_busy(const np_pipe *p, np_op op) {
  switch (op) {
    case NP_OP_READ:
    case NP_OP_READABLE:
    case NP_OP_TRANSACT:
      return p->busy[NP_OP_READ] + p->busy[NP_OP_READABLE] +
             p->busy[NP_OP_TRANSACT];
    case NP_OP_CONNECT:
    case NP_OP_WRITE:
    case NP_OP_WRITABLE: return p->busy[op];
    default: return 0;
  }
}

/* ------------------------------------------------------------- operations */

/* A server instance with no client yet (listening, not disconnected) first
 * takes a client that is already queued: on Windows the client's open
 * connected the instance, so whatever the server does next has it, connect()
 * or not. Which queued client goes to which free instance is the listener's
 * choice (pick_free), as on Windows it was the open's. A client of this loop
 * never waits in the queue (np_client_open); one of another process does,
 * until the next step or a call here. So this is also done before a
 * listening instance stops listening (disconnect, close): a client that
 * came while it listened must not be left for an instance that listens only
 * later (on Windows this one's disconnect or close drops it). */
static void take_queued(np_pipe *p) {
  if (p->fd < 0 && p->is_free && !p->closed && p->listener)
    np_listener_service_now(p->listener);
}

/* np_io_allowed's whole look, when the quick one said no (unix.h): 1 if
 * allowed after all (a client queued meanwhile has just been taken), else
 * 0 with why in *st. */
int np_io_check(np_pipe *p, np_op op, np_status *st) {
  take_queued(p);
  if (p->closed)
    np_status_errno(st, NP_CLOSED, 0);
  else if (op == NP_OP_READ ? !p->may_read : !p->may_write)
    np_status_errno(st, NP_ACCESS_DENIED, EACCES);
  else if (p->fd < 0)
    np_status_errno(st, NP_NOT_CONNECTED, ENOTCONN);
  else
    return 1;
  return 0;
}

void np_connect_start(np_pipe *p, int ref_cb) {
  np_req *r = &p->connect_req;
  if (r->state != REQ_IDLE) return; /* the binding checks np_pipe_busy */
  np_req_start(p, r, NP_OP_CONNECT, ref_cb, NP_NOREF);
  if (p->closed || !p->is_server) {
    np_req_ready(r, p->closed ? NP_CLOSED : NP_INVALID_ARGUMENT,
                 p->closed ? 0 : EINVAL);
    return;
  }
  if (p->fd >= 0) { /* the client came first (ERROR_PIPE_CONNECTED) */
    p->state = NP_STATE_CONNECTED;
    np_req_ready(r, NP_OK, 0);
    return;
  }
  p->state = NP_STATE_LISTENING;
  p->pending_connect = r;
  np_listener_set_free(p->listener, p, 1);
  np_listener_service_now(p->listener);
}

void np_read_start(np_pipe *p, size_t max, char *ext, int ref_cb,
                   int ref_data) {
  np_req *r = &p->read_req;
  np_status st;
  if (r->state != REQ_IDLE) return; /* the binding checks np_pipe_busy */
  np_req_start(p, r, NP_OP_READ, ref_cb, ref_data);
  r->max = max;
  r->ext = ext;
  if (!np_io_allowed(p, NP_OP_READ, &st)) {
    np_req_ready(r, st.err, st.code);
    return;
  }
  p->pending_read = r;
  if (np_read_may_succeed(p)) { /* else epoll will tell */
    np_pump_read(p);
    if (r->state == REQ_READY) {
      r->eager = 1;
      p->loop->eager_ready++;
    }
  }
  np_wait_level(p);
}

/* Tokio's readable(): shares the read slot with read(). */
void np_readable_start(np_pipe *p, int ref_cb) {
  np_req *r = &p->read_req;
  np_status st;
  if (r->state != REQ_IDLE) return; /* the binding checks np_pipe_busy */
  np_req_start(p, r, NP_OP_READABLE, ref_cb, NP_NOREF);
  if (!np_io_allowed(p, NP_OP_READ, &st)) {
    np_req_ready(r, st.err, st.code);
    return;
  }
  p->pending_read = r;
  /* edge-triggered (np_wait_level); what is there is reported once more */
  if (p->rd.level) np_set_mask(p, 0, p->rd.out_armed);
  if (np_read_may_succeed(p)) np_pump_read(p); /* else epoll will tell */
}

void np_writable_start(np_pipe *p, int ref_cb) {
  np_req *r = &p->writable_req;
  np_status st;
  if (r->state != REQ_IDLE) return; /* the binding checks np_pipe_busy */
  np_req_start(p, r, NP_OP_WRITABLE, ref_cb, NP_NOREF);
  if (!np_io_allowed(p, NP_OP_WRITE, &st)) {
    np_req_ready(r, st.err, st.code);
    return;
  }
  p->pending_writable = r;
  np_pump_writable(p);
}

int np_write_start(np_pipe *p, const char *data, size_t len, int ref_cb,
                   int *keeps, int *done) {
  np_req *r = np_write_req_new(p->loop);
  np_status st;
  *keeps = 0;
  if (done) *done = 0; /* a waited-for write tried np_write_now first */
  if (!r) return 0;
  r->wnext = p->writes;
  if (p->writes) p->writes->wprev = r;
  p->writes = r;
  np_req_start(p, r, NP_OP_WRITE, ref_cb, NP_NOREF);
  r->wdata = data;
  r->wlen = len;
  if (!np_io_allowed(p, NP_OP_WRITE, &st)) {
    np_req_ready(r, st.err, st.code);
    return 1;
  }
  np_wq_push(p, r);
  if (p->wq_head == r) np_pump_writes(p);
  /* Sent whole (or failed) at once: finished, data no longer needed. */
  *keeps = r->state == REQ_PENDING;
  return 1;
}

/* The write started last is the newest of p->writes. */
void np_write_keep(np_pipe *p, int ref_data) { p->writes->ref_data = ref_data; }

/* The rest is the one write with no callback that is still to be handed
 * out (a write started since, from a step nested in between, has its
 * own): np_write_now starts no rest while another write is counted, and
 * the other writes without one, transacts', are a message pipe's, where
 * no part is ever sent. */
int np_write_attach(np_pipe *p, int ref_cb) {
  np_req *r;
  for (r = p->writes; r; r = r->wnext) {
    if (r->ref_cb == NP_NOREF && r->state != REQ_HANDED) {
      r->ref_cb = ref_cb;
      return 1;
    }
  }
  return 0;
}

int np_try_read(np_pipe *p, size_t max, const char **data, size_t *len,
                int *more, np_status *st) {
  if (!np_io_allowed(p, NP_OP_READ, st)) return 0;
  np_read_buf_take(p->loop, &p->try_buf, np_read_want(p, max));
  if (p->pending_read ||
      !np_read_attempt(p, max, &p->try_buf, len, more, st)) {
    np_status_errno(st, NP_WOULDBLOCK, 0);
    return 0;
  }
  if (st->err != NP_OK) return 0;
  *data = p->try_buf.data;
  return 1;
}

/* As a read's buffer (np_completion_done): back to the spares. */
void np_try_read_done(np_pipe *p) { np_read_buf_give(p->loop, &p->try_buf); }

/* Nothing stays in flight: the socket copies what it takes, so the bytes
 * are never kept and no completion follows. */
int np_try_write(np_pipe *p, const char *data, size_t len, size_t *written,
                 int *keeps, np_status *st) {
  *keeps = 0; /* nothing stays in flight: what fits is sent now */
  if (!np_io_allowed(p, NP_OP_WRITE, st)) return 0;
  /* Queued writes go first: a try_write must not overtake them. */
  if (p->busy[NP_OP_WRITE] > 0) {
    np_status_errno(st, NP_WOULDBLOCK, 0);
    return 0;
  }
  if (p->sock_type == SOCK_SEQPACKET) {
    if (!np_send_message(p, data, len, st)) {
      np_status_errno(st, NP_WOULDBLOCK, 0);
      return 0;
    }
    if (st->err != NP_OK) return 0;
    *written = len;
    return 1;
  }
  *written = 0;
  if (len == 0) return np_send_nothing(p, st);
  while (len > 0) {
    ssize_t n = send(p->fd, data, len, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n >= 0) {
      *written = (size_t)n;
      break;
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK)
      np_status_errno(st, NP_WOULDBLOCK, 0);
    else
      np_write_failed(st, errno);
    return 0;
  }
  np_status_errno(st, NP_OK, 0);
  return 1;
}

/* try_write's attempt, which never keeps data here: what it does not do at
 * once is left to a write. A byte stream's may send a part: the request
 * for the rest is set aside first, so that starting it cannot fail. */
int np_write_now(np_pipe *p, const char *data, size_t len, size_t *written) {
  np_status st;
  int keeps;
  if (p->sock_type == SOCK_STREAM && !np_write_req_reserve(p->loop)) return 0;
  return np_try_write(p, data, len, written, &keeps, &st);
}

void np_cancel(np_pipe *p, np_op op, np_err reason) {
  /* A cancelled connect leaves the instance free: a client may still come
   * and the next connect() completes at once, as on Windows. */
  finish_pending(p, op, reason, 0);
}

int np_disconnect(np_pipe *p, np_status *st) {
  if (!p->is_server || p->closed) {
    np_status_errno(st, p->closed ? NP_CLOSED : NP_INVALID_ARGUMENT,
                    p->closed ? 0 : EINVAL);
    return 0;
  }
  take_queued(p); /* before it stops listening (see take_queued) */
  finish_all(p, NP_NOT_CONNECTED, ENOTCONN);
  drop_socket(p);
  p->state = NP_STATE_DISCONNECTED;
  np_listener_set_free(p->listener, p, 0);
  np_listener_service(p->listener); /* maybe the last free one: plug */
  return 1;
}

static int get_buffer(int fd, int opt, uint32_t *out) {
  int v;
  socklen_t len = sizeof v;
  if (getsockopt(fd, SOL_SOCKET, opt, &v, &len) != 0) return 0;
  *out = v < 0 ? 0 : (uint32_t)v;
  return 1;
}

/* Buffer sizes are what the kernel says for the connected socket (Linux
 * reports twice what was set: it counts its bookkeeping). An instance with
 * no client reports what it will ask for, or the OS default. */
int np_pipe_info(np_pipe *p, np_info *info, np_status *st) {
  int fd = p->fd;
  info->is_server = p->is_server;
  info->mode = p->sock_type == SOCK_SEQPACKET ? NP_MODE_MESSAGE : NP_MODE_BYTE;
  info->max_instances = p->max_instances;
  if (fd < 0) {
    take_queued(p);
    fd = p->fd;
  }
  if (fd >= 0 && p->rcvbuf_unset) { /* deferred since the accept */
    set_buffer(fd, SO_RCVBUF, p->rcvbuf);
    p->rcvbuf_unset = 0;
  }
  if (fd < 0 && p->listener) fd = np_listener_fd(p->listener);
  if (fd < 0) {
    np_status_errno(st, p->closed ? NP_CLOSED : NP_NOT_CONNECTED,
                    p->closed ? 0 : ENOTCONN);
    return 0;
  }
  if (!get_buffer(fd, SO_SNDBUF, &info->out_buffer_size) ||
      !get_buffer(fd, SO_RCVBUF, &info->in_buffer_size)) {
    np_status_errno(st, np_errno_err(errno), errno);
    return 0;
  }
  if (p->fd < 0) { /* (the listener's socket says nothing of this instance) */
    info->out_buffer_size = p->out_given;
    info->in_buffer_size = p->in_given;
  }
  return 1;
}

void np_pipe_close(np_pipe *p) {
  if (p->closed) return;
  take_queued(p); /* before it stops listening (see take_queued) */
  p->closed = 1;
  p->state = NP_STATE_CLOSED;
  /* Sockets copy on send: what went is the peer's to read; what did not
   * is dropped, its write completing CLOSED. */
  finish_all(p, NP_CLOSED, 0);
  np_pipe_detach(p);
  if (p->outstanding == 0) np_pipe_free(p);
}

/* Bytes queued (FIONREAD counts every queued message of a message socket
 * too) and what a read(n) left of a message; the next message's size from
 * a peek that takes nothing. */
int np_pipe_peek(np_pipe *p, np_peek *peek, np_status *st) {
  int queued = 0;
  if (!np_io_allowed(p, NP_OP_READ, st)) return 0;
  if (ioctl(p->fd, FIONREAD, &queued) != 0) {
    np_status_errno(st, np_errno_err(errno), errno);
    return 0;
  }
  peek->available = (size_t)(queued > 0 ? queued : 0) + p->rest_len;
  peek->message = -1;
  if (p->read_message) {
    if (p->rest_len > 0) {
      peek->message = (long long)p->rest_len;
    } else {
      np_status ignored;
      ssize_t n = np_next_message_size(p, &ignored);
      if (n >= 0) peek->message = n;
    }
  }
  /* Nothing waits and the peer is gone: the end of the stream, as
   * PeekNamedPipe on Windows (and try_read here) says. (An empty message
   * still waiting is peek->message 0.) */
  if (peek->available == 0 && peek->message < 0) {
    struct pollfd pfd;
    pfd.fd = p->fd;
    pfd.events = POLLIN | POLLRDHUP;
    pfd.revents = 0;
    if (poll(&pfd, 1, 0) == 1 && (pfd.revents & (POLLHUP | POLLRDHUP))) {
      np_status_errno(st, NP_EOF, 0);
      return 0;
    }
  }
  return 1;
}
