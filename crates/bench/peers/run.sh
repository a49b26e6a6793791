#!/usr/bin/env bash
# The fanout37 workload (1 publisher, 37 durable subscribers, 1 KiB payloads) against
# mosquitto (MQTT QoS 1), NATS JetStream and Redis Streams, each configured for the strongest
# durability it offers, then against the CICA Hotline relay (hotline-bench), all in one run;
# prints one table with ratios. See "Peers, side by side" in docs/BENCHMARKS.md.
#
#   crates/bench/peers/run.sh              # max rate (windows 64 and 1024) and 500/s, 10 s each
#   RUNS=max64 DURATION=5 crates/bench/peers/run.sh
#
# Environment:
#   DURATION   seconds of load per run (10)
#   RUNS       space-separated runs: maxN = maximum rate with a window of N messages not yet
#              durable at all 37 subscribers (hotline-bench runs twice: window until all 37
#              receipts are back, and until durable at all 37 as for the peers);
#              a number = that many messages per second ("max64 max1024 500", the windows
#              and rate hotline-bench's `all` uses)
#   NO_BUILD=1 use the binaries already built
#   NATS_FROM_DEBIAN13=0  do not fetch nats-server 2.10 from Debian 13 when the installed
#              one is older than 2.10 (no `sync_interval: always`)
#   OUT        directory for the JSON reports and logs (default: a temporary one, removed)
#   MAX_TOTAL_S  the whole script stops itself after this many seconds (1800)
#
# Everything listens on 127.0.0.1 only. Every server this script starts is recorded by PID
# and stopped by that PID when the script exits, however it exits.
set -euo pipefail

# Bounded in time: the whole script runs under `timeout`; on expiry the script gets SIGTERM
# and its exit trap stops every server it started.
MAX_TOTAL_S=${MAX_TOTAL_S:-1800}
if [[ -z "${PEERS_RUN_BOUNDED:-}" ]]; then
  exec timeout --foreground --kill-after=300 "$MAX_TOTAL_S" env PEERS_RUN_BOUNDED=1 bash "$0" "$@"
fi

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../../.." && pwd)
DURATION=${DURATION:-10}
RUNS=${RUNS:-"max64 max1024 500"}
for m in $RUNS; do [[ $m =~ ^(max[0-9]+|[0-9]+(\.[0-9]+)?)$ ]] || { echo "RUNS: '$m' is neither maxN nor a rate" >&2; exit 2; }; done
mode_args() { if [[ $1 == max* ]]; then echo "--window ${1#max}"; else echo "--rate $1"; fi; }
NATS_FROM_DEBIAN13=${NATS_FROM_DEBIAN13:-1}
RUN_TIMEOUT=$(( ${DURATION%.*} + 120 ))

WORK=$(mktemp -d "${TMPDIR:-/tmp}/hotline-peers.XXXXXX")
if [[ -n "${OUT:-}" ]]; then mkdir -p "$OUT"; RESULTS=$(cd "$OUT" && pwd); else RESULTS=$WORK/results; mkdir -p "$RESULTS"; fi

PIDS=()       # every process this script started, stopped by PID on exit

log() { printf '== %s\n' "$*" >&2; }

stop_pid() { # stops PID and its descendants (e.g. timeout → hotline-bench → relay), each by PID
  local pid=$1 c i
  kill -0 "$pid" 2>/dev/null || return 0
  for c in $(pgrep -P "$pid" 2>/dev/null || true); do stop_pid "$c"; done
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
}

cleanup() {
  local rc=$?
  set +e
  for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null; done
  if [[ -z "${OUT:-}" ]]; then rm -rf "$WORK"; else log "reports and logs kept in $RESULTS (servers' data in $WORK removed)"; rm -rf "$WORK"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

as_root() { if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi; }

# --- 1. Packages (Debian) -------------------------------------------------------------------
missing=()
[[ -x /usr/sbin/mosquitto ]] || missing+=(mosquitto)
command -v redis-server >/dev/null || missing+=(redis-server)
[[ -x /usr/sbin/nats-server ]] || missing+=(nats-server)
if (( ${#missing[@]} )); then
  log "installing ${missing[*]} from Debian"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # The packages' own services are not wanted: this script runs its own instances.
  if command -v systemctl >/dev/null && [[ -d /run/systemd/system ]]; then
    as_root systemctl stop mosquitto redis-server nats-server 2>/dev/null || true
  fi
fi

MOSQUITTO=/usr/sbin/mosquitto
REDIS=$(command -v redis-server)
NATS=/usr/sbin/nats-server
MOSQ_VER=$( ("$MOSQUITTO" -h 2>/dev/null || true) | sed -n 's/^mosquitto version \([^ ]*\).*/\1/p' | head -1)
REDIS_VER=$( ("$REDIS" --version || true) | sed -n 's/.* v=\([^ ]*\).*/\1/p')
NATS_VER=$("$NATS" --version | sed 's/^nats-server: v//')

ver_ge() { [[ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -1)" == "$2" ]]; }

# JetStream's `sync_interval: always` (fsync before every publish acknowledgement) needs
# nats-server 2.10. Debian 12 ships 2.9; Debian 13 ships 2.10. Fetch that one package from
# Debian's archive with apt, into this run's directory only (nothing is installed): its own
# apt state, the archive's signing keys, and a binary that needs only libc.
NATS_SYNC=""
if ver_ge "$NATS_VER" 2.10.0; then
  NATS_SYNC=$NATS
elif [[ "$NATS_FROM_DEBIAN13" == 1 ]]; then
  log "nats-server $NATS_VER has no sync_interval; fetching nats-server from Debian 13 (trixie) into $WORK"
  A=$WORK/apt; mkdir -p "$A/lists/partial" "$A/cache/archives/partial" "$A/deb"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main" > "$A/sources.list"
  AO=(-o "Dir::Etc::SourceList=$A/sources.list" -o Dir::Etc::SourceParts=/dev/null
      -o "Dir::State::Lists=$A/lists" -o "Dir::Cache=$A/cache" -o APT::Sandbox::User=root)
  if timeout 300 apt-get "${AO[@]}" update -qq >"$A/update.log" 2>&1 \
     && (cd "$A/deb" && timeout 300 apt-get "${AO[@]}" download nats-server >"$A/download.log" 2>&1); then
    dpkg-deb -x "$A"/deb/nats-server_*.deb "$A/root"
    if "$A/root/usr/sbin/nats-server" --version >/dev/null 2>&1; then
      NATS_SYNC=$A/root/usr/sbin/nats-server
    fi
  fi
  [[ -n "$NATS_SYNC" ]] || log "could not get nats-server >= 2.10 from Debian 13; JetStream runs only with Debian 12's $NATS_VER"
fi
NATS_SYNC_VER=""; [[ -n "$NATS_SYNC" ]] && NATS_SYNC_VER=$("$NATS_SYNC" --version | sed 's/^nats-server: v//')

# --- 2. Build -------------------------------------------------------------------------------
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
PEERS_TARGET=$HERE/target
if [[ "${NO_BUILD:-0}" != 1 ]]; then
  log "building peers-bench (its own workspace: $HERE)"
  (cd "$HERE" && CARGO_TARGET_DIR=$PEERS_TARGET cargo build --release --locked -q)
  log "building hotline-bench and hotline (main workspace)"
  (cd "$ROOT" && cargo build --release -q -p hotline-bench -p hotline-cli)
fi
PB=$PEERS_TARGET/release/peers-bench
HB=$TARGET/release/hotline-bench
[[ -x "$PB" && -x "$HB" && -x "$TARGET/release/hotline" ]] || { log "binaries missing: build first (or unset NO_BUILD)"; exit 1; }

# --- 3. Servers -----------------------------------------------------------------------------
SERVER_PID=""
start_server() { # name port cmd... ; sets SERVER_PID
  local name=$1 port=$2; shift 2
  "$@" >"$RESULTS/$name.log" 2>&1 &
  SERVER_PID=$!
  PIDS+=("$SERVER_PID")
  if ! "$PB" wait-port "$port" --timeout-s 20; then
    log "$name did not start; its log:"; tail -20 "$RESULTS/$name.log" >&2; return 1
  fi
}

stop_server() { stop_pid "$1"; wait "$1" 2>/dev/null || true; }

run_peer() { # name system label guarantee note port rate
  local name=$1 system=$2 label=$3 guarantee=$4 note=$5 port=$6 rate=$7 args
  read -ra args <<<"$(mode_args "$rate")"
  log "$label fanout37 rate=$rate (load $(cut -d' ' -f1-3 /proc/loadavg))"
  mkdir -p "$WORK/clients-$name-$rate"
  # In the background and waited for, so that a signal reaches the exit trap at once.
  local pid rc=0
  timeout "$RUN_TIMEOUT" "$PB" run "$system" --port "$port" --label "$label" --guarantee "$guarantee" --note "$note" \
    --server-pid "$SERVER_PID" --duration-s "$DURATION" --dir "$WORK/clients-$name-$rate" --json "${args[@]}" \
    >"$RESULTS/$name-$rate.json" &
  pid=$!; PIDS+=("$pid")
  wait "$pid" || rc=$?
  (( rc == 0 )) || log "$label at $rate failed (exit $rc)"
  rm -rf "$WORK/clients-$name-$rate"
}

# mosquitto: QoS 1 and persistence. Mosquitto keeps its state in memory and writes the whole
# database (fsync'd temp file, then rename) at autosave points; it never fsyncs per message.
# The strongest setting, autosave_on_changes with autosave_interval 1, saves after each pass
# of its event loop in which anything changed, which is after it sent that pass's PUBACKs.
mosquitto_run() { # variant rate
  local variant=$1 rate=$2 d=$WORK/mosquitto-$1-$2 port label guarantee note
  mkdir -p "$d"; port=$("$PB" free-port)
  {
    echo "listener $port 127.0.0.1"
    echo "allow_anonymous true"
    echo "user $(id -un)"
    echo "persistence true"
    echo "persistence_location $d/"
    echo "max_inflight_messages 1000"
    echo "max_queued_messages 1000000"
    echo "log_dest stderr"
    echo "log_type error"
    echo "log_type warning"
    if [[ $variant == every-change ]]; then
      echo "autosave_on_changes true"; echo "autosave_interval 1"
    fi
  } >"$d/mosquitto.conf"
  if [[ $variant == every-change ]]; then
    label="mosquitto $MOSQ_VER (snapshot every change)"
    guarantee="in memory at PUBACK; fsync'd snapshot just after"
    note="QoS 1, persistence true, autosave_on_changes true, autosave_interval 1. PUBACK is sent while the message is only in memory; after each event-loop pass in which anything changed, mosquitto rewrites its whole database to a temporary file, fsyncs it and renames it. A crash between the PUBACK and that snapshot loses the message. No per-message fsync exists."
  else
    label="mosquitto $MOSQ_VER (default autosave)"
    guarantee="in memory at PUBACK; snapshot every 30 min"
    note="QoS 1, persistence true, autosave_interval 1800 (the default). PUBACK is sent while the message is only in memory; the database is written every 30 minutes and at a clean shutdown, so a crash loses up to 30 minutes of messages and acknowledgements."
  fi
  start_server "mosquitto-$variant-$rate" "$port" "$MOSQUITTO" -c "$d/mosquitto.conf" || return 0
  local pid=$SERVER_PID
  run_peer "mosquitto-$variant" mqtt "$label" "$guarantee" "$note" "$port" "$rate"
  stop_server "$pid"
}

# JetStream: file storage, interest retention, publish acks, durable pull consumers with
# explicit acks. With `sync_interval: always` (2.10+), each write is fsync'd before the ack;
# Debian 12's 2.9 writes to the OS before the ack and fsyncs every 2 minutes (fixed).
nats_run() { # binary version rate
  local bin=$1 ver=$2 rate=$3 d=$WORK/nats-$2-$3 port label guarantee note
  mkdir -p "$d/js"; port=$("$PB" free-port)
  {
    echo "listen: \"127.0.0.1:$port\""
    echo "server_name: peers_bench"
    echo "jetstream {"
    echo "  store_dir: \"$d/js\""
    echo "  max_file_store: 8GB"
    echo "  max_memory_store: 256MB"
    ver_ge "$ver" 2.10.0 && echo "  sync_interval: always"
    echo "}"
  } >"$d/nats.conf"
  if ver_ge "$ver" 2.10.0; then
    label="NATS JetStream $ver (sync always)"
    guarantee="fsync before publish ack"
    note="File storage, interest retention, sync_interval: always: each write to the stream's files is fsync'd before the publish acknowledgement. 37 durable pull consumers with explicit acks (ack_wait 30 s); a single server, no replication (R1)."
  else
    label="NATS JetStream $ver (Debian 12)"
    guarantee="written (page cache) at ack; fsync every 2 min"
    note="File storage, interest retention, 37 durable pull consumers with explicit acks. Before 2.10 the sync interval cannot be configured: the message is written to the stream's file (the OS's page cache) before the acknowledgement and fsync'd every 2 minutes, so it survives a process crash but not a power loss or kernel crash."
  fi
  start_server "nats-$ver-$rate" "$port" "$bin" -c "$d/nats.conf" || return 0
  local pid=$SERVER_PID
  run_peer "nats-$ver" jetstream "$label" "$guarantee" "$note" "$port" "$rate"
  stop_server "$pid"
}

# Redis Streams: AOF with appendfsync always (the AOF is written and fsync'd before replies
# go out; one fsync covers every command of an event-loop pass), RDB snapshots off.
redis_run() { # rate
  local rate=$1 d=$WORK/redis-$1 port
  mkdir -p "$d"; port=$("$PB" free-port)
  {
    echo "bind 127.0.0.1"
    echo "port $port"
    echo "protected-mode yes"
    echo "daemonize no"
    echo "dir $d"
    echo "save \"\""
    echo "appendonly yes"
    echo "appendfsync always"
    echo "logfile \"\""
  } >"$d/redis.conf"
  start_server "redis-$rate" "$port" "$REDIS" "$d/redis.conf" || return 0
  local pid=$SERVER_PID
  run_peer redis redis "Redis $REDIS_VER Streams (appendfsync always)" \
    "fsync before XADD reply" \
    "appendonly yes, appendfsync always, RDB snapshots off: the AOF is written and fsync'd before any reply of an event-loop pass goes out (one fsync covers every command of the pass). One consumer group per subscriber; XREADGROUP and XACK are in the AOF too." \
    "$port" "$rate"
  stop_server "$pid"
}

# Ours. At maximum rate, twice: with the window closed when all 37 signed receipts are back at
# the sender (hotline-bench's default, one hop more than the peers' window), and closed when
# the message is accepted and durable at all 37 (`--window-until durable`, the peers' rule).
ours_run() { # rate [receipts|durable]
  local rate=$1 until=${2:-receipts} args pid rc=0 name=hotline
  read -ra args <<<"$(mode_args "$rate")"
  [[ $until == durable ]] && name=hotline-like-peers
  log "CICA Hotline relay fanout37 rate=$rate window until $until (load $(cut -d' ' -f1-3 /proc/loadavg))"
  timeout "$RUN_TIMEOUT" "$HB" --json --duration-s "$DURATION" --hotline "$TARGET/release/hotline" \
    --window-until "$until" fanout37 "${args[@]}" >"$RESULTS/$name-$rate.json" 2>"$RESULTS/$name-$rate.log" &
  pid=$!; PIDS+=("$pid")
  wait "$pid" || rc=$?
  (( rc == 0 )) || log "hotline-bench at $rate failed (exit $rc): $(tail -3 "$RESULTS/$name-$rate.log")"
}

# --- 4. Runs --------------------------------------------------------------------------------
log "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), Linux $(uname -r)"
if git -C "$ROOT" rev-parse HEAD >/dev/null 2>&1; then
  dirty=$(git -C "$ROOT" status --porcelain --untracked-files=no -- crates Cargo.toml Cargo.lock | wc -l)
  log "relay built from $(git -C "$ROOT" rev-parse --short HEAD)$( (( dirty )) && echo " plus $dirty uncommitted changed files in the tree")"
fi
log "servers: mosquitto $MOSQ_VER, nats-server $NATS_VER${NATS_SYNC_VER:+ and $NATS_SYNC_VER}, redis-server $REDIS_VER"
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
# What else uses the CPUs meanwhile (the machine is shared): `top` every 2 s, to top.log.
top -b -d 2 -w 200 >"$RESULTS/top.log" 2>/dev/null &
PIDS+=("$!")
for rate in $RUNS; do
  mosquitto_run every-change "$rate"
  mosquitto_run default "$rate"
  nats_run "$NATS" "$NATS_VER" "$rate"
  [[ -n "$NATS_SYNC" && "$NATS_SYNC" != "$NATS" ]] && nats_run "$NATS_SYNC" "$NATS_SYNC_VER" "$rate"
  redis_run "$rate"
  ours_run "$rate"
  [[ $rate == max* ]] && ours_run "$rate" durable
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

# --- 5. Table -------------------------------------------------------------------------------
echo
echo "fanout37: 1 publisher → 37 durable subscribers, ${DURATION} s per run, 1 KiB payloads; subscribers make each batch durable before acknowledging (one log shared by all 37, a ring of allocated blocks written and fdatasync'd by one thread: group commit, as 37 machines syncing in parallel)"
echo "machine: $(nproc) CPUs; load average before $LOAD_BEFORE, after $LOAD_AFTER"
echo
reports=()
for rate in $RUNS; do
  for f in "$RESULTS"/*-"$rate".json; do [[ -s "$f" ]] && reports+=("$f"); done
done
"$PB" table "${reports[@]}"
