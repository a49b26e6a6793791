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

/// A store that is damaged, a newer release's or another participant's stays so.
fn store_is_lasting(e: &StoreError) -> bool {
    matches!(
        e,
        StoreError::Corrupt { .. }
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
