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
  -- the Lua 5.4 build (make windows) and the LuaJIT one (make winjit)
  local checked = 0
  for _, dll in ipairs { "build/win/namedpipe/core.dll", "build/winjit-mod/namedpipe/core.dll" } do
    local f = io.open(dll, "rb")
    if f then
      f:close()
      local out = lines_of("x86_64-w64-mingw32-objdump -p " .. dll)
      if not out or out == "" then lu.skip("x86_64-w64-mingw32-objdump is not installed") end
      local table_part = out:match("%[Ordinal/Name Pointer%] Table\n(.-)\n\n") or ""
      lu.assertEquals(exported(table_part, "%]%s+([%w_]+)"), { "luaopen_namedpipe_core" }, dll)
      checked = checked + 1
    end
  end
  if checked == 0 then lu.skip("the Windows build is not there (make windows)") end
end

-- The protocol between the C core and the Lua layer (which function a
-- method hands its waiting form to, what the layer holds of each pipe) is
-- private: nothing a script can reach changes what a method does.
function TestExports:test_the_core_lua_protocol_is_private()
  local np = require "namedpipe"
  local core = require "namedpipe.core"
  local underscored = {}
  for _, t in ipairs { np, core } do
    for k in pairs(t) do
      if type(k) == "string" and k:sub(1, 1) == "_" and k ~= "_attach" then
        underscored[#underscored + 1] = k
      end
    end
  end
  table.sort(underscored)
  -- _read_ahead is a read-only count; _watch_cancels only tells a
  -- function of the cancels the Lua layer made
  lu.assertEquals(underscored, { "_VERSION", "_VERSION", "_read_ahead", "_watch_cancels" })
  lu.assertNil(np._attach)
  -- the core hands its private half out once, and namedpipe took it
  local ok, err = pcall(core._attach)
  lu.assertFalse(ok)
  lu.assertStrContains(tostring(err), "attached already")
end
