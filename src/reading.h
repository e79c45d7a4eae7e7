/* reading.h - read_start's reads after the first (reading.c). */
#ifndef NP_READING_H
#define NP_READING_H

#include "binding.h"

NP_INTERNAL_BEGIN

/* step_loop hands out a read of u's read_start (c: its completion, status
 * ok, not stopped): its callback is to run, the next read starts once it
 * is done (np_reading_done). The anchor of the callback is kept and the
 * completion stays counted in u->inflight meanwhile. Returns the run's
 * serial, for np_reading_done. */
unsigned long np_reading_running(loop_ud *lu, pipe_ud *u);

/* The callback of the run `serial` returned: the next read starts (unless
 * the callback stopped the reading or closed the pipe). u must be alive:
 * step_loop keeps the userdata on its stack through the call. t: the
 * anchor table's index. */
void np_reading_done(lua_State *L, loop_ud *lu, pipe_ud *u,
                     unsigned long serial, int t);

/* At the start of a step: the runs whose callback raised (it is no longer
 * on the stack) are done; those of a callback that steps from inside
 * itself still run. */
void np_reading_rescue(lua_State *L, loop_ud *lu, int t);

/* read_stop(). */
void np_reading_stop(pipe_ud *u);

NP_INTERNAL_END

#endif
