/*
 * np.h - the narrow interface between the Lua binding (binding.c) and a
 * platform backend (win/pipe_win.c over an I/O completion port, unix/pipe_unix.c
 * over epoll and Unix domain sockets).
 *
 * The backend speaks completions, never Lua: an operation is started with
 * opaque integer anchors (the binding's references to a callback and to the
 * Lua string being written) and later comes back, once, as an np_completion
 * carrying those anchors. Everything that runs Lua happens in the binding,
 * and only inside step(): the backend never calls back into the binding.
 *
 * Ownership: an np_pipe is a C-heap block owned by the backend. np_pipe_close()
 * marks it closed and cancels its operations; the block lives on until every
 * operation the kernel still owns has completed and every completion has been
 * handed out and released with np_completion_done(). The binding never frees
 * it and never touches it after close except through completions.
 */
#ifndef NP_H
#define NP_H

#include <stddef.h>
#include <stdint.h>

/* Everything the module's files declare for each other stays inside the
 * module: the shared object exports luaopen_namedpipe_core alone (NP_EXPORT),
 * so no other library's symbol of the same name binds in place of ours.
 * Each internal header wraps its declarations in these, after its own
 * includes (a system or Lua header inside them would be hidden too). */
#if defined(__GNUC__) && !defined(_WIN32)
#define NP_INTERNAL_BEGIN _Pragma("GCC visibility push(hidden)")
#define NP_INTERNAL_END _Pragma("GCC visibility pop")
#define NP_EXPORT __attribute__((visibility("default")))
#elif defined(_WIN32)
#define NP_INTERNAL_BEGIN
#define NP_INTERNAL_END
#define NP_EXPORT __declspec(dllexport)
#else
#define NP_INTERNAL_BEGIN
#define NP_INTERNAL_END
#define NP_EXPORT
#endif

NP_INTERNAL_BEGIN

typedef struct np_loop np_loop;
typedef struct np_pipe np_pipe;

/* "No anchor": the same value as Lua's LUA_NOREF (checked in binding.c). */
#define NP_NOREF (-2)

/* Pipe names: the Win32 limit on a whole pipe name, in characters. */
#define NP_MAX_NAME 256

/* Portable error names; np_err_name() gives the string Lua sees. */
typedef enum np_err {
  NP_OK = 0,
  NP_EOF,              /* end of stream: the peer closed its end */
  NP_WOULDBLOCK,       /* try_read/try_write: nothing could be done now */
  NP_NOT_FOUND,        /* no pipe (no server instance) of that name */
  NP_PIPE_BUSY,        /* every instance is busy / max_instances reached */
  NP_BROKEN_PIPE,      /* the peer closed: a write cannot be delivered */
  NP_NOT_CONNECTED,    /* no client connected (yet or any more) */
  NP_ACCESS_DENIED,    /* security, or first_pipe_instance collision */
  NP_TIMEOUT,          /* a wait ran out */
  NP_CLOSED,           /* this end was closed while the operation was pending */
  NP_CANCELLED,        /* the operation was cancelled */
  NP_INVALID_NAME,     /* the OS refused the name */
  NP_INVALID_ARGUMENT, /* the OS refused an option value */
  NP_ADDRESS_IN_USE,   /* the name is taken by something that is not ours */
  NP_NO_MEMORY,
  NP_IO_ERROR,         /* any other OS failure; the OS code says which */
  NP_ERR_COUNT
} np_err;

const char *np_err_name(np_err e); /* errors.c */

/* An OS-level outcome: err is the portable name, code the OS code (Win32
 * error or errno; 0 when the failure is the module's own, e.g. CLOSED). */
typedef struct np_status {
  np_err err;
  long code;
} np_status;

/* The message for the module's own outcomes (EOF, CLOSED, ...), or NULL
 * (errors.c); backends use it before asking the OS. */
const char *np_own_message(const np_status *st);

/* Human-readable message for a status, written into buf (backend). */
const char *np_status_message(const np_status *st, char *buf, size_t size);

typedef enum np_mode { NP_MODE_BYTE = 0, NP_MODE_MESSAGE = 1 } np_mode;

#define NP_UNLIMITED_INSTANCES 255u

/* Tokio's ServerOptions, with Tokio's defaults (options.c). */
typedef struct np_server_options {
  int access_inbound;         /* true */
  int access_outbound;        /* true */
  int first_pipe_instance;    /* false */
  int write_dac;              /* false */
  int write_owner;            /* false */
  int access_system_security; /* false */
  np_mode pipe_mode;          /* byte */
  int reject_remote_clients;  /* true */
  unsigned max_instances;     /* NP_UNLIMITED_INSTANCES, else 1..254 */
  uint32_t out_buffer_size;   /* NP_DEFAULT_BUFFER_SIZE */
  uint32_t in_buffer_size;    /* NP_DEFAULT_BUFFER_SIZE */
  const char *security;       /* NULL, or an SDDL string (Windows) / file mode (Unix) */
} np_server_options;

/* Tokio's default in_buffer_size and out_buffer_size. */
#define NP_DEFAULT_BUFFER_SIZE 65536u

/* Tokio's ClientOptions, with Tokio's defaults (options.c). */
typedef struct np_client_options {
  int read;                    /* true */
  int write;                   /* true */
  uint32_t security_qos_flags; /* SECURITY_IDENTIFICATION (0x00010000) */
  np_mode pipe_mode;           /* byte */
} np_client_options;

void np_server_options_default(np_server_options *o);
void np_client_options_default(np_client_options *o);

/* What info() reports, read back from the OS. */
typedef struct np_info {
  int is_server;
  np_mode mode;           /* the pipe's type (message pipes keep boundaries) */
  unsigned max_instances; /* NP_UNLIMITED_INSTANCES or 1..254 */
  uint32_t out_buffer_size;
  uint32_t in_buffer_size;
} np_info;

/* READABLE and TRANSACT share the read slot (one of read/readable/
 * transact at a time); WRITABLE has a slot of its own. */
typedef enum np_op {
  NP_OP_CONNECT = 1,
  NP_OP_READ = 2,
  NP_OP_WRITE = 3,
  NP_OP_READABLE = 4,
  NP_OP_WRITABLE = 5,
  NP_OP_TRANSACT = 6
} np_op;

/* Who is on the other end (np_pipe_peer): -1 where the platform does not
 * say (session on Linux, uid/gid on Windows). */
typedef struct np_peer {
  long pid;
  long session;
  long uid;
  long gid;
} np_peer;

/* What is waiting to be read (np_pipe_peek), nothing consumed: bytes in
 * all, and in message read mode the size of the next message (-1: none,
 * or byte mode). */
typedef struct np_peek {
  size_t available;
  long long message;
} np_peek;

/* Observable state, for tostring() and for the binding's misuse checks. */
typedef enum np_state {
  NP_STATE_LISTENING,    /* server instance waiting for connect() */
  NP_STATE_CONNECTED,
  NP_STATE_DISCONNECTED, /* server after disconnect(): connect() again */
  NP_STATE_CLOSED
} np_state;

/* One finished operation, shown by np_loop_peek() and handed out by
 * np_loop_take(). data/len stay valid until np_completion_done(); the pipe
 * block may be freed by that call. user is the np_pipe_set_user() value
 * when it is handed out. */
typedef struct np_completion {
  np_pipe *pipe;
  void *user;       /* np_pipe_set_user() value */
  np_op op;
  np_status status; /* NP_OK, or what went wrong (NP_EOF for end of stream) */
  const char *data; /* read: the bytes */
  size_t len;       /* read: bytes read; write: bytes written */
  int more;         /* read(n) in message mode: the message goes on */
  int ref_cb;       /* anchors given when the operation started */
  int ref_data;
  void *req;        /* backend-private */
} np_completion;

/* ---- the loop: one per Lua state ---- */
np_loop *np_loop_new(np_status *st);
/* Cancel everything, wait (bounded) for the kernel to give back every block,
 * free what it gave back. Runs no Lua; completions not yet handed out are
 * dropped. Returns 1 when the kernel gave everything back, 0 when some
 * operation was still with it when the wait ran out: the memory it may
 * write (the dst of a read_into's np_read_start too) must then never be freed. */
int np_loop_close(np_loop *loop);
/* Wait up to timeout_ms (0: just look; <0: forever) for operations to finish
 * and queue them; returns how many completions are ready, or -1 with *st. */
int np_loop_wait(np_loop *loop, int timeout_ms, np_status *st);
/* The oldest ready completion into *c, left in the queue; 0 when none is
 * ready. The caller may prepare for it (and fail doing so, or run code
 * that takes it meanwhile) before np_loop_take hands it out. */
int np_loop_peek(np_loop *loop, np_completion *c);
/* Hand out the oldest ready completion, which np_loop_peek just showed in
 * *c: it leaves the queue and is the caller's until np_completion_done. */
void np_loop_take(np_loop *loop, np_completion *c);
void np_completion_done(np_loop *loop, np_completion *c);
/* Operations started and not yet released (kernel-owned or ready). */
size_t np_loop_outstanding(const np_loop *loop);
/* For leak checks and soak runs: blocks alive (open, or closed and still
 * owed a completion), operations outstanding, and the process's OS handles
 * (Windows handle count, open file descriptors on Unix; -1 if unknown). */
typedef struct np_stats {
  size_t pipes;
  size_t outstanding;
  long os_handles;
  /* Bytes of read buffers held: every pipe's, and the loop's spare ones.
   * A buffer a long message needed is given back once its bytes have
   * been handed out, so this stays near 64 KiB per reading pipe. */
  size_t read_buffers;
} np_stats;
void np_loop_stats(const np_loop *loop, np_stats *stats);
/* Monotonic milliseconds. */
double np_now_ms(void);

/* Host loops (np.fd): a descriptor that polls readable whenever a step
 * has work (a completion ready, the Lua layer's work, a timer due) and
 * stops once a step has done it; made on the first call. -1 with *st on
 * failure; -2 where the platform has none (Windows: a completion port
 * cannot be waited on with the host's own waits). */
int np_loop_host_fd(np_loop *loop, np_status *st);
/* The binding tells the host descriptor after each step and whenever the
 * Lua layer's work changes: work (something queued for the next step) and
 * the next timer's deadline (np_now_ms time), if has_timer. Nothing until
 * np_loop_host_fd was called. */
void np_loop_host_sync(np_loop *loop, int work, int has_timer,
                       double timer_at);

/* ---- pipes ---- */
/* NULL if the platform accepts this pipe name, else what is wrong with it,
 * for the binding's argument error. Windows: \\.\pipe\NAME or
 * \\server\pipe\NAME; Unix: also an absolute socket path. */
const char *np_name_problem(const char *name, size_t len);
/* What the OS sees for a checked name: the socket path on Unix (see
 * README), the name itself on Windows. 1, or 0 with *st. */
int np_pipe_path(const char *name, char *buf, size_t size, np_status *st);
/* name is UTF-8, already checked by the binding (length, NULs, prefix). */
np_pipe *np_server_create(np_loop *loop, const char *name,
                          const np_server_options *o, np_status *st);
np_pipe *np_client_open(np_loop *loop, const char *name,
                        const np_client_options *o, np_status *st);

void np_pipe_set_user(np_pipe *p, void *user);
int np_pipe_is_server(const np_pipe *p);
np_state np_pipe_state(const np_pipe *p);
const char *np_pipe_name(const np_pipe *p);
/* Is an operation of this kind started and not yet released? For writes:
 * how many. */
int np_pipe_busy(const np_pipe *p, np_op op);

/* Starting never fails in a way Lua must see at once: the binding has
 * checked the preconditions (open, server for connect, no read pending,
 * ...), and an OS refusal comes back as a completion like any other. */
void np_connect_start(np_pipe *p, int ref_cb);
/* max 0: byte mode, whatever is available (up to the read buffer);
 * message mode, one whole message however large. max > 0: at most max.
 * dst NULL: a read(), ref_data NP_NOREF. Else a read_into: the bytes land
 * in dst (the completion's data is dst), at most max of them. dst must stay
 * valid and be left alone until the completion has been released: the
 * kernel may write it after the call returns (Windows). ref_data comes back
 * in the completion (the binding's anchor of the memory). */
void np_read_start(np_pipe *p, size_t max, char *dst, int ref_cb,
                   int ref_data);
/* Writes complete in the order they were started. Returns 0 only when no
 * memory was left to track the write (nothing started, nothing kept).
 *
 * The keep protocol, one for np_write_start and np_try_write: *keeps says
 * whether the backend still points at data after the call (a socket that
 * did not take it all at once; always on Windows, where the kernel reads
 * it later). If it does, data must stay valid until the completion is
 * released, and the caller hands its anchor over with np_write_keep
 * before anything else is done with p (the binding reserves the anchor's
 * room before the call, so nothing can raise in between). Else data may
 * go at once, and nothing is anchored. */
int np_write_start(np_pipe *p, const char *data, size_t len, int ref_cb,
                   int *keeps, int *done);
/* done (NULL: not asked) is for a caller that would only wait for the
 * write: *done 1 says the backend finished it whole within the call and
 * no earlier write's callback is still to come, so the caller may return
 * at once. Its callback will never be called (the caller lets ref_cb go;
 * the operation still counts as in flight until its completion, which
 * carries no callback, has been released), and nothing is kept. Windows
 * only: a WriteFile that returned TRUE. (Unix has np_write_now, tried
 * before any request is made.) */
/* The anchor of the data of the write p started last (np_write_start's or
 * np_try_write's, see the keep protocol above); it comes back as the
 * completion's ref_data. */
void np_write_keep(np_pipe *p, int ref_data);

/* Readiness, as Tokio's readable()/writable(): complete (NP_OK, nothing
 * consumed) once a try_read would not block (data, end of stream or an
 * error is there) / once a try_write would be accepted. */
void np_readable_start(np_pipe *p, int ref_cb);
void np_writable_start(np_pipe *p, int ref_cb);

/* Never block. try_read: 1 with *data and *len (valid until the next operation
 * on p, or np_try_read_done), 0 with *st (NP_WOULDBLOCK, NP_EOF, ...). max as
 * np_read_start. np_try_read_done: its data has been copied, so a buffer
 * larger than usual that it needed can go. */
void np_try_read_done(np_pipe *p);
int np_try_read(np_pipe *p, size_t max, const char **data, size_t *len,
                int *more, np_status *st);
/* try_write: 1 with *written, 0 with *st. *keeps as np_write_start's:
 * set when the backend keeps the bytes in flight (Windows: accepted whole,
 * as mio does); the caller then hands their anchor over with
 * np_write_keep, it comes back in a completion with ref_cb NP_NOREF, and
 * an OS failure is reported by the next write or try_write. */
int np_try_write(np_pipe *p, const char *data, size_t len, size_t *written,
                 int *keeps, np_status *st);

/* A waiting write done at once, where the backend can: 1 with *written,
 * what the system took now (all of it, or on a byte pipe perhaps a part),
 * and no request, no completion; 0 when nothing was done (writes started
 * earlier not yet released, the pipe full, a failure, or a backend whose
 * writes always finish later: Windows, where the port reports every
 * WriteFile; np_write_start's done serves it there). After 0 the caller
 * starts a write as usual, which then says why. Unlike try_write, it never
 * keeps data. After a part, np_write_start of the rest, made next, cannot
 * fail: the backend set its request aside before sending (or sent nothing
 * and returned 0, for want of memory for it). */
int np_write_now(np_pipe *p, const char *data, size_t len, size_t *written);
/* The write of p started with no callback (ref_cb NP_NOREF) and still to
 * be handed out takes ref_cb as its callback: 1; else 0, nothing changed.
 * For the rest of a part that np_write_now sent: started at once, before
 * anything that may fail, and given its caller's callback once the
 * caller has made its wait (other writes may have been started since). */
int np_write_attach(np_pipe *p, int ref_cb);
/* Which of the two a backend does a waited-for write at once with: 0,
 * np_write_now, before any request is made (Unix); 1, np_write_start's
 * done, after it (Windows). */
#ifdef _WIN32
#define NP_WRITE_AT_ONCE_BY_START 1
#else
#define NP_WRITE_AT_ONCE_BY_START 0
#endif

/* Cancel the pending operations of one kind; they complete with `reason`
 * (NP_CANCELLED, NP_TIMEOUT, ...) unless they finished first. */
void np_cancel(np_pipe *p, np_op op, np_err reason);
/* Server only. Pending operations complete with NP_NOT_CONNECTED.
 * np_disconnect and np_pipe_info return 1, or 0 with *st. */
int np_disconnect(np_pipe *p, np_status *st);
int np_pipe_info(np_pipe *p, np_info *info, np_status *st);
/* Pending operations complete with NP_CLOSED. Idempotent. */
void np_pipe_close(np_pipe *p);

/* The other end's process (server: the client's; client: the server's).
 * 1, or 0 with *st. */
int np_pipe_peer(np_pipe *p, np_peer *peer, np_status *st);
/* Server only: the connected client's account, as a name (Windows
 * DOMAIN\user, Unix the user name) into user and an id (Windows the SID
 * string, Unix the numeric uid) into id. 1, or 0 with *st. */
int np_pipe_peer_user(np_pipe *p, char *user, size_t user_size, char *id,
                      size_t id_size, np_status *st);
/* 1 with *peek, or 0 with *st. */
int np_pipe_peek(np_pipe *p, np_peek *peek, np_status *st);
/* Message read mode only (the binding checks): write one message and read
 * one reply as a single operation, which completes as a read
 * (NP_OP_TRANSACT, its data the reply). data must stay valid until the
 * completion has been released; ref_data (its anchor) comes back in it. */
void np_transact_start(np_pipe *p, const char *data, size_t len, int ref_cb,
                       int ref_data);
/* The pipe's read mode (what the binding checks for transact). */
np_mode np_pipe_read_mode(const np_pipe *p);

NP_INTERNAL_END

#endif
