#!/usr/bin/env bash
# tools/wine-run.sh — run a Windows program under Wine for the tests.
#
#   tools/wine-run.sh build/winlua/bin/lua.exe tests/run.lua --platform windows
#
# - private prefix: $WINEPREFIX, default <repo>/build/wineprefix; created
#   quietly on first use (wineboot -i, log in <prefix>.init.log)
# - WINEDEBUG=-all, timeout $NP_WINE_TIMEOUT seconds (default 300; exit 124
#   on timeout), stdin is /dev/null
# - Lua search paths for the Windows process (Wine imports the Unix
#   environment verbatim): the repo's lua/ tree, build/win/?.dll (or
#   $NP_BUILD_DIR/?.dll), Debian's luaunit (Z:\usr\share\lua\5.4, which
#   serves LuaJIT too: one file for every version), then Lua's defaults (;;)
# - NP_UNDER_WINE=1 in the environment (tests/run.lua sets UNDER_WINE from it)
# - CRLF line ends are turned into LF (NP_WINE_RAW=1: bytes unchanged)
# - the program's stdout/stderr go to files that are streamed to ours with
#   `tail --pid`: Wine's helper processes (wineserver, services.exe, ...)
#   inherit the program's stdout, so running wine straight into a pipe or a
#   $(...) would block the reader until the wineserver exits
# - afterwards the prefix's wineserver is ended (wineserver -k, then -w so
#   the registry is flushed), the program's exit code is returned.
#   Runs on the same prefix are serialised with flock(<prefix>.lock); use
#   distinct WINEPREFIXes to run in parallel.
set -uo pipefail

if [ $# -lt 1 ]; then
    echo "usage: $0 program.exe [args...]" >&2
    exit 2
fi

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export WINEPREFIX="${WINEPREFIX:-$ROOT/build/wineprefix}"
export WINEDEBUG=-all
# no Mono/Gecko install attempts, no desktop menu entries in $HOME
export WINEDLLOVERRIDES="${WINEDLLOVERRIDES:-mscoree,mshtml,winemenubuilder.exe=d}"
TIMEOUT="${NP_WINE_TIMEOUT:-300}"

for t in wine wineserver timeout tail; do
    command -v "$t" >/dev/null 2>&1 || { echo "wine-run: '$t' not found (run tools/deps.sh)" >&2; exit 127; }
done

# Windows form of a Unix absolute path: /a/b -> Z:\a\b
winpath() { local p=${1//\//\\}; printf 'Z:%s' "$p"; }
W=$(winpath "$ROOT")

export NP_UNDER_WINE=1
lua_path="$W\\lua\\?.lua;$W\\lua\\?\\init.lua;Z:\\usr\\share\\lua\\5.4\\?.lua;Z:\\usr\\share\\lua\\5.4\\?\\init.lua;;"
# NP_BUILD_DIR: another build of the module (make test-winjit: build/winjit-mod)
bd=${NP_BUILD_DIR:-build/win}
lua_cpath="$W\\${bd//\//\\}\\?.dll;;"
export LUA_PATH_5_4="$lua_path" LUA_PATH="$lua_path"
export LUA_CPATH_5_4="$lua_cpath" LUA_CPATH="$lua_cpath"

mkdir -p "$(dirname "$WINEPREFIX")"

init_prefix() {
    [ -f "$WINEPREFIX/.np-ready" ] && [ -f "$WINEPREFIX/system.reg" ] && return 0
    local log="$WINEPREFIX.init.log" t0=$SECONDS
    echo "wine-run: initialising wine prefix $WINEPREFIX (log: $log)" >&2
    if ! timeout -k 10 180 wine wineboot -i >"$log" 2>&1 </dev/null; then
        echo "wine-run: wineboot -i failed; last lines of $log:" >&2
        tail -n 20 "$log" >&2
        return 1
    fi
    # flush the registry to disk now so a killed run cannot leave a half prefix
    timeout 60 wineserver -k >>"$log" 2>&1
    timeout 60 wineserver -w >>"$log" 2>&1
    touch "$WINEPREFIX/.np-ready"
    echo "wine-run: prefix ready in $((SECONDS - t0))s" >&2
}

# One run at a time per prefix (the wineserver -k at the end would kill a
# concurrent run's processes): hold an exclusive lock on <prefix>.lock for the
# whole run; fd 9 is not passed on to wine, so no Wine process inherits it.
if command -v flock >/dev/null 2>&1; then
    exec 9>"$WINEPREFIX.lock"
    if ! flock -n 9; then
        echo "wine-run: waiting for another wine-run.sh on $WINEPREFIX" >&2
        flock -w $((TIMEOUT + 120)) 9 || { echo "wine-run: gave up waiting for the prefix lock" >&2; exit 1; }
    fi
fi
init_prefix 9>&- || exit 1

tmp=$(mktemp -d "${TMPDIR:-/tmp}/wine-run.XXXXXX")
out="$tmp/stdout" err="$tmp/stderr"
: >"$out"; : >"$err"

pid="" tpids=()
# shellcheck disable=SC2317  # trap handler
cleanup() { rm -rf "$tmp"; }
# shellcheck disable=SC2317  # trap handler
on_signal() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null    # timeout forwards it to wine
    timeout 30 wineserver -k >/dev/null 2>&1 9>&-
    wait "${tpids[@]}" 2>/dev/null
    exit 130
}
trap cleanup EXIT
trap on_signal INT TERM HUP

# Windows text-mode output ends lines with CRLF; hand the caller plain LF
# lines (NP_WINE_RAW=1 passes the bytes through unchanged).
if [ "${NP_WINE_RAW:-0}" = 1 ]; then
    filt() { cat; }
else
    filt() { sed -u 's/\r$//'; }
fi

timeout -k 10 "$TIMEOUT" wine "$@" >"$out" 2>"$err" </dev/null 9>&- &
pid=$!
# everything in the background + `wait`, so a signal to this script runs the
# trap at once (bash defers traps while a foreground pipeline runs)
tail -n +1 -s 0.2 --pid="$pid" -f "$err" | filt >&2 &
tpids+=($!)
tail -n +1 -s 0.2 --pid="$pid" -f "$out" | filt &
tpids+=($!)
wait "$pid"
rc=$?
wait "${tpids[@]}"

if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    echo "wine-run: '$*' timed out after ${TIMEOUT}s (NP_WINE_TIMEOUT)" >&2
fi

timeout 60 wineserver -k >/dev/null 2>&1 9>&-
timeout 60 wineserver -w >/dev/null 2>&1 9>&-
exit "$rc"
