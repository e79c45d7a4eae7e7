/*
 * bench/baseline_unix.c - the "limit" for bench/bench.lua on Linux: the same
 * workloads in plain C with the best plain technique for local IPC
 * (bench/README.md): one thread, non-blocking AF_UNIX sockets, one epoll set.
 *
 *   pingpong  64-byte messages over SOCK_SEQPACKET (namedpipe's message mode
 *             is SOCK_SEQPACKET on Linux), server and client in this process.
 *             Event-driven as any epoll server: both sockets level-triggered
 *             EPOLLIN; on readable, one recv() of a whole message, answer
 *             with send(); writes are done at once (no readiness wait).
 *             "pingpong rtt_per_s=..."
 *   pingpong_byte  the same over SOCK_STREAM (byte mode; what luv uses)
 *   stream    SOCK_STREAM (byte mode), server -> client, 64 KiB writes from
 *             one buffer, 256 MiB. Edge-triggered EPOLLIN|EPOLLOUT on both
 *             ends: the writer sends until EAGAIN and waits for EPOLLOUT, the
 *             reader recv()s into a 64 KiB buffer until EAGAIN.
 *             "stream mib_per_s=..."
 *   churn     one listening SOCK_STREAM socket for the whole run (what a
 *             namedpipe name is on Linux); per connection: socket + connect,
 *             wait for the listener (epoll), accept4, register both ends,
 *             send a 64-byte request, server recv on readable + send the
 *             reply, client recv on readable, close both.
 *             "churn conn_per_s=..."
 *   churn_vanish  the same, but the name vanishes between clients: a
 *             listening socket per connection, closed and unlinked once
 *             both ends are closed. "churn_vanish conn_per_s=..."
 *   queued    SOCK_SEQPACKET, one client writes N 64-byte messages at
 *             once (sent while the socket takes them, then queued in user
 *             space and sent on EPOLLOUT), the server reads them back one
 *             by one, every one checked. "queued msgs_per_s=..."
 *   step0     an idle epoll_wait(timeout 0), ns per call (reference for
 *             namedpipe's step(0)).
 *
 * Options: --quick (tiny sizes, contents checked), --runs N (median, min-max),
 * --only w[,w], --pp N, --stream-mib N, --churn N, --steps N, --queued N.
 * Attribution variants (not in the table): --passcred, --peek, --tryfirst,
 * --bufsize N, --copy, --del, --src-offset N, --gather, --from (see the flags
 * below).
 *
 * Build: gcc -O2 -o baseline_unix bench/baseline_unix.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define BUF 65536
#define MSG 64
#define MAXEV 64

static int ep;
static int verify;
/* Attribution variants (not part of the table): each adds one thing
 * namedpipe's Linux backend does, to measure what it costs. */
static int v_passcred; /* SO_PASSCRED on message sockets, recvmsg with cmsg */
static int v_peek;     /* MSG_PEEK|MSG_TRUNC size probe before each message */
static int v_tryfirst; /* one more recv (EAGAIN) after each message: a read
                          started right after the last one tries first */
static int v_bufsize;  /* SO_SNDBUF/SO_RCVBUF on the server end */
static int v_copy;     /* stream: each read copied once more into a fresh
                          malloc block (what pushing a Lua string costs) */
static int v_del;      /* churn: EPOLL_CTL_DEL before each close */
static int v_src_offset; /* stream: the written blocks start this many bytes
                            into a page (0..4095) */
static int v_from;     /* message recv with the sender's address (recvfrom):
                          how namedpipe tells an empty message from the end
                          when epoll has not said a message is queued */
static int v_gather;   /* stream: each send offers the next GATHER blocks in
                          one sendmsg (namedpipe gathers its queued writes
                          on Linux: this is the C program doing the same) */
#define GATHER 4 /* the blocks bench.lua keeps in flight (--inflight) */
static unsigned name_counter;
static char sockdir[96];

static void die(const char *what) {
  fprintf(stderr, "baseline_unix: %s failed: %s\n", what, strerror(errno));
  exit(1);
}

static void check(int cond, const char *what) {
  if (!cond) {
    fprintf(stderr, "baseline_unix: check failed: %s\n", what);
    exit(1);
  }
}

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1000.0 + (double)ts.tv_nsec / 1e6;
}

static void sock_path(struct sockaddr_un *a, const char *tag) {
  memset(a, 0, sizeof *a);
  a->sun_family = AF_UNIX;
  snprintf(a->sun_path, sizeof a->sun_path, "%s/%s-%u.sock", sockdir, tag,
           ++name_counter);
}

static int listener(struct sockaddr_un *a, int type) {
  int fd = socket(AF_UNIX, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) die("socket");
  unlink(a->sun_path);
  if (bind(fd, (struct sockaddr *)a, sizeof *a) != 0) die("bind");
  if (listen(fd, 128) != 0) die("listen");
  return fd;
}

static int connect_to(struct sockaddr_un *a, int type) {
  int fd = socket(AF_UNIX, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) die("socket");
  if (connect(fd, (struct sockaddr *)a, sizeof *a) != 0) die("connect");
  return fd;
}

static void watch(int fd, unsigned events, int tag) {
  struct epoll_event ev;
  ev.events = events;
  ev.data.u64 = (unsigned)tag;
  if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) != 0) die("epoll_ctl");
}

static int wait_events(struct epoll_event *ev) {
  int n;
  do n = epoll_wait(ep, ev, MAXEV, 5000);
  while (n < 0 && errno == EINTR);
  if (n < 0) die("epoll_wait");
  check(n > 0, "no event in 5 s");
  return n;
}

/* A connected pair through a listener (setup, not timed). */
static void pair(int type, int *srv, int *cli) {
  struct sockaddr_un a;
  int l, s;
  sock_path(&a, type == SOCK_SEQPACKET ? "pp" : "bs");
  l = listener(&a, type);
  *cli = connect_to(&a, type);
  do s = accept4(l, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
  while (s < 0 && errno == EINTR);
  if (s < 0) die("accept4");
  *srv = s;
  if (v_bufsize) {
    setsockopt(s, SOL_SOCKET, SO_SNDBUF, &v_bufsize, sizeof v_bufsize);
    setsockopt(s, SOL_SOCKET, SO_RCVBUF, &v_bufsize, sizeof v_bufsize);
  }
  if (v_passcred && type == SOCK_SEQPACKET) {
    int one = 1;
    setsockopt(s, SOL_SOCKET, SO_PASSCRED, &one, sizeof one);
    setsockopt(*cli, SOL_SOCKET, SO_PASSCRED, &one, sizeof one);
  }
  close(l);
  unlink(a.sun_path);
}

static void fill_msg(char *m, unsigned i) {
  unsigned k;
  for (k = 0; k < MSG; k++) m[k] = (char)('a' + (i * 7 + k) % 26);
}

static ssize_t xsend(int fd, const void *b, size_t n) {
  ssize_t r;
  do r = send(fd, b, n, MSG_NOSIGNAL | MSG_DONTWAIT);
  while (r < 0 && errno == EINTR);
  return r;
}

static ssize_t xrecv(int fd, void *b, size_t n) {
  ssize_t r;
  do r = recv(fd, b, n, MSG_DONTWAIT);
  while (r < 0 && errno == EINTR);
  return r;
}

/* One message, as the variants say namedpipe would receive it. */
static ssize_t recv_message(int fd, char *buf, size_t cap) {
  union {
    struct cmsghdr align;
    char b[CMSG_SPACE(sizeof(struct ucred)) + CMSG_SPACE(8 * sizeof(int))];
  } ctl;
  struct msghdr m;
  struct iovec iov;
  ssize_t n;
  if (v_peek) {
    memset(&m, 0, sizeof m);
    m.msg_control = ctl.b;
    m.msg_controllen = sizeof ctl.b;
    do n = recvmsg(fd, &m, MSG_PEEK | MSG_TRUNC | MSG_DONTWAIT);
    while (n < 0 && errno == EINTR);
    if (n < 0) return n;
    if ((size_t)n < cap) cap = (size_t)n;
  }
  if (v_passcred && !v_peek) {
    memset(&m, 0, sizeof m);
    iov.iov_base = buf;
    iov.iov_len = cap;
    m.msg_iov = &iov;
    m.msg_iovlen = 1;
    m.msg_control = ctl.b;
    m.msg_controllen = sizeof ctl.b;
    do n = recvmsg(fd, &m, MSG_DONTWAIT);
    while (n < 0 && errno == EINTR);
  } else if (v_from) {
    struct sockaddr_un from;
    socklen_t from_len;
    do {
      from_len = sizeof from;
      n = recvfrom(fd, buf, cap, MSG_DONTWAIT, (struct sockaddr *)&from, &from_len);
    } while (n < 0 && errno == EINTR);
  } else {
    n = xrecv(fd, buf, cap);
  }
  if (n >= 0 && v_tryfirst) {
    char c;
    check(xrecv(fd, &c, 1) < 0 && errno == EAGAIN, "tryfirst: unexpected data");
  }
  return n;
}

/* ------------------------------------------------------------- pingpong */

enum { SRV = 1, CLI = 2, LST = 3 };

/* message: SOCK_SEQPACKET, one recv is one message. Byte mode: SOCK_STREAM;
 * a message could come in parts, so each end joins up to 64 bytes (in
 * practice one recv has it whole). */
static double pingpong(long n, int message) {
  int srv, cli;
  static char sbuf[BUF], cbuf[BUF];
  char msg[MSG];
  long count = 0;
  size_t shave = 0, chave = 0;
  double t0, t1;
  pair(message ? SOCK_SEQPACKET : SOCK_STREAM, &srv, &cli);
  watch(srv, EPOLLIN, SRV);
  watch(cli, EPOLLIN, CLI);
  fill_msg(msg, 0);
  t0 = now_ms();
  check(xsend(cli, msg, MSG) == MSG, "pingpong: first send");
  while (count < n) {
    struct epoll_event ev[MAXEV];
    int k = wait_events(ev), i;
    for (i = 0; i < k; i++) {
      if (ev[i].data.u64 == SRV) {
        ssize_t got = message ? recv_message(srv, sbuf, BUF)
                              : xrecv(srv, sbuf + shave, MSG - shave);
        check(got > 0, "pingpong: server recv");
        if (message) {
          check(got == MSG, "pingpong: server got a short message");
        } else if ((shave += (size_t)got) < MSG) {
          continue;
        } else {
          shave = 0;
        }
        check(xsend(srv, sbuf, MSG) == MSG, "pingpong: server send");
      } else {
        ssize_t got = message ? recv_message(cli, cbuf, BUF)
                              : xrecv(cli, cbuf + chave, MSG - chave);
        check(got > 0, "pingpong: client recv");
        if (!message) {
          if ((chave += (size_t)got) < MSG) continue;
          chave = 0;
          got = MSG;
        }
        check(got == MSG && memcmp(cbuf, msg, MSG) == 0, "pingpong: reply differs");
        count++;
        if (count < n) {
          if (verify) fill_msg(msg, (unsigned)count);
          check(xsend(cli, msg, MSG) == MSG, "pingpong: client send");
        }
      }
    }
  }
  t1 = now_ms();
  close(srv); /* closing removes them from the epoll set */
  close(cli);
  return (double)n / ((t1 - t0) / 1000.0);
}

/* --------------------------------------------------------------- stream */

/* The blocks written, at page offset v_src_offset: 64-byte aligned in a
 * page-aligned area by default (the stream's first sends start at a page
 * boundary). */
static char (*stream_blocks(void))[BUF] {
  static char *area;
  if (!area) {
    void *m;
    if (posix_memalign(&m, 4096, 3 * (size_t)BUF + 8192) != 0) die("posix_memalign");
    area = (char *)m;
  }
  return (char (*)[BUF])(area + v_src_offset);
}

static double stream(long long total) {
  int srv, cli;
  static char rbuf[BUF];
  char (*blocks)[BUF] = stream_blocks();
  int nb = verify ? 3 : 1, b, j;
  long long sent = 0, received = 0;
  double t0, t1;
  for (b = 0; b < nb; b++)
    for (j = 0; j < BUF; j++) blocks[b][j] = (char)((j * 31 + b * 101 + j / 251) & 0xFF);
  pair(SOCK_STREAM, &srv, &cli);
  watch(srv, EPOLLOUT | EPOLLET, SRV);
  watch(cli, EPOLLIN | EPOLLET, CLI);
  t0 = now_ms();
  /* the writer starts at once; after that it runs on EPOLLOUT edges */
  for (;;) {
    int wblocked = 0;
    while (sent < total && !wblocked) {
      long long off = sent % BUF;
      ssize_t w;
      if (v_gather) {
        struct iovec iov[GATHER];
        struct msghdr mh;
        int q;
        memset(&mh, 0, sizeof mh);
        for (q = 0; q < GATHER && sent + (long long)q * BUF < total; q++) {
          iov[q].iov_base = blocks[(sent / BUF + q) % nb] + (q ? 0 : off);
          iov[q].iov_len = (size_t)(q ? BUF : BUF - off);
        }
        mh.msg_iov = iov;
        mh.msg_iovlen = (size_t)q;
        do w = sendmsg(srv, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
        while (w < 0 && errno == EINTR);
      } else {
        w = xsend(srv, blocks[(sent / BUF) % nb] + off, (size_t)(BUF - off));
      }
      if (w < 0) {
        check(errno == EAGAIN, "stream: send");
        wblocked = 1;
      } else {
        sent += w;
      }
    }
    if (received >= total) break;
    {
      struct epoll_event ev[MAXEV];
      int k = wait_events(ev), i;
      for (i = 0; i < k; i++) {
        if (ev[i].data.u64 != CLI) continue; /* EPOLLOUT: loop sends again */
        for (;;) {
          ssize_t got = xrecv(cli, rbuf, BUF);
          if (got < 0) {
            check(errno == EAGAIN, "stream: recv");
            break;
          }
          check(got > 0, "stream: early end of stream");
          if (v_copy) {
            char *copy = (char *)malloc((size_t)got);
            check(copy != NULL, "malloc");
            memcpy(copy, rbuf, (size_t)got);
            __asm__ volatile("" : : "r"(copy) : "memory");
            free(copy);
          }
          if (verify) {
            ssize_t c = 0;
            while (c < got) {
              long long pos = received + c;
              const char *blk = blocks[(pos / BUF) % nb];
              ssize_t o = (ssize_t)(pos % BUF), len = BUF - o;
              if (len > got - c) len = got - c;
              check(memcmp(rbuf + c, blk + o, (size_t)len) == 0, "stream: bytes differ");
              c += len;
            }
          }
          received += got;
        }
      }
    }
  }
  t1 = now_ms();
  check(received == total, "stream: byte count");
  close(srv);
  close(cli);
  return ((double)total / 1048576.0) / ((t1 - t0) / 1000.0);
}

/* ---------------------------------------------------------------- churn */

/* One connection's exchange (churn, churn_vanish): accept the client the
 * listener l reports, the client's 64-byte request i, the server's echo,
 * checked. Returns the accepted socket. */
static int exchange_one(int l, int cli, unsigned i) {
  static char sbuf[BUF], cbuf[BUF];
  char msg[MSG];
  int srv = -1, done = 0;
  fill_msg(msg, i);
  while (!done) {
    struct epoll_event ev[MAXEV];
    int k = wait_events(ev), j;
    for (j = 0; j < k; j++) {
      if (ev[j].data.u64 == LST) {
        do srv = accept4(l, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        while (srv < 0 && errno == EINTR);
        if (srv < 0) die("accept4");
        watch(srv, EPOLLIN, SRV);
        watch(cli, EPOLLIN, CLI);
        check(xsend(cli, msg, MSG) == MSG, "churn: request");
      } else if (ev[j].data.u64 == SRV) {
        check(xrecv(srv, sbuf, BUF) == MSG, "churn: server recv");
        check(xsend(srv, sbuf, MSG) == MSG, "churn: reply");
      } else {
        check(xrecv(cli, cbuf, BUF) == MSG && memcmp(cbuf, msg, MSG) == 0,
              "churn: reply differs");
        done = 1;
      }
    }
  }
  return srv;
}

static double churn(long n) {
  struct sockaddr_un a;
  int l;
  long i;
  double t0, t1;
  sock_path(&a, "ch");
  l = listener(&a, SOCK_STREAM);
  watch(l, EPOLLIN, LST);
  t0 = now_ms();
  for (i = 0; i < n; i++) {
    int cli = connect_to(&a, SOCK_STREAM), srv;
    srv = exchange_one(l, cli, (unsigned)i);
    if (v_del) {
      struct epoll_event none;
      memset(&none, 0, sizeof none);
      epoll_ctl(ep, EPOLL_CTL_DEL, cli, &none);
      epoll_ctl(ep, EPOLL_CTL_DEL, srv, &none);
    }
    close(cli);
    close(srv);
  }
  t1 = now_ms();
  close(l);
  unlink(a.sun_path);
  return (double)n / ((t1 - t0) / 1000.0);
}

/* --------------------------------------------------------- churn_vanish */

/* As churn, but the name vanishes between clients: per connection a
 * listening socket is bound to the path, and once both ends are closed it
 * is closed and the path unlinked (what a namedpipe name whose last
 * instance closes is on Linux). */
static double churn_vanish(long n) {
  struct sockaddr_un a;
  long i;
  double t0, t1;
  sock_path(&a, "cv");
  t0 = now_ms();
  for (i = 0; i < n; i++) {
    int l = listener(&a, SOCK_STREAM), cli, srv;
    watch(l, EPOLLIN, LST);
    cli = connect_to(&a, SOCK_STREAM);
    srv = exchange_one(l, cli, (unsigned)i);
    close(cli);
    close(srv);
    close(l);
    unlink(a.sun_path); /* the name is gone */
  }
  t1 = now_ms();
  return (double)n / ((t1 - t0) / 1000.0);
}

/* --------------------------------------------------------------- queued */

/* The i-th message of queued: its number first, so order shows. */
static void fill_numbered(char *m, long i) {
  char head[24];
  fill_msg(m, (unsigned)i);
  snprintf(head, sizeof head, "%010ld:", i);
  memcpy(m, head, 11);
}

/* One client writes n 64-byte messages at once over SOCK_SEQPACKET, as an
 * event-loop program does: each write is sent at once while the socket
 * takes it, and queued in user space (a FIFO of pointers) once it does
 * not; the queue is sent on EPOLLOUT. The server reads the messages back
 * one by one as they come (level-triggered EPOLLIN, a recv per message),
 * every one checked. The messages are made before the clock starts. */
static double queued(long n) {
  int srv, cli;
  static char rbuf[BUF];
  char (*msgs)[MSG] = (char (*)[MSG])malloc((size_t)n * MSG);
  const char **q = (const char **)malloc((size_t)n * sizeof *q);
  long i, qhead = 0, qtail = 0, written = 0, got = 0;
  double t0, t1;
  check(msgs != NULL && q != NULL, "malloc");
  for (i = 0; i < n; i++) fill_numbered(msgs[i], i);
  pair(SOCK_SEQPACKET, &srv, &cli);
  watch(srv, EPOLLIN, SRV);
  watch(cli, EPOLLOUT | EPOLLET, CLI);
  t0 = now_ms();
  for (i = 0; i < n; i++) { /* write(msgs[i]) */
    if (qhead == qtail) {
      ssize_t w = xsend(cli, msgs[i], MSG);
      if (w == MSG) {
        written++;
        continue;
      }
      check(w < 0 && errno == EAGAIN, "queued: send");
    }
    q[qtail++] = msgs[i];
  }
  while (got < n || written < n) {
    struct epoll_event ev[MAXEV];
    int k = wait_events(ev), j;
    for (j = 0; j < k; j++) {
      if (ev[j].data.u64 == CLI) { /* room: send the queue's head on */
        while (qhead < qtail) {
          ssize_t w = xsend(cli, q[qhead], MSG);
          if (w < 0) {
            check(errno == EAGAIN, "queued: send");
            break;
          }
          check(w == MSG, "queued: short send");
          qhead++;
          written++;
        }
      } else {
        for (;;) {
          ssize_t r = xrecv(srv, rbuf, BUF);
          if (r < 0) {
            check(errno == EAGAIN, "queued: recv");
            break;
          }
          check(got < n && r == MSG && memcmp(rbuf, msgs[got], MSG) == 0,
                "queued: message differs or out of order");
          got++;
        }
      }
    }
  }
  t1 = now_ms();
  close(srv);
  close(cli);
  free(q);
  free(msgs);
  return (double)n / ((t1 - t0) / 1000.0);
}

/* ---------------------------------------------------------------- step0 */

static double step0(long n) {
  struct epoll_event ev[MAXEV];
  long i;
  double t0 = now_ms();
  for (i = 0; i < n; i++) epoll_wait(ep, ev, MAXEV, 0);
  return (now_ms() - t0) * 1e6 / (double)n;
}

/* ----------------------------------------------------------------- main */

static int cmp_dbl(const void *x, const void *y) {
  double a = *(const double *)x, b = *(const double *)y;
  return a < b ? -1 : a > b;
}

static void report(const char *workload, const char *metric, double *v, int runs,
                   const char *extra) {
  double s[64];
  memcpy(s, v, (size_t)runs * sizeof *v);
  qsort(s, (size_t)runs, sizeof *s, cmp_dbl);
  if (runs == 1)
    printf("%s %s=%.1f runs=1 %s\n", workload, metric, s[0], extra);
  else
    printf("%s %s=%.1f min=%.1f max=%.1f runs=%d %s\n", workload, metric,
           runs % 2 ? s[runs / 2] : (s[runs / 2 - 1] + s[runs / 2]) / 2, s[0],
           s[runs - 1], runs, extra);
  fflush(stdout);
}

static int wanted(const char *only, const char *w) {
  const char *p;
  size_t n = strlen(w);
  if (!only) return 1;
  for (p = only; (p = strstr(p, w)) != NULL; p += n)
    if ((p == only || p[-1] == ',') && (p[n] == ',' || p[n] == '\0')) return 1;
  return 0;
}

int main(int argc, char **argv) {
  int quick = 0, runs = 5, i, r;
  long pp = 100000, ch = 20000, steps = 2000000, qn = 100000;
  long long mib = 256;
  const char *only = NULL;
  double v[64];
  char extra[128];
  for (i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--quick")) quick = 1;
    else if (!strcmp(argv[i], "--runs") && i + 1 < argc) runs = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--only") && i + 1 < argc) only = argv[++i];
    else if (!strcmp(argv[i], "--pp") && i + 1 < argc) pp = atol(argv[++i]);
    else if (!strcmp(argv[i], "--churn") && i + 1 < argc) ch = atol(argv[++i]);
    else if (!strcmp(argv[i], "--stream-mib") && i + 1 < argc) mib = atoll(argv[++i]);
    else if (!strcmp(argv[i], "--steps") && i + 1 < argc) steps = atol(argv[++i]);
    else if (!strcmp(argv[i], "--queued") && i + 1 < argc) qn = atol(argv[++i]);
    else if (!strcmp(argv[i], "--inflight") && i + 1 < argc) ++i; /* sockets: n/a */
    else if (!strcmp(argv[i], "--passcred")) v_passcred = 1;
    else if (!strcmp(argv[i], "--peek")) v_peek = 1;
    else if (!strcmp(argv[i], "--copy")) v_copy = 1;
    else if (!strcmp(argv[i], "--tryfirst")) v_tryfirst = 1;
    else if (!strcmp(argv[i], "--del")) v_del = 1;
    else if (!strcmp(argv[i], "--gather")) v_gather = 1;
    else if (!strcmp(argv[i], "--from")) v_from = 1;
    else if (!strcmp(argv[i], "--src-offset") && i + 1 < argc) v_src_offset = atoi(argv[++i]) & 4095;
    else if (!strcmp(argv[i], "--bufsize") && i + 1 < argc) v_bufsize = atoi(argv[++i]);
    else {
      fprintf(stderr, "baseline_unix: unknown option %s\n", argv[i]);
      return 2;
    }
  }
  if (quick) {
    verify = 1;
    pp = 300;
    ch = 50;
    mib = 2;
    steps = 10000;
    qn = 300;
    if (runs > 1) runs = 1;
  }
  if (runs < 1 || runs > 64) runs = 5;
  if (qn < 1) qn = 1;
  snprintf(sockdir, sizeof sockdir, "/tmp/npbase-%ld-XXXXXX", (long)getpid());
  if (!mkdtemp(sockdir)) die("mkdtemp");
  ep = epoll_create1(EPOLL_CLOEXEC);
  if (ep < 0) die("epoll_create1");
  if (wanted(only, "pingpong")) {
    pingpong(pp / 20 + 1, 1); /* warm-up */
    for (r = 0; r < runs; r++) v[r] = pingpong(pp, 1);
    snprintf(extra, sizeof extra, "n=%ld msg=%d mode=message(seqpacket)", pp, MSG);
    report("pingpong", "rtt_per_s", v, runs, extra);
  }
  if (wanted(only, "pingpong_byte")) {
    pingpong(pp / 20 + 1, 0); /* warm-up */
    for (r = 0; r < runs; r++) v[r] = pingpong(pp, 0);
    snprintf(extra, sizeof extra, "n=%ld msg=%d mode=byte(stream)", pp, MSG);
    report("pingpong_byte", "rtt_per_s", v, runs, extra);
  }
  if (wanted(only, "stream")) {
    stream(1LL << 20); /* warm-up */
    for (r = 0; r < runs; r++) v[r] = stream(mib * 1048576LL);
    snprintf(extra, sizeof extra, "mib=%lld write=%d mode=byte", mib, BUF);
    report("stream", "mib_per_s", v, runs, extra);
  }
  if (wanted(only, "churn")) {
    churn(ch / 20 + 1); /* warm-up */
    for (r = 0; r < runs; r++) v[r] = churn(ch);
    snprintf(extra, sizeof extra, "n=%ld mode=byte", ch);
    report("churn", "conn_per_s", v, runs, extra);
  }
  if (wanted(only, "churn_vanish")) {
    churn_vanish(ch / 20 + 1); /* warm-up */
    for (r = 0; r < runs; r++) v[r] = churn_vanish(ch);
    snprintf(extra, sizeof extra, "n=%ld mode=byte", ch);
    report("churn_vanish", "conn_per_s", v, runs, extra);
  }
  if (wanted(only, "queued")) {
    queued(qn / 20 + 1); /* warm-up */
    for (r = 0; r < runs; r++) v[r] = queued(qn);
    snprintf(extra, sizeof extra, "n=%ld msg=%d mode=message(seqpacket)", qn, MSG);
    report("queued", "msgs_per_s", v, runs, extra);
  }
  if (wanted(only, "step0")) {
    step0(steps / 10 + 1);
    for (r = 0; r < runs; r++) v[r] = step0(steps);
    snprintf(extra, sizeof extra, "n=%ld what=epoll_wait(0)", steps);
    report("step0", "ns_per_call", v, runs, extra);
  }
  rmdir(sockdir);
  if (quick) printf("quick ok\n");
  return 0;
}
