//! Hooks: operator commands run with an event as JSON on standard input.
//!
//! A hook runs in its own task with a timeout; a failing, slow or missing hook is logged and
//! never delays delivery. At most `HOOKS_CONCURRENT_MAX` run at once; more wait their turn,
//! in the order they were fired, up to `HOOKS_WAITING_MAX`; beyond that an event's hook is
//! skipped with an error instead of piling up without end. A hook runs in a process group of
//! its own, killed whole at the timeout: what a hook's script started (a `curl` that hangs)
//! is killed with it, not left running past the limit. What a hook records as it ends is
//! counted in the node's `background` while it runs, so that the node's shutdown waits for
//! it; the hook itself is not, so a hook still running does not hold up the shutdown. A hook
//! still waiting its turn when the node's stop begins never starts, and what it would have
//! recorded as it ended is left undone, for the next start (as for a hook the stop kills).

use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::sync::{watch, Semaphore};
use tracing::{error, info, warn};

use crate::events::Event;
use crate::limits::{HOOKS_CONCURRENT_MAX, HOOKS_WAITING_MAX};

/// Runs hook commands.
#[derive(Clone)]
pub struct HookRunner {
    /// Hooks running.
    slots: Arc<Semaphore>,
    /// Hooks running or waiting to.
    places: Arc<Semaphore>,
    timeout: Duration,
    /// The node's count of work that may still hold it (`NodeState::background`), which its
    /// shutdown waits on: a hook's record as it ends is counted there.
    background: Arc<watch::Sender<usize>>,
    /// The node's stop signal (`NodeHandle::shutdown`; its sender gone counts as a stop, as
    /// for the node's tasks): a hook not started by then never starts.
    stopping: watch::Receiver<bool>,
}

impl HookRunner {
    /// A runner with the given per-hook timeout, counting what a hook records as it ends
    /// in `background` (`NodeState::background`), which starts no hook once `stopping`
    /// says so (the node's stop signal).
    pub fn new(
        timeout_ms: u64,
        background: Arc<watch::Sender<usize>>,
        stopping: watch::Receiver<bool>,
    ) -> Self {
        Self::with_limits(
            timeout_ms,
            background,
            stopping,
            HOOKS_CONCURRENT_MAX,
            HOOKS_WAITING_MAX,
        )
    }

    /// As [`Self::new`], with at most `running` hooks at once and `waiting` more waiting
    /// their turn (a test's smaller limits).
    fn with_limits(
        timeout_ms: u64,
        background: Arc<watch::Sender<usize>>,
        stopping: watch::Receiver<bool>,
        running: usize,
        waiting: usize,
    ) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(running)),
            places: Arc::new(Semaphore::new(running + waiting)),
            timeout: Duration::from_millis(timeout_ms),
            background,
            stopping,
        }
    }

    /// Starts `cmd` (if configured) with `event` on its standard input, or queues it until
    /// a running hook ends; returns at once.
    pub fn fire(&self, name: &'static str, cmd: Option<&Vec<String>>, event: &Event) {
        self.fire_then(name, cmd, event, || ());
    }

    /// As [`Self::fire`], and calls `ended` once the node is done with the hook: when it
    /// has ended (succeeded, failed, could not start, or was killed at its timeout), or at
    /// once if none is configured or it is skipped (logged). A hook that outlives the node
    /// (killed with it, or at its timeout) leaves what `ended` records undone, for the next
    /// start: `ended` holds the node weakly until it runs, and finds it gone. `ended` may
    /// run before this returns, so the caller must not hold a lock `ended` takes; after a
    /// hook, it runs on tokio's blocking pool, as it may wait on the store, counted in the
    /// node's `background` from before it may take the node until it has let go of it, so
    /// that a node that says it stopped is not held by it. A hook not started when the
    /// node's stop begins (waiting its turn) never starts, and `ended` is then not called:
    /// what it records is left undone for the next start, as for a hook the stop kills.
    pub fn fire_then(
        &self,
        name: &'static str,
        cmd: Option<&Vec<String>>,
        event: &Event,
        ended: impl FnOnce() + Send + 'static,
    ) {
        let Some(cmd) = cmd.cloned() else {
            return ended();
        };
        let Ok(place) = self.places.clone().try_acquire_owned() else {
            error!(
                hook = name,
                running = HOOKS_CONCURRENT_MAX,
                waiting = HOOKS_WAITING_MAX,
                "too many hooks running and waiting: skipping this one"
            );
            return ended();
        };
        let json = match serde_json::to_vec(event) {
            Ok(j) => j,
            Err(e) => {
                warn!(hook = name, error = %e, "cannot encode event for hook");
                return ended();
            }
        };
        let timeout = self.timeout;
        let slots = self.slots.clone();
        let background = self.background.clone();
        let mut stopping = self.stopping.clone();
        tokio::spawn(async move {
            let _place = place;
            let slot = tokio::select! {
                biased;
                // The node is stopping (or its handle is gone): a hook waiting its turn
                // would start once a running one ends, after the node said it stopped.
                _ = stopping.wait_for(|stop| *stop) => None,
                // Tokio's semaphore is fair: hooks run in the order they were fired.
                slot = slots.acquire_owned() => slot.ok(),
            };
            let Some(_slot) = slot else {
                return not_started(name);
            };
            let Some(result) = run(&cmd, &json, timeout, &stopping).await else {
                return not_started(name);
            };
            // Counted before `ended` can take the node (it holds it weakly until then), and
            // counted out only once it has let go of it, even if this task is dropped
            // meanwhile: otherwise a hook ending as the node stopped recorded in the store
            // (waiting on its lock, or the disk) after the node said it stopped.
            let counted = crate::Background::counted(&background);
            // Before the line that says so: once it is logged, `ended` has run. Off the
            // runtime: it records in the store (`crate::off_runtime`).
            let recorded = crate::off_runtime(move || {
                ended();
                drop(counted);
            });
            if let Err(e) = recorded.await {
                error!(hook = name, error = %e, "recording what the hook was for failed; it is announced again at the next start");
            }
            match result {
                Ok(status) if status.success() => info!(hook = name, "hook ran"),
                Ok(status) => warn!(hook = name, %status, "hook failed"),
                Err(e) => warn!(hook = name, error = %e, "hook could not run"),
            }
        });
    }
}

/// Logs a hook that the node's stop kept from starting: what `ended` records is left undone,
/// for the next start.
fn not_started(name: &'static str) {
    warn!(
        hook = name,
        "the node is stopping: hook not started (on_message and on_overdue: the arrival or escalation it was for is announced again at the next start; on_unreachable and on_roster_changed are not fired again for what has passed)"
    );
}

/// Runs `cmd`, or `None` if the node's stop has begun (`stopping`) before it could start.
async fn run(
    cmd: &[String],
    stdin: &[u8],
    timeout: Duration,
    stopping: &watch::Receiver<bool>,
) -> Option<std::io::Result<std::process::ExitStatus>> {
    let Some((program, args)) = cmd.split_first() else {
        return Some(Err(std::io::Error::other("empty hook command")));
    };
    let started = {
        // Held while the process starts: the stop's `send` waits for it, so once the stop
        // has begun no hook starts (a stop that begins after this finds the hook running,
        // let run as any other). A start is a fork and an exec, not a wait on the hook.
        let stop = stopping.borrow();
        if *stop || stopping.has_changed().is_err() {
            return None;
        }
        tokio::process::Command::new(program)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            // Its own group (of which it is the leader), so that what it starts can be
            // killed with it.
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
    };
    Some(wait(started, stdin, timeout).await)
}

/// Feeds `stdin` to a hook `started`, and waits for it to end, at most `timeout`.
async fn wait(
    started: std::io::Result<tokio::process::Child>,
    stdin: &[u8],
    timeout: Duration,
) -> std::io::Result<std::process::ExitStatus> {
    let mut child = started?;
    // Kills the group if the hook is still running when this is dropped: at its timeout, or
    // when the node stops while it runs (the task is dropped with the runtime).
    let mut group = Group(
        child
            .id()
            .and_then(|id| rustix::process::Pid::from_raw(id as i32)),
    );
    if let Some(mut input) = child.stdin.take() {
        // A hook that does not read its input is not an error (an event is far smaller than
        // a pipe holds, so this does not wait for it).
        let _ = input.write_all(stdin).await;
        let _ = input.write_all(b"\n").await;
    }
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(r) => {
            // Ended (and reaped): its group id may be reused, and what it left running in
            // the background on purpose is its own business.
            group.0 = None;
            r
        }
        Err(_) => {
            // Before the leader is reaped, so that the group id is still its own.
            drop(group);
            let _ = child.kill().await;
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("killed after {timeout:?}"),
            ))
        }
    }
}

/// A running hook's process group, killed (SIGKILL) when dropped.
struct Group(Option<rustix::process::Pid>);

impl Drop for Group {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            // Gone already (it and all it started ended) is fine.
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// A stop signal that never says stop.
    fn running() -> watch::Receiver<bool> {
        let (tx, rx) = watch::channel(false);
        std::mem::forget(tx);
        rx
    }

    /// Waits (bounded) until every hook fired has been dealt with: run, or not.
    async fn idle(runner: &HookRunner, places: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        while runner.places.available_permits() < places {
            assert!(
                tokio::time::Instant::now() < deadline,
                "hooks still running or waiting"
            );
            tick.tick().await;
        }
    }

    /// A hook waiting for its turn when the node's stop begins never starts, and what it
    /// records as it ends is left undone (for the next start, as for a hook the node's end
    /// killed); the hook running then is let run, and what it records as it ends is done.
    /// Before, the waiting hook started once the running one ended, after the node had
    /// said it stopped: a library user (a test, an in-process drill) saw a hook process
    /// start, and its record touch the store, after the stop.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hook_waiting_its_turn_when_the_node_stops_never_starts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (out, go) = (dir.path().join("out"), dir.path().join("go"));
        // The first hook waits on this FIFO until the test writes a line to it.
        let made = std::process::Command::new("mkfifo")
            .arg(&go)
            .status()
            .expect("mkfifo");
        assert!(made.success(), "mkfifo: {made}");
        let slow = vec![
            "sh".to_owned(),
            "-c".to_owned(),
            format!(
                "echo one >> '{}'; read go < '{}'",
                out.display(),
                go.display()
            ),
        ];
        let quick = vec![
            "sh".to_owned(),
            "-c".to_owned(),
            format!("echo two >> '{}'", out.display()),
        ];
        let background: Arc<watch::Sender<usize>> = Default::default();
        let (stop, stopping) = watch::channel(false);
        let runner = HookRunner::with_limits(30_000, background.clone(), stopping, 1, 4);
        let (first_tx, first) = tokio::sync::oneshot::channel();
        runner.fire_then(
            "slow",
            Some(&slow),
            &Event::Unreachable { for_ms: 1 },
            move || {
                let _ = first_tx.send(());
            },
        );
        // Running: it holds the only slot.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        while !std::fs::read_to_string(&out)
            .unwrap_or_default()
            .contains("one")
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the first hook never ran"
            );
            tick.tick().await;
        }
        let second = Arc::new(std::sync::atomic::AtomicBool::new(false));
        runner.fire_then("quick", Some(&quick), &Event::Unreachable { for_ms: 1 }, {
            let second = second.clone();
            move || second.store(true, std::sync::atomic::Ordering::SeqCst)
        });
        stop.send_replace(true);
        // Opening the FIFO waits for the hook to have it open: on a thread of its own.
        let told = tokio::task::spawn_blocking(move || std::fs::write(&go, b"go\n"));
        tokio::time::timeout(Duration::from_secs(20), told)
            .await
            .expect("the first hook read its go")
            .expect("joined")
            .expect("written");
        tokio::time::timeout(Duration::from_secs(20), first)
            .await
            .expect("the running hook ended")
            .expect("and recorded as it ended");
        idle(&runner, 5).await;
        let ran = std::fs::read_to_string(&out).unwrap();
        assert_eq!(ran, "one\n", "a hook started after the stop");
        assert!(
            !second.load(std::sync::atomic::Ordering::SeqCst),
            "what the hook not run was for was recorded as done"
        );
        assert_eq!(*background.borrow(), 0);
    }

    /// A burst of events past the hooks that may run at once is not dropped: each hook waits
    /// its turn. (Before, the ones past `HOOKS_CONCURRENT_MAX` were skipped: in a crisis, a
    /// burst of arrivals paged nobody for some of them.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hooks_past_those_running_wait_their_turn() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("out");
        let cmd = vec![
            "sh".to_owned(),
            "-c".to_owned(),
            format!("echo ran >> '{}'", out.display()),
        ];
        // Fired at once, one after another: each takes its place as it is fired, so the
        // ones past HOOKS_CONCURRENT_MAX find every slot taken.
        let runner = HookRunner::new(30_000, Default::default(), running());
        let fired = HOOKS_CONCURRENT_MAX + 4;
        for _ in 0..fired {
            runner.fire("test", Some(&cmd), &Event::Unreachable { for_ms: 1 });
        }
        // Wait (bounded) for every hook to have run: their only trace is the file.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        let ran = loop {
            tick.tick().await;
            let ran = std::fs::read_to_string(&out)
                .unwrap_or_default()
                .lines()
                .count();
            if ran >= fired || tokio::time::Instant::now() >= deadline {
                break ran;
            }
        };
        assert_eq!(ran, fired, "every hook fired ran");
    }

    /// A hook killed at its timeout takes what it started with it: a script whose command
    /// hangs (a `curl` to a gateway that does not answer) is killed with that command.
    /// Before, only the script was: its command ran on, orphaned, and every hook that timed
    /// out left one more behind, past `HOOKS_CONCURRENT_MAX`, holding whatever it held.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hook_killed_at_its_timeout_takes_what_it_started_with_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pid_file = dir.path().join("pid");
        let cmd = vec![
            "sh".to_owned(),
            "-c".to_owned(),
            format!("sleep 600 & echo $! > '{}'; wait", pid_file.display()),
        ];
        let runner = HookRunner::new(1_000, Default::default(), running());
        let (ended_tx, ended) = tokio::sync::oneshot::channel();
        runner.fire_then(
            "test",
            Some(&cmd),
            &Event::Unreachable { for_ms: 1 },
            move || {
                let _ = ended_tx.send(());
            },
        );
        tokio::time::timeout(Duration::from_secs(20), ended)
            .await
            .expect("the hook is killed at its timeout")
            .expect("ended is called");
        let pid = std::fs::read_to_string(&pid_file).expect("the hook started its command");
        let stat = format!("/proc/{}/stat", pid.trim());
        // Gone, or dead and not yet reaped (a zombie, `Z`, under an init that does not reap):
        // SIGKILL takes effect once the process is scheduled, so wait for it, bounded.
        let alive = || {
            std::fs::read_to_string(&stat).is_ok_and(|s| {
                let state = s
                    .rsplit(')')
                    .next()
                    .and_then(|r| r.split_whitespace().next());
                state != Some("Z") && state != Some("X")
            })
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        while alive() && tokio::time::Instant::now() < deadline {
            tick.tick().await;
        }
        assert!(!alive(), "the hook's command {} still runs", pid.trim());
    }

    /// What a hook's `ended` records (in the store, which may wait on its lock or the disk)
    /// leaves the runtime's threads free: it ran in the hook's task, on a runtime thread,
    /// which it held while it waited (on this test's runtime, of one thread, every other
    /// task and timer with it).
    #[tokio::test]
    async fn what_a_hook_records_as_it_ends_leaves_the_runtime_free() {
        const WAIT: Duration = Duration::from_secs(10);
        // Stands for the store's lock, held by a plain thread.
        let store = Arc::new(std::sync::Mutex::new(()));
        let held = crate::Held::new(WAIT, {
            let store = store.clone();
            move |hold| {
                let _held = store.lock().unwrap();
                hold();
            }
        });
        let (entered_tx, mut entered) = tokio::sync::mpsc::unbounded_channel();
        let (recorded_tx, recorded) = tokio::sync::oneshot::channel();
        HookRunner::new(30_000, Default::default(), running()).fire_then(
            "test",
            Some(&vec!["true".to_owned()]),
            &Event::Unreachable { for_ms: 1 },
            move || {
                entered_tx.send(()).unwrap();
                let _held = store.lock().unwrap();
                recorded_tx.send(()).unwrap();
            },
        );
        // The hook has ended and its record waits for the lock: a timer still fires.
        let waiting = tokio::time::timeout(WAIT, async {
            entered.recv().await.unwrap();
            tokio::time::sleep(Duration::from_millis(1)).await;
        })
        .await;
        assert!(!held.release(), "the runtime waited for the lock");
        assert!(waiting.is_ok(), "the hook never ended");
        tokio::time::timeout(WAIT, recorded)
            .await
            .expect("recorded once the lock is free")
            .unwrap();
    }
}
