-- Linux only: the files a server keeps beside its socket, and the checks
-- that stop another user from planting them.
local lu = require "luaunit"
local np = require "namedpipe"
local H = require "tests.helpers"

TestUnix = {}

local function q(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

-- What a test made outside the build directory, removed however it ends.
local made = {}

function TestUnix:tearDown()
  for i = #made, 1, -1 do
    os.execute("rm -rf " .. q(made[i]))
    made[i] = nil
  end
  H.settle(2000)
end

local function linux_only()
  if PLATFORM ~= "linux" then lu.skip("socket and lock files: Linux backend only") end
end

local sh = H.execute

local function exists(path) return sh("test -e " .. q(path) .. " || test -L " .. q(path)) end

local function read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end

local function write_file(path, s)
  local f = assert(io.open(path, "wb"))
  f:write(s)
  f:close()
end

-- A private directory for absolute socket paths (tearDown removes it).
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
  local uid = p and p:read("*l")
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

-- A dead server's longer description is replaced whole, not overwritten in
-- part: what a client of another process reads is this server's line alone.
function TestUnix:test_stale_lock_file_longer_description_is_replaced()
  linux_only()
  local dir = scratch_dir()
  local path = dir .. "/s.sock"
  write_file(path .. ".lock",
    "namedpipe=1 type=message max=7 inbound=0 outbound=1 " .. string.rep("x", 60) .. "\n")
  assert(sh("chmod 0600 " .. q(path .. ".lock")))
  local s = assert(np.create(path, { first_pipe_instance = true }))
  lu.assertEquals(read_file(path .. ".lock"),
    "namedpipe=1 type=byte max=255 inbound=1 outbound=1\n")
  H.close_all(s)
  lu.assertFalse(exists(path .. ".lock"))
end

-- The socket file has exactly the mode asked for (security = "0660"...),
-- whatever the umask took from it, and the lock file the read bits of that
-- mode plus the owner's 0600; a stale lock file of our own with other bits
-- gets those. Checked from a process of its own for each umask.
function TestUnix:test_file_modes_are_exact_under_any_umask()
  linux_only()
  -- mode asked -> the lock file's mode
  local lock_mode = { ["0600"] = "600", ["0660"] = "640", ["0644"] = "644",
                      ["0666"] = "644", ["0700"] = "600", ["0755"] = "644" }
  local cases, got, want = { "0600", "0660", "0644", "0666", "0700", "0755" }, {}, {}
  for _, umask in ipairs { "022", "077", "000", "027" } do
    for _, stale in ipairs { false, true } do
      local dir = scratch_dir()
      if stale then
        for _, mode in ipairs(cases) do
          write_file(("%s/%s.sock.lock"):format(dir, mode), "namedpipe=1 type=message max=9\n")
          assert(sh(("chmod 0640 %s/%s.sock.lock"):format(q(dir), mode)))
        end
      end
      local ok, out = H.run_lua_env("umask " .. umask .. ";", [[
        local np = require "namedpipe"
        local dir = ...
        local function mode_of(path)
          local p = io.popen("stat -c %a '" .. path .. "'")
          local m = p:read("*l")
          p:close()
          return m
        end
        for _, mode in ipairs { "0600", "0660", "0644", "0666", "0700", "0755" } do
          local path = dir .. "/" .. mode .. ".sock"
          local s = assert(np.create(path, { security = mode }))
          io.write(mode, " ", mode_of(path), " ", mode_of(path .. ".lock"), "\n")
          s:close()
        end
      ]], dir)
      lu.assertTrue(ok, out)
      for _, mode in ipairs(cases) do
        local key = ("umask %s%s %s"):format(umask, stale and " stale" or "", mode)
        got[key] = out:match(mode .. " (%d+ %d+)\n")
        want[key] = mode:sub(2) .. " " .. lock_mode[mode]
      end
    end
  end
  lu.assertEquals(got, want)
end

-- Windows removes a pipe with the process that made it, however it ends.
-- Here the socket and its lock file are files: a process that ends without
-- closing its Lua state (os.exit) removes them on its way out all the same.
local function files_left(dir)
  local p = io.popen("ls -A " .. q(dir))
  local names = {}
  for line in p:lines() do names[#names + 1] = line end
  p:close()
  return table.concat(names, " ")
end

local ENDINGS = {
  { "os.exit(0)", "os.exit(0)" },
  { "os.exit(false)", "os.exit(false)" },
  { "os.exit(3)", "os.exit(3)" },
  { "an uncaught error", "error('the script dies')" },
  { "os.exit(true, true)", "os.exit(true, true)" },
  { "the end of the script", "" },
}

function TestUnix:test_files_go_with_the_process_however_it_exits()
  linux_only()
  local left = {}
  for _, e in ipairs(ENDINGS) do
    local what, ending = e[1], e[2]
    local dir = scratch_dir()
    local _, out = H.run_lua(([[
      local np = require "namedpipe"
      local dir = ...
      S1 = assert(np.create(dir .. "/byte.sock"))
      S2 = assert(np.create(dir .. "/byte.sock"))
      S3 = assert(np.create(dir .. "/msg.sock", { pipe_mode = "message" }))
      C = assert(np.open(dir .. "/msg.sock"))
      assert(S3:connect(2000))
      io.write(#io.popen("ls -A '" .. dir .. "'"):read("*a") > 0 and "made " or "none ")
      %s
    ]]):format(ending), dir)
    lu.assertStrContains(out, "made", false, what .. ": " .. out)
    if files_left(dir) ~= "" then
      left[#left + 1] = ("%s left %s (%s)"):format(what, files_left(dir), out)
    end
  end
  lu.assertEquals(left, {})
end

-- Where a \\.\pipe\ name's socket goes follows NAMEDPIPE_DIR and
-- XDG_RUNTIME_DIR as they are at each create, however the environment was
-- changed in between: variables set, replaced, unset and set again (which
-- moves the others), a putenv'ed string rewritten in place (its value, or
-- its name), clearenv. First two fixed sequences that leave the array, its
-- length and its first and last entries as they were, with another value
-- in force (glibc reallocs in place and hands back the string it made for
-- a value it has seen; clearenv frees the array, which the next putenv may
-- get back at the same address), then a random sequence of batches of such
-- changes against a model of which directory wins; after each batch, a
-- server of a new name and a client of the socket path the model expects.
-- Changing the environment of this process takes LuaJIT's ffi (the luajit
-- run of `make test-luas`).
function TestUnix:test_socket_directory_follows_every_change_of_the_environment()
  linux_only()
  local has_ffi, ffi = pcall(require, "ffi")
  if not has_ffi then lu.skip("changes this process's environment: needs LuaJIT's ffi (make test-luas runs it)") end
  pcall(ffi.cdef, [[
    int setenv(const char *name, const char *value, int overwrite);
    int unsetenv(const char *name);
    int putenv(char *string);
    int clearenv(void);
    char **environ;
  ]])
  local C = ffi.C
  -- The whole environment, put back however the test ends.
  local saved = {}
  local e = C.environ
  local i = 0
  while e ~= nil and e[i] ~= nil do
    saved[#saved + 1] = ffi.string(e[i])
    i = i + 1
  end
  local kept = {} -- putenv'ed strings: the environment points into them
  local function restore()
    C.clearenv()
    for _, kv in ipairs(saved) do
      local k, v = kv:match("^([^=]*)=(.*)$")
      if k and k ~= "" then C.setenv(k, v, 1) end
    end
  end
  local base = scratch_dir()
  local dirs = { base .. "/d1", base .. "/d2" }       -- NAMEDPIPE_DIR values
  local xdgs = { base .. "/x1", base .. "/x2" }       -- XDG_RUNTIME_DIR values
  for _, x in ipairs(xdgs) do assert(sh("mkdir -m 0700 " .. q(x))) end
  local uid = io.popen("id -u"):read("*l")
  local seed = tonumber(os.getenv("NP_ENV_SEED") or "") or os.time()
  local g = H.generator(seed)
  local model = {} -- variable -> value (nil: unset)
  local log = {}
  local function expected_dir()
    local d, x = model.NAMEDPIPE_DIR, model.XDG_RUNTIME_DIR
    if d and d ~= "" then return d end
    if x and x ~= "" then return x .. "/namedpipe" end
    return "/tmp/namedpipe-" .. uid
  end
  local function set(name, v)
    C.setenv(name, v, 1)
    model[name] = v
    log[#log + 1] = ("set %s=%s"):format(name, v)
  end
  local function unset(name)
    C.unsetenv(name)
    model[name] = nil
    log[#log + 1] = "unset " .. name
  end
  local function put(str) -- a string of ours in the environment itself
    local buf = ffi.new("char[?]", #str + 1)
    ffi.copy(buf, str)
    kept[#kept + 1] = buf
    C.putenv(buf)
    local k, v = str:match("^([^=]*)=(.*)$")
    model[k] = v
    log[#log + 1] = "putenv " .. str
    return buf
  end
  local function clear()
    C.clearenv()
    model = {}
    log[#log + 1] = "clearenv"
  end
  local step = 0
  local function check_create()
    step = step + 1
    local leaf = ("envdir-%d-%d"):format(seed % 100000, step)
    local s, m = np.create([[\\.\pipe\]] .. leaf)
    if not s then error(("create after %s: %s"):format(log[#log] or "nothing", m)) end
    local path = expected_dir() .. "/" .. leaf
    local c, cm = np.open(path)
    H.close_all(s, c)
    if not c then
      error(("seed %d (NP_ENV_SEED), step %d: no socket at %s (%s); the last changes: %s")
        :format(seed, step, path, cm, table.concat(log, "; ", math.max(1, #log - 8))))
    end
  end
  local names = { "NAMEDPIPE_DIR", "XDG_RUNTIME_DIR", "NP_ENV_FILL1", "NP_ENV_FILL2", "NP_ENV_FILL3" }
  local function value_for(name)
    if name == "NAMEDPIPE_DIR" then return g.pick({ dirs[1], dirs[2], "" }) end
    if name == "XDG_RUNTIME_DIR" then return g.pick({ xdgs[1], xdgs[2], "" }) end
    return ("v"):rep(g.rnd(8))
  end
  local ok, err = pcall(function()
    -- 1. Another value in force, the array's place, length, first and
    -- last entries all as they were.
    unset("NAMEDPIPE_DIR")
    unset("XDG_RUNTIME_DIR")
    set("NP_ENV_MIDDLE", "m")
    set("NP_ENV_LAST", "l")
    check_create()
    unset("NP_ENV_MIDDLE")
    set("NAMEDPIPE_DIR", dirs[1])
    unset("NP_ENV_LAST")
    set("NP_ENV_LAST", "l")
    check_create()
    -- 2. A large environment cleared, and one string put back: the new
    -- array may be the old one's memory, the old entries still in it.
    for k = 1, 200 do set(("NP_ENV_BULK%03d"):format(k), "x") end
    set("NAMEDPIPE_DIR", dirs[2])
    check_create()
    clear()
    put("NP_ENV_ONE=1")
    check_create()
    restore()
    model = {}
    unset("NAMEDPIPE_DIR")
    unset("XDG_RUNTIME_DIR")
    -- 3. At random, one to four changes between two creates.
    local mine = nil -- the putenv'ed NAMEDPIPE_DIR string, while in force
    for _ = 1, 400 do
      for _ = 1, g.rnd(4) do
        local op = g.weighted({ { 4, "set" }, { 3, "unset" }, { 2, "putenv" }, { 2, "rewrite" },
          { 1, "rename" }, { 1, "clear" } })
        local name = g.pick(names)
        if op == "set" then
          set(name, value_for(name))
          if name == "NAMEDPIPE_DIR" then mine = nil end
        elseif op == "unset" then
          unset(name)
          if name == "NAMEDPIPE_DIR" then mine = nil end
        elseif op == "putenv" then
          mine = put("NAMEDPIPE_DIR=" .. dirs[g.rnd(2)])
        elseif op == "rewrite" and mine then
          -- the string the environment holds, its value written in place
          local now = ffi.string(mine):sub(#"NAMEDPIPE_DIR=" + 1)
          local v = now == dirs[1] and dirs[2] or dirs[1]
          ffi.copy(mine, "NAMEDPIPE_DIR=" .. v)
          model.NAMEDPIPE_DIR = v
          log[#log + 1] = "rewrite in place NAMEDPIPE_DIR=" .. v
        elseif op == "rename" and mine then
          -- ... or its name: the variable is gone (same length)
          ffi.copy(mine, "NP_ENV_RENAME", #"NP_ENV_RENAME")
          model.NAMEDPIPE_DIR = nil
          mine = nil
          log[#log + 1] = "rename in place NAMEDPIPE_DIR -> NP_ENV_RENAME"
        elseif op == "clear" then
          clear()
          mine = nil
        end
      end
      check_create()
    end
  end)
  restore()
  kept = nil
  H.settle(2000)
  assert(ok, err)
end

-- \\.\pipe\ names too (their directory stays: it is shared by the user's
-- pipes).
function TestUnix:test_pipe_name_files_go_with_the_process()
  linux_only()
  local dir = scratch_dir()
  local ok, out = H.run_lua_env("NAMEDPIPE_DIR=" .. q(dir), [==[
    local np = require "namedpipe"
    S = assert(np.create([[\\.\pipe\one]]))
    os.exit(0)
  ]==])
  lu.assertTrue(ok, out)
  lu.assertEquals(files_left(dir), "")
end

-- A process killed outright (SIGKILL) runs nothing on its way out: its
-- files stay until the next server of that name, which takes them over.
function TestUnix:test_files_of_a_killed_server_are_taken_over()
  linux_only()
  local dir = scratch_dir()
  local path = dir .. "/killed.sock"
  H.run_lua([[
    local np = require "namedpipe"
    S = assert(np.create(...))
    os.execute("kill -KILL $PPID") -- the shell's parent: this interpreter
    os.exit(0)
  ]], path)
  lu.assertEquals(files_left(dir), "killed.sock killed.sock.lock")
  local s = assert(np.create(path, { first_pipe_instance = true }))
  local c = assert(np.open(path))
  assert(s:connect(2000))
  H.close_all(s, c)
  lu.assertEquals(files_left(dir), "")
end

-- A server that serves one client at a time closes its instance and creates
-- the next at once. The name is gone for clients between the two, as on
-- Windows; made again before a step, it serves as before; and a step after
-- the last close leaves no file behind.
function TestUnix:test_a_name_closed_and_made_again_at_once_serves()
  linux_only()
  local dir = scratch_dir()
  local path = dir .. "/again.sock"
  for round = 1, 3 do
    local s = assert(np.create(path, { first_pipe_instance = true }))
    local c = assert(np.open(path))
    assert(s:connect(2000))
    assert(c:write("round " .. round, 2000))
    lu.assertEquals(s:read(2000), "round " .. round)
    c:close()
    s:close()
    lu.assertFalse(exists(path), "the socket file goes with the last instance")
    local o, _, ename = np.open(path)
    if o then o:close() end
    lu.assertEquals(ename, "NOT_FOUND")
  end
  np.step(0)
  lu.assertEquals(files_left(dir), "")
end

-- Made again with other options before a step: the new ones hold (type,
-- the socket file's mode, the description clients read).
function TestUnix:test_a_name_made_again_with_other_options()
  linux_only()
  local dir = scratch_dir()
  local path = dir .. "/other.sock"
  local s = assert(np.create(path))
  s:close()
  s = assert(np.create(path, { pipe_mode = "message", security = "0660", max_instances = 3 }))
  local c = assert(np.open(path, { pipe_mode = "message" }))
  assert(s:connect(2000))
  assert(c:write("one", 2000))
  assert(c:write("two", 2000))
  lu.assertEquals(s:read(2000), "one")
  lu.assertEquals(s:read(2000), "two")
  lu.assertEquals(c:info().max_instances, 3)
  local p = io.popen("stat -c %a " .. q(path))
  lu.assertEquals(p:read("*l"), "660")
  p:close()
  lu.assertEquals(read_file(path .. ".lock"),
    "namedpipe=1 type=message max=3 inbound=1 outbound=1\n")
  H.close_all(s, c)
  lu.assertEquals(files_left(dir), "")
end

-- Between the close and the next step another process may take the name
-- (the lock is let go at the close), and its files are its own: it removes
-- the socket file kept aside, and the name made again here afterwards is
-- made anew.
function TestUnix:test_a_name_closed_here_may_be_taken_by_another_process()
  linux_only()
  local dir = scratch_dir()
  local path = dir .. "/taken.sock"
  local s = assert(np.create(path))
  s:close()
  local ok, out = H.run_lua([[
    local np = require "namedpipe"
    local path = ...
    local s, _, ename = np.create(path, { first_pipe_instance = true })
    local idle = io.open(select(2, ...))
    io.write(s and "created" or ename, " ", idle and "idle left" or "no idle", "\n")
    if s then s:close() end
    np.step(0)
  ]], path, H.idle_path(path))
  lu.assertTrue(ok, out)
  lu.assertEquals(out:gsub("%s+$", ""), "created no idle")
  lu.assertEquals(files_left(dir), "")
  s = assert(np.create(path, { first_pipe_instance = true }))
  local c = assert(np.open(path))
  assert(s:connect(2000))
  assert(c:write("mine", 2000))
  lu.assertEquals(s:read(2000), "mine")
  H.close_all(s, c)
  lu.assertEquals(files_left(dir), "")
end

-- A process that ends between the close and the next step: os.exit removes
-- the files kept aside (the exit handler); a kill leaves them, and the
-- next server of the name takes them over.
function TestUnix:test_files_kept_aside_go_at_exit_or_with_the_next_server()
  linux_only()
  local dir = scratch_dir()
  local path = dir .. "/aside.sock"
  local code = [[
    local np = require "namedpipe"
    local path, ending = ...
    local s = assert(np.create(path))
    s:close()
    if ending == "kill" then os.execute("kill -KILL $PPID") end
    os.exit(0)
  ]]
  local ok, out = H.run_lua(code, path, "exit")
  lu.assertTrue(ok, out)
  lu.assertEquals(files_left(dir), "")
  H.run_lua(code, path, "kill")
  lu.assertEquals(files_left(dir), H.idle_path(path):match("[^/]+$") .. " aside.sock.lock")
  local o, _, ename = np.open(path)
  if o then o:close() end
  lu.assertEquals(ename, "NOT_FOUND")
  local s = assert(np.create(path, { first_pipe_instance = true }))
  lu.assertEquals(files_left(dir), "aside.sock aside.sock.lock")
  local c = assert(np.open(path))
  assert(s:connect(2000))
  H.close_all(s, c)
  lu.assertEquals(files_left(dir), "")
end

-- What two processes sharing a name do, here directly and in another
-- process by command through two FIFOs (so that this process takes no step
-- it was not told to: a step ends what a close kept aside). The moves:
-- create (a type), close (an instance), again (close and create at once),
-- step, churn (k cycles of create and close, counting the failed creates).
local SHARED_MOVES = [[
  local np = require "namedpipe"
  local path, inst = ...
  local M = {}
  function M.create(mode)
    local s, _, ename = np.create(path, { pipe_mode = mode ~= "" and mode or nil })
    if not s then return ename end
    inst[#inst + 1] = s
    return "ok"
  end
  function M.close(i) table.remove(inst, tonumber(i)):close() return "ok" end
  function M.again(i, mode)
    M.close(i)
    return M.create(mode)
  end
  function M.step() np.step(0) return "ok" end
  function M.churn(k)
    local failed = {}
    for _ = 1, tonumber(k) do
      local r = M.create()
      if r == "ok" then M.close(#inst) else failed[#failed + 1] = r end
    end
    return #failed == 0 and "ok" or table.concat(failed, ",")
  end
  return M
]]

local function gone(f)
  local h, _, errno = io.open(f, "r")
  if h then h:close() end
  return errno == 2
end

-- The name's files there now, by their last component.
local function name_files(path)
  local left = {}
  for _, f in ipairs { path, path .. ".lock", H.idle_path(path) } do
    if not gone(f) then left[#left + 1] = f:match("[^/]+$") end
  end
  return table.concat(left, " ")
end

-- here: the moves in this process; there.send(line): one in the other,
-- its answer; there.quit(): the other closes what it has, steps, ends.
local function two_sides(dir, path)
  if not sh("command -v mkfifo >/dev/null 2>&1 && command -v timeout >/dev/null 2>&1") then
    lu.skip("needs mkfifo and timeout")
  end
  local cmdf, repf = dir .. "/cmd.fifo", dir .. "/rep.fifo"
  assert(sh("mkfifo " .. q(cmdf) .. " " .. q(repf)))
  local child_code = [[
    local cmd = assert(io.open(select(2, ...), "r"))
    local rep = assert(io.open(select(3, ...), "w"))
    local inst = {}
    local M = assert((loadstring or load)(select(4, ...)))(select(1, ...), inst)
    for line in cmd:lines() do
      local op, a, b = line:match("^(%S+) ?(%S*) ?(%S*)$")
      if op == "quit" then break end
      rep:write(M[op](a, b), "\n")
      rep:flush()
    end
    for _, s in ipairs(inst) do s:close() end
    require("namedpipe").step(0)
    rep:write("bye\n")
    rep:close()
  ]]
  local child_cmd, script = H.lua_command(child_code, path, cmdf, repf, SHARED_MOVES)
  local out = script .. ".out"
  assert(sh(("timeout 120 %s > %s 2>&1 &"):format(child_cmd, q(out))))
  local cmd = assert(io.open(cmdf, "w"))
  local rep = assert(io.open(repf, "r"))
  local mine = {}
  local here = assert((loadstring or load)(SHARED_MOVES))(path, mine) -- luacheck: ignore 113
  here.mine = mine
  local there = {}
  function there.post(line)
    cmd:write(line, "\n")
    cmd:flush()
  end
  function there.answer()
    local r = rep:read("*l")
    if not r then
      local f = io.open(out)
      error("the other process ended: " .. (f and f:read("*a") or "?"))
    end
    return r
  end
  function there.send(line)
    there.post(line)
    return there.answer()
  end
  function there.quit()
    lu.assertEquals(there.send("quit"), "bye")
    cmd:close()
    rep:close()
    os.remove(script)
    os.remove(out)
  end
  return here, there
end

-- Two processes take turns with one name, in a random order: create
-- (either type), close, close and create again at once, step, and a client
-- probe between each. The model: the name belongs to the process with
-- instances, or to nobody. Checked after every move: a create where the
-- other process has instances fails ADDRESS_IN_USE (ACCESS_DENIED for
-- other options than its own instances'), the socket file is there exactly
-- while someone has instances, no socket kept aside is there then, a client finds
-- the name exactly then, with the type its owner gave it; and once nobody
-- has instances and both have stepped, no file is left.
function TestUnix:test_two_processes_taking_turns_with_a_name()
  linux_only()
  local dir = scratch_dir()
  local path = dir .. "/turns.sock"
  local here, there = two_sides(dir, path)
  local mine = here.mine
  local function files() return name_files(path) end
  local seed = tonumber(os.getenv("NP_TURNS_SEED") or "") or os.time()
  local g = H.generator(seed)
  local side = { { name = "here", n = 0 }, { name = "there", n = 0 } }
  local log = {}
  local function fail(fmt, ...)
    error(("seed %d (NP_TURNS_SEED), after: %s\n" .. fmt)
      :format(seed, table.concat(log, "; ", math.max(1, #log - 12)), ...), 2)
  end
  local function run(who, op, a, b)
    log[#log + 1] = ("%s %s %s %s"):format(who.name, op, a or "", b or "")
    if who.name == "here" then return here[op](a, b) end
    return there.send(("%s %s %s"):format(op, a or "", b or ""))
  end
  local function expect_create(who, other, mode, got)
    local want = other.n > 0 and "ADDRESS_IN_USE"
      or who.n > 0 and who.mode ~= mode and "ACCESS_DENIED" or "ok"
    if got ~= want then fail("%s create %s: %s, expected %s", who.name, mode, got, want) end
    if got == "ok" then
      who.n = who.n + 1
      who.mode = mode
    end
  end
  for _ = 1, 400 do
    local i = g.rnd(2)
    local who, other = side[i], side[3 - i]
    local mode = g.chance(2) and "byte" or "message"
    local op = g.weighted { { 4, "create" }, { who.n > 0 and 4 or 0, "close" },
      { who.n > 0 and 3 or 0, "again" }, { 3, "step" } }
    if op == "create" then
      expect_create(who, other, mode, run(who, "create", mode))
    elseif op == "close" or op == "again" then
      local k = g.rnd(who.n)
      local got = run(who, op, tostring(k), mode)
      who.n = who.n - 1
      if op == "again" then expect_create(who, other, mode, got) end
    else
      run(who, "step")
      who.stepped = true
    end
    if op ~= "step" then who.stepped = false end
    -- what anyone sees now
    local owner = side[1].n > 0 and side[1] or side[2].n > 0 and side[2] or nil
    local left = files()
    if owner then
      if left ~= "turns.sock turns.sock.lock" then fail("files: %q while %s has instances", left, owner.name) end
      local c, _, ename = np.open(path)
      if c then
        local info = c:info()
        c:close()
        if info.mode ~= owner.mode then fail("a client sees %s, the owner made %s", tostring(info.mode), owner.mode) end
      elseif ename ~= "PIPE_BUSY" then
        fail("open: %s while %s has instances", tostring(ename), owner.name)
      end
    else
      if not gone(path) then fail("the socket file is there with no instance") end
      local c, _, ename = np.open(path)
      if c then c:close() end
      if ename ~= "NOT_FOUND" then fail("open: %s with no instance", tostring(c and "ok" or ename)) end
      if side[1].stepped and side[2].stepped and left ~= "" then
        fail("files %q left with no instance, both stepped", left)
      end
    end
  end
  there.quit()
  for k = #mine, 1, -1 do here.close(k) end
  np.step(0)
  lu.assertEquals(files(), "")
end

-- The same, at the same time: this process makes the name and closes it,
-- then steps (removing the files it kept aside) while the other makes and
-- closes the name a few times. The name is never this one's while the
-- other works, so every create there must succeed; and when both have
-- stepped no file is left. (When a remover took the owner's lock, creates
-- there failed ADDRESS_IN_USE now and then; two removers at once left
-- files behind.)
function TestUnix:test_a_name_kept_aside_while_another_process_churns_it()
  linux_only()
  local dir = scratch_dir()
  local path = dir .. "/churned.sock"
  local here, there = two_sides(dir, path)
  local failed = {}
  for round = 1, 400 do
    lu.assertEquals(here.create(), "ok")
    here.close(1)
    there.post("churn 3")
    np.step(0)
    local r = there.answer()
    if r ~= "ok" then failed[#failed + 1] = ("round %d: %s"):format(round, r) end
    if round % 50 == 0 then
      there.send("step")
      local left = name_files(path)
      if left ~= "" then failed[#failed + 1] = ("round %d: files %s"):format(round, left) end
    end
  end
  there.quit()
  np.step(0)
  lu.assertEquals(failed, {})
  lu.assertEquals(name_files(path), "")
end

-- PATH.idle is a name like any: a server of it is not disturbed by PATH
-- being closed, made again and its files removed (the socket kept aside
-- has a name no socket can have).
function TestUnix:test_a_pipe_named_like_a_kept_aside_socket_is_its_own()
  linux_only()
  local dir = scratch_dir()
  local path = dir .. "/svc"
  local other = assert(np.create(path .. ".idle"))
  local s = assert(np.create(path))
  s:close()
  local c = assert(np.open(path .. ".idle"))
  s = assert(np.create(path))
  assert(other:connect(2000))
  assert(c:write("to svc.idle", 2000))
  lu.assertEquals(other:read(2000), "to svc.idle")
  s:close()
  np.step(0)
  lu.assertEquals(files_left(dir), "svc.idle svc.idle.lock")
  H.close_all(other, c)
  lu.assertEquals(files_left(dir), "")
end

-- Several Lua states on several threads, and fork()ed children: the C host
-- of tests/c/multi_state.c (built by make test-linux), see its header.
local function multi_state(mode)
  local build = os.getenv("NP_BUILD_DIR")
  local exe = (REPO_ROOT or ".") .. "/" ..
    (build and build:match("asan") and "build/asan/multi_state" or "build/multistate/multi_state")
  if _VERSION ~= "Lua 5.4" then
    lu.skip("tests/c/multi_state.c is a Lua 5.4 host: it loads the 5.4 build, not this version's")
  end
  if not sh("test -x " .. q(exe)) then lu.skip(exe .. " is not built (make multistate)") end
  local dir = scratch_dir()
  local out = dir .. ".out"
  made[#made + 1] = out
  local ok = sh(("timeout -k 5 60 %s %s %s > %s 2>&1"):format(q(exe), mode, q(dir), q(out)))
  return ok, read_file(out) or "", dir
end

function TestUnix:test_exit_with_states_stepping_on_threads_removes_every_file()
  linux_only()
  local ok, out, dir = multi_state("exit")
  lu.assertTrue(ok, out)
  lu.assertEquals(files_left(dir), "")
end

function TestUnix:test_a_forked_child_leaves_its_parents_files()
  linux_only()
  local ok, out, dir = multi_state("fork")
  lu.assertTrue(ok, out)
  lu.assertStrContains(out, "fork: ok")
  lu.assertEquals(files_left(dir), "")
end
