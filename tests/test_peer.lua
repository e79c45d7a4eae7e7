-- Beyond reading and writing: who is on the other end (peer, peer_user),
-- looking before reading (peek), request and reply in one call (transact).
local lu = require "luaunit"
local np = require "namedpipe"
local H = require "tests.helpers"

TestPeer = {}

function TestPeer:tearDown() H.settle(2000) end

-- This process's id, as the pipes see it: a pipe of our own to ourselves.
local function own_pid()
  local server, client = H.pair()
  local pid = assert(client:peer()).pid
  H.close_all(server, client)
  return pid
end

local function skip_if_wine_pids()
  if UNDER_WINE then
    lu.skip("Wine's GetNamedPipeClientProcessId/ServerProcessId succeed but report 0 (stubs)")
  end
end

function TestPeer:test_peer_of_a_pair_in_this_process()
  local server, client = H.pair()
  local a, b = assert(server:peer()), assert(client:peer())
  lu.assertEquals(math.type(a.pid), "integer")
  if PLATFORM == "windows" then
    lu.assertEquals(math.type(a.session), "integer")
    lu.assertNil(a.uid)
  else
    lu.assertNil(a.session)
    lu.assertEquals(math.type(a.uid), "integer")
    lu.assertEquals(math.type(a.gid), "integer")
    lu.assertEquals(a.uid, b.uid)
  end
  H.close_all(server, client)
  skip_if_wine_pids()
  lu.assertTrue(a.pid > 0)
  lu.assertEquals(a.pid, b.pid) -- both ends are this process
end

function TestPeer:test_peer_of_an_instance_with_no_client()
  local server = assert(np.create(H.name("nopeer")))
  local t, _, errname = server:peer()
  lu.assertNil(t)
  lu.assertEquals(errname, "NOT_CONNECTED")
  H.close_all(server)
end

-- A client in another process: the server's peer().pid is the child's
-- (which the child learns the same way, from a pipe to itself).
function TestPeer:test_peer_pid_of_a_child_process()
  skip_if_wine_pids()
  local name = H.name("childpeer")
  local server = assert(np.create(name))
  local cmd, script = H.lua_command([[
    local np = require "namedpipe"
    local name = ...
    local own = name .. "-self"
    local s = assert(np.create(own))
    local c = assert(np.open(own))
    local pid = assert(c:peer()).pid
    local p = assert(np.open(name, { timeout = 5000 }))
    assert(p:write(tostring(pid), 5000))
    p:read(nil, 5000) -- until the parent closes
  ]], name)
  local proc = assert(io.popen(cmd .. " 2>&1", "r"))
  local ok = server:connect(10000)
  lu.assertTrue(ok)
  local said = server:read(nil, 10000)
  local peer = assert(server:peer())
  server:close()
  local out = proc:read("*a")
  proc:close()
  os.remove(script)
  lu.assertEquals(tostring(peer.pid), said, out)
  lu.assertNotEquals(peer.pid, own_pid())
end

function TestPeer:test_peer_user_names_the_user_we_run_as()
  local server, client = H.pair()
  local user, id = server:peer_user()
  lu.assertNotNil(user, id)
  if PLATFORM == "windows" then
    lu.assertStrMatches(id, "S%-1%-[%d%-]+")
    local me = os.getenv("USERNAME")
    if me then
      lu.assertEquals(user:lower():match("[^\\]+$"), me:lower())
    end
  else
    local p = io.popen("id -u; id -un")
    local uid, uname = p:read("*l"), p:read("*l")
    p:close()
    lu.assertEquals(id, uid)
    lu.assertEquals(user, uname)
  end
  lu.assertError(client.peer_user, client) -- a server method
  H.close_all(server, client)
end

-- No client, no peer to tell of: before any client, and after a
-- disconnect. A client that opened before connect() counts at once, and
-- one that has gone counts until the disconnect; for peer() and for
-- peer_user() alike, on both platforms.
function TestPeer:test_peer_and_peer_user_need_a_client()
  for _, method in ipairs { "peer", "peer_user" } do
    local name = H.name("pu")
    local server = assert(np.create(name))
    local got, _, errname = server[method](server)
    lu.assertNil(got, method .. ": listening")
    lu.assertEquals(errname, "NOT_CONNECTED", method)
    local client = assert(np.open(name))
    lu.assertNotNil((server[method](server)), method .. ": a client that came before connect()")
    assert(server:connect(2000))
    client:close()
    H.settle(50)
    local msg
    got, msg = server[method](server)
    lu.assertNotNil(got, method .. ": a client gone, not yet disconnected: " .. tostring(msg))
    assert(server:disconnect())
    got, _, errname = server[method](server)
    lu.assertNil(got, method .. ": disconnected")
    lu.assertEquals(errname, "NOT_CONNECTED", method)
    server:close()
  end
end

function TestPeer:test_peer_user_of_an_anonymous_client()
  if PLATFORM ~= "windows" then
    lu.skip("security_qos_flags do nothing on Linux: the uid is the kernel's")
  end
  local server, client = H.pair(nil, { security_qos_flags = "anonymous" })
  local user, msg, errname = server:peer_user()
  if UNDER_WINE and user then
    H.close_all(server, client)
    lu.skip("Wine ignores SECURITY_ANONYMOUS: the client is impersonated as itself")
  end
  lu.assertNil(user)
  lu.assertEquals(errname, "ACCESS_DENIED", msg)
  H.close_all(server, client)
end

function TestPeer:test_peek_byte_mode_consumes_nothing()
  local server, client = H.pair()
  lu.assertEquals(server:peek(), { available = 0 })
  assert(client:write("hello", 2000))
  H.pump(function() return server:peek().available == 5 end, 5000, "the bytes")
  lu.assertNil(server:peek().message)
  lu.assertEquals(server:read(nil, 2000), "hello")
  lu.assertEquals(server:peek().available, 0)
  H.close_all(server, client)
end

function TestPeer:test_peek_message_mode_tells_the_next_message()
  local server, client = H.pair({ pipe_mode = "message" }, { pipe_mode = "message" })
  assert(client:write("abc", 2000))
  assert(client:write("defgh", 2000))
  H.pump(function() return server:peek().available == 8 end, 5000, "both messages")
  lu.assertEquals(server:peek(), { available = 8, message = 3 })
  lu.assertEquals(server:read(nil, 2000), "abc")
  lu.assertEquals(server:peek(), { available = 5, message = 5 })
  lu.assertEquals(server:read(nil, 2000), "defgh")
  H.close_all(server, client)
end

-- A message server answering each request with "re:" .. request, in a task.
local function replier(server, count)
  np.spawn(function()
    for _ = 1, count do
      local req = server:read(nil, 5000)
      if not req then return end
      server:write("re:" .. req, 5000)
    end
  end)
end

function TestPeer:test_transact_in_three_forms()
  local server, client = H.pair({ pipe_mode = "message" }, { pipe_mode = "message" })
  replier(server, 3)
  lu.assertEquals(client:transact("one", 5000), "re:one")      -- waiting
  local got
  client:transact("two", function(...) got = table.pack(...) end) -- callback
  H.pump(function() return got ~= nil end, 5000, "the callback")
  lu.assertEquals(got[1], "re:two")
  local in_task
  np.run(function() in_task = client:transact("three") end)    -- in a task
  lu.assertEquals(in_task, "re:three")
  -- a reply longer than one read buffer comes whole
  replier(server, 1)
  local big = string.rep("x", 200000)
  lu.assertEquals(client:transact(big, 5000), "re:" .. big)
  H.close_all(server, client)
end

function TestPeer:test_transact_on_a_byte_pipe_raises()
  local server, client = H.pair()
  lu.assertErrorMsgContains("message", client.transact, client, "x", function() end)
  lu.assertErrorMsgContains("message", client.transact, client, "x")
  H.close_all(server, client)
end

function TestPeer:test_transact_times_out_and_the_pipe_goes_on()
  local server, client = H.pair({ pipe_mode = "message" }, { pipe_mode = "message" })
  local r, _, errname = client:transact("nobody answers", 50)
  lu.assertNil(r)
  lu.assertEquals(errname, "TIMEOUT")
  -- the request went; a reply that comes now is read as the next message
  lu.assertEquals(server:read(nil, 2000), "nobody answers")
  assert(server:write("late", 2000))
  lu.assertEquals(client:read(nil, 2000), "late")
  H.close_all(server, client)
end

function TestPeer:test_transact_when_the_server_is_gone()
  local server, client = H.pair({ pipe_mode = "message" }, { pipe_mode = "message" })
  server:close()
  local r, _, errname = client:transact("anyone?", 2000)
  lu.assertNil(r)
  lu.assertTrue(errname == "BROKEN_PIPE" or errname == "EOF", errname)
  H.close_all(client)
end

function TestPeer:test_transact_with_a_message_waiting_is_busy()
  local server, client = H.pair({ pipe_mode = "message" }, { pipe_mode = "message" })
  assert(server:write("unasked", 2000))
  H.pump(function() return client:peek().available > 0 end, 5000, "the message")
  local r, _, errname = client:transact("question", 2000)
  lu.assertNil(r)
  lu.assertEquals(errname, "PIPE_BUSY")
  lu.assertEquals(client:read(nil, 2000), "unasked")
  H.close_all(server, client)
end

-- A transact cancelled while its request waits behind a full pipe ends
-- CANCELLED; its request string may be collected at once, and the pipe
-- goes on (under ASan this would catch a request still pointed at).
function TestPeer:test_transact_cancelled_while_its_request_waits()
  local server, client = H.pair({ pipe_mode = "message", in_buffer_size = 4096, out_buffer_size = 4096 },
                                { pipe_mode = "message" })
  local block, queued = string.rep("q", 3000), 0
  for _ = 1, 400 do -- more than any send buffer holds: the last ones wait
    client:write(block, function() end)
    queued = queued + 1
  end
  local got
  do
    client:transact(string.rep("r", 5000), function(...) got = table.pack(...) end)
  end
  np.step(0)
  client:cancel("transact")
  collectgarbage()
  collectgarbage()
  H.pump(function() return got ~= nil end, 5000, "the transact's end")
  lu.assertEquals(got[3], "CANCELLED")
  -- the server drains; every block is whole, and the pipe still works
  local seen = 0
  while seen < queued do
    local m = server:read(nil, 5000)
    lu.assertNotNil(m)
    if m == block then seen = seen + 1 else lu.assertEquals(m, string.rep("r", 5000)) end
  end
  assert(client:write("after", 2000))
  local m = server:read(nil, 2000)
  if m ~= "after" then -- Windows may have sent the request before the cancel
    lu.assertEquals(m, string.rep("r", 5000))
    lu.assertEquals(server:read(nil, 2000), "after")
  end
  H.close_all(server, client)
end

-- Transacts cancelled in the middle of a backed-up queue, with writes
-- queued before and after each: every write arrives once and in order
-- (a transact's request may arrive too, where the system had sent it
-- before the cancel, as Windows may), and each transact ends CANCELLED.
function TestPeer:test_transacts_cancelled_between_queued_writes()
  local server, client = H.pair({ pipe_mode = "message", in_buffer_size = 4096, out_buffer_size = 4096 },
                                { pipe_mode = "message" })
  local pad = string.rep("w", 3000)
  local n, ended = 0, {}
  local function write_some(k)
    for _ = 1, k do
      n = n + 1
      client:write(("%05d"):format(n) .. pad, function() end)
    end
  end
  write_some(300) -- more than any send buffer holds: the rest wait in the queue
  for t = 1, 5 do
    client:transact("transact " .. t, function(...) ended[t] = table.pack(...) end)
    write_some(20)
    np.step(0)
    client:cancel("transact")
    write_some(10)
    H.pump(function() return ended[t] ~= nil end, 5000, "transact " .. t .. "'s end")
    lu.assertEquals(ended[t][3], "CANCELLED", "transact " .. t)
  end
  local want = 1
  while want <= n do
    local m = assert(server:read(nil, 5000))
    if m:sub(1, 9) ~= "transact " then
      lu.assertEquals(m:sub(1, 5), ("%05d"):format(want))
      lu.assertEquals(#m, 5 + #pad)
      want = want + 1
    end
  end
  assert(client:write("after", 2000))
  local m = server:read(nil, 2000)
  while m:sub(1, 9) == "transact " do m = server:read(nil, 2000) end
  lu.assertEquals(m, "after")
  H.close_all(server, client)
end

-- A transact whose waiter unwinds (a task raised while the main thread
-- waited in it) hands its reply to the next read, and a timeout cancels
-- the transact alone, not the pipe's other operations.
function TestPeer:test_transact_timeout_cancels_only_itself()
  local server, client = H.pair({ pipe_mode = "message" }, { pipe_mode = "message" })
  local wrote
  client:write("keep going", function(n) wrote = n end)
  local r, _, errname = client:transact("q", 50)
  lu.assertNil(r)
  lu.assertEquals(errname, "TIMEOUT")
  H.pump(function() return wrote ~= nil end, 5000, "the write")
  lu.assertEquals(wrote, 10)
  H.close_all(server, client)
end

function TestPeer:test_transact_with_bytes_read_ahead_is_busy()
  local server, client = H.pair({ pipe_mode = "message" }, { pipe_mode = "message" })
  -- a line read from a message leaves the rest read ahead
  assert(server:write("first\nleft over", 500))
  lu.assertEquals(client:read_line(500), "first")
  lu.assertEquals(np._read_ahead(client), 9)
  local r, _, errname = client:transact("q", 500)
  lu.assertNil(r)
  lu.assertEquals(errname, "PIPE_BUSY")
  lu.assertEquals(client:read(nil, 500), "left over")
  H.close_all(server, client)
end

function TestPeer:test_unwound_transact_hands_its_reply_over()
  local server, client = H.pair({ pipe_mode = "message" }, { pipe_mode = "message" })
  np.spawn(function()
    local req = server:read()
    server:write("re:" .. req)
    error("a task fails while the main thread waits", 0)
  end)
  local ok, err = pcall(client.transact, client, "ask", 2000)
  lu.assertFalse(ok)
  lu.assertStrContains(tostring(err), "a task fails")
  -- the reply is the next read's, whole, once
  lu.assertEquals(client:read(nil, 2000), "re:ask")
  local r, _, errname = client:read(nil, 100)
  lu.assertNil(r)
  lu.assertEquals(errname, "TIMEOUT")
  H.close_all(server, client)
end

-- A cancel of writes leaves a transact alone, also one whose request
-- waits behind those writes (a full pipe): on Linux it ended the transact
-- with the writes' reason, and the request never went; on Windows the
-- transact went on. Its stops are "transact", "read" and "readable".
function TestPeer:test_a_cancel_of_writes_leaves_a_transact_queued_behind_them()
  local s, c = H.pair({ pipe_mode = "message" }, { pipe_mode = "message" })
  local big = ("m"):rep(100000)
  local wres = {}
  for i = 1, 6 do c:write(big, function(n, _, e) wres[i] = n or e end) end
  np.step(0)
  local tres
  c:transact("REQ", function(r, _, e) tres = r or e end)
  np.step(0)
  c:cancel("write")
  local got, done = {}, false
  np.spawn(function()
    while true do
      local m = s:read(nil, 2000)
      if not m then break end
      if m == "REQ" then
        assert(s:write("REPLY", 2000))
        break
      end
      got[#got + 1] = #m
    end
    done = true
  end)
  H.pump(function() return done and tres ~= nil end, 10000, "the transact")
  lu.assertEquals(tres, "REPLY")
  local went = 0
  for i = 1, 6 do
    lu.assertTrue(wres[i] == #big or wres[i] == "CANCELLED", tostring(wres[i]))
    if wres[i] == #big then went = went + 1 end
  end
  lu.assertEquals(#got, went) -- each write whole or not at all, the request after them
  for i = 1, #got do lu.assertEquals(got[i], #big) end
  H.close_all(s, c)
end

-- After readable() has taken an empty message (Windows: a zero-byte read
-- takes it), peek() still counts what waits behind it (it said 0).
function TestPeer:test_peek_after_readable_took_an_empty_message()
  local s, c = H.pair({ pipe_mode = "message" }, { pipe_mode = "message" })
  assert(c:write("", 2000))
  assert(c:write("abc", 2000))
  np.step(10)
  lu.assertTrue(s:readable(2000))
  lu.assertEquals(s:peek(), { available = 3, message = 0 })
  lu.assertEquals(s:read(nil, 2000), "")
  lu.assertEquals(s:read(nil, 2000), "abc")
  H.close_all(s, c)
end

-- What disconnect() ends before the system saw it (a writable() wait, a
-- write still queued) says so in words: on Windows its message was
-- "Success" (FormatMessage of code 0).
function TestPeer:test_operations_a_disconnect_ends_say_not_connected_in_words()
  local s, c = H.pair({ out_buffer_size = 4096, in_buffer_size = 4096 })
  local big = ("x"):rep(1048576)
  local results = {}
  for i = 1, 20 do s:write(big, function(...) results[i] = { ... } end) end
  s:writable(function(...) results.writable = { ... } end)
  np.step(0)
  assert(s:disconnect())
  H.pump(function() return results.writable and results[20] end, 5000, "the ends")
  for _, r in pairs(results) do
    if r[1] == nil then
      lu.assertEquals(r[3], "NOT_CONNECTED")
      lu.assertNotStrContains(string.lower(tostring(r[2])), "success")
      lu.assertTrue(#tostring(r[2]) > 0)
    end
  end
  lu.assertNil(results.writable[1])
  H.close_all(s, c)
end

-- A transact's request goes after every write started before it: on
-- Windows, with more writes than the kernel is given at once (the rest
-- wait in namedpipe), the request went straight to the kernel, ahead of
-- the waiting ones (m1 .. m16, REQ, m17 .. m20).
function TestPeer:test_a_transact_request_follows_the_writes_before_it()
  local s, c = H.pair({ pipe_mode = "message" }, { pipe_mode = "message" })
  local ended = 0
  for i = 1, 20 do
    c:write("m" .. i, function(n) if n then ended = ended + 1 end end)
  end
  local reply
  c:transact("REQ", function(r, _, e) reply = r or e end)
  local got, done = {}, false
  np.spawn(function()
    while true do
      local m = s:read(nil, 2000)
      if not m then break end
      got[#got + 1] = m
      if m == "REQ" then
        assert(s:write("REPLY", 2000))
        break
      end
    end
    done = true
  end)
  H.pump(function() return done and reply ~= nil and ended == 20 end, 10000, "the exchange")
  local want = {}
  for i = 1, 20 do want[i] = "m" .. i end
  want[21] = "REQ"
  lu.assertEquals(got, want)
  lu.assertEquals(reply, "REPLY")
  H.close_all(s, c)
end

-- The same transact, stopped while it waits for those writes: by a cancel
-- of its own, a disconnect or a close; the writes go on (or end with the
-- disconnect or close), and nothing of its request is sent.
function TestPeer:test_a_transact_waiting_behind_writes_can_be_stopped()
  for _, how in ipairs { "cancel", "disconnect", "close" } do
    local s, c = H.pair({ pipe_mode = "message" }, { pipe_mode = "message" })
    -- (large enough to wait on Linux too: the socket takes two or so)
    local big = ("m"):rep(100000)
    for _ = 1, 20 do c:write(big, function() end) end
    local reply
    c:transact("REQ", function(r, _, e) reply = r or e end)
    local want
    if how == "cancel" then
      c:cancel("transact")
      want = "CANCELLED"
    elseif how == "disconnect" then
      assert(s:disconnect())
      want = "EOF_OR_GONE"
    else
      c:close()
      want = "CLOSED"
    end
    H.pump(function() return reply ~= nil end, 5000, how)
    if want == "EOF_OR_GONE" then
      lu.assertNotEquals(reply, "REPLY", how)
      lu.assertNotEquals(reply, nil, how)
    else
      lu.assertEquals(reply, want, how)
    end
    if how == "cancel" then
      local got = {}
      for _ = 1, 20 do got[#got + 1] = s:read(nil, 2000) end
      lu.assertEquals(got[20], big)
      lu.assertEquals({ s:read(nil, 50) }, { nil, "timed out", "TIMEOUT", 0 }) -- no REQ
    end
    H.close_all(s, c)
  end
end
