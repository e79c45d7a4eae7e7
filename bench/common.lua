--[[
bench/common.lua - what bench.lua (namedpipe) and bench_luv.lua (luv) share,
so both measure exactly the same workload and print the same lines:
command-line options, the 64-byte message, the stream's data blocks, and the
median/min/max report line. Loaded with dofile next to the script.
]]
local C = {}

C.CHUNK = 65536

-- bench.lua also runs under LuaJIT (make bench's LuaJIT column), which
-- parses Lua 5.1: no `//`, and these two are 5.2's and 5.3's.
function C.idiv(a, b) return math.floor(a / b) end
local unpack = table.unpack or unpack -- luacheck: ignore 113
local tointeger = math.tointeger or function(x)
  if x and x == math.floor(x) then return x end
end

--- Parse arg into opt (which holds the defaults). `prog` names the script
--- in messages; `api` is called with --api's value (nil: ignore it).
function C.parse_options(prog, opt, api)
  local a, i = arg or {}, 1
  local num = { ["--runs"] = "runs", ["--pp"] = "pp", ["--stream-mib"] = "stream_mib",
                ["--churn"] = "churn", ["--pairs"] = "pairs", ["--steps"] = "steps",
                ["--inflight"] = "inflight", ["--queued"] = "queued" }
  while i <= #a do
    local k = a[i]
    if k == "--quick" then opt.quick = true; i = i + 1
    elseif k == "--only" then opt.only = a[i + 1]; i = i + 2
    elseif k == "--api" then
      if api then api(a[i + 1]) end
      i = i + 2
    elseif num[k] then
      opt[num[k]] = tointeger(tonumber(a[i + 1]))
      if not opt[num[k]] or opt[num[k]] < 1 then
        io.stderr:write(prog, ": ", k, " needs a positive integer\n"); os.exit(2)
      end
      i = i + 2
    else
      io.stderr:write(prog, ": unknown option ", tostring(k), "\n"); os.exit(2)
    end
  end
  if opt.quick then
    opt.pp, opt.stream_mib, opt.churn, opt.pairs, opt.steps = 300, 2, 50, 20, 10000
    opt.queued = 300
    opt.runs = 1
  end
  return opt
end

--- Is workload w selected by --only (all when --only is absent)?
function C.wanted(opt, w)
  if not opt.only then return true end
  for x in opt.only:gmatch("[^,]+") do if x == w then return true end end
  return false
end

--- The i-th 64-byte ping-pong message (its number first, so order shows).
function C.msg_for(i)
  local head = ("%010d:"):format(i)
  return head .. string.rep(string.char(97 + i % 26), 64 - #head)
end

--- k blocks of CHUNK bytes, differing by block and position.
function C.make_blocks(k)
  local blocks = {}
  for b = 1, k do
    local parts = {}
    for j = 0, 255 do
      local t = {}
      for x = 0, 255 do t[#t + 1] = (x * 31 + j * 7 + b * 101) % 256 end
      parts[#parts + 1] = string.char(unpack(t))
    end
    blocks[b] = table.concat(parts)
    assert(#blocks[b] == C.CHUNK)
  end
  return blocks
end

function C.median(t)
  local s = {}
  for i = 1, #t do s[i] = t[i] end
  table.sort(s)
  local n = #s
  local mid = C.idiv(n, 2)
  return n % 2 == 1 and s[mid + 1] or (s[mid] + s[mid + 1]) / 2, s[1], s[n]
end

--- One result line: "workload metric=median [min= max=] runs=N [extra]".
function C.report(workload, metric, vals, extra)
  local m, lo, hi = C.median(vals)
  local line
  if #vals == 1 then
    line = ("%s %s=%.1f runs=1"):format(workload, metric, m)
  else
    line = ("%s %s=%.1f min=%.1f max=%.1f runs=%d"):format(workload, metric, m, lo, hi, #vals)
  end
  io.write(line, extra and (" " .. extra) or "", "\n")
  io.stdout:flush()
end

return C
