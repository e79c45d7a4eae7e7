/* common.h - what both backends' blocks keep alike (src/win/win.h and
 * src/unix/unix.h put these fields in their struct np_pipe and struct
 * np_loop), and what common.c, written once for both, does with them. */
#ifndef NP_COMMON_H
#define NP_COMMON_H

#include "np.h"

/* In every backend's struct np_pipe, under these names. */
#define NP_PIPE_COMMON_FIELDS                                          \
  np_loop *loop;                                                       \
  struct np_pipe *prev, *next; /* the loop's blocks, until freed */    \
  void *user;                  /* np_pipe_set_user's */                \
  char *name;                  /* stored after the block */            \
  int is_server;                                                       \
  np_state state;

/* In every backend's struct np_loop. */
#define NP_LOOP_COMMON_FIELDS                                          \
  size_t outstanding; /* requests started and not yet released */     \
  np_pipe *pipes;     /* every pipe block not yet freed */

NP_INTERNAL_BEGIN

/* The loop's list of pipe blocks: a new block goes in at its creation,
 * out when it is freed. */
void np_pipe_list_add(np_loop *loop, np_pipe *p);
void np_pipe_list_remove(np_pipe *p);

NP_INTERNAL_END

#endif
