//! One durable append-only file shared by every simulated recipient of a load generator,
//! with group commit: a batch is durable once an `fdatasync` that began after it was
//! appended has returned, and one `fdatasync` covers every batch appended before it began.
//!
//! Why: the 37 recipients of a fan-out stand for 37 nodes on 37 machines, each syncing its
//! own disk in parallel; on the one benchmark machine their 37 separate `fdatasync`s might
//! queue behind each other and the relay's commits. Sharing the sync keeps every batch
//! durable before it is receipted (or acknowledged to a broker) with one sync per group.
//! Measured on the 2-core machine (docs/BENCHMARKS.md, third round): no difference within
//! the run-to-run spread there (its ext4 has no journal for the syncs to queue in), so it is
//! an option, not the default.
//!
//! Self-contained (std only): `crates/bench/peers` includes this file too, so the peers'
//! subscribers make batches durable the same way.

use std::collections::HashMap;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, Weak};

/// A shared, group-committed append-only file.
pub struct GroupLog {
    file: std::fs::File,
    state: Mutex<State>,
    synced: Condvar,
}

#[derive(Default)]
struct State {
    /// Batches appended so far.
    appended: u64,
    /// Batches covered by a completed sync.
    synced: u64,
    /// A sync is running (its caller will wake the others).
    syncing: bool,
    /// A sync failed: nothing appended since is durable, so every later call fails.
    failed: Option<String>,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl GroupLog {
    /// The log at `path`, shared by every caller in this process that names the same path
    /// (created on first use).
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
        let log = Arc::new(Self {
            file,
            state: Mutex::new(State::default()),
            synced: Condvar::new(),
        });
        open.retain(|_, w| w.strong_count() > 0);
        open.insert(path.to_owned(), Arc::downgrade(&log));
        Ok(log)
    }

    /// Appends `buf` and returns once it is durable (blocking: call it from a blocking
    /// thread). Either this caller runs the sync, covering every batch appended so far, or it
    /// waits for the sync that covers its own.
    pub fn append_durable(&self, buf: &[u8]) -> io::Result<()> {
        let mine = {
            let mut st = lock(&self.state);
            if let Some(e) = &st.failed {
                return Err(io::Error::other(e.clone()));
            }
            (&self.file).write_all(buf)?;
            st.appended += 1;
            st.appended
        };
        let mut st = lock(&self.state);
        loop {
            if st.synced >= mine {
                return Ok(());
            }
            if let Some(e) = &st.failed {
                return Err(io::Error::other(e.clone()));
            }
            if st.syncing {
                st = self.synced.wait(st).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            st.syncing = true;
            let upto = st.appended;
            drop(st);
            let r = self.file.sync_data();
            st = lock(&self.state);
            st.syncing = false;
            match r {
                Ok(()) => st.synced = upto,
                Err(e) => st.failed = Some(format!("fdatasync: {e}")),
            }
            self.synced.notify_all();
        }
    }

    /// Batches appended, and batches covered by a completed sync.
    #[cfg(test)]
    fn counts(&self) -> (u64, u64) {
        let st = lock(&self.state);
        (st.appended, st.synced)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_batch_is_appended_whole_and_covered_by_a_sync() {
        // std only (the peers workspace includes this file without dev-dependencies).
        let path = std::env::temp_dir().join(format!("grouplog-test-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let log = GroupLog::shared(&path).expect("open");
        assert!(Arc::ptr_eq(&log, &GroupLog::shared(&path).expect("again")));
        let threads: Vec<_> = (0..8u8)
            .map(|t| {
                let log = log.clone();
                std::thread::spawn(move || {
                    for i in 0..50u8 {
                        log.append_durable(&[t, i, 0xAA, 0xBB]).expect("durable");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        assert_eq!(log.counts(), (400, 400));
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
