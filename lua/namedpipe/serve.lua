--[[
namedpipe.serve - the server loop from Tokio's docs, done once:

  * an instance is always listening: the next one is created BEFORE a
    connected one is handed to the handler, so a client never finds the
    name missing between instances (HAZARDS.md 10);
  * bounded by max_instances: when every instance is taken, the loop waits
    for a handler to finish before creating the next;
  * each handler runs in its own task; when it returns (or fails) its pipe
    is closed — a close keeps what the handler wrote readable by the client;
  * handle:close() stops listening; running handlers finish on their own.
]]
local S = {}

function S.install(M)
  local task = require "namedpipe.task"

  return function(name, opts, handler)
    if type(handler) ~= "function" then
      error("bad argument #3 to 'serve' (function expected, got " .. type(handler) .. ")", 2)
    end
    if opts ~= nil and type(opts) ~= "table" then
      error("bad argument #2 to 'serve' (table expected, got " .. type(opts) .. ")", 2)
    end
    -- The first instance is created now, so a bad name or option raises
    -- here and an OS refusal (NOT_FOUND, ACCESS_DENIED...) is returned.
    local first, msg, errname, code = M.create(name, opts)
    if not first then return nil, msg, errname, code end
    -- Only the very first instance may claim the name.
    local later = {}
    for k, v in pairs(opts or {}) do
      if k ~= "first_pipe_instance" then later[k] = v end
    end

    local handle = { active = 0, accepted = 0, closed = false }
    local listening = first
    local slot_waiter

    local function run_handler(pipe)
      local ok, err = xpcall(handler, debug.traceback, pipe)
      pipe:close()
      handle.active = handle.active - 1
      if slot_waiter then
        local w = slot_waiter
        slot_waiter = nil
        task.soon(w)
      end
      if not ok then error(err, 0) end
    end

    -- Create the next instance; while max_instances are all taken, wait for
    -- a handler to finish.
    local function next_instance()
      while not handle.closed do
        local p, m, ename, c = M.create(name, later)
        if p then return p end
        if ename ~= "PIPE_BUSY" then
          error(("serve: cannot create the next instance of %s: %s (%s, %s)")
            :format(name, m, ename, tostring(c)), 0)
        end
        slot_waiter = task.waiter()
        task.suspend()
      end
    end

    task.spawn(function()
      while not handle.closed and listening do
        local ok, _, ename = listening:connect()
        if handle.closed then break end
        local conn = listening
        listening = nil
        if ok then
          handle.active = handle.active + 1
          handle.accepted = handle.accepted + 1
          -- The next instance first, then the handler; if max_instances are
          -- all taken, the handler must start before we wait for a slot.
          listening = M.create(name, later)
          task.spawn(run_handler, conn)
          if not listening then listening = next_instance() end
        else
          -- A client that came and went, or a failed instance: replace it.
          conn:close()
          listening = next_instance()
          if ename == "CLOSED" and handle.closed then break end
        end
      end
      if listening then listening:close() end
    end)

    --- Stop accepting: the listening instance is closed; handlers go on.
    function handle.close()
      if handle.closed then return end
      handle.closed = true
      if listening then listening:close() end
      if slot_waiter then
        local w = slot_waiter
        slot_waiter = nil
        task.soon(w)
      end
    end

    return handle
  end
end

return S
