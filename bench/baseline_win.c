/*
 * bench/baseline_win.c - the "limit" for bench/bench.lua on Windows: the same
 * three workloads written in plain C with the best plain technique for named
 * pipes (bench/README.md):
 *
 *   one thread, one I/O completion port, overlapped ConnectNamedPipe /
 *   ReadFile / WriteFile, reads straight into a real 64 KiB buffer (never a
 *   zero-byte probe), completions dequeued in batches of 64 with
 *   GetQueuedCompletionStatusEx.
 *
 * Every operation completes through the port, as namedpipe does (it does not
 * use FILE_SKIP_COMPLETION_PORT_ON_SUCCESS); `--skip` sets that flag on every
 * handle and handles synchronous successes inline, to show what the flag would
 * be worth (not part of the table).
 *
 * Workloads and output (one line each, as bench.lua prints them):
 *   pingpong  64-byte messages over a message-mode pipe, server and client in
 *             this process, a read always pending on both ends:
 *             "pingpong rtt_per_s=..."
 *   pingpong_byte  the same over a byte-mode pipe
 *   stream    64 KiB writes, 256 MiB one way (server -> client, byte mode),
 *             4 writes in flight, the reader's 64 KiB read always pending:
 *             "stream mib_per_s=..."
 *   step0     an idle GetQueuedCompletionStatusEx(timeout 0), ns per call
 *             (reference for namedpipe's step(0))
 *   churn     per connection: open a client, connect the listening instance,
 *             create the next instance (so the name never vanishes), one
 *             64-byte exchange (request + reply), close both:
 *             "churn conn_per_s=..."
 *   churn_vanish  the same, but each instance is created only after both
 *             ends of the last connection are closed (the name vanishes
 *             between clients): "churn_vanish conn_per_s=..."
 *   queued    one client starts N 64-byte message-mode WriteFiles at once
 *             (all pending together), then the server reads them back one
 *             by one: "queued msgs_per_s=..."
 *
 * Options: --quick (tiny sizes, contents checked), --runs N (median, min-max),
 * --only w[,w], --pp N, --stream-mib N, --churn N, --inflight N, --steps N,
 * --queued N, --skip; attribution variants (churn): --cancel-close, --extra-poll.
 *
 * Build: x86_64-w64-mingw32-gcc -O2 -o baseline_win.exe baseline_win.c
 */
#define WIN32_LEAN_AND_MEAN
#include <windows.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BUF 65536
#define BATCH 64
#define MSG 64

static HANDLE port;
static int skip_mode;
/* Attribution variants (churn; not part of the table): each adds one thing
 * namedpipe's Windows backend does per connection, to measure its cost. */
static int v_cancel_close; /* CancelIoEx(h, NULL) before every CloseHandle */
static int v_extra_poll;   /* one more GetQueuedCompletionStatusEx(0) per
                              connection (np_loop_wait polls the port even
                              when its ready queue already holds the connect) */
static int verify;
static unsigned name_counter;

static void die(const char *what) {
  fprintf(stderr, "baseline_win: %s failed: error %lu\n", what,
          (unsigned long)GetLastError());
  fflush(stderr);
  ExitProcess(1);
}

static double now_ms(void) {
  static LARGE_INTEGER f;
  LARGE_INTEGER t;
  if (!f.QuadPart) QueryPerformanceFrequency(&f);
  QueryPerformanceCounter(&t);
  return (double)t.QuadPart * 1000.0 / (double)f.QuadPart;
}

static void make_name(wchar_t *out, size_t n, const char *tag) {
  _snwprintf(out, n, L"\\\\.\\pipe\\npbase-%hs-%lu-%u", tag,
             (unsigned long)GetCurrentProcessId(), ++name_counter);
}

/* ------------------------------------------------------------ operations */

enum kind { K_READ, K_WRITE, K_CONNECT };

typedef struct op {
  OVERLAPPED ov;
  int kind;
  int who; /* workload-defined: which end */
  HANDLE h;
  char *buf; /* read: the buffer; write: the bytes */
  DWORD len;
  struct op *next;
} op;

static op *free_ops;

static op *op_new(int kind, int who, HANDLE h) {
  op *o = free_ops;
  if (o)
    free_ops = o->next;
  else if (!(o = (op *)malloc(sizeof *o)))
    die("malloc");
  memset(&o->ov, 0, sizeof o->ov);
  o->kind = kind;
  o->who = who;
  o->h = h;
  o->buf = NULL;
  o->len = 0;
  return o;
}

static void op_free(op *o) {
  o->next = free_ops;
  free_ops = o;
}

/* A finished operation: status and byte count. */
typedef struct done {
  op *o;
  DWORD bytes;
  LONG status;
} done;

/* With --skip, synchronous successes are handled inline: a small queue. */
static done inline_q[256];
static int inline_n;

static void assoc(HANDLE h) {
  if (!CreateIoCompletionPort(h, port, 0, 0)) die("CreateIoCompletionPort");
  if (skip_mode &&
      !SetFileCompletionNotificationModes(h, FILE_SKIP_COMPLETION_PORT_ON_SUCCESS))
    die("SetFileCompletionNotificationModes");
}

/* After an overlapped call: the port will tell, or (skip mode, immediate
 * success) we queue it ourselves. */
static void submitted(op *o, BOOL ok, const char *what) {
  if (ok) {
    if (skip_mode) {
      if (inline_n == (int)(sizeof inline_q / sizeof inline_q[0]))
        die("inline completion queue full");
      inline_q[inline_n].o = o;
      inline_q[inline_n].bytes = (DWORD)o->ov.InternalHigh;
      inline_q[inline_n].status = 0;
      inline_n++;
    }
    return;
  }
  if (GetLastError() == ERROR_IO_PENDING) return;
  if (GetLastError() == ERROR_MORE_DATA && !skip_mode) return;
  die(what);
}

static void post_read(op *o) {
  memset(&o->ov, 0, sizeof o->ov);
  submitted(o, ReadFile(o->h, o->buf, BUF, NULL, &o->ov), "ReadFile");
}

static void post_write(HANDLE h, int who, const char *data, DWORD len) {
  op *o = op_new(K_WRITE, who, h);
  o->buf = (char *)data;
  o->len = len;
  submitted(o, WriteFile(h, data, len, NULL, &o->ov), "WriteFile");
}

/* Wait for finished operations (inline ones first); returns how many. */
static int wait_done(done *out, DWORD timeout) {
  OVERLAPPED_ENTRY e[BATCH];
  ULONG n = 0, i;
  if (inline_n > 0) {
    int k = inline_n;
    memcpy(out, inline_q, (size_t)k * sizeof *out);
    inline_n = 0;
    return k;
  }
  if (!GetQueuedCompletionStatusEx(port, e, BATCH, &n, timeout, FALSE)) {
    if (GetLastError() == WAIT_TIMEOUT) return 0;
    die("GetQueuedCompletionStatusEx");
  }
  for (i = 0; i < n; i++) {
    op *o = CONTAINING_RECORD(e[i].lpOverlapped, op, ov);
    out[i].o = o;
    out[i].bytes = e[i].dwNumberOfBytesTransferred;
    out[i].status = (LONG)o->ov.Internal;
  }
  return (int)n;
}

static HANDLE create_instance(const wchar_t *name, int message) {
  DWORD mode = message ? PIPE_TYPE_MESSAGE | PIPE_READMODE_MESSAGE
                       : PIPE_TYPE_BYTE | PIPE_READMODE_BYTE;
  HANDLE h = CreateNamedPipeW(name, PIPE_ACCESS_DUPLEX | FILE_FLAG_OVERLAPPED,
                              mode | PIPE_REJECT_REMOTE_CLIENTS,
                              PIPE_UNLIMITED_INSTANCES, BUF, BUF, 0, NULL);
  if (h == INVALID_HANDLE_VALUE) die("CreateNamedPipeW");
  assoc(h);
  return h;
}

static HANDLE open_client(const wchar_t *name, int message) {
  DWORD access = GENERIC_READ | GENERIC_WRITE;
  HANDLE h;
  if (message) access |= FILE_WRITE_ATTRIBUTES;
  h = CreateFileW(name, access, 0, NULL, OPEN_EXISTING,
                  FILE_FLAG_OVERLAPPED | SECURITY_SQOS_PRESENT |
                      SECURITY_IDENTIFICATION,
                  NULL);
  if (h == INVALID_HANDLE_VALUE) die("CreateFileW");
  if (message) {
    DWORD m = PIPE_READMODE_MESSAGE;
    if (!SetNamedPipeHandleState(h, &m, NULL, NULL)) die("SetNamedPipeHandleState");
  }
  assoc(h);
  return h;
}

/* Connect the instance; returns 1 when connected at once (client came
 * first: ERROR_PIPE_CONNECTED, no packet), else waits for the packet. */
static void connect_instance(HANDLE srv) {
  op *o = op_new(K_CONNECT, 0, srv);
  BOOL ok = ConnectNamedPipe(srv, &o->ov);
  if (!ok && GetLastError() == ERROR_PIPE_CONNECTED) {
    op_free(o);
    return;
  }
  if (!ok && GetLastError() != ERROR_IO_PENDING) die("ConnectNamedPipe");
  if (ok && skip_mode) {
    op_free(o);
    return;
  }
  for (;;) {
    done d[BATCH];
    int n = wait_done(d, 5000), i, got = 0;
    if (n == 0) die("connect timeout");
    for (i = 0; i < n; i++) {
      if (d[i].o != o) {
        fprintf(stderr, "baseline_win: unexpected packet during connect\n");
        ExitProcess(1);
      }
      got = 1;
    }
    op_free(o);
    if (got) return;
  }
}

static void check(int cond, const char *what) {
  if (!cond) {
    fprintf(stderr, "baseline_win: check failed: %s\n", what);
    fflush(stderr);
    ExitProcess(1);
  }
}

static void fill_msg(char *m, unsigned i) {
  unsigned k;
  for (k = 0; k < MSG; k++) m[k] = (char)('a' + (i * 7 + k) % 26);
}

/* ------------------------------------------------------------- pingpong */

enum { SRV = 1, CLI = 2 };

/* message: a message-mode pipe (one read, one message). Byte mode: a byte
 * pipe; a 64-byte message could come in parts, so each end joins them (in
 * practice one read has it whole). */
static double pingpong(long n, int message) {
  wchar_t name[128];
  HANDLE srv, cli;
  op *sr, *cr;
  static char msgs[4][MSG]; /* the client's requests (rotating) */
  static char sreply[4][MSG]; /* the server's reply copies (rotating) */
  char *msg = msgs[0];
  unsigned rot = 0;
  long count = 0;
  DWORD shave = 0, chave = 0;
  static char sjoin[MSG], cjoin[MSG];
  double t0, t1;
  make_name(name, 128, "pp");
  srv = create_instance(name, message);
  cli = open_client(name, message);
  connect_instance(srv);
  sr = op_new(K_READ, SRV, srv);
  sr->buf = (char *)malloc(BUF);
  cr = op_new(K_READ, CLI, cli);
  cr->buf = (char *)malloc(BUF);
  fill_msg(msg, 0);
  post_read(sr);
  post_read(cr);
  t0 = now_ms();
  post_write(cli, CLI, msg, MSG);
  while (count < n) {
    done d[256];
    int k = wait_done(d, 5000), i;
    check(k > 0, "pingpong: no completion in 5 s");
    for (i = 0; i < k; i++) {
      op *o = d[i].o;
      check(d[i].status == 0, "pingpong: operation failed");
      if (o->kind == K_WRITE) {
        check(d[i].bytes == MSG, "pingpong: short write");
        op_free(o);
      } else if (o->who == SRV) {
        char *r = sreply[rot++ & 3];
        if (!message && (d[i].bytes != MSG || shave > 0)) {
          check(shave + d[i].bytes <= MSG, "pingpong: too many bytes");
          memcpy(sjoin + shave, o->buf, d[i].bytes);
          shave += d[i].bytes;
          post_read(o);
          if (shave < MSG) continue;
          shave = 0;
          memcpy(r, sjoin, MSG);
        } else {
          check(d[i].bytes == MSG, "pingpong: server got a short message");
          memcpy(r, o->buf, MSG);
          post_read(o);
        }
        post_write(srv, SRV, r, MSG);
      } else {
        const char *got = o->buf;
        if (!message && (d[i].bytes != MSG || chave > 0)) {
          check(chave + d[i].bytes <= MSG, "pingpong: too many bytes");
          memcpy(cjoin + chave, o->buf, d[i].bytes);
          chave += d[i].bytes;
          if (chave < MSG) {
            post_read(o);
            continue;
          }
          chave = 0;
          got = cjoin;
        } else {
          check(d[i].bytes == MSG, "pingpong: short reply");
        }
        check(memcmp(got, msg, MSG) == 0, "pingpong: reply differs");
        count++;
        if (count < n) {
          post_read(o);
          if (verify) {
            msg = msgs[count & 3];
            fill_msg(msg, (unsigned)count);
          }
          post_write(cli, CLI, msg, MSG);
        }
      }
    }
  }
  t1 = now_ms();
  CloseHandle(cli);
  CloseHandle(srv);
  /* the server's read comes back aborted; then free everything */
  {
    done d[256];
    int got = 0;
    while (!got) {
      int k = wait_done(d, 5000), i;
      check(k > 0, "pingpong: close packet");
      for (i = 0; i < k; i++) {
        if (d[i].o == sr) got = 1;
        else if (d[i].o->kind == K_WRITE) op_free(d[i].o);
      }
    }
  }
  free(sr->buf);
  free(cr->buf);
  op_free(sr);
  op_free(cr);
  return (double)n / ((t1 - t0) / 1000.0);
}

/* --------------------------------------------------------------- stream */

static double stream(long long total, int inflight) {
  wchar_t name[128];
  HANDLE srv, cli;
  op *cr;
  static char blocks[3][BUF];
  int nb = verify ? 3 : 1, b, j;
  long long nwrites = total / BUF, started = 0, written = 0, received = 0;
  double t0, t1;
  for (b = 0; b < nb; b++)
    for (j = 0; j < BUF; j++) blocks[b][j] = (char)((j * 31 + b * 101 + j / 251) & 0xFF);
  make_name(name, 128, "st");
  srv = create_instance(name, 0);
  cli = open_client(name, 0);
  connect_instance(srv);
  cr = op_new(K_READ, CLI, cli);
  cr->buf = (char *)malloc(BUF);
  post_read(cr);
  t0 = now_ms();
  while (started < nwrites && started < inflight) {
    post_write(srv, SRV, blocks[started % nb], BUF);
    started++;
  }
  while (received < total || written < total) {
    done d[256];
    int k = wait_done(d, 5000), i;
    check(k > 0, "stream: no completion in 5 s");
    for (i = 0; i < k; i++) {
      op *o = d[i].o;
      check(d[i].status == 0, "stream: operation failed");
      if (o->kind == K_WRITE) {
        check(d[i].bytes == BUF, "stream: short write");
        written += d[i].bytes;
        op_free(o);
        if (started < nwrites) {
          post_write(srv, SRV, blocks[started % nb], BUF);
          started++;
        }
      } else {
        DWORD got = d[i].bytes, c = 0;
        check(got > 0, "stream: empty read");
        if (verify) {
          while (c < got) {
            long long pos = received + c;
            const char *blk = blocks[(pos / BUF) % nb];
            DWORD off = (DWORD)(pos % BUF), len = BUF - off;
            if (len > got - c) len = got - c;
            check(memcmp(o->buf + c, blk + off, len) == 0, "stream: bytes differ");
            c += len;
          }
        }
        received += got;
        if (received < total) post_read(o);
      }
    }
  }
  t1 = now_ms();
  CloseHandle(cli);
  CloseHandle(srv);
  free(cr->buf);
  op_free(cr);
  return ((double)total / 1048576.0) / ((t1 - t0) / 1000.0);
}

/* ---------------------------------------------------------------- churn */

/* One connection's exchange (churn, churn_vanish): a read pending on
 * both ends, the client's 64-byte request i, the server's echo, checked. */
static void exchange_one(HANDLE srv, HANDLE cli, char *sbuf, char *cbuf,
                         unsigned i) {
  static char sreply[MSG], msg[MSG];
  op *sr = op_new(K_READ, SRV, srv), *cr = op_new(K_READ, CLI, cli);
  int got_reply = 0;
  sr->buf = sbuf;
  cr->buf = cbuf;
  post_read(sr);
  post_read(cr);
  fill_msg(msg, i);
  post_write(cli, CLI, msg, MSG);
  while (!got_reply) {
    done d[256];
    int k = wait_done(d, 5000), j;
    check(k > 0, "churn: no completion in 5 s");
    for (j = 0; j < k; j++) {
      op *o = d[j].o;
      check(d[j].status == 0, "churn: operation failed");
      if (o->kind == K_WRITE) {
        op_free(o);
      } else if (o->who == SRV) {
        check(d[j].bytes == MSG, "churn: short request");
        memcpy(sreply, o->buf, MSG);
        op_free(o);
        post_write(srv, SRV, sreply, MSG);
      } else {
        check(d[j].bytes == MSG && memcmp(o->buf, msg, MSG) == 0,
              "churn: reply differs");
        op_free(o);
        got_reply = 1;
      }
    }
  }
}

static double churn(long n) {
  wchar_t name[128];
  HANDLE cur, next, cli;
  char *sbuf = (char *)malloc(BUF), *cbuf = (char *)malloc(BUF);
  long i;
  double t0, t1;
  make_name(name, 128, "ch");
  cur = create_instance(name, 0);
  t0 = now_ms();
  for (i = 0; i < n; i++) {
    cli = open_client(name, 0);
    connect_instance(cur);
    if (v_extra_poll) {
      OVERLAPPED_ENTRY e[BATCH];
      ULONG got = 0;
      check(!GetQueuedCompletionStatusEx(port, e, BATCH, &got, 0, FALSE),
            "churn: unexpected packet");
    }
    next = create_instance(name, 0); /* the name never vanishes */
    exchange_one(cur, cli, sbuf, cbuf, (unsigned)i);
    if (v_cancel_close) {
      CancelIoEx(cli, NULL);
      CancelIoEx(cur, NULL);
    }
    CloseHandle(cli);
    CloseHandle(cur);
    cur = next;
  }
  t1 = now_ms();
  /* collect the write packets still queued */
  {
    done d[256];
    int k;
    while ((k = wait_done(d, 0)) > 0)
      while (k-- > 0) op_free(d[k].o);
  }
  CloseHandle(cur);
  free(sbuf);
  free(cbuf);
  return (double)n / ((t1 - t0) / 1000.0);
}

/* ---------------------------------------------------------- churn_vanish */

/* As churn, but the next instance is created only after both ends of the
 * last connection are closed: the name vanishes between clients. */
static double churn_vanish(long n) {
  wchar_t name[128];
  HANDLE srv, cli;
  char *sbuf = (char *)malloc(BUF), *cbuf = (char *)malloc(BUF);
  long i;
  double t0, t1;
  make_name(name, 128, "cv");
  t0 = now_ms();
  for (i = 0; i < n; i++) {
    srv = create_instance(name, 0);
    cli = open_client(name, 0);
    connect_instance(srv);
    exchange_one(srv, cli, sbuf, cbuf, (unsigned)i);
    CloseHandle(cli);
    CloseHandle(srv); /* the last instance: the name is gone */
  }
  t1 = now_ms();
  {
    done d[256];
    int k;
    while ((k = wait_done(d, 0)) > 0)
      while (k-- > 0) op_free(d[k].o);
  }
  free(sbuf);
  free(cbuf);
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

/* One overlapped WriteFile per message, all n started at once (each with
 * its own OVERLAPPED, all pending in the kernel together), then the server
 * reads them back one by one, each read started when the last completed;
 * every message and write completion checked. The messages are made
 * before the clock starts. */
static double queued(long n) {
  wchar_t name[128];
  HANDLE srv, cli;
  char (*msgs)[MSG] = (char (*)[MSG])malloc((size_t)n * MSG);
  op *rd;
  long i, got = 0, written = 0;
  double t0, t1;
  check(msgs != NULL, "malloc");
  for (i = 0; i < n; i++) fill_numbered(msgs[i], i);
  make_name(name, 128, "qu");
  srv = create_instance(name, 1);
  cli = open_client(name, 1);
  connect_instance(srv);
  rd = op_new(K_READ, SRV, srv);
  rd->buf = (char *)malloc(BUF);
  t0 = now_ms();
  for (i = 0; i < n; i++) post_write(cli, CLI, msgs[i], MSG);
  post_read(rd);
  while (got < n || written < n) {
    done d[256];
    int k = wait_done(d, 5000), j;
    check(k > 0, "queued: no completion in 5 s");
    for (j = 0; j < k; j++) {
      op *o = d[j].o;
      check(d[j].status == 0, "queued: operation failed");
      if (o->kind == K_WRITE) {
        check(d[j].bytes == MSG, "queued: short write");
        written++;
        op_free(o);
      } else {
        check(got < n && d[j].bytes == MSG && memcmp(o->buf, msgs[got], MSG) == 0,
              "queued: message differs or out of order");
        if (++got < n) post_read(o);
      }
    }
  }
  t1 = now_ms();
  check(written == n, "queued: write completions");
  CloseHandle(cli);
  CloseHandle(srv);
  free(rd->buf);
  op_free(rd);
  free(msgs);
  return (double)n / ((t1 - t0) / 1000.0);
}

/* ---------------------------------------------------------------- step0 */

/* An idle GetQueuedCompletionStatusEx(timeout 0): the floor under an idle
 * np.step(0) (reference only). */
static double step0(long n) {
  OVERLAPPED_ENTRY e[BATCH];
  ULONG got;
  long i;
  double t0 = now_ms();
  for (i = 0; i < n; i++) GetQueuedCompletionStatusEx(port, e, BATCH, &got, 0, FALSE);
  return (now_ms() - t0) * 1e6 / (double)n;
}

/* ----------------------------------------------------------------- main */

static int cmp_dbl(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static void report(const char *workload, const char *metric, double *v, int runs,
                   const char *extra) {
  double s[64];
  int i;
  memcpy(s, v, (size_t)runs * sizeof *v);
  qsort(s, (size_t)runs, sizeof *s, cmp_dbl);
  if (runs == 1)
    printf("%s %s=%.1f runs=1 %s\n", workload, metric, s[0], extra);
  else
    printf("%s %s=%.1f min=%.1f max=%.1f runs=%d %s\n", workload, metric,
           runs % 2 ? s[runs / 2] : (s[runs / 2 - 1] + s[runs / 2]) / 2, s[0],
           s[runs - 1], runs, extra);
  (void)i;
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
  int quick = 0, runs = 5, inflight = 4, i, r;
  long pp = 10000, ch = 5000, steps = 50000, qn = 100000;
  long long mib = 256;
  const char *only = NULL;
  double v[64];
  char extra[128];
  for (i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--quick")) quick = 1;
    else if (!strcmp(argv[i], "--skip")) skip_mode = 1;
    else if (!strcmp(argv[i], "--cancel-close")) v_cancel_close = 1;
    else if (!strcmp(argv[i], "--extra-poll")) v_extra_poll = 1;
    else if (!strcmp(argv[i], "--runs") && i + 1 < argc) runs = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--only") && i + 1 < argc) only = argv[++i];
    else if (!strcmp(argv[i], "--pp") && i + 1 < argc) pp = atol(argv[++i]);
    else if (!strcmp(argv[i], "--churn") && i + 1 < argc) ch = atol(argv[++i]);
    else if (!strcmp(argv[i], "--stream-mib") && i + 1 < argc) mib = atoll(argv[++i]);
    else if (!strcmp(argv[i], "--inflight") && i + 1 < argc) inflight = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--steps") && i + 1 < argc) steps = atol(argv[++i]);
    else if (!strcmp(argv[i], "--queued") && i + 1 < argc) qn = atol(argv[++i]);
    else {
      fprintf(stderr, "baseline_win: unknown option %s\n", argv[i]);
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
  port = CreateIoCompletionPort(INVALID_HANDLE_VALUE, NULL, 0, 1);
  if (!port) die("CreateIoCompletionPort");
  if (wanted(only, "pingpong")) {
    pingpong(pp / 20 + 1, 1); /* warm-up */
    for (r = 0; r < runs; r++) v[r] = pingpong(pp, 1);
    snprintf(extra, sizeof extra, "n=%ld msg=%d mode=message", pp, MSG);
    report("pingpong", "rtt_per_s", v, runs, extra);
  }
  if (wanted(only, "pingpong_byte")) {
    pingpong(pp / 20 + 1, 0); /* warm-up */
    for (r = 0; r < runs; r++) v[r] = pingpong(pp, 0);
    snprintf(extra, sizeof extra, "n=%ld msg=%d mode=byte", pp, MSG);
    report("pingpong_byte", "rtt_per_s", v, runs, extra);
  }
  if (wanted(only, "stream")) {
    stream(4LL * BUF * inflight, inflight); /* warm-up */
    for (r = 0; r < runs; r++) v[r] = stream(mib * 1048576LL, inflight);
    snprintf(extra, sizeof extra, "mib=%lld write=%d inflight=%d mode=byte", mib,
             BUF, inflight);
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
  if (wanted(only, "queued") && skip_mode) {
    /* its thousands of inline completions would need a queue that long */
    fprintf(stderr, "baseline_win: queued is not run with --skip\n");
  } else if (wanted(only, "queued")) {
    queued(qn / 20 + 1); /* warm-up */
    for (r = 0; r < runs; r++) v[r] = queued(qn);
    snprintf(extra, sizeof extra, "n=%ld msg=%d mode=message", qn, MSG);
    report("queued", "msgs_per_s", v, runs, extra);
  }
  if (wanted(only, "step0")) {
    step0(steps / 10 + 1);
    for (r = 0; r < runs; r++) v[r] = step0(steps);
    snprintf(extra, sizeof extra, "n=%ld what=GetQueuedCompletionStatusEx(0)", steps);
    report("step0", "ns_per_call", v, runs, extra);
  }
  if (quick) printf("quick ok\n");
  return 0;
}
