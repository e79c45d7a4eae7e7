/*
 * methods.c - the pipe userdata of module `namedpipe.core`: create, open
 * and every pipe method, in its callback form; the waiting form is handed
 * to the Lua layer (divert, binding.h). binding.c registers them.
 */
#include <string.h>

#include "lauxlib.h"
#include "lua.h"

#include "compat.h"

#include "args.h"
#include "binding.h"
#include "buffer.h"
#include "main_waits.h"
#include "np.h"
#include "options.h"
#include "reading.h"
#include "task_waits.h"

/* The pipe at index 1: as_pipe gives NULL for anything else, to_pipe a
 * type error (luaL_checkudata's). A pipe userdata is recognised by its
 * size and its first field, the address of this static: luaL_checkudata
 * looks the metatable up by name and compares it, four API calls and a
 * string hash on every method call; this is two calls. The bytes of a
 * userdata cannot be forged from Lua (its metatable can, with
 * debug.setmetatable, which would fool luaL_checkudata but not this). */
static const char pipe_tag = 0;

static pipe_ud *as_pipe(lua_State *L) {
  pipe_ud *u = (pipe_ud *)lua_touserdata(L, 1);
  return u && lua_rawlen(L, 1) == sizeof *u && u->tag == &pipe_tag ? u : NULL;
}

static pipe_ud *to_pipe(lua_State *L) {
  pipe_ud *u = as_pipe(L);
  if (!u) np_type_error(L, 1, NP_PIPE_MT);
  return u;
}

/* The open pipe at index 1, or NULL (nothing raised): for the paths that
 * leave whatever is wrong to the usual way, which names it. */
static pipe_ud *open_pipe_or_null(lua_State *L) {
  pipe_ud *u = as_pipe(L);
  return u && u->p ? u : NULL;
}

static pipe_ud *check_pipe(lua_State *L) {
  pipe_ud *u = to_pipe(L);
  if (!u->p) np_arg_error(L, 1, "pipe is closed");
  return u;
}

static pipe_ud *check_server(lua_State *L) {
  pipe_ud *u = check_pipe(L);
  if (!u->is_server) np_arg_error(L, 1, "server pipe expected, got a client");
  return u;
}

static void check_callback(lua_State *L, int arg) {
  if (lua_type(L, arg) != LUA_TFUNCTION) np_type_error(L, arg, "function");
}

/* The userdata for a pipe, made before the backend makes the pipe: a
 * memory error raised after it would leave an open pipe (and its socket or
 * handle) that nothing refers to. It gets its metatable (its methods and
 * __gc) in pipe_attach, which cannot raise: a create or open that fails
 * leaves plain memory to collect, not an object to finalize (a client
 * retrying a busy name makes one per try). */
static pipe_ud *pipe_new(lua_State *L, int is_server) {
  pipe_ud *u = (pipe_ud *)lua_newuserdatauv(L, sizeof *u, 0);
  u->tag = &pipe_tag;
  u->p = NULL;
  u->lu = (loop_ud *)lua_touserdata(L, LOOP_UPV);
  u->inflight = 0;
  u->self_ref = LUA_NOREF;
  u->is_server = is_server;
  u->readahead = 0;
  u->read_cb = LUA_NOREF;
  u->run_open = u->read_stopping = u->read_ending = u->read_restart = 0;
  u->read_end_reason = NP_CANCELLED;
  u->wcb_ref = LUA_NOREF;
  u->wcb_uses = u->wcb_listed = 0;
  u->wcb_id = NULL;
  u->disconnects = 0;
  u->read_held = 0;
  u->rest_state = NP_REST_NONE;
  u->rest_err = NP_OK;
  u->rest_code = 0;
  u->rest_len = 0;
  return u;
}

/* The userdata u, on top of the stack, is the pipe p's. */
static void pipe_attach(lua_State *L, pipe_ud *u, np_pipe *p) {
  u->p = p;
  np_pipe_set_user(p, u);
  lua_pushvalue(L, PIPE_MT_UPV); /* luaL_setmetatable looks it up by name */
  lua_setmetatable(L, -2);
}

/* Count a name's length as Windows does, in UTF-16 units. */
static size_t utf16_length(const char *s, size_t len) {
  size_t i, n = 0;
  for (i = 0; i < len; i++) {
    unsigned char b = (unsigned char)s[i];
    if ((b & 0xC0) != 0x80) n += (b >= 0xF0) ? 2 : 1;
  }
  return n;
}

const char *np_check_name(lua_State *L, int arg) {
  size_t len;
  const char *name, *problem;
  if (lua_type(L, arg) != LUA_TSTRING)
    np_type_error(L, arg, "string (pipe name)");
  name = lua_tolstring(L, arg, &len);
  if (len == 0) np_arg_error(L, arg, "pipe name is empty");
  if (strlen(name) != len) np_arg_error(L, arg, "pipe name contains a NUL byte");
  /* (utf16_length counts at most two units a byte: a short name needs
   * no counting) */
  if (len * 2 > NP_MAX_NAME && utf16_length(name, len) > NP_MAX_NAME)
    np_arg_error(L, arg, "pipe name is longer than 256 characters");
  problem = np_name_problem(name, len);
  if (problem) np_arg_error(L, arg, problem);
  return name;
}

static int l_create(lua_State *L) {
  np_loop *loop = check_loop(L);
  const char *name = np_check_name(L, 1);
  np_server_options o;
  np_status st;
  np_pipe *p;
  pipe_ud *u;
  np_check_server_options(L, 2, &o);
  u = pipe_new(L, 1);
  p = np_server_create(loop, name, &o, &st);
  if (!p) return np_push_status(L, &st);
  pipe_attach(L, u, p);
  return 1;
}

static int l_open(lua_State *L) {
  np_loop *loop = check_loop(L);
  const char *name = np_check_name(L, 1);
  np_client_options o;
  np_status st;
  np_pipe *p;
  pipe_ud *u;
  np_check_client_options(L, 2, &o);
  u = pipe_new(L, 0);
  p = np_client_open(loop, name, &o, &st);
  if (!p) return np_push_status(L, &st);
  pipe_attach(L, u, p);
  return 1;
}

static int raw_connect(lua_State *L) {
  pipe_ud *u = check_server(L);
  check_callback(L, 2);
  if (np_pipe_busy(u->p, NP_OP_CONNECT))
    np_arg_error(L, 1, "a connect is already pending on this pipe");
  np_connect_start(u->p, anchor_operation(L, u, 2));
  return 0;
}

/* read size: nil (0: whatever is there / one whole message) or n >= 1. */
static size_t opt_read_size(lua_State *L, int arg) {
  lua_Integer n;
  if (lua_isnoneornil(L, arg)) return 0;
  n = np_check_integer(L, arg);
  if (n < 1) np_arg_error(L, arg, "positive byte count expected");
  return (size_t)n;
}

/* The methods' bodies take the checked pipe (the method checked it). */
static int start_read(lua_State *L, pipe_ud *u) {
  int top = lua_gettop(L);
  size_t max;
  /* read(cb) or read(n, cb): the callback is always last. */
  check_callback(L, top < 2 ? 2 : top);
  max = top >= 3 ? opt_read_size(L, 2) : 0;
  if (read_busy(u))
    np_arg_error(L, 1, "a read is already pending on this pipe");
  np_read_start(u->p, max, NULL, anchor_operation(L, u, top < 2 ? 2 : top),
                NP_NOREF);
  return 0;
}

static int raw_read(lua_State *L) { return start_read(L, check_pipe(L)); }

/* layer.held_read(pipe, nil, timeout): the waiting read a task's or the
 * main thread's read() makes in C (task_waits.c, main_waits.c), made also
 * while the Lua layer diverts the pipe's reads: the first read of a
 * framing read (read_line, read_exact, read_frame) that found nothing
 * held, whose own mark is what sets the divert (its cancels must reach
 * the layer). false where neither can make it (a coroutine that is not a
 * task, a Lua without waits made in C): the layer's own wait then. */
static int raw_held_read(lua_State *L) {
  pipe_ud *u = check_pipe(L);
  int n;
#if NP_TASK_WAITS_IN_C
  if ((n = np_task_wait(L, u, NP_WAIT_READ)) >= 0) return n;
#endif
  if ((n = np_main_wait(L, u, NP_WAIT_READ)) >= 0) return n;
  lua_pushboolean(L, 0);
  return 1;
}

/* layer.read_held(pipe): does a waiting read hold the read slot until it
 * returns (read_held)? For the Lua layer's own refusals, made before any
 * C method would refuse the call. layer.hold_read(pipe, on): the Lua
 * layer's own waits hold it so (wait_for and wait_end; settle). */
static int raw_read_held(lua_State *L) {
  pipe_ud *u = open_pipe_or_null(L);
  lua_pushboolean(L, u && u->read_held);
  return 1;
}

static int raw_hold_read(lua_State *L) {
  pipe_ud *u = open_pipe_or_null(L);
  if (u) u->read_held = lua_toboolean(L, 2);
  return 0;
}

/* read_into(buf, cb): the buffer is anchored (as a write's string is) and
 * marked busy until the completion is dispatched: the backend, and under
 * Windows the kernel, writes into its bytes meanwhile. */
static int start_read_into(lua_State *L, pipe_ud *u) {
  np_buffer *b = np_buffer_check(L, 2, 1);
  int ref_cb, ref_data;
  check_callback(L, 3);
  if (read_busy(u))
    np_arg_error(L, 1, "a read is already pending on this pipe");
  ref_cb = anchor_operation(L, u, 3);
  lua_pushvalue(L, 2);
  ref_data = anchor(L, u->lu, ANCHORS_UPV); /* room left by anchor_operation */
  b->busy = 1;
  np_read_start(u->p, b->size, b->bytes, ref_cb, ref_data);
  return 0;
}

static int raw_read_into(lua_State *L) {
  return start_read_into(L, check_pipe(L));
}

/* layer.buffer_put(buf, s): the Lua layer hands bytes read ahead
 * (framing) to a read_into: s (at most #buf bytes) goes to the start of
 * buf; returns #s. */
static int raw_buffer_put(lua_State *L) {
  np_buffer *b = np_buffer_check(L, 1, 1);
  size_t len;
  const char *s = luaL_checklstring(L, 2, &len);
  luaL_argcheck(L, len <= b->size, 2, "longer than the buffer");
  memcpy(b->bytes, s, len);
  lua_pushinteger(L, (lua_Integer)len);
  return 1;
}

/* layer.buffer_busy(buf, busy): the Lua layer holds buf for a
 * read_into's callback still to come (bytes read ahead, copied at once).
 * buffer_busy(buf): is it busy? A buffer the script freed by hand (its
 * __gc called) is left alone and is not busy: the layer marks and frees
 * buffers inside a step's callbacks (an abandoned read's end, a cancel),
 * where a raise would leave the read slot taken. */
static int raw_buffer_busy(lua_State *L) {
  np_buffer *b = np_buffer_to(L, 1);
  if (!b) b = np_buffer_check(L, 1, 0); /* (raises: not a buffer) */
  if (!b->bytes) {
    if (!lua_isnone(L, 2)) return 0;
    lua_pushboolean(L, 0);
    return 1;
  }
  if (lua_isnone(L, 2)) {
    lua_pushboolean(L, b->busy);
    return 1;
  }
  b->busy = lua_toboolean(L, 2);
  return 0;
}

/* readable(cb) / writable(cb): Tokio's readiness, nothing consumed. */
static int start_readable(lua_State *L, pipe_ud *u) {
  check_callback(L, 2);
  if (read_busy(u))
    np_arg_error(L, 1, "a read is already pending on this pipe");
  np_readable_start(u->p, anchor_operation(L, u, 2));
  return 0;
}

static int raw_readable(lua_State *L) {
  return start_readable(L, check_pipe(L));
}

static int raw_writable(lua_State *L) {
  pipe_ud *u = check_pipe(L);
  check_callback(L, 2);
  if (np_pipe_busy(u->p, NP_OP_WRITABLE))
    np_arg_error(L, 1, "a writable() wait is already pending on this pipe");
  np_writable_start(u->p, anchor_operation(L, u, 2));
  return 0;
}

static const char *check_data(lua_State *L, int arg, size_t *len) {
  if (lua_type(L, arg) != LUA_TSTRING) np_type_error(L, arg, "string");
  return lua_tolstring(L, arg, len);
}

/* transact(request, cb): one message out, its reply back, in the read
 * slot; the request string is anchored until the completion. */
static int raw_transact(lua_State *L) {
  pipe_ud *u = check_pipe(L);
  size_t len;
  const char *data = check_data(L, 2, &len);
  int ref_cb, ref_data;
  check_callback(L, 3);
  if (np_pipe_read_mode(u->p) != NP_MODE_MESSAGE)
    np_arg_error(L, 1, "transact needs a pipe that reads messages "
                       "(pipe_mode = \"message\")");
  if (read_busy(u))
    np_arg_error(L, 1, "a read is already pending on this pipe");
  ref_cb = anchor_operation(L, u, 3);
  lua_pushvalue(L, 2);
  ref_data = anchor(L, u->lu, ANCHORS_UPV); /* room left by anchor_operation */
  np_transact_start(u->p, data, len, ref_cb, ref_data);
  return 0;
}

/* write(data, cb): the callback form. The Lua layer's waiting write adds a
 * fourth argument, whether it is a task's (budgeted, see task_waits.c):
 * then a write the backend finished within the call returns its count at
 * once, and cb is never called (np_write_start_waited). m_write has seen
 * that cb is a function (cb_checked) and that nothing follows it. */
static int start_write(lua_State *L, int cb_checked) {
  pipe_ud *u = check_pipe(L);
  size_t len;
  const char *data = check_data(L, 2, &len);
  int ref_cb, keeps, done = 0, waited = 0;
  if (!cb_checked) {
    check_callback(L, 3);
    waited = !lua_isnoneornil(L, 4);
  }
  ref_cb = write_callback_anchor(L, u, 3);
  if (!(waited ? np_write_start_waited(u->lu, u->p, data, len, ref_cb, &keeps,
                                       &done, lua_toboolean(L, 4))
               : np_write_start(u->p, data, len, ref_cb, &keeps, NULL))) {
    release_write_callback(L, u, ANCHORS_UPV, ref_cb);
    unpin_pipe(L, u, ANCHORS_UPV);
    return luaL_error(L, "not enough memory");
  }
  if (done) { /* (its completion, with no callback, unpins the pipe) */
    release_write_callback(L, u, ANCHORS_UPV, ref_cb);
    lua_pushinteger(L, (lua_Integer)len);
    return 1;
  }
  /* The backend reads straight from the Lua string (no copy); if it still
   * does after the call (a write the socket did not take at once, every
   * write on Windows), the string is anchored until the completion has
   * been released. (It is on the stack until then: nothing ran between.
   * write_callback_anchor left room: this cannot raise.) */
  if (keeps) {
    lua_pushvalue(L, 2);
    np_write_keep(u->p, anchor(L, u->lu, ANCHORS_UPV));
  }
  return 0;
}

static int raw_write(lua_State *L) { return start_write(L, 0); }

static int try_read(lua_State *L, pipe_ud *u) {
  size_t max = opt_read_size(L, 2), len;
  const char *data;
  int more;
  np_status st;
  if (read_busy(u))
    np_arg_error(L, 1, "a read is already pending on this pipe");
  if (!np_try_read(u->p, max, &data, &len, &more, &st)) {
    np_try_read_done(u->p); /* (nothing to copy: its buffer goes back) */
    return np_push_status(L, &st);
  }
  lua_pushlstring(L, data, len);
  np_try_read_done(u->p);
  return 1;
}

static int raw_try_read(lua_State *L) { return try_read(L, check_pipe(L)); }

/* layer.write_now(pipe, data [, unbudgeted]), for the Lua layer's waiting
 * writes: a task's (where a C method cannot wait, NP_TASK_WAITS_IN_C),
 * within the budget of writes in a row that lets other tasks run, and one
 * outside a task (unbudgeted: it blocks its caller anyway, and one that
 * need not step the loop runs no other callback, so waiting writes in
 * callbacks do not nest). The bytes the system took at once, or false:
 * then write as usual, which also raises or fails as the call deserves
 * (nothing is checked here beyond what np_write_now needs). All of them:
 * no completion follows. A part (a byte pipe): the rest is on its way as
 * a write of its own, with no callback until layer.write_attach gives it
 * the caller's (np_write_now_or_rest). */
static int raw_write_now(lua_State *L) {
  pipe_ud *u = open_pipe_or_null(L);
  size_t len, written;
  const char *data;
  if (!u || lua_type(L, 2) != LUA_TSTRING ||
      (data = lua_tolstring(L, 2, &len),
       !np_write_now_or_rest(L, u, 2, data, len, &written,
                             !lua_toboolean(L, 3)))) {
    lua_pushboolean(L, 0);
    return 1;
  }
  lua_pushinteger(L, (lua_Integer)written);
  return 1;
}

/* layer.write_attach(pipe, cb, sent): cb is the callback of the rest
 * that layer.write_now started: true; or false and what the write
 * returns (sent included), when the rest has ended already (a step nested
 * in between handed it out, or the pipe was closed). */
static int raw_write_attach(lua_State *L) {
  pipe_ud *u = to_pipe(L);
  lua_Integer sent = luaL_checkinteger(L, 3);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  lua_settop(L, 2);
  if (np_write_attach_top(L, u)) {
    lua_pushboolean(L, 1);
    return 1;
  }
  lua_pushboolean(L, 0);
  return 1 + np_push_rest_end(L, u, (size_t)sent);
}

/* Anything but nil after argument `last` is refused with why: a callback
 * given after a timeout would never run, one given to try_read or
 * try_write (which take none) neither. */
static void refuse_after(lua_State *L, int last, const char *why) {
  int i, top = lua_gettop(L);
  for (i = last + 1; i <= top; i++)
    if (!lua_isnil(L, i)) np_arg_error(L, i, why);
}

/* try_read and try_write: no callback or timeout. */
#define check_no_wait_after(L, last)                                       \
  refuse_after(L, last, "nothing expected: it returns at once, with no "  \
                        "callback or timeout")

static int m_try_write(lua_State *L) {
  pipe_ud *u = check_pipe(L);
  size_t len, written;
  const char *data = check_data(L, 2, &len);
  int keeps;
  np_status st;
  check_no_wait_after(L, 2);
  /* The keep protocol of write() (np.h): if the backend keeps the bytes in
   * flight, their anchor is handed over at once (room reserved first, so
   * nothing raises in between); a completion with no callback releases it.
   * It also counts as in flight so that the pipe userdata outlives it. */
  reserve_anchors(L, u->lu, 2);
  if (!np_try_write(u->p, data, len, &written, &keeps, &st))
    return np_push_status(L, &st);
  if (keeps) {
    lua_pushvalue(L, 2);
    np_write_keep(u->p, anchor(L, u->lu, ANCHORS_UPV));
    pin_pipe(L, u);
  }
  lua_pushinteger(L, (lua_Integer)written);
  return 1;
}

/* An asynchronous method ends with one optional callback or timeout, at
 * index last: anything but nil after it is refused. Dropped without a
 * word, a callback given after a timeout (read(n, 5, cb)) would never run,
 * or a timeout after a callback never fire. */
static void check_nothing_after(lua_State *L, int last) {
  refuse_after(L, last, "nothing expected after the callback or timeout: "
                        "give one of them, last");
}

/* The methods: the callback form here, the rest diverted (see divert). */
static int m_connect(lua_State *L) {
  int n;
  check_nothing_after(L, 2);
  if (lua_type(L, 2) != LUA_TFUNCTION && (n = divert(L, W_CONNECT)) >= 0) return n;
  return raw_connect(L);
}

static int m_read(lua_State *L) {
  pipe_ud *u = check_pipe(L);
  int n, waits;
  check_nothing_after(L, 3);
#if NP_TASK_WAITS_IN_C
  if (!u->readahead && (n = np_task_wait(L, u, NP_WAIT_READ)) >= 0) return n;
#endif
  waits = lua_type(L, lua_gettop(L)) != LUA_TFUNCTION;
  if (!u->readahead && waits && (n = np_main_wait(L, u, NP_WAIT_READ)) >= 0)
    return n;
  if ((u->readahead || waits) && (n = divert(L, W_READ)) >= 0) return n;
  return start_read(L, u);
}

static int m_read_into(lua_State *L) {
  pipe_ud *u = check_pipe(L);
  int n;
  check_nothing_after(L, 3);
  if (u->readahead || lua_type(L, 3) != LUA_TFUNCTION) {
    /* before the Lua layer uses it; busy is its to judge while it holds
     * something of this pipe's (a read_into it abandoned may be the one
     * filling buf: the next read_into waits for it) */
    np_buffer_check(L, 2, !u->readahead);
#if NP_TASK_WAITS_IN_C
    if (!u->readahead && (n = np_task_wait(L, u, NP_WAIT_READ_INTO)) >= 0)
      return n;
#endif
    if (!u->readahead && (n = np_main_wait(L, u, NP_WAIT_READ_INTO)) >= 0)
      return n;
    if ((n = divert(L, W_READ_INTO)) >= 0) return n;
  }
  return start_read_into(L, u);
}

static int m_readable(lua_State *L) {
  pipe_ud *u = check_pipe(L);
  int n;
  check_nothing_after(L, 2);
  if (!u->readahead && lua_type(L, 2) != LUA_TFUNCTION) {
#if NP_TASK_WAITS_IN_C
    if ((n = np_task_wait(L, u, NP_WAIT_READABLE)) >= 0) return n;
#endif
    if ((n = np_main_wait(L, u, NP_WAIT_READABLE)) >= 0) return n;
  }
  if ((u->readahead || lua_type(L, 2) != LUA_TFUNCTION) &&
      (n = divert(L, W_READABLE)) >= 0)
    return n;
  return start_readable(L, u);
}

static int m_writable(lua_State *L) {
  int n;
  check_nothing_after(L, 2);
  if (lua_type(L, 2) != LUA_TFUNCTION && (n = divert(L, W_WRITABLE)) >= 0) return n;
  return raw_writable(L);
}

static int m_write(lua_State *L) {
  int n;
  check_nothing_after(L, 3);
  if (lua_type(L, 3) == LUA_TFUNCTION) return start_write(L, 1);
#if NP_TASK_WAITS_IN_C
  if ((n = np_task_write(L, open_pipe_or_null(L))) >= 0) return n;
#endif
#if NP_C_CAN_YIELD
  if ((n = np_main_write(L, open_pipe_or_null(L))) >= 0) return n;
#endif
  if ((n = divert(L, W_WRITE)) >= 0) return n;
  return raw_write(L);
}

/* read_start(cb): cb(data) for every read, until an error or end of
 * stream (which it gets too) or read_stop(); see step_loop and
 * settle_held (binding.c) for the reads after the first. */
static int raw_read_start(lua_State *L) {
  pipe_ud *u = check_pipe(L);
  check_callback(L, 2);
  if (u->read_stopping && !u->read_ending) {
    /* read_stop from outside, its read's end not yet dispatched: take the
     * reading over (as luv's read_stop and read_start toggle at once).
     * The new callback goes into the same anchor, so whatever that read
     * brings is the new callback's; its cancel's end calls nothing and
     * starts the next read (step_loop). */
    lua_pushvalue(L, 2);
    lua_rawseti(L, ANCHORS_UPV, u->read_cb);
    u->read_stopping = 0;
    if (u->read_restart != NP_RESTART_DISCONNECTED) u->read_restart = 1;
    return 0;
  }
  if (read_busy(u))
    np_arg_error(L, 1, "a read is already pending on this pipe");
  u->read_cb = anchor_operation(L, u, 2);
  np_read_start(u->p, 0, NULL, u->read_cb, NP_NOREF);
  return 0;
}

static int m_read_start(lua_State *L) {
  pipe_ud *u = check_pipe(L);
  int n;
  check_nothing_after(L, 2);
  if (u->readahead && (n = divert_call(L, W_READ_START)) >= 0) return n;
  return raw_read_start(L);
}

/* read_stop(): no more reads for read_start's callback. From the callback
 * nothing is pending; elsewhere the pending read is cancelled, and its
 * callback runs again only if it had read something first. */
static int raw_read_stop(lua_State *L) {
  pipe_ud *u = to_pipe(L);
  int was_stopping = u->read_stopping;
  np_reading_stop(u);
  if (u->read_stopping && !was_stopping) {
    /* stopped from elsewhere: its read's end is still to come, and the
     * Lua layer's waiting reads wait for it (stopped_reads[pipe] = true) */
    lua_rawgeti(L, WAITING_UPV, W_STOPPED);
    if (lua_type(L, -1) == LUA_TTABLE) {
      lua_pushvalue(L, 1);
      lua_pushboolean(L, 1);
      lua_rawset(L, -3);
    }
    lua_pop(L, 1);
  }
  return 0;
}

/* layer.read_stopping(pipe): is the read slot taken only by the end, still
 * to come, of a read_start that read_stop stopped from elsewhere? */
static int raw_read_stopping(lua_State *L) {
  pipe_ud *u = to_pipe(L);
  lua_pushboolean(L, u->p && u->read_cb != LUA_NOREF && u->read_stopping);
  return 1;
}

/* layer.reads_messages(pipe): does an open pipe read messages (its
 * read-ahead then keeps their lengths, and a read takes one)? */
static int raw_reads_messages(lua_State *L) {
  pipe_ud *u = to_pipe(L);
  lua_pushboolean(L, u->p && np_pipe_read_mode(u->p) == NP_MODE_MESSAGE);
  return 1;
}

static int m_read_stop(lua_State *L) {
  pipe_ud *u = to_pipe(L);
  int n;
  if (u->readahead && (n = divert_call(L, W_READ_STOP)) >= 0) return n;
  return raw_read_stop(L);
}

static int m_transact(lua_State *L) {
  pipe_ud *u = check_pipe(L);
  int n;
  check_nothing_after(L, 3);
  if (!u->readahead && lua_type(L, 3) != LUA_TFUNCTION) {
#if NP_TASK_WAITS_IN_C
    if ((n = np_task_wait(L, u, NP_WAIT_TRANSACT)) >= 0) return n;
#endif
    if ((n = np_main_wait(L, u, NP_WAIT_TRANSACT)) >= 0) return n;
  }
  if ((u->readahead || lua_type(L, 3) != LUA_TFUNCTION) &&
      (n = divert(L, W_TRANSACT)) >= 0)
    return n;
  return raw_transact(L);
}

static int m_try_read(lua_State *L) {
  pipe_ud *u = check_pipe(L);
  int n;
  check_no_wait_after(L, 2);
  if (u->readahead && (n = divert(L, W_TRY_READ)) >= 0) return n;
  return try_read(L, u);
}

/* layer.set_readahead(pipe, has): the Lua layer holds (or no longer
 * holds) bytes read ahead for this pipe. */
static int raw_set_readahead(lua_State *L) {
  pipe_ud *u = to_pipe(L);
  u->readahead = lua_toboolean(L, 2);
  return 0;
}

static np_op check_op(lua_State *L, int arg, const char *def) {
  static const char *const names[] = {"connect",  "read",     "write",
                                      "readable", "writable", "transact",
                                      NULL};
  return (np_op)(np_check_option(L, arg, def, names) + 1);
}

/* cancel([what] [, reason]): what is "connect", "read", "write",
 * "readable", "writable", or nil for all. */
/* A read_start ends, whichever name its read slot is cancelled by (the
 * backends cancel the slot's operation for all three). The first reason
 * stays, as a read already ended keeps its status; a disconnect() before
 * it ended a taken-over reading already. */
static void end_reading(pipe_ud *u, np_err reason) {
  if (!u->read_ending)
    u->read_end_reason = u->read_restart == NP_RESTART_DISCONNECTED
                             ? NP_NOT_CONNECTED
                             : reason;
  np_reading_cancel(u);
}

/* An operation of this kind waits in the read slot (read_held, the
 * reading machinery). */
static int in_read_slot(np_op op) {
  return op == NP_OP_READ || op == NP_OP_READABLE || op == NP_OP_TRANSACT;
}

/* pipe:cancel(what, reason) at 1..3; true if it took in the read slot. */
static int cancel_what(lua_State *L, pipe_ud *u) {
  static const char *const reasons[] = {"CANCELLED", "TIMEOUT", NULL};
  np_err reason = np_check_option(L, 3, "CANCELLED", reasons) == 0
                      ? NP_CANCELLED
                      : NP_TIMEOUT;
  int all = lua_isnoneornil(L, 2);
  np_op op = all ? NP_OP_READ : check_op(L, 2, NULL);
  if (in_read_slot(op)) end_reading(u, reason);
  if (all) {
    np_cancel(u->p, NP_OP_CONNECT, reason);
    np_cancel(u->p, NP_OP_READ, reason);
    np_cancel(u->p, NP_OP_WRITE, reason);
    np_cancel(u->p, NP_OP_WRITABLE, reason);
  } else {
    np_cancel(u->p, op, reason);
  }
  return in_read_slot(op);
}

static int raw_cancel(lua_State *L) {
  cancel_what(L, check_pipe(L));
  return 0;
}

void np_pipe_cancel_read(pipe_ud *u, np_err reason) {
  end_reading(u, reason);
  np_cancel(u->p, NP_OP_READ, reason);
}

/* The cancel of cancel_if and cancel_held below, once checked: pipe, what
 * and reason at 1..3; true. */
static int cancel_checked(lua_State *L, pipe_ud *u) {
  lua_settop(L, 3);
  if (cancel_what(L, u) && u->readahead) {
    lua_rawgeti(L, WAITING_UPV, W_FRAMING);
    lua_pushvalue(L, 1);
    if (lua_type(L, -2) == LUA_TTABLE) lua_rawget(L, -2);
    if (lua_type(L, -1) == LUA_TTABLE) { /* the pipe's framing read */
      lua_getfield(L, -1, "stop");
      if (!lua_toboolean(L, -1)) {
        lua_pushvalue(L, 3);
        lua_setfield(L, -3, "stop");
      }
    }
  }
  lua_settop(L, 0);
  lua_pushboolean(L, 1);
  return 1;
}

/* cancel_if(pipe, what, reason, t, key, value): the Lua layer's own cancel
 * of a wait's operation (at its deadline; the losing half of
 * ready("both"); an abandoned one), made only if rawget(t, key) is still
 * value, that is if that wait has not ended (a task's wait record still
 * has its ticket; an operation waited for outside a task is not done);
 * true if it cancelled, else nothing. The check and the cancel are one C
 * call, with nothing between them that runs Lua code: a step nested in any
 * call of the layer's (a call hook's, a finalizer's) may end that wait,
 * and the operation of the same kind started next (by the task that
 * waited, or by whatever ran in that step) is not this wait's. (The
 * reason comes as an argument, made before the check; a raw get runs no
 * collector step, so no finalizer.) A closed pipe has nothing to cancel.
 *
 * Nor is the layer's cancel (pipe:cancel's, when the layer holds the
 * pipe's reads) called, for the same reason: of what it does, only the
 * stop of a framing read in progress (read_line and the like, between two
 * of their reads) can apply while a wait of the layer's holds the read
 * slot, and that is done here (cancel_checked), after the cancel: the
 * record has its stop field from the start (stop = false, framing.lua),
 * so setting it allocates nothing (were it lacking, running out of memory
 * there would leave the cancel made: the framing read ends with its
 * read's TIMEOUT all the same; the stop only covers a read that finished
 * first). */
static int raw_cancel_if(lua_State *L) {
  pipe_ud *u = open_pipe_or_null(L);
  if (!u) return 0;
  luaL_checktype(L, 4, LUA_TTABLE);
  lua_settop(L, 6);
  lua_pushvalue(L, 5);
  lua_rawget(L, 4);
  if (!lua_rawequal(L, -1, 6)) return 0;
  return cancel_checked(L, u);
}

/* cancel_held(pipe, what, reason, start): the same, for a waiting read
 * made in C on the main thread (main_waits.c), made only while the read
 * slot is still held (read_held) by that wait's connection (start: the
 * instance's disconnect count when the wait began). The wait holds the
 * slot until its cancel has been made, so no other read can have started
 * meanwhile, unless a disconnect() in a step nested in the calls before
 * this one let the hold go (its read then ended NOT_CONNECTED, and a read
 * started since is the next client's). */
static int raw_cancel_held(lua_State *L) {
  pipe_ud *u = open_pipe_or_null(L);
  if (!u || !u->read_held ||
      u->disconnects != (unsigned)luaL_checkinteger(L, 4))
    return 0;
  return cancel_checked(L, u);
}

/* A read_start the Lua layer is still starting (bytes read ahead go
 * first) is its to cancel. */
static int m_cancel(lua_State *L) {
  pipe_ud *u = check_pipe(L);
  int n;
  if (u->readahead && (n = divert_call(L, W_CANCEL)) >= 0) return n;
  return raw_cancel(L);
}

static int m_busy(lua_State *L) {
  pipe_ud *u = check_pipe(L);
  lua_pushinteger(L, np_pipe_busy(u->p, check_op(L, 2, NULL)));
  return 1;
}

static int m_disconnect(lua_State *L) {
  pipe_ud *u = check_server(L);
  np_status st;
  if (!np_disconnect(u->p, &st)) return np_push_status(L, &st);
  u->disconnects++;
  /* From a read_start's callback: it ends, as after close() there (its
   * pending read's end tells it elsewhere: NOT_CONNECTED). */
  if (u->run_open) np_reading_stop(u);
  /* A reading stopped from elsewhere (taken over, or to be): the cancel's
   * end may be queued already (Linux), and must not start a read of the
   * next client's: it ends the reading with NOT_CONNECTED instead. */
  if (u->read_restart || u->read_stopping)
    u->read_restart = NP_RESTART_DISCONNECTED; /* (kept by a takeover) */
  /* A waiting read's hold (read_held) is the last client's: that read
   * makes no other (a framing read ends NOT_CONNECTED); the next client's
   * reads may start at once. */
  u->read_held = 0;
  lua_pushboolean(L, 1);
  return 1;
}

static int m_info(lua_State *L) {
  pipe_ud *u = check_pipe(L);
  np_info info;
  np_status st;
  if (!np_pipe_info(u->p, &info, &st)) return np_push_status(L, &st);
  lua_createtable(L, 0, 5);
  lua_pushstring(L, info.mode == NP_MODE_MESSAGE ? "message" : "byte");
  lua_setfield(L, -2, "mode");
  lua_pushstring(L, info.is_server ? "server" : "client");
  lua_setfield(L, -2, "pipe_end");
  if (info.max_instances == NP_UNLIMITED_INSTANCES)
    lua_pushliteral(L, "unlimited");
  else
    lua_pushinteger(L, info.max_instances);
  lua_setfield(L, -2, "max_instances");
  lua_pushinteger(L, info.out_buffer_size);
  lua_setfield(L, -2, "out_buffer_size");
  lua_pushinteger(L, info.in_buffer_size);
  lua_setfield(L, -2, "in_buffer_size");
  return 1;
}

/* peer(): { pid, session | uid, gid } of the other end's process. */
static int m_peer(lua_State *L) {
  pipe_ud *u = check_pipe(L);
  np_peer peer;
  np_status st;
  if (!np_pipe_peer(u->p, &peer, &st)) return np_push_status(L, &st);
  lua_createtable(L, 0, 3);
  lua_pushinteger(L, peer.pid);
  lua_setfield(L, -2, "pid");
  if (peer.session >= 0) {
    lua_pushinteger(L, peer.session);
    lua_setfield(L, -2, "session");
  }
  if (peer.uid >= 0) {
    lua_pushinteger(L, peer.uid);
    lua_setfield(L, -2, "uid");
    lua_pushinteger(L, peer.gid);
    lua_setfield(L, -2, "gid");
  }
  return 1;
}

/* server:peer_user(): user, id of the connected client's account. */
static int m_peer_user(lua_State *L) {
  pipe_ud *u = check_server(L);
  char user[1024], id[256];
  np_status st;
  if (!np_pipe_peer_user(u->p, user, sizeof user, id, sizeof id, &st))
    return np_push_status(L, &st);
  lua_pushstring(L, user);
  lua_pushstring(L, id);
  return 2;
}

/* peek(): { available = n, message = n | nil }, nothing consumed. */
static int peek(lua_State *L, pipe_ud *u) {
  np_peek pk;
  np_status st;
  if (!np_pipe_peek(u->p, &pk, &st)) return np_push_status(L, &st);
  lua_createtable(L, 0, 2);
  lua_pushinteger(L, (lua_Integer)pk.available);
  lua_setfield(L, -2, "available");
  if (pk.message >= 0) {
    lua_pushinteger(L, (lua_Integer)pk.message);
    lua_setfield(L, -2, "message");
  }
  return 1;
}

static int raw_peek(lua_State *L) { return peek(L, check_pipe(L)); }

static int m_peek(lua_State *L) {
  pipe_ud *u = check_pipe(L);
  int n;
  /* bytes the Lua layer read ahead come first: it counts them in */
  if (u->readahead && (n = divert(L, W_PEEK)) >= 0) return n;
  return peek(L, u);
}

static const char *const state_names[] = {"listening", "connected",
                                          "disconnected", "closed"};

static int m_state(lua_State *L) {
  pipe_ud *u = to_pipe(L);
  lua_pushstring(L, u->p ? state_names[np_pipe_state(u->p)] : "closed");
  return 1;
}

/* close, __close and __gc share this path; closing twice is harmless. */
static int m_close(lua_State *L) {
  pipe_ud *u = to_pipe(L);
  if (u->p) {
    np_pipe *p = u->p;
    u->p = NULL;
    /* Operations in flight keep this userdata anchored: their completions
     * (CLOSED) still come through step() and release it. */
    np_pipe_close(p);
  }
  /* Held since its callback raised (or its callback runs now): with
   * nothing in flight, nothing is left to come through a step that would
   * let it go. */
  if (u->lu->held == u) settle_held(L, u->lu, ANCHORS_UPV);
  lua_pushboolean(L, 1);
  return 1;
}

/* The collector never finalizes a pipe while it is anchored (an operation
 * in flight, or its callback running): an anchored pipe here is a call by
 * hand, and its completions must still find the userdata, so it only
 * closes. */
static int m_gc(lua_State *L) {
  pipe_ud *u = to_pipe(L);
  if (u->self_ref != LUA_NOREF) return m_close(L);
  if (u->p) {
    np_pipe_set_user(u->p, NULL); /* the userdata memory is going away */
    np_pipe_close(u->p);
    u->p = NULL;
  }
  return 0;
}

static int m_tostring(lua_State *L) {
  pipe_ud *u = to_pipe(L);
  if (u->p)
    lua_pushfstring(L, "namedpipe %s %s (%s)", u->is_server ? "server" : "client",
                    np_pipe_name(u->p), state_names[np_pipe_state(u->p)]);
  else
    lua_pushfstring(L, "namedpipe %s (closed)",
                    u->is_server ? "server" : "client");
  return 1;
}

/* ------------------------------------------------------------ tables */

const luaL_Reg np_pipe_methods[] = {
    {"connect", m_connect}, {"read", m_read}, {"read_into", m_read_into},
    {"write", m_write},     {"try_read", m_try_read},
    {"readable", m_readable}, {"writable", m_writable},
    {"try_write", m_try_write}, {"cancel", m_cancel},
    {"disconnect", m_disconnect}, {"info", m_info},
    {"state", m_state},     {"close", m_close},
    {"transact", m_transact}, {"peer", m_peer},
    {"peer_user", m_peer_user}, {"peek", m_peek},
    {"read_start", m_read_start}, {"read_stop", m_read_stop},
    {"_busy", m_busy},      {NULL, NULL}};

const luaL_Reg np_pipe_meta[] = {{"__gc", m_gc},
                                        {"__close", m_close},
                                        {"__tostring", m_tostring},
                                        {NULL, NULL}};

/* The private half's pipe entry points: without divert (see binding.h),
 * and what the Lua layer tells the core about a pipe. */
const luaL_Reg np_pipe_layer_funcs[] = {{"connect", raw_connect},
                                        {"read", raw_read},
                                        {"held_read", raw_held_read},
                                        {"read_held", raw_read_held},
                                        {"hold_read", raw_hold_read},
                                        {"read_into", raw_read_into},
                                        {"read_start", raw_read_start},
                                        {"read_stop", raw_read_stop},
                                        {"cancel", raw_cancel},
                                        {"cancel_if", raw_cancel_if},
                                        {"cancel_held", raw_cancel_held},
                                        {"buffer_put", raw_buffer_put},
                                        {"buffer_busy", raw_buffer_busy},
                                        {"write", raw_write},
                                        {"transact", raw_transact},
                                        {"peek", raw_peek},
                                        {"readable", raw_readable},
                                        {"writable", raw_writable},
                                        {"try_read", raw_try_read},
                                        {"write_now", raw_write_now},
                                        {"write_attach", raw_write_attach},
                                        {"read_stopping", raw_read_stopping},
                                        {"reads_messages", raw_reads_messages},
                                        {"set_readahead", raw_set_readahead},
                                        {NULL, NULL}};

const luaL_Reg np_pipe_module_funcs[] = {{"create", l_create},
                                         {"open", l_open},
                                         {NULL, NULL}};
