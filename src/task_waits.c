/*
 * task_waits.c - a task's read and write, waiting from their C methods
 * (Lua 5.3 and later) instead of through the Lua layer, and the writes a
 * task need not wait for at all. methods.c calls them first and takes the
 * usual way when they decline (-1).
 */
#include "lauxlib.h"
#include "lua.h"

#include "compat.h"

#include "binding.h"
#include "main_waits.h"
#include "np.h"
#include "task_waits.h"

/* A task's write that the system takes at once returns at once: nothing
 * to wait for, so no completion, no timer, no switch back to the loop
 * (np_write_now). Not more than NP_WRITES_NOW in a row, so that a task
 * writing to a fast reader still lets the others run (as Tokio's budget
 * makes a task yield after so many operations that were ready): the next
 * one waits as usual. In a row: with no step between them (step_loop
 * starts the count again), so that a task that writes now and then never
 * waits for a write the pipe would take (on Lua 5.1, inside a pcall, such
 * a wait raises). Counts as a completion for step_loop (wrote_now).
 * A waiting write outside a task takes no part in the budget (not
 * budgeted): it blocks its caller anyway, and one that stepped would run
 * the other ready callbacks inside the one it was called from. */
#define NP_WRITES_NOW 32

/* May this write be done at once? The budget's one look per write. */
static int at_once_allowed(loop_ud *lu, int budgeted) {
  if (budgeted && lu->writes_now >= NP_WRITES_NOW) {
    lu->writes_now = 0;
    return 0;
  }
  return 1;
}

static void wrote_at_once(loop_ud *lu, int budgeted) {
  if (budgeted) lu->writes_now++;
  lu->wrote_now = 1;
}

int np_write_now_budget(loop_ud *lu, np_pipe *p, const char *data,
                        size_t len, size_t *written, int budgeted) {
  if (NP_WRITE_AT_ONCE_BY_START || !at_once_allowed(lu, budgeted) ||
      !np_write_now(p, data, len, written))
    return 0;
  wrote_at_once(lu, budgeted);
  return 1;
}

/* A part taken at once must not be followed by anything that can fail
 * before the rest is on its way: the caller would be told the write
 * failed, the part would be in the pipe and the rest nowhere, and the
 * reader would take the next write's bytes for the rest of this one. So
 * what the rest needs is made before the try (its anchors: in
 * np_write_now_or_rest, task_waits.h; its
 * request, by the backend: np_write_now), and the rest is started at once
 * with no callback. What the caller then does to wait for it (a table, a
 * closure, a deadline) may run out of memory: the rest goes on all the
 * same, as the bytes of a write that an error unwound do (README). */
int np_write_rest_now(lua_State *L, pipe_ud *u, int data_arg,
                      const char *data, size_t len, size_t written) {
  int keeps;
  pin_pipe(L, u);
  if (!np_write_start(u->p, data + written, len - written, NP_NOREF, &keeps,
                      NULL)) { /* (cannot happen: set aside) */
    unpin_pipe(L, u, ANCHORS_UPV);
    return luaL_error(L, "not enough memory");
  }
  u->rest_state = NP_REST_WAITING;
  if (keeps) {
    lua_pushvalue(L, data_arg);
    np_write_keep(u->p, anchor(L, u->lu, ANCHORS_UPV));
  }
  return 2;
}

int np_write_attach_top(lua_State *L, pipe_ud *u) {
  int ref;
  if (!u->p && u->rest_state == NP_REST_WAITING) {
    /* closed since (a finalizer): the rest ends CLOSED, its callback would
     * be told so; its completion, still to come, calls nothing */
    u->rest_state = NP_REST_ENDED;
    u->rest_err = NP_CLOSED;
    u->rest_code = 0;
  }
  if (u->rest_state == NP_REST_ENDED) { /* (a nested step handed it out) */
    lua_pop(L, 1);
    return 0;
  }
  reserve_anchors(L, u->lu, 1);
  ref = anchor(L, u->lu, ANCHORS_UPV);
  if (u->rest_state != NP_REST_WAITING || !np_write_attach(u->p, ref)) {
    release(L, u->lu, ANCHORS_UPV, ref);
    return luaL_error(L, "namedpipe: no rest of a write to wait for");
  }
  u->rest_state = NP_REST_NONE;
  return 1;
}

int np_push_rest_end(lua_State *L, pipe_ud *u, size_t sent) {
  np_status st;
  u->rest_state = NP_REST_NONE;
  if (u->rest_err == NP_OK) {
    lua_pushinteger(L, (lua_Integer)(sent + u->rest_len));
    return 1;
  }
  st.err = u->rest_err;
  st.code = u->rest_code;
  return np_push_status(L, &st);
}

/* Where the backend does a waited-for write at once only after starting
 * it (Windows: np_write_start's done), the same budget applies there. */
int np_write_start_waited(loop_ud *lu, np_pipe *p, const char *data,
                          size_t len, int ref_cb, int *keeps, int *done,
                          int budgeted) {
  int ask = NP_WRITE_AT_ONCE_BY_START && at_once_allowed(lu, budgeted);
  *done = 0;
  if (!np_write_start(p, data, len, ref_cb, keeps, ask ? done : NULL))
    return 0;
  if (*done) wrote_at_once(lu, budgeted);
  return 1;
}

#if NP_TASK_WAITS_IN_C
/* A task's read or write, the usual waiting call, made here rather than
 * in the Lua layer (lua/namedpipe.lua, wait_end): the operation starts
 * with the task's wait record as its callback, a timeout arms the
 * record's deadline, and the method yields; the record's wake resumes it
 * with the results. Only for the plain case; anything else (read-ahead,
 * a bad argument, an operation pending, not a task) takes the usual way,
 * which also names what is wrong. The fields of a record it uses (n,
 * ticket, wake) are namedpipe.task's (T.wait_record). */

/* The running task's wait record, pushed; 0 (nothing pushed) outside a
 * task (the main thread, a coroutine of the caller's own: those block
 * instead, in the Lua layer), and in a task that cannot yield where it is
 * (inside a C function's call of Lua, such as a callback of a step the
 * task called): started here, the operation would outlive the failed
 * yield with the task's wake as its callback (namedpipe.task). */
static int push_task_record(lua_State *L) {
  if (!lua_isyieldable(L)) return 0;
  if (lua_rawgeti(L, WAITING_UPV, W_TASKS) != LUA_TTABLE) {
    lua_pop(L, 1);
    return 0;
  }
  if (lua_pushthread(L) || lua_rawget(L, -2) != LUA_TTABLE) {
    lua_pop(L, 2); /* the main thread, or a coroutine not a task's */
    return 0;
  }
  lua_replace(L, -2);
  return 1;
}

/* The record at rec armed for a new wait (as T.wait_record arms it). */
static void arm_record(lua_State *L, int rec) {
  lua_Integer n;
  lua_rawgeti(L, WAITING_UPV, W_KEY_N);
  lua_pushvalue(L, -1);
  lua_rawget(L, rec);
  n = lua_tointeger(L, -1) + 1;
  lua_pop(L, 1);
  lua_pushinteger(L, n);
  lua_rawset(L, rec); /* rec.n = n */
  lua_rawgeti(L, WAITING_UPV, W_KEY_TICKET);
  lua_pushinteger(L, n);
  lua_rawset(L, rec); /* rec.ticket = n */
}

/* rec.wake, pushed (rec: the record's index). */
static void push_wake(lua_State *L, int rec) {
  lua_rawgeti(L, WAITING_UPV, W_KEY_WAKE);
  lua_rawget(L, rec);
}

/* The record's (at rec) deadline, for a wait with a timeout; before the
 * operation starts, as what may raise (out of memory) must come: once the
 * operation has started with the record's wake as its callback, an error
 * would end the call with its result still to come to the task, which
 * would then never see it (a read's bytes lost; a write done, while its
 * caller was told it failed). */
static void arm_deadline(lua_State *L, int rec, const char *kind, int has_t,
                         lua_Number ms) {
  if (has_t && lua_rawgeti(L, WAITING_UPV, W_ARM_DEADLINE) == LUA_TFUNCTION) {
    lua_pushvalue(L, rec);
    lua_pushvalue(L, 1);
    lua_pushstring(L, kind);
    lua_pushnumber(L, ms);
    /* (the steps that looked so far: the layer's own call would ask) */
    lua_pushinteger(L,
                    (lua_Integer)((loop_ud *)lua_touserdata(L, LOOP_UPV))->looks);
    lua_call(L, 5, 0);
  } else if (has_t) {
    lua_pop(L, 1);
  }
}

/* The deadline armed for a wait that has nothing to wait for after all
 * (its operation could not start, or finished in the call): a record
 * whose deadline is gone does nothing when its key in the timer heap comes
 * due (namedpipe.task, run_due). The field exists: nothing allocates. */
static void disarm_deadline(lua_State *L, int rec, int has_t) {
  if (!has_t) return;
  lua_pushnil(L);
  lua_setfield(L, rec, "due");
}

/* The yield, after the operation started with the record as callback.
 * What resumes the task (the record's wake) is what the method returns:
 * above base on the stack. */
static int task_resumed(lua_State *L, int status, lua_KContext base) {
  (void)status;
  return lua_gettop(L) - (int)base;
}

static int task_wait(lua_State *L, int base, lua_KFunction k) {
  lua_settop(L, base);
  return lua_yieldk(L, 0, (lua_KContext)base, k);
}

/* A read of its kind (main_waits.h) in a task, nothing read ahead: -1 when
 * the usual way must take it. (The kind's name is the one the Lua layer's
 * deadline cancels by.) */
int np_task_wait(lua_State *L, pipe_ud *u, int kind) {
  static const char *const names[] = {"read", "read_into", "transact",
                                      "readable"};
  int top = lua_gettop(L), has_t, rec, t_arg;
  lua_Number ms = 0;
  size_t n;
  if (!(t_arg = np_wait_args(L, u, kind, &n)) ||
      !np_plain_timeout(L, t_arg, &ms, &has_t))
    return -1;
  if (read_busy(u) || !push_task_record(L)) return -1;
  rec = lua_gettop(L);
  arm_record(L, rec);
  push_wake(L, rec);
  /* what may raise first: the anchors the start takes, the deadline; the
   * start itself then cannot fail */
  reserve_anchors(L, u->lu, 3);
  arm_deadline(L, rec, names[kind], has_t, ms);
  np_wait_start(L, u, kind, rec + 1, n);
  return task_wait(L, top, task_resumed);
}

/* A write the socket took part of at once: its count is below base. */
static int task_write_resumed(lua_State *L, int status, lua_KContext base) {
  int n = lua_gettop(L) - (int)base;
  (void)status;
  if (n > 0 && lua_isinteger(L, (int)base + 1))
    lua_pushinteger(L, lua_tointeger(L, (int)base) +
                           lua_tointeger(L, (int)base + 1));
  else
    return n;
  lua_replace(L, (int)base + 1);
  return n;
}

/* write(data [, timeout]) in a task: done at once when the system takes
 * it all (np_write_now_budget); else it waits, for the rest of a byte pipe's
 * data when the socket took a part (np_write_now_or_rest). -1 when the
 * usual way must take it. */
int np_task_write(lua_State *L, pipe_ud *u) {
  int top = lua_gettop(L), has_t, rec, keeps, ref_cb, done;
  lua_Number ms = 0;
  size_t len, sent = 0;
  const char *data;
  if (top < 2 || top > 3 || !u || lua_type(L, 2) != LUA_TSTRING ||
      !np_plain_timeout(L, 3, &ms, &has_t) || !push_task_record(L))
    return -1;
  rec = lua_gettop(L);
  data = lua_tolstring(L, 2, &len);
  switch (np_write_now_or_rest(L, u, 2, data, len, &sent, 1)) {
    case 1:
      lua_pushinteger(L, (lua_Integer)sent);
      return 1;
    case 2: /* the rest started: its end is what the task waits for */
      arm_record(L, rec);
      push_wake(L, rec);
      /* (the deadline before the wake is attached: should arming raise,
       * no wake of this record is left to resume the task's next wait) */
      arm_deadline(L, rec, "write", has_t, ms);
      if (!np_write_attach_top(L, u)) { /* ended already: nothing to wait for */
        disarm_deadline(L, rec, has_t);
        return np_push_rest_end(L, u, sent);
      }
      lua_settop(L, rec);
      lua_pushinteger(L, (lua_Integer)sent); /* at top + 2: the base */
      return task_wait(L, top + 2, task_write_resumed);
  }
  arm_record(L, rec);
  push_wake(L, rec);
  /* what may raise first (the anchors, the deadline), as for a read */
  reserve_anchors(L, u->lu, 3);
  arm_deadline(L, rec, "write", has_t, ms);
  ref_cb = anchor_operation(L, u, rec + 1);
  if (!np_write_start_waited(u->lu, u->p, data, len, ref_cb, &keeps, &done,
                             1)) {
    release(L, u->lu, ANCHORS_UPV, ref_cb); /* as raw_write */
    unpin_pipe(L, u, ANCHORS_UPV);
    disarm_deadline(L, rec, has_t);
    return luaL_error(L, "not enough memory");
  }
  if (done) { /* nothing to wait for after all: the record is not woken */
    release(L, u->lu, ANCHORS_UPV, ref_cb);
    disarm_deadline(L, rec, has_t);
    lua_pushinteger(L, (lua_Integer)len);
    return 1;
  }
  if (keeps) { /* the string: anchored while the backend points into it */
    lua_pushvalue(L, 2);
    np_write_keep(u->p, anchor(L, u->lu, ANCHORS_UPV));
  }
  return task_wait(L, top, task_resumed);
}
#endif

