-- One version everywhere: the module's _VERSION, the rockspec (its file
-- name, `version`, and the archive its source names), the newest heading of
-- CHANGELOG.md and the install commands in README.md. The license the
-- rockspec declares is the one in LICENSE.
local lu = require "luaunit"
local np = require "namedpipe"

TestVersion = {}

local WIN = PLATFORM == "windows"
local SEP = WIN and "\\" or "/"
local function path(...) return table.concat({ REPO_ROOT, ... }, SEP) end

local function read(...)
  local f = assert(io.open(path(...), "rb"))
  local text = f:read("*a"):gsub("\r\n", "\n")
  f:close()
  return text
end

local function rockspec_files()
  local dir = path("rockspec")
  local cmd = WIN and ('dir /b "' .. dir .. '" 2>nul') or ("ls -1 '" .. dir .. "' 2>/dev/null")
  local files = {}
  local p = assert(io.popen(cmd))
  for line in p:lines() do
    line = line:gsub("\r$", "")
    if line:match("%.rockspec$") then files[#files + 1] = line end
  end
  p:close()
  return files
end

--- The rockspec as LuaRocks reads it: a chunk of assignments run in an
--- empty environment.
local function load_rockspec(file)
  local env = {}
  local chunk
  if setfenv then -- Lua 5.1, LuaJIT: load takes no text and no env
    chunk = assert(loadstring(read("rockspec", file), "=" .. file)) -- luacheck: ignore 113
    setfenv(chunk, env) -- luacheck: ignore 113
  else
    chunk = assert(load(read("rockspec", file), "=" .. file, "t", env))
  end
  chunk()
  return env
end

function TestVersion:test_module_version_is_semver()
  lu.assertStrMatches(np._VERSION, "%d+%.%d+%.%d+")
  lu.assertEquals(require("namedpipe.core")._VERSION, np._VERSION)
end

function TestVersion:test_rockspec_matches_module()
  local files = rockspec_files()
  lu.assertEquals(#files, 1, "one rockspec in rockspec/: " .. table.concat(files, ", "))
  local spec = load_rockspec(files[1])
  lu.assertEquals(spec.package, "namedpipe")
  local version, revision = spec.version:match("^(.-)%-(%d+)$")
  lu.assertEquals(version, np._VERSION, "rockspec version")
  lu.assertEquals(files[1], ("namedpipe-%s-%s.rockspec"):format(version, revision))
  lu.assertEquals(spec.source.url, ("namedpipe-%s.tar.gz"):format(version))
  lu.assertEquals(spec.source.dir, "namedpipe-" .. version)
end

function TestVersion:test_changelog_newest_entry()
  local newest = read("CHANGELOG.md"):match("\n## ([^\n]*)")
  lu.assertNotNil(newest, "CHANGELOG.md has no '## <version>' heading")
  lu.assertEquals(newest:match("^(%S+)"), np._VERSION, "newest CHANGELOG.md entry")
end

function TestVersion:test_readme_install_commands()
  local spec = load_rockspec(rockspec_files()[1])
  local seen = 0
  for v in read("README.md"):gmatch("namedpipe%-(%d+%.%d+%.%d+%-%d+)") do
    lu.assertEquals(v, spec.version, "a rock or rockspec name in README.md")
    seen = seen + 1
  end
  lu.assertTrue(seen > 0, "README.md names the rockspec in its install commands")
end

function TestVersion:test_license_matches_rockspec()
  local spec = load_rockspec(rockspec_files()[1])
  lu.assertEquals(read("LICENSE"):match("^[^\n]*"), spec.description.license .. " License")
end
