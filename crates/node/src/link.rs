//! One task per relay: connect (capped exponential back-off with jitter, also after a link
//! that failed soon after it was made), authenticate, then send the outbox and pending
//! receipts, and take deliveries, answers and receipts.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use hotline_net::{NetError, Session};
use hotline_proto::frame::{ErrorCode, NodeToRelay, RejectCode, RelayToNode, Subject};
use hotline_proto::limits::SEQ_MAX;
use hotline_proto::{Digest, Envelope, MessageId, ParticipantId};

use crate::events::{status_logged, Event};
use crate::limits::{
    ACKS_IN_FLIGHT, BACKOFF_MAX_MS, BACKOFF_MIN_MS, CLOCK_SKEW_WARN_MS, CONNECT_TIMEOUT_MS,
    HEALTHY_LINK_MS, LINK_BATCH_BYTES_MAX, LINK_QUEUE_BYTES_MAX, LINK_READER_BYTES_MAX,
    LINK_READER_FRAMES, LINK_WRITE_TIMEOUT_MS, RECEIPT_BATCH_MAX, RELAY_RETRY_HINT_MAX_MS,
    SILENT_LINK_MS, SILENT_PING_MS,
};
use crate::pacer::ReceiptPacer;
use crate::store::{retryable, Answered, Resequenced, Stored};
use crate::{now_ms, NodeState};

/// How long a retryable refusal waits before the message or receipt is offered again.
const RETRY_AFTER_MS: u64 = 2_000;

/// Delivered receipts a link keeps, written and not yet answered, to write again if the
/// relay refuses them for a reason that passes. The relay answers each at once, so this is
/// reached only if it stops answering.
const DELIVERED_UNANSWERED_MAX: usize = 1_024;

pub(crate) async fn run(
    state: Arc<NodeState>,
    idx: usize,
    endpoint: quinn::Endpoint,
    mut shutdown: watch::Receiver<bool>,
) {
    let addr = state.config.relays[idx].address;
    // The pause before the next attempt after a failed connection, and after a link lost
    // within `HEALTHY_LINK_MS` of being made.
    let mut backoff = Backoff::new();
    let mut short_pause = Backoff::new();
    let mut failures = 0u32;
    // The lasting refusal last logged, so that it is logged once (and again only if it
    // changes), not at every attempt.
    let mut refusal_logged = None;
    // Whether the last failed attempt was refused for the relay's limit (`over_limit`),
    // so that a run of them is logged once.
    let mut limited_logged = false;
    loop {
        if *shutdown.borrow() {
            break;
        }
        let attempt = tokio::select! {
            _ = shutdown.changed() => break,
            r = connect(&state, &endpoint, addr) => r,
        };
        match attempt {
            Err(e) => {
                failures += 1;
                let refusal = crate::RelayRefusal::of(&e);
                let code = refusal.as_ref().map(|r| r.code);
                state.link_down(idx, e.to_string(), refusal, true);
                let limited = over_limit(&e);
                let (wait, relay_hint_ms) = if limited {
                    limit_wait(&mut backoff, &e)
                } else {
                    (backoff.next(), None)
                };
                // A lasting refusal is an error, logged when it starts or changes: waiting
                // will not end it. Otherwise the first failure is worth a warning; repeats
                // are noise until recovery.
                if let Some(code) = code.filter(|c| refusal_logged != Some(*c)) {
                    error!(relay = idx, %addr, code = %code.name(), error = %e, "relay link refused, lastingly: nothing leaves through this relay until this is put right (hotline node-status; OPERATIONS.md section 9); queued messages wait in the outbox");
                } else if code.is_some() {
                    debug!(relay = idx, %addr, error = %e, failures, "relay link still refused");
                } else if limited && !limited_logged {
                    // `relay_hint_ms`: when the relay said to try again, if it did (absent
                    // if it did not: the longest back-off is waited instead).
                    warn!(relay = idx, %addr, error = %e, retry_in_ms = wait, relay_hint_ms, "the relay refused this node's login for its budget of sessions: this participant logged in more often than the relay allows (a second node with this key, or links remade in a loop?); waiting before trying again, as long as the relay said; queued messages wait in the outbox");
                } else if limited {
                    debug!(relay = idx, %addr, error = %e, failures, retry_in_ms = wait, relay_hint_ms, "relay still refuses this node's login for its budget of sessions");
                } else if failures == 1 {
                    warn!(relay = idx, %addr, error = %e, "relay unreachable; queued messages wait in the outbox");
                } else {
                    debug!(relay = idx, %addr, error = %e, failures, "relay still unreachable");
                }
                refusal_logged = code;
                limited_logged = limited;
                if matches!(e, NetError::PinMismatch { .. }) {
                    error!(relay = idx, %addr, "relay certificate does not match the pinned fingerprint: refusing it");
                }
                if !pause(&mut shutdown, wait).await {
                    break;
                }
            }
            Ok(session) => {
                backoff.reset();
                failures = 0;
                refusal_logged = None;
                limited_logged = false;
                let up_since = tokio::time::Instant::now();
                state.link_up(
                    idx,
                    crate::LinkUp {
                        conn: session.conn.clone(),
                        since_ms: now_ms(),
                    },
                );
                info!(relay = idx, %addr, "relay connected");
                state.emit(Event::RelayUp {
                    relay: idx,
                    address: addr.to_string(),
                });
                let conn = session.conn.clone();
                let r = serve(&state, idx, session, &mut shutdown).await;
                let why = match &r {
                    Ok(Served::Shutdown) => "the node is stopping".to_owned(),
                    Ok(Served::Redeliver) => {
                        "connecting anew for deliveries the full quarantine refused".to_owned()
                    }
                    Err(e) => format!("link lost: {e}"),
                };
                let refused = r.as_ref().err().and_then(crate::RelayRefusal::of);
                state.link_down(idx, why.clone(), refused, false);
                match r {
                    Ok(Served::Redeliver) => {
                        conn.close(
                            ErrorCode::Normal.close_code().into(),
                            b"connecting anew to be delivered what was refused",
                        );
                        // Down, as the status says it is until the link is made again, and
                        // then up: a subscriber that saw `relay_up` twice in a row could not
                        // tell a link made anew from an event lost.
                        state.emit(Event::RelayDown {
                            relay: idx,
                            error: why,
                        });
                    }
                    Ok(Served::Shutdown) => {
                        conn.close(ErrorCode::Normal.close_code().into(), b"node shutting down");
                        endpoint.wait_idle().await;
                        break;
                    }
                    Err(e) => {
                        // Say why to the relay: a frame it sent that this node could not
                        // take, or this node's own failure (a no-op if the link has ended).
                        conn.close(
                            e.close_code().close_code().into(),
                            hotline_proto::frame::detail(e.to_string()).as_bytes(),
                        );
                        state.emit(Event::RelayDown {
                            relay: idx,
                            error: e.to_string(),
                        });
                        if matches!(
                            e,
                            NetError::Closed {
                                code: ErrorCode::Superseded,
                                ..
                            }
                        ) {
                            // Another node speaks for this participant: reconnecting at once
                            // would only push it off in turn. Wait, loudly.
                            error!(relay = idx, %addr, "another connection authenticated as this participant; is a second node running with this key?");
                            if !pause(&mut shutdown, BACKOFF_MAX_MS).await {
                                break;
                            }
                        } else if over_limit(&e) {
                            // A relay's limit: trying again at once would only be refused
                            // again (another relay's, as the reference relay refuses at
                            // login only, above).
                            let (wait, relay_hint_ms) = limit_wait(&mut short_pause, &e);
                            warn!(relay = idx, %addr, error = %e, retry_in_ms = wait, relay_hint_ms, "the relay closed the link for a limit of its own; waiting before trying again");
                            if !pause(&mut shutdown, wait).await {
                                break;
                            }
                        } else if up_since.elapsed() >= Duration::from_millis(HEALTHY_LINK_MS) {
                            // A link that worked for a while: remake it at once.
                            short_pause.reset();
                            warn!(relay = idx, %addr, error = %e, "relay link lost; reconnecting");
                        } else {
                            // A link lost soon after it was made (this node's disk is full,
                            // so every delivery fails to store; the relay closes it at once)
                            // would otherwise be remade in a loop: pause, longer each time
                            // until a link lasts.
                            let wait = short_pause.next();
                            warn!(relay = idx, %addr, error = %e, retry_in_ms = wait, "relay link lost soon after it was made; reconnecting after a pause");
                            if !pause(&mut shutdown, wait).await {
                                break;
                            }
                        }
                    }
                }
            }
        }
    }
    state.link_down(idx, "the node is stopping".into(), None, false);
}

/// A capped exponential back-off: `BACKOFF_MIN_MS`, doubling up to `BACKOFF_MAX_MS`, each
/// pause plus up to half again of jitter.
struct Backoff(u64);

impl Backoff {
    fn new() -> Self {
        Self(BACKOFF_MIN_MS)
    }

    fn reset(&mut self) {
        self.0 = BACKOFF_MIN_MS;
    }

    /// The next pause in milliseconds, jitter included; the one after is twice as long.
    fn next(&mut self) -> u64 {
        let wait = self.0 + rand::random::<u64>() % (self.0 / 2 + 1);
        self.0 = (self.0 * 2).min(BACKOFF_MAX_MS);
        wait
    }

    /// The longest pause, `BACKOFF_MAX_MS` plus jitter, and those after it as long.
    fn longest(&mut self) -> u64 {
        self.0 = BACKOFF_MAX_MS;
        self.next()
    }

    /// The next pause, but at least `floor_ms` (a relay's word on when to try again, at
    /// most `RELAY_RETRY_HINT_MAX_MS`): the longer of the two plus up to half again of
    /// jitter, and no more than half of `BACKOFF_MAX_MS` of it (a few seconds spread nodes
    /// apart; half of a long wait would only delay the node). The one after is twice the
    /// step, as after `next`.
    fn at_least(&mut self, floor_ms: u64) -> u64 {
        let base = self.0.max(floor_ms);
        let jitter_max = (base / 2).min(BACKOFF_MAX_MS / 2);
        self.0 = (self.0 * 2).min(BACKOFF_MAX_MS);
        base + rand::random::<u64>() % (jitter_max + 1)
    }
}

/// Whether the relay refused this node, or ended its link, for a limit of the relay's own
/// (`LimitExceeded`: the reference relay's budget of sessions per participant, refused at
/// login, PROTOCOL.md 9.1). Its detail says when to try again; an attempt sooner is only
/// refused again, so the link waits that long (`limit_wait`), and a node refused once is let
/// in at its next attempt (unless the relay's operator made the refill longer than
/// `RELAY_RETRY_HINT_MAX_MS`). A detail that says nothing readable is waited out for the
/// longest back-off (10 s, plus jitter), longer than the reference relay's default refill.
fn over_limit(e: &NetError) -> bool {
    matches!(
        e,
        NetError::Closed {
            code: ErrorCode::LimitExceeded,
            ..
        }
    )
}

/// The pause after the relay refused this node, or ended its link, for a limit of its own
/// (`over_limit`), and the relay's hint it follows, if any: as long as the close's reason
/// says (`retry in S.T s`, cut to `RELAY_RETRY_HINT_MAX_MS`), or the back-off's step if
/// longer, plus jitter; the longest back-off if it says nothing this node can read.
fn limit_wait(backoff: &mut Backoff, e: &NetError) -> (u64, Option<u64>) {
    match relay_hint_ms(e) {
        Some(hint) => (backoff.at_least(hint), Some(hint)),
        None => (backoff.longest(), None),
    }
}

/// When a refusal for the relay's limit says to try again, cut to `RELAY_RETRY_HINT_MAX_MS`:
/// the reason is the relay's text (`hotline_proto::frame::retry_in_ms_of` reads what the
/// reference relay writes).
fn relay_hint_ms(e: &NetError) -> Option<u64> {
    match e {
        NetError::Closed {
            code: ErrorCode::LimitExceeded,
            reason,
        } => hotline_proto::frame::retry_in_ms_of(reason).map(|h| h.min(RELAY_RETRY_HINT_MAX_MS)),
        _ => None,
    }
}

/// Waits `ms` milliseconds; false if the node is shutting down meanwhile, or already: a link
/// that failed in its shutdown branch has taken the signal, which `changed` would not see
/// again.
async fn pause(shutdown: &mut watch::Receiver<bool>, ms: u64) -> bool {
    if *shutdown.borrow() {
        return false;
    }
    tokio::select! {
        _ = shutdown.changed() => false,
        _ = tokio::time::sleep(Duration::from_millis(ms)) => true,
    }
}

async fn connect(
    state: &NodeState,
    endpoint: &quinn::Endpoint,
    addr: std::net::SocketAddr,
) -> Result<Session, NetError> {
    let timeout = Duration::from_millis(CONNECT_TIMEOUT_MS);
    let conn = hotline_net::connect(endpoint, addr, timeout).await?;
    let version = state.roster.borrow().version;
    hotline_net::authenticate(conn, &state.me, &state.key, version, now_ms(), timeout).await
}

/// Whether a link has heard from its relay lately, from the connection's count of datagrams
/// received, sampled every `SILENT_PING_MS` (`SILENT_LINK_MS` says why).
#[derive(Debug)]
struct Silence {
    /// The count at the last sample that saw it change.
    seen: u64,
    /// When that sample was taken.
    since: std::time::Instant,
    /// Whether the link is in a silence long enough to ping.
    pinging: bool,
}

/// What one sample of a link's received datagrams says.
#[derive(Debug, PartialEq, Eq)]
enum Hearing {
    /// Something arrived since the last sample, or the silence is still short;
    /// `after_ms` is the length of a silence this ends, if it was long enough to ping.
    Heard { after_ms: Option<u64> },
    /// Nothing for `ms` (at least `SILENT_LINK_MS`): ping. `first` for the first ping of
    /// this silence.
    Silent { ms: u64, first: bool },
}

impl Silence {
    fn new(seen: u64, now: std::time::Instant) -> Self {
        Self {
            seen,
            since: now,
            pinging: false,
        }
    }

    fn observe(&mut self, seen: u64, now: std::time::Instant) -> Hearing {
        let ms = now.saturating_duration_since(self.since).as_millis() as u64;
        if seen != self.seen {
            self.seen = seen;
            self.since = now;
            let after_ms = std::mem::take(&mut self.pinging).then_some(ms);
            return Hearing::Heard { after_ms };
        }
        if ms < SILENT_LINK_MS {
            return Hearing::Heard { after_ms: None };
        }
        let first = !std::mem::replace(&mut self.pinging, true);
        Hearing::Silent { ms, first }
    }
}

/// How far the relay's clock (`Welcome.relay_time_ms`) is ahead of this node's (negative:
/// behind), if by more than `CLOCK_SKEW_WARN_MS`. The relay may send any `u64`: the
/// difference is taken in `i128`, where no two such times overflow.
fn clock_skew_ms(relay_time_ms: u64, now_ms: u64) -> Option<i128> {
    let skew = i128::from(relay_time_ms) - i128::from(now_ms);
    (skew.unsigned_abs() > u128::from(CLOCK_SKEW_WARN_MS)).then_some(skew)
}

/// What a batch of frames leaves to offer again after `RETRY_AFTER_MS`: what the relay
/// refused for a reason that passes (`store::retryable`).
#[derive(Debug, Default)]
struct Retries {
    messages: Vec<MessageId>,
    /// Receipts by digest: acknowledgements (offered again from the store) and delivered
    /// receipts (written again from `Link::delivered_sent`).
    receipts: Vec<Digest>,
}

impl Retries {
    fn is_empty(&self) -> bool {
        self.messages.is_empty() && self.receipts.is_empty()
    }
}

/// The link's end of its stream to the relay. Frames are queued, in the order the link
/// makes them, and the link's loop writes the queue as QUIC takes it, beside taking the
/// relay's frames, never instead: a link that waited on its own write (an outbox page of up
/// to 20 MB) took nothing from the relay meanwhile, and a relay writing it a backlog waited
/// in turn once its reader's channel and the stream window were full; the relay reads
/// only so far ahead (`READ_AHEAD_FRAMES`), so each side's write could wait on the
/// other's until the link was closed as a slow consumer, at every connection. A queue that
/// makes no progress for `LINK_WRITE_TIMEOUT_MS` ends the link ([`NetError::Stalled`],
/// closed `SlowConsumer`); one the relay reads steadily, however slowly (an outbox of
/// megabytes over a poor link), takes the time it takes.
struct RelayWriter {
    writer: hotline_net::FrameWriter,
    /// Encoded frames not yet written, in order; the first written up to `offset`.
    queued: VecDeque<Vec<u8>>,
    offset: usize,
    /// Bytes queued and not yet written.
    queued_bytes: usize,
    /// When QUIC last took bytes of the queue, or the queue last stopped being empty.
    progress_at: tokio::time::Instant,
}

impl RelayWriter {
    fn new(writer: hotline_net::FrameWriter) -> Self {
        Self {
            writer,
            queued: VecDeque::new(),
            offset: 0,
            queued_bytes: 0,
            progress_at: tokio::time::Instant::now(),
        }
    }

    fn queue(&mut self, frame: &NodeToRelay) -> Result<(), NetError> {
        self.queue_raw(hotline_proto::frame::encode_frame(frame)?);
        Ok(())
    }

    /// Queues encoded frames (prefixes included), taking the buffer as it is.
    fn queue_raw(&mut self, bytes: Vec<u8>) {
        if bytes.is_empty() {
            return;
        }
        if self.queued_bytes == 0 {
            self.progress_at = tokio::time::Instant::now();
        }
        self.queued_bytes += bytes.len();
        self.queued.push_back(bytes);
    }

    fn is_idle(&self) -> bool {
        self.queued_bytes == 0
    }

    /// Whether the link may take more of the relay's frames, whose handling queues more:
    /// the protocol's windows keep the queue far below `LINK_QUEUE_BYTES_MAX`, so this is
    /// backpressure only against a relay that breaks them.
    fn has_room(&self) -> bool {
        self.queued_bytes < LINK_QUEUE_BYTES_MAX
    }

    /// When a queue that has made no progress since ends the link; `None` while it is empty.
    fn stall_at(&self) -> Option<tokio::time::Instant> {
        (!self.is_idle()).then(|| self.progress_at + Duration::from_millis(LINK_WRITE_TIMEOUT_MS))
    }

    fn stalled() -> NetError {
        NetError::Stalled {
            stall_ms: LINK_WRITE_TIMEOUT_MS,
        }
    }

    /// Writes what QUIC takes of the queue once it takes any; never resolves while the
    /// queue is empty. Cancel-safe, as `FrameWriter::write_some` is: dropped before it
    /// resolves, it wrote nothing.
    async fn progress(&mut self) -> Result<(), NetError> {
        let Some(front) = self.queued.front() else {
            return std::future::pending().await;
        };
        let n = self.writer.write_some(&front[self.offset..]).await?;
        self.offset += n;
        self.queued_bytes -= n;
        if self.offset == front.len() {
            self.queued.pop_front();
            self.offset = 0;
        }
        self.progress_at = tokio::time::Instant::now();
        Ok(())
    }
}

/// A link's state on one connection. Its store work runs off the runtime, the link moved
/// there and back ([`Link::off_runtime`]).
struct Link {
    state: Arc<NodeState>,
    idx: usize,
    writer: RelayWriter,
    /// Outbox messages written on this connection and not yet answered.
    outbox: crate::in_flight::InFlight,
    /// The highest sequence number the relay had accepted from this node when the
    /// connection began (`Welcome.last_seq`).
    floor: u64,
    /// Acknowledgement receipts written on this connection and not yet stored (at most
    /// `ACKS_IN_FLIGHT`).
    receipts_sent: HashSet<Digest>,
    /// Pending acknowledgements left unwritten for `ACKS_IN_FLIGHT`: written as the relay
    /// answers those in flight.
    acks_held: bool,
    /// Delivered receipts written on this connection and not yet answered, kept to be
    /// written again if the relay refuses one for a reason that passes (at most
    /// `DELIVERED_UNANSWERED_MAX`; past that, one refused waits for the next connection,
    /// when the relay delivers those messages again).
    delivered_sent: HashMap<Digest, hotline_proto::Signed<hotline_proto::Receipt>>,
    /// Deliveries stored durably and not yet receipted (receipt pacing).
    pacer: ReceiptPacer,
    /// Deliveries refused on this connection for a full quarantine: the relay keeps them
    /// and delivers them again only on a new connection.
    refused: usize,
}

/// How a link ended without a failure.
enum Served {
    /// The node is stopping.
    Shutdown,
    /// The quarantine has room for deliveries refused on this link: connect again, so that
    /// the relay delivers them again.
    Redeliver,
}

async fn serve(
    state: &Arc<NodeState>,
    idx: usize,
    session: Session,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<Served, NetError> {
    let Session {
        conn,
        reader,
        writer,
        welcome,
    } = session;
    // A number above the highest an envelope may carry is no relay's record: a hostile or
    // broken relay's. Taken as a floor it would leave this node no number to sign with, on
    // every link and after restarts, so it ends the link as any bad frame does.
    if welcome.last_seq.0 > SEQ_MAX {
        error!(
            relay = idx,
            last_seq = welcome.last_seq.0,
            "the relay's welcome names a last sequence number above the highest an envelope may carry (2^63 - 1): a protocol violation; ending the link, this node's counter unchanged"
        );
        return Err(NetError::Protocol(format!(
            "Welcome.last_seq {} is above the highest sequence number, {SEQ_MAX}",
            welcome.last_seq.0
        )));
    }
    if let Some(skew) = clock_skew_ms(welcome.relay_time_ms, now_ms()) {
        warn!(
            relay = idx,
            skew_ms = skew,
            "clock differs from the relay's by more than a minute"
        );
    }
    let (last_seq, roster) = (welcome.last_seq.0, welcome.roster);
    state
        .off_runtime(move |state| welcomed(state, idx, last_seq, roster.as_ref()))
        .await
        .map_err(failed_off_runtime)??;
    let (mut rx, _reader) = relay_reader(reader);
    let pacer = ReceiptPacer::new(
        std::time::Duration::from_millis(state.config.receipt_pace_ms),
        crate::limits::RECEIPT_PACE_ITEMS,
    );
    let mut link = Link {
        state: state.clone(),
        idx,
        writer: RelayWriter::new(writer),
        outbox: crate::in_flight::InFlight::default(),
        floor: last_seq,
        receipts_sent: HashSet::new(),
        acks_held: false,
        delivered_sent: HashMap::new(),
        pacer,
        refused: 0,
    };
    let mut room = state.quarantine_room.subscribe();
    room.mark_unchanged();
    let wake = state.wake[idx].clone();
    let datagrams_in = || conn.stats().udp_rx.datagrams;
    let mut silence = Silence::new(datagrams_in(), std::time::Instant::now());
    let mut silence_check = tokio::time::Instant::now() + Duration::from_millis(SILENT_PING_MS);
    let mut pings = 0u64;
    let mut retry_at: Option<tokio::time::Instant> = None;
    // Sets: a relay that refuses one thing again and again adds it once.
    let mut retry_ids: HashSet<MessageId> = HashSet::new();
    let mut retry_receipts: HashSet<Digest> = HashSet::new();
    // Runs a method of the link that uses the store off the runtime (`Link::off_runtime`),
    // and takes the link back: awaited, so the link does one thing at a time, in order.
    macro_rules! off_runtime {
        ($work:expr) => {{
            let (back, out) = link.off_runtime($work).await?;
            link = back;
            out
        }};
    }
    off_runtime!(Link::pump)?;
    loop {
        // Timers as select preconditions: a branch whose time is not set is not polled.
        let now = tokio::time::Instant::now();
        let receipt_due = link.pacer.due().map(tokio::time::Instant::from_std);
        let stall_at = link.writer.stall_at();
        let (refused, can_take) = (link.refused > 0, link.writer.has_room());
        tokio::select! {
            biased;
            // Shutdown: receipt what is stored, and see it stored before the connection
            // closes (closing discards what the relay has not read yet).
            _ = shutdown.changed() => {
                let sent = off_runtime!(Link::send_receipt)?;
                link.until_stored(&mut rx, sent).await;
                return Ok(Served::Shutdown);
            }
            // The queue, written as the relay reads it, beside the branches below.
            w = link.writer.progress(), if stall_at.is_some() => w?,
            // A queue the relay has taken nothing of for `LINK_WRITE_TIMEOUT_MS`.
            _ = tokio::time::sleep_until(stall_at.unwrap_or(now)), if stall_at.is_some() => {
                return Err(RelayWriter::stalled());
            }
            // An officer discarded quarantined deliveries after some were refused here.
            _ = room.changed(), if refused => {
                let sent = off_runtime!(|link: &mut Link| {
                    if link.state.store().quarantine_size().1 {
                        return Ok(None);
                    }
                    info!(relay = link.idx, refused = link.refused, "the quarantine has room again: connecting anew so that the relay delivers what it refused");
                    link.send_receipt().map(Some)
                })?;
                if let Some(sent) = sent {
                    link.until_stored(&mut rx, sent).await;
                    return Ok(Served::Redeliver);
                }
            }
            // Stored deliveries whose receipt is due.
            _ = tokio::time::sleep_until(receipt_due.unwrap_or(now)), if receipt_due.is_some() => {
                off_runtime!(Link::send_receipt)?;
            }
            // Something new to send (composed message or acknowledgement): before the
            // frames from the relay, which after a long absence can keep coming for seconds
            // (a backlog of deliveries), so that an officer's message or acknowledgement
            // does not wait for the backlog. A notification comes only when something was
            // composed, so this cannot keep the frames waiting in turn.
            _ = wake.notified() => off_runtime!(Link::pump)?,
            // Frames from the relay, batched while more are already waiting; taken while
            // the link's own frames wait to be written (`RelayWriter`).
            f = rx.recv(), if can_take => {
                let Some(first) = f else {
                    return Err(conn.close_reason().map(NetError::from_connection).unwrap_or(NetError::Protocol("relay closed the stream".into())));
                };
                let (batch, failed) = take_batch(first?, || rx.try_recv().ok());
                // The whole batch in one hand-over: its deliveries stored in one
                // transaction, its answers recorded in order, each before what follows it.
                let handled = off_runtime!(move |link: &mut Link| link.handle(batch));
                if let Some(e) = failed {
                    // Why the link ended, rather than what handling its frames made of it.
                    if let Err(after) = handled {
                        debug!(relay = idx, error = %after, "after the link failed");
                    }
                    return Err(e);
                }
                let retries = handled?;
                if !retries.is_empty() {
                    retry_ids.extend(retries.messages);
                    retry_receipts.extend(retries.receipts);
                    retry_at.get_or_insert_with(|| tokio::time::Instant::now() + Duration::from_millis(RETRY_AFTER_MS));
                }
            }
            // A link that has heard nothing lately: ping the relay (see `SILENT_LINK_MS`).
            _ = tokio::time::sleep_until(silence_check) => {
                silence_check = tokio::time::Instant::now() + Duration::from_millis(SILENT_PING_MS);
                match silence.observe(datagrams_in(), std::time::Instant::now()) {
                    Hearing::Heard { after_ms: Some(ms) } => {
                        info!(relay = idx, silent_ms = ms, "relay heard again after a silence");
                    }
                    Hearing::Heard { after_ms: None } => {}
                    Hearing::Silent { ms, first } => {
                        if first {
                            info!(relay = idx, silent_ms = ms, "nothing heard from the relay; pinging it until it answers or the link times out");
                        } else {
                            debug!(relay = idx, silent_ms = ms, "relay still silent; pinging it");
                        }
                        pings += 1;
                        link.writer.queue(&NodeToRelay::Ping(pings))?;
                    }
                }
            }
            // Retryable refusals: offer those messages and acknowledgements again.
            _ = tokio::time::sleep_until(retry_at.unwrap_or(now)), if retry_at.is_some() => {
                retry_at = None;
                for id in retry_ids.drain() {
                    link.outbox.again(&id);
                }
                let again: Vec<Digest> = retry_receipts.drain().collect();
                link.resend_delivered(&again)?;
                for d in &again {
                    link.receipts_sent.remove(d);
                }
                off_runtime!(Link::pump)?;
            }
        }
    }
}

/// The link's reader of the relay's frames: a channel of at most `LINK_READER_FRAMES`
/// frames and `LINK_READER_BYTES_MAX` bytes.
fn relay_reader(
    reader: hotline_net::FrameReader,
) -> (
    hotline_net::stream::FrameReceiver<RelayToNode>,
    hotline_net::stream::ReaderTask,
) {
    hotline_net::stream::spawn_reader(reader, LINK_READER_FRAMES, LINK_READER_BYTES_MAX)
}

/// The relay's frames waiting after `first` (`next` takes the reader's next without
/// waiting), taken with it in one batch (deliveries stored in one transaction), up to
/// `RECEIPT_BATCH_MAX` frames and no more once those taken hold `LINK_BATCH_BYTES_MAX`
/// bytes; and the reader's failure if it came among them. The failure (a frame that does
/// not decode, the connection lost) comes after the frames read before it: those are taken
/// first, as before a closing `Error` frame, and the link ends after them. Dropped with the
/// failure, answers read before it were learnt only at the next connection, which a relay
/// gone for good never makes.
fn take_batch(
    first: RelayToNode,
    mut next: impl FnMut() -> Option<Result<RelayToNode, NetError>>,
) -> (VecDeque<RelayToNode>, Option<NetError>) {
    let mut bytes = frame_bytes(&first);
    let mut batch = VecDeque::from([first]);
    let mut failed = None;
    while batch.len() < RECEIPT_BATCH_MAX && bytes < LINK_BATCH_BYTES_MAX {
        match next() {
            Some(Ok(f)) => {
                bytes += frame_bytes(&f);
                batch.push_back(f);
            }
            Some(Err(e)) => {
                failed = Some(e);
                break;
            }
            None => break,
        }
    }
    (batch, failed)
}

/// The bytes a frame from the relay holds: those of the message, receipt or roster it
/// carries. The others (answers, `Pong`, `Error`) hold a few KiB at most, and count as none.
fn frame_bytes(f: &RelayToNode) -> usize {
    match f {
        RelayToNode::Deliver(s) => s.bytes().len(),
        RelayToNode::Receipt(s) => s.bytes().len(),
        RelayToNode::RosterUpdate(s) => s.bytes().len(),
        _ => 0,
    }
}

/// What a link's store work that panicked ([`NodeState::off_runtime`]) makes of the link:
/// it ends, and is made again.
fn failed_off_runtime(e: tokio::task::JoinError) -> NetError {
    error!(error = %e, "a link's store work failed; ending the link");
    NetError::Local(format!("the link's store work failed: {e}"))
}

/// What a connection's welcome asks of the store, off the runtime: the relay's last
/// sequence number checked against this node's counter and taken as a floor for it, the
/// messages a relay restored from a backup has lost offered again, and a newer roster
/// installed.
fn welcomed(
    state: &NodeState,
    idx: usize,
    last_seq: u64,
    roster: Option<&hotline_proto::Signed<hotline_proto::Roster>>,
) -> Result<(), NetError> {
    // A number implausibly far ahead of this node's own counter is no relay's record either.
    let counter = state
        .store()
        .seq_counter()
        .map_err(|e| NetError::Local(format!("store: {e}")))?;
    if last_seq > counter.saturating_add(crate::limits::SEQ_FLOOR_JUMP_MAX) {
        error!(
            relay = idx,
            last_seq,
            counter,
            "the relay's welcome names a last sequence number more than 2^32 above this node's counter: no relay's record (a restored node is behind by the messages it sent since); a protocol violation; ending the link, this node's counter unchanged"
        );
        return Err(NetError::Protocol(format!(
            "Welcome.last_seq {last_seq} is more than 2^32 above this node's counter, {counter}"
        )));
    }
    // The relay's last accepted sequence number is a floor for ours: a node restored from an
    // old backup must not reuse numbers the relay has seen.
    match state.store().raise_seq_floor(last_seq) {
        Ok(true) => warn!(
            relay = idx,
            last_seq,
            "the relay has seen higher sequence numbers than this store: continuing after them. If this store was restored from a backup, the messages received since, and the receipts of those sent before that came since, are not in it: the Secretariat can have the relay send them again (`hotline relay redeliver`, OPERATIONS.md 6.5)"
        ),
        Ok(false) => {}
        Err(e) => error!(relay = idx, error = %e, "cannot record the relay's sequence floor"),
    }
    // A relay restored from a backup has lost what it accepted since: send it again.
    match state.store().offer_lost(idx, last_seq, now_ms()) {
        Ok((0, _)) => {}
        Ok((n, accepted)) => warn!(
            relay = idx,
            last_seq,
            accepted,
            messages = n,
            "the relay no longer has messages it accepted from this node (was its store restored from a backup?): submitting them again"
        ),
        Err(e) => error!(relay = idx, error = %e, "cannot look for messages the relay lost"),
    }
    if let Some(r) = roster {
        state.offer_roster(r, "relay welcome");
    }
    Ok(())
}

impl Link {
    /// Runs `work` on the link on tokio's blocking pool, and gives the link back
    /// ([`NodeState::off_runtime`]): what the link does with the store (storing deliveries
    /// and receipts, recording answers, reading the outbox, signing receipts) waits there
    /// on the store's lock and the disk, not on a runtime thread, which the other relay's
    /// link, the API and every timer need meanwhile. Awaited by the link's loop, which
    /// takes nothing else until it returns: what the link does stays in order (a delivery
    /// stored before its receipt is written, an acceptance recorded before the next pass
    /// over the outbox). One hand-over per batch of frames, not per frame.
    async fn off_runtime<T: Send + 'static>(
        self,
        work: impl FnOnce(&mut Self) -> T + Send + 'static,
    ) -> Result<(Self, T), NetError> {
        let state = self.state.clone();
        let mut link = self;
        state
            .off_runtime(move |_| {
                let out = work(&mut link);
                (link, out)
            })
            .await
            .map_err(failed_off_runtime)
    }

    /// Writes outbox messages and pending acknowledgements not yet written on this link,
    /// while fewer than `OUTBOX_PAGE` and `ACKS_IN_FLIGHT` of each are unanswered.
    fn pump(&mut self) -> Result<(), NetError> {
        let idx = self.idx;
        let (outbox, receipts) = {
            let store = self.state.store();
            (
                self.outbox
                    .next(|after, limit| store.outbox_after(idx, after, limit)),
                // One more than may be in flight: the pass skips at most those in flight
                // and writes at most the rest, so the one after tells it some are held. A
                // backlog of thousands after a long outage is read a page at a pass.
                store.pending_receipts(self.idx, ACKS_IN_FLIGHT + 1),
            )
        };
        let outbox = outbox.map_err(|e| NetError::Local(format!("store: {e}")))?;
        let receipts = receipts.map_err(|e| NetError::Local(format!("store: {e}")))?;
        let mut buf = Vec::new();
        for m in outbox {
            buf.extend_from_slice(&hotline_proto::frame::encode_frame(&NodeToRelay::Submit(
                m.signed,
            ))?);
        }
        self.acks_held = false;
        for r in receipts {
            let d = r.digest();
            if self.receipts_sent.contains(&d) {
                continue;
            }
            if self.receipts_sent.len() >= ACKS_IN_FLIGHT {
                self.acks_held = true;
                break;
            }
            self.receipts_sent.insert(d);
            buf.extend_from_slice(&hotline_proto::frame::encode_frame(&NodeToRelay::Receipt(
                r,
            ))?);
        }
        self.writer.queue_raw(buf);
        Ok(())
    }

    /// The relay refused message `id` because it holds another message of ours with the
    /// number `id` was written with (`ReplayedSeq`). Has the store sign it again with an
    /// unused number if that is right (a store restored from a backup:
    /// [`crate::store::NodeStore::resequence`]), and makes it due to be written again.
    /// Returns false if the refusal stands, to be handled as any final refusal.
    fn resequenced(&mut self, id: &MessageId) -> bool {
        let Some(seq) = self.outbox.seq(id) else {
            return false;
        };
        let result = self
            .state
            .store()
            .resequence(id, seq, self.floor, &self.state.key, now_ms());
        let fresh = match result {
            Ok(Resequenced::Final) => return false,
            Err(e) => {
                error!(relay = self.idx, error = %e, msg = %id, "cannot sign again a message refused for its sequence number");
                return false;
            }
            Ok(Resequenced::AlreadyFresh) => {
                debug!(relay = self.idx, msg = %id, "refused with a number it no longer has; offering it again");
                self.outbox.again(id);
                return true;
            }
            Ok(Resequenced::Signed(fresh)) => fresh,
        };
        self.outbox.again(id);
        let status = self.refused_status(id);
        warn!(
            relay = self.idx,
            msg = %id,
            status = %status_logged(status),
            refused_seq = seq,
            seq = fresh,
            "the relay holds another message of ours with this sequence number (was this node's store restored from a backup?): signed the message again with the next unused number, offering it again"
        );
        self.state.emit(Event::Rejected {
            id: *id,
            relay: self.idx,
            status,
            code: format!("{:?}", RejectCode::ReplayedSeq),
            detail: format!("sequence number {seq} already used; signed again with {fresh}"),
            retrying: true,
        });
        true
    }

    /// The status of our message `id` a relay refused, for the event and line telling of it:
    /// read from the store, as a refusal is rare and its answer carries no status (`None`,
    /// with an error line, if the store cannot say).
    fn refused_status(&self, id: &MessageId) -> Option<hotline_proto::Status> {
        self.state.store().sent_status(id).unwrap_or_else(|e| {
            error!(error = %e, msg = %id, "cannot read a refused message's status");
            None
        })
    }

    /// Takes out of `a.recipients` the names this node's roster does not list as
    /// participants (revoked or not: a relay on an older roster may route to one revoked
    /// since), and this node's own (a sender is never its own recipient, PROTOCOL.md 7.4);
    /// returns them. A roster newer than this node's is installed at login (`Welcome`), and
    /// one the relay installs later is sent as it is (`RosterUpdate`), so a recipient
    /// dropped for this node's lag is rare, and comes back with its receipt
    /// ([`crate::store::NodeStore::store_forwarded`]) or another relay's acceptance.
    fn unlisted_recipients(&self, a: &mut hotline_proto::frame::Accepted) -> Vec<String> {
        let roster = self.state.roster.borrow().clone();
        let mut unlisted = Vec::new();
        a.recipients.retain(|r| {
            let listed = *r != self.state.me && roster.participant(r).is_some();
            if !listed {
                unlisted.push(r.to_string());
            }
            listed
        });
        unlisted
    }

    /// Handles a batch of frames; returns what was refused for a retryable reason.
    fn handle(&mut self, mut batch: VecDeque<RelayToNode>) -> Result<Retries, NetError> {
        let mut retries = Retries::default();
        let mut deliveries = Vec::new();
        let mut receipts = Vec::new();
        let mut pump = false;
        let mut closed = None;
        while let Some(f) = batch.pop_front() {
            match f {
                RelayToNode::Deliver(s) => deliveries.push(s),
                RelayToNode::Receipt(s) => receipts.push(s),
                RelayToNode::Accepted(mut a) => {
                    // The relay routes, but cannot name recipients who are not participants:
                    // such a name (a relay that lies, or is broken) would show as a recipient
                    // never delivered and be escalated as overdue. Not recorded.
                    let unlisted = self.unlisted_recipients(&mut a);
                    if !unlisted.is_empty() {
                        warn!(relay = self.idx, msg = %a.id, unlisted = %unlisted.join(","), "relay's acceptance names recipients this node's roster does not list as participants, or this node itself; not recorded as recipients");
                    }
                    // The number of the signing written on this connection, which the relay
                    // holds: after a restore the message may since have been signed again
                    // for another relay's refusal (`resequenced`), and this relay has not
                    // seen the new number.
                    let seq = self.outbox.seq(&a.id);
                    let status = match self.state.store().accepted(self.idx, &a, seq, now_ms()) {
                        Err(e) => {
                            // Not recorded, so still in the outbox: offered again after the
                            // pause (the relay, which holds it, answers the same), not at once.
                            error!(relay = self.idx, error = %e, msg = %a.id, "cannot record acceptance; offering the message again after a pause");
                            self.outbox.retry_later(&a.id);
                            retries.messages.push(a.id);
                            continue;
                        }
                        Ok(Answered::Unknown) => {
                            warn!(relay = self.idx, msg = %a.id, "relay answered accepted for a message this node never sent; ignored");
                            continue;
                        }
                        Ok(Answered::Again) => {
                            self.outbox.answered(&a.id);
                            debug!(relay = self.idx, msg = %a.id, "accepted again (a resubmission's answer)");
                            pump = true;
                            continue;
                        }
                        Ok(Answered::New { status }) => status,
                    };
                    self.outbox.answered(&a.id);
                    info!(relay = self.idx, msg = %a.id, status = %status_logged(status), recipients = a.recipients.len(), "accepted");
                    self.state.emit(Event::Accepted {
                        id: a.id,
                        relay: self.idx,
                        status,
                        recipients: a.recipients,
                    });
                    pump = true;
                }
                RelayToNode::Rejected(r) => match r.subject {
                    // A refusal answers a `Submit` written on this connection, as an
                    // acceptance does: one naming a message not written here, or already
                    // answered (accepted, or refused and waiting to be written again), is
                    // ignored as such an acceptance is, not told to the officer as a refusal
                    // of a message that does not exist or was accepted, or told twice.
                    Subject::Message(id) if !self.outbox.unanswered(&id) => {
                        warn!(relay = self.idx, msg = %id, code = ?r.code, "relay answered refused for a message never written on this link, or answered already; ignored");
                    }
                    Subject::Message(id) => {
                        // Signed again with an unused number (a restored store): sent anew.
                        if r.code == RejectCode::ReplayedSeq && self.resequenced(&id) {
                            pump = true;
                            continue;
                        }
                        let again = retryable(r.code);
                        let recorded =
                            self.state
                                .store()
                                .rejected(self.idx, &id, r.code, &r.detail, now_ms());
                        if let Err(e) = &recorded {
                            // As for an acceptance: asked again after the pause.
                            error!(relay = self.idx, error = %e, msg = %id, "cannot record refusal; offering the message again after a pause");
                        }
                        if again || recorded.is_err() {
                            self.outbox.retry_later(&id);
                            retries.messages.push(id);
                        } else {
                            self.outbox.answered(&id);
                        }
                        let status = self.refused_status(&id);
                        warn!(relay = self.idx, msg = %id, status = %status_logged(status), code = ?r.code, detail = ?r.detail, retrying = again, "relay refused a message");
                        self.state.emit(Event::Rejected {
                            id,
                            relay: self.idx,
                            status,
                            code: format!("{:?}", r.code),
                            detail: r.detail,
                            retrying: again,
                        });
                    }
                    // Likewise a refusal of a receipt answers one written on this connection:
                    // an acknowledgement in flight, or a delivered receipt kept to be written
                    // again (past `DELIVERED_UNANSWERED_MAX`, whose refusal leaves nothing to
                    // do). Others were put on the list to offer again, without bound under a
                    // relay that sends them by the thousand, or logged as receipts dropped.
                    Subject::Receipt(d)
                        if !self.receipts_sent.contains(&d)
                            && !self.delivered_sent.contains_key(&d) =>
                    {
                        warn!(relay = self.idx, receipt = %d, code = ?r.code, "relay answered refused for a receipt not written on this link, answered already, or past those kept; ignored");
                    }
                    Subject::Receipt(d) if retryable(r.code) => {
                        // Offered again after the pause: an acknowledgement from the
                        // store, where it stays pending; a delivered receipt as it was
                        // written.
                        warn!(relay = self.idx, receipt = %d, code = ?r.code, detail = ?r.detail, "relay refused a receipt for now; offering it again");
                        retries.receipts.push(d);
                    }
                    Subject::Receipt(d) => {
                        self.delivered_sent.remove(&d);
                        pump |= self.receipts_sent.remove(&d) && self.acks_held;
                        error!(relay = self.idx, receipt = %d, code = ?r.code, detail = ?r.detail, "relay refused a receipt; dropping it for this relay");
                        if let Err(e) = self.state.store().receipt_stored(self.idx, &d) {
                            error!(relay = self.idx, error = %e, receipt = %d, "cannot record a refused receipt; it is offered again at the next connection");
                        }
                    }
                    _ => {
                        warn!(relay = self.idx, code = ?r.code, detail = ?r.detail, "relay refused a frame")
                    }
                },
                RelayToNode::ReceiptStored(d) => {
                    // Room for acknowledgements held back.
                    pump |= self.receipts_sent.remove(&d) && self.acks_held;
                    self.delivered_sent.remove(&d);
                    if let Err(e) = self.state.store().receipt_stored(self.idx, &d) {
                        error!(relay = self.idx, error = %e, receipt = %d, "cannot record a stored receipt; it is offered again at the next connection");
                    }
                }
                RelayToNode::RosterUpdate(r) => self.state.offer_roster(&r, "relay update"),
                RelayToNode::Pong(_) | RelayToNode::Welcome(_) => {}
                RelayToNode::Error(e) => {
                    // The relay's last frame (it closes next): what came before it in the
                    // batch is still taken below.
                    closed = Some(NetError::closed_by_peer(e.code, &e.detail));
                    break;
                }
                _ => debug!(relay = self.idx, "unknown frame ignored"),
            }
        }
        let mut taken = Ok(());
        if !deliveries.is_empty() {
            taken = self.deliver(deliveries);
        }
        if taken.is_ok() && !receipts.is_empty() {
            taken = self.forwarded(receipts);
        }
        if taken.is_ok() && pump && closed.is_none() {
            taken = self.pump();
        }
        match closed {
            Some(closed) => {
                // What was stored is kept; what could not be is delivered again (and
                // receipts not written are offered again) at the next connection.
                if let Err(e) = taken {
                    debug!(relay = self.idx, error = %e, "after the relay's closing frame");
                }
                Err(closed)
            }
            None => taken.map(|()| retries),
        }
    }

    fn deliver(
        &mut self,
        batch: Vec<hotline_proto::Signed<hotline_proto::Envelope>>,
    ) -> Result<(), NetError> {
        let roster = self.state.roster.borrow().clone();
        let checked: Vec<_> = batch
            .into_iter()
            .map(|s| {
                let r = check_delivery(&roster, &s, &self.state.me);
                (s, r)
            })
            .collect();
        let now = now_ms();
        // With the roster they were checked against: one held after a check of the whole
        // quarantine against another roster clears that check's record, so that the next
        // start checks it again (`NodeState::recheck_quarantine_at_start`).
        let against = quarantine_check_basis(&roster);
        let result =
            self.state
                .store()
                .store_deliveries_checked_against(&checked, Some(&against), now);
        let (outcomes, items) = match result {
            Ok(r) => r,
            Err(e) => {
                // Nothing stored, so nothing receipted: the relay will deliver again.
                error!(relay = self.idx, error = %e, "cannot store delivered messages; they will be redelivered");
                return Err(NetError::Local(format!("store: {e}")));
            }
        };
        // A newer roster installed (by another link) since these were checked was checked
        // against the quarantine before those just held were in it, if its walk read their
        // place first: they are checked again, as held receipts are below.
        if outcomes.iter().any(|o| matches!(o, Stored::Quarantined(_)))
            && self.state.roster.borrow().version != roster.version
        {
            self.state.recheck_quarantine();
        }
        let mut new = Vec::new();
        let mut again = Vec::new();
        let mut refused = 0usize;
        for ((signed, checked), outcome) in checked.iter().zip(&outcomes) {
            match (checked, outcome) {
                (Ok(env), Stored::New) => new.push(env),
                (Ok(env), Stored::Duplicate) => {
                    debug!(msg = %env.id, "duplicate delivery dropped");
                    again.push(env.id);
                }
                // Held already, byte for byte, though its signer's key has since left the
                // roster (a relay restored from a backup delivers it again).
                (Err(reason), Stored::Duplicate) => {
                    if let Ok(env) = signed.decode_unverified() {
                        debug!(msg = %env.id, %reason, "duplicate delivery dropped (held since before its key left the roster)");
                        again.push(env.id);
                    }
                }
                (_, Stored::Quarantined(reason)) => {
                    error!(relay = self.idx, digest = %signed.digest(), %reason, "delivered message quarantined, not shown")
                }
                (_, Stored::Refused(_)) => refused += 1,
                _ => {}
            }
        }
        if refused > 0 {
            self.refused += refused;
            // One line a batch: a relay delivering forgeries sends them by the thousand.
            let (size, _) = self.state.store().quarantine_size();
            error!(
                refused,
                held = size.held,
                bytes = size.bytes,
                "quarantine full: deliveries that failed their checks were neither stored nor receipted, so the relay keeps them; look at them with `hotline inbox --quarantined` and discard with `hotline discard`"
            );
        }
        self.state.announce_stored(new);
        if !again.is_empty() {
            let reoffered = self.state.store().reoffer_acks(self.idx, &again);
            match reoffered {
                Ok(0) => {}
                Ok(n) => {
                    info!(relay = self.idx, acknowledgements = n, "the relay delivered again messages acknowledged here: offering it their acknowledgements again");
                    self.pump()?;
                }
                Err(e) => {
                    error!(relay = self.idx, error = %e, "cannot queue acknowledgements again for messages delivered again")
                }
            }
        }
        // Receipted together with whatever else is stored within the pace.
        if self
            .pacer
            .add(items, tokio::time::Instant::now().into_std())
        {
            self.send_receipt()?;
        }
        Ok(())
    }

    /// Signs cumulative delivered receipts for the stored deliveries waiting for one (one
    /// receipt unless more than a receipt may name wait), and writes them; returns their
    /// digests. If they cannot be signed and journaled, nothing is lost: the relay keeps
    /// redelivering those messages until it has their receipt.
    fn send_receipt(&mut self) -> Result<HashSet<Digest>, NetError> {
        let items = self.pacer.take();
        if items.is_empty() {
            return Ok(HashSet::new());
        }
        let result =
            self.state
                .store()
                .delivered_receipts(&self.state.me, &self.state.key, items, now_ms());
        match result {
            Ok(receipts) => {
                let mut buf = Vec::new();
                let mut digests = HashSet::new();
                for r in receipts {
                    let d = r.digest();
                    digests.insert(d);
                    buf.extend_from_slice(&hotline_proto::frame::encode_frame(
                        &NodeToRelay::Receipt(r.clone()),
                    )?);
                    if self.delivered_sent.len() < DELIVERED_UNANSWERED_MAX {
                        self.delivered_sent.insert(d, r);
                    }
                }
                self.writer.queue_raw(buf);
                Ok(digests)
            }
            Err(e) => {
                error!(relay = self.idx, error = %e, "cannot sign a delivered receipt; the relay will deliver those messages again");
                Err(NetError::Local(format!("store: {e}")))
            }
        }
    }

    /// Writes again the delivered receipts among `digests` (refused for a reason that
    /// passes); the others are acknowledgements, which `pump` offers from the store.
    fn resend_delivered(&mut self, digests: &[Digest]) -> Result<(), NetError> {
        let mut buf = Vec::new();
        for d in digests {
            if let Some(r) = self.delivered_sent.get(d) {
                buf.extend_from_slice(&hotline_proto::frame::encode_frame(&NodeToRelay::Receipt(
                    r.clone(),
                ))?);
            }
        }
        self.writer.queue_raw(buf);
        Ok(())
    }

    /// At shutdown, waits up to `SHUTDOWN_RECEIPT_WAIT_MS` for the relay's answers to the
    /// delivered receipts just queued, writing the queue meanwhile (they are at its end).
    /// Other frames are dropped: a delivery not stored is delivered again, an answer is given
    /// again when the outbox is resent. A receipt still unanswered costs only a redelivery
    /// at the next connection.
    async fn until_stored(
        &mut self,
        rx: &mut hotline_net::stream::FrameReceiver<RelayToNode>,
        mut waiting: HashSet<Digest>,
    ) {
        if waiting.is_empty() {
            return;
        }
        let idx = self.idx;
        let writer = &mut self.writer;
        let answered = async {
            while !waiting.is_empty() {
                let writing = !writer.is_idle();
                let f = tokio::select! {
                    biased;
                    // Taking the relay's frames meanwhile, as the loop does: the relay may
                    // be writing while the queue waits for it to read.
                    w = writer.progress(), if writing => match w {
                        Ok(()) => continue,
                        Err(_) => break,
                    },
                    f = rx.recv() => f,
                };
                match f {
                    Some(Ok(RelayToNode::ReceiptStored(d))) => {
                        waiting.remove(&d);
                    }
                    Some(Ok(RelayToNode::Rejected(r))) => {
                        if let Subject::Receipt(d) = r.subject {
                            warn!(relay = idx, receipt = %d, code = ?r.code, "relay refused a delivered receipt at shutdown");
                            waiting.remove(&d);
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => break,
                }
            }
            waiting.len()
        };
        let wait = Duration::from_millis(crate::limits::SHUTDOWN_RECEIPT_WAIT_MS);
        match tokio::time::timeout(wait, answered).await {
            Ok(0) => debug!(relay = idx, "delivered receipts stored before shutdown"),
            _ => warn!(relay = idx, "delivered receipts not confirmed before shutdown; the relay will deliver those messages again"),
        }
    }

    fn forwarded(
        &mut self,
        batch: Vec<hotline_proto::Signed<hotline_proto::Receipt>>,
    ) -> Result<(), NetError> {
        let roster = self.state.roster.borrow().clone();
        let mut verified = Vec::new();
        let mut unverified = Vec::new();
        let mut digests = Vec::new();
        for s in batch {
            let d = s.digest();
            digests.push(d);
            match roster.verify_receipt(&s) {
                Ok(v) => verified.push(v),
                Err(e) => match lagging(&e).then(|| s.decode_unverified()) {
                    Some(Ok(claim)) => {
                        warn!(relay = self.idx, error = %e, receipt = %d, by = %claim.recipient, roster = roster.version, "forwarded receipt failed verification against this roster, which may lag the relay's: held if it names a message of this node's, and checked again at each newer roster");
                        unverified.push(crate::store::Unverified {
                            signed: s,
                            claim,
                            reason: e.to_string(),
                        });
                    }
                    _ => {
                        error!(relay = self.idx, error = %e, receipt = %d, "forwarded receipt failed verification: ignored")
                    }
                },
            }
        }
        let stored =
            self.state
                .store()
                .take_forwarded(&self.state.me, &verified, &unverified, now_ms());
        let (fresh, held) = match stored {
            Ok(f) => f,
            Err(e) => {
                error!(relay = self.idx, error = %e, "cannot store receipts; the relay will forward them again");
                return Err(NetError::Local(format!("store: {e}")));
            }
        };
        for d in &held.skipped {
            debug!(receipt = %d, "an unverified forwarded receipt names no message of this node's it does not already know of: not held");
        }
        for (d, by) in &held.dropped {
            warn!(receipt = %d, by = %by, "too many forwarded receipts held for a newer roster: the oldest dropped");
        }
        self.state.tell_forwarded(&verified, fresh);
        // A newer roster installed (by another link) since these were checked was checked
        // against the held receipts before these were among them.
        if !held.held.is_empty() && self.state.roster.borrow().version != roster.version {
            self.state.recheck_held_receipts();
        }
        for chunk in digests.chunks(hotline_proto::limits::RECEIPT_ITEMS_MAX) {
            self.writer
                .queue(&NodeToRelay::ReceiptsStored(chunk.to_vec()))?;
        }
        Ok(())
    }
}

/// Whether a receipt that failed verification with `e` may pass against a newer roster: its
/// signer, or the key that signed it, is not on the roster in force (which may lag the
/// relay's). A bad signature by a listed key, a revoked signer, bytes that do not decode or a
/// malformed key fail whatever the roster.
pub(crate) fn lagging(e: &hotline_proto::VerifyError) -> bool {
    matches!(
        e,
        hotline_proto::VerifyError::UnknownSigner(_)
            | hotline_proto::VerifyError::KeyNotAuthorised(_)
    )
}

/// The rules of [`check_delivery`], numbered: raised by a release whose checks come to let
/// through a delivery that those before it quarantined (as the group and all-members
/// checks once changed), so that a node upgraded to it walks its quarantine again at its
/// first start, though the roster is the one the quarantine was last checked against
/// ([`quarantine_check_basis`]).
pub(crate) const QUARANTINE_CHECK_RULES: u32 = 1;

/// What a check of quarantined deliveries is recorded against ([`crate::store::QuarantineCheck`]):
/// the roster's payload, and the rules of [`check_delivery`] ([`QUARANTINE_CHECK_RULES`]).
/// The same for a roster signed again by another key, since the checks read only its
/// payload; another for a roster of the same version with other content.
pub(crate) fn quarantine_check_basis(
    roster: &hotline_proto::Verified<hotline_proto::Roster>,
) -> hotline_proto::Digest {
    hotline_proto::Digest::of(&[
        b"hotline quarantine check",
        &QUARANTINE_CHECK_RULES.to_le_bytes(),
        &roster.signed().digest().0,
    ])
}

/// What a delivered message must pass to be shown (PROTOCOL.md 7.1), for a delivery and for
/// a quarantined one checked again: its signature against `roster`, then its audience, which
/// must include `me`: otherwise a relay delivered it to the wrong node, and its operator must
/// not take it as addressed to them. A list of participants must name `me`; a group must
/// list `me` on `roster`; "all members" needs `me` to be a member there; "everyone" holds
/// everyone, but never its sender (a message of `me`'s own is not addressed to `me`). A
/// roster older than the relay's (a group `me` joined since) only delays such a
/// message: it is quarantined, checked again when the newer roster arrives, and shown then
/// ([`crate::NodeState::recheck_quarantine`]). The error is the quarantine's reason.
pub(crate) fn check_delivery(
    roster: &hotline_proto::Verified<hotline_proto::Roster>,
    signed: &hotline_proto::Signed<Envelope>,
    me: &ParticipantId,
) -> Result<Envelope, String> {
    use hotline_proto::Audience;
    let env = roster
        .verify_envelope(signed)
        .map_err(|e| e.to_string())?
        .into_parts()
        .0;
    let v = roster.version;
    // An audience resolves without its sender (PROTOCOL.md 7.4): whatever it names, a
    // message of this node's own participant is addressed to no node of its, and no relay
    // delivers it back. One delivered all the same (replayed by a relay) would be shown,
    // announced and paged as received, under the id of the message sent.
    if env.sender == *me {
        return Err(format!(
            "not addressed to {me}: it is {me}'s own message, which is never delivered to its sender"
        ));
    }
    match &env.audience {
        Audience::Participants(ids) if !ids.contains(me) => Err(format!(
            "not addressed to {me}: its audience names {} other participant(s)",
            ids.len()
        )),
        Audience::Group(name) => match roster.group(name) {
            Some(g) if g.members.contains(me) => Ok(env),
            Some(_) => Err(format!(
                "not addressed to {me}: group {name:?} does not list {me} on roster version {v}"
            )),
            None => Err(format!(
                "not addressed to {me}: roster version {v} has no group {name:?}"
            )),
        },
        Audience::AllMembers
            if roster
                .participant(me)
                .is_none_or(|p| p.role != hotline_proto::Role::Member) =>
        {
            Err(format!(
                "not addressed to {me}: addressed to all members, and {me} is not a member on roster version {v}"
            ))
        }
        _ => Ok(env),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// A refusal for the relay's limit that names no time is waited out for the longest
    /// back-off, whatever the back-off had come to, and so are the failures after it until a
    /// link is made; no other failure is taken for one.
    #[test]
    fn a_refusal_for_the_relays_limit_waits_the_longest_back_off() {
        let limited = NetError::closed_by_peer(ErrorCode::LimitExceeded, "retry in 4.2 s");
        assert!(over_limit(&limited));
        for e in [
            NetError::closed_by_peer(ErrorCode::Busy, "full"),
            NetError::closed_by_peer(ErrorCode::Superseded, ""),
            NetError::Timeout("authentication"),
        ] {
            assert!(!over_limit(&e), "{e}");
        }
        let mut b = Backoff::new();
        assert!(b.next() < BACKOFF_MAX_MS);
        for _ in 0..20 {
            let wait = b.longest();
            assert!(
                (BACKOFF_MAX_MS..=BACKOFF_MAX_MS * 3 / 2).contains(&wait),
                "{wait}"
            );
            let next = b.next();
            assert!(
                (BACKOFF_MAX_MS..=BACKOFF_MAX_MS * 3 / 2).contains(&next),
                "{next}"
            );
        }
        b.reset();
        assert!(b.next() < BACKOFF_MAX_MS);
    }

    /// A refusal for the relay's budget of sessions that says when to try again (`retry in
    /// S.T s`) is waited out that long, or the back-off's step if longer, plus jitter: not
    /// the longest back-off, longer than needed after a short hint and too short after one
    /// over 10 s (the relay refused the node again and again). A hint past
    /// `RELAY_RETRY_HINT_MAX_MS` is cut to it; none, or one that does not read, is waited out
    /// as before, for the longest back-off.
    #[test]
    fn a_refusal_for_the_relays_limit_waits_as_long_as_it_says() {
        let refused = |reason: &str| NetError::closed_by_peer(ErrorCode::LimitExceeded, reason);
        let said = refused(&format!(
            "KAZ started sessions faster than this relay allows (…): {}",
            hotline_proto::frame::retry_in_text(4_200)
        ));
        let mut b = Backoff::new();
        for _ in 0..20 {
            b.reset();
            let (wait, hint) = limit_wait(&mut b, &said);
            assert_eq!(hint, Some(4_200));
            assert!((4_200..=4_200 * 3 / 2).contains(&wait), "{wait}");
        }
        // The back-off's step, longer than the hint, is waited.
        let mut b = Backoff(BACKOFF_MAX_MS);
        let (wait, hint) = limit_wait(&mut b, &refused("retry in 0.3 s"));
        assert_eq!(hint, Some(300));
        assert!(
            (BACKOFF_MAX_MS..=BACKOFF_MAX_MS * 3 / 2).contains(&wait),
            "{wait}"
        );
        // A hint over 10 s is followed, up to its cap, with a few seconds of jitter at most.
        for (reason, hint_ms) in [
            ("retry in 12.0 s", 12_000),
            ("retry in 3600.0 s", RELAY_RETRY_HINT_MAX_MS),
        ] {
            b.reset();
            let (wait, hint) = limit_wait(&mut b, &refused(reason));
            assert_eq!(hint, Some(hint_ms), "{reason}");
            assert!(
                (hint_ms..=hint_ms + BACKOFF_MAX_MS / 2).contains(&wait),
                "{reason}: {wait}"
            );
        }
        for reason in ["", "retry in soon", "retry in 99999999999999999999 s"] {
            b.reset();
            let (wait, hint) = limit_wait(&mut b, &refused(reason));
            assert_eq!(hint, None, "{reason:?}");
            assert!(
                (BACKOFF_MAX_MS..=BACKOFF_MAX_MS * 3 / 2).contains(&wait),
                "{reason:?}: {wait}"
            );
        }
    }

    /// A relay that says "retry in 0.0 s" again and again (not the reference relay, whose
    /// time is that of its budget's next session) does not have this node try again at the
    /// shortest pause each time: each refusal doubles the back-off's step as a failure does,
    /// up to the longest, which then holds until a link is made.
    #[test]
    fn refusals_naming_no_wait_back_off_as_failures_do() {
        let now = NetError::closed_by_peer(ErrorCode::LimitExceeded, "retry in 0.0 s");
        let mut b = Backoff::new();
        let mut step = BACKOFF_MIN_MS;
        for _ in 0..20 {
            let (wait, hint) = limit_wait(&mut b, &now);
            assert_eq!(hint, Some(0));
            assert!((step..=step * 3 / 2).contains(&wait), "{step}: {wait}");
            step = (step * 2).min(BACKOFF_MAX_MS);
        }
        assert_eq!(step, BACKOFF_MAX_MS);
    }

    #[test]
    fn a_delivery_must_be_addressed_to_this_node_by_the_roster_it_holds() {
        use hotline_proto::{
            Audience, Group, Kind, MessageId, Participant, Precedence, PublicKey, Role, Roster,
            Seq, Signed, SigningKey, Status,
        };
        let pid = |s: &str| ParticipantId::new(s).unwrap();
        let kaz = SigningKey::from_bytes(&[1; 32]);
        let member = |id: &str, role: Role, key: &SigningKey| Participant {
            id: pid(id),
            name: id.into(),
            role,
            keys: vec![PublicKey::of(key)],
            revoked: false,
        };
        let (kgz, un) = (
            SigningKey::from_bytes(&[2; 32]),
            SigningKey::from_bytes(&[4; 32]),
        );
        let roster_key = SigningKey::from_bytes(&[3; 32]);
        let roster = Roster {
            protocol_version: hotline_proto::PROTOCOL_VERSION,
            version: 7,
            issued_at_ms: 1,
            network: "CICA".into(),
            participants: vec![
                member("KAZ", Role::Member, &kaz),
                member("KGZ", Role::Member, &kgz),
                member("UN", Role::Observer, &un),
                member("SEC", Role::Secretariat, &roster_key),
            ],
            groups: vec![Group {
                name: "coordinators".into(),
                members: vec![pid("KAZ"), pid("UN")],
            }],
        };
        let roster = Signed::sign(&roster, &roster_key)
            .unwrap()
            .verify_with(&PublicKey::of(&roster_key))
            .unwrap();
        let check = |audience: Audience, me: &str| {
            let env = Envelope {
                version: hotline_proto::PROTOCOL_VERSION,
                id: MessageId::random(),
                sender: pid("KAZ"),
                seq: Seq(1),
                audience,
                kind: Kind::Alert,
                precedence: Precedence::Flash,
                status: Status::Exercise,
                created_at_ms: 1,
                respond_by_ms: None,
                references: vec![],
                category: None,
                subject: "s".into(),
                body: String::new(),
            };
            check_delivery(&roster, &Signed::sign(&env, &kaz).unwrap(), &pid(me))
        };
        let group = |name: &str| Audience::Group(name.into());
        assert!(check(group("coordinators"), "UN").is_ok());
        let e = check(group("coordinators"), "KGZ").unwrap_err();
        assert!(e.contains("does not list KGZ on roster version 7"), "{e}");
        let e = check(group("nobody"), "KGZ").unwrap_err();
        assert!(e.contains("no group \"nobody\""), "{e}");
        assert!(check(Audience::AllMembers, "KGZ").is_ok());
        let e = check(Audience::AllMembers, "UN").unwrap_err();
        assert!(e.contains("UN is not a member"), "{e}");
        assert!(check(Audience::Everyone, "UN").is_ok());
        assert!(check(Audience::Participants(vec![pid("KGZ")]), "KGZ").is_ok());
        assert!(check(Audience::Participants(vec![pid("KGZ")]), "UN").is_err());
        // A node's own message is addressed to no node of its participant (an audience
        // resolves without its sender, PROTOCOL.md 7.4): one delivered back (a relay
        // replaying it) must not be shown, announced and paged as received, under the id
        // of the message sent.
        for audience in [
            Audience::Everyone,
            Audience::AllMembers,
            group("coordinators"),
            Audience::Participants(vec![pid("KAZ"), pid("KGZ")]),
        ] {
            let e = check(audience.clone(), "KAZ")
                .expect_err("KAZ's own message is not addressed to KAZ");
            assert!(e.contains("not addressed to KAZ"), "{audience:?}: {e}");
        }
    }

    /// A batch of the relay's frames is bounded in bytes as well as in frames: a relay
    /// delivering messages padded to the largest frame (256 KiB; an envelope's size is
    /// checked with its signature, after the batch is taken) had the link hold up to 512 of
    /// them, 128 MiB, in one batch, beside the reader's channel refilling behind it.
    #[test]
    fn a_batch_of_the_relays_frames_is_bounded_in_bytes() {
        use crate::limits::LINK_BATCH_BYTES_MAX;
        use hotline_proto::limits::FRAME_BYTES_MAX;
        use hotline_proto::{PublicKey, Signature, Signed};

        let large = || {
            RelayToNode::Deliver(Signed::from_parts(
                vec![0; FRAME_BYTES_MAX - 64],
                PublicKey([1; 32]),
                Signature([2; 64]),
            ))
        };
        let frames = 2 * LINK_BATCH_BYTES_MAX / FRAME_BYTES_MAX;
        let (tx, mut rx) = tokio::sync::mpsc::channel(frames + 1);
        for _ in 0..frames {
            tx.try_send(Ok(large())).unwrap();
        }
        tx.try_send(Err(NetError::Protocol("after them".into())))
            .unwrap();
        let (batch, failed) = take_batch(large(), || rx.try_recv().ok());
        let bytes: usize = batch
            .iter()
            .map(|f| match f {
                RelayToNode::Deliver(s) => s.bytes().len(),
                _ => 0,
            })
            .sum();
        assert!(
            bytes < LINK_BATCH_BYTES_MAX + FRAME_BYTES_MAX,
            "{} frames, {bytes} bytes",
            batch.len()
        );
        assert!(failed.is_none(), "the failure waits behind the frames");
        // The rest follow in the next batches, the failure after them.
        let mut taken = batch.len();
        let failed = loop {
            let first = rx.try_recv().unwrap();
            let Ok(first) = first else {
                break first.err();
            };
            let (batch, failed) = take_batch(first, || rx.try_recv().ok());
            taken += batch.len();
            if failed.is_some() {
                break failed;
            }
        };
        assert_eq!(taken, frames + 1);
        assert!(failed.is_some());
    }

    /// The link's reader holds the relay's frames up to a budget in bytes, not only in
    /// frames: a relay (here a fake one, over QUIC on loopback) sending frames padded to
    /// the largest size had the node hold `LINK_READER_FRAMES` of them, 64 MiB, until the
    /// link took them. The reader stops once the budget is spent (the relay held back by
    /// QUIC's flow control) and reads on as the link takes frames, every frame in order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_links_reader_holds_the_relays_frames_up_to_a_budget_in_bytes() {
        use hotline_net::transport::{client_endpoint, server_endpoint, TransportLimits};
        use hotline_proto::frame::encode_frame;
        use hotline_proto::limits::FRAME_BYTES_MAX;
        use hotline_proto::{PublicKey, Signature, Signed};

        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("relay.crt"), dir.path().join("relay.key"));
        let fp = hotline_net::tls::write_self_signed(&cert, &key).unwrap();
        let identity = hotline_net::RelayIdentity::load(&cert, &key).unwrap();
        let limits = TransportLimits::default();
        let local = "127.0.0.1:0".parse().unwrap();
        let server = server_endpoint(local, &identity, &limits).unwrap();
        let addr = server.local_addr().unwrap();
        let client = client_endpoint(local, vec![fp], &limits).unwrap();

        // Frames padded to the largest a relay may send, more than the reader may hold in
        // frames: an unbounded count of bytes would hold them all.
        let frames = LINK_READER_FRAMES + 16;
        let padded = |i: u8| {
            RelayToNode::Deliver(Signed::from_parts(
                vec![i; FRAME_BYTES_MAX - 256],
                PublicKey([1; 32]),
                Signature([2; 64]),
            ))
        };
        let frame_len = encode_frame(&padded(0)).unwrap().len();
        let relay = tokio::spawn(async move {
            let conn = server.accept().await.unwrap().await.unwrap();
            let (mut send, _recv) = conn.accept_bi().await.unwrap();
            for i in 0..frames {
                let bytes = encode_frame(&padded(i as u8)).unwrap();
                if send.write_all(&bytes).await.is_err() {
                    return;
                }
            }
            let _ = send.finish();
            conn.closed().await;
        });
        let conn = hotline_net::connect(&client, addr, Duration::from_secs(10))
            .await
            .unwrap();
        let (mut send, recv) = conn.open_bi().await.unwrap();
        // The stream is the relay's to see once something is written on it.
        send.write_all(&encode_frame(&NodeToRelay::Ping(1)).unwrap())
            .await
            .unwrap();
        let (mut rx, _reader) = relay_reader(hotline_net::FrameReader::new(recv));

        // The link takes nothing until the reader has stopped for want of room.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !rx.reader_held() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the reader never stopped; it holds {} bytes",
                rx.buffered_bytes()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let held = rx.buffered_bytes();
        assert!(
            held <= LINK_READER_BYTES_MAX,
            "the reader holds {held} bytes of the relay's frames, past its budget of {LINK_READER_BYTES_MAX}"
        );
        assert!(
            held + frame_len > LINK_READER_BYTES_MAX,
            "stopped with room for another frame: {held} bytes"
        );
        // Taken as the link takes them: in order, all of them, the budget kept throughout.
        for i in 0..frames {
            let f = tokio::time::timeout(Duration::from_secs(30), rx.recv())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            let RelayToNode::Deliver(s) = f else {
                panic!("frame {i}: {f:?}")
            };
            assert_eq!(s.bytes()[0], i as u8, "frame {i} in order");
            assert!(rx.buffered_bytes() <= LINK_READER_BYTES_MAX);
        }
        assert_eq!(rx.buffered_bytes(), 0);
        conn.close(0u32.into(), b"test done");
        relay.await.unwrap();
    }

    /// A link whose last act before stopping failed (the relay went as the node stopped,
    /// and the shutdown's delivered receipt could not be written) pauses before its next
    /// attempt; it must see that the node is stopping, whose signal its `select!` has
    /// already taken, and end at once, not after the pause (up to 15 s, past the node's 5 s
    /// for stopping, which then aborted the task before its endpoint had closed).
    #[tokio::test]
    async fn a_pause_ends_at_once_when_the_node_is_already_stopping() {
        let (tx, mut rx) = watch::channel(false);
        tx.send(true).unwrap();
        assert!(rx.has_changed().unwrap());
        rx.mark_unchanged();
        let paused = tokio::time::timeout(Duration::from_secs(5), pause(&mut rx, 60_000)).await;
        assert_eq!(paused, Ok(false), "no pause once the node is stopping");
        let (_tx, mut rx) = watch::channel(false);
        assert!(pause(&mut rx, 1).await, "a pause otherwise runs its course");
    }

    /// A link waiting for the store (its lock held by a long operation, or a slow disk)
    /// leaves the runtime's threads free: it stored a batch of deliveries on a runtime
    /// thread, so with the store's lock held elsewhere (here by a plain thread) it held that
    /// thread, and with it (on this test's runtime, of one thread; the node's has two) the
    /// other relay's link, the API's event streams and every timer, until the lock was
    /// released. The delivery is stored and receipted once it is.
    #[tokio::test]
    async fn a_link_waiting_for_the_store_leaves_the_runtime_free() {
        use hotline_net::transport::{client_endpoint, server_endpoint, TransportLimits};
        use hotline_proto::frame::{encode_frame, Welcome};
        use hotline_proto::{Audience, Kind, Precedence, Seq, Signed, SigningKey, Status};
        const WAIT: Duration = Duration::from_secs(10);

        let dir = tempfile::tempdir().unwrap();
        let state = crate::test_state(dir.path());
        let (cert, key) = (dir.path().join("relay.crt"), dir.path().join("relay.key"));
        let fp = hotline_net::tls::write_self_signed(&cert, &key).unwrap();
        let identity = hotline_net::RelayIdentity::load(&cert, &key).unwrap();
        let limits = TransportLimits::default();
        let local = "127.0.0.1:0".parse().unwrap();
        let server = server_endpoint(local, &identity, &limits).unwrap();
        let addr = server.local_addr().unwrap();
        let client = client_endpoint(local, vec![fp], &limits).unwrap();

        // A relay that writes what it is given and hands on what the node writes.
        let (to_node, mut frames) = tokio::sync::mpsc::unbounded_channel::<RelayToNode>();
        let (from_node_tx, mut from_node) = tokio::sync::mpsc::unbounded_channel();
        let relay = tokio::spawn(async move {
            let conn = server.accept().await.unwrap().await.unwrap();
            let (mut send, recv) = conn.accept_bi().await.unwrap();
            let mut reader = hotline_net::FrameReader::new(recv);
            tokio::spawn(async move {
                while let Ok(Some(f)) = reader.read::<NodeToRelay>().await {
                    if from_node_tx.send(f).is_err() {
                        return;
                    }
                }
            });
            while let Some(f) = frames.recv().await {
                send.write_all(&encode_frame(&f).unwrap()).await.unwrap();
            }
            conn.close(0u32.into(), b"test done");
        });
        let conn = hotline_net::connect(&client, addr, WAIT).await.unwrap();
        let (send, recv) = conn.open_bi().await.unwrap();
        let mut writer = hotline_net::FrameWriter::new(send);
        // The stream is the relay's to see once something is written on it.
        writer.write(&NodeToRelay::Ping(0)).await.unwrap();
        let session = Session {
            conn: conn.clone(),
            reader: hotline_net::FrameReader::new(recv),
            writer,
            welcome: Welcome {
                relay_time_ms: now_ms(),
                last_seq: Seq(0),
                roster: None,
            },
        };
        let (stop, mut stopping) = watch::channel(false);
        let link = tokio::spawn({
            let state = state.clone();
            async move { serve(&state, 0, session, &mut stopping).await }
        });

        let me = state.me.clone();
        let deliver = move |subject: &str| {
            let env = Envelope {
                version: hotline_proto::PROTOCOL_VERSION,
                id: MessageId::random(),
                sender: ParticipantId::new("KGZ").unwrap(),
                seq: Seq(1),
                audience: Audience::Participants(vec![me.clone()]),
                kind: Kind::Alert,
                precedence: Precedence::Routine,
                status: Status::Actual,
                created_at_ms: 1_000,
                respond_by_ms: None,
                references: vec![],
                category: None,
                subject: subject.into(),
                body: String::new(),
            };
            let signed = Signed::sign(&env, &SigningKey::from_bytes(&[2; 32])).unwrap();
            (env.id, RelayToNode::Deliver(signed))
        };
        // Whether the node writes a receipt before its stream ends.
        async fn receipted(
            from_node: &mut tokio::sync::mpsc::UnboundedReceiver<NodeToRelay>,
        ) -> bool {
            loop {
                match from_node.recv().await {
                    Some(NodeToRelay::Receipt(_)) => return true,
                    Some(_) => {}
                    None => return false,
                }
            }
        }
        // The link is in its loop: a delivery is stored and receipted.
        let (first, frame) = deliver("First");
        to_node.send(frame).unwrap();
        let got = tokio::time::timeout(WAIT, receipted(&mut from_node)).await;
        assert_eq!(got, Ok(true), "the first delivery was not receipted");
        assert!(state.store().inbox_message(&first).unwrap().is_some());

        let held = crate::Held::store(&state, false, WAIT);
        let (second, frame) = deliver("Second");
        to_node.send(frame).unwrap();
        // The link waits for the store, off the runtime: a timer still fires meanwhile.
        let mut background = state.background.subscribe();
        let waiting = tokio::time::timeout(WAIT, async {
            background.wait_for(|n| *n > 0).await.unwrap();
            tokio::time::sleep(Duration::from_millis(1)).await;
        })
        .await;
        assert!(!held.release(), "the runtime waited for the store");
        assert!(
            waiting.is_ok(),
            "the link never waited for the store off the runtime"
        );
        let got = tokio::time::timeout(WAIT, receipted(&mut from_node)).await;
        assert_eq!(got, Ok(true), "the second delivery was not receipted");
        assert!(state.store().inbox_message(&second).unwrap().is_some());

        stop.send(true).unwrap();
        let served = tokio::time::timeout(WAIT, link).await.unwrap().unwrap();
        assert!(matches!(served, Ok(Served::Shutdown)), "{:?}", served.err());
        drop(to_node);
        relay.await.unwrap();
    }

    #[test]
    fn a_backoff_doubles_to_its_cap_with_at_most_half_again_of_jitter() {
        let mut b = Backoff::new();
        let mut base = BACKOFF_MIN_MS;
        for _ in 0..12 {
            let wait = b.next();
            assert!(
                (base..=base + base / 2).contains(&wait),
                "{wait} from {base}"
            );
            base = (base * 2).min(BACKOFF_MAX_MS);
        }
        assert_eq!(base, BACKOFF_MAX_MS, "capped");
        b.reset();
        assert!(b.next() <= BACKOFF_MIN_MS + BACKOFF_MIN_MS / 2);
    }

    #[test]
    fn a_clock_skew_is_measured_whatever_time_the_relay_sends() {
        let now = 1_800_000_000_000u64;
        let warn = CLOCK_SKEW_WARN_MS;
        assert_eq!(clock_skew_ms(now + warn, now), None);
        assert_eq!(clock_skew_ms(now - warn, now), None);
        assert_eq!(
            clock_skew_ms(now + warn + 1, now),
            Some(i128::from(warn) + 1)
        );
        assert_eq!(
            clock_skew_ms(now - warn - 1, now),
            Some(-i128::from(warn) - 1)
        );
        // Times no clock shows: told as they are, not an overflow (which ended the link
        // task for good) nor a wrapped number.
        let far = |t: u64| Some(i128::from(t) - i128::from(now));
        assert_eq!(clock_skew_ms(1 << 63, now), far(1 << 63));
        assert_eq!(clock_skew_ms(u64::MAX, now), far(u64::MAX));
        assert_eq!(clock_skew_ms(0, u64::MAX), Some(-i128::from(u64::MAX)));
    }

    #[test]
    fn a_link_pings_after_a_silence_and_says_when_it_ends() {
        let t0 = std::time::Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut s = Silence::new(7, t0);
        let heard = Hearing::Heard { after_ms: None };
        // Packets keep arriving: never silent, however long the link lives.
        assert_eq!(s.observe(8, at(SILENT_LINK_MS)), heard);
        assert_eq!(s.observe(9, at(2 * SILENT_LINK_MS)), heard);
        // Nothing since: quiet until SILENT_LINK_MS has passed, then a ping each sample.
        assert_eq!(s.observe(9, at(3 * SILENT_LINK_MS - 1)), heard);
        let ms = SILENT_LINK_MS;
        assert_eq!(
            s.observe(9, at(3 * SILENT_LINK_MS)),
            Hearing::Silent { ms, first: true }
        );
        let ms = SILENT_LINK_MS + SILENT_PING_MS;
        assert_eq!(
            s.observe(9, at(3 * SILENT_LINK_MS + SILENT_PING_MS)),
            Hearing::Silent { ms, first: false }
        );
        // A packet ends the silence, once; the next silence pings afresh.
        let ms = SILENT_LINK_MS + 2 * SILENT_PING_MS;
        assert_eq!(
            s.observe(10, at(3 * SILENT_LINK_MS + 2 * SILENT_PING_MS)),
            Hearing::Heard { after_ms: Some(ms) }
        );
        assert_eq!(s.observe(11, at(4 * SILENT_LINK_MS)), heard);
        assert_eq!(
            s.observe(11, at(5 * SILENT_LINK_MS)),
            Hearing::Silent {
                ms: SILENT_LINK_MS,
                first: true
            }
        );
    }
}
