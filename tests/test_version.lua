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
  if setfenv then -- luacheck: ignore 113 (Lua 5.1, LuaJIT: load takes no text and no env)
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

--- The files of a directory of the checkout whose names match pattern.
local function files_in(dir, pattern)
  local p = assert(io.popen(WIN and ('dir /b "' .. path(dir) .. '" 2>nul')
                                or ("ls -1 '" .. path(dir) .. "' 2>/dev/null")))
  local found = {}
  for line in p:lines() do
    line = line:gsub("\r$", "")
    if line:match(pattern) then found[#found + 1] = dir .. "/" .. line end
  end
  p:close()
  return found
end

-- The rockspec names its sources one by one (LuaRocks has no wildcard),
-- where the Makefile takes every file: a file added to the module must be
-- added to each platform's table too, or the rock does not build.
function TestVersion:test_rockspec_lists_every_source()
  local spec = load_rockspec(rockspec_files()[1])
  for plat, dir in pairs { linux = "src/unix", windows = "src/win" } do
    local modules = spec.build.platforms[plat].modules
    local want = files_in("src", "%.c$")
    for _, f in ipairs(files_in(dir, "%.c$")) do want[#want + 1] = f end
    table.sort(want)
    local got = {}
    for _, f in ipairs(modules["namedpipe.core"].sources) do got[#got + 1] = f end
    table.sort(got)
    lu.assertEquals(got, want, plat .. ": the C sources of namedpipe.core")
    local lua_files = { "lua/namedpipe.lua" }
    for _, f in ipairs(files_in("lua/namedpipe", "%.lua$")) do lua_files[#lua_files + 1] = f end
    table.sort(lua_files)
    local listed = {}
    for name, src in pairs(modules) do
      if type(src) == "string" then
        listed[#listed + 1] = src
        lu.assertEquals(src, "lua/" .. name:gsub("%.", "/") .. ".lua", plat .. ": " .. name)
      end
    end
    table.sort(listed)
    lu.assertEquals(listed, lua_files, plat .. ": the Lua modules")
  end
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

--- The link lines README.md quotes from `make rock-check` (MinGW and MSVC)
--- name every C source of the rockspec's Windows module, in its order: a
--- file added to the build is added to the quotes.
function TestVersion:test_readme_link_lines_name_every_source()
  local spec = load_rockspec(rockspec_files()[1])
  local sources = spec.build.platforms.windows.modules["namedpipe.core"].sources
  local readme = read("README.md")
  for _, quote in ipairs { { "x86_64%-w64%-mingw32%-gcc %-shared", ".o" }, { "link %-dll", ".obj" } } do
    local at = readme:find("\n" .. quote[1])
    lu.assertNotNil(at, "README.md quotes the link line " .. quote[1])
    -- the line and its indented continuations
    local lines = { readme:match("^\n([^\n]*)", at) }
    local pos = at + 1 + #lines[1]
    while true do
      local cont = readme:match("^\n(    [^\n]*)", pos)
      if not cont then break end
      lines[#lines + 1] = cont
      pos = pos + 1 + #cont
    end
    local named = {}
    for obj in table.concat(lines, " "):gmatch("(src/%S+)") do named[#named + 1] = obj end
    local want = {}
    for i, c in ipairs(sources) do want[i] = c:gsub("%.c$", quote[2]) end
    lu.assertEquals(named, want, "README.md's quoted " .. quote[1] .. " line")
  end
end

--- README.md's Install names every module the rockspec installs, and its
--- Layout every C file of the shared core (src/*.c; the backends are
--- named by their folders).
function TestVersion:test_readme_names_every_module_and_core_file()
  local spec = load_rockspec(rockspec_files()[1])
  local readme = read("README.md")
  local install = readme:match("\n## Install\n(.-)\n## ")
  local layout = readme:match("\n## Layout\n(.-)$")
  lu.assertNotNil(install, "README.md has an Install section")
  lu.assertNotNil(layout, "README.md has a Layout section")
  local install_text = install:gsub("%s+", " ")
  for plat, p in pairs(spec.build.platforms) do
    for name, m in pairs(p.modules) do
      lu.assertStrContains(install_text, "`" .. name .. "`", false,
        "README.md's Install names the module " .. name .. " (" .. plat .. ")")
      for _, src in ipairs(type(m) == "table" and m.sources or {}) do
        if src:match("^src/[^/]+%.c$") then
          lu.assertStrContains(layout, "`" .. src .. "`", false,
            "README.md's Layout names " .. src)
        end
      end
    end
  end
end

function TestVersion:test_license_matches_rockspec()
  local spec = load_rockspec(rockspec_files()[1])
  lu.assertEquals(read("LICENSE"):match("^[^\n]*"), spec.description.license .. " License")
end
