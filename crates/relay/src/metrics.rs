//! Prometheus metrics (text exposition format) and the health endpoint, served on a
//! loopback address.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use hotline_proto::frame::{ErrorCode, RejectCode};
use hotline_proto::ParticipantId;

const LATENCY_BUCKETS_MS: [u64; 13] = [
    1, 2, 5, 10, 25, 50, 100, 250, 500, 1_000, 5_000, 30_000, 300_000,
];
const BATCH_BUCKETS: [u64; 11] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024];
/// Commit durations, in microseconds: on the benchmark machine a commit took 0.28–0.35 ms
/// on average at 500 messages a second and 1–4 ms at maximum rate (docs/BENCHMARKS-ROUNDS.md,
/// tenth round); tens of milliseconds is a disk in trouble.
const COMMIT_BUCKETS_US: [u64; 12] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
];
/// The stages of a message's way through the relay, in microseconds: on the benchmark
/// machine at 500 messages a second each took tens to a few hundred microseconds
/// (docs/BENCHMARKS.md); milliseconds is a relay that is short of CPU or waiting on its disk.
const STAGE_BUCKETS_US: [u64; 13] = [
    10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 100_000, 1_000_000,
];
/// Reject codes are counted in an array indexed by tag; room for the codes defined so far.
const REJECT_CODES: usize = 18;
const ERROR_CODES: usize = 14;

struct Histogram<const N: usize> {
    bounds: [u64; N],
    counts: [AtomicU64; N],
    inf: AtomicU64,
    sum: AtomicU64,
}

impl<const N: usize> Histogram<N> {
    fn new(bounds: [u64; N]) -> Self {
        Self {
            bounds,
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            inf: AtomicU64::new(0),
            sum: AtomicU64::new(0),
        }
    }

    fn observe(&self, v: u64) {
        self.sum.fetch_add(v, Relaxed);
        match self.bounds.iter().position(|b| v <= *b) {
            Some(i) => self.counts[i].fetch_add(1, Relaxed),
            None => self.inf.fetch_add(1, Relaxed),
        };
    }

    /// Observes a duration, in microseconds (a histogram whose bounds are microseconds).
    fn observe_us(&self, took: std::time::Duration) {
        self.observe(u64::try_from(took.as_micros()).unwrap_or(u64::MAX));
    }

    /// Writes the histogram in Prometheus' text format, each bound and the sum divided by
    /// `per_unit` (1,000,000 for microseconds shown as seconds). Dividing, rather than
    /// multiplying by 0.000001, gives the double nearest the decimal bound, which prints as
    /// written (`0.0001`, not `0.00009999999999999999`).
    fn render(&self, out: &mut String, name: &str, help: &str, per_unit: f64) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cum = 0;
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            cum += c.load(Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{}\"}} {cum}",
                *b as f64 / per_unit
            );
        }
        cum += self.inf.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cum}");
        let _ = writeln!(
            out,
            "{name}_sum {}",
            self.sum.load(Relaxed) as f64 / per_unit
        );
        let _ = writeln!(out, "{name}_count {cum}");
    }
}

/// A sender's budget of submissions (`limits.rs`): what a `RateLimited` refusal was over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Budget {
    /// Submissions counted (`rate_per_sec`, `rate_burst`).
    Count = 0,
    /// Signed bytes of submissions (`byte_rate_per_sec`, `byte_rate_burst`).
    Bytes = 1,
}

/// What one commit accepted and stored, counted once it is durable ([`Metrics::durable`]).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Durable {
    /// Messages accepted (`hotline_relay_messages_accepted_total`).
    pub(crate) accepted: u64,
    /// Receipts stored (`hotline_relay_receipts_stored_total`).
    pub(crate) receipts: u64,
    /// The deliveries its receipts ended, each from acceptance to the receipt, in
    /// milliseconds (`hotline_relay_delivery_latency_seconds`).
    pub(crate) latencies_ms: Vec<u64>,
}

impl std::ops::AddAssign for Durable {
    fn add_assign(&mut self, o: Self) {
        self.accepted += o.accepted;
        self.receipts += o.receipts;
        self.latencies_ms.extend(o.latencies_ms);
    }
}

/// The relay's counters and gauges.
pub(crate) struct Metrics {
    pub(crate) connections: AtomicU64,
    pub(crate) connections_total: AtomicU64,
    closes: [AtomicU64; ERROR_CODES],
    /// Connections the node closed, by its code.
    node_closes: [AtomicU64; ERROR_CODES],
    /// Connections lost (timed out, reset).
    lost: AtomicU64,
    pub(crate) accepted: AtomicU64,
    rejected: [AtomicU64; REJECT_CODES],
    pub(crate) deliveries: AtomicU64,
    pub(crate) receipts_stored: AtomicU64,
    pub(crate) receipts_forwarded: AtomicU64,
    receipts_redundant: AtomicU64,
    /// Forwards refused for a full forward queue, and for a signer over its budget.
    receipts_unforwarded: [AtomicU64; 2],
    pub(crate) store_reads: AtomicU64,
    /// Connections admitted and not yet authenticated (`crate::admission`).
    pub(crate) handshakes_pending: AtomicU64,
    /// Connections refused before their handshake: too many in progress from their address,
    /// or in all.
    pub(crate) handshakes_refused_address: AtomicU64,
    pub(crate) handshakes_refused_total: AtomicU64,
    /// Connections asked to prove their address (QUIC Retry).
    pub(crate) address_validations: AtomicU64,
    /// Times a connection's reading paused for its receipt rate.
    pub(crate) receipt_read_pauses: AtomicU64,
    /// Submissions refused `RateLimited`, by [`Budget`].
    rate_limited: [AtomicU64; 2],
    commit_failures: AtomicU64,
    checkpoint_failures: AtomicU64,
    wal_sync_failures: AtomicU64,
    /// Pages in the write-ahead log when the last background checkpoint began.
    wal_frames: AtomicU64,
    batch: Histogram<11>,
    commit_us: Histogram<12>,
    checkpoint_us: Histogram<12>,
    wal_sync_us: Histogram<12>,
    verify_batch: Histogram<11>,
    latency: Histogram<13>,
    submit_check_us: Histogram<13>,
    writer_wait_us: Histogram<13>,
    fanout_us: Histogram<13>,
    depths: Mutex<HashMap<ParticipantId, i64>>,
    forward_depths: Mutex<HashMap<ParticipantId, i64>>,
    pub(crate) roster_version: AtomicU64,
    /// What the store's disk is doing now (`/health`, `hotline_relay_store_busy_seconds`).
    pub(crate) disk: DiskWatch,
}

/// Whether the store's disk answers: since when the store writer's current commit, and the
/// current sync of its write-ahead log, have been running, and whether the last commit
/// failed. The histograms see a commit or a sync only once it has ended, so a disk that
/// stops answering (a hung device, a lost network volume) showed nothing there while the
/// relay accepted nothing; this sees it while it lasts.
#[derive(Debug)]
pub(crate) struct DiskWatch {
    epoch: std::time::Instant,
    /// Milliseconds since `epoch`, plus one, when the running commit began; 0 when none runs.
    commit_since: AtomicU64,
    /// The same for the running sync of the log.
    sync_since: AtomicU64,
    /// The last group commit failed (its batch was refused `StorageUnavailable`).
    failing: std::sync::atomic::AtomicBool,
}

impl DiskWatch {
    fn new() -> Self {
        Self {
            epoch: std::time::Instant::now(),
            commit_since: AtomicU64::new(0),
            sync_since: AtomicU64::new(0),
            failing: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// `at` as milliseconds since `epoch`, plus one (0 stands for "not running").
    fn since(&self, at: std::time::Instant) -> u64 {
        let ms = at.saturating_duration_since(self.epoch).as_millis();
        u64::try_from(ms).unwrap_or(u64::MAX - 1) + 1
    }

    /// The store writer began a group commit (its statements, then `COMMIT`) at `at`, the
    /// time it reads for the commit's duration.
    pub(crate) fn commit_began(&self, at: std::time::Instant) {
        self.commit_since.store(self.since(at), Relaxed);
    }

    /// The group commit ended, committed or not.
    pub(crate) fn commit_ended(&self, committed: bool) {
        self.commit_since.store(0, Relaxed);
        self.failing.store(!committed, Relaxed);
    }

    /// An operator's commit (a roster kept, queues moved back), begun with
    /// [`DiskWatch::commit_began`] so that a stall in it shows, has ended. Whether it
    /// committed leaves `failing` as it was: the operator who asked is told, and only the
    /// group commits, and the writer's probe of a failing store, say whether the relay can
    /// accept messages (a failure noted here would stay until a group commit came).
    pub(crate) fn operators_commit_ended(&self) {
        self.commit_since.store(0, Relaxed);
    }

    /// A sync of the write-ahead log began at `at`.
    pub(crate) fn sync_began(&self, at: std::time::Instant) {
        self.sync_since.store(self.since(at), Relaxed);
    }

    /// The sync ended, whatever its outcome (a failed one stops the relay).
    pub(crate) fn sync_ended(&self) {
        self.sync_since.store(0, Relaxed);
    }

    /// How long the older of the running commit and the running sync has been running;
    /// zero when neither runs.
    pub(crate) fn busy(&self) -> std::time::Duration {
        let since = [&self.commit_since, &self.sync_since]
            .into_iter()
            .map(|a| a.load(Relaxed))
            .filter(|t| *t > 0)
            .min();
        since.map_or(std::time::Duration::ZERO, |t| {
            let now = self.since(std::time::Instant::now());
            std::time::Duration::from_millis(now.saturating_sub(t))
        })
    }

    /// The last group commit failed.
    pub(crate) fn failing(&self) -> bool {
        self.failing.load(Relaxed)
    }
}

/// What `/health` answers: `ok` (200), or `store_stalled` when a commit or a sync of the
/// store has run for `stall_after` or longer, or `store_failing` when the last commit failed
/// (503: the relay cannot accept messages now).
pub(crate) fn health_status(
    busy: std::time::Duration,
    failing: bool,
    stall_after: std::time::Duration,
) -> (axum::http::StatusCode, &'static str) {
    use axum::http::StatusCode;
    if busy >= stall_after {
        (StatusCode::SERVICE_UNAVAILABLE, "store_stalled")
    } else if failing {
        (StatusCode::SERVICE_UNAVAILABLE, "store_failing")
    } else {
        (StatusCode::OK, "ok")
    }
}

impl Metrics {
    pub(crate) fn new() -> Self {
        Self {
            connections: AtomicU64::new(0),
            connections_total: AtomicU64::new(0),
            closes: std::array::from_fn(|_| AtomicU64::new(0)),
            node_closes: std::array::from_fn(|_| AtomicU64::new(0)),
            lost: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            rejected: std::array::from_fn(|_| AtomicU64::new(0)),
            deliveries: AtomicU64::new(0),
            receipts_stored: AtomicU64::new(0),
            receipts_forwarded: AtomicU64::new(0),
            receipts_redundant: AtomicU64::new(0),
            receipts_unforwarded: [AtomicU64::new(0), AtomicU64::new(0)],
            store_reads: AtomicU64::new(0),
            handshakes_pending: AtomicU64::new(0),
            handshakes_refused_address: AtomicU64::new(0),
            handshakes_refused_total: AtomicU64::new(0),
            address_validations: AtomicU64::new(0),
            receipt_read_pauses: AtomicU64::new(0),
            rate_limited: [AtomicU64::new(0), AtomicU64::new(0)],
            commit_failures: AtomicU64::new(0),
            checkpoint_failures: AtomicU64::new(0),
            wal_sync_failures: AtomicU64::new(0),
            wal_frames: AtomicU64::new(0),
            batch: Histogram::new(BATCH_BUCKETS),
            commit_us: Histogram::new(COMMIT_BUCKETS_US),
            checkpoint_us: Histogram::new(COMMIT_BUCKETS_US),
            wal_sync_us: Histogram::new(COMMIT_BUCKETS_US),
            verify_batch: Histogram::new(BATCH_BUCKETS),
            latency: Histogram::new(LATENCY_BUCKETS_MS),
            submit_check_us: Histogram::new(STAGE_BUCKETS_US),
            writer_wait_us: Histogram::new(STAGE_BUCKETS_US),
            fanout_us: Histogram::new(STAGE_BUCKETS_US),
            depths: Mutex::new(HashMap::new()),
            forward_depths: Mutex::new(HashMap::new()),
            roster_version: AtomicU64::new(0),
            disk: DiskWatch::new(),
        }
    }

    pub(crate) fn rejected(&self, code: RejectCode) {
        if let Some(c) = self.rejected.get(code as usize) {
            c.fetch_add(1, Relaxed);
        }
    }

    /// A submission refused `RateLimited` for `budget`.
    pub(crate) fn rate_limited(&self, budget: Budget) {
        self.rate_limited[budget as usize].fetch_add(1, Relaxed);
    }

    pub(crate) fn closed(&self, code: ErrorCode) {
        if let Some(c) = self.closes.get(code as usize) {
            c.fetch_add(1, Relaxed);
        }
    }

    pub(crate) fn ended_by_node(&self, code: ErrorCode) {
        if let Some(c) = self.node_closes.get(code as usize) {
            c.fetch_add(1, Relaxed);
        }
    }

    pub(crate) fn lost(&self) {
        self.lost.fetch_add(1, Relaxed);
    }

    /// A sync of the write-ahead log (`crate::walsync`) succeeded after `took`.
    pub(crate) fn wal_synced(&self, took: std::time::Duration) {
        self.wal_sync_us.observe_us(took);
    }

    /// A sync of the write-ahead log failed (the relay stops).
    pub(crate) fn wal_sync_failed(&self) {
        self.wal_sync_failures.fetch_add(1, Relaxed);
    }

    /// A group commit of `size` items succeeded after `took` (its statements and `COMMIT`,
    /// with the log's sync only where the sync thread is not running).
    pub(crate) fn commit(&self, size: usize, took: std::time::Duration) {
        self.batch.observe(size as u64);
        self.commit_us.observe_us(took);
    }

    /// What a commit accepted and stored is on disk (the sync after it succeeded, or the
    /// commit synced itself): counted now, and the deliveries its receipts ended timed,
    /// just before its answers go; never for a commit whose sync failed, whose answers were
    /// refused (its receipts come again, and are timed then).
    pub(crate) fn durable(&self, d: Durable) {
        self.accepted.fetch_add(d.accepted, Relaxed);
        self.receipts_stored.fetch_add(d.receipts, Relaxed);
        for l in d.latencies_ms {
            self.latency.observe(l);
        }
    }

    /// A submission's first two stages, seen by the store writer as it begins the commit
    /// that holds it: `checked` from its frame's reading to its hand-off to the writer (the
    /// checks, with the signature), `waited` from the hand-off to the commit's start.
    pub(crate) fn submission_staged(
        &self,
        checked: std::time::Duration,
        waited: std::time::Duration,
    ) {
        self.submit_check_us.observe_us(checked);
        self.writer_wait_us.observe_us(waited);
    }

    /// A message was written into a connected recipient's stream `took` after the commit
    /// that stored it returned.
    pub(crate) fn fanned_out(&self, took: std::time::Duration) {
        self.fanout_us.observe_us(took);
    }

    /// The verifier checked `n` receipt signatures as one batch.
    pub(crate) fn receipts_verified(&self, n: usize) {
        self.verify_batch.observe(n as u64);
    }

    /// A round of background checkpoints ended after `took`; the log held `log_frames` pages
    /// when its last checkpoint began.
    pub(crate) fn checkpointed(&self, took: std::time::Duration, log_frames: i64) {
        self.checkpoint_us.observe_us(took);
        self.wal_frames
            .store(u64::try_from(log_frames).unwrap_or(0), Relaxed);
    }

    pub(crate) fn checkpoint_failed(&self) {
        self.checkpoint_failures.fetch_add(1, Relaxed);
    }

    /// A commit answered `redundant` valid receipts as stored without keeping them, and
    /// refused forwards of receipts naming messages not held here: `queue_full` to senders
    /// whose queue was at `forward_foreign_max`, `over_budget` of receipts whose signer was
    /// over `foreign_receipts_per_day_max`.
    pub(crate) fn receipts_not_kept(&self, redundant: u64, queue_full: u64, over_budget: u64) {
        self.receipts_redundant.fetch_add(redundant, Relaxed);
        self.receipts_unforwarded[0].fetch_add(queue_full, Relaxed);
        self.receipts_unforwarded[1].fetch_add(over_budget, Relaxed);
    }

    pub(crate) fn commit_failed(&self) {
        self.commit_failures.fetch_add(1, Relaxed);
    }

    /// Records the queue depths of the participants given (the others keep theirs).
    pub(crate) fn set_queue_depths<'a>(
        &self,
        depths: impl IntoIterator<Item = (&'a ParticipantId, i64)>,
    ) {
        let mut d = self.depths.lock().unwrap_or_else(|p| p.into_inner());
        for (p, n) in depths {
            match d.get_mut(p) {
                Some(v) => *v = n,
                None => {
                    d.insert(p.clone(), n);
                }
            }
        }
    }

    /// Drops `p`'s queue depth series: its queue is no longer in memory (taken off the
    /// roster), so the relay does not know it without reading the store.
    pub(crate) fn forget_queue_depth(&self, p: &ParticipantId) {
        self.depths
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(p);
    }

    /// Adds a committed batch's changes to how many receipts are held for each sender
    /// (the store writer is the only caller: at open, the counts; after each commit, what
    /// it queued less what senders confirmed).
    pub(crate) fn add_forward_depths(&self, deltas: &HashMap<ParticipantId, i64>) {
        let mut d = self
            .forward_depths
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for (p, n) in deltas {
            match d.get_mut(p) {
                Some(v) => *v = (*v + n).max(0),
                None => {
                    d.insert(p.clone(), (*n).max(0));
                }
            }
        }
    }

    /// Messages queued for `p` as of the last commit (0 if none). The writer publishes
    /// depths before it posts a commit's items to mailboxes, so a session that sees 0 here
    /// after clearing its mailbox's flag will find anything newer in its mailbox.
    pub(crate) fn queue_depth(&self, p: &ParticipantId) -> i64 {
        let d = self.depths.lock().unwrap_or_else(|p| p.into_inner());
        d.get(p).copied().unwrap_or(0)
    }

    /// The whole exposition.
    pub(crate) fn render(&self, sessions: &[(ParticipantId, quinn::Connection)]) -> String {
        let mut o = String::with_capacity(8 * 1024);
        let gauge = |o: &mut String, name: &str, help: &str, v: &dyn std::fmt::Display| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        let counter = |o: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        };
        gauge(
            &mut o,
            "hotline_relay_connections",
            "Open QUIC connections.",
            &self.connections.load(Relaxed),
        );
        gauge(
            &mut o,
            "hotline_relay_sessions",
            "Authenticated sessions.",
            &sessions.len(),
        );
        counter(
            &mut o,
            "hotline_relay_connections_total",
            "Connections accepted since start.",
            self.connections_total.load(Relaxed),
        );
        gauge(
            &mut o,
            "hotline_relay_handshakes_pending",
            "Connections admitted that have not yet authenticated (limits.handshakes_max).",
            &self.handshakes_pending.load(Relaxed),
        );
        let _ = writeln!(
            o,
            "# HELP hotline_relay_handshakes_refused_total Connections refused before their handshake: too many in progress from one address (limits.handshakes_per_ip_max) or in all (limits.handshakes_max).\n# TYPE hotline_relay_handshakes_refused_total counter\nhotline_relay_handshakes_refused_total{{reason=\"address\"}} {}\nhotline_relay_handshakes_refused_total{{reason=\"total\"}} {}",
            self.handshakes_refused_address.load(Relaxed),
            self.handshakes_refused_total.load(Relaxed),
        );
        counter(
            &mut o,
            "hotline_relay_address_validations_total",
            "Connections asked to prove their source address (QUIC Retry) because half of limits.handshakes_max were in progress.",
            self.address_validations.load(Relaxed),
        );
        counter(
            &mut o,
            "hotline_relay_messages_accepted_total",
            "Messages durably accepted.",
            self.accepted.load(Relaxed),
        );
        counter(
            &mut o,
            "hotline_relay_deliveries_total",
            "Messages written to recipients' sessions.",
            self.deliveries.load(Relaxed),
        );
        counter(
            &mut o,
            "hotline_relay_receipts_stored_total",
            "Receipts durably stored.",
            self.receipts_stored.load(Relaxed),
        );
        counter(
            &mut o,
            "hotline_relay_receipts_forwarded_total",
            "Receipts written to senders' sessions.",
            self.receipts_forwarded.load(Relaxed),
        );
        counter(
            &mut o,
            "hotline_relay_receipts_redundant_total",
            "Valid receipts answered as stored but not kept or forwarded: every message they name already had that recipient's receipt (or acknowledgement) here, or is one this relay does not hold from a sender on no roster.",
            self.receipts_redundant.load(Relaxed),
        );
        let _ = writeln!(o, "# HELP hotline_relay_receipts_unforwarded_total Receipts for messages this relay does not hold not forwarded to a sender, by reason: forward_queue_full, the sender's forward queue was at limits.forward_foreign_max; signer_over_budget, the receipt's signer was over limits.foreign_receipts_per_day_max for the day (then not kept either). One per sender not forwarded to.\n# TYPE hotline_relay_receipts_unforwarded_total counter");
        for (reason, n) in ["forward_queue_full", "signer_over_budget"]
            .iter()
            .zip(&self.receipts_unforwarded)
        {
            let _ = writeln!(
                o,
                "hotline_relay_receipts_unforwarded_total{{reason=\"{reason}\"}} {}",
                n.load(Relaxed)
            );
        }
        counter(
            &mut o,
            "hotline_relay_store_reads_total",
            "Queue pages sessions read back from the store (at connect, and after their \
             mailbox overflowed); otherwise they are served what was just committed.",
            self.store_reads.load(Relaxed),
        );
        counter(
            &mut o,
            "hotline_relay_receipt_read_pauses_total",
            "Times reading a connection paused because its participant sent receipts, or \
             receipt items, faster than limits.receipt_rate_per_sec or \
             receipt_item_rate_per_sec (and their bursts) allow.",
            self.receipt_read_pauses.load(Relaxed),
        );
        let _ = writeln!(o, "# HELP hotline_relay_submissions_rate_limited_total Submissions refused RateLimited, by the sender's budget they were over: count, limits.rate_per_sec and rate_burst; bytes, limits.byte_rate_per_sec and byte_rate_burst. Each is also in hotline_relay_messages_rejected_total{{reason=\"rate_limited\"}}.\n# TYPE hotline_relay_submissions_rate_limited_total counter");
        for (budget, n) in ["count", "bytes"].iter().zip(&self.rate_limited) {
            let _ = writeln!(
                o,
                "hotline_relay_submissions_rate_limited_total{{budget=\"{budget}\"}} {}",
                n.load(Relaxed)
            );
        }
        counter(
            &mut o,
            "hotline_relay_commit_failures_total",
            "Group commits that failed (every item refused).",
            self.commit_failures.load(Relaxed),
        );
        counter(
            &mut o,
            "hotline_relay_checkpoint_failures_total",
            "Background WAL checkpoints that failed (the store writer's own automatic \
             checkpoint then keeps the log bounded).",
            self.checkpoint_failures.load(Relaxed),
        );
        counter(
            &mut o,
            "hotline_relay_wal_sync_failures_total",
            "Syncs of the write-ahead log that failed: at most one, since the relay then \
             refuses what the sync was to cover and stops.",
            self.wal_sync_failures.load(Relaxed),
        );
        gauge(
            &mut o,
            "hotline_relay_wal_frames",
            "Pages (4 KiB) in the store's write-ahead log when the last background checkpoint \
             began; it starts over from zero after a checkpoint that copied every page.",
            &self.wal_frames.load(Relaxed),
        );
        gauge(
            &mut o,
            "hotline_relay_store_busy_seconds",
            "How long the store writer's current commit, or the current sync of its write-ahead \
             log, has been running (0 when neither runs). Seconds mean the disk is not \
             answering: nothing is accepted meanwhile.",
            &self.disk.busy().as_secs_f64(),
        );
        gauge(
            &mut o,
            "hotline_relay_roster_version",
            "Version of the roster in force.",
            &self.roster_version.load(Relaxed),
        );
        let _ = writeln!(o, "# HELP hotline_relay_messages_rejected_total Submissions and receipts refused, by reason.\n# TYPE hotline_relay_messages_rejected_total counter");
        for (i, c) in self.rejected.iter().enumerate() {
            let _ = writeln!(
                o,
                "hotline_relay_messages_rejected_total{{reason=\"{}\"}} {}",
                reject_name(i),
                c.load(Relaxed)
            );
        }
        for (name, help, counts) in [
            (
                "hotline_relay_connections_closed_total",
                "Connections the relay closed, by the code it closed them with.",
                &self.closes,
            ),
            (
                "hotline_relay_connections_ended_by_node_total",
                "Connections the node closed, by the code it closed them with (Normal: it left).",
                &self.node_closes,
            ),
        ] {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter");
            for (i, c) in counts.iter().enumerate() {
                let code = ErrorCode::from_close_code(i as u64)
                    .map(|c| format!("{c:?}"))
                    .unwrap_or_default();
                let _ = writeln!(o, "{name}{{code=\"{code}\"}} {}", c.load(Relaxed));
            }
        }
        counter(
            &mut o,
            "hotline_relay_connections_lost_total",
            "Connections lost: timed out (the node went silent), reset, or broken at the transport.",
            self.lost.load(Relaxed),
        );
        for (name, help, depths) in [
            (
                "hotline_relay_queue_depth",
                "Messages queued for a recipient.",
                &self.depths,
            ),
            (
                "hotline_relay_forward_queue_depth",
                "Receipts held for a sender until it confirms it has stored them (ReceiptsStored).",
                &self.forward_depths,
            ),
        ] {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} gauge");
            let d = depths.lock().unwrap_or_else(|p| p.into_inner());
            let mut v: Vec<_> = d.iter().collect();
            v.sort();
            for (p, n) in v {
                let _ = writeln!(o, "{name}{{participant=\"{p}\"}} {n}");
            }
        }
        // One series per live session, in participant order.
        let per_participant =
            |o: &mut String, name: &str, kind: &str, help: &str, values: &[String]| {
                let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
                for ((p, _), v) in sessions.iter().zip(values) {
                    let _ = writeln!(o, "{name}{{participant=\"{p}\"}} {v}");
                }
            };
        let ones = vec!["1".to_string(); sessions.len()];
        per_participant(
            &mut o,
            "hotline_relay_participant_connected",
            "gauge",
            "Whether a participant has a live session.",
            &ones,
        );
        // Each session's link, from QUIC's own figures for its connection: a member behind a
        // poor link receives late, and these say so.
        let paths: Vec<_> = sessions.iter().map(|(_, c)| c.stats().path).collect();
        per_participant(
            &mut o,
            "hotline_relay_participant_rtt_seconds",
            "gauge",
            "Smoothed round-trip time of a participant's session's connection.",
            &sessions
                .iter()
                .map(|(_, c)| c.rtt().as_secs_f64().to_string())
                .collect::<Vec<_>>(),
        );
        per_participant(
            &mut o,
            "hotline_relay_participant_packets_sent_total",
            "counter",
            "QUIC packets sent to a participant since its session's connection was made (starts again with each connection).",
            &paths.iter().map(|p| p.sent_packets.to_string()).collect::<Vec<_>>(),
        );
        per_participant(
            &mut o,
            "hotline_relay_participant_packets_lost_total",
            "counter",
            "QUIC packets to a participant declared lost since its session's connection was made (starts again with each connection).",
            &paths.iter().map(|p| p.lost_packets.to_string()).collect::<Vec<_>>(),
        );
        self.batch.render(
            &mut o,
            "hotline_relay_commit_batch_size",
            "Items per group commit.",
            1.0,
        );
        self.commit_us.render(
            &mut o,
            "hotline_relay_commit_duration_seconds",
            "Time the store writer spent on one successful group commit: its statements, the commit (without its sync, which runs on its own thread: hotline_relay_wal_sync_duration_seconds), and any WAL checkpoint SQLite ran with it. Every accepted message waits for one.",
            1_000_000.0,
        );
        self.wal_sync_us.render(
            &mut o,
            "hotline_relay_wal_sync_duration_seconds",
            "Time one sync of the write-ahead log took, on its own thread: the answers of every commit written before it began wait for it. One sync covers several commits under load.",
            1_000_000.0,
        );
        self.checkpoint_us.render(
            &mut o,
            "hotline_relay_checkpoint_duration_seconds",
            "Time one round of background WAL checkpoints took (copying committed pages into the database file and syncing it), off the store writer's path.",
            1_000_000.0,
        );
        self.verify_batch.render(
            &mut o,
            "hotline_relay_receipt_verify_batch_size",
            "Receipt signatures verified as one batch (gathered from all sessions).",
            1.0,
        );
        self.latency.render(
            &mut o,
            "hotline_relay_delivery_latency_seconds",
            "Time from acceptance to the recipient's delivered receipt being stored.",
            1_000.0,
        );
        // A message's way through the relay, stage by stage: check, wait for the writer,
        // commit (hotline_relay_commit_duration_seconds), fan-out.
        self.submit_check_us.render(
            &mut o,
            "hotline_relay_submit_check_seconds",
            "Time from reading a submission to handing it to the store writer: decoding, the roster, policy and signature checks (one batch for the frames read together).",
            1_000_000.0,
        );
        self.writer_wait_us.render(
            &mut o,
            "hotline_relay_writer_wait_seconds",
            "Time a checked submission waited for the store writer: from its hand-off to the start of the group commit that holds it (the writer's wake-up, or a commit in progress). Growing waits mean the writer is the bottleneck.",
            1_000_000.0,
        );
        self.fanout_us.render(
            &mut o,
            "hotline_relay_fanout_seconds",
            "Time from the store writer's post of a message, made before its commit is written and synced, to its write into a connected recipient's stream, one observation per recipient (recipients served from memory; a backlog read back from the store is not counted). Growing times mean the relay is short of CPU for its sessions.",
            1_000_000.0,
        );
        o
    }
}

fn reject_name(tag: usize) -> &'static str {
    const NAMES: [&str; REJECT_CODES] = [
        "malformed",
        "bad_signature",
        "not_author",
        "unknown_sender",
        "revoked",
        "unknown_recipient",
        "unknown_group",
        "policy_denied",
        "no_recipients",
        "too_large",
        "replayed_seq",
        "future_timestamp",
        "id_conflict",
        "queue_full",
        "rate_limited",
        "storage_unavailable",
        "unknown_message",
        "unsupported_version",
    ];
    NAMES.get(tag).copied().unwrap_or("other")
}

/// Serves `/metrics` and `/health` until `shutdown` resolves.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    hub: Arc<crate::hub::Hub>,
    stall_after: std::time::Duration,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    use axum::routing::get;
    let m = metrics.clone();
    let h = hub.clone();
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let body = m.render(&h.sessions());
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "text/plain; version=0.0.4",
                        )],
                        body,
                    )
                }
            }),
        )
        .route(
            "/health",
            get(move || {
                let sessions = hub.session_count();
                let roster = metrics.roster_version.load(Relaxed);
                let busy = metrics.disk.busy();
                let (code, status) = health_status(busy, metrics.disk.failing(), stall_after);
                async move {
                    (
                        code,
                        axum::Json(serde_json::json!({
                            "status": status,
                            "sessions": sessions,
                            "roster_version": roster,
                            "store_busy_ms": u64::try_from(busy.as_millis()).unwrap_or(u64::MAX),
                        })),
                    )
                }
            }),
        );
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::error!(error = %e, "metrics server failed");
    }
}

/// Binds the metrics listener (loopback only; checked by the config).
pub(crate) async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `/health` is ok until a commit or sync has run for the threshold, or while the last
    /// commit failed; a stall says so before a failure.
    #[test]
    fn health_is_unavailable_while_the_store_stalls_or_fails() {
        use axum::http::StatusCode;
        let ms = std::time::Duration::from_millis;
        let at = ms(10_000);
        assert_eq!(health_status(ms(0), false, at), (StatusCode::OK, "ok"));
        assert_eq!(health_status(ms(9_999), false, at), (StatusCode::OK, "ok"));
        assert_eq!(
            health_status(ms(10_000), false, at),
            (StatusCode::SERVICE_UNAVAILABLE, "store_stalled")
        );
        assert_eq!(
            health_status(ms(0), true, at),
            (StatusCode::SERVICE_UNAVAILABLE, "store_failing")
        );
        assert_eq!(
            health_status(ms(20_000), true, at),
            (StatusCode::SERVICE_UNAVAILABLE, "store_stalled")
        );
        let d = DiskWatch::new();
        assert_eq!(d.busy(), ms(0));
        d.commit_began(std::time::Instant::now());
        d.commit_ended(false);
        assert!(d.failing() && d.busy() == ms(0));
        d.sync_began(std::time::Instant::now());
        d.commit_began(std::time::Instant::now());
        assert!(d.busy() < ms(10_000));
        d.sync_ended();
        d.commit_ended(true);
        assert!(!d.failing() && d.busy() == ms(0));
    }

    /// The alerting rules OPERATIONS.md 7.2 suggests watch metrics this relay exports, and
    /// the closes they count by code are codes it closes with: a rule on a renamed metric,
    /// or on `{code="LimitExceed"}`, never fires, and nothing says so.
    #[test]
    fn the_suggested_alerts_name_metrics_the_relay_exports() {
        let doc = include_str!("../../../docs/OPERATIONS.md");
        let rules = doc
            .split("### 7.2")
            .nth(1)
            .and_then(|s| s.split("### 7.3").next())
            .and_then(|s| s.split("```yaml").nth(1))
            .and_then(|s| s.split("```").next())
            .expect("OPERATIONS.md 7.2 holds the rules in a yaml block");
        let text = Metrics::new().render(&[]);
        let exported: std::collections::HashSet<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next())
            .collect();
        let mut named = 0;
        for line in rules.lines() {
            for (at, _) in line.match_indices("hotline_relay_") {
                let name: String = line[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s).filter(|b| exported.contains(b)))
                    .unwrap_or(&name);
                assert!(exported.contains(base), "{name} is not exported: {line}");
                named += 1;
                if let Some(codes) = line[at + name.len()..]
                    .strip_prefix("{code=~\"")
                    .or_else(|| line[at + name.len()..].strip_prefix("{code=\""))
                {
                    let codes = codes.split('"').next().unwrap_or_default();
                    for code in codes.split('|') {
                        let series = format!("{name}{{code=\"{code}\"}}");
                        assert!(text.contains(&series), "no {series}: {line}");
                    }
                }
            }
        }
        assert!(named >= 15, "only {named} metrics named in the rules");
    }

    /// Every bucket bound is printed as the decimal it stands for: Prometheus matches `le`
    /// labels as strings, and `0.00009999999999999999` is not `0.0001`.
    #[test]
    fn bucket_bounds_print_as_decimals() {
        let mut out = String::new();
        let h = Histogram::new(COMMIT_BUCKETS_US);
        h.observe(250);
        h.render(&mut out, "c", "help", 1_000_000.0);
        let h = Histogram::new(LATENCY_BUCKETS_MS);
        h.render(&mut out, "l", "help", 1_000.0);
        let les: Vec<&str> = out
            .lines()
            .filter_map(|l| l.split("le=\"").nth(1)?.split('"').next())
            .collect();
        assert_eq!(
            les,
            [
                "0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05",
                "0.1", "0.25", "1", "+Inf", "0.001", "0.002", "0.005", "0.01", "0.025", "0.05",
                "0.1", "0.25", "0.5", "1", "5", "30", "300", "+Inf",
            ]
        );
        assert!(out.contains("c_sum 0.00025\n"), "{out}");
    }
}
