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
local pack, unpack, tremove = table.pack, table.unpack, table.remove

local T = {}

local tasks = setmetatable({}, { __mode = "k" }) -- coroutine -> true while alive
local live = 0
local soon = {}   -- { fn, args } to run at the next step, in order
local timers = {} -- sorted by .at

local function tell_core()
  local first = timers[1]
  set_task_work(soon[1] ~= nil, first and first.at)
end

--- The task running now, or nil (main thread or a user coroutine).
function T.current()
  local co, main = co_running()
  if not main and tasks[co] then return co end
  return nil
end

local function finish(co, ok, err)
  if co_status(co) == "dead" then
    tasks[co] = nil
    live = live - 1
    if not ok then
      error(debug.traceback(co, "namedpipe task failed: " .. tostring(err)), 0)
    end
  end
end

--- Resume task co with values; an error in it is raised here with the
--- task's own traceback (so it surfaces from step()).
function T.resume(co, ...)
  finish(co, co_resume(co, ...))
end

--- Run fn(...) at the next step.
function T.soon(fn, ...)
  soon[#soon + 1] = pack(fn, ...)
  tell_core()
end

function T.spawn(fn, ...)
  if type(fn) ~= "function" then
    error("bad argument #1 to 'spawn' (function expected, got " .. type(fn) .. ")", 2)
  end
  local co = co_create(fn)
  tasks[co] = true
  live = live + 1
  T.soon(T.resume, co, ...)
  return co
end

--- Suspend the current task until T.wake(co, ...) or a callback resumes it.
T.suspend = co_yield

--- Wake task co at the next step with values (safe from anywhere).
function T.wake(co, ...)
  T.soon(T.resume, co, ...)
end

function T.add_timer(ms, fn)
  -- a NaN deadline would sit at the head of the list and stall every timer
  assert(ms >= 0, "timer: milliseconds >= 0 expected")
  local t = { at = now() + ms, fn = fn }
  local i = #timers
  while i > 0 and timers[i].at > t.at do i = i - 1 end
  table.insert(timers, i + 1, t)
  tell_core()
  return t
end

function T.cancel_timer(t)
  for i = 1, #timers do
    if timers[i] == t then
      tremove(timers, i)
      tell_core()
      return
    end
  end
end

--- Run what is due: things queued with soon() before this call, then
--- expired timers. One at a time, so an error leaves the rest queued.
function T.run_due()
  local n = 0
  for _ = 1, #soon do
    local item = tremove(soon, 1)
    if not item then break end -- a queued item stepped the loop itself
    n = n + 1
    item[1](unpack(item, 2, item.n))
  end
  local t = now()
  while timers[1] and timers[1].at <= t do
    local timer = tremove(timers, 1)
    n = n + 1
    timer.fn()
  end
  tell_core()
  return n
end

--- How long step may wait: `wait` capped by the next timer; 0 if work is due.
function T.wait_budget(wait)
  if #soon > 0 then return 0 end
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
  return live > 0 or #timers > 0 or #soon > 0
end

function T.live() return live end

--- Sleep ms milliseconds: suspends a task; elsewhere drives the loop.
function T.sleep(ms, step)
  local co = T.current()
  if co then
    T.add_timer(ms, function() T.resume(co) end)
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
