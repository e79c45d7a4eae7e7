-- The module exports one symbol, luaopen_namedpipe_core: its internal
-- functions (np_*) are hidden, so another library's function of the same
-- name in the same process can never bind in place of ours, nor ours in
-- place of theirs.
local lu = require "luaunit"

TestExports = {}

local function lines_of(cmd)
  local p = io.popen(cmd .. " 2>/dev/null")
  if not p then return nil end
  local out = p:read("*a")
  p:close()
  return out
end

local function exported(out, pattern)
  local names = {}
  for name in out:gmatch(pattern) do names[#names + 1] = name end
  table.sort(names)
  return names
end

function TestExports:test_linux_shared_object()
  if PLATFORM ~= "linux" then lu.skip("nm runs on the Linux side (the DLL is checked there)") end
  local so = (os.getenv("NP_BUILD_DIR") or "build/linux") .. "/namedpipe/core.so"
  local out = lines_of("nm -D --defined-only " .. so)
  if not out or out == "" then lu.skip("nm (binutils) is not installed") end
  lu.assertEquals(exported(out, "%x+ [TDBRW] ([%w_]+)"), { "luaopen_namedpipe_core" })
end

function TestExports:test_windows_dll()
  if PLATFORM ~= "linux" then lu.skip("mingw-w64's objdump runs on the Linux side") end
  local f = io.open("build/win/namedpipe/core.dll", "rb")
  if not f then lu.skip("the Windows build is not there (make windows)") end
  f:close()
  local out = lines_of("x86_64-w64-mingw32-objdump -p build/win/namedpipe/core.dll")
  if not out or out == "" then lu.skip("x86_64-w64-mingw32-objdump is not installed") end
  local table_part = out:match("%[Ordinal/Name Pointer%] Table\n(.-)\n\n") or ""
  lu.assertEquals(exported(table_part, "%]%s+([%w_]+)"), { "luaopen_namedpipe_core" })
end
