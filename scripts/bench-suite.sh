#!/usr/bin/env bash
# The whole benchmark suite in one command: every bench, each figure beside its raw baseline
# measured in the same run, then one table of this run's figures with targets and pass/fail.
#
#   scripts/bench-suite.sh            # full length (AETHER_BENCH_SECS=2, 21 pairs per ratio)
#   scripts/bench-suite.sh --quick    # short rounds: minutes, for a first look
#   scripts/bench-suite.sh local_ask persisted   # only these benches
#
# Writes target/bench-suite.jsonl (this run's figures, one JSON object per line) and
# target/bench-suite.md (the table), and prints the table. Installs the pinned nats-server
# first (the NATS benches start their own servers).
set -euo pipefail
cd "$(dirname "$0")/.."
benches=(local_ask persisted resident_memory embedded_store jetstream cluster event_bus
  observability seeds workflows failover)
selected=()
for arg in "$@"; do
  case "$arg" in
    --quick)
      export AETHER_BENCH_SECS="${AETHER_BENCH_SECS:-0.5}"
      export AETHER_BENCH_PAIRS="${AETHER_BENCH_PAIRS:-7}"
      ;;
    -*) echo "unknown option $arg (use --quick and bench names)" >&2; exit 2 ;;
    *) selected+=("$arg") ;;
  esac
done
[ ${#selected[@]} -gt 0 ] && benches=("${selected[@]}")
AETHER_NATS_SERVER="${AETHER_NATS_SERVER:-$(scripts/install-nats-server.sh)}"
export AETHER_NATS_SERVER
target="${CARGO_TARGET_DIR:-target}"
results="$target/bench-results.jsonl"
mkdir -p "$target"
touch "$results"
before=$(wc -l <"$results")
cargo bench --locked --no-run $(printf -- '--bench %s ' "${benches[@]}")
started=$(date +%s)
for bench in "${benches[@]}"; do
  echo "== $bench"
  cargo bench --locked --bench "$bench"
done
tail -n +"$((before + 1))" "$results" >"$target/bench-suite.jsonl"
python3 - "$target/bench-suite.jsonl" "$(( $(date +%s) - started ))" >"$target/bench-suite.md" <<'PY'
import json, platform, os, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
cores = os.cpu_count()
print(f"Measured {len(rows)} figures in {sys.argv[2]} s on {platform.machine()}, {cores} cores"
      f" (AETHER_BENCH_SECS={os.environ.get('AETHER_BENCH_SECS', '2')},"
      f" AETHER_BENCH_PAIRS={os.environ.get('AETHER_BENCH_PAIRS', '21')}).")
print()
print("| id | measure | ours | baseline | figure | target | met |")
print("|---|---|---|---|---|---|---|")
def num(x):
    return f"{x:,.3f}" if abs(x) < 100 else f"{x:,.0f}"
for r in rows:
    if "ratio" in r:
        ours, base = f"{num(r['ours'])} {r['unit']}", f"{num(r['baseline'])} {r['unit']}"
        figure = f"{r['ratio']:.3f}"
    else:
        ours, base, figure = "", "", f"{num(r['value'])} {r['unit']}"
    met = "yes" if r["met"] else "**no**"
    print(f"| {r['id']} | {r['measure']} | {ours} | {base} | {figure} | {r['target']} | {met} |")
passed = sum(1 for r in rows if r["met"])
print()
print(f"{passed} of {len(rows)} figures meet their targets.")
PY
echo
cat "$target/bench-suite.md"
