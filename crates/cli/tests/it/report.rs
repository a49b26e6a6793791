//! `hotline relay report` through the real binary, on a relay store it reads as a relay
//! would have left it.

use std::path::Path;
use std::process::{Command, Output};

use hotline_proto::{
    Audience, Envelope, Kind, MessageId, ParticipantId, Precedence, Seq, Signed, SigningKey,
    Status, PROTOCOL_VERSION,
};

fn hotline(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hotline"))
        .args(args)
        .current_dir(cwd)
        .env("RUST_LOG", "warn")
        .output()
        .expect("the hotline binary runs")
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as u64
}

/// A relay configuration in `dir` whose store is `dir/relay-data/relay.db`, created empty
/// as a relay's first start leaves it. The report reads only the store: the certificate,
/// key and roster it names need not exist.
fn relay(dir: &Path) {
    let data = dir.join("relay-data");
    std::fs::create_dir(&data).expect("mkdir");
    hotline_relay::store::redeliver_all_since(&data, 0, 0).expect("a relay store");
    std::fs::write(
        dir.join("relay.toml"),
        "cert = \"relay.crt\"\nkey = \"relay.key\"\nroster = \"roster.signed\"\n\
         roster_key = \"d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a\"\n\
         data_dir = \"relay-data\"\n",
    )
    .expect("write");
}

/// Stores KAZ's message `seq` to KGZ, accepted at `accepted_at_ms`, as the relay's writer
/// would (no receipt: nobody has acknowledged it), with a respond-by time if given.
fn accepted(dir: &Path, seq: u64, accepted_at_ms: u64, respond_by_ms: Option<u64>) -> MessageId {
    let pid = |s: &str| ParticipantId::new(s).expect("an id");
    let env = Envelope {
        version: PROTOCOL_VERSION,
        id: MessageId::random(),
        sender: pid("KAZ"),
        seq: Seq(seq),
        audience: Audience::Participants(vec![pid("KGZ")]),
        kind: Kind::Alert,
        precedence: Precedence::Immediate,
        status: Status::Exercise,
        created_at_ms: accepted_at_ms,
        respond_by_ms,
        references: vec![],
        category: None,
        subject: format!("message {seq}"),
        body: String::new(),
    };
    let s = Signed::sign(&env, &SigningKey::from_bytes(&[1; 32])).expect("signs");
    let conn = hotline_store::open(&dir.join("relay-data/relay.db"), false).expect("open");
    conn.execute_batch(&format!(
        "INSERT INTO messages (id, sender, seq, digest, bytes, key, sig, accepted_at_ms, recipients)
         VALUES (X'{}', 'KAZ', {seq}, X'{}', X'{}', X'{}', X'{}', {accepted_at_ms}, 'KGZ')",
        hex(&env.id.0),
        hex(&s.digest().0),
        hex(s.bytes()),
        hex(&s.key().0),
        hex(&s.signature().0),
    ))
    .expect("stored");
    env.id
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `--overdue` keeps the messages with an overdue recipient, and `--limit` says how many of
/// them to show: a timer that pages the Secretariat when `--overdue --json` is not `[]`
/// (OPERATIONS.md 7.3) must be told of an overdue message however many newer ones the
/// relay accepted since. The limit was applied first, to all the period's messages, so an
/// overdue message behind `--limit` newer ones (1,000 by default, an hour of a busy drill)
/// was left out, and the answer was `[]`.
#[test]
fn overdue_messages_are_found_behind_the_limit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    relay(d);
    let now = now_ms();
    let overdue = accepted(d, 1, now - 3_600_000, Some(now - 3_000_000));
    accepted(d, 2, now - 1_800_000, None);
    accepted(d, 3, now - 900_000, None);
    let out = hotline(
        d,
        &[
            "relay",
            "report",
            "-c",
            "relay.toml",
            "--overdue",
            "--limit",
            "1",
            "--json",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let ids: Vec<&str> = shown
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert_eq!(ids, [overdue.to_string()], "{shown:#}");
    // The table's first line counts what it lists, as such: it said "1 message(s) accepted
    // in the last 24 h" of a relay that had accepted three, one of them overdue.
    let out = hotline(d, &["relay", "report", "-c", "relay.toml", "--overdue"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with(
            "1 message(s) with an overdue recipient, of those accepted in the last 24 h"
        ),
        "{stdout}"
    );
}

/// A report cut short by `--limit` says so, in its table and (on standard error) beside its
/// JSON: its first line counted only the messages shown, "1 message(s) accepted in the last
/// 24 h" of a relay that had accepted three, and nothing told the operator that more
/// were left out.
#[test]
fn a_report_cut_by_the_limit_says_so() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    relay(d);
    let now = now_ms();
    for seq in 1..=3 {
        accepted(d, seq, now - 3_600_000 + seq * 60_000, None);
    }
    let out = hotline(d, &["relay", "report", "-c", "relay.toml", "--limit", "1"]);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let first = stdout.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("the newest 1 of the messages accepted in the last 24 h")
            && first.contains("--limit"),
        "{stdout}"
    );
    assert_eq!(
        stdout.lines().count(),
        3,
        "a header, the column names, one message: {stdout}"
    );
    let json = hotline(
        d,
        &[
            "relay",
            "report",
            "-c",
            "relay.toml",
            "--limit",
            "1",
            "--json",
        ],
    );
    assert!(json.status.success(), "{json:?}");
    let shown: serde_json::Value = serde_json::from_slice(&json.stdout).expect("JSON");
    assert_eq!(shown.as_array().map(Vec::len), Some(1), "{shown:#}");
    let stderr = String::from_utf8_lossy(&json.stderr);
    assert!(stderr.contains("--limit"), "{stderr}");
    // Not cut: said as before.
    let all = hotline(d, &["relay", "report", "-c", "relay.toml", "--limit", "3"]);
    let stdout = String::from_utf8_lossy(&all.stdout);
    assert!(
        stdout.starts_with("3 message(s) accepted in the last 24 h"),
        "{stdout}"
    );
    assert!(String::from_utf8_lossy(&all.stderr).is_empty(), "{all:?}");
}

/// The commands that read a relay's store, run by a user who may not look into its data
/// directory (the package's is the service account's alone, mode 0700; OPERATIONS.md says
/// to run them with `sudo -u hotline`), say so, naming the directory: they answered that
/// there was no store there (`no relay store here (has the relay run?)`, `no relay.db or
/// node.db here`), which sends an operator looking for a lost store.
#[test]
fn a_store_out_of_reach_is_not_called_missing() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    relay(d);
    let data = d.join("relay-data");
    let data_arg = data.to_str().expect("UTF-8");
    for args in [
        vec!["relay", "report", "-c", "relay.toml"],
        vec![
            "relay",
            "redeliver",
            "-c",
            "relay.toml",
            "--to",
            "KAZ",
            "--since",
            "2025-01-01T00:00:00Z",
        ],
        vec!["audit", "verify", "--data", data_arg],
        vec![
            "backup",
            "--data",
            data_arg,
            "--out",
            "/nonexistent/copy.db",
        ],
    ] {
        let out = super::operator::hotline_locked_out(d, &data, &args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            !stderr.contains("no relay store here") && !stderr.contains("no relay.db or node.db"),
            "{args:?}: the store is there: {stderr}"
        );
        assert!(
            stderr.contains("relay-data")
                && stderr.contains("Permission denied")
                && stderr.contains("sudo -u hotline"),
            "{args:?}: says why and what to do: {stderr}"
        );
    }
}
