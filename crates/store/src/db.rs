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

/// Opens (creating if asked) a database with WAL, `synchronous=FULL`, foreign keys on and a
/// busy timeout, and runs SQLite's quick integrity check so a damaged file is refused at
/// start-up with its name rather than served.
pub fn open(path: &Path, create: bool) -> Result<Connection, StoreError> {
    let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    if create {
        flags |= OpenFlags::SQLITE_OPEN_CREATE;
    }
    let wrap = |source| StoreError::Open {
        path: path.to_owned(),
        source,
    };
    let conn = Connection::open_with_flags(path, flags).map_err(wrap)?;
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

/// Claims `dir` ([`DirLock`]): an advisory `flock` on `dir/LOCK`, created if missing.
pub fn lock_dir(dir: &Path) -> Result<DirLock, StoreError> {
    let path = dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| StoreError::Io {
            path: path.clone(),
            source,
        })?;
    match file.try_lock() {
        Ok(()) => Ok(DirLock { _file: file }),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Locked { path }),
        Err(std::fs::TryLockError::Error(source)) => Err(StoreError::Io { path, source }),
    }
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
    use std::os::unix::fs::OpenOptionsExt as _;
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| StoreError::Io { path, source }
    };
    let target = out.to_str().ok_or_else(|| StoreError::Io {
        path: out.to_owned(),
        source: std::io::Error::other("the path is not UTF-8"),
    })?;
    let conn = open(src, false)?;
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
        let dir = out
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io(dir))?;
        let copy = Connection::open_with_flags(
            out,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|source| StoreError::Open {
            path: out.to_owned(),
            source,
        })?;
        quick_check(&copy, out)?;
        let journal = crate::verify_journal(&copy)?;
        Ok(Backup { bytes, journal })
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(out);
    }
    written
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
}
