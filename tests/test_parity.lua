-- One script, one behaviour: cases where the Linux backend has to work to
-- do what Windows does by nature.
local lu = require "luaunit"
local np = require "namedpipe"
local H = require "tests.helpers"

TestParity = {}

function TestParity:tearDown() H.settle(2000) end

-- A client that opened before the server's connect(): on Windows its open
-- connected the instance, so whatever the server does next (no step in
-- between) already has that client.
local function client_first(mode)
  local name = H.name("early")
  local opts = mode and { pipe_mode = mode } or nil
  local server = assert(np.create(name, opts))
  local client = assert(np.open(name, opts))
  return server, client
end

function TestParity:test_read_takes_a_client_that_came_before_connect()
  for _, mode in ipairs { "byte", "message" } do
    local server, client = client_first(mode)
    client:write("hi", function() end)
    local cb, res = H.capture()
    server:read(cb)
    H.pump(function() return res.done end, 2000, "the read")
    lu.assertEquals(res[1], "hi", mode .. ": " .. tostring(res[3]))
    H.close_all(server, client)
  end
end

function TestParity:test_read_into_takes_a_client_that_came_before_connect()
  local server, client = client_first()
  client:write("hello", function() end)
  local buf = np.buffer(16)
  local cb, res = H.capture()
  server:read_into(buf, cb)
  H.pump(function() return res.done end, 2000, "the read_into")
  lu.assertEquals(res[1], 5, tostring(res[3]))
  lu.assertEquals(buf:sub(1, 5), "hello")
  H.close_all(server, client)
end

function TestParity:test_readable_takes_a_client_that_came_before_connect()
  local server, client = client_first()
  client:write("x", function() end)
  local cb, res = H.capture()
  server:readable(cb)
  H.pump(function() return res.done end, 2000, "readable")
  lu.assertEquals(res[1], true, tostring(res[3]))
  lu.assertEquals(server:read(nil, 2000), "x")
  H.close_all(server, client)
end

function TestParity:test_write_takes_a_client_that_came_before_connect()
  local server, client = client_first()
  local cb, res = H.capture()
  server:write("to you", cb)
  H.pump(function() return res.done end, 2000, "the write")
  lu.assertEquals(res[1], 6, tostring(res[3]))
  lu.assertEquals(client:read(nil, 2000), "to you")
  H.close_all(server, client)
end

function TestParity:test_writable_takes_a_client_that_came_before_connect()
  local server, client = client_first()
  local cb, res = H.capture()
  server:writable(cb)
  H.pump(function() return res.done end, 2000, "writable")
  lu.assertEquals(res[1], true, tostring(res[3]))
  H.close_all(server, client)
end

function TestParity:test_try_read_takes_a_client_that_came_before_connect()
  local server, client = client_first()
  client:write("now", function() end)
  local data, msg = server:try_read()
  lu.assertEquals(data, "now", msg)
  H.close_all(server, client)
end

function TestParity:test_try_write_takes_a_client_that_came_before_connect()
  local server, client = client_first()
  local n, msg = server:try_write("now")
  lu.assertEquals(n, 3, msg)
  lu.assertEquals(client:read(nil, 2000), "now")
  H.close_all(server, client)
end

-- info() reads the instance back: with a client there, the connected
-- instance, so it says then what it says once connect() has completed.
function TestParity:test_info_takes_a_client_that_came_before_connect()
  local name = H.name("early-info")
  local opts = { out_buffer_size = 8192, in_buffer_size = 8192 }
  local server = assert(np.create(name, opts))
  local client = assert(np.open(name))
  local early = assert(server:info())
  lu.assertTrue(server:connect(2000))
  lu.assertEquals(early, assert(server:info()))
  H.close_all(server, client)
end

-- The instance still completes its connect() at once afterwards, and a
-- client that opened before the call is not lost for the next one.
function TestParity:test_connect_after_an_early_read_completes_at_once()
  local server, client = client_first()
  client:write("a", function() end)
  lu.assertEquals(server:read(nil, 2000), "a")
  lu.assertEquals(server:state(), "listening")
  lu.assertTrue(server:connect(2000))
  lu.assertEquals(server:state(), "connected")
  H.close_all(server, client)
end

-- After disconnect() Windows lets no client in until connect() is called
-- again: a client that arrives meanwhile goes to another instance, and the
-- disconnected one has none.
function TestParity:test_a_disconnected_instance_takes_no_client_before_connect()
  local name = H.name("disc")
  local a = assert(np.create(name))
  local c1 = assert(np.open(name))
  assert(a:connect(2000))
  assert(a:disconnect())
  local b = assert(np.create(name))
  local c2 = assert(np.open(name))
  c2:write("for b", function() end)
  local data, _, errname = a:try_read()
  lu.assertNil(data)
  lu.assertEquals(errname, "NOT_CONNECTED")
  local cb, res = H.capture()
  a:read(cb)
  H.pump(function() return res.done end, 2000, "a's read")
  lu.assertNil(res[1])
  lu.assertEquals(res[3], "NOT_CONNECTED")
  lu.assertEquals(a:state(), "disconnected")
  lu.assertEquals(b:read(nil, 2000), "for b")
  H.close_all(a, b, c1, c2)
end

-- Windows takes either separator in the \\.\pipe\ prefix: //./pipe/NAME
-- (or any mix) is the same pipe as \\.\pipe\NAME, never a file path.
function TestParity:test_the_pipe_prefix_with_either_separator()
  local name = H.name("sep")
  local leaf = name:sub(#[[\\.\pipe\]] + 1)
  local spellings = { "//./pipe/", [[/\.\PIPE/]], [[\/./Pipe\]] }
  for _, prefix in ipairs(spellings) do
    local other = prefix .. leaf
    local server = assert(np.create(other, { first_pipe_instance = true }))
    local client = assert(np.open(name))
    assert(server:connect(2000))
    client:write("via " .. prefix, function() end)
    lu.assertEquals(server:read(nil, 2000), "via " .. prefix)
    H.close_all(server, client)
    -- and the other way round
    server = assert(np.create(name, { first_pipe_instance = true }))
    client = assert(np.open(other))
    assert(server:connect(2000))
    server:write("back", function() end)
    lu.assertEquals(client:read(nil, 2000), "back")
    if PLATFORM == "linux" then -- (Windows hands the name to the OS as given)
      lu.assertEquals(np.path(other), np.path(name))
    end
    H.close_all(server, client)
  end
end

-- disconnect() and what was still in the pipe. Windows throws away what
-- the old client had not read yet. A Unix socket cannot: a send puts the
-- bytes straight into the receiving socket's queue, and closing the
-- sending socket takes nothing back from it, so on Linux the old client
-- reads them, then the end (README, Linux notes). Both ways the old
-- client's reads end, and the instance's next client sees nothing of the
-- old one's (what the server had not read of it is gone on both).
function TestParity:test_disconnect_and_what_the_old_client_had_not_read()
  local name = H.name("unread")
  local server = assert(np.create(name, { max_instances = 1 }))
  local old = assert(np.open(name))
  assert(server:connect(2000))
  lu.assertEquals(server:write("for the old client", 2000), 18)
  lu.assertEquals(old:write("never read by the server", 2000), 24)
  assert(server:disconnect())
  local data, _, errname = old:read(nil, 2000)
  if PLATFORM == "windows" then
    lu.assertNil(data, "Windows discards what the old client had not read")
  else
    lu.assertEquals(data, "for the old client")
    data, _, errname = old:read(nil, 2000)
    lu.assertNil(data)
  end
  lu.assertEquals(errname, "EOF")
  local cb, res = H.capture()
  server:connect(cb)
  local new = assert(np.open(name))
  H.pump(function() return res.done end, 2000, "the next client")
  lu.assertTrue(res[1])
  new:write("from the new client", function() end)
  lu.assertEquals(server:read(nil, 2000), "from the new client")
  H.close_all(server, old, new)
end

-- Once every instance has been taken, an instance created next is free at
-- once, as on Windows: the next client gets it, whatever came in between
-- (a step with nothing in flight, a client refused, a taken instance
-- closed after a step, nothing).
function TestParity:test_an_instance_created_after_all_were_taken_takes_the_next_client()
  local ways = { "step", "refused", "closed", "nothing" }
  for _, mode in ipairs { "byte", "message" } do
    for _, way in ipairs(ways) do
      local what = mode .. ", " .. way
      local name = H.name("busyfree")
      local opts = { pipe_mode = mode }
      local s1 = assert(np.create(name, opts))
      local c1 = assert(np.open(name, opts))
      lu.assertTrue(s1:connect(2000), what)
      local s0, c0
      if way == "closed" then
        s0 = assert(np.create(name, opts))
        c0 = assert(np.open(name, opts))
        lu.assertTrue(s0:connect(2000), what)
      end
      -- every instance taken, nothing in flight
      if way == "step" or way == "closed" then np.step(0) end
      if way == "refused" then
        local _, _, ename = np.open(name, opts)
        lu.assertEquals(ename, "PIPE_BUSY", what)
      elseif way == "closed" then
        s0:close()
      end
      local s2 = assert(np.create(name, opts))
      local c2, msg = np.open(name, opts)
      lu.assertNotNil(c2, what .. ": " .. tostring(msg))
      lu.assertEquals(c2:write("to s2", 2000), 5, what)
      lu.assertEquals(s2:read(nil, 2000), "to s2", what)
      lu.assertTrue(s2:connect(2000), what)
      local _, _, ename = np.open(name, opts)
      lu.assertEquals(ename, "PIPE_BUSY", what .. ": both instances are taken again")
      H.close_all(s1, c1, s2, c2, c0)
    end
  end
end

-- A client connects to an instance that is listening when it opens (on
-- Windows the open itself connects it), even when another instance starts
-- listening before the server looks: that one waits for the next client.
function TestParity:test_a_client_goes_to_the_instance_listening_when_it_opened()
  for _, way in ipairs { "reconnected", "created" } do
    local name = H.name("later")
    local opts = { max_instances = 2 }
    local a, b, x
    if way == "reconnected" then -- b listens again after a disconnect()
      b = assert(np.create(name, opts))
      x = assert(np.open(name))
      assert(b:connect(2000))
      assert(b:disconnect())
      a = assert(np.create(name, opts)) -- the only instance listening
    else -- b is created after the client opened
      a = assert(np.create(name, opts))
    end
    local c = assert(np.open(name))
    c:write("for a", function() end)
    if way == "created" then b = assert(np.create(name, opts)) end
    local cb, res = H.capture()
    b:connect(cb) -- before any step
    lu.assertEquals(a:read(nil, 2000), "for a", way)
    np.step(0)
    lu.assertFalse(res.done, way .. ": b has no client yet")
    local d = assert(np.open(name))
    H.pump(function() return res.done end, 2000, "b's connect")
    lu.assertTrue(res[1], way)
    lu.assertEquals(d:write("for b", 2000), 5, way)
    lu.assertEquals(b:read(nil, 2000), "for b", way)
    H.close_all(a, b, c, d, x)
  end
end

-- The same for a client of another process: the instance listening when it
-- opened has it, not one that starts listening before this process looks -
-- not even when the first stops listening first (disconnect() or close():
-- on Windows they drop the client that came).
local other_client = [[
  local np = require "namedpipe"
  local c = assert(np.open((...)))
  assert(c:write("for a", 2000) == 5)
  c:close()
]]

function TestParity:test_a_client_of_another_process_goes_to_the_instance_listening_then()
  for _, way in ipairs { "kept", "disconnected", "closed" } do
    local name = H.name("later-other")
    local opts = { max_instances = 2 }
    local b = assert(np.create(name, opts))
    local x = assert(np.open(name))
    assert(b:connect(2000))
    assert(b:disconnect()) -- b listens no more
    local a = assert(np.create(name, opts)) -- the only instance listening
    local ok, out = H.run_lua(other_client, name)
    lu.assertTrue(ok, out)
    if way == "disconnected" then
      assert(a:disconnect())
    elseif way == "closed" then
      a:close()
    end
    local cb, res = H.capture()
    b:connect(cb) -- before any step
    if way == "kept" then lu.assertEquals(a:read(nil, 2000), "for a") end
    local data, _, ename = b:try_read()
    lu.assertNil(data, way)
    lu.assertEquals(ename, "NOT_CONNECTED", way)
    np.step(0)
    lu.assertFalse(res.done, way .. ": b has no client yet")
    H.close_all(a, b, x)
  end
end

-- An operation stopped twice ends with the first stop's reason: on Linux
-- the first stop ends it at once; on Windows the kernel's packet comes
-- later, whatever was asked since (a second cancel, a disconnect, close).
function TestParity:test_the_first_stop_says_why()
  local cases = {
    { "cancel twice", function(s) s:cancel("read", "TIMEOUT"); s:cancel("read") end, "TIMEOUT" },
    { "cancel, then close", function(s) s:cancel("read", "TIMEOUT"); s:close() end, "TIMEOUT" },
    { "cancel, then disconnect", function(s) s:cancel("read"); s:disconnect() end, "CANCELLED" },
    { "disconnect, then cancel", function(s) s:disconnect(); s:cancel("read", "TIMEOUT") end,
      "NOT_CONNECTED" },
    { "disconnect, then close", function(s) s:disconnect(); s:close() end, "NOT_CONNECTED" },
    { "close alone", function(s) s:close() end, "CLOSED" },
  }
  for _, case in ipairs(cases) do
    local what, stop, want = case[1], case[2], case[3]
    local name = H.name("stops")
    local server = assert(np.create(name))
    local client = assert(np.open(name))
    assert(server:connect(2000))
    local cb, res = H.capture()
    server:read(cb)
    np.step(0) -- (the read is in the kernel's hands on Windows)
    stop(server)
    H.pump(function() return res.done end, 2000, what)
    lu.assertNil(res[1], what)
    lu.assertEquals(res[3], want, what)
    H.close_all(server, client)
  end
end

-- A write of nothing succeeds (0) while the peer is there, and fails as
-- any write does once it has gone: Windows refuses it (ERROR_NO_DATA), and
-- Linux now asks the socket rather than skipping the call.
function TestParity:test_a_write_of_nothing_to_a_gone_peer_fails()
  for _, mode in ipairs { "byte", "message" } do
    local name = H.name("nothing")
    local server = assert(np.create(name, { pipe_mode = mode }))
    local client = assert(np.open(name, { pipe_mode = mode }))
    assert(server:connect(2000))
    lu.assertEquals(server:write("", 2000), 0, mode)
    lu.assertEquals(server:try_write(""), 0, mode)
    client:close()
    H.settle(50)
    local n, _, errname = server:write("", 2000)
    lu.assertNil(n, mode .. ": waiting write")
    lu.assertEquals(errname, "BROKEN_PIPE", mode)
    n, _, errname = server:try_write("")
    lu.assertNil(n, mode .. ": try_write")
    lu.assertEquals(errname, "BROKEN_PIPE", mode)
    local cb, res = H.capture()
    server:write("", cb)
    H.pump(function() return res.done end, 2000, "the callback write")
    lu.assertNil(res[1], mode .. ": callback write")
    lu.assertEquals(res[3], "BROKEN_PIPE", mode)
    server:close()
  end
end

-- The same for a framing read (read_exact, in a task) that waits for a
-- stopped read_start's read to end before reading (its bytes come first):
-- a stop while it waits, then a close, ends it with the first stop's
-- reason, as a read of the C module's.
function TestParity:test_a_framing_read_stopped_while_it_waits_says_why()
  local cases = {
    { "cancel, then close", function(s) s:cancel("read"); s:close() end, "CANCELLED" },
    { "timeout cancel, then close", function(s) s:cancel("read", "TIMEOUT"); s:close() end, "TIMEOUT" },
    { "disconnect, then close", function(s) s:disconnect(); s:close() end, "NOT_CONNECTED" },
    { "close alone", function(s) s:close() end, "CLOSED" },
  }
  for _, case in ipairs(cases) do
    local what, stop, want = case[1], case[2], case[3]
    local name = H.name("fstops")
    local server = assert(np.create(name))
    local client = assert(np.open(name))
    assert(server:connect(2000))
    server:read_start(function() end)
    np.step(0)
    local res
    -- (two tasks started by the same step, one after the other: the stop
    -- comes before that step hands out the stopped read's end)
    np.spawn(function()
      server:read_stop()
      res = { server:read_exact(10) }
    end)
    np.spawn(function()
      lu.assertNil(res, what .. ": read_exact waits")
      stop(server)
    end)
    H.pump(function() return res ~= nil end, 2000, what)
    lu.assertNil(res[1], what)
    lu.assertEquals(res[3], want, what)
    H.close_all(server, client)
  end
end
