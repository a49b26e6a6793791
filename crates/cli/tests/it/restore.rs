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
    let current = data.join("relay.db");
    let ours = user_version(&current);
    let backup = hotline(
        dir.path(),
        &["backup", "--data", "relay-data", "--out", "newer.db"],
    );
    assert!(backup.status.success(), "{backup:?}");
    hotline_store::open(&dir.path().join("newer.db"), false)
        .expect("open the copy")
        .execute_batch(&format!("PRAGMA user_version = {}", ours + 95))
        .expect("a newer schema");

    for extra in [&[][..], &["--redeliver-hours", "0"][..]] {
        let mut args = vec!["restore", "--from", "newer.db", "--data", "relay-data"];
        args.extend_from_slice(extra);
        let out = hotline(dir.path(), &args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {out:?}");
        assert!(
            stderr.contains("newer.db")
                && stderr.contains(&format!(
                    "schema version {} is newer than this relay's ({ours})",
                    ours + 95
                )),
            "{args:?}: {stderr}"
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).is_empty(),
            "{args:?}: nothing restored: {out:?}"
        );
        let mut left: Vec<String> = std::fs::read_dir(&data)
            .expect("ls")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|n| n != "LOCK")
            .collect();
        left.sort();
        assert_eq!(
            left,
            ["relay.db"],
            "{args:?}: nothing set aside or left over"
        );
        assert_eq!(user_version(&current), ours, "{args:?}: the store in place");
    }
}
