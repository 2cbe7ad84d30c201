#!/usr/bin/env bash
# Prints the path of a headless Chromium for the dashboard's browser test, installing Debian's
# `chromium-headless-shell` package first if no Chromium is on this machine. Needs apt-get (and
# root, or sudo without a password) the first time.
set -euo pipefail

# The browser itself is preferred to Debian's wrapper script in /usr/bin, which does not
# `exec` it (killing the script would leave the browser running).
find_chromium() {
  for path in "${AETHER_CHROMIUM:-}" /usr/lib/chromium/chromium-headless-shell \
      /usr/lib/chromium-headless-shell/headless_shell; do
    if [ -n "$path" ] && [ -x "$path" ]; then echo "$path"; return 0; fi
  done
  for name in chromium-headless-shell chromium headless_shell; do
    if command -v "$name" 2>/dev/null; then return 0; fi
  done
  return 1
}

find_chromium && exit 0

sudo=""
if [ "$(id -u)" != "0" ]; then
  sudo="sudo -n"
fi
echo "installing chromium-headless-shell from Debian's packages" >&2
$sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
  chromium-headless-shell fonts-dejavu-core >&2
find_chromium || { echo "chromium-headless-shell was installed but no binary was found" >&2; exit 1; }
