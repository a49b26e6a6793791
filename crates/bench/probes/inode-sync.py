#!/usr/bin/env python3
"""What an `fdatasync` costs when the file's times changed since the last one, on this disk.

The thirty-seventh round's probe (docs/BENCHMARKS-ROUNDS.md), run by hand from the repository:

  crates/bench/probes/inode-sync.py          # 8 KiB a write
  crates/bench/probes/inode-sync.py 45056    # a commit's worth (11 pages)

On Linux 6.13 and later a file whose change time was read (`stat`) gets a fine-grained time
at its next write; otherwise it gets the coarse clock's, which moves once a tick (4 ms at
HZ=250), so that most writes within a tick leave the times, and the inode, as they were. On
ext4 without a journal, `fdatasync` writes the inode's block as a request of its own, before
the disk's flush, whenever the inode changed. Three ways, taken in turn, so that each sees
the same disk:

  stat-before  the write follows a `stat` of the file: the time changes, the inode is written
  no-stat      the write follows none: the time mostly stays, the inode mostly is not written
  sfr+flush    `sync_file_range` of the written bytes, then `fdatasync` of another, clean
               file for the flush (what durability needs of an overwrite, and no inode)

Prints p50, p90 and p99 in microseconds for each; ROUNDS (2000) of the three, 0.7 ms apart.
The files go in DIR (/var/tmp) and are removed at the end. Check the inode writes with
`perf record -e block:block_rq_issue -a` (requests marked `WSM`).
"""
import ctypes
import os
import sys
import time

ROUNDS = int(os.environ.get("ROUNDS", "2000"))
DIR = os.environ.get("DIR", "/var/tmp")
SIZE = 8 << 20
SYNC_FILE_RANGE_ALL = 1 | 2 | 4  # wait before, write, wait after


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 8192
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    path = os.path.join(DIR, f"inode-sync-{os.getpid()}.bin")
    clean = path + ".clean"
    try:
        with open(path, "wb") as f:
            f.write(b"\0" * SIZE)
            f.flush()
            os.fsync(f.fileno())
        with open(clean, "wb") as f:
            f.write(b"x")
            f.flush()
            os.fsync(f.fileno())
        fd = os.open(path, os.O_RDWR)
        cfd = os.open(clean, os.O_RDWR)
        buf = os.urandom(n)
        ways = ("stat-before", "no-stat", "sfr+flush")
        took = {w: [] for w in ways}
        at = 0
        for i in range(ROUNDS * len(ways)):
            way = ways[i % len(ways)]
            t = time.perf_counter()
            os.pwrite(fd, buf, at)
            if way == "sfr+flush":
                if libc.sync_file_range(fd, at, n, SYNC_FILE_RANGE_ALL) != 0:
                    sys.exit(f"sync_file_range: {os.strerror(ctypes.get_errno())}")
                os.fdatasync(cfd)
            else:
                os.fdatasync(fd)
            took[way].append(time.perf_counter() - t)
            if way == "sfr+flush":
                # The next write is the stat-before way's.
                os.fstat(fd)
            at = (at + n) % (SIZE - n)
            time.sleep(0.0007)
        for way in ways:
            t = sorted(took[way])
            q = lambda p: t[min(len(t) - 1, int(len(t) * p))] * 1e6
            print(f"{way:12s} n {len(t)}  p50 {q(0.5):6.1f}  p90 {q(0.9):6.1f}  p99 {q(0.99):7.1f} us")
    finally:
        for p in (path, clean):
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass


if __name__ == "__main__":
    main()
