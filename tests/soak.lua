--[[
tests/soak.lua - the long runs behind `make soak` (Linux natively, Windows
under Wine). Prints its figures; exits non-zero if anything was lost or did
not come back.

  lua5.4 tests/soak.lua [--scale F] [--only NAME]

  stream     64 MiB one way in 64 KiB writes, all issued at once, checksummed
  messages   100,000 small messages (message mode): order and boundaries
  clients    1,000 concurrent clients of one serving process, 10 messages each
  cycles     100,000 connect / exchange / disconnect cycles on one name,
             memory and OS handle counts printed before and after (flat)

--scale 0.1 runs a tenth of each (a quick look).
]]
local np = require "namedpipe"

local scale, only = 1, nil
do
  local i = 1
  while arg[i] do
    if arg[i] == "--scale" then scale = tonumber(arg[i + 1]); i = i + 1
    elseif arg[i] == "--only" then only = arg[i + 1]; i = i + 1 end
    i = i + 1
  end
end

local failures = 0
local function check(cond, what)
  if not cond then
    failures = failures + 1
    print("  FAILED: " .. what)
  end
end

local function rss_kb()
  local f = io.open("/proc/self/status", "r")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return tonumber(s:match("VmRSS:%s*(%d+)"))
end

local function figures(label)
  collectgarbage()
  collectgarbage()
  local st = np.stats()
  local rss = rss_kb()
  print(("  %-7s lua %.0f KiB, rss %s, os handles %s, pipe blocks %d, outstanding %d")
    :format(label, collectgarbage("count"), rss and (rss .. " KiB") or "n/a",
      st.os_handles >= 0 and tostring(st.os_handles) or "n/a",
      st.pipes, st.outstanding))
  return st, collectgarbage("count")
end

local run_id = tostring(os.time()) .. "-" .. math.random(1, 1e6)
local function name(tag) return ([[\\.\pipe\npsoak-%s-%s]]):format(tag, run_id) end

local function pair(opts)
  local n = name("pair" .. math.random(1, 1e9))
  local s = assert(np.create(n, opts))
  local c = assert(np.open(n, opts))
  assert(s:connect(5000))
  return s, c
end

-- Adler-32 over every byte: the same however the stream is cut into reads.
local byte = string.byte
local function adler(s, a, b)
  a, b = a or 1, b or 0
  for i = 1, #s do
    a = (a + byte(s, i)) % 65521
    b = (b + a) % 65521
  end
  return a, b
end

local soaks = {}

function soaks.stream()
  local chunk = 64 * 1024
  local total = math.floor(math.floor(64 * 1024 * 1024 * scale) / chunk) * chunk
  local s, c = pair()
  local wa, wb = 1, 0
  local t0 = np.now()
  for i = 1, math.floor(total / chunk) do
    local piece = string.char(i % 251):rep(chunk - 8) .. ("%08d"):format(i)
    wa, wb = adler(piece, wa, wb)
    c:write(piece, function(n, err) assert(n == #piece, err) end)
  end
  local ra, rb, got = 1, 0, 0
  while got < total do
    local d = assert(s:read(nil, 10000))
    ra, rb = adler(d, ra, rb)
    got = got + #d
  end
  local ms = np.now() - t0
  print(("  %d MiB in %.0f ms (%.1f MiB/s)"):format(total >> 20, ms, (total / 1048576) / (ms / 1000)))
  check(got == total, "stream length")
  s:close(); c:close()
  return ra, rb, wa, wb
end

function soaks.messages()
  local count = math.floor(100000 * scale)
  local s, c = pair({ pipe_mode = "message" })
  local t0 = np.now()
  local acked = 0
  for i = 1, count do c:write(tostring(i), function() acked = acked + 1 end) end
  local bad = 0
  for i = 1, count do
    if s:read(nil, 10000) ~= tostring(i) then bad = bad + 1 end
  end
  while acked < count do np.step(10) end
  print(("  %d messages in %.0f ms, %d out of place"):format(count, np.now() - t0, bad))
  check(bad == 0, "message order/boundaries")
  s:close(); c:close()
end

function soaks.clients()
  local count = math.floor(1000 * scale)
  local n = name("clients")
  -- the serving process: echoes every message; exits after all clients left
  local f = assert(io.open("build/soak-server.lua", "w"))
  f:write(("package.path = %q\npackage.cpath = %q\n"):format(package.path, package.cpath))
  f:write([[
    local np = require "namedpipe"
    local name, count = ...
    count = tonumber(count)
    local left = 0
    local srv = assert(np.serve(name, { pipe_mode = "message" }, function(p)
      while true do
        local m = p:read()
        if not m then break end
        p:write(m)
      end
      left = left + 1
    end))
    np.spawn(function()
      while left < count do np.sleep(20) end
      srv.close()
    end)
    np.run()
    io.write("server saw ", left, " clients\n")
  ]])
  f:close()
  local interp = {}
  for i = -1, -10, -1 do if arg[i] then table.insert(interp, 1, arg[i]) end end
  local win = package.config:sub(1, 1) == "\\"
  local cmd = table.concat(interp, " ") .. " build/soak-server.lua " .. (win and '"%s"' or "'%s'"):format(n) .. " " .. count
  if win then
    cmd = 'start /b "" ' .. cmd:gsub("/", "\\")
  else
    cmd = cmd .. " &"
  end
  local r = os.execute(cmd)
  assert(r == true or r == 0, cmd)
  local t0 = np.now()
  local done, bad = 0, 0
  for i = 1, count do
    np.spawn(function()
      local c = assert(np.open(n, { pipe_mode = "message", timeout = 30000, wait_for_server = true }))
      for j = 1, 10 do
        local m = ("client %d message %d"):format(i, j)
        c:write(m)
        if c:read(nil, 30000) ~= m then bad = bad + 1 end
      end
      c:close()
      done = done + 1
    end)
  end
  np.run()
  print(("  %d clients x 10 round trips in %.0f ms, %d wrong replies"):format(done, np.now() - t0, bad))
  check(done == count and bad == 0, "concurrent clients")
end

function soaks.cycles()
  local count = math.floor(100000 * scale)
  local n = name("cycles")
  local before_st, before_kb = figures("before")
  local server = assert(np.create(n, { max_instances = 1 }))
  local t0 = np.now()
  local ok = 0
  np.spawn(function()
    for _ = 1, count do
      assert(server:connect(5000))
      local m = server:read(nil, 5000)
      server:write(m)
      -- wait for the client to go before dropping it, so nothing is lost
      server:read(nil, 5000)
      assert(server:disconnect())
    end
  end)
  np.spawn(function()
    for i = 1, count do
      local c = assert(np.open(n, { timeout = 5000 }))
      c:write("cycle " .. i)
      if c:read(nil, 5000) == "cycle " .. i then ok = ok + 1 end
      c:close()
    end
  end)
  np.run()
  server:close()
  np.step(0)
  local ms = np.now() - t0
  print(("  %d cycles in %.0f ms (%.0f/s)"):format(ok, ms, ok / (ms / 1000)))
  local after_st, after_kb = figures("after")
  check(ok == count, "cycles completed")
  check(after_st.pipes <= before_st.pipes, "pipe blocks flat")
  check(after_st.outstanding == 0, "nothing outstanding")
  check(before_st.os_handles < 0 or after_st.os_handles <= before_st.os_handles + 4, "OS handles flat")
  check(after_kb < before_kb + 1024, "Lua memory flat")
end

for _, which in ipairs { "stream", "messages", "clients", "cycles" } do
  if not only or only == which then
    print(which .. ":")
    local r = { soaks[which]() }
    if which == "stream" then
      check(r[1] == r[3] and r[2] == r[4], "stream checksum")
    end
  end
end
print(failures == 0 and "soak: all intact" or ("soak: %d FAILED"):format(failures))
os.exit(failures == 0 and 0 or 1, true)
