#!/usr/bin/env bash
# Builds the Debian package with cargo-deb and checks what is in it: the file list, modes
# and owners, control fields, conffiles, maintainer scripts, the units (identical to
# deploy/systemd/, passing `systemd-analyze verify` and rated at most 2.0 by
# `systemd-analyze security`), and that the packaged binary runs and accepts the packaged
# example configurations. Exits non-zero on the first group of mismatches.
#
#   bash deploy/test-package.sh             # build (incremental) and check
#   PROFILE=dev bash deploy/test-package.sh # the same files around a debug build (CI)
#   DEB=path/to/hotline.deb bash deploy/test-package.sh   # check a package built before
#
# Needs dpkg-deb (Debian); installs cargo-deb if it is missing. `cargo deb` builds in release
# mode (the package that ships); cargo's incremental build makes a second run cheap. Nothing
# checked here depends on the profile: CI passes PROFILE=dev to reuse the test step's build,
# since a release build from scratch takes about 8 minutes on two cores.
set -euo pipefail
cd "$(dirname "$0")/.."

fail=0
bad() {
    echo "FAIL: $*" >&2
    fail=1
}
stop_if_failed() {
    if [ "$fail" -ne 0 ]; then
        echo "== package check FAILED ($1)" >&2
        exit 1
    fi
}

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
arch=$(dpkg --print-architecture)

if [ -z "${DEB:-}" ]; then
    if ! cargo deb --version >/dev/null 2>&1; then
        echo "== installing cargo-deb"
        # Pinned: 3.8 builds with `--profile dev` (PROFILE=dev, CI) but warns that a later
        # version will refuse it.
        cargo install cargo-deb --locked --version 3.8.0
    fi
    profile=${PROFILE:-release}
    echo "== cargo deb -p hotline-cli --profile $profile"
    # cargo-deb prints the paths of what it built on standard output: the package and,
    # with `dbgsym = true`, the debug symbols package (.ddeb).
    built=$(cargo deb -p hotline-cli --profile "$profile")
    DEB=$(grep '\.deb$' <<<"$built" | tail -n1)
    DBGSYM=$(grep '\.ddeb$' <<<"$built" | tail -n1 || true)
    [ -n "$DBGSYM" ] && [ -f "$DBGSYM" ] || bad "no debug symbols package (.ddeb) was built"
fi
[ -f "$DEB" ] || { echo "FAIL: no package at '$DEB'" >&2; exit 1; }
echo "== checking $DEB"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root="$work/root"
control="$work/control"
dpkg-deb -x "$DEB" "$root"
dpkg-deb -e "$DEB" "$control"

# --- control fields (dpkg-deb -I) ----------------------------------------------------------
field() { dpkg-deb -f "$DEB" "$1"; }
[ "$(field Package)" = hotline ] || bad "Package is '$(field Package)', expected hotline"
[ "$(field Version)" = "$version-1" ] || bad "Version is '$(field Version)', expected $version-1"
[ "$(field Architecture)" = "$arch" ] || bad "Architecture is '$(field Architecture)', expected $arch"
[ "$(field Section)" = net ] || bad "Section is '$(field Section)', expected net"
[ "$(field Priority)" = optional ] || bad "Priority is '$(field Priority)', expected optional"
[ -n "$(field Maintainer)" ] || bad "no Maintainer"
depends=$(field Depends)
for dep in adduser libc6; do
    grep -Eq "(^|, )$dep( |,|$)" <<<"$depends" || bad "Depends '$depends' lacks $dep"
done
grep -q 'OPERATIONS.md' <<<"$(field Description)" || bad "Description does not point at OPERATIONS.md"
dpkg-deb -I "$DEB" >/dev/null || bad "dpkg-deb -I cannot read the package"
stop_if_failed "control fields"

# --- file list (dpkg-deb -c) ---------------------------------------------------------------
# Every file the package must hold: path, mode. Nothing else may be in it.
expected="$work/expected"
{
    echo "./usr/bin/hotline -rwxr-xr-x"
    echo "./usr/lib/systemd/system/hotline-relay.service -rw-r--r--"
    echo "./usr/lib/systemd/system/hotline-node.service -rw-r--r--"
    echo "./usr/lib/systemd/system/hotline-backup@.service -rw-r--r--"
    echo "./usr/lib/systemd/system/hotline-backup@.timer -rw-r--r--"
    echo "./etc/hotline/relay.toml.example -rw-r--r--"
    echo "./etc/hotline/node.toml.example -rw-r--r--"
    echo "./etc/hotline/cica-roster.toml -rw-r--r--"
    for f in config/exercises/*.toml; do
        echo "./usr/share/hotline/exercises/$(basename "$f") -rw-r--r--"
    done
    for f in OPERATIONS.md PROTOCOL.md API.md SCENARIOS.md README.md ARCHITECTURE.md copyright; do
        echo "./usr/share/doc/hotline/$f -rw-r--r--"
    done
    echo "./usr/share/man/man1/hotline.1.gz -rw-r--r--"
} | sort >"$expected"
actual="$work/actual"
# dpkg-deb -c prints: mode owner/group size date time path; keep regular files only.
dpkg-deb -c "$DEB" | awk '$1 ~ /^-/ { print $6, $1 }' | sort >"$actual"
if ! diff -u "$expected" "$actual"; then
    bad "file list differs from the expected one (- expected, + in the package)"
fi
owners=$(dpkg-deb -c "$DEB" | awk '{ print $2 }' | sort -u)
[ "$owners" = "root/root" ] || [ "$owners" = "0/0" ] || bad "files not all owned by root/root: $owners"
# Stripped: the symbols are in hotline-dbgsym.
if command -v file >/dev/null 2>&1; then
    dpkg-deb --fsys-tarfile "$DEB" | tar -xO ./usr/bin/hotline >"$work/hotline.bin"
    [[ $(file "$work/hotline.bin") == *', stripped'* ]] || bad "usr/bin/hotline is not stripped"
fi
stop_if_failed "file list"

# --- conffiles and maintainer scripts ------------------------------------------------------
for f in relay.toml.example node.toml.example cica-roster.toml; do
    grep -qx "/etc/hotline/$f" "$control/conffiles" || bad "/etc/hotline/$f is not a conffile"
done
for s in postinst postrm prerm; do
    [ -x "$control/$s" ] || { bad "no executable $s"; continue; }
    sh -n "$control/$s" || bad "$s is not valid sh"
    if grep -q '#DEBHELPER#' "$control/$s"; then bad "$s still holds #DEBHELPER#"; fi
    # cargo-deb replaces every occurrence of the token, one in a comment too, and what followed
    # it there becomes a command (the 0.1.0 prerm ran `. The backup timers…`): the token only
    # on a line of its own, once, and every fragment it put in starts a line.
    [ "$(grep -c '#DEBHELPER#' "deploy/debian/$s")" = 1 ] && grep -qx '#DEBHELPER#' "deploy/debian/$s" ||
        bad "deploy/debian/$s must hold the debhelper token once, on a line of its own"
    if grep -n 'Automatically added by cargo-deb' "$control/$s" | grep -v ':# Automatically added by cargo-deb$'; then
        bad "$s: a cargo-deb fragment was put inside a line"
    fi
done
grep -q 'adduser --system' "$control/postinst" || bad "postinst does not create the hotline user"
grep -q 'hotline-relay.service' "$control/postinst" || bad "postinst lacks the systemd fragment for hotline-relay"
grep -q 'hotline-node.service' "$control/postinst" || bad "postinst lacks the systemd fragment for hotline-node"
# Units are enabled again only if they were enabled before, restarted only if running
# (upgrade), and never started: they must wait for the operator's configuration.
grep -q 'was-enabled hotline-relay.service' "$control/postinst" ||
    bad "postinst does not use the dont-enable fragment for hotline-relay"
grep -q 'try-restart hotline-relay.service' "$control/postinst" ||
    bad "postinst does not try-restart hotline-relay on upgrade"
if grep -Eq 'deb-systemd-invoke (start|\$_dh_action)' "$control/postinst"; then
    bad "postinst starts a unit; units must wait for the operator's configuration"
fi
grep -q 'install -d -o hotline -g hotline -m 0700 /var/backups/hotline' "$control/postinst" ||
    bad "postinst does not make /var/backups/hotline for the backup timer"
if grep -Eq 'rm -rf? .*/var/backups' "$control/postrm"; then
    bad "postrm deletes backups; they must outlive the package"
fi
grep -q 'rm -rf /var/lib/hotline-relay /var/lib/hotline-node' "$control/postrm" ||
    bad "postrm purge does not remove the state directories"
grep -qF "systemctl stop 'hotline-backup@*.timer'" "$control/prerm" ||
    bad "prerm does not stop the backup timers"
grep -q 'hotline-relay.service' "$control/prerm" ||
    bad "prerm lacks the systemd fragment that stops hotline-relay"
grep -qF 'timers.target.wants/hotline-backup@*.timer' "$control/postrm" ||
    bad "postrm purge leaves the backup timers' links"
stop_if_failed "maintainer scripts"

# --- units: as in the repository, with the paths the issue fixes ---------------------------
for u in hotline-relay.service hotline-node.service hotline-backup@.service hotline-backup@.timer; do
    cmp -s "deploy/systemd/$u" "$root/usr/lib/systemd/system/$u" ||
        bad "$u in the package differs from deploy/systemd/$u"
done
grep -qx 'ExecStart=/usr/bin/hotline relay --config /etc/hotline/relay.toml' \
    "$root/usr/lib/systemd/system/hotline-relay.service" || bad "relay ExecStart"
grep -qx 'ExecStart=/usr/bin/hotline node --config /etc/hotline/node.toml' \
    "$root/usr/lib/systemd/system/hotline-node.service" || bad "node ExecStart"
grep -qx 'StateDirectory=hotline-relay' "$root/usr/lib/systemd/system/hotline-relay.service" ||
    bad "relay StateDirectory"
grep -qx 'StateDirectory=hotline-node' "$root/usr/lib/systemd/system/hotline-node.service" ||
    bad "node StateDirectory"
grep -qx 'ExecReload=/bin/kill -HUP $MAINPID' "$root/usr/lib/systemd/system/hotline-relay.service" ||
    bad "relay ExecReload"
backup_exec='/usr/bin/hotline backup --data /var/lib/hotline-%i --out-dir /var/backups/hotline --keep 48'
grep -qxF "ExecStart=$backup_exec" "$root/usr/lib/systemd/system/hotline-backup@.service" ||
    bad "backup ExecStart"
grep -qx 'OnCalendar=hourly' "$root/usr/lib/systemd/system/hotline-backup@.timer" || bad "backup timer"
stop_if_failed "units"

# --- the binary and the examples -----------------------------------------------------------
bin="$root/usr/bin/hotline"
# Outputs are captured before they are matched: `cmd | grep -q` would close the pipe early.
out=$("$bin" --version) && [ "$out" = "hotline $version" ] || bad "hotline --version: $out"
out=$("$bin" config check "$root/etc/hotline/relay.toml.example" 2>/dev/null) &&
    grep -q '^OK: relay configuration' <<<"$out" ||
    bad "relay.toml.example does not pass hotline config check"
out=$("$bin" config check "$root/etc/hotline/node.toml.example" 2>/dev/null) &&
    grep -q '^OK: node configuration' <<<"$out" ||
    bad "node.toml.example does not pass hotline config check"
# Under ProtectSystem=strict the services can write only their StateDirectory.
grep -Eq '^data_dir = "/var/lib/hotline-relay"' "$root/etc/hotline/relay.toml.example" ||
    bad "relay.toml.example: data_dir must be \"/var/lib/hotline-relay\" (the unit's StateDirectory)"
grep -Eq '^data_dir = "/var/lib/hotline-node"' "$root/etc/hotline/node.toml.example" ||
    bad "node.toml.example: data_dir must be \"/var/lib/hotline-node\" (the unit's StateDirectory)"
# The backup unit's command, as systemd splits it, for an instance with no store (the
# e2e tests run it on real stores): its options parse, and the missing store is named.
# shellcheck disable=SC2046
out=$($(sed -e "s#/usr/bin/hotline#$bin#" -e "s#/var/lib/hotline-%i#$work/hotline-none#" \
    -e "s#/var/backups/hotline#$work#" <<<"$backup_exec") 2>&1) && bad "backup of no store succeeded"
grep -q "hotline-none: no such data directory or store file" <<<"$out" ||
    bad "the backup unit's command, for a missing store: $out"
zcat "$root/usr/share/man/man1/hotline.1.gz" >"$work/hotline.1" &&
    grep -q '^\.TH HOTLINE 1' "$work/hotline.1" || bad "man page"
stop_if_failed "binary and examples"

# --- systemd-analyze, where available ------------------------------------------------------
if command -v systemd-analyze >/dev/null 2>&1; then
    # verify checks that ExecStart exists, so point it at the packaged binary (in a copy of
    # the unit) and let man(1) find the packaged man page for Documentation=.
    units="$work/units"
    mkdir -p "$units"
    # The backup template is checked as its instance `relay`; the timer comes after the
    # service, which its verification needs.
    for u in hotline-relay.service hotline-node.service hotline-backup@relay.service \
        hotline-backup@relay.timer; do
        sed "s#/usr/bin/hotline#$bin#" "$root/usr/lib/systemd/system/${u/@relay/@}" >"$units/$u"
        echo "== systemd-analyze verify $u"
        if ! out=$(MANPATH="$root/usr/share/man:" systemd-analyze verify "$units/$u" 2>&1) ||
            [ -n "$out" ]; then
            bad "systemd-analyze verify $u: $out"
        fi
        [[ $u == *.service ]] || continue
        echo "== systemd-analyze security --offline=yes $u"
        out=$(systemd-analyze security --offline=yes --threshold=20 "$units/$u" 2>&1) ||
            bad "$u exposure above 2.0"
        grep 'Overall exposure level' <<<"$out" || bad "no exposure figure for $u"
    done
else
    echo "== systemd-analyze not found: unit checks skipped"
fi
stop_if_failed "systemd-analyze"

echo "== package OK: $DEB"
