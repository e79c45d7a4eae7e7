--[[
namedpipe - asynchronous named pipes for Lua 5.4.

The C core (namedpipe.core) only knows callbacks: connect(cb), read([n,] cb),
write(data, cb), all dispatched by step(). This file adds the synchronous
form: called without a callback, connect/read/write drive the loop
themselves until their own operation has finished (running any other
callbacks that come due meanwhile), with an optional timeout in
milliseconds. So `client:write("hi")` then `server:read()` just work in a REPL.
]]
local core = require "namedpipe.core"

local M = {}
for k, v in pairs(core) do M[k] = v end

local methods = core.methods
local step, now = core.step, core.now
local pack, unpack = table.pack, table.unpack

local raw_connect, raw_read, raw_write = methods.connect, methods.read, methods.write

local function check_timeout(t, arg, fname)
  if t ~= nil and (math.type(t) == nil or t < 0 or t ~= t) then
    error(("bad argument #%d to '%s' (timeout in milliseconds expected, got %s)")
      :format(arg, fname, type(t) == "number" and tostring(t) or type(t)), 3)
  end
  return t
end

-- Start an operation with `start(callback)` and step the loop until that
-- callback has run. On timeout the operation is cancelled and we still wait
-- for its completion: if it finished in the meantime, its real result wins
-- (nothing read or written is ever dropped on the floor).
local function await(pipe, op, start, timeout)
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
        if pipe:state() ~= "closed" then pipe:cancel(op, "TIMEOUT") end
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

--- server:connect([cb | timeout])
function methods.connect(self, a)
  if type(a) == "function" then return raw_connect(self, a) end
  check_timeout(a, 2, "connect")
  return await(self, "connect", function(cb) raw_connect(self, cb) end, a)
end

--- pipe:read([n] [, cb | timeout])
function methods.read(self, a, b)
  if type(b) == "function" then return raw_read(self, a, b) end
  if type(a) == "function" then return raw_read(self, a) end
  check_timeout(b, 3, "read")
  return await(self, "read", function(cb) raw_read(self, a, cb) end, b)
end

--- pipe:write(data [, cb | timeout])
function methods.write(self, data, a)
  if type(a) == "function" then return raw_write(self, data, a) end
  check_timeout(a, 3, "write")
  return await(self, "write", function(cb) raw_write(self, data, cb) end, a)
end

return M
