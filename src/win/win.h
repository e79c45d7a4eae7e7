/*
 * win.h - what the Windows backend's files share: the request and pipe
 * blocks the kernel writes into, and the loop around one completion port.
 * Its files, named as their Unix twins are (src/unix/):
 *
 *   names_win.c      which pipe names Windows takes; np.path
 *   loop_win.c       the completion port, the ready queue, request
 *                    lifetime, the end of every block
 *   errors_win.c     Win32 error codes to portable names and messages
 *   pipe_win.c       instances and clients: connect, read, write, close...
 *   peer_win.c       the other end: its process, its client's account
 *   host_win.c       np.fd(): nothing for a host to poll
 *
 * Completion policy (docs/windows-internals.md #3):
 * FILE_SKIP_COMPLETION_PORT_ON_SUCCESS is NOT used. Every ReadFile,
 * WriteFile or ConnectNamedPipe that returns TRUE, or FALSE with
 * ERROR_IO_PENDING or ERROR_MORE_DATA, queues exactly one packet
 * (as mio, asyncio and libuv rely on); any other failure queues none and is
 * completed by us through the ready queue. So each request is finished by
 * exactly one of the two paths, never both, never neither.
 */
#ifndef NP_WIN_H
#define NP_WIN_H

#ifndef WIN32_LEAN_AND_MEAN
#define WIN32_LEAN_AND_MEAN
#endif
#include <windows.h>

#include "../common.h"
#include "../np.h"

NP_INTERNAL_BEGIN

typedef enum req_state {
  REQ_IDLE,   /* free for the next operation */
  REQ_KERNEL, /* the kernel owns the OVERLAPPED and the buffer */
  REQ_READY,  /* finished, waiting in the ready queue for step() */
  REQ_WAITING, /* ours to finish: a writable() wait, or a write queued
                  behind MAX_WRITES_IN_FLIGHT others */
  REQ_DONE     /* a write finished before an earlier one: waits its turn */
} req_state;

/* One operation. The OVERLAPPED is how a completion packet finds its way
 * back (container-of, docs/windows-internals.md #4); connect and read
 * are embedded in the
 * pipe block, writes come from the loop's free list (several in flight). */
typedef struct np_req {
  OVERLAPPED ov;
  np_pipe *pipe;
  np_op op;
  req_state state;
  np_err abort_reason; /* what ERROR_OPERATION_ABORTED means for us: the
                        * first stop's (NP_OK: none asked yet) */
  unsigned session;    /* the pipe's session when it started */
  np_status status;
  DWORD bytes;
  int more;
  int ref_cb, ref_data;
  int quiet; /* a write whose completion calls nothing (p->quiet_writes) */
  int finished; /* a write done at once: only its packet is to come */
  const char *wdata; /* write: anchored Lua string */
  DWORD wlen;
  struct np_req *next;                   /* ready queue / free list */
  struct np_req *wprev, *wnext;          /* pipe's writes in flight */
} np_req;

struct np_pipe {
  NP_PIPE_COMMON_FIELDS /* name: UTF-8 */
  HANDLE h; /* INVALID_HANDLE_VALUE once closed */
  np_mode read_mode; /* how this end reads (message: whole messages) */
  int closed;
  int may_write; /* opened for writing (access_outbound; a client's write) */
  np_req connect_req;
  np_req read_req; /* read or readable */
  np_req writable_req;
  char *rbuf; /* read buffer; owned by the kernel while read_req is */
  size_t rcap;
  size_t rlen; /* bytes of the current read so far */
  size_t rmax; /* the caller's limit, 0 for none */
  /* a read_into (np_read_start): the caller's memory (rmax bytes), read into instead
   * of rbuf; NULL for read() */
  char *rext;
  np_req *writes, *writes_tail; /* writes not yet released, oldest first */
  /* The oldest of them not yet handed out (REQ_READY): writes are handed
   * out in start order, so those before it all are, and deliver_writes
   * starts here rather than walking the handed-out ones again for every
   * completion. NULL when every write is handed out. */
  np_req *wdeliver;
  int nwrites;
  /* Of them, those whose completion calls nothing: try_write's, and
   * waited-for writes the kernel finished in the call (np_write_start's
   * done). A waited-for write is done at once only if every earlier
   * write is one of these: a callback of an earlier one comes first. */
  int quiet_writes;
  /* ... and of those, the ones done at once: finished, only their packets
   * are still to come. They are not in flight: writable(), try_write and
   * the cap of MAX_WRITES_IN_FLIGHT (session_writes) do not count them. */
  int finished_writes;
  int kernel_writes;             /* of those, how many the kernel owns */
  int session_writes;            /* ... and were started in this session */
  np_req *wqueue_head, *wqueue_tail; /* queued behind them, in order */
  /* A transact started while writes were queued here waits (read_req,
   * REQ_WAITING, its request in wdata/wlen) until the last of them, this
   * one, has gone to the kernel: its request must not overtake them. */
  np_req *transact_after;
  /* Writes made, and how many of them a cancel("write") had seen: when
   * no write came since, another has nothing to do (N tasks whose writes
   * time out together each cancel the kind: one walk, not N). */
  unsigned long writes_made, writes_cancelled;
  int pumping;                   /* pump_writes is running (no recursion) */
  int empty_message_taken; /* readable()'s zero-byte read ate a "" message */
  np_status write_error; /* a failed try_write, told to the next write */
  /* One client's connection: disconnect() starts the next session. What
   * an operation of an older session does must never touch the current
   * one: a write is never handed to the kernel, a message never read on,
   * an error never told, once its client is gone. */
  unsigned session;
  size_t outstanding;    /* requests KERNEL or READY */
};

/* Read buffers: the default pipe buffer size (a byte read(0), the first
 * chunk of a message); how many a loop keeps for reuse. */
#define NP_READ_CHUNK 65536u
#define NP_KEEP_RBUFS 8

struct np_loop {
  HANDLE port;
  HANDLE try_event; /* for try_read's one synchronous read */
  np_req *ready_head, *ready_tail;
  int ready_count;
  NP_LOOP_COMMON_FIELDS /* outstanding: requests KERNEL or READY */
  size_t kernel_owned;   /* requests KERNEL */
  np_req *free_writes;
  int skipped_poll; /* the last wait served the ready queue alone */
  /* Read buffers of freed pipes, kept for the next pipes' first reads (a
   * 64 KiB heap block per pipe otherwise: Wine's heap is slow). */
  char *free_rbufs[NP_KEEP_RBUFS];
  int n_free_rbufs;
  char *big_spare; /* one larger read buffer kept (np_read_buffer_give) */
  size_t big_spare_cap;
};

/* A read or a transact: the read slot's operations that bring bytes
 * (into rbuf, or rext), in parts for a long message. */
#define NP_READS_DATA(op) ((op) == NP_OP_READ || (op) == NP_OP_TRANSACT)

/* errors_win.c */
np_err np_win_error(DWORD err, np_op op);
void np_win_status(np_status *st, DWORD err, np_op op);
/* err as a pipe's end tells it (a client's ERROR_PIPE_NOT_CONNECTED is
 * the server gone, ...). */
void np_pipe_status(const np_pipe *p, np_status *st, DWORD err, np_op op);
/* pipe_win.c: the read buffer given up once idle (give), or now, by a
 * caller that knows nothing reads into it (drop: the pipe's end). */
void np_read_buffer_give(np_pipe *p);
void np_read_buffer_drop(np_pipe *p);

/* loop_win.c */
void np_req_ready(np_loop *loop, np_req *req);
void np_req_kernel(np_loop *loop, np_req *req);
void np_req_wait(np_loop *loop, np_req *req);
void np_req_unwait(np_loop *loop, np_req *req);
void np_pipe_free(np_pipe *p);
np_req *np_write_new(np_pipe *p);
void np_write_drop(np_req *req);

/* pipe_win.c: what a dequeued packet means for its request; whether a
 * server instance certainly has no client (the error to tell, or 0). */
void np_req_finished(np_req *req, DWORD err, DWORD bytes);
DWORD np_pipe_clientless(np_pipe *p);

/* At most this many writes of one pipe are with the kernel at once; later
 * ones wait in order in the pipe's queue. Enough to keep the pipe busy, and
 * it spares the kernel (and Wine's server, which walks its pending writes
 * on every read) a queue as long as the caller's burst. */
#define MAX_WRITES_IN_FLIGHT 16

/* Writes done at once (np_write_start's done) are finished: they do not
 * count among those in flight, but each keeps its request until the next
 * step takes its packet. Outside a task nothing else bounds how many a
 * loop of waiting writes makes before a step; past this many on one pipe
 * the next one waits as usual (and steps). */
#define MAX_FINISHED_WRITES 1024

NP_INTERNAL_END

#endif
