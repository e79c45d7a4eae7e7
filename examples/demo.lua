-- examples/demo.lua - a server and a client exchanging messages in one
-- process: callbacks driven by np.step(), then the synchronous form.
--   make demo        (runs it on Linux and under Wine)
local np = require "namedpipe"

local name = [[\\.\pipe\namedpipe-demo-]] .. os.time()
local server = assert(np.create(name, { pipe_mode = "message", first_pipe_instance = true }))
local client = assert(np.open(name, { pipe_mode = "message" }))
print("server: " .. tostring(server))
print("client: " .. tostring(client))

-- Callback style: start operations, then step the loop until it is idle.
local questions = { "ping", "how big is a message?", "bye" }
server:connect(function(ok, err)
  assert(ok, err)
  local function serve()
    server:read(function(msg, _, errname)
      if not msg then
        print("server: " .. errname)
        return
      end
      print("server got:  " .. msg)
      server:write(("%s -> %d bytes"):format(msg, #msg), function() end)
      if msg ~= "bye" then serve() end
    end)
  end
  serve()
end)

for _, q in ipairs(questions) do
  client:write(q, function() end)
end
local answers = 0
local function listen()
  client:read(function(reply)
    print("client got:  " .. reply)
    answers = answers + 1
    if answers < #questions then listen() end
  end)
end
listen()
while answers < #questions do np.step(100) end

-- Synchronous style, as in a REPL: each call drives the loop itself.
client:write(("x"):rep(200000), function() end)  -- bigger than the pipe buffer
print("server read a whole message of " .. #server:read() .. " bytes")
print("info: " .. server:info().pipe_end .. " " .. server:info().mode
  .. ", max_instances " .. tostring(server:info().max_instances))

client:close()
local _, msg, errname = server:read()
print("after the client closed, server:read() -> nil, " .. msg .. ", " .. errname)
server:close()
print("server: " .. tostring(server))
