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
 * "Once the callback has returned" includes its raising: step_loop calls
 * a run's callback with lua_pcall, finishes the run, and raises the error
 * again. (Nothing else can tell that a callback's frame is gone: a tail
 * call replaces it, and a step made from a coroutine the callback resumed
 * runs on another stack.) The error's traceback is then the step's, not
 * the callback's; its message keeps the position where it was raised.
 *
 * While its callback runs, the run holds the callback's anchor (the
 * caller keeps it, step_loop) and one count in u->inflight, which keeps
 * the userdata anchored, so the userdata is alive when the run is done.
 * u->run_open tells that a run of the current read_start is open (no read
 * of it pending): read_stop then only forgets it.
 *
 * A read_stop from elsewhere cancels the pending read; until a step has
 * dispatched that read's end, the slot is still taken. A read_start in
 * that time takes the reading over instead of being refused (methods.c):
 * its callback goes into the same anchor, so the read's data, should it
 * win, is the new callback's, and the cancel's end only starts the next
 * read (u->read_restart, step_loop).
 */
#include "lauxlib.h"
#include "lua.h"

#include "binding.h"
#include "np.h"
#include "reading.h"

void np_reading_running(pipe_ud *u) { u->run_open = 1; }

void np_reading_done(lua_State *L, loop_ud *lu, pipe_ud *u, int ref, int t) {
  if (u->read_cb == ref && u->run_open) { /* still reading */
    u->run_open = 0;
    if (u->p) {
      np_read_start(u->p, 0, NULL, ref, NP_NOREF);
      return; /* (it is the completion counted in inflight now) */
    }
    u->read_cb = LUA_NOREF; /* closed by its callback */
  }
  /* stopped (read_cb went, or is a new read_start's) or closed */
  release(L, lu, t, ref);
  unpin_pipe(L, u, t);
}

void np_reading_cancel(pipe_ud *u) {
  if (u->read_cb == LUA_NOREF) return;
  if (u->run_open)
    np_reading_stop(u); /* from its callback: as read_stop */
  else
    u->read_ending = 1; /* its pending read's end is the last call */
}

void np_reading_stop(pipe_ud *u) {
  if (u->read_cb == LUA_NOREF) return;
  if (u->run_open) {
    u->run_open = 0; /* from its callback: nothing is pending */
    u->read_cb = LUA_NOREF;
  } else if (!u->read_stopping) {
    u->read_stopping = 1; /* its pending read ends, calling nothing */
    if (u->p) np_cancel(u->p, NP_OP_READ, NP_CANCELLED);
  }
}
