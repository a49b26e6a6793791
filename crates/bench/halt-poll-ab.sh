#!/usr/bin/env bash
# Runs one `hotline-bench` workload in pairs, the guest's halt polling off then on, and
# prints each run's headline figures. On a KVM guest idling with `cpuidle-haltpoll` (the
# benchmark machine, a Firecracker guest booted with `haltpoll.guest_halt_poll_ns=0`), an
# idle vCPU halts at once, and every thread woken onto it waits for the host to run the vCPU
# again. See docs/BENCHMARKS-ROUNDS.md, fifteenth round, and docs/OPERATIONS.md, "Latency on
# virtual machines".
#
#   cargo build --release -p hotline-cli -p hotline-bench
#   crates/bench/halt-poll-ab.sh 3 fanout37 --rate 500      # 3 pairs
#   ON=100000 SHRINK=N crates/bench/halt-poll-ab.sh 3 floor --rate 500
#   crates/bench/halt-poll-ab.sh 3 skeleton --transport quic --shape thread
#
# Needs root (it writes /sys/module/haltpoll/parameters/); it puts back the settings it
# found when it exits, however it exits. ON is the polling limit of the second run of each
# pair in nanoseconds (200000); SHRINK=N keeps the governor from halving the polling window
# after each idle spell longer than the limit (the kernel's default, Y, does). RUN_TIMEOUT
# bounds each benchmark run in seconds (600; `all` needs more); a run that hits it prints
# nothing and the pairs go on.
set -euo pipefail
cd "$(dirname "$0")/../.."

BENCH=${BENCH:-target/release/hotline-bench}
ON=${ON:-200000}
RUN_TIMEOUT=${RUN_TIMEOUT:-600}
SHRINK=${SHRINK:-}
params=/sys/module/haltpoll/parameters
pairs=${1:?usage: halt-poll-ab.sh PAIRS WORKLOAD [ARGS...]}
shift
[ "$#" -gt 0 ] || { echo "halt-poll-ab: name a hotline-bench workload" >&2; exit 2; }
[ -x "$BENCH" ] || { echo "halt-poll-ab: $BENCH not found (build it first)" >&2; exit 2; }
driver=$(cat /sys/devices/system/cpu/cpuidle/current_driver 2>/dev/null || true)
[ "$driver" = haltpoll ] || {
    echo "halt-poll-ab: this machine does not idle with cpuidle-haltpoll (driver: ${driver:-none})" >&2
    exit 2
}
[ -w "$params/guest_halt_poll_ns" ] || { echo "halt-poll-ab: needs root" >&2; exit 2; }

was_ns=$(cat "$params/guest_halt_poll_ns")
was_shrink=$(cat "$params/guest_halt_poll_allow_shrink")
restore() {
    echo "$was_ns" > "$params/guest_halt_poll_ns"
    echo "$was_shrink" > "$params/guest_halt_poll_allow_shrink"
}
trap restore EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
if [ -n "$SHRINK" ]; then
    echo "$SHRINK" > "$params/guest_halt_poll_allow_shrink"
fi

for _ in $(seq 1 "$pairs"); do
    for ns in 0 "$ON"; do
        echo "$ns" > "$params/guest_halt_poll_ns"
        line=$(timeout --kill-after=30 "$RUN_TIMEOUT" "$BENCH" "$@" 2>&1 | grep -E '^(fanout|p2p|floor|skeleton)' | tail -n 1 || true)
        # The figures worth comparing; the full line is one run away.
        brief=$(grep -oE 'accepted [0-9]+/s|(e2e|accept) ms p50/p99/max [0-9./]+|relay cpu [0-9]+% \([0-9]+ us/msg|sleeps/msg [0-9.]+|(sync|recipients. sync \(end to end\)|relay.s commit \(accepted\)) (ms p50/p99/max )?[0-9./]+|verify [0-9.]+us|fsync [0-9.]+ms' <<< "$line" | tr '\n' ' ' || true)
        echo "$(date -u +%T) halt-poll ${ns}ns: ${brief:-$line}"
    done
done
