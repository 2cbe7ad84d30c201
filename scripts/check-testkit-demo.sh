#!/usr/bin/env bash
# Runs examples/testkit-demo, a crate outside the workspace that tests its own cluster node
# with aether-testkit: three node processes on a real nats-server, one killed.
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"
AETHER_NATS_SERVER="${AETHER_NATS_SERVER:-$(scripts/install-nats-server.sh)}"
export AETHER_NATS_SERVER
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# A copy, so the run leaves no lock file in the repository; the versions this repository is
# tested with (cargo drops what the crate does not use).
cp -r examples/testkit-demo "$work/"
sed -i "s#path = \"../..\"#path = \"$repo\"#; s#path = \"../../testkit\"#path = \"$repo/testkit\"#" \
  "$work/testkit-demo/Cargo.toml"
cp Cargo.lock "$work/testkit-demo/Cargo.lock"
cd "$work/testkit-demo"
CARGO_TARGET_DIR="$repo/target" cargo test --quiet -- --nocapture
