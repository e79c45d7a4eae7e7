-- Peers that vanish, nothing lost under pressure, handles and blocks that
-- come back. (The long versions run in `make soak`: bench/soak.lua.)
local lu = require "luaunit"
local np = require "namedpipe"
local H = require "tests.helpers"

TestReliability = {}

function TestReliability:tearDown() H.settle(2000) end

-- A client process that dies abruptly (no lua_close: as if killed) while
-- its write or its read is pending.
local dying_client = [[
  local np = require "namedpipe"
  local name, what = ...
  local c = assert(np.open(name, { timeout = 3000 }))
  if what == "write" then
    c:write(("d"):rep(8 * 1024 * 1024), function() end) -- far beyond the buffers
  else
    c:read(function() end)
  end
  np.step(20)
  io.write("dying with a pending ", what, "\n")
  io.stdout:flush()
  os.exit(3, false)
]]

function TestReliability:test_client_killed_mid_write()
  local name = H.name("killw")
  local server = assert(np.create(name))
  local cb, res = H.capture()
  server:connect(cb)
  local ok, out = H.run_lua(dying_client, name, "write")
  lu.assertFalse(ok) -- it did die
  lu.assertStrContains(out, "dying with a pending write")
  H.pump(function() return res.done end)
  -- What it managed to write arrives, then the end of the stream: no hang.
  local total = 0
  while true do
    local d, _, errname = server:read(nil, 3000)
    if not d then
      lu.assertEquals(errname, "EOF")
      break
    end
    lu.assertEquals(d, ("d"):rep(#d))
    total = total + #d
  end
  -- Windows drops a dead writer's pending write whole; a socket keeps what
  -- reached the buffer. Either way never more than was written, intact.
  lu.assertTrue(total < 8 * 1024 * 1024, "got " .. total)
  -- The instance can serve again after disconnect.
  assert(server:disconnect())
  local ccb, cres = H.capture()
  server:connect(ccb)
  local c2 = assert(np.open(name))
  H.pump(function() return cres.done end)
  lu.assertTrue(cres[1])
  c2:write("next")
  lu.assertEquals(server:read(nil, 2000), "next")
  H.close_all(server, c2)
end

function TestReliability:test_client_killed_mid_read()
  local name = H.name("killr")
  local server = assert(np.create(name))
  local cb, res = H.capture()
  server:connect(cb)
  local ok, out = H.run_lua(dying_client, name, "read")
  lu.assertFalse(ok)
  lu.assertStrContains(out, "dying with a pending read")
  H.pump(function() return res.done end)
  local n, _, errname = server:write("anyone there?", 2000)
  lu.assertNil(n)
  lu.assertEquals(errname, "BROKEN_PIPE")
  local d, _, rname = server:read(nil, 2000)
  lu.assertNil(d)
  lu.assertEquals(rname, "EOF")
  H.close_all(server)
end

function TestReliability:test_server_disconnects_while_client_writes()
  local server, client = H.pair()
  local cb, res = H.capture()
  client:write(("q"):rep(4 * 1024 * 1024), cb)
  np.step(0)
  lu.assertFalse(res.done)
  assert(server:disconnect())
  H.pump(function() return res.done end)
  lu.assertNil(res[1])
  lu.assertEquals(res[3], "BROKEN_PIPE")
  H.close_all(server, client)
end

function TestReliability:test_dropped_references_with_everything_pending()
  local name = H.name("drop")
  local got, connected
  do
    local s = assert(np.create(name))
    local c = assert(np.open(name))
    assert(s:connect(2000))
    local total = 0
    local function drain(d) -- re-arms itself until all of the write is in
      total = total + #assert(d)
      if total < 2 * 1024 * 1024 then s:read(drain) else got = total end
    end
    s:read(drain)
    c:write(("b"):rep(2 * 1024 * 1024), function() end) -- pending for a while
    local idle = assert(np.create(name))
    idle:connect(function(ok) connected = ok end)
  end
  collectgarbage()
  collectgarbage()
  -- Nothing was collected under the kernel's feet: the reads still land...
  H.pump(function() return got end)
  lu.assertEquals(got, 2 * 1024 * 1024)
  -- ... and the idle instance still takes a client.
  local c2 = assert(np.open(name))
  H.pump(function() return connected end)
  lu.assertTrue(connected)
  H.close_all(c2)
end

local function stream(total, chunk)
  local server, client = H.pair()
  local sent, done = 0, 0
  local pieces = {}
  -- All writes issued at once, far faster than the reader takes them.
  for i = 1, math.floor(total / chunk) do
    local piece = string.char(i % 251):rep(chunk - 8) .. ("%08d"):format(i)
    pieces[i] = piece
    client:write(piece, function(n, err)
      assert(n == #piece, err)
      done = done + 1
    end)
    sent = sent + #piece
  end
  local a = H.checksum(table.concat(pieces))
  pieces = nil -- luacheck: ignore 311 (let the collector have them)
  local got, n = {}, 0
  while n < sent do
    local d = assert(server:read(nil, 5000))
    got[#got + 1] = d
    n = n + #d
  end
  lu.assertEquals(n, sent)
  lu.assertEquals(H.checksum(table.concat(got)), a)
  H.pump(function() return done == math.floor(total / chunk) end)
  H.close_all(server, client)
end

function TestReliability:test_stream_intact_with_writes_outpacing_reader()
  stream(8 * 1024 * 1024, 64 * 1024)
end

function TestReliability:test_small_messages_keep_order_and_boundaries()
  local server, client = H.pair({ pipe_mode = "message" }, { pipe_mode = "message" })
  local count = 10000
  local acked = 0
  for i = 1, count do
    client:write(tostring(i), function() acked = acked + 1 end)
  end
  for i = 1, count do
    local m = server:read(nil, 5000)
    if m ~= tostring(i) then lu.fail(("message %d arrived as %s"):format(i, tostring(m))) end
  end
  H.pump(function() return acked == count end)
  H.close_all(server, client)
end

function TestReliability:test_handles_and_blocks_come_back()
  H.settle()
  local before = np.stats()
  for _ = 1, 200 do
    local server, client = H.pair()
    client:write("x")
    assert(server:read() == "x")
    server:read(function() end) -- pending when closed
    server:close()
    client:close()
  end
  H.settle()
  collectgarbage()
  local after = np.stats()
  -- (earlier tests may still own blocks that get released meanwhile)
  lu.assertTrue(after.pipes <= before.pipes, ("blocks %d -> %d"):format(before.pipes, after.pipes))
  lu.assertEquals(after.outstanding, 0)
  if before.os_handles >= 0 then
    lu.assertTrue(after.os_handles <= before.os_handles + 2,
      ("OS handles %d -> %d"):format(before.os_handles, after.os_handles))
  end
end

-- Writes queued behind a full pipe go out together (Linux: one sendmsg
-- for up to 64 of them, the kernel taking what fits; here 142): each still
-- completes once, in order, with its own whole length, and the reader
-- gets exactly the bytes written, in order - empty writes and writes
-- split across two sends included.
local function mixed_pieces()
  local sizes = { 0, 1, 70000, 7, 300000, 0, 65536, 3, 200000, 1, 0, 150000, 12, 65535 }
  local pieces = {}
  for i = 1, 3 * #sizes do
    local size = sizes[(i - 1) % #sizes + 1]
    local stamp = ("<%d>"):format(i)
    pieces[i] = size >= #stamp and stamp .. string.char(i % 251):rep(size - #stamp)
      or ("."):rep(size)
  end
  for i = 1, 100 do -- more than one sendmsg takes: tiny ones, empty ones
    pieces[#pieces + 1] = string.char(65 + i % 26):rep(i % 6)
  end
  return pieces
end

function TestReliability:test_queued_writes_of_mixed_sizes_arrive_whole_in_order()
  local server, client = H.pair()
  local pieces = mixed_pieces()
  local order = {}
  for i, piece in ipairs(pieces) do
    client:write(piece, function(n, err)
      order[#order + 1] = { i = i, n = n, err = err }
    end)
  end
  local want = table.concat(pieces)
  local got, n = {}, 0
  while n < #want do
    local d = assert(server:read(nil, 5000))
    got[#got + 1] = d
    n = n + #d
  end
  H.pump(function() return #order == #pieces end, 5000, "write callbacks")
  lu.assertTrue(table.concat(got) == want, "the reader got other bytes than were written")
  for k, o in ipairs(order) do
    lu.assertEquals(o.i, k)
    lu.assertEquals(o.n, #pieces[k], "write " .. k .. ": " .. tostring(o.err))
  end
  H.close_all(server, client)
end

-- Writes stopped (cancelled, or the pipe closed) while some went out
-- whole and one in part: the reader gets a prefix of what was written -
-- every write reported done, then at most the start of the first one
-- stopped, never a byte of a later one.
function TestReliability:test_stopped_queued_writes_leave_a_prefix()
  for _, how in ipairs { "cancel", "close" } do
    local server, client = H.pair()
    local pieces = mixed_pieces()
    local results = {}
    for i, piece in ipairs(pieces) do
      client:write(piece, function(n, _, errname) results[i] = n and "ok" or errname end)
    end
    local want = table.concat(pieces)
    local got, n = {}, 0
    while n < 400000 do -- room made, so more of the queue goes out
      local d = assert(server:read(nil, 5000))
      got[#got + 1] = d
      n = n + #d
    end
    np.step(0)
    if how == "cancel" then
      client:cancel("write")
      H.pump(function() return #results == #pieces end, 5000, "write callbacks")
    end
    client:close()
    H.pump(function() return #results == #pieces end, 5000, "write callbacks")
    while true do
      local d, _, errname = server:read(nil, 5000)
      if not d then lu.assertEquals(errname, "EOF") break end
      got[#got + 1] = d
    end
    got = table.concat(got)
    local done_bytes, first_stopped = 0, nil
    for i, r in ipairs(results) do
      if r == "ok" then
        -- (an empty write carries nothing: Wine completes one at once,
        -- even behind a write that is then cut)
        if #pieces[i] > 0 then
          lu.assertNil(first_stopped, how .. ": write " .. i .. " succeeded after an earlier one was stopped")
        end
        done_bytes = done_bytes + #pieces[i]
      else
        lu.assertEquals(r, how == "cancel" and "CANCELLED" or "CLOSED")
        first_stopped = first_stopped or i
      end
    end
    lu.assertNotNil(first_stopped, how .. ": nothing was left to stop")
    lu.assertTrue(got == want:sub(1, #got), how .. ": the bytes read are not a prefix of those written")
    lu.assertTrue(#got >= done_bytes, ("%s: %d bytes read, %d reported written"):format(how, #got, done_bytes))
    lu.assertTrue(#got <= done_bytes + #pieces[first_stopped],
      ("%s: %d bytes read: more than the writes done (%d) and the first stopped (%d)")
        :format(how, #got, done_bytes, #pieces[first_stopped]))
    server:close()
  end
end

function TestReliability:test_many_queued_writes_each_complete_once_in_order()
  -- Far more writes than the backend hands the kernel at once (16 on
  -- Windows): cancelled or closed, each callback runs exactly once.
  for _, how in ipairs { "cancel", "close" } do
    local server, client = H.pair()
    local seen, order = {}, {}
    local chunk = ("c"):rep(64 * 1024)
    for i = 1, 100 do
      client:write(chunk, function(n, _, errname)
        seen[i] = (seen[i] or 0) + 1
        order[#order + 1] = { i = i, result = n and "ok" or errname }
      end)
    end
    np.step(0)
    if how == "cancel" then client:cancel("write") else client:close() end
    H.pump(function() return #order == 100 end, 5000, "100 write callbacks")
    H.settle()
    for i = 1, 100 do lu.assertEquals(seen[i], 1, "write " .. i .. " after " .. how) end
    local failed_from
    for k, o in ipairs(order) do
      lu.assertEquals(o.i, k) -- completions in the order the writes started
      if o.result ~= "ok" then
        lu.assertEquals(o.result, how == "cancel" and "CANCELLED" or "CLOSED")
        failed_from = failed_from or k
      else
        lu.assertNil(failed_from, "a write succeeded after an earlier one was stopped")
      end
    end
    lu.assertNotNil(failed_from) -- nobody read: most of them were stopped
    H.close_all(server, client)
  end
end

-- Thousands of small messages queued at once (far more than the backend
-- hands the kernel at a time on Windows, and than a socket buffer holds on
-- Linux), then read back one by one, each read started when the last one
-- finished: every message arrives whole, once, in order, and every write's
-- callback runs exactly once, in the order the writes started, with its
-- message's length. Then the same queue stopped part way (cancel, close,
-- the server's disconnect): the writes reported done are a prefix, the
-- rest all fail alike, and the reader gets exactly the messages reported
-- done (a message goes whole or not at all).
local function numbered_messages(n)
  local msgs = {}
  for i = 1, n do
    -- some empty ones: the backend holds an empty write back behind the
    -- others (Windows), which must not reorder anything
    msgs[i] = i % 700 == 0 and "" or ("%05d:"):format(i) .. string.char(97 + i % 26):rep(i % 90)
  end
  return msgs
end

local function queue_writes(writer, msgs)
  local calls, order = {}, {}
  for i, m in ipairs(msgs) do
    writer:write(m, function(n, _, errname)
      calls[i] = (calls[i] or 0) + 1
      order[#order + 1] = { i = i, n = n, errname = errname }
    end)
  end
  return calls, order
end

function TestReliability:test_thousands_of_queued_messages_read_back_in_order()
  local opts = { pipe_mode = "message" }
  local server, client = H.pair(opts, opts)
  local msgs = numbered_messages(3000)
  local calls, order = queue_writes(client, msgs)
  local got, bad = 0, nil
  local on_read
  on_read = function(data, err)
    got = got + 1
    if data ~= msgs[got] then
      bad = bad or ("message %d: got %s (%s)"):format(got, tostring(data and data:sub(1, 12)), tostring(err))
    end
    if got < #msgs and not bad then server:read(on_read) end
  end
  server:read(on_read)
  H.pump(function() return bad or (got == #msgs and #order == #msgs) end, 60000, "3000 messages and write callbacks")
  lu.assertNil(bad)
  H.settle()
  for k, o in ipairs(order) do
    lu.assertEquals(o.i, k, "write callbacks out of start order")
    lu.assertEquals(o.n, #msgs[k], "write " .. k .. ": " .. tostring(o.errname))
    lu.assertEquals(calls[k], 1, "write " .. k .. "'s callback")
  end
  lu.assertEquals(#order, #msgs)
  H.close_all(server, client)
end

function TestReliability:test_thousands_of_queued_messages_stopped_part_way()
  local expect = { cancel = "CANCELLED", close = "CLOSED", disconnect = "NOT_CONNECTED" }
  for _, how in ipairs { "cancel", "close", "disconnect" } do
    local opts = { pipe_mode = "message" }
    local server, client = H.pair(opts, opts)
    -- the server writes when it is the one to disconnect
    local writer, reader = client, server
    if how == "disconnect" then writer, reader = server, client end
    local msgs = numbered_messages(2000)
    local calls, order = queue_writes(writer, msgs)
    for k = 1, 300 do lu.assertEquals(reader:read(nil, 5000), msgs[k], how .. ": message " .. k) end
    np.step(0)
    if how == "cancel" then
      writer:cancel("write")
    elseif how == "close" then
      writer:close()
    else
      assert(server:disconnect())
    end
    H.pump(function() return #order == #msgs end, 20000, how .. ": 2000 write callbacks")
    H.settle()
    local done, first_failed = 0, nil
    for k, o in ipairs(order) do
      lu.assertEquals(o.i, k, how .. ": write callbacks out of start order")
      lu.assertEquals(calls[k], 1, how .. ": write " .. k .. "'s callback")
      if o.n then
        lu.assertNil(first_failed, how .. ": write " .. k .. " done after an earlier one failed")
        lu.assertEquals(o.n, #msgs[k])
        done = k
      else
        lu.assertEquals(o.errname, expect[how], how .. ": write " .. k)
        first_failed = first_failed or k
      end
    end
    lu.assertTrue(done >= 300, how .. ": fewer writes done than messages read")
    lu.assertNotNil(first_failed, how .. ": nothing was left to stop")
    if how ~= "disconnect" then
      -- what was reported written is in the pipe, and nothing after it
      -- (after a disconnect Windows drops what the client had not read)
      for k = 301, done do
        lu.assertEquals(reader:read(nil, 5000), msgs[k], how .. ": message " .. k)
      end
      if how == "close" then
        local data, _, errname = reader:read(nil, 5000)
        lu.assertNil(data, how .. ": a message beyond those reported written")
        lu.assertEquals(errname, "EOF")
      else
        lu.assertEquals(reader:peek().available, 0, how .. ": bytes beyond those reported written")
      end
    end
    H.close_all(server, client)
  end
end

-- Readiness nobody waits for must not keep the loop busy: unread data, a
-- peer that hung up, with no read pending. (The Linux backend switches a
-- message socket between level- and edge-triggered epoll; a level-
-- triggered socket nobody reads would make every wait return at once.)
-- Then reads started later still get everything, in order, and the EOF.
local function unread_readiness_stays_quiet(mode)
  H.need_cpu_time()
  local opts = { pipe_mode = mode }
  local server, client = H.pair(opts, opts)
  -- a read that completes, then none pending while more arrives
  assert(client:write("one", 2000))
  lu.assertEquals(server:read(nil, 2000), "one")
  assert(client:write("two", 2000))
  assert(client:write("three", 2000))
  local busy = H.cpu_ms_stepping(300)
  lu.assertTrue(busy < 150, ("300 ms of steps with unread data took %.0f ms of CPU"):format(busy))
  client:close()
  busy = H.cpu_ms_stepping(300)
  lu.assertTrue(busy < 150, ("300 ms of steps after a hang-up took %.0f ms of CPU"):format(busy))
  if mode == "message" then
    lu.assertEquals(server:read(nil, 2000), "two")
    lu.assertEquals(server:read(nil, 2000), "three")
  else
    local got = ""
    while #got < 8 do got = got .. assert(server:read(nil, 2000)) end
    lu.assertEquals(got, "twothree")
  end
  local data, _, name = server:read(nil, 2000)
  lu.assertNil(data)
  lu.assertEquals(name, "EOF")
  -- a read started after the EOF was seen reports it again, at once
  _, _, name = server:read(nil, 2000)
  lu.assertEquals(name, "EOF")
  server:close()
end

function TestReliability:test_unread_message_readiness_does_not_spin()
  unread_readiness_stays_quiet("message")
end

function TestReliability:test_unread_byte_readiness_does_not_spin()
  unread_readiness_stays_quiet("byte")
end

-- Reads that wait and reads that find a message queued, mixed: a message
-- socket goes level-triggered while a read waits and back when epoll
-- reports it with nobody reading; nothing is lost or reordered either way.
function TestReliability:test_message_reads_mixing_waiting_and_queued()
  local opts = { pipe_mode = "message" }
  local server, client = H.pair(opts, opts)
  local got = {}
  local function want(n) H.pump(function() return #got >= n end, 3000, "message " .. n) end
  local function read_one() server:read(function(d, e) got[#got + 1] = d or e end) end
  for round = 1, 20 do
    local base = #got
    local second = "b" .. round
    if round % 3 == 0 then
      -- queued first, then read one at a time with steps in between
      client:write("a" .. round, function() end)
      client:write("b" .. round, function() end)
      H.settle(20)
      read_one(); want(base + 1)
      H.settle(5)
      read_one(); want(base + 2)
    elseif round % 3 == 1 then
      -- the read waits, the message comes
      read_one()
      H.settle(5)
      client:write("a" .. round, function() end)
      want(base + 1)
      client:write("b" .. round, function() end)
      read_one(); want(base + 2)
    else
      -- a message and an empty one, the second read started from inside
      -- the first one's callback
      second = ""
      client:write("a" .. round, function() end)
      client:write("", function() end)
      server:read(function(d, e)
        got[#got + 1] = d or e
        read_one()
      end)
      want(base + 2)
    end
    lu.assertEquals({ got[base + 1], got[base + 2] }, { "a" .. round, second })
  end
  H.close_all(server, client)
end

-- The same for a name whose every instance is taken: on Linux the listener
-- then holds a queued connection nobody can accept (the PIPE_BUSY plug),
-- which must not keep the loop busy either; a new instance serves the
-- next client as usual.
function TestReliability:test_all_instances_busy_does_not_spin()
  H.need_cpu_time()
  local name = H.name("busyidle")
  local server = assert(np.create(name))
  local client = assert(np.open(name))
  assert(server:connect(2000))
  local busy = H.cpu_ms_stepping(300)
  lu.assertTrue(busy < 150, ("300 ms of steps with every instance busy took %.0f ms of CPU"):format(busy))
  local _, _, errname = np.open(name)
  lu.assertEquals(errname, "PIPE_BUSY")
  local second = assert(np.create(name))
  local client2 = assert(np.open(name))
  assert(second:connect(2000))
  assert(client2:write("x", 2000))
  lu.assertEquals(second:read(nil, 2000), "x")
  busy = H.cpu_ms_stepping(300)
  lu.assertTrue(busy < 150, ("300 ms of idle steps took %.0f ms of CPU"):format(busy))
  H.close_all(server, client, second, client2)
end

-- The bytes of a write the pipe could not take at once stay anchored until
-- its completion; a write taken at once needs them no longer. Strings made
-- for each write and dropped at once, a full collection after every write
-- and every step, the reader far behind: every byte arrives as written
-- (under ASan and valgrind in make check, a freed string read would show).
function TestReliability:test_dropped_write_strings_survive_collection()
  local server, client = H.pair()
  local n, size = 64, 48 * 1024
  local function chunk(i) return (string.char(65 + i % 26)):rep(size - 8) .. ("%08d"):format(i) end
  local done = 0
  for i = 1, n do
    client:write(chunk(i), function(w, err)
      if w ~= size then lu.fail("write " .. i .. ": " .. tostring(w) .. " " .. tostring(err)) end
      done = done + 1
    end)
    collectgarbage("collect")
  end
  local got, want = {}, n * size
  local total = 0
  while total < want do
    local data = assert(server:read(nil, 5000))
    got[#got + 1] = data
    total = total + #data
    collectgarbage("collect")
  end
  H.pump(function() return done == n end)
  local all = table.concat(got)
  for i = 1, n do
    if all:sub((i - 1) * size + 1, i * size) ~= chunk(i) then
      lu.fail("write " .. i .. " arrived changed")
    end
  end
  H.close_all(server, client)
end

-- The capped allocator's np_test_memory_limit(extra) (the make check host,
-- tests/c/lua_host.c: from then on Lua may take extra bytes more; a
-- negative extra lifts the cap); the test is skipped elsewhere.
local function memory_cap()
  local limit = rawget(_G, "np_test_memory_limit")
  if not limit then
    lu.skip("needs the capped allocator of the make check host (tests/c/lua_host.c)")
  end
  return limit
end

-- Step until the task co has ended, lifting the memory cap (limit) after
-- each step: the task's calls may wait with their cap on, and it is for
-- them only. Running out of memory in a step is the cap's doing; any
-- other error is raised.
local function run_capped_task(co, limit)
  while coroutine.status(co) ~= "dead" do
    local stepped, why = pcall(np.step, 1) -- (a step may run the task, capped)
    limit(-1)
    if not stepped and not tostring(why):find("not enough memory", 1, true) then
      error(why, 0)
    end
  end
end

-- Out of memory in the middle of a call (a host that caps Lua's memory):
-- the call raises "not enough memory", nothing is left half started, and
-- everything works as before once memory is back. Each call is tried
-- under a cap that grows until it succeeds, so every allocation it makes
-- fails once. Needs the capped allocator of the make check host
-- (tests/c/lua_host.c); make check runs it under ASan and valgrind.
function TestReliability:test_out_of_memory_inside_calls()
  local limit = memory_cap()
  -- (a full collection first: Lua collects before it reports a failed
  -- allocation, and garbage left over would make room under the cap)
  local function until_ok(what, f)
    for extra = 0, 2 ^ 20, 32 do
      collectgarbage()
      limit(extra)
      local ok, err = pcall(f)
      limit(-1)
      if ok then return end
      if not tostring(err):find("not enough memory", 1, true) then
        lu.fail(what .. " under a memory cap: " .. tostring(err))
      end
    end
    lu.fail(what .. " never succeeded")
  end
  local server, client = H.pair()
  local noop = function() end
  -- writes (their anchors grow the anchor table: it must stay sound)
  local writes = 0
  for i = 1, 200 do
    until_ok("write", function() client:write(("%04d"):format(i), noop) end)
    writes = writes + 1
  end
  local got = {}
  local n = 0
  while n < writes * 4 do
    local d = assert(server:read(nil, 5000))
    got[#got + 1] = d
    n = n + #d
  end
  local want = {}
  for i = 1, writes do want[i] = ("%04d"):format(i) end
  lu.assertEquals(table.concat(got), table.concat(want))
  -- a read, a readable wait, create and open, info
  local data
  until_ok("read", function() server:read(function(d) data = d end) end)
  assert(client:write("z", 2000))
  H.pump(function() return data ~= nil end)
  lu.assertEquals(data, "z")
  local name = H.name("oom")
  local p
  until_ok("create", function() p = assert(np.create(name)) end)
  local c
  until_ok("open", function() c = assert(np.open(name)) end)
  local connected
  until_ok("connect", function() p:connect(function(ok) connected = ok end) end)
  H.pump(function() return connected ~= nil end)
  lu.assertTrue(connected)
  until_ok("info", function() assert(p:info()) end)
  local ready
  until_ok("readable", function() p:readable(function(ok) ready = ok end) end)
  assert(c:write("r", 2000))
  H.pump(function() return ready ~= nil end)
  lu.assertTrue(ready)
  lu.assertEquals(p:read(nil, 2000), "r")
  -- ready("both") with nothing to read and p's socket full (so on Linux
  -- both halves wait, and it times out). Cut short anywhere, it leaves no
  -- wait behind: a read made after it is not refused as already pending
  -- (which a readable wait left with no owner would do until data came).
  -- Under caps that grow until it returns, on the main thread and in a
  -- task (which may also die of the cap outside the call: then set is
  -- nil). (On Windows p is writable at once, and ready says so.)
  H.fill(p)
  local capped_ready = {
    main = function(extra)
      collectgarbage()
      limit(extra)
      local ok, set, _, ename = pcall(p.ready, p, "both", 20)
      limit(-1)
      return ok, set, ename
    end,
    task = function(extra)
      local ok, set, ename, _
      run_capped_task(np.spawn(function()
        collectgarbage()
        limit(extra)
        ok, set, _, ename = pcall(p.ready, p, "both", 20)
        limit(-1)
      end), limit)
      return ok, set, ename
    end,
  }
  for _, where in ipairs { "main", "task" } do
    for extra = 0, 2 ^ 20, 32 do
      local ok, set, ename = capped_ready[where](extra)
      if ok then
        if PLATFORM == "windows" then
          lu.assertEquals(set, { writable = true })
        else
          lu.assertEquals({ set, ename }, { nil, "TIMEOUT" })
        end
        break
      end
      if set ~= nil and not tostring(set):find("not enough memory", 1, true) then
        lu.fail(("ready (%s) under a memory cap: %s"):format(where, tostring(set)))
      end
      H.settle(20)
      local after = table.pack(pcall(p.read, p, nil, 10))
      lu.assertEquals({ after[1], after[2], after[4] }, { true, nil, "TIMEOUT" },
        ("ready (%s) cut short under a cap of %d bytes: %s"):format(where, extra, tostring(after[2])))
    end
  end
  -- a step that cannot make the string a read returns: the read is
  -- delivered by a later step, once, with its data
  local calls, seen = 0, nil
  server:read(function(d) calls = calls + 1; seen = d end)
  local sent = ("s"):rep(60000) -- larger than what a step needs besides
  client:write(sent, noop) -- no step before the capped ones
  local failed = 0
  for extra = 0, 2 ^ 20, 1024 do
    collectgarbage()
    limit(extra)
    local ok, err = pcall(np.step, 0)
    if not ok then failed = failed + 1 end
    limit(-1)
    if not ok and not tostring(err):find("not enough memory", 1, true) then
      lu.fail("step under a memory cap: " .. tostring(err))
    end
    if calls > 0 then break end
  end
  H.settle(50)
  lu.assertTrue(failed > 0, "no step ran out of memory: the cap did not bite")
  lu.assertEquals(calls, 1)
  lu.assertEquals(seen, sent)
  -- and the step after one that ran out of memory does not wait for what
  -- is already there
  server:read(function(d) calls = calls + 1; seen = d end)
  client:write(sent, noop)
  collectgarbage()
  limit(0)
  local ok = pcall(np.step, 0)
  limit(-1)
  lu.assertFalse(ok)
  local t0 = np.now()
  H.pump(function() return calls == 2 end, 5000, "the read after an out-of-memory step")
  lu.assertTrue(np.now() - t0 < 1000, "the next steps waited for a completion already there")
  lu.assertEquals(seen, sent)
  -- A waiting read on the main thread (read, and read_into every other
  -- cap), unwound by a callback's error
  -- while memory runs out at every point in turn: whatever was cut short
  -- (the call before its read began, its steps, the Lua layer's taking the
  -- read over, the cancel), its bytes come once, to this read or the next,
  -- and the pipe reads on.
  local unwound = 0
  local buf = np.buffer(64)
  local function settle() -- (the write's callback may raise in these steps)
    local settled, why = pcall(H.settle, 20)
    if not settled and not tostring(why):find("callback failed on purpose", 1, true) then
      error(why, 0)
    end
  end
  for extra = 0, 6000, 8 do
    local marker = ("m%05d"):format(extra)
    client:write(marker, function() error("callback failed on purpose") end)
    collectgarbage()
    limit(extra)
    local into = extra % 16 == 8
    local read_ok, res -- (nothing made under the cap here)
    if into then
      read_ok, res = pcall(server.read_into, server, buf, 2000)
    else
      read_ok, res = pcall(server.read, server, nil, 2000)
    end
    limit(-1)
    if read_ok and into then res = buf:sub(1, res) end
    local marker_got
    if read_ok then
      marker_got = res
    else
      local why = tostring(res)
      if not (why:find("callback failed on purpose", 1, true)
              or why:find("not enough memory", 1, true)) then
        lu.fail("waiting read under a memory cap: " .. why)
      end
      unwound = unwound + 1
      -- (the unwound read, cancelled, ends at a step; if the layer could
      -- take it over only then, for lack of memory, the pipe's read slot
      -- is busy until that step)
      local since = np.now()
      repeat settle() until server:_busy("read") == 0 or np.now() - since > 2000
      marker_got = server:read(nil, 2000)
    end
    lu.assertEquals(marker_got, marker, "cap " .. extra)
    settle()
    local left, _, ename = server:try_read()
    lu.assertNil(left, "cap " .. extra .. ": the marker came twice")
    lu.assertEquals(ename, "WOULDBLOCK")
  end
  lu.assertTrue(unwound > 0)
  -- A task's read with a timeout (read, and read_into every other cap)
  -- while memory runs out at every point of its call up to its yield:
  -- either the call fails with nothing started, or its read is the
  -- task's; the marker comes once, to this read or the next. (One task
  -- makes every call, inside a pcall: the cap is for its calls, lifted
  -- once it waits, not for the scheduler's own work around a task.)
  local failed_in_task, calls_done, at = 0, 0, nil
  local results = {}
  local reader = np.spawn(function()
    for extra = 0, 3000, 8 do
      local into = extra % 16 == 8
      at = extra
      collectgarbage()
      limit(extra)
      local called, res
      if into then
        called, res = pcall(server.read_into, server, buf, 2000)
      else
        called, res = pcall(server.read, server, nil, 2000)
      end
      limit(-1)
      if called and into and res then res = buf:sub(1, res) end
      results[extra] = { called, res }
      calls_done = calls_done + 1
    end
  end)
  local marked = {}
  while coroutine.status(reader) ~= "dead" do
    local stepped, why = pcall(np.step, 0) -- (the cap may bite after the task waits)
    limit(-1)
    if not stepped and not tostring(why):find("not enough memory", 1, true) then
      error(why, 0)
    end
    local extra = at
    if extra and not marked[extra] and results[extra] == nil and server:_busy("read") == 1 then
      marked[extra] = true -- its read waits: this is its marker
      assert(client:write(("t%05d"):format(extra), 2000))
    end
    np.step(1)
  end
  for extra = 0, 3000, 8 do
    local what = "cap " .. extra
    local r = results[extra]
    lu.assertNotNil(r, what)
    if r[1] then
      lu.assertEquals(r[2], ("t%05d"):format(extra), what)
      lu.assertTrue(marked[extra], what)
    else
      lu.assertStrContains(tostring(r[2]), "not enough memory", false, what)
      lu.assertNil(marked[extra], what .. ": failed, yet its read waited")
      failed_in_task = failed_in_task + 1
    end
  end
  local left, _, ename = server:try_read()
  lu.assertNil(left, "a marker was left unread")
  lu.assertEquals(ename, "WOULDBLOCK")
  lu.assertEquals(calls_done, math.floor(3000 / 8) + 1)
  lu.assertTrue(failed_in_task > 0, "no task's call ran out of memory: the cap did not bite")
  -- The same for a wait the Lua layer makes in a task (writable, on every
  -- Lua): a call that ran out of memory started nothing, so the next one
  -- is not refused ("already pending"), and no end of it resumes the task
  -- in a later wait.
  local writable_results = {}
  local writer = np.spawn(function()
    for extra = 0, 3000, 8 do
      collectgarbage()
      limit(extra)
      local called, res = pcall(server.writable, server, 2000)
      limit(-1)
      writable_results[#writable_results + 1] = { extra, called, res }
    end
  end)
  run_capped_task(writer, limit)
  local writable_failed = 0
  for _, r in ipairs(writable_results) do
    if r[2] then
      lu.assertEquals(r[3], true, "writable, cap " .. r[1])
    else
      lu.assertStrContains(tostring(r[3]), "not enough memory", false, "writable, cap " .. r[1])
      writable_failed = writable_failed + 1
    end
  end
  lu.assertEquals(#writable_results, math.floor(3000 / 8) + 1)
  lu.assertTrue(writable_failed > 0, "no writable ran out of memory: the cap did not bite")
  H.close_all(server, client, p, c)
  H.settle(2000)
  lu.assertEquals(np.stats().outstanding, 0)
end

-- A waiting write that a byte pipe takes a part of at once, while memory
-- runs out at every point of its call (a host that caps Lua's memory),
-- on the main thread, in a coroutine of the script's and in a task: what
-- raises "not enough memory" once a part has gone must not cut the write
-- short, or the reader gets half of it and the rest of the stream
-- follows. Each write is either refused with nothing sent or arrives
-- whole (the rest goes on, as an unwound write's does), and one that
-- returned its count arrives whole.
function TestReliability:test_out_of_memory_after_a_part_of_a_write_went()
  local limit = memory_cap()
  local opts = { pipe_mode = "byte" }
  local server, client = H.pair(opts, opts)
  -- (larger than what the socket takes at once, so the first try sends a part)
  local size = 512 * 1024
  local filler = ("x"):rep(size - 9)
  local cap -- the writer's cap, which the reader lifts for its own work
  -- (into a buffer: the reads' ends need no memory, so that writes can
  -- succeed under the cap too)
  local pieces, n_pieces, ended = {}, 0, false
  local buf = np.buffer(65536)
  local function on_read(n)
    if not n then return end
    local was = cap
    limit(-1)
    n_pieces = n_pieces + 1
    pieces[n_pieces] = buf:sub(1, n)
    if pieces[n_pieces]:sub(-1) == "|" then ended = true end
    server:read_into(buf, on_read)
    if was then limit(was) end
  end
  server:read_into(buf, on_read)
  -- (every point of the write's own work fails once; the last caps leave
  -- room for the steps the wait makes too, which the collection before
  -- each write has shrunk the stack for: those writes return their count)
  local caps = {}
  for extra = 0, 640, 8 do caps[#caps + 1] = extra end
  caps[#caps + 1] = 1024 * 1024
  caps[#caps + 1] = 1024 * 1024
  for _, where in ipairs { "main", "coroutine", "task" } do
    local part_went, raised, arrived = 0, 0, 0
    local function writes()
      for _, extra in ipairs(caps) do
        local what = ("%s, cap %d"):format(where, extra)
        local block = ("<%07d>"):format(extra) .. filler
        pieces, n_pieces, ended = {}, 0, false
        collectgarbage()
        cap = extra
        limit(extra)
        local ok, res = pcall(client.write, client, block, 5000)
        limit(-1)
        cap = nil
        if ok then
          lu.assertEquals(res, size, what)
        else
          lu.assertStrContains(tostring(res), "not enough memory", false, what)
          raised = raised + 1
        end
        -- the end of this write's bytes, whatever they are
        assert(client:write("|", 5000))
        local since = np.now()
        while not ended and np.now() - since < 5000 do
          if where == "task" then np.sleep(1) else np.step(10) end
        end
        lu.assertTrue(ended, what .. ": the end mark never came")
        local got = table.concat(pieces, "", 1, n_pieces)
        if got == block .. "|" then
          arrived = arrived + 1
          if not ok then part_went = part_went + 1 end
        elseif got ~= "|" or ok then
          lu.fail(("%s: %d bytes arrived of a write of %d (%s)"):format(
            what, #got - 1, size, ok and "returned its count" or "raised"))
        end
      end
    end
    if where == "task" then
      -- (the task runs writes itself: a pcall around it would be one more
      -- call frame, which the cap may leave no memory for before it
      -- protects anything; what fails in the task comes out of a step)
      run_capped_task(np.spawn(writes), limit)
    else
      H.run_in(where, writes)
    end
    lu.assertTrue(part_went > 0, where .. ": no write ran out of memory after a part went")
    lu.assertTrue(arrived > part_went, where .. ": every write ran out of memory")
  end
  H.close_all(server, client)
  H.settle(2000)
  lu.assertEquals(np.stats().outstanding, 0)
end

-- The scheduler while memory runs out (a host that caps Lua's memory):
-- a task whose start, whose sleep's end or whose event's wake-up comes in
-- a step that runs out of memory either fails with it or runs on later;
-- it never stays suspended with nothing left to resume it, nor ends
-- still counted as live, so np.run does not wait for it forever.
function TestReliability:test_out_of_memory_in_the_scheduler()
  local limit = memory_cap()
  local task = require "namedpipe.task"
  local live_before = task.live()
  local server, client = H.pair()
  local function not_the_cap(ok, err)
    if not ok and not tostring(err):find("not enough memory", 1, true) then error(err, 0) end
  end
  local bit = 0 -- capped steps that ran out of memory
  -- (made from a few depths of calls: which call frames a collection
  -- leaves depends on the depth it runs at)
  local function capped_step(extra, depth)
    if depth > 0 then return capped_step(extra, depth - 1) or false end
    collectgarbage()
    limit(extra)
    local ok, err = pcall(np.step, 0)
    limit(-1)
    not_the_cap(ok, err)
    if not ok then bit = bit + 1 end
  end
  local ran = 0
  for extra = 0, 3000, 8 do
    for _, how in ipairs { "start", "sleep", "event", "read" } do
      local what = ("%s, cap %d"):format(how, extra)
      local done, ev = false, np.event()
      local co = np.spawn(function()
        if how == "sleep" then
          np.sleep(1)
        elseif how == "event" then
          ev:wait()
        elseif how == "read" then
          server:read(nil, 5000)
        end
        done = true
      end)
      if how ~= "start" then
        np.step(0) -- (it starts, and waits)
        if how == "sleep" then
          local since = np.now()
          repeat until np.now() - since >= 2
        elseif how == "event" then
          ev:set(true)
        else
          assert(client:write("x", 2000))
        end
      end
      capped_step(extra, extra / 8 % 4)
      local since = np.now()
      while coroutine.status(co) ~= "dead" and np.now() - since < 2000 do
        not_the_cap(pcall(np.step, 1))
      end
      lu.assertEquals(coroutine.status(co), "dead", what .. ": the task never ran on")
      if done then ran = ran + 1 end
    end
  end
  lu.assertEquals(task.live(), live_before, "a task that ended is still counted as live")
  lu.assertTrue(bit > 0, "no step ran out of memory: the cap did not bite")
  lu.assertTrue(ran > 0)
  H.close_all(server, client)
end

-- A finalizer that steps, run by the collector while a step makes a
-- callback's arguments (a read's string): the completion is delivered
-- once, by whichever step takes it (the outer step, left with arguments
-- for a completion it no longer has, crashed when it did not notice).
function TestReliability:test_finalizer_stepping_inside_a_step()
  if _VERSION ~= "Lua 5.4" then
    lu.skip("provoked through Lua 5.4's collector, which runs pending finalizers a few "
      .. "at a time inside an allocation; older collectors schedule them otherwise")
  end
  local server, client = H.pair()
  local noop = function() end
  -- a step with callbacks first: the stack and a CallInfo for a callback
  -- exist, so nothing grows (and collects) in the step before the string
  local warm
  server:read(function() warm = true end)
  client:write("w", noop)
  H.pump(function() return warm end)
  np.step(0)
  local calls = 0
  server:read(function() calls = calls + 1 end)
  local armed, ran = false, 0
  local mt = { __gc = function()
    ran = ran + 1
    if armed then armed = false; np.step(0) end
  end }
  -- many finalizers pending, run a few per small collector step
  collectgarbage("incremental", 100, 100, 10)
  collectgarbage("stop")
  for _ = 1, 200000 do setmetatable({}, mt) end
  collectgarbage("restart")
  while ran == 0 do collectgarbage("step", 0) end
  local big = ("x"):rep(60000)
  client:write(big, noop)
  armed = true -- nothing allocates from here to the read's string
  np.step(1000)
  local stepped_inside = not armed
  collectgarbage("incremental", 200, 100, 13) -- Lua 5.4's defaults
  collectgarbage()
  lu.assertTrue(stepped_inside, "no finalizer stepped inside the step")
  H.pump(function() return calls > 0 end, 5000, "the read")
  H.settle(50)
  lu.assertEquals(calls, 1)
  H.close_all(server, client)
end
