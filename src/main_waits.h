/* main_waits.h - a waiting read (read, read_into, transact, readable) and
 * write on the main thread, made in C (main_waits.c). */
#ifndef NP_MAIN_WAITS_H
#define NP_MAIN_WAITS_H

#include "binding.h"

NP_INTERNAL_BEGIN

/* The reads waited for in C, on the main thread (here) and in a task
 * (task_waits.c), by kind: the numbers abandon_wait and cancel_main_read
 * (lua/namedpipe.lua) know them by. */
enum {
  NP_WAIT_READ = 0,      /* read([n]) */
  NP_WAIT_READ_INTO = 1, /* read_into(buf): a buffer not being filled */
  NP_WAIT_TRANSACT = 2,  /* transact(request): a string, on a pipe that
                          * reads messages */
  NP_WAIT_READABLE = 3   /* readable() */
};
/* Are the arguments at 2 the plain case of that kind of read? The index of
 * the timeout after them, or 0 for anything else; *n: a read's count (0:
 * any). */
int np_wait_args(lua_State *L, pipe_ud *u, int kind, size_t *n);
/* Start the read of its kind with the callback at index cb (read: n bytes
 * at most, 0 for any; the others take their argument from index 2). */
void np_wait_start(lua_State *L, pipe_ud *u, int kind, int cb, size_t n);
/* That read ([timeout]) on the main thread: its results, the loop stepped
 * until they came, or -1 when the usual way must take it. The caller
 * checks that the Lua layer holds nothing of the pipe's (u->readahead
 * clear), but for a framing read's first read, which the layer makes
 * itself (layer.held_read). It holds the read slot until it returns
 * (u->read_held). */
int np_main_wait(lua_State *L, pipe_ud *u, int kind);

#if NP_C_CAN_YIELD
/* write(data [, timeout]) on the main thread that the system takes at
 * once: its count, or -1 when the usual way must take it (u: the open
 * pipe at index 1, or NULL). */
int np_main_write(lua_State *L, pipe_ud *u);
#endif

NP_INTERNAL_END

#endif
