--[[
tests/run.lua — the test runner for both platforms (run from the repo root):

    lua5.4 tests/run.lua --platform linux                  (make test-linux)
    tools/wine-run.sh build/winlua/bin/lua.exe tests/run.lua --platform windows
                                                           (make test-windows)

Options (everything else is handed to luaunit unchanged):
    --platform linux|windows   default: guessed from the directory separator
    --dir DIR                  where the test_*.lua files are (default: the
                               directory of this script; env NP_TESTS_DIR)
    -p PATTERN                 luaunit: run only tests matching PATTERN
                               (repeatable; -x PATTERN excludes)
    -q / -v                    luaunit verbosity (default here: -v, so every
                               test is listed with Ok / FAIL / SKIP + reason)
    TestClass[.test_method]    luaunit: run only these

How to write a test file (tests/test_*.lua, loaded in sorted order):
  * Define GLOBAL tables (or functions) whose names start with "Test"
    (luaunit collects every global whose name starts with "test"/"Test", so
    keep helpers local or give them other names). Methods whose names start
    with "test" are the tests; setUp/tearDown per test and setupClass/
    teardownClass per table work as usual in luaunit 3.4.
        local lu = require("luaunit")
        TestPipeBasics = {}
        function TestPipeBasics:test_open() lu.assertEquals(1, 1) end
  * A file may instead return a table { TestName = class, ... }; its "Test*"
    entries are copied into _G.
  * Skip with a reason: lu.skip("reason") or lu.skipIf(cond, "reason")
    (luaunit 3.4, Debian 12's lua-unit, supports both). Reasons are printed.
  * Globals provided for the tests:
        PLATFORM    "linux" or "windows"
        UNDER_WINE  true when PLATFORM == "windows" and we run under Wine
                    (env NP_UNDER_WINE=1, set by tools/wine-run.sh; NP_UNDER_WINE=0
                    forces false; otherwise guessed from WINE* env variables)
        REPO_ROOT   the repo root as used in package.path ("." normally)
  * Module search paths are set here: <root>/lua/?.lua, <root>/lua/?/init.lua,
    and <root>/build/linux/?.so (linux) or <root>\build\win\?.dll (windows),
    so require("namedpipe.core") finds the freshly built module; env
    NP_BUILD_DIR names another build directory (make test-luajit,
    make test-winjit).

A file that fails to load counts as one failure. The LAST line printed is
exactly "<platform>: N passed, N failed, N skipped" (failures and errors both
count as failed); the exit status is 0 only if nothing failed.
]]

local argv = arg or {}

-- ------------------------------------------------------------ arguments
local platform, testsdir, label
local luargs = {}
local verbosity_given = false
do
  local i = 1
  while i <= #argv do
    local a = argv[i]
    if a == "--platform" then
      platform = argv[i + 1]; i = i + 2
    elseif a:match("^%-%-platform=") then
      platform = a:match("^%-%-platform=(.*)$"); i = i + 1
    elseif a == "--dir" then
      testsdir = argv[i + 1]; i = i + 2
    elseif a == "--label" then
      label = argv[i + 1]; i = i + 2
    else
      if a == "-q" or a == "--quiet" or a == "-v" or a == "--verbose" then
        verbosity_given = true
      end
      luargs[#luargs + 1] = a; i = i + 1
    end
  end
end

local native_windows = package.config:sub(1, 1) == "\\"
platform = platform or (native_windows and "windows" or "linux")
if platform ~= "linux" and platform ~= "windows" then
  io.stderr:write("run.lua: --platform must be linux or windows, got ", tostring(platform), "\n")
  os.exit(2)
end
local WIN = platform == "windows"
local SEP = WIN and "\\" or "/"

-- repo root = parent of the directory holding this script
local script = argv[0] or ("tests" .. SEP .. "run.lua")
local scriptdir = script:match("^(.*)[/\\][^/\\]*$") or "."
local root = scriptdir:match("^(.*)[/\\][^/\\]+$") or "."
if scriptdir == "." then root = ".." end
testsdir = testsdir or os.getenv("NP_TESTS_DIR") or scriptdir

local function join(...) return table.concat({ ... }, SEP) end

-- The tests write their child scripts under <root>/build, which a fresh
-- checkout or an unpacked source rock (`luarocks test`) does not have yet.
do
  local probe = join(root, "build", ".run-probe")
  local f = io.open(probe, "w")
  if f then
    f:close()
    os.remove(probe)
  else
    os.execute((WIN and 'mkdir "%s"' or "mkdir -p '%s'"):format(join(root, "build")))
  end
end

-- ------------------------------------------------------------ globals
PLATFORM = platform
REPO_ROOT = root
do
  local w = os.getenv("NP_UNDER_WINE")
  if not WIN then
    UNDER_WINE = false
  elseif w == "1" then
    UNDER_WINE = true
  elseif w == "0" then
    UNDER_WINE = false
  else -- Wine imports the Unix environment
    UNDER_WINE = (os.getenv("WINEPREFIX") or os.getenv("WINELOADER")
                  or os.getenv("WINEDEBUG") or os.getenv("WINEDLLOVERRIDES")) ~= nil
  end
end

-- ------------------------------------------------------------ search paths
package.path = join(root, "lua", "?.lua") .. ";" .. join(root, "lua", "?", "init.lua")
  .. ";" .. package.path
if WIN then
  -- NP_BUILD_DIR: another build of the module (make test-winjit)
  local bd = os.getenv("NP_BUILD_DIR")
  package.cpath = join(root, bd and (bd:gsub("/", "\\")) or join("build", "win"), "?.dll")
    .. ";" .. package.cpath
  -- Debian's luaunit, if LUA_PATH did not already point there
  package.path = package.path .. ";Z:\\usr\\share\\lua\\5.4\\?.lua"
else
  -- NP_BUILD_DIR: another build of the module (make check: build/asan)
  package.cpath = join(root, os.getenv("NP_BUILD_DIR") or join("build", "linux"), "?.so")
    .. ";" .. package.cpath
end

-- The test files use 5.4's library; on older versions these few are
-- supplied here, for the tests only. The module itself never relies on
-- them: luacheck reads lua/ as the subset every version has.
table.pack = table.pack or function(...) return { n = select("#", ...), ... } end -- luacheck: ignore 122
table.unpack = table.unpack or unpack -- luacheck: ignore 113 122
math.type = math.type or function(x) -- luacheck: ignore 122
  if type(x) ~= "number" then return nil end
  if x == math.floor(x) and x >= -2 ^ 63 and x < 2 ^ 63 then return "integer" end
  return "float"
end
math.tointeger = math.tointeger or function(x) -- luacheck: ignore 122
  if math.type(x) == "integer" then return x end
end
local LUA54 = _VERSION == "Lua 5.4"

local ok_lu, lu = pcall(require, "luaunit")
if not ok_lu then
  print("run.lua: cannot load luaunit: " .. tostring(lu))
  print(string.format("%s: 0 passed, 1 failed, 0 skipped", label or platform))
  os.exit(1)
end

-- Unbuffered stdout: under a timeout the name of a hanging test is visible.
io.stdout:setvbuf("no")

-- ------------------------------------------------------------ test files
local function list_tests(dir)
  local files = {}
  local cmd
  if native_windows then
    cmd = 'dir /b /a-d "' .. dir:gsub("/", "\\") .. '\\test_*.lua" 2>nul'
  else
    cmd = "ls -1 '" .. dir:gsub("'", "'\\''") .. "' 2>/dev/null"
  end
  local p = io.popen(cmd)
  if p then
    for line in p:lines() do
      line = line:gsub("\r$", "")
      local name = line:match("([^/\\]+)$")
      -- test_*_lua54.lua: 5.4 syntax (<close>), loaded on 5.4 only
      if name and name:match("^test_.*%.lua$")
          and (LUA54 or not name:match("_lua54%.lua$")) then
        files[#files + 1] = name
      end
    end
    p:close()
  end
  table.sort(files)
  return files
end

local failed_extra = 0
local files = list_tests(testsdir)
if #files == 0 then
  print("run.lua: no test_*.lua files found in " .. testsdir)
  failed_extra = failed_extra + 1
end

print(string.format("run.lua: platform=%s under_wine=%s %s, %s", platform,
  tostring(UNDER_WINE), _VERSION, "luaunit " .. tostring(lu.VERSION)))
for _, name in ipairs(files) do
  local path = testsdir .. SEP .. name
  local chunk, err = loadfile(path)
  local ok, res = false, err
  if chunk then ok, res = pcall(chunk) end
  if not ok then
    print("ERROR loading " .. path .. ": " .. tostring(res))
    failed_extra = failed_extra + 1
  elseif type(res) == "table" then
    for k, v in pairs(res) do
      if type(k) == "string" and k:match("^[Tt]est") then _G[k] = v end
    end
  end
end

-- ------------------------------------------------------------ run
if not verbosity_given then table.insert(luargs, 1, "-v") end
table.insert(luargs, 1, "text")
table.insert(luargs, 1, "-o") -- never let luaunit fall back to the global `arg`

local runner = lu.LuaUnit.new()
local ok_run, run_err = pcall(runner.runSuite, runner, table.unpack(luargs))
if not ok_run then
  print("run.lua: luaunit raised an error: " .. tostring(run_err))
  failed_extra = failed_extra + 1
end

local r = runner.result or {}
-- A run that selected no test at all (a -p pattern with a typo) has
-- checked nothing: it fails rather than report a clean 0.
if ok_run and (r.successCount or 0) + (r.failureCount or 0) + (r.errorCount or 0)
    + (r.skippedCount or 0) == 0 then
  print("run.lua: no test was selected (check the -p/-x patterns)")
  failed_extra = failed_extra + 1
end
local passed = r.successCount or 0
local failed = (r.failureCount or 0) + (r.errorCount or 0) + failed_extra
local skipped = r.skippedCount or 0

if r.skippedTests and #r.skippedTests > 0 then
  print("Skipped tests:")
  for _, node in ipairs(r.skippedTests) do
    print("  " .. tostring(node.testName) .. ": " .. tostring(node.msg))
  end
end

-- One line per failed test, "FAILED <label> <test>: <first line>", just
-- above the summary: tools/test-all.sh repeats these lines at the end of a
-- whole run, where a CI log that keeps only its head and tail still shows
-- which test failed and why.
local function first_line(msg)
  return (tostring(msg):gsub("\r", ""):match("^[^\n]*"))
end
for _, list in ipairs({ r.failedTests or {}, r.errorTests or {} }) do
  for _, node in ipairs(list) do
    print(string.format("FAILED %s %s: %s", label or platform,
      tostring(node.testName), first_line(node.msg)))
  end
end

print(string.format("%s: %d passed, %d failed, %d skipped", label or platform, passed, failed, skipped))
io.stdout:flush()
os.exit(failed == 0 and 0 or 1, true) -- close the state: the loop drains and frees
