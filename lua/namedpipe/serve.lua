--[[
namedpipe.serve - the server loop from Tokio's docs, done once:

  * `listeners` instances (default 4, as libuv keeps) wait for clients at
    all times, as far as max_instances allows: when one connects, its
    replacement is created before the connected one is handed to the
    handler;
  * bounded by max_instances: when every instance is taken, the next is
    created when a handler finishes, in the same call that closes that
    handler's pipe (nothing runs between the close and the create, so no
    client of this process finds the name missing);
  * each handler runs in its own task; when it returns (or fails) its pipe
    is closed — a close keeps what the handler wrote readable by the client;
  * handle:close() stops listening; running handlers finish on their own.

The listening instances wait with the callback form of connect(): no task
sits between a client connecting and its replacement being created.
]]
local math_type = require("namedpipe.compat").math_type

local S = {}

-- A client that found every instance busy retries; so does serve when an
-- instance it needs is refused as busy by instances not its own (another
-- process's, or one Windows still counts after its close): a back-off like
-- asyncio's, 1 ms doubling to 50 ms, each wait drawn below it (task.jitter).
local RETRY_FIRST, RETRY_MAX = 1, 50

-- Clients that come together find one listening instance busy but for the
-- first: each of the others retries after a while (np.open's back-off).
-- With 4 listening, 50 clients opening at once all get in within about
-- 10 ms; with 1, within 60-90 ms. Idle, an instance is one pending
-- connect.
local DEFAULT_LISTENERS = 4

function S.install(M)
  local task = require "namedpipe.task"

  local function check_listeners(opts)
    local n = opts and opts.listeners
    local max = opts and opts.max_instances
    if n == nil then
      -- (a max_instances out of range is create's to refuse)
      if math_type(max) == "integer" and max >= 1 and max < DEFAULT_LISTENERS then return max end
      return DEFAULT_LISTENERS
    end
    if math_type(n) ~= "integer" or n < 1 then
      error(("bad argument #2 to 'serve' (option 'listeners': integer >= 1 expected, got %s)")
        :format(math_type(n) or type(n)), 3)
    end
    if math_type(max) == "integer" and max >= 1 and max <= 254 and n > max then
      error(("bad argument #2 to 'serve' (option 'listeners': %d is more than max_instances, %d)")
        :format(n, max), 3)
    end
    -- (unlimited instances: as many as a limited name may have; a huge
    -- number made instances until memory ran out)
    if n > 254 then
      error(("bad argument #2 to 'serve' (option 'listeners': 1 to 254 expected, got %d)")
        :format(n), 3)
    end
    return n
  end

  local AS_SERVE = { serve = M.create }

  return function(name, opts, handler)
    if type(handler) ~= "function" then
      error("bad argument #3 to 'serve' (function expected, got " .. type(handler) .. ")", 2)
    end
    if opts ~= nil and type(opts) ~= "table" then
      error("bad argument #2 to 'serve' (table expected, got " .. type(opts) .. ")", 2)
    end
    if opts ~= nil and getmetatable(opts) ~= nil then -- (as create and open refuse it)
      error("bad argument #2 to 'serve' (a table without a metatable expected (options are read "
        .. "as they are, not through one))", 2)
    end
    local listeners = check_listeners(opts)
    local max_instances = opts and math_type(opts.max_instances) == "integer"
      and opts.max_instances or math.huge
    -- create() takes the options, less ours; only the very first instance
    -- may claim the name (first_pipe_instance).
    local first, later = {}, {}
    for k, v in pairs(opts or {}) do
      if k ~= "listeners" then
        first[k] = v
        if k ~= "first_pipe_instance" then later[k] = v end
      end
    end

    local handle = { active = 0, accepted = 0, closed = false }
    local idle, n_idle = {}, 0 -- instances waiting for a client
    local retry_timer, retry_delay = nil, RETRY_FIRST
    local fill

    local function on_connect(p, ok)
      idle[p] = nil
      n_idle = n_idle - 1
      if handle.closed then
        p:close()
        return
      end
      if not ok then
        -- a client that came and went, or a failed instance: replace it
        p:close()
        return fill()
      end
      handle.active = handle.active + 1
      handle.accepted = handle.accepted + 1
      -- The handler is the task's body itself: a task suspends inside it,
      -- which no pcall between them would allow on Lua 5.1. When it ends,
      -- however it ends, its pipe is closed (and an error surfaces from
      -- step() as any task's does).
      task.spawn_finally(function()
        p:close()
        handle.active = handle.active - 1
        fill() -- with no yield since the close: the name never vanishes
      end, handler, p)
      -- The replacement before the handler runs (a task runs from the
      -- next step). Spawned first, the handler serves its client (and
      -- closes its pipe) even when this create fails and raises.
      fill()
    end

    -- Create one listening instance: the pipe, or nil, msg, name, code.
    -- The first is created by serve's name (create's checks name the
    -- function as its call site does): an argument error is serve's.
    local function listen(opts_, first_one)
      local p, msg, ename, code
      if first_one then
        p, msg, ename, code = AS_SERVE.serve(name, opts_)
      else
        p, msg, ename, code = M.create(name, opts_)
      end
      if not p then return nil, msg, ename, code end
      idle[p] = true
      n_idle = n_idle + 1
      p:connect(function(ok) on_connect(p, ok) end)
      return p
    end

    -- Bring the listening instances up to `listeners`, as far as
    -- max_instances lets it; true, or nil, msg, name, code. Refused as
    -- busy while our own instances are all there may be, it waits for a
    -- handler to finish (which calls this again); refused otherwise, it
    -- tries again later.
    local function top_up()
      while not handle.closed and n_idle < listeners do
        local p, msg, ename, code = listen(later)
        if not p then
          if ename ~= "PIPE_BUSY" then return nil, msg, ename, code end
          if n_idle == 0 and handle.active < max_instances and not retry_timer then
            retry_timer = task.add_timer(task.jitter(retry_delay), function()
              retry_timer = nil
              retry_delay = math.min(retry_delay * 2, RETRY_MAX)
              fill()
            end)
          end
          return true
        end
        retry_delay = RETRY_FIRST
      end
      return true
    end

    function fill()
      local ok, msg, ename, code = top_up()
      if not ok then
        error(("serve: cannot create the next instance of %s: %s (%s, %s)")
          :format(name, msg, ename, tostring(code)), 0)
      end
    end

    --- Stop accepting: the listening instances are closed; handlers go on.
    function handle.close()
      if handle.closed then return end
      handle.closed = true
      if retry_timer then
        task.cancel_timer(retry_timer)
        retry_timer = nil
      end
      for l in pairs(idle) do l:close() end
    end

    -- The first instance now, so a bad name or option raises here and an
    -- OS refusal (NOT_FOUND, ACCESS_DENIED...) is returned.
    local ok, p, msg, ename, code = pcall(listen, first, true)
    if not ok then error(p, 0) end -- (its position is serve's caller's)
    if not p then return nil, msg, ename, code end
    ok, msg, ename, code = top_up()
    if not ok then
      handle.close()
      return nil, msg, ename, code
    end

    return handle
  end
end

return S
