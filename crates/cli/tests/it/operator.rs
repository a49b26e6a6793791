//! The operator commands (`hotline send`, `inbox`…) through the real binary, before any node
//! is asked: how they find the node's configuration and token, and what they say when they
//! cannot.

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::Path;
use std::process::{Command, Output};

/// Runs `hotline args…` in `cwd` as a user who may not read `locked` (a directory): as root
/// (CI), as `nobody` through `setpriv`, with `locked` mode 0700; otherwise as this user, with
/// `locked` mode 0.
pub(super) fn hotline_locked_out(cwd: &Path, locked: &Path, args: &[&str]) -> Output {
    let root = std::fs::metadata(cwd).expect("cwd").uid() == 0;
    let mode = if root { 0o700 } else { 0 };
    std::fs::set_permissions(locked, std::fs::Permissions::from_mode(mode)).expect("chmod");
    let bin = env!("CARGO_BIN_EXE_hotline");
    let mut cmd = if root {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", bin]);
        c
    } else {
        Command::new(bin)
    };
    let out = cmd
        .args(args)
        .current_dir(cwd)
        .env("RUST_LOG", "warn")
        .env_remove("HOTLINE_NODE_CONFIG")
        .env_remove("HOTLINE_API")
        .env_remove("HOTLINE_TOKEN_FILE")
        .output()
        .expect("the hotline binary runs");
    std::fs::set_permissions(locked, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    out
}

#[test]
fn a_node_configuration_out_of_reach_is_not_called_missing() {
    // The package's layout: /etc/hotline root:hotline 0750 holding node.toml and api.token,
    // and a duty officer not (yet) in group hotline.
    let dir = tempfile::tempdir().expect("temporary directory");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let etc = dir.path().join("etc");
    let work = dir.path().join("work");
    std::fs::create_dir(&etc).expect("mkdir");
    std::fs::create_dir(&work).expect("mkdir");
    let config = etc.join("node.toml");
    std::fs::write(&config, "participant = \"KAZ\"\n").expect("write");
    // Found as ./node.toml, as /etc/hotline/node.toml would be: there, but out of reach.
    std::os::unix::fs::symlink(&config, work.join("node.toml")).expect("symlink");

    for args in [
        vec!["inbox"],
        vec!["inbox", "--node-config", config.to_str().expect("UTF-8")],
        vec![
            "inbox",
            "--api",
            "127.0.0.1:9",
            "--token-file",
            etc.join("api.token").to_str().expect("UTF-8"),
        ],
    ] {
        let out = hotline_locked_out(&work, &etc, &args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            !stderr.contains("no node configuration found"),
            "{args:?}: the file is there: {stderr}"
        );
        assert!(
            stderr.contains("Permission denied")
                && stderr.contains("group hotline")
                && stderr.contains("OPERATIONS.md 2.9"),
            "{args:?}: says why and what to do: {stderr}"
        );
    }

    // Nothing there at all is still "not found".
    std::fs::remove_file(work.join("node.toml")).expect("rm");
    let out = hotline_locked_out(&work, &etc, &["inbox"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !Path::new("/etc/hotline/node.toml").exists() {
        assert!(stderr.contains("no node configuration found"), "{stderr}");
    }
}

/// A token file that holds no token (another file named by mistake) is refused by name
/// before anything is sent, and its content is not printed: an HTTP client refusing it as a
/// header would print it in full, and the file may hold a secret.
#[test]
fn a_token_file_that_is_no_token_is_refused_without_its_content() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let wrong = dir.path().join("shadow");
    std::fs::write(
        &wrong,
        "root:$y$j9T$secret-hash:19700:0:99999:7:::\ndaemon:*:19700\n",
    )
    .expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_hotline"))
        .args(["inbox", "--api", "127.0.0.1:9", "--token-file"])
        .arg(&wrong)
        .env("RUST_LOG", "warn")
        .output()
        .expect("the hotline binary runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("not an API token") && stderr.contains("shadow"),
        "names the file and what is wrong: {stderr}"
    );
    assert!(
        !stderr.contains("secret-hash") && !stderr.contains("daemon"),
        "the file's content is not shown: {stderr}"
    );
}
