#!/usr/bin/env bash
# A release tarball: sdk-run-VERSION-ARCH-linux.tar.gz with bin/, share/
# (man pages, completions) and install.sh, built from a clean release
# build. Unpack it anywhere and run its install.sh, or put its bin/ on PATH.
#
#   .ci/release.sh            # writes target/dist/sdk-run-VERSION-ARCH-linux.tar.gz
#   BIN_DIR=DIR OUT_DIR=DIR .ci/release.sh   # from binaries built elsewhere
set -euo pipefail
cd "$(dirname "$0")/.."
bin_dir=${BIN_DIR:-target/release}
out_dir=${OUT_DIR:-target/dist}
if [ -z "${BIN_DIR:-}" ]; then
  cargo build --release --locked -p sdk-run -p sdk-tools
  # The static launcher; with the cross compiler, sdk-tools-aarch64 too.
  CROSS_ARCHES=$(command -v aarch64-linux-gnu-gcc >/dev/null && echo aarch64 || true) ./.ci/cross.sh release
fi
version=$("$bin_dir/sdk-run" --version | awk '{print $2}')
arch=$(uname -m)
name=sdk-run-$version-$arch-linux
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
BIN_DIR=$bin_dir DESTDIR=$stage/$name PREFIX= .ci/install.sh >/dev/null
cat >"$stage/$name/install.sh" <<'INNER'
#!/bin/sh
# Copy this release into PREFIX (default /usr/local): sh install.sh [PREFIX]
set -eu
here=$(cd "$(dirname "$0")" && pwd)
prefix=${1:-/usr/local}
mkdir -p "$prefix"
cp -R "$here/bin" "$here/share" "$prefix/"
echo "installed into $prefix/bin"
INNER
chmod 0755 "$stage/$name/install.sh"
mkdir -p "$out_dir"
tar -C "$stage" --owner=0 --group=0 --numeric-owner --sort=name \
  --mtime="@${SOURCE_DATE_EPOCH:-0}" -cf - "$name" | gzip -9n >"$out_dir/$name.tar.gz"
echo "$out_dir/$name.tar.gz"
