-- An interactive session: `lua -i` (the interpreter running these tests:
-- lua5.4 on Linux, lua.exe under Wine, or another Lua's: luajit, lua5.1,
-- ...; those before 5.3 print a value only when the line starts with `=`,
-- which they get here) fed one line at a time from a file,
-- creating a server and a client and talking over them without a loop,
-- each call waiting for its own result. The transcript is rebuilt from the
-- input and the prompts (Linux's readline echoes input lines, the Windows
-- REPL does not) and checked line by line.
-- NP_SHOW_REPL=1 prints the transcript (for the README).
local lu = require "luaunit"
local H = require "tests.helpers"

TestRepl = {}

local function lit(s) return (s:gsub("[%^%$%(%)%%%.%[%]%*%+%-%?]", "%%%0")) end

--- Split REPL output into what each input line printed.
local function per_line(out, inputs)
  out = out:gsub("\r\n", "\n"):gsub("\27%[[%d;?]*[%a~]", "") -- CRLF, terminal escapes
  -- the banner (LuaJIT's has a second line, "JIT: ON ...")
  while out:find("\n") and not out:find("^> ") do out = out:gsub("^[^\n]*\n", "", 1) end
  local chunks, pos = {}, 1
  while pos <= #out do
    if out:sub(pos, pos + 1) == "> " then -- a prompt: the next line's output starts
      chunks[#chunks + 1] = ""
      pos = pos + 2
    else
      local e = out:find("\n", pos, true) or #out
      chunks[math.max(#chunks, 1)] = (chunks[#chunks] or "") .. out:sub(pos, e)
      pos = e + 1
    end
  end
  for i, input in ipairs(inputs) do
    local c = chunks[i] or ""
    if c:sub(1, #input + 1) == input .. "\n" then c = c:sub(#input + 2) end -- readline's echo
    chunks[i] = c
  end
  return chunks
end

function TestRepl:test_interactive_session()
  local name = H.name("repl")
  -- { line typed, pattern for what the REPL prints back[, a statement] }
  local session = {
    { 'np = require "namedpipe"', "" },
    { ("name = [[%s]]"):format(name), "" },
    { "s = np.create(name)", "" },
    { "c = np.open(name)", "" },
    { "s:connect()", "true\n" },
    { "s", lit("namedpipe server " .. name .. " (connected)\n") },
    { 'c:write("hello\\n")', "6\n" },
    { "s:read_line()", "hello\n" },
    { 's:write("pong")', "4\n" },
    { "c:read()", "pong\n" },
    { 'c:write("one\\ntwo\\n")', "8\n" },
    { "s:read_line()", "one\n" },
    { "s:read_line()", "two\n" },
    -- README: nil, "timed out", "TIMEOUT", 0; the Windows backend says
    -- "I/O operation aborted", 995 (ERROR_OPERATION_ABORTED) for now
    { "s:read(nil, 50)", "nil\t[^\n]*\tTIMEOUT\t%d+\n" },
    { 'c:write("for a task\\n")', "11\n" },
    { 'co = np.spawn(function() print("task got: " .. s:read_line()) end)', "" },
    { "np.run()", "task got: for a task\n", true },
    { "c:close()", "true\n" },
    { "s:read()", "nil\t[^\n]*\tEOF\t%d+\n" },
    { "s:close()", "true\n" },
    { "s", lit("namedpipe server") .. "[^\n]*" .. lit("(closed)\n") },
  }
  -- Lua 5.1 and 5.2 (LuaJIT too) print what `=expr` returns, not `expr`
  local eq = (_VERSION == "Lua 5.1" or _VERSION == "Lua 5.2") and "=" or ""
  local inputs = {}
  for i, step in ipairs(session) do
    inputs[i] = (step[2] ~= "" and not step[3]) and eq .. step[1] or step[1]
  end

  -- The child script only sets the module paths; -i then starts the REPL.
  local cmd, script = H.lua_command("")
  local interp = cmd:sub(1, cmd:find(script, 1, true) - 2)
  local input, output = script .. ".in", script .. ".out"
  -- `make check` runs the suite in tests/c/lua_host.c, which is not lua.c:
  -- no -v, no -i. lua.c answers -v with its banner.
  os.execute(("%s -v > %s 2>&1"):format(interp, output))
  local f = assert(io.open(output, "r"))
  local banner = f:read("*a")
  f:close()
  if not (banner:find("^Lua 5%.%d") or banner:find("^LuaJIT 2")) then
    os.remove(script)
    os.remove(output)
    lu.skip(("%s is not the stand-alone lua (no -i): %s"):format(interp, banner:gsub("%s+$", "")))
  end
  f = assert(io.open(input, "w"))
  f:write(table.concat(inputs, "\n"), "\n")
  f:close()
  os.execute(("%s -i %s < %s > %s 2>&1"):format(interp, script, input, output))
  f = assert(io.open(output, "r"))
  local out = f:read("*a")
  f:close()
  os.remove(script)
  os.remove(input)
  os.remove(output)

  local printed = per_line(out, inputs)
  local transcript = {}
  for i, line in ipairs(inputs) do transcript[#transcript + 1] = "> " .. line .. "\n" .. printed[i] end
  transcript = table.concat(transcript)
  if os.getenv("NP_SHOW_REPL") == "1" then print("\n" .. transcript) end

  lu.assertNotStrContains(out, "stdin:", false, "the session raised an error:\n" .. out)
  for i, step in ipairs(session) do
    lu.assertStrMatches(printed[i], step[2], nil, nil,
      ("line %d, %q printed %q; whole transcript:\n%s"):format(i, inputs[i], printed[i], transcript))
  end
end
