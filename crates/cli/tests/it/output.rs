//! What the commands do when their standard output or standard error cannot be written: a
//! reader gone (`hotline … | head -1`) ends a command quietly; any other failure (a full
//! disk under `hotline … > FILE`) is an error, exit status 1, never a silent success with
//! the output cut short; and nothing panics.

use std::path::Path;
use std::process::{Command, Output, Stdio};

const KEY: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";

fn hotline(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hotline"));
    cmd.args(args)
        .env("RUST_LOG", "warn")
        .env_remove("HOTLINE_ROSTER_KEY")
        .stdin(Stdio::null());
    cmd
}

fn template() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../config/cica-roster.toml")
        .to_str()
        .expect("UTF-8 path")
        .to_owned()
}

/// A pipe whose reading end is already closed: every write to the other end fails with
/// `EPIPE`, as under `| head -1` once `head` has gone, without a race.
fn reader_gone() -> std::io::PipeWriter {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    writer
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `> /dev/full`: the output cannot be written for want of space. The command fails, saying
/// so, rather than exiting 0 with nothing (or half a report) written. `roster show` prints
/// its table line by line, `exercise list` one line per drill; `--json` one document.
#[test]
fn a_full_disk_under_standard_output_is_an_error() {
    let full = || std::fs::OpenOptions::new().write(true).open("/dev/full");
    let Ok(_) = full() else {
        eprintln!("SKIPPED: no /dev/full here");
        return;
    };
    let template = template();
    for args in [
        &["exercise", "list"][..],
        &["roster", "show", &template][..],
        &["roster", "show", &template, "--json"][..],
    ] {
        let out = hotline(args)
            .stdout(full().expect("/dev/full"))
            .output()
            .expect("runs");
        let stderr = stderr_of(&out);
        assert_eq!(
            out.status.code(),
            Some(1),
            "hotline {args:?} > /dev/full must fail: {stderr}"
        );
        assert!(
            stderr.contains("standard output") && stderr.contains("No space left"),
            "hotline {args:?}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

/// `| head -1` after `head` has gone: a command ends quietly with status 0, as a reader that
/// wants no more output is no failure of the command.
#[test]
fn a_closed_standard_output_ends_a_command_quietly() {
    let template = template();
    for args in [
        &["exercise", "list"][..],
        &["roster", "show", &template][..],
    ] {
        let out = hotline(args)
            .stdout(reader_gone())
            .stderr(Stdio::piped())
            .output()
            .expect("runs");
        let stderr = stderr_of(&out);
        assert_eq!(out.status.code(), Some(0), "hotline {args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

/// `hotline config check FILE 2>&1 | head -1`: the first warning went to standard error and
/// the reader left. The check printed its warnings with `eprintln!`, which panics when it
/// cannot write: exit status 101 (and no message, standard error being gone), which no
/// script reading the documented 0/1 expects. The verdict is the exit status, whatever
/// became of the text.
#[test]
fn a_closed_standard_error_does_not_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = dir.path().join("relay.toml");
    // Every file it names is missing: warnings only, so the check passes (OPERATIONS.md 3).
    std::fs::write(
        &relay,
        format!(
            "listen = \"127.0.0.1:7400\"\ncert = \"relay.crt\"\nkey = \"relay.key\"\n\
             roster = \"roster.signed\"\nroster_key = \"{KEY}\"\ndata_dir = \"data\"\n"
        ),
    )
    .expect("write");
    let relay = relay.to_str().expect("UTF-8 path");
    let out = hotline(&["config", "check", relay])
        .stdout(Stdio::piped())
        .stderr(reader_gone())
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    // With --strict the warnings refuse it: status 1, also with nowhere to say why.
    let out = hotline(&["config", "check", "--strict", relay])
        .stdout(Stdio::piped())
        .stderr(reader_gone())
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    // An error (here a file that is not there) with standard error gone: status 1.
    let missing = dir.path().join("missing.toml");
    let out = hotline(&["config", "check", missing.to_str().expect("UTF-8")])
        .stderr(reader_gone())
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
}

/// A drill's progress goes to standard error (`eprintln!` in the harness), which panicked at
/// its first line when standard error could not be written (`hotline exercise run 2>&1 |
/// head -3`, once `head` had its lines): the harness died with status 101 before the drill
/// began. The drill runs, and its verdict is its exit status and report, whatever became of
/// its progress lines.
#[test]
fn a_drill_runs_with_its_standard_error_gone() {
    let cwd = tempfile::tempdir().expect("tempdir");
    std::fs::write(cwd.path().join("tiny.toml"), super::exercise::SCENARIO).expect("scenario");
    let args = ["exercise", "run", "tiny.toml", "--out", "drill", "--json"];
    let child = super::spawn_grouped(
        hotline(&args)
            .current_dir(cwd.path())
            .stdout(Stdio::piped())
            .stderr(reader_gone()),
    );
    let out = super::output_within(
        child,
        &args,
        super::exercise::DEADLINE,
        "the drill did not end",
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("a JSON report");
    assert_eq!(report["passed"], true, "{report}");
}

/// A drill that failed, its summary's reader gone (`hotline exercise run | head -3` under
/// `set -o pipefail`, or a log shipper that stopped reading): the closed pipe ended the
/// harness with status 0, as for any command whose reader wants no more, and the failed
/// drill passed for a script. A closed standard output keeps the command's own verdict.
#[test]
fn a_failed_drill_is_not_reported_passed_when_its_reader_has_gone() {
    let cwd = tempfile::tempdir().expect("tempdir");
    // A subject over the protocol's limit, which the sender's node refuses: the drill fails.
    let over = "x".repeat(hotline_proto::limits::SUBJECT_BYTES_MAX + 1);
    let scenario = super::exercise::REFUSED.replace("@over the limit@", &over);
    std::fs::write(cwd.path().join("refused.toml"), scenario).expect("scenario");
    for json in [false, true] {
        let out_dir = format!("drill-{json}");
        let mut args = vec!["exercise", "run", "refused.toml", "--out", &out_dir];
        if json {
            args.push("--json");
        }
        let child = super::spawn_grouped(
            hotline(&args)
                .current_dir(cwd.path())
                .stdout(reader_gone())
                .stderr(Stdio::piped()),
        );
        let out = super::output_within(
            child,
            &args,
            super::exercise::DEADLINE,
            "the drill did not end",
        );
        assert_eq!(
            out.status.code(),
            Some(1),
            "hotline {args:?}: a failed drill: {}",
            stderr_of(&out)
        );
    }
}

/// `hotline backup --out-dir DIR --keep N | head -1`, `head` gone before the copy was
/// written: the closed pipe ended the command at its first line, "OK: … written", before
/// it removed the copies beyond the newest N, with status 0. A reader that wants no more
/// output must not cut the work short: the older copies are removed all the same.
#[test]
fn a_closed_standard_output_does_not_stop_a_backup_from_pruning() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = dir.path().join("relay-data");
    std::fs::create_dir(&relay).expect("mkdir");
    hotline_relay::store::redeliver_all_since(&relay, 0, 0).expect("a relay store");
    let copies = dir.path().join("copies");
    std::fs::create_dir(&copies).expect("mkdir");
    let (data, out_dir) = (
        relay.to_str().expect("UTF-8"),
        copies.to_str().expect("UTF-8"),
    );
    let args = [
        "backup",
        "--data",
        data,
        "--out-dir",
        out_dir,
        "--keep",
        "1",
    ];
    let out = hotline(&args).output().expect("runs");
    assert!(out.status.success(), "{out:?}");
    // A second copy beside the first, as an earlier run without --keep leaves one.
    let out = hotline(&["backup", "--data", data, "--out-dir", out_dir])
        .output()
        .expect("runs");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(std::fs::read_dir(&copies).expect("list").count(), 2);
    let out = hotline(&args)
        .stdout(reader_gone())
        .stderr(Stdio::piped())
        .output()
        .expect("runs");
    let stderr = stderr_of(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let left: Vec<_> = std::fs::read_dir(&copies)
        .expect("list")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(left.len(), 1, "only the newest copy is kept: {left:?}");
}

/// An older copy made immutable (`chattr +i`) for as long as it lives, so that removing it
/// fails even for root; made removable again when dropped.
struct Immutable(std::path::PathBuf);

impl Immutable {
    fn set(path: &Path) -> Option<Self> {
        let done = Command::new("chattr")
            .arg("+i")
            .arg(path)
            .stderr(Stdio::null())
            .status();
        done.is_ok_and(|s| s.success())
            .then(|| Self(path.to_owned()))
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").arg(&self.0).status();
    }
}

/// `hotline backup --out-dir DIR --keep N`, an older copy that cannot be removed, and a
/// reader gone before the "OK" line: the closed pipe ended the command there with status 0,
/// the pruning's failure never said, so that a cron job under `pipefail` took the backup
/// directory for pruned. The command fails (status 1), as a drill that failed does.
#[test]
fn a_backup_whose_pruning_failed_is_not_reported_passed_when_its_reader_has_gone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = dir.path().join("relay-data");
    std::fs::create_dir(&relay).expect("mkdir");
    hotline_relay::store::redeliver_all_since(&relay, 0, 0).expect("a relay store");
    let copies = dir.path().join("copies");
    std::fs::create_dir(&copies).expect("mkdir");
    let (data, out_dir) = (
        relay.to_str().expect("UTF-8"),
        copies.to_str().expect("UTF-8"),
    );
    let out = hotline(&["backup", "--data", data, "--out-dir", out_dir])
        .output()
        .expect("runs");
    assert!(out.status.success(), "{out:?}");
    let old = std::fs::read_dir(&copies)
        .expect("list")
        .next()
        .expect("the first copy")
        .expect("entry")
        .path();
    let Some(_held) = Immutable::set(&old) else {
        eprintln!("SKIPPED: chattr +i is not possible here (not root, or not ext4)");
        return;
    };
    let args = [
        "backup",
        "--data",
        data,
        "--out-dir",
        out_dir,
        "--keep",
        "1",
    ];
    // With the reader there, the copy is reported written and the pruning failed.
    let out = hotline(&args).output().expect("runs");
    let stderr = stderr_of(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("OK: "),
        "{out:?}"
    );
    assert!(stderr.contains("removing"), "{stderr}");
    // With the reader gone, the pruning's failure is still the command's.
    let out = hotline(&args)
        .stdout(reader_gone())
        .stderr(Stdio::piped())
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
}
