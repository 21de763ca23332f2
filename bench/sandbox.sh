#!/usr/bin/env bash
# Entering a running sandbox: `sdk-run -- true` vs `nsenter` into the same
# sandbox's namespaces vs `bwrap` (a fresh namespace set each run) on the
# same busybox rootfs; then creating + starting a sandbox from an unpacked
# rootfs, and restarting a stopped one. Same machine, same run, hyperfine
# medians.
#
#   bench/sandbox.sh [SDK_RUN_BIN_DIR]   # as a user with /etc/subuid ranges
#
# Needs: hyperfine, util-linux (nsenter), bubblewrap, busybox-static, uidmap.
set -euo pipefail
bin=${1:-$(cd "$(dirname "$0")/.." && pwd)/target/release}
bin=$(cd "$bin" && pwd)
export PATH="$bin:$PATH"
if [ "$(id -u)" = 0 ]; then
  echo "run as an unprivileged user with subordinate ids, e.g.: sudo -u sdktest $0 $bin" >&2
  exit 2
fi
runs=${RUNS:-200}
work=${BENCH_DIR:-/var/tmp/sdk-run-bench-sandbox-$(id -u)}
mkdir -p "$work"
cd "$work"
export XDG_DATA_HOME="$work/data"

# A busybox rootfs, like the end-to-end tests use.
if [ ! -x rootfs/bin/busybox ]; then
  rm -rf rootfs && mkdir -p rootfs/bin
  cp /bin/busybox rootfs/bin/
  for n in $(/bin/busybox --list); do
    [ "$n" = busybox ] || ln -s busybox "rootfs/bin/$n"
  done
fi
mkdir -p repo && cd repo

sdk-run rm -f bench bench-new bench-restart >/dev/null 2>&1 || true
sdk-run -n bench --rootfs ../rootfs -- true
sdk-run -n bench-restart --rootfs ../rootfs -- true
pid=$(sdk-run list --json | tr -d ' \n' | sed 's/.*"name":"bench","state":"running","pid":\([0-9]*\).*/\1/')
case $pid in '' | *[!0-9]*) echo "cannot find the sandbox's init pid" >&2; exit 1 ;; esac

hyperfine -N --warmup 20 --runs "$runs" --export-json enter.json \
  -n "sdk-run -- true" "sdk-run -n bench -- true" \
  -n "nsenter -U -m -p" "nsenter -U -m -p --preserve-credentials -t $pid true" \
  -n "bwrap (new namespaces)" \
  "bwrap --unshare-user --unshare-pid --unshare-ipc --unshare-uts --bind ../rootfs / --proc /proc --dev /dev true"

hyperfine -N --warmup 3 --runs "${RUNS_CREATE:-50}" --export-json create.json \
  --prepare "sh -c 'sdk-run rm -f bench-new 2>/dev/null; true'" \
  -n "create + start + enter (sdk-run --rootfs DIR -- true)" "sdk-run -n bench-new --rootfs ../rootfs -- true" \
  --prepare "sdk-run stop bench-restart" \
  -n "start a stopped sandbox + enter" "sdk-run -n bench-restart -- true" \
  --prepare "true" \
  -n "bwrap (new namespaces)" \
  "bwrap --unshare-user --unshare-pid --unshare-ipc --unshare-uts --bind ../rootfs / --proc /proc --dev /dev true"
sdk-run rm -f bench bench-new bench-restart >/dev/null

python3 - enter.json create.json <<'PY'
import json, sys
for f in sys.argv[1:]:
    rs = json.load(open(f))["results"]
    base = rs[0]["median"]
    print(f"\n{f}: median (ratio to the first row)")
    for r in rs:
        print(f"  {r['median']*1000:8.3f} ms  {r['median']/base:5.2f}x  {r['command']}")
    if f == "enter.json":
        print(f"  sdk-run / nsenter = {base / rs[1]['median']:.2f}x")
PY
