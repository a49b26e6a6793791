//! The simulated participants: a sender and a recipient that speak the protocol over real
//! QUIC on the simulated network and keep their state in the real node store
//! (`hotline_node::store::NodeStore`: outbox, sequence numbers, inbox dedup, signed
//! delivered receipts), as a node's relay link does.
//!
//! What they add to the store is the link's behaviour, kept close to `hotline-node`'s
//! `link.rs`: reconnect with capped exponential back-off and jitter (here from a seeded
//! generator, so a seed fixes it), write every outbox message once per connection, resend
//! a retryable refusal later, receipt deliveries, and tell the relay which forwarded
//! receipts are stored.

use std::cell::RefCell;
use std::net::{Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use tokio::sync::{mpsc, Notify};

use hotline_net::transport::AbstractSocket;
use hotline_net::{FrameReader, NetError, Session, TransportLimits};
use hotline_node::in_flight::InFlight;
use hotline_node::limits::{BACKOFF_MAX_MS, BACKOFF_MIN_MS, CONNECT_TIMEOUT_MS};
use hotline_node::store::{retryable, Draft, NodeStore, Stored};
use hotline_proto::frame::{ErrorCode, NodeToRelay, RelayToNode, Subject};
use hotline_proto::{
    Audience, Kind, MessageId, ParticipantId, Precedence, Roster, SigningKey, Status, Verified,
};

use crate::ledger::{sim_ms, Ledger};
use crate::socket::{Loss, SimSocket};

/// How long a retryable refusal waits before the message is offered again (as the node).
const RETRY_AFTER_MS: u64 = 2_000;
/// How often a client checks whether the run is settled.
const SETTLED_CHECK_MS: u64 = 100;

/// What a simulated participant needs.
pub(crate) struct Peer {
    pub(crate) me: ParticipantId,
    pub(crate) key: SigningKey,
    pub(crate) roster: Arc<Verified<Roster>>,
    pub(crate) fingerprint: hotline_net::Fingerprint,
    pub(crate) store_dir: std::path::PathBuf,
    pub(crate) loss: Loss,
    /// Seeds quinn's generator and the back-off jitter.
    pub(crate) seed: u64,
    /// How far this participant's clock is off true time (ms).
    pub(crate) clock_offset_ms: i64,
    pub(crate) ledger: Rc<RefCell<Ledger>>,
}

/// 32 seed bytes for quinn from the run's seed and a host's name.
pub(crate) fn seed_bytes(seed: u64, who: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    out[..8].copy_from_slice(&seed.to_le_bytes());
    for (i, b) in who.bytes().enumerate().take(24) {
        out[8 + i] = b;
    }
    out
}

/// A seed for a host's own generators, distinct per host.
pub(crate) fn host_seed(seed: u64, who: &str) -> u64 {
    who.bytes().fold(seed ^ 0x9E37_79B9_7F4A_7C15, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01B3)
    })
}

impl Peer {
    /// This participant's idea of the time (ms since the epoch).
    fn now_ms(&self) -> u64 {
        hotline_node::now_ms().saturating_add_signed(self.clock_offset_ms)
    }

    fn endpoint_seed(&self) -> [u8; 32] {
        seed_bytes(self.seed, self.me.as_str())
    }

    async fn endpoint(&self) -> anyhow::Result<quinn::Endpoint> {
        let socket = SimSocket::bind((Ipv4Addr::UNSPECIFIED, 0).into(), self.loss.clone()).await?;
        let socket = AbstractSocket {
            socket: Arc::new(socket),
            runtime: Arc::new(quinn::TokioRuntime),
            rng_seed: self.endpoint_seed(),
        };
        Ok(hotline_net::transport::client_endpoint_on(
            socket,
            vec![self.fingerprint],
            &TransportLimits::default(),
        )?)
    }

    async fn connect(&self, ep: &quinn::Endpoint, relay: SocketAddr) -> Result<Session, NetError> {
        let timeout = Duration::from_millis(CONNECT_TIMEOUT_MS);
        let conn = hotline_net::connect(ep, relay, timeout).await?;
        hotline_net::authenticate(
            conn,
            &self.me,
            &self.key,
            self.roster.version,
            self.now_ms(),
            timeout,
        )
        .await
    }

    fn event(&self, what: impl AsRef<str>) {
        self.ledger
            .borrow_mut()
            .event(format!("{} {}", self.me, what.as_ref()));
    }

    fn settled(&self) -> bool {
        self.ledger.borrow().settled()
    }
}

fn relay_addr() -> SocketAddr {
    SocketAddr::new(
        turmoil::lookup(crate::fixture::RELAY_HOST),
        crate::fixture::RELAY_PORT,
    )
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn read_frames(mut reader: FrameReader, tx: mpsc::Sender<Result<RelayToNode, NetError>>) {
    loop {
        let item = match reader.read::<RelayToNode>().await {
            Ok(Some(f)) => Ok(f),
            Ok(None) => break,
            Err(e) => Err(e),
        };
        let stop = item.is_err();
        if tx.send(item).await.is_err() || stop {
            break;
        }
    }
}

/// Reconnects until the run is settled, running `serve` on each session.
async fn link<'a, F, Fut>(peer: &'a Peer, mut serve: F) -> anyhow::Result<()>
where
    F: FnMut(Session) -> Fut,
    Fut: std::future::Future<Output = Result<(), NetError>> + 'a,
{
    let ep = peer.endpoint().await?;
    let relay = relay_addr();
    let mut rng = StdRng::seed_from_u64(host_seed(peer.seed, peer.me.as_str()));
    let mut backoff = BACKOFF_MIN_MS;
    while !peer.settled() {
        match peer.connect(&ep, relay).await {
            Err(e) => {
                peer.event(format!("connect failed: {}", short(&e)));
                {
                    let mut l = peer.ledger.borrow_mut();
                    if peer.me.as_str() == crate::fixture::SENDER {
                        l.failed_connects.0 += 1;
                    } else {
                        l.failed_connects.1 += 1;
                    }
                }
                let jitter = rng.gen_range(0..=backoff / 2);
                tokio::time::sleep(Duration::from_millis(backoff + jitter)).await;
                backoff = (backoff * 2).min(BACKOFF_MAX_MS);
            }
            Ok(session) => {
                backoff = BACKOFF_MIN_MS;
                peer.event("session up");
                {
                    let mut l = peer.ledger.borrow_mut();
                    if peer.me.as_str() == crate::fixture::SENDER {
                        l.sender_sessions += 1;
                    } else {
                        l.recipient_sessions += 1;
                    }
                }
                let conn = session.conn.clone();
                match serve(session).await {
                    Ok(()) => {
                        conn.close(ErrorCode::Normal.close_code().into(), b"done");
                        peer.event("done");
                    }
                    Err(e) => peer.event(format!("session lost: {}", short(&e))),
                }
            }
        }
    }
    // Let the close reach the relay before this host's runtime goes away.
    let _ = tokio::time::timeout(Duration::from_secs(1), ep.wait_idle()).await;
    Ok(())
}

/// An error in a form that does not vary between runs of one seed (no addresses, no ids).
fn short(e: &NetError) -> String {
    match e {
        NetError::Timeout(what) => format!("timeout: {what}"),
        NetError::Closed { code, .. } => format!("closed: {code:?}"),
        NetError::Connection(c) => format!("connection: {c}"),
        other => other.to_string(),
    }
}

/// The plan for the sender's messages.
#[derive(Clone, Debug)]
pub(crate) struct Composing {
    pub(crate) messages: usize,
    pub(crate) first_at_ms: u64,
    pub(crate) every_ms: u64,
}

/// The sender: composes on schedule into its store while a link sends the outbox.
pub(crate) async fn sender(peer: Peer, plan: Composing) -> anyhow::Result<()> {
    let store = Rc::new(RefCell::new(NodeStore::open(&peer.store_dir)?));
    let wake = Rc::new(Notify::new());
    let recipient =
        ParticipantId::new(crate::fixture::RECIPIENT).map_err(|e| anyhow::anyhow!("{e}"))?;
    // The operator composes on schedule whether or not the relay is reachable.
    let composer = {
        let store = store.clone();
        let wake = wake.clone();
        let log = peer.ledger.clone();
        let me = peer.me.clone();
        let key = peer.key.clone();
        let offset = peer.clock_offset_ms;
        let start = tokio::time::Instant::now();
        let compose = async move {
            for i in 0..plan.messages {
                let at = start + Duration::from_millis(plan.first_at_ms + i as u64 * plan.every_ms);
                tokio::time::sleep_until(at).await;
                let now = hotline_node::now_ms().saturating_add_signed(offset);
                let draft = Draft {
                    audience: Audience::Participants(vec![recipient.clone()]),
                    kind: Kind::Alert,
                    precedence: Precedence::Routine,
                    status: Status::Exercise,
                    respond_by_ms: None,
                    references: vec![],
                    category: None,
                    subject: format!("simulated notification {i:04}"),
                    body: "Communications check over the simulated network.".into(),
                };
                let signed = store
                    .borrow_mut()
                    .compose(&me, &key, draft, std::slice::from_ref(&recipient), 1, now)
                    .context("compose")?
                    .context("encode")?;
                let env = signed.decode_unverified().context("own message")?;
                let mut l = log.borrow_mut();
                l.seq_of.insert(env.id, env.seq.0);
                let r = l.messages.entry(env.seq.0).or_default();
                r.id = Some(env.id);
                r.composed_at_ms = sim_ms();
                r.clock_offset_ms = offset;
                l.event(format!("{me} composed #{}", env.seq.0));
                drop(l);
                wake.notify_one();
            }
            anyhow::Ok(())
        };
        let ledger = peer.ledger.clone();
        tokio::task::spawn_local(async move {
            // A failure leaves the run unsettled; the trace says why.
            if let Err(e) = compose.await {
                ledger
                    .borrow_mut()
                    .event(format!("composing failed: {e:#}"));
            }
        })
    };
    let _composer = AbortOnDrop(composer);
    link(&peer, |session| {
        sender_session(&peer, &store, &wake, session)
    })
    .await
}

async fn sender_session(
    peer: &Peer,
    store: &RefCell<NodeStore>,
    wake: &Notify,
    session: Session,
) -> Result<(), NetError> {
    let Session {
        conn,
        reader,
        mut writer,
        ..
    } = session;
    let (tx, mut rx) = mpsc::channel(256);
    let _reader = AbortOnDrop(tokio::spawn(read_frames(reader, tx)));
    // Messages written on this connection and not yet answered, with the sequence number
    // each was written with (what the store records the relay's acceptance against), and
    // how far the outbox was read: kept as the node's link keeps them.
    let mut outbox = InFlight::default();
    let mut retry_at: Option<tokio::time::Instant> = None;
    let mut retry_ids: Vec<MessageId> = Vec::new();
    let mut check = tokio::time::interval(Duration::from_millis(SETTLED_CHECK_MS));
    let store_err = |e: hotline_store::StoreError| NetError::Local(format!("store: {e}"));
    pump(peer, store, &mut writer, &mut outbox).await?;
    loop {
        let retry = async {
            match retry_at {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            f = rx.recv() => {
                let f = match f {
                    Some(f) => f?,
                    None => return Err(conn.close_reason().map(NetError::from_connection)
                        .unwrap_or(NetError::Protocol("relay closed the stream".into()))),
                };
                match f {
                    RelayToNode::Accepted(a) => {
                        let seq = outbox.seq(&a.id);
                        store.borrow_mut().accepted(0, &a, seq, peer.now_ms()).map_err(store_err)?;
                        outbox.answered(&a.id);
                        {
                            let mut l = peer.ledger.borrow_mut();
                            let seq = l.seq(&a.id);
                            if let Some(r) = l.record(&a.id) {
                                r.accepted += 1;
                                r.accepted_at_ms.get_or_insert(sim_ms());
                            }
                            l.event(format!("{} accepted #{}", peer.me, seq.unwrap_or(0)));
                        }
                        // Room for more of the outbox.
                        pump(peer, store, &mut writer, &mut outbox).await?;
                    }
                    RelayToNode::Rejected(r) => {
                        let Subject::Message(id) = r.subject else {
                            peer.event(format!("refusal of a non-message: {:?}", r.code));
                            continue;
                        };
                        let again = retryable(r.code);
                        {
                            let mut l = peer.ledger.borrow_mut();
                            let seq = l.seq(&id);
                            if let Some(m) = l.record(&id) {
                                if again {
                                    m.retryable_refusals += 1;
                                } else {
                                    m.rejected = Some(r.code);
                                }
                            }
                            l.event(format!("{} refused #{}: {:?}", peer.me, seq.unwrap_or(0), r.code));
                        }
                        store.borrow_mut().rejected(0, &id, r.code, &r.detail, peer.now_ms()).map_err(store_err)?;
                        if again {
                            outbox.retry_later(&id);
                            retry_ids.push(id);
                            retry_at.get_or_insert_with(|| tokio::time::Instant::now() + Duration::from_millis(RETRY_AFTER_MS));
                        } else {
                            outbox.answered(&id);
                        }
                    }
                    RelayToNode::Receipt(s) => {
                        let digest = s.digest();
                        match peer.roster.verify_receipt(&s) {
                            Ok(v) => {
                                let fresh = store.borrow_mut().store_forwarded(&peer.me, std::slice::from_ref(&v), peer.now_ms()).map_err(store_err)?;
                                let mut l = peer.ledger.borrow_mut();
                                for item in v.items.iter().filter(|i| i.sender == peer.me) {
                                    let seq = l.seq(&item.id);
                                    if let Some(m) = l.record(&item.id) {
                                        m.receipt_at_sender = true;
                                    }
                                    if fresh.first().is_some_and(|f| f.fresh) {
                                        l.event(format!("{} delivered receipt for #{}", peer.me, seq.unwrap_or(0)));
                                    }
                                }
                            }
                            Err(e) => peer.event(format!("forwarded receipt refused: {e}")),
                        }
                        writer.write(&NodeToRelay::ReceiptsStored(vec![digest])).await?;
                    }
                    RelayToNode::Error(e) => return Err(NetError::Closed { code: e.code, reason: e.detail }),
                    _ => {}
                }
            }
            _ = wake.notified() => pump(peer, store, &mut writer, &mut outbox).await?,
            _ = retry => {
                retry_at = None;
                for id in retry_ids.drain(..) {
                    outbox.again(&id);
                }
                pump(peer, store, &mut writer, &mut outbox).await?;
            }
            _ = check.tick() => {
                if peer.settled() {
                    return Ok(());
                }
            }
        }
    }
}

/// Writes outbox messages not yet written on this connection, as the node's link does: at
/// most a page unanswered, read on from the last one read. (Until 2026-12 this read the
/// outbox from its start at each pass, every message in flight read again to be skipped,
/// and wrote a page more than those in flight each time.)
async fn pump(
    peer: &Peer,
    store: &RefCell<NodeStore>,
    writer: &mut hotline_net::FrameWriter,
    outbox: &mut InFlight,
) -> Result<(), NetError> {
    let mut read = 0u64;
    let next = {
        let store = store.borrow();
        outbox.next(|after, limit| {
            let rows = store.outbox_after(0, after, limit)?;
            read += rows.len() as u64;
            Ok(rows)
        })
    };
    peer.ledger.borrow_mut().outbox_rows_read += read;
    let next = next.map_err(|e| NetError::Local(format!("store: {e}")))?;
    let mut buf = Vec::new();
    for m in next {
        let (id, signed) = (m.id, m.signed);
        let mut l = peer.ledger.borrow_mut();
        let seq = l.seq(&id);
        if let Some(m) = l.record(&id) {
            m.submits += 1;
        }
        l.event(format!("{} submit #{}", peer.me, seq.unwrap_or(0)));
        buf.extend_from_slice(&hotline_proto::frame::encode_frame(&NodeToRelay::Submit(
            signed,
        ))?);
    }
    if !buf.is_empty() {
        writer.write_raw(&buf).await?;
    }
    Ok(())
}

/// The recipient: stores deliveries in its node store and receipts them.
pub(crate) async fn recipient(peer: Peer) -> anyhow::Result<()> {
    let store = RefCell::new(NodeStore::open(&peer.store_dir)?);
    link(&peer, |session| recipient_session(&peer, &store, session)).await
}

async fn recipient_session(
    peer: &Peer,
    store: &RefCell<NodeStore>,
    session: Session,
) -> Result<(), NetError> {
    let Session {
        conn,
        reader,
        mut writer,
        ..
    } = session;
    let (tx, mut rx) = mpsc::channel(256);
    let _reader = AbortOnDrop(tokio::spawn(read_frames(reader, tx)));
    let mut check = tokio::time::interval(Duration::from_millis(SETTLED_CHECK_MS));
    loop {
        tokio::select! {
            biased;
            f = rx.recv() => {
                let f = match f {
                    Some(f) => f?,
                    None => return Err(conn.close_reason().map(NetError::from_connection)
                        .unwrap_or(NetError::Protocol("relay closed the stream".into()))),
                };
                let mut batch = vec![f];
                while let Ok(more) = rx.try_recv() {
                    batch.push(more?);
                }
                let mut deliveries = Vec::new();
                for f in batch {
                    match f {
                        RelayToNode::Deliver(s) => deliveries.push(s),
                        RelayToNode::Error(e) => return Err(NetError::Closed { code: e.code, reason: e.detail }),
                        _ => {}
                    }
                }
                if deliveries.is_empty() {
                    continue;
                }
                let checked: Vec<_> = deliveries
                    .into_iter()
                    .map(|s| {
                        let r = peer.roster.verify_envelope(&s).map(|v| v.into_parts().0).map_err(|e| e.to_string());
                        (s, r)
                    })
                    .collect();
                let (outcomes, items) = store
                    .borrow_mut()
                    .store_deliveries(&checked, peer.now_ms())
                    .map_err(|e| NetError::Local(format!("store: {e}")))?;
                {
                    let mut l = peer.ledger.borrow_mut();
                    for ((s, _), outcome) in checked.iter().zip(&outcomes) {
                        let Ok(env) = s.decode_unverified() else { continue };
                        let seq = l.seq(&env.id);
                        match l.record(&env.id) {
                            Some(m) => {
                                m.deliveries += 1;
                                if *outcome == Stored::New {
                                    m.shown += 1;
                                }
                            }
                            None => {
                                l.unknown_deliveries.insert(env.id);
                            }
                        }
                        l.event(format!("{} delivery #{}: {outcome:?}", peer.me, seq.unwrap_or(0)));
                    }
                }
                // Receipted at once, batch by batch (the node paces its receipts; the
                // simulation's clock and faults are what it studies, not the relay's load).
                let receipts = store
                    .borrow_mut()
                    .delivered_receipts(&peer.me, &peer.key, items, peer.now_ms())
                    .map_err(|e| NetError::Local(format!("store: {e}")))?;
                for r in receipts {
                    writer.write(&NodeToRelay::Receipt(r)).await?;
                }
            }
            _ = check.tick() => {
                if peer.settled() {
                    return Ok(());
                }
            }
        }
    }
}
