--[==[
bench/bench_luv.lua - the same workloads as bench/bench.lua, done with luv
(libuv for Lua; Debian package lua-luv) for comparison on Linux:

    lua5.4 bench/bench_luv.lua [--quick] [--runs N] [--only w[,w]]
                               [--pp N] [--stream-mib N] [--churn N] [--steps N]

Output lines as bench.lua's. libuv pipes on Linux are SOCK_STREAM Unix
sockets only (no SOCK_SEQPACKET), so ping-pong runs over a byte stream here
(reported as pingpong_byte) and the 64-byte message is re-assembled if it
arrives in parts. Each
workload is written the way luv is meant to be used: read_start callbacks,
write with a callback, uv.run() until the workload stops the loop.

  pingpong_byte  64-byte request/reply, client and server in this process
            (byte mode: bench.lua's pingpong_byte; there is no message-mode
            "pingpong" here)
  stream    server -> client, 64 KiB writes from one string, 4 in flight,
            256 MiB
  churn     one listening pipe for the run; per connection: connect, accept
            in the listen callback, 64-byte request + reply, close both
  churn_vanish  the same with a listening pipe bound per connection, the
            next bound once both ends and the listener are closed (the name
            vanishes between clients)
  (no queued: luv has no message mode)
  step0     uv.run("nowait") with nothing to do, ns per call (reference)

Exits 0 with a note on stderr when luv is not installed.
]==]

local ok, uv = pcall(require, "luv")
if not ok then
  io.stderr:write("bench_luv.lua: luv not installed (Debian: apt-get install lua-luv); skipped\n")
  os.exit(0)
end

local common = dofile((arg[0]:match("^(.*[/\\])") or "") .. "common.lua")
-- --api is bench.lua's option: nothing to choose here
local opt = common.parse_options("bench_luv.lua",
  { runs = 5, pp = 100000, stream_mib = 256, churn = 20000, steps = 2000000, inflight = 4 })

local function wanted(w) return common.wanted(opt, w) end
local make_blocks, report, msg_for = common.make_blocks, common.report, common.msg_for

local function now() return uv.hrtime() / 1e6 end

local function fail(...) error("bench_luv: " .. table.concat({ ... }, " "), 2) end

local dir = ("/tmp/npbench-luv-%d-%d"):format(uv.os_getpid(), math.random(1, 1e9))
assert(uv.fs_mkdir(dir, 448)) -- 0700
local path_n = 0
local function sock_path(tag)
  path_n = path_n + 1
  return ("%s/%s-%d.sock"):format(dir, tag, path_n)
end

-- Run the loop until done() (the workload calls uv.stop()); then close what
-- is left and let the close callbacks run.
local function run_until(cond, what)
  while not cond() do
    if not uv.run("once") and not cond() then fail("loop ended early:", what) end
  end
end

local function close_all(handles)
  for _, h in ipairs(handles) do
    if not h:is_closing() then h:close() end
  end
  uv.run("default")
end

-- A connected pair: listening pipe, client, accepted server end.
local function pair(tag)
  local path = sock_path(tag)
  local lst = uv.new_pipe(false)
  assert(lst:bind(path))
  local srv
  assert(lst:listen(128, function(err)
    assert(not err, err)
    srv = uv.new_pipe(false)
    assert(lst:accept(srv))
  end))
  local cli = uv.new_pipe(false)
  local conn = false
  cli:connect(path, function(err) assert(not err, err); conn = true end)
  run_until(function() return conn and srv end, "connect")
  lst:close()
  uv.run("nowait")
  os.remove(path)
  return srv, cli
end




local function on_write_check(err) if err then fail("write:", err) end end

-- ------------------------------------------------------------ pingpong
local function pingpong(n, verify)
  local srv, cli = pair("pp")
  local msg = msg_for(0)
  local count, done = 0, false
  local sacc, cacc = "", ""
  srv:read_start(function(err, data)
    if err then fail("server read:", err) end
    if not data then return end
    if #sacc > 0 or #data ~= 64 then -- a message in parts (a byte stream)
      sacc = sacc .. data
      while #sacc >= 64 do
        srv:write(sacc:sub(1, 64), on_write_check)
        sacc = sacc:sub(65)
      end
    else
      srv:write(data, on_write_check)
    end
  end)
  cli:read_start(function(err, data)
    if err or not data then fail("client read:", tostring(err)) end
    if #cacc > 0 or #data ~= 64 then
      cacc = cacc .. data
      if #cacc < 64 then return end
      data, cacc = cacc:sub(1, 64), cacc:sub(65)
    end
    if data ~= msg then fail("pingpong: reply differs") end
    count = count + 1
    if count >= n then done = true; return end
    if verify then msg = msg_for(count) end
    cli:write(msg, on_write_check)
  end)
  local t0 = now()
  cli:write(msg, on_write_check)
  run_until(function() return done end, "pingpong")
  local secs = (now() - t0) / 1000
  close_all { srv, cli }
  return n / secs
end

-- -------------------------------------------------------------- stream
local CHUNK = common.CHUNK
local blocks_plain, blocks_verify

local function stream(total, inflight, verify)
  local srv, cli = pair("st")
  local blocks
  if verify then blocks_verify = blocks_verify or make_blocks(3); blocks = blocks_verify
  else blocks_plain = blocks_plain or make_blocks(1); blocks = blocks_plain end
  local nb = #blocks
  local nwrites = total // CHUNK
  local started, written, received = 0, 0, 0
  local on_write
  local function start_write()
    started = started + 1
    srv:write(blocks[(started - 1) % nb + 1], on_write)
  end
  on_write = function(err)
    if err then fail("stream write:", err) end
    written = written + CHUNK
    if started < nwrites then start_write() end
  end
  cli:read_start(function(err, data)
    if err or not data then fail("stream read:", tostring(err)) end
    if verify then
      local c, len = 0, #data
      while c < len do
        local p = received + c
        local blk = blocks[(p // CHUNK) % nb + 1]
        local off = p % CHUNK
        local take = math.min(CHUNK - off, len - c)
        if data:sub(c + 1, c + take) ~= blk:sub(off + 1, off + take) then
          fail("stream: bytes differ at", p)
        end
        c = c + take
      end
    end
    received = received + #data
  end)
  local t0 = now()
  for _ = 1, math.min(inflight, nwrites) do start_write() end
  run_until(function() return received >= total and written >= total end, "stream")
  local secs = (now() - t0) / 1000
  if received ~= total then fail("stream: byte count", received) end
  close_all { srv, cli }
  return (total / 1048576) / secs
end

-- --------------------------------------------------------------- churn
local function churn(n, verify)
  local path = sock_path("ch")
  local lst = uv.new_pipe(false)
  assert(lst:bind(path))
  local i, done = 0, false
  local msg = msg_for(0)
  local cli
  local function on_srv_read(srv)
    return function(err, data)
      if err then fail("churn server read:", err) end
      if data then srv:write(data, on_write_check) end
    end
  end
  local accepted
  assert(lst:listen(128, function(err)
    if err then fail("churn listen:", err) end
    local srv = uv.new_pipe(false)
    assert(lst:accept(srv))
    accepted = srv
    srv:read_start(on_srv_read(srv))
  end))
  local start
  local function on_cli_read(err, data)
    if err or not data then fail("churn client read:", tostring(err)) end
    if data ~= msg then fail("churn: reply differs") end
    cli:close()
    accepted:close()
    i = i + 1
    if i >= n then done = true else start() end
  end
  start = function()
    if verify then msg = msg_for(i) end
    cli = uv.new_pipe(false)
    local c = cli
    c:connect(path, function(err)
      if err then fail("churn connect:", err) end
      c:read_start(on_cli_read)
      c:write(msg, on_write_check)
    end)
  end
  local t0 = now()
  start()
  run_until(function() return done end, "churn")
  local secs = (now() - t0) / 1000
  close_all { lst }
  os.remove(path)
  return n / secs
end

-- -------------------------------------------------------- churn_vanish
-- As churn, but the name vanishes between clients: a listening pipe bound
-- per connection; the next is bound once the client, the accepted end and
-- the listener are closed (libuv unlinks a bound pipe's path as it closes
-- it).
local function churn_vanish(n, verify)
  local path = sock_path("cv")
  local i, done = 0, false
  local msg = msg_for(0)
  local start
  local closing = 0
  local function on_closed()
    closing = closing - 1
    if closing > 0 then return end
    i = i + 1
    if i >= n then done = true else start() end
  end
  start = function()
    if verify then msg = msg_for(i) end
    local lst, srv = uv.new_pipe(false), nil
    assert(lst:bind(path))
    assert(lst:listen(128, function(err)
      if err then fail("churn_vanish listen:", err) end
      srv = uv.new_pipe(false)
      assert(lst:accept(srv))
      local s = srv
      s:read_start(function(rerr, data)
        if rerr then fail("churn_vanish server read:", rerr) end
        if data then s:write(data, on_write_check) end
      end)
    end))
    local cli = uv.new_pipe(false)
    cli:connect(path, function(err)
      if err then fail("churn_vanish connect:", err) end
      cli:read_start(function(rerr, data)
        if rerr or not data then fail("churn_vanish client read:", tostring(rerr)) end
        if data ~= msg then fail("churn_vanish: reply differs") end
        closing = 3
        cli:close(on_closed)
        srv:close(on_closed)
        lst:close(on_closed)
      end)
      cli:write(msg, on_write_check)
    end)
  end
  local t0 = now()
  start()
  run_until(function() return done end, "churn_vanish")
  local secs = (now() - t0) / 1000
  os.remove(path)
  return n / secs
end

-- --------------------------------------------------------------- step0
local function step0(n)
  local t0 = now()
  for _ = 1, n do uv.run("nowait") end
  return (now() - t0) * 1e6 / n
end

-- ---------------------------------------------------------------- main
local function timed(fn, ...)
  local v = {}
  for r = 1, opt.runs do v[r] = fn(...) end
  return v
end

local verify = opt.quick
if wanted("pingpong_byte") then
  pingpong(math.max(opt.pp // 20, 50), true)
  report("pingpong_byte", "rtt_per_s", timed(pingpong, opt.pp, verify),
    ("n=%d msg=64 mode=byte"):format(opt.pp))
end
if wanted("stream") then
  stream(4 * CHUNK * opt.inflight, opt.inflight, true)
  report("stream", "mib_per_s", timed(stream, opt.stream_mib * 1048576, opt.inflight, verify),
    ("mib=%d write=%d inflight=%d mode=byte"):format(opt.stream_mib, CHUNK, opt.inflight))
end
if wanted("churn") then
  churn(math.max(opt.churn // 20, 20), true)
  report("churn", "conn_per_s", timed(churn, opt.churn, verify), ("n=%d mode=byte"):format(opt.churn))
end
if wanted("churn_vanish") then
  churn_vanish(math.max(opt.churn // 20, 20), true)
  report("churn_vanish", "conn_per_s", timed(churn_vanish, opt.churn, verify),
    ("n=%d mode=byte"):format(opt.churn))
end
if wanted("step0") then
  step0(opt.steps // 10 + 1)
  report("step0", "ns_per_call", timed(step0, opt.steps), ("n=%d what=uv.run(nowait)"):format(opt.steps))
end
uv.fs_rmdir(dir)
if opt.quick then io.write("quick ok\n") end
