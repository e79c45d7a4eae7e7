-- From a checkout:        luarocks --lua-version 5.4 make rockspec/namedpipe-0.1.0-1.rockspec
--                         (5.1, 5.2, 5.3 likewise; LuaJIT 2.1 loads the 5.1 build)
-- The source rock:        make rock    (build/rock/namedpipe-0.1.0-1.src.rock)
-- The test suite:         luarocks --lua-version 5.4 test rockspec/namedpipe-0.1.0-1.rockspec
rockspec_format = "3.0"
package = "namedpipe"
version = "0.1.0-1"
-- The module's _VERSION is this one: the C files get it as three numbers
-- (the Makefile reads them from this file's name).
local v_major, v_minor, v_patch = version:match("^(%d+)%.(%d+)%.(%d+)")
local VERSION_DEFINES = { "NP_VERSION_MAJOR=" .. v_major, "NP_VERSION_MINOR=" .. v_minor,
                          "NP_VERSION_PATCH=" .. v_patch }
-- The release archive is made from the repository by `make rock`
-- (tools/rock.sh: the tracked files as checked out, under namedpipe-0.1.0/)
-- and travels inside the .src.rock. LuaRocks fetches a source from a
-- temporary directory, so `luarocks pack` needs an address it can fetch:
-- `make rock` packs with a copy of this rockspec that names the archive
-- by a file:// address. Once the archive is published at a web address,
-- that address goes here and `luarocks pack` works on this file as is.
source = {
   url = "namedpipe-0.1.0.tar.gz",
   dir = "namedpipe-0.1.0",
}
description = {
   summary = "Asynchronous Windows named pipes for Lua 5.1-5.4 and LuaJIT (Unix domain sockets on Linux)",
   detailed = [[
Server and client pipes with connect/read/write/try_read/try_write/disconnect,
option tables mirroring Tokio's ServerOptions/ClientOptions, driven by a
polling namedpipe.step(timeout) over one I/O completion port (epoll on Linux);
tasks (coroutines) that wait without blocking each other, a server loop that
never leaves the name missing, line and frame helpers.
]],
   license = "MIT",
   labels = { "windows", "ipc", "pipes", "async" },
}
-- Windows: the IOCP backend. Linux: Unix domain sockets over epoll and OFD
-- locks; the BSDs and macOS have neither, so LuaRocks refuses them up front
-- instead of failing in the compiler.
supported_platforms = { "linux", "windows" }
-- One module for every Lua from 5.1 to 5.4 (src/compat.h); LuaJIT 2.1 is
-- 5.1 to LuaRocks and to C.
dependencies = {
   "lua >= 5.1, < 5.5",
}
-- tests/run.lua takes the modules from the rocks trees on LUA_PATH/LUA_CPATH
-- (`luarocks path`) when the checkout has no build/ of its own.
test_dependencies = {
   "luaunit >= 3.4",
}
test = {
   type = "command",
   script = "tests/run.lua",
}

-- Each platform gets a complete module table. LuaRocks merges a platform's
-- entries into the base table key by key (and list entry by list entry), so
-- a shared base would leave Unix sources in the Windows module: there is no
-- base `modules` at all. (A rockspec is data: no helper functions, so the
-- Lua modules are listed twice.)
build = {
   type = "builtin",
   -- the LuaLS annotations (library/namedpipe.lua) and the docs go into the
   -- rock's directory: `luarocks show --rock-dir namedpipe`
   copy_directories = { "library", "docs" },
   platforms = {
      linux = {
         modules = {
            namedpipe = "lua/namedpipe.lua",
            ["namedpipe.task"] = "lua/namedpipe/task.lua",
            ["namedpipe.serve"] = "lua/namedpipe/serve.lua",
            ["namedpipe.framing"] = "lua/namedpipe/framing.lua",
            ["namedpipe.event"] = "lua/namedpipe/event.lua",
            ["namedpipe.compat"] = "lua/namedpipe/compat.lua",
            ["namedpipe.core"] = {
               sources = {
                  "src/args.c", "src/binding.c", "src/buffer.c", "src/common.c",
                  "src/errors.c", "src/main_waits.c", "src/methods.c", "src/options.c",
                  "src/reading.c", "src/task_waits.c",
                  "src/unix/errors_unix.c", "src/unix/host_unix.c", "src/unix/io_unix.c",
                  "src/unix/listener_unix.c", "src/unix/loop_unix.c",
                  "src/unix/message_unix.c", "src/unix/names_unix.c",
                  "src/unix/peer_unix.c", "src/unix/pipe_unix.c",
               },
               defines = VERSION_DEFINES,
               incdirs = { "src" },
            },
         },
      },
      windows = {
         modules = {
            namedpipe = "lua/namedpipe.lua",
            ["namedpipe.task"] = "lua/namedpipe/task.lua",
            ["namedpipe.serve"] = "lua/namedpipe/serve.lua",
            ["namedpipe.framing"] = "lua/namedpipe/framing.lua",
            ["namedpipe.event"] = "lua/namedpipe/event.lua",
            ["namedpipe.compat"] = "lua/namedpipe/compat.lua",
            ["namedpipe.core"] = {
               sources = {
                  "src/args.c", "src/binding.c", "src/buffer.c", "src/common.c",
                  "src/errors.c", "src/main_waits.c", "src/methods.c", "src/options.c",
                  "src/reading.c", "src/task_waits.c",
                  "src/win/errors_win.c", "src/win/host_win.c", "src/win/loop_win.c",
                  "src/win/names_win.c", "src/win/peer_win.c", "src/win/pipe_win.c",
               },
               -- Vista and later: GetQueuedCompletionStatusEx, CancelIoEx
               defines = { "_WIN32_WINNT=0x0600", VERSION_DEFINES[1], VERSION_DEFINES[2],
                           VERSION_DEFINES[3] },
               incdirs = { "src" },
               -- a bare name, which both toolchains complete: MSVC links
               -- advapi32.lib, MinGW -ladvapi32
               libraries = { "advapi32" },
               -- each toolchain's own import library (LuaRocks would
               -- otherwise add the directory its search found the DLL in)
               libdirs = {},
            },
         },
      },
   },
}
