/*
 * multi_state.c - many Lua states in one process, each loading namedpipe
 * (each with its own completion port / epoll instance), must not interfere.
 *
 *   multi_state [N [COUNT [ROOT]]]  N states (default 4), COUNT messages each
 *                                   way (default 200), ROOT the repo root
 *   NP_MS_VERBOSE=1              say what every close did
 *
 * Run from the repo root (or give ROOT, or set NP_ROOT): every state sets package.path to
 * ROOT/lua and package.cpath to ROOT/build/linux (Linux; NP_BUILD_DIR picks
 * another build, e.g. build/asan) or ROOT\build\win (Windows), as
 * tests/run.lua does.
 *
 * Phases (all in one process):
 *  1. round-robin: N states driven from this thread, np.step(0) in turn.
 *     State i's client talks to state i+1's server (a ring): COUNT messages
 *     of varying size, each acknowledged, order and content checked; inside
 *     each state a second pair echoes COUNT messages. Pipes closed, every
 *     state settles to no pipe blocks and nothing outstanding.
 *  2. threads: the same with one thread per state (pthreads / Win32
 *     threads), all stepping their own loops at once.
 *  3. closing with operations pending, round-robin, in several orders: every
 *     state has a pending connect (nobody comes), a pending read towards its
 *     ring neighbour, a large write nobody reads; states are lua_close'd one
 *     by one, and after each close the neighbours' reads must end (EOF,
 *     BROKEN_PIPE or NOT_CONNECTED) within 5 s; each lua_close must return
 *     within 6 s.
 *  4. the same with threads: each thread closes its own state after a
 *     different delay while the others are still stepping.
 * At the end the process's file descriptors (Linux) or handles (Windows)
 * must be back where they started. Last line: "multi_state: ... OK" or
 * "multi_state: FAILED (...)"; exit status 0 only when everything held.
 *
 * Linux only, for tests/test_unix.lua (which checks the directory after):
 *   multi_state exit DIR   N states on N threads each make servers (socket
 *                          files in DIR) and keep stepping while the main
 *                          thread calls exit(0) with no state closed: the
 *                          files must be gone afterwards.
 *   multi_state fork DIR   a state makes a server in DIR, then fork()ed
 *                          children end (exit(0); lua_close and _exit; a new
 *                          state with a server of its own, then exit(0)):
 *                          the parent's files must stay, usable, the last
 *                          child's must go; a name the parent closed and
 *                          another state took over while a child lives
 *                          must leave no file; then the parent calls
 *                          exit(0).
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lauxlib.h"
#include "lua.h"
#include "lualib.h"

#ifdef _WIN32
#include <windows.h>
typedef HANDLE thread_t;
#define THREAD_FN DWORD WINAPI
#define THREAD_RET 0
static void sleep_ms(int ms) { Sleep((DWORD)ms); }
static double now_ms(void) { return (double)GetTickCount64(); }
static int start_thread(thread_t *t, LPTHREAD_START_ROUTINE fn, void *arg) {
  *t = CreateThread(NULL, 0, fn, arg, 0, NULL);
  return *t != NULL;
}
static void join_thread(thread_t t) {
  WaitForSingleObject(t, INFINITE);
  CloseHandle(t);
}
/* Wine 8's GetProcessHandleCount says 0: then probe handle values (as
 * np.stats() does). */
static long os_handles(void) {
  DWORD n = 0, flags;
  ULONG_PTR h;
  long count = 0;
  if (GetProcessHandleCount(GetCurrentProcess(), &n) && n > 0) return (long)n;
  for (h = 4; h < (1u << 16); h += 4)
    if (GetHandleInformation((HANDLE)h, &flags)) count++;
  return count;
}
static int proc_id(void) { return (int)GetCurrentProcessId(); }
#define PLATFORM "windows"
#define DIRSEP "\\"
#else
#include <dirent.h>
#include <pthread.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
typedef pthread_t thread_t;
#define THREAD_FN void *
#define THREAD_RET NULL
static void sleep_ms(int ms) {
  struct timespec ts;
  ts.tv_sec = ms / 1000;
  ts.tv_nsec = (long)(ms % 1000) * 1000000L;
  nanosleep(&ts, NULL);
}
static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1000.0 + (double)ts.tv_nsec / 1e6;
}
static int start_thread(thread_t *t, void *(*fn)(void *), void *arg) {
  return pthread_create(t, NULL, fn, arg) == 0;
}
static void join_thread(thread_t t) { pthread_join(t, NULL); }
static long os_handles(void) {
  long n = 0;
  DIR *d = opendir("/proc/self/fd");
  struct dirent *e;
  if (!d) return -1;
  while ((e = readdir(d)) != NULL)
    if (e->d_name[0] != '.') n++;
  closedir(d);
  return n - 1; /* the directory's own descriptor */
}
static int proc_id(void) { return (int)getpid(); }
#define PLATFORM "linux"
#define DIRSEP "/"
#endif

#define MAX_STATES 16

/* ------------------------------------------------------------ failures */

static volatile int failures;
static int fail_lock; /* a tiny spin lock: failures come from threads too */

static void failf(const char *fmt, ...) {
  va_list ap;
  while (__atomic_exchange_n(&fail_lock, 1, __ATOMIC_ACQUIRE)) sleep_ms(1);
  __atomic_add_fetch(&failures, 1, __ATOMIC_SEQ_CST);
  fprintf(stdout, "multi_state: FAIL: ");
  va_start(ap, fmt);
  vfprintf(stdout, fmt, ap);
  va_end(ap);
  fprintf(stdout, "\n");
  fflush(stdout);
  __atomic_store_n(&fail_lock, 0, __ATOMIC_RELEASE);
}

/* A barrier for `n` threads (spins with a 1 ms sleep: portable and cheap). */
typedef struct barrier {
  int n, arrived, generation;
} barrier;

static void barrier_wait(barrier *b) {
  int gen = __atomic_load_n(&b->generation, __ATOMIC_ACQUIRE);
  if (__atomic_add_fetch(&b->arrived, 1, __ATOMIC_ACQ_REL) == b->n) {
    __atomic_store_n(&b->arrived, 0, __ATOMIC_RELEASE);
    __atomic_add_fetch(&b->generation, 1, __ATOMIC_ACQ_REL);
    return;
  }
  while (__atomic_load_n(&b->generation, __ATOMIC_ACQUIRE) == gen) sleep_ms(1);
}

/* ------------------------------------------------------- the Lua side */

/* Loaded into every state with (ME, N, TAG, COUNT); defines the globals
 * the driver calls. */
static const char script[] =
    "local ME, N, TAG, COUNT = ...\n"
    "local np = require 'namedpipe'\n"
    "local R = { errors = {}, inbound = 0, acks = 0, acked_out = 0, echoed = 0, gone = {} }\n"
    "local function fail(fmt, ...)\n"
    "  R.errors[#R.errors + 1] = ('state %d: ' .. fmt):format(ME, ...)\n"
    "end\n"
    "local function pname(kind, i)\n"
    "  return ([[\\\\.\\pipe\\npms-%s-%s%d]]):format(TAG, kind, i % N)\n"
    "end\n"
    "local function payload(from, k)\n"
    "  return string.rep(string.char(65 + (from * 7 + k) % 26), (k * 397 + from * 13) % 6000)\n"
    "end\n"
    "local S, C, L, LC, X, LB, LBC\n"
    "\n"
    "function setup_servers()\n"
    "  S = assert(np.create(pname('x', ME), { pipe_mode = 'message', max_instances = 1 }))\n"
    "  L = assert(np.create(pname('l', ME), { pipe_mode = 'message' }))\n"
    "  X = assert(np.create(pname('idle', ME)))\n"
    "  LB = assert(np.create(pname('lb', ME)))\n"
    "end\n"
    "\n"
    "function setup_clients()\n"
    "  C = assert(np.open(pname('x', ME + 1),\n"
    "    { pipe_mode = 'message', timeout = 10000, wait_for_server = true }))\n"
    "  LC = assert(np.open(pname('l', ME), { pipe_mode = 'message' }))\n"
    "  LBC = assert(np.open(pname('lb', ME)))\n"
    "end\n"
    "\n"
    "function start_exchange()\n"
    "  local prev = (ME - 1) % N\n"
    "  S:connect(function(ok, msg)\n"
    "    if not ok then return fail('connect: %s', msg) end\n"
    "    local function on_msg(data, msg, name)\n"
    "      if not data then return fail('server read: %s (%s)', msg, name) end\n"
    "      local from, seq, body = data:match('^(%d+):(%d+):(.*)$')\n"
    "      from, seq = tonumber(from), tonumber(seq)\n"
    "      if from ~= prev or seq ~= R.inbound + 1 or body ~= payload(from, seq) then\n"
    "        return fail('bad message #%d: from %s seq %s, %d bytes', R.inbound + 1,\n"
    "          tostring(from), tostring(seq), #data)\n"
    "      end\n"
    "      R.inbound = R.inbound + 1\n"
    "      S:write('ack:' .. seq, function(n, msg)\n"
    "        if not n then return fail('ack write: %s', msg) end\n"
    "        R.acked_out = R.acked_out + 1\n"
    "      end)\n"
    "      if R.inbound < COUNT then S:read(on_msg) end\n"
    "    end\n"
    "    S:read(on_msg)\n"
    "  end)\n"
    "  for k = 1, COUNT do\n"
    "    C:write(('%d:%d:%s'):format(ME, k, payload(ME, k)), function(n, msg)\n"
    "      if not n then fail('client write %d: %s', k, msg) end\n"
    "    end)\n"
    "  end\n"
    "  local function on_ack(data, msg, name)\n"
    "    if not data then return fail('ack read: %s (%s)', msg, name) end\n"
    "    if data ~= 'ack:' .. (R.acks + 1) then return fail('ack %d is %q', R.acks + 1, data) end\n"
    "    R.acks = R.acks + 1\n"
    "    if R.acks < COUNT then C:read(on_ack) end\n"
    "  end\n"
    "  C:read(on_ack)\n"
    "  L:connect(function(ok, msg)\n"
    "    if not ok then return fail('local connect: %s', msg) end\n"
    "    local function echo(data, msg, name)\n"
    "      if not data then\n"
    "        if name ~= 'EOF' and name ~= 'CLOSED' then fail('local read: %s', msg) end\n"
    "        return\n"
    "      end\n"
    "      L:write(data, function(n, msg) if not n then fail('echo write: %s', msg) end end)\n"
    "      L:read(echo)\n"
    "    end\n"
    "    L:read(echo)\n"
    "  end)\n"
    "  for k = 1, COUNT do\n"
    "    LC:write('local ' .. k .. ':' .. payload(ME + 50, k), function(n, msg)\n"
    "      if not n then fail('local write: %s', msg) end\n"
    "    end)\n"
    "  end\n"
    "  local function on_echo(data, msg, name)\n"
    "    if not data then return fail('echo read: %s (%s)', msg, name) end\n"
    "    local k = R.echoed + 1\n"
    "    if data ~= 'local ' .. k .. ':' .. payload(ME + 50, k) then\n"
    "      return fail('echo %d is wrong (%d bytes)', k, #data)\n"
    "    end\n"
    "    R.echoed = k\n"
    "    if k < COUNT then LC:read(on_echo) end\n"
    "  end\n"
    "  LC:read(on_echo)\n"
    "end\n"
    "\n"
    "function exchange_done()\n"
    "  return #R.errors > 0 or (R.inbound == COUNT and R.acks == COUNT\n"
    "    and R.acked_out == COUNT and R.echoed == COUNT)\n"
    "end\n"
    "\n"
    "function tick(ms) np.step(ms) return exchange_done() end\n"
    "\n"
    "-- phase 3/4: operations left pending\n"
    "function start_pending()\n"
    "  X:connect(function(ok, msg, name) R.gone.X = name or 'OK' end) -- nobody comes\n"
    "  S:connect(function(ok, msg)\n"
    "    if not ok then return fail('connect: %s', msg) end\n"
    "    local function drain(data, msg, name)\n"
    "      if data then return S:read(drain) end\n"
    "      R.gone.S = name\n"
    "    end\n"
    "    S:read(drain) -- reads the neighbour's big write, then waits for its end\n"
    "  end)\n"
    "  C:write(('c'):rep(256 * 1024), function(n, msg, name)\n"
    "    if not n then R.gone.Cw = name end\n"
    "  end)\n"
    "  C:read(function(data, msg, name) R.gone.C = name or 'DATA' end) -- nobody writes\n"
    "  L:connect(function() L:read(function() end) end)\n"
    "  LBC:write(('b'):rep(8 * 1024 * 1024), function() end) -- nobody reads\n"
    "  LC:read(function() end)\n"
    "end\n"
    "\n"
    "-- the result of the read towards a neighbour: 'S' (my server, whose\n"
    "-- client is the previous state) or 'C' (my client, to the next state)\n"
    "function gone(which) return R.gone[which] end\n"
    "\n"
    "function pending_ops() return np.pending() end\n"
    "\n"
    "function finish()\n"
    "  for _, p in ipairs { S, C, L, LC, X, LB, LBC } do p:close() end\n"
    "  local deadline = np.now() + 5000\n"
    "  while np.pending() > 0 and np.now() < deadline do np.step(10) end\n"
    "  collectgarbage()\n"
    "  np.step(0)\n"
    "  local st = np.stats()\n"
    "  if st.pipes ~= 0 or st.outstanding ~= 0 then\n"
    "    fail('after closing: %d pipe blocks, %d outstanding', st.pipes, st.outstanding)\n"
    "  end\n"
    "end\n"
    "\n"
    "function errors() return table.concat(R.errors, '\\n') end\n"
    "function summary()\n"
    "  return ('in=%d acks=%d acked=%d echoed=%d'):format(R.inbound, R.acks, R.acked_out, R.echoed)\n"
    "end\n";

static char root[1024] = ".";
static char build_dir[1024];
static char tag[64];
static int n_states = 4, count = 200, verbose;

static int traceback(lua_State *L) {
  luaL_traceback(L, L, lua_tostring(L, 1), 1);
  return 1;
}

/* Call global fn(args) in L; nres results stay on the stack. 0 on error
 * (reported). */
static int call(lua_State *L, int id, const char *fn, int nargs, int nres) {
  int base = lua_gettop(L) - nargs, st;
  lua_pushcfunction(L, traceback);
  lua_getglobal(L, fn);
  lua_rotate(L, base + 1, 2); /* handler, fn, args... */
  st = lua_pcall(L, nargs, nres, base + 1);
  lua_remove(L, base + 1);
  if (st != LUA_OK) {
    failf("state %d: %s() raised: %s", id, fn, lua_tostring(L, -1));
    lua_pop(L, 1);
    return 0;
  }
  return 1;
}

static int call_bool(lua_State *L, int id, const char *fn, int arg) {
  int r;
  lua_pushinteger(L, arg);
  if (!call(L, id, fn, 1, 1)) return -1;
  r = lua_toboolean(L, -1);
  lua_pop(L, 1);
  return r;
}

/* What global fn(which) returns as a string (NULL if nil). Copied to buf. */
static const char *call_str(lua_State *L, int id, const char *fn,
                            const char *which, char *buf, size_t size) {
  const char *s;
  if (which) lua_pushstring(L, which);
  if (!call(L, id, fn, which ? 1 : 0, 1)) return NULL;
  s = lua_tostring(L, -1);
  if (s) snprintf(buf, size, "%s", s);
  lua_pop(L, 1);
  return s ? buf : NULL;
}

static lua_State *new_state(int id) {
  lua_State *L = luaL_newstate();
  if (!L) {
    failf("state %d: luaL_newstate failed", id);
    return NULL;
  }
  luaL_openlibs(L);
  lua_getglobal(L, "package");
  lua_pushfstring(L, "%s" DIRSEP "lua" DIRSEP "?.lua;%s" DIRSEP "lua" DIRSEP "?" DIRSEP
                  "init.lua;",
                  root, root);
  lua_getfield(L, -2, "path");
  lua_concat(L, 2);
  lua_setfield(L, -2, "path");
#ifdef _WIN32
  lua_pushfstring(L, "%s" DIRSEP "%s" DIRSEP "?.dll;", root, build_dir);
#else
  lua_pushfstring(L, "%s" DIRSEP "%s" DIRSEP "?.so;", root, build_dir);
#endif
  lua_getfield(L, -2, "cpath");
  lua_concat(L, 2);
  lua_setfield(L, -2, "cpath");
  lua_pop(L, 1);
  lua_pushcfunction(L, traceback);
  if (luaL_loadbuffer(L, script, sizeof script - 1, "=multi_state") != LUA_OK) {
    failf("state %d: script: %s", id, lua_tostring(L, -1));
    lua_close(L);
    return NULL;
  }
  lua_pushinteger(L, id);
  lua_pushinteger(L, n_states);
  lua_pushstring(L, tag);
  lua_pushinteger(L, count);
  if (lua_pcall(L, 4, 0, -6) != LUA_OK) {
    failf("state %d: loading: %s", id, lua_tostring(L, -1));
    lua_close(L);
    return NULL;
  }
  lua_pop(L, 1);
  return L;
}

static void report_errors(lua_State *L, int id) {
  char buf[4096];
  if (call_str(L, id, "errors", NULL, buf, sizeof buf) && buf[0])
    failf("%s", buf);
}

/* Close a state; it must not take long even with operations pending. */
static double close_state(lua_State *L, int id, const char *phase) {
  double t0 = now_ms(), took;
  lua_close(L);
  took = now_ms() - t0;
  if (verbose) printf("multi_state: %s: lua_close(state %d) took %.1f ms\n", phase, id, took);
  if (took > 6000)
    failf("%s: lua_close of state %d took %.0f ms", phase, id, took);
  return took;
}

/* Distinct pipe names per phase and run. */
static void new_tag(const char *phase) {
  static int serial;
  snprintf(tag, sizeof tag, "%d-%ld-%s%d", proc_id(), (long)time(NULL) % 100000,
           phase, ++serial);
}

/* ------------------------------------------------- phase 1: round-robin */

static void phase_round_robin(void) {
  lua_State *S[MAX_STATES];
  int i, all;
  double deadline;
  new_tag("rr");
  for (i = 0; i < n_states; i++)
    if (!(S[i] = new_state(i))) return;
  for (i = 0; i < n_states; i++) call(S[i], i, "setup_servers", 0, 0);
  for (i = 0; i < n_states; i++) call(S[i], i, "setup_clients", 0, 0);
  for (i = 0; i < n_states; i++) call(S[i], i, "start_exchange", 0, 0);
  deadline = now_ms() + 60000;
  do {
    all = 1;
    for (i = 0; i < n_states; i++)
      if (call_bool(S[i], i, "tick", 0) != 1) all = 0;
  } while (!all && now_ms() < deadline);
  for (i = 0; i < n_states; i++) {
    char buf[256];
    if (!all)
      failf("round-robin: state %d not done after 60 s: %s", i,
            call_str(S[i], i, "summary", NULL, buf, sizeof buf));
    call(S[i], i, "finish", 0, 0);
    report_errors(S[i], i);
  }
  for (i = 0; i < n_states; i++) close_state(S[i], i, "round-robin");
}

/* ----------------------------------------------------- phase 2: threads */

typedef struct worker {
  int id;
  int delay_ms; /* phase 4: how long to step before closing */
  barrier *bar;
  int done;
} worker;

static THREAD_FN exchange_thread(void *arg) {
  worker *w = (worker *)arg;
  lua_State *L = new_state(w->id);
  double deadline;
  int r = 0;
  if (!L) {
    barrier_wait(w->bar);
    barrier_wait(w->bar);
    return THREAD_RET;
  }
  call(L, w->id, "setup_servers", 0, 0);
  barrier_wait(w->bar); /* every server exists: open without waiting */
  call(L, w->id, "setup_clients", 0, 0);
  call(L, w->id, "start_exchange", 0, 0);
  deadline = now_ms() + 60000;
  while (now_ms() < deadline && (r = call_bool(L, w->id, "tick", 10)) == 0) {
  }
  if (r != 1) {
    char buf[256];
    failf("threads: state %d not done after 60 s: %s", w->id,
          call_str(L, w->id, "summary", NULL, buf, sizeof buf));
  }
  w->done = r == 1;
  /* Everyone done before anyone closes: a peer may still read our acks.
   * Keep stepping meanwhile (our writes may still be in flight). */
  barrier_wait(w->bar);
  call(L, w->id, "finish", 0, 0);
  report_errors(L, w->id);
  close_state(L, w->id, "threads");
  return THREAD_RET;
}

static void run_threads(THREAD_FN (*fn)(void *), const int *delays) {
  thread_t t[MAX_STATES];
  worker w[MAX_STATES];
  barrier bar;
  int i;
  bar.n = n_states;
  bar.arrived = bar.generation = 0;
  for (i = 0; i < n_states; i++) {
    w[i].id = i;
    w[i].delay_ms = delays ? delays[i] : 0;
    w[i].bar = &bar;
    w[i].done = 0;
    if (!start_thread(&t[i], fn, &w[i])) {
      failf("cannot start thread %d", i);
      exit(1);
    }
  }
  for (i = 0; i < n_states; i++) join_thread(t[i]);
}

/* -------------------------------------- phase 3: close with ops pending */

static int allowed_end(const char *name) {
  return name && (strcmp(name, "EOF") == 0 || strcmp(name, "BROKEN_PIPE") == 0 ||
                  strcmp(name, "NOT_CONNECTED") == 0);
}

static void phase_close_order(const int *order, const char *label) {
  lua_State *S[MAX_STATES];
  int i, k, open[MAX_STATES];
  char phase[64];
  snprintf(phase, sizeof phase, "close order %s", label);
  new_tag("co");
  for (i = 0; i < n_states; i++) {
    if (!(S[i] = new_state(i))) return;
    open[i] = 1;
  }
  for (i = 0; i < n_states; i++) call(S[i], i, "setup_servers", 0, 0);
  for (i = 0; i < n_states; i++) call(S[i], i, "setup_clients", 0, 0);
  for (i = 0; i < n_states; i++) call(S[i], i, "start_pending", 0, 0);
  /* let the connects and the neighbour's drain happen */
  for (k = 0; k < 30; k++)
    for (i = 0; i < n_states; i++) call_bool(S[i], i, "tick", 1);
  for (k = 0; k < n_states; k++) {
    int c = order[k], prev = (c + n_states - 1) % n_states,
        next = (c + 1) % n_states;
    double deadline, took;
    char a[64], b[64];
    const char *ga = NULL, *gb = NULL;
    /* the state about to close still has operations pending */
    {
      lua_State *Lc = S[c];
      long pend;
      if (call(Lc, c, "pending_ops", 0, 1)) {
        pend = (long)lua_tointeger(Lc, -1);
        lua_pop(Lc, 1);
        if (pend < 3)
          failf("%s: state %d has only %ld operations pending at close", phase,
                c, pend);
      }
    }
    report_errors(S[c], c);
    took = close_state(S[c], c, phase);
    open[c] = 0;
    if (n_states < 2) continue;
    /* Its neighbours' reads towards it must end. */
    deadline = now_ms() + 5000;
    for (;;) {
      for (i = 0; i < n_states; i++)
        if (open[i]) call_bool(S[i], i, "tick", 1);
      ga = open[prev] ? call_str(S[prev], prev, "gone", "C", a, sizeof a) : "-";
      gb = open[next] ? call_str(S[next], next, "gone", "S", b, sizeof b) : "-";
      if ((ga && gb) || now_ms() > deadline) break;
    }
    if (verbose)
      printf("multi_state: %s: closed state %d (%.0f ms); state %d's client read: %s, "
             "state %d's server read: %s\n",
             phase, c, took, prev, open[prev] ? (ga ? ga : "pending") : "closed",
             next, open[next] ? (gb ? gb : "pending") : "closed");
    if (open[prev] && !allowed_end(ga))
      failf("%s: after state %d closed, state %d's read towards it: %s", phase,
            c, prev, ga ? ga : "still pending after 5 s");
    if (open[next] && !allowed_end(gb))
      failf("%s: after state %d closed, state %d's server read: %s", phase, c,
            next, gb ? gb : "still pending after 5 s");
  }
}

/* ------------------------------------------ phase 4: threads close alone */

static THREAD_FN closing_thread(void *arg) {
  worker *w = (worker *)arg;
  lua_State *L = new_state(w->id);
  double until;
  char a[64], b[64];
  const char *ga, *gb;
  if (!L) {
    barrier_wait(w->bar);
    barrier_wait(w->bar);
    return THREAD_RET;
  }
  call(L, w->id, "setup_servers", 0, 0);
  barrier_wait(w->bar);
  call(L, w->id, "setup_clients", 0, 0);
  call(L, w->id, "start_pending", 0, 0);
  barrier_wait(w->bar); /* all connected and pending */
  until = now_ms() + w->delay_ms;
  while (now_ms() < until) call_bool(L, w->id, "tick", 1);
  /* whatever ended so far must have ended the right way */
  ga = call_str(L, w->id, "gone", "C", a, sizeof a);
  gb = call_str(L, w->id, "gone", "S", b, sizeof b);
  if ((ga && !allowed_end(ga) && strcmp(ga, "DATA") != 0) ||
      (gb && !allowed_end(gb)))
    failf("threads closing: state %d: reads ended with %s / %s", w->id,
          ga ? ga : "-", gb ? gb : "-");
  report_errors(L, w->id);
  close_state(L, w->id, "threads closing");
  return THREAD_RET;
}

/* ------------------------------------------ the files of exiting processes */

#ifndef _WIN32
/* Run a chunk in L with (DIR, ME); 0 on error (reported). */
static int run_chunk(lua_State *L, int id, const char *chunk, const char *dir) {
  lua_pushcfunction(L, traceback);
  if (luaL_loadstring(L, chunk) != LUA_OK) {
    failf("state %d: chunk: %s", id, lua_tostring(L, -1));
    lua_pop(L, 2);
    return 0;
  }
  lua_pushstring(L, dir);
  lua_pushinteger(L, id);
  if (lua_pcall(L, 2, 0, -4) != LUA_OK) {
    failf("state %d: %s", id, lua_tostring(L, -1));
    lua_pop(L, 2);
    return 0;
  }
  lua_pop(L, 1);
  return 1;
}

static const char make_servers[] =
    "local dir, me = ...\n"
    "local np = require 'namedpipe'\n"
    "local name = ('%s/s%d.sock'):format(dir, me)\n"
    "B1 = assert(np.create(name))\n"
    "B2 = assert(np.create(name))\n"
    "M = assert(np.create(('%s/m%d.sock'):format(dir, me), { pipe_mode = 'message' }))\n"
    "C = assert(np.open(name))\n"
    "assert(B1:connect(2000))\n";

typedef struct exit_worker {
  int id;
  const char *dir;
  barrier *bar;
} exit_worker;

static void *exit_thread(void *arg) {
  exit_worker *w = (exit_worker *)arg;
  lua_State *L = new_state(w->id);
  if (L) run_chunk(L, w->id, make_servers, w->dir);
  barrier_wait(w->bar);
  if (!L) return NULL;
  for (;;) { /* until the process exits under it */
    lua_getglobal(L, "tick");
    lua_pushinteger(L, 1);
    lua_pcall(L, 1, 1, 0);
    lua_pop(L, 1);
  }
  return NULL;
}

static int mode_exit(const char *dir) {
  pthread_t t[MAX_STATES];
  exit_worker w[MAX_STATES];
  barrier bar;
  int i;
  bar.n = n_states + 1;
  bar.arrived = bar.generation = 0;
  new_tag("exit");
  for (i = 0; i < n_states; i++) {
    w[i].id = i;
    w[i].dir = dir;
    w[i].bar = &bar;
    if (pthread_create(&t[i], NULL, exit_thread, &w[i]) != 0) {
      failf("cannot start thread %d", i);
      return 1;
    }
  }
  barrier_wait(&bar);
  sleep_ms(30);
  printf("multi_state: exit with %d states stepping: %s\n", n_states,
         failures ? "FAILED" : "ok");
  exit(failures ? 1 : 0);
}

static int file_exists(const char *dir, const char *leaf) {
  char path[1024];
  struct stat sb;
  snprintf(path, sizeof path, "%s/%s", dir, leaf);
  return lstat(path, &sb) == 0;
}

/* fork(); the child runs `child`, the parent waits for it. */
static void in_child(void (*child)(lua_State *, const char *), lua_State *L,
                     const char *dir) {
  pid_t pid = fork();
  int status;
  if (pid < 0) {
    failf("fork: failed");
    return;
  }
  if (pid == 0) child(L, dir); /* never returns */
  if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) ||
      WEXITSTATUS(status) != 0)
    failf("fork: a child did not exit cleanly");
}

static void child_exits(lua_State *L, const char *dir) {
  (void)L;
  (void)dir;
  exit(0);
}

static void child_closes_then_exits(lua_State *L, const char *dir) {
  (void)dir;
  lua_close(L);
  _exit(0);
}

static void child_serves_then_exits(lua_State *L, const char *dir) {
  lua_State *own = new_state(9);
  (void)L;
  if (!own || !run_chunk(own, 9, make_servers, dir)) _exit(1);
  if (!file_exists(dir, "s9.sock")) _exit(1);
  exit(0);
}

/* A child that holds its copies of the parent's sockets open while the
 * parent closes its pipe and the peer's data and end arrive: they must not
 * come to the parent's loop for the pipe's freed block (a socket is taken
 * out of the epoll set before its close once the process has forked). */
static void parent_closes_while_child_holds(lua_State *L, const char *dir) {
  pid_t pid;
  int status;
  if (!run_chunk(L, 0,
                 "local dir = ...\n"
                 "local np = require 'namedpipe'\n"
                 "HS = assert(np.create(dir .. '/held.sock'))\n"
                 "HC = assert(np.open(dir .. '/held.sock'))\n"
                 "assert(HS:connect(2000))\n",
                 dir))
    return;
  pid = fork();
  if (pid < 0) {
    failf("fork: failed");
    return;
  }
  if (pid == 0) {
    sleep_ms(400); /* holding the copies */
    _exit(0);
  }
  run_chunk(L, 0,
            "local np = require 'namedpipe'\n"
            "HS:close()\n"
            "HS = nil\n"
            "collectgarbage()\n"
            "HC:write('to a closed pipe', function() end)\n"
            "HC:close()\n"
            "HC = nil\n"
            "for _ = 1, 10 do np.step(20) end\n",
            dir);
  if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) ||
      WEXITSTATUS(status) != 0)
    failf("fork: a child did not exit cleanly");
}

/* A name closed and not yet made again is kept aside until the next step
 * (listener_unix.c): the lock let go, the socket at PATH.idle~~~. Here
 * another owner (a second state: its own open lock file, as another
 * process) takes the name over and keeps it aside in its turn; then the
 * parent's step finds the files not its own, and must let go of the lock
 * bytes it took to look, although a fork()ed child shares its open lock
 * file: else the second state's step cannot take them, and leaves its
 * files behind. */
static void parked_while_child_lives(lua_State *L, const char *dir) {
  static const char close_kept[] =
      "local dir = ...\n"
      "local np = require 'namedpipe'\n"
      "assert(np.create(dir .. '/kept.sock')):close()\n";
  char idle[256];
  lua_State *other = new_state(8);
  pid_t pid;
  int status;
  size_t n;
  if (!other || !run_chunk(L, 0, close_kept, dir)) return;
  pid = fork();
  if (pid < 0) {
    failf("fork: failed");
    return;
  }
  if (pid == 0) {
    sleep_ms(400); /* sharing the parent's open files */
    _exit(0);
  }
  run_chunk(other, 8, close_kept, dir);
  run_chunk(L, 0, "require('namedpipe').step(0)\n", dir);
  run_chunk(other, 8, "require('namedpipe').step(0)\n", dir);
  snprintf(idle, sizeof idle, "%s/kept.sock.idle", dir);
  for (n = strlen(idle); n < 108; n++) idle[n] = '~';
  idle[n] = '\0';
  if (file_exists(dir, "kept.sock.lock") || file_exists(dir, idle + strlen(dir) + 1))
    failf("fork: a name kept aside left its files while a child lived");
  run_chunk(other, 8,
            "local dir = ...\n"
            "local np = require 'namedpipe'\n"
            "local s = assert(np.create(dir .. '/kept.sock', { first_pipe_instance = true }))\n"
            "s:close()\n"
            "np.step(0)\n",
            dir);
  lua_close(other);
  if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) ||
      WEXITSTATUS(status) != 0)
    failf("fork: a child did not exit cleanly");
}

static int mode_fork(const char *dir) {
  lua_State *L;
  new_tag("fork");
  if (!(L = new_state(0)) || !run_chunk(L, 0, make_servers, dir)) return 1;
  in_child(child_exits, L, dir);
  in_child(child_closes_then_exits, L, dir);
  in_child(child_serves_then_exits, L, dir);
  parent_closes_while_child_holds(L, dir);
  parked_while_child_lives(L, dir);
  if (!file_exists(dir, "s0.sock") || !file_exists(dir, "s0.sock.lock") ||
      !file_exists(dir, "m0.sock") || !file_exists(dir, "m0.sock.lock"))
    failf("fork: a child's end removed its parent's files");
  if (file_exists(dir, "s9.sock") || file_exists(dir, "s9.sock.lock"))
    failf("fork: a child's own files stayed after its exit");
  run_chunk(L, 0,
            "local dir = ...\n"
            "local np = require 'namedpipe'\n"
            "local c = assert(np.open(dir .. '/m0.sock', { pipe_mode = 'message' }))\n"
            "assert(M:connect(2000))\n"
            "c:write('still here')\n"
            "assert(M:read(nil, 2000) == 'still here')\n",
            dir);
  printf("multi_state: fork: %s\n", failures ? "FAILED" : "ok");
  exit(failures ? 1 : 0);
}
#endif

/* ------------------------------------------------------------------ main */

int main(int argc, char **argv) {
  const char *env;
  long handles_before, handles_after;
  double t0 = now_ms();
  int i, rr_orders = 0;
  if (argc == 3 && (strcmp(argv[1], "exit") == 0 || strcmp(argv[1], "fork") == 0)) {
#ifdef _WIN32
    fprintf(stderr, "%s: %s is for Linux\n", argv[0], argv[1]);
    return 2;
#else
    if ((env = getenv("NP_ROOT")) != NULL && *env)
      snprintf(root, sizeof root, "%s", env);
    if ((env = getenv("NP_BUILD_DIR")) != NULL && *env)
      snprintf(build_dir, sizeof build_dir, "%s", env);
    else
      snprintf(build_dir, sizeof build_dir, "build/linux");
    setvbuf(stdout, NULL, _IONBF, 0);
    return argv[1][0] == 'e' ? mode_exit(argv[2]) : mode_fork(argv[2]);
#endif
  }
  if (argc > 1) n_states = atoi(argv[1]);
  if (argc > 2) count = atoi(argv[2]);
  if (argc > 3) snprintf(root, sizeof root, "%s", argv[3]);
  if (n_states < 1 || n_states > MAX_STATES || count < 1) {
    fprintf(stderr, "usage: %s [states 1..%d] [messages] [repo root]\n", argv[0],
            MAX_STATES);
    return 2;
  }
  if (argc <= 3 && (env = getenv("NP_ROOT")) != NULL && *env)
    snprintf(root, sizeof root, "%s", env);
  if ((env = getenv("NP_BUILD_DIR")) != NULL && *env)
    snprintf(build_dir, sizeof build_dir, "%s", env);
  else
    snprintf(build_dir, sizeof build_dir, "build" DIRSEP "%s",
             strcmp(PLATFORM, "windows") == 0 ? "win" : "linux");
  setvbuf(stdout, NULL, _IONBF, 0);
  verbose = (env = getenv("NP_MS_VERBOSE")) != NULL && *env && *env != '0';

  handles_before = os_handles();

  phase_round_robin();
  printf("multi_state: round-robin: %d states x %d messages each way + local echo: %s "
         "(%.1f s)\n", n_states, count, failures ? "FAILED" : "ok", (now_ms() - t0) / 1000.0);

  run_threads(exchange_thread, NULL);
  printf("multi_state: threads: %d states stepping at once: %s (%.1f s)\n", n_states,
         failures ? "FAILED" : "ok", (now_ms() - t0) / 1000.0);

  {
    int order[MAX_STATES];
    for (i = 0; i < n_states; i++) order[i] = i; /* ascending */
    phase_close_order(order, "ascending");
    rr_orders++;
    for (i = 0; i < n_states; i++) order[i] = n_states - 1 - i; /* descending */
    phase_close_order(order, "descending");
    rr_orders++;
    for (i = 0; i < n_states; i++) order[i] = (i * 3 + 1) % n_states; /* scattered */
    {
      int seen[MAX_STATES] = {0}, ok = 1;
      for (i = 0; i < n_states; i++) ok &= !seen[order[i]]++;
      if (ok) {
        phase_close_order(order, "scattered");
        rr_orders++;
      }
    }
  }
  printf("multi_state: closing with operations pending, %d orders: %s (%.1f s)\n",
         rr_orders, failures ? "FAILED" : "ok", (now_ms() - t0) / 1000.0);

  {
    int delays[MAX_STATES];
    for (i = 0; i < n_states; i++) delays[i] = ((i * 7) % n_states) * 40 + 10;
    run_threads(closing_thread, delays);
  }
  printf("multi_state: threads closing their states at different times: %s (%.1f s)\n",
         failures ? "FAILED" : "ok", (now_ms() - t0) / 1000.0);

  handles_after = os_handles();
  if (handles_before >= 0 &&
      handles_after > handles_before + (strcmp(PLATFORM, "windows") == 0 ? 2 : 0))
    failf("%s %ld before, %ld after", strcmp(PLATFORM, "windows") == 0
                                          ? "process handles"
                                          : "file descriptors",
          handles_before, handles_after);

  if (failures) {
    printf("multi_state: FAILED (%d failures) in %.1f s\n", failures,
           (now_ms() - t0) / 1000.0);
    return 1;
  }
  printf("multi_state: %s, %d states, %d messages each way: OK in %.1f s "
         "(%s %ld -> %ld)\n",
         PLATFORM, n_states, count, (now_ms() - t0) / 1000.0,
         strcmp(PLATFORM, "windows") == 0 ? "handles" : "fds", handles_before,
         handles_after);
  return 0;
}
