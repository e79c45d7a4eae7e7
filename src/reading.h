/* reading.h - read_start's reads after the first (reading.c). */
#ifndef NP_READING_H
#define NP_READING_H

#include "binding.h"

NP_INTERNAL_BEGIN

/* step_loop hands out a read of u's read_start (status ok, not stopped):
 * its callback runs now, and the next read starts once it has returned
 * (np_reading_done, with the callback's anchor `ref`). The anchor stays
 * held and the completion stays counted in u->inflight meanwhile. */
void np_reading_running(pipe_ud *u);

/* The callback of the run whose anchor is `ref` has returned (or raised):
 * the next read starts, unless the reading was stopped (read_stop, a
 * cancel, a new read_start after a stop) or the pipe closed meanwhile.
 * t: the anchor table's index. */
void np_reading_done(lua_State *L, loop_ud *lu, pipe_ud *u, int ref, int t);

/* read_stop(); also disconnect() from the callback. */
void np_reading_stop(pipe_ud *u);

/* cancel("read"): from the callback, as read_stop; elsewhere the end of
 * its pending read (CANCELLED, or data that came first) is the last call,
 * before the cancel reaches the backend. */
void np_reading_cancel(pipe_ud *u);

NP_INTERNAL_END

#endif
