--[[
tests/test_many_names.lua - one loop serving hundreds of names at once.

A seeded random sequence over a pool of names, each with at most one
instance: create, open (NOT_FOUND with no instance, PIPE_BUSY while the
instance has its client, else connected), a message there and back on a
connected pair, a client's close (the server reads the end, disconnects
and calls connect() again, and the instance takes the next client), a server's close (the
name vanishes: its client reads the end). Every outcome is checked against
a model of which names exist and which instances are busy, while names
come and go in every order. (On Linux the loop finds a name's listening
socket in a table that grows with the names it serves, and the listeners
waiting for their plug are kept in a list of their own: this crosses both.)
NP_MANY_NAMES_SEED picks one seed.
]]
local lu = require "luaunit"
local np = require "namedpipe"
local H = require "tests.helpers"

TestManyNames = {}

function TestManyNames:tearDown() H.settle(2000) end

local function run_seed(seed, n_names, steps)
  local g = H.generator(seed)
  local names, state = {}, {}
  for k = 1, n_names do
    names[k] = H.name("many" .. k)
    -- server: the instance or nil; client: its client or nil; listening:
    -- the callback's results of a connect() called after a disconnect
    state[k] = {}
  end
  local i, step
  local function where(what) return ("seed %d, step %d, %s: %s"):format(seed, step, names[i], what) end
  local created = 0
  for k = 1, steps do
    step, i = k, g.rnd(n_names)
    local s = state[i]
    local what = g.weighted { { 4, "create" }, { 4, "open" }, { 3, "exchange" }, { 2, "close_client" },
      { 1, "close_server" } }
    if what == "create" and not s.server then
      s.server = assert(np.create(names[i], { max_instances = 1 }))
      created = created + 1
    elseif what == "open" then
      local c, _, errname = np.open(names[i])
      if not s.server then
        lu.assertNil(c, where("no instance"))
        lu.assertEquals(errname, "NOT_FOUND", where("no instance"))
      elseif s.client then
        lu.assertNil(c, where("instance busy"))
        lu.assertEquals(errname, "PIPE_BUSY", where("instance busy"))
      else
        lu.assertNotNil(c, where("instance free"))
        s.client = c
        if s.listening then -- its connect() was called again after the last client
          H.pump(function() return s.listening.done end, 2000, where("connect"))
          lu.assertTrue(s.listening[1], where("connect"))
          s.listening = nil
        else
          lu.assertTrue(s.server:connect(2000), where("connect"))
        end
      end
    elseif what == "exchange" and s.client then
      local token = ("%d:%d"):format(i, step)
      assert(s.client:write(token, 2000))
      lu.assertEquals(s.server:read(nil, 2000), token, where("to the server"))
      assert(s.server:write(token, 2000))
      lu.assertEquals(s.client:read(nil, 2000), token, where("to the client"))
    elseif what == "close_client" and s.client then
      s.client:close()
      s.client = nil
      local data, _, errname = s.server:read(nil, 2000)
      lu.assertNil(data, where("the end after the client's close"))
      lu.assertTrue(errname == "EOF" or errname == "BROKEN_PIPE", where(tostring(errname)))
      assert(s.server:disconnect())
      -- listening again only once connect() is called, as on Windows
      local cb, res = H.capture()
      s.server:connect(cb)
      s.listening = res
    elseif what == "close_server" and s.server then
      s.server:close()
      s.server, s.listening = nil, nil
      if s.client then
        local data = s.client:read(nil, 2000)
        lu.assertNil(data, where("the end after the server's close"))
        s.client:close()
        s.client = nil
      end
    end
  end
  lu.assertTrue(created > n_names / 2, "seed " .. seed .. ": most names were made")
  for k = 1, n_names do
    local s = state[k]
    if s.client then s.client:close() end
    if s.server then s.server:close() end
  end
  -- every name is gone
  for k = 1, n_names, 7 do
    lu.assertEquals(select(3, np.open(names[k])), "NOT_FOUND", "seed " .. seed .. ": " .. names[k])
  end
end

function TestManyNames:test_names_come_and_go_in_every_order()
  local env = os.getenv("NP_MANY_NAMES_SEED")
  local seeds = env and { (assert(tonumber(env), "NP_MANY_NAMES_SEED: a number")) } or { 1, 2, 3 }
  -- (fewer names under Wine: each pipe call is a round trip to the wineserver)
  local n_names = UNDER_WINE and 60 or 300
  for _, seed in ipairs(seeds) do run_seed(seed, n_names, n_names * 10) end
end

-- Names whose only instance has a client of this process: once the loop
-- has stepped, a client of another process finds each of them busy (on
-- Linux each listener keeps its queue full with a connection of its own,
-- made by the step for every listener that wanted one).
function TestManyNames:test_busy_names_are_busy_to_another_process()
  local pairs_, names = {}, {}
  for k = 1, 5 do
    names[k] = H.name("busy" .. k)
    local server = assert(np.create(names[k], { max_instances = 1 }))
    local client = assert(np.open(names[k]))
    assert(server:connect(2000))
    pairs_[k] = { server, client }
  end
  np.step(0)
  local ok, out = H.run_lua([[
    local np = require "namedpipe"
    for k = 1, select("#", ...) do
      local p, _, errname = np.open((select(k, ...)))
      io.write(p and "connected" or errname, "\n")
    end]], table.unpack(names))
  lu.assertTrue(ok, out)
  lu.assertEquals(out, string.rep("PIPE_BUSY\n", #names))
  for _, p in ipairs(pairs_) do H.close_all(p[1], p[2]) end
end
