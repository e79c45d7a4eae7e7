#!/usr/bin/env bash
# tools/deps.sh — install the Debian packages the build and tests need, then
# build with mingw-w64, from Debian's source packages:
#   build/winlua/  a Windows Lua 5.4 (lua.exe + lua54.dll + headers + import
#                  lib) from lua5.4
#   build/winjit/  a Windows LuaJIT 2.1 (luajit.exe + lua51.dll + headers +
#                  import lib, its jit.* modules) from luajit
#
# Idempotent: apt-get is only called if a package is missing (or a source
# package is needed and no deb-src entry exists); each Windows build is
# skipped when its interpreter (build/winlua/bin/lua.exe,
# build/winjit/bin/luajit.exe) already exists (delete the directory to
# rebuild). Logs: build/deps-apt.log, build/winlua-build.log,
# build/winjit-build.log.
# Env: NP_EXTRA_PACKAGES="pkg ..." adds packages to the list.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD="$ROOT/build"
APTLOG="$BUILD/deps-apt.log"
LUALOG="$BUILD/winlua-build.log"
WINLUA="$BUILD/winlua"
JITLOG="$BUILD/winjit-build.log"
WINJIT="$BUILD/winjit"
mkdir -p "$BUILD"

PACKAGES=(wine wine64 gcc-mingw-w64-x86-64 lua5.4 liblua5.4-dev luarocks lua-unit
          socat netcat-openbsd dpkg-dev valgrind
          # the JSON library of the JSON-RPC examples (pure Lua: the Windows
          # lua.exe loads it from Z:\usr\share\lua\5.4 under Wine)
          lua-dkjson lua-luv
          # the other Luas the module is built and tested against
          lua5.1 liblua5.1-0-dev lua5.2 liblua5.2-dev lua5.3 liblua5.3-dev
          luajit libluajit-5.1-dev
          # a bare Debian 12 (git + make) lacks these too: native compiler +
          # libc headers for `make linux`, pkg-config for the Lua cflags,
          # binutils for `strip` used by Lua's mingw target.
          gcc libc6-dev pkg-config binutils)
# more packages to ensure, space separated (e.g. NP_EXTRA_PACKAGES="gdb strace")
read -r -a extra <<<"${NP_EXTRA_PACKAGES:-}"
PACKAGES+=("${extra[@]}")

say() { printf 'deps: %s\n' "$*"; }
die() { printf 'deps: ERROR: %s\n' "$*" >&2; exit 1; }

# run a command as root (directly, or through sudo)
if [ "$(id -u)" -eq 0 ]; then
    asroot() { "$@"; }
elif command -v sudo >/dev/null 2>&1; then
    asroot() { sudo "$@"; }
else
    asroot() { printf 'deps: ERROR: need root (or sudo) to run: %s\n' "$*" >&2; exit 1; }
fi
# fail early and visibly (asroot may run with its output going to a log)
check_root() {
    [ "$(id -u)" -eq 0 ] || command -v sudo >/dev/null 2>&1 ||
        die "not root and no sudo: cannot run apt-get (missing: ${missing[*]:-none}; sources needed: lua5.4 $need_lua, luajit $need_jit)"
}

# run a logged command; on failure show the log tail and stop
logged() {
    local log=$1; shift
    if ! "$@" >>"$log" 2>&1; then
        printf 'deps: FAILED: %s\n--- last lines of %s ---\n' "$*" "$log" >&2
        tail -n 25 "$log" >&2
        exit 1
    fi
}

export DEBIAN_FRONTEND=noninteractive
APT_UPDATED=0
apt_update_once() {
    if [ "$APT_UPDATED" -eq 0 ]; then
        check_root
        say "apt-get update (log: ${APTLOG#"$ROOT"/})"
        logged "$APTLOG" asroot env DEBIAN_FRONTEND=noninteractive apt-get update
        APT_UPDATED=1
    fi
}

is_installed() {
    [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" = installed ]
}

have_source() {
    apt-cache showsrc "$1" 2>/dev/null | grep -q "^Package: $1\$"
}

# Add a deb-src entry mirroring the binary sources (deb822 debian.sources,
# or the classic one-line sources.list on older-style installs).
add_deb_src() {
    local tmp
    tmp=$(mktemp)
    if [ -f /etc/apt/sources.list.d/debian.sources ]; then
        sed -e 's/^Types:.*$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources >"$tmp"
        say "adding deb-src entry /etc/apt/sources.list.d/debian-src.sources"
        asroot install -m 0644 "$tmp" /etc/apt/sources.list.d/debian-src.sources
    elif [ -f /etc/apt/sources.list ] && grep -qE '^[[:space:]]*deb[[:space:]]' /etc/apt/sources.list; then
        sed -nE 's/^[[:space:]]*deb([[:space:]])/deb-src\1/p' /etc/apt/sources.list >"$tmp"
        say "adding deb-src entry /etc/apt/sources.list.d/debian-src.list"
        asroot install -m 0644 "$tmp" /etc/apt/sources.list.d/debian-src.list
    else
        rm -f "$tmp"
        die "no Debian apt source found to derive a deb-src entry from"
    fi
    rm -f "$tmp"
}

# ---------------------------------------------------------------- packages
: >"$APTLOG"
missing=()
for p in "${PACKAGES[@]}"; do
    is_installed "$p" || missing+=("$p")
done

need_lua=0 need_jit=0
[ -x "$WINLUA/bin/lua.exe" ] || need_lua=1
[ -x "$WINJIT/bin/luajit.exe" ] || need_jit=1

# deb-src must be configured before the (single) apt-get update
if { [ "$need_lua" -eq 1 ] && ! have_source lua5.4; } ||
   { [ "$need_jit" -eq 1 ] && ! have_source luajit; }; then
    check_root
    add_deb_src
    apt_update_once
fi

if [ "${#missing[@]}" -gt 0 ]; then
    say "installing: ${missing[*]}"
    apt_update_once
    logged "$APTLOG" asroot env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y --no-install-recommends "${missing[@]}"
else
    say "all Debian packages present"
fi

# ------------------------------------------------------- Windows Lua build
build_winlua() {
    if ! have_source lua5.4; then
        apt_update_once
        have_source lua5.4 || die "apt-cache cannot find source package lua5.4 (deb-src?)"
    fi

    start=$(date +%s)
    : >"$LUALOG"
    SRCDIR="$BUILD/winlua-src"
    rm -rf "$SRCDIR"
    mkdir -p "$SRCDIR"
    say "fetching Debian lua5.4 source (log: ${LUALOG#"$ROOT"/})"
    (cd "$SRCDIR" && logged "$LUALOG" apt-get source lua5.4)

    luadir=$(find "$SRCDIR" -mindepth 1 -maxdepth 1 -type d -name 'lua5.4-*' | head -n1)
    { [ -n "$luadir" ] && [ -f "$luadir/src/lua.c" ]; } || die "unpacked lua5.4 source not found in $SRCDIR"
    orig=$(find "$SRCDIR" -maxdepth 1 -name 'lua5.4_*.orig.tar.*' | head -n1)
    [ -n "$orig" ] || die "lua5.4 orig tarball not found in $SRCDIR"

    # Debian's 0001-build-system.patch rewrites both Makefiles for libtool and
    # dpkg-buildflags (ELF .so, -ldl, version scripts), which breaks the mingw
    # target. Keep the other Debian patches (C++ extern "C", CVE fixes; the module
    # path patch only touches the non-Windows part of luaconf.h) and restore the
    # upstream Makefiles from the orig tarball.
    say "restoring upstream Makefiles (Debian build-system patch is ELF/libtool only)"
    mkdir -p "$SRCDIR/orig"
    logged "$LUALOG" tar -xf "$orig" -C "$SRCDIR/orig"
    origdir=$(find "$SRCDIR/orig" -mindepth 1 -maxdepth 1 -type d | head -n1)
    cp "$origdir/Makefile" "$luadir/Makefile"
    cp "$origdir/src/Makefile" "$luadir/src/Makefile"

    say "building lua.exe + lua54.dll with x86_64-w64-mingw32-gcc"
    logged "$LUALOG" make -j"$(nproc 2>/dev/null || echo 2)" -C "$luadir/src" mingw CC=x86_64-w64-mingw32-gcc \
        AR="x86_64-w64-mingw32-ar rcu" RANLIB=x86_64-w64-mingw32-ranlib

    # An import library, for toolchains/flags that want -llua54 rather than
    # linking the DLL directly (mingw ld can do either). Same objects, same exports.
    s="$luadir/src"
    objs=()
    for o in "$s"/l*.o; do
        case ${o##*/} in lua.o|luac.o) ;; *) objs+=("$o") ;; esac
    done
    mkdir -p "$SRCDIR/implib"
    logged "$LUALOG" x86_64-w64-mingw32-gcc -shared -o "$SRCDIR/implib/lua54.dll" \
        "${objs[@]}" -Wl,--out-implib,"$SRCDIR/implib/liblua54.a"

    rm -rf "$WINLUA"
    mkdir -p "$WINLUA/bin" "$WINLUA/include" "$WINLUA/lib"
    cp "$s/lua.h" "$s/luaconf.h" "$s/lualib.h" "$s/lauxlib.h" "$s/lua.hpp" "$WINLUA/include/"
    cp "$SRCDIR/implib/liblua54.a" "$WINLUA/lib/"
    cp "$s/lua54.dll" "$s/luac.exe" "$WINLUA/bin/"
    cp "$s/lua.exe" "$WINLUA/bin/"      # last: its presence marks a finished build
    say "Windows Lua built into ${WINLUA#"$ROOT"/} in $(( $(date +%s) - start ))s"
}

if [ "$need_lua" -eq 0 ]; then
    say "Windows Lua present (${WINLUA#"$ROOT"/}/bin/lua.exe), skipping build"
else
    build_winlua
fi

# ---------------------------------------------------- Windows LuaJIT build
# LuaJIT's own Makefile cross-builds (src/Makefile, "Cross-compilation
# support"): the host compiler builds the build tools (minilua, buildvm),
# CROSS names the mingw-w64 tools, TARGET_SYS=Windows makes luajit.exe
# and lua51.dll. Debian's patches apply as they are (none touches the
# Windows part). A C module links lua51.dll, as LuaJIT's own Windows
# builds expect.
build_winjit() {
    if ! have_source luajit; then
        apt_update_once
        have_source luajit || die "apt-cache cannot find source package luajit (deb-src?)"
    fi

    local start srcdir jitdir s
    start=$(date +%s)
    : >"$JITLOG"
    srcdir="$BUILD/winjit-src"
    rm -rf "$srcdir"
    mkdir -p "$srcdir"
    say "fetching Debian luajit source (log: ${JITLOG#"$ROOT"/})"
    (cd "$srcdir" && logged "$JITLOG" apt-get source luajit)
    jitdir=$(find "$srcdir" -mindepth 1 -maxdepth 1 -type d -name 'luajit-*' | head -n1)
    { [ -n "$jitdir" ] && [ -f "$jitdir/src/luajit.c" ]; } || die "unpacked luajit source not found in $srcdir"

    say "building luajit.exe + lua51.dll with x86_64-w64-mingw32-gcc"
    logged "$JITLOG" make -j"$(nproc 2>/dev/null || echo 2)" -C "$jitdir" HOST_CC=gcc \
        CROSS=x86_64-w64-mingw32- TARGET_SYS=Windows BUILDMODE=dynamic

    s="$jitdir/src"
    rm -rf "$WINJIT"
    mkdir -p "$WINJIT/bin/lua/jit" "$WINJIT/include" "$WINJIT/lib"
    cp "$s/lua.h" "$s/luaconf.h" "$s/lualib.h" "$s/lauxlib.h" "$s/lua.hpp" "$s/luajit.h" "$WINJIT/include/"
    cp "$s/libluajit-5.1.dll.a" "$WINJIT/lib/"
    # luajit -jv, -jdump, ... load these from !\lua\jit (beside the exe)
    cp "$s"/jit/*.lua "$WINJIT/bin/lua/jit/"
    cp "$s/lua51.dll" "$WINJIT/bin/"
    cp "$s/luajit.exe" "$WINJIT/bin/"    # last: its presence marks a finished build
    say "Windows LuaJIT built into ${WINJIT#"$ROOT"/} in $(( $(date +%s) - start ))s"
}

if [ "$need_jit" -eq 0 ]; then
    say "Windows LuaJIT present (${WINJIT#"$ROOT"/}/bin/luajit.exe), skipping build"
else
    build_winjit
fi
