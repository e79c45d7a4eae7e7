-- examples/chat_server.lua - a chat room over one pipe name.
--
--   lua examples/chat_server.lua NAME [--count N]
--
-- A client's first line is its nick; every later line goes to all the
-- others as "<nick>: line". Joins and leaves are announced ("* bob joined"),
-- and a newcomer is told who is there. --count N: exit after N clients have
-- left (the tests use it). Try it with examples/pipecat.lua as the client:
--   lua examples/pipecat.lua NAME      then type a nick, then lines
local np = require "namedpipe"

-- A whole number given as text, or nil (math.tointeger is Lua 5.3's).
local function whole(text)
  local n = tonumber(text)
  if n and n == math.floor(n) then return n end
end

local name, count
do
  local i = 1
  while arg[i] do
    if arg[i] == "--count" then
      count = whole(arg[i + 1]); i = i + 2
    else
      name = arg[i]; i = i + 1
    end
  end
  if not name then
    io.stderr:write("usage: lua chat_server.lua NAME [--count N]\n")
    os.exit(2)
  end
  if not name:find("^[\\/]") then name = [[\\.\pipe\]] .. name end
end
io.stdout:setvbuf("no") -- the log is read live

local members = {} -- pipe -> nick, for everyone who has joined
local left = 0

local function ignore() end

--- Send text to every member except `from`, and log it.
local function broadcast(text, from)
  print(text)
  for pipe in pairs(members) do
    if pipe ~= from then
      -- A callback makes the write fire-and-forget: the sender's task
      -- does not wait for a slow reader, writes on one pipe still
      -- complete in the order they were started, and a write to a client
      -- that has just gone fails harmlessly (BROKEN_PIPE). The price: a
      -- client that never reads makes its queue of writes grow; a real
      -- server would count each client's writes in flight (the callback
      -- tells when one is done) and drop a client that falls behind.
      pipe:write(text .. "\n", ignore)
    end
  end
end

local server
server = assert(np.serve(name, nil, function(pipe)
  -- One task per client, so this reads like a blocking server.
  local nick = pipe:read_line()
  if not nick then return end -- came and went without a word
  nick = nick:gsub("%s", "")
  if nick == "" then nick = "anonymous" end

  local here = {}
  for _, other in pairs(members) do here[#here + 1] = other end
  table.sort(here) -- pairs() has no order; a sorted list reads better
  pipe:write(("* welcome %s; here: %s\n"):format(nick,
    #here > 0 and table.concat(here, ", ") or "nobody"))

  members[pipe] = nick
  broadcast("* " .. nick .. " joined", pipe)
  while true do -- (not lines(): Lua 5.1 cannot suspend inside a for)
    local line = pipe:read_line()
    if not line then break end
    broadcast(nick .. ": " .. line, pipe)
  end
  -- Out of the room before the handler returns: np.serve closes the pipe
  -- then, and writing to a closed pipe is an error.
  members[pipe] = nil
  broadcast("* " .. nick .. " left", pipe)

  left = left + 1
  if count and left >= count then server.close() end
end))

print("chat server on " .. name)
np.run()
