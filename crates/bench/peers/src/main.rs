//! `peers-bench`: the fanout37 workload of `hotline-bench` (one publisher, 37 durable
//! subscribers, 1 KiB payloads, at maximum rate with a bounded window or at a fixed rate)
//! against mosquitto (MQTT QoS 1), NATS JetStream and Redis Streams, and the table that puts
//! them beside the relay's own figures. `run.sh` next to this crate starts the servers and
//! runs everything; see the "Peers, side by side" section of `docs/BENCHMARKS.md`.

mod common;
mod jetstream;
mod mqtt;
mod redis_streams;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::{Args, Parser, Subcommand, ValueEnum};
use tokio::sync::watch;

use common::{CpuMeter, Durability, Ledger, Percentiles, Plan, Report};

#[derive(Debug, Parser)]
#[command(name = "peers-bench", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run fanout37 against one broker that is already listening.
    Run(RunArgs),
    /// Print the side-by-side table from JSON reports (`peers-bench run --json` and
    /// `hotline-bench --json fanout37`), one per file.
    Table {
        /// Report files.
        files: Vec<PathBuf>,
    },
    /// Print a free TCP port on 127.0.0.1.
    FreePort,
    /// Wait until something accepts TCP connections on 127.0.0.1:PORT.
    WaitPort {
        port: u16,
        #[arg(long, default_value_t = 20.0)]
        timeout_s: f64,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum System {
    /// MQTT 3.1.1, QoS 1, persistent sessions (mosquitto).
    Mqtt,
    /// NATS JetStream, file storage, publish acks, durable pull consumers with explicit acks.
    Jetstream,
    /// Redis Streams, XADD, one consumer group per subscriber, XACK.
    Redis,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Which protocol the server speaks.
    #[arg(value_enum)]
    system: System,
    /// The server's port on --host.
    #[arg(long)]
    port: u16,
    /// The server's address (loopback only: this is a local benchmark).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// The server's name and version, for the report.
    #[arg(long)]
    label: Option<String>,
    /// What the server's configuration guarantees, in a few words (the table's column).
    #[arg(long, default_value = "")]
    guarantee: String,
    /// What the server's configuration guarantees, at length (under the table).
    #[arg(long, default_value = "")]
    note: String,
    /// The server's process id (for its CPU and memory).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Messages per second (default: maximum).
    #[arg(long)]
    rate: Option<f64>,
    /// Maximum rate: messages not yet durable at all subscribers allowed in flight.
    #[arg(long, default_value_t = 64)]
    window: usize,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 10.0)]
    duration_s: f64,
    /// Most messages in the run.
    #[arg(long, default_value_t = 1_000_000)]
    max_messages: usize,
    /// Subscribers.
    #[arg(long, default_value_t = 37)]
    subscribers: usize,
    /// Payload size, bytes.
    #[arg(long, default_value_t = 1024)]
    body_bytes: usize,
    /// What subscribers do with a batch before acknowledging it to the broker (as
    /// `hotline-bench`'s recipients; `group` is the default of both).
    #[arg(long, value_enum, default_value_t = Durability::Group)]
    durability: Durability,
    /// Seconds to wait for everything to finish after publishing stops.
    #[arg(long, default_value_t = 30.0)]
    drain_timeout_s: f64,
    /// Directory for the subscribers' files (default: a fresh temporary directory).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Print JSON instead of a summary line.
    #[arg(long)]
    json: bool,
}

/// Where the server is, and where subscribers keep their files.
pub struct Target {
    pub host: String,
    pub port: u16,
    pub dir: PathBuf,
}

enum Publisher {
    Mqtt(mqtt::Publisher),
    Jetstream(jetstream::Publisher),
    Redis(redis_streams::Publisher),
}

impl common::Publish for Publisher {
    async fn publish(&mut self, idx: usize) -> anyhow::Result<()> {
        match self {
            Self::Mqtt(p) => p.publish(idx).await,
            Self::Jetstream(p) => p.publish(idx).await,
            Self::Redis(p) => p.publish(idx).await,
        }
    }
}

impl Publisher {
    async fn close(self) {
        match self {
            Self::Mqtt(p) => p.close().await,
            Self::Jetstream(p) => p.close().await,
            Self::Redis(p) => p.close().await,
        }
    }
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

async fn run(a: RunArgs) -> anyhow::Result<Report> {
    let host: std::net::IpAddr = a.host.parse().context("--host must be an IP address")?;
    if !host.is_loopback() {
        bail!("--host must be a loopback address: this benchmark only talks to this machine");
    }
    let temp;
    let dir = match &a.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => {
            temp = TempDir::new()?;
            temp.0.clone()
        }
    };
    let t = Target {
        host: a.host.clone(),
        port: a.port,
        dir,
    };
    let plan = Plan {
        rate: a.rate,
        window: a.window.max(1),
        duration: secs(a.duration_s),
        max_messages: match a.rate {
            // A fixed rate needs exactly rate × duration (plus one for rounding).
            Some(r) => ((r * a.duration_s).ceil() as usize + 1).min(a.max_messages),
            None => a.max_messages,
        },
        subscribers: a.subscribers,
        body_bytes: a.body_bytes.max(16),
        durability: a.durability,
        drain_timeout: secs(a.drain_timeout_s),
    };
    let ledger = Arc::new(Ledger::new(&plan));
    let (stop_tx, stop_rx) = watch::channel(false);
    let subs = match a.system {
        System::Mqtt => mqtt::subscribers(&t, &plan, &ledger, &stop_rx).await?,
        System::Jetstream => jetstream::subscribers(&t, &plan, &ledger, &stop_rx).await?,
        System::Redis => redis_streams::subscribers(&t, &plan, &ledger, &stop_rx).await?,
    };
    let mut publisher = match a.system {
        System::Mqtt => Publisher::Mqtt(mqtt::Publisher::connect(&t, &plan, &ledger).await?),
        System::Jetstream => {
            Publisher::Jetstream(jetstream::Publisher::connect(&t, &plan, &ledger).await?)
        }
        System::Redis => {
            Publisher::Redis(redis_streams::Publisher::connect(&t, &plan, &ledger).await?)
        }
    };

    let fsync_probe_ms = common::fsync_probe_ms(&t.dir);
    let load_avg_before = common::load_avg();
    let guest_halt_poll_ns = common::guest_halt_poll_ns();
    let start_at = Instant::now() + Duration::from_millis(200);
    tokio::time::sleep_until(start_at.into()).await;
    let server_cpu = a.server_pid.map(CpuMeter::start);
    let bench_cpu = CpuMeter::start(std::process::id());
    let start_ns = ledger.now_ns();
    let sent = common::publish_loop(&plan, &ledger, start_at, &mut publisher).await;
    if let Err(e) = &sent {
        ledger.error("publisher", e);
    }
    common::drain(&ledger, start_at + plan.duration + plan.drain_timeout).await;
    let server_cpu_pct = server_cpu.and_then(|m| m.percent());
    let bench_cpu_pct = bench_cpu.percent();
    let server_rss_mib = a.server_pid.and_then(common::rss_mib);
    let _ = stop_tx.send(true);
    publisher.close().await;
    let mut e2e = Vec::new();
    let mut received = Vec::new();
    for s in subs {
        let r = s.await.context("subscriber task")?;
        e2e.extend(r.e2e_us);
        received.extend(r.recv_us);
    }
    let end_ns = ledger.last_event_ns().max(start_ns + 1);
    let span_s = (end_ns - start_ns) as f64 / 1e9;
    use std::sync::atomic::Ordering::Relaxed;
    let accepted = ledger.accepted.load(Relaxed);
    let deliveries = ledger.deliveries.load(Relaxed);
    Ok(Report {
        workload: "fanout37".into(),
        system: format!("{:?}", a.system).to_lowercase(),
        label: a
            .label
            .clone()
            .unwrap_or_else(|| format!("{:?}", a.system).to_lowercase()),
        guarantee: a.guarantee.clone(),
        note: a.note.clone(),
        offered_per_s: a.rate,
        duration_s: a.duration_s,
        window: a.rate.is_none().then_some(plan.window),
        senders: 1,
        recipients: plan.subscribers,
        fanout: plan.subscribers,
        body_bytes: plan.body_bytes,
        recipient_durability: plan.durability,
        sent: ledger.sent.load(Relaxed),
        accepted,
        deliveries,
        duplicate_deliveries: ledger.duplicates.load(Relaxed),
        finished: ledger.finished.load(Relaxed),
        span_s,
        accepted_per_s: accepted as f64 / span_s,
        deliveries_per_s: deliveries as f64 / span_s,
        e2e: Percentiles::of(&mut e2e),
        received: Percentiles::of(&mut received),
        accept: Percentiles::of(&mut ledger.take_accept_us()),
        server_cpu_pct,
        bench_cpu_pct,
        server_rss_mib,
        load_avg_before,
        fsync_probe_ms,
        guest_halt_poll_ns,
        errors: ledger.errors(),
    })
}

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> anyhow::Result<Self> {
        let base = std::env::temp_dir();
        for n in 0..1000u32 {
            let p = base.join(format!("peers-bench-{}-{n}", std::process::id()));
            if std::fs::create_dir(&p).is_ok() {
                return Ok(Self(p));
            }
        }
        bail!("cannot create a temporary directory in {}", base.display())
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One row of the side-by-side table.
struct Row {
    system: String,
    guarantee: String,
    note: String,
    cpu: Option<f64>,
    load: Option<f64>,
    fsync_ms: Option<f64>,
    halt_poll_us: Option<f64>,
    rate: String,
    offered: Option<f64>,
    window: Option<u64>,
    ours: bool,
    /// Ours, maximum rate: the window closes at durability at all 37, as the peers' do
    /// (`hotline-bench --window-until durable`), rather than at all 37 receipts back.
    like_peers: bool,
    accepted_per_s: f64,
    deliveries_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    finished_all: bool,
}

const OURS_GUARANTEE: &str = "fsync before accept; signed receipts";
const OURS_NOTE: &str = "Accepted = committed to the relay's SQLite store (WAL, group commit) and the write-ahead log fdatasync'd. Each message is ed25519-signed by the sender and verified by the relay; each recipient makes its batch durable (fdatasync), then signs a cumulative delivered receipt that the relay stores and forwards to the sender, who stores it. At maximum rate the window counts a message until all 37 receipts are back at the sender (one more hop than a peer's window), or, in the rows marked \"window as peers\", until it is accepted and durable at all 37, the peers' rule; the receipts flow all the same. Ratios compare with the latter when it was run.";

fn row(v: &serde_json::Value) -> anyhow::Result<Row> {
    let f = |k: &str| v.get(k).and_then(|x| x.as_f64());
    let ours = v.get("system").is_none();
    let e2e = v.get("e2e").context("no e2e in report")?;
    let ms = |k: &str| e2e.get(k).and_then(|x| x.as_f64()).unwrap_or(f64::NAN) / 1e3;
    let offered = f("offered_per_s");
    let rate = match offered {
        Some(r) => format!("{r:.0}/s"),
        None => format!(
            "max (window {})",
            v.get("window").and_then(|w| w.as_u64()).unwrap_or(0)
        ),
    };
    let like_peers = ours
        && offered.is_none()
        && v.get("window_until").and_then(|w| w.as_str()) == Some("all_durable");
    let sent = f("sent").unwrap_or(0.0);
    let finished = f("finished").unwrap_or(0.0);
    Ok(Row {
        system: if like_peers {
            "CICA Hotline relay (window as peers)".into()
        } else if ours {
            "CICA Hotline relay".into()
        } else {
            v.get("label")
                .and_then(|x| x.as_str())
                .unwrap_or("?")
                .into()
        },
        guarantee: if ours {
            OURS_GUARANTEE.into()
        } else {
            v.get("guarantee")
                .and_then(|x| x.as_str())
                .unwrap_or("")
                .into()
        },
        note: if ours {
            OURS_NOTE.into()
        } else {
            v.get("note").and_then(|x| x.as_str()).unwrap_or("").into()
        },
        cpu: f(if ours {
            "relay_cpu_pct"
        } else {
            "server_cpu_pct"
        }),
        load: f("load_avg_before"),
        fsync_ms: f("fsync_probe_ms"),
        halt_poll_us: f("guest_halt_poll_ns").map(|ns| ns / 1e3),
        rate,
        offered,
        window: if offered.is_none() {
            v.get("window").and_then(|w| w.as_u64())
        } else {
            None
        },
        ours,
        like_peers,
        accepted_per_s: f("accepted_per_s").unwrap_or(0.0),
        deliveries_per_s: f("deliveries_per_s").unwrap_or(0.0),
        p50_ms: ms("p50_us"),
        p99_ms: ms("p99_us"),
        finished_all: sent > 0.0 && finished >= sent,
    })
}

fn table(files: &[PathBuf]) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    for p in files {
        let text = std::fs::read_to_string(p).with_context(|| format!("{}", p.display()))?;
        for line in text.lines().filter(|l| l.trim_start().starts_with('{')) {
            let v: serde_json::Value =
                serde_json::from_str(line).with_context(|| format!("{}", p.display()))?;
            if v.get("workload").and_then(|w| w.as_str()) != Some("fanout37") {
                continue;
            }
            rows.push(row(&v)?);
        }
    }
    let same = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (None, None) => true,
        (Some(x), Some(y)) => (x - y).abs() < 1e-9,
        _ => false,
    };
    println!(
        "| system | guarantee | rate | accepted msg/s | deliveries/s | e2e p50 ms | e2e p99 ms | msg/s ÷ ours | p50 ÷ ours | server CPU | load | fsync ms | halt-poll µs |"
    );
    println!("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    // An optional figure with `prec` decimals, or "-" when the report had none.
    let cell = |v: Option<f64>, prec: usize, unit: &str| {
        v.map_or_else(|| "-".into(), |v| format!("{v:.prec$}{unit}"))
    };
    let mut notes = Vec::new();
    for r in &rows {
        // Against our run with the same window or rate, closed by the same rule if it ran.
        let ours = rows
            .iter()
            .filter(|o| o.ours && same(o.offered, r.offered) && o.window == r.window)
            .min_by_key(|o| !o.like_peers);
        let (ratio, p50_ratio) = match ours {
            Some(o) if o.accepted_per_s > 0.0 => (
                format!("{:.2}", r.accepted_per_s / o.accepted_per_s),
                format!("{:.2}", r.p50_ms / o.p50_ms),
            ),
            _ => ("-".into(), "-".into()),
        };
        let mark = if r.finished_all {
            ""
        } else {
            " (unfinished†)"
        };
        println!(
            "| {}{} | {} | {} | {:.0} | {:.0} | {:.2} | {:.2} | {} | {} | {} | {} | {} | {} |",
            r.system,
            mark,
            r.guarantee,
            r.rate,
            r.accepted_per_s,
            r.deliveries_per_s,
            r.p50_ms,
            r.p99_ms,
            ratio,
            p50_ratio,
            cell(r.cpu, 0, "%"),
            cell(r.load, 1, ""),
            cell(r.fsync_ms, 2, ""),
            cell(r.halt_poll_us, 0, ""),
        );
        if !notes.iter().any(|(_, n): &(String, String)| *n == r.note) {
            notes.push((r.system.clone(), r.note.clone()));
        }
    }
    println!();
    println!("server CPU: the broker's (or relay's) CPU over the run, % of one core. load: 1-minute load average just before the run (it counts this benchmark's own fsync-waiting threads too). fsync ms: median of twenty fdatasync'd 1 KiB appends just before the run (the disk's state). halt-poll µs: the guest's cpuidle-haltpoll limit (guest_halt_poll_ns) during the run; 0 means an idle vCPU halts at once, and every wake-up onto it waits for the host (\"-\": not a haltpoll guest).");
    println!();
    println!("Guarantees (what an accepted message and a delivery mean):");
    for (s, g) in notes {
        println!("- {s}: {g}");
    }
    if rows.iter().any(|r| !r.finished_all) {
        println!(
            "† some messages were not durable at every subscriber when the drain timeout ran out"
        );
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::FreePort => {
            let l = std::net::TcpListener::bind("127.0.0.1:0")?;
            println!("{}", l.local_addr()?.port());
            Ok(())
        }
        Cmd::WaitPort { port, timeout_s } => {
            let until = Instant::now() + secs(timeout_s);
            loop {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Ok(());
                }
                if Instant::now() >= until {
                    bail!("nothing listens on 127.0.0.1:{port} after {timeout_s} s");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Cmd::Table { files } => table(&files),
        Cmd::Run(a) => {
            let json = a.json;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            let r = rt.block_on(run(a))?;
            if json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                println!("{}", r.line());
            }
            // Client tasks may still hold sockets; do not wait for them.
            rt.shutdown_timeout(Duration::from_secs(1));
            Ok(())
        }
    }
}
