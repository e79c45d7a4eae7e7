-- Coroutines (np.spawn/np.run), timeouts and cancellation, readiness,
-- np.serve, np.open's retry, and the framing helpers.
local lu = require "luaunit"
local np = require "namedpipe"
local H = require "tests.helpers"

TestTasks = {}

function TestTasks:tearDown() H.settle(2000) end

function TestTasks:test_read_suspends_only_its_task()
  local server, client = H.pair()
  local log = {}
  np.spawn(function()
    log[#log + 1] = "reader waits"
    local data = server:read()
    log[#log + 1] = "reader got " .. data
  end)
  np.spawn(function()
    log[#log + 1] = "writer sleeps"
    np.sleep(20)
    log[#log + 1] = "writer writes"
    client:write("ping")
  end)
  np.run()
  lu.assertEquals(log, { "reader waits", "writer sleeps", "writer writes", "reader got ping" })
  H.close_all(server, client)
end

-- A task's writes that the pipe takes at once need no wait (on Linux they
-- return without a switch back to the loop), but a task writing many of
-- them in a row must still let the other tasks run now and then.
function TestTasks:test_a_task_writing_many_at_once_lets_others_run()
  local server, client = H.pair()
  local writer_done, ticks, ticks_when_done = false, 0, nil
  local got = {}
  local function on_read(data)
    if not data then return end
    got[#got + 1] = data
    server:read(on_read)
  end
  server:read(on_read) -- a reader keeping up (many small writes fill a socket)
  np.spawn(function()
    for i = 1, 400 do
      lu.assertEquals(client:write(string.format("%09d\n", i), 5000), 10)
    end
    writer_done, ticks_when_done = true, ticks
  end)
  np.spawn(function()
    while not writer_done and ticks < 100000 do -- (bounded, should the writer fail)
      ticks = ticks + 1
      np.sleep(0)
    end
  end)
  H.pump(function() return writer_done end, 10000, "the writer")
  -- (at least once per 33 writes: the budget)
  lu.assertTrue(ticks_when_done >= 10, "the other task ran " .. ticks_when_done .. " times")
  local want = {}
  for i = 1, 400 do want[i] = string.format("%09d\n", i) end
  want = table.concat(want)
  H.pump(function() return #table.concat(got) >= #want end, 5000, "every byte")
  lu.assertEquals(table.concat(got), want)
  H.close_all(server, client)
end

-- A task's write larger than the pipe holds: the part taken at once and
-- the rest, written after it, arrive whole and in order, and the write
-- says it wrote all of it; a write with a timeout that the reader does not
-- drain in time stops with TIMEOUT.
function TestTasks:test_a_task_write_larger_than_the_pipe_is_written_whole()
  local server, client = H.pair({ out_buffer_size = 4096, in_buffer_size = 4096 })
  local parts = {}
  for i = 1, 3000 do parts[i] = string.format("%07d\n", i) end
  local big = table.concat(parts) -- 24,000 bytes
  local result
  np.spawn(function() result = table.pack(client:write(big, 5000)) end)
  local got = {}
  H.pump(function()
    local data = server:try_read()
    if data then got[#got + 1] = data end
    return result ~= nil and #table.concat(got) >= #big
  end, 10000, "the big write and its bytes")
  lu.assertEquals(result[1], #big)
  lu.assertEquals(table.concat(got), big)
  local late
  np.spawn(function() late = table.pack(client:write(string.rep("x", 4 * 1024 * 1024), 50)) end)
  H.pump(function() return late ~= nil end, 5000, "the write that times out")
  lu.assertNil(late[1])
  lu.assertEquals(late[3], "TIMEOUT")
  H.close_all(server, client)
end

-- Thousands of tasks, each starting one write with a timeout on the same
-- message pipe at once (so thousands of writes queued and of timers set),
-- the messages read back one by one: every task gets its own write's
-- result once, the writes finish in the order the tasks started them,
-- every message arrives once and in order, and no timeout fires (each
-- ended wait takes its timer out).
function TestTasks:test_thousands_of_tasks_writing_with_timeouts()
  local opts = { pipe_mode = "message" }
  local server, client = H.pair(opts, opts)
  local n = 2000
  local results, finished = {}, {}
  for i = 1, n do
    np.spawn(function()
      local msg = ("%05d"):format(i) .. ("w"):rep(i % 40)
      local nw, err = client:write(msg, 60000)
      results[i] = (results[i] or 0) + 1
      finished[#finished + 1] = { i = i, ok = nw == #msg, err = err }
    end)
  end
  local got, bad = 0, nil
  np.spawn(function()
    for i = 1, n do
      local data, err = server:read(nil, 60000)
      if data ~= ("%05d"):format(i) .. ("w"):rep(i % 40) then
        bad = ("message %d: %s (%s)"):format(i, tostring(data), tostring(err))
        return
      end
      got = i
    end
  end)
  H.pump(function() return bad or (got == n and #finished == n) end, 60000, "2000 writes and reads")
  lu.assertNil(bad)
  for k, f in ipairs(finished) do
    lu.assertEquals(f.i, k, "writes finished out of start order")
    lu.assertTrue(f.ok, "write " .. k .. ": " .. tostring(f.err))
    lu.assertEquals(results[k], 1, "task " .. k .. " resumed")
  end
  H.close_all(server, client)
end

-- Many waits with timeouts set at once, deadlines in every order, a third
-- of them ended early (their timers taken out from among the others):
-- each task wakes once, and of those its timeout woke, none wakes before
-- one that started earlier with a timeout no longer than its own
-- (whatever the clock did in between).
function TestTasks:test_many_timeouts_wake_once_in_deadline_order()
  local n = 1500
  local ms, events, woke, timed_out = {}, {}, {}, {}
  for i = 1, n do
    ms[i] = 200 + (i * 11) % 37 * 10
    events[i] = np.event()
    np.spawn(function()
      local v, _, errname = events[i]:wait(ms[i])
      woke[i] = (woke[i] or 0) + 1
      if errname == "TIMEOUT" then
        timed_out[#timed_out + 1] = i
      elseif v ~= i then
        error("task " .. i .. " woke with " .. tostring(v))
      end
    end)
  end
  np.step(0) -- every task waits now
  for i = 3, n, 3 do events[i]:set(i) end
  local all = function()
    for i = 1, n do if not woke[i] then return false end end
    return true
  end
  H.pump(all, 20000, "1500 waits")
  H.settle()
  for i = 1, n do lu.assertEquals(woke[i], 1, "task " .. i .. " woke") end
  lu.assertTrue(#timed_out >= math.floor(n / 2), "the timeouts of the waits left alone")
  local place = {}
  for k, i in ipairs(timed_out) do place[i] = k end
  -- latest[m]: the latest wake among tasks seen so far timed out after m ms
  local latest = {}
  for i = 1, n do
    if place[i] then
      for m = 200, ms[i], 10 do
        if latest[m] then
          lu.assertTrue(latest[m] < place[i],
            ("task %d (%d ms) woke before an earlier task of %d ms"):format(i, ms[i], m))
        end
      end
      if not latest[ms[i]] or place[i] > latest[ms[i]] then latest[ms[i]] = place[i] end
    end
  end
end

function TestTasks:test_spawn_passes_arguments_and_runs_from_step()
  local got
  np.spawn(function(a, b) got = a + b end, 2, 3)
  lu.assertNil(got) -- not run by spawn itself
  np.step(0)
  lu.assertEquals(got, 5)
end

function TestTasks:test_error_in_task_surfaces_with_traceback_others_continue()
  local other_done = false
  np.spawn(function()
    np.sleep(1)
    local function inner() error("task exploded") end
    inner()
  end)
  np.spawn(function()
    np.sleep(30)
    other_done = true
  end)
  local ok, err = pcall(np.run)
  lu.assertFalse(ok)
  lu.assertStrContains(err, "task exploded")
  lu.assertStrContains(err, "stack traceback")
  lu.assertStrContains(err, "inner")
  np.run() -- the other task is still there and finishes
  lu.assertTrue(other_done)
end

function TestTasks:test_user_coroutine_blocks_instead_of_suspending()
  local server, client = H.pair()
  client:write("in a coroutine of mine", function() end)
  local co = coroutine.wrap(function()
    return server:read(nil, 2000)
  end)
  lu.assertEquals(co(), "in a coroutine of mine")
  H.close_all(server, client)
end

function TestTasks:test_timeouts_in_tasks()
  local server, client = H.pair()
  local results = {}
  np.spawn(function()
    results.read = { server:read(nil, 30) }
    results.write = { client:write(("w"):rep(4 * 1024 * 1024), 30) }
  end)
  np.spawn(function()
    local idle = assert(np.create(H.name("idle")))
    results.connect = { idle:connect(30) }
    idle:close()
  end)
  np.run()
  lu.assertEquals(results.read[3], "TIMEOUT")
  lu.assertEquals(results.connect[3], "TIMEOUT")
  -- A write that cannot finish in time is cancelled and says so.
  lu.assertNil(results.write[1])
  lu.assertEquals(results.write[3], "TIMEOUT")
  H.close_all(server, client)
end

function TestTasks:test_close_completes_waiters_with_closed()
  local server, client = H.pair()
  local res
  np.spawn(function() res = { server:read() } end)
  np.spawn(function()
    np.sleep(10)
    server:close()
  end)
  np.run()
  lu.assertNil(res[1])
  lu.assertEquals(res[3], "CLOSED")
  H.close_all(client)
end

function TestTasks:test_cancel_wakes_a_waiting_task()
  local server, client = H.pair()
  local res
  np.spawn(function() res = { server:read() } end)
  np.spawn(function()
    np.sleep(10)
    server:cancel("read")
  end)
  np.run()
  lu.assertEquals(res[3], "CANCELLED")
  H.close_all(server, client)
end

function TestTasks:test_readable_then_try_read_loop()
  local server, client = H.pair()
  local got = {}
  np.spawn(function()
    while #table.concat(got) < 9 do
      assert(server:readable())
      local data, _, name = server:try_read()
      if data then got[#got + 1] = data else lu.assertEquals(name, "WOULDBLOCK") end
    end
  end)
  np.spawn(function()
    for _, part in ipairs { "abc", "def", "ghi" } do
      np.sleep(5)
      client:write(part)
    end
  end)
  np.run()
  lu.assertEquals(table.concat(got), "abcdefghi")
  -- readable() does not consume anything
  client:write("kept")
  lu.assertTrue(server:readable(2000))
  lu.assertTrue(server:readable(2000))
  lu.assertEquals(server:read(), "kept")
  -- readable at the end of the stream: try_read then says EOF
  client:close()
  lu.assertTrue(server:readable(2000))
  local _, _, name = server:try_read()
  lu.assertEquals(name, "EOF")
  H.close_all(server)
end

function TestTasks:test_writable_then_try_write()
  local server, client = H.pair()
  lu.assertTrue(client:writable(1000))
  lu.assertEquals(client:try_write("one"), 3)
  lu.assertTrue(client:writable(2000))
  lu.assertEquals(client:try_write("two"), 3)
  lu.assertTrue(client:writable(2000))
  local got = ""
  while #got < 6 do got = got .. assert(server:read(nil, 2000)) end
  lu.assertEquals(got, "onetwo")
  local r = client:ready("both", 1000)
  lu.assertTrue(r.writable)
  lu.assertNil(r.readable)
  server:write("x")
  lu.assertTrue(client:ready("readable", 1000).readable)
  H.close_all(server, client)
end

function TestTasks:test_open_retries_while_busy_then_times_out()
  local name = H.name("retry")
  local server = assert(np.create(name, { max_instances = 1 }))
  local first = assert(np.open(name))
  assert(server:connect(1000))
  local t0 = np.now()
  local p, _, errname = np.open(name, { timeout = 60 })
  lu.assertNil(p)
  lu.assertEquals(errname, "TIMEOUT")
  lu.assertTrue(np.now() - t0 >= 50)
  -- Once the instance is free again, a waiting open gets in.
  local got
  np.spawn(function() got = assert(np.open(name, { timeout = 2000 })) end)
  np.spawn(function()
    np.sleep(20)
    first:close()
    server:disconnect()
    server:connect()
  end)
  np.run()
  lu.assertEquals(got:state(), "connected")
  H.close_all(server, got)
end

function TestTasks:test_open_wait_for_server()
  local name = H.name("later")
  local p, _, errname = np.open(name, { timeout = 10 })
  lu.assertNil(p)
  lu.assertEquals(errname, "NOT_FOUND") -- without wait_for_server: at once
  local server, client
  np.spawn(function()
    client = assert(np.open(name, { timeout = 2000, wait_for_server = true }))
  end)
  np.spawn(function()
    np.sleep(30)
    server = assert(np.create(name))
    server:connect()
  end)
  np.run()
  lu.assertEquals(client:state(), "connected")
  lu.assertEquals(server:state(), "connected")
  H.close_all(server, client)
end

function TestTasks:test_serve_many_clients_never_not_found()
  local name = H.name("serve")
  local max_active, active = 0, 0
  local srv = assert(np.serve(name, { max_instances = 3 }, function(p)
    active = active + 1
    if active > max_active then max_active = active end
    -- (a while loop, not lines(): Lua 5.1 cannot suspend a task inside a
    -- for loop's iterator)
    while true do
      local line = p:read_line()
      if not line then break end
      p:write("echo " .. line .. "\n")
    end
    active = active - 1
  end))
  local replies, failures = {}, {}
  for i = 1, 12 do
    np.spawn(function()
      np.sleep(i % 4)
      -- PIPE_BUSY is retried (bounded by max_instances); NOT_FOUND never is
      local c, msg, errname = np.open(name, { timeout = 5000 })
      if not c then
        failures[#failures + 1] = errname .. " " .. msg
        return
      end
      c:write("client " .. i .. "\n")
      replies[i] = c:read_line(5000)
      c:close()
    end)
  end
  np.spawn(function()
    while #failures + (function() local n = 0 for _ in pairs(replies) do n = n + 1 end return n end)() < 12 do
      np.sleep(5)
    end
    srv.close()
  end)
  np.run()
  lu.assertEquals(failures, {})
  for i = 1, 12 do lu.assertEquals(replies[i], "echo client " .. i) end
  lu.assertTrue(max_active <= 3, "active handlers " .. max_active)
  lu.assertEquals(srv.accepted, 12)
  -- Stopped: nobody listens any more.
  local p, _, errname = np.open(name)
  lu.assertNil(p)
  lu.assertEquals(errname, "NOT_FOUND")
end

-- Clients that find a name busy together must not come back together: of
-- each such wave only the first gets the instance freed meanwhile. 100
-- clients open at once against one listening instance, each giving up
-- after two seconds. With the back-off's waits the same for all (1, 2, 4
-- ... 50 ms), one got in every 50 ms (5 s for all): most would time
-- out; drawn at random, all are in within 0.1-0.3 s (Linux, Wine),
-- with room left for a loaded machine (a run beside another suite took
-- more than one second under Wine).
function TestTasks:test_clients_busy_together_do_not_retry_together()
  local name = H.name("burst")
  local srv = assert(np.serve(name, { listeners = 1 }, function(p)
    local line = p:read_line(5000)
    if line then p:write(line .. "\n") end
  end))
  local N, replies, failures = 100, 0, {}
  for i = 1, N do
    np.spawn(function()
      local c, msg, errname = np.open(name, { timeout = 2000 })
      if not c then
        failures[#failures + 1] = ("client %d: %s %s"):format(i, errname, msg)
        return
      end
      c:write(i .. "\n")
      if c:read_line(5000) == tostring(i) then replies = replies + 1 end
      c:close()
    end)
  end
  H.pump(function() return replies + #failures == N end, 10000, "the clients")
  srv.close()
  lu.assertEquals(failures, {})
  lu.assertEquals(replies, N)
end

function TestTasks:test_serve_close_keeps_what_the_handler_wrote()
  local name = H.name("flush")
  local big = ("0123456789abcdef"):rep(2048) -- 32 KiB: fits the pipe buffer
  local srv = assert(np.serve(name, nil, function(p)
    p:write(big .. "\nlast line\n") -- returns once it is all in the pipe
  end))
  local c = assert(np.open(name, { timeout = 2000 }))
  np.sleep(50) -- the handler has returned and its pipe is closed by now
  local lines = {}
  for line in c:lines() do lines[#lines + 1] = line end
  lu.assertEquals(lines, { big, "last line" })
  srv.close()
  H.close_all(c)
end

function TestTasks:test_serve_bad_arguments()
  lu.assertErrorMsgContains("function expected", np.serve, H.name("x"), nil, 42)
  lu.assertErrorMsgContains("table expected", np.serve, H.name("x"), "byte", function() end)
  lu.assertErrorMsgContains("unknown option", np.serve, H.name("x"), { bogus = 1 }, function() end)
end

TestFraming = {}

function TestFraming:tearDown() H.settle(2000) end

function TestFraming:test_lines_and_readahead()
  local server, client = H.pair()
  client:write("alpha\r\nbeta\ngam")
  client:write("ma\nrest")
  lu.assertEquals(server:read_line(), "alpha")
  lu.assertEquals(server:read_line(), "beta")
  lu.assertEquals(server:read_line(), "gamma")
  H.settle()
  -- what the line reader read ahead comes first from read()
  lu.assertEquals(server:read(), "rest")
  client:write("tail without newline")
  client:close()
  lu.assertEquals(server:read_line(), "tail without newline")
  local line, _, name = server:read_line()
  lu.assertNil(line)
  lu.assertEquals(name, "EOF")
  H.close_all(server)
end

function TestFraming:test_frames_and_read_exact()
  local server, client = H.pair()
  local payloads = { "", "x", ("y"):rep(100000), "end" }
  np.spawn(function()
    for _, p in ipairs(payloads) do client:write_frame(p) end
    client:write("EXACT")
  end)
  local got = {}
  np.spawn(function()
    for i = 1, #payloads do got[i] = server:read_frame(5000) end
    got.exact = server:read_exact(5, 5000)
  end)
  np.run()
  for i = 1, #payloads do lu.assertEquals(got[i], payloads[i]) end
  lu.assertEquals(got.exact, "EXACT")
  H.close_all(server, client)
end

function TestFraming:test_read_line_timeout_keeps_partial_data()
  local server, client = H.pair()
  client:write("no newline yet")
  local line, _, name = server:read_line(30)
  lu.assertNil(line)
  lu.assertEquals(name, "TIMEOUT")
  client:write(" - now\n")
  lu.assertEquals(server:read_line(2000), "no newline yet - now")
  H.close_all(server, client)
end

function TestTasks:test_readable_keeps_an_empty_message()
  -- Windows' zero-byte read takes a zero-length message off a message
  -- pipe: readable() must not lose it.
  local server, client = H.pair({ pipe_mode = "message" }, { pipe_mode = "message" })
  client:write("")
  client:write("x")
  lu.assertTrue(server:readable(2000))
  lu.assertEquals(server:try_read(), "")
  lu.assertTrue(server:readable(2000))
  lu.assertEquals(server:try_read(), "x")
  client:write("")
  lu.assertTrue(server:readable(2000))
  lu.assertTrue(server:readable(2000)) -- asking twice takes nothing more
  lu.assertEquals(server:read(nil, 2000), "")
  local d, _, name = server:read(nil, 30)
  lu.assertNil(d)
  lu.assertEquals(name, "TIMEOUT")
  H.close_all(server, client)
end

function TestTasks:test_own_outcomes_carry_code_zero()
  local server, client = H.pair()
  local _, msg, name, code = server:read(nil, 20)
  lu.assertEquals({ msg, name, code }, { "timed out", "TIMEOUT", 0 })
  local cb, res = H.capture()
  server:read(cb)
  server:cancel("read")
  H.pump(function() return res.done end)
  lu.assertEquals({ res[2], res[3], res[4] }, { "operation cancelled", "CANCELLED", 0 })
  H.close_all(server, client)
end

function TestTasks:test_event_hands_results_between_tasks()
  local ev = np.event()
  local got = {}
  for i = 1, 3 do
    np.spawn(function() got[i] = { ev:wait() } end)
  end
  np.spawn(function()
    np.sleep(10)
    lu.assertTrue(ev:set("answer", 42))
    lu.assertFalse(ev:set("again"))
  end)
  np.run()
  for i = 1, 3 do lu.assertEquals(got[i], { "answer", 42 }) end
  lu.assertTrue(ev:is_set())
  lu.assertEquals({ ev:wait() }, { "answer", 42 }) -- at once when set
  -- a timeout, in a task and in the main thread
  local other = np.event()
  local r
  np.spawn(function() r = { other:wait(20) } end)
  np.run()
  lu.assertEquals(r[3], "TIMEOUT")
  lu.assertEquals(select(3, other:wait(10)), "TIMEOUT")
end

-- Waiters that time out leave one by one (each without a walk of the
-- others); set() then wakes exactly those still waiting, in the order they
-- came, newcomers after the holes were squeezed out included.
function TestTasks:test_event_waiters_timing_out_leave_the_rest_in_order()
  local ev, n = np.event(), 300
  local woke, timed_out = {}, {}
  local function waiter(i, timeout)
    np.spawn(function()
      local v, _, errname = ev:wait(timeout)
      if v == nil then
        lu.assertEquals(errname, "TIMEOUT")
        timed_out[#timed_out + 1] = i
      else
        lu.assertEquals(v, "go")
        woke[#woke + 1] = i
      end
    end)
  end
  -- two in three time out, at deadlines out of arrival order; the rest
  -- would time out too, failing the test, were set() to miss them
  for i = 1, n do waiter(i, i % 3 ~= 0 and 5 + (i * 7) % 11 or 5000) end
  np.spawn(function()
    np.sleep(60) -- after every timeout: the holes are squeezed out by now
    for i = n + 1, n + 20 do waiter(i, 1000) end
    np.sleep(1)
    lu.assertTrue(ev:set("go"))
  end)
  np.run()
  local want = {}
  for i = 3, n, 3 do want[#want + 1] = i end
  for i = n + 1, n + 20 do want[#want + 1] = i end
  lu.assertEquals(woke, want)
  lu.assertEquals(#timed_out, n - math.floor(n / 3))
end

-- Where a task cannot yield (inside a C function's call of Lua: here
-- table.sort's comparator), a waiting call must not start an operation
-- it cannot wait for: that operation outlived the failed yield with the
-- task's wake as its callback, and its bytes resumed the task's next wait,
-- on another pipe. Where Lua can tell (5.2 and later, LuaJIT) the call
-- blocks as in the main thread; on Lua 5.1 it raises with nothing started.
function TestTasks:test_a_wait_where_the_task_cannot_yield_wakes_no_other_wait()
  local s, c = H.pair()
  local s2, c2 = H.pair()
  local inside, raised, next_wait, later, finished
  np.spawn(function()
    local ok, err = pcall(table.sort, { 2, 1, 3 }, function(a, b)
      if inside == nil then inside = s:read(nil, 2000) or false end
      return a < b
    end)
    if not ok then raised = tostring(err) end
    next_wait = c2:read(nil, 2000)
    if raised then later = s:read(nil, 2000) end
    finished = true
  end)
  np.spawn(function()
    np.sleep(20)
    c:write("for s")
    np.sleep(20)
    s2:write("for c2")
  end)
  -- (not np.run: a read misdelivered leaves another pending for good)
  H.pump(function() return finished end, 10000, "the task")
  lu.assertEquals(next_wait, "for c2")
  if H.PUC_LUA51 then
    lu.assertStrContains(raised, "yield across")
    lu.assertEquals(later, "for s") -- nothing was started, nothing lost
  else
    lu.assertNil(raised)
    lu.assertEquals(inside, "for s")
  end
  H.close_all(s, c, s2, c2)
end

-- A callback run by a step that a task called runs on the task's
-- coroutine but cannot suspend it: a waiting call there waits as in any
-- callback (README: it runs the other callbacks that come due inside it).
function TestTasks:test_a_waiting_call_in_a_callback_of_a_task_s_step()
  local s, c = H.pair()
  local s2, c2 = H.pair()
  local result
  s:read(function() result = { pcall(s2.read, s2, nil, 2000) } end)
  np.spawn(function()
    np.sleep(10)
    c:write("ping")
    np.sleep(10)
    c2:write("answer")
  end)
  np.spawn(function()
    local t0 = np.now()
    while not result and np.now() - t0 < 5000 do np.step(20) end
  end)
  np.run()
  lu.assertNotNil(result)
  if H.PUC_LUA51 then
    lu.assertFalse(result[1])
    lu.assertStrContains(tostring(result[2]), "yield across")
    lu.assertEquals(s2:read(nil, 2000), "answer") -- nothing was started, nothing lost
  else
    lu.assertEquals({ result[1], result[2] }, { true, "answer" })
  end
  H.close_all(s, c, s2, c2)
end

-- read_into, transact and readable wait in C on the main thread and in a
-- task, in the Lua layer in a coroutine of the script's own: the same
-- results in all three, for a timeout, a poll of what is there already
-- (timeout 0), and what comes later.
function TestTasks:test_reads_answer_alike_wherever_they_wait()
  local function run_in(where, fn) -- (fn's results, packed)
    local r
    H.run_in(where, function() r = table.pack(fn()) end, 3000, where)
    return r
  end
  local TIMEOUT = { nil, "timed out", "TIMEOUT", 0, n = 4 }
  for _, where in ipairs { "main", "task", "coroutine" } do
    local mopts = { pipe_mode = "message" }
    local server, client = H.pair(mopts, mopts)
    local buf = np.buffer(8)
    lu.assertEquals(run_in(where, function() return server:read_into(buf, 30) end), TIMEOUT, where)
    lu.assertEquals(run_in(where, function() return server:readable(30) end), TIMEOUT, where)
    assert(client:write("abc", 2000))
    H.settle(20) -- (in the pipe)
    lu.assertEquals(run_in(where, function() return server:readable(0) end), { true, n = 1 }, where)
    lu.assertEquals(run_in(where, function() return server:read_into(buf, 0) end), { 3, n = 1 }, where)
    lu.assertEquals(buf:sub(1, 3), "abc", where)
    lu.assertEquals(run_in(where, function() return client:transact("q", 30) end), TIMEOUT, where)
    lu.assertEquals(server:read(nil, 2000), "q", where) -- (the request went)
    server:read_start(function(req) if req then server:write("re:" .. req, function() end) end end)
    lu.assertEquals(run_in(where, function() return client:transact("q2", 2000) end),
      { "re:q2", n = 1 }, where)
    server:read_stop()
    np.spawn(function() np.sleep(20); client:write("later", 2000) end)
    lu.assertEquals(run_in(where, function() return server:read_into(buf, 2000) end), { 5, n = 1 }, where)
    lu.assertEquals(buf:sub(1, 5), "later", where)
    H.close_all(server, client)
  end
end

-- A waiting call that waits for an operation an unwound call left behind
-- (settle) ends with CLOSED when the pipe is closed meanwhile, as every
-- pending operation does; it raised "pipe is closed" from the method it
-- went on to call.
function TestTasks:test_a_wait_for_an_abandoned_operation_ends_closed_when_the_pipe_closes()
  for _, how in ipairs { "read", "readable", "connect" } do
    local s, c, s2, c2
    if how == "connect" then
      s = assert(np.create(H.name("abandoned-connect")))
    else
      s, c = H.pair()
    end
    s2, c2 = H.pair()
    -- a callback that raises while the main thread waits unwinds that wait
    c2:write("x")
    s2:read(function() error("boom from a callback", 0) end)
    local function wait()
      if how == "read" then return s:read(nil, 2000) end
      return s[how](s, 2000)
    end
    local ok, err = pcall(wait)
    lu.assertFalse(ok, how)
    lu.assertEquals(err, "boom from a callback")
    local got
    np.spawn(function()
      got = { wait() }
    end)
    np.spawn(function() s:close() end)
    np.run()
    lu.assertEquals(got, { nil, "pipe closed", "CLOSED", 0 }, how)
    H.close_all(s, c, s2, c2)
  end
end

-- np.serve when the create of the next instance fails (NO_MEMORY, made up
-- here by a failing np.create): the step raises, as README says, and the
-- client just accepted is still served (it was stranded, its pipe never
-- handed to a handler nor closed); the instance made when that handler
-- ends takes the next client. A handler that raises while the create at
-- its end fails: both errors come out, one step after the other (the
-- create's hid the handler's).
function TestTasks:test_serve_serves_the_accepted_client_when_the_next_create_fails()
  local name = H.name("serve-create-fails")
  local real_create, failing = np.create, 0
  np.create = function(...)
    if failing > 0 then
      failing = failing - 1
      return nil, "not enough memory", "NO_MEMORY", 12
    end
    return real_create(...)
  end
  local function step_until(n, errors)
    local t0 = np.now()
    while #errors < n and np.now() - t0 < 5000 do
      local sok, serr = pcall(np.step, 20)
      if not sok then errors[#errors + 1] = tostring(serr) end
    end
    return table.concat(errors, "\n")
  end
  local ok, err = pcall(function()
    local raise_in_handler = false
    local h = assert(np.serve(name, { listeners = 1 }, function(p)
      local line = p:read_line(2000)
      p:write("got " .. tostring(line) .. "\n", 2000)
      if raise_in_handler then error("HANDLER ERROR", 0) end
    end))
    failing = 1 -- the replacement made when the first client connects
    local c = assert(np.open(name))
    c:write("hello\n", function() end)
    local errors = {}
    lu.assertStrContains(step_until(1, errors), "serve: cannot create the next instance")
    lu.assertEquals(c:read_line(2000), "got hello")
    c:close()
    -- the handler's end made the next instance: the next client is served;
    -- this time both creates fail, and its handler raises
    raise_in_handler = true
    failing = 2
    local c2 = assert(np.open(name, { timeout = 2000 }))
    c2:write("again\n", function() end)
    errors = {}
    local all = step_until(3, errors)
    lu.assertEquals(c2:read_line(2000), "got again")
    lu.assertEquals(#errors, 3, all)
    lu.assertStrContains(errors[2], "HANDLER ERROR")
    lu.assertStrContains(errors[3], "serve: cannot create the next instance")
    lu.assertEquals(h.active, 0)
    h.close()
    c2:close()
  end)
  np.create = real_create
  if not ok then error(err, 0) end
end

-- np.run waits until no task is left; from a task that would be forever
-- (the task itself is one): it raises instead, and the task goes on.
function TestTasks:test_np_run_from_a_task_raises_instead_of_waiting_for_itself()
  local ok, err, after
  np.spawn(function()
    ok, err = pcall(np.run)
    after = true
  end)
  H.pump(function() return after end, 5000, "the task")
  lu.assertFalse(ok)
  lu.assertStrContains(tostring(err), "np.run called from a task")
end

-- An event's methods called with '.' (ev.wait(200) for ev:wait(200)) took
-- the argument for self: wait() waited for ever, set() dropped its value.
-- They raise now, naming the call; and a serve with unlimited instances
-- refuses a listeners count no name may have (a huge one made instances
-- until memory ran out).
function TestTasks:test_event_methods_need_their_event_and_listeners_a_bound()
  local ev = np.event()
  -- (ev.wait(5, 5): the old code took the first 5 for self and timed out)
  lu.assertErrorMsgContains("bad argument #1 to 'wait' (namedpipe event expected", ev.wait, 5, 5)
  lu.assertErrorMsgContains("bad argument #1 to 'set' (namedpipe event expected", ev.set, 42)
  lu.assertErrorMsgContains("bad argument #1 to 'is_set'", ev.is_set)
  lu.assertErrorMsgContains("bad argument #1 to 'wait'", ev.wait, np.event(), 1)
  lu.assertErrorMsgContains("bad argument #3 to 'wait'", ev.wait, ev, 10, function() end)
  lu.assertFalse(ev:is_set())
  lu.assertTrue(ev:set(42))
  lu.assertEquals(ev:wait(0), 42)
  local big = math.maxinteger or 2 ^ 53
  lu.assertErrorMsgContains("option 'listeners': 1 to 254 expected", np.serve, H.name("listeners"),
    { listeners = big }, function() end)
  lu.assertErrorMsgContains("option 'listeners': 1 to 254 expected", np.serve, H.name("listeners"),
    { listeners = 255 }, function() end)
end

-- A task's write that the pipe takes at once has nothing to wait for, so
-- it works where the task cannot yield too (inside a pcall on Lua 5.1:
-- taking the task's wait record first yielded a probe there, which failed
-- and raised before anything was written).
function TestTasks:test_a_task_s_write_taken_at_once_works_inside_a_pcall()
  local s, c = H.pair()
  local ok, n
  -- The budget of writes a task makes at once in a row (32: task_waits.c)
  -- counts only writes with no step between them: 32 from another task
  -- before, then a step, and this one is still taken at once.
  local done = false
  np.spawn(function()
    for _ = 1, 32 do assert(c:write("x")) end
    done = true
  end)
  H.pump(function() return done end, 5000, "the writes before")
  lu.assertEquals(s:read(32, 2000), ("x"):rep(32))
  np.spawn(function() ok, n = pcall(function() return (c:write("hello")) end) end)
  H.pump(function() return ok ~= nil end, 5000, "the task")
  lu.assertTrue(ok, tostring(n))
  lu.assertEquals(n, 5)
  lu.assertEquals(s:read(nil, 2000), "hello")
  H.close_all(s, c)
end

-- A task's waiting call arms its timeout before its operation starts
-- (arming may run out of memory; started, the operation's end would go to
-- a wake nobody waits for). When the start then raises (here: a read is
-- pending already), that deadline does nothing when it comes due: it
-- cancels no read of the pipe's, neither the one pending (another's) nor
-- the task's next wait without a timeout.
function TestTasks:test_a_deadline_armed_for_a_start_that_raised_cancels_nothing()
  for _, next_wait in ipairs { "sleep", "untimed read" } do
    local server, client = H.pair()
    local pending
    server:read(function(...) pending = table.pack(...) end) -- (another's read)
    local refused, got
    np.spawn(function()
      local ok, err = pcall(server.read, server, nil, 30)
      refused = not ok and tostring(err) or "accepted"
      if next_wait == "sleep" then
        np.sleep(100)
      else
        server:cancel("read")
        H.pump(function() return pending ~= nil end, 2000, next_wait)
        got = server:read() -- no timeout: the refused call's 30 ms must not end it
      end
    end)
    np.spawn(function()
      np.sleep(150)
      assert(client:write("late", 2000))
    end)
    H.pump(function() return (next_wait == "sleep" and pending or got) ~= nil end, 3000, next_wait)
    -- (on Lua 5.1 the pcall itself refuses first: a task cannot yield
    -- across one, and the call raises at its probe, before it arms)
    lu.assertTrue(refused:find("a read is already pending", 1, true) ~= nil
      or (_VERSION == "Lua 5.1" and refused:find("yield", 1, true) ~= nil), next_wait .. ": " .. refused)
    if next_wait == "sleep" then
      lu.assertEquals(pending[1], "late", next_wait) -- (not TIMEOUT at 30 ms)
    else
      lu.assertEquals(got, "late", next_wait)
    end
    H.close_all(server, client)
  end
end
