//! Message traffic through the relay: senders submit pre-signed messages (at a fixed rate, or
//! as fast as a window of unfinished messages allows); recipients store each batch of
//! deliveries durably and answer with one signed cumulative delivered receipt; senders
//! collect the forwarded receipts and tell the relay they hold them, as a node does.
//!
//! Every message id carries its index (`run tag ‖ index`), so any party can find the send
//! time of a message it sees without decoding more than the id.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use hotline_net::Session;
use hotline_proto::frame::{self, NodeToRelay, RelayToNode, Subject};
use hotline_proto::limits::RECEIPT_ITEMS_MAX;
use hotline_proto::{
    Audience, Envelope, Kind, MessageId, Precedence, Seq, Signed, Status, PROTOCOL_VERSION,
};
use serde::Serialize;
use tokio::sync::{mpsc, watch, Notify};

use crate::client::{self, Durability, Inbox, Records, Store};
use crate::network::{Network, Peer};
use crate::relay::{self, Relay};
use crate::stats::{self, CpuMeter, Percentiles, SwitchMeter};
use hotline_relay::thread_names::{self as names, comm};

/// Frames one client drains from its reader before handling them as one batch.
const BATCH_FRAMES_MAX: usize = 4_096;
/// Batches of forwarded receipts a sender may have read and not yet kept; past it, it stops
/// reading until one is kept.
const KEPT_BATCHES_MAX: usize = 16;
/// Submissions written to the stream in one write.
const WRITE_FRAMES_MAX: usize = 256;

/// When a sender counts a message as finished (it frees a place in the window).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CompleteOn {
    /// When the relay has accepted it (no recipient is online).
    #[value(skip)]
    Accepted,
    /// When every recipient's delivered receipt is back at the sender (the default: what a
    /// sender's operator waits for).
    #[value(name = "receipts")]
    AllReceipts,
    /// When the relay has accepted it and every recipient holds it durably: the point at
    /// which `peers-bench` counts a broker's message finished, for a like-for-like window.
    /// The receipts still flow, and their latency is still measured.
    #[value(name = "durable")]
    AllDurable,
}

/// One sender and whom it writes to.
#[derive(Clone)]
pub struct SenderSpec {
    /// Who sends.
    pub peer: Peer,
    /// The audience of every message.
    pub audience: Audience,
    /// Recipients the audience resolves to (receipts expected per message).
    pub fanout: u32,
}

/// A traffic workload.
#[derive(Clone)]
pub struct Traffic {
    /// Name in reports (`fanout37`, `p2p`…).
    pub name: String,
    /// The senders.
    pub senders: Vec<SenderSpec>,
    /// The recipients (each a connected client).
    pub recipients: Vec<Peer>,
    /// Offered rate, messages per second over all senders; `None`: as fast as the window
    /// allows.
    pub rate: Option<f64>,
    /// How long to send.
    pub duration: Duration,
    /// Most unfinished messages per sender.
    pub window: usize,
    /// Bytes of each body.
    pub body_bytes: usize,
    /// How recipients (and senders, for forwarded receipts) make things durable.
    pub durability: Durability,
    /// How long recipients let stored deliveries wait to share one receipt (`Inbox::new`).
    pub receipt_pace: Duration,
    /// Most messages signed in advance over all senders when `rate` is `None`.
    pub max_messages: usize,
    /// How long to wait after the last send for everything to finish.
    pub drain_timeout: Duration,
    /// When a message is finished.
    pub complete_on: CompleteOn,
    /// Where to write every delivery's times as CSV ([`write_deliveries`]), if anywhere.
    pub deliveries_csv: Option<std::path::PathBuf>,
}

/// One delivery's times at its recipient, µs after its message's send (saturating at
/// `u32::MAX`, some 71 minutes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeliveryTimes {
    /// The message's index in the run.
    pub message: u32,
    /// When the recipient's task read the frame (or the first frame of the batch it came
    /// in): it has crossed the relay and both network stacks. A recipient reads again only
    /// once its previous batch is durable (as a node's link does), so while its log is
    /// slow its reads wait too.
    pub read_us: u32,
    /// When the recipient's sync (or commit) that holds it returned: the end-to-end time.
    pub durable_us: u32,
}

/// The end-to-end time split at the recipient's read (`DeliveryTimes::read_us`), over every
/// delivery of a run: what the relay and the network take, how far apart a message's
/// recipients get it, and what the recipients' durability adds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct E2eSplit {
    /// Send → a recipient read it, every delivery.
    pub read: Percentiles,
    /// Send → the first of its recipients read it, every message: the relay's and the
    /// network's path without the fan-out's spread.
    pub first_read: Percentiles,
    /// A recipient's read → it held the delivery durably, every delivery.
    pub then_durable: Percentiles,
}

impl E2eSplit {
    /// The split of `deliveries`, whose messages are numbered below `messages`.
    pub fn of<'a>(
        deliveries: impl Iterator<Item = &'a DeliveryTimes> + Clone,
        messages: usize,
    ) -> Self {
        let mut first = vec![u32::MAX; messages];
        for d in deliveries.clone() {
            if let Some(f) = first.get_mut(d.message as usize) {
                *f = (*f).min(d.read_us);
            }
        }
        Self {
            read: percentiles_us(deliveries.clone().map(|d| d.read_us)),
            first_read: percentiles_us(first.into_iter().filter(|&f| f != u32::MAX)),
            then_durable: percentiles_us(
                deliveries.map(|d| d.durable_us.saturating_sub(d.read_us)),
            ),
        }
    }
}

/// The recipients' group log in a summary line: ` (log: N syncs/msg, batches wait W ms,
/// write+sync S ms mean)`, or nothing without a log (no syncs counted).
pub(crate) fn log_label(
    syncs_per_msg: Option<f64>,
    wait_ms_mean: Option<f64>,
    sync_ms_mean: Option<f64>,
) -> String {
    let opt2 = |v: Option<f64>| v.map_or_else(|| "-".into(), |v| format!("{v:.2}"));
    match syncs_per_msg {
        Some(n) => format!(
            " (log: {n:.2} syncs/msg, batches wait {} ms, write+sync {} ms mean)",
            opt2(wait_ms_mean),
            opt2(sync_ms_mean)
        ),
        None => String::new(),
    }
}

/// The percentiles of some microsecond times.
pub(crate) fn percentiles_us(us: impl Iterator<Item = u32>) -> Percentiles {
    Percentiles::of(&mut us.map(u64::from).collect::<Vec<_>>())
}

/// Writes every delivery's times to `out` as CSV, a header line then one line a delivery:
/// `message,recipient,sent_us,read_us,durable_us`, with `sent_us` the message's send after
/// the run's scheduled start (`sent_us(message)`) and the other two after the send.
pub fn write_deliveries(
    out: impl std::io::Write,
    recipients: &[(String, Vec<DeliveryTimes>)],
    sent_us: impl Fn(u32) -> u64,
) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut f = std::io::BufWriter::new(out);
    writeln!(f, "message,recipient,sent_us,read_us,durable_us")?;
    for (who, ds) in recipients {
        for d in ds {
            let sent = sent_us(d.message);
            writeln!(
                f,
                "{},{who},{sent},{},{}",
                d.message, d.read_us, d.durable_us
            )?;
        }
    }
    f.flush()
}

/// What one traffic run measured.
#[derive(Clone, Debug, Serialize)]
pub struct TrafficReport {
    /// Workload name.
    pub workload: String,
    /// Offered messages per second (`None`: maximum).
    pub offered_per_s: Option<f64>,
    /// Sending time, seconds.
    pub duration_s: f64,
    /// Unfinished messages allowed per sender (maximum-rate runs).
    pub window: Option<usize>,
    /// When a message stops counting against the window.
    pub window_until: CompleteOn,
    /// Sending clients.
    pub senders: usize,
    /// Receiving clients.
    pub recipients: usize,
    /// Recipients per message.
    pub fanout: u32,
    /// Body size, bytes.
    pub body_bytes: usize,
    /// What "durably" means at the recipients.
    pub recipient_durability: Durability,
    /// Recipients' receipt pacing, milliseconds (0: a receipt per durable batch).
    pub receipt_pace_ms: u64,
    /// With `group` durability: the clients' shared log's group syncs during the run, per
    /// accepted message (the recipients' batches and the senders' receipts).
    pub clients_log_syncs_per_msg: Option<f64>,
    /// Their batches' mean wait to be taken by the log's thread (its wake-up, or the sync
    /// before), ms: with the sync, a recipient's share of the end-to-end time.
    pub clients_log_wait_ms_mean: Option<f64>,
    /// A group's mean write and `fdatasync`, ms.
    pub clients_log_sync_ms_mean: Option<f64>,
    /// Messages signed for the run.
    pub planned: u64,
    /// Messages written to the relay.
    pub sent: u64,
    /// `Accepted` answers.
    pub accepted: u64,
    /// `Rejected` answers.
    pub rejected: u64,
    /// Distinct messages made durable by recipients.
    pub deliveries: u64,
    /// Deliveries of a message a recipient already held.
    pub duplicate_deliveries: u64,
    /// Delivered receipts the relay stored (`ReceiptStored`).
    pub receipts: u64,
    /// Mean messages per receipt.
    pub items_per_receipt: f64,
    /// Messages finished (accepted, or all receipts back, as the workload says).
    pub finished: u64,
    /// From the first send to the last event, seconds (rates are counts over this).
    pub span_s: f64,
    /// Accepted per second.
    pub accepted_per_s: f64,
    /// Durable deliveries per second.
    pub deliveries_per_s: f64,
    /// Stored receipts per second.
    pub receipts_per_s: f64,
    /// Sender's send → recipient has it durably.
    pub e2e: Percentiles,
    /// The end-to-end time split at the recipient's read of the delivery: how much of it is
    /// the way there (relay and network) and how much the recipient's own durability.
    pub e2e_split: E2eSplit,
    /// Sender's send → every recipient's receipt is back at the sender.
    pub all_receipts: Percentiles,
    /// Sender's send → `Accepted` (the relay has committed it).
    pub accept: Percentiles,
    /// Relay CPU over the span, percent of one core.
    pub relay_cpu_pct: Option<f64>,
    /// The relay's CPU time over the run (from the scheduled start until every message
    /// finished) per accepted message, µs: steadier from run to run than rates on a shared
    /// machine.
    pub relay_cpu_us_per_msg: Option<f64>,
    /// The same for the relay's store writer thread alone.
    pub writer_cpu_us_per_msg: Option<f64>,
    /// The same for the relay's log-sync thread (its `fdatasync`s; thirty-sixth round: most
    /// of the CPU the relay's own durability costs on this machine's virtual disk).
    pub sync_cpu_us_per_msg: Option<f64>,
    /// The same for the relay's background checkpoint thread.
    pub checkpoint_cpu_us_per_msg: Option<f64>,
    /// The relay's voluntary context switches (each a thread going to sleep, most followed
    /// by a wake-up) during the run, per accepted message ([`stats::SwitchMeter`]).
    pub relay_sleeps_per_msg: Option<f64>,
    /// The same for the relay's store writer thread alone.
    pub writer_sleeps_per_msg: Option<f64>,
    /// Load generator CPU over the span, percent of one core.
    pub bench_cpu_pct: Option<f64>,
    /// Relay resident memory at the end, MiB.
    pub relay_rss_mib: Option<f64>,
    /// Relay transactions committed during the run.
    pub relay_commits: Option<f64>,
    /// Mean items (submissions + receipts) per relay commit.
    pub relay_items_per_commit: Option<f64>,
    /// Mean time the relay's writer spent on one commit (statements, commit, any
    /// checkpoint; the sync too where the relay syncs in its commits), ms.
    pub relay_commit_ms_mean: Option<f64>,
    /// Syncs of the relay's write-ahead log on its sync thread during the run (none: the
    /// relay syncs in its commits, or no metrics).
    pub relay_wal_syncs: Option<f64>,
    /// Their mean time, ms.
    pub relay_wal_sync_ms_mean: Option<f64>,
    /// Mean time of a message's stages in the relay, µs, from its metrics: read to hand-off
    /// to the writer (the checks and signature), the wait for the writer, a commit, commit
    /// to a recipient's stream (`relay::Metrics::stage_means_us`).
    pub relay_stages_us: Option<[Option<f64>; 4]>,
    /// The same stages' 99th percentiles, µs, each as the upper bound of the relay's
    /// histogram bucket it falls in (`relay::Metrics::stage_quantiles_us`): where the
    /// end-to-end tail comes from.
    pub relay_stages_p99_us: Option<[Option<f64>; 4]>,
    /// 1-minute load average before the run.
    pub load_avg_before: f64,
    /// Median fsync'd 1 KiB append before the run, ms (`stats::fsync_probe_ms`).
    pub fsync_probe_ms: f64,
    /// Median decode-and-verify of one signed 1 KiB message before the run, µs
    /// (`stats::verify_probe_us`).
    pub verify_probe_us: f64,
    /// The guest's halt-polling limit before the run, ns (`stats::guest_halt_poll_ns`).
    pub guest_halt_poll_ns: Option<u64>,
    /// Failures seen by clients (first few).
    pub errors: Vec<String>,
}

impl TrafficReport {
    /// One summary line.
    pub fn line(&self) -> String {
        let rate = match self.offered_per_s {
            Some(r) => format!("rate={r}/s"),
            None => format!(
                "rate=max window={}{}",
                self.window.unwrap_or(0),
                if self.window_until == CompleteOn::AllDurable {
                    " (until durable at all)"
                } else {
                    ""
                }
            ),
        };
        let opt = |v: Option<f64>, unit: &str| {
            v.map(|v| format!("{v:.0}{unit}"))
                .unwrap_or_else(|| "-".into())
        };
        let opt1 = |v: Option<f64>| v.map_or_else(|| "-".into(), |v| format!("{v:.1}"));
        let opt2 = |v: Option<f64>| v.map_or_else(|| "-".into(), |v| format!("{v:.2}"));
        let per_stage = |st: Option<[Option<f64>; 4]>| {
            st.map_or_else(|| "-".into(), |st| st.map(|v| opt(v, "")).join("/"))
        };
        format!(
            "{name} {rate} {dur:.0}s: accepted {acc:.0}/s deliveries {del:.0}/s receipts {rc:.0}/s ({ipr:.1} msgs/receipt) | e2e ms p50/p99/max {e2e} (read p50/p99 {read}, first read {first}, read to durable {held}) | all-{fan}-receipts ms p50/p99/max {all} | accept ms p50/p99/max {acc_l} | relay cpu {rcpu} ({rpm} us/msg, writer {wpm}, sync {spm}, checkpoints {cpm}) sleeps/msg {rsl} (writer {wsl}) rss {rss} commits {cm} ({ipc:.1} items each, {cms} ms mean) syncs {sy} ({syms} ms mean) | relay stages us mean: check/wait/commit/fanout {stages}, p99 at most {stages99} | bench cpu {bcpu} | sent {sent} accepted {accepted} rejected {rej} delivered {delivered} finished {fin} | durability {dur_mode:?}{log}{pace} | load {load:.2} fsync {fs:.2}ms verify {vp:.1}us{hp}{errs}",
            name = self.workload,
            dur = self.duration_s,
            acc = self.accepted_per_s,
            del = self.deliveries_per_s,
            rc = self.receipts_per_s,
            ipr = self.items_per_receipt,
            e2e = self.e2e.ms(),
            read = self.e2e_split.read.p50_p99_ms(),
            first = self.e2e_split.first_read.p50_p99_ms(),
            held = self.e2e_split.then_durable.p50_p99_ms(),
            fan = self.fanout,
            all = self.all_receipts.ms(),
            acc_l = self.accept.ms(),
            rcpu = opt(self.relay_cpu_pct, "%"),
            rpm = opt(self.relay_cpu_us_per_msg, ""),
            wpm = opt(self.writer_cpu_us_per_msg, ""),
            spm = opt(self.sync_cpu_us_per_msg, ""),
            cpm = opt(self.checkpoint_cpu_us_per_msg, ""),
            rsl = opt1(self.relay_sleeps_per_msg),
            wsl = opt1(self.writer_sleeps_per_msg),
            rss = opt(self.relay_rss_mib, "MiB"),
            cm = opt(self.relay_commits, ""),
            ipc = self.relay_items_per_commit.unwrap_or(0.0),
            cms = opt2(self.relay_commit_ms_mean),
            sy = opt(self.relay_wal_syncs, ""),
            syms = opt2(self.relay_wal_sync_ms_mean),
            stages = per_stage(self.relay_stages_us),
            stages99 = per_stage(self.relay_stages_p99_us),
            bcpu = opt(self.bench_cpu_pct, "%"),
            sent = self.sent,
            accepted = self.accepted,
            rej = self.rejected,
            delivered = self.deliveries,
            fin = self.finished,
            dur_mode = self.recipient_durability,
            log = log_label(
                self.clients_log_syncs_per_msg,
                self.clients_log_wait_ms_mean,
                self.clients_log_sync_ms_mean,
            ),
            pace = if self.receipt_pace_ms > 0 {
                format!(" receipt pace {} ms", self.receipt_pace_ms)
            } else {
                String::new()
            },
            load = self.load_avg_before,
            fs = self.fsync_probe_ms,
            vp = self.verify_probe_us,
            hp = stats::halt_poll_label(self.guest_halt_poll_ns),
            errs = if self.errors.is_empty() {
                String::new()
            } else {
                format!(" | errors: {}", self.errors.join("; "))
            },
        )
    }
}

/// State shared by every client of one run.
struct Ledger {
    t0: Instant,
    tag: [u8; 8],
    /// Send time of each message, ns since `t0`, plus one (0: not sent).
    sent_ns: Vec<AtomicU64>,
    /// Receipts back at the sender, per message.
    back: Vec<AtomicU32>,
    /// Per message: recipients that hold it durably, plus one once the relay accepted it
    /// (counted only for [`CompleteOn::AllDurable`]).
    durable: Vec<AtomicU32>,
    /// Messages per sender: message `i` is sender `i / per_sender`'s.
    per_sender: usize,
    /// Each sender's window, by sender number.
    windows: Vec<Arc<SenderState>>,
    /// When a message is finished.
    complete_on: CompleteOn,
    /// Each message's digest, set when it is signed. The 37 simulated recipients share
    /// this machine's cores with the relay; each real node would hash a delivery once, so
    /// they take it from here instead of hashing the same bytes 37 times.
    digests: Vec<std::sync::OnceLock<hotline_proto::Digest>>,
    sent: AtomicU64,
    accepted: AtomicU64,
    rejected: AtomicU64,
    finished: AtomicU64,
    deliveries: AtomicU64,
    duplicates: AtomicU64,
    receipts_stored: AtomicU64,
    receipt_items: AtomicU64,
    receipts_sent: AtomicU64,
    senders_done: AtomicUsize,
    last_event_ns: AtomicU64,
    progress: Notify,
    errors: Mutex<Vec<String>>,
}

impl Ledger {
    fn now_ns(&self) -> u64 {
        self.t0.elapsed().as_nanos() as u64
    }

    /// `at` on the ledger's clock.
    fn ns_at(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.t0).as_nanos() as u64
    }

    fn id(&self, idx: usize) -> MessageId {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.tag);
        b[8..].copy_from_slice(&(idx as u64).to_be_bytes());
        MessageId(b)
    }

    fn index(&self, id: &MessageId) -> Option<usize> {
        if id.0[..8] != self.tag {
            return None;
        }
        let mut b = [0u8; 8];
        b.copy_from_slice(&id.0[8..]);
        let i = u64::from_be_bytes(b) as usize;
        (i < self.sent_ns.len()).then_some(i)
    }

    /// When message `idx` was sent, ns after `t0`; `None` if it was not (`sent_ns` holds
    /// the time plus one, so that 0 means unsent).
    fn sent_at_ns(&self, idx: usize) -> Option<u64> {
        let s = self.sent_ns.get(idx)?.load(Relaxed);
        s.checked_sub(1)
    }

    /// Microseconds from the send of message `idx` to `now_ns`.
    fn since_sent_us(&self, idx: usize, now_ns: u64) -> Option<u64> {
        self.sent_at_ns(idx)
            .map(|s| now_ns.saturating_sub(s) / 1_000)
    }

    fn event(&self, now_ns: u64) {
        self.last_event_ns.fetch_max(now_ns, Relaxed);
    }

    /// Message `idx` is finished: its place in its sender's window is free.
    fn finish(&self, idx: usize) {
        if let Some(w) = self.windows.get(idx / self.per_sender) {
            w.inflight.fetch_sub(1, Relaxed);
            w.room.notify_one();
        }
        self.finished.fetch_add(1, Relaxed);
        self.progress.notify_waiters();
    }

    /// For [`CompleteOn::AllDurable`]: the relay accepted message `idx`, or one more
    /// recipient holds it durably; finishes it when that is everyone.
    fn durable_step(&self, idx: usize, now_ns: u64) {
        if self.complete_on != CompleteOn::AllDurable {
            return;
        }
        let Some(w) = self.windows.get(idx / self.per_sender) else {
            return;
        };
        if self.durable[idx].fetch_add(1, Relaxed) + 1 == w.fanout + 1 {
            self.event(now_ns);
            self.finish(idx);
        }
    }

    fn error(&self, who: &str, e: impl std::fmt::Display) {
        let mut v = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        if v.len() < 8 {
            v.push(format!("{who}: {e}"));
        }
    }
}

/// Signs `count` messages from `spec.peer`, with indices from `first` and sequence numbers
/// from 1, and encodes each as a `Submit` frame. Runs on all cores.
fn sign_messages(
    ledger: &Ledger,
    spec: &SenderSpec,
    first: usize,
    count: usize,
    body: &str,
) -> anyhow::Result<Vec<Vec<u8>>> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(count.max(1));
    let per = count.div_ceil(threads);
    let created = hotline_relay::now_ms();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || -> anyhow::Result<Vec<Vec<u8>>> {
                    let lo = t * per;
                    let hi = ((t + 1) * per).min(count);
                    let mut out = Vec::with_capacity(hi.saturating_sub(lo));
                    for k in lo..hi {
                        let env = Envelope {
                            seq: Seq(k as u64 + 1),
                            precedence: Precedence::Flash,
                            created_at_ms: created,
                            subject: format!("benchmark message {}", first + k),
                            ..alert(
                                ledger.id(first + k),
                                spec.peer.id.clone(),
                                spec.audience.clone(),
                                body.to_owned(),
                            )
                        };
                        let signed = Signed::sign(&env, &spec.peer.key)?;
                        let _ = ledger.digests[first + k].set(signed.digest());
                        out.push(frame::encode_frame(&NodeToRelay::Submit(signed))?);
                    }
                    Ok(out)
                })
            })
            .collect();
        let mut all = Vec::with_capacity(count);
        for h in handles {
            match h.join() {
                Ok(r) => all.extend(r?),
                Err(_) => bail!("a signing thread panicked"),
            }
        }
        Ok(all)
    })
}

/// What a recipient measured.
struct RecipientOut {
    who: String,
    deliveries: Vec<DeliveryTimes>,
}

async fn recipient(
    mut inbox: Inbox,
    session: Session,
    ledger: Arc<Ledger>,
    mut stop: watch::Receiver<bool>,
) -> RecipientOut {
    let Session {
        conn,
        mut reader,
        mut writer,
        ..
    } = session;
    let who = inbox.who().to_string();
    let mut deliveries = Vec::new();
    loop {
        // With receipt pacing, deliveries already stored wait for their receipt until due.
        let due = inbox.due();
        let wake = tokio::time::Instant::from_std(due.unwrap_or_else(Instant::now));
        // Frames are read here, as the relay's sessions read them (`FrameReader::read` is
        // cancel-safe), not by a task of their own: one task hand-off less for every
        // delivery, on the two cores the relay runs on.
        let first = tokio::select! {
            biased;
            _ = stop.changed() => break,
            f = reader.read::<RelayToNode>() => f,
            _ = tokio::time::sleep_until(wake), if due.is_some() => {
                let mut h = client::Handled::default();
                let sent = match inbox.receipt_due(&mut h, Instant::now()) {
                    Ok(()) => send_receipts(&ledger, &mut writer, &h).await,
                    Err(e) => Err(e),
                };
                if let Err(e) = sent {
                    ledger.error(&who, e);
                    break;
                }
                continue;
            }
        };
        let read = ledger.now_ns();
        let Some(batch) = gather(first, &mut reader, &ledger, &who, &stop) else {
            break;
        };
        let known = |id: &MessageId| {
            let i = ledger.index(id)?;
            Some((i, ledger.digests.get(i).and_then(|d| d.get().copied())))
        };
        let h = match inbox.handle(batch, known).await {
            Ok(h) => h,
            Err(e) => {
                ledger.error(&who, e);
                break;
            }
        };
        let now = ledger.now_ns();
        // End to end is to the instant the recipient's sync returned, not to this task's
        // wake-up after it.
        let durable = h.durable_at.map_or(now, |t| ledger.ns_at(t));
        for id in &h.fresh {
            let Some(i) = ledger.index(id) else {
                continue;
            };
            let since = |at| ledger.since_sent_us(i, at).map(saturating_u32);
            if let (Some(read_us), Some(durable_us)) = (since(read), since(durable)) {
                deliveries.push(DeliveryTimes {
                    message: saturating_u32(i as u64),
                    read_us,
                    durable_us,
                });
            }
            ledger.durable_step(i, durable);
        }
        for r in &h.rejections {
            ledger.error(&who, r);
        }
        ledger.receipts_stored.fetch_add(h.stored, Relaxed);
        ledger.duplicates.fetch_add(h.duplicates, Relaxed);
        if !h.fresh.is_empty() {
            ledger.deliveries.fetch_add(h.fresh.len() as u64, Relaxed);
            ledger.event(now);
        }
        if let Err(e) = send_receipts(&ledger, &mut writer, &h).await {
            ledger.error(&who, e);
            break;
        }
    }
    conn.close(0u32.into(), b"benchmark done");
    RecipientOut { who, deliveries }
}

/// `v`, or `u32::MAX` if it does not fit.
pub(crate) fn saturating_u32(v: u64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

/// The frame a client's `read` returned, with whatever else has already arrived (up to
/// [`BATCH_FRAMES_MAX`]), to handle as one batch; `None` when the stream has ended or failed
/// (a failure is recorded, unless the run is stopping and closing connections).
fn gather(
    first: Result<Option<RelayToNode>, hotline_net::NetError>,
    reader: &mut hotline_net::FrameReader,
    ledger: &Ledger,
    who: &str,
    stop: &watch::Receiver<bool>,
) -> Option<Vec<RelayToNode>> {
    let failed = |e: hotline_net::NetError| {
        if !*stop.borrow() {
            ledger.error(who, e);
        }
    };
    let mut batch = match first {
        Ok(Some(f)) => vec![f],
        Ok(None) => return None,
        Err(e) => {
            failed(e);
            return None;
        }
    };
    while batch.len() < BATCH_FRAMES_MAX {
        match reader.try_read::<RelayToNode>() {
            Ok(Some(f)) => batch.push(f),
            Ok(None) => break,
            Err(e) => {
                failed(e);
                return None;
            }
        }
    }
    Some(batch)
}

/// Writes the receipts a recipient signed, and counts them.
async fn send_receipts(
    ledger: &Ledger,
    writer: &mut hotline_net::FrameWriter,
    h: &client::Handled,
) -> anyhow::Result<()> {
    ledger.receipts_sent.fetch_add(h.receipts, Relaxed);
    ledger.receipt_items.fetch_add(h.items, Relaxed);
    if !h.frames.is_empty() {
        writer.write_raw(&h.frames).await?;
    }
    Ok(())
}

/// What a sender measured.
#[derive(Default)]
struct SenderOut {
    accept_us: Vec<u64>,
    all_back_us: Vec<u64>,
}

/// A sender's messages and pacing.
struct SenderPlan {
    who: String,
    frames: Vec<Vec<u8>>,
    first: usize,
    /// Messages per second for this sender, or `None` for the window only.
    rate: Option<f64>,
    window: usize,
    start_at: Instant,
    deadline: Instant,
}

/// A sender's window, shared by its send loop, its inbound task and (for
/// [`CompleteOn::AllDurable`]) the recipients.
struct SenderState {
    inflight: AtomicUsize,
    room: Notify,
    /// Recipients per message.
    fanout: u32,
}

/// Reads what the relay sends a sender: the answers to its messages (of the ledger's
/// indices `mine`) and the receipts forwarded to it, which go to [`keep_receipts`].
async fn sender_inbound(
    who: String,
    mine: std::ops::Range<usize>,
    state: Arc<SenderState>,
    mut reader: hotline_net::FrameReader,
    keep: mpsc::Sender<Kept>,
    ledger: Arc<Ledger>,
    mut stop: watch::Receiver<bool>,
) -> SenderOut {
    let (fanout, complete_on) = (state.fanout, ledger.complete_on);
    let mut out = SenderOut::default();
    let mine = |i: usize| mine.contains(&i);
    loop {
        // Read here, as in `recipient`: no reader task in between.
        let first = tokio::select! {
            biased;
            _ = stop.changed() => break,
            f = reader.read::<RelayToNode>() => f,
        };
        let Some(batch) = gather(first, &mut reader, &ledger, &who, &stop) else {
            break;
        };
        let now = ledger.now_ns();
        let mut digests = Vec::new();
        let mut rows = Records::default();
        for f in batch {
            match f {
                RelayToNode::Accepted(a) => {
                    let Some(i) = ledger.index(&a.id).filter(|i| mine(*i)) else {
                        continue;
                    };
                    ledger.accepted.fetch_add(1, Relaxed);
                    if let Some(us) = ledger.since_sent_us(i, now) {
                        out.accept_us.push(us);
                    }
                    if complete_on == CompleteOn::Accepted {
                        ledger.event(now);
                        ledger.finish(i);
                    }
                    ledger.durable_step(i, now);
                }
                RelayToNode::Rejected(r) => {
                    if let Subject::Message(id) = r.subject {
                        if let Some(i) = ledger.index(&id).filter(|i| mine(*i)) {
                            ledger.rejected.fetch_add(1, Relaxed);
                            ledger.finish(i);
                        }
                    }
                    ledger.error(&who, format!("rejected: {:?} {}", r.code, r.detail));
                }
                RelayToNode::Receipt(s) => {
                    let digest = s.digest();
                    digests.push(digest);
                    let Ok(r) = s.decode_unverified() else {
                        ledger.error(&who, "undecodable forwarded receipt");
                        continue;
                    };
                    for item in &r.items {
                        let Some(i) = ledger.index(&item.id).filter(|i| mine(*i)) else {
                            continue;
                        };
                        let n = ledger.back[i].fetch_add(1, Relaxed) + 1;
                        if n == fanout {
                            if let Some(us) = ledger.since_sent_us(i, now) {
                                out.all_back_us.push(us);
                            }
                            if complete_on == CompleteOn::AllReceipts {
                                ledger.event(now);
                                ledger.finish(i);
                            }
                        }
                    }
                    let mut key = [0u8; 16];
                    key.copy_from_slice(&digest.0[..16]);
                    rows.push(&key, s.bytes());
                }
                _ => {}
            }
        }
        if digests.is_empty() {
            continue;
        }
        // Kept by their own task, so that reading on (the next `Accepted`, timed when read
        // here) does not wait for their sync.
        if keep.send(Kept { rows, digests }).await.is_err() {
            break;
        }
    }
    out
}

/// Forwarded receipts read by a sender, for [`keep_receipts`].
struct Kept {
    rows: Records,
    digests: Vec<hotline_proto::Digest>,
}

/// As a node: keeps each batch of forwarded receipts durably, then tells the relay it holds
/// them (`ReceiptsStored`), in the order they were read.
async fn keep_receipts(
    who: String,
    mut rx: mpsc::Receiver<Kept>,
    writer: Arc<tokio::sync::Mutex<hotline_net::FrameWriter>>,
    mut store: Store,
    ledger: Arc<Ledger>,
) {
    while let Some(Kept { rows, digests }) = rx.recv().await {
        let (s, r) = store.persist(rows).await;
        store = s;
        if let Err(e) = r {
            ledger.error(&who, format!("store: {e}"));
            return;
        }
        let mut buf = Vec::new();
        for chunk in digests.chunks(RECEIPT_ITEMS_MAX) {
            match frame::encode_frame(&NodeToRelay::ReceiptsStored(chunk.to_vec())) {
                Ok(b) => buf.extend_from_slice(&b),
                Err(e) => {
                    ledger.error(&who, format!("encode: {e}"));
                    return;
                }
            }
        }
        if let Err(e) = writer.lock().await.write_raw(&buf).await {
            ledger.error(&who, e);
            return;
        }
    }
}

/// Writes the plan's messages; returns how many were sent.
async fn send_loop(
    plan: &SenderPlan,
    writer: &tokio::sync::Mutex<hotline_net::FrameWriter>,
    state: &SenderState,
    ledger: &Ledger,
    stop: &mut watch::Receiver<bool>,
) -> usize {
    tokio::time::sleep_until(plan.start_at.into()).await;
    let total = plan.frames.len();
    let mut k = 0;
    while k < total {
        if Instant::now() >= plan.deadline || *stop.borrow() {
            break;
        }
        let n = match plan.rate {
            Some(r) => {
                let due = plan.start_at + Duration::from_secs_f64(k as f64 / r);
                if Instant::now() < due {
                    tokio::select! {
                        _ = tokio::time::sleep_until(due.into()) => {}
                        _ = stop.changed() => break,
                    }
                }
                let now = Instant::now();
                let mut n = 0;
                while k + n < total
                    && n < WRITE_FRAMES_MAX
                    && plan.start_at + Duration::from_secs_f64((k + n) as f64 / r) <= now
                {
                    n += 1;
                }
                n.max(1)
            }
            None => {
                let free = loop {
                    let f = state.inflight.load(Relaxed);
                    if f < plan.window {
                        break plan.window - f;
                    }
                    tokio::select! {
                        _ = state.room.notified() => {}
                        _ = tokio::time::sleep_until(plan.deadline.into()) => break 0,
                        _ = stop.changed() => break 0,
                    }
                };
                if free == 0 {
                    break;
                }
                free.min(WRITE_FRAMES_MAX).min(total - k)
            }
        };
        let now = ledger.now_ns();
        let mut buf = Vec::with_capacity(n * plan.frames[k].len());
        for i in k..k + n {
            ledger.sent_ns[plan.first + i].store(now + 1, Relaxed);
            buf.extend_from_slice(&plan.frames[i]);
        }
        state.inflight.fetch_add(n, Relaxed);
        ledger.sent.fetch_add(n as u64, Relaxed);
        if let Err(e) = writer.lock().await.write_raw(&buf).await {
            ledger.error(&plan.who, e);
            return k;
        }
        k += n;
    }
    k
}

async fn sender(
    plan: SenderPlan,
    session: Session,
    store: Store,
    ledger: Arc<Ledger>,
    stop: watch::Receiver<bool>,
) -> SenderOut {
    let Session {
        conn,
        reader,
        writer,
        ..
    } = session;
    let writer = Arc::new(tokio::sync::Mutex::new(writer));
    let state = match ledger.windows.get(plan.first / ledger.per_sender) {
        Some(w) => w.clone(),
        None => {
            ledger.error(&plan.who, "no window for this sender");
            return SenderOut::default();
        }
    };
    let (keep_tx, keep_rx) = mpsc::channel(KEPT_BATCHES_MAX);
    let keeper = tokio::spawn(keep_receipts(
        plan.who.clone(),
        keep_rx,
        writer.clone(),
        store,
        ledger.clone(),
    ));
    let inbound = tokio::spawn(sender_inbound(
        plan.who.clone(),
        plan.first..plan.first + plan.frames.len(),
        state.clone(),
        reader,
        keep_tx,
        ledger.clone(),
        stop.clone(),
    ));
    let mut stop2 = stop.clone();
    let _sent = send_loop(&plan, &writer, &state, &ledger, &mut stop2).await;
    ledger.senders_done.fetch_add(1, Relaxed);
    ledger.progress.notify_waiters();
    let out = inbound.await.unwrap_or_default();
    // Its channel closed with `sender_inbound`: it finishes what it holds, unless a write
    // to the relay no longer completes.
    let mut keeper = keeper;
    if tokio::time::timeout(client::CONNECT_TIMEOUT, &mut keeper)
        .await
        .is_err()
    {
        keeper.abort();
        ledger.error(&plan.who, "forwarded receipts still unkept at the end");
    }
    conn.close(0u32.into(), b"benchmark done");
    out
}

/// A body of `n` printable bytes.
fn body(n: usize) -> String {
    const TEXT: &[u8] =
        b"CICA Hotline benchmark body: the quick brown fox jumps over the lazy dog. ";
    (0..n).map(|i| TEXT[i % TEXT.len()] as char).collect()
}

/// Runs `t` against `relay`; clients connect fresh and leave when it is done.
pub async fn run(t: &Traffic, net: &Network, relay: &Relay) -> anyhow::Result<TrafficReport> {
    let load_avg_before = stats::load_avg();
    let fsync_probe_ms = stats::fsync_probe_ms(&net.dir);
    let verify_probe_us = verify_probe_us();
    let guest_halt_poll_ns = stats::guest_halt_poll_ns();
    let n_senders = t.senders.len();
    if n_senders == 0 {
        bail!("no senders");
    }
    // Created before the run, so that a path that cannot be written fails now, not after it.
    let csv = match &t.deliveries_csv {
        Some(path) => Some((
            path,
            std::fs::File::create(path).with_context(|| {
                format!("creating {} for the deliveries' times", path.display())
            })?,
        )),
        None => None,
    };
    let per_sender = match t.rate {
        Some(r) => ((r / n_senders as f64) * t.duration.as_secs_f64()).ceil() as usize,
        None => t.max_messages / n_senders,
    }
    .max(1);
    let total = per_sender * n_senders;
    let mut tag = [0u8; 8];
    tag.copy_from_slice(&rand::random::<[u8; 8]>());
    let ledger = Arc::new(Ledger {
        t0: Instant::now(),
        tag,
        sent_ns: (0..total).map(|_| AtomicU64::new(0)).collect(),
        digests: (0..total).map(|_| std::sync::OnceLock::new()).collect(),
        back: (0..total).map(|_| AtomicU32::new(0)).collect(),
        durable: (0..total).map(|_| AtomicU32::new(0)).collect(),
        per_sender,
        windows: t
            .senders
            .iter()
            .map(|s| {
                Arc::new(SenderState {
                    inflight: AtomicUsize::new(0),
                    room: Notify::new(),
                    fanout: s.fanout,
                })
            })
            .collect(),
        complete_on: t.complete_on,
        sent: AtomicU64::new(0),
        accepted: AtomicU64::new(0),
        rejected: AtomicU64::new(0),
        finished: AtomicU64::new(0),
        deliveries: AtomicU64::new(0),
        duplicates: AtomicU64::new(0),
        receipts_stored: AtomicU64::new(0),
        receipt_items: AtomicU64::new(0),
        receipts_sent: AtomicU64::new(0),
        senders_done: AtomicUsize::new(0),
        last_event_ns: AtomicU64::new(0),
        progress: Notify::new(),
        errors: Mutex::new(Vec::new()),
    });

    // Sign everything first, so the load generator's signing is not in the measurement.
    let text = body(t.body_bytes);
    let mut frames = Vec::with_capacity(n_senders);
    for (s, spec) in t.senders.iter().enumerate() {
        frames.push(sign_messages(
            &ledger,
            spec,
            s * per_sender,
            per_sender,
            &text,
        )?);
    }

    // Connect everyone (one endpoint, so one UDP socket, per client, as real nodes have).
    let addr = relay.addr();
    let store_dir = net.dir.join(format!("clients-{}", t.name));
    std::fs::create_dir_all(&store_dir)?;
    let mut endpoints = Vec::new();
    let mut connecting = tokio::task::JoinSet::new();
    let all: Vec<(bool, Peer)> = t
        .recipients
        .iter()
        .map(|p| (false, p.clone()))
        .chain(t.senders.iter().map(|s| (true, s.peer.clone())))
        .collect();
    for (i, (is_sender, peer)) in all.into_iter().enumerate() {
        let ep = client::endpoint(net.fingerprint)?;
        endpoints.push(ep.clone());
        let v = net.roster_version;
        connecting.spawn(async move {
            let s = client::session(&ep, addr, &peer, v).await;
            (i, is_sender, peer, s)
        });
    }
    let mut sessions: Vec<Option<(bool, Peer, Session)>> = Vec::new();
    sessions.resize_with(t.recipients.len() + n_senders, || None);
    while let Some(r) = connecting.join_next().await {
        let (i, is_sender, peer, s) = r?;
        let s = s?;
        if is_sender && s.welcome.last_seq.0 != 0 {
            bail!(
                "{} has sent before on this relay (last seq {}): benchmarks need a fresh relay",
                peer.id,
                s.welcome.last_seq
            );
        }
        sessions[i] = Some((is_sender, peer, s));
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    // Open every store, and read the relay's counters, before the start is fixed: opening
    // 38 SQLite stores takes longer than the start's margin.
    let mut ready = Vec::with_capacity(sessions.len());
    for slot in sessions {
        let Some((is_sender, peer, session)) = slot else {
            bail!("a client did not connect");
        };
        let store = Store::open(t.durability, &store_dir.join(peer.id.as_str()))?;
        ready.push((is_sender, peer, session, store));
    }
    // The clients' shared log, and what it had done before the run.
    let log = ready
        .iter()
        .find_map(|r| r.3.group_log())
        .map(|l| (l.clone(), l.totals()));
    let before = relay::scrape(relay.metrics()).await;
    let start_at = Instant::now() + Duration::from_millis(200);
    let deadline = start_at + t.duration;
    let mut recipients = tokio::task::JoinSet::new();
    let mut senders = tokio::task::JoinSet::new();
    let mut frames = frames.into_iter();
    let mut s_idx = 0;
    for (is_sender, peer, session, store) in ready {
        if is_sender {
            let plan = SenderPlan {
                who: peer.id.to_string(),
                frames: frames.next().unwrap_or_default(),
                first: s_idx * per_sender,
                rate: t.rate.map(|r| r / n_senders as f64),
                window: t.window,
                start_at,
                deadline,
            };
            s_idx += 1;
            senders.spawn(sender(
                plan,
                session,
                store,
                ledger.clone(),
                stop_rx.clone(),
            ));
        } else {
            recipients.spawn(recipient(
                Inbox::new(peer, store, t.receipt_pace),
                session,
                ledger.clone(),
                stop_rx.clone(),
            ));
        }
    }

    tokio::time::sleep_until(start_at.into()).await;
    let pid = relay.pid();
    let relay_cpu = pid.map(CpuMeter::start);
    // One of the relay's own threads, by the name `/proc` shows (none for an in-process relay).
    let thread_cpu = |name| pid.and_then(|p| CpuMeter::thread(p, comm(name)));
    let writer_cpu = thread_cpu(names::STORE_WRITER);
    let sync_cpu = thread_cpu(names::WAL_SYNC);
    let checkpoint_cpu = thread_cpu(names::CHECKPOINT);
    let relay_sleeps = pid.map(|p| SwitchMeter::start(p, None));
    let writer_sleeps = pid.map(|p| SwitchMeter::start(p, Some(comm(names::STORE_WRITER))));
    let bench_cpu = CpuMeter::start(std::process::id());
    // Rates count from the scheduled start, whenever this task got to run.
    let start_ns = start_at.saturating_duration_since(ledger.t0).as_nanos() as u64;

    // Wait for the senders to finish sending and every message to finish, or the drain
    // timeout after the sending deadline.
    let give_up = deadline + t.drain_timeout;
    loop {
        let notified = ledger.progress.notified();
        let done = ledger.senders_done.load(Relaxed) == n_senders
            && ledger.finished.load(Relaxed) >= ledger.sent.load(Relaxed);
        if done || Instant::now() >= give_up {
            break;
        }
        let _ = tokio::time::timeout(Duration::from_millis(100), notified).await;
    }
    let relay_cpu_pct = relay_cpu.as_ref().and_then(|m| m.percent());
    let relay_cpu_s = relay_cpu.and_then(|m| m.seconds());
    let writer_cpu_s = writer_cpu.and_then(|m| m.seconds());
    let sync_cpu_s = sync_cpu.and_then(|m| m.seconds());
    let checkpoint_cpu_s = checkpoint_cpu.and_then(|m| m.seconds());
    let relay_sleeps = relay_sleeps.and_then(|m| m.count());
    let writer_sleeps = writer_sleeps.and_then(|m| m.count());
    let bench_cpu_pct = bench_cpu.percent();
    let relay_rss_mib = pid.and_then(stats::rss_kib).map(|k| k as f64 / 1024.0);
    // Let the last receipts' `ReceiptStored` answers arrive before counting them.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after = relay::scrape(relay.metrics()).await;
    let log_totals = log.map(|(l, before)| l.totals().since(&before));
    let _ = stop_tx.send(true);

    let mut by_recipient = Vec::with_capacity(t.recipients.len());
    while let Some(r) = recipients.join_next().await {
        let r = r.context("recipient task")?;
        by_recipient.push((r.who, r.deliveries));
    }
    let e2e = percentiles_us(
        by_recipient
            .iter()
            .flat_map(|(_, ds)| ds.iter().map(|d| d.durable_us)),
    );
    let e2e_split = E2eSplit::of(by_recipient.iter().flat_map(|(_, ds)| ds), total);
    if let Some((path, file)) = csv {
        let sent_us = |m: u32| {
            ledger
                .sent_at_ns(m as usize)
                .map_or(0, |s| s.saturating_sub(start_ns) / 1_000)
        };
        write_deliveries(&file, &by_recipient, sent_us)
            .and_then(|()| file.sync_all())
            .with_context(|| format!("writing the deliveries' times to {}", path.display()))?;
    }
    let mut accept = Vec::new();
    let mut all_back = Vec::new();
    while let Some(r) = senders.join_next().await {
        let o = r.context("sender task")?;
        accept.extend(o.accept_us);
        all_back.extend(o.all_back_us);
    }
    for ep in &endpoints {
        ep.close(0u32.into(), b"benchmark done");
    }

    let end_ns = ledger.last_event_ns.load(Relaxed).max(start_ns + 1);
    let span_s = (end_ns - start_ns) as f64 / 1e9;
    let deliveries = ledger.deliveries.load(Relaxed);
    let receipts = ledger.receipts_stored.load(Relaxed);
    let accepted = ledger.accepted.load(Relaxed);
    let items = ledger.receipt_items.load(Relaxed);
    // Each stage's mean over the run; the commit's is also reported in ms.
    let (stages, stages_p99) = match (&before, &after) {
        (Some(b), Some(a)) => (
            Some(a.stage_means_us(b)),
            Some(a.stage_quantiles_us(b, 0.99)),
        ),
        _ => (None, None),
    };
    // Between the two scrapes: how many of something were counted, and their mean.
    let count_and_mean = |pick: fn(&relay::Metrics) -> (f64, f64)| match (&before, &after) {
        (Some(b), Some(a)) if pick(a).0 > pick(b).0 => {
            let n = pick(a).0 - pick(b).0;
            (Some(n), Some((pick(a).1 - pick(b).1) / n))
        }
        _ => (None, None),
    };
    let (syncs, sync_s_mean) = count_and_mean(|m| (m.wal_syncs, m.wal_sync_seconds));
    let sync_ms_mean = sync_s_mean.map(|s| s * 1e3);
    let (commits, items_per_commit) = count_and_mean(|m| (m.commits, m.commit_items));
    let commit_ms_mean = stages.and_then(|s| s[2]).map(|us| us / 1e3);
    let errors = ledger
        .errors
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let fanout = t.senders.first().map(|s| s.fanout).unwrap_or(0);
    // A run's total, per accepted message (none if nothing was accepted).
    let per_accepted =
        |total: Option<f64>| total.filter(|_| accepted > 0).map(|t| t / accepted as f64);
    let per_msg = |cpu_s: Option<f64>| per_accepted(cpu_s.map(|s| s * 1e6));
    Ok(TrafficReport {
        workload: t.name.clone(),
        offered_per_s: t.rate,
        duration_s: t.duration.as_secs_f64(),
        window: t.rate.is_none().then_some(t.window),
        window_until: t.complete_on,
        senders: n_senders,
        recipients: t.recipients.len(),
        fanout,
        body_bytes: t.body_bytes,
        recipient_durability: t.durability,
        receipt_pace_ms: t.receipt_pace.as_millis() as u64,
        clients_log_syncs_per_msg: per_accepted(log_totals.map(|l| l.groups as f64)),
        clients_log_wait_ms_mean: log_totals.and_then(|l| l.wait_ms_mean()),
        clients_log_sync_ms_mean: log_totals.and_then(|l| l.sync_ms_mean()),
        planned: total as u64,
        sent: ledger.sent.load(Relaxed),
        accepted,
        rejected: ledger.rejected.load(Relaxed),
        deliveries,
        duplicate_deliveries: ledger.duplicates.load(Relaxed),
        receipts,
        items_per_receipt: items as f64 / ledger.receipts_sent.load(Relaxed).max(1) as f64,
        finished: ledger.finished.load(Relaxed),
        span_s,
        accepted_per_s: accepted as f64 / span_s,
        deliveries_per_s: deliveries as f64 / span_s,
        receipts_per_s: receipts as f64 / span_s,
        e2e,
        e2e_split,
        all_receipts: Percentiles::of(&mut all_back),
        accept: Percentiles::of(&mut accept),
        relay_cpu_pct,
        relay_cpu_us_per_msg: per_msg(relay_cpu_s),
        writer_cpu_us_per_msg: per_msg(writer_cpu_s),
        sync_cpu_us_per_msg: per_msg(sync_cpu_s),
        checkpoint_cpu_us_per_msg: per_msg(checkpoint_cpu_s),
        relay_sleeps_per_msg: per_accepted(relay_sleeps.map(|n| n as f64)),
        writer_sleeps_per_msg: per_accepted(writer_sleeps.map(|n| n as f64)),
        bench_cpu_pct,
        relay_rss_mib,
        relay_commits: commits,
        relay_items_per_commit: items_per_commit,
        relay_commit_ms_mean: commit_ms_mean,
        relay_wal_syncs: syncs,
        relay_wal_sync_ms_mean: sync_ms_mean,
        relay_stages_us: stages,
        relay_stages_p99_us: stages_p99,
        load_avg_before,
        fsync_probe_ms,
        verify_probe_us,
        guest_halt_poll_ns,
        errors,
    })
}

/// A routine test alert from `sender` to `audience` with `body`: sequence number 1, created
/// at 1 ms, subject "test", no reply deadline, references or category. Callers set what
/// differs with struct update syntax.
pub(crate) fn alert(
    id: hotline_proto::MessageId,
    sender: hotline_proto::ParticipantId,
    audience: hotline_proto::Audience,
    body: String,
) -> Envelope {
    Envelope {
        version: PROTOCOL_VERSION,
        id,
        sender,
        seq: Seq(1),
        audience,
        kind: Kind::Alert,
        precedence: Precedence::Routine,
        status: Status::Test,
        created_at_ms: 1,
        respond_by_ms: None,
        references: vec![],
        category: None,
        subject: "test".into(),
        body,
    }
}

/// Median time to decode and verify (strict ed25519) one signed message with a 1 KiB body,
/// microseconds, over 9 rounds of 32: how fast a CPU is right now. This machine's speed
/// moved by a third within minutes (docs/BENCHMARKS-ROUNDS.md, sixth round); the project's
/// reference for a quiet machine is about 34 µs.
pub fn verify_probe_us() -> f64 {
    use hotline_proto::{Audience, MessageId, ParticipantId, PublicKey, Signed, SigningKey};
    let key = SigningKey::from_bytes(&[7; 32]);
    let Ok(sender) = ParticipantId::new("PROBE") else {
        return f64::NAN;
    };
    let Ok(to) = ParticipantId::new("OTHER") else {
        return f64::NAN;
    };
    let env = hotline_proto::Envelope {
        subject: "probe".into(),
        ..alert(
            MessageId([7; 16]),
            sender,
            Audience::Participants(vec![to]),
            "x".repeat(1024),
        )
    };
    let Ok(signed) = Signed::sign(&env, &key) else {
        return f64::NAN;
    };
    let public = PublicKey::of(&key);
    let mut rounds = Vec::with_capacity(9);
    for _ in 0..9 {
        let t = std::time::Instant::now();
        for _ in 0..32 {
            if signed.verify_with(&public).is_err() {
                return f64::NAN;
            }
        }
        rounds.push(t.elapsed().as_nanos() as u64 / 32);
    }
    rounds.sort_unstable();
    rounds[rounds.len() / 2] as f64 / 1e3
}

#[cfg(test)]
mod tests {
    fn d(message: u32, read_us: u32, durable_us: u32) -> super::DeliveryTimes {
        super::DeliveryTimes {
            message,
            read_us,
            durable_us,
        }
    }

    #[test]
    fn the_split_takes_each_messages_first_read_and_each_deliverys_hold() {
        let all = [
            d(0, 100, 500),
            d(0, 300, 600),
            d(1, 200, 400),
            d(1, 250, 900),
        ];
        let split = super::E2eSplit::of(all.iter(), 3);
        // Message 2 was never delivered: no first read for it.
        assert_eq!(split.first_read.n, 2);
        assert_eq!(
            (split.first_read.p50_us, split.first_read.max_us),
            (100, 200)
        );
        assert_eq!(split.read.n, 4);
        assert_eq!((split.read.p50_us, split.read.max_us), (200, 300));
        // Held 400, 300, 200 and 650 µs after the read.
        assert_eq!(split.then_durable.n, 4);
        assert_eq!(
            (split.then_durable.p50_us, split.then_durable.max_us),
            (300, 650)
        );
    }

    #[test]
    fn the_deliveries_file_has_a_header_then_a_line_a_delivery() {
        let recipients = vec![
            ("CHN".to_string(), vec![d(0, 100, 500), d(1, 200, 400)]),
            ("IND".to_string(), vec![d(0, 300, 600)]),
        ];
        let mut out = Vec::new();
        super::write_deliveries(&mut out, &recipients, |m| 1_000 + 2_000 * u64::from(m))
            .expect("written");
        assert_eq!(
            String::from_utf8(out).expect("text"),
            "message,recipient,sent_us,read_us,durable_us\n\
             0,CHN,1000,100,500\n1,CHN,3000,200,400\n0,IND,1000,300,600\n"
        );
    }

    /// The probe signs and verifies a real message: a failure there would print NaN next to
    /// every figure instead of the machine's speed.
    #[test]
    fn the_verify_probe_measures_a_real_verification() {
        let us = super::verify_probe_us();
        assert!(us.is_finite() && us > 0.0, "verify probe gave {us}");
    }
}
