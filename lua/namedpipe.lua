--[[
namedpipe - asynchronous named pipes for Lua 5.4.

The C core (namedpipe.core) only knows callbacks: connect(cb), read([n,] cb),
write(data, cb), readable(cb), writable(cb), all dispatched by its step().
This file adds, in pure Lua:
  * the waiting form: called without a callback, an asynchronous method
    suspends the calling task (a coroutine made by np.spawn) until its
    operation has finished; anywhere else (main thread, a coroutine of your
    own) it drives the loop itself. An optional timeout (ms) cancels it.
  * np.step/np.run/np.spawn/np.sleep: tasks and timers (namedpipe.task);
  * np.open with { timeout = ms, wait_for_server = true }: retry while busy;
  * np.serve: the accept loop that always keeps an instance listening;
  * read_line/lines/read_exact/read_frame/write_frame (namedpipe.framing).
]]
local core = require "namedpipe.core"
local task = require "namedpipe.task"

local M = {}
for k, v in pairs(core) do
  if k ~= "_attach" then M[k] = v end
end

local methods = core.methods
local now = core.now
local compat = require "namedpipe.compat"
local pack, unpack, math_type = compat.pack, compat.unpack, compat.math_type

--[[
The protocol between the C core and this layer is private: core._attach()
hands its half out once per Lua state, to this file (binding.c), and
nothing of it is in the module a script gets. It is made of:
  * waiting: this layer's functions by method name, handed to the core
    once they are all defined (layer.hand_over, at the end). The C methods
    and core.step handle the callback form themselves and hand everything
    else to them (binding.c, divert): the waiting form, reads of a pipe
    with bytes read ahead, and a step with tasks or timers due.
  * raw (the layer table itself): the C entry points that never hand over;
  * layer.set_readahead(pipe, has): this layer holds bytes of the pipe's
    (or an abandoned read): its reads come here in every form;
  * layer.set_task_work(soon, timer_at): tasks or timers need the next
    step (namedpipe.task);
  * layer.buffer_put / buffer_busy: read-ahead handed to read_into;
  * layer.divert_marker, layer.c_can_yield: Lua 5.1 and LuaJIT (below);
  * layer.task_waits_in_c: the C methods read and write make a task wait
    themselves (Lua 5.3+), with the task records and the deadline arming
    handed over beside the waiting functions (hand_over, at the end);
    elsewhere layer.write_now serves waiting.write.
The framing helpers get what they need of it from install() (private).
]]
local layer = core._attach()
local raw, waiting = layer, {}
local task_records = task.attach(layer.set_task_work, layer.make_room)

--- np.step([timeout_ms]): run due tasks and timers, dispatch completions
--- (waiting up to timeout_ms, less if a timer is due sooner); returns how
--- many things it ran. It is core.step: straight to C while no task work
--- is queued (task.lua tells the core), else this.
local raw_step = raw.step
function waiting.step(timeout)
  if timeout ~= nil and (type(timeout) ~= "number" or not (timeout >= 0)) then -- luacheck: ignore 581 (NaN too)
    error("bad argument #1 to 'step' (timeout in milliseconds >= 0 expected)", 3)
  end
  local n = task.run_due()
  n = n + raw_step(task.wait_budget(n > 0 and 0 or (timeout or 0)))
  return n + task.run_due()
end
local step = M.step

-- A waiting call steps the loop in slices of at most WAIT_SLICE ms and
-- looks at its operation between them: a step nested in one of its own
-- (a call hook's or a finalizer's np.step, run before the outer step
-- waits) may have taken the completion it waits for, and the outer step
-- would then wait out its whole time for nothing.
local WAIT_SLICE = 100
local function wait_step(ms)
  if not ms or ms > WAIT_SLICE then ms = WAIT_SLICE end
  return step(ms)
end

M.spawn = task.spawn

--- np.timeout(): milliseconds until the next timer is due, or nil (for a
--- host loop's own timer; np.fd() is the descriptor to poll).
M.timeout = task.next_timer

-- Anything but nil among a call's last arguments (..., from argument
-- number `first` on) is refused with why, not dropped: a callback or a
-- timeout nothing would use. The error points at the caller of fname.
local function refuse_after(fname, first, why, ...)
  for i = 1, select("#", ...) do
    if (select(i, ...)) ~= nil then
      error(("bad argument #%d to '%s' (%s)"):format(first + i - 1, fname, why), 3)
    end
  end
end

function M.sleep(ms, ...)
  if math_type(ms) == nil or not (ms >= 0) then -- luacheck: ignore 581 (NaN too)
    error("bad argument #1 to 'sleep' (milliseconds >= 0 expected)", 2)
  end
  refuse_after("sleep", 2, "nothing expected after the milliseconds", ...)
  task.sleep(ms, step)
end

--- np.run([fn, ...]): spawn fn if given, then step until no task, timer or
--- operation is left.
function M.run(fn, ...)
  if fn ~= nil and type(fn) ~= "function" then -- (spawn would name itself)
    error("bad argument #1 to 'run' (function expected, got " .. type(fn) .. ")", 2)
  end
  -- (the task itself is one left: it would wait for its own end)
  if task.in_task() then
    error("np.run called from a task: it would wait for that task's own end "
      .. "(wait for what it needs instead: an event, np.sleep, a waiting call)", 2)
  end
  if fn ~= nil then task.spawn(fn, ...) end
  while task.busy() or core.pending() > 0 do wait_step() end
end

-- level: where the error points, from the caller of check_timeout's
-- caller (3, a method called from Lua; 4, one reached through the C
-- method's hand-over, binding.c divert).
local function check_timeout(t, arg, fname, level)
  if t ~= nil and (math_type(t) == nil or not (t >= 0)) then -- luacheck: ignore 581 (NaN too)
    error(("bad argument #%d to '%s' (timeout in milliseconds expected, got %s)")
      :format(arg, fname, type(t) == "number" and tostring(t) or type(t)), level or 3)
  end
  return t
end

local function timed_out() return nil, "timed out", "TIMEOUT", 0 end

-- This layer's own cancel of a wait's operation (at its deadline; the
-- half of ready("both") that lost), made only if t[key] is still value
-- (the wait has not ended), checked where nothing can nest (raw.cancel_if:
-- a step nested in any call here may end the wait, and start the next
-- operation of its kind, which is not this wait's). Not through
-- pipe:cancel, for that reason: what watches these cancels (a model of the
-- pipes in a test) is told through M._watch_cancels instead.
local raw_cancel_if = raw.cancel_if
local cancel_watcher
local function cancel_if_live(pipe, what, reason, t, key, value)
  if raw_cancel_if(pipe, what, reason, t, key, value) and cancel_watcher then
    cancel_watcher(pipe, what, reason)
  end
end
local function cancel_for_timeout(pipe, what, t, key, value)
  cancel_if_live(pipe, what, "TIMEOUT", t, key, value)
end

--- np._watch_cancels(fn | nil): fn(pipe, what, reason) is called after
--- each cancel this layer makes of a wait's operation (at its timeout;
--- the half of ready("both") that lost; an abandoned one), with
--- pipe:cancel's arguments, before that operation's end is handed out
--- (also the reads a C method waits for on the main thread:
--- cancel_main_read). For tests and debugging.
function M._watch_cancels(fn) cancel_watcher = fn end

-- Data read ahead by the framing helpers (or by a read nobody waited for
-- any more, below), handed out before the pipe's. Set only through
-- set_readahead: the C methods hand a pipe's reads over to this layer
-- while it has some.
-- Its bytes from readahead_at[pipe] on are unread (from 1 without an
-- entry): a short read, a line or a frame taken from the front moves the
-- mark and copies only what it takes, so many small reads of one large
-- read-ahead cost what they take, not the rest's length each.
-- What a framing read had taken when it timed out (a line, a frame not
-- yet whole) is kept as its pieces instead, a table (a rope: pieces
-- 1..n, `bytes` in all, and how far the read had looked: namedpipe.framing
-- read_until), so that a host polling read_line(0) while a long line
-- arrives costs what arrives, not what has arrived times the polls. The
-- next framing read goes on from it; anything else joins it first.
local readahead = setmetatable({}, { __mode = "k" })
local readahead_at = setmetatable({}, { __mode = "k" })
local concat = table.concat

-- A message pipe's read-ahead keeps its messages apart: ahead_lens[pipe]
-- holds their lengths in order (lens[lens.h .. lens.n], the first what is
-- left of it; an empty message is a 0), so that a read takes one message,
-- as it would from the pipe, while the framing reads take bytes across
-- them. Kept beside the bytes, not instead of them: the framing reads'
-- cuts in place and ropes stay as they are. nil for a byte pipe.
local ahead_lens = setmetatable({}, { __mode = "k" })

local function new_lens(n)
  local lens = { h = 1, n = 0 }
  if n then lens.n, lens[1] = 1, n end
  return lens
end

local function lens_push(lens, n)
  lens.n = lens.n + 1
  lens[lens.n] = n
end

-- other's messages after those of lens (other is used up)
local function lens_append(lens, other)
  for i = other.h, other.n do lens_push(lens, other[i]) end
end

-- The first k bytes have been taken: whole messages go, and the one they
-- end in keeps its rest. (Empty messages before the last byte taken go
-- with them: a framing read took bytes across them; those after it stay.)
local function lens_drop(lens, k)
  local i = lens.h
  while i <= lens.n and k > 0 do
    local m = lens[i]
    if m > k then
      lens[i] = m - k
      break
    end
    k = k - m
    lens[i] = nil
    i = i + 1
  end
  lens.h = i
end

-- (A step nested in concat's call, or type()'s, may have moved the
-- read-ahead: the rope is put back joined only if it is still there, with
-- no call between the check and the store.)
local function flatten(pipe)
  local r = readahead[pipe]
  while type(r) == "table" do
    local s = concat(r, "", 1, r.n)
    if readahead[pipe] == r then
      readahead[pipe] = s
      return
    end
    r = readahead[pipe]
  end
end

-- The read-ahead as a string and where its unread bytes begin, or nil.
local function readahead_view(pipe)
  flatten(pipe)
  return readahead[pipe], readahead_at[pipe] or 1
end

local function readahead_len(pipe)
  local buf = readahead[pipe]
  if type(buf) == "table" then return buf.bytes end
  return buf and #buf - (readahead_at[pipe] or 1) + 1 or 0
end

-- The rope kept by a framing read, taken (nil: none; the read-ahead is
-- then a string, or nothing).
local function take_rope(pipe)
  while true do
    local r = readahead[pipe]
    if type(r) ~= "table" then return nil end
    -- (type() is a call: taken only if a step nested in it left it there)
    if readahead[pipe] == r then
      readahead[pipe] = nil -- (set_readahead tells the core, below)
      return r
    end
  end
end

-- The unread bytes as one string (a copy unless from the start), or nil.
local function readahead_rest(pipe)
  local buf, at = readahead_view(pipe)
  if buf and at > 1 then return buf:sub(at) end
  return buf
end

--- np._read_ahead(pipe): how many bytes this layer holds for the pipe,
--- and on a message pipe a list of its messages' lengths (a read-only
--- view, for tests and debugging).
function M._read_ahead(pipe)
  local lens, list = ahead_lens[pipe], nil
  if lens then
    list = {}
    for i = lens.h, lens.n do list[#list + 1] = lens[i] end
  end
  return readahead_len(pipe), list
end

-- Which connection of a server instance this is: disconnect() (below)
-- counts them. Bytes this layer took from one connection are handed on
-- (read-ahead, an abandoned read's, a framing read's start) only while it
-- lasts: once the instance has been disconnected they are the old
-- client's, and what the client wrote and the server had not read goes
-- with it, as in the pipe.
local sessions = setmetatable({}, { __mode = "k" })
local function session(pipe) return sessions[pipe] or 0 end

-- A framing read in progress (read_line, read_exact, read_frame: several
-- reads of the C module's, namedpipe.framing) -> its record; stop: the
-- first stop that came while it ran (a cancel, a timeout, a disconnect),
-- which it ends with even when it came between two of its reads, when no
-- read of the C module's was there to stop. (Its pipe's cancel diverts to
-- this layer meanwhile: sync_divert.)
local framing_reads = setmetatable({}, { __mode = "k" })
local function framing_stop(pipe, reason)
  local rec = framing_reads[pipe]
  if rec and not rec.stop and pipe:state() ~= "closed" then rec.stop = reason end
end

--[[
Operations whose waiter is gone. A call without a callback, outside a
task, steps the loop until its operation is done; whatever a step runs (a
task, a callback) may raise, and the error unwinds out of the call while
the operation is still the pipe's. Such an operation is then recorded in
inflight[pipe][slot] ("read": read, read_into and readable, which share
the pipe's read slot; "connect"; "writable"), and abandoned: cancelled,
and when it completes what it got is handed over (bytes read become
read-ahead, after any bytes taken before it; a connection, a readiness or
a failure the next call finds again by itself). Until then the next call
of its slot waits for it instead of raising "already pending". While its
waiter is there, nothing of this is needed (a call of its slot meanwhile
gets the C method's "already pending"), so nothing is recorded: a waiting
call costs a table, a closure and the results' table, no more. (ready()
records its two waits from the start.) A write has no slot: abandoned, it
goes on and its bytes arrive, as try_write's do. Tasks need none of this:
a suspended task cannot be unwound.
]]
local inflight = setmetatable({}, { __mode = "k" })

-- Pipes whose read_start a read_stop stopped from elsewhere (the core sets
-- stopped_reads[pipe]: handed over at the end): until a step has ended the
-- cancelled read, the read slot is still taken, and a waiting read waits
-- for that end (settle) rather than be refused. Cleared by the next
-- settle of the read slot.
local stopped_reads = setmetatable({}, { __mode = "k" })
local raw_hold_read = raw.hold_read

local SLOT = { read = "read", read_into = "read", readable = "read",
               transact = "read", connect = "connect", writable = "writable" }
local CANCEL = { read = "read", read_into = "read", readable = "readable",
                 transact = "transact", connect = "connect", writable = "writable",
                 write = "write" }

local co_running, co_status = coroutine.running, coroutine.status
-- (thread is nil for the main thread on Lua 5.1: never dead)
local function dead(thread) return thread ~= nil and co_status(thread) == "dead" end

-- While a read-slot operation is recorded, reads divert to this layer too
-- (methods.c: the same flag as read-ahead), so that a read in any form
-- finds an abandoned one before the C method would refuse it.
-- A read_start waiting for what this layer holds of the pipe (below,
-- waiting.read_start) diverts them as well.
local starting = setmetatable({}, { __mode = "k" })
-- Callback-form calls queued behind an abandoned operation (call_after,
-- below), in order, by pipe: their pipe's cancel diverts here until each
-- has been made or ended, also in the step between the operation's end and
-- their turn.
local queued_calls = setmetatable({}, { __mode = "k" })
local raw_set_readahead = raw.set_readahead
-- Whether this layer holds anything of the pipe's, so that its reads and
-- cancels come here: the core is told (raw_set_readahead), and asked again
-- after that call, with no call between the answer and the loop's end (a
-- step nested in raw_set_readahead's call may have changed it).
local function divert_wanted(pipe)
  local ops = inflight[pipe]
  return readahead[pipe] ~= nil or (ops ~= nil and ops.read ~= nil)
    or starting[pipe] ~= nil or framing_reads[pipe] ~= nil or queued_calls[pipe] ~= nil
end
local function sync_divert(pipe)
  local want
  repeat
    want = divert_wanted(pipe)
    raw_set_readahead(pipe, want)
  until want == divert_wanted(pipe)
end

-- Nothing of the pipe's is held here (what sync_divert asks, but for a
-- framing read's mark): its reads would not divert.
local function holds_nothing(pipe)
  return readahead[pipe] == nil and inflight[pipe] == nil and stopped_reads[pipe] == nil
    and starting[pipe] == nil and framing_reads[pipe] == nil and queued_calls[pipe] == nil
end

-- The read-ahead is buf now (nil: none). lens: its messages, on a message
-- pipe (none given: buf is one message).
local function set_readahead(pipe, buf, lens)
  readahead[pipe], readahead_at[pipe] = buf, nil
  if buf ~= nil and raw.reads_messages(pipe) then
    ahead_lens[pipe] = lens or new_lens(type(buf) == "table" and buf.bytes or #buf)
  else
    ahead_lens[pipe] = nil
  end
  sync_divert(pipe)
end

-- The read-ahead's messages, taken (as its bytes are about to be: a
-- framing read's start), or nil on a byte pipe.
local function take_lens(pipe)
  local lens = ahead_lens[pipe]
  ahead_lens[pipe] = nil
  if lens == nil and raw.reads_messages(pipe) then lens = new_lens() end
  return lens
end

-- The bytes of the read-ahead string buf from `at` to before `to` taken,
-- if it is still buf, unread from at, with its messages' head at h (nil:
-- a byte pipe): false if a step nested in the calls since it was looked
-- at moved it. Checked and moved with no call between (a call hook's or a
-- finalizer's step could nest in any call, lens_drop's too: it is written
-- out here). Whole messages go with the bytes, and the one they end in
-- keeps its rest; on a message pipe empty messages may stay after the
-- last byte (all: the read-ahead goes, whatever is left).
local function readahead_cut(pipe, buf, at, h, to, all)
  local lens = ahead_lens[pipe]
  if readahead[pipe] ~= buf or (readahead_at[pipe] or 1) ~= at
      or (lens and lens.h) ~= h or all and lens and lens.h < lens.n then
    -- (all: the last message was taken whole; a message added meanwhile,
    -- an empty one leaving buf as it was, stays)
    return false
  end
  if lens then -- (lens_drop, inline)
    local k, i = to - at, lens.h
    while i <= lens.n and k > 0 do
      local m = lens[i]
      if m > k then
        lens[i] = m - k
        break
      end
      k = k - m
      lens[i] = nil
      i = i + 1
    end
    lens.h = i
  end
  if all or to > #buf and not (lens and lens.h <= lens.n) then
    readahead[pipe], readahead_at[pipe], ahead_lens[pipe] = nil, nil, nil
    sync_divert(pipe)
  else
    readahead_at[pipe] = to
  end
  return true
end

-- s comes after the read-ahead (one message: an abandoned read's), or
-- before it (one message, or those slens gives: a framing read's).
local function append_readahead(pipe, s)
  local old, lens = readahead_rest(pipe), ahead_lens[pipe]
  if lens then lens_push(lens, #s) end
  set_readahead(pipe, old and old .. s or s, lens)
end

local function prepend_readahead(pipe, s, slens)
  if slens == nil and raw.reads_messages(pipe) then slens = new_lens(#s) end -- (an empty one too)
  if s == "" and (not slens or slens.h > slens.n) then return end
  local old, lens = readahead_rest(pipe), ahead_lens[pipe]
  if lens then lens_append(slens, lens) end
  set_readahead(pipe, old and s .. old or s, slens)
end

local function new_op(pipe, kind)
  local co, main = co_running()
  return { pipe = pipe, kind = kind, slot = SLOT[kind], thread = not main and co or nil,
           session = session(pipe), done = false, r = false }
end

local function register(op)
  local ops = inflight[op.pipe]
  if not ops then
    ops = {}
    inflight[op.pipe] = ops
  end
  ops[op.slot] = op
  if op.slot == "read" then sync_divert(op.pipe) end
end

-- The slot is free again; whoever waited for it goes on.
local function release(op)
  op.released = true
  local ops = inflight[op.pipe]
  if ops and ops[op.slot] == op then
    ops[op.slot] = nil
    if op.slot == "read" then sync_divert(op.pipe) end
    -- (no slot taken: the pipe's calls need not look at this layer's)
    if next(ops) == nil then inflight[op.pipe] = nil end
  end
  -- from the next step, each on its own: one that raises leaves the
  -- others queued
  local adopters = op.adopters
  if adopters then
    op.adopters = nil
    for i = 1, #adopters do task.soon(adopters[i], true) end
  end
end

-- What an abandoned operation got goes to whoever reads next (of its own
-- connection: none, once the instance has been disconnected). ended_first:
-- it had ended before it was abandoned, so its bytes go before any the
-- read-ahead holds: those came after them. (While its waiter was there it
-- held the read slot to the end, so nothing can have read past it; the
-- order holds regardless.) Else it ends now, and the read-ahead holds only
-- what came before it.
local function hand_over(op, ended_first)
  local r = op.r
  if op.session ~= session(op.pipe) or not r[1] then return end
  local s
  if op.kind == "read" or op.kind == "transact" then
    s = r[1]
  elseif op.kind == "read_into" then
    -- (nothing, should the script have freed the buffer by hand meanwhile:
    -- its bytes went with it, and the slot must still be released)
    local ok, bytes = pcall(op.buf.sub, op.buf, 1, r[1])
    if not ok then return end
    s = bytes
  else
    return
  end
  if ended_first then
    prepend_readahead(op.pipe, s)
  else
    append_readahead(op.pipe, s)
  end
end

-- ended_now: op_done abandons an operation as it ends (its waiter died).
local function abandon(op, ended_now)
  if op.abandoned then return end
  op.abandoned = true
  if op.done then hand_over(op, not ended_now) end
  if op.prefix then -- bytes a framing read had taken come back first
    if op.session == session(op.pipe) then prepend_readahead(op.pipe, table.concat(op.prefix), op.prefix.lens) end
    op.prefix = nil
  end
  if op.done then
    release(op)
  elseif op.slot then -- (unless it ends meanwhile: cancel_if_live)
    cancel_if_live(op.pipe, CANCEL[op.kind], "CANCELLED", op, "done", false)
  end
end

-- An error unwinding a waiting call before its results were returned
-- abandons its operations. (A pcall, not a to-be-closed variable: the same
-- on every Lua version; these calls are never a task's, so no yield
-- crosses it.)
local function guarded(ops, fn, ...)
  local ok, err = pcall(fn, ...)
  if not ok then
    for i = 1, #ops do -- (false: a place for one not started)
      local op = ops[i]
      if op and not op.delivered then abandon(op) end
    end
    error(err, 0)
  end
end

local function op_done(op, ...)
  op.done, op.r = true, pack(...)
  if op.abandoned then
    hand_over(op)
    -- (its buffer is promised to a read_into queued after it: call_after)
    if op.buf_claimed then raw.buffer_busy(op.buf, true) end
    release(op)
  elseif dead(op.thread) then
    abandon(op, true)
  elseif op.notify then
    op.notify(op)
  end
end

-- The abandoned operation of this slot still pending, or nil. One whose
-- waiting coroutine died (an error there closes nothing) is abandoned
-- now; one whose waiter is alive keeps the slot busy, as the C method
-- says.
local function orphan(pipe, slot)
  local ops = inflight[pipe]
  local op = ops and ops[slot]
  if not op then return nil end
  if not op.abandoned then
    if not dead(op.thread) then return nil end
    abandon(op)
    if op.released then return nil end
  end
  return op
end

-- Run fn() once the abandoned operation has completed.
local function after(op, fn)
  local adopters = op.adopters or {}
  op.adopters = adopters
  adopters[#adopters + 1] = fn
end

-- Wait (up to timeout ms, but at least one step: even a poll with timeout
-- 0 lets the end be dispatched) until a stopped read_start's read has
-- ended: true and the time left; false on timeout; false, "closed" when
-- the pipe was closed meanwhile. The mark stays until the end is seen (a
-- wait that times out or unwinds leaves it for the next read).
local function settle_stopped(pipe, timeout)
  local t0 = now()
  while raw.read_stopping(pipe) do -- (the cancel's end comes at the next step or so)
    if task.current() then
      task.sleep(0)
    else
      wait_step(timeout and math.max(0, timeout - (now() - t0)))
    end
    if pipe:state() == "closed" then return false, "closed" end
    if timeout and now() - t0 >= timeout and raw.read_stopping(pipe) then return false end
  end
  stopped_reads[pipe] = nil
  return true, timeout and math.max(0, timeout - (now() - t0))
end

-- What a waiting call returns when settle did not free its slot.
local function unsettled(why)
  if why == "closed" then return nil, "pipe closed", "CLOSED", 0 end
  if why == "moved" then return nil, "not connected", "NOT_CONNECTED", 0 end
  return timed_out()
end

--- Wait (up to timeout ms) until no abandoned operation holds the slot
--- (nor, for the read slot, a stopped read_start's read): true and the
--- time left, or false (and settle_stopped's why) once it could not. (The
--- operation was cancelled when abandoned: it completes soon.)
local function settle_slot(pipe, slot, timeout)
  if slot == "read" and stopped_reads[pipe] then
    local ok
    ok, timeout = settle_stopped(pipe, timeout)
    if not ok then return false, timeout end
  end
  local ops = inflight[pipe]
  if not (ops and ops[slot]) then return true, timeout end
  local op = orphan(pipe, slot)
  if not op then return true, timeout end
  local t0 = now()
  if task.current() then
    local resume = task.waiter()
    after(op, resume)
    local timer = timeout and task.add_timer(timeout, resume)
    local ok = task.suspend()
    if timer then task.cancel_timer(timer) end
    if not ok then return false end
  else
    while not op.released do
      local left = timeout and timeout - (now() - t0)
      if left and left <= 0 then return false end
      wait_step(left)
    end
  end
  -- (closed while this call waited: as close() ends a pending operation)
  if pipe:state() == "closed" then return false, "closed" end
  return true, timeout and math.max(0, timeout - (now() - t0))
end

-- A waiting read holds the read slot while it settles too (see
-- check_not_reading): the step that frees the slot runs other callbacks
-- after that, and a read one of them started would take the bytes that
-- were this call's. Cleared before the call makes its own read (which
-- holds it again outside a task: wait_for), or once an error unwinds it.
-- (In a task too: the task is resumed from a step after the slot is free.)
-- A disconnect meanwhile ends the call as it ends a pending read
-- (NOT_CONNECTED: what comes next is the next client's), and the hold:
-- one set since is another call's, left alone.
local function release_hold(pipe, held_in)
  if session(pipe) == held_in then raw_hold_read(pipe, false) end
end

local function settle(pipe, slot, timeout)
  if slot ~= "read" then return settle_slot(pipe, slot, timeout) end
  -- (asked first: on Lua 5.1 its probe raises where a task cannot yield,
  -- and must find no hold set)
  local in_task = task.current()
  local held_in = session(pipe)
  raw_hold_read(pipe, true)
  local ok, settled, left
  if in_task and not task.pcall_yields then -- (Lua 5.1: unprotected; what
    -- raises there is running out of memory)
    ok, settled, left = true, settle_slot(pipe, slot, timeout)
  else
    ok, settled, left = pcall(settle_slot, pipe, slot, timeout)
  end
  release_hold(pipe, held_in)
  if not ok then error(settled, 0) end
  if settled and session(pipe) ~= held_in then return false, "moved" end
  return settled, left
end

-- Wait for one operation: the method's own C entry starts it between the
-- two halves, so its argument errors name the method:
--   local w, cb = wait_begin(self, "read", nil, nil, timeout)
--   raw.read(self, n, cb)
--   return wait_end(w, self, timeout)
-- On timeout the operation is cancelled and we still wait for its
-- completion: if it finished in the meantime its real result wins
-- (nothing read or written is ever dropped on the floor). kind: "read",
-- "read_into" (buf: its buffer), "write", "transact", "connect",
-- "readable" or "writable"; prefix: the bytes a framing read has taken (a
-- table of strings), read-ahead again should the call unwind.
local wait_record, suspend, set_deadline = task.wait_record, task.suspend, task.set_deadline
local in_task = task.in_task

-- Step until op is done, cancelling it once timeout ms have passed.
-- At least one step comes before the deadline's cancel, so that a poll
-- (timeout 0) gets what is there already: on Windows a read finishes in
-- the call when the data is in the pipe, on Linux only at a step.
local function wait_for(op, pipe, kind, timeout)
  -- (cleared by wait_end, whatever happens here)
  if op.slot == "read" then raw_hold_read(pipe, true) end
  local deadline = timeout and now() + timeout
  local stepped = false
  while not op.done do
    if deadline then
      local left = deadline - now()
      if left <= 0 and stepped then
        cancel_for_timeout(pipe, CANCEL[kind], op, "done", false)
        deadline = nil
      else
        wait_step(left > 0 and left or 0)
        stepped = true
      end
    else
      wait_step()
    end
  end
end

-- A task's timed-out wait: cancel the operation (its callback, with
-- TIMEOUT or what it got meanwhile, resumes the task). Not before a step
-- has looked for completions since the wait began (rec.looks): as a
-- waiting call outside a task steps once before its deadline, so that a
-- poll (timeout 0) gets what the peer wrote already, on Linux too, where
-- even a message waiting in the socket comes with the next step's look.
-- false: not yet (namedpipe.task's run_due tries again at the next step).
local function wait_timed_out(rec)
  -- (the count first: it is a call, and a step nested in one (a call
  -- hook's, a finalizer's) may end the wait; what follows reads the record
  -- after it)
  local looks = raw.looks()
  -- (armed for a wait that is not the current one, or whose operation
  -- never started: its start raised, or a write was done at once)
  local ticket = rec.ticket
  if rec.armed ~= ticket or rec.started ~= ticket then return end
  -- (run_due cleared due before this call: a step nested in it ended the
  -- wait, and the next one has its own deadline)
  if rec.due ~= nil then return end
  -- (ended: its wake came in such a step, moved rec.n past the ticket and
  -- let the target go)
  if rec.n ~= ticket or rec.target == nil then return end
  if rec.looks == looks then return false end
  cancel_for_timeout(rec.target, CANCEL[rec.kind], rec, "n", ticket)
end

-- Outside a task: an operation recorded while it is waited for (above).
local function op_begin(pipe, kind, buf, prefix)
  local op = new_op(pipe, kind)
  op.buf, op.prefix = buf, prefix
  return op, function(...) op_done(op, ...) end
end

-- A task's wait record times out its operation after ms. Armed before
-- the operation starts: arming can run out of memory, and once the
-- operation has started with the task's wake as its callback, an error
-- would leave its result to a wake that resumes the task in a later wait.
-- The start may still raise (a refusal): the wait's end (wait_end) marks
-- it started, and a deadline of a wait that never started does nothing
-- (wait_timed_out). The core's own task waits arm it too (hand_over, at
-- the end), right before a start that cannot fail: they pass looks, the
-- count of steps that looked for completions so far, and it is started.
local raw_looks = raw.looks
local function arm_deadline(rec, pipe, kind, ms, looks)
  rec.target, rec.kind, rec.fn, rec.looks = pipe, kind, wait_timed_out, looks or raw_looks()
  rec.armed = rec.ticket
  set_deadline(rec, ms)
  -- (after: should arming raise, the deadline it may leave does nothing)
  if looks then rec.started = rec.ticket end
end

-- A task's wait uses its wait record (task.wait_record) as callback and
-- timer: nothing is allocated per call. (read and write, the most
-- frequent, make these calls themselves: one call less per wait.)
local function wait_begin(pipe, kind, buf, prefix, timeout)
  local rec, wake = wait_record()
  if rec then
    if timeout then arm_deadline(rec, pipe, kind, timeout) end
    return rec, wake
  end
  return op_begin(pipe, kind, buf, prefix)
end

-- The kinds of read a C method waits for itself (the main thread:
-- main_waits.c), by the number it passes.
local MAIN_KIND = { [0] = "read", "read_into", "transact", "readable" }

-- Such a read, cancelled as this layer's waits cancel theirs: at its
-- timeout, or once an error has unwound it. The wait holds the read slot
-- until then; start: the instance's disconnect count when it began. The
-- cancel is made only if the slot is still held by that connection's
-- wait, checked where nothing can nest (raw.cancel_held: a step nested in
-- the calls here may end the read, and a disconnect() there lets the hold
-- go: a read started next is then the next client's).
local raw_cancel_held = raw.cancel_held
local function cancel_main_read(pipe, at_deadline, kind, start)
  local what, reason = CANCEL[MAIN_KIND[kind]], at_deadline and "TIMEOUT" or "CANCELLED"
  if raw_cancel_held(pipe, what, reason, start) and cancel_watcher then
    cancel_watcher(pipe, what, reason)
  end
end

-- Such a read that an error unwound: its operation becomes one of this
-- layer's, abandoned (the C side cancels it after this). kind: its number
-- (above); buf: a read_into's buffer. moved: the instance was
-- disconnected since it began (what it gets is not the next reader's).
-- done: it had ended, with the results that follow; else its
-- end comes later, through the function returned. What can fail (out of
-- memory) is made before the operation is recorded, and nothing after it:
-- either the record is there with its function, or the C side calls this
-- again with the end when it comes. (new_op's table, made here with
-- `abandoned` in it, so that setting it after register allocates nothing;
-- new_op leaves it out: every waiting call's table would be larger.)
local function abandon_wait(pipe, kind, buf, moved, done, ...)
  local op = { pipe = pipe, kind = MAIN_KIND[kind], slot = "read", abandoned = false, buf = buf,
               session = moved and -1 or session(pipe), done = done, r = false }
  if done then
    op.r = pack(...)
    hand_over(op, true)
    return nil
  end
  local forward = function(...) op_done(op, ...) end
  register(op)
  op.abandoned = true
  return forward
end

local function wait_end(w, pipe, timeout)
  if w.wake then
    w.started = w.ticket -- (a field of the record's from its start: allocates nothing)
    return suspend()
  end
  local op = w
  local ok, err = pcall(wait_for, op, pipe, op.kind, timeout)
  -- (wait_for held the read slot; allocates nothing: cannot fail)
  if op.slot == "read" then release_hold(pipe, op.session) end
  if not ok then
    -- (one that has ended needs no record, and must not take the place
    -- of one that a nested wait abandoned meanwhile; one still pending
    -- holds its slot, so no other can be recorded there)
    if op.slot then
      if not op.done then register(op) end
      abandon(op)
    end
    error(err, 0)
  end
  return unpack(op.r, 1, op.r.n)
end

-- The C methods check n themselves (as lua_tointegerx converts: a numeric
-- string or a float with an integer value will do); data read ahead is
-- handed out here, so check it the same way first, with the same words,
-- and take what they take: the count as a number, or nil.
local tointeger = math.tointeger or function(v) return v end -- luacheck: ignore 143
local function check_count(n, fname)
  if n == nil then return nil end
  local v, why = tonumber(n), nil
  if v == nil or (type(n) ~= "number" and type(n) ~= "string") then
    why = "number expected, got " .. type(n)
  elseif v ~= v or v % 1 ~= 0 or v >= 2 ^ 63 or v < -2 ^ 63 then
    why = "number has no integer representation"
  elseif v < 1 then
    why = "positive byte count expected"
  end
  if why then error(("bad argument #2 to '%s' (%s)"):format(fname, why), 4) end
  return tointeger(v)
end

-- Read-ahead data, if the pipe is open (a closed pipe raises in the C
-- method, as it would without any).
local function has_readahead(pipe)
  return readahead[pipe] ~= nil and pipe:state() ~= "closed"
end

-- Up to n bytes of the read-ahead (n nil: all there is), or nil. On a
-- message pipe no more than its first message (what is left of it),
-- unless bytes (a framing read, which takes bytes across messages).
local function take_readahead(pipe, n, bytes)
  while true do
    local buf, at = readahead_view(pipe)
    if not buf then return nil end
    local lens = ahead_lens[pipe]
    local h, left, to, all = lens and lens.h, #buf - at + 1, nil, false
    if bytes and lens then -- (empty messages after the last byte stay)
      to = at + (n > left and left or n)
    elseif lens and lens.h < lens.n then -- (the last message: all there is, below)
      local m = lens[lens.h]
      if m == 0 then -- an empty message (checked and taken with no call between)
        if readahead[pipe] == buf and (readahead_at[pipe] or 1) == at and lens.h == h
            and ahead_lens[pipe] == lens then
          lens[lens.h] = nil
          lens.h = lens.h + 1
          return ""
        end
      else
        if not n or n > m then n = m end
        to = at + n
      end
    elseif n and n < left then
      to = at + n
    else
      to, all = #buf + 1, true
    end
    if to and readahead_cut(pipe, buf, at, h, to, all) then
      if at == 1 and to == #buf + 1 then return buf end
      return buf:sub(at, to - 1)
    end
  end
end

-- A callback-form call made while an abandoned operation holds its slot
-- is made again once that one has completed; a pipe closed by then gives
-- the callback what a pending operation gets from close(). Until then it
-- is queued here (queued_calls, declared above sync_divert), so that a
-- cancel of its slot ends it as it would end it pending
-- (end_queued_calls). buf: a read_into's buffer, busy while the call
-- waits here (the pending call's, as a pending read's is), free again
-- when it is made or ended. own: it is the buffer the abandoned read_into
-- still fills; promised to this call (op.buf_claimed), it is refused to
-- any other and held busy from that read's end (op_done) to this call's.

local function call_after(op, pipe, cb, again, buf, own)
  local queue = queued_calls[pipe]
  if not queue then
    queue = {}
    queued_calls[pipe] = queue
    sync_divert(pipe)
  end
  -- (ended: its field there from the start, for disconnect())
  local entry = { cb = cb, buf = buf, claimed_from = own and op or nil, ended = false }
  queue[#queue + 1] = entry
  if own then
    op.buf_claimed = true
  elseif buf then
    raw.buffer_busy(buf, true)
  end
  after(op, function()
    if entry.ended then return end
    entry.ended = true
    for i = 1, #queue do
      if queue[i] == entry then
        table.remove(queue, i)
        break
      end
    end
    if #queue == 0 and queued_calls[pipe] == queue then
      queued_calls[pipe] = nil
      sync_divert(pipe)
    end
    if buf then raw.buffer_busy(buf, false) end
    if pipe:state() == "closed" then return cb(nil, "pipe closed", "CLOSED", 0) end
    return again()
  end)
end

-- A callback called from the next step as a cancel (with this reason)
-- or a disconnect (NOT_CONNECTED) ends its operation.
local function cancelled_soon(cb, reason)
  if reason == "TIMEOUT" then return task.soon(cb, timed_out()) end
  if reason == "NOT_CONNECTED" then return task.soon(cb, nil, "not connected", "NOT_CONNECTED", 0) end
  return task.soon(cb, nil, "operation cancelled", "CANCELLED", 0)
end

-- A cancel of the read slot: the calls queued behind an abandoned
-- operation end with its reason, from the next step, in order.
local function end_queue(queue, reason)
  for _, entry in ipairs(queue) do
    entry.ended = true
    local from = entry.claimed_from
    if from and not from.done then
      from.buf_claimed = nil -- (still being filled: that read's end frees it)
    elseif entry.buf then
      raw.buffer_busy(entry.buf, false)
    end
    cancelled_soon(entry.cb, reason)
  end
end

local function end_queued_calls(pipe, reason)
  local queue = queued_calls[pipe]
  if not queue then return end
  queued_calls[pipe] = nil
  sync_divert(pipe)
  end_queue(queue, reason)
end

-- The functions below get the calls the C methods hand over (binding.c,
-- divert); errors they raise point at level 4, the method's caller.

-- A read_start holds the read slot from its call on, also while it waits
-- here for what this layer holds (as the C methods refuse a read while a
-- read_start's reads go on). A waiting read outside a task holds it until
-- it returns (raw.read_held: wait_for, and the main thread's waits made
-- in C): the step that ended its read runs other callbacks after that
-- end, and a read one of them started would take the bytes that follow
-- (should the step raise, the waiting read's bytes would be handed over
-- behind them; a framing read, which makes several reads, would have its
-- next one refused and lose what it had). A task is resumed by its read's
-- end itself, and makes its next read before it yields again: nothing
-- runs between.
local raw_read_held = raw.read_held
local function check_not_reading(pipe, fname, level)
  if starting[pipe] or queued_calls[pipe] ~= nil or raw_read_held(pipe) then
    error(("bad argument #1 to '%s' (a read is already pending on this pipe)"):format(fname),
      level or 4)
  end
end

--- server:connect([cb | timeout])
function waiting.connect(self, a)
  if type(a) == "function" then return raw.connect(self, a) end
  check_timeout(a, 2, "connect", 4)
  if inflight[self] then
    local ok
    ok, a = settle(self, "connect", a)
    if not ok then return unsettled(a) end
  end
  local w, cb = wait_begin(self, "connect", nil, nil, a)
  raw.connect(self, cb)
  return wait_end(w, self, a)
end

--- pipe:read([n] [, cb | timeout])
function waiting.read(self, a, b)
  check_not_reading(self, "read")
  if a ~= nil and type(a) == "function" then
    if b ~= nil then -- read(cb, timeout): the timeout would be dropped
      error("bad argument #3 to 'read' (nothing expected after the callback or timeout: give one of them, last)", 4)
    end
    a, b = nil, a
  end
  local n = a
  -- (the usual case, a task's read with a timeout, asks type() once)
  local is_cb = b ~= nil and type(b) == "function"
  -- (check_timeout's test, inline: read and write are the waits a task
  -- makes most, and the call it saves is a measurable part of one; a bad
  -- timeout is refused also when bytes read ahead would answer at once)
  if b ~= nil and not is_cb and (math_type(b) == nil or not (b >= 0)) then -- luacheck: ignore 581 (NaN too)
    check_timeout(b, 3, "read", 4)
  end
  if readahead[self] ~= nil and has_readahead(self) then
    n = check_count(n, "read")
    -- (nil: a step nested in the calls since took it all; read on)
    local data = take_readahead(self, n)
    if data ~= nil then
      if is_cb then return task.soon(b, data) end
      return data
    end
  end
  if is_cb then
    local op = orphan(self, "read")
    if op then
      n = check_count(n, "read")
      return call_after(op, self, b, function() return methods.read(self, n, b) end)
    end
    return raw.read(self, n, b)
  end
  if inflight[self] or stopped_reads[self] then
    local ok
    ok, b = settle(self, "read", b)
    if not ok then return unsettled(b) end
    if has_readahead(self) then
      n = check_count(n, "read")
      local data = take_readahead(self, n)
      if data ~= nil then return data end
    end
  end
  local w, cb = wait_record()
  if not w then
    w, cb = op_begin(self, "read")
  elseif b then
    arm_deadline(w, self, "read", b)
  end
  raw.read(self, n, cb)
  return wait_end(w, self, b)
end

--- pipe:read_into(buf [, cb | timeout]): bytes read into buf (from its
--- first byte), a count. (The C method has checked buf, and that it is
--- not busy unless this layer holds something of this pipe's.)
function waiting.read_into(self, buf, a)
  check_not_reading(self, "read_into")
  local cb = type(a) == "function" and a or nil
  if not cb then check_timeout(a, 3, "read_into", 4) end
  local t = a
  -- (the C method has left busy to this layer only while it holds
  -- something of this pipe's)
  if (readahead[self] or inflight[self]) and raw.buffer_busy(buf) then
    local op = orphan(self, "read")
    -- (op.buf_claimed: promised to a read_into queued after that one)
    if not (op and op.buf == buf) or op.buf_claimed then
      error("bad argument #2 to 'read_into' (buffer is being filled by a pending read_into)", 4)
    end
    -- a read_into this pipe abandoned still fills it: after that one
    if cb then
      return call_after(op, self, cb, function() return methods.read_into(self, buf, cb) end,
        buf, true)
    end
    local ok
    ok, t = settle(self, "read", t)
    if not ok then return unsettled(t) end
  end
  local had = has_readahead(self)
  if not had then
    if cb then
      local op = orphan(self, "read")
      if op then
        return call_after(op, self, cb, function() return methods.read_into(self, buf, cb) end, buf)
      end
      return raw.read_into(self, buf, cb)
    end
    if inflight[self] or stopped_reads[self] then
      local ok
      ok, t = settle(self, "read", t)
      if not ok then return unsettled(t) end
    end
  end
  local ahead = has_readahead(self) and take_readahead(self, #buf)
  if had and not ahead then
    -- (a step nested in the calls since took all the read-ahead: the call
    -- made again, as without it; not waited for below, which neither
    -- settled an abandoned read nor takes a callback)
    return methods.read_into(self, buf, a)
  end
  if ahead then
    local n = raw.buffer_put(buf, ahead)
    if cb then
      -- the bytes are the callback's until it runs: busy, as a pending
      -- read's buffer is (buf:sub and another read_into into it raise)
      raw.buffer_busy(buf, true)
      return task.soon(function()
        raw.buffer_busy(buf, false)
        return cb(n)
      end)
    end
    return n
  end
  local w, done = wait_begin(self, "read_into", buf, nil, t)
  raw.read_into(self, buf, done)
  return wait_end(w, self, t)
end

--- pipe:try_read([n])
function waiting.try_read(self, n)
  check_not_reading(self, "try_read")
  if has_readahead(self) then
    n = check_count(n, "try_read")
    local data = take_readahead(self, n)
    if data ~= nil then return data end
  end
  if orphan(self, "read") then -- what it gets comes later: nothing now
    check_count(n, "try_read")
    return nil, "operation would block", "WOULDBLOCK", 0
  end
  return raw.try_read(self, n)
end

-- A task's write that the system takes at once returns at once: nothing
-- to wait for, so no completion, no timer, no switch back to the loop
-- (Linux). Where the C method can make a task wait, it does this itself
-- (task_waits.c, np_task_write); elsewhere (Lua 5.1, 5.2, LuaJIT) it is done
-- here, with raw.write_now, which also keeps count of such writes in a
-- row, so that a task writing to a fast reader still lets the others run.
-- Outside a task the same holds, with no budget: a write that need not
-- step the loop runs no other callback meanwhile, so a callback's waiting
-- write does not nest the callbacks of every other pipe that is ready
-- (Lua's C stack would give out at a few dozen). (Windows: every write
-- completes through the port, so write_now declines; raw.write with its
-- fourth argument, whether the write is a task's, then returns the count
-- of a write WriteFile finished in the call, and its callback never runs.)
local write_now = raw.write_now
local task_writes_now_here = not layer.task_waits_in_c

-- The rest of a write the system took a part of at once (a byte pipe),
-- which write_now (or the C method) started already, with no callback:
-- nothing that fails after a part went may cut the write short, so the
-- rest is on its way before this makes its wait, and should that raise
-- (out of memory), it goes on, as an unwound write's bytes do. Its count
-- is added to sent. Also the C method's (main_waits.c: "write_rest").
local write_attach = raw.write_attach
local function write_rest(self, sent, timeout)
  local w, cb = wait_begin(self, "write", nil, nil, timeout)
  local attached, n, msg, name, code = write_attach(self, cb, sent)
  -- (a step nested in the lines above, from a hook or a finalizer, may
  -- have ended the rest already: what it ended with, sent included)
  if not attached then return n, msg, name, code end
  n, msg, name, code = wait_end(w, self, timeout)
  if n then return sent + n end
  return n, msg, name, code
end

--- pipe:write(data [, cb | timeout])
function waiting.write(self, data, a)
  if a ~= nil and type(a) == "function" then return raw.write(self, data, a) end
  -- (check_timeout's test, inline: see read)
  if a ~= nil and (math_type(a) == nil or not (a >= 0)) then -- luacheck: ignore 581 (NaN too)
    check_timeout(a, 3, "write", 4)
  end
  -- (the task's wait record only once it must wait: on Lua 5.1 taking it
  -- yields a probe, which fails inside a pcall, and a write done at once
  -- has no wait to fail)
  local task_here = in_task()
  -- (false for what is not a pipe and a string; unbudgeted outside a task)
  local sent = (not task_here or task_writes_now_here) and write_now(self, data, not task_here)
  if sent then
    if sent == #data then return sent end
    return write_rest(self, sent, a) -- a byte pipe took a part
  end
  local w, cb = wait_record()
  local in_task_wait = w ~= nil
  if not w then
    w, cb = op_begin(self, "write")
  elseif a then
    arm_deadline(w, self, "write", a)
  end
  local at_once = raw.write(self, data, cb, in_task_wait)
  if at_once then return at_once end
  return wait_end(w, self, a)
end

-- Bytes this layer holds are unread data in the pipe: as the kernel
-- refuses a transact then, so does this layer.
local function busy_with_unread()
  return nil, "there is unread data in the pipe", "PIPE_BUSY", 0
end

--- client:transact(request [, cb | timeout]): the reply to one message.
function waiting.transact(self, data, a)
  check_not_reading(self, "transact")
  local cb = type(a) == "function" and a or nil
  if not cb then check_timeout(a, 3, "transact", 4) end
  if has_readahead(self) then
    -- (a request that is no string is refused as the C method refuses it,
    -- also when the read-ahead answers at once: it raises, starting nothing)
    if type(data) ~= "string" then return raw.transact(self, data, cb or task.soon) end
    if cb then return task.soon(cb, busy_with_unread()) end
    return busy_with_unread()
  end
  if cb then
    local op = orphan(self, "read")
    if op then
      return call_after(op, self, cb, function() return methods.transact(self, data, cb) end)
    end
    return raw.transact(self, data, cb)
  end
  if inflight[self] or stopped_reads[self] then
    local ok
    ok, a = settle(self, "read", a)
    if not ok then return unsettled(a) end
    if has_readahead(self) then return busy_with_unread() end
  end
  local w, done = wait_begin(self, "transact", nil, nil, a)
  raw.transact(self, data, done)
  return wait_end(w, self, a)
end

--- pipe:peek(): what is waiting, bytes read ahead included.
function waiting.peek(self)
  local t, msg, name, code = raw.peek(self)
  if readahead[self] == nil then
    if not t then return nil, msg, name, code end
    return t
  end
  -- Bytes read ahead are the first a read gets, whatever the pipe says
  -- behind them (it may have reached its end: the peer closed or was
  -- disconnected after they came). In message mode the next message is
  -- the first read ahead. (An empty message read ahead counts.)
  local ahead, lens = readahead_len(self), ahead_lens[self]
  if not t then t = { available = 0 } end
  t.available = t.available + ahead
  if lens then t.message = lens[lens.h] end
  return t
end

--- pipe:readable([cb | timeout]): true once try_read would not block.
function waiting.readable(self, a)
  check_not_reading(self, "readable")
  if type(a) ~= "function" then check_timeout(a, 2, "readable", 4) end
  if has_readahead(self) then
    if type(a) == "function" then return task.soon(a, true) end
    return true
  end
  if type(a) == "function" then
    local op = orphan(self, "read")
    if op then return call_after(op, self, a, function() return methods.readable(self, a) end) end
    return raw.readable(self, a)
  end
  if inflight[self] or stopped_reads[self] then
    local ok
    ok, a = settle(self, "read", a)
    if not ok then return unsettled(a) end
    if has_readahead(self) then return true end
  end
  local w, cb = wait_begin(self, "readable", nil, nil, a)
  raw.readable(self, cb)
  return wait_end(w, self, a)
end

--- pipe:read_start(cb) with bytes read ahead, or an abandoned read still
--- in the read slot: those come first. The read-ahead is cb's first call
--- (from the next step, as a callback's always is), and the C method
--- reads on after it; after an abandoned read, once that has completed,
--- the C method starts (or this again, if it left bytes). Meanwhile the
--- read slot is this start's (starting), and it ends as the C method's
--- reading does: read_stop puts bytes not yet delivered back and calls
--- nothing more; cancel("read") does the same and calls cb with
--- CANCELLED; close() and disconnect() (the last client's bytes dropped)
--- end it with CLOSED and NOT_CONNECTED; from inside its callback
--- (running) any of them ends it with nothing more.
local function clear_start(pipe)
  starting[pipe] = nil
  sync_divert(pipe)
end

-- Closed or disconnected since it began: it ends so (true), or false.
local function start_gone(pipe, start)
  local msg, name
  -- (a disconnect then a close: the first says why)
  if session(pipe) ~= start.session then
    msg, name = "disconnected (what had come is dropped)", "NOT_CONNECTED"
  elseif pipe:state() == "closed" then
    msg, name = "pipe closed", "CLOSED"
  else
    return false
  end
  clear_start(pipe)
  start.cb(nil, msg, name, 0)
  return true
end

-- quiet: after its own callback, which closed the pipe: nothing more.
local function start_reading(pipe, start, quiet)
  if starting[pipe] ~= start then return end -- stopped meanwhile
  if quiet and pipe:state() == "closed" then return clear_start(pipe) end
  if start_gone(pipe, start) then return end
  clear_start(pipe)
  return methods.read_start(pipe, start.cb)
end

local function deliver_ahead(pipe, start)
  if starting[pipe] ~= start then return end
  local data = start.data
  start.data = nil
  if start_gone(pipe, start) then return end
  -- The callback first, holding the slot, as the C method's do: a
  -- read_stop there leaves nothing pending. Reading goes on after it even
  -- should it raise; the error then comes out of the step.
  start.running = true
  local ok, err = pcall(start.cb, data)
  start.running = false
  start_reading(pipe, start, true)
  if not ok then error(err, 0) end
end

-- (Handed over with a plain call on every Lua, as step is: its errors
-- point at the method's caller, level 3, or 4 past the Lua wrapper the
-- method is where C cannot yield, below.)
local START_LEVEL = raw.c_can_yield and 3 or 4
function waiting.read_start(self, cb)
  if type(cb) ~= "function" then
    error(("bad argument #2 to 'read_start' (function expected, got %s)"):format(type(cb)),
      START_LEVEL)
  end
  check_not_reading(self, "read_start", START_LEVEL + 1)
  local start = { cb = cb, session = session(self) }
  if has_readahead(self) then
    start.data = take_readahead(self)
    starting[self] = start
    sync_divert(self)
    return task.soon(deliver_ahead, self, start)
  end
  local op = orphan(self, "read")
  if op then
    starting[self] = start
    sync_divert(self)
    return after(op, function() return start_reading(self, start) end)
  end
  return raw.read_start(self, cb) -- (raises while a read is pending)
end

-- A start waiting here taken back: its bytes not yet delivered are the
-- pipe's again (unless their client has gone).
local function withdraw_start(self)
  local start = starting[self]
  if not start then return nil end
  clear_start(self)
  if start.data and start.session == session(self) then prepend_readahead(self, start.data) end
  start.data = nil
  return start
end

--- pipe:read_stop()
function waiting.read_stop(self)
  withdraw_start(self)
  return raw.read_stop(self)
end

--- pipe:cancel([what] [, reason]): a start waiting here ends as the C
--- method's reading ends: CANCELLED, unless from its own callback.
-- A read_start still delivering bytes read ahead ends as the C one would,
-- whichever name its slot is cancelled by, with the reason given.
local READ_SLOT = { read = true, readable = true, transact = true }
function waiting.cancel(self, what, reason)
  if reason ~= nil and reason ~= "CANCELLED" and reason ~= "TIMEOUT" then
    return raw.cancel(self, what, reason) -- (raises: bad argument #3)
  end
  if what == nil or READ_SLOT[what] then
    framing_stop(self, reason or "CANCELLED")
    end_queued_calls(self, reason)
    local start = withdraw_start(self)
    if start and not start.running then cancelled_soon(start.cb, reason) end
  end
  return raw.cancel(self, what, reason)
end

--- pipe:writable([cb | timeout]): true once try_write would be accepted.
function waiting.writable(self, a)
  if type(a) == "function" then return raw.writable(self, a) end
  check_timeout(a, 2, "writable", 4)
  if inflight[self] then
    local ok
    ok, a = settle(self, "writable", a)
    if not ok then return unsettled(a) end
  end
  local w, cb = wait_begin(self, "writable", nil, nil, a)
  raw.writable(self, cb)
  return wait_end(w, self, a)
end

--- server:disconnect(): the C method's; once it has dropped the client,
--- so does this layer whatever it holds of that connection (see sessions).
--- That is taken at once, with no call between the C method's return and
--- the stores below: a step nested in any call from then on (a call
--- hook's, a finalizer's) is already the next client's, and what it
--- starts (a read, a read_line whose bytes are read ahead, a queued call)
--- is not the old connection's to end. The C method raises for misuse at
--- its caller's position: called from the first line of the function
--- below, that is this line, so the error is raised again from the
--- caller's, as if the C method had been called directly.
local c_disconnect = methods.disconnect
local function call_disconnect(...) local disconnect = c_disconnect; local ok, msg, name, code = disconnect(...)
  if not ok then return ok, msg, name, code end
  local self = ...
  sessions[self] = (sessions[self] or 0) + 1
  local rec, queue, start = framing_reads[self], queued_calls[self], starting[self]
  -- (a framing read's record has its stop field from the start: no room
  -- is made, so no collector step runs)
  if rec and not rec.stop then rec.stop = "NOT_CONNECTED" end
  queued_calls[self] = nil
  -- (each ended now: its turn, from a step nested in the calls below,
  -- would make it again on the next client's bytes; end_queue then ends it)
  if queue then for i = 1, #queue do queue[i].ended = true end end
  -- a read_start waiting here: from its own callback it ends with nothing
  -- more; else it ends with NOT_CONNECTED when it goes on (a read_stop
  -- before then takes that back)
  if start and start.running then starting[self] = nil end
  readahead[self], readahead_at[self], ahead_lens[self] = nil, nil, nil
  return true, queue
end
local CALL_SITE = ("%s:%d: "):format(debug.getinfo(call_disconnect, "S").short_src,
  debug.getinfo(call_disconnect, "S").linedefined)

function methods.disconnect(...)
  local ok, r, msg, name, code = pcall(call_disconnect, ...)
  if not ok then
    if type(r) == "string" and r:sub(1, #CALL_SITE) == CALL_SITE then
      error(r:sub(#CALL_SITE + 1), 2)
    end
    error(r, 0)
  end
  if not r then return r, msg, name, code end
  local self = ...
  sync_divert(self)
  -- calls queued behind an abandoned read end as a pending one does (else
  -- they would read the next client's bytes)
  if msg then end_queue(msg, "NOT_CONNECTED") end
  return true
end

--- pipe:ready(interest [, timeout]): interest "readable", "writable" or
--- "both"; returns a set { readable = true?, writable = true? } of what was
--- ready first (as Tokio's ready(Interest)), or nil, msg, name.
function methods.ready(self, interest, timeout, ...)
  -- (every check, whatever the interest: one alone was handed on as it
  -- came, a callback in the timeout's place taken, one after it dropped)
  local mt = type(self) == "userdata" and getmetatable(self)
  if not (mt and mt.__index == methods) then
    error(("bad argument #1 to 'ready' (namedpipe.pipe expected, got %s)"):format(type(self)), 2)
  end
  if interest ~= "readable" and interest ~= "writable" and interest ~= "both" then
    error("bad argument #2 to 'ready' (\"readable\", \"writable\" or \"both\" expected)", 2)
  end
  check_timeout(timeout, 3, "ready")
  refuse_after("ready", 4, "nothing expected after the timeout", ...)
  if self:state() == "closed" then error("bad argument #1 to 'ready' (pipe is closed)", 2) end
  if interest ~= "both" then
    local ok, msg, name, code = methods[interest](self, timeout)
    if not ok then return nil, msg, name, code end
    return { [interest] = true }
  end
  check_not_reading(self, "ready", 3) -- (as readable() refuses it)
  if has_readahead(self) then return { readable = true } end
  local ok, t = settle(self, "read", timeout)
  if ok then ok, t = settle(self, "writable", t) end
  if not ok then return unsettled(t) end
  if has_readahead(self) then return { readable = true } end
  -- Both slots are checked before either wait starts: a wait started and
  -- left behind would later cancel someone else's.
  if self:_busy("read") > 0 then
    error("bad argument #1 to 'ready' (a read is already pending on this pipe)", 2)
  end
  if self:_busy("writable") > 0 then
    error("bad argument #1 to 'ready' (a writable() wait is already pending on this pipe)", 2)
  end
  -- pending_r, pending_w: the waits started and not yet completed (only
  -- those may be cancelled: once one has completed, its kind may be
  -- someone else's). What the waits' ends record goes into locals (and
  -- live's two fields, below), which allocate nothing: in a task, running
  -- out of memory there would leave the task never resumed, and the read
  -- slot held.
  local pending_r, pending_w = true, false
  local got_r, got_w, failed, emsg, ename, ecode = false, false, false, nil, nil, nil
  local resume = task.current() and task.waiter()
  -- expired: the timer has gone off (what it called off before both waits
  -- had started is called off again once they have)
  local expired = false
  -- live.readable, live.writable: that half is this call's to cancel,
  -- started and still pending (cancel_if_live checks it where nothing can
  -- nest: a step nested in the calls before may end the half, and start
  -- a wait of its kind that is someone else's)
  local live = { readable = false, writable = false }
  -- One half called off (reason nil: CANCELLED), if it is this call's.
  local function call_off(readable, reason)
    local what = readable and "readable" or "writable"
    if live[what] then cancel_if_live(self, what, reason or "CANCELLED", live, what, true) end
  end
  local function ended(readable, ok_, msg, name, code)
    if readable then pending_r = false else pending_w = false end
    live[readable and "readable" or "writable"] = false
    -- (read before the cancel's calls: a step nested in them may end the
    -- other half, whose end then resumes the task)
    local other_pending = pending_r or pending_w
    if ok_ then
      if readable then got_r = true else got_w = true end
      call_off(not readable) -- the first one ready wins
    elseif not failed then
      failed, emsg, ename, ecode = true, msg, name, code
    end
    if resume and not other_pending then resume() end
  end
  local function on_readable(...) return ended(true, ...) end
  local function on_writable(...) return ended(false, ...) end
  local function cancel_pending()
    expired = true
    call_off(true, "TIMEOUT")
    call_off(false, "TIMEOUT")
  end
  -- Like ready("readable"), it holds the read slot until it returns (see
  -- check_not_reading), also once its readable half has ended while it
  -- waits for the other's cancel: a reading call made meanwhile is refused.
  local held_in = session(self)
  -- pending_w is set before either wait starts: a step nested in these
  -- calls (a call hook's, a finalizer's) may end the readable wait first,
  -- and the writable one is then to be called off, not waited for nor left
  -- behind. A cancel made before its start cancelled nothing, so once both
  -- have started, a readable half that ended ready calls the other off.
  local function call_off_late()
    if got_r then call_off(false) end
  end
  pending_w = true
  if resume then
    -- The timer is armed before the waits start: arming can run out of
    -- memory, and a readable wait left running with no owner would keep
    -- the read slot taken until data came. A start that fails calls off
    -- what has started (its end wakes nobody: the task has left this wait).
    -- (as a task's other waits: the deadline calls the waits off only once
    -- a step has looked since they began, so that a poll, timeout 0, gets
    -- what is already there)
    local looks = raw.looks()
    local function at_deadline()
      if raw.looks() == looks then return task.soon(at_deadline) end
      cancel_pending()
    end
    local timer = t and task.add_timer(t, at_deadline)
    local started, err = pcall(raw.readable, self, on_readable)
    if started then
      live.readable = pending_r
      started, err = pcall(raw.writable, self, on_writable)
      live.writable = started and pending_w
    else
      pending_r = false
    end
    if not started then
      pending_w = false -- (no end of it will come)
      if timer then task.cancel_timer(timer) end
      cancel_pending()
      error(err, 0)
    end
    call_off_late()
    if expired then cancel_pending() end -- (went off before the starts)
    raw_hold_read(self, true) -- (after what may raise)
    task.suspend()
    release_hold(self, held_in)
    if timer then task.cancel_timer(timer) end
  else
    local r, w = new_op(self, "readable"), new_op(self, "writable")
    r.notify = function(op) on_readable(unpack(op.r, 1, op.r.n)) end
    w.notify = function(op) on_writable(unpack(op.r, 1, op.r.n)) end
    -- Each wait goes into ops as soon as it has started, and an error
    -- after that (running out of memory in register, say) abandons it:
    -- a readable wait left running with no owner would keep the read slot
    -- taken until data came. (ops is made first, with its two places, so
    -- that filling them allocates nothing.)
    local on_r, on_w = function(...) op_done(r, ...) end, function(...) op_done(w, ...) end
    local ops = { false, false }
    local waited, err = pcall(guarded, ops, function()
      raw.readable(self, on_r)
      live.readable = pending_r
      ops[1] = r
      register(r)
      raw.writable(self, on_w)
      live.writable = pending_w
      ops[2] = w
      register(w)
      call_off_late()
      raw_hold_read(self, true)
      local deadline = t and now() + t
      local stepped = false -- (as wait_for: a poll gets what is there)
      while pending_r or pending_w do
        if deadline and stepped and now() >= deadline then
          cancel_pending()
          deadline = nil
        end
        wait_step(deadline and math.max(0, deadline - now()))
        stepped = true
      end
    end)
    release_hold(self, held_in) -- (allocates nothing: cannot fail)
    if not ops[2] then pending_w = false end -- (not started: no end will come)
    if not waited then error(err, 0) end
    r.delivered, w.delivered = true, true
    release(r)
    release(w)
  end
  if got_r or got_w then return { readable = got_r or nil, writable = got_w or nil } end
  return nil, emsg, ename, ecode
end

--- np.event(): a one-shot event for tasks (namedpipe.event).
M.event = require("namedpipe.event").install {
  now = now, wait_step = wait_step, check_timeout = check_timeout,
  refuse_after = refuse_after, timed_out = timed_out,
}

--- np.open(name [, opts]): opts may add `timeout` (ms: retry while every
--- instance is busy, as Tokio's documented loop does) and `wait_for_server`
--- (also retry while the name does not exist yet).
function M.open(name, opts)
  -- (a table with a metatable: the C function refuses it, as create does)
  if type(opts) ~= "table" or getmetatable(opts) ~= nil
      or (opts.timeout == nil and opts.wait_for_server == nil) then
    return core.open(name, opts)
  end
  local rest, timeout, wait = {}, opts.timeout, opts.wait_for_server
  for k, v in pairs(opts) do
    if k ~= "timeout" and k ~= "wait_for_server" then rest[k] = v end
  end
  if timeout ~= nil and (math_type(timeout) == nil or not (timeout >= 0)) then -- luacheck: ignore 581 (NaN too)
    error("bad argument #2 to 'open' (option 'timeout': milliseconds >= 0 expected)", 2)
  end
  if wait ~= nil and type(wait) ~= "boolean" then
    error("bad argument #2 to 'open' (option 'wait_for_server': boolean expected)", 2)
  end
  local deadline, delay = now() + (timeout or 0), 1
  while true do
    local pipe, msg, errname, code = core.open(name, rest)
    if pipe then return pipe end
    if not (errname == "PIPE_BUSY" or (wait and errname == "NOT_FOUND")) then
      return nil, msg, errname, code
    end
    local left = deadline - now()
    if left <= 0 then
      return nil, "timed out waiting for the pipe (" .. msg .. ")", "TIMEOUT", 0
    end
    -- a back-off like asyncio's, 1 ms doubling to 50 ms, each wait drawn at
    -- random below it (task.jitter); never blocks other tasks
    M.sleep(math.min(task.jitter(delay), left))
    delay = math.min(delay * 2, 50)
  end
end

-- Every waiting function is defined: the core may hand calls over now.
-- Where its methods make a task's read or write wait themselves
-- (layer.task_waits_in_c), they arm a record's timeout with arm_deadline; a
-- waiting read on the main thread made in C (main_waits.c) steps with
-- main_step, cancels with cancel_main_read, and abandon_wait takes it over
-- when an error unwinds it; a waiting write there that sent a part waits
-- for the rest with write_rest.
layer.hand_over(waiting, { task_records = task_records, arm_deadline = arm_deadline,
                           stopped_reads = stopped_reads,
                           main_step = step, cancel_main_read = cancel_main_read,
                           abandon_wait = abandon_wait, write_rest = write_rest,
                           framing_reads = framing_reads })

-- Where a C function cannot be suspended (Lua 5.1, LuaJIT), a C method
-- that would hand its call to this layer returns a marker instead
-- (binding.c, divert), and the method is this Lua function, which makes
-- the waiting call itself: a task then suspends in Lua, as it must.
-- (Each wrapper is made from source with the method's name in it: the C
-- method's argument errors name the function as its call site does.)
if not raw.c_can_yield then
  local WRAPPER = [[
    local c, wait, marker, pack, unpack = ...
    return function(self, ...)
      local r = pack(c.NAME(self, ...))
      if r[1] == marker then return wait(self, ...) end
      return unpack(r, 1, r.n)
    end]]
  local compile = loadstring or load -- luacheck: ignore 113
  for name, wait in pairs(waiting) do
    if methods[name] then
      local make = assert(compile(WRAPPER:gsub("NAME", name), "=namedpipe." .. name))
      methods[name] = make({ [name] = methods[name] }, wait, raw.divert_marker, pack, unpack)
    end
  end
end

require("namedpipe.framing").install(M, methods, {
  readahead = readahead, set_readahead = set_readahead, session = session,
  framing_reads = framing_reads, sync_divert = sync_divert,
  holds_nothing = holds_nothing,
  readahead_view = readahead_view, readahead_len = readahead_len,
  take_lens = take_lens, lens_push = lens_push, lens_drop = lens_drop,
  lens_append = lens_append, ahead_lens = ahead_lens,
  prepend_readahead = prepend_readahead,
  readahead_rest = readahead_rest, readahead_cut = readahead_cut,
  take_readahead = take_readahead, take_rope = take_rope,
  check_not_reading = check_not_reading,
  unsettled = unsettled,
  check_timeout = check_timeout, refuse_after = refuse_after, settle = settle,
  wait_begin = wait_begin, wait_end = wait_end, raw = raw,
})
M.serve = require("namedpipe.serve").install(M)

return M
