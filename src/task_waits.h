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
/* A waiting write of the string at data_arg (data, len; the pipe u at
 * index 1) tried at once, as np_write_now_budget: 0 when nothing was done
 * (the write goes the usual way), 1 when the system took it whole, 2 when
 * it took a part (a byte pipe; *written bytes): the rest is then started
 * at once (np_write_rest_now, task_waits.c), as a write of its own with no
 * callback yet, which np_write_attach_top gives it once the caller has
 * made its wait. Inline: a write taken whole, the usual case, is the hot
 * path of a task's or a plain script's writes. */
int np_write_rest_now(lua_State *L, pipe_ud *u, int data_arg,
                      const char *data, size_t len, size_t written);
static inline int np_write_now_or_rest(lua_State *L, pipe_ud *u,
                                       int data_arg, const char *data,
                                       size_t len, size_t *written,
                                       int budgeted) {
  /* the rest's: its bytes' anchor and the pipe's; one left for its
   * callback (np_write_attach_top) */
  reserve_anchors(L, u->lu, 3);
  if (!np_write_now_budget(u->lu, u->p, data, len, written, budgeted))
    return 0;
  if (*written == len) return 1;
  return np_write_rest_now(L, u, data_arg, data, len, *written);
}
/* The function on top of the stack (popped) becomes the callback of that
 * rest: anchored, and given to the backend: 1. May raise (out of memory)
 * before that; the rest then goes on with no callback. 0 when the rest has
 * ended already (a step nested in the caller's wait-making, from a hook or
 * a finalizer, handed it out): then np_push_rest_end pushes what the call
 * returns, sent included, as a write's callback would have had it. */
int np_write_attach_top(lua_State *L, pipe_ud *u);
int np_push_rest_end(lua_State *L, pipe_ud *u, size_t sent);
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
