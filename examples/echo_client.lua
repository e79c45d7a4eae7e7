-- examples/echo_client.lua - send lines to an echo server, print its replies.
--
--   lua examples/echo_client.lua NAME [line...]
--
-- Without lines on the command line, stdin's lines are sent. Plain
-- synchronous code: without a callback every call waits for its own result
-- (driving the module's loop meanwhile), which is all a one-pipe client needs.
local np = require "namedpipe"

local name = arg[1]
if not name then
  io.stderr:write("usage: lua echo_client.lua NAME [line...]\n")
  os.exit(2)
end
if not name:find("^[\\/]") then name = [[\\.\pipe\]] .. name end

-- timeout: retry while every server instance is busy (PIPE_BUSY);
-- wait_for_server: also while the name does not exist yet, so this client
-- may be started before its server.
local pipe, msg = np.open(name, { timeout = 5000, wait_for_server = true })
if not pipe then
  io.stderr:write("echo_client: ", msg, "\n")
  os.exit(1)
end

local function send(line)
  assert(pipe:write(line .. "\n"))
  -- read_line keeps whatever arrived past the line for the next call
  local reply, err = pipe:read_line(5000)
  if not reply then error("no reply: " .. err, 0) end
  print(reply)
end

if #arg >= 2 then
  for i = 2, #arg do send(arg[i]) end
else
  for line in io.lines() do send(line) end
end
pipe:close()
