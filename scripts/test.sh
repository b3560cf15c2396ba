#!/usr/bin/env bash
# The whole test suite, on a fresh machine too: starts what the tests need, then runs them.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-postgres.sh
# The email tests send to a real SMTP server on 127.0.0.1 (scripts/smtp-sink.py, aiosmtpd),
# which each test starts itself; openssl makes their TLS certificates.
if ! python3 -c 'import aiosmtpd' 2>/dev/null; then
    python3 -m pip install --quiet aiosmtpd 2>/dev/null \
        || python3 -m pip install --quiet --break-system-packages aiosmtpd 2>/dev/null \
        || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-aiosmtpd; }
fi
# The schema test (scripts/check-hub-traffic.py) validates the recorded hub traffic against
# the official OpenAPI spec with Python's PyYAML and jsonschema.
if ! python3 -c 'import yaml, jsonschema' 2>/dev/null; then
    python3 -m pip install --quiet pyyaml jsonschema 2>/dev/null \
        || python3 -m pip install --quiet --break-system-packages pyyaml jsonschema 2>/dev/null \
        || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-yaml python3-jsonschema; }
fi
command -v openssl >/dev/null || { apt-get update -qq && apt-get install -y -qq openssl; }
# The metrics tests (tests/metrics.rs) check a scrape and the alert rules with promtool and
# run a real Prometheus server: Debian's `prometheus` package. Without it they skip, saying so.
command -v promtool >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus; } \
    || echo "test.sh: cannot install Debian's prometheus: the metrics tests will skip" >&2
# The power-cut campaign (tests/powercut.rs, powerfs/) mounts a FUSE filesystem as root with
# mount(2) itself (no libfuse, no fusermount): it needs the fuse module's /dev/fuse.
[ -e /dev/fuse ] || modprobe fuse 2>/dev/null || echo "test.sh: no /dev/fuse: the power-cut tests will skip" >&2
# The test network (tests/netlab_*.rs, issue 19) builds network namespaces with iproute2, runs
# its own PostgreSQL (initdb, as user postgres) and Debian's tinyproxy as the forward proxy;
# without namespaces (not root, a restricted container) those tests skip and say why.
command -v ip >/dev/null || { apt-get update -qq && apt-get install -y -qq iproute2; }
[ -x /usr/bin/tinyproxy ] || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tinyproxy \
    && { systemctl disable --now tinyproxy 2>/dev/null || true; }; } \
    || echo "test.sh: no tinyproxy: the proxy test will skip" >&2
export HUBEE_TEST_PG_URL="${HUBEE_TEST_PG_URL:-postgres://postgres:postgres@127.0.0.1:5432/postgres}"
# No import circle and no upward arrow between the crate's rooms (README "Design").
python3 scripts/check-imports.py --strict
cargo test --locked --workspace
# The receipt, event, outbox, crash, fault and recovery tests once more against the hub of the
# documents, where only PATCH moves a case (fake-hubee's HubBehaviour::patch_only; the first
# pass ran them against a hub where an event's caseNewStatus moves it, PROTOCOL §10.1).
HUBEE_TEST_HUB=patch-only cargo test --locked --test receive --test events --test outbox \
    --test crash --test faults --test recovery
