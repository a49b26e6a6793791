//! What every peer run shares: the plan, the ledger of sends, acceptances and deliveries, the
//! publisher's pacing loop (the same as `hotline-bench`'s sender), the subscribers' durable
//! store, and the report.
//!
//! A message's payload starts with its index (8 bytes, big-endian) and a run tag, so a
//! subscriber finds its send time without any other lookup, exactly as `hotline-bench` does
//! with message ids.

use std::io::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use serde::Serialize;
use tokio::sync::Notify;

/// Most messages taken from a channel and stored as one batch (as `hotline-bench`).
pub const BATCH_MAX: usize = 4_096;
/// Most messages written in one go by the publisher (as `hotline-bench`).
pub const WRITE_MAX: usize = 256;

/// How a subscriber makes what it receives durable before it acknowledges it to the broker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// Append the batch to the subscriber's own file and `fdatasync` it (as
    /// `hotline-bench --durability fsync`).
    Fsync,
    /// Write the batch to one log shared by every subscriber (a ring of allocated blocks),
    /// group-committed by one thread (the default, as `hotline-bench`'s; `grouplog.rs`).
    Group,
    /// Nothing: acknowledge on receipt.
    None,
}

/// One run's parameters.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Messages per second, or `None` for as fast as the window allows.
    pub rate: Option<f64>,
    /// Maximum rate: messages not yet durable at every subscriber (and acknowledged by the
    /// broker) allowed in flight.
    pub window: usize,
    /// How long to publish.
    pub duration: Duration,
    /// Most messages in one run.
    pub max_messages: usize,
    /// Subscribers (each its own connection and durable subscription).
    pub subscribers: usize,
    /// Payload size, bytes.
    pub body_bytes: usize,
    /// What subscribers do before acknowledging.
    pub durability: Durability,
    /// How long to wait after publishing stops for everything to finish.
    pub drain_timeout: Duration,
}

/// State shared by the publisher and every subscriber of one run.
pub struct Ledger {
    t0: Instant,
    tag: [u8; 8],
    subscribers: u32,
    /// Send time of each message, ns since `t0`, plus one (0: not sent).
    sent_ns: Vec<AtomicU64>,
    /// Per message: subscribers that hold it durably, plus one once the broker accepted it.
    progress: Vec<AtomicU32>,
    /// Messages sent and not finished.
    pub inflight: AtomicUsize,
    /// Signalled when a message finishes.
    pub room: Notify,
    pub sent: AtomicU64,
    pub accepted: AtomicU64,
    pub finished: AtomicU64,
    pub deliveries: AtomicU64,
    pub duplicates: AtomicU64,
    last_event_ns: AtomicU64,
    accept_us: Mutex<Vec<u64>>,
    errors: Mutex<Vec<String>>,
}

impl Ledger {
    pub fn new(plan: &Plan) -> Self {
        let n = plan.max_messages;
        let mut tag = [0u8; 8];
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        tag.copy_from_slice(&(nanos ^ u64::from(std::process::id())).to_be_bytes());
        Self {
            t0: Instant::now(),
            tag,
            subscribers: plan.subscribers as u32,
            sent_ns: (0..n).map(|_| AtomicU64::new(0)).collect(),
            progress: (0..n).map(|_| AtomicU32::new(0)).collect(),
            inflight: AtomicUsize::new(0),
            room: Notify::new(),
            sent: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            finished: AtomicU64::new(0),
            deliveries: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            last_event_ns: AtomicU64::new(0),
            accept_us: Mutex::new(Vec::new()),
            errors: Mutex::new(Vec::new()),
        }
    }

    pub fn now_ns(&self) -> u64 {
        self.t0.elapsed().as_nanos() as u64
    }

    /// `at` on the ledger's clock.
    pub fn ns_at(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.t0).as_nanos() as u64
    }

    pub fn capacity(&self) -> usize {
        self.sent_ns.len()
    }

    /// The payload of message `idx`: index, run tag, then printable filler to `len` bytes.
    pub fn payload(&self, idx: usize, len: usize) -> Bytes {
        const TEXT: &[u8] =
            b"CICA Hotline benchmark body: the quick brown fox jumps over the lazy dog. ";
        let mut b = Vec::with_capacity(len.max(16));
        b.extend_from_slice(&(idx as u64).to_be_bytes());
        b.extend_from_slice(&self.tag);
        let mut i = 0;
        while b.len() < len {
            b.push(TEXT[i % TEXT.len()]);
            i += 1;
        }
        Bytes::from(b)
    }

    /// The index a payload carries, if it is one of this run's.
    pub fn index_of(&self, payload: &[u8]) -> Option<usize> {
        if payload.len() < 16 || payload[8..16] != self.tag {
            return None;
        }
        let mut b = [0u8; 8];
        b.copy_from_slice(&payload[..8]);
        let i = u64::from_be_bytes(b) as usize;
        (i < self.sent_ns.len()).then_some(i)
    }

    /// Records that message `idx` is being written now.
    pub fn mark_sent(&self, idx: usize, now_ns: u64) {
        self.sent_ns[idx].store(now_ns + 1, Relaxed);
        self.inflight.fetch_add(1, Relaxed);
        self.sent.fetch_add(1, Relaxed);
    }

    /// Microseconds from the send of `idx` to `now_ns`.
    pub fn since_sent_us(&self, idx: usize, now_ns: u64) -> Option<u64> {
        let s = self.sent_ns[idx].load(Relaxed);
        (s > 0).then(|| now_ns.saturating_sub(s - 1) / 1_000)
    }

    fn event(&self, now_ns: u64) {
        self.last_event_ns.fetch_max(now_ns, Relaxed);
    }

    fn progress(&self, idx: usize, now_ns: u64) {
        let n = self.progress[idx].fetch_add(1, Relaxed) + 1;
        if n == self.subscribers + 1 {
            self.finished.fetch_add(1, Relaxed);
            self.inflight.fetch_sub(1, Relaxed);
            self.room.notify_one();
            self.event(now_ns);
        }
    }

    /// The broker acknowledged the publication of `idx`.
    pub fn accepted(&self, idx: usize) {
        let now = self.now_ns();
        self.accepted.fetch_add(1, Relaxed);
        if let Some(us) = self.since_sent_us(idx, now) {
            self.accept_us
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(us);
        }
        self.progress(idx, now);
    }

    /// A subscriber holds `idx` durably for the first time.
    fn delivered(&self, idx: usize, now_ns: u64) {
        self.deliveries.fetch_add(1, Relaxed);
        self.event(now_ns);
        self.progress(idx, now_ns);
    }

    pub fn error(&self, who: &str, e: impl std::fmt::Display) {
        let mut v = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        if v.len() < 8 {
            v.push(format!("{who}: {e}"));
        }
    }

    pub fn errors(&self) -> Vec<String> {
        self.errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn take_accept_us(&self) -> Vec<u64> {
        std::mem::take(&mut *self.accept_us.lock().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn last_event_ns(&self) -> u64 {
        self.last_event_ns.load(Relaxed)
    }
}

/// One subscriber's durable store and measurements.
pub struct Recipient {
    pub who: String,
    file: Option<std::fs::File>,
    group: Option<std::sync::Arc<grouplog::GroupLog>>,
    held: Vec<u64>,
    /// Send → the subscriber has it durably (the `e2e` of `hotline-bench`).
    pub e2e_us: Vec<u64>,
    /// Send → the client library handed it to the subscriber.
    pub recv_us: Vec<u64>,
}

/// A message a subscriber received: its index, when, and its payload.
pub struct Received {
    pub idx: usize,
    pub at_ns: u64,
    pub payload: Bytes,
}

impl Recipient {
    pub fn open(who: String, d: Durability, dir: &Path, capacity: usize) -> anyhow::Result<Self> {
        let group = match d {
            Durability::Group => Some(grouplog::GroupLog::shared(&dir.join("group.log"))?),
            _ => None,
        };
        let file = match d {
            Durability::Fsync => {
                let p = dir.join(&who);
                Some(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&p)
                        .with_context(|| format!("{}", p.display()))?,
                )
            }
            Durability::None | Durability::Group => None,
        };
        Ok(Self {
            who,
            file,
            group,
            held: vec![0; capacity.div_ceil(64)],
            e2e_us: Vec::new(),
            recv_us: Vec::new(),
        })
    }

    /// Makes a batch durable (one append and one `fdatasync`, as `hotline-bench`'s
    /// recipients), then counts the messages not held before. The caller acknowledges the
    /// batch to the broker afterwards.
    pub async fn store(&mut self, ledger: &Ledger, batch: Vec<Received>) -> anyhow::Result<()> {
        let mut fresh = Vec::with_capacity(batch.len());
        let mut rows = Vec::new();
        for r in batch {
            let (w, b) = (r.idx / 64, 1u64 << (r.idx % 64));
            if self.held[w] & b != 0 {
                ledger.duplicates.fetch_add(1, Relaxed);
                continue;
            }
            self.held[w] |= b;
            if let Some(us) = ledger.since_sent_us(r.idx, r.at_ns) {
                self.recv_us.push(us);
            }
            fresh.push(r.idx);
            rows.push(r.payload);
        }
        let records = |rows: Vec<Bytes>| {
            let mut buf = Vec::with_capacity(rows.iter().map(|r| r.len() + 4).sum());
            for r in &rows {
                buf.extend_from_slice(&(r.len() as u32).to_le_bytes());
                buf.extend_from_slice(r);
            }
            buf
        };
        // End to end is to the instant the sync returned (taken where it returned), not to
        // this task's wake-up after it; as `hotline-bench`.
        let mut durable_at = None;
        if let (Some(log), false) = (&self.group, rows.is_empty()) {
            durable_at = Some(
                log.append_durable(records(rows))
                    .await
                    .context("group write and fdatasync")?,
            );
        } else if let Some(mut f) = self.file.take() {
            if !rows.is_empty() {
                let (f2, res) = tokio::task::spawn_blocking(move || {
                    let res = f
                        .write_all(&records(rows))
                        .and_then(|_| f.sync_data())
                        .map(|()| Instant::now());
                    (f, res)
                })
                .await
                .context("store task")?;
                f = f2;
                durable_at = Some(res.context("append and fdatasync")?);
            }
            self.file = Some(f);
        }
        let now = durable_at.map_or_else(|| ledger.now_ns(), |t| ledger.ns_at(t));
        for idx in fresh {
            if let Some(us) = ledger.since_sent_us(idx, now) {
                self.e2e_us.push(us);
            }
            ledger.delivered(idx, now);
        }
        Ok(())
    }
}

// Percentiles and what `/proc` says: the same source file as `hotline-bench`'s, so both
// benchmarks compute their figures the same way (this crate stays outside the workspace, so
// it includes the file rather than depending on `hotline-bench`).
#[allow(dead_code)]
#[path = "../../src/stats.rs"]
mod stats;

// The shared group-committed log, the same source file as `hotline-bench`'s (whose report
// alone prints the log's totals).
#[allow(dead_code)]
#[path = "../../src/grouplog.rs"]
mod grouplog;
pub use stats::{
    fsync_probe_ms, guest_halt_poll_ns, halt_poll_label, load_avg, CpuMeter, Percentiles,
};

/// What one peer run measured (field names follow `hotline-bench`'s report where they mean
/// the same thing).
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub workload: String,
    /// `mqtt`, `jetstream` or `redis`.
    pub system: String,
    /// Server and version, as the script says.
    pub label: String,
    /// What an acknowledged publication guarantees, in a few words, as the script says.
    pub guarantee: String,
    /// The same at length.
    pub note: String,
    pub offered_per_s: Option<f64>,
    pub duration_s: f64,
    pub window: Option<usize>,
    pub senders: usize,
    pub recipients: usize,
    pub fanout: usize,
    pub body_bytes: usize,
    pub recipient_durability: Durability,
    pub sent: u64,
    pub accepted: u64,
    pub deliveries: u64,
    pub duplicate_deliveries: u64,
    pub finished: u64,
    pub span_s: f64,
    pub accepted_per_s: f64,
    pub deliveries_per_s: f64,
    /// Publish → the subscriber has it durably (same meaning as `hotline-bench`'s `e2e`).
    pub e2e: Percentiles,
    /// Publish → the client library handed it to the subscriber.
    pub received: Percentiles,
    /// Publish → the broker's acknowledgement.
    pub accept: Percentiles,
    pub server_cpu_pct: Option<f64>,
    pub bench_cpu_pct: Option<f64>,
    pub server_rss_mib: Option<f64>,
    pub load_avg_before: f64,
    /// Median of twenty `fdatasync`'d 1 KiB appends just before the run, ms (the disk's
    /// state; the same probe as `hotline-bench`'s).
    pub fsync_probe_ms: f64,
    /// The guest's halt-polling limit before the run, ns (`stats::guest_halt_poll_ns`; the
    /// same as `hotline-bench`'s).
    pub guest_halt_poll_ns: Option<u64>,
    pub errors: Vec<String>,
}

impl Report {
    pub fn line(&self) -> String {
        let rate = match self.offered_per_s {
            Some(r) => format!("rate={r}/s"),
            None => format!("rate=max window={}", self.window.unwrap_or(0)),
        };
        let opt = |v: Option<f64>, unit: &str| {
            v.map(|v| format!("{v:.0}{unit}"))
                .unwrap_or_else(|| "-".into())
        };
        format!(
            "{label} fanout37 {rate} {dur:.0}s: accepted {acc:.0}/s deliveries {del:.0}/s | e2e(durable) ms p50/p99/max {e2e} | received ms {recv} | accept ms {accl} | server cpu {scpu} rss {rss} | bench cpu {bcpu} | sent {sent} accepted {accepted} delivered {delivered} dup {dup} finished {fin} | durability {d:?} | load {load:.2} | fsync {fs:.2}ms{hp}{errs}",
            label = self.label,
            dur = self.duration_s,
            acc = self.accepted_per_s,
            del = self.deliveries_per_s,
            e2e = self.e2e.ms(),
            recv = self.received.ms(),
            accl = self.accept.ms(),
            scpu = opt(self.server_cpu_pct, "%"),
            rss = opt(self.server_rss_mib, "MiB"),
            bcpu = opt(self.bench_cpu_pct, "%"),
            sent = self.sent,
            accepted = self.accepted,
            delivered = self.deliveries,
            dup = self.duplicate_deliveries,
            fin = self.finished,
            d = self.recipient_durability,
            load = self.load_avg_before,
            fs = self.fsync_probe_ms,
            hp = halt_poll_label(self.guest_halt_poll_ns),
            errs = if self.errors.is_empty() {
                String::new()
            } else {
                format!(" | errors: {}", self.errors.join("; "))
            },
        )
    }
}

/// A publisher of one system.
pub trait Publish {
    /// Writes message `idx` (the caller has marked it sent).
    fn publish(&mut self, idx: usize) -> impl std::future::Future<Output = anyhow::Result<()>>;
}

/// Publishes message after message: at `plan.rate`, or as fast as `plan.window` unfinished
/// messages allow, until the duration or the message cap runs out. `publish(idx)` writes one
/// message (it marks nothing itself). Returns how many were sent.
pub async fn publish_loop(
    plan: &Plan,
    ledger: &Ledger,
    start_at: Instant,
    publisher: &mut impl Publish,
) -> anyhow::Result<usize> {
    tokio::time::sleep_until(start_at.into()).await;
    let deadline = start_at + plan.duration;
    let total = ledger.capacity();
    let mut k = 0;
    while k < total && Instant::now() < deadline {
        let n = match plan.rate {
            Some(r) => {
                let due = start_at + Duration::from_secs_f64(k as f64 / r);
                if Instant::now() < due {
                    tokio::time::sleep_until(due.into()).await;
                }
                let now = Instant::now();
                let mut n = 0;
                while k + n < total
                    && n < WRITE_MAX
                    && start_at + Duration::from_secs_f64((k + n) as f64 / r) <= now
                {
                    n += 1;
                }
                n.max(1)
            }
            None => {
                let free = loop {
                    let room = ledger.room.notified();
                    let f = ledger.inflight.load(Relaxed);
                    if f < plan.window {
                        break plan.window - f;
                    }
                    tokio::select! {
                        _ = room => {}
                        _ = tokio::time::sleep_until(deadline.into()) => break 0,
                    }
                };
                if free == 0 {
                    break;
                }
                free.min(WRITE_MAX).min(total - k)
            }
        };
        let now = ledger.now_ns();
        for i in k..k + n {
            ledger.mark_sent(i, now);
            publisher.publish(i).await?;
        }
        k += n;
    }
    Ok(k)
}

/// Waits until every sent message is finished, or `give_up`.
pub async fn drain(ledger: &Ledger, give_up: Instant) {
    loop {
        let room = ledger.room.notified();
        if ledger.finished.load(Relaxed) >= ledger.sent.load(Relaxed) || Instant::now() >= give_up {
            return;
        }
        let _ = tokio::time::timeout(Duration::from_millis(100), room).await;
    }
}

/// Resident memory of a process, MiB.
pub fn rss_mib(pid: u32) -> Option<f64> {
    stats::rss_kib(pid).map(|kib| kib as f64 / 1024.0)
}
