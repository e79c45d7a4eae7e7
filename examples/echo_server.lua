-- examples/echo_server.lua - a line echo server: every line a client sends
-- comes back to it. Any number of clients at once, each in its own task.
--
--   lua examples/echo_server.lua NAME [--count N]
--
-- NAME is \\.\pipe\NAME or just NAME (the prefix is added). --count N: stop
-- after N clients have been served (the tests use it); otherwise run until
-- Ctrl-C. The module must be on package.path/cpath (luarocks make, or see
-- `make demo` for running from a checkout).
local np = require "namedpipe"

-- A whole number given as text, or nil (math.tointeger is Lua 5.3's).
local function whole(text)
  local n = tonumber(text)
  if n and n == math.floor(n) then return n end
end

local name, count
do -- arguments: a name and an optional --count N, in any order
  local i = 1
  while arg[i] do
    if arg[i] == "--count" then
      count = whole(arg[i + 1]); i = i + 2
    else
      name = arg[i]; i = i + 1
    end
  end
  if not name then
    io.stderr:write("usage: lua echo_server.lua NAME [--count N]\n")
    os.exit(2)
  end
  -- a short name is a pipe name; an absolute path (Linux) is used as it is
  if not name:find("^[\\/]") then name = [[\\.\pipe\]] .. name end
end

local served = 0
local server
-- np.serve keeps instances listening at all times (a new client never
-- finds the name missing) and runs the handler in its own task, so the
-- straight-line code below waits without blocking the other clients.
server = assert(np.serve(name, nil, function(pipe)
  local lines = 0
  -- read_line() gives nil when the client closes its end. (A while loop,
  -- not `for line in pipe:lines()`: that is fine from Lua 5.2 on and in
  -- LuaJIT, but Lua 5.1 cannot suspend a task inside a for's iterator.)
  while true do
    local line = pipe:read_line()
    if not line then break end
    lines = lines + 1
    -- the write returns once the reply is in the pipe; if the client has
    -- gone meanwhile it fails (BROKEN_PIPE) and the next read ends
    pipe:write(line .. "\n")
  end
  served = served + 1
  print(("client %d done after %d line(s)"):format(served, lines))
  -- close() stops listening; np.run() below returns once the other
  -- handlers are finished too
  if count and served >= count then server.close() end
  -- returning closes this pipe; what we wrote stays readable by the client
end))

print("echo server listening on " .. name)
io.stdout:flush()
np.run()
print(("served %d client(s)"):format(served))
