//! idle: many connections that do nothing but keep alive; the relay's memory and CPU for
//! them; then a relay crash (SIGKILL) and restart, timed until every client is back.
//!
//! Authenticated sessions are limited by the roster: one live session per participant
//! (a second supersedes the first), and a roster lists at most 256 participants
//! (`ROSTER_PARTICIPANTS_MAX`). So the workload holds one authenticated session per roster
//! participant but the Secretariat, and measures connection scale beyond that with QUIC
//! connections that complete the TLS handshake and stay open without authenticating (the
//! relay's `handshake_timeout_ms` is raised for this run so they are not closed).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde::Serialize;
use tokio::sync::{watch, Notify, Semaphore};

use crate::client;
use crate::network::{Network, Peer, SECRETARIAT};
use crate::relay::RelayProc;
use crate::stats::{self, CpuMeter};
use crate::{run_dir, Common};

/// Connections sharing one client endpoint (one UDP socket).
pub const CONNECTIONS_PER_ENDPOINT: usize = 1_000;
/// Connection attempts (handshake + authentication) in progress at once in the load
/// generator, so that it does not starve itself.
const CONNECTING_MAX: usize = 256;
/// Reconnection back-off, as the node's (`hotline-node` limits): 200 ms doubling to 10 s,
/// with jitter.
const BACKOFF_MIN_MS: u64 = 200;
const BACKOFF_MAX_MS: u64 = 10_000;
/// Synthetic members added to the 38 CICA participants: 256 in all, the roster maximum.
const EXTRA_PARTICIPANTS: usize = hotline_proto::limits::ROSTER_PARTICIPANTS_MAX - 38;

/// Options of the idle workload.
#[derive(Clone, Debug)]
pub struct IdleOptions {
    /// Totals of unauthenticated connections to step through (e.g. 1000, 5000, 10000).
    pub steps: Vec<usize>,
    /// Wait after connecting before measuring.
    pub settle: Duration,
    /// Window over which idle CPU is measured.
    pub cpu_window: Duration,
    /// Kill and restart the relay at the end, and time the reconnection.
    pub restart: bool,
    /// How long connecting (or reconnecting) everyone may take.
    pub connect_timeout: Duration,
}

/// One step of the idle workload.
#[derive(Clone, Debug, Serialize)]
pub struct IdleStep {
    /// Authenticated sessions held.
    pub authenticated: usize,
    /// Unauthenticated (TLS-only) connections held.
    pub tls_only: usize,
    /// Seconds to open this step's new connections.
    pub connect_s: f64,
    /// Failed connection attempts (retried with back-off) while opening them.
    pub failed_attempts: u64,
    /// Relay resident memory, MiB.
    pub relay_rss_mib: f64,
    /// Relay memory per connection added since the previous step, KiB.
    pub kib_per_added_connection: f64,
    /// Relay CPU while idle (keepalives only), percent of one core.
    pub relay_idle_cpu_pct: f64,
}

/// Reconnection after a crash.
#[derive(Clone, Debug, Serialize)]
pub struct Restart {
    /// Connections that had to come back.
    pub connections: usize,
    /// Restart → `relay listening` in its log, ms.
    pub listening_ms: f64,
    /// Restart → every authenticated session is back, ms.
    pub all_authenticated_ms: f64,
    /// Restart → every connection (both kinds) is back, ms.
    pub all_ms: f64,
    /// Restart → each connection back, ms: median and 99th percentile.
    pub back_p50_ms: f64,
    /// See `back_p50_ms`.
    pub back_p99_ms: f64,
    /// Failed connection attempts during the reconnection.
    pub failed_attempts: u64,
    /// Relay CPU during the reconnection, percent of one core.
    pub relay_cpu_pct: f64,
    /// Load generator CPU during the reconnection, percent of one core.
    pub bench_cpu_pct: f64,
}

/// What the idle workload measured.
#[derive(Clone, Debug, Serialize)]
pub struct IdleReport {
    /// Relay memory before any connection, MiB.
    pub relay_base_rss_mib: f64,
    /// The steps, in order.
    pub steps: Vec<IdleStep>,
    /// The crash and reconnection, if run.
    pub restart: Option<Restart>,
    /// Load generator memory at the largest step, MiB.
    pub bench_rss_mib: f64,
    /// Client endpoints (UDP sockets) used.
    pub client_endpoints: usize,
    /// 1-minute load average before the run.
    pub load_avg_before: f64,
}

impl IdleReport {
    /// Summary lines (one per step, one for the restart).
    pub fn lines(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .steps
            .iter()
            .map(|s| {
                format!(
                    "idle {auth} authenticated + {raw} TLS-only: relay rss {rss:.1} MiB ({per:.1} KiB per added connection) idle cpu {cpu:.1}% | connect {c:.2}s ({f} failed attempts) | base rss {base:.1} MiB | load {load:.2}",
                    auth = s.authenticated,
                    raw = s.tls_only,
                    rss = s.relay_rss_mib,
                    per = s.kib_per_added_connection,
                    cpu = s.relay_idle_cpu_pct,
                    c = s.connect_s,
                    f = s.failed_attempts,
                    base = self.relay_base_rss_mib,
                    load = self.load_avg_before,
                )
            })
            .collect();
        if let Some(r) = &self.restart {
            v.push(format!(
                "idle restart (SIGKILL) with {n} connections: listening {l:.0} ms, all authenticated back {a:.0} ms, all back {all:.0} ms (p50 {p50:.0} ms, p99 {p99:.0} ms), relay cpu {cpu:.0}%, bench cpu {bcpu:.0}%, failed attempts {f}",
                n = r.connections,
                l = r.listening_ms,
                a = r.all_authenticated_ms,
                all = r.all_ms,
                cpu = r.relay_cpu_pct,
                bcpu = r.bench_cpu_pct,
                f = r.failed_attempts,
                p50 = r.back_p50_ms,
                p99 = r.back_p99_ms,
            ));
        }
        v
    }
}

/// Counters shared by every held connection.
struct Fleet {
    t0: Instant,
    up_auth: AtomicUsize,
    up_raw: AtomicUsize,
    /// Bumped before the relay is killed; a connection made in a later epoch is "back".
    epoch: AtomicU64,
    back_auth: AtomicUsize,
    back_raw: AtomicUsize,
    last_auth_ns: AtomicU64,
    last_raw_ns: AtomicU64,
    failures: AtomicU64,
    /// When each connection came back after the restart, ns since `t0`.
    back_ns: std::sync::Mutex<Vec<u64>>,
    progress: Notify,
    connecting: Semaphore,
}

#[derive(Clone)]
enum Kind {
    Authenticated(Box<Peer>, u64),
    TlsOnly,
}

/// Holds one connection open, reconnecting (with the node's back-off) whenever it drops.
async fn hold(
    kind: Kind,
    ep: quinn::Endpoint,
    addr: std::net::SocketAddr,
    fleet: Arc<Fleet>,
    mut stop: watch::Receiver<bool>,
) {
    let auth = matches!(kind, Kind::Authenticated(..));
    let mut counted = 0u64;
    loop {
        let mut backoff = BACKOFF_MIN_MS;
        let held = loop {
            if *stop.borrow() {
                return;
            }
            let attempt = async {
                let _permit = fleet.connecting.acquire().await;
                match &kind {
                    Kind::Authenticated(peer, v) => client::session(&ep, addr, peer, *v)
                        .await
                        .map(|s| (s.conn.clone(), Some(s))),
                    Kind::TlsOnly => hotline_net::connect(&ep, addr, client::CONNECT_TIMEOUT)
                        .await
                        .map(|c| (c, None))
                        .map_err(anyhow::Error::from),
                }
            };
            let r = tokio::select! {
                r = attempt => r,
                _ = stop.changed() => return,
            };
            match r {
                Ok(x) => break x,
                Err(_) => {
                    fleet.failures.fetch_add(1, Relaxed);
                    let jitter = rand::random::<u64>() % (backoff / 2 + 1);
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(backoff + jitter)) => {}
                        _ = stop.changed() => return,
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX_MS);
                }
            }
        };
        let (conn, session) = held;
        let now = fleet.t0.elapsed().as_nanos() as u64;
        let (up, back, last) = if auth {
            (&fleet.up_auth, &fleet.back_auth, &fleet.last_auth_ns)
        } else {
            (&fleet.up_raw, &fleet.back_raw, &fleet.last_raw_ns)
        };
        up.fetch_add(1, Relaxed);
        let epoch = fleet.epoch.load(Relaxed);
        if epoch > counted {
            counted = epoch;
            back.fetch_add(1, Relaxed);
            last.fetch_max(now, Relaxed);
            fleet
                .back_ns
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(now);
        }
        fleet.progress.notify_waiters();
        // The session's streams stay open while it is held; nothing is read because an
        // idle relay sends nothing.
        let stopped = tokio::select! {
            _ = conn.closed() => false,
            _ = stop.changed() => true,
        };
        up.fetch_sub(1, Relaxed);
        drop(session);
        if stopped {
            conn.close(0u32.into(), b"benchmark done");
            return;
        }
    }
}

async fn wait_until(
    fleet: &Fleet,
    timeout: Duration,
    what: &str,
    cond: impl Fn(&Fleet) -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let notified = fleet.progress.notified();
        if cond(fleet) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "{what}: not done within {timeout:?} (authenticated up {}, TLS-only up {}, failed attempts {})",
                fleet.up_auth.load(Relaxed),
                fleet.up_raw.load(Relaxed),
                fleet.failures.load(Relaxed)
            );
        }
        let _ = tokio::time::timeout(Duration::from_millis(100), notified).await;
    }
}

/// Runs the idle workload (the relay must be a process: its memory is the measurement).
pub async fn run(c: &Common, o: &IdleOptions) -> anyhow::Result<IdleReport> {
    let Some(binary) = c.hotline.as_deref() else {
        bail!("the idle workload measures the relay process: give the hotline binary");
    };
    let load_avg_before = stats::load_avg();
    // Unauthenticated connections must outlive the handshake timeout for the whole run,
    // and be admitted past the relay's limits on them (all come from one address here, and
    // the roster has room for only 256 authenticated nodes): the workload holds thousands of
    // connections, not thousands of attackers.
    let net = Network::create(
        &run_dir(&c.dir, "idle"),
        &[("I", EXTRA_PARTICIPANTS)],
        "handshake_timeout_ms = 86400000\nhandshakes_max = 32768\nhandshakes_per_ip_max = 0\n",
    )?;
    let log = net.dir.join("relay.log");
    let mut relay = RelayProc::start(binary, &net, &log).await?;
    net.set_listen(relay.addr)?;
    let addr = relay.addr;
    tokio::time::sleep(o.settle).await;
    let base = stats::rss_kib(relay.pid()).context("relay RSS")? as f64;

    let fleet = Arc::new(Fleet {
        t0: Instant::now(),
        up_auth: AtomicUsize::new(0),
        up_raw: AtomicUsize::new(0),
        epoch: AtomicU64::new(0),
        back_auth: AtomicUsize::new(0),
        back_raw: AtomicUsize::new(0),
        last_auth_ns: AtomicU64::new(0),
        last_raw_ns: AtomicU64::new(0),
        failures: AtomicU64::new(0),
        back_ns: std::sync::Mutex::new(Vec::new()),
        progress: Notify::new(),
        connecting: Semaphore::new(CONNECTING_MAX),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    let mut endpoints: Vec<quinn::Endpoint> = Vec::new();
    let mut opened = 0usize;
    let endpoint_for =
        |opened: usize, endpoints: &mut Vec<quinn::Endpoint>| -> anyhow::Result<quinn::Endpoint> {
            if endpoints.len() * CONNECTIONS_PER_ENDPOINT <= opened {
                endpoints.push(client::endpoint(net.fingerprint)?);
            }
            Ok(endpoints[endpoints.len() - 1].clone())
        };

    let mut steps = Vec::new();
    // Step 1: one authenticated session per participant but the Secretariat.
    let peers: Vec<Peer> = net
        .peers
        .iter()
        .filter(|p| p.id.as_str() != SECRETARIAT)
        .cloned()
        .collect();
    let n_auth = peers.len();
    let pid = relay.pid();
    let measure = || async move {
        tokio::time::sleep(o.settle).await;
        let cpu = CpuMeter::start(pid);
        tokio::time::sleep(o.cpu_window).await;
        let cpu = cpu.percent().unwrap_or(f64::NAN);
        (stats::rss_kib(pid).unwrap_or(0) as f64, cpu)
    };
    let mut prev_rss = base;
    let mut prev_n = 0usize;
    let mut step = |n_raw: usize, connect: Duration, failed: u64, rss: f64, cpu: f64| {
        let n = n_auth + n_raw;
        steps.push(IdleStep {
            authenticated: n_auth,
            tls_only: n_raw,
            connect_s: connect.as_secs_f64(),
            failed_attempts: failed,
            relay_rss_mib: rss / 1024.0,
            kib_per_added_connection: (rss - prev_rss) / (n - prev_n).max(1) as f64,
            relay_idle_cpu_pct: cpu,
        });
        prev_rss = rss;
        prev_n = n;
    };
    let t = Instant::now();
    let f0 = fleet.failures.load(Relaxed);
    for p in peers {
        let ep = endpoint_for(opened, &mut endpoints)?;
        opened += 1;
        tasks.spawn(hold(
            Kind::Authenticated(Box::new(p), net.roster_version),
            ep,
            addr,
            fleet.clone(),
            stop_rx.clone(),
        ));
    }
    wait_until(&fleet, o.connect_timeout, "authenticated sessions", |f| {
        f.up_auth.load(Relaxed) == n_auth
    })
    .await?;
    let (connect, failed) = (t.elapsed(), fleet.failures.load(Relaxed) - f0);
    let (rss, cpu) = measure().await;
    step(0, connect, failed, rss, cpu);

    // Then TLS-only connections, step by step.
    let mut n_raw = 0usize;
    for &target in &o.steps {
        if target <= n_raw {
            continue;
        }
        let t = Instant::now();
        let f0 = fleet.failures.load(Relaxed);
        for _ in n_raw..target {
            let ep = endpoint_for(opened, &mut endpoints)?;
            opened += 1;
            tasks.spawn(hold(
                Kind::TlsOnly,
                ep,
                addr,
                fleet.clone(),
                stop_rx.clone(),
            ));
        }
        n_raw = target;
        wait_until(&fleet, o.connect_timeout, "TLS-only connections", |f| {
            f.up_raw.load(Relaxed) == target
        })
        .await?;
        let (connect, failed) = (t.elapsed(), fleet.failures.load(Relaxed) - f0);
        let (rss, cpu) = measure().await;
        step(n_raw, connect, failed, rss, cpu);
    }
    let bench_rss_mib = stats::rss_kib(std::process::id()).unwrap_or(0) as f64 / 1024.0;

    let restart = if o.restart {
        fleet.epoch.store(1, Relaxed);
        relay.kill9()?;
        drop(relay);
        relay = RelayProc::start(binary, &net, &log).await?;
        let started = relay.started;
        let cpu = CpuMeter::start(relay.pid());
        let bench_cpu = CpuMeter::start(std::process::id());
        let failures_before = fleet.failures.load(Relaxed);
        wait_until(
            &fleet,
            o.connect_timeout,
            "reconnection after restart",
            |f| f.back_auth.load(Relaxed) == n_auth && f.back_raw.load(Relaxed) == n_raw,
        )
        .await?;
        let at = |ns: u64| fleet.t0 + Duration::from_nanos(ns);
        let ms = |t: Instant| t.saturating_duration_since(started).as_secs_f64() * 1e3;
        let mut back_us: Vec<u64> = fleet
            .back_ns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|ns| (ms(at(*ns)) * 1e3) as u64)
            .collect();
        let back = stats::Percentiles::of(&mut back_us);
        let auth_at = at(fleet.last_auth_ns.load(Relaxed));
        let raw_at = if n_raw > 0 {
            at(fleet.last_raw_ns.load(Relaxed))
        } else {
            auth_at
        };
        Some(Restart {
            connections: n_auth + n_raw,
            listening_ms: ms(relay.listening_at),
            all_authenticated_ms: ms(auth_at),
            all_ms: ms(auth_at.max(raw_at)),
            back_p50_ms: back.p50_us as f64 / 1e3,
            back_p99_ms: back.p99_us as f64 / 1e3,
            failed_attempts: fleet.failures.load(Relaxed) - failures_before,
            relay_cpu_pct: cpu.percent().unwrap_or(f64::NAN),
            bench_cpu_pct: bench_cpu.percent().unwrap_or(f64::NAN),
        })
    } else {
        None
    };

    let _ = stop_tx.send(true);
    while tasks.join_next().await.is_some() {}
    for ep in &endpoints {
        ep.close(0u32.into(), b"benchmark done");
    }
    relay.terminate(Duration::from_secs(10)).await;
    Ok(IdleReport {
        relay_base_rss_mib: base / 1024.0,
        steps,
        restart,
        bench_rss_mib,
        client_endpoints: endpoints.len(),
        load_avg_before,
    })
}
