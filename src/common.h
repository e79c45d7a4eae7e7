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

/* Take node out of a doubly linked list with a head and a tail, linked
 * through its fields prev and next (names given). */
#define NP_DLIST_REMOVE(head, tail, node, prev, next) \
  do {                                                \
    if ((node)->prev)                                 \
      (node)->prev->next = (node)->next;              \
    else                                              \
      (head) = (node)->next;                          \
    if ((node)->next)                                 \
      (node)->next->prev = (node)->prev;              \
    else                                              \
      (tail) = (node)->prev;                          \
  } while (0)

/* The loop's ready queue, finished requests in the order they finished:
 * the loop's fields ready_head, ready_tail and ready_count, a request's
 * next. (Macros: every completion goes through them, and the two
 * backends' blocks differ around these fields.) */
#define NP_READY_PUSH(loop, r)            \
  do {                                    \
    (r)->next = NULL;                     \
    if ((loop)->ready_tail)               \
      (loop)->ready_tail->next = (r);     \
    else                                  \
      (loop)->ready_head = (r);           \
    (loop)->ready_tail = (r);             \
    (loop)->ready_count++;                \
  } while (0)
/* r := the oldest, taken off the queue (which must not be empty). */
#define NP_READY_POP(loop, r)                              \
  do {                                                     \
    (r) = (loop)->ready_head;                              \
    (loop)->ready_head = (r)->next;                        \
    if (!(loop)->ready_head) (loop)->ready_tail = NULL;    \
    (loop)->ready_count--;                                 \
  } while (0)
/* What a completion says of its request r that every backend has alike
 * (np_loop_peek; the data and its length are the backend's). The user
 * pointer is read now, not when the request finished: the binding clears
 * it when the userdata is collected, and a stale one must not come out. */
#define NP_COMPLETION_FROM(c, r)    \
  do {                              \
    (c)->pipe = (r)->pipe;          \
    (c)->user = (r)->pipe->user;    \
    (c)->op = (r)->op;              \
    (c)->status = (r)->status;      \
    (c)->more = (r)->more;          \
    (c)->ref_cb = (r)->ref_cb;      \
    (c)->ref_data = (r)->ref_data;  \
    (c)->req = (r);                 \
  } while (0)

NP_INTERNAL_BEGIN

/* The loop's list of pipe blocks: a new block goes in at its creation,
 * out when it is freed. */
void np_pipe_list_add(np_loop *loop, np_pipe *p);
void np_pipe_list_remove(np_pipe *p);

NP_INTERNAL_END

#endif
