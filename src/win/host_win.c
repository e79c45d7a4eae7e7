/*
 * host_win.c - np.fd() on Windows: there is no descriptor for a host's
 * own event loop to poll.
 */
#include "win.h"

/* A completion port is no waitable object: a host steps from its frame or
 * its timer instead (README, "Host loops"). */
int np_loop_host_fd(np_loop *loop, np_status *st) {
  (void)loop;
  (void)st;
  return -2;
}

void np_loop_host_sync(np_loop *loop, int work, int has_timer,
                       double timer_at) {
  (void)loop;
  (void)work;
  (void)has_timer;
  (void)timer_at;
}
