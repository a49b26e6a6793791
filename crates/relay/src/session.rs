//! One task per connection: handshake, then a loop that reads frames, answers them, and
//! delivers the participant's queues.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use hotline_net::{FrameReader, FrameWriter, NetError};
use hotline_proto::frame::{
    self, ErrorCode, ErrorFrame, Hello, NodeToRelay, RejectCode, Rejected, RelayToNode, Subject,
    Welcome,
};
use hotline_proto::{
    DecodeError, Envelope, MessageId, ParticipantId, PublicKey, Roster, Seq, Signed, Verified,
    VerifyError,
};

use crate::config::RelayConfig;
use crate::hub::{Hub, Kind, Mailbox, Take};
use crate::metrics::Metrics;
use crate::store::{Command, Readers};

/// Everything a session shares with the rest of the relay.
pub(crate) struct Shared {
    pub(crate) config: RelayConfig,
    pub(crate) roster: watch::Receiver<Arc<Verified<Roster>>>,
    pub(crate) hub: Arc<Hub>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) readers: Arc<Readers>,
    pub(crate) writer: mpsc::Sender<Command>,
    /// Receipts to verify (`crate::verifier`), then store.
    pub(crate) verifier: mpsc::Sender<crate::verifier::Unverified>,
    /// Submission token buckets by participant, so reconnecting does not refill one. At
    /// most one entry per roster participant (only authenticated sessions add one).
    pub(crate) rates: Mutex<HashMap<ParticipantId, Rate>>,
    /// Receipt token buckets by participant, likewise.
    pub(crate) receipt_rates: Mutex<HashMap<ParticipantId, Rate>>,
    /// Receipt item budgets by participant (a token an item, each a look-up by the store
    /// writer), likewise.
    pub(crate) receipt_item_rates: Mutex<HashMap<ParticipantId, Rate>>,
    /// Submission byte budgets by participant (tokens are signed bytes), likewise.
    pub(crate) byte_rates: Mutex<HashMap<ParticipantId, Rate>>,
    /// Each participant's budget of sessions, taken right after its login is checked
    /// (`crate::logins`). At most one entry per roster participant, likewise.
    pub(crate) logins: crate::logins::Logins,
    /// Warnings about connections that ended before logging in: anyone can cause them, so
    /// one line at most every 10 s, with the count.
    pub(crate) before_login: Mutex<hotline_net::Throttle>,
    /// Tests only ([`crate::Hosting::login_gate`]).
    pub(crate) login_gate: Option<Arc<crate::LoginGate>>,
    /// Reads of the store run on the runtime, not the blocking pool: a deterministic
    /// simulation only ([`crate::Hosting::writer_on_runtime`]).
    pub(crate) reads_on_runtime: bool,
}

impl Shared {
    /// Runs `read` on one of the store's reader connections (`key` picks it), off the
    /// runtime's threads: a read (a backlog page of megabytes, from a cold disk) and the
    /// wait for that connection's lock would otherwise hold one of the runtime's few
    /// threads, and with it quinn's timers and acknowledgements and every other session on
    /// it.
    async fn read<T: Send + 'static>(
        &self,
        key: usize,
        read: impl FnOnce(&Readers, usize) -> Result<T, hotline_store::StoreError> + Send + 'static,
    ) -> Result<T, End> {
        let done = if self.reads_on_runtime {
            read(&self.readers, key)
        } else {
            let readers = self.readers.clone();
            tokio::task::spawn_blocking(move || read(&readers, key))
                .await
                .map_err(|e| End::new(ErrorCode::Internal, format!("store read: {e}")))?
        };
        done.map_err(|e| End::new(ErrorCode::Internal, e.to_string()))
    }
}

impl Shared {
    /// Takes one submission token from `who`'s bucket; false when it is empty.
    fn take_token(&self, who: &ParticipantId) -> bool {
        let l = &self.config.limits;
        bucket(
            &self.rates,
            who,
            l.rate_per_sec.into(),
            l.rate_burst.into(),
            |r, now| r.take(1, now),
        )
    }

    /// Takes a submission's `bytes` from `who`'s byte budget; false, taking nothing, when
    /// the budget holds fewer.
    fn take_bytes(&self, who: &ParticipantId, bytes: usize) -> bool {
        let l = &self.config.limits;
        bucket(
            &self.byte_rates,
            who,
            l.byte_rate_per_sec,
            l.byte_rate_burst,
            |r, now| r.take(bytes as u64, now),
        )
    }

    /// Charges one receipt naming `items` messages to `who`'s receipt budgets: the receipt
    /// to its count, its items to its items (each costs the store writer a look-up). How
    /// long to stop reading that participant's frames for each budget to be out of debt
    /// (zero if it is not in debt): (count, items).
    fn charge_receipt(&self, who: &ParticipantId, items: usize) -> (Duration, Duration) {
        let l = &self.config.limits;
        let count = bucket(
            &self.receipt_rates,
            who,
            l.receipt_rate_per_sec.into(),
            l.receipt_rate_burst.into(),
            |r, now| r.charge(1, now),
        );
        let items = bucket(
            &self.receipt_item_rates,
            who,
            l.receipt_item_rate_per_sec.into(),
            l.receipt_item_rate_burst.into(),
            |r, now| r.charge(items, now),
        );
        (count, items)
    }
}

/// Runs `f` on `who`'s bucket in `rates` with the time now, making the bucket (full) on
/// first use.
fn bucket<R>(
    rates: &Mutex<HashMap<ParticipantId, Rate>>,
    who: &ParticipantId,
    per_sec: u64,
    burst: u64,
    f: impl FnOnce(&mut Rate, Instant) -> R,
) -> R {
    let now = Instant::now();
    // Nothing panics while holding this lock; recover the map if something did.
    let mut rates = rates.lock().unwrap_or_else(|p| p.into_inner());
    f(
        rates
            .entry(who.clone())
            .or_insert_with(|| Rate::new(per_sec, burst, now)),
        now,
    )
}

/// A refusal decided before a frame reaches the store: subject, code, detail.
type Refusal = (Subject, RejectCode, String);

/// The refusal of signed bytes that do not decode: what verifying them would answer.
fn undecodable(subject: Subject, e: DecodeError) -> Refusal {
    let e = VerifyError::from(e);
    (subject, reject_code(&e), e.to_string())
}

/// A frame as read: a receipt decoded once, for its authorship check and the item budget
/// it is charged as it is read ([`Session::take_in`]).
enum Read {
    /// A receipt, with its content if it passed the checks before its signature.
    Receipt(
        Signed<hotline_proto::Receipt>,
        Result<hotline_proto::Receipt, Refusal>,
    ),
    /// Any other frame.
    Frame(NodeToRelay),
}

/// A frame between the checks before its signature and those after.
enum Staged {
    /// Refused already.
    Refuse(Refusal),
    /// A submission whose signature is in the batch.
    Submit,
    /// A receipt from this session's participant, for the verifier.
    Receipt(Signed<hotline_proto::Receipt>, hotline_proto::Receipt),
    /// Anything else, handled in turn.
    Other(NodeToRelay),
}

/// Why a session ended: the code the relay closes the connection with (`Normal` when the
/// connection had already ended), a detail for the log and the close, and who ended it.
struct End(ErrorCode, String, Cause);

/// Who ended a session. Only the relay's own closes are counted by their code
/// (`hotline_relay_connections_closed_total`); a node's close is counted by the node's code
/// (`…_ended_by_node_total`) and a lost connection apart (`…_lost_total`), so that a node
/// going away, or a link that fails, never reads as the relay refusing anyone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cause {
    /// The relay decided (a refusal, a limit, a shutdown, its own failure).
    Relay,
    /// The node closed the connection with this code: `Normal` when it simply left; another
    /// code when it refused a frame from this relay (`ProtocolViolation`, `FrameTooLarge`)
    /// or failed (`Internal`, its store cannot record what arrives), worth a warning here.
    Node(ErrorCode),
    /// The connection was lost: it timed out (the node went silent), was reset, or broke at
    /// the transport.
    Lost,
}

impl End {
    fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        Self(code, detail.into(), Cause::Relay)
    }
}

fn close(conn: &quinn::Connection, metrics: &Metrics, end: &End) {
    match end.2 {
        Cause::Relay => metrics.closed(end.0),
        Cause::Node(code) => metrics.ended_by_node(code),
        Cause::Lost => metrics.lost(),
    }
    conn.close(
        end.0.close_code().into(),
        frame::detail(end.1.clone()).as_bytes(),
    );
}

/// Checks a `Hello` against the roster and this connection's channel binding.
pub(crate) fn check_hello(
    roster: &Roster,
    hello: &Hello,
    binding: &[u8; 32],
) -> Result<ParticipantId, (ErrorCode, String)> {
    let proof = hello.auth.decode_unverified().map_err(|e| match e {
        DecodeError::Invalid {
            field: "version", ..
        } => (ErrorCode::UnsupportedVersion, e.to_string()),
        e => (ErrorCode::AuthFailed, format!("authentication proof: {e}")),
    })?;
    let p = roster.participant(&proof.participant).ok_or_else(|| {
        (
            ErrorCode::UnknownParticipant,
            format!("{} is not on the roster", proof.participant),
        )
    })?;
    if p.revoked {
        return Err((ErrorCode::Revoked, format!("{} is revoked", p.id)));
    }
    if !p.keys.contains(&hello.auth.key()) {
        return Err((
            ErrorCode::Revoked,
            format!(
                "key {} is not (or no longer) listed for {}",
                hello.auth.key().short(),
                p.id
            ),
        ));
    }
    let verified = hello
        .auth
        .verify_with(&hello.auth.key())
        .map_err(|e| (ErrorCode::AuthFailed, format!("authentication proof: {e}")))?;
    if &verified.channel_binding != binding {
        return Err((
            ErrorCode::AuthFailed,
            "authentication proof is bound to another TLS session".into(),
        ));
    }
    Ok(proof.participant)
}

/// Maps a verification failure to the rejection a node sees.
pub(crate) fn reject_code(e: &VerifyError) -> RejectCode {
    match e {
        VerifyError::Decode(DecodeError::OverLimit { .. })
        | VerifyError::Decode(DecodeError::TooLarge { .. }) => RejectCode::TooLarge,
        VerifyError::Decode(DecodeError::Invalid {
            field: "version", ..
        }) => RejectCode::UnsupportedVersion,
        VerifyError::Decode(_) => RejectCode::Malformed,
        VerifyError::UnknownSigner(_) => RejectCode::UnknownSender,
        VerifyError::Revoked(_) | VerifyError::KeyNotAuthorised(_) => RejectCode::Revoked,
        VerifyError::BadKey | VerifyError::BadSignature => RejectCode::BadSignature,
        _ => RejectCode::Malformed,
    }
}

/// The message id of submitted bytes, if at least that much decodes (bytes 2..18 follow the
/// u16 version), so even a malformed submission is refused by name.
fn subject_of(s: &Signed<Envelope>) -> Subject {
    match s
        .bytes()
        .get(2..18)
        .and_then(|b| <[u8; 16]>::try_from(b).ok())
    {
        Some(id) => Subject::Message(MessageId(id)),
        None => Subject::Frame,
    }
}

/// Token bucket for one participant's submissions (a token a submission, or a byte), or
/// its receipts. Each use is given the time, so that a test can drive it on its own clock.
pub(crate) struct Rate {
    per_sec: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl Rate {
    /// A full bucket at `now`.
    fn new(per_sec: u64, burst: u64, now: Instant) -> Self {
        Self {
            per_sec: per_sec as f64,
            burst: burst.max(1) as f64,
            tokens: burst.max(1) as f64,
            at: now,
        }
    }
    /// Adds what has accrued since the last use, up to the burst.
    fn refill(&mut self, now: Instant) {
        self.tokens = (self.tokens
            + now.saturating_duration_since(self.at).as_secs_f64() * self.per_sec)
            .min(self.burst);
        self.at = self.at.max(now);
    }

    /// Takes `n` tokens if the bucket holds them; otherwise takes none.
    fn take(&mut self, n: u64, now: Instant) -> bool {
        self.refill(now);
        let n = n as f64;
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }

    /// Takes `n` tokens even if that leaves the bucket in debt, and returns how long until
    /// the debt is paid back (zero if there is none).
    fn charge(&mut self, n: usize, now: Instant) -> Duration {
        self.refill(now);
        self.tokens -= n as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.per_sec)
        }
    }
}

/// Runs one connection from QUIC handshake to close.
pub(crate) async fn run(
    incoming: quinn::Incoming,
    shared: Arc<Shared>,
    conn_id: u64,
    mut shutdown: watch::Receiver<bool>,
    ticket: crate::admission::Ticket,
) {
    let limits = &shared.config.limits;
    let deadline = Duration::from_millis(limits.handshake_timeout_ms);
    let conn = match tokio::time::timeout(deadline, incoming).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            debug!(conn = conn_id, error = %e, "QUIC handshake failed");
            return;
        }
        Err(_) => {
            debug!(conn = conn_id, "QUIC handshake timed out");
            return;
        }
    };
    shared
        .metrics
        .connections
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    shared
        .metrics
        .connections_total
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let remote = conn.remote_address();
    let mut authenticated = false;
    let result = session(
        &conn,
        &shared,
        conn_id,
        &mut shutdown,
        ticket,
        &mut authenticated,
    )
    .await;
    shared
        .metrics
        .connections
        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    match result {
        Ok(()) => {}
        Err(end) => {
            let quiet = match end.2 {
                Cause::Node(code) => code == ErrorCode::Normal,
                Cause::Lost => false,
                // A login over its budget was logged, once a while, where it was refused.
                Cause::Relay => matches!(
                    end.0,
                    ErrorCode::Normal | ErrorCode::GoingAway | ErrorCode::LimitExceeded
                ),
            };
            if quiet {
                debug!(conn = conn_id, %remote, code = ?end.0, detail = %end.1, "connection closed");
            } else if !authenticated {
                // Anyone can cause these, as often as they like.
                let due = shared
                    .before_login
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .tick(1, Instant::now());
                match due {
                    Some(n) => {
                        warn!(closed = n, last = %remote, code = ?end.0, cause = ?end.2, detail = %end.1, "connections closed before logging in (a count since the last such line, at most one a 10 s: the metrics hotline_relay_connections_closed_total, …_ended_by_node_total and …_lost_total count each)")
                    }
                    None => {
                        debug!(conn = conn_id, %remote, code = ?end.0, cause = ?end.2, detail = %end.1, "connection closed before logging in")
                    }
                }
            } else if let Cause::Node(code) = end.2 {
                warn!(conn = conn_id, %remote, node_code = ?code, detail = %end.1, "the node closed the connection with an error");
            } else if end.2 == Cause::Lost {
                warn!(conn = conn_id, %remote, detail = %end.1, "connection lost");
            } else {
                warn!(conn = conn_id, %remote, code = ?end.0, detail = %end.1, "connection closed");
            }
            close(&conn, &shared.metrics, &end);
        }
    }
}

/// What a successful handshake yields.
struct Authenticated {
    who: ParticipantId,
    /// The roster key the participant authenticated with: a roster that stops listing it
    /// ends the session (7.7).
    key: PublicKey,
    roster_version: u64,
    /// The version of the relay's roster the `Hello` was checked against.
    checked_roster: u64,
    reader: FrameReader,
    writer: FrameWriter,
}

async fn handshake(conn: &quinn::Connection, shared: &Shared) -> Result<Authenticated, End> {
    let alpn = conn
        .handshake_data()
        .and_then(|h| h.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|h| h.protocol);
    if alpn.as_deref() != Some(frame::ALPN) {
        return Err(End::new(
            ErrorCode::ProtocolViolation,
            "ALPN cica-hotline/1 required",
        ));
    }
    let binding = hotline_net::channel_binding(conn)
        .map_err(|e| End::new(ErrorCode::Internal, e.to_string()))?;
    let deadline = tokio::time::Instant::now()
        + Duration::from_millis(shared.config.limits.handshake_timeout_ms);
    let first = async {
        let (send, recv) = conn
            .accept_bi()
            .await
            .map_err(|e| net_end(NetError::from_connection(e)))?;
        let mut reader = FrameReader::new(recv);
        // A Hello is a few hundred bytes: a peer that has not authenticated may not make
        // the relay hold a whole frame's worth (PROTOCOL.md 6.4, check 2).
        reader.set_frame_bytes_max(hotline_proto::limits::HELLO_FRAME_BYTES_MAX);
        let writer = FrameWriter::new(send);
        match reader.read::<NodeToRelay>().await {
            Ok(Some(NodeToRelay::Hello(h))) => {
                reader.set_frame_bytes_max(hotline_proto::limits::FRAME_BYTES_MAX);
                Ok((h, reader, writer))
            }
            Ok(Some(_)) => Err(End::new(
                ErrorCode::ProtocolViolation,
                "the first frame must be Hello",
            )),
            Ok(None) => Err(End::new(
                ErrorCode::ProtocolViolation,
                "stream finished before Hello",
            )),
            Err(e) => Err(net_end(e)),
        }
    };
    let (hello, reader, mut writer) = match tokio::time::timeout_at(deadline, first).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(End::new(
                ErrorCode::AuthTimeout,
                "no authentication in time",
            ))
        }
    };
    let roster = shared.roster.borrow().clone();
    let who = match check_hello(&roster, &hello, &binding) {
        Ok(p) => p,
        Err((code, detail)) => {
            // Best effort, within the handshake's deadline (a peer that reads nothing
            // must not hold its handshake slot): the close code says the same.
            let error = RelayToNode::Error(ErrorFrame {
                code,
                detail: frame::detail(detail.clone()),
            });
            let _ = tokio::time::timeout_at(deadline, writer.write(&error)).await;
            return Err(End::new(code, detail));
        }
    };
    Ok(Authenticated {
        who,
        key: hello.auth.key(),
        roster_version: hello.roster_version,
        checked_roster: roster.version,
        reader,
        writer,
    })
}

fn net_end(e: NetError) -> End {
    End(e.close_code(), e.to_string(), cause_of(&e))
}

/// Who ended a session that ended with `e`.
fn cause_of(e: &NetError) -> Cause {
    use quinn::ConnectionError as C;
    match e {
        NetError::Closed { code, .. } => Cause::Node(*code),
        // Closed here: the hub closed it for a newer connection of the same participant,
        // or the relay is shutting down.
        NetError::Connection(C::LocallyClosed) => Cause::Relay,
        // An application close with a code this release does not know (a newer node's).
        NetError::Connection(C::ApplicationClosed(_)) => Cause::Node(ErrorCode::Normal),
        // Timed out, reset, or closed by either QUIC stack for a transport error.
        NetError::Connection(_) => Cause::Lost,
        // What the node sent was wrong, or the relay failed: the relay closes.
        _ => Cause::Relay,
    }
}

async fn session(
    conn: &quinn::Connection,
    shared: &Arc<Shared>,
    conn_id: u64,
    shutdown: &mut watch::Receiver<bool>,
    ticket: crate::admission::Ticket,
    authenticated: &mut bool,
) -> Result<(), End> {
    let Authenticated {
        who: me,
        key,
        roster_version: node_roster_version,
        checked_roster,
        reader,
        writer,
    } = handshake(conn, shared).await?;
    // Authenticated: its place among the handshakes is free for another.
    drop(ticket);
    *authenticated = true;
    // Before anything a session costs (a read of the store, a page of backlog, pushing the
    // live session off): a node with a valid key logging in again in a loop is bounded by
    // its participant's budget, not by the handshake rate.
    if let Err(refused) = shared.logins.take(&me, shared.logins.now()) {
        return Err(over_budget(shared, &me, conn, refused));
    }
    // Logged in: the node may send as much as its stream's window allows, no longer just
    // its `Hello` (`hotline_net::transport::LOGIN_RECEIVE_WINDOW_BYTES`). Before `Welcome`,
    // which the node waits for before it sends more.
    hotline_net::transport::open_session_window(conn);
    if let Some(gate) = &shared.login_gate {
        gate.reached.notify_one();
        let _ = gate.go.acquire().await;
    }
    let last_seq = {
        let me = me.clone();
        shared
            .read(conn_id as usize, move |r, key| r.last_seq(key, &me))
            .await?
    };
    // Its roster is set in `run`, read where roster changes start being watched.
    let welcome = Welcome {
        relay_time_ms: crate::now_ms(),
        last_seq: Seq(last_seq),
        roster: None,
    };
    let Some(mailbox) = shared.hub.register(&me, conn_id, conn.clone()) else {
        // A newer connection of this participant logged in while this one's login was
        // finishing: that one is served, and this one is closed as superseded.
        return Err(End::new(
            ErrorCode::Superseded,
            "another connection authenticated as this participant",
        ));
    };
    info!(peer = %me, conn = conn_id, remote = %conn.remote_address(), "authenticated");
    let mut s = Session {
        me: me.clone(),
        key,
        conn_id,
        shared: shared.clone(),
        writer,
        input: Input::new(reader),
        msg_cursor: 0,
        rcpt_cursor: 0,
        msgs_from_store: false,
        rcpts_from_store: false,
        in_flight_deliveries: HashSet::new(),
        pending_answers: 0,
        window_full: false,
        msgs_due: false,
        write_timeout: Duration::from_millis(shared.config.limits.write_timeout_ms),
        read_paused_until: None,
        unconfirmed_forwards: 0,
        forward_window_full: false,
        rcpts_due: false,
        pause_logged: false,
        rejections: hotline_net::Throttle::new(Duration::from_secs(10)),
    };
    let result = s
        .run(
            welcome,
            checked_roster,
            node_roster_version,
            &mailbox,
            shutdown,
        )
        .await;
    let superseded = !shared.hub.unregister(&me, conn_id);
    if *shutdown.borrow() && matches!(result, Err(End(ErrorCode::GoingAway, _, Cause::Relay))) {
        // Let the node read its answers and `GoingAway` before the close discards them:
        // it closes once it has (limits::SHUTDOWN_GOODBYE_MS).
        let wait = Duration::from_millis(crate::limits::SHUTDOWN_GOODBYE_MS);
        if tokio::time::timeout(wait, conn.closed()).await.is_err() {
            debug!(peer = %me, conn = conn_id, "the node did not close after GoingAway; closing it");
        }
    }
    info!(peer = %me, conn = conn_id, "session ended");
    match result {
        // The hub closed this connection because another authenticated as the same
        // participant: that is why it ended (reading the closed connection says only that
        // it is closed), and it is counted and logged as such.
        Ok(()) | Err(End(ErrorCode::Normal, _, Cause::Relay)) if superseded => Err(End::new(
            ErrorCode::Superseded,
            "another connection authenticated as this participant",
        )),
        result => result,
    }
}

/// The end of a login refused for its participant's budget of sessions: `LimitExceeded`,
/// its detail saying when to try again (the close's reason; no `Error` frame, as for
/// `Busy`). Logged at most once per participant every `logins::LOG_EVERY`, with the count;
/// the connection's own line is a debug one (`run`).
fn over_budget(
    shared: &Shared,
    me: &ParticipantId,
    conn: &quinn::Connection,
    refused: crate::logins::Refused,
) -> End {
    let l = &shared.config.limits;
    // Rounded up to a tenth of a second, as the detail says it, so that a node trying again
    // when told is let in. At most a refill (an hour), so it fits.
    let retry_in_ms =
        u64::try_from(refused.retry_in.as_millis().div_ceil(100) * 100).unwrap_or(u64::MAX);
    // The node reads the end of the detail back (`frame::retry_in_ms_of`): it waits so long.
    let detail = format!(
        "{me} started sessions faster than this relay allows ({} at once, one more every {} ms: limits.session_burst, session_refill_ms): {}",
        l.session_burst,
        l.session_refill_ms,
        hotline_proto::frame::retry_in_text(retry_in_ms),
    );
    if let Some(refused) = refused.log {
        warn!(peer = %me, refused, remote = %conn.remote_address(), retry_in_ms = %retry_in_ms, "logins refused for the participant's budget of sessions (LimitExceeded): a node logging in again and again, a link remade in a loop or a second node with this key? (a count since the last such line for this participant, at most one a 10 s; the metric hotline_relay_connections_closed_total{{code=\"LimitExceeded\"}} counts each)");
    }
    End::new(ErrorCode::LimitExceeded, detail)
}

struct Session {
    me: ParticipantId,
    /// The key `me` authenticated with.
    key: PublicKey,
    conn_id: u64,
    shared: Arc<Shared>,
    writer: FrameWriter,
    /// The node's frames: read in the session's loop, and ahead of it while a write waits.
    input: Input,
    /// Queue position of the last message written to this node.
    msg_cursor: i64,
    /// Queue position of the last forwarded receipt written to this node.
    rcpt_cursor: i64,
    /// Messages are being read from the store (until it has no more), not the mailbox.
    msgs_from_store: bool,
    /// Forwarded receipts are being read from the store, not the mailbox.
    rcpts_from_store: bool,
    /// Messages written and not yet receipted (bounded by the delivery window).
    in_flight_deliveries: HashSet<MessageId>,
    /// Submissions and receipts handed to the writer and not yet answered.
    pending_answers: usize,
    /// Delivery stopped at a full window with the queue possibly not exhausted: a receipt
    /// that frees room must read on. (Otherwise the writer's wake-ups say when to read.)
    window_full: bool,
    write_timeout: Duration,
    /// Reading this connection waits until then: its participant sent receipts, or receipt
    /// items, faster than `receipt_rate_per_sec` or `receipt_item_rate_per_sec` allows.
    read_paused_until: Option<tokio::time::Instant>,
    /// Receipts forwarded on this connection that the node has not yet confirmed with
    /// `ReceiptsStored`: the most digests its next ones may name, and at most
    /// `limits::FORWARD_WINDOW`.
    unconfirmed_forwards: u64,
    /// Forwarding stopped at a full window with the queue possibly not exhausted: a
    /// `ReceiptsStored` that frees room must read on, as for `window_full`.
    forward_window_full: bool,
    /// A page of messages was written and more may be waiting, within the window: the loop
    /// writes the next page once it has handled what else is due (see [`Session::pump`]).
    msgs_due: bool,
    /// The same for forwarded receipts.
    rcpts_due: bool,
    /// Whether this session has logged a pause (once per session).
    pause_logged: bool,
    /// Refusals are logged at most once every 10 s a session, with the count since the
    /// last line: a runaway node past its rate is refused as fast as it sends. The node logs
    /// each refusal it gets, and the metrics count each.
    rejections: hotline_net::Throttle,
}

impl Session {
    /// Ends the session with `Revoked` unless `roster` still lists this participant, not
    /// revoked, with the key it authenticated with (7.7).
    ///
    /// The detail says which of the three it is: a node whose key was rotated out must be
    /// told to use its new key, not that its participant was revoked.
    async fn check_listed(&mut self, roster: &Roster) -> Result<(), End> {
        let (me, v) = (&self.me, roster.version);
        let why = match roster.participant(me) {
            Some(p) if !p.revoked && p.keys.contains(&self.key) => return Ok(()),
            Some(p) if p.revoked => format!("{me} revoked by roster {v}"),
            Some(_) => format!(
                "key {} of {me} is no longer listed by roster {v} (rotated out: log in with a key the roster lists)",
                self.key.short()
            ),
            None => format!("{me} is not on roster {v}"),
        };
        let _ = self
            .write(&RelayToNode::Error(ErrorFrame {
                code: ErrorCode::Revoked,
                detail: why.clone(),
            }))
            .await;
        Err(End::new(ErrorCode::Revoked, why))
    }

    /// `checked_roster`: the version of the roster the node's `Hello` was checked against;
    /// `node_roster`: the version the node said it has. `welcome` is sent with the roster in
    /// force if it is newer than the node's.
    async fn run(
        &mut self,
        mut welcome: Welcome,
        checked_roster: u64,
        node_roster: u64,
        mailbox: &Mailbox,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), End> {
        let limits = self.shared.config.limits.clone();
        // Frames are read in the select below: `Input::next` is cancel-safe, so a frame
        // half-read when another branch wins is kept for the next turn. Not reading while the
        // answers are at their limit passes backpressure on to QUIC flow control (past the
        // few frames read ahead while a write waits, `Input`).
        let (answer_tx, mut answer_rx) =
            mpsc::channel::<RelayToNode>(limits.inflight_per_connection);
        let mut roster_rx = self.shared.roster.clone();
        roster_rx.mark_unchanged();
        // A roster reloaded between the login's check and here is marked seen above, so
        // the loop would never check it: check the one in force now, before anything is
        // written (a revoked participant must not be sent its backlog).
        let roster = roster_rx.borrow().clone();
        if roster.version != checked_roster {
            self.check_listed(&roster).await?;
        }
        // The roster `Welcome` carries is read here, after the watch is marked: read
        // earlier, a roster reloaded in between would be sent neither in `Welcome` nor as an
        // update (the watch has seen it), and the node would work from an older roster
        // until the next reload or connection. One reloaded after the mark is in both,
        // which the node takes as the same roster twice.
        welcome.roster = (roster.version > node_roster).then(|| roster.signed().clone());

        self.write(&RelayToNode::Welcome(welcome)).await?;
        self.pump(mailbox).await?;

        loop {
            let paused_until = self.read_paused_until;
            let can_read =
                self.pending_answers < limits.inflight_per_connection && paused_until.is_none();
            tokio::select! {
                biased;
                // Shutdown: answer what the node handed over before it (the writer and the
                // verifier still commit and answer it), then tell the node to come back
                // later. Reading stops: what the node sends from now on it offers again.
                _ = shutdown.changed() => {
                    self.input.closed = true;
                    drop(answer_tx);
                    self.answer_owed(&mut answer_rx).await?;
                    let _ = self.write(&RelayToNode::Error(ErrorFrame { code: ErrorCode::GoingAway, detail: "relay shutting down".into() })).await;
                    return Err(End::new(ErrorCode::GoingAway, "relay shutting down"));
                }
                // Roster reloaded: close a revoked participant, or one whose authenticating
                // key is no longer listed (7.7); send the rest the new roster.
                Ok(()) = roster_rx.changed() => {
                    let roster = roster_rx.borrow_and_update().clone();
                    self.check_listed(&roster).await?;
                    self.write(&RelayToNode::RosterUpdate(roster.signed().clone())).await?;
                }
                // Answers from the store writer, in commit order.
                Some(answer) = answer_rx.recv() => self.write_answers(answer, &mut answer_rx).await?,
                // Frames from the node, while there is room for their answers.
                frame = self.input.next(), if can_read => {
                    match frame {
                        Ok(None) => return Ok(()),
                        Err(e) => return Err(net_end(e)),
                        Ok(Some(f)) => {
                            // Whatever else has already arrived, as far as there is room
                            // for the answers and the participant's receipt budgets are
                            // not in debt, is handled with it.
                            let room = limits.inflight_per_connection - self.pending_answers;
                            let mut frames = vec![self.take_in(f)];
                            while frames.len() < room.min(crate::limits::VERIFY_BATCH_MAX)
                                && self.read_paused_until.is_none()
                            {
                                match self.input.try_next() {
                                    Ok(Some(f)) => frames.push(self.take_in(f)),
                                    Ok(None) => break,
                                    Err(e) => {
                                        self.handle(frames, &answer_tx, mailbox).await?;
                                        return Err(net_end(e));
                                    }
                                }
                            }
                            self.handle(frames, &answer_tx, mailbox).await?
                        }
                    }
                }
                // Something was queued for this participant.
                _ = mailbox.notified() => self.pump(mailbox).await?,
                // The receipt bucket is out of debt: read again.
                _ = tokio::time::sleep_until(paused_until.unwrap_or_else(tokio::time::Instant::now)), if paused_until.is_some() => {
                    self.read_paused_until = None;
                }
                // The next page of a backlog, once everything above has had its turn: the
                // node's frames, the answers owed to it, a roster change, a shutdown, the end
                // of a pause in reading (`Session::pump`). Last, so that it never keeps them
                // waiting for more than the page being written.
                _ = std::future::ready(()), if self.msgs_due || self.rcpts_due => {
                    if self.msgs_due {
                        self.pump_messages(mailbox).await?;
                    }
                    if self.rcpts_due {
                        self.pump_receipts(mailbox).await?;
                    }
                }
            }
        }
    }

    /// Writes `first` and whatever other answers have arrived with it, as one write.
    async fn write_answers(
        &mut self,
        first: RelayToNode,
        rx: &mut mpsc::Receiver<RelayToNode>,
    ) -> Result<(), End> {
        self.pending_answers -= 1;
        let mut batch = Vec::new();
        self.count_answer(&first);
        batch.extend_from_slice(&encode(&first)?);
        while let Ok(more) = rx.try_recv() {
            self.pending_answers -= 1;
            self.count_answer(&more);
            batch.extend_from_slice(&encode(&more)?);
        }
        self.write_raw(&batch).await
    }

    /// At a shutdown, once the session has dropped its own sender of `rx`: writes the
    /// answers still owed to the node as they come, until none is owed, or every holder of
    /// the channel has answered or gone, or `limits::SHUTDOWN_ANSWERS_MS` has passed.
    async fn answer_owed(&mut self, rx: &mut mpsc::Receiver<RelayToNode>) -> Result<(), End> {
        let deadline =
            tokio::time::Instant::now() + Duration::from_millis(crate::limits::SHUTDOWN_ANSWERS_MS);
        while self.pending_answers > 0 {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(answer)) => self.write_answers(answer, rx).await?,
                Ok(None) => break,
                Err(_) => {
                    warn!(peer = %self.me, owed = self.pending_answers, "shutting down with answers still owed to this node; it learns of them when it offers them again");
                    break;
                }
            }
        }
        Ok(())
    }

    fn count_answer(&mut self, a: &RelayToNode) {
        if let RelayToNode::Rejected(r) = a {
            self.shared.metrics.rejected(r.code);
            match self.rejections.tick(1, Instant::now()) {
                Some(n) => {
                    info!(peer = %self.me, rejected = n, code = ?r.code, subject = ?r.subject, detail = %r.detail, "rejected (a count since this session's last such line, at most one a 10 s; the last one's reason)")
                }
                None => {
                    debug!(peer = %self.me, code = ?r.code, subject = ?r.subject, detail = %r.detail, "rejected")
                }
            }
        }
    }

    /// Takes in a frame just read. A receipt is decoded and checked for authorship (7.5,
    /// steps 2-4) and charged to its participant's receipt budgets: one to the count, its
    /// items to the items (a receipt refused here reaches no store, and is charged as one
    /// receipt of no items). Past either budget's burst reading pauses (backpressure,
    /// nothing refused) until the budget is out of debt: charged one at a time, as read, a
    /// batch stops at the receipt that went into debt, so a pause is at most one receipt's
    /// worth.
    fn take_in(&mut self, f: NodeToRelay) -> Read {
        let NodeToRelay::Receipt(signed) = f else {
            return Read::Frame(f);
        };
        let checked = self.pre_receipt(&signed);
        let items = checked.as_ref().map_or(0, |r| r.items.len());
        let (count, items) = self.shared.charge_receipt(&self.me, items);
        let wait = count.max(items);
        if !wait.is_zero() {
            self.read_paused_until = Some(tokio::time::Instant::now() + wait);
            self.shared
                .metrics
                .receipt_read_pauses
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if !self.pause_logged {
                self.pause_logged = true;
                let l = &self.shared.config.limits;
                let budget = if count >= items {
                    "receipt_rate_per_sec"
                } else {
                    "receipt_item_rate_per_sec"
                };
                warn!(peer = %self.me, budget, receipts_per_sec = l.receipt_rate_per_sec, items_per_sec = l.receipt_item_rate_per_sec, "receipts arrive faster than the participant's receipt budget allows; reading this connection pauses (logged once per connection)");
            }
        }
        Read::Receipt(signed, checked)
    }

    /// Handles a group of frames read together, in order. The signatures of the messages
    /// among them are verified as one batch (about half the cost of one by one); receipts go
    /// to the verifier, which batches them across sessions (`crate::verifier`). Each frame's
    /// checks and answers are as if it had been handled alone.
    async fn handle(
        &mut self,
        frames: Vec<Read>,
        answers: &mpsc::Sender<RelayToNode>,
        mailbox: &Mailbox,
    ) -> Result<(), End> {
        // The start of the submissions' first stage (`hotline_relay_submit_check_seconds`).
        let read_at = std::time::Instant::now();
        // Pass 1: the checks that come before the roster and the signature (7.3 and 7.5;
        // a receipt's were made as it was read).
        let mut staged = Vec::with_capacity(frames.len());
        let mut envelopes = Vec::new();
        for f in frames {
            staged.push(match f {
                Read::Frame(NodeToRelay::Submit(signed)) => match self.pre_submit(&signed) {
                    Err(refusal) => Staged::Refuse(refusal),
                    Ok(env) => {
                        envelopes.push((signed, env));
                        Staged::Submit
                    }
                },
                Read::Receipt(_, Err(refusal)) => Staged::Refuse(refusal),
                Read::Receipt(signed, Ok(receipt)) => Staged::Receipt(signed, receipt),
                Read::Frame(other) => Staged::Other(other),
            });
        }
        // Pass 2: roster and signatures of the messages, in a batch, over the values
        // decoded in pass 1.
        let roster = self.shared.roster.borrow().clone();
        let (env_signed, env_values): (Vec<_>, Vec<_>) = envelopes.into_iter().unzip();
        let mut envelopes = roster
            .verify_envelopes(env_signed.iter().zip(env_values))
            .into_iter()
            .zip(&env_signed);
        // Pass 3: in order, the checks after the signature, and the answers.
        for st in staged {
            match st {
                Staged::Refuse((subject, code, detail)) => {
                    self.refuse(subject, code, detail).await?
                }
                Staged::Submit => {
                    let Some((verified, signed)) = envelopes.next() else {
                        continue;
                    };
                    let subject = subject_of(signed);
                    let env = match verified {
                        Ok(e) => e,
                        Err(e) => {
                            self.refuse(subject, reject_code(&e), e.to_string()).await?;
                            continue;
                        }
                    };
                    self.submit(env, subject, answers, read_at).await?;
                }
                Staged::Receipt(signed, value) => {
                    // Its signature is checked by the verifier, after this. The delivery
                    // window opens now: a forged receipt frees a slot of this node's own
                    // window but removes nothing from its queue (only a verified receipt
                    // does), so what it names is delivered again at its next connection.
                    for item in &value.items {
                        self.in_flight_deliveries.remove(&item.id);
                    }
                    let u = crate::verifier::Unverified {
                        signed,
                        value,
                        reply: answers.clone(),
                    };
                    hand_over(
                        &self.shared.verifier,
                        u,
                        &mut self.pending_answers,
                        "relay shutting down",
                    )
                    .await?;
                    // Room in the delivery window may let more of the backlog go out. Only
                    // then: a query per receipt would cost as much as storing it.
                    if self.window_full {
                        self.pump_messages(mailbox).await?;
                    }
                }
                Staged::Other(f) => self.handle_other(f, mailbox).await?,
            }
        }
        Ok(())
    }

    /// Rate, size and authorship of a submission, before its signature (7.3, steps 4-7): a
    /// message claiming another sender is `NotAuthor` whatever key signed it.
    /// Returns the decoded message for the roster and signature checks; bytes that do not
    /// decode are refused here as they would be there.
    fn pre_submit(&self, signed: &Signed<Envelope>) -> Result<Envelope, Refusal> {
        let subject = subject_of(signed);
        if !self.shared.take_token(&self.me) {
            self.shared
                .metrics
                .rate_limited(crate::metrics::Budget::Count);
            return Err((
                subject,
                RejectCode::RateLimited,
                "submission rate limit (limits.rate_per_sec, rate_burst) exceeded; retry later"
                    .into(),
            ));
        }
        if signed.bytes().len() > self.shared.config.limits.frame_bytes_max {
            return Err((
                subject,
                RejectCode::TooLarge,
                "message exceeds the frame limit".into(),
            ));
        }
        let claimed = signed
            .decode_unverified()
            .map_err(|e| undecodable(subject.clone(), e))?;
        if claimed.sender != self.me {
            return Err((
                subject,
                RejectCode::NotAuthor,
                format!("session is {}, message is from {}", self.me, claimed.sender),
            ));
        }
        Ok(claimed)
    }

    /// Authorship of a receipt, before roster and signature (7.5, steps 2-4).
    fn pre_receipt(
        &self,
        signed: &Signed<hotline_proto::Receipt>,
    ) -> Result<hotline_proto::Receipt, Refusal> {
        let claimed = signed
            .decode_unverified()
            .map_err(|e| undecodable(Subject::Receipt(signed.digest()), e))?;
        if claimed.recipient != self.me {
            return Err((
                Subject::Receipt(signed.digest()),
                RejectCode::NotAuthor,
                format!(
                    "session is {}, receipt is from {}",
                    self.me, claimed.recipient
                ),
            ));
        }
        Ok(claimed)
    }

    /// A verified submission: its body and timestamp, then its sender's byte budget (the
    /// last check before the store, so that only what reaches the store is charged), then
    /// the store.
    async fn submit(
        &mut self,
        env: Verified<Envelope>,
        subject: Subject,
        answers: &mpsc::Sender<RelayToNode>,
        read_at: std::time::Instant,
    ) -> Result<(), End> {
        if env.body.len() > self.shared.config.limits.body_bytes_max {
            return self
                .refuse(
                    subject,
                    RejectCode::TooLarge,
                    format!(
                        "body of {} bytes exceeds the relay's limit of {}",
                        env.body.len(),
                        self.shared.config.limits.body_bytes_max
                    ),
                )
                .await;
        }
        if let Err(code) = hotline_proto::check_created_at(env.created_at_ms, crate::now_ms()) {
            return self
                .refuse(subject, code, "created_at is too far in the future")
                .await;
        }
        let bytes = env.signed().bytes().len();
        if !self.shared.take_bytes(&self.me, bytes) {
            self.shared
                .metrics
                .rate_limited(crate::metrics::Budget::Bytes);
            let l = &self.shared.config.limits;
            return self
                .refuse(
                    subject,
                    RejectCode::RateLimited,
                    format!(
                        "byte budget (limits.byte_rate_per_sec {}, byte_rate_burst {}) exceeded by a message of {bytes} bytes; retry later",
                        l.byte_rate_per_sec, l.byte_rate_burst
                    ),
                )
                .await;
        }
        self.send_to_writer(Command::Submit {
            digest: env.signed().digest(),
            env,
            reply: answers.clone(),
            read_at,
            handed_at: std::time::Instant::now(),
        })
        .await
    }

    /// Frames other than submissions and receipts.
    async fn handle_other(&mut self, f: NodeToRelay, mailbox: &Mailbox) -> Result<(), End> {
        match f {
            NodeToRelay::Hello(_) => Err(End::new(
                ErrorCode::ProtocolViolation,
                "Hello after authentication",
            )),
            NodeToRelay::Ping(n) => self.write(&RelayToNode::Pong(n)).await,
            NodeToRelay::ReceiptsStored(digests) => {
                // Each digest costs the store writer a statement, for every participant's
                // commits: a node may confirm only what this connection forwarded it, or it
                // could keep the writer busy without end (PROTOCOL.md 7.2).
                let n = digests.len() as u64;
                if n > self.unconfirmed_forwards {
                    return Err(End::new(
                        ErrorCode::ProtocolViolation,
                        format!(
                            "ReceiptsStored names {n} receipts; {} forwarded on this connection are unconfirmed",
                            self.unconfirmed_forwards
                        ),
                    ));
                }
                self.unconfirmed_forwards -= n;
                self.shared
                    .writer
                    .send(Command::ReceiptsStored {
                        participant: self.me.clone(),
                        digests,
                    })
                    .await
                    .map_err(|_| End::new(ErrorCode::GoingAway, "store closed"))?;
                // Room in the forward window may let more of the queue go out. (The
                // confirmed receipts are behind the session's cursor: whether or not their
                // deletion has been committed yet, they are not read again.)
                if self.forward_window_full {
                    self.pump_receipts(mailbox).await?;
                }
                Ok(())
            }
            _ => Err(End::new(ErrorCode::ProtocolViolation, "unknown frame")),
        }
    }

    async fn send_to_writer(&mut self, cmd: Command) -> Result<(), End> {
        hand_over(
            &self.shared.writer,
            cmd,
            &mut self.pending_answers,
            "store closed",
        )
        .await
    }

    async fn refuse(
        &mut self,
        subject: Subject,
        code: RejectCode,
        detail: impl Into<String>,
    ) -> Result<(), End> {
        let r = RelayToNode::Rejected(Rejected {
            subject,
            code,
            detail: frame::detail(detail),
        });
        self.count_answer(&r);
        self.write(&r).await
    }

    /// Writes queued messages (within the delivery window) and forwarded receipts: at most
    /// one write of each, a page of a backlog or what the mailbox holds. If there may be
    /// more, `msgs_due` or `rcpts_due` says so, and the session's loop calls this again once
    /// it has handled what else is due: the node's frames (its outbox, its receipts, a
    /// `Ping`), the answers owed to it, a roster change, a shutdown. (Writing page after page
    /// up to the window, up to 4,096 of the largest messages, some 320 MB, held all of those
    /// back for as long as the node took to read them: minutes behind a poor link, during
    /// which a participant the roster had revoked was still sent its messages.)
    async fn pump(&mut self, mailbox: &Mailbox) -> Result<(), End> {
        self.pump_messages(mailbox).await?;
        self.pump_receipts(mailbox).await
    }

    /// Writes queued messages, one page at most ([`Session::pump`]), within the delivery
    /// window: from the mailbox, or from the store when the mailbox says it lost track (see
    /// `hub::Lane`).
    async fn pump_messages(&mut self, mailbox: &Mailbox) -> Result<(), End> {
        let window = self.shared.config.limits.delivery_window;
        let page = crate::limits::FETCH_PAGE_ROWS;
        self.msgs_due = false;
        loop {
            let room = window
                .saturating_sub(self.in_flight_deliveries.len())
                .min(page);
            self.window_full = room == 0;
            if room == 0 {
                break;
            }
            if self.msgs_from_store && self.shared.metrics.queue_depth(&self.me) == 0 {
                // Nothing queued as of the last commit (a reconnect storm of nodes with empty
                // queues reads nothing); anything newer is in the mailbox.
                self.msgs_from_store = false;
                continue;
            }
            if self.msgs_from_store {
                let (me, after) = (self.me.clone(), self.msg_cursor);
                let (rows, more) = self
                    .read_store(move |r, key| r.backlog(key, &me, after, room))
                    .await?;
                let n = rows.len();
                let mut buf = Vec::new();
                for (qid, id, signed) in rows {
                    self.msg_cursor = qid;
                    self.in_flight_deliveries.insert(id);
                    buf.extend_from_slice(&encode(&RelayToNode::Deliver(signed))?);
                }
                // The store has no more: everything committed from now on is posted. (A page
                // cut short by its bytes has more.)
                self.msgs_from_store = n == room || more;
                if n > 0 {
                    self.write_raw(&buf).await?;
                    self.count_deliveries(n);
                    self.msgs_due = true;
                    return Ok(());
                }
                continue;
            }
            let posted = match mailbox.take(Kind::Message, self.msg_cursor, room) {
                Take::ReadStore => {
                    self.msgs_from_store = true;
                    continue;
                }
                Take::Items(v) => v,
            };
            if posted.is_empty() {
                break;
            }
            let n = posted.len();
            let mut frames = Vec::with_capacity(n);
            let mut posted_at = Vec::with_capacity(n);
            for p in posted {
                self.msg_cursor = p.pos;
                if let Some(id) = p.id {
                    self.in_flight_deliveries.insert(id);
                }
                posted_at.extend(p.posted_at);
                frames.push(p.frame);
            }
            self.write_shared(&mut frames).await?;
            self.count_deliveries(n);
            let written = std::time::Instant::now();
            for c in posted_at {
                self.shared
                    .metrics
                    .fanned_out(written.saturating_duration_since(c));
            }
            // A take short of `room` emptied the lane: what is posted later wakes the loop
            // through the mailbox, so no further turn is due (each live delivery would
            // otherwise cost its session a second turn and take).
            self.msgs_due = n == room;
            return Ok(());
        }
        Ok(())
    }

    /// One page read from the store (counted in `hotline_relay_store_reads_total`).
    async fn read_store<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Readers, usize) -> Result<T, hotline_store::StoreError> + Send + 'static,
    ) -> Result<T, End> {
        self.shared
            .metrics
            .store_reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.shared.read(self.conn_id as usize, read).await
    }

    fn count_deliveries(&self, n: usize) {
        self.shared
            .metrics
            .deliveries
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
    }

    /// Writes forwarded receipts queued for this participant, from the mailbox or the store
    /// as for messages, one page at most ([`Session::pump`]), within the forward window
    /// (`limits::FORWARD_WINDOW`): the session goes back to reading the node's
    /// confirmations (and whatever else it writes) rather than write a backlog of any size
    /// first.
    async fn pump_receipts(&mut self, mailbox: &Mailbox) -> Result<(), End> {
        let window = crate::limits::FORWARD_WINDOW;
        let page = crate::limits::FETCH_PAGE_ROWS;
        self.rcpts_due = false;
        loop {
            // At most a page: `page` fits in a usize.
            let room = window
                .saturating_sub(self.unconfirmed_forwards)
                .min(page as u64) as usize;
            self.forward_window_full = room == 0;
            if room == 0 {
                break;
            }
            let mut buf = Vec::new();
            let n;
            // From the store, a page is followed by another turn (the store, or the
            // mailbox after it); from the mailbox only when the take filled `room`, as for
            // messages.
            let from_store = self.rcpts_from_store;
            if from_store {
                let (me, after) = (self.me.clone(), self.rcpt_cursor);
                let (rows, more) = self
                    .read_store(move |r, key| r.receipts(key, &me, after, room))
                    .await?;
                n = rows.len();
                for (qid, signed) in rows {
                    self.rcpt_cursor = qid;
                    buf.extend_from_slice(&encode(&RelayToNode::Receipt(signed))?);
                }
                self.rcpts_from_store = n == room || more;
            } else {
                match mailbox.take(Kind::Receipt, self.rcpt_cursor, room) {
                    Take::ReadStore => {
                        self.rcpts_from_store = true;
                        continue;
                    }
                    Take::Items(v) => {
                        n = v.len();
                        for p in v {
                            self.rcpt_cursor = p.pos;
                            buf.extend_from_slice(&p.frame);
                        }
                    }
                }
                if n == 0 {
                    break;
                }
            }
            if n > 0 {
                self.write_raw(&buf).await?;
                self.unconfirmed_forwards += n as u64;
                self.shared
                    .metrics
                    .receipts_forwarded
                    .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                self.rcpts_due = from_store || n == room;
                return Ok(());
            }
        }
        Ok(())
    }

    async fn write(&mut self, f: &RelayToNode) -> Result<(), End> {
        let bytes = encode(f)?;
        self.write_raw(&bytes).await
    }

    /// Writes encoded frames. A node that reads none of them for `write_timeout_ms` is a
    /// slow consumer (closed with `SlowConsumer`); one that reads steadily, however slowly
    /// (a backlog page of megabytes over a poor link), is given the time it takes.
    ///
    /// Meanwhile the node's frames are read ahead ([`Input`]): a node may be writing too,
    /// and read what this writes only once its own write is taken.
    async fn write_raw(&mut self, bytes: &[u8]) -> Result<(), End> {
        let write = self.writer.write_raw_steady(bytes, self.write_timeout);
        self.input.while_writing(write).await.map_err(net_end)
    }

    /// As [`Session::write_raw`], for frames in shared buffers (posted items).
    async fn write_shared(&mut self, frames: &mut [bytes::Bytes]) -> Result<(), End> {
        let write = self.writer.write_chunks_steady(frames, self.write_timeout);
        self.input.while_writing(write).await.map_err(net_end)
    }
}

/// The node's side of a session's stream: its frame reader, and the frames read from it
/// ahead of the session's loop while the session waited on a write.
///
/// A session writes to its node (a backlog of megabytes; answers) while the node may be
/// writing to it (after an outage, a page of its outbox, up to 256 messages), and a node
/// may read what arrives only between its writes (the reference node did until it wrote
/// its queue beside reading, `link::RelayWriter`; another implementation may still). Had the session read nothing while it wrote, each side's write would have
/// waited on the other's reading once both QUIC stream windows (1.25 MB each) were full,
/// until one of them gave the link up as stalled, and so again at every connection. So
/// while a write waits the session reads on, up to `limits::READ_AHEAD_FRAMES` frames and
/// `READ_AHEAD_BYTES` bytes, which hold a node's largest outbox page; the loop handles them
/// (charged to the budgets, within `inflight_per_connection`) before reading more.
struct Input {
    reader: FrameReader,
    /// Frames read ahead, in the order read.
    ahead: std::collections::VecDeque<NodeToRelay>,
    /// Their size, about ([`frame_bytes`]).
    ahead_bytes: usize,
    /// How reading ended while reading ahead (the node finished the stream, or an error),
    /// reported once the frames read before it have been taken.
    end: Option<Result<(), NetError>>,
    /// The relay is shutting down: no more is read ahead (what the node sends from then on,
    /// it offers again).
    closed: bool,
}

impl Input {
    fn new(reader: FrameReader) -> Self {
        Self {
            reader,
            ahead: std::collections::VecDeque::new(),
            ahead_bytes: 0,
            end: None,
            closed: false,
        }
    }

    /// The next frame: one read ahead, else from the stream. `Ok(None)` when the node
    /// finished the stream. Cancel-safe, as `FrameReader::read` is: a frame read ahead is
    /// taken without waiting.
    async fn next(&mut self) -> Result<Option<NodeToRelay>, NetError> {
        if let Some(f) = self.take_ahead() {
            return Ok(Some(f));
        }
        if let Some(end) = self.end.take() {
            return end.map(|()| None);
        }
        self.reader.read::<NodeToRelay>().await
    }

    /// The next frame if one has already arrived (read ahead, or waiting in the reader),
    /// without waiting; an error read ahead once the frames before it are taken.
    fn try_next(&mut self) -> Result<Option<NodeToRelay>, NetError> {
        if let Some(f) = self.take_ahead() {
            return Ok(Some(f));
        }
        match self.end.take() {
            Some(Err(e)) => Err(e),
            Some(Ok(())) => {
                // The next `next` says the stream has ended.
                self.end = Some(Ok(()));
                Ok(None)
            }
            None => self.reader.try_read::<NodeToRelay>(),
        }
    }

    fn take_ahead(&mut self) -> Option<NodeToRelay> {
        let f = self.ahead.pop_front()?;
        self.ahead_bytes -= frame_bytes(&f);
        Some(f)
    }

    /// Whether another frame may be read ahead.
    fn has_room(&self) -> bool {
        !self.closed
            && self.end.is_none()
            && self.ahead.len() < crate::limits::READ_AHEAD_FRAMES
            && self.ahead_bytes < crate::limits::READ_AHEAD_BYTES
    }

    /// Runs `write` to its end, reading the node's frames ahead meanwhile while there is
    /// room for them.
    async fn while_writing<T>(
        &mut self,
        write: impl std::future::Future<Output = Result<T, NetError>>,
    ) -> Result<T, NetError> {
        let mut write = std::pin::pin!(write);
        loop {
            let room = self.has_room();
            tokio::select! {
                biased;
                done = &mut write => return done,
                // Cancel-safe: a frame half-read when the write ends stays in the reader.
                read = self.reader.read::<NodeToRelay>(), if room => match read {
                    Ok(Some(f)) => {
                        self.ahead_bytes += frame_bytes(&f);
                        self.ahead.push_back(f);
                    }
                    Ok(None) => self.end = Some(Ok(())),
                    Err(e) => self.end = Some(Err(e)),
                },
            }
        }
    }
}

/// About how many bytes a frame read ahead holds: its signed bytes, or its digests.
fn frame_bytes(f: &NodeToRelay) -> usize {
    const SMALL: usize = 64;
    SMALL
        + match f {
            NodeToRelay::Submit(s) => s.bytes().len(),
            NodeToRelay::Receipt(s) => s.bytes().len(),
            NodeToRelay::ReceiptsStored(d) => d.len() * 32,
            _ => 0,
        }
}

/// Hands `item` to a stage (the store writer or the receipt verifier) that answers it on the
/// session's answer channel, and counts that answer as pending: the channel has room for
/// every pending answer, so the stage's `try_send` cannot fail while the session lives.
async fn hand_over<T>(
    stage: &mpsc::Sender<T>,
    item: T,
    pending_answers: &mut usize,
    closed: &'static str,
) -> Result<(), End> {
    stage
        .send(item)
        .await
        .map_err(|_| End::new(ErrorCode::GoingAway, closed))?;
    *pending_answers += 1;
    Ok(())
}

fn encode(f: &RelayToNode) -> Result<Vec<u8>, End> {
    frame::encode_frame(f).map_err(|e| End::new(ErrorCode::Internal, format!("encode: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use quinn::ConnectionError as C;

    /// The byte budget: a submission is charged its size, taken whole or not at all; what
    /// was spent comes back at the sustained rate, never beyond the burst. On the bucket's
    /// own clock: no waiting.
    #[test]
    fn a_byte_budget_is_charged_by_size_refills_at_its_rate_and_never_past_its_burst() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut r = Rate::new(1_000, 5_000, t0);
        assert!(r.take(3_000, t0));
        assert!(!r.take(3_000, t0), "2,000 left");
        assert!(
            r.take(2_000, t0),
            "a refusal took nothing: a smaller one fits"
        );
        assert!(!r.take(1, t0));
        // Half a second refills 500 bytes.
        assert!(!r.take(600, at(500)));
        assert!(r.take(500, at(500)));
        // An hour refills up to the burst and no further.
        assert!(!r.take(5_001, at(3_600_000)));
        assert!(r.take(5_000, at(3_600_000)));
        assert!(!r.take(1, at(3_600_000)));
        // A time read before the last use (by another session) adds nothing.
        assert!(!r.take(1, at(3_599_000)));
        assert!(r.take(1, at(3_600_001)));
    }

    #[test]
    fn a_session_end_is_put_down_to_whoever_ended_it() {
        let by_node = |code| NetError::Closed {
            code,
            reason: String::new(),
        };
        assert_eq!(
            cause_of(&by_node(ErrorCode::Normal)),
            Cause::Node(ErrorCode::Normal)
        );
        assert_eq!(
            cause_of(&by_node(ErrorCode::Internal)),
            Cause::Node(ErrorCode::Internal)
        );
        let unknown_code = C::ApplicationClosed(quinn::ApplicationClose {
            error_code: quinn::VarInt::from_u32(9_999),
            reason: bytes::Bytes::new(),
        });
        assert_eq!(
            cause_of(&NetError::from_connection(unknown_code)),
            Cause::Node(ErrorCode::Normal)
        );
        assert_eq!(cause_of(&NetError::Connection(C::TimedOut)), Cause::Lost);
        assert_eq!(cause_of(&NetError::Connection(C::Reset)), Cause::Lost);
        assert_eq!(
            cause_of(&NetError::Connection(C::LocallyClosed)),
            Cause::Relay
        );
        assert_eq!(
            cause_of(&NetError::Decode(hotline_proto::DecodeError::TooLarge {
                len: 1 << 30,
                max: 1 << 20,
            })),
            Cause::Relay
        );
    }
}
