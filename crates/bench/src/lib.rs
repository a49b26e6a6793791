//! `hotline-bench`: benchmarks of the CICA Hotline relay.
//!
//! The relay is the system under test and runs as its own process (the real `hotline`
//! binary, real durability); the load generator stands in for the nodes with lightweight
//! protocol clients — real QUIC, real authentication, real signed messages and cumulative
//! delivered receipts, and a durable append (or SQLite commit) per batch of deliveries.
//!
//! Workloads: [`fanout37`] (the Secretariat to the other 37 CICA participants), [`p2p`]
//! (independent sender → recipient pairs), [`idle::run`] (idle connections, memory, and
//! reconnection after a relay crash) and [`recovery::run`] (restart with a large backlog);
//! [`floor::run`] measures what the disk alone allows a durable fan-out, and
//! [`skeleton::run`] what a bare forwarding process, the network and the disk allow it.
//! `docs/BENCHMARKS.md` has the figures and how to reproduce them.

#![warn(missing_docs)]

pub mod client;
pub mod floor;
pub mod grouplog;
pub mod idle;
pub mod network;
pub mod recovery;
pub mod relay;
pub mod skeleton;
pub mod stats;
pub mod traffic;

use std::path::{Path, PathBuf};
use std::time::Duration;

use hotline_proto::{Audience, Role};

use client::Durability;
use network::{Network, Peer, SECRETARIAT};
use relay::Relay;
use traffic::{CompleteOn, SenderSpec, Traffic, TrafficReport};

/// Settings every workload shares.
#[derive(Clone, Debug)]
pub struct Common {
    /// The `hotline` binary to run the relay with; `None` runs the relay in this process
    /// (only for the smoke test: its CPU and memory are then not its own).
    pub hotline: Option<PathBuf>,
    /// Where networks, relay data and logs are written (one subdirectory per run).
    pub dir: PathBuf,
    /// How recipients make deliveries durable.
    pub durability: Durability,
    /// How long each traffic workload sends.
    pub duration: Duration,
    /// Message body size, bytes.
    pub body_bytes: usize,
    /// How long to wait for a run to finish after sending stops.
    pub drain_timeout: Duration,
    /// How long a recipient lets stored deliveries wait to share one delivered receipt (the
    /// node's `RECEIPT_PACE_MS` in `hotline-bench`; zero: one receipt per durable batch).
    pub receipt_pace: Duration,
    /// When a fan-out or pairs message stops counting against the window: all receipts back
    /// at the sender, or durable at every recipient (as `peers-bench` counts).
    pub window_until: CompleteOn,
    /// Where a fan-out or pairs run writes every delivery's times as CSV
    /// ([`traffic::write_deliveries`]); `None`: nowhere.
    pub deliveries_csv: Option<PathBuf>,
}

/// A fresh directory `base/name-N` for one run.
pub fn run_dir(base: &Path, name: &str) -> PathBuf {
    (1..)
        .map(|n| base.join(format!("{name}-{n}")))
        .find(|p| !p.exists())
        .unwrap_or_else(|| base.join(name))
}

/// The relay limits the traffic and recovery workloads run with: the defaults, but for the
/// submission budgets per participant (by default 100 a second, burst 10,000, and 1 MiB a
/// second, burst 64 MiB), which bound a runaway node and which the generator's senders
/// exceed on purpose (fanout37 at 500 messages a second of 64 KiB bodies is 32 MiB a
/// second), and the receipt item budget (by default 10,000 a second, burst 100,000), which
/// a recipient at fanout37's maximum nears. Durability is not a limit and is never changed.
pub(crate) const DEFAULT_LIMITS: &str = "rate_per_sec = 1000000\nrate_burst = 1000000\n\
    byte_rate_per_sec = 1000000000000\nbyte_rate_burst = 1000000000000\n\
    receipt_item_rate_per_sec = 1000000000\nreceipt_item_rate_burst = 1000000000\n";

/// fanout37: the Secretariat sends to everyone (the 37 other CICA participants); each
/// recipient stores durably and receipts cumulatively. `rate` is messages per second, or
/// `None` for as fast as `window` unfinished messages allow (at most `max_messages`).
pub async fn fanout37(
    c: &Common,
    rate: Option<f64>,
    window: usize,
    max_messages: usize,
) -> anyhow::Result<TrafficReport> {
    let load = Load {
        rate,
        window,
        max_messages,
    };
    fanout(c, None, load).await
}

/// fanout37 with the Secretariat's messages addressed to only the first `recipients` of the
/// other participants (in roster order; `None` or 37 or more: everyone), the others not
/// connected: how a message's time grows with its fan-out. Named `fanoutN` in reports.
pub async fn fanout(
    c: &Common,
    recipients: Option<usize>,
    load: Load,
) -> anyhow::Result<TrafficReport> {
    anyhow::ensure!(
        recipients != Some(0),
        "a fan-out needs at least one recipient"
    );
    let run = format!(
        "fanout{}-{}",
        recipients.map_or("37".into(), |n| n.to_string()),
        load.rate.map_or("max".into(), |r| r.to_string())
    );
    let net = Network::create(&run_dir(&c.dir, &run), &[], DEFAULT_LIMITS)?;
    let sec = net.peer(SECRETARIAT)?.clone();
    let mut to: Vec<_> = net
        .peers
        .iter()
        .filter(|p| p.id != sec.id)
        .cloned()
        .collect();
    let everyone = recipients.is_none_or(|n| n >= to.len());
    if let Some(n) = recipients {
        to.truncate(n);
    }
    let audience = if everyone {
        Audience::Everyone
    } else {
        Audience::Participants(to.iter().map(|p| p.id.clone()).collect())
    };
    let name = format!("fanout{}", to.len());
    let relay = Relay::start(c.hotline.as_deref(), &net).await?;
    let senders = vec![SenderSpec {
        peer: sec,
        audience,
        fanout: to.len() as u32,
    }];
    run_traffic(c, &name, senders, to, load, &net, relay).await
}

/// p2p: `pairs` independent senders, each writing to its own recipient (synthetic members
/// `S001`… → `R001`… added to the CICA roster).
pub async fn p2p(
    c: &Common,
    pairs: usize,
    rate: Option<f64>,
    window: usize,
    max_messages: usize,
) -> anyhow::Result<TrafficReport> {
    let name = match rate {
        Some(r) => format!("p2p-{r}"),
        None => "p2p-max".into(),
    };
    let net = Network::create(
        &run_dir(&c.dir, &name),
        &[("S", pairs), ("R", pairs)],
        DEFAULT_LIMITS,
    )?;
    let relay = Relay::start(c.hotline.as_deref(), &net).await?;
    let mut senders = Vec::new();
    let mut recipients = Vec::new();
    for i in 1..=pairs {
        let s = net.peer(&format!("S{i:03}"))?.clone();
        let r = net.peer(&format!("R{i:03}"))?.clone();
        senders.push(SenderSpec {
            peer: s,
            audience: Audience::Participants(vec![r.id.clone()]),
            fanout: 1,
        });
        recipients.push(r);
    }
    debug_assert!(recipients.iter().all(|r| r.role == Role::Member));
    let load = Load {
        rate,
        window,
        max_messages,
    };
    run_traffic(c, "p2p", senders, recipients, load, &net, relay).await
}

/// How hard a traffic run pushes.
#[derive(Clone, Copy, Debug)]
pub struct Load {
    /// Messages per second, or `None` for as fast as the window allows.
    pub rate: Option<f64>,
    /// At maximum rate, unfinished messages allowed at once.
    pub window: usize,
    /// At maximum rate, messages signed in advance.
    pub max_messages: usize,
}

/// Runs one traffic workload (complete when every receipt is back) and stops the relay.
async fn run_traffic(
    c: &Common,
    name: &str,
    senders: Vec<SenderSpec>,
    recipients: Vec<Peer>,
    load: Load,
    net: &Network,
    relay: Relay,
) -> anyhow::Result<TrafficReport> {
    let t = Traffic {
        name: name.into(),
        senders,
        recipients,
        rate: load.rate,
        duration: c.duration,
        window: load.window,
        body_bytes: c.body_bytes,
        durability: c.durability,
        receipt_pace: c.receipt_pace,
        max_messages: load.max_messages,
        drain_timeout: c.drain_timeout,
        complete_on: c.window_until,
        deliveries_csv: c.deliveries_csv.clone(),
    };
    let report = traffic::run(&t, net, &relay).await;
    relay.stop().await;
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The workloads' relay lifts both submission budgets so that neither binds: the byte
    /// budget allows the count budget's every message at the largest size, so a run with
    /// large bodies measures the relay, not its limits; and the receipt item budget.
    #[test]
    fn the_workloads_relay_lifts_the_count_byte_and_receipt_item_budgets() {
        let dir = tempfile::tempdir().expect("tempdir");
        let net = network::Network::create(dir.path(), &[], DEFAULT_LIMITS).expect("network");
        let l = hotline_relay::RelayConfig::load(&net.config)
            .expect("the relay takes the configuration")
            .limits;
        let largest = hotline_proto::limits::ENVELOPE_BYTES_MAX as u64;
        assert!(
            l.rate_per_sec >= 1_000_000 && l.rate_burst >= 1_000_000,
            "{l:?}"
        );
        assert!(
            l.byte_rate_per_sec >= u64::from(l.rate_per_sec) * largest
                && l.byte_rate_burst >= u64::from(l.rate_burst) * largest,
            "{l:?}"
        );
        // And the receipt item budget, so that every recipient of a 37-way fan-out at the
        // count budget's rate may receipt each message.
        assert!(
            u64::from(l.receipt_item_rate_per_sec) >= u64::from(l.rate_per_sec) * 37
                && u64::from(l.receipt_item_rate_burst) >= u64::from(l.rate_burst) * 37,
            "{l:?}"
        );
    }
}
