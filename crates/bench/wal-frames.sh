#!/usr/bin/env bash
# Which pages the relay's commits write: runs `hotline-bench fanout37` at a fixed rate,
# traces the relay's store writer thread for one second (`strace` of its `pwrite64` calls),
# and prints, for message commits and for receipt commits, the WAL frames a commit writes,
# by table or index (page numbers from each frame's 24-byte header, mapped with SQLite's
# `dbstat` on the run's database). A transaction ends with the frame whose header gives the
# database's size after the commit (zero in every other frame): the writer's `fdatasync`
# runs on a thread of its own since the twenty-ninth round, so syncs no longer mark commits
# in the writer's trace. See docs/BENCHMARKS-ROUNDS.md, thirteenth and thirty-seventh rounds.
#
#   cargo build --release -p hotline-cli -p hotline-bench
#   crates/bench/wal-frames.sh                   # target/release/hotline, 500/s
#   HOTLINE=/tmp/A/hotline RATE=2000 crates/bench/wal-frames.sh
#
# Needs strace and python3 (whose sqlite3 module has `dbstat`, as Debian's does). strace
# slows the writer while it traces, so commits hold more items than untraced; compare
# builds with this script, not with untraced runs. Commits are told apart by size: at
# 500/s a message's own commit writes about 8 frames, a receipts' commit 20-30, and a
# sender's `ReceiptsStored` alone (the receipt queue and its index) 1-2.
set -euo pipefail
cd "$(dirname "$0")/../.."

HOTLINE=${HOTLINE:-target/release/hotline}
BENCH=${BENCH:-target/release/hotline-bench}
RATE=${RATE:-500}
for tool in strace python3 "$HOTLINE" "$BENCH"; do
    command -v "$tool" >/dev/null || { echo "wal-frames: $tool not found" >&2; exit 2; }
done
# The benchmark starts the relay in its own directory.
HOTLINE=$(realpath "$HOTLINE")

dir=$(mktemp -d)
bench_pid=
cleanup() {
    [[ -n "$bench_pid" ]] && kill "$bench_pid" 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT

"$BENCH" --hotline "$HOTLINE" --dir "$dir/run" fanout37 --rate "$RATE" --duration-s 8 \
    >"$dir/bench.log" 2>&1 &
bench_pid=$!

# The relay, then its writer thread (named hotline-store-w), once the load has settled.
relay=
for _ in $(seq 100); do
    relay=$(pgrep -f "relay --config $dir/run" | head -n1 || true)
    [[ -n "$relay" ]] && break
    sleep 0.1
done
[[ -n "$relay" ]] || { echo "wal-frames: the relay did not start" >&2; cat "$dir/bench.log" >&2; exit 1; }
sleep 4
writer=$(grep -l '^hotline-store-w$' /proc/"$relay"/task/*/comm | head -n1 | cut -d/ -f5)
[[ -n "$writer" ]] || { echo "wal-frames: no store writer thread in $relay" >&2; exit 1; }
timeout 1 strace -x -s 32 -p "$writer" -e trace=pwrite64 -o "$dir/trace" \
    2>/dev/null || true
wait "$bench_pid" || { echo "wal-frames: the benchmark failed" >&2; cat "$dir/bench.log" >&2; exit 1; }
bench_pid=
tail -n1 "$dir/bench.log"

python3 - "$dir/trace" "$dir"/run/*/relay-data/relay.db <<'PY'
import collections, re, sqlite3, sys

trace, db = sys.argv[1], sys.argv[2]
table_of = dict((p, n) for n, p in sqlite3.connect(db).execute("SELECT name, pageno FROM dbstat"))
commits, pages = [], []
for line in open(trace):
    # A frame's header: the page number (4 bytes), then the database's size in pages after
    # the commit for a transaction's last frame, zero for the others (4 bytes).
    m = re.search(r'pwrite64\(\d+, "((?:\\x[0-9a-f]{2}){8})[^"]*"\.*, 24, ', line)
    if m:
        head = bytes(int(h, 16) for h in re.findall(r"\\x([0-9a-f]{2})", m.group(1)))
        pages.append(int.from_bytes(head[:4], "big"))
        if int.from_bytes(head[4:8], "big") != 0:
            commits.append(pages)
            pages = []
kinds = {"message commits (3-14 frames)": [c for c in commits if 2 < len(c) < 15],
         "receipt commits (15 frames or more)": [c for c in commits if len(c) >= 15],
         "other commits (1-2 frames: senders' ReceiptsStored)": [c for c in commits if 0 < len(c) <= 2]}
for kind, cs in kinds.items():
    if not cs:
        print(f"{kind}: none")
        continue
    by = collections.Counter(table_of.get(p, "?") for c in cs for p in c)
    frames = sum(len(c) for c in cs) / len(cs)
    detail = ", ".join(f"{t} {n / len(cs):.2f}" for t, n in by.most_common())
    print(f"{kind}: {len(cs)}, {frames:.1f} frames each: {detail}")
PY
