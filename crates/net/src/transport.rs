//! QUIC endpoints and their transport limits.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{IdleTimeout, TransportConfig, VarInt};

use crate::tls::{client_config, Fingerprint, RelayIdentity};
use crate::NetError;

/// Default: a link silent for this long is dead: three keep-alive intervals (keep-alives
/// keep a live one busy). It also bounds how long a node takes to notice that the relay
/// restarted, when none of its packets draws the new process's stateless reset sooner: while
/// the relay was down the node's retransmissions backed off, up to seconds apart, and on a
/// lossy link a reset can itself be lost. It was 10 s until the eighteenth benchmark round
/// (docs/BENCHMARKS-ROUNDS.md): after a SIGKILL, 10,255 idle connections were all back in
/// 15.6–16.8 s, against 11.2–11.9 s with 6 s, and a node behind the regional drill's
/// 20 %-loss link took up to 6.5 s to notice that the relay was back (5.6 s with 6 s).
/// A live link is closed only if everything its peer sends for 6 s is lost.
pub const IDLE_TIMEOUT_MS: u64 = 6_000;
/// Default: how often an idle connection sends a keepalive, so a dead link is noticed
/// within seconds.
pub const KEEPALIVE_MS: u64 = 2_000;
const _: () = assert!(KEEPALIVE_MS * 3 <= IDLE_TIMEOUT_MS);
/// Least time between two stateless resets the relay sends: 10,000 a second, so that every
/// node of a large network learns of a relay restart at its next keepalive.
pub const STATELESS_RESET_INTERVAL_US: u64 = 100;
/// Receive buffer of the relay's UDP socket: room for a reconnect storm's handshakes
/// (thousands of 1,200-byte Initial packets at once).
pub const UDP_RECV_BUFFER_BYTES: usize = 4 * 1024 * 1024;

/// Packets a peer may receive before it must acknowledge them (QUIC's ACK frequency
/// extension, which both ends of every hotline connection enable). QUIC's default has a
/// receiver acknowledge every second packet; with this, it acknowledges after the eleventh,
/// or when its delay timer (the peer's `max_ack_delay`, 25 ms) fires, or at once when it
/// sees packets out of order (a likely loss). A fan-out delivers one packet to each of 37
/// connections, so the default cost the relay one incoming acknowledgement, with its wake-up,
/// decryption and bookkeeping, per two deliveries. Measured at fanout37 500/s, six pairs:
/// end-to-end p50 3.54–4.95 ms before, 2.58–4.01 ms after, 12 datagrams fewer a message
/// (docs/BENCHMARKS-ROUNDS.md, ninth round). Loss is still noticed within the delay timer.
pub const ACK_ELICITING_THRESHOLD: u32 = 10;

/// The round-trip time a connection assumes until it has measured one. A handshake packet
/// not answered within three times this is sent again, and the wait doubles with each loss,
/// so QUIC's default, 333 ms, costs a second for each lost flight of a handshake. 100 ms is
/// Chromium's QUIC default. Behind the regional drill's 20 %-loss link, a node's reconnection
/// after the relay's restart took 0.94 s on average (at most 3.14 s) with 333 ms, 0.54–0.60 s
/// (at most 1.23–1.60 s) with 100 ms: twenty drills each (eighteenth round). On a longer path
/// (a geostationary satellite hop, 600 ms) it costs a spurious copy or two of the client's
/// first 1,200-byte packet before the measured round trip takes over.
pub const INITIAL_RTT_MS: u64 = 100;

/// Stream bytes the relay lets a connection's peer send before it has logged in (QUIC
/// connection-level flow control, `initial_max_data`): room for a `Hello` (at most
/// `4 + HELLO_FRAME_BYTES_MAX` bytes), which is all a node sends before the relay's
/// `Welcome`. quinn's default, unlimited but for the stream's own 1.25 MB window, let
/// anyone who completes a TLS handshake make the relay buffer 1.25 MB per connection until
/// the handshake deadline (sent out of order, or while the relay waits to write its
/// refusal), 1.3 GB over the default 1,024 handshakes. [`open_session_window`] lifts it
/// once the node has logged in.
pub const LOGIN_RECEIVE_WINDOW_BYTES: u32 = 4 * 1024;
const _: () = assert!(
    LOGIN_RECEIVE_WINDOW_BYTES as usize
        >= hotline_proto::frame::FRAME_PREFIX_BYTES + hotline_proto::limits::HELLO_FRAME_BYTES_MAX
);

/// Lets the peer of a relay's connection send as much as QUIC's own limits allow (the one
/// stream's window), instead of [`LOGIN_RECEIVE_WINDOW_BYTES`]: called once the node has
/// logged in, before the relay writes `Welcome`, so that the node, which sends nothing more
/// until it has read `Welcome`, is never held back by the login window. Anything else that
/// accepts connections on a [`server_endpoint`] (a test's stand-in for a relay, the
/// benchmark's skeleton forwarder) has no login and calls it once it has the connection, or
/// its peer may never have more than 4 KiB unread there.
pub fn open_session_window(conn: &quinn::Connection) {
    // quinn's default connection window: a session's one stream is bounded by its own.
    conn.set_receive_window(VarInt::MAX);
}

/// Transport limits for one side of a connection.
#[derive(Clone, Copy, Debug)]
pub struct TransportLimits {
    /// Close a connection after this long without any packet.
    pub idle_timeout_ms: u64,
    /// Send a keepalive after this long without sending.
    pub keepalive_ms: u64,
    /// Bidirectional streams the peer may open at once (the session needs one).
    pub peer_bidi_streams: u32,
}

impl Default for TransportLimits {
    fn default() -> Self {
        Self {
            idle_timeout_ms: IDLE_TIMEOUT_MS,
            keepalive_ms: KEEPALIVE_MS,
            peer_bidi_streams: 1,
        }
    }
}

impl TransportLimits {
    fn transport_config(&self) -> Result<TransportConfig, NetError> {
        let mut t = TransportConfig::default();
        let idle = IdleTimeout::try_from(Duration::from_millis(self.idle_timeout_ms))
            .map_err(|_| NetError::Tls("idle timeout out of range".into()))?;
        t.max_idle_timeout(Some(idle));
        t.keep_alive_interval(Some(Duration::from_millis(self.keepalive_ms)));
        t.initial_rtt(Duration::from_millis(INITIAL_RTT_MS));
        t.max_concurrent_bidi_streams(VarInt::from_u32(self.peer_bidi_streams));
        t.max_concurrent_uni_streams(VarInt::from_u32(0));
        // The protocol sends no datagrams (PROTOCOL.md, "QUIC datagrams are not used"): not accepting them means a peer
        // sending one breaks the connection, instead of parking up to quinn's default
        // buffer (1.25 MB) of them per connection, unread, before it has even logged in.
        t.datagram_receive_buffer_size(None);
        let mut ack = quinn::AckFrequencyConfig::default();
        ack.ack_eliciting_threshold(VarInt::from_u32(ACK_ELICITING_THRESHOLD));
        t.ack_frequency_config(Some(ack));
        Ok(t)
    }
}

/// A datagram socket supplied by the caller instead of a UDP socket the endpoint binds: a
/// simulated network in deterministic tests (`crates/sim`). quinn's random-number generator
/// is seeded with `rng_seed`, so that over a deterministic socket a run reproduces.
#[derive(Clone, Debug)]
pub struct AbstractSocket {
    /// Where datagrams go and come from.
    pub socket: Arc<dyn quinn::AsyncUdpSocket>,
    /// The async runtime quinn's tasks and timers use.
    pub runtime: Arc<dyn quinn::Runtime>,
    /// The seed of quinn's random-number generator (connection ids, padding, greasing).
    pub rng_seed: [u8; 32],
}

/// The relay's endpoint and server configurations.
fn server_configs(
    identity: &RelayIdentity,
    limits: &TransportLimits,
) -> Result<(quinn::EndpointConfig, quinn::ServerConfig), NetError> {
    let tls = identity.server_config()?;
    let quic = QuicServerConfig::try_from(tls).map_err(|e| NetError::Tls(e.to_string()))?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(quic));
    let mut transport = limits.transport_config()?;
    // Until the node has logged in (`open_session_window`), room for its `Hello` only.
    transport.receive_window(VarInt::from_u32(LOGIN_RECEIVE_WINDOW_BYTES));
    cfg.transport_config(Arc::new(transport));
    // A stateless-reset key that survives restarts: a relay that crashed and came back
    // answers packets of connections it no longer knows with a reset that the node accepts,
    // so the node reconnects at once instead of waiting out the idle timeout.
    // Connection ids must also stay recognisable across the restart: quinn only resets
    // packets whose connection id its generator validates, so that key is stable too.
    let mut endpoint_cfg = quinn::EndpointConfig::new(Arc::new(identity.reset_key()));
    let cid_key = identity.cid_key();
    endpoint_cfg.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
    });
    // quinn answers at most one packet of an unknown connection with a stateless reset per
    // interval, endpoint-wide (20 ms by default: 50 a second). After a restart, nodes beyond
    // the first few dozen would wait out their idle timeout instead of learning at their
    // next keepalive. The hashed connection ids above already drop garbage packets without a
    // reset, and a reset is always smaller than the packet that caused it.
    endpoint_cfg.min_reset_interval(Duration::from_micros(STATELESS_RESET_INTERVAL_US));
    Ok((endpoint_cfg, cfg))
}

/// Builds the relay's endpoint and server configurations as [`server_endpoint`] does, and
/// drops them: what a relay would refuse at start with these `identity` and `limits`, this
/// refuses (`hotline config check`).
pub fn check_server_config(
    identity: &RelayIdentity,
    limits: &TransportLimits,
) -> Result<(), NetError> {
    server_configs(identity, limits).map(|_| ())
}

/// A relay endpoint listening on `addr`. Each connection it accepts starts with
/// [`LOGIN_RECEIVE_WINDOW_BYTES`] of flow control until [`open_session_window`] lifts it.
pub fn server_endpoint(
    addr: SocketAddr,
    identity: &RelayIdentity,
    limits: &TransportLimits,
) -> Result<quinn::Endpoint, NetError> {
    let (endpoint_cfg, cfg) = server_configs(identity, limits)?;
    let socket = std::net::UdpSocket::bind(addr).map_err(NetError::Endpoint)?;
    // Every node's packets arrive on this one socket: when thousands reconnect at once, the
    // default receive buffer (about 200 KiB) overflows and handshakes stall on lost packets.
    // Best effort: the kernel caps the size at `net.core.rmem_max`.
    let udp = quinn::udp::UdpSocketState::new((&socket).into()).map_err(NetError::Endpoint)?;
    if let Err(e) = udp.set_recv_buffer_size((&socket).into(), UDP_RECV_BUFFER_BYTES) {
        tracing::warn!(error = %e, "cannot enlarge the UDP receive buffer");
    }
    let runtime = quinn::default_runtime()
        .ok_or_else(|| NetError::Endpoint(std::io::Error::other("no async runtime")))?;
    quinn::Endpoint::new(endpoint_cfg, Some(cfg), socket, runtime).map_err(NetError::Endpoint)
}

/// A relay endpoint on a socket the caller supplies (a simulated network), configured
/// exactly as [`server_endpoint`] configures a bound one.
pub fn server_endpoint_on(
    socket: AbstractSocket,
    identity: &RelayIdentity,
    limits: &TransportLimits,
) -> Result<quinn::Endpoint, NetError> {
    let (mut endpoint_cfg, cfg) = server_configs(identity, limits)?;
    endpoint_cfg.rng_seed(Some(socket.rng_seed));
    quinn::Endpoint::new_with_abstract_socket(
        endpoint_cfg,
        Some(cfg),
        socket.socket,
        socket.runtime,
    )
    .map_err(NetError::Endpoint)
}

/// A client endpoint on a socket the caller supplies (a simulated network), trusting only
/// the pinned relay certificates, configured as [`client_endpoint`] configures a bound one.
pub fn client_endpoint_on(
    socket: AbstractSocket,
    pins: Vec<Fingerprint>,
    limits: &TransportLimits,
) -> Result<quinn::Endpoint, NetError> {
    let mut endpoint_cfg = quinn::EndpointConfig::default();
    endpoint_cfg.rng_seed(Some(socket.rng_seed));
    let mut ep = quinn::Endpoint::new_with_abstract_socket(
        endpoint_cfg,
        None,
        socket.socket,
        socket.runtime,
    )
    .map_err(NetError::Endpoint)?;
    ep.set_default_client_config(client_quinn_config(pins, limits)?);
    Ok(ep)
}

/// A client endpoint that trusts only the pinned relay certificates.
/// Bind to `[::]:0` or `0.0.0.0:0` to match the relays' address family.
pub fn client_endpoint(
    bind: SocketAddr,
    pins: Vec<Fingerprint>,
    limits: &TransportLimits,
) -> Result<quinn::Endpoint, NetError> {
    let mut ep = quinn::Endpoint::client(bind).map_err(NetError::Endpoint)?;
    ep.set_default_client_config(client_quinn_config(pins, limits)?);
    Ok(ep)
}

/// The quinn client configuration for pinned relays.
pub fn client_quinn_config(
    pins: Vec<Fingerprint>,
    limits: &TransportLimits,
) -> Result<quinn::ClientConfig, NetError> {
    let tls = client_config(pins)?;
    let quic = QuicClientConfig::try_from(tls).map_err(|e| NetError::Tls(e.to_string()))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(quic));
    let mut limits = *limits;
    // A node never accepts streams from the relay.
    limits.peer_bidi_streams = 0;
    cfg.transport_config(Arc::new(limits.transport_config()?));
    Ok(cfg)
}
