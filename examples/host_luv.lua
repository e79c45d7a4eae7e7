-- examples/host_luv.lua - namedpipe inside luv's event loop, the way a
-- Neovim plugin (vim.uv) or any luv program would host it: a poll on
-- np.fd() steps the loop when namedpipe has work, a timer from np.timeout()
-- covers its timers (sleeps, timeouts of tasks). luv does the waiting; no
-- thread, no busy loop. Linux only: on Windows np.fd() is nil and a host
-- steps from a timer or its frame instead (examples/game_loop.lua).
--   lua examples/host_luv.lua
local np = require "namedpipe"
local ok, uv = pcall(require, "luv")
if not ok then
  print("this example needs luv (Debian: lua-luv)")
  return
end
if not np.fd() then
  print("np.fd() is nil on this platform: step from a timer instead")
  return
end

-- Hosting: call once; after this, luv drives namedpipe.
local poll, timer = uv.new_poll(np.fd()), uv.new_timer()
local wakes = 0
local function rearm()
  timer:stop()
  local t = np.timeout()
  if t then timer:start(math.ceil(t), 0, function() np.step(0); rearm() end) end
end
poll:start("r", function()
  wakes = wakes + 1
  np.step(0)
  rearm()
end)

-- (a fresh table's address makes it this run's: Lua 5.1 does not seed
-- math.random, and two runs in one second would share a name)
local name = [[\\.\pipe\namedpipe-luv-]] .. os.time() .. "-" .. (tostring({}):match("(%x+)$") or math.random(1, 1e6))
local server = assert(np.serve(name, nil, function(pipe)
  while true do -- (not lines(): Lua 5.1 cannot suspend inside a for)
    local line = pipe:read_line()
    if not line then break end
    pipe:write(line:upper() .. "\n")
  end
end))

np.spawn(function()
  local c = assert(np.open(name, { timeout = 2000 }))
  for _, word in ipairs { "hello", "from", "luv" } do
    c:write(word .. "\n")
    print(c:read_line())
    np.sleep(20) -- a timer: luv's timer wakes us for it
  end
  c:close()
  server.close()
  poll:stop()
  timer:stop()
end)
rearm()
uv.run()
print(("luv woke namedpipe %d times"):format(wakes))
