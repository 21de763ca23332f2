#!/usr/bin/env bash
# From `build_image` start to ssh answering in the booted example OS (the
# systemd one, `examples/systemd-os`), under TCG, with the stage
# breakdown: build_image's own stages, image_to_vm (qcow2 overlay +
# launcher), and the boot itself, direct kernel and UEFI (OVMF +
# systemd-boot): QEMU start to the boot-finished marker and to ssh
# answering as the user test_image provisions through Ignition. The
# packages are built first (setup_board + build_packages) and not timed.
#
#   bench/boot.sh                          # uses target/release/sdk-tools
#   SDK_TOOLS=/path/sdk-tools BENCH_DIR=/var/tmp/b bench/boot.sh
#   BENCH_REPO=demo-os bench/boot.sh       # the busybox OS: to its marker, no ssh
#
# Runs as whoever calls it (no root needed). There is no peer tool that
# boots the same image, so this reports our figures alone; Flatcar's
# build_image + image_to_vm take 15-30 minutes with root and loop mounts.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
tools=${SDK_TOOLS:-$top/target/release/sdk-tools}
board=${BENCH_BOARD:-amd64-usr}
example=${BENCH_REPO:-systemd-os}
work=${BENCH_DIR:-$(mktemp -d /var/tmp/sdk-bench-boot.XXXXXX)}
repo=$work/$example
rm -rf "$repo"
mkdir -p "$repo"
tar -C "$top/examples/$example" --exclude=__build__ -cf - . | tar -C "$repo" -xf -
export SDK_BUILD_ROOT=$work/build
cd "$repo"

# What test_image waits for: the systemd OS's marker and ssh (one test
# that only has to run), or the busybox OS's marker.
test_args=(--timeout 600)
if [ "$example" = systemd-os ]; then
  mkdir -p "$work/ssh-test"
  printf '#!/bin/sh\ntrue\n' >"$work/ssh-test/00-ssh-answers"
  chmod +x "$work/ssh-test/00-ssh-answers"
  test_args+=(--marker "systemd-os: boot finished:" --tests "$work/ssh-test")
fi

echo "preparing: setup_board + build_packages (not timed)"
"$tools" setup_board --board "$board" >/dev/null
"$tools" build_packages --board "$board" >/dev/null 2>&1

now() { date +%s%N; }
secs() { local ms=$((($2 - $1) / 1000000)); printf '%d.%02d' $((ms / 1000)) $((ms % 1000 / 10)); }

t0=$(now)
"$tools" build_image --board "$board" --replace 2>"$work/build_image.log"
t1=$(now)
"$tools" image_to_vm --board "$board" >/dev/null
t2=$(now)
"$tools" test_image --board "$board" "${test_args[@]}" >"$work/test_image.log" 2>&1
t3=$(now)
"$tools" image_to_vm --board "$board" --format qemu_uefi >/dev/null
t4=$(now)
"$tools" test_image --board "$board" --format qemu_uefi "${test_args[@]}" >"$work/test_image_uefi.log" 2>&1
t5=$(now)

marker() { sed -n 's/.*booting done in \([0-9.]*\)s.*/\1/p' "$1" | tail -1; }
ssh_at() { sed -n 's/.*ssh answered \([0-9.]*\)s after QEMU started.*/\1/p' "$1" | head -1; }
echo
echo "build_image to $([ "$example" = systemd-os ] && echo 'ssh answering' || echo 'the marker'), $example, $board, TCG ($(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)):"
grep 'stages:' "$work/build_image.log" | sed 's/^build_image: /  build_image /'
printf '  %-36s %8s s\n' "build_image" "$(secs "$t0" "$t1")"
printf '  %-36s %8s s\n' "image_to_vm (qcow2 overlay, launcher)" "$(secs "$t1" "$t2")"
for run in "direct kernel:$t2:$t3:$work/test_image.log" "UEFI + systemd-boot:$t4:$t5:$work/test_image_uefi.log"; do
  IFS=: read -r what a b log <<<"$run"
  printf '  %-36s %8s s  (QEMU start to marker %s s' "test_image, $what" "$(secs "$a" "$b")" "$(marker "$log")"
  [ "$example" = systemd-os ] && printf ', to ssh %s s' "$(ssh_at "$log")"
  printf ')\n'
done
printf '  %-36s %8s s\n' "build_image start to test_image end" "$(secs "$t0" "$t3")"
echo "work dir: $work"
