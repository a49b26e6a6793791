//! A seeded user-space UDP proxy that impairs one node's link to the relay: loss, delay,
//! jitter (which reorders), duplication. The kernel here has no netem, so this stands in.
//! The same seed gives the same drop/delay decisions in the same order.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use tokio::net::UdpSocket;
use tokio::sync::Mutex;

/// Impairment settings.
#[derive(Clone, Copy, Debug)]
pub struct Impairment {
    /// Drop probability.
    pub loss: f64,
    /// Fixed delay, ms.
    pub delay_ms: u64,
    /// Extra uniform delay up to this, ms.
    pub jitter_ms: u64,
    /// Duplicate probability.
    pub duplicate: f64,
}

/// Counters, for the report.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct ProxyStats {
    /// Datagrams seen.
    pub datagrams: u64,
    /// Dropped.
    pub dropped: u64,
    /// Duplicated.
    pub duplicated: u64,
}

/// A running proxy; stops when dropped.
pub struct Proxy {
    /// Where the node should send.
    pub listen: SocketAddr,
    stats: Arc<Mutex<ProxyStats>>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Starts a proxy forwarding to `upstream`.
    pub async fn start(upstream: SocketAddr, imp: Impairment, seed: u64) -> anyhow::Result<Self> {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
        let back = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
        let listen = front.local_addr()?;
        let stats = Arc::new(Mutex::new(ProxyStats::default()));
        let rng = Arc::new(Mutex::new(rand::rngs::StdRng::seed_from_u64(seed)));
        let s = stats.clone();
        let task = tokio::spawn(async move {
            let mut client: Option<SocketAddr> = None;
            let mut a = vec![0u8; 65_536];
            let mut b = vec![0u8; 65_536];
            loop {
                tokio::select! {
                    r = front.recv_from(&mut a) => {
                        let Ok((n, from)) = r else { break };
                        client = Some(from);
                        forward(&back, upstream, &a[..n], imp, &rng, &s).await;
                    }
                    r = back.recv_from(&mut b) => {
                        let Ok((n, _)) = r else { break };
                        if let Some(c) = client {
                            forward(&front, c, &b[..n], imp, &rng, &s).await;
                        }
                    }
                }
            }
        });
        Ok(Self {
            listen,
            stats,
            task,
        })
    }

    /// Counters so far.
    pub async fn stats(&self) -> ProxyStats {
        *self.stats.lock().await
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward(
    sock: &Arc<UdpSocket>,
    to: SocketAddr,
    data: &[u8],
    imp: Impairment,
    rng: &Mutex<rand::rngs::StdRng>,
    stats: &Mutex<ProxyStats>,
) {
    let (drop, dup, delays) = {
        let mut r = rng.lock().await;
        let drop = r.gen_bool(imp.loss.clamp(0.0, 1.0));
        let dup = r.gen_bool(imp.duplicate.clamp(0.0, 1.0));
        let d1 = imp.delay_ms
            + if imp.jitter_ms > 0 {
                r.gen_range(0..=imp.jitter_ms)
            } else {
                0
            };
        let d2 = imp.delay_ms
            + if imp.jitter_ms > 0 {
                r.gen_range(0..=imp.jitter_ms)
            } else {
                0
            };
        (drop, dup, [d1, d2])
    };
    {
        let mut s = stats.lock().await;
        s.datagrams += 1;
        s.dropped += drop as u64;
        s.duplicated += (dup && !drop) as u64;
    }
    if drop {
        return;
    }
    let copies = if dup { 2 } else { 1 };
    for d in delays.iter().take(copies) {
        let sock = sock.clone();
        let data = data.to_vec();
        let d = *d;
        tokio::spawn(async move {
            if d > 0 {
                tokio::time::sleep(Duration::from_millis(d)).await;
            }
            let _ = sock.send_to(&data, to).await;
        });
    }
}
