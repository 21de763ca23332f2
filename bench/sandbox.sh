#!/usr/bin/env bash
# Entering a running sandbox: `sdk-run -- true` vs `nsenter` into the same
# sandbox's namespaces vs `bwrap` (a fresh namespace set each run) on the
# same busybox rootfs; then creating + starting a sandbox from an unpacked
# rootfs, and restarting a stopped one. Same machine, same run, hyperfine
# medians.
#
#   bench/sandbox.sh [SDK_RUN_BIN_DIR]   # as a user with /etc/subuid ranges
#
# `unshare --map-auto` (util-linux) is the floor of a start with a full
# subordinate id map: the same two setuid helpers, no rootfs, no mounts.
# PERF=1 adds `perf stat` of entering (CPU, page faults) for both tools.
#
# Needs: hyperfine, util-linux (nsenter, unshare), bubblewrap,
# busybox-static, uidmap (perf for PERF=1).
set -euo pipefail
bin=${1:-$(cd "$(dirname "$0")/.." && pwd)/target/release}
bin=$(cd "$bin" && pwd)
export PATH="$bin:$PATH"
if [ "$(id -u)" = 0 ]; then
  echo "run as an unprivileged user with subordinate ids, e.g.: sudo -u sdktest $0 $bin" >&2
  exit 2
fi
runs=${RUNS:-60}
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

# The machine may be shared: run ROUNDS short rounds, alternating the
# tools, and pool the runs, so load changes hit every tool alike.
rounds=${ROUNDS:-5}
for r in $(seq "$rounds"); do
  hyperfine -N --style none --warmup 10 --runs "$runs" --export-json "enter-$r.json" \
    -n "sdk-run -- true (running sandbox)" "sdk-run -n bench -- true" \
    -n "nsenter -U -m -p --preserve-credentials" "nsenter -U -m -p --preserve-credentials -t $pid true" \
    -n "bwrap (new namespaces each run)" \
    "bwrap --unshare-user --unshare-pid --unshare-ipc --unshare-uts --bind ../rootfs / --proc /proc --dev /dev true"

  hyperfine -N --style none --warmup 2 --runs "${RUNS_CREATE:-10}" --export-json "create-$r.json" \
    --prepare "sh -c 'sdk-run rm -f bench-new 2>/dev/null; true'" \
    -n "create + start + enter (sdk-run --rootfs DIR -- true)" "sdk-run -n bench-new --rootfs ../rootfs -- true" \
    --prepare "sdk-run stop bench-restart" \
    -n "start a stopped sandbox + enter" "sdk-run -n bench-restart -- true" \
    --prepare "true" \
    -n "bwrap (new namespaces)" \
    "bwrap --unshare-user --unshare-pid --unshare-ipc --unshare-uts --bind ../rootfs / --proc /proc --dev /dev true" \
    --prepare "true" \
    -n "unshare --map-auto (newuidmap + newgidmap, no rootfs)" \
    "unshare --user --map-auto --map-root-user --pid --fork --mount --uts --ipc true"
done
# What a process costs before and around main: CPU, page faults.
if [ -n "${PERF:-}" ] && command -v perf >/dev/null; then
  for c in "sdk-run -n bench -- true" "nsenter -U -m -p --preserve-credentials -t $pid true"; do
    perf stat -r 300 -e task-clock,page-faults,context-switches $c 2>&1 |
      grep -E 'task-clock|page-faults|elapsed' | sed "s|^|  ${c%% *}: |"
  done
fi
# The launcher's peak RSS (target < 10 MB): entering, and creating.
if [ -x /usr/bin/time ]; then
  sdk-run rm -f bench-new >/dev/null 2>&1 || true
  echo "peak RSS: enter $(/usr/bin/time -f %M sdk-run -n bench -- true 2>&1) KiB," \
    "create + start + enter $(/usr/bin/time -f %M sdk-run -n bench-new --rootfs ../rootfs -- true 2>&1) KiB"
fi
sdk-run rm -f bench bench-new bench-restart >/dev/null
echo "load: $(cut -d' ' -f1-3 /proc/loadavg); RUST_BACKTRACE=${RUST_BACKTRACE:-unset}"

python3 - "$rounds" <<'PY'
import json, statistics, sys
rounds = int(sys.argv[1])
for kind in ("enter", "create"):
    times, cpu = {}, {}
    for r in range(1, rounds + 1):
        for res in json.load(open(f"{kind}-{r}.json"))["results"]:
            times.setdefault(res["command"], []).extend(res["times"])
            cpu.setdefault(res["command"], []).append(res["user"] + res["system"])
    names = list(times)
    base = statistics.median(times[names[0]])
    print(f"\n{kind}: {len(times[names[0]])} runs each; median wall time, ratio, mean CPU (user+sys)")
    for n in names:
        m = statistics.median(times[n])
        print(f"  {m*1000:8.3f} ms  {m/base:5.2f}x  cpu {statistics.mean(cpu[n])*1000:6.3f} ms  {n}")
    if kind == "enter":
        print(f"  sdk-run / nsenter = {base / statistics.median(times[names[1]]):.2f}x")
    else:
        print(f"  create / bwrap = {base / statistics.median(times[names[2]]):.2f}x, "
              f"start / bwrap = {statistics.median(times[names[1]]) / statistics.median(times[names[2]]):.2f}x, "
              f"create / unshare --map-auto = {base / statistics.median(times[names[3]]):.2f}x")
PY
