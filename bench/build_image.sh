#!/usr/bin/env bash
# build_image vs systemd-repart, same run, same staging root: both make a
# GPT disk with an ESP (vfat, the kernel on it) and a /usr ext4 filesystem
# protected by dm-verity, sized to the content.
#
# - ours: `sdk-tools build_image --root STAGING` (also builds the
#   initramfs, OEM and ROOT filesystems, contents list, SBOM, manifest);
# - peer: `systemd-repart` (Debian 12's systemd 252) with Format=ext4,
#   CopyFiles=/usr:/ and Verity=data/hash partitions, then `mcopy` for the
#   ESP files (repart 252 copies into vfat by mounting it, which needs the
#   vfat driver this kernel lacks).
#
# Both tools run on two staging roots in the same hyperfine run (see
# below): a small one and one the size of a real OS.
#
# Usage: bench/build_image.sh   (as root; BENCH_DIR=/var/tmp/sdk-bench-image)
set -euo pipefail
cd "$(dirname "$0")/.."
repo_dir=$PWD
tools=${SDK_TOOLS:-$repo_dir/target/release/sdk-tools}
work=${BENCH_DIR:-/var/tmp/sdk-bench-image}
runs=${RUNS:-5}
mkdir -p "$work"
[ -x "$tools" ] || cargo build --release -p sdk-tools
systemd-repart --version | head -1

# Two staging roots, each bootstrapped once with mmdebstrap from the
# host's apt sources and kept in $BENCH_DIR: `small` is Debian bookworm
# minbase + the cloud kernel + busybox (a /usr of about the busybox
# example's make-up); `big` is the size of a real OS, the systemd example's
# packages plus large ones (python3, perl, containerd, golang, gcc): over
# 1 GiB in /usr and 40,000 files.
small_pkgs=linux-image-cloud-amd64,busybox
big_pkgs=linux-image-cloud-amd64,busybox,systemd,systemd-sysv,systemd-resolved,dbus,openssh-server,sudo,iproute2,iputils-ping,ignition,python3,python3-numpy,perl,containerd,golang-go,gcc,g++,git,linux-headers-cloud-amd64
bootstrap() { # NAME PACKAGES
  local root=$work/$1
  [ -d "$root/usr" ] && return
  local sources=()
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [ -s "$f" ] && sources+=("$f")
  done
  rm -rf "$root.tmp"
  mmdebstrap --quiet --mode=root --variant=minbase --skip=output/dev \
    --include="$2" bookworm "$root.tmp" "${sources[@]}"
  # A /usr-only OS carries no apt caches; root's dotfiles have no place.
  rm -rf "$root.tmp"/var/cache/apt/* "$root.tmp"/var/lib/apt/lists/* "$root.tmp"/root/.[!.]*
  mv "$root.tmp" "$root"
}
export SOURCE_DATE_EPOCH=1700000000

# For each root: a repo with a bench board (the amd64-usr profile, and a
# layout with the peer's partitions, ESP 128 MiB and USR with verity, plus
# what an A/B image needs besides: an empty USR-B and a small ROOT), one
# build of ours (to size the peer's partitions the same and to show the
# stage breakdown), and the peer's definitions and script.
prepare() { # NAME USR_SIZE
  local name=$1 usr_size=$2
  local root=$work/$name repo=$work/repo-$name out=$work/out-$name defs=$work/repart-$name.d
  echo "staging root $name: $(du -sh --apparent-size "$root/usr" | cut -f1) in /usr, $(find "$root/usr" | wc -l) paths in /usr"
  mkdir -p "$repo/profiles/bench"
  printf 'sdk-version = "bench"\nos-version = "1.0.0"\n' >"$repo/sdk-version.toml"
  sed 's/^description = .*/description = "benchmark board"/' profiles/amd64-usr/profile.toml >"$repo/profiles/bench/profile.toml"
  cat >"$repo/profiles/bench/disk-layout.toml" <<EOF
[disk]
sector-size = 512
alignment = "2MiB"
arch = "x86-64"

[[partition]]
number = 1
label = "EFI-SYSTEM"
type = "efi"
size = "128MiB"
fs = "vfat"

[[partition]]
number = 3
label = "USR-A"
type = "flatcar-usr"
size = "$usr_size"
features = ["prioritize", "verity"]
fs = "ext4"

[[partition]]
number = 4
label = "USR-B"
type = "flatcar-usr"
size = "$usr_size"

[[partition]]
number = 9
label = "ROOT"
type = "flatcar-resize"
size = "64MiB"
fs = "ext4"
EOF
  rm -rf "$out"
  (cd "$repo" && "$tools" build_image --board bench --root "$root" --output "$out") 2>"$work/stages-$name.txt" >/dev/null
  sed "s/^/  $name: /" "$work/stages-$name.txt"
  local usr_bytes kernel
  usr_bytes=$(sed -n 's/^VERITY_HASH_OFFSET=//p' "$out"/latest/*_verity.txt)
  kernel=$(ls "$root"/boot/vmlinuz-* | head -1)
  mkdir -p "$defs"
  cat >"$defs/10-esp.conf" <<EOF
[Partition]
Type=esp
Format=vfat
SizeMinBytes=128M
SizeMaxBytes=128M
EOF
  cat >"$defs/20-usr.conf" <<EOF
[Partition]
Type=usr
Format=ext4
CopyFiles=/usr:/
Verity=data
VerityMatchKey=usr
SizeMinBytes=$usr_bytes
SizeMaxBytes=$usr_bytes
EOF
  # repart 252 does not size the hash partition itself (it fails with EIO
  # when it is too small; 64 MiB was enough for the small root, 22 not).
  local hash_mib=$((usr_bytes / 1048576 / 16 + 16))
  [ "$hash_mib" -ge 64 ] || hash_mib=64
  cat >"$defs/21-usr-verity.conf" <<EOF
[Partition]
Type=usr-verity
Verity=hash
VerityMatchKey=usr
SizeMinBytes=${hash_mib}M
SizeMaxBytes=${hash_mib}M
EOF
  cat >"$work/repart-$name.sh" <<EOF
#!/bin/sh
set -e
rm -f "$work/repart-$name.img"
systemd-repart --empty=create --size=auto --definitions="$defs" --root="$root" \
  --dry-run=no --seed=0d9a3e4a-5a1b-4c7e-9d55-2f6b1c3d4e5f --json=short "$work/repart-$name.img" >"$work/repart-$name.json" 2>/dev/null
off=\$(( \$(sfdisk -l -o Start "$work/repart-$name.img" | awk 'f { print; exit } /^ *Start/ { f = 1 }') * 512 ))
MTOOLS_SKIP_CHECK=1 mcopy -i "$work/repart-$name.img@@\$off" "$kernel" ::/vmlinuz
EOF
  chmod +x "$work/repart-$name.sh"
  "$work/repart-$name.sh"
  echo "  $name: peer roothash $(grep -o '"roothash":"[0-9a-f]*"' "$work/repart-$name.json" | head -1)"
}

bootstrap small "$small_pkgs"
bootstrap big "$big_pkgs"
prepare small 512MiB
prepare big 3GiB

ours() { echo "cd '$work/repo-$1' && '$tools' build_image --board bench --root '$work/$1' --output '$work/out-$1' --replace >/dev/null 2>&1"; }
hyperfine --runs "$runs" --warmup 1 --export-json "$work/hyperfine.json" \
  -n build_image-small "$(ours small)" \
  -n systemd-repart-small "$work/repart-small.sh" \
  -n build_image-big "$(ours big)" \
  -n systemd-repart-big "$work/repart-big.sh"
median() { grep -A30 "\"command\": \"$1\"" "$work/hyperfine.json" | grep -m1 '"median"' | grep -o '[0-9.]*'; }
for name in small big; do
  o=$(median "build_image-$name")
  p=$(median "systemd-repart-$name")
  echo "$name root: median build_image ${o} s, systemd-repart ${p} s: $(awk -v a="$p" -v b="$o" 'BEGIN { printf "%.2f", a / b }')x"
done
# Peak memory: build_image streams files into the filesystems and hashes
# in bounded chunks, so its peak RSS should stay flat as /usr grows in
# bytes (what it keeps per path, for the contents list, the SBOM and the
# filesystem's tables, grows with the number of paths). A third root,
# `bulk`, is `small` plus 1 GiB in four incompressible files.
if [ ! -d "$work/bulk/usr/share/bulk" ]; then
  rm -rf "$work/bulk" && cp -a "$work/small" "$work/bulk" && mkdir -p "$work/bulk/usr/share/bulk"
  for i in 1 2 3 4; do
    head -c 256M < <(openssl enc -aes-128-ctr -pass "pass:bulk$i" -nosalt -pbkdf2 </dev/zero 2>/dev/null) \
      >"$work/bulk/usr/share/bulk/f$i"
  done
fi
rm -rf "$work/repo-bulk" && cp -a "$work/repo-small" "$work/repo-bulk"
sed -i 's/size = "512MiB"/size = "1536MiB"/' "$work/repo-bulk/profiles/bench/disk-layout.toml"
for name in small bulk big; do
  rss=$(cd "$work/repo-$name" && /usr/bin/time -f %M "$tools" build_image --board bench --root "$work/$name" \
    --output "$work/out-$name" --replace 2>&1 >/dev/null | tail -1)
  echo "$name root: build_image peak RSS $((rss / 1024)) MiB ($(du -sm --apparent-size "$work/$name/usr" | cut -f1) MiB in /usr)"
done
echo "load: $(cut -d' ' -f1-3 /proc/loadavg)"
