//! `hotline-bench`: runs the relay benchmarks and prints one summary line per figure set
//! (JSON with `--json`). See `docs/BENCHMARKS.md`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

use hotline_bench::client::Durability;
use hotline_bench::floor::FloorOptions;
use hotline_bench::idle::IdleOptions;
use hotline_bench::recovery::RecoveryOptions;
use hotline_bench::skeleton::{Forwarder, Shape, SkeletonOptions, Transport};
use hotline_bench::stats::Machine;
use hotline_bench::traffic::CompleteOn;
use hotline_bench::Common;

/// Benchmarks of the CICA Hotline relay (run the relay as a release build:
/// `cargo build --release -p hotline-cli`).
#[derive(Debug, Parser)]
#[command(name = "hotline-bench", version)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    #[command(subcommand)]
    workload: Workload,
}

#[derive(Debug, Args)]
struct CommonArgs {
    /// The `hotline` binary that runs the relay (default: the one next to this program).
    #[arg(long, global = true)]
    hotline: Option<PathBuf>,
    /// Directory for networks, relay data and logs (default: a temporary directory,
    /// removed at the end).
    #[arg(long, global = true)]
    dir: Option<PathBuf>,
    /// How recipients make each batch of deliveries durable before receipting it (the
    /// default, `group`, since the eighth round; `fsync` before).
    #[arg(long, global = true, value_enum, default_value_t = Durability::Group)]
    durability: Durability,
    /// Milliseconds a recipient lets stored deliveries wait to share one delivered receipt;
    /// the default is the node's (`RECEIPT_PACE_MS`); 0 receipts each durable batch at once.
    #[arg(long, global = true, default_value_t = hotline_node::limits::RECEIPT_PACE_MS)]
    receipt_pace_ms: u64,
    /// Maximum-rate runs: when a message stops counting against the window. `durable` is
    /// the point at which `peers-bench` counts a broker's message finished (accepted, and
    /// durable at every recipient); the receipts still flow and are still timed.
    #[arg(long, global = true, value_enum, default_value_t = CompleteOn::AllReceipts)]
    window_until: CompleteOn,
    /// Seconds of load per traffic run.
    #[arg(long, global = true, default_value_t = 10.0)]
    duration_s: f64,
    /// Message body size, bytes.
    #[arg(long, global = true, default_value_t = 1024)]
    body_bytes: usize,
    /// Seconds to wait for a run to finish after sending stops.
    #[arg(long, global = true, default_value_t = 30.0)]
    drain_timeout_s: f64,
    /// Print JSON instead of summary lines.
    #[arg(long, global = true)]
    json: bool,
    /// fanout37 and p2p: write every delivery's times to FILE as CSV (message, recipient,
    /// its send after the start, the recipient's read and its sync after the send, µs), to
    /// see where a tail comes from.
    #[arg(long, global = true, value_name = "FILE")]
    deliveries: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Workload {
    /// The Secretariat to the 37 other CICA participants, with signed delivered receipts.
    Fanout37(FanoutArgs),
    /// Independent sender → recipient pairs, at maximum rate unless --rate.
    P2p(P2pArgs),
    /// Idle connections: relay memory and CPU, then a crash and the reconnection.
    Idle(IdleArgs),
    /// A crash with a large backlog: time to ready and to drained.
    Recovery(RecoveryArgs),
    /// The disk's floor under a durable fan-out, paced: the 37 recipients' write and sync (the
    /// end-to-end floor) and a commit-shaped write and sync (the floor of the answer
    /// accepted), each timed alone; no relay, network or cryptography.
    Floor(FloorArgs),
    /// The floor of a relay process under a paced fan-out: a bare forwarder in a process of
    /// its own (over UDP, or QUIC with the relay's settings; no cryptography or store) and
    /// the recipients' durability, with fanout37's shape and pacing; what the relay's own
    /// work adds is fanout37's figures above these.
    Skeleton(SkeletonArgs),
    /// The skeleton's forwarder (started by `skeleton`).
    #[command(hide = true)]
    SkeletonForwarder(ForwarderArgs),
    /// Everything: the floor and the skeleton (UDP, bare; QUIC through a thread) at 500/s;
    /// fanout37 at 500/s, 2000/s and max (windows 64 and 1024); p2p max; idle; recovery.
    All,
}

#[derive(Debug, Args)]
struct FanoutArgs {
    /// Messages per second (default: maximum).
    #[arg(long)]
    rate: Option<f64>,
    /// Maximum rate: messages not yet receipted by all 37 allowed in flight (the default is
    /// large enough to keep the relay busy; a small one measures latency at a lower rate).
    #[arg(long, default_value_t = 1024)]
    window: usize,
    /// Maximum rate: messages signed in advance (a run that sends them all before its
    /// duration ends is shorter; its rates stay right).
    #[arg(long, default_value_t = 80_000)]
    max_messages: usize,
    /// Address each message to only the first N of the 37 (in roster order) instead of
    /// everyone, to see how a message's time grows with its fan-out (reported as `fanoutN`).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=37))]
    recipients: Option<u16>,
}

#[derive(Debug, Args)]
struct P2pArgs {
    /// Sender → recipient pairs.
    #[arg(long, default_value_t = 16)]
    pairs: usize,
    /// Messages per second over all pairs (default: maximum).
    #[arg(long)]
    rate: Option<f64>,
    /// Maximum rate: unreceipted messages allowed in flight per pair.
    #[arg(long, default_value_t = 256)]
    window: usize,
    /// Maximum rate: messages signed in advance over all pairs.
    #[arg(long, default_value_t = 300_000)]
    max_messages: usize,
}

#[derive(Debug, Args)]
struct FloorArgs {
    /// Messages per second.
    #[arg(long, default_value_t = 500.0)]
    rate: f64,
    /// Messages.
    #[arg(long, default_value_t = 1_000)]
    count: usize,
}

#[derive(Debug, Args)]
struct SkeletonArgs {
    /// Messages per second.
    #[arg(long, default_value_t = 500.0)]
    rate: f64,
    /// Recipients of every message.
    #[arg(long, default_value_t = 37, value_parser = clap::value_parser!(u16).range(1..=hotline_bench::skeleton::RECIPIENTS_MAX as i64))]
    recipients: u16,
    /// How the forwarder passes a message on: `bare` (one task sends to every recipient),
    /// `tasks` (a task a recipient, as the relay's sessions), `thread` (through a posting
    /// thread to those tasks, as the relay's store writer).
    #[arg(long, value_enum, default_value_t = Shape::Bare)]
    shape: Shape,
    /// How messages travel: `udp` (bare datagrams) or `quic` (quinn with the relay's
    /// transport and TLS settings, a connection a participant).
    #[arg(long, value_enum, default_value_t = Transport::Udp)]
    transport: Transport,
}

#[derive(Debug, Args)]
struct ForwarderArgs {
    #[arg(long, value_enum, default_value_t = Transport::Udp)]
    transport: Transport,
    #[arg(long, value_enum, default_value_t = Shape::Bare)]
    shape: Shape,
}

#[derive(Debug, Args)]
struct IdleArgs {
    /// Totals of unauthenticated (TLS-only) connections to step through.
    #[arg(long, value_delimiter = ',', default_value = "1000,5000,10000")]
    steps: Vec<usize>,
    /// Seconds to wait after connecting before measuring.
    #[arg(long, default_value_t = 3.0)]
    settle_s: f64,
    /// Seconds over which idle CPU is measured.
    #[arg(long, default_value_t = 10.0)]
    cpu_window_s: f64,
    /// Skip the crash and reconnection.
    #[arg(long)]
    no_restart: bool,
}

#[derive(Debug, Args)]
struct RecoveryArgs {
    /// Messages queued before the kill.
    #[arg(long, default_value_t = 100_000)]
    queued: usize,
    /// Members submitting them in parallel.
    #[arg(long, default_value_t = 8)]
    senders: usize,
    /// Unaccepted submissions allowed per sender while loading.
    #[arg(long, default_value_t = 512)]
    window: usize,
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let a = &cli.common;
    if a.deliveries.is_some() && !matches!(cli.workload, Workload::Fanout37(_) | Workload::P2p(_)) {
        anyhow::bail!("--deliveries applies to one traffic run: fanout37 or p2p");
    }
    let temp;
    let dir = match &a.dir {
        Some(d) => d.clone(),
        None => {
            temp = tempfile::Builder::new()
                .prefix("hotline-bench-")
                .tempdir()?;
            temp.path().to_owned()
        }
    };
    let c = Common {
        hotline: Some(
            a.hotline
                .clone()
                .unwrap_or_else(hotline_bench::relay::default_binary),
        ),
        dir,
        durability: a.durability,
        duration: secs(a.duration_s),
        body_bytes: a.body_bytes,
        drain_timeout: secs(a.drain_timeout_s),
        receipt_pace: Duration::from_millis(a.receipt_pace_ms),
        window_until: a.window_until,
        deliveries_csv: a.deliveries.clone(),
    };
    let json = a.json;
    let out = |line: String, value: serde_json::Value| {
        if json {
            println!("{value}");
        } else {
            println!("{line}");
        }
    };
    let fanout = |rate, window, max| {
        let c = c.clone();
        async move {
            let r = hotline_bench::fanout37(&c, rate, window, max).await?;
            anyhow::Ok((r.line(), serde_json::to_value(&r)?))
        }
    };
    let p2p = |pairs, rate, window, max| {
        let c = c.clone();
        async move {
            let r = hotline_bench::p2p(&c, pairs, rate, window, max).await?;
            anyhow::Ok((r.line(), serde_json::to_value(&r)?))
        }
    };
    let idle = |o: IdleOptions| {
        let c = c.clone();
        async move {
            let r = hotline_bench::idle::run(&c, &o).await?;
            anyhow::Ok((r.lines().join("\n"), serde_json::to_value(&r)?))
        }
    };
    let recovery = |o: RecoveryOptions| {
        let c = c.clone();
        async move {
            let r = hotline_bench::recovery::run(&c, &o).await?;
            anyhow::Ok((r.line(), serde_json::to_value(&r)?))
        }
    };
    let floor = |rate, count| {
        let o = FloorOptions {
            rate,
            count,
            fanout: 37,
            body_bytes: c.body_bytes,
        };
        let dir = c.dir.clone();
        async move {
            let r = hotline_bench::floor::run(&dir, &o).await?;
            anyhow::Ok((r.line(), serde_json::to_value(&r)?))
        }
    };
    let skeleton = |rate, recipients, transport, shape| {
        let o = SkeletonOptions {
            rate,
            duration: c.duration,
            recipients,
            body_bytes: c.body_bytes,
            durability: c.durability,
            drain_timeout: c.drain_timeout,
            forwarder: Forwarder::Process(
                std::env::current_exe().unwrap_or_else(|_| PathBuf::from("hotline-bench")),
            ),
            transport,
            shape,
        };
        let dir = c.dir.clone();
        async move {
            let r = hotline_bench::skeleton::run(&dir, &o).await?;
            anyhow::Ok((r.line(), serde_json::to_value(&r)?))
        }
    };
    let idle_opts = |i: &IdleArgs| IdleOptions {
        steps: i.steps.clone(),
        settle: secs(i.settle_s),
        cpu_window: secs(i.cpu_window_s),
        restart: !i.no_restart,
        connect_timeout: Duration::from_secs(120),
    };
    let recovery_opts = |r: &RecoveryArgs| RecoveryOptions {
        queued: r.queued,
        senders: r.senders,
        window: r.window,
        drain_timeout: Duration::from_secs(300),
    };
    match &cli.workload {
        Workload::Fanout37(f) => {
            let load = hotline_bench::Load {
                rate: f.rate,
                window: f.window,
                max_messages: f.max_messages,
            };
            let r = hotline_bench::fanout(&c, f.recipients.map(usize::from), load).await?;
            out(r.line(), serde_json::to_value(&r)?);
        }
        Workload::P2p(p) => {
            let (l, v) = p2p(p.pairs, p.rate, p.window, p.max_messages).await?;
            out(l, v);
        }
        Workload::Floor(f) => {
            let (l, v) = floor(f.rate, f.count).await?;
            out(l, v);
        }
        Workload::Skeleton(s) => {
            let (l, v) = skeleton(s.rate, usize::from(s.recipients), s.transport, s.shape).await?;
            out(l, v);
        }
        Workload::SkeletonForwarder(f) => {
            hotline_bench::skeleton::forward(f.transport, f.shape).await?
        }
        Workload::Idle(i) => {
            let (l, v) = idle(idle_opts(i)).await?;
            out(l, v);
        }
        Workload::Recovery(r) => {
            let (l, v) = recovery(recovery_opts(r)).await?;
            out(l, v);
        }
        Workload::All => {
            let m = Machine::read();
            out(
                format!(
                    "machine: {} CPUs, {}, {} MiB, Linux {}",
                    m.cpus, m.cpu_model, m.memory_mib, m.kernel
                ),
                serde_json::json!({ "machine": m }),
            );
            let (l, v) = floor(500.0, 1_000).await?;
            out(l, v);
            for (transport, shape) in [
                (Transport::Udp, Shape::Bare),
                (Transport::Quic, Shape::Thread),
            ] {
                let (l, v) = skeleton(500.0, 37, transport, shape).await?;
                out(l, v);
            }
            for (rate, window) in [
                (Some(500.0), 0),
                (Some(2_000.0), 0),
                (None, 64),
                (None, 1024),
            ] {
                let (l, v) = fanout(rate, window, 80_000).await?;
                out(l, v);
            }
            let (l, v) = p2p(16, None, 256, 300_000).await?;
            out(l, v);
            let (l, v) = idle(IdleOptions {
                steps: vec![1_000, 5_000, 10_000],
                settle: secs(3.0),
                cpu_window: secs(10.0),
                restart: true,
                connect_timeout: Duration::from_secs(120),
            })
            .await?;
            out(l, v);
            let (l, v) = recovery(RecoveryOptions {
                queued: 100_000,
                senders: 8,
                window: 512,
                drain_timeout: Duration::from_secs(300),
            })
            .await?;
            out(l, v);
        }
    }
    Ok(())
}
