#!/usr/bin/env bash
# Runs the whole test suite, on a fresh machine too: installs what the tests need first.
set -euo pipefail
cd "$(dirname "$0")/.."

AETHER_NATS_SERVER="$(scripts/install-nats-server.sh)"
export AETHER_NATS_SERVER
echo "using nats-server: $AETHER_NATS_SERVER ($("$AETHER_NATS_SERVER" --version))"
# An older server, to check that it is refused with a clear error (below the 2.11 minimum).
AETHER_NATS_SERVER_OLD="$(scripts/install-nats-server.sh 2.10.26)"
export AETHER_NATS_SERVER_OLD

# The dashboard's browser test drives a headless Chromium (Debian's package, installed once).
AETHER_CHROMIUM="$(scripts/install-chromium.sh)"
export AETHER_CHROMIUM
echo "using chromium: $AETHER_CHROMIUM"

# The admin tool's end-to-end tests (tests/cli.rs) run the `aether` binary itself.
cargo build --locked -p aether-cli
cargo test --workspace --locked "$@"
# The optional OpenTelemetry join (a feature: its test needs the runtime built with it).
cargo test --locked --features opentelemetry --test opentelemetry "$@"
