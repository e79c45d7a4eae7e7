-- library/namedpipe.lua, the LuaLS annotations, against the real module:
-- every function, method and field it documents exists, and every public
-- one (a name not starting with "_") is documented. A name added to the
-- module without annotations, or annotations left behind by a removed
-- one, fail here.
local lu = require "luaunit"
local np = require "namedpipe"
local H = require "tests.helpers"

TestMeta = {}

local SEP = PLATFORM == "windows" and "\\" or "/"
local META = table.concat({ REPO_ROOT, "library", "namedpipe.lua" }, SEP)

local function read_meta()
  local f = assert(io.open(META, "rb"))
  local text = f:read("*a"):gsub("\r\n", "\n")
  f:close()
  return text
end

--- What the annotations document, per object: names of `function X.f`/
--- `function X:f` definitions and of the `---@field`s of the class whose
--- table is X (`---@class cls` directly above `local X = {}`).
local function documented(text)
  local doc = {}
  local function add(obj, name)
    doc[obj] = doc[obj] or {}
    doc[obj][name] = true
  end
  local class_fields -- the ---@field names of the class being read
  for line in text:gmatch("([^\n]*)\n") do
    if line:match("^%-%-%-@class ") then
      class_fields = {}
    elseif class_fields and line:match("^%-%-%-@field ") then
      class_fields[#class_fields + 1] = line:match("^%-%-%-@field ([%w_]+)")
    elseif not line:match("^%-%-%-") then
      local obj = line:match("^local ([%w_]+) = {}")
      if obj and class_fields then
        for _, f in ipairs(class_fields) do add(obj, f) end
      end
      class_fields = nil
    end
    local obj, name = line:match("^function ([%w_]+)[.:]([%w_]+)%(")
    if obj then add(obj, name) end
  end
  return doc
end

local function public_keys(t)
  local keys = {}
  for k in pairs(t) do
    if type(k) == "string" and not k:match("^_") then keys[k] = true end
  end
  return keys
end

local function sorted(set)
  local t = {}
  for k in pairs(set) do t[#t + 1] = k end
  table.sort(t)
  return t
end

--- Both directions at once, so one failure lists everything that is off.
local function assert_same(what, doc, real)
  local missing, extra = {}, {}
  for k in pairs(real) do if not doc[k] then missing[#missing + 1] = k end end
  for k in pairs(doc) do if not real[k] then extra[#extra + 1] = k end end
  table.sort(missing)
  table.sort(extra)
  lu.assertEquals({ undocumented = missing, documented_but_absent = extra },
    { undocumented = {}, documented_but_absent = {} },
    what .. ": library/namedpipe.lua and the module disagree")
end

function TestMeta:test_annotations_compile()
  -- a ---@meta file is still Lua: a syntax error would hide it from LuaLS
  local chunk, err = loadfile(META)
  lu.assertNotNil(chunk, err)
  lu.assertStrContains(read_meta(), "---@meta namedpipe\n")
end

function TestMeta:test_module_functions()
  local doc = documented(read_meta())
  local real = public_keys(np)
  real._VERSION = true -- public by convention
  assert_same("np", doc.np or {}, real)
end

function TestMeta:test_pipe_methods()
  local doc = documented(read_meta())
  local server, client = H.pair()
  lu.assertIs(getmetatable(server).__index, np.methods)
  lu.assertIs(getmetatable(client).__index, np.methods)
  assert_same("pipe methods", doc.Pipe or {}, public_keys(np.methods))
  H.close_all(server, client)
end

function TestMeta:test_buffer_methods()
  local text = read_meta()
  local doc = documented(text)
  local mt = getmetatable(np.buffer(1))
  assert_same("buffer methods", doc.Buffer or {}, public_keys(mt.__index))
  -- `#buf` is documented as an operator
  lu.assertNotNil(mt.__len)
  lu.assertStrContains(text, "---@class namedpipe.Buffer\n---@operator len: integer\n")
end

function TestMeta:test_event_methods()
  local doc = documented(read_meta())
  assert_same("event methods", doc.Event or {}, public_keys(np.event()))
end

function TestMeta:test_serve_handle()
  local doc = documented(read_meta())
  local server = assert(np.serve(H.name("meta"), {}, function() end))
  local real = public_keys(server)
  server.close()
  H.settle(2000)
  assert_same("np.serve handle", doc.Server or {}, real)
end

function TestMeta:test_the_checker_sees_a_gap()
  -- the comparison itself: a method the annotations lack is reported
  local doc = documented("---@class x\nlocal Pipe = {}\nfunction Pipe:read(n) end\n")
  lu.assertEquals(sorted(doc.Pipe), { "read" })
  lu.assertErrorMsgContains("disagree", assert_same, "t", doc.Pipe, { read = true, write = true })
end
