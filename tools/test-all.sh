#!/usr/bin/env bash
# tools/test-all.sh — run `make test-linux`, `make test-windows` (Lua 5.4
# under Wine), `make test-winjit` (LuaJIT under Wine) and `make test-lua5.1`
# ... `make test-luajit` (the other Luas on Linux), each even if one before
# it failed, pick up each run's summary line
# "<platform>: N passed, N failed, N skipped", and print as the LAST line the
# total "N passed, N failed, N skipped". Exit status is non-zero if anything
# failed, a run exited non-zero, or a run printed no summary line (each such
# run adds 1 to the failed total so the last line never looks clean).
# Then `make check` (the Linux suite again under ASan+UBSan and valgrind) is a
# gate: any report fails the run (1 failed), its tests are not counted twice;
# so is `make bench-quick` (the benchmarks run, bytes intact, no time asserted),
# `make rock-check` (LuaRocks builds and installs the source rock natively
# and cross-built for Windows; both installed trees run a round trip), and
# `make lint` (luacheck over every Lua file).
# Each run's "FAILED <label> <test>: <message>" lines are repeated above the
# summary, so the end of the output names what failed.
# Full outputs: build/test-<platform>.log (linux, windows, winjit, lua5.1,
# ...), build/check.log,
# build/bench-quick.log, build/rock-check.log, build/lint.log.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 1
MAKE=${MAKE:-make}
mkdir -p build

tp=0 tf=0 ts=0 status=0
lines=()
failures=()   # run.lua's "FAILED <label> <test>: <message>" lines, repeated at the end
for plat in linux windows winjit lua5.1 lua5.2 lua5.3 luajit; do
    log="build/test-$plat.log"
    echo "=== make test-$plat ==="
    $MAKE --no-print-directory "test-$plat" 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    line=$(grep -E "^$plat: [0-9]+ passed, [0-9]+ failed, [0-9]+ skipped\$" < <(tr -d '\r' <"$log") | tail -n 1)
    if [ -z "$line" ]; then
        lines+=("$plat: NO SUMMARY LINE (make exit $rc) — counted as 1 failed; see $log")
        tf=$((tf + 1)); status=1
        continue
    fi
    read -r p f s < <(sed -E 's/^[a-z0-9.]+: ([0-9]+) passed, ([0-9]+) failed, ([0-9]+) skipped$/\1 \2 \3/' <<<"$line")
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
        line="$line (but make exited $rc — counted as 1 failed)"
        f=1
    fi
    [ "$f" -eq 0 ] || status=1
    while IFS= read -r failure; do
        failures+=("$failure")
    done < <(tr -d '\r' <"$log" | grep -E '^FAILED ' | head -n 20)
    tp=$((tp + p)) tf=$((tf + f)) ts=$((ts + s))
    lines+=("$line")
done

# A gate: `make TARGET`, its output in build/TARGET.log; a failure counts
# as 1 failed (its tests are not counted again) and shows the log's end.
gate() {
    local target=$1 what=$2 ok=$3
    echo "=== make $target ($what) ==="
    if $MAKE --no-print-directory "$target" >"build/$target.log" 2>&1; then
        lines+=("$target: $ok (see build/$target.log)")
    else
        lines+=("$target: FAILED — counted as 1 failed; see build/$target.log")
        tail -n 40 "build/$target.log"
        tf=$((tf + 1)); status=1
    fi
}

gate check "Linux suite under ASan+UBSan and valgrind" "ASan+UBSan and valgrind runs clean"
gate bench-quick "benchmarks' smoke run: they run and bytes arrive intact" \
    "every workload ran, contents checked"
gate rock-check "LuaRocks installs the rock on Linux and, cross-built, for Windows" \
    "LuaRocks-installed trees ran on Linux and under Wine"
gate lint "luacheck over every Lua file" "luacheck clean"

echo "=== summary ==="
[ "${#failures[@]}" -eq 0 ] || printf '%s\n' "${failures[@]}"
printf '%s\n' "${lines[@]}"
echo "$tp passed, $tf failed, $ts skipped"
exit "$status"
