---@meta namedpipe
-- LuaLS annotations for namedpipe: completion, hover and type checks in
-- editors. This file is never loaded at run time. Point LuaLS at its
-- directory ("Lua.workspace.library"); installed with the rock, it is in
-- the directory `luarocks show --rock-dir namedpipe` prints, under library/.
-- tests/test_meta.lua checks that it names exactly the module's public API.

---@alias namedpipe.ErrorName
---| "EOF"              # end of stream: the peer closed
---| "WOULDBLOCK"       # try_read/try_write could do nothing now
---| "NOT_FOUND"        # no pipe of that name
---| "PIPE_BUSY"        # every instance is busy, or max_instances reached
---| "BROKEN_PIPE"      # writing to a pipe whose peer has gone
---| "NOT_CONNECTED"    # a server instance with no client
---| "ACCESS_DENIED"    # security, a direction not opened, a first_pipe_instance collision
---| "TIMEOUT"          # a wait ran out
---| "CLOSED"           # this end was closed while the operation was pending
---| "CANCELLED"        # cancelled with cancel()
---| "INVALID_NAME"     # the OS refused the name
---| "INVALID_ARGUMENT" # the OS refused an option value
---| "ADDRESS_IN_USE"   # Linux: the name belongs to a server in another process
---| "NO_MEMORY"        # out of memory
---| "IO_ERROR"         # any other OS failure; code says which
---| "FRAME_TOO_LARGE"  # read_frame: a length above np.max_frame_size

---@alias namedpipe.PipeMode "byte"|"message"
---@alias namedpipe.State "listening"|"connected"|"disconnected"|"closed"
---@alias namedpipe.Operation "connect"|"read"|"write"|"readable"|"writable"|"transact"

--- Options of `np.create`, Tokio's `ServerOptions`.
---@class namedpipe.ServerOptions
---@field access_inbound? boolean the server may read (default true)
---@field access_outbound? boolean the server may write (default true)
---@field first_pipe_instance? boolean fail with ACCESS_DENIED if the name exists (default false)
---@field write_dac? boolean WRITE_DAC on the server handle (default false)
---@field write_owner? boolean WRITE_OWNER (default false)
---@field access_system_security? boolean ACCESS_SYSTEM_SECURITY (default false)
---@field pipe_mode? namedpipe.PipeMode default "byte"
---@field reject_remote_clients? boolean PIPE_REJECT_REMOTE_CLIENTS (default true)
---@field max_instances? integer|"unlimited" 1..254 or "unlimited" (default)
---@field out_buffer_size? integer bytes, 0..2^32-1 (default 65536)
---@field in_buffer_size? integer bytes, 0..2^32-1 (default 65536)
---@field security? string Windows: an SDDL string; Linux: the socket file's octal mode (default "0600")

--- Options of `np.open`, Tokio's `ClientOptions`, plus retrying.
---@class namedpipe.ClientOptions
---@field read? boolean GENERIC_READ (default true)
---@field write? boolean GENERIC_WRITE (default true)
---@field security_qos_flags? "anonymous"|"identification"|"impersonation"|"delegation"|integer default "identification"
---@field pipe_mode? namedpipe.PipeMode "message" reads whole messages (default "byte")
---@field timeout? integer ms to retry while every instance is busy (PIPE_BUSY)
---@field wait_for_server? boolean also retry while the name does not exist yet

--- What `pipe:info()` reads back from the OS.
---@class namedpipe.Info
---@field mode namedpipe.PipeMode
---@field pipe_end "server"|"client"
---@field max_instances integer|"unlimited"
---@field out_buffer_size integer
---@field in_buffer_size integer

---@class namedpipe.Stats
---@field pipes integer pipe blocks alive (open, or closed and still owed a completion)
---@field outstanding integer operations outstanding
---@field os_handles integer the process's handles (Windows) or open fds (Linux); -1 if unknown
---@field read_buffers integer bytes of read buffers held (every pipe's and the loop's spares)

---@class namedpipe.Peer
---@field pid integer the other end's process id
---@field session? integer its Windows session (Windows only)
---@field uid? integer its user id (Linux only)
---@field gid? integer its group id (Linux only)

---@class namedpipe.Peek
---@field available integer bytes waiting to be read
---@field message? integer message read mode: the size of the next message

---@class namedpipe.Ready
---@field readable? true
---@field writable? true

--- A server instance (`np.create`) or a client (`np.open`).
--- Asynchronous methods take a callback as their last argument (it runs
--- from a later `np.step()`), or else wait, with an optional timeout in ms.
--- Failures return `nil, message, name, code`.
---@class namedpipe.Pipe
local Pipe = {}

--- Wait for a client: true once one is connected (also when it came first).
---@param cb_or_timeout? fun(ok: true?, msg: string?, name: namedpipe.ErrorName?, code: integer?)|integer
---@return true? ok
---@return string? msg
---@return namedpipe.ErrorName? name
---@return integer? code
function Pipe:connect(cb_or_timeout) end

--- Byte mode: what is available, up to `n` (or 64 KiB). Message mode: one
--- whole message (at most `n` bytes; the rest comes with the next read).
--- End of stream: `nil, msg, "EOF"`.
---@param n? integer
---@param cb_or_timeout? fun(data: string?, msg: string?, name: namedpipe.ErrorName?, code: integer?)|integer
---@return string? data
---@return string? msg
---@return namedpipe.ErrorName? name
---@return integer? code
---@overload fun(self: namedpipe.Pipe, cb: fun(data: string?, msg: string?, name: namedpipe.ErrorName?, code: integer?))
function Pipe:read(n, cb_or_timeout) end

--- Read on and on: `cb(data)` for every read (as `read(cb)` gives it: what
--- is available, or one whole message), until `read_stop()`, `cancel("read")`
--- or a failure, which it gets as its last call (`nil, msg, "EOF"` at the end
--- of the stream). Meanwhile the read slot is taken: other reads are refused.
--- The next read starts once the callback has returned (or raised).
---@param cb fun(data: string?, msg: string?, name: namedpipe.ErrorName?, code: integer?)
function Pipe:read_start(cb) end

--- Stop a `read_start`. From its callback nothing is pending any more; from
--- elsewhere the pending read is cancelled without a call (the callback
--- still gets bytes that read had taken), and the read slot is free once
--- that has been dispatched by a step; meanwhile a `read_start` takes that
--- read over and a waiting read waits for it. Does nothing when not reading.
function Pipe:read_stop() end

--- Read into `buf` from its first byte, as `read(#buf)` without a new
--- string; returns the byte count. The buffer is the pipe's while pending.
---@param buf namedpipe.Buffer
---@param cb_or_timeout? fun(n: integer?, msg: string?, name: namedpipe.ErrorName?, code: integer?)|integer
---@return integer? n
---@return string? msg
---@return namedpipe.ErrorName? name
---@return integer? code
function Pipe:read_into(buf, cb_or_timeout) end

--- Returns the byte count once all of `data` is in the pipe. The string is
--- not copied: it stays anchored until the write completes.
---@param data string
---@param cb_or_timeout? fun(n: integer?, msg: string?, name: namedpipe.ErrorName?, code: integer?)|integer
---@return integer? n
---@return string? msg
---@return namedpipe.ErrorName? name
---@return integer? code
function Pipe:write(data, cb_or_timeout) end

--- Never blocks: data, or `nil, msg, "WOULDBLOCK"`.
---@param n? integer
---@return string? data
---@return string? msg
---@return namedpipe.ErrorName? name
---@return integer? code
function Pipe:try_read(n) end

--- Never blocks: the bytes accepted, or `nil, msg, "WOULDBLOCK"`.
---@param data string
---@return integer? n
---@return string? msg
---@return namedpipe.ErrorName? name
---@return integer? code
function Pipe:try_write(data) end

--- True once `try_read` would not block; consumes nothing.
---@param cb_or_timeout? fun(ok: true?, msg: string?, name: namedpipe.ErrorName?, code: integer?)|integer
---@return true? ok
---@return string? msg
---@return namedpipe.ErrorName? name
---@return integer? code
function Pipe:readable(cb_or_timeout) end

--- True once `try_write` would be accepted.
---@param cb_or_timeout? fun(ok: true?, msg: string?, name: namedpipe.ErrorName?, code: integer?)|integer
---@return true? ok
---@return string? msg
---@return namedpipe.ErrorName? name
---@return integer? code
function Pipe:writable(cb_or_timeout) end

--- What was ready first, as Tokio's `ready(Interest)`.
---@param interest "readable"|"writable"|"both"
---@param timeout? integer
---@return namedpipe.Ready? ready
---@return string? msg
---@return namedpipe.ErrorName? name
---@return integer? code
function Pipe:ready(interest, timeout) end

--- The next line without "\n" or "\r\n"; at the end a last unterminated
--- line, then `nil, msg, "EOF"`.
---@param timeout? integer
---@return string? line
---@return string? msg
---@return namedpipe.ErrorName? name
---@return integer? code
function Pipe:read_line(timeout) end

--- Iterator over `read_line()`, ending at end of stream (or CLOSED).
---@return fun(): string?
function Pipe:lines() end

--- Exactly `n` bytes, or `nil, msg, name` (what arrived stays readable).
---@param n integer
---@param timeout? integer
---@return string? data
---@return string? msg
---@return namedpipe.ErrorName? name
---@return integer? code
function Pipe:read_exact(n, timeout) end

--- Writes a length-prefixed frame (4-byte big-endian length).
---@param data string
---@param cb_or_timeout? fun(n: integer?, msg: string?, name: namedpipe.ErrorName?, code: integer?)|integer
---@return integer? n
---@return string? msg
---@return namedpipe.ErrorName? name
---@return integer? code
function Pipe:write_frame(data, cb_or_timeout) end

--- Reads one length-prefixed frame.
---@param timeout? integer
---@return string? data
---@return string? msg
---@return namedpipe.ErrorName? name
---@return integer? code
function Pipe:read_frame(timeout) end

--- Cancels pending operations of one kind (all when nil); they complete
--- with `reason` (CANCELLED by default, or TIMEOUT). "read", "readable"
--- and "transact" name the same slot, and each ends a `read_start`.
---@param what? namedpipe.Operation
---@param reason? "CANCELLED"|"TIMEOUT"
function Pipe:cancel(what, reason) end

--- Server only: drop the client; `connect()` then takes the next one.
--- Everything started for that client ends NOT_CONNECTED, and nothing held
--- for it (writes not yet in the pipe, bytes read ahead) reaches the next.
---@return true? ok
---@return string? msg
---@return namedpipe.ErrorName? name
---@return integer? code
function Pipe:disconnect() end

---@return namedpipe.Info? info
---@return string? msg
---@return namedpipe.ErrorName? name
---@return integer? code
function Pipe:info() end

---@return namedpipe.State
function Pipe:state() end

--- Who is on the other end (a server: its client; a client: its server).
---@return namedpipe.Peer? peer
---@return string? msg
---@return namedpipe.ErrorName? name
---@return integer? code
function Pipe:peer() end

--- Server only: the connected client's account: the name (Windows
--- `DOMAIN\user`, Linux the user name) and an id (the SID string, or the
--- numeric uid).
---@return string? user
---@return string? id_or_msg
---@return namedpipe.ErrorName? name
---@return integer? code
function Pipe:peer_user() end

--- What is waiting to be read, consuming nothing.
---@return namedpipe.Peek? peek
---@return string? msg
---@return namedpipe.ErrorName? name
---@return integer? code
function Pipe:peek() end

--- Message read mode only: write `request` and read the one reply, as one
--- operation (TransactNamedPipe on Windows).
---@param request string
---@param cb_or_timeout? fun(reply: string?, msg: string?, name: namedpipe.ErrorName?, code: integer?)|integer
---@return string? reply
---@return string? msg
---@return namedpipe.ErrorName? name
---@return integer? code
function Pipe:transact(request, cb_or_timeout) end

--- Idempotent; pending operations complete with CLOSED.
---@return true
function Pipe:close() end

--- Bytes for `pipe:read_into` (`np.buffer(size)`); `#buf` is its size.
---@class namedpipe.Buffer
---@operator len: integer
local Buffer = {}

--- Its bytes `i..j`, counted as `string.sub` counts them.
---@param i? integer
---@param j? integer
---@return string
function Buffer:sub(i, j) end

--- A one-shot event for tasks (`np.event()`).
---@class namedpipe.Event
local Event = {}

--- Stores the values and wakes every waiter; false if it was set already.
---@param ... any
---@return boolean
function Event:set(...) end

--- The values given to `set` (at once if set); on timeout
--- `nil, "timed out", "TIMEOUT", 0`.
---@param timeout? integer
---@return any ...
function Event:wait(timeout) end

---@return boolean
function Event:is_set() end

--- `np.serve`'s options: create's, and how many instances wait for clients.
---@class namedpipe.ServeOptions: namedpipe.ServerOptions
---@field listeners? integer instances listening at all times (default 4, or max_instances if fewer)

--- What `np.serve` returns.
---@class namedpipe.Server
---@field active integer handlers running now
---@field accepted integer clients accepted so far
---@field closed boolean true once close() was called
local Server = {}

--- Stop listening; running handlers finish on their own.
function Server.close() end

---@class namedpipe
---@field _VERSION string the module's version, as in its rockspec
---@field methods table<string, function> the pipes' methods (their metatable's __index)
---@field max_frame_size integer the longest frame `read_frame` takes (8 MiB): longer is FRAME_TOO_LARGE
local np = {}

--- A server instance, state "listening" (Tokio's `ServerOptions::create`).
--- Names: `\\.\pipe\NAME`; on Linux also an absolute socket path.
---@param name string
---@param opts? namedpipe.ServerOptions
---@return namedpipe.Pipe? pipe
---@return string? msg
---@return namedpipe.ErrorName? name
---@return integer? code
function np.create(name, opts) end

--- A connected client (Tokio's `ClientOptions::open`); with `timeout` it
--- retries while busy (with `wait_for_server`, also while missing) until
--- that many ms have passed (no timeout: one try).
---@param name string
---@param opts? namedpipe.ClientOptions
---@return namedpipe.Pipe? pipe
---@return string? msg
---@return namedpipe.ErrorName? name
---@return integer? code
function np.open(name, opts) end

--- Dispatch finished operations and run their callbacks, due tasks and
--- timers; waits up to `timeout_ms` for the first one. Returns how many.
---@param timeout_ms? integer
---@return integer
function np.step(timeout_ms) end

--- Operations started and not yet dispatched.
---@return integer
function np.pending() end

--- A monotonic clock in milliseconds.
---@return number
function np.now() end

--- A zeroed buffer of `size` bytes (1 to 2^31-1) for `pipe:read_into`.
---@param size integer
---@return namedpipe.Buffer
function np.buffer(size) end

--- What the OS sees: the socket file on Linux, the name on Windows; nil,
--- msg, name, code where there is none (a path too long, a directory that
--- fails its checks).
---@param name string
---@return string? path
---@return string? msg
---@return namedpipe.ErrorName? name
---@return integer? code
function np.path(name) end

---@return namedpipe.Stats
function np.stats() end

--- A descriptor a host's event loop polls: readable whenever `np.step(0)`
--- has work, quiet once it has done it (Linux); nil on Windows.
---@return integer?
function np.fd() end

--- Milliseconds until the next timer (a sleep, a task's timeout) is due,
--- or nil when there is none.
---@return number?
function np.timeout() end

--- Run `fn(...)` as a task from the next `np.step`.
---@param fn fun(...)
---@param ... any
---@return thread
function np.spawn(fn, ...) end

--- Spawn `fn` if given, then step until no task, timer or operation is left.
---@param fn? fun(...)
---@param ... any
function np.run(fn, ...) end

--- Suspend the calling task for `ms`; elsewhere step the loop for `ms`.
---@param ms number
function np.sleep(ms) end

--- The server loop: keeps `opts.listeners` instances listening (default 4,
--- or `max_instances` if fewer) and runs `handler(pipe)`
--- in a task per client; the pipe is closed when the handler returns.
---@param name string
---@param opts? namedpipe.ServeOptions
---@param handler fun(pipe: namedpipe.Pipe)
---@return namedpipe.Server? server
---@return string? msg
---@return namedpipe.ErrorName? name
---@return integer? code
function np.serve(name, opts, handler) end

---@return namedpipe.Event
function np.event() end

return np
