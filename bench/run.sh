#!/usr/bin/env bash
# bench/run.sh — `make bench`: namedpipe against the plain-C limit (and luv on
# Linux), one table per platform (bench/README.md).
#
#   bench/run.sh [--quick] [--runs N] [--platform linux|windows|all] [--only w[,w]]
#
# - builds what is missing: build/linux/namedpipe/core.so (make linux),
#   build/win/namedpipe/core.dll (make windows), the LuaJIT builds of both
#   (make build/luajit/namedpipe/core.so winjit), build/bench/baseline_unix
#   (gcc -O2), build/bench/baseline_win.exe (x86_64-w64-mingw32-gcc -O2)
# - runs every implementation N times (default 5), alternating (np, np.core,
#   np.luajit, baseline, luv, np, np.core, ...), each run one process doing
#   every workload once (--runs 1); the table shows the median of the N runs,
#   their min–max, and the ratios of the medians
#     namedpipe  : require "namedpipe", the public API (Lua wrappers, np.step)
#     np.core    : require "namedpipe.core" alone (C methods, C step)
#     np.luajit  : the namedpipe run with LuaJIT 2.1 (luajit on Linux,
#                  build/winjit's luajit.exe under Wine) and the module built
#                  against it (build/luajit, build/winjit-mod)
#     baseline   : bench/baseline_unix.c or bench/baseline_win.c
#     luv        : bench/bench_luv.lua (Linux; skipped with a note if absent)
# - Linux runs are not pinned (one thread doing its own syscalls: nothing to
#   gain, and the scheduler can move it off a CPU that something else keeps
#   busy); BENCH_LINUX_CPU=N pins them.
# - Windows runs go through tools/wine-run.sh under `taskset -c $BENCH_CPU`
#   (default 0), so wine and the wineserver it starts (wine-run.sh ends it
#   after each run) share that CPU (docs/wine.md §11: unpinned, figures swing
#   tenfold); the affinity of the program and of the prefix's wineserver is
#   read during every run and summarised under the table. Runs on one prefix
#   are serialised by wine-run.sh (flock): a test run on the same prefix
#   makes these wait (WINEPREFIX=... for a prefix of their own).
# - --quick: tiny sizes, every implementation once (np.core left out); fails
#   (exit 1) unless every run exits 0 and prints "quick ok" (contents are
#   checked inside; no time is ever asserted)
# - raw lines: build/bench/results.txt (platform impl workload metric=value ...)
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 1

RUNS=5 QUICK=0 PLATFORM=all ONLY=""
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) QUICK=1; shift ;;
        --runs) RUNS=$2; shift 2 ;;
        --platform) PLATFORM=$2; shift 2 ;;
        --only) ONLY=$2; shift 2 ;;
        *) echo "bench/run.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
case "$PLATFORM" in linux|windows|all) ;; *) echo "bench/run.sh: --platform linux|windows|all" >&2; exit 2 ;; esac
[[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || { echo "bench/run.sh: --runs N (N >= 1)" >&2; exit 2; }
[ "$QUICK" = 1 ] && RUNS=1

CPU=${BENCH_CPU:-0}
# 1,000 idle pairs are 2,000+ descriptors on Linux: lift a 1024 soft limit
# (up to the hard one) if need be.
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt 4096 ]; then
    ulimit -n 4096 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
fi
MAKE=${MAKE:-make}
OUT=build/bench
mkdir -p "$OUT"
RESULTS=$OUT/results.txt
: >"$RESULTS"
FAILED=0
T0=$SECONDS

want_linux() { [ "$PLATFORM" = all ] || [ "$PLATFORM" = linux ]; }
want_windows() { [ "$PLATFORM" = all ] || [ "$PLATFORM" = windows ]; }

# Sizes per platform (Wine is ~20x slower per operation: each pipe call is a
# wineserver round trip). Every implementation gets the same ones.
if [ "$QUICK" = 1 ]; then
    LINUX_ARGS=(--quick)
    WIN_ARGS=(--quick)
else
    LINUX_ARGS=(--runs 1 --pp 100000 --stream-mib 256 --churn 20000 --steps 2000000 --queued 100000)
    WIN_ARGS=(--runs 1 --pp 10000 --stream-mib 256 --churn 5000 --steps 50000 --queued 100000)
fi
# stream_string and stream_string_large are compared with the C program's
# and luv's one stream, pingpong_tasks and pingpong_waiting with the C ping-pong,
# pingpong_lines with the C byte ping-pong
case ",$ONLY," in *,stream_string,*|*,stream_string_large,*) case ",$ONLY," in *,stream,*) ;; *) ONLY="$ONLY,stream" ;; esac ;; esac
case ",$ONLY," in *,pingpong_tasks,*|*,pingpong_tasks_untimed,*|*,pingpong_waiting,*) case ",$ONLY," in *,pingpong,*) ;; *) ONLY="$ONLY,pingpong" ;; esac ;; esac
case ",$ONLY," in *,pingpong_lines,*) case ",$ONLY," in *,pingpong_byte,*) ;; *) ONLY="$ONLY,pingpong_byte" ;; esac ;; esac
# queued and churn_vanish are each compared with the same implementation's
# ping-pong and churn
case ",$ONLY," in *,queued,*) case ",$ONLY," in *,pingpong,*) ;; *) ONLY="$ONLY,pingpong" ;; esac ;; esac
case ",$ONLY," in *,churn_vanish,*) case ",$ONLY," in *,churn,*) ;; *) ONLY="$ONLY,churn" ;; esac ;; esac
if [ -n "$ONLY" ]; then
    LINUX_ARGS+=(--only "$ONLY")
    WIN_ARGS+=(--only "$ONLY")
fi

pin() {
    if command -v taskset >/dev/null 2>&1; then taskset -c "$CPU" "$@"; else "$@"; fi
}
LINUX_CPU=${BENCH_LINUX_CPU:-}
lpin() {
    if [ -n "$LINUX_CPU" ] && command -v taskset >/dev/null 2>&1; then
        taskset -c "$LINUX_CPU" "$@"
    else
        "$@"
    fi
}

# Run one implementation once: its output lines go to the results file as
# "<platform> <impl> <line>"; a failure is reported and counted.
run_impl() {
    local platform=$1 impl=$2; shift 2
    local log="$OUT/last-$platform-$impl.log" rc
    "$@" >"$log" 2>&1
    rc=$?
    tr -d '\r' <"$log" | grep -E "^(pingpong|pingpong_byte|pingpong_tasks|pingpong_tasks_untimed|pingpong_waiting|pingpong_lines|stream|stream_string|stream_string_large|churn|churn_vanish|queued|memory|step0) " |
        sed "s/^/$platform $impl /" >>"$RESULTS"
    if [ "$rc" -ne 0 ] || { [ "$QUICK" = 1 ] && ! tr -d '\r' <"$log" | grep -q '^quick ok'; }; then
        echo "bench: $platform $impl FAILED (exit $rc); output:" >&2
        sed 's/^/  | /' "$log" >&2
        FAILED=$((FAILED + 1))
        return 1
    fi
    if [ "$QUICK" = 1 ]; then echo "bench: $platform $impl ok"; fi
    return 0
}

# ------------------------------------------------------------------ builds
build_linux() {
    $MAKE --no-print-directory linux build/luajit/namedpipe/core.so >"$OUT/build-linux.log" 2>&1 ||
        { echo "bench: make linux failed (see $OUT/build-linux.log)" >&2; tail -n 20 "$OUT/build-linux.log" >&2; return 1; }
    if [ ! -x "$OUT/baseline_unix" ] || [ bench/baseline_unix.c -nt "$OUT/baseline_unix" ]; then
        gcc -O2 -Wall -Wextra -o "$OUT/baseline_unix" bench/baseline_unix.c || return 1
    fi
}

build_windows() {
    $MAKE --no-print-directory windows winjit >"$OUT/build-windows.log" 2>&1 ||
        { echo "bench: make windows failed (see $OUT/build-windows.log)" >&2; tail -n 20 "$OUT/build-windows.log" >&2; return 1; }
    if [ ! -f "$OUT/baseline_win.exe" ] || [ bench/baseline_win.c -nt "$OUT/baseline_win.exe" ]; then
        x86_64-w64-mingw32-gcc -O2 -Wall -Wextra -o "$OUT/baseline_win.exe" bench/baseline_win.c || return 1
    fi
}

# ------------------------------------------------------- wineserver pinning
export WINEPREFIX="${WINEPREFIX:-$ROOT/build/wineprefix}"
# wine-run.sh's timeout: the C program's queued workload alone takes minutes
# under Wine (bench/README.md, where the time goes)
export NP_WINE_TIMEOUT="${NP_WINE_TIMEOUT:-900}"
PINCHECK=$OUT/wine-affinity.txt

# The wineserver of a prefix runs in <wine's tmp dir>/server-DEV-INODE (hex,
# of the prefix directory): that names it whatever the tmp dir is.
wineserver_dir() {
    local dev ino
    read -r dev ino < <(stat -c '%d %i' "$WINEPREFIX" 2>/dev/null) || return 1
    printf 'server-%x-%x' "$dev" "$ino"
}

# While one Windows run is going: wait until its program is running (so
# wine-run.sh holds the prefix lock and the prefix's wineserver is the one
# serving it, not another run's), then append the CPU affinity of the program
# and of the prefix's wineserver to $PINCHECK. Stopped when the run ends.
watch_pinning() {
    local label=$1 dir prog pid i
    dir=$(wineserver_dir) || return 0
    for ((i = 0; i < 6000; i++)); do
        prog=$(pgrep -f '^(build/win(lua/bin/lua|jit/bin/luajit)\.exe bench/bench\.lua|build/bench/baseline_win\.exe)' | head -n 1)
        if [ -n "$prog" ]; then
            for pid in $(pgrep wineserver 2>/dev/null); do
                if [ "$(basename "$(readlink "/proc/$pid/cwd" 2>/dev/null)")" = "$dir" ]; then
                    echo "$label program=$(awk '/Cpus_allowed_list/ {print $2}' "/proc/$prog/status" 2>/dev/null) wineserver=$(awk '/Cpus_allowed_list/ {print $2}' "/proc/$pid/status" 2>/dev/null)" >>"$PINCHECK"
                    return 0
                fi
            done
        fi
        sleep 0.05
    done
}

# One Windows run with its pinning check.
run_wine() {
    local impl=$1 watcher rc; shift
    watch_pinning "$impl" &
    watcher=$!
    run_impl windows "$impl" pin tools/wine-run.sh "$@"
    rc=$?
    kill "$watcher" 2>/dev/null   # the run is over: stop looking
    wait "$watcher" 2>/dev/null
    return $rc
}

# ------------------------------------------------------------------ linux
LUAV=""
if want_linux; then
    if [ ! -e src/unix ] || ! ls src/unix/*.c >/dev/null 2>&1; then
        echo "bench: no Linux backend (src/unix/*.c) yet; Linux skipped" >&2
    elif build_linux; then
        export LUA_PATH_5_4="lua/?.lua;lua/?/init.lua;;" LUA_CPATH_5_4="build/linux/?.so;;"
        if lua5.4 -e 'require "luv"' >/dev/null 2>&1; then
            LUAV=1
        else
            echo "bench: luv not installed (Debian package lua-luv): the luv column is skipped"
        fi
        echo "bench: linux: $RUNS run(s) of each implementation, alternating${LINUX_CPU:+, pinned to CPU $LINUX_CPU} ..."
        echo "linux ${LINUX_CPU:-unpinned}" >"$OUT/linux-pinning.txt"
        for ((r = 1; r <= RUNS; r++)); do
            run_impl linux namedpipe lpin lua5.4 bench/bench.lua "${LINUX_ARGS[@]}"
            [ "$QUICK" = 1 ] || run_impl linux np.core lpin lua5.4 bench/bench.lua --api core "${LINUX_ARGS[@]}"
            run_impl linux np.luajit lpin env LUA_PATH="$LUA_PATH_5_4" LUA_CPATH="build/luajit/?.so;;" \
                luajit bench/bench.lua "${LINUX_ARGS[@]}"
            run_impl linux baseline lpin "$OUT/baseline_unix" "${LINUX_ARGS[@]}"
            [ -n "$LUAV" ] && run_impl linux luv lpin lua5.4 bench/bench_luv.lua "${LINUX_ARGS[@]}"
        done
    else
        FAILED=$((FAILED + 1))
    fi
fi

# ---------------------------------------------------------------- windows
if want_windows; then
    if build_windows; then
        echo "bench: windows (Wine): $RUNS run(s) of each implementation, alternating, wine + wineserver pinned to CPU $CPU ..."
        : >"$PINCHECK"
        for ((r = 1; r <= RUNS; r++)); do
            run_wine namedpipe build/winlua/bin/lua.exe bench/bench.lua "${WIN_ARGS[@]}"
            [ "$QUICK" = 1 ] || run_wine np.core build/winlua/bin/lua.exe bench/bench.lua --api core "${WIN_ARGS[@]}"
            NP_BUILD_DIR=build/winjit-mod run_wine np.luajit build/winjit/bin/luajit.exe bench/bench.lua "${WIN_ARGS[@]}"
            run_wine baseline "$OUT/baseline_win.exe" "${WIN_ARGS[@]}"
        done
    else
        FAILED=$((FAILED + 1))
    fi
fi

# ----------------------------------------------------------------- tables
echo
lua5.4 bench/report.lua "$RESULTS" "$PINCHECK" "$QUICK" || FAILED=$((FAILED + 1))
echo "bench: $((SECONDS - T0)) s; raw results in $RESULTS"
if [ "$QUICK" = 1 ]; then
    if [ "$FAILED" -eq 0 ]; then
        echo "bench quick: ok (every implementation ran, bytes intact)"
    else
        echo "bench quick: $FAILED FAILED"
    fi
fi
[ "$FAILED" -eq 0 ]
