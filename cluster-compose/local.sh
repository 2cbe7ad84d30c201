#!/usr/bin/env bash
# The topology of cluster-compose/docker-compose.yml as plain processes on loopback, without
# Docker: three JetStream-clustered nats-servers (R3) and three bank nodes
# (examples/cluster_node.rs), secured as in production: TLS with client certificates on every
# connection (clients and routes) and a password. Runs in the foreground until Ctrl-C /
# SIGTERM, then stops everything it started (the nodes first, gracefully, so they hand their
# shards off).
#
#   cluster-compose/local.sh
#
# Then, from another terminal, call the accounts through any node with the client settings it
# wrote (URLs, password, CA and client certificate):
#
#   (set -a; . <data dir>/client.env; cargo run --example bank_client -- open alice)
#
# The credentials are development ones made by examples/dev_certs.rs on first start. To use
# your own, put ca.pem, server.pem, server-key.pem, client.pem, client-key.pem and password
# (same names) in a directory and point AETHER_COMPOSE_TLS_DIR at it.
#
# Environment:
#   AETHER_COMPOSE_PORT   first NATS client port (default 4222): servers listen on PORT,
#                         PORT+1, PORT+2, and route to each other on PORT+2000..PORT+2002
#   AETHER_COMPOSE_DIR    where server data and logs go (default: a new temporary directory)
#   AETHER_NODE_BIN       a built cluster_node binary (default: built now with cargo)
#   AETHER_NATS_SERVER    a nats-server binary, 2.11+ (default: the pinned one, installed)
#   AETHER_LOG            the nodes' log level (default info; logs in the data directory)
#   AETHER_COMPOSE_TLS_DIR  certificates and password (default: <data dir>/tls, generated)
#   AETHER_DEV_CERTS_BIN  a built dev_certs binary (default: built now with cargo)
set -euo pipefail
cd "$(dirname "$0")/.."

# Configurations and client settings hold the password: only this user reads them.
umask 077
port="${AETHER_COMPOSE_PORT:-4222}"
dir="${AETHER_COMPOSE_DIR:-$(mktemp -d -t aether-compose.XXXXXX)}"
mkdir -p "$dir"
nats="$(scripts/install-nats-server.sh)"
node_bin="${AETHER_NODE_BIN:-}"
if [ -z "$node_bin" ]; then
  cargo build --quiet --example cluster_node
  node_bin="target/debug/examples/cluster_node"
fi

tls="${AETHER_COMPOSE_TLS_DIR:-$dir/tls}"
if [ ! -f "$tls/ca.pem" ]; then
  if [ -n "${AETHER_DEV_CERTS_BIN:-}" ]; then
    "$AETHER_DEV_CERTS_BIN" "$tls" >/dev/null
  else
    cargo run --quiet --example dev_certs -- "$tls" >/dev/null
  fi
fi
password="$(cat "$tls/password")"

servers=()
nodes=()
stop() {
  trap - EXIT INT TERM
  for pid in ${nodes[@]+"${nodes[@]}"}; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in ${nodes[@]+"${nodes[@]}"}; do wait "$pid" 2>/dev/null || true; done
  for pid in ${servers[@]+"${servers[@]}"}; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in ${servers[@]+"${servers[@]}"}; do wait "$pid" 2>/dev/null || true; done
  echo "cluster stopped (data and logs in $dir)"
}
trap stop EXIT
trap 'exit 0' INT TERM

routes=""
for i in 0 1 2; do
  routes="$routes${routes:+, }\"nats://127.0.0.1:$((port + 2000 + i))\""
done
tls_block="tls { cert_file: \"$tls/server.pem\", key_file: \"$tls/server-key.pem\", ca_file: \"$tls/ca.pem\", verify: true, timeout: 2 }"
for i in 1 2 3; do
  mkdir -p "$dir/nats-$i"
  cat >"$dir/nats-$i.conf" <<CONF
server_name: nats-$i
listen: 127.0.0.1:$((port + i - 1))
jetstream { store_dir: "$dir/nats-$i" }
$tls_block
authorization { user: aether, password: "$password" }
cluster {
  name: aether
  listen: 127.0.0.1:$((port + 1999 + i))
  routes: [ $routes ]
  $tls_block
}
CONF
  "$nats" -c "$dir/nats-$i.conf" >"$dir/nats-$i.log" 2>&1 &
  servers+=($!)
done
urls="nats://127.0.0.1:$port,nats://127.0.0.1:$((port + 1)),nats://127.0.0.1:$((port + 2))"
# Wait until every server accepts connections (the nodes would retry anyway).
for i in 0 1 2; do
  for _ in $(seq 1 300); do
    (exec 3<>"/dev/tcp/127.0.0.1/$((port + i))") 2>/dev/null && break
    sleep 0.1
  done
done

# What a node or a client needs to connect (read by NatsConfig::from_env), as shell
# assignments with single-quoted values (a value holds no single quote: paths and a hex
# password).
for value in "$urls" "$password" "$tls"; do
  case "$value" in *"'"*) echo "a single quote in $value: not supported" >&2; exit 1 ;; esac
done
cat >"$dir/client.env" <<ENV
AETHER_NATS_URL='$urls'
AETHER_NATS_USER='aether'
AETHER_NATS_PASSWORD='$password'
AETHER_NATS_TLS_REQUIRED='1'
AETHER_NATS_TLS_CA='$tls/ca.pem'
AETHER_NATS_TLS_CERT='$tls/client.pem'
AETHER_NATS_TLS_KEY='$tls/client-key.pem'
ENV
for i in 1 2 3; do
  (
    set -a
    # shellcheck disable=SC1091
    . "$dir/client.env"
    set +a
    AETHER_NODE_ID="node-$i" AETHER_REPLICAS=3 AETHER_SERVE_ONLY=1 \
      AETHER_LOG="${AETHER_LOG:-info}" exec "$node_bin" >"$dir/node-$i.out" 2>"$dir/node-$i.log"
  ) &
  nodes+=($!)
done
for i in 1 2 3; do
  for _ in $(seq 1 600); do
    grep -q "^ready node-$i" "$dir/node-$i.out" 2>/dev/null && break
    kill -0 "${nodes[$((i - 1))]}" 2>/dev/null || break
    sleep 0.1
  done
  if ! grep -q "^ready node-$i" "$dir/node-$i.out" 2>/dev/null; then
    echo "node-$i did not start; its log: $dir/node-$i.log" >&2
    tail -n 20 "$dir/node-$i.log" >&2 || true
    exit 1
  fi
done

echo "cluster ready: NATS $urls (TLS, client certificates, password); nodes node-1 node-2 node-3 (namespace bank); data and logs in $dir"
echo "try: (set -a; . $dir/client.env; cargo run --example bank_client -- open alice)"
wait "${nodes[@]}"
