--[[
examples/pipecat.lua - a netcat for named pipes: stdin goes to the pipe, what
comes from the pipe goes to stdout.

  lua examples/pipecat.lua [options] NAME     connect to a server
  lua examples/pipecat.lua --listen [options] NAME
                                              serve one client, then exit
Options:
  --message  message-mode pipe: each stdin line is sent as one message
             (without its "\n"), each message received is printed on a line
  -w MS      after sending a line, wait up to MS ms (default 100) for the
             first bytes of an answer before reading the next stdin line
  -q MS      after stdin ends, quit once nothing has arrived for MS ms
             (default: read until the peer closes)

How it works, and what it cannot do:
  * Plain Lua reads stdin only with a blocking io.read, and no other Lua
    runs meanwhile. So pipecat alternates: read a stdin line, write it, wait
    a little (-w) for an answer, print whatever has arrived (try_read never
    blocks), read the next line. What the peer sends while pipecat waits
    for stdin is printed after the next line (or once stdin ends). That
    suits request/response use and piped files, not a live chat; for that,
    run the pipe side in a task and the console in a host with its own
    event loop.
  * A pipe has no half-close: pipecat cannot tell the peer "no more input"
    and keep listening. After stdin ends it keeps the pipe open and prints
    what arrives until the peer closes it, or until -q MS of silence. A
    peer that waits for our end of the stream before answering (e.g. a
    `sort` behind a socket) therefore never answers: use -q, or a protocol
    with its own end marker.
  * Text mode: on Windows stdin/stdout are text streams (CRLF <-> LF);
    binary data is not carried unchanged there.
  * A write waits until the pipe has taken the line; a peer that sends a
    lot without ever reading can make that wait long (pipe buffers are
    64 KiB by default).
]]
local np = require "namedpipe"

-- A whole number given as text, or nil (math.tointeger is Lua 5.3's).
local function whole(text)
  local n = tonumber(text)
  if n and n == math.floor(n) then return n end
end

local listen, message, wait_ms, quit_ms, name = false, false, 100, nil, nil
do
  local i = 1
  while arg[i] do
    local a = arg[i]
    if a == "--listen" or a == "-l" then
      listen = true
    elseif a == "--message" then
      message = true
    elseif a == "-w" or a == "-q" then
      local ms = whole(arg[i + 1])
      if not ms or ms < 0 then
        io.stderr:write("pipecat: ", a, " needs milliseconds\n"); os.exit(2)
      end
      if a == "-w" then wait_ms = ms else quit_ms = ms end
      i = i + 1
    else
      name = a
    end
    i = i + 1
  end
  if not name then
    io.stderr:write("usage: lua pipecat.lua [--listen] [--message] [-w MS] [-q MS] NAME\n")
    os.exit(2)
  end
  if not name:find("^[\\/]") then name = [[\\.\pipe\]] .. name end
end

local function die(what, msg)
  io.stderr:write("pipecat: ", what, ": ", tostring(msg), "\n")
  os.exit(1)
end

local mode = message and "message" or "byte"
local pipe, msg
if listen then
  pipe, msg = np.create(name, { pipe_mode = mode })
  if not pipe then die("cannot listen on " .. name, msg) end
  local ok, err = pipe:connect() -- waits for the one client
  if not ok then die("no client", err) end
else
  -- timeout + wait_for_server: retry while the pipe is busy or not there yet
  pipe, msg = np.open(name, { pipe_mode = mode, timeout = 5000, wait_for_server = true })
  if not pipe then die("cannot open " .. name, msg) end
end

local function out(data)
  -- a message is printed on its own line; bytes go out as they came
  io.write(data, message and "\n" or "")
end

--- Print what has already arrived, without waiting. Returns true while the
--- peer is still there.
local function drain()
  while true do
    local data, err, errname = pipe:try_read()
    if data then
      out(data)
    elseif errname == "WOULDBLOCK" then
      io.stdout:flush()
      return true
    else
      if errname ~= "EOF" then io.stderr:write("pipecat: ", err, "\n") end
      io.stdout:flush()
      return false
    end
  end
end

local peer_there = true
for line in io.lines() do
  local ok, err = pipe:write(message and line or line .. "\n")
  if not ok then die("write", err) end
  -- readable() waits without consuming anything; a timeout is fine here
  if wait_ms > 0 then pipe:readable(wait_ms) end
  peer_there = drain()
  if not peer_there then break end
end

-- stdin has ended. There is no half-close, so keep reading until the peer
-- closes (EOF) or, with -q, until it has been quiet for quit_ms.
while peer_there do
  local data, err, errname = pipe:read(nil, quit_ms)
  if not data then
    if errname ~= "EOF" and errname ~= "TIMEOUT" then io.stderr:write("pipecat: ", err, "\n") end
    break
  end
  out(data)
  io.stdout:flush()
end
pipe:close()
