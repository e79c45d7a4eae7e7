-- tests/helpers.lua - shared by the test files (not a test file itself).
local np = require "namedpipe"

local H = {}

local counter = 0
-- (a fresh table's address too, its hex digits whatever the platform
-- prints before them: Lua 5.1 does not seed math.random, and two runs
-- started in the same second would otherwise share names)
local run_id = tostring(os.time()) .. "-" .. tostring(math.random(1, 1e9))
  .. "-" .. (tostring({}):match("(%x+)$") or tostring(os.clock()))

--- A pipe name no other test (or earlier run) uses.
function H.name(tag)
  counter = counter + 1
  return ([[\\.\pipe\nptest-%s-%s-%d]]):format(tag or "t", run_id, counter)
end

--- A seeded generator for the randomized tests: Park and Miller's minimal
--- standard (multiplier 48271, modulus 2^31 - 1). Every product fits a
--- double exactly, so a seed gives the same sequence on every platform and
--- every Lua version (integers or not), and math.random stays untouched
--- for the other test files. A seed of any size is folded into its range.
function H.generator(seed)
  local g, state = {}, 1
  function g.reseed(s) state = s % 2147483646 + 1 end
  function g.next() state = state * 48271 % 2147483647; return state end
  function g.rnd(n) return g.next() % n + 1 end           -- 1..n
  function g.chance(k) return g.rnd(k) == 1 end           -- 1 in k
  function g.pick(t) return t[g.rnd(t.n or #t)] end       -- t.n: lists with nils
  function g.weighted(list) -- { {w, v}, ... }
    local sum = 0
    for _, e in ipairs(list) do sum = sum + e[1] end
    local r = g.rnd(sum)
    for _, e in ipairs(list) do
      r = r - e[1]
      if r <= 0 then return e[2] end
    end
  end
  g.reseed(seed or 1)
  return g
end

--- Fill pipe's way out with try_write (64 KiB at a time) until it takes
--- no more; the bytes it took. On Linux the socket is then not writable
--- until the peer reads; on Windows a pipe stays writable (try_write is
--- refused once a write waits for the system).
local FILL_BLOCK = ("f"):rep(65536)
function H.fill(pipe)
  local total = 0
  repeat
    local k = pipe:try_write(FILL_BLOCK)
    total = total + (k or 0)
  until not k or k == 0
  return total
end

--- A step nested in the n-th call made on this thread from now on (a call
--- hook's; a finalizer's comes the same way): the hook goes, act() runs if
--- given, then `steps` steps of `ms` milliseconds (5 and 1 by default).
--- (LuaJIT's hook is every coroutine's: other threads' calls are not
--- counted.) debug.sethook() takes it away before it has fired.
function H.step_nested_at_call(n, act, steps, ms)
  local calls, me = 0, coroutine.running()
  debug.sethook(function()
    if coroutine.running() ~= me then return end
    calls = calls + 1
    if calls == n then
      debug.sethook()
      if act then act() end
      for _ = 1, steps or 5 do np.step(ms or 1) end
    end
  end, "c")
end

--- Step the loop until cond() is true; fails the test after timeout ms.
function H.pump(cond, timeout, what)
  local deadline = np.now() + (timeout or 5000)
  while not cond() do
    if np.now() > deadline then
      error("timed out waiting for " .. (what or "a condition"), 2)
    end
    np.step(10)
  end
end

--- Run fn() where a waiting call may be made: "main" (the main thread),
--- "coroutine" (a coroutine of the script's own, whose waits step the loop
--- as the main thread's do) or "task" (np.spawn; stepped until it has
--- ended, failing the test after timeout ms).
function H.run_in(where, fn, timeout, what)
  if where == "main" then return fn() end
  if where == "coroutine" then return coroutine.wrap(fn)() end
  local ended = false
  np.spawn(function()
    fn()
    ended = true
  end)
  H.pump(function() return ended end, timeout, what)
end

--- Every call that reads a pipe, by name, each made with a callback or a
--- short timeout (so that one accepted where it should be refused returns
--- soon): the calls a read holding the read slot must refuse. transact
--- needs a pipe that reads messages. Also H.reading_call_names: the names,
--- sorted (an order the same on every run).
H.reading_calls = {
  read = function(p) p:read(function() end) end,
  read_waiting = function(p) p:read(nil, 100) end,
  read_into = function(p) p:read_into(np.buffer(16), function() end) end,
  readable = function(p) p:readable(function() end) end,
  try_read = function(p) p:try_read() end,
  read_start = function(p) p:read_start(function() end) end,
  read_line = function(p) p:read_line(100) end,
  transact = function(p) p:transact("q", function() end) end,
  ready_both = function(p) p:ready("both", 100) end,
}
H.reading_call_names = {}
for name in pairs(H.reading_calls) do H.reading_call_names[#H.reading_call_names + 1] = name end
table.sort(H.reading_call_names)

--- Drain: step until nothing is in flight (bounded).
function H.settle(timeout)
  local deadline = np.now() + (timeout or 5000)
  while np.pending() > 0 and np.now() < deadline do np.step(10) end
  np.step(0)
end

--- Skip the test where os.clock is not the process's CPU time.
function H.need_cpu_time()
  if PLATFORM == "windows" then
    require("luaunit").skip("os.clock is wall-clock time in the Windows C runtime: CPU time cannot be told here")
  end
end

--- Milliseconds of CPU the process spent stepping the loop for wait_ms of
--- wall-clock time: far below wait_ms unless something keeps it busy.
function H.cpu_ms_stepping(wait_ms)
  H.need_cpu_time()
  local c0, t0 = os.clock(), np.now()
  while np.now() - t0 < wait_ms do np.step(wait_ms) end
  return (os.clock() - c0) * 1000
end

--- A connected server/client pair on a fresh name.
function H.pair(sopts, copts)
  local name = H.name("pair")
  local server = assert(np.create(name, sopts))
  local client = assert(np.open(name, copts))
  assert(server:connect(2000))
  return server, client, name
end

--- Collect a callback's results: local cb, res = H.capture(); ...; res[1]
function H.capture()
  local res = { done = false }
  return function(...)
    res.done = true
    res.n = select("#", ...)
    for i = 1, res.n do res[i] = select(i, ...) end
  end, res
end

--- Sum of bytes in a string, a cheap order-sensitive checksum.
function H.checksum(s)
  local a, b = 1, 0
  for i = 1, #s, 1 do
    a = (a + s:byte(i)) % 65521
    b = (b + a) % 65521
  end
  return b * 65536 + a
end

--- Lua 5.1 itself (not LuaJIT): where a task cannot yield, its waiting
--- calls raise there (namedpipe.task); elsewhere they block.
H.PUC_LUA51 = _VERSION == "Lua 5.1" and rawget(coroutine, "isyieldable") == nil

function H.close_all(...)
  for i = 1, select("#", ...) do
    local p = select(i, ...)
    if p then p:close() end
  end
  H.settle(2000)
end

--- os.execute(cmd) as a boolean: true when the command exited with 0
--- (Lua 5.1 and LuaJIT return the status code itself).
function H.execute(cmd)
  local r = os.execute(cmd)
  return r == true or r == 0
end

--- The command that started this interpreter (arg[-1] and before).
local function interpreter()
  local i = -1
  while arg and arg[i - 1] do i = i - 1 end
  local parts = {}
  for j = i, -1 do parts[#parts + 1] = arg[j] end
  local exe = table.concat(parts, " ")
  if PLATFORM == "windows" then exe = exe:gsub("/", "\\") end
  return exe
end

--- A shell command that runs `code` in a fresh Lua process with the same
--- interpreter and module paths (the script stays in build/ until
--- H.run_lua removes it, or the next clean).
function H.lua_command(code, ...)
  counter = counter + 1
  local script = ("build/tmp-child-%s-%d.lua"):format(run_id, counter)
  local f = assert(io.open(script, "w"))
  f:write(("package.path = %q\npackage.cpath = %q\n"):format(package.path, package.cpath))
  f:write(code)
  f:close()
  -- cmd.exe takes double quotes; sh would eat the backslashes in them
  local q = PLATFORM == "windows" and '"%s"' or "'%s'"
  local args = {}
  for i = 1, select("#", ...) do args[i] = q:format(select(i, ...)) end
  if PLATFORM == "windows" then script = script:gsub("/", "\\") end
  return ("%s %s %s"):format(interpreter(), script, table.concat(args, " ")), script
end

H.interpreter = interpreter

--- Run `code` in a fresh Lua process, with `env` ("VAR=x ..." or "env -u
--- VAR", Linux) before the command; returns ok (clean exit), its output.
function H.run_lua_env(env, code, ...)
  local cmd, script = H.lua_command(code, ...)
  local out = script .. ".out"
  local ok = H.execute(("%s%s > %s 2>&1"):format(env ~= "" and env .. " " or "", cmd, out))
  local rf = io.open(out, "r")
  local text = rf and rf:read("*a") or ""
  if rf then rf:close() end
  os.remove(script)
  os.remove(out)
  return ok == true, text
end

function H.run_lua(code, ...) return H.run_lua_env("", code, ...) end

--- Linux: where a server keeps the socket file of a name closed and not yet
--- made again (until the next step): PATH.idle padded with '~' to 108 bytes
--- (sun_path's size, so that no socket path can be that long).
function H.idle_path(path)
  return path .. ".idle" .. ("~"):rep(108 - #path - 5)
end

return H
