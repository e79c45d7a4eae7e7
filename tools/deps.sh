#!/usr/bin/env bash
# tools/deps.sh — install the Debian packages the build and tests need, then
# build a Windows Lua 5.4 (lua.exe + lua54.dll + headers + import lib) with
# mingw-w64 from Debian's lua5.4 source package into build/winlua/.
#
# Idempotent: apt-get is only called if a package is missing (or the lua5.4
# source is needed and no deb-src entry exists); the Windows Lua build is
# skipped when build/winlua/bin/lua.exe already exists (delete build/winlua
# to rebuild). Logs: build/deps-apt.log, build/winlua-build.log.
# Env: NP_EXTRA_PACKAGES="pkg ..." adds packages to the list.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD="$ROOT/build"
APTLOG="$BUILD/deps-apt.log"
LUALOG="$BUILD/winlua-build.log"
WINLUA="$BUILD/winlua"
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
        die "not root and no sudo: cannot run apt-get (missing: ${missing[*]:-none}; lua5.4 source needed: $need_lua)"
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

have_lua_source() {
    apt-cache showsrc lua5.4 2>/dev/null | grep -q '^Package: lua5.4$'
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

need_lua=0
[ -x "$WINLUA/bin/lua.exe" ] || need_lua=1

# deb-src must be configured before the (single) apt-get update
if [ "$need_lua" -eq 1 ] && ! have_lua_source; then
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
if [ "$need_lua" -eq 0 ]; then
    say "Windows Lua present (${WINLUA#"$ROOT"/}/bin/lua.exe), skipping build"
    exit 0
fi

if ! have_lua_source; then
    apt_update_once
    have_lua_source || die "apt-cache cannot find source package lua5.4 (deb-src?)"
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
