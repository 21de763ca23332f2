#!/usr/bin/env bash
# From `build_image` start to the example OS's first-boot marker on the
# serial console, under TCG, with the stage breakdown: build_image's own
# stages, image_to_vm (qcow2 + launcher), and the boot itself (direct
# kernel and UEFI through OVMF + systemd-boot). The packages are built
# first (setup_board + build_packages) and not timed.
#
#   bench/boot.sh                 # uses target/release/sdk-tools
#   SDK_TOOLS=/path/sdk-tools BENCH_DIR=/var/tmp/b bench/boot.sh
#
# Runs as whoever calls it (no root needed). There is no peer tool that
# boots the same image, so this reports our figures alone; Flatcar's
# build_image + image_to_vm take 15-30 minutes with root and loop mounts.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
tools=${SDK_TOOLS:-$top/target/release/sdk-tools}
board=${BENCH_BOARD:-amd64-usr}
work=${BENCH_DIR:-$(mktemp -d /var/tmp/sdk-bench-boot.XXXXXX)}
repo=$work/demo-os
rm -rf "$repo"
mkdir -p "$repo"
tar -C "$top/examples/demo-os" --exclude=__build__ -cf - . | tar -C "$repo" -xf -
export SDK_BUILD_ROOT=$work/build
cd "$repo"

echo "preparing: setup_board + build_packages (not timed)"
"$tools" setup_board --board "$board" >/dev/null
"$tools" build_packages --board "$board" >/dev/null

now() { date +%s%N; }
secs() { local ms=$((($2 - $1) / 1000000)); printf '%d.%02d' $((ms / 1000)) $((ms % 1000 / 10)); }

t0=$(now)
"$tools" build_image --board "$board" --replace 2>"$work/build_image.log"
t1=$(now)
"$tools" image_to_vm --board "$board" >/dev/null
t2=$(now)
"$tools" test_image --board "$board" --timeout 600 | tee "$work/test_image.log"
t3=$(now)
"$tools" image_to_vm --board "$board" --format qemu_uefi >/dev/null
t4=$(now)
"$tools" test_image --board "$board" --format qemu_uefi --timeout 600 | tee "$work/test_image_uefi.log"
t5=$(now)

boot=$(sed -n 's/^PASS in \([0-9.]*\)s.*/\1/p' "$work/test_image.log")
boot_uefi=$(sed -n 's/^PASS in \([0-9.]*\)s.*/\1/p' "$work/test_image_uefi.log")
echo
echo "build_image to marker, $board, TCG ($(nproc) cores):"
grep 'stages:' "$work/build_image.log" | sed 's/^build_image: /  build_image /'
printf '  %-34s %8s s\n' "build_image" "$(secs "$t0" "$t1")"
printf '  %-34s %8s s\n' "image_to_vm (qcow2, launcher)" "$(secs "$t1" "$t2")"
printf '  %-34s %8s s  (QEMU start to marker: %s s)\n' "test_image, direct kernel" "$(secs "$t2" "$t3")" "$boot"
printf '  %-34s %8s s\n' "total: build_image start to marker" "$(secs "$t0" "$t3")"
printf '  %-34s %8s s\n' "image_to_vm --format qemu_uefi" "$(secs "$t3" "$t4")"
printf '  %-34s %8s s  (QEMU start to marker: %s s)\n' "test_image, UEFI + systemd-boot" "$(secs "$t4" "$t5")" "$boot_uefi"
echo "work dir: $work"
