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
