#!/usr/bin/env bash
# Import of a multi-layer OCI image (>= 300 MB unpacked, built here from
# Debian packages with mmdebstrap + umoci + skopeo): `sdk-run import` vs
# `umoci unpack --rootless` on the same image, same run (hyperfine medians);
# then creating a second sandbox over an already-unpacked base.
#
#   bench/import.sh [SDK_RUN_BIN_DIR]     # as a user with /etc/subuid ranges
#
# Needs: mmdebstrap, umoci, skopeo, hyperfine, uidmap; the host's apt sources.
set -euo pipefail
bin=${1:-$(cd "$(dirname "$0")/.." && pwd)/target/release}
export PATH="$bin:$PATH"
if [ "$(id -u)" = 0 ]; then
  # Root maps nothing useful: run as the unprivileged test user instead.
  u=${BENCH_USER:-sdktest}
  if ! getent passwd "$u" >/dev/null; then
    echo "run as an unprivileged user with /etc/subuid ranges (or create $u: make test)" >&2
    exit 2
  fi
  tmpbin=$(mktemp -d /var/tmp/sdk-run-bench-bin.XXXXXX)
  install -m 0755 "$bin/sdk-run" "$bin/sdk-tools" "$tmpbin/" 2>/dev/null || install -m 0755 "$bin/sdk-run" "$tmpbin/"
  install -m 0755 "$0" "$tmpbin/import.sh"
  chmod 0755 "$tmpbin"
  exec setpriv --reuid "$u" --regid "$(id -g "$u")" --init-groups \
    env -i HOME="$(getent passwd "$u" | cut -d: -f6)" USER="$u" PATH=/usr/sbin:/usr/bin:/sbin:/bin \
    RUNS="${RUNS:-}" RUNS_SANDBOX="${RUNS_SANDBOX:-}" FRESH="${FRESH:-}" "$tmpbin/import.sh" "$tmpbin"
fi
work=${BENCH_DIR:-/var/tmp/sdk-run-bench-$(id -u)}
mkdir -p "$work"
cd "$work"

sources() { # the host's apt sources, one-line format, for mmdebstrap on stdin
  if ls /etc/apt/sources.list.d/*.sources >/dev/null 2>&1; then
    awk '/^URIs:/{u=$2} /^Suites:/{for(i=2;i<=NF;i++) s[n++]=$i} /^Components:/{c=$2; for(j=0;j<n;j++) print "deb " u " " s[j] " " c; n=0}' \
      /etc/apt/sources.list.d/*.sources
  fi
  grep -hs '^deb ' /etc/apt/sources.list || true
}

# Layer 1: a minimal Debian; layer 2: a toolchain on top (~400 MB in all).
if [ ! -f img.oci.tar ]; then
  sources | mmdebstrap --quiet --mode=unshare --variant=minbase --format=tar bookworm base.tar -
  sources | mmdebstrap --quiet --mode=unshare --variant=minbase --format=tar \
    --include=gcc,g++,make,perl,python3,git bookworm full.tar -
  rm -rf layout
  umoci init --layout layout
  umoci new --image layout:bench
  umoci raw add-layer --image layout:bench base.tar
  umoci raw add-layer --image layout:bench full.tar
  skopeo copy --quiet oci:layout:bench oci-archive:img.oci.tar.tmp
  mv img.oci.tar.tmp img.oci.tar
  rm -f base.tar full.tar
fi
du -sh layout img.oci.tar

export XDG_DATA_HOME="$work/data"
mkdir -p "$XDG_DATA_HOME"
# Every run unpacks into a new place and nothing is deleted until all runs
# are done. On an ext4 without a journal (this development VM's), the inode
# allocator skips every inode freed in the last 60-360 s, reading its inode
# table block each time (recently_deleted() in fs/ext4/ialloc.c): deleting
# the previous run's 20,000 files just before a run made that run's file
# creation several times slower (measured: 2.75 s after a quiet 400 s,
# 9.95 s right after `rmi`, the same import), for both tools alike.
# FRESH=0 deletes before each run instead, as this script used to.
runs=$work/runs
cleanup_runs() {
  for d in "$runs"/sdk.*; do
    [ -d "$d" ] && XDG_DATA_HOME=$d sdk-run rmi --force bench >/dev/null 2>&1
  done
  chmod -R u+rwX "$runs" 2>/dev/null || true
  rm -rf "$runs"
}
cleanup_runs
trap cleanup_runs EXIT  # after the sandbox runs below too
mkdir -p "$runs"
if [ "${FRESH:-1}" = 1 ]; then
  hyperfine --runs "${RUNS:-3}" --export-markdown import.md --export-json import.json \
    -n "sdk-run import (oci-archive)" \
    "d=$runs/sdk.\$(date +%s%N); mkdir \$d && XDG_DATA_HOME=\$d sdk-run import img.oci.tar --tag bench" \
    -n "umoci unpack --rootless" \
    "umoci unpack --rootless --image layout:bench $runs/umoci.\$(date +%s%N)"
else
  hyperfine --runs "${RUNS:-3}" --export-markdown import.md --export-json import.json \
    --prepare "sdk-run rmi --force bench >/dev/null 2>&1 || true" \
    -n "sdk-run import (oci-archive)" "sdk-run import img.oci.tar --tag bench" \
    --prepare "chmod -R u+rwX bundle 2>/dev/null; rm -rf bundle" \
    -n "umoci unpack --rootless" "umoci unpack --rootless --image layout:bench bundle"
fi
du -sh --apparent-size "$runs"/umoci.*/rootfs bundle/rootfs 2>/dev/null | head -1 || true

# A second sandbox over the already-unpacked base: overlay layer created,
# sandbox started, `true` run, sandbox removed.
sdk-run import img.oci.tar --tag bench >/dev/null
base="$XDG_DATA_HOME/sdk-run/images/$(basename "$(readlink "$XDG_DATA_HOME/sdk-run/images/tags/bench")")/rootfs"
hyperfine --warmup 2 --runs "${RUNS_SANDBOX:-20}" --export-markdown sandbox.md --export-json sandbox.json \
  -n "new sandbox over an unpacked base (create + start + true + rm)" \
  "sdk-run --rm -n bench-\$RANDOM --rootfs $base --overlay -- true"
cat import.md sandbox.md
