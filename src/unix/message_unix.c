/*
 * message_unix.c - message mode over SOCK_SEQPACKET, made to read as a
 * Windows message pipe: whole messages, their rest kept for the next
 * reads, zero-length messages told from the end of the stream, byte-mode
 * readers of a message pipe, and transact.
 *
 * A message pipe is a SOCK_SEQPACKET socket (boundaries kept, zero-length
 * messages too). What Windows gives and SOCK_SEQPACKET does not, and how
 * it is made up for:
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

/* recv_message: a message up to this size is received into the spill area
 * and copied (recvfrom: less work in the kernel than recvmsg); after a
 * larger one the next goes straight into the read's buffer (recvmsg: the
 * buffer, at least MSG_MIN_BUF, then the spill area), saving the copy. */
#define MSG_COPY_MAX 16384u
#define MSG_MIN_BUF 65536u
/* Give back spill pages after a message used more than this of them. */
#define SPILL_KEEP (256u * 1024u)
/* A larger bound (net.core.wmem_max raised far) is not mapped: such a loop
 * probes every message's size first. */
#define SPILL_LIMIT (64u * 1024u * 1024u)

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
ssize_t np_next_message_size(np_pipe *p, np_status *st) {
  msg_control ctl;
  struct sockaddr_un from;
  struct msghdr m;
  ssize_t n;
  int resets = 0;
  do {
    memset(&m, 0, sizeof m);
    set_msg_name(p, &m, &from, &ctl);
    n = recvmsg(p->fd, &m, MSG_PEEK | MSG_TRUNC | MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
  } while (n < 0 && np_recv_again(p, &resets));
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      np_drained(p);
      return -1;
    }
    np_read_failed(st, errno);
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
int np_recv_message(np_pipe *p, np_buf *dst, size_t *len, np_status *st) {
  np_loop *loop = p->loop;
  struct sockaddr_un from;
  size_t cap = 0, n, spilled;
  ssize_t got;
  int is_message, cut, queued = p->rd.msg_queued, resets = 0;
  p->rd.msg_queued = 0; /* what epoll said holds for one recv */
  if (p->rd.msg_large || p->passcred) { /* SO_PASSCRED: the record is needed */
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
    while (got < 0 && np_recv_again(p, &resets));
    is_message = got >= 0 && got_message(&m);
    cut = (m.msg_flags & MSG_TRUNC) != 0;
  } else if (queued) {
    /* A message is queued (np_pipe_on_event): no address is needed to
     * tell an empty one from the end, and asking for it costs the kernel
     * a copy per message (bench/README.md, `--from`). */
    do got = recv(p->fd, loop->spill, loop->spill_size, MSG_DONTWAIT | MSG_TRUNC);
    while (got < 0 && np_recv_again(p, &resets));
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
    } while (got < 0 && np_recv_again(p, &resets));
    is_message = got >= 0 && from_len > 0;
    cut = got > 0 && (size_t)got > loop->spill_size;
  }
  if (got < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      np_drained(p);
      return IO_AGAIN;
    }
    return np_read_failed(st, errno);
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
  p->rd.msg_large = n > MSG_COPY_MAX;
  /* A message with no buffer yet goes into one of the loop's kept read
   * buffers, as a byte-mode read does, or a new one of that size that is
   * kept when given back: a malloc and a free of the message's own size
   * per message were a tenth of namedpipe's own work in a ping-pong. */
  if (!dst->data && n <= NP_READ_SIZE) {
    np_read_buf_take(loop, dst, n);
    if (!dst->data && !np_buf_reserve(dst, NP_READ_SIZE)) {
      np_status_errno(st, NP_NO_MEMORY, ENOMEM); /* the message is lost */
      return IO_DONE;
    }
  }
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
  ssize_t n = np_next_message_size(p, st), got;
  p->rd.msg_queued = 0; /* (only np_recv_message uses it) */
  if (n == -1) return IO_AGAIN;
  if (n == -2) return IO_DONE;
  if (!np_buf_reserve(dst, (size_t)n)) {
    np_status_errno(st, NP_NO_MEMORY, ENOMEM);
    return IO_DONE; /* the message stays queued for the next read */
  }
  if ((got = np_recv_some(p, dst->data, (size_t)n)) < 0)
    return np_read_failed(st, errno);
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
int np_read_message(np_pipe *p, size_t max, np_buf *dst, size_t *len,
                    int *more, np_status *st) {
  size_t want;
  if (p->rest_len == 0) {
    if (spill_ready(p->loop)) {
      if (!np_recv_message(p, dst, len, st)) return IO_AGAIN;
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
  got = np_recv_some(p, b, n);
  if (got < 0) {
    np_read_failed(st, errno); /* (before free, which may set errno) */
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
int np_read_joined(np_pipe *p, size_t max, np_buf *dst, size_t *len,
                   np_status *st) {
  size_t cap = np_byte_read_size(p, max), got = 0;
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
    n = np_next_message_size(p, &why);
    if (n == -1) break;
    if (n == -2) {
      if (got > 0) break; /* the end (or the error) comes next time */
      *st = why;
      return IO_DONE;
    }
    if ((size_t)n <= cap - got) {
      if ((r = np_recv_some(p, dst->data + got, (size_t)n)) < 0) {
        if (got > 0) break;
        return np_read_failed(st, errno);
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
  if (!np_io_allowed(p, NP_OP_READ, &st) || !np_io_allowed(p, NP_OP_WRITE, &st)) {
    np_req_ready(r, st.err, st.code);
    return;
  }
  if (p->sock_type != SOCK_SEQPACKET) { /* the binding checks the mode */
    np_req_ready(r, NP_INVALID_ARGUMENT, EINVAL);
    return;
  }
  if (p->rest_len > 0 || np_next_message_size(p, &st) >= 0) {
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
  np_wq_push(p, w);
  if (p->wq_head == w) np_pump_writes(p);
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
  if (np_read_may_succeed(p)) np_pump_read(p); /* else epoll will tell */
  np_wait_level(p);
}
