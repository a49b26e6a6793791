//! The disk's floor under a durable fan-out: what a message's durable steps cost on this
//! machine's disk alone, with no relay, no network and no cryptography.
//!
//! Two writes, each timed alone, paced as a fixed-rate fan-out run sends:
//!
//! - a group-shaped write, the 37 recipients' records of one message in the group log, then a
//!   sync (the recipients' best case: all 37 in one group). **The end-to-end floor**: a
//!   message is durable at its recipients only once their sync has returned.
//! - a commit-shaped write, [`COMMIT_FRAMES`] write-ahead-log frames of a 4 KiB page, then a
//!   sync (what the relay's SQLite writes for one message and a few receipts at 500/s).
//!   **The floor of *accepted***: the relay answers a submission only after its commit's sync.
//!
//! The two do not add up. Until the twenty-seventh round the relay forwarded a message only
//! after its commit's sync, and this probe reported the two in series as the end-to-end
//! floor; since then the relay posts a batch to the recipients' sessions just before its
//! `COMMIT` (ARCHITECTURE.md, "Delivery overlaps the relay's commit"), so the recipients'
//! sync runs while, or after, the relay's does. Timed alone, neither sync is slowed by the
//! other (concurrent syncs on one disk are slower each, thirty-third round), which is what
//! makes each a floor.
//!
//! Both files are rings of blocks written when they are created ([`Ring`]), as SQLite reuses
//! its write-ahead log and as the group log does. Both syncs are `fdatasync`: SQLite calls
//! `fsync`, which measured the same on this disk (docs/BENCHMARKS-ROUNDS.md, eighth and ninth
//! rounds). No end-to-end latency measured by [`crate::fanout37`] can be below the group's
//! sync, nor an *accepted* below the commit's, at the same rate, on the same disk.

use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::grouplog::Ring;
use crate::stats::{self, Percentiles};

/// Write-ahead-log frames of a relay commit holding one message and nothing else (a 4 KiB
/// page and a 24-byte frame header each; the seventh round's trace of a message at 2/s). At
/// fanout37 500/s the relay's commits also carry the receipts that were waiting, about 21
/// frames (docs/BENCHMARKS-ROUNDS.md, tenth round); the floor counts only the message's own.
pub const COMMIT_FRAMES: usize = 11;
/// A WAL frame: its header and a 4 KiB page.
const FRAME_BYTES: usize = 24 + 4096;
/// What a delivery of a message with an empty body takes in the group log: the signed
/// envelope's 107 bytes of fields and signature beyond the body (1,131 bytes for a 1 KiB
/// body), and the log record's length and id (20 bytes).
const RECORD_OVERHEAD: usize = 107 + 20;
/// The size of each ring.
const RING_BYTES: u64 = 8 << 20;

/// What to probe.
#[derive(Clone, Debug)]
pub struct FloorOptions {
    /// Messages per second.
    pub rate: f64,
    /// Messages.
    pub count: usize,
    /// Recipients of each message.
    pub fanout: usize,
    /// Message body size, bytes.
    pub body_bytes: usize,
}

/// What the probe measured.
#[derive(Clone, Debug, Serialize)]
pub struct FloorReport {
    /// Messages per second.
    pub rate_per_s: f64,
    /// Bytes of each commit-shaped write.
    pub commit_bytes: usize,
    /// Bytes of each group-shaped write.
    pub group_bytes: usize,
    /// The group-shaped write and its sync: the end-to-end floor.
    pub group: Percentiles,
    /// The commit-shaped write and its sync: the floor of *accepted*.
    pub commit: Percentiles,
    /// The guest's halt-polling limit before the probe, ns (`stats::guest_halt_poll_ns`, as
    /// the traffic runs read it): each sync's completion wakes the probing thread.
    pub guest_halt_poll_ns: Option<u64>,
}

impl FloorReport {
    /// One summary line.
    pub fn line(&self) -> String {
        format!(
            "floor rate={}/s: recipients' sync (end to end) ms p50/p99/max {} ({} B) | relay's commit (accepted) {} ({} B) | n {}{}",
            self.rate_per_s,
            self.group.ms(),
            self.group_bytes,
            self.commit.ms(),
            self.commit_bytes,
            self.group.n,
            stats::halt_poll_label(self.guest_halt_poll_ns),
        )
    }
}

/// Runs the probe in `dir` (on a blocking thread; the files are removed after).
pub async fn run(dir: &Path, o: &FloorOptions) -> anyhow::Result<FloorReport> {
    anyhow::ensure!(
        o.rate > 0.0 && o.rate.is_finite(),
        "the floor probe needs a positive rate"
    );
    let dir = dir.to_owned();
    let o = o.clone();
    tokio::task::spawn_blocking(move || probe(&dir, &o)).await?
}

fn probe(dir: &Path, o: &FloorOptions) -> anyhow::Result<FloorReport> {
    std::fs::create_dir_all(dir)?;
    let (commit_path, group_path) = (dir.join("floor-commit"), dir.join("floor-group"));
    let guest_halt_poll_ns = stats::guest_halt_poll_ns();
    let result = (|| {
        let mut commit = Ring::create(&commit_path, RING_BYTES)?;
        let mut group = Ring::create(&group_path, RING_BYTES)?;
        let commit_buf = vec![0xC0; COMMIT_FRAMES * FRAME_BYTES];
        let group_buf = vec![0x6E; o.fanout * (o.body_bytes + RECORD_OVERHEAD)];
        let period = Duration::from_secs_f64(1.0 / o.rate);
        let (mut c, mut g) = (Vec::new(), Vec::new());
        let mut due = Instant::now();
        for _ in 0..o.count {
            due += period;
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            // One after the other, so that neither sync shares the disk with the other.
            let t0 = Instant::now();
            commit.write(&commit_buf)?;
            commit.sync()?;
            let t1 = Instant::now();
            group.write(&group_buf)?;
            group.sync()?;
            let t2 = Instant::now();
            c.push((t1 - t0).as_micros() as u64);
            g.push((t2 - t1).as_micros() as u64);
        }
        anyhow::Ok(FloorReport {
            rate_per_s: o.rate,
            commit_bytes: commit_buf.len(),
            group_bytes: group_buf.len(),
            group: Percentiles::of(&mut g),
            commit: Percentiles::of(&mut c),
            guest_halt_poll_ns,
        })
    })();
    let _ = std::fs::remove_file(&commit_path);
    let _ = std::fs::remove_file(&group_path);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_floor_times_every_message_and_cleans_up() {
        let dir = tempfile::tempdir().expect("tempdir");
        let o = FloorOptions {
            rate: 1_000.0,
            count: 20,
            fanout: 3,
            body_bytes: 100,
        };
        let r = run(dir.path(), &o).await.expect("probe");
        assert_eq!((r.group.n, r.commit.n), (20, 20));
        assert_eq!(r.group_bytes, 3 * (100 + RECORD_OVERHEAD));
        assert_eq!(r.commit_bytes, COMMIT_FRAMES * FRAME_BYTES);
        let line = r.line();
        assert!(
            line.starts_with("floor rate=1000/s: recipients' sync (end to end)"),
            "{line}"
        );
        assert!(line.contains(&format!("({} B)", r.group_bytes)), "{line}");
        assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 0);
        let bad = FloorOptions { rate: 0.0, ..o };
        assert!(run(dir.path(), &bad).await.is_err());
    }
}
