-- examples/game_loop.lua - namedpipe in a host that owns the loop, as a game
-- or an editor does: once per frame the host calls np.step(0), which runs
-- what is ready and never waits. Here a server (np.serve) and a client task
-- talk in one process while the "game" draws its frames.
--   lua examples/game_loop.lua [--frames N] [--frame-ms MS]
local np = require "namedpipe"

local frames, frame_ms = 600, 16
for i = 1, #arg do
  if arg[i] == "--frames" then frames = tonumber(arg[i + 1]) end
  if arg[i] == "--frame-ms" then frame_ms = tonumber(arg[i + 1]) end
end

-- (a fresh table's address makes it this run's: Lua 5.1 does not seed
-- math.random, and two runs in one second would share a name)
local name = [[\\.\pipe\namedpipe-game-]] .. os.time() .. "-" .. (tostring({}):match("(%x+)$") or math.random(1, 1e6))
local server = assert(np.serve(name, { pipe_mode = "message" }, function(pipe)
  while true do
    local cmd = pipe:read()
    if not cmd then return end
    pipe:write("ack " .. cmd)
  end
end))

local acks = {}
np.spawn(function()
  local c = assert(np.open(name, { pipe_mode = "message", timeout = 2000 }))
  for _, cmd in ipairs { "jump", "duck", "fire" } do
    acks[#acks + 1] = c:transact(cmd, 2000) or "no answer"
  end
  c:close()
end)

local n = 0
while n < frames and #acks < 3 do
  n = n + 1
  np.step(0) -- the network's share of this frame: no waiting
  local frame_end = np.now() + frame_ms
  while np.now() < frame_end do end -- the game's own work for the frame
end
server.close()
np.run() -- let the handler finish
print(("%d frames, acks: %s"):format(n, table.concat(acks, ", ")))
