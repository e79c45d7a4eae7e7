#!/usr/bin/env bash
# tools/rock.sh — `make rock`: the source rock, made from this checkout.
#
#   build/rock/namedpipe-V.tar.gz      the release archive: every tracked file
#                                      as it is in the working tree (uncommitted
#                                      edits included, untracked files not),
#                                      under namedpipe-V/
#   build/rock/namedpipe-V-R.src.rock  the rockspec and that archive, packed by
#                                      `luarocks pack`
#
# The rockspec's source.url is the archive's bare file name: the archive
# has no web address yet. `luarocks pack` fetches from inside a temporary
# directory, where a bare name means nothing, so it is given a copy of the
# rockspec that names the archive by its file:// URL (build/rock/pack/);
# the rock then gets the rockspec as committed in its place (LuaRocks uses
# only the file name of source.url when it builds a source rock).
# Install it with `luarocks --lua-version 5.4 install build/rock/namedpipe-V-R.src.rock`.
# Outside a git checkout (an unpacked archive) the archive is made with tar
# from the directory, build/ left out.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
OUT=build/rock

die() { printf 'rock: ERROR: %s\n' "$*" >&2; exit 1; }
command -v luarocks >/dev/null || die "luarocks not found (make deps)"

specs=(rockspec/*.rockspec)
[ "${#specs[@]}" -eq 1 ] && [ -f "${specs[0]}" ] || die "expected exactly one rockspec in rockspec/, found: ${specs[*]}"
spec=${specs[0]}
name=$(basename "$spec" .rockspec)          # namedpipe-0.1.0-1
nv=${name%-*}                               # namedpipe-0.1.0
archive="$nv.tar.gz"
grep -q "url = \"$archive\"" "$spec" || die "$spec: source.url is not \"$archive\""

rm -rf "$OUT"
mkdir -p "$OUT/pack/committed"

if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    # a commit of the working tree's tracked files, made without touching
    # the index, the stash list or any branch (HEAD when nothing is edited)
    tree=$(git stash create 2>/dev/null || true)
    git archive --format=tar.gz --prefix="$nv/" -o "$OUT/$archive" "${tree:-HEAD}"
else
    tar -czf "$OUT/$archive" --exclude=./build --exclude=./.git \
        --transform "s,^\\.,$nv," .
fi
# the copy for `luarocks pack`, in a directory of its own
sed "s|url = \"$archive\"|url = \"file://$ROOT/$OUT/$archive\"|" "$spec" >"$OUT/pack/$name.rockspec"
(cd "$OUT" && luarocks --lua-version 5.4 pack "pack/$name.rockspec" >pack/pack.log 2>&1) || {
    cat "$OUT/pack/pack.log" >&2
    die "luarocks pack failed"
}
[ -f "$OUT/$name.src.rock" ] || die "luarocks pack made no $OUT/$name.src.rock"
cp "$spec" "$OUT/pack/committed/"
(cd "$OUT/pack/committed" && zip -q "../../$name.src.rock" "$name.rockspec")
unzip -p "$OUT/$name.src.rock" "$name.rockspec" | cmp -s - "$spec" ||
    die "$OUT/$name.src.rock does not hold $spec as committed"
echo "rock: $OUT/$name.src.rock ($(unzip -Z1 "$OUT/$name.src.rock" | tr '\n' ' '))"
