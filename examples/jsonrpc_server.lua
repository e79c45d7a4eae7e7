--[[
examples/jsonrpc_server.lua - JSON-RPC 2.0 over a message-mode pipe: one
request per message, one response per message.

  lua examples/jsonrpc_server.lua NAME [--count N]

Methods: add [a, b] -> a + b;  echo <params> -> params;
         sleep [ms] -> "slept <ms> ms" (answers late: shows that replies
         come back in any order and are matched by id).
Errors are JSON-RPC error objects: -32700 parse error, -32600 invalid
request, -32601 method not found, -32602 invalid params, -32603 internal.
A request without "id" is a notification: it runs, nothing is sent back.
--count N: exit after N clients have gone (the tests use it).
Try it by hand:  lua examples/pipecat.lua --message NAME
  {"jsonrpc":"2.0","method":"add","params":[1,2],"id":1}
JSON is dkjson's (Debian: lua-dkjson; LuaRocks: dkjson).
]]
local np = require "namedpipe"

-- A whole number given as text, or nil (math.tointeger is Lua 5.3's).
local function whole(text)
  local n = tonumber(text)
  if n and n == math.floor(n) then return n end
end
local has_json, json = pcall(require, "dkjson")
if not has_json then
  io.stderr:write("jsonrpc_server: needs the dkjson module (Debian: lua-dkjson; LuaRocks: dkjson)\n")
  os.exit(1)
end

-- Responses list their members in this order (dkjson writes the keys of
-- a table in this order, any others after them).
local KEYS = { "jsonrpc", "id", "method", "params", "result", "error", "code", "message", "data" }

--- One JSON value and nothing after it; JSON null as json.null, so arrays
--- keep their length and an echo gives back what came. Decoded objects and
--- arrays carry dkjson's metatable that says which they are ({} stays {}).
local function decode(text)
  local value, pos, err = json.decode(text, 1, json.null)
  if err then return nil, err end
  local extra = text:find("%S", pos)
  if extra then return nil, "trailing characters at byte " .. extra end
  return value
end

local function is_object(v)
  local mt = type(v) == "table" and getmetatable(v)
  return mt and mt.__jsontype == "object" or false
end

local name, count
do
  local i = 1
  while arg[i] do
    if arg[i] == "--count" then
      count = whole(arg[i + 1]); i = i + 2
    else
      name = arg[i]; i = i + 1
    end
  end
  if not name then
    io.stderr:write("usage: lua jsonrpc_server.lua NAME [--count N]\n")
    os.exit(2)
  end
  if not name:find("^[\\/]") then name = [[\\.\pipe\]] .. name end
end

local function rpc_error(code, message, data)
  return { code = code, message = message, data = data }
end

-- Each method gets the params and returns a result, or nil and an error
-- object. They run in a task of their own, so they may wait (np.sleep,
-- pipe I/O) without holding up other requests.
local methods = {}

function methods.add(params)
  local a, b = params[1], params[2]
  if type(a) ~= "number" or type(b) ~= "number" or params[3] ~= nil then
    return nil, rpc_error(-32602, "Invalid params", "add expects two numbers")
  end
  return a + b
end

function methods.echo(params)
  return params
end

function methods.sleep(params)
  local ms = params[1]
  if type(ms) ~= "number" or ms ~= math.floor(ms) or ms < 0 or ms > 10000 then
    return nil, rpc_error(-32602, "Invalid params", "sleep expects [ms], 0..10000")
  end
  np.sleep(ms)
  return ("slept %d ms"):format(ms)
end

--- One request text in, one response table out (nil for a notification).
local function handle(text)
  local req, why = decode(text)
  if why then
    return { jsonrpc = "2.0", id = json.null, error = rpc_error(-32700, "Parse error", why) }
  end
  local id = is_object(req) and req.id
  if not is_object(req) or req.jsonrpc ~= "2.0" or type(req.method) ~= "string"
      or (req.params ~= nil and type(req.params) ~= "table") then
    return { jsonrpc = "2.0", id = id or json.null, error = rpc_error(-32600, "Invalid Request") }
  end
  local result, err
  local method = methods[req.method]
  if not method then
    err = rpc_error(-32601, "Method not found", req.method)
  else
    -- pcall: a bug in a method becomes an error response, not a dead server
    -- (a task may wait inside pcall from Lua 5.2 on and in LuaJIT; plain
    -- Lua 5.1 cannot suspend inside one, so there a method runs bare)
    local okm, r, e
    if _VERSION == "Lua 5.1" and not rawget(_G, "jit") then
      okm, r, e = true, method(req.params or {})
    else
      okm, r, e = pcall(method, req.params or {})
    end
    if not okm then
      err = rpc_error(-32603, "Internal error", tostring(r))
    else
      result, err = r, e
    end
  end
  if id == nil then return nil end -- a notification: no response at all
  if err then return { jsonrpc = "2.0", id = id, error = err } end
  return { jsonrpc = "2.0", id = id, result = result == nil and json.null or result }
end

local gone = 0
local server
server = assert(np.serve(name, { pipe_mode = "message" }, function(pipe)
  -- message mode: one read() is one whole request, however long
  while true do
    local text = pipe:read()
    if not text then break end -- EOF: the client has gone
    -- a task per request: a slow method does not delay the next request
    np.spawn(function()
      local response = handle(text)
      -- the client may have gone (and np.serve closed the pipe) while the
      -- method ran; writing to a closed pipe would raise
      if response and pipe:state() ~= "closed" then
        pipe:write(json.encode(response, { keyorder = KEYS })) -- one message per response
      end
    end)
  end
  gone = gone + 1
  if count and gone >= count then server.close() end
end))

print("JSON-RPC server on " .. name)
io.stdout:flush()
np.run()
print(("%d client(s) served"):format(gone))
