#!/usr/bin/env bash
# Installs, upgrades, removes and purges the Debian package on THIS machine, and runs a relay
# and two nodes from it in between, following docs/OPERATIONS.md (2, 3, 4.2-4.3, 8.1): what
# test-package.sh checks in the package's files, this checks by doing it.
#
#   sudo bash deploy/test-install.sh --yes              # test-package.sh builds (release), then walks
#   sudo PROFILE=dev bash deploy/test-install.sh --yes  # around a debug build (CI)
#   sudo DEB=hotline_0.1.0-1_amd64.deb bash deploy/test-install.sh --yes   # install that first
#
# It changes the machine: it installs the package, creates the system user `hotline` (left in
# place afterwards only if it existed before), and writes /etc/hotline, /var/lib/hotline-*,
# /var/backups/hotline. So it needs root and `--yes`, and refuses to run where the package is
# installed or any of those directories exists. Everything it made is removed at the end,
# whether it passed or not. The services run by hand as user `hotline`, as their units would
# (without systemd as PID 1 the package's scripts register the units but cannot start them):
# the "restart after upgrade" of `try-restart` is done by the script. It listens on
# 127.0.0.1 only: the relay on 7400 (metrics 9400), the nodes' APIs on 7500 and 7501.
#
# The walk:
#   1. install the package (revision 1): user, /etc/hotline and its token,
#      /var/backups/hotline, units disabled;
#   2. the roster key ceremony and first roster (--generate, as for drills), the relay's
#      certificate, relay.toml and node.toml (SEC) from the packaged examples, passing
#      `config check --strict` (no warning); the relay and SEC's node started; SEC sends a
#      test message to KAZ, which is offline;
#   3. a backup, an edited conffile, then an upgrade to revision 2 (`--force-confold`, as an
#      unattended upgrade keeps an edited conffile): the token, the edited conffile, the
#      operator's files and the stores are as they were; the services restarted; KAZ starts,
#      gets the message queued before the upgrade and acknowledges it; SEC sees both; the
#      backup timer's command on both stores, and `audit verify` of each copy;
#   4. remove: the program goes, configuration and data stay; installed again, the services
#      start on them (the message still acknowledged, in the relay's report too); removed;
#   5. purge: the stores and the token go; keys, configurations and backups stay.
set -euo pipefail
cd "$(dirname "$0")/.."

die() {
    echo "FAIL: $*" >&2
    exit 1
}
[ "${1:-}" = --yes ] || die "this installs the package on this machine and removes it again; run with --yes"
[ "$(id -u)" = 0 ] || die "run as root (it installs a package)"
for c in dpkg setpriv userdel; do
    command -v "$c" >/dev/null || die "$c not found (Debian with util-linux and passwd)"
done
package_state=$(dpkg-query -W -f '${db:Status-Status}' hotline 2>/dev/null || true)
if [ -n "$package_state" ] && [ "$package_state" != not-installed ]; then
    die "the hotline package is on this machine ($package_state); this test would remove it"
fi
for d in /etc/hotline /var/lib/hotline-relay /var/lib/hotline-node /var/backups/hotline; do
    [ ! -e "$d" ] || die "$d exists; this test would delete it"
done
# The operator commands below find SEC's node through /etc/hotline/node.toml.
unset HOTLINE_NODE_CONFIG HOTLINE_API HOTLINE_TOKEN_FILE
user_existed=no
getent passwd hotline >/dev/null && user_existed=yes

work=$(mktemp -d)
# The services running, by name: what `stop` and the cleanup stop.
declare -A pid=()
cleanup() {
    status=$?
    for p in "${pid[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if ! dpkg --purge hotline >"$work/purge.log" 2>&1 && [ -n "$(dpkg-query -W hotline 2>/dev/null)" ]; then
        cat "$work/purge.log"
        echo "WARNING: the hotline package could not be purged from this machine (above)" >&2
        status=1
    fi
    rm -rf /etc/hotline /var/lib/hotline-relay /var/lib/hotline-node /var/backups/hotline
    if [ "$user_existed" = no ] && getent passwd hotline >/dev/null; then
        userdel hotline 2>/dev/null || true
        groupdel hotline 2>/dev/null || true
    fi
    if [ "$status" -ne 0 ]; then
        for log in "$work"/*.log; do
            [ -f "$log" ] && { echo "--- $log (last 20 lines)"; tail -n 20 "$log"; }
        done
        echo "== install test FAILED" >&2
    fi
    rm -rf "$work"
    exit "$status"
}
trap cleanup EXIT

step() { echo "== $*"; }
# mode owner:group of a path, as stat prints them.
perms() { stat -c '%a %U:%G' "$1"; }
expect_perms() {
    [ "$(perms "$1")" = "$2" ] || die "$1 is $(perms "$1"), expected $2"
}
# Polls a command until it succeeds, for at most $1 seconds: every wait here is on a state
# the services report (a health answer, a node's status), never a fixed pause.
wait_until() {
    local limit=$1 what=$2
    shift 2
    local deadline=$((SECONDS + limit))
    until "$@" >/dev/null 2>&1; do
        [ "$SECONDS" -lt "$deadline" ] || die "waited ${limit}s for $what"
        sleep 0.2
    done
}
# Runs a command as user hotline, as the units do: "${as_hotline[@]}" COMMAND. setpriv execs
# it, so a service started in the background is its own $! (runuser would stay as its
# parent, and SIGKILL it 2 s after passing on a SIGTERM). An array, not a function: a
# function run in the background is a subshell, whose pid is not the service's.
as_hotline=(setpriv --reuid hotline --regid hotline --init-groups --)
# Starts a service in the background, logging to $work/NAME.log: as user hotline, or with
# `--root` as this user (KAZ's node, outside the package's paths).
start() {
    local name=$1
    shift
    if [ "$1" = --root ]; then
        shift
        "$@" >>"$work/$name.log" 2>&1 &
    else
        "${as_hotline[@]}" "$@" >>"$work/$name.log" 2>&1 &
    fi
    pid[$name]=$!
}
# Stops a service started by `start` with SIGTERM (a graceful shutdown), waiting at most
# 30 s, as systemd's default TimeoutStopSec, for it to exit 0.
stop() {
    local p=${pid[$1]}
    kill -TERM "$p" 2>/dev/null || true
    local deadline=$((SECONDS + 30))
    while kill -0 "$p" 2>/dev/null; do
        [ "$SECONDS" -lt "$deadline" ] || die "$1 still running 30 s after SIGTERM"
        sleep 0.2
    done
    wait "$p" || die "$1 exited with status $? (SIGTERM is a graceful shutdown: 0)"
    unset "pid[$1]"
}
# GET /health on the relay's metrics address (bash's /dev/tcp: curl may not be installed).
relay_healthy() {
    (
        exec 3<>/dev/tcp/127.0.0.1/9400
        printf 'GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3
        grep -q '"status":"ok"' <&3
    )
}
sec_connected() { hotline node-status | grep -q 'relays connected 1/1'; }
# The state of SEC's message: the first word of `hotline status`'s "state: acknowledged
# delivered 1/1  acknowledged 1/1" (queued, accepted, delivered, acknowledged...).
state_is() { hotline status "$id" | grep -q "^state: $1 "; }

# --- the two packages ----------------------------------------------------------------------
# DEB: a package built and checked before (test-package.sh's), installed first; without it,
# test-package.sh builds and checks one (and installs cargo-deb if it must). The upgrade is
# the same build as revision 2.
profile=${PROFILE:-release}
if [ -z "${DEB:-}" ]; then
    step "building and checking the package (profile $profile): deploy/test-package.sh"
    PROFILE=$profile bash deploy/test-package.sh >"$work/package.log" 2>&1 ||
        die "test-package.sh: $(tail -n 5 "$work/package.log")"
    DEB=$(sed -n 's/^== package OK: //p' "$work/package.log")
fi
# A copy: cargo-deb deletes the packages in target/debian when it builds another.
[ -f "$DEB" ] || die "DEB=$DEB: no such package"
cp "$DEB" "$work/"
deb1=$work/$(basename "$DEB")
step "the package $(basename "$deb1"), and the same build (profile $profile) as revision 2"
deb2=$(cargo deb -p hotline-cli --profile "$profile" --no-build --fast --deb-revision 2 \
    --output "$work/v2" | grep '\.deb$')
[ -f "$deb1" ] && [ -f "$deb2" ] || die "no packages to install ('$deb1', '$deb2')"
next_version=$(dpkg-deb -f "$deb2" Version)
# From here on `hotline` is the installed /usr/bin/hotline, never a development build that
# the caller's PATH may find first.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin

# --- 1. install ----------------------------------------------------------------------------
step "1. install $(basename "$deb1")"
dpkg -i "$deb1" >"$work/dpkg.log" 2>&1 || die "dpkg -i: $(cat "$work/dpkg.log")"
[ "$(command -v hotline)" = /usr/bin/hotline ] || die "the package installed no /usr/bin/hotline"
hotline --version | grep -q '^hotline ' || die "hotline --version"
shell=$(getent passwd hotline | cut -d: -f7)
[ "$shell" = /usr/sbin/nologin ] || die "user hotline has shell $shell"
uid=$(id -u hotline)
[ "$uid" -lt 1000 ] || die "user hotline is not a system user (uid $uid)"
expect_perms /etc/hotline "750 root:hotline"
expect_perms /etc/hotline/api.token "640 root:hotline"
grep -Eqx '[0-9a-f]{64}' /etc/hotline/api.token || die "api.token is not 64 hex digits"
expect_perms /var/backups/hotline "700 hotline:hotline"
for u in hotline-relay.service hotline-node.service; do
    [ -f "/usr/lib/systemd/system/$u" ] || die "$u not installed"
    if ls /etc/systemd/system/*.wants/"$u" >/dev/null 2>&1; then die "$u was enabled"; fi
done
token_before=$(cat /etc/hotline/api.token)

# --- 2. a network: roster, relay, SEC's node; a message to KAZ, offline ---------------------
step "2. roster key, first roster, relay certificate, configurations (OPERATIONS 2-4)"
hotline keygen --id ROSTER --out "$work/roster-key" >"$work/keygen.log" 2>&1
roster_key=$(cat "$work/roster-key/ROSTER.pub")
hotline roster create --from /etc/hotline/cica-roster.toml --keys "$work/pub" --generate \
    --out "$work/draft.toml" >/dev/null
hotline roster sign --roster "$work/draft.toml" --key "$work/roster-key/ROSTER.key" \
    --out "$work/roster.signed" >/dev/null
hotline roster verify "$work/roster.signed" --roster-key "$work/roster-key/ROSTER.pub" |
    grep -q '^OK: roster version 1' || die "roster verify"
fingerprint=$(hotline relay init --cert /etc/hotline/relay.crt --key /etc/hotline/relay.key |
    sed -n 's/^fingerprint: *//p')
[ -n "$fingerprint" ] || die "relay init printed no fingerprint"
chown hotline:hotline /etc/hotline/relay.crt /etc/hotline/relay.key
chmod 0600 /etc/hotline/relay.key
install -o hotline -g hotline -m 0600 "$work/pub/SEC.key" /etc/hotline/SEC.key
install -o root -g hotline -m 0640 "$work/roster.signed" /etc/hotline/roster.signed
install -o root -g hotline -m 0640 /etc/hotline/relay.toml.example /etc/hotline/relay.toml
install -o root -g hotline -m 0640 /etc/hotline/node.toml.example /etc/hotline/node.toml
sed -i -e 's/^listen = .*/listen = "127.0.0.1:7400"/' \
    -e "s/^roster_key = .*/roster_key = \"$roster_key\"/" /etc/hotline/relay.toml
sed -i -e 's/^participant = .*/participant = "SEC"/' -e 's/^key = .*/key = "SEC.key"/' \
    -e "s/^roster_key = .*/roster_key = \"$roster_key\"/" \
    -e 's/^address = .*/address = "127.0.0.1:7400"/' \
    -e "s/^fingerprint = .*/fingerprint = \"$fingerprint\"/" /etc/hotline/node.toml
hotline config check --strict /etc/hotline/relay.toml >"$work/check.log" 2>&1 ||
    die "config check relay.toml: $(cat "$work/check.log")"
hotline config check --strict /etc/hotline/node.toml >"$work/check.log" 2>&1 ||
    die "config check node.toml: $(cat "$work/check.log")"
grep -q '^OK: node configuration (participant SEC)' "$work/check.log" || die "node check: $(cat "$work/check.log")"
# The check runs as root, who reads every file, but the units run as hotline: a key left
# owned by root (the chown above forgotten) is refused, as the relay would fail to read it.
chown root:root /etc/hotline/relay.key
if hotline config check /etc/hotline/relay.toml >"$work/check.log" 2>&1; then
    die "config check passed a relay key user hotline cannot read"
fi
grep -q "relay.key: the service's account hotline cannot read it" "$work/check.log" ||
    die "config check, relay key owned by root: $(cat "$work/check.log")"
chown hotline:hotline /etc/hotline/relay.key
relay_toml_before=$(sha256sum /etc/hotline/relay.toml /etc/hotline/node.toml)

step "2. relay and SEC's node, as user hotline; SEC sends to KAZ (offline)"
# systemd makes the StateDirectory, owned by the service's user, before the first start.
install -d -o hotline -g hotline -m 0700 /var/lib/hotline-relay /var/lib/hotline-node
start relay hotline relay --config /etc/hotline/relay.toml
wait_until 30 "the relay's health" relay_healthy
start node hotline node --config /etc/hotline/node.toml
wait_until 30 "SEC's node to connect" sec_connected
id=$(hotline send --to KAZ --kind communications_check --status test --respond-within 600 \
    --subject "Communications check from SEC" --body "Before the upgrade." | head -n1)
grep -Eqx '[0-9a-f]{32}' <<<"$id" || die "hotline send printed '$id', not a message id"
wait_until 30 "the relay to accept the message" state_is accepted

# --- 3. upgrade ----------------------------------------------------------------------------
step "3. backup (OPERATIONS 8.1), an edited conffile, upgrade to $(basename "$deb2")"
"${as_hotline[@]}" hotline backup --data /var/lib/hotline-relay \
    --out /var/backups/hotline/pre-upgrade.db >"$work/backup.log" 2>&1 ||
    die "backup: $(cat "$work/backup.log")"
echo "# edited by the operator" >>/etc/hotline/cica-roster.toml
roster_template=$(sha256sum /etc/hotline/cica-roster.toml)
dpkg -i --force-confold "$deb2" >"$work/dpkg.log" 2>&1 || die "dpkg -i (upgrade): $(cat "$work/dpkg.log")"
[ "$(dpkg-query -W -f '${Version}' hotline)" = "$next_version" ] || die "not upgraded to $next_version"
[ "$(cat /etc/hotline/api.token)" = "$token_before" ] || die "the upgrade changed api.token"
[ "$(sha256sum /etc/hotline/cica-roster.toml)" = "$roster_template" ] ||
    die "the upgrade replaced an edited conffile"
[ "$(sha256sum /etc/hotline/relay.toml /etc/hotline/node.toml)" = "$relay_toml_before" ] ||
    die "the upgrade changed relay.toml or node.toml"
expect_perms /etc/hotline "750 root:hotline"
expect_perms /etc/hotline/api.token "640 root:hotline"
[ -s /var/backups/hotline/pre-upgrade.db ] || die "the backup is gone"

step "3. services restarted on the new program (try-restart); KAZ starts"
stop node
stop relay
start relay hotline relay --config /etc/hotline/relay.toml
wait_until 30 "the relay's health after the upgrade" relay_healthy
start node hotline node --config /etc/hotline/node.toml
wait_until 30 "SEC's node to connect after the upgrade" sec_connected
# KAZ: another contact point's node, outside the package's paths (its own directory).
mkdir -p "$work/kaz"
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$work/kaz/api.token"
cat >"$work/kaz/node.toml" <<EOF
participant = "KAZ"
key = "$work/pub/KAZ.key"
roster = "$work/roster.signed"
roster_key = "$roster_key"
data_dir = "$work/kaz/data"

[[relays]]
address = "127.0.0.1:7400"
fingerprint = "$fingerprint"

[api]
listen = "127.0.0.1:7501"
token_file = "$work/kaz/api.token"
EOF
chmod 0600 "$work/kaz/api.token" "$work/pub/KAZ.key"
start kaz --root hotline node --config "$work/kaz/node.toml"
wait_until 30 "KAZ to have the message sent before the upgrade" state_is delivered
hotline ack "$id" --officer "Duty officer Test" --node-config "$work/kaz/node.toml" >/dev/null
wait_until 30 "SEC to see KAZ's acknowledgement" state_is acknowledged

step "3. the backup timer's command, as its unit runs it, on both live stores; audit verify"
# hotline-backup@.service's ExecStart for each instance, with the unit's user and umask.
backup_cmd=$(sed -n 's/^ExecStart=//p' /usr/lib/systemd/system/hotline-backup@.service)
for instance in relay node; do
    # shellcheck disable=SC2046
    (umask 0077 && "${as_hotline[@]}" $(sed "s/%i/$instance/g" <<<"$backup_cmd")) \
        >"$work/backup-$instance.log" 2>&1 ||
        die "hotline-backup@$instance: $(cat "$work/backup-$instance.log")"
    copy=$(ls /var/backups/hotline/"$instance"-*Z.db 2>/dev/null | tail -n1)
    [ -n "$copy" ] || die "hotline-backup@$instance wrote no $instance-*.db"
    expect_perms "$copy" "600 hotline:hotline"
    hotline audit verify --data "$copy" >"$work/audit.log" 2>&1 ||
        die "audit verify of the $instance backup: $(cat "$work/audit.log")"
done
stop kaz
stop node
stop relay

# --- 4. remove -----------------------------------------------------------------------------
step "4. remove: the program goes, configuration and data stay"
dpkg -r hotline >"$work/dpkg.log" 2>&1 || die "dpkg -r: $(cat "$work/dpkg.log")"
[ ! -e /usr/bin/hotline ] || die "/usr/bin/hotline is still there"
for f in relay.toml node.toml relay.key relay.crt SEC.key roster.signed api.token \
    relay.toml.example node.toml.example cica-roster.toml; do
    [ -e "/etc/hotline/$f" ] || die "remove deleted /etc/hotline/$f"
done
[ -s /var/lib/hotline-relay/relay.db ] || die "remove deleted the relay's store"
[ -s /var/lib/hotline-node/node.db ] || die "remove deleted the node's store"

step "4. install again: the kept stores, token and configuration are taken up"
dpkg -i "$deb2" >"$work/dpkg.log" 2>&1 || die "dpkg -i after remove: $(cat "$work/dpkg.log")"
[ "$(cat /etc/hotline/api.token)" = "$token_before" ] || die "the reinstall changed api.token"
start relay hotline relay --config /etc/hotline/relay.toml
wait_until 30 "the relay's health after the reinstall" relay_healthy
start node hotline node --config /etc/hotline/node.toml
wait_until 30 "SEC's node to connect after the reinstall" sec_connected
state_is acknowledged || die "after the reinstall SEC's node no longer shows the message acknowledged"
"${as_hotline[@]}" hotline relay report --config /etc/hotline/relay.toml --id "$id" \
    >"$work/report.log" 2>&1 || die "relay report: $(cat "$work/report.log")"
grep -q KAZ "$work/report.log" || die "the relay's report lacks KAZ's receipt: $(cat "$work/report.log")"
stop node
stop relay
dpkg -r hotline >"$work/dpkg.log" 2>&1 || die "dpkg -r (again): $(cat "$work/dpkg.log")"

# --- 5. purge ------------------------------------------------------------------------------
step "5. purge: stores and token go; keys, configurations and backups stay"
dpkg -P hotline >"$work/dpkg.log" 2>&1 || die "dpkg -P: $(cat "$work/dpkg.log")"
[ ! -e /var/lib/hotline-relay ] || die "purge left /var/lib/hotline-relay"
[ ! -e /var/lib/hotline-node ] || die "purge left /var/lib/hotline-node"
[ ! -e /etc/hotline/api.token ] || die "purge left the API token"
for f in relay.toml node.toml relay.key relay.crt SEC.key roster.signed; do
    [ -e "/etc/hotline/$f" ] || die "purge deleted the operator's /etc/hotline/$f"
done
for f in relay.toml.example node.toml.example; do
    [ ! -e "/etc/hotline/$f" ] || die "purge left the conffile /etc/hotline/$f"
done
[ -s /var/backups/hotline/pre-upgrade.db ] || die "purge deleted the backup"
getent passwd hotline >/dev/null || die "purge deleted the user hotline (Debian keeps system users)"

echo "== install test OK: install, configure, run, upgrade, remove, purge"
