//! The store's write-ahead log synced on a thread of its own, so that the store writer goes
//! on to its next batch while the last one's commit reaches the disk.
//!
//! **Why.** With `synchronous=FULL` the writer blocked in the log's `fdatasync` inside every
//! `COMMIT` (about 0.25 ms on a quiet host, most of a commit), and a submission arriving
//! meanwhile waited for it: the *wait* stage of a message's way through the relay, and at
//! maximum rate a sync per batch (docs/BENCHMARKS-ROUNDS.md, twenty-eighth and twenty-ninth
//! rounds).
//!
//! **How.** The writer's connection runs at `synchronous=NORMAL`: in WAL mode a commit then
//! writes its frames to the `-wal` file and returns without a sync. The writer hands the
//! commit's answers ([`WalSync::answer_after_sync`]) to this module's thread, which runs one
//! `fdatasync` of the `-wal` file and only then sends every answer it was handed before that
//! sync began. One sync covers every commit written before it, so under load a sync serves
//! several commits. Nothing is answered *accepted* (nor a receipt *stored*) before the bytes
//! of its commit are on disk: the same bytes a `FULL` commit would have synced.
//!
//! **Why that is as durable as `FULL`.** A `FULL` commit in WAL mode writes the same frames
//! and then syncs the log (`sqlite3WalFrames`; it would first pad the commit to a sector
//! boundary, but only on a file system without power-safe overwrite, which SQLite's Unix
//! file layer assumes by default). At `NORMAL` SQLite still syncs the log before every
//! checkpoint and the database after it, and the log's header when it starts the log over,
//! so the store stays consistent whatever is lost; what a crash can lose is only commits not
//! yet synced, and their senders were not yet answered: their nodes send them again (the
//! node's outbox), as after any crash. Log frames carry cumulative checksums, so recovery
//! keeps a prefix of the commits, never a later one without an earlier one.
//!
//! **A failed sync stops the relay.** After a failed `fdatasync` the kernel may have dropped
//! the pages it could not write, and a later sync can succeed without them, so nothing
//! written since the last good sync can be trusted durable. The first failure is kept for
//! good: every answer handed over after it (and those of its own group) is refused
//! `StorageUnavailable`, never accepted, and the writer, woken, stops, refusing as well
//! every command still waiting in its queue; the relay stops as when
//! its writer ends ([`crate::RelayHandle::failed`]), so that its supervisor restarts it and
//! SQLite recovers the log as the disk holds it. Syncs are serialised (one lock), so a
//! writeback error is reported to the sync that covers the failed bytes or to one before it,
//! never lost between two concurrent calls. SQLite's own syncs of the log (before a
//! checkpoint, of the header) use its own descriptor; Linux (since 4.13) reports a writeback
//! error once to each open file description, so they cannot take the report this thread's
//! descriptor must see.
//!
//! **The log is the file the relay opened.** Before each sync its path is checked to still
//! name the opened file (device and inode): a log replaced or removed under a running relay
//! is a failure as above, not a sync of an orphan.
//!
//! Where this cannot start (the log cannot be opened, no thread), the writer keeps
//! `synchronous=FULL` and answers after its own commits, as before; so does a writer hosted
//! on a simulation's runtime (`Hosting::writer_on_runtime`).

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{mpsc as std_mpsc, Arc, Mutex, OnceLock};
use std::thread::{JoinHandle, Thread};
use std::time::Instant;

use hotline_proto::frame::RelayToNode;
use rustix::fs::{major, minor};
use tokio::sync::mpsc;
use tracing::error;

use crate::metrics::{Durable, Metrics};

/// A commit's answers, each with the session's reply channel (capacity reserved).
pub(crate) type Replies = Vec<(mpsc::Sender<RelayToNode>, RelayToNode)>;

/// A commit's answers and what it accepted and stored, counted once synced.
type Handed = (Replies, Durable);

/// Why the sync thread could not start (the writer then keeps `synchronous=FULL`).
#[derive(Debug, thiserror::Error)]
pub(crate) enum StartError {
    /// The `-wal` file could not be opened or examined.
    #[error("cannot open the store's write-ahead log {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The operating system refused a thread.
    #[error("cannot start the write-ahead log's sync thread: {0}")]
    Thread(std::io::Error),
}

/// A sync of the log that failed: the relay stops (module doc).
#[derive(Debug, thiserror::Error)]
pub(crate) enum SyncError {
    /// `fdatasync` failed (a disk error, a full disk on a file system that allocates late).
    #[error("cannot sync the store's write-ahead log {path}: {source}; what was written since the last good sync cannot be trusted durable, so the relay stops (at its next start SQLite recovers the log as the disk holds it)")]
    Sync {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The sync thread has ended (a bug: a panic).
    #[error(
        "the write-ahead log's sync thread has stopped (a bug; its log says why); the relay stops"
    )]
    Stopped,
    /// The path no longer names the file opened at the start.
    #[error("the store's write-ahead log {path} was replaced or removed while the relay ran ({detail}); the relay stops")]
    Replaced { path: PathBuf, detail: String },
}

/// A file's identity: its device (major, minor) and inode numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Identity {
    dev: (u32, u32),
    ino: u64,
}

/// The identity of a file (the one a path names now, or one open), asking the kernel for
/// nothing else.
///
/// Why not `std::fs::metadata`: it asks `statx` for every field, the change and modification
/// times among them, and on Linux since 6.13 a file whose times were read gets fine-grained
/// times at its next write (multigrain timestamps), which also moves the file system's
/// coarse clock forward for every other file. Read before each sync, the log's times then
/// changed with nearly every commit, and with them its inode, which `fdatasync` on ext4
/// without a journal writes as a second request before the disk's flush: about 80 µs more
/// a sync on the benchmark machine's disk, and the other files' syncs (the load generator's
/// log) wrote their inodes more often too (docs/BENCHMARKS-ROUNDS.md, thirty-seventh round).
/// Asking for the inode number alone reads no time. Where `statx` is missing (a kernel before
/// 4.11, or a sandbox that refuses it) this falls back to `stat`.
fn identity_of(of: Target<'_>) -> std::io::Result<Identity> {
    use rustix::fs::{statx, AtFlags, StatxFlags, CWD};
    let st = match of {
        Target::Path(path) => statx(CWD, path, AtFlags::empty(), StatxFlags::INO),
        Target::File(file) => statx(file, "", AtFlags::EMPTY_PATH, StatxFlags::INO),
    };
    match st {
        Ok(st) => Ok(Identity {
            dev: (st.stx_dev_major, st.stx_dev_minor),
            ino: st.stx_ino,
        }),
        Err(rustix::io::Errno::NOSYS) | Err(rustix::io::Errno::PERM) => {
            let meta = match of {
                Target::Path(path) => std::fs::metadata(path)?,
                Target::File(file) => file.metadata()?,
            };
            let dev = meta.dev();
            Ok(Identity {
                dev: (major(dev), minor(dev)),
                ino: meta.ino(),
            })
        }
        Err(e) => Err(e.into()),
    }
}

/// What [`identity_of`] looks at: the file a path names now, or an open file.
#[derive(Clone, Copy)]
enum Target<'a> {
    Path(&'a Path),
    File(&'a File),
}

/// What only one sync at a time may touch.
struct Log {
    file: File,
    /// The opened file's identity.
    identity: Identity,
    /// Syncs run, counted only for [`crate::Hosting::fail_syncs_after`].
    syncs: u64,
}

impl Log {
    /// One sync: the path still names the opened file, then `fdatasync`.
    fn sync(&mut self, path: &Path, fail_after: Option<u64>) -> Result<(), SyncError> {
        let now = identity_of(Target::Path(path)).map_err(|e| SyncError::Replaced {
            path: path.to_owned(),
            detail: e.to_string(),
        })?;
        if now != self.identity {
            return Err(SyncError::Replaced {
                path: path.to_owned(),
                detail: "another file has its name".into(),
            });
        }
        self.syncs += 1;
        // One failure, as a transient error: the syncs after it would succeed.
        if fail_after.is_some_and(|n| self.syncs == n + 1) {
            return Err(SyncError::Sync {
                path: path.to_owned(),
                source: std::io::Error::other(
                    "sync failure injected by a test (Hosting::fail_syncs_after)",
                ),
            });
        }
        self.file.sync_data().map_err(|source| SyncError::Sync {
            path: path.to_owned(),
            source,
        })
    }
}

/// What the writer's handle and the thread share.
struct Shared {
    path: PathBuf,
    log: Mutex<Log>,
    /// The first failure, kept for good; set under `log`'s lock, read without it by the
    /// writer between batches.
    failed: OnceLock<Arc<SyncError>>,
    /// Woken when a sync fails, so that a writer waiting for work stops at once.
    writer: Thread,
    metrics: Arc<Metrics>,
    fail_after: Option<u64>,
}

impl Shared {
    /// Returns once every byte written to the log before the call is on disk, or the
    /// failure (this sync's, or an earlier one's: after one, every call fails).
    fn sync(&self) -> Result<(), Arc<SyncError>> {
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = self.failed.get() {
            return Err(e.clone());
        }
        let started = Instant::now();
        self.metrics.disk.sync_began(started);
        let synced = log.sync(&self.path, self.fail_after);
        self.metrics.disk.sync_ended();
        match synced {
            Ok(()) => {
                self.metrics.wal_synced(started.elapsed());
                Ok(())
            }
            Err(e) => Err(self.fail(e)),
        }
    }

    /// Records the first failure for good (a later one is only the first's consequence),
    /// and wakes the writer so that it stops. Returns the failure kept.
    fn fail(&self, e: SyncError) -> Arc<SyncError> {
        let kept = self
            .failed
            .get_or_init(|| {
                error!(error = %e, "write-ahead log sync failed: refusing every answer not yet sent and stopping the relay");
                self.metrics.wal_sync_failed();
                Arc::new(e)
            })
            .clone();
        self.writer.unpark();
        kept
    }
}

/// The writer's handle on the sync thread. Dropping it lets the thread sync and answer what
/// it was handed, and waits for it.
pub(crate) struct WalSync {
    shared: Arc<Shared>,
    tx: Option<std_mpsc::Sender<Handed>>,
    thread: Option<JoinHandle<()>>,
}

impl WalSync {
    /// Opens the `-wal` file of the database at `db` (which the writer's connection must
    /// hold open, so that SQLite keeps it) and starts the thread. `writer` is the store
    /// writer's thread, woken when a sync fails; `fail_after` is the test seam
    /// [`crate::Hosting::fail_syncs_after`].
    pub(crate) fn start(
        db: &Path,
        metrics: Arc<Metrics>,
        writer: Thread,
        fail_after: Option<u64>,
    ) -> Result<Self, StartError> {
        let mut path = db.as_os_str().to_owned();
        path.push("-wal");
        let path = PathBuf::from(path);
        let open = |path: &Path| {
            let file = File::open(path)?;
            let identity = identity_of(Target::File(&file))?;
            Ok::<_, std::io::Error>((file, identity))
        };
        let (file, identity) = open(&path).map_err(|source| StartError::Open {
            path: path.clone(),
            source,
        })?;
        let shared = Arc::new(Shared {
            path,
            log: Mutex::new(Log {
                file,
                identity,
                syncs: 0,
            }),
            failed: OnceLock::new(),
            writer,
            metrics,
            fail_after,
        });
        // Unbounded as a channel, bounded by what it carries: each answer holds a place the
        // session reserved in its own answer channel (`limits.inflight_per_connection`), so
        // at most `connections_max` times that many wait here, however slow the disk.
        let (tx, rx) = std_mpsc::channel::<Handed>();
        let thread = std::thread::Builder::new()
            .name(crate::thread_names::WAL_SYNC.into())
            .spawn({
                let shared = shared.clone();
                move || run(&shared, &rx)
            })
            .map_err(StartError::Thread)?;
        Ok(Self {
            shared,
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Hands over a commit's answers (the commit has returned): they are sent once a sync
    /// begun after this call has returned, or refused if it fails. What the commit accepted
    /// and stored (`durable`) is counted just before they are sent, and never if they are
    /// refused.
    pub(crate) fn answer_after_sync(&self, replies: Replies, durable: Durable) {
        if let Some(tx) = &self.tx {
            if let Err(std_mpsc::SendError((replies, _))) = tx.send((replies, durable)) {
                // The thread has gone (it cannot, short of a panic): nothing is answered
                // accepted that no sync covers, and the relay stops as after a failed sync.
                let e = self.shared.fail(SyncError::Stopped);
                refuse_all(replies, &e.to_string());
            }
        }
    }

    /// Syncs on the caller's thread, for what is answered apart from the sessions (an
    /// operator's rewind).
    pub(crate) fn sync_now(&self) -> Result<(), Arc<SyncError>> {
        self.shared.sync()
    }

    /// The first failure, once a sync has failed: the writer must stop.
    pub(crate) fn failed(&self) -> Option<Arc<SyncError>> {
        self.shared.failed.get().cloned()
    }
}

impl Drop for WalSync {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                error!("the write-ahead log's sync thread panicked");
            }
        }
    }
}

/// The thread: gathers every group handed over, syncs once, answers them all.
fn run(shared: &Shared, rx: &std_mpsc::Receiver<Handed>) {
    let mut group: Replies = Vec::new();
    while let Ok((first, mut durable)) = rx.recv() {
        group.extend(first);
        for (more, d) in rx.try_iter() {
            group.extend(more);
            durable += d;
        }
        match shared.sync() {
            Ok(()) => {
                shared.metrics.durable(durable);
                for (reply, answer) in group.drain(..) {
                    // Capacity was reserved by the session; it fails only if the session
                    // has gone, and its node resubmits and gets the same answer.
                    let _ = reply.try_send(answer);
                }
            }
            Err(e) => refuse_all(std::mem::take(&mut group), &e.to_string()),
        }
    }
}

/// Answers every one of `replies` `StorageUnavailable`, whatever it was going to be.
fn refuse_all(replies: Replies, why: &str) {
    for (reply, answer) in replies {
        let _ = reply.try_send(crate::store::refused_for_storage(
            &answer,
            format!("relay storage: {why}"),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hotline_proto::frame::{Accepted, RejectCode, Rejected, Subject};
    use hotline_proto::MessageId;
    use std::time::Duration;

    const WAIT: Duration = Duration::from_secs(10);

    /// A database in WAL mode with its log on disk, the connection that keeps it, and a
    /// handle (woken on failure: this test thread).
    fn started(fail_after: Option<u64>) -> (tempfile::TempDir, rusqlite::Connection, WalSync) {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("t.db");
        let conn = hotline_store::open(&db, true).expect("open");
        conn.execute_batch(
            "PRAGMA synchronous=NORMAL; CREATE TABLE t (x); INSERT INTO t VALUES (1);",
        )
        .expect("write");
        let ws = WalSync::start(
            &db,
            Arc::new(Metrics::new()),
            std::thread::current(),
            fail_after,
        )
        .expect("start");
        (dir, conn, ws)
    }

    fn accepted(n: u8) -> RelayToNode {
        RelayToNode::Accepted(Accepted {
            id: MessageId([n; 16]),
            recipients: Vec::new(),
            accepted_at_ms: 1,
        })
    }

    fn answers(n: usize) -> (Replies, mpsc::Receiver<RelayToNode>) {
        let (tx, rx) = mpsc::channel(n);
        let replies = (0..n).map(|i| (tx.clone(), accepted(i as u8))).collect();
        (replies, rx)
    }

    async fn next(rx: &mut mpsc::Receiver<RelayToNode>) -> RelayToNode {
        tokio::time::timeout(WAIT, rx.recv())
            .await
            .expect("an answer in time")
            .expect("the channel open")
    }

    fn storage_refused(a: &RelayToNode) -> bool {
        matches!(
            a,
            RelayToNode::Rejected(Rejected {
                code: RejectCode::StorageUnavailable,
                subject: Subject::Message(_),
                ..
            })
        )
    }

    /// Answers handed over are sent, unchanged and in order, after a sync.
    #[tokio::test]
    async fn answers_are_sent_after_a_sync() {
        let (_dir, _conn, ws) = started(None);
        let (replies, mut rx) = answers(3);
        ws.answer_after_sync(replies, Durable::default());
        for i in 0..3u8 {
            assert_eq!(next(&mut rx).await, accepted(i));
        }
        assert!(ws.failed().is_none());
        assert!(ws.sync_now().is_ok());
    }

    /// After a failed sync nothing is ever answered accepted, even though later syncs would
    /// succeed: its own group and every later one are refused, the failure is kept, and the
    /// writer's thread is woken. Only what a sync covered is counted accepted.
    #[tokio::test]
    async fn after_a_failed_sync_nothing_is_accepted() {
        let (_dir, _conn, ws) = started(Some(1));
        let counted = |n| Durable {
            accepted: n,
            ..Durable::default()
        };
        let (first, mut rx1) = answers(1);
        ws.answer_after_sync(first, counted(1));
        assert_eq!(next(&mut rx1).await, accepted(0), "the first sync succeeds");
        let (second, mut rx2) = answers(2);
        ws.answer_after_sync(second, counted(2));
        for _ in 0..2 {
            let a = next(&mut rx2).await;
            assert!(storage_refused(&a), "{a:?}");
        }
        let e = ws.failed().expect("the failure is kept");
        assert!(e.to_string().contains("injected"), "{e}");
        let (third, mut rx3) = answers(1);
        ws.answer_after_sync(third, counted(1));
        assert!(storage_refused(&next(&mut rx3).await));
        assert!(ws.sync_now().is_err());
        assert_eq!(
            ws.shared
                .metrics
                .accepted
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
    }

    /// If the thread has gone (it cannot but by a bug), what is handed over is refused, not
    /// dropped or accepted, and the writer is told to stop.
    #[tokio::test]
    async fn a_sync_thread_gone_refuses_and_stops_the_writer() {
        let (_dir, _conn, ws) = started(None);
        let (tx, rx) = std_mpsc::channel();
        drop(rx);
        let orphan = WalSync {
            shared: ws.shared.clone(),
            tx: Some(tx),
            thread: None,
        };
        let (replies, mut answers) = answers(1);
        orphan.answer_after_sync(replies, Durable::default());
        assert!(storage_refused(&next(&mut answers).await));
        let e = ws.failed().expect("the writer sees the failure");
        assert!(matches!(*e, SyncError::Stopped), "{e}");
    }

    /// A log replaced under the relay (here renamed away and another file put in its place)
    /// is not synced: the sync fails, naming why.
    #[tokio::test]
    async fn a_replaced_log_fails_its_sync() {
        let (dir, _conn, ws) = started(None);
        assert!(ws.sync_now().is_ok());
        let wal = dir.path().join("t.db-wal");
        std::fs::rename(&wal, dir.path().join("moved")).expect("rename");
        std::fs::write(&wal, b"not the relay's").expect("write");
        let e = ws.sync_now().expect_err("replaced");
        assert!(matches!(*e, SyncError::Replaced { .. }), "{e}");
        assert!(ws.failed().is_some());
        std::fs::remove_file(&wal).expect("remove");
        let e = ws.sync_now().expect_err("still failed");
        assert!(e.to_string().contains("replaced"), "{e}");
    }

    /// A file's identity is the same through its path and through an open descriptor,
    /// another file's differs, and `stat`'s device number, split as the fallback splits it,
    /// gives the device `statx` gives.
    #[test]
    fn a_files_identity_through_its_path_or_its_descriptor() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, b"a").expect("write");
        std::fs::write(&b, b"b").expect("write");
        let file = File::open(&a).expect("open");
        let by_path = identity_of(Target::Path(&a)).expect("a by path");
        assert_eq!(
            by_path,
            identity_of(Target::File(&file)).expect("a by file")
        );
        assert_ne!(by_path, identity_of(Target::Path(&b)).expect("b"));
        let meta = std::fs::metadata(&a).expect("stat");
        assert_eq!(by_path.ino, meta.ino());
        assert_eq!(by_path.dev, (major(meta.dev()), minor(meta.dev())));
        assert!(identity_of(Target::Path(&dir.path().join("none"))).is_err());
    }
}
