//! `hotline exercise run` as an operator types it, from a directory of their own.

use std::process::{Command, Stdio};
use std::time::Duration;

/// How long the drill below may take (it passes in about 2 s; 20 s is its scenario's end).
pub(crate) const DEADLINE: Duration = Duration::from_secs(90);

/// A two-node drill that ends as soon as its one inject is acknowledged.
pub(crate) const SCENARIO: &str = r#"
name = "tiny"
description = "one message, acknowledged"
end_s = 20.0
participants = ["SEC", "KAZ"]
[behaviour.default]
ack_after_s = 0.2
[[injects]]
name = "hello"
at_s = 0.0
from = "SEC"
to = ["KAZ"]
subject = "hello"
[[objectives]]
name = "acknowledged"
inject = "hello"
expect = "acknowledged"
"#;

/// Runs `hotline ARGS` in `cwd`; its exit code, standard output and standard error, failing
/// if it has not exited by [`DEADLINE`].
fn run_in(cwd: &std::path::Path, args: &[&str]) -> (Option<i32>, String, String) {
    let child = super::spawn_grouped(
        Command::new(env!("CARGO_BIN_EXE_hotline"))
            .args(args)
            .current_dir(cwd)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let out = super::output_within(child, args, DEADLINE, "the drill did not end");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `--out DIR` relative to the working directory: the relay and nodes, which run inside DIR,
/// must still find their configurations there.
#[test]
fn a_drill_runs_with_a_relative_out_directory() {
    let cwd = tempfile::tempdir().expect("tempdir");
    std::fs::write(cwd.path().join("tiny.toml"), SCENARIO).expect("scenario");
    let (code, stdout, stderr) = run_in(
        cwd.path(),
        &["exercise", "run", "tiny.toml", "--out", "drill", "--json"],
    );
    assert_eq!(code, Some(0), "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("a JSON report");
    assert_eq!(report["passed"], true, "{report}");
    let dir = cwd.path().join("drill");
    assert!(dir.join("report.json").is_file(), "{stderr}");
    assert!(dir.join("relay.toml").is_file(), "{stderr}");
    assert!(
        !dir.join("drill").exists(),
        "nothing is written under drill/drill"
    );
}

/// Like [`SCENARIO`], with a second inject the sender's node refuses (an unknown recipient):
/// a refusal for good, which the scenario's parser cannot see. An objective on it can never be
/// met; its end is far off (600 s), so that a drill waiting for it would show.
pub(crate) const REFUSED: &str = r#"
name = "refused"
end_s = 600.0
participants = ["SEC", "KAZ"]
[behaviour.default]
ack_after_s = 0.2
[[injects]]
name = "hello"
at_s = 0.0
from = "SEC"
to = ["KAZ"]
subject = "hello"
[[injects]]
name = "stray"
at_s = 0.0
from = "SEC"
to = ["KAZ"]
subject = "@over the limit@"
[[objectives]]
name = "acknowledged"
inject = "hello"
expect = "acknowledged"
[[objectives]]
name = "stray acknowledged"
inject = "stray"
expect = "acknowledged"
within_s = 60.0
"#;

/// An inject its node refuses with HTTP 4xx is not sent again until the drill ends: it is
/// said once, the report names the reason, an objective only it could meet fails at once
/// with that reason, and the drill ends when every objective is decided, not at `end_s`.
#[test]
fn an_inject_refused_by_its_node_is_not_retried_and_the_report_says_why() {
    let cwd = tempfile::tempdir().expect("tempdir");
    // A subject over the protocol's limit: the one refusal here the scenario's own checks
    // (roster, audiences, kinds) cannot see before the drill, so its node refuses it.
    let over = "x".repeat(hotline_proto::limits::SUBJECT_BYTES_MAX + 1);
    let scenario = REFUSED.replace("@over the limit@", &over);
    std::fs::write(cwd.path().join("refused.toml"), scenario).expect("scenario");
    let (code, stdout, stderr) = run_in(
        cwd.path(),
        &[
            "exercise",
            "run",
            "refused.toml",
            "--out",
            "drill",
            "--json",
        ],
    );
    assert_eq!(
        code,
        Some(1),
        "an inject not accepted fails the drill: {stderr}"
    );
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("a JSON report");
    let stray = &report["injects"][1];
    assert_eq!(stray["name"], "stray", "{report}");
    assert_eq!(stray["state"], "refused", "{stray}");
    let why = stray["refused"].as_str().unwrap_or_default();
    assert!(
        why.starts_with("refused by SEC's node: ") && why.contains("HTTP 400"),
        "{stray}"
    );
    let accepted = report["invariants"]
        .as_array()
        .and_then(|a| a.iter().find(|i| i["name"] == "every inject accepted"))
        .expect("the invariant");
    assert_eq!(accepted["held"], false, "{accepted}");
    assert!(
        accepted["detail"]
            .as_str()
            .is_some_and(|d| d.contains("1 of 2; \"stray\" refused by SEC's node")),
        "{accepted}"
    );
    assert_eq!(report["objectives"][0]["met"], true, "{report}");
    let failed = &report["objectives"][1];
    assert_eq!(failed["name"], "stray acknowledged", "{report}");
    assert_eq!(failed["met"], false, "{failed}");
    let why = failed["failed"][0].as_str().unwrap_or_default();
    assert!(
        why.starts_with("inject \"stray\" refused by SEC's node: ") && why.contains("HTTP 400"),
        "{failed}"
    );
    assert!(
        stderr
            .contains("objective \"stray acknowledged\" failed: its inject \"stray\" was refused"),
        "said when it happened: {stderr}"
    );
    let said = stderr
        .lines()
        .filter(|l| l.contains("inject \"stray\" from"))
        .count();
    assert_eq!(said, 1, "said once, not retried: {stderr}");
    // Nothing is left to wait for once "hello" is acknowledged: the objective on "stray" is
    // decided, failed, so the drill does not wait for end_s (600 s). It takes about 2 s;
    // the bound leaves room for a loaded machine.
    let wall_s = report["wall_s"].as_f64().unwrap_or(f64::MAX);
    assert!(wall_s < 60.0, "ended after {wall_s} s");
}

/// SEC asks KAZ and KGZ to acknowledge within 2 s; KGZ never does. Every recipient but KGZ
/// is to acknowledge, and every one that does not in time to be escalated: KAZ, which
/// acknowledges at once, has nothing to escalate. Its end is far off (60 s), so that a
/// drill waiting for it would show.
const ESCALATED: &str = r#"
name = "escalated"
end_s = 60.0
participants = ["SEC", "KAZ", "KGZ"]
[behaviour.default]
ack_after_s = 0.2
[behaviour.KGZ]
never_ack = true
[[injects]]
name = "ask"
at_s = 0.0
from = "SEC"
to = ["KAZ", "KGZ"]
subject = "please acknowledge"
respond_within_s = 2.0
[[objectives]]
name = "acknowledged"
inject = "ask"
expect = "acknowledged"
except = ["KGZ"]
[[objectives]]
name = "escalated"
inject = "ask"
expect = "overdue_escalated"
"#;

/// An `overdue_escalated` objective over every recipient holds when the silent one was
/// escalated and the others acknowledged in time, and the drill ends as soon as it does.
/// The report failed KAZ ("overdue false acknowledged true") while the drill's early end
/// counted it as done; and the early end waited for KGZ's acknowledgement, which the
/// "acknowledged" objective leaves out, so the drill ran to its end.
#[test]
fn a_drill_escalating_its_silent_recipient_passes_and_ends_early() {
    let cwd = tempfile::tempdir().expect("tempdir");
    std::fs::write(cwd.path().join("escalated.toml"), ESCALATED).expect("scenario");
    let (code, stdout, stderr) = run_in(
        cwd.path(),
        &[
            "exercise",
            "run",
            "escalated.toml",
            "--out",
            "drill",
            "--json",
        ],
    );
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("a JSON report");
    assert_eq!(report["objectives"][1]["name"], "escalated", "{report}");
    assert_eq!(
        report["objectives"][1]["met"], true,
        "{}",
        report["objectives"]
    );
    assert_eq!(code, Some(0), "{report}\n{stderr}");
    // KGZ goes overdue at 2 s and is escalated at once; a drill waiting for its end would
    // take 60 s. The bound leaves room for a loaded machine.
    let wall_s = report["wall_s"].as_f64().unwrap_or(f64::MAX);
    assert!(wall_s < 45.0, "ended after {wall_s} s");
}
