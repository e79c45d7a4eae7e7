--[[
tests/test_readahead_model.lua - every way of reading, against a model of
what the writer sent, at random: the plain reads (read, read(n), read_into,
try_read, read(cb), read_start in several forms, reads in tasks), the
framing reads with timeouts of 0, 10 and 2000 ms (so that what they take
is kept as read-ahead, as a rope or cut in place), waiting reads unwound
by an error (their bytes handed over), cancels and disconnects while a
framing read or a read_start waits, transact while bytes are read ahead,
reading calls that callbacks try between a read_line's reads or after a
waiting read's read ended (before it returned, or as an error unwinds
it), and calls queued behind an abandoned read when the client is
disconnected.

The model is the writer's messages not yet taken, the first perhaps in
part. On a message pipe a plain read takes one message (read(n) its first
n bytes, the rest next) and the framing reads take bytes across messages;
what the Lua layer holds read ahead is always the model's front, message
for message (np._read_ahead's list of lengths is checked against it after
every step). On a byte pipe the messages are only where the bytes came
from: a read takes any prefix of what is there.

Seeds: NP_READAHEAD_SEED (one) or the fixed lists below; steps per seed:
NP_READAHEAD_STEPS. A failure names its seed and the last operations.
]]
local lu = require "luaunit"
local np = require "namedpipe"
local compat = require "namedpipe.compat"
local H = require "tests.helpers"

TestReadaheadModel = {}

local saved_max_frame
function TestReadaheadModel:setUp()
  saved_max_frame = np.max_frame_size
  np.max_frame_size = 64 -- (so that a frame announced too long is a case too)
end
function TestReadaheadModel:tearDown()
  np.max_frame_size = saved_max_frame
  H.settle(2000)
end

local unpack_ = table.unpack or unpack -- luacheck: ignore 113

local OPS = {
  { 25, "write" }, { 4, "write_frame" }, { 10, "read" }, { 6, "read_n" }, { 5, "read_into" },
  { 4, "try_read" }, { 14, "read_line" }, { 8, "read_exact" }, { 5, "read_frame" }, { 4, "peek" },
  { 4, "read_start_all" }, { 3, "read_start_some" }, { 3, "read_start_stop" },
  { 3, "read_start_cancel" }, { 3, "read_cb" }, { 3, "read_cb_cancel" }, { 4, "abandon_line" },
  { 3, "abandon_read" }, { 2, "abandon_exact" }, { 2, "abandon_frame" }, { 2, "abandon_into" },
  { 2, "abandon_transact" }, { 2, "disconnect" }, { 2, "disconnect_during_line" },
  { 3, "cancel_during_line" }, { 2, "disconnect_during_start" }, { 2, "transact" },
  { 4, "task_line" }, { 3, "task_read" }, { 2, "stop_then_read_in_callback" },
  { 4, "reads_in_a_lines_gaps" }, { 2, "queued_then_disconnect" }, { 4, "reads_in_a_reads_gap" },
}

-- Reading calls a callback may try while a framing read is in progress,
-- or once a waiting read's read has ended but before it has returned: each
-- must be refused ("already pending").
local INTRUDERS = {
  function(p) p:read(function() end) end,
  function(p) p:read(3, function() end) end,
  function(p) p:read_into(np.buffer(8), function() end) end,
  function(p) p:readable(function() end) end,
  function(p) p:try_read() end,
  function(p) p:read_start(function() end) end,
  function(p) p:read_line(0) end,
  function(p) p:read_exact(1, 0) end,
  function(p) p:read_frame(0) end,
  function(p) p:read(nil, 0) end,
  function(p) p:ready("both", 0) end,
}

local function run(seed, steps, bytes_only)
  local g = H.generator(seed)
  local mopts = bytes_only and {} or { pipe_mode = "message" }
  local server, client, name = H.pair(mopts, mopts)
  local queue, trace = {}, {}

  local function fail(msg)
    lu.fail(("seed %d%s: %s\n  last operations: %s"):format(seed, bytes_only and " (byte pipe)" or "",
      msg, table.concat(trace, " ", math.max(1, #trace - 25))))
  end
  local function eq(got, want, what)
    if got ~= want then
      fail(("%s: got %s, expected %s"):format(what, got == nil and "nil" or ("%q"):format(tostring(got)),
        want == nil and "nil" or ("%q"):format(tostring(want))))
    end
  end
  local function text()
    if g.chance(6) then return "" end
    local t = {}
    for i = 1, g.rnd(30) do t[i] = g.chance(8) and "\n" or string.char(96 + g.rnd(6)) end
    return table.concat(t)
  end
  local function total()
    local n = 0
    for _, m in ipairs(queue) do n = n + #m end
    return n
  end
  -- k bytes taken from the front, across messages (a framing read)
  local function take_bytes(k)
    while k > 0 and #queue > 0 do
      local m = #queue[1]
      if m > k then
        queue[1] = queue[1]:sub(k + 1)
        break
      end
      k = k - m
      table.remove(queue, 1)
    end
  end
  -- what a plain read of at most n bytes gets on a message pipe
  local function take_head(n)
    local head = queue[1]
    if not n or n >= #head then
      table.remove(queue, 1)
      return head
    end
    queue[1] = head:sub(n + 1)
    return head:sub(1, n)
  end
  -- a plain read's result on a byte pipe: any prefix of what was written
  local function take_prefix(got, n, what)
    local all = table.concat(queue)
    if type(got) ~= "string" or #got == 0 or (n and #got > n) or all:sub(1, #got) ~= got then
      fail(("%s: got %s from %q"):format(what, tostring(got), all))
    end
    take_bytes(#got)
  end
  -- a plain read's result, either kind of pipe
  local function took(got, n, what)
    if bytes_only then return take_prefix(got, n, what) end
    eq(got, take_head(n), what)
  end
  local function drop_empty() -- (a byte pipe has no empty messages)
    local q = {}
    for _, m in ipairs(queue) do if m ~= "" then q[#q + 1] = m end end
    queue = q
  end
  local function check_front(what)
    local ahead, lens = np._read_ahead(server)
    if bytes_only then
      if lens ~= nil then fail(what .. ": message lengths kept on a byte pipe") end
      if ahead > total() then fail(what .. ": more read ahead than written") end
      return
    end
    local sum = 0
    for i, l in ipairs(lens or {}) do
      sum = sum + l
      eq(l, queue[i] and #queue[i], what .. ": message " .. i .. " read ahead")
    end
    eq(sum, ahead, what .. ": read-ahead bytes against its messages")
  end
  local function write(m)
    eq(client:write(m, 2000), #m, "write")
    queue[#queue + 1] = m
  end
  -- (a line ends "\n" or "\r\n": a frame's length can hold a 13)
  local function next_line()
    local all = table.concat(queue)
    local nl = all:find("\n", 1, true)
    if nl then
      local stop = nl - 1
      if stop >= 1 and all:byte(stop) == 13 then stop = stop - 1 end
      return all:sub(1, stop), nl
    end
  end
  local function next_frame()
    local all = table.concat(queue)
    if #all < 4 then return "short" end
    local len = compat.from_u32be(all:sub(1, 4))
    if len > np.max_frame_size then return "large" end
    if #all < 4 + len then return "short" end
    return all:sub(5, 4 + len), 4 + len
  end
  local function in_task(f)
    local res
    np.spawn(function() res = compat.pack(f()) end)
    H.pump(function() return res ~= nil end, 5000, "the task")
    return unpack_(res, 1, res.n)
  end
  local function reconnect()
    client:close()
    queue = {}
    local cb, res = H.capture()
    server:connect(cb)
    client = assert(np.open(name, mopts))
    H.pump(function() return res.done end, 3000, "the reconnect")
    assert(res[1], tostring(res[2]))
  end

  for step = 1, steps do
    local op = g.weighted(OPS)
    trace[#trace + 1] = op
    local what = ("step %d %s"):format(step, op)
    if op == "write" then
      write(text())
    elseif op == "write_frame" then -- whole, or in two writes
      local body = text():sub(1, 60)
      local f = compat.u32be(#body) .. body
      local cut = g.rnd(#f + 1) - 1
      if g.chance(2) then
        write(f)
      else
        write(f:sub(1, cut))
        write(f:sub(cut + 1))
      end
    elseif op == "read" then
      if #queue > 0 then
        took(server:read(nil, 2000), nil, what)
      else
        eq(select(3, server:read(nil, 10)), "TIMEOUT", what)
      end
    elseif op == "read_n" then
      if #queue > 0 then
        local n = g.rnd(12)
        took(server:read(n, 2000), n, what)
      end
    elseif op == "read_into" then
      if #queue > 0 then
        local buf = np.buffer(g.rnd(40))
        local n = server:read_into(buf, 2000)
        took(buf:sub(1, n), #buf, what)
      end
    elseif op == "try_read" then
      local _, lens = np._read_ahead(server)
      local n = g.chance(2) and g.rnd(10) or nil
      local data, _, ename = server:try_read(n)
      if data then
        if #queue == 0 then fail(what .. ": bytes from nowhere") end
        took(data, n, what)
      elseif lens and #lens > 0 then
        fail(what .. ": refused with bytes read ahead: " .. tostring(ename))
      end
    elseif op == "read_line" then
      local t = ({ 0, 10, 2000 })[g.rnd(3)]
      local want, nl = next_line()
      local got, _, ename = server:read_line(want and t or (g.chance(2) and 0 or 10))
      if got then
        if not want then fail(what .. ": a line from nowhere: " .. got) end
        eq(got, want, what)
        take_bytes(nl)
      else
        eq(ename, "TIMEOUT", what)
        if want and t ~= 0 then fail(what .. ": timed out with a line there") end
      end
    elseif op == "read_exact" then
      local n = g.rnd(50) - 1
      local t = ({ 0, 10, 2000 })[g.rnd(3)]
      if total() >= n then
        local got, _, ename = server:read_exact(n, t)
        if got then
          eq(got, table.concat(queue):sub(1, n), what)
          take_bytes(n)
        elseif t ~= 0 then
          fail(what .. ": " .. tostring(ename))
        end
      else
        eq(select(3, server:read_exact(n, g.chance(2) and 0 or 10)), "TIMEOUT", what)
      end
    elseif op == "read_frame" then
      local want, k = next_frame()
      local got, _, ename = server:read_frame(want == "short" and (g.chance(2) and 0 or 10) or 2000)
      if want == "large" then
        eq(ename, "FRAME_TOO_LARGE", what)
      elseif want == "short" then
        eq(ename, "TIMEOUT", what)
      else
        eq(got, want, what)
        take_bytes(k)
      end
    elseif op == "peek" then
      -- (bytes an abandoned read took are counted once it has ended and
      -- handed them over: until then peek cannot see them, as try_read
      -- says WOULDBLOCK; under Wine that end can take a few steps)
      H.pump(function() return server:_busy("read") == 0 end, 2000, "the abandoned read's end")
      local t = assert(server:peek())
      eq(t.available, total(), what .. " available")
      -- (an empty message in a Windows pipe is not seen: README)
      if not bytes_only and queue[1] and #queue[1] > 0 then eq(t.message, #queue[1], what .. " message") end
    elseif op == "read_start_all" or op == "read_start_some" then
      local k = #queue
      if k > 0 then
        local want = bytes_only and 1 or op == "read_start_all" and k or g.rnd(k)
        local got = {}
        server:read_start(function(data, _, ename)
          if not data then fail(what .. ": the callback got " .. tostring(ename)) end
          got[#got + 1] = data
          if #got == want then server:read_stop() end
        end)
        H.pump(function() return #got >= want end, 3000, what)
        for i = 1, #got do took(got[i], nil, what .. " #" .. i) end
      end
    elseif op == "read_start_stop" then -- stopped at once: nothing taken...
      local got = {}
      server:read_start(function(data) got[#got + 1] = data end)
      server:read_stop()
      np.step(0)
      -- ... unless a read the system had finished gives its bytes (README)
      for i = 1, #got do took(got[i], nil, what .. " delivered after the stop") end
    elseif op == "read_start_cancel" then
      local got = {}
      server:read_start(function(data, _, ename) got[#got + 1] = data or ename end)
      server:cancel("read")
      H.pump(function() return #got > 0 end, 3000, what)
      if got[1] ~= "CANCELLED" then took(got[1], nil, what) end
      np.step(0)
    elseif op == "read_cb" then
      if #queue > 0 then
        local cb, res = H.capture()
        server:read(cb)
        H.pump(function() return res.done end, 3000, what)
        took(res[1], nil, what)
      end
    elseif op == "read_cb_cancel" then
      local cb, res = H.capture()
      server:read(cb)
      server:cancel("read")
      H.pump(function() return res.done end, 3000, what)
      if res[1] then took(res[1], nil, what) else eq(res[3], "CANCELLED", what) end
    elseif op:match("^abandon_") and op ~= "abandon_transact" then
      local kind = op:sub(9)
      local waits = (kind == "line" and not next_line()) or (kind == "read" and #queue == 0)
        or (kind == "into" and #queue == 0) or (kind == "exact" and total() < 45)
        or (kind == "frame" and next_frame() == "short")
      if waits then -- a message perhaps arrives as the waiter is unwound
        local m = g.chance(2) and text() or nil
        if m and kind == "line" then m = m:gsub("\n", "") end
        if m and kind == "exact" then m = "" end
        np.spawn(function()
          np.sleep(20)
          if m then client:write(m, function() end) end
          error("task failed on purpose")
        end)
        local ok, err
        if kind == "line" then ok, err = pcall(server.read_line, server, 2000)
        elseif kind == "read" then ok, err = pcall(server.read, server, nil, 2000)
        elseif kind == "into" then ok, err = pcall(server.read_into, server, np.buffer(64), 2000)
        elseif kind == "exact" then ok, err = pcall(server.read_exact, server, 45, 2000)
        else ok, err = pcall(server.read_frame, server, 2000) end
        if ok or not tostring(err):find("on purpose", 1, true) then
          fail(what .. ": not unwound by the task's error: " .. tostring(err))
        end
        if m then queue[#queue + 1] = m end
        if g.chance(2) or UNDER_WINE then -- (the abandoned read ends in a step or two)
          np.step(10)
          np.step(10)
        end
      end
    elseif op == "abandon_transact" then -- (a transact needs a message pipe)
      local ahead, lens = np._read_ahead(server)
      if not bytes_only and #queue == 0 and ahead == 0 and not (lens and #lens > 0) then
        local m = text()
        np.spawn(function()
          np.sleep(20)
          client:write(m, function() end)
          error("task failed on purpose")
        end)
        local ok, err = pcall(server.transact, server, "x", 2000)
        if ok or not tostring(err):find("on purpose", 1, true) then
          fail(what .. ": not unwound by the task's error: " .. tostring(err))
        end
        -- (its request "x" went to the client, which never reads)
        queue[#queue + 1] = m
        if g.chance(2) then np.step(10) end
      end
    elseif op == "disconnect" then
      server:disconnect()
      reconnect()
    elseif op == "queued_then_disconnect" then
      -- a callback-form read queued behind an abandoned one, then a
      -- disconnect: it ends NOT_CONNECTED, and what the next client writes
      -- is left for the reads that follow
      if #queue == 0 then
        np.spawn(function()
          np.sleep(10)
          error("task failed on purpose")
        end)
        local ok = pcall(server.read, server, nil, 2000)
        if ok then fail(what .. ": not unwound") end
        local r
        local buf = np.buffer(16)
        if g.chance(2) then
          server:read(function(...) r = compat.pack(...) end)
        else
          server:read_into(buf, function(...) r = compat.pack(...) end)
        end
        server:disconnect()
        reconnect()
        write(text())
        H.pump(function() return r ~= nil end, 2000, what)
        eq(r[3], "NOT_CONNECTED", what .. ": the queued call")
      end
    elseif op == "disconnect_during_line" or op == "cancel_during_line" then
      if not next_line() then
        local m = g.chance(2) and text():gsub("\n", "") or nil
        local disconnect = op == "disconnect_during_line"
        local done = false
        np.spawn(function()
          np.sleep(15)
          if m then client:write(m, 2000) end
          np.sleep(5)
          if disconnect then server:disconnect() else server:cancel("read") end
          done = true
        end)
        local ename
        if g.chance(2) then
          ename = select(3, server:read_line(2000))
        else
          ename = select(3, in_task(function() return server:read_line(2000) end))
        end
        H.pump(function() return done end, 2000, what)
        if m then queue[#queue + 1] = m end
        if disconnect then
          eq(ename, "NOT_CONNECTED", what)
          reconnect()
        else
          eq(ename, "CANCELLED", what)
          np.step(10)
        end
      end
    elseif op == "disconnect_during_start" then
      local got = {}
      server:read_start(function(data, _, ename) got[#got + 1] = data or ename end)
      server:disconnect()
      H.pump(function() return got[#got] == "NOT_CONNECTED" end, 3000, what)
      reconnect()
    elseif op == "transact" then -- refused while bytes are read ahead
      local _, lens = np._read_ahead(server)
      if lens and #lens > 0 then eq(select(3, server:transact("x", 100)), "PIPE_BUSY", what) end
    elseif op == "task_line" then
      local want, nl = next_line()
      local got, _, ename = in_task(function() return server:read_line(want and 2000 or 10) end)
      if want then
        eq(got, want, what)
        take_bytes(nl)
      else
        eq(ename, "TIMEOUT", what)
      end
    elseif op == "task_read" then
      if #queue > 0 then
        local n = g.chance(2) and g.rnd(10) or nil
        took(in_task(function() return server:read(n, 2000) end), n, what)
      end
    elseif op == "reads_in_a_lines_gaps" then
      -- The end of a line comes in pieces while read_line waits (on the
      -- main thread, in a coroutine that steps as it does, or in a task);
      -- the callback of each piece's write but the last, run in the step
      -- that ended one of read_line's reads or later, tries another
      -- reading call (ready("both") too). Every one is refused, and the
      -- line comes whole.
      if not next_line() then
        local where = ({ "main", "coroutine", "task" })[g.rnd(3)]
        local tail = text():gsub("\n", "") .. "\n"
        local pieces, at = {}, 1
        while at <= #tail do
          local k = g.rnd(#tail - at + 1)
          pieces[#pieces + 1] = tail:sub(at, at + k - 1)
          at = at + k
        end
        local refusals, tries = {}, 0
        local written = false
        np.spawn(function()
          for i, piece in ipairs(pieces) do
            np.sleep(g.rnd(3))
            if i < #pieces then
              tries = tries + 1
              local intruder = INTRUDERS[g.rnd(#INTRUDERS)]
              client:write(piece, function()
                if where ~= "task" then -- (a task reads on at once: no gap to wait for)
                  H.pump(function() return server:_busy("read") == 0 end, 2000, what)
                end
                local ok, err = pcall(intruder, server)
                refusals[#refusals + 1] = not ok and tostring(err) or "accepted"
              end)
            else
              assert(client:write(piece, 2000))
            end
          end
          written = true
        end)
        local r
        H.run_in(where, function() r = compat.pack(server:read_line(3000)) end, 5000, what)
        H.pump(function() return written and #refusals == tries end, 5000, what)
        for i = 1, #pieces do queue[#queue + 1] = pieces[i] end
        local want, nl = next_line()
        eq(r[1], want, what .. " (" .. where .. ")")
        take_bytes(nl)
        for i, why in ipairs(refusals) do
          if not why:find("a read is already pending", 1, true) then
            fail(("%s (%s): call %d in a gap: %s"):format(what, where, i, why))
          end
        end
      end
    elseif op == "reads_in_a_reads_gap" then
      -- A waiting read (read, read(n), read_into, readable; on the main
      -- thread or in a coroutine that steps as it does) waits for a
      -- message; the callback of its write, once the read has ended, tries
      -- another reading call, and half the time raises, unwinding the wait.
      -- The call is refused; the wait returns the message, or the next
      -- read gets it.
      local ahead = np._read_ahead(server)
      if #queue == 0 and ahead == 0 then
        local where = g.chance(2) and "main" or "coroutine"
        local kind = ({ "read", "read_n", "read_into", "readable" })[g.rnd(4)]
        local raise = g.chance(2)
        local n = kind == "read_n" and g.rnd(12) or nil
        local m = text()
        if bytes_only and m == "" then m = "x" end -- (else nothing would arrive)
        local which = g.rnd(#INTRUDERS)
        local intruder = INTRUDERS[which]
        local refusal
        client:write(m, function()
          H.pump(function() return server:_busy("read") == 0 end, 2000, what)
          local ok, err = pcall(intruder, server)
          refusal = not ok and tostring(err) or "accepted"
          if raise then error("callback failed on purpose", 0) end
        end)
        queue[#queue + 1] = m
        local function wait()
          if kind == "read_into" then
            local b = np.buffer(64)
            local k = server:read_into(b, 2000)
            return k and b:sub(1, k)
          elseif kind == "readable" then
            return server:readable(2000)
          end
          return server:read(n, 2000)
        end
        local r
        H.run_in(where, function() r = compat.pack(pcall(wait)) end)
        local how = ("%s (%s, %s%s)"):format(what, kind, where, raise and ", raising" or "")
        if raise then
          eq(r[2], "callback failed on purpose", how)
          -- (read(n) of a message took its first n bytes: handed over as
          -- a message of their own, the rest comes as the next. Unless
          -- the error came while the wait still settled behind an
          -- abandoned read, before it had read anything)
          if n and n < #m and not bytes_only and np._read_ahead(server) > 0 then
            queue[#queue] = m:sub(1, n)
            queue[#queue + 1] = m:sub(n + 1)
          end
        elseif kind == "readable" then
          eq(r[2], true, how)
        else
          eq(r[1], true, how)
          took(r[2], n, how)
        end
        if not (refusal or ""):find("a read is already pending", 1, true) then
          fail(("%s: call %d in the gap: %s"):format(how, which, tostring(refusal)))
        end
      end
    elseif op == "stop_then_read_in_callback" then
      if #queue >= 2 and not bytes_only then
        local got = {}
        server:read_start(function(data)
          got[#got + 1] = data
          server:read_stop()
          got[#got + 1] = server:read(nil, 2000)
        end)
        H.pump(function() return #got >= 2 end, 3000, what)
        took(got[1], nil, what .. " #1")
        took(got[2], nil, what .. " #2")
      end
    end
    if bytes_only then drop_empty() end
    check_front(what)
  end
  client:close()
  while #queue > 0 do
    took(server:read(nil, 2000), nil, "at the end")
    if bytes_only then drop_empty() end
  end
  eq(select(3, server:read(nil, 2000)), "EOF", "at the end")
  H.close_all(server, client)
end

local function seeds(list)
  local env = os.getenv("NP_READAHEAD_SEED")
  if env then return { (assert(tonumber(env), "NP_READAHEAD_SEED: a number")) } end
  return list
end
local STEPS = tonumber(os.getenv("NP_READAHEAD_STEPS") or "") or 250

function TestReadaheadModel:test_message_pipe()
  for _, seed in ipairs(seeds { 1, 2, 3 }) do run(seed, STEPS, false) end
end

function TestReadaheadModel:test_byte_pipe()
  for _, seed in ipairs(seeds { 4, 5 }) do run(seed, STEPS, true) end
end
