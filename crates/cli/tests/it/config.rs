//! `hotline config check` through the real binary: broken files are refused with the line to
//! fix, the shipped examples pass, and the files a configuration names are checked.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A valid (non-weak) ed25519 public key, used where only the syntax matters.
const KEY: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";

fn hotline(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hotline"))
        .args(args)
        .env("RUST_LOG", "warn")
        .env_remove("HOTLINE_ROSTER_KEY")
        .output()
        .expect("the hotline binary runs")
}

fn check(file: &Path) -> Output {
    hotline(&["config", "check", s(file)])
}

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 temporary path")
}

/// Runs `config check` on `text` and returns its standard error, asserting exit status 1.
fn refused(dir: &Path, name: &str, text: &str) -> String {
    let file = dir.join(name);
    std::fs::write(&file, text).expect("write config");
    let out = check(&file);
    let stderr = String::from_utf8(out.stderr).expect("UTF-8 errors");
    assert_eq!(
        out.status.code(),
        Some(1),
        "{name} should be refused; stdout: {} stderr: {stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.contains(name), "the error names the file: {stderr}");
    stderr
}

fn relay_text() -> String {
    format!(
        "listen = \"127.0.0.1:7400\"\ncert = \"relay.crt\"\nkey = \"relay.key\"\n\
         roster = \"roster.signed\"\nroster_key = \"{KEY}\"\ndata_dir = \"data\"\n\n\
         [limits]\nconnections_max = 100\n"
    )
}

fn node_text(fingerprint: &str) -> String {
    format!(
        "participant = \"KAZ\"\nkey = \"KAZ.key\"\nroster = \"roster.signed\"\n\
         roster_key = \"{KEY}\"\ndata_dir = \"data\"\n\n[[relays]]\n\
         address = \"127.0.0.1:7400\"\nfingerprint = \"{fingerprint}\"\n\n\
         [api]\ntoken_file = \"api.token\"\n"
    )
}

/// A roster key made in `dir/keys` and the CICA roster signed with it
/// ([`sign_cica_roster`]): the keys' directory and the roster key's public half.
fn roster_key_and_cica_roster(dir: &Path) -> (PathBuf, String) {
    let keys = dir.join("keys");
    let out = hotline(&["keygen", "--id", "ROSTER", "--out", s(&keys)]);
    assert!(out.status.success(), "{out:?}");
    let roster_key = String::from_utf8(out.stdout).expect("UTF-8");
    sign_cica_roster(dir, &keys);
    (keys, roster_key.trim().to_owned())
}

/// Signs the CICA roster template into `dir/roster.signed` with `keys/ROSTER.key`,
/// generating the participants' keys in `keys` (`dir/draft.toml` is the draft).
fn sign_cica_roster(dir: &Path, keys: &Path) {
    let (template, draft) = (repo_config("cica-roster.toml"), dir.join("draft.toml"));
    let (key, signed) = (keys.join("ROSTER.key"), dir.join("roster.signed"));
    for args in [
        [
            "roster",
            "create",
            "--from",
            s(&template),
            "--keys",
            s(keys),
            "--generate",
            "--out",
            s(&draft),
        ]
        .as_slice(),
        [
            "roster",
            "sign",
            "--roster",
            s(&draft),
            "--key",
            s(&key),
            "--out",
            s(&signed),
        ]
        .as_slice(),
    ] {
        let out = hotline(args);
        assert!(out.status.success(), "hotline {args:?}: {out:?}");
    }
}

fn repo_config(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../config")
        .join(name)
}

#[test]
fn the_example_configurations_pass() {
    let out = check(&repo_config("relay.toml"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.starts_with("OK: relay configuration"),
        "config/relay.toml: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = check(&repo_config("node.toml"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.starts_with("OK: node configuration (participant "),
        "config/node.toml: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_minimal_relay_and_node_pass_with_warnings_for_missing_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = dir.path().join("relay.toml");
    std::fs::write(&relay, relay_text()).expect("write");
    let out = check(&relay);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("OK: relay configuration\n"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("warning: cert") && stderr.contains("relay init"),
        "{stderr}"
    );
    // A roster not yet signed is a warning too, as OPERATIONS.md 3 says: exit 0.
    assert!(
        stderr.contains("warning: roster ")
            && stderr.contains("roster.signed: not found (sign one with `hotline roster sign`)"),
        "{stderr}"
    );
    // --strict turns the warnings into a refusal.
    let out = hotline(&["config", "check", "--strict", s(&relay)]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");

    let node = dir.path().join("node.toml");
    std::fs::write(&node, node_text(&"ab".repeat(32))).expect("write");
    let out = check(&node);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout)
        .starts_with("OK: node configuration (participant KAZ)\n"));
}

/// The same relay listed twice is refused (its two links would supersede each other); one
/// certificate pinned at two addresses is a warning, as both may reach one relay.
#[test]
fn a_relay_listed_twice_is_refused_and_one_certificate_at_two_addresses_warned_about() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fp = "ab".repeat(32);
    let second = |address: &str| {
        node_text(&fp).replace(
            "\n[api]",
            &format!("\n[[relays]]\naddress = \"{address}\"\nfingerprint = \"{fp}\"\n\n[api]"),
        )
    };
    let err = refused(dir.path(), "twice.toml", &second("127.0.0.1:7400"));
    assert!(
        err.contains("field `relays`")
            && err.contains("listed twice")
            && err.contains("lines 7, 11"),
        "{err}"
    );
    let node = dir.path().join("shared.toml");
    std::fs::write(&node, second("127.0.0.1:7401")).expect("write");
    let out = check(&node);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stderr
            .contains("warning: relays 127.0.0.1:7400 and 127.0.0.1:7401 pin the same certificate"),
        "{stderr}"
    );
}

#[test]
fn bad_toml_is_refused_with_its_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Line 4 opens a string it never closes.
    let text = relay_text().replace("roster = \"roster.signed\"", "roster = \"roster.signed");
    let err = refused(dir.path(), "syntax.toml", &text);
    assert!(err.contains("line 4"), "{err}");
    // A table header that is never closed, on line 7 of a node configuration.
    let text = node_text(&"ab".repeat(32)).replace("[[relays]]", "[[relays]");
    let err = refused(dir.path(), "header.toml", &text);
    assert!(err.contains("line 7"), "{err}");
}

#[test]
fn a_wrong_type_is_refused_with_its_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = relay_text().replace("connections_max = 100", "connections_max = \"many\"");
    let err = refused(dir.path(), "type.toml", &text);
    assert!(
        err.contains("line 9") && err.contains("connections_max"),
        "{err}"
    );
    let text = node_text(&"ab".repeat(32)).replace("\"127.0.0.1:7400\"", "7400");
    let err = refused(dir.path(), "address.toml", &text);
    assert!(err.contains("line 8"), "{err}");
}

#[test]
fn an_unknown_field_is_refused_with_its_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = relay_text().replace("[limits]\n", "[limits]\nconnection_max = 5\n");
    let err = refused(dir.path(), "unknown.toml", &text);
    assert!(
        err.contains("line 9") && err.contains("connection_max"),
        "{err}"
    );
    let text = node_text(&"ab".repeat(32)).replace("data_dir", "datadir");
    let err = refused(dir.path(), "renamed.toml", &text);
    assert!(err.contains("datadir"), "{err}");
}

#[test]
fn a_bad_value_names_its_field_and_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = relay_text().replace("connections_max = 100", "keepalive_ms = 60000");
    let err = refused(dir.path(), "keepalive.toml", &text);
    assert!(
        err.contains("limits.keepalive_ms") && err.contains("keepalive.toml:9"),
        "{err}"
    );
    // Two relays; the second one's fingerprint is the bad one (line 12).
    let text = node_text(&"ab".repeat(32)).replace(
        "\n[api]",
        "[[relays]]\naddress = \"127.0.0.1:7401\"\nfingerprint = \"12:34\"\n\n[api]",
    );
    let err = refused(dir.path(), "fingerprint.toml", &text);
    assert!(
        err.contains("relays.fingerprint") && err.contains("fingerprint.toml:12"),
        "{err}"
    );
}

/// `keygen` over an existing key pair is refused with a message that says how to replace it
/// (`--force`) and what replacing costs; it used to say only "already exists", leaving the
/// operator to find the flag, and nothing warned that the old secret key is then gone.
#[test]
fn keygen_over_a_key_says_how_to_replace_it_and_what_that_costs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let first = hotline(&["keygen", "--id", "ROSTER", "--out", s(d)]);
    assert!(first.status.success(), "{first:?}");
    let seed = std::fs::read(d.join("ROSTER.key")).expect("seed");
    let again = hotline(&["keygen", "--id", "ROSTER", "--out", s(d)]);
    assert_eq!(again.status.code(), Some(1), "{again:?}");
    let err = String::from_utf8(again.stderr).expect("UTF-8 errors");
    assert!(err.contains("ROSTER.key: already exists"), "{err}");
    assert!(err.contains("--force"), "says how to replace it: {err}");
    assert!(
        err.contains("roster key"),
        "warns about the roster key: {err}"
    );
    assert_eq!(
        std::fs::read(d.join("ROSTER.key")).expect("seed"),
        seed,
        "left as it was"
    );
}

/// A secret seed pasted where a key belongs is refused without being shown again: neither
/// the error nor the line it points at repeats it.
#[test]
fn a_key_pasted_into_the_configuration_is_not_shown() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let out = hotline(&["keygen", "--id", "KAZ", "--out", s(d)]);
    assert!(out.status.success(), "{out:?}");
    let seed = std::fs::read_to_string(d.join("KAZ.key")).expect("seed");
    let seed = seed.trim();
    // y = 2 is not on the curve: the relay and node both refuse it as a roster key.
    let not_a_point = format!("02{}", "0".repeat(62));
    for (name, text) in [
        (
            "node-roster-key.toml",
            node_text(&"ab".repeat(32)).replace(KEY, &not_a_point),
        ),
        (
            "relay-roster-key.toml",
            relay_text().replace(KEY, &not_a_point),
        ),
    ] {
        let err = refused(d, name, &text);
        assert!(
            err.contains("roster_key") && err.contains("not a valid ed25519 public key"),
            "{err}"
        );
        assert!(!err.contains(&not_a_point), "{err}");
        assert!(!err.contains("<command line>"), "{err}");
    }
    // The seed itself as the node's key (a path is expected there).
    let text = node_text(&"ab".repeat(32)).replace("\"KAZ.key\"", &format!("\"{seed}\""));
    let err = refused(d, "node-key.toml", &text);
    assert!(
        err.contains("key") && err.contains("where the path of the secret key file belongs"),
        "{err}"
    );
    assert!(!err.contains(seed), "{err}");
    // The roster key's own seed as the roster key, with a roster it signed beside the
    // configuration. The seed is a curve point (as about half of all seeds are), so it
    // passes as a public key until the roster is checked: told, and not shown.
    let roster_seed = "11".repeat(32);
    let keys = d.join("keys");
    let ok = |args: &[&str]| {
        let out = hotline(args);
        assert!(out.status.success(), "hotline {args:?}: {out:?}");
    };
    ok(&["keygen", "--id", "ROSTER", "--out", s(&keys)]);
    std::fs::write(keys.join("ROSTER.key"), format!("{roster_seed}\n")).expect("seed");
    set_mode(&keys.join("ROSTER.key"), 0o600);
    sign_cica_roster(d, &keys);
    for (name, text) in [
        (
            "node-seed.toml",
            node_text(&"ab".repeat(32)).replace(KEY, &roster_seed),
        ),
        ("relay-seed.toml", relay_text().replace(KEY, &roster_seed)),
    ] {
        let err = refused(d, name, &text);
        assert!(err.contains("SECRET seed"), "{name}: {err}");
        assert!(!err.contains(&roster_seed), "{name}: {err}");
        // Pasted without its quotes, the line does not parse, and the parser's error,
        // which quotes the line, does not show it either.
        let unquoted = text.replace(&format!("\"{roster_seed}\""), &roster_seed);
        let err = refused(d, name, &unquoted);
        assert!(err.contains("not shown"), "{name}: {err}");
        assert!(!err.contains(&roster_seed), "{name}: {err}");
    }
}

#[test]
fn the_named_files_are_checked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let keys = d.join("keys");
    let ok = |args: &[&str]| {
        let out = hotline(args);
        assert!(out.status.success(), "hotline {args:?}: {out:?}");
        String::from_utf8(out.stdout).expect("UTF-8")
    };
    let roster_key = ok(&["keygen", "--id", "ROSTER", "--out", s(&keys)]);
    let roster_key = roster_key.trim();
    ok(&["keygen", "--id", "OTHER", "--out", s(&keys)]);
    sign_cica_roster(d, &keys);
    let init = ok(&[
        "relay",
        "init",
        "--cert",
        s(&d.join("relay.crt")),
        "--key",
        s(&d.join("relay.key")),
    ]);
    let fingerprint = init
        .lines()
        .find_map(|l| l.strip_prefix("fingerprint: "))
        .expect("relay init prints the fingerprint")
        .trim()
        .to_owned();
    std::fs::copy(keys.join("KAZ.key"), d.join("KAZ.key")).expect("copy key");
    set_mode(&d.join("KAZ.key"), 0o600);

    let relay = d.join("relay.toml");
    std::fs::write(&relay, relay_text().replace(KEY, roster_key)).expect("write");
    let out = check(&relay);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.contains(&fingerprint), "{stdout}");
    assert!(
        stdout.contains("roster version 1 with 38 participants"),
        "{stdout}"
    );
    assert!(out.stderr.is_empty(), "{out:?}");

    let node = d.join("node.toml");
    std::fs::write(&node, node_text(&fingerprint).replace(KEY, roster_key)).expect("write");
    let out = hotline(&["config", "check", "--strict", s(&node)]);
    assert!(out.status.success(), "{out:?}");

    // A roster signed by a key other than the pinned roster_key is refused.
    let other = std::fs::read_to_string(keys.join("OTHER.pub")).expect("read");
    let text = node_text(&fingerprint).replace(KEY, other.trim());
    let err = refused(d, "wrong-roster-key.toml", &text);
    assert!(err.contains("roster.signed"), "{err}");

    // A participant the roster does not list.
    let text = node_text(&fingerprint)
        .replace(KEY, roster_key)
        .replace("\"KAZ\"", "\"XYZ\"");
    let err = refused(d, "not-on-roster.toml", &text);
    assert!(err.contains("XYZ is not on roster version 1"), "{err}");

    // A certificate and a key that are not a pair: the relay would refuse them at start,
    // and so does `relay fingerprint`.
    ok(&[
        "relay",
        "init",
        "--cert",
        s(&d.join("other.crt")),
        "--key",
        s(&d.join("other.key")),
    ]);
    let mismatched = relay_text()
        .replace(KEY, roster_key)
        .replace("relay.key", "other.key");
    let err = refused(d, "mismatched.toml", &mismatched);
    assert!(
        err.contains("not the private key") && err.contains("other.key"),
        "{err}"
    );
    // The relay refuses to start on them, with the status its unit does not restart on
    // (78): starting it again would meet the same pair.
    let config = d.join("mismatched.toml");
    let args = ["relay", "--config", s(&config)];
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hotline"));
    cmd.args(args)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let out = super::output_within(
        super::spawn_grouped(&mut cmd),
        &args,
        std::time::Duration::from_secs(30),
        "the relay started with a certificate and a key that are not a pair",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.code() == Some(78) && stderr.contains("not the private key"),
        "{out:?}"
    );
    let out = hotline(&[
        "relay",
        "fingerprint",
        "--cert",
        s(&d.join("relay.crt")),
        "--key",
        s(&d.join("other.key")),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.code() == Some(1) && stderr.contains("not the private key"),
        "{out:?}"
    );
    // An idle timeout QUIC cannot take is refused, naming its line.
    let endless = relay_text().replace(KEY, roster_key).replace(
        "connections_max = 100",
        "idle_timeout_ms = 9223372036854775807",
    );
    let err = refused(d, "idle.toml", &endless);
    assert!(
        err.contains("limits.idle_timeout_ms") && err.contains("idle.toml:9"),
        "{err}"
    );

    // A key file others may read: the node would refuse it.
    set_mode(&d.join("KAZ.key"), 0o644);
    let text = node_text(&fingerprint).replace(KEY, roster_key);
    let err = refused(d, "open-key.toml", &text);
    assert!(err.contains("KAZ.key"), "{err}");
}

/// The relay's TLS key is a secret like a participant's key: one the group or others may
/// read is refused by `config check`, naming the file, its mode and the fix, as the relay
/// refuses it at start.
#[test]
fn a_relay_key_others_may_read_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let out = hotline(&[
        "relay",
        "init",
        "--cert",
        s(&d.join("relay.crt")),
        "--key",
        s(&d.join("relay.key")),
    ]);
    assert!(out.status.success(), "{out:?}");
    let relay = d.join("relay.toml");
    std::fs::write(&relay, relay_text()).expect("write");
    // As `relay init` wrote it (0600): only the roster is missing, a warning.
    let out = check(&relay);
    assert!(out.status.success(), "{out:?}");

    set_mode(&d.join("relay.key"), 0o640);
    let err = refused(d, "relay.toml", &relay_text());
    assert!(
        err.contains("relay.key") && err.contains("0640") && err.contains("chmod 600"),
        "{err}"
    );
    assert!(
        err.contains("relay.toml:3: key"),
        "points at the key line: {err}"
    );
}

/// The API token file is checked as the node reads it at start: a file there that holds no
/// token, a directory, or a missing file in a directory that does not exist stops the node,
/// and `config check` refused none of them ("OK", exit 0). Each is refused now, naming the
/// file and the `token_file` line, and the node, started on the same configuration, fails
/// too: with status 78 (its unit does not restart it) for a file that holds no token or a
/// directory, which stay so until someone changes them (a directory exited 1, and systemd
/// restarted the node five times to meet it again); a good token passes both.
#[test]
fn an_api_token_file_the_node_would_refuse_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (keys, roster_key) = roster_key_and_cica_roster(d);
    std::fs::copy(keys.join("KAZ.key"), d.join("KAZ.key")).expect("copy key");
    set_mode(&d.join("KAZ.key"), 0o600);
    let node = d.join("node.toml");
    let text = node_text(&"ab".repeat(32))
        .replace(KEY, &roster_key)
        .replace("[api]\n", "[api]\nlisten = \"127.0.0.1:0\"\n");
    let start = |token_file: &str| {
        std::fs::write(
            &node,
            text.replace("\"api.token\"", &format!("\"{token_file}\"")),
        )
        .expect("write");
        let args = ["node", "--config", s(&node)];
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_hotline"));
        cmd.args(args)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        super::output_within(
            super::spawn_grouped(&mut cmd),
            &args,
            std::time::Duration::from_secs(30),
            "the node started with a token file `config check` refused",
        )
    };
    let token = d.join("api.token");
    for (token_file, setup, expected, exit) in [
        (
            "api.token",
            (|t: &Path| std::fs::write(t, "").expect("empty")) as fn(&Path),
            "api.token: not an API token",
            Some(78),
        ),
        (
            "api.token",
            |t: &Path| std::fs::create_dir(t).expect("mkdir"),
            "api.token: is a directory",
            Some(78),
        ),
        (
            "missing/api.token",
            |_: &Path| {},
            "missing is not a directory",
            Some(1),
        ),
    ] {
        let _ = std::fs::remove_file(&token);
        let _ = std::fs::remove_dir(&token);
        setup(&token);
        let out = start(token_file);
        assert_eq!(out.status.code(), exit, "the node: {out:?}");
        let out = check(&node);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{token_file}: {out:?}");
        assert!(
            stderr.contains(expected)
                && stderr.contains(&format!("node.toml:13: token_file = \"{token_file}\"")),
            "{stderr}"
        );
    }
    std::fs::write(&token, format!("{}\n", "cd".repeat(32))).expect("token");
    std::fs::write(&node, &text).expect("write");
    let out = hotline(&["config", "check", "--strict", s(&node)]);
    assert!(out.status.success(), "{out:?}");
}

/// A `data_dir` below a file can never be created (the service fails at each start, "Not
/// a directory"), and `config check` passed it since the directory itself does not exist:
/// refused, naming the file in the way and the line.
#[test]
fn a_data_dir_below_a_file_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("plain"), "").expect("write");
    let text = relay_text().replace("data_dir = \"data\"", "data_dir = \"plain/data\"");
    let err = refused(dir.path(), "relay.toml", &text);
    assert!(
        err.contains("cannot be created") && err.contains("plain is not a directory"),
        "{err}"
    );
    assert!(
        err.contains("relay.toml:6: data_dir = \"plain/data\""),
        "{err}"
    );
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// A node starts on the newer of its roster file and the roster its store holds (one a
/// relay sent it), so the check is made against that one: a node the store's newer roster
/// revokes is refused though the file still lists it, and a roster file that does not
/// verify is only a warning when the store holds a roster the node can start on.
#[test]
fn a_node_is_checked_against_the_newer_roster_its_store_holds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (keys, roster_key) = roster_key_and_cica_roster(d);
    let roster_key = roster_key.as_str();
    std::fs::copy(keys.join("KAZ.key"), d.join("KAZ.key")).expect("copy key");
    set_mode(&d.join("KAZ.key"), 0o600);
    let node = d.join("node.toml");
    std::fs::write(&node, node_text(&"ab".repeat(32)).replace(KEY, roster_key)).expect("write");

    // Version 2, which revokes KAZ, reaches the node's store (as from a relay); the file
    // is still version 1.
    let draft = d.join("draft.toml");
    let v2 = d.join("roster-v2.signed");
    for args in [
        vec!["roster", "revoke", "--roster", s(&draft), "--id", "KAZ"],
        vec![
            "roster",
            "sign",
            "--roster",
            s(&draft),
            "--key",
            s(&keys.join("ROSTER.key")),
            "--version",
            "2",
            "--out",
            s(&v2),
        ],
    ] {
        let out = hotline(&args);
        assert!(out.status.success(), "hotline {args:?}: {out:?}");
    }
    let pinned: hotline_proto::PublicKey = roster_key.parse().expect("roster key");
    let revoking = hotline_config::roster_file::read_verified_roster(&v2, &pinned).expect("v2");
    let data = d.join("data");
    std::fs::create_dir(&data).expect("data dir");
    hotline_node::store::NodeStore::open(&data)
        .expect("store")
        .save_roster(&revoking, 1)
        .expect("save roster");

    let err = refused(
        d,
        "node.toml",
        &std::fs::read_to_string(&node).expect("read"),
    );
    assert!(
        err.contains(
            "participant KAZ is revoked in roster version 2 (the node's store holds it; the \
             file's is 1)"
        ),
        "{err}"
    );

    // With KAZ in good standing in the store's roster, a damaged roster file is a warning:
    // the node starts on the store's. --strict refuses it.
    std::fs::remove_dir_all(&data).expect("remove store");
    std::fs::create_dir(&data).expect("data dir");
    let file = hotline_config::roster_file::read_verified_roster(&d.join("roster.signed"), &pinned)
        .expect("v1");
    hotline_node::store::NodeStore::open(&data)
        .expect("store")
        .save_roster(&file, 1)
        .expect("save roster");
    std::fs::write(d.join("roster.signed"), "not a roster\n").expect("damage the file");
    let out = check(&node);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stderr.contains("the node will start on roster version 1 from its store"),
        "{stderr}"
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(
            "roster version 1 (the node's store holds it) with 38 participants, signed by \
             roster_key"
        ),
        "{out:?}"
    );
    let out = hotline(&["config", "check", "--strict", s(&node)]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
}

/// `hotline config check` refuses what the service would refuse at its start (exit status
/// 78) for its store, pointing at `data_dir`: a node's store that is another participant's
/// (a backup restored into the wrong directory), and a node's or a relay's store written by a
/// newer release. OPERATIONS.md 12 sends an operator whose unit failed with status 78 to this
/// check; it used to print OK for both. A store recorded for another participant that holds
/// nothing yet passes, as the node records itself in it.
#[test]
fn a_store_the_service_would_refuse_at_start_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (keys, roster_key) = roster_key_and_cica_roster(d);
    std::fs::copy(keys.join("KAZ.key"), d.join("KAZ.key")).expect("copy key");
    set_mode(&d.join("KAZ.key"), 0o600);
    let text = node_text(&"ab".repeat(32)).replace(KEY, &roster_key);
    let data = d.join("data");
    std::fs::create_dir(&data).expect("data dir");

    // KGZ's store, holding nothing yet: the node configured as KAZ would take it over.
    let kgz: hotline_proto::ParticipantId = "KGZ".parse().expect("id");
    let mut store = hotline_node::store::NodeStore::open(&data).expect("store");
    store.claim_participant(&kgz, 1).expect("claim");
    let node = d.join("node.toml");
    std::fs::write(&node, &text).expect("write");
    let out = check(&node);
    assert!(out.status.success(), "{out:?}");

    // Once it holds a message KGZ sent, it is KGZ's: refused, as the node refuses it.
    let draft = hotline_node::store::Draft {
        audience: hotline_proto::Audience::Participants(vec!["KAZ".parse().expect("id")]),
        kind: hotline_proto::Kind::Alert,
        precedence: hotline_proto::Precedence::Routine,
        status: hotline_proto::Status::Test,
        respond_by_ms: None,
        references: Vec::new(),
        category: None,
        subject: "sent by KGZ".into(),
        body: String::new(),
    };
    let kgz_key = hotline_config::keyfile::read_secret(&keys.join("KGZ.key")).expect("KGZ key");
    store
        .compose(&kgz, &kgz_key, draft, &[], 1, 2)
        .expect("store")
        .expect("sign");
    drop(store);
    let err = refused(d, "node.toml", &text);
    assert!(
        err.contains("is the store of KGZ, but this is KAZ") && err.contains("data_dir"),
        "{err}"
    );

    // KAZ's own store, but from a newer release.
    std::fs::remove_dir_all(&data).expect("remove store");
    std::fs::create_dir(&data).expect("data dir");
    drop(hotline_node::store::NodeStore::open(&data).expect("store"));
    let newer = |db: &Path, version: i64| {
        hotline_store::open(db, true)
            .expect("open")
            .execute_batch(&format!("PRAGMA user_version = {version}"))
            .expect("set the schema version");
    };
    newer(
        &data.join("node.db"),
        hotline_node::store::SCHEMA_VERSION + 1,
    );
    let err = refused(d, "node.toml", &text);
    assert!(
        err.contains("was written by a newer version of the node") && err.contains("data_dir"),
        "{err}"
    );

    // A relay's store from a newer release.
    let relay_data = d.join("relay-data");
    std::fs::create_dir(&relay_data).expect("relay data dir");
    newer(&relay_data.join("relay.db"), 1_000);
    let relay_text = relay_text()
        .replace(KEY, &roster_key)
        .replace("data_dir = \"data\"", "data_dir = \"relay-data\"");
    let err = refused(d, "relay.toml", &relay_text);
    assert!(
        err.contains("was written by a newer version of the relay") && err.contains("data_dir"),
        "{err}"
    );
}

/// The exit statuses OPERATIONS.md section 9 lists: 1 for an error met while running, 2 for
/// a command line that is wrong (clap's usage error, before anything is done), and the
/// relay's and node's units restart on neither 2 nor 78. Section 9 said "1 on any error",
/// so a script (or a unit) could not tell the two apart from the documentation, and the
/// units restarted a relay or node whose `ExecStart=` was wrong five times over.
#[test]
fn exit_statuses_are_the_documented_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("missing.toml");
    let out = hotline(&["config", "check", s(&missing)]);
    assert_eq!(out.status.code(), Some(1), "an error met: {out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("error: "),
        "{out:?}"
    );
    for usage in [
        &["keygen", "--id", "KAZ"][..],
        &["keygen", "--id", "KAZ", "--out", "x", "--frobnicate"],
        &["backup", "--data", "x", "--out-dir", "y", "--keep", "0"],
        &["no-such-command"],
    ] {
        let out = hotline(usage);
        assert_eq!(out.status.code(), Some(2), "{usage:?}: {out:?}");
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(
            said.starts_with("error: ") && (said.contains("Usage:") || said.contains("--help")),
            "{usage:?}: {out:?}"
        );
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let ops = std::fs::read_to_string(root.join("docs/OPERATIONS.md")).expect("OPERATIONS.md");
    assert!(
        ops.contains("| 2 | the command line is wrong"),
        "section 9 lists status 2"
    );
    for unit in ["hotline-relay.service", "hotline-node.service"] {
        let text = std::fs::read_to_string(root.join("deploy/systemd").join(unit)).expect("unit");
        assert!(
            text.lines().any(|l| l == "RestartPreventExitStatus=2 78"),
            "{unit}: not restarted on a wrong command line"
        );
    }
}

/// `hotline config check` agrees with the service's start about its data directory: a
/// restore's marker left there (`RESTORE-UNFINISHED`), or no store but signs of one (a
/// backup or a replaced store beside it, a write-ahead log without its file), make the
/// relay or node refuse to start with exit status 78, and the check refuses them too,
/// pointing at `data_dir`. It printed OK for both.
#[test]
fn a_data_directory_the_service_would_refuse_at_start_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (keys, roster_key) = roster_key_and_cica_roster(d);
    std::fs::copy(keys.join("KAZ.key"), d.join("KAZ.key")).expect("copy key");
    set_mode(&d.join("KAZ.key"), 0o600);
    let text = node_text(&"ab".repeat(32)).replace(KEY, &roster_key);
    let data = d.join("data");
    std::fs::create_dir(&data).expect("data dir");
    drop(hotline_node::store::NodeStore::open(&data).expect("store"));
    let node = d.join("node.toml");
    std::fs::write(&node, &text).expect("write");
    let out = check(&node);
    assert!(out.status.success(), "{out:?}");

    // A restore cut short.
    let marker = data.join(hotline_store::RESTORE_MARKER);
    std::fs::write(&marker, b"").expect("marker");
    let refused_at_start = hotline_node::store::NodeStore::open(&data)
        .err()
        .expect("refused");
    let err = refused(d, "node.toml", &text);
    assert!(
        err.contains("a restore into this data directory did not finish")
            && err.contains("RESTORE-UNFINISHED")
            && err.contains("data_dir"),
        "{err} (the node: {refused_at_start})"
    );
    std::fs::remove_file(&marker).expect("marker removed");

    // The store moved away, a backup of it left beside where it was.
    std::fs::rename(
        data.join("node.db"),
        data.join("node-20250101T030000.123Z.db"),
    )
    .expect("moved");
    for f in ["node.db-wal", "node.db-shm"] {
        let _ = std::fs::remove_file(data.join(f));
    }
    let refused_at_start = hotline_node::store::NodeStore::open(&data)
        .err()
        .expect("refused");
    let err = refused(d, "node.toml", &text);
    assert!(
        err.contains("node.db is missing, but the directory holds")
            && err.contains("node-20250101T030000.123Z.db")
            && err.contains("data_dir"),
        "{err} (the node: {refused_at_start})"
    );
    assert!(!data.join("node.db").exists(), "the check created nothing");

    // Nothing left there: a first start, which creates an empty store.
    std::fs::remove_file(data.join("node-20250101T030000.123Z.db")).expect("removed");
    let out = check(&node);
    assert!(out.status.success(), "{out:?}");
}
