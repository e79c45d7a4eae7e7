--[[
bench/report.lua - the tables of `make bench` from the raw result lines that
bench/run.sh collects:

    lua5.4 bench/report.lua build/bench/results.txt [affinity-file] [quick]

Each raw line: "<platform> <impl> <workload> <metric>=<value> [key=value ...]"
(one run of one implementation). Per platform, per workload: the median of
the runs, their min-max, and ratios of the medians against the baseline (and
luv on Linux), with the targets of bench/README.md.
]]

local path, pinfile, quick = arg[1], arg[2], arg[3] == "1"
if not path then
  io.stderr:write("usage: lua5.4 bench/report.lua results.txt [affinity-file] [quick]\n")
  os.exit(2)
end

-- data[platform][impl][workload][metric] = { values... }
local data, order = {}, {}
for line in io.lines(path) do
  local platform, impl, workload, rest = line:match("^(%S+) (%S+) (%S+) (.*)$")
  if platform then
    if not data[platform] then data[platform] = {}; order[#order + 1] = platform end
    local d = data[platform]
    d[impl] = d[impl] or {}
    d[impl][workload] = d[impl][workload] or { _first = nil }
    local w = d[impl][workload]
    for k, v in rest:gmatch("(%S+)=(%S+)") do
      local n = tonumber(v)
      if n and k ~= "min" and k ~= "max" and k ~= "runs" and k ~= "n" and k ~= "mib"
        and k ~= "write" and k ~= "inflight" and k ~= "pairs" and k ~= "msg" then
        w[k] = w[k] or {}
        table.insert(w[k], n)
        w._first = w._first or k
      elseif k == "pairs" then
        w.pairs = v
      elseif k == "n" then
        w.n = v
      end
    end
  end
end

local function stats(t)
  if not t or #t == 0 then return nil end
  local s = {}
  for i = 1, #t do s[i] = t[i] end
  table.sort(s)
  local n = #s
  local m = n % 2 == 1 and s[(n + 1) // 2] or (s[n // 2] + s[n // 2 + 1]) / 2
  return m, s[1], s[n], n
end

local function group(x)
  -- 1234567.8 -> "1,234,568"; small numbers keep one decimal
  if x >= 100 then
    local s = ("%.0f"):format(x)
    local out = s:reverse():gsub("(%d%d%d)", "%1,"):reverse()
    return (out:gsub("^,", ""))
  end
  return ("%.1f"):format(x)
end

local function cell(t)
  local m, lo, hi, n = stats(t)
  if not m then return "-" end
  if n == 1 then return group(m) end
  return ("%s (%s–%s)"):format(group(m), group(lo), group(hi))
end

local function ratio(a, b, _lower_better)
  local ma, mb = stats(a), stats(b)
  if not ma or not mb or mb == 0 then return "-" end
  return ("%.2f"):format(ma / mb)
end

local targets = {
  linux = { pingpong = 0.85, pingpong_byte = 0.85, stream = 0.95, stream_string = 0.85,
            churn = 0.85, pingpong_tasks = 0.60, pingpong_tasks_untimed = 0.70 },
  windows = { pingpong = 0.90, pingpong_byte = 0.90, stream = 0.90, stream_string = 0.90,
              churn = 0.90, pingpong_tasks = 0.90, pingpong_tasks_untimed = 0.90 },
}

local function sh(cmd)
  local f = io.popen(cmd .. " 2>/dev/null")
  if not f then return "" end
  local s = f:read("*a") or ""
  f:close()
  return (s:gsub("%s+$", ""))
end

local function cpu_model()
  local f = io.open("/proc/cpuinfo")
  if not f then return "?" end
  local s = f:read("*a")
  f:close()
  return (s:match("model name%s*:%s*([^\n]+)") or "?")
end

-- Pad counting UTF-8 characters (the en dash is one column).
local function width(s) return utf8.len(s) or #s end
local function pad(s, w, right)
  local n = w - width(s)
  if n <= 0 then return s end
  return right and (string.rep(" ", n) .. s) or (s .. string.rep(" ", n))
end

local function print_table(header, rows)
  local w = {}
  for i, h in ipairs(header) do w[i] = width(h) end
  for _, r in ipairs(rows) do
    for i, c in ipairs(r) do if width(c) > (w[i] or 0) then w[i] = width(c) end end
  end
  local function line(r)
    local parts = {}
    for i = 1, #header do parts[i] = pad(r[i] or "", w[i], i > 1) end
    return "| " .. table.concat(parts, " | ") .. " |"
  end
  print(line(header))
  local sep = {}
  for i = 1, #header do sep[i] = string.rep("-", w[i]) end
  print("|-" .. table.concat(sep, "-|-") .. "-|")
  for _, r in ipairs(rows) do print(line(r)) end
end

local labels = {
  pingpong = "ping-pong 64 B, message mode (round trips/s)",
  pingpong_byte = "ping-pong 64 B, byte mode (round trips/s)",
  pingpong_tasks = "ping-pong 64 B, message mode, in tasks with timeouts (round trips/s)",
  pingpong_tasks_untimed = "ping-pong 64 B, message mode, in tasks without timeouts (round trips/s)",
  pingpong_waiting = "ping-pong 64 B, message mode, waiting calls on the main thread (round trips/s)",
  pingpong_lines = "ping-pong 64 B lines, byte mode, write and read_line on the main thread (round trips/s)",
  stream = "stream 64 KiB, read_into a buffer (MiB/s)",
  stream_string = "stream 64 KiB, read() strings (MiB/s)",
  stream_string_large = "stream 64 KiB, read(262144) strings (MiB/s)",
  churn = "churn (connections/s)",
  churn_vanish = "churn, the name vanishing between clients (connections/s)",
  queued = "queued messages read back, 64 B, message mode (messages/s)",
  step0 = "idle step(0) (ns/call; lower is better)",
}

local borrowed_baseline = { stream_string = "stream", stream_string_large = "stream",
                            pingpong_tasks = "pingpong",
                            pingpong_tasks_untimed = "pingpong",
                            pingpong_waiting = "pingpong",
                            pingpong_lines = "pingpong_byte" }

-- Rows whose target is against the same implementation's own figure for
-- another workload (bench/README.md, Targets): workload, the one it is
-- divided by, what the ratio says, the target.
local own_ratios = {
  { "queued", "pingpong", "queued messages/s ÷ ping-pong round trips/s", 0.5 },
  { "churn_vanish", "churn", "churn, name vanishing ÷ churn, name kept (connections/s)", 0.5 },
}

local machine = ("%s, %s CPUs, Linux %s"):format(cpu_model(), sh("nproc"), sh("uname -r"))

for _, platform in ipairs(order) do
  local d = data[platform]
  local np, core, base, luv = d.namedpipe or {}, d["np.core"] or {}, d.baseline or {}, d.luv
  local jit = d["np.luajit"] -- namedpipe again, run by LuaJIT
  local nruns = 0
  for _, w in pairs(np) do
    if w._first then nruns = math.max(nruns, #w[w._first]) end
  end
  local title
  if platform == "windows" then
    title = ("== Windows (Wine: %s; wine + wineserver pinned to one CPU) — %s; %d run(s) each, alternating =="):format(
      sh("wine --version"), machine, nruns)
  else
    local pinning = "not pinned"
    local f = io.open((path:gsub("[^/]*$", "")) .. "linux-pinning.txt")
    if f then
      local cpu = (f:read("*l") or ""):match("^linux (%S+)")
      f:close()
      if cpu and cpu ~= "unpinned" then pinning = "pinned to CPU " .. cpu end
    end
    title = ("== Linux — %s; %d run(s) each, alternating, %s =="):format(machine, nruns, pinning)
  end
  print(title)
  if quick then print("(--quick: tiny sizes, a smoke run; the figures mean nothing)") end
  local has_core = next(core) ~= nil
  local header = { "workload", "namedpipe", "np.core", "baseline (C)", "np/C", "core/C" }
  if jit then
    header[#header + 1] = "np LuaJIT"
    header[#header + 1] = "jit/C"
  end
  if luv then
    header[#header + 1] = "luv"
    header[#header + 1] = "np/luv"
  end
  header[#header + 1] = "target np/C"
  local rows = {}
  for _, wl in ipairs { "pingpong", "pingpong_byte", "pingpong_tasks", "pingpong_tasks_untimed",
                        "pingpong_waiting", "pingpong_lines", "stream", "stream_string", "stream_string_large", "churn",
                        "churn_vanish", "queued", "step0" } do
    local function get(impl, as)
      local w = impl and impl[as or wl]
      return w and w._first and w[w._first]
    end
    local a, c = get(np), get(core)
    -- A row measured by namedpipe alone borrows the C program's figure
    -- (the C program has one stream, into a buffer; the tasks' ping-pong
    -- is compared with the C ping-pong), and shows only with its own.
    local borrows = borrowed_baseline[wl]
    local b = get(base, borrows)
    -- luv's stream reads strings of 64 KiB: its row is stream_string
    local l = wl ~= "stream" and wl ~= "stream_string_large" and not wl:match("^pingpong_tasks")
      and wl ~= "pingpong_waiting" and wl ~= "pingpong_lines"
      and get(luv, borrows) or nil
    if a or c or l or (b and not borrows) then
      local label = labels[wl]
      if wl == "queued" then -- how many were queued
        local w = np.queued or base.queued or core.queued
        local n = w and tonumber(w.n)
        if n then label = group(n) .. " " .. label end
      end
      local row = { label, cell(a), cell(c), cell(b), ratio(a, b), ratio(c, b) }
      if jit then
        local j = get(jit)
        row[#row + 1] = cell(j)
        row[#row + 1] = ratio(j, b)
      end
      if luv then
        row[#row + 1] = cell(l)
        row[#row + 1] = ratio(a, l)
      end
      local t = not quick and targets[platform] and targets[platform][wl]
      if t and a and b then
        local r = stats(a) / stats(b)
        local verdict = r >= t and "met" or ("MISSED by " .. ("%.0f%%"):format((t - r) / t * 100))
        row[#row + 1] = ("≥ %.2f %s"):format(t, verdict)
      elseif wl == "queued" or wl == "churn_vanish" then
        row[#row + 1] = "(own ratio: below)"
      elseif wl == "step0" then
        row[#row + 1] = "(C: " .. (platform == "windows" and "GQCSEx(0)" or "epoll_wait(0)")
          .. (luv and "; luv: uv.run nowait)" or ")")
      else
        row[#row + 1] = ""
      end
      rows[#rows + 1] = row
    end
  end
  if not has_core then -- (--quick leaves np.core out)
    table.remove(header, 6); table.remove(header, 3)
    for _, r in ipairs(rows) do table.remove(r, 6); table.remove(r, 3) end
  end
  print_table(header, rows)
  -- Each implementation against itself: a queue as fast as a round trip,
  -- a name made anew per client as fast as a name kept.
  local orows = {}
  for _, o in ipairs(own_ratios) do
    local function own(impl)
      local w, by = impl and impl[o[1]], impl and impl[o[2]]
      return w and w._first and w[w._first], by and by._first and by[by._first]
    end
    local a, a_by = own(np)
    if a or own(base) then
      local row = { o[3], ratio(a, a_by) }
      if has_core then row[#row + 1] = ratio(own(core)) end
      row[#row + 1] = ratio(own(base))
      if luv then row[#row + 1] = ratio(own(luv)) end
      local r = a and a_by and stats(a) / stats(a_by)
      if quick or not r then
        row[#row + 1] = ("≥ %.2f"):format(o[4])
      else
        row[#row + 1] = ("≥ %.2f %s"):format(o[4], r >= o[4] and "met"
          or ("MISSED by " .. ("%.0f%%"):format((o[4] - r) / o[4] * 100)))
      end
      orows[#orows + 1] = row
    end
  end
  if #orows > 0 then
    local oheader = { "each against itself", "namedpipe" }
    if has_core then oheader[#oheader + 1] = "np.core" end
    oheader[#oheader + 1] = "baseline (C)"
    if luv then oheader[#oheader + 1] = "luv" end
    oheader[#oheader + 1] = "target (namedpipe)"
    print()
    print_table(oheader, orows)
  end
  if jit then
    print("namedpipe, np.core: Lua 5.4; np LuaJIT: the namedpipe runs with LuaJIT 2.1 and the module built for it")
  end
  for _, who in ipairs { { np, "namedpipe" }, { jit or {}, "namedpipe on LuaJIT" } } do
    local m = who[1].memory
    if m then
      local function mv(k)
        local v = stats(m[k])
        return v and ("%.2f KiB"):format(v) or "n/a"
      end
      print(("memory per idle connected pair (%s pairs, %s): Lua heap %s, process RSS %s;"
        .. " with a read pending on both ends: Lua heap %s, RSS %s%s")
        :format(m.pairs or "?", who[2], mv("lua_kib_per_pair"), mv("rss_kib_per_pair"),
          mv("lua_kib_per_pair_reading"), mv("rss_kib_per_pair_reading"),
          platform == "windows" and (" (RSS of the Wine process, read from Z:\\proc\\self\\status;"
            .. " the pipes themselves live in the wineserver and are not counted)") or ""))
    end
  end
  if platform == "windows" and pinfile then
    local f = io.open(pinfile)
    local seen, bad = 0, {}
    if f then
      for l in f:lines() do
        seen = seen + 1
        local prog, srv = l:match("program=(%S*) wineserver=(%S*)")
        if not prog or prog:find("[,-]") or srv:find("[,-]") or prog ~= srv then bad[#bad + 1] = l end
      end
      f:close()
    end
    local total = 0
    for _, impl in pairs(d) do
      local w = impl.pingpong or impl.stream or impl.churn or impl.step0
      if w and w._first then total = total + #w[w._first] end
    end
    if seen == 0 then
      print("pinning check: no run was seen (affinity unknown)")
    elseif #bad == 0 then
      print(("pinning check: program and wineserver on one and the same CPU in all %d checked runs (of %d)")
        :format(seen, total))
    else
      print(("pinning check: %d of %d checked runs NOT pinned as wanted:"):format(#bad, seen))
      for _, l in ipairs(bad) do print("  " .. l) end
    end
  end
  print()
end
