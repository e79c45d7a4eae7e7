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
for k, v in pairs(core) do M[k] = v end

local methods = core.methods
local now = core.now
local pack, unpack = table.pack, table.unpack

-- The C methods and core.step handle the callback form themselves and hand
-- everything else to the functions in core._waiting (binding.c, divert):
-- the waiting form, reads of a pipe with bytes read ahead, and a step with
-- tasks or timers due. raw: the C entry points that never hand over.
local raw, waiting = core._raw, core._waiting
M._raw = raw

--- np.step([timeout_ms]): run due tasks and timers, dispatch completions
--- (waiting up to timeout_ms, less if a timer is due sooner); returns how
--- many things it ran. It is core.step: straight to C while no task work
--- is queued (task.lua tells the core), else this.
local raw_step = raw.step
function waiting.step(timeout)
  if timeout ~= nil and (type(timeout) ~= "number" or not (timeout >= 0)) then
    error("bad argument #1 to 'step' (timeout in milliseconds >= 0 expected)", 3)
  end
  local n = task.run_due()
  n = n + raw_step(task.wait_budget(n > 0 and 0 or (timeout or 0)))
  return n + task.run_due()
end
local step = M.step

M.spawn = task.spawn

function M.sleep(ms)
  if math.type(ms) == nil or not (ms >= 0) then
    error("bad argument #1 to 'sleep' (milliseconds >= 0 expected)", 2)
  end
  task.sleep(ms, step)
end

--- np.run([fn, ...]): spawn fn if given, then step until no task, timer or
--- operation is left.
function M.run(fn, ...)
  if fn ~= nil then task.spawn(fn, ...) end
  while task.busy() or core.pending() > 0 do step(1000) end
end

-- level: where the error points, from the caller of check_timeout's
-- caller (3, a method called from Lua; 4, one reached through the C
-- method's hand-over, binding.c divert).
local function check_timeout(t, arg, fname, level)
  if t ~= nil and (math.type(t) == nil or not (t >= 0)) then -- NaN too
    error(("bad argument #%d to '%s' (timeout in milliseconds expected, got %s)")
      :format(arg, fname, type(t) == "number" and tostring(t) or type(t)), level or 3)
  end
  return t
end
M._check_timeout = check_timeout

local function cancel_for_timeout(pipe, op)
  if pipe:state() ~= "closed" then pipe:cancel(op, "TIMEOUT") end
end

-- Start an operation with `start(callback)` and wait for that callback. On
-- timeout the operation is cancelled and we still wait for its completion:
-- if it finished in the meantime its real result wins (nothing read or
-- written is ever dropped on the floor).
local arm, resume_once, suspend = task.arm, task.resume_once, task.suspend
local add_timer, cancel_timer = task.add_timer, task.cancel_timer

local function await(pipe, op, start, timeout)
  local co, ticket = arm()
  if co then
    local timer
    start(function(...)
      if timer then cancel_timer(timer) end
      resume_once(co, ticket, ...)
    end)
    if timeout then
      timer = add_timer(timeout, function()
        timer = nil
        cancel_for_timeout(pipe, op)
      end)
    end
    return suspend()
  end
  local done, results = false, nil
  start(function(...)
    done = true
    results = pack(...)
  end)
  local deadline = timeout and now() + timeout
  while not done do
    if deadline then
      local left = deadline - now()
      if left <= 0 then
        cancel_for_timeout(pipe, op)
        while not done do step(100) end
        break
      end
      step(left)
    else
      step(1000)
    end
  end
  return unpack(results, 1, results.n)
end
M._await = await

-- Data read ahead by the framing helpers, handed out before the pipe's.
-- Set only through set_readahead: the C methods hand a pipe's reads over
-- to this layer while it has some.
local readahead = setmetatable({}, { __mode = "k" })
M._readahead = readahead
local raw_set_readahead = raw.set_readahead
local function set_readahead(pipe, buf)
  readahead[pipe] = buf
  raw_set_readahead(pipe, buf ~= nil)
end
M._set_readahead = set_readahead

-- The C methods check n themselves; data read ahead is handed out here, so
-- check it the same way first.
local function check_count(n, fname)
  if n ~= nil and (math.type(n) ~= "integer" or n < 1) then
    error(("bad argument #2 to '%s' (positive byte count expected, got %s)")
      :format(fname, math.type(n) or type(n)), 4)
  end
end

-- Read-ahead data, if the pipe is open (a closed pipe raises in the C
-- method, as it would without any).
local function has_readahead(pipe)
  return readahead[pipe] ~= nil and pipe:state() ~= "closed"
end

local function take_readahead(pipe, n)
  local buf = readahead[pipe]
  if not buf then return nil end
  if n and n < #buf then
    set_readahead(pipe, buf:sub(n + 1))
    return buf:sub(1, n)
  end
  set_readahead(pipe, nil)
  return buf
end

-- The functions below get the calls the C methods hand over (binding.c,
-- divert); errors they raise point at level 4, the method's caller.

--- server:connect([cb | timeout])
function waiting.connect(self, a)
  if type(a) == "function" then return raw.connect(self, a) end
  check_timeout(a, 2, "connect", 4)
  return await(self, "connect", function(cb) raw.connect(self, cb) end, a)
end

--- pipe:read([n] [, cb | timeout])
function waiting.read(self, a, b)
  if type(a) == "function" and b ~= nil then -- read(cb, timeout): the timeout would be dropped
    error("bad argument #3 to 'read' (nothing expected after the callback or timeout: give one of them, last)", 4)
  end
  local cb = type(b) == "function" and b or type(a) == "function" and a or nil
  local n = type(a) ~= "function" and a or nil
  if has_readahead(self) then
    check_count(n, "read")
    local data = take_readahead(self, n)
    if cb then return task.soon(cb, data) end
    return data
  end
  if cb then return raw.read(self, n, cb) end
  check_timeout(b, 3, "read", 4)
  return await(self, "read", function(c) raw.read(self, n, c) end, b)
end

--- pipe:read_into(buf [, cb | timeout]): bytes read into buf (from its
--- first byte), a count. (The C method has checked buf.)
function waiting.read_into(self, buf, a)
  if type(a) ~= "function" then check_timeout(a, 3, "read_into", 4) end
  if has_readahead(self) then
    local n = raw.buffer_put(buf, take_readahead(self, #buf))
    if type(a) == "function" then
      -- the bytes are the callback's until it runs: busy, as a pending
      -- read's buffer is (buf:sub and another read_into into it raise)
      raw.buffer_busy(buf, true)
      return task.soon(function()
        raw.buffer_busy(buf, false)
        return a(n)
      end)
    end
    return n
  end
  if type(a) == "function" then return raw.read_into(self, buf, a) end
  return await(self, "read", function(c) raw.read_into(self, buf, c) end, a)
end

--- pipe:try_read([n])
function waiting.try_read(self, n)
  if has_readahead(self) then
    check_count(n, "try_read")
    return take_readahead(self, n)
  end
  return raw.try_read(self, n)
end

--- pipe:write(data [, cb | timeout])
function waiting.write(self, data, a)
  if type(a) == "function" then return raw.write(self, data, a) end
  check_timeout(a, 3, "write", 4)
  return await(self, "write", function(cb) raw.write(self, data, cb) end, a)
end

--- pipe:readable([cb | timeout]): true once try_read would not block.
function waiting.readable(self, a)
  if has_readahead(self) then
    if type(a) == "function" then return task.soon(a, true) end
    return true
  end
  if type(a) == "function" then return raw.readable(self, a) end
  check_timeout(a, 2, "readable", 4)
  return await(self, "readable", function(cb) raw.readable(self, cb) end, a)
end

--- pipe:writable([cb | timeout]): true once try_write would be accepted.
function waiting.writable(self, a)
  if type(a) == "function" then return raw.writable(self, a) end
  check_timeout(a, 2, "writable", 4)
  return await(self, "writable", function(cb) raw.writable(self, cb) end, a)
end

--- pipe:ready(interest [, timeout]): interest "readable", "writable" or
--- "both"; returns a set { readable = true?, writable = true? } of what was
--- ready first (as Tokio's ready(Interest)), or nil, msg, name.
function methods.ready(self, interest, timeout)
  if interest == "readable" or interest == "writable" then
    local ok, msg, name, code = methods[interest](self, timeout)
    if not ok then return nil, msg, name, code end
    return { [interest] = true }
  end
  if interest ~= "both" then
    error("bad argument #2 to 'ready' (\"readable\", \"writable\" or \"both\" expected)", 2)
  end
  check_timeout(timeout, 3, "ready")
  local mt = type(self) == "userdata" and getmetatable(self)
  if not (mt and mt.__index == methods) then
    error(("bad argument #1 to 'ready' (namedpipe.pipe expected, got %s)"):format(type(self)), 2)
  end
  if self:state() == "closed" then error("bad argument #1 to 'ready' (pipe is closed)", 2) end
  if has_readahead(self) then return { readable = true } end
  -- Both slots are checked before either wait starts: a wait started and
  -- left behind would later cancel someone else's.
  if self:_busy("read") > 0 then
    error("bad argument #1 to 'ready' (a read is already pending on this pipe)", 2)
  end
  if self:_busy("writable") > 0 then
    error("bad argument #1 to 'ready' (a writable() wait is already pending on this pipe)", 2)
  end
  -- pending: the waits started and not yet completed (only those may be
  -- cancelled: once one has completed, its kind may be someone else's)
  local got, errs, pending = {}, {}, { readable = true }
  local resume = task.current() and task.waiter()
  local function on(which, other)
    return function(ok, msg, name, code)
      pending[which] = nil
      if ok then
        got[which] = true
        -- the first one ready wins; the other wait, if still ours, is called off
        if pending[other] and self:state() ~= "closed" then self:cancel(other) end
      else
        errs[#errs + 1] = pack(nil, msg, name, code)
      end
      if resume and not pending[other] then resume() end
    end
  end
  raw.readable(self, on("readable", "writable"))
  raw.writable(self, on("writable", "readable"))
  pending.writable = true
  if resume then
    local timer = timeout and task.add_timer(timeout, function()
      if self:state() == "closed" then return end
      for which in pairs(pending) do self:cancel(which, "TIMEOUT") end
    end)
    task.suspend()
    if timer then task.cancel_timer(timer) end
  else
    local deadline = timeout and now() + timeout
    while pending.readable or pending.writable do
      if deadline and now() >= deadline then
        if self:state() ~= "closed" then
          for which in pairs(pending) do self:cancel(which, "TIMEOUT") end
        end
        deadline = nil
      end
      step(deadline and math.max(0, deadline - now()) or 100)
    end
  end
  if next(got) then return got end
  return unpack(errs[1], 1, 4)
end

--- np.event(): a one-shot event for tasks to hand each other results.
--- ev:set(...) stores the values and wakes every waiter (false if it was
--- set already); ev:wait([timeout]) returns them (at once if set),
--- suspending only the calling task (elsewhere it drives the loop); on
--- timeout nil, "timed out", "TIMEOUT", 0. ev:is_set().
function M.event()
  local ev, waiters, values = {}, {}, nil
  function ev:set(...)
    if values then return false end
    values = pack(...)
    -- woken from the next step, never inside set(): the setter may be in
    -- the middle of something the waiter must not interrupt
    for i = 1, #waiters do task.soon(waiters[i]) end
    waiters = {}
    return true
  end
  function ev:is_set() return values ~= nil end
  function ev:wait(timeout)
    check_timeout(timeout, 2, "wait")
    if not values then
      if task.current() then
        -- set() and the timer share one resume: whichever comes first
        -- wakes the task, the other does nothing
        local resume = task.waiter()
        waiters[#waiters + 1] = resume
        local timer = timeout and task.add_timer(timeout, resume)
        task.suspend()
        if timer then task.cancel_timer(timer) end
        for i = #waiters, 1, -1 do
          if waiters[i] == resume then table.remove(waiters, i) end
        end
      else
        local deadline = timeout and now() + timeout
        while not values do
          local left = deadline and deadline - now()
          if left and left <= 0 then break end
          step(left or 1000)
        end
      end
    end
    if not values then return nil, "timed out", "TIMEOUT", 0 end
    return unpack(values, 1, values.n)
  end
  return ev
end

--- np.open(name [, opts]): opts may add `timeout` (ms: retry while every
--- instance is busy, as Tokio's documented loop does) and `wait_for_server`
--- (also retry while the name does not exist yet).
function M.open(name, opts)
  if type(opts) ~= "table" or (opts.timeout == nil and opts.wait_for_server == nil) then
    return core.open(name, opts)
  end
  local rest, timeout, wait = {}, opts.timeout, opts.wait_for_server
  for k, v in pairs(opts) do
    if k ~= "timeout" and k ~= "wait_for_server" then rest[k] = v end
  end
  if timeout ~= nil and (math.type(timeout) == nil or not (timeout >= 0)) then
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
    -- asyncio's back-off: 1 ms doubling to 50 ms; never blocks other tasks
    M.sleep(math.min(delay, left))
    delay = math.min(delay * 2, 50)
  end
end

require("namedpipe.framing").install(M, methods)
M.serve = require("namedpipe.serve").install(M)

return M
