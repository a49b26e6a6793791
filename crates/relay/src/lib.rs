//! `hotline-relay`: the Secretariat's relay — authenticated QUIC server, durable
//! store-and-forward, routing, receipts, metrics.
//!
//! Tasks: one accept loop; one task per connection ([`session`]), which reads its frames
//! itself (the reader is cancel-safe); one receipt verifier task; one store-writer OS
//! thread that owns the write connection and group-commits; the metrics HTTP server.
//! `Relay::spawn` starts them and returns a [`RelayHandle`]; `shutdown` stops them in order
//! (stop accepting; each session answers what its node is owed and tells it to go away;
//! then the writer commits what is left and stops). If the writer ends on its own, the
//! accept loop stops the relay the same way ([`RelayHandle::failed`]).

#![warn(missing_docs)]

pub mod admin;
mod admission;
mod checkpoint;
pub mod config;
mod diskwatch;
mod hub;
pub mod limits;
mod logins;
mod metrics;
mod queue;
pub mod report;
mod session;
pub mod store;
mod verifier;
mod walsync;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, error, info, warn};

use hotline_net::RelayIdentity;
use hotline_proto::frame::ErrorCode;
use hotline_proto::{PublicKey, Roster, Verified};

pub use config::{ConfigError, RelayConfig};

pub use hotline_net::now_ms;

/// The names of the relay's own threads, for operators' tools and the benchmark's counters
/// (`/proc/PID/task/TID/comm`, `top -H`, `perf --comm`).
pub mod thread_names {
    /// The store writer: every commit (`store`).
    pub const STORE_WRITER: &str = "hotline-store-writer";
    /// The write-ahead log's `fdatasync`s, before any answer (`walsync`).
    pub const WAL_SYNC: &str = "hotline-wal-sync";
    /// Background checkpoints of the write-ahead log (`checkpoint`).
    pub const CHECKPOINT: &str = "hotline-checkpoint";

    /// A thread's name as the kernel keeps it (`comm`): its first 15 bytes. (A name whose
    /// 15th byte falls inside a character is cut before that character, which the kernel
    /// would not do; the names above are ASCII.)
    pub fn comm(name: &str) -> &str {
        let mut end = name.len().min(15);
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        &name[..end]
    }
}

/// Why the relay could not start or reload.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The roster file is missing, malformed or badly signed (its error names the file).
    #[error("roster {0}")]
    RosterFile(#[from] hotline_config::roster_file::RosterFileError),
    /// The roster file is not newer than the roster in force.
    #[error("roster {path}: {reason}")]
    Roster {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The roster file is older than the roster this relay last ran with, which its store
    /// keeps: starting on it would undo what the newer one changed (a revocation). The
    /// relay does not start ([`check_start_roster`]).
    #[error(
        "roster {path}: version {file_version} is older than version {kept_version}, which this relay \
         last ran with ({db}): starting on it would undo what the newer roster changed (a \
         revocation); install roster version {kept_version} or newer as {path}"
    )]
    RosterRollback {
        /// The roster file.
        path: PathBuf,
        /// The file's roster version.
        file_version: u64,
        /// The version the store keeps.
        kept_version: u64,
        /// The store.
        db: PathBuf,
    },
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] hotline_store::StoreError),
    /// The network endpoint could not be set up.
    #[error(transparent)]
    Net(#[from] hotline_net::NetError),
    /// Another I/O failure.
    #[error("{0}")]
    Io(String),
}

/// Reads and verifies a signed roster file against the pinned roster key.
pub fn load_roster(path: &Path, key: &PublicKey) -> Result<Verified<Roster>, RelayError> {
    Ok(hotline_config::roster_file::read_verified_roster(
        path, key,
    )?)
}

/// Checks the roster file's roster, `file` (read from `path`), against the roster the store
/// `db` keeps, the newest this relay has run with (`store::kept_roster`): one older than a
/// kept roster of the same key is [`RelayError::RosterRollback`]. Returns whether `file` is
/// to be kept (it is newer, or the store keeps none of the pinned key). `hotline config
/// check` makes the same check.
///
/// The relay refuses to start rather than run on the newer roster it keeps (as a node
/// does, whose roster file is only where it starts): the relay's roster file is the
/// operator's word on who is on the network, a reload reads it again, and running on
/// another roster than the file's would hide the mistake that put an older file in place
/// (a restored `/etc`, or someone who can write the configuration but not sign a roster).
pub fn check_start_roster(
    path: &Path,
    file: &Verified<Roster>,
    kept: &store::KeptRoster,
    db: &Path,
) -> Result<bool, RelayError> {
    match kept {
        store::KeptRoster::Roster(kept) if kept.version > file.version => {
            Err(RelayError::RosterRollback {
                path: path.to_owned(),
                file_version: file.version,
                kept_version: kept.version,
                db: db.to_owned(),
            })
        }
        store::KeptRoster::Roster(kept) => Ok(file.version > kept.version),
        store::KeptRoster::None | store::KeptRoster::OtherKey { .. } => Ok(true),
    }
}

/// At a start: refuses a roster file older than the roster the store keeps
/// ([`check_start_roster`]), and keeps the file's if it is newer.
fn keep_start_roster(
    conn: &rusqlite::Connection,
    db: &Path,
    config: &RelayConfig,
    roster: &Verified<Roster>,
) -> Result<(), RelayError> {
    let kept = store::kept_roster(conn, db, &config.roster_key)?;
    if let store::KeptRoster::OtherKey { version, key } = &kept {
        info!(kept_version = version, kept_key = %key, version = roster.version, "the store keeps a roster of another roster key (replaced): the file's replaces it");
    }
    match check_start_roster(&config.roster, roster, &kept, db) {
        Ok(true) => {
            // Its own transaction, journaled: a relay that stops now keeps it and its record.
            let mut journal = hotline_store::Journal::load(conn)?;
            let tx = conn
                .unchecked_transaction()
                .map_err(hotline_store::StoreError::from)?;
            store::keep_roster(&tx, &mut journal, db, roster, now_ms())?;
            tx.commit().map_err(hotline_store::StoreError::from)?;
            info!(
                version = roster.version,
                "roster kept in the store: the relay will not start on an older one"
            );
            Ok(())
        }
        Ok(false) => Ok(()),
        Err(e) => {
            if let RelayError::RosterRollback {
                file_version,
                kept_version,
                ..
            } = &e
            {
                error!(roster = %config.roster.display(), version = file_version, kept_version, "roster file older than the roster this relay last ran with: not starting");
            }
            Err(e)
        }
    }
}

/// A running relay.
pub struct RelayHandle {
    local_addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    roster: watch::Sender<Arc<Verified<Roster>>>,
    /// The store writer, which keeps each reloaded roster; weak, so that it never keeps
    /// the writer from stopping.
    writer: mpsc::WeakSender<store::Command>,
    config: RelayConfig,
    main: tokio::task::JoinHandle<()>,
    /// Why the relay stopped on its own, once it has.
    fault: watch::Receiver<Option<String>>,
}

impl RelayHandle {
    /// The QUIC address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The metrics HTTP address actually bound, if enabled.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Re-reads the roster file; installs it if it is validly signed and newer. Live
    /// sessions receive it; a revoked participant's session is closed. Then has the store
    /// keep it as the newest roster the relay has run with, so that a restart on an older
    /// file is refused ([`check_start_roster`]). It is in force before it is kept, so that
    /// a revocation does not wait for the disk; if it cannot be kept (the writer is
    /// stopping, failing, or does not answer within `limits::ROSTER_KEEP_TIMEOUT_MS`), that
    /// is logged and the roster stays in force: the file a restart reads is this one.
    pub async fn reload_roster(&self) -> Result<u64, RelayError> {
        let new = Arc::new(load_roster(&self.config.roster, &self.config.roster_key)?);
        let v = new.version;
        let mut current = 0;
        // Checked and installed at once: of two reloads racing, the older never replaces
        // the newer.
        let installed = self.roster.send_if_modified(|r| {
            current = r.version;
            let newer = v > current;
            if newer {
                *r = new.clone();
            }
            newer
        });
        if !installed {
            return Err(RelayError::Roster {
                path: self.config.roster.clone(),
                reason: format!("version {v} is not newer than the roster in force ({current})"),
            });
        }
        info!(version = v, "roster reloaded");
        match self.keep(new).await {
            Ok(_) => {}
            Err(why) => {
                error!(version = v, error = %why, "the reloaded roster is in force but not kept in the store: until it is (at the next start or reload), a start on an older roster file would not be refused")
            }
        }
        Ok(v)
    }

    /// Has the store writer keep `roster` (`store::Command::KeepRoster`), within
    /// `limits::ROSTER_KEEP_TIMEOUT_MS`; whether it wrote.
    async fn keep(&self, roster: Arc<Verified<Roster>>) -> Result<bool, String> {
        let within = Duration::from_millis(limits::ROSTER_KEEP_TIMEOUT_MS);
        let deadline = tokio::time::Instant::now() + within;
        // Upgraded only to send: the writer stops once every strong sender is gone.
        let Some(tx) = self.writer.upgrade() else {
            return Err("the relay is stopping".into());
        };
        let (reply, answer) = tokio::sync::oneshot::channel();
        let late = || {
            format!(
                "the store writer did not answer within {} ms",
                within.as_millis()
            )
        };
        match tokio::time::timeout_at(
            deadline,
            tx.send(store::Command::KeepRoster { roster, reply }),
        )
        .await
        {
            Err(_) => return Err(late()),
            Ok(Err(_)) => return Err("the store writer has stopped".into()),
            Ok(Ok(())) => {}
        }
        drop(tx);
        match tokio::time::timeout_at(deadline, answer).await {
            Err(_) => Err(late()),
            Ok(Err(_)) => Err("the store writer has stopped".into()),
            Ok(Ok(r)) => r,
        }
    }

    /// Returns, with the reason, if the relay stops on its own: its store writer has ended
    /// (a failed sync of its log, or a panic: a bug), so it can no longer store anything.
    /// It then closes its sessions and endpoint as at a shutdown; the caller should still
    /// call [`RelayHandle::shutdown`] and then exit with an error, so that a supervisor
    /// restarts it. Never returns otherwise.
    pub async fn failed(&self) -> String {
        let mut fault = self.fault.clone();
        let reason = match fault.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone(),
            // The relay stopped without a fault.
            Err(_) => None,
        };
        match reason {
            Some(reason) => reason,
            None => std::future::pending().await,
        }
    }

    /// Stops accepting; each session writes the answers its node is still owed, then
    /// `GoingAway`, and waits (briefly) for the node to close; then the writer commits what
    /// is left. Returns when everything has stopped (within `limits::SHUTDOWN_GRACE_MS` for
    /// the sessions).
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        if let Err(e) = self.main.await {
            error!(error = %e, "relay task failed");
        }
    }
}

/// How a relay is hosted, beyond its configuration. [`Relay::spawn`] uses the defaults (a
/// UDP socket bound to `config.listen`, the store writer on its own OS thread); a
/// deterministic network simulation (`crates/sim`) changes both.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct Hosting {
    socket: Option<hotline_net::transport::AbstractSocket>,
    writer_on_runtime: bool,
    fail_writer_after: Option<u64>,
    fail_syncs_after: Option<u64>,
    slow_commits: Option<std::time::Duration>,
    login_gate: Option<Arc<LoginGate>>,
    follow_gate: Option<Arc<FollowGate>>,
    store_stall_after: Option<std::time::Duration>,
    login_clock: Option<LoginClock>,
}

/// For tests of what happens between a node's login and its session's start (a roster
/// reloaded meanwhile): see [`Hosting::login_gate`]. Never in production.
#[doc(hidden)]
#[derive(Debug)]
pub struct LoginGate {
    /// Notified (one permit) each time a session has logged in and is about to wait.
    pub reached: tokio::sync::Notify,
    /// A session waits here for a permit (returned when it goes on) after its login.
    pub go: tokio::sync::Semaphore,
}

impl Default for LoginGate {
    /// Closed: no session goes on until a test adds permits to `go`.
    fn default() -> Self {
        Self {
            reached: tokio::sync::Notify::new(),
            go: tokio::sync::Semaphore::new(0),
        }
    }
}

/// For tests of what happens between a roster reload and the store writer reading the
/// queues of the participants it lists as active again (a node connecting meanwhile): see
/// [`Hosting::follow_gate`]. Never in production.
#[doc(hidden)]
#[derive(Debug, Default)]
pub struct FollowGate {
    /// Notified (one permit) each time the writer is about to read the queues of a roster
    /// newer than the one it followed, and is about to wait.
    pub reached: tokio::sync::Notify,
    /// Permits given by [`FollowGate::go`], one taken by each wait. The writer runs on its
    /// own thread, so it waits on a condition variable, not on a tokio semaphore.
    permits: std::sync::Mutex<u64>,
    opened: std::sync::Condvar,
}

impl FollowGate {
    /// Lets `n` more follows of a newer roster go on.
    pub fn go(&self, n: u64) {
        let mut p = self.permits.lock().unwrap_or_else(|e| e.into_inner());
        *p = p.saturating_add(n);
        self.opened.notify_all();
    }

    /// Notifies `reached`, then blocks the calling thread (the writer's) until a permit is
    /// given, and takes it.
    pub(crate) fn wait(&self) {
        self.reached.notify_one();
        let mut p = self.permits.lock().unwrap_or_else(|e| e.into_inner());
        while *p == 0 {
            p = self.opened.wait(p).unwrap_or_else(|e| e.into_inner());
        }
        *p -= 1;
    }
}

/// For tests of the participants' budgets of sessions (`limits.session_burst`,
/// `session_refill_ms`): the clock those budgets read, the real one moved on by what
/// [`LoginClock::advance`] added, so that a test can let a budget refill without waiting
/// for it. Only the budget reads it: QUIC's timers, the sessions and the store keep the real
/// time. (Tokio's paused time is no use here: it would fire quinn's idle timers too.) See
/// [`Hosting::login_clock`]. Never in production.
#[doc(hidden)]
#[derive(Debug, Clone, Default)]
pub struct LoginClock {
    /// Nanoseconds added to the real clock (584 years at most), shared by every clone.
    ahead_ns: Arc<std::sync::atomic::AtomicU64>,
}

impl LoginClock {
    /// Moves the budgets' clock on by `by`, at once. (Exactly: a refusal's `retry_in`, to
    /// the nanosecond, is then reached.)
    pub fn advance(&self, by: Duration) {
        let ns = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        // Relaxed: the count is the only state; a login that reads it after this returns
        // (the test's next login) sees it, as the connection it makes happens after.
        let _ = self
            .ahead_ns
            .fetch_update(Relaxed, Relaxed, |a| Some(a.saturating_add(ns)));
    }

    /// The real `now` moved on by what was added.
    pub(crate) fn now(&self) -> tokio::time::Instant {
        let now = tokio::time::Instant::now();
        let ahead = Duration::from_nanos(self.ahead_ns.load(Relaxed));
        now.checked_add(ahead).unwrap_or(now)
    }
}

impl Hosting {
    /// Serves QUIC on `socket` instead of binding `config.listen`; the endpoint is
    /// configured exactly as a bound one (TLS identity, transport limits, reset keys).
    pub fn socket(mut self, socket: hotline_net::transport::AbstractSocket) -> Self {
        self.socket = Some(socket);
        self
    }

    /// Runs the store writer as a task on the caller's runtime instead of its own OS thread,
    /// and the sessions' reads of the store on the runtime too instead of tokio's blocking
    /// pool. Each commit then blocks that runtime while SQLite syncs, so this is only for a
    /// single-threaded simulation, where it keeps store timing out of the schedule: on
    /// paused virtual time a commit or a read then takes no simulated time, and a seed
    /// reproduces the run. A production relay keeps the thread and the pool.
    pub fn writer_on_runtime(mut self) -> Self {
        self.writer_on_runtime = true;
        self
    }

    /// For tests of what a relay does when its store writer dies: the writer panics once it
    /// has committed `commits` batches (and answered them). Never in production.
    #[doc(hidden)]
    pub fn fail_writer_after(mut self, commits: u64) -> Self {
        self.fail_writer_after = Some(commits);
        self
    }

    /// For tests of what a relay does when a sync of its store's write-ahead log fails (a
    /// disk error): the sync after the first `syncs` fails (the ones after it would
    /// succeed, as after a transient error). Never in production.
    #[doc(hidden)]
    pub fn fail_syncs_after(mut self, syncs: u64) -> Self {
        self.fail_syncs_after = Some(syncs);
        self
    }

    /// For tests of what happens while a commit syncs, as on a slow disk: the writer waits
    /// `wait` after posting a batch to the sessions and before its `COMMIT` (and before the
    /// `COMMIT` of an operator's rewind or roster kept), so that a session starting
    /// meanwhile meets a batch it was not posted and cannot yet read from the store. Its own thread waits, so not with [`Hosting::writer_on_runtime`]. Never
    /// in production.
    #[doc(hidden)]
    pub fn slow_commits(mut self, wait: std::time::Duration) -> Self {
        self.slow_commits = Some(wait);
        self
    }

    /// For tests of a login racing a roster reload: each session, once its node's `Hello`
    /// has been checked, notifies `gate.reached` and waits for a permit of `gate.go` before
    /// it reads anything or answers `Welcome`. Never in production.
    #[doc(hidden)]
    pub fn login_gate(mut self, gate: Arc<LoginGate>) -> Self {
        self.login_gate = Some(gate);
        self
    }

    /// For tests of a roster reload racing a login: the store writer, each time it is about
    /// to read the queues of a roster newer than the one it followed (`follow_roster`, at
    /// its next batch or roster kept), notifies `gate.reached` and waits for a permit of
    /// [`FollowGate::go`]. The roster is in force meanwhile, so a node it lists as active
    /// again can log in before its queue is read. Its own thread waits, so not with
    /// [`Hosting::writer_on_runtime`]. Never in production.
    #[doc(hidden)]
    pub fn follow_gate(mut self, gate: Arc<FollowGate>) -> Self {
        self.follow_gate = Some(gate);
        self
    }

    /// For tests of a stalled disk: a commit or sync running `after` counts as a stall
    /// (`/health`, the log) instead of after `limits::STORE_STALL_MS`. Never in production.
    #[doc(hidden)]
    pub fn store_stall_after(mut self, after: std::time::Duration) -> Self {
        self.store_stall_after = Some(after);
        self
    }

    /// For tests of the participants' budgets of sessions: the budgets read `clock`, which
    /// the test moves on ([`LoginClock::advance`]) instead of waiting for a refill. Nothing
    /// else reads it. Never in production (which reads the real clock).
    #[doc(hidden)]
    pub fn login_clock(mut self, clock: LoginClock) -> Self {
        self.login_clock = Some(clock);
        self
    }
}

/// The store writer, as the accept loop watches it.
struct Writer {
    join: WriterJoin,
    /// Resolves when the writer has ended: with why, if it stopped on its own.
    gone: tokio::sync::oneshot::Receiver<String>,
}

/// Where the store writer runs (see [`Hosting::writer_on_runtime`]).
enum WriterJoin {
    Thread(std::thread::JoinHandle<()>),
    Task(tokio::task::JoinHandle<()>),
}

/// The relay service.
pub struct Relay;

impl Relay {
    /// Starts a relay: loads the roster, opens the store, binds the endpoint and the metrics
    /// server, and spawns the tasks. Must be called inside a tokio runtime.
    pub async fn spawn(config: RelayConfig) -> Result<RelayHandle, RelayError> {
        Self::spawn_with(config, Hosting::default()).await
    }

    /// As [`Relay::spawn`], hosted as `hosting` says.
    pub async fn spawn_with(
        config: RelayConfig,
        hosting: Hosting,
    ) -> Result<RelayHandle, RelayError> {
        let roster = load_roster(&config.roster, &config.roster_key)?;
        info!(
            version = roster.version,
            participants = roster.participants.len(),
            "roster loaded"
        );
        std::fs::create_dir_all(&config.data_dir).map_err(|e| {
            // A file in the way stays until someone moves it or the configuration: a
            // configuration error (exit 78), not one a restart may mend.
            match ConfigError::not_a_directory("data_dir", &config.data_dir) {
                Some(c) => RelayError::Config(c),
                None => RelayError::Io(format!("{}: {e}", config.data_dir.display())),
            }
        })?;
        // Held by the store writer, and so released when it ends. Waited for, off the
        // runtime: the claim of a relay that has just ended can outlive it for a moment
        // (`hotline_store::CLAIM_WAIT`).
        let dir = config.data_dir.clone();
        let claim = tokio::task::spawn_blocking(move || {
            hotline_store::lock_dir_waiting(&dir, hotline_store::CLAIM_WAIT)
        })
        .await
        .map_err(|e| RelayError::Io(format!("claiming the data directory: {e}")))??;
        let (db_path, conn) = store::open_db(&config.data_dir)?;
        keep_start_roster(&conn, &db_path, &config, &roster)?;
        let queues = Arc::new(std::sync::Mutex::new(queue::QueueIndex::default()));
        let readers = Arc::new(store::Readers::open(&db_path, queues.clone())?);
        let metrics = Arc::new(metrics::Metrics::new());
        metrics.roster_version.store(roster.version, Relaxed);
        let stall_after = hosting
            .store_stall_after
            .unwrap_or(Duration::from_millis(limits::STORE_STALL_MS));
        // Until the writer has gone (the last holder of the metrics), shutdown included.
        tokio::spawn(diskwatch::run(Arc::downgrade(&metrics), stall_after));
        let hub = Arc::new(hub::Hub::new(hub::LaneCap {
            items: limits::MAILBOX_ITEMS,
            bytes: limits::MAILBOX_BYTES,
        }));
        let (roster_tx, roster_rx) = watch::channel(Arc::new(roster));
        let writer = store::Writer::new(
            conn,
            store::WriterContext {
                roster: roster_rx.clone(),
                policy: config.policy,
                hub: hub.clone(),
                metrics: metrics.clone(),
                queue_depth_max: config.limits.queue_depth_max,
                forward_foreign_max: config.limits.forward_foreign_max,
                foreign_receipts_per_day_max: config.limits.foreign_receipts_per_day_max,
                batch_max: config.limits.commit_batch_max,
                queues,
                fail_after_commits: hosting.fail_writer_after,
                fail_syncs_after: hosting.fail_syncs_after,
                slow_commits: hosting.slow_commits,
                follow_gate: hosting.follow_gate,
            },
        )?;
        info!(queued = writer.queued_total(), db = %db_path.display(), "store open");
        let (cmd_tx, cmd_rx) = mpsc::channel(limits::WRITER_QUEUE_DEPTH);
        let writer_cmd = cmd_tx.downgrade();
        // Resolves when the writer ends, however it ends: with why, if it stopped on its own
        // (a failed sync), or dropped (a panic unwinds through it; a shutdown).
        let (writer_gone_tx, writer_gone) = tokio::sync::oneshot::channel::<String>();
        let writer_join = if hosting.writer_on_runtime {
            WriterJoin::Task(tokio::spawn(async move {
                // As on a thread (below): the claim goes first.
                let stopped = {
                    let _claim = claim;
                    writer.run_on_runtime(cmd_rx).await
                };
                if let Some(why) = stopped {
                    let _ = writer_gone_tx.send(why);
                }
            }))
        } else {
            let checkpointer = match checkpoint::Checkpointer::start(
                &db_path,
                metrics.clone(),
                None,
            ) {
                Ok(c) => Some(c),
                Err(e) => {
                    warn!(error = %e, "no background WAL checkpoints; the store writer runs SQLite's automatic checkpoint in its commits");
                    None
                }
            };
            WriterJoin::Thread(
                std::thread::Builder::new()
                    .name(thread_names::STORE_WRITER.into())
                    .spawn(move || {
                        // The directory's claim goes with the writer, before anyone hears
                        // that it has gone.
                        let stopped = {
                            let _claim = claim;
                            writer.run(cmd_rx, checkpointer)
                        };
                        if let Some(why) = stopped {
                            let _ = writer_gone_tx.send(why);
                        }
                    })
                    .map_err(|e| RelayError::Io(format!("cannot start the store writer: {e}")))?,
            )
        };

        let identity = RelayIdentity::load(&config.cert, &config.key)?;
        let transport = config.transport_limits();
        let simulated = hosting.socket.is_some();
        let endpoint = match hosting.socket {
            None => hotline_net::transport::server_endpoint(config.listen, &identity, &transport)?,
            Some(socket) => {
                hotline_net::transport::server_endpoint_on(socket, &identity, &transport)?
            }
        };
        let local_addr = endpoint
            .local_addr()
            .map_err(|e| RelayError::Io(format!("endpoint address: {e}")))?;
        info!(addr = %local_addr, fingerprint = %identity.fingerprint(), "relay listening");

        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        // The control socket (not in a simulation, whose sockets are not the host's).
        if !simulated {
            let path = config.data_dir.join(admin::SOCKET_FILE);
            match admin::bind(&path) {
                Ok(listener) => {
                    tokio::spawn(admin::serve(
                        listener,
                        path,
                        db_path.clone(),
                        cmd_tx.downgrade(),
                        shutdown_rx.clone(),
                    ));
                }
                Err(e) => {
                    warn!(path = %path.display(), error = %e, "no control socket: `hotline relay redeliver` will need this relay stopped");
                }
            }
        }
        let metrics_addr = match config.metrics_listen {
            None => None,
            Some(addr) => {
                let listener = metrics::bind(addr)
                    .await
                    .map_err(|e| RelayError::Io(format!("metrics listener {addr}: {e}")))?;
                let bound = listener.local_addr().ok();
                let mut sd = shutdown_rx.clone();
                tokio::spawn(metrics::serve(
                    listener,
                    metrics.clone(),
                    hub.clone(),
                    stall_after,
                    async move {
                        let _ = sd.wait_for(|v| *v).await;
                    },
                ));
                bound
            }
        };

        // Keep the metrics' roster version in step with reloads.
        {
            let mut rx = roster_rx.clone();
            let m = metrics.clone();
            let mut sd = shutdown_rx.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = sd.changed() => break,
                        r = rx.changed() => {
                            if r.is_err() { break; }
                            let v = rx.borrow_and_update().version;
                            m.roster_version.store(v, Relaxed);
                        }
                    }
                }
            });
        }

        // Receipts pass through the verifier on their way to the writer; it stops when the
        // sessions have gone, and the writer when it has.
        let (verify_tx, verify_rx) = mpsc::channel(limits::WRITER_QUEUE_DEPTH);
        tokio::spawn(verifier::run(
            verify_rx,
            roster_rx.clone(),
            cmd_tx.clone(),
            metrics.clone(),
            limits::RECEIPT_VERIFY_BATCH_MAX,
        ));
        let shared = Arc::new(session::Shared {
            config: config.clone(),
            roster: roster_rx,
            hub,
            metrics,
            readers,
            writer: cmd_tx,
            verifier: verify_tx,
            rates: Default::default(),
            receipt_rates: Default::default(),
            receipt_item_rates: Default::default(),
            byte_rates: Default::default(),
            logins: logins::Logins::new(
                config.limits.session_burst,
                Duration::from_millis(config.limits.session_refill_ms),
            )
            .with_clock(hosting.login_clock),
            before_login: std::sync::Mutex::new(hotline_net::Throttle::new(Duration::from_secs(
                10,
            ))),
            login_gate: hosting.login_gate,
            reads_on_runtime: hosting.writer_on_runtime,
        });
        let (fault_tx, fault) = watch::channel(None);
        let main = tokio::spawn(accept_loop(
            endpoint,
            shared,
            (shutdown_tx.clone(), shutdown_rx),
            Writer {
                join: writer_join,
                gone: writer_gone,
            },
            fault_tx,
        ));
        Ok(RelayHandle {
            local_addr,
            metrics_addr,
            shutdown: shutdown_tx,
            roster: roster_tx,
            writer: writer_cmd,
            config,
            main,
            fault,
        })
    }
}

async fn wait_true(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

/// A session task that ended: one that panicked (a bug; its connection is dropped with it)
/// is logged, as nothing else would say so but the panic's own line on standard error.
fn reaped(done: Result<(), tokio::task::JoinError>) {
    if let Err(e) = done {
        if e.is_panic() {
            error!(error = %e, "a session task panicked (a bug): its connection was dropped");
        }
    }
}

async fn accept_loop(
    endpoint: quinn::Endpoint,
    shared: Arc<session::Shared>,
    (stop, mut shutdown): (watch::Sender<bool>, watch::Receiver<bool>),
    mut writer: Writer,
    fault: watch::Sender<Option<String>>,
) {
    let slots = Arc::new(Semaphore::new(shared.config.limits.connections_max));
    let admission = admission::Admission::new(
        shared.config.limits.handshakes_max,
        shared.config.limits.handshakes_per_ip_max,
        shared.metrics.clone(),
    );
    // Refusals are logged at most once every 10 s each, with their count.
    let mut refused = hotline_net::Throttle::new(Duration::from_secs(10));
    let mut busy = hotline_net::Throttle::new(Duration::from_secs(10));
    let mut tasks = JoinSet::new();
    let mut next_id = 0u64;
    loop {
        tokio::select! {
            biased;
            _ = wait_true(&mut shutdown) => break,
            // Without its writer the relay can store nothing: stop, so that it is restarted,
            // rather than accept connections it cannot serve.
            why = &mut writer.gone => {
                let why = why.unwrap_or_else(|_| "the store writer stopped".into());
                error!(reason = %why, "the store writer has stopped: this relay can store nothing more; stopping it");
                fault.send_replace(Some(why));
                // As at a shutdown: sessions answer what they can and tell their nodes
                // (`GoingAway`), and the control socket and metrics endpoint stop.
                stop.send_replace(true);
                break;
            }
            // Reap finished sessions so the set does not grow.
            Some(done) = tasks.join_next(), if !tasks.is_empty() => reaped(done),
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                let remote = incoming.remote_address();
                // A connection that already answered a Retry cannot be asked again.
                let validated = incoming.remote_address_validated() || !incoming.may_retry();
                let ticket = match admission.decide(remote.ip(), validated) {
                    Ok(t) => t,
                    Err(admission::NotNow::Validate) => {
                        shared.metrics.address_validations.fetch_add(1, Relaxed);
                        if let Err(e) = incoming.retry() {
                            debug!(%remote, error = %e, "cannot ask for address validation; connection ignored");
                        }
                        continue;
                    }
                    Err(why) => {
                        let (reason, counter) = match why {
                            admission::NotNow::Address => ("address", &shared.metrics.handshakes_refused_address),
                            _ => ("total", &shared.metrics.handshakes_refused_total),
                        };
                        counter.fetch_add(1, Relaxed);
                        incoming.refuse();
                        if let Some(n) = refused.tick(1, std::time::Instant::now()) {
                            warn!(refused = n, last = %remote, reason, per_ip_max = shared.config.limits.handshakes_per_ip_max, max = shared.config.limits.handshakes_max, "connections refused before their handshake: too many not yet authenticated (hotline_relay_handshakes_refused_total)");
                        }
                        continue;
                    }
                };
                next_id += 1;
                match slots.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let shared = shared.clone();
                        let sd = shutdown.clone();
                        let id = next_id;
                        tasks.spawn(async move {
                            session::run(incoming, shared, id, sd, ticket).await;
                            drop(permit);
                        });
                    }
                    Err(_) => {
                        if let Some(n) = busy.tick(1, std::time::Instant::now()) {
                            warn!(refused = n, limit = shared.config.limits.connections_max, "connection limit reached: refusing");
                        }
                        shared.metrics.closed(ErrorCode::Busy);
                        tasks.spawn(async move {
                            if let Ok(Ok(c)) = tokio::time::timeout(Duration::from_secs(2), incoming).await {
                                c.close(ErrorCode::Busy.close_code().into(), b"relay at its connection limit");
                            }
                            drop(ticket);
                        });
                    }
                }
            }
        }
    }
    info!("shutting down: no new connections");
    endpoint.set_server_config(None);
    let grace = Duration::from_millis(limits::SHUTDOWN_GRACE_MS);
    if tokio::time::timeout(grace, async {
        while let Some(done) = tasks.join_next().await {
            reaped(done);
        }
    })
    .await
    .is_err()
    {
        warn!("sessions did not finish in time; aborting them");
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }
    // The last command sender goes with `shared`: the writer drains, commits and stops.
    drop(shared);
    let writer_failed = match writer.join {
        WriterJoin::Thread(t) => !matches!(
            tokio::task::spawn_blocking(move || t.join()).await,
            Ok(Ok(()))
        ),
        WriterJoin::Task(t) => t.await.is_err(),
    };
    if writer_failed {
        error!("store writer panicked");
    }
    endpoint.close(
        ErrorCode::GoingAway.close_code().into(),
        b"relay shutting down",
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    info!("relay stopped");
}

#[cfg(test)]
mod tests {
    use super::*;
    use hotline_proto::{Participant, ParticipantId, Role, Signed, SigningKey, PROTOCOL_VERSION};

    /// What `/proc` shows of each thread's name: its first 15 bytes.
    #[test]
    fn thread_names_are_cut_as_the_kernel_cuts_them() {
        assert_eq!(
            thread_names::comm(thread_names::WAL_SYNC),
            "hotline-wal-syn"
        );
        assert_eq!(
            thread_names::comm(thread_names::CHECKPOINT),
            "hotline-checkpo"
        );
        assert_eq!(
            thread_names::comm(thread_names::STORE_WRITER),
            "hotline-store-w"
        );
        assert_eq!(thread_names::comm("short"), "short");
        // 14 ASCII bytes, then a two-byte character across the 15-byte limit.
        assert_eq!(thread_names::comm("abcdefghijklmné"), "abcdefghijklmn");
    }

    /// A roster file the pinned key did not sign is refused naming the file once (the
    /// file's own error names it too): `roster FILE: roster is signed by key …`.
    #[test]
    fn a_refused_roster_file_is_named_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("roster.signed");
        let signer = SigningKey::from_bytes(&[7; 32]);
        let roster = Roster {
            protocol_version: PROTOCOL_VERSION,
            version: 1,
            issued_at_ms: 1_000,
            network: "TEST".into(),
            participants: vec![Participant {
                id: ParticipantId::new("SEC").expect("id"),
                name: "Secretariat".into(),
                role: Role::Secretariat,
                keys: vec![PublicKey::of(&SigningKey::from_bytes(&[1; 32]))],
                revoked: false,
            }],
            groups: vec![],
        };
        hotline_config::roster_file::write_signed_roster(
            &path,
            &Signed::sign(&roster, &signer).expect("sign"),
        )
        .expect("write");
        let pinned = PublicKey::of(&SigningKey::from_bytes(&[8; 32]));
        let text = load_roster(&path, &pinned)
            .expect_err("signed by another key")
            .to_string();
        let named = path.display().to_string();
        assert_eq!(text.matches(&named).count(), 1, "{text}");
        assert!(text.starts_with(&format!("roster {named}: ")), "{text}");
    }
}
