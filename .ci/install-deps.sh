#!/usr/bin/env bash
# Installs the system packages sdk-run's build, tests and main job need, from
# the host's configured Debian sources. Idempotent; needs root (or sudo).
set -euo pipefail

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

# One package a line, with why.
PACKAGES=(
  uidmap            # newuidmap/newgidmap: subordinate id ranges for sandboxes
  busybox-static    # test rootfs for the sandbox end-to-end tests
  util-linux        # setpriv, nsenter (tests, benchmark peer)
  bubblewrap        # benchmark peer
  hyperfine         # benchmarks
  openssl           # bench/verity.sh: what two cores can hash (openssl speed)
  tmux              # -t terminal tests
  cryptsetup-bin    # veritysetup: outside oracle for our verity trees
  e2fsprogs         # mkfs.ext4 -d, fsck.ext4, debugfs
  erofs-utils       # mkfs.erofs, fsck.erofs
  squashfs-tools    # mksquashfs, unsquashfs
  dosfstools        # mkfs.vfat, fsck.vfat
  mtools            # mcopy into vfat without mounting
  fdisk             # sfdisk --json: outside oracle for our GPT
  gdisk             # sgdisk -v
  mmdebstrap        # SDK rootfs bootstrap, binary package import
  dpkg-dev          # dpkg-deb and friends
  skopeo            # OCI oracle
  umoci             # OCI oracle and benchmark peer
  qemu-system-x86   # boot tests
  qemu-system-arm   # arm64 boot
  ovmf              # UEFI firmware for amd64 boot
  qemu-efi-aarch64  # UEFI firmware for arm64 boot
  qemu-user-static  # run arm64 test binaries
  gcc-aarch64-linux-gnu libc6-dev-arm64-cross  # host-side cross tests
  systemd-boot-efi  # bootloader for images
  gcc binutils file pkgconf curl  # build_packages: host board compiler, pkg-config wrappers, tarball downloads; tests: file, readelf
  man-db            # tests: installed man pages render
  xxd               # tests: the documented check of a disk image's blocks-sha256
  ignition          # ignition-validate: Ignition configs checked before a VM starts
  kmod              # depmod: build_image indexes the kernel modules, as the kernel's postinst would
  openssh-client    # test_image --tests: ssh into the guest
  netcat-openbsd    # launcher -u: QEMU's guestfwd reaches an update server on the loopback through nc
  systemd           # systemd-repart: benchmark peer of build_image
  time              # benchmarks: peak RSS (/usr/bin/time)
  ansible           # rootfs manifests: playbooks (community.general.chroot)
  ipxe-qemu         # netboot: the iPXE ROMs QEMU boots from the network with
  xorriso           # build_image --format iso: hybrid ISO images
)

codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# qemu-utils may come from backports on some machines, newer than the
# suite's qemu-system packages, which then refuse to install beside it: pin
# the whole qemu family to the suite.
$SUDO apt-get install -y -qq --no-install-recommends --allow-downgrades \
  ${codename:+qemu-utils/$codename} "${PACKAGES[@]}" >/dev/null

# moto (PyPI), in server mode: the local S3 store `publish` is tested
# against (on 127.0.0.1 only), with boto3 as the outside view of what it
# holds. The machine's own Python; Debian's asks for --break-system-packages.
if ! python3 -c 'import moto.server, boto3' 2>/dev/null; then
  PIP_ROOT_USER_ACTION=ignore python3 -m pip install -q "moto[server]" 2>/dev/null ||
    PIP_ROOT_USER_ACTION=ignore python3 -m pip install -q --break-system-packages "moto[server]"
fi
