#!/usr/bin/env bash
# Renders an example digest (text and HTML) from a real run against the fake hub, and a
# screenshot of the HTML in headless Chromium (Debian's chromium package):
#   docs/example-digest.txt, docs/example-digest.html, docs/example-digest.png
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --locked --workspace --bins
work=$(mktemp -d)
trap 'kill $hub_pid 2>/dev/null || true; rm -rf "$work"' EXIT
./target/debug/fake-hubee --listen 127.0.0.1:0 --client-id demo --client-secret demo-secret \
  --process-code EtatCivil --cases 4 --files 2 --file-size 200K --seed 3 >"$work/hub.out" 2>/dev/null &
hub_pid=$!
for _ in $(seq 1 100); do grep -q listening "$work/hub.out" 2>/dev/null && break; sleep 0.1; done
api=$(sed -n 's/.*api_url=\([^ ]*\).*/\1/p' "$work/hub.out")
tok=$(sed -n 's/.*token_url=\([^ ]*\).*/\1/p' "$work/hub.out")
printf 'demo-secret\n' >"$work/secret"; chmod 0600 "$work/secret"
cat >"$work/hubee-sync.toml" <<TOML
[hub]
api_url = "$api"
token_url = "$tok"
editor_name = "Mairie de Saint-Exemple"
retry_base_delay = "10ms"
download_attempts = 1

[state]
url = "sqlite://$work/state.db"

[email]
smtp_url = "smtp://127.0.0.1:25"
from = "hubee-sync <hubee@mairie.example>"
to = ["etat-civil@mairie.example"]

[[subscription]]
name = "etatcivil"
process_code = "EtatCivil"
client_id = "demo"
client_secret_file = "$work/secret"
spool = "$work/spool/etatcivil"
quarantine_after = "1s"
TOML
chmod 0640 "$work/hubee-sync.toml"
sync() { ./target/debug/hubee-sync --config "$work/hubee-sync.toml" "$@"; }
HUBEE_SYNC_LOG=error sync once >/dev/null
first=$(curl -s "$api/_fake/state" | python3 -c 'import sys,json; print(json.load(sys.stdin)["cases"][0]["id"])')
curl -s -X POST "$api/_fake/osl/event" -d "{\"caseId\":\"$first\",\"actionType\":\"SENDING_MESSAGE\",\"message\":\"Pièce complémentaire envoyée\"}" >/dev/null
# One more case whose file always arrives truncated: parked, then quarantined.
curl -s -X POST "$api/_fake/cases" -d '{"clientId":"demo","count":1,"files":1,"fileSize":300000,"seed":9}' >/dev/null
curl -s -X POST "$api/_fake/inject" -d '{"route":"GetAttachment","fault":{"TruncateBody":{"after_bytes":1000}},"times":1000}' >/dev/null
for _ in 1 2 3; do HUBEE_SYNC_LOG=error sync once >/dev/null || true; sleep 1.2; done
sync digest >docs/example-digest.txt
sync digest --html >docs/example-digest.html
if command -v chromium >/dev/null; then
  chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --user-data-dir="$work/chromium" --window-size=900,1300 \
    --screenshot="$PWD/docs/example-digest.png" "file://$PWD/docs/example-digest.html" 2>/dev/null
  echo "docs/example-digest.png written"
else
  echo "chromium is not installed (apt-get install chromium): no screenshot" >&2
fi
