/*
 * unix.h - what the Unix backend's files share: request, pipe, listener and
 * loop blocks. Not part of np.h; nothing outside src/unix/ includes it.
 *
 *   names_unix.c     pipe name -> socket path (the mapping README documents)
 *   listener_unix.c  one listening socket per name, shared by its instances;
 *                    ownership across processes (lock file); PIPE_BUSY
 *   loop_unix.c      epoll, the ready queue, request lifetime, messages
 *   errors_unix.c    errno values to portable names and messages
 *   pipe_unix.c      instances and clients: connect, read, write, close...
 *   io_unix.c        reads and writes as the socket allows, epoll events
 *   message_unix.c   message mode over SOCK_SEQPACKET, transact
 *   peer_unix.c      the other end: its credentials, its account
 *   host_unix.c      the descriptor a host polls (np_loop_host_fd)
 *
 * Completion policy: nothing is ever finished inside the call that started
 * it. A start may do the system call at once (sockets are non-blocking); its
 * outcome goes to the loop's ready queue and comes out of np_loop_take().
 * A socket sits in the epoll set level-triggered while a read waits on it,
 * edge-triggered otherwise (io_unix.c, "readiness"). A read on a level-
 * triggered socket waits for epoll; on an edge-triggered one it tries the
 * call first unless the pipe knows it would fail with EAGAIN (the socket
 * was seen drained and epoll has reported nothing since: see rd_idle).
 * Writes try at once. No readiness is ever lost: an edge follows every
 * arrival after a drain, and registering or re-registering a socket that
 * is already readable reports it at the next epoll_wait (ep_insert and
 * ep_modify poll it).
 */
#ifndef NP_UNIX_H
#define NP_UNIX_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/un.h>

#include "../common.h"
#include "../np.h"

NP_INTERNAL_BEGIN

/* sizeof(sockaddr_un.sun_path): a socket path must fit with its NUL. */
#define NP_SUN_PATH sizeof(((struct sockaddr_un *)0)->sun_path)

/* Byte-mode read(0) size when no in_buffer_size says otherwise, and the cap
 * of one byte-mode read(n) (a huge n must not allocate a huge buffer). */
#define NP_READ_SIZE 65536u
#define NP_READ_CAP (1u << 20)

/* Read buffers of the usual size (NP_READ_SIZE) a loop keeps for the next
 * reads: a read's buffer comes back once its bytes are handed out (an
 * idle pipe holds none), and a 64 KiB malloc and free per read would cost
 * more (glibc consolidates its small free chunks before every such
 * malloc). Any other size is freed. */
#define NP_KEEP_READ_BUFS 8

/* What an epoll_event's data.ptr points at: both blocks start with this. */
typedef enum np_watch {
  NP_WATCH_PIPE = 1,
  NP_WATCH_LISTENER,
  NP_WATCH_HOST /* host_unix.c: the descriptors behind np.fd() */
} np_watch;

typedef struct np_listener np_listener;

/* A growable byte buffer. */
typedef struct np_buf {
  char *data;
  size_t cap;
} np_buf;

typedef enum req_state {
  REQ_IDLE,    /* embedded request not in use */
  REQ_PENDING, /* started, waiting for the socket */
  REQ_READY,   /* finished, in the loop's ready queue */
  REQ_HANDED   /* given out by np_loop_take, not yet released */
} req_state;

/* One operation. Connect, read (or readable or transact: they share the
 * read slot) and writable are embedded in the pipe block (one at a time
 * each, the binding checks np_pipe_busy); writes are allocated, any number
 * queue up. Kept small: an idle pair's memory is mostly its six embedded
 * requests. The small fields are bytes (op: np_op, state: req_state), and
 * what only a write uses shares memory with what only the others use: a
 * request is a write or not for its whole life (np_write_req_new makes
 * the writes), np_req_start clears the side its op uses, and a write's
 * list links are set by their owners. */
typedef struct np_req {
  np_pipe *pipe;
  int ref_cb, ref_data;
  unsigned char op;       /* np_op */
  unsigned char state;    /* req_state */
  unsigned char embedded; /* one of the pipe's three, else a write's own */
  /* a read that finished at its start (counted in loop->eager_ready) */
  unsigned char eager;
  /* a transact's request (np_transact_start): finished by np_transact_sent,
   * never handed out */
  unsigned char transact;
  unsigned char more; /* read: more of the message follows */
  np_status status;
  struct np_req *next; /* write queue, or the loop's ready queue */
  np_buf buf; /* read: the bytes read (owned by the request) */
  union {
    struct { /* NP_OP_WRITE */
      struct np_req *qprev; /* write queue: the one before (np_wq_*) */
      struct np_req *wprev, *wnext; /* the pipe's allocated writes (all states) */
      /* the anchored Lua string and how much of it the socket took */
      const char *wdata;
      size_t wlen, wdone;
    };
    struct { /* the others */
      size_t max; /* read: the caller's limit */
      size_t len; /* read: the bytes read */
      /* a read_into (np_read_start): the caller's memory (max bytes), else
       * NULL */
      char *ext;
    };
  };
} np_req;

/* What is known of a connected socket's readiness, and how it sits in the
 * epoll set (io_unix.c, "readiness"): kept so that a read need not try a
 * recv that must fail, and so that epoll reports only what somebody waits
 * for. A new socket starts from np_readiness_fresh; a dropped one leaves it
 * all clear. Its rules (np_readiness_check, io_unix.c) are checked after
 * every event and at every wait in a debug build (NP_DEBUG: `make check`). */
typedef struct np_readiness {
  /* Registered level-triggered (a read waits on it), else edge-triggered;
   * EPOLLOUT in the mask (a write or writable() found the socket full). */
  unsigned char level, out_armed;
  /* idle: the socket was seen drained and epoll has reported nothing since.
   * sticky: epoll reported the peer's shutdown, an error or urgent data:
   * never idle again (EOF and errors repeat, and no further edge would
   * announce them). */
  unsigned char idle, sticky;
  /* Streams: the last recv filled all it asked for, so more is likely
   * queued and the next read tries at once even level-triggered (libuv's
   * read loop goes on while a read fills its buffer, for the same reason). */
  unsigned char full;
  /* Message sockets. msg_large: the last message was large, so the next is
   * received straight into the read's buffer rather than copied
   * (np_recv_message). msg_queued: epoll reported the socket readable with
   * no hang-up, shutdown or error, and nothing was received since, so a
   * message is queued: the next recv's 0 is an empty message, not the end,
   * and needs no sender address. */
  unsigned char msg_large, msg_queued;
#ifdef NP_DEBUG
  uint32_t mask; /* the mask epoll was last given for this socket */
#endif
} np_readiness;

struct np_pipe {
  np_watch watch; /* first: epoll data.ptr */
  NP_PIPE_COMMON_FIELDS
  int fd;        /* connected socket, -1 when none */
  int sock_type; /* SOCK_STREAM (byte pipe) or SOCK_SEQPACKET (message) */
  int read_message; /* this end reads whole messages (else a byte stream) */
  int may_read, may_write;
  int closed;
  unsigned max_instances; /* as info() reports it */
  size_t read_size;       /* byte-mode read(0): up to this much */
  uint32_t sndbuf, rcvbuf; /* server: SO_SNDBUF/SO_RCVBUF to set, 0: keep */
  /* server: out_buffer_size and in_buffer_size as given, which info()
   * reports while no client is connected (0 and the default included) */
  uint32_t out_given, in_given;
  /* SO_RCVBUF not set yet on this socket: AF_UNIX ignores it (unix(7), and
   * checked: the amount a peer can queue does not change), so it is only
   * set when info() is about to read it back. */
  int rcvbuf_unset;

  /* Message sockets: the peer is unbound, so its messages carry no sender
   * address and SO_PASSCRED tells an empty message from EOF (message_unix.c). */
  int passcred;
  np_readiness rd; /* the socket's readiness (above) */

  np_req connect_req, read_req, writable_req;
  /* the embedded ones, while PENDING */
  np_req *pending_connect, *pending_read, *pending_writable;
  np_req *wq_head, *wq_tail; /* writes not yet fully sent */
  np_req *writes;            /* every allocated write */
  int busy[NP_OP_TRANSACT + 1]; /* by np_op: started, not released */
  /* transact: its request, a write of ours that no completion tells of,
   * while it waits in the write queue (the reply is read once it went) */
  np_req *transact_write;
  size_t outstanding;           /* sum of busy[] */

  /* message pipes: what is left of a message a read(n) took part of */
  char *rest;
  size_t rest_off, rest_len;
  np_buf try_buf; /* try_read's result, valid until the next try_read */

  /* server instances */
  np_listener *listener;
  struct np_pipe *inst_prev, *inst_next; /* the listener's instances */
  struct np_pipe *free_prev, *free_next; /* its free ones (no client yet) */
  int is_free;
};

/* names_unix.c: the socket directory, worked out and checked once per loop
 * for the environment values it came from (see np_socket_path_cached). */
typedef struct np_dir_cache {
  int valid;
  char *env_dir, *env_xdg; /* NAMEDPIPE_DIR, XDG_RUNTIME_DIR (NULL: unset/empty) */
  char *dir;
  size_t dir_len;
  int is_tmp;
  int checked; /* /tmp/namedpipe-UID passed check_private_dir */
  int made;    /* a server's mkdir was done (or found it there) */
} np_dir_cache;

struct np_loop {
  int epfd;
  /* np.fd() (host_unix.c): an eventfd for work ready and a timerfd for the
   * next timer, both in the epoll set; -1 (and hosted 0) until asked for. */
  int hosted, host_efd, host_tfd;
  int host_signalled;     /* host_efd holds a count */
  double host_timer_at;   /* what host_tfd is armed for (np_now_ms), or -1 */
  double host_capped_at;  /* when host_tfd fires if armed short of that (a
                           * deadline too far: arm_timer), else -1 */
  np_req *ready_head, *ready_tail;
  size_t ready_count;
  NP_LOOP_COMMON_FIELDS
  /* The listeners by path (listener_unix.c): listener_slots chains (a
   * power of two, 0 until the first listener), n_listeners in them. */
  np_listener **listener_table;
  unsigned listener_slots, n_listeners;
  int closing; /* np_loop_close: take no new clients */
  /* The listeners whose plug waits for np_loop_wait: how many, and their
   * list. */
  unsigned plugs_wanted;
  np_listener *plug_head;
  /* Listeners whose last instance closed since the last wait, kept aside
   * for a create of the same name (listener_unix.c, "a name closed and
   * made again"): how many, and their list, the newest first. */
  unsigned n_parked;
  np_listener *parked_head;
  np_dir_cache dir;
  /* Message reads (message_unix.c, recv_message): a spill area of spill_size
   * bytes (mmap'ed on first use), as large as any message can be. */
  char *spill;
  size_t spill_size;
  int msg_peek; /* 1: read messages the old way (size probe first) */
  /* Write requests kept for reuse (np_write_start allocates one a write). */
  np_req *free_writes;
  size_t n_free_writes;
  /* Read buffers kept for reuse (NP_KEEP_READ_BUFS). */
  char *free_rbufs[NP_KEEP_READ_BUFS];
  int n_free_rbufs;
  np_buf big_spare; /* one larger read buffer kept (np_read_buf_give) */
  /* Of the ready requests, the reads that finished as they started
   * (read_may_succeed: typically a stream read after one that filled its
   * buffer, rd_full), and how many
   * waits in a row returned them without asking epoll (np_loop_wait). */
  size_t eager_ready;
  int skipped_waits;
  /* The process's fork count when the loop was made (np_watch_close). */
  unsigned long forks_at_birth;
};

/* errors_unix.c */
void np_status_errno(np_status *st, np_err err, int code);
np_err np_errno_err(int code);

/* loop_unix.c */
int np_buf_reserve(np_buf *b, size_t n);
void np_read_buf_take(np_loop *loop, np_buf *b, size_t want);
void np_read_buf_give(np_loop *loop, np_buf *b);
void np_req_start(np_pipe *p, np_req *r, np_op op, int ref_cb, int ref_data);
void np_req_ready(np_req *r, np_err err, long code);
/* host_unix.c: a completion is ready outside a step's wait (tell the
 * host), a step's wait begins (its count is taken), the loop closes. */
void np_host_ready(np_loop *loop);
void np_host_wait_begins(np_loop *loop);
void np_host_close(np_loop *loop);
/* loop_unix.c: one epoll_wait that does not wait, its events dispatched. */
int np_loop_poll_now(np_loop *loop);
void np_pipe_free(np_pipe *p);
np_req *np_write_req_new(np_loop *loop);
/* One write request set aside in the loop's spares, so that the next
 * np_write_req_new cannot fail: 0 when there is no memory for it. */
int np_write_req_reserve(np_loop *loop);
/* A write request let go: released after its completion, or a
 * transact's request, which never reaches the ready queue. */
void np_write_req_drop(np_pipe *p, np_req *r);
/* message_unix.c: a transact's request went (NP_OK: read the reply) or
 * failed (the transact ends so). */
void np_transact_sent(np_req *w, np_err err, long code);
int np_watch_add(np_loop *loop, int fd, uint32_t events, void *ptr);
int np_watch_mod(np_loop *loop, int fd, uint32_t events, void *ptr);
/* Take fd out of the epoll set (where that is needed) and close it. */
void np_watch_close(np_loop *loop, int fd);

/* io_unix.c */
void np_pipe_on_event(np_pipe *p, uint32_t events);
/* The last write was released: a writable() wait may be over. */
void np_pipe_writes_released(np_pipe *p);
/* listener_unix.c hands an accepted socket to a free instance; peer_named:
 * accept4 gave the client's address (it is bound). */
int np_instance_attach(np_pipe *p, int fd, int peer_named);
/* Close the socket and forget the instance's listener (close, loop close). */
void np_pipe_detach(np_pipe *p);

/* names_unix.c */
/* The socket path for a pipe name (checked by np_name_problem). A server
 * (create_dir) makes the default directory when missing. */
int np_socket_path(const char *name, int create_dir, char path[NP_SUN_PATH],
                   np_status *st);
/* The same with the directory's checks remembered by the loop (create and
 * open). np_dir_forget: a server found the directory gone, check again. */
int np_socket_path_cached(np_loop *loop, const char *name, int create_dir,
                          char path[NP_SUN_PATH], np_status *st);
void np_dir_forget(np_loop *loop);
void np_dir_cache_free(np_loop *loop);

/* listener_unix.c */
/* What a server learns about a name's pipe from its owner's lock file. */
typedef struct np_pipe_meta {
  int sock_type;
  unsigned max_instances;
  int inbound, outbound;
} np_pipe_meta;

int np_parse_file_mode(const char *s, unsigned *mode);
np_listener *np_listener_get(np_loop *loop, const char *path,
                             const np_server_options *o, np_status *st);
void np_listener_add(np_listener *l, np_pipe *p);
void np_listener_remove(np_listener *l, np_pipe *p);
void np_listener_set_free(np_listener *l, np_pipe *p, int is_free);
void np_listener_service(np_listener *l);
void np_listener_on_event(np_listener *l);
void np_listener_service_now(np_listener *l);
int np_listener_type(const np_listener *l);
int np_listener_fd(const np_listener *l);
/* 1 when a live server of this path published its description. */
int np_read_meta(const char *path, np_pipe_meta *meta);
/* This loop's listener of that path, or NULL. Before a client of this loop
 * connects to it, its deferred plug (if any) is put in place. */
np_listener *np_listener_find(np_loop *loop, const char *path);
const np_pipe_meta *np_listener_meta(const np_listener *l);
/* np_loop_wait, before epoll_wait: the plugs deferred by the listeners. */
void np_listener_plug_deferred(np_loop *loop);
/* np_loop_wait (and loop close): the listeners kept aside since the last
 * wait go for good, files and all. */
void np_listener_drop_parked(np_loop *loop);

/* pipe_unix.c, io_unix.c, message_unix.c: one pipe's I/O, in three files. */
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

/* pipe_unix.c */
int np_io_check(np_pipe *p, np_op op, np_status *st);
/* Can this end do I/O in that direction now? Else why not, in *st (the
 * usual case, a connected open end, without a call: it is asked on every
 * read and write). */
static inline int np_io_allowed(np_pipe *p, np_op op, np_status *st) {
  if (p->fd >= 0 && !p->closed &&
      (op == NP_OP_READ ? p->may_read : p->may_write))
    return 1;
  return np_io_check(p, op, st);
}
int np_set_mask(np_pipe *p, int level, int out_armed);
int np_want_writable(np_pipe *p);

/* io_unix.c */
/* The epoll mask for the socket's readiness: its mode and EPOLLOUT. */
static inline uint32_t np_socket_mask(const np_readiness *rd) {
  return (rd->level ? LEVEL_EVENTS : SOCKET_EVENTS) |
         (rd->out_armed ? EPOLLOUT : 0);
}
/* A new socket: idle (if it is readable already, epoll says so at the next
 * wait: ep_insert polls it) and level-triggered (its first read usually
 * comes before its first data). */
static inline void np_readiness_fresh(np_readiness *rd) {
  memset(rd, 0, sizeof *rd);
  rd->idle = 1;
  rd->level = 1;
#ifdef NP_DEBUG
  rd->mask = np_socket_mask(rd);
#endif
}
/* Nothing more to read until the socket says so (see "readiness"). */
static inline void np_drained(np_pipe *p) {
  if (!p->rd.sticky) p->rd.idle = 1;
}
/* Can a read try at once, or must it wait for epoll? */
static inline int np_read_may_succeed(const np_pipe *p) {
  if (p->rest_len > 0) return 1; /* ours, not the socket's */
  if (p->rd.full) return 1;
  return !p->rd.level && !p->rd.idle;
}
/* Debug builds (NP_DEBUG): abort, naming the rule, where p's readiness
 * breaks one; np_loop_check_readiness checks every pipe of the loop.
 * Otherwise they cost nothing. */
#ifdef NP_DEBUG
void np_readiness_check(const np_pipe *p, const char *where);
void np_loop_check_readiness(np_loop *loop, const char *where);
#else
#define np_readiness_check(p, where) ((void)0)
#define np_loop_check_readiness(loop, where) ((void)0)
#endif
size_t np_byte_read_size(const np_pipe *p, size_t max);
size_t np_read_want(const np_pipe *p, size_t max);
void np_pump_read(np_pipe *p);
void np_pump_writable(np_pipe *p);
void np_pump_writes(np_pipe *p);
int np_read_attempt(np_pipe *p, size_t max, np_buf *dst, size_t *len,
                    int *more, np_status *st);
int np_read_failed(np_status *st, int e);
int np_recv_again(const np_pipe *p, int *resets);
ssize_t np_recv_some(const np_pipe *p, char *buf, size_t len);
int np_send_message(np_pipe *p, const char *data, size_t len, np_status *st);
void np_wait_level(np_pipe *p);
void np_write_failed(np_status *st, int e);
int np_send_nothing(np_pipe *p, np_status *st);

/* message_unix.c */
ssize_t np_next_message_size(np_pipe *p, np_status *st);
int np_read_joined(np_pipe *p, size_t max, np_buf *dst, size_t *len,
                   np_status *st);
int np_read_message(np_pipe *p, size_t max, np_buf *dst, size_t *len,
                    int *more, np_status *st);
int np_recv_message(np_pipe *p, np_buf *dst, size_t *len, np_status *st);

NP_INTERNAL_END

/* The pipe's write queue (wq_head..wq_tail by next, back by qprev): writes
 * go in at the tail, leave at the head as they are sent, and a transact's
 * write may leave from anywhere (cancelled before it went) without a walk
 * of what is queued before it. */
static inline void np_wq_push(np_pipe *p, np_req *r) {
  r->next = NULL;
  r->qprev = p->wq_tail;
  if (p->wq_tail)
    p->wq_tail->next = r;
  else
    p->wq_head = r;
  p->wq_tail = r;
}

static inline void np_wq_unlink(np_pipe *p, np_req *r) {
  NP_DLIST_REMOVE(p->wq_head, p->wq_tail, r, qprev, next);
  r->next = r->qprev = NULL;
}

#endif
