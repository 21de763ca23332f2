#!/usr/bin/env bash
# The main job on the embedded default: install what is needed, build the
# tools, and run the build inside the default SDK sandbox of the example repo.
set -euo pipefail
cd "$(dirname "$0")/.."
./.ci/install-deps.sh
cargo build --workspace --release --locked
echo "built: target/release/sdk-run, target/release/sdk-tools"
