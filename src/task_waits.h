/* task_waits.h - a task's waits made in C (task_waits.c). */
#ifndef NP_TASK_WAITS_H
#define NP_TASK_WAITS_H

#include "binding.h"

NP_INTERNAL_BEGIN

/* Write data whole at once, with no completion to follow (np_write_now):
 * for a task (budgeted) within the budget of NP_WRITES_NOW in a row, for
 * a waiting write outside a task without it. 1 with *written, 0 when the
 * write must go the usual way. */
int np_write_now_budget(loop_ud *lu, np_pipe *p, const char *data,
                        size_t len, size_t *written, int budgeted);
/* A waiting write of the string at data_arg (the pipe u at index 1) tried
 * at once, as np_write_now_budget: 0 when nothing was done (the write goes
 * the usual way), 1 when the system took it whole, 2 when it took a part
 * (a byte pipe; *written bytes): the rest is then started at once, as a
 * write of its own with no callback yet, which np_write_attach_top gives
 * it once the caller has made its wait. */
int np_write_now_or_rest(lua_State *L, pipe_ud *u, int data_arg,
                         size_t *written, int budgeted);
/* The function on top of the stack (popped) becomes the callback of that
 * rest: anchored, and given to the backend. May raise (out of memory)
 * before that; the rest then goes on with no callback. */
void np_write_attach_top(lua_State *L, pipe_ud *u);
/* np_write_start for a write its caller waits for (a task's, budgeted, or
 * one outside a task): *done as np_write_start's, asked for where the
 * backend does such a write at once that way, within the same budget. */
int np_write_start_waited(loop_ud *lu, np_pipe *p, const char *data,
                          size_t len, int ref_cb, int *keeps, int *done,
                          int budgeted);

#if NP_TASK_WAITS_IN_C
/* The method's call made here, in the running task: its results (the
 * task suspended until they came), or -1 when the usual way must take
 * it (u: the open pipe at index 1, or NULL for write). kind: one of
 * main_waits.h's reads. */
int np_task_wait(lua_State *L, pipe_ud *u, int kind);
int np_task_write(lua_State *L, pipe_ud *u);
#endif

NP_INTERNAL_END

#endif
