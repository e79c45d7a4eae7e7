--[[
namedpipe.compat - what the Lua files need that not every Lua has: 5.1
and LuaJIT lack table.pack/unpack and math.type, 5.1 and 5.2 string.pack
and coroutine.isyieldable.
Each is the version's own where it has one. (luacheck reads lua/ as the
common subset of every version, so a use of one outside this file shows.)
]]
local C = {}

C.pack = table.pack or function(...) -- luacheck: ignore 143
  return { n = select("#", ...), ... }
end

C.unpack = table.unpack or unpack -- luacheck: ignore 113 143

--- coroutine.isyieldable, or nil (Lua 5.1 and 5.2 have none; LuaJIT has).
C.co_isyieldable = coroutine.isyieldable -- luacheck: ignore 143

local floor = math.floor

--- math.type: before 5.3 every number is a float, and one with an integral
--- value (that fits 64 bits) counts as an integer, as the C module's
--- checks count it (src/compat.h).
C.math_type = math.type or function(x) -- luacheck: ignore 143
  if type(x) ~= "number" then return nil end
  if x == floor(x) and x >= -2 ^ 63 and x < 2 ^ 63 then return "integer" end
  return "float"
end

--- A 32-bit unsigned big-endian integer, as 4 bytes and back.
function C.u32be(n)
  return string.char(floor(n / 16777216) % 256, floor(n / 65536) % 256,
                     floor(n / 256) % 256, n % 256)
end

function C.from_u32be(s)
  local a, b, c, d = s:byte(1, 4)
  return ((a * 256 + b) * 256 + c) * 256 + d
end

return C
