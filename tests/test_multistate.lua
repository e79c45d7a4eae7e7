--[[
tests/test_multistate.lua - many Lua states in one process do not interfere.

Runs the prebuilt tests/c/multi_state.c binary (built by `make multistate`;
this file builds nothing and skips, saying so, when the binary is missing):
several Lua states, each loading the module with its own completion port /
epoll instance, exchanging data between states and inside each, stepped
round-robin from one thread and then one thread per state, then closed in
several orders with operations pending. See the top of multi_state.c.

Linux: build/multistate/multi_state, or build/asan/multi_state when the
suite runs against the ASan build (NP_BUILD_DIR=build/asan, make
check-asan). Windows: build\multistate\multi_state.exe (with lua54.dll
beside it).
]]
local lu = require "luaunit"

local WIN = PLATFORM == "windows"

local function exists(path)
  local f = io.open(path, "rb")
  if f then f:close() end
  return f ~= nil
end

local function binary()
  if WIN then return "build\\multistate\\multi_state.exe" end
  local build = os.getenv("NP_BUILD_DIR")
  if build and build:match("asan") then return "build/asan/multi_state" end
  return "build/multistate/multi_state"
end

TestMultiState = {}

function TestMultiState:test_many_states_in_one_process()
  local root = REPO_ROOT or "."
  local sep = WIN and "\\" or "/"
  local exe = root .. sep .. binary()
  if _VERSION ~= "Lua 5.4" then
    lu.skip("tests/c/multi_state.c is a Lua 5.4 host: it loads the 5.4 build, not this version's")
  end
  if not exists(exe) then
    lu.skip(exe .. " is not built (make multistate)")
  end
  local out = ("build%stmp-multistate-%d-%d.out"):format(sep, os.time(), math.random(1, 1e6))
  local cmd
  if WIN then
    -- cmd /c drops the first and the last quote of a line that starts
    -- with one: wrap the whole line in one more pair
    cmd = ('""%s" 4 100 "%s" > "%s" 2>&1"'):format(exe, root, out)
  else
    -- bounded: a hang must fail the test, not the whole run
    local t = os.execute("command -v timeout >/dev/null 2>&1") and "timeout -k 5 120 " or ""
    cmd = ("%s'%s' 4 100 '%s' > '%s' 2>&1"):format(t, exe, root, out)
  end
  local ok = os.execute(cmd)
  local f = io.open(out, "r")
  local text = f and f:read("*a") or ""
  if f then f:close() end
  os.remove(out)
  local last = ""
  for line in text:gmatch("[^\r\n]+") do last = line end
  print("\n  " .. last)
  lu.assertTrue(ok == true, "multi_state failed:\n" .. text)
  lu.assertStrContains(last, ": OK in", false, "multi_state output:\n" .. text)
end
