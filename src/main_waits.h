/* main_waits.h - a waiting read (read, read_into, transact, readable) and
 * write on the main thread, made in C (main_waits.c). */
#ifndef NP_MAIN_WAITS_H
#define NP_MAIN_WAITS_H

#include "binding.h"

NP_INTERNAL_BEGIN

/* read([n] [, timeout]) on the main thread, nothing of the pipe's held by
 * the Lua layer (u->readahead clear): its results, the loop stepped until
 * they came, or -1 when the usual way must take it. */
int np_main_read(lua_State *L, pipe_ud *u);

/* The other reads waited for in C, here and in a task (task_waits.c), by
 * kind: the numbers abandon_wait and cancel_main_read (lua/namedpipe.lua)
 * know them by. */
enum {
  NP_WAIT_READ = 0,      /* read([n]) */
  NP_WAIT_READ_INTO = 1, /* read_into(buf): a buffer not being filled */
  NP_WAIT_TRANSACT = 2,  /* transact(request): a string, on a pipe that
                          * reads messages */
  NP_WAIT_READABLE = 3   /* readable() */
};
/* The arguments at 2 (and the timeout after them) are the plain case of
 * that kind of read (NP_WAIT_READ's are checked by its callers). */
int np_wait_args(lua_State *L, pipe_ud *u, int kind);
/* Start the read of its kind with the callback at index cb (read: n bytes
 * at most, 0 for any; the others take their argument from index 2). */
void np_wait_start(lua_State *L, pipe_ud *u, int kind, int cb, size_t n);
/* read_into, transact or readable ([timeout]) on the main thread, as
 * np_main_read. */
int np_main_wait(lua_State *L, pipe_ud *u, int kind);

#if NP_C_CAN_YIELD
/* write(data [, timeout]) on the main thread that the system takes at
 * once: its count, or -1 when the usual way must take it (u: the open
 * pipe at index 1, or NULL). */
int np_main_write(lua_State *L, pipe_ud *u);
#endif

NP_INTERNAL_END

#endif
