//! Opening a database with the durability settings every hotline store relies on.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

/// How long a connection waits for another's lock before failing (readers never wait in
/// WAL mode; this covers the writer and a concurrent `audit verify`).
pub const BUSY_TIMEOUT_MS: u64 = 5_000;

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database file could not be opened or is not a valid database.
    #[error("cannot open database {path}: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// SQLite's reason.
        source: rusqlite::Error,
    },
    /// SQLite's integrity check found damage.
    #[error("database {path} is corrupt: {detail}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What the check reported.
        detail: String,
    },
    /// The store's schema (`PRAGMA user_version`) is newer than this binary's: the file was
    /// written by a newer release (a rollback after an upgrade, a newer backup restored). It
    /// is not damaged, and is told apart from [`StoreError::Corrupt`] so that an operator
    /// does not throw a good store away; it is refused before anything in it is changed.
    #[error(
        "{path} was written by a newer version of the {what} (store schema version {found}; \
         this {what} supports schema versions up to {supported}): the file is not damaged and \
         was left as it is; run the newer version of the {what}, or restore a backup made by \
         this one"
    )]
    NewerSchema {
        /// The file.
        path: PathBuf,
        /// The schema version it records.
        found: i64,
        /// The newest schema version this binary opens.
        supported: i64,
        /// Whose store it is (`"relay"`, `"node"`).
        what: &'static str,
    },
    /// The disk is full: nothing was written.
    #[error("disk full: nothing was written")]
    DiskFull,
    /// Any other SQLite failure.
    #[error("storage: {0}")]
    Sqlite(rusqlite::Error),
    /// Another process holds the data directory (a relay or node already runs on it).
    #[error(
        "{path} is locked by another process: a relay or node already runs on this data directory"
    )]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// A file beside the database (a backup's) could not be written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The audit journal's hash chain is broken.
    #[error("audit journal broken at entry {seq}: {reason}")]
    JournalBroken {
        /// The first entry that does not verify.
        seq: u64,
        /// Why.
        reason: String,
    },
    /// The store belongs to another participant: a node's data directory holding another
    /// node's store (a backup restored into the wrong directory, a directory copied to the
    /// wrong machine). Serving it would show one member's messages to another.
    #[error(
        "{path} is the store of {holder}, but this is {configured}: is this the right data \
         directory, and the right backup?"
    )]
    OtherParticipant {
        /// The file.
        path: PathBuf,
        /// Whose store it is.
        holder: String,
        /// Who the node was configured as.
        configured: String,
    },
    /// No sequence number may follow `last`: an envelope carries at most 2^63 - 1 (the
    /// largest integer SQLite keeps). A node's counter at that number signs nothing more,
    /// and a floor above it (a relay's `Welcome.last_seq`) is refused.
    #[error(
        "no sequence number may follow {last}: an envelope carries at most 2^63 - 1, so nothing \
         more can be signed under this counter"
    )]
    SeqExhausted {
        /// The last number, which nothing may follow.
        last: u64,
    },
    /// A record the store was to write could not be signed: the value breaks a protocol
    /// rule or limit (the signer's reason, which it names). Nothing was written. Not a
    /// database failure, and told apart from one so that an operator does not look for a
    /// fault in SQLite or the disk.
    #[error("signing failed: {0}")]
    Signing(#[source] Box<dyn std::error::Error + Send + Sync + 'static>),
    /// A record the store holds does not decode (or one it was to write does not encode):
    /// the store is damaged, or was written by a newer version. Not SQLite's failure, and
    /// told apart from one.
    #[error(
        "a stored record does not decode: {0} (is the store damaged, or from a newer version?)"
    )]
    Record(#[source] Box<dyn std::error::Error + Send + Sync + 'static>),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        if let rusqlite::Error::SqliteFailure(f, _) = &e {
            if f.code == rusqlite::ErrorCode::DiskFull {
                return StoreError::DiskFull;
            }
        }
        StoreError::Sqlite(e)
    }
}

/// `path` as SQLite is to be given it: a file path, always. The bundled SQLite is built with
/// URI file names on (`SQLITE_USE_URI`), so a name it is given that begins with `file:` is
/// read as a URI, whatever the open flags, in `ATTACH` and `VACUUM INTO` too: `hotline backup
/// --out file:copy.db` wrote `copy.db`, created by SQLite with its default mode, and
/// `file:copy.db?mode=memory` nothing at all; and `:memory:` or an empty name is no file.
/// A relative path is therefore handed over as `./path`, which names the same file and
/// which SQLite takes as it is; an absolute path begins with `/` and is taken as it is.
fn plain(path: &Path) -> std::borrow::Cow<'_, Path> {
    if path.is_relative() {
        std::borrow::Cow::Owned(Path::new(".").join(path))
    } else {
        std::borrow::Cow::Borrowed(path)
    }
}

/// Opens (creating if asked) a database with WAL, `synchronous=FULL`, foreign keys on and a
/// busy timeout. It does not check the file's integrity: a service opening its store runs
/// [`quick_check`] next, so that a damaged file is refused at start-up with its name rather
/// than served.
pub fn open(path: &Path, create: bool) -> Result<Connection, StoreError> {
    let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    if create {
        flags |= OpenFlags::SQLITE_OPEN_CREATE;
    }
    let wrap = |source| StoreError::Open {
        path: path.to_owned(),
        source,
    };
    let conn = Connection::open_with_flags(plain(path), flags).map_err(wrap)?;
    conn.busy_timeout(Duration::from_millis(BUSY_TIMEOUT_MS))
        .map_err(wrap)?;
    // journal_mode returns a row; WAL keeps readers off the writer's path.
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .map_err(|e| corrupt_or(path, e))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Corrupt {
            path: path.to_owned(),
            detail: format!("cannot enable WAL (journal_mode is {mode})"),
        });
    }
    conn.execute_batch("PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;")
        .map_err(wrap)?;
    Ok(conn)
}

/// The lock file [`lock_dir`] holds in a data directory.
pub const LOCK_FILE: &str = "LOCK";

/// An exclusive claim on a data directory, held by the one service that writes its store:
/// a second relay or node started on the same directory is refused at once, naming it,
/// rather than both writing one store (each keeps state in memory that the other's writes
/// would contradict). Tools that only read, or copy (`hotline backup`, `audit verify`,
/// `relay report`), take no claim. Released when dropped, and by the kernel when the process
/// ends, however it ends; the (empty) file stays.
#[derive(Debug)]
pub struct DirLock {
    _file: std::fs::File,
}

/// How long a relay or node that is starting waits for its data directory's claim
/// ([`lock_dir_waiting`]) before refusing to start.
///
/// A process killed while it was starting a program (a node's hook) can leave its claim
/// held for a moment after it has been reaped: the child it was creating holds a copy of
/// every descriptor, the claim's included, until it has executed the program (close-on-exec
/// takes effect only then). A service restarted at once would find its own directory
/// claimed, and not start. Measured here: after a SIGKILL of a process spawning children in
/// a loop, 4 of 200 immediate claims failed, and none of 200 that waited up to 1 s.
pub const CLAIM_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// How often a claim that is held is tried again while [`lock_dir_waiting`] waits.
const CLAIM_RETRY: std::time::Duration = std::time::Duration::from_millis(10);

/// Claims `dir` ([`DirLock`]) at once, or fails [`StoreError::Locked`]: an advisory
/// `flock` on `dir/LOCK`, created if missing. For tools that tell a running service from a
/// stopped one by its claim, and for restores.
///
/// The file is opened read-only when it exists (a lock needs no write access), and one this
/// creates is given the directory's owner when that differs (an administrator's `sudo
/// hotline restore` on a new disk): otherwise the service's account could not open a
/// `LOCK` left behind by root, and the service would not start. A `chown` that is not
/// permitted (not root) is left, as the file is then the caller's own.
pub fn lock_dir(dir: &Path) -> Result<DirLock, StoreError> {
    claim(dir, std::time::Duration::ZERO, || {})
}

/// Claims `dir` as [`lock_dir`] does, but waits up to `wait` for a claim that is held (a
/// warning says so once): for a relay or node starting, with [`CLAIM_WAIT`], since the
/// claim of the process it replaces can outlive that process for a moment. Blocks the
/// thread.
pub fn lock_dir_waiting(dir: &Path, wait: std::time::Duration) -> Result<DirLock, StoreError> {
    claim(dir, wait, || {
        tracing::warn!(
            dir = %dir.display(),
            wait_ms = wait.as_millis() as u64,
            "the data directory is claimed by another process; waiting for the claim in case that process has just ended"
        )
    })
}

/// [`lock_dir_waiting`], calling `on_held` once when it first finds the claim held and
/// is going to wait.
fn claim(
    dir: &Path,
    wait: std::time::Duration,
    mut on_held: impl FnMut(),
) -> Result<DirLock, StoreError> {
    let path = dir.join(LOCK_FILE);
    let io = |source| StoreError::Io {
        path: path.clone(),
        source,
    };
    let file = match std::fs::File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(io)?;
            let _ = give_dir_owner(dir, &path);
            file
        }
        Err(e) => return Err(io(e)),
    };
    let deadline = std::time::Instant::now() + wait;
    let mut told = false;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(DirLock { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                if !told {
                    told = true;
                    on_held();
                }
                std::thread::sleep(CLAIM_RETRY);
            }
            Err(std::fs::TryLockError::WouldBlock) => return Err(StoreError::Locked { path }),
            Err(std::fs::TryLockError::Error(source)) => {
                return Err(StoreError::Io { path, source })
            }
        }
    }
}

/// Gives `path`, a file in `dir`, the owner of `dir` if it has another (a file an
/// administrator's `sudo` created in the service's data directory); only root may.
fn give_dir_owner(dir: &Path, path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    let owner = std::fs::metadata(dir)?;
    if std::fs::metadata(path)?.uid() == owner.uid() {
        return Ok(());
    }
    std::os::unix::fs::chown(path, Some(owner.uid()), Some(owner.gid()))
}

/// What [`backup`] wrote.
#[derive(Debug, Clone)]
pub struct Backup {
    /// The copy's size in bytes.
    pub bytes: u64,
    /// Its audit journal, checked in the copy.
    pub journal: crate::JournalReport,
}

/// Writes a consistent copy of the database at `src` to `out`, which must not exist, while
/// the service using it keeps running. The copy is SQLite's `VACUUM INTO`: one read
/// transaction over the database and its write-ahead log, so it holds every transaction
/// committed before that moment and none after, and never blocks the service's writer. The
/// file is created with mode 0600 (a store holds every message), synced with its directory,
/// then opened read-only and checked (`quick_check`, the journal's chain) before this
/// returns. A copy that fails is removed.
pub fn backup(src: &Path, out: &Path) -> Result<Backup, StoreError> {
    copy_into(&open(src, false)?, out)
}

/// [`backup`]'s copy from an open connection.
fn copy_into(conn: &Connection, out: &Path) -> Result<Backup, StoreError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| StoreError::Io { path, source }
    };
    // `VACUUM INTO` takes a URI as an open does ([`plain`]).
    let target = plain(out);
    let target = target.to_str().ok_or_else(|| StoreError::Io {
        path: out.to_owned(),
        source: std::io::Error::other("the path is not UTF-8"),
    })?;
    // SQLite writes into an empty file it finds; creating it first sets its mode and refuses
    // one that exists.
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .map_err(io(out))?;
    let written = (|| {
        conn.execute("VACUUM INTO ?1", [target])?;
        let file = std::fs::File::open(out).map_err(io(out))?;
        file.sync_all().map_err(io(out))?;
        let bytes = file.metadata().map_err(io(out))?.len();
        sync_dir(out.parent().unwrap_or(Path::new(".")))?;
        let copy = open_read_only(out)?;
        quick_check(&copy, out)?;
        let journal = crate::verify_journal(&copy)?;
        Ok(Backup { bytes, journal })
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(out);
    }
    written
}

/// Opens the database at `path` read-only, changing nothing in it (not its journal mode).
pub fn open_read_only(path: &Path) -> Result<Connection, StoreError> {
    Connection::open_with_flags(
        plain(path),
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| corrupt_or(path, e))
}

/// Syncs directory `dir` (`""`, a bare file name's parent, is the current one), so that the
/// names created or renamed in it are durable.
fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| StoreError::Io {
            path: dir.to_owned(),
            source,
        })
}

/// What [`restore`] did.
#[derive(Debug)]
pub struct Restored {
    /// The store now in place, and what was checked in it.
    pub store: Backup,
    /// The files of the store it replaced, renamed in the same directory (none if there was
    /// none, as after a lost disk).
    pub set_aside: Vec<PathBuf>,
    /// The claim on the data directory, still held: work the caller does on the restored
    /// store (a relay's queues moved back) happens before any service can start there.
    pub claim: DirLock,
}

/// Puts the store copy `copy` (a file `hotline backup` wrote) in place of `dir/name`, for a
/// service that is stopped: the claim on `dir` ([`lock_dir`]) is held throughout, so this is
/// refused while a relay or node runs there. The copy is read through a read-only connection
/// (so the backup itself is never changed, nor its `-wal` ignored) into a new file in `dir`
/// (`VACUUM INTO`, mode 0600, synced, checked as [`backup`] checks), given the owner of `dir`
/// (the service's account, when an administrator runs this as root). Only then is the
/// current store's write-ahead log folded into its file ([`fold_in_wal`]), and its files
/// (`name`, `name-wal`, `name-shm`) renamed to `aside` (and `aside-wal`,
/// `aside-shm`, which SQLite opens together), never deleted, and the new file renamed to
/// `name`; the directory is synced. `check` runs on the new file (read-only) before anything
/// is renamed, for what this crate cannot check (a relay's or node's records against their
/// journal). A copy that fails a check leaves the store as it was.
pub fn restore(
    copy: &Path,
    dir: &Path,
    name: &str,
    aside: &str,
    check: impl FnOnce(&Connection, &Path) -> Result<(), StoreError>,
) -> Result<Restored, StoreError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| StoreError::Io { path, source }
    };
    let claim = lock_dir(dir)?;
    let source = open_read_only(copy)?;
    let incoming = dir.join(format!(".{name}.restoring"));
    // Left by a restore that died before its rename: ours, since we hold the claim.
    match std::fs::remove_file(&incoming) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(&incoming)(e)),
    }
    let store = copy_into(&source, &incoming)?;
    drop(source);
    // (from, to) of each file of the current store renamed so far, to undo on a failure:
    // a store must never be left with a `-wal` that is not its own.
    let mut moved: Vec<(PathBuf, PathBuf)> = Vec::new();
    let placed = (|| {
        check(&open_read_only(&incoming)?, &incoming)?;
        give_dir_owner(dir, &incoming).map_err(io(&incoming))?;
        fold_in_wal(&dir.join(name));
        for suffix in ["", "-wal", "-shm"] {
            let from = dir.join(format!("{name}{suffix}"));
            if !from.exists() {
                continue;
            }
            let to = dir.join(format!("{aside}{suffix}"));
            if to.exists() {
                return Err(io(&to)(std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "a store set aside before has this name",
                )));
            }
            std::fs::rename(&from, &to).map_err(io(&from))?;
            moved.push((from, to));
        }
        let target = dir.join(name);
        std::fs::rename(&incoming, &target).map_err(io(&target))?;
        sync_dir(dir)
    })();
    match placed {
        Ok(()) => Ok(Restored {
            store,
            set_aside: moved.into_iter().map(|(_, to)| to).collect(),
            claim,
        }),
        Err(e) => {
            for (from, to) in moved.iter().rev() {
                let _ = std::fs::rename(to, from);
            }
            let _ = std::fs::remove_file(&incoming);
            Err(e)
        }
    }
}

/// Copies what the write-ahead log of the store at `path` holds into the store's own file
/// and empties the log (`wal_checkpoint(TRUNCATE)`), so that the file set aside by
/// [`restore`] is whole by itself. Its three files are renamed one at a time, and a crash
/// between two renames (power lost, `kill -9`) would otherwise leave the set-aside file
/// without the commits still in a log under the old name: one SQLite deletes when it
/// finds it beside the new, empty store a service creates there, and one a second restore
/// would set aside apart from its file. A store that cannot be checkpointed (damaged, which
/// may be why it is being replaced) is set aside as it is, its log renamed with it as
/// before; that is logged.
fn fold_in_wal(path: &Path) {
    if !path.exists() {
        return;
    }
    let folded = (|| -> rusqlite::Result<(i64, i64, i64)> {
        let conn = Connection::open_with_flags(
            plain(path),
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(Duration::from_millis(BUSY_TIMEOUT_MS))?;
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
    })();
    let why = match folded {
        // Not busy, and every frame of the log copied (-1, -1: not in WAL mode, no log).
        Ok((0, log, done)) if log == done => return,
        Ok((busy, log, done)) => format!("busy {busy}, {done} of {log} pages copied"),
        Err(e) => e.to_string(),
    };
    tracing::warn!(db = %path.display(), %why, "could not fold the replaced store's write-ahead log into it; it is set aside with its log");
}

/// Runs `PRAGMA quick_check` and reports damage naming the file.
pub fn quick_check(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    let result: String = conn
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .map_err(|e| corrupt_or(path, e))?;
    if result != "ok" {
        return Err(StoreError::Corrupt {
            path: path.to_owned(),
            detail: result,
        });
    }
    Ok(())
}

fn corrupt_or(path: &Path, e: rusqlite::Error) -> StoreError {
    match &e {
        rusqlite::Error::SqliteFailure(f, _)
            if matches!(
                f.code,
                rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase
            ) =>
        {
            StoreError::Corrupt {
                path: path.to_owned(),
                detail: e.to_string(),
            }
        }
        _ => StoreError::Open {
            path: path.to_owned(),
            source: e,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The store a restore replaces is set aside whole in its own file: commits still in
    /// its write-ahead log (its service was killed, or is an older process that never
    /// checkpointed) are folded in before its files are renamed one by one, so a crash
    /// between two renames cannot part them from it.
    #[test]
    fn a_restore_sets_the_replaced_store_aside_whole_in_its_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        std::fs::create_dir(&data).expect("data dir");
        let db = data.join("x.db");
        let schema = format!("{} CREATE TABLE t (v INTEGER);", crate::journal::SCHEMA);
        // The copy to restore.
        let old = open(&db, true).expect("store");
        old.execute_batch(&schema).expect("schema");
        drop(old);
        let copy = dir.path().join("copy.db");
        backup(&db, &copy).expect("backup");
        // The store in place: three commits in its log and none in its file, its writer
        // still open as a killed service's would have left them.
        let current = open(&db, true).expect("store");
        current
            .execute_batch("PRAGMA wal_autocheckpoint = 0; INSERT INTO t VALUES (1), (2), (3);")
            .expect("commits");
        let restored =
            restore(&copy, &data, "x.db", "x-replaced.db", |_, _| Ok(())).expect("restored");
        drop(restored);
        // The set-aside file alone, as a crash after its rename would have left it.
        let alone = dir.path().join("alone");
        std::fs::create_dir(&alone).expect("dir");
        std::fs::copy(data.join("x-replaced.db"), alone.join("x.db")).expect("copy");
        let n: i64 = open_read_only(&alone.join("x.db"))
            .expect("set-aside file")
            .query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))
            .expect("count");
        assert_eq!(n, 3, "the replaced store's commits are in its own file");
        drop(current);
    }

    /// One claim on a directory at a time; the next once it is dropped.
    #[test]
    fn a_data_directory_is_claimed_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = lock_dir(dir.path()).expect("first claim");
        match lock_dir(dir.path()) {
            Err(StoreError::Locked { path }) => assert_eq!(path, dir.path().join(LOCK_FILE)),
            other => panic!("expected the second claim refused, got {other:?}"),
        }
        drop(first);
        lock_dir(dir.path()).expect("claimed again");
    }

    /// A claim released while a starting service waits for it is taken; one that is not
    /// released in time is refused.
    #[test]
    fn a_starting_service_waits_for_a_claim_that_is_released() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut first = Some(lock_dir(dir.path()).expect("first claim"));
        let mut waits = 0;
        let second = claim(dir.path(), std::time::Duration::from_secs(60), || {
            waits += 1;
            // The other process ends while this one waits.
            drop(first.take());
        });
        assert!(second.is_ok(), "claimed once released: {second:?}");
        assert_eq!(waits, 1, "found held once, then taken");
        let held = second.expect("claimed");
        match claim(dir.path(), std::time::Duration::from_millis(30), || {}) {
            Err(StoreError::Locked { path }) => assert_eq!(path, dir.path().join(LOCK_FILE)),
            other => panic!("expected the claim refused after the wait, got {other:?}"),
        }
        drop(held);
    }
}
