/* buffer.h - namedpipe.buffer, the memory pipe:read_into fills (buffer.c). */
#ifndef NP_BUFFER_H
#define NP_BUFFER_H

#include <stddef.h>

#include "lua.h"
#include "np.h"

NP_INTERNAL_BEGIN

/* Buffers collected while a read_into still fills them (only possible at
 * lua_close, when every object is finalized, the anchored ones too): their
 * bytes are kept here until the loop is closed, as the kernel may still
 * write them (Windows). One per loop, in the loop userdata. */
typedef struct np_orphans {
  char *head;      /* blocks linked through their header */
  int loop_closed; /* np_orphans_close ran */
  int may_free;    /* ... and the kernel gave every operation back */
} np_orphans;

typedef struct np_buffer {
  const char *tag; /* what np_buffer_to recognises */
  char *bytes;     /* size bytes on the C heap, after a header (buffer.c) */
  size_t size;
  int busy;        /* a read_into fills it, until its completion is dispatched */
  np_orphans *orphans;
} np_buffer;

/* np.buffer(size): a new buffer of size zeroed bytes, on the stack. */
int np_buffer_new(lua_State *L, np_orphans *orphans);
/* The buffer at arg, or NULL if that is not one. */
np_buffer *np_buffer_to(lua_State *L, int arg);
/* The buffer at arg, or an argument error; with not_busy, also an error
 * if a read_into is filling it. */
np_buffer *np_buffer_check(lua_State *L, int arg, int not_busy);
/* The loop is closed: free the orphans' bytes if may_free (the kernel gave
 * everything back), else leave them allocated for good. */
void np_orphans_close(np_orphans *o, int may_free);

NP_INTERNAL_END

#endif
