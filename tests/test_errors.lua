-- Tokio's documented error cases, peers that go away, and misuse.
local lu = require "luaunit"
local np = require "namedpipe"
local H = require "tests.helpers"

TestErrors = {}

function TestErrors:tearDown() H.settle(2000) end

local function assert_os_error(expected_name, ok, msg, name, code)
  lu.assertNil(ok)
  lu.assertIsString(msg)
  lu.assertEquals(name, expected_name)
  lu.assertIsNumber(code)
end

function TestErrors:test_open_missing_pipe_is_not_found()
  assert_os_error("NOT_FOUND", np.open(H.name("missing")))
end

function TestErrors:test_all_instances_busy()
  local name = H.name("busy")
  local server = assert(np.create(name, { max_instances = 1 }))
  local client = assert(np.open(name))
  assert(server:connect(2000))
  -- The only instance is taken: another client is refused...
  assert_os_error("PIPE_BUSY", np.open(name))
  -- ... and so is another instance beyond max_instances.
  assert_os_error("PIPE_BUSY", np.create(name, { max_instances = 1 }))
  H.close_all(server, client)
end

function TestErrors:test_first_pipe_instance_collision()
  if UNDER_WINE then
    lu.skip("Wine 8 ignores FILE_FLAG_FIRST_PIPE_INSTANCE (docs/wine.md #5); Windows gives ACCESS_DENIED")
  end
  local name = H.name("first")
  local a = assert(np.create(name, { first_pipe_instance = true }))
  assert_os_error("ACCESS_DENIED", np.create(name, { first_pipe_instance = true }))
  -- Without the flag another instance is fine.
  local b = assert(np.create(name))
  H.close_all(a, b)
end

function TestErrors:test_read_after_peer_closed_is_end_of_stream()
  local server, client = H.pair()
  client:write("last words", function() end)
  H.settle()
  client:close()
  -- Data already written is still delivered, then the end of the stream.
  lu.assertEquals(server:read(), "last words")
  local data, msg, name = server:read()
  lu.assertNil(data)
  lu.assertEquals(name, "EOF")
  lu.assertIsString(msg)
  H.close_all(server)
end

function TestErrors:test_pending_read_sees_end_of_stream()
  local server, client = H.pair()
  local cb, res = H.capture()
  server:read(cb)
  np.step(0)
  client:close()
  H.pump(function() return res.done end)
  lu.assertNil(res[1])
  lu.assertEquals(res[3], "EOF")
  H.close_all(server)
end

function TestErrors:test_write_after_peer_closed_is_broken_pipe()
  local server, client = H.pair()
  client:close()
  H.settle()
  assert_os_error("BROKEN_PIPE", server:write("nobody there"))
  H.close_all(server)
end

function TestErrors:test_client_after_server_disconnect()
  local server, client = H.pair()
  local cb, res = H.capture()
  client:read(cb)
  np.step(0)
  lu.assertTrue(server:disconnect())
  lu.assertEquals(server:state(), "disconnected")
  H.pump(function() return res.done end)
  lu.assertNil(res[1])
  lu.assertEquals(res[3], "EOF")
  assert_os_error("BROKEN_PIPE", client:write("x"))
  H.close_all(server, client)
end

function TestErrors:test_disconnect_then_serve_next_client()
  local name = H.name("reuse")
  local server = assert(np.create(name, { max_instances = 1 }))
  local c1 = assert(np.open(name))
  assert(server:connect(2000))
  c1:write("first", function() end)
  lu.assertEquals(server:read(), "first")
  assert(server:disconnect())
  c1:close()
  local cb, res = H.capture()
  server:connect(cb)
  local c2 = assert(np.open(name))
  H.pump(function() return res.done end)
  lu.assertEquals(res[1], true)
  c2:write("second", function() end)
  lu.assertEquals(server:read(), "second")
  H.close_all(server, c2)
end

function TestErrors:test_server_read_before_any_client_is_not_connected()
  local server = assert(np.create(H.name("early")))
  assert_os_error("NOT_CONNECTED", server:try_read())
  H.close_all(server)
end

function TestErrors:test_close_completes_pending_operations_with_closed()
  local server = assert(np.create(H.name("closing")))
  local ccb, cres = H.capture()
  server:connect(ccb)
  np.step(0)
  server:close()
  H.pump(function() return cres.done end)
  lu.assertNil(cres[1])
  lu.assertEquals(cres[3], "CLOSED")

  local s2, c2 = H.pair()
  local rcb, rres = H.capture()
  c2:read(rcb)
  np.step(0)
  c2:close()
  H.pump(function() return rres.done end)
  lu.assertEquals(rres[3], "CLOSED")
  H.close_all(s2)
end

function TestErrors:test_cancel_and_timeout()
  local server, client = H.pair()
  local cb, res = H.capture()
  server:read(cb)
  np.step(0)
  server:cancel("read")
  H.pump(function() return res.done end)
  lu.assertEquals(res[3], "CANCELLED")
  -- The synchronous form with a timeout.
  local t0 = np.now()
  assert_os_error("TIMEOUT", server:read(nil, 50))
  lu.assertTrue(np.now() - t0 >= 40)
  -- The pipe still works afterwards, nothing was lost.
  client:write("after", function() end)
  lu.assertEquals(server:read(nil, 2000), "after")
  H.close_all(server, client)
end

function TestErrors:test_error_in_callback_propagates_and_loop_survives()
  local server, client = H.pair()
  local second
  client:write("a", function() error("boom in callback") end)
  client:write("b", function(n) second = n end)
  local ok, err = pcall(function()
    H.pump(function() return second end)
  end)
  lu.assertFalse(ok)
  lu.assertStrContains(tostring(err), "boom in callback")
  -- The other completion was not lost: the next step delivers it.
  H.pump(function() return second end)
  lu.assertEquals(second, 1)
  lu.assertEquals(server:read(), "ab")
  H.close_all(server, client)
end

function TestErrors:test_step_inside_callback()
  local server, client = H.pair()
  local inner_got
  client:write("x", function()
    -- A synchronous call inside a callback steps the loop re-entrantly.
    inner_got = server:read(nil, 2000)
  end)
  H.pump(function() return inner_got end)
  lu.assertEquals(inner_got, "x")
  H.close_all(server, client)
end

TestMisuse = {}

function TestMisuse:tearDown() H.settle(2000) end

local function assert_raises(pattern, f, ...)
  local ok, err = pcall(f, ...)
  lu.assertFalse(ok, "expected an error matching " .. pattern)
  lu.assertStrContains(tostring(err), pattern, false)
end

function TestMisuse:test_bad_names()
  assert_raises("string", np.create, nil)
  assert_raises("string", np.create, 42)
  assert_raises("empty", np.create, "")
  assert_raises("NUL", np.create, "\\\\.\\pipe\\a\0b")
  assert_raises("longer than 256", np.create, "\\\\.\\pipe\\" .. ("x"):rep(260))
  assert_raises("string", np.open, {})
  -- the pipe directory itself is no pipe, on either platform
  for _, dots in ipairs { ".", ".." } do
    assert_raises("pipe name may not be", np.create, "\\\\.\\pipe\\" .. dots)
    assert_raises("pipe name may not be", np.open, "\\\\.\\pipe\\" .. dots)
  end
  if PLATFORM == "windows" then
    assert_raises("pipe name", np.create, "no-prefix")
    assert_raises("pipe name", np.open, "C:\\temp\\file")
  else
    assert_raises("pipe name", np.create, "relative/path")
  end
end

-- An argument error is the caller's: its position is the caller's line,
-- also where the Lua layer made the C call for it (a waiting form, an
-- open that retries), on every Lua.
function TestMisuse:test_argument_errors_point_at_the_caller()
  local server, client = H.pair({ pipe_mode = "message" }, { pipe_mode = "message" })
  local calls = {
    function() local _ = server:read(0, 10) end,
    function() local _ = server:read("x") end,
    function() local _ = server:write(5) end,
    function() local _ = client:transact(1) end,
    function() local _ = np.open(42) end,
    function() local _ = np.open(42, { timeout = 10 }) end,
    function() local _ = server:read_into("x") end,
  }
  for i, f in ipairs(calls) do
    local info = debug.getinfo(f, "S")
    local ok, err = pcall(f)
    lu.assertFalse(ok, i)
    lu.assertStrContains(err, ("%s:%d: bad argument"):format(info.short_src, info.linedefined),
      false, "call " .. i)
  end
  H.close_all(server, client)
end

function TestMisuse:test_bad_options()
  local name = H.name("opts")
  assert_raises("unknown option 'frist_pipe_instance'", np.create, name,
    { frist_pipe_instance = true })
  assert_raises("option 'first_pipe_instance'", np.create, name, { first_pipe_instance = 1 })
  assert_raises("option 'pipe_mode'", np.create, name, { pipe_mode = "stream" })
  for _, bad in ipairs { 0, 255, 256, -1, 1.5, "many" } do
    assert_raises("option 'max_instances'", np.create, name, { max_instances = bad })
  end
  assert_raises("option 'out_buffer_size'", np.create, name, { out_buffer_size = -1 })
  assert_raises("option 'in_buffer_size'", np.create, name, { in_buffer_size = 2 ^ 40 })
  assert_raises("option 'security'", np.create, name, { security = 7 })
  assert_raises("option keys must be strings", np.create, name, { true })
  assert_raises("table expected", np.create, name, "message")
  assert_raises("unknown option 'max_instances'", np.open, name, { max_instances = 1 })
  assert_raises("option 'read'", np.open, name, { read = "yes" })
  assert_raises("option 'security_qos_flags'", np.open, name, { security_qos_flags = "root" })
end

function TestMisuse:test_methods_on_closed_pipe_raise()
  local server = assert(np.create(H.name("closed")))
  server:close()
  lu.assertTrue(server:close()) -- twice is harmless
  assert_raises("closed", server.connect, server, function() end)
  assert_raises("closed", server.read, server, function() end)
  assert_raises("closed", server.write, server, "x", function() end)
  assert_raises("closed", server.try_read, server)
  assert_raises("closed", server.try_write, server, "x")
  assert_raises("closed", server.info, server)
  assert_raises("closed", server.disconnect, server)
end

-- An argument has the same number in every form of a call: with a callback
-- (handled in C) or without (the waiting form, in Lua), called as a method
-- or as a function; self is argument #1.
function TestMisuse:test_argument_numbers_count_self_in_every_form()
  local server, client = H.pair()
  local cb = function() end
  local function msg(f)
    local ok, err = pcall(f)
    lu.assertFalse(ok)
    return tostring(err)
  end
  lu.assertStrContains(msg(function() return client:write({}, cb) end), "bad argument #2 to 'write' (string expected, got table)")
  lu.assertStrContains(msg(function() return client:write({}) end), "bad argument #2 to 'write'")
  lu.assertStrContains(msg(function() return client.write(client, {}, cb) end), "bad argument #2 to 'write'")
  lu.assertStrContains(msg(function() return server:read(0, cb) end), "bad argument #2 to 'read' (positive byte count expected")
  lu.assertStrContains(msg(function() return server:read(0) end), "bad argument #2 to 'read'")
  lu.assertStrContains(msg(function() return server:read(nil, "soon") end), "bad argument #3 to 'read'")
  lu.assertStrContains(msg(function() return client:connect(cb) end), "bad argument #1 to 'connect' (server pipe expected")
  lu.assertStrContains(msg(function() return server:cancel("everything") end),
    "bad argument #2 to 'cancel' (invalid option 'everything'; \"connect\", \"read\", \"write\", "
      .. "\"readable\", \"writable\" or \"transact\" expected)")
  lu.assertStrContains(msg(function() return server:cancel("read", "BOGUS") end),
    "bad argument #3 to 'cancel' (invalid option 'BOGUS'; \"CANCELLED\" or \"TIMEOUT\" expected)")
  lu.assertStrContains(msg(function() return server:cancel("read\0x") end), "invalid option")
  lu.assertStrContains(msg(function() return server:readable({}) end), "bad argument #2 to 'readable'")
  H.close_all(server, client)
  lu.assertStrContains(msg(function() return server:read(cb) end), "bad argument #1 to 'read' (pipe is closed)")
  lu.assertStrContains(msg(function() return server:info() end), "bad argument #1 to 'info' (pipe is closed)")
  lu.assertStrContains(msg(function() return server.info({}) end), "bad argument #1 to 'info' (namedpipe.pipe expected, got table)")
end

-- The callback or the timeout comes last, one of them: a callback after a
-- timeout (or the reverse) is refused, not dropped; nothing is started.
function TestMisuse:test_callback_and_timeout_together_raise()
  local server, client = H.pair()
  local buf = np.buffer(8)
  local ran = false
  local cb = function() ran = true end
  local function msg(f)
    local ok, err = pcall(f)
    lu.assertFalse(ok)
    return tostring(err)
  end
  local after = "nothing expected after the callback or timeout"
  lu.assertStrContains(msg(function() return server:read(64, 5, cb) end), "bad argument #4 to 'read' (" .. after)
  lu.assertStrContains(msg(function() return server:read(64, cb, 5) end), "bad argument #4 to 'read' (" .. after)
  lu.assertStrContains(msg(function() return server:read_into(buf, 5, cb) end), "bad argument #4 to 'read_into' (" .. after)
  lu.assertStrContains(msg(function() return client:write("x", 5, cb) end), "bad argument #4 to 'write' (" .. after)
  lu.assertStrContains(msg(function() return client:write_frame("x", cb, 5) end), "bad argument #4 to 'write_frame' (" .. after)
  lu.assertStrContains(msg(function() return server:connect(5, cb) end), "bad argument #3 to 'connect' (" .. after)
  lu.assertStrContains(msg(function() return server:readable(5, cb) end), "bad argument #3 to 'readable' (" .. after)
  lu.assertStrContains(msg(function() return client:writable(cb, 5) end), "bad argument #3 to 'writable' (" .. after)
  -- trailing nils (a wrapper passing ... on) are fine
  client:write("ok", cb, nil)
  lu.assertEquals(server:read(nil, 2000, nil), "ok")
  H.pump(function() return ran end, 2000, "the write's callback")
  lu.assertEquals(np.pending(), 0) -- none of the refused calls started anything
  lu.assertEquals(buf:sub(1, 1), "\0") -- not busy: sub would raise
  H.close_all(server, client)
end

function TestMisuse:test_server_methods_on_client_raise()
  local server, client = H.pair()
  assert_raises("server pipe expected", client.connect, client, function() end)
  assert_raises("server pipe expected", client.disconnect, client)
  H.close_all(server, client)
end

function TestMisuse:test_bad_arguments()
  local server, client = H.pair()
  assert_raises("string expected", client.write, client, 42)
  assert_raises("string expected", client.write, client, nil)
  assert_raises("positive byte count", server.read, server, 0, function() end)
  assert_raises("positive byte count", server.read, server, -5, function() end)
  assert_raises("number expected", server.read, server, "ten", function() end)
  assert_raises("timeout", server.read, server, nil, -1)
  assert_raises("timeout", server.read, server, nil, "soon")
  assert_raises("timeout", client.write, client, "x", {})
  assert_raises("timeout", np.step, -1)
  assert_raises("timeout in milliseconds", np.step, "now")
  assert_raises("invalid option", server.cancel, server, "everything")
  assert_raises("bad argument #1", server.info, {})
  assert_raises("bad argument #1", np.methods.info, nil)
  -- A second read while one is pending is refused, the first unharmed.
  local cb, res = H.capture()
  server:read(cb)
  assert_raises("already pending", server.read, server, function() end)
  assert_raises("already pending", server.try_read, server)
  client:write("ok", function() end)
  H.pump(function() return res.done end)
  lu.assertEquals(res[1], "ok")
  H.close_all(server, client)
end

-- Arguments nothing would use are refused, not dropped: a callback given
-- to try_read, try_write, sleep or ready (which take none) would never
-- run, a timeout given to lines() would never apply; and ready() checks
-- what it is given whatever the interest (one interest alone was handed
-- on unchecked: a callback in the timeout's place started a callback
-- wait, an error named 'readable' at a line of the library).
function TestMisuse:test_arguments_nothing_would_use_are_refused()
  local server, client = H.pair()
  local function cb() error("never called") end
  local function msg(fn)
    local ok, err = pcall(fn)
    lu.assertFalse(ok)
    return tostring(err)
  end
  lu.assertStrContains(msg(function() return client:try_write("x", cb) end),
    "bad argument #3 to 'try_write' (nothing expected")
  lu.assertStrContains(msg(function() return client:try_write("x", 500) end),
    "bad argument #3 to 'try_write' (nothing expected")
  lu.assertStrContains(msg(function() return server:try_read(nil, cb) end),
    "bad argument #3 to 'try_read' (nothing expected")
  lu.assertStrContains(msg(function() return server:lines(500) end),
    "bad argument #2 to 'lines' (nothing expected")
  lu.assertStrContains(msg(function() return np.sleep(10, cb) end),
    "bad argument #2 to 'sleep' (nothing expected")
  for _, interest in ipairs { "readable", "writable", "both" } do
    lu.assertStrContains(msg(function() return server:ready(interest, cb) end),
      "bad argument #3 to 'ready' (timeout in milliseconds expected")
    lu.assertStrContains(msg(function() return server:ready(interest, -1) end),
      "bad argument #3 to 'ready' (timeout in milliseconds expected, got -1)")
    lu.assertStrContains(msg(function() return server:ready(interest, 10, cb) end),
      "bad argument #4 to 'ready' (nothing expected")
    lu.assertStrContains(msg(function() return np.methods.ready(5, interest) end),
      "bad argument #1 to 'ready' (namedpipe.pipe expected")
  end
  -- nothing was sent or started by the refused calls
  lu.assertEquals({ server:try_read() }, { nil, "operation would block", "WOULDBLOCK", 0 })
  H.close_all(server, client)
  lu.assertStrContains(msg(function() return server:ready("readable", 10) end),
    "bad argument #1 to 'ready' (pipe is closed)")
end

-- Option tables are read as they are: one with a metatable is refused (an
-- option its __index supplied was dropped without a word, a
-- first_pipe_instance among them, while np.open's timeout was read through
-- it); and an option error points at the caller's line, np.open's too.
function TestMisuse:test_option_tables_are_plain_and_their_errors_point_at_the_caller()
  local name = H.name("opt-meta")
  local via = setmetatable({}, { __index = { pipe_mode = "message", first_pipe_instance = true } })
  local function msg(fn)
    local ok, err = pcall(fn)
    lu.assertFalse(ok)
    return tostring(err)
  end
  lu.assertStrContains(msg(function() return (np.create(name, via)) end),
    "bad argument #2 to 'create' (a table without a metatable expected")
  local s = assert(np.create(name))
  lu.assertStrContains(msg(function() return (np.open(name, via)) end),
    "bad argument #2 to 'open' (a table without a metatable expected")
  lu.assertStrContains(msg(function() return (np.open(name, setmetatable({ timeout = 100 }, {}))) end),
    "bad argument #2 to 'open' (a table without a metatable expected")
  for _, opts in ipairs { { bogus = 1 }, { bogus = 1, timeout = 100 } } do
    local err = msg(function() return (np.open(name, opts)) end)
    lu.assertStrContains(err, "test_errors.lua:")
    lu.assertStrContains(err, "bad argument #2 to 'open' (unknown option 'bogus')")
  end
  lu.assertStrContains(msg(function() return (np.open(name, "message")) end), "test_errors.lua:")
  lu.assertStrContains(msg(function() return (np.serve(H.name("opt-meta-serve"), via, function() end)) end),
    "bad argument #2 to 'serve' (a table without a metatable expected")
  s:close()
end

-- Errors name the function the caller called: np.serve's options and name
-- (create's checks), np.run's function (spawn's), and transact's request
-- also while bytes read ahead would answer it PIPE_BUSY at once.
function TestMisuse:test_errors_name_the_function_called()
  local function msg(fn)
    local ok, err = pcall(fn)
    lu.assertFalse(ok)
    return tostring(err)
  end
  local err = msg(function() return (np.serve(H.name("serve-bogus"), { bogus = 1 }, function() end)) end)
  lu.assertStrContains(err, "bad argument #2 to 'serve' (unknown option 'bogus')")
  lu.assertStrContains(err, "test_errors.lua:")
  lu.assertStrContains(msg(function() return (np.serve(42, nil, function() end)) end),
    "bad argument #1 to 'serve'")
  lu.assertStrContains(msg(function() return (np.run(42)) end),
    "bad argument #1 to 'run' (function expected, got number)")
  local s, c = H.pair({ pipe_mode = "message" }, { pipe_mode = "message" })
  assert(c:write("one\ntwo", 2000))
  lu.assertEquals(s:read_line(2000), "one") -- "two" is read ahead
  lu.assertStrContains(msg(function() return (s:transact(5)) end),
    "bad argument #2 to 'transact' (string expected, got number)")
  H.close_all(s, c)
end
