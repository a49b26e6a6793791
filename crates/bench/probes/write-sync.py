#!/usr/bin/env python3
"""Two ways of writing the same bytes before one sync, alternated and paced, on this disk.

The sixteenth round's probes (docs/BENCHMARKS-ROUNDS.md), run by hand from the repository:

  crates/bench/probes/write-sync.py gather   # 12 records of 1,150 B: 12 pwrites, or one
  crates/bench/probes/write-sync.py sync     # 8 WAL-shaped frames, then fsync or fdatasync

`gather` is the load generator's group log at fanout37 500/s (a group of about a dozen
batches of one delivery); `sync` is the relay's SQLite commit (a 24-byte frame header and a
4 KiB page a frame, then the sync SQLite calls, `fsync`, against `fdatasync`). Both write
into a file written in full when it is created, so every write overwrites blocks the file
has, as SQLite's reused WAL and the group log do. Prints p50, mean, p90 and p99 in
microseconds for each way (and the write phase's p50); PAIRS (1500) alternating pairs, 2 ms
apart. The file goes in DIR (/var/tmp) and is removed at the end.
"""
import os
import statistics
import sys
import time

PAIRS = int(os.environ.get("PAIRS", "1500"))
DIR = os.environ.get("DIR", "/var/tmp")
SIZE = 32 << 20


def main():
    what = sys.argv[1] if len(sys.argv) > 1 else ""
    if what not in ("gather", "sync"):
        sys.exit("usage: write-sync.py gather|sync")
    path = os.path.join(DIR, f"write-sync-{os.getpid()}")
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
    try:
        zeros = b"\0" * (1 << 20)
        for _ in range(SIZE >> 20):
            os.write(fd, zeros)
        os.fsync(fd)
        at = 0

        def put(buf):
            nonlocal at
            os.pwrite(fd, buf, at)
            at = (at + len(buf)) % (SIZE - (1 << 20))

        record, header, page = b"r" * 1150, b"h" * 24, b"p" * 4096

        def twelve_writes():
            for _ in range(12):
                put(record)

        def one_write():
            put(record * 12)

        def frames():
            for _ in range(8):
                put(header)
                put(page)

        # Each way: what it writes, then how it syncs.
        if what == "gather":
            ways = {
                "12 pwrites": (twelve_writes, os.fdatasync),
                "1 pwrite": (one_write, os.fdatasync),
            }
        else:
            ways = {"fsync": (frames, os.fsync), "fdatasync": (frames, os.fdatasync)}
        writes = {name: [] for name in ways}
        totals = {name: [] for name in ways}
        for _ in range(PAIRS):
            for name, (write, sync) in ways.items():
                time.sleep(0.002)
                t0 = time.perf_counter()
                write()
                t1 = time.perf_counter()
                sync(fd)
                t2 = time.perf_counter()
                writes[name].append((t1 - t0) * 1e6)
                totals[name].append((t2 - t0) * 1e6)
        for name in ways:
            t = totals[name]
            q = statistics.quantiles(t, n=100)
            print(f"{what} {name}: write us p50 {statistics.median(writes[name]):.0f} | "
                  f"write and sync us p50 {statistics.median(t):.0f} mean {statistics.mean(t):.0f} "
                  f"p90 {q[89]:.0f} p99 {q[98]:.0f} (n {len(t)})")
    finally:
        os.close(fd)
        os.unlink(path)


if __name__ == "__main__":
    main()
