//! One durable append-only file shared by every simulated recipient of a load generator,
//! with group commit: a batch is durable once an `fdatasync` that began after it was
//! appended has returned, and one `fdatasync` covers every batch appended before it began.
//!
//! Why: the 37 recipients of a fan-out stand for 37 nodes on 37 machines, each syncing its
//! own disk in parallel. On the one benchmark machine, 37 separate files each synced on its
//! own blocking thread put 37 `fdatasync`s a message into the disk queue the relay's commits
//! wait in, and two thread hand-offs per recipient and batch on the relay's two cores.
//!
//! How: one thread owns the file. Callers hand it their batch and wait (asynchronously) for
//! the answer; the thread takes every batch waiting, appends them in order, syncs once, and
//! answers them all, while the next group gathers. A failed write or sync fails that group
//! and every later one (nothing appended after a failed sync can be trusted durable).
//!
//! Self-contained (std and tokio's oneshot): `crates/bench/peers` includes this file too, so
//! the peers' subscribers make batches durable the same way.

use std::collections::HashMap;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex, OnceLock, Weak};

use tokio::sync::oneshot;

/// A batch and where its answer goes.
struct Job {
    buf: Vec<u8>,
    done: oneshot::Sender<Result<(), String>>,
}

/// A shared, group-committed append-only file.
pub struct GroupLog {
    /// Batches for the syncing thread. Unbounded, but each caller waits for its answer before
    /// it sends again, so it holds at most one batch per recipient of the run (37 in a
    /// fan-out; a batch is at most 4,096 deliveries, `traffic::BATCH_FRAMES_MAX` and the
    /// peers' `BATCH_MAX`).
    jobs: mpsc::Sender<Job>,
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
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("group-log".into())
            .spawn(move || run(file, rx))?;
        let log = Arc::new(Self { jobs: tx });
        open.retain(|_, w| w.strong_count() > 0);
        open.insert(path.to_owned(), Arc::downgrade(&log));
        Ok(log)
    }

    /// Appends `buf` and returns once an `fdatasync` begun after the append has returned.
    pub async fn append_durable(&self, buf: Vec<u8>) -> io::Result<()> {
        let (done, answer) = oneshot::channel();
        self.jobs
            .send(Job { buf, done })
            .map_err(|_| io::Error::other("group log thread gone"))?;
        match answer.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(io::Error::other(e)),
            Err(_) => Err(io::Error::other("group log thread gone")),
        }
    }
}

/// The syncing thread: one group per turn, until every handle has gone.
fn run(mut file: std::fs::File, rx: mpsc::Receiver<Job>) {
    let mut failed: Option<String> = None;
    let mut group = Vec::new();
    while let Ok(first) = rx.recv() {
        group.push(first);
        group.extend(rx.try_iter());
        if failed.is_none() {
            let r = group
                .iter()
                .try_for_each(|j| file.write_all(&j.buf))
                .map_err(|e| format!("append: {e}"))
                .and_then(|()| file.sync_data().map_err(|e| format!("fdatasync: {e}")));
            failed = r.err();
        }
        for j in group.drain(..) {
            let _ = j.done.send(match &failed {
                None => Ok(()),
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
    async fn every_batch_is_appended_whole_once_and_answered() {
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
                        log.append_durable(vec![t, i, 0xAA, 0xBB])
                            .await
                            .expect("durable");
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("task");
        }
        let bytes = std::fs::read(&path).expect("read");
        assert_eq!(bytes.len(), 400 * 4);
        let mut seen = std::collections::HashSet::new();
        for rec in bytes.chunks(4) {
            assert_eq!(&rec[2..], &[0xAA, 0xBB], "batches are not interleaved");
            assert!(seen.insert((rec[0], rec[1])), "each batch once");
        }
        let _ = std::fs::remove_file(&path);
    }
}
