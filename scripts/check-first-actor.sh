#!/usr/bin/env bash
# Builds and runs the README's "A first actor" code, verbatim, in a fresh crate whose
# Cargo.toml has only the README's two dependencies (`aether` and `tokio`); then again with
# `aether` renamed in Cargo.toml, which the derive must follow. Shares this repository's target
# directory, so only the small crate itself is compiled.
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# The first ```toml and ```rust blocks after the heading.
section="$(sed -n '/^## A first actor/,/^## /p' README.md)"
toml="$(printf '%s\n' "$section" | awk '/^```toml/{f=1;next} /^```/{if(f){exit}} f')"
code="$(printf '%s\n' "$section" | awk '/^```rust/{f=1;next} /^```/{if(f){exit}} f')"
[ -n "$toml" ] && [ -n "$code" ] || { echo "no toml/rust block under 'A first actor'" >&2; exit 1; }

run() { # name, toml dependencies, code
  local dir="$work/$1"
  mkdir -p "$dir/src"
  printf '[package]\nname = "%s"\nversion = "0.1.0"\nedition = "2024"\n\n[workspace]\n\n%s\n' \
    "$1" "$2" >"$dir/Cargo.toml"
  printf '%s\n' "$3" >"$dir/src/main.rs"
  # The versions this repository is tested with (cargo drops what the crate does not use).
  cp "$repo/Cargo.lock" "$dir/Cargo.lock"
  (cd "$dir" && CARGO_TARGET_DIR="$repo/target" cargo run --quiet)
}

deps="$(printf '%s\n' "$toml" | sed "s#path = \"../aether\"#path = \"$repo\"#")"
grep -q "^aether = " <<<"$deps" && grep -q "^tokio = " <<<"$deps" \
  && [ "$(grep -c ' = ' <<<"$deps")" -eq 2 ] \
  || { echo "the README's Cargo.toml must list exactly aether and tokio" >&2; exit 1; }
out="$(run first-actor "$deps" "$code")"
echo "$out"
grep -qx "clicks: 1" <<<"$out" || { echo "unexpected output of the first actor" >&2; exit 1; }

renamed_deps="$(sed 's#^aether = { #actors = { package = "aether", #' <<<"$deps")"
renamed_code="$(sed 's#aether::#actors::#g' <<<"$code")"
out="$(run renamed "$renamed_deps" "$renamed_code")"
echo "$out (with aether renamed to actors)"
grep -qx "clicks: 1" <<<"$out" || { echo "unexpected output with a renamed dependency" >&2; exit 1; }
