-- Data crossing a pipe: both modes, both directions, callbacks and the
-- synchronous form, many instances of one name.
local lu = require "luaunit"
local np = require "namedpipe"
local H = require "tests.helpers"

TestBasic = {}

function TestBasic:tearDown() H.settle(2000) end

function TestBasic:test_callback_round_trip_byte_mode()
  local name = H.name("cb")
  local server = assert(np.create(name))
  local client = assert(np.open(name))
  local connected, wrote, got
  server:connect(function(ok, err) connected = { ok, err } end)
  client:write("hello", function(n, err) wrote = { n, err } end)
  server:read(function(data, err) got = { data, err } end)
  H.pump(function() return connected and wrote and got end, 5000, "callbacks")
  lu.assertEquals(connected, { true })
  lu.assertEquals(wrote, { 5 })
  lu.assertEquals(got, { "hello" })
  H.close_all(server, client)
end

function TestBasic:test_sync_form_like_a_repl()
  local server, client = H.pair()
  lu.assertEquals(client:write("hi"), 2)
  lu.assertEquals(server:read(), "hi")
  lu.assertEquals(server:write("back"), 4)
  lu.assertEquals(client:read(), "back")
  H.close_all(server, client)
end

function TestBasic:test_step_returns_dispatch_count()
  local server, client = H.pair()
  local n = 0
  client:write("a", function() n = n + 1 end)
  client:write("b", function() n = n + 1 end)
  local total = 0
  H.pump(function() total = total + np.step(10); return n == 2 end)
  lu.assertTrue(total >= 2)
  lu.assertEquals(np.step(0), 0) -- nothing left
  lu.assertEquals(server:read(), "ab")
  H.close_all(server, client)
end

-- Step until cond() holds, noting what each step handed out (H.pump steps
-- too, between looks, and those steps would go unnoted).
local function steps_until(cond, what)
  local per_step, deadline = {}, np.now() + 5000
  while not cond() do
    if np.now() > deadline then error("timed out waiting for " .. what, 2) end
    local n = np.step(10)
    if n > 0 then per_step[#per_step + 1] = n end
  end
  return per_step
end

-- n messages "m1".."mn" written and sent, nobody reading them yet.
local function queued_messages(_, client, n)
  local written = 0
  for i = 1, n do
    client:write("m" .. i, function(k) if k then written = written + 1 end end)
  end
  H.pump(function() return written == n end, 5000, "the writes")
end

-- A chain of n reads, each started from the callback of the one before;
-- returns the table their results go to.
local function chain_reads(server, n)
  local got = {}
  local function on_read(data, err)
    got[#got + 1] = data or err
    if #got < n then server:read(on_read) end
  end
  server:read(on_read)
  return got
end

-- Reads that finish as the callback starts them (their bytes were already
-- there) are handed out in the same step, up to 64 completions per step;
-- then the step returns, so a callback chain cannot keep it running.
function TestBasic:test_step_goes_on_with_reads_that_finish_at_once_up_to_64()
  local server, client = H.pair({ pipe_mode = "message" }, { pipe_mode = "message" })
  -- 150 small messages fit in the socket buffer with nobody reading
  local N = 150
  queued_messages(server, client, N)
  local got = chain_reads(server, N)
  local per_step = steps_until(function() return #got == N end, "the reads")
  for i = 1, N do lu.assertEquals(got[i], "m" .. i) end
  local most = math.max(table.unpack(per_step))
  lu.assertTrue(most <= 64, "a step handed out " .. most)
  if PLATFORM ~= "windows" then
    -- Unix reads a queued message as the read starts: the chain goes on in
    -- the step until the budget. (On Windows a read started from a
    -- callback finishes through the port: the ready queue is empty after
    -- the callback, and no further round begins.)
    lu.assertEquals(per_step, { 64, 64, 22 })
  end
  H.close_all(server, client)
end

-- A pending timer does not end a step's rounds (a task's call with a
-- timeout has one); one that comes due does, so it runs before the
-- remaining completions.

function TestBasic:test_rounds_go_on_while_a_timer_is_pending()
  local server, client = H.pair({ pipe_mode = "message" }, { pipe_mode = "message" })
  local idle_s, idle_c = H.pair()
  local waited
  np.spawn(function() waited = table.pack(idle_s:read(nil, 60000)) end)
  np.step(0) -- the task waits: its timer is pending, due in a minute
  local N = 150
  queued_messages(server, client, N)
  local got = chain_reads(server, N)
  lu.assertNil(waited) -- the task still waits
  local per_step = steps_until(function() return #got == N end, "the reads")
  -- (the task and its timer go first: a failure below leaves nothing behind)
  idle_c:close()
  H.pump(function() return waited end, 5000, "the waiting task")
  lu.assertEquals(waited[3], "EOF")
  H.close_all(server, client, idle_s)
  for i = 1, N do lu.assertEquals(got[i], "m" .. i) end
  if PLATFORM ~= "windows" then -- (see the test above)
    lu.assertEquals(per_step, { 64, 64, 22 })
  end
end

function TestBasic:test_a_timer_come_due_ends_the_rounds()
  local server, client = H.pair({ pipe_mode = "message" }, { pipe_mode = "message" })
  local N = 150
  queued_messages(server, client, N)
  local got, due, late, read_when_fired = {}, nil, 0, nil
  local function on_read(data, err)
    got[#got + 1] = data or err
    if due and not read_when_fired and np.now() >= due then late = late + 1 end
    if #got == 1 then
      -- the timer is set while the chain runs (150 reads, 1 ms each, outlast it)
      np.spawn(function()
        due = np.now() + 30
        np.sleep(30)
        read_when_fired = #got
      end)
    end
    local t = np.now()
    repeat until np.now() - t >= 1
    if #got < N then server:read(on_read) end
  end
  server:read(on_read)
  steps_until(function() return #got == N end, "the reads")
  lu.assertNotNil(read_when_fired)
  -- reads begun after it came due: at most the one it came due in (and one
  -- for the microseconds between due and the timer's own deadline)
  lu.assertTrue(late <= 2, ("%d reads after the timer came due (fired after %d)"):format(late, read_when_fired))
  H.close_all(server, client)
end

-- The budget holds when one callback leaves many completions ready at once
-- (writes sent whole, on Unix): no round hands out more than its rest.
function TestBasic:test_step_hands_out_at_most_64_when_a_callback_starts_many()
  local server, client = H.pair()
  local done = 0
  client:write("x", function()
    for _ = 1, 100 do client:write("y", function() done = done + 1 end) end
  end)
  local per_step = steps_until(function() return done == 100 end, "the writes")
  local most = math.max(table.unpack(per_step))
  lu.assertTrue(most <= 64, "a step handed out " .. most .. " (" .. table.concat(per_step, ",") .. ")")
  lu.assertEquals(server:read(nil, 2000), "x" .. ("y"):rep(100))
  H.close_all(server, client)
end

function TestBasic:test_message_boundaries_kept()
  local server, client = H.pair({ pipe_mode = "message" }, { pipe_mode = "message" })
  for _, m in ipairs { "one", "", "three", ("x"):rep(1000) } do
    client:write(m, function() end)
  end
  lu.assertEquals(server:read(), "one")
  lu.assertEquals(server:read(), "") -- a zero-length message is a message
  lu.assertEquals(server:read(), "three")
  lu.assertEquals(server:read(), ("x"):rep(1000))
  H.close_all(server, client)
end

function TestBasic:test_message_larger_than_read_buffer_comes_whole()
  -- Through 64 KiB pipe buffers: ERROR_MORE_DATA inside on Windows. On
  -- Linux a SOCK_SEQPACKET message must fit the socket's send buffer, at
  -- most 2 x net.core.wmem_max (425,952 bytes by default; README).
  local server, client = H.pair({ pipe_mode = "message" }, { pipe_mode = "message" })
  local size = PLATFORM == "windows" and 1024 * 1024 or 400000
  local big = {}
  for i = 1, math.floor(size / 16) do big[i] = ("%015d\n"):format(i) end
  big = table.concat(big)
  local cb, res = H.capture()
  client:write(big, cb)
  local got = server:read()
  H.pump(function() return res.done end)
  lu.assertEquals(res[1], #big)
  lu.assertEquals(#got, #big)
  lu.assertEquals(H.checksum(got), H.checksum(big))
  lu.assertEquals(got, big)
  H.close_all(server, client)
end

function TestBasic:test_message_read_n_gives_first_part_then_rest()
  local server, client = H.pair({ pipe_mode = "message" }, { pipe_mode = "message" })
  client:write("abcdefgh", function() end)
  client:write("next", function() end)
  lu.assertEquals(server:read(3), "abc")
  lu.assertEquals(server:read(), "defgh")
  lu.assertEquals(server:read(), "next")
  H.close_all(server, client)
end

function TestBasic:test_byte_mode_read_n_at_most_n()
  local server, client = H.pair()
  client:write("0123456789", function() end)
  H.settle()
  local a = server:read(4)
  lu.assertEquals(a, "0123")
  lu.assertEquals(server:read(), "456789")
  H.close_all(server, client)
end

function TestBasic:test_byte_mode_large_stream_intact()
  local server, client = H.pair()
  local chunks, total = {}, 0
  for i = 1, 64 do chunks[i] = (string.char(i % 256)):rep(65536) end
  local all = table.concat(chunks)
  local written = 0
  for i = 1, #chunks do
    client:write(chunks[i], function(n, err)
      lu.assertNil(err)
      written = written + n
    end)
  end
  local got = {}
  while total < #all do
    local d = assert(server:read())
    got[#got + 1] = d
    total = total + #d
  end
  H.pump(function() return written == #all end)
  lu.assertEquals(table.concat(got), all)
  H.close_all(server, client)
end

-- A waiting write larger than the pipe holds, on the main thread, in a
-- coroutine of the script's and in a task: the part the system takes at
-- once and the rest, waited for while the reader's callbacks drain the
-- pipe, arrive whole and in order, and the write says it wrote all of it;
-- one the reader does not drain in time stops with TIMEOUT.
function TestBasic:test_a_waiting_write_larger_than_the_pipe_is_written_whole()
  local parts = {}
  for i = 1, 30000 do parts[i] = string.format("%07d\n", i) end
  local big = table.concat(parts) -- 240,000 bytes
  for _, where in ipairs { "main", "coroutine", "task" } do
    local server, client = H.pair({ out_buffer_size = 4096, in_buffer_size = 4096 })
    local got = {}
    server:read_start(function(data) got[#got + 1] = data end)
    local r1, r2, r
    H.run_in(where, function()
      r1 = client:write(big, 5000)
      r2 = client:write("end")
    end, 10000, where)
    lu.assertEquals(r1, #big, where)
    lu.assertEquals(r2, 3, where)
    H.pump(function() return #table.concat(got) >= #big + 3 end, 5000, "every byte")
    lu.assertEquals(table.concat(got), big .. "end", where)
    server:read_stop()
    H.run_in(where, function()
      r = table.pack(client:write(string.rep("x", 4 * 1024 * 1024), 50))
    end, 10000, where)
    lu.assertNil(r[1], where)
    lu.assertEquals(r[3], "TIMEOUT", where)
    H.close_all(server, client)
  end
end

function TestBasic:test_writes_complete_in_order()
  local server, client = H.pair()
  local order = {}
  for i = 1, 50 do
    client:write(("%03d"):format(i), function() order[#order + 1] = i end)
  end
  local want = {}
  for i = 1, 50 do want[i] = ("%03d"):format(i) end
  local got = ""
  while #got < 150 do got = got .. assert(server:read()) end
  H.pump(function() return #order == 50 end)
  lu.assertEquals(got, table.concat(want))
  for i = 1, 50 do lu.assertEquals(order[i], i) end
  H.close_all(server, client)
end

function TestBasic:test_many_instances_of_one_name()
  local name = H.name("many")
  local servers, clients = {}, {}
  for i = 1, 8 do
    servers[i] = assert(np.create(name, { max_instances = 8 }))
  end
  for i = 1, 8 do clients[i] = assert(np.open(name)) end
  for i = 1, 8 do assert(servers[i]:connect(2000)) end
  -- Each client talks to exactly one instance: match them up by content.
  for i = 1, 8 do clients[i]:write("client " .. i, function() end) end
  local seen = {}
  for i = 1, 8 do
    local msg = assert(servers[i]:read(nil, 2000))
    lu.assertNil(seen[msg])
    seen[msg] = true
    servers[i]:write("echo " .. msg, function() end)
  end
  for i = 1, 8 do lu.assertEquals(clients[i]:read(nil, 2000), "echo client " .. i) end
  H.close_all(table.unpack(servers))
  H.close_all(table.unpack(clients))
end

function TestBasic:test_try_read_and_try_write()
  local server, client = H.pair()
  local data, msg, name = server:try_read()
  lu.assertNil(data)
  lu.assertEquals(name, "WOULDBLOCK")
  lu.assertIsString(msg)
  lu.assertEquals(client:try_write("quick"), 5)
  local got
  H.pump(function()
    got = server:try_read()
    return got ~= nil
  end)
  lu.assertEquals(got, "quick")
  H.close_all(server, client)
end

function TestBasic:test_try_read_n_and_message_remainder()
  local server, client = H.pair({ pipe_mode = "message" }, { pipe_mode = "message" })
  client:write("abcdef", function() end)
  H.settle()
  lu.assertEquals(server:try_read(2), "ab")
  lu.assertEquals(server:try_read(), "cdef")
  H.close_all(server, client)
end

function TestBasic:test_info_reports_both_ends()
  local server, client = H.pair({ pipe_mode = "message", max_instances = 3 },
    { pipe_mode = "message" })
  local si, ci = server:info(), client:info()
  lu.assertEquals(si.pipe_end, "server")
  lu.assertEquals(ci.pipe_end, "client")
  lu.assertEquals(si.mode, "message")
  lu.assertEquals(ci.mode, "message")
  lu.assertEquals(si.max_instances, 3)
  lu.assertEquals(ci.max_instances, 3)
  H.close_all(server, client)
end

function TestBasic:test_tostring_and_state()
  local name = H.name("str")
  local server = assert(np.create(name))
  lu.assertStrContains(tostring(server), "server")
  lu.assertStrContains(tostring(server), name, false)
  lu.assertEquals(server:state(), "listening")
  local client = assert(np.open(name))
  assert(server:connect(2000))
  lu.assertEquals(server:state(), "connected")
  lu.assertStrContains(tostring(client), "client")
  server:close()
  lu.assertEquals(server:state(), "closed")
  lu.assertStrContains(tostring(server), "closed")
  H.close_all(client)
end

function TestBasic:test_empty_message_seen_before_the_close()
  -- The empty message is seen by a step (on Linux: epoll reports it) while
  -- the client is still there, which then closes: the reads give "", then
  -- the end - with a read pending when it came, and with none.
  local mopts = { pipe_mode = "message" }
  for _, pending in ipairs { true, false } do
    local server, client = H.pair(mopts, mopts)
    local first
    if pending then server:read(function(d, _, e) first = d or e end) end
    client:write("", function() end)
    np.step(50)
    client:close()
    if not pending then first = server:read(nil, 2000) end
    H.pump(function() return first ~= nil end, 2000, "the first read")
    lu.assertEquals(first, "", pending and "read pending" or "no read pending")
    local d, _, name = server:read(nil, 2000)
    lu.assertNil(d)
    lu.assertEquals(name, "EOF")
    H.close_all(server)
  end
end

function TestBasic:test_an_old_clients_message_says_nothing_of_the_next()
  -- The server saw an empty message queued by its first client (on Linux
  -- epoll said so), then disconnected it unread; the next client sends
  -- nothing and closes: the server reads the end, not an empty message.
  local mopts = { pipe_mode = "message" }
  local server, c1, name = H.pair(mopts, mopts)
  c1:write("", function() end)
  np.step(50)
  assert(server:disconnect())
  c1:close()
  local connected
  server:connect(function(ok) connected = ok end)
  assert(np.open(name, mopts)):close()
  H.pump(function() return connected end, 2000, "the second client")
  np.step(0)
  -- (try_read: a read would wait for an event, which would tell afresh)
  local d, errname
  H.pump(function()
    local _
    d, _, errname = server:try_read()
    return errname ~= "WOULDBLOCK"
  end, 2000, "the end of the stream")
  lu.assertNil(d)
  lu.assertEquals(errname, "EOF")
  H.close_all(server)
end

function TestBasic:test_a_peer_that_closes_with_our_data_unread_still_delivers_its_own()
  -- The client never reads what the server wrote, writes, and closes: the
  -- server gets the client's message first, then the end (Linux reports
  -- a reset for the unread data; it must not come first).
  for _, how in ipairs { "read", "try_read" } do
    for _, mode in ipairs { "message", "byte" } do
      local m, what = { pipe_mode = mode }, mode .. ", " .. how
      local server, client = H.pair(m, m)
      assert(server:write("never read", 2000))
      assert(client:write("last words", 2000))
      client:close()
      local function next_read()
        if how == "read" then return server:read(nil, 2000) end
        assert(server:readable(2000))
        return server:try_read()
      end
      lu.assertEquals(next_read(), "last words", what)
      local d, _, errname = next_read()
      lu.assertNil(d, what)
      lu.assertEquals(errname, "EOF", what)
      H.close_all(server)
    end
  end
end

function TestBasic:test_empty_message_then_close_both_queued()
  -- A zero-length message and the end of the stream must stay two things
  -- even when both are waiting before the first read.
  local server, client = H.pair({ pipe_mode = "message" }, { pipe_mode = "message" })
  client:write("")
  client:write("last")
  client:write("")
  client:close()
  H.settle()
  lu.assertEquals(server:read(nil, 2000), "")
  lu.assertEquals(server:read(nil, 2000), "last")
  lu.assertEquals(server:read(nil, 2000), "")
  local d, _, name = server:read(nil, 2000)
  lu.assertNil(d)
  lu.assertEquals(name, "EOF")
  H.close_all(server)
end
