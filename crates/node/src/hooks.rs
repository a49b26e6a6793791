//! Hooks: operator commands run with an event as JSON on standard input.
//!
//! A hook runs in its own task with a timeout; a failing, slow or missing hook is logged and
//! never delays delivery. At most `HOOKS_CONCURRENT_MAX` run at once; beyond that an event's
//! hook is skipped with a warning instead of piling up processes.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::sync::Semaphore;
use tracing::{info, warn};

use crate::events::Event;
use crate::limits::HOOKS_CONCURRENT_MAX;

/// Runs hook commands.
#[derive(Clone)]
pub struct HookRunner {
    slots: Arc<Semaphore>,
    timeout: Duration,
}

impl HookRunner {
    /// A runner with the given per-hook timeout.
    pub fn new(timeout_ms: u64) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(HOOKS_CONCURRENT_MAX)),
            timeout: Duration::from_millis(timeout_ms),
        }
    }

    /// Starts `cmd` (if configured) with `event` on its standard input; returns at once.
    pub fn fire(&self, name: &'static str, cmd: Option<&Vec<String>>, event: &Event) {
        let Some(cmd) = cmd.cloned() else { return };
        let Ok(permit) = self.slots.clone().try_acquire_owned() else {
            warn!(hook = name, "too many hooks running: skipping this one");
            return;
        };
        let json = match serde_json::to_vec(event) {
            Ok(j) => j,
            Err(e) => {
                warn!(hook = name, error = %e, "cannot encode event for hook");
                return;
            }
        };
        let timeout = self.timeout;
        tokio::spawn(async move {
            let _permit = permit;
            match run(&cmd, &json, timeout).await {
                Ok(status) if status.success() => info!(hook = name, "hook ran"),
                Ok(status) => warn!(hook = name, %status, "hook failed"),
                Err(e) => warn!(hook = name, error = %e, "hook could not run"),
            }
        });
    }
}

async fn run(
    cmd: &[String],
    stdin: &[u8],
    timeout: Duration,
) -> std::io::Result<std::process::ExitStatus> {
    let (program, args) = cmd
        .split_first()
        .ok_or_else(|| std::io::Error::other("empty hook command"))?;
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    if let Some(mut input) = child.stdin.take() {
        // A hook that does not read its input is not an error.
        let _ = input.write_all(stdin).await;
        let _ = input.write_all(b"\n").await;
    }
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(r) => r,
        Err(_) => {
            let _ = child.kill().await;
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("killed after {timeout:?}"),
            ))
        }
    }
}
