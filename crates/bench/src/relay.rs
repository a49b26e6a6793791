//! The system under test: the real `hotline relay` as a child process (so that its memory
//! and CPU are its own, and a kill is a real kill), or in this process for the smoke test.

use std::io::BufRead as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use crate::network::Network;

/// How long the relay may take to log that it listens.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a killed relay may take to be gone.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// The `hotline` binary next to this executable (`target/release/hotline` when the bench is
/// run with `cargo run --release`).
pub fn default_binary() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("hotline")))
        .unwrap_or_else(|| PathBuf::from("hotline"))
}

type Lines = Arc<Mutex<Vec<(Instant, String)>>>;

/// A `hotline relay --config …` child process.
pub struct RelayProc {
    child: Child,
    /// When the process was started.
    pub started: Instant,
    /// When it logged `relay listening`.
    pub listening_at: Instant,
    /// The QUIC address it bound.
    pub addr: SocketAddr,
    /// Its metrics address.
    pub metrics: Option<SocketAddr>,
    lines: Lines,
    seen: tokio::sync::watch::Receiver<usize>,
}

fn field_addr(line: &str) -> Option<SocketAddr> {
    line.split("addr=")
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

impl RelayProc {
    /// Starts the relay of `net` with `binary`, appending its log to `log`, and waits until
    /// it listens.
    pub async fn start(binary: &Path, net: &Network, log: &Path) -> anyhow::Result<Self> {
        if !binary.exists() {
            bail!(
                "{} not found: build it with `cargo build --release -p hotline-cli`, or pass --hotline PATH",
                binary.display()
            );
        }
        let started = Instant::now();
        let mut child = Command::new(binary)
            .args(["relay", "--config"])
            .arg(&net.config)
            .current_dir(&net.dir)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let stderr = child.stderr.take().context("relay stderr")?;
        let lines: Lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, seen) = tokio::sync::watch::channel(0usize);
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("{}", log.display()))?;
        {
            let lines = lines.clone();
            std::thread::spawn(move || {
                use std::io::Write as _;
                for line in std::io::BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    let at = Instant::now();
                    let _ = writeln!(file, "{line}");
                    let n = {
                        let mut v = lines.lock().unwrap_or_else(|p| p.into_inner());
                        v.push((at, line));
                        v.len()
                    };
                    tx.send_replace(n);
                }
            });
        }
        let mut me = Self {
            child,
            started,
            listening_at: started,
            addr: ([127, 0, 0, 1], 0).into(),
            metrics: None,
            lines,
            seen,
        };
        let (at, line) = me.wait_line("relay listening", START_TIMEOUT).await?;
        me.listening_at = at;
        me.addr = field_addr(&line).with_context(|| format!("no addr= in {line:?}"))?;
        // The metrics line follows at once (the CLI logs it after spawning the relay).
        if let Ok((_, m)) = me.wait_line("metrics on", Duration::from_secs(5)).await {
            me.metrics = field_addr(&m);
        }
        Ok(me)
    }

    /// Waits until a log line contains `needle`; its time of arrival and text.
    pub async fn wait_line(
        &mut self,
        needle: &str,
        timeout: Duration,
    ) -> anyhow::Result<(Instant, String)> {
        let find = |lines: &Lines| {
            lines
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .find(|(_, l)| l.contains(needle))
                .cloned()
        };
        let lines = self.lines.clone();
        let r = tokio::time::timeout(timeout, self.seen.wait_for(|_| find(&lines).is_some()))
            .await
            .map(|r| r.map(|_| ()));
        match r {
            Ok(Ok(_)) => find(&self.lines).context("line vanished"),
            Ok(Err(_)) => bail!(
                "relay exited before logging {needle:?}:\n{}",
                self.log_tail()
            ),
            Err(_) => bail!(
                "relay did not log {needle:?} within {timeout:?}:\n{}",
                self.log_tail()
            ),
        }
    }

    /// The last lines of the log, for error messages.
    pub fn log_tail(&self) -> String {
        let v = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        let from = v.len().saturating_sub(20);
        v[from..]
            .iter()
            .map(|(_, l)| l.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Log lines containing `needle`.
    pub fn lines_with(&self, needle: &str) -> Vec<String> {
        self.lines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(_, l)| l.contains(needle))
            .map(|(_, l)| l.clone())
            .collect()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, and reap, waiting at most [`KILL_WAIT`]: a relay stuck in the kernel (a
    /// hung disk) is an error, not a bench that hangs. Polled: the bench has no events to
    /// wait on for another process's end but `try_wait`.
    pub fn kill9(&mut self) -> anyhow::Result<()> {
        let _ = self.child.kill();
        let deadline = Instant::now() + KILL_WAIT;
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => return Ok(()),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Ok(None) => bail!(
                    "relay (pid {}) still there {} s after SIGKILL",
                    self.pid(),
                    KILL_WAIT.as_secs()
                ),
                Err(e) => {
                    return Err(e).with_context(|| format!("waiting for relay pid {}", self.pid()))
                }
            }
        }
    }

    /// SIGTERM, and wait for the exit (at most `timeout`, then SIGKILL).
    pub async fn terminate(mut self, timeout: Duration) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if let Err(e) = self.kill9() {
            eprintln!("{e:#}");
        }
    }
}

impl Drop for RelayProc {
    fn drop(&mut self) {
        if let Err(e) = self.kill9() {
            eprintln!("{e:#}");
        }
    }
}

/// The relay under test, wherever it runs.
pub enum Relay {
    /// A child process of the real binary (every measurement).
    Process(RelayProc),
    /// In this process (the smoke test, which must not depend on a release build).
    InProcess(Box<hotline_relay::RelayHandle>),
}

impl Relay {
    /// Starts the relay for `net`: a process of `binary` if given, else in this process.
    pub async fn start(binary: Option<&Path>, net: &Network) -> anyhow::Result<Self> {
        match binary {
            Some(b) => Ok(Self::Process(
                RelayProc::start(b, net, &net.dir.join("relay.log")).await?,
            )),
            None => {
                let config = hotline_relay::RelayConfig::load(&net.config)?;
                Ok(Self::InProcess(Box::new(
                    hotline_relay::Relay::spawn(config).await?,
                )))
            }
        }
    }

    /// The QUIC address.
    pub fn addr(&self) -> SocketAddr {
        match self {
            Self::Process(p) => p.addr,
            Self::InProcess(h) => h.local_addr(),
        }
    }

    /// The metrics address.
    pub fn metrics(&self) -> Option<SocketAddr> {
        match self {
            Self::Process(p) => p.metrics,
            Self::InProcess(h) => h.metrics_addr(),
        }
    }

    /// The relay's process id when it runs as its own process.
    pub fn pid(&self) -> Option<u32> {
        match self {
            Self::Process(p) => Some(p.pid()),
            Self::InProcess(_) => None,
        }
    }

    /// Stops the relay cleanly.
    pub async fn stop(self) {
        match self {
            Self::Process(p) => p.terminate(Duration::from_secs(10)).await,
            Self::InProcess(h) => h.shutdown().await,
        }
    }
}

/// Reads the relay's Prometheus metrics (blocking HTTP on a helper thread); `None` if they
/// cannot be read.
pub async fn scrape(metrics: Option<SocketAddr>) -> Option<Metrics> {
    let addr = metrics?;
    tokio::task::spawn_blocking(move || {
        let text = ureq::get(&format!("http://{addr}/metrics"))
            .timeout(Duration::from_secs(5))
            .call()
            .ok()?
            .into_string()
            .ok()?;
        Some(Metrics::parse(&text))
    })
    .await
    .ok()
    .flatten()
}

/// The relay metrics the benchmark reads.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    /// Transactions committed.
    pub commits: f64,
    /// Items (submissions, receipts) in them.
    pub commit_items: f64,
    /// Syncs of the write-ahead log on the relay's sync thread (0 for a relay that syncs in
    /// its commits).
    pub wal_syncs: f64,
    /// Their seconds, together.
    pub wal_sync_seconds: f64,
    /// Messages accepted.
    pub accepted: f64,
    /// Messages written to nodes.
    pub deliveries: f64,
    /// Receipts stored.
    pub receipts_stored: f64,
    /// Messages queued, all recipients together.
    pub queued: f64,
    /// Open connections.
    pub connections: f64,
    /// A message's stages in the relay, in [`STAGES`] order, each as (sum of seconds,
    /// observations).
    pub stage_sums: [(f64, f64); 4],
    /// The same stages' cumulative histogram buckets: (upper bound in seconds, observations
    /// at or below it), as scraped.
    pub stage_buckets: [Vec<(f64, f64)>; 4],
}

/// The histograms of a message's stages in the relay, in the order the benchmark reports
/// them: read to hand-off to the writer (the checks and signature), the wait for the writer,
/// a commit (of any commit, with or without a submission; observed with each commit's batch
/// size, so its count is `commits`), commit to a recipient's stream.
const STAGES: [&str; 4] = [
    "hotline_relay_submit_check_seconds",
    "hotline_relay_writer_wait_seconds",
    "hotline_relay_commit_duration_seconds",
    "hotline_relay_fanout_seconds",
];

impl Metrics {
    /// The mean of each stage ([`STAGES`]) between `before` and `self`, in µs. `None` for a
    /// stage with no observation in between.
    pub fn stage_means_us(&self, before: &Self) -> [Option<f64>; 4] {
        std::array::from_fn(|i| {
            let (a, b) = (self.stage_sums[i], before.stage_sums[i]);
            let n = a.1 - b.1;
            (n > 0.0).then(|| (a.0 - b.0) * 1e6 / n)
        })
    }

    /// Each stage's `q` quantile between `before` and `self`, in µs, as the upper bound of
    /// the histogram bucket it falls in (the relay's stage buckets: 10, 25, 50, 100, 250,
    /// 500 µs, 1 ms and up; the commit's from 100 µs; infinite past the last), so a tail is
    /// bounded from above, not estimated. `None` for a stage with no observation in between.
    pub fn stage_quantiles_us(&self, before: &Self, q: f64) -> [Option<f64>; 4] {
        std::array::from_fn(|i| {
            let (after, before) = (&self.stage_buckets[i], &before.stage_buckets[i]);
            let count = |b: &[(f64, f64)], le: f64| {
                b.iter().find(|(l, _)| *l == le).map_or(0.0, |(_, n)| *n)
            };
            let total = after.last().map_or(0.0, |(le, n)| n - count(before, *le));
            if total <= 0.0 {
                return None;
            }
            // The rank of the quantile's observation (0.99 of 1,000 is the 990th), so that
            // rounding in `q * total` cannot move it to the next bucket.
            let rank = (q * total - 1e-9).ceil();
            after
                .iter()
                .find(|(le, n)| n - count(before, *le) >= rank)
                .map(|(le, _)| le * 1e6)
        })
    }

    fn parse(text: &str) -> Self {
        let mut m = Self::default();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let mut it = line.rsplitn(2, ' ');
            let (Some(v), Some(name)) = (it.next(), it.next()) else {
                continue;
            };
            let Ok(v) = v.parse::<f64>() else { continue };
            if let Some((i, rest)) = STAGES
                .iter()
                .enumerate()
                .find_map(|(i, stage)| Some((i, name.strip_prefix(stage)?)))
            {
                match rest {
                    "_sum" => m.stage_sums[i].0 = v,
                    "_count" => m.stage_sums[i].1 = v,
                    _ => {
                        // Rust parses Prometheus's `le="+Inf"` as infinity, as it should.
                        let le = rest
                            .strip_prefix("_bucket{le=\"")
                            .and_then(|r| r.strip_suffix("\"}"))
                            .and_then(|le| le.parse::<f64>().ok());
                        if let Some(le) = le {
                            m.stage_buckets[i].push((le, v));
                        }
                    }
                }
                continue;
            }
            match name {
                "hotline_relay_commit_batch_size_count" => m.commits = v,
                "hotline_relay_commit_batch_size_sum" => m.commit_items = v,
                "hotline_relay_wal_sync_duration_seconds_count" => m.wal_syncs = v,
                "hotline_relay_wal_sync_duration_seconds_sum" => m.wal_sync_seconds = v,
                "hotline_relay_messages_accepted_total" => m.accepted = v,
                "hotline_relay_deliveries_total" => m.deliveries = v,
                "hotline_relay_receipts_stored_total" => m.receipts_stored = v,
                "hotline_relay_connections" => m.connections = v,
                n if n.starts_with("hotline_relay_queue_depth") => m.queued += v,
                _ => {}
            }
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(wait: [u64; 4]) -> Metrics {
        let mut text = String::from("# HELP hotline_relay_writer_wait_seconds …\n");
        for (le, n) in ["0.00005", "0.0005", "0.001", "+Inf"].iter().zip(wait) {
            text += &format!("hotline_relay_writer_wait_seconds_bucket{{le=\"{le}\"}} {n}\n");
        }
        text += &format!("hotline_relay_writer_wait_seconds_count {}\n", wait[3]);
        Metrics::parse(&text)
    }

    /// The quantile is the bound of the bucket it falls in, counted between two scrapes.
    #[test]
    fn stage_quantiles_come_from_the_buckets_between_two_scrapes() {
        let before = snapshot([500, 500, 500, 500]);
        // 1,000 waits between the scrapes: 900 up to 50 µs, 90 more up to 0.5 ms, 9 more up
        // to 1 ms, one beyond.
        let after = snapshot([1400, 1490, 1499, 1500]);
        assert_eq!(after.stage_buckets[1].len(), 4);
        let q = |q| after.stage_quantiles_us(&before, q)[1];
        assert_eq!(q(0.5), Some(50.0));
        assert_eq!(q(0.9), Some(50.0));
        assert_eq!(q(0.99), Some(500.0));
        assert_eq!(q(0.999), Some(1000.0));
        assert_eq!(q(1.0), Some(f64::INFINITY));
        // No check, commit or fan-out was scraped, and no wait between equal scrapes.
        assert_eq!(after.stage_quantiles_us(&before, 0.99)[0], None);
        assert_eq!(after.stage_quantiles_us(&after, 0.99)[1], None);
    }
}
