//! One module per command group. Each exposes its clap arguments and a `run` function that
//! returns `anyhow::Result<()>`; `main` prints the error and sets the exit code.

pub(crate) mod audit;
pub(crate) mod backup;
pub(crate) mod config;
pub(crate) mod exercise;
pub(crate) mod keys;
pub(crate) mod node;
pub(crate) mod operator;
pub(crate) mod relay;
pub(crate) mod roster;

/// The signals a service acts on, caught from before it starts: one that arrives while it
/// is starting (a `systemctl stop` right after `start`) is acted on once it runs, instead
/// of ending the process by the signal's default action, uncleanly.
pub(crate) struct Signals {
    pub(crate) term: tokio::signal::unix::Signal,
    pub(crate) int: tokio::signal::unix::Signal,
    pub(crate) hup: tokio::signal::unix::Signal,
}

impl Signals {
    /// Starts catching SIGTERM, SIGINT and SIGHUP (inside a tokio runtime).
    pub(crate) fn catch() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }
}
