-- Peers that are not this module, other processes, and the Unix name
-- mapping. (The Windows foreign client, cmd.exe, is in test_lifetime.lua.)
local lu = require "luaunit"
local np = require "namedpipe"
local H = require "tests.helpers"

TestInterop = {}

function TestInterop:tearDown() H.settle(2000) end

local function linux_only()
  if PLATFORM ~= "linux" then lu.skip("Unix-socket behaviour; Linux backend only") end
end

local function have(cmd)
  return H.execute("command -v " .. cmd .. " >/dev/null 2>&1")
end

function TestInterop:test_path_mapping()
  linux_only()
  local name = H.name("map")
  local leaf = name:sub(#[[\\.\pipe\]] + 1)
  -- NAMEDPIPE_DIR wins over XDG_RUNTIME_DIR, which wins over /tmp/namedpipe-UID
  local code = [[local np = require "namedpipe"; io.write(np.path(...))]]
  local ok, out = H.run_lua_env("NAMEDPIPE_DIR=/tmp/np-map-test XDG_RUNTIME_DIR=/tmp/xdg", code, name)
  lu.assertTrue(ok, out)
  lu.assertEquals(out, "/tmp/np-map-test/" .. leaf)
  -- (env puts them in the order given; sh would order them its own way)
  ok, out = H.run_lua_env("env -u NAMEDPIPE_DIR -u XDG_RUNTIME_DIR XDG_RUNTIME_DIR=/tmp/xdg NAMEDPIPE_DIR=/tmp/np-map-test",
    code, name)
  lu.assertTrue(ok, out)
  lu.assertEquals(out, "/tmp/np-map-test/" .. leaf, "whichever comes first in the environment")
  ok, out = H.run_lua_env("NAMEDPIPE_DIR= XDG_RUNTIME_DIR=/tmp/xdg", code, name)
  lu.assertTrue(ok, out)
  lu.assertEquals(out, "/tmp/xdg/namedpipe/" .. leaf)
  ok, out = H.run_lua_env("env -u NAMEDPIPE_DIR -u XDG_RUNTIME_DIR", code, name)
  lu.assertTrue(ok, out)
  lu.assertStrMatches(out, "/tmp/namedpipe%-%d+/" .. leaf:gsub("%-", "%%-"))
  -- an absolute path is used as is
  lu.assertEquals(np.path("/tmp/some.sock"), "/tmp/some.sock")
  -- the prefix in any case; backslashes stay part of the leaf
  lu.assertEquals(np.path([[\\.\PIPE\a\b]]):match("[^/]+$"), [[a\b]])
  lu.assertErrorMsgContains("pipe name", np.create, "relative.sock")
  -- either separator in the prefix, as Windows takes it; another machine's
  -- pipe is refused however it is spelled, never taken for a file path
  lu.assertEquals(np.path("//./pipe/x"), np.path([[\\.\pipe\x]]))
  lu.assertErrorMsgContains("only local pipes", np.create, "//server/pipe/x")
  lu.assertErrorMsgContains("only local pipes", np.path, [[\\host/PIPE\x]])
end

function TestInterop:test_socat_client_talks_to_our_server()
  linux_only()
  if not have("socat") then lu.skip("socat is not installed") end
  local name = H.name("socat-in")
  local server = assert(np.create(name))
  local cb, res = H.capture()
  server:connect(cb)
  local ok = H.execute(("printf 'hello from socat\\n' | socat -t 0.2 - UNIX-CONNECT:'%s'"):format(np.path(name)))
  lu.assertTrue(ok)
  H.pump(function() return res.done end)
  lu.assertEquals(res[1], true)
  lu.assertEquals(server:read_line(2000), "hello from socat")
  local _, _, errname = server:read(nil, 2000)
  lu.assertEquals(errname, "EOF")
  H.close_all(server)
end

function TestInterop:test_our_client_talks_to_socat_listener()
  linux_only()
  if not have("socat") then lu.skip("socat is not installed") end
  for _, mode in ipairs { "byte", "message" } do
    local path = ("/tmp/np-socat-%s-%s.sock"):format(mode, H.name("l"):match("[^\\]+$"))
    os.remove(path)
    local kind = mode == "message" and ",type=5" or ""
    -- an echo server: one connection, gone by itself within 5 s
    H.execute(("timeout 5 socat UNIX-LISTEN:'%s'%s,unlink-close EXEC:cat >/dev/null 2>&1 &"):format(path, kind))
    local client = assert(np.open(path, { pipe_mode = mode, timeout = 3000, wait_for_server = true }))
    lu.assertEquals(client:write("round trip " .. mode), #("round trip " .. mode))
    local got = ""
    while #got < #("round trip " .. mode) do got = got .. assert(client:read(nil, 3000)) end
    lu.assertEquals(got, "round trip " .. mode)
    H.close_all(client)
    os.remove(path)
  end
end

function TestInterop:test_other_process_server_and_stale_socket()
  linux_only()
  local name = H.name("xproc")
  -- A server in another process: our client reaches it...
  local cmd, script = H.lua_command([[
    local np = require "namedpipe"
    np.serve(..., nil, function(p) p:write("from another process\n") end)
    np.sleep(1500)
  ]], name)
  local ok = H.execute(("%s >/dev/null 2>&1 &"):format(cmd))
  lu.assertTrue(ok)
  local c = assert(np.open(name, { timeout = 3000, wait_for_server = true }))
  lu.assertEquals(c:read_line(2000), "from another process")
  c:close()
  os.remove(script) -- the child has read it long ago
  -- ... and it owns the name while it lives.
  local s, _, errname = np.create(name, { first_pipe_instance = true })
  lu.assertNil(s)
  lu.assertEquals(errname, "ACCESS_DENIED")
  s, _, errname = np.create(name)
  lu.assertNil(s)
  lu.assertEquals(errname, "ADDRESS_IN_USE")
  -- A process killed outright leaves a stale socket file behind: it must
  -- not block a new server.
  local stale = H.name("stale")
  H.run_lua([[
    local np = require "namedpipe"
    S = assert(np.create(...))
    os.execute("kill -KILL $PPID") -- the shell's parent: this interpreter
  ]], stale)
  lu.assertTrue(H.execute(("test -S '%s'"):format(np.path(stale))),
    "the dead server left its socket file")
  local fresh = assert(np.create(stale, { first_pipe_instance = true }))
  local client = assert(np.open(stale))
  H.close_all(fresh, client)
end

-- A foreign client sends an urgent byte (MSG_OOB), which Windows pipes do
-- not have. A readable() wait must neither spin the loop on it nor miss
-- the ordinary data that follows; a read gets that data.
function TestInterop:test_urgent_byte_from_a_foreign_client()
  linux_only()
  if not have("perl") then lu.skip("perl is not installed") end
  local path = os.tmpname()
  os.remove(path)
  local server = assert(np.create(path))
  local connected
  server:connect(function(ok) connected = ok end)
  local script = path .. ".pl"
  local f = assert(io.open(script, "w"))
  f:write([[
use IO::Socket::UNIX; use Socket;
my $s = IO::Socket::UNIX->new(Type => SOCK_STREAM, Peer => $ARGV[0]) or die "connect: $!";
send($s, "!", MSG_OOB) or die "send: $!";
select(undef, undef, undef, 0.6);
send($s, "after", 0) or die "send: $!";
select(undef, undef, undef, 0.6);
]])
  f:close()
  local child = io.popen("perl " .. script .. " " .. path .. " 2>&1", "r")
  H.pump(function() return connected end, 3000, "the perl client")
  local became_readable
  server:readable(function(ok, _, name) became_readable = ok or name end)
  local busy = H.cpu_ms_stepping(300)
  lu.assertTrue(busy < 150, ("300 ms of steps with an urgent byte queued took %.0f ms of CPU"):format(busy))
  H.pump(function() return became_readable ~= nil end, 3000, "readable after ordinary data")
  lu.assertEquals(became_readable, true)
  lu.assertEquals(server:read(nil, 2000), "after")
  child:close()
  server:close()
  os.remove(script)
end
