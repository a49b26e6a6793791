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

use hotline_store::StoreError;

/// The exit status of `hotline relay` and `hotline node` when the service cannot start and
/// starting it again cannot help: its configuration, key, roster, (relay) certificate or
/// (node) API token file is unusable, or its store
/// is damaged (SQLite's check, a record that does not decode, a broken audit journal), was
/// written by a newer release, or is another participant's. It is sysexits' `EX_CONFIG`; the systemd
/// units list it in `RestartPreventExitStatus=`, so that systemd does not start the service
/// five more times, logging the same error each time, before it gives up. Every other
/// failure (a busy port, a store locked by another process, a full disk) exits 1 and is
/// retried.
pub(crate) const EXIT_CANNOT_START: u8 = 78;

/// The exit status of a command line that is wrong: clap's own, for an unknown command or
/// option or a missing argument, and [`BadArgument`]'s, for an argument clap took as text
/// that names nothing of its kind (a message id that is not 32 hex digits). Either is
/// refused before anything is done (the man page's EXIT STATUS).
pub(crate) const EXIT_USAGE: u8 = 2;

/// An argument that is not what it names (`hotline show ../status`, `--since yesterday`),
/// found before the command does anything: exit status [`EXIT_USAGE`], as clap's refusals,
/// not 1, which says the command ran and failed.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub(crate) struct BadArgument(anyhow::Error);

impl BadArgument {
    /// `e`, the reason argument `name` was refused, named and marked as a usage error.
    pub(crate) fn of(name: &str, e: impl std::fmt::Display) -> anyhow::Error {
        BadArgument(anyhow::anyhow!("{name}: {e}")).into()
    }
}

/// A service's start-up error that a restart cannot mend (see [`EXIT_CANNOT_START`]).
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub(crate) struct CannotStart(anyhow::Error);

impl CannotStart {
    /// Wraps `e` if a restart cannot mend it; passes it on as it is otherwise.
    pub(crate) fn classify(e: impl Into<anyhow::Error>) -> anyhow::Error {
        let e = e.into();
        if e.chain().any(is_lasting) {
            CannotStart(e).into()
        } else {
            e
        }
    }
}

/// Whether `e` is one of the start-up errors that stay until someone changes a file. The
/// service errors wrap a store error transparently (its `source()` is the store error's
/// own source), so each is looked into.
fn is_lasting(e: &(dyn std::error::Error + 'static)) -> bool {
    use hotline_node::NodeError;
    use hotline_relay::RelayError;
    if let Some(e) = e.downcast_ref::<StoreError>() {
        return store_is_lasting(e);
    }
    if let Some(e) = e.downcast_ref::<RelayError>() {
        return match e {
            RelayError::Config(_)
            | RelayError::RosterFile(_)
            | RelayError::Roster { .. }
            | RelayError::RosterRollback { .. } => true,
            RelayError::Store(e) => store_is_lasting(e),
            // The certificate or key cannot be read or used (not a pair, not PEM).
            RelayError::Net(hotline_net::NetError::Tls(_) | hotline_net::NetError::TlsFile(_)) => {
                true
            }
            _ => false,
        };
    }
    if let Some(e) = e.downcast_ref::<NodeError>() {
        return match e {
            NodeError::Config(_) | NodeError::Key(_) | NodeError::Roster(_) => true,
            NodeError::Store(e) => store_is_lasting(e),
            // A file that is there but holds no token, or a directory where the file belongs
            // (an unreadable one may be a moment's).
            NodeError::Token(hotline_config::text_file::TextFileError::Io { source, .. }) => {
                source.kind() == std::io::ErrorKind::IsADirectory
            }
            NodeError::Token(_) => true,
            _ => false,
        };
    }
    e.is::<hotline_config::ConfigError>()
}

/// A store that is damaged, a newer release's or another participant's stays so; so does
/// one that an unfinished restore, or a store moved away, leaves the service refusing.
fn store_is_lasting(e: &StoreError) -> bool {
    matches!(
        e,
        StoreError::Corrupt { .. }
            | StoreError::RestoreUnfinished { .. }
            | StoreError::StoreMissing { .. }
            | StoreError::NewerSchema { .. }
            | StoreError::OtherParticipant { .. }
            | StoreError::JournalBroken { .. }
            | StoreError::Record(_)
    )
}

/// The signals a service acts on, caught from before it starts: one that arrives while it
/// is starting (a `systemctl stop` right after `start`) is acted on once it runs, instead
/// of ending the process by the signal's default action, uncleanly.
pub(crate) struct Signals {
    pub(crate) term: tokio::signal::unix::Signal,
    pub(crate) int: tokio::signal::unix::Signal,
    pub(crate) hup: tokio::signal::unix::Signal,
}

/// `--stop-when-stdin-closes` (hidden; for the drill harness): a service given it shuts down,
/// as on SIGTERM, once its standard input reaches its end. The harness starts its relay and
/// nodes with a pipe on standard input whose other end it alone holds and never writes to:
/// however the harness ends, even by SIGKILL, which it cannot catch, the kernel closes that
/// end, and they stop instead of running on with no one to stop them. (The kernel's
/// parent-death signal would need `unsafe` code between fork and exec, which the workspace
/// forbids, and fires when the thread that forked exits, not the process.) Hidden, and off
/// by default: a service under systemd has `/dev/null` on standard input, at its end from
/// the start.
pub(crate) struct StdinTether(Option<tokio::sync::oneshot::Receiver<()>>);

impl StdinTether {
    /// Starts watching standard input if `on`: a thread reads it to its end (or an error),
    /// discarding what it reads. A plain thread, not the runtime's blocking pool, whose
    /// shutdown would wait for a read that never ends.
    pub(crate) fn new(on: bool) -> std::io::Result<Self> {
        if !on {
            return Ok(Self(None));
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("stdin-tether".into())
            .spawn(move || {
                use std::io::Read as _;
                let mut stdin = std::io::stdin().lock();
                let mut buf = [0u8; 256];
                loop {
                    match stdin.read(&mut buf) {
                        Ok(0) => break,
                        Ok(_) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(_) => break,
                    }
                }
                let _ = tx.send(());
            })?;
        Ok(Self(Some(rx)))
    }

    /// Resolves once standard input has closed; never if not watched (or once it has
    /// resolved, so that a `select!` loop may poll it again).
    pub(crate) async fn closed(&mut self) {
        match self.0.as_mut() {
            Some(rx) => {
                // An error means the thread ended without sending: it is gone all the same.
                let _ = rx.await;
                self.0 = None;
            }
            None => std::future::pending().await,
        }
    }
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
