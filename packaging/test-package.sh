#!/usr/bin/env bash
# Builds the Debian package with cargo-deb, installs it on THIS machine with dpkg, checks what
# it installed (files, owners, modes, user, unit), runs the installed binary as the service
# user against the fake hub, then removes and purges the package and checks what stays.
#
#   bash packaging/test-package.sh
#
# Needs root and a throwaway machine (CI's container): it installs and purges hubee-sync and
# leaves the machine as it found it (the user hubee-sync too, if it did not exist before).
# Installs cargo-deb (pinned) when missing. Prints PASS/FAIL per check and a summary; exits 1
# if any check failed.
#
# Environment: HUBEE_SYNC_DEB=path.deb tests that package instead of building one.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2

CARGO_DEB_VERSION=3.8.0 # builds with rustc >= 1.85
MAX_EXPOSURE=15         # systemd-analyze security's 0-100 scale: 15 is "1.5"
UNIT=/usr/lib/systemd/system/hubee-sync.service
CONF=/etc/hubee-sync/hubee-sync.toml
SPOOLS=/var/spool/hubee-sync

start=$(date +%s)
work=$(mktemp -d /tmp/hubee-sync-package-test.XXXXXX)
chmod 0755 "$work"
hub_pid=
passed=0
failed=()

pass() { passed=$((passed + 1)); printf 'PASS  %s\n' "$*"; }
fail() { failed+=("$*"); printf 'FAIL  %s\n' "$*"; }
note() { printf '      %s\n' "$@"; }
step() { printf '\n== %s\n' "$*"; }
die() { printf 'test-package: %s\n' "$*" >&2; exit 2; }

# check DESCRIPTION COMMAND...: PASS if the command succeeds.
check() {
    local what=$1
    shift
    if "$@"; then pass "$what"; else fail "$what"; fi
}

# owner_mode PATH USER:GROUP MODE: checks owner, group and octal mode (e.g. 640, 2770).
owner_mode() {
    local got
    got=$(stat -c '%U:%G %a' "$1" 2>/dev/null) || { fail "$1 exists"; return; }
    if [ "$got" = "$2 $3" ]; then pass "$1 is $2 $3"; else fail "$1 is $2 $3 (it is $got)"; fi
}

quiet() { "$@" >/dev/null 2>&1; }
absent() { if [ ! -e "$1" ] && [ ! -L "$1" ]; then pass "$2"; else fail "$2 ($1 is still there)"; fi; }
present() { if [ -e "$1" ]; then pass "$2"; else fail "$2 ($1 is missing)"; fi; }

package_status() { dpkg-query -W -f='${db:Status-Status}' hubee-sync 2>/dev/null || echo not-installed; }

as_service() { runuser -u hubee-sync -- "$@"; }

cleanup() {
    [ -n "$hub_pid" ] && kill "$hub_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

[ "$(id -u)" -eq 0 ] || die "run me as root on a throwaway machine (I install and purge the package)"
for tool in dpkg dpkg-deb dpkg-query systemd-analyze runuser sha256sum; do
    command -v "$tool" >/dev/null || die "$tool is missing"
done

step "Before: leftovers from an earlier run"
if [ "$(package_status)" != not-installed ]; then
    note "hubee-sync is installed ($(package_status)): purging it first"
    dpkg --purge hubee-sync >"$work/leftover-purge.log" 2>&1 || { cat "$work/leftover-purge.log"; die "cannot purge the installed hubee-sync"; }
fi
if dpkg-statoverride --list $CONF >/dev/null 2>&1; then
    note "removing a stat override on $CONF left by an earlier run: $(dpkg-statoverride --list $CONF)"
    dpkg-statoverride --remove $CONF
fi
[ -e "$SPOOLS" ] && die "$SPOOLS exists: it may hold deliveries; look at it and remove it by hand"
if getent passwd hubee-sync >/dev/null; then
    user_existed=yes
    note "the user hubee-sync exists already: its creation by postinst is not proved this run"
else
    user_existed=no
fi

step "The unit, as shipped (systemd/hubee-sync.service)"
systemd-analyze security --offline=true --no-pager systemd/hubee-sync.service >"$work/security.txt" 2>&1
score=$(sed -n 's/.*Overall exposure level for hubee-sync.service: \([0-9.]*\).*/\1/p' "$work/security.txt")
if systemd-analyze security --offline=true --threshold=$MAX_EXPOSURE systemd/hubee-sync.service >/dev/null 2>&1; then
    pass "systemd-analyze security --offline=true: exposure $score (at most 1.5)"
else
    fail "systemd-analyze security --offline=true: exposure $score (at most 1.5)"
    grep '✗' "$work/security.txt"
fi

step "Build"
if [ -n "${HUBEE_SYNC_DEB:-}" ]; then
    deb=$HUBEE_SYNC_DEB
    note "testing $deb (HUBEE_SYNC_DEB)"
else
    if [ "$(cargo deb --version 2>/dev/null)" != "cargo-deb $CARGO_DEB_VERSION" ]; then
        note "installing cargo-deb $CARGO_DEB_VERSION (once; a few minutes)"
        t0=$(date +%s)
        cargo install cargo-deb --version "$CARGO_DEB_VERSION" --locked --quiet || die "cargo install cargo-deb failed"
        note "cargo-deb installed in $(($(date +%s) - t0))s"
    fi
    t0=$(date +%s)
    mkdir -p target/debian
    cargo deb --locked --output target/debian/ >"$work/cargo-deb.out" 2>"$work/cargo-deb.log" || { cat "$work/cargo-deb.log"; die "cargo deb failed"; }
    deb=$(grep '\.deb$' "$work/cargo-deb.out" | tail -n 1) # beside it, the -dbgsym .ddeb
    note "built $deb in $(($(date +%s) - t0))s"
fi
[ -f "$deb" ] || die "no package at $deb"
version=$(dpkg-deb -f "$deb" Version)

step "The package's contents"
dpkg-deb -c "$deb" | awk '{print $2, $6}' >"$work/contents.txt"
for f in ./usr/bin/hubee-sync ./usr/lib/systemd/system/hubee-sync.service \
    ./usr/lib/sysusers.d/hubee-sync.conf ./usr/lib/tmpfiles.d/hubee-sync.conf \
    ./usr/share/man/man8/hubee-sync.8.gz ./etc/hubee-sync/hubee-sync.toml \
    ./usr/share/doc/hubee-sync/contrib/prometheus/hubee-sync.rules.yml \
    ./usr/share/doc/hubee-sync/contrib/prometheus/hubee-sync.rules.test.yml \
    ./usr/share/doc/hubee-sync/contrib/grafana/hubee-sync.json; do
    if grep -q " $f\$" "$work/contents.txt"; then pass "package holds $f"; else fail "package holds $f"; fi
done
dpkg-deb --ctrl-tarfile "$deb" | tar -xO ./conffiles >"$work/conffiles" 2>/dev/null
check "conffiles lists $CONF" grep -qx "$CONF" "$work/conffiles"
dpkg-deb --ctrl-tarfile "$deb" | tar -t >"$work/control-files.txt"
for s in postinst prerm postrm; do
    check "package has a $s script" grep -qx "./$s" "$work/control-files.txt"
done
note "$(dpkg-deb -f "$deb" Package Version Architecture Depends Recommends | tr '\n' ' ')"

step "dpkg -i"
if dpkg -i "$deb" >"$work/install.log" 2>&1; then
    pass "dpkg -i $deb"
    sed 's/^/      | /' "$work/install.log"
else
    fail "dpkg -i $deb"
    sed 's/^/      | /' "$work/install.log"
    die "cannot go on without the package installed; FAIL"
fi
check "package state is installed" [ "$(package_status)" = installed ]

step "Installed files, owners and modes"
owner_mode /usr/bin/hubee-sync root:root 755
owner_mode $UNIT root:root 644
owner_mode /usr/lib/sysusers.d/hubee-sync.conf root:root 644
owner_mode /usr/lib/tmpfiles.d/hubee-sync.conf root:root 644
man_excluded=no
if grep -qsE '^path-exclude[= ]+/usr/share/man' /etc/dpkg/dpkg.cfg.d/*; then
    man_excluded=yes
    note "SKIP  man page: dpkg excludes /usr/share/man on this machine"
else
    owner_mode /usr/share/man/man8/hubee-sync.8.gz root:root 644
    if command -v man >/dev/null; then
        warnings=$(LC_ALL=C.UTF-8 MANWIDTH=80 man --warnings -E UTF-8 -l /usr/share/man/man8/hubee-sync.8.gz 2>&1 >/dev/null)
        if [ -z "$warnings" ]; then pass "man page renders without warnings"; else fail "man page renders without warnings"; note "$warnings"; fi
    fi
fi
owner_mode $CONF root:hubee-sync 640
owner_mode /etc/hubee-sync/conf.d root:hubee-sync 750
owner_mode /etc/hubee-sync/secrets root:hubee-sync 750
owner_mode /var/lib/hubee-sync hubee-sync:hubee-sync 750
owner_mode $SPOOLS hubee-sync:hubee-sync 755
check "dpkg-statoverride keeps $CONF root:hubee-sync 0640 across upgrades" \
    [ "$(dpkg-statoverride --list $CONF)" = "root hubee-sync 640 $CONF" ]

step "User and group"
if entry=$(getent passwd hubee-sync); then
    pass "user hubee-sync exists ($entry)"
    IFS=: read -r _ _ uid _ _ home shell <<<"$entry"
    check "hubee-sync is a system user (uid $uid < 1000)" [ "$uid" -lt 1000 ]
    check "hubee-sync cannot log in (shell $shell)" [ "$shell" = /usr/sbin/nologin ]
    check "hubee-sync's home is /var/lib/hubee-sync" [ "$home" = /var/lib/hubee-sync ]
else
    fail "user hubee-sync exists"
fi
check "group hubee-sync exists" quiet getent group hubee-sync

step "The installed unit"
wants=/etc/systemd/system/multi-user.target.wants/hubee-sync.service
# deb-systemd-helper links to /lib/systemd/system/…, the same file on a merged-/usr system.
if [ "$(readlink -f "$wants")" = "$(readlink -f $UNIT)" ]; then pass "unit enabled ($wants)"; else fail "unit enabled ($wants -> $(readlink "$wants"))"; fi
verify_opts=()
[ "$man_excluded" = yes ] && verify_opts=(--man=no)
systemd-analyze verify "${verify_opts[@]}" $UNIT >"$work/verify.txt" 2>&1
verify_rc=$?
if [ $verify_rc -eq 0 ] && [ ! -s "$work/verify.txt" ]; then
    pass "systemd-analyze verify $UNIT: clean"
else
    fail "systemd-analyze verify $UNIT: clean (rc $verify_rc)"
    sed 's/^/      | /' "$work/verify.txt"
fi
if systemd-analyze security --offline=true --threshold=$MAX_EXPOSURE $UNIT >/dev/null 2>&1; then
    pass "installed unit: exposure at most 1.5"
else
    fail "installed unit: exposure at most 1.5"
fi

step "The installed binary"
got_version=$(/usr/bin/hubee-sync --version 2>&1)
check "hubee-sync --version says $got_version (package $version)" [ "$got_version" = "hubee-sync ${version%%-*}" ]
check "hubee-sync --help" sh -c '/usr/bin/hubee-sync --help >/dev/null'
if as_service /usr/bin/hubee-sync validate >"$work/validate.txt" 2>&1; then
    pass "hubee-sync validate, as hubee-sync, on the installed example (no subscription)"
else
    fail "hubee-sync validate, as hubee-sync, on the installed example (rc $?)"
    sed 's/^/      | /' "$work/validate.txt"
fi
if runuser -u nobody -- /usr/bin/hubee-sync validate >"$work/validate-nobody.txt" 2>&1; then
    fail "another user cannot read the config (validate as nobody succeeded)"
else
    rc=$?
    check "another user cannot read the config (validate as nobody exits 78, got $rc)" [ $rc -eq 78 ]
fi

step "A subscription end to end: the fake hub, conf.d/, secrets/, the state and the spool"
fake=
for f in target/debug/fake-hubee target/release/fake-hubee; do [ -x "$f" ] && fake=$f && break; done
if [ -z "$fake" ]; then
    note "building fake-hubee (the test stand-in for HubEE)"
    cargo build --locked -p fake-hubee --bin fake-hubee >"$work/fake-build.log" 2>&1 || { cat "$work/fake-build.log"; die "cannot build fake-hubee"; }
    fake=target/debug/fake-hubee
fi
"$fake" --listen 127.0.0.1:0 --client-id e2e --client-secret e2e-secret --process-code CERTDC \
    --cases 3 --files 2 --file-size 64K >"$work/hub.out" 2>"$work/hub.log" &
hub_pid=$!
for _ in $(seq 1 100); do grep -q listening "$work/hub.out" 2>/dev/null && break; sleep 0.1; done
api_url=$(sed -n 's/.*api_url=\([^ ]*\).*/\1/p' "$work/hub.out")
token_url=$(sed -n 's/.*token_url=\([^ ]*\).*/\1/p' "$work/hub.out")
[ -n "$api_url" ] || { cat "$work/hub.log"; die "the fake hub did not start"; }
# The administrator's edits: the hub's address in the conffile, a subscription in conf.d/, its
# secret in secrets/ (modes as the README says).
sed -i "s|^api_url = .*|api_url = \"$api_url\"|; s|^token_url = .*|token_url = \"$token_url\"|" $CONF
printf 'e2e-secret\n' >/etc/hubee-sync/secrets/e2e
chown root:hubee-sync /etc/hubee-sync/secrets/e2e
chmod 0640 /etc/hubee-sync/secrets/e2e
cat >/etc/hubee-sync/conf.d/e2e.toml <<'TOML'
[[subscription]]
name = "e2e"
process_code = "CERTDC"
client_id = "e2e"
client_secret_file = "/etc/hubee-sync/secrets/e2e"
schedule = "every 5m"
TOML
chown root:hubee-sync /etc/hubee-sync/conf.d/e2e.toml
chmod 0640 /etc/hubee-sync/conf.d/e2e.toml
if as_service /usr/bin/hubee-sync validate >"$work/validate2.txt" 2>&1; then
    pass "validate, as hubee-sync, reads conf.d/e2e.toml and secrets/e2e"
else
    fail "validate, as hubee-sync, reads conf.d/e2e.toml and secrets/e2e"
    sed 's/^/      | /' "$work/validate2.txt"
fi
if as_service /usr/bin/hubee-sync once >"$work/once.txt" 2>&1; then
    pass "once, as hubee-sync: 3 cases received into $SPOOLS/e2e"
else
    fail "once, as hubee-sync (rc $?)"
    sed 's/^/      | /' "$work/once.txt"
fi
kill "$hub_pid" 2>/dev/null
wait "$hub_pid" 2>/dev/null
hub_pid=
owner_mode $SPOOLS/e2e hubee-sync:hubee-sync 2770
owner_mode $SPOOLS/e2e/new hubee-sync:hubee-sync 2770
entries=$(find $SPOOLS/e2e/new -mindepth 1 -maxdepth 1 -type d 2>/dev/null | wc -l)
check "3 entries in $SPOOLS/e2e/new (found $entries)" [ "$entries" -eq 3 ]
sums_ok=0
for e in "$SPOOLS"/e2e/new/*/; do (cd "$e" && sha256sum --quiet -c SHA256SUMS) && sums_ok=$((sums_ok + 1)); done
check "sha256sum -c SHA256SUMS passes in every entry ($sums_ok)" [ "$sums_ok" -eq "$entries" ]
owner_mode /var/lib/hubee-sync/state.db hubee-sync:hubee-sync "$(stat -c %a /var/lib/hubee-sync/state.db 2>/dev/null)"
if as_service /usr/bin/hubee-sync status >"$work/status.txt" 2>&1; then pass "status, as hubee-sync"; else fail "status, as hubee-sync"; sed 's/^/      | /' "$work/status.txt"; fi
# A spool with nothing in it but its skeleton and a leftover in tmp/ (never a delivery).
as_service sh -c "umask 007; mkdir -p $SPOOLS/idle/tmp/leftover.1.2 $SPOOLS/idle/new $SPOOLS/idle/cur \
    $SPOOLS/idle/quarantine $SPOOLS/idle/outbox/tmp $SPOOLS/idle/outbox/new $SPOOLS/idle/outbox/sent \
    $SPOOLS/idle/outbox/failed && echo partial >$SPOOLS/idle/tmp/leftover.1.2/case.json"

step "dpkg --remove: the configuration, the state and the spools stay"
if dpkg --remove hubee-sync >"$work/remove.log" 2>&1; then pass "dpkg --remove hubee-sync"; else fail "dpkg --remove hubee-sync"; fi
sed 's/^/      | /' "$work/remove.log"
check "package state is config-files" [ "$(package_status)" = config-files ]
absent /usr/bin/hubee-sync "the binary is gone"
absent $UNIT "the unit is gone"
absent /usr/lib/sysusers.d/hubee-sync.conf "sysusers.d file is gone"
check "the modified conffile stays" grep -q "$api_url" $CONF
owner_mode $CONF root:hubee-sync 640
present /etc/hubee-sync/conf.d/e2e.toml "conf.d/ stays"
present /etc/hubee-sync/secrets/e2e "secrets/ stay"
present /var/lib/hubee-sync/state.db "the state database stays"
check "the spool stays with its 3 entries" [ "$(find $SPOOLS/e2e/new -mindepth 1 -maxdepth 1 | wc -l)" -eq 3 ]
check "user hubee-sync stays" quiet getent passwd hubee-sync
mask=$(readlink /etc/systemd/system/hubee-sync.service 2>/dev/null)
note "unit mask while removed (as dh_installsystemd does): ${mask:-none}"

step "dpkg --purge: configuration and state go; a spool with entries stays, and purge says so"
if dpkg --purge hubee-sync >"$work/purge.log" 2>&1; then pass "dpkg --purge hubee-sync"; else fail "dpkg --purge hubee-sync"; fi
sed 's/^/      | /' "$work/purge.log"
check "package state is not-installed" [ "$(package_status)" = not-installed ]
absent /etc/hubee-sync "/etc/hubee-sync is gone (conffile, conf.d/, secrets/)"
absent /var/lib/hubee-sync "/var/lib/hubee-sync is gone (state database)"
absent $SPOOLS/idle "the spool without entries is gone"
check "the spool with entries stays, 3 entries intact" [ "$(find $SPOOLS/e2e/new -mindepth 1 -maxdepth 1 | wc -l)" -eq 3 ]
check "purge says it keeps $SPOOLS/e2e" grep -q "keeping $SPOOLS/e2e: it still holds 3 entries" "$work/purge.log"
check "no stat override left" sh -c "! dpkg-statoverride --list $CONF >/dev/null"
leftover_links=$(find /etc/systemd/system -name 'hubee-sync*' 2>/dev/null)
check "no unit symlink or mask left in /etc/systemd/system" [ -z "$leftover_links" ]
check "user hubee-sync stays (it owns the kept spool)" quiet getent passwd hubee-sync
rm -rf "$SPOOLS" # the test's own deliveries

step "Reinstall, upgrade with a changed conffile, purge with empty spools only"
if dpkg -i "$deb" >"$work/install2.log" 2>&1; then pass "dpkg -i again, the user existing"; else fail "dpkg -i again"; sed 's/^/      | /' "$work/install2.log"; fi
# The next version of the package, with a changed example config: dpkg replaces the unmodified
# conffile, and the stat override must keep it readable by the service.
rm -rf "$work/v2" && dpkg-deb -R "$deb" "$work/v2"
printf '\n# changed in %s+test\n' "$version" >>"$work/v2$CONF"
sed -i "s/^Version: .*/Version: $version+test/" "$work/v2/DEBIAN/control"
(cd "$work/v2" && find . -path ./DEBIAN -prune -o -type f -print | sed 's|^\./||' | sort | xargs md5sum >DEBIAN/md5sums)
dpkg-deb --root-owner-group -b "$work/v2" "$work/hubee-sync-upgrade.deb" >/dev/null 2>&1
if dpkg -i "$work/hubee-sync-upgrade.deb" >"$work/upgrade.log" 2>&1; then pass "upgrade to $version+test"; else fail "upgrade to $version+test"; sed 's/^/      | /' "$work/upgrade.log"; fi
check "the upgrade replaced the unmodified conffile" grep -q "changed in $version+test" $CONF
owner_mode $CONF root:hubee-sync 640
if as_service /usr/bin/hubee-sync validate >/dev/null 2>&1; then pass "validate as hubee-sync after the upgrade"; else fail "validate as hubee-sync after the upgrade"; fi
as_service sh -c "mkdir -p $SPOOLS/idle/new $SPOOLS/idle/cur $SPOOLS/idle/tmp"
if dpkg --purge hubee-sync >"$work/purge2.log" 2>&1; then pass "dpkg --purge (without --remove first)"; else fail "dpkg --purge"; sed 's/^/      | /' "$work/purge2.log"; fi
absent $SPOOLS "$SPOOLS is gone when no spool holds entries"
absent /etc/hubee-sync "/etc/hubee-sync is gone"
check "package state is not-installed" [ "$(package_status)" = not-installed ]

step "After"
if [ "$user_existed" = no ]; then
    userdel hubee-sync 2>/dev/null
    getent group hubee-sync >/dev/null && groupdel hubee-sync
    note "removed the user and group hubee-sync that this test's install created (the package keeps them)"
fi
note "took $(($(date +%s) - start))s"

printf '\n== %d passed, %d failed\n' "$passed" "${#failed[@]}"
if [ ${#failed[@]} -gt 0 ]; then
    printf 'FAILED: %s\n' "${failed[@]}"
    echo "test-package: FAIL"
    exit 1
fi
echo "test-package: PASS"
