//! Exit statuses for a wrong command line: 2, before anything is done (the man page's EXIT
//! STATUS), which the systemd units do not restart on (`RestartPreventExitStatus=2 78`).

use std::process::{Command, Stdio};

/// `hotline relay` without `--config` (an `ExecStart=` drop-in that lost it) is an argument
/// missing: status 2 with clap's usage, not 1, which systemd takes for a failure worth five
/// more starts. `relay init` and the other subcommands still need no `--config`.
#[test]
fn the_relay_without_its_configuration_is_a_usage_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(env!("CARGO_BIN_EXE_hotline"))
        .arg("relay")
        .current_dir(dir.path())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--config"), "{stderr}");
    // The subcommands are unaffected: `relay init` writes its pair with no --config.
    let out = Command::new(env!("CARGO_BIN_EXE_hotline"))
        .args(["relay", "init"])
        .current_dir(dir.path())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("runs");
    assert!(out.status.success(), "{out:?}");
    assert!(dir.path().join("relay.crt").is_file());
}

/// `exercise run --speedup` takes a finite number above 0. `0` and `nan` were taken for
/// 0.01, silently: the drill ran a hundred times slower than the scenario, which looks like
/// a hang (a drill of an hour takes four days); `inf` played every inject at once. Each is
/// refused as a malformed argument (status 2) before anything starts.
#[test]
fn a_drill_speedup_that_is_no_speed_is_refused() {
    let cwd = tempfile::tempdir().expect("tempdir");
    std::fs::write(cwd.path().join("tiny.toml"), super::exercise::SCENARIO).expect("scenario");
    for speedup in ["0", "nan", "inf", "-0"] {
        let flag = format!("--speedup={speedup}");
        let args = ["exercise", "run", "tiny.toml", "--out", "drill", &flag];
        let child = super::spawn_grouped(
            Command::new(env!("CARGO_BIN_EXE_hotline"))
                .args(args)
                .current_dir(cwd.path())
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped()),
        );
        let out = super::output_within(
            child,
            &args,
            std::time::Duration::from_secs(30),
            "a drill was started",
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "--speedup {speedup}: {stderr}");
        assert!(stderr.contains("--speedup"), "{stderr}");
        assert!(!cwd.path().join("drill").exists(), "nothing was started");
    }
    // A speedup above 0 that takes the scenario below its slowest time compression (a
    // scenario second lasting more than 1,000 s) is refused by the harness, naming both.
    let args = [
        "exercise",
        "run",
        "tiny.toml",
        "--out",
        "drill",
        "--speedup",
        "0.0000001",
    ];
    let out = Command::new(env!("CARGO_BIN_EXE_hotline"))
        .args(args)
        .current_dir(cwd.path())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("time_compression"), "{stderr}");
    assert!(!cwd.path().join("drill").exists(), "nothing was started");
}

/// `--api` (and `HOTLINE_API`) that is no address, empty above all (`--api "$API"` with
/// `API` unset, `HOTLINE_API=` exported empty), is a malformed argument: status 2 naming the
/// option, before any node is called. It was tried as an address, and the command failed
/// with "no node answering at http://", which sends an operator to look at a node that
/// runs. A well-formed address is still tried.
#[test]
fn an_api_address_that_is_no_address_is_a_usage_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token = dir.path().join("api.token");
    std::fs::write(&token, "0123456789abcdef0123456789abcdef\n").expect("token");
    let token = token.to_str().expect("UTF-8");
    let hotline = |args: &[&str], env_api: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_hotline"));
        cmd.args(args)
            .args(["--token-file", token])
            .current_dir(dir.path())
            .env("RUST_LOG", "warn")
            .env_remove("HOTLINE_NODE_CONFIG")
            .env_remove("HOTLINE_API")
            .env_remove("HOTLINE_TOKEN_FILE")
            .stdin(Stdio::null());
        if let Some(v) = env_api {
            cmd.env("HOTLINE_API", v);
        }
        cmd.output().expect("runs")
    };
    for command in [
        &["inbox"][..],
        &["status", "0123456789abcdef0123456789abcdef"],
        &["node-status"],
        &["watch"],
    ] {
        for bad in ["", "http://", "127.0.0.1", "127.0.0.1:", "localhost:http"] {
            let mut args = command.to_vec();
            args.extend(["--api", bad]);
            let out = hotline(&args, None);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
            assert!(
                stderr.contains("--api") && stderr.contains("HOST:PORT"),
                "{args:?}: names the option and what it takes: {stderr}"
            );
            assert!(!stderr.contains("no node answering"), "{args:?}: {stderr}");
        }
        // The same from the environment.
        let out = hotline(command, Some(""));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "HOTLINE_API=: {stderr}");
        assert!(stderr.contains("--api"), "{stderr}");
    }
    // A well-formed address with nothing behind it is still tried, and found not answering.
    for good in ["127.0.0.1:9", "http://127.0.0.1:9/"] {
        let out = hotline(&["inbox", "--api", good], None);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{good}: {stderr}");
        assert!(stderr.contains("no node answering"), "{good}: {stderr}");
    }
}

/// `exercise run` and `exercise live` without `--out` make their directory in the
/// temporary directory, `$TMPDIR` where it is set; their help said `/tmp`, so an operator
/// with `TMPDIR` set looked for a drill's logs where they were not.
#[test]
fn the_drill_directory_default_is_named_as_it_is() {
    for sub in ["run", "live"] {
        let out = Command::new(env!("CARGO_BIN_EXE_hotline"))
            .args(["exercise", sub, "--help"])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .output()
            .expect("runs");
        assert!(out.status.success(), "{out:?}");
        let help = String::from_utf8_lossy(&out.stdout);
        // The `--out` item: its line, and those under it up to the next option.
        let rest = help
            .split("--out <OUT>")
            .nth(1)
            .expect("--out is described");
        let out_flag: String = rest
            .lines()
            .enumerate()
            .take_while(|(i, l)| *i == 0 || !l.trim_start().starts_with('-'))
            .map(|(_, l)| l)
            .collect();
        assert!(
            out_flag.contains("$TMPDIR"),
            "exercise {sub} --help: {out_flag}"
        );
    }
}

/// An argument that names nothing of its kind (a message id that is not 32 hex digits, a
/// digest that is not 64, a participant id or a time that is none) is a malformed argument:
/// status 2 naming it, before anything is done (no node is called, no configuration read),
/// as the man page's EXIT STATUS says. It was status 1, which reads as the command having
/// run and failed.
#[test]
fn an_argument_that_names_nothing_of_its_kind_is_a_usage_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token = dir.path().join("api.token");
    std::fs::write(&token, "0123456789abcdef0123456789abcdef\n").expect("token");
    let token = token.to_str().expect("UTF-8");
    // No node listens there, and no relay.toml is in the directory: a command that got that
    // far would fail with status 1 saying so.
    let api = ["--api", "127.0.0.1:9", "--token-file", token];
    let node = |args: &[&'static str]| -> Vec<&str> { [args, &api[..]].concat() };
    for (args, named) in [
        (node(&["show", "../status"]), "ID"),
        (node(&["status", "a/b"]), "ID"),
        (
            node(&["ack", "../../v1/status", "--officer", "Duty officer"]),
            "ID",
        ),
        (node(&["reply", "?limit=1", "--body", "x"]), "ID"),
        (
            node(&["inbox", "--answers-to", "../status"]),
            "--answers-to",
        ),
        (node(&["inbox", "--before", "zz"]), "--before"),
        (node(&["sent", "--before", "1234"]), "--before"),
        (
            node(&["inbox", "--quarantined", "--before", "0123"]),
            "--before",
        ),
        (
            vec!["relay", "report", "-c", "relay.toml", "--id", "not-an-id"],
            "--id",
        ),
        (
            vec![
                "relay",
                "redeliver",
                "-c",
                "relay.toml",
                "--to",
                "../KAZ",
                "--since",
                "2025-01-01T00:00:00Z",
            ],
            "--to",
        ),
        (
            vec![
                "relay",
                "redeliver",
                "-c",
                "relay.toml",
                "--to",
                "KAZ",
                "--since",
                "yesterday",
            ],
            "--since",
        ),
    ] {
        assert_usage_error(dir.path(), &args, named, &["relay.toml", "127.0.0.1:9"]);
    }
}

/// A malformed argument is refused as one (status 2, naming it) before the command does
/// anything, the node's configuration and token read included: `hotline show ../status`
/// with no node configuration here said that none was found (status 1), as `ack`, `status`
/// and `reply` did (and `reply --body -` read standard input first), so the mistake in the
/// command line was told only once the configuration was mended. `discard` refused a digest
/// that is not hex digits with status 1, after reading the configuration, and took one of
/// more than 64 digits for a start of one, looking through the whole quarantine for it.
/// `keygen --id` with a name no key file may have was status 1.
#[test]
fn a_malformed_argument_is_refused_before_the_nodes_configuration_is_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Nothing is there: a command that read it would fail with status 1 naming it.
    let cfg = ["--node-config", "missing-node.toml"];
    let node = |args: &[&'static str]| -> Vec<String> {
        [args, &cfg[..]]
            .concat()
            .iter()
            .map(|s| s.to_string())
            .collect()
    };
    let long_digest = "a".repeat(65);
    let keys = dir.path().join("keys");
    for (args, named) in [
        (node(&["show", "../status"]), "ID"),
        (node(&["status", "a/b"]), "ID"),
        (node(&["ack", "nope", "--officer", "Duty officer"]), "ID"),
        (node(&["reply", "?limit=1", "--body", "-"]), "ID"),
        (
            node(&["discard", "xyz", "--officer", "Duty officer"]),
            "DIGEST",
        ),
        (
            node(&["discard", "", "--officer", "Duty officer"]),
            "DIGEST",
        ),
        (
            [
                node(&["discard", "--officer", "Duty officer"]),
                vec![long_digest.clone()],
            ]
            .concat(),
            "DIGEST",
        ),
        (
            vec![
                "keygen".to_owned(),
                "--id".to_owned(),
                "../KAZ".to_owned(),
                "--out".to_owned(),
                keys.to_str().expect("UTF-8").to_owned(),
            ],
            "--id",
        ),
    ] {
        assert_usage_error(dir.path(), &args, named, &["missing-node.toml"]);
    }
    assert!(
        !keys.exists(),
        "keygen made its directory for a name it refused"
    );
}

/// Runs `hotline ARGS` in `dir`, no node named by the environment, and asserts that it was
/// refused as a malformed argument before it did anything: status 2, `named` named, nothing
/// on standard output, and none of `untouched` (what a command that went on would have read
/// and named in its error) on standard error.
fn assert_usage_error<S>(dir: &std::path::Path, args: &[S], named: &str, untouched: &[&str])
where
    S: AsRef<std::ffi::OsStr> + std::fmt::Debug,
{
    let out = Command::new(env!("CARGO_BIN_EXE_hotline"))
        .args(args)
        .current_dir(dir)
        .env("RUST_LOG", "warn")
        .env_remove("HOTLINE_NODE_CONFIG")
        .env_remove("HOTLINE_API")
        .env_remove("HOTLINE_TOKEN_FILE")
        .stdin(Stdio::null())
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
    assert!(
        stderr.contains(&format!("error: {named}: ")),
        "{args:?}: names the argument: {stderr}"
    );
    for what in untouched {
        assert!(
            !stderr.contains(what),
            "{args:?}: refused before {what} was read: {stderr}"
        );
    }
    assert!(out.stdout.is_empty(), "{args:?}");
}
