--[[
namedpipe.framing - text lines and length-prefixed frames over a pipe, so
a protocol is one line of code. Bytes read past the end of a line or frame
are kept (np._readahead) and handed out first by every later read.
]]
local F = {}

function F.install(M, methods)
  local readahead, set_readahead, now = M._readahead, M._set_readahead, M.now

  local function deadline_left(deadline)
    if not deadline then return nil end
    local left = deadline - now()
    return left > 0 and left or 0
  end

  local function check_pipe(self, fname)
    if type(self) ~= "userdata" or getmetatable(self) == nil
        or getmetatable(self).__index ~= methods then
      error(("bad argument #1 to '%s' (namedpipe.pipe expected, got %s)")
        :format(fname, type(self)), 3)
    end
  end

  -- the same check as every other waiting call (called from each method
  -- itself, so the error points at the caller)
  local check_timeout = M._check_timeout

  -- Read until `enough(buf)` says where to cut; keeps the rest.
  local function read_until(self, deadline, enough)
    local buf = readahead[self] or ""
    set_readahead(self, nil)
    while true do
      local cut, skip = enough(buf)
      if cut then
        if skip < #buf then set_readahead(self, buf:sub(skip + 1)) end
        return buf:sub(1, cut)
      end
      local data, msg, name, code = M._await(self, "read", function(cb) M._raw.read(self, nil, cb) end,
        deadline_left(deadline))
      if not data then
        if #buf > 0 then set_readahead(self, buf) end
        return nil, msg, name, code
      end
      buf = buf .. data
    end
  end

  --- pipe:read_line([timeout]): the next line without its "\n" (or
  --- "\r\n"); at the end of the stream a last unterminated line is
  --- returned, then nil, msg, "EOF".
  function methods.read_line(self, timeout)
    check_pipe(self, "read_line")
    local deadline = check_timeout(timeout, 2, "read_line") and now() + timeout
    local line, msg, name, code = read_until(self, deadline, function(buf)
      local i = buf:find("\n", 1, true)
      if i then return i - 1, i end
    end)
    if line then return (line:gsub("\r$", "")) end
    if name == "EOF" and readahead[self] then
      local last = readahead[self]
      set_readahead(self, nil)
      return last
    end
    return nil, msg, name, code
  end

  --- for line in pipe:lines() do ... end: ends at the end of the stream;
  --- any other failure raises.
  function methods.lines(self)
    check_pipe(self, "lines")
    return function()
      local line, msg, name = methods.read_line(self)
      if line then return line end
      if name == "EOF" or name == "CLOSED" then return nil end
      error(msg .. " (" .. tostring(name) .. ")", 2)
    end
  end

  --- pipe:read_exact(n [, timeout]): exactly n bytes, or nil, msg, name
  --- (what arrived stays readable).
  function methods.read_exact(self, n, timeout)
    check_pipe(self, "read_exact")
    if math.type(n) ~= "integer" or n < 0 then
      error("bad argument #2 to 'read_exact' (byte count >= 0 expected)", 2)
    end
    local deadline = check_timeout(timeout, 3, "read_exact") and now() + timeout
    return read_until(self, deadline, function(buf)
      if #buf >= n then return n, n end
    end)
  end

  --- pipe:write_frame(data [, cb | timeout]): a 4-byte big-endian length,
  --- then data.
  function methods.write_frame(self, data, a, ...)
    check_pipe(self, "write_frame")
    if type(data) ~= "string" then
      error("bad argument #2 to 'write_frame' (string expected, got " .. type(data) .. ")", 2)
    end
    for i = 1, select("#", ...) do -- as the C methods refuse them
      if (select(i, ...)) ~= nil then
        error(("bad argument #%d to 'write_frame' (nothing expected after the callback or timeout: give one of them, last)")
          :format(3 + i), 2)
      end
    end
    return methods.write(self, string.pack(">s4", data), a)
  end

  --- pipe:read_frame([timeout]): the next frame written by write_frame.
  function methods.read_frame(self, timeout)
    check_pipe(self, "read_frame")
    local deadline = check_timeout(timeout, 2, "read_frame") and now() + timeout
    local head, msg, name, code = read_until(self, deadline, function(buf)
      if #buf >= 4 then
        local len = string.unpack(">I4", buf)
        if #buf >= 4 + len then return 4 + len, 4 + len end
      end
    end)
    if not head then return nil, msg, name, code end
    return head:sub(5)
  end
end

return F
