--[[
namedpipe.event - np.event(): a one-shot event for tasks to hand each
other results. ev:set(...) stores the values and wakes every waiter (false
if it was set already); ev:wait([timeout]) returns them (at once if set),
suspending only the calling task (elsewhere it drives the loop); on
timeout nil, "timed out", "TIMEOUT", 0. ev:is_set().
]]
local task = require "namedpipe.task"
local compat = require "namedpipe.compat"
local pack, unpack = compat.pack, compat.unpack

local E = {}

--- install(shared) -> np.event, made with what the main module shares:
--- now, wait_step (one step of a wait on the main thread), check_timeout,
--- refuse_after and timed_out (a wait's TIMEOUT results).
function E.install(shared)
  local now, wait_step = shared.now, shared.wait_step
  local check_timeout, refuse_after, timed_out = shared.check_timeout, shared.refuse_after, shared.timed_out
  return function()
    -- waiters in arrival order; a waiter that timed out leaves false in its
    -- place (found through `at`, not by a walk: many waiters timing out one
    -- by one must not cost a walk each), and the holes are squeezed out once
    -- they are half the list
    local ev, waiters, at, holes, values = {}, {}, {}, 0, nil
    -- (ev.wait(200) for ev:wait(200) took 200 for self and waited for ever;
    -- ev.set(42) set the event without its value)
    local function check_self(self, fname)
      if self ~= ev then
        error(("bad argument #1 to '%s' (namedpipe event expected, got %s: call it as ev:%s)")
          :format(fname, type(self), fname), 3)
      end
    end
    local function leave(resume)
      local i = at[resume]
      if not i then return end -- set() woke it: the list is gone
      waiters[i], at[resume], holes = false, nil, holes + 1
      if holes * 2 > #waiters then
        local kept = {}
        for j = 1, #waiters do
          local w = waiters[j]
          if w then
            kept[#kept + 1] = w
            at[w] = #kept
          end
        end
        waiters, holes = kept, 0
      end
    end
    function ev:set(...)
      check_self(self, "set")
      if values then return false end
      values = pack(...)
      -- woken from the next step, never inside set(): the setter may be in
      -- the middle of something the waiter must not interrupt
      for i = 1, #waiters do
        if waiters[i] then task.soon(waiters[i]) end
      end
      waiters, at, holes = {}, {}, 0
      return true
    end
    function ev:is_set()
      check_self(self, "is_set")
      return values ~= nil
    end
    function ev:wait(timeout, ...)
      check_self(self, "wait")
      check_timeout(timeout, 2, "wait")
      refuse_after("wait", 3, "nothing expected after the timeout", ...)
      if not values then
        if task.current() then
          -- set() and the timer share one resume: whichever comes first
          -- wakes the task, the other does nothing
          local resume = task.waiter()
          waiters[#waiters + 1] = resume
          at[resume] = #waiters
          local timer = timeout and task.add_timer(timeout, resume)
          task.suspend()
          if timer then task.cancel_timer(timer) end
          leave(resume)
        else
          local deadline = timeout and now() + timeout
          while not values do
            local left = deadline and deadline - now()
            if left and left <= 0 then break end
            wait_step(left)
          end
        end
      end
      if not values then return timed_out() end
      return unpack(values, 1, values.n)
    end
    return ev
  end
end

return E
