//! Child processes of the real `hotline` binary, with their logs as events.
//!
//! Standard error is read line by line by a thread, kept, copied to a file, and announced on
//! a watch channel, so callers wait for log lines with a timeout instead of sleeping.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context as _};

/// How a process the harness started ended, as [`Proc::stop`] (or [`Proc::exit`]) finds it.
/// Non-exhaustive: a new way of ending may be told apart later.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Exit {
    /// It exited with this status code (0: cleanly).
    Code(i32),
    /// A signal the harness did not send ended it: a crash (SIGSEGV, SIGABRT, …), or a
    /// signal it did not catch.
    Signal(i32),
    /// The harness killed it with SIGKILL ([`Proc::kill9`]) before it was stopped: a fault
    /// the scenario asked for.
    Killed,
    /// It had not exited within the time allowed after SIGTERM, and was killed.
    Hung,
    /// SIGTERM could not be sent to it (the `errno`, as `std::io::Error` reads it), so it
    /// was killed at once, with no grace period.
    TermRefused(i32),
    /// It was sent SIGKILL but had not gone [`KILL_WAIT`] later ([`KillError::NotGone`]):
    /// stuck in the kernel (uninterruptible sleep, a hung disk).
    NotGone,
}

impl Exit {
    /// Whether this is how a process the harness ran should end: a clean exit (code 0), or
    /// the SIGKILL of a fault.
    pub fn clean(self) -> bool {
        matches!(self, Self::Code(0) | Self::Killed)
    }

    /// The exit code, if it exited (rather than being ended by a signal).
    pub fn code(self) -> Option<i32> {
        match self {
            Self::Code(c) => Some(c),
            _ => None,
        }
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Code(c) => write!(f, "exit code {c}"),
            Self::Signal(s) => write!(f, "ended by signal {s}{}", signal_name(*s)),
            Self::Killed => f.write_str("killed by a fault (SIGKILL)"),
            Self::Hung => f.write_str("killed after the grace period (it did not exit on SIGTERM)"),
            Self::NotGone => write!(
                f,
                "still there {} s after SIGKILL (stuck in the kernel: a hung disk?)",
                KILL_WAIT.as_secs()
            ),
            Self::TermRefused(e) => write!(
                f,
                "SIGTERM could not be sent ({}), so it was killed at once, with no grace period",
                std::io::Error::from_raw_os_error(*e)
            ),
        }
    }
}

/// How long [`Proc::kill9`] waits for a child it sent SIGKILL to be gone. SIGKILL ends a
/// process at once, unless it is in uninterruptible sleep (waiting on a hung disk or a dead
/// network file system), which it may never leave: the wait used to have no limit, and hung
/// the drill (a fault, or the drop of a handle) with it.
pub const KILL_WAIT: Duration = Duration::from_secs(10);

/// Why [`Proc::kill9`] could not see its child gone.
#[derive(Debug)]
#[non_exhaustive]
pub enum KillError {
    /// The child had not exited `waited` after SIGKILL. It is left unreaped, so its pid is
    /// still its own; a later [`Proc::exit`], [`Proc::stop`] or [`Proc::kill9`] finds it
    /// gone once it is.
    NotGone {
        /// Its process id.
        pid: u32,
        /// How long `kill9` waited.
        waited: Duration,
    },
    /// Waiting for it failed.
    Wait {
        /// Its process id.
        pid: u32,
        /// The error `waitid(2)` or `wait(2)` gave.
        source: std::io::Error,
    },
}

impl std::fmt::Display for KillError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotGone { pid, waited } => write!(
                f,
                "process {pid} was still there {waited:?} after SIGKILL (stuck in the kernel: a hung disk?)"
            ),
            Self::Wait { pid, source } => {
                write!(f, "waiting for process {pid} after SIGKILL: {source}")
            }
        }
    }
}

impl std::error::Error for KillError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::NotGone { .. } => None,
            Self::Wait { source, .. } => Some(source),
        }
    }
}

/// ` (SIGSEGV)` and the like, for the signals a crash or a stray signal is likely to be.
fn signal_name(sig: i32) -> &'static str {
    match sig {
        1 => " (SIGHUP)",
        2 => " (SIGINT)",
        4 => " (SIGILL)",
        6 => " (SIGABRT)",
        7 => " (SIGBUS)",
        8 => " (SIGFPE)",
        9 => " (SIGKILL)",
        11 => " (SIGSEGV)",
        13 => " (SIGPIPE)",
        15 => " (SIGTERM)",
        _ => "",
    }
}

/// A running `hotline` process, killed (SIGKILL) when dropped.
pub struct Proc {
    child: Child,
    /// Whether `child` has been waited for. Once it has, its pid is free for the kernel to
    /// give to another process, so it is never signalled again (`kill` by pid would reach
    /// that process, or fail and make a clean exit look like a failure).
    reaped: bool,
    /// Whether the harness sent it SIGKILL ([`Proc::kill9`]): a SIGKILL death is then the
    /// harness's doing, not the process's.
    killed: bool,
    /// Whether it was killed because it did not exit within the time allowed after SIGTERM.
    hung: bool,
    /// Why SIGTERM could not be sent to it (an `errno`), if it could not: it was then
    /// killed at once.
    term_refused: Option<i32>,
    /// Tests only: the error every signal [`Proc::signal`] and [`Proc::stop`] send fails
    /// with, as if the kernel had refused it (the only way to see a refusal from a test: a
    /// child of ours, not yet reaped, can always be signalled). `kill9` is not affected.
    #[cfg(test)]
    refuse_signals: Option<rustix::io::Errno>,
    /// Tests only: `kill9` sends no SIGKILL, as if the kernel had taken it but the process
    /// did not die (a process in uninterruptible sleep, on a hung disk, dies only once it
    /// leaves it).
    #[cfg(test)]
    kill_ignored: bool,
    /// How long [`Proc::kill9`] waits for the child to be gone: [`KILL_WAIT`], shorter in
    /// tests.
    kill_wait: Duration,
    lines: Arc<Mutex<Vec<String>>>,
    seen: tokio::sync::watch::Receiver<usize>,
    /// Told when the reader has read standard error to its end.
    read_all: std::sync::mpsc::Receiver<()>,
    /// Where its standard error is copied.
    pub log_path: PathBuf,
}

/// How long [`Proc::wait_exit`] waits, after the exit, for the last lines of standard
/// error: the pipe ends at once unless a process the child started still holds it.
const LAST_LINES_WAIT: Duration = Duration::from_secs(2);

/// Waits until `child` has exited, without reaping it: its pid stays its own (a zombie)
/// until `Child::wait` reaps it.
fn wait_unreaped(child: &Child) -> std::io::Result<()> {
    wait_unreaped_pid(rustix::process::Pid::from_child(child))
}

/// [`wait_unreaped`], by the child's pid (for a thread that does not hold the `Child`).
fn wait_unreaped_pid(pid: rustix::process::Pid) -> std::io::Result<()> {
    use rustix::process::{waitid, WaitId, WaitIdOptions};
    loop {
        match waitid(
            WaitId::Pid(pid),
            WaitIdOptions::EXITED | WaitIdOptions::NOWAIT,
        ) {
            Err(rustix::io::Errno::INTR) => continue,
            other => return other.map(|_| ()).map_err(Into::into),
        }
    }
}

/// The names [`Proc::signal`] takes, as `kill -l` gives them.
const SIGNAL_NAMES: [&str; 9] = [
    "TERM", "HUP", "INT", "QUIT", "KILL", "USR1", "USR2", "STOP", "CONT",
];

/// The signal named `name` (one of [`SIGNAL_NAMES`]).
fn signal_named(name: &str) -> Option<rustix::process::Signal> {
    use rustix::process::Signal;
    Some(match name {
        "TERM" => Signal::TERM,
        "HUP" => Signal::HUP,
        "INT" => Signal::INT,
        "QUIT" => Signal::QUIT,
        "KILL" => Signal::KILL,
        "USR1" => Signal::USR1,
        "USR2" => Signal::USR2,
        "STOP" => Signal::STOP,
        "CONT" => Signal::CONT,
        _ => return None,
    })
}

/// Locks `m`, taking the value even if a holder panicked.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Proc {
    /// Starts `bin args…` in `dir`, logging to `dir/log_name`, with standard input on
    /// `/dev/null`.
    pub fn spawn(bin: &Path, args: &[&str], dir: &Path, log_name: &str) -> anyhow::Result<Self> {
        Self::spawn_with(bin, args, dir, log_name, false)
    }

    /// Like [`Proc::spawn`], with a pipe on the child's standard input whose other end only
    /// this handle holds (the harness's pipes are close-on-exec, so no other child inherits
    /// it) and never writes to. It closes when the handle is dropped or the harness's
    /// process ends, however it ends (even by SIGKILL), and a `hotline relay` or `hotline
    /// node` given `--stop-when-stdin-closes` then shuts down: the drill's processes never
    /// outlive the harness.
    pub fn spawn_tethered(
        bin: &Path,
        args: &[&str],
        dir: &Path,
        log_name: &str,
    ) -> anyhow::Result<Self> {
        Self::spawn_with(bin, args, dir, log_name, true)
    }

    fn spawn_with(
        bin: &Path,
        args: &[&str],
        dir: &Path,
        log_name: &str,
        tethered: bool,
    ) -> anyhow::Result<Self> {
        use std::io::{BufRead, Write};
        let log_path = dir.join(log_name);
        // Before the child: a log refused leaves no process running unwatched.
        let mut file = open_log(&log_path)?;
        let mut child = Command::new(bin)
            .args(args)
            .current_dir(dir)
            .env(
                "RUST_LOG",
                std::env::var("HOTLINE_CHILD_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env_remove("HOTLINE_NODE_CONFIG")
            // With a tether, `child.stdin` keeps the pipe's end open for as long as the
            // handle lives (`Child::wait` closes it, once the child is gone).
            .stdin(if tethered {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let stderr = child.stderr.take().context("child standard error")?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, seen) = tokio::sync::watch::channel(0usize);
        let l = lines.clone();
        let (done, read_all) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _done = done;
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let _ = writeln!(file, "{line}");
                let n = {
                    let mut v = lock(&l);
                    v.push(line);
                    v.len()
                };
                tx.send_replace(n);
            }
        });
        Ok(Self {
            child,
            reaped: false,
            killed: false,
            hung: false,
            term_refused: None,
            #[cfg(test)]
            refuse_signals: None,
            #[cfg(test)]
            kill_ignored: false,
            kill_wait: KILL_WAIT,
            lines,
            seen,
            read_all,
            log_path,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, then reap, waiting at most [`KILL_WAIT`] for the child to be gone: one
    /// stuck in the kernel is left unreaped, with an error and a log line. (`Child::kill`
    /// sends nothing to a child already reaped.)
    pub fn kill9(&mut self) -> Result<(), KillError> {
        if self.reaped {
            return Ok(());
        }
        self.killed = true;
        #[cfg(test)]
        let skip = self.kill_ignored;
        #[cfg(not(test))]
        let skip = false;
        if !skip {
            let _ = self.child.kill();
        }
        let pid = self.child.id();
        // Waited for without reaping, by a thread, so that the wait can end at a time
        // limit: a child that never goes keeps that thread in `waitid` (until it goes, or
        // the harness ends), not the harness.
        let (tx, rx) = std::sync::mpsc::channel();
        let child_pid = rustix::process::Pid::from_child(&self.child);
        std::thread::spawn(move || {
            let _ = tx.send(wait_unreaped_pid(child_pid));
        });
        let gone = match rx.recv_timeout(self.kill_wait) {
            Ok(Ok(())) => self.child.wait().map(|st| {
                self.reap(Some(st));
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => {
                let e = KillError::NotGone {
                    pid,
                    waited: self.kill_wait,
                };
                tracing::warn!(
                    pid,
                    waited_ms = self.kill_wait.as_millis() as u64,
                    "still there after SIGKILL; left unreaped"
                );
                return Err(e);
            }
        };
        gone.map_err(|source| {
            tracing::warn!(pid, error = %source, "waiting for the child after SIGKILL failed");
            KillError::Wait { pid, source }
        })
    }

    /// Notes that the child has been reaped if `status` says it has exited; returns it.
    fn reap(
        &mut self,
        status: Option<std::process::ExitStatus>,
    ) -> Option<std::process::ExitStatus> {
        self.reaped |= status.is_some();
        status
    }

    /// Sends a signal by name (`TERM`, `HUP`…), through the pid, and only while the child
    /// has not been reaped: the pid of a reaped child may be another process's by now. An
    /// exited child not yet reaped keeps its pid (a zombie), so signalling it is harmless.
    pub fn signal(&self, sig: &str) -> anyhow::Result<()> {
        let Some(signal) = signal_named(sig) else {
            bail!(
                "no signal named {sig:?}: one of {}",
                SIGNAL_NAMES.join(", ")
            );
        };
        if self.reaped {
            bail!(
                "process {} has exited and been reaped: not sent {sig}",
                self.child.id()
            );
        }
        self.send(signal)
            .with_context(|| format!("sending SIG{sig} to process {}", self.child.id()))
    }

    /// Sends `sig` to the child with `kill(2)`, directly: no `kill` process is started, so
    /// nothing widens the moment between the caller's "has it exited?" and the signal, and
    /// no failure to start a program reads as the signal's. The caller makes sure it has
    /// not been reaped.
    fn send(&self, sig: rustix::process::Signal) -> std::io::Result<()> {
        #[cfg(test)]
        if let Some(e) = self.refuse_signals {
            return Err(e.into());
        }
        rustix::process::kill_process(rustix::process::Pid::from_child(&self.child), sig)
            .map_err(Into::into)
    }

    /// SIGTERM, then wait up to `timeout` for exit (SIGKILL after that). Returns the exit code
    /// ([`Proc::stop`]'s, without the how).
    pub async fn terminate(&mut self, timeout: Duration) -> Option<i32> {
        self.stop(timeout).await.0.code()
    }

    /// SIGTERM, then wait up to `timeout` for exit (SIGKILL after that): how it ended, and
    /// whether it had already ended before this was called. A child that has already
    /// exited (killed by a fault, crashed, or stopped before) is not signalled: its end is
    /// returned as it was.
    pub async fn stop(&mut self, timeout: Duration) -> (Exit, bool) {
        if let Some(exit) = self.exit() {
            return (exit, true);
        }
        // Not reaped (`exit` found it running), so the pid is still its own.
        if let Err(e) = self.send(rustix::process::Signal::TERM) {
            let errno = e.raw_os_error().unwrap_or(0);
            tracing::warn!(pid = self.child.id(), error = %e, "SIGTERM could not be sent; killing it at once");
            self.term_refused = Some(errno);
            if self.kill9().is_err() {
                return (Exit::NotGone, false);
            }
            return (self.exit().unwrap_or(Exit::TermRefused(errno)), false);
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let mut exited = self.seen.clone();
        loop {
            if let Some(exit) = self.exit() {
                return (exit, false);
            }
            // The log pipe closes when the process exits: that is the event to wait on.
            match tokio::time::timeout_at(deadline, exited.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) => {
                    let st = tokio::task::block_in_place(|| self.child.wait()).ok();
                    self.reap(st);
                    return (self.exit().unwrap_or(Exit::Hung), false);
                }
                Err(_) => {
                    self.hung = true;
                    if self.kill9().is_err() {
                        return (Exit::NotGone, false);
                    }
                    return (Exit::Hung, false);
                }
            }
        }
    }

    /// How it ended, if it has (reaping it), without waiting.
    pub fn exit(&mut self) -> Option<Exit> {
        use std::os::unix::process::ExitStatusExt as _;
        let st = self.try_reap()?;
        Some(match (st.code(), st.signal(), self.term_refused) {
            (Some(c), _, _) => Exit::Code(c),
            (None, Some(9), Some(e)) => Exit::TermRefused(e),
            (None, Some(9), None) if self.hung => Exit::Hung,
            (None, Some(9), None) if self.killed => Exit::Killed,
            (None, Some(s), _) => Exit::Signal(s),
            // Neither a code nor a signal: not on Unix.
            (None, None, _) => Exit::Signal(0),
        })
    }

    /// Waits (without polling) for the process to exit, at most `timeout`, and returns its
    /// exit status with the handle, whose log then holds every line it wrote (waiting up to
    /// `LAST_LINES_WAIT` for the pipe's end). On timeout the process is
    /// killed and an error returned.
    pub async fn wait_exit(
        self,
        timeout: Duration,
    ) -> anyhow::Result<(std::process::ExitStatus, Self)> {
        let pid = self.child.id();
        let child_pid = rustix::process::Pid::from_child(&self.child);
        let mut me = self;
        // The waiting thread waits for the exit without reaping (the pid stays the child's,
        // a zombie), notes under the lock that it reaps, and only then reaps. The kill on
        // timeout below holds the lock and sends nothing once that is noted, so it never
        // reaches a pid the kernel may have given to another process. (The wait for the last
        // lines used to run inside this timeout too, so that a child that exited just
        // before the time ran out had been reaped and was then "killed" by its pid.)
        let reaped = Arc::new(Mutex::new(false));
        let task = tokio::task::spawn_blocking({
            let reaped = reaped.clone();
            move || {
                // One reaped already (`exited`, `terminate`, `kill9`) has no exit left to
                // wait for: `waitid` would fail (`ECHILD`), and `Child::wait` answers the
                // status it kept.
                let exited = if me.reaped {
                    Ok(())
                } else {
                    wait_unreaped(&me.child)
                };
                let mut noted = lock(&reaped);
                *noted = true;
                let st = exited.and_then(|()| me.child.wait());
                drop(noted);
                me.reaped = true;
                (st, me)
            }
        });
        let (st, me) = match tokio::time::timeout(timeout, task).await {
            Ok(Ok(done)) => done,
            Ok(Err(e)) => bail!("waiting for process {pid}: {e}"),
            Err(_) => {
                let reaped = lock(&reaped);
                if *reaped {
                    // It exited just as the time ran out.
                    bail!("process {pid} exited only as the {timeout:?} allowed ran out");
                }
                let _ = rustix::process::kill_process(child_pid, rustix::process::Signal::KILL);
                bail!("process {pid} did not exit within {timeout:?}")
            }
        };
        // Its last lines may still be in the pipe: the log is whole once the reader has
        // reached its end (the sender drops; nothing is ever sent).
        let me = tokio::task::spawn_blocking(move || {
            let _ = me.read_all.recv_timeout(LAST_LINES_WAIT);
            me
        })
        .await
        .with_context(|| format!("reading process {pid}'s last lines"))?;
        Ok((st?, me))
    }

    /// Its exit status if it has exited (reaping it), without waiting.
    fn try_reap(&mut self) -> Option<std::process::ExitStatus> {
        let st = self.child.try_wait().ok().flatten();
        self.reap(st)
    }

    /// Whether it has exited.
    pub fn exited(&mut self) -> bool {
        self.try_reap().is_some()
    }

    /// All log lines so far, joined.
    pub fn log(&self) -> String {
        lock(&self.lines).join("\n")
    }

    /// Number of log lines so far.
    pub fn log_len(&self) -> usize {
        lock(&self.lines).len()
    }

    /// A copy of the log lines so far.
    pub fn lines(&self) -> Vec<String> {
        lock(&self.lines).clone()
    }

    /// Waits until `done` holds for the log lines so far (re-checked at every new line), at
    /// most `timeout`; returns a copy of the lines. `what` names the wait in errors.
    pub async fn wait_lines(
        &mut self,
        timeout: Duration,
        what: &str,
        done: impl Fn(&[String]) -> bool,
    ) -> anyhow::Result<Vec<String>> {
        let lines = self.lines.clone();
        let check = |_: &usize| done(&lock(&lines));
        let r = tokio::time::timeout(timeout, self.seen.wait_for(check))
            .await
            .map(|r| r.map(|_| ()));
        match r {
            Ok(Ok(())) => Ok(self.lines()),
            Ok(Err(_)) if done(&self.lines()) => Ok(self.lines()),
            Ok(Err(_)) => bail!(
                "process ended before {what}; log {}:\n{}",
                self.log_path.display(),
                tail(&self.log())
            ),
            Err(_) => bail!(
                "no {what} within {timeout:?}; log {}:\n{}",
                self.log_path.display(),
                tail(&self.log())
            ),
        }
    }

    /// Waits until a log line after the first `skip` contains `needle`; returns it.
    pub async fn wait_log_from(
        &mut self,
        skip: usize,
        needle: &str,
        timeout: Duration,
    ) -> anyhow::Result<String> {
        let has = |l: &[String]| l.iter().skip(skip).any(|x| x.contains(needle));
        let lines = self
            .wait_lines(timeout, &format!("{needle:?} in the log"), has)
            .await?;
        Ok(lines
            .into_iter()
            .skip(skip)
            .find(|l| l.contains(needle))
            .unwrap_or_default())
    }

    /// Waits until any log line contains `needle`.
    pub async fn wait_log(&mut self, needle: &str, timeout: Duration) -> anyhow::Result<String> {
        self.wait_log_from(0, needle, timeout).await
    }

    /// Waits for a node's "local API listening addr=…" line; returns the address. The
    /// harness's nodes listen on a port they pick themselves, so this is how it is learnt.
    pub async fn wait_api_addr(&mut self, timeout: Duration) -> anyhow::Result<String> {
        let line = self.wait_log("local API listening", timeout).await?;
        field(&line, "addr")
            .map(str::to_owned)
            .with_context(|| format!("no API address in the log line {line:?}"))
    }
}

/// Opens a process's log: a new file, or, if one is there (a caller that appends a second
/// run to one log), that file if it is a plain file. A symbolic link in its place is
/// refused rather than followed, so a log never lands in a file the link points to.
fn open_log(path: &Path) -> anyhow::Result<std::fs::File> {
    let new = std::fs::OpenOptions::new()
        .append(true)
        .create_new(true)
        .open(path);
    match new {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let meta = std::fs::symlink_metadata(path)
                .with_context(|| format!("log {}", path.display()))?;
            if !meta.file_type().is_file() {
                bail!("log {}: exists and is not a plain file", path.display());
            }
            std::fs::OpenOptions::new()
                .append(true)
                .open(path)
                .with_context(|| format!("log {}", path.display()))
        }
        r => r.with_context(|| format!("log {}", path.display())),
    }
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

impl Drop for Proc {
    fn drop(&mut self) {
        // An error is logged by `kill9`; nothing more can be done for it here.
        let _ = self.kill9();
    }
}

/// The value of `key=` in a tracing log line (e.g. `addr=127.0.0.1:7400`).
pub fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let start = line.find(&format!("{key}="))? + key.len() + 1;
    let rest = &line[start..];
    Some(
        rest.split_whitespace()
            .next()
            .unwrap_or(rest)
            .trim_matches('"'),
    )
}

/// The `hotline` binary: `$HOTLINE_BIN`, else the one beside the running executable (or one
/// directory up, for test executables in `deps/`).
pub fn hotline_bin() -> anyhow::Result<PathBuf> {
    if let Ok(p) = std::env::var("HOTLINE_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    let mut dir = exe.parent();
    while let Some(d) = dir {
        let bin = d.join("hotline");
        if bin.is_file() {
            return Ok(bin);
        }
        if d.file_name().is_some_and(|n| n == "target") {
            break;
        }
        dir = d.parent();
    }
    bail!("the hotline binary was not found next to {}; build it with `cargo build -p hotline-cli` or set HOTLINE_BIN", exe.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A shell that says it is ready, then exits 0 on SIGTERM (stopping its `sleep`, which
    /// would otherwise hold standard error open).
    const CLEAN_ON_TERM: &str =
        "trap 'kill $!; exit 0' TERM; sleep 30 >/dev/null 2>&1 & echo ready >&2; wait";

    /// A child already reaped is not signalled again: its pid may be another process's.
    /// Terminating it twice (the drill's end after an offline fault's SIGTERM, or after a
    /// kill) gives its exit code both times; it used to send `kill -TERM` to the stale pid,
    /// which failed (or reached whatever process had the pid) and reported no exit code.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_reaped_child_is_never_signalled_again() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut p = Proc::spawn(
            Path::new("/bin/sh"),
            &["-c", CLEAN_ON_TERM],
            tmp.path(),
            "sh.log",
        )
        .expect("spawned");
        p.wait_log("ready", Duration::from_secs(10))
            .await
            .expect("the trap is set");
        assert_eq!(p.terminate(Duration::from_secs(10)).await, Some(0));
        assert_eq!(
            p.terminate(Duration::from_secs(10)).await,
            Some(0),
            "terminated again: its exit code as it was"
        );
        let e = p.signal("TERM").expect_err("not signalled").to_string();
        assert!(e.contains("reaped"), "{e}");

        let mut k = Proc::spawn(
            Path::new("/bin/sh"),
            &["-c", CLEAN_ON_TERM],
            tmp.path(),
            "sh-killed.log",
        )
        .expect("spawned");
        k.kill9().expect("killed");
        assert!(k.exited());
        assert_eq!(k.terminate(Duration::from_secs(10)).await, None, "killed");
        assert!(k.signal("HUP").is_err());
    }

    /// A child that exits within the time allowed is reported as exited, with its code,
    /// even when a process it started still holds its standard error open: the wait for its
    /// last lines comes after the exit's. It used to be inside the time allowed, so this
    /// child was reported as not exiting in time, and `kill -9` was sent to its pid after
    /// it had been reaped (a pid the kernel may give to any process).
    #[tokio::test(flavor = "multi_thread")]
    async fn an_exit_in_time_is_an_exit_whoever_holds_its_log_open() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let p = Proc::spawn(
            Path::new("/bin/sh"),
            &["-c", "sleep 3 & echo bye >&2; exit 7"],
            tmp.path(),
            "sh.log",
        )
        .expect("spawned");
        let (st, p) = p
            .wait_exit(Duration::from_secs(1))
            .await
            .expect("exited in time");
        assert_eq!(st.code(), Some(7));
        assert!(p.log().contains("bye"), "{}", p.log());
        assert!(p.signal("TERM").is_err(), "reaped: never signalled");
    }

    /// A child reaped already (here by `kill9`, as `exited` or `terminate` may) is waited
    /// for as `terminate` does: its exit status as it was, not an error from `waitid`
    /// (`ECHILD`, the pid being no child of ours any more).
    #[tokio::test(flavor = "multi_thread")]
    async fn a_reaped_child_is_waited_for_with_its_status_as_it_was() {
        use std::os::unix::process::ExitStatusExt as _;
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut p = Proc::spawn(
            Path::new("/bin/sh"),
            &["-c", "exec sleep 60"],
            tmp.path(),
            "sh.log",
        )
        .expect("spawned");
        p.kill9().expect("killed");
        assert!(p.exited(), "reaped");
        let (st, _) = p
            .wait_exit(Duration::from_secs(10))
            .await
            .expect("its status as it was");
        assert_eq!(st.signal(), Some(9), "{st}");
    }

    /// `stop` says how a process ended, so that the drill can fail on a node or relay that
    /// ended badly: an exit code, a signal it did not catch (a crash), the SIGKILL of a fault,
    /// or a hang past the grace period; and whether it had already ended before. `terminate`
    /// gave the exit code alone, `None` for all of the others.
    #[tokio::test(flavor = "multi_thread")]
    async fn stop_says_how_a_process_ended() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let sh = |script: &str, log: &str| {
            Proc::spawn(Path::new("/bin/sh"), &["-c", script], tmp.path(), log).expect("spawned")
        };
        let ready = Duration::from_secs(10);
        let grace = Duration::from_secs(10);

        let mut p = sh(&CLEAN_ON_TERM.replace("exit 0", "exit 3"), "code.log");
        p.wait_log("ready", ready).await.expect("the trap is set");
        assert_eq!(p.stop(grace).await, (Exit::Code(3), false));

        let mut p = sh(
            &CLEAN_ON_TERM.replace("exit 0", "kill -SEGV $$"),
            "segv.log",
        );
        p.wait_log("ready", ready).await.expect("the trap is set");
        let (exit, before) = p.stop(grace).await;
        assert_eq!((exit, before), (Exit::Signal(11), false));
        assert_eq!(exit.to_string(), "ended by signal 11 (SIGSEGV)");
        assert!(!exit.clean());

        // Ended on its own before the stop (waited for as a zombie, not reaped: the end of
        // its log comes a moment before its exit status).
        let mut p = sh("echo bye >&2; exit 5", "early.log");
        wait_unreaped(&p.child).expect("it ends");
        assert_eq!(p.stop(grace).await, (Exit::Code(5), true));

        let mut p = sh("exec sleep 60", "killed.log");
        p.kill9().expect("killed");
        let (exit, before) = p.stop(grace).await;
        assert_eq!((exit, before), (Exit::Killed, true));
        assert!(
            exit.clean(),
            "a fault's SIGKILL is how the scenario wanted it to end"
        );

        // SIGTERM ignored (and still so once `sleep` replaces the shell).
        let mut p = sh("trap '' TERM; echo ready >&2; exec sleep 60", "hung.log");
        p.wait_log("ready", ready).await.expect("the trap is set");
        assert_eq!(
            p.stop(Duration::from_millis(300)).await,
            (Exit::Hung, false)
        );
        assert_eq!(p.exit(), Some(Exit::Hung), "not taken for a fault's kill");
        assert_eq!(p.stop(grace).await, (Exit::Hung, true));
    }

    /// A SIGTERM the kernel refuses is reported as such: the process is killed at once,
    /// with no grace period, and its end says that SIGTERM could not be sent. It used to be
    /// reported as `Hung` ("killed after the grace period"), though no grace period ran.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_refused_sigterm_is_not_reported_as_a_hang() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut p = Proc::spawn(
            Path::new("/bin/sh"),
            &["-c", CLEAN_ON_TERM],
            tmp.path(),
            "sh.log",
        )
        .expect("spawned");
        p.wait_log("ready", Duration::from_secs(10))
            .await
            .expect("the trap is set");
        let e = p.signal("NOPE").expect_err("no such signal").to_string();
        assert!(e.starts_with("no signal named \"NOPE\""), "{e}");
        p.refuse_signals = Some(rustix::io::Errno::PERM);
        let e = format!("{:#}", p.signal("HUP").expect_err("refused"));
        assert!(e.contains("sending SIGHUP to process"), "{e}");
        let (exit, before) = p.stop(Duration::from_secs(10)).await;
        assert!(!before);
        let said = exit.to_string();
        assert!(said.contains("SIGTERM could not be sent"), "{said}");
        assert!(!said.contains("after the grace period"), "{said}");
        assert_eq!(
            exit,
            Exit::TermRefused(rustix::io::Errno::PERM.raw_os_error())
        );
        assert!(said.contains("Operation not permitted"), "{said}");
        assert!(!exit.clean());
        assert_eq!(p.exit(), Some(exit), "as it was, asked again");
    }

    /// A child that SIGKILL does not end at once (in uninterruptible sleep, on a hung disk)
    /// does not hang the harness: `kill9` waits for it a bounded time and then says so
    /// with a typed error, leaving it unreaped (its pid still its own). It used to wait for
    /// the child without a time limit, so a drill's fault, or the drop of a handle, hung.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_child_that_outlives_sigkill_does_not_hang_kill9() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut p = Proc::spawn(
            Path::new("/bin/sh"),
            &["-c", "exec sleep 60"],
            tmp.path(),
            "sh.log",
        )
        .expect("spawned");
        p.kill_ignored = true;
        p.kill_wait = Duration::from_millis(300);
        let killed = tokio::task::spawn_blocking(move || {
            let r = p.kill9();
            (format!("{r:?}"), p)
        });
        let (r, mut p) = tokio::time::timeout(Duration::from_secs(20), killed)
            .await
            .expect("kill9 returned within its bound")
            .expect("joined");
        assert!(r.starts_with("Err(NotGone"), "{r}");
        assert!(!p.reaped, "left unreaped: its pid is still its own");
        p.kill_ignored = false;
        p.kill9().expect("gone once SIGKILL reaches it");
        assert_eq!(p.exit(), Some(Exit::Killed));
    }

    /// A process's log is never written through a symbolic link planted in its place.
    #[test]
    fn a_log_is_not_written_through_a_planted_link() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let victim = tmp.path().join("victim");
        std::fs::write(&victim, "untouched\n").expect("victim");
        std::os::unix::fs::symlink(&victim, tmp.path().join("sh.log")).expect("link");
        let spawned = Proc::spawn(
            Path::new("/bin/sh"),
            &["-c", "echo hi >&2"],
            tmp.path(),
            "sh.log",
        );
        let e = format!(
            "{:#}",
            spawned.err().expect("a log through a link is refused")
        );
        assert!(e.contains("sh.log"), "{e}");
        assert_eq!(
            std::fs::read_to_string(&victim).expect("victim"),
            "untouched\n"
        );
    }
}
