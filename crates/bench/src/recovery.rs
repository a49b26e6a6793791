//! recovery: the relay holds a large backlog for one offline recipient, is killed
//! (SIGKILL), and restarts: how long until it is ready, and until the recipient, once
//! connected, has everything durably and receipted.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use hotline_proto::frame::RelayToNode;
use hotline_proto::Audience;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::client::{self, Inbox, Store};
use crate::network::{Network, SECRETARIAT};
use crate::relay::{self, Relay, RelayProc};
use crate::stats::{self, CpuMeter};
use crate::traffic::{self, CompleteOn, SenderSpec, Traffic};
use crate::{run_dir, Common};

/// The offline recipient whose queue holds the backlog.
const RECIPIENT: &str = "KAZ";

/// Options of the recovery workload.
#[derive(Clone, Debug)]
pub struct RecoveryOptions {
    /// Messages queued before the kill.
    pub queued: usize,
    /// Members submitting them in parallel.
    pub senders: usize,
    /// Unaccepted submissions allowed per sender while loading.
    pub window: usize,
    /// How long the drain may take.
    pub drain_timeout: Duration,
}

/// What the recovery workload measured.
#[derive(Clone, Debug, Serialize)]
pub struct RecoveryReport {
    /// Messages accepted (and queued) before the kill.
    pub queued: u64,
    /// Loading time, seconds, and its rate.
    pub load_s: f64,
    /// Accepted per second while loading.
    pub load_per_s: f64,
    /// Size of the relay's data directory at the kill, MiB.
    pub data_mib: f64,
    /// The queue size the restarted relay reported (`store open … queued=`).
    pub queued_after_restart: Option<u64>,
    /// Restart → `relay listening` in its log, ms.
    pub listening_ms: f64,
    /// Restart → first successful authentication, ms.
    pub first_auth_ms: f64,
    /// Restart → the recipient holds every message durably and the relay has stored every
    /// receipt, ms.
    pub drained_ms: f64,
    /// Messages per second from the recipient's authentication to drained.
    pub drain_per_s: f64,
    /// Messages the recipient received.
    pub delivered: u64,
    /// Receipts it signed, and the relay stored.
    pub receipts: u64,
    /// Relay queue depth after the drain (from its metrics), if read.
    pub queued_after_drain: Option<f64>,
    /// Relay CPU from restart to drained, percent of one core.
    pub relay_cpu_pct: f64,
    /// Relay resident memory after the drain, MiB.
    pub relay_rss_mib: f64,
    /// 1-minute load average before the run.
    pub load_avg_before: f64,
    /// Median fsync'd 1 KiB append before the run, ms.
    pub fsync_probe_ms: f64,
}

impl RecoveryReport {
    /// One summary line.
    pub fn line(&self) -> String {
        format!(
            "recovery {q} queued ({data:.0} MiB on disk, loaded at {lr:.0}/s): restart → listening {l:.0} ms, first auth {a:.0} ms, drained {d:.0} ms ({dr:.0} msgs/s, {rc} receipts) | queued after restart {qr} after drain {qd} | relay cpu {cpu:.0}% rss {rss:.1} MiB | load {load:.2} fsync {fs:.2}ms",
            q = self.queued,
            data = self.data_mib,
            lr = self.load_per_s,
            l = self.listening_ms,
            a = self.first_auth_ms,
            d = self.drained_ms,
            dr = self.drain_per_s,
            rc = self.receipts,
            qr = self
                .queued_after_restart
                .map(|v| v.to_string())
                .unwrap_or_else(|| "?".into()),
            qd = self
                .queued_after_drain
                .map(|v| format!("{v:.0}"))
                .unwrap_or_else(|| "?".into()),
            cpu = self.relay_cpu_pct,
            rss = self.relay_rss_mib,
            load = self.load_avg_before,
            fs = self.fsync_probe_ms,
        )
    }
}

fn dir_bytes(p: &std::path::Path) -> u64 {
    std::fs::read_dir(p)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Runs the recovery workload (the relay must be a process: it is killed).
pub async fn run(c: &Common, o: &RecoveryOptions) -> anyhow::Result<RecoveryReport> {
    let Some(binary) = c.hotline.as_deref() else {
        bail!("the recovery workload kills the relay process: give the hotline binary");
    };
    let load_avg_before = stats::load_avg();
    let net = Network::create(&run_dir(&c.dir, "recovery"), &[], crate::DEFAULT_LIMITS)?;
    let fsync_probe_ms = stats::fsync_probe_ms(&net.dir);
    let log = net.dir.join("relay.log");
    let first = RelayProc::start(binary, &net, &log).await?;
    net.set_listen(first.addr)?;
    let relay = Relay::Process(first);

    // Load: members write to one offline recipient until the backlog is there.
    let recipient = net.peer(RECIPIENT)?.clone();
    let senders: Vec<SenderSpec> = net
        .peers
        .iter()
        .filter(|p| p.role == hotline_proto::Role::Member && p.id != recipient.id)
        .take(o.senders.max(1))
        .map(|p| SenderSpec {
            peer: p.clone(),
            audience: Audience::Participants(vec![recipient.id.clone()]),
            fanout: 1,
        })
        .collect();
    let load = Traffic {
        name: "recovery-load".into(),
        senders,
        recipients: vec![],
        rate: None,
        duration: Duration::from_secs(3_600),
        window: o.window,
        body_bytes: c.body_bytes,
        durability: c.durability,
        receipt_pace: Duration::ZERO,
        max_messages: o.queued,
        drain_timeout: c.drain_timeout,
        complete_on: CompleteOn::Accepted,
        deliveries_csv: None,
    };
    let loaded = traffic::run(&load, &net, &relay).await?;
    if loaded.accepted as usize != loaded.planned as usize {
        bail!(
            "loading accepted {} of {} messages: {:?}",
            loaded.accepted,
            loaded.planned,
            loaded.errors
        );
    }
    let Relay::Process(mut first) = relay else {
        bail!("the relay is not a process");
    };
    // Crash.
    first.kill9()?;
    drop(first);
    let data_mib = dir_bytes(&net.data_dir()) as f64 / (1024.0 * 1024.0);

    // Restart, and time it.
    let mut relay = RelayProc::start(binary, &net, &log).await?;
    let started = relay.started;
    let cpu = CpuMeter::start(relay.pid());
    let queued_after_restart = relay
        .wait_line("store open", Duration::from_secs(5))
        .await
        .ok()
        .and_then(|(_, l)| {
            l.split("queued=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        });
    let addr = relay.addr;
    let sec = net.peer(SECRETARIAT)?.clone();
    let ep = client::endpoint(net.fingerprint)?;
    let v = net.roster_version;
    let probe = {
        let ep = ep.clone();
        async move {
            let s = client::session(&ep, addr, &sec, v).await?;
            let at = Instant::now();
            s.conn.close(0u32.into(), b"probe done");
            anyhow::Ok(at)
        }
    };
    let drain = {
        let ep = ep.clone();
        let recipient = recipient.clone();
        let store_dir = net.dir.join("clients-recovery");
        let expected = loaded.accepted;
        let durability = c.durability;
        let timeout = o.drain_timeout;
        async move {
            std::fs::create_dir_all(&store_dir)?;
            let store = Store::open(durability, &store_dir.join(recipient.id.as_str()))?;
            let s = client::session(&ep, addr, &recipient, v).await?;
            let authed = Instant::now();
            let hotline_net::Session {
                conn,
                reader,
                mut writer,
                ..
            } = s;
            // Receipts each batch at once: this loop has no timer for a paced tail, and its
            // batches are large anyway (233 receipts for 100,000 messages in the fifth
            // round's runs, ~430 each, near the node's 512 that leave at once).
            let mut inbox = Inbox::new(recipient, store, Duration::ZERO);
            let (tx, mut rx) = mpsc::channel(4_096);
            let reader_task = tokio::spawn(client::read_frames(reader, tx));
            let (mut delivered, mut receipts, mut stored) = (0u64, 0u64, 0u64);
            let deadline = Instant::now() + timeout;
            while delivered < expected || stored < receipts {
                let f = tokio::time::timeout_at(deadline.into(), rx.recv())
                    .await
                    .map_err(|_| {
                        anyhow::anyhow!(
                            "drain not done within {timeout:?}: {delivered} of {expected} delivered"
                        )
                    })?
                    .context("relay closed the session")??;
                let mut batch: Vec<RelayToNode> = vec![f];
                while let Ok(f) = rx.try_recv() {
                    batch.push(f?);
                    if batch.len() >= 4_096 {
                        break;
                    }
                }
                let h = inbox.handle(batch, |_| None).await?;
                if let Some(r) = h.rejections.first() {
                    bail!("refused: {r}");
                }
                delivered += h.fresh.len() as u64;
                receipts += h.receipts;
                stored += h.stored;
                if !h.frames.is_empty() {
                    writer.write_raw(&h.frames).await?;
                }
            }
            let done = Instant::now();
            reader_task.abort();
            conn.close(0u32.into(), b"drained");
            anyhow::Ok((authed, done, delivered, receipts))
        }
    };
    let (probe, drain) = tokio::join!(probe, drain);
    let first_auth = probe?;
    let (authed, done, delivered, receipts) = drain?;
    let relay_cpu_pct = cpu.percent().unwrap_or(f64::NAN);
    let relay_rss_mib = stats::rss_kib(relay.pid()).unwrap_or(0) as f64 / 1024.0;
    let queued_after_drain = relay::scrape(relay.metrics).await.map(|m| m.queued);
    let ms = |t: Instant| t.saturating_duration_since(started).as_secs_f64() * 1e3;
    let report = RecoveryReport {
        queued: loaded.accepted,
        load_s: loaded.span_s,
        load_per_s: loaded.accepted_per_s,
        data_mib,
        queued_after_restart,
        listening_ms: ms(relay.listening_at),
        first_auth_ms: ms(first_auth),
        drained_ms: ms(done),
        drain_per_s: delivered as f64 / done.duration_since(authed).as_secs_f64(),
        delivered,
        receipts,
        queued_after_drain,
        relay_cpu_pct,
        relay_rss_mib,
        load_avg_before,
        fsync_probe_ms,
    };
    ep.close(0u32.into(), b"benchmark done");
    relay.terminate(Duration::from_secs(10)).await;
    Ok(report)
}
