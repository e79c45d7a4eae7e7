--[[
examples/json.lua - a small, strict JSON encoder/decoder for the JSON-RPC
examples (no external library needed). Load it with dofile, as they do:

  local json = dofile("examples/json.lua")
  json.encode({ 1, "two", json.null, json.object{} })  --> [1,"two",null,{}]
  json.decode('{"a":[1,2.5,"\\u00e9"]}')               --> { a = { 1, 2.5, "é" } }

Mapping:
  * null <-> json.null (a sentinel, so arrays keep their length);
  * a table whose keys are exactly 1..n is an array (the empty table too);
    anything else is an object and its keys must be strings. Wrap a table
    in json.object(t) to make it an object even when empty; decoded objects
    come back wrapped, so {} survives a round trip;
  * object keys are written sorted, so the same value always gives the same
    text (handy for logs and tests);
  * integers stay integers; floats are written with the fewest digits that
    read back exactly; NaN and infinities are refused (JSON has none);
  * strings are bytes, assumed UTF-8; control characters, '"' and '\' are
    escaped; \uXXXX (and surrogate pairs) decode to UTF-8.
Errors are raised as "json: <what> at byte N" (decode) or "json: <what>".
]]
local json = {}

json.null = setmetatable({}, { __tostring = function() return "null" end })

local object_mt = { __name = "json.object" }
function json.object(t) return setmetatable(t or {}, object_mt) end
function json.is_object(t) return getmetatable(t) == object_mt end

-- ------------------------------------------------------------ encode
local escapes = {
  ['"'] = '\\"', ["\\"] = "\\\\", ["\b"] = "\\b", ["\f"] = "\\f",
  ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t",
}

local function encode_string(s)
  return '"' .. s:gsub('[%c"\\]', function(c)
    return escapes[c] or ("\\u%04x"):format(c:byte())
  end) .. '"'
end

local function array_length(t)
  if getmetatable(t) == object_mt then return nil end
  local n = 0
  for k in pairs(t) do
    if math.type(k) ~= "integer" or k < 1 then return nil end
    n = n + 1
  end
  for i = 1, n do
    if t[i] == nil then return nil end -- holes: not 1..n
  end
  return n
end

local encode_value

local function encode_table(t, out, seen)
  if seen[t] then error("json: cannot encode a table that contains itself", 0) end
  seen[t] = true
  local n = array_length(t)
  if n then
    out[#out + 1] = "["
    for i = 1, n do
      if i > 1 then out[#out + 1] = "," end
      encode_value(t[i], out, seen)
    end
    out[#out + 1] = "]"
  else
    local keys = {}
    for k in pairs(t) do
      if type(k) ~= "string" then
        error("json: object keys must be strings, got " .. type(k), 0)
      end
      keys[#keys + 1] = k
    end
    table.sort(keys)
    out[#out + 1] = "{"
    for i, k in ipairs(keys) do
      if i > 1 then out[#out + 1] = "," end
      out[#out + 1] = encode_string(k)
      out[#out + 1] = ":"
      encode_value(t[k], out, seen)
    end
    out[#out + 1] = "}"
  end
  seen[t] = nil
end

function encode_value(v, out, seen)
  local ty = type(v)
  if v == json.null or v == nil then
    out[#out + 1] = "null"
  elseif ty == "boolean" then
    out[#out + 1] = tostring(v)
  elseif math.type(v) == "integer" then
    out[#out + 1] = ("%d"):format(v)
  elseif ty == "number" then
    if v ~= v or v == math.huge or v == -math.huge then
      error("json: cannot encode " .. tostring(v), 0)
    end
    local s = ("%.14g"):format(v)
    if tonumber(s) ~= v then s = ("%.17g"):format(v) end
    out[#out + 1] = s
  elseif ty == "string" then
    out[#out + 1] = encode_string(v)
  elseif ty == "table" then
    encode_table(v, out, seen)
  else
    error("json: cannot encode a " .. ty, 0)
  end
end

function json.encode(v)
  local out = {}
  encode_value(v, out, {})
  return table.concat(out)
end

-- ------------------------------------------------------------ decode
local unescape = {
  ['"'] = '"', ["\\"] = "\\", ["/"] = "/", b = "\b", f = "\f", n = "\n", r = "\r", t = "\t",
}

function json.decode(s)
  if type(s) ~= "string" then error("json: string expected, got " .. type(s), 0) end
  local pos = 1

  local function fail(what, at)
    error(("json: %s at byte %d"):format(what, at or pos), 0)
  end
  local function skip_space()
    pos = s:find("[^ \t\r\n]", pos) or #s + 1
  end

  local function decode_string()
    local parts, i = {}, pos + 1 -- after the opening quote
    while true do
      local j = s:find('["\\%c]', i)
      if not j then fail("unterminated string") end
      parts[#parts + 1] = s:sub(i, j - 1)
      local c = s:sub(j, j)
      if c == '"' then
        pos = j + 1
        return table.concat(parts)
      elseif c ~= "\\" then
        fail("control character in string", j)
      end
      local e = s:sub(j + 1, j + 1)
      if e == "u" then
        local hex = s:match("^%x%x%x%x", j + 2)
        if not hex then fail("bad \\u escape", j) end
        local cp = tonumber(hex, 16)
        i = j + 6
        if cp >= 0xD800 and cp <= 0xDBFF then -- a high surrogate wants a low one
          local lo = s:match("^\\u([dD][c-fC-F]%x%x)", i)
          if not lo then fail("lone surrogate", j) end
          cp = 0x10000 + (cp - 0xD800) * 0x400 + (tonumber(lo, 16) - 0xDC00)
          i = i + 6
        elseif cp >= 0xDC00 and cp <= 0xDFFF then
          fail("lone surrogate", j)
        end
        parts[#parts + 1] = utf8.char(cp)
      else
        local r = unescape[e]
        if not r then fail("bad escape", j) end
        parts[#parts + 1] = r
        i = j + 2
      end
    end
  end

  local function decode_number()
    -- JSON's grammar: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?
    local p = pos
    if s:sub(p, p) == "-" then p = p + 1 end
    local int = s:match("^0", p) or s:match("^[1-9]%d*", p)
    if not int then fail("bad number") end
    p = p + #int
    local frac = s:match("^%.%d+", p)
    if frac then p = p + #frac end
    local exp = s:match("^[eE][-+]?%d+", p)
    if exp then p = p + #exp end
    local text = s:sub(pos, p - 1)
    pos = p
    -- "1.0" and "1e2" are floats; a plain integer too big for 64 bits
    -- becomes a float (tonumber does that), as in most JSON libraries
    return (frac or exp) and tonumber(text) + 0.0 or tonumber(text)
  end

  local decode_value

  local function decode_array()
    local t, n = {}, 0
    pos = pos + 1
    skip_space()
    if s:sub(pos, pos) == "]" then pos = pos + 1; return t end
    while true do
      n = n + 1
      t[n] = decode_value()
      skip_space()
      local c = s:sub(pos, pos)
      pos = pos + 1
      if c == "]" then return t end
      if c ~= "," then fail("',' or ']' expected", pos - 1) end
    end
  end

  local function decode_object()
    local t = json.object()
    pos = pos + 1
    skip_space()
    if s:sub(pos, pos) == "}" then pos = pos + 1; return t end
    while true do
      skip_space()
      if s:sub(pos, pos) ~= '"' then fail("string key expected") end
      local k = decode_string()
      skip_space()
      if s:sub(pos, pos) ~= ":" then fail("':' expected") end
      pos = pos + 1
      t[k] = decode_value()
      skip_space()
      local c = s:sub(pos, pos)
      pos = pos + 1
      if c == "}" then return t end
      if c ~= "," then fail("',' or '}' expected", pos - 1) end
    end
  end

  local literals = { t = { "true", true }, f = { "false", false }, n = { "null", json.null } }

  function decode_value()
    skip_space()
    local c = s:sub(pos, pos)
    if c == "{" then return decode_object()
    elseif c == "[" then return decode_array()
    elseif c == '"' then return decode_string()
    elseif c == "-" or c:match("%d") then return decode_number()
    elseif literals[c] then
      local word, value = literals[c][1], literals[c][2]
      if s:sub(pos, pos + #word - 1) ~= word then fail("bad literal") end
      pos = pos + #word
      return value
    elseif c == "" then
      fail("unexpected end of input")
    end
    fail("unexpected character '" .. c .. "'")
  end

  local value = decode_value()
  skip_space()
  if pos <= #s then fail("trailing characters") end
  return value
end

return json
