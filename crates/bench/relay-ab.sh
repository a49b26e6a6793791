#!/usr/bin/env bash
# Runs one `hotline-bench` workload in pairs, alternating two `hotline` binaries as the relay
# (BEFORE, then AFTER), and prints each run's headline figures: the A/B method of
# docs/BENCHMARKS-ROUNDS.md (twelfth round on). Alternating within each pair spreads the
# machine's slow and quiet spells over both builds alike.
#
#   cargo build --release -p hotline-cli -p hotline-bench
#   cp target/release/hotline /tmp/hotline-after        # and a build of the other commit
#   crates/bench/relay-ab.sh 10 /tmp/hotline-before /tmp/hotline-after fanout37 --rate 500
#
# BENCH is the load generator (target/release/hotline-bench); RUN_TIMEOUT bounds each run in
# seconds (300). A run that hits it prints its label and nothing else, and the pairs go on.
set -euo pipefail
cd "$(dirname "$0")/../.."

BENCH=${BENCH:-target/release/hotline-bench}
RUN_TIMEOUT=${RUN_TIMEOUT:-300}
usage="usage: relay-ab.sh PAIRS BEFORE AFTER WORKLOAD [ARGS...]"
pairs=${1:?$usage}
before=${2:?$usage}
after=${3:?$usage}
shift 3
[ "$#" -gt 0 ] || { echo "relay-ab: name a hotline-bench workload" >&2; exit 2; }
for b in "$BENCH" "$before" "$after"; do
    [ -x "$b" ] || { echo "relay-ab: $b not found or not executable" >&2; exit 2; }
done

for _ in $(seq 1 "$pairs"); do
    for which in before after; do
        relay=$before
        [ "$which" = after ] && relay=$after
        line=$(timeout --kill-after=30 "$RUN_TIMEOUT" "$BENCH" --hotline "$relay" "$@" 2>&1 \
            | grep -E '^(fanout|p2p)' | tail -n 1 || true)
        brief=$(grep -oE 'accepted [0-9]+/s|(e2e|accept|all-37-receipts) ms p50/p99/max [0-9./]+|relay cpu [0-9]+% \([0-9]+ us/msg|commits [0-9]+ \([0-9.]+ items each, [0-9.]+ ms mean\)|syncs [0-9]+ \([0-9.]+ ms mean\)|check/wait/commit/fanout [0-9/]+|verify [0-9.]+us|fsync [0-9.]+ms' <<< "$line" | tr '\n' ' ' || true)
        echo "$(date -u +%T) $which: ${brief:-$line}"
    done
done
