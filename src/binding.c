/*
 * binding.c - the Lua face of namedpipe: module `namedpipe.core`.
 *
 * Thin on purpose: argument checks, option tables (options.c), userdata
 * lifetime and callback dispatch. The platform work is behind np.h; the
 * coroutine/synchronous sugar is pure Lua (lua/namedpipe.lua).
 *
 * Lifetime rules (docs/windows-internals.md #1, #5):
 *  - The userdata only points at the backend's C-heap block; kernel-owned
 *    memory lives there, never in Lua memory (except write strings, which are
 *    anchored until their completion has been released).
 *  - While an operation started from Lua is in flight, the pipe userdata is
 *    anchored, so a callback never silently vanishes with a garbage
 *    collection; an unreferenced pipe with nothing in flight is closed by
 *    __gc.
 *  - Lua runs only inside step(): callbacks are never called from the call
 *    that started the operation.
 */
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "lauxlib.h"
#include "lua.h"

#include "compat.h"

#include "args.h"
#include "buffer.h"
#include "np.h"
#include "options.h"

/* The version is the rockspec's (its only home): the build passes it as
 * three numbers (Makefile VERSION_DEFS, the rockspec's `defines`). */
#if !defined(NP_VERSION_MAJOR) || !defined(NP_VERSION_MINOR) || \
    !defined(NP_VERSION_PATCH)
#error "build with -DNP_VERSION_MAJOR=.. -DNP_VERSION_MINOR=.. -DNP_VERSION_PATCH=.. (see the rockspec)"
#endif
#define NP_STR_(x) #x
#define NP_STR(x) NP_STR_(x)
#define NP_VERSION \
  NP_STR(NP_VERSION_MAJOR) "." NP_STR(NP_VERSION_MINOR) "." NP_STR(NP_VERSION_PATCH)

#define LOOP_KEY "namedpipe.loop"

#if LUA_NOREF != NP_NOREF
#error "NP_NOREF must equal LUA_NOREF"
#endif

/* Every function of the module and every method share four upvalues: the
 * loop userdata, the anchor table (callbacks, write strings, pipes in
 * flight), the pipe metatable and the waiting table (see divert: the Lua
 * layer's functions by slot), so the hot path never looks anything up by
 * name. */
#define LOOP_UPV lua_upvalueindex(1)
#define ANCHORS_UPV lua_upvalueindex(2)
#define PIPE_MT_UPV lua_upvalueindex(3)
#define WAITING_UPV lua_upvalueindex(4)
#define N_UPVALUES 4

/* step_loop: completions one step hands out before it stops starting new
 * rounds (Tokio's coop budget is 128 per task, libuv's read loop 32 reads
 * per stream and event). A step(0) in a host's frame stays short. */
#define STEP_BUDGET 64

typedef struct loop_ud {
  np_loop *loop; /* NULL once closed (lua_close) */
  /* The anchor table's free slots (anchor/release below): the table has
   * keys 1..anchors_top, free_slots[0..n_free) are free; free_slots has
   * room for anchors_top entries, so releasing never allocates. */
  int *free_slots;
  int n_free, anchors_top;
  /* The pure-Lua layer has work queued or a timer pending: step() goes
   * through it (divert). Set by layer.set_task_work, with what it is
   * made of: something to run at the next step (soon_work: a task spawned
   * or woken, say) and the earliest timer's deadline (has_timer, timer_at,
   * in np_now_ms time), which step_loop's rounds watch. */
  int task_work, soon_work, has_timer;
  double timer_at;
  /* core._attach has handed out the private half (once per Lua state). */
  int attached;
  /* Completions handed out so far (step_loop: did a nested step take one
   * while this one prepared?). */
  unsigned long taken;
  /* Buffers collected while being filled (buffer.c). */
  np_orphans orphans;
  /* The pipe whose completion's callback runs (step_loop): it keeps its
   * anchor until settle_held, after the callback. */
  struct pipe_ud *held;
} loop_ud;

/* ---------------------------------------------------------------- anchors */

/* Anchor the value on top of the stack (popped) in the anchor table (at
 * index t: ANCHORS_UPV, or a copy on the stack); its slot number goes with
 * the operation to the backend and comes back in the completion. What
 * luaL_ref does, without its free list kept in the table itself:
 * luaL_ref/luaL_unref cost five table accesses a pair, and were a third of
 * the binding's instructions in a ping-pong (callgrind); this is one
 * access each way. The loop_ud comes from the caller (a pipe_ud has it):
 * looking an upvalue up through the API costs as much as the table access
 * (lua_touserdata was 8% of a ping-pong's instructions).
 *
 * A free slot holds false, never nil: the table's keys are 1..anchors_top,
 * all present, so they stay in its array part, and storing into one never
 * allocates and so never raises. That lets an anchor be taken after the
 * backend has started an operation (a write's bytes, only when the backend
 * keeps them: np_write_start's *keeps), provided reserve_anchors made room
 * first, before anything was started. */
static int anchor(lua_State *L, loop_ud *lu, int t) {
  int slot = lu->free_slots[--lu->n_free]; /* reserve_anchors: one is free */
  lua_rawseti(L, t, slot);
  return slot;
}

/* At least n free slots (may raise: call before starting anything). The
 * bookkeeping is sound at every step: should growing the table raise (out
 * of memory) half way, the keys added so far are counted and free, and
 * the next call goes on from there. */
static void reserve_anchors(lua_State *L, loop_ud *lu, int n) {
  int top;
  int *fs;
  if (lu->n_free >= n) return;
  if (lu->anchors_top > INT_MAX / 2 - 64)
    luaL_error(L, "namedpipe: too many operations in flight");
  top = lu->anchors_top * 2 + 64;
  fs = (int *)realloc(lu->free_slots, (size_t)top * sizeof *fs);
  if (!fs) luaL_error(L, "not enough memory");
  lu->free_slots = fs; /* room for top entries: releasing never allocates */
  while (lu->anchors_top < top) {
    lua_pushboolean(L, 0);
    lua_rawseti(L, ANCHORS_UPV, lu->anchors_top + 1); /* may raise */
    lu->free_slots[lu->n_free++] = ++lu->anchors_top;
  }
}

/* Let an anchored value go (NP_NOREF: nothing). */
static void release(lua_State *L, loop_ud *lu, int t, int slot) {
  if (slot == NP_NOREF) return;
  lua_pushboolean(L, 0);
  lua_rawseti(L, t, slot);
  lu->free_slots[lu->n_free++] = slot;
}

typedef struct pipe_ud {
  const char *tag; /* &pipe_tag: what to_pipe recognises */
  np_pipe *p;   /* NULL once closed */
  loop_ud *lu;  /* its loop's (the loop userdata outlives every pipe's) */
  int inflight; /* operations started from Lua, not yet dispatched */
  int self_ref; /* anchor of this userdata while inflight > 0 */
  int is_server;
  /* The pure-Lua layer holds bytes read ahead for this pipe (framing):
   * reads go through it (divert). Set by layer.set_readahead. */
  int readahead;
} pipe_ud;

static np_loop *check_loop(lua_State *L) {
  loop_ud *lu = (loop_ud *)lua_touserdata(L, LOOP_UPV);
  if (!lu->loop) luaL_error(L, "namedpipe: the loop is closed");
  return lu->loop;
}

/* ---------------------------------------------------------------- results */

/* nil, message, name, code: the shape of every OS failure. */
static int push_status(lua_State *L, const np_status *st) {
  char buf[256];
  lua_pushnil(L);
  lua_pushstring(L, np_status_message(st, buf, sizeof buf));
  lua_pushstring(L, np_err_name(st->err));
  lua_pushinteger(L, st->code);
  return 4;
}

/* ------------------------------------------------------ the waiting form */

/* A method called without a callback (the waiting form), a read of a pipe
 * with bytes read ahead, or a step with tasks due, is the pure-Lua layer's
 * (lua/namedpipe.lua): it hands its functions over by name once
 * (layer.hand_over, below), each is kept in its slot of the waiting table,
 * and such a call is handed to it with the same arguments; its results
 * are the call's. Every other call stays in C: the callback form never
 * runs a line of Lua before its callback. Without a function in the slot
 * (namedpipe.core alone) the call goes on here and fails as a missing
 * callback. Returns the number of results, or -1 when the slot is empty. */
enum {
  W_CONNECT = 1, W_READ, W_READ_INTO, W_READABLE, W_WRITABLE, W_WRITE,
  W_TRANSACT, W_TRY_READ, W_PEEK, W_STEP, W_LAST = W_STEP
};
static const char *const waiting_names[] = {
    NULL,       "connect",  "read",     "read_into", "readable", "writable",
    "write",    "transact", "try_read", "peek",      "step"};

/* The function in slot w of the waiting table, pushed; 0 (nothing pushed)
 * if there is none. */
static int push_waiting(lua_State *L, int w) {
  lua_rawgeti(L, WAITING_UPV, w);
  if (lua_type(L, -1) == LUA_TFUNCTION) return 1;
  lua_pop(L, 1);
  return 0;
}
#if LUA_VERSION_NUM >= 503
static int waiting_done(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  return lua_gettop(L);
}
#elif NP_C_CAN_YIELD
static int waiting_done(lua_State *L) { return lua_gettop(L); }
#endif

/* Where a C function cannot be suspended (compat.h), a method returns this
 * marker alone instead, and its Lua wrapper (lua/namedpipe.lua) makes the
 * waiting call itself: layer.divert_marker. */
static const char divert_marker = 0;

static int divert(lua_State *L, int w) {
  if (!push_waiting(L, w)) return -1;
#if NP_C_CAN_YIELD
  lua_insert(L, 1);
  /* with a continuation: a waiting call suspends its task (yields) */
  lua_callk(L, lua_gettop(L) - 1, LUA_MULTRET, 0, waiting_done);
  return lua_gettop(L);
#else
  lua_pop(L, 1);
  lua_pushlightuserdata(L, (void *)&divert_marker);
  return 1;
#endif
}

/* step's hand-over never suspends its caller (the tasks it runs are
 * coroutines of their own): a plain call, on every version. */
static int divert_call(lua_State *L, int w) {
  if (!push_waiting(L, w)) return -1;
  lua_insert(L, 1);
  lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
  return lua_gettop(L);
}

/* ------------------------------------------------------------------ pipes */

/* The pipe at index 1, or a type error (luaL_checkudata's). A pipe
 * userdata is recognised by its size and its first field, the address of
 * this static: luaL_checkudata looks the metatable up by name and compares
 * it, four API calls and a string hash on every method call (5% of a
 * ping-pong's instructions); this is two calls. The bytes of a userdata
 * cannot be forged from Lua (its metatable can, with debug.setmetatable,
 * which would fool luaL_checkudata but not this). */
static const char pipe_tag = 0;

static pipe_ud *to_pipe(lua_State *L) {
  pipe_ud *u = (pipe_ud *)lua_touserdata(L, 1);
  if (u && lua_rawlen(L, 1) == sizeof *u && u->tag == &pipe_tag) return u;
  np_type_error(L, 1, NP_PIPE_MT);
  return NULL;
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

/* One more operation in flight for the pipe at index 1: it anchors the
 * userdata, unless already anchored, so it outlives every completion still
 * to come. */
static void pin_pipe(lua_State *L, pipe_ud *u) {
  u->inflight++;
  if (u->self_ref == LUA_NOREF) {
    lua_pushvalue(L, 1);
    u->self_ref = anchor(L, u->lu, ANCHORS_UPV);
  }
}

/* One operation fewer, at once (an operation that could not start): the
 * last one lets the userdata go, unless its callback is running
 * (settle_held lets it go then). t: the anchor table's index. */
static void unpin_pipe(lua_State *L, pipe_ud *u, int t) {
  if (--u->inflight == 0 && u->lu->held != u) {
    release(L, u->lu, t, u->self_ref);
    u->self_ref = LUA_NOREF;
  }
}

/* step_loop takes one operation off the pipe before running its callback
 * but lets the anchor go only after it (here), if nothing is in flight by
 * then: a callback that starts the next operation (a read re-armed, a
 * reply written) finds the pipe anchored, where letting it go first cost a
 * table store to release and one to anchor again for each such callback.
 * A callback that raises leaves lu->held set: the next step settles it.
 * The held pipe is anchored, so the pointer is good until settled; a
 * nested step settles it early, and the outer one then finds held NULL or
 * another pipe, anchored too. t: the anchor table's index. */
static void settle_held(lua_State *L, loop_ud *lu, int t) {
  pipe_ud *u = lu->held;
  if (!u) return;
  lu->held = NULL;
  if (u->inflight == 0 && u->self_ref != LUA_NOREF) {
    release(L, lu, t, u->self_ref);
    u->self_ref = LUA_NOREF;
  }
}

/* Anchor the callback at `arg` (and the pipe) before the backend sees the
 * operation; room is left for one more anchor (a write's bytes). */
static int anchor_operation(lua_State *L, pipe_ud *u, int arg) {
  int ref;
  reserve_anchors(L, u->lu, 3);
  lua_pushvalue(L, arg);
  ref = anchor(L, u->lu, ANCHORS_UPV);
  pin_pipe(L, u);
  return ref;
}

/* The userdata for a pipe, made before the backend makes the pipe: a
 * memory error raised after it would leave an open pipe (and its socket or
 * handle) that nothing refers to. Until pipe_attach, p is NULL (closed, to
 * every method and to __gc). */
static pipe_ud *pipe_new(lua_State *L, int is_server) {
  pipe_ud *u = (pipe_ud *)lua_newuserdatauv(L, sizeof *u, 0);
  u->tag = &pipe_tag;
  u->p = NULL;
  u->lu = (loop_ud *)lua_touserdata(L, LOOP_UPV);
  u->inflight = 0;
  u->self_ref = LUA_NOREF;
  u->is_server = is_server;
  u->readahead = 0;
  lua_pushvalue(L, PIPE_MT_UPV); /* luaL_setmetatable looks it up by name */
  lua_setmetatable(L, -2);
  return u;
}

static void pipe_attach(pipe_ud *u, np_pipe *p) {
  u->p = p;
  np_pipe_set_user(p, u);
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

static const char *check_name(lua_State *L, int arg) {
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
  const char *name = check_name(L, 1);
  np_server_options o;
  np_status st;
  np_pipe *p;
  pipe_ud *u;
  np_check_server_options(L, 2, &o);
  u = pipe_new(L, 1);
  p = np_server_create(loop, name, &o, &st);
  if (!p) return push_status(L, &st);
  pipe_attach(u, p);
  return 1;
}

static int l_open(lua_State *L) {
  np_loop *loop = check_loop(L);
  const char *name = check_name(L, 1);
  np_client_options o;
  np_status st;
  np_pipe *p;
  pipe_ud *u;
  np_check_client_options(L, 2, &o);
  u = pipe_new(L, 0);
  p = np_client_open(loop, name, &o, &st);
  if (!p) return push_status(L, &st);
  pipe_attach(u, p);
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
  if (np_pipe_busy(u->p, NP_OP_READ))
    np_arg_error(L, 1, "a read is already pending on this pipe");
  np_read_start(u->p, max, anchor_operation(L, u, top < 2 ? 2 : top));
  return 0;
}

static int raw_read(lua_State *L) { return start_read(L, check_pipe(L)); }

/* read_into(buf, cb): the buffer is anchored (as a write's string is) and
 * marked busy until the completion is dispatched: the backend, and under
 * Windows the kernel, writes into its bytes meanwhile. */
static int start_read_into(lua_State *L, pipe_ud *u) {
  np_buffer *b = np_buffer_check(L, 2, 1);
  int ref_cb, ref_data;
  check_callback(L, 3);
  if (np_pipe_busy(u->p, NP_OP_READ))
    np_arg_error(L, 1, "a read is already pending on this pipe");
  ref_cb = anchor_operation(L, u, 3);
  lua_pushvalue(L, 2);
  ref_data = anchor(L, u->lu, ANCHORS_UPV); /* room left by anchor_operation */
  b->busy = 1;
  np_read_into_start(u->p, b->bytes, b->size, ref_cb, ref_data);
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
 * buffer_busy(buf): is it busy? */
static int raw_buffer_busy(lua_State *L) {
  np_buffer *b = np_buffer_check(L, 1, 0);
  if (lua_isnone(L, 2)) {
    lua_pushboolean(L, b->busy);
    return 1;
  }
  b->busy = lua_toboolean(L, 2);
  return 0;
}

static int l_buffer(lua_State *L) {
  loop_ud *lu = (loop_ud *)lua_touserdata(L, LOOP_UPV);
  return np_buffer_new(L, &lu->orphans);
}

/* readable(cb) / writable(cb): Tokio's readiness, nothing consumed. */
static int start_readable(lua_State *L, pipe_ud *u) {
  check_callback(L, 2);
  if (np_pipe_busy(u->p, NP_OP_READ))
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
  if (np_pipe_busy(u->p, NP_OP_READ))
    np_arg_error(L, 1, "a read is already pending on this pipe");
  ref_cb = anchor_operation(L, u, 3);
  lua_pushvalue(L, 2);
  ref_data = anchor(L, u->lu, ANCHORS_UPV); /* room left by anchor_operation */
  np_transact_start(u->p, data, len, ref_cb, ref_data);
  return 0;
}

static int raw_write(lua_State *L) {
  pipe_ud *u = check_pipe(L);
  size_t len;
  const char *data = check_data(L, 2, &len);
  int ref_cb, keeps;
  check_callback(L, 3);
  ref_cb = anchor_operation(L, u, 3);
  if (!np_write_start(u->p, data, len, ref_cb, &keeps)) {
    release(L, u->lu, ANCHORS_UPV, ref_cb);
    unpin_pipe(L, u, ANCHORS_UPV);
    return luaL_error(L, "not enough memory");
  }
  /* The backend reads straight from the Lua string (no copy); if it still
   * does after the call (a write the socket did not take at once, every
   * write on Windows), the string is anchored until the completion has
   * been released. (It is on the stack until then: nothing ran between.
   * anchor_operation left room: this cannot raise.) */
  if (keeps) {
    lua_pushvalue(L, 2);
    np_write_keep(u->p, anchor(L, u->lu, ANCHORS_UPV));
  }
  return 0;
}

static int try_read(lua_State *L, pipe_ud *u) {
  size_t max = opt_read_size(L, 2), len;
  const char *data;
  int more;
  np_status st;
  if (np_pipe_busy(u->p, NP_OP_READ))
    np_arg_error(L, 1, "a read is already pending on this pipe");
  if (!np_try_read(u->p, max, &data, &len, &more, &st))
    return push_status(L, &st);
  lua_pushlstring(L, data, len);
  return 1;
}

static int raw_try_read(lua_State *L) { return try_read(L, check_pipe(L)); }

static int m_try_write(lua_State *L) {
  pipe_ud *u = check_pipe(L);
  size_t len, written;
  const char *data = check_data(L, 2, &len);
  int ref_data, kept;
  np_status st;
  /* Anchored as for write(): the backend may keep the bytes in flight. A
   * completion with no callback releases it; it also counts as in flight so
   * that the pipe userdata outlives it. */
  reserve_anchors(L, u->lu, 2);
  lua_pushvalue(L, 2);
  ref_data = anchor(L, u->lu, ANCHORS_UPV);
  if (!np_try_write(u->p, data, len, ref_data, &written, &kept, &st)) {
    release(L, u->lu, ANCHORS_UPV, ref_data);
    return push_status(L, &st);
  }
  if (kept) {
    pin_pipe(L, u);
  } else {
    release(L, u->lu, ANCHORS_UPV, ref_data);
  }
  lua_pushinteger(L, (lua_Integer)written);
  return 1;
}

/* An asynchronous method ends with one optional callback or timeout, at
 * index last: anything but nil after it is refused. Dropped without a
 * word, a callback given after a timeout (read(n, 5, cb)) would never run,
 * or a timeout after a callback never fire. */
static void check_nothing_after(lua_State *L, int last) {
  int i, top = lua_gettop(L);
  for (i = last + 1; i <= top; i++)
    if (!lua_isnil(L, i))
      np_arg_error(L, i, "nothing expected after the callback or timeout: "
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
  int n;
  check_nothing_after(L, 3);
  if ((u->readahead || lua_type(L, lua_gettop(L)) != LUA_TFUNCTION) &&
      (n = divert(L, W_READ)) >= 0)
    return n;
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
    if ((n = divert(L, W_READ_INTO)) >= 0) return n;
  }
  return start_read_into(L, u);
}

static int m_readable(lua_State *L) {
  pipe_ud *u = check_pipe(L);
  int n;
  check_nothing_after(L, 2);
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
  if (lua_type(L, 3) != LUA_TFUNCTION && (n = divert(L, W_WRITE)) >= 0) return n;
  return raw_write(L);
}

static int m_transact(lua_State *L) {
  pipe_ud *u = check_pipe(L);
  int n;
  check_nothing_after(L, 3);
  if ((u->readahead || lua_type(L, 3) != LUA_TFUNCTION) &&
      (n = divert(L, W_TRANSACT)) >= 0)
    return n;
  return raw_transact(L);
}

static int m_try_read(lua_State *L) {
  pipe_ud *u = check_pipe(L);
  int n;
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

/* layer.set_task_work(soon [, timer_at]): something is queued for the
 * next step (soon), the earliest pending timer is due at timer_at (np.now
 * time; nil: no timer). */
static int raw_set_task_work(lua_State *L) {
  loop_ud *lu = (loop_ud *)lua_touserdata(L, LOOP_UPV);
  lu->soon_work = lua_toboolean(L, 1);
  lu->has_timer = lua_type(L, 2) == LUA_TNUMBER;
  lu->timer_at = lu->has_timer ? lua_tonumber(L, 2) : 0;
  lu->task_work = lu->soon_work || lu->has_timer;
  if (lu->loop)
    np_loop_host_sync(lu->loop, lu->soon_work, lu->has_timer, lu->timer_at);
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
static int m_cancel(lua_State *L) {
  pipe_ud *u = check_pipe(L);
  static const char *const reasons[] = {"CANCELLED", "TIMEOUT", NULL};
  np_err reason = np_check_option(L, 3, "CANCELLED", reasons) == 0
                      ? NP_CANCELLED
                      : NP_TIMEOUT;
  if (lua_isnoneornil(L, 2)) {
    np_cancel(u->p, NP_OP_CONNECT, reason);
    np_cancel(u->p, NP_OP_READ, reason);
    np_cancel(u->p, NP_OP_WRITE, reason);
    np_cancel(u->p, NP_OP_WRITABLE, reason);
  } else {
    np_cancel(u->p, check_op(L, 2, NULL), reason);
  }
  return 0;
}

static int m_busy(lua_State *L) {
  pipe_ud *u = check_pipe(L);
  lua_pushinteger(L, np_pipe_busy(u->p, check_op(L, 2, NULL)));
  return 1;
}

static int m_disconnect(lua_State *L) {
  pipe_ud *u = check_server(L);
  np_status st;
  if (!np_disconnect(u->p, &st)) return push_status(L, &st);
  lua_pushboolean(L, 1);
  return 1;
}

static int m_info(lua_State *L) {
  pipe_ud *u = check_pipe(L);
  np_info info;
  np_status st;
  if (!np_pipe_info(u->p, &info, &st)) return push_status(L, &st);
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
  if (!np_pipe_peer(u->p, &peer, &st)) return push_status(L, &st);
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
    return push_status(L, &st);
  lua_pushstring(L, user);
  lua_pushstring(L, id);
  return 2;
}

/* peek(): { available = n, message = n | nil }, nothing consumed. */
static int peek(lua_State *L, pipe_ud *u) {
  np_peek pk;
  np_status st;
  if (!np_pipe_peek(u->p, &pk, &st)) return push_status(L, &st);
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

/* ------------------------------------------------------------------- loop */

/* A read_into's completion: its bytes are in the buffer anchored as its
 * ref_data (a read() has none). */
static int is_read_into(const np_completion *c) {
  return c->op == NP_OP_READ && c->ref_data != LUA_NOREF;
}

/* Push the callback's arguments for completion c; returns how many. */
static int push_completion(lua_State *L, const np_completion *c) {
  if (c->status.err != NP_OK) return push_status(L, &c->status);
  switch (c->op) {
    case NP_OP_CONNECT:
    case NP_OP_READABLE:
    case NP_OP_WRITABLE:
      lua_pushboolean(L, 1);
      return 1;
    case NP_OP_TRANSACT:
      lua_pushlstring(L, c->data, c->len);
      return 1;
    case NP_OP_READ:
      if (is_read_into(c)) /* the bytes are in place */
        lua_pushinteger(L, (lua_Integer)c->len);
      else
        lua_pushlstring(L, c->data, c->len);
      return 1;
    default:
      lua_pushinteger(L, (lua_Integer)c->len);
      return 1;
  }
}

/* Does the Lua layer have something to run before more completions: work
 * queued for the next step (a task spawned or woken), or a timer come due?
 * (A timer still pending does not count.) */
static int lua_layer_waits(const loop_ud *lu) {
  return lu->soon_work || (lu->has_timer && np_now_ms() >= lu->timer_at);
}

static int nothing(lua_State *L) {
  (void)L;
  return 0;
}

static int step_loop(lua_State *L, loop_ud *lu) {
  np_loop *loop = lu->loop;
  lua_Number t = 0;
  int timeout, ready, first_round, dispatched = 0, anchors;
  np_status st;
  if (!lua_isnoneornil(L, 1)) {
    int isnum;
    t = lua_tonumberx(L, 1, &isnum);
    if (!isnum || lua_type(L, 1) != LUA_TNUMBER) t = -1;
  }
  if (!(t >= 0)) np_arg_error(L, 1, "timeout in milliseconds >= 0 expected");
  if (!loop) luaL_error(L, "namedpipe: the loop is closed");
  timeout = t >= (lua_Number)INT_MAX ? INT_MAX : (int)(t + 0.999);
  settle_held(L, lu, ANCHORS_UPV); /* a callback raised in an earlier step */
  ready = np_loop_wait(loop, timeout, &st);
  if (ready < 0) return push_status(L, &st);
  if (ready == 0) {
    np_loop_host_sync(loop, lu->soon_work, lu->has_timer, lu->timer_at);
    lua_pushinteger(L, 0);
    return 1;
  }
  first_round = ready;
  lua_pushvalue(L, ANCHORS_UPV); /* on the stack: cheaper to index */
  anchors = lua_gettop(L);
  /* Nothing that can raise (run out of memory) comes between taking a
   * completion and running its callback: a completion taken and not
   * delivered would be lost. So, first, room to call a callback: stack for
   * the largest Lua function's frame (255 registers, the function, its
   * arguments), and a CallInfo, which a call leaves behind and the
   * collector never frees while it is the first spare one. Then, for each
   * completion, its callback's arguments (a string may need memory) are
   * made while it is still queued, and only then is it taken: should they
   * raise, it is there for the next step, which does not wait for it. */
  if (!lua_checkstack(L, 300)) luaL_error(L, "not enough memory");
  lua_pushcfunction(L, nothing);
  lua_call(L, 0, 0);
  /* In rounds: each hands out only what was ready when it looked, so
   * callbacks that start operations which finish at once cannot keep this
   * step running forever. Another round follows while the callbacks left
   * completions ready (a read that found its bytes at once, a write sent
   * whole) and fewer than STEP_BUDGET were handed out; it hands out no
   * more than the budget's rest. A stream read from its callback goes on
   * in this step, without a return to Lua and a new step() per read (as
   * libuv reads a stream up to 32 times per event). The first round is
   * what was ready when the step began, however many. A round never
   * waits, and one with an empty queue is not begun: a step asks the
   * kernel no more often than before. Once the Lua layer has something
   * to run at the next step (a task spawned or woken) or a timer has come
   * due, the step ends after the completion being handed out, in whatever
   * round after the first: its step runs tasks and timers between steps,
   * and they must not wait behind 64 completions. A timer still pending
   * does not stop the rounds (a task's call with a timeout has one; its
   * callback resumes the task, whose next call may finish at once): a
   * clock read per completion after the first round tells, only while a
   * timer exists. */
  for (;;) {
    np_completion c;
    pipe_ud *u;
    int nargs, has_cb;
    unsigned long taken = lu->taken;
    if (!np_loop_peek(loop, &c)) break;
    if (dispatched >= first_round && lua_layer_waits(lu))
      break; /* (checked per completion: a round's callbacks may be long) */
    if (dispatched >= ready) { /* this round is done: another? */
      int more;
      if (dispatched >= STEP_BUDGET) break;
      more = np_loop_wait(loop, 0, &st);
      if (more <= 0) break; /* an error is the next step's to report */
      if (more > STEP_BUDGET - dispatched) more = STEP_BUDGET - dispatched;
      ready = dispatched + more;
      if (!np_loop_peek(loop, &c)) break;
    }
    has_cb = c.ref_cb != LUA_NOREF;
    if (has_cb) lua_rawgeti(L, anchors, c.ref_cb);
    nargs = push_completion(L, &c);
    /* Making the string may have run finalizers, which may have stepped
     * (a nested step) and taken this very completion: then these are
     * stale, and the next one is looked at afresh. */
    if (lu->taken != taken) {
      lua_pop(L, nargs + has_cb);
      continue;
    }
    np_loop_take(loop, &c);
    lu->taken++;
    dispatched++;
    u = (pipe_ud *)c.user;
    if (is_read_into(&c)) {
      lua_rawgeti(L, anchors, c.ref_data);
      ((np_buffer *)lua_touserdata(L, -1))->busy = 0;
      lua_pop(L, 1);
    }
    release(L, lu, anchors, c.ref_cb);
    release(L, lu, anchors, c.ref_data);
    np_completion_done(loop, &c); /* may free the pipe block */
    /* A nested step run before this one's first callback (from a
     * finalizer or a hook) may have left a pipe held (its callback
     * raised): settle it before holding another, while u still counts
     * this completion (so u keeps its anchor if it is that pipe). */
    settle_held(L, lu, anchors);
    if (u) {
      u->inflight--;
      lu->held = u; /* anchored until settled, after the callback */
    }
    if (has_cb)
      lua_call(L, nargs, 0); /* an error propagates; the queue stays sound */
    else
      lua_pop(L, nargs);
    settle_held(L, lu, anchors);
  }
  np_loop_host_sync(loop, lu->soon_work, lu->has_timer, lu->timer_at);
  lua_pushinteger(L, dispatched);
  return 1;
}

/* step([timeout]): with tasks or timers due, the Lua layer's step (it runs
 * them around raw_step). */
static int l_step(lua_State *L) {
  loop_ud *lu = (loop_ud *)lua_touserdata(L, LOOP_UPV);
  int n;
  if (lu->task_work && (n = divert_call(L, W_STEP)) >= 0) return n;
  return step_loop(L, lu);
}

static int raw_step(lua_State *L) {
  return step_loop(L, (loop_ud *)lua_touserdata(L, LOOP_UPV));
}

/* np.path(name): the socket file on Unix, the name itself on Windows. */
static int l_path(lua_State *L) {
  const char *name = check_name(L, 1);
  char buf[1024];
  np_status st;
  if (!np_pipe_path(name, buf, sizeof buf, &st)) return push_status(L, &st);
  lua_pushstring(L, buf);
  return 1;
}

static int l_pending(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)np_loop_outstanding(check_loop(L)));
  return 1;
}

/* np.stats(): { pipes, outstanding, os_handles } for leak checks. */
static int l_stats(lua_State *L) {
  np_stats st;
  np_loop_stats(check_loop(L), &st);
  lua_createtable(L, 0, 3);
  lua_pushinteger(L, (lua_Integer)st.pipes);
  lua_setfield(L, -2, "pipes");
  lua_pushinteger(L, (lua_Integer)st.outstanding);
  lua_setfield(L, -2, "outstanding");
  lua_pushinteger(L, st.os_handles);
  lua_setfield(L, -2, "os_handles");
  return 1;
}

/* np.fd(): the descriptor a host polls (np.h, np_loop_host_fd), or nil
 * where there is none (Windows). */
static int l_fd(lua_State *L) {
  loop_ud *lu = (loop_ud *)lua_touserdata(L, LOOP_UPV);
  np_status st;
  int fd = np_loop_host_fd(check_loop(L), &st);
  if (fd == -2) {
    lua_pushnil(L);
    return 1;
  }
  if (fd < 0) return push_status(L, &st);
  /* what the Lua layer had queued before it was asked for counts too */
  np_loop_host_sync(lu->loop, lu->soon_work, lu->has_timer, lu->timer_at);
  lua_pushinteger(L, fd);
  return 1;
}

static int l_now(lua_State *L) {
  lua_pushnumber(L, np_now_ms());
  return 1;
}

/* When lua_close's drain ran out with operations still with the kernel,
 * the Lua strings their writes point at must outlive the state (the kernel
 * may still read them), yet lua_close frees every object after the last
 * finalizer. So from then on the state's allocator is wrapped: a block
 * holding the bytes of a string that was still anchored for an operation
 * is never freed (leaked, as the backend leaks the requests themselves).
 * Only this failure path pays for it; the wrapper and its list are leaked
 * too, since the state's own last block is freed through them. */
typedef struct kept_strings {
  lua_Alloc alloc;
  void *ud;
  size_t n;
  const char *bytes[1]; /* n of them */
} kept_strings;

static void *keeping_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  kept_strings *k = (kept_strings *)ud;
  size_t i;
  if (ptr && nsize == 0)
    for (i = 0; i < k->n; i++)
      if (k->bytes[i] >= (const char *)ptr &&
          k->bytes[i] < (const char *)ptr + osize)
        return NULL;
  return k->alloc(k->ud, ptr, osize, nsize);
}

static void keep_anchored_strings(lua_State *L, int loop_index) {
  kept_strings *k;
  size_t n = 0;
  lua_getiuservalue(L, loop_index, 1); /* the anchor table */
  lua_pushnil(L);
  while (lua_next(L, -2)) {
    n += lua_type(L, -1) == LUA_TSTRING;
    lua_pop(L, 1);
  }
  k = n ? (kept_strings *)malloc(sizeof *k + n * sizeof k->bytes[0]) : NULL;
  if (k) {
    k->n = 0;
    lua_pushnil(L);
    while (lua_next(L, -2)) {
      if (lua_type(L, -1) == LUA_TSTRING && k->n < n)
        k->bytes[k->n++] = lua_tostring(L, -1);
      lua_pop(L, 1);
    }
    k->alloc = lua_getallocf(L, &k->ud);
    lua_setallocf(L, keeping_alloc, k);
  }
  lua_pop(L, 1);
}

static int loop_gc(lua_State *L) {
  loop_ud *lu = (loop_ud *)lua_touserdata(L, 1);
  if (lu->loop) {
    int gave_back = np_loop_close(lu->loop);
    np_orphans_close(&lu->orphans, gave_back);
    lu->loop = NULL;
    if (!gave_back) keep_anchored_strings(L, 1);
  }
  free(lu->free_slots);
  lu->free_slots = NULL;
  lu->n_free = 0;
  return 0;
}

static const luaL_Reg pipe_methods[] = {
    {"connect", m_connect}, {"read", m_read}, {"read_into", m_read_into},
    {"write", m_write},     {"try_read", m_try_read},
    {"readable", m_readable}, {"writable", m_writable},
    {"try_write", m_try_write}, {"cancel", m_cancel},
    {"disconnect", m_disconnect}, {"info", m_info},
    {"state", m_state},     {"close", m_close},
    {"transact", m_transact}, {"peer", m_peer},
    {"peer_user", m_peer_user}, {"peek", m_peek},
    {"_busy", m_busy},      {NULL, NULL}};

static const luaL_Reg pipe_meta[] = {{"__gc", m_gc},
                                     {"__close", m_close},
                                     {"__tostring", m_tostring},
                                     {NULL, NULL}};

/* layer.hand_over(fns): the Lua layer's waiting functions, by method name
 * (fns.read, fns.step, ...), each put in its slot of the waiting table; a
 * name that is not a slot's is refused, so a misspelt one cannot go
 * unnoticed. */
static int layer_hand_over(lua_State *L) {
  int w;
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_pushnil(L);
  while (lua_next(L, 1)) {
    int known = 0;
    lua_pop(L, 1);
    if (lua_type(L, -1) == LUA_TSTRING)
      for (w = 1; w <= W_LAST; w++)
        if (strcmp(lua_tostring(L, -1), waiting_names[w]) == 0) known = 1;
    if (!known)
      return luaL_error(L, "namedpipe.core: no waiting form for %s '%s'",
                        luaL_typename(L, -1),
                        lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "?");
  }
  for (w = 1; w <= W_LAST; w++) {
    lua_getfield(L, 1, waiting_names[w]);
    if (!lua_isnil(L, -1)) luaL_checktype(L, -1, LUA_TFUNCTION);
    lua_rawseti(L, WAITING_UPV, w);
  }
  return 0;
}

/* The private half of the module (core._attach): the C entry points
 * without divert, and what the Lua layer tells the core. */
static const luaL_Reg layer_funcs[] = {{"connect", raw_connect},
                                     {"read", raw_read},
                                     {"read_into", raw_read_into},
                                     {"buffer_put", raw_buffer_put},
                                     {"buffer_busy", raw_buffer_busy},
                                     {"write", raw_write},
                                     {"transact", raw_transact},
                                     {"peek", raw_peek},
                                     {"readable", raw_readable},
                                     {"writable", raw_writable},
                                     {"try_read", raw_try_read},
                                     {"step", raw_step},
                                     {"set_readahead", raw_set_readahead},
                                     {"set_task_work", raw_set_task_work},
                                     {"hand_over", layer_hand_over},
                                     {NULL, NULL}};

/* core._attach(): the private half, once per Lua state, for
 * lua/namedpipe.lua: the protocol between the C core and the Lua layer
 * (which functions the methods hand their calls to, what the layer holds
 * of each pipe, when step must go through it) is reachable by nobody
 * else, so no script can change what a method does. A second call is
 * refused. */
static int l_attach(lua_State *L) {
  loop_ud *lu = (loop_ud *)lua_touserdata(L, LOOP_UPV);
  int i;
  if (lu->attached)
    return luaL_error(L, "namedpipe.core: its Lua layer is attached already "
                         "(require \"namedpipe\" is the way to it)");
  lu->attached = 1;
  luaL_newlibtable(L, layer_funcs);
  for (i = 1; i <= N_UPVALUES; i++) lua_pushvalue(L, lua_upvalueindex(i));
  luaL_setfuncs(L, layer_funcs, N_UPVALUES);
  lua_pushlightuserdata(L, (void *)&divert_marker);
  lua_setfield(L, -2, "divert_marker");
  lua_pushboolean(L, NP_C_CAN_YIELD);
  lua_setfield(L, -2, "c_can_yield");
  return 1;
}

static const luaL_Reg module_funcs[] = {{"create", l_create},
                                        {"open", l_open},
                                        {"step", l_step},
                                        {"buffer", l_buffer},
                                        {"pending", l_pending},
                                        {"path", l_path},
                                        {"stats", l_stats},
                                        {"now", l_now},
                                        {"fd", l_fd},
                                        {"_attach", l_attach},
                                        {NULL, NULL}};

/* The loop is created once per Lua state and kept in the registry; its __gc
 * runs at lua_close after every pipe's (it is the oldest finalizable
 * object), so it can wait for the kernel to give back their blocks. */
static void push_loop(lua_State *L) {
  if (lua_getfield(L, LUA_REGISTRYINDEX, LOOP_KEY) == LUA_TUSERDATA) return;
  lua_pop(L, 1);
  {
    np_status st;
    char buf[256];
    loop_ud *lu = (loop_ud *)lua_newuserdatauv(L, sizeof *lu, 2);
    memset(lu, 0, sizeof *lu);
    lua_createtable(L, 0, 1);
    lua_pushcfunction(L, loop_gc);
    lua_setfield(L, -2, "__gc");
    lua_setmetatable(L, -2);
    lu->loop = np_loop_new(&st);
    if (!lu->loop)
      luaL_error(L, "namedpipe: cannot create the loop: %s",
                 np_status_message(&st, buf, sizeof buf));
    lua_newtable(L); /* anchors */
    lua_setiuservalue(L, -2, 1);
    lua_newtable(L); /* waiting (divert) */
    lua_setiuservalue(L, -2, 2);
    lua_pushvalue(L, -1);
    lua_setfield(L, LUA_REGISTRYINDEX, LOOP_KEY);
  }
}

NP_EXPORT int luaopen_namedpipe_core(lua_State *L);

NP_EXPORT int luaopen_namedpipe_core(lua_State *L) {
  int i;
  push_loop(L);                 /* loop */
  lua_getiuservalue(L, -1, 1);  /* loop anchors */
  luaL_newmetatable(L, NP_PIPE_MT); /* loop anchors mt (may exist already) */
  lua_getiuservalue(L, -3, 2);  /* loop anchors mt waiting */
  /* Pushes the four upvalues, in order. */
#define PUSH_UPVALUES(top_offset)                             \
  for (i = 0; i < N_UPVALUES; i++) lua_pushvalue(L, (top_offset))

  if (lua_getfield(L, -2, "__index") != LUA_TTABLE) { /* a first require */
    lua_pop(L, 1);
    lua_pushvalue(L, -2); /* mt */
    PUSH_UPVALUES(-5);
    luaL_setfuncs(L, pipe_meta, N_UPVALUES);
    lua_pop(L, 1);
    luaL_newlibtable(L, pipe_methods);
    PUSH_UPVALUES(-5);
    luaL_setfuncs(L, pipe_methods, N_UPVALUES);
    lua_pushvalue(L, -1);
    lua_setfield(L, -4, "__index");
  }
  /* loop anchors mt waiting methods */
  luaL_newlibtable(L, module_funcs);
  PUSH_UPVALUES(-6);
  luaL_setfuncs(L, module_funcs, N_UPVALUES);
  lua_insert(L, -2);
  lua_setfield(L, -2, "methods"); /* for the pure-Lua layer to extend */
#undef PUSH_UPVALUES
  lua_pushliteral(L, NP_VERSION);
  lua_setfield(L, -2, "_VERSION");
  return 1;
}
