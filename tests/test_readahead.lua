--[[
tests/test_readahead.lua - what the framing readers read past the end of a
line or frame (the read-ahead) is handed out, in order and once, by every
kind of read that follows.

One write sends a stream of records, so the first framing read takes most
of it at once and everything after is served from the read-ahead: lines
(ending "\n" or "\r\n"), frames (a 4-byte big-endian length, then the
bytes, any of them "\n") and runs of raw bytes. The reader knows the
records and reads each with the method that fits, chosen at random for the
raw runs (read_exact, a series of read(n), a series of read_into) with
peek and np._read_ahead looked at on the way. Seeds: NP_READAHEAD_SEED
(one) or the fixed list below.
]]
local lu = require "luaunit"
local np = require "namedpipe"
local H = require "tests.helpers"

TestReadahead = {}

function TestReadahead:tearDown() H.settle(2000) end

local function u32be(n)
  return string.char(math.floor(n / 16777216) % 256, math.floor(n / 65536) % 256,
    math.floor(n / 256) % 256, n % 256)
end

-- Random bytes, "\n" and "\r" included unless plain (a line's content).
local function bytes(g, n, plain)
  local t = {}
  for i = 1, n do
    local b = g.rnd(256) - 1
    if plain and (b == 10 or b == 13) then b = 65 end
    t[i] = string.char(b)
  end
  return table.concat(t)
end

-- The records and the stream that carries them.
local function make_stream(g, count)
  local records, parts = {}, {}
  for i = 1, count do
    local kind = g.weighted { { 4, "line" }, { 3, "frame" }, { 3, "raw" } }
    local r = { kind = kind }
    if kind == "line" then
      r.text = bytes(g, g.rnd(41) - 1, true)
      parts[#parts + 1] = r.text .. (g.chance(3) and "\r\n" or "\n")
    elseif kind == "frame" then
      r.text = bytes(g, g.rnd(61) - 1)
      parts[#parts + 1] = u32be(#r.text) .. r.text
    else
      r.text = bytes(g, g.rnd(50))
      parts[#parts + 1] = r.text
    end
    records[i] = r
  end
  records[1] = { kind = "line", text = "first" } -- a framing read takes the rest ahead
  parts[1] = "first\n"
  for i, r in ipairs(records) do r.size = #parts[i] end -- its bytes in the stream
  return records, table.concat(parts)
end

-- Read a raw run of #want bytes some way; returns what was read.
local function read_raw(g, pipe, want)
  local how = g.pick { "exact", "read", "read_into" }
  if how == "exact" then return assert(pipe:read_exact(#want, 2000)) end
  local got = {}
  local left = #want
  while left > 0 do
    local n = g.rnd(left)
    if how == "read" then
      local s = assert(pipe:read(n, 2000))
      lu.assertTrue(#s >= 1 and #s <= n)
      got[#got + 1] = s
      left = left - #s
    else
      local buf = np.buffer(n)
      local k = assert(pipe:read_into(buf, 2000))
      lu.assertTrue(k >= 1 and k <= n)
      got[#got + 1] = buf:sub(1, k)
      left = left - k
    end
  end
  return table.concat(got)
end

-- peer_gone: the writer closes once it has written, so the pipe reaches
-- its end while bytes are still read ahead (they are still what the next
-- read gets, and peek counts them).
local function run_seed(seed, peer_gone)
  local g = H.generator(seed)
  local server, client = H.pair()
  local records, stream = make_stream(g, 300)
  assert(client:write(stream, 5000))
  if peer_gone then client:close() end
  local consumed = 0
  for i, r in ipairs(records) do
    local what = ("seed %d%s, record %d (%s)"):format(seed, peer_gone and " (peer gone)" or "", i,
      r.kind)
    if g.chance(8) then -- every byte not yet read is in the pipe or read ahead, once
      local ahead = np._read_ahead(server)
      lu.assertTrue(ahead <= #stream - consumed, what)
      local t, msg = server:peek()
      lu.assertEquals(t and t.available, #stream - consumed, what .. ": " .. tostring(msg))
      lu.assertNil(t.message, what) -- (byte mode)
      lu.assertTrue(server:readable(0), what)
    end
    local got
    if r.kind == "line" then
      got = assert(server:read_line(2000))
    elseif r.kind == "frame" then
      got = assert(server:read_frame(2000))
    else
      got = read_raw(g, server, r.text)
    end
    lu.assertEquals(got, r.text, what)
    consumed = consumed + r.size
  end
  lu.assertEquals(np._read_ahead(server), 0, ("seed %d: nothing left over"):format(seed))
  if peer_gone then
    local data, _, name = server:read(nil, 2000)
    lu.assertNil(data)
    lu.assertEquals(name, "EOF")
    lu.assertEquals(select(3, server:peek()), "EOF")
  else
    assert(client:write("tail\n", 2000))
    lu.assertEquals(server:read_line(2000), "tail")
  end
  H.close_all(server, client)
end

function TestReadahead:test_every_kind_of_read_takes_the_read_ahead_in_order()
  local seeds = { 1, 2, 3, 7, 42, 1000, 65535, 123456789 }
  local env = os.getenv("NP_READAHEAD_SEED")
  if env then seeds = { (assert(tonumber(env), "NP_READAHEAD_SEED: a number")) } end
  for _, seed in ipairs(seeds) do
    run_seed(seed)
    run_seed(seed, true)
  end
end

-- In message mode what a framing read leaves of a message is read as one
-- message: peek says so, as it says for one still in the pipe.
function TestReadahead:test_peek_counts_the_rest_of_a_message_read_ahead()
  local server, client = H.pair({ pipe_mode = "message" }, { pipe_mode = "message" })
  assert(client:write("ab\ncd", 2000))
  lu.assertEquals(server:read_line(2000), "ab")
  lu.assertEquals(server:peek(), { available = 2, message = 2 })
  lu.assertEquals(server:read(nil, 2000), "cd")
  H.close_all(server, client)
end

-- A bad timeout or a callback after it is refused as it is without bytes
-- read ahead, and what is read ahead stays for the next read.
function TestReadahead:test_bad_arguments_are_refused_when_bytes_are_read_ahead()
  local server, client = H.pair()
  assert(client:write("one\ntwo\n", 2000))
  lu.assertEquals(server:read_line(2000), "one")
  lu.assertTrue(np._read_ahead(server) > 0)
  local function cb() error("never called") end
  lu.assertErrorMsgContains("bad argument #3 to 'read'", server.read, server, nil, -1)
  lu.assertErrorMsgContains("bad argument #3 to 'read'", server.read, server, 2, 0 / 0)
  lu.assertErrorMsgContains("bad argument #2 to 'readable'", server.readable, server, "soon")
  lu.assertErrorMsgContains("bad argument #2 to 'readable'", server.readable, server, -5)
  lu.assertErrorMsgContains("bad argument #3 to 'read_line'", server.read_line, server, 50, cb)
  lu.assertErrorMsgContains("bad argument #4 to 'read_exact'", server.read_exact, server, 3, 50, cb)
  lu.assertErrorMsgContains("bad argument #3 to 'read_frame'", server.read_frame, server, 50, cb)
  lu.assertEquals(server:read_line(2000), "two")
  H.close_all(server, client)
end

-- A burst of short lines read one by one, in a task and outside one, with
-- a partial line at the end of what came first completed by a later write.
function TestReadahead:test_lines_of_one_burst_then_a_line_split_across_writes()
  local server, client = H.pair()
  local lines = {}
  for i = 1, 2000 do lines[i] = ("line %d"):format(i) end
  assert(client:write(table.concat(lines, "\n") .. "\npart", 5000))
  for i = 1, 1000 do lu.assertEquals(server:read_line(2000), lines[i]) end
  local got = {}
  np.spawn(function()
    for _ = 1001, 2000 do got[#got + 1] = server:read_line(2000) end
    got[#got + 1] = server:read_line(2000)
  end)
  np.spawn(function()
    np.sleep(5)
    assert(client:write("ial\r\n", 2000))
  end)
  np.run()
  lu.assertEquals(#got, 1001)
  for i = 1001, 2000 do lu.assertEquals(got[i - 1000], lines[i]) end
  lu.assertEquals(got[1001], "partial")
  H.close_all(server, client)
end

-- A host polls with timeout 0 while its records trickle in, a few bytes
-- per step: every poll but the last of a record times out, and what it
-- had taken is kept for the next (as pieces: each byte is joined and
-- looked at once, however many polls). Between polls it sometimes looks
-- (peek, np._read_ahead) or reads another way (a raw run by read or
-- read_exact, a poll of another kind), which must see the same bytes.
local function run_polling(seed)
  local g = H.generator(seed)
  local server, client = H.pair()
  local records, stream = make_stream(g, 120)
  local sent = 0
  local function trickle()
    if sent < #stream then
      local n = math.min(#stream - sent, g.rnd(40))
      client:write(stream:sub(sent + 1, sent + n), function() end)
      sent = sent + n
    end
    np.step(1)
  end
  local consumed, polls = 0, 0
  for i, r in ipairs(records) do
    local what = ("seed %d, record %d (%s)"):format(seed, i, r.kind)
    local got, _
    while true do
      if g.chance(6) then -- what is unread: read ahead or in the pipe, once
        local ahead = np._read_ahead(server)
        lu.assertTrue(ahead <= sent - consumed, what)
        lu.assertEquals(assert(server:peek()).available, sent - consumed, what)
      end
      local name
      if r.kind == "line" then
        got, _, name = server:read_line(0)
      elseif r.kind == "frame" then
        got, _, name = server:read_frame(0)
      elseif g.chance(2) then
        got, _, name = server:read_exact(#r.text, 0)
      else -- a raw run read whole once it is all there, some other way
        if sent - consumed >= #r.text then got = read_raw(g, server, r.text) end
        name = got and nil or "TIMEOUT"
      end
      if got then break end
      lu.assertEquals(name, "TIMEOUT", what)
      polls = polls + 1
      trickle()
    end
    lu.assertEquals(got, r.text, what)
    consumed = consumed + r.size
  end
  lu.assertTrue(polls > #records, "the records came in pieces")
  lu.assertEquals(np._read_ahead(server), 0)
  H.close_all(server, client)
end

function TestReadahead:test_polling_with_timeout_zero_while_records_trickle_in()
  local seeds = { 1, 2, 3, 5, 8 }
  local env = os.getenv("NP_READAHEAD_SEED")
  if env then seeds = { (assert(tonumber(env), "NP_READAHEAD_SEED: a number")) } end
  for _, seed in ipairs(seeds) do run_polling(seed) end
end

-- A framing read unwound by an error while it waits for more: the
-- messages it had taken come back as read-ahead, and so does the one its
-- pending read gets after it (or the pipe still has it), each as its own.
function TestReadahead:test_an_unwound_framing_read_gives_back_its_messages()
  local server, client = H.pair({ pipe_mode = "message" }, { pipe_mode = "message" })
  assert(client:write("m1", 2000))
  assert(client:write("", 2000))
  assert(client:write("m2", 2000))
  np.spawn(function()
    np.sleep(50) -- read_line has taken all three and waits for a newline
    client:write("m3", function() end)
    error("task failed on purpose")
  end)
  local ok, err = pcall(server.read_line, server, 2000)
  lu.assertFalse(ok)
  lu.assertStrContains(tostring(err), "task failed on purpose")
  for _, m in ipairs { "m1", "", "m2", "m3" } do lu.assertEquals(server:read(nil, 2000), m) end
  lu.assertEquals(select(3, server:read(nil, 20)), "TIMEOUT")
  H.close_all(server, client)
end

-- A framing read whose first read has ended, cancelled before it has
-- looked at what came (a callback of the same step cancels it): a whole
-- line is returned, as a read() returns what it got, and what follows it
-- stays readable; a line not whole ends with the cancel's reason and its
-- start stays readable. On the main thread and in a task, on both kinds of
-- pipe, with either reason.
function TestReadahead:test_a_cancel_once_the_first_read_has_ended_stops_a_framing_read()
  local cases = { { "whole\nrest", "whole", nil, "rest" }, { "part", nil, "CANCELLED", "part" },
    { "part", nil, "TIMEOUT", "part" } }
  for _, mode in ipairs { "byte", "message" } do
    for _, where in ipairs { "main", "task" } do
      for _, case in ipairs(cases) do
        local what = ("%s pipe, %s, %q"):format(mode, where, case[1])
        local opts = { pipe_mode = mode }
        local server, client = H.pair(opts, opts)
        local reason = case[3] or "CANCELLED"
        local r
        if where == "main" then
          client:write(case[1], function() -- from the read_line's first step
            H.pump(function() return server:_busy("read") == 0 end, 2000, what)
            server:cancel("read", reason)
          end)
          r = table.pack(server:read_line(2000))
        else
          -- (a read of another pipe, ended by the same step after the
          -- read_line's read: its callback cancels before the task resumes)
          local other, other_client = H.pair()
          other:read(function() server:cancel("read", reason) end)
          np.spawn(function() r = table.pack(server:read_line(2000)) end)
          H.pump(function() return server:_busy("read") == 1 end, 2000, what)
          assert(client:write(case[1], 2000))
          assert(other_client:write("x", 2000))
          H.pump(function() return r ~= nil end, 3000, what)
          H.close_all(other, other_client)
        end
        lu.assertEquals(r[1], case[2], what)
        lu.assertEquals(r[3], case[3], what)
        lu.assertEquals(server:read(nil, 2000), case[4], what)
        H.close_all(server, client)
      end
    end
  end
end

-- A framing read owns the read slot from its call to its return, also in
-- the gap between two of its reads, when the pipe has no read of its own
-- pending: every other reading call a callback makes then is refused as
-- one made while a read is pending is, and the framing read loses and
-- reorders nothing. The callbacks here run in the step that ended the
-- framing read's first read or its second one (the first read of its own
-- general loop), on the main thread, in a coroutine of the script's own
-- (which waits by stepping, as the main thread does) and in a task; the
-- reader is the client, so that transact is one of the calls.
function TestReadahead:test_a_framing_read_owns_the_read_slot_between_its_reads()
  local calls, names = H.reading_calls, H.reading_call_names
  for _, mode in ipairs { "byte", "message" } do
    for _, where in ipairs { "main", "coroutine", "task" } do
      for _, gap in ipairs { 1, 2 } do
        for _, call in ipairs(names) do
          if call ~= "transact" or mode == "message" then
            local what = ("%s pipe, %s, gap %d, %s"):format(mode, where, gap, call)
            local opts = { pipe_mode = mode }
            local server, client = H.pair(opts, opts)
            local refused
            local function try_in_gap()
              -- (a task is resumed by its read's end and reads on at once)
              if where ~= "task" then
                H.pump(function() return client:_busy("read") == 0 end, 2000, what)
              end
              local ok, err = pcall(calls[call], client)
              refused = not ok and tostring(err) or ("accepted: " .. call)
            end
            local r
            local function read_line()
              -- (not inside a pcall in a task: Lua 5.1 cannot yield across one)
              if where == "task" then
                r = table.pack(true, client:read_line(3000))
              else
                r = table.pack(pcall(client.read_line, client, 3000))
              end
            end
            -- "par", then "t" (gap 2), then the rest, each in a read of its own
            if gap == 1 then
              server:write("par", try_in_gap)
            else
              server:write("par")
              np.spawn(function()
                np.sleep(30)
                server:write("t", try_in_gap)
              end)
            end
            np.spawn(function()
              np.sleep(gap == 1 and 30 or 80)
              assert(server:write(gap == 1 and "tial\nz" or "ial\nz", 2000))
            end)
            H.run_in(where, read_line, 3000, what)
            lu.assertStrContains(refused or "no callback ran", "a read is already pending", false, what)
            lu.assertEquals({ r[1], r[2] }, { true, "partial" }, what)
            lu.assertEquals(client:read(nil, 2000), "z", what)
            H.close_all(server, client)
          end
        end
      end
    end
  end
end

-- A framing read refused in another's gap (above) leaves that one as it
-- was: a cancel that follows still stops it, and what it had read stays
-- readable, in order.
function TestReadahead:test_a_framing_read_refused_in_anothers_gap_leaves_it_alone()
  for _, mode in ipairs { "byte", "message" } do
    for _, where in ipairs { "main", "coroutine" } do
      local what = ("%s pipe, %s"):format(mode, where)
      local opts = { pipe_mode = mode }
      local server, client = H.pair(opts, opts)
      local refused
      server:write("par", function()
        H.pump(function() return client:_busy("read") == 0 end, 2000, what)
        refused = select(2, pcall(client.read_exact, client, 2, 100))
        client:cancel("read")
      end)
      local r
      H.run_in(where, function() r = table.pack(client:read_line(3000)) end)
      lu.assertStrContains(tostring(refused), "a read is already pending", false, what)
      lu.assertEquals({ r[1], r[3] }, { nil, "CANCELLED" }, what)
      assert(server:write("tial\n", 2000))
      lu.assertEquals(client:read_line(2000), "partial", what)
      H.close_all(server, client)
    end
  end
end

-- A disconnect in a framing read's gap ends it (NOT_CONNECTED, making no
-- other read), and the next client's reads may start at once: the hold
-- was the last client's. On the main thread (the hold of the first read,
-- waited for in C) and in a coroutine (the Lua layer's waits').
function TestReadahead:test_a_disconnect_in_a_framing_reads_gap_frees_the_slot()
  for _, where in ipairs { "main", "coroutine" } do
    local server, client, name = H.pair()
    local next_client, got
    client:write("par", function()
      H.pump(function() return server:_busy("read") == 0 end, 2000, where)
      assert(server:disconnect())
      local connected
      server:connect(function(ok) connected = ok end)
      next_client = assert(np.open(name))
      H.pump(function() return connected ~= nil end, 2000, where)
      server:read(function(d) got = d end) -- (refused while the hold was kept)
      assert(next_client:write("new", 2000))
    end)
    local r
    H.run_in(where, function() r = table.pack(server:read_line(2000)) end)
    lu.assertEquals(r[3], "NOT_CONNECTED", where)
    H.pump(function() return got ~= nil end, 2000, where)
    lu.assertEquals(got, "new", where)
    H.close_all(server, client, next_client)
  end
end

-- A task that cannot yield where it calls read_line (inside a pcall on
-- Lua 5.1: the call raises) loses nothing that an earlier read_line kept:
-- either it gets the line, or the next read_line does.
function TestReadahead:test_a_framing_read_that_cannot_wait_keeps_what_was_kept()
  local server, client = H.pair()
  assert(server:write("par", 2000))
  H.pump(function() return np._read_ahead(client) > 0 or select(3, client:read_line(0)) ~= "TIMEOUT" end,
    2000, "the kept start")
  lu.assertEquals(np._read_ahead(client), 3)
  local r
  np.spawn(function() r = table.pack(pcall(client.read_line, client, 2000)) end)
  np.spawn(function()
    np.sleep(30)
    assert(server:write("tial\n", 2000))
  end)
  H.pump(function() return r ~= nil end, 3000, "the task's read_line")
  if r[1] then
    lu.assertEquals(r[2], "partial")
  else -- (Lua 5.1)
    lu.assertStrContains(tostring(r[2]), "yield")
    lu.assertEquals(client:read_line(2000), "partial")
  end
  H.close_all(server, client)
end

-- read_exact(0) needs no bytes: "" at once, with nothing held and the
-- pipe empty (not a read that waits for some), in a task too.
function TestReadahead:test_read_exact_of_no_bytes_reads_nothing()
  for _, mode in ipairs { "byte", "message" } do
    local opts = { pipe_mode = mode }
    local server, client = H.pair(opts, opts)
    lu.assertEquals(table.pack(server:read_exact(0, 50)), { "", n = 1 }, mode)
    local r
    np.spawn(function() r = table.pack(server:read_exact(0, 50)) end)
    H.pump(function() return r ~= nil end, 2000, mode)
    lu.assertEquals(r, { "", n = 1 }, mode .. ", task")
    assert(client:write("x", 2000))
    lu.assertEquals(server:read(nil, 2000), "x", mode)
    H.close_all(server, client)
  end
end

-- A byte count is taken and refused as the C methods take and refuse it,
-- whether bytes are read ahead or not: a numeric string or a float with
-- an integer value will do, and the same words refuse the rest.
function TestReadahead:test_counts_are_checked_alike_with_bytes_read_ahead()
  local server, client = H.pair()
  local function refusal(...)
    local ok, err = pcall(server.read, server, ...)
    lu.assertFalse(ok)
    return (tostring(err):gsub("^[^:]*:%d+: ", ""))
  end
  local bad = { "x", 2.5, 0, -1, true, {}, 2 ^ 63, 0 / 0 }
  local plain = {}
  for i, v in ipairs(bad) do plain[i] = refusal(v, 10) end
  assert(client:write("one\nabcdefghij", 2000))
  lu.assertEquals(server:read_line(2000), "one")
  lu.assertTrue(np._read_ahead(server) > 0)
  for i, v in ipairs(bad) do lu.assertEquals(refusal(v, 10), plain[i], tostring(v)) end
  lu.assertEquals(server:read("3", 2000), "abc")
  lu.assertEquals(server:read(3.0, 2000), "def")
  lu.assertEquals(server:try_read("2"), "gh")
  lu.assertEquals(server:read(nil, 2000), "ij")
  H.close_all(server, client)
end

-- read_start's refusals point at its caller's line, bytes read ahead or
-- not (the Lua layer that hands the read-ahead out raises them then).
function TestReadahead:test_read_start_refusals_point_at_the_caller()
  local server, client = H.pair()
  local function line_of(f)
    local ok, err = pcall(f)
    lu.assertFalse(ok)
    return tostring(err):match("^[^:]*:(%d+):"), tostring(err)
  end
  local here = debug.getinfo(1, "l").currentline
  local l1, e1 = line_of(function() server:read_start(5) end)
  lu.assertEquals(tonumber(l1), here + 1, e1)
  assert(client:write("one\ntwo", 2000))
  lu.assertEquals(server:read_line(2000), "one")
  here = debug.getinfo(1, "l").currentline
  local l2, e2 = line_of(function() server:read_start(5) end)
  lu.assertEquals(tonumber(l2), here + 1, e2)
  lu.assertStrContains(e2, "bad argument #2 to 'read_start' (function expected, got number)")
  -- and a read_start while one waits for the read-ahead is refused so too
  server:read_start(function() end)
  here = debug.getinfo(1, "l").currentline
  local l3, e3 = line_of(function() server:read_start(function() end) end)
  lu.assertEquals(tonumber(l3), here + 1, e3)
  lu.assertStrContains(e3, "already pending")
  server:read_stop()
  H.close_all(server, client)
end

-- Empty messages read ahead stay messages: after a read_exact that takes
-- the bytes before them, after a read_start withdrawn before its first
-- call, and at the end of the stream, where read_line gives no line for
-- them (a later read() does give each).
function TestReadahead:test_empty_messages_read_ahead_are_kept()
  local mopts = { pipe_mode = "message" }
  local function pair_with(...)
    local server, client = H.pair(mopts, mopts)
    for _, m in ipairs { ... } do assert(client:write(m, 2000)) end
    lu.assertEquals(select(3, server:read_line(50)), "TIMEOUT") -- all read ahead
    return server, client
  end
  local server, client = pair_with("ab", "")
  lu.assertEquals(server:read_exact(2, 2000), "ab")
  lu.assertEquals(server:read(nil, 2000), "")
  lu.assertEquals(select(3, server:read(nil, 20)), "TIMEOUT")
  H.close_all(server, client)

  server, client = pair_with("")
  lu.assertEquals(server:read_exact(0, 2000), "")
  lu.assertEquals(server:read(nil, 2000), "")
  H.close_all(server, client)

  server, client = pair_with("", "xy")
  server:read_start(function() error("withdrawn before its first call") end)
  server:read_stop()
  lu.assertEquals(server:read(nil, 2000), "")
  lu.assertEquals(server:read(nil, 2000), "xy")
  H.close_all(server, client)

  server, client = H.pair(mopts, mopts)
  assert(client:write("x\n", 2000))
  assert(client:write("", 2000))
  client:close()
  local lines = {}
  for line in server:lines() do lines[#lines + 1] = line end
  lu.assertEquals(lines, { "x" })
  lu.assertEquals(server:read(nil, 2000), "")
  lu.assertEquals(select(3, server:read(nil, 2000)), "EOF")
  H.close_all(server, client)
end
