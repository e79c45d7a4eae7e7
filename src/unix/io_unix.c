/*
 * io_unix.c - reads and writes on a pipe's socket as it allows them: when a
 * read may try (readiness: edge- or level-triggered), byte reads, writes
 * and their queue, and the epoll events that pump them. The message-mode
 * reads are message_unix.c's.
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

/* -------------------------------------------------------------- readiness */

/* A recv cannot tell whether more data follows it: a message recv never, and
 * a byte-stream recv that returned less than it asked for means an empty
 * queue only if it did not stop before urgent data or after an skb that
 * passed descriptors (which only recvmsg's MSG_CTRUNC tells, at a price on
 * every read). Edge-triggered, every read after the last would then have to
 * try a recv, and in a request/reply exchange that recv fails (EAGAIN): one
 * more system call per message, for nothing. So a socket is level-triggered
 * (`level`) while a read waits on it: a read then never tries at its start,
 * epoll says when there is something, one recv per read. Level-triggered
 * readiness must not be reported with nobody to take it (every wait would
 * return at once: a hung-up socket reports EPOLLHUP whatever its mask), so
 * when epoll reports the socket and nobody waited for what it reports, it
 * goes back to edge-triggered (settle_level), and to level-triggered again
 * when a read has to wait (np_wait_level). A read started from the read
 * callback, the usual pattern, keeps it level-triggered: one epoll_ctl per
 * switch, none while reads follow each other.
 *
 * Edge-triggered, rd_idle (unix.h) saves the recv that a read would try
 * in vain: the socket is idle after a recv (or peek) failed with EAGAIN,
 * and whatever arrives after that brings an edge (epoll queues the socket
 * on every wakeup), which clears rd_idle: nothing is missed. try_read
 * always tries (it must not say WOULDBLOCK while data is there). */
/* (np_drained and np_read_may_succeed: unix.h, static inline, as every
 * read asks them.) */

/* A read waits: level-triggered from now on. (Should the change fail,
 * edge-triggered is correct too, only slower.) Not for readable(): its
 * test is a MSG_PEEK, which does not step over an urgent byte (MSG_OOB)
 * at the head of a stream as a recv does, so a level-triggered socket
 * holding one would be reported at every wait and never found readable
 * (a busy loop); readable() waits edge-triggered (np_readable_start). */
void np_wait_level(np_pipe *p) {
  if (!p->rd.level && p->pending_read && p->pending_read->op != NP_OP_READABLE)
    np_set_mask(p, 1, p->rd.out_armed);
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
    np_set_mask(p, 0, p->rd.out_armed);
  else if ((events & EPOLLOUT) && !had_writer && p->rd.out_armed)
    np_set_mask(p, p->pending_read != NULL, p->pending_read == NULL);
}

#ifdef NP_DEBUG
/* The rules of np_readiness (unix.h), each one a reason the code above and
 * below relies on. Called between operations (at every wait, after every
 * event), never inside one, where a rule may be broken for a moment. */
static void readiness_broken(const np_pipe *p, const char *where,
                             const char *rule) {
  fprintf(stderr,
          "namedpipe: readiness rule broken (%s): %s\n"
          "  pipe %s fd %d level %d out_armed %d idle %d sticky %d full %d"
          " msg_large %d msg_queued %d mask %#x\n",
          where, rule, p->name ? p->name : "?", p->fd, p->rd.level,
          p->rd.out_armed, p->rd.idle, p->rd.sticky, p->rd.full,
          p->rd.msg_large, p->rd.msg_queued, (unsigned)p->rd.mask);
  abort();
}

#define RULE(p, where, holds, rule) \
  do {                              \
    if (!(holds)) readiness_broken(p, where, rule); \
  } while (0)

void np_readiness_check(const np_pipe *p, const char *where) {
  const np_readiness *rd = &p->rd;
  const np_req *r = p->pending_read;
  np_readiness clear;
  if (p->fd < 0) {
    memset(&clear, 0, sizeof clear);
    RULE(p, where, memcmp(rd, &clear, sizeof clear) == 0,
         "no socket, no readiness (drop_socket clears it)");
    return;
  }
  RULE(p, where, rd->mask == np_socket_mask(rd),
       "epoll has the mask that level and out_armed say");
  RULE(p, where, !(rd->sticky && rd->idle),
       "sticky (EOF, error, urgent data) is never idle");
  RULE(p, where, !rd->msg_queued || p->sock_type == SOCK_SEQPACKET,
       "msg_queued only on a message socket");
  RULE(p, where, !(rd->msg_queued && rd->idle),
       "a queued message is not idle");
  RULE(p, where, !rd->msg_large || p->sock_type == SOCK_SEQPACKET,
       "msg_large only on a message socket");
  RULE(p, where, !rd->full || p->sock_type == SOCK_STREAM,
       "full only on a stream");
  RULE(p, where, !p->wq_head || rd->out_armed,
       "a queued write waits for EPOLLOUT");
  RULE(p, where,
       !p->pending_writable || rd->out_armed || p->busy[NP_OP_WRITE] > 0,
       "writable() waits for EPOLLOUT or for its writes' release");
  RULE(p, where, !r || r->op != NP_OP_READABLE || !rd->level,
       "readable() waits edge-triggered");
  RULE(p, where,
       !r || r->op == NP_OP_READABLE || rd->level || np_read_may_succeed(p),
       "a read waits level-triggered, unless it may succeed at once");
}

void np_loop_check_readiness(np_loop *loop, const char *where) {
  const np_pipe *p;
  for (p = loop->pipes; p; p = p->next) np_readiness_check(p, where);
}
#endif

/* ------------------------------------------------------------------ reads */

int np_read_failed(np_status *st, int e) {
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
int np_recv_again(const np_pipe *p, int *resets) {
  if (errno == EINTR) return 1;
  return errno == ECONNRESET && p->sock_type == SOCK_SEQPACKET &&
         (*resets)++ == 0;
}

ssize_t np_recv_some(const np_pipe *p, char *buf, size_t len) {
  ssize_t n;
  int resets = 0;
  do n = recv(p->fd, buf, len, MSG_DONTWAIT);
  while (n < 0 && np_recv_again(p, &resets));
  return n;
}

/* Byte-mode read size: read(0) the pipe's buffer, read(n) n but capped. */
size_t np_byte_read_size(const np_pipe *p, size_t max) {
  size_t cap = NP_READ_CAP; /* read_size is never above it */
  if (max == 0) return p->read_size;
  return max < cap ? max : cap;
}

/* The buffer a read(max) will want: a byte read's size, 0 for a message
 * (its size is known only once it is there). */
size_t np_read_want(const np_pipe *p, size_t max) {
  return p->sock_type == SOCK_STREAM ? np_byte_read_size(p, max) : 0;
}

static int read_stream(np_pipe *p, size_t max, np_buf *dst, size_t *len,
                       np_status *st) {
  size_t cap = np_byte_read_size(p, max);
  ssize_t n;
  if (!np_buf_reserve(dst, cap)) {
    np_status_errno(st, NP_NO_MEMORY, ENOMEM);
    return IO_DONE;
  }
  /* (descriptors a peer passed are closed by the kernel: no control
   * buffer) */
  n = np_recv_some(p, dst->data, cap);
  p->rd.full = n == (ssize_t)cap;
  if (n > 0) {
    *len = (size_t)n;
    return IO_DONE;
  }
  if (n == 0) {
    np_status_errno(st, NP_EOF, 0);
    return IO_DONE;
  }
  if (errno == EAGAIN || errno == EWOULDBLOCK) {
    np_drained(p);
    return IO_AGAIN;
  }
  return np_read_failed(st, errno);
}

int np_read_attempt(np_pipe *p, size_t max, np_buf *dst, size_t *len,
                    int *more, np_status *st) {
  *len = 0;
  *more = 0;
  np_status_errno(st, NP_OK, 0);
  if (p->sock_type == SOCK_STREAM) return read_stream(p, max, dst, len, st);
  if (p->read_message) return np_read_message(p, max, dst, len, more, st);
  p->rd.msg_queued = 0; /* (only np_recv_message uses it) */
  return np_read_joined(p, max, dst, len, st);
}

/* Would a try_read not block now: data, the end of the stream or an error
 * is there? Looks without consuming. (A byte-mode reader of a message pipe
 * may be told so for an empty message, which try_read then skips.) */
static int read_ready(np_pipe *p) {
  np_status st;
  char c;
  ssize_t n;
  if (p->rest_len > 0) return 1;
  if (p->sock_type == SOCK_SEQPACKET) return np_next_message_size(p, &st) != -1;
  do n = recv(p->fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
  while (n < 0 && errno == EINTR);
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
    np_drained(p);
    return 0;
  }
  return 1;
}

/* A read_into a stream goes straight into the caller's memory. A message
 * socket's reads need room for a whole message (np_recv_message), so there
 * it lands in the request's buffer and is copied (at most max bytes: the
 * rest of a longer message waits in p->rest, as for read(n)). */
void np_pump_read(np_pipe *p) {
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
    np_read_buf_take(p->loop, &r->buf, np_read_want(p, r->max));
  }
  if (r->op == NP_OP_READABLE) {
    if (!read_ready(p)) return;
    np_status_errno(&st, NP_OK, 0);
  } else {
    int more;
    if (!np_read_attempt(p, r->max, dst, &r->len, &more, &st)) return;
    r->more = more != 0;
  }
  if (r->ext && dst != &into && st.err == NP_OK) memcpy(r->ext, r->buf.data, r->len);
  p->pending_read = NULL;
  np_req_ready(r, st.err, st.code);
}

/* ----------------------------------------------------------------- writes */

void np_write_failed(np_status *st, int e) {
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
int np_send_message(np_pipe *p, const char *data, size_t len,
                    np_status *st) {
  for (;;) {
    if (send(p->fd, data, len, MSG_NOSIGNAL | MSG_DONTWAIT) >= 0) {
      np_status_errno(st, NP_OK, 0);
      return IO_DONE;
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return IO_AGAIN;
    if (errno == EMSGSIZE && grow_sndbuf(p, len)) continue;
    np_write_failed(st, errno);
    return IO_DONE;
  }
}

/* A write of nothing to a stream sends nothing, but fails as Windows
 * fails it (BROKEN_PIPE) once the peer is gone: the peer's close shuts
 * this end for sending, and a send of zero bytes then fails with EPIPE,
 * where skipping the call would report success. 1: no error. */
int np_send_nothing(np_pipe *p, np_status *st) {
  ssize_t n;
  do n = send(p->fd, "", 0, MSG_NOSIGNAL | MSG_DONTWAIT);
  while (n < 0 && errno == EINTR);
  if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
    np_write_failed(st, errno);
    return 0;
  }
  np_status_errno(st, NP_OK, 0);
  return 1;
}

static int write_attempt(np_pipe *p, np_req *r, np_status *st) {
  if (p->sock_type == SOCK_SEQPACKET) {
    if (!np_send_message(p, r->wdata, r->wlen, st)) return IO_AGAIN;
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
  if (r->wlen == 0) {
    np_send_nothing(p, st);
    return IO_DONE;
  }
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
    np_write_failed(st, errno);
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
 * byte (the per-call cost is paid once; bench/README.md has the figures).
 * The writes it took whole are finished here, in order; a write it took
 * part of stays at the head with wdone saying how much went, so only the
 * head is ever partly sent, as with one send per write. Returns IO_AGAIN when the socket is full,
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
  n = 0; /* only empty writes: they fail only if the peer is gone */
  if (offered > 0) {
    do n = sendmsg(p->fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
    while (n < 0 && errno == EINTR);
  } else if (!np_send_nothing(p, st)) {
    return IO_DONE;
  }
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return IO_AGAIN;
    np_write_failed(st, errno);
    return IO_DONE;
  }
  left = (size_t)n;
  while ((r = p->wq_head) != NULL && k-- > 0 && left >= r->wlen - r->wdone) {
    left -= r->wlen - r->wdone;
    r->wdone = r->wlen;
    np_wq_unlink(p, r);
    np_req_ready(r, NP_OK, 0);
  }
  if (r && left) r->wdone += left;
  return (size_t)n < offered ? IO_AGAIN : IO_MORE;
}

void np_pump_writes(np_pipe *p) {
  np_req *r;
  while ((r = p->wq_head) != NULL) {
    np_status st;
    if (r->next && p->sock_type == SOCK_STREAM) {
      int io = send_gathered(p, &st);
      if (io == IO_MORE) continue;
      r = p->wq_head; /* what went whole is finished */
      if (io == IO_AGAIN) {
        if (np_want_writable(p)) return;
        np_status_errno(&st, np_errno_err(errno), errno);
      }
    } else if (!write_attempt(p, r, &st)) {
      if (np_want_writable(p)) return;
      np_status_errno(&st, np_errno_err(errno), errno);
    }
    np_wq_unlink(p, r);
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

void np_pump_writable(np_pipe *p) {
  np_req *r = p->pending_writable;
  if (!r) return;
  if (!write_ready(p)) {
    /* (unreleased writes: np_pipe_writes_released pumps again) */
    if (p->busy[NP_OP_WRITE] > 0 || np_want_writable(p)) return;
  }
  p->pending_writable = NULL;
  np_req_ready(r, NP_OK, 0);
}

void np_pipe_writes_released(np_pipe *p) {
  if (p->fd >= 0) np_pump_writable(p);
}

void np_pipe_on_event(np_pipe *p, uint32_t events) {
  int had_reader, had_writer;
  if (p->fd < 0) return;
  had_reader = p->pending_read != NULL;
  had_writer = p->wq_head != NULL || p->pending_writable != NULL;
  if (events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR | EPOLLPRI)) p->rd.sticky = 1;
  /* Readable with none of those: the socket's poll (unix_dgram_poll, at
   * this wait) found a message in its queue, and only this pipe takes
   * from it. (A peer's shutdown since does not take it back; a reset shows
   * as an error from recv, not as 0, and np_recv_again goes on to the
   * message.) */
  p->rd.msg_queued = p->sock_type == SOCK_SEQPACKET && (events & EPOLLIN) &&
                     !(events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR));
  if (events & READ_EVENTS) {
    p->rd.idle = 0;
    np_pump_read(p);
  }
  if (events & WRITE_EVENTS) {
    np_pump_writes(p);
    np_pump_writable(p);
  }
  if (p->rd.level && p->fd >= 0)
    settle_level(p, events, had_reader, had_writer);
  np_readiness_check(p, "after an event");
}
