//! Every file a command is pointed at is read with a limit: an endless one (`/dev/zero`) is
//! refused with an error naming it, promptly, instead of being read until memory runs out.

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

/// How long one command may take before the test calls it hung (it reads at most 1 MiB).
const DEADLINE: Duration = Duration::from_secs(60);

/// Runs `hotline ARGS` with `stdin` piped from `input` (if any) and returns its exit code and
/// standard error, killing it and failing if it has not exited by [`DEADLINE`].
fn run(args: &[&str], input: Option<&'static [u8]>) -> (Option<i32>, String) {
    let mut child = super::spawn_grouped(
        Command::new(env!("CARGO_BIN_EXE_hotline"))
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    );
    if let (Some(bytes), Some(mut stdin)) = (input, child.stdin.take()) {
        // Endless input: write until the command stops reading (a broken pipe ends it).
        std::thread::spawn(move || while stdin.write_all(bytes).is_ok() {});
    }
    let out = super::output_within(child, args, DEADLINE, "it reads without a limit");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn refused(args: &[&str], input: Option<&'static [u8]>, names: &str) {
    let (code, stderr) = run(args, input);
    // A service (`relay`, `node`) that cannot start until its configuration is put right
    // exits 78, which its systemd unit does not restart on; every other command exits 1.
    let expected = if args.contains(&"--config") { 78 } else { 1 };
    assert_eq!(code, Some(expected), "hotline {args:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        stderr.contains(names),
        "hotline {args:?} names {names}: {stderr}"
    );
    assert!(
        stderr.contains("allowed") || stderr.contains("larger than"),
        "hotline {args:?} says the input is too large: {stderr}"
    );
}

#[test]
fn service_configurations_are_read_with_a_limit() {
    for args in [
        ["relay", "--config", "/dev/zero"],
        ["node", "--config", "/dev/zero"],
        ["config", "check", "/dev/zero"],
    ] {
        refused(&args, None, "/dev/zero");
    }
}

#[test]
fn scenarios_and_message_bodies_are_read_with_a_limit() {
    refused(&["exercise", "run", "/dev/zero"], None, "/dev/zero");
    refused(
        &[
            "send",
            "--to",
            "KAZ",
            "--subject",
            "s",
            "--body-file",
            "/dev/zero",
        ],
        None,
        "/dev/zero",
    );
    refused(
        &["send", "--to", "KAZ", "--subject", "s", "--body", "-"],
        Some(&[b'a'; 4096]),
        "standard input",
    );
}

#[test]
fn tls_certificates_and_keys_are_read_with_a_limit() {
    refused(
        &[
            "relay",
            "fingerprint",
            "--cert",
            "/dev/zero",
            "--key",
            "/dev/zero",
        ],
        None,
        "/dev/zero",
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("relay.toml");
    std::fs::write(
        &config,
        "cert = \"/dev/zero\"\nkey = \"/dev/zero\"\nroster = \"roster.signed\"\n\
         roster_key = \"d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a\"\n\
         data_dir = \"data\"\n",
    )
    .expect("write");
    let config = config.to_str().expect("UTF-8 temporary path");
    // The relay loads them with the same `RelayIdentity::load`, after its roster.
    refused(&["config", "check", config], None, "/dev/zero");
}
