-- Linux only: the files a server keeps beside its socket, and the checks
-- that stop another user from planting them.
local lu = require "luaunit"
local np = require "namedpipe"
local H = require "tests.helpers"

TestUnix = {}

-- What a test made outside the build directory, removed however it ends.
local made = {}

function TestUnix:tearDown()
  for i = #made, 1, -1 do
    os.execute("rm -rf '" .. made[i]:gsub("'", "'\\''") .. "'")
    made[i] = nil
  end
  H.settle(2000)
end

local function linux_only()
  if PLATFORM ~= "linux" then lu.skip("socket and lock files: Linux backend only") end
end

local function sh(cmd) return os.execute(cmd) == true end

local function q(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

local function exists(path) return sh("test -e " .. q(path) .. " || test -L " .. q(path)) end

local function read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

local function write_file(path, s)
  local f = assert(io.open(path, "wb"))
  f:write(s)
  f:close()
end

-- A private directory for absolute socket paths (removed by the caller).
local function scratch_dir()
  local dir = os.tmpname()
  os.remove(dir)
  assert(sh("mkdir -m 0700 " .. q(dir)))
  made[#made + 1] = dir
  return dir
end

-- /tmp/namedpipe-UID is the user's own: a test may change it only for a
-- user id nobody else runs as, which takes root (setpriv).
local function other_user()
  local p = io.popen("id -u")
  local uid = p and p:read("l")
  if p then p:close() end
  if uid ~= "0" or not sh("command -v setpriv >/dev/null 2>&1") then
    lu.skip("changes /tmp/namedpipe-UID of a user id of its own: needs root and setpriv")
  end
  return 4000000 + math.random(0, 999999)
end

function TestUnix:test_tmp_directory_others_can_write_to_is_refused()
  linux_only()
  local uid = other_user()
  local dir = "/tmp/namedpipe-" .. uid
  made[#made + 1] = dir
  local code = [[
    local np = require "namedpipe"
    local s, _, err = np.create(...)
    local c, _, cerr = np.open(...)
    print(("create %s, open %s"):format(s and "ok" or err, c and "ok" or cerr))
  ]]
  local env = ("env -u NAMEDPIPE_DIR -u XDG_RUNTIME_DIR setpriv --reuid=%d --regid=%d --clear-groups")
    :format(uid, uid)
  local function as_user(mode)
    assert(sh(("rm -rf %s && mkdir -m %s %s && chown %d:%d %s"):format(dir, mode, dir, uid, uid, dir)))
    local ok, out = H.run_lua_env(env, code, [[\\.\pipe\p]])
    lu.assertTrue(ok, out)
    return out:gsub("%s+$", "")
  end
  lu.assertEquals(as_user("0700"), "create ok, open ok")
  lu.assertEquals(as_user("0755"), "create ok, open ok")
  lu.assertEquals(as_user("0777"), "create ACCESS_DENIED, open ACCESS_DENIED")
  lu.assertEquals(as_user("0770"), "create ACCESS_DENIED, open ACCESS_DENIED")
  lu.assertEquals(as_user("1733"), "create ACCESS_DENIED, open ACCESS_DENIED")
end

-- PATH.lock is opened, locked and written by the server: in a directory
-- others can write to (an absolute socket path in /tmp, say) it may have
-- been put there beforehand. Only a plain file of the user's own, with
-- one name and that nobody else may write to, is taken.
local function refused_lock(prepare)
  local dir = scratch_dir()
  local path = dir .. "/s.sock"
  prepare(path .. ".lock", dir)
  local s, msg, errname = np.create(path)
  if s then s:close() end
  lu.assertNil(s, "the server took the lock file")
  lu.assertEquals(errname, "ACCESS_DENIED", msg)
  lu.assertFalse(exists(path), "a socket was left behind")
  return path
end

function TestUnix:test_lock_file_that_is_a_hard_link_is_refused()
  linux_only()
  local victim
  refused_lock(function(lock, dir)
    victim = dir .. "/precious"
    write_file(victim, "precious data")
    assert(sh(("ln %s %s"):format(q(victim), q(lock))))
  end)
  lu.assertEquals(read_file(victim), "precious data")
end

function TestUnix:test_lock_file_that_is_not_a_regular_file_is_refused()
  linux_only()
  refused_lock(function(lock) assert(sh("mkfifo -m 0600 " .. q(lock))) end)
  refused_lock(function(lock) assert(sh("mkdir -m 0700 " .. q(lock))) end)
end

function TestUnix:test_lock_file_others_may_write_to_is_refused()
  linux_only()
  for _, mode in ipairs { "0666", "0620" } do
    refused_lock(function(lock)
      write_file(lock, "")
      assert(sh(("chmod %s %s"):format(mode, q(lock))))
    end)
  end
end

function TestUnix:test_lock_file_of_another_user_is_refused()
  linux_only()
  local uid = other_user()
  refused_lock(function(lock)
    write_file(lock, "")
    assert(sh(("chmod 0644 %s && chown %d %s"):format(q(lock), uid, q(lock))))
  end)
end

-- A lock file a dead server of this user left (mode as a server makes it)
-- is taken over as before.
function TestUnix:test_stale_lock_file_of_our_own_is_taken()
  linux_only()
  local dir = scratch_dir()
  local path = dir .. "/s.sock"
  write_file(path .. ".lock", "namedpipe=1 type=byte max=255 inbound=1 outbound=1\n")
  assert(sh("chmod 0600 " .. q(path .. ".lock")))
  local s = assert(np.create(path, { first_pipe_instance = true }))
  local c = assert(np.open(path))
  assert(s:connect(2000))
  H.close_all(s, c)
  lu.assertFalse(exists(path .. ".lock"))
end
