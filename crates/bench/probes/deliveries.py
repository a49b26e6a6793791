#!/usr/bin/env python3
"""Where a traffic run's tail comes from, from `hotline-bench … --deliveries FILE`.

    target/release/hotline-bench fanout37 --rate 500 --deliveries d.csv
    crates/bench/probes/deliveries.py d.csv [more.csv ...]

For each file: the end-to-end percentiles split at the recipient's read (as the report
line prints them), the deliveries over OVER_MS (2 ms, the issue's p99 target), and how
many of those fall in a *stall window*: a stretch in which some delivery waited more than
STALL_MS (3 ms) either to be read or, once read, to be durable, together with the messages
sent up to 15 ms before it ended (they queued behind it). For the slow deliveries outside
such windows it prints the median of each half. Per message, it prints how the first of
its recipients' reads and the spread to its median recipient's read vary (p10/p50/p90):
the first read's p10 is the path's best case in that run, near a lone recipient's. And the
first read's median for the messages sent while the message before was still being made
durable somewhere (its last delivery durable after this send), against the others'. With
WINDOWS=1 it also prints, for every 100 ms of sending, the median and 99th percentile of
the messages sent in it.

Columns of the file: message,recipient,sent_us,read_us,durable_us (sent after the run's
start; read and durable after the send). No dependencies beyond Python 3.
"""
import bisect
import collections
import math
import os
import sys

OVER_US = int(float(os.environ.get("OVER_MS", "2")) * 1000)
STALL_US = int(float(os.environ.get("STALL_MS", "3")) * 1000)
QUEUED_BEHIND_US = 15_000


def rank(sorted_values, q):
    """Nearest rank, as hotline-bench's percentiles."""
    if not sorted_values:
        return 0
    i = max(1, min(len(sorted_values), math.ceil(q * len(sorted_values))))
    return sorted_values[i - 1]


def load(path):
    by_message = collections.defaultdict(list)
    with open(path) as f:
        header = f.readline().strip()
        if header != "message,recipient,sent_us,read_us,durable_us":
            sys.exit(f"{path}: not a --deliveries file (header {header!r})")
        for line in f:
            m, _who, sent, read, durable = line.strip().split(",")
            by_message[int(m)].append((int(sent), int(read), int(durable)))
    return by_message


def ms(us):
    return f"{us / 1000:.2f}"


def report(path):
    by_message = load(path)
    rows = [(m, *d) for m, ds in by_message.items() for d in ds]
    n = len(rows)
    if n == 0:
        print(f"{path}: no deliveries")
        return
    e2e = sorted(r[3] for r in rows)
    read = sorted(r[2] for r in rows)
    held = sorted(r[3] - r[2] for r in rows)
    first_of = {m: min(d[1] for d in ds) for m, ds in by_message.items()}
    first = sorted(first_of.values())
    print(
        f"{path}: {n} deliveries of {len(by_message)} messages; e2e p50/p99 "
        f"{ms(rank(e2e, .5))}/{ms(rank(e2e, .99))} ms = read {ms(rank(read, .5))}/"
        f"{ms(rank(read, .99))} (first read {ms(rank(first, .5))}/{ms(rank(first, .99))})"
        f" + read to durable {ms(rank(held, .5))}/{ms(rank(held, .99))}"
    )
    spread = []
    for m, ds in by_message.items():
        reads = sorted(d[1] for d in ds)
        spread.append(reads[(len(reads) - 1) // 2] - first_of[m])
    spread.sort()

    def p10_50_90(v):
        return "/".join(ms(rank(v, q)) for q in (0.1, 0.5, 0.9))

    print(
        f"  per message, p10/p50/p90: first read {p10_50_90(first)} ms; "
        f"median recipient's read after the first {p10_50_90(spread)} ms"
    )
    sent_at = {m: ds[0][0] for m, ds in by_message.items()}
    overlapped, alone = [], []
    for m, first_read in first_of.items():
        before = by_message.get(m - 1)
        if before and sent_at[m - 1] + max(d[2] for d in before) > sent_at[m]:
            overlapped.append(first_read)
        else:
            alone.append(first_read)
    overlapped.sort()
    alone.sort()
    print(
        f"  first read p50 of messages sent while the one before was not yet durable "
        f"everywhere: {ms(rank(overlapped, .5))} ms ({len(overlapped)}); the others "
        f"{ms(rank(alone, .5))} ms ({len(alone)})"
    )
    # Stall windows, on the run's clock: [start, end] of each long wait.
    stalls = []
    for ds in by_message.values():
        for sent, rd, dur in ds:
            if rd > STALL_US:
                stalls.append((sent, sent + rd))
            if dur - rd > STALL_US:
                stalls.append((sent + rd, sent + dur))
    # Merged into disjoint windows, each widened by the time queued behind it, so that a
    # send is looked up by bisection (at maximum rate nearly every delivery is a stall).
    windows = []
    for a, b in sorted(stalls):
        a -= QUEUED_BEHIND_US
        if windows and a <= windows[-1][1]:
            windows[-1][1] = max(windows[-1][1], b)
        else:
            windows.append([a, b])
    starts = [w[0] for w in windows]

    def in_stall(sent):
        i = bisect.bisect_right(starts, sent) - 1
        return i >= 0 and sent <= windows[i][1]

    over = [(m, s, rd, dur) for m, s, rd, dur in rows if dur > OVER_US]
    stalled = [o for o in over if in_stall(o[1])]
    print(
        f"  over {ms(OVER_US)} ms: {len(over)} ({100 * len(over) / n:.2f} %); in stall "
        f"windows (a wait over {ms(STALL_US)} ms): {len(stalled)}, of "
        f"{len({o[0] for o in stalled})} messages"
    )
    rest = [o for o in over if not in_stall(o[1])]
    if rest:
        r = sorted(o[2] for o in rest)
        h = sorted(o[3] - o[2] for o in rest)
        print(
            f"  the others: read p50 {ms(rank(r, .5))} ms, read to durable p50 "
            f"{ms(rank(h, .5))} ms"
        )
    if os.environ.get("WINDOWS") == "1":
        per_100ms = collections.defaultdict(list)
        for _m, s, _rd, dur in rows:
            per_100ms[s // 100_000].append(dur)
        cells = []
        for k in sorted(per_100ms):
            v = sorted(per_100ms[k])
            cells.append(f"{k * 100:6d}:{ms(rank(v, .5))}/{ms(rank(v, .99))}")
        for i in range(0, len(cells), 8):
            print("   " + " ".join(cells[i : i + 8]))


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    for path in sys.argv[1:]:
        report(path)


if __name__ == "__main__":
    main()
