//! A quinn socket over turmoil's simulated UDP, with seeded per-datagram loss.
//!
//! quinn drives its endpoint through [`quinn::AsyncUdpSocket`]; this implements it on
//! [`turmoil::net::UdpSocket`], so the relay's and the clients' real QUIC stacks run over the
//! simulated network. turmoil itself decides latency (and so reordering) and partitions from
//! its seeded generator; its own "fail rate" breaks a whole link for a while (dropping every
//! datagram in flight), which is not independent loss, so loss is decided here instead: each
//! datagram sent is dropped with probability [`Loss::set_rate`], drawn from a generator
//! seeded per socket. Everything runs on the simulation's one thread, in an order fixed by
//! the schedule, so the same seed drops the same datagrams.

use std::fmt;
use std::future::Future;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use quinn::udp::{RecvMeta, Transmit};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};

/// Independent datagram loss for one socket, adjustable while the simulation runs.
#[derive(Clone)]
pub struct Loss(Arc<Mutex<LossState>>);

struct LossState {
    rate: f64,
    rng: StdRng,
    sent: u64,
    dropped: u64,
}

impl Loss {
    /// No loss yet; `seed` fixes which datagrams a later rate drops.
    pub fn new(seed: u64) -> Self {
        Self(Arc::new(Mutex::new(LossState {
            rate: 0.0,
            rng: StdRng::seed_from_u64(seed),
            sent: 0,
            dropped: 0,
        })))
    }

    fn state(&self) -> MutexGuard<'_, LossState> {
        // Nothing panics while holding the lock (plain arithmetic).
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drops each datagram sent from now on with probability `rate` (0.0 to 1.0).
    pub fn set_rate(&self, rate: f64) {
        self.state().rate = rate.clamp(0.0, 1.0);
    }

    /// Datagrams offered to the socket, and how many of them were dropped.
    pub fn counts(&self) -> (u64, u64) {
        let s = self.state();
        (s.sent, s.dropped)
    }

    fn drop_next(&self) -> bool {
        let mut s = self.state();
        s.sent += 1;
        // Always draw, so that changing the rate does not shift later decisions.
        let x: f64 = s.rng.gen();
        let drop = x < s.rate;
        if drop {
            s.dropped += 1;
        }
        drop
    }
}

type Readable = Pin<Box<dyn Future<Output = io::Result<()>> + Send>>;

/// A turmoil UDP socket that quinn can use.
pub struct SimSocket {
    inner: Arc<turmoil::net::UdpSocket>,
    /// The pending wait for a datagram, kept across polls so its waker stays registered.
    readable: Mutex<Option<Readable>>,
    loss: Loss,
}

impl fmt::Debug for SimSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimSocket")
            .field("local_addr", &self.inner.local_addr().ok())
            .finish_non_exhaustive()
    }
}

impl SimSocket {
    /// Binds `addr` on the current simulated host (call inside a turmoil host or client).
    pub async fn bind(addr: SocketAddr, loss: Loss) -> io::Result<Self> {
        let inner = turmoil::net::UdpSocket::bind(addr).await?;
        Ok(Self {
            inner: Arc::new(inner),
            readable: Mutex::new(None),
            loss,
        })
    }
}

#[derive(Debug)]
struct AlwaysWritable;

impl quinn::UdpPoller for AlwaysWritable {
    fn poll_writable(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // turmoil's UDP has no send-side backpressure: a full receiver drops instead.
        Poll::Ready(Ok(()))
    }
}

impl quinn::AsyncUdpSocket for SimSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn quinn::UdpPoller>> {
        Box::pin(AlwaysWritable)
    }

    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        if self.loss.drop_next() {
            return Ok(());
        }
        // A send error on UDP is a lost datagram (e.g. no route to a crashed host); quinn
        // would end the connection on an error, which a real UDP socket does not do.
        let _ = self
            .inner
            .try_send_to(transmit.contents, transmit.destination);
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        // Only quinn's endpoint driver polls this; the lock is never contended.
        let mut readable = self.readable.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(wait) = readable.as_mut() {
                match wait.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(r) => {
                        *readable = None;
                        r?;
                    }
                }
            }
            let mut n = 0;
            while n < bufs.len().min(meta.len()) {
                match self.inner.try_recv_from(&mut bufs[n]) {
                    Ok((len, addr)) => {
                        meta[n] = RecvMeta {
                            addr,
                            len,
                            stride: len,
                            ecn: None,
                            dst_ip: None,
                        };
                        n += 1;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Poll::Ready(Err(e)),
                }
            }
            if n > 0 {
                return Poll::Ready(Ok(n));
            }
            // Nothing queued: wait for the next datagram (turmoil buffers it for the
            // following `try_recv_from`).
            let sock = self.inner.clone();
            *readable = Some(Box::pin(async move { sock.readable().await }));
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn may_fragment(&self) -> bool {
        false
    }
}
