//! The node's limits and defaults.

/// Most relays one node may be configured with.
pub const RELAYS_MAX: usize = 8;

/// First reconnect delay after a failure.
pub const BACKOFF_MIN_MS: u64 = 200;
/// Reconnect delays double up to this cap (plus up to 50 % jitter).
pub const BACKOFF_MAX_MS: u64 = 10_000;
const _: () = assert!(BACKOFF_MIN_MS < BACKOFF_MAX_MS);
/// The longest a link waits on a relay's word (`retry in S.T s` in its refusal of this
/// node's login for the participant's budget of sessions) before trying that relay again.
/// The hint is a peer's text: a relay that said an hour, or a year, would otherwise hold
/// this node's messages to it that long. A relay configured with a refill longer than this
/// (an hour at most) refuses the node once more every 5 min, which costs it a handshake.
pub const RELAY_RETRY_HINT_MAX_MS: u64 = 300_000;
const _: () = assert!(RELAY_RETRY_HINT_MAX_MS >= BACKOFF_MAX_MS);
/// A link lost after working this long is remade at once. One lost sooner is remade after a
/// pause that starts at `BACKOFF_MIN_MS` and doubles up to `BACKOFF_MAX_MS` with each such
/// loss in a row (plus up to 50 % jitter). Otherwise a link that fails as soon as it is made
/// (this node's disk is full, so each delivery fails to store) would be remade hundreds of
/// times a second.
pub const HEALTHY_LINK_MS: u64 = 10_000;

/// A link that has received no packet at all for this long (a live relay's keep-alives and
/// acknowledgements arrive at least every `KEEPALIVE_MS`) is probed with a `Ping` frame every
/// `SILENT_PING_MS` until something arrives or the QUIC idle timeout closes it. Each ping is
/// a fresh packet: a relay that restarted answers it with a stateless reset at once, where
/// QUIC's own retransmissions had backed off to seconds apart while the relay was down (and
/// on a lossy link the first reset may be lost). Twenty regional drills each, the node behind
/// the drill's 20 %-loss link noticed the restarted relay 1.04 s after it was back on average
/// and at most 5.6 s without these pings, 0.82 s and at most 2.1 s with them; each of the
/// drills' 16 silences that pinged ended in the restarted relay's reset (eighteenth benchmark
/// round).
pub const SILENT_LINK_MS: u64 = hotline_net::transport::KEEPALIVE_MS + 500;
/// Interval of the pings on a silent link.
pub const SILENT_PING_MS: u64 = 500;
const _: () = assert!(SILENT_LINK_MS < hotline_net::transport::IDLE_TIMEOUT_MS);

/// Time allowed for the QUIC handshake plus authentication.
pub const CONNECT_TIMEOUT_MS: u64 = 5_000;

/// A write to the relay that makes no progress for this long (the relay reads nothing: its
/// store has stalled, or it is not a relay) ends the link, to be made again, rather than
/// holding the link and the node's shutdown in it. The relay gives its own writes as long
/// (`limits.write_timeout_ms`).
pub const LINK_WRITE_TIMEOUT_MS: u64 = 10_000;

/// The most a relay's `Welcome.last_seq` may be above this node's counter and still be
/// taken as a floor for it. A node restored from an old backup is behind by the messages it
/// sent since (thousands, millions at the most); a number billions ahead is no relay's
/// record but a hostile or broken relay's, and taken it would use up the counter for good,
/// on every link (a floor of `SEQ_MAX - 1` leaves one number).
pub const SEQ_FLOOR_JUMP_MAX: u64 = 1 << 32;

/// A relay clock (`Welcome.relay_time_ms`) further than this from the node's is logged at
/// warn: receipts and deadlines carry both sides' times.
pub const CLOCK_SKEW_WARN_MS: u64 = 60_000;

/// Default hook timeout: a hook still running after this is killed.
pub const HOOK_TIMEOUT_MS: u64 = 10_000;
/// The shortest hook timeout a configuration may set (`hooks.timeout_ms`). A paging hook
/// calls out (an HTTP request, an SMS gateway); one killed sooner never gets through, and
/// paging fails with nothing but a log line (0 killed every hook at once).
pub const HOOK_TIMEOUT_MIN_MS: u64 = 1_000;
/// Hooks running at once; more wait for one of them to end.
pub const HOOKS_CONCURRENT_MAX: usize = 16;
/// Hooks waiting to run, beyond those running: a burst of arrivals in a crisis (a FLASH
/// alert, then the answers to it) pages for every one of them, in turn. Past this many an
/// event's hook is skipped with an error rather than queued without end (each waiting hook
/// holds its event, a few kilobytes).
pub const HOOKS_WAITING_MAX: usize = 1_024;

/// Default time without any relay before the unreachable hook runs.
pub const UNREACHABLE_AFTER_MS: u64 = 60_000;
/// The shortest time without any relay a configuration may set before the unreachable hook
/// runs (`hooks.unreachable_after_ms`). A node has no link until its first connection is
/// made, so 0 raised the alarm at every start, and at every reconnection.
pub const UNREACHABLE_AFTER_MIN_MS: u64 = 1_000;

/// Default re-page interval for unacknowledged FLASH / IMMEDIATE messages.
pub const PAGING_INTERVAL_MS: u64 = 300_000;
/// The shortest re-page interval a configuration may set (`hooks.paging_interval_ms`); 0
/// re-paged the duty officer at every tick (`DEADLINE_TICK_MS`), four times a second.
pub const PAGING_INTERVAL_MIN_MS: u64 = 1_000;

/// How often deadlines and paging are checked.
pub const DEADLINE_TICK_MS: u64 = 250;
// The defaults are within the bounds; a minimum interval is more than a tick, so that it
// means what it says.
const _: () = assert!(HOOK_TIMEOUT_MIN_MS <= HOOK_TIMEOUT_MS);
const _: () = assert!(UNREACHABLE_AFTER_MIN_MS <= UNREACHABLE_AFTER_MS);
const _: () = assert!(PAGING_INTERVAL_MIN_MS <= PAGING_INTERVAL_MS);
const _: () = assert!(PAGING_INTERVAL_MIN_MS > DEADLINE_TICK_MS);

/// Received messages examined for re-paging in one tick; more wait for the next tick.
pub const PAGES_PER_TICK_MAX: usize = 256;

/// Outbox messages written to a relay and not yet answered, at most (a page); the rest
/// follow as answers arrive. The relay reads at most a page of frames (up to 24 MiB) ahead
/// while its own write to this node waits: a page of the largest messages (about 20 MB)
/// fits, and a link that wrote a page more at every pass (each answer to an
/// acknowledgement, each message composed) could fill that and the stream window while the
/// relay wrote a backlog, each side's write then waiting on the other's.
pub const OUTBOX_PAGE: usize = 256;

/// Acknowledgements written to a relay and not yet answered, at most; the rest follow as
/// it answers. The relay reads at most 256 frames ahead (a page of the outbox) while its
/// own write waits: all of a node's pending acknowledgements at once (after an outage,
/// thousands) filled that and the relay's stream window while the relay wrote a backlog,
/// and a link that then waited on its own write (as links did, before `LINK_QUEUE_BYTES_MAX`)
/// left each side's write waiting on the other's until the link was closed as a slow
/// consumer, with nothing stored, at every connection. Kept as a bound on the link's queue.
pub const ACKS_IN_FLIGHT: usize = 256;

/// Bytes a link's queue of frames to write may hold before it stops taking the relay's
/// frames (whose handling queues more) until the relay has read some. The link writes its
/// queue beside taking the relay's frames, never instead (`link::RelayWriter`), and the
/// protocol's windows bound what the queue holds (an outbox page of the largest messages,
/// about 20 MB, the acknowledgements in flight, receipts): this is a limit on a relay that
/// breaks them, not a pace.
pub const LINK_QUEUE_BYTES_MAX: usize = 64 * 1024 * 1024;
// A page of the largest messages, with as much again for what is queued beside it.
const _: () =
    assert!(LINK_QUEUE_BYTES_MAX >= 2 * OUTBOX_PAGE * hotline_proto::limits::ENVELOPE_BYTES_MAX);

/// Deliveries stored and receipted in one transaction and one cumulative receipt.
pub const RECEIPT_BATCH_MAX: usize = hotline_proto::limits::RECEIPT_ITEMS_MAX;

/// The relay's frames a link's reader holds, decoded, until the link takes them; a full
/// channel stops the reading, which holds the relay back through QUIC's flow control.
/// Bounded in bytes too (`LINK_READER_BYTES_MAX`).
///
/// Half a batch (`RECEIPT_BATCH_MAX`, 512 frames), which costs transactions, nothing else
/// (looked at after a review asked, 2026-12): a batch is what waits in this channel when
/// the link looks (`take_batch` takes without waiting), so under a backlog of small
/// deliveries a batch holds about 256 frames, not 512, and the backlog is stored in twice
/// as many transactions (an fsync each). Nothing waits for a batch to be full: the link
/// takes the frames in the order read, however many; the delivered receipt leaves once
/// `RECEIPT_PACE_ITEMS` (512) stored deliveries wait or `receipt_pace_ms` has passed,
/// counted across batches; and the relay pauses delivery only at its window of 4,096
/// unreceipted deliveries, far above what this channel and a batch hold. So neither side
/// waits on the other, and no frame is reordered or dropped.
pub const LINK_READER_FRAMES: usize = 256;

/// Bytes (on the wire) of the relay's frames a link's reader holds until the link takes
/// them, beside the batch the link is handling (`LINK_BATCH_BYTES_MAX`). Counted in frames
/// alone, the reader held up to `LINK_READER_FRAMES` frames of up to 256 KiB, 64 MiB, for a
/// relay that pads its frames (a message's size is checked with its signature, once
/// taken). As much as a batch: the reader fills the next while the link handles one, so an
/// honest relay's backlog flows as before (a batch of its largest deliveries is about a
/// hundred of them; of small ones, `RECEIPT_BATCH_MAX` frames are far below this).
pub const LINK_READER_BYTES_MAX: usize = LINK_BATCH_BYTES_MAX;
// The largest frame fits, with room for more.
const _: () = assert!(LINK_READER_BYTES_MAX >= 4 * hotline_proto::limits::FRAME_BYTES_MAX);

/// Bytes of messages, receipts and rosters a link takes from its relay in one batch, past
/// which the rest wait for the next (up to `RECEIPT_BATCH_MAX` frames otherwise): about a
/// hundred of the largest deliveries. Frames of up to 256 KiB, which a relay may pad its
/// frames to (a message's size is checked with its signature, once taken), made a batch of
/// `RECEIPT_BATCH_MAX` frames up to 128 MiB.
pub const LINK_BATCH_BYTES_MAX: usize = 8 * 1024 * 1024;

/// Receipt pacing, the default of the configuration's `receipt_pace_ms`: stored deliveries
/// wait up to this long after the first of them to share one cumulative delivered receipt
/// (or until [`RECEIPT_PACE_ITEMS`] wait); a delivery stored after a quiet spell
/// ([`RECEIPT_QUIET_MS`]) leaves at once (`crate::pacer`). Every receipt costs the relay a
/// verification, rows, packets and a forward to the sender, so under a burst fewer, larger
/// receipts leave it more CPU for the messages themselves. Measured with the benchmark's
/// recipients doing the same at fanout37 500/s: 20 ms cut the relay's CPU per message by a
/// quarter and the end-to-end latency (sender to recipient's disk) from 8 to 4.5 ms at the
/// median, and made "all 37 receipts back" 12 ms later (docs/BENCHMARKS-ROUNDS.md, fifth round).
/// A lone message's receipt leaves as soon as the message is stored (until 2026-11-30 it
/// also waited 20 ms).
/// Losing the wait to a crash loses nothing: the relay redelivers what it has no receipt
/// for, and the node receipts a message it already holds.
pub const RECEIPT_PACE_MS: u64 = 20;

/// Receipt pacing's quiet spell: a delivery stored when nothing was stored on the link for
/// this long (or for the pace, if longer) is receipted at once, so a lone message's sender
/// sees it delivered without waiting for the pace. A second, not the pace itself: traffic
/// comes in bursts with gaps of about a pace (measured, `crate::pacer`), and each burst
/// would cost a receipt more. A second allows at most one more receipt per second per link;
/// in the benchmark's A/B runs the receipt counts stayed those of pacing alone
/// (docs/BENCHMARKS-ROUNDS.md, sixth round).
pub const RECEIPT_QUIET_MS: u64 = 1_000;

/// At shutdown, how long a link waits for the relay to confirm the delivered receipts it
/// has just written before it closes the connection (closing discards what the relay has
/// not read). Within the node's 5 s for stopping.
pub const SHUTDOWN_RECEIPT_WAIT_MS: u64 = 2_000;

/// The longest receipt pace a configuration may set (`receipt_pace_ms`): an hour. A longer
/// pace only delays what a sender sees under traffic.
pub const RECEIPT_PACE_MS_MAX: u64 = 60 * 60 * 1000;

/// Deliveries waiting for a receipt that make it leave at once; well below the relay's
/// delivery window (4,096 unreceipted deliveries per recipient), so pacing never stalls
/// delivery.
pub const RECEIPT_PACE_ITEMS: usize = 512;

/// Quarantined deliveries read at once when the whole quarantine is checked again against a
/// newer roster (and at start), a page at a time, with the store locked only to read a page
/// and to release what in it passed. A delivery is quarantined when its sender's key is not
/// on this node's roster, among other reasons; a newer roster may hold the key. Each check
/// is a signature verification (about 35 µs, so a page is about 9 ms of it, done off the
/// async runtime with the store unlocked); a full quarantine of small forgeries is a hundred
/// thousand of them. Every page is checked, not only the newest: a flood held after a
/// genuine delivery must not hide it (PROTOCOL.md 12.1 item 2).
pub const QUARANTINE_RECHECK_PAGE_ITEMS: usize = 256;

/// How long a node's shutdown waits, once its tasks have stopped, for the checks of the
/// quarantine and of the held receipts against the roster that run off the async runtime
/// (`spawn_blocking`) to stop, so that the store is not in use after the node says it
/// stopped. A quarantine walk stops between pages (about 9 ms of verification each), and
/// a check of the held receipts verifies at most `RECEIPTS_HELD_MAX` (about 36 ms): both
/// end far sooner on any machine that is not starved.
pub const SHUTDOWN_RECHECK_WAIT_MS: u64 = 5_000;

/// The default of the configuration's `quarantine_max_bytes`: the most the quarantine may
/// hold, in envelope bytes (64 MiB: about 800 envelopes of the largest size, tens of
/// thousands of ordinary ones). Only a relay delivering forged or altered bytes, or a roster
/// lagging the relay's, puts anything there; without a limit a hostile relay could fill the
/// node's disk. Past it, a delivery failing its checks is refused: not stored, not
/// receipted, so it stays with the relay (`store::Stored::Refused`).
pub const QUARANTINE_MAX_BYTES: u64 = 64 * 1024 * 1024;

/// Forwarded receipts held because this node's roster lacks their signer or the key that
/// signed them (it may lag the relay's), to be checked again at each newer roster
/// (PROTOCOL.md 7.2, `receipts_held`): at most this many per claimed signer, the oldest
/// dropped first. A relay forwards a recipient's receipt only when it is news (its first
/// delivered receipt and first acknowledgement of a message), and a delivered receipt names
/// up to 512 messages, so 64 cover a recipient's news for far longer than a roster lags; and
/// a participant whose retired key still signs (those never verify) fills only its own share.
pub const RECEIPTS_HELD_PER_SIGNER_MAX: usize = 64;
/// Forwarded receipts held in all, whatever their claimed signers (a relay may forward
/// receipts "from" names no roster lists), the oldest dropped first: at most
/// `RECEIPTS_HELD_MAX` × `RECEIPT_BYTES_MAX` (64 MiB) on disk, and as many signature checks
/// at each newer roster (tens of milliseconds).
pub const RECEIPTS_HELD_MAX: usize = 1_024;
const _: () = assert!(RECEIPTS_HELD_PER_SIGNER_MAX <= RECEIPTS_HELD_MAX);
const _: () = assert!(
    (RECEIPTS_HELD_MAX as u64) * (hotline_proto::limits::RECEIPT_BYTES_MAX as u64)
        <= QUARANTINE_MAX_BYTES
);

/// Quarantined deliveries discarded in one transaction when an officer empties the
/// quarantine (`hotline discard --all`); the store is free for deliveries in between.
pub const QUARANTINE_DISCARD_BATCH: usize = 1_000;

/// Most bytes of an `Idempotency-Key` on a send (`POST /v1/messages`, a reply), without the
/// double quotes of its Structured Field form. Room for a UUID (36), a drill's keys (under
/// 80) and a client's own scheme; a key is a name, not a place to store a request.
pub const IDEMPOTENCY_KEY_BYTES_MAX: usize = 128;
/// How long the node keeps a send's idempotency key (and so answers a repeat of its request
/// with the message it stored): 24 hours. A client retries within seconds or minutes (the
/// CLI within a minute and a half, the drill harness while the drill runs); a day covers a
/// script run again after a night's failure, and a key older than that names a new message.
pub const IDEMPOTENCY_KEY_KEPT_MS: u64 = 24 * 60 * 60 * 1000;
/// Most idempotency keys kept at once, whatever their age; past it the oldest goes first. A
/// node's officers send tens of messages a day, a busy drill some hundreds: 10,000 keys (a
/// few MiB at most) is far above a day of any node's sends with a key, and bounds the table
/// if a client sends many more.
pub const IDEMPOTENCY_KEYS_MAX: u64 = 10_000;

/// How many times the API's client ([`crate::client::ApiClient::post_idempotent`]: `hotline
/// send`, `hotline reply`) asks for a send in all, with one idempotency key, when an answer
/// leaves it unknown whether the node stored the message (no answer within 30 s, a
/// connection refused or dropped, a 5xx other than 507). Three: enough for a node that
/// restarts or a connection that drops once; a node that does not answer three times is
/// not well, and the officer is told to look, at most a minute and a half after asking.
pub const API_SEND_ATTEMPTS: u32 = 3;
/// The pause before the client asks for a send again, doubled for each attempt after.
pub const API_SEND_RETRY_PAUSE_MS: u64 = 1_000;

/// Items returned by one inbox or sent-list API call.
pub const API_LIST_MAX: usize = 1_000;

/// Most bytes of JSON in one page of a list of the local API (`/v1/inbox`, `/v1/messages`,
/// `/v1/quarantine`); the page stops before the item that would pass it, and its `Link:
/// rel="next"` header gives the rest, so nothing is skipped. A page holds at least one item,
/// however large. Counted in items alone, a page of 1,000 messages of 64 KiB was about
/// 64 MiB of JSON, held until its client read it, and each of the `API_CONNECTIONS_MAX`
/// connections could ask for one (16 GiB). 1 MiB: a page of ordinary received messages is
/// not cut (an inbox item is about 400 bytes besides its subject and body, so 1,000 with up
/// to 600 bytes of subject and body each fit); a sent message's item also lists each of its
/// recipients, so a page of messages to a whole roster is cut sooner, which costs a client
/// a request more, nothing else; a page of the largest messages holds about fifteen; and
/// the answers held at once are at most 256 MiB even if every connection's client stopped
/// reading (no more than the links' queues may hold: `RELAYS_MAX` ×
/// `LINK_QUEUE_BYTES_MAX`). Pages are built one at a time (under the API's one read-only
/// store connection, which reads no more rows than the page takes), so only the answers
/// being sent are held beside each other.
pub const API_PAGE_BYTES_MAX: usize = 1024 * 1024;
// A page of the largest messages holds several of them (over 64 KiB of body each, with
// their other fields), so that reading a list of them is not a request per message.
const _: () = assert!(API_PAGE_BYTES_MAX >= 12 * hotline_proto::limits::BODY_BYTES_MAX);
const _: () =
    assert!(API_PAGE_BYTES_MAX * API_CONNECTIONS_MAX <= RELAYS_MAX * LINK_QUEUE_BYTES_MAX);

/// Answers (received messages that reference it) a sent message's view lists, the oldest
/// first; `answers_total` counts them all, each recipient's `answered_at_ms` and `answered`
/// are read from them all, and `GET /v1/inbox?references=ID` lists them all, a page at a
/// time. Listed whole, a message to 37 whose recipients each replied and updated a hundred
/// times had every answer's envelope (up to `ENVELOPE_BYTES_MAX` each) read into memory at
/// once, for every sent message of a page. 64: more than one answer from each participant
/// of a whole roster, some 25 KiB of JSON with ordinary subjects (each answer is its id,
/// sender, kind, subject and time) and at most about 112 KiB.
pub const ANSWERS_LISTED_MAX: usize = 64;
// The answers a view lists, each at its largest (a subject of control characters, each
// escaped in six bytes, and its other fields), fill at most a quarter of a page.
const _: () = assert!(
    ANSWERS_LISTED_MAX * (6 * hotline_proto::limits::SUBJECT_BYTES_MAX + 256)
        <= API_PAGE_BYTES_MAX / 4
);

/// Connections the local API serves at once; more wait in the kernel's listen queue until
/// one closes. Connecting needs no token, and each connection holds a file descriptor: a
/// local client that never closes its connections (a dashboard opening an event stream
/// every minute, a script gone wrong) used up the node's (1,024 under systemd's default),
/// and then the node could not start a paging hook. `hotline watch` holds one while it runs.
pub const API_CONNECTIONS_MAX: usize = 256;

/// How long the local API waits for a request's head: from a connection's start, and on a
/// kept-alive connection from the end of its last answer. Past it the connection is closed.
/// Without it a local client that opened `API_CONNECTIONS_MAX` connections and sent nothing,
/// or half a request, held every place for good, and neither the operator's `hotline`
/// commands nor a hook's script could reach the node. 10 s: a client on the same machine
/// sends its head within milliseconds (a loaded machine within a second or two), and a third
/// of the 30 s the `hotline` commands wait for an answer, so that one queued behind held
/// connections is still answered. Once the head is read it no longer runs: a handler that
/// takes its time, and an event stream (`/v1/events`), are not cut.
pub const API_HEADER_READ_TIMEOUT_MS: u64 = 10_000;

/// How long the local API waits for a request's whole body once its head is read (at most
/// `API_BODY_BYTES_MAX`, milliseconds on loopback); past it the request is answered `408
/// timeout` and its connection closed, so that a body that never comes does not hold a
/// place either.
pub const API_BODY_READ_TIMEOUT_MS: u64 = API_HEADER_READ_TIMEOUT_MS;

/// How long the local API waits for a client to take any more of an answer once the
/// connection's send buffer is full; past it the connection is closed. Without it a client
/// that asked for a long list (up to 1,000 messages of 64 KiB) and never read it held its
/// place for good, as a connection that sent nothing did before `API_HEADER_READ_TIMEOUT_MS`.
/// 30 s: a client reads as fast as the machine lets it, and the kernel's buffers hold
/// megabytes, so an event stream whose reader is paused (`hotline watch | less`) stalls only
/// after a great many events.
pub const API_WRITE_STALL_TIMEOUT_MS: u64 = 30_000;

/// Most bytes of a request's head (its request line and headers) the local API reads; a
/// head not ended by then is answered `431` and its connection closed, before its token is
/// looked at. hyper's own bound (about 400 KiB) let each of the `API_CONNECTIONS_MAX`
/// connections hold that much of a head that never ended, 100 MiB for a local client that
/// needs no token to connect. The largest head a client has reason to send is a fraction of
/// this: a request line of under 200 bytes (a path with a digest, a list's `?limit=`,
/// `?before=` and `?unacknowledged=`), `Authorization: Bearer` and a token of at most
/// `TOKEN_FILE_BYTES_MAX` (4 KiB; a token the node made is 64 hex digits), and an HTTP
/// library's few other headers (`Host`, `User-Agent`, `Accept`, `Content-Type`,
/// `Content-Length`: a few hundred bytes). 8 KiB is the least hyper takes as its bound.
pub const API_HEAD_BYTES_MAX: usize = 8 * 1024;
// hyper refuses (panics on) a bound below its first read, 8 KiB.
const _: () = assert!(API_HEAD_BYTES_MAX >= 8 * 1024);
// The largest token, with room for the request line and the other headers.
const _: () =
    assert!(API_HEAD_BYTES_MAX >= hotline_config::limits::TOKEN_FILE_BYTES_MAX + 2 * 1024);

/// Largest API request body.
pub const API_BODY_BYTES_MAX: usize = hotline_proto::limits::BODY_BYTES_MAX + 16 * 1024;

/// Most bytes of a refused request's reason (and of a path no route names) that one log line
/// carries. A reason can quote the request (serde names the wrong value it found,
/// `invalid type: string "…"`), and a body may be long or sensitive: the log gets its gist,
/// the caller the whole answer.
pub const API_LOG_REASON_BYTES_MAX: usize = 200;

/// Events buffered for each `/v1/events` subscriber before a slow one misses some.
pub const EVENTS_BUFFER: usize = 1_024;

/// How long after its API starts listening a node gives each new `/v1/events` subscriber
/// the events it emitted at start-up, before the API listened (its `recovered`
/// announcements): time for `hotline watch`, which ends when the node stops, to be started
/// again by an officer or a supervisor once the node is back.
pub const STARTUP_EVENTS_KEPT_MS: u64 = 60_000;

/// How often the node's event stream (`/v1/events`) sends a comment line to keep it alive.
pub const EVENTS_KEEPALIVE_MS: u64 = 15_000;

/// A client of `/v1/events` that has read nothing, not even a keep-alive, for this long
/// takes the node for gone (its process frozen, its machine hung): four keep-alives missed.
/// Without it, `hotline watch` waited in silence for good, which an officer takes for a
/// quiet night.
pub const EVENTS_SILENCE_MAX_MS: u64 = 4 * EVENTS_KEEPALIVE_MS;

const _: () = assert!(EVENTS_SILENCE_MAX_MS >= 2 * EVENTS_KEEPALIVE_MS);

/// Length of a generated API token, in random bytes (hex-encoded in the file).
pub const API_TOKEN_BYTES: usize = 32;
