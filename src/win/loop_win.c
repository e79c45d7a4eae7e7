/*
 * loop_win.c - one I/O completion port per Lua state, the ready queue in
 * front of it, and the bounded drain when the state closes.
 */
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "win.h"

/* How many packets one GetQueuedCompletionStatusEx call may take. */
#define BATCH 64
/* lua_close waits this long for the kernel to give back cancelled blocks. */
#define CLOSE_DRAIN_MS 5000

typedef ULONG(WINAPI *status_to_error_fn)(LONG);
static status_to_error_fn status_to_error;

np_loop *np_loop_new(np_status *st) {
  np_loop *loop = (np_loop *)calloc(1, sizeof *loop);
  if (!status_to_error)
    status_to_error = (status_to_error_fn)(void (*)(void))GetProcAddress(
        GetModuleHandleA("ntdll.dll"), "RtlNtStatusToDosError");
  if (!loop) {
    st->err = NP_NO_MEMORY;
    st->code = ERROR_NOT_ENOUGH_MEMORY;
    return NULL;
  }
  loop->port = CreateIoCompletionPort(INVALID_HANDLE_VALUE, NULL, 0, 1);
  loop->try_event = CreateEventW(NULL, TRUE, FALSE, NULL);
  if (!loop->port || !loop->try_event || !status_to_error) {
    np_win_status(st, GetLastError(), NP_OP_READ);
    if (loop->port) CloseHandle(loop->port);
    if (loop->try_event) CloseHandle(loop->try_event);
    free(loop);
    return NULL;
  }
  return loop;
}

void np_req_kernel(np_loop *loop, np_req *req) {
  if (req->state == REQ_IDLE) {
    req->pipe->outstanding++;
    loop->outstanding++;
  }
  req->state = REQ_KERNEL;
  loop->kernel_owned++;
  if (req->op == NP_OP_WRITE) {
    req->pipe->kernel_writes++;
    if (req->session == req->pipe->session) req->pipe->session_writes++;
  }
}

/* Not the kernel's, but outstanding: it will be made ready by us. */
void np_req_wait(np_loop *loop, np_req *req) {
  req->pipe->outstanding++;
  loop->outstanding++;
  req->state = REQ_WAITING;
}

/* Back from waiting, about to go to the kernel: idle and not counted, as
 * submitted() expects (it counts it again). */
void np_req_unwait(np_loop *loop, np_req *req) {
  req->pipe->outstanding--;
  loop->outstanding--;
  req->state = REQ_IDLE;
}

void np_req_ready(np_loop *loop, np_req *req) {
  if (req->state == REQ_IDLE) {
    req->pipe->outstanding++;
    loop->outstanding++;
  } else if (req->state == REQ_KERNEL) {
    loop->kernel_owned--;
  }
  req->state = REQ_READY;
  NP_READY_PUSH(loop, req);
}

/* A packet's OVERLAPPED holds the NTSTATUS; Wine and Windows differ in what
 * GetQueuedCompletionStatus reports for STATUS_BUFFER_OVERFLOW, so read the
 * status itself (docs/wine.md #3). */
static void take_packet(np_loop *loop, OVERLAPPED_ENTRY *e) {
  np_req *req;
  LONG status;
  if (!e->lpOverlapped) return; /* a wake-up post */
  req = CONTAINING_RECORD(e->lpOverlapped, np_req, ov);
  status = (LONG)req->ov.Internal;
  loop->kernel_owned--;
  if (req->op == NP_OP_WRITE) {
    req->pipe->kernel_writes--;
    /* (one done at once left the session's count then) */
    if (req->session == req->pipe->session && !req->finished)
      req->pipe->session_writes--;
  }
  req->state = REQ_IDLE; /* np_req_finished decides what comes next */
  req->pipe->outstanding--;
  loop->outstanding--;
  np_req_finished(req, status == 0 ? 0 : status_to_error(status),
                  e->dwNumberOfBytesTransferred);
}

int np_loop_wait(np_loop *loop, int timeout_ms, np_status *st) {
  OVERLAPPED_ENTRY entries[BATCH];
  ULONG n = 0, i;
  DWORD timeout = loop->ready_count > 0 ? 0
                  : timeout_ms < 0      ? INFINITE
                                        : (DWORD)timeout_ms;
  /* Each look at the port is a kernel call (a wineserver round trip under
   * Wine). Skip it when there is nothing it could hold and no wait was
   * asked for, and every other time when the ready queue already has work
   * (so the port is never starved). */
  if (timeout == 0 && (loop->kernel_owned == 0 ||
                       (loop->ready_count > 0 && !loop->skipped_poll))) {
    loop->skipped_poll = 1;
    return loop->ready_count;
  }
  loop->skipped_poll = 0;
  if (!GetQueuedCompletionStatusEx(loop->port, entries, BATCH, &n, timeout,
                                   FALSE)) {
    DWORD err = GetLastError();
    /* On a timeout Wine may still set n to 1: ignore n (docs/wine.md #3). */
    if (err != WAIT_TIMEOUT) {
      np_win_status(st, err, NP_OP_READ);
      return -1;
    }
    n = 0;
  }
  for (i = 0; i < n; i++) take_packet(loop, &entries[i]);
  return loop->ready_count;
}

int np_loop_peek(np_loop *loop, np_completion *c) {
  np_req *req = loop->ready_head;
  if (!req) return 0;
  NP_COMPLETION_FROM(c, req);
  c->data = !NP_READS_DATA(req->op) ? NULL
            : req->pipe->rext         ? req->pipe->rext
                                      : req->pipe->rbuf;
  c->len = NP_READS_DATA(req->op) ? req->pipe->rlen : req->bytes;
  return 1;
}

void np_loop_take(np_loop *loop, np_completion *c) {
  np_req *req;
  NP_READY_POP(loop, req);
  c->user = req->pipe->user;
}

/* Write requests come from the loop's free list: no malloc per write on
 * the hot path. A new one goes to the end of its pipe's list of writes,
 * which is in start order: completions are handed out in that order. */
np_req *np_write_new(np_pipe *p) {
  np_loop *loop = p->loop;
  np_req *req = loop->free_writes;
  if (req)
    loop->free_writes = req->next;
  else if (!(req = (np_req *)malloc(sizeof *req)))
    return NULL;
  memset(req, 0, sizeof *req);
  req->pipe = p;
  req->op = NP_OP_WRITE;
  req->state = REQ_IDLE;
  req->ref_cb = req->ref_data = NP_NOREF;
  req->wprev = p->writes_tail;
  if (p->writes_tail)
    p->writes_tail->wnext = req;
  else
    p->writes = req;
  p->writes_tail = req;
  if (!p->wdeliver) p->wdeliver = req;
  p->nwrites++;
  p->writes_made++;
  return req;
}

/* Back to the free list; the request must not be KERNEL or READY. */
void np_write_drop(np_req *req) {
  np_pipe *p = req->pipe;
  np_loop *loop = p->loop;
  if (p->wdeliver == req) p->wdeliver = req->wnext;
  NP_DLIST_REMOVE(p->writes, p->writes_tail, req, wprev, wnext);
  p->nwrites--;
  p->quiet_writes -= req->quiet;
  p->finished_writes -= req->finished;
  req->next = loop->free_writes;
  loop->free_writes = req;
}

static void release(np_loop *loop, np_req *req) {
  np_pipe *p = req->pipe;
  req->state = REQ_IDLE;
  p->outstanding--;
  loop->outstanding--;
  if (req == &p->read_req) np_read_buffer_give(p); /* its bytes are out */
  if (req->op == NP_OP_WRITE) {
    np_write_drop(req);
    /* The last write in flight is done: a writable() waiter may go. */
    if (p->nwrites == p->finished_writes &&
        p->writable_req.state == REQ_WAITING)
      np_req_ready(loop, &p->writable_req);
  }
  if (p->closed && p->outstanding == 0) np_pipe_free(p);
}

void np_completion_done(np_loop *loop, np_completion *c) {
  release(loop, (np_req *)c->req);
}


/* NtQuerySystemInformation(SystemHandleInformation): every process's
 * handles, one entry each. (Declared here: mingw's and the SDK's headers
 * disagree on it, and found at run time, as RtlNtStatusToDosError above.) */
typedef struct {
  ULONG owner_pid;
  BYTE object_type, flags;
  USHORT value;
  PVOID object;
  ULONG access;
} system_handle_entry;
typedef struct {
  ULONG count;
  system_handle_entry entry[1];
} system_handle_list;
typedef LONG(WINAPI *query_system_fn)(int, PVOID, ULONG, PULONG);
#define SYSTEM_HANDLE_INFORMATION 16
#define STATUS_INFO_LENGTH_MISMATCH_ ((LONG)0xC0000004)

/* This process's handles in that list, or -1. One call: under Wine, where
 * it is a single wineserver request, where probing every handle value
 * was 16,383 of them (about a second per np.stats()). */
static long count_listed_handles(void) {
  query_system_fn query = (query_system_fn)(void (*)(void))GetProcAddress(
      GetModuleHandleA("ntdll.dll"), "NtQuerySystemInformation");
  ULONG size = 1u << 16, pid = GetCurrentProcessId();
  if (!query) return -1;
  while (size <= (1u << 28)) {
    system_handle_list *list = (system_handle_list *)malloc(size);
    ULONG need = 0, i, fits;
    LONG rc;
    long n = 0;
    if (!list) return -1;
    rc = query(SYSTEM_HANDLE_INFORMATION, list, size, &need);
    if (rc == STATUS_INFO_LENGTH_MISMATCH_) { /* (grown meanwhile: more) */
      free(list);
      size = need > size ? need + (need >> 2) : size * 2;
      continue;
    }
    if (rc != 0) {
      free(list);
      return -1;
    }
    fits = (ULONG)((size - offsetof(system_handle_list, entry)) /
                   sizeof(system_handle_entry));
    for (i = 0; i < list->count && i < fits; i++)
      if (list->entry[i].owner_pid == pid) n++;
    free(list);
    return n;
  }
  return -1;
}

void np_loop_stats(const np_loop *loop, np_stats *stats) {
  const np_pipe *p;
  DWORD handles = 0;
  stats->pipes = 0;
  stats->read_buffers = (size_t)loop->n_free_rbufs * NP_READ_CHUNK + loop->big_spare_cap;
  for (p = loop->pipes; p; p = p->next) {
    stats->pipes++;
    stats->read_buffers += p->rcap;
  }
  stats->outstanding = loop->outstanding;
  /* A process always holds some handles: 0 means the call is a stub
   * (Wine 8's is). Then count them in the system's list, or, failing
   * that, by probing handle values (multiples of 4, below 65,536). */
  if (GetProcessHandleCount(GetCurrentProcess(), &handles) && handles > 0) {
    stats->os_handles = (long)handles;
  } else {
    stats->os_handles = count_listed_handles();
    if (stats->os_handles <= 0) {
      ULONG_PTR h;
      DWORD flags;
      long n = 0;
      for (h = 4; h < (1u << 16); h += 4)
        if (GetHandleInformation((HANDLE)h, &flags)) n++;
      stats->os_handles = n;
    }
  }
}

/* The counter's frequency, read once per process: loops of several Lua
 * states may ask from several threads at once (InitOnce, not a lazily set
 * static that every first caller writes). */
static INIT_ONCE freq_once = INIT_ONCE_STATIC_INIT;
static LARGE_INTEGER freq;

static BOOL CALLBACK read_frequency(PINIT_ONCE once, PVOID arg, PVOID *ctx) {
  (void)once;
  (void)arg;
  (void)ctx;
  return QueryPerformanceFrequency(&freq);
}

double np_now_ms(void) {
  LARGE_INTEGER t;
  InitOnceExecuteOnce(&freq_once, read_frequency, NULL, NULL);
  QueryPerformanceCounter(&t);
  return (double)t.QuadPart * 1000.0 / (double)freq.QuadPart;
}

/* The block itself and what it still holds: its read buffer goes to the
 * loop's spares as any read's does (nothing is in flight any more). */
void np_pipe_free(np_pipe *p) {
  np_pipe_list_remove(p);
  np_read_buffer_drop(p);
  free(p);
}

/* docs/windows-internals.md #2: cancel everything, then wait for the
 * kernel to hand every OVERLAPPED back before freeing it; what it has not
 * given back after CLOSE_DRAIN_MS is leaked, never freed under its feet.
 * No Lua runs: the ready queue is simply released. */
int np_loop_close(np_loop *loop) {
  np_pipe *p, *next;
  DWORD start = GetTickCount();
  int gave_back;
  for (p = loop->pipes; p; p = next) {
    next = p->next;
    p->user = NULL;
    np_pipe_close(p); /* frees p if nothing of it is outstanding */
  }
  while (loop->ready_head) {
    np_req *req;
    NP_READY_POP(loop, req);
    release(loop, req); /* may free a closed block */
  }
  while (loop->kernel_owned > 0) {
    OVERLAPPED_ENTRY entries[BATCH];
    ULONG n = 0, i;
    DWORD waited = GetTickCount() - start;
    if (waited >= CLOSE_DRAIN_MS) break;
    if (!GetQueuedCompletionStatusEx(loop->port, entries, BATCH, &n,
                                     CLOSE_DRAIN_MS - waited, FALSE))
      continue;
    for (i = 0; i < n; i++) {
      if (!entries[i].lpOverlapped) continue;
      loop->kernel_owned--;
      release(loop, CONTAINING_RECORD(entries[i].lpOverlapped, np_req, ov));
    }
  }
  /* Writes that finished but waited for an earlier one (REQ_DONE, or
   * queued): let them go where nothing of the pipe is with the kernel. */
  for (p = loop->pipes; p; p = next) {
    np_req *w;
    int kernel = p->connect_req.state == REQ_KERNEL ||
                 p->read_req.state == REQ_KERNEL;
    next = p->next;
    for (w = p->writes; w; w = w->wnext) kernel |= w->state == REQ_KERNEL;
    if (kernel) continue;
    while (p->writes) {
      int last = p->outstanding == 1;
      release(loop, p->writes);
      if (last) break; /* that freed the block */
    }
  }
  /* Blocks still in loop->pipes have requests the kernel never gave back:
   * leave them allocated (leaked) rather than free memory it may write. */
  gave_back = loop->kernel_owned == 0;
  while (loop->free_writes) {
    np_req *w = loop->free_writes;
    loop->free_writes = w->next;
    free(w);
  }
  while (loop->n_free_rbufs > 0) free(loop->free_rbufs[--loop->n_free_rbufs]);
  free(loop->big_spare);
  CloseHandle(loop->try_event);
  CloseHandle(loop->port);
  free(loop);
  return gave_back;
}
