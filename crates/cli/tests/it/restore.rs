//! `hotline restore` through the real binary: what it refuses before it puts anything in
//! place.

use std::path::Path;
use std::process::{Command, Output};

fn hotline(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hotline"))
        .args(args)
        .current_dir(cwd)
        .env("RUST_LOG", "warn")
        .output()
        .expect("the hotline binary runs")
}

fn user_version(db: &Path) -> i64 {
    hotline_store::open(db, false)
        .expect("open")
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .expect("user_version")
}

/// Makes a backup of the store in `dir/data` as `dir/newer.db` and raises the copy's schema
/// version `by` above `ours`, as a newer release would have written it.
fn newer_copy(dir: &Path, data: &str, ours: i64, by: i64) {
    let backup = hotline(dir, &["backup", "--data", data, "--out", "newer.db"]);
    assert!(backup.status.success(), "{backup:?}");
    hotline_store::open(&dir.join("newer.db"), false)
        .expect("open the copy")
        .execute_batch(&format!("PRAGMA user_version = {}", ours + by))
        .expect("a newer schema");
}

/// Restores `dir/newer.db` into `dir/data` with `extra` arguments, and checks that it is
/// refused as a newer `kind`'s store at `found`, which `ours` cannot open, not as damaged;
/// and that `store`, the store in place, is neither set aside nor replaced.
fn refused_as_newer(dir: &Path, data: &str, extra: &[&str], kind: &str, found: i64, ours: i64) {
    let mut args = vec!["restore", "--from", "newer.db", "--data", data];
    args.extend_from_slice(extra);
    let listing = || {
        let mut names: Vec<String> = std::fs::read_dir(dir.join(data))
            .expect("ls")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|n| n != "LOCK")
            .collect();
        names.sort();
        names
    };
    // The store's file, and the empty log files a backup's reader may leave beside it.
    let before = listing();
    let out = hotline(dir, &args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {out:?}");
    assert!(
        stderr.contains(&format!(
            "newer.db was written by a newer version of the {kind} (store schema version \
             {found}; this {kind} supports schema versions up to {ours}): the file is not \
             damaged"
        )) && stderr.contains("restore a backup made by this one")
            && !stderr.contains("corrupt"),
        "{args:?}: {stderr}"
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).is_empty(),
        "{args:?}: nothing restored: {out:?}"
    );
    let store = format!("{kind}.db");
    assert!(before.contains(&store), "{before:?}");
    assert_eq!(
        listing(),
        before,
        "{args:?}: nothing set aside or left over"
    );
    let current = dir.join(data).join(&store);
    assert_eq!(user_version(&current), ours, "{args:?}: the store in place");
}

/// A copy written by a newer relay (a backup taken after an upgrade, restored after a
/// rollback: OPERATIONS.md 8.3) is refused, naming it, and the store in place, which this
/// relay can open, is neither set aside nor replaced: with the default redelivery (which
/// used to fail only after the swap) and without it (which used to succeed).
#[test]
fn a_relay_copy_from_a_newer_schema_is_refused_and_the_store_in_place_is_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("relay-data");
    std::fs::create_dir(&data).expect("mkdir");
    // An empty relay store, as a relay's first start leaves one.
    hotline_relay::store::redeliver_all_since(&data, 0, 0).expect("a relay store");
    let ours = user_version(&data.join("relay.db"));
    newer_copy(dir.path(), "relay-data", ours, 95);
    for extra in [&[][..], &["--redeliver-hours", "0"][..]] {
        refused_as_newer(dir.path(), "relay-data", extra, "relay", ours + 95, ours);
    }
}

/// Likewise a node's copy written by a newer node: a node store records its schema version
/// too, and `hotline restore` refuses a newer one before it moves anything.
#[test]
fn a_node_copy_from_a_newer_schema_is_refused_and_the_store_in_place_is_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("node-data");
    std::fs::create_dir(&data).expect("mkdir");
    // An empty node store, as a node's first start leaves one.
    drop(hotline_node::store::NodeStore::open(&data).expect("a node store"));
    let ours = user_version(&data.join("node.db"));
    assert_eq!(ours, hotline_node::store::SCHEMA_VERSION);
    newer_copy(dir.path(), "node-data", ours, 98);
    refused_as_newer(dir.path(), "node-data", &[], "node", ours + 98, ours);
}

/// `hotline audit verify` on a store from a newer release says so, for a relay's and a
/// node's, rather than report a journal or records that do not verify.
/// A copy that is no store (a configuration given by mistake) or a directory is refused
/// naming it: they were refused as `storage: file is not a database` and `cannot open
/// database …: disk I/O error`, the first naming no file, before anything is touched.
#[test]
fn a_copy_that_is_no_store_is_refused_by_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    std::fs::create_dir(d.join("data")).expect("mkdir");
    std::fs::write(d.join("relay.toml"), "listen = \"127.0.0.1:7400\"\n").expect("write");
    std::fs::create_dir(d.join("copies")).expect("mkdir");
    for (from, why) in [
        ("relay.toml", "relay.toml: cannot read the copy"),
        ("copies", "copies: a directory; give the copy's file"),
    ] {
        let out = hotline(d, &["restore", "--from", from, "--data", "data"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{from}: {out:?}");
        assert!(
            stderr.starts_with(&format!("error: {why}")) && !stderr.contains("disk I/O"),
            "{from}: {stderr}"
        );
        let left = std::fs::read_dir(d.join("data")).expect("ls").count();
        assert_eq!(left, 0, "{from}: nothing is put in the data directory");
    }
}

#[test]
fn audit_verify_names_a_store_from_a_newer_schema() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = dir.path().join("relay-data");
    let node = dir.path().join("node-data");
    std::fs::create_dir(&relay).expect("mkdir");
    std::fs::create_dir(&node).expect("mkdir");
    hotline_relay::store::redeliver_all_since(&relay, 0, 0).expect("a relay store");
    drop(hotline_node::store::NodeStore::open(&node).expect("a node store"));
    for (data, file, kind) in [
        ("relay-data", "relay.db", "relay"),
        ("node-data", "node.db", "node"),
    ] {
        let verified = hotline(dir.path(), &["audit", "verify", "--data", data]);
        assert!(verified.status.success(), "{verified:?}");
        let db = dir.path().join(data).join(file);
        hotline_store::open(&db, false)
            .expect("open")
            .execute_batch(&format!("PRAGMA user_version = {}", user_version(&db) + 7))
            .expect("a newer schema");
        let out = hotline(dir.path(), &["audit", "verify", "--data", data]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        assert!(
            stderr.contains(&format!(
                "{file} was written by a newer version of the {kind}"
            )),
            "{stderr}"
        );
    }
}

/// `hotline relay redeliver --to` names a participant of the relay's roster: a mistyped id
/// is refused, naming the roster, where it used to be answered "nothing to deliver again"
/// with exit status 0, as if the restored node were owed nothing. A participant on the
/// roster that is owed nothing is still told so.
#[test]
fn relay_redeliver_refuses_a_participant_not_on_the_roster() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let template = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/cica-roster.toml");
    for args in [
        &["keygen", "--id", "ROSTER", "--out", "keys"][..],
        &[
            "roster",
            "create",
            "--from",
            template.to_str().expect("UTF-8 path"),
            "--keys",
            "keys",
            "--generate",
            "--out",
            "draft.toml",
        ][..],
        &[
            "roster",
            "sign",
            "--roster",
            "draft.toml",
            "--key",
            "keys/ROSTER.key",
            "--out",
            "roster.signed",
        ][..],
    ] {
        let out = hotline(d, args);
        assert!(out.status.success(), "{args:?}: {out:?}");
    }
    std::fs::write(
        d.join("relay.toml"),
        "cert = \"relay.crt\"\nkey = \"relay.key\"\nroster = \"roster.signed\"\n\
         roster_key = \"keys/ROSTER.pub\"\ndata_dir = \"relay-data\"\n",
    )
    .expect("write relay.toml");
    let data = d.join("relay-data");
    std::fs::create_dir(&data).expect("mkdir");
    hotline_relay::store::redeliver_all_since(&data, 0, 0).expect("a relay store");
    let redeliver = |to: &str| {
        let args = ["relay", "redeliver", "--config", "relay.toml", "--to", to];
        hotline(
            d,
            &[&args[..], &["--since", "2025-01-01T03:00:00Z"]].concat(),
        )
    };

    let out = redeliver("KZA");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        stderr.contains("--to KZA: not on the relay's roster (roster.signed, version 1)"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty(), "{out:?}");

    let out = redeliver("KAZ");
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("nothing to deliver again"),
        "{out:?}"
    );
}

/// `hotline backup` and `hotline audit verify` given a file that is no relay's or node's
/// store (an empty file, another program's database) refuse it as such, naming it, and
/// leave it as it was: they answered `storage: no such table: journal`, and `backup`, which
/// opens its source for writing, first turned an empty file into a 4 KiB SQLite database.
#[test]
fn backup_and_audit_refuse_a_file_that_is_no_store_and_leave_it_as_it_is() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    std::fs::write(d.join("empty.db"), b"").expect("write");
    hotline_store::open(&d.join("other.db"), true)
        .expect("a database")
        .execute_batch("CREATE TABLE t (v INTEGER);")
        .expect("a table");
    for file in ["empty.db", "other.db"] {
        let before = std::fs::read(d.join(file)).expect("read");
        for args in [
            vec!["backup", "--data", file, "--out", "copy.db"],
            vec!["audit", "verify", "--data", file],
        ] {
            let out = hotline(d, &args);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{args:?}: {out:?}");
            assert!(
                stderr.contains(&format!("{file}: neither a relay's nor a node's store")),
                "{args:?}: {stderr}"
            );
            assert_eq!(
                std::fs::read(d.join(file)).expect("read"),
                before,
                "{args:?}: left as it was"
            );
            assert!(!d.join("copy.db").exists(), "{args:?}: no copy");
        }
    }
}

/// `hotline audit verify --data FILE` given a file that is no database at all (the
/// relay's configuration, typed for its data directory) said `database relay.toml is
/// corrupt`, which sends an operator to restore a store that is whole. It is refused as no
/// store, as `backup` and `restore` refuse it; a store found in a data directory that
/// SQLite cannot read is still reported corrupt.
#[test]
fn audit_verify_does_not_call_a_file_that_is_no_database_corrupt() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    std::fs::write(d.join("relay.toml"), "listen = \"127.0.0.1:7400\"\n").expect("write");
    let out = hotline(d, &["audit", "verify", "--data", "relay.toml"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        stderr.contains("relay.toml: neither a relay's nor a node's store"),
        "{stderr}"
    );
    assert!(!stderr.contains("corrupt"), "{stderr}");
    // The same bytes as a data directory's store: that store is damaged.
    std::fs::create_dir(d.join("data")).expect("mkdir");
    std::fs::copy(d.join("relay.toml"), d.join("data/relay.db")).expect("copy");
    let out = hotline(d, &["audit", "verify", "--data", "data"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(stderr.contains("corrupt"), "{stderr}");
}

/// `hotline backup --out-dir DIR` with a DIR that does not exist (a mistyped mount point,
/// a backup disk not mounted) named a hidden file the operator never asked for, `DIR/.relay-
/// TIME.db.partial-PID-0: No such file or directory`. It says that DIR does not exist, and
/// makes nothing.
#[test]
fn a_backup_into_a_directory_that_does_not_exist_names_the_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = dir.path().join("relay-data");
    std::fs::create_dir(&relay).expect("mkdir");
    hotline_relay::store::redeliver_all_since(&relay, 0, 0).expect("a relay store");
    let out = hotline(
        dir.path(),
        &["backup", "--data", "relay-data", "--out-dir", "no such dir"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        stderr.contains("no such dir: no such directory"),
        "{stderr}"
    );
    assert!(!stderr.contains(".partial"), "{stderr}");
    assert!(!dir.path().join("no such dir").exists());
}

/// A restore refused because the service runs says what to do: stop it first, by name.
#[test]
fn a_restore_beside_a_running_service_says_to_stop_it_first() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = dir.path().join("relay-data");
    std::fs::create_dir(&relay).expect("mkdir");
    hotline_relay::store::redeliver_all_since(&relay, 0, 0).expect("a relay store");
    let backup = hotline(
        dir.path(),
        &["backup", "--data", "relay-data", "--out", "copy.db"],
    );
    assert!(backup.status.success(), "{backup:?}");
    // The running relay's claim.
    let claim = hotline_store::lock_dir(&relay).expect("claimed");
    let out = hotline(
        dir.path(),
        &["restore", "--from", "copy.db", "--data", "relay-data"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        stderr.contains("a relay or node already runs on this data directory")
            && stderr.contains("stop it first (sudo systemctl stop hotline-relay)"),
        "{stderr}"
    );
    drop(claim);
}

/// A restore cut short leaves its marker, which keeps the relay from starting; the same
/// restore run again finishes, removes it, and keeps the store it found in place.
#[test]
fn a_restore_run_again_finishes_one_cut_short() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = dir.path().join("relay-data");
    std::fs::create_dir(&relay).expect("mkdir");
    hotline_relay::store::redeliver_all_since(&relay, 0, 0).expect("a relay store");
    let backup = hotline(
        dir.path(),
        &["backup", "--data", "relay-data", "--out", "copy.db"],
    );
    assert!(backup.status.success(), "{backup:?}");
    // As a restore killed after it wrote the marker leaves the directory.
    let marker = relay.join(hotline_store::RESTORE_MARKER);
    std::fs::write(&marker, b"").expect("marker");
    let refused = hotline_relay::store::redeliver_all_since(&relay, 0, 0)
        .expect_err("refused while the marker is there");
    assert!(
        matches!(refused, hotline_store::StoreError::RestoreUnfinished { .. }),
        "{refused:?}"
    );
    let out = hotline(
        dir.path(),
        &["restore", "--from", "copy.db", "--data", "relay-data"],
    );
    assert!(out.status.success(), "{out:?}");
    assert!(!marker.exists(), "the marker is removed");
    let kept = std::fs::read_dir(&relay)
        .expect("ls")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("relay-replaced-") && n.ends_with(".db"))
        .count();
    assert_eq!(kept, 1, "the store found in place is kept");
    hotline_relay::store::redeliver_all_since(&relay, 0, 0).expect("the relay's store opens");
}

/// A relay's restore moves the recipients' queues back (`--redeliver-hours`) before it is
/// finished, under its marker: a restore whose rewind fails (here on a cursor the relay
/// cannot read, which the copy's checks do not look at) leaves `RESTORE-UNFINISHED`, so the
/// relay refuses to start, and says to run it again. The marker was removed, and OK
/// printed, before the rewind: a crash or a failure there left the copy in place without
/// its queues moved back, and nothing to tell the operator.
#[test]
fn a_relay_restore_is_unfinished_until_its_queues_are_moved_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = dir.path().join("relay-data");
    std::fs::create_dir(&relay).expect("mkdir");
    hotline_relay::store::redeliver_all_since(&relay, 0, 0).expect("a relay store");
    hotline_store::open(&relay.join("relay.db"), false)
        .expect("open")
        .execute_batch("INSERT INTO cursors VALUES ('KAZ', 'x');")
        .expect("a cursor the rewind cannot read");
    let backup = hotline(
        dir.path(),
        &["backup", "--data", "relay-data", "--out", "copy.db"],
    );
    assert!(backup.status.success(), "{backup:?}");
    let out = hotline(
        dir.path(),
        &["restore", "--from", "copy.db", "--data", "relay-data"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let marker = relay.join(hotline_store::RESTORE_MARKER);
    assert!(marker.exists(), "the restore is unfinished: {out:?}");
    assert!(
        stderr.contains("moving the recipients' queues back")
            && stderr.contains("the restore did not finish")
            && stderr.contains("run it again"),
        "{stderr}"
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("OK:"),
        "no OK for an unfinished restore: {out:?}"
    );
    let refused = hotline_relay::store::redeliver_all_since(&relay, 0, 0)
        .expect_err("the relay's start refused");
    assert!(
        matches!(refused, hotline_store::StoreError::RestoreUnfinished { .. }),
        "{refused:?}"
    );
}

/// A named pipe given as a store or a copy (`--data FIFO` to `audit verify` and `backup`,
/// `--from FIFO` to `restore`) is refused as no regular file, naming it: `audit verify`
/// opened it to read its first bytes, and `backup` and `restore` had SQLite open it, and
/// each waited for ever for a writer. Each command is waited for with a time limit.
#[test]
fn a_named_pipe_given_as_a_store_or_a_copy_is_refused_not_waited_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let made = Command::new("mkfifo")
        .arg(d.join("relay.db"))
        .status()
        .expect("mkfifo runs");
    assert!(made.success(), "mkfifo");
    std::fs::create_dir(d.join("data")).expect("mkdir");
    for args in [
        &["audit", "verify", "--data", "relay.db"][..],
        &["backup", "--data", "relay.db", "--out", "copy.db"][..],
        &["restore", "--from", "relay.db", "--data", "data"][..],
    ] {
        let child = super::spawn_grouped(
            Command::new(env!("CARGO_BIN_EXE_hotline"))
                .args(args)
                .current_dir(d)
                .env("RUST_LOG", "warn")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped()),
        );
        let out = super::output_within(
            child,
            args,
            std::time::Duration::from_secs(30),
            "still waiting on the named pipe",
        );
        let (status, stderr) = (out.status, String::from_utf8_lossy(&out.stderr));
        assert_eq!(status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains("relay.db: not a regular file"),
            "{args:?}: {stderr}"
        );
        assert!(!d.join("copy.db").exists(), "{args:?}");
    }
}
