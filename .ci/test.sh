#!/usr/bin/env bash
# Every test tier, from a fresh machine: installs what it needs, lints,
# unit tests, then end-to-end tests as an unprivileged user.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }

step "system packages"
./.ci/install-deps.sh

step "format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

step "build"
cargo build --workspace --release --locked
# The static launcher, and the init and update agent of arm64-usr images
# (sdk-tools for aarch64).
./.ci/cross.sh release

step "unit tests"
cargo test --workspace --release --locked --exclude sdk-e2e

step "end-to-end tests (as an unprivileged user)"
eval "$(./.ci/setup-test-env.sh target/release)"
cargo test -p sdk-e2e --release --locked -- --test-threads=2
