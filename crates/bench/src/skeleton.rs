//! The skeleton fan-out: what a relay *process* costs a paced fan-out on this machine, with
//! everything the relay does for a message taken away but the hops.
//!
//! [`crate::floor`] measures the disk alone. This measures the rest of the path a message
//! takes in `fanout37`, as bare as it can be made, with the same shape:
//!
//! - a forwarder in a process of its own ([`forward`], run as `hotline-bench
//!   skeleton-forwarder`, on a tokio runtime with a worker a CPU, as the relay's), one task on
//!   one UDP socket: it reads a datagram and sends it on, as it came, to each recipient in
//!   turn. No QUIC, no TLS, no signature, no store, no hand-off to another thread, no task a
//!   recipient: a real relay does all of that and more;
//! - in this process, one sender, paced as `fanout37` paces (the runtime's timer, a message
//!   when it is due), stamping each datagram with its send time; and N recipients, each with
//!   a UDP socket and a task of its own, which make each datagram durable in the shared group
//!   log ([`crate::grouplog`], the one `fanout37`'s recipients use) before reading the next.
//!
//! So a delivery's end-to-end time here is what the machine's threads, wake-ups, loopback
//! network and disk cost a fan-out of that shape before any of the relay's work. No relay of
//! this shape (a process the recipients reach over the network, 37 recipients and their
//! durability on the same two CPUs and disk) can be faster on the same machine at the same
//! time; `fanout37`'s figures above these are what the relay's own work adds.
//!
//! Datagrams: a tag byte ([`HELLO`], [`DATA`], [`BYE`]), then for data the message's index
//! (`u32`) and its send time (`u64` ns after the run's start, little-endian), then the body.
//! A lost datagram (none is expected on loopback at these rates) is counted, not retried.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde::Serialize;
use tokio::io::AsyncBufReadExt as _;
use tokio::net::UdpSocket;

use crate::client::Durability;
use crate::grouplog::GroupLog;
use crate::stats::{self, CpuMeter, Percentiles, SwitchMeter};
use crate::traffic::{log_label, DeliveryTimes, E2eSplit};

/// A recipient's greeting; the forwarder answers it with the same byte.
pub const HELLO: u8 = 0;
/// A message to forward.
pub const DATA: u8 = 1;
/// The end of the run: the forwarder exits.
pub const BYE: u8 = 2;
/// A data datagram's header: tag, index, send time.
const HEADER: usize = 1 + 4 + 8;
/// The largest datagram sent (the header and a 60 KiB body at most).
const DATAGRAM_MAX: usize = 64 << 10;
/// How long a recipient waits for the forwarder's answer to a greeting, and how often it
/// greets.
const HELLO_WAIT: Duration = Duration::from_millis(500);
const HELLO_TRIES: usize = 10;
/// How long the forwarder process may take to say where it listens, and to exit after
/// [`BYE`].
const CHILD_WAIT: Duration = Duration::from_secs(10);

/// Where the forwarder runs.
#[derive(Clone, Debug)]
pub enum Forwarder {
    /// A child process: this program (`hotline-bench`) run as `skeleton-forwarder`.
    Process(PathBuf),
    /// A task in this process (for the smoke test: its CPU is then not its own).
    InProcess,
}

/// What to run.
#[derive(Clone, Debug)]
pub struct SkeletonOptions {
    /// Messages per second.
    pub rate: f64,
    /// How long to send.
    pub duration: Duration,
    /// Recipients of every message.
    pub recipients: usize,
    /// Body bytes of each message.
    pub body_bytes: usize,
    /// `Group` (the shared group log) or `None`.
    pub durability: Durability,
    /// How long to wait for the last deliveries after sending stops.
    pub drain_timeout: Duration,
    /// Where the forwarder runs.
    pub forwarder: Forwarder,
}

/// What the run measured.
#[derive(Clone, Debug, Serialize)]
pub struct SkeletonReport {
    /// Messages per second asked for.
    pub rate_per_s: f64,
    /// Seconds of sending.
    pub duration_s: f64,
    /// Recipients of every message.
    pub recipients: usize,
    /// Messages sent.
    pub sent: usize,
    /// Deliveries made durable (at most `sent × recipients`).
    pub delivered: usize,
    /// Deliveries that never arrived.
    pub lost: usize,
    /// Send → durable at the recipient, every delivery.
    pub e2e: Percentiles,
    /// The same split at the recipient's read as `fanout37` prints.
    pub e2e_split: E2eSplit,
    /// How recipients made deliveries durable.
    pub durability: Durability,
    /// The group log's syncs a message sent (group durability only).
    pub clients_log_syncs_per_msg: Option<f64>,
    /// A batch's mean wait for the log's thread, ms.
    pub clients_log_wait_ms_mean: Option<f64>,
    /// A group's mean write and sync, ms.
    pub clients_log_sync_ms_mean: Option<f64>,
    /// The forwarder's CPU per message sent, µs (a forwarder process only).
    pub forwarder_us_per_msg: Option<f64>,
    /// The forwarder's voluntary context switches per message sent (a forwarder process
    /// only): each a thread going to sleep, most followed by a wake-up.
    pub forwarder_sleeps_per_msg: Option<f64>,
    /// The machine's load average (one minute) at the end.
    pub load_avg: f64,
    /// The guest's halt-polling limit, ns ([`stats::guest_halt_poll_ns`]).
    pub guest_halt_poll_ns: Option<u64>,
}

impl SkeletonReport {
    /// One summary line.
    pub fn line(&self) -> String {
        let s = &self.e2e_split;
        let opt = |v: Option<f64>, digits: usize| match v {
            Some(v) => format!("{v:.digits$}"),
            None => "-".into(),
        };
        let log = log_label(
            self.clients_log_syncs_per_msg,
            self.clients_log_wait_ms_mean,
            self.clients_log_sync_ms_mean,
        );
        format!(
            "skeleton{n} rate={rate}/s {dur:.0}s: e2e ms p50/p99/max {e2e} (read p50/p99 {read}, first read {first}, read to durable {held}) | forwarder {fus} us/msg sleeps/msg {fsl} | sent {sent} delivered {del} lost {lost} | durability {d:?}{log} | load {load:.2}{hp}",
            n = self.recipients,
            rate = self.rate_per_s,
            dur = self.duration_s,
            e2e = self.e2e.ms(),
            read = s.read.p50_p99_ms(),
            first = s.first_read.p50_p99_ms(),
            held = s.then_durable.p50_p99_ms(),
            fus = opt(self.forwarder_us_per_msg, 0),
            fsl = opt(self.forwarder_sleeps_per_msg, 1),
            sent = self.sent,
            del = self.delivered,
            lost = self.lost,
            d = self.durability,
            load = self.load_avg,
            hp = stats::halt_poll_label(self.guest_halt_poll_ns),
        )
    }
}

/// The forwarder: binds a UDP socket on 127.0.0.1, prints `listening ADDR` on stdout, and
/// forwards until [`BYE`]. Recipients join with [`HELLO`].
pub async fn forward() -> anyhow::Result<()> {
    let sock = UdpSocket::bind(("127.0.0.1", 0)).await?;
    println!("listening {}", sock.local_addr()?);
    use std::io::Write as _;
    std::io::stdout().flush()?;
    serve(sock).await
}

/// The forwarding loop on `sock`.
async fn serve(sock: UdpSocket) -> anyhow::Result<()> {
    let mut recipients: Vec<SocketAddr> = Vec::new();
    let mut buf = vec![0u8; DATAGRAM_MAX];
    loop {
        let (n, from) = sock.recv_from(&mut buf).await?;
        match buf[..n].first() {
            Some(&DATA) => {
                for r in &recipients {
                    sock.send_to(&buf[..n], r).await?;
                }
            }
            Some(&HELLO) => {
                if !recipients.contains(&from) {
                    recipients.push(from);
                }
                sock.send_to(&[HELLO], from).await?;
            }
            Some(&BYE) => return Ok(()),
            _ => eprintln!("skeleton forwarder: {n}-byte datagram from {from} ignored"),
        }
    }
}

/// The forwarder, started.
struct Running {
    addr: SocketAddr,
    child: Option<tokio::process::Child>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Running {
    async fn start(f: &Forwarder) -> anyhow::Result<Self> {
        match f {
            Forwarder::InProcess => {
                let sock = UdpSocket::bind(("127.0.0.1", 0)).await?;
                let addr = sock.local_addr()?;
                Ok(Self {
                    addr,
                    child: None,
                    task: Some(tokio::spawn(serve(sock))),
                })
            }
            Forwarder::Process(program) => {
                let mut child = tokio::process::Command::new(program)
                    .arg("skeleton-forwarder")
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::piped())
                    .kill_on_drop(true)
                    .spawn()
                    .with_context(|| {
                        format!("starting {} skeleton-forwarder", program.display())
                    })?;
                let stdout = child.stdout.take().context("the forwarder's stdout")?;
                let mut lines = tokio::io::BufReader::new(stdout).lines();
                let line = tokio::time::timeout(CHILD_WAIT, lines.next_line())
                    .await
                    .context("the forwarder did not say where it listens")??
                    .context("the forwarder exited before it listened")?;
                let addr = line
                    .strip_prefix("listening ")
                    .and_then(|a| a.parse().ok())
                    .with_context(|| format!("the forwarder said {line:?}"))?;
                Ok(Self {
                    addr,
                    child: Some(child),
                    task: None,
                })
            }
        }
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }

    /// Sends [`BYE`] and waits for the forwarder to end (a child that does not is killed).
    async fn stop(mut self, sock: &UdpSocket) -> anyhow::Result<()> {
        sock.send_to(&[BYE], self.addr).await?;
        if let Some(t) = self.task.take() {
            return tokio::time::timeout(CHILD_WAIT, t)
                .await
                .context("the forwarder task did not end")??;
        }
        if let Some(mut c) = self.child.take() {
            match tokio::time::timeout(CHILD_WAIT, c.wait()).await {
                Ok(status) => {
                    let status = status?;
                    if !status.success() {
                        bail!("the forwarder exited with {status}");
                    }
                }
                Err(_) => {
                    c.kill().await?;
                    bail!("the forwarder did not exit after BYE; killed");
                }
            }
        }
        Ok(())
    }
}

/// Runs the skeleton fan-out; the group log, if any, is written in `dir` and removed after.
pub async fn run(dir: &Path, o: &SkeletonOptions) -> anyhow::Result<SkeletonReport> {
    anyhow::ensure!(
        o.rate > 0.0 && o.rate.is_finite(),
        "the skeleton needs a positive rate"
    );
    anyhow::ensure!(o.recipients > 0, "the skeleton needs a recipient");
    anyhow::ensure!(
        HEADER + o.body_bytes <= DATAGRAM_MAX,
        "a skeleton body is at most {} bytes",
        DATAGRAM_MAX - HEADER
    );
    let log = match o.durability {
        Durability::Group => {
            std::fs::create_dir_all(dir)?;
            Some(GroupLog::shared(&dir.join("skeleton-group.log"))?)
        }
        Durability::None => None,
        d => bail!(
            "the skeleton's recipients make deliveries durable with `group` or `none`, not {d:?}"
        ),
    };
    let result = fan_out(o, log.clone()).await;
    drop(log);
    let _ = std::fs::remove_file(dir.join("skeleton-group.log"));
    result
}

async fn fan_out(
    o: &SkeletonOptions,
    log: Option<Arc<GroupLog>>,
) -> anyhow::Result<SkeletonReport> {
    let fwd = Running::start(&o.forwarder).await?;
    let messages = ((o.rate * o.duration.as_secs_f64()).round() as usize).max(1);
    let start = Instant::now() + Duration::from_millis(100);
    let deadline = start + o.duration + o.drain_timeout;
    let mut tasks = Vec::with_capacity(o.recipients);
    for _ in 0..o.recipients {
        let sock = UdpSocket::bind(("127.0.0.1", 0)).await?;
        join(&sock, fwd.addr).await?;
        tasks.push(tokio::spawn(recipient(
            sock,
            log.clone(),
            start,
            messages,
            deadline,
        )));
    }
    let sender = UdpSocket::bind(("127.0.0.1", 0)).await?;
    let pid = fwd.pid();
    let cpu = pid.map(CpuMeter::start);
    let sleeps = pid.map(|p| SwitchMeter::start(p, None));
    let log_before = log.as_ref().map(|l| l.totals());
    let mut datagram = vec![0x5Au8; HEADER + o.body_bytes];
    datagram[0] = DATA;
    tokio::time::sleep_until(start.into()).await;
    for k in 0..messages {
        let due = start + Duration::from_secs_f64(k as f64 / o.rate);
        tokio::time::sleep_until(due.into()).await;
        datagram[1..5].copy_from_slice(&(k as u32).to_le_bytes());
        let sent_ns = start.elapsed().as_nanos() as u64;
        datagram[5..HEADER].copy_from_slice(&sent_ns.to_le_bytes());
        sender.send_to(&datagram, fwd.addr).await?;
    }
    let mut deliveries = Vec::with_capacity(messages * o.recipients);
    let mut first_error = None;
    for t in tasks {
        match t.await? {
            Ok(d) => deliveries.extend(d),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    let per_msg = |v: Option<f64>, scale: f64| v.map(|v| v * scale / messages as f64);
    let forwarder_us_per_msg = per_msg(cpu.and_then(|c| c.seconds()), 1e6);
    let forwarder_sleeps_per_msg = per_msg(sleeps.and_then(|s| s.count()).map(|n| n as f64), 1.0);
    let log_totals = log
        .as_ref()
        .zip(log_before)
        .map(|(l, before)| l.totals().since(&before));
    fwd.stop(&sender).await?;
    if let Some(e) = first_error {
        return Err(e.context("a skeleton recipient failed"));
    }
    let e2e = Percentiles::of(
        &mut deliveries
            .iter()
            .map(|d| u64::from(d.durable_us))
            .collect::<Vec<_>>(),
    );
    Ok(SkeletonReport {
        rate_per_s: o.rate,
        duration_s: o.duration.as_secs_f64(),
        recipients: o.recipients,
        sent: messages,
        delivered: deliveries.len(),
        lost: messages * o.recipients - deliveries.len(),
        e2e,
        e2e_split: E2eSplit::of(deliveries.iter(), messages),
        durability: o.durability,
        clients_log_syncs_per_msg: log_totals.map(|t| t.groups as f64 / messages as f64),
        clients_log_wait_ms_mean: log_totals.and_then(|t| t.wait_ms_mean()),
        clients_log_sync_ms_mean: log_totals.and_then(|t| t.sync_ms_mean()),
        forwarder_us_per_msg,
        forwarder_sleeps_per_msg,
        load_avg: stats::load_avg(),
        guest_halt_poll_ns: stats::guest_halt_poll_ns(),
    })
}

/// Greets the forwarder from `sock` until it answers.
async fn join(sock: &UdpSocket, forwarder: SocketAddr) -> anyhow::Result<()> {
    let mut answer = [0u8; 16];
    for _ in 0..HELLO_TRIES {
        sock.send_to(&[HELLO], forwarder).await?;
        if let Ok(r) = tokio::time::timeout(HELLO_WAIT, sock.recv_from(&mut answer)).await {
            let (n, from) = r?;
            if from == forwarder && answer[..n] == [HELLO] {
                return Ok(());
            }
        }
    }
    bail!("the skeleton forwarder at {forwarder} did not answer {HELLO_TRIES} greetings")
}

/// A recipient: reads each datagram, makes it durable, and notes its times, until it has
/// all `messages` or `deadline` passes.
async fn recipient(
    sock: UdpSocket,
    log: Option<Arc<GroupLog>>,
    start: Instant,
    messages: usize,
    deadline: Instant,
) -> anyhow::Result<Vec<DeliveryTimes>> {
    let mut got = Vec::with_capacity(messages);
    let mut buf = vec![0u8; DATAGRAM_MAX];
    while got.len() < messages {
        let n = match tokio::time::timeout_at(deadline.into(), sock.recv(&mut buf)).await {
            Ok(r) => r?,
            Err(_) => break,
        };
        let read = Instant::now();
        if n < HEADER || buf[0] != DATA {
            continue;
        }
        let message = u32::from_le_bytes(buf[1..5].try_into()?);
        let sent = start + Duration::from_nanos(u64::from_le_bytes(buf[5..HEADER].try_into()?));
        let durable = match &log {
            Some(l) => l.append_durable(buf[..n].to_vec()).await?,
            None => read,
        };
        let us = |t: Instant| t.saturating_duration_since(sent).as_micros() as u32;
        got.push(DeliveryTimes {
            message,
            read_us: us(read),
            durable_us: us(durable),
        });
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(durability: Durability) -> SkeletonOptions {
        SkeletonOptions {
            rate: 200.0,
            duration: Duration::from_millis(100),
            recipients: 3,
            body_bytes: 100,
            durability,
            drain_timeout: Duration::from_secs(10),
            forwarder: Forwarder::InProcess,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_message_reaches_every_recipient_durably() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = run(dir.path(), &options(Durability::Group))
            .await
            .expect("run");
        assert_eq!((r.sent, r.delivered, r.lost), (20, 60, 0));
        assert_eq!((r.e2e.n, r.e2e_split.first_read.n), (60, 20));
        assert!(r.e2e.p50_us >= r.e2e_split.read.p50_us, "{r:?}");
        let syncs = r.clients_log_syncs_per_msg.expect("the group log's syncs");
        assert!(syncs > 0.0 && syncs <= 3.0, "{syncs}");
        assert!(
            r.clients_log_sync_ms_mean.is_some_and(|ms| ms > 0.0),
            "{r:?}"
        );
        let line = r.line();
        assert!(
            line.starts_with("skeleton3 rate=200/s 0s: e2e ms"),
            "{line}"
        );
        assert!(line.contains("delivered 60 lost 0"), "{line}");
        // The log is removed; the forwarder has ended (its task answered BYE).
        assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn without_durability_a_delivery_is_done_when_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = run(dir.path(), &options(Durability::None))
            .await
            .expect("run");
        assert_eq!(r.delivered, 60);
        assert_eq!(r.e2e_split.then_durable.max_us, 0);
        assert!(r.clients_log_syncs_per_msg.is_none());
    }

    #[tokio::test]
    async fn bad_options_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let o = options(Durability::None);
        for bad in [
            SkeletonOptions {
                rate: 0.0,
                ..o.clone()
            },
            SkeletonOptions {
                recipients: 0,
                ..o.clone()
            },
            SkeletonOptions {
                body_bytes: DATAGRAM_MAX,
                ..o.clone()
            },
            SkeletonOptions {
                durability: Durability::Fsync,
                ..o.clone()
            },
        ] {
            assert!(run(dir.path(), &bad).await.is_err(), "{bad:?}");
        }
    }
}
