/*
 * main_waits.c - a waiting read on the main thread (a plain script, a
 * REPL, a callback's own waiting read), made from its C method instead of
 * through the Lua layer. methods.c calls it first and takes the usual way
 * when it declines (-1).
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
 * closure hands what comes to the function abandon_wait returned.
 */
#include "lauxlib.h"
#include "lua.h"

#include "compat.h"

#include "binding.h"
#include "main_waits.h"
#include "np.h"

/* The callback's upvalues: whether the read has ended, where to hand its
 * end once the Lua layer has taken it over, how many results, and the
 * results (a read's end is data, or nil, message, name, code). */
enum { MW_DONE = 1, MW_FORWARD, MW_NRES, MW_RESULTS };
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

/* The waiting table's function in slot w may take this call: the Lua layer
 * is there (namedpipe.core alone has no waiting form), and holds no mark
 * of a read_start stopped from elsewhere for the pipe at index 1 (its
 * waiting read settles that first). */
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

/* The error on top unwinds the call: the Lua layer takes the read over
 * (abandon_wait(pipe, kind, moved, done, results...): moved, the instance
 * was disconnected since the read began, so what it gets is not the next
 * reader's), and the error goes on. */
static void unwound(lua_State *L, pipe_ud *u, int wake, unsigned disconnects) {
  int err = lua_gettop(L), n = 0, done = wake_done(L, wake);
  lua_rawgeti(L, WAITING_UPV, W_ABANDON_WAIT);
  lua_pushvalue(L, 1);
  lua_pushliteral(L, "read");
  lua_pushboolean(L, u->disconnects != disconnects);
  lua_pushboolean(L, done);
  if (done) n = push_results(L, wake);
  lua_call(L, 4 + n, 1);
  if (lua_isnil(L, -1))
    lua_pop(L, 1);
  else
    lua_setupvalue(L, wake, MW_FORWARD);
  lua_settop(L, err);
  lua_error(L);
}

/* One protected call of fn (already pushed below its nargs arguments);
 * an error unwinds the call (above). */
static void call_or_unwind(lua_State *L, int nargs, pipe_ud *u, int wake,
                           unsigned disconnects) {
  if (lua_pcall(L, nargs, 0, 0) != LUA_OK) unwound(L, u, wake, disconnects);
}

int np_main_read(lua_State *L, pipe_ud *u) {
  int top = lua_gettop(L), has_t, wake, i, on_main, stepped = 0, timed_out = 0;
  lua_Number ms = 0, deadline = 0;
  lua_Integer n = 0;
  unsigned disconnects = u->disconnects;
  if (top > 3) return -1;
  if (top >= 2 && !lua_isnil(L, 2)) {
    if (!lua_isinteger(L, 2) || (n = lua_tointeger(L, 2)) < 1) return -1;
  }
  if (!np_plain_timeout(L, 3, &ms, &has_t) || read_busy(u)) return -1;
  on_main = lua_pushthread(L);
  lua_pop(L, 1);
  if (!on_main || !layer_allows(L)) return -1;
  for (i = 0; i < MW_NUPVALUES; i++) lua_pushnil(L);
  lua_pushcclosure(L, main_wake, MW_NUPVALUES);
  wake = lua_gettop(L);
  np_read_start(u->p, (size_t)n, NULL, anchor_operation(L, u, wake),
                NP_NOREF);
  if (has_t) deadline = np_now_ms() + ms;
  while (!wake_done(L, wake)) {
    lua_Number step_ms;
    if (has_t) {
      lua_Number left = deadline - np_now_ms();
      if (left <= 0 && stepped) {
        /* (as the Lua layer's cancel_for_timeout: pipe:cancel, which
         * also ends what the layer may hold by then) */
        if (u->p) {
          lua_getfield(L, 1, "cancel");
          lua_pushvalue(L, 1);
          lua_pushliteral(L, "read");
          lua_pushliteral(L, "TIMEOUT");
          call_or_unwind(L, 3, u, wake, disconnects);
        }
        has_t = 0;
        timed_out = 1;
        continue;
      }
      step_ms = left > 0 ? left : 0;
      stepped = 1;
    } else {
      step_ms = timed_out ? 100 : 1000;
    }
    lua_rawgeti(L, WAITING_UPV, W_MAIN_STEP);
    lua_pushnumber(L, step_ms);
    call_or_unwind(L, 1, u, wake, disconnects);
  }
  return push_results(L, wake);
}
