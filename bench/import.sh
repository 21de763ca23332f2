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
    RUNS="${RUNS:-}" RUNS_SANDBOX="${RUNS_SANDBOX:-}" "$tmpbin/import.sh" "$tmpbin"
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
hyperfine --runs "${RUNS:-3}" --export-markdown import.md \
  --prepare "sdk-run rmi --force bench >/dev/null 2>&1 || true" \
  -n "sdk-run import (oci-archive)" "sdk-run import img.oci.tar --tag bench" \
  --prepare "chmod -R u+rwX bundle 2>/dev/null; rm -rf bundle" \
  -n "umoci unpack --rootless" "umoci unpack --rootless --image layout:bench bundle"
du -sh --apparent-size bundle/rootfs 2>/dev/null || true

# A second sandbox over the already-unpacked base: overlay layer created,
# sandbox started, `true` run, sandbox removed.
sdk-run import img.oci.tar --tag bench >/dev/null
base="$XDG_DATA_HOME/sdk-run/images/$(basename "$(readlink "$XDG_DATA_HOME/sdk-run/images/tags/bench")")/rootfs"
hyperfine --warmup 2 --runs "${RUNS_SANDBOX:-20}" --export-markdown sandbox.md \
  -n "new sandbox over an unpacked base (create + start + true + rm)" \
  "sdk-run --rm -n bench-\$RANDOM --rootfs $base --overlay -- true"
cat import.md sandbox.md
