//! A disk that loses, at a power cut, everything written to it since its last flush: for
//! tests of what a process promised was durable.
//!
//! A kill -9 keeps the page cache, so it cannot show a write that was answered before it
//! was synced; and this machine has no device-mapper (`dm-flakey`, `dm-log-writes`). So the
//! disk is built from what it has:
//!
//! - a FUSE filesystem, served by a thread of the test, holding one file, `disk.img`. A
//!   write to it is kept in memory ("pending", by 4 KiB block) until an `fsync` of the file
//!   writes every pending block to the backing file. [`PowerCutDisk::cut`] drops the pending
//!   blocks and fails every later request with `EIO`: the power is off;
//! - a loop device on `disk.img`, so that a real ext4 sits on top: a flush of the block
//!   device (a journal commit, or an `fsync`/`fdatasync` of a file on it) reaches the loop
//!   driver as an `fsync` of `disk.img`;
//! - that ext4, mounted where the process under test keeps its data.
//!
//! After a cut, [`PowerCutDisk::power_on`] lets go of the file system and brings the disk
//! back, under a new loop device, from the backing file alone, which holds exactly what was
//! flushed: ext4 replays its journal at mount, as after a real power loss. The FUSE
//! filesystem stays up for the disk's life; a handle opened before the cut stays dead. What a synced write promised is there; what was
//! only written may not be.
//!
//! The model is the strictest simple one: nothing unflushed survives, where a real disk may
//! keep any part of it. Reads see pending blocks, as a disk's cache serves them.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, INodeNo, LockOwner, OpenFlags,
    ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyWrite, Request,
    WriteFlags,
};

/// The unit in which unflushed writes are kept.
const BLOCK: u64 = 4096;
/// The one file's inode.
const IMAGE: INodeNo = INodeNo(2);
/// The one file's name.
const IMAGE_NAME: &str = "disk.img";
/// How long the kernel may cache the attributes (they never change).
const TTL: Duration = Duration::from_secs(3600);

/// What the disk holds: the backing file (what was flushed) and the pending blocks.
struct Disk {
    backing: std::fs::File,
    size: u64,
    pending: BTreeMap<u64, Vec<u8>>,
    off: bool,
    /// Power cycles so far: a file handle opened in an earlier one (by a loop device from
    /// before the cut) stays dead, like a device from before a power loss.
    generation: u64,
    flushes: u64,
    /// A cut armed to happen at a write: how many more writes until it does.
    armed: Option<u32>,
    /// Told of the cut.
    cut: tokio::sync::watch::Sender<Option<Cut>>,
}

impl Disk {
    /// Whether a request on handle `fh` may touch the disk.
    fn live(&self, fh: FileHandle) -> bool {
        !self.off && fh.0 == self.generation
    }

    /// Block `b` as a reader sees it: pending, or flushed (zeros past what was written).
    fn block(&self, b: u64) -> std::io::Result<Vec<u8>> {
        if let Some(p) = self.pending.get(&b) {
            return Ok(p.clone());
        }
        let mut buf = vec![0u8; BLOCK as usize];
        let mut read = 0;
        while read < buf.len() {
            match self
                .backing
                .read_at(&mut buf[read..], b * BLOCK + read as u64)?
            {
                0 => break,
                n => read += n,
            }
        }
        Ok(buf)
    }

    fn read(&self, offset: u64, size: u32) -> std::io::Result<Vec<u8>> {
        let end = (offset + u64::from(size)).min(self.size);
        let mut out = Vec::with_capacity(size as usize);
        let mut pos = offset;
        while pos < end {
            let b = pos / BLOCK;
            let block = self.block(b)?;
            let (from, to) = (
                (pos - b * BLOCK) as usize,
                (end - b * BLOCK).min(BLOCK) as usize,
            );
            out.extend_from_slice(&block[from..to]);
            pos = b * BLOCK + to as u64;
        }
        Ok(out)
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        let end = offset + data.len() as u64;
        let mut pos = offset;
        while pos < end {
            let b = pos / BLOCK;
            let mut block = self.block(b)?;
            let (from, to) = (
                (pos - b * BLOCK) as usize,
                (end - b * BLOCK).min(BLOCK) as usize,
            );
            let at = (pos - offset) as usize;
            block[from..to].copy_from_slice(&data[at..at + (to - from)]);
            self.pending.insert(b, block);
            pos = b * BLOCK + to as u64;
        }
        Ok(())
    }

    /// The power goes off: the pending blocks are lost, and the test told.
    fn power_off(&mut self) -> Cut {
        self.off = true;
        self.armed = None;
        let cut = Cut {
            at_write: true,
            blocks_lost: std::mem::take(&mut self.pending).len(),
            flushes: self.flushes,
        };
        self.cut.send_replace(Some(cut));
        cut
    }

    fn flush(&mut self) -> std::io::Result<()> {
        for (b, block) in std::mem::take(&mut self.pending) {
            self.backing.write_all_at(&block, b * BLOCK)?;
        }
        self.flushes += 1;
        Ok(())
    }
}

/// The FUSE side: the disk, shared with the test.
#[derive(Clone)]
struct ImageFs(Arc<Mutex<Disk>>);

impl ImageFs {
    fn disk(&self) -> MutexGuard<'_, Disk> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn attr(ino: INodeNo, size: u64) -> FileAttr {
    let dir = ino == INodeNo::ROOT;
    FileAttr {
        ino,
        size,
        blocks: size.div_ceil(512),
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind: if dir {
            FileType::Directory
        } else {
            FileType::RegularFile
        },
        perm: if dir { 0o700 } else { 0o600 },
        nlink: if dir { 2 } else { 1 },
        uid: 0,
        gid: 0,
        rdev: 0,
        flags: 0,
        blksize: BLOCK as u32,
    }
}

fn eio(e: &std::io::Error) -> Errno {
    eprintln!("power-cut disk: backing file: {e}");
    Errno::EIO
}

impl Filesystem for ImageFs {
    fn lookup(&self, _: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if parent == INodeNo::ROOT && name == IMAGE_NAME {
            let size = self.disk().size;
            reply.entry(&TTL, &attr(IMAGE, size), fuser::Generation(0));
        } else {
            reply.error(Errno::ENOENT);
        }
    }

    fn getattr(&self, _: &Request, ino: INodeNo, _: Option<FileHandle>, reply: ReplyAttr) {
        match ino {
            INodeNo::ROOT => reply.attr(&TTL, &attr(ino, 0)),
            IMAGE => reply.attr(&TTL, &attr(ino, self.disk().size)),
            _ => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _: &Request, _: INodeNo, _: OpenFlags, reply: ReplyOpen) {
        // Direct I/O: every write reaches this side at once, with no page cache between.
        reply.opened(
            FileHandle(self.disk().generation),
            FopenFlags::FOPEN_DIRECT_IO,
        );
    }

    fn read(
        &self,
        _: &Request,
        _: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _: OpenFlags,
        _: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let disk = self.disk();
        if !disk.live(fh) {
            return reply.error(Errno::EIO);
        }
        match disk.read(offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(eio(&e)),
        }
    }

    fn write(
        &self,
        _: &Request,
        _: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _: WriteFlags,
        _: OpenFlags,
        _: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut disk = self.disk();
        if !disk.live(fh) {
            return reply.error(Errno::EIO);
        }
        if offset + data.len() as u64 > disk.size {
            return reply.error(Errno::ENOSPC);
        }
        if let Err(e) = disk.write(offset, data) {
            return reply.error(eio(&e));
        }
        match disk.armed {
            // The power goes in the middle of this write (its block is lost with the rest).
            Some(n) if n <= 1 => {
                disk.power_off();
                reply.error(Errno::EIO);
            }
            Some(n) => {
                disk.armed = Some(n - 1);
                reply.written(data.len() as u32);
            }
            None => reply.written(data.len() as u32),
        }
    }

    fn flush(&self, _: &Request, _: INodeNo, _: FileHandle, _: LockOwner, reply: ReplyEmpty) {
        // `close`, not a sync: nothing becomes durable.
        reply.ok();
    }

    fn fsync(&self, _: &Request, _: INodeNo, fh: FileHandle, _: bool, reply: ReplyEmpty) {
        let mut disk = self.disk();
        if !disk.live(fh) {
            return reply.error(Errno::EIO);
        }
        match disk.flush() {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(eio(&e)),
        }
    }

    fn readdir(
        &self,
        _: &Request,
        ino: INodeNo,
        _: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        if ino != INodeNo::ROOT {
            return reply.error(Errno::ENOENT);
        }
        let entries = [
            (INodeNo::ROOT, FileType::Directory, "."),
            (INodeNo::ROOT, FileType::Directory, ".."),
            (IMAGE, FileType::RegularFile, IMAGE_NAME),
        ];
        for (i, (ino, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            if reply.add(ino, (i + 1) as u64, kind, name) {
                break;
            }
        }
        reply.ok();
    }
}

/// What a cut dropped.
#[derive(Debug, Clone, Copy)]
pub struct Cut {
    /// It came in the middle of a write (as asked), not after waiting in vain for one.
    pub at_write: bool,
    /// Blocks written since the last flush, and lost.
    pub blocks_lost: usize,
    /// Flushes since the disk was (last) powered on.
    pub flushes: u64,
}

/// An ext4 file system at `mount_at`, on a disk that a test can cut the power of.
pub struct PowerCutDisk {
    backing: PathBuf,
    fuse_dir: PathBuf,
    mount_at: PathBuf,
    size: u64,
    /// While powered: the FUSE session, the disk it serves, the loop device.
    on: Option<(fuser::BackgroundSession, ImageFs, String)>,
    /// Told of a cut while powered.
    cut: tokio::sync::watch::Receiver<Option<Cut>>,
}

/// Runs `cmd`, failing with its standard error.
fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

impl PowerCutDisk {
    /// A new disk of `size` bytes in `work` (a directory of its own), formatted ext4 and
    /// mounted at `mount_at` (created). None, having said why, where this machine cannot:
    /// it needs root, `/dev/fuse`, loop devices and `mkfs.ext4`.
    pub fn create(work: &Path, mount_at: &Path, size: u64) -> anyhow::Result<Option<Self>> {
        let uid = run(Command::new("id").arg("-u")).unwrap_or_default();
        if uid != "0" {
            println!("SKIPPED: a power-cut disk needs root (loop devices, mounts)");
            return Ok(None);
        }
        for need in ["/dev/fuse", "/dev/loop-control"] {
            if !Path::new(need).exists() {
                println!("SKIPPED: a power-cut disk needs {need}");
                return Ok(None);
            }
        }
        if run(Command::new("mkfs.ext4").arg("-V")).is_err() {
            println!("SKIPPED: a power-cut disk needs mkfs.ext4 (e2fsprogs)");
            return Ok(None);
        }
        let backing = work.join("backing.img");
        std::fs::File::create(&backing)?.set_len(size)?;
        let fuse_dir = work.join("fuse");
        std::fs::create_dir_all(&fuse_dir)?;
        std::fs::create_dir_all(mount_at)?;
        let mut disk = Self {
            backing,
            fuse_dir,
            mount_at: mount_at.to_owned(),
            size,
            on: None,
            cut: tokio::sync::watch::channel(None).1,
        };
        disk.attach()?;
        let dev = disk.device()?;
        run(Command::new("mkfs.ext4").args(["-q", "-F", &dev]))?;
        run(Command::new("mount").arg(&dev).arg(&disk.mount_at))?;
        Ok(Some(disk))
    }

    /// The loop device, while powered.
    fn device(&self) -> anyhow::Result<String> {
        match &self.on {
            Some((_, _, dev)) => Ok(dev.clone()),
            None => bail!("the power-cut disk is off"),
        }
    }

    /// Serves the backing file over FUSE and puts a loop device on it.
    fn attach(&mut self) -> anyhow::Result<()> {
        let backing = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.backing)?;
        let (cut, told) = tokio::sync::watch::channel(None);
        let fs = ImageFs(Arc::new(Mutex::new(Disk {
            backing,
            size: self.size,
            pending: BTreeMap::new(),
            off: false,
            generation: 0,
            flushes: 0,
            armed: None,
            cut,
        })));
        self.cut = told;
        let mut config = fuser::Config::default();
        config
            .mount_options
            .push(fuser::MountOption::FSName("hotline-powercut".into()));
        let session = fuser::spawn_mount(fs.clone(), &self.fuse_dir, &config)
            .with_context(|| format!("mounting FUSE at {}", self.fuse_dir.display()))?;
        let image = self.fuse_dir.join(IMAGE_NAME);
        let dev = match run(Command::new("losetup").args(["-f", "--show"]).arg(&image)) {
            Ok(dev) => dev,
            Err(e) => {
                drop(session);
                return Err(e);
            }
        };
        self.on = Some((session, fs, dev));
        Ok(())
    }

    /// Arms a cut of the power in the middle of the `nth` write from now (1: the next),
    /// without waiting for it (a test then sets going what writes, and waits with
    /// [`PowerCutDisk::armed_cut`]). That write fails, as everything after it: what was
    /// written since the last flush is gone, that write with it.
    pub fn arm(&self, nth: u32) -> anyhow::Result<()> {
        let Some((_, fs, _)) = &self.on else {
            bail!("the power-cut disk is already off");
        };
        fs.disk().armed = Some(nth.max(1));
        Ok(())
    }

    /// Waits for the cut [`PowerCutDisk::arm`] armed. If fewer than its `nth` writes come
    /// within `within` (whoever writes has nothing more to do), cuts the power then.
    pub async fn armed_cut(&self, within: Duration) -> anyhow::Result<Cut> {
        let Some((_, fs, _)) = &self.on else {
            bail!("the power-cut disk is already off");
        };
        let mut told = self.cut.clone();
        let waited = tokio::time::timeout(within, told.wait_for(Option::is_some))
            .await
            .map(|r| r.map(|cut| *cut));
        match waited {
            Ok(Ok(cut)) => cut.context("told of a cut"),
            Ok(Err(_)) => bail!("the power-cut disk went away"),
            Err(_) => {
                let mut disk = fs.disk();
                // Unless the write came just now.
                if let Some(cut) = *disk.cut.borrow() {
                    return Ok(cut);
                }
                let mut cut = disk.power_off();
                cut.at_write = false;
                Ok(cut)
            }
        }
    }

    /// After a [`PowerCutDisk::armed_cut`] and once the processes using the disk have
    /// ended: the file system and its loop device are let go of, and the disk comes back
    /// from what was flushed, under a new loop device (with no cache of its own from before
    /// the cut); ext4 recovers from its journal at mount.
    ///
    /// Nothing waits for the old file system to go: it is detached lazily (a killed
    /// process's child may hold it until it executes its program; see
    /// `hotline_store::CLAIM_WAIT`), and its loop device's handle on the disk belongs to the
    /// power cycle before, so whatever it still writes fails.
    pub fn power_on(&mut self) -> anyhow::Result<()> {
        let Some((_, fs, dev)) = &mut self.on else {
            bail!("the power-cut disk is not attached");
        };
        run(Command::new("umount").arg("-l").arg(&self.mount_at))
            .context("unmounting the file system after the power cut")?;
        // Detached when the file system has gone, if it is still there.
        run(Command::new("losetup").args(["-d", dev.as_str()]))
            .context("detaching the loop device after the power cut")?;
        {
            let mut disk = fs.disk();
            disk.generation += 1;
            disk.off = false;
            disk.pending.clear();
            disk.armed = None;
            disk.cut.send_replace(None);
        }
        *dev = run(Command::new("losetup")
            .args(["-f", "--show"])
            .arg(self.fuse_dir.join(IMAGE_NAME)))?;
        run(Command::new("mount").arg(dev.as_str()).arg(&self.mount_at))
            .context("mounting the file system after the power cut")?;
        Ok(())
    }
}

impl Drop for PowerCutDisk {
    /// Detaches the file system, the loop device and the FUSE filesystem lazily (what a
    /// failed test left on them keeps them until it ends), then ends the FUSE session.
    fn drop(&mut self) {
        let Some((session, _, dev)) = self.on.take() else {
            return;
        };
        for (what, cmd) in [
            (
                "file system",
                Command::new("umount").arg("-l").arg(&self.mount_at),
            ),
            ("loop device", Command::new("losetup").args(["-d", &dev])),
            (
                "FUSE filesystem",
                Command::new("umount").arg("-l").arg(&self.fuse_dir),
            ),
        ] {
            if let Err(e) = run(cmd) {
                eprintln!("power-cut disk: {what}: {e:#}");
            }
        }
        drop(session);
    }
}
