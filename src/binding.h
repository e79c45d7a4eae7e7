/* binding.h - what the two halves of module `namedpipe.core` share:
 * binding.c (the module, its loop userdata, step) and methods.c (the pipe
 * userdata and its methods). The helpers every operation runs through are
 * static inline here, so splitting the files costs the hot path no call. */
#ifndef NP_BINDING_H
#define NP_BINDING_H

#include <limits.h>
#include <stdlib.h>

#include "lauxlib.h"
#include "lua.h"

#include "compat.h"

#include "args.h"
#include "buffer.h"
#include "np.h"

/* Every function of the module and every method share four upvalues: the
 * loop userdata, the anchor table (callbacks, write strings, pipes in
 * flight), the pipe metatable and the waiting table (see divert: the Lua
 * layer's functions by slot), so the hot path never looks anything up by
 * name. */
#define LOOP_UPV lua_upvalueindex(1)
#define ANCHORS_UPV lua_upvalueindex(2)
#define PIPE_MT_UPV lua_upvalueindex(3)
#define WAITING_UPV lua_upvalueindex(4)
#define N_UPVALUES 4

NP_INTERNAL_BEGIN

/* Kept write callbacks with no write left that wait for the step's end
 * (loop_ud.unused_kept); one more is let go at once. */
#define NP_UNUSED_KEPT 16

typedef struct loop_ud {
  np_loop *loop; /* NULL once closed (lua_close) */
  /* The anchor table's free slots (anchor/release below): the table has
   * keys 1..anchors_top, free_slots[0..n_free) are free; free_slots has
   * room for anchors_top entries, so releasing never allocates. */
  int *free_slots;
  int n_free, anchors_top;
  /* The pure-Lua layer has work queued or a timer pending: step() goes
   * through it (divert). Set by layer.set_task_work, with what it is
   * made of: something to run at the next step (soon_work: a task spawned
   * or woken, say) and the earliest timer's deadline (has_timer, timer_at,
   * in np_now_ms time), which step_loop's rounds watch. */
  int task_work, soon_work, has_timer;
  double timer_at;
  /* core._attach has handed out the private half (once per Lua state). */
  int attached;
  /* Completions handed out so far (step_loop: did a nested step take one
   * while this one prepared?). */
  unsigned long taken;
  /* The steps that looked for completions (np_loop_wait) so far: a task's
   * timed wait is cancelled only once one has looked since it began (the
   * Lua layer's wait_timed_out), as a waiting call outside a task steps
   * once before its deadline, so that a poll (timeout 0) gets what is
   * there already. */
  unsigned long looks;
  /* Buffers collected while being filled (buffer.c). */
  np_orphans orphans;
  /* The pipe whose completion's callback runs (step_loop): it keeps its
   * anchor until settle_held, after the callback. */
  struct pipe_ud *held;
  /* A write was done at once (layer.write_now) since the step's last
   * look: as a write's completion would, it asks step_loop for another
   * round (its peer, perhaps in this loop, may now have something). */
  int wrote_now;
  /* Writes tasks did at once in a row (methods.c, write_now_budget). */
  int writes_now;
  /* Pipes whose kept write callback no write uses any more
   * (write_callback_anchor): let go at the end of the step. */
  struct pipe_ud *unused_kept[NP_UNUSED_KEPT];
  int n_unused_kept;
} loop_ud;

typedef struct pipe_ud {
  const char *tag; /* &pipe_tag: what to_pipe recognises */
  np_pipe *p;   /* NULL once closed */
  loop_ud *lu;  /* its loop's (the loop userdata outlives every pipe's) */
  int inflight; /* operations started from Lua, not yet dispatched */
  int self_ref; /* anchor of this userdata while inflight > 0 */
  int is_server;
  /* The pure-Lua layer holds bytes read ahead for this pipe (framing):
   * reads go through it (divert). Set by layer.set_readahead. */
  int readahead;
  /* read_start (reading.c): its callback's anchor while it reads
   * (LUA_NOREF: not reading); run_open: a read of it was handed out and
   * its callback runs (none pending); read_stopping: read_stop cancelled
   * its pending read, whose end (an error) then calls nothing;
   * read_ending: cancel("read") did, and that read's end, whatever it is,
   * is the last call; read_restart: a read_start came while a stopped
   * read's end was still to come, and took it over (its callback put in
   * the same anchor): that end, if it is the cancel's, only starts the
   * next read (NP_RESTART_DISCONNECTED: unless disconnect() came since:
   * then it ends the reading as NOT_CONNECTED). read_end_reason: the
   * reason of the last cancel("read"), which a taken-over end reports. */
  int read_cb, run_open, read_stopping, read_ending, read_restart;
  np_err read_end_reason;
  /* The write callback kept anchored (write_callback_anchor): its anchor
   * (LUA_NOREF: none), the function's identity (lua_topointer: it cannot
   * be collected and its address reused while anchored), the writes in
   * flight that use it, and whether it is in loop_ud.unused_kept. */
  int wcb_ref, wcb_uses, wcb_listed;
  const void *wcb_id;
  /* disconnect()s that succeeded: a waiting read made in C tells the Lua
   * layer whether its connection is still the one it began on
   * (main_waits.c), as the layer's own sessions count them. */
  unsigned disconnects;
  /* A waiting read outside a task (the main thread's, made in C:
   * main_waits.c; the Lua layer's, on the main thread or in a coroutine
   * of the script's: layer.hold_read) holds the read slot from its start
   * until that wait returns (and while it waits for an abandoned read to
   * end first, in a task too), also in the rest of the step that ended its
   * read: the callbacks run there must not start a read of their own
   * before it has returned its bytes (theirs would take the bytes that
   * follow; should the step raise, the wait's would be handed over behind
   * them; and a framing read's next read would be refused). A task needs
   * none: it is resumed by its read's end itself. */
  int read_held;
  /* The rest of a waiting write that the system took a part of at once
   * (task_waits.c, np_write_rest_now), started before its caller's wait
   * gives it a callback: NP_REST_WAITING until then; NP_REST_ENDED when a
   * step nested in between (a hook, a finalizer) handed its completion
   * out first, with what it ended with, which the wait then returns. */
  int rest_state;
  np_err rest_err;
  long rest_code;
  size_t rest_len;
} pipe_ud;

enum { NP_REST_NONE, NP_REST_WAITING, NP_REST_ENDED }; /* pipe_ud.rest_state */

#define NP_RESTART_DISCONNECTED 2 /* pipe_ud.read_restart */

/* ---------------------------------------------------------------- anchors */

/* Anchor the value on top of the stack (popped) in the anchor table (at
 * index t: ANCHORS_UPV, or a copy on the stack); its slot number goes with
 * the operation to the backend and comes back in the completion. What
 * luaL_ref does, without its free list kept in the table itself:
 * luaL_ref/luaL_unref cost five table accesses a pair, on every operation;
 * this is one access each way. The loop_ud comes from the caller (a
 * pipe_ud has it): looking an upvalue up through the API costs as much as
 * the table access (bench/README.md has what each was worth).
 *
 * A free slot holds false, never nil: the table's keys are 1..anchors_top,
 * all present, so they stay in its array part, and storing into one never
 * allocates and so never raises. That lets an anchor be taken after the
 * backend has started an operation (a write's bytes, only when the backend
 * keeps them: np_write_start's *keeps), provided reserve_anchors made room
 * first, before anything was started. */
static inline int anchor(lua_State *L, loop_ud *lu, int t) {
  int slot = lu->free_slots[--lu->n_free]; /* reserve_anchors: one is free */
  lua_rawseti(L, t, slot);
  return slot;
}

/* At least n free slots (may raise: call before starting anything). The
 * bookkeeping is sound at every step: should growing the table raise (out
 * of memory) half way, the keys added so far are counted and free, and
 * the next call goes on from there. */
static inline void reserve_anchors(lua_State *L, loop_ud *lu, int n) {
  int top;
  int *fs;
  if (lu->n_free >= n) return;
  if (lu->anchors_top > INT_MAX / 2 - 64)
    luaL_error(L, "namedpipe: too many operations in flight");
  top = lu->anchors_top * 2 + 64;
  fs = (int *)realloc(lu->free_slots, (size_t)top * sizeof *fs);
  if (!fs) luaL_error(L, "not enough memory");
  lu->free_slots = fs; /* room for top entries: releasing never allocates */
  while (lu->anchors_top < top) {
    lua_pushboolean(L, 0);
    lua_rawseti(L, ANCHORS_UPV, lu->anchors_top + 1); /* may raise */
    lu->free_slots[lu->n_free++] = ++lu->anchors_top;
  }
}

/* Let an anchored value go (NP_NOREF: nothing). */
static inline void release(lua_State *L, loop_ud *lu, int t, int slot) {
  if (slot == NP_NOREF) return;
  lua_pushboolean(L, 0);
  lua_rawseti(L, t, slot);
  lu->free_slots[lu->n_free++] = slot;
}

/* ---- operations in flight: their anchors, and the pipe's (methods.c,
 * task_waits.c) ---- */

/* One more operation in flight for the pipe at index 1: it anchors the
 * userdata, unless already anchored, so it outlives every completion still
 * to come. */
static inline void pin_pipe(lua_State *L, pipe_ud *u) {
  u->inflight++;
  if (u->self_ref == LUA_NOREF) {
    lua_pushvalue(L, 1);
    u->self_ref = anchor(L, u->lu, ANCHORS_UPV);
  }
}

/* One operation fewer, at once (an operation that could not start): the
 * last one lets the userdata go, unless its callback is running
 * (settle_held lets it go then). t: the anchor table's index. */
static inline void drop_write_callback(lua_State *L, pipe_ud *u, int t);

static inline void unpin_pipe(lua_State *L, pipe_ud *u, int t) {
  if (--u->inflight == 0 && u->lu->held != u) {
    release(L, u->lu, t, u->self_ref);
    u->self_ref = LUA_NOREF;
    drop_write_callback(L, u, t);
  }
}

/* step_loop takes one operation off the pipe before running its callback
 * but lets the anchor go only after it (here), if nothing is in flight by
 * then: a callback that starts the next operation (a read re-armed, a
 * reply written) finds the pipe anchored, where letting it go first cost a
 * table store to release and one to anchor again for each such callback.
 * A callback that raises leaves lu->held set: the next step settles it,
 * and so does close() of that pipe (m_close), so that a pipe closed after
 * its callback raised can be collected without another step. The held
 * pipe is anchored, so the pointer is good until settled; a nested step
 * (or that close, from inside the callback) settles it early, and the
 * outer step then finds held NULL or another pipe, anchored too: it uses
 * the pipe after its callback only through lu->held, or for a read_start
 * run, which stays in flight (and so anchored) until np_reading_done. t:
 * the anchor table's index. */
static inline void settle_held(lua_State *L, loop_ud *lu, int t) {
  pipe_ud *u = lu->held;
  if (!u) return;
  lu->held = NULL;
  if (u->inflight == 0 && u->self_ref != LUA_NOREF) {
    release(L, lu, t, u->self_ref);
    u->self_ref = LUA_NOREF;
    drop_write_callback(L, u, t);
  }
}

/* Is the read slot taken: a read, read_into, readable() or transact
 * pending, a read_start reading (between its reads too), or a waiting
 * read not yet returned (read_held)? */
static inline int read_busy(const pipe_ud *u) {
  return u->read_cb != LUA_NOREF || u->read_held ||
         np_pipe_busy(u->p, NP_OP_READ);
}

/* Anchor the callback at `arg` (and the pipe) before the backend sees the
 * operation; room is left for one more anchor (a write's bytes). */
static inline int anchor_operation(lua_State *L, pipe_ud *u, int arg) {
  int ref;
  reserve_anchors(L, u->lu, 3);
  lua_pushvalue(L, arg);
  ref = anchor(L, u->lu, ANCHORS_UPV);
  pin_pipe(L, u);
  return ref;
}

/* A write's callback: as anchor_operation, but the anchor of a callback
 * given to every write (an on_write function, the usual way) is kept from
 * one write to the next, where anchoring and letting it go cost two table
 * stores a write (a fifth of a write's cost in the binding, bench/README.md).
 * Once no write uses it, it is kept only until the end of the step that
 * ran its last call (a reply written from a read's callback finds it
 * there) and never while nothing of the pipe is in flight: so it keeps
 * nothing alive after that step that the writes' own anchors would not
 * have kept. (Kept for as long as the pipe had anything in flight, a
 * callback that referred to another pipe kept that one from being
 * collected for as long as this one read.) Another callback takes the
 * place once no write uses the kept one; until then it is anchored as any
 * operation's. */
static inline int write_callback_anchor(lua_State *L, pipe_ud *u, int arg) {
  const void *id = lua_topointer(L, arg);
  int ref;
  if (u->wcb_ref != LUA_NOREF && u->wcb_id == id) {
    reserve_anchors(L, u->lu, 3); /* (as anchor_operation leaves) */
    u->wcb_uses++;
    pin_pipe(L, u);
    return u->wcb_ref;
  }
  if (u->wcb_ref != LUA_NOREF && u->wcb_uses == 0)
    drop_write_callback(L, u, ANCHORS_UPV);
  ref = anchor_operation(L, u, arg);
  if (u->wcb_ref == LUA_NOREF) {
    u->wcb_ref = ref;
    u->wcb_id = id;
    u->wcb_uses = 1;
  }
  return ref;
}

/* A write's callback anchor let go: the kept one counts one use fewer,
 * and with none left waits for the step's end (flush_unused_kept), or
 * goes now if too many wait. (A slot is one value's while taken, so an
 * operation's ref equals wcb_ref only if it is the kept anchor.) */
static inline void release_write_callback(lua_State *L, pipe_ud *u, int t,
                                          int ref) {
  loop_ud *lu = u->lu;
  if (ref == LUA_NOREF || ref != u->wcb_ref) {
    release(L, lu, t, ref);
  } else if (--u->wcb_uses == 0 && !u->wcb_listed) {
    if (lu->n_unused_kept < NP_UNUSED_KEPT) {
      lu->unused_kept[lu->n_unused_kept++] = u;
      u->wcb_listed = 1;
    } else {
      drop_write_callback(L, u, t);
    }
  }
}

/* The kept write callback let go (no write uses it): at the step's end,
 * when the pipe is let go (nothing in flight), or when another callback
 * takes its place. A listed pipe is anchored (it is let go only through
 * here), so the list never points at a collected userdata. */
static inline void drop_write_callback(lua_State *L, pipe_ud *u, int t) {
  if (u->wcb_ref == LUA_NOREF) return;
  release(L, u->lu, t, u->wcb_ref);
  u->wcb_ref = LUA_NOREF;
  if (u->wcb_listed) {
    loop_ud *lu = u->lu;
    int i;
    for (i = 0; lu->unused_kept[i] != u; i++) {
    }
    lu->unused_kept[i] = lu->unused_kept[--lu->n_unused_kept];
    u->wcb_listed = 0;
  }
}

/* The step's end (or the start of the next, after one that raised): the
 * kept write callbacks no write uses go. */
static inline void flush_unused_kept(lua_State *L, loop_ud *lu, int t) {
  while (lu->n_unused_kept > 0) {
    pipe_ud *u = lu->unused_kept[lu->n_unused_kept - 1];
    if (u->wcb_uses == 0) {
      drop_write_callback(L, u, t); /* (takes it off the list) */
    } else { /* written again since: kept, and off the list */
      lu->n_unused_kept--;
      u->wcb_listed = 0;
    }
  }
}

static inline np_loop *check_loop(lua_State *L) {
  loop_ud *lu = (loop_ud *)lua_touserdata(L, LOOP_UPV);
  if (!lu->loop) luaL_error(L, "namedpipe: the loop is closed");
  return lu->loop;
}

/* ------------------------------------------------------ the waiting form */

/* A method called without a callback (the waiting form), a read of a pipe
 * with bytes read ahead, or a step with tasks due, is the pure-Lua layer's
 * (lua/namedpipe.lua): it hands its functions over by name once
 * (layer.hand_over, below), each is kept in its slot of the waiting table,
 * and such a call is handed to it with the same arguments; its results
 * are the call's. Every other call stays in C: the callback form never
 * runs a line of Lua before its callback. Without a function in the slot
 * (namedpipe.core alone) the call goes on here and fails as a missing
 * callback. Returns the number of results, or -1 when the slot is empty. */
enum {
  W_CONNECT = 1, W_READ, W_READ_INTO, W_READABLE, W_WRITABLE, W_WRITE,
  W_TRANSACT, W_TRY_READ, W_PEEK, W_STEP, W_READ_START, W_READ_STOP,
  W_CANCEL, W_LAST = W_CANCEL,
  /* Not waiting functions: what task_waits.c needs to make a task's read or
   * write wait by itself: namedpipe.task's table
   * of wait records by coroutine, and the Lua layer's function that arms
   * a record's timeout (handed over as "task_records", "arm_deadline"). */
  W_TASKS, W_ARM_DEADLINE,
  /* The Lua layer's set of pipes whose read_start a read_stop stopped from
   * elsewhere ("stopped_reads"): a waiting read waits for that read's end
   * rather than be refused (methods.c, raw_read_stop). */
  W_STOPPED,
  /* What main_waits.c needs to make a waiting read on the main thread by
   * itself: the module's step (core.step: tasks and timers run as with
   * any step), the Lua layer's function that cancels the read as its own
   * waits do, and the one that takes the read over when an error unwinds
   * the call ("main_step", "cancel_main_read", "abandon_wait"). */
  W_MAIN_STEP, W_MAIN_CANCEL, W_ABANDON_WAIT,
  /* The Lua layer's wait for the rest of a write that the system took a
   * part of at once, already started ("write_rest": main_waits.c, and
   * np_write_now_or_rest). */
  W_WRITE_REST,
  /* The Lua layer's framing reads in progress, by pipe ("framing_reads"):
   * the record whose stop a deadline's cancel of the read slot sets
   * (methods.c, cancel_checked: raw_cancel_if, raw_cancel_held). */
  W_FRAMING,
  /* the record fields it reads and writes, as strings made once (a
   * lua_getfield would make each anew from its C string) */
  W_KEY_N, W_KEY_TICKET, W_KEY_WAKE
};
/* The function in slot w of the waiting table, pushed; 0 (nothing pushed)
 * if there is none. */
static inline int push_waiting(lua_State *L, int w) {
  lua_rawgeti(L, WAITING_UPV, w);
  if (lua_type(L, -1) == LUA_TFUNCTION) return 1;
  lua_pop(L, 1);
  return 0;
}
#if LUA_VERSION_NUM >= 503
static inline int waiting_done(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  return lua_gettop(L);
}
#elif NP_C_CAN_YIELD
static inline int waiting_done(lua_State *L) { return lua_gettop(L); }
#endif

/* Where a C function cannot be suspended (compat.h), a method returns this
 * marker alone instead, and its Lua wrapper (lua/namedpipe.lua) makes the
 * waiting call itself: layer.divert_marker. */
extern const char np_divert_marker;

static inline int divert(lua_State *L, int w) {
  if (!push_waiting(L, w)) return -1;
#if NP_C_CAN_YIELD
  lua_insert(L, 1);
  /* with a continuation: a waiting call suspends its task (yields) */
  lua_callk(L, lua_gettop(L) - 1, LUA_MULTRET, 0, waiting_done);
  return lua_gettop(L);
#else
  lua_pop(L, 1);
  lua_pushlightuserdata(L, (void *)&np_divert_marker);
  return 1;
#endif
}

/* step's hand-over never suspends its caller (the tasks it runs are
 * coroutines of their own): a plain call, on every version. */
static inline int divert_call(lua_State *L, int w) {
  if (!push_waiting(L, w)) return -1;
  lua_insert(L, 1);
  lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
  return lua_gettop(L);
}

/* A timeout argument a wait made in C can take as it is: nil (*has 0), or
 * a number >= 0 (NaN is not). Else 0: the usual way raises. */
static inline int np_plain_timeout(lua_State *L, int arg, lua_Number *ms,
                                   int *has) {
  *has = !lua_isnoneornil(L, arg);
  if (!*has) return 1;
  if (lua_type(L, arg) != LUA_TNUMBER) return 0;
  *ms = lua_tonumber(L, arg);
  return *ms >= 0;
}

/* ------------------------------------------------------------- shared */

/* binding.c: nil, message, name, code: the shape of every OS failure. */
int np_push_status(lua_State *L, const np_status *st);

/* methods.c: cancel("read", reason)'s work for the open pipe u, which
 * raises nothing and makes no Lua value (main_waits.c, when the method
 * could not be called). */
void np_pipe_cancel_read(pipe_ud *u, np_err reason);
/* methods.c: the pipe name at arg, checked (a clear error if it is none). */
const char *np_check_name(lua_State *L, int arg);
/* methods.c: what binding.c registers, each with the N_UPVALUES upvalues:
 * the pipe methods, the pipe metatable's own fields, the private half's
 * (core._attach) entry points for pipes, and the module's create/open. */
extern const luaL_Reg np_pipe_methods[];
extern const luaL_Reg np_pipe_meta[];
extern const luaL_Reg np_pipe_layer_funcs[];
extern const luaL_Reg np_pipe_module_funcs[];

NP_INTERNAL_END

#endif
