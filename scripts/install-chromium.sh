#!/usr/bin/env bash
# Prints the path of a headless Chromium for the dashboard's browser test, installing Debian's
# `chromium-headless-shell` package first if no Chromium is on this machine. Needs apt-get (and
# root, or sudo without a password) the first time.
set -euo pipefail

# The browser itself, not Debian's wrapper script in /usr/bin (which does not `exec` it).
if [ -z "${AETHER_CHROMIUM:-}" ] && [ -x /usr/lib/chromium/chromium-headless-shell ]; then
  echo /usr/lib/chromium/chromium-headless-shell
  exit 0
fi
for candidate in "${AETHER_CHROMIUM:-}" chromium-headless-shell chromium headless_shell; do
  [ -n "$candidate" ] || continue
  if path="$(command -v "$candidate" 2>/dev/null)"; then
    echo "$path"
    exit 0
  fi
done
for path in /usr/lib/chromium/headless_shell /usr/lib/chromium-headless-shell/headless_shell; do
  if [ -x "$path" ]; then
    echo "$path"
    exit 0
  fi
done

sudo=""
if [ "$(id -u)" != "0" ]; then
  sudo="sudo -n"
fi
echo "installing chromium-headless-shell from Debian's packages" >&2
$sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
  chromium-headless-shell fonts-dejavu-core >&2
if [ -x /usr/lib/chromium/chromium-headless-shell ]; then
  echo /usr/lib/chromium/chromium-headless-shell
  exit 0
fi
for candidate in chromium-headless-shell headless_shell; do
  if path="$(command -v "$candidate" 2>/dev/null)"; then
    echo "$path"
    exit 0
  fi
done
for path in /usr/lib/chromium/headless_shell /usr/lib/chromium-headless-shell/headless_shell; do
  if [ -x "$path" ]; then
    echo "$path"
    exit 0
  fi
done
echo "chromium-headless-shell was installed but no binary was found" >&2
exit 1
