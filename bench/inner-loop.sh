#!/usr/bin/env bash
# The developer's inner loop on the example OS: edit one C recipe, then
# build_packages -> build_image -> image_to_vm -> test_image (the marker
# on the serial console, QEMU TCG). Target: <= 10 s.
#
# Side by side in the same run:
# - dev: what the commands do by default (image_to_vm writes a qcow2
#   overlay backed by the raw image; the disk image's manifest digest is
#   its blocks-sha256, holes unread);
# - release: the outputs one ships, asked for: `image_to_vm --compress`
#   (a standalone compressed qcow2) and a plain sha256 of the whole disk
#   image (`sha256sum`, which reads its 8.8 GB of holes as zeros), what
#   every run paid before.
#
# The tools run directly, as the calling user, with the board's cross-root
# in BENCH_DIR (as they do inside the SDK sandbox; entering it adds about
# a millisecond per command, see bench/sandbox.sh).
#
# Usage: bench/inner-loop.sh   (RUNS=5 BENCH_DIR=/var/tmp/sdk-bench-inner)
set -euo pipefail
cd "$(dirname "$0")/.."
top=$PWD
tools=${SDK_TOOLS:-$top/target/release/sdk-tools}
work=${BENCH_DIR:-/var/tmp/sdk-bench-inner}
runs=${RUNS:-5}
board=amd64-usr
[ -x "$tools" ] || cargo build --release -p sdk-tools

mkdir -p "$work"
rm -rf "$work/repo"
cp -a examples/demo-os "$work/repo"
rm -rf "$work/repo/__build__"
export SDK_BUILD_ROOT=$work/build SDK_CACHE_DIR=$work/cache
export PATH="$(dirname "$tools"):/usr/sbin:/sbin:$PATH"
cd "$work/repo"
echo "first build (not timed): setup_board, build_packages, build_image"
sdk-tools setup_board --board $board >/dev/null 2>&1
sdk-tools build_packages --board $board >/dev/null 2>&1
sdk-tools build_image --board $board --replace >/dev/null 2>&1

edit='echo "/* edit $(date +%s%N) */" >> packages/demo-apps/greet/main.c'
steps=(
  "sdk-tools build_packages --board $board"
  "sdk-tools build_image --board $board --replace"
  "sdk-tools image_to_vm --board $board"
  "sdk-tools test_image --board $board --timeout 120"
)
dev=$(printf '%s >/dev/null 2>&1 && ' "${steps[@]}")true
release="sdk-tools build_packages --board $board && sdk-tools build_image --board $board --replace && sdk-tools image_to_vm --board $board --compress && sha256sum __build__/images/$board/latest/*_image.bin && sdk-tools test_image --board $board --timeout 120"
release="($release) >/dev/null 2>&1"

# One loop, step by step, to show where the time goes.
eval "$edit"
for s in "${steps[@]}"; do
  t=$(date +%s%N)
  eval "$s" >/dev/null 2>&1
  printf '  %-52s %6d ms\n' "$s" $((($(date +%s%N) - t) / 1000000))
done

echo "load before: $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) cores"
hyperfine --runs "$runs" --prepare "$edit" --export-json "$work/inner-loop.json" \
  -n dev "$dev" -n release "$release"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$work/inner-loop.json" <<'PY'
import json, sys
r = {x["command"]: x for x in json.load(open(sys.argv[1]))["results"]}
d, rel = r["dev"]["median"], r["release"]["median"]
print(f"median: dev {d:.2f} s, release {rel:.2f} s; release/dev = {rel / d:.1f}x; target dev <= 10 s: {'met' if d <= 10 else 'NOT met'}")
PY
