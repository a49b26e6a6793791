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
    /// A restore into the data directory began and did not finish ([`RESTORE_MARKER`] is
    /// there): the store in place may be the old one or the copy. A service refuses to start
    /// until the restore is run again.
    #[error(
        "{path} is there: a restore into this data directory did not finish; run `hotline \
         restore` again (it finishes the restore; docs/OPERATIONS.md 6.5), then start"
    )]
    RestoreUnfinished {
        /// The marker file.
        path: PathBuf,
    },
    /// The store was replaced while a backup copied it (a restore ran meanwhile): the copy
    /// is of the store set aside, and was removed.
    #[error(
        "{path} was replaced while it was copied (a restore into its directory ran meanwhile): \
         the copy, of the store it replaced, was removed; run the backup again"
    )]
    Replaced {
        /// The store.
        path: PathBuf,
    },
    /// There is no store, but signs of an earlier one: a store set aside or being
    /// restored, a backup, or a write-ahead log without its file. A service refuses to
    /// create an empty store there, which would take the old one's place silently.
    #[error(
        "{path} is missing, but the directory holds {}: a store was here (a restore cut \
         short, or the store moved away); restore it (`hotline restore --from FILE --data \
         DIR`), or move these files out of the directory to start with an empty store",
        found.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    StoreMissing {
        /// The store file that is missing.
        path: PathBuf,
        /// What was found in its place.
        found: Vec<PathBuf>,
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
///
/// Polled, as no lock this workspace can take waits with a limit: `flock(2)` and
/// `fcntl(F_SETLKW)` (std's `File::lock`, rustix's and nix's `flock`, `libc`) block until
/// the lock is free or a signal interrupts them, and a signal to end the wait (an alarm
/// timer) would need a handler (unsafe code, which the workspace forbids) in a process whose
/// signals tokio handles; a thread left blocked in `File::lock` past the limit would take
/// the claim later and hold it with no one to use it. Trying again every 10 ms costs at
/// most 200 attempts in [`CLAIM_WAIT`], and only while the claim is held; it takes the
/// claim within 10 ms of its release, which is what the wait is for.
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
/// committed before that moment and none after, and never blocks the service's writer. It
/// is written under a hidden name beside `out` ([`partial_name`]), mode 0600 (a store
/// holds every message), synced, opened read-only and checked (`quick_check`, the
/// journal's chain), and only then given the name `out` ([`publish`]), which is never
/// replaced: a file under that name is a whole, checked copy, whatever happens to the
/// backup (killed, power lost) and whoever reads the name meanwhile (an operator choosing
/// a copy, a restore, the next run's `--keep`). A copy that fails is removed; one killed
/// leaves its hidden file, which nothing counts as a copy, and which the next backup into
/// that directory removes once its process is gone ([`remove_dead_partials`]). A restore into the store's
/// directory takes the directory's claim, which this does not (it runs beside the service):
/// one that began while this copied ([`StoreError::RestoreUnfinished`]) or ended meanwhile,
/// putting another file under the store's name ([`StoreError::Replaced`]), had this copy the
/// store it replaced, and the copy is refused and removed.
pub fn backup(src: &Path, out: &Path) -> Result<Backup, StoreError> {
    backup_with(src, out, || {})
}

/// [`backup`], running `opened` once the store is open, before it is read (in tests, what
/// another process does then).
fn backup_with(src: &Path, out: &Path, opened: impl FnOnce()) -> Result<Backup, StoreError> {
    // A restore cut short may have left the store in place and the one it kept aside as
    // two names of one file, or a copy in place not yet finished: nothing to copy from.
    let dir = match src.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let marker = dir.join(RESTORE_MARKER);
    if marker.exists() {
        return Err(StoreError::RestoreUnfinished { path: marker });
    }
    // Read-only: the copy changes nothing in its source. A read-write connection closing
    // last folds the source's write-ahead log into its file (that of a stopped store that a
    // killed service left), and would write into whatever file the name leads to. A
    // read-only connection reads a log it finds, and never writes the database or its log;
    // but SQLite creates the log and its index (`-wal`, `-shm`) beside a WAL database it
    // opens when they are missing (a store stopped cleanly, in one file), and a reader
    // cannot remove them when it closes. They are left, empty, for the service's next
    // start, which removes them at its clean stop; created as root, SQLite gives them the
    // store file's owner, so the service's account can open them.
    // Which file the name leads to: a restore replaces it by another (`rename(2)`).
    let identity = |path: &Path| {
        use std::os::unix::fs::MetadataExt as _;
        std::fs::metadata(path).map(|m| (m.dev(), m.ino())).ok()
    };
    let before = identity(src);
    let conn = open_read_only(src)?;
    opened();
    // A name taken is refused before the copy is made, as it is after.
    if std::fs::symlink_metadata(out).is_ok() {
        return Err(StoreError::Io {
            path: out.to_owned(),
            source: std::io::ErrorKind::AlreadyExists.into(),
        });
    }
    remove_dead_partials(out.parent().unwrap_or(Path::new(".")));
    let partial = partial_name(out)?;
    // `_held` keeps the copy locked until it has its name (or is removed).
    let (copied, _held) = copy_into(&conn, &partial)?;
    drop(conn);
    // A restore that began meanwhile has written its marker before it renames anything, and
    // one that ended meanwhile has put another file under the store's name: either way this
    // copied the store it replaces (SQLite read the file it had open), not the one in place.
    let replaced = if marker.exists() {
        Some(StoreError::RestoreUnfinished { path: marker })
    } else if before.is_none() || identity(src) != before {
        Some(StoreError::Replaced {
            path: src.to_owned(),
        })
    } else {
        None
    };
    if let Some(e) = replaced {
        let _ = std::fs::remove_file(&partial);
        return Err(e);
    }
    publish(&partial, out)?;
    Ok(copied)
}

/// The hidden name [`backup`] writes a copy under before it is checked, beside `out` (so
/// that [`publish`] renames within one file system): `.NAME.partial-PID-N`, unique to this
/// process and this call. `--keep`, which counts the copies named after their store, never
/// takes it for one.
fn partial_name(out: &Path) -> Result<PathBuf, StoreError> {
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let name = out.file_name().ok_or_else(|| StoreError::Io {
        path: out.to_owned(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file name"),
    })?;
    let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut hidden = std::ffi::OsString::from(".");
    hidden.push(name);
    hidden.push(format!(".partial-{}-{n}", std::process::id()));
    let partial = out.with_file_name(hidden);
    // A file by this name is a dead process's (the number is this process's): left by a
    // backup killed before it finished.
    match std::fs::remove_file(&partial) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(StoreError::Io {
                path: partial,
                source,
            })
        }
    }
    Ok(partial)
}

/// Removes from `dir` the hidden partial copies ([`partial_name`], with the `-wal`,
/// `-shm` or `-journal` SQLite may have left beside one) of backups no longer running: one
/// killed midway (the timer's time limit, Ctrl-C, power lost) left its file for good, as
/// large as a copy, of any copy's name (`--out-dir` names each run's anew). A process runs
/// if `/proc/PID` exists; a partial copy of one that runs is never removed, since another
/// backup (this process's included) may be writing it right now, nor is one whose backup
/// still holds its lock ([`copy_into`]; a backup `/proc` does not show: in another PID
/// namespace, or another user's where `/proc` hides those), nor any where that cannot be
/// told (no `/proc`, on other systems than Linux): those are left for the operator
/// (docs/OPERATIONS.md 6.2). Each removal is logged; one that fails is logged and skipped,
/// the backup going on. A PID reused by another process since keeps its file until that
/// process ends too.
fn remove_dead_partials(dir: &Path) {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    if !cfg!(target_os = "linux") || !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        // The copy's own write says why, if it matters.
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some((pid, main)) = name.to_str().and_then(partial_pid) else {
            continue;
        };
        // A backup's files are regular files; anything else of that name (a FIFO, whose
        // open below would wait for a writer) is no partial copy.
        if !e.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        if Path::new("/proc").join(pid.to_string()).exists() {
            continue;
        }
        let path = e.path();
        // `/proc` shows no such process, but it does not show every backup that runs: one in
        // another PID namespace (a container) writing into a shared directory, or one of
        // another user where `/proc` hides those (`ProtectProc=invisible`, as the packaged
        // units run). A backup holds its copy locked while it runs ([`copy_into`]): one held
        // is kept, and so is the `-wal`/`-shm` beside it; so is one whose lock cannot be
        // tried (another user's, unreadable). The lock taken is held while the file goes.
        let main = dir.join(main);
        if std::fs::symlink_metadata(&main).is_ok_and(|m| !m.is_file()) {
            continue;
        }
        let _claim = match std::fs::File::open(main) {
            Ok(f) => match f.try_lock() {
                Ok(()) => Some(f),
                Err(_) => {
                    tracing::info!(
                        file = %path.display(),
                        pid,
                        "kept the hidden partial copy of a backup that still holds it"
                    );
                    continue;
                }
            },
            // A `-wal` or `-shm` left without its copy.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(_) => continue,
        };
        match std::fs::remove_file(&path) {
            Ok(()) => tracing::info!(
                file = %path.display(),
                pid,
                "removed the hidden partial copy of a backup no longer running"
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(
                file = %path.display(),
                pid,
                error = %e,
                "cannot remove the hidden partial copy of a backup no longer running"
            ),
        }
    }
}

/// The PID in a name [`partial_name`] gives (`.NAME.partial-PID-N`, or SQLite's `-wal`,
/// `-shm` or `-journal` beside it), and the name of the copy itself (without that suffix);
/// `None` for any other name.
fn partial_pid(name: &str) -> Option<(u32, &str)> {
    let main = ["-wal", "-shm", "-journal"]
        .iter()
        .find_map(|s| name.strip_suffix(s))
        .unwrap_or(name);
    let rest = main.strip_prefix('.')?;
    let (stem, numbers) = rest.rsplit_once(".partial-")?;
    let (pid, n) = numbers.split_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if stem.is_empty() || !digits(pid) || !digits(n) {
        return None;
    }
    Some((pid.parse().ok()?, main))
}

/// Gives the checked copy at `partial` the name `out`, never replacing a file there
/// (another backup's, made meanwhile): a hard link, which fails on a name taken, then the
/// hidden name removed and the directory synced. A file system without hard links (FAT on
/// a removable disk) gets a rename if the name is still free, which leaves a moment in
/// which another backup's copy could be replaced by this one. On any failure the hidden
/// file is removed.
fn publish(partial: &Path, out: &Path) -> Result<(), StoreError> {
    let placed = match std::fs::hard_link(partial, out) {
        // In place: a hidden name left behind (not removed) is no copy.
        Ok(()) => {
            let _ = std::fs::remove_file(partial);
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(e),
        Err(_) if std::fs::symlink_metadata(out).is_err() => std::fs::rename(partial, out),
        Err(_) => Err(std::io::ErrorKind::AlreadyExists.into()),
    };
    if let Err(source) = placed {
        let _ = std::fs::remove_file(partial);
        return Err(StoreError::Io {
            path: out.to_owned(),
            source,
        });
    }
    sync_dir(out.parent().unwrap_or(Path::new(".")))
}

/// [`backup`]'s copy from an open connection, and the file of the copy, which holds an
/// exclusive lock on it (`flock(2)`) until dropped: a backup keeps it until its copy has its
/// name, so that another backup's [`remove_dead_partials`] never removes it, whatever `/proc`
/// shows of this process.
fn copy_into(conn: &Connection, out: &Path) -> Result<(Backup, std::fs::File), StoreError> {
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
    let held = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .map_err(io(out))?;
    let written = (|| {
        // Locked before anything is written into it. Another backup's
        // `remove_dead_partials` may have taken the file in the instant between its creation
        // and the lock (its PID hidden from that backup's `/proc`) and removed it: then the
        // name leads to no file, or another, and this copy stops rather than write an
        // unheld file.
        held.lock().map_err(io(out))?;
        let identity = |m: std::fs::Metadata| {
            use std::os::unix::fs::MetadataExt as _;
            (m.dev(), m.ino())
        };
        let ours = identity(held.metadata().map_err(io(out))?);
        if std::fs::symlink_metadata(out).map(identity).ok() != Some(ours) {
            return Err(StoreError::Io {
                path: out.to_owned(),
                source: std::io::Error::other(
                    "the copy's file was removed as it was created (by another backup)",
                ),
            });
        }
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
    written.map(|b| (b, held))
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
    /// The names the store it replaced is kept under in the same directory, its file's
    /// first and its write-ahead log's if one was left (none if there was no store, as
    /// after a lost disk).
    pub set_aside: Vec<PathBuf>,
    /// The claim on the data directory, still held: work the caller does on the restored
    /// store (a relay's queues moved back) happens before any service can start there.
    pub claim: DirLock,
}

/// The file a restore writes in a data directory before it changes any name there, and
/// removes once the copy is in place: a relay or node refuses to start while it is there
/// ([`check_startable`]), so that a restore cut short (power lost, `kill -9`) is run again
/// rather than served half done. It says in words what it is.
pub const RESTORE_MARKER: &str = "RESTORE-UNFINISHED";

/// Puts the store copy `copy` (a file `hotline backup` wrote) in place of `dir/name`, for a
/// service that is stopped: the claim on `dir` ([`lock_dir`]) is held throughout, so this is
/// refused while a relay or node runs there. The copy is read through a read-only connection
/// (so the backup itself is never changed, nor its `-wal` ignored) into a new file in `dir`
/// (`VACUUM INTO`, mode 0600, synced, checked as [`backup`] checks), given the owner of `dir`
/// (the service's account, when an administrator runs this as root). `check` runs on the new
/// file (read-only) before anything is renamed, for what this crate cannot check (a relay's
/// or node's records against their journal). A copy that fails a check leaves the store as
/// it was.
///
/// The replacement is made so that a crash at any point leaves `dir/name` either the old
/// store, whole with its own write-ahead log, or the new one, with none, and never no store
/// or a store beside another's log (SQLite cannot tell a log is not its database's, and
/// would apply it):
/// 1. the current store's write-ahead log is folded into its file ([`fold_in_wal`]);
/// 2. [`RESTORE_MARKER`] is written and synced, with the directory;
/// 3. the current store's file, and its log when one is left (it could not be folded), are
///    hard-linked as `aside` (and `aside-wal`); the directory is synced. The old store now
///    has two names;
/// 4. `name-wal` and `name-shm` are removed (the log is empty, or kept as `aside-wal`); the
///    directory is synced;
/// 5. the new file is renamed over `name`, one `rename(2)`; the directory is synced;
/// 6. `finish` runs on the store now in place (given its path and what was checked in it),
///    for the caller's work that is part of the restore (a relay's queues moved back): it
///    opens the file itself, since the service's own open refuses it while the marker is
///    there;
/// 7. the marker is removed; the directory is synced.
///
/// A crash after 2 and before 7, or a failure of `finish` (which undoes nothing: the old
/// store is then kept under `aside` only), leaves the marker, and the service refuses to
/// start until the restore is run again, which finishes it (setting aside whichever store
/// is then in place, and running `finish` on the copy put in place again). The replaced
/// store is never deleted.
pub fn restore(
    copy: &Path,
    dir: &Path,
    name: &str,
    aside: &str,
    check: impl FnOnce(&Connection, &Path) -> Result<(), StoreError>,
    finish: impl FnOnce(&Path, &Backup) -> Result<(), StoreError>,
) -> Result<Restored, StoreError> {
    restore_until(
        copy,
        dir,
        name,
        aside,
        check,
        finish,
        fold_in_wal,
        usize::MAX,
    )
}

/// How many steps [`restore_until`] counts: it stops after any of them in tests.
#[cfg(test)]
const RESTORE_STEPS: usize = 11;

/// [`restore`], stopping short after `steps` of its steps as a crash there would (nothing
/// undone, nothing more written), for tests; `usize::MAX` runs it through. `fold` is
/// [`fold_in_wal`], or, in tests, one that fails to fold as it may on a damaged store.
#[allow(clippy::too_many_arguments)] // restore's, and two that tests set
fn restore_until(
    copy: &Path,
    dir: &Path,
    name: &str,
    aside: &str,
    check: impl FnOnce(&Connection, &Path) -> Result<(), StoreError>,
    finish: impl FnOnce(&Path, &Backup) -> Result<(), StoreError>,
    fold: impl FnOnce(&Path),
    steps: usize,
) -> Result<Restored, StoreError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| StoreError::Io { path, source }
    };
    let claim = lock_dir(dir)?;
    let source = open_read_only(copy)?;
    let incoming = dir.join(format!(".{name}.restoring"));
    // Left by a restore that died before its rename: ours, since we hold the claim.
    for suffix in ["", "-wal", "-shm"] {
        let leftover = dir.join(format!(".{name}.restoring{suffix}"));
        match std::fs::remove_file(&leftover) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&leftover)(e)),
        }
    }
    let (store, _) = copy_into(&source, &incoming)?;
    drop(source);
    let current = dir.join(name);
    let current_wal = dir.join(format!("{name}-wal"));
    let current_shm = dir.join(format!("{name}-shm"));
    let marker = dir.join(RESTORE_MARKER);
    // Each step, counted so that a test can stop after any ([`restore_until`]).
    let mut done = 0;
    let mut step = || {
        done += 1;
        done <= steps
    };
    // The names this made, to undo on a failure (not on a crash: the marker covers that).
    let mut linked: Vec<PathBuf> = Vec::new();
    // The old log's second name, once made, and whether its first is gone.
    let mut wal_kept: Option<PathBuf> = None;
    let mut wal_removed = false;
    let placed = (|| -> Result<bool, StoreError> {
        check(&open_read_only(&incoming)?, &incoming)?;
        give_dir_owner(dir, &incoming).map_err(io(&incoming))?;
        if !step() {
            return Ok(false);
        }
        fold(&current);
        if !step() {
            return Ok(false);
        }
        write_marker(&marker, copy, name)?;
        sync_dir(dir)?;
        if !step() {
            return Ok(false);
        }
        // Link, never rename: the old store keeps its name until the new one takes it.
        // A log left (it could not be folded in) goes with it; an empty one is no part of it.
        let wal_left = std::fs::metadata(&current_wal).is_ok_and(|m| m.len() > 0);
        let keep = [(&current, true), (&current_wal, wal_left)];
        for (i, (from, wanted)) in keep.into_iter().enumerate() {
            if !wanted || !from.exists() {
                continue;
            }
            let to = dir.join(format!("{aside}{}", ["", "-wal"][i]));
            std::fs::hard_link(from, &to).map_err(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    io(&to)(std::io::Error::new(
                        e.kind(),
                        "a store set aside before has this name",
                    ))
                } else {
                    io(&to)(e)
                }
            })?;
            if i == 1 {
                wal_kept = Some(to.clone());
            }
            linked.push(to);
            if !step() {
                return Ok(false);
            }
        }
        sync_dir(dir)?;
        if !step() {
            return Ok(false);
        }
        // The old store's log must not be found beside the new store, which SQLite would
        // apply to it.
        for path in [&current_wal, &current_shm] {
            match std::fs::remove_file(path) {
                Ok(()) => wal_removed |= path == &current_wal,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(path)(e)),
            }
            if !step() {
                return Ok(false);
            }
        }
        sync_dir(dir)?;
        std::fs::rename(&incoming, &current).map_err(io(&current))?;
        if !step() {
            return Ok(false);
        }
        sync_dir(dir)?;
        Ok(true)
    })();
    match placed {
        Ok(false) => Err(StoreError::Io {
            path: marker,
            source: std::io::Error::other("stopped short, as a crash would (a test)"),
        }),
        Ok(true) => {
            // In place. The caller's work on it (a relay's queues moved back) is part of the
            // restore, under the marker: a crash or a failure there leaves the marker, and
            // the restore run again does it all again. Nothing is undone on its failure:
            // the old store is kept under `aside` only now.
            finish(&current, &store)?;
            if !step() {
                return Err(StoreError::Io {
                    path: marker,
                    source: std::io::Error::other("stopped short, as a crash would (a test)"),
                });
            }
            // Its work done, the marker goes. One that cannot be removed keeps the service
            // from starting, which its error then says.
            std::fs::remove_file(&marker).map_err(io(&marker))?;
            sync_dir(dir)?;
            Ok(Restored {
                store,
                set_aside: linked,
                claim,
            })
        }
        Err(e) => {
            // The old store is still in place under `name`: give it back its log if it had
            // one, then drop the names this made. The marker stays if any of that fails.
            let mut undone = true;
            if let (true, Some(kept)) = (wal_removed, &wal_kept) {
                undone &= std::fs::hard_link(kept, &current_wal).is_ok();
            }
            if undone {
                for to in &linked {
                    undone &= std::fs::remove_file(to).is_ok();
                }
            }
            let _ = std::fs::remove_file(&incoming);
            if undone {
                let _ = std::fs::remove_file(&marker);
            }
            let _ = sync_dir(dir);
            Err(e)
        }
    }
}

/// Writes [`RESTORE_MARKER`] at `path`, synced, saying what it is for an operator who finds it.
fn write_marker(path: &Path, copy: &Path, name: &str) -> Result<(), StoreError> {
    use std::io::Write as _;
    let io = |source| StoreError::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::File::create(path).map_err(io)?;
    writeln!(
        file,
        "A restore of {} as {name} began here and did not finish. The relay or node refuses \
         to start while this file is here: run `hotline restore` again (docs/OPERATIONS.md 6.5).",
        copy.display()
    )
    .map_err(io)?;
    file.sync_all().map_err(io)
}

/// Whether a relay or node may open (creating if missing) its store `name` in `dir`. It may
/// not while [`RESTORE_MARKER`] is there ([`StoreError::RestoreUnfinished`]), nor create one
/// where there is none but signs of an earlier one are
/// ([`StoreError::StoreMissing`]): a store set aside or being restored (`STEM-*.db`, a
/// backup's or a replaced store's name, `.NAME.restoring`) or a log left without its file
/// (`NAME-wal`). An empty store started there would take the old one's place silently,
/// and everything the old one held (messages accepted, received) would be lost to the
/// service. With no store and none of these (a first start, or a lost disk replaced), it
/// may.
pub fn check_startable(dir: &Path, name: &str) -> Result<(), StoreError> {
    let marker = dir.join(RESTORE_MARKER);
    if marker.exists() {
        return Err(StoreError::RestoreUnfinished { path: marker });
    }
    let path = dir.join(name);
    if path.exists() {
        return Ok(());
    }
    let stem = name.strip_suffix(".db").unwrap_or(name);
    let wal = format!("{name}-wal");
    let restoring = format!(".{name}.restoring");
    let entries = std::fs::read_dir(dir).map_err(|source| StoreError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let mut found: Vec<PathBuf> = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| StoreError::Io {
            path: dir.to_owned(),
            source,
        })?;
        let file = entry.file_name();
        let Some(file) = file.to_str() else { continue };
        let earlier = file == wal
            || file == restoring
            || (file.starts_with(&format!("{stem}-")) && file.ends_with(".db"));
        if earlier {
            found.push(entry.path());
        }
    }
    if found.is_empty() {
        return Ok(());
    }
    found.sort();
    Err(StoreError::StoreMissing { path, found })
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
        let restored = restore(
            &copy,
            &data,
            "x.db",
            "x-replaced.db",
            |_, _| Ok(()),
            |_, _| Ok(()),
        )
        .expect("restored");
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

    /// The store a test restore replaces, as a relay killed with commits in its log leaves
    /// it (`x.db` and `x.db-wal`, the rows 1, 2, 3 in the log only), and a copy to restore
    /// holding the row 10.
    fn killed_store_and_copy(root: &Path) -> (PathBuf, PathBuf) {
        let schema = format!("{} CREATE TABLE t (v INTEGER);", crate::journal::SCHEMA);
        let scratch = root.join("scratch");
        std::fs::create_dir(&scratch).expect("scratch");
        let src = scratch.join("new.db");
        let c = open(&src, true).expect("copy's store");
        c.execute_batch(&schema).expect("schema");
        c.execute_batch("INSERT INTO t VALUES (10);").expect("row");
        drop(c);
        let copy = root.join("copy.db");
        backup(&src, &copy).expect("backup");
        let data = root.join("data");
        std::fs::create_dir(&data).expect("data");
        let old = scratch.join("x.db");
        let c = open(&old, true).expect("store");
        c.execute_batch(&schema).expect("schema");
        // The schema in the file (as a store that ran a while has it), the rows in the log.
        c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE); PRAGMA wal_autocheckpoint = 0;")
            .expect("checkpoint");
        c.execute_batch("INSERT INTO t VALUES (1), (2), (3);")
            .expect("rows");
        // The files as a SIGKILL leaves them: the log not folded in, not removed.
        std::fs::copy(&old, data.join("x.db")).expect("file");
        std::fs::copy(scratch.join("x.db-wal"), data.join("x.db-wal")).expect("log");
        drop(c);
        (copy, data)
    }

    /// The rows of the store `name` in `dir` as a service opening it would see them (its
    /// `-wal` applied, if one is beside it), once checked whole; why not, if it cannot be
    /// read so. Read-only, so that looking changes nothing.
    fn rows_seen(dir: &Path, name: &str) -> Result<Vec<i64>, String> {
        let path = dir.join(name);
        if !path.exists() {
            return Err("missing".to_owned());
        }
        let conn = open_read_only(&path).map_err(|e| e.to_string())?;
        quick_check(&conn, &path).map_err(|e| e.to_string())?;
        crate::verify_journal(&conn).map_err(|e| e.to_string())?;
        let mut st = conn
            .prepare("SELECT v FROM t ORDER BY v")
            .map_err(|e| e.to_string())?;
        let rows = st
            .query_map([], |r| r.get(0))
            .and_then(|rows| rows.collect::<Result<Vec<i64>, _>>())
            .map_err(|e| e.to_string())?;
        Ok(rows)
    }

    /// A restore cut short after any of its steps (power lost, `kill -9`) leaves the store
    /// the service would open either the old one, whole, or the copy, whole, and never no
    /// store (a service would create an empty one) nor a store beside another's log (SQLite
    /// would apply it); the old store is kept whole under some name; and the marker keeps
    /// the service from starting until the restore, run again, finishes. With the replaced
    /// store's log folded in, and with one left (it could not be folded). The caller's work
    /// on the store in place (a relay's queues moved back; here the row 11 added) is part
    /// of the restore: the service never starts on the copy without it.
    #[test]
    fn a_restore_cut_short_at_any_step_leaves_a_whole_store_and_finishes_when_run_again() {
        use std::os::unix::fs::MetadataExt as _;
        let old = vec![1, 2, 3];
        // The copy, and the copy once the restore's work on it is done.
        let copied = vec![10];
        let new = vec![10, 11];
        let finish = |path: &Path, _: &Backup| -> Result<(), StoreError> {
            open(path, false)?.execute_batch("INSERT INTO t VALUES (11);")?;
            Ok(())
        };
        for folds in [true, false] {
            for steps in 0..=RESTORE_STEPS {
                let at = format!("folds {folds}, cut after {steps} steps");
                let root = tempfile::tempdir().expect("tempdir");
                let (copy, data) = killed_store_and_copy(root.path());
                let old_file = std::fs::metadata(data.join("x.db")).expect("store").ino();
                let fold = |p: &Path| {
                    if folds {
                        fold_in_wal(p)
                    }
                };
                let r = restore_until(
                    &copy,
                    &data,
                    "x.db",
                    "x-aside.db",
                    |_, _| Ok(()),
                    finish,
                    fold,
                    steps,
                );
                let finished = r.is_ok();
                drop(r);
                // A log beside the store in place is its own, whatever the marker says.
                if std::fs::metadata(data.join("x.db-wal")).is_ok_and(|m| m.len() > 0) {
                    let file = std::fs::metadata(data.join("x.db")).expect("store").ino();
                    assert_eq!(file, old_file, "{at}: a store beside another's log");
                }
                let startable = check_startable(&data, "x.db");
                // What the service would open, whatever the marker says.
                let seen = rows_seen(&data, "x.db");
                if folds {
                    assert!(
                        seen == Ok(old.clone())
                            || seen == Ok(copied.clone())
                            || seen == Ok(new.clone()),
                        "{at}: the store in place is {seen:?}"
                    );
                }
                match &startable {
                    Ok(()) => {
                        let want = if finished { &new } else { &old };
                        assert_eq!(seen, Ok(want.clone()), "{at}: started on the wrong store");
                    }
                    Err(StoreError::RestoreUnfinished { path }) => {
                        assert!(!finished, "{at}: finished, marker left");
                        assert_eq!(path, &data.join(RESTORE_MARKER), "{at}");
                    }
                    Err(e) => panic!("{at}: {e}"),
                }
                // The old store, whole somewhere: in place, or set aside (with its log).
                let aside = rows_seen(&data, "x-aside.db");
                assert!(
                    seen == Ok(old.clone()) || aside == Ok(old.clone()),
                    "{at}: the old store is lost: in place {seen:?}, set aside {aside:?}"
                );
                if finished {
                    assert_eq!(aside, Ok(old.clone()), "{at}: kept");
                    continue;
                }
                // Run again, it finishes: the copy in place, the service may start.
                drop(
                    restore(&copy, &data, "x.db", "x-aside-2.db", |_, _| Ok(()), finish)
                        .unwrap_or_else(|e| panic!("{at}: run again: {e}")),
                );
                check_startable(&data, "x.db").unwrap_or_else(|e| panic!("{at}: {e}"));
                assert_eq!(rows_seen(&data, "x.db"), Ok(new.clone()), "{at}: run again");
                let kept = [
                    rows_seen(&data, "x-aside.db"),
                    rows_seen(&data, "x-aside-2.db"),
                ];
                assert!(
                    kept.contains(&Ok(old.clone())),
                    "{at}: the old store is lost: {kept:?}"
                );
            }
        }
    }

    /// The names in `dir`, sorted, and each file's length and a hash of its bytes.
    fn files(dir: &Path) -> Vec<(String, usize, u64)> {
        use std::hash::{Hash as _, Hasher as _};
        let mut all: Vec<(String, usize, u64)> = std::fs::read_dir(dir)
            .expect("ls")
            .map(|e| {
                let e = e.expect("entry");
                let name = e.file_name().into_string().expect("UTF-8");
                let bytes = std::fs::read(e.path()).expect("read");
                let mut h = std::collections::hash_map::DefaultHasher::new();
                bytes.hash(&mut h);
                (name, bytes.len(), h.finish())
            })
            .collect();
        all.sort();
        all
    }

    /// A backup only reads its source: a stopped store that a killed service left with
    /// commits in its write-ahead log keeps its file and its log byte for byte (a read-write
    /// open folded the log into the file when it closed, changing the file that a restore
    /// cut short may share with the store it kept aside), and the copy holds those commits;
    /// a store stopped cleanly, in one file, is copied too, and left in one file; and so is
    /// a running store, its writer's commits still in its log.
    #[test]
    fn a_backup_changes_nothing_in_its_source() {
        let root = tempfile::tempdir().expect("tempdir");
        let (_, data) = killed_store_and_copy(root.path());
        let before = files(&data);
        assert!(
            before.iter().any(|(n, len, _)| n == "x.db-wal" && *len > 0),
            "a log with commits: {:?}",
            before.iter().map(|(n, _, _)| n).collect::<Vec<_>>()
        );
        let out = root.path().join("killed.db");
        backup(&data.join("x.db"), &out).expect("backup of a killed store");
        assert_eq!(rows_seen(root.path(), "killed.db"), Ok(vec![1, 2, 3]));
        let after: Vec<_> = files(&data)
            .into_iter()
            .filter(|(n, _, _)| n != "x.db-shm")
            .collect();
        assert_eq!(after, before, "the source is as it was");

        // Stopped cleanly: one file, left so.
        let clean = root.path().join("clean");
        std::fs::create_dir(&clean).expect("dir");
        let c = open(&clean.join("x.db"), true).expect("store");
        c.execute_batch(&format!(
            "{} CREATE TABLE t (v INTEGER); INSERT INTO t VALUES (4);",
            crate::journal::SCHEMA
        ))
        .expect("rows");
        drop(c);
        let before = files(&clean);
        assert_eq!(before.len(), 1, "one file");
        // The service's account owns it; this runs as root where it can (CI does).
        use std::os::unix::fs::MetadataExt as _;
        let service = (54_321, 54_322);
        let as_root =
            std::os::unix::fs::chown(clean.join("x.db"), Some(service.0), Some(service.1)).is_ok();
        let out = root.path().join("clean.db");
        backup(&clean.join("x.db"), &out).expect("backup of a stopped store");
        assert_eq!(rows_seen(root.path(), "clean.db"), Ok(vec![4]));
        let after = files(&clean);
        assert_eq!(after[0], before[0], "the store's file as it was");
        // SQLite's empty log and index, which a reader cannot remove, are the service's.
        for (name, len, _) in &after[1..] {
            assert!(name == "x.db-wal" || name == "x.db-shm", "{name}");
            if name == "x.db-wal" {
                assert_eq!(*len, 0, "an empty log");
            }
            let m = std::fs::metadata(clean.join(name)).expect("file");
            if as_root {
                assert_eq!((m.uid(), m.gid()), service, "{name}: the store's owner");
            }
        }

        // Running: its writer open, a commit in its log only.
        let w = open(&clean.join("x.db"), false).expect("writer");
        w.execute_batch("PRAGMA wal_autocheckpoint = 0; INSERT INTO t VALUES (5);")
            .expect("commit");
        let out = root.path().join("live.db");
        backup(&clean.join("x.db"), &out).expect("backup of a running store");
        assert_eq!(rows_seen(root.path(), "live.db"), Ok(vec![4, 5]));
        w.execute_batch("INSERT INTO t VALUES (6);")
            .expect("the writer goes on");
        drop(w);
    }

    /// What docs/OPERATIONS.md (section 1) says of a read-only open of a store stopped in
    /// one file: SQLite creates the write-ahead log (empty) and its index beside it, as a
    /// reader needs the index to read beside a writer; the reader changes nothing in the
    /// store's file and cannot remove the two when it closes; the service's next open and
    /// clean close (a read-write connection, the last to close) removes them. Should a
    /// SQLite upgrade change any of this, the document must change with it.
    #[test]
    fn a_reader_of_a_store_in_one_file_leaves_an_empty_log_and_its_index() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("x.db");
        let c = open(&db, true).expect("store");
        c.execute_batch("CREATE TABLE t (v INTEGER); INSERT INTO t VALUES (1);")
            .expect("schema");
        drop(c);
        let names = || -> Vec<String> {
            let mut v: Vec<String> = std::fs::read_dir(dir.path())
                .expect("listed")
                .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        assert_eq!(names(), ["x.db"], "a clean close leaves one file");
        let bytes = std::fs::read(&db).expect("store");
        let conn = open_read_only(&db).expect("reader");
        let n: i64 = conn
            .query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))
            .expect("read");
        assert_eq!(n, 1);
        drop(conn);
        assert_eq!(names(), ["x.db", "x.db-shm", "x.db-wal"]);
        let wal = std::fs::metadata(dir.path().join("x.db-wal")).expect("log");
        assert_eq!(wal.len(), 0, "the log is empty");
        assert!(
            std::fs::read(&db).expect("store") == bytes,
            "the store's file unchanged"
        );
        drop(open(&db, false).expect("the service"));
        assert_eq!(names(), ["x.db"], "the service's clean close removes them");
    }

    /// Any read-only tool (`config check`, `audit verify`, `relay report`, `backup`) run as
    /// root on a store stopped in one file makes SQLite create its empty `-wal` and `-shm`,
    /// which a reader cannot remove: SQLite gives them the store file's owner (as root, it
    /// does so for every file it creates beside a database), so that the service's account
    /// can open them at its next start. This holds that to it.
    #[test]
    fn a_reader_leaves_the_files_it_creates_to_the_store_s_owner() {
        use std::os::unix::fs::MetadataExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("x.db");
        let c = open(&db, true).expect("store");
        c.execute_batch("CREATE TABLE t (v INTEGER);")
            .expect("schema");
        drop(c);
        let service = (54_323, 54_324);
        if std::os::unix::fs::chown(&db, Some(service.0), Some(service.1)).is_err() {
            return; // not root: whatever it creates is the caller's own, as the store is.
        }
        let conn = open_read_only(&db).expect("reader");
        let n: i64 = conn
            .query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))
            .expect("read");
        assert_eq!(n, 0);
        drop(conn);
        for f in ["x.db-wal", "x.db-shm"] {
            if let Ok(m) = std::fs::metadata(dir.path().join(f)) {
                assert_eq!((m.uid(), m.gid()), service, "{f}: the store's owner");
            }
        }
    }

    /// The environment variable that makes [`backup_child_for_the_kill_test`] back up: the
    /// store's path and the copy's, one a line.
    const BACKUP_CHILD: &str = "HOTLINE_TEST_BACKUP_CHILD";

    /// The child half of [`a_backup_killed_midway_leaves_nothing_under_its_name`]: backs up
    /// the store the environment names, when that test runs it; nothing otherwise.
    #[test]
    fn backup_child_for_the_kill_test() {
        let Ok(paths) = std::env::var(BACKUP_CHILD) else {
            return;
        };
        let (src, out) = paths.split_once('\n').expect("two paths");
        backup(Path::new(src), Path::new(out)).expect("backup");
    }

    /// A backup killed while it copies (the timer's `TimeoutSec`, an operator's Ctrl-C,
    /// power lost) leaves nothing under the copy's name: a file there is a whole, checked
    /// copy, or there is none. A torn file under the name looked like a good copy, to an
    /// operator choosing one to restore and to the next `--keep`, which counted it among the
    /// copies it keeps and removed a good one in its place. Another backup or a restore
    /// reading the name while one is written is covered by the same rule.
    #[test]
    fn a_backup_killed_midway_leaves_nothing_under_its_name() {
        let root = tempfile::tempdir().expect("tempdir");
        let src = root.path().join("x.db");
        let c = open(&src, true).expect("store");
        // 32 MiB: its copy takes far longer than the 1 ms this waits between looks.
        c.execute_batch(&format!(
            "{} CREATE TABLE t (v BLOB);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 8000)
             INSERT INTO t SELECT randomblob(4096) FROM n;",
            crate::journal::SCHEMA
        ))
        .expect("rows");
        drop(c);
        let outdir = root.path().join("backups");
        std::fs::create_dir(&outdir).expect("dir");
        let out = outdir.join("copy.db");
        let mut child = std::process::Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "--exact",
                "db::tests::backup_child_for_the_kill_test",
                "--test-threads=1",
            ])
            .env(
                BACKUP_CHILD,
                format!("{}\n{}", src.display(), out.display()),
            )
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("child");
        // Killed as soon as it has begun to write: any file in the copy's directory.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let seen = std::fs::read_dir(&outdir).expect("dir").next().is_some();
            if seen {
                break;
            }
            if let Some(status) = child.try_wait().expect("child") {
                panic!("the backup ended ({status}) before it was seen writing");
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the backup wrote nothing in 60 s"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        child.kill().expect("kill");
        let status = child.wait().expect("reaped");
        assert!(!status.success(), "killed midway, not finished: {status}");
        if out.exists() {
            let copy = open_read_only(&out).expect("a copy under the name opens");
            quick_check(&copy, &out).expect("a copy under the name is whole");
            let n: i64 = copy
                .query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))
                .expect("a copy under the name holds the store's table");
            assert_eq!(n, 8000, "a copy under the name holds every row");
        }
    }

    /// A backup killed midway (the timer's time limit, Ctrl-C, power lost) left its hidden
    /// `.NAME.partial-PID-N` in the copies' directory for good, a whole store's worth of
    /// disk each, for the operator to find and remove by hand. A later backup there removes
    /// those of a process no longer running (their `-wal`/`-shm` with them), of any copy's
    /// name, and never one of a process that runs: another backup (here, this process) may
    /// be writing it right now. Names of another shape are left alone.
    #[test]
    fn a_backup_removes_the_partial_copies_of_backups_no_longer_running() {
        let root = tempfile::tempdir().expect("tempdir");
        let src = root.path().join("x.db");
        let c = open(&src, true).expect("store");
        c.execute_batch(crate::journal::SCHEMA).expect("schema");
        drop(c);
        let outdir = root.path().join("backups");
        std::fs::create_dir(&outdir).expect("dir");
        // A process that has ended, and been reaped: its PID names no process any more.
        let mut child = std::process::Command::new("true").spawn().expect("child");
        let dead = child.id();
        assert!(child.wait().expect("reaped").success());
        let me = std::process::id();
        let gone = [
            format!(".copy.db.partial-{dead}-0"),
            format!(".copy.db.partial-{dead}-0-wal"),
            format!(".copy.db.partial-{dead}-0-shm"),
            // An earlier run's, under another name (`--out-dir` names each run's anew).
            format!(".relay-20250101T030000.123Z.db.partial-{dead}-7"),
        ];
        let kept = [
            // This process's: a backup of it may be writing it.
            format!(".copy.db.partial-{me}-{}", u64::MAX),
            // Not a partial copy's name.
            format!("copy-{dead}.db"),
            format!("notes.partial-{dead}-0"),
            format!(".copy.db.partial-{dead}-x"),
            format!(".copy.db.partial-{dead}-0.bak"),
        ];
        if !Path::new("/proc/self").exists() {
            return; // no way to tell a process that ended here (section 6.2 of OPERATIONS)
        }
        for n in gone.iter().chain(&kept) {
            std::fs::write(outdir.join(n), b"left").expect("file");
        }
        backup(&src, &outdir.join("copy.db")).expect("backup");
        for n in &gone {
            assert!(
                !outdir.join(n).exists(),
                "{n}: a partial copy of a process no longer running is removed"
            );
        }
        for n in &kept {
            assert!(outdir.join(n).exists(), "{n}: kept");
        }
        assert!(outdir.join("copy.db").exists(), "the copy itself");
    }

    /// A backup still running whose PID names no process in this `/proc` (one in another PID
    /// namespace, a container, writing into a shared directory; one of another user, hidden
    /// by `ProtectProc=invisible`, as the packaged units run, say an operator's `sudo hotline
    /// backup` beside the timer's run) had its partial copy, and the `-wal` beside it,
    /// removed under it by the next backup there, which then failed or published nothing.
    /// A backup holds an exclusive lock on its partial copy while it writes, checks and
    /// names it, and one that is held is never removed, whatever `/proc` says.
    #[test]
    fn a_backup_never_removes_a_partial_copy_another_backup_holds() {
        let root = tempfile::tempdir().expect("tempdir");
        let src = root.path().join("x.db");
        let c = open(&src, true).expect("store");
        c.execute_batch(crate::journal::SCHEMA).expect("schema");
        drop(c);
        let outdir = root.path().join("backups");
        std::fs::create_dir(&outdir).expect("dir");
        if !Path::new("/proc/self").exists() {
            return; // nothing is removed where /proc cannot be read
        }
        // A PID this /proc does not show, as another namespace's would not be.
        let mut child = std::process::Command::new("true").spawn().expect("child");
        let unseen = child.id();
        assert!(child.wait().expect("reaped").success());
        // The live backup's copy, as it holds it.
        let live = outdir.join(format!(".copy.db.partial-{unseen}-0"));
        let wal = outdir.join(format!(".copy.db.partial-{unseen}-0-wal"));
        let held = std::fs::File::create(&live).expect("partial");
        held.lock().expect("locked");
        std::fs::write(&wal, b"wal").expect("wal");
        backup(&src, &outdir.join("copy.db")).expect("backup");
        assert!(live.exists(), "a partial copy its backup holds is kept");
        assert!(wal.exists(), "and the -wal beside it");
        // Once that backup has ended (its lock released with it), the next removes them.
        drop(held);
        backup(&src, &outdir.join("copy2.db")).expect("backup");
        assert!(!live.exists() && !wal.exists(), "removed once not held");
        // This version's backup holds its own copy until the copy has its name.
        let conn = open_read_only(&src).expect("source");
        let partial = outdir.join(".copy3.db.partial-1-1");
        let (_, own) = copy_into(&conn, &partial).expect("copied");
        let other = std::fs::File::open(&partial).expect("opened");
        assert!(
            matches!(other.try_lock(), Err(std::fs::TryLockError::WouldBlock)),
            "held while under its hidden name"
        );
        drop(own);
        other.try_lock().expect("released with the copy's handle");
    }

    /// A name that looks like a partial copy's but is no regular file (a FIFO, here) is
    /// neither opened nor removed: opening a FIFO to try its lock waits for a writer that
    /// never comes, and the backup hung there.
    #[test]
    fn a_backup_leaves_alone_what_is_no_regular_file() {
        let root = tempfile::tempdir().expect("tempdir");
        let src = root.path().join("x.db");
        let c = open(&src, true).expect("store");
        c.execute_batch(crate::journal::SCHEMA).expect("schema");
        drop(c);
        let outdir = root.path().join("backups");
        std::fs::create_dir(&outdir).expect("dir");
        let mut child = std::process::Command::new("true").spawn().expect("child");
        let dead = child.id();
        assert!(child.wait().expect("reaped").success());
        let fifo = outdir.join(format!(".copy.db.partial-{dead}-0"));
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        if !made.is_ok_and(|s| s.success()) {
            return; // no mkfifo here
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let out = outdir.join("copy.db");
        std::thread::spawn(move || {
            let _ = tx.send(backup(&src, &out).map(|_| ()));
        });
        rx.recv_timeout(std::time::Duration::from_secs(30))
            .expect("the backup ends")
            .expect("backup");
        assert!(std::fs::symlink_metadata(&fifo).is_ok(), "left alone");
    }

    /// A restore into the store's directory while a backup copies the store replaces the
    /// file the backup has open, which then copies the store set aside, and named it as the
    /// newest copy, "written from" the store now in place: the next restore from the newest
    /// copy would bring back the store just replaced. Such a copy is refused and removed.
    #[test]
    fn a_backup_beside_a_restore_is_refused_not_a_copy_of_the_store_replaced() {
        let root = tempfile::tempdir().expect("tempdir");
        let (copy, data) = killed_store_and_copy(root.path());
        let out = root.path().join("during.db");
        let r = backup_with(&data.join("x.db"), &out, || {
            let restored = restore(
                &copy,
                &data,
                "x.db",
                "x-replaced.db",
                |_, _| Ok(()),
                |_, _| Ok(()),
            )
            .expect("restored");
            drop(restored.claim);
        });
        match r {
            Err(StoreError::Replaced { path }) => assert_eq!(path, data.join("x.db")),
            Ok(_) => panic!(
                "a copy written, of rows {:?} where the store now holds {:?}",
                rows_seen(root.path(), "during.db"),
                rows_seen(&data, "x.db")
            ),
            Err(other) => panic!("expected the copy refused, got {other:?}"),
        }
        assert!(!out.exists(), "no copy under the name");
        let left: Vec<_> = std::fs::read_dir(root.path())
            .expect("dir")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(left.is_empty(), "nothing hidden left: {left:?}");
        assert_eq!(rows_seen(&data, "x.db"), Ok(vec![10]), "the restored store");
    }

    /// While a restore's marker is in the directory, the store there may be the one kept
    /// aside under a second name, or a copy not yet finished: a backup is refused, naming
    /// the marker, and writes nothing.
    #[test]
    fn a_backup_is_refused_while_a_restore_is_unfinished() {
        let root = tempfile::tempdir().expect("tempdir");
        let (_, data) = killed_store_and_copy(root.path());
        std::fs::write(data.join(RESTORE_MARKER), b"").expect("marker");
        let out = root.path().join("copy-2.db");
        match backup(&data.join("x.db"), &out) {
            Err(StoreError::RestoreUnfinished { path }) => {
                assert_eq!(path, data.join(RESTORE_MARKER))
            }
            other => panic!("expected the backup refused, got {other:?}"),
        }
        assert!(!out.exists(), "nothing written");
    }

    /// No store, but signs of one: a service does not create an empty store in its place.
    /// None: it does (a first start, a lost disk replaced).
    #[test]
    fn a_missing_store_is_not_created_anew_beside_signs_of_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(LOCK_FILE), b"").expect("lock");
        check_startable(dir.path(), "x.db").expect("a first start");
        for sign in [
            "x-replaced-20250101T000000.000Z.db",
            "x.db-wal",
            ".x.db.restoring",
            "x-20250101T030000.123Z.db",
        ] {
            let path = dir.path().join(sign);
            std::fs::write(&path, b"").expect("sign");
            match check_startable(dir.path(), "x.db") {
                Err(StoreError::StoreMissing { found, .. }) => {
                    assert_eq!(found, vec![path.clone()])
                }
                other => panic!("{sign}: {other:?}"),
            }
            std::fs::remove_file(&path).expect("removed");
        }
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
