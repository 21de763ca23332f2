#!/usr/bin/env bash
# The README main job in one command (`make demo`), from a fresh clone:
# install what is needed, build the tools, then, as an unprivileged user
# (the product needs no root), create the default SDK sandbox for the
# example distro repo (the systemd OS, `examples/systemd-os`) and run
# inside it setup_board, build_packages, build_image, image_to_vm and
# test_image for the board: the image boots with an Ignition config that
# provisions a login with a key made for you, and the example's tests run
# in it over ssh. Prints where everything is, how long each step took, and
# how to boot it again and ssh in.
#
#   make demo                       # as root on a fresh Debian 12 machine
#   DEMO_BOARD=amd64-usr DEMO_DIR=/var/tmp/sdk-run-demo .ci/demo.sh
#   DEMO_BOARD=arm64-usr .ci/demo.sh   # arm64: cross-built, booted under qemu-system-aarch64
#   DEMO_REPO=demo-os .ci/demo.sh   # the busybox example instead
#
# Run as root, it uses the unprivileged user `make test` uses (created with
# subordinate id ranges if missing); run as a normal user, it runs as you.
# The example repo is copied to DEMO_DIR (its __build__ outputs and the
# SDK store persist there, so a second run reuses what it can).
set -euo pipefail
cd "$(dirname "$0")/.."
top=$PWD
board=${DEMO_BOARD:-amd64-usr}
demo_dir=${DEMO_DIR:-/var/tmp/sdk-run-demo}
example=${DEMO_REPO:-systemd-os}
if [ ! -f "examples/$example/sdk-version.toml" ]; then
  echo "error: DEMO_REPO=$example: no examples/$example/sdk-version.toml; use systemd-os or demo-os" >&2
  exit 2
fi

declare -a timings=()
timed() {
  local name=$1
  shift
  printf '\n== %s\n' "$name"
  local start
  start=$(date +%s%N)
  "$@"
  timings+=("$(printf '%-16s %8s s' "$name" "$(secs "$start")")")
}
# Seconds since a `date +%s%N` stamp, one decimal.
secs() { local ms=$((($(date +%s%N) - $1) / 1000000)); printf '%d.%d' $((ms / 1000)) $((ms % 1000 / 100)); }

all_start=$(date +%s%N)
timed "install deps" ./.ci/install-deps.sh
timed "cargo build" cargo build --workspace --release --locked
# The static launcher; the init of arm64-usr images is sdk-tools for aarch64.
timed "cross build" ./.ci/cross.sh release

if [ "$(id -u)" = 0 ]; then
  eval "$(SDK_E2E_INSTALL=/opt/sdk-run-demo/bin ./.ci/setup-test-env.sh target/release)"
  user=$SDK_E2E_USER
  bin=$SDK_E2E_BIN
  home=$(getent passwd "$user" | cut -d: -f6)
  as_user() {
    setpriv --reuid "$user" --regid "$(id -g "$user")" --init-groups -- \
      env -i HOME="$home" USER="$user" LOGNAME="$user" LANG=C.UTF-8 \
      PATH="$bin:/usr/sbin:/usr/bin:/sbin:/bin" "$@"
  }
else
  user=$(id -un)
  bin=$top/target/release
  as_user() { env PATH="$bin:$PATH" "$@"; }
fi

# A fresh copy of the example repo the user owns (outputs stay between runs).
mkdir -p "$demo_dir"
repo=$demo_dir/$example
mkdir -p "$repo"
tar -C "examples/$example" --exclude=__build__ -cf - . | tar -C "$repo" -xf -
[ "$(id -u)" = 0 ] && chown -R "$user:" "$demo_dir"

# The systemd OS: a key for logging in, and the Ignition config that
# provisions the user `core` (group sudo) with it on the first boot.
# Both live in the repo copy, which the sandbox sees (test_image runs
# there and reads the config by its relative path).
mkdir -p "$repo/.demo"
[ "$(id -u)" = 0 ] && chown "$user:" "$repo/.demo"
key=$repo/.demo/id_ed25519
ign=$repo/.demo/login.ign
test_args=(--timeout 600)
if [ "$example" = systemd-os ]; then
  [ -f "$key" ] || as_user ssh-keygen -q -t ed25519 -N '' -C "sdk-run demo" -f "$key"
  cat >"$ign" <<EOF
{"ignition": {"version": "3.3.0"},
 "passwd": {"users": [{"name": "core", "groups": ["sudo"],
   "sshAuthorizedKeys": ["$(cat "$key.pub")"]}]},
 "storage": {"files": [{"path": "/etc/sudoers.d/core", "mode": 288,
   "contents": {"source": "data:,core%20ALL%3D(ALL)%20NOPASSWD%3A%20ALL%0A"}}]}}
EOF
  [ "$(id -u)" = 0 ] && chown "$user:" "$ign"
  test_args+=(--marker "systemd-os: boot finished:" --ignition .demo/login.ign --tests tests)
fi

sdk() { (cd "$repo" && as_user sdk-run "$@"); }
in_sdk() { sdk -- "$@"; }
timed "SDK image" sdk build
timed "setup_board" in_sdk setup_board --board "$board"
timed "build_packages" in_sdk build_packages --board "$board"
timed "build_image" in_sdk build_image --board "$board" --replace
timed "image_to_vm" in_sdk image_to_vm --board "$board"
timed "test_image" in_sdk test_image --board "$board" "${test_args[@]}"

out=$repo/__build__/images/$board/latest
image=$(readlink -f "$out")
qemu_sh=$(ls "$out"/*_qemu.sh 2>/dev/null | head -1)
printf '\n== done (as %s)\n' "$user"
printf '  %s\n' "${timings[@]}"
printf '  %-16s %8s s\n' "total" "$(secs "$all_start")"
# Commands that work pasted as they are, by whoever ran the demo: as
# root they switch to the user who owns the sandbox and its store.
enter="cd $repo && $bin/sdk-run -t"
inner_test=""
[ "$example" = systemd-os ] && inner_test=" --marker 'systemd-os: boot finished:' --tests tests"
# The live ISO and the netboot set boot in QEMU on x86_64 only.
live=""
if [ "$board" = amd64-usr ]; then
  live="
      #   build_image --board $board --format iso && test_image --board $board --format iso
      #   build_image --board $board --format pxe && test_image --board $board --format pxe"
fi
boot="$qemu_sh -nographic"
[ "$example" = systemd-os ] && boot="$qemu_sh -nographic -i $ign -p 2222"
login="ssh -i $key -p 2222 -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null core@127.0.0.1"
if [ "$(id -u)" = 0 ]; then
  enter="runuser -u $user -- sh -c '$enter'"
  boot="runuser -u $user -- $boot"
  login="runuser -u $user -- $login"
fi
cat <<EOF

example repo:  $repo (owned by $user)
image:         $image
console log:   $(ls "$out"/*_console.log 2>/dev/null | head -1)

Paste to go on:
  $enter
      # the SDK shell (as $user; \`sdk-run list\` shows the sandbox); inside:
      #   build_packages --board $board && build_image --board $board --replace
      #   image_to_vm --board $board && test_image --board $board$inner_test$live
  $boot
      # boot the image on this terminal (Ctrl-a x quits QEMU)
EOF
if [ "$example" = systemd-os ]; then
  cat <<EOF
  $login
      # from a second terminal once it has booted: a shell as core (sudo works)
EOF
fi
cat <<EOF
  make -C $top install PREFIX=\$HOME/.local
      # sdk-run and sdk-tools on your own PATH, with man pages and completions
EOF
