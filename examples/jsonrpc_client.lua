--[[
examples/jsonrpc_client.lua - a JSON-RPC 2.0 client for
examples/jsonrpc_server.lua: several requests in flight at once on one
message-mode pipe, each answer handed to the task that asked for it by id.

  lua examples/jsonrpc_client.lua NAME

It asks "sleep" first and the quick ones after; the answers are printed as
they come, so the sleep's comes last. JSON is dkjson's (Debian:
lua-dkjson; LuaRocks: dkjson).
]]
local np = require "namedpipe"
local has_json, json = pcall(require, "dkjson")
if not has_json then
  io.stderr:write("jsonrpc_client: needs the dkjson module (Debian: lua-dkjson; LuaRocks: dkjson)\n")
  os.exit(1)
end
local KEYS = { "jsonrpc", "id", "method", "params", "result", "error", "code", "message", "data" }
local function encode(v) return json.encode(v, { keyorder = KEYS }) end

local name = arg[1]
if not name then
  io.stderr:write("usage: lua jsonrpc_client.lua NAME\n")
  os.exit(2)
end
if not name:find("^[\\/]") then name = [[\\.\pipe\]] .. name end

local pipe, msg = np.open(name, { pipe_mode = "message", timeout = 5000, wait_for_server = true })
if not pipe then
  io.stderr:write("jsonrpc_client: ", msg, "\n")
  os.exit(1)
end

local calls = {} -- id -> np.event() set with the response, for requests in flight
local last_id = 0

--- call(method, params): send a request and wait (this task only) for the
--- response with the same id. Returns result, or nil and an error object.
local function call(method, params)
  last_id = last_id + 1
  local id = last_id
  local response = np.event()
  calls[id] = response
  local ok, err = pipe:write(encode { jsonrpc = "2.0", id = id, method = method, params = params })
  if not ok then
    calls[id] = nil
    return nil, { code = -32000, message = "write failed: " .. err }
  end
  -- Suspends this task only; at once if the reader already set it while
  -- our write was finishing.
  local r = response:wait()
  if r.error then return nil, r.error end
  return r.result
end

--- The one reader: every message is a response; give it to its caller.
local function reader()
  local why
  while true do
    local text, err = pipe:read()
    if not text then why = err; break end
    -- JSON null as json.null: a null in a result keeps its place
    local r = json.decode(text, 1, json.null)
    local response = type(r) == "table" and calls[r.id]
    if response then
      calls[r.id] = nil
      response:set(r)
    else
      io.stderr:write("jsonrpc_client: unexpected message: ", text, "\n")
    end
  end
  -- The pipe ended: fail whatever is still waiting.
  for id, response in pairs(calls) do
    calls[id] = nil
    response:set { error = { code = -32000, message = "connection lost: " .. why } }
  end
end

local requests = {
  { "sleep", { 200 } }, -- asked first, answered last
  { "add", { 2, 3 } },
  -- an empty table is an array to dkjson unless its metatable says object
  { "echo", { 'tab\t "quotes" \\ café', { 1, 2.5, true, false, json.null }, { ok = true },
              setmetatable({}, { __jsontype = "object" }) } },
  { "add", { "two", 3 } },
  { "no_such_method", {} },
}

np.spawn(reader)
local done = 0
for i, r in ipairs(requests) do
  -- one task per request: all five are in flight together
  np.spawn(function()
    local method, params = r[1], r[2]
    local result, err = call(method, params)
    local shown = ("#%d %s %s -> "):format(i, method, encode(params))
    if err then
      print(shown .. ("error %d %s%s"):format(err.code, err.message,
        err.data and (" (" .. encode(err.data) .. ")") or ""))
    else
      print(shown .. encode(result))
    end
    done = done + 1
    -- the last one closes the pipe: the reader's read ends with CLOSED
    if done == #requests then pipe:close() end
  end)
end
np.run() -- until every task has finished
