-- Build from a checkout:  luarocks make rockspec/namedpipe-0.1.0-1.rockspec
package = "namedpipe"
version = "0.1.0-1"
source = {
   url = "git+file:///namedpipe", -- replaced by the release URL when published
   tag = "v0.1.0",
}
description = {
   summary = "Asynchronous Windows named pipes for Lua 5.4 (Unix domain sockets elsewhere)",
   detailed = [[
Server and client pipes with connect/read/write/try_read/try_write/disconnect,
option tables mirroring Tokio's ServerOptions/ClientOptions, driven by a
polling namedpipe.step(timeout) over one I/O completion port (epoll on Linux).
]],
   license = "MIT",
}
dependencies = {
   "lua >= 5.4, < 5.5",
}
build = {
   type = "builtin",
   modules = {
      namedpipe = "lua/namedpipe.lua",
      ["namedpipe.task"] = "lua/namedpipe/task.lua",
      ["namedpipe.serve"] = "lua/namedpipe/serve.lua",
      ["namedpipe.framing"] = "lua/namedpipe/framing.lua",
      ["namedpipe.core"] = {
         sources = {
            "src/binding.c", "src/buffer.c", "src/errors.c", "src/options.c",
            "src/unix/listener_unix.c", "src/unix/loop_unix.c",
            "src/unix/names_unix.c", "src/unix/pipe_unix.c",
         },
         incdirs = { "src" },
      },
   },
   platforms = {
      windows = {
         modules = {
            ["namedpipe.core"] = {
               sources = {
                  "src/binding.c", "src/buffer.c", "src/errors.c", "src/options.c",
                  "src/win/error_win.c", "src/win/loop_win.c", "src/win/pipe_win.c",
               },
               incdirs = { "src" },
               libraries = { "advapi32" },
            },
         },
      },
   },
}
