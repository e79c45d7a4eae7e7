/*
 * main_waits.c - a waiting read (read, read_into, transact, readable) and
 * write on the main thread (a plain script, a REPL, a callback's own
 * waiting call), made from their C methods instead of through the Lua
 * layer. methods.c calls them first and takes the usual way when they
 * decline (-1).
 *
 * The Lua layer's waiting read (lua/namedpipe.lua: waiting.read, wait_end)
 * makes a table for the operation, a closure for its callback and a table
 * of its results, and runs a dozen Lua calls: more than the read itself
 * costs. Here the callback is one C closure whose upvalues take the
 * results, and the loop is stepped from C through the module's step, so
 * that tasks and timers run as with any step. The timeout is the Lua
 * layer's: at least one step, then at the deadline the read is cancelled
 * with TIMEOUT and the call still waits for its end (what came meanwhile
 * wins).
 *
 * An error raised inside a step (a callback's, a task's) unwinds the call
 * while the read is still the pipe's. The Lua layer then takes it over as
 * one of its own abandoned operations ("abandon_wait"): cancelled, and what
 * it gets goes to the next read of the same connection. From then on the
 * closure hands what comes to the function abandon_wait returned. Nothing
 * between the read's start and that take-over may raise outside a pcall,
 * or the read's bytes would end in a closure nobody asks: so nothing there
 * allocates (a collection could run a finalizer, whose error Lua 5.1 to
 * 5.3 raise), and a take-over that runs out of memory is made again by the
 * closure when the end comes.
 */
#include "lauxlib.h"
#include "lua.h"

#include "compat.h"

#include "binding.h"
#include "buffer.h"
#include "main_waits.h"
#include "np.h"
#include "task_waits.h"

/* The callback's upvalues: whether the read has ended; once an error has
 * unwound the call, where its end goes (FORWARD: the Lua layer's function
 * for the operation it took over) or, if the layer could not take it over
 * then (out of memory), who takes it when it comes (TAKER: abandon_wait,
 * with the pipe, its disconnect count at the start, the kind of read and a
 * read_into's buffer); how many results, and the results (a read's end is
 * data or a count, or nil, message, name, code). */
enum {
  MW_DONE = 1, MW_FORWARD, MW_TAKER, MW_PIPE, MW_START, MW_KIND, MW_BUF,
  MW_NRES, MW_RESULTS
};
#define MW_MAX_RESULTS 4
#define MW_NUPVALUES (MW_RESULTS + MW_MAX_RESULTS - 1)

static int main_wake(lua_State *L) {
  int n = lua_gettop(L), i;
  if (!lua_isnil(L, lua_upvalueindex(MW_FORWARD))) {
    lua_pushvalue(L, lua_upvalueindex(MW_FORWARD));
    lua_insert(L, 1);
    lua_call(L, n, 0);
    return 0;
  }
  if (!lua_isnil(L, lua_upvalueindex(MW_TAKER))) {
    /* taker(pipe, kind, buf, moved, true, results...) */
    pipe_ud *u = (pipe_ud *)lua_touserdata(L, lua_upvalueindex(MW_PIPE));
    lua_pushvalue(L, lua_upvalueindex(MW_TAKER));
    lua_insert(L, 1);
    lua_pushvalue(L, lua_upvalueindex(MW_PIPE));
    lua_insert(L, 2);
    lua_pushvalue(L, lua_upvalueindex(MW_KIND));
    lua_insert(L, 3);
    lua_pushvalue(L, lua_upvalueindex(MW_BUF));
    lua_insert(L, 4);
    lua_pushboolean(L, u->disconnects != (unsigned)lua_tointeger(
                                             L, lua_upvalueindex(MW_START)));
    lua_insert(L, 5);
    lua_pushboolean(L, 1);
    lua_insert(L, 6);
    lua_call(L, n + 5, 0);
    return 0;
  }
  if (n > MW_MAX_RESULTS) n = MW_MAX_RESULTS; /* (no end has more) */
  for (i = 1; i <= n; i++) {
    lua_pushvalue(L, i);
    lua_replace(L, lua_upvalueindex(MW_RESULTS + i - 1));
  }
  lua_pushinteger(L, n);
  lua_replace(L, lua_upvalueindex(MW_NRES));
  lua_pushboolean(L, 1);
  lua_replace(L, lua_upvalueindex(MW_DONE));
  return 0;
}

static int wake_done(lua_State *L, int wake) {
  int done;
  lua_getupvalue(L, wake, MW_DONE);
  done = lua_toboolean(L, -1);
  lua_pop(L, 1);
  return done;
}

/* The results the callback took, pushed; their number. */
static int push_results(lua_State *L, int wake) {
  int n, i;
  lua_getupvalue(L, wake, MW_NRES);
  n = (int)lua_tointeger(L, -1);
  lua_pop(L, 1);
  for (i = 0; i < n; i++) lua_getupvalue(L, wake, MW_RESULTS + i);
  return n;
}

/* Called on the main thread (never a task's, nor a coroutine's)? */
static int on_main_thread(lua_State *L) {
  int on_main = lua_pushthread(L);
  lua_pop(L, 1);
  return on_main;
}

/* May the read of the pipe at index 1 be waited for here? The Lua layer
 * is there to take it over (namedpipe.core alone has no waiting form),
 * and holds no mark of a read_start stopped from elsewhere for the pipe
 * (its own waiting read settles that first). */
static int layer_allows(lua_State *L) {
  int ok;
  lua_rawgeti(L, WAITING_UPV, W_ABANDON_WAIT);
  ok = lua_type(L, -1) == LUA_TFUNCTION;
  lua_pop(L, 1);
  if (!ok) return 0;
  lua_rawgeti(L, WAITING_UPV, W_STOPPED);
  if (lua_type(L, -1) == LUA_TTABLE) {
    lua_pushvalue(L, 1);
    lua_rawget(L, -2);
    ok = lua_isnil(L, -1);
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  return ok;
}

/* The cancel of the read waited for, as the Lua layer's waits make theirs
 * (what: the name its kind is cancelled by, "read", "transact" or
 * "readable"; np._watch_cancels is told of it): through the layer's
 * cancel_main_read, given the kind as a number and the disconnect count
 * at the wait's start (nothing here allocates), protected; the cancel is
 * made only while this wait still holds the read slot (raw.cancel_held).
 * 0 if that raised. */
static int cancel_read(lua_State *L, int wake, int timed_out, unsigned start) {
  lua_rawgeti(L, WAITING_UPV, W_MAIN_CANCEL);
  lua_pushvalue(L, 1);
  lua_pushboolean(L, timed_out);
  lua_getupvalue(L, wake, MW_KIND);
  lua_pushinteger(L, (lua_Integer)start);
  if (lua_pcall(L, 4, 0, 0) == LUA_OK) return 1;
  return 0;
}

/* The wait's hold of the read slot ends (read_held). Unless the instance
 * was disconnected since the wait began (start: its disconnect count
 * then): that ended it, and a hold set since is a wait's of the next
 * client's. (No other wait of this connection's can have held it.) */
static void release_hold(pipe_ud *u, unsigned start) {
  if (u->disconnects == start) u->read_held = 0;
}

/* abandon_wait's call (below) pushed, with the read's end if done; its
 * argument count. */
static int push_abandon_wait(lua_State *L, pipe_ud *u, int wake,
                             unsigned start, int done) {
  lua_rawgeti(L, WAITING_UPV, W_ABANDON_WAIT);
  lua_pushvalue(L, 1);
  lua_getupvalue(L, wake, MW_KIND);
  lua_getupvalue(L, wake, MW_BUF);
  lua_pushboolean(L, u->disconnects != start);
  lua_pushboolean(L, done);
  return done ? 5 + push_results(L, wake) : 5;
}

/* The error on top unwinds the call. The Lua layer takes the read over:
 * abandon_wait(pipe, kind, buf, moved, done, results...), moved if the instance was
 * disconnected since the read began (what it gets is not the next
 * reader's); should that fail (out of memory, or a finalizer's error on
 * Lua 5.1 to 5.3), the callback calls it with the end when that comes.
 * Then the read is cancelled unless it has ended, as the layer abandons
 * one of its own (by the backend itself, should the method fail), and the
 * error goes on. From the read's start to here nothing raises outside a
 * pcall: nothing allocates, so no collection runs a finalizer either.
 *
 * A step nested in the Lua calls made here (a call hook's, a finalizer's)
 * may end the read. Its end then finds the callback as before the unwind
 * (no FORWARD, no TAKER) and is kept in its upvalues: handed to the
 * function abandon_wait returned (or to the taker) once that call is
 * over, and the cancel is not made. (Handed to the taker while
 * abandon_wait was still recording the operation, it left that record
 * pending for ever: the pipe's reads waited for it.) The hold of the read
 * slot stays until after the cancel: a read that such a step started
 * would otherwise be the one cancelled. A disconnect() in such a step
 * lets the hold go (the read ends NOT_CONNECTED): a read started after it
 * is the next client's, and raw.cancel_held then makes no cancel. */
static void unwound(lua_State *L, pipe_ud *u, int wake, unsigned start) {
  int err = lua_gettop(L), done = wake_done(L, wake), taken = 0, nargs;
  lua_pushvalue(L, 1);
  lua_setupvalue(L, wake, MW_PIPE);
  lua_pushinteger(L, (lua_Integer)start);
  lua_setupvalue(L, wake, MW_START);
  nargs = push_abandon_wait(L, u, wake, start, done);
  if (lua_pcall(L, nargs, 1, 0) == LUA_OK) {
    taken = 1;
    if (!lua_isnil(L, -1)) {
      lua_pushvalue(L, -1);
      lua_setupvalue(L, wake, MW_FORWARD);
    }
  } else {
    lua_rawgeti(L, WAITING_UPV, W_ABANDON_WAIT);
    lua_setupvalue(L, wake, MW_TAKER);
  }
  if (!done && wake_done(L, wake)) {
    /* it ended meanwhile: its end goes where it would go now */
    if (taken) {
      lua_pushvalue(L, err + 1); /* forward */
      (void)lua_pcall(L, push_results(L, wake), 0, 0);
    } else {
      (void)lua_pcall(L, push_abandon_wait(L, u, wake, start, 1), 0, 0);
    }
    done = 1;
  }
  lua_settop(L, err);
  if (!done && !cancel_read(L, wake, 0, start) && u->p)
    np_pipe_cancel_read(u, NP_CANCELLED);
  release_hold(u, start);
  lua_settop(L, err);
  lua_error(L);
}

/* The longest step a waiting call makes before it looks at its operation
 * again (lua/namedpipe.lua has the same, WAIT_SLICE). */
#define WAIT_SLICE_MS 100

/* One step of the loop, protected: an error unwinds the call (above). */
static void step_or_unwind(lua_State *L, lua_Number ms, pipe_ud *u, int wake,
                           unsigned start) {
  lua_rawgeti(L, WAITING_UPV, W_MAIN_STEP);
  lua_pushnumber(L, ms);
  if (lua_pcall(L, 1, 0, 0) != LUA_OK) unwound(L, u, wake, start);
}

void np_wait_start(lua_State *L, pipe_ud *u, int kind, int cb, size_t n) {
  int ref_cb = anchor_operation(L, u, cb), ref_data;
  if (kind == NP_WAIT_READ) {
    np_read_start(u->p, n, NULL, ref_cb, NP_NOREF);
    return;
  }
  if (kind == NP_WAIT_READABLE) {
    np_readable_start(u->p, ref_cb);
    return;
  }
  lua_pushvalue(L, 2);
  ref_data = anchor(L, u->lu, ANCHORS_UPV); /* room left by anchor_operation */
  if (kind == NP_WAIT_READ_INTO) {
    np_buffer *b = (np_buffer *)lua_touserdata(L, 2);
    b->busy = 1;
    np_read_start(u->p, b->size, b->bytes, ref_cb, ref_data);
  } else {
    size_t len;
    const char *data = lua_tolstring(L, 2, &len);
    np_transact_start(u->p, data, len, ref_cb, ref_data);
  }
}

int np_wait_args(lua_State *L, pipe_ud *u, int kind, size_t *n) {
  int top = lua_gettop(L);
  np_buffer *b;
  *n = 0;
  switch (kind) {
  case NP_WAIT_READ:
    if (top > 3) return 0;
    if (top >= 2 && !lua_isnil(L, 2)) {
      lua_Integer count;
      if (!lua_isinteger(L, 2) || (count = lua_tointeger(L, 2)) < 1) return 0;
      *n = (size_t)count;
    }
    return 3;
  case NP_WAIT_READ_INTO:
    b = np_buffer_to(L, 2);
    return top <= 3 && b && b->bytes && !b->busy ? 3 : 0;
  case NP_WAIT_TRANSACT:
    return top <= 3 && lua_type(L, 2) == LUA_TSTRING &&
                   np_pipe_read_mode(u->p) == NP_MODE_MESSAGE
               ? 3
               : 0;
  case NP_WAIT_READABLE:
    return top <= 2 ? 2 : 0;
  default:
    return 0;
  }
}

/* The wait itself, for a read whose arguments the caller has checked (the
 * timeout at t_arg): -1 when it must be the usual way's (a timeout of
 * another form, a read pending, not the main thread, no Lua layer to take
 * it over). The read slot stays taken until the wait returns (read_held:
 * set once the read has started, and cleared on each way out, unwound's
 * included: nothing between can fail to clear it). Once the read has
 * ended, the rest of that step runs other callbacks: a read one of them
 * started would take the bytes that follow, and should the step then
 * raise, the bytes this read got would be handed over behind them. */
static int main_wait(lua_State *L, pipe_ud *u, int kind, size_t n,
                     int t_arg) {
  int has_t, wake, i, stepped = 0;
  lua_Number ms = 0, deadline = 0;
  unsigned disconnects = u->disconnects;
  if (!np_plain_timeout(L, t_arg, &ms, &has_t) || read_busy(u) ||
      !on_main_thread(L) || !layer_allows(L))
    return -1;
  for (i = 0; i < MW_NUPVALUES; i++) {
    if (i + 1 == MW_KIND)
      lua_pushinteger(L, kind);
    else if (i + 1 == MW_BUF && kind == NP_WAIT_READ_INTO)
      lua_pushvalue(L, 2);
    else
      lua_pushnil(L);
  }
  lua_pushcclosure(L, main_wake, MW_NUPVALUES);
  wake = lua_gettop(L);
  np_wait_start(L, u, kind, wake, n);
  u->read_held = 1;
  /* The Lua layer's wait_for, step for step: at least one step before the
   * deadline's cancel (a poll, timeout 0, gets what is there already), a
   * cancel with TIMEOUT at the deadline, then steps until the end comes
   * (what came meanwhile wins); the same step lengths: at most
   * WAIT_SLICE_MS each, so that a step nested in the call of one (a call
   * hook's, a finalizer's) that took this read's end first costs no more
   * than a slice. */
  if (has_t) deadline = np_now_ms() + ms;
  while (!wake_done(L, wake)) {
    if (has_t) {
      lua_Number left = deadline - np_now_ms();
      if (left <= 0 && stepped) {
        if (!cancel_read(L, wake, 1, disconnects))
          unwound(L, u, wake, disconnects);
        has_t = 0;
        continue;
      }
      stepped = 1;
      step_or_unwind(L, left > WAIT_SLICE_MS ? WAIT_SLICE_MS : left > 0 ? left : 0,
                     u, wake, disconnects);
    } else {
      step_or_unwind(L, WAIT_SLICE_MS, u, wake, disconnects);
    }
  }
  release_hold(u, disconnects);
  return push_results(L, wake);
}

int np_main_wait(lua_State *L, pipe_ud *u, int kind) {
  size_t n;
  int t_arg = np_wait_args(L, u, kind, &n);
  if (!t_arg) return -1;
  return main_wait(L, u, kind, n, t_arg);
}

#if NP_C_CAN_YIELD
/* A waiting write on the main thread (a plain script, a callback) that the
 * system takes at once (Linux, a socket with room): what the Lua layer's
 * waiting.write does with layer.write_now, unbudgeted, done here without
 * the call into it, which costs more than the write. Taken whole: its
 * count. A part taken (a byte pipe): the rest, started at once
 * (np_write_now_or_rest), is waited for by the Lua layer's write_rest,
 * whose count includes the part. -1 (nothing done) for anything else: a
 * task or a coroutine, an argument the usual way refuses, no Lua layer
 * (namedpipe.core alone has no waiting form), Windows (every write
 * completes through the port). */
int np_main_write(lua_State *L, pipe_ud *u) {
  int top = lua_gettop(L), has_t;
  lua_Number ms;
  size_t len, sent;
  const char *data;
  if (top < 2 || top > 3 || !u || lua_type(L, 2) != LUA_TSTRING ||
      !np_plain_timeout(L, 3, &ms, &has_t) || !on_main_thread(L) ||
      !push_waiting(L, W_WRITE_REST))
    return -1;
  lua_pop(L, 1);
  data = lua_tolstring(L, 2, &len);
  switch (np_write_now_or_rest(L, u, 2, data, len, &sent, 0)) {
    case 0:
      return -1;
    case 1:
      lua_pushinteger(L, (lua_Integer)sent);
      return 1;
  }
  push_waiting(L, W_WRITE_REST); /* write_rest(pipe, sent, timeout) */
  lua_pushvalue(L, 1);
  lua_pushinteger(L, (lua_Integer)sent);
  if (top >= 3) lua_pushvalue(L, 3); else lua_pushnil(L);
  lua_call(L, 3, LUA_MULTRET);
  return lua_gettop(L) - top;
}
#endif
