#!/usr/bin/env bash
# Runs the whole test suite, on a fresh machine too: installs what the tests need first.
set -euo pipefail
cd "$(dirname "$0")/.."

AETHER_NATS_SERVER="$(scripts/install-nats-server.sh)"
export AETHER_NATS_SERVER
echo "using nats-server: $AETHER_NATS_SERVER ($("$AETHER_NATS_SERVER" --version))"

cargo test --workspace --locked "$@"
