//! The relay's limits and their defaults. Every one is overridable in `[limits]` of the
//! relay configuration; these are the values used when it is silent.

use hotline_proto::limits as proto;

/// Connections served at once; one more is refused with `Busy`. CICA has 38 participants;
/// the headroom covers reconnect storms, benchmarks and several nodes per participant.
pub const CONNECTIONS_MAX: usize = 16_384;

/// Largest `connections_max` a configuration may set: 64 times the default (the idle
/// benchmark holds about 10,000 connections on two cores). The connection semaphore cannot
/// hold more than `tokio::sync::Semaphore::MAX_PERMITS`; beyond it the accept loop panicked
/// and the relay stayed up serving nothing.
pub const CONNECTIONS_MAX_CEILING: usize = 1_048_576;

/// Largest signed bytes of a message accepted from a node (at most the protocol maximum).
/// Frames are read up to the protocol maximum whatever the configuration says.
pub const FRAME_BYTES_MAX: usize = proto::FRAME_BYTES_MAX;

/// Smallest `frame_bytes_max` a configuration may set. Below the smallest signed message
/// (about 90 bytes) a relay refuses every message as `TooLarge`; 1 KiB holds every message
/// without a body to a group, all members or everyone, however long its subject, category
/// and references (820 bytes at most; a test in `config` checks both).
pub const FRAME_BYTES_FLOOR: usize = 1024;

/// Largest message body accepted (at most the protocol maximum).
pub const BODY_BYTES_MAX: usize = proto::BODY_BYTES_MAX;

/// Messages queued for one recipient before new ones for it are refused with `QueueFull`.
pub const QUEUE_DEPTH_MAX: u64 = 1_000_000;

/// Sustained submissions per second allowed from one participant. Past it (and its burst)
/// a submission is refused `RateLimited`, which a node retries on its own after a pause, so
/// nothing is lost: it only bounds a runaway or hostile node, whose messages would reach
/// every member's inbox (a 37-way message costs the relay 37 deliveries; the relay's own
/// maximum is about 9,000 such messages a second on the benchmark machine). People type a
/// hotline's messages; an outbox flushed after an outage is within the burst.
pub const RATE_PER_SEC: u32 = 100;

/// Burst of submissions allowed above the sustained rate.
pub const RATE_BURST: u32 = 10_000;

/// Sustained signed bytes of submissions per second allowed from one participant: 1 MiB.
/// Past it (and its burst) a submission is refused `RateLimited`, as past [`RATE_PER_SEC`],
/// and retried by its node. The count budget alone let one member write 100 of the largest
/// messages (80 KiB) a second, 8 MB/s or about 700 GB a day, until the relay's disk was
/// full and every participant was refused `StorageUnavailable` (100 GB free lasted about
/// 3.5 hours). At 1 MiB/s the same member writes at most 84 GiB a day (100 GB lasts a day),
/// and the metric and the log name it within seconds. Honest traffic never meets it: 1 MiB/s
/// is [`RATE_PER_SEC`] messages of 10 KiB each, more than twice the 4.6 kB a relay stores
/// per message, receipts and journal included, in the soak of docs/OPERATIONS.md 3.7;
/// below that average size the count budget binds first.
pub const BYTE_RATE_PER_SEC: u64 = 1024 * 1024;

/// Burst of signed bytes of submissions allowed above the sustained byte rate: 64 MiB, the
/// [`RATE_BURST`] of 10,000 messages at about 6.5 KiB each, so that an outbox a node flushes
/// after an outage (thousands of messages of a few KiB), every member answering a FLASH
/// alert at once (tens of messages) and the alert itself (one message, however many
/// recipients) pass at once. Past it a flood is held to [`BYTE_RATE_PER_SEC`].
pub const BYTE_RATE_BURST: u64 = 64 * 1024 * 1024;

/// Smallest `byte_rate_burst` a configuration may set: the largest signed message. A
/// message is charged whole, so with a smaller burst the largest messages would be refused
/// `RateLimited`, which a node retries, for ever.
pub const BYTE_RATE_BURST_MIN: u64 = proto::ENVELOPE_BYTES_MAX as u64;

/// Sustained receipts per second read from one participant. Past it (and its burst) the
/// relay does not refuse anything: it stops reading that participant's connection until
/// the bucket has refilled, so QUIC flow control slows the node down. A node paces its
/// delivered receipts (20 ms per relay link) and acknowledgements are typed by people, so
/// this only bounds a runaway or hostile node: each receipt costs a signature check and a
/// commit slot shared with everyone. The benchmark's recipients with pacing off sent 110
/// receipts a second each at fanout37 500/s (docs/BENCHMARKS-ROUNDS.md, sixth round).
pub const RECEIPT_RATE_PER_SEC: u32 = 1_000;

/// Burst of receipts read above the sustained rate.
pub const RECEIPT_RATE_BURST: u32 = 10_000;

/// Sustained receipt items per second read from one participant, enforced as
/// [`RECEIPT_RATE_PER_SEC`] is (reading pauses; nothing is refused). A receipt may name up to
/// 512 messages, and the store writer, which every participant shares, looks each one up
/// (from memory for recent messages, otherwise a read of the store, as for an item naming
/// a message that never existed); the receipt budget alone counted such a receipt as one,
/// so one member could have the writer look up 512,000 items a second. Honest nodes name
/// each message they are delivered once: CICA's traffic is far below this, and a backlog
/// after an outage passes within [`RECEIPT_ITEM_RATE_BURST`] and then at this rate, above
/// the rate at which the relay delivers to one node on the benchmark machine at 37-way
/// fan-out (docs/BENCHMARKS.md; the benchmark lifts it, as it does the submission budgets).
pub const RECEIPT_ITEM_RATE_PER_SEC: u32 = 10_000;

/// Burst of receipt items read above the sustained item rate: a node's backlog of 100,000
/// messages is receipted without a pause.
pub const RECEIPT_ITEM_RATE_BURST: u32 = 100_000;

/// Smallest `receipt_item_rate_per_sec` a configuration may set: the most items one receipt
/// may name. A receipt is charged whole as it is read, so reading pauses for at most a
/// second after any one receipt, well within the time a node's write may make no progress
/// before it gives up on the link (10 s).
pub const RECEIPT_ITEM_RATE_MIN: u32 = proto::RECEIPT_ITEMS_MAX as u32;

/// Receipts waiting to be forwarded to one sender past which a receipt naming only
/// messages this relay does not hold is no longer forwarded to it. The relay cannot check
/// such a receipt (the message was accepted by another relay, or never existed), so a
/// participant could otherwise queue them for another without end, within its receipt
/// rate. Receipts naming messages held here are kept only when they tell something new,
/// so they need no such limit: at most two per message and recipient. A node sends its
/// acknowledgements through every relay, so the sender still gets one through a relay
/// that holds the message.
pub const FORWARD_FOREIGN_MAX: u64 = 10_000;

/// Receipts kept a UTC day for one signer (the receipt's `recipient`) only because they name
/// messages this relay does not hold. Past it such a receipt from that signer is dropped:
/// answered as stored (so never sent again), neither kept nor forwarded; the budget starts
/// again at the next UTC day. [`FORWARD_FOREIGN_MAX`]
/// does not bound the disk: a sender's node confirms a forwarded receipt at once, so a
/// member signing receipts for made-up messages of a cooperating sender kept the queue
/// short and the relay kept every one, at up to [`RECEIPT_RATE_PER_SEC`] (tens of GB a
/// day). Honest foreign receipts are human-paced: a node with two relays sends each
/// acknowledgement through both, and a relay that was down may not yet hold the message.
/// Receipts naming a message held here are unaffected: they are kept only when they tell
/// something new.
pub const FOREIGN_RECEIPTS_PER_DAY_MAX: u64 = 10_000;

/// Largest `foreign_receipts_per_day_max` a configuration may set: 100 times the default,
/// about 12 a second all day. Above it the budget no longer bounds what a member can make
/// the relay keep to anything an operator would accept (a million receipts of up to 64 KiB
/// each is 64 GB a day), so a larger value is a mistake, refused when the file is read.
pub const FOREIGN_RECEIPTS_PER_DAY_CEILING: u64 = 1_000_000;

/// Sessions one participant may start at once (`crate::logins`): past them, and the refill,
/// a login is refused `LimitExceeded`. A session costs a read of the store and a first page
/// of the participant's backlog (up to [`FETCH_PAGE_BYTES`]), so a node with a valid key
/// logging in again in a loop cost the relay that much at every handshake. An honest node
/// starts one after its own or the relay's restart or a link lost; 30 take a morning of
/// restarts, flaps and the end-to-end tests that restart nodes and reconnect clients many
/// times (one connects a participant 21 times in a few seconds).
pub const SESSION_BURST: u32 = 30;

/// Largest `session_burst` a configuration may set: past it the budget bounds nothing.
pub const SESSION_BURST_CEILING: u32 = 100_000;

/// One more session every this long, once the burst is spent. A reference node waits as
/// long as the refusal says (`retry in S.T s`, at most a refill; the node cuts it to 5 min)
/// after a `LimitExceeded`, so that it is let in at its next attempt; and it starts sessions
/// no faster than one about every 10 s for long (a link lost within 10 s of being made is remade after a pause doubling up
/// to 10 s). A looping node then costs the relay a page of backlog every 5 s, not one per
/// handshake.
pub const SESSION_REFILL_MS: u64 = 5_000;

/// Longest `session_refill_ms` a configuration may set: an hour. Longer would lock a
/// participant that spent its burst out for most of a day.
pub const SESSION_REFILL_CEILING_MS: u64 = 3_600_000;

/// Time a new connection has to present a valid `Hello`.
pub const HANDSHAKE_TIMEOUT_MS: u64 = 5_000;

/// Connections admitted and not yet authenticated, in all, before new ones are refused
/// (`crate::admission`); from half of it on, a connection from an unproven address is
/// asked to prove it first (QUIC Retry). A node's handshake and authentication take a few
/// round trips, so CICA's nodes reconnecting at once after a relay restart hold a few dozen.
pub const HANDSHAKES_MAX: usize = 1_024;

/// Connections not yet authenticated from one address (an IPv6 /64) before new ones from
/// it are refused. Above the 38 CICA nodes, so that a whole network on one machine (the
/// exercise harness) reconnects at once.
pub const HANDSHAKES_PER_IP_MAX: usize = 64;

/// Longest idle timeout a configuration may set: 10 minutes. A link dead for that long
/// still holds its connection slot, and its node is shown connected; QUIC itself refuses
/// timeouts above 2^62 ms, which would pass a check and fail the relay's start.
pub const IDLE_TIMEOUT_MAX_MS: u64 = 600_000;

/// Submissions and receipts from one connection awaiting commit before the relay stops
/// reading from it (backpressure through QUIC flow control).
pub const INFLIGHT_PER_CONNECTION: usize = 2_048;

/// Frames a session reads from its node, at most, while it waits on a write to that node
/// (`session::Input`): a reference node's page of outbox messages (256), written as the
/// relay sends it its backlog after an outage, so that neither side's write waits on the
/// other's for good.
pub const READ_AHEAD_FRAMES: usize = 256;

/// Bytes of frames a session reads ahead, at most: [`READ_AHEAD_FRAMES`] of the largest
/// messages (20 MiB), and a little more. Held only while the session's write waits on a
/// node that writes on (a session can already hold more: `inflight_per_connection`
/// submissions handed to the store writer).
pub const READ_AHEAD_BYTES: usize = 24 * 1024 * 1024;

/// Largest `inflight_per_connection` a configuration may set: 32 times the default. Each
/// session's answer channel is that deep, and a channel deeper than tokio allows panics the
/// session; past this, one connection's backlog would only add latency, not throughput.
pub const INFLIGHT_PER_CONNECTION_CEILING: usize = 65_536;

/// Deliveries sent to one node and not yet receipted before the relay pauses delivery.
pub const DELIVERY_WINDOW: usize = 4_096;

/// Receipts forwarded to one node and not yet confirmed by it (`ReceiptsStored`) before the
/// relay pauses forwarding on that connection, as [`DELIVERY_WINDOW`] does delivery. Without
/// it a session wrote a sender's whole forward queue before reading again, and a node
/// confirming a backlog of more than about 170,000 receipts (fewer while it also wrote its
/// outbox) filled what the relay reads ahead and its stream window: each side's write then
/// waited on the other's until the link was closed as a slow consumer, with nothing
/// confirmed, at every connection. The confirmations of a full window (4,096 digests, about
/// 130 KiB) fit in a stream window (1.25 MB) whatever else the node writes; a node confirms
/// each batch it stores at once, so the window never holds up honest traffic.
pub const FORWARD_WINDOW: u64 = 4_096;

/// A write to a node that makes no progress (the node reads none of it) for this long closes
/// it as a slow consumer; one the node reads steadily, however slowly, is not timed out.
pub const WRITE_TIMEOUT_MS: u64 = 10_000;

/// Most submissions and receipts grouped in one transaction.
pub const COMMIT_BATCH_MAX: usize = 1_024;

/// Commands waiting for the store writer before sessions wait (bounded channel).
pub const WRITER_QUEUE_DEPTH: usize = 8_192;

/// Largest `commit_batch_max` a configuration may set: a batch is drained from the writer's
/// queue, so one larger than the queue could never fill, and the writer allocates room for
/// a whole batch up front.
pub const COMMIT_BATCH_CEILING: usize = WRITER_QUEUE_DEPTH;

/// Rows fetched from a queue per read.
pub const FETCH_PAGE_ROWS: usize = 512;

/// Bytes of messages (or receipts) fetched from a queue per read, at most, past the row
/// that reaches it: a page of 512 of the largest messages is about 34 MB, held twice (rows
/// and frames) by each session reading its backlog, and after an outage every node
/// reconnects with one. Pages of small messages are bounded by rows first.
pub const FETCH_PAGE_BYTES: usize = 4 * 1024 * 1024;

/// Committed items (per kind) held in a connected session's mailbox for it to write
/// without reading them back; beyond this the session reads its queue from the store. The
/// frames are shared between recipients, so this costs a message's size once, not per
/// recipient.
pub const MAILBOX_ITEMS: usize = DELIVERY_WINDOW;

/// Bytes of frames a mailbox lane holds at most (frames may be up to the frame limit, so
/// items alone would allow a gigabyte per session).
pub const MAILBOX_BYTES: usize = 8 * 1024 * 1024;

/// Longest receipts wait for more commands before they are committed; a submission commits
/// at once, in a commit of its own (`store::plan`). The sender's "all receipts back"
/// latency pays this at most once; in exchange receipts are committed in groups.
pub const RECEIPT_COMMIT_DELAY_MS: u64 = 2;

/// Most frames from one connection handled together (the signatures of the messages among
/// them verified as one batch).
pub const VERIFY_BATCH_MAX: usize = 64;

/// How long the receipt verifier lets a small batch gather before checking it: the
/// receipts of a fan-out's recipients come due close together, and checked as they trickled
/// in (a mean of 3.1 signatures a batch, half of them alone, at fanout37 500/s) each small
/// batch went to the store writer on its own. Gathered, the writer's wait and the
/// end-to-end p99 at 500/s fell (docs/BENCHMARKS-ROUNDS.md, thirty-second round); the
/// sender's "all receipts back" pays about 2 ms more (the runtime's timer rounds this up to
/// its millisecond tick).
pub const RECEIPT_VERIFY_GATHER: std::time::Duration = std::time::Duration::from_millis(1);

/// A receipt batch at least this large is checked at once, without gathering: under load
/// the batches are large already (not measured at other thresholds).
pub const RECEIPT_VERIFY_GATHER_BELOW: usize = 32;

/// Most receipts, from all sessions, whose signatures the verifier checks as one batch
/// (`crate::verifier`): enough for a fan-out to the whole CICA roster and more.
pub const RECEIPT_VERIFY_BATCH_MAX: usize = 256;

/// Recently accepted messages whose sender, digest and recipients the store writer keeps in
/// memory to check their receipts without reading them back (a few hundred bytes each).
pub const HELD_CACHE_MESSAGES: usize = 32_768;

/// How long shutdown waits for sessions and the writer to finish.
pub const SHUTDOWN_GRACE_MS: u64 = 3_000;

/// At a shutdown, how long a session waits for the answers still owed to its node: those of
/// the submissions and receipts it handed to the store writer and the receipt verifier
/// before the shutdown, which they still commit and answer. An answer not written by then
/// is learnt by the node when it offers the message (or receipt) again.
pub const SHUTDOWN_ANSWERS_MS: u64 = 1_000;

/// At a shutdown, how long a session waits, once it has written its answers and
/// `GoingAway`, for its node to close the connection, which a node does once it has read
/// them. Closing first would discard what the node has not yet read.
pub const SHUTDOWN_GOODBYE_MS: u64 = 1_000;

/// A group commit, or a sync of the store's write-ahead log, still running after this long
/// means the disk is not answering: `/health` answers `store_stalled` (503) and the log warns
/// (`crate::diskwatch`). A healthy commit takes milliseconds; a loaded or degraded disk can
/// take a second or two, which is not yet a stall.
pub const STORE_STALL_MS: u64 = 10_000;

/// While the store stays stalled, the log's warning is repeated this often.
pub const STORE_STALL_REPEAT_MS: u64 = 60_000;

/// After a commit fails (a full disk, a file system remounted read-only), and while nothing
/// else is committed, the store writer tries a small write of its own this often, so that
/// `/health` turns from `store_failing` to `ok` once the store takes writes again, traffic
/// or not (`Writer::probe`). One failing write a second costs nothing worth counting.
pub const STORE_PROBE_MS: u64 = 1_000;

/// After the store writer failed to read the queues of participants a reloaded roster lists
/// as active again (a store read error), it reads them again this often while it is idle
/// (`Writer::follow_again`), not only at its next batch: a node of such a participant that
/// logged in meanwhile is delivered nothing of what waited until they are read, and an idle
/// relay would make no batch. One failing read a second costs nothing worth counting.
pub const ROSTER_FOLLOW_RETRY_MS: u64 = 1_000;

/// While those reads keep failing, the error is logged again at most this often, with how
/// many reads failed since (`Writer::follow_again`): one error line a second, for as long
/// as a damaged store lasts, would drown the rest of the log.
pub const ROSTER_FOLLOW_FAILED_REPEAT_MS: u64 = 60_000;

/// How long a roster reload waits for the store writer to keep the new roster (one small
/// commit after the batch in hand; `RelayHandle::reload_roster`). The roster is in force
/// already; past this the reload logs that it is not kept, rather than hold up the signal
/// loop (and so a SIGTERM) behind a stalled disk.
pub const ROSTER_KEEP_TIMEOUT_MS: u64 = 10_000;

const _: () = assert!(SHUTDOWN_ANSWERS_MS + SHUTDOWN_GOODBYE_MS < SHUTDOWN_GRACE_MS);

const _: () = assert!(FRAME_BYTES_MAX <= proto::FRAME_BYTES_MAX);
const _: () = assert!(FRAME_BYTES_FLOOR <= FRAME_BYTES_MAX);
const _: () = assert!(BODY_BYTES_MAX <= proto::BODY_BYTES_MAX);
const _: () = assert!(FETCH_PAGE_ROWS <= DELIVERY_WINDOW);
const _: () = assert!(FETCH_PAGE_ROWS as u64 <= FORWARD_WINDOW);
const _: () = assert!(COMMIT_BATCH_MAX <= WRITER_QUEUE_DEPTH);
const _: () = assert!(hotline_net::transport::IDLE_TIMEOUT_MS <= IDLE_TIMEOUT_MAX_MS);
const _: () = assert!(CONNECTIONS_MAX <= CONNECTIONS_MAX_CEILING);
const _: () = assert!(CONNECTIONS_MAX_CEILING <= tokio::sync::Semaphore::MAX_PERMITS);
const _: () = assert!(INFLIGHT_PER_CONNECTION <= INFLIGHT_PER_CONNECTION_CEILING);
const _: () = assert!(INFLIGHT_PER_CONNECTION_CEILING <= tokio::sync::Semaphore::MAX_PERMITS);
const _: () = assert!(COMMIT_BATCH_MAX <= COMMIT_BATCH_CEILING);
const _: () = assert!(FOREIGN_RECEIPTS_PER_DAY_MAX <= FOREIGN_RECEIPTS_PER_DAY_CEILING);
const _: () = assert!(SESSION_BURST <= SESSION_BURST_CEILING);
const _: () = assert!(SESSION_REFILL_MS <= SESSION_REFILL_CEILING_MS);
const _: () = assert!(BYTE_RATE_BURST >= BYTE_RATE_BURST_MIN);
const _: () = assert!(RECEIPT_ITEM_RATE_PER_SEC >= RECEIPT_ITEM_RATE_MIN);
const _: () = assert!(READ_AHEAD_BYTES >= READ_AHEAD_FRAMES * proto::ENVELOPE_BYTES_MAX);
