--[[
tests/test_read_start.lua - pipe:read_start(cb) calls cb for every read
until read_stop(), an error or the end of the stream: every byte once and
in order, however reading is started and stopped, mixed with other reads.

The model test drives a seeded sequence on one pair: the client writes
(bytes or messages), the server starts and stops reading (from outside a
callback or from inside one), and while it is not reading it reads
directly (read, read_exact: the framing reads leave bytes read ahead, which
a read_start then hands out first). What the server got, in order, must be
what the client sent; no callback may come after a read_stop made in a
callback, and after one made elsewhere at most one, with data it had
already read. Seeds: NP_READ_START_SEED (one) or the fixed list below.
]]
local lu = require "luaunit"
local np = require "namedpipe"
local H = require "tests.helpers"

TestReadStart = {}

function TestReadStart:tearDown() H.settle(2000) end

local function noop() end

local function bytes(g, n)
  local t = {}
  for i = 1, n do t[i] = string.char(g.rnd(256) - 1) end
  return table.concat(t)
end

-- Step until a step raises (a callback's error): that error.
local function step_until_error()
  local ok, err
  H.pump(function()
    ok, err = pcall(np.step, 10)
    return not ok
  end, 5000, "the error")
  return err
end

-- A line and the rest written at once, the line read: the rest is read
-- ahead (by the Lua layer).
local function leave_ahead(server, client, line, rest)
  assert(client:write(line .. "\n" .. rest, 2000))
  lu.assertEquals(server:read_line(2000), line)
end

-- Write s, let a few steps go by, and read s back: nothing was reading.
local function still_readable(server, client, s)
  assert(client:write(s, 2000))
  for _ = 1, 5 do np.step(5) end
  lu.assertEquals(server:read(nil, 2000), s)
end

-- Step until the read slot is free: the end of a read read_stop cancelled
-- from outside its callback has been dispatched.
local function slot_free(pipe)
  H.pump(function() return pipe:_busy("read") == 0 end, 5000, "the read slot")
end

-- seen: what the runs went through, counted (the test checks each was).
local function run_model(seed, mode, seen)
  local g = H.generator(seed)
  local opts = { pipe_mode = mode }
  local server, client = H.pair(opts, opts)
  local sent, got = {}, {}            -- chunks (byte mode) or messages
  local sent_bytes, got_bytes = 0, 0
  local reading = false               -- between read_start and read_stop
  local stop_in_cb = false            -- the next callback calls read_stop
  local late_allowed = false          -- read_stop from outside: one data callback may follow
  local bad = {}
  local trail = {}                    -- the last actions, for a failure's message
  local function note(what)
    bad[#bad + 1] = ("seed %d %s: %s (after %s)"):format(seed, mode, what,
      table.concat(trail, " ", math.max(1, #trail - 11)))
  end

  local function cb(data, msg, name)
    if not reading then
      if data and late_allowed then
        late_allowed = false
      else
        note("a callback after read_stop: " .. tostring(data and #data or name))
      end
    end
    if not data then
      note("an error while the client is open: " .. tostring(name) .. " " .. tostring(msg))
      reading = false
      return
    end
    got[#got + 1] = data
    got_bytes = got_bytes + #data
    if stop_in_cb then
      stop_in_cb = false
      reading = false
      seen.inside = seen.inside + 1
      server:read_stop()
    end
  end

  local function read_directly()
    local unread = sent_bytes - got_bytes
    if unread == 0 then return end
    local data, msg
    if mode == "message" then
      data, msg = server:read(nil, 5000)
    elseif g.chance(2) then
      data, msg = server:read_exact(g.rnd(unread), 5000)
    else
      data, msg = server:read(g.rnd(unread), 5000)
    end
    if not data then note("a direct read failed: " .. tostring(msg)); return end
    seen.direct = seen.direct + 1
    got[#got + 1] = data
    got_bytes = got_bytes + #data
  end

  for _ = 1, 150 do
    local action = g.weighted { { 6, "write" }, { 2, "start" }, { 1, "stop_outside" },
                                { 1, "stop_inside" }, { 3, "direct" }, { 3, "step" } }
    trail[#trail + 1] = action
    if action == "write" then
      local s = bytes(g, g.rnd(300))
      sent[#sent + 1] = s
      sent_bytes = sent_bytes + #s
      client:write(s, noop)
    elseif action == "start" and not reading then
      -- (at once after a read_stop from outside, half the time: the
      -- stopped read's end still to come, the new reading takes it over;
      -- else its data, if it won, comes as the one late callback)
      if g.chance(2) then slot_free(server) end
      late_allowed = false
      if server:_busy("read") > 0 then seen.taken_over = seen.taken_over + 1 end
      if np._read_ahead(server) > 0 then seen.ahead = seen.ahead + 1 end
      reading = true
      server:read_start(cb)
    elseif action == "stop_outside" and reading then
      reading, stop_in_cb, late_allowed = false, false, true
      seen.outside = seen.outside + 1
      server:read_stop()
    elseif action == "stop_inside" and reading then
      stop_in_cb = true
      H.pump(function() return not reading or got_bytes == sent_bytes end, 5000, "a callback")
      if got_bytes == sent_bytes and reading then -- nothing came to stop it: send some
        local s = bytes(g, 1 + g.rnd(20))
        sent[#sent + 1] = s
        sent_bytes = sent_bytes + #s
        client:write(s, noop)
        H.pump(function() return not reading end, 5000, "the stopping callback")
      end
    elseif action == "direct" and not reading then
      slot_free(server)
      read_directly()
    else
      np.step(g.chance(2) and 0 or 1)
    end
  end
  -- the rest, by read_start to the end
  if not reading then
    slot_free(server)
    reading = true
    server:read_start(cb)
  end
  H.pump(function() return got_bytes >= sent_bytes end, 10000, "the last bytes")
  stop_in_cb = true
  local s = "end"
  sent[#sent + 1] = s
  sent_bytes = sent_bytes + #s
  client:write(s, noop)
  H.pump(function() return not reading end, 5000, "the last callback")
  H.close_all(server, client)

  if mode == "message" then
    lu.assertEquals(#got, #sent, ("seed %d: messages"):format(seed))
    for i = 1, #sent do
      if got[i] ~= sent[i] then note(("message %d differs (%d bytes, sent %d)"):format(i, #got[i], #sent[i])) end
    end
  else
    local a, b = table.concat(got), table.concat(sent)
    if a ~= b then note(("the stream differs: got %d bytes, sent %d"):format(#a, #b)) end
  end
  lu.assertEquals(bad, {})
end

local SEEDS = { 1, 2, 3, 5, 8, 13, 21, 34, 55, 89 }

local function seeds()
  local one = tonumber(os.getenv("NP_READ_START_SEED") or "")
  return one and { one } or SEEDS
end

local function run_all(mode)
  local seen = { direct = 0, ahead = 0, outside = 0, inside = 0, taken_over = 0 }
  for _, seed in ipairs(seeds()) do
    run_model(mode == "byte" and seed or seed * 7 + 1, mode, seen)
  end
  return seen
end

function TestReadStart:test_model_byte_mode()
  local seen = run_all("byte")
  if #seeds() == #SEEDS then -- (the fixed seeds reach every path)
    for k, v in pairs(seen) do lu.assertTrue(v > 0, k .. " never happened") end
  end
end

function TestReadStart:test_model_message_mode()
  local seen = run_all("message")
  if #seeds() == #SEEDS then
    seen.ahead = nil -- (no framing reads of messages: nothing is read ahead)
    for k, v in pairs(seen) do lu.assertTrue(v > 0, k .. " never happened") end
  end
end

-- The callback reads each message as it came, and every read ends the
-- same way: end of stream once the client has gone, then nothing more.
function TestReadStart:test_end_of_stream_ends_it()
  local server, client = H.pair({ pipe_mode = "message" }, { pipe_mode = "message" })
  local calls = {}
  server:read_start(function(data, _, name) calls[#calls + 1] = data or name end)
  assert(client:write("one", 2000))
  assert(client:write("two", 2000))
  client:close()
  H.pump(function() return calls[#calls] == "EOF" end, 5000, "EOF")
  for _ = 1, 5 do np.step(5) end
  lu.assertEquals(calls, { "one", "two", "EOF" })
  -- the slot is free again: a read now sees the end too
  local data, _, name = server:read(nil, 2000)
  lu.assertNil(data)
  lu.assertEquals(name, "EOF")
  H.close_all(server)
end

-- close(): from elsewhere its pending read ends with CLOSED; from the
-- callback nothing follows.
function TestReadStart:test_close_ends_it()
  local server, client = H.pair()
  local calls = {}
  server:read_start(function(data, _, name) calls[#calls + 1] = data or name end)
  server:close()
  H.pump(function() return #calls > 0 end, 5000, "CLOSED")
  lu.assertEquals(calls, { "CLOSED" })
  H.close_all(client)

  server, client = H.pair()
  calls = {}
  server:read_start(function(data, _, name)
    calls[#calls + 1] = data or name
    server:close()
  end)
  assert(client:write("x", 2000))
  H.pump(function() return #calls > 0 end, 5000, "the data")
  for _ = 1, 5 do np.step(5) end
  lu.assertEquals(calls, { "x" })
  lu.assertEquals(np.stats().outstanding, 0)
  H.close_all(client)
end

-- disconnect() ends it with NOT_CONNECTED; the next client's bytes go to
-- a read_start made for that client, never to the last one's callback.
function TestReadStart:test_disconnect_ends_it()
  local server, client, name = H.pair()
  local old, new = {}, {}
  server:read_start(function(data, _, ename) old[#old + 1] = data or ename end)
  assert(client:write("first", 2000))
  H.pump(function() return #old > 0 end, 5000, "the first client's bytes")
  assert(server:disconnect())
  H.pump(function() return old[#old] == "NOT_CONNECTED" end, 5000, "NOT_CONNECTED")
  local connected, res = H.capture()
  server:connect(connected)
  local c2 = assert(np.open(name))
  H.pump(function() return res.done end, 5000, "the second client")
  lu.assertTrue(res[1])
  server:read_start(function(data, _, ename) new[#new + 1] = data or ename end)
  assert(c2:write("second", 2000))
  H.pump(function() return #new > 0 end, 5000, "the second client's bytes")
  lu.assertEquals(old, { "first", "NOT_CONNECTED" })
  lu.assertEquals(new, { "second" })
  H.close_all(server, client, c2)
end

-- cancel("read") ends it as it ends any read: CANCELLED, to the callback.
function TestReadStart:test_cancel_ends_it_with_cancelled()
  local server, client = H.pair()
  local calls = {}
  server:read_start(function(data, _, name) calls[#calls + 1] = data or name end)
  server:cancel("read")
  H.pump(function() return #calls > 0 end, 5000, "CANCELLED")
  still_readable(server, client, "later")
  lu.assertEquals(calls, { "CANCELLED" })
  H.close_all(server, client)
end

-- read_stop() from elsewhere: its cancelled read calls nothing.
function TestReadStart:test_read_stop_outside_the_callback_calls_nothing()
  local server, client = H.pair()
  local calls = 0
  server:read_start(function() calls = calls + 1 end)
  np.step(0)
  server:read_stop()
  slot_free(server)
  still_readable(server, client, "kept")
  lu.assertEquals(calls, 0)
  -- stopping what is not reading does nothing
  server:read_stop()
  server:read_stop()
  H.close_all(server, client)
  server:read_stop() -- closed: nothing either
end

-- read_start() right after a read_stop() from elsewhere (luv's toggle, as
-- for flow control), before a step has ended the stopped read: the new
-- reading takes it over. The old callback is never called again, every
-- message comes once, in order, to the new one, and the new reading ends
-- as any does (a second read_stop, cancel, close).
function TestReadStart:test_read_start_right_after_read_stop_takes_over()
  for _, mode in ipairs { "byte", "message" } do
    local opts = { pipe_mode = mode }
    local server, client, pipe_name = H.pair(opts, opts)
    local old, new = {}, {}
    server:read_start(function(data, _, name) old[#old + 1] = data or name end)
    np.step(0)
    for i = 1, 50 do -- toggled many times in one go: still one reading
      server:read_stop()
      server:read_start(function(data, _, name) new[#new + 1] = (data or name) .. "/" .. i end)
    end
    for i = 1, 3 do assert(client:write("m" .. i, 2000)) end
    H.pump(function() return #table.concat(new):gsub("/50", "") >= 6 end, 5000, "the messages")
    lu.assertEquals(table.concat(new):gsub("/50", ""), "m1m2m3", mode)
    lu.assertEquals(old, {}, mode)
    -- stopped again from outside: nothing more is called
    server:read_stop()
    slot_free(server)
    still_readable(server, client, "after")
    local n = #new

    -- taken over, then cancelled: the reason given is its last call, on
    -- both platforms (on Linux the stopped read had already ended)
    -- (by any name of the read slot; after a disconnect(), NOT_CONNECTED)
    local calls
    for _, case in ipairs { { "read", "CANCELLED" }, { "read", "TIMEOUT" },
                            { "readable", "TIMEOUT" }, { "transact", "TIMEOUT" },
                            { "read", "TIMEOUT", "disconnect" } } do
      local what, reason, disconnect = case[1], case[2], case[3]
      local label = mode .. " " .. table.concat(case, " ")
      calls = {}
      server:read_start(function(data, _, name) calls[#calls + 1] = data or name end)
      np.step(0)
      server:read_stop()
      server:read_start(function(data, _, name) calls[#calls + 1] = "2:" .. (data or name) end)
      if disconnect then assert(server:disconnect()) end
      server:cancel(what, reason)
      slot_free(server)
      lu.assertEquals(calls, { "2:" .. (disconnect and "NOT_CONNECTED" or reason) }, label)
      if disconnect then
        client:close()
        local connected
        server:connect(function(r) connected = r end)
        client = assert(np.open(pipe_name, opts))
        H.pump(function() return connected ~= nil end, 5000, "the next client")
      end
    end

    -- taken over, and the client disconnected (before or after the
    -- takeover): NOT_CONNECTED is its last call, and the next client's
    -- bytes are not read for it
    for _, disconnect_first in ipairs { false, true } do
      local what = mode .. (disconnect_first and ", disconnected first" or "")
      calls = {}
      server:read_start(function(data, _, name) calls[#calls + 1] = data or name end)
      np.step(0)
      server:read_stop()
      if disconnect_first then assert(server:disconnect()) end
      server:read_start(function(data, _, name) calls[#calls + 1] = "2:" .. (data or name) end)
      if not disconnect_first then assert(server:disconnect()) end
      client:close()
      local connected
      server:connect(function(r) connected = r end)
      client = assert(np.open(pipe_name, opts))
      H.pump(function() return connected ~= nil end, 5000, "the next client")
      assert(client:write("next", 2000))
      for _ = 1, 5 do np.step(5) end
      lu.assertEquals(calls, { "2:NOT_CONNECTED" }, what)
      lu.assertEquals(server:read(nil, 2000), "next", what)
    end

    -- taken over, then closed: CLOSED is its last call
    calls = {}
    server:read_start(function(data, _, name) calls[#calls + 1] = data or name end)
    np.step(0)
    server:read_stop()
    server:read_start(function(data, _, name) calls[#calls + 1] = "2:" .. (data or name) end)
    server:close()
    H.pump(function() return #calls > 0 end, 5000, "the end")
    for _ = 1, 3 do np.step(1) end
    lu.assertEquals(calls, { "2:CLOSED" }, mode)
    lu.assertEquals(#new, n, mode)
    client:close()
  end
end

-- A waiting read right after a read_stop() from elsewhere waits for the
-- stopped read's end (a step away) instead of being refused: every kind,
-- outside a task and in one; the old callback is not called.
function TestReadStart:test_a_waiting_read_right_after_read_stop_waits_for_it()
  local server, client = H.pair({ pipe_mode = "message" }, { pipe_mode = "message" })
  local old = 0
  local function stopped_reading()
    server:read_start(function() old = old + 1 end)
    np.step(0)
    server:read_stop()
  end
  local reads = {
    { "read", function() return server:read(nil, 2000) end, "m-read" },
    { "read_line", function() return server:read_line(2000) end, "m-line" },
    { "read_exact", function() return server:read_exact(6, 2000) end, "m-exac" },
    { "read_into", function()
        local buf = np.buffer(64)
        local n, err = server:read_into(buf, 2000)
        return n and buf:sub(1, n), err
      end, "m-into" },
    { "readable", function()
        local ok, err = server:readable(2000)
        return ok and server:read(nil, 2000), err
      end, "m-ready" },
  }
  for _, in_task in ipairs { false, true } do
    for _, r in ipairs(reads) do
      local what = r[1] .. (in_task and " in a task" or "")
      stopped_reading()
      assert(client:write(r[3] .. (r[1] == "read_line" and "\n" or ""), 2000))
      local got, err
      if in_task then
        np.spawn(function() got, err = r[2]() end)
        np.run()
      else
        got, err = r[2]()
      end
      lu.assertEquals(got, r[3], what .. ": " .. tostring(err))
    end
  end
  -- polled with timeout 0 (a host's frame): each poll steps once, so the
  -- end is seen and the data comes within a few polls
  stopped_reading()
  assert(client:write("polled", 2000))
  local polls, got = 0
  repeat
    polls = polls + 1
    got = server:read(nil, 0)
  until got or polls == 50
  lu.assertEquals(got, "polled")
  -- a read unwound by another callback's error while it waited: the next
  -- read still waits for the end, not refused
  local raising_server, raising_client = H.pair()
  server:read_start(function() old = old + 1 end)
  np.step(0)
  assert(raising_client:write("x", 2000))
  for _ = 1, 3 do np.step(5) end
  -- (the bytes are there: this read is done before the stop's end)
  raising_server:read(function() error("boom") end)
  server:read_stop()
  assert(client:write("after the error", 2000))
  local ok, err = pcall(server.read, server, nil, 2000)
  lu.assertFalse(ok)
  lu.assertStrContains(tostring(err), "boom")
  lu.assertEquals(server:read(nil, 2000), "after the error")
  H.close_all(raising_server, raising_client)
  -- closed while a task's read waits for the end: CLOSED, as a pending
  -- read gets
  stopped_reading()
  local res
  np.spawn(function() res = table.pack(server:read(nil, 2000)) end)
  np.step(0) -- (the task starts its read)
  server:close()
  np.run()
  lu.assertEquals(res[3], "CLOSED")
  server, client = H.pair({ pipe_mode = "message" }, { pipe_mode = "message" })
  -- with a timeout shorter than the wait, and a stop that another
  -- read_start took over meanwhile: still as usual
  stopped_reading()
  server:read_start(function() old = old + 1 end) -- takes the reading over
  ok, err = pcall(server.read, server, nil, 10)
  lu.assertFalse(ok)
  lu.assertStrContains(tostring(err), "a read is already pending")
  server:read_stop()
  slot_free(server)
  lu.assertEquals(old, 0)
  H.close_all(server, client)
end

-- An error raised by the callback comes out of np.step, and reading goes on.
function TestReadStart:test_a_raising_callback_keeps_reading()
  local server, client = H.pair({ pipe_mode = "message" }, { pipe_mode = "message" })
  local calls = {}
  server:read_start(function(data)
    calls[#calls + 1] = data
    if data == "boom" then error("callback raised") end
  end)
  client:write("boom", noop) -- (a waiting write would step: the error came out of it)
  local err = step_until_error()
  lu.assertStrContains(tostring(err), "callback raised")
  assert(client:write("after", 2000))
  H.pump(function() return #calls == 2 end, 5000, "the next message")
  lu.assertEquals(calls, { "boom", "after" })
  server:read_stop()
  H.close_all(server, client)
end

-- The read slot is read_start's from its call to its end: every other
-- read is refused, in either form, as while a read is pending.
function TestReadStart:test_other_reads_are_refused_while_reading()
  local server, client = H.pair({ pipe_mode = "message" }, { pipe_mode = "message" })
  server:read_start(noop)
  local calls = {
    function() return server:read(noop) end,
    function() return server:read(nil, 10) end,
    function() return server:read_into(np.buffer(8), noop) end,
    function() return server:readable(noop) end,
    function() return server:try_read() end,
    function() return server:read_start(noop) end,
    function() return server:read_line(10) end,
  }
  for i, f in ipairs(calls) do
    local ok, err = pcall(f)
    lu.assertFalse(ok, "call " .. i)
    lu.assertStrContains(tostring(err), "a read is already pending", false, "call " .. i)
  end
  local ok, err = pcall(function() return client:read_start(noop, 5) end)
  lu.assertFalse(ok)
  lu.assertStrContains(tostring(err), "nothing expected after")
  ok, err = pcall(function() return client:read_start(42) end)
  lu.assertFalse(ok)
  lu.assertStrContains(tostring(err), "function expected")
  server:read_stop()
  H.close_all(server, client)
  ok, err = pcall(function() return server:read_start(noop) end)
  lu.assertFalse(ok)
  lu.assertStrContains(tostring(err), "closed")
end

-- Bytes a framing read took ahead come first, then the pipe's; a
-- read_stop before they were delivered keeps them for the next read.
function TestReadStart:test_read_ahead_comes_first()
  local server, client = H.pair()
  leave_ahead(server, client, "head", "body-1")
  local got = {}
  server:read_start(function(data) got[#got + 1] = data end)
  H.pump(function() return #got > 0 end, 5000, "the read-ahead")
  assert(client:write("body-2", 2000))
  H.pump(function() return table.concat(got) == "body-1body-2" end, 5000, "the rest")
  server:read_stop()
  slot_free(server) -- (stopped from outside: free once a step has ended it)

  leave_ahead(server, client, "x", "kept")
  server:read_start(function(data) got[#got + 1] = "late " .. data end)
  server:read_stop() -- before the next step: the bytes stay unread
  for _ = 1, 5 do np.step(5) end
  lu.assertEquals(server:read(nil, 2000), "kept")
  lu.assertEquals(table.concat(got), "body-1body-2")
  H.close_all(server, client)
end

-- A read_start waiting for bytes read ahead: the framing reads are
-- refused too, and it ends as the C method's reading does: disconnect()
-- ends it with NOT_CONNECTED (the last client's bytes dropped, never
-- handed to the next client), unless a read_stop comes first, which then
-- calls nothing.
local function read_ahead_then_disconnect(stop_too)
  local server, client, name = H.pair()
  leave_ahead(server, client, "head", "old-client-bytes")
  local got = {}
  server:read_start(function(d, _, ename) got[#got + 1] = d or ename end)
  for _, f in ipairs { function() return server:read_line(10) end,
                       function() return server:read_exact(1, 10) end,
                       function() return server:read_frame(10) end } do
    local ok, err = pcall(f)
    lu.assertFalse(ok)
    lu.assertStrContains(tostring(err), "a read is already pending")
  end
  assert(server:disconnect())
  if stop_too then server:read_stop() end
  local connected, res = H.capture()
  server:connect(connected)
  local c2 = assert(np.open(name))
  H.pump(function() return res.done end, 5000, "the next client")
  if not stop_too then
    H.pump(function() return #got > 0 end, 5000, "the end of the read_start")
  end
  assert(c2:write("new", 2000))
  lu.assertEquals(server:read(nil, 2000), "new")
  for _ = 1, 5 do np.step(5) end
  lu.assertEquals(got, stop_too and {} or { "NOT_CONNECTED" })
  H.close_all(server, client, c2)
end

function TestReadStart:test_waiting_for_read_ahead_ends_on_disconnect()
  read_ahead_then_disconnect(false)
end

function TestReadStart:test_waiting_for_read_ahead_stopped_after_disconnect_calls_nothing()
  read_ahead_then_disconnect(true)
end

-- The same start ended by cancel("read"): CANCELLED, its bytes kept for
-- the next read; from inside its first call nothing more. And by close():
-- CLOSED, nothing delivered.
function TestReadStart:test_waiting_for_read_ahead_cancelled_or_closed()
  local server, client = H.pair()
  leave_ahead(server, client, "head", "ahead")
  local got = {}
  server:read_start(function(d, _, ename) got[#got + 1] = d or ename end)
  server:cancel("read")
  H.pump(function() return #got > 0 end, 5000, "CANCELLED")
  lu.assertEquals(got, { "CANCELLED" })
  lu.assertEquals(server:read(nil, 2000), "ahead")
  -- with a reason, by any name of the read slot: that reason
  for _, what in ipairs { "read", "readable", "transact" } do
    leave_ahead(server, client, "t", "ahead-t")
    got = {}
    server:read_start(function(d, _, ename) got[#got + 1] = d or ename end)
    server:cancel(what, "TIMEOUT")
    H.pump(function() return #got > 0 end, 5000, "TIMEOUT")
    lu.assertEquals(got, { "TIMEOUT" }, what)
    lu.assertEquals(server:read(nil, 2000), "ahead-t", what)
  end

  leave_ahead(server, client, "x", "ahead-2")
  got = {}
  server:read_start(function(d)
    got[#got + 1] = d
    server:cancel("read") -- from its callback: the end, nothing more
  end)
  H.pump(function() return #got > 0 end, 5000, "the read-ahead")
  still_readable(server, client, "kept")
  lu.assertEquals(got, { "ahead-2" })

  leave_ahead(server, client, "y", "never")
  got = {}
  server:read_start(function(d, _, ename) got[#got + 1] = d or ename end)
  server:close()
  H.pump(function() return #got > 0 end, 5000, "CLOSED")
  for _ = 1, 5 do np.step(5) end
  lu.assertEquals(got, { "CLOSED" })
  H.close_all(client)
end

-- cancel("read") from elsewhere ends the reading even when its pending
-- read had already finished with data (a busy stream): that data, or
-- CANCELLED, is the last call, and what follows stays in the pipe.
function TestReadStart:test_cancel_ends_a_busy_stream()
  local server, client = H.pair({ pipe_mode = "message" }, { pipe_mode = "message" })
  local written = 0
  for i = 1, 150 do client:write("m" .. i, function() written = written + 1 end) end
  H.pump(function() return written == 150 end, 10000, "the writes")
  local got, last = {}, nil
  server:read_start(function(d, _, ename)
    if d then got[#got + 1] = d else last = ename end
  end)
  np.step(50)
  server:cancel("read")
  H.pump(function() return server:_busy("read") == 0 end, 5000, "the reading's end")
  for _ = 1, 5 do np.step(5) end
  local n = #got
  lu.assertTrue(n < 150, "the reading went on after cancel")
  lu.assertTrue(last == nil or last == "CANCELLED", tostring(last))
  for i = 1, n do lu.assertEquals(got[i], "m" .. i) end
  for i = n + 1, 150 do lu.assertEquals(server:read(nil, 2000), "m" .. i) end
  H.close_all(server, client)
end

-- disconnect() from inside the callback ends it (as close() there): the
-- next client, even one that connects while the callback still runs, is
-- never read by it.
function TestReadStart:test_disconnect_inside_the_callback_ends_it()
  local server, client, name = H.pair()
  local got, c2 = {}, nil
  server:read_start(function(d, _, ename)
    got[#got + 1] = d or ename
    if d == "old" then
      assert(server:disconnect())
      local connected, res = H.capture()
      server:connect(connected)
      c2 = assert(np.open(name))
      H.pump(function() return res.done end, 5000, "the next client") -- steps inside
      assert(c2:write("for-the-new-reader", 2000))
    end
  end)
  assert(client:write("old", 2000))
  H.pump(function() return c2 ~= nil end, 5000, "the callback")
  for _ = 1, 5 do np.step(5) end
  lu.assertEquals(got, { "old" })
  lu.assertEquals(server:read(nil, 2000), "for-the-new-reader")
  H.close_all(server, client, c2)
end

-- A reading pipe stays alive with no reference left but its callback's.
function TestReadStart:test_a_reading_pipe_is_not_collected()
  local got, client
  do
    local server
    server, client = H.pair()
    server:read_start(function(data) got = data end)
  end
  collectgarbage()
  collectgarbage()
  assert(client:write("still here", 2000))
  H.pump(function() return got ~= nil end, 5000, "the callback")
  lu.assertEquals(got, "still here")
  H.close_all(client)
  H.pump(function() return np.stats().pipes <= 1 end, 5000, "the server's end")
end

-- A callback that steps the loop from inside itself (here a waiting
-- write) is not given the next read before it has returned: a burst is
-- taken one message after another, never nested, and answered in order.
-- Whether the callback does it itself, through a tail call (its frame is
-- gone meanwhile), or from a coroutine of its own (the step runs on
-- another stack).
local function not_reentered(shape)
  local server, client = H.pair({ pipe_mode = "message" }, { pipe_mode = "message" })
  local depth, deepest, seen = 0, 0, {}
  local function handle(msg)
    depth = depth + 1
    if depth > deepest then deepest = depth end
    seen[#seen + 1] = msg
    assert(server:write("re:" .. msg, 5000)) -- steps the loop meanwhile
    depth = depth - 1
  end
  local callbacks = {
    plain = function(msg) handle(msg) end,
    tail_call = function(msg) return handle(msg) end,
    coroutine = function(msg) coroutine.wrap(handle)(msg) end,
  }
  server:read_start(callbacks[shape])
  local N = 300
  for i = 1, N do client:write("m" .. i, noop) end
  local replies = {}
  client:read_start(function(msg) replies[#replies + 1] = msg end)
  H.pump(function() return #replies == N end, 20000, "every reply")
  lu.assertEquals(deepest, 1, shape)
  for i = 1, N do
    lu.assertEquals(seen[i], "m" .. i, shape)
    lu.assertEquals(replies[i], "re:m" .. i, shape)
  end
  server:read_stop()
  client:read_stop()
  H.close_all(server, client)
end

function TestReadStart:test_a_callback_that_steps_is_not_reentered()
  not_reentered("plain")
  not_reentered("tail_call")
  not_reentered("coroutine")
end

-- From inside its callback: read_stop, a new read_start, and a step that
-- hands the new one a read, which stops in turn. Both end cleanly, and the
-- next message is the pipe's to read, not taken by a read nobody started.
function TestReadStart:test_a_new_read_start_inside_the_callback()
  local server, client = H.pair({ pipe_mode = "message" }, { pipe_mode = "message" })
  local got = {}
  local function second(d)
    got[#got + 1] = "second:" .. tostring(d)
    server:read_stop()
  end
  server:read_start(function(d)
    got[#got + 1] = "first:" .. tostring(d)
    server:read_stop()
    server:read_start(second)
    client:write("two", noop)
    np.sleep(20) -- a step inside: second gets "two" here
  end)
  client:write("one", noop)
  H.pump(function() return #got >= 2 end, 5000, "both callbacks")
  still_readable(server, client, "three")
  lu.assertEquals(got, { "first:one", "second:two" })
  H.close_all(server, client)
  lu.assertEquals(np.stats().outstanding, 0)
end

-- cancel("read") from inside the callback stops the reading too (nothing
-- of it is pending there).
function TestReadStart:test_cancel_inside_the_callback_stops_it()
  local server, client = H.pair({ pipe_mode = "message" }, { pipe_mode = "message" })
  local got = {}
  server:read_start(function(d)
    got[#got + 1] = d
    server:cancel("read")
  end)
  client:write("one", noop)
  H.pump(function() return #got == 1 end, 5000, "the first message")
  still_readable(server, client, "two")
  lu.assertEquals(got, { "one" })
  H.close_all(server, client)
end

-- A callback that stepped from inside itself and then raised: the step
-- after the error sees it gone, and the reading goes on.
function TestReadStart:test_a_callback_that_steps_then_raises_keeps_reading()
  local server, client = H.pair({ pipe_mode = "message" }, { pipe_mode = "message" })
  local seen = {}
  server:read_start(function(msg)
    seen[#seen + 1] = msg
    if msg == "first" then
      np.sleep(5) -- a step from inside the callback
      error("after a nested step")
    end
  end)
  client:write("first", noop)
  local err = step_until_error()
  lu.assertStrContains(tostring(err), "after a nested step")
  client:write("second", noop)
  H.pump(function() return #seen == 2 end, 5000, "the next message")
  lu.assertEquals(seen, { "first", "second" })
  server:read_stop()
  H.close_all(server, client)
  lu.assertEquals(np.stats().outstanding, 0)
end

-- Many pipes ready at once, each callback answering with a waiting write:
-- a write the system takes at once returns at once, so no callback runs
-- inside another's (before, every waiting write stepped the loop, which
-- ran the next ready pipe's callback inside it: 200 pipes nested 200
-- deep, and Lua's C stack gave out at a few dozen with "C stack overflow"
-- out of a callback's write). Every echo arrives.
function TestReadStart:test_waiting_writes_in_callbacks_do_not_nest()
  -- A waiting write the system takes at once returns without a step
  -- (Windows: one WriteFile finished in the call), so no other callback
  -- runs inside the one that wrote: each answers with 17 writes (more
  -- than the 16 writes a Windows pipe keeps in flight).
  local K = 17
  for _, mode in ipairs { "byte", "message" } do
    local n, servers, clients = 120, {}, {}
    local depth, deepest, echoed, errors = 0, 0, 0, {}
    for i = 1, n do
      servers[i], clients[i] = H.pair({ pipe_mode = mode }, { pipe_mode = mode })
      local s = servers[i]
      s:read_start(function(data)
        if not data then return end
        depth = depth + 1
        deepest = math.max(deepest, depth)
        for _ = 1, K do
          local ok, err = pcall(s.write, s, data, 2000)
          if not ok or err ~= #data then errors[#errors + 1] = tostring(err) end
        end
        depth = depth - 1
      end)
      local want, got = string.rep("ping" .. i, K), {}
      clients[i]:read_start(function(data)
        got[#got + 1] = data
        if #table.concat(got) == #want then
          if table.concat(got) == want then echoed = echoed + 1 end
        end
      end)
    end
    -- (with callbacks: every ping is sent before the first step, so all
    -- n servers are ready at once)
    for i = 1, n do clients[i]:write("ping" .. i, noop) end
    H.pump(function() return echoed == n or #errors > 0 end, 30000, "every echo")
    lu.assertEquals(errors, {}, mode)
    lu.assertEquals(echoed, n, mode)
    lu.assertEquals(deepest, 1, mode .. ": a callback ran inside another's")
    for i = 1, n do
      servers[i]:close()
      clients[i]:close()
    end
    H.settle(2000)
  end
end
