-- Every example in examples/ run as a child process (same interpreter, same
-- module paths: H.lua_command) and checked by what it prints. Servers run
-- in the background through io.popen, which works the same on Linux and
-- under Wine; the test process itself is the other side where that makes
-- the check sharper (e.g. the chat's several clients).
local lu = require "luaunit"
local np = require "namedpipe"
local H = require "tests.helpers"

TestExamples = {}

function TestExamples:tearDown() H.settle(2000) end

-- A child that hangs (a failed test leaves a server waiting for clients)
-- must not hang the suite: it exits on its own after this many seconds.
local WATCHDOG = 30

local function child_code(file)
  return ([[
local deadline = os.time() + %d
debug.sethook(function()
  if os.time() > deadline then
    io.stderr:write("watchdog: %s still running after %d s\n")
    os.exit(3)
  end
end, "", 100)
arg[0] = %q -- as when the example is run directly
return assert(loadfile(arg[0]))(...)
]]):format(WATCHDOG, file, WATCHDOG, file)
end

--- Start examples/FILE with args in the background; opts.stdin: text for
--- its stdin. Returns a handle whose finish() waits for the exit and
--- returns ok (exit status 0), its output (stdout and stderr).
local function start(file, opts, ...)
  local cmd, script = H.lua_command(child_code("examples/" .. file), ...)
  local input
  if opts and opts.stdin then
    input = script .. ".in"
    local f = assert(io.open(input, "w"))
    f:write(opts.stdin)
    f:close()
    cmd = cmd .. " < " .. input
  end
  -- Lua 5.1 and LuaJIT do not say how a popen'ed command exited: the
  -- shell tells it on the last line instead. cmd.exe says whether it
  -- failed: its %ERRORLEVEL% is read before the command runs, and Wine's
  -- cmd runs both sides of `a && b || c`; `if errorlevel N` (>= N) works
  -- in both, and a negative code (a crash) counts as failed.
  local tell_exit = _VERSION == "Lua 5.1"
  if tell_exit and PLATFORM == "windows" then
    cmd = cmd .. " 2>&1 & if errorlevel 1 (echo np-exit=1) else if errorlevel 0 (echo np-exit=0)"
      .. " else (echo np-exit=1)"
  elseif tell_exit then
    cmd = "( " .. cmd .. " ) 2>&1; echo np-exit=$? 2>&1"
  else
    cmd = cmd .. " 2>&1"
  end
  local proc = assert(io.popen(cmd, "r"))
  return {
    finish = function()
      local out = proc:read("*a")
      local ok = proc:close()
      if tell_exit then
        local code
        out, code = out:gsub("\r\n", "\n"):match("^(.-)np%-exit=(%d+)%s*$")
        ok = code == "0"
        out = out or ""
      end
      os.remove(script)
      if input then os.remove(input) end
      return ok == true, (out:gsub("\r\n", "\n"))
    end,
  }
end

local function run(file, opts, ...)
  return start(file, opts, ...).finish()
end

--- A client of ours for a server started by start(): it may come up later.
local function open(name, opts)
  opts = opts or {}
  opts.timeout, opts.wait_for_server = 10000, true
  local p, msg = np.open(name, opts)
  lu.assertNotNil(p, msg)
  return p
end

local function lines_of(text)
  local t = {}
  for line in text:gmatch("([^\n]*)\n") do t[#t + 1] = line end
  return t
end

function TestExamples:test_demo()
  local ok, out = run("demo.lua")
  lu.assertTrue(ok, out)
  lu.assertStrContains(out, "server got:  ping\n")
  lu.assertStrContains(out, "client got:  bye -> 3 bytes\n")
  lu.assertStrContains(out, "server read a whole message of 200000 bytes\n")
  lu.assertStrContains(out, "after the client closed, server:read() -> nil, ")
  lu.assertStrContains(out, ", EOF\n")
end

function TestExamples:test_echo_server_and_client()
  local name = H.name("echo")
  local server = start("echo_server.lua", nil, name, "--count", "2")
  -- We hold a connection open while echo_client.lua runs: the server has
  -- two clients at once.
  local mine = open(name)
  lu.assertEquals(mine:write("first\n"), 6)
  lu.assertEquals(mine:read_line(5000), "first")
  local ok, out = run("echo_client.lua", nil, name, "hello", "wide world")
  lu.assertTrue(ok, out)
  lu.assertEquals(out, "hello\nwide world\n")
  mine:write("last\n")
  lu.assertEquals(mine:read_line(5000), "last")
  mine:close()
  local sok, log = server.finish()
  lu.assertTrue(sok, log)
  lu.assertEquals(lines_of(log), {
    "echo server listening on " .. name,
    "client 1 done after 2 line(s)", -- echo_client.lua
    "client 2 done after 2 line(s)", -- ours, which came first and left last
    "served 2 client(s)",
  })
end

function TestExamples:test_echo_client_reads_stdin()
  local name = H.name("echo-stdin")
  local server = start("echo_server.lua", nil, name, "--count", "1")
  local ok, out = run("echo_client.lua", { stdin = "from\nstdin\n" }, name)
  lu.assertTrue(ok, out)
  lu.assertEquals(out, "from\nstdin\n")
  local sok, log = server.finish()
  lu.assertTrue(sok, log)
  lu.assertStrContains(log, "served 1 client(s)")
end

function TestExamples:test_chat_server_broadcasts()
  local name = H.name("chat")
  local server = start("chat_server.lua", nil, name, "--count", "3")
  local alice = open(name)
  alice:write("alice\n")
  lu.assertEquals(alice:read_line(5000), "* welcome alice; here: nobody")
  local bob = open(name)
  bob:write("bob\n")
  lu.assertEquals(bob:read_line(5000), "* welcome bob; here: alice")
  lu.assertEquals(alice:read_line(5000), "* bob joined")

  -- The third member is pipecat.lua in another process: its two stdin
  -- lines are its nick and a message; then it listens until 2 s of quiet.
  local dave = start("pipecat.lua", { stdin = "dave\nhello from dave\n" }, "-q", "2000", name)
  for _, who in ipairs { alice, bob } do
    lu.assertEquals(who:read_line(10000), "* dave joined")
    lu.assertEquals(who:read_line(5000), "dave: hello from dave")
  end
  alice:write("hi dave\n") -- to bob and dave, not back to alice
  lu.assertEquals(bob:read_line(5000), "alice: hi dave")
  local ok, out = dave.finish()
  lu.assertTrue(ok, out)
  lu.assertEquals(out, "* welcome dave; here: alice, bob\nalice: hi dave\n")

  for _, who in ipairs { alice, bob } do
    lu.assertEquals(who:read_line(5000), "* dave left")
  end
  bob:write("bye all\n")
  lu.assertEquals(alice:read_line(5000), "bob: bye all")
  bob:close()
  lu.assertEquals(alice:read_line(5000), "* bob left")
  alice:close()

  local sok, log = server.finish()
  lu.assertTrue(sok, log)
  lu.assertEquals(lines_of(log), {
    "chat server on " .. name,
    "* alice joined", "* bob joined", "* dave joined", "dave: hello from dave",
    "alice: hi dave", "* dave left", "bob: bye all", "* bob left", "* alice left",
  })
end

function TestExamples:test_jsonrpc_server_and_client()
  local name = H.name("rpc")
  local server = start("jsonrpc_server.lua", nil, name, "--count", "2")
  local ok, out = run("jsonrpc_client.lua", nil, name)
  lu.assertTrue(ok, out)
  local got = lines_of(out)
  lu.assertEquals(#got, 5, out)
  -- all five were in flight at once: the sleep, asked first, comes last
  lu.assertEquals(got[5], '#1 sleep [200] -> "slept 200 ms"')
  table.sort(got)
  -- strings escaped, integers and floats told apart, null and {} kept
  local echoed = '["tab\\t \\"quotes\\" \\\\ café",[1,2.5,true,false,null],{"ok":true},{}]'
  lu.assertEquals(got, {
    '#1 sleep [200] -> "slept 200 ms"',
    "#2 add [2,3] -> 5",
    "#3 echo " .. echoed .. " -> " .. echoed,
    '#4 add ["two",3] -> error -32602 Invalid params ("add expects two numbers")',
    '#5 no_such_method [] -> error -32601 Method not found ("no_such_method")',
  })

  -- The wire format itself, through pipecat.lua in message mode: one line
  -- of stdin is one request message, one response message one line out.
  local requests = table.concat({
    '{"jsonrpc":"2.0","method":"add","params":[40,2],"id":7}',
    '{"jsonrpc":"2.0","method":"echo","params":["notification: no reply"]}',
    '{"jsonrpc":"2.0","method":"nope","id":"x"}',
    'not json',
    '[1,2]',
    '{"id":9} {"id":10}',
    '{"jsonrpc":"2.0","method":"add","params":[0.5,1e3],"id":8}',
  }, "\n") .. "\n"
  ok, out = run("pipecat.lua", { stdin = requests }, "--message", "-q", "1000", name)
  lu.assertTrue(ok, out)
  lu.assertEquals(lines_of(out), {
    '{"jsonrpc":"2.0","id":7,"result":42}',
    '{"jsonrpc":"2.0","id":"x","error":{"code":-32601,"message":"Method not found","data":"nope"}}',
    '{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"Parse error",'
      .. '"data":"no valid JSON value at line 1, column 1"}}',
    '{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"Invalid Request"}}',
    '{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"Parse error",'
      .. '"data":"trailing characters at byte 10"}}',
    '{"jsonrpc":"2.0","id":8,"result":1000.5}',
  })
  local sok, log = server.finish()
  lu.assertTrue(sok, log)
  lu.assertStrContains(log, "2 client(s) served")
end

function TestExamples:test_pipecat_client_to_echo_server()
  local name = H.name("cat")
  local server = start("echo_server.lua", nil, name, "--count", "1")
  local ok, out = run("pipecat.lua", { stdin = "one\ntwo words\n\nlast\n" }, "-q", "1000", name)
  lu.assertTrue(ok, out)
  lu.assertEquals(out, "one\ntwo words\n\nlast\n")
  local sok, log = server.finish()
  lu.assertTrue(sok, log)
  lu.assertStrContains(log, "client 1 done after 4 line(s)")
end

function TestExamples:test_pipecat_listen_serves_one_client()
  local name = H.name("cat-listen")
  local cat = start("pipecat.lua", { stdin = "line 1\nline 2\n" }, "--listen", name)
  local c = open(name)
  lu.assertEquals(c:read_line(5000), "line 1")
  lu.assertEquals(c:read_line(5000), "line 2")
  c:write("answer from the client\n")
  -- our close is pipecat's EOF: without -q it reads until then, then exits
  c:close()
  local ok, out = cat.finish()
  lu.assertTrue(ok, out)
  lu.assertEquals(out, "answer from the client\n")
  -- it served one client and is gone: the name is free again
  local p, _, errname = np.open(name)
  lu.assertNil(p)
  lu.assertEquals(errname, "NOT_FOUND")
end

function TestExamples:test_game_loop()
  local ok, out = run("game_loop.lua", nil, "--frame-ms", "2")
  lu.assertTrue(ok, out)
  lu.assertStrContains(out, "acks: ack jump, ack duck, ack fire\n")
end

function TestExamples:test_host_luv()
  if PLATFORM == "windows" then lu.skip("np.fd() is nil on Windows (and luv is not there)") end
  if not pcall(require, "luv") then lu.skip("luv is not installed (Debian: lua-luv)") end
  local ok, out = run("host_luv.lua")
  lu.assertTrue(ok, out)
  lu.assertStrContains(out, "HELLO\nFROM\nLUV\n")
  local wakes = tonumber(out:match("luv woke namedpipe (%d+) times"))
  lu.assertNotNil(wakes, out)
  lu.assertTrue(wakes < 100, out) -- a handful per exchange, never a spin
end

function TestExamples:test_usage_errors()
  for _, file in ipairs { "echo_server.lua", "echo_client.lua", "chat_server.lua",
    "jsonrpc_server.lua", "jsonrpc_client.lua", "pipecat.lua" } do
    local ok, out = run(file)
    lu.assertFalse(ok, file)
    lu.assertStrContains(out, "usage: lua " .. file)
  end
  local ok, out = run("pipecat.lua", nil, "-q", "soon", "x")
  lu.assertFalse(ok)
  lu.assertStrContains(out, "-q needs milliseconds")
end
