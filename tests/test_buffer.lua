-- np.buffer and pipe:read_into: reads that land in a buffer the caller
-- keeps, instead of a new string per read.
local lu = require "luaunit"
local np = require "namedpipe"
local H = require "tests.helpers"

TestBuffer = {}

function TestBuffer:tearDown() H.settle(2000) end

function TestBuffer:test_buffer_is_zeroed_and_sub_counts_as_string_sub()
  local buf = np.buffer(6)
  lu.assertEquals(#buf, 6)
  lu.assertEquals(buf:sub(), ("\0"):rep(6))
  local server, client = H.pair()
  client:write("abcdef")
  lu.assertEquals(server:read_into(buf, 2000), 6)
  local s = "abcdef"
  for _, ij in ipairs { { 1, 6 }, { 2, 3 }, { -2, -1 }, { 0, 100 }, { 4, 2 }, { -100, 2 }, { 3, -100 } } do
    lu.assertEquals(buf:sub(ij[1], ij[2]), s:sub(ij[1], ij[2]), table.concat(ij, ","))
  end
  lu.assertEquals(buf:sub(4), "def")
  lu.assertStrContains(tostring(buf), "namedpipe buffer (6 bytes)")
  H.close_all(server, client)
end

function TestBuffer:test_byte_stream_in_pieces_keeps_every_byte_in_order()
  local server, client = H.pair()
  local data = {}
  for i = 1, 3000 do data[i] = string.char(i % 251) end
  data = table.concat(data)
  client:write(data, function() end)
  local buf, got = np.buffer(7), {}
  local total = 0
  while total < #data do
    local n = assert(server:read_into(buf, 2000))
    lu.assertTrue(n >= 1 and n <= 7, "n = " .. n)
    got[#got + 1] = buf:sub(1, n)
    total = total + n
  end
  lu.assertEquals(total, #data)
  lu.assertEquals(table.concat(got), data)
  H.close_all(server, client)
end

function TestBuffer:test_large_buffer_takes_what_is_there()
  local server, client = H.pair()
  local data = ("0123456789"):rep(5000) -- 50,000 bytes, one write
  lu.assertEquals(client:write(data, 2000), #data)
  local buf, parts = np.buffer(1024 * 1024), {}
  local total = 0
  while total < #data do
    local n = assert(server:read_into(buf, 2000))
    parts[#parts + 1] = buf:sub(1, n)
    total = total + n
  end
  lu.assertEquals(table.concat(parts), data)
  H.close_all(server, client)
end

function TestBuffer:test_message_mode_a_longer_message_comes_in_parts()
  local server, client = H.pair({ pipe_mode = "message" }, { pipe_mode = "message" })
  for _, m in ipairs { "abc", "defghij", "", "k" } do client:write(m, function() end) end
  local buf = np.buffer(4)
  local function next_part()
    local n = assert(server:read_into(buf, 2000))
    return buf:sub(1, n)
  end
  lu.assertEquals(next_part(), "abc")
  lu.assertEquals(next_part(), "defg") -- as read(4): the rest comes next
  lu.assertEquals(next_part(), "hij")
  lu.assertEquals(next_part(), "") -- a zero-length message is a message
  lu.assertEquals(next_part(), "k")
  H.close_all(server, client)
end

function TestBuffer:test_callback_form_and_busy_buffer_is_refused()
  local server, client = H.pair()
  local buf = np.buffer(16)
  local cb, res = H.capture()
  server:read_into(buf, cb)
  lu.assertFalse(res.done) -- never from inside the call
  -- while a read fills it, the buffer can be neither read nor filled again
  lu.assertErrorMsgContains("being filled by a pending read_into", buf.sub, buf)
  lu.assertErrorMsgContains("bad argument #2 to 'read_into' (buffer is being filled",
    function() client:read_into(buf, function() end) end)
  lu.assertErrorMsgContains("a read is already pending",
    function() server:read_into(np.buffer(1), function() end) end)
  lu.assertStrContains(tostring(buf), "being filled")
  client:write("xyz")
  H.pump(function() return res.done end, 5000, "read_into callback")
  lu.assertEquals(res.n, 1)
  lu.assertEquals(res[1], 3)
  lu.assertEquals(buf:sub(1, 3), "xyz")
  H.close_all(server, client)
end

function TestBuffer:test_end_of_stream_timeout_and_close()
  local server, client = H.pair()
  local buf = np.buffer(8)
  local n, msg, name = server:read_into(buf, 50)
  lu.assertNil(n)
  lu.assertEquals(name, "TIMEOUT", msg)
  -- the buffer is free again after a cancelled read
  lu.assertEquals(buf:sub(1, 1), "\0")
  local cb, res = H.capture()
  server:read_into(buf, cb)
  server:close()
  H.pump(function() return res.done end, 5000, "CLOSED")
  lu.assertEquals(res[3], "CLOSED")
  lu.assertEquals(#buf:sub(), 8)
  n, msg, name = client:read_into(buf, 2000)
  lu.assertNil(n)
  lu.assertEquals(name, "EOF", msg)
  H.close_all(client)
end

function TestBuffer:test_bytes_read_ahead_come_first()
  local server, client = H.pair()
  client:write("line one\nrest of it")
  lu.assertEquals(server:read_line(2000), "line one")
  local buf = np.buffer(4)
  lu.assertEquals(server:read_into(buf, 2000), 4)
  lu.assertEquals(buf:sub(), "rest")
  local cb, res = H.capture()
  server:read_into(buf, cb) -- callback form, still from what was read ahead
  H.pump(function() return res.done end, 2000, "read-ahead callback")
  lu.assertEquals({ res[1], buf:sub() }, { 4, " of " })
  lu.assertEquals(server:read_into(buf, 2000), 2)
  lu.assertEquals(buf:sub(1, 2), "it")
  H.close_all(server, client)
end

function TestBuffer:test_bytes_read_ahead_are_the_callbacks_until_it_runs()
  -- read_into's callback form takes bytes read ahead at once, but its
  -- callback runs from a later step: till then nobody else may use buf
  local server, client = H.pair()
  local s2, c2 = H.pair()
  client:write("line\nabcd")
  lu.assertEquals(server:read_line(2000), "line")
  c2:write("WXYZ")
  local buf, seen = np.buffer(4), nil
  server:read_into(buf, function(n) seen = buf:sub(1, n) end)
  lu.assertErrorMsgContains("being filled", buf.sub, buf)
  lu.assertErrorMsgContains("bad argument #2 to 'read_into' (buffer is being filled",
    function() s2:read_into(buf, function() end) end)
  H.pump(function() return seen end, 2000, "read-ahead callback")
  lu.assertEquals(seen, "abcd")
  lu.assertEquals(s2:read_into(buf, 2000), 4) -- free again
  lu.assertEquals(buf:sub(), "WXYZ")
  H.close_all(server, client, s2, c2)
end

function TestBuffer:test_unreferenced_buffer_survives_collection_while_filled()
  local server, client = H.pair()
  local got
  do
    local buf = np.buffer(32)
    server:read_into(buf, function(n) got = buf:sub(1, n) end)
  end
  collectgarbage()
  collectgarbage()
  client:write("kept alive")
  H.pump(function() return got end, 5000, "read_into")
  lu.assertEquals(got, "kept alive")
  H.close_all(server, client)
end

function TestBuffer:test_bad_arguments_name_the_argument()
  local server, client = H.pair()
  lu.assertErrorMsgContains("bad argument #1 to 'buffer' (buffer size of 1 to 2147483647 bytes expected)",
    function() np.buffer(0) end)
  lu.assertErrorMsgContains("bad argument #1 to 'buffer' (number expected, got string)",
    function() np.buffer("x") end)
  lu.assertErrorMsgContains("bad argument #2 to 'read_into' (namedpipe.buffer expected, got string)",
    function() server:read_into("x", function() end) end)
  lu.assertErrorMsgContains("bad argument #2 to 'read_into' (namedpipe.buffer expected, got no value)",
    function() server:read_into() end)
  lu.assertErrorMsgContains("bad argument #3 to 'read_into' (timeout in milliseconds expected",
    function() server:read_into(np.buffer(1), "soon") end)
  lu.assertErrorMsgContains("bad argument #2 to 'sub' (number expected, got string)",
    function() np.buffer(1):sub("a") end)
  H.close_all(server, client)
end

function TestBuffer:test_state_closes_with_a_read_into_pending()
  -- The buffer is collected at lua_close while the read still fills it (the
  -- kernel's, on Windows): its bytes must outlive the loop's drain.
  local code = [[
    local np = require "namedpipe"
    local name = ...
    local s = assert(np.create(name))
    local c = assert(np.open(name))
    assert(s:connect(2000))
    s:read_into(np.buffer(65536), function() end)
    c:read_into(np.buffer(10), function() end)
    np.step(0)
    collectgarbage()
    io.write("pending=", np.pending(), "\n")
  ]]
  local ok, out = H.run_lua(code, H.name("child"))
  lu.assertEquals(tonumber(out:match("pending=(%d+)")), 2, out)
  lu.assertTrue(ok, "child state did not exit cleanly: " .. out)
end
