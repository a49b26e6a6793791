//! The drill harness (`hotline exercise run`) as a process: what it leaves behind.

use std::io::BufRead as _;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use hotline_exercise::process::hotline_bin;

/// A two-node drill that runs ten minutes (its inject is due only at five): still running
/// when the test signals it.
const LONG: &str = r#"
name = "interrupted"
end_s = 600.0
participants = ["SEC", "KAZ"]
[[injects]]
name = "late"
at_s = 300.0
from = "SEC"
to = ["KAZ"]
subject = "s"
[[objectives]]
name = "delivered"
inject = "late"
expect = "delivered"
"#;

/// The live processes whose parent is `pid`, with their names (`/proc/*/stat`; a zombie,
/// exited and waiting to be reaped, is not live).
fn children_of(pid: u32) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // `pid (comm) state ppid …`; comm may hold spaces, so split after its last ')'.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = stat[open + 1..close].to_owned();
        let mut rest = stat[close + 1..].split_whitespace();
        let state = rest.next().unwrap_or("");
        let ppid = rest.next().and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(pid) && state != "Z" {
            out.push((child, comm));
        }
    }
    out
}

/// Whether process `pid` is alive (there, and not a zombie).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rfind(')')
            .and_then(|c| s[c + 1..].split_whitespace().next())
            .is_some_and(|state| state != "Z")
    })
}

/// A drill stopped by a signal (SIGTERM from a service manager or `timeout`, SIGINT sent to
/// it alone, SIGHUP when its terminal goes away) stops the relay and the nodes it started,
/// and says it was interrupted. It died by the signal's default action, leaving them
/// running with no one to stop them (the nodes ignore SIGHUP).
#[test]
fn an_interrupted_drill_leaves_no_process_running() {
    let bin = hotline_bin().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let scenario = tmp.path().join("long.toml");
    std::fs::write(&scenario, LONG).unwrap();
    for sig in ["TERM", "INT", "HUP"] {
        let out = tmp.path().join(format!("drill-{sig}"));
        let mut harness = Command::new(&bin)
            .args(["exercise", "run"])
            .arg(&scenario)
            .arg("--out")
            .arg(&out)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = harness.id();
        let (tx, lines) = mpsc::channel::<String>();
        let stderr = harness.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut seen = Vec::new();
        loop {
            match lines.recv_timeout(Duration::from_secs(60)) {
                Ok(l) if l.contains("relay and 2 nodes up") => break,
                Ok(l) => seen.push(l),
                Err(e) => panic!("the drill did not start ({e}):\n{}", seen.join("\n")),
            }
        }
        let started = children_of(pid);
        assert_eq!(
            started.iter().filter(|(_, c)| c == "hotline").count(),
            3,
            "the relay and two nodes: {started:?}"
        );

        let st = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string())
            .status()
            .unwrap();
        assert!(st.success());
        let (done_tx, done) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = done_tx.send(harness.wait());
        });
        let status = done.recv_timeout(Duration::from_secs(60));
        // Whatever was found, stop what is still running before any assertion can fail:
        // these are the test's own processes, by their ids.
        let left: Vec<&(u32, String)> = started.iter().filter(|(p, _)| alive(*p)).collect();
        for (p, _) in &left {
            let _ = Command::new("kill").arg("-9").arg(p.to_string()).status();
        }
        let status = status.expect("the harness exits").unwrap();
        assert!(
            left.is_empty(),
            "{sig}: still running after the harness exited ({status}): {left:?}"
        );
        assert!(!status.success(), "{sig}: {status}");
        // Its last lines, up to the end of its standard error.
        let rest: Vec<String> =
            std::iter::from_fn(|| lines.recv_timeout(Duration::from_secs(10)).ok()).collect();
        assert!(
            rest.iter().any(|l| l.contains("interrupted")),
            "{sig}: {rest:?}"
        );
    }
}
