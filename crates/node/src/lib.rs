//! `hotline-node`: what a national contact point runs 24/7.
//!
//! Tasks: one link task per configured relay ([`link`]) with its frame-reader task; the
//! deadline and paging ticker; the unreachable watchdog; the local HTTP API ([`api`]);
//! hooks run in short-lived tasks. All durable state is in [`store::NodeStore`] behind one
//! mutex (a node's load is one participant's traffic; SQLite commits are short).

#![warn(missing_docs)]

pub mod api;
pub mod client;
pub mod config;
pub mod events;
pub mod hooks;
pub mod in_flight;
pub mod limits;
mod link;
pub mod pacer;
mod recurring;
pub mod store;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{broadcast, watch, Notify};
use tokio::task::JoinSet;
use tracing::{error, info, warn};

use hotline_proto::{Envelope, ParticipantId, Roster, SigningKey, Verified};

pub use config::{ConfigError, NodeConfig};
use events::Event;
use hooks::HookRunner;
use store::{NodeReader, NodeStore};

pub use hotline_net::now_ms;

/// Why the node could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The key file is unusable.
    #[error(transparent)]
    Key(#[from] hotline_config::keyfile::KeyFileError),
    /// No valid roster: neither the file nor the store holds one signed by the pinned key.
    #[error("roster: {0}")]
    Roster(String),
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] hotline_store::StoreError),
    /// The transport could not be set up.
    #[error(transparent)]
    Net(#[from] hotline_net::NetError),
    /// The API token file cannot be read, or holds no token.
    #[error(transparent)]
    Token(#[from] hotline_config::text_file::TextFileError),
    /// Another I/O failure (API listener, writing a new token file).
    #[error("{0}")]
    Io(String),
}

/// A relay link that is up.
#[derive(Clone, Debug)]
pub(crate) struct LinkUp {
    pub(crate) conn: quinn::Connection,
    /// When it was made, ms since the Unix epoch.
    pub(crate) since_ms: u64,
}

/// Why a relay link is down, for the status API: an operator asking why a relay is not
/// connected should not have to read the log.
#[derive(Clone, Debug, Default)]
pub(crate) struct LinkDown {
    /// Since the first failed attempt or the loss of the link, ms since the Unix epoch
    /// (`None` before the first attempt has ended).
    pub(crate) since_ms: Option<u64>,
    /// The last attempt's failure, or why the link was lost.
    pub(crate) error: Option<String>,
    /// Attempts that failed since the link was last up.
    pub(crate) failed_attempts: u32,
    /// The link's last attempt, or its end, met a lasting refusal (the relay refused this
    /// node itself, or this node refused the relay's certificate): nothing this node sends
    /// will leave through it until a roster, a configuration or a release changes.
    pub(crate) refused: Option<RelayRefusal>,
}

/// A lasting refusal of a relay link: one that every attempt meets again until someone
/// changes a roster, a configuration or a release, not one that passes. The relay's roster
/// does not list this node's participant (`UnknownParticipant`), or marks it revoked or does
/// not list its key (`Revoked`); the relay does not speak this node's protocol version
/// (`UnsupportedVersion`); it cannot verify this node's log-in proof (`AuthFailed`); or the
/// relay's certificate is not the one this node pins for it (`PinMismatch`). A timeout, a
/// relay restarting, at its connection limit or shutting down, and a link lost are not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RelayRefusal {
    /// What refused what.
    pub(crate) code: RefusalCode,
    /// The relay's reason text (`KAZ is revoked`), or this node's, control characters
    /// removed.
    pub(crate) reason: String,
}

/// What a lasting refusal is; its [`name`](RefusalCode::name) is the API's `code`, the
/// relay's `ErrorCode` where the relay refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RefusalCode {
    /// The relay's roster does not list this node's participant.
    UnknownParticipant,
    /// The relay's roster marks this node's participant revoked, or does not list its key.
    Revoked,
    /// The relay refused the protocol version of this node's log-in proof, or its TLS
    /// handshake offered no protocol identifier (ALPN) this node speaks.
    UnsupportedVersion,
    /// The relay could not verify this node's log-in proof: its signature, or its binding
    /// to the connection's TLS session (the relay does not check the proof's time).
    AuthFailed,
    /// This node refused the relay: its certificate is not the one pinned for it.
    PinMismatch,
}

impl RefusalCode {
    /// Its name in the API (`code` in a send's `refused_by` and in `/v1/status`).
    pub(crate) fn name(self) -> &'static str {
        match self {
            RefusalCode::UnknownParticipant => "UnknownParticipant",
            RefusalCode::Revoked => "Revoked",
            RefusalCode::UnsupportedVersion => "UnsupportedVersion",
            RefusalCode::AuthFailed => "AuthFailed",
            RefusalCode::PinMismatch => "PinMismatch",
        }
    }
}

/// The TLS alert `no_application_protocol` (RFC 7301): the relay speaks none of the
/// protocol identifiers this node offers, so a relay of another protocol version refuses it
/// in the handshake (OPERATIONS.md 8.2).
const TLS_NO_APPLICATION_PROTOCOL: u8 = 120;

impl RelayRefusal {
    /// The lasting refusal in `e`, if the relay refused this node at log-in (or when it
    /// ended the link) for a reason that lasts, or this node refused the relay's
    /// certificate. `None` for everything that may pass by itself: timeouts, a relay that
    /// is shutting down (`GoingAway`), full (`Busy`), overloaded or slow (`LimitExceeded`,
    /// `SlowConsumer`, `AuthTimeout`), failing (`Internal`), a second node with this key
    /// (`Superseded`, handled apart), and lost or reset connections.
    pub(crate) fn of(e: &hotline_net::NetError) -> Option<Self> {
        use hotline_net::NetError;
        use hotline_proto::frame::ErrorCode;
        let clean = |reason: &str| reason.chars().filter(|c| !c.is_control()).collect();
        match e {
            NetError::Closed { code, reason } => {
                let code = match code {
                    ErrorCode::Revoked => RefusalCode::Revoked,
                    ErrorCode::UnknownParticipant => RefusalCode::UnknownParticipant,
                    ErrorCode::UnsupportedVersion => RefusalCode::UnsupportedVersion,
                    ErrorCode::AuthFailed => RefusalCode::AuthFailed,
                    _ => return None,
                };
                Some(Self {
                    code,
                    reason: clean(reason),
                })
            }
            NetError::PinMismatch { presented } => Some(Self {
                code: RefusalCode::PinMismatch,
                reason: format!(
                    "relay certificate {presented} does not match the pinned fingerprint"
                ),
            }),
            NetError::Connection(quinn::ConnectionError::ConnectionClosed(c))
                if c.error_code
                    == quinn::TransportErrorCode::crypto(TLS_NO_APPLICATION_PROTOCOL) =>
            {
                Some(Self {
                    code: RefusalCode::UnsupportedVersion,
                    reason: format!(
                        "the relay's TLS handshake refused protocol {} (no_application_protocol)",
                        String::from_utf8_lossy(hotline_proto::frame::ALPN)
                    ),
                })
            }
            _ => None,
        }
    }
}

/// A relay link's state.
#[derive(Clone, Debug)]
pub(crate) enum Link {
    Up(LinkUp),
    Down(LinkDown),
}

/// State shared by the node's tasks.
pub(crate) struct NodeState {
    pub(crate) config: NodeConfig,
    pub(crate) me: ParticipantId,
    pub(crate) key: SigningKey,
    /// A second connection to the store, read-only, for the API's lists
    /// ([`NodeReader`]): they read without the store's lock. Declared (so dropped) before
    /// `store`: the last connection to close folds the write-ahead log into the store
    /// and removes it, which a read-only one cannot, so a stopped node's store is one file.
    reader: Mutex<NodeReader>,
    store: Mutex<NodeStore>,
    pub(crate) roster: watch::Sender<Arc<Verified<Roster>>>,
    pub(crate) events: broadcast::Sender<Event>,
    pub(crate) hooks: HookRunner,
    pub(crate) wake: Vec<Arc<Notify>>,
    /// Bumped when deliveries leave the quarantine (an officer discards them, or a newer
    /// roster lets them into the inbox): a link on which deliveries were refused for a full
    /// quarantine reconnects, so that the relay delivers them again (it redelivers only on
    /// a new connection).
    pub(crate) quarantine_room: watch::Sender<u64>,
    /// Whether the quarantine is being checked against the roster, and again when done
    /// ([`NodeState::recheck_quarantine`]).
    rechecking: Mutex<Rechecking>,
    /// The same for the held receipts ([`NodeState::recheck_held_receipts`]).
    receipts_rechecking: Mutex<Rechecking>,
    /// Bumped each time checks of the whole quarantine against the roster end with none
    /// further asked for (a walk cut short by a stop bumps nothing; what a test waits on).
    pub(crate) quarantine_checked: watch::Sender<u64>,
    /// The same for the held receipts, checked in the background
    /// ([`NodeState::recheck_held_receipts`]; what a test waits on).
    pub(crate) receipts_checked: watch::Sender<u64>,
    /// Walks of the whole quarantine begun since the node started (logged when one ends;
    /// what a test of the start-up walk counts).
    quarantine_walks: std::sync::atomic::AtomicU64,
    /// How many of those checks, of the other store work of the node's tasks
    /// ([`NodeState::off_runtime`]), and of the hooks' records as they end
    /// ([`HookRunner::fire_then`]), are running off the async runtime: the node's shutdown
    /// waits for none to be ([`NodeHandle::shutdown`]). Shared with each check's
    /// [`RecheckRunning`], which counts it ended only once it no longer holds the node.
    background: Arc<watch::Sender<usize>>,
    /// Each relay's link: up, with its connection's figures for the status API, or down,
    /// and why.
    links: Vec<Mutex<Link>>,
    pub(crate) token: String,
    /// Becomes true when the node stops (for tasks the API spawns, like event streams).
    pub(crate) shutdown: watch::Receiver<bool>,
    /// The events emitted before the API listened, for its first subscribers
    /// ([`EarlyEvents`]).
    early: Mutex<EarlyEvents>,
    /// This state itself, for what outlives a call and must not keep the node (and its
    /// store) alive: a hook that ends after the node has stopped.
    this: std::sync::Weak<NodeState>,
    /// This node's claim on its data directory (no second node may run on it). The last
    /// field, so dropped last: the claim ends only once the store's connections are closed.
    _claim: hotline_store::DirLock,
}

/// The events a node emits at start-up, before its API listens (the announcements of what
/// it had not finished announcing when it last stopped, `recovered`, and of messages
/// released from quarantine), kept for the subscribers of `/v1/events` that connect within
/// `STARTUP_EVENTS_KEPT_MS` of the API listening. None could have been subscribed when they
/// were emitted; announcing them after the API listens instead would only let a subscriber
/// that happened to connect in that instant see them, not `hotline watch` restarted after the
/// node by an officer or a supervisor, which is the subscriber they are for.
#[derive(Default)]
struct EarlyEvents {
    /// The newest `EVENTS_BUFFER` of them, oldest first, while the API is not listening.
    events: std::collections::VecDeque<Event>,
    /// The same once it listens: shared by the subscribers, each of which serializes them
    /// as it sends them, so that many connecting at once do not each hold a copy.
    kept: Arc<[Event]>,
    /// How many older ones did not fit (told to each subscriber as a `lagged` event).
    missed: u64,
    /// Until when they are given to subscribers; `None` while the API is not yet listening.
    until: Option<std::time::Instant>,
}

impl EarlyEvents {
    /// Keeps `e` if the API is not listening yet, dropping the oldest past `EVENTS_BUFFER`.
    fn keep(&mut self, e: &Event) {
        if self.until.is_some() {
            return;
        }
        if self.events.len() == limits::EVENTS_BUFFER {
            self.events.pop_front();
            self.missed += 1;
        }
        self.events.push_back(e.clone());
    }

    /// The API listens from `now`: nothing more is kept, and what was is given to
    /// subscribers for `STARTUP_EVENTS_KEPT_MS`.
    fn listening(&mut self, now: std::time::Instant) {
        self.until = Some(now + Duration::from_millis(limits::STARTUP_EVENTS_KEPT_MS));
        self.kept = std::mem::take(&mut self.events).into_iter().collect();
    }

    /// What a subscriber that subscribes at `now` is told first.
    fn for_subscriber(&mut self, now: std::time::Instant) -> Early {
        self.forget(now);
        Early {
            missed: self.missed,
            events: self.kept.clone(),
        }
    }

    /// Frees what was kept once its time is up.
    fn forget(&mut self, now: std::time::Instant) {
        if self.until.is_some_and(|u| now >= u) && (self.missed > 0 || !self.kept.is_empty()) {
            self.kept = Arc::new([]);
            self.missed = 0;
        }
    }
}

/// What a `/v1/events` subscriber is told first ([`NodeState::early_events`]).
#[derive(Debug)]
pub(crate) struct Early {
    /// Events it missed before these, which did not fit.
    pub(crate) missed: u64,
    /// The events, oldest first.
    pub(crate) events: Arc<[Event]>,
}

/// Runs `work` on tokio's blocking pool, and waits for it: how the node's async code does
/// anything that may wait on its store (the store's lock or the reader's, SQLite's I/O).
/// The locks are held by long operations (a batch of deliveries, a backup's read, a page of
/// a quarantine walk), and a slow or stalled disk makes any call wait: on a runtime
/// thread, that wait held the thread, and with it everything else the runtime runs, which
/// has few threads (two on a two-core machine): the links to the relays, the API's
/// requests and event streams, every timer. `work` runs to its end even if the caller's
/// future is dropped meanwhile, so what must follow a write (an event, a log line) is
/// done in `work` too; its log lines go where the caller's would (a test's subscriber is
/// its thread's). An error if it panicked. Each call is one hand-over to another thread
/// and back (some microseconds): a caller does a batch of work in one.
pub(crate) async fn off_runtime<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, tokio::task::JoinError> {
    let log = tracing::dispatcher::get_default(Clone::clone);
    tokio::task::spawn_blocking(move || tracing::dispatcher::with_default(&log, work)).await
}

/// Counts itself out of the node's `background` when dropped ([`NodeState::off_runtime`],
/// and a hook's record as it ends: [`HookRunner::fire_then`]).
pub(crate) struct Background(Arc<watch::Sender<usize>>);

impl Background {
    pub(crate) fn counted(background: &Arc<watch::Sender<usize>>) -> Self {
        background.send_modify(|n| *n += 1);
        Self(background.clone())
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl NodeState {
    /// Runs `work` with the node off the runtime ([`off_runtime`]): the store work of the
    /// API's handlers, of the links and of the ticker. Counted in `background` until it no
    /// longer holds the node, so that the node's shutdown waits for it (a link or a request
    /// dropped meanwhile leaves its work running): until what it gives back, which may hold
    /// the node (a link's work gives the link back), is taken by its caller or, the caller
    /// gone, dropped by the blocking pool.
    pub(crate) async fn off_runtime<T: Send + 'static>(
        self: &Arc<Self>,
        work: impl FnOnce(&NodeState) -> T + Send + 'static,
    ) -> Result<T, tokio::task::JoinError> {
        let counted = Background::counted(&self.background);
        let state = self.clone();
        let (out, counted) = off_runtime(move || {
            let out = work(&state);
            drop(state);
            // A tuple drops its fields in order: `out` before `counted`.
            (out, counted)
        })
        .await?;
        drop(counted);
        Ok(out)
    }

    pub(crate) fn store(&self) -> MutexGuard<'_, NodeStore> {
        // A panic while holding the lock leaves SQLite consistent (transactions roll back).
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The store's read-only connection, for the API's lists.
    pub(crate) fn reader(&self) -> MutexGuard<'_, NodeReader> {
        // It only reads: a panic while holding it leaves nothing half done.
        self.reader.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn emit(&self, e: Event) {
        // Before the API listens no one can be subscribed yet: kept for the first ones.
        self.early().keep(&e);
        // No subscribers is fine.
        let _ = self.events.send(e);
    }

    fn early(&self) -> MutexGuard<'_, EarlyEvents> {
        self.early.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The API listens from now: events emitted before are kept for the subscribers that
    /// connect within `STARTUP_EVENTS_KEPT_MS`, and no later ones are kept.
    fn api_listening(&self) {
        self.early().listening(std::time::Instant::now());
    }

    /// For a `/v1/events` subscriber that has just subscribed: the events emitted before the
    /// API listened, if it is within `STARTUP_EVENTS_KEPT_MS` of that ([`EarlyEvents`]). A
    /// subscriber has none twice: they were all emitted before any could subscribe.
    pub(crate) fn early_events(&self) -> Early {
        self.early().for_subscriber(std::time::Instant::now())
    }

    /// Frees the events kept for the API's first subscribers once their time is up.
    fn forget_early_events(&self) {
        self.early().forget(std::time::Instant::now());
    }

    pub(crate) fn wake_links(&self) {
        for w in &self.wake {
            w.notify_one();
        }
    }

    pub(crate) fn relays_connected(&self) -> usize {
        (0..self.links.len())
            .filter(|i| matches!(self.link(*i), Link::Up(_)))
            .count()
    }

    /// Relay `idx`'s link.
    pub(crate) fn link(&self, idx: usize) -> Link {
        self.links[idx]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Records relay `idx`'s link as up.
    pub(crate) fn link_up(&self, idx: usize, up: LinkUp) {
        *self.links[idx].lock().unwrap_or_else(|p| p.into_inner()) = Link::Up(up);
    }

    /// Records relay `idx`'s link as down because of `error`: an attempt that failed
    /// (`failed`), or a link lost; `refused` if that was a lasting refusal. The time
    /// it went down is kept across further failures; the refusal is the latest attempt's.
    pub(crate) fn link_down(
        &self,
        idx: usize,
        error: String,
        refused: Option<RelayRefusal>,
        failed: bool,
    ) {
        let mut l = self.links[idx].lock().unwrap_or_else(|p| p.into_inner());
        let mut down = match &*l {
            Link::Down(d) => d.clone(),
            Link::Up(_) => LinkDown::default(),
        };
        down.since_ms.get_or_insert_with(now_ms);
        down.error = Some(error);
        down.refused = refused;
        down.failed_attempts += u32::from(failed);
        *l = Link::Down(down);
    }

    /// Checks the whole quarantine against the roster now in force, and moves the
    /// deliveries that pass every check into the inbox, announced as received: a delivery
    /// held because its sender's key was not on this node's older roster is shown once the
    /// roster that lists the key is installed, however many deliveries were held after it
    /// (PROTOCOL.md 12.1 item 2). Those held for any other reason (a bad signature, a revoked
    /// key, an audience without this node) fail again and stay.
    ///
    /// Each check is a signature verification (about 35 µs) and a full quarantine may hold
    /// a hundred thousand small forgeries, seconds of work: it runs off the async runtime
    /// (`spawn_blocking`), a page at a time (`QUARANTINE_RECHECK_PAGE_ITEMS`), with the store
    /// locked only to read a page and to release what in it passed. One walk runs at a time;
    /// asked again meanwhile (a roster newer still), it walks once more when it ends, against
    /// the roster then in force.
    ///
    /// A walk that ends having checked every page against one roster records so in the
    /// store ([`store::QuarantineCheck`], against [`link::quarantine_check_basis`]), so that
    /// a start on that roster need not walk again ([`Self::recheck_quarantine_at_start`]).
    pub(crate) fn recheck_quarantine(&self) {
        self.recheck_in_background(
            Recheck::Quarantine,
            recheck_quarantine_walk,
            |state, against| {
                if let Some(roster) = against {
                    if let Err(e) = state.store().end_quarantine_walk(&roster) {
                        warn!(error = %e, "cannot record that the quarantine was checked against the roster; it is checked again at the next start");
                    }
                }
                state.quarantine_checked.send_modify(|n| *n += 1);
            },
        );
    }

    /// At start: checks the quarantine against the roster, unless the store records that
    /// it was checked in full against this very roster. A roster installed just before the
    /// node last stopped may not have been checked, or not in full (a walk cut short by the
    /// stop). The record is enough: every delivery held since that check was checked on
    /// arrival against the roster in force then, and one checked against another roster
    /// than the record's clears it in the transaction that holds it
    /// (`link::Link::deliver` passes the roster it checked against to
    /// [`NodeStore::store_deliveries_checked_against`]); a newer roster installed meanwhile
    /// is not the record's either. So a node restarted on an unchanged roster does not
    /// verify its whole quarantine again (seconds of work when it is full of small
    /// forgeries). Returns whether the quarantine is walked.
    fn recheck_quarantine_at_start(&self) -> bool {
        let roster = self.roster.borrow().clone();
        let digest = link::quarantine_check_basis(&roster);
        let check = self.store().quarantine_check();
        match check {
            Ok(Some(store::QuarantineCheck::Checked(d))) if d == digest => {
                info!(
                    roster = roster.version,
                    "the quarantine was checked in full against this roster before the node stopped: not checked again"
                );
                return false;
            }
            Ok(_) => {}
            Err(e) => {
                warn!(error = %e, "cannot read whether the quarantine was checked against this roster; checking it again")
            }
        }
        self.recheck_quarantine();
        true
    }

    /// Runs `pass` off the async runtime (`spawn_blocking`; in place outside a runtime),
    /// one run at a time for `which`: asked again while one runs, it runs `pass` once more
    /// when that pass ends, against the roster then in force. `pass` returns `None` if it
    /// stopped early (the node stopping or gone); otherwise, once no further pass is asked
    /// for, `ended` is called with its outcome under `which`'s flag lock (so that a request
    /// from then on starts a run of its own). Counted in `background` until it no longer
    /// holds the node, for the shutdown to wait on.
    fn recheck_in_background<T: 'static>(
        &self,
        which: Recheck,
        pass: fn(&std::sync::Weak<NodeState>) -> Option<T>,
        ended: fn(&NodeState, T),
    ) {
        {
            let mut r = self.rechecking(which);
            if r.running {
                r.again = true;
                return;
            }
            r.running = true;
        }
        self.background.send_modify(|n| *n += 1);
        let running = RecheckRunning {
            node: self.this.clone(),
            which,
            background: self.background.clone(),
            ended: false,
        };
        let node = self.this.clone();
        let runs = move || {
            // Moved in whole (a closure would capture only the field it sets): dropped as
            // the run ends, after what it held of the node.
            let mut running = running;
            loop {
                let Some(outcome) = pass(&node) else { return };
                let Some(state) = node.upgrade() else { return };
                let mut r = state.rechecking(which);
                if !std::mem::take(&mut r.again) {
                    ended(&state, outcome);
                    r.running = false;
                    running.ended = true;
                    return;
                }
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                // Not joined here: the node's shutdown waits on `background` instead, and
                // a pass holds the node only while it works (`Weak`) and stops once the
                // node stops.
                drop(rt.spawn_blocking(runs));
            }
            // Only outside a runtime (no caller is): here, then.
            Err(_) => runs(),
        }
    }

    fn rechecking(&self, which: Recheck) -> MutexGuard<'_, Rechecking> {
        let flags = match which {
            Recheck::Quarantine => &self.rechecking,
            Recheck::HeldReceipts => &self.receipts_rechecking,
        };
        flags.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Moves quarantined deliveries that now pass every check (`passed`, against roster
    /// `version`) into the inbox and announces them; tells the links of the room made.
    /// Returns how many were moved, `None` if the store failed (none was).
    fn release_quarantined(
        &self,
        passed: &[(hotline_proto::Digest, Envelope)],
        version: u64,
    ) -> Option<usize> {
        let (released, freed) = {
            let mut store = self.store();
            let before = store.quarantine_size().0;
            let released = store.release(passed, now_ms());
            (released, store.quarantine_size().0.held < before.held)
        };
        let released = match released {
            Ok(r) => r,
            Err(e) => {
                error!(error = %e, "cannot move quarantined messages that now verify into the inbox; checked again at the next roster or start");
                return None;
            }
        };
        for env in &released {
            info!(msg = %env.id, from = %env.sender, roster = version, "released from quarantine: the message verifies against the roster now in force");
        }
        // Room made, as by a discard: a link that refused deliveries for a full quarantine
        // connects anew, so that the relay delivers them again.
        if freed {
            self.quarantine_room.send_modify(|n| *n += 1);
        }
        self.announce_stored(&released);
        Some(released.len())
    }

    /// Tells the operator what forwarded receipts just kept said (`fresh`, from
    /// [`store::NodeStore::store_forwarded`], one per receipt of `verified`): a log line and an
    /// event for each first delivery or acknowledgement, an error for a first receipt of
    /// other content under one of our ids. Told once per (message, recipient, kind), and a
    /// mismatch once per (message, signer): the store says which items are news, and lists
    /// nothing for a receipt it did not keep.
    pub(crate) fn tell_forwarded(
        &self,
        verified: &[Verified<hotline_proto::Receipt>],
        fresh: Vec<store::Forwarded>,
    ) {
        for (r, news) in verified.iter().zip(fresh) {
            if news.unrelated {
                warn!(by = %r.recipient, "a forwarded receipt names no message this node sent to its signer: not kept");
            }
            for id in &news.mismatched {
                error!(msg = %id, by = %r.recipient, "a receipt names this message with content other than what this node sent: not recorded; the recipient holds altered content");
            }
            for store::News { id, status } in news.first {
                let ev = match &r.kind {
                    hotline_proto::ReceiptKind::Acknowledged { officer, note } => {
                        // Debug-quoted: the officer's name is another participant's text and may hold
                        // line breaks that would forge log lines.
                        info!(msg = %id, by = %r.recipient, status = %events::status_logged(status), officer = ?officer, "acknowledged");
                        Event::Acknowledged {
                            id,
                            by: r.recipient.clone(),
                            status,
                            officer: officer.clone(),
                            note: note.clone(),
                        }
                    }
                    _ => {
                        tracing::debug!(msg = %id, by = %r.recipient, status = %events::status_logged(status), "delivered");
                        Event::Delivered {
                            id,
                            by: r.recipient.clone(),
                            status,
                        }
                    }
                };
                self.emit(ev);
            }
        }
    }

    /// Checks the forwarded receipts held because this node's roster lacked their signer or
    /// its key (PROTOCOL.md 7.2) against the roster now in force. Those that now verify are
    /// recorded as if they had just arrived (delivery matrix, events); those that fail for a
    /// reason no newer roster mends (a bad signature by a key now listed, a signer now
    /// revoked) are dropped; the rest stay held, for the next roster. What a key rotated out
    /// of the roster signed passes only if a roster lists that key again, which a retired
    /// key's does not, so it is not accepted (PROTOCOL.md 12.1 item 3): it waits here until
    /// the bounds drop it.
    ///
    /// Up to `RECEIPTS_HELD_MAX` signature verifications (about 35 µs each): they run off
    /// the async runtime ([`Self::recheck_in_background`], one run at a time, again when
    /// done if a newer roster came meanwhile), with the store locked only to read the held
    /// receipts and to record what passed.
    pub(crate) fn recheck_held_receipts(&self) {
        self.recheck_in_background(
            Recheck::HeldReceipts,
            recheck_held_receipts_pass,
            |state, ()| state.receipts_checked.send_modify(|n| *n += 1),
        );
    }

    /// Announces messages just stored in the inbox (log, event, `on_message` hook) and
    /// records each as announced once its hook has ended ([`Self::announce`]).
    pub(crate) fn announce_stored<'a>(&self, envs: impl IntoIterator<Item = &'a Envelope>) {
        self.announce(envs, false);
    }

    /// Tells the operator of received messages (log line, `/v1/events`, `on_message` hook),
    /// `recovered` at start-up for those a node stopped before it had finished announcing,
    /// and records each as announced once its hook has ended (at once without one), as an
    /// escalation is: a hook still running dies with the node (systemd kills the unit's
    /// processes), so the page may not have gone out, and a message that does not page again
    /// (below IMMEDIATE) would otherwise never be told. A node stopped before then announces
    /// it again at its next start: an operator may be told twice after a crash, never not at
    /// all.
    ///
    /// One commit records the whole batch when no hook is configured, or for the hooks that
    /// end (or are skipped) before the last is fired; a hook that ends later records its
    /// own message as it ends, off the receive path, in the hook's task.
    fn announce<'a>(&self, envs: impl IntoIterator<Item = &'a Envelope>, recovered: bool) {
        // Some while this call fires hooks: a hook ending meanwhile adds its message here.
        let batch: Arc<Mutex<Option<Vec<hotline_proto::MessageId>>>> =
            Arc::new(Mutex::new(Some(Vec::new())));
        for env in envs {
            let ev = tell_received(self, env, recovered);
            let (id, batch, node) = (env.id, batch.clone(), self.this.clone());
            let ended = move || {
                if let Some(ids) = batch.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
                    ids.push(id);
                    return;
                }
                // Weak: a hook that outlives the node (killed at its timeout) must not keep
                // the store open; the message is then announced again at the next start.
                let Some(state) = node.upgrade() else { return };
                let recorded = state.store().mark_announced(&[id]);
                if let Err(e) = recorded {
                    error!(msg = %id, error = %e, "cannot record a received message as announced; it will be announced again at restart");
                }
            };
            self.hooks.fire_then(
                "on_message",
                self.config.hooks.on_message.as_ref(),
                &ev,
                ended,
            );
        }
        let ids = batch
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .unwrap_or_default();
        if ids.is_empty() {
            return;
        }
        if let Err(e) = self.store().mark_announced(&ids) {
            error!(error = %e, "cannot record announced messages; they will be announced again at restart");
        }
    }

    /// Installs a roster from a relay if it is signed by the pinned key and newer, then checks
    /// the quarantine against it.
    pub(crate) fn offer_roster(&self, signed: &hotline_proto::Signed<Roster>, from: &str) {
        let verified = match hotline_proto::verify_roster(signed, &self.config.roster_key) {
            Ok(v) => v,
            Err(e) => {
                // The usual case, a relay already moved to a new roster key, named as such
                // (the error's own text speaks of "this signer", which reads oddly here).
                let reason = match &e {
                    hotline_proto::VerifyError::KeyNotAuthorised(k) => {
                        format!("signed by key {k}, not by the pinned roster key (roster_key)")
                    }
                    other => format!("does not verify: {other}"),
                };
                error!(from, %reason, version = self.roster.borrow().version, "roster refused; keeping the current one");
                return;
            }
        };
        let v = verified.version;
        // One lock across the comparison, the save and the replacement: two links offering
        // versions 6 and 7 at once must not leave 6 installed after 7.
        let current = {
            let mut store = self.store();
            let current = self.roster.borrow().version;
            if v <= current {
                return;
            }
            match store.save_roster(&verified, now_ms()) {
                Ok(true) => {}
                Ok(false) => {
                    warn!(
                        version = v,
                        current,
                        "the store holds a roster as new as this one; keeping the current one"
                    );
                    return;
                }
                Err(e) => {
                    error!(error = %e, "cannot store the new roster; keeping the current one");
                    return;
                }
            }
            self.roster.send_replace(Arc::new(verified));
            current
        };
        info!(version = v, previous = current, "roster installed");
        self.recheck_quarantine();
        self.recheck_held_receipts();
        let ev = Event::RosterChanged { version: v };
        self.hooks.fire(
            "on_roster_changed",
            self.config.hooks.on_roster_changed.as_ref(),
            &ev,
        );
        self.emit(ev);
    }
}

/// What waits for a newer roster and is checked again off the async runtime
/// ([`NodeState::recheck_in_background`]).
#[derive(Clone, Copy, Debug)]
enum Recheck {
    /// The whole quarantine ([`NodeState::recheck_quarantine`]).
    Quarantine,
    /// The held forwarded receipts ([`NodeState::recheck_held_receipts`]).
    HeldReceipts,
}

/// Whether a check ([`Recheck`]) is running, and whether it must run again when done.
#[derive(Default)]
struct Rechecking {
    running: bool,
    again: bool,
}

/// A check running off the async runtime ([`NodeState::recheck_in_background`]). Dropped
/// before it ended normally (the node stopping, a panic), it marks the check not running,
/// so that the next request starts it again; either way it then counts itself out of
/// `background`, once it no longer holds the node.
struct RecheckRunning {
    node: std::sync::Weak<NodeState>,
    which: Recheck,
    background: Arc<watch::Sender<usize>>,
    /// Ended normally: its flags are already reset.
    ended: bool,
}

impl Drop for RecheckRunning {
    fn drop(&mut self) {
        if !self.ended {
            if let Some(state) = self.node.upgrade() {
                *state.rechecking(self.which) = Rechecking::default();
            }
        }
        self.background.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// One walk down the whole quarantine, newest first, a page at a time: each page is read
/// with the store locked, checked against the roster then in force with it unlocked, and
/// what passed is released at once (`NodeStore::release`) and announced. Holds the node
/// only for a page at a time. `None` if it stopped early (the node stopping or gone);
/// otherwise what it checked every page against ([`link::quarantine_check_basis`]), if one
/// roster was and every
/// page was read and released (`None` inside when a newer roster came midway, or the
/// store failed): the walk was begun in the store against that roster
/// (`NodeStore::begin_quarantine_walk`), to be ended there once no other walk is asked for.
fn recheck_quarantine_walk(
    node: &std::sync::Weak<NodeState>,
) -> Option<Option<hotline_proto::Digest>> {
    let (mut checked, mut released, mut place) = (0usize, 0usize, None);
    let mut first: Option<(Arc<Verified<Roster>>, Option<hotline_proto::Digest>)> = None;
    let mut whole = true;
    let mut version;
    let walk = {
        let state = node.upgrade()?;
        state
            .quarantine_walks
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1
    };
    loop {
        let state = node.upgrade()?;
        if *state.shutdown.borrow() {
            info!(
                checked,
                released, "the node stops: the quarantine is checked again at the next start"
            );
            return None;
        }
        let roster = state.roster.borrow().clone();
        version = roster.version;
        match &first {
            None => {
                // Begun in the store before the first page is read: a delivery held from
                // now on against another roster clears it, and the walk then ends
                // unrecorded.
                let digest = link::quarantine_check_basis(&roster);
                let begun = match state.store().begin_quarantine_walk(&digest) {
                    Ok(()) => Some(digest),
                    Err(e) => {
                        warn!(error = %e, "cannot record that the quarantine is being checked against the roster; it is checked again at the next start");
                        None
                    }
                };
                first = Some((roster.clone(), begun));
            }
            Some((r, _)) if !Arc::ptr_eq(r, &roster) => whole = false,
            Some(_) => {}
        }
        let page = state
            .store()
            .quarantined_below(place, limits::QUARANTINE_RECHECK_PAGE_ITEMS);
        let (held, last) = match page {
            Ok(p) => p,
            Err(e) => {
                error!(error = %e, checked, released, "cannot read the quarantine to check it against the roster; checked again at the next roster or start");
                return Some(None);
            }
        };
        checked += held.len();
        let passed: Vec<_> = held
            .into_iter()
            .filter_map(|q| {
                let env = link::check_delivery(&roster, &q.signed, &state.me).ok()?;
                Some((q.digest, env))
            })
            .collect();
        if !passed.is_empty() {
            match state.release_quarantined(&passed, roster.version) {
                Some(n) => released += n,
                None => whole = false,
            }
        }
        match last {
            Some(p) => place = Some(p),
            None => break,
        }
    }
    if checked > 0 {
        info!(
            checked,
            released,
            roster = version,
            walk,
            "quarantine checked against the roster now in force"
        );
    }
    Some(first.and_then(|(_, begun)| begun).filter(|_| whole))
}

/// One check of the held receipts against the roster then in force
/// ([`NodeState::recheck_held_receipts`]). `None` if the node is stopping or gone (they are
/// checked again at the next start).
fn recheck_held_receipts_pass(node: &std::sync::Weak<NodeState>) -> Option<()> {
    let state = node.upgrade()?;
    if *state.shutdown.borrow() {
        return None;
    }
    let held = match state.store().held_receipts() {
        Ok(h) => h,
        Err(e) => {
            error!(error = %e, "cannot read the held receipts to check them against the roster");
            return Some(());
        }
    };
    if held.is_empty() {
        return Some(());
    }
    let roster = state.roster.borrow().clone();
    let mut passed = Vec::new();
    let mut failed = Vec::new();
    for h in held {
        match roster.verify_receipt(&h.signed) {
            Ok(v) => passed.push(v),
            Err(e) if link::lagging(&e) => {}
            Err(e) => {
                warn!(receipt = %h.digest, error = %e, roster = roster.version, "a held forwarded receipt fails against the roster now in force: dropped");
                failed.push(h.digest);
            }
        }
    }
    if passed.is_empty() && failed.is_empty() {
        return Some(());
    }
    let fresh = match state
        .store()
        .release_receipts(&state.me, &passed, &failed, now_ms())
    {
        Ok(f) => f,
        Err(e) => {
            error!(error = %e, "cannot record held receipts that now verify; checked again at the next roster or start");
            return Some(());
        }
    };
    for r in &passed {
        info!(receipt = %r.signed().digest(), by = %r.recipient, roster = roster.version, "a held forwarded receipt verifies against the roster now in force: recorded");
    }
    state.tell_forwarded(&passed, fresh);
    Some(())
}

/// A running node.
pub struct NodeHandle {
    api_addr: std::net::SocketAddr,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
    /// How many checks against the roster run off the async runtime
    /// ([`NodeState::recheck_in_background`]): the shutdown waits for none to be.
    background: watch::Receiver<usize>,
}

impl NodeHandle {
    /// The local API address actually bound.
    pub fn api_addr(&self) -> std::net::SocketAddr {
        self.api_addr
    }

    /// Stops the links, the API and the tickers, and waits for them (at most 5 s, then
    /// aborts them); then waits (at most `SHUTDOWN_RECHECK_WAIT_MS`) for those aborted to
    /// let go of the node, for the checks of the quarantine and of the held
    /// receipts running off the async runtime to stop (a walk of the quarantine stops
    /// between two pages), for the store work of a task aborted or a request dropped
    /// ([`NodeState::off_runtime`]), and for what a hook that ended records
    /// ([`HookRunner::fire_then`]; not for a hook still running), so that nothing uses the
    /// store once the node says it stopped. A hook waiting its turn when this begins never
    /// starts (its record is left for the next start).
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        let all = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(Duration::from_secs(5), all)
            .await
            .is_err()
        {
            warn!("node tasks did not stop in time; aborting them");
            self.tasks.abort_all();
        }
        // A task that stopped meanwhile may have asked for a check: counted before it was
        // spawned, and it stops at once, the node stopping. The tasks aborted are joined
        // first: until then they may still hold the node (its store, its claim on the data
        // directory); their store work goes on, counted.
        let (tasks, background) = (&mut self.tasks, &mut self.background);
        let checks = async move {
            while tasks.join_next().await.is_some() {}
            // An error is every counter gone, so no check left either.
            let _ = background.wait_for(|n| *n == 0).await;
        };
        let wait = Duration::from_millis(limits::SHUTDOWN_RECHECK_WAIT_MS);
        if tokio::time::timeout(wait, checks).await.is_err() {
            warn!(
                wait_ms = limits::SHUTDOWN_RECHECK_WAIT_MS,
                "a check of the quarantine or of the held receipts against the roster, or other store work, did not stop in time; the store may still be in use for a moment"
            );
        }
        info!("node stopped");
    }
}

/// The node service.
pub struct Node;

/// Which roster a node starts on ([`start_roster`]).
#[derive(Debug)]
pub enum StartRoster<E> {
    /// The file's: the store holds none, or one no newer. `newer`: the store holds none or
    /// an older one, so it should keep this one.
    File {
        /// The roster.
        roster: Verified<Roster>,
        /// Newer than the store's (or the store holds none).
        newer: bool,
    },
    /// The store's (one a relay sent): newer than the file's, or the file's is unusable.
    Store {
        /// The roster.
        roster: Verified<Roster>,
        /// The file's version, or why the file's roster is unusable.
        file: Result<u64, E>,
    },
    /// Neither: the file's is unusable (why) and the store holds none.
    Neither(E),
}

/// The roster a node starts on: the newer of its file's and the one its store keeps (each
/// already verified against the pinned key), the file's when they are the same version, and
/// the store's when the file's is unusable. `hotline config check` checks a node's
/// configuration against the same choice.
pub fn start_roster<E>(
    from_file: Result<Verified<Roster>, E>,
    from_store: Option<Verified<Roster>>,
) -> StartRoster<E> {
    match (from_file, from_store) {
        (Ok(f), Some(s)) if s.version > f.version => StartRoster::Store {
            file: Ok(f.version),
            roster: s,
        },
        (Ok(f), s) => StartRoster::File {
            newer: s.is_none_or(|s| f.version > s.version),
            roster: f,
        },
        (Err(e), Some(s)) => StartRoster::Store {
            roster: s,
            file: Err(e),
        },
        (Err(e), None) => StartRoster::Neither(e),
    }
}

/// The roster a node starts on ([`start_roster`]), and whether the store should keep it.
fn load_start_roster(
    config: &NodeConfig,
    store: &NodeStore,
) -> Result<(Verified<Roster>, bool), NodeError> {
    let from_file =
        hotline_config::roster_file::read_verified_roster(&config.roster, &config.roster_key);
    let from_store = store
        .roster()?
        .and_then(|s| hotline_proto::verify_roster(&s, &config.roster_key).ok());
    match start_roster(from_file, from_store) {
        StartRoster::File { roster, newer } => Ok((roster, newer)),
        StartRoster::Store {
            roster,
            file: Ok(_),
        } => Ok((roster, false)),
        StartRoster::Store {
            roster,
            file: Err(e),
        } => {
            warn!(error = %e, version = roster.version, "roster file unusable; using the stored roster");
            Ok((roster, false))
        }
        StartRoster::Neither(e) => Err(NodeError::Roster(e.to_string())),
    }
}

/// Reads the API token file, creating it (mode 0600, random) if missing. The new file
/// appears whole or not at all, and durably ([`hotline_config::write_new`]): a power cut
/// just after a first start cannot leave an empty token file that would stop the node at
/// every start. If another process creates the file meanwhile (two starts racing), its
/// token is read and kept rather than replaced. First it removes the temporary files a
/// crash left beside the token file ([`hotline_config::remove_stale_temporaries`]): one
/// left after the link holds the token under a hidden second name, which no later write of
/// the file (there is none while it exists) would remove.
pub fn ensure_token(path: &std::path::Path) -> Result<String, NodeError> {
    let removed = hotline_config::remove_stale_temporaries(path);
    if removed > 0 {
        info!(file = %path.display(), removed, "removed temporary files a crash left beside the API token file");
    }
    match hotline_config::text_file::read_token(path) {
        Ok(t) => return Ok(t),
        Err(e) if e.is_not_found() => {}
        Err(e) => return Err(NodeError::Token(e)),
    }
    let mut b = [0u8; limits::API_TOKEN_BYTES];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut b);
    let token = hex::encode(b);
    match hotline_config::write_new(path, format!("{token}\n").as_bytes(), 0o600) {
        Ok(()) => Ok(token),
        // Created whole by another process since the read above: its token is the one.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            hotline_config::text_file::read_token(path).map_err(NodeError::Token)
        }
        Err(e) => Err(NodeError::Io(format!("{}: {e}", path.display()))),
    }
}

impl Node {
    /// Starts a node: opens the store, loads the roster, binds the API, starts the links.
    pub async fn spawn(config: NodeConfig) -> Result<NodeHandle, NodeError> {
        let key = hotline_config::keyfile::read_secret(&config.key)?;
        std::fs::create_dir_all(&config.data_dir).map_err(|e| {
            // A file in the way stays until someone moves it or the configuration: a
            // configuration error (exit 78), not one a restart may mend.
            match ConfigError::not_a_directory("data_dir", &config.data_dir) {
                Some(c) => NodeError::Config(c),
                None => NodeError::Io(format!("{}: {e}", config.data_dir.display())),
            }
        })?;
        // Waited for, off the runtime: the claim of a node that has just ended can outlive
        // it for a moment (`hotline_store::CLAIM_WAIT`).
        let dir = config.data_dir.clone();
        let claim = tokio::task::spawn_blocking(move || {
            hotline_store::lock_dir_waiting(&dir, hotline_store::CLAIM_WAIT)
        })
        .await
        .map_err(|e| NodeError::Io(format!("claiming the data directory: {e}")))??;
        let mut store = NodeStore::open(&config.data_dir)?;
        store.set_quarantine_max_bytes(config.quarantine_max_bytes);
        let relays: Vec<(String, String)> = config
            .relays
            .iter()
            .map(|r| (r.fingerprint.to_string(), r.address.to_string()))
            .collect();
        match store.set_relays(&relays)? {
            (0, 0) => {}
            (moved, dropped) => info!(
                moved,
                dropped,
                "the configuration lists the relays otherwise than at the last start: what waited for each relay (messages, acknowledgements) stays with it; a relay no longer listed left its share to relays listed for the first time, if any"
            ),
        }
        let (roster, keep) = load_start_roster(&config, &store)?;
        let me = config.participant.clone();
        match roster.participant(&me) {
            None => {
                return Err(NodeError::Roster(format!(
                    "{me} is not on roster version {}",
                    roster.version
                )))
            }
            Some(p) if !p.keys.contains(&hotline_proto::PublicKey::of(&key)) => {
                warn!(participant = %me, "this node's key is not on the roster: relays will refuse it")
            }
            Some(_) => {}
        }
        // Once the configuration's participant is known to be on the roster.
        store.claim_participant(&me, now_ms())?;
        // A roster started from the file is kept as one a relay sent is, so that a file
        // damaged or replaced later has the store to fall back on (`load_start_roster`).
        if keep {
            match store.save_roster(&roster, now_ms()) {
                Ok(true) => info!(
                    version = roster.version,
                    "roster from the file kept in the store"
                ),
                Ok(false) => {}
                Err(e) => {
                    warn!(error = %e, version = roster.version, "cannot keep the file's roster in the store; starting on it all the same")
                }
            }
        }
        let token = ensure_token(&config.token_file)?;
        // Once the store is made and brought to this version.
        let reader = NodeReader::open(&config.data_dir)?;
        let relays = config.relays.len();
        info!(participant = %me, roster = roster.version, relays, outbox = store.outbox_len()?, "node starting");
        let (roster_tx, _) = watch::channel(Arc::new(roster));
        let (events, _) = broadcast::channel(limits::EVENTS_BUFFER);
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let background = Arc::new(watch::channel(0).0);
        let state = Arc::new_cyclic(|this| NodeState {
            hooks: HookRunner::new(
                config.hook_timeout_ms(),
                background.clone(),
                shutdown_rx.clone(),
            ),
            me,
            key,
            store: Mutex::new(store),
            reader: Mutex::new(reader),
            roster: roster_tx,
            events,
            wake: (0..relays).map(|_| Arc::new(Notify::new())).collect(),
            quarantine_room: watch::channel(0).0,
            rechecking: Mutex::new(Rechecking::default()),
            receipts_rechecking: Mutex::new(Rechecking::default()),
            quarantine_checked: watch::channel(0).0,
            receipts_checked: watch::channel(0).0,
            quarantine_walks: Default::default(),
            background: background.clone(),
            links: (0..relays)
                .map(|_| Mutex::new(Link::Down(LinkDown::default())))
                .collect(),
            token,
            shutdown: shutdown_rx.clone(),
            config,
            _claim: claim,
            early: Mutex::new(EarlyEvents::default()),
            this: this.clone(),
        });
        // Everything that can fail comes first, before anything runs beside this call: a
        // start that fails must leave nothing behind that holds the node (and so its store
        // and the data directory's claim), fires a hook, or walks the quarantine. Once the
        // first hook is fired or the walk launched, nothing below returns an error.
        // Messages stored just before the node last stopped may never have been announced,
        // nor escalations made then (or their hook never ended).
        let pending = state.store().unannounced()?;
        let overdue = state.store().unannounced_overdue()?;
        // Bound now, served once what the start announces is kept for the first subscribers
        // (`api_listening` below): a client connecting meanwhile waits in the backlog.
        let listener = tokio::net::TcpListener::bind(state.config.api_listen)
            .await
            .map_err(|e| NodeError::Io(format!("local API {}: {e}", state.config.api_listen)))?;
        let api_addr = listener
            .local_addr()
            .map_err(|e| NodeError::Io(e.to_string()))?;
        let bind: std::net::SocketAddr = if state.config.relays.iter().all(|r| r.address.is_ipv6())
        {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        };
        let endpoints = state
            .config
            .relays
            .iter()
            .map(|r| {
                hotline_net::transport::client_endpoint(
                    bind,
                    vec![r.fingerprint],
                    &hotline_net::TransportLimits::default(),
                )
            })
            .collect::<Result<Vec<_>, _>>()?;

        if !pending.is_empty() {
            warn!(
                count = pending.len(),
                "announcing messages stored before the node stopped"
            );
            state.announce(&pending, true);
        }
        if !overdue.is_empty() {
            warn!(
                count = overdue.len(),
                "announcing overdue escalations made before the node stopped"
            );
            for o in overdue {
                escalate(&state, o, true);
            }
        }
        // A roster installed just before the node last stopped may not have been checked
        // against the held receipts and the quarantine yet. The held receipts are checked
        // before the API listens, so that what they tell is kept for its first subscribers
        // (`EarlyEvents`), but off the runtime all the same (up to `RECEIPTS_HELD_MAX`
        // signatures; nothing else runs yet). The quarantine is walked in the background
        // (seconds when full), and only if it was not checked in full against this roster
        // already: the API and the links start meanwhile, and what it releases is announced
        // as it goes (kept for the first subscribers while the API is not yet listening).
        let node = Arc::downgrade(&state);
        if let Err(e) = tokio::task::spawn_blocking(move || recheck_held_receipts_pass(&node)).await
        {
            error!(error = %e, "the check of the held receipts against the roster failed; they are checked again at the next roster or start");
        }
        state.recheck_quarantine_at_start();

        let mut tasks = JoinSet::new();
        // Before the first subscriber can connect: what was announced until now is kept
        // for it (`EarlyEvents`).
        state.api_listening();
        info!(addr = %api_addr, "local API listening");
        tasks.spawn(api::serve(listener, state.clone(), shutdown_rx.clone()));
        for (idx, endpoint) in endpoints.into_iter().enumerate() {
            tasks.spawn(link::run(state.clone(), idx, endpoint, shutdown_rx.clone()));
        }
        tasks.spawn(tick(state.clone(), shutdown_rx.clone()));
        Ok(NodeHandle {
            api_addr,
            shutdown: shutdown_tx,
            tasks,
            background: background.subscribe(),
        })
    }
}

/// Deadlines, paging and the unreachable watchdog.
async fn tick(state: Arc<NodeState>, mut shutdown: watch::Receiver<bool>) {
    let mut every = tokio::time::interval(Duration::from_millis(limits::DEADLINE_TICK_MS));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut unreachable = Unreachable::new(std::time::Instant::now());
    let mut checks = Some(TickChecks::new());
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = every.tick() => {}
        }
        state.forget_early_events();
        // Off the runtime, and awaited: a tick waiting for the store skips the ticks that
        // fall meanwhile rather than running beside them.
        let mut taken = checks.take().unwrap_or_else(TickChecks::new);
        let ran = state
            .off_runtime(move |state| {
                taken.run(state);
                taken
            })
            .await;
        checks = match ran {
            Ok(c) => Some(c),
            Err(e) => {
                error!(error = %e, "the deadline and paging checks failed; they run again at the next tick");
                None
            }
        };
        let after = Duration::from_millis(state.config.unreachable_after_ms());
        let connected = state.relays_connected() > 0;
        if let Some(for_ms) = unreachable.observe(connected, std::time::Instant::now(), after) {
            error!(for_ms, "no relay reachable");
            let ev = Event::Unreachable { for_ms };
            state.hooks.fire(
                "on_unreachable",
                state.config.hooks.on_unreachable.as_ref(),
                &ev,
            );
            state.emit(ev);
        }
    }
}

/// The ticker's store work: overdue messages escalated and unacknowledged ones paged again,
/// run off the runtime at each tick ([`NodeState::off_runtime`]).
struct TickChecks {
    // Each runs every tick: a store that cannot be written (a full disk) would otherwise
    // log the same error four times a second.
    deadline: recurring::Recurring,
    paging: recurring::Recurring,
}

impl TickChecks {
    fn new() -> Self {
        Self {
            deadline: recurring::Recurring::new("deadline check"),
            paging: recurring::Recurring::new("paging check"),
        }
    }

    fn run(&mut self, state: &NodeState) {
        let now = now_ms();
        let overdue = self.deadline.take(state.store().mark_overdue(now));
        for o in overdue {
            escalate(state, o, false);
        }
        let pages = self.paging.take(
            state
                .store()
                .due_pages(now, state.config.paging_interval_ms()),
        );
        for env in pages {
            warn!(msg = %env.id, from = %env.sender, precedence = ?env.precedence, "still unacknowledged: paging again");
            let ev = received_event(&env, true, false);
            state
                .hooks
                .fire("on_message", state.config.hooks.on_message.as_ref(), &ev);
            state.emit(ev);
        }
    }
}

/// The unreachable watchdog, without I/O: whether the node has been without any relay link
/// for long enough to raise the alarm (once per spell). Timed by the monotonic clock: the
/// wall clock stepped back (an NTP correction of a clock that ran fast) held the alarm for
/// as long as the step, and stepped forward raised it at a reconnection that took a moment.
#[derive(Debug)]
struct Unreachable {
    /// When a link was last seen up, or the watchdog started.
    last_connected: std::time::Instant,
    /// Whether the alarm went off in this spell without a link.
    fired: bool,
}

impl Unreachable {
    fn new(now: std::time::Instant) -> Self {
        Self {
            last_connected: now,
            fired: false,
        }
    }

    /// One look at the links at `now`; the spell's length in milliseconds when the alarm
    /// goes off (no link for `after`, and not yet told in this spell).
    fn observe(
        &mut self,
        connected: bool,
        now: std::time::Instant,
        after: Duration,
    ) -> Option<u64> {
        if connected {
            self.last_connected = now;
            self.fired = false;
            return None;
        }
        let spell = now.saturating_duration_since(self.last_connected);
        if self.fired || spell < after {
            return None;
        }
        self.fired = true;
        Some(u64::try_from(spell.as_millis()).unwrap_or(u64::MAX))
    }
}

/// Tells the operator of an escalation ([`NodeStore::mark_overdue`]): log line,
/// `/v1/events`, `on_overdue` hook; and records it as announced once the hook has ended
/// (at once without one). A node stopped before that announces it again at its next start,
/// `recovered`: the page may not have gone out, as a hook still running is killed with the
/// node (by systemd, with the unit's processes). An operator may be told twice after a
/// crash, never not at all.
fn escalate(state: &NodeState, o: crate::store::Overdue, recovered: bool) {
    let crate::store::Overdue {
        id,
        subject,
        recipients,
        status,
    } = o;
    let ids = recipients
        .iter()
        .map(|r| r.as_str())
        .collect::<Vec<_>>()
        .join(",");
    // With its status, as the arrival's line and event have it: an escalation of a drill's
    // message must not read as one of actual traffic.
    warn!(msg = %id, status = %events::status_logged(status), subject = ?subject, recipients = %ids, recovered, "respond-by passed without acknowledgement: overdue");
    let ev = Event::Overdue {
        id,
        subject,
        status,
        recipients: recipients.clone(),
        recovered,
    };
    state.emit(ev.clone());
    // Weak: a hook that outlives the node (killed at its timeout) must not keep the store
    // open; the escalation is then announced again at the next start.
    let node = state.this.clone();
    let ended = move || {
        let Some(state) = node.upgrade() else { return };
        let recorded = state.store().overdue_announced(&id, &recipients);
        if let Err(e) = recorded {
            error!(msg = %id, error = %e, "cannot record an overdue escalation as announced; it will be announced again at restart");
        }
    };
    state.hooks.fire_then(
        "on_overdue",
        state.config.hooks.on_overdue.as_ref(),
        &ev,
        ended,
    );
}

/// Tells the operator of a received message: log line and `/v1/events`; returns the event,
/// for the paging hook ([`NodeState::announce`]).
fn tell_received(state: &NodeState, env: &hotline_proto::Envelope, recovered: bool) -> Event {
    // The subject is the sender's text: Debug-quoted so that a line break in it cannot forge a
    // log line.
    if env.precedence.pages() {
        warn!(msg = %env.id, from = %env.sender, precedence = ?env.precedence, status = ?env.status, subject = ?env.subject, recovered, "urgent message received");
    } else {
        info!(msg = %env.id, from = %env.sender, precedence = ?env.precedence, status = ?env.status, subject = ?env.subject, recovered, "message received");
    }
    let ev = received_event(env, false, recovered);
    state.emit(ev.clone());
    ev
}

pub(crate) fn received_event(
    env: &hotline_proto::Envelope,
    repage: bool,
    recovered: bool,
) -> Event {
    Event::MessageReceived {
        id: env.id,
        from: env.sender.clone(),
        kind: env.kind,
        precedence: env.precedence,
        status: env.status,
        subject: env.subject.clone(),
        respond_by_ms: env.respond_by_ms,
        references: env.references.clone(),
        repage,
        recovered,
    }
}

/// A node's shared state without its tasks, on a store in `dir`, for tests of what reads
/// and writes it (the API's handlers): participant KAZ (key `[1; 32]`) on a roster with KGZ
/// and the Secretariat, one relay that nothing answers at.
#[cfg(test)]
pub(crate) fn test_state(dir: &std::path::Path) -> Arc<NodeState> {
    let (shutdown_tx, shutdown) = watch::channel(false);
    // Never sent: the state's tasks are not running.
    std::mem::forget(shutdown_tx);
    test_state_on(dir, 1, shutdown)
}

/// [`test_state`] on a roster of `version` (the same participants, signed by the same key),
/// stopping when `shutdown` says so.
#[cfg(test)]
pub(crate) fn test_state_on(
    dir: &std::path::Path,
    version: u64,
    shutdown: watch::Receiver<bool>,
) -> Arc<NodeState> {
    test_state_with(dir, version, shutdown, "")
}

/// [`test_state_on`] with `more` added to its configuration (a `[hooks]` table).
#[cfg(test)]
pub(crate) fn test_state_with(
    dir: &std::path::Path,
    version: u64,
    shutdown: watch::Receiver<bool>,
    more: &str,
) -> Arc<NodeState> {
    #![allow(clippy::unwrap_used)]
    use hotline_proto::{Participant, PublicKey, Role};
    let key = SigningKey::from_bytes(&[1; 32]);
    let roster_key = SigningKey::from_bytes(&[3; 32]);
    let text = format!(
        "participant = \"KAZ\"\nkey = \"KAZ.key\"\nroster = \"roster.signed\"\n\
         roster_key = \"{}\"\ndata_dir = \"data\"\n\n[[relays]]\naddress = \"127.0.0.1:9\"\n\
         fingerprint = \"{}\"\n\n[api]\ntoken_file = \"api.token\"\n{more}",
        PublicKey::of(&roster_key),
        "ab".repeat(32)
    );
    let config = NodeConfig::parse(&text, &dir.join("node.toml")).unwrap();
    std::fs::create_dir_all(&config.data_dir).unwrap();
    let claim = hotline_store::lock_dir(&config.data_dir).unwrap();
    let store = NodeStore::open(&config.data_dir).unwrap();
    let reader = NodeReader::open(&config.data_dir).unwrap();
    let member = |id: &str, key: &SigningKey| Participant {
        id: ParticipantId::new(id).unwrap(),
        name: id.into(),
        role: if id == "SEC" {
            Role::Secretariat
        } else {
            Role::Member
        },
        keys: vec![PublicKey::of(key)],
        revoked: false,
    };
    let roster = Roster {
        protocol_version: hotline_proto::PROTOCOL_VERSION,
        version,
        issued_at_ms: 1,
        network: "CICA".into(),
        participants: vec![
            member("KAZ", &key),
            member("KGZ", &SigningKey::from_bytes(&[2; 32])),
            member("SEC", &SigningKey::from_bytes(&[4; 32])),
        ],
        groups: vec![],
    };
    let signed = hotline_proto::Signed::sign(&roster, &roster_key).unwrap();
    let roster = hotline_proto::verify_roster(&signed, &PublicKey::of(&roster_key)).unwrap();
    let background = Arc::new(watch::channel(0).0);
    Arc::new_cyclic(|this| NodeState {
        hooks: HookRunner::new(
            config.hook_timeout_ms(),
            background.clone(),
            shutdown.clone(),
        ),
        me: ParticipantId::new("KAZ").unwrap(),
        key,
        store: Mutex::new(store),
        reader: Mutex::new(reader),
        roster: watch::channel(Arc::new(roster)).0,
        events: broadcast::channel(limits::EVENTS_BUFFER).0,
        wake: vec![Arc::new(Notify::new())],
        quarantine_room: watch::channel(0).0,
        rechecking: Mutex::new(Rechecking::default()),
        receipts_rechecking: Mutex::new(Rechecking::default()),
        quarantine_checked: watch::channel(0).0,
        receipts_checked: watch::channel(0).0,
        quarantine_walks: Default::default(),
        background,
        links: vec![Mutex::new(Link::Down(LinkDown::default()))],
        token: "token".into(),
        shutdown,
        config,
        _claim: claim,
        early: Mutex::new(EarlyEvents::default()),
        this: this.clone(),
    })
}

/// A thread that holds a lock (the node's store, its read connection, any mutex) until
/// [`Held::release`], or until `wait` has passed: for tests that show what does, and what
/// does not, wait for it.
#[cfg(test)]
pub(crate) struct Held {
    release: std::sync::mpsc::Sender<()>,
    holder: std::thread::JoinHandle<bool>,
}

#[cfg(test)]
impl Held {
    /// Runs `hold` on a thread of its own: it takes its locks, then calls the function it is
    /// given, which returns once released (or `wait` has passed). Returns once they are held.
    pub(crate) fn new(wait: Duration, hold: impl FnOnce(&dyn Fn()) + Send + 'static) -> Self {
        #![allow(clippy::unwrap_used)]
        let (locked_tx, locked) = std::sync::mpsc::channel();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let holder = std::thread::spawn(move || {
            let timed_out = std::cell::Cell::new(false);
            hold(&|| {
                locked_tx.send(()).unwrap();
                timed_out.set(released.recv_timeout(wait).is_err());
            });
            timed_out.get()
        });
        locked.recv().unwrap();
        Self { release, holder }
    }

    /// The node's store held, and its read connection too with `reader`.
    pub(crate) fn store(state: &Arc<NodeState>, reader: bool, wait: Duration) -> Self {
        let state = state.clone();
        Self::new(wait, move |hold| {
            let _store = state.store();
            let _reader = reader.then(|| state.reader());
            hold();
        })
    }

    /// Lets go: whether it was held until `wait` passed, that is, whether what wanted it
    /// waited on the thread that releases it (a test's runtime).
    pub(crate) fn release(self) -> bool {
        #![allow(clippy::unwrap_used)]
        self.release.send(()).ok();
        self.holder.join().unwrap()
    }
}

/// `n` deliveries held in quarantine, as a relay delivering forgeries hands them over:
/// signed by a key no roster lists, each with the reason it failed.
#[cfg(test)]
pub(crate) fn test_forgeries(
    state: &NodeState,
    n: usize,
) -> Vec<(
    hotline_proto::Signed<hotline_proto::Envelope>,
    Result<hotline_proto::Envelope, String>,
)> {
    #![allow(clippy::unwrap_used)]
    use hotline_proto::{Audience, Kind, MessageId, Precedence, Status};
    let sender = SigningKey::from_bytes(&[9; 32]);
    (0..n)
        .map(|i| {
            let env = Envelope {
                version: hotline_proto::PROTOCOL_VERSION,
                id: MessageId::random(),
                sender: ParticipantId::new("TJK").unwrap(),
                seq: hotline_proto::Seq(i as u64 + 1),
                audience: Audience::Participants(vec![state.me.clone()]),
                kind: Kind::Alert,
                precedence: Precedence::Routine,
                status: Status::Actual,
                created_at_ms: 1_000,
                respond_by_ms: None,
                references: vec![],
                category: None,
                subject: format!("Forgery {i}"),
                body: String::new(),
            };
            let signed = hotline_proto::Signed::sign(&env, &sender).unwrap();
            (signed, Err("test: unknown sender".to_owned()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A start walks the whole quarantine only if the store does not record that it was
    /// checked in full against the roster the node starts on: a node restarted on an
    /// unchanged roster walked its whole quarantine again (seconds of verification when it
    /// is full of small forgeries). One whose roster changed while it was stopped, whose
    /// walk was cut short, or that held a delivery checked against another roster since
    /// the walk, walks it again.
    #[test]
    fn a_start_walks_the_quarantine_unless_it_was_checked_against_this_roster() {
        use std::sync::atomic::Ordering::Relaxed;
        let dir = tempfile::tempdir().unwrap();
        // A start on roster `version` (stopping at once if `stopping`): whether it walked,
        // by its answer and by its count of walks begun (the two must agree), and the
        // record it left.
        let start = |version: u64, stopping: bool| {
            let state = test_state_on(dir.path(), version, watch::channel(stopping).1);
            let walked = state.recheck_quarantine_at_start();
            let walks = state.quarantine_walks.load(Relaxed);
            assert_eq!(walks, u64::from(walked), "v{version}");
            let record = state.store().quarantine_check().unwrap();
            let roster = link::quarantine_check_basis(&state.roster.borrow());
            (walked, record, roster)
        };
        {
            let state = test_state(dir.path());
            state
                .store()
                .store_deliveries(&test_forgeries(&state, 3), 1_000)
                .unwrap();
        }
        use store::QuarantineCheck::Checked;
        let (walked, record, v1) = start(1, false);
        assert!(walked, "never checked");
        assert_eq!(record, Some(Checked(v1)));
        let (walked, record, _) = start(1, false);
        assert!(!walked, "restarted on the roster it was checked against");
        assert_eq!(record, Some(Checked(v1)));

        // A roster changed while the node was stopped, and its walk cut short by a stop
        // before its first page: nothing checked against it, so the next start walks.
        let (walked, record, _) = start(2, true);
        assert!(walked, "a roster not checked against");
        assert_eq!(record, Some(Checked(v1)), "nothing recorded");
        let (walked, record, v2) = start(2, false);
        assert!(walked, "the cut-short walk is done again");
        assert_eq!(record, Some(Checked(v2)));
        assert!(!start(2, false).0);

        // A walk begun and cut short midway.
        test_state(dir.path())
            .store()
            .begin_quarantine_walk(&v2)
            .unwrap();
        assert!(start(2, false).0, "a walk cut short midway is done again");

        // A delivery held against the roster checked against keeps the record; one held
        // against another roster (checked before a newer one came) clears it.
        let hold = |against: &hotline_proto::Digest| {
            let state = test_state_on(dir.path(), 2, watch::channel(true).1);
            state
                .store()
                .store_deliveries_checked_against(&test_forgeries(&state, 1), Some(against), 2_000)
                .unwrap();
        };
        hold(&v2);
        assert!(
            !start(2, false).0,
            "held against the roster checked against"
        );
        hold(&v1);
        let (walked, record, _) = start(2, false);
        assert!(walked, "held against an older roster after the check");
        assert_eq!(record, Some(Checked(v2)));
    }

    /// A start that fails once it has decided to walk the quarantine (here the API's
    /// address is taken) returned its error with the walk it had launched still running:
    /// holding the node for a page at a time, and with it the store and the data
    /// directory's claim, until it found the node gone. A caller that starts again at once
    /// (a supervisor, a test) found the directory claimed by a node that had failed. Now
    /// nothing can fail once anything runs in the background: the walk is launched, and
    /// the tasks spawned, only after the API's address is bound and the links' endpoints
    /// made, so a start that fails leaves nothing running and the store untouched by any
    /// walk. (Before the fix this failed whenever the walk took the node before the start
    /// returned, a race that the start lost at its first attempt in every run seen; it is
    /// tried several times, on a quarantine of many pages.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_start_that_fails_leaves_no_walk_of_the_quarantine_running() {
        let dir = tempfile::tempdir().unwrap();
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let api = taken.local_addr().unwrap();
        let data = {
            let state = test_state(dir.path());
            state
                .store()
                .store_deliveries(
                    &test_forgeries(&state, 12 * limits::QUARANTINE_RECHECK_PAGE_ITEMS),
                    1_000,
                )
                .unwrap();
            hotline_config::keyfile::write_secret(
                &state.config.key,
                &state.key,
                hotline_config::keyfile::IfExists::Replace,
            )
            .unwrap();
            let roster: Roster = (***state.roster.borrow()).clone();
            let signed =
                hotline_proto::Signed::sign(&roster, &SigningKey::from_bytes(&[3; 32])).unwrap();
            hotline_config::roster_file::write_signed_roster(&state.config.roster, &signed)
                .unwrap();
            state.config.data_dir.clone()
        };
        let config = || {
            let mut c = test_state(dir.path()).config.clone();
            c.api_listen = api;
            c
        };
        for attempt in 0..8 {
            let config = config();
            match Node::spawn(config).await {
                Err(NodeError::Io(e)) => assert!(e.contains("local API"), "{e}"),
                Err(e) => panic!("attempt {attempt}: failed otherwise: {e}"),
                Ok(_) => panic!("attempt {attempt}: started on an address taken"),
            }
            // At once: nothing of the node that failed holds its directory or its store.
            let claim = hotline_store::lock_dir(&data);
            assert!(
                claim.is_ok(),
                "attempt {attempt}: the data directory is still claimed after the start failed"
            );
            drop(claim);
            let state = test_state(dir.path());
            assert_eq!(
                state.store().quarantine_check().unwrap(),
                None,
                "attempt {attempt}: a walk of the quarantine was begun by a start that failed"
            );
        }
        drop(taken);
    }

    /// The ticker waiting for the store (its lock held by a long operation, or a slow
    /// disk) leaves the runtime's threads free: it looked for overdue messages and pages
    /// due on a runtime thread, so with the store's lock held elsewhere (here by a plain
    /// thread) it held that thread, and with it (on this test's runtime, of one thread; the
    /// node's has two) the links, the API and every timer, four times a second for as long
    /// as the lock was held.
    #[tokio::test]
    async fn a_tick_waiting_for_the_store_leaves_the_runtime_free() {
        const WAIT: Duration = Duration::from_secs(10);
        let dir = tempfile::tempdir().unwrap();
        let (stop, stopping) = watch::channel(false);
        let state = test_state_on(dir.path(), 1, stopping.clone());
        let mut background = state.background.subscribe();
        let held = Held::store(&state, false, WAIT);
        // Its first tick is at once.
        let ticker = tokio::spawn(tick(state.clone(), stopping));
        // The ticker waits for the store, off the runtime: a timer still fires meanwhile.
        let waiting = tokio::time::timeout(WAIT, async {
            background.wait_for(|n| *n > 0).await.unwrap();
            tokio::time::sleep(Duration::from_millis(1)).await;
        })
        .await;
        assert!(!held.release(), "the runtime waited for the store");
        assert!(
            waiting.is_ok(),
            "the ticker never waited for the store off the runtime"
        );
        // And goes on once the store is free, stopping when the node does.
        let idle = tokio::time::timeout(WAIT, background.wait_for(|n| *n == 0)).await;
        assert!(idle.is_ok(), "the ticker's store work never ended");
        stop.send(true).unwrap();
        tokio::time::timeout(WAIT, ticker).await.unwrap().unwrap();
    }

    /// Store work whose caller went away (a link's task aborted at shutdown, its store work
    /// outlasting the wait) is counted in `background` until what it gives back is dropped
    /// too: a link's work gives the link back, and with it the node. It was counted out as
    /// its closure returned, so the shutdown could say the node stopped while the link,
    /// dropped by the blocking pool after that, still held the node and its store open.
    #[tokio::test]
    async fn store_work_whose_caller_went_away_is_counted_until_its_result_is_dropped() {
        const WAIT: Duration = Duration::from_secs(10);
        /// Stands for a link given back: holds the node until the test releases it.
        struct Given {
            _node: Option<Arc<NodeState>>,
            dropping: tokio::sync::mpsc::UnboundedSender<()>,
            release: std::sync::mpsc::Receiver<()>,
        }
        impl Drop for Given {
            fn drop(&mut self) {
                let _ = self.dropping.send(());
                let _ = self.release.recv_timeout(WAIT);
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let state = test_state(dir.path());
        let mut background = state.background.subscribe();
        let (started_tx, mut started) = tokio::sync::mpsc::unbounded_channel();
        let (go, going) = std::sync::mpsc::channel::<()>();
        let (dropping_tx, mut dropping) = tokio::sync::mpsc::unbounded_channel();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let caller = tokio::spawn({
            let state = state.clone();
            async move {
                let _ = state
                    .off_runtime(move |state| {
                        started_tx.send(()).unwrap();
                        let _ = going.recv_timeout(WAIT);
                        Given {
                            _node: state.this.upgrade(),
                            dropping: dropping_tx,
                            release: released,
                        }
                    })
                    .await;
            }
        });
        tokio::time::timeout(WAIT, started.recv())
            .await
            .unwrap()
            .unwrap();
        caller.abort();
        assert!(caller.await.unwrap_err().is_cancelled());
        go.send(()).unwrap();
        // The work has ended and its result, still holding the node, is being dropped.
        tokio::time::timeout(WAIT, dropping.recv())
            .await
            .unwrap()
            .unwrap();
        let counted = *background.borrow();
        release.send(()).unwrap();
        assert_eq!(
            counted, 1,
            "the work was counted out while what it gave back still held the node"
        );
        let idle = tokio::time::timeout(WAIT, background.wait_for(|n| *n == 0)).await;
        assert!(idle.is_ok(), "the work was never counted out");
    }

    /// A node whose task did not stop within the shutdown's wait (a link or the ticker
    /// whose store work outlasts it; here one that never looks at the signal) says it
    /// stopped only once that task, aborted, no longer holds the node and its store: the
    /// tasks were aborted and not joined, so an aborted task not yet dropped held the
    /// store open, and the claim on its data directory, after the node said it stopped.
    #[tokio::test]
    async fn a_node_whose_task_was_aborted_says_it_stopped_once_the_task_let_go() {
        let dir = tempfile::tempdir().unwrap();
        let (shutdown, stopping) = watch::channel(false);
        let state = test_state_on(dir.path(), 1, stopping);
        let data = state.config.data_dir.clone();
        let mut tasks = JoinSet::new();
        tasks.spawn({
            let state = state.clone();
            async move {
                let _node = state;
                std::future::pending::<()>().await;
            }
        });
        let handle = NodeHandle {
            api_addr: (std::net::Ipv4Addr::LOCALHOST, 0).into(),
            shutdown,
            tasks,
            background: state.background.subscribe(),
        };
        let node = Arc::downgrade(&state);
        drop(state);
        handle.shutdown().await;
        assert!(
            node.upgrade().is_none(),
            "an aborted task still holds the node after it said it stopped"
        );
        hotline_store::lock_dir(&data).expect("the data directory is free");
    }

    /// A hook's record as it ends (an arrival's `on_message` hook, recording the message
    /// as announced) is counted in `background`, so that a node says it stopped only once
    /// that record no longer holds the node: it was not counted, so a hook that ended as
    /// the node stopped, its record waiting for the store (here held by another thread, as
    /// a long write holds it), held the node, its store and the claim on its data
    /// directory after the node said it stopped.
    #[tokio::test]
    async fn a_node_says_it_stopped_once_a_hooks_record_as_it_ends_let_go() {
        // Less than the shutdown's wait (`SHUTDOWN_RECHECK_WAIT_MS`), which it must fit in.
        const HELD: Duration = Duration::from_secs(2);
        let dir = tempfile::tempdir().unwrap();
        // The hook ends once the test says so: once the store is held.
        let go = dir.path().join("go");
        let hook = format!(
            "\n[hooks]\non_message = [\"sh\", \"-c\", \"until [ -e '{}' ]; do sleep 0.01; done\"]\n",
            go.display()
        );
        let (shutdown, stopping) = watch::channel(false);
        let state = test_state_with(dir.path(), 1, stopping, &hook);
        let data = state.config.data_dir.clone();
        let env = Envelope {
            subject: "Genuine".into(),
            sender: ParticipantId::new("KGZ").unwrap(),
            ..test_forgeries(&state, 1)[0].0.decode_unverified().unwrap()
        };
        let signed = hotline_proto::Signed::sign(&env, &SigningKey::from_bytes(&[2; 32]));
        state
            .store()
            .store_deliveries(&[(signed.unwrap(), Ok(env.clone()))], 2_000)
            .unwrap();
        state.announce_stored([&env]);
        let handle = NodeHandle {
            api_addr: (std::net::Ipv4Addr::LOCALHOST, 0).into(),
            shutdown,
            tasks: JoinSet::new(),
            background: state.background.subscribe(),
        };
        let node = Arc::downgrade(&state);
        // Held by a thread that holds the node too, until HELD has passed.
        let held = Held::store(&state, false, HELD);
        std::fs::write(&go, b"").unwrap();
        // The hook has ended and its record, holding the node, waits for the store: the
        // node is held by this test, the thread holding the store, and the record.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        while node.strong_count() < 3 && tokio::time::Instant::now() < deadline {
            tick.tick().await;
        }
        assert_eq!(node.strong_count(), 3, "the hook's record never began");
        drop(state);
        handle.shutdown().await;
        // The thread holding the store may not have let go of the node yet.
        let holders = node.strong_count();
        let waited = held.release();
        assert!(
            holders <= 1,
            "the hook's record still held the node after it said it stopped"
        );
        assert!(waited, "the store was held until HELD passed");
        assert!(node.upgrade().is_none());
        hotline_store::lock_dir(&data).expect("the data directory is free");
        let store = NodeStore::open(&data).unwrap();
        assert!(
            store.unannounced().unwrap().is_empty(),
            "the hook's record was made"
        );
    }

    /// The held receipts are checked off the async runtime: `recheck_held_receipts`
    /// returns without reading the store or verifying a signature on the caller's thread
    /// (here the test's runtime's only one), and does it in the background. It verified up
    /// to `RECEIPTS_HELD_MAX` signatures on a runtime thread (about 36 ms of it); here the
    /// store is held by another thread for up to 10 s, and the call waited for it.
    #[tokio::test]
    async fn held_receipts_are_checked_off_the_runtime() {
        use hotline_proto::{Receipt, ReceiptItem, ReceiptKind};
        let dir = tempfile::tempdir().unwrap();
        let state = test_state(dir.path());
        let tjk = SigningKey::from_bytes(&[5; 32]);
        let draft = store::Draft::alert(&[ParticipantId::new("TJK").unwrap()], "For TJK");
        let sent = state
            .store()
            .compose(&state.me, &state.key, draft, &[], 1, 1_000)
            .unwrap()
            .unwrap();
        let env = sent.decode_unverified().unwrap();
        let receipt = Receipt {
            version: hotline_proto::PROTOCOL_VERSION,
            recipient: ParticipantId::new("TJK").unwrap(),
            kind: ReceiptKind::Delivered,
            created_at_ms: 2_000,
            items: vec![ReceiptItem {
                id: env.id,
                sender: state.me.clone(),
                digest: sent.digest(),
            }],
        };
        let signed = hotline_proto::Signed::sign(&receipt, &tjk).unwrap();
        let held = state
            .store()
            .hold_receipts(
                &state.me,
                &[store::Unverified {
                    signed,
                    claim: receipt,
                    reason: "unknown signer TJK".into(),
                }],
                2_000,
            )
            .unwrap();
        assert_eq!(held.held.len(), 1, "{held:?}");
        // A roster listing TJK, installed without the checks that `offer_roster` asks for.
        let mut roster: Roster = (***state.roster.borrow()).clone();
        roster.version += 1;
        roster.participants.push(hotline_proto::Participant {
            id: ParticipantId::new("TJK").unwrap(),
            name: "TJK".into(),
            role: hotline_proto::Role::Member,
            keys: vec![hotline_proto::PublicKey::of(&tjk)],
            revoked: false,
        });
        let newer =
            hotline_proto::Signed::sign(&roster, &SigningKey::from_bytes(&[3; 32])).unwrap();
        let newer = hotline_proto::verify_roster(&newer, &state.config.roster_key).unwrap();
        state.roster.send_replace(Arc::new(newer));

        let held = Held::store(&state, false, Duration::from_secs(10));
        let mut checked = state.receipts_checked.subscribe();
        state.recheck_held_receipts();
        assert!(
            !held.release(),
            "the check waited on the caller's thread for the store"
        );
        tokio::time::timeout(Duration::from_secs(30), checked.changed())
            .await
            .expect("the held receipts are checked in time")
            .unwrap();
        assert!(
            state.store().held_receipts().unwrap().is_empty(),
            "the receipt verifies against the newer roster and is recorded"
        );
    }

    /// A node's shutdown waits for the walk of its quarantine running off the runtime, so
    /// that nothing uses its store (nor holds its claim on the data directory) once it says
    /// it stopped. The walk was not joined: it went on for up to a page after the node said
    /// it stopped, holding the store open.
    #[tokio::test]
    async fn a_node_that_says_it_stopped_no_longer_uses_its_store() {
        let dir = tempfile::tempdir().unwrap();
        let (shutdown, stopping) = watch::channel(false);
        let state = test_state_on(dir.path(), 1, stopping);
        let data = state.config.data_dir.clone();
        // Some 16 pages, the newest holding a genuine message (held for a reason that
        // does not last): it is released, and told, as the walk ends its first page.
        let n = 16 * limits::QUARANTINE_RECHECK_PAGE_ITEMS;
        state
            .store()
            .store_deliveries(&test_forgeries(&state, n), 1_000)
            .unwrap();
        let genuine = Envelope {
            subject: "Genuine".into(),
            sender: ParticipantId::new("KGZ").unwrap(),
            ..test_forgeries(&state, 1)[0].0.decode_unverified().unwrap()
        };
        let signed = hotline_proto::Signed::sign(&genuine, &SigningKey::from_bytes(&[2; 32]));
        state
            .store()
            .store_deliveries(&[(signed.unwrap(), Err("test: held".into()))], 2_000)
            .unwrap();
        let handle = NodeHandle {
            api_addr: (std::net::Ipv4Addr::LOCALHOST, 0).into(),
            shutdown,
            tasks: JoinSet::new(),
            background: state.background.subscribe(),
        };
        let mut events = state.events.subscribe();
        state.recheck_quarantine();
        let told = tokio::time::timeout(Duration::from_secs(30), events.recv()).await;
        assert!(
            matches!(told, Ok(Ok(Event::MessageReceived { id, .. })) if id == genuine.id),
            "{told:?}"
        );
        // The walk goes on with its next pages, holding the node while it checks one.
        let node = Arc::downgrade(&state);
        drop(state);
        handle.shutdown().await;
        assert!(
            node.upgrade().is_none(),
            "the walk still holds the node after it said it stopped"
        );
        hotline_store::lock_dir(&data).expect("the data directory is free");
    }

    /// A node stopped cleanly leaves its store in one file, as OPERATIONS.md says (section
    /// 6): the last connection to close folds the write-ahead log in and removes it. The
    /// read-only connection of the API's lists closed after the store's, and a read-only
    /// connection cannot fold the log in, so a stopped node that had written anything left
    /// its latest commits in `node.db-wal`, lost to anyone who copied `node.db` alone.
    #[test]
    fn a_stopped_node_leaves_its_store_in_one_file() {
        let dir = tempfile::tempdir().unwrap();
        let state = test_state(dir.path());
        let data = state.config.data_dir.clone();
        let roster = state.roster.borrow().clone();
        state.store().save_roster(&roster, 5).unwrap();
        state.reader().inbox_page(None, 10, false).unwrap();
        assert!(
            data.join("node.db-wal").exists(),
            "the test writes through the log"
        );
        drop(state);
        let left: Vec<String> = std::fs::read_dir(&data)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("node.db"))
            .collect();
        assert_eq!(
            left,
            ["node.db"],
            "files of the store left in {}",
            data.display()
        );
    }
    use hotline_net::NetError;
    use hotline_proto::frame::ErrorCode;

    /// Nodes starting at once on one new token file (a node and a `hotline` command racing
    /// a first start, or two starts) all get one token, the file's, whole: none fails
    /// because another created it first, and none replaces the token another has read.
    /// (The window is narrow: this did not catch the old create-then-write code in a run;
    /// `a_crash_while_writing_a_new_token_leaves_no_empty_token_file` does.)
    #[test]
    fn starts_racing_on_a_new_token_file_share_one_whole_token() {
        const STARTS: usize = 8;
        for round in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("api.token");
            let barrier = std::sync::Barrier::new(STARTS);
            let tokens: Vec<Result<String, String>> = std::thread::scope(|s| {
                let starts: Vec<_> = (0..STARTS)
                    .map(|_| {
                        s.spawn(|| {
                            barrier.wait();
                            ensure_token(&path).map_err(|e| e.to_string())
                        })
                    })
                    .collect();
                starts.into_iter().map(|t| t.join().unwrap()).collect()
            });
            let file = hotline_config::text_file::read_token(&path).unwrap();
            for t in tokens {
                assert_eq!(t.as_deref(), Ok(file.as_str()), "round {round}");
            }
            // Only the token file is left: no temporary file beside it.
            assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        }
    }

    /// Set for [`token_writer_child`]: the token file it writes.
    const TOKEN_CHILD_VAR: &str = "HOTLINE_TEST_TOKEN_CHILD";

    /// Not a test of its own: the child process of
    /// [`a_crash_while_writing_a_new_token_leaves_no_empty_token_file`], which runs this
    /// test binary again for it alone; does nothing otherwise.
    #[test]
    fn token_writer_child() {
        if let Some(path) = std::env::var_os(TOKEN_CHILD_VAR) {
            let _ = ensure_token(std::path::Path::new(&path));
        }
    }

    /// A node killed while writing a new token file (a power cut just after a first start)
    /// leaves no token file, or a whole one, never an empty one: its next start has a
    /// token. The child writing it may write no byte to a regular file (`ulimit -f 0`), so
    /// the kernel kills it (SIGXFSZ) at its first write. Before, the file was created under
    /// its name and then written: it was left empty, and the node exited 78 at every start.
    #[test]
    fn a_crash_while_writing_a_new_token_leaves_no_empty_token_file() {
        use std::os::unix::process::ExitStatusExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.token");
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg("ulimit -f 0 && exec \"$0\" --exact tests::token_writer_child --test-threads=1")
            .arg(std::env::current_exe().unwrap())
            .env(TOKEN_CHILD_VAR, &path)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert_eq!(
            status.signal(),
            Some(rustix::process::Signal::XFSZ.as_raw()),
            "the child is killed at its first write: {status}"
        );
        match hotline_config::text_file::read_token(&path) {
            Err(e) if e.is_not_found() => {}
            r => panic!("a token file was left by the crash: {r:?}"),
        }
        let token = ensure_token(&path).expect("the next start makes a token");
        assert_eq!(token.len(), 2 * limits::API_TOKEN_BYTES);
        // The crash left its temporary file (hidden, mode 0600, made to hold a token): the
        // next start removes it, the child that wrote it having ended.
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, [std::ffi::OsString::from("api.token")]);
    }

    /// A crash after a new token file was linked under its name, before its temporary name
    /// was removed, leaves the token under a second, hidden name, which stays past a
    /// rotation of the token: the next start removes it, though it has a token file to
    /// read and writes none. A temporary file of another file stays.
    #[test]
    fn a_start_removes_the_temporary_file_a_crash_left_beside_the_token_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.token");
        let token = ensure_token(&path).unwrap();
        let old = std::time::SystemTime::now()
            - std::time::Duration::from_millis(hotline_config::limits::TEMPORARY_FILE_STALE_MS * 2);
        let mut leftovers = Vec::new();
        for name in [
            ".api.token.tmp.4000000000.0123456789abcdef",
            ".other.tmp.4000000000.0123456789abcdef",
        ] {
            let p = dir.path().join(name);
            std::fs::hard_link(&path, &p).unwrap();
            std::fs::File::options()
                .write(true)
                .open(&p)
                .and_then(|f| f.set_modified(old))
                .unwrap();
            leftovers.push(p);
        }
        assert_eq!(ensure_token(&path).unwrap(), token);
        assert!(!leftovers[0].exists(), "the token's leftover was kept");
        assert!(leftovers[1].exists(), "another file's was removed");
    }

    fn closed(code: ErrorCode, reason: &str) -> NetError {
        NetError::Closed {
            code,
            reason: reason.into(),
        }
    }

    fn peer_alert(alert: u8) -> NetError {
        NetError::Connection(quinn::ConnectionError::ConnectionClosed(
            quinn::ConnectionClose {
                error_code: quinn::TransportErrorCode::crypto(alert),
                frame_type: None,
                reason: Default::default(),
            },
        ))
    }

    /// A roster of `version`, signed and verified.
    fn roster_v(version: u64) -> Verified<Roster> {
        let key = hotline_proto::SigningKey::from_bytes(&[3; 32]);
        let r = Roster {
            protocol_version: hotline_proto::PROTOCOL_VERSION,
            version,
            issued_at_ms: 1,
            network: "CICA".into(),
            participants: vec![hotline_proto::Participant {
                id: ParticipantId::new("SEC").unwrap(),
                name: "Secretariat".into(),
                role: hotline_proto::Role::Secretariat,
                keys: vec![hotline_proto::PublicKey::of(&key)],
                revoked: false,
            }],
            groups: vec![],
        };
        let signed = hotline_proto::Signed::sign(&r, &key).unwrap();
        hotline_proto::verify_roster(&signed, &hotline_proto::PublicKey::of(&key)).unwrap()
    }

    /// The events emitted before the API listens are kept for its first subscribers (the
    /// newest `EVENTS_BUFFER`, those dropped told as missed), those emitted after are not
    /// (each subscriber has them from its own subscription, and must not have them twice),
    /// and none is given once `STARTUP_EVENTS_KEPT_MS` has passed.
    #[test]
    fn events_before_the_api_listens_are_kept_for_its_first_subscribers() {
        let ev = |for_ms| Event::Unreachable { for_ms };
        let for_ms = |e: &Early| {
            e.events
                .iter()
                .map(|e| match e {
                    Event::Unreachable { for_ms } => *for_ms,
                    other => panic!("{other:?}"),
                })
                .collect::<Vec<_>>()
        };
        let mut early = EarlyEvents::default();
        let n = limits::EVENTS_BUFFER as u64 + 3;
        for i in 0..n {
            early.keep(&ev(i));
        }
        let start = std::time::Instant::now();
        early.listening(start);
        early.keep(&ev(n));
        let first = early.for_subscriber(start);
        assert_eq!(first.missed, 3);
        assert_eq!(for_ms(&first), (3..n).collect::<Vec<_>>());
        let kept = Duration::from_millis(limits::STARTUP_EVENTS_KEPT_MS);
        let later = early.for_subscriber(start + kept - Duration::from_millis(1));
        assert_eq!(
            (later.missed, for_ms(&later)),
            (first.missed, for_ms(&first))
        );
        let late = early.for_subscriber(start + kept);
        assert_eq!((late.missed, late.events.len()), (0, 0));
        assert!(early.kept.is_empty() && early.events.is_empty());
    }

    /// A newer roster that lets quarantined deliveries into the inbox frees the room they
    /// held, as a discard does: a link that refused deliveries for a full quarantine must be
    /// told (`quarantine_room`), so that it connects anew and the relay delivers what it
    /// refused. It was told of discards alone, and the relay kept what it refused until the
    /// link next reconnected for another reason.
    #[tokio::test]
    async fn quarantined_deliveries_released_by_a_newer_roster_free_the_room() {
        use hotline_proto::{Audience, Kind, Precedence, Status};
        let dir = tempfile::tempdir().unwrap();
        let state = test_state(dir.path());
        let tjk = SigningKey::from_bytes(&[5; 32]);
        let env = Envelope {
            version: hotline_proto::PROTOCOL_VERSION,
            id: hotline_proto::MessageId::random(),
            sender: ParticipantId::new("TJK").unwrap(),
            seq: hotline_proto::Seq(1),
            audience: Audience::Participants(vec![state.me.clone()]),
            kind: Kind::Alert,
            precedence: Precedence::Routine,
            status: Status::Actual,
            created_at_ms: now_ms(),
            respond_by_ms: None,
            references: vec![],
            category: None,
            subject: "New member".into(),
            body: String::new(),
        };
        let signed = hotline_proto::Signed::sign(&env, &tjk).unwrap();
        let reason = link::check_delivery(&state.roster.borrow(), &signed, &state.me).unwrap_err();
        {
            let mut store = state.store();
            // Full once this one is held: the next failing delivery is refused.
            store.set_quarantine_max_bytes(signed.bytes().len() as u64);
            store
                .store_deliveries(&[(signed.clone(), Err(reason))], now_ms())
                .unwrap();
            assert!(store.quarantine_size().1, "full");
        }
        let mut room = state.quarantine_room.subscribe();
        room.mark_unchanged();
        let version = offer_roster_listing(&state, "TJK", &tjk).await;
        assert_eq!(state.roster.borrow().version, version, "installed");
        assert!(
            state.store().inbox_message(&env.id).unwrap().is_some(),
            "released"
        );
        assert!(!state.store().quarantine_size().1, "room again");
        assert!(
            room.has_changed().unwrap(),
            "the links are told of the room"
        );
    }

    /// Offers `state` a roster one version newer than its own that lists `id` with `key`
    /// (signed with the test roster key), and waits for the quarantine's check against it to
    /// end. The new version.
    async fn offer_roster_listing(state: &NodeState, id: &str, key: &SigningKey) -> u64 {
        use hotline_proto::{Participant, PublicKey, Role};
        let mut roster: Roster = (***state.roster.borrow()).clone();
        roster.version += 1;
        roster.participants.push(Participant {
            id: ParticipantId::new(id).unwrap(),
            name: id.into(),
            role: Role::Member,
            keys: vec![PublicKey::of(key)],
            revoked: false,
        });
        let newer =
            hotline_proto::Signed::sign(&roster, &SigningKey::from_bytes(&[3; 32])).unwrap();
        let mut checked = state.quarantine_checked.subscribe();
        state.offer_roster(&newer, "test");
        tokio::time::timeout(Duration::from_secs(30), checked.changed())
            .await
            .expect("the quarantine is checked in time")
            .unwrap();
        roster.version
    }

    /// A lagging roster delays a message, never hides it (PROTOCOL.md 12.1 item 2): a
    /// genuine delivery from a participant this node's roster lacked is released by the
    /// roster that lists it however many deliveries were quarantined after it. Only the
    /// newest 1,000 were checked, so a relay or a forger flooding the quarantine hid it for
    /// good.
    #[tokio::test]
    async fn a_newer_roster_releases_a_genuine_delivery_behind_a_flood_of_forgeries() {
        use hotline_proto::{Audience, Kind, Precedence, Status};
        let dir = tempfile::tempdir().unwrap();
        let state = test_state(dir.path());
        let envelope = |sender: &str, subject: &str| Envelope {
            version: hotline_proto::PROTOCOL_VERSION,
            id: hotline_proto::MessageId::random(),
            sender: ParticipantId::new(sender).unwrap(),
            seq: hotline_proto::Seq(1),
            audience: Audience::Participants(vec![state.me.clone()]),
            kind: Kind::Alert,
            precedence: Precedence::Routine,
            status: Status::Actual,
            created_at_ms: now_ms(),
            respond_by_ms: None,
            references: vec![],
            category: None,
            subject: subject.into(),
            body: String::new(),
        };
        let held = |signed: hotline_proto::Signed<Envelope>| {
            let reason =
                link::check_delivery(&state.roster.borrow(), &signed, &state.me).unwrap_err();
            (signed, Err(reason))
        };
        let tjk = SigningKey::from_bytes(&[5; 32]);
        let genuine = envelope("TJK", "New member");
        let forger = SigningKey::from_bytes(&[6; 32]);
        // More than the 1,000 newest once checked, and than a page of the check.
        const FLOOD: usize = 1_001;
        let forgeries: Vec<_> = (0..FLOOD)
            .map(|i| {
                held(
                    hotline_proto::Signed::sign(&envelope("TJK", &format!("forged {i}")), &forger)
                        .unwrap(),
                )
            })
            .collect();
        {
            let mut store = state.store();
            let t = now_ms();
            store
                .store_deliveries(
                    &[held(hotline_proto::Signed::sign(&genuine, &tjk).unwrap())],
                    t - 1_000,
                )
                .unwrap();
            store.store_deliveries(&forgeries, t).unwrap();
            assert_eq!(store.quarantine_size().0.held as usize, FLOOD + 1);
        }
        offer_roster_listing(&state, "TJK", &tjk).await;
        assert!(
            state.store().inbox_message(&genuine.id).unwrap().is_some(),
            "released"
        );
        assert_eq!(
            state.store().quarantine_size().0.held as usize,
            FLOOD,
            "the forgeries stay"
        );
    }

    /// The alarm goes off once per spell without a link, `after` into it by the monotonic
    /// clock, whatever the wall clock does meanwhile (here it stands still, as if stepped
    /// back by as much as the time passed).
    #[test]
    fn the_unreachable_alarm_follows_the_monotonic_clock_once_per_spell() {
        let t0 = std::time::Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let after = Duration::from_millis(60_000);
        let mut u = Unreachable::new(t0);
        assert_eq!(u.observe(false, at(59_999), after), None);
        assert_eq!(u.observe(false, at(60_000), after), Some(60_000));
        assert_eq!(u.observe(false, at(90_000), after), None, "once a spell");
        assert_eq!(u.observe(true, at(91_000), after), None);
        assert_eq!(u.observe(false, at(151_000 - 1), after), None);
        assert_eq!(
            u.observe(false, at(151_000), after),
            Some(60_000),
            "a new spell, from the last time a link was up"
        );
    }

    /// The newer of the file's and the store's; the file's on a tie (not kept again); the
    /// store's when the file's is unusable, saying why.
    #[test]
    fn a_node_starts_on_the_newer_roster_of_its_file_and_its_store() {
        let pick = |file: Result<u64, &'static str>, store: Option<u64>| match start_roster(
            file.map(roster_v),
            store.map(roster_v),
        ) {
            StartRoster::File { roster, newer } => format!("file {} newer {newer}", roster.version),
            StartRoster::Store { roster, file } => {
                format!("store {} file {file:?}", roster.version)
            }
            StartRoster::Neither(e) => format!("neither: {e}"),
        };
        assert_eq!(pick(Ok(3), None), "file 3 newer true");
        assert_eq!(pick(Ok(3), Some(2)), "file 3 newer true");
        assert_eq!(pick(Ok(3), Some(3)), "file 3 newer false");
        assert_eq!(pick(Ok(3), Some(4)), "store 4 file Ok(3)");
        assert_eq!(
            pick(Err("damaged"), Some(4)),
            "store 4 file Err(\"damaged\")"
        );
        assert_eq!(pick(Err("damaged"), None), "neither: damaged");
    }

    /// Of the relay's close codes, exactly those that only a change of roster, release or
    /// configuration ends are lasting refusals; the relay's reason is kept, without control
    /// characters.
    #[test]
    fn a_relay_refuses_lastingly_only_for_what_a_change_must_end() {
        let mut seen = 0;
        for n in 0..64 {
            let Some(code) = ErrorCode::from_close_code(n) else {
                continue;
            };
            seen += 1;
            let lasting = match code {
                ErrorCode::Revoked => Some(RefusalCode::Revoked),
                ErrorCode::UnknownParticipant => Some(RefusalCode::UnknownParticipant),
                ErrorCode::UnsupportedVersion => Some(RefusalCode::UnsupportedVersion),
                ErrorCode::AuthFailed => Some(RefusalCode::AuthFailed),
                // A relay shutting down, full, overloaded, failing; a slow link or node; a
                // second node with this key; a frame either side got wrong: all pass, or
                // are not this node's configuration.
                _ => None,
            };
            assert_eq!(
                RelayRefusal::of(&closed(code, "why\n\u{1b}[2K this")),
                lasting.map(|code| RelayRefusal {
                    code,
                    reason: "why[2K this".into()
                }),
                "{code:?}"
            );
        }
        assert_eq!(seen, 14, "every close code is considered");
    }

    /// This node's own refusal of a relay's certificate lasts until the configuration or
    /// the certificate changes; so does a relay with no protocol version in common.
    #[test]
    fn a_certificate_not_pinned_and_no_common_protocol_are_lasting() {
        let fp = hotline_net::Fingerprint([7; 32]);
        assert_eq!(
            RelayRefusal::of(&NetError::PinMismatch { presented: fp }),
            Some(RelayRefusal {
                code: RefusalCode::PinMismatch,
                reason: format!("relay certificate {fp} does not match the pinned fingerprint"),
            })
        );
        let alpn = RelayRefusal::of(&peer_alert(TLS_NO_APPLICATION_PROTOCOL)).unwrap();
        assert_eq!(alpn.code, RefusalCode::UnsupportedVersion);
        assert!(alpn.reason.contains("cica-hotline/1"), "{}", alpn.reason);
    }

    /// What passes by itself is never a lasting refusal: a relay down or unreachable, a
    /// link lost or reset, another TLS alert, a relay that stopped answering.
    #[test]
    fn transient_failures_are_not_lasting() {
        let application = |code: u32| {
            NetError::from_connection(quinn::ConnectionError::ApplicationClosed(
                quinn::ApplicationClose {
                    error_code: quinn::VarInt::from_u32(code),
                    reason: Default::default(),
                },
            ))
        };
        for e in [
            NetError::Timeout("QUIC handshake"),
            NetError::Timeout("authentication"),
            NetError::Connection(quinn::ConnectionError::TimedOut),
            NetError::Connection(quinn::ConnectionError::Reset),
            NetError::Connection(quinn::ConnectionError::LocallyClosed),
            // The relay's TLS failing the handshake for another reason.
            peer_alert(40),
            peer_alert(80),
            // A relay restarting or at its limit closes with these before any log-in.
            application(ErrorCode::GoingAway.close_code()),
            application(ErrorCode::Busy.close_code()),
            application(ErrorCode::Superseded.close_code()),
            // An application code that is not a hotline code.
            application(999),
            NetError::Protocol("relay closed the stream".into()),
            NetError::Read("connection lost".into()),
            NetError::Local("store: disk full".into()),
        ] {
            assert_eq!(RelayRefusal::of(&e), None, "{e}");
        }
        // And a refusal arriving as a close code reads as one.
        assert_eq!(
            RelayRefusal::of(&application(ErrorCode::UnsupportedVersion.close_code()))
                .map(|r| r.code),
            Some(RefusalCode::UnsupportedVersion)
        );
    }
}
