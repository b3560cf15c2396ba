#!/usr/bin/env bash
# The main job on embedded defaults, on a fresh machine: builds hubee-sync and the fake hub,
# starts the fake hub on 127.0.0.1 with a few télédossiers, writes a config under ./demo
# (SQLite state, a local spool), runs `hubee-sync once`, then shows `status` and the spool.
set -euo pipefail
cd "$(dirname "$0")/.."
CASES="${CASES:-10}" FILES="${FILES:-3}" FILE_SIZE="${FILE_SIZE:-1M}"

cargo build --locked --workspace --bins
demo="$PWD/demo"
rm -rf "$demo"
mkdir -p "$demo"
chmod 0750 "$demo"

./target/debug/fake-hubee --listen 127.0.0.1:0 --client-id demo --client-secret demo-secret \
  --process-code CERTDC --cases "$CASES" --files "$FILES" --file-size "$FILE_SIZE" >"$demo/fake-hubee.out" 2>"$demo/fake-hubee.log" &
hub_pid=$!
trap 'kill $hub_pid 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  grep -q 'listening' "$demo/fake-hubee.out" 2>/dev/null && break
  sleep 0.1
done
api_url=$(sed -n 's/.*api_url=\([^ ]*\).*/\1/p' "$demo/fake-hubee.out")
token_url=$(sed -n 's/.*token_url=\([^ ]*\).*/\1/p' "$demo/fake-hubee.out")
[ -n "$api_url" ] || { echo "demo: the fake hub did not start; see $demo/fake-hubee.log" >&2; exit 1; }

printf 'demo-secret\n' >"$demo/certdc.secret"
chmod 0600 "$demo/certdc.secret"
cat >"$demo/hubee-sync.toml" <<TOML
[hub]
api_url = "$api_url"
token_url = "$token_url"
editor_name = "Commune de Saint-Étienne-de-Démo"

[state]
url = "sqlite://$demo/state.db"

[[subscription]]
name = "certdc"
process_code = "CERTDC"
client_id = "demo"
client_secret_file = "$demo/certdc.secret"
schedule = "every 5m"
spool = "$demo/spool/certdc"
TOML
chmod 0640 "$demo/hubee-sync.toml"

echo "== hubee-sync validate"
./target/debug/hubee-sync --config "$demo/hubee-sync.toml" validate
echo "== hubee-sync once"
./target/debug/hubee-sync --config "$demo/hubee-sync.toml" once
echo "== hubee-sync status"
./target/debug/hubee-sync --config "$demo/hubee-sync.toml" status
echo "== spool: $demo/spool/certdc/new"
ls "$demo/spool/certdc/new"
ok=0
for entry in "$demo"/spool/certdc/new/*/; do
  (cd "$entry" && sha256sum --quiet -c SHA256SUMS) && ok=$((ok + 1))
done
echo "== $ok entries pass sha256sum -c SHA256SUMS"
echo "== a second once changes nothing"
./target/debug/hubee-sync --config "$demo/hubee-sync.toml" once
