-- namedpipe inside a host's own event loop: np.fd() polled by luv (as
-- Neovim's vim.uv would), np.timeout() for a host timer, and a game-style
-- loop calling step(0) once per frame.
local lu = require "luaunit"
local np = require "namedpipe"
local H = require "tests.helpers"

TestHost = {}

function TestHost:tearDown() H.settle(2000) end

local function need_luv()
  if PLATFORM == "windows" then
    lu.skip("np.fd() is nil on Windows (a completion port cannot be polled): hosts step from a frame or a timer")
  end
  local ok, uv = pcall(require, "luv")
  if not ok then lu.skip("luv is not installed (Debian: lua-luv)") end
  return uv
end

-- Drive namedpipe from luv for ms milliseconds (or until done()): a poll
-- on np.fd() steps when it is readable, a timer from np.timeout() covers
-- the timers. Returns how many times the poll woke.
local function run_luv(uv, ms, done)
  local wakes = 0
  uv.update_time() -- luv's clock is the last run's: timers count from now
  local poll = uv.new_poll(np.fd())
  local timer, stop = uv.new_timer(), uv.new_timer()
  local function rearm()
    local t = np.timeout()
    timer:stop()
    if t then timer:start(math.ceil(t), 0, function() np.step(0); rearm() end) end
    if done and done() then uv.stop() end
  end
  poll:start("r", function()
    wakes = wakes + 1
    np.step(0)
    rearm()
  end)
  stop:start(ms, 0, function() uv.stop() end)
  rearm()
  uv.run("default")
  poll:stop(); poll:close(); timer:stop(); timer:close(); stop:stop(); stop:close()
  uv.run("nowait") -- let the handles close
  return wakes
end

function TestHost:test_fd_is_nil_on_windows()
  if PLATFORM ~= "windows" then
    lu.assertEquals(math.type(np.fd()), "integer")
    lu.assertEquals(np.fd(), np.fd()) -- the same descriptor each time
    return
  end
  lu.assertNil(np.fd())
end

function TestHost:test_idle_loop_does_not_wake()
  local uv = need_luv()
  local server, client = H.pair()
  np.fd() -- hosted from here: the step below takes what came before
  H.settle()
  lu.assertEquals(run_luv(uv, 200), 0)
  H.close_all(server, client)
end

-- Data reaching a pipe nobody reads wakes the host at most a few times,
-- never in a loop (it once woke 835,655 times in 350 ms).
function TestHost:test_unread_data_does_not_spin()
  local uv = need_luv()
  local server, client = H.pair({ pipe_mode = "message" }, { pipe_mode = "message" })
  local bserver, bclient = H.pair()
  H.settle()
  client:write("nobody reads this", function() end)
  bclient:write("nor this", function() end)
  local wakes = run_luv(uv, 300)
  lu.assertTrue(wakes <= 4, "woke " .. wakes .. " times")
  -- the data is still there for a reader
  lu.assertEquals(server:read(nil, 2000), "nobody reads this")
  lu.assertEquals(bserver:read(nil, 2000), "nor this")
  H.close_all(server, client, bserver, bclient)
end

-- Work queued before the host asked for the descriptor counts: a task
-- spawned first, with nothing else going on, still runs.
function TestHost:test_a_task_queued_before_hosting_runs()
  local uv = need_luv()
  H.settle()
  local slept
  np.spawn(function() np.sleep(30); slept = true end)
  run_luv(uv, 3000, function() return slept end)
  lu.assertTrue(slept)
end

function TestHost:test_callbacks_and_tasks_run_from_the_host()
  local uv = need_luv()
  local server, client = H.pair()
  local got, slept, echoed
  server:read(function(data) got = data end)
  np.spawn(function()
    np.sleep(30)
    slept = true
    echoed = client:read()
  end)
  -- started outside any step: the host must still see them
  client:write("from the host", function() end)
  server:write("back", function() end)
  local wakes = run_luv(uv, 3000, function() return got and slept and echoed end)
  lu.assertEquals(got, "from the host")
  lu.assertTrue(slept)
  lu.assertEquals(echoed, "back")
  lu.assertTrue(wakes < 50, "woke " .. wakes .. " times")
  H.close_all(server, client)
end

-- After a step(0) that did everything, the descriptor is quiet: a poll
-- with no timeout finds nothing.
function TestHost:test_fd_quiet_after_step()
  local uv = need_luv()
  local server, client = H.pair()
  local got
  server:read(function(data) got = data end)
  client:write("x", function() end)
  H.pump(function() return got end, 5000, "the read")
  np.step(0)
  local ready = false
  local poll = uv.new_poll(np.fd())
  poll:start("r", function() ready = true end)
  uv.run("nowait")
  poll:stop(); poll:close(); uv.run("nowait")
  lu.assertFalse(ready)
  H.close_all(server, client)
end

-- A task that raises leaves its step by the error: the next step tells
-- the core that nothing is queued any more, so the descriptor goes quiet
-- (it stayed readable, and a host polling it woke in a loop, 13,000 times
-- in 200 ms). The same for a timer's function that raises.
function TestHost:test_fd_quiet_after_a_task_raised()
  local uv = need_luv()
  np.fd()
  np.spawn(function() error("task error", 0) end)
  local ok, err = pcall(np.step, 0)
  lu.assertFalse(ok)
  lu.assertStrContains(tostring(err), "task error")
  np.step(0)
  lu.assertEquals(run_luv(uv, 200), 0)
  np.spawn(function()
    np.sleep(5)
    error("woken task error", 0)
  end)
  ok, err = pcall(H.pump, function() return false end, 2000, "the raise")
  lu.assertFalse(ok)
  lu.assertStrContains(tostring(err), "woken task error")
  np.step(0)
  lu.assertEquals(run_luv(uv, 200), 0)
end

-- A timeout of math.huge (or 1e300) is a timer too: the descriptor's
-- timer is armed for a day at most (a time_t made of inf was refused, and
-- the descriptor stayed readable: 25,000 wake-ups in 300 ms), and
-- np.timeout() says a day at most (a host timer armed for inf fails).
function TestHost:test_an_endless_timeout_neither_spins_nor_overflows()
  local uv = need_luv()
  np.fd()
  local ev = np.event()
  local ended = {}
  for i, ms in ipairs { math.huge, 1e300 } do
    np.spawn(function()
      ev:wait(ms)
      ended[i] = true
    end)
  end
  np.spawn(function() np.sleep(5) end) -- an earlier timer that fires first
  H.pump(function() return np.timeout() and np.timeout() > 1000 end, 2000, "the short timer")
  lu.assertTrue(np.timeout() <= 86400000)
  lu.assertEquals(run_luv(uv, 200), 0)
  ev:set()
  H.pump(function() return ended[1] and ended[2] end, 2000, "the endless waits")
  lu.assertNil(np.timeout())
end

function TestHost:test_timeout_tells_the_next_timer()
  lu.assertNil(np.timeout())
  local done
  np.spawn(function() np.sleep(200); done = true end)
  np.step(0) -- the task starts and sleeps
  local t = np.timeout()
  lu.assertNotNil(t)
  lu.assertTrue(t > 100 and t <= 200, tostring(t))
  H.pump(function() return done end, 5000, "the sleep")
  lu.assertNil(np.timeout())
end

-- A game-style loop: one step(0) per frame, no waiting in namedpipe.
function TestHost:test_game_loop_frames()
  local server, client = H.pair({ pipe_mode = "message" }, { pipe_mode = "message" })
  local frames, got = 0, {}
  local function on(data) got[#got + 1] = data; if #got < 3 then server:read(on) end end
  server:read(on)
  for i = 1, 3 do client:write("frame " .. i, function() end) end
  local deadline = np.now() + 5000
  while #got < 3 and np.now() < deadline do
    frames = frames + 1
    np.step(0)
    local t = np.now() + 2 -- the rest of a 2 ms frame
    while np.now() < t do end
  end
  lu.assertEquals(got, { "frame 1", "frame 2", "frame 3" })
  H.close_all(server, client)
end
