#!/usr/bin/env bash
# Creates the unprivileged test user (with subordinate uid/gid ranges) and a
# directory of built binaries that user can read. Prints `export` lines for
# the environment the end-to-end tests read (see tests/src/lib.rs).
#
#   eval "$(.ci/setup-test-env.sh target/release)"
set -euo pipefail

bindir_src=${1:?usage: setup-test-env.sh TARGET_PROFILE_DIR}
user=${SDK_E2E_USER:-sdktest}
# Developers running several checkouts side by side pick their own.
bin=${SDK_E2E_INSTALL:-/opt/sdk-e2e/bin}

if ! getent passwd "$user" >/dev/null; then
  useradd --create-home --shell /bin/sh "$user"
fi
# 65536 subordinate ids each, at a fixed start so runs are comparable.
grep -q "^$user:" /etc/subuid || usermod --add-subuids 300000-365535 "$user"
grep -q "^$user:" /etc/subgid || usermod --add-subgids 300000-365535 "$user"

mkdir -p "$bin"
# The static launcher (.ci/cross.sh) unless cargo linked sdk-run since.
launcher=$bindir_src/sdk-run
if [ -x "$bindir_src/sdk-run-static" ] && ! [ "$launcher" -nt "$bindir_src/sdk-run-static" ]; then
  launcher=$bindir_src/sdk-run-static
elif [ -x "$bindir_src/sdk-run-static" ]; then
  echo "note: $bindir_src/sdk-run-static is older than sdk-run; testing the dynamic build (.ci/cross.sh makes the static one)" >&2
fi
install -m 0755 "$launcher" "$bin/sdk-run"
install -m 0755 "$bindir_src/sdk-tools" "$bin/sdk-tools"
# sdk-tools built for other boards' architectures (.ci/cross.sh), beside it.
for f in "$bindir_src"/sdk-tools-*; do
  [ -f "$f" ] && install -m 0755 "$f" "$bin/$(basename "$f")"
done

echo "export SDK_E2E_USER=$user"
echo "export SDK_E2E_BIN=$bin"
