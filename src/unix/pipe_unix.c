/*
 * pipe_unix.c - server instances and clients over Unix domain sockets:
 * create/open, connect, read, write, their non-blocking twins, cancel,
 * disconnect, info and close.
 *
 * A byte pipe is a SOCK_STREAM socket, a message pipe a SOCK_SEQPACKET one
 * (boundaries kept, zero-length messages too). What Windows gives and
 * SOCK_SEQPACKET does not, and how it is made up for:
 *  - read(n) of a longer message: the socket would drop the rest, so the
 *    whole message is received, its first n bytes handed out and the rest
 *    kept in the pipe's `rest` for the next reads (`more` set while the
 *    message goes on).
 *  - a byte-mode reader of a message pipe (a byte client of a message
 *    server) reads a stream: messages are joined up to the read size.
 *  - recv() returns 0 both for a zero-length message and for the end of the
 *    stream. The sender's address tells them apart: every message carries
 *    the address of the socket that sent it (msg_name), the end of the
 *    stream none. A server's socket has its listener's path; our clients
 *    autobind (an abstract name, connect_socket). A client that is not
 *    ours may be unbound (accept4 says so): then SO_PASSCRED does it, as it
 *    did for every socket before (each message comes with an SCM_CREDENTIALS
 *    record, the end of the stream with none) - at a price on every message
 *    on both sides (credentials taken and passed), which the address avoids.
 *  - one message, one system call (recv_message): received into a
 *    loop-wide spill area as large as the largest message a socket can send
 *    (the bound below), so no size probe is needed first, then copied into
 *    the read's buffer; after a large message the next goes straight into
 *    the read's buffer and spills over only if it must.
 *  - message size: a message must fit in the sender's socket buffer whole.
 *    A write that does not fit raises SO_SNDBUF (up to net.core.wmem_max,
 *    which the kernel doubles), so the largest message is about
 *    2 * wmem_max - 32 bytes (425952 with the common 212992 default);
 *    beyond it the write fails with INVALID_ARGUMENT (code EMSGSIZE).
 *    Readers size their spill area by the same bound (2 * wmem_max, or
 *    wmem_default if larger, read once per loop). Only a sender with
 *    CAP_NET_ADMIN (SO_SNDBUFFORCE), one in a network namespace with a
 *    larger wmem_max, or a wmem_max raised after the loop read it can send
 *    more: such a message is cut by the kernel; its read fails with
 *    INVALID_ARGUMENT (EMSGSIZE) and the loop goes back to probing each
 *    message's size first (two calls a message, no limit).
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
#include <pwd.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "unix.h"

/* What one attempt at a read or a write came to. */
enum { IO_AGAIN = 0, IO_DONE = 1 };

/* Edge-triggered (no read waiting). EPOLLPRI: urgent (MSG_OOB) data on a
 * stream, where a read stops short (rd_sticky). EPOLLOUT is added when a write first finds the socket full
 * (want_writable): until then every read of the peer would queue a
 * write-space edge for nobody, and a fresh socket would be reported
 * writable at the next wait for nothing. (EPOLLHUP and EPOLLERR come
 * whatever the mask.) */
#define SOCKET_EVENTS (EPOLLIN | EPOLLPRI | EPOLLRDHUP | EPOLLET)
/* A socket while a read waits on it: level-triggered (see "readiness").
 * Without EPOLLPRI: urgent data (a byte sent MSG_OOB) is also in the
 * queue, so EPOLLIN covers it, and a normal recv steps over it. */
#define LEVEL_EVENTS (EPOLLIN | EPOLLRDHUP)
#define READ_EVENTS (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR | EPOLLPRI)
#define WRITE_EVENTS (EPOLLOUT | EPOLLHUP | EPOLLERR)

/* recv_message: a message up to this size is received into the spill area
 * and copied (recvfrom: cheaper in the kernel than recvmsg, by ~8% of a
 * plain C ping-pong); after a larger one the next goes straight into the
 * read's buffer (recvmsg: the buffer, at least MSG_MIN_BUF, then the spill
 * area), saving the copy. */
#define MSG_COPY_MAX 16384u
#define MSG_MIN_BUF 65536u
/* Give back spill pages after a message used more than this of them. */
#define SPILL_KEEP (256u * 1024u)
/* A larger bound (net.core.wmem_max raised far) is not mapped: such a loop
 * probes every message's size first. */
#define SPILL_LIMIT (64u * 1024u * 1024u)

/* ------------------------------------------------------------ pipe blocks */

static np_pipe *pipe_new(np_loop *loop, const char *name, np_status *st) {
  size_t len = strlen(name);
  /* the name lives after the block: one heap block, not two */
  np_pipe *p = (np_pipe *)calloc(1, sizeof *p + len + 1);
  if (!p) {
    np_status_errno(st, NP_NO_MEMORY, ENOMEM);
    return NULL;
  }
  p->name = (char *)(p + 1);
  memcpy(p->name, name, len + 1);
  p->watch = NP_WATCH_PIPE;
  p->loop = loop;
  p->fd = -1;
  p->read_size = NP_READ_SIZE;
  p->max_instances = NP_UNLIMITED_INSTANCES;
  p->connect_req.embedded = p->read_req.embedded = p->writable_req.embedded = 1;
  p->connect_req.pipe = p->read_req.pipe = p->writable_req.pipe = p;
  p->next = loop->pipes;
  if (loop->pipes) loop->pipes->prev = p;
  loop->pipes = p;
  return p;
}

/* A block that never got to be a pipe (create/open failed). */
static void pipe_discard(np_pipe *p) {
  p->closed = 1;
  np_pipe_free(p);
}

/* The socket's epoll mask for its mode (level) and out_armed. */
static uint32_t socket_mask(const np_pipe *p) {
  return (p->level ? LEVEL_EVENTS : SOCKET_EVENTS) |
         (p->out_armed ? EPOLLOUT : 0);
}

/* Change the mode and EPOLLOUT together, one epoll_ctl. The change polls
 * the socket (ep_modify): readiness from before it is reported too. On
 * failure (it cannot fail for a registered socket) nothing changes. */
static int set_mask(np_pipe *p, int level, int out_armed) {
  int old_level = p->level, old_out = p->out_armed;
  if (level == old_level && out_armed == old_out) return 1;
  p->level = level;
  p->out_armed = out_armed;
  if (np_watch_mod(p->loop, p->fd, socket_mask(p), p) == 0) return 1;
  p->level = old_level;
  p->out_armed = old_out;
  return 0;
}

/* A new socket for the pipe: SO_PASSCRED only for an unbound peer (see the
 * top of the file: empty message versus EOF). The socket starts idle: if it
 * is readable already, epoll says so at the next wait (ep_insert polls it).
 * It starts level-triggered: its first read usually comes before its first
 * data ("readiness"). */
static int watch_socket(np_pipe *p, int fd, int passcred) {
  int one = 1;
  p->passcred = p->sock_type == SOCK_SEQPACKET && passcred;
  if (p->passcred &&
      setsockopt(fd, SOL_SOCKET, SO_PASSCRED, &one, sizeof one) != 0)
    return 0;
  p->rd_idle = 1;
  p->rd_sticky = 0;
  p->msg_queued = 0; /* (drop_socket cleared it too: it was the old one's) */
  p->out_armed = 0;
  p->level = 1;
  return np_watch_add(p->loop, fd, socket_mask(p), p) == 0;
}

/* A write or writable() waits for room: from now on this socket reports
 * EPOLLOUT. The change polls the socket (ep_modify), so room made before it
 * is reported too. Should it fail (it cannot for a registered socket), a
 * write ends with the error and writable() at once (try_write tells). */
static int want_writable(np_pipe *p) {
  return p->out_armed || set_mask(p, p->level, 1);
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
    np_watch_del(p->loop, p->fd);
    close(p->fd);
    p->fd = -1;
  }
  free(p->rest);
  p->rest = NULL;
  p->rest_off = p->rest_len = 0;
  p->msg_large = 0;
  p->msg_queued = 0;
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
    np_req **pp = &p->wq_head, *prev = NULL, *w = p->transact_write;
    while (*pp != w) {
      prev = *pp;
      pp = &prev->next;
    }
    *pp = w->next;
    if (p->wq_tail == w) p->wq_tail = prev;
    p->transact_write = NULL;
    np_write_req_drop(p, w);
    np_req_ready(&p->read_req, err, code);
  } else if (op == NP_OP_WRITABLE && (r = p->pending_writable) != NULL) {
    p->pending_writable = NULL;
    np_req_ready(r, err, code);
  } else if (op == NP_OP_WRITE) {
    /* A partly sent write says how much went (len), as on Windows. */
    while ((r = p->wq_head) != NULL) {
      p->wq_head = r->next;
      np_req_ready(r, err, code);
    }
    p->wq_tail = NULL;
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

void np_pipe_set_user(np_pipe *p, void *user) { p->user = user; }
np_mode np_pipe_read_mode(const np_pipe *p) {
  return p->read_message ? NP_MODE_MESSAGE : NP_MODE_BYTE;
}
int np_pipe_is_server(const np_pipe *p) { return p->is_server; }
np_state np_pipe_state(const np_pipe *p) { return p->state; }
const char *np_pipe_name(const np_pipe *p) { return p->name; }

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

/* -------------------------------------------------------------- readiness */

/* A recv cannot tell whether more data follows it: a message recv never, and
 * a byte-stream recv that returned less than it asked for means an empty
 * queue only if it did not stop before urgent data or after an skb that
 * passed descriptors (which only recvmsg's MSG_CTRUNC tells, at a price on
 * every read). Edge-triggered, every read after the last would then have to
 * try a recv, and in a request/reply exchange that recv fails (EAGAIN): a
 * third more system calls per round trip. So a socket is level-triggered
 * (`level`) while a read waits on it: a read then never tries at its start,
 * epoll says when there is something, one recv per read. Level-triggered
 * readiness must not be reported with nobody to take it (every wait would
 * return at once: a hung-up socket reports EPOLLHUP whatever its mask), so
 * when epoll reports the socket and nobody waited for what it reports, it
 * goes back to edge-triggered (settle_level), and to level-triggered again
 * when a read has to wait (wait_level). A read started from the read
 * callback, the usual pattern, keeps it level-triggered: one epoll_ctl per
 * switch, none while reads follow each other.
 *
 * Edge-triggered, rd_idle (unix.h) saves the recv that a read would try
 * in vain: the socket is idle after a recv (or peek) failed with EAGAIN,
 * and whatever arrives after that brings an edge (epoll queues the socket
 * on every wakeup), which clears rd_idle: nothing is missed. try_read
 * always tries (it must not say WOULDBLOCK while data is there). */
static void drained(np_pipe *p) {
  if (!p->rd_sticky) p->rd_idle = 1;
}

static int read_may_succeed(const np_pipe *p) {
  if (p->rest_len > 0) return 1; /* ours, not the socket's */
  if (p->rd_full) return 1;
  return !p->level && !p->rd_idle;
}

/* A read waits: level-triggered from now on. (Should the change fail,
 * edge-triggered is correct too, only slower.) Not for readable(): its
 * test is a MSG_PEEK, which does not step over an urgent byte (MSG_OOB)
 * at the head of a stream as a recv does, so a level-triggered socket
 * holding one would be reported at every wait and never found readable
 * (a busy loop); readable() waits edge-triggered (np_readable_start). */
static void wait_level(np_pipe *p) {
  if (!p->level && p->pending_read && p->pending_read->op != NP_OP_READABLE)
    set_mask(p, 1, p->out_armed);
}

/* After epoll reported a level-triggered socket: readiness nobody waited
 * for is not reported again and again. Readable with no read waiting: back
 * to edge-triggered (rd_idle is clear, the next read tries at once).
 * Writable with nothing to write: EPOLLOUT off while a read waits (level-
 * triggered stays useful), else back to edge-triggered with EPOLLOUT kept
 * (a writer that fills the socket again needs no epoll_ctl). */
static void settle_level(np_pipe *p, uint32_t events, int had_reader,
                         int had_writer) {
  if ((events & READ_EVENTS) && !had_reader)
    set_mask(p, 0, p->out_armed);
  else if ((events & EPOLLOUT) && !had_writer && p->out_armed)
    set_mask(p, p->pending_read != NULL, p->pending_read == NULL);
}

/* ------------------------------------------------------------------ reads */

static int read_failed(np_status *st, int e) {
  /* A reset is a peer that went with our data unread: its end of stream. */
  if (e == ECONNRESET || e == ENOTCONN || e == EPIPE)
    np_status_errno(st, NP_EOF, 0);
  else
    np_status_errno(st, np_errno_err(e), e);
  return IO_DONE;
}

/* After a failed recv: try again? On EINTR, and once on a message
 * socket's ECONNRESET. A peer that closed with messages we sent it unread
 * leaves that error on our socket, and the datagram receive path (which
 * SOCK_SEQPACKET uses) reports it before the messages the peer sent us,
 * still queued - and clears it. The stream path gives the data first, and
 * so does Windows: so a message recv that meets the reset goes on, and the
 * reader gets the queued messages, then the end, in order. */
static int recv_again(const np_pipe *p, int *resets) {
  if (errno == EINTR) return 1;
  return errno == ECONNRESET && p->sock_type == SOCK_SEQPACKET &&
         (*resets)++ == 0;
}

static ssize_t recv_some(const np_pipe *p, char *buf, size_t len) {
  ssize_t n;
  int resets = 0;
  do n = recv(p->fd, buf, len, MSG_DONTWAIT);
  while (n < 0 && recv_again(p, &resets));
  return n;
}

/* Byte-mode read size: read(0) the pipe's buffer, read(n) n but capped. */
static size_t byte_read_size(const np_pipe *p, size_t max) {
  size_t cap = NP_READ_CAP; /* read_size is never above it */
  if (max == 0) return p->read_size;
  return max < cap ? max : cap;
}

static int read_stream(np_pipe *p, size_t max, np_buf *dst, size_t *len,
                       np_status *st) {
  size_t cap = byte_read_size(p, max);
  ssize_t n;
  if (!np_buf_reserve(dst, cap)) {
    np_status_errno(st, NP_NO_MEMORY, ENOMEM);
    return IO_DONE;
  }
  /* (descriptors a peer passed are closed by the kernel: no control
   * buffer) */
  n = recv_some(p, dst->data, cap);
  p->rd_full = n == (ssize_t)cap;
  if (n > 0) {
    *len = (size_t)n;
    return IO_DONE;
  }
  if (n == 0) {
    np_status_errno(st, NP_EOF, 0);
    return IO_DONE;
  }
  if (errno == EAGAIN || errno == EWOULDBLOCK) {
    drained(p);
    return IO_AGAIN;
  }
  return read_failed(st, errno);
}

/* Descriptors a peer may have passed (SCM_RIGHTS) are not ours to keep.
 * (Without a control buffer the kernel drops them itself.) */
static void close_passed_fds(struct cmsghdr *c) {
  size_t i, n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
  for (i = 0; i < n; i++) {
    int fd;
    memcpy(&fd, CMSG_DATA(c) + i * sizeof fd, sizeof fd);
    close(fd);
  }
}

/* Room for what a message may bring: SCM_CREDENTIALS (SO_PASSCRED) and a
 * few passed descriptors (closed at once). */
typedef union msg_control {
  struct cmsghdr align;
  char buf[CMSG_SPACE(sizeof(struct ucred)) + CMSG_SPACE(8 * sizeof(int))];
} msg_control;

/* Did recvmsg return a message (possibly empty) rather than the end of the
 * stream? A message has its sender's address, or from an unbound peer its
 * SCM_CREDENTIALS record (top of the file). */
static int got_message(struct msghdr *m) {
  struct cmsghdr *c;
  int creds = 0;
  if (m->msg_control && m->msg_controllen >= sizeof(struct cmsghdr))
    for (c = CMSG_FIRSTHDR(m); c; c = CMSG_NXTHDR(m, c)) {
      if (c->cmsg_level != SOL_SOCKET) continue;
      if (c->cmsg_type == SCM_CREDENTIALS) creds = 1;
      if (c->cmsg_type == SCM_RIGHTS) close_passed_fds(c);
    }
  return m->msg_namelen > 0 || creds;
}

static void set_msg_name(np_pipe *p, struct msghdr *m, struct sockaddr_un *from,
                         msg_control *ctl) {
  m->msg_name = from;
  m->msg_namelen = sizeof *from;
  if (p->passcred) {
    m->msg_control = ctl->buf;
    m->msg_controllen = sizeof ctl->buf;
  }
}

/* Size of the next message: >= 0; -1 none yet; -2 end of stream or error
 * (in *st). Peeks without copying (MSG_TRUNC gives the real length). */
static ssize_t next_message_size(np_pipe *p, np_status *st) {
  msg_control ctl;
  struct sockaddr_un from;
  struct msghdr m;
  ssize_t n;
  int resets = 0;
  do {
    memset(&m, 0, sizeof m);
    set_msg_name(p, &m, &from, &ctl);
    n = recvmsg(p->fd, &m, MSG_PEEK | MSG_TRUNC | MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
  } while (n < 0 && recv_again(p, &resets));
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      drained(p);
      return -1;
    }
    read_failed(st, errno);
    return -2;
  }
  if (n == 0 && !got_message(&m)) {
    np_status_errno(st, NP_EOF, 0);
    return -2;
  }
  if (n > 0) got_message(&m); /* only to close passed descriptors */
  return n;
}

/* The largest message a socket can send (top of the file), for the spill
 * area; 0 when unknown. */
static long read_sysctl(const char *path) {
  char line[32];
  long v = -1;
  FILE *f = fopen(path, "re");
  if (!f) return -1;
  if (fgets(line, sizeof line, f)) v = strtol(line, NULL, 10);
  fclose(f);
  return v;
}

static size_t message_bound(void) {
  long wmax = read_sysctl("/proc/sys/net/core/wmem_max");
  long wdef = read_sysctl("/proc/sys/net/core/wmem_default");
  size_t b, page = (size_t)sysconf(_SC_PAGESIZE);
  if (wmax <= 0 || wdef <= 0 || wmax > (long)SPILL_LIMIT ||
      wdef > (long)SPILL_LIMIT)
    return 0;
  b = 2 * (size_t)wmax > (size_t)wdef ? 2 * (size_t)wmax : (size_t)wdef;
  if (b > SPILL_LIMIT) return 0;
  return (b + page - 1) / page * page;
}

/* The loop's spill area (mmap'ed without reserving swap: only what
 * messages touch is ever backed). 0: this loop probes sizes instead. */
static int spill_ready(np_loop *loop) {
  size_t size;
  void *mem;
  if (loop->msg_peek) return 0;
  if (loop->spill) return 1;
  size = message_bound();
  mem = size ? mmap(NULL, size, PROT_READ | PROT_WRITE,
                    MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
             : MAP_FAILED;
  if (mem == MAP_FAILED) {
    loop->msg_peek = 1;
    return 0;
  }
  loop->spill = (char *)mem;
  loop->spill_size = size;
  return 1;
}

/* The kernel cut a message larger than the bound (top of the file). */
static void message_too_big(np_pipe *p, np_status *st) {
  p->loop->msg_peek = 1;
  np_status_errno(st, np_errno_err(EMSGSIZE), EMSGSIZE);
}

/* One whole message into dst (*len bytes), in one system call (top of the
 * file). The message's first cap bytes are in dst already (0 after
 * recvfrom), the others in the spill area. */
static int recv_message(np_pipe *p, np_buf *dst, size_t *len, np_status *st) {
  np_loop *loop = p->loop;
  struct sockaddr_un from;
  size_t cap = 0, n, spilled;
  ssize_t got;
  int is_message, cut, queued = p->msg_queued, resets = 0;
  p->msg_queued = 0; /* what epoll said holds for one recv */
  if (p->msg_large || p->passcred) { /* SO_PASSCRED: the record is needed */
    msg_control ctl;
    struct msghdr m;
    struct iovec iov[2];
    if (!np_buf_reserve(dst, MSG_MIN_BUF)) {
      np_status_errno(st, NP_NO_MEMORY, ENOMEM);
      return IO_DONE;
    }
    cap = dst->cap;
    memset(&m, 0, sizeof m);
    iov[0].iov_base = dst->data;
    iov[0].iov_len = cap;
    iov[1].iov_base = loop->spill;
    iov[1].iov_len = loop->spill_size;
    m.msg_iov = iov;
    m.msg_iovlen = 2;
    set_msg_name(p, &m, &from, &ctl);
    do got = recvmsg(p->fd, &m, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    while (got < 0 && recv_again(p, &resets));
    is_message = got >= 0 && got_message(&m);
    cut = (m.msg_flags & MSG_TRUNC) != 0;
  } else if (queued) {
    /* A message is queued (np_pipe_on_event): no address is needed to
     * tell an empty one from the end, and asking for it costs the kernel
     * a copy per message (2-3.5% of a C message ping-pong:
     * bench/README.md). */
    do got = recv(p->fd, loop->spill, loop->spill_size, MSG_DONTWAIT | MSG_TRUNC);
    while (got < 0 && recv_again(p, &resets));
    is_message = got >= 0;
    cut = got > 0 && (size_t)got > loop->spill_size;
  } else {
    socklen_t from_len;
    do {
      from_len = sizeof from;
      /* MSG_TRUNC: the real length, which tells a cut message */
      got = recvfrom(p->fd, loop->spill, loop->spill_size,
                     MSG_DONTWAIT | MSG_TRUNC, (struct sockaddr *)&from,
                     &from_len);
    } while (got < 0 && recv_again(p, &resets));
    is_message = got >= 0 && from_len > 0;
    cut = got > 0 && (size_t)got > loop->spill_size;
  }
  if (got < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      drained(p);
      return IO_AGAIN;
    }
    return read_failed(st, errno);
  }
  if (!is_message) {
    np_status_errno(st, NP_EOF, 0);
    return IO_DONE;
  }
  if (cut) {
    message_too_big(p, st);
    return IO_DONE;
  }
  n = (size_t)got;
  p->msg_large = n > MSG_COPY_MAX;
  /* (also a valid pointer for an empty message) */
  if (!np_buf_reserve(dst, n)) {
    np_status_errno(st, NP_NO_MEMORY, ENOMEM); /* the message is lost */
    return IO_DONE;
  }
  if (n > cap) { /* the first cap bytes stayed where they are */
    spilled = n - cap;
    memcpy(dst->data + cap, loop->spill, spilled);
    if (spilled > SPILL_KEEP) madvise(loop->spill, spilled, MADV_DONTNEED);
  }
  *len = n;
  return IO_DONE;
}

/* The old way, when the loop has no spill area: probe the size, then
 * receive exactly that. */
static int recv_probed(np_pipe *p, np_buf *dst, size_t *len, np_status *st) {
  ssize_t n = next_message_size(p, st), got;
  p->msg_queued = 0; /* (only recv_message uses it) */
  if (n == -1) return IO_AGAIN;
  if (n == -2) return IO_DONE;
  if (!np_buf_reserve(dst, (size_t)n)) {
    np_status_errno(st, NP_NO_MEMORY, ENOMEM);
    return IO_DONE; /* the message stays queued for the next read */
  }
  if ((got = recv_some(p, dst->data, (size_t)n)) < 0)
    return read_failed(st, errno);
  *len = (size_t)got;
  return IO_DONE;
}

/* Up to `want` bytes of the rest, copied to `to`; returns how many. */
static size_t take_rest(np_pipe *p, char *to, size_t want) {
  size_t n = want < p->rest_len ? want : p->rest_len;
  memcpy(to, p->rest + p->rest_off, n);
  p->rest_off += n;
  p->rest_len -= n;
  if (p->rest_len == 0) {
    free(p->rest);
    p->rest = NULL;
    p->rest_off = 0;
  }
  return n;
}

/* Message read mode: one message, or its next part (max > 0). */
static int read_message(np_pipe *p, size_t max, np_buf *dst, size_t *len,
                        int *more, np_status *st) {
  size_t want;
  if (p->rest_len == 0) {
    if (spill_ready(p->loop)) {
      if (!recv_message(p, dst, len, st)) return IO_AGAIN;
    } else if (!recv_probed(p, dst, len, st)) {
      return IO_AGAIN;
    }
    if (st->err != NP_OK || max == 0 || *len <= max) return IO_DONE;
    /* read(n) of a longer message: the rest waits for the next reads */
    if (!(p->rest = (char *)malloc(*len - max))) {
      np_status_errno(st, NP_NO_MEMORY, ENOMEM);
      *len = 0;
      return IO_DONE;
    }
    memcpy(p->rest, dst->data + max, *len - max);
    p->rest_off = 0;
    p->rest_len = *len - max;
    *len = max;
    *more = 1;
    return IO_DONE;
  }
  want = max == 0 || max > p->rest_len ? p->rest_len : max;
  if (!np_buf_reserve(dst, want)) {
    np_status_errno(st, NP_NO_MEMORY, ENOMEM);
    return IO_DONE;
  }
  *len = take_rest(p, dst->data, want);
  *more = p->rest_len > 0;
  return IO_DONE;
}

/* Receive the next message (n bytes) whole into the pipe's rest. */
static int load_rest(np_pipe *p, size_t n, np_status *st) {
  char *b = (char *)malloc(n ? n : 1);
  ssize_t got;
  if (!b) {
    np_status_errno(st, NP_NO_MEMORY, ENOMEM);
    return 0;
  }
  got = recv_some(p, b, n);
  if (got < 0) {
    read_failed(st, errno); /* (before free, which may set errno) */
    free(b);
    return 0;
  }
  free(p->rest);
  p->rest = b;
  p->rest_off = 0;
  p->rest_len = (size_t)got;
  return 1;
}

/* Byte read mode on a message socket: join messages up to the read size,
 * as a byte-mode reader of a Windows message pipe sees them. */
static int read_joined(np_pipe *p, size_t max, np_buf *dst, size_t *len,
                       np_status *st) {
  size_t cap = byte_read_size(p, max), got = 0;
  np_status why;
  if (!np_buf_reserve(dst, cap)) {
    np_status_errno(st, NP_NO_MEMORY, ENOMEM);
    return IO_DONE;
  }
  while (got < cap) {
    ssize_t n, r;
    if (p->rest_len > 0) {
      got += take_rest(p, dst->data + got, cap - got);
      continue;
    }
    n = next_message_size(p, &why);
    if (n == -1) break;
    if (n == -2) {
      if (got > 0) break; /* the end (or the error) comes next time */
      *st = why;
      return IO_DONE;
    }
    if ((size_t)n <= cap - got) {
      if ((r = recv_some(p, dst->data + got, (size_t)n)) < 0) {
        if (got > 0) break;
        return read_failed(st, errno);
      }
      got += (size_t)r; /* an empty message adds nothing to a stream */
    } else if (!load_rest(p, (size_t)n, &why)) {
      if (got > 0) break;
      *st = why;
      return IO_DONE;
    }
  }
  if (got == 0) return IO_AGAIN;
  *len = got;
  return IO_DONE;
}

static int read_attempt(np_pipe *p, size_t max, np_buf *dst, size_t *len,
                        int *more, np_status *st) {
  *len = 0;
  *more = 0;
  np_status_errno(st, NP_OK, 0);
  if (p->sock_type == SOCK_STREAM) return read_stream(p, max, dst, len, st);
  if (p->read_message) return read_message(p, max, dst, len, more, st);
  p->msg_queued = 0; /* (only recv_message uses it) */
  return read_joined(p, max, dst, len, st);
}

/* Would a try_read not block now: data, the end of the stream or an error
 * is there? Looks without consuming. (A byte-mode reader of a message pipe
 * may be told so for an empty message, which try_read then skips.) */
static int read_ready(np_pipe *p) {
  np_status st;
  char c;
  ssize_t n;
  if (p->rest_len > 0) return 1;
  if (p->sock_type == SOCK_SEQPACKET) return next_message_size(p, &st) != -1;
  do n = recv(p->fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
  while (n < 0 && errno == EINTR);
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
    drained(p);
    return 0;
  }
  return 1;
}

/* A read_into a stream goes straight into the caller's memory. A message
 * socket's reads need room for a whole message (recv_message), so there
 * it lands in the request's buffer and is copied (at most max bytes: the
 * rest of a longer message waits in p->rest, as for read(n)). */
static void pump_read(np_pipe *p) {
  np_req *r = p->pending_read;
  np_buf into, *dst;
  np_status st;
  if (!r) return;
  dst = &r->buf;
  if (r->ext && p->sock_type == SOCK_STREAM) {
    into.data = r->ext;
    into.cap = r->max; /* read_stream asks for at most max: never grown */
    dst = &into;
  } else if (!r->buf.data) {
    np_read_buf_take(p->loop, &r->buf);
  }
  if (r->op == NP_OP_READABLE) {
    if (!read_ready(p)) return;
    np_status_errno(&st, NP_OK, 0);
  } else if (!read_attempt(p, r->max, dst, &r->len, &r->more, &st)) {
    return;
  }
  if (r->ext && dst != &into && st.err == NP_OK) memcpy(r->ext, r->buf.data, r->len);
  p->pending_read = NULL;
  np_req_ready(r, st.err, st.code);
}

/* ----------------------------------------------------------------- writes */

static void write_failed(np_status *st, int e) {
  if (e == EPIPE || e == ECONNRESET || e == ENOTCONN)
    np_status_errno(st, NP_BROKEN_PIPE, e);
  else
    np_status_errno(st, np_errno_err(e), e);
}

/* A message must fit in SO_SNDBUF whole (see the top of the file). Returns
 * 1 when the buffer grew, so another try makes sense. */
static int grow_sndbuf(np_pipe *p, size_t len) {
  int before, after, want;
  socklen_t sl = sizeof before;
  if (getsockopt(p->fd, SOL_SOCKET, SO_SNDBUF, &before, &sl) != 0) return 0;
  /* Linux doubles what it is given; ask for the message plus headroom. */
  want = len > (size_t)INT_MAX - 65536 ? INT_MAX : (int)len + 65536;
  if (setsockopt(p->fd, SOL_SOCKET, SO_SNDBUF, &want, sizeof want) != 0)
    return 0;
  sl = sizeof after;
  if (getsockopt(p->fd, SOL_SOCKET, SO_SNDBUF, &after, &sl) != 0) return 0;
  return after > before;
}

/* IO_DONE with *st (NP_OK when the whole message went), or IO_AGAIN. */
static int send_message(np_pipe *p, const char *data, size_t len,
                        np_status *st) {
  for (;;) {
    if (send(p->fd, data, len, MSG_NOSIGNAL | MSG_DONTWAIT) >= 0) {
      np_status_errno(st, NP_OK, 0);
      return IO_DONE;
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return IO_AGAIN;
    if (errno == EMSGSIZE && grow_sndbuf(p, len)) continue;
    write_failed(st, errno);
    return IO_DONE;
  }
}

static int write_attempt(np_pipe *p, np_req *r, np_status *st) {
  if (p->sock_type == SOCK_SEQPACKET) {
    if (!send_message(p, r->wdata, r->wlen, st)) return IO_AGAIN;
    if (st->err == NP_OK) r->wdone = r->wlen;
    return IO_DONE;
  }
  /* A stream takes what fits; the rest waits for the next EPOLLOUT. A
   * short send almost always means the socket's buffer is full (the kernel
   * stops when it cannot allocate within SO_SNDBUF): another send now
   * would fail with EAGAIN, a system call for nothing (as Tokio clears
   * write readiness after a short write, and libuv waits for POLLOUT).
   * The reader freeing room wakes epoll (unix_write_space), and arming
   * EPOLLOUT later polls the socket afresh: no wakeup is missed. The other
   * short sends (the peer closed, an error set on the socket, ENOBUFS
   * after some bytes went) end the same way: the peer's close wakes epoll
   * with EPOLLHUP and the next send fails, and after ENOBUFS the bytes
   * already sent make room when read. (A peer that only shuts its reading
   * side is reported by Linux with neither HUP nor OUT until it closes,
   * whether or not we try again now.) */
  while (r->wdone < r->wlen) {
    size_t want = r->wlen - r->wdone;
    ssize_t n = send(p->fd, r->wdata + r->wdone, want,
                     MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n >= 0) {
      r->wdone += (size_t)n;
      if ((size_t)n < want) return IO_AGAIN;
      continue;
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return IO_AGAIN;
    write_failed(st, errno);
    return IO_DONE;
  }
  np_status_errno(st, NP_OK, 0);
  return IO_DONE;
}

/* send_gathered: progress made, everything it offered went; go on. */
#define IO_MORE 2
/* At most this many writes in one sendmsg. */
#define GATHER_MAX 64

/* Several writes queued on a stream: one sendmsg offers them all (up to
 * GATHER_MAX), and the kernel takes what fits (a gathering write, as
 * Node's sockets flush queued writes with writev, and as libuv sends a
 * write's several buffers). Fewer, larger sends cost the kernel less per
 * byte: the C stream baseline moves 6,550 MiB/s with a send per 64 KiB
 * block and 7,900 with four blocks per sendmsg (bench/README.md). The writes it took whole
 * are finished here, in order; a write it took part of stays at the head
 * with wdone saying how much went, so only the head is ever partly sent,
 * as with one send per write. Returns IO_AGAIN when the socket is full,
 * IO_MORE when all that was offered went, and IO_DONE with *st when the
 * sendmsg failed (the head's error, as write_attempt). */
static int send_gathered(np_pipe *p, np_status *st) {
  struct iovec iov[GATHER_MAX];
  struct msghdr mh;
  size_t offered = 0, left;
  ssize_t n;
  np_req *r;
  int k = 0;
  for (r = p->wq_head; r && k < GATHER_MAX; r = r->next, k++) {
    iov[k].iov_base = (void *)(r->wdata + r->wdone);
    iov[k].iov_len = r->wlen - r->wdone;
    offered += iov[k].iov_len;
  }
  memset(&mh, 0, sizeof mh);
  mh.msg_iov = iov;
  mh.msg_iovlen = (size_t)k;
  n = 0; /* only empty writes: done without a call, as write_attempt */
  if (offered > 0) {
    do n = sendmsg(p->fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
    while (n < 0 && errno == EINTR);
  }
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return IO_AGAIN;
    write_failed(st, errno);
    return IO_DONE;
  }
  left = (size_t)n;
  while ((r = p->wq_head) != NULL && k-- > 0 && left >= r->wlen - r->wdone) {
    left -= r->wlen - r->wdone;
    r->wdone = r->wlen;
    p->wq_head = r->next;
    if (!p->wq_head) p->wq_tail = NULL;
    np_req_ready(r, NP_OK, 0);
  }
  if (r && left) r->wdone += left;
  return (size_t)n < offered ? IO_AGAIN : IO_MORE;
}

static void pump_writes(np_pipe *p) {
  np_req *r;
  while ((r = p->wq_head) != NULL) {
    np_status st;
    if (r->next && p->sock_type == SOCK_STREAM) {
      int io = send_gathered(p, &st);
      if (io == IO_MORE) continue;
      r = p->wq_head; /* what went whole is finished */
      if (io == IO_AGAIN) {
        if (want_writable(p)) return;
        np_status_errno(&st, np_errno_err(errno), errno);
      }
    } else if (!write_attempt(p, r, &st)) {
      if (want_writable(p)) return;
      np_status_errno(&st, np_errno_err(errno), errno);
    }
    p->wq_head = r->next;
    if (!p->wq_head) p->wq_tail = NULL;
    np_req_ready(r, st.err, st.code);
  }
}

/* Would a try_write be accepted now? Not while a write() is unreleased
 * (try_write keeps the order), else when the socket has room - or has
 * failed, which try_write will tell. */
static int write_ready(np_pipe *p) {
  struct pollfd pfd;
  if (p->busy[NP_OP_WRITE] > 0) return 0;
  pfd.fd = p->fd;
  pfd.events = POLLOUT;
  pfd.revents = 0;
  return poll(&pfd, 1, 0) != 0;
}

static void pump_writable(np_pipe *p) {
  np_req *r = p->pending_writable;
  if (!r) return;
  if (!write_ready(p)) {
    /* (unreleased writes: np_pipe_writes_released pumps again) */
    if (p->busy[NP_OP_WRITE] > 0 || want_writable(p)) return;
  }
  p->pending_writable = NULL;
  np_req_ready(r, NP_OK, 0);
}

void np_pipe_writes_released(np_pipe *p) {
  if (p->fd >= 0) pump_writable(p);
}

void np_pipe_on_event(np_pipe *p, uint32_t events) {
  int had_reader, had_writer;
  if (p->fd < 0) return;
  had_reader = p->pending_read != NULL;
  had_writer = p->wq_head != NULL || p->pending_writable != NULL;
  if (events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR | EPOLLPRI)) p->rd_sticky = 1;
  /* Readable with none of those: the socket's poll (unix_dgram_poll, at
   * this wait) found a message in its queue, and only this pipe takes
   * from it. (A peer's shutdown since does not take it back; a reset shows
   * as an error from recv, not as 0, and recv_again goes on to the
   * message.) */
  p->msg_queued = p->sock_type == SOCK_SEQPACKET && (events & EPOLLIN) &&
                  !(events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR));
  if (events & READ_EVENTS) {
    p->rd_idle = 0;
    pump_read(p);
  }
  if (events & WRITE_EVENTS) {
    pump_writes(p);
    pump_writable(p);
  }
  if (p->level && p->fd >= 0) settle_level(p, events, had_reader, had_writer);
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

/* Can this end do I/O in that direction now? Else why not, in *st. */
static int io_allowed(np_pipe *p, np_op op, np_status *st) {
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

static void read_start(np_pipe *p, size_t max, char *ext, int ref_cb,
                       int ref_data) {
  np_req *r = &p->read_req;
  np_status st;
  if (r->state != REQ_IDLE) return; /* the binding checks np_pipe_busy */
  np_req_start(p, r, NP_OP_READ, ref_cb, ref_data);
  r->max = max;
  r->ext = ext;
  if (!io_allowed(p, NP_OP_READ, &st)) {
    np_req_ready(r, st.err, st.code);
    return;
  }
  p->pending_read = r;
  if (read_may_succeed(p)) { /* else epoll will tell */
    pump_read(p);
    if (r->state == REQ_READY) {
      r->eager = 1;
      p->loop->eager_ready++;
    }
  }
  wait_level(p);
}

void np_read_start(np_pipe *p, size_t max, int ref_cb) {
  read_start(p, max, NULL, ref_cb, NP_NOREF);
}

void np_read_into_start(np_pipe *p, char *dst, size_t cap, int ref_cb,
                        int ref_data) {
  read_start(p, cap, dst, ref_cb, ref_data);
}

/* Tokio's readable(): shares the read slot with read(). */
void np_readable_start(np_pipe *p, int ref_cb) {
  np_req *r = &p->read_req;
  np_status st;
  if (r->state != REQ_IDLE) return; /* the binding checks np_pipe_busy */
  np_req_start(p, r, NP_OP_READABLE, ref_cb, NP_NOREF);
  if (!io_allowed(p, NP_OP_READ, &st)) {
    np_req_ready(r, st.err, st.code);
    return;
  }
  p->pending_read = r;
  /* edge-triggered (wait_level); what is there is reported once more */
  if (p->level) set_mask(p, 0, p->out_armed);
  if (read_may_succeed(p)) pump_read(p); /* else epoll will tell */
}

void np_writable_start(np_pipe *p, int ref_cb) {
  np_req *r = &p->writable_req;
  np_status st;
  if (r->state != REQ_IDLE) return; /* the binding checks np_pipe_busy */
  np_req_start(p, r, NP_OP_WRITABLE, ref_cb, NP_NOREF);
  if (!io_allowed(p, NP_OP_WRITE, &st)) {
    np_req_ready(r, st.err, st.code);
    return;
  }
  p->pending_writable = r;
  pump_writable(p);
}

int np_write_start(np_pipe *p, const char *data, size_t len, int ref_cb,
                   int *keeps) {
  np_req *r = np_write_req_new(p->loop);
  np_status st;
  *keeps = 0;
  if (!r) return 0;
  r->wnext = p->writes;
  if (p->writes) p->writes->wprev = r;
  p->writes = r;
  np_req_start(p, r, NP_OP_WRITE, ref_cb, NP_NOREF);
  r->wdata = data;
  r->wlen = len;
  if (!io_allowed(p, NP_OP_WRITE, &st)) {
    np_req_ready(r, st.err, st.code);
    return 1;
  }
  if (p->wq_tail)
    p->wq_tail->next = r;
  else
    p->wq_head = r;
  p->wq_tail = r;
  if (p->wq_head == r) pump_writes(p);
  /* Sent whole (or failed) at once: finished, data no longer needed. */
  *keeps = r->state == REQ_PENDING;
  return 1;
}

/* The write started last is the newest of p->writes. */
void np_write_keep(np_pipe *p, int ref_data) { p->writes->ref_data = ref_data; }

int np_try_read(np_pipe *p, size_t max, const char **data, size_t *len,
                int *more, np_status *st) {
  if (!io_allowed(p, NP_OP_READ, st)) return 0;
  if (p->pending_read ||
      !read_attempt(p, max, &p->try_buf, len, more, st)) {
    np_status_errno(st, NP_WOULDBLOCK, 0);
    return 0;
  }
  if (st->err != NP_OK) return 0;
  *data = p->try_buf.data;
  return 1;
}

/* Nothing stays in flight: the socket copies what it takes, so ref_data is
 * never kept and no completion follows. */
int np_try_write(np_pipe *p, const char *data, size_t len, int ref_data,
                 size_t *written, int *kept, np_status *st) {
  (void)ref_data;
  *kept = 0; /* nothing stays in flight: what fits is sent now */
  if (!io_allowed(p, NP_OP_WRITE, st)) return 0;
  /* Queued writes go first: a try_write must not overtake them. */
  if (p->busy[NP_OP_WRITE] > 0) {
    np_status_errno(st, NP_WOULDBLOCK, 0);
    return 0;
  }
  if (p->sock_type == SOCK_SEQPACKET) {
    if (!send_message(p, data, len, st)) {
      np_status_errno(st, NP_WOULDBLOCK, 0);
      return 0;
    }
    if (st->err != NP_OK) return 0;
    *written = len;
    return 1;
  }
  *written = 0;
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
      write_failed(st, errno);
    return 0;
  }
  np_status_errno(st, NP_OK, 0);
  return 1;
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
  if (p->fd < 0) {
    if (p->sndbuf) info->out_buffer_size = p->sndbuf;
    if (p->rcvbuf) info->in_buffer_size = p->rcvbuf;
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

/* ------------------------------------------------------------- transact */

/* A write of the request, then a read of one message, as one operation.
 * The read waits until the request went (a message goes whole or not at
 * all), so the reply is what the peer sent after it, and the request's
 * bytes are never pointed at once the transact has ended. As on Windows,
 * a message already waiting to be read makes it fail (PIPE_BUSY). */
void np_transact_start(np_pipe *p, const char *data, size_t len, int ref_cb,
                       int ref_data) {
  np_req *r = &p->read_req, *w;
  np_status st;
  if (r->state != REQ_IDLE) return; /* the binding checks np_pipe_busy */
  np_req_start(p, r, NP_OP_TRANSACT, ref_cb, ref_data);
  if (!io_allowed(p, NP_OP_READ, &st) || !io_allowed(p, NP_OP_WRITE, &st)) {
    np_req_ready(r, st.err, st.code);
    return;
  }
  if (p->sock_type != SOCK_SEQPACKET) { /* the binding checks the mode */
    np_req_ready(r, NP_INVALID_ARGUMENT, EINVAL);
    return;
  }
  if (p->rest_len > 0 || next_message_size(p, &st) >= 0) {
    np_req_ready(r, NP_PIPE_BUSY, EBUSY);
    return;
  }
  if (!(w = np_write_req_new(p->loop))) {
    np_req_ready(r, NP_NO_MEMORY, ENOMEM);
    return;
  }
  w->wnext = p->writes;
  if (p->writes) p->writes->wprev = w;
  p->writes = w;
  np_req_start(p, w, NP_OP_WRITE, NP_NOREF, NP_NOREF);
  w->transact = 1;
  w->wdata = data;
  w->wlen = len;
  p->transact_write = w;
  if (p->wq_tail)
    p->wq_tail->next = w;
  else
    p->wq_head = w;
  p->wq_tail = w;
  if (p->wq_head == w) pump_writes(p);
}

void np_transact_sent(np_req *w, np_err err, long code) {
  np_pipe *p = w->pipe;
  np_req *r = &p->read_req;
  p->transact_write = NULL;
  np_write_req_drop(p, w);
  if (err != NP_OK) {
    np_req_ready(r, err, code);
    return;
  }
  p->pending_read = r;
  if (read_may_succeed(p)) pump_read(p); /* else epoll will tell */
  wait_level(p);
}

/* ------------------------------------------------------- the other end */

static int peer_cred(np_pipe *p, struct ucred *cred, np_status *st) {
  socklen_t len = sizeof *cred;
  if (!io_allowed(p, NP_OP_CONNECT, st)) return 0;
  if (getsockopt(p->fd, SOL_SOCKET, SO_PEERCRED, cred, &len) != 0) {
    np_status_errno(st, np_errno_err(errno), errno);
    return 0;
  }
  return 1;
}

int np_pipe_peer(np_pipe *p, np_peer *peer, np_status *st) {
  struct ucred cred;
  if (!peer_cred(p, &cred, st)) return 0;
  peer->pid = (long)cred.pid;
  peer->session = -1;
  peer->uid = (long)cred.uid;
  peer->gid = (long)cred.gid;
  return 1;
}

int np_pipe_peer_user(np_pipe *p, char *user, size_t user_size, char *id,
                      size_t id_size, np_status *st) {
  struct ucred cred;
  struct passwd pw, *found = NULL;
  char buf[4096];
  if (!peer_cred(p, &cred, st)) return 0;
  snprintf(id, id_size, "%lu", (unsigned long)cred.uid);
  /* an account with no name (a container's uid): the number says who */
  if (getpwuid_r(cred.uid, &pw, buf, sizeof buf, &found) != 0 || !found)
    snprintf(user, user_size, "%s", id);
  else
    snprintf(user, user_size, "%s", pw.pw_name);
  return 1;
}

/* Bytes queued (FIONREAD counts every queued message of a message socket
 * too) and what a read(n) left of a message; the next message's size from
 * a peek that takes nothing. */
int np_pipe_peek(np_pipe *p, np_peek *peek, np_status *st) {
  int queued = 0;
  if (!io_allowed(p, NP_OP_READ, st)) return 0;
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
      ssize_t n = next_message_size(p, &ignored);
      if (n >= 0) peek->message = n;
    }
  }
  return 1;
}
