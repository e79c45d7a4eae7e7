--[[
tests/test_readiness.lua - each change of a socket's readiness, driven
through the public API, on both platforms.

On Linux a pipe's socket carries a readiness state (src/unix/unix.h,
np_readiness): level- or edge-triggered in epoll, EPOLLOUT armed or not,
seen drained (idle), an end or error seen (sticky), the last stream read
filled its buffer (full), the last message was large, a message is known
to be queued. Each test below drives one of its transitions and checks
what a caller sees: every byte once and in order, a read that must wait
waits, one that need not does not, and nothing spins. The debug build
(`make check`, NP_DEBUG) also checks the state's rules at every wait and
event while these run; the randomized sequence at the end crosses the
transitions in orders nobody wrote down. Windows has no such state: there
the same calls must simply behave the same.
]]
local lu = require "luaunit"
local np = require "namedpipe"
local H = require "tests.helpers"

TestReadiness = {}

function TestReadiness:tearDown() H.settle(2000) end

-- A read started before the data: it waits (level-triggered) and the data
-- finishes it.
local function read_started_first(reader, writer, text)
  local cb, res = H.capture()
  reader:read(nil, cb)
  assert(writer:write(text, 2000))
  H.pump(function() return res.done end, 5000, "a read started first")
  lu.assertEquals(res[1], text)
end

-- The next read says the stream ended.
local function assert_eof(pipe)
  local data, _, errname = pipe:read(nil, 2000)
  lu.assertNil(data)
  lu.assertEquals(errname, "EOF")
end

-- Step without waiting a few times: long enough for anything already
-- there to be reported, with no new data arriving meanwhile.
local function spin_a_little()
  for _ = 1, 5 do np.step(0) end
  np.step(20)
end

-- A wait that start(cb) begins (a read, readable()) must not finish while
-- nothing is sent; send() then finishes it. Its results (H.capture's).
local function waits_until(start, send, what)
  local cb, res = H.capture()
  start(cb)
  spin_a_little()
  lu.assertFalse(res.done, what .. " finished with nothing sent: it must wait")
  send()
  H.pump(function() return res.done end, 5000, what)
  return res
end

-- reader's read(n) waits until writer sends text, and gets it.
local function read_waits_for(reader, writer, text, what, n)
  local res = waits_until(function(cb) reader:read(n, cb) end,
                          function() assert(writer:write(text, 2000)) end, what)
  lu.assertEquals(res[1], text, what)
end

-- A fresh socket is idle and level-triggered: a read before any data
-- waits, and the first data completes it.
function TestReadiness:test_fresh_socket_a_read_waits_for_the_first_data()
  local server, client = H.pair()
  read_waits_for(server, client, "first", "the first read on a fresh socket")
  H.close_all(server, client)
end

-- Level-triggered with nobody reading when data comes: the socket goes back
-- to edge-triggered, and the data waits for the next read, which gets it
-- without any new arrival.
function TestReadiness:test_data_with_no_read_waiting_is_kept_for_the_next_read()
  local server, client = H.pair()
  read_started_first(server, client, "one")
  assert(client:write("two", 2000))
  spin_a_little() -- reported with no read waiting
  lu.assertEquals(server:read(nil, 2000), "two")
  -- and edge-triggered again, a read with nothing there waits
  read_waits_for(server, client, "three", "the third read")
  H.close_all(server, client)
end

-- Readiness nobody waits for must not make every wait return at once.
function TestReadiness:test_unread_data_and_an_unread_end_do_not_keep_waits_busy()
  local server, client = H.pair()
  read_started_first(server, client, "x")
  assert(client:write("unread", 2000))
  lu.assertTrue(H.cpu_ms_stepping(200) < 120, "unread data kept the loop busy")
  client:close()
  lu.assertTrue(H.cpu_ms_stepping(200) < 120, "an unread end kept the loop busy")
  lu.assertEquals(server:read(nil, 2000), "unread")
  assert_eof(server)
  H.close_all(server)
end

-- try_read finding nothing leaves the socket idle; what arrives after it
-- is seen by readable() and by the next try_read.
function TestReadiness:test_idle_after_would_block_then_new_data_is_seen()
  local server, client = H.pair()
  for round = 1, 3 do
    local data, _, errname = server:try_read()
    lu.assertNil(data)
    lu.assertEquals(errname, "WOULDBLOCK")
    local res = waits_until(function(cb) server:readable(cb) end,
                            function() assert(client:write("r" .. round, 2000)) end,
                            "readable() after WOULDBLOCK")
    lu.assertTrue(res[1])
    lu.assertEquals(server:try_read(), "r" .. round)
  end
  H.close_all(server, client)
end

-- readable() between reads: it waits edge-triggered and a read waits
-- level-triggered, so switching between them must neither lose a report
-- nor invent one.
function TestReadiness:test_readable_and_read_take_turns()
  local server, client = H.pair()
  for round = 1, 4 do
    local res = waits_until(function(cb) server:readable(cb) end,
                            function() assert(client:write("a" .. round, 2000)) end,
                            "round " .. round .. ": readable()")
    lu.assertTrue(res[1])
    -- readable() consumed nothing: the same bytes are there for the read
    lu.assertEquals(server:read(nil, 2000), "a" .. round)
    read_waits_for(server, client, "b" .. round, "round " .. round .. ": the read")
  end
  H.close_all(server, client)
end

-- The end of the stream and errors repeat (sticky): every read after the
-- last byte says EOF, at once, and readable() is true at once.
function TestReadiness:test_the_end_repeats_for_every_later_read()
  local server, client = H.pair()
  assert(client:write("last", 2000))
  client:close()
  lu.assertEquals(server:read(nil, 2000), "last")
  for _ = 1, 3 do
    local cb, res = H.capture()
    server:read(nil, cb) -- by callback: the read must not wait for an edge
    H.pump(function() return res.done end, 2000, "a read after the end")
    lu.assertNil(res[1])
    lu.assertEquals(res[3], "EOF")
    lu.assertTrue(server:readable(2000))
    local data, _, errname = server:try_read()
    lu.assertNil(data)
    lu.assertEquals(errname, "EOF")
  end
  H.close_all(server)
end

-- A stream read that fills its buffer leaves the rest queued: the next
-- reads get it without anything new arriving (full), and the one after the
-- last byte waits.
function TestReadiness:test_reads_smaller_than_what_is_queued_take_it_all_in_turn()
  local server, client = H.pair()
  local sent = {}
  for i = 1, 100 do sent[i] = string.format("%099d\n", i) end
  sent = table.concat(sent)
  assert(client:write(sent, 5000))
  local got = {}
  local total = 0
  while total < #sent do
    local part = assert(server:read(100 + #got % 7, 2000))
    got[#got + 1] = part
    total = total + #part
  end
  lu.assertEquals(table.concat(got), sent)
  read_waits_for(server, client, "more", "the read after the last byte", 100)
  H.close_all(server, client)
end

-- A write that finds the pipe full waits for room (EPOLLOUT armed on
-- Linux); the reader making room finishes it and then writable(); later
-- writes go at once.
function TestReadiness:test_a_full_pipe_makes_writes_wait_for_room()
  local server, client = H.pair({ out_buffer_size = 4096, in_buffer_size = 4096 })
  local block = string.rep("w", 65536)
  local done, order = 0, {}
  local n = 0
  -- write until one is left waiting (a socket takes a few blocks at most)
  repeat
    n = n + 1
    local i = n
    server:write(block, function(count, _, errname)
      assert(count, errname)
      done = done + 1
      order[#order + 1] = i
    end)
    np.step(0)
  until done < n or n > 200
  lu.assertTrue(done < n, "the pipe never filled")
  local want, got = n * #block, 0
  local wres = waits_until(function(cb) server:writable(cb) end, function()
    while got < want do got = got + #assert(client:read(nil, 5000)) end
  end, "writable() while the pipe is full")
  lu.assertEquals(got, want)
  H.pump(function() return done == n end, 5000, "the writes")
  lu.assertTrue(wres[1])
  for i = 1, n do lu.assertEquals(order[i], i) end
  lu.assertEquals(server:try_write("after"), 5)
  lu.assertEquals(client:read(nil, 2000), "after")
  H.close_all(server, client)
end

-- Message mode: large and small messages (a large one is received straight
-- into the read's buffer, a small one copied), empty ones (told from the
-- end by what epoll reported, or by the sender's address) and the end.
function TestReadiness:test_messages_large_small_and_empty_in_any_order()
  local opts = { pipe_mode = "message" }
  local server, client = H.pair(opts, opts)
  local sizes = { 100000, 3, 0, 70000, 0, 0, 5, 200000, 1, 0 }
  local function msg(i, size) return string.rep(string.char(64 + i), size) end
  -- all queued first, then all read; then one at a time, each read waiting
  local written = 0
  local function counted(n, m) assert(n, m); written = written + 1 end
  for i, size in ipairs(sizes) do client:write(msg(i, size), counted) end
  for i, size in ipairs(sizes) do
    lu.assertEquals(server:read(nil, 5000), msg(i, size), "queued message " .. i)
  end
  H.pump(function() return written == #sizes end, 5000, "the queued writes")
  for i, size in ipairs(sizes) do
    local res = waits_until(function(cb) server:read(nil, cb) end,
                            function() client:write(msg(i, size), counted) end,
                            "waited-for message " .. i)
    lu.assertEquals(res[1], msg(i, size), "waited-for message " .. i)
  end
  H.pump(function() return written == 2 * #sizes end, 5000, "the writes")
  client:close()
  assert_eof(server)
  H.close_all(server)
end

-- An instance serving its next client starts from a fresh state: what the
-- last client left (its end, a read that filled its buffer, a large
-- message) must not make the new client's reads end or skip a wait.
function TestReadiness:test_the_next_client_of_an_instance_starts_afresh()
  for _, mode in ipairs { "byte", "message" } do
    local opts = { pipe_mode = mode }
    local name = H.name("rd-reuse")
    local server = assert(np.create(name, { pipe_mode = mode, out_buffer_size = 4096,
                                            in_buffer_size = 4096 }))
    local c1 = assert(np.open(name, opts))
    assert(server:connect(2000))
    -- more than the pipe holds: the write is still going when c1 closes
    c1:write(string.rep("L", 100000), function() end)
    lu.assertEquals(#assert(server:read(10, 2000)), 10, mode)
    c1:close()
    H.settle(2000)
    assert(server:disconnect())
    local ok
    server:connect(function(v) ok = v end)
    local c2 = assert(np.open(name, opts))
    H.pump(function() return ok ~= nil end, 5000, "the next client's connect")
    lu.assertTrue(ok, mode)
    read_waits_for(server, c2, "hello", mode .. ": the new client's first read")
    H.close_all(server, c2)
  end
end

-- Random interleavings of everything that changes the state, on both ends
-- of a pair, against a model of what each end was sent: each read must be
-- the next bytes of the stream (byte mode: any non-empty prefix up to n;
-- message mode: the next part of the head message, up to n), and every
-- write and writable() callback comes once.
function TestReadiness:test_random_sequences_keep_every_byte_in_order()
  local seconds = tonumber(os.getenv("NP_READINESS_SECONDS") or "") or 1
  local seed = math.floor(tonumber(os.getenv("NP_READINESS_SEED") or "") or os.time())
  local g = H.generator(seed)
  local function int(a, b) return a + g.rnd(b - a + 1) - 1 end
  local deadline = np.now() + seconds * 1000
  local rounds = 0
  while np.now() < deadline do
    rounds = rounds + 1
    local mode = g.pick { "byte", "message" }
    local size = g.pick { 4096, 65536 }
    local server, client = H.pair({ pipe_mode = mode, out_buffer_size = size,
                                    in_buffer_size = size }, { pipe_mode = mode })
    local function new_end(pipe)
      -- queue: messages (byte mode: one stream) sent to this end, not yet read
      return { pipe = pipe, queue = {}, head = 1, off = 0, left = 0, reading = false }
    end
    local ends = { new_end(server), new_end(client) }
    local outstanding, closing = 0, false
    local function where(msg)
      return string.format("seed %d round %d (%s): %s", seed, rounds, mode, msg)
    end
    -- what a read of at most n may return next, checked against the model
    local function got_data(e, data, n)
      local m = e.queue[e.head]
      assert(m, where("a read returned data nobody sent: " .. #data .. " bytes"))
      if mode == "byte" then
        assert(#data > 0 and (not n or #data <= n), where("byte read of " .. #data .. " for n " .. tostring(n)))
        local want = table.concat(e.queue, "", e.head):sub(e.off + 1, e.off + #data)
        assert(data == want, where("byte read out of order"))
        e.left = e.left - #data
        e.off = e.off + #data
        while e.queue[e.head] and e.off >= #e.queue[e.head] do
          e.off = e.off - #e.queue[e.head]
          e.head = e.head + 1
        end
      else
        local rest = m:sub(e.off + 1)
        local want = n and rest:sub(1, n) or rest
        assert(data == want, where(string.format("message read of %d, wanted %d of message %d",
                                                 #data, #want, e.head)))
        e.off = e.off + #data
        e.left = e.left - #data
        if e.off >= #m then e.head, e.off = e.head + 1, 0 end
      end
    end
    local function ended(ok, msg, errname, what)
      assert(ok or (closing and (errname == "CLOSED" or errname == "CANCELLED")),
             where(what .. ": " .. tostring(msg)))
    end
    local function start_read(e, n)
      e.reading = true
      e.pipe:read(n, function(data, msg, errname)
        e.reading = false
        ended(data, msg, errname, "read")
        if data then got_data(e, data, n) end
      end)
    end
    local function try_read(e, what)
      local data, msg, errname = e.pipe:try_read()
      if data then got_data(e, data, nil)
      else ended(errname == "WOULDBLOCK", msg, errname, what) end
    end
    for _ = 1, int(20, 80) do
      local e = g.pick(ends)
      local other = e == ends[1] and ends[2] or ends[1]
      local action = int(1, 9)
      if action <= 3 then -- a write of a random size
        local s = string.rep(string.char(int(65, 90)), g.pick { 0, 1, 7, 300, 5000, 70000 })
        if mode == "byte" and #s == 0 then s = "z" end
        other.queue[#other.queue + 1] = s
        other.left = other.left + #s
        outstanding = outstanding + 1
        e.pipe:write(s, function(n, msg, errname)
          ended(n == #s, msg, errname, "write")
          outstanding = outstanding - 1
        end)
      elseif action <= 5 and not e.reading then -- a read by callback
        start_read(e, g.pick { false, 1, 100, 70000 } or nil)
      elseif action == 6 and not e.reading then
        try_read(e, "try_read")
      elseif action == 7 and not e.reading then -- readable(), then try_read
        e.reading = true
        e.pipe:readable(function(ok, msg, errname)
          e.reading = false
          ended(ok, msg, errname, "readable")
          if ok then try_read(e, "try_read after readable") end
        end)
      elseif action == 8 and not e.waiting_writable then -- writable()
        outstanding = outstanding + 1
        e.waiting_writable = true
        e.pipe:writable(function(ok, msg, errname)
          ended(ok, msg, errname, "writable")
          e.waiting_writable = false
          outstanding = outstanding - 1
        end)
      else
        np.step(g.pick { 0, 0, 1 })
      end
    end
    -- each end reads until it has every byte (message) sent to it
    local function drained(e)
      return e.head > #e.queue
    end
    H.pump(function()
      for _, e in ipairs(ends) do
        if not e.reading and not drained(e) then start_read(e, nil) end
      end
      return drained(ends[1]) and drained(ends[2]) and outstanding == 0
    end, 10000, where("every byte read and every callback"))
    for i, e in ipairs(ends) do lu.assertEquals(e.left, 0, where("end " .. i)) end
    closing = true -- a readable() or read may still wait: close ends it
    H.close_all(server, client)
  end
  lu.assertTrue(rounds > 0)
  if os.getenv("NP_READINESS_VERBOSE") then print(("seed %d: %d rounds"):format(seed, rounds)) end
end

-- writable() answers what try_write would find: NOT_CONNECTED on a server
-- with no client (new, after disconnect(), after a cancelled connect()),
-- ACCESS_DENIED on an end that may not write; and a server listening again
-- after disconnect() says so.
function TestReadiness:test_writable_refuses_what_try_write_refuses()
  local function same(p, what, want)
    local ok, _, ename = p:writable(100)
    lu.assertNil(ok, what)
    lu.assertEquals(ename, want, what .. ": writable")
    local n, _, tname = p:try_write("x")
    lu.assertNil(n, what)
    lu.assertEquals(tname, want, what .. ": try_write")
  end
  local name = H.name("wrefuse")
  local server = assert(np.create(name))
  same(server, "a new instance", "NOT_CONNECTED")
  server:connect(function() end)
  server:cancel("connect")
  H.settle(2000)
  same(server, "after a cancelled connect", "NOT_CONNECTED")
  local client = assert(np.open(name))
  assert(server:connect(2000))
  lu.assertTrue(server:writable(1000))
  assert(server:disconnect())
  same(server, "after disconnect", "NOT_CONNECTED")
  server:connect(function() end)
  lu.assertEquals(server:state(), "listening")
  H.close_all(server, client)

  local reader = assert(np.create(H.name("wrefuse-in"), { access_outbound = false }))
  same(reader, "a server without access_outbound", "ACCESS_DENIED")
  reader:close()
  local s2, c2 = H.pair(nil, { write = false })
  same(c2, "a client opened without write", "ACCESS_DENIED")
  H.close_all(s2, c2)
end

-- A poll (timeout 0) gets what the peer already wrote, on Linux as on
-- Windows (where the read finishes in the call), on the main thread, in a
-- coroutine and in a task: a wait outside a task steps the loop once
-- before its deadline cancels it, and a task's deadline does not cancel
-- before a step has looked for completions since the wait began.
function TestReadiness:test_a_poll_with_timeout_0_gets_what_is_there()
  for _, case in ipairs { { "byte", "main" }, { "message", "main" }, { "byte", "coroutine" },
      { "message", "coroutine" }, { "byte", "task" }, { "message", "task" } } do
    local mode, where = case[1], case[2]
    local opts = { pipe_mode = mode }
    local server, client = H.pair(opts, opts)
    local polls = {
      { "read", function() return server:read(nil, 0) end, "r1" },
      { "read_line", function() return server:read_line(0) end, "l1\n", "l1" },
      { "read_exact", function() return server:read_exact(2, 0) end, "e1" },
      { "readable", function() return server:readable(0) and server:read(nil, 0) end, "a1" },
      { "read_into", function()
          local buf = np.buffer(16)
          local n = server:read_into(buf, 0)
          return n and buf:sub(1, n)
        end, "i1" },
    }
    local what = mode .. ", " .. where
    for _, p in ipairs(polls) do
      assert(client:write(p[3], 1000))
      local got
      H.run_in(where, function() got = p[2]() end, 2000, what)
      lu.assertEquals(got, p[4] or p[3], what .. ": " .. p[1])
    end
    -- and with nothing there, TIMEOUT at once
    local t0 = np.now()
    local r
    H.run_in(where, function() r = table.pack(server:read(nil, 0)) end, 2000, what)
    lu.assertEquals({ r[1], r[3] }, { nil, "TIMEOUT" }, what)
    lu.assertTrue(np.now() - t0 < 500, what)
    H.close_all(server, client)
  end
end

-- ready("both") polled (timeout 0) with data already waiting and, on
-- Linux, the socket full (its writable half waits): readable, as
-- ready("readable", 0) says, not TIMEOUT before a step has looked.
function TestReadiness:test_ready_both_polled_gets_what_is_there()
  for _, where in ipairs { "main", "coroutine", "task" } do
    local server, client = H.pair({ pipe_mode = "byte" }, { pipe_mode = "byte" })
    H.fill(server)
    assert(client:write("x", 1000))
    np.step(0) -- (the step that tells of the data has come and gone)
    local r
    H.run_in(where, function() r = table.pack(server:ready("both", 0)) end, 2000, where)
    lu.assertEquals(type(r[1]), "table", where .. ": " .. tostring(r[3]))
    lu.assertTrue(r[1].readable, where)
    H.close_all(server, client)
  end
end

-- peek() once the peer has closed and everything is read: the end of the
-- stream, as try_read says (PeekNamedPipe on Windows), in both modes.
function TestReadiness:test_peek_after_the_end_is_eof()
  for _, mode in ipairs { "byte", "message" } do
    local opts = { pipe_mode = mode }
    local server, client = H.pair(opts, opts)
    assert(client:write("last", 1000))
    lu.assertEquals(server:read(nil, 1000), "last")
    client:close()
    local d, _, ename = server:read(nil, 1000)
    lu.assertNil(d)
    lu.assertEquals(ename, "EOF", mode .. ": read")
    local pk, _, pname = server:peek()
    lu.assertNil(pk, mode)
    lu.assertEquals(pname, "EOF", mode .. ": peek")
    H.close_all(server)
  end
end
