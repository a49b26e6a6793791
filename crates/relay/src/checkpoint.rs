//! Write-ahead-log checkpoints off the store writer's path.
//!
//! **Why.** The store is SQLite in WAL mode: a commit appends pages to the log, and a
//! *checkpoint* later copies them into the database file and syncs it, so that the log can
//! start over. SQLite runs its automatic checkpoint inside the commit that takes the log past
//! 1,000 pages. At 500 messages a second that was one commit in about fifty, and it took 1–2.5
//! ms instead of 0.25: the messages of that commit, and every one that arrived while it ran,
//! waited for it. It was the end-to-end p99 (docs/BENCHMARKS-ROUNDS.md, eleventh round).
//!
//! **How.** A thread of its own, with its own connection, runs *passive* checkpoints, which
//! never block the writer. The writer asks for one ([`Checkpointer::idle`]) when it is about
//! to wait for work and has made [`CHECKPOINT_EVERY_COMMITS`] commits since it last asked. A
//! passive checkpoint copies the pages committed when it began; if the writer committed more
//! meanwhile, the thread runs another, until the log stops growing (at most
//! [`CHECKPOINT_RUNS_MAX`] runs), so that the writer's next transaction finds every page
//! copied and starts the log over from its beginning.
//!
//! **Under sustained load** the writer never waits, so it never asks, and a background
//! checkpoint could rarely catch up with it anyway (its pages would keep the log growing:
//! an earlier checkpointer thread that ran regardless let the log reach hundreds of
//! megabytes). There, SQLite's automatic checkpoint still runs in the writer's commit, raised
//! to [`INLINE_CHECKPOINT_FRAMES`] pages (a log file of 14–19 MiB at the benchmark's maximum
//! rates, 5 MiB before): at maximum rate a commit takes milliseconds anyway, and a
//! checkpoint the writer runs itself always lets the log start over. If this thread cannot
//! start, or its checkpoints fail, that automatic checkpoint is what keeps the log bounded;
//! a failure is counted and logged.

use std::path::Path;
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use hotline_store::StoreError;
use rusqlite::Connection;
use tracing::{debug, info, warn};

use crate::metrics::Metrics;

/// Commits after which an idle writer asks for a background checkpoint. At 500 messages a
/// second a commit adds 11–21 pages to the log, so a round copies a few hundred pages, well
/// before SQLite's 1,000-page default would have run one inside a commit.
pub(crate) const CHECKPOINT_EVERY_COMMITS: u32 = 24;

/// Most passive checkpoints in one round (each after the writer committed during the one
/// before). Two almost always suffice when the writer is idle between commits.
pub(crate) const CHECKPOINT_RUNS_MAX: u32 = 4;

/// The writer's own automatic checkpoint, in log pages (`PRAGMA wal_autocheckpoint`), while
/// a background checkpointer runs: the fallback for sustained load, and for a checkpointer
/// that fails.
pub(crate) const INLINE_CHECKPOINT_FRAMES: u32 = 4_000;

/// Why the checkpoint thread could not start (the relay then runs without it, on SQLite's
/// automatic checkpoint in the writer).
#[derive(Debug, thiserror::Error)]
pub(crate) enum StartError {
    /// Its connection to the database could not be opened.
    #[error(transparent)]
    Open(#[from] StoreError),
    /// The operating system refused a thread.
    #[error("cannot start the checkpoint thread: {0}")]
    Thread(std::io::Error),
}

/// What one round of background checkpoints found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Round {
    /// Passive checkpoints run.
    pub(crate) runs: u32,
    /// Pages in the log when the last of them began.
    pub(crate) log_frames: i64,
    /// Pages of the log copied into the database, as of the last of them.
    pub(crate) copied_frames: i64,
    /// Whether the last could not run at all (another checkpoint held its lock).
    pub(crate) busy: bool,
}

/// The writer's handle on the checkpoint thread. Dropping it stops the thread and waits for
/// the checkpoint it is running, if any.
pub(crate) struct Checkpointer {
    kick: Option<SyncSender<()>>,
    thread: Option<JoinHandle<()>>,
    /// Commits since the writer last asked.
    since: u32,
}

impl Checkpointer {
    /// Opens a second connection to the database at `path` and starts the thread. `rounds`,
    /// if given, receives what each round found (tests wait on it).
    pub(crate) fn start(
        path: &Path,
        metrics: Arc<Metrics>,
        rounds: Option<mpsc::Sender<Round>>,
    ) -> Result<Self, StartError> {
        let conn = hotline_store::open(path, false)?;
        let (kick, kicked) = mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name(crate::thread_names::CHECKPOINT.into())
            .spawn(move || run(move || round(&conn), kicked, metrics, rounds))
            .map_err(StartError::Thread)?;
        Ok(Self {
            kick: Some(kick),
            thread: Some(thread),
            since: 0,
        })
    }

    /// The writer committed.
    pub(crate) fn committed(&mut self) {
        self.since = self.since.saturating_add(1);
    }

    /// The writer is about to wait for work: asks for a checkpoint if one is due. Never
    /// blocks; a request while a round runs is kept for when it ends.
    pub(crate) fn idle(&mut self) {
        if self.since < CHECKPOINT_EVERY_COMMITS {
            return;
        }
        if let Some(kick) = &self.kick {
            match kick.try_send(()) {
                Ok(()) | Err(TrySendError::Full(())) => self.since = 0,
                Err(TrySendError::Disconnected(())) => {}
            }
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        drop(self.kick.take());
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                warn!("the checkpoint thread panicked");
            }
        }
    }
}

/// The thread: one round per request, until the writer's handle is dropped. `checkpoint`
/// runs a round ([`round`] on the thread's own connection; tests pass failures).
fn run(
    mut checkpoint: impl FnMut() -> Result<Round, rusqlite::Error>,
    kicked: Receiver<()>,
    metrics: Arc<Metrics>,
    rounds: Option<mpsc::Sender<Round>>,
) {
    let mut failing = false;
    while kicked.recv().is_ok() {
        let started = Instant::now();
        match checkpoint() {
            Ok(r) => {
                metrics.checkpointed(started.elapsed(), r.log_frames);
                debug!(
                    runs = r.runs,
                    log_frames = r.log_frames,
                    copied_frames = r.copied_frames,
                    busy = r.busy,
                    "checkpoint round"
                );
                if failing {
                    info!("background WAL checkpoints work again");
                    failing = false;
                }
                if let Some(tx) = &rounds {
                    let _ = tx.send(r);
                }
            }
            Err(e) => {
                metrics.checkpoint_failed();
                if !failing {
                    warn!(error = %e, "background WAL checkpoint failed; the store writer's automatic checkpoint keeps the log bounded");
                    failing = true;
                }
            }
        }
    }
}

/// Passive checkpoints until the log stops growing, or [`CHECKPOINT_RUNS_MAX`].
fn round(conn: &Connection) -> Result<Round, rusqlite::Error> {
    let mut runs = 0;
    let mut previous = None;
    loop {
        let (busy, log_frames, copied_frames) =
            conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })?;
        runs += 1;
        if previous == Some(log_frames) || runs >= CHECKPOINT_RUNS_MAX {
            return Ok(Round {
                runs,
                log_frames,
                copied_frames,
                busy: busy != 0,
            });
        }
        previous = Some(log_frames);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::time::Duration;

    /// A fresh database with one table, and its writer's connection.
    fn db() -> (tempfile::TempDir, PathBuf, Connection) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("db");
        let writer = hotline_store::open(&path, true).expect("open");
        writer
            .execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, b BLOB)")
            .expect("table");
        (dir, path, writer)
    }

    /// Commits `n` rows of 4 KiB, one per transaction, as the writer's commits append pages.
    fn commit_rows(conn: &Connection, n: usize) {
        for _ in 0..n {
            conn.execute("INSERT INTO t (b) VALUES (zeroblob(4096))", [])
                .expect("insert");
        }
    }

    /// Pages in the log now, as a passive checkpoint on a third connection reports them.
    fn log_frames(path: &Path) -> i64 {
        let c = hotline_store::open(path, false).expect("open");
        c.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get(1))
            .expect("checkpoint")
    }

    /// The writer asks only after [`CHECKPOINT_EVERY_COMMITS`] commits, and counts again
    /// from zero once it has asked (a request pending is not repeated); with the thread
    /// gone, asking neither blocks nor panics.
    #[test]
    fn the_writer_asks_every_so_many_commits() {
        let (kick, kicked) = mpsc::sync_channel(1);
        let mut ck = Checkpointer {
            kick: Some(kick),
            thread: None,
            since: 0,
        };
        for _ in 0..CHECKPOINT_EVERY_COMMITS - 1 {
            ck.committed();
            ck.idle();
        }
        assert!(kicked.try_recv().is_err(), "not yet");
        ck.committed();
        ck.idle();
        assert!(kicked.try_recv().is_ok(), "due");
        ck.idle();
        assert!(kicked.try_recv().is_err(), "counting again from zero");
        for _ in 0..2 * CHECKPOINT_EVERY_COMMITS {
            ck.committed();
        }
        ck.idle();
        ck.idle();
        assert!(kicked.try_recv().is_ok());
        assert!(kicked.try_recv().is_err(), "one request, not two");
        drop(kicked);
        for _ in 0..CHECKPOINT_EVERY_COMMITS {
            ck.committed();
        }
        ck.idle();
    }

    /// A round leaves every page copied, so that the writer's next commit starts the log
    /// over instead of appending to it; the thread stops when the handle is dropped.
    #[test]
    fn an_idle_writer_gets_its_log_copied_and_started_over() {
        let (_dir, path, writer) = db();
        writer
            .execute_batch(&format!(
                "PRAGMA wal_autocheckpoint = {INLINE_CHECKPOINT_FRAMES}"
            ))
            .expect("pragma");
        let (tx, rounds) = mpsc::channel();
        let mut ck = Checkpointer::start(&path, Arc::new(Metrics::new()), Some(tx)).expect("start");

        commit_rows(&writer, 100);
        for _ in 0..CHECKPOINT_EVERY_COMMITS {
            ck.committed();
        }
        ck.idle();
        let r = rounds
            .recv_timeout(Duration::from_secs(10))
            .expect("a round");
        assert!(r.log_frames >= 100, "{r:?}");
        assert_eq!(r.copied_frames, r.log_frames, "{r:?}");
        assert!(!r.busy, "{r:?}");
        assert!(
            log_frames(&path) >= 100,
            "the log is copied, not yet started over"
        );

        commit_rows(&writer, 1);
        let after = log_frames(&path);
        assert!(
            after < 10,
            "the next commit started the log over: {after} pages"
        );
        drop(ck);
        let rows: i64 = writer
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .expect("count");
        assert_eq!(rows, 101);
    }

    /// A failed round is counted and does not stop the thread: the next request runs a round
    /// again, and one that works is reported as before.
    #[test]
    fn a_failed_round_is_counted_and_the_next_one_runs() {
        let metrics = Arc::new(Metrics::new());
        let (kick, kicked) = mpsc::sync_channel(1);
        let (tx, rounds) = mpsc::channel();
        let full = || {
            rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
                Some("database or disk is full".into()),
            )
        };
        let works = Round {
            runs: 1,
            log_frames: 7,
            copied_frames: 7,
            busy: false,
        };
        // Taken from the end: two failures, then one that works.
        let mut outcomes = vec![Ok(works), Err(full()), Err(full())];
        let m = metrics.clone();
        let thread = std::thread::spawn(move || {
            run(
                move || outcomes.pop().expect("no more rounds than requests"),
                kicked,
                m,
                Some(tx),
            )
        });
        for _ in 0..3 {
            kick.send(()).expect("the thread is running");
        }
        let r = rounds
            .recv_timeout(Duration::from_secs(10))
            .expect("the third round, which works, is reported");
        assert_eq!(r, works);
        let text = metrics.render(&[]);
        assert!(
            text.lines()
                .any(|l| l == "hotline_relay_checkpoint_failures_total 2"),
            "two failures in the metrics:\n{text}"
        );
        assert!(rounds.try_recv().is_err(), "failed rounds report nothing");
        drop(kick);
        thread.join().expect("the thread ends when its handle goes");
    }

    /// A round stops when a run finds the log no longer growing (here the second, as
    /// nothing is committed meanwhile), with every page copied.
    #[test]
    fn a_round_stops_when_the_log_stops_growing() {
        let (_dir, path, writer) = db();
        commit_rows(&writer, 10);
        let conn = hotline_store::open(&path, false).expect("open");
        let r = round(&conn).expect("round");
        assert_eq!(r.runs, 2, "{r:?}");
        assert!(r.log_frames >= 10, "{r:?}");
        assert_eq!(r.copied_frames, r.log_frames, "{r:?}");
    }
}
