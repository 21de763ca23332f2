#!/usr/bin/env bash
# Builds sdk-tools for the foreign board architectures (today aarch64) with
# the distribution's cross toolchain: the init and update agent of arm64-usr
# images are sdk-tools built for aarch64 (see sdk-tools/src/boot/initramfs.rs).
# Puts each next to the host binaries as target/<profile>/sdk-tools-<arch>,
# where sdk-tools finds it (make install and the test setup copy it along).
#
#   .ci/cross.sh [release|debug]
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${1:-release}
flags=(--locked -p sdk-tools)
[ "$profile" = release ] && flags+=(--release)

for arch in aarch64; do
  triple=$arch-unknown-linux-gnu
  gnu=$arch-linux-gnu
  if command -v rustup >/dev/null && ! rustup target list --installed | grep -qx "$triple"; then
    rustup target add "$triple"
  fi
  command -v "$gnu-gcc" >/dev/null ||
    { echo "error: no $gnu-gcc; install gcc-$gnu (.ci/install-deps.sh does)" >&2; exit 2; }
  upper=$(echo "$triple" | tr a-z- A-Z_)
  # The cross linker, and the C parts of crates (zstd, ring) built with the
  # matching compiler.
  env "CARGO_TARGET_${upper}_LINKER=$gnu-gcc" "CC_${triple//-/_}=$gnu-gcc" "AR_${triple//-/_}=$gnu-ar" \
    cargo build "${flags[@]}" --target "$triple"
  install -m 0755 "target/$triple/$profile/sdk-tools" "target/$profile/sdk-tools-$arch"
done
