-- Every ServerOptions / ClientOptions key, checked through info() or an
-- observable effect.
local lu = require "luaunit"
local np = require "namedpipe"
local H = require "tests.helpers"

TestOptions = {}

function TestOptions:tearDown() H.settle(2000) end

function TestOptions:test_server_defaults_as_tokio()
  local server, client = H.pair()
  local i = server:info()
  lu.assertEquals(i.mode, "byte")
  lu.assertEquals(i.pipe_end, "server")
  lu.assertEquals(i.max_instances, "unlimited")
  if PLATFORM == "windows" then
    lu.assertEquals(i.out_buffer_size, 65536)
    lu.assertEquals(i.in_buffer_size, 65536)
  else
    -- Socket buffers: the kernel reports what it really reserved.
    lu.assertTrue(i.out_buffer_size >= 65536, "out_buffer_size " .. i.out_buffer_size)
    lu.assertTrue(i.in_buffer_size >= 65536, "in_buffer_size " .. i.in_buffer_size)
  end
  lu.assertEquals(client:info().mode, "byte")
  H.close_all(server, client)
end

function TestOptions:test_buffer_sizes_read_back()
  local server, client = H.pair({ out_buffer_size = 8192, in_buffer_size = 16384 })
  local i = server:info()
  if PLATFORM == "windows" then
    lu.assertEquals(i.out_buffer_size, 8192)
    lu.assertEquals(i.in_buffer_size, 16384)
  else
    lu.assertTrue(i.out_buffer_size >= 8192 and i.out_buffer_size < 65536)
    lu.assertTrue(i.in_buffer_size >= 16384 and i.in_buffer_size < 65536)
  end
  H.close_all(server, client)
end

function TestOptions:test_max_instances_enforced_and_reported()
  local name = H.name("max")
  local a = assert(np.create(name, { max_instances = 2 }))
  local b = assert(np.create(name, { max_instances = 2 }))
  lu.assertEquals(a:info().max_instances, 2)
  local c, _, errname = np.create(name, { max_instances = 2 })
  lu.assertNil(c)
  lu.assertEquals(errname, "PIPE_BUSY")
  b:close()
  H.settle()
  -- A freed slot can be taken again.
  local d = assert(np.create(name, { max_instances = 2 }))
  local u = assert(np.create(H.name("unl"), { max_instances = "unlimited" }))
  lu.assertEquals(u:info().max_instances, "unlimited")
  H.close_all(a, d, u)
end

function TestOptions:test_pipe_mode_message_server_and_client()
  local server, client = H.pair({ pipe_mode = "message" }, { pipe_mode = "message" })
  lu.assertEquals(server:info().mode, "message")
  lu.assertEquals(client:info().mode, "message")
  -- Both directions keep boundaries.
  server:write("s1", function() end)
  server:write("s2", function() end)
  lu.assertEquals(client:read(), "s1")
  lu.assertEquals(client:read(), "s2")
  H.close_all(server, client)
end

function TestOptions:test_access_inbound_false_means_clients_cannot_write()
  local name = H.name("outonly")
  local server = assert(np.create(name, { access_inbound = false }))
  -- Tokio's documented case: a read-write client is refused...
  local c, _, errname = np.open(name)
  lu.assertNil(c)
  lu.assertEquals(errname, "ACCESS_DENIED")
  -- ... a read-only client is fine and receives what the server writes.
  local client = assert(np.open(name, { write = false }))
  assert(server:connect(2000))
  server:write("down", function() end)
  lu.assertEquals(client:read(nil, 2000), "down")
  H.close_all(server, client)
end

function TestOptions:test_access_outbound_false_means_clients_cannot_read()
  local name = H.name("inonly")
  local server = assert(np.create(name, { access_outbound = false }))
  local c, _, errname = np.open(name)
  lu.assertNil(c)
  lu.assertEquals(errname, "ACCESS_DENIED")
  local client = assert(np.open(name, { read = false }))
  assert(server:connect(2000))
  client:write("up", function() end)
  lu.assertEquals(server:read(nil, 2000), "up")
  H.close_all(server, client)
end

function TestOptions:test_no_access_at_all_is_invalid()
  local s, _, errname = np.create(H.name("noaccess"),
    { access_inbound = false, access_outbound = false })
  lu.assertNil(s)
  lu.assertEquals(errname, "INVALID_ARGUMENT")
end

function TestOptions:test_security_flags_accepted()
  -- WRITE_DAC / WRITE_OWNER / ACCESS_SYSTEM_SECURITY only widen what the
  -- server handle may do to the pipe's security; the pipe works as before.
  -- (ACCESS_SYSTEM_SECURITY needs SeSecurityPrivilege on real Windows.)
  local opts = { write_dac = true, write_owner = true, reject_remote_clients = false }
  if UNDER_WINE or PLATFORM ~= "windows" then opts.access_system_security = true end
  local server, client = H.pair(opts)
  client:write("ok", function() end)
  lu.assertEquals(server:read(), "ok")
  H.close_all(server, client)
end

function TestOptions:test_reject_remote_clients_keeps_local_clients()
  for _, flag in ipairs { true, false } do
    local server, client = H.pair({ reject_remote_clients = flag })
    lu.assertEquals(server:state(), "connected")
    H.close_all(server, client)
  end
end

function TestOptions:test_security_descriptor()
  if PLATFORM == "windows" then
    -- Everyone gets full access: clients connect.
    local server, client = H.pair({ security = "D:(A;;GA;;;WD)" })
    lu.assertEquals(server:state(), "connected")
    H.close_all(server, client)
    local bad, _, errname = np.create(H.name("sddl"), { security = "this is not SDDL" })
    lu.assertNil(bad)
    lu.assertEquals(errname, "INVALID_ARGUMENT")
  else
    local server, client = H.pair({ security = "0600" })
    lu.assertEquals(server:state(), "connected")
    H.close_all(server, client)
    local bad, _, errname = np.create(H.name("mode"), { security = "rwx" })
    lu.assertNil(bad)
    lu.assertEquals(errname, "INVALID_ARGUMENT")
  end
  -- text that is not UTF-8 is refused as the option's value, not as a name
  local bad, _, errname = np.create(H.name("notutf8"), { security = "D:(A;;GA;;;WD)\xff" })
  lu.assertNil(bad)
  lu.assertEquals(errname, "INVALID_ARGUMENT")
end

function TestOptions:test_empty_dacl_denies_clients()
  if PLATFORM ~= "windows" then lu.skip("SDDL security descriptors are Windows-only") end
  if UNDER_WINE then lu.skip("Wine 8 does not enforce pipe DACLs (docs/wine.md #6)") end
  local name = H.name("nodacl")
  local server = assert(np.create(name, { security = "D:" }))
  local c, _, errname = np.open(name)
  lu.assertNil(c)
  lu.assertEquals(errname, "ACCESS_DENIED")
  H.close_all(server)
end

function TestOptions:test_client_read_false_cannot_read()
  local server, client = H.pair(nil, { read = false })
  local cb, res = H.capture()
  client:read(cb)
  H.pump(function() return res.done end)
  lu.assertNil(res[1])
  lu.assertEquals(res[3], "ACCESS_DENIED")
  client:write("still writes", function() end)
  lu.assertEquals(server:read(), "still writes")
  H.close_all(server, client)
end

function TestOptions:test_client_write_false_cannot_write()
  local server, client = H.pair(nil, { write = false })
  local cb, res = H.capture()
  client:write("x", cb)
  H.pump(function() return res.done end)
  lu.assertNil(res[1])
  lu.assertEquals(res[3], "ACCESS_DENIED")
  server:write("still reads", function() end)
  lu.assertEquals(client:read(), "still reads")
  H.close_all(server, client)
end

function TestOptions:test_security_qos_flags_levels()
  for _, level in ipairs { "anonymous", "identification", "impersonation", "delegation" } do
    local server, client = H.pair(nil, { security_qos_flags = level })
    client:write(level, function() end)
    lu.assertEquals(server:read(), level)
    H.close_all(server, client)
  end
  -- Raw flags as in Tokio (SECURITY_IDENTIFICATION = 0x10000).
  local server, client = H.pair(nil, { security_qos_flags = 0x10000 })
  H.close_all(server, client)
end

function TestOptions:test_byte_client_on_message_pipe_reads_a_stream()
  local server, client = H.pair({ pipe_mode = "message" }, { pipe_mode = "byte" })
  server:write("ab", function() end)
  server:write("cd", function() end)
  H.settle()
  lu.assertEquals(client:read(), "abcd")
  H.close_all(server, client)
end

-- An instance no client has reached reports its buffer sizes as given,
-- the default and 0 included (Linux reported its listening socket's for
-- those two, 212992 where 65536 or 0 was given).
function TestOptions:test_an_instance_with_no_client_reports_its_buffer_sizes_as_given()
  for _, o in ipairs { {}, { out_buffer_size = 65536, in_buffer_size = 65536 },
                       { out_buffer_size = 0, in_buffer_size = 0 },
                       { out_buffer_size = 4096, in_buffer_size = 8192 } } do
    local s = assert(np.create(H.name("info-given"), o))
    local i = assert(s:info())
    lu.assertEquals({ i.out_buffer_size, i.in_buffer_size },
      { o.out_buffer_size or 65536, o.in_buffer_size or 65536 })
    s:close()
  end
end
