#!/usr/bin/env bash
# Peak memory of `hubee-sync once` while it downloads and verifies large attachments.
# Starts the fake hub (release build) serving generated content, runs hubee-sync under
# GNU time, checks the entry with sha256sum -c, and prints one line per size:
#   size_bytes  seconds  MB/s  peak_rss_KiB
# Usage: bench/rss.sh [SIZE…]   (default: 1M 1G; suffixes K, M, G are powers of 1024)
#        TARGET=postgres bench/rss.sh 1G   delivers into a PostgreSQL business database
#        (HUBEE_TEST_PG_URL, default postgres://postgres:postgres@127.0.0.1:5432/postgres)
set -euo pipefail
TARGET="${TARGET:-spool}"
PG_ADMIN="${HUBEE_TEST_PG_URL:-postgres://postgres:postgres@127.0.0.1:5432/postgres}"
cd "$(dirname "$0")/.."
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(1M 1G)
command -v /usr/bin/time >/dev/null || { apt-get update -qq && apt-get install -y -qq time >/dev/null; }
cargo build --locked --release --workspace --bins >&2
work=$(mktemp -d "${TMPDIR:-/var/tmp}/hubee-bench.XXXXXX")
trap 'kill $hub_pid 2>/dev/null || true; rm -rf "$work"' EXIT
hub_pid=
echo "target: $TARGET"
printf '%-12s %8s %8s %14s\n' size_bytes seconds MB/s peak_rss_KiB
for size in "${sizes[@]}"; do
  rm -rf "$work"/*
  ./target/release/fake-hubee --listen 127.0.0.1:0 --client-id bench --client-secret bench-secret \
    --process-code CERTDC --cases 1 --files 1 --file-size "$size" >"$work/hub.out" 2>"$work/hub.log" &
  hub_pid=$!
  for _ in $(seq 1 100); do grep -q listening "$work/hub.out" 2>/dev/null && break; sleep 0.1; done
  api_url=$(sed -n 's/.*api_url=\([^ ]*\).*/\1/p' "$work/hub.out")
  token_url=$(sed -n 's/.*token_url=\([^ ]*\).*/\1/p' "$work/hub.out")
  printf 'bench-secret\n' >"$work/secret"; chmod 0600 "$work/secret"
  delivery=""
  if [ "$TARGET" = postgres ]; then
    db="hubee_bench_$$"
    psql -q "$PG_ADMIN" -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db" 2>&1 | grep -v NOTICE || true
    delivery="delivery = \"database\"
database_url = \"${PG_ADMIN%/*}/$db\""
  fi
  cat >"$work/hubee-sync.toml" <<TOML
[hub]
api_url = "$api_url"
token_url = "$token_url"
editor_name = "Benchmark"
[state]
url = "sqlite://$work/state.db"
[[subscription]]
name = "bench"
process_code = "CERTDC"
client_id = "bench"
client_secret_file = "$work/secret"
spool = "$work/spool"
$delivery
TOML
  chmod 0640 "$work/hubee-sync.toml"
  start=$(date +%s.%N)
  HUBEE_SYNC_LOG=warn /usr/bin/time -f '%M' -o "$work/rss" ./target/release/hubee-sync --config "$work/hubee-sync.toml" once >/dev/null
  end=$(date +%s.%N)
  if [ "$TARGET" = postgres ]; then
    # Reassemble from the chunks inside PostgreSQL and compare with the hub's digest.
    got=$(psql -qtA "${PG_ADMIN%/*}/$db" -c "SELECT sha256, size FROM hubee_attachment")
    # Chunk by chunk, streamed (one value per chunk stays far below PostgreSQL's 1 GB limit).
    sum=$(psql -qtA "${PG_ADMIN%/*}/$db" \
      -c "COPY (SELECT encode(data, 'hex') FROM hubee_attachment_chunk ORDER BY seq) TO STDOUT" \
      | tr -d '\n' | xxd -r -p | sha256sum | cut -d' ' -f1)
    [ "${got%%|*}" = "$sum" ] || { echo "bench: chunks do not reassemble to the recorded sha256 ($sum vs ${got%%|*})" >&2; exit 1; }
    bytes=${got##*|}
    psql -q "$PG_ADMIN" -c "DROP DATABASE IF EXISTS $db" >/dev/null
  else
    entry=$(ls -d "$work"/spool/new/*/)
    (cd "$entry" && sha256sum --quiet --strict -c SHA256SUMS) || { echo "bench: verification failed for $size" >&2; exit 1; }
    bytes=$(stat -c %s "$entry"/attachments/*)
  fi
  awk -v b="$bytes" -v s="$start" -v e="$end" -v r="$(cat "$work/rss")" \
    'BEGIN { t = e - s; printf "%-12s %8.2f %8.1f %14s\n", b, t, b / 1048576 / t, r }'
  kill "$hub_pid"; wait "$hub_pid" 2>/dev/null || true
done
