/*
 * loop_unix.c - the loop over one epoll set: waiting, the FIFO of finished
 * requests, their release, and the end of every block.
 *
 * Lifetime: a request counts in its pipe's `outstanding` from its start to
 * np_completion_done(); a closed pipe's block is freed when that count
 * reaches zero (by close itself when nothing is outstanding). Nothing is
 * kernel-owned here (sockets copy on send and recv), so np_pipe_close can
 * finish every pending request at once, as CLOSED, through the ready queue.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "unix.h"

/* Released write requests kept for the next writes, at most this many per
 * loop (one malloc and free a write otherwise). */
#define KEEP_WRITE_REQS 64

/* np_loop_wait: waits in a row that may skip epoll (see there). */
#define NP_WAIT_SKIPS 16

double np_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1000.0 + (double)ts.tv_nsec / 1e6;
}

/* ---------------------------------------------------------------- buffers */

int np_buf_reserve(np_buf *b, size_t n) {
  char *d;
  if (n == 0) n = 1; /* a zero-length read still hands out a valid pointer */
  if (b->cap >= n) return 1;
  d = (char *)realloc(b->data, n);
  if (!d) return 0;
  b->data = d;
  b->cap = n;
  return 1;
}

/* A kept read buffer for an empty one that is to hold `want` bytes (0:
 * not known yet), if any: one of the usual size, or the loop's larger
 * spare for a larger want. */
void np_read_buf_take(np_loop *loop, np_buf *b, size_t want) {
  if (b->data) return;
  if (want > NP_READ_SIZE) {
    if (loop->big_spare.cap >= want) {
      *b = loop->big_spare;
      loop->big_spare.data = NULL;
      loop->big_spare.cap = 0;
    }
    return;
  }
  if (loop->n_free_rbufs == 0) return;
  b->data = loop->free_rbufs[--loop->n_free_rbufs];
  b->cap = NP_READ_SIZE;
}

/* Give a read buffer up: kept when of the usual size (NP_KEEP_READ_BUFS
 * of them), as the loop's one larger spare when up to NP_READ_CAP (a
 * reader asking read(n) for a large n reads into the same memory each
 * time, with no malloc of it per read), else freed. */
void np_read_buf_give(np_loop *loop, np_buf *b) {
  if (!b->data) return;
  if (b->cap == NP_READ_SIZE && loop->n_free_rbufs < NP_KEEP_READ_BUFS) {
    loop->free_rbufs[loop->n_free_rbufs++] = b->data;
  } else if (b->cap > NP_READ_SIZE && b->cap <= NP_READ_CAP &&
             b->cap >= loop->big_spare.cap) {
    free(loop->big_spare.data);
    loop->big_spare = *b;
  } else {
    free(b->data);
  }
  b->data = NULL;
  b->cap = 0;
}

/* ------------------------------------------------------------------- loop */

static unsigned long forks_now(void); /* (np_watch_close, below) */

np_loop *np_loop_new(np_status *st) {
  np_loop *loop = (np_loop *)calloc(1, sizeof *loop);
  if (!loop) {
    np_status_errno(st, NP_NO_MEMORY, ENOMEM);
    return NULL;
  }
  loop->host_efd = loop->host_tfd = -1;
  loop->host_timer_at = -1;
  loop->host_capped_at = -1;
  loop->forks_at_birth = forks_now();
  loop->epfd = epoll_create1(EPOLL_CLOEXEC);
  if (loop->epfd < 0) {
    np_status_errno(st, np_errno_err(errno), errno);
    free(loop);
    return NULL;
  }
  return loop;
}

int np_watch_add(np_loop *loop, int fd, uint32_t events, void *ptr) {
  struct epoll_event ev;
  memset(&ev, 0, sizeof ev);
  ev.events = events;
  ev.data.ptr = ptr;
  return epoll_ctl(loop->epfd, EPOLL_CTL_ADD, fd, &ev);
}

int np_watch_mod(np_loop *loop, int fd, uint32_t events, void *ptr) {
  struct epoll_event ev;
  memset(&ev, 0, sizeof ev);
  ev.events = events;
  ev.data.ptr = ptr;
  return epoll_ctl(loop->epfd, EPOLL_CTL_MOD, fd, &ev);
}

/* Closing a watched socket. epoll forgets a socket only when its last
 * descriptor is closed: a copy in a fork()ed child keeps it registered,
 * and its events would then come to this loop for a block already freed.
 * So a socket is taken out of the set first, unless no fork has happened
 * since the loop was made: then the loop's descriptor is the only one (our
 * sockets are never handed out or duplicated) and close() is enough, one
 * system call per socket less. Forks are counted by pthread_atfork's
 * prepare handler under fork_mutex, which np_watch_close holds from its
 * look at the count to its close(): a fork is then either before the look
 * (counted) or after the close (the child gets no copy). */
static pthread_mutex_t fork_mutex = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t fork_once = PTHREAD_ONCE_INIT;
static unsigned long forks; /* under fork_mutex */
static int forks_counted;   /* the handlers are in place */

static void fork_prepare(void) {
  pthread_mutex_lock(&fork_mutex);
  forks++;
}
static void fork_done(void) { pthread_mutex_unlock(&fork_mutex); }
static void count_forks(void) {
  forks_counted = pthread_atfork(fork_prepare, fork_done, fork_done) == 0;
}

/* The fork count now, for a new loop (np_loop_new); a count that can
 * never match when forks cannot be counted. */
static unsigned long forks_now(void) {
  unsigned long n;
  pthread_once(&fork_once, count_forks);
  pthread_mutex_lock(&fork_mutex);
  n = forks_counted ? forks : ULONG_MAX;
  pthread_mutex_unlock(&fork_mutex);
  return n;
}

void np_watch_close(np_loop *loop, int fd) {
  pthread_mutex_lock(&fork_mutex);
  if (forks != loop->forks_at_birth) {
    struct epoll_event ev;
    memset(&ev, 0, sizeof ev);
    epoll_ctl(loop->epfd, EPOLL_CTL_DEL, fd, &ev);
  }
  close(fd);
  pthread_mutex_unlock(&fork_mutex);
}

static void dispatch(const struct epoll_event *ev) {
  np_watch *w = (np_watch *)ev->data.ptr;
  if (*w == NP_WATCH_PIPE)
    np_pipe_on_event((np_pipe *)w, ev->events);
  else if (*w == NP_WATCH_LISTENER)
    np_listener_on_event((np_listener *)w);
  /* NP_WATCH_HOST: the step itself is what it announced */
}

/* Take what epoll holds now, without waiting: how many events. */
int np_loop_poll_now(np_loop *loop) {
  struct epoll_event evs[64];
  int i, n;
  if (loop->parked_head) np_listener_drop_parked(loop);
  n = epoll_wait(loop->epfd, evs, (int)(sizeof evs / sizeof evs[0]), 0);
  for (i = 0; i < n; i++) dispatch(&evs[i]);
  return n < 0 ? 0 : n;
}

int np_loop_wait(np_loop *loop, int timeout_ms, np_status *st) {
  struct epoll_event evs[64];
  double deadline;
  /* A step(0) with nothing started and nothing finished has nothing to
   * learn from epoll: what it would report (a socket nobody reads turning
   * readable, a client queued for an instance nobody connects) stays
   * reported until a step that has something waiting (edge-triggered
   * events stay queued; a connect() accepts at once). As the Windows
   * backend skips its port. */
  /* A name closed since the last wait and not made again goes now
   * (listener_unix.c, "a name closed and made again"). */
  if (loop->parked_head) np_listener_drop_parked(loop);
  np_loop_check_readiness(loop, "as a wait begins");
  if (loop->hosted) np_host_wait_begins(loop);
  /* (A host polls the epoll descriptor: what it holds must be taken.) */
  if (timeout_ms == 0 && loop->outstanding == 0 && loop->ready_count == 0 &&
      !loop->hosted) {
    if (loop->plugs_wanted) np_listener_plug_deferred(loop);
    return 0;
  }
  /* Only reads that finished as they started are ready (typically a
   * stream read whose predecessor filled its buffer, read again from its
   * callback):
   * hand them out without asking epoll, which would cost a system call per
   * read, as the C programs that recv until EAGAIN do not pay. At most
   * NP_WAIT_SKIPS times in a row, so that such a stream cannot keep the
   * other pipes' events waiting (as Tokio polls its I/O driver every 61
   * tasks). Anything else ready (a write that finished at once, say) means
   * the peer may have something for us: epoll is asked. */
  if (loop->ready_count > 0 && loop->ready_count == loop->eager_ready &&
      loop->skipped_waits < NP_WAIT_SKIPS) {
    loop->skipped_waits++;
    return loop->ready_count > INT_MAX ? INT_MAX : (int)loop->ready_count;
  }
  loop->skipped_waits = 0;
  deadline = timeout_ms > 0 ? np_now_ms() + timeout_ms : 0;
  for (;;) {
    int i, n, t = loop->ready_count > 0 ? 0 : timeout_ms;
    /* A listener whose last free instance was taken plugs its queue only
     * now, if no instance came free meanwhile (listener_unix.c, gate) - and
     * only once the completions queued so far have been handed out: their
     * callbacks (a connect's, say) usually create the next instance. */
    if (loop->plugs_wanted && loop->ready_count == 0)
      np_listener_plug_deferred(loop);
    n = epoll_wait(loop->epfd, evs, (int)(sizeof evs / sizeof evs[0]), t);
    if (n < 0) {
      if (errno != EINTR) {
        np_status_errno(st, np_errno_err(errno), errno);
        return -1;
      }
      n = 0;
    }
    /* Dispatching runs no Lua and frees no block (that only happens in
     * np_completion_done and np_pipe_close, and before epoll_wait in
     * np_listener_drop_parked), so every ptr stays valid. */
    for (i = 0; i < n; i++) dispatch(&evs[i]);
    if (loop->ready_count > 0 || t == 0) break;
    /* Readiness without a completion (a write edge nobody waits for, a
     * client accepted before connect()): keep waiting out the timeout. */
    if (timeout_ms > 0) {
      double left = deadline - np_now_ms();
      if (left <= 0) break;
      timeout_ms = left >= INT_MAX ? INT_MAX : (int)left + 1;
    }
  }
  return loop->ready_count > INT_MAX ? INT_MAX : (int)loop->ready_count;
}

int np_loop_peek(np_loop *loop, np_completion *c) {
  np_req *r = loop->ready_head;
  if (!r) return 0;
  NP_COMPLETION_FROM(c, r);
  c->data = (r->op != NP_OP_READ && r->op != NP_OP_TRANSACT) ||
                    r->status.err != NP_OK
                ? NULL
            : r->ext ? r->ext
                     : r->buf.data;
  c->len = r->op == NP_OP_READ || r->op == NP_OP_TRANSACT ? r->len
           : r->op == NP_OP_WRITE                         ? r->wdone
                                                          : 0;
  return 1;
}

void np_loop_take(np_loop *loop, np_completion *c) {
  np_req *r;
  NP_READY_POP(loop, r);
  if (r->eager) {
    r->eager = 0;
    loop->eager_ready--;
  }
  r->next = NULL;
  r->state = REQ_HANDED;
  c->user = r->pipe->user;
}


/* --------------------------------------------------------------- requests */

void np_req_start(np_pipe *p, np_req *r, np_op op, int ref_cb, int ref_data) {
  r->pipe = p;
  r->op = (unsigned char)op;
  r->state = REQ_PENDING;
  r->ref_cb = ref_cb;
  r->ref_data = ref_data;
  r->status.err = NP_OK;
  r->status.code = 0;
  r->next = NULL;
  r->more = 0;
  r->eager = 0;
  if (op == NP_OP_WRITE) { /* (np_write_start and np_transact_start set
                            * its list links before) */
    r->wdata = NULL;
    r->wlen = r->wdone = 0;
  } else {
    r->max = 0;
    r->len = 0;
    r->ext = NULL;
  }
  p->busy[op]++;
  p->outstanding++;
  p->loop->outstanding++;
}

void np_loop_stats(const np_loop *loop, np_stats *stats) {
  const np_pipe *p;
  DIR *d = opendir("/proc/self/fd");
  struct dirent *e;
  long fds = 0;
  stats->pipes = 0;
  /* (not the spill area: address space, its pages given back after use) */
  stats->read_buffers = (size_t)loop->n_free_rbufs * NP_READ_SIZE + loop->big_spare.cap;
  for (p = loop->pipes; p; p = p->next) {
    stats->pipes++;
    stats->read_buffers += p->read_req.buf.cap + p->try_buf.cap;
  }
  stats->outstanding = loop->outstanding;
  if (!d) {
    stats->os_handles = -1;
    return;
  }
  while ((e = readdir(d)) != NULL)
    if (e->d_name[0] != '.') fds++;
  closedir(d);
  stats->os_handles = fds - 1; /* not the one opendir holds */
}

/* A write request: one kept from an earlier write, else a new one; zeroed
 * either way. NULL when out of memory. */
np_req *np_write_req_new(np_loop *loop) {
  np_req *r = loop->free_writes;
  if (!r) return (np_req *)calloc(1, sizeof *r);
  loop->free_writes = r->next;
  loop->n_free_writes--;
  memset(r, 0, sizeof *r);
  return r;
}

int np_write_req_reserve(np_loop *loop) {
  np_req *r;
  if (loop->free_writes) return 1;
  if (!(r = (np_req *)calloc(1, sizeof *r))) return 0;
  r->next = NULL;
  loop->free_writes = r;
  loop->n_free_writes++;
  return 1;
}

static void write_req_release(np_loop *loop, np_req *r) {
  if (loop->n_free_writes >= KEEP_WRITE_REQS) {
    free(r);
    return;
  }
  r->next = loop->free_writes;
  loop->free_writes = r;
  loop->n_free_writes++;
}

/* Finished: queue it for np_loop_take (FIFO). The caller has taken it out
 * of the pipe's pending slot or write queue. */
void np_req_ready(np_req *r, np_err err, long code) {
  np_loop *loop = r->pipe->loop;
  if (r->transact) { /* not the caller's: its transact is told instead */
    np_transact_sent(r, err, code);
    return;
  }
  r->status.err = err;
  r->status.code = code;
  r->state = REQ_READY;
  if (loop->hosted) np_host_ready(loop);
  NP_READY_PUSH(loop, r);
}

static void write_unlink(np_pipe *p, np_req *r) {
  if (r->wprev)
    r->wprev->wnext = r->wnext;
  else
    p->writes = r->wnext;
  if (r->wnext) r->wnext->wprev = r->wprev;
}

void np_write_req_drop(np_pipe *p, np_req *r) {
  p->busy[NP_OP_WRITE]--;
  p->outstanding--;
  p->loop->outstanding--;
  write_unlink(p, r);
  write_req_release(p->loop, r);
  if (p->busy[NP_OP_WRITE] == 0 && !p->closed) np_pipe_writes_released(p);
}

void np_completion_done(np_loop *loop, np_completion *c) {
  np_req *r = (np_req *)c->req;
  np_pipe *p = r->pipe;
  c->req = NULL;
  if (r->embedded) {
    p->busy[r->op]--;
    p->outstanding--;
    loop->outstanding--;
    r->state = REQ_IDLE;
    /* Its bytes are out: the buffer goes back to the loop's spares (or is
     * freed), so an idle pipe holds none, as one never read from. The
     * next read takes one again when its bytes come. */
    np_read_buf_give(loop, &r->buf);
  } else {
    np_write_req_drop(p, r);
  }
  if (p->closed && p->outstanding == 0) np_pipe_free(p);
}

/* The block itself and everything it still holds; the socket is already
 * closed (np_pipe_detach). */
void np_pipe_free(np_pipe *p) {
  np_loop *loop = p->loop;
  while (p->writes) {
    np_req *r = p->writes;
    p->writes = r->wnext;
    write_req_release(loop, r);
  }
  np_pipe_list_remove(p);
  np_read_buf_give(loop, &p->read_req.buf);
  free(p->rest);
  np_read_buf_give(loop, &p->try_buf);
  free(p);
}

/* No Lua runs: completions not yet handed out are dropped with their
 * blocks, and so is anything handed out and never released. */
int np_loop_close(np_loop *loop) {
  loop->closing = 1;
  while (loop->pipes) {
    np_pipe *p = loop->pipes;
    p->closed = 1;
    np_pipe_detach(p);
    np_pipe_free(p);
  }
  np_listener_drop_parked(loop);
  while (loop->free_writes) {
    np_req *r = loop->free_writes;
    loop->free_writes = r->next;
    free(r);
  }
  while (loop->n_free_rbufs > 0) free(loop->free_rbufs[--loop->n_free_rbufs]);
  free(loop->big_spare.data);
  if (loop->spill) munmap(loop->spill, loop->spill_size);
  np_dir_cache_free(loop);
  np_host_close(loop);
  close(loop->epfd);
  free(loop->listener_table); /* (its last listener went with its pipe) */
  free(loop);
  return 1; /* sockets copy: the kernel never holds our memory */
}
