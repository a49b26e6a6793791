//! End-to-end tests of the `hotline` binary: the one integration-test binary of this crate.

mod config;
mod endless;
mod exercise;
mod operator;
mod output;
mod report;
mod restore;
mod roster;
mod usage;

/// Waits for `child`, a `hotline` run with `args`, to exit: its output. If it has not exited
/// within `deadline` it is killed, with its process group, and the test fails, saying
/// `hung` (what a hang means). `child` leads its own process group ([`spawn_grouped`]), so
/// what it started (a drill's relay and nodes) is killed with it, not left running.
fn output_within(
    child: std::process::Child,
    args: &[&str],
    deadline: std::time::Duration,
    hung: &str,
) -> std::process::Output {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(deadline) {
        Ok(out) => out.expect("wait"),
        Err(_) => {
            let _ = std::process::Command::new("kill")
                .args(["-9", "--", &format!("-{pid}")])
                .status();
            panic!("hotline {args:?} still running after {deadline:?}: {hung}");
        }
    }
}

/// Spawns `cmd` as the leader of a process group of its own, for [`output_within`].
fn spawn_grouped(cmd: &mut std::process::Command) -> std::process::Child {
    use std::os::unix::process::CommandExt as _;
    cmd.process_group(0)
        .spawn()
        .expect("the hotline binary runs")
}
