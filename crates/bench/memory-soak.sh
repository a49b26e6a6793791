#!/usr/bin/env bash
# Whether the relay's memory stops growing under sustained traffic: runs one long paced
# `hotline-bench fanout37` (200 messages/s for 1200 s by default: 240,000 messages, 8.9
# million deliveries), finds the relay it starts, and samples the relay every INTERVAL
# seconds into a CSV: its resident memory (VmRSS, RssAnon, VmHWM from /proc/PID/status),
# threads, open descriptors, CPU seconds, the store's size on disk (relay.db and
# relay.db-wal) and, from its metrics endpoint on loopback, messages accepted, connections
# and messages queued. Rows also mark the first and last second of traffic (polled every
# second). At the end it prints RSS at the start of traffic, after 5 minutes and at the end,
# the least-squares slope of VmRSS and RssAnon (kB/min) over each third of the traffic, and
# the relay log's WARN and ERROR lines.
#
#   cargo build --release -p hotline-cli -p hotline-bench
#   crates/bench/memory-soak.sh                       # 200/s for 1200 s, a temporary dir
#   crates/bench/memory-soak.sh 500 1800 /tmp/soak    # RATE DURATION_S DIR
#   BENCH=/tmp/bin/hotline-bench HOTLINE=/tmp/bin/hotline CSV=/tmp/soak.csv \
#       crates/bench/memory-soak.sh
#
# RATE, DURATION_S and DIR are the arguments, or the environment; DIR is the bench's --dir
# (relay data, relay.log, and bench.out, the bench's own output): a temporary one is removed
# at the end unless KEEP=1, one given is kept. CSV is where the samples go
# (${TMPDIR:-/tmp}/memory-soak.csv); INTERVAL is the sampling period (30 s). The bench
# stops the relay as soon as the traffic has drained (`run_traffic` in lib.rs), so there
# is no idle spell after the traffic to sample; the relay's idle memory is `hotline-bench
# idle`'s figure. Everything the script started (the bench, and the relay if the bench
# dies without stopping it) is stopped by PID on exit or Ctrl-C. The store grows by about
# 8.5 kB a message (the messages, their receipts and the audit journal are kept): about
# 2 GB at the defaults.
#
# First run (200/s for 1800 s: 360,000 messages, a 3.1 GB store): VmRSS 18 MB at the start
# of traffic, 39 MB after three minutes, while the store writer's cache of recent messages
# filled (`HeldCache`, HELD_CACHE_MESSAGES = 32,768: a hash table of 65,536 88-byte buckets,
# 5.7 MB, and each message's boxed recipient list); then 0-11 kB/min, until the table,
# full of tombstones at about 306,000 messages, doubled once (+5.7 MB; VmHWM 51 MB while
# both copies lived); 45 MB at the end. At 5 messages/s the cache alone takes 109 minutes
# to fill, so a shorter soak at that rate sees the relay grow throughout.
set -euo pipefail
cd "$(dirname "$0")/../.."

RATE=${1:-${RATE:-200}}
DURATION_S=${2:-${DURATION_S:-1200}}
DIR=${3:-${DIR:-}}
BENCH=${BENCH:-target/release/hotline-bench}
HOTLINE=${HOTLINE:-target/release/hotline}
INTERVAL=${INTERVAL:-30}
CSV=${CSV:-${TMPDIR:-/tmp}/memory-soak.csv}
KEEP=${KEEP:-}
for tool in curl awk pgrep "$BENCH" "$HOTLINE"; do
    command -v "$tool" >/dev/null || { echo "memory-soak: $tool not found" >&2; exit 2; }
done
# The bench runs the relay from the run's own directory.
HOTLINE=$(realpath "$HOTLINE")

temp_dir=
if [[ -z "$DIR" ]]; then
    DIR=$(mktemp -d "${TMPDIR:-/tmp}/memory-soak.XXXXXX")
    temp_dir=$DIR
fi
mkdir -p "$DIR"
DIR=$(realpath "$DIR")

bench_pid=
relay_pid=
# Stops a process of ours if it is still the one we started (its command line names DIR).
stop_pid() {
    local pid=$1
    [[ -n "$pid" ]] || return 0
    grep -qF "$DIR" "/proc/$pid/cmdline" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
}
cleanup() {
    trap - EXIT INT TERM
    # The bench first: killed, it does not stop its relay, so the relay is stopped after.
    stop_pid "$bench_pid"
    stop_pid "$relay_pid"
    if [[ -n "$temp_dir" && -z "$KEEP" ]]; then
        rm -rf "$temp_dir"
    fi
}
trap cleanup EXIT
trap 'echo "memory-soak: interrupted" >&2; exit 130' INT TERM

echo "memory-soak: fanout37 at $RATE/s for $DURATION_S s in $DIR; samples to $CSV"
echo "memory-soak: started $(date -u +%FT%TZ)"
"$BENCH" --hotline "$HOTLINE" fanout37 --rate "$RATE" --duration-s "$DURATION_S" \
    --dir "$DIR" >"$DIR/bench.out" 2>&1 &
bench_pid=$!

for _ in $(seq 600); do
    relay_pid=$(pgrep -P "$bench_pid" -f 'relay --config' | head -n1 || true)
    [[ -n "$relay_pid" ]] && break
    kill -0 "$bench_pid" 2>/dev/null || break
    sleep 0.1
done
if [[ -z "$relay_pid" ]]; then
    echo "memory-soak: the relay did not start" >&2
    cat "$DIR/bench.out" >&2
    exit 1
fi
run=$(dirname "$(tr '\0' '\n' <"/proc/$relay_pid/cmdline" | sed -n '/^--config$/{n;p;}')")
data="$run/relay-data"
metrics=
for _ in $(seq 100); do
    metrics=$(grep -o 'metrics on http://[0-9.:]*' "$run/relay.log" 2>/dev/null \
        | head -n1 | sed 's#.*http://##' || true)
    [[ -n "$metrics" ]] && break
    sleep 0.1
done
[[ -n "$metrics" ]] || echo "memory-soak: no metrics address in the relay log: no message counts, and the relay's whole life counts as traffic" >&2
echo "memory-soak: relay pid $relay_pid, run $run, metrics ${metrics:-none}"

tick=$(getconf CLK_TCK)
now_ms() { echo $((${EPOCHREALTIME/./} / 1000)); }
size() { stat -c %s "$1" 2>/dev/null || echo 0; }
# One reading of the relay: the CSV's columns after the times and phase; fails if the relay
# has gone.
sample() {
    local status mem fds cpu m=,, db wal
    status=$(cat "/proc/$relay_pid/status" 2>/dev/null) || return 1
    # A zombie (ended, not yet reaped by the bench) has no memory lines.
    [[ "$status" == *VmRSS:* ]] || return 1
    mem=$(awk '/^VmRSS:/ {r=$2} /^RssAnon:/ {a=$2} /^VmHWM:/ {h=$2} /^Threads:/ {t=$2}
        END {print r "," a "," h "," t}' <<<"$status")
    fds=$(find "/proc/$relay_pid/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
    cpu=$(awk -v tick="$tick" '{sub(/.*\) /, ""); printf "%.1f", ($12 + $13) / tick}' \
        "/proc/$relay_pid/stat" 2>/dev/null) || return 1
    if [[ -n "$metrics" ]]; then
        m=$({ curl -s --max-time 2 "http://$metrics/metrics" 2>/dev/null || true; } | awk '
            /^hotline_relay_messages_accepted_total / {a=$2}
            /^hotline_relay_connections / {c=$2}
            /^hotline_relay_queue_depth[{ ]/ {q+=$2}
            END {if (a != "") print a "," c "," q+0; else print ",,"}')
    fi
    db=$(size "$data/relay.db")
    wal=$(size "$data/relay.db-wal")
    echo "$mem,$fds,$cpu,$db,$wal,$((db + wal)),$m"
}

header=t_s,traffic_s,phase,vmrss_kb,rssanon_kb,vmhwm_kb,threads,fds,cpu_s,db_bytes,wal_bytes,store_bytes,accepted,connections,queued
echo "$header" >"$CSV"
t_relay=$(now_ms)
t_traffic=
next=0
prev=
prev_phase=
prev_written=
last_phase=setup
while kill -0 "$relay_pid" 2>/dev/null; do
    t=$(now_ms)
    if ! cols=$(sample); then
        break
    fi
    # setup: up, no message accepted yet; traffic: messages accepted, clients connected;
    # stopping: the clients gone, or the metrics no longer answering (the relay stops next).
    acc=$(cut -d, -f10 <<<"$cols")
    con=$(cut -d, -f11 <<<"$cols")
    if [[ -z "$metrics" ]]; then
        phase=traffic
    elif [[ -z "$acc" ]]; then
        phase=setup
        [[ -n "$t_traffic" ]] && phase=stopping
    elif [[ "$acc" == 0 ]]; then
        phase=setup
    elif [[ "$con" != 0 ]]; then
        phase=traffic
    else
        phase=stopping
    fi
    if [[ "$phase" != setup && -z "$t_traffic" ]]; then
        t_traffic=$t
        next=0
    fi
    ts=$(awk -v t="$t" -v r="$t_relay" 'BEGIN {printf "%.1f", (t - r) / 1000}')
    tr=
    [[ -n "$t_traffic" ]] && tr=$(awk -v t="$t" -v s="$t_traffic" 'BEGIN {printf "%.1f", (t - s) / 1000}')
    row="$ts,$tr,$phase,$cols"
    since=$((t - ${t_traffic:-$t_relay}))
    due=
    if ((since >= next)); then
        due=1
        next=$((next + INTERVAL * 1000))
    fi
    # At a change of phase, the last reading of the old one and the first of the new.
    if [[ -n "$prev_phase" && "$phase" != "$prev_phase" ]]; then
        [[ -z "$prev_written" ]] && echo "$prev" >>"$CSV"
        due=1
    fi
    if [[ -n "$due" ]]; then
        echo "$row" >>"$CSV"
        prev_written=1
    else
        prev_written=
    fi
    prev=$row
    prev_phase=$phase
    last_phase=$phase
    sleep 1
done
# The last reading before the relay went.
[[ -n "$prev" && -z "$prev_written" ]] && echo "$prev" >>"$CSV"

bench_status=0
wait "$bench_pid" || bench_status=$?
bench_pid=
echo "memory-soak: ended $(date -u +%FT%TZ); the relay ended in phase $last_phase"
if ((bench_status != 0)); then
    echo "memory-soak: the bench failed ($bench_status):" >&2
    tail -n 20 "$DIR/bench.out" >&2
fi
grep -E '^fanout' "$DIR/bench.out" || true

# RSS at the start, after 5 minutes and at the end of the traffic, and the slope of a
# least-squares line through each third of it.
awk -F, -v dur="$DURATION_S" '
    NR == 1 || $3 != "traffic" {next}
    {n++; ts[n] = $2 + 0; rss[n] = $4; anon[n] = $5; hwm = $6; store = $12; acc = $13
     thr = $7; fd = $8
     if (n > 1 && rss[n] - rss[n - 1] > step) {step = rss[n] - rss[n - 1]; step_at = ts[n]}}
    n == 1 {printf "traffic start: VmRSS %d kB, RssAnon %d kB (t=%ss)\n", $4, $5, $2}
    !five && $2 + 0 >= 300 {five = 1; printf "after 5 min:   VmRSS %d kB, RssAnon %d kB (t=%ss)\n", $4, $5, $2}
    function slope(lo, hi, v,   i, k, sx, sy, sxx, sxy, x) {
        k = 0; sx = sy = sxx = sxy = 0
        for (i = 1; i <= n; i++) if (ts[i] >= lo && ts[i] <= hi) {
            x = ts[i] / 60; k++; sx += x; sy += v[i]; sxx += x * x; sxy += x * v[i]
        }
        if (k < 3 || k * sxx == sx * sx) return "n/a"
        return sprintf("%+.1f", (k * sxy - sx * sy) / (k * sxx - sx * sx))
    }
    END {
        if (n == 0) {print "no traffic sampled"; exit}
        printf "traffic end:   VmRSS %d kB, RssAnon %d kB (t=%ss), VmHWM %d kB\n", rss[n], anon[n], ts[n], hwm
        printf "end: %d threads, %d descriptors, store %.1f MB, %s messages accepted\n", thr, fd, store / 1e6, acc
        # A slope can come from one step (a table doubling) rather than steady growth.
        printf "largest step between two samples: VmRSS %+d kB, at t=%ss\n", step, step_at
        third = ts[n] / 3
        for (p = 0; p < 3; p++)
            printf "slope, third %d (%.0f-%.0f s): VmRSS %s kB/min, RssAnon %s kB/min\n", p + 1,
                p * third, (p + 1) * third, slope(p * third, (p + 1) * third, rss), slope(p * third, (p + 1) * third, anon)
    }' "$CSV"
echo "relay log: $(grep -c ' WARN ' "$run/relay.log" || true) WARN, $(grep -c ' ERROR ' "$run/relay.log" || true) ERROR lines"
grep -E ' (WARN|ERROR) ' "$run/relay.log" | cut -c1-300 | sort -k3 | uniq -c -f2 | head -n 20 || true
echo "the bench stops the relay when the traffic has drained: no idle spell after it was sampled"
