//! One durable log shared by every simulated recipient of a load generator, with group
//! commit: a batch is durable once an `fdatasync` that began after it was written has
//! returned, and one `fdatasync` covers every batch written before it began.
//!
//! Why: the 37 recipients of a fan-out stand for 37 nodes on 37 machines, each syncing its
//! own disk in parallel. On the one benchmark machine, 37 separate files each synced on its
//! own blocking thread put 37 `fdatasync`s a message into the disk queue the relay's commits
//! wait in, and two thread hand-offs per recipient and batch on the relay's two cores.
//!
//! How: one thread owns the file. Callers hand it their batch and wait (asynchronously) for
//! the answer; the thread takes every batch waiting, writes them in order, syncs once, and
//! answers them all, while the next group gathers. A failed write or sync fails that group
//! and every later one (nothing written after a failed sync can be trusted durable).
//!
//! The file is a ring of blocks written (zeros) and synced when it is created ([`Ring`]), as
//! a database's write-ahead log is reused after a checkpoint: a batch overwrites blocks the
//! file already has, so its sync need not also write the file's metadata (a new size, new
//! extents). From the ninth round; before, the file only grew. Nothing reads the log back;
//! it stands for the node's store, whose cost it models.
//!
//! Self-contained (std and tokio's oneshot): `crates/bench/peers` includes this file too, so
//! the peers' subscribers make batches durable the same way.

use std::collections::HashMap;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{mpsc, Arc, Mutex, OnceLock, Weak};
use std::time::Instant;

use tokio::sync::oneshot;

/// A batch and where its answer goes.
struct Job {
    buf: Vec<u8>,
    /// When it was handed to the thread.
    at: Instant,
    /// The instant the covering sync returned, or why it failed.
    done: oneshot::Sender<Result<Instant, String>>,
}

/// A shared, group-committed log.
pub struct GroupLog {
    /// Batches for the syncing thread. Unbounded, but each caller waits for its answer before
    /// it sends again, so it holds at most one batch per recipient of the run (37 in a
    /// fan-out; a batch is at most 4,096 deliveries, `traffic::BATCH_FRAMES_MAX` and the
    /// peers' `BATCH_MAX`).
    jobs: mpsc::Sender<Job>,
    /// What the thread has done so far.
    counts: Arc<Counts>,
}

/// The syncing thread's running totals (see [`Totals`]).
#[derive(Debug, Default)]
struct Counts {
    groups: AtomicU64,
    batches: AtomicU64,
    wait_ns: AtomicU64,
    sync_ns: AtomicU64,
}

/// What a group log's thread has done, since it started or between two readings
/// ([`Totals::since`]): where a recipient's share of the end-to-end time goes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Groups written and synced.
    pub groups: u64,
    /// Batches in them.
    pub batches: u64,
    /// Over all batches: from its hand-over to the thread taking its group (the wait for
    /// the thread to wake, or for the sync before to end), ns.
    pub wait_ns: u64,
    /// Over all groups: the group's write and `fdatasync`, ns.
    pub sync_ns: u64,
}

impl Totals {
    /// What was done between `before` and these totals.
    pub fn since(&self, before: &Totals) -> Totals {
        Totals {
            groups: self.groups.saturating_sub(before.groups),
            batches: self.batches.saturating_sub(before.batches),
            wait_ns: self.wait_ns.saturating_sub(before.wait_ns),
            sync_ns: self.sync_ns.saturating_sub(before.sync_ns),
        }
    }

    /// A batch's mean wait, ms (none without batches).
    pub fn wait_ms_mean(&self) -> Option<f64> {
        (self.batches > 0).then(|| self.wait_ns as f64 / self.batches as f64 / 1e6)
    }

    /// A group's mean write and sync, ms (none without groups).
    pub fn sync_ms_mean(&self) -> Option<f64> {
        (self.groups > 0).then(|| self.sync_ns as f64 / self.groups as f64 / 1e6)
    }
}

impl GroupLog {
    /// The log at `path`, shared by every caller in this process that names the same path
    /// (created, with its syncing thread, on first use; the thread ends with the last
    /// handle).
    pub fn shared(path: &Path) -> io::Result<Arc<Self>> {
        static OPEN: OnceLock<Mutex<HashMap<PathBuf, Weak<GroupLog>>>> = OnceLock::new();
        let mut open = OPEN
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(log) = open.get(path).and_then(Weak::upgrade) {
            return Ok(log);
        }
        let ring = Ring::create(path, RING_BYTES)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        let (tx, rx) = mpsc::channel();
        let counts = Arc::new(Counts::default());
        let c = counts.clone();
        std::thread::Builder::new()
            .name("group-log".into())
            .spawn(move || run(ring, rx, &c))?;
        let log = Arc::new(Self { jobs: tx, counts });
        open.retain(|_, w| w.strong_count() > 0);
        open.insert(path.to_owned(), Arc::downgrade(&log));
        Ok(log)
    }

    /// Writes `buf` and returns once an `fdatasync` begun after the write has returned,
    /// with the instant it returned (taken by the syncing thread, so that a caller's own
    /// wake-up afterwards is not counted as part of making the batch durable).
    pub async fn append_durable(&self, buf: Vec<u8>) -> io::Result<Instant> {
        let (done, answer) = oneshot::channel();
        self.jobs
            .send(Job {
                buf,
                at: Instant::now(),
                done,
            })
            .map_err(|_| io::Error::other("group log thread gone"))?;
        match answer.await {
            Ok(Ok(at)) => Ok(at),
            Ok(Err(e)) => Err(io::Error::other(e)),
            Err(_) => Err(io::Error::other("group log thread gone")),
        }
    }

    /// What the thread has done so far.
    pub fn totals(&self) -> Totals {
        let c = &self.counts;
        Totals {
            groups: c.groups.load(Relaxed),
            batches: c.batches.load(Relaxed),
            wait_ns: c.wait_ns.load(Relaxed),
            sync_ns: c.sync_ns.load(Relaxed),
        }
    }
}

/// The size of the log file: written in full (zeros) and synced when it is created, then
/// overwritten in a ring. 32 MiB holds about seven of the largest batch a recipient makes
/// (4,096 deliveries of about 1.15 KiB) and thousands of the groups seen at 500/s (about
/// nine batches of one or two deliveries); a group larger than the ring is synced in parts
/// before it wraps ([`Ring::write`]).
pub const RING_BYTES: u64 = 32 << 20;

/// The file as a ring of already-allocated blocks. A write is an overwrite inside the file,
/// so the `fdatasync` that covers it writes data blocks and flushes the disk, and never has
/// to write the file's inode for a new size or new extents as well (this machine's ext4 runs
/// without a journal, so that is one more synchronous write), as a database's write-ahead
/// log, recycled after a checkpoint, does not. Measured here, 37 KiB then `fdatasync`, back
/// to back: 166–171 µs overwriting against 238–285 µs appending. No byte is overwritten
/// before a sync has covered it ([`Ring::write`]).
pub struct Ring {
    file: std::fs::File,
    size: u64,
    /// Where the next byte goes.
    at: u64,
    /// Bytes written since the last sync.
    unsynced: u64,
}

impl Ring {
    /// Creates (or recreates) the file at `path`, `size` bytes of zeros, synced.
    pub fn create(path: &Path, size: u64) -> io::Result<Self> {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(path)?;
        let zeros = vec![0u8; 1 << 20];
        let mut left = size;
        while left > 0 {
            let n = left.min(zeros.len() as u64) as usize;
            file.write_all(&zeros[..n])?;
            left -= n as u64;
        }
        file.sync_all()?;
        Ok(Self {
            file,
            size,
            at: 0,
            unsynced: 0,
        })
    }

    /// Writes `buf` at the ring's position, syncing first whenever the bytes not yet synced
    /// would otherwise wrap onto themselves (only a group larger than the ring does that).
    pub fn write(&mut self, mut buf: &[u8]) -> io::Result<()> {
        use std::os::unix::fs::FileExt as _;
        while !buf.is_empty() {
            if self.unsynced == self.size {
                self.sync()?;
            }
            let room = (self.size - self.at).min(self.size - self.unsynced);
            let n = room.min(buf.len() as u64) as usize;
            self.file.write_all_at(&buf[..n], self.at)?;
            self.at = (self.at + n as u64) % self.size;
            self.unsynced += n as u64;
            buf = &buf[n..];
        }
        Ok(())
    }

    /// `fdatasync`: every byte written so far is durable.
    pub fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()?;
        self.unsynced = 0;
        Ok(())
    }
}

/// Small batches gathered into one write up to this many bytes; a larger batch is written
/// as it is. At window 1,024 a recipient's batch is often larger (up to about 1.2 MB) and is
/// not copied; at window 64 (up to about 74 KB) it is, one `memcpy` of each delivery's
/// bytes, about 155 MB/s at that rate (three A/B pairs resolved no cost, sixteenth round).
const GATHER_BYTES: usize = 256 << 10;

/// Writes a group's batches in order, the small ones copied into `gathered` and written
/// together: at fanout37 500/s a group holds about a dozen batches of one or two deliveries,
/// and each `pwrite` into the page cache costs a few microseconds on the way to the sync
/// that every batch of the group waits for.
fn write_gathered(ring: &mut Ring, group: &[Job], gathered: &mut Vec<u8>) -> io::Result<()> {
    gathered.clear();
    for j in group {
        if gathered.len() + j.buf.len() > GATHER_BYTES {
            ring.write(gathered)?;
            gathered.clear();
        }
        if j.buf.len() > GATHER_BYTES {
            ring.write(&j.buf)?;
        } else {
            gathered.extend_from_slice(&j.buf);
        }
    }
    ring.write(gathered)
}

/// The syncing thread: one group per turn, until every handle has gone.
fn run(mut ring: Ring, rx: mpsc::Receiver<Job>, counts: &Counts) {
    let mut failed: Option<String> = None;
    let mut group = Vec::new();
    let mut gathered = Vec::new();
    let ns = |d: std::time::Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    while let Ok(first) = rx.recv() {
        group.push(first);
        group.extend(rx.try_iter());
        let taken = Instant::now();
        if failed.is_none() {
            let r = write_gathered(&mut ring, &group, &mut gathered)
                .map_err(|e| format!("write: {e}"))
                .and_then(|()| ring.sync().map_err(|e| format!("fdatasync: {e}")));
            failed = r.err();
        }
        let synced = Instant::now();
        let waited: u64 = group
            .iter()
            .map(|j| ns(taken.saturating_duration_since(j.at)))
            .sum();
        counts.groups.fetch_add(1, Relaxed);
        counts.batches.fetch_add(group.len() as u64, Relaxed);
        counts.wait_ns.fetch_add(waited, Relaxed);
        counts
            .sync_ns
            .fetch_add(ns(synced.saturating_duration_since(taken)), Relaxed);
        for j in group.drain(..) {
            let _ = j.done.send(match &failed {
                None => Ok(synced),
                Some(e) => Err(e.clone()),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Concurrent callers: each batch lands once and whole, and each call is answered
    /// (the thread answers a group only after its `fdatasync` returned).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_batch_is_written_whole_once_and_answered() {
        // No dev-dependencies (the peers workspace includes this file without them).
        let path = std::env::temp_dir().join(format!("grouplog-test-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let log = GroupLog::shared(&path).expect("open");
        assert!(Arc::ptr_eq(&log, &GroupLog::shared(&path).expect("again")));
        let tasks: Vec<_> = (0..8u8)
            .map(|t| {
                let log = log.clone();
                tokio::spawn(async move {
                    for i in 0..50u8 {
                        let asked = Instant::now();
                        let synced = log
                            .append_durable(vec![t, i, 0xAA, 0xBB])
                            .await
                            .expect("durable");
                        assert!(synced >= asked && synced <= Instant::now());
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("task");
        }
        let totals = log.totals();
        assert_eq!(totals.batches, 400, "every batch counted once");
        assert!(
            (1..=400).contains(&totals.groups),
            "groups: {}",
            totals.groups
        );
        assert!(totals.sync_ns > 0, "the syncs took time");
        assert_eq!(totals.since(&totals), Totals::default());
        let bytes = std::fs::read(&path).expect("read");
        assert_eq!(bytes.len() as u64, RING_BYTES, "the ring keeps its size");
        assert!(
            bytes[400 * 4..].iter().all(|b| *b == 0),
            "nothing past the batches"
        );
        let bytes = &bytes[..400 * 4];
        let mut seen = std::collections::HashSet::new();
        for rec in bytes.chunks(4) {
            assert_eq!(&rec[2..], &[0xAA, 0xBB], "batches are not interleaved");
            assert!(seen.insert((rec[0], rec[1])), "each batch once");
        }
        let _ = std::fs::remove_file(&path);
    }

    /// Small batches are gathered and large ones written as they are, in the group's order,
    /// across the gathering limit.
    #[test]
    fn a_group_is_written_in_order_whatever_its_batch_sizes() {
        let path = std::env::temp_dir().join(format!("grouplog-gather-{}", std::process::id()));
        let sizes = [3, GATHER_BYTES - 2, 5, GATHER_BYTES + 1, 7, 1];
        let group: Vec<Job> = sizes
            .iter()
            .enumerate()
            .map(|(i, n)| Job {
                buf: vec![i as u8 + 1; *n],
                at: Instant::now(),
                done: oneshot::channel().0,
            })
            .collect();
        let total: usize = sizes.iter().sum();
        let mut ring = Ring::create(&path, total as u64 + 10).expect("create");
        let mut gathered = Vec::new();
        write_gathered(&mut ring, &group, &mut gathered).expect("write");
        let expected: Vec<u8> = group.iter().flat_map(|j| j.buf.iter().copied()).collect();
        let bytes = std::fs::read(&path).expect("read");
        assert_eq!(&bytes[..total], &expected[..], "every batch, in order");
        assert!(bytes[total..].iter().all(|b| *b == 0), "nothing more");
        assert!(
            gathered.len() <= GATHER_BYTES,
            "the gathering buffer stays within its limit"
        );
        let _ = std::fs::remove_file(&path);
    }

    /// The ring wraps, and syncs before it would overwrite bytes no sync has covered.
    #[test]
    fn the_ring_wraps_and_never_overwrites_unsynced_bytes() {
        let path = std::env::temp_dir().join(format!("grouplog-ring-{}", std::process::id()));
        let mut ring = Ring::create(&path, 8).expect("create");
        assert_eq!(std::fs::read(&path).expect("read"), [0u8; 8]);
        ring.write(b"abcde").expect("write");
        ring.sync().expect("sync");
        ring.write(b"fghij").expect("write"); // wraps after "fgh"; 5 unsynced
        assert_eq!(ring.unsynced, 5);
        assert_eq!(&std::fs::read(&path).expect("read")[..], b"ijcdefgh");
        // Eight unsynced bytes fill the ring: the ninth waits for a sync.
        ring.write(b"klm").expect("write");
        assert_eq!(ring.unsynced, 8);
        ring.write(b"n").expect("write");
        assert_eq!(ring.unsynced, 1, "a sync came before the overwrite");
        assert_eq!(&std::fs::read(&path).expect("read")[..], b"ijklmngh");
        let _ = std::fs::remove_file(&path);
    }
}
