--[[
tools/rock-roundtrip.lua - run by tools/rock-check.sh against a rocks tree
that LuaRocks installed the rock into:

    lua5.4 tools/rock-roundtrip.lua TREE VERSION
    tools/wine-run.sh build/winlua/bin/lua.exe tools/rock-roundtrip.lua Z:\...\TREE VERSION

The module search paths are set to TREE alone (whatever LUA_PATH says), and
to this interpreter's version's part of it (lua5.1 and luajit: 5.1), so
nothing of the checkout can stand in for what LuaRocks installed. Then a
server and a client exchange data in both pipe modes, with callbacks and in
tasks. Prints "rock round trip ok: ..." and exits 0, or raises. Runs on
every Lua from 5.1 on.
]]
local tree, version = arg[1], arg[2]
assert(tree and version, "usage: rock-roundtrip.lua TREE VERSION")

local win = package.config:sub(1, 1) == "\\"
local sep = win and "\\" or "/"
tree = tree:gsub("[/\\]", sep):gsub("[/\\]$", "")
local function p(...) return table.concat({ tree, ... }, sep) end
local luav = assert(_VERSION:match("^Lua (%d+%.%d+)$"), _VERSION)
package.path = p("share", "lua", luav, "?.lua") .. ";" .. p("share", "lua", luav, "?", "init.lua")
package.cpath = p("lib", "lua", luav, "?." .. (win and "dll" or "so"))

-- (Lua 5.1 has no package.searchpath)
local searchpath = package.searchpath or function(mod, path)
  local file = mod:gsub("%.", sep)
  for template in path:gmatch("[^;]+") do
    local f = template:gsub("%?", file)
    local h = io.open(f, "rb")
    if h then h:close(); return f end
  end
  return nil, "module " .. mod .. " not found on " .. path
end

local function from_tree(mod, where)
  local file = assert(searchpath(mod, where))
  assert(file:sub(1, #tree) == tree, mod .. " found outside the tree: " .. file)
  return file
end
local core_file = from_tree("namedpipe.core", package.cpath)
from_tree("namedpipe", package.path)

local np = require "namedpipe"
assert(np._VERSION == version, ("installed _VERSION %s, rock %s"):format(np._VERSION, version))

local name = ([[\\.\pipe\np-rock-%d-%d]]):format(os.time(), math.random(1, 1e6))

-- message mode, callback form
local server = assert(np.create(name, { pipe_mode = "message", first_pipe_instance = true }))
local client = assert(np.open(name, { pipe_mode = "message" }))
local got
server:connect(function(ok, err)
  assert(ok, err)
  server:read(function(msg, err2)
    got = assert(msg, err2)
    server:write("pong:" .. msg, function(n, err3) assert(n, err3) end)
  end)
end)
client:write("ping from the rock", function(n, err) assert(n == 18, err) end)
local deadline = np.now() + 10000
while not got and np.now() < deadline do np.step(100) end
assert(got == "ping from the rock", "server got " .. tostring(got))
assert(client:read(nil, 10000) == "pong:ping from the rock")
server:close()
client:close()

-- byte mode, tasks and np.serve
local lines = {}
local srv = assert(np.serve(name .. "-b", {}, function(pipe)
  -- (not `for line in pipe:lines()`: Lua 5.1 cannot suspend a task in a
  -- for's iterator)
  while true do
    local line = pipe:read_line()
    if not line then break end
    pipe:write(line:upper() .. "\n")
  end
end))
np.run(function()
  local c = assert(np.open(name .. "-b", { timeout = 5000 }))
  for _, s in ipairs { "one", "two words" } do
    assert(c:write(s .. "\n", 5000))
    lines[#lines + 1] = assert(c:read_line(5000))
  end
  c:close()
  srv.close()
end)
assert(lines[1] == "ONE" and lines[2] == "TWO WORDS", table.concat(lines, "|"))

local jit = rawget(_G, "jit") -- LuaJIT's
print(("rock round trip ok: namedpipe %s on %s from %s"):format(np._VERSION,
  jit and jit.version or _VERSION, core_file))
