/*
 * binding.c - the Lua face of namedpipe: module `namedpipe.core`, its loop
 * userdata, step() and the private half the Lua layer attaches to; the
 * pipe userdata and its methods are methods.c's (binding.h: what they share).
 *
 * Thin on purpose: argument checks (args.c), option tables (options.c),
 * userdata lifetime and callback dispatch. The platform work is behind np.h;
 * the coroutine/synchronous sugar is pure Lua (lua/namedpipe.lua).
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
#include "binding.h"
#include "buffer.h"
#include "np.h"
#include "reading.h"

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

/* step_loop: completions one step hands out before it stops starting new
 * rounds (Tokio's coop budget is 128 per task, libuv's read loop 32 reads
 * per stream and event). A step(0) in a host's frame stays short. */
#define STEP_BUDGET 64

/* ---------------------------------------------------------------- results */

/* nil, message, name, code: the shape of every OS failure. */
int np_push_status(lua_State *L, const np_status *st) {
  char buf[256];
  lua_pushnil(L);
  lua_pushstring(L, np_status_message(st, buf, sizeof buf));
  lua_pushstring(L, np_err_name(st->err));
  lua_pushinteger(L, st->code);
  return 4;
}

/* ------------------------------------------------------ the waiting form */

/* The waiting table's slots by name (layer.hand_over), in W_* order. */
static const char *const waiting_names[] = {
    NULL,       "connect",  "read",     "read_into", "readable", "writable",
    "write",    "transact", "try_read", "peek",      "step",
    "read_start", "read_stop", "cancel"};

/* Where a C function cannot be suspended (compat.h), a method returns this
 * marker alone instead, and its Lua wrapper (lua/namedpipe.lua) makes the
 * waiting call itself: layer.divert_marker. */
const char np_divert_marker = 0;

/* ------------------------------------------------------------------- loop */

/* A read_into's completion: its bytes are in the buffer anchored as its
 * ref_data (a read() has none). */
static int is_read_into(const np_completion *c) {
  return c->op == NP_OP_READ && c->ref_data != LUA_NOREF;
}

/* Push the callback's arguments for completion c; returns how many. */
static int push_completion(lua_State *L, const np_completion *c) {
  if (c->status.err != NP_OK) return np_push_status(L, &c->status);
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

/* The completion's status, pushed as nargs values on the top, replaced by
 * err (an outcome of ours: code 0); how many values are pushed now. */
static int replace_status(lua_State *L, np_completion *c, int nargs,
                          np_err err) {
  lua_pop(L, nargs);
  c->status.err = err;
  c->status.code = 0;
  return np_push_status(L, &c->status);
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

/* Calls nested as deep as its argument says: each leaves a CallInfo
 * behind, which the next call at that depth takes without allocating. */
static int nest(lua_State *L) {
  lua_Integer depth = lua_tointeger(L, 1);
  if (depth > 1) {
    lua_pushcfunction(L, nest);
    lua_pushinteger(L, depth - 1);
    lua_call(L, 1, 0);
  }
  return 0;
}

/* How deep make_room's frames go: a queued item's call (T.resume), the
 * coroutine.resume it makes, the task's finish after it, and what finish
 * calls (coroutine.status, the timer's unlink), with one to spare. */
#define ROOM_DEPTH 6

/* layer.make_room(): what the Lua layer's queues (namedpipe.task: the
 * calls queued for the next step, the timers due) need before they take
 * an item off to run it, as step_loop needs it before it takes a
 * completion: stack for the largest frame, and CallInfos for the calls
 * the item's call makes (a call frame is allocated the first time a depth
 * is reached, and may be freed by a collection at a shallower one). With
 * them made first, nothing between taking the item and running it can run
 * out of memory; where that failed, a task's start or wake-up was lost for
 * good (the task never ran on, and np.run waited for it forever). Raises
 * "not enough memory" before anything is taken. */
static int raw_make_room(lua_State *L) {
  if (!lua_checkstack(L, 300)) luaL_error(L, "not enough memory");
  lua_pushcfunction(L, nest);
  lua_pushinteger(L, ROOM_DEPTH);
  lua_call(L, 1, 0);
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
  flush_unused_kept(L, lu, ANCHORS_UPV); /* (so did that step) */
  lu->wrote_now = 0; /* (this wait looks) */
  lu->writes_now = 0; /* the loop turns: a task's writes in a row start again */
  lu->looks++;
  ready = np_loop_wait(loop, timeout, &st);
  if (ready < 0) return np_push_status(L, &st);
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
   * waits, and one with an empty queue is not begun, unless a callback
   * wrote at once (wrote_now), which counts as the completion such a
   * write would have left: a step asks the kernel no more often than
   * before. Once the Lua layer has something to run at the next step (a
   * task spawned or woken) or a timer has come due, the step ends after the completion being handed out, in whatever
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
    int run; /* a read_start's read: its callback runs as a run (reading.c) */
    int restart; /* its cancelled read, taken over: only the next read */
    unsigned long taken = lu->taken;
    int have = np_loop_peek(loop, &c);
    if (!have && !lu->wrote_now) break;
    if (dispatched >= first_round && lua_layer_waits(lu))
      break; /* (checked per completion: a round's callbacks may be long) */
    if (!have || dispatched >= ready) { /* this round is done: another? */
      int more;
      if (dispatched >= STEP_BUDGET) break;
      lu->wrote_now = 0;
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
    run = restart = 0;
    if (u && c.ref_cb == u->read_cb && c.ref_cb != LUA_NOREF &&
        c.op == NP_OP_READ) {
      if (u->read_restart && c.status.err == NP_CANCELLED &&
          !u->read_stopping) {
        /* a read_stop's cancel, the reading taken over by a read_start */
        if (u->read_ending) {
          /* ... then cancelled: the end is cancel()'s, with its reason.
           * (read_stop's cancel came first, and the first stop's reason
           * is what the core reports: CANCELLED, on both platforms.) */
          if (u->read_end_reason != NP_CANCELLED)
            nargs = replace_status(L, &c, nargs, u->read_end_reason);
        } else if (u->p && u->read_restart != NP_RESTART_DISCONNECTED) {
          restart = 1;
          lua_pop(L, nargs + 1);
          has_cb = nargs = 0;
        } else { /* closed or disconnected since: the end is theirs */
          nargs = replace_status(L, &c, nargs,
                                 u->p ? NP_NOT_CONNECTED : NP_CLOSED);
        }
      }
      u->read_restart = 0;
      if (restart) {
        /* (nothing to call: the next read starts below) */
      } else if (c.status.err == NP_OK && !u->read_stopping &&
                 !u->read_ending) {
        run = 1;
        np_reading_running(u);
      } else { /* the reading ends here */
        if (u->read_stopping && c.status.err != NP_OK) {
          lua_pop(L, nargs + 1); /* stopped: nothing more for its callback */
          has_cb = nargs = 0;
        }
        u->read_cb = LUA_NOREF;
        u->read_stopping = u->read_ending = 0;
      }
    }
    if (run || restart) {
      /* (the reading keeps its callback) */
    } else if (u && c.op == NP_OP_WRITE) {
      if (!has_cb && u->rest_state == NP_REST_WAITING) {
        /* a write's rest, ended before its wait could take it: kept for it */
        u->rest_state = NP_REST_ENDED;
        u->rest_err = c.status.err;
        u->rest_code = c.status.code;
        u->rest_len = c.len;
      }
      release_write_callback(L, u, anchors, c.ref_cb);
    } else {
      release(L, lu, anchors, c.ref_cb);
    }
    release(L, lu, anchors, c.ref_data);
    np_completion_done(loop, &c); /* may free the pipe block */
    if (restart) /* the reading's next read, counted as this one was */
      np_read_start(u->p, 0, NULL, c.ref_cb, NP_NOREF);
    /* A nested step run before this one's first callback (from a
     * finalizer or a hook) may have left a pipe held (its callback
     * raised): settle it before holding another, while u still counts
     * this completion (so u keeps its anchor if it is that pipe). */
    settle_held(L, lu, anchors);
    if (u) {
      /* (a run stays counted until it is done; a restart's read is counted
       * as its own completion) */
      if (!run && !restart) u->inflight--;
      lu->held = u; /* anchored until settled, after the callback */
      /* closed, its last completion: nothing can anchor it again, so let
       * it go now (a raise would leave it held until a next step) */
      if (!u->p && u->inflight == 0) settle_held(L, lu, anchors);
    }
    if (run) { /* done even if it raises: then the error goes on */
      int status = lua_pcall(L, nargs, 0, 0);
      np_reading_done(L, lu, u, c.ref_cb, anchors);
      if (status != 0) {
        settle_held(L, lu, anchors); /* (the pcall is there anyway) */
        lua_error(L);
      }
    } else if (has_cb) {
      lua_call(L, nargs, 0); /* an error propagates; the queue stays sound */
    } else {
      lua_pop(L, nargs);
    }
    settle_held(L, lu, anchors);
  }
  flush_unused_kept(L, lu, anchors); /* (none before its first round) */
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

/* layer.looks(): how many steps have looked for completions (loop_ud). */
static int raw_looks(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)((loop_ud *)lua_touserdata(L, LOOP_UPV))->looks);
  return 1;
}

/* np.path(name): the socket file on Unix, the name itself on Windows. */
static int l_path(lua_State *L) {
  const char *name = np_check_name(L, 1);
  char buf[1024];
  np_status st;
  if (!np_pipe_path(name, buf, sizeof buf, &st)) return np_push_status(L, &st);
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
  lua_createtable(L, 0, 4);
  lua_pushinteger(L, (lua_Integer)st.pipes);
  lua_setfield(L, -2, "pipes");
  lua_pushinteger(L, (lua_Integer)st.outstanding);
  lua_setfield(L, -2, "outstanding");
  lua_pushinteger(L, st.os_handles);
  lua_setfield(L, -2, "os_handles");
  lua_pushinteger(L, (lua_Integer)st.read_buffers);
  lua_setfield(L, -2, "read_buffers");
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
  if (fd < 0) return np_push_status(L, &st);
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

static int l_buffer(lua_State *L) {
  loop_ud *lu = (loop_ud *)lua_touserdata(L, LOOP_UPV);
  return np_buffer_new(L, &lu->orphans);
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

/* layer.hand_over(fns [, tasks]): the Lua layer's waiting functions, by
 * method name (fns.read, fns.step, ...), each put in its slot of the
 * waiting table; a name that is not a slot's is refused, so a misspelt one
 * cannot go unnoticed. tasks: what methods.c needs to make a task wait
 * by itself (tasks.task_records, tasks.arm_deadline: binding.h), and a
 * waiting read on the main thread (tasks.main_step, tasks.cancel_main_read,
 * tasks.abandon_wait: main_waits.c). */
static const struct {
  const char *name;
  int slot;
} layer_parts[] = {{"task_records", W_TASKS},
                   {"arm_deadline", W_ARM_DEADLINE},
                   {"stopped_reads", W_STOPPED},
                   {"main_step", W_MAIN_STEP},
                   {"cancel_main_read", W_MAIN_CANCEL},
                   {"abandon_wait", W_ABANDON_WAIT},
                   {"write_rest", W_WRITE_REST},
                   {"framing_reads", W_FRAMING},
                   {NULL, 0}};

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
    if (!lua_isnil(L, -1) && lua_type(L, -1) != LUA_TFUNCTION)
      return luaL_error(L, "namedpipe.core: the waiting form of '%s' must be "
                           "a function, not %s",
                        waiting_names[w], luaL_typename(L, -1));
    lua_rawseti(L, WAITING_UPV, w);
  }
  /* what the waits made in C need (binding.h, W_TASKS ...) */
  if (lua_istable(L, 2)) {
    for (w = 0; layer_parts[w].name; w++) {
      lua_getfield(L, 2, layer_parts[w].name);
      lua_rawseti(L, WAITING_UPV, layer_parts[w].slot);
    }
    lua_pushliteral(L, "n");
    lua_rawseti(L, WAITING_UPV, W_KEY_N);
    lua_pushliteral(L, "ticket");
    lua_rawseti(L, WAITING_UPV, W_KEY_TICKET);
    lua_pushliteral(L, "wake");
    lua_rawseti(L, WAITING_UPV, W_KEY_WAKE);
  }
  return 0;
}

/* The private half of the module (core._attach): the C entry points
 * without divert, and what the Lua layer tells the core; the pipes' are
 * methods.c's (np_pipe_layer_funcs). */
static const luaL_Reg layer_funcs[] = {{"step", raw_step},
                                       {"looks", raw_looks},
                                       {"set_task_work", raw_set_task_work},
                                       {"make_room", raw_make_room},
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
  lua_createtable(L, 0, 20);
  for (i = 1; i <= N_UPVALUES; i++) lua_pushvalue(L, lua_upvalueindex(i));
  luaL_setfuncs(L, layer_funcs, N_UPVALUES);
  for (i = 1; i <= N_UPVALUES; i++) lua_pushvalue(L, lua_upvalueindex(i));
  luaL_setfuncs(L, np_pipe_layer_funcs, N_UPVALUES);
  lua_pushlightuserdata(L, (void *)&np_divert_marker);
  lua_setfield(L, -2, "divert_marker");
  lua_pushboolean(L, NP_C_CAN_YIELD);
  lua_setfield(L, -2, "c_can_yield");
  lua_pushboolean(L, NP_TASK_WAITS_IN_C);
  lua_setfield(L, -2, "task_waits_in_c");
  return 1;
}

/* With methods.c's create and open (np_pipe_module_funcs). */
static const luaL_Reg module_funcs[] = {{"step", l_step},
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
    luaL_setfuncs(L, np_pipe_meta, N_UPVALUES);
    lua_pop(L, 1);
    lua_createtable(L, 0, 24); /* the methods, and room for the Lua layer's */
    PUSH_UPVALUES(-5);
    luaL_setfuncs(L, np_pipe_methods, N_UPVALUES);
    lua_pushvalue(L, -1);
    lua_setfield(L, -4, "__index");
  }
  /* loop anchors mt waiting methods */
  lua_createtable(L, 0, 16);
  PUSH_UPVALUES(-6);
  luaL_setfuncs(L, module_funcs, N_UPVALUES);
  PUSH_UPVALUES(-6);
  luaL_setfuncs(L, np_pipe_module_funcs, N_UPVALUES);
  lua_insert(L, -2);
  lua_setfield(L, -2, "methods"); /* for the pure-Lua layer to extend */
#undef PUSH_UPVALUES
  lua_pushliteral(L, NP_VERSION);
  lua_setfield(L, -2, "_VERSION");
  return 1;
}
