/*
 * reading.c - read_start: a callback that is given read after read, with
 * no call from Lua to re-arm it (luv's read_start).
 *
 * The reads are the pipe's ordinary reads, started again in C with the
 * same callback and its anchor. The next one starts only once the
 * callback of the last has returned, never before it runs: a read_stop in
 * the callback then leaves nothing pending (its read() or read_line()
 * follows at once, and no byte is taken off the pipe meanwhile), and a
 * callback that steps the loop from inside itself (a waiting write, say)
 * is not given the next read in the middle of this one, so a burst of
 * messages never nests callbacks, deeper and deeper.
 *
 * step_loop knows when the callback returns. When it raises, nobody is
 * told: the run stays in the loop's list of runs, and the next step finds
 * it there with its callback no longer on the stack, and finishes it: the
 * reading goes on (the error has come out of the step). Until then the
 * completion stays counted in the pipe's inflight, so the userdata stays
 * anchored, and step_loop keeps a reference to it on its own stack
 * through the call, so a run that a step finished early (below) cannot
 * leave it to be collected under the caller.
 */
#include "lauxlib.h"
#include "lua.h"

#include "binding.h"
#include "np.h"
#include "reading.h"

static void list_add(loop_ud *lu, pipe_ud *u) {
  u->running_prev = NULL;
  u->running_next = lu->running_head;
  if (lu->running_head) lu->running_head->running_prev = u;
  lu->running_head = u;
}

static void list_remove(loop_ud *lu, pipe_ud *u) {
  if (u->running_prev)
    u->running_prev->running_next = u->running_next;
  else
    lu->running_head = u->running_next;
  if (u->running_next) u->running_next->running_prev = u->running_prev;
  u->running_prev = u->running_next = NULL;
}

unsigned long np_reading_running(loop_ud *lu, pipe_ud *u) {
  u->running_ref = u->read_cb;
  u->running_serial = ++lu->reading_serial;
  if (u->running_serial == 0) u->running_serial = ++lu->reading_serial;
  list_add(lu, u);
  return u->running_serial;
}

static void finish(lua_State *L, loop_ud *lu, pipe_ud *u, int t) {
  int ref = u->running_ref;
  list_remove(lu, u);
  u->running_serial = 0;
  u->running_ref = LUA_NOREF;
  if (u->read_cb == ref && u->p) { /* still reading: the next read */
    np_read_start(u->p, 0, NULL, ref, NP_NOREF);
    return; /* (it is the completion counted in inflight now) */
  }
  /* stopped (read_cb went, or is a new read_start's) or closed */
  if (u->read_cb == ref) u->read_cb = LUA_NOREF;
  release(L, lu, t, ref);
  if (--u->inflight == 0 && lu->held != u) {
    release(L, lu, t, u->self_ref);
    u->self_ref = LUA_NOREF;
  }
}

void np_reading_done(lua_State *L, loop_ud *lu, pipe_ud *u,
                     unsigned long serial, int t) {
  if (u->running_serial == serial) finish(L, lu, u, t);
}

/* Is the function anchored at ref running on L's stack? */
static int on_stack(lua_State *L, int ref, int t) {
  lua_Debug ar;
  int level, found = 0;
  lua_rawgeti(L, t, ref);
  for (level = 0; !found && lua_getstack(L, level, &ar); level++) {
    lua_getinfo(L, "f", &ar);
    found = lua_rawequal(L, -1, -2);
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  return found;
}

void np_reading_rescue(lua_State *L, loop_ud *lu, int t) {
  pipe_ud *u = lu->running_head, *next;
  for (; u; u = next) {
    next = u->running_next;
    if (!on_stack(L, u->running_ref, t)) finish(L, lu, u, t);
  }
}

void np_reading_stop(pipe_ud *u) {
  if (u->read_cb == LUA_NOREF) return;
  if (u->read_cb == u->running_ref) {
    u->read_cb = LUA_NOREF; /* from its callback: nothing is pending */
  } else if (!u->read_stopping) {
    u->read_stopping = 1; /* its pending read ends, calling nothing */
    if (u->p) np_cancel(u->p, NP_OP_READ, NP_CANCELLED);
  }
}
