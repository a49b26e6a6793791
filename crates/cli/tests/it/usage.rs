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
