--[[
tests/test_model.lua - one pipe name's whole lifecycle, driven at random
from a seed and checked against a small model of what each end may receive.

Each round takes a fresh name and a configuration (byte pipes, message
pipes, or a message server with byte-mode clients; max_instances 1, 2, 3 or
unlimited) and runs a few hundred actions in random order: create
instances (also one too many), open clients, connect, read, read_into,
read_exact, write (one, or a burst outpacing the reader), try_read,
try_write, readable, writable, cancel, disconnect, close (close(), __close,
__gc called by hand), hand an instance over to its next client at once
(disconnect, connect, a client opens and writes, all before a step), step
the loop, sleep, spawn tasks, wait for events - each call made in one of
three forms: with a callback, waiting in the main thread (always with a
timeout), or waiting inside a task (with a timeout or without).
Callbacks chain more operations, sometimes make a waiting call of their own
(a nested step), and now and then raise an error on purpose (it unwinds
whatever was stepping the loop: np.step, or a waiting call).

Every payload written carries a tag: "\1", the writer (one side of one
connection: a client, or one generation of a server instance - the time
between its start, at create or at the connect() after a disconnect, and its
disconnect or close), a sequence number and the length. So the reader can
say exactly whose write a byte belongs to, and the model checks, as bytes
come:
  * who: the first bytes a side receives tie it to the writer (its peer);
    every later byte must come from that same peer, which must be the other
    kind of side, must not be tied to anyone else, must have been alive
    when the client opened (nothing written before a disconnect() reaches a
    later client) and must be an instance the client could have reached;
  * what: every byte is the byte written at that offset; records come in
    the order written, none twice; a message is a whole message written, or
    the parts of one read with read(n) / read_into a smaller buffer, in
    order; nothing after the end of the stream; after a disconnect() a read
    the old client starts gets no more of the old instance's bytes (Windows
    discards them; on Linux the old client still reads what the server
    wrote before, which no Unix socket can take back: README, Linux notes);
and, once the round is over, from the whole story:
  * nothing lost: a write reported done arrives whole, unless the reader
    stopped reading (or a disconnect discarded it) and received nothing
    after it;
  * stopped writes leave a prefix: of the writes stopped together (by one
    cancel, timeout, disconnect or close), at most the first arrives, and
    maybe only its start; a cut record is one of a write that was stopped.
Results are checked as they come too: each failure must be one the
situation allows (CANCELLED only after a cancel, TIMEOUT only after a
timeout came due, NOT_CONNECTED only on an instance that may have had no
client, EOF and BROKEN_PIPE only when the peer may have gone, ...); open
succeeds while an instance is free and gives PIPE_BUSY / NOT_FOUND when the
model says so; writes complete in the order started; readable() and
writable() are followed at once by a try_read / try_write that does not
block; every callback runs exactly once, every waiting call returns (a
watchdog fails an action that runs for more than 20 s); after everything is
closed np.pending() is 0, np.stats().pipes is back to where the round began,
no task is left, every pipe userdata can be collected and (Linux) the socket
and lock files are gone.

Seeded: NP_MODEL_SEED (default from the clock); each round prints nothing
unless it fails, and a failure names its round's own seed, which replays
that round first: NP_MODEL_SEED=<round seed> NP_MODEL_ROUNDS=1. Completions
depend on timing, so a replay makes the same choices as long as operations
come out the same way (close, not exact). Bounded: NP_MODEL_SECONDS (default
3; 1 under valgrind or ASan) or NP_MODEL_ROUNDS.

NP_MODEL_TOLERATE=name,name... steers the model around defects known and
being fixed (see TOLERABLE below); by default everything is checked.
]]
local lu = require "luaunit"
local np = require "namedpipe"
local task = require "namedpipe.task"
local H = require "tests.helpers"

local WIN = PLATFORM == "windows"

-- valgrind runs the process with its preload libraries; the ASan build is
-- loaded from NP_BUILD_DIR (make check). Both are many times slower.
local SLOW = (os.getenv("LD_PRELOAD") or ""):find("vgpreload", 1, true)
  or (os.getenv("NP_BUILD_DIR") or ""):find("asan", 1, true)
local SECONDS = tonumber(os.getenv("NP_MODEL_SECONDS") or "") or (SLOW and 1 or 3)
local ROUNDS = math.tointeger(tonumber(os.getenv("NP_MODEL_ROUNDS") or ""))
local SEED = math.tointeger(tonumber(os.getenv("NP_MODEL_SEED") or ""))
  or (os.time() % 1000000) * 1000 + math.random(0, 999)
local WATCHDOG_MS = 20000
-- NP_MODEL_TRACE=1: print every event as it happens (to study a replay)
local TRACE = os.getenv("NP_MODEL_TRACE") == "1"

-- Known defects, each with a switch that steers the model around it (for
-- runs while their fixes land). Off unless named in NP_MODEL_TOLERATE.
local TOLERABLE = {
  writes_cross_disconnect = "no disconnect() while writes are pending (they reached the next client)",
  read_crosses_disconnect = "no disconnect() while a message read is pending (it joined two clients' bytes)",
  stale_try_write_error = "no try_write on Windows (its stopped write's error failed the next write)",
  event_resumes_twice = "no np.event waits with a timeout (the task was resumed twice)",
  unwind_abandons = "no callback raises (an error unwinding a waiting call lost its operation)",
  callback_then_timeout = "no read(cb, timeout) (the timeout was dropped without an error)",
  gc_by_hand = "no __gc called by hand (the pipe stayed anchored)",
  readable_fails_at_end = "readable() may fail BROKEN_PIPE when the peer may have gone (Windows, "
    .. "after the server disconnected)",
  empty_write_overtakes = "no zero-length write while other writes are pending on Windows (it was "
    .. "done at once, ahead of them, and stayed when they were stopped)",
  empty_crosses_disconnect = "no disconnect() while a readable() is pending on a message instance "
    .. "(Windows: the empty message it took reached the next session)",
  readahead_crosses_disconnect = "no disconnect() while bytes are read ahead (read_exact's rest "
    .. "came out of the next client's reads)",
  framing_read_closed = "no close() while a read_exact() waits, and read_exact() in a task always "
    .. "with a timeout (a part came, then the close: it raised instead of returning CLOSED)",
}
local TOLERATE = {}
for w in (os.getenv("NP_MODEL_TOLERATE") or ""):gmatch("[%w_]+") do
  assert(TOLERABLE[w], "NP_MODEL_TOLERATE: unknown switch " .. w)
  TOLERATE[w] = true
end

local BOOM = "MODEL-INTENDED-ERROR"
local EV_VALUE = "MODEL-EVENT-VALUE"

-- ------------------------------------------------------------ randomness
-- (H.generator: the same sequence on both platforms and every Lua version;
-- math.random untouched)
local gen = H.generator()
local set_state, next31 = gen.reseed, gen.next
local rnd, chance, pick, weighted = gen.rnd, gen.chance, gen.pick, gen.weighted

-- ------------------------------------------------------------ payloads
-- "\1" WWWWW SSSSSS LLLLLLL ":" then the body: writer id, sequence number,
-- whole length. "\1" is never in a body, so a record's start shows.
local HDR = 20
local MARK = "\1"

local function payload(wid, seq, blen)
  local head = ("\1%05d%06d%07d:"):format(wid, seq, HDR + blen)
  if blen == 0 then return head end
  -- 41 bytes that differ from writer to writer and write to write
  local key = ("%05d%06d"):format(wid, seq):gsub("%d", function(d)
    return string.char(97 + tonumber(d))
  end)
  local pat = key .. "\0\n\r\255ABCDEFGHIJKLMNOPQRSTUVWXYZ"
  return head .. pat:rep(math.floor(blen / #pat) + 1):sub(1, blen)
end

local function parse_header(s)
  local wid, seq, total = s:match("^\1(%d%d%d%d%d)(%d%d%d%d%d%d)(%d%d%d%d%d%d%d):")
  if not wid then return nil end
  return tonumber(wid), tonumber(seq), tonumber(total)
end

local function common_prefix(a, b)
  local n = math.min(#a, #b)
  if a:sub(1, n) == b:sub(1, n) then return n end
  local lo, hi = 0, n
  while hi - lo > 1 do
    local mid = math.floor((lo + hi) / 2)
    if a:sub(1, mid) == b:sub(1, mid) then lo = mid else hi = mid end
  end
  return lo
end

local function show(s, max)
  max = max or 24
  local t = #s > max and s:sub(1, max) or s
  t = ("%q"):format(t):gsub("\\\n", "\\n")
  return #s > max and ("%s... (%d bytes)"):format(t, #s) or t
end

local function describe(...)
  local parts = {}
  for i = 1, select("#", ...) do
    local v = select(i, ...)
    parts[i] = type(v) == "string" and show(v) or tostring(v)
  end
  return table.concat(parts, ", ")
end

-- ------------------------------------------------------------ the round
local R -- the round being run (the cancel hook reads it)

local function tick() R.t = R.t + 1; return R.t end

local function note(fmt, ...)
  local line = ("t%d %s"):format(R.t, fmt:format(...))
  R.log[R.logi % 80 + 1] = line
  R.logi = R.logi + 1
  if TRACE then print("  | " .. line) end
end

local function recent()
  local out = {}
  for i = math.max(0, R.logi - 80), R.logi - 1 do out[#out + 1] = "    " .. R.log[i % 80 + 1] end
  return table.concat(out, "\n")
end

local function violation(kind, fmt, ...)
  local msg = fmt:format(...)
  R.violations[#R.violations + 1] = { kind = kind, msg = msg,
    log = #R.violations == 0 and recent() or nil }
  note("VIOLATION [%s] %s", kind, msg)
  R.failed = true
end

local function opname(op)
  return ("%s %s#%d(%s)"):format(op.party and op.party.name or op.e.name, op.kind, op.id, op.style)
end

-- ------------------------------------------------------------ sides
-- A side ("party") is one end of one connection: a client, or one
-- generation of a server instance. It writes records and reads its peer's.
local function new_party(e)
  R.nwid = R.nwid + 1
  local p = { wid = R.nwid, e = e, kind = e.kind, writes = {}, seq = 0, epoch = 0,
    start_t = R.t, chunks = {}, last_seq = 0, pend = "", cur = nil, early_empties = 0 }
  if e.kind == "server" then
    e.ngen = e.ngen + 1
    p.name = e.name .. "/g" .. e.ngen
  else
    p.name = e.name
  end
  R.parties[p.wid] = p
  R.plist[#R.plist + 1] = p
  e.party = p
  return p
end

local function end_party(p, how)
  if not p or p.end_t then return end
  p.end_t = R.t
  p.end_how = how
  p.free = false
end

local function alive_instances()
  local list = {}
  for _, e in ipairs(R.ends) do
    if e.kind == "server" and not e.closed then list[#list + 1] = e end
  end
  return list
end

local function free_gens()
  local list = {}
  for _, e in ipairs(alive_instances()) do
    local g = e.party
    if g and g.free and not g.end_t and not g.peer then list[#list + 1] = g end
  end
  return list
end

-- How many clients, not yet known to be on any instance, may hold one of
-- the free generations F.
local function unassigned(F)
  local n = 0
  for _, c in ipairs(R.plist) do
    -- (a client that closed holds its instance too, until the instance
    -- disconnects or closes)
    if c.kind == "client" and not c.peer then
      for _, g in ipairs(F) do
        if c.cands[g] then n = n + 1; break end
      end
    end
  end
  return n
end

-- A generation starts listening.
local function gen_listens(g)
  g.free = true
end

-- A server's write w started before the client rp existed: it can never
-- reach rp.
local function written_before(w, rp)
  return w.party.kind == "server" and rp.kind == "client" and w.start_t < rp.start_t
end

-- Empty messages rp received before its peer was known: the peer's empty
-- writes after what rp had, before seq `upto`, in order, passing over a
-- stopped one while enough that were not stopped come after it (as
-- empty_message prefers them).
local function take_early_empties(rp, upto)
  local n, P = rp.early_empties, rp.peer
  if n == 0 or not P then return true end
  rp.early_empties = 0
  local cands, unstopped_after = {}, {}
  for s = rp.last_seq + 1, math.min(upto - 1, P.seq) do
    local w = P.writes[s]
    if w.empty and w.status ~= "never" and not written_before(w, rp) then cands[#cands + 1] = w end
  end
  local u = 0
  for i = #cands, 1, -1 do
    unstopped_after[i] = u
    if cands[i].status ~= "stopped" then u = u + 1 end
  end
  for i, w in ipairs(cands) do
    if n == 0 then break end
    if w.status ~= "stopped" or unstopped_after[i] < n then
      rp.chunks[#rp.chunks + 1] = { w = w, len = 0 }
      rp.last_seq = w.seq
      n = n - 1
    end
  end
  if n > 0 then
    violation("phantom", "%s received %d empty message(s) %s did not write", rp.name, n, P.name)
    return false
  end
  return true
end

local function tie(c, g, why)
  c.peer, g.peer = g, c
  g.free = false
  g.attached_t = g.attached_t or R.t
  note("%s is tied to %s (%s)", c.name, g.name, why)
end

--- rp received bytes of wp's: are they peers (tie them at the first)?
local function check_tie(rp, wp)
  if rp.peer == wp then return true end
  if wp.kind == rp.kind then
    violation("misdelivery", "%s received bytes %s wrote, a side of its own kind", rp.name, wp.name)
    return false
  end
  if rp.peer then
    violation("misdelivery", "%s received bytes %s wrote, but its peer is %s%s", rp.name, wp.name, rp.peer.name,
      wp.end_t and (" (%s ended by %s at t%d)"):format(wp.name, wp.end_how, wp.end_t) or "")
    return false
  end
  if wp.peer then
    violation("misdelivery", "%s received bytes %s wrote, but %s's peer is %s%s", rp.name, wp.name,
      wp.name, wp.peer.name, wp.peer.end_t and (" (%s ended by %s at t%d)"):format(wp.peer.name,
        wp.peer.end_how, wp.peer.end_t) or "")
    return false
  end
  local c, g = rp, wp
  if c.kind ~= "client" then c, g = wp, rp end
  if g.end_t and g.end_t < c.start_t then
    violation("stale", "%s and %s exchanged bytes, but %s ended (%s at t%d) before %s opened (t%d)",
      rp.name, wp.name, g.name, g.end_how, g.end_t, c.name, c.start_t)
    return false
  end
  if not c.cands[g] then
    violation("misdelivery", "%s and %s exchanged bytes, but %s was not listening when %s opened (t%d)",
      rp.name, wp.name, g.name, c.name, c.start_t)
    return false
  end
  tie(c, g, "bytes")
  return true
end

--- May p's peer have gone (so EOF / BROKEN_PIPE are fair)?
local function may_be_gone(p)
  if p.peer then return p.peer.end_t ~= nil end
  if p.kind == "client" then
    local possible = false
    for g in pairs(p.cands) do
      if not g.peer or g.peer == p then
        possible = true
        if g.end_t then return true end
      end
    end
    return not possible
  end
  for _, c in ipairs(R.plist) do
    if c.kind == "client" and c.cands[p] and (not c.peer or c.peer == p) and c.end_t then return true end
  end
  return false
end

--- May the instance have had no client when op started (NOT_CONNECTED)?
local function may_be_unconnected(op)
  local g = op.party
  if op.e.kind ~= "server" then return false end
  if not g or g.end_t then return true end
  return not (g.attached_t and g.attached_t < op.start_t)
end

-- ------------------------------------------------------------ receiving
-- Bytes a waiting call took when an error unwound it are the likely
-- culprit of a gap: say so.
local function unwound(rp)
  return rp.abandoned_reads and (" [%s had a waiting read unwound by an error: %s]")
    :format(rp.name, rp.abandoned_reads) or ""
end

local function new_chunk(rp, w, op)
  if rp.eof then
    violation("after_eof", "%s received %s seq %d after the end of the stream", rp.name, w.party.name, w.seq)
    return nil
  end
  if not check_tie(rp, w.party) then return nil end
  if w.seq <= rp.last_seq then
    violation("order", "%s received %s seq %d after seq %d (twice, or out of order)", rp.name,
      w.party.name, w.seq, rp.last_seq)
    return nil
  end
  if not take_early_empties(rp, w.seq) then return nil end
  local P = w.party
  -- (bytes the client had before - read ahead, or taken by a call an error
  -- unwound - are its to read; and on Linux all the instance wrote before
  -- its disconnect(), already in the client's socket: the documented Linux
  -- behaviour, README's Linux notes)
  if WIN and rp.kind == "client" and P.end_how == "disconnect" and op and op.start_t > P.end_t
    and not op.readahead and not rp.abandoned_reads then
    violation("after_disconnect", "%s's %s, started at t%d after %s's disconnect() (t%d), got %s seq %d",
      rp.name, op.kind, op.start_t, P.name, P.end_t, P.name, w.seq)
  end
  rp.last_seq = w.seq
  local chunk = { w = w, len = 0 }
  rp.chunks[#rp.chunks + 1] = chunk
  return chunk
end

-- A piece of a header cut by the start of the next record: the start of
-- one of the peer's later writes (judged at the end).
local function cut_header(rp, frag)
  local P = rp.peer
  if not P then
    local wid = tonumber(frag:sub(2, 6):match("^%d%d%d%d%d$") or "")
    P = wid and R.parties[wid]
  end
  if P then
    for s = rp.last_seq + 1, P.seq do
      local w = P.writes[s]
      if not w.empty and w.data:sub(1, #frag) == frag then
        local chunk = new_chunk(rp, w)
        if chunk then chunk.len = #frag end
        return
      end
    end
  end
  -- (a byte stream's fragment under 6 bytes may be too short to say whose
  -- it is; a message reader's, the start of a message joined to a cut one,
  -- is its peer's)
  if #frag >= 6 or rp.e.read_message then
    violation("corrupt", "%s received %s, the start of no write it could get", rp.name, show(frag))
  end
end

--- Byte-mode reading: d continues rp's stream.
local function feed_bytes(rp, d, op)
  local buf, pos = rp.pend .. d, 1
  while pos <= #buf and not R.failed do
    local cur = rp.cur
    if cur then
      local w = cur.w
      local n = math.min(w.sent - cur.off, #buf - pos + 1)
      local k = common_prefix(buf:sub(pos, pos + n - 1), w.data:sub(cur.off + 1, cur.off + n))
      cur.off = cur.off + k
      cur.chunk.len = cur.off
      pos = pos + k
      if cur.off == w.sent then
        rp.cur = nil
      elseif k < n then
        if buf:sub(pos, pos) == MARK then
          rp.cur = nil -- the write was cut here (judged at the end)
        else
          local lost = w.data:find(buf:sub(pos, pos + 15), cur.off + 1, true)
          violation("corrupt", "%s: byte %d of %s seq %d is %s where %s was written%s%s", rp.name,
            cur.off + 1, w.party.name, w.seq, show(buf:sub(pos, pos + 7)),
            show(w.data:sub(cur.off + 1, cur.off + 8)),
            lost and (" (bytes %d..%d of it never came)"):format(cur.off + 1, lost - 1) or "", unwound(rp))
          return
        end
      end
    else
      if buf:sub(pos, pos) ~= MARK then
        violation("corrupt", "%s: %s where a record should start (after %s)%s", rp.name,
          show(buf:sub(pos, pos + 15)), rp.last_seq > 0 and ("seq %d"):format(rp.last_seq) or "nothing",
          unwound(rp))
        return
      end
      local nxt = buf:find(MARK, pos + 1, true)
      if nxt and nxt < pos + HDR then
        cut_header(rp, buf:sub(pos, nxt - 1))
        pos = nxt
      elseif #buf - pos + 1 < HDR then
        break -- the rest of the header comes with the next read
      else
        local wid, seq, total = parse_header(buf:sub(pos, pos + HDR - 1))
        local P = wid and R.parties[wid]
        local w = P and P.writes[seq]
        if not w or w.total ~= total then
          violation("corrupt", "%s: %s is the header of no write", rp.name, show(buf:sub(pos, pos + HDR - 1)))
          return
        end
        local chunk = new_chunk(rp, w, op)
        if not chunk then return end
        rp.cur = { w = w, off = 0, chunk = chunk }
      end
    end
  end
  rp.pend = buf:sub(pos)
end

local function empty_message(rp)
  if rp.eof then
    violation("after_eof", "%s received an empty message after the end of the stream", rp.name)
    return
  end
  local P = rp.peer
  if not P then
    rp.early_empties = rp.early_empties + 1
    return
  end
  -- (an empty message has no tag: the first empty write not stopped, else
  -- the first stopped one; a server's write started before its reader, a
  -- client, existed is none of its: written to an instance with no client,
  -- it fails NOT_CONNECTED, maybe not reported yet. A client's write may
  -- come before the instance that takes it: a queued client's)
  local stopped
  for s = rp.last_seq + 1, P.seq do
    local w = P.writes[s]
    if w.empty and w.status ~= "never" then
      if w.status ~= "stopped" and not written_before(w, rp) then
        stopped = w
        break
      end
      stopped = stopped or w
    end
  end
  if stopped then
    rp.chunks[#rp.chunks + 1] = { w = stopped, len = 0 }
    rp.last_seq = stopped.seq
    return
  end
  violation("phantom", "%s received an empty message, but %s wrote none after seq %d", rp.name, P.name, rp.last_seq)
end

-- Windows: a message write stopped after its reader took a first part
-- loses the rest without a mark in the pipe, and the read that was to take
-- the rest goes on for the size the pipe then says is left: the next
-- message's (README, "Windows notes"). So a read's bytes may be the cut
-- message's last part, then the start of a later message of the same
-- writer. Is w, which d's bytes follow up to byte `at` (a MARK), such a cut?
local function cut_join(w, d, at)
  if not WIN or d:sub(at, at) ~= MARK then return false end
  return w.status == "stopped" or w.epoch ~= w.party.epoch
end

--- Message-mode reading: d is one message, or the next part of one.
local function feed_message(rp, d, op)
  if #rp.pend > 0 then
    -- the start of a message joined to a cut one, shorter than a header
    -- (cut_join): its next part, if the read after it has one, completes it
    local frag = rp.pend
    rp.pend = ""
    if d ~= "" and d:sub(1, 1) ~= MARK then
      return feed_message(rp, frag .. d, op)
    end
    cut_header(rp, frag)
    if R.failed then return end
  end
  local cur = rp.cur
  if cur then
    if d ~= "" and d:sub(1, 1) ~= MARK then -- the rest of a message read in parts
      local w = cur.w
      local want = w.data:sub(cur.off + 1, cur.off + #d)
      if d ~= want then
        local k = common_prefix(d, want)
        if cur.off + k < w.total and cut_join(w, d, k + 1) then
          R.stats.cut_joined = (R.stats.cut_joined or 0) + 1
          note("%s: %s seq %d cut after %d bytes, a later message joined to it (Windows)", rp.name,
            w.party.name, w.seq, cur.off + k)
          cur.off = cur.off + k
          cur.chunk.len = cur.off
          rp.cur = nil
          local rest = d:sub(k + 1)
          if #rest < HDR then rp.pend = rest return end
          return feed_message(rp, rest, op)
        end
        violation("corrupt", "%s: a part of %s seq %d differs at its byte %d: %s where %s was written%s%s",
          rp.name, w.party.name, w.seq, cur.off + k + 1, show(d:sub(k + 1, k + 8)),
          show(want:sub(k + 1, k + 8)), #d > #want and " (longer than the message: joined?)" or "",
          unwound(rp))
        return
      end
      cur.off = cur.off + #d
      cur.chunk.len = cur.off
      if cur.off >= w.sent then rp.cur = nil end
      return
    end
    rp.cur = nil -- the rest of that message never came (judged at the end)
  end
  if d == "" then return empty_message(rp) end
  if #d < HDR then
    violation("corrupt", "%s: a message of %d bytes, shorter than any header: %s%s", rp.name, #d, show(d),
      unwound(rp))
    return
  end
  local wid, seq, total = parse_header(d)
  local P = wid and R.parties[wid]
  local w = P and P.writes[seq]
  if not w or w.total ~= total then
    violation("corrupt", "%s: a message %s that is no write%s", rp.name, show(d), unwound(rp))
    return
  end
  if d ~= w.data:sub(1, #d) then
    local k = common_prefix(d, w.data)
    local other = d:find(MARK, 2, true)
    local ow, oseq
    if other then ow, oseq = parse_header(d:sub(other, other + HDR - 1)) end
    if other == k + 1 and other - 1 < w.total and cut_join(w, d, other)
      and (#d - other + 1 < HDR or ow == wid and oseq > seq) then
      -- two messages, the first cut (cut_join); the second's start may be
      -- shorter than a header (a read of a few bytes more than 64 KiB)
      R.stats.cut_joined = (R.stats.cut_joined or 0) + 1
      note("%s: %s seq %d cut after %d bytes, %s joined to it (Windows)", rp.name, P.name, seq,
        other - 1, ow and ("seq %d"):format(oseq) or "the start of a later message")
      feed_message(rp, d:sub(1, other - 1), op)
      if R.failed then return end
      if #d - other + 1 < HDR then rp.pend = d:sub(other) return end
      return feed_message(rp, d:sub(other), op)
    end
    violation("corrupt", "%s: message %s seq %d differs from its byte %d%s", rp.name, P.name, seq, k + 1,
      other and ("; at byte %d starts %s seq %s: two messages joined"):format(other,
        ow and R.parties[ow] and R.parties[ow].name or "?", tostring(oseq)) or "")
    return
  end
  local chunk = new_chunk(rp, w, op)
  if not chunk then return end
  chunk.len = #d
  if #d < w.sent then rp.cur = { w = w, off = #d, chunk = chunk } end
end

local function feed(op, d)
  local rp = op.party
  if op.e.read_message then feed_message(rp, d, op) else
    if d == "" then R.stats.empty_byte_reads = R.stats.empty_byte_reads + 1 return end
    feed_bytes(rp, d, op)
  end
  R.stats.bytes = R.stats.bytes + #d
end

local function got_eof(op)
  local rp = op.party
  if rp.eof then return end
  rp.cur = nil
  if #rp.pend > 0 then -- a header the end cut
    cut_header(rp, rp.pend)
    rp.pend = ""
  end
  rp.eof = true
  rp.eof_t = R.t
end

-- ------------------------------------------------------------ operations
local run_op -- forward

local function new_op(e, kind, style)
  R.nops = R.nops + 1
  local op = { id = R.nops, e = e, party = e.party, kind = kind, style = style, start_t = tick(),
    may = {}, ncomp = 0 }
  R.ops[op.id] = op
  R.stats.ops = R.stats.ops + 1
  return op
end

local function new_write(e, kind, size)
  local P = e.party
  P.seq = P.seq + 1
  local empty = size ~= "long" and chance(25)
  if empty and WIN and TOLERATE.empty_write_overtakes and (#e.wpending > 0 or #e.tw_inflight > 0) then
    empty = false
  end
  local blen = 0
  if size == "small" then
    blen = empty and 0 or rnd(200)
  elseif size == "long" then -- more than one read takes (64 KiB)
    blen = 70000 + rnd(100000)
  elseif not empty then
    blen = weighted {
      { 30, rnd(40) - 1 }, { 30, 40 + rnd(400) }, { 12, 500 + rnd(8000) },
      { R.written < 6e6 and 4 or 0, 20000 + rnd(50000) },
      { R.written < 4e6 and 2 or 0, 100000 + rnd(100000) },
    }
  end
  local data = empty and "" or payload(P.wid, P.seq, blen)
  R.written = R.written + #data
  local w = { party = P, seq = P.seq, data = data, total = #data, sent = #data, epoch = P.epoch,
    empty = empty, status = "pending", kind = kind, start_t = R.t }
  P.writes[P.seq] = w
  return w
end

--- Writes of e stop (cancel, timeout, disconnect, close): the ones pending
--- may end with `reason`; later writes are a new batch.
--- An operation is stopped: it may end with `reason`, and if it ends with
--- a stop's reason, with its first stop's (a stop ends it at once on Linux;
--- on Windows the packet comes later, and says what was asked first).
local function stop_op(op, reason, only_maybe)
  op.may[reason] = true
  if not only_maybe then op.first_stop = op.first_stop or reason end
end

--- only_maybe: the writes may end so, but nothing stopped them for sure.
local function stop_writes(e, reason, only_maybe)
  local bumped = {}
  local function bump(p)
    if p and not bumped[p] then
      bumped[p] = true
      p.epoch = p.epoch + 1
      p.last_stop_t = R.t
    end
  end
  for _, op in ipairs(e.wpending) do
    stop_op(op, reason, only_maybe)
    bump(op.w.party)
  end
  for _, w in ipairs(e.tw_inflight) do
    w.maybe_stopped = true
    e.stopped_try_write = reason
    bump(w.party)
  end
  bump(e.party)
end

local function mark_pending(e, reason)
  for _, k in ipairs { "connect_op", "read_op", "writable_op" } do
    if e[k] then stop_op(e[k], reason) end
  end
  stop_writes(e, reason)
end

-- np.methods.cancel, watched, and the waiting layer's own cancels (its
-- timeouts, ready("both")'s: np._watch_cancels).
local function on_cancel(pipe, what, reason)
  local e = R and R.by_pipe[pipe]
  if not e or e.closed then return end
  reason = reason or "CANCELLED"
  note("%s cancel(%s, %s)", e.name, tostring(what), reason)
  local function mark(op) if op then stop_op(op, reason) end end
  if what == nil then
    mark(e.connect_op); mark(e.read_op); mark(e.writable_op)
    stop_writes(e, reason)
  elseif what == "connect" then mark(e.connect_op)
  elseif what == "read" or what == "readable" then mark(e.read_op)
  elseif what == "write" then stop_writes(e, reason)
  elseif what == "writable" then mark(e.writable_op) end
end

-- Accepted try_writes (Windows) end unseen; a write that completes, or a
-- writable() that says so, tells that those accepted before it began are
-- over.
local function settle_try_writes(e, before_t)
  local left = {}
  for _, w in ipairs(e.tw_inflight) do
    if w.accepted_t < before_t then
      w.status = w.maybe_stopped and "unknown" or "done"
    else
      left[#left + 1] = w
    end
  end
  e.tw_inflight = left
end

local function release_slot(op)
  local e = op.e
  if e.read_op == op then e.read_op = nil end
  if e.connect_op == op then e.connect_op = nil end
  if e.writable_op == op then e.writable_op = nil end
  if op.kind == "write" then
    -- (a waiting call in the main thread is seen to end when it returns,
    -- after the callbacks its step ran: its place in the order is unknown)
    local first
    for i, o in ipairs(e.wpending) do
      if not o.abandoned and o.style ~= "main" then first = first or o end
      if o == op then
        table.remove(e.wpending, i)
        break
      end
    end
    if op.style ~= "main" and first ~= op then
      violation("order", "%s completed before %s, started earlier", opname(op), opname(first))
    end
    settle_try_writes(e, op.start_t)
  end
end

local READS = { read = true, read_into = true, try_read = true, read_exact = true }
local WRITES = { write = true, try_write = true }

-- The reasons only a stop gives (NOT_CONNECTED also comes from the system).
local STOP_ONLY = { CANCELLED = true, TIMEOUT = true, CLOSED = true }

local function failed(op, ename)
  local kind = op.kind
  local ok = op.may[ename]
  if ok and STOP_ONLY[ename] and op.first_stop ~= ename then
    violation("status", "%s failed %s, but was stopped first with %s", opname(op), ename,
      op.first_stop)
  end
  if not ok then
    if ename == "EOF" and READS[kind] then ok = may_be_gone(op.party)
    elseif ename == "BROKEN_PIPE" and WRITES[kind] then ok = may_be_gone(op.party)
    elseif ename == "BROKEN_PIPE" and kind == "readable" and TOLERATE.readable_fails_at_end then
      ok = may_be_gone(op.party)
    elseif ename == "NOT_CONNECTED" then ok = may_be_unconnected(op)
    elseif ename == "WOULDBLOCK" and (kind == "try_read" or kind == "try_write") then
      ok = not op.after_ready or op.overtook
    end
  end
  if not ok then
    local why
    if (ename == "EOF" and READS[kind]) or (ename == "BROKEN_PIPE" and WRITES[kind]) then
      why = op.party.peer and (": its peer %s is open and connected"):format(op.party.peer.name)
        or ": no client it could have has gone"
    elseif ename == "NOT_CONNECTED" then
      why = op.e.kind == "client" and ": a client" or (": %s had a client since t%d"):format(
        op.party.name, op.party.attached_t or -1)
    elseif ename == "WOULDBLOCK" then
      why = (": right after %s() said ready"):format(op.after_ready or "?")
    elseif ename == "EOF" or ename == "BROKEN_PIPE" then
      why = (" (%s's peer %s): %s() is ready at the end of the stream, not failed"):format(
        op.party.name, op.party.peer and op.party.peer.name or "unknown", kind)
    else
      why = " (no " .. ename:lower() .. " was asked for or due)"
      if WRITES[kind] and op.e.stopped_try_write then
        why = why .. (" [an earlier try_write of %s was stopped with %s: its error told to a later write?]")
          :format(op.e.name, op.e.stopped_try_write)
      end
    end
    violation("status", "%s failed %s%s", opname(op), ename, why)
  end
  -- (read_exact's end is not the stream's: what it had read stays readable)
  if ename == "EOF" and READS[kind] and kind ~= "read_exact" then got_eof(op) end
  if kind == "write" then
    -- (NOT_CONNECTED: the write was part of no connection's stream)
    op.w.status = ename == "NOT_CONNECTED" and "never" or "stopped"
    -- a write started after this one failed is no part of its batch
    op.w.party.epoch = op.w.party.epoch + 1
  elseif kind == "try_write" then op.w.status = "never" end
  if op.w then op.w.story = ("%s at t%d -> %s"):format(opname(op), op.start_t, ename) end
end

local function try_after_ready(e, what, ready_op)
  if R.failed or e.closed or R.winding then return end
  -- (what was ready was that connection's: a disconnect since makes it
  -- moot; and the peer may take back what it was writing - a stopped write
  -- leaves the pipe on Windows)
  local p = ready_op.party
  local same = p == e.party and not p.end_t
  if what == "readable" and (not p.peer or (p.peer.last_stop_t or -1) >= ready_op.start_t) then
    same = false
  end
  if what == "readable" then
    if e.read_op then return end
    -- a byte-mode reader of a message pipe may be told so for an empty
    -- message, which is nothing in a byte stream
    run_op(e, "try_read", "now", { after_ready = same and not (R.cfg.mixed and e.kind == "client")
      and "readable" or nil })
  else
    -- (a write begun since the wait began may be in flight now: on Windows
    -- a try_write's until a step takes its packet)
    if (e.last_write_t or -1) >= ready_op.start_t then same = false end
    run_op(e, "try_write", "now", { after_ready = same and "writable" or nil, size = "small" })
  end
end

local function succeeded(op, v)
  local kind, e = op.kind, op.e
  -- (readiness may say true: what a try_* would meet - NOT_CONNECTED - is
  -- there at once; Windows says so, Linux fails the wait)
  if op.expect_not_connected and kind ~= "readable" and kind ~= "writable" then
    violation("status", "%s succeeded (%s) on a disconnected instance", opname(op), describe(v))
  end
  if kind == "read" or kind == "try_read" or kind == "read_exact" then
    if type(v) ~= "string" then return violation("shape", "%s gave a %s", opname(op), type(v)) end
    if op.n and #v > op.n then violation("shape", "%s gave %d bytes, more than %d", opname(op), #v, op.n) end
    if kind == "read_exact" and #v ~= op.n then
      violation("shape", "%s gave %d bytes, not %d", opname(op), #v, op.n)
    end
    feed(op, v)
  elseif kind == "read_into" then
    if math.type(v) ~= "integer" or v < 0 or v > #op.buf then
      return violation("shape", "%s gave %s for a buffer of %d", opname(op), describe(v), #op.buf)
    end
    feed(op, op.buf:sub(1, v))
  elseif kind == "write" then
    if v ~= op.w.total then violation("shape", "%s gave %s for %d bytes", opname(op), describe(v), op.w.total) end
    op.w.status = "done"
    op.w.story = ("%s at t%d -> done t%d"):format(opname(op), op.start_t, R.t)
  elseif kind == "try_write" then
    local w = op.w
    if math.type(v) ~= "integer" then return violation("shape", "%s gave %s", opname(op), describe(v)) end
    w.story = ("%s at t%d -> %d"):format(opname(op), op.start_t, v)
    if op.overtook == true then
      violation("order", "%s was accepted while earlier writes were pending", opname(op))
    end
    if WIN then
      if v ~= w.total then violation("shape", "%s accepted %d of %d bytes", opname(op), v, w.total) end
      settle_try_writes(e, math.huge) -- (accepted: nothing of the pipe's was in flight)
      w.status = "accepted"
      w.accepted_t = R.t
      e.tw_inflight[#e.tw_inflight + 1] = w
    elseif R.cfg.message or v == w.total then
      if v ~= w.total then violation("shape", "%s accepted %d of %d bytes", opname(op), v, w.total) end
      w.status = "done"
    else
      if v > w.total or (v == 0 and w.total > 0) then
        violation("shape", "%s accepted %d of %d bytes", opname(op), v, w.total)
      end
      w.sent = v
      w.status = "done"
    end
  elseif kind == "connect" then
    if v ~= true then return violation("shape", "%s gave %s", opname(op), describe(v)) end
    local g = op.party
    local could = false
    for _, c in ipairs(R.plist) do
      if c.kind == "client" and c.cands[g] and (not c.peer or c.peer == g) then could = true end
    end
    if not could then violation("phantom", "%s: connect() completed, but no client could be on %s", opname(op), g.name) end
    g.attached_t = g.attached_t or R.t
  elseif kind == "readable" or kind == "writable" then
    if v ~= true then return violation("shape", "%s gave %s", opname(op), describe(v)) end
    if kind == "writable" then settle_try_writes(e, op.start_t) end
    if op.style ~= "main" then try_after_ready(e, kind, op) end
  end
end

--- An operation's results (its callback's arguments, or what the waiting
--- call returned).
local function complete(op, ...)
  local n = select("#", ...)
  local v, msg, ename = ...
  op.ncomp = op.ncomp + 1
  tick()
  if op.ncomp > 1 then
    return violation("twice", "%s completed a second time, with %s", opname(op), describe(...))
  end
  note("%s -> %s", opname(op), describe(...))
  release_slot(op)
  for i = 1, n do
    if select(i, ...) == EV_VALUE then
      return violation("resumed_twice", "%s returned an event's values (%s): its task was resumed twice",
        opname(op), describe(...))
    end
  end
  if v == nil then
    if n < 4 or type(msg) ~= "string" or type(ename) ~= "string" then
      return violation(n == 0 and op.style == "task" and "resumed_twice" or "shape",
        "%s returned %s, not nil, msg, NAME, code%s", opname(op), n == 0 and "nothing" or describe(...),
        n == 0 and op.style == "task" and " (its task was resumed by something else)" or "")
    end
    return failed(op, ename)
  end
  succeeded(op, v)
end

local function after_callback(op)
  local e = op.e
  if R.failed or e.closed then return end
  if R.winding then
    -- the reader goes on to the end of the stream
    if R.drain[e] and READS[op.kind] and not e.read_op and not R.drain_done[e] then
      run_op(e, "read", "cb")
    end
    return
  end
  if op.chain and not e.read_op and READS[op.kind] then
    run_op(e, op.kind == "try_read" and "read" or op.kind, "cb")
  elseif op.chain and op.kind == "write" then
    run_op(e, "write", "cb")
  elseif R.depth < 1 and chance(25) then
    -- a waiting call inside a callback: a nested step
    local other = pick(R.ends)
    if not other.closed then
      R.depth = R.depth + 1
      local ok, err = pcall(run_op, other, pick { "read", "write", "readable", "writable", "read_into" }, "main")
      R.depth = R.depth - 1
      if not ok then error(err, 0) end
    end
  end
end

local function callback_for(op)
  return function(...)
    complete(op, ...)
    if R.drain[op.e] and op.kind == "read" and select(1, ...) == nil then R.drain_done[op.e] = true end
    -- (an operation started to raise raises also when it ends while the
    -- round winds down: closed by it, its pipe must still be let go)
    if op.boom then
      note("%s raises on purpose", opname(op))
      error(BOOM .. " (callback of " .. opname(op) .. ")", 0)
    end
    after_callback(op)
  end
end

local function read_size(e)
  if e.read_message then
    return weighted { { 6, nil }, { 3, HDR + rnd(400) }, { 1, HDR + rnd(70000) } }
  end
  return weighted { { 6, nil }, { 3, rnd(300) }, { 2, rnd(70000) } }
end

local function main_timeout() return weighted { { 6, rnd(30) - 1 }, { 2, 0 }, { 1, 60 } } end
local function task_timeout() return weighted { { 4, nil }, { 4, rnd(20) - 1 }, { 1, 0 } } end

-- The call itself, for each kind and form.
local CALL = {
  read = function(pipe, op, last)
    if op.cb_then_timeout then return pipe:read(last, op.cb_then_timeout) end
    if op.n or (type(last) ~= "function") then return pipe:read(op.n, last) end
    if chance(2) then return pipe:read(last) end
    return pipe:read(nil, last)
  end,
  read_into = function(pipe, op, last) return pipe:read_into(op.buf, last) end,
  write = function(pipe, op, last) return pipe:write(op.w.data, last) end,
  connect = function(pipe, _, last) return pipe:connect(last) end,
  readable = function(pipe, _, last) return pipe:readable(last) end,
  writable = function(pipe, _, last) return pipe:writable(last) end,
  try_read = function(pipe, op) return pipe:try_read(op.n) end,
  read_exact = function(pipe, op, last) return pipe:read_exact(op.n, last) end,
  try_write = function(pipe, op) return pipe:try_write(op.w.data) end,
}

--- Start operation `kind` on end e in `style`: "cb" (callback), "main"
--- (waiting, with a timeout, wherever we are: a task's call suspends it),
--- "task" (waiting, maybe without a timeout: only inside a task), "now"
--- (try_*). Misuse is never made: slots are checked first.
run_op = function(e, kind, style, extra)
  if e.closed then return end
  local pipe = e.pipe
  if READS[kind] or kind == "readable" then
    if e.read_op then
      if not e.read_op.abandoned or pipe:_busy("read") > 0 then return end
      e.read_op = nil
    end
  elseif kind == "connect" then
    if e.kind ~= "server" then return end
    if e.connect_op then
      if not e.connect_op.abandoned or pipe:_busy("connect") > 0 then return end
      e.connect_op = nil
    end
    if e.state == "disconnected" then -- the instance takes its next client
      local g = new_party(e)
      e.state = "listening"
      gen_listens(g)
    end
  elseif kind == "writable" then
    if e.writable_op then
      if not e.writable_op.abandoned or pipe:_busy("writable") > 0 then return end
      e.writable_op = nil
    end
  elseif kind == "try_write" and WIN and TOLERATE.stale_try_write_error then
    return
  end
  if kind == "read_exact" then
    if e.read_message then return end -- (it joins messages: for streams only)
    if style == "cb" then style = "main" end -- (it has no callback form)
  end
  local op = new_op(e, kind, style)
  for k, v in pairs(extra or {}) do op[k] = v end
  op.readahead = np._read_ahead(pipe) > 0
  if e.kind == "server" and e.state == "disconnected" then op.expect_not_connected = true end
  if kind == "read_exact" then
    op.n = weighted { { 4, rnd(300) }, { 1, rnd(70000) } }
  elseif kind == "read" or kind == "try_read" then
    if not op.whole then op.n = op.n or read_size(e) end
  elseif kind == "read_into" then
    op.buf = np.buffer(read_size(e) or 65536)
  elseif kind == "write" or kind == "try_write" then
    op.w = new_write(e, kind, op.size)
    e.last_write_t = R.t
  end
  if style == "now" then
    -- (a main-thread waiting write may be over already: it is seen to end
    -- when its call returns)
    -- (nor is an abandoned one's end seen)
    for _, o in ipairs(e.wpending) do
      if o.abandoned or o.style == "main" then op.overtook = op.overtook or "maybe"
      else op.overtook = true end
    end
    -- (an accepted try_write ends in the background, unseen)
    if #e.tw_inflight > 0 and not op.overtook then op.overtook = "maybe" end
    note("%s%s", opname(op), op.w and (" seq %d (%d bytes)"):format(op.w.seq, op.w.total) or "")
    complete(op, CALL[kind](pipe, op))
    return
  end
  if READS[kind] or kind == "readable" then e.read_op = op end
  if kind == "connect" then e.connect_op = op end
  if kind == "writable" then e.writable_op = op end
  if kind == "write" then e.wpending[#e.wpending + 1] = op end
  if style == "cb" then
    op.chain = not R.winding and chance(READS[kind] and 2 or 5)
    op.boom = not TOLERATE.unwind_abandons and not R.winding and chance(30)
    note("%s %s%s", opname(op), kind, op.w and (" seq %d (%d bytes)"):format(op.w.seq, op.w.total) or "")
    local ok, err = pcall(CALL[kind], pipe, op, callback_for(op))
    if not ok then
      if op.cb_then_timeout and tostring(err):find("bad argument", 1, true) then
        note("%s refused: %s", opname(op), tostring(err))
        op.ncomp = 1 -- refused at once: no callback will come
        release_slot(op)
        return
      end
      violation("raised", "%s raised: %s", opname(op), tostring(err))
    elseif op.cb_then_timeout then
      violation("dropped_timeout", "%s: read(cb, %d) neither raised nor kept its timeout (README: anything "
        .. "after the callback is a bad argument)", opname(op), op.cb_then_timeout)
    end
    return
  end
  local t
  if style == "main" then t = main_timeout() else t = task_timeout() end
  if kind == "read_exact" and TOLERATE.framing_read_closed then t = t or rnd(20) end
  op.timeout = t
  note("%s %s%s timeout %s", opname(op), kind,
    op.w and (" seq %d (%d bytes)"):format(op.w.seq, op.w.total) or "", tostring(t))
  op.waiting = true
  if style == "main" then R.waiting[op] = true end
  local res = table.pack(CALL[kind](pipe, op, t))
  R.waiting[op] = nil
  op.waiting = false
  complete(op, table.unpack(res, 1, res.n))
  if R.drain[e] and READS[kind] and res[1] == nil then R.drain_done[e] = true end
end

-- ------------------------------------------------------------ ends
local function new_end(kind, pipe)
  local e = { kind = kind, pipe = pipe, closed = false, wpending = {}, tw_inflight = {}, ngen = 0 }
  if kind == "server" then
    R.nserv = R.nserv + 1
    e.name = "s" .. R.nserv
    e.read_message = R.cfg.message
    e.state = "listening"
  else
    R.ncli = R.ncli + 1
    e.name = "c" .. R.ncli
    e.read_message = R.cfg.message and not R.cfg.mixed
  end
  R.ends[#R.ends + 1] = e
  R.by_pipe[pipe] = e
  R.weak[pipe] = e
  return e
end

local function alive_ends(kind)
  local list = {}
  for _, e in ipairs(R.ends) do
    if not e.closed and (not kind or e.kind == kind) then list[#list + 1] = e end
  end
  return list
end

local function any_end(kind)
  local list = alive_ends(kind)
  return list[1] and pick(list)
end

local function close_end(e, how)
  if e.closed then return end
  note("%s %s", e.name, how)
  mark_pending(e, "CLOSED")
  end_party(e.party, "close")
  e.closed = true
  e.closed_how = how
  e.state = "closed"
  local pipe = e.pipe
  if how == "close" then
    lu.assertTrue(pipe:close())
  elseif how == "__close" then
    getmetatable(pipe).__close(pipe)
  elseif how == "__gc" then
    getmetatable(pipe).__gc(pipe)
  end
  if pipe:state() ~= "closed" then violation("state", "%s is %s after %s", e.name, pipe:state(), how) end
end

local function disconnect(e)
  note("%s disconnect()", e.name)
  mark_pending(e, "NOT_CONNECTED")
  end_party(e.party, "disconnect")
  e.state = "disconnected"
  local ok, msg, ename = e.pipe:disconnect()
  if ok ~= true then violation("status", "%s disconnect() gave %s", e.name, describe(ok, msg, ename)) end
end

-- ------------------------------------------------------------ tasks
local abandon_waiting -- forward

-- np.step from the top: an intended error unwinds the waiting calls
-- callbacks made inside it
local function pstep(t)
  local ok, err = pcall(np.step, t)
  if not ok and tostring(err):find(BOOM, 1, true) then abandon_waiting() end
  if not ok and not tostring(err):find(BOOM, 1, true) then
    if tostring(err):find("cannot resume", 1, true) then
      violation("resumed_twice", "a task was resumed after it ended: %s", tostring(err):match("[^\n]*"))
    else
      violation("error", "np.step raised: %s", tostring(err))
    end
  end
end

local TASK_KINDS = {
  { 6, "read" }, { 2, "read_into" }, { 1, "read_exact" }, { 5, "write" }, { 2, "readable" }, { 1, "writable" },
  { 2, "connect" }, { 2, "sleep" }, { 2, "event" }, { 1, "try" },
}

local function event_wait(ev)
  local t
  if not TOLERATE.event_resumes_twice and not chance(3) then t = rnd(4) - 1 end
  if t == nil and R.winding then return end
  note("task waits for event %d (timeout %s)", ev.id, tostring(t))
  local a, b, c, d = ev.ev:wait(t)
  if a == EV_VALUE then
    if b ~= ev.id then violation("event", "event %d's wait gave event %s's values", ev.id, tostring(b)) end
  elseif not (a == nil and c == "TIMEOUT" and t) then
    violation("event", "event %d's wait (timeout %s) gave %s", ev.id, tostring(t), describe(a, b, c, d))
  elseif ev.set then
    -- timed out after it was set: fair only if both came due together
    note("event %d: timed out though set", ev.id)
  end
end

local function task_body(e, n)
  R.tasks_running = R.tasks_running + 1
  for _ = 1, n do
    if R.failed or R.winding or e.closed then break end
    local what = weighted(TASK_KINDS)
    if what == "sleep" then
      np.sleep(rnd(4) - 1)
    elseif what == "event" then
      if #R.events > 0 then event_wait(pick(R.events)) end
    elseif what == "try" then
      run_op(e, pick { "try_read", "try_write" }, "now")
    else
      run_op(e, what, "task")
    end
  end
  R.tasks_running = R.tasks_running - 1
  if not R.winding and chance(40) and not TOLERATE.unwind_abandons then
    error(BOOM .. " (a task)", 0)
  end
end

-- ------------------------------------------------------------ actions
local function style() return weighted { { 5, "cb" }, { 3, "main" }, { 2, "task" } } end

local function in_style(e, kind)
  local s = style()
  if s == "task" then
    np.spawn(function()
      if not R.failed then run_op(e, kind, "task") end
    end)
  else
    run_op(e, kind, s)
  end
end

local function act_create()
  local alive = #alive_instances()
  local max = R.cfg.max
  if alive >= 4 and (max == "unlimited" or alive < max) then return end
  local opts = {}
  for k, v in pairs(R.sopts) do opts[k] = v end
  if R.nserv == 0 or (alive == 0 and chance(2)) then opts.first_pipe_instance = true end
  tick()
  local pipe, msg, ename = np.create(R.name, opts)
  note("create -> %s", describe(pipe and "pipe" or pipe, msg, ename))
  local full = max ~= "unlimited" and alive >= max
  if pipe then
    if full then violation("status", "create succeeded with %d of max_instances %d alive", alive, max) end
    local e = new_end("server", pipe)
    local g = new_party(e)
    gen_listens(g)
  elseif not (full and ename == "PIPE_BUSY") then
    violation("status", "create failed %s (%s) with %d of max_instances %s alive", tostring(ename), tostring(msg),
      alive, tostring(max))
  end
end

local function act_open()
  if #alive_ends("client") >= 6 then return end
  local alive = #alive_instances()
  local F = free_gens()
  local U = unassigned(F)
  tick()
  local pipe, msg, ename = np.open(R.name, R.copts)
  note("open -> %s (%d instances, %d free, %d clients unplaced)", describe(pipe and "pipe" or pipe, msg, ename),
    alive, #F, U)
  if pipe then
    if alive == 0 then violation("status", "open succeeded with no instance alive")
    elseif #F == 0 then violation("status", "open succeeded while no instance was free") end
    local e = new_end("client", pipe)
    local c = new_party(e)
    c.cands = {}
    for _, g in ipairs(F) do c.cands[g] = true end
    -- On Windows the open connects the instance; so it must on Linux
    if #F == 1 and U == 0 then
      tie(c, F[1], "the only instance free")
    end
  elseif ename == "NOT_FOUND" then
    if alive > 0 then violation("status", "open gave NOT_FOUND with %d instances alive", alive) end
  elseif ename == "PIPE_BUSY" then
    if alive == 0 then violation("status", "open gave PIPE_BUSY with no instance alive")
    elseif #F > U then
      violation("status", "open gave PIPE_BUSY with %d instances free, %d clients unplaced", #F, U)
    end
  else
    violation("status", "open failed %s (%s)", tostring(ename), tostring(msg))
  end
end

local function act_connect()
  local e = any_end("server")
  if e then in_style(e, "connect") end
end

local function act_read()
  local e = any_end()
  if not e then return end
  local kind = weighted { { 6, "read" }, { 2, "read_into" }, { 2, "readable" }, { 1, "read_exact" } }
  if kind == "read" and style() == "cb" and chance(15) and not TOLERATE.callback_then_timeout then
    run_op(e, "read", "cb", { cb_then_timeout = rnd(20) })
    return
  end
  in_style(e, kind)
end

local function act_write()
  local e = any_end()
  if e then in_style(e, chance(6) and "writable" or "write") end
end

local function act_try()
  local e = any_end()
  if e then run_op(e, pick { "try_read", "try_write" }, "now") end
end

local function act_cancel()
  local e = any_end()
  if not e then return end
  local what = pick { false, "connect", "read", "readable", "write", "writable" }
  if what == "connect" and e.kind ~= "server" then what = "read" end
  local reason = chance(4) and "TIMEOUT" or nil
  tick()
  e.pipe:cancel(what or nil, reason) -- (on_cancel notes it)
end

local function can_disconnect(e)
  -- Wine refuses DisconnectNamedPipe on an instance no client reached
  -- (it stays listening and takes the next client); Windows disconnects
  -- it, as Linux does. Under Wine, only instances known to have a client.
  local g = e.party
  if UNDER_WINE and g and not g.end_t and not g.attached_t then return false end
  if TOLERATE.writes_cross_disconnect and (#e.wpending > 0 or #e.tw_inflight > 0) then return false end
  if TOLERATE.read_crosses_disconnect and e.read_message and e.read_op then return false end
  if TOLERATE.readahead_crosses_disconnect and (np._read_ahead(e.pipe) > 0
    or (e.read_op and (e.read_op.abandoned or e.read_op.kind == "read_exact"))) then return false end
  if TOLERATE.empty_crosses_disconnect and WIN and e.read_message and e.read_op
    and e.read_op.kind == "readable" then return false end
  return true
end

local function act_disconnect()
  local e = any_end("server")
  if not e or not can_disconnect(e) then return end
  tick()
  disconnect(e)
  if chance(2) then run_op(e, "connect", "cb") end -- reuse: the next client
end

-- Writes outpacing the reader: many at once, with callbacks.
local function act_burst()
  local e = any_end()
  if not e then return end
  tick()
  note("%s burst", e.name)
  for _ = 1, 4 + rnd(36) do
    if e.closed or R.failed then break end
    run_op(e, "write", "cb")
  end
end

-- An instance handed to its next client at once, all before any step: the
-- old client is dropped with whatever was in flight for it (a read of the
-- server's, writes queued), the instance listens again, a client opens,
-- writes, and the server reads.
local function act_handover()
  local e = any_end("server")
  if not e or not can_disconnect(e) then return end
  tick()
  note("%s handover", e.name)
  if chance(2) then
    for _ = 1, rnd(24) do run_op(e, "write", "cb") end
  end
  local old = e.party and e.party.peer
  if old and not old.e.closed and chance(2) then
    -- a long message on its way: the server's read takes its first part
    run_op(old.e, "write", "cb", { size = "long" })
    if R.failed then return end
    pstep(1)
    if R.failed or e.closed then return end
    run_op(e, "read", "cb", { whole = true })
  elseif chance(2) then
    run_op(e, "read", "cb")
  end
  if not can_disconnect(e) then return end
  disconnect(e)
  run_op(e, "connect", "cb")
  act_open()
  local c = R.ends[#R.ends]
  if c.kind == "client" and not c.closed then
    for _ = 1, rnd(3) do run_op(c, "write", "cb") end
  end
  run_op(e, "read", "cb")
end

local function act_close()
  local e = any_end()
  if not e then return end
  if #alive_ends() <= 2 and chance(2) then return end
  if TOLERATE.framing_read_closed and e.read_op and e.read_op.kind == "read_exact" then return end
  tick()
  local how = weighted { { 6, "close" }, { 2, "__close" }, { TOLERATE.gc_by_hand and 0 or 1, "__gc" } }
  close_end(e, how)
end

local function act_step()
  tick()
  if chance(3) then np.sleep(rnd(3) - 1) else pstep(weighted { { 4, 0 }, { 2, rnd(5) } }) end
end

local function act_spawn()
  local e = any_end()
  if e then np.spawn(task_body, e, rnd(6)) end
end

local function act_event()
  if #R.events < 3 or chance(4) then
    R.nev = R.nev + 1
    R.events[#R.events + 1] = { ev = np.event(), id = R.nev, set = false }
  end
  local ev = pick(R.events)
  if chance(2) and not ev.set then
    -- set from a task (or here): a waiter's timeout may come due in the same step
    local function set()
      if ev.set then return end
      ev.set = true
      note("event %d set", ev.id)
      ev.ev:set(EV_VALUE, ev.id)
    end
    if chance(2) then np.spawn(function() np.sleep(rnd(3) - 1); set() end) else set() end
  else
    np.spawn(function() event_wait(ev) end)
  end
end

local ACTIONS = {
  { 5, act_create }, { 7, act_open }, { 7, act_connect }, { 22, act_read }, { 16, act_write },
  { 5, act_try }, { 4, act_cancel }, { 4, act_disconnect }, { 3, act_close }, { 14, act_step },
  { 3, act_spawn }, { 2, act_event }, { 2, act_burst }, { 2, act_handover },
}

-- ------------------------------------------------------------ the end
abandon_waiting = function()
  for op in pairs(R.waiting) do
    op.abandoned = true
    op.waiting = false
    note("%s abandoned (an error unwound it)", opname(op))
    if READS[op.kind] and op.party then
      op.party.abandoned_reads = (op.party.abandoned_reads and op.party.abandoned_reads .. " " or "") .. opname(op)
    end
    if op.w then
      op.w.status = "unknown"
      op.w.story = ("%s at t%d -> abandoned"):format(opname(op), op.start_t)
      stop_writes(op.e, "CANCELLED", true) -- (the layer may cancel, or leave them)
    end
  end
  R.waiting = {}
end

local function act(f)
  local ok, err = pcall(f)
  if not ok then
    if tostring(err):find(BOOM, 1, true) then
      abandon_waiting()
    elseif tostring(err):find("cannot resume", 1, true) then
      violation("resumed_twice", "a task was resumed after it ended: %s", tostring(err):match("[^\n]*"))
    else
      violation("error", "an action raised: %s", tostring(err))
    end
  end
end

local function pending_ops()
  local list = {}
  for _, op in pairs(R.ops) do
    if op.ncomp == 0 and not op.abandoned then list[#list + 1] = op end
  end
  table.sort(list, function(a, b) return a.id < b.id end)
  return list
end

local function settle(ms, cond)
  local deadline = np.now() + ms
  while not cond() and np.now() < deadline do act(function() pstep(10) end) end
  return cond()
end

local function wind_down()
  R.winding = true
  for _, ev in ipairs(R.events) do
    if not ev.set then ev.set = true; ev.ev:set(EV_VALUE, ev.id) end
  end
  -- operations with a timeout come due
  local function timed_left()
    for _, op in ipairs(pending_ops()) do
      if op.timeout or op.cb_then_timeout then return op end
    end
  end
  if not settle(5000, function() return not timed_left() end) then
    local op = timed_left()
    violation("hang", "%s (timeout %s) still pending 5 s later", opname(op), tostring(op.timeout or op.cb_then_timeout))
  end
  -- one kind closes, the other reads to the end of the stream
  local first = chance(2) and "client" or "server"
  R.drain, R.drain_done = {}, {}
  for _, e in ipairs(alive_ends()) do
    if e.kind == first then close_end(e, "close") else R.drain[e] = true end
  end
  local function drained()
    local all = true
    for e in pairs(R.drain) do
      if not R.drain_done[e] and not e.closed then
        -- (run_op starts nothing while the read slot is taken)
        act(function() run_op(e, "read", "cb") end)
        all = all and R.drain_done[e]
      end
    end
    return all
  end
  if not R.failed and not settle(10000, drained) then
    local left = {}
    for e in pairs(R.drain) do
      if not R.drain_done[e] and not e.closed then
        local p = e.party
        left[#left + 1] = ("%s (%s, state %s, peer %s%s, waiting: %s, C read slot %d)"):format(e.name,
          p and p.name or "-", e.pipe:state(), p and p.peer and p.peer.name or "unknown",
          p and p.peer and p.peer.end_t and (" ended by " .. p.peer.end_how) or "",
          e.read_op and opname(e.read_op) or "nothing", e.pipe:_busy("read"))
      end
    end
    violation("hang", "reading to the end of the stream did not end within 10 s: %s", table.concat(left, " "))
  end
  for _, e in ipairs(alive_ends()) do close_end(e, "close") end
  settle(10000, function() return np.pending() == 0 and not task.busy() end)
  if np.pending() > 0 or task.busy() then
    local list = {}
    for _, op in ipairs(pending_ops()) do list[#list + 1] = opname(op) end
    violation("hang", "after closing everything: %d operations pending, tasks busy %s; not completed: %s",
      np.pending(), tostring(task.busy()), table.concat(list, " "))
  end
end

-- Tie what the data could not: a client with a single candidate left.
local function tie_the_rest()
  for _, c in ipairs(R.plist) do
    if c.kind == "client" and not c.peer then
      local only, n = nil, 0
      for g in pairs(c.cands) do
        if not g.peer then only, n = g, n + 1 end
      end
      if n == 1 and WIN then tie(c, only, "the only candidate left") end
    end
  end
end

-- What rp received of its peer's writes, judged once everything is over.
-- Writes fall in batches (a stop - cancel, timeout, disconnect, close -
-- ends one): of a batch, rp gets the first writes whole, then maybe the
-- start of one, then nothing more of that batch.
local function check_reader(rp)
  local P = rp.peer
  if not P then return end
  local hint = unwound(rp)
  local got = {}
  for _, c in ipairs(rp.chunks) do got[c.w] = c.len end
  local last = rp.chunks[#rp.chunks]
  -- rp read on to its peer's end: everything reported done is due
  local read_all = rp.eof and P.end_how == "close"
  local batch, gap = -1, nil
  for s = 1, P.seq do
    local w = P.writes[s]
    local status = w.status
    if status == "accepted" then status = w.maybe_stopped and "unknown" or "done" end
    -- (an empty write is nothing in a byte stream)
    if status ~= "never" and (rp.e.read_message or w.sent > 0) then
      if w.epoch ~= batch then batch, gap = w.epoch, nil end
      local len = got[w]
      local due = status == "done" and (read_all or (last and last.w.seq > s))
      if len and gap then
        violation("prefix", "%s received %s seq %d (%d bytes, %s), but seq %d of the same batch (%d bytes, %s) "
          .. "%s: writes stopped together leave a prefix", rp.name, P.name, s, w.total, tostring(w.story), gap.seq,
          gap.total, tostring(gap.story), got[gap] and ("came cut (%d of %d bytes)"):format(got[gap], gap.sent)
          or "never came")
        return
      end
      if not len then
        if due then
          violation("lost", "%s never received %s seq %d (%d bytes, %s), reported done, %s%s", rp.name,
            P.name, s, w.sent, tostring(w.story), read_all and ("though it read on to the end (%s closed)"):format(P.name)
            or ("though seq %d came after it"):format(last.w.seq), hint)
          return
        end
        gap = w
      elseif len ~= w.sent then -- cut: a write stopped, or the last one rp read
        if status == "done" and (read_all or last.w ~= w) then
          violation("lost", "%s received %d of the %d bytes of %s seq %d (%s), which was reported done%s",
            rp.name, len, w.sent, P.name, s, tostring(w.story), hint)
          return
        end
        gap = w
      end
    end
  end
end

local function final_checks(baseline)
  tie_the_rest()
  for _, p in ipairs(R.plist) do -- a message's joined start no read completed
    if p.e.read_message and #p.pend > 0 and not R.failed then
      cut_header(p, p.pend)
      p.pend = ""
    end
  end
  for _, p in ipairs(R.plist) do take_early_empties(p, math.huge) end
  for _, p in ipairs(R.plist) do
    if not R.failed then check_reader(p) end
  end
  for _, op in ipairs(pending_ops()) do
    if not R.failed then violation("lost_callback", "%s never completed", opname(op)) end
  end
  if R.failed then return end
  local st = np.stats()
  if st.outstanding ~= 0 or np.pending() ~= 0 then
    violation("leak", "%d operations outstanding after the round", st.outstanding)
  end
  if st.pipes ~= baseline.pipes then
    violation("leak", "np.stats().pipes is %d after the round, %d before", st.pipes, baseline.pipes)
  end
  if task.live() ~= baseline.tasks then
    violation("leak", "%d tasks alive after the round, %d before", task.live(), baseline.tasks)
  end
  -- no one holds a pipe any more: every userdata can be collected
  for _, e in ipairs(R.ends) do e.pipe = nil end
  R.by_pipe = {}
  collectgarbage()
  collectgarbage()
  local kept = {}
  for _, e in pairs(R.weak) do kept[#kept + 1] = ("%s (closed by %s)"):format(e.name, e.closed_how) end
  if #kept > 0 then
    table.sort(kept)
    violation("leak", "pipe userdata never collected after close: %s", table.concat(kept, " "))
  end
  local o, _, ename = np.open(R.name)
  if o then
    o:close()
    violation("leak", "open succeeded after every instance was closed")
  elseif ename ~= "NOT_FOUND" then
    violation("status", "open gave %s after every instance was closed, not NOT_FOUND", tostring(ename))
  end
  if not WIN then
    -- The socket file goes with the last instance; the lock file (and the
    -- socket file kept aside for a create of the name before the next
    -- step) by the next step.
    local path = np.path(R.name)
    local function gone(f, when)
      local h, _, errno = io.open(f, "r")
      if h then h:close() end
      if h or errno ~= 2 then violation("leak", "%s is still there %s", f, when) end
    end
    gone(path, "after the last instance closed")
    np.step(0)
    for _, f in ipairs { path .. ".lock", H.idle_path(path) } do
      gone(f, "after the last instance closed and a step")
    end
  end
end

local function new_round(seed, index)
  set_state(seed)
  local mode = weighted { { 4, "byte" }, { 4, "message" }, { 2, "mixed" } }
  local max = weighted { { 2, 1 }, { 3, 2 }, { 2, 3 }, { 2, "unlimited" } }
  R = {
    seed = seed, index = index, t = 0, log = {}, logi = 0, violations = {},
    cfg = { mode = mode, message = mode ~= "byte", mixed = mode == "mixed", max = max },
    name = H.name("model"), nwid = 0, parties = {}, plist = {}, ends = {}, by_pipe = {},
    weak = setmetatable({}, { __mode = "k" }), nserv = 0, ncli = 0, nops = 0, ops = {},
    waiting = {}, depth = 0, events = {}, nev = 0, written = 0, tasks_running = 0,
    drain = {}, drain_done = {},
    stats = { ops = 0, bytes = 0, empty_byte_reads = 0 },
  }
  R.sopts = { pipe_mode = R.cfg.message and "message" or "byte", max_instances = max }
  R.copts = { pipe_mode = (R.cfg.message and not R.cfg.mixed) and "message" or "byte" }
  R.actions = SLOW and 40 + rnd(60) or 80 + rnd(250)
  return R
end

local deadline_of_action = math.huge
local function watchdog()
  if np.now() > deadline_of_action then
    deadline_of_action = math.huge
    error("MODEL WATCHDOG: an action ran for more than " .. WATCHDOG_MS .. " ms", 2)
  end
end

local function run_round(seed, index)
  H.settle()
  collectgarbage()
  collectgarbage()
  local baseline = { pipes = np.stats().pipes, tasks = task.live() }
  new_round(seed, index)
  note("round %d: seed %d, %s pipes, max_instances %s, %d actions", index, seed, R.cfg.mode,
    tostring(R.cfg.max), R.actions)
  debug.sethook(watchdog, "", 1000)
  for i = 1, R.actions do
    if R.failed then break end
    deadline_of_action = np.now() + WATCHDOG_MS
    -- always something to talk to
    if i == 1 then act(act_create) elseif i == 2 then act(act_open)
    else act(weighted(ACTIONS)) end
  end
  deadline_of_action = np.now() + 3 * WATCHDOG_MS
  local ok, err = pcall(wind_down)
  if not ok then violation("error", "winding down raised: %s", tostring(err)) end
  deadline_of_action = math.huge
  debug.sethook()
  if not R.failed then final_checks(baseline) end
  if R.failed then -- leave nothing behind for the next test
    for _, e in ipairs(R.ends) do if e.pipe and not e.closed then pcall(e.pipe.close, e.pipe) end end
    H.settle(3000)
  end
  return R
end

-- ------------------------------------------------------------ the test
TestModel = {}

local original_cancel

function TestModel:setUp()
  original_cancel = np.methods.cancel
  np.methods.cancel = function(pipe, what, reason)
    on_cancel(pipe, what, reason)
    return original_cancel(pipe, what, reason)
  end
  np._watch_cancels(on_cancel)
end

function TestModel:tearDown()
  np._watch_cancels(nil)
  np.methods.cancel = original_cancel
  R = nil
  H.settle(2000)
end

function TestModel:test_one_name_lifecycle_against_the_model()
  local tolerated = {}
  for k in pairs(TOLERATE) do tolerated[#tolerated + 1] = k end
  table.sort(tolerated)
  print(("\n  test_model: seed %d, %g s%s%s"):format(SEED, SECONDS,
    ROUNDS and (", %d rounds"):format(ROUNDS) or "",
    #tolerated > 0 and ", tolerating " .. table.concat(tolerated, " ") or ""))
  local t0 = np.now()
  local rounds, ops, bytes, seed = 0, 0, 0, SEED
  set_state(SEED)
  while true do
    rounds = rounds + 1
    local r = run_round(seed, rounds)
    ops, bytes = ops + r.stats.ops, bytes + r.stats.bytes
    if r.failed then
      local v = r.violations[1]
      local kinds = {}
      for _, x in ipairs(r.violations) do kinds[x.kind] = (kinds[x.kind] or 0) + 1 end
      local ks = {}
      for k, n in pairs(kinds) do ks[#ks + 1] = k .. "=" .. n end
      table.sort(ks)
      -- (the others' messages too: a round may not replay)
      local others = {}
      for i = 2, math.min(#r.violations, 6) do
        others[#others + 1] = ("    [%s] %s\n"):format(r.violations[i].kind, r.violations[i].msg)
      end
      lu.fail(("model violation [%s] in round %d (%s pipes, max_instances %s): %s\n"
        .. "  replay: NP_MODEL_SEED=%d NP_MODEL_ROUNDS=1 (run seed %d)\n  violations: %s\n%s"
        .. "  last events:\n%s")
        :format(v.kind, rounds, r.cfg.mode, tostring(r.cfg.max), v.msg, r.seed, SEED,
          table.concat(ks, " "), table.concat(others), v.log or ""))
    end
    if ROUNDS and rounds >= ROUNDS then break end
    if not ROUNDS and np.now() - t0 >= SECONDS * 1000 then break end
    -- the next round's seed, from this one's
    set_state(seed)
    seed = next31()
  end
  print(("  test_model: %d rounds, %d operations, %d bytes received in %.1f s")
    :format(rounds, ops, bytes, (np.now() - t0) / 1000))
end
