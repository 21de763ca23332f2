#!/usr/bin/env bash
# Each build_image output format from the same binary packages, in one
# hyperfine run: the disk image (--format disk: ext4 USR, ESP, GPT, update
# payload and its signed metadata), the netboot set (--format pxe: squashfs
# USR with its verity tree, kernel, initramfs, iPXE script) and the live
# ISO (--format iso: the same USR inside a hybrid ISO with an El Torito
# ESP). Every run is a whole build (--replace), lists and SBOM included.
#
# Usage: bench/formats.sh [EXAMPLE]   (as root: the builds run as the test
# user, SDK_E2E_USER or sdktest; EXAMPLE is demo-os (default) or
# systemd-os; BENCH_DIR=/var/tmp/sdk-bench-formats, RUNS=3)
set -euo pipefail
cd "$(dirname "$0")/.."
example=${1:-demo-os}
user=${SDK_E2E_USER:-sdktest}
work=${BENCH_DIR:-/var/tmp/sdk-bench-formats}/$example
runs=${RUNS:-3}
bin=${SDK_BIN:-$PWD/target/release}
[ -x "$bin/sdk-tools" ] || cargo build --release -p sdk-tools
mkdir -p "$work"
if [ ! -d "$work/repo" ]; then
  cp -a "examples/$example" "$work/repo"
  rm -rf "$work/repo/__build__"
fi
chown -R "$user:" "$work"
as_user() {
  runuser -u "$user" -- env -C "$work/repo" PATH="$bin:$PATH" \
    SDK_BUILD_ROOT="$work/build" SDK_CACHE_DIR="$work/cache" "$@"
}
# The packages once (kept in $BENCH_DIR), and one build of each format so
# that every timed run replaces an existing build, as a developer's does.
as_user sdk-tools setup_board --board amd64-usr >/dev/null
as_user sdk-tools build_packages --board amd64-usr >/dev/null
for f in disk pxe iso; do
  as_user sdk-tools build_image --board amd64-usr --format "$f" --replace >/dev/null 2>&1
done
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores"
cmd() { echo "runuser -u $user -- env -C $work/repo PATH=$bin:$PATH SDK_BUILD_ROOT=$work/build SDK_CACHE_DIR=$work/cache sdk-tools build_image --board amd64-usr --format $1 --replace"; }
hyperfine --runs "$runs" --style basic --export-json "$work/formats.json" \
  -n disk "$(cmd disk)" -n pxe "$(cmd pxe)" -n iso "$(cmd iso)"
python3 - "$work/formats.json" <<'PY'
import json, sys
r = {b["command"]: b for b in json.load(open(sys.argv[1]))["results"]}
disk = r["disk"]["median"]
for name in ("disk", "pxe", "iso"):
    b = r[name]
    print(f"median {name}: {b['median']:.2f} s ({b['median'] / disk:.2f}x the disk image)")
PY
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
images=$work/repo/__build__/images/amd64-usr
echo "sizes:"
du -b --apparent-size "$images"/latest/*_image.bin "$images"/latest/*_update.bin \
  "$images"/pxe/latest/*_usr.* "$images"/pxe/latest/*.initrd \
  "$images"/pxe/latest/*.vmlinuz "$images"/iso/latest/*.iso |
  awk '{ printf "  %8.1f MiB  %s\n", $1 / 1048576, $2 }'
