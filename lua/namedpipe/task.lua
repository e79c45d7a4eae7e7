--[[
namedpipe.task - the coroutines and timers behind np.spawn, np.sleep and
the timeouts of suspended calls. Pure Lua on top of namedpipe.core.

Tasks are coroutines created by spawn(); they run only from step() (never
from the call that spawned or woke them), so a Lua host keeps control of
when scripts run. A coroutine the user created is not a task: inside it
calls block as in the main thread.
]]
local core = require "namedpipe.core"

local now = core.now
-- core.step goes straight to C unless told that tasks or timers need it
-- (binding.c, divert): told after every change below, with what is queued
-- for the next step and when the earliest timer is due (a step's rounds go
-- on until then). How to tell it is namedpipe.lua's to give (T.attach):
-- the core's private half.
local set_task_work = function() end
local co_create, co_resume, co_running, co_status, co_yield =
  coroutine.create, coroutine.resume, coroutine.running, coroutine.status, coroutine.yield
local compat = require "namedpipe.compat"
local pack, unpack = compat.pack, compat.unpack

--[[
A task can suspend only where its coroutine can yield: not inside a C
function's call of Lua (a table.sort comparator, a callback run by an
np.step that the task itself called), nor, on Lua 5.1, across a pcall or a
metamethod. A wait that started its operation there and then failed to
yield would leave the operation behind with the task's wake as its
callback, to resume the task's next wait with another operation's result.
Where Lua can tell (5.3, 5.4 and LuaJIT: coroutine.isyieldable), a task
that cannot yield is not a task for its waits: they block and step the
loop, as in the main thread. Lua 5.1 and 5.2 cannot tell beforehand, so a
task's wait first yields a probe, which the resumer hands straight back,
before it starts anything: where the yield fails, the call raises with
nothing started. (On 5.2 a pcall can catch that probe's failure, and the
wait then blocks as on 5.3; on 5.1 a pcall cannot be yielded across at
all, so the wait raises.)
]]
local co_isyieldable = compat.co_isyieldable
local PROBE = {}
local probe_once -- (5.1 and 5.2: the probe, yielded where it is safe)
if not co_isyieldable then
  if _VERSION == "Lua 5.2" then
    -- true: the task can suspend (the probe went and came back)
    probe_once = function() return (pcall(co_yield, PROBE)) end
  else
    probe_once = function() co_yield(PROBE) return true end
  end
end

local T = {}

-- Can a task yield across a pcall (all but Lua 5.1)?
T.pcall_yields = co_isyieldable ~= nil or _VERSION == "Lua 5.2"

-- coroutine -> its record while alive (T.wait_record): rec.n is its
-- ticket, the number of the wait it was last armed for (T.arm), -1 once
-- it has ended. (The core's methods arm records too, as T.wait_record
-- does, reading n, ticket and wake: lua/namedpipe.lua hands it over.)
local tasks = setmetatable({}, { __mode = "k" })

--- Once, from lua/namedpipe.lua: tell the core through fn(soon, timer_at)
--- from now on, and make room with room() before an item is taken off the
--- queues below to run (the core's layer.make_room). Returns the records,
--- which that file hands to the core (its methods make a task's read or
--- write wait themselves).
local make_room = function() end
function T.attach(fn, room)
  set_task_work = fn
  make_room = room or make_room
  return tasks
end
local live = 0
-- { fn, args } to run at the next step, in order: soon[soon_head] to
-- soon[soon_tail], a queue taken from its head without moving the rest
-- (taking one costs the same however many wait behind it)
local soon, soon_head, soon_tail = {}, 1, 0
-- Timers: a binary min-heap on (at, seq), each timer knowing its place
-- (.slot) so that cancelling one is as cheap as adding one, however many
-- tasks wait with a timeout. seq keeps timers due at the same time in the
-- order they were set.
local heap, nheap, seq = {}, 0, 0

-- What the core was told last (run_due compares)
local told_soon, told_at = false, nil

local function tell_core()
  repeat -- (again if a step nested in the call changed what to tell)
    local first = heap[1]
    local is_soon, at = soon_head <= soon_tail, first and first.at
    told_soon, told_at = is_soon, at
    set_task_work(is_soon, at)
    first = heap[1]
  until is_soon == (soon_head <= soon_tail) and at == (first and first.at)
end

-- (i - i % 2) / 2: the parent's place on every Lua version (no //); a
-- float with an integer value on 5.3+, which indexes the same entry.

-- Take t out of the heap (out), or give it the key (at, tseq); then move
-- what is out of order to its place. Returns t's place, or nil if t was
-- not in the heap. Nothing here calls a function, and every change
-- happens here: at any call (a call hook's or a finalizer's step may run
-- there) the heap is whole. (Not so at the call of a separate sift, after
-- the last entry or a raised key is put in place: another entry sifted up
-- by the nested step can pass that one and settle above a child earlier
-- than it.)
local function reheap(t, out, at, tseq)
  local i = t.slot
  if not i then return nil end
  local place = i
  if out then
    t.slot = nil
    local last = heap[nheap]
    heap[nheap] = nil
    nheap = nheap - 1
    if last == t then return place end
    t, at, tseq = last, last.at, last.seq
  else
    t.at, t.seq = at, tseq
  end
  local from = i
  while i > 1 do
    local parent = (i - i % 2) / 2
    local p = heap[parent]
    local pat = p.at
    if not (at < pat or (at == pat and tseq < p.seq)) then break end
    heap[i], p.slot = p, i
    i = parent
  end
  if i == from then -- (not up: down, maybe)
    while true do
      local child = 2 * i
      if child > nheap then break end
      local c = heap[child]
      if child < nheap then
        local right = heap[child + 1]
        if right.at < c.at or (right.at == c.at and right.seq < c.seq) then
          child, c = child + 1, right
        end
      end
      if not (c.at < at or (c.at == at and c.seq < tseq)) then break end
      heap[i], c.slot = c, i
      i = child
    end
  end
  heap[i], t.slot = t, i
  return place
end

--- The task running now, or nil (main thread, a user coroutine, or a
--- task where it cannot yield: see the top of the file).
function T.current()
  local co, main = co_running()
  if not main and tasks[co] and (not co_isyieldable or co_isyieldable())
    and (not probe_once or probe_once()) then return co end
  return nil
end

--- Is the running coroutine a task (whether or not it can yield here)?
function T.in_task()
  local co, main = co_running()
  return not main and tasks[co] ~= nil
end

-- coroutine -> what to run when it ends (T.spawn_finally)
local finally = setmetatable({}, { __mode = "k" })

-- What a task's body returns when it ends (T.spawn), so that a resume
-- that merely suspended it is told apart without asking its status.
local ENDED = {}

local function finish(co, ok, err)
  while ok and err == PROBE do ok, err = co_resume(co) end -- (5.1, 5.2: see the top)
  if ok and err ~= ENDED then return end -- suspended (a wait yields nothing)
  if co_status(co) == "dead" then
    -- (the bookkeeping first, in stores that cannot fail; then the calls,
    -- which may run out of memory: a dead task still counted as live
    -- would keep np.run waiting for it forever)
    local after = finally[co]
    local rec = tasks[co]
    tasks[co] = nil
    finally[co] = nil
    live = live - 1
    if rec then
      rec.n = -1 -- (no ticket of it is live any more)
      rec.due = nil -- (its deadline, should the timer outlive the cancel)
      T.cancel_timer(rec)
    end
    if after then
      if ok then
        after(ok)
      else -- (its error must not hide the task's: it comes from the next step)
        local after_ok, after_err = pcall(after, ok)
        if not after_ok then T.soon(error, after_err, 0) end
      end
    end
    if not ok then
      error(debug.traceback(co, "namedpipe task failed: " .. tostring(err)), 0)
    end
  end
end

--- Resume task co with values; an error in it is raised here with the
--- task's own traceback (so it surfaces from step()). Only for a task's
--- first run: a suspended task is resumed with resume_once.
function T.resume(co, ...)
  finish(co, co_resume(co, ...))
end

-- A wake-up that came while its task was running, not suspended: a step
-- nested in the task's own call (from a call hook, or a finalizer) ended
-- the wait the task is about to suspend in. It cannot be resumed now; it
-- is from a later step, with the same values, once it has suspended (a
-- step still nested in the task puts it off again).
-- ticket: the one the wake spent (rec.n is ticket + 1 until the task arms
-- its next wait). A task that did not suspend in that wait (it raised, or
-- ended) is not resumed: its next wait is not the one the values are for.
local function resume_suspended(co, ticket, ...)
  local rec = tasks[co]
  if not rec or rec.n ~= ticket + 1 then return end
  if co_status(co) ~= "suspended" then return T.soon(resume_suspended, co, ticket, ...) end
  finish(co, co_resume(co, ...))
end

-- (Asked only of a resume that failed: the task raised (dead), or it was
-- not suspended: running, or normal, having resumed another coroutine.)
local function woken_while_running(co, ticket, ...)
  if co_status(co) == "dead" then return false end
  T.soon(resume_suspended, co, ticket, ...)
  return true
end

--[[
The one way to end a suspension: a ticket. Before it suspends, a task
takes one (T.arm); whatever may end the wait gets it, and resumes with
T.resume_once(co, ticket, ...). The first such call resumes the task and
spends the ticket; every later one, from whatever source (the timer of a
wait set() ended, a stale wake, a second readiness callback), finds it
spent and does nothing. So a task is resumed once per wait, and never in
the middle of its next one. Each arm draws a new ticket, so one left
behind by a wait that never suspended (its start raised) is spent too.
]]

--- The current task and a new ticket for its next suspension; nil
--- outside a task.
function T.arm()
  local co = T.current()
  local rec = co and tasks[co]
  if not rec then return nil end
  local n = rec.n + 1
  rec.n = n
  return co, n
end

--- Resume co with values if ticket is its live one (true), else nothing
--- (false). A dead task has none.
function T.resume_once(co, ticket, ...)
  local rec = tasks[co]
  if not rec or rec.n ~= ticket then return false end
  rec.n = ticket + 1
  local ok, err = co_resume(co, ...)
  if ok or not woken_while_running(co, ticket, ...) then finish(co, ok, err) end
  return true
end

--[[
The current task's wait record, armed for its next suspension (as arm()),
and its wake; nil outside a task. One per task, reused by every wait it
makes, so a wait allocates nothing: rec.wake(...) resumes the task for this wait only
(resume_once with its ticket). T.set_deadline(rec, ms) gives the wait a
timeout: rec.fn(rec), the caller's, runs then unless the wait ended;
rec.target is the caller's too (what rec.fn acts on), let go at the wake.

The record is a lazy timer. It stays in the timer heap from one timed
wait to the next, keyed by the deadline it had when it went in: a wait
that ends only forgets its deadline (rec.due), and a later wait's later
deadline only replaces it. When the key comes due, run_due either moves
the record to its current deadline, drops it (no timed wait), or runs
rec.fn. So a timed wait that ends in time, the usual case, costs no heap
work at all; the price is a wake-up at the stale key, at most once per
timeout, and np.timeout() that may say earlier than need be.
]]
function T.wait_record()
  local co = T.current()
  local rec = co and tasks[co]
  if not rec then return nil end
  local n = rec.n + 1
  rec.n, rec.ticket = n, n
  return rec, rec.wake
end

-- A new task's record (made once: its wake is every wait's callback).
local function new_record(co)
  -- (started: stored after a wait's operation has started, where nothing
  -- may allocate; armed: the ticket its deadline was armed for)
  local rec = { n = 0, lazy = true, started = false, armed = false }
  rec.wake = function(...) -- (T.resume_once, inline: it runs per wait)
    rec.due, rec.target = nil, nil
    local ticket = rec.ticket
    if rec.n ~= ticket then return false end
    rec.n = ticket + 1
    local ok, err = co_resume(co, ...)
    if ok or not woken_while_running(co, ticket, ...) then finish(co, ok, err) end
    return true
  end
  return rec
end

--- arm() as one function: resume(...) is resume_once with the ticket
--- (for timers and lists of waiters). To resume from the next step
--- rather than now: T.soon(resume, ...).
function T.waiter()
  local co, ticket = T.arm()
  return function(...) return T.resume_once(co, ticket, ...) end
end

--- Run fn(...) at the next step.
function T.soon(fn, ...)
  -- (the item is made first: pack is a call, and a step nested in it (a
  -- call hook's, a finalizer's) would take a place counted and still
  -- empty for the end of the queue, and the item put there later be lost)
  local item = pack(fn, ...)
  local tail = soon_tail + 1
  soon[tail] = item
  soon_tail = tail
  tell_core()
end

-- The first of soon, taken off, or nil.
local function take_soon()
  if soon_head > soon_tail then return nil end
  local item = soon[soon_head]
  soon[soon_head] = nil
  if soon_head == soon_tail then
    soon_head, soon_tail = 1, 0 -- empty: start again at 1
  else
    soon_head = soon_head + 1
  end
  return item
end

function T.spawn(fn, ...)
  if type(fn) ~= "function" then
    error("bad argument #1 to 'spawn' (function expected, got " .. type(fn) .. ")", 2)
  end
  local co = co_create(function(...)
    fn(...)
    return ENDED
  end)
  tasks[co] = new_record(co)
  live = live + 1
  T.soon(T.resume, co, ...)
  return co
end

--- spawn(fn, ...), and once the task has ended (returned or raised),
--- after(ok) runs, before its error surfaces. For work that must follow
--- the task whatever happens to it, where a pcall around fn would stop
--- the task from suspending (Lua 5.1 cannot yield across one).
function T.spawn_finally(after, fn, ...)
  local co = T.spawn(fn, ...)
  finally[co] = after
  return co
end

--- Suspend the current task until its waiter's resume is called.
T.suspend = co_yield

-- Put timer t (not in the heap) in it, due at `at`; the core hears of it
-- only if it is the first due. What may allocate comes first (t's fields,
-- the heap's next entry), so that running out of memory here leaves the
-- heap as it was; the sift below then only stores into entries that
-- exist.
local function insert(t, at, due)
  -- (t put in meanwhile by a step nested in this call: left as it is; due,
  -- for a record, its deadline, set here where nothing nests)
  if t.slot then return end
  if due then -- (a record's wait, still the live one)
    if t.n ~= t.ticket then return end
    t.due = due
  end
  t.slot, t.at, t.seq = false, at, seq + 1
  heap[nheap + 1] = t
  seq = seq + 1
  nheap = nheap + 1
  -- (sift, inline: calling it could run out of memory for its frame,
  -- with t counted and out of place)
  local i, tseq = nheap, t.seq
  while i > 1 do
    local parent = (i - i % 2) / 2
    local p = heap[parent]
    local pat = p.at
    if not (at < pat or (at == pat and tseq < p.seq)) then break end
    heap[i], p.slot = p, i
    i = parent
  end
  heap[i], t.slot = t, i
  if i == 1 then tell_core() end
end

--- Time out the current wait of record rec (T.wait_record) in ms
--- milliseconds: rec.fn(rec) runs then, unless rec.wake ran first.
function T.set_deadline(rec, ms)
  -- (ms is a checked timeout: a number >= 0)
  local due = now() + ms
  rec.due = due
  if not rec.slot then
    insert(rec, due)
  elseif due < rec.at then -- a shorter timeout than the key: move it up
    reheap(rec, false, due, rec.seq)
    if rec.slot == 1 then tell_core() end
  end
end

--- A new timer running fn() in ms milliseconds.
function T.add_timer(ms, fn)
  -- a NaN deadline would sit at the head of the heap and stall every timer
  assert(ms >= 0, "timer: milliseconds >= 0 expected")
  local t = { fn = fn }
  insert(t, now() + ms)
  return t
end

--- Stop timer t if it is set (a timer that went off or was cancelled
--- is not).
function T.cancel_timer(t)
  if t.slot and reheap(t, true) == 1 then tell_core() end
end

--- Run what is due: things queued with soon() before this call, then
--- expired timers. One at a time, so an error leaves the rest queued.
function T.run_due()
  local n = 0
  for _ = 1, soon_tail - soon_head + 1 do
    -- (first: nothing between taking an item and running it may run out
    -- of memory, or the item is lost: a task never started or resumed)
    make_room()
    local item = take_soon()
    if not item then break end -- a queued item stepped the loop itself
    n = n + 1
    item[1](unpack(item, 2, item.n))
  end
  local t = now()
  local changed = n > 0
  local again -- wait records whose fn said not yet: due again at the next step
  while heap[1] and heap[1].at <= t do
    make_room() -- (as for the queue above)
    -- (looked at again: a step nested in that call may have run it)
    local timer = heap[1]
    if not timer or timer.at > t then break end
    changed = true
    local due = timer.due
    if due and due > t then -- a wait record whose deadline moved on: re-key it
      seq = seq + 1
      reheap(timer, false, due, seq)
    elseif reheap(timer, true) then -- (else a step nested in that call took it)
      due = timer.due -- (again: a step nested in that call may have moved it)
      if not timer.lazy then
        n = n + 1
        timer.fn()
      elseif due and due > t then -- (a later deadline set meanwhile)
        insert(timer, due)
      elseif due then
        timer.due = nil
        n = n + 1
        if timer.fn(timer) == false then
          again = again or {}
          again[#again + 1] = timer
        end
      end
    end
  end
  if again then
    for i = 1, #again do
      local timer = again[i]
      -- (its wait still the live one, and not re-armed by what ran meanwhile)
      if not timer.slot and timer.n == timer.ticket then
        insert(timer, t, t) -- (insert looks at the slot again)
      end
    end
  end
  -- (the queue or the heap changed: the core hears of it once, here; and
  -- after a run that raised, which left it with a stale view (work queued,
  -- a timer past due: a host polling np.fd() would wake for nothing, again
  -- and again), at the next step's)
  if changed or told_soon ~= (soon_head <= soon_tail) or told_at ~= (heap[1] and heap[1].at) then
    tell_core()
  end
  return n
end

--- How long step may wait: `wait` capped by the next timer; 0 if work is due.
function T.wait_budget(wait)
  if soon_head <= soon_tail then return 0 end
  if heap[1] then
    local left = heap[1].at - now()
    if left < 0 then left = 0 end
    if left < wait then return left end
  end
  return wait
end

--- Milliseconds until the earliest timer is due (0 if it is), or nil; a
--- day at most (a timeout of math.huge is a timer too: a host timer armed
--- for inf fails, and one armed for a day is simply armed again).
local DAY_MS = 86400000
function T.next_timer()
  local first = heap[1]
  if not first then return nil end
  local left = first.at - now()
  if not (left <= DAY_MS) then return DAY_MS end -- luacheck: ignore 581 (NaN too)
  return left > 0 and left or 0
end

--- Anything left that needs the loop: live tasks, timers or queued work.
function T.busy()
  return live > 0 or nheap > 0 or soon_head <= soon_tail
end

function T.live() return live end

--- Sleep ms milliseconds: suspends a task; elsewhere drives the loop.
function T.sleep(ms, step)
  if T.current() then
    T.add_timer(ms, T.waiter())
    co_yield()
    return
  end
  local deadline = now() + ms
  while true do
    local left = deadline - now()
    if left <= 0 then return end
    step(left)
  end
end

--- A wait of up to ms milliseconds drawn at random, for retrying a name
--- that was busy (np.open on PIPE_BUSY, serve's create).
-- The back-off doubles (1 ms to 50 ms; asyncio's to 100 ms); each wait is drawn
-- at random below it ("full jitter"). Clients that found a name busy
-- together otherwise come back together, and of each such wave only the
-- first gets the instance freed meanwhile: 50 clients opening at once
-- against one listening instance took 2 s, and take 60-90 ms drawn so.
-- The draws are this module's own (Park and Miller's minimal generator,
-- exact in doubles on every Lua), so that math.random's sequence stays the
-- caller's; seeded from a table's address and the clocks, so that
-- processes started together draw apart (on Lua 5.1 and LuaJIT,
-- math.random starts every process on the same sequence). Under Wine
-- every process's first table has the same address, and seeds a few
-- microseconds apart give nearly the same first draws: the generator is
-- run a few times before its first draw. (A host may have left out the
-- os library: then the monotonic clock alone.)
local M31 = 2147483647
local floor = math.floor
local os_time = type(os) == "table" and os.time or function() return 0 end
local os_clock = type(os) == "table" and os.clock or function() return 0 end
local drawn
function T.jitter(ms)
  if not drawn then
    local addr = tonumber(tostring({}):match("(%x+)$"), 16) or 0
    drawn = (addr % M31 + floor(now() * 1000) % M31 + os_time() % M31
      + floor(os_clock() * 1e6) % M31) % (M31 - 1) + 1
    for _ = 1, 3 do drawn = (drawn * 16807) % M31 end
  end
  drawn = (drawn * 16807) % M31
  return ms * drawn / M31
end

return T
