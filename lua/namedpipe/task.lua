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
-- on until then).
local set_task_work = core._raw.set_task_work
local co_create, co_resume, co_running, co_status, co_yield =
  coroutine.create, coroutine.resume, coroutine.running, coroutine.status, coroutine.yield
local compat = require "namedpipe.compat"
local pack, unpack, floor = compat.pack, compat.unpack, math.floor

local T = {}

-- coroutine -> its ticket while alive: the number of the wait it was
-- last armed for (T.arm)
local tasks = setmetatable({}, { __mode = "k" })
local live = 0
-- { fn, args } to run at the next step, in order: soon[soon_head] to
-- soon[soon_tail], a queue taken from its head without moving the rest
-- (taking one costs the same however many wait behind it)
local soon, soon_head, soon_tail = {}, 1, 0
-- A binary heap of timers, earliest first: timers[1] is the one due next.
-- Each timer knows its place (.pos, nil once it has fired or been
-- cancelled), so a wait that ends before its timeout takes its timer out
-- without a search, and thousands of waits with timeouts cost each a few
-- steps, not a walk of the others. Timers due at the same time fire in
-- the order they were set (.seq).
local timers, timer_seq = {}, 0

local function tell_core()
  local first = timers[1]
  set_task_work(soon_head <= soon_tail, first and first.at)
end

--- The task running now, or nil (main thread or a user coroutine).
function T.current()
  local co, main = co_running()
  if not main and tasks[co] then return co end
  return nil
end

-- coroutine -> what to run when it ends (T.spawn_finally)
local finally = setmetatable({}, { __mode = "k" })

local function finish(co, ok, err)
  if co_status(co) == "dead" then
    local after = finally[co]
    tasks[co] = nil
    finally[co] = nil
    live = live - 1
    if after then after(ok) end
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
  local co, main = co_running()
  local n = not main and tasks[co]
  if not n then return nil end
  n = n + 1
  tasks[co] = n
  return co, n
end

--- Resume co with values if ticket is its live one (true), else nothing
--- (false). A dead task has none.
function T.resume_once(co, ticket, ...)
  if tasks[co] ~= ticket then return false end
  tasks[co] = ticket + 1
  finish(co, co_resume(co, ...))
  return true
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
  soon_tail = soon_tail + 1
  soon[soon_tail] = pack(fn, ...)
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
  local co = co_create(fn)
  tasks[co] = 0
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

local function before(a, b)
  return a.at < b.at or (a.at == b.at and a.seq < b.seq)
end

-- Move the timer at i up, or down, to where the heap wants it.
local function sift_up(i)
  local t = timers[i]
  while i > 1 do
    local up = floor(i / 2)
    local u = timers[up]
    if not before(t, u) then break end
    timers[i], u.pos = u, i
    i = up
  end
  timers[i], t.pos = t, i
end

local function sift_down(i)
  local n, t = #timers, timers[i]
  while true do
    local c = 2 * i
    if c > n then break end
    if c < n and before(timers[c + 1], timers[c]) then c = c + 1 end
    local d = timers[c]
    if not before(d, t) then break end
    timers[i], d.pos = d, i
    i = c
  end
  timers[i], t.pos = t, i
end

-- Take the timer at i out of the heap.
local function take_timer(i)
  local n = #timers
  local t, last = timers[i], timers[n]
  timers[n] = nil
  t.pos = nil
  if i < n then -- the last one fills the hole, then finds its place
    timers[i] = last
    sift_down(i)
    sift_up(last.pos)
  end
  return t
end

function T.add_timer(ms, fn)
  -- a NaN deadline would sit at the head of the heap and stall every timer
  assert(ms >= 0, "timer: milliseconds >= 0 expected")
  timer_seq = timer_seq + 1
  local t = { at = now() + ms, fn = fn, seq = timer_seq }
  timers[#timers + 1] = t
  sift_up(#timers)
  tell_core()
  return t
end

--- Take timer t out (nothing if it has fired or was cancelled).
function T.cancel_timer(t)
  local i = t.pos
  if i and timers[i] == t then
    take_timer(i)
    tell_core()
  end
end

--- Run what is due: things queued with soon() before this call, then
--- expired timers. One at a time, so an error leaves the rest queued.
function T.run_due()
  local n = 0
  for _ = 1, soon_tail - soon_head + 1 do
    local item = take_soon()
    if not item then break end -- a queued item stepped the loop itself
    n = n + 1
    item[1](unpack(item, 2, item.n))
  end
  local t = now()
  while timers[1] and timers[1].at <= t do
    local timer = take_timer(1)
    n = n + 1
    timer.fn()
  end
  tell_core()
  return n
end

--- How long step may wait: `wait` capped by the next timer; 0 if work is due.
function T.wait_budget(wait)
  if soon_head <= soon_tail then return 0 end
  if timers[1] then
    local left = timers[1].at - now()
    if left < 0 then left = 0 end
    if left < wait then return left end
  end
  return wait
end

--- Milliseconds until the earliest timer is due (0 if it is), or nil.
function T.next_timer()
  local first = timers[1]
  if not first then return nil end
  local left = first.at - now()
  return left > 0 and left or 0
end

--- Anything left that needs the loop: live tasks, timers or queued work.
function T.busy()
  return live > 0 or #timers > 0 or soon_head <= soon_tail
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

return T
