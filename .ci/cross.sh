#!/usr/bin/env bash
# Builds the binaries that need a target of their own, next to the host
# binaries in target/<profile>/ (make install, make dist and the test
# setup copy them from there):
#
# - sdk-run, the launcher, linked statically and not position-independent:
#   `sdk-run -- true` is the hot path, and a dynamic PIE of this size spends
#   longer before main (loading four libraries, 16,000 relocations, a
#   hundred more page faults) than nsenter spends in all (README,
#   "Entering"), as target/<profile>/sdk-run-static. make install, make
#   dist and the test setup install it as sdk-run when it is not older
#   than cargo's dynamic build (which every cargo build links anew).
# - sdk-tools for the foreign board architectures in CROSS_ARCHES (default
#   aarch64) with the distribution's cross toolchain: the init and update
#   agent of arm64-usr images (see sdk-tools/src/boot/initramfs.rs), as
#   target/<profile>/sdk-tools-<arch>. CROSS_ARCHES= skips them.
#
#   .ci/cross.sh [release|debug]
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${1:-release}
release=()
[ "$profile" = release ] && release=(--release)
add_target() {
  if command -v rustup >/dev/null && ! rustup target list --installed | grep -qx "$1"; then
    rustup target add "$1"
  fi
}
# Replace the file (never write into it: cargo's copy may be a hard link
# of its own, and a running sdk-run must not change under itself).
put() { install -m 0755 "$1" "$2.new" && mv -f "$2.new" "$2"; }

host=$(rustc -vV | sed -n 's/^host: //p')
upper=$(echo "$host" | tr a-z- A-Z_)
# Given through the target's RUSTFLAGS with an explicit --target, these
# reach the target's crates only, not build scripts or proc macros.
env "CARGO_TARGET_${upper}_RUSTFLAGS=-C target-feature=+crt-static -C relocation-model=static" \
  cargo build --locked "${release[@]}" -p sdk-run --target "$host"
put "target/$host/$profile/sdk-run" "target/$profile/sdk-run-static"

for arch in ${CROSS_ARCHES-aarch64}; do
  triple=$arch-unknown-linux-gnu
  gnu=$arch-linux-gnu
  add_target "$triple"
  command -v "$gnu-gcc" >/dev/null ||
    { echo "error: no $gnu-gcc; install gcc-$gnu (.ci/install-deps.sh does)" >&2; exit 2; }
  upper=$(echo "$triple" | tr a-z- A-Z_)
  # The cross linker, and the C parts of crates (zstd, ring) built with the
  # matching compiler.
  env "CARGO_TARGET_${upper}_LINKER=$gnu-gcc" "CC_${triple//-/_}=$gnu-gcc" "AR_${triple//-/_}=$gnu-ar" \
    cargo build --locked "${release[@]}" -p sdk-tools --target "$triple"
  put "target/$triple/$profile/sdk-tools" "target/$profile/sdk-tools-$arch"
done
