#!/usr/bin/env bash
# tools/rock-check.sh — `make rock-check`: LuaRocks itself builds and installs
# the source rock (`make rock`) on both platforms, and what it installed works.
#
#   linux    luarocks installs the rock into a new tree, build/rock-check/linux
#            (a LuaRocks config naming only that tree and no server); the
#            round trip (tools/rock-roundtrip.lua) runs with the module paths
#            set to that tree alone; then `luarocks test` runs the rockspec's
#            test section in the rock's unpacked source, against that tree
#            (a part of the suite: ROCK_TEST_ARGS, luaunit options)
#   luas     the same rock installed by `luarocks --lua-version X` for X in
#            5.1 5.2 5.3 (each against Debian's liblua5.X-dev) into that
#            tree, and the round trip run by lua5.X with the tree's X part
#            alone; luajit runs it on the 5.1 build (LuaJIT is 5.1 to
#            LuaRocks and to C)
#   windows  the same rockspec cross-built by LuaRocks with mingw-w64: a
#            config that makes LuaRocks take the windows/mingw32 platforms,
#            the mingw compilers, the Windows Lua's headers and lua54.dll
#            from build/winlua; the tree build/rock-check/windows is checked
#            (core.dll imports lua54.dll and advapi32.dll, nothing of
#            src/unix/ was compiled, _WIN32_WINNT was defined) and the round
#            trip runs from it under Wine (tools/wine-run.sh)
#   msvc     no MSVC here: LuaRocks's MSVC setup (the windows/win32
#            platforms, cl and link) runs with stand-ins for cl and link that
#            record their command lines and compile nothing; the record must
#            show the Windows sources only, _WIN32_WINNT, advapi32.lib and
#            lua54.lib (build/rock-check/msvc-commands.log)
#   others   LuaRocks taking the platforms of macOS and FreeBSD (no epoll, no
#            OFD locks) must refuse the rock as unsupported, before compiling
#
# Logs: build/rock-check/*.log. Prints "rock-check: ok" last and exits 0, or
# names what failed and exits 1.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 1
OUT="$ROOT/build/rock-check"
WINLUA="$ROOT/build/winlua"
ROCK_TEST_ARGS=${ROCK_TEST_ARGS:--p TestBasic -p TestTasks -p TestExamples -p TestMeta -p TestVersion}

failed=()
fail() { printf 'rock-check: FAILED: %s\n' "$*" >&2; failed+=("$1"); }
say() { printf 'rock-check: %s\n' "$*"; }
# run a logged step; on failure show the log's tail
logged() {
    local log=$1; shift
    if ! "$@" >"$log" 2>&1; then
        tail -n 30 "$log" >&2
        return 1
    fi
}

tools/rock.sh || { echo "rock-check: FAILED: make rock"; exit 1; }
specs=(rockspec/*.rockspec)
name=$(basename "${specs[0]}" .rockspec)   # namedpipe-0.1.0-1
nv=${name%-*}                              # namedpipe-0.1.0
version=${nv#namedpipe-}                   # 0.1.0
rock="$ROOT/build/rock/$name.src.rock"

rm -rf "$OUT"
mkdir -p "$OUT" "$OUT/run"

# ------------------------------------------------------------------ Linux
lt="$OUT/linux"
cat >"$OUT/config-linux.lua" <<EOF
-- build/rock-check only: one tree, no servers; luaunit comes from Debian
rocks_trees = { [[$lt]] }
rocks_servers = {}
local_cache = [[$OUT/cache]]
rocks_provided = { luaunit = "3.4-1" }
EOF
lr_linux() { LUAROCKS_CONFIG="$OUT/config-linux.lua" luarocks --lua-version 5.4 "$@"; }

if logged "$OUT/linux-install.log" lr_linux install "$rock"; then
    grep -q 'src/win/' "$OUT/linux-install.log" && fail "linux: Windows sources compiled (linux-install.log)"
    [ -f "$lt/lib/lua/5.4/namedpipe/core.so" ] || fail "linux: no namedpipe/core.so in the tree"
    [ -f "$lt/lib/luarocks/rocks-5.4/namedpipe/$version-1/library/namedpipe.lua" ] ||
        fail "linux: the LuaLS annotations are not in the rock's directory"
    # from a directory of its own ($OUT/run): nothing of the checkout on the paths
    if (cd "$OUT/run" && lua5.4 "$ROOT/tools/rock-roundtrip.lua" "$lt" "$version") >"$OUT/linux-roundtrip.log" 2>&1; then
        say "linux: $(tail -n 1 "$OUT/linux-roundtrip.log")"
    else
        cat "$OUT/linux-roundtrip.log" >&2
        fail "linux: round trip from the installed tree"
    fi
    # `luarocks test`: the rockspec's test section, run in the rock's own
    # source (no build/ there: the module comes from the tree)
    mkdir -p "$OUT/src"
    (cd "$OUT/src" && unzip -q "$rock" && tar -xzf "$nv.tar.gz")
    lpath="$lt/share/lua/5.4/?.lua;$lt/share/lua/5.4/?/init.lua;;"
    lcpath="$lt/lib/lua/5.4/?.so;;"
    # shellcheck disable=SC2086  # ROCK_TEST_ARGS is a list of options
    if (cd "$OUT/src/$nv" && LUA_PATH_5_4="$lpath" LUA_CPATH_5_4="$lcpath" \
            LUAROCKS_CONFIG="$OUT/config-linux.lua" \
            luarocks --lua-version 5.4 test "rockspec/$name.rockspec" -- $ROCK_TEST_ARGS) \
            >"$OUT/linux-test.log" 2>&1; then
        say "linux: luarocks test: $(tr -d '\r' <"$OUT/linux-test.log" | grep -E '^linux: [0-9]+ passed' | tail -n 1)"
    else
        tail -n 40 "$OUT/linux-test.log" >&2
        fail "linux: luarocks test (linux-test.log)"
    fi
else
    fail "linux: luarocks install (linux-install.log)"
fi

# ------------------------------------------- Lua 5.1, 5.2, 5.3 and LuaJIT
# (5.4 is the tree above.) Each version builds from the rock on its own
# (LuaRocks unpacks and compiles it anew), into its part of the tree.
for v in 5.1 5.2 5.3; do
    if logged "$OUT/linux-$v-install.log" env LUAROCKS_CONFIG="$OUT/config-linux.lua" \
            luarocks --lua-version "$v" install "$rock"; then
        grep -q 'src/win/' "$OUT/linux-$v-install.log" && fail "lua$v: Windows sources compiled (linux-$v-install.log)"
        grep -q -- "-I/usr/include/lua$v" "$OUT/linux-$v-install.log" ||
            fail "lua$v: not compiled against Lua $v's headers (linux-$v-install.log)"
        [ -f "$lt/lib/lua/$v/namedpipe/core.so" ] || fail "lua$v: no lib/lua/$v/namedpipe/core.so in the tree"
    else
        fail "lua$v: luarocks --lua-version $v install (linux-$v-install.log)"
        continue
    fi
    luas=("lua$v")
    [ "$v" = 5.1 ] && command -v luajit >/dev/null && luas+=(luajit)
    for lua in "${luas[@]}"; do
        if (cd "$OUT/run" && "$lua" "$ROOT/tools/rock-roundtrip.lua" "$lt" "$version") \
                >"$OUT/linux-$lua-roundtrip.log" 2>&1; then
            say "$lua: $(tail -n 1 "$OUT/linux-$lua-roundtrip.log")"
        else
            cat "$OUT/linux-$lua-roundtrip.log" >&2
            fail "$lua: round trip from the installed tree (Lua $v build)"
        fi
    done
done

# ------------------------------------------------------- Windows (mingw-w64)
wt="$OUT/windows"
[ -x "$WINLUA/bin/lua.exe" ] || tools/deps.sh >"$OUT/deps.log" 2>&1 || fail "windows: tools/deps.sh (deps.log)"
cat >"$OUT/config-mingw.lua" <<EOF
-- LuaRocks on Linux building for Windows with mingw-w64: the platforms of
-- LuaRocks's MinGW setup, the cross compilers, and the Windows Lua of
-- build/winlua (headers; lua54.dll, which MinGW links directly).
platforms = { "windows", "win32", "mingw32", "mingw" }
rocks_trees = { [[$wt]] }
rocks_servers = {}
local_cache = [[$OUT/cache]]
home_tree = [[$OUT/home]]
lua_interpreter = "lua.exe"
-- where the autodetected external dependency advapi32 is looked for
-- (libadvapi32.a); on Windows that is C:\Windows\System32
external_deps_dirs = { [[/usr/x86_64-w64-mingw32]] }
variables = {
   LUA_DIR = [[$WINLUA]],
   LUA_BINDIR = [[$WINLUA/bin]],
   LUA_INCDIR = [[$WINLUA/include]],
   LUA_LIBDIR = [[$WINLUA/bin]],
   LUALIB = "lua54.dll",
   CC = "x86_64-w64-mingw32-gcc",
   LD = "x86_64-w64-mingw32-gcc",
   AR = "x86_64-w64-mingw32-ar",
   RANLIB = "x86_64-w64-mingw32-ranlib",
   RC = "x86_64-w64-mingw32-windres",
   CFLAGS = "-O2",
   LIBFLAG = "-shared",
}
EOF
# LUAROCKS_CROSS_COMPILING: LuaRocks keeps its Unix file tools while the
# platforms say Windows
if logged "$OUT/windows-install.log" env LUAROCKS_CROSS_COMPILING=1 \
        LUAROCKS_CONFIG="$OUT/config-mingw.lua" luarocks --lua-version 5.4 install "$rock"; then
    log="$OUT/windows-install.log"
    dll="$wt/lib/lua/5.4/namedpipe/core.dll"
    grep -q 'src/unix/' "$log" && fail "windows: Unix sources compiled (windows-install.log)"
    grep -q -- '-D_WIN32_WINNT=0x0600' "$log" || fail "windows: _WIN32_WINNT not defined (windows-install.log)"
    grep -q -- '-ladvapi32' "$log" || fail "windows: advapi32 not linked (windows-install.log)"
    if [ -f "$dll" ]; then
        imports=$(x86_64-w64-mingw32-objdump -p "$dll" | sed -n 's/^[[:space:]]*DLL Name: //p' | tr '\n' ' ')
        for want in lua54.dll ADVAPI32.dll; do
            grep -qi "$want" <<<"$imports" || fail "windows: core.dll does not import $want (imports: $imports)"
        done
    else
        fail "windows: no namedpipe/core.dll in the tree"
    fi
    wtree="Z:${wt//\//\\}"
    if tools/wine-run.sh "$WINLUA/bin/lua.exe" tools/rock-roundtrip.lua "$wtree" "$version" \
            >"$OUT/windows-roundtrip.log" 2>&1; then
        say "windows: $(tr -d '\r' <"$OUT/windows-roundtrip.log" | grep 'rock round trip ok' | tail -n 1)"
    else
        cat "$OUT/windows-roundtrip.log" >&2
        fail "windows: round trip from the installed tree under Wine"
    fi
else
    fail "windows: luarocks install, cross-built (windows-install.log)"
fi

# ------------------------------------------- MSVC command lines (recorded)
ms="$OUT/msvc"
mkdir -p "$ms/bin" "$ms/lua/include" "$ms/lua/lib" "$ms/system32"
for tool in cl link; do
    cat >"$ms/bin/$tool" <<EOF
#!/bin/sh
# stand-in for MSVC's $tool: record the command line, make the output file
echo "$tool \$*" >>"$OUT/msvc-commands.log"
for a in "\$@"; do case "\$a" in -Fo*) : >"\${a#-Fo}" ;; -out:*) : >"\${a#-out:}" ;; esac; done
EOF
    chmod +x "$ms/bin/$tool"
done
cp "$WINLUA"/include/*.h "$ms/lua/include/"
: >"$ms/lua/lib/lua54.lib"
: >"$ms/system32/advapi32.dll"
cat >"$OUT/config-msvc.lua" <<EOF
-- LuaRocks's MSVC setup (what its Windows installer writes), with cl and
-- link replaced by recorders
platforms = { "windows", "win32" }
rocks_trees = { [[$ms/tree]] }
rocks_servers = {}
local_cache = [[$OUT/cache]]
home_tree = [[$OUT/home]]
-- where the autodetected advapi32 is found (C:\Windows\System32 on Windows)
external_deps_dirs = { [[$ms/system32]] }
variables = {
   LUA_INCDIR = [[$ms/lua/include]],
   LUA_LIBDIR = [[$ms/lua/lib]],
   LUALIB = "lua54.lib",
   CC = [[$ms/bin/cl]],
   LD = [[$ms/bin/link]],
}
EOF
: >"$OUT/msvc-commands.log"
if logged "$OUT/msvc-install.log" env LUAROCKS_CROSS_COMPILING=1 \
        LUAROCKS_CONFIG="$OUT/config-msvc.lua" luarocks --lua-version 5.4 install "$rock"; then
    cmds="$OUT/msvc-commands.log"
    grep -q 'src/unix/' "$cmds" && fail "msvc: Unix sources compiled (msvc-commands.log)"
    [ "$(grep -c '^cl .*-D_WIN32_WINNT=0x0600' "$cmds")" -eq "$(grep -c '^cl ' "$cmds")" ] ||
        fail "msvc: a cl command without _WIN32_WINNT (msvc-commands.log)"
    grep -E -q '^link -dll .*lua54\.lib .*src/win/pipe_win\.obj.* advapi32\.lib$' "$cmds" ||
        fail "msvc: link does not take lua54.lib, the objects and advapi32.lib (msvc-commands.log)"
    say "msvc: $(grep -c '^cl ' "$cmds") cl commands and $(grep -c '^link ' "$cmds") link recorded, as the rockspec asks"
else
    fail "msvc: luarocks install with the recording cl and link (msvc-install.log)"
fi

# ------------------------------------------------ unsupported platforms
for plats in '"unix", "bsd", "macosx", "macos"' '"unix", "bsd", "freebsd"'; do
    cat >"$OUT/config-other.lua" <<EOF
platforms = { $plats }
rocks_trees = { [[$OUT/other]] }
rocks_servers = {}
local_cache = [[$OUT/cache]]
EOF
    LUAROCKS_CROSS_COMPILING=1 LUAROCKS_CONFIG="$OUT/config-other.lua" \
        luarocks --lua-version 5.4 install "$rock" >"$OUT/other-install.log" 2>&1
    if grep -q "does not support" "$OUT/other-install.log" && ! grep -q 'gcc\|cc ' "$OUT/other-install.log"; then
        say "refused as unsupported: $(grep -o 'does not support.*' "$OUT/other-install.log")"
    else
        cat "$OUT/other-install.log" >&2
        fail "platforms { $plats } not refused as unsupported"
    fi
done

if [ "${#failed[@]}" -gt 0 ]; then
    echo "rock-check: FAILED: ${failed[*]}"
    exit 1
fi
echo "rock-check: ok (LuaRocks built, installed and ran $name on Linux for Lua 5.1-5.4 and LuaJIT and, cross-built, under Wine; MSVC command lines as the rockspec asks)"
