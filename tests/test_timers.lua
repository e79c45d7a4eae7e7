-- Timeouts of tasks' waits and np.sleep against a model: every timer goes
-- off once, never before its time, in the order of its deadline; a wait
-- that ends in time is never timed out later, whatever the deadlines of
-- the same task's earlier and later waits (each task reuses one timer
-- record, kept in the heap at a deadline that may be stale). Lateness is
-- bounded loosely (a slow machine or Wine only makes it later): what is
-- asserted is order, once-ness and never-early.
local lu = require "luaunit"
local np = require "namedpipe"
local H = require "tests.helpers"

TestTimers = {}

local SEED = tonumber(os.getenv("NP_TIMERS_SEED") or "") or os.time()

-- np.now() is in milliseconds; a timer may go off up to 1 ms "early" by
-- the clock's rounding (the deadline is taken after the call began).
local SLACK = 1

function TestTimers:test_sleeps_wake_in_deadline_order_once()
  -- (earlier tests' pipes waiting for their finalizers could make a
  -- collection pause a task between its clock read below and its sleep's,
  -- which this test would take for a timer out of order)
  collectgarbage("collect")
  local g = H.generator(SEED)
  local woke, n = {}, 60
  -- The clock as each task read it just before its sleep, in the order the
  -- tasks ran; a sleep takes its deadline from its own clock read, between
  -- its task's and the next task's (the last one's: the final entry, made
  -- by a task spawned after all of them). So a deadline is known within
  -- [start + ms, next start + ms], and an order is wrong only when it is
  -- wrong for every deadline in those bounds: a machine that pauses the
  -- process between a task's clock read and its sleep's (a collection, the
  -- scheduler under load) cannot make a right order look wrong.
  local starts = {}
  for i = 1, n do
    local ms = g.rnd(80) - 1
    np.spawn(function()
      local t0 = np.now()
      starts[#starts + 1] = t0
      local pos = #starts
      np.sleep(ms)
      woke[#woke + 1] = { i = i, ms = ms, t0 = t0, pos = pos, at = np.now() }
    end)
  end
  np.spawn(function() starts[#starts + 1] = np.now() end)
  H.pump(function() return #woke == n end, 10000, "every sleep")
  np.step(0)
  lu.assertEquals(#woke, n, "seed " .. SEED)
  lu.assertEquals(#starts, n + 1, "seed " .. SEED)
  local seen = {}
  for k, w in ipairs(woke) do
    lu.assertNil(seen[w.i], "woke twice, seed " .. SEED)
    seen[w.i] = true
    lu.assertTrue(w.at - w.t0 >= w.ms - SLACK,
      ("sleep(%d) woke after %.1f ms, seed %d"):format(w.ms, w.at - w.t0, SEED))
    if k > 1 then
      local prev = woke[k - 1]
      local prev_earliest = prev.t0 + prev.ms
      local latest = starts[w.pos + 1] + w.ms
      lu.assertTrue(prev_earliest <= latest + SLACK,
        ("sleep(%d) woke before sleep(%d) (deadlines at least %.1f and at most %.1f), seed %d")
          :format(w.ms, prev.ms, prev_earliest, latest, SEED))
    end
  end
end

-- One task, one pipe: a sequence of reads with random timeouts; the peer
-- writes for some of them, long before the timeout or not at all. A read
-- given data returns it (its deadline, or an earlier wait's stale one,
-- never cancels it); a read given none times out, not before its time.
function TestTimers:test_a_tasks_timed_waits_against_a_model()
  local g = H.generator(SEED + 1)
  local server, client = H.pair()
  local steps, results = {}, {}
  for i = 1, 40 do
    local timeout = g.weighted { { 3, g.rnd(30) }, { 2, 60 + g.rnd(200) }, { 1, 0 } }
    steps[i] = { timeout = timeout, data = timeout > 0 and g.chance(2) and ("m" .. i) or nil }
  end
  local done = false
  np.spawn(function()
    for i, s in ipairs(steps) do
      if s.data then assert(server:write(s.data, 1000)) end
      local t0 = np.now()
      local data, _, ename = client:read(nil, s.timeout)
      results[i] = { data = data, ename = ename, took = np.now() - t0 }
    end
    done = true
  end)
  H.pump(function() return done end, 20000, "the reads")
  for i, s in ipairs(steps) do
    local r = results[i]
    local what = ("read %d (timeout %d, %s), seed %d"):format(i, s.timeout,
      s.data and "data sent" or "nothing sent", SEED)
    if s.data then
      lu.assertEquals(r.data, s.data, what)
    else
      lu.assertNil(r.data, what)
      lu.assertEquals(r.ename, "TIMEOUT", what)
      lu.assertTrue(r.took >= s.timeout - SLACK, what .. ": timed out after " .. r.took .. " ms")
    end
  end
  H.close_all(server, client)
end

-- A long timeout, then a short one: the short one is kept although the
-- task's record sits in the heap at the long one's deadline.
function TestTimers:test_a_shorter_timeout_after_a_longer_one()
  local server, client = H.pair()
  local took, ename
  np.spawn(function()
    assert(server:write("x")) -- (no timeout: the 5 s one below is the key)
    assert(client:read(nil, 5000))
    local t0 = np.now()
    local _, _, e = client:read(nil, 30)
    took, ename = np.now() - t0, e
  end)
  H.pump(function() return took ~= nil end, 4000, "the short timeout (not the 5 s one)")
  lu.assertEquals(ename, "TIMEOUT")
  lu.assertTrue(took >= 30 - SLACK)
  lu.assertTrue(took < 2500, "the 30 ms timeout went off with the 5 s one's key")
  H.close_all(server, client)
end

-- Many tasks waiting with timeouts at once, most answered in time: each
-- wait ends once, with its own data or TIMEOUT, and the loop goes idle
-- (np.run returns) once the tasks are done.
function TestTimers:test_many_tasks_each_wait_ends_once()
  local g = H.generator(SEED + 2)
  local pairs_, outcome, n = {}, {}, 12
  for i = 1, n do pairs_[i] = { H.pair() } end
  for i = 1, n do
    local server, client = pairs_[i][1], pairs_[i][2]
    local answer = g.chance(3) == false
    local timeout = 20 + g.rnd(60)
    np.spawn(function()
      local count = 0
      for round = 1, 5 do
        if answer then assert(server:write("r" .. round, 1000)) end
        local data, _, ename = client:read(nil, timeout)
        count = count + 1
        if answer then
          lu.assertEquals(data, "r" .. round)
        else
          lu.assertEquals(ename, "TIMEOUT")
        end
      end
      outcome[i] = count
    end)
  end
  np.run()
  for i = 1, n do
    lu.assertEquals(outcome[i], 5, "task " .. i .. ", seed " .. SEED)
    H.close_all(pairs_[i][1], pairs_[i][2])
  end
  lu.assertNil(np.timeout(), "a timer left after every task ended")
end

-- A step nested in the timers' own calls (a call hook's here; a
-- finalizer's does the same), at each call in turn of the steps that run
-- them: every sleep still wakes once and not early, every event wait ends
-- once, with its value when set in time and TIMEOUT when not, and no step
-- raises (a timer taken out of the heap by the nested step, or a heap
-- changed in the middle of a move, broke the outer step's next move).
function TestTimers:test_a_step_nested_in_the_timers_own_calls()
  for n = 1, 120 do
    local what = ("a step nested at call %d"):format(n)
    local woke, ended, evs = {}, {}, {}
    for k = 1, 4 do
      np.spawn(function()
        local t0 = np.now()
        np.sleep(k)
        woke[#woke + 1] = { k = k, took = np.now() - t0 }
      end)
    end
    for k = 1, 3 do
      local ev = np.event()
      evs[k] = ev
      np.spawn(function()
        local t0 = np.now()
        ended[k] = table.pack(ev:wait(k == 3 and 2 or 2000))
        ended[k].took = np.now() - t0
      end)
    end
    np.spawn(function()
      np.sleep(2)
      evs[1]:set("one")
      evs[2]:set("two")
    end)
    -- (the tasks start and set their timers; then every timer comes due
    -- with no step between, so that the hooked steps run them all)
    np.step(0)
    local due = np.now() + 5
    while np.now() < due do end
    H.step_nested_at_call(n, nil, 3, 0)
    local deadline = np.now() + 5000
    local ok, err = pcall(function()
      while (#woke < 4 or not (ended[1] and ended[2] and ended[3])) and np.now() < deadline do
        np.step(1)
      end
    end)
    debug.sethook()
    lu.assertTrue(ok, what .. ": " .. tostring(err))
    lu.assertEquals(#woke, 4, what)
    local seen = {}
    for _, w in ipairs(woke) do
      lu.assertNil(seen[w.k], what .. ": a sleep woke twice")
      seen[w.k] = true
      lu.assertTrue(w.took >= w.k - SLACK, what .. ": a sleep woke early")
    end
    lu.assertEquals({ ended[1][1], ended[2][1] }, { "one", "two" }, what)
    lu.assertEquals({ ended[3][1], ended[3][3] }, { nil, "TIMEOUT" }, what)
    lu.assertTrue(ended[3].took >= 2 - SLACK, what .. ": the event's wait timed out early")
    H.settle(5)
  end
  lu.assertNil(np.timeout(), "a timer left after every task ended")
end

-- Steps nested at random calls everywhere (a call hook on the main thread
-- and in every task: a finalizer's step can come at any allocation, which
-- is most calls), while tasks sleep, wait for events with and without
-- timeouts, and stream data through a pipe of each kind with timed reads
-- and writes. Whatever the nested steps take in turn, every task ends,
-- every byte arrives once and in order, no sleep or timeout ends early,
-- an event's wait returns its value or TIMEOUT, and nothing is left
-- pending. (The class of the timer heap's nested-step bug, and of
-- ready()'s: state read before a call and used after it.)
function TestTimers:test_steps_nested_at_random_calls()
  local seed = SEED + 3
  local g = H.generator(seed)
  for round = 1, 6 do
    local what = ("round %d, seed %d"):format(round, seed)
    local every = 3 + g.rnd(8) -- a nested step every `every` calls or so
    local nesting, hooked = false, 0
    local function hook()
      if nesting then return end
      hooked = hooked + 1
      if hooked % every == 0 then
        nesting = true
        np.step(0)
        nesting = false
      end
    end
    local function hooked_task(fn) -- (hooked from its first call on)
      local co = np.spawn(fn)
      debug.sethook(co, hook, "c")
      return co
    end
    local done, expected, problems = 0, 0, {}
    local function task(fn)
      expected = expected + 1
      hooked_task(function()
        fn()
        done = done + 1
      end)
    end
    local function problem(s) problems[#problems + 1] = s end
    debug.sethook(hook, "c") -- (the spawns, sets and writes below too)
    -- sleepers
    for k = 1, 3 do
      local ms = {}
      for i = 1, 3 do ms[i] = g.rnd(6) - 1 end
      task(function()
        for i = 1, 3 do
          local t0 = np.now()
          np.sleep(ms[i])
          if np.now() - t0 < ms[i] - SLACK then problem(("sleeper %d woke early"):format(k)) end
        end
      end)
    end
    -- events: set after a few ms, waited for with a timeout that may be shorter
    for k = 1, 2 do
      local ev, set_after, timeout = np.event(), g.rnd(6), g.rnd(10) - 1
      task(function()
        np.sleep(set_after)
        ev:set("v" .. k)
      end)
      task(function()
        local t0 = np.now()
        local v, _, ename = ev:wait(timeout)
        local took = np.now() - t0
        if v ~= "v" .. k and not (v == nil and ename == "TIMEOUT" and took >= timeout - SLACK) then
          problem(("event %d: %s %s after %d ms (timeout %d)"):format(k, tostring(v), tostring(ename), took, timeout))
        end
      end)
    end
    -- a stream through a pipe of each kind
    local pipes = {}
    for _, mode in ipairs { "message", "byte" } do
      local server, client = H.pair({ pipe_mode = mode }, { pipe_mode = mode })
      pipes[#pipes + 1] = server
      pipes[#pipes + 1] = client
      local chunks, total = {}, 0
      for i = 1, 8 do
        chunks[i] = ("%s%d:"):format(mode, i) .. ("x"):rep(g.rnd(3000))
        total = total + #chunks[i]
      end
      task(function()
        for i = 1, #chunks do
          local n, err = client:write(chunks[i], 5000)
          if n ~= #chunks[i] then problem(("%s write %d: %s"):format(mode, i, tostring(err))) end
          if i % 3 == 0 then np.sleep(1) end
        end
      end)
      -- (reads with short timeouts, tried again on TIMEOUT: the task's
      -- wait record comes due often, with the next wait's deadline set
      -- while it is in the heap)
      local short = g.chance(2)
      task(function()
        local got, n, deadline = {}, 0, np.now() + 5000
        while n < total do
          local d, err, ename = server:read(nil, short and g.rnd(3) - 1 or 5000)
          if not d and not (short and ename == "TIMEOUT" and np.now() < deadline) then
            problem(("%s read: %s"):format(mode, tostring(err)))
            break
          end
          if d then
            got[#got + 1] = d
            n = n + #d
          end
        end
        if table.concat(got) ~= table.concat(chunks) then
          problem(("%s: %d bytes arrived, not the %d written in order"):format(mode, n, total))
        end
      end)
    end
    -- lines through a byte pipe, read with read_line; blocks read with
    -- read_into; and ready() on the idle ends meanwhile
    do
      local server, client = H.pair({ pipe_mode = "byte" }, { pipe_mode = "byte" })
      pipes[#pipes + 1] = server
      pipes[#pipes + 1] = client
      local lines = {}
      for i = 1, 10 do lines[i] = ("line %d %s"):format(i, ("y"):rep(g.rnd(200))) end
      task(function()
        for i = 1, #lines do
          local n, err = client:write(lines[i] .. "\n", 5000)
          if not n then problem(("line write %d: %s"):format(i, tostring(err))) end
        end
      end)
      task(function()
        for i = 1, #lines do
          local l, err = server:read_line(5000)
          if l ~= lines[i] then
            problem(("line %d: %s (%s)"):format(i, tostring(l), tostring(err)))
            break
          end
        end
      end)
      local back = {}
      for i = 1, 6 do back[i] = ("b%d"):format(i) .. ("z"):rep(g.rnd(100)) end
      task(function()
        for i = 1, #back do
          local n, err = server:write(back[i], 5000)
          if not n then problem(("block write %d: %s"):format(i, tostring(err))) end
          local set = server:ready("both", g.rnd(3) - 1)
          if set ~= nil and type(set) ~= "table" then problem("ready: " .. tostring(set)) end
        end
      end)
      task(function()
        local buf, got, want = np.buffer(4096), {}, table.concat(back)
        while #table.concat(got) < #want do
          local n, err = client:read_into(buf, 5000)
          if not n then
            problem("read_into: " .. tostring(err))
            break
          end
          got[#got + 1] = buf:sub(1, n)
        end
        if table.concat(got) ~= want then problem("read_into: the blocks came wrong") end
      end)
    end
    local ok, err = pcall(H.pump, function() return done == expected end, 20000, what)
    debug.sethook()
    lu.assertTrue(ok, what .. ": " .. tostring(err))
    lu.assertEquals(problems, {}, what)
    for _, p in ipairs(pipes) do p:close() end
    H.settle(2000)
  end
  H.settle(50)
  lu.assertEquals(np.stats().outstanding, 0)
  lu.assertNil(np.timeout(), "a timer left after every task ended")
end
