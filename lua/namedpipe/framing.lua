--[[
namedpipe.framing - text lines and length-prefixed frames over a pipe, so
a protocol is one line of code. Bytes read past the end of a line or frame
are kept (the read-ahead of namedpipe.lua) and handed out first by every
later read.
]]
local compat = require "namedpipe.compat"
local math_type, u32be, from_u32be = compat.math_type, compat.u32be, compat.from_u32be

local F = {}

-- P: namedpipe.lua's private parts (its read-ahead, sessions and waits).
function F.install(M, methods, P)
  local readahead, set_readahead, now, session = P.readahead, P.set_readahead, M.now, P.session
  local readahead_view, readahead_len, readahead_rest, readahead_cut, take_rope =
    P.readahead_view, P.readahead_len, P.readahead_rest, P.readahead_cut, P.take_rope
  local take_lens, lens_push, lens_drop, lens_append, ahead_lens =
    P.take_lens, P.lens_push, P.lens_drop, P.lens_append, P.ahead_lens
  local check_not_reading = P.check_not_reading
  local framing_reads, sync_divert = P.framing_reads, P.sync_divert
  local holds_nothing, held_read, prepend_readahead = P.holds_nothing, P.raw.held_read, P.prepend_readahead
  local set_divert = P.raw.set_readahead
  local task_current = require("namedpipe.task").current
  local probe_first = _VERSION == "Lua 5.1" and rawget(_G, "jit") == nil

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
    if self:state() == "closed" then -- as the C methods refuse it
      error(("bad argument #1 to '%s' (pipe is closed)"):format(fname), 3)
    end
  end

  -- the same check as every other waiting call (called from each method
  -- itself, so the error points at the caller)
  local check_timeout = P.check_timeout

  -- Anything but nil after the last argument is refused, as the C methods
  -- refuse it: a callback given after the timeout would never run. first:
  -- the position of the first of ... (the rest of the call's arguments).
  local refuse_after = P.refuse_after
  local AFTER_LAST = "nothing expected after the callback or timeout: give one of them, last"

  local concat = table.concat

  -- Read until scan(piece, before, pieces) says where to cut. Each piece
  -- (the read-ahead, then each read's bytes) is shown once, with the
  -- number of bytes before it; scan returns cut, skip (positions in the
  -- whole) once it can tell: bytes 1..cut are the result, those after skip
  -- are kept. Or false, msg, name: refused, everything kept. The pieces
  -- are joined once, at the end: a long line in many reads costs its
  -- length, not its length times the reads. Should the read time out (or
  -- fail), they are kept as they are (a rope, namedpipe.lua), with how
  -- far this scan (kind: the scan and what it depends on) looked: the
  -- next read of the same kind goes on from there, so polling with a
  -- short timeout while a long record arrives joins and looks at each
  -- byte once. Kept only while the client they came from is connected:
  -- once the server has disconnected it they are dropped, and a result
  -- not complete by then is NOT_CONNECTED.
  local STOPPED = { CANCELLED = "operation cancelled", TIMEOUT = "timed out",
    NOT_CONNECTED = "disconnected while reading (what had come is dropped)" }

  -- The scan goes on from piece i (before: the bytes of the pieces before
  -- it), reading more until it can tell; connection: the pipe's session
  -- when the framing read began; lens: the pieces' messages (below).
  local function read_on(self, deadline, kind, scan, rec, connection, pieces, before, i, lens)
    pieces.lens = lens -- (for an abandoned read's bytes to come back as such)
    -- what is left after byte `skip`: read ahead again, before anything
    -- read ahead meanwhile (an abandoned read's)
    local function keep(s, skip)
      if session(self) ~= connection then return end
      if lens then lens_drop(lens, skip) end
      P.prepend_readahead(self, s, lens) -- (nothing, unless s or an empty message)
    end
    -- unfinished: the pieces stay as they are, with where the scan got
    local function keep_pieces()
      if session(self) ~= connection then return end
      local bytes = before -- (every piece has been looked at)
      local rest = readahead_rest(self) -- (an abandoned read's, meanwhile)
      local rest_lens = ahead_lens[self]
      pieces.kind, pieces.scanned, pieces.before, pieces.lens = kind, pieces.n, bytes, nil
      if rest then
        pieces.n = pieces.n + 1
        pieces[pieces.n] = rest
        bytes = bytes + #rest
        if lens and rest_lens then lens_append(lens, rest_lens) end
      end
      pieces.bytes = bytes
      -- (empty messages alone are kept too: each is a message to read)
      if bytes > 0 or lens and lens.h <= lens.n then set_readahead(self, pieces, lens) end
    end
    while true do
      local cut, skip, name
      if i <= pieces.n then
        local piece = pieces[i]
        cut, skip, name = scan(piece, before, pieces, rec)
        if cut == nil then
          before = before + #piece
          i = i + 1
        end
      end
      if cut then
        local all = pieces.n == 1 and pieces[1] or concat(pieces, "", 1, pieces.n)
        keep(all:sub(skip + 1), skip)
        return all:sub(1, cut)
      elseif cut == false then
        keep(concat(pieces, "", 1, pieces.n), 0)
        return nil, skip, name, 0
      elseif i > pieces.n then
        -- Stopped by whatever ran while the last read's result was on its
        -- way, the first stop first: a disconnect (the bytes read before
        -- it, seen after it, are dropped), a cancel or a timeout (they are
        -- kept), or a close (what every pending read gets from it).
        local stop = rec.stop or session(self) ~= connection and "NOT_CONNECTED"
        if stop == "NOT_CONNECTED" then
          return nil, STOPPED[stop], stop, 0
        elseif stop then
          keep_pieces() -- (not after a disconnect: they were the last client's)
          return nil, STOPPED[stop], stop, 0
        elseif self:state() == "closed" then
          return nil, "pipe closed", "CLOSED", 0
        end
        -- pieces: taken from the pipe, read-ahead again should this unwind
        local left = deadline_left(deadline)
        local w, cb = P.wait_begin(self, "read", nil, pieces, left)
        P.raw.read(self, nil, cb)
        local data, msg, ename, code = P.wait_end(w, self, left)
        if not data then
          keep_pieces()
          return nil, msg, ename, code
        end
        pieces.n = pieces.n + 1
        pieces[pieces.n] = data
        if lens then lens_push(lens, #data) end
      end
    end
  end

  local function read_until_in(self, timeout, kind, scan, rec)
    -- (Lua 5.1: a task that cannot yield here raises at its first wait's
    -- probe: before anything held is taken, not after)
    if probe_first then task_current() end
    -- an abandoned read of this pipe first: its bytes come before new ones
    -- (a stop while waiting for it, then a close or the timeout: the
    -- first says why)
    local ok, t = P.settle(self, "read", timeout)
    if not ok then
      if rec.stop then return nil, STOPPED[rec.stop], rec.stop, 0 end
      return P.unsettled(t)
    end
    local deadline = t and now() + t
    local connection = session(self)
    local pieces, before, from = take_rope(self), 0, 1
    if pieces then
      if pieces.kind == kind then from, before = pieces.scanned + 1, pieces.before end
      pieces.kind, pieces.scanned, pieces.before, pieces.bytes = nil, nil, nil, nil
    else
      pieces = { readahead_rest(self) or "" }
      pieces.n = 1
    end
    -- on a message pipe, where its messages begin and end: what this read
    -- leaves is read as the messages it came in (nil on a byte pipe)
    local lens = take_lens(self)
    set_readahead(self, nil)
    return read_on(self, deadline, kind, scan, rec, connection, pieces, before, from, lens)
  end

  local function read_done(self, rec, ...)
    if framing_reads[self] == rec then
      framing_reads[self] = nil
      sync_divert(self)
    end
    return ...
  end

  -- The usual framing read, when this layer holds nothing of the pipe's:
  -- its first read is the waiting read a task's or the main thread's read()
  -- makes in C, and when that brings the whole line or frame, nothing of
  -- read_on's is needed (its tables, closures and the layer's own wait
  -- cost several times the read). The framing read's mark (rec) is set
  -- meanwhile, as for read_on's reads: a cancel, a timeout or a disconnect
  -- that comes once the read has ended stops it all the same. Otherwise
  -- read_on goes on from what came. (Nothing is held, so there is nothing
  -- to settle, and what the read leaves over is all there is to keep.)
  local function read_first(self, timeout, kind, scan, rec)
    local deadline = timeout and now() + timeout
    local connection = session(self)
    local data, msg, name, code = held_read(self, nil, timeout)
    if data == false then return read_done(self, rec, read_until_in(self, timeout, kind, scan, rec)) end
    if not data then
      read_done(self, rec)
      return nil, msg, name, code
    end
    local cut, skip, why = scan(data, 0, nil, rec)
    if cut then
      if skip < #data and session(self) == connection then
        prepend_readahead(self, data:sub(skip + 1))
      end
      read_done(self, rec)
      if cut == #data then return data end
      return data:sub(1, cut)
    elseif cut == false then
      if session(self) == connection then prepend_readahead(self, data) end
      read_done(self, rec)
      return nil, skip, why, 0
    end
    local lens = take_lens(self)
    if lens then lens_push(lens, #data) end
    return read_done(self, rec,
      read_on(self, deadline, kind, scan, rec, connection, { data, n = 1 }, #data, 2, lens))
  end

  -- rec: the framing read's mark, with what its scan needs (scan(piece,
  -- before, pieces, rec)), and stop = false (its field there already: the
  -- C side sets it at a cancel without making room). (The mark stays
  -- should the read raise: harmless, the next one's replaces it.)
  local function read_until(self, timeout, kind, scan, rec)
    -- (read_exact(0), kind 0, is answered by nothing: read_until_in's
    -- first scan, of no bytes, cuts it)
    local first = kind ~= 0 and holds_nothing(self)
    framing_reads[self] = rec
    if first then
      set_divert(self, true) -- (what sync_divert would find)
      return read_first(self, timeout, kind, scan, rec)
    end
    sync_divert(self)
    return read_done(self, rec, read_until_in(self, timeout, kind, scan, rec))
  end

  -- The scans (module-level: no closure per call).
  local function scan_line(piece, before)
    local i = piece:find("\n", 1, true)
    if i then return before + i - 1, before + i end
  end

  local function scan_exact(piece, before, _, rec)
    local n = rec.n
    if before + #piece >= n then return n, n end
  end

  -- (pieces is nil when piece is the first and only one: read_first)
  local function scan_frame(piece, before, pieces, rec)
    local need = rec.need
    if not need then
      if before + #piece < 4 then return nil end
      local head = before == 0 and piece or pieces[1]
      local i = 1
      while #head < 4 do -- the length may come in several pieces
        i = i + 1
        head = head .. pieces[i]
      end
      local len, max = from_u32be(head), rec.max
      if len > max then
        return false, ("frame of %d bytes is longer than np.max_frame_size (%d)"):format(len, max),
          "FRAME_TOO_LARGE"
      end
      need = 4 + len
      rec.need = need
    end
    if before + #piece >= need then return need, need end
  end

  --- pipe:read_line([timeout]): the next line without its "\n" (or
  --- "\r\n"); at the end of the stream a last unterminated line is
  --- returned, then nil, msg, "EOF".
  function methods.read_line(self, timeout, ...)
    check_pipe(self, "read_line")
    refuse_after("read_line", 3, AFTER_LAST, ...)
    check_not_reading(self, "read_line", 3) -- (a read_start waiting for the read-ahead)
    check_timeout(timeout, 2, "read_line")
    -- A line already read ahead is cut from it in place (its bytes come
    -- before those of any abandoned read, which read_until settles first).
    -- (not a rope kept by a read that timed out: read_until goes on with it)
    -- (cut only if a step nested in the calls here left it as it was)
    while type(readahead[self]) == "string" do
      local buf, at = readahead_view(self)
      local lens = ahead_lens[self]
      local nl = buf and buf:find("\n", at, true)
      if not nl then break end
      if readahead_cut(self, buf, at, lens and lens.h, nl + 1) then
        local stop = nl - 1
        if stop >= at and buf:byte(stop) == 13 then stop = stop - 1 end
        return buf:sub(at, stop)
      end
    end
    local line, msg, name, code = read_until(self, timeout, "line", scan_line, { stop = false })
    if line then
      if line:byte(-1) == 13 then line = line:sub(1, -2) end
      return line
    end
    if name == "EOF" and readahead[self] and readahead_len(self) > 0 then
      local last = readahead_rest(self)
      set_readahead(self, nil)
      return last
    end
    return nil, msg, name, code
  end

  --- for line in pipe:lines() do ... end: ends at the end of the stream;
  --- any other failure raises.
  function methods.lines(self, ...)
    check_pipe(self, "lines")
    refuse_after("lines", 2, "nothing expected: lines() waits for each line", ...)
    return function()
      if self:state() == "closed" then return nil end -- closed in the loop's body
      local line, msg, name = methods.read_line(self)
      if line then return line end
      if name == "EOF" or name == "CLOSED" then return nil end
      error(msg .. " (" .. tostring(name) .. ")", 2)
    end
  end

  --- pipe:read_exact(n [, timeout]): exactly n bytes, or nil, msg, name
  --- (what arrived stays readable).
  function methods.read_exact(self, n, timeout, ...)
    check_pipe(self, "read_exact")
    refuse_after("read_exact", 4, AFTER_LAST, ...)
    check_not_reading(self, "read_exact", 3) -- (a read_start waiting for the read-ahead)
    if math_type(n) ~= "integer" or n < 0 then
      error("bad argument #2 to 'read_exact' (byte count >= 0 expected)", 2)
    end
    check_timeout(timeout, 3, "read_exact")
    if readahead_len(self) >= n and readahead[self] then
      -- (a step nested in the calls here may have taken some: then as
      -- with too few)
      local buf, at = readahead_view(self)
      local lens = ahead_lens[self]
      if buf and #buf - at + 1 >= n and readahead_cut(self, buf, at, lens and lens.h, at + n) then
        return buf:sub(at, at + n - 1)
      end
    end
    return read_until(self, timeout, n, scan_exact, { n = n, stop = false })
  end

  --- pipe:write_frame(data [, cb | timeout]): a 4-byte big-endian length,
  --- then data.
  function methods.write_frame(self, data, a, ...)
    check_pipe(self, "write_frame")
    if type(data) ~= "string" then
      error("bad argument #2 to 'write_frame' (string expected, got " .. type(data) .. ")", 2)
    end
    refuse_after("write_frame", 4, AFTER_LAST, ...)
    if #data > 0xFFFFFFFF then
      error("bad argument #2 to 'write_frame' (a frame's length must fit 4 bytes)", 2)
    end
    return methods.write(self, u32be(#data) .. data, a)
  end

  --- np.max_frame_size: the longest frame read_frame accepts (bytes).
  --- The length comes from the peer: without a bound, four bytes could
  --- make us wait for (and buffer) 4 GiB. Tokio's LengthDelimitedCodec
  --- has the same default.
  M.max_frame_size = 8 * 1024 * 1024
  -- what a rope a frame's read kept is for: the scan and its limit (kept
  -- for the last limit: made once, not per call)
  local frame_max, frame_kind

  --- pipe:read_frame([timeout]): the next frame written by write_frame; a
  --- frame longer than np.max_frame_size gives nil, msg, "FRAME_TOO_LARGE"
  --- and is left unread (its length too), so a larger limit can read it.
  function methods.read_frame(self, timeout, ...)
    check_pipe(self, "read_frame")
    refuse_after("read_frame", 3, AFTER_LAST, ...)
    check_not_reading(self, "read_frame", 3) -- (a read_start waiting for the read-ahead)
    check_timeout(timeout, 2, "read_frame")
    local max = M.max_frame_size
    if math_type(max) ~= "integer" or max < 0 then
      error(("bad np.max_frame_size (integer >= 0 expected, got %s) in 'read_frame'")
        :format(math_type(max) or type(max)), 2)
    end
    -- a whole frame already read ahead is cut from it in place
    -- (cut only if a step nested in the calls here left it as it was)
    while readahead_len(self) >= 4 and type(readahead[self]) == "string" do
      local buf, at = readahead_view(self)
      local lens = ahead_lens[self]
      if not buf or #buf - at + 1 < 4 then break end
      local len = from_u32be(buf:sub(at, at + 3))
      if not (len <= max and #buf - at + 1 >= 4 + len) then break end
      if readahead_cut(self, buf, at, lens and lens.h, at + 4 + len) then
        return buf:sub(at + 4, at + 3 + len)
      end
    end
    if max ~= frame_max then frame_max, frame_kind = max, "frame " .. max end
    local frame, msg, name, code = read_until(self, timeout, frame_kind, scan_frame, { max = max, stop = false })
    if not frame then return nil, msg, name, code end
    return frame:sub(5)
  end
end

return F
