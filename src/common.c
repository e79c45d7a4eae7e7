/*
 * common.c - what both backends do alike, written once: the pipe block's
 * accessors and the loop's list of blocks, over the fields common.h puts
 * in both backends' blocks. Built with the platform's backend header.
 */
#ifdef _WIN32
#include "win/win.h"
#else
#define _GNU_SOURCE
#include "unix/unix.h"
#endif

void np_pipe_set_user(np_pipe *p, void *user) { p->user = user; }
int np_pipe_is_server(const np_pipe *p) { return p->is_server; }
np_state np_pipe_state(const np_pipe *p) { return p->state; }
const char *np_pipe_name(const np_pipe *p) { return p->name; }

size_t np_loop_outstanding(const np_loop *loop) { return loop->outstanding; }

void np_pipe_list_add(np_loop *loop, np_pipe *p) {
  p->next = loop->pipes;
  if (loop->pipes) loop->pipes->prev = p;
  loop->pipes = p;
}

void np_pipe_list_remove(np_pipe *p) {
  if (p->prev)
    p->prev->next = p->next;
  else
    p->loop->pipes = p->next;
  if (p->next) p->next->prev = p->prev;
}
