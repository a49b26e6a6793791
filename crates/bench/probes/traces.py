#!/usr/bin/env python3
"""Reads the two kernel traces of docs/BENCHMARKS-ROUNDS.md, thirty-eighth round.

    perf record -k CLOCK_MONOTONIC -e block:block_rq_issue -e block:block_rq_complete -a -o blk.perf -- sleep 6 &
    target/release/hotline-bench fanout37 --rate 500 --duration-s 4
    perf script -i blk.perf -F comm,pid,time,event,trace > blk.txt
    crates/bench/probes/traces.py block blk.txt [FROM TO]

pairs each completed request with its issue (by sector and length; the latest issue of
that extent) and prints the longest requests, then compares, in 10 ms stretches between
FROM and TO (monotonic seconds, as the trace prints them; default: all), the longest
request of the other threads where the relay's checkpointer wrote and where it did not.

    perf record -k CLOCK_MONOTONIC -e sched:sched_switch -a -o sched.perf -- sleep 13 &
    target/release/hotline-bench fanout37 --rate 500
    perf script -i sched.perf -F cpu,time,trace > sched.txt
    crates/bench/probes/traces.py sched sched.txt [MIN_MS]

prints every stretch of at least MIN_MS (3) in which one task held a CPU, idle included
(`swapper`), and every wait in state D (uninterruptible: the disk) of at least MIN_MS,
from the switch out in D to the task's next switch in (or its next switch out, where the
trace lacks the switch in).
"""
import collections
import re
import sys

BLOCK = re.compile(
    r"^\s*(\S.*?)\s+(\d+)\s+([\d.]+):\s+block:(block_rq_\w+):\s+\d+,\d+\s+(\S+)\s+"
    r"(?:\d+\s+)?\(\)\s+(\d+)\s+\+\s+(\d+)"
)
SWITCH = re.compile(
    r"\[(\d+)\]\s+([\d.]+): prev_comm=(.*?) prev_pid=(\d+) .*?prev_state=(\S+) ==> "
    r"next_comm=(.*?) next_pid=(\d+)"
)
CHECKPOINTER = "hotline-checkpo"


def matched(path, find):
    """The groups of each line of `path` that `find` (a pattern's search or match) takes."""
    with open(path) as f:
        for line in f:
            m = find(line)
            if m:
                yield m.groups()


def block(path, lo=None, hi=None):
    issued = {}
    requests = []  # (issued at, latency s, comm, rwbs, sectors)
    for comm, _pid, t, event, rwbs, sector, n in matched(path, BLOCK.search):
        key = (sector, n)
        if event == "block_rq_issue":
            issued[key] = (float(t), comm.split("/")[0], rwbs)
        elif key in issued:
            t0, c, r = issued.pop(key)
            requests.append((t0, float(t) - t0, c, r, int(n)))
    if not requests:
        sys.exit(f"{path}: no paired block requests")
    print(f"{len(requests)} requests; the longest:")
    for t0, d, c, r, n in sorted(requests, key=lambda x: -x[1])[:10]:
        print(f"  {d * 1e3:6.2f} ms at {t0:.4f} {c} {r} {n} sectors")
    stretches = collections.defaultdict(list)
    for t0, d, c, _r, n in requests:
        if (lo is None or t0 >= lo) and (hi is None or t0 <= hi):
            stretches[int(t0 * 100)].append((d, c, n))
    groups = {True: [], False: []}
    for reqs in stretches.values():
        others = [d for d, c, _n in reqs if c not in (CHECKPOINTER, "kworker")]
        if others:
            wrote = any(c == CHECKPOINTER for _d, c, _n in reqs)
            groups[wrote].append(max(others))
    for wrote, longest in groups.items():
        if not longest:
            continue
        longest.sort()
        pick = lambda q: longest[min(len(longest) - 1, int(q * len(longest)))] * 1e3
        print(
            f"10 ms stretches {'with' if wrote else 'without'} checkpoint writes: "
            f"{len(longest)}; the others' longest request p50 {pick(.5):.2f} ms, "
            f"p90 {pick(.9):.2f} ms, at most {longest[-1] * 1e3:.2f} ms"
        )


def sched(path, min_ms=3.0):
    running = {}  # cpu -> (since, comm)
    blocked = {}  # pid -> (since, comm)
    held, waits = [], []
    for cpu, t, prev, prev_pid, state, nxt, next_pid in matched(path, SWITCH.match):
        t = float(t)
        if cpu in running:
            since, comm = running[cpu]
            if (t - since) * 1e3 >= min_ms:
                held.append((since, cpu, comm, t - since))
        running[cpu] = (t, nxt)
        # A task switched in, or switched out again without a recorded switch in, ends
        # its wait.
        for pid in (next_pid, prev_pid):
            if pid in blocked:
                since, comm = blocked.pop(pid)
                if (t - since) * 1e3 >= min_ms:
                    waits.append((since, comm, t - since))
        if state.startswith("D"):
            blocked[prev_pid] = (t, prev)
    print(f"a CPU held for {min_ms} ms or more:")
    for since, cpu, comm, d in sorted(held):
        print(f"  {since:.4f} cpu{cpu} {comm:<20} {d * 1e3:7.2f} ms")
    print(f"waits in state D of {min_ms} ms or more:")
    for since, comm, d in sorted(waits):
        print(f"  {since:.4f} {comm:<20} {d * 1e3:7.2f} ms")


def main():
    if len(sys.argv) < 3 or sys.argv[1] not in ("block", "sched"):
        sys.exit(__doc__)
    if sys.argv[1] == "block":
        span = [float(x) for x in sys.argv[3:5]]
        block(sys.argv[2], *span)
    else:
        sched(sys.argv[2], *(float(x) for x in sys.argv[3:4]))


if __name__ == "__main__":
    main()
