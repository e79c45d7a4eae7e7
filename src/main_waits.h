/* main_waits.h - a waiting read and write on the main thread, made in C
 * (main_waits.c). */
#ifndef NP_MAIN_WAITS_H
#define NP_MAIN_WAITS_H

#include "binding.h"

NP_INTERNAL_BEGIN

/* read([n] [, timeout]) on the main thread, nothing of the pipe's held by
 * the Lua layer (u->readahead clear): its results, the loop stepped until
 * they came, or -1 when the usual way must take it. */
int np_main_read(lua_State *L, pipe_ud *u);

#if NP_C_CAN_YIELD
/* write(data [, timeout]) on the main thread that the system takes at
 * once: its count, or -1 when the usual way must take it (u: the open
 * pipe at index 1, or NULL). */
int np_main_write(lua_State *L, pipe_ud *u);
#endif

NP_INTERNAL_END

#endif
