/*
 * host_unix.c - np.fd(): the loop as one descriptor a host's own event loop
 * can poll (luv's uv.new_poll, a select() in a game loop), readable exactly
 * when a step has something to do.
 *
 * The descriptor is the loop's epoll instance. A socket event it holds is
 * taken by the next step's epoll_wait, which then always looks (without a
 * host, a step with nothing started skips that call). Two descriptors
 * added to its set cover what no socket announces: an eventfd counting
 * work already queued (a completion finished inside the call that started
 * it, a completion a step left for the next one, a task spawned or woken),
 * and a timerfd armed for the Lua layer's next timer. A step takes the
 * eventfd's count as it begins and gives it back at its end only if work
 * is left, and re-arms the timerfd for the next timer (which also clears a
 * past expiry): after a step(0) that did everything, nothing is readable,
 * so a host that polls never spins.
 */
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include "unix.h"

/* What the two descriptors' epoll data points at: dispatch ignores it. */
static const np_watch host_watch = NP_WATCH_HOST;

int np_loop_host_fd(np_loop *loop, np_status *st) {
  if (loop->hosted) return loop->epfd;
  loop->host_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  loop->host_tfd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
  if (loop->host_efd < 0 || loop->host_tfd < 0 ||
      np_watch_add(loop, loop->host_efd, EPOLLIN, (void *)&host_watch) != 0 ||
      np_watch_add(loop, loop->host_tfd, EPOLLIN, (void *)&host_watch) != 0) {
    np_status_errno(st, np_errno_err(errno), errno);
    np_host_close(loop);
    return -1;
  }
  loop->hosted = 1;
  loop->host_signalled = 0;
  loop->host_timer_at = -1;
  loop->host_capped_at = -1;
  if (loop->ready_count > 0) np_host_ready(loop);
  return loop->epfd;
}

static void signal_work(np_loop *loop) {
  uint64_t one = 1;
  if (write(loop->host_efd, &one, sizeof one) == (ssize_t)sizeof one)
    loop->host_signalled = 1;
}

static void take_work(np_loop *loop) {
  uint64_t count;
  if (read(loop->host_efd, &count, sizeof count) == (ssize_t)sizeof count ||
      errno == EAGAIN)
    loop->host_signalled = 0;
}

void np_host_ready(np_loop *loop) {
  if (loop->hosted && !loop->host_signalled) signal_work(loop);
}

void np_host_wait_begins(np_loop *loop) {
  if (loop->host_signalled) take_work(loop);
}

/* Re-arming (or disarming) also clears an expiry not yet read. */
/* The longest a timer is armed for (a day); one due later (a timeout of
 * math.huge, 1e300 ms) is armed for that and re-armed when it fires: a
 * time_t from such a double is undefined (it came out negative, and the
 * refused timerfd_settime left the descriptor readable for good). */
#define HOST_TIMER_MAX_MS 86400000.0

static void arm_timer(np_loop *loop, int has_timer, double at) {
  struct itimerspec its;
  double capped_at = -1;
  int capped = 0;
  memset(&its, 0, sizeof its);
  if (has_timer) {
    double now = np_now_ms(), ms = at - now;
    capped = !(ms <= HOST_TIMER_MAX_MS); /* (NaN too) */
    if (capped) ms = HOST_TIMER_MAX_MS;
    if (ms > 0) {
      its.it_value.tv_sec = (time_t)(ms / 1000);
      its.it_value.tv_nsec =
          (long)((ms - (double)its.it_value.tv_sec * 1000) * 1e6);
    }
    /* 0 would disarm it: a timer due now fires in a nanosecond */
    if (its.it_value.tv_sec == 0 && its.it_value.tv_nsec == 0)
      its.it_value.tv_nsec = 1;
    if (capped) capped_at = now + HOST_TIMER_MAX_MS;
  }
  if (timerfd_settime(loop->host_tfd, 0, &its, NULL) == 0) {
    loop->host_timer_at = has_timer ? at : -1;
    loop->host_capped_at = capped_at;
  }
}

void np_loop_host_sync(np_loop *loop, int work, int has_timer,
                       double timer_at) {
  int rounds;
  if (!loop->hosted) return;
  /* What the step itself stirred up (a peer's socket made writable by a
   * read, a listener re-registered) is taken now, not announced to the
   * host as if there were work: a few rounds at most. */
  for (rounds = 0; rounds < 4 && np_loop_poll_now(loop) > 0; rounds++) {}
  if (work || loop->ready_count > 0) {
    if (!loop->host_signalled) signal_work(loop);
  } else if (loop->host_signalled) {
    take_work(loop);
  }
  /* a deadline it is armed for already: nothing to do (a timer come due
   * and run is followed by the next one's, or by none) */
  if (has_timer ? timer_at != loop->host_timer_at ||
                      (loop->host_capped_at >= 0 &&
                       np_now_ms() >= loop->host_capped_at)
                : loop->host_timer_at >= 0)
    arm_timer(loop, has_timer, timer_at); /* (a capped one that fired too) */
}

void np_host_close(np_loop *loop) {
  if (loop->host_efd >= 0) close(loop->host_efd);
  if (loop->host_tfd >= 0) close(loop->host_tfd);
  loop->host_efd = loop->host_tfd = -1;
  loop->hosted = 0;
}
