-- Lua 5.4's to-be-closed variables: a pipe in one is closed when it goes
-- out of scope (__close). Loaded by tests/run.lua on Lua 5.4 only (the
-- syntax does not parse on older versions).
local lu = require "luaunit"
local np = require "namedpipe"
local H = require "tests.helpers"

TestClose54 = {}

function TestClose54:test_close_variable_closes()
  local name = H.name("tbc")
  local captured
  do
    local server <close> = assert(np.create(name))
    captured = server
    lu.assertEquals(server:state(), "listening")
  end
  lu.assertEquals(captured:state(), "closed")
end
