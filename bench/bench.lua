--[[
bench/bench.lua - namedpipe's benchmarks (bench/README.md), run from the repo root:

    LUA_PATH_5_4='lua/?.lua;lua/?/init.lua;;' LUA_CPATH_5_4='build/linux/?.so;;' \
      lua5.4 bench/bench.lua [options]                               (Linux)
    tools/wine-run.sh build/winlua/bin/lua.exe bench/bench.lua [options] (Wine)

`make bench` (bench/run.sh) runs this beside the C baselines and luv and
prints the tables; this script alone prints one line per workload:

    pingpong rtt_per_s=<median> min=.. max=.. runs=N n=.. msg=64 mode=message
    pingpong_byte rtt_per_s=<median> ...
    pingpong_tasks rtt_per_s=<median> ...
    pingpong_tasks_untimed rtt_per_s=<median> ...
    pingpong_waiting rtt_per_s=<median> ...
    pingpong_lines rtt_per_s=<median> ...
    stream mib_per_s=<median> ...
    stream_string mib_per_s=<median> ...
    stream_string_large mib_per_s=<median> ...
    churn conn_per_s=<median> ...
    churn_vanish conn_per_s=<median> ...
    queued msgs_per_s=<median> ...
    memory lua_kib_per_pair=.. rss_kib_per_pair=.. lua_kib_per_pair_reading=.. rss_kib_per_pair_reading=.. pairs=1000
    step0 ns_per_call=<median> ...

Workloads (the same as bench/baseline_*.c and bench/bench_luv.lua do):
  pingpong  64-byte messages over a message-mode pipe, server and client in
            this process; both ends read with read_start (a read always
            pending, as luv's read_start keeps one); round trips/s
  pingpong_byte  the same over a byte-mode pipe (luv has no message mode:
            this is the row to compare luv with)
  pingpong_tasks  namedpipe only (not with --api core): the message
            ping-pong written as a script would write it with tasks, two
            coroutines calling write and read, each call with a 5 s
            timeout (so each has a timer); compared with the C ping-pong
  pingpong_tasks_untimed  the same with no timeouts
  pingpong_waiting  namedpipe only: the message ping-pong as a plain
            script writes it, no task and no callback of its own: the
            client's write and read wait on the main thread, the server
            answers from its read_start callback with a waiting write;
            compared with the C ping-pong
  pingpong_lines  namedpipe only: the byte ping-pong as a line protocol
            in a plain script: the client writes a 64-byte line and
            waits on the main thread for the reply with read_line, the
            server echoes what its read_start callback gets with a
            waiting write; compared with the C byte ping-pong
  stream    server -> client, byte mode, 64 KiB writes (one anchored string,
            so zero-copy), 4 in flight, 256 MiB, read with read_into into
            one 64 KiB np.buffer (as the C program reads into one buffer);
            MiB/s
  stream_string  the same read with read(): a new string per read (as luv
            reads: the row to compare luv with)
  stream_string_large  the same read with read(262144): strings of up to
            256 KiB, a quarter as many reads (no luv figure: luv reads
            64 KiB)
  churn     per connection: open a client, connect the listening instance,
            create the next instance first (the name never vanishes), one
            64-byte request + reply, close both; connections/s
  churn_vanish  as churn, but the next instance is created only after both
            ends of the last connection are closed (the name vanishes
            between clients); connections/s
  queued    one client starts N 64-byte message-mode writes at once (all
            before anything is read), then the server reads them back one
            by one, each read started when the previous one finished;
            bytes, order and write callbacks checked; messages/s
  memory    1,000 idle connected pairs (one name): Lua heap
            (collectgarbage "count") and process RSS per pair, first with
            nothing pending, then with a read pending on every end
  step0     an idle step(0) (nothing pending), ns per call

The timed parts use the callback API (callbacks + step()), except
pingpong_tasks, which is there to measure the tasks' waiting calls.

Options:
  --quick            tiny sizes; asserts that every byte arrives intact
                     (message contents, stream order); asserts no time
  --runs N           timed runs per workload (default 5); median, min-max
  --only w[,w]       pingpong, pingpong_byte, pingpong_tasks,
                     pingpong_tasks_untimed, pingpong_waiting,
                     pingpong_lines, stream,
                     stream_string, stream_string_large, churn,
                     churn_vanish, queued, memory,
                     step0
  --api np|core      np (default): require "namedpipe", the public API (its
                     Lua method wrappers and np.step with tasks/timers);
                     core: require "namedpipe.core" alone (the C methods and
                     the C step), the floor under the public API
  --pp N --stream-mib N --churn N (churn and churn_vanish) --queued N
  --pairs N --steps N --inflight N
]]

local WIN = package.config:sub(1, 1) == "\\"

-- ------------------------------------------------------------- options
local common = dofile((arg[0]:match("^(.*[/\\])") or "") .. "common.lua")
local opt_api
local opt = common.parse_options("bench.lua", {
  runs = 5, api = "np", inflight = 4, pairs = 1000,
  pp = WIN and 10000 or 100000,
  stream_mib = 256,
  churn = WIN and 5000 or 20000,
  queued = 100000,
  steps = WIN and 200000 or 2000000,
}, function(v) opt_api = v end)
if opt_api then opt.api = opt_api end
if opt.api ~= "np" and opt.api ~= "core" then
  io.stderr:write("bench.lua: --api np|core\n"); os.exit(2)
end

local function wanted(w) return common.wanted(opt, w) end
local make_blocks, median, report, msg_for, idiv =
  common.make_blocks, common.median, common.report, common.msg_for, common.idiv

local core = require "namedpipe.core"
local np = opt.api == "core" and core or require "namedpipe"
local step, now = np.step, np.now

-- ------------------------------------------------------------- helpers
math.randomseed(os.time())
local run_id = ("%d-%d"):format(os.time() % 100000, math.random(1, 1e9))
local name_n = 0
local function pipe_name(tag)
  name_n = name_n + 1
  return ([[\\.\pipe\npbench-%s-%s-%d]]):format(tag, run_id, name_n)
end

local function fail(...)
  error("bench: " .. table.concat({ ... }, " "), 2)
end

-- Step until cond() holds; a stall of more than `limit` ms is an error.
local function pump(cond, what, limit)
  local last = now()
  limit = limit or 20000
  while not cond() do
    if step(1000) > 0 then
      last = now()
    elseif now() - last > limit then
      fail("stalled waiting for", what)
    end
  end
end

local function drain()
  local deadline = now() + 5000
  while core.pending() > 0 do
    step(10)
    if now() > deadline then fail("operations still pending after close:", core.pending()) end
  end
end

-- The seconds since t0, taken before the pair is closed and its
-- operations drained.
local function stop_clock(t0, server, client)
  local secs = (now() - t0) / 1000
  client:close()
  server:close()
  drain()
  return secs
end

local function connected_pair(tag, sopts, copts)
  local name = pipe_name(tag)
  local server = assert(np.create(name, sopts))
  local client = assert(np.open(name, copts))
  local ok = false
  server:connect(function(r, msg) if not r then fail("connect:", msg) end; ok = true end)
  pump(function() return ok end, "connect")
  return server, client
end



local function noop() end


-- ------------------------------------------------------------ pingpong
-- mode "message": one read is one message. mode "byte": a byte stream, so a
-- 64-byte message could in principle come in parts; they are joined (the
-- fast path is one whole read, as in practice).
local function pingpong(n, verify, mode)
  local mopts = { pipe_mode = mode }
  local server, client = connected_pair("pp", mopts, mopts)
  local msg = msg_for(0)
  local count, done = 0, false
  local sacc, cacc = nil, nil

  local function on_write(nw, err)
    if nw ~= 64 then fail("pingpong write:", tostring(nw), tostring(err)) end
  end
  local function srv_read(data, err, ename)
    if not data then
      if ename == "CLOSED" or ename == "EOF" then return end
      fail("pingpong server read:", tostring(err))
    end
    if #data ~= 64 or sacc then -- byte mode, a message in parts
      sacc = (sacc or "") .. data
      while sacc and #sacc >= 64 do
        server:write(sacc:sub(1, 64), on_write)
        sacc = #sacc > 64 and sacc:sub(65) or nil
      end
      return
    end
    server:write(data, on_write)
  end
  local function cli_read(data, err)
    if data and (#data ~= 64 or cacc) then
      cacc = (cacc or "") .. data
      if #cacc < 64 then return end
      data, cacc = cacc:sub(1, 64), #cacc > 64 and cacc:sub(65) or nil
    end
    if data ~= msg then fail("pingpong: reply differs:", tostring(data), tostring(err)) end
    count = count + 1
    if count >= n then
      done = true
      client:read_stop()
      server:read_stop()
      return
    end
    if verify then msg = msg_for(count) end
    client:write(msg, on_write)
  end

  server:read_start(srv_read)
  client:read_start(cli_read)
  local t0 = now()
  client:write(msg, on_write)
  while not done do
    if step(1000) == 0 and not done then fail("pingpong stalled at", count) end
  end
  return n / stop_clock(t0, server, client)
end

-- ------------------------------------------------------- pingpong_tasks
-- The message ping-pong as a script with tasks would write it: each call
-- waits in its coroutine, with a timeout (each call has a timer) or,
-- timeout nil, without (pingpong_tasks_untimed).
local function pingpong_tasks(n, verify, timeout)
  local mopts = { pipe_mode = "message" }
  local server, client = connected_pair("pt", mopts, mopts)
  local msg = msg_for(0)
  local done, t0 = false, nil
  np.spawn(function()
    while true do
      local data, err, ename = server:read(nil, timeout)
      if not data then
        if ename == "CLOSED" or ename == "EOF" then return end
        fail("pingpong_tasks server read:", tostring(err))
      end
      local nw, werr = server:write(data, timeout)
      if nw ~= #data then fail("pingpong_tasks server write:", tostring(werr)) end
    end
  end)
  np.spawn(function()
    t0 = now()
    for i = 1, n do
      local nw, err = client:write(msg, timeout)
      if nw ~= 64 then fail("pingpong_tasks write:", tostring(nw), tostring(err)) end
      local reply, rerr = client:read(nil, timeout)
      if reply ~= msg then fail("pingpong_tasks: reply differs:", tostring(reply), tostring(rerr)) end
      if verify then msg = msg_for(i) end
    end
    done = true
  end)
  pump(function() return done end, "pingpong_tasks")
  return n / stop_clock(t0, server, client)
end

-- ----------------------------------------------------- pingpong_waiting
-- The message ping-pong as a plain script writes it: waiting calls on the
-- main thread (each steps the loop until its operation is done; a write the
-- socket takes at once returns at once), the server's answer a waiting
-- write from its read_start callback. lines (pingpong_lines): the byte
-- ping-pong as a line protocol, each reply read with read_line.
local function pingpong_waiting(n, verify, lines)
  local what = lines and "pingpong_lines" or "pingpong_waiting"
  local mopts = not lines and { pipe_mode = "message" } or nil
  local server, client = connected_pair(lines and "pl" or "pw", mopts, mopts)
  local function msg_at(i) return lines and msg_for(i):sub(1, 63) .. "\n" or msg_for(i) end
  local msg = msg_at(0)
  local want = lines and msg:sub(1, 63) or msg
  server:read_start(function(data, err, ename)
    if not data then
      if ename == "CLOSED" or ename == "EOF" then return end
      fail(what .. " server read:", tostring(err))
    end
    local nw, werr = server:write(data)
    if nw ~= #data then fail(what .. " server write:", tostring(werr)) end
  end)
  local t0 = now()
  for i = 1, n do
    local nw, err = client:write(msg)
    if nw ~= 64 then fail(what .. " write:", tostring(nw), tostring(err)) end
    local reply, rerr
    if lines then reply, rerr = client:read_line() else reply, rerr = client:read() end
    if reply ~= want then fail(what .. ": reply differs:", tostring(reply), tostring(rerr)) end
    if verify then
      msg = msg_at(i)
      want = lines and msg:sub(1, 63) or msg
    end
  end
  server:read_stop()
  return n / stop_clock(t0, server, client)
end

-- -------------------------------------------------------------- stream
local CHUNK = common.CHUNK

local blocks_plain, blocks_verify

-- into: read with read_into into one buffer, else with read(read_n)
-- (strings; read_n nil: read(), up to 64 KiB).
local function stream(total, inflight, verify, into, read_n)
  local server, client = connected_pair("st")
  local blocks
  if verify then
    blocks_verify = blocks_verify or make_blocks(3)
    blocks = blocks_verify
  else
    blocks_plain = blocks_plain or make_blocks(1)
    blocks = blocks_plain
  end
  local nb = #blocks
  local nwrites = idiv(total, CHUNK)
  local started, written, received = 0, 0, 0
  local done_w, done_r = false, false

  local on_write
  local function start_write()
    started = started + 1
    server:write(blocks[(started - 1) % nb + 1], on_write)
  end
  on_write = function(n, err)
    if n ~= CHUNK then fail("stream write:", tostring(n), tostring(err)) end
    written = written + n
    if started < nwrites then start_write()
    elseif written >= total then done_w = true end
  end

  local function check(data, pos)
    local c, len = 0, #data
    while c < len do
      local p = pos + c
      local blk = blocks[idiv(p, CHUNK) % nb + 1]
      local off = p % CHUNK
      local take = math.min(CHUNK - off, len - c)
      if data:sub(c + 1, c + take) ~= blk:sub(off + 1, off + take) then
        fail("stream: bytes differ at offset", tostring(p))
      end
      c = c + take
    end
  end

  local on_read
  local function got(n)
    received = received + n
    if received >= total then
      if received > total then fail("stream: too many bytes") end
      done_r = true
      return false
    end
    return true
  end
  if into then
    local buf = np.buffer(CHUNK)
    on_read = function(n, err)
      if not n then fail("stream read_into:", tostring(err)) end
      if verify then check(buf:sub(1, n), received) end
      if got(n) then client:read_into(buf, on_read) end
    end
    client:read_into(buf, on_read)
  else
    local function read_next()
      if read_n then client:read(read_n, on_read) else client:read(on_read) end
    end
    on_read = function(data, err)
      if not data then fail("stream read:", tostring(err)) end
      if verify then check(data, received) end
      if got(#data) then read_next() end
    end
    read_next()
  end
  local t0 = now()
  for _ = 1, math.min(inflight, nwrites) do start_write() end
  while not (done_w and done_r) do
    if step(1000) == 0 then fail("stream stalled at", received) end
  end
  return (total / 1048576) / stop_clock(t0, server, client)
end

-- --------------------------------------------------------------- churn
local function churn(n, verify)
  local name = pipe_name("ch")
  local cur = assert(np.create(name))
  local i, done = 0, false
  local iter
  local msg0 = msg_for(0) -- (made once, as the C program's and luv's)

  local function one()
    local client = assert(np.open(name))
    local srv = cur
    local msg = verify and msg_for(i) or msg0
    srv:connect(function(ok, err)
      if not ok then fail("churn connect:", tostring(err)) end
      cur = assert(np.create(name)) -- the next instance first
      srv:read(function(data, rerr)
        if not data then fail("churn server read:", tostring(rerr)) end
        srv:write(data, noop)
      end)
      client:read(function(data, rerr)
        if data ~= msg then fail("churn: reply differs:", tostring(data), tostring(rerr)) end
        client:close()
        srv:close()
        i = i + 1
        if i >= n then done = true else iter() end
      end)
      client:write(msg, noop)
    end)
  end
  iter = one

  local t0 = now()
  one()
  while not done do
    if step(1000) == 0 then fail("churn stalled at", i) end
  end
  local secs = (now() - t0) / 1000
  cur:close()
  drain()
  return n / secs
end

-- --------------------------------------------------------- churn_vanish
-- As churn, but the next instance is created only once both ends of the
-- last connection are closed: the name vanishes every cycle and is made
-- anew.
local function churn_vanish(n, verify)
  local name = pipe_name("cv")
  local i, done = 0, false
  local one
  local msg0 = msg_for(0)
  one = function()
    local srv = assert(np.create(name))
    local client = assert(np.open(name))
    local msg = verify and msg_for(i) or msg0
    srv:connect(function(ok, err)
      if not ok then fail("churn_vanish connect:", tostring(err)) end
      srv:read(function(data, rerr)
        if not data then fail("churn_vanish server read:", tostring(rerr)) end
        srv:write(data, noop)
      end)
      client:read(function(data, rerr)
        if data ~= msg then fail("churn_vanish: reply differs:", tostring(data), tostring(rerr)) end
        client:close()
        srv:close()
        i = i + 1
        if i >= n then done = true else one() end
      end)
      client:write(msg, noop)
    end)
  end

  local t0 = now()
  one()
  while not done do
    if step(1000) == 0 then fail("churn_vanish stalled at", i) end
  end
  local secs = (now() - t0) / 1000
  drain()
  return n / secs
end

-- -------------------------------------------------------------- queued
-- One client queues n 64-byte messages at once (every write started before
-- anything is read), then the server reads them back one by one, each read
-- started once the previous one has finished. Every message is checked
-- (bytes and place) and every write's callback counted (once each, 64
-- bytes). The messages are made before the clock starts.
local queued_msgs = {}
local function queued(n)
  for k = #queued_msgs + 1, n do queued_msgs[k] = msg_for(k - 1) end
  local msgs = queued_msgs
  local mopts = { pipe_mode = "message" }
  local server, client = connected_pair("qu", mopts, mopts)
  local written, got = 0, 0
  local function on_write(nw, err)
    if nw ~= 64 then fail("queued write:", tostring(nw), tostring(err)) end
    written = written + 1
  end
  local on_read
  on_read = function(data, err)
    got = got + 1
    if data ~= msgs[got] then
      fail("queued: message", tostring(got), "differs:", tostring(data), tostring(err))
    end
    if got < n then server:read(on_read) end
  end
  local t0 = now()
  for k = 1, n do client:write(msgs[k], on_write) end
  server:read(on_read)
  while got < n or written < n do
    if step(1000) == 0 then fail("queued stalled at", tostring(got), tostring(written)) end
  end
  local rate = n / stop_clock(t0, server, client)
  if written ~= n then fail("queued: write callbacks", tostring(written), "for", tostring(n)) end
  return rate
end

-- -------------------------------------------------------------- memory
local function rss_kib()
  local f = io.open("/proc/self/status", "r")
  if not f and WIN then
    -- Wine: drive Z: is the Unix root, so this is the Wine process's own
    -- status (the Windows process is that Unix process)
    f = io.open([[Z:\proc\self\status]], "r")
  end
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  local v = s:match("VmRSS:%s*(%d+)%s*kB")
  return v and tonumber(v)
end

local function gc_full()
  collectgarbage("collect")
  collectgarbage("collect")
end

local function memory(npairs)
  local name = pipe_name("mem")
  -- table.create: Lua 5.5 (presized); plain {} on 5.4
  local servers, clients = table.create and table.create(npairs) or {}, {} -- luacheck: ignore 143
  for k = 1, npairs do servers[k], clients[k] = false, false end
  gc_full()
  local lua0, rss0 = collectgarbage("count"), rss_kib()
  local connected = 0
  local function on_connect(ok, err)
    if not ok then fail("memory connect:", tostring(err)) end
    connected = connected + 1
  end
  for k = 1, npairs do
    servers[k] = assert(np.create(name))
    clients[k] = assert(np.open(name))
    servers[k]:connect(on_connect)
  end
  pump(function() return connected == npairs end, "1000 connects")
  gc_full()
  local lua1, rss1 = collectgarbage("count"), rss_kib()
  -- every end waiting for data, as an idle server and client usually are
  local closed = 0
  local function on_read(data, err, ename)
    if data or (ename ~= "CLOSED" and ename ~= "EOF") then
      fail("memory: idle read finished:", tostring(data), tostring(err))
    end
    closed = closed + 1
  end
  for k = 1, npairs do
    servers[k]:read(on_read)
    clients[k]:read(on_read)
  end
  step(0)
  gc_full()
  local lua2, rss2 = collectgarbage("count"), rss_kib()
  for k = 1, npairs do
    clients[k]:close()
    servers[k]:close()
  end
  drain()
  local r = {
    lua = (lua1 - lua0) / npairs,
    lua_reading = (lua2 - lua0) / npairs,
  }
  if rss0 then
    r.rss = (rss1 - rss0) / npairs
    r.rss_reading = (rss2 - rss0) / npairs
  end
  return r
end

-- --------------------------------------------------------------- step0
local function step0(n, fn)
  fn = fn or step
  drain()
  local t0 = now()
  for _ = 1, n do fn(0) end
  return (now() - t0) * 1e6 / n
end

-- ---------------------------------------------------------------- main
local function timed(fn, ...)
  local vals = {}
  for r = 1, opt.runs do vals[r] = fn(...) end
  return vals
end

local t_start = now()
local verify = opt.quick

-- memory first, in a heap no other workload has used: after them the
-- pairs reuse memory those freed, already resident, and are counted short
-- (on Linux 1.2 to 1.4 KiB of RSS a pair against 2.0 in a fresh process)
if wanted("memory") then
  local r = memory(opt.pairs)
  local rss_note = r.rss and "" or " rss=unavailable"
  local function f(x) return x and ("%.2f"):format(x) or "na" end
  io.write(("memory lua_kib_per_pair=%s rss_kib_per_pair=%s lua_kib_per_pair_reading=%s"
    .. " rss_kib_per_pair_reading=%s pairs=%d%s\n")
    :format(f(r.lua), f(r.rss), f(r.lua_reading), f(r.rss_reading), opt.pairs, rss_note))
  io.stdout:flush()
end

-- A ping-pong row: a short run with every reply checked first (warm-up),
-- then the timed runs; arg goes to the workload's function after verify.
local function pingpong_row(wl, fn, arg, what)
  if not wanted(wl) then return end
  fn(math.max(idiv(opt.pp, 20), 50), true, arg)
  local v = timed(fn, opt.pp, verify, arg)
  report(wl, "rtt_per_s", v, ("n=%d msg=64 %s"):format(opt.pp, what))
end

pingpong_row("pingpong", pingpong, "message", "mode=message api=" .. opt.api)
pingpong_row("pingpong_byte", pingpong, "byte", "mode=byte api=" .. opt.api)
if opt.api == "np" then -- (these measure the Lua layer's ways of calling)
  pingpong_row("pingpong_tasks", pingpong_tasks, 5000, "mode=message api=np tasks timeout=5000")
  pingpong_row("pingpong_tasks_untimed", pingpong_tasks, nil,
    "mode=message api=np tasks timeout=none")
  pingpong_row("pingpong_waiting", pingpong_waiting, nil,
    "mode=message api=np waiting calls, main thread")
  pingpong_row("pingpong_lines", pingpong_waiting, true,
    "mode=byte api=np write and read_line, main thread")
end

local STREAM_READ_N = { stream_string_large = 262144 }
for _, wl in ipairs { "stream", "stream_string", "stream_string_large" } do
  if wanted(wl) then
    local into, read_n = wl == "stream", STREAM_READ_N[wl]
    stream(4 * CHUNK * opt.inflight, opt.inflight, true, into, read_n) -- warm-up, bytes checked
    local v = timed(stream, opt.stream_mib * 1048576, opt.inflight, verify, into, read_n)
    report(wl, "mib_per_s", v, ("mib=%d write=%d inflight=%d mode=byte api=%s read=%s")
      :format(opt.stream_mib, CHUNK, opt.inflight, opt.api,
              into and "read_into" or read_n and ("read(%d)"):format(read_n) or "read"))
  end
end

if wanted("churn") then
  churn(math.max(idiv(opt.churn, 20), 20), true) -- warm-up, contents checked
  local v = timed(churn, opt.churn, verify)
  report("churn", "conn_per_s", v, ("n=%d mode=byte api=%s"):format(opt.churn, opt.api))
end

if wanted("churn_vanish") then
  churn_vanish(math.max(idiv(opt.churn, 20), 20), true) -- warm-up, contents checked
  local v = timed(churn_vanish, opt.churn, verify)
  report("churn_vanish", "conn_per_s", v, ("n=%d mode=byte api=%s"):format(opt.churn, opt.api))
end

if wanted("queued") then
  queued(math.max(idiv(opt.queued, 20), 20)) -- warm-up
  local v = timed(queued, opt.queued)
  report("queued", "msgs_per_s", v, ("n=%d msg=64 mode=message api=%s"):format(opt.queued, opt.api))
end

if wanted("step0") then
  step0(math.max(idiv(opt.steps, 10), 100)) -- warm-up
  local v = timed(step0, opt.steps)
  local extra = ("n=%d api=%s"):format(opt.steps, opt.api)
  if opt.api == "np" then
    local c = timed(step0, opt.steps, core.step)
    extra = extra .. (" core_ns_per_call=%.1f"):format((median(c)))
  end
  report("step0", "ns_per_call", v, extra)
end

if opt.quick then
  io.write(("quick ok (%.1f s)\n"):format((now() - t_start) / 1000))
end
