//! `hotline-net`: the transport shared by the relay, the node, the benchmarks and the tests.
//!
//! QUIC (quinn) with TLS 1.3 (rustls, ring provider) and ALPN `cica-hotline/1`; the relay's
//! self-signed certificate is pinned by the SHA-256 fingerprint of its DER encoding; frames
//! travel length-prefixed on one bidirectional stream; the node authenticates by signing the
//! connection's TLS exporter keying material.

#![warn(missing_docs)]

pub mod client;
pub mod error;
pub mod stream;
pub mod throttle;
pub mod tls;
pub mod transport;

pub use client::{authenticate, channel_binding, connect, Session};
pub use error::NetError;
pub use stream::{FrameReader, FrameWriter};
pub use throttle::Throttle;
pub use tls::{Fingerprint, RelayIdentity};
pub use transport::TransportLimits;

/// Milliseconds since the Unix epoch, from the system clock: the one wall-clock reader the
/// relay, the node and the harness share (the protocol crate takes time as an argument).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
