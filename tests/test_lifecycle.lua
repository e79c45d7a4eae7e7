-- The pure-Lua layer's lifecycle: a task is resumed once per wait, an error
-- that unwinds a waiting call loses nothing and leaves the pipe usable,
-- np.serve keeps its name, the framing helpers stay bounded and linear.
local lu = require "luaunit"
local np = require "namedpipe"
local H = require "tests.helpers"

-- Step with a busy pause before each step, so that every timer due in the
-- pause fires in the same pass; until done() or timeout_ms.
local function step_in_bursts(done, pause_ms, timeout_ms, each)
  local t0 = np.now()
  while not done() do
    if np.now() - t0 > timeout_ms then error("timed out stepping in bursts", 2) end
    local t = np.now()
    while np.now() - t < pause_ms do end
    np.step(0)
    if each then each(np.now() - t0) end
  end
end

local function raises(f, ...)
  local ok, err = pcall(f, ...)
  lu.assertFalse(ok, "expected an error")
  return tostring(err)
end

-- More than a pipe's buffer holds: a write of it stays in flight (and a
-- writable() wait pending) until the peer reads.
local BIG = 4 * 1024 * 1024

TestResumeOnce = {}

function TestResumeOnce:tearDown() H.settle(2000) end

-- ev:set() and the wait's own timer in one pass: the waiting task is
-- resumed once; the next thing it waits on gets its own result.
function TestResumeOnce:test_event_set_and_timeout_in_one_pass()
  local server, client = H.pair()
  local ev = np.event()
  local got = {}
  np.spawn(function()
    got.wait = { ev:wait(5) }
    got.read = { server:read() }
  end)
  np.spawn(function()
    np.sleep(1) -- due before the wait's timer: set() comes first in the pass
    ev:set(true)
  end)
  local wrote = false
  step_in_bursts(function() return got.read ~= nil end, 20, 5000, function(t)
    if not wrote and t >= 50 then
      wrote = true
      client:write("late", function() end)
    end
  end)
  lu.assertEquals(got.wait, { true })
  lu.assertEquals(got.read, { "late" })
  np.run() -- nothing left to resume: no "cannot resume dead coroutine"
  H.close_all(server, client)
end

-- The whole class: many tasks whose every wait can be ended by two sources
-- in one pass (event set vs timeout, sleep vs a stale wake), each then
-- reading; every read gets exactly what was written for it.
function TestResumeOnce:test_every_wait_is_resumed_once()
  local pairs_, got, n = {}, {}, 8
  for i = 1, n do
    local server, client = H.pair()
    pairs_[i] = { server, client }
    local ev = np.event()
    np.spawn(function()
      local r = { ev:wait(i % 3 + 3) }
      got[i] = { wait = r[1] or r[3] }
      np.sleep(1)
      got[i].read = server:read()
      got[i].readable = server:readable(1000)
      got[i].ready = server:ready("both", 1000)
      got[i].again = server:read(nil, 1000)
    end)
    np.spawn(function()
      np.sleep(i % 2 + 3)
      ev:set("set")
    end)
  end
  local wrote = false
  step_in_bursts(function()
    for i = 1, n do if not (got[i] and got[i].again) then return false end end
    return true
  end, 15, 8000, function(t)
    if not wrote and t >= 60 then
      wrote = true
      for i = 1, n do
        pairs_[i][2]:write("one " .. i, function() end)
      end
      np.spawn(function()
        np.sleep(40)
        for i = 1, n do pairs_[i][2]:write("two " .. i, function() end) end
      end)
    end
  end)
  for i = 1, n do
    lu.assertEquals(got[i].read, "one " .. i)
    lu.assertTrue(got[i].readable)
    lu.assertTrue(got[i].ready.writable or got[i].ready.readable)
    lu.assertEquals(got[i].again, "two " .. i)
    lu.assertTrue(got[i].wait == "set" or got[i].wait == "TIMEOUT")
  end
  np.run()
  for i = 1, n do H.close_all(pairs_[i][1], pairs_[i][2]) end
end

-- ready("both") in a task whose two waits complete in one step: resumed
-- once, its next wait is its own.
function TestResumeOnce:test_ready_both_resumed_once()
  local server, client = H.pair()
  local got = {}
  client:write("x")
  H.settle(50)
  np.spawn(function()
    got.ready = server:ready("both", 1000) -- readable and writable both at once
    got.sleep_start = np.now()
    np.sleep(30)
    got.slept = np.now() - got.sleep_start
    got.read = server:read(nil, 1000)
  end)
  np.run()
  lu.assertNotNil(got.ready)
  lu.assertTrue(got.slept >= 29, "the sleep was cut short: " .. got.slept .. " ms")
  lu.assertEquals(got.read, "x")
  H.close_all(server, client)
end

TestUnwind = {}

function TestUnwind:tearDown() H.settle(2000) end

-- The main thread waits in `call` (which drives the loop) when a task
-- raises: the error comes out of the call.
local function unwound(call)
  np.spawn(function()
    np.sleep(20)
    error("task failed on purpose")
  end)
  local err = raises(call)
  lu.assertStrContains(err, "task failed on purpose")
end

function TestUnwind:test_read_then_data()
  local server, client = H.pair()
  unwound(function() return server:read(nil, 1000) end)
  client:write("after")
  lu.assertEquals(server:read(nil, 1000), "after")
  lu.assertEquals(select(3, server:read(nil, 20)), "TIMEOUT")
  H.close_all(server, client)
end

-- The data is written just before the error: the abandoned read may have
-- got it (then it is read ahead) or not (then the pipe still has it);
-- either way it comes once.
function TestUnwind:test_read_data_in_flight_comes_once()
  for _, mode in ipairs { "byte", "message" } do
    local opts = { pipe_mode = mode }
    local server, client = H.pair(opts, opts)
    np.spawn(function() -- runs from the read's first step
      client:write("first", function() end)
      error("task failed on purpose")
    end)
    local err = raises(function() return server:read(nil, 1000) end)
    lu.assertStrContains(err, "task failed on purpose")
    lu.assertEquals(server:read(nil, 1000), "first")
    client:write("second")
    lu.assertEquals(server:read(nil, 1000), "second")
    H.close_all(server, client)
  end
end

-- Data the abandoned read got while nobody waited for it is handed to the
-- next read of any kind, and the callback form works at once too.
function TestUnwind:test_abandoned_read_data_goes_to_the_next_reader()
  local server, client = H.pair()
  np.spawn(function()
    client:write("caught", function() end)
    error("task failed on purpose")
  end)
  raises(function() return server:read(nil, 1000) end)
  local cb, res = H.capture()
  server:read(cb) -- not "a read is already pending"
  H.pump(function() return res.done end, 2000, "the read's callback")
  lu.assertEquals(res[1], "caught")
  -- and try_read while an abandoned read is pending says WOULDBLOCK
  unwound(function() return server:read(nil, 1000) end)
  local d, _, name = server:try_read()
  lu.assertNil(d)
  lu.assertEquals(name, "WOULDBLOCK")
  lu.assertEquals(select(3, server:read(nil, 20)), "TIMEOUT")
  H.close_all(server, client)
end

-- A callback-form call queued behind an abandoned read is ended by a
-- cancel of the read slot, as it would be pending (with the cancel's
-- reason, its read_into buffer free again), and by close() as any pending
-- call is; the abandoned read's bytes still go to the next reader.
function TestUnwind:test_calls_queued_behind_an_abandoned_read_end_with_a_cancel()
  for _, reason in ipairs { "CANCELLED", "TIMEOUT" } do
    for _, into in ipairs { false, true } do
      local server, client = H.pair()
      unwound(function() return server:read(nil, 1000) end)
      local cb, res = H.capture()
      local buf = np.buffer(8)
      if into then
        server:read_into(buf, cb) -- waits for the abandoned read's end
        lu.assertErrorMsgContains("buffer is being filled", buf.sub, buf)
      else
        server:read(cb)
      end
      server:cancel("read", reason)
      H.pump(function() return res.done end, 2000, "the queued call's end")
      lu.assertEquals({ res[1], res[3] }, { nil, reason })
      lu.assertEquals(buf:sub(1, 0), "") -- free again
      assert(client:write("late", 2000))
      lu.assertEquals(server:read_into(buf, 2000), 4)
      lu.assertEquals(buf:sub(1, 4), "late")
      H.close_all(server, client)
    end
  end
  local server, client = H.pair()
  unwound(function() return server:read(nil, 1000) end)
  local buf = np.buffer(8)
  local cb, res = H.capture()
  server:read_into(buf, cb)
  server:close()
  H.pump(function() return res.done end, 2000, "the queued read_into's end")
  lu.assertEquals(res[3], "CLOSED")
  local s2, c2 = H.pair() -- the buffer serves another pipe
  assert(c2:write("next", 2000))
  lu.assertEquals(s2:read_into(buf, 2000), 4)
  lu.assertEquals(buf:sub(1, 4), "next")
  H.close_all(server, client, s2, c2)
end

-- A callback-form call queued behind an abandoned read counts as pending:
-- every reading call after it, waiting or not, is refused as it would be
-- were that call pending, and the queued call gets the abandoned read's
-- bytes (a waiting read made after it used to take them, and the queued
-- call then raised "already pending" from a step).
function TestUnwind:test_a_call_queued_behind_an_abandoned_read_is_not_overtaken()
  local later = {
    read = function(p) return p:read(nil, 500) end,
    read_into = function(p) return p:read_into(np.buffer(8), 500) end,
    read_cb = function(p) return p:read(function() end) end,
    try_read = function(p) return p:try_read() end,
    readable = function(p) return p:readable(500) end,
    read_line = function(p) return p:read_line(500) end,
  }
  for _, queued in ipairs { "read", "read_into" } do
    for _, name in ipairs { "read", "read_into", "read_cb", "try_read", "readable", "read_line" } do
      local what = ("%s after a queued %s"):format(name, queued)
      local server, client = H.pair()
      unwound(function() return server:read(nil, 1000) end)
      local got
      local buf = np.buffer(8)
      if queued == "read" then
        server:read(function(d) got = d end)
      else
        server:read_into(buf, function(n) got = n and buf:sub(1, n) end)
      end
      lu.assertErrorMsgContains("already pending", later[name], server)
      assert(client:write("first", 2000))
      H.pump(function() return got ~= nil end, 2000, what)
      lu.assertEquals(got, "first", what)
      assert(client:write("next", 2000))
      lu.assertEquals(server:read(nil, 2000), "next", what)
      H.close_all(server, client)
    end
  end
end

-- A waiting read made while an abandoned read is still the pipe's waits
-- for it (settles) and holds the read slot meanwhile, as the call queued
-- above does: every reading call made in that time (here by a task, from
-- the first step the wait makes) is refused, and the waiting read gets
-- the next bytes. On the main thread, in a coroutine of the script's, and
-- in a task (which the abandoned read's end resumes from a later step).
function TestUnwind:test_a_waiting_read_that_settles_is_not_overtaken()
  for _, where in ipairs { "main", "coroutine", "task" } do
    for _, call in ipairs(H.reading_call_names) do
      if call ~= "transact" then
        local what = ("%s, %s"):format(where, call)
        local server, client = H.pair()
        unwound(function() return server:read(nil, 1000) end)
        local refused, got
        H.run_in(where, function()
          np.spawn(function() -- (runs once the read below waits)
            local ok, err = pcall(H.reading_calls[call], server)
            refused = not ok and tostring(err) or ("accepted: " .. call)
            client:write("first")
          end)
          got = server:read(nil, 2000)
        end, 3000, what)
        lu.assertStrContains(refused or "no task ran", "a read is already pending", false, what)
        lu.assertEquals(got, "first", what)
        H.close_all(server, client)
      end
    end
  end
end

-- A waiting read settling behind an abandoned read when the instance is
-- disconnected and the next client connects ends as a pending read does,
-- NOT_CONNECTED: it was the last client's, and the next client's bytes go
-- to the next read. On the main thread, in a coroutine and in a task.
function TestUnwind:test_a_waiting_read_that_settles_ends_at_a_disconnect()
  for _, where in ipairs { "main", "coroutine", "task" } do
    local server, client, name = H.pair()
    unwound(function() return server:read(nil, 1000) end)
    local r, next_client
    H.run_in(where, function()
      np.spawn(function() -- (runs once the read below waits)
        assert(server:disconnect())
        server:connect(function() assert(next_client:write("new", 2000)) end)
        next_client = assert(np.open(name))
      end)
      r = table.pack(server:read(nil, 2000))
    end, 3000, where)
    lu.assertEquals(r[3], "NOT_CONNECTED", where)
    lu.assertEquals(server:read(nil, 2000), "new", where)
    H.close_all(server, client, next_client)
  end
end

-- A task's waiting read that cannot wait where it is made (inside a pcall
-- on Lua 5.1, which cannot yield across one) while it would settle behind
-- an abandoned read raises holding nothing: the next read is not refused.
-- (Elsewhere it waits and reads.)
function TestUnwind:test_a_task_read_that_cannot_settle_holds_nothing()
  local server, client = H.pair()
  unwound(function() return server:read(nil, 1000) end)
  local r
  np.spawn(function() r = table.pack(pcall(server.read, server, nil, 2000)) end)
  assert(client:write("x", 2000))
  H.pump(function() return r ~= nil end, 3000, "the task's read")
  if r[1] then
    lu.assertEquals(r[2], "x")
  else
    lu.assertStrContains(tostring(r[2]), "yield")
    lu.assertEquals(server:read(nil, 2000), "x")
  end
  H.close_all(server, client)
end

-- A callback-form call queued behind an abandoned read ends at a
-- disconnect as a pending one does (NOT_CONNECTED): it never reads the
-- next client's bytes, and the next client's reads are not refused.
function TestUnwind:test_a_call_queued_behind_an_abandoned_read_ends_at_a_disconnect()
  for _, queued in ipairs { "read", "read_into" } do
    local server, client, name = H.pair()
    unwound(function() return server:read(nil, 1000) end)
    local r
    local buf = np.buffer(16)
    if queued == "read" then
      server:read(function(...) r = table.pack(...) end)
    else
      server:read_into(buf, function(...) r = table.pack(...) end)
    end
    assert(server:disconnect())
    client:close()
    -- the next client at once, its bytes there before the abandoned read ends
    local connected
    server:connect(function(ok) connected = ok end)
    local next_client = assert(np.open(name))
    next_client:write("for the next reader", function() end)
    H.pump(function() return r ~= nil and connected ~= nil end, 2000, queued)
    lu.assertEquals({ r[1], r[3] }, { nil, "NOT_CONNECTED" }, queued)
    lu.assertEquals(server:read(nil, 2000), "for the next reader", queued)
    lu.assertEquals(buf:sub(1, 0), "", queued) -- (free again)
    H.close_all(server, next_client)
  end
end

-- The buffer an abandoned read_into still fills, promised to a read_into
-- queued behind it, then freed by hand: the read slot is free again, both
-- when the abandoned read ends (the queued call then raises "buffer is
-- freed" from the step that would make it, naming it) and when a cancel
-- ends the queued call first (its callback gets CANCELLED).
function TestUnwind:test_a_promised_buffer_freed_by_hand_frees_the_slot()
  for _, how in ipairs { "end", "cancel" } do
    local server, client = H.pair()
    local buf = np.buffer(16)
    unwound(function() return server:read_into(buf, 1000) end)
    local r
    server:read_into(buf, function(...) r = table.pack(...) end)
    getmetatable(buf).__gc(buf)
    local raised = {}
    if how == "cancel" then
      server:cancel("read")
      H.pump(function() return r ~= nil end, 2000, how)
      lu.assertEquals(r[3], "CANCELLED", how)
    else
      assert(client:write("x", 2000))
      for _ = 1, 20 do
        local ok, err = pcall(np.step, 10)
        if not ok then raised[#raised + 1] = tostring(err) end
      end
      lu.assertEquals(#raised, 1, how)
      lu.assertStrContains(raised[1], "buffer is freed", false, how)
      lu.assertNil(r, how)
    end
    lu.assertEquals(server:_busy("read"), 0, how)
    assert(client:write("y", 2000))
    local got = {}
    for _ = 1, 2 do got[#got + 1] = server:read(nil, 300) end
    lu.assertStrContains(table.concat(got), "y", false, how)
    H.close_all(server, client)
  end
end

-- The buffer an abandoned read_into still fills, given to a read_into
-- queued behind it, is that call's: refused to any other read_into (of
-- this pipe or another, waiting or not) until the queued one has run, and
-- not freed by a cancel of the queued call while the abandoned read may
-- still write into it.
function TestUnwind:test_a_buffer_promised_to_a_queued_read_into_is_refused_to_others()
  local server, client = H.pair()
  local s3, c3 = H.pair()
  local buf = np.buffer(8)
  unwound(function() return server:read_into(buf, 1000) end)
  local cb, res = H.capture()
  server:read_into(buf, cb) -- after the abandoned one, into the same buffer
  -- (this pipe's read slot is that call's meanwhile)
  lu.assertErrorMsgContains("already pending", server.read_into, server, buf, function() end)
  lu.assertErrorMsgContains("already pending", server.read_into, server, buf, 10)
  lu.assertErrorMsgContains("being filled", s3.read_into, s3, buf, 10)
  assert(client:write("hello", 2000))
  for _ = 1, 3 do -- the abandoned read ends; the queued call has not run yet...
    np.step(0)
    if res.done then break end
    lu.assertErrorMsgContains("being filled", s3.read_into, s3, buf, function() end)
  end
  H.pump(function() return res.done end, 2000, "the queued read_into")
  lu.assertEquals(res[1], 5) -- ... and gets the bytes the abandoned one read
  lu.assertEquals(buf:sub(1, 5), "hello")
  assert(c3:write("third", 2000))
  lu.assertEquals(s3:read_into(buf, 2000), 5)
  lu.assertEquals(buf:sub(1, 5), "third")

  -- cancelled while the abandoned read is still pending: the buffer stays
  -- busy until that read has ended, and what it read comes next
  unwound(function() return server:read_into(buf, 1000) end)
  local cb2, res2 = H.capture()
  server:read_into(buf, cb2)
  server:cancel("read")
  H.pump(function() return res2.done end, 2000, "the cancelled read_into")
  lu.assertEquals(res2[3], "CANCELLED")
  H.pump(function() return (pcall(buf.sub, buf)) end, 2000, "the abandoned read's end")
  assert(client:write("later", 2000))
  lu.assertEquals(server:read(nil, 2000), "later")
  H.close_all(server, client, s3, c3)
end

-- The next reader is a task: it waits for the abandoned read, then reads.
function TestUnwind:test_next_reader_in_a_task()
  local server, client = H.pair()
  unwound(function() return server:read(nil, 1000) end)
  local got
  np.spawn(function() got = { server:read(nil, 1000) } end)
  np.spawn(function()
    np.sleep(10)
    client:write("for the task")
  end)
  np.run()
  lu.assertEquals(got, { "for the task" })
  H.close_all(server, client)
end

function TestUnwind:test_read_into()
  local server, client = H.pair()
  local buf = np.buffer(16)
  unwound(function() return server:read_into(buf, 1000) end)
  client:write("into")
  lu.assertEquals(server:read_into(buf, 1000), 4)
  lu.assertEquals(buf:sub(1, 4), "into")
  -- the bytes an abandoned read_into got are not lost either
  np.spawn(function() -- runs from the read_into's first step
    client:write("lost?", function() end)
    error("task failed on purpose")
  end)
  raises(function() return server:read_into(buf, 1000) end)
  local n = assert(server:read_into(buf, 1000))
  lu.assertEquals(buf:sub(1, n), "lost?")
  H.close_all(server, client)
end

-- An unwound read_into whose end was still to be dispatched, its buffer
-- then freed by hand (its __gc called): the bytes it read went with the
-- buffer, but the read slot is free again once that end has come, and
-- the pipe reads on. (Both on the main thread, waited for in C, and in a
-- script's coroutine, by the Lua layer.)
function TestUnwind:test_an_unwound_read_into_whose_buffer_is_freed_frees_the_slot()
  for _, where in ipairs { "main", "coroutine" } do
    local server, client = H.pair()
    local buf = np.buffer(16)
    client:write("gone", function() error("callback failed on purpose", 0) end)
    local ok, err
    H.run_in(where, function() ok, err = pcall(server.read_into, server, buf, 2000) end)
    lu.assertEquals({ ok, err }, { false, "callback failed on purpose" }, where)
    getmetatable(buf).__gc(buf)
    H.settle(50) -- (the end comes: nothing raises)
    lu.assertEquals(server:_busy("read"), 0, where)
    client:write("next")
    local got = server:read(nil, 2000)
    -- (had the read's end come first, on Windows, it was handed over)
    if got == "gone" then got = server:read(nil, 2000) end
    lu.assertEquals(got, "next", where)
    H.close_all(server, client)
  end
end

-- A waiting read_into, transact or readable unwound once it had ended
-- (the error comes from a callback of the step that ended it): the next
-- read gets the bytes, as a string, once. On the main thread (these waits
-- are made in C) and in a script's coroutine (the Lua layer's).
function TestUnwind:test_read_into_transact_and_readable_unwound_once_ended()
  for _, where in ipairs { "main", "coroutine" } do
    local function call(fn)
      if where == "main" then return raises(fn) end
      local co = coroutine.create(fn)
      local ok, err = coroutine.resume(co)
      lu.assertFalse(ok, where)
      return tostring(err)
    end
    -- read_into
    local server, client = H.pair()
    local buf = np.buffer(16)
    client:write("bytes", function() -- from the read_into's first step
      H.pump(function() return server:_busy("read") == 0 end, 2000, "the read")
      error("callback failed on purpose")
    end)
    lu.assertStrContains(call(function() return server:read_into(buf, 2000) end),
      "callback failed on purpose")
    lu.assertEquals(server:read(nil, 2000), "bytes", where)
    lu.assertEquals(select(3, server:read(nil, 20)), "TIMEOUT", where)
    H.close_all(server, client)
    -- transact
    local mopts = { pipe_mode = "message" }
    server, client = H.pair(mopts, mopts)
    server:read(function(req)
      server:write("reply to " .. req, function()
        H.pump(function() return client:_busy("read") == 0 end, 2000, "the transact")
        error("callback failed on purpose")
      end)
    end)
    lu.assertStrContains(call(function() return client:transact("req", 2000) end),
      "callback failed on purpose")
    lu.assertEquals(client:read(nil, 2000), "reply to req", where)
    lu.assertEquals(select(3, client:read(nil, 20)), "TIMEOUT", where)
    H.close_all(server, client)
    -- readable
    server, client = H.pair()
    client:write("ready", function()
      H.pump(function() return server:_busy("read") == 0 end, 2000, "the readable")
      error("callback failed on purpose")
    end)
    lu.assertStrContains(call(function() return server:readable(2000) end),
      "callback failed on purpose")
    lu.assertTrue(server:readable(2000), where)
    lu.assertEquals(server:read(nil, 2000), "ready", where)
    lu.assertEquals(select(3, server:read(nil, 20)), "TIMEOUT", where)
    H.close_all(server, client)
  end
end

function TestUnwind:test_read_line_keeps_its_partial_line()
  local server, client = H.pair()
  client:write("par")
  unwound(function() return server:read_line(1000) end)
  client:write("tial\nnext\n")
  lu.assertEquals(server:read_line(1000), "partial")
  lu.assertEquals(server:read_line(1000), "next")
  H.close_all(server, client)
end

function TestUnwind:test_readable_and_ready()
  local server, client = H.pair()
  unwound(function() return server:readable(1000) end)
  unwound(function() return server:ready("readable", 1000) end)
  client:write("r")
  lu.assertTrue(server:readable(1000))
  lu.assertTrue(server:ready("readable", 1000).readable)
  lu.assertEquals(server:read(nil, 1000), "r")
  H.close_all(server, client)
end

function TestUnwind:test_writable_and_ready_both()
  local server, client = H.pair()
  local big = ("w"):rep(BIG)
  client:write(big, function() end)
  unwound(function() return client:writable(1000) end)
  unwound(function() return client:ready("both", 1000) end)
  unwound(function() return client:ready("writable", 1000) end)
  -- every wait is free again: new ones are accepted and complete
  local got = 0
  while got < BIG do got = got + #assert(server:read(nil, 2000)) end
  lu.assertTrue(client:writable(1000))
  lu.assertTrue(client:ready("both", 1000).writable)
  lu.assertTrue(client:ready("writable", 1000).writable)
  H.close_all(server, client)
end

-- An abandoned write goes on: its bytes arrive, whole, before the next's.
function TestUnwind:test_write_goes_on()
  local server, client = H.pair()
  local big = ("0123456789abcdef"):rep(math.floor(BIG / 16))
  unwound(function() return client:write(big, 1000) end)
  client:write("tail", function() end)
  local parts, total = {}, 0
  while total < BIG + 4 do
    local d = assert(server:read(nil, 2000))
    parts[#parts + 1] = d
    total = total + #d
  end
  local all = table.concat(parts)
  lu.assertEquals(#all, BIG + 4)
  lu.assertEquals(H.checksum(all), H.checksum(big .. "tail"))
  H.close_all(server, client)
end

function TestUnwind:test_connect()
  local name = H.name("unwind-connect")
  local server = assert(np.create(name))
  unwound(function() return server:connect(1000) end)
  local client = assert(np.open(name))
  lu.assertTrue(server:connect(1000))
  client:write("hello")
  lu.assertEquals(server:read(nil, 1000), "hello")
  H.close_all(server, client)
end

-- The same from a coroutine of the caller's own (not a task): the call
-- drives the loop there too.
function TestUnwind:test_in_a_user_coroutine()
  local server, client = H.pair()
  local co = coroutine.create(function() return server:read(nil, 1000) end)
  np.spawn(function()
    np.sleep(20)
    error("task failed on purpose")
  end)
  local ok, err = coroutine.resume(co)
  lu.assertFalse(ok)
  lu.assertStrContains(tostring(err), "task failed on purpose")
  client:write("still here")
  lu.assertEquals(server:read(nil, 1000), "still here")
  H.close_all(server, client)
end

-- A waiting read outside a task holds the read slot until it returns, also
-- in the rest of the step that ended its read: every reading call a
-- callback makes there is refused as one made while a read is pending is.
-- Else a read started there would take the bytes that follow, and should
-- the step then raise, the waiting read's own bytes, handed over to the
-- next read, would come after them. For each waiting read (read on both
-- kinds of pipe, read_into, readable, transact), on the main thread (the
-- C methods' waits) and in a coroutine of the script's (the Lua layer's):
-- the callback's call is refused, and either the wait returns, or the
-- callback raises and unwinds it; the bytes come out in order either way.
function TestUnwind:test_a_waiting_read_holds_the_read_slot_until_it_returns()
  local waits = {
    read = function(p) return p:read(nil, 2000) end,
    read_into = function(p)
      local b = np.buffer(64)
      local n, msg = p:read_into(b, 2000)
      if not n then return nil, msg end
      return b:sub(1, n)
    end,
    readable = function(p) return p:readable(2000) and "" end,
    transact = function(p) return p:transact("q", 2000) end,
    ready_both = function(p) return p:ready("both", 2000) and "" end,
  }
  local cases = { { "read", "byte" }, { "read", "message" }, { "read_into", "byte" },
    { "readable", "byte" }, { "transact", "message" }, { "ready_both", "byte" } }
  for _, case in ipairs(cases) do
    local kind, mode = case[1], case[2]
    for _, where in ipairs { "main", "coroutine" } do
      for _, call in ipairs(H.reading_call_names) do
        for _, raise in ipairs { false, true } do
          if call ~= "transact" or mode == "message" then
            local what = ("%s on a %s pipe, %s, %s%s"):format(kind, mode, where, call,
              raise and ", raising" or "")
            local opts = { pipe_mode = mode }
            local server, client = H.pair(opts, opts)
            local refused
            -- (the reader is the client, so that transact is one of them)
            server:write("first", function() -- in the wait's step, after its read ended
              H.pump(function() return client:_busy("read") == 0 end, 2000, what)
              local ok, err = pcall(H.reading_calls[call], client)
              refused = not ok and tostring(err) or ("accepted: " .. call)
              server:write("second")
              if raise then error("callback failed on purpose", 0) end
            end)
            local r
            H.run_in(where, function() r = table.pack(pcall(waits[kind], client)) end)
            lu.assertStrContains(refused or "no callback ran", "a read is already pending", false, what)
            local got = {}
            if raise then
              lu.assertEquals({ r[1], r[2] }, { false, "callback failed on purpose" }, what)
            else
              lu.assertTrue(r[1], what)
              got[1] = r[2]
            end
            while #table.concat(got) < #"firstsecond" do
              local d, msg = client:read(nil, 2000)
              if not d then
                got[#got + 1] = "<" .. tostring(msg) .. ">"
                break
              end
              got[#got + 1] = d
            end
            lu.assertEquals(table.concat(got), "firstsecond", what)
            H.close_all(server, client)
          end
        end
      end
    end
  end
end

TestLuaMisuse = {}

function TestLuaMisuse:tearDown() H.settle(2000) end

function TestLuaMisuse:test_read_callback_then_timeout_raises()
  local server, client = H.pair()
  local ran = false
  local cb = function() ran = true end
  lu.assertStrContains(raises(function() return server:read(cb, 100) end),
    "bad argument #3 to 'read' (nothing expected after the callback or timeout")
  lu.assertEquals(np.pending(), 0) -- nothing started
  client:write("ok")
  lu.assertEquals(server:read(nil, 1000), "ok")
  lu.assertFalse(ran)
  H.close_all(server, client)
end

-- ready("both") refused half-way (a writable() wait is already pending)
-- starts nothing: no readable wait is left behind to cancel that
-- writable() wait later, nor to make the next read raise.
function TestLuaMisuse:test_ready_both_refused_starts_nothing()
  local server, client = H.pair()
  client:write(("w"):rep(BIG), function() end)
  local cb, res = H.capture()
  client:writable(cb)
  lu.assertStrContains(raises(function() return client:ready("both", 100) end),
    "bad argument #1 to 'ready' (a writable() wait is already pending on this pipe)")
  server:write("make the client readable")
  H.settle(50)
  np.step(20)
  lu.assertFalse(res.done, "the unrelated writable() wait was cancelled")
  lu.assertEquals(client:read(nil, 1000), "make the client readable")
  local got = 0
  while got < BIG do got = got + #assert(server:read(nil, 2000)) end
  H.pump(function() return res.done end, 2000, "the writable() callback")
  lu.assertEquals(res[1], true)
  -- the same with the read slot taken
  client:read(function() end)
  lu.assertStrContains(raises(function() return client:ready("both", 100) end),
    "bad argument #1 to 'ready' (a read is already pending on this pipe)")
  lu.assertEquals(client:_busy("writable"), 0)
  H.close_all(server, client)
end

TestServeKeepsName = {}

-- a server a failed test left running would keep every later np.run going
local servers = {}
local function serve(...)
  local srv, msg = np.serve(...)
  servers[#servers + 1] = srv
  return srv, msg
end

function TestServeKeepsName:tearDown()
  for _, srv in ipairs(servers) do srv.close() end
  servers = {}
  H.settle(2000)
end

-- Every instance is held by a handler and handlers keep finishing: a
-- client of this process never finds the name missing (PIPE_BUSY, which
-- it may retry, is fine).
function TestServeKeepsName:test_name_never_vanishes_at_max_instances()
  local name = H.name("keep")
  local handled = 0
  local srv = assert(serve(name, { max_instances = 1 }, function()
    np.sleep(3)
    handled = handled + 1
  end))
  local counts = {}
  np.spawn(function()
    local t0 = np.now()
    while np.now() - t0 < 400 do
      local c, _, ename = np.open(name)
      local k = c and "ok" or ename
      counts[k] = (counts[k] or 0) + 1
      if c then c:close() end
      np.sleep(1)
    end
    srv.close()
  end)
  np.run()
  lu.assertNil(counts.NOT_FOUND, "NOT_FOUND " .. tostring(counts.NOT_FOUND) .. " times")
  lu.assertTrue((counts.ok or 0) > 0)
  lu.assertTrue(handled > 0)
end

-- listeners = 2: two clients may open one after the other without a step
-- between (as `copy x \\.\pipe\y` does), and both are served.
function TestServeKeepsName:test_listeners_take_clients_back_to_back()
  local name = H.name("listeners")
  local served = {}
  local srv = assert(serve(name, { listeners = 2 }, function(p)
    local line = p:read_line(2000)
    served[#served + 1] = line
  end))
  np.step(0)
  local a = assert(np.open(name))
  local b, msg = np.open(name)
  lu.assertNotNil(b, msg)
  a:write("a\n")
  b:write("b\n")
  H.pump(function() return #served == 2 end, 3000, "both handlers")
  table.sort(served)
  lu.assertEquals(served, { "a", "b" })
  -- and again: both listeners were replaced
  local c = assert(np.open(name))
  local d = assert(np.open(name))
  srv.close()
  H.close_all(a, b, c, d)
end

-- By default serve keeps 4 instances listening (as libuv does), fewer when
-- max_instances allows fewer: so many clients get in at once, with no retry.
function TestServeKeepsName:test_default_listeners()
  for _, case in ipairs({ { nil, 4 }, { 2, 2 }, { "unlimited", 4 } }) do
    local max, want = case[1], case[2]
    local name = H.name("deflisten")
    local srv = assert(serve(name, { max_instances = max }, function(p)
      p:read(nil, 2000)
    end))
    local clients = {}
    for i = 1, want do
      local c, msg, errname = np.open(name)
      lu.assertNotNil(c, ("client %d of %d, max_instances %s: %s %s")
        :format(i, want, tostring(max), tostring(msg), tostring(errname)))
      clients[i] = c
    end
    -- every listening instance is taken: the next client is refused
    local c, _, errname = np.open(name)
    lu.assertNil(c)
    lu.assertEquals(errname, "PIPE_BUSY")
    srv.close()
    for _, p in ipairs(clients) do p:close() end
    H.settle(2000)
  end
end

-- An instance serve needs is refused as busy by one that is not its own:
-- serve tries again (it does not wait for one of its handlers to finish).
function TestServeKeepsName:test_busy_by_a_foreign_instance_is_retried()
  local name = H.name("foreign")
  local release = np.event()
  local srv = assert(serve(name, { max_instances = 2, listeners = 1 }, function()
    release:wait(5000)
  end))
  np.step(0)
  local extra = assert(np.create(name, { max_instances = 2 })) -- not serve's
  local first = assert(np.open(name, { timeout = 2000 }))
  H.pump(function() return srv.active == 1 end, 2000, "the first handler")
  extra:close() -- the second instance is free to create now
  local second, msg = np.open(name, { timeout = 2000 })
  lu.assertNotNil(second, msg) -- while the first handler still runs
  release:set()
  srv.close()
  H.close_all(first, second)
end

function TestServeKeepsName:test_listeners_validated()
  local f = function() end
  local pipes = np.stats().pipes
  lu.assertStrContains(raises(np.serve, H.name("v"), { listeners = 0 }, f),
    "bad argument #2 to 'serve' (option 'listeners'")
  lu.assertStrContains(raises(np.serve, H.name("v"), { listeners = 1.5 }, f),
    "bad argument #2 to 'serve' (option 'listeners'")
  lu.assertStrContains(raises(np.serve, H.name("v"), { listeners = "2" }, f),
    "bad argument #2 to 'serve' (option 'listeners'")
  lu.assertStrContains(raises(np.serve, H.name("v"), { listeners = 3, max_instances = 2 }, f),
    "bad argument #2 to 'serve' (option 'listeners'")
  -- nothing was left listening by a refused call
  lu.assertEquals(np.stats().pipes, pipes)
  local srv = assert(serve(H.name("v"), { listeners = 2, max_instances = 2 }, f))
  srv.close()
end

TestFramingLimits = {}

local DEFAULT_MAX_FRAME = np.max_frame_size

function TestFramingLimits:tearDown()
  np.max_frame_size = DEFAULT_MAX_FRAME
  H.settle(2000)
end

function TestFramingLimits:test_oversize_frame_refused_without_reading_the_body()
  lu.assertEquals(np.max_frame_size, 8 * 1024 * 1024)
  local server, client = H.pair()
  -- a hostile length: 4 GiB - 1, and no body
  client:write("\255\255\255\255")
  local data, msg, name, code = server:read_frame(1000)
  lu.assertNil(data)
  lu.assertEquals(name, "FRAME_TOO_LARGE")
  lu.assertEquals(code, 0)
  lu.assertStrContains(msg, "frame")
  H.close_all(server, client)
  -- a limit of our own; what was refused is still there
  server, client = H.pair()
  np.max_frame_size = 10
  client:write_frame("0123456789")
  client:write_frame("0123456789A")
  lu.assertEquals(server:read_frame(1000), "0123456789")
  lu.assertEquals(select(3, server:read_frame(1000)), "FRAME_TOO_LARGE")
  lu.assertEquals(select(3, server:read_frame(1000)), "FRAME_TOO_LARGE")
  np.max_frame_size = 11
  lu.assertEquals(server:read_frame(1000), "0123456789A")
  np.max_frame_size = -1
  lu.assertStrContains(raises(server.read_frame, server, 10), "max_frame_size")
  np.max_frame_size = "big"
  lu.assertStrContains(raises(server.read_frame, server, 10), "max_frame_size")
  H.close_all(server, client)
end

-- A long line in many small pieces costs memory in proportion to its
-- length: the reader neither rebuilds its buffer nor rescans it per read.
function TestFramingLimits:test_long_line_in_many_small_writes_is_linear()
  local opts = { pipe_mode = "message" } -- one piece per read, whatever the timing
  local server, client = H.pair(opts, opts)
  local piece, count = ("x"):rep(511) .. "y", 512
  for _ = 1, count do client:write(piece, function() end) end
  client:write("end\nafter\n", function() end)
  local line
  collectgarbage("collect")
  collectgarbage("stop")
  local before = collectgarbage("count")
  local ok, err = pcall(function() line = server:read_line(10000) end)
  local grown = (collectgarbage("count") - before) * 1024
  collectgarbage("restart")
  assert(ok, err)
  local len = #piece * count + 3
  lu.assertEquals(#line, len)
  lu.assertEquals(line, piece:rep(count) .. "end")
  lu.assertTrue(grown < 16 * len,
    ("reading a %d-byte line allocated %d bytes"):format(len, math.floor(grown)))
  lu.assertEquals(server:read_line(1000), "after")
  H.close_all(server, client)
end

-- disconnect() ends one client's connection: whatever this layer still
-- holds of it (bytes read ahead, an abandoned read's bytes, the start of a
-- line or frame being read) goes with it, never to the next client.
TestDisconnectDropsHeld = {}

function TestDisconnectDropsHeld:tearDown() H.settle(2000) end

-- The instance takes its next client; nothing of the old one is readable.
local function next_client(server, name, says)
  server:connect(function() end)
  local client = assert(np.open(name))
  assert(client:write(says, 1000))
  return client
end

function TestDisconnectDropsHeld:test_bytes_read_ahead()
  local old_bytes = "the old client's\n"
  for _, how in ipairs { "read_line", "read_exact", "read_frame" } do
    local server, old, name = H.pair()
    if how == "read_line" then
      assert(old:write("one\n" .. old_bytes, 1000))
      lu.assertEquals(server:read_line(1000), "one")
    elseif how == "read_exact" then
      assert(old:write("one" .. old_bytes, 1000))
      lu.assertEquals(server:read_exact(3, 1000), "one")
    else
      assert(old:write("\0\0\0\3one" .. old_bytes, 1000))
      lu.assertEquals(server:read_frame(1000), "one")
    end
    lu.assertEquals(server:peek().available, #old_bytes, how)
    lu.assertTrue(server:disconnect())
    local new = next_client(server, name, "three\n")
    lu.assertEquals(server:read_line(1000), "three", how)
    H.close_all(server, old, new)
  end
end

-- Each way to read finds nothing of the old client's.
function TestDisconnectDropsHeld:test_no_read_gets_the_old_bytes()
  local buf = np.buffer(64)
  local reads = {
    read = function(s) return s:read(nil, 1000) end,
    try_read = function(s)
      H.pump(function() return s:peek().available > 0 end, 2000, "the new bytes")
      return s:try_read()
    end,
    read_into = function(s) return buf:sub(1, assert(s:read_into(buf, 1000))) end,
    callback = function(s)
      local cb, res = H.capture()
      s:read(cb)
      H.pump(function() return res.done end, 2000, "the read's callback")
      return res[1]
    end,
  }
  for how, read in pairs(reads) do
    local server, old, name = H.pair()
    assert(old:write("one\nold\n", 1000))
    lu.assertEquals(server:read_line(1000), "one")
    lu.assertTrue(server:disconnect())
    lu.assertEquals(server:peek(), nil) -- no client: nothing held either
    local new = next_client(server, name, "new")
    lu.assertEquals(server:peek().available, 3, how)
    lu.assertEquals(read(server), "new", how)
    H.close_all(server, old, new)
  end
end

-- A read abandoned by an error, whose bytes came before the disconnect()
-- the same error's callback made: they are not handed to the next client.
function TestDisconnectDropsHeld:test_abandoned_read_handed_over_after_disconnect()
  local server, old, name = H.pair()
  old:write("old\n", function() -- from the step of the read below
    -- until the read has its bytes (nobody has taken them yet)
    H.pump(function() return server:_busy("read") == 0 end, 2000, "the read")
    server:disconnect()
    error("callback failed on purpose")
  end)
  lu.assertStrContains(raises(function() return server:read(nil, 2000) end),
    "callback failed on purpose")
  local new = next_client(server, name, "new\n")
  lu.assertEquals(server:read_line(1000), "new")
  H.close_all(server, old, new)
end

-- read_line had taken the start of a line when a task disconnected: it
-- fails NOT_CONNECTED and the start is dropped.
function TestDisconnectDropsHeld:test_line_started_in_a_task()
  local opts = { pipe_mode = "message" } -- a message is one read
  local server, old, name = H.pair(opts, opts)
  assert(old:write("one\npar", 1000))
  lu.assertEquals(server:read_line(1000), "one") -- "par" is read ahead
  local got
  np.spawn(function() got = table.pack(server:read_line(5000)) end)
  np.step(0) -- the task has taken "par" and waits for the rest
  lu.assertNil(got)
  lu.assertTrue(server:disconnect())
  H.pump(function() return got ~= nil end, 2000, "the read_line")
  lu.assertNil(got[1])
  lu.assertEquals(got[3], "NOT_CONNECTED")
  local new = next_client(server, name, "new\n")
  lu.assertEquals(server:read_line(1000), "new")
  H.close_all(server, old, new)
end

-- The same, the read_line waiting in the main thread and unwound by the
-- error of the task that disconnected: what it had taken is not handed on.
function TestDisconnectDropsHeld:test_line_unwound_after_disconnect()
  local opts = { pipe_mode = "message" }
  local server, old, name = H.pair(opts, opts)
  assert(old:write("one\npar", 1000))
  lu.assertEquals(server:read_line(1000), "one")
  np.spawn(function() -- runs from the read_line's first step
    server:disconnect()
    error("task failed on purpose")
  end)
  lu.assertStrContains(raises(function() return server:read_line(5000) end),
    "task failed on purpose")
  local new = next_client(server, name, "new\n")
  lu.assertEquals(server:read_line(1000), "new")
  H.close_all(server, old, new)
end

-- read_line's read got its bytes before a disconnect() that a callback
-- made in the same step: a whole line is returned, as a read() returns
-- what it got; the rest, or a line not whole, is dropped with the client.
function TestDisconnectDropsHeld:test_line_seen_after_disconnect()
  local opts = { pipe_mode = "message" }
  for _, case in ipairs { { "whole\nrest", "whole" }, { "part", nil, "NOT_CONNECTED" } } do
    local server, old, name = H.pair(opts, opts)
    old:write(case[1], function() -- from the step of the read_line below
      H.pump(function() return server:_busy("read") == 0 end, 2000, "the read")
      server:disconnect()
    end)
    local r = table.pack(server:read_line(2000))
    lu.assertEquals(r[1], case[2])
    lu.assertEquals(r[3], case[3])
    local new = next_client(server, name, "new\n")
    lu.assertEquals(server:read_line(1000), "new")
    H.close_all(server, old, new)
  end
end

-- disconnect() refuses misuse as it did: raised at the caller, naming it.
function TestDisconnectDropsHeld:test_misuse_raises_at_the_caller()
  local server, client = H.pair()
  local here = "test_lifecycle.lua:"
  local err = raises(function() client:disconnect() end)
  lu.assertStrContains(err, "bad argument #1 to 'disconnect' (server pipe expected, got a client)")
  lu.assertStrContains(err, here)
  err = raises(function() server.disconnect({}) end)
  lu.assertStrContains(err, "bad argument #1 to 'disconnect' (namedpipe.pipe expected, got table)")
  lu.assertStrContains(err, here)
  err = raises(server.disconnect, client) -- no call site: named all the same
  lu.assertStrContains(err, "bad argument #1 to 'disconnect' (server pipe expected, got a client)")
  lu.assertEquals(table.pack(server:disconnect()), { true, n = 1 })
  H.close_all(server, client)
  err = raises(function() server:disconnect() end)
  lu.assertStrContains(err, "bad argument #1 to 'disconnect' (pipe is closed)")
  lu.assertStrContains(err, here)
end

-- close() while a framing read waits, once part of what it waits for has
-- come: CLOSED, as every pending operation gets from close().
TestFramingClosed = {}

function TestFramingClosed:tearDown() H.settle(2000) end

local FRAMING_READS = {
  read_line = function(s) return s:read_line(5000) end,
  read_exact = function(s) return s:read_exact(10, 5000) end,
  read_frame = function(s) return s:read_frame(5000) end,
}

function TestFramingClosed:test_closed_after_a_part_came()
  for how, read in pairs(FRAMING_READS) do
    local server, client = H.pair()
    client:write("\0\0\0\20abc", function() -- from a step of the read below
      -- until the read has its part (its caller has not seen it yet)
      H.pump(function() return server:_busy("read") == 0 end, 2000, "the read")
      server:close()
    end)
    local r = table.pack(read(server))
    lu.assertNil(r[1], how)
    lu.assertEquals(r[3], "CLOSED", how)
    lu.assertEquals(r[4], 0, how)
    H.close_all(server, client)
  end
end

function TestFramingClosed:test_closed_after_a_part_came_in_a_task()
  for how, read in pairs(FRAMING_READS) do
    local server, client = H.pair()
    local got
    np.spawn(function() got = table.pack(read(server)) end)
    np.step(0) -- the task waits
    -- the part and the close come in one step (the close first, or the
    -- part's read first: then the task is resumed on a closed pipe)
    client:write("\0\0\0\20abc", function() server:close() end)
    H.pump(function() return got ~= nil end, 2000, how)
    lu.assertNil(got[1], how)
    lu.assertEquals(got[3], "CLOSED", how)
    H.close_all(server, client)
  end
end

-- Misuse on a closed pipe raises, naming the method called.
function TestFramingClosed:test_closed_pipe_raises_naming_the_method()
  local server, client = H.pair()
  H.close_all(server, client)
  for _, how in ipairs { "read_line", "read_exact", "read_frame", "write_frame" } do
    local err = raises(function()
      if how == "read_exact" then server:read_exact(3)
      elseif how == "write_frame" then server:write_frame("x")
      else server[how](server) end
    end)
    lu.assertStrContains(err, ("bad argument #1 to '%s' (pipe is closed)"):format(how))
    lu.assertStrContains(err, "test_lifecycle.lua:")
  end
end

-- lines() ends once the pipe is closed, by the loop's body too.
function TestFramingClosed:test_lines_end_when_the_body_closes()
  local server, client = H.pair()
  assert(client:write("one\ntwo\n", 1000))
  local got = {}
  for line in server:lines() do
    got[#got + 1] = line
    server:close()
  end
  lu.assertEquals(got, { "one" })
  H.close_all(server, client)
end
