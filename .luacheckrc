-- luacheck configuration (`make lint`). Lua 5.4 everywhere.
std = "lua54"
codes = true
exclude_files = { "build/**" }

-- The test runner's globals (tests/run.lua) and luaunit's style: the test
-- classes are globals made at the top of each file, and their methods take
-- a `self` they rarely use.
-- The tests run on every Lua too: the common subset, plus what
-- tests/run.lua supplies on the older versions.
files["tests/**/*.lua"] = {
   std = "min",
   read_globals = {
      table = { fields = { "pack", "unpack" } },
      -- (maxinteger/mininteger: nil before 5.3, which the fuzz test's
      -- junk values may well be)
      math = { fields = { "type", "tointeger", "maxinteger", "mininteger" } },
   },
   globals = { "PLATFORM", "UNDER_WINE", "REPO_ROOT" },
   allow_defined_top = true,
   ignore = { "212/self" },
   max_line_length = 140, -- assertion messages and skip reasons
}

-- Methods of objects made in a closure (np.event) keep the `:` form their
-- callers use, whether or not they need self. The module and the examples
-- run on every Lua from 5.1 to 5.4 and LuaJIT: they may use only what all
-- of them have (namedpipe.compat supplies the rest).
files["lua/**/*.lua"] = {
   std = "min",
   ignore = { "212/self" },
}
files["examples/**/*.lua"] = { std = "min" }

-- LuaLS annotations: empty functions that only carry ---@param lines.
files["library/**/*.lua"] = {
   ignore = {
      "212", -- unused argument
      "241", -- table filled with declarations, never read
   },
}
