-- Who owns what, and for how long: garbage collection, closing with
-- operations in flight, closing the Lua state, a client that is not us.
local lu = require "luaunit"
local np = require "namedpipe"
local H = require "tests.helpers"

TestLifetime = {}

function TestLifetime:tearDown() H.settle(2000) end

function TestLifetime:test_pending_callback_keeps_unreferenced_pipe_alive()
  local name = H.name("alive")
  local got
  do
    local server = assert(np.create(name))
    server:connect(function()
      server:read(function(data) got = data end)
    end)
  end
  collectgarbage()
  collectgarbage()
  local client = assert(np.open(name))
  client:write("still here", function() end)
  H.pump(function() return got end, 5000, "the collected-looking server's read")
  lu.assertEquals(got, "still here")
  H.close_all(client)
end

function TestLifetime:test_unreferenced_idle_pipe_is_closed_by_gc()
  local name = H.name("gc")
  do
    assert(np.create(name, { max_instances = 1 }))
  end
  collectgarbage()
  collectgarbage()
  H.settle()
  -- The instance is gone: the name is free again and no client finds it.
  local o, _, errname = np.open(name)
  lu.assertNil(o)
  lu.assertEquals(errname, "NOT_FOUND")
  local again = assert(np.create(name, { max_instances = 1 }))
  H.close_all(again)
end

-- A pipe is anchored while an operation of it is in flight, and through
-- the callback of its last one; after that it is garbage like any other
-- value - also when that callback raised (the next step lets it go).
function TestLifetime:test_pipe_let_go_after_its_last_callback()
  for _, raises in ipairs { false, true } do
    local name = H.name("last")
    local client, got
    do
      local server = assert(np.create(name, { max_instances = 1 }))
      client = assert(np.open(name))
      assert(server:connect(2000))
      server:read(function(data)
        got = data
        if raises then error("raised by the read callback") end
      end)
    end
    client:write("x", function() end)
    local deadline = np.now() + 5000
    while not got and np.now() < deadline do
      local ok, err = pcall(np.step, 10)
      if not ok then lu.assertStrContains(tostring(err), "raised by the read callback") end
    end
    lu.assertEquals(got, "x")
    np.step(0)
    collectgarbage()
    collectgarbage()
    -- collected, so closed: the client reads the end of the stream
    local data, _, errname = client:read(nil, 2000)
    lu.assertNil(data)
    lu.assertEquals(errname, "EOF", raises and "after a callback that raised" or "")
    H.close_all(client)
  end
end

-- A callback given to write after write (an on_write function) stays
-- anchored from one write to the next, but never once the pipe is idle:
-- one that refers to its pipe does not keep an idle pipe from being
-- collected (closed: its client reads the end), and it is garbage itself
-- once the pipe is idle, though the pipe is still referenced.
function TestLifetime:test_a_reused_write_callback_holds_nothing_once_the_pipe_is_idle()
  for _, keep_pipe in ipairs { false, true } do
    local server, client = H.pair()
    local weak = setmetatable({}, { __mode = "v" })
    local wrote = 0
    do
      local srv = server
      local function on_write(n)
        assert(srv, "the callback refers to its pipe")
        wrote = wrote + n
      end
      weak.cb = on_write
      for i = 1, 5 do assert(server:write(("w"):rep(i), on_write) == nil) end
    end
    H.pump(function() return wrote == 15 end, 5000, "the five write callbacks")
    H.settle()
    if not keep_pipe then server = nil end
    collectgarbage()
    collectgarbage()
    lu.assertNil(weak.cb, "the write callback collected once its pipe is idle")
    if keep_pipe then
      lu.assertNil(server:write("more", function(n) wrote = wrote + n end))
      H.pump(function() return wrote == 19 end, 5000, "a write with another callback")
    else
      -- collected, so closed: the client reads the bytes, then the end
      local got = {}
      repeat
        local data, _, errname = client:read(nil, 2000)
        got[#got + 1] = data or errname
      until not data
      lu.assertEquals(table.concat(got, "", 1, #got - 1), "wwwwwwwwwwwwwww")
      lu.assertEquals(got[#got], "EOF")
    end
    H.close_all(server, client)
  end
end

-- ... nor for as long as its pipe reads: once no write uses it, it goes
-- with the step that ran its last call. A callback of a finished write
-- that refers to the writer's peer (which the writer reads from until it
-- goes) or to some other idle pipe would otherwise keep it alive, open,
-- and reading, for good; and a task's waiting write (Lua 5.1 and 5.2 make
-- it through the callback form, with the task's own wake function) would
-- keep the ended task's coroutine.
function TestLifetime:test_a_finished_write_s_callback_goes_though_its_pipe_still_reads()
  local weak = setmetatable({}, { __mode = "v" })
  local wrote = false
  local other_client
  do
    local server, client = H.pair()
    local other_server
    other_server, other_client = H.pair()
    weak.server, weak.client, weak.other = server, client, other_server
    server:read_start(function() end) -- ends when its client goes (EOF)
    lu.assertNil(server:write("hi", function(n)
      wrote = n
      local _ = client and other_server -- (both referred to)
    end))
  end
  H.pump(function() return wrote end, 5000, "the write's callback")
  local deadline = np.now() + 3000
  while (weak.server or weak.client or weak.other) and np.now() < deadline do
    collectgarbage()
    np.step(10)
  end
  lu.assertNil(weak.other, "the idle pipe the callback referred to")
  lu.assertNil(weak.client, "the reading server's client the callback referred to")
  lu.assertNil(weak.server, "the reading server (its client gone, its read ended)")
  local data, _, errname = other_client:read(nil, 2000)
  lu.assertNil(data)
  lu.assertEquals(errname, "EOF", "the collected idle pipe's client reads the end")
  H.close_all(other_client)
  H.settle()
  lu.assertEquals(np.stats().pipes, 0)

  -- a task's waiting write, the task ended, its pipe still reading
  local server, client = H.pair()
  server:read_start(function() end)
  local task_weak = setmetatable({}, { __mode = "k" })
  local done = false
  np.spawn(function()
    task_weak[coroutine.running()] = true
    -- large enough not to be taken at once: the task waits for it
    assert(server:write(("x"):rep(4 * 1024 * 1024), 10000))
    done = true
  end)
  H.pump(function()
    client:try_read() -- (drained, so that the write can finish)
    return done
  end, 10000, "the task's write")
  for _ = 1, 3 do np.step(0) end
  collectgarbage()
  collectgarbage()
  lu.assertNil(next(task_weak), "the ended task's coroutine")
  H.close_all(server, client)
end

-- Writes whose callbacks come from a small set (one given to many writes)
-- or are made anew, with steps between them at random and some large
-- enough to stay pending: each write's callback is called once, with its
-- own count, in the order of its writes, whichever callback took which
-- anchor; every byte arrives in order; and at the end, the pipes idle,
-- nothing the writes were given is still anchored.
function TestLifetime:test_write_callbacks_shared_or_not_are_each_called_once()
  local seed = tonumber(os.getenv("NP_WRITECB_SEED") or "") or 4242
  local g = H.generator(seed)
  local server, client = H.pair({ pipe_mode = "byte" }, nil)
  local weak = setmetatable({}, { __mode = "k" })
  local calls, expected, sizes_sent, total_sent = {}, {}, {}, 0
  local function make_cb(key)
    local cb = function(n, err)
      calls[key] = calls[key] or {}
      table.insert(calls[key], n or err)
    end
    weak[cb] = true
    return cb
  end
  local received, received_bytes, reading = {}, 0, true
  client:read_start(function(data)
    if not data then reading = false; return end
    received[#received + 1] = data
    received_bytes = received_bytes + #data
  end)
  local sizes = { 1, 7, 100, 4096, 300000 }
  do -- (the callbacks are referenced from here only while writing)
    local shared = { make_cb("a"), make_cb("b"), make_cb("c") }
    for i = 1, 120 do
      local key, cb
      if g.chance(4) then
        key = "fresh" .. i
        cb = make_cb(key)
      else
        local k = g.rnd(3)
        key, cb = ({ "a", "b", "c" })[k], shared[k]
      end
      local size = sizes[g.rnd(g.chance(8) and 5 or 4)]
      local data = string.char(65 + i % 26):rep(size)
      expected[key] = expected[key] or {}
      table.insert(expected[key], size)
      sizes_sent[i] = size
      total_sent = total_sent + size
      lu.assertNil(server:write(data, cb))
      if g.chance(3) then np.step(0) end
    end
  end
  H.pump(function()
    local n = 0
    for _, l in pairs(calls) do n = n + #l end
    return n == 120 and received_bytes == total_sent
  end, 20000, ("every write's callback and byte (seed %d)"):format(seed))
  lu.assertEquals(calls, expected, ("seed %d"):format(seed))
  -- the bytes, in order: write i was 65 + i % 26, repeated
  local all = table.concat(received)
  local pos = 1
  for i = 1, 120 do
    local c = string.char(65 + i % 26)
    local size = 0
    while all:sub(pos + size, pos + size) == c do size = size + 1 end
    lu.assertEquals(size, sizes_sent[i], ("write %d's bytes (seed %d)"):format(i, seed))
    pos = pos + size
  end
  lu.assertEquals(pos, #all + 1)
  client:read_stop()
  H.settle()
  collectgarbage()
  collectgarbage()
  lu.assertNil(next(weak), ("a write callback still anchored (seed %d)"):format(seed))
  lu.assertTrue(reading)
  H.close_all(server, client)
end

-- A step nested anywhere in a waiting write that a byte pipe takes a part
-- of at once (here from a call hook, stepping at the Nth call the write
-- makes; a finalizer can do the same): the rest, started before the call
-- makes its wait, may end in those steps, before the wait is there to be
-- told. On the main thread, in a coroutine and in a task, with the hook
-- only stepping, also starting another write, or raising after it:
-- every byte arrives once, in order (the other write's before or after
-- the first one's, never inside them); a write that returns returns its
-- count, and not its whole
-- timeout later (a step nested in the call of the wait's own step takes
-- the end that step would have waited for); one that raises has sent all
-- of its bytes, and the next wait of the same task or thread is not
-- ended by what the write's rest ended with.
function TestLifetime:test_a_step_nested_in_a_waiting_write()
  local data = ("0123456789abcdef"):rep(300000 / 16) -- more than the socket takes at once
  -- (a task cannot wait inside a pcall on Lua 5.1: called directly there,
  -- unless the hook raises)
  local no_pcall_in_tasks = _VERSION == "Lua 5.1" and not rawget(_G, "jit")
  local function direct(f, ...) return true, f(...) end
  for _, where in ipairs { "main", "coroutine", "task" } do
    for _, how in ipairs { "steps", "writes", "raises" } do
      local call = (where == "task" and no_pcall_in_tasks and how ~= "raises") and direct or pcall
      -- (call 1 is the pcall's own: a hook that raises there raises outside it)
      for n = how == "raises" and 2 or 1, 24 do
        local what = ("%s, a step nested at call %d that %s"):format(where, n, how)
        local server, client = H.pair({ pipe_mode = "byte" }, { pipe_mode = "byte" })
        local got = {}
        local function on_read(d) if d then got[#got + 1] = d end end -- (it calls nothing)
        server:read_start(on_read)
        local r, after, fired
        H.run_in(where, function()
          local calls, writing, me = 0, false, coroutine.running()
          debug.sethook(function()
            -- (the calls of the write only, not the reader's callback: a
            -- raise there would lose what it was given; and on this thread:
            -- LuaJIT's hook is every coroutine's)
            if not writing or coroutine.running() ~= me
                or debug.getinfo(2, "f").func == on_read then return end
            calls = calls + 1
            if calls == n then
              debug.sethook()
              fired = true
              for _ = 1, 10 do np.step(1) end
              if how == "writes" then client:write("X", function() end) end
              if how == "raises" then error("the hook raised", 0) end
            end
          end, "c")
          local t0 = np.now()
          writing = true
          r = { call(client.write, client, data, 5000) } -- (no call after it)
          writing = false
          r.took = np.now() - t0
          debug.sethook()
          -- (the client has nothing to read: this poll ends TIMEOUT)
          after = table.pack(pcall(client.read, client, nil, 0))
        end, 10000, what)
        local want = data .. ((how == "writes" and fired) and "X" or "")
        if r[1] then
          lu.assertEquals(r[2], #data, what)
          lu.assertTrue(r.took < 4000, what .. ": waited out its timeout")
        elseif how == "raises" then
          lu.assertTrue(r[2] == "the hook raised" or tostring(r[2]):find("yield", 1, true) ~= nil,
            what .. ": " .. tostring(r[2]))
        else
          lu.fail(what .. ": the write raised " .. tostring(r[2]))
        end
        -- (one that raised may have raised before it began: then nothing)
        local none_too = how == "raises" and not r[1]
        local since = np.now()
        while #table.concat(got) < #want and not (none_too and np.now() - since > 300) do
          np.step(10)
          lu.assertTrue(np.now() - since < 5000, what .. ": the bytes never came")
        end
        -- (compared here: luaunit's report of two long strings that differ
        -- takes minutes to make)
        local all = table.concat(got)
        -- (the other write comes first if the hook started it before the
        -- write had begun; never inside it)
        local x_first = how == "writes" and fired and all == "X" .. data
        lu.assertTrue(all == want or x_first or (none_too and all == ""),
          ("%s: %d bytes arrived, not the %d written in order"):format(what, #all, #want))
        if not (where == "task" and no_pcall_in_tasks) then
          lu.assertEquals({ after[1], after[2], after[4] }, { true, nil, "TIMEOUT" }, what)
        end
        H.close_all(server, client)
      end
    end
  end
  H.settle(200)
  lu.assertEquals(np.stats().outstanding, 0)
end

-- ready("both") with a step nested in its own calls (a call hook's; a
-- finalizer's does the same) that ends its readable wait before its
-- writable wait has started: it returns readable at once, and leaves no
-- wait of its own behind (on Linux the server's socket is full, so a
-- writable wait left behind would stay pending), so a writable() or
-- ready() made right after it is not refused as "already pending", and a
-- task is not woken in a later wait.
function TestLifetime:test_a_step_nested_in_ready_both()
  -- (a task cannot wait inside a pcall on Lua 5.1: called directly there)
  local no_pcall_in_tasks = _VERSION == "Lua 5.1" and not rawget(_G, "jit")
  local function direct(f, ...) return true, f(...) end
  for _, where in ipairs { "main", "coroutine", "task" } do
    local call = (where == "task" and no_pcall_in_tasks) and direct or pcall
    for n = 1, 60 do -- (its waits start at about the 40th call)
      local what = ("%s, a step nested at call %d"):format(where, n)
      local server, client = H.pair({ pipe_mode = "byte" }, { pipe_mode = "byte" })
      lu.assertTrue(H.fill(server) > 0, what)
      lu.assertEquals(client:try_write("x"), 1) -- (the readable half ends at once)
      local r, after, again, slept
      H.run_in(where, function()
        H.step_nested_at_call(n)
        local t0 = np.now()
        r = table.pack(call(server.ready, server, "both", 2000))
        r.took = np.now() - t0
        debug.sethook()
        after = table.pack(call(server.writable, server, 50))
        again = table.pack(call(server.ready, server, "both", 50))
        if where == "task" then -- (a wake left over would end this early)
          local before = np.now()
          np.sleep(100)
          slept = np.now() - before
        end
      end, 10000, what)
      lu.assertTrue(r[1], what .. ": " .. tostring(r[2]))
      -- (on Linux the full socket is not writable; on Windows a pipe is
      -- writable while no write waits for the system, so either may come)
      lu.assertEquals(type(r[2]), "table", what)
      lu.assertTrue(r[2].readable, what)
      lu.assertTrue(r.took < 1000, what .. ": waited for the writable half")
      lu.assertTrue(after[1], what .. ": " .. tostring(after[2]))
      lu.assertTrue(after[2] == true or after[4] == "TIMEOUT", what)
      lu.assertTrue(again[1], what .. ": " .. tostring(again[2]))
      lu.assertTrue(type(again[2]) == "table" and again[2].readable, what)
      if slept then lu.assertTrue(slept >= 90, what .. ": the sleep ended early") end
      H.close_all(server, client)
    end
  end
  H.settle(200)
  lu.assertEquals(np.stats().outstanding, 0)
end

-- The same nested step, with nothing to read and a timeout that may come
-- due in it (0, or a few milliseconds): ready("both") returns TIMEOUT in
-- about its time, not waiting on with its deadline spent before its waits
-- had started. And a writable wait the hook starts itself is not ready's
-- to call off: the readable half ending first leaves it alone.
function TestLifetime:test_a_step_nested_in_ready_both_leaves_what_is_not_its_own()
  local function full_pair()
    local server, client = H.pair({ pipe_mode = "byte" }, { pipe_mode = "byte" })
    H.fill(server)
    return server, client
  end
  -- (Linux's socket is full: not writable; on Windows a pipe is writable
  -- while no write waits for the system, so ready may say so there)
  local writable_at_once = PLATFORM == "windows"
  for _, where in ipairs { "main", "coroutine", "task" } do
    for _, ms in ipairs { 0, 3 } do
      for n = 1, 60 do
        local what = ("%s, timeout %d, a step nested at call %d"):format(where, ms, n)
        local server, client = full_pair()
        local r
        H.run_in(where, function()
          H.step_nested_at_call(n)
          local t0 = np.now()
          r = table.pack(server:ready("both", ms))
          r.took = np.now() - t0
          debug.sethook()
        end, 10000, what)
        if not (writable_at_once and r[1]) then
          lu.assertEquals({ r[1], r[3] }, { nil, "TIMEOUT" }, what)
        end
        lu.assertTrue(r.took < 1000, what .. ": waited past its timeout")
        H.close_all(server, client)
      end
    end
  end
  if writable_at_once then return end -- (the hook's writable wait ends at once)
  for n = 1, 60 do
    local what = ("a writable wait started at call %d"):format(n)
    local server, client = full_pair()
    lu.assertEquals(client:try_write("x"), 1) -- (the readable half ends first)
    local foreign
    H.step_nested_at_call(n, function()
      pcall(server.writable, server, function(...) foreign = table.pack(...) end)
    end)
    pcall(server.ready, server, "both", 200)
    debug.sethook()
    H.settle(20)
    lu.assertNil(foreign, what .. ": it ended, " .. tostring(foreign and foreign[3]))
    H.close_all(server, client)
  end
  H.settle(200)
  lu.assertEquals(np.stats().outstanding, 0)
end

-- A timed wait's deadline cancels that wait's operation and nothing else:
-- a step nested in the deadline's own calls (a call hook's here; a
-- finalizer's comes the same way) may end the wait meanwhile, and the
-- operation of the same kind started next on that pipe (by the task that
-- waited, or by the hook) is not the one whose time ran out. The hook
-- counts calls from the deadline on, on the thread that steps for the
-- wait: the waiting one for the main thread and a coroutine of the
-- script's own, the main thread for a task (its timer runs in the main
-- thread's step). A read (message mode: what each read gets is known), a
-- read_line (its pipe's reads go through the Lua layer, whose cancel
-- also stops the line), and on Linux a writable wait and ready("both")
-- (on Windows a pipe is writable while no write waits for the system:
-- they would not wait). A wait the hook starts is looked at once it has
-- ended; a task's next one waits as its first did.
function TestLifetime:test_a_step_nested_at_a_deadline_cancels_only_its_own()
  local MESSAGES = { pipe_mode = "message" }
  local function drain(pipe) repeat local d = pipe:try_read() until not d end
  local kinds = {
    read = {
      prepare = function() end,
      wait = function(server, _, ms) return server:read(nil, ms) end,
      -- (the hook's: the wait can end now, and what comes next is known)
      ending = function(_, client) client:write("x") end,
      foreign = function(server, _, cb) return pcall(server.read, server, cb) end,
      after = function(_, client) client:write("y") end,
      first = "x", -- (what the wait gets if it ends in the hook's step)
      next = function(r1) return r1[1] and "y" or "x" end,
    },
    -- a framing read: its pipe's reads divert to the Lua layer, and the
    -- deadline's cancel of the read slot stops the framing read too
    read_line = {
      prepare = function() end,
      wait = function(server, _, ms) return server:read_line(ms) end,
      ending = function(_, client) client:write("x\n") end,
      foreign = function(server, _, cb) return pcall(server.read, server, cb) end,
      after = function(_, client) client:write("y\n") end,
      first = "x",
      next = function(r1, foreign)
        if foreign then return r1[1] and "y\n" or "x\n" end
        return r1[1] and "y" or "x"
      end,
    },
    -- (the hook's own writable wait waits: the pipe is full again, until
    -- the hook's last act)
    writable = {
      prepare = function(_, client) H.fill(client) end,
      wait = function(_, client, ms) return client:writable(ms) end,
      ending = function(server) drain(server) end,
      foreign = function(_, client, cb)
        H.fill(client)
        return pcall(client.writable, client, cb)
      end,
      after = function(server) drain(server) end,
      first = true,
      next = function() return true end,
    },
    -- ready("both") with nothing to read and no room to write: its
    -- deadline calls off both halves, and the writable half may end in
    -- the hook's step (the read slot is the call's own until it returns)
    ready = {
      prepare = function(server) H.fill(server) end,
      wait = function(server, _, ms) return server:ready("both", ms) end,
      ending = function(_, client) drain(client) end,
      foreign = function(server, _, cb)
        H.fill(server)
        return pcall(server.writable, server, cb)
      end,
      after = function(_, client) drain(client) end,
      first = { writable = true },
      next = function(_, foreign) return foreign and true or { writable = true } end,
    },
  }
  for _, kind in ipairs { "read", "read_line", "writable", "ready" } do
    local k = kinds[kind]
    for _, where in ipairs { "main", "coroutine", "task" } do
      for n = 1, 40 do
        if kind ~= "read" and PLATFORM == "windows" then break end
        local what = ("%s, %s, a step nested at call %d after the deadline"):format(kind, where, n)
        local server, client = H.pair(MESSAGES, MESSAGES)
        k.prepare(server, client)
        local deadline, calls, foreign, foreign_started, hook_done
        local function hook()
          if not deadline or np.now() < deadline then return end
          calls = calls + 1
          if calls ~= n then return end
          debug.sethook()
          k.ending(server, client)
          for _ = 1, 5 do np.step(1) end
          -- (refused while the wait is still pending; a task's own next
          -- wait is the one to look at there)
          if where ~= "task" then
            foreign_started = k.foreign(server, client, function(...) foreign = table.pack(...) end)
          end
          k.after(server, client)
          hook_done = true
        end
        local r1, r2
        local function waits()
          calls, deadline = 0, np.now() + 5
          if where ~= "task" then debug.sethook(hook, "c") end
          r1 = table.pack(k.wait(server, client, 5))
          -- (a task's next wait matters only if the step was nested
          -- before this wait ended; LuaJIT's hook is global: a task's
          -- sethook takes the main thread's off too)
          if where ~= "task" or calls >= n then debug.sethook() end
          if where == "task" and calls >= n then
            -- (its next wait waits, as the first did, while the hook has
            -- yet to make its last act)
            if kind == "writable" and not hook_done then k.prepare(server, client) end
            r2 = table.pack(k.wait(server, client, 2000))
          end
        end
        if where == "task" then
          local ended = false
          np.spawn(function() waits(); ended = true end)
          debug.sethook(hook, "c")
          H.pump(function() return ended end, 5000, what)
          debug.sethook()
        else
          H.run_in(where, waits, 5000, what)
        end
        debug.sethook()
        if r1[1] == nil then
          lu.assertEquals(r1[3], "TIMEOUT", what)
        else
          lu.assertEquals(r1[1], k.first, what)
        end
        -- (a foreign wait started in the hook may end only later: it is
        -- looked at once it has)
        if r2 or foreign_started then
          H.pump(function() return r2 or foreign end, 3000, what)
          local second = r2 or foreign
          lu.assertEquals(second[1], k.next(r1, r2 == nil),
            what .. ": the next one ended " .. tostring(second[3]))
        end
        H.close_all(server, client)
      end
    end
  end
end

-- A waiting read on the main thread that an error unwinds (a callback of
-- its step raised) is handed to the Lua layer and cancelled; a step nested
-- in the calls that do it (a call hook's here) may end the read meanwhile,
-- and start a read of its own. Every message then arrives once, in order,
-- to the hook's read or to the reads after the unwind: the unwound read's
-- end is not lost, and its cancel does not hit the hook's read.
function TestLifetime:test_a_step_nested_in_an_unwinding_wait_loses_nothing()
  local MESSAGES = { pipe_mode = "message" }
  for _, kind in ipairs { "read", "readable" } do
    for n = 1, 40 do
      local what = ("%s, a step nested at call %d of the unwind"):format(kind, n)
      local server, client = H.pair(MESSAGES, MESSAGES)
      local raised, calls, fired, foreign, started = false, 0, false, nil, false
      debug.sethook(function()
        if not raised then return end
        calls = calls + 1
        if calls ~= n then return end
        debug.sethook()
        fired = true
        client:write("x")
        for _ = 1, 5 do np.step(1) end
        started = pcall(server.read, server, function(...) foreign = table.pack(...) end)
        client:write("y")
      end, "c")
      client:writable(function() raised = true; error("raised in the wait's step") end)
      local ok
      if kind == "read" then
        ok = pcall(server.read, server, nil, 3000)
      else
        ok = pcall(server.readable, server, 3000)
      end
      debug.sethook()
      lu.assertFalse(ok, what)
      local got = {}
      if started then
        H.pump(function() return foreign end, 3000, what)
        lu.assertNotNil(foreign[1], what .. ": the hook's read ended " .. tostring(foreign[3]))
        got[#got + 1] = foreign[1]
      end
      for _ = 1, 3 do
        local data = server:read(nil, fired and 300 or 20)
        if not data then break end
        got[#got + 1] = data
      end
      lu.assertEquals(got, fired and { "x", "y" } or {}, what)
      H.close_all(server, client)
    end
  end
end

-- The server instance (disconnected) takes its next client, from inside a
-- call hook: the client, and whether the instance saw it connect.
local function next_client(server, name, opts)
  local connected = false
  server:connect(function(ok) connected = ok end)
  local client = np.open(name, opts)
  for _ = 1, 20 do
    if connected then break end
    np.step(1)
  end
  return client, connected
end

-- A waiting read on the main thread holds the read slot until its
-- cancel has been made (at its deadline, or once an error has unwound
-- it), but a disconnect() in a step nested in the cancel's calls (a call
-- hook's here) lets the hold go, and the step may then connect the next
-- client and start a read for it. That read is the next client's: the
-- cancel must not hit it. For read, for read_line's first read (the
-- framing read's mark diverts the pipe's cancels), and for a read that an
-- error unwound; n goes on until the hook no longer fires inside the call.
function TestLifetime:test_a_disconnect_nested_at_a_main_read_deadline_leaves_the_next_client_alone()
  local MESSAGES = { pipe_mode = "message" }
  for _, how in ipairs { "read", "read_line", "unwound" } do
    local n, fired_inside = 0, 0
    repeat
      n = n + 1
      local what = ("%s, a disconnect nested at call %d of its cancel"):format(how, n)
      local server, client, name = H.pair(MESSAGES, MESSAGES)
      local armed, deadline, calls, inside, fired = false, nil, 0, false, false
      local foreign, client2 = nil, nil
      debug.sethook(function()
        if not armed or (deadline and np.now() < deadline) then return end
        calls = calls + 1
        if calls ~= n then return end
        debug.sethook()
        fired = inside
        server:disconnect()
        local connected
        client2, connected = next_client(server, name, MESSAGES)
        if connected then
          server:read(function(...) foreign = table.pack(...) end)
        end
      end, "c")
      local ok, data, err
      inside = true
      if how == "unwound" then
        client:writable(function() armed = true; error("raised in the wait's step") end)
        ok, data = pcall(server.read, server, nil, 3000)
      else
        armed, deadline = true, np.now() + 5
        if how == "read" then
          ok, data, _, err = pcall(server.read, server, nil, 5)
        else
          ok, data, _, err = pcall(server.read_line, server, 5)
        end
      end
      inside = false
      debug.sethook()
      if fired then fired_inside = fired_inside + 1 end
      if how == "unwound" then
        lu.assertFalse(ok, what)
      else
        lu.assertTrue(ok, what .. ": " .. tostring(data))
        lu.assertNil(data, what)
        lu.assertTrue(err == "TIMEOUT" or err == "NOT_CONNECTED", what .. ": " .. tostring(err))
      end
      if client2 then
        client2:write("new")
        H.pump(function() return foreign end, 3000, what)
        lu.assertEquals(foreign[1], "new", what .. ": the next client's read ended " .. tostring(foreign[3]))
        client2:close()
      end
      H.close_all(server, client)
    until not fired or n == 60
    -- (the hook fired inside the call: at the cancel's first calls at least)
    lu.assertTrue(fired_inside >= 2, how .. ": the hook fired inside the call " .. fired_inside .. " times")
  end
end

-- A read answered from bytes the Lua layer holds (read ahead: what
-- read_line left of a chunk, as a string; or, once a read_line has timed
-- out, what it had taken, kept as a rope that the read joins first) looks
-- at them, then takes what it takes. A step nested in the calls between (a
-- call hook's here) may start a read of its own that takes some or all of
-- them, and more bytes may come. The call must then take what is still
-- there, or wait for more: every byte reaches exactly one reader, each read
-- gets bytes as they were written, and a read returns data or an error
-- name (not a bare nil, not an error raised from inside the layer).
local NESTED_AHEAD_CALLS = {
  read = function(s) return s:read(nil, 300) end,
  ["read(3)"] = function(s) return s:read(3, 300) end,
  try_read = function(s) return s:try_read() end,
  read_into = function(s)
    local buf = np.buffer(16)
    local n, msg, name = s:read_into(buf, 300)
    if n then return buf:sub(1, n) end
    return nil, msg, name
  end,
  ["read_into(cb)"] = function(s)
    local buf, got = np.buffer(16), nil
    s:read_into(buf, function(n, msg, name) got = table.pack(n and buf:sub(1, n), msg, name) end)
    H.pump(function() return got end, 2000, "read_into's callback")
    return got[1], got[2], got[3]
  end,
  read_exact = function(s) return s:read_exact(3, 300) end,
  read_line = function(s)
    local line, msg, name = s:read_line(300)
    if line then return line .. "\n" end -- (the line's end counts as read)
    return nil, msg, name
  end,
}

local function byte_counts(pieces)
  local c = {}
  for _, piece in ipairs(pieces) do
    for ch in piece:gmatch(".") do c[ch] = (c[ch] or 0) + 1 end
  end
  return c
end

-- ahead: the bytes held (a line's end in them: a string; none: a rope);
-- the hook's read takes up to hook_n (nil: whatever comes), or if
-- take_all a try_read takes all there is.
local function nested_reads_of_read_ahead(ahead, kinds, hook_n, take_all)
  local LATER = "ijk\n"
  local STREAM = ahead .. LATER
  local rope = not ahead:find("\n", 1, true)
  for _, mode in ipairs { "byte", "message" } do
    local opts = { pipe_mode = mode }
    for _, kind in ipairs(kinds) do
      local n, fired_inside = 0, 0
      repeat
        n = n + 1
        local what = ("%s pipe, %s%s, a step nested at call %d"):format(mode, kind, rope and " of a rope" or "", n)
        local server, client = H.pair(opts, opts)
        client:write("L\n" .. ahead)
        lu.assertEquals(server:read_line(1000), "L", what)
        lu.assertEquals(np._read_ahead(server), #ahead, what)
        if rope then
          local _, _, why = server:read_line(0) -- (what it took is kept as a rope)
          lu.assertEquals(why, "TIMEOUT", what)
          lu.assertEquals(np._read_ahead(server), #ahead, what)
        end
        local inside, calls, fired, hooks = false, 0, false, {}
        local hook_read = nil
        debug.sethook(function()
          if not inside then return end
          calls = calls + 1
          if calls ~= n then return end
          debug.sethook()
          fired = true
          -- (refused while the call's own read holds the slot: fine)
          if take_all then
            local ok, d = pcall(server.try_read, server)
            if ok and d then hooks[#hooks + 1] = d end
          else
            hook_read = pcall(server.read, server, hook_n, function(d, _, name)
              hooks[#hooks + 1] = d or name
              hook_read = false
            end)
          end
          for _ = 1, 3 do np.step(1) end
          client:write(LATER)
        end, "c")
        inside = true
        local r = table.pack(pcall(NESTED_AHEAD_CALLS[kind], server))
        inside = false
        debug.sethook()
        if fired then fired_inside = fired_inside + 1 end
        lu.assertTrue(r[1], what .. ": raised " .. tostring(r[2]))
        lu.assertTrue(r[2] ~= nil or r[4] ~= nil, what .. ": a bare nil")
        local pieces = {}
        if r[2] then pieces[#pieces + 1] = r[2] end
        for _ = 1, 5 do np.step(2) end
        if hook_read then -- still waiting: nothing left for it
          server:cancel("read")
          H.pump(function() return not hook_read end, 2000, what)
        end
        for _, h in ipairs(hooks) do
          if #h > 0 and h ~= "CANCELLED" then pieces[#pieces + 1] = h end
        end
        while true do
          local d = server:try_read()
          if not d then break end
          pieces[#pieces + 1] = d
        end
        for _, piece in ipairs(pieces) do
          lu.assertNotNil(STREAM:find(piece, 1, true), what .. ": " .. piece .. " was not written so")
        end
        lu.assertEquals(byte_counts(pieces), byte_counts { fired and STREAM or ahead },
          what .. ": every byte once (got " .. table.concat(pieces, "|") .. ")")
        H.close_all(server, client)
      until not fired or n == 80
      lu.assertTrue(fired_inside >= 3, ("%s, %s: the hook fired inside the call %d times"):format(mode, kind,
        fired_inside))
    end
  end
end

function TestLifetime:test_a_step_nested_in_a_read_of_read_ahead_takes_each_byte_once()
  nested_reads_of_read_ahead("abcdefgh\n",
    { "read", "read(3)", "try_read", "read_into", "read_into(cb)", "read_exact", "read_line" }, 2)
end

function TestLifetime:test_a_step_nested_in_a_read_of_read_ahead_that_takes_it_all()
  nested_reads_of_read_ahead("abcdefgh\n",
    { "read", "read(3)", "try_read", "read_into", "read_into(cb)", "read_exact", "read_line" }, nil, true)
end

-- (read_line is left out of the rope's case: its rope goes on to
-- read_until, where a read started by a step nested between its take of
-- the rope and its own next read makes that read raise "already pending":
-- another matter, not yet mended)
function TestLifetime:test_a_step_nested_in_a_read_of_a_rope_takes_each_byte_once()
  nested_reads_of_read_ahead("abcdefgh",
    { "read", "read(3)", "try_read", "read_into", "read_into(cb)", "read_exact" }, nil)
end

-- disconnect() drops what the Lua layer holds of the connection that
-- ended (bytes read ahead, a framing read, calls queued, a read_start). A
-- step nested in the calls it makes once the C method has dropped the
-- client (a call hook's here) is already the next client's: what it
-- starts for that client (a read_line whose rest is read ahead, a
-- read_start given that rest first) must be left alone, and a read queued
-- behind one that an error unwound ends NOT_CONNECTED, not with the next
-- client's bytes.
function TestLifetime:test_a_step_nested_in_disconnect_leaves_the_next_client_alone()
  for _, how in ipairs { "read_line", "read_start", "queued" } do
    local n, fired_inside = 0, 0
    repeat
      n = n + 1
      local what = ("%s, a step nested at call %d after the client was dropped"):format(how, n)
      local server, client, name = H.pair()
      local inside, dropped, fired, line1, client2, got = false, 0, false, nil, nil, {}
      local queued
      if how == "queued" then -- a read queued behind one an error unwound
        np.spawn(function() np.sleep(20); error("raised on purpose") end)
        local ok, err = pcall(server.read, server, nil, 1000)
        lu.assertFalse(ok, what)
        lu.assertStrContains(tostring(err), "raised on purpose", false, what)
        server:read(function(...) queued = table.pack(...) end)
      end
      debug.sethook(function()
        if not inside or server:state() == "connected" then return end
        dropped = dropped + 1
        if dropped ~= n then return end
        debug.sethook()
        fired = true
        client2 = next_client(server, name)
        if how == "queued" then
          client2:write("for the next reader")
          for _ = 1, 10 do np.step(1) end
          return
        end
        client2:write("one\ntwo\n")
        line1 = server:read_line(1000) -- ("two\n" is read ahead)
        if how == "read_start" then
          server:read_start(function(d) got[#got + 1] = d end)
        end
      end, "c")
      inside = true
      lu.assertTrue(server:disconnect(), what)
      inside = false
      debug.sethook()
      if fired then
        fired_inside = fired_inside + 1
        if how == "queued" then
          H.pump(function() return queued end, 2000, what)
          lu.assertEquals(queued[3], "NOT_CONNECTED", what .. ": the queued read got " .. tostring(queued[1]))
          lu.assertEquals(server:read(nil, 1000), "for the next reader", what)
        elseif how == "read_line" then
          lu.assertEquals(line1, "one", what)
          local line2, _, err = server:read_line(300)
          lu.assertEquals(line2, "two", what .. ": the rest of the next client's bytes: " .. tostring(err))
        else
          lu.assertEquals(line1, "one", what)
          client2:write("three\n")
          H.pump(function() return #table.concat(got) >= 10 end, 2000,
            what .. ": the read_start got " .. table.concat(got, "|"))
          lu.assertEquals(table.concat(got), "two\nthree\n", what)
          server:read_stop()
        end
        client2:close()
      end
      H.close_all(server, client)
    until not fired or n == 60
    lu.assertTrue(fired_inside >= 2, how .. ": the hook fired inside disconnect() " .. fired_inside .. " times")
  end
end

-- A nested step run before an outer step's first callback (here from a
-- call hook; a finalizer does the same) whose callback raises leaves its
-- pipe held: the outer step must let it go, not overwrite it.
function TestLifetime:test_pipe_held_by_a_nested_step_is_let_go()
  local weak = setmetatable({}, { __mode = "v" })
  local bc, cc
  do
    local bs, cs
    bs, bc = H.pair()
    cs, cc = H.pair()
    weak.b = bs
    bs:read(function() error("raised in a nested step") end)
    cs:read(function() end)
    weak.c = cs
  end
  lu.assertEquals(bc:try_write("b"), 1)
  lu.assertEquals(cc:try_write("c"), 1)
  local calls, nested = 0, nil
  debug.sethook(function()
    calls = calls + 1
    if calls == 3 then -- pcall, step, then step's first internal call
      debug.sethook()
      nested = table.pack(pcall(np.step, 0))
    end
  end, "c")
  pcall(np.step, 1000)
  debug.sethook()
  lu.assertNotNil(nested)
  for _ = 1, 3 do pcall(np.step, 10) end
  collectgarbage()
  collectgarbage()
  local data, _, errname = bc:read(nil, 2000)
  lu.assertNil(data)
  lu.assertEquals(errname, "EOF")
  H.close_all(bc, cc)
end

-- A pipe whose callback raised stays held until the next step, so that a
-- step need not catch every callback's error; closing it lets it go at
-- once: closed, with nothing in flight, and no step after, it is
-- collected. (The model found it so: its last check collects without a
-- step.) Both forms: a read(cb), and a read_start run. The other order is
-- the next test's.
function TestLifetime:test_a_pipe_closed_after_its_callback_raised_is_collected_without_a_step()
  for _, form in ipairs { "read", "read_start" } do
    local weak = setmetatable({}, { __mode = "v" })
    local client, raised
    do
      local server
      server, client = H.pair()
      weak.server = server
      local function cb(data)
        if data then raised = true; error("raised on purpose") end
      end
      if form == "read" then server:read(cb) else server:read_start(cb) end
    end
    lu.assertEquals(client:try_write("x"), 1)
    local deadline = np.now() + 5000
    while not raised and np.now() < deadline do
      local ok, err = pcall(np.step, 10)
      if not ok then lu.assertStrContains(tostring(err), "raised on purpose") end
    end
    lu.assertTrue(raised, form)
    if form == "read_start" then weak.server:read_stop() end
    weak.server:close()
    -- (no step: read_stop's cancelled read would come through one)
    if form == "read" then
      collectgarbage()
      collectgarbage()
      lu.assertNil(weak.server, "a closed pipe held since its read callback raised")
    end
    H.close_all(client)
    collectgarbage()
    collectgarbage()
    lu.assertNil(weak.server, form)
  end
end

-- ... and a pipe closed first, whose callbacks then raise as their
-- operations end CLOSED (an assert on each result, the usual way): its
-- last completion lets it go before its callback runs, so the raise
-- leaves nothing held. read, write and connect callbacks; and a read
-- callback that closes its pipe while a write of it is pending, whose
-- CLOSED callback raises later in the same step.
function TestLifetime:test_a_pipe_whose_callbacks_raise_after_its_close_is_collected_without_a_step()
  for _, form in ipairs { "read", "write", "connect", "close_in_read" } do
    local weak = setmetatable({}, { __mode = "v" })
    local client
    do
      local server
      if form == "connect" then
        local name = H.name("raise-connect")
        server = assert(np.create(name))
        server:connect(function(ok, err) assert(ok, err) end)
      else
        server, client = H.pair()
      end
      weak.server = server
      if form == "read" then
        server:read(function(data, err) assert(data, err) end)
      elseif form == "write" then
        -- a write that cannot finish at once: the client never reads
        server:write(("w"):rep(4 * 1024 * 1024), function(n, err) assert(n, err) end)
      elseif form == "close_in_read" then
        server:write(("w"):rep(4 * 1024 * 1024), function(n, err) assert(n, err) end)
        server:read(function() server:close() end)
        lu.assertEquals(client:try_write("x"), 1)
      end
      if form ~= "close_in_read" then server:close() end
    end
    local raised = false
    local deadline = np.now() + 5000
    while np.pending() > 0 and np.now() < deadline do
      local ok, err = pcall(np.step, 10)
      if not ok then
        lu.assertStrContains(tostring(err), "closed", false, form)
        raised = true
      end
    end
    lu.assertTrue(raised, form .. ": a callback raised")
    collectgarbage()
    collectgarbage()
    lu.assertNil(weak.server, form .. ": closed, nothing in flight, no step since the raise")
    if client then H.close_all(client) end
  end
end

function TestLifetime:test_close_inside_own_callback()
  local server, client = H.pair()
  local results = {}
  server:read(function(data, _, name)
    results[#results + 1] = data or name
    server:close()
  end)
  client:write("x", function() end)
  H.pump(function() return #results == 1 end)
  lu.assertEquals(results[1], "x")
  lu.assertEquals(server:state(), "closed")
  H.close_all(client)
end

function TestLifetime:test_close_with_large_write_in_flight()
  local server, client = H.pair()
  local cb, res = H.capture()
  -- Far more than the pipe buffers: the write stays with the kernel.
  client:write(("z"):rep(4 * 1024 * 1024), cb)
  np.step(0)
  lu.assertFalse(res.done)
  client:close()
  collectgarbage()
  H.pump(function() return res.done end)
  lu.assertNil(res[1])
  lu.assertEquals(res[3], "CLOSED")
  H.close_all(server)
end

function TestLifetime:test_gc_with_operations_in_flight_then_close_state()
  -- A child Lua state: connect, reads and a large write pending when the
  -- state closes. It must cancel, drain and exit cleanly.
  local code = [[
    local np = require "namedpipe"
    local name = ...
    local idle = assert(np.create(name .. "-idle"))
    idle:connect(function() end)
    local s = assert(np.create(name))
    local c = assert(np.open(name))
    assert(s:connect(2000))
    -- nobody writes to s and nobody reads from c: both stay pending
    s:read(function() end)
    s:write(("w"):rep(8 * 1024 * 1024), function() end)
    np.step(0)
    s, c, idle = nil, nil, nil
    collectgarbage()
    io.write("pending=", np.pending(), "\n")
    os.exit(0, true)
  ]]
  local ok, out = H.run_lua(code, H.name("child"))
  local pending = tonumber(out:match("pending=(%d+)"))
  lu.assertNotNil(pending, "child printed: " .. out)
  -- connect, read and write were all still in flight when the state closed
  lu.assertTrue(pending >= 3, "pending " .. tostring(pending))
  lu.assertTrue(ok, "child state did not exit cleanly: " .. out)
end

function TestLifetime:test_foreign_client_cmd_echo()
  if PLATFORM ~= "windows" then lu.skip("cmd.exe is the Windows foreign client; Linux uses socat (test_interop)") end
  local name = H.name("cmd")
  local server = assert(np.create(name))
  local ccb, cres = H.capture()
  server:connect(ccb)
  local ok = H.execute(('cmd /c "echo hi from cmd> %s"'):format(name))
  lu.assertTrue(ok)
  H.pump(function() return cres.done end)
  lu.assertEquals(cres[1], true)
  local data = ""
  while true do
    local d, _, errname = server:read(nil, 2000)
    if not d then
      lu.assertEquals(errname, "EOF")
      break
    end
    data = data .. d
  end
  lu.assertEquals(data, "hi from cmd\r\n")
  H.close_all(server)
end

-- A long message (or a long read) needs a read buffer as large: it goes
-- once its bytes have been handed out, whichever read took them, so a
-- pipe does not keep the largest message it ever read (np.stats()
-- counts the read buffers held, the loop's spare ones included).
function TestLifetime:test_a_long_read_does_not_keep_its_buffer()
  local big = ("x"):rep(3 * 1024 * 1024)
  local held = {}
  for _, mode in ipairs { "byte", "message" } do
    for _, how in ipairs { "read", "try_read", "read_start" } do
      local opts = { pipe_mode = mode, out_buffer_size = 4194304, in_buffer_size = 4194304 }
      local server, client = H.pair(opts, { pipe_mode = mode })
      local wrote
      client:write(big, function(n, err) wrote = n or err end)
      local got = 0
      if how == "read_start" then
        server:read_start(function(d)
          got = got + #d
          if got >= #big then server:read_stop() end
        end)
        H.pump(function() return got >= #big end, 10000, "the long read")
      else
        H.pump(function()
          local d, msg, name = server[how](server, #big, how == "read" and 5000 or nil)
          if d then
            got = got + #d
          elseif name ~= "WOULDBLOCK" then
            error(("%s %s: %s"):format(mode, how, tostring(msg)))
          end
          return got >= #big
        end, 10000, "the long read")
      end
      H.pump(function() return wrote ~= nil end, 10000, "the write")
      lu.assertEquals(wrote, #big, mode .. " " .. how)
      held[mode .. " " .. how] = np.stats().read_buffers <= 2 * 1024 * 1024
      H.close_all(server, client)
    end
  end
  lu.assertEquals(held, { ["byte read"] = true, ["byte try_read"] = true, ["byte read_start"] = true,
    ["message read"] = true, ["message try_read"] = true, ["message read_start"] = true })
end

-- An idle pipe holds no read buffer, whether or not it has read before
-- (or tried to, with try_read):
-- a read's buffer goes back to the loop (a few spares are kept) once its
-- bytes are handed out, and the next read takes one when its bytes come.
function TestLifetime:test_idle_pipes_hold_no_read_buffers_after_reading()
  local pairs_, spares = {}, 8 * 65536 + 1048576 -- (what the loop may keep)
  for i = 1, 40 do
    local server, client = H.pair()
    assert(client:write("ping " .. i, 5000))
    lu.assertEquals(server:read(nil, 5000), "ping " .. i)
    assert(server:write("pong " .. i, 5000))
    lu.assertEquals(client:read(nil, 5000), "pong " .. i)
    local none, _, name = server:try_read() -- (nothing there: its buffer goes back too)
    lu.assertNil(none)
    lu.assertEquals(name, "WOULDBLOCK")
    pairs_[i] = { server, client }
  end
  local held = np.stats().read_buffers
  lu.assertTrue(held <= spares, ("80 idle ends hold %d bytes of read buffers"):format(held))
  for _, p in ipairs(pairs_) do H.close_all(p[1], p[2]) end
end
