/* main_waits.h - a waiting read on the main thread, made in C
 * (main_waits.c). */
#ifndef NP_MAIN_WAITS_H
#define NP_MAIN_WAITS_H

#include "binding.h"

NP_INTERNAL_BEGIN

/* read([n] [, timeout]) on the main thread, nothing of the pipe's held by
 * the Lua layer (u->readahead clear): its results, the loop stepped until
 * they came, or -1 when the usual way must take it. */
int np_main_read(lua_State *L, pipe_ud *u);

NP_INTERNAL_END

#endif
