//! Writing whole files: atomically (temporary file, fsync, rename, fsync of the directory),
//! or exclusively (refusing to replace an existing file).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// The directory holding `path`, as something `File::open` accepts.
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Makes a rename or a creation in `dir` durable. A no-op where directories cannot be
/// opened as files (Windows).
fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

fn open_options(mode: u32) -> OpenOptions {
    let mut o = OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    o
}

/// A temporary file's name beside `path`: hidden, and unique to this process and call.
fn temporary_beside(dir: &Path, path: &Path) -> io::Result<PathBuf> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path names no file"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(
        ".tmp.{}.{:016x}",
        std::process::id(),
        rand::random::<u64>()
    ));
    Ok(dir.join(tmp_name))
}

/// The writing process's id in `name` if it is that of a temporary file of
/// [`temporary_beside`] for the file named `target`: `.TARGET.tmp.PID.HEX16`, exactly.
fn temporary_of(name: &std::ffi::OsStr, target: &std::ffi::OsStr) -> Option<u32> {
    let name = name.to_str()?;
    let rest = name
        .strip_prefix('.')?
        .strip_prefix(target.to_str()?)?
        .strip_prefix(".tmp.")?;
    let (pid, random) = rest.split_once('.')?;
    let hex16 = random.len() == 16 && random.bytes().all(|b| b.is_ascii_hexdigit());
    let digits = !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit());
    (hex16 && digits).then(|| pid.parse().ok()).flatten()
}

/// Removes the temporary files that writes of `path` left beside it when a crash (or a
/// power cut) ended them between the temporary file's creation and its removal: each holds
/// what was being written, a secret key or an API token among them (mode 0600), under a
/// hidden name no one looks at, and would stay there for good, past a rotation of that
/// secret. One is taken for such a leftover once it is `TEMPORARY_FILE_STALE_MS` old (a
/// write takes milliseconds), or, where `/proc` tells, once the process that wrote it has
/// ended; a write still going on keeps its own. Best effort, as the removal after a write
/// is: what cannot be listed or removed stays. Returns how many were removed.
///
/// [`write_new`] and the atomic writes do this for their file first; a program that only
/// reads a file it once created (the node's API token) calls it at start-up.
pub fn remove_stale_temporaries(path: &Path) -> usize {
    let (Some(target), dir) = (path.file_name(), parent_dir(path)) else {
        return 0;
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let stale_after = std::time::Duration::from_millis(crate::limits::TEMPORARY_FILE_STALE_MS);
    let now = std::time::SystemTime::now();
    let mut removed = 0;
    for entry in entries.flatten() {
        let Some(pid) = temporary_of(&entry.file_name(), target) else {
            continue;
        };
        // Not followed: a link named as a temporary file is itself removed, never its target.
        let Ok(meta) = entry.metadata() else {
            continue;
        };
        let old = now
            .duration_since(meta.modified().unwrap_or(now))
            .is_ok_and(|age| age >= stale_after);
        if (old || writer_ended(pid)) && std::fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// Whether process `pid`, which wrote a temporary file, has surely ended: on Linux, where
/// `/proc` lists the live processes (if it is mounted), when it is not there and is not
/// this process. Elsewhere never: the file's age decides alone.
fn writer_ended(pid: u32) -> bool {
    cfg!(target_os = "linux")
        && pid != std::process::id()
        && Path::new("/proc/self").exists()
        && !Path::new(&format!("/proc/{pid}")).exists()
}

/// Writes `bytes` to the new file `tmp` (created with `mode`) and fsyncs it.
fn write_synced(tmp: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let mut f = open_options(mode).open(tmp)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Replaces `path` with `bytes` so that a crash leaves either the old or the new contents:
/// writes a temporary file in the same directory (created with `mode`), fsyncs it, renames
/// it over `path`, and fsyncs the directory.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    remove_stale_temporaries(path);
    let dir = parent_dir(path);
    let tmp = temporary_beside(dir, path)?;
    let result = (|| {
        write_synced(&tmp, bytes, mode)?;
        std::fs::rename(&tmp, path)?;
        sync_dir(dir)
    })();
    if result.is_err() {
        // Best effort: the temporary file may not exist if the open failed.
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Creates `path` with `bytes`, failing with `AlreadyExists` if it exists, so that a crash
/// leaves either no file or the whole of it under that name, never an empty or partial one
/// (a node's API token file left empty by a power cut would stop it at every start): writes
/// a temporary file in the same directory (created with `mode`), fsyncs it, links it as
/// `path` (a link, unlike a rename, refuses to replace a file created meanwhile by another
/// process), removes the temporary name, and fsyncs the directory.
pub fn write_new(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    remove_stale_temporaries(path);
    let dir = parent_dir(path);
    let tmp = temporary_beside(dir, path)?;
    let result = (|| {
        write_synced(&tmp, bytes, mode)?;
        std::fs::hard_link(&tmp, path)
    })();
    // Best effort: the temporary file may not exist if the open failed, and once linked it
    // is a second name of `path`, which a crash may leave behind (hidden, and holding
    // nothing that `path` does not).
    let _ = std::fs::remove_file(&tmp);
    result?;
    sync_dir(dir)
}

/// Opens `path` for reading without waiting for a writer: a named pipe (FIFO) is opened
/// non-blocking and then set back to blocking, so that one nothing writes to reads as empty
/// ([`read_bounded`] refuses it as a pipe) instead of waiting in `open` for ever (a node
/// whose configuration named one hung at start). A pipe something writes to (`<(gpg -d
/// KEY.gpg)`) is read as before, to its end. Every reader of this crate opens its files so;
/// so may a program that opens a file only to see whether it may (`hotline config check`).
pub fn open_for_read(path: &Path) -> io::Result<File> {
    let mut o = OpenOptions::new();
    o.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32);
    }
    let f = o.open(path)?;
    #[cfg(unix)]
    {
        let flags = rustix::fs::fcntl_getfl(&f)?;
        rustix::fs::fcntl_setfl(&f, flags - rustix::fs::OFlags::NONBLOCK)?;
    }
    Ok(f)
}

/// The error for a pipe that gave nothing to read: a named pipe (FIFO) nothing writes to,
/// or one whose writer wrote nothing (`<(gpg -d KEY.gpg)` when `gpg` failed). Which of
/// these it is cannot be told from here, so the message does not say that nothing writes.
fn an_idle_pipe() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        "is a pipe that gave nothing to read (a named pipe nothing writes to, or a command \
         that wrote nothing and ended), where a file belongs",
    )
}

/// Why a bounded read did not return the file's contents.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The file could not be opened or read.
    Io(io::Error),
    /// The file is longer than allowed.
    TooLarge { len: u64 },
}

/// The error for a directory opened where a file is to be read. On Linux a directory opens
/// like a file, and its size (4096 bytes or more) would otherwise be reported as a file's
/// size ("too large for a key file"), or its mode as a secret file's ("run `chmod 600`"),
/// neither of which is what is wrong.
pub(crate) fn a_directory() -> io::Error {
    io::Error::new(
        io::ErrorKind::IsADirectory,
        "is a directory, where a file belongs",
    )
}

/// Reads an open file completely, refusing one longer than `max` bytes before reading it,
/// and a directory ([`a_directory`]). The length is checked again while reading, in case
/// the file grows meanwhile.
pub(crate) fn read_bounded(mut f: File, max: usize) -> Result<Vec<u8>, ReadError> {
    let meta = f.metadata().map_err(ReadError::Io)?;
    if meta.is_dir() {
        return Err(ReadError::Io(a_directory()));
    }
    let len = meta.len();
    if len > max as u64 {
        return Err(ReadError::TooLarge { len });
    }
    // `len` fits in usize: it is at most `max`.
    let mut buf = Vec::with_capacity(len as usize);
    (&mut f)
        .take(max as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(ReadError::Io)?;
    if buf.len() > max {
        return Err(ReadError::TooLarge {
            len: buf.len() as u64,
        });
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if buf.is_empty() && meta.file_type().is_fifo() {
            return Err(ReadError::Io(an_idle_pipe()));
        }
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pipe whose writer wrote nothing and ended (`--key <(gpg -d KEY.gpg)`, `gpg`
    /// refused the passphrase) is refused as a pipe that gave nothing: it was called "a
    /// named pipe (FIFO) that nothing writes to", which sent the operator to look for a
    /// FIFO and not at the command that failed.
    #[cfg(unix)]
    #[test]
    fn a_pipe_whose_writer_wrote_nothing_is_not_said_to_have_no_writer() {
        use std::os::fd::AsRawFd as _;
        let (reader, writer) = std::io::pipe().expect("pipe");
        let path = PathBuf::from(format!("/dev/fd/{}", reader.as_raw_fd()));
        drop(writer);
        let f = open_for_read(&path).expect("opens");
        let e = match read_bounded(f, 1024) {
            Err(ReadError::Io(e)) => e.to_string(),
            other => panic!("{other:?}"),
        };
        assert!(e.contains("a pipe that gave nothing to read"), "{e}");
        assert!(
            !e.starts_with("is a named pipe (FIFO) that nothing writes to"),
            "{e}"
        );
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("f");
        write_atomic(&p, b"one", 0o644).expect("first write");
        write_atomic(&p, b"two", 0o644).expect("second write");
        assert_eq!(std::fs::read(&p).expect("read"), b"two");
        assert_eq!(std::fs::read_dir(dir.path()).expect("list").count(), 1);
    }

    #[test]
    fn exclusive_write_refuses_existing_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("f");
        write_new(&p, b"one", 0o600).expect("first write");
        let e = write_new(&p, b"two", 0o600).expect_err("second write must fail");
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&p).expect("read"), b"one");
        // Neither write left its temporary file.
        assert_eq!(std::fs::read_dir(dir.path()).expect("list").count(), 1);
    }

    /// A temporary file named as ours, beside `target` in `dir`, written `age` ago by
    /// process `pid`, holding `secret`.
    fn leftover(dir: &Path, target: &str, pid: u32, age: std::time::Duration) -> PathBuf {
        let p = dir.join(format!(".{target}.tmp.{pid}.0123456789abcdef"));
        std::fs::write(&p, b"secret").expect("write leftover");
        let then = std::time::SystemTime::now() - age;
        File::options()
            .write(true)
            .open(&p)
            .and_then(|f| f.set_modified(then))
            .expect("age leftover");
        p
    }

    /// A crash between a temporary file's creation and its removal leaves it (mode 0600,
    /// a secret inside): the next write of that file removes it, whether it replaces the
    /// file or creates it, and leaves alone what is not such a leftover: a temporary file
    /// of a write that may still be going on (this process's, and new), another file's,
    /// and a name that only looks like one.
    #[test]
    fn a_write_removes_the_temporary_files_a_crash_left_beside_its_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let old = std::time::Duration::from_millis(crate::limits::TEMPORARY_FILE_STALE_MS * 2);
        let new = std::time::Duration::ZERO;
        for (i, write) in [
            write_new as fn(&Path, &[u8], u32) -> io::Result<()>,
            write_atomic,
        ]
        .into_iter()
        .enumerate()
        {
            let target = format!("f{i}");
            let stale = leftover(d, &target, 4_000_000_000, old);
            let live = leftover(d, &target, std::process::id(), new);
            let other = leftover(d, "g", 4_000_000_000, old);
            let lookalike = d.join(format!(".{target}.tmp.notes"));
            std::fs::write(&lookalike, b"mine").expect("write");
            // Where `/proc` tells that its writer has ended, a new one is a leftover too.
            let orphan = leftover(d, &format!("{target}o"), 4_000_000_000, new);
            write(&d.join(&target), b"token", 0o600).expect("write");
            write(&d.join(format!("{target}o")), b"token", 0o600).expect("write");
            assert!(!stale.exists(), "{} left behind", stale.display());
            if cfg!(target_os = "linux") && Path::new("/proc/self").exists() {
                assert!(!orphan.exists(), "{} left behind", orphan.display());
            }
            for kept in [&live, &other, &lookalike] {
                assert!(kept.exists(), "{} removed", kept.display());
            }
            assert_eq!(std::fs::read(d.join(&target)).expect("read"), b"token");
        }
    }

    /// A directory is refused as one, not by its size: read with a limit below it (a
    /// key file's 256 bytes) or above it (a configuration's megabyte).
    #[test]
    fn bounded_read_refuses_a_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        for max in [256, 1024 * 1024] {
            let f = File::open(dir.path()).expect("a directory opens");
            match read_bounded(f, max) {
                Err(ReadError::Io(e)) => {
                    assert_eq!(e.kind(), io::ErrorKind::IsADirectory, "{e}");
                    assert!(e.to_string().contains("is a directory"), "{e}");
                }
                Err(ReadError::TooLarge { len }) => panic!("refused as {len} bytes too large"),
                Ok(_) => panic!("a directory was read as a file"),
            }
        }
    }

    #[test]
    fn bounded_read_refuses_large_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("f");
        std::fs::write(&p, [0u8; 100]).expect("write");
        let f = File::open(&p).expect("open");
        assert!(matches!(
            read_bounded(f, 99),
            Err(ReadError::TooLarge { len: 100 })
        ));
        let f = File::open(&p).expect("open");
        assert_eq!(read_bounded(f, 100).expect("fits").len(), 100);
    }
}
