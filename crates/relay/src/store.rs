//! The relay's durable state: messages, per-recipient queues, receipts and the audit
//! journal, in one SQLite database (`relay.db`).
//!
//! One writer thread owns the write connection and groups commands into transactions (group
//! commit): it drains up to `commit_batch_max` commands, applies them in one transaction,
//! posts the batch to the recipients' sessions, commits, and hands the commit's answers to
//! the write-ahead log's sync thread ([`crate::walsync`]; the connection at
//! `synchronous=NORMAL`), which answers them once an `fdatasync` covers the commit, while
//! the writer goes on to its next batch. Nothing is answered *accepted* before its commit is
//! on disk; if the commit fails every command in the batch is answered
//! `StorageUnavailable`, and if the sync fails so is everything it was to cover, and the
//! relay stops. (Where the sync thread cannot start, and on a simulation's runtime, the
//! connection stays at `synchronous=FULL` and the writer answers after each commit.)
//! Sessions read queues through a small pool of read connections (WAL: readers never block
//! the writer).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::{params, Connection, OptionalExtension, Transaction};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use hotline_proto::frame::{Accepted, RejectCode, Rejected, RelayToNode, Subject};
use hotline_proto::routing::{self, Policy};
use hotline_proto::{
    Digest, Envelope, MessageId, ParticipantId, PublicKey, Receipt, ReceiptKind, Roster, Signature,
    Signed, Verified,
};
use hotline_store::{Journal, StoreError};

use crate::checkpoint::Checkpointer;
use crate::hub::{Hub, Kind, Posted};
use crate::metrics::Metrics;
use crate::queue::QueueIndex;
use crate::walsync::WalSync;
use hotline_net::Throttle;

/// File name of the relay database inside the data directory.
pub const DB_FILE: &str = "relay.db";

/// How far below the highest accepted sequence number a sender may still fill a gap (a
/// message refused for a retryable reason and resent while later ones were accepted).
/// Reusing an accepted number, or going further back, is refused as a replay.
pub const SEQ_REORDER_WINDOW: u64 = 4_096;

/// Read connections shared by the sessions.
const READERS: usize = 4;

/// The schema version this code writes (`PRAGMA user_version`). Older stores are migrated
/// at open: version 0 (one queue row per recipient with its own position and two indexes),
/// version 1 (receipts unique by digest alone) and version 2 (a queue row per undelivered
/// message and recipient). Version 4 is version 3 with `acks` kept by every writer: a
/// version 3 relay from before `acks` could open a store that has it and store
/// acknowledgements without recording them, so each would count as news once more; from
/// version 4 such a relay refuses the store, and the move from 3 fills `acks` again.
/// Version 5 adds `roster`, the newest roster the relay has run with ([`kept_roster`]): a
/// version 4 relay would run on any roster without keeping it, so that a later relay would
/// take an older roster file for good; from version 5 such a relay refuses the store. A
/// store from before 5 keeps no roster: the relay keeps its file's at the first start.
pub const SCHEMA_VERSION: i64 = 5;

/// The schema. A message and a receipt are stored once, numbered by `rseq` (AUTOINCREMENT:
/// a committed position is never reused, so committed positions only grow; a failed
/// commit's positions are handed out again, see `Writer::recall`).
///
/// There is no row per queued (message, recipient): what a recipient is owed is the
/// messages that list it (`messages.recipients`) after its **cursor** (`cursors`: every
/// message addressed to it at or below that position is receipted), less the positions it
/// receipted **ahead** of the cursor, out of order (`ahead`, normally empty). The writer keeps
/// those queues in memory ([`QueueIndex`]), rebuilt at open by reading the messages after
/// the lowest cursor ([`load_queues`]). So accepting a 37-way message writes no queue rows,
/// and a cumulative receipt that names a recipient's next messages in order moves its cursor
/// with one row write, where schema 2 inserted and then deleted 37 queue rows per message
/// (docs/BENCHMARKS-ROUNDS.md, seventh round). A recipient gets a cursor row with the first message
/// addressed to it, just below that message, so the messages before it are never read for it.
///
/// Receipts are unique by (signing time, digest) rather than by digest alone: the digest
/// decides the bytes and so the signing time, so the two keys refuse the same duplicates,
/// but a digest is random and a signing time is not. Keyed by digest, every receipt landed
/// on a random page of an index that only grows (receipts are kept for good), and each
/// commit wrote one such page per receipt to the WAL; keyed by time first, a commit's
/// receipts land on the same one or two pages at the index's end (at fanout37 500/s, ~13
/// receipts a commit: the writer's writes fell from about 210 to 120 KB per commit,
/// docs/BENCHMARKS-ROUNDS.md, fifth round). The receipt queue (`rqueue`, receipts to forward
/// to their senders, removed when a sender says it holds them by digest) carries each
/// receipt's digest, so that removal needs no index on `receipts.digest`; it holds only
/// what is not yet forwarded, so its digest index stays small.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS messages (
    rseq INTEGER PRIMARY KEY AUTOINCREMENT,
    id BLOB NOT NULL UNIQUE,
    sender TEXT NOT NULL,
    seq INTEGER NOT NULL,
    digest BLOB NOT NULL,
    bytes BLOB NOT NULL,
    key BLOB NOT NULL,
    sig BLOB NOT NULL,
    accepted_at_ms INTEGER NOT NULL,
    recipients TEXT NOT NULL,
    UNIQUE (sender, seq)
);
-- A floor under each sender's highest accepted sequence number, which is otherwise its
-- messages' highest seq (SENDER_LAST_SEQ).
CREATE TABLE IF NOT EXISTS senders (
    participant TEXT PRIMARY KEY,
    last_seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS receipts (
    rseq INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at_ms INTEGER NOT NULL,
    digest BLOB NOT NULL,
    recipient TEXT NOT NULL,
    is_ack INTEGER NOT NULL,
    bytes BLOB NOT NULL,
    key BLOB NOT NULL,
    sig BLOB NOT NULL,
    stored_at_ms INTEGER NOT NULL,
    UNIQUE (created_at_ms, digest)
);
CREATE TABLE IF NOT EXISTS rqueue (
    recipient TEXT NOT NULL,
    rseq INTEGER NOT NULL,
    digest BLOB NOT NULL,
    PRIMARY KEY (recipient, rseq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS rqueue_by_digest ON rqueue (recipient, digest);
CREATE TABLE IF NOT EXISTS cursors (
    recipient TEXT PRIMARY KEY,
    rseq INTEGER NOT NULL
) WITHOUT ROWID;
-- Who acknowledged which message (by its position) through this relay: an acknowledgement
-- is kept and forwarded only if it is the first from that recipient for one of the messages
-- it names (PROTOCOL.md 7.5). Filled from the stored acknowledgements when a store from a
-- relay before it is opened (`fill_acks`).
CREATE TABLE IF NOT EXISTS acks (
    recipient TEXT NOT NULL,
    rseq INTEGER NOT NULL,
    PRIMARY KEY (recipient, rseq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS ahead (
    recipient TEXT NOT NULL,
    rseq INTEGER NOT NULL,
    PRIMARY KEY (recipient, rseq)
) WITHOUT ROWID;
-- The newest roster this relay has run with (one row): its file's at a start, or a reload's,
-- signed, so that it refuses to start on an older roster of the same key, which would undo a
-- revocation (`kept_roster`, `keep_roster`). Replaced only by a newer one, or by one of
-- another roster key once the relay pins that key (OPERATIONS.md 4.7).
CREATE TABLE IF NOT EXISTS roster (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    bytes BLOB NOT NULL,
    key BLOB NOT NULL,
    sig BLOB NOT NULL
);
-- Who received and acknowledged what is in the receipts (kept, signed, for good); the
-- sender's node keeps the delivery matrix. Schema 0 kept a copy here (table matrix), which
-- cost a row write per delivery and was never read; migration drops it.
";

/// A sender's highest accepted sequence number (`?1`: the sender): the replay floor, and
/// `Welcome.last_seq`. Messages are kept for good, so the highest `seq` of its messages is
/// the answer, found in the `(sender, seq)` index. The `senders` table is a floor under it:
/// relays before the thirteenth round of benchmarks wrote it in every commit holding a
/// submission (one page of a message's eight or nine, docs/BENCHMARKS-ROUNDS.md, thirteenth
/// round), and anything that ever deletes messages must write there the highest number it
/// deletes.
const SENDER_LAST_SEQ: &str = "SELECT MAX(v) FROM (
    SELECT last_seq AS v FROM senders WHERE participant = ?1
    UNION ALL SELECT MAX(seq) FROM messages WHERE sender = ?1)";

/// Every sender's highest accepted sequence number, as [`SENDER_LAST_SEQ`], for the writer at
/// open (one pass over the `(sender, seq)` index).
const SENDERS_LAST_SEQ: &str = "SELECT participant, MAX(v) FROM (
    SELECT participant, last_seq AS v FROM senders
    UNION ALL SELECT sender, MAX(seq) FROM messages GROUP BY sender)
    GROUP BY participant";

/// Version 0 to 2, first step: the old tables step aside for the new ones.
const MIGRATE_0_RENAME: &str = "
ALTER TABLE messages RENAME TO messages_v0;
ALTER TABLE queue RENAME TO queue_v0;
ALTER TABLE receipts RENAME TO receipts_v0;
ALTER TABLE rqueue RENAME TO rqueue_v0;
DROP INDEX IF EXISTS queue_by_recipient;
DROP INDEX IF EXISTS rqueue_by_recipient;
";
/// The queue table of schemas 1 and 2: one row per undelivered (message, recipient).
const QUEUE_V2: &str = "
CREATE TABLE IF NOT EXISTS queue (
    rseq INTEGER NOT NULL,
    recipient TEXT NOT NULL,
    PRIMARY KEY (rseq, recipient)
) WITHOUT ROWID;
";

/// Version 0 to 2: the same messages, renumbered; queue order is kept (old positions grew
/// with acceptance order, as `rseq` does).
const MIGRATE_0_MESSAGES: &str = "
INSERT INTO messages (id, sender, seq, digest, bytes, key, sig, accepted_at_ms, recipients)
    SELECT id, sender, seq, digest, bytes, key, sig, accepted_at_ms, recipients
    FROM messages_v0 ORDER BY rowid;
INSERT INTO queue (recipient, rseq)
    SELECT q.recipient, m.rseq FROM queue_v0 q JOIN messages m ON m.id = q.msg_id;
";
/// Version 0 to 2, after the receipts ([`copy_receipts`]): the receipt queue, in order.
const MIGRATE_0_RQUEUE: &str = "
INSERT INTO rqueue (recipient, rseq, digest)
    SELECT q.recipient, r.rseq, r.digest FROM rqueue_v0 q JOIN receipts r ON r.digest = q.digest;
DROP TABLE messages_v0;
DROP TABLE queue_v0;
DROP TABLE receipts_v0;
DROP TABLE rqueue_v0;
DROP TABLE IF EXISTS matrix;
";
/// Version 1 to 2, after the receipts ([`copy_receipts`]): the receipt queue with digests.
const MIGRATE_1_RQUEUE: &str = "
INSERT INTO rqueue (recipient, rseq, digest)
    SELECT q.recipient, q.rseq, r.digest FROM rqueue_v1 q JOIN receipts r ON r.rseq = q.rseq;
DROP TABLE receipts_v1;
DROP TABLE rqueue_v1;
";

/// Refuses a store written by a newer relay, whose schema (`PRAGMA user_version`) is above
/// [`SCHEMA_VERSION`], as [`StoreError::NewerSchema`] (not `Corrupt`: the store is good, for
/// the relay that wrote it): this relay cannot open it, so `hotline restore` must not put it
/// in place of a store it can. It only reads. `path` names it in the error.
pub fn check_schema_version(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::NewerSchema {
            path: path.to_owned(),
            found: version,
            supported: SCHEMA_VERSION,
            what: "relay",
        });
    }
    Ok(())
}

/// Brings the schema to [`SCHEMA_VERSION`] in one transaction.
fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    check_schema_version(conn, path)?;
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let tx = conn.transaction()?;
    let has = |table: &str, column: &str| -> rusqlite::Result<bool> {
        tx.prepare("SELECT 1 FROM pragma_table_info(?1) WHERE name = ?2")?
            .exists([table, column])
    };
    if version == 0 && has("queue", "qid")? {
        tracing::info!(db = %path.display(), "migrating the relay store from schema version 0 to {SCHEMA_VERSION}");
        tx.execute_batch(MIGRATE_0_RENAME)?;
        tx.execute_batch(SCHEMA)?;
        tx.execute_batch(QUEUE_V2)?;
        tx.execute_batch(MIGRATE_0_MESSAGES)?;
        copy_receipts(&tx, path, "receipts_v0")?;
        tx.execute_batch(MIGRATE_0_RQUEUE)?;
    } else if has("receipts", "rseq")? && !has("receipts", "created_at_ms")? {
        tracing::info!(db = %path.display(), "migrating the relay store from schema version 1 to {SCHEMA_VERSION}");
        tx.execute_batch(
            "ALTER TABLE receipts RENAME TO receipts_v1; ALTER TABLE rqueue RENAME TO rqueue_v1;",
        )?;
        tx.execute_batch(SCHEMA)?;
        copy_receipts(&tx, path, "receipts_v1")?;
        tx.execute_batch(MIGRATE_1_RQUEUE)?;
    } else {
        tx.execute_batch(SCHEMA)?;
    }
    let queue_rows = table_exists(&tx, "queue")?;
    if queue_rows {
        tracing::info!(db = %path.display(), "migrating the relay's queues to per-recipient cursors (schema 3)");
        queue_rows_to_cursors(&tx, path)?;
    }
    if version < 4 {
        fill_acks(&tx, path)?;
    }
    // Before 5 no roster was kept (`roster`, created above, stays empty): the relay keeps
    // its file's at this start, as a new store's.
    tx.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION}"))?;
    tx.commit()?;
    Ok(())
}

/// Fills `acks` from the acknowledgements the store holds, so that one of them sent again is
/// not taken for news (PROTOCOL.md 7.5). Reads each stored acknowledgement once, at the
/// first start on a store before schema 4 (which had no `acks`, or one that a relay from
/// before it may have left behind). Adds only what is missing.
fn fill_acks(tx: &Transaction<'_>, path: &Path) -> Result<(), StoreError> {
    let mut read =
        tx.prepare("SELECT rseq, recipient, bytes, key, sig FROM receipts WHERE is_ack = 1")?;
    let mut write = tx.prepare(
        "INSERT OR IGNORE INTO acks (recipient, rseq)
         SELECT ?1, rseq FROM messages WHERE id = ?2 AND sender = ?3 AND digest = ?4",
    )?;
    let mut rows = read.query([])?;
    let mut recorded = 0;
    while let Some(r) = rows.next()? {
        let rseq: i64 = r.get(0)?;
        let who: String = r.get(1)?;
        let signed: Signed<Receipt> = signed_from_row(r, 2)?;
        let receipt = signed
            .decode_unverified()
            .map_err(|e| StoreError::Corrupt {
                path: path.to_owned(),
                detail: format!("stored receipt {rseq} does not decode: {e}"),
            })?;
        for item in &receipt.items {
            recorded += write.execute(params![
                who,
                &item.id.0[..],
                item.sender.as_str(),
                &item.digest.0[..]
            ])?;
        }
    }
    if recorded > 0 {
        tracing::info!(db = %path.display(), acknowledged = recorded, "recorded who acknowledged which message, from the stored acknowledgements");
    }
    Ok(())
}

/// Version 2 to 3: the queue rows become cursors. A recipient's cursor goes just below its
/// oldest queued message, or to the newest message if none is queued for it; the messages
/// addressed to it between its cursor and the newest that are not queued for it were
/// receipted out of order, and are kept in `ahead`. Reads every message's recipient list
/// once.
fn queue_rows_to_cursors(tx: &Transaction<'_>, path: &Path) -> Result<(), StoreError> {
    let mut queued: HashMap<String, BTreeSet<i64>> = HashMap::new();
    {
        let mut st = tx.prepare("SELECT recipient, rseq FROM queue")?;
        let mut rows = st.query([])?;
        while let Some(r) = rows.next()? {
            queued.entry(r.get(0)?).or_default().insert(r.get(1)?);
        }
    }
    let newest: i64 = tx.query_row("SELECT COALESCE(MAX(rseq), 0) FROM messages", [], |r| {
        r.get(0)
    })?;
    let mut cursors: HashMap<String, i64> = HashMap::new();
    {
        let mut ahead =
            tx.prepare("INSERT OR IGNORE INTO ahead (recipient, rseq) VALUES (?1, ?2)")?;
        let mut st = tx.prepare("SELECT rseq, recipients FROM messages ORDER BY rseq")?;
        let mut rows = st.query([])?;
        while let Some(r) = rows.next()? {
            let rseq: i64 = r.get(0)?;
            let list: String = r.get(1)?;
            for who in list.split(',').filter(|w| !w.is_empty()) {
                let mine = queued.get(who);
                let cursor = *cursors
                    .entry(who.to_owned())
                    .or_insert_with(|| mine.and_then(|q| q.first()).map_or(newest, |f| f - 1));
                if rseq > cursor && !mine.is_some_and(|q| q.contains(&rseq)) {
                    ahead.execute(params![who, rseq])?;
                }
            }
        }
    }
    // Queue rows for a message that lists no such recipient cannot come from this relay.
    for (who, q) in &queued {
        if !cursors.contains_key(who) {
            return Err(StoreError::Corrupt {
                path: path.to_owned(),
                detail: format!(
                    "{} queue entries for {who} name messages not addressed to it",
                    q.len()
                ),
            });
        }
    }
    let mut st = tx.prepare("INSERT INTO cursors (recipient, rseq) VALUES (?1, ?2)")?;
    for (who, c) in &cursors {
        st.execute(params![who, c])?;
    }
    drop(st);
    tx.execute_batch("DROP TABLE queue;")?;
    Ok(())
}

/// The queues as the store holds them: what [`load_queues`] reads.
pub(crate) struct LoadedQueues {
    /// Each recipient's unreceipted messages.
    pub(crate) index: QueueIndex,
    /// Each recipient's cursor.
    pub(crate) cursors: HashMap<ParticipantId, i64>,
    /// Recipients with positions receipted ahead of their cursors.
    pub(crate) ahead: HashSet<ParticipantId>,
    /// The newest message's position (0 if none).
    pub(crate) newest: i64,
    /// Message rows read to rebuild `index`: those after the lowest cursor of the
    /// recipients whose queues were read.
    pub(crate) rows_read: u64,
    /// Recipients with a cursor whose queues were not read ([`Whose`]): not active on the
    /// roster. What they are owed stays in the store (their cursors and `ahead` rows).
    pub(crate) unread: HashSet<ParticipantId>,
}

/// Whose queues [`load_queues`] reads.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Whose<'a> {
    /// Every recipient's: tools on a stopped relay, which has no roster in force.
    All,
    /// Those of the participants active on this roster (listed and not revoked): the
    /// running relay's, as only they can connect to be delivered.
    ActiveOn(&'a Roster),
}

impl Whose<'_> {
    fn reads(&self, who: &ParticipantId) -> bool {
        match self {
            Whose::All => true,
            Whose::ActiveOn(roster) => roster.active(who).is_ok(),
        }
    }
}

/// Rebuilds the queue of every recipient `whose` names from its cursor, its positions
/// receipted ahead, and the messages after the lowest of their cursors (the messages before
/// it are not read). Read-only.
///
/// The running relay reads the queues of the participants active on its roster only
/// ([`Whose::ActiveOn`]). One taken off the roster (revoked, or no longer listed) while
/// still owed messages never connects again, never receipts, and its cursor is never moved
/// up for idle (it is owed something), so every start read every message accepted since its
/// cursor, for good. What it is owed is kept, not dropped: a roster may list it again (a
/// revocation undone, OPERATIONS.md 4.5), and then it is owed what it was before, read from
/// its cursor alone (`follow_roster`, at the writer's next batch or roster kept), as "nothing
/// accepted is ever lost" asks for anyone who can still receive. The sender's node meanwhile
/// shows that recipient's delivery as pending, which it is. Only the `hotline_relay_queue_depth`
/// gauge loses its series while the participant is off the roster: counting what it is
/// owed would mean reading those messages.
///
/// It reads messages it keeps for no one too: those after the lowest cursor whose
/// recipients' cursors are all at or past them. Nothing here can tell which rows those are
/// without reading them: the store has no index by recipient (one would cost every
/// acceptance a write). A receipt that empties its recipient's queue leaves the cursor at
/// the newest message of the time, so a recipient rarely addressed (or off the roster) held
/// the lowest cursor far back, and each start read every message since, its recipient list
/// found only past its signed bytes (100,000 rows read to keep 20 positions took up to
/// 0.42 s in a debug build). So the writer, which owns the cursors, moves the cursor of a recipient
/// owed nothing (nothing queued, nothing receipted ahead) up to the newest message once it
/// lags by more than [`IDLE_CURSOR_LAG_MAX`] positions (`idle_cursors_up`), in a batch's
/// commit, looking only when the newest message has passed its last look by that much (and
/// at the first commit after a start). An idle recipient's cursor then lags the newest by
/// less than twice that plus a batch, and a start reads at most that many messages besides
/// those from the oldest owed (20 rows read in 0.12 ms on a store where the 100,000 took
/// 0.16 s). The cost: at most one cursor row
/// per idle recipient per [`IDLE_CURSOR_LAG_MAX`] messages, written in a commit made anyway
/// (CICA's 38 participants: at most 38 rows per 1,024 messages), and at each look a walk of
/// the cursors under the queues' lock; no acceptance writes anything more. A rewind
/// ([`redeliver_since`]) finds the same messages as before: it looks for those addressed to
/// the recipient since a time, and none addressed to it lay between a moved cursor's old
/// and new places. Until the first commit, a store whose cursors lag (one from before this)
/// is still read from the lowest.
///
/// Each queue is read whole, whatever `queue_depth_max` says, and so is one read back for a
/// participant a roster lists again ([`follow_roster`], the same reading). The limit bounds
/// what acceptance adds (a participant off the roster is routed nothing, so it is owed at
/// most what it was when taken off); only a rewind or a limit lowered since leaves a queue
/// above it, at 8 bytes a position (a million: 8 MB). Holding only a page of such a queue,
/// and reading the next as receipts drain it, would cost more than that memory: the cursor
/// goes just below the first position in memory (`store_receipt`), so it would have to know
/// of those left in the store; acceptance would have to keep new positions for that
/// recipient behind them, not post them to its live session (which delivers in position
/// order and would skip the rest); the idle-cursor move and the gauges would have to count
/// them; and each page would be read by scanning every message since (the store has no
/// index by recipient).
pub(crate) fn load_queues(conn: &Connection, whose: Whose<'_>) -> Result<LoadedQueues, StoreError> {
    let mut cursors = HashMap::new();
    {
        let mut st = conn.prepare("SELECT recipient, rseq FROM cursors")?;
        let mut rows = st.query([])?;
        while let Some(r) = rows.next()? {
            let who: String = r.get(0)?;
            match ParticipantId::new(&who) {
                Ok(p) => {
                    cursors.insert(p, r.get::<_, i64>(1)?);
                }
                Err(e) => {
                    tracing::warn!(recipient = %who, error = %e, "cursor for an invalid participant id ignored")
                }
            }
        }
    }
    let mut receipted = HashSet::new();
    let mut ahead = HashSet::new();
    {
        let mut st = conn.prepare(
            "SELECT a.recipient, a.rseq FROM ahead a JOIN cursors c ON c.recipient = a.recipient
             WHERE a.rseq > c.rseq",
        )?;
        let mut rows = st.query([])?;
        while let Some(r) = rows.next()? {
            if let Ok(p) = ParticipantId::new(&r.get::<_, String>(0)?) {
                receipted.insert((p.clone(), r.get::<_, i64>(1)?));
                ahead.insert(p);
            }
        }
    }
    let newest: i64 = conn.query_row("SELECT COALESCE(MAX(rseq), 0) FROM messages", [], |r| {
        r.get(0)
    })?;
    // Looked up once per recipient with a cursor, not per row: the roster is a list.
    let unread: HashSet<ParticipantId> = cursors
        .keys()
        .filter(|p| !whose.reads(p))
        .cloned()
        .collect();
    let from = cursors
        .iter()
        .filter(|(p, _)| !unread.contains(*p))
        .map(|(_, c)| *c)
        .min()
        .unwrap_or(newest);
    // Every recipient gets its cursor with its first message (in the same commit); one
    // without is read from the start.
    let (index, rows_read) = read_queues(
        conn,
        from,
        |p| (!unread.contains(p)).then(|| cursors.get(p).copied().unwrap_or(0)),
        &receipted,
    )?;
    Ok(LoadedQueues {
        index,
        cursors,
        ahead,
        newest,
        rows_read,
        unread,
    })
}

/// The queues of the messages after position `from`: each recipient `cursor_of` gives a
/// cursor for is queued the positions past it that it has not `receipted` ahead. Returns
/// them and how many message rows were read.
fn read_queues(
    conn: &Connection,
    from: i64,
    cursor_of: impl Fn(&ParticipantId) -> Option<i64>,
    receipted: &HashSet<(ParticipantId, i64)>,
) -> Result<(QueueIndex, u64), StoreError> {
    let mut index = QueueIndex::default();
    let mut st =
        conn.prepare("SELECT rseq, recipients FROM messages WHERE rseq > ?1 ORDER BY rseq")?;
    let mut rows = st.query([from])?;
    let mut rows_read = 0;
    while let Some(r) = rows.next()? {
        rows_read += 1;
        let rseq: i64 = r.get(0)?;
        let list: String = r.get(1)?;
        for who in list.split(',').filter(|w| !w.is_empty()) {
            let Ok(p) = ParticipantId::new(who) else {
                continue;
            };
            let Some(cursor) = cursor_of(&p) else {
                continue;
            };
            if rseq > cursor && !receipted.contains(&(p.clone(), rseq)) {
                index.push(&p, rseq);
            }
        }
    }
    Ok((index, rows_read))
}

/// The positions `who` is owed past its cursor `cursor` (less those it receipted ahead),
/// ascending, and the message rows read to find them: the queue of one recipient that
/// [`load_queues`] did not read.
fn queue_of(
    conn: &Connection,
    who: &ParticipantId,
    cursor: i64,
) -> Result<(Vec<i64>, u64), StoreError> {
    let mut receipted = HashSet::new();
    {
        let mut st = conn.prepare("SELECT rseq FROM ahead WHERE recipient = ?1 AND rseq > ?2")?;
        let mut rows = st.query(params![who.as_str(), cursor])?;
        while let Some(r) = rows.next()? {
            receipted.insert((who.clone(), r.get::<_, i64>(0)?));
        }
    }
    let (index, rows_read) =
        read_queues(conn, cursor, |p| (p == who).then_some(cursor), &receipted)?;
    Ok((index.after(who, cursor, usize::MAX), rows_read))
}

/// Messages queued at the relay for `recipient`, from its store (for tools and tests that
/// inspect a stopped relay's data).
pub fn queued_for(conn: &Connection, recipient: &ParticipantId) -> Result<usize, StoreError> {
    Ok(load_queues(conn, Whose::All)?.index.len(recipient))
}

/// Each recipient's [`Rewound`], by id: what [`redeliver_all_since`] did.
pub type RewoundAll = Vec<(ParticipantId, Rewound)>;

/// What [`redeliver_since`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rewound {
    /// Messages addressed to the recipient that it is now owed (those it was owed already
    /// included); 0 when nothing addressed to it was accepted since then, and it owed
    /// nothing: none is owed again, and its cursor stays where it was.
    pub messages: u64,
    /// Its cursor before: every message addressed to it up to there was receipted. Not
    /// necessarily the last it receipted: the writer moves the cursor of a recipient owed
    /// nothing up to the newest message (`idle_cursors_up`).
    pub cursor_was: i64,
    /// The new cursor: just below the first message it is now owed, or where it was if
    /// that is lower, or if it is owed nothing.
    pub cursor: i64,
    /// Receipts of messages it sent, stored here since the time, queued again to be
    /// forwarded to it (a redelivery to one recipient only, [`redeliver_since`]; 0 for
    /// [`redeliver_all_since`]): a node restored from a backup lost those it held since.
    pub receipts: u64,
}

/// Makes a stopped relay deliver again to `recipient`, at its next connection, every
/// message addressed to it that the relay accepted at or after `since_ms` (the relay's
/// clock), although the recipient receipted them: for a node restored from a backup, which
/// no longer holds what it received since. Its cursor moves back to just before the first
/// such message and its positions receipted ahead of the cursor are forgotten, in one
/// transaction journaled as `queue.rewound`. The node keeps a copy it still holds (nodes
/// dedup by id), stores the others as new, and receipts them all again. The caller must
/// hold the data directory's claim (`hotline_store::lock_dir`): a running relay keeps its
/// queues in memory. Messages are kept for good, so every one since `since_ms` is there.
pub fn redeliver_since(
    data_dir: &Path,
    recipient: &ParticipantId,
    since_ms: u64,
    now_ms: u64,
) -> Result<Rewound, StoreError> {
    let rewound = rewind(data_dir, Some(recipient), since_ms, now_ms)?;
    Ok(rewound.into_iter().next().map_or(
        Rewound {
            messages: 0,
            cursor_was: 0,
            cursor: 0,
            receipts: 0,
        },
        |(_, r)| r,
    ))
}

/// [`redeliver_since`] for every recipient the relay has a queue for, in one transaction:
/// for a relay restored from a backup, so that each node is delivered again what was
/// accepted since `since_ms` and offers again the acknowledgements of it that the relay
/// lost (a node that receives a message it acknowledged offers that acknowledgement again).
/// Nodes dedup by id and show nothing twice. Returns each recipient's [`Rewound`], by id.
pub fn redeliver_all_since(
    data_dir: &Path,
    since_ms: u64,
    now_ms: u64,
) -> Result<RewoundAll, StoreError> {
    rewind(data_dir, None, since_ms, now_ms)
}

/// Moves back the cursor of `only`, or of every recipient with one, as
/// [`redeliver_since`] says.
/// [`redeliver_all_since`] on the store file `path` that `hotline restore` has just put in
/// place, as the restore's last step (`hotline_store::restore`'s `finish`): its marker is
/// still in the directory, which the relay's own open refuses, and the restore holds the
/// directory's claim. A crash or a failure here leaves the marker, and the restore run
/// again does it again.
pub fn redeliver_all_since_restored(
    path: &Path,
    since_ms: u64,
    now_ms: u64,
) -> Result<RewoundAll, StoreError> {
    rewind_in_store(open_db_file(path, false)?, None, since_ms, now_ms)
}

fn rewind(
    data_dir: &Path,
    only: Option<&ParticipantId>,
    since_ms: u64,
    now_ms: u64,
) -> Result<RewoundAll, StoreError> {
    let (_, conn) = open_db(data_dir)?;
    rewind_in_store(conn, only, since_ms, now_ms)
}

/// [`rewind`] on an open store.
fn rewind_in_store(
    mut conn: Connection,
    only: Option<&ParticipantId>,
    since_ms: u64,
    now_ms: u64,
) -> Result<RewoundAll, StoreError> {
    // Used for this one transaction and dropped with it, so nothing to roll back on failure.
    let mut journal = Journal::load(&conn)?;
    let tx = conn.transaction()?;
    let first = first_since(&tx, since_ms)?;
    let (rewound, _) = rewind_in(
        &tx,
        &mut journal,
        (only, Whose::All),
        (since_ms, first),
        now_ms,
    )?;
    tx.commit()?;
    Ok(rewound)
}

/// Where a rewind since a time starts reading ([`first_since`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct FirstSince {
    /// [`first_accepted_since`].
    pub(crate) message: Option<i64>,
    /// The position of the first receipt stored at or after the time, if any.
    pub(crate) receipt: Option<i64>,
}

/// The positions of the first message accepted and the first receipt stored at or after
/// `since_ms`. Each reads its table up to there (neither time has an index), so the running
/// relay asks them of a read connection, not of its writer: both tables are only ever
/// appended to, so the answer holds when the writer uses it.
pub(crate) fn first_since(conn: &Connection, since_ms: u64) -> Result<FirstSince, StoreError> {
    Ok(FirstSince {
        message: first_accepted_since(conn, since_ms)?,
        receipt: conn.query_row(
            "SELECT MIN(rseq) FROM receipts WHERE stored_at_ms >= ?1",
            [time_key(since_ms)],
            |r| r.get(0),
        )?,
    })
}

/// The position of the first message accepted at or after `since_ms`, if any. It reads the
/// messages in order up to there (`accepted_at_ms` has no index: a message's commit would
/// pay for one), so the running relay asks it of a read connection, not of its writer:
/// messages are only ever appended, so the answer holds when the writer uses it.
pub(crate) fn first_accepted_since(
    conn: &Connection,
    since_ms: u64,
) -> Result<Option<i64>, StoreError> {
    Ok(conn.query_row(
        "SELECT MIN(rseq) FROM messages WHERE accepted_at_ms >= ?1",
        [time_key(since_ms)],
        |r| r.get(0),
    )?)
}

/// [`rewind`]'s work in transaction `tx` (the caller commits it): what each recipient is
/// now owed and, if any cursor moved, the queues of those `whose` names as the store now
/// holds them (those of recipients it does not name are read, one by one, to count them).
///
/// A cursor moves back no further than just below the first message it makes owed: a
/// recipient owed nothing since `since_ms` keeps its cursor. (Moved back to before the
/// first message accepted since then, whoever it was for, the cursor of a recipient
/// addressed nothing since was journaled `cursor 3072 -> 1, 0 owed`, a move that changed
/// nothing it was owed, and every start read the messages from there until the writer
/// moved that idle cursor up again.)
///
/// For one recipient (`only`), the receipts of the messages it sent that were stored since
/// `since_ms` are queued again to be forwarded to it ([`forward_again`]): it is asked for a
/// node restored from a backup, which lost those too (OPERATIONS.md 6.5).
fn rewind_in(
    tx: &Transaction<'_>,
    journal: &mut Journal,
    (only, whose): (Option<&ParticipantId>, Whose<'_>),
    (since_ms, first): (u64, FirstSince),
    now_ms: u64,
) -> Result<(RewoundAll, Option<LoadedQueues>), StoreError> {
    let (mut rewound, loaded) = rewind_queues_in(
        tx,
        journal,
        (only, whose),
        (since_ms, first.message),
        now_ms,
    )?;
    if let Some(who) = only {
        let receipts = forward_again(tx, who, (since_ms, first.receipt))?;
        if receipts > 0 {
            journal.append(
                tx,
                now_ms,
                "receipts.forwarded_again",
                who.as_str(),
                format!("since {since_ms}: {receipts} receipt(s) of its messages").as_bytes(),
            )?;
            match rewound.iter_mut().find(|(p, _)| p == who) {
                Some((_, r)) => r.receipts = receipts,
                None => rewound.push((
                    who.clone(),
                    Rewound {
                        messages: 0,
                        cursor_was: 0,
                        cursor: 0,
                        receipts,
                    },
                )),
            }
        }
    }
    Ok((rewound, loaded))
}

/// [`rewind_in`]'s work on the message queues.
fn rewind_queues_in(
    tx: &Transaction<'_>,
    journal: &mut Journal,
    (only, whose): (Option<&ParticipantId>, Whose<'_>),
    (since_ms, first): (u64, Option<i64>),
    now_ms: u64,
) -> Result<(RewoundAll, Option<LoadedQueues>), StoreError> {
    let mut cursors: Vec<(ParticipantId, i64)> = Vec::new();
    {
        let mut st = tx.prepare(
            "SELECT recipient, rseq FROM cursors WHERE ?1 IS NULL OR recipient = ?1
             ORDER BY recipient",
        )?;
        let mut rows = st.query([only.map(ParticipantId::as_str)])?;
        while let Some(r) = rows.next()? {
            // An invalid id has no queue (`load_queues` ignores it), so nothing to rewind.
            if let Ok(who) = ParticipantId::new(&r.get::<_, String>(0)?) {
                cursors.push((who, r.get(1)?));
            }
        }
    }
    let Some(first) = first else {
        // Nothing accepted since then: nothing changes.
        let same = cursors
            .into_iter()
            .map(|(who, c)| {
                let same = Rewound {
                    messages: 0,
                    cursor_was: c,
                    cursor: c,
                    receipts: 0,
                };
                (who, same)
            })
            .collect();
        return Ok((same, None));
    };
    let mut moved = Vec::with_capacity(cursors.len());
    for (who, cursor_was) in cursors {
        let cursor = cursor_was.min(first - 1);
        tx.execute(
            "UPDATE cursors SET rseq = ?2 WHERE recipient = ?1",
            params![who.as_str(), cursor],
        )?;
        tx.execute(
            "DELETE FROM ahead WHERE recipient = ?1 AND rseq > ?2",
            params![who.as_str(), cursor],
        )?;
        moved.push((who, cursor_was, cursor));
    }
    // What the relay will owe each at its next start, counted as that start rebuilds it.
    let mut queues = load_queues(tx, whose)?;
    let mut rewound = Vec::with_capacity(moved.len());
    for (who, cursor_was, moved_to) in moved {
        let (messages, first_owed) = if queues.unread.contains(&who) {
            let (owed, _) = queue_of(tx, &who, moved_to)?;
            (owed.len() as u64, owed.first().copied())
        } else {
            (queues.index.len(&who) as u64, queues.index.first(&who))
        };
        // At or above `moved_to`: every position it is owed is past that, and nothing
        // addressed to it lies between there and the first one.
        let cursor = first_owed.map_or(cursor_was, |f| cursor_was.min(f - 1));
        if cursor != moved_to {
            tx.execute(
                "UPDATE cursors SET rseq = ?2 WHERE recipient = ?1",
                params![who.as_str(), cursor],
            )?;
            queues.cursors.insert(who.clone(), cursor);
        }
        journal.append(
            tx,
            now_ms,
            "queue.rewound",
            who.as_str(),
            format!("since {since_ms}: cursor {cursor_was} -> {cursor}, {messages} owed")
                .as_bytes(),
        )?;
        let r = Rewound {
            messages,
            cursor_was,
            cursor,
            receipts: 0,
        };
        rewound.push((who, r));
    }
    Ok((rewound, Some(queues)))
}

/// Queues again, to be forwarded to `sender`, every receipt stored since `since_ms` that
/// names a message of its: its node, restored from a backup, no longer holds those it was
/// forwarded since, and confirmed them (`ReceiptsStored`), so the relay had dropped them from
/// its forward queue. Its node keeps only what is news to it. Returns how many were queued
/// again (those still queued are not counted). `first`: [`FirstSince::receipt`].
fn forward_again(
    tx: &Transaction<'_>,
    sender: &ParticipantId,
    (since_ms, first): (u64, Option<i64>),
) -> Result<u64, StoreError> {
    let Some(first) = first else {
        // No receipt stored since then.
        return Ok(0);
    };
    let mut found = Vec::new();
    {
        let mut st = tx.prepare(FORWARD_AGAIN_READ)?;
        let mut rows = st.query(params![first, time_key(since_ms)])?;
        while let Some(r) = rows.next()? {
            let signed: Signed<Receipt> = signed_from_row(r, 2)?;
            // Stored receipts were verified when they came; one that no longer decodes
            // names nothing to forward.
            let Ok(receipt) = signed.decode_unverified() else {
                continue;
            };
            if receipt.recipient != *sender && receipt.items.iter().any(|i| i.sender == *sender) {
                found.push((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?));
            }
        }
    }
    let mut st =
        tx.prepare("INSERT OR IGNORE INTO rqueue (recipient, rseq, digest) VALUES (?1, ?2, ?3)")?;
    let mut n = 0u64;
    for (rseq, digest) in found {
        n += st.execute(params![sender.as_str(), rseq, digest])? as u64;
    }
    Ok(n)
}

/// [`forward_again`]'s read of the receipts stored since a time.
/// By position from the first stored since the time ([`FirstSince::receipt`], found on a
/// read connection), not by `stored_at_ms`, which has no index: the running relay does this
/// in its writer, and read by time, every receipt the relay ever kept was read there while
/// every submission waited. Both are asked: one stored later with an earlier time (the
/// clock stepped back) was not stored since the time.
const FORWARD_AGAIN_READ: &str = "SELECT rseq, digest, bytes, key, sig FROM receipts
     WHERE rseq >= ?1 AND stored_at_ms >= ?2 ORDER BY rseq";

/// A receipt's signing time as its key in `receipts`. SQLite integers are signed; a
/// receipt's time is refused at decode past `TIME_MS_MAX` (= `i64::MAX`), but a store
/// migrated from before that rule may hold one, so a larger time is stored as `i64::MAX`
/// rather than failing the whole commit; the key stays exact, as the digest follows it.
fn time_key(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

/// Copies the receipts of an older schema's table `from` into `receipts`, in their order
/// and at their positions (`rowid`: a version 1 `rseq`, or version 0's insertion order),
/// reading each one's signing time from its bytes. A receipt whose bytes no longer decode
/// is damage, refused naming the file.
fn copy_receipts(tx: &Transaction<'_>, path: &Path, from: &str) -> Result<(), StoreError> {
    let mut read = tx.prepare(&format!(
        "SELECT rowid, digest, recipient, is_ack, bytes, key, sig, stored_at_ms FROM {from} ORDER BY rowid"
    ))?;
    let mut write = tx.prepare(
        "INSERT INTO receipts (rseq, created_at_ms, digest, recipient, is_ack, bytes, key, sig, stored_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?;
    let mut rows = read.query([])?;
    while let Some(r) = rows.next()? {
        let rowid: i64 = r.get(0)?;
        let signed: Signed<Receipt> = signed_from_row(r, 4)?;
        let created_at_ms = time_key(
            signed
                .decode_unverified()
                .map_err(|e| StoreError::Corrupt {
                    path: path.to_owned(),
                    detail: format!("stored receipt {rowid} does not decode: {e}"),
                })?
                .created_at_ms,
        );
        write.execute(params![
            rowid,
            created_at_ms,
            r.get::<_, Vec<u8>>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, i64>(3)?,
            signed.bytes(),
            &signed.key().0[..],
            &signed.signature().0[..],
            r.get::<_, i64>(7)?,
        ])?;
    }
    // AUTOINCREMENT never reuses a position: keep the old table's high-water mark.
    tx.execute(
        "UPDATE sqlite_sequence SET seq = max(seq, coalesce((SELECT seq FROM sqlite_sequence WHERE name = ?1), 0))
         WHERE name = 'receipts'",
        [from],
    )?;
    Ok(())
}

/// The roster a relay store keeps, the newest the relay has run with ([`kept_roster`]).
#[derive(Debug)]
#[non_exhaustive]
pub enum KeptRoster {
    /// None: a new store, or one from before schema 5.
    None,
    /// One signed by another roster key than the one pinned now (it was replaced,
    /// OPERATIONS.md 4.7): it holds back none of the pinned key's rosters.
    OtherKey {
        /// Its version.
        version: u64,
        /// The key that signed it.
        key: PublicKey,
    },
    /// One signed by the pinned roster key, verified.
    Roster(Box<Verified<Roster>>),
}

/// Reads the roster the store keeps ([`KeptRoster`]) and verifies it against `roster_key`,
/// the key the relay pins. One that does not decode, or is signed by the pinned key and does
/// not verify, is damage (`Corrupt`, naming `path`). Read-only: a store from before schema
/// 5, not yet migrated (`hotline config check` beside an older relay), has no table and
/// keeps none.
pub fn kept_roster(
    conn: &Connection,
    path: &Path,
    roster_key: &PublicKey,
) -> Result<KeptRoster, StoreError> {
    if !table_exists(conn, "roster")? {
        return Ok(KeptRoster::None);
    }
    let signed: Option<Signed<Roster>> = conn
        .query_row(
            "SELECT bytes, key, sig FROM roster WHERE one = 1",
            [],
            |r| signed_from_row(r, 0),
        )
        .optional()?;
    let Some(signed) = signed else {
        return Ok(KeptRoster::None);
    };
    let corrupt = |detail: String| StoreError::Corrupt {
        path: path.to_owned(),
        detail,
    };
    if signed.key() != *roster_key {
        let version = signed
            .decode_unverified()
            .map_err(|e| corrupt(format!("the kept roster does not decode: {e}")))?
            .version;
        return Ok(KeptRoster::OtherKey {
            version,
            key: signed.key(),
        });
    }
    hotline_proto::verify_roster(&signed, roster_key)
        .map(|r| KeptRoster::Roster(Box::new(r)))
        .map_err(|e| corrupt(format!("the kept roster does not verify: {e}")))
}

/// Keeps `roster` as the newest the relay has run with, unless the store keeps a newer one
/// or the same version of the same key (two reloads racing: the roster kept never goes
/// back), and journals it (`roster.installed`, its version as subject and its signed bytes
/// as payload, as a node journals the rosters it installs): the audit record says which
/// roster, so which keys and groups, the relay ran with from when. Returns whether it
/// wrote. `roster` is verified against the pinned key, so a kept roster of another key is
/// replaced.
pub(crate) fn keep_roster(
    conn: &Connection,
    journal: &mut Journal,
    path: &Path,
    roster: &Verified<Roster>,
    now_ms: u64,
) -> Result<bool, StoreError> {
    let key = roster.signed().key();
    if let KeptRoster::Roster(kept) = kept_roster(conn, path, &key)? {
        if kept.version >= roster.version {
            return Ok(false);
        }
    }
    let s = roster.signed();
    conn.execute(
        "INSERT INTO roster (one, bytes, key, sig) VALUES (1, ?1, ?2, ?3)
         ON CONFLICT (one) DO UPDATE SET bytes = excluded.bytes, key = excluded.key, sig = excluded.sig",
        params![s.bytes(), &s.key().0[..], &s.signature().0[..]],
    )?;
    journal.append(
        conn,
        now_ms,
        "roster.installed",
        &roster.version.to_string(),
        // Whole: the row is overwritten by the next roster, so only the journal keeps this one.
        &hotline_proto::codec::encode(s, usize::MAX)
            .map_err(|e| StoreError::Record(Box::new(e)))?,
    )?;
    Ok(true)
}

/// What the commit loop's wait returned. Lives for one turn on the stack and is moved into
/// the batch at once, so its size does not matter.
#[allow(clippy::large_enum_variant)]
enum Next {
    Command(Command),
    /// Every sender is gone.
    Closed,
    /// A deferred batch is due.
    Deadline,
}

/// Work for the writer thread.
pub(crate) enum Command {
    /// A verified message from its authenticated author.
    Submit {
        env: Verified<Envelope>,
        /// Its digest, computed by the session: hashing is parallel there, and the writer
        /// is one thread.
        digest: Digest,
        reply: mpsc::Sender<RelayToNode>,
        /// When its session read its frame, and when it handed it over (the first two
        /// stages of `hotline_relay_*_seconds`, observed when its commit begins).
        read_at: std::time::Instant,
        handed_at: std::time::Instant,
    },
    /// A verified receipt from its authenticated recipient.
    Receipt {
        receipt: Verified<Receipt>,
        /// Its digest, computed by the verifier (as `Submit::digest`).
        digest: Digest,
        reply: mpsc::Sender<RelayToNode>,
    },
    /// A sender holds these forwarded receipts; drop them from its receipt queue.
    ReceiptsStored {
        participant: ParticipantId,
        digests: Vec<Digest>,
    },
    /// Deliver again to `only` (or to every recipient) what was accepted since `since_ms`
    /// ([`redeliver_since`], on the running relay: `hotline relay redeliver`). Committed in
    /// a transaction of its own, after what came before it.
    Rewind {
        only: Option<ParticipantId>,
        since_ms: u64,
        /// [`first_since`], read before the command was sent.
        first: FirstSince,
        reply: tokio::sync::oneshot::Sender<Result<RewoundAll, String>>,
    },
    /// Keep this roster, just reloaded, as the newest the relay has run with
    /// ([`keep_roster`]; `RelayHandle::reload_roster`). Committed in a transaction of its
    /// own, after what came before it; answered once on disk, with whether it wrote.
    KeepRoster {
        roster: Arc<Verified<Roster>>,
        reply: tokio::sync::oneshot::Sender<Result<bool, String>>,
    },
}

/// Whether `cmd` is an operator's ([`Command::Rewind`], [`Command::KeepRoster`]): rare,
/// committed in a transaction of its own (`Writer::step` takes them out of a batch).
fn is_operators(cmd: &Command) -> bool {
    matches!(cmd, Command::Rewind { .. } | Command::KeepRoster { .. })
}

/// The answer of an operator's command ([`is_operators`]) that reached a batch's commit,
/// which never runs one (`Writer::step` takes them out first).
fn operators_not_here(cmd: Command) {
    match cmd {
        Command::Rewind { reply, .. } => {
            let _ = reply.send(Err("internal: a rewind reached a batch".into()));
        }
        Command::KeepRoster { reply, .. } => {
            let _ = reply.send(Err("internal: a roster to keep reached a batch".into()));
        }
        _ => {}
    }
}

/// What the writer commits now of a batch it has just drained ([`plan`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Plan {
    /// The submissions, in a commit of their own.
    submissions_now: bool,
    /// Everything else (receipts, `ReceiptsStored`), in a second commit.
    others_now: bool,
}

/// The writer's group-commit policy, for a drained batch of `submissions` and `others`.
///
/// - **Submissions commit at once, and alone.** Someone waits for each: its sender for
///   *accepted*, its recipients for the message. Until the thirteenth round of benchmarks
///   the receipts waiting in the batch rode in the same commit; at fanout37 500/s that was
///   about 3.6 receipts a commit, whose rows and index entries roughly doubled the pages the
///   commit wrote and synced (17 WAL frames a commit on average, against 8–9 for a
///   message's commit alone). Committed apart, the end-to-end p99 fell by about 0.25 ms and
///   *accepted* came about 0.07 ms sooner (docs/BENCHMARKS-ROUNDS.md, thirteenth round), for
///   about 7 % more relay CPU a message (more, smaller commits).
/// - **The rest waits for company**, up to [`crate::limits::RECEIPT_COMMIT_DELAY_MS`] after
///   the first of them arrived (`due`), or until the batch is full. Receipts arrive one per
///   recipient per message; committing each on its own rewrote the same hot pages thousands
///   of times a second. Under sustained load the writer's wait never reaches the deadline,
///   so `due` is checked here too.
fn plan(submissions: usize, others: usize, batch_max: usize, due: bool) -> Plan {
    Plan {
        submissions_now: submissions > 0,
        others_now: others > 0 && (due || submissions + others >= batch_max),
    }
}

/// What the writer needs besides commands.
pub(crate) struct WriterContext {
    pub(crate) roster: tokio::sync::watch::Receiver<Arc<Verified<Roster>>>,
    pub(crate) policy: Policy,
    pub(crate) hub: Arc<Hub>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) queue_depth_max: u64,
    /// Receipts naming only messages not held here are forwarded to a sender while its
    /// forward queue holds fewer than this (`limits.forward_foreign_max`).
    pub(crate) forward_foreign_max: u64,
    /// Receipts kept a UTC day for one signer only because they name messages not held here
    /// (`limits.foreign_receipts_per_day_max`, [`ForeignBudget`]).
    pub(crate) foreign_receipts_per_day_max: u64,
    pub(crate) batch_max: usize,
    /// The queues, shared with the readers; the writer is their only writer.
    pub(crate) queues: Arc<Mutex<QueueIndex>>,
    /// For tests only ([`crate::Hosting::fail_writer_after`]): the writer panics once it has
    /// committed this many batches.
    pub(crate) fail_after_commits: Option<u64>,
    /// For tests only ([`crate::Hosting::fail_syncs_after`]): the sync of the write-ahead
    /// log after this many fails.
    pub(crate) fail_syncs_after: Option<u64>,
    /// For tests only ([`crate::Hosting::slow_commits`]): a wait between a batch's first
    /// post and its commit, and before the commit of an operator's command.
    pub(crate) slow_commits: Option<std::time::Duration>,
    /// For tests only ([`crate::Hosting::follow_gate`]): a gate the writer waits at before
    /// it reads the queues of a roster newer than the one it followed.
    pub(crate) follow_gate: Option<Arc<crate::FollowGate>>,
}

/// Opens (creating) the relay database, checks it, and creates the schema. Refused while a
/// restore into `data_dir` is unfinished, and where there is no store but signs of an
/// earlier one ([`hotline_store::check_startable`]): an empty store would take its place.
pub(crate) fn open_db(data_dir: &Path) -> Result<(PathBuf, Connection), StoreError> {
    hotline_store::check_startable(data_dir, DB_FILE)?;
    let path = data_dir.join(DB_FILE);
    let conn = open_db_file(&path, true)?;
    Ok((path, conn))
}

/// [`open_db`]'s open of the store file `path` (created if missing and `create`), checked
/// and brought to this release's schema, without the start-up check of its directory.
fn open_db_file(path: &Path, create: bool) -> Result<Connection, StoreError> {
    let path = path.to_owned();
    let mut conn = hotline_store::open(&path, create)?;
    hotline_store::quick_check(&conn, &path)?;
    migrate(&mut conn, &path)?;
    conn.execute_batch(hotline_store::journal::SCHEMA)?;
    integrity_check(&conn, &path)?;
    Ok(conn)
}

/// Start-up check that nothing accepted has been damaged while the relay was stopped: the
/// audit journal's hash chain verifies, and every stored message and receipt still hashes to
/// the digest recorded when it was accepted. SQLite has no checksums of its own, so a flipped
/// byte inside a record would otherwise be served silently. Every other value the relay reads
/// back from a message or receipt has the type and size it is read as ([`Shape`]): one that
/// does not would fail each read of its record, unnamed, for as long as the relay ran; so do
/// the values of the writer's own tables (cursors, positions receipted ahead, senders' floors,
/// receipts to forward, the roster kept), which it reads at every start. Fails
/// naming the file and what is damaged; the operator restores from backup
/// (docs/OPERATIONS.md).
pub(crate) fn integrity_check(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    let corrupt = |detail: String| StoreError::Corrupt {
        path: path.to_owned(),
        detail,
    };
    let report = hotline_store::verify_journal(conn).map_err(|e| corrupt(e.to_string()))?;
    // Each row: its position, a name for the error, the recorded digest, the bytes, then the
    // columns of `shapes`: the other values the relay reads back, each of the type (and
    // size) it reads them as. They are in the row already read for its bytes, so checking
    // them costs no I/O; their signature is not verified, which would cost about 50 µs a
    // record (5 s at 100,000 queued messages), and `hotline audit verify` matches each key
    // and signature with the journal's.
    let check = |sql: &str,
                 domain: &[u8],
                 what: &str,
                 shapes: &[(usize, Shape)]|
     -> Result<u64, StoreError> {
        let mut st = conn.prepare(sql)?;
        let mut rows = st.query([])?;
        let mut n = 0u64;
        while let Some(r) = rows.next()? {
            let name = stored_blob(r, 1, what, path)?;
            let digest = stored_blob(r, 2, what, path)?;
            let bytes = stored_blob(r, 3, what, path)?;
            if Digest::of(&[domain, &bytes]).0[..] != digest[..] {
                return Err(corrupt(format!(
                    "stored {what} {} no longer matches its digest",
                    hex::encode(name)
                )));
            }
            for &(i, shape) in shapes {
                stored_shape(r, i, shape, what, path)?;
            }
            n += 1;
        }
        Ok(n)
    };
    let n = check(
        "SELECT rseq, id, digest, bytes, key, sig, sender, seq, accepted_at_ms, recipients
         FROM messages",
        hotline_proto::sign::DOMAIN_ENVELOPE,
        "message",
        &[
            (1, Shape::Bytes(16)),
            (4, Shape::Bytes(32)),
            (5, Shape::Bytes(64)),
            (6, Shape::Text),
            (7, Shape::Count),
            (8, Shape::Count),
            (9, Shape::Text),
        ],
    )?;
    check(
        "SELECT rseq, digest, digest, bytes, key, sig FROM receipts",
        hotline_proto::sign::DOMAIN_RECEIPT,
        "receipt",
        &[(4, Shape::Bytes(32)), (5, Shape::Bytes(64))],
    )?;
    // The writer's own tables, which it reads at every start (`Writer::new`, `load_queues`):
    // a value of another type there failed the start with SQLite's error, naming neither
    // the file nor the table. Small: a row a participant, a position receipted ahead, or a
    // receipt not yet forwarded.
    for (table, columns, valid) in [
        (
            "cursors",
            &["recipient", "rseq"][..],
            "typeof(recipient) = 'text' AND typeof(rseq) = 'integer'",
        ),
        (
            "ahead",
            &["recipient", "rseq"][..],
            "typeof(recipient) = 'text' AND typeof(rseq) = 'integer'",
        ),
        (
            "senders",
            &["participant", "last_seq"][..],
            "typeof(participant) = 'text' AND typeof(last_seq) = 'integer' AND last_seq >= 0",
        ),
        (
            "rqueue",
            &["recipient", "rseq"][..],
            "typeof(recipient) = 'text' AND typeof(rseq) = 'integer'",
        ),
        // The roster kept (one row), read before the relay serves (`kept_roster`).
        (
            "roster",
            &[
                "typeof(bytes)",
                "typeof(key)",
                "length(key)",
                "typeof(sig)",
                "length(sig)",
            ][..],
            "typeof(bytes) = 'blob' AND typeof(key) = 'blob' AND length(key) = 32
             AND typeof(sig) = 'blob' AND length(sig) = 64",
        ),
    ] {
        let row = columns
            .iter()
            .map(|c| format!("'{c} ' || quote({c})"))
            .collect::<Vec<_>>()
            .join(" || ', ' || ");
        let bad: Option<String> = conn
            .query_row(
                &format!("SELECT {row} FROM {table} WHERE NOT ({valid}) LIMIT 1"),
                [],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(bad) = bad {
            return Err(corrupt(format!(
                "table {table} holds a value of the wrong type or out of range: {bad}"
            )));
        }
    }
    tracing::info!(
        journal_entries = report.entries,
        messages = n,
        "store integrity verified"
    );
    Ok(())
}

/// Column `i` of row `r` of a stored message or receipt (`what`), whose column 0 is its
/// position: its bytes. SQLite keeps whatever type a value was written with (the `sqlite3`
/// shell writes a quoted value as text, into a BLOB column too): a value of another type is
/// damage to the store at `path`, named as such with the record, not a storage failure
/// that names neither (which a service's unit restarts on, again and again).
fn stored_blob(
    r: &rusqlite::Row<'_>,
    i: usize,
    what: &str,
    path: &Path,
) -> Result<Vec<u8>, StoreError> {
    match r.get_ref(i)? {
        rusqlite::types::ValueRef::Blob(b) => Ok(b.to_vec()),
        other => Err(StoreError::Corrupt {
            path: path.to_owned(),
            detail: format!(
                "stored {what} at position {}: its {} is {}, not bytes",
                r.get::<_, i64>(0)?,
                r.as_ref().column_name(i)?,
                other.data_type()
            ),
        }),
    }
}

/// What a stored message's or receipt's column holds, as the relay reads it back.
#[derive(Debug, Clone, Copy)]
enum Shape {
    /// Bytes, exactly this many (an id, a key, a signature).
    Bytes(usize),
    /// Text (a participant id, a recipient list).
    Text,
    /// A whole number from 0 (a sequence number, a time), read back as a `u64`.
    Count,
}

/// Checks that column `i` of row `r` (as [`stored_blob`]) has `shape`: a value of another
/// type or size is damage to the store at `path`, named with the record and the column.
fn stored_shape(
    r: &rusqlite::Row<'_>,
    i: usize,
    shape: Shape,
    what: &str,
    path: &Path,
) -> Result<(), StoreError> {
    use rusqlite::types::ValueRef;
    let found = match (shape, r.get_ref(i)?) {
        (Shape::Bytes(n), ValueRef::Blob(b)) if b.len() == n => return Ok(()),
        (Shape::Bytes(n), ValueRef::Blob(b)) => format!("{} bytes, not {n}", b.len()),
        (Shape::Bytes(_), other) => format!("{}, not bytes", other.data_type()),
        (Shape::Text, ValueRef::Text(_)) => return Ok(()),
        (Shape::Text, other) => format!("{}, not text", other.data_type()),
        (Shape::Count, ValueRef::Integer(v)) if v >= 0 => return Ok(()),
        (Shape::Count, ValueRef::Integer(v)) => format!("{v}, not a whole number from 0"),
        (Shape::Count, other) => format!("{}, not a whole number from 0", other.data_type()),
    };
    Err(StoreError::Corrupt {
        path: path.to_owned(),
        detail: format!(
            "stored {what} at position {}: its {} is {found}",
            r.get::<_, i64>(0)?,
            r.as_ref().column_name(i)?,
        ),
    })
}

/// Whether the database has a table called `name`.
fn table_exists(conn: &Connection, name: &str) -> rusqlite::Result<bool> {
    conn.prepare_cached("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1")?
        .exists([name])
}

/// Whether an open database is a relay's store (it has the relay's `messages` table; a
/// node's store has none), so that `hotline audit verify` knows to run
/// [`verify_journaled_records`] on it.
pub fn is_relay_store(conn: &Connection) -> Result<bool, StoreError> {
    Ok(table_exists(conn, "messages")?)
}

/// What `hotline audit verify` checks in a relay store beyond the journal's chain: every
/// journaled message and receipt matches a stored row (its digest, key and signature; an
/// entry written before the journal held only those holds the whole signed record, and is
/// checked the same way), and every stored message and receipt is journaled. With the chain,
/// and start-up's check that each row still hashes to its digest ([`integrity_check`]), the
/// stored bytes are then exactly the ones the journal committed to. Returns how many
/// records were matched. Of several faults it names the journal entry with the lowest
/// number that names no row or another record, else a row journaled nowhere (a message's
/// before a receipt's, the lowest id or digest, with how many there are).
///
/// An offline check, not run at start-up, in bounded memory: it holds one row and one
/// entry at a time, walking the rows of each table in the order of their id or digest
/// beside the journal's entries for that table in the order of the one they name (SQLite
/// sorts what has no index, the receipts and the entries, spilling to temporary files past
/// its cache). It held every message's and receipt's record in a map, about 250 bytes
/// each: some GiB for a relay that has kept a few million receipts, on the machine the
/// relay serves from, or on the one a backup is restored to.
pub fn verify_journaled_records(conn: &Connection, path: &Path) -> Result<u64, StoreError> {
    let corrupt = |detail: String| StoreError::Corrupt {
        path: path.to_owned(),
        detail,
    };
    // The fault of the lowest-numbered entry found so far.
    let mut first_bad: Option<(i64, String)> = None;
    let mut bad = |seq: i64, detail: String| {
        if first_bad.as_ref().is_none_or(|(s, _)| seq < *s) {
            first_bad = Some((seq, detail));
        }
    };
    let mut matched = 0u64;
    // Per table: the first row (lowest name) journaled nowhere, and how many are not.
    let mut unjournaled: Vec<(&str, Option<Vec<u8>>, u64)> = Vec::new();
    for (what, rows_sql, kinds) in [
        (
            "message",
            "SELECT rseq, id, digest, key, sig FROM messages ORDER BY id",
            "'message.accepted'",
        ),
        (
            "receipt",
            "SELECT rseq, digest, digest, key, sig FROM receipts ORDER BY digest",
            "'receipt.delivered', 'receipt.acknowledged'",
        ),
    ] {
        let is_message = what == "message";
        let mut st = conn.prepare(rows_sql)?;
        let mut rows = st.query([])?;
        // A row's name (id or digest) and its journal record.
        type Named = (Vec<u8>, Vec<u8>);
        let mut next_row = || -> Result<Option<Named>, StoreError> {
            let Some(r) = rows.next()? else {
                return Ok(None);
            };
            let part = |i| stored_blob(r, i, what, path);
            Ok(Some((part(1)?, record_of(&part(2)?, &part(3)?, &part(4)?))))
        };
        let mut row = next_row()?;
        let mut missing: (Option<Vec<u8>>, u64) = (None, 0);
        // The entries in the order of the names they give (hex, which `lower` makes sort
        // as the bytes it stands for), and of their numbers under one name.
        let mut st = conn.prepare(&format!(
            "SELECT seq, kind, subject, payload FROM journal WHERE kind IN ({kinds})
             ORDER BY lower(subject), seq"
        ))?;
        let mut entries = st.query([])?;
        while let Some(r) = entries.next()? {
            let seq: i64 = r.get(0)?;
            let kind: String = r.get(1)?;
            let subject: String = r.get(2)?;
            let payload: Vec<u8> = r.get(3)?;
            let Ok(name) = hex::decode(&subject) else {
                bad(
                    seq,
                    format!("journal entry {seq} ({kind}) names {subject:?}"),
                );
                continue;
            };
            // Rows before the name this entry gives have none.
            while let Some((key, _)) = row.as_ref().filter(|(key, _)| *key < name) {
                missing.0.get_or_insert_with(|| key.clone());
                missing.1 += 1;
                row = next_row()?;
            }
            let Some((_, stored)) = row.take_if(|(key, _)| *key == name) else {
                bad(
                    seq,
                    format!("journal entry {seq} ({kind}) names {subject}, which is not stored"),
                );
                continue;
            };
            row = next_row()?;
            let journaled = if payload.len() == JOURNAL_RECORD_BYTES {
                Ok(payload)
            } else if is_message {
                whole_record::<Envelope>(&payload)
            } else {
                whole_record::<Receipt>(&payload)
            };
            match journaled {
                Err(e) => bad(
                    seq,
                    format!("journal entry {seq} ({kind}) does not decode: {e}"),
                ),
                Ok(journaled) if journaled != stored => bad(
                    seq,
                    format!("stored {what} {subject} differs from journal entry {seq}"),
                ),
                Ok(_) => matched += 1,
            }
        }
        while let Some((key, _)) = row {
            missing.0.get_or_insert(key);
            missing.1 += 1;
            row = next_row()?;
        }
        unjournaled.push((what, missing.0, missing.1));
    }
    if let Some((_, detail)) = first_bad {
        return Err(corrupt(detail));
    }
    for (what, first, n) in unjournaled {
        if let Some(name) = first {
            return Err(corrupt(format!(
                "stored {what} {} has no journal entry ({n} in all)",
                hex::encode(name)
            )));
        }
    }
    Ok(matched)
}

/// Read-only access for sessions.
pub(crate) struct Readers {
    conns: Vec<Mutex<Connection>>,
    /// Which messages each recipient is owed (the writer's, read under its lock).
    queues: Arc<Mutex<QueueIndex>>,
}

/// A queued item: queue position and the item as signed.
pub(crate) type Queued<T> = (i64, Signed<T>);

/// A queued message: queue position, id, and the message as signed.
pub(crate) type QueuedMessage = (i64, MessageId, Signed<Envelope>);

/// The rows of one page read from a queue, and their signed bytes together: a page ends at
/// [`crate::limits::FETCH_PAGE_BYTES`] (or at its row limit, which the query sets).
struct Page<T> {
    rows: Vec<T>,
    bytes: usize,
}

impl<T> Default for Page<T> {
    fn default() -> Self {
        Self {
            rows: Vec::new(),
            bytes: 0,
        }
    }
}

impl<T> Page<T> {
    /// Adds a row of `bytes` signed bytes; whether the page is now full.
    fn push(&mut self, bytes: usize, row: T) -> bool {
        self.bytes += bytes;
        self.rows.push(row);
        self.bytes >= crate::limits::FETCH_PAGE_BYTES
    }
}

impl Readers {
    pub(crate) fn open(path: &Path, queues: Arc<Mutex<QueueIndex>>) -> Result<Self, StoreError> {
        let mut conns = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            conns.push(Mutex::new(hotline_store::open(path, false)?));
        }
        Ok(Self { conns, queues })
    }

    fn with<R>(
        &self,
        key: usize,
        f: impl FnOnce(&Connection) -> rusqlite::Result<R>,
    ) -> Result<R, StoreError> {
        let m = &self.conns[key % self.conns.len()];
        // A poisoned lock means a reader panicked mid-query; the connection itself is fine.
        let conn = m.lock().unwrap_or_else(|p| p.into_inner());
        f(&conn).map_err(StoreError::from)
    }

    /// Messages queued for `recipient` after queue position `after`, oldest first.
    pub(crate) fn backlog(
        &self,
        key: usize,
        recipient: &ParticipantId,
        after: i64,
        limit: usize,
    ) -> Result<(Vec<QueuedMessage>, bool), StoreError> {
        // Positions committed and not yet receipted; the lock is not held while reading.
        let positions = self
            .queues
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .after(recipient, after, limit);
        if positions.is_empty() {
            return Ok((Vec::new(), false));
        }
        let wanted_n = positions.len();
        let (first, last) = (positions[0], positions[positions.len() - 1]);
        let row = |r: &rusqlite::Row<'_>| -> rusqlite::Result<QueuedMessage> {
            let id: Vec<u8> = r.get(1)?;
            let id: [u8; 16] = id.try_into().map_err(|_| {
                rusqlite::Error::FromSqlConversionFailure(
                    1,
                    rusqlite::types::Type::Blob,
                    "stored message id has the wrong length".into(),
                )
            })?;
            Ok((r.get(0)?, MessageId(id), signed_from_row(r, 2)?))
        };
        self.with(key, |c| {
            // Mostly this recipient's messages in that span (a fan-out, or a backlog of
            // its own): one range scan, skipping the others. Sparse: one look-up each.
            if last - first < 2 * positions.len() as i64 {
                let mut st = c.prepare_cached(
                    "SELECT rseq, id, bytes, key, sig FROM messages WHERE rseq BETWEEN ?1 AND ?2 ORDER BY rseq",
                )?;
                let mut wanted = positions.iter().peekable();
                let mut page = Page::default();
                let mut rows = st.query([first, last])?;
                while let Some(r) = rows.next()? {
                    let rseq: i64 = r.get(0)?;
                    while wanted.next_if(|w| **w < rseq).is_some() {}
                    if wanted.next_if_eq(&&rseq).is_some() {
                        let q = row(r)?;
                        if page.push(q.2.bytes().len(), q) {
                            break;
                        }
                    }
                }
                let more = page.rows.len() < wanted_n;
                Ok((page.rows, more))
            } else {
                let mut st = c.prepare_cached(
                    "SELECT rseq, id, bytes, key, sig FROM messages WHERE rseq = ?1",
                )?;
                let mut page = Page::default();
                for rseq in positions {
                    let q = st.query_row([rseq], row)?;
                    if page.push(q.2.bytes().len(), q) {
                        break;
                    }
                }
                let more = page.rows.len() < wanted_n;
                Ok((page.rows, more))
            }
        })
    }

    /// Receipts queued for `sender` after queue position `after`, oldest first.
    pub(crate) fn receipts(
        &self,
        key: usize,
        sender: &ParticipantId,
        after: i64,
        limit: usize,
    ) -> Result<(Vec<Queued<Receipt>>, bool), StoreError> {
        self.with(key, |c| {
            let mut st = c.prepare_cached(
                "SELECT q.rseq, r.bytes, r.key, r.sig FROM rqueue q JOIN receipts r ON r.rseq = q.rseq
                 WHERE q.recipient = ?1 AND q.rseq > ?2 ORDER BY q.rseq LIMIT ?3",
            )?;
            let mut rows = st.query(params![sender.as_str(), after, limit as i64])?;
            let mut page = Page::default();
            while let Some(r) = rows.next()? {
                let q: Queued<Receipt> = (r.get::<_, i64>(0)?, signed_from_row(r, 1)?);
                if page.push(q.1.bytes().len(), q) {
                    // Whether there is more is for the next read to say.
                    return Ok((page.rows, true));
                }
            }
            Ok((page.rows, false))
        })
    }

    /// The highest sequence number accepted from `participant` (0 if none).
    pub(crate) fn last_seq(
        &self,
        key: usize,
        participant: &ParticipantId,
    ) -> Result<u64, StoreError> {
        self.with(key, |c| {
            c.prepare_cached(SENDER_LAST_SEQ)?
                .query_row([participant.as_str()], |r| r.get::<_, Option<u64>>(0))
                .map(|v| v.unwrap_or(0))
        })
    }
}

fn signed_from_row<T: hotline_proto::SignedPayload>(
    r: &rusqlite::Row<'_>,
    first: usize,
) -> rusqlite::Result<Signed<T>> {
    let bytes: Vec<u8> = r.get(first)?;
    let key: Vec<u8> = r.get(first + 1)?;
    let sig: Vec<u8> = r.get(first + 2)?;
    let bad = |what: &str| {
        rusqlite::Error::FromSqlConversionFailure(
            first,
            rusqlite::types::Type::Blob,
            format!("stored {what} has the wrong length").into(),
        )
    };
    let key: [u8; 32] = key.try_into().map_err(|_| bad("key"))?;
    let sig: [u8; 64] = sig.try_into().map_err(|_| bad("signature"))?;
    Ok(Signed::from_parts(bytes, PublicKey(key), Signature(sig)))
}

/// What the writer keeps in memory about a recently accepted message, so that the
/// receipts for it (one per recipient, within seconds) are checked without reading the
/// message again. Messages never change once stored, so an entry cannot go stale.
struct Held {
    sender: ParticipantId,
    digest: Digest,
    /// The recipients, sorted (as `routing::resolve` returns them), for a binary search per
    /// receipt item (a 37-way message gets 37 receipts naming it; scanning the stored
    /// comma-separated list for each was 3 % of the relay at fanout37 maximum).
    recipients: Box<[ParticipantId]>,
    accepted_at_ms: u64,
    /// Its position in the recipients' queues.
    rseq: i64,
}

/// The most recently accepted messages' [`Held`] entries, oldest evicted first.
struct HeldCache {
    map: HashMap<MessageId, Held>,
    order: std::collections::VecDeque<MessageId>,
}

impl HeldCache {
    fn new() -> Self {
        Self {
            map: HashMap::new(),
            order: std::collections::VecDeque::new(),
        }
    }

    fn insert(&mut self, id: MessageId, held: Held) {
        if self.map.insert(id, held).is_none() {
            self.order.push_back(id);
        }
        while self.order.len() > crate::limits::HELD_CACHE_MESSAGES {
            if let Some(old) = self.order.pop_front() {
                self.map.remove(&old);
            }
        }
    }
}

/// Messages a batch queued for one recipient.
struct Added {
    /// The first one's position.
    first: i64,
    count: usize,
}

/// Per-batch view of the writer's caches: changes apply only if the batch commits.
struct Pending {
    last_seq: HashMap<ParticipantId, u64>,
    /// Messages this batch queued, by recipient (added to the index after the commit).
    queued: HashMap<ParticipantId, Added>,
    /// Positions this batch's receipts took out of the index (put back if it fails).
    removed: Vec<(ParticipantId, i64)>,
    /// Cursors this batch moved or created.
    cursors: HashMap<ParticipantId, i64>,
    /// Recipients whose `ahead` rows this batch added (true) or deleted to the last one
    /// (false): applied to [`Writer::ahead`] only if it commits, as a failed commit leaves
    /// the rows as they were.
    ahead: HashMap<ParticipantId, bool>,
    /// The newest message position, this batch's included.
    newest: i64,
    /// What to post to sessions' mailboxes once the batch has committed.
    posts: Vec<(ParticipantId, Kind, Posted)>,
    replies: Vec<(mpsc::Sender<RelayToNode>, RelayToNode)>,
    /// How this batch changes each sender's row count in `rqueue` (receipts queued for it,
    /// less those its `ReceiptsStored` took out): `hotline_relay_forward_queue_depth`.
    forward_delta: HashMap<ParticipantId, i64>,
    accepted: u64,
    receipts: u64,
    /// Valid receipts answered as stored but not kept: they told nothing new.
    redundant: u64,
    /// Forwards of receipts for messages not held here refused for a full forward queue.
    unforwarded: u64,
    /// Receipts this batch keeps only for items naming messages not held here, by signer
    /// (added to [`Writer::foreign_budget`] after the commit, and only if it succeeds).
    foreign_kept: HashMap<ParticipantId, u64>,
    /// Receipts not kept because their signer is over that budget, who signed them, and
    /// the forwards they would have made (`hotline_relay_receipts_unforwarded_total`
    /// counts these with `unforwarded`).
    over_budget: u64,
    over_budget_signers: BTreeSet<ParticipantId>,
    over_budget_forwards: u64,
    latencies_ms: Vec<u64>,
    held: Vec<(MessageId, Held)>,
}

/// The writer thread's state.
pub(crate) struct Writer {
    /// The write-ahead log's sync on its own thread (thread hosting only; `None`: the
    /// connection is at `synchronous=FULL` and each commit syncs, [`crate::walsync`]).
    /// Declared before `conn` so that, however the writer ends (a panic too), the thread
    /// syncs and answers what it holds while the connection still keeps the log open.
    wal_sync: Option<WalSync>,
    conn: Connection,
    journal: Journal,
    last_seq: HashMap<ParticipantId, u64>,
    /// Each recipient's cursor, as committed.
    cursors: HashMap<ParticipantId, i64>,
    /// Recipients with a cursor whose queues are not in memory: those not active on the
    /// roster of version `roster_followed` ([`load_queues`], [`follow_roster`]).
    unread: HashSet<ParticipantId>,
    /// The version of the roster whose active participants' queues are in memory.
    roster_followed: u64,
    /// Recipients that may have rows in `ahead`, as committed (a hint: a spare one costs a
    /// statement, a missing one leaves rows the cursor has passed until the next start).
    ahead: HashSet<ParticipantId>,
    /// The newest committed message position.
    newest: i64,
    /// The newest message position when the writer last looked for cursors of recipients
    /// owed nothing to move up ([`idle_cursors_up`]); 0 at each start, so that a store
    /// holding at least [`IDLE_CURSOR_LAG_MAX`] messages is looked at in the first commit.
    idle_swept_at: i64,
    /// [`IDLE_CURSOR_LAG_MAX`], which unit tests lower to look often.
    idle_lag_max: i64,
    /// Message rows this start read to rebuild the queues ([`load_queues`]): logged, and
    /// what tests of a start's cost look at.
    start_rows_read: u64,
    /// Each sender's row count in `rqueue`, as committed.
    forward_depths: HashMap<ParticipantId, i64>,
    ctx: WriterContext,
    held: HeldCache,
    /// Background WAL checkpoints (thread hosting only; `None`: SQLite's automatic
    /// checkpoint runs in this writer's commits at its default 1,000 pages).
    checkpointer: Option<Checkpointer>,
    /// Batches committed, counted only for [`crate::Hosting::fail_writer_after`].
    commits: u64,
    /// Whether the last commit failed: until one succeeds, batches are posted only after
    /// their commit, so that a disk that stays full does not have every batch's recipients
    /// recalled (`Writer::recall`), and their nodes reconnect, again and again.
    last_commit_failed: bool,
    /// While commits fail (thread hosting only): since when, by both clocks, and when to
    /// try the store again with nothing to commit ([`Writer::probe`]). `None` once a commit
    /// succeeds.
    failing: Option<Failing>,
    /// When to read again the queues of participants active again on the roster in force,
    /// after a failed read ([`Writer::follow`], [`follow_roster`]): `None` while the
    /// roster in force is followed, or no read of it has failed (thread hosting only).
    follow_again_at: Option<std::time::Instant>,
    /// Errors of those reads tried again while idle: one line at most every
    /// [`crate::limits::ROSTER_FOLLOW_FAILED_REPEAT_MS`], the rest at debug; new once a
    /// read succeeds.
    follow_failed: Throttle,
    /// Warnings about refused forwards: one at most every 10 s, however fast they come.
    unforwarded: Throttle,
    /// Receipts each signer had kept today only for messages not held here, as committed.
    foreign_budget: ForeignBudget,
    /// Warnings about receipts over that budget, as `unforwarded`, and the signers refused
    /// since the last one (roster participants, so a few hundred at most).
    over_budget: Throttle,
    over_budget_signers: BTreeSet<ParticipantId>,
}

/// Since when the writer's commits have failed, and when it next tries a write of its own
/// ([`Writer::probe`]).
#[derive(Debug, Clone, Copy)]
struct Failing {
    since: std::time::Instant,
    since_ms: u64,
    probe_at: std::time::Instant,
}

/// Milliseconds in a day: the day a receipt counts for in [`ForeignBudget`] is the writer's
/// clock (`now_ms`) divided by this, a UTC day.
const DAY_MS: u64 = 86_400_000;

/// How far back before the day's start [`ForeignBudget::rebuilt`] reads on: the relay's
/// clock may have stepped back, leaving a receipt of the day after one stored earlier (as
/// `report.rs` reads its periods).
const CLOCK_STEP_MARGIN_MS: u64 = 10 * 60 * 1000;

/// Positions by which the cursor of a recipient owed nothing may lag the newest message
/// before the writer moves it up to there: a start reads up to about twice this many
/// messages owed to no one, and each idle recipient costs a cursor row once per this many
/// messages (see [`load_queues`]).
const IDLE_CURSOR_LAG_MAX: i64 = 1024;

/// Moves up to the newest message (`p.newest`, this batch's included) the cursor of each
/// recipient owed nothing whose cursor lags it by more than `lag_max` ([`IDLE_CURSOR_LAG_MAX`]), in the
/// batch `p` (so written with the batch's other cursors, and only if it commits). Owed
/// nothing: no committed position left in its queue (this batch's receipts already taken
/// out), none queued by this batch, and no position receipted ahead of its cursor (a hint
/// that may be spare: such a recipient just keeps its cursor). Every message addressed to
/// it up to the newest is then receipted, which is what a cursor there says. A recipient
/// whose queue is not in memory (`unread`: off the roster) is never moved: an empty queue
/// says nothing of what it is owed. O(recipients with a cursor) under the queues' lock,
/// which the caller pays once per [`IDLE_CURSOR_LAG_MAX`] positions.
fn idle_cursors_up(
    index: &Mutex<QueueIndex>,
    (cursors, unread): (&HashMap<ParticipantId, i64>, &HashSet<ParticipantId>),
    ahead: &HashSet<ParticipantId>,
    lag_max: i64,
    p: &mut Pending,
) {
    let ix = index.lock().unwrap_or_else(|e| e.into_inner());
    let mut idle = Vec::new();
    // A cursor this batch created is for a recipient it queued a message for: not idle.
    for (who, committed) in cursors {
        let cursor = p.cursors.get(who).copied().unwrap_or(*committed);
        if p.newest.saturating_sub(cursor) <= lag_max
            || unread.contains(who)
            || ix.len(who) > 0
            || p.queued.contains_key(who)
            || p.ahead
                .get(who)
                .copied()
                .unwrap_or_else(|| ahead.contains(who))
        {
            continue;
        }
        idle.push(who.clone());
    }
    drop(ix);
    for who in idle {
        p.cursors.insert(who, p.newest);
    }
}

/// What [`follow_roster`] changed in memory.
#[derive(Debug, Default)]
struct Followed {
    /// Participants active again whose queues it read, with how many messages each is owed.
    read: Vec<(ParticipantId, usize)>,
    /// Participants no longer active whose queues it let go.
    let_go: Vec<ParticipantId>,
}

/// Makes the queues in memory those of the participants active on `roster`, as a start
/// reads them ([`load_queues`]): a participant taken off (revoked, or no longer listed) has
/// its queue let go, and goes into `unread`; one in `unread` that `roster` lists as active
/// again has its queue read from its cursor ([`queue_of`]: the messages since, once). Its
/// cursor and positions receipted ahead are the store's (its cursor untouched while it was
/// off, its receipts in flight then written to `ahead`, `store_receipt`), so it is owed
/// exactly what it was, less what those named. Called between batches or before a batch's
/// commands run: every position it reads is committed, and those a batch queues come after
/// them.
fn follow_roster(
    conn: &Connection,
    index: &Mutex<QueueIndex>,
    (cursors, unread): (&HashMap<ParticipantId, i64>, &mut HashSet<ParticipantId>),
    roster: &Roster,
) -> Result<Followed, StoreError> {
    let mut read = Vec::new();
    // Read before the lock is taken: sessions share it.
    for who in unread.iter().filter(|p| roster.active(p).is_ok()) {
        let cursor = cursors.get(who).copied().unwrap_or(0);
        let (owed, rows_read) = queue_of(conn, who, cursor)?;
        debug!(participant = %who, rows_read, "queue read for a participant active again");
        read.push((who.clone(), owed));
    }
    let mut ix = index.lock().unwrap_or_else(|e| e.into_inner());
    let mut f = Followed::default();
    for (who, owed) in read {
        for rseq in &owed {
            ix.push(&who, *rseq);
        }
        unread.remove(&who);
        f.read.push((who, owed.len()));
    }
    for who in cursors.keys() {
        if !unread.contains(who) && roster.active(who).is_err() {
            ix.forget(who);
            unread.insert(who.clone());
            f.let_go.push(who.clone());
        }
    }
    Ok(f)
}

/// Each signer's budget of receipts kept only because they name messages this relay does
/// not hold (`limits.foreign_receipts_per_day_max`, PROTOCOL.md 7.5).
///
/// The relay cannot check such a receipt, and the sender it is forwarded to confirms it at
/// once, so neither the receipt rate nor `forward_foreign_max` bounds what a member signing
/// receipts for made-up messages makes the relay keep for good; this does, per UTC day.
/// Only the committed counts are here: a batch's are in `Pending::foreign_kept` until it
/// commits, so a batch that fails counts nothing.
///
/// Kept in memory, one entry per signer (the day it counts for and the count, replaced on a
/// signer's first such receipt of a new day), so it holds at most one entry per participant
/// seen since the start, and a check costs one map lookup and no SQL. At a start it is
/// rebuilt from the store ([`ForeignBudget::rebuilt`]): otherwise every restart (after a
/// failed sync, a crash, an upgrade) gave a signer over its budget a new one, and the relay
/// kept up to another day's worth of its receipts each time.
#[derive(Debug)]
struct ForeignBudget {
    per_day_max: u64,
    /// Signer: (day, receipts kept that day).
    kept: HashMap<ParticipantId, (u64, u64)>,
}

impl ForeignBudget {
    fn new(per_day_max: u64) -> Self {
        Self {
            per_day_max,
            kept: HashMap::new(),
        }
    }

    /// The budgets of `now_ms`'s UTC day as the store holds them: each signer's receipts
    /// stored that day that name no message held here. Every such receipt was kept only
    /// for its foreign items, so it counted against its signer's budget. One that names a
    /// held message too counted only if that item told nothing new, which cannot be told
    /// afterwards; it is not counted, so a budget rebuilt is never more used than it was
    /// (nor is a receipt whose message came here after it). A receipt that cannot be read
    /// is not counted either: the start-up check has already refused a damaged store.
    ///
    /// It reads the receipts newest first (by position) and stops at the first one stored
    /// [`CLOCK_STEP_MARGIN_MS`] before the day began (a clock stepped back leaves older
    /// times among newer positions), decoding each and looking up its items until one is
    /// held: about one look-up per receipt of the day, beside the start-up check that
    /// already hashes every receipt the store holds.
    fn rebuilt(conn: &Connection, per_day_max: u64, now_ms: u64) -> Result<Self, StoreError> {
        let mut budget = Self::new(per_day_max);
        if per_day_max == 0 {
            return Ok(budget);
        }
        let day = now_ms / DAY_MS;
        let (start, end) = (day * DAY_MS, (day + 1) * DAY_MS);
        let mut newest_first =
            conn.prepare("SELECT recipient, bytes, stored_at_ms FROM receipts ORDER BY rseq DESC")?;
        let mut rows = newest_first.query([])?;
        let mut held = conn.prepare("SELECT 1 FROM messages WHERE id = ?1")?;
        while let Some(r) = rows.next()? {
            let stored: u64 = r.get(2)?;
            if stored.saturating_add(CLOCK_STEP_MARGIN_MS) < start {
                break;
            }
            if !(start..end).contains(&stored) {
                continue;
            }
            let Ok(signer) = ParticipantId::new(&r.get::<_, String>(0)?) else {
                continue;
            };
            let bytes: Vec<u8> = r.get(1)?;
            let Ok(receipt) = hotline_proto::codec::decode::<Receipt>(
                &bytes,
                <Receipt as hotline_proto::SignedPayload>::BYTES_MAX,
            ) else {
                continue;
            };
            let mut foreign_only = true;
            for item in &receipt.items {
                if held.exists([&item.id.0[..]])? {
                    foreign_only = false;
                    break;
                }
            }
            if foreign_only {
                budget.add(signer, day, 1);
            }
        }
        Ok(budget)
    }

    /// Whether `signer` may have one more kept on `day`, besides the committed ones and
    /// `pending` kept by the batch being built.
    fn allows(&self, signer: &ParticipantId, day: u64, pending: u64) -> bool {
        let committed = match self.kept.get(signer) {
            Some(&(d, n)) if d == day => n,
            _ => 0,
        };
        committed.saturating_add(pending) < self.per_day_max
    }

    /// Counts `n` more kept for `signer` on `day` (after their commit).
    fn add(&mut self, signer: ParticipantId, day: u64, n: u64) {
        let e = self.kept.entry(signer).or_insert((day, 0));
        if e.0 != day {
            *e = (day, 0);
        }
        e.1 = e.1.saturating_add(n);
    }
}

impl Writer {
    pub(crate) fn new(conn: Connection, ctx: WriterContext) -> Result<Self, StoreError> {
        Self::new_at(conn, ctx, crate::now_ms())
    }

    /// [`Writer::new`], starting at `now_ms` (ms since the epoch): tests give their own.
    fn new_at(conn: Connection, ctx: WriterContext, now_ms: u64) -> Result<Self, StoreError> {
        let journal = Journal::load(&conn)?;
        let mut last_seq = HashMap::new();
        {
            let mut st = conn.prepare(SENDERS_LAST_SEQ)?;
            let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, u64>(1)?)))?;
            for row in rows {
                let (p, s) = row?;
                if let Ok(p) = ParticipantId::new(&p) {
                    last_seq.insert(p, s);
                }
            }
        }
        // Positions receipted ahead that a cursor has since passed are of no more use.
        conn.execute(
            "DELETE FROM ahead WHERE rseq <= (SELECT c.rseq FROM cursors c WHERE c.recipient = ahead.recipient)",
            [],
        )?;
        let roster = ctx.roster.borrow().clone();
        let loaded = load_queues(&conn, Whose::ActiveOn(&roster))?;
        if !loaded.unread.is_empty() {
            tracing::info!(
                participants = loaded.unread.len(),
                roster_version = roster.version,
                "the queues of participants not active on the roster were not read: what they are owed stays in the store, and is read if a roster lists them again"
            );
        }
        *ctx.queues.lock().unwrap_or_else(|p| p.into_inner()) = loaded.index;
        let forward_depths = {
            let mut st =
                conn.prepare("SELECT recipient, count(*) FROM rqueue GROUP BY recipient")?;
            let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
            let mut counts = HashMap::new();
            for row in rows {
                let (p, n) = row?;
                if let Ok(p) = ParticipantId::new(&p) {
                    counts.insert(p, n);
                }
            }
            ctx.metrics.add_forward_depths(&counts);
            counts
        };
        let foreign_budget =
            ForeignBudget::rebuilt(&conn, ctx.foreign_receipts_per_day_max, now_ms)?;
        let w = Self {
            conn,
            journal,
            last_seq,
            cursors: loaded.cursors,
            unread: loaded.unread,
            roster_followed: roster.version,
            ahead: loaded.ahead,
            newest: loaded.newest,
            idle_swept_at: 0,
            idle_lag_max: IDLE_CURSOR_LAG_MAX,
            start_rows_read: loaded.rows_read,
            forward_depths,
            ctx,
            held: HeldCache::new(),
            checkpointer: None,
            wal_sync: None,
            commits: 0,
            last_commit_failed: false,
            failing: None,
            follow_again_at: None,
            follow_failed: Writer::follow_failed_throttle(),
            unforwarded: Throttle::new(std::time::Duration::from_secs(10)),
            foreign_budget,
            over_budget: Throttle::new(std::time::Duration::from_secs(10)),
            over_budget_signers: BTreeSet::new(),
        };
        debug!(
            rows_read = w.start_rows_read,
            "queues rebuilt from the messages after the lowest cursor"
        );
        w.publish_depths();
        Ok(w)
    }

    /// Total messages queued, for start-up logs.
    pub(crate) fn queued_total(&self) -> usize {
        self.ctx
            .queues
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .total()
    }

    fn publish_depths(&self) {
        let ix = self.ctx.queues.lock().unwrap_or_else(|p| p.into_inner());
        self.ctx
            .metrics
            .set_queue_depths(ix.depths().map(|(p, n)| (p, n as i64)));
    }

    /// Runs until every command sender is gone, committing in groups, on its own thread.
    /// It waits by parking the thread (woken by the channel, or at a deferred commit's
    /// deadline), so it needs no runtime timer and outlives a runtime shutdown cleanly.
    ///
    /// With a `checkpointer`, each time it is about to wait it lets that thread know, so
    /// that WAL checkpoints run while it is idle rather than inside its commits, and its own
    /// automatic checkpoint is raised to the fallback for sustained load
    /// ([`crate::checkpoint`]).
    ///
    /// It starts the write-ahead log's sync thread ([`crate::walsync`]) and hands it each
    /// commit's answers; if a sync fails it refuses what it holds and stops, returning why
    /// (the relay then stops: [`crate::RelayHandle::failed`]). `None`: it stopped because
    /// its commands ended.
    pub(crate) fn run(
        mut self,
        mut rx: mpsc::Receiver<Command>,
        checkpointer: Option<Checkpointer>,
    ) -> Option<String> {
        if checkpointer.is_some() {
            let raised = self.conn.execute_batch(&format!(
                "PRAGMA wal_autocheckpoint = {}",
                crate::checkpoint::INLINE_CHECKPOINT_FRAMES
            ));
            if let Err(e) = raised {
                tracing::warn!(error = %e, "cannot raise the writer's automatic checkpoint; it keeps SQLite's default");
            }
            self.checkpointer = checkpointer;
        }
        self.wal_sync = self.start_wal_sync();
        struct Unpark(std::thread::Thread);
        impl std::task::Wake for Unpark {
            fn wake(self: Arc<Self>) {
                self.0.unpark();
            }
        }
        let waker = std::task::Waker::from(Arc::new(Unpark(std::thread::current())));
        let mut cx = std::task::Context::from_waker(&waker);
        let mut batch = Vec::with_capacity(self.ctx.batch_max);
        let mut deadline: Option<std::time::Instant> = None;
        let stopped = loop {
            let next = loop {
                // A failed sync wakes this thread (`WalSync`), so a wait ends here too.
                if let Some(e) = self.wal_sync.as_ref().and_then(WalSync::failed) {
                    break Err(e);
                }
                match rx.poll_recv(&mut cx) {
                    std::task::Poll::Ready(Some(c)) => break Ok(Next::Command(c)),
                    std::task::Poll::Ready(None) => break Ok(Next::Closed),
                    std::task::Poll::Pending => {
                        let now = std::time::Instant::now();
                        if deadline.is_some_and(|d| now >= d) {
                            break Ok(Next::Deadline);
                        }
                        // Commits failed and nothing has come to commit since: the store
                        // is tried with a write of its own, so that `/health` does not stay
                        // `store_failing` for want of traffic once the disk takes writes.
                        if self.failing.is_some_and(|f| now >= f.probe_at) {
                            self.probe();
                            continue;
                        }
                        // A failed read of the queues of participants active again: read
                        // again now, not at the next batch, which an idle relay never makes.
                        if self.follow_again_at.is_some_and(|t| now >= t) {
                            self.follow_again();
                            continue;
                        }
                        if let Some(c) = &mut self.checkpointer {
                            c.idle();
                        }
                        let probe_at = self.failing.map(|f| f.probe_at);
                        match deadline
                            .into_iter()
                            .chain(probe_at)
                            .chain(self.follow_again_at)
                            .min()
                        {
                            None => std::thread::park(),
                            Some(d) => std::thread::park_timeout(d - now),
                        }
                    }
                }
            };
            let next = match next {
                Ok(next) => next,
                Err(e) => {
                    // Deferred receipts, not yet committed, and every command still waiting
                    // in the queue: refused, as what the failed sync was to cover was.
                    refuse_waiting(&mut batch, &mut rx, &format!("relay storage: {e}"));
                    break Some(format!("the store writer stopped: {e}"));
                }
            };
            let now = std::time::Instant::now();
            match self.step_or_panic(next, &mut rx, &mut batch, &mut deadline, now) {
                Ok(true) => {}
                Ok(false) => break None,
                Err(why) => {
                    // A panic (a bug): as after a failed sync.
                    refuse_waiting(&mut batch, &mut rx, &format!("relay storage: {why}"));
                    break Some(format!("the store writer stopped: {why}"));
                }
            }
        };
        // Stops the checkpoint thread (after the checkpoint it may be running), and the sync
        // thread (after it has synced and answered what it holds).
        drop(self.checkpointer.take());
        drop(self.wal_sync.take());
        match &stopped {
            None => tracing::info!("store writer stopped"),
            Some(why) => tracing::error!(reason = %why, "store writer stopped"),
        }
        stopped
    }

    /// Starts the write-ahead log's sync thread and lowers the connection to
    /// `synchronous=NORMAL`; where either fails, logs why and keeps syncing in each commit.
    fn start_wal_sync(&mut self) -> Option<WalSync> {
        let keep = "the store writer syncs in each commit instead (synchronous=FULL)";
        let db = PathBuf::from(self.conn.path()?);
        let ws = match WalSync::start(
            &db,
            self.ctx.metrics.clone(),
            std::thread::current(),
            self.ctx.fail_syncs_after,
        ) {
            Ok(ws) => ws,
            Err(e) => {
                tracing::warn!(error = %e, "{keep}");
                return None;
            }
        };
        match self.conn.pragma_update(None, "synchronous", "NORMAL") {
            Ok(()) => Some(ws),
            Err(e) => {
                tracing::warn!(error = %e, "cannot lower synchronous to NORMAL: {keep}");
                None
            }
        }
    }

    /// As [`Writer::run`], as a task that blocks its runtime during each commit: for a
    /// single-threaded deterministic simulation only (`Hosting::writer_on_runtime`).
    /// Returns why if it stopped on its own (a panic), as [`Writer::run`] does.
    pub(crate) async fn run_on_runtime(
        mut self,
        mut rx: mpsc::Receiver<Command>,
    ) -> Option<String> {
        let mut batch = Vec::with_capacity(self.ctx.batch_max);
        let mut deadline: Option<tokio::time::Instant> = None;
        let stopped = loop {
            let next = match deadline {
                None => match rx.recv().await {
                    Some(c) => Next::Command(c),
                    None => Next::Closed,
                },
                Some(d) => match tokio::time::timeout_at(d, rx.recv()).await {
                    Ok(Some(c)) => Next::Command(c),
                    Ok(None) => Next::Closed,
                    Err(_) => Next::Deadline,
                },
            };
            let now = tokio::time::Instant::now();
            match self.step_or_panic(next, &mut rx, &mut batch, &mut deadline, now) {
                Ok(true) => {}
                Ok(false) => break None,
                Err(why) => {
                    // As `refuse_waiting` does, but waiting on the runtime for a send
                    // already under way (this task may not block it).
                    let refusal = format!("relay storage: {why}");
                    for cmd in batch.drain(..) {
                        refuse_unrun(cmd, &refusal);
                    }
                    rx.close();
                    while let Some(cmd) = rx.recv().await {
                        refuse_unrun(cmd, &refusal);
                    }
                    break Some(format!("the store writer stopped: {why}"));
                }
            }
        };
        match &stopped {
            None => tracing::info!("store writer stopped"),
            Some(why) => tracing::error!(reason = %why, "store writer stopped"),
        }
        stopped
    }

    /// [`Writer::step`], with a panic in it (a bug) caught and returned as why the writer
    /// must stop. The writer then stops as after a failed sync: it answers every command
    /// left in its batch and its queue (`StorageUnavailable`, an operator's command with
    /// the error) and returns why, so that the relay stops and says so
    /// ([`crate::RelayHandle::failed`]). Before, the panic unwound through the writer and
    /// dropped its queue: those commands went unanswered, and their nodes learnt of them
    /// only at their next connection. The commands of the commit the panic interrupted
    /// are lost with it (their sessions' channels see only that); what earlier commits
    /// handed the sync thread is still synced and answered when the writer ends.
    ///
    /// Catching is sound here: the writer only stops after it, and what it leaves behind
    /// is safe to drop (a transaction the panic interrupted rolls back as it unwinds; the
    /// locks it shares recover from poisoning).
    fn step_or_panic<I>(
        &mut self,
        next: Next,
        rx: &mut mpsc::Receiver<Command>,
        batch: &mut Vec<Command>,
        deadline: &mut Option<I>,
        now: I,
    ) -> Result<bool, String>
    where
        I: std::ops::Add<std::time::Duration, Output = I> + PartialOrd + Copy,
    {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.step(next, rx, batch, deadline, now)
        }))
        .map_err(|panic| {
            let message = panic
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
                .unwrap_or("no message");
            format!("it panicked (a bug): {message}")
        })
    }

    /// One turn of the commit loop (both hostings), given what the wait returned: drains
    /// what is waiting and commits what [`plan`] says.
    /// Returns false when the channel has closed (after committing what is left).
    fn step<I>(
        &mut self,
        next: Next,
        rx: &mut mpsc::Receiver<Command>,
        batch: &mut Vec<Command>,
        deadline: &mut Option<I>,
        now: I,
    ) -> bool
    where
        I: std::ops::Add<std::time::Duration, Output = I> + PartialOrd + Copy,
    {
        match next {
            Next::Deadline => {
                self.commit_batch(batch);
                *deadline = None;
                true
            }
            Next::Closed => {
                if !batch.is_empty() {
                    self.commit_batch(batch);
                }
                false
            }
            Next::Command(first) => {
                batch.push(first);
                while batch.len() < self.ctx.batch_max {
                    match rx.try_recv() {
                        Ok(c) => batch.push(c),
                        Err(_) => break,
                    }
                }
                let operators: Vec<Command> = batch.extract_if(.., |c| is_operators(c)).collect();
                if !operators.is_empty() {
                    // An operator's rewind or reloaded roster, rare: what came with it
                    // commits first, all of it, and then each in a transaction of its own.
                    if !batch.is_empty() {
                        self.commit_batch(batch);
                    }
                    *deadline = None;
                    for c in operators {
                        match c {
                            Command::Rewind {
                                only,
                                since_ms,
                                first,
                                reply,
                            } => {
                                let _ = reply.send(self.rewind(only.as_ref(), since_ms, first));
                            }
                            Command::KeepRoster { roster, reply } => {
                                // The roster in force, which may be newer than this one.
                                let current = self.ctx.roster.borrow().clone();
                                if let Err(e) = self.follow(&current) {
                                    tracing::error!(error = %e, retry_in_ms = crate::limits::ROSTER_FOLLOW_RETRY_MS, "reading the queues of participants active again failed; tried again at the next batch, or in retry_in_ms while idle");
                                }
                                let _ = reply.send(self.keep_roster(&roster));
                            }
                            other => operators_not_here(other),
                        }
                    }
                    return true;
                }
                let is_submission = |c: &Command| matches!(c, Command::Submit { .. });
                let submissions = batch.iter().filter(|c| is_submission(c)).count();
                let Plan {
                    submissions_now,
                    others_now,
                } = plan(
                    submissions,
                    batch.len() - submissions,
                    self.ctx.batch_max,
                    deadline.is_some_and(|d| d <= now),
                );
                if submissions_now {
                    let (mut subs, others): (Vec<_>, Vec<_>) =
                        batch.drain(..).partition(is_submission);
                    self.commit_batch(&mut subs);
                    batch.extend(others);
                }
                if others_now {
                    self.commit_batch(batch);
                }
                if batch.is_empty() {
                    *deadline = None;
                } else if deadline.is_none() {
                    *deadline = Some(
                        now + std::time::Duration::from_millis(
                            crate::limits::RECEIPT_COMMIT_DELAY_MS,
                        ),
                    );
                }
                true
            }
        }
    }

    /// [`Command::KeepRoster`]: keeps `roster` ([`keep_roster`]) in a transaction of its
    /// own, answered once on disk.
    fn keep_roster(&mut self, roster: &Verified<Roster>) -> Result<bool, String> {
        let path = PathBuf::from(self.conn.path().unwrap_or_default());
        // Watched for stalls as a batch's commit is (its sync is, in `WalSync`).
        self.ctx
            .metrics
            .disk
            .commit_began(std::time::Instant::now());
        self.journal.begin();
        let done = (|| {
            let tx = self.conn.transaction()?;
            let wrote = keep_roster(&tx, &mut self.journal, &path, roster, crate::now_ms())?;
            if let Some(wait) = self.ctx.slow_commits {
                std::thread::sleep(wait);
            }
            tx.commit()?;
            Ok::<_, StoreError>(wrote)
        })();
        self.ctx.metrics.disk.operators_commit_ended();
        let wrote = done.map_err(|e| {
            self.journal.rollback();
            format!("relay storage: {e}")
        })?;
        // Answered only once on disk, as every commit (the writer stops if this fails).
        if let Some(Err(e)) = self.wal_sync.as_ref().map(WalSync::sync_now) {
            return Err(format!("relay storage: {e}"));
        }
        Ok(wrote)
    }

    /// Follows `roster` if its active participants are not yet those whose queues are in
    /// memory ([`follow_roster`]), between batches. If the read fails, it is tried again
    /// after [`crate::limits::ROSTER_FOLLOW_RETRY_MS`] should the writer be idle till then
    /// ([`Writer::follow_again`]).
    fn follow(&mut self, roster: &Roster) -> Result<(), StoreError> {
        if roster.version == self.roster_followed {
            return Ok(());
        }
        self.hold_before_following();
        let f = follow_roster(
            &self.conn,
            &self.ctx.queues,
            (&self.cursors, &mut self.unread),
            roster,
        )
        .inspect_err(|_| self.follow_again_later())?;
        self.followed(roster.version, f);
        Ok(())
    }

    /// After a failed read of the queues of participants active again: tries again after
    /// [`crate::limits::ROSTER_FOLLOW_RETRY_MS`] unless a batch or an operator's command
    /// follows the roster first.
    fn follow_again_later(&mut self) {
        self.follow_again_at = Some(
            std::time::Instant::now()
                + std::time::Duration::from_millis(crate::limits::ROSTER_FOLLOW_RETRY_MS),
        );
    }

    /// The writer, idle, reads again the queues of participants active again on the roster
    /// in force, whose read failed ([`Writer::follow_again_later`]). Before, it was read
    /// again only at the next batch: a node of such a participant that had logged in
    /// meanwhile (its session knowing nothing of what waited) was delivered none of it
    /// while the relay was idle. Once read, its session is closed ([`Writer::followed`])
    /// and the node connects again to be delivered it.
    fn follow_again(&mut self) {
        self.follow_again_at = None;
        let roster = self.ctx.roster.borrow().clone();
        if let Err(e) = self.follow(&roster) {
            // Once a second for as long as the store fails: one line a minute, with the
            // count, as the store's probe of failing writes logs its retries at debug.
            match self.follow_failed.tick(1, std::time::Instant::now()) {
                Some(failed) => {
                    tracing::error!(error = %e, failed, retry_in_ms = crate::limits::ROSTER_FOLLOW_RETRY_MS, "reading the queues of participants active again failed again (failed times since the last line); tried again at the next batch, or in retry_in_ms while idle")
                }
                None => {
                    tracing::debug!(error = %e, "reading the queues of participants active again still fails")
                }
            }
        }
    }

    /// The throttle of [`Writer::follow_again`]'s errors, new: its first is logged.
    fn follow_failed_throttle() -> Throttle {
        Throttle::new(std::time::Duration::from_millis(
            crate::limits::ROSTER_FOLLOW_FAILED_REPEAT_MS,
        ))
    }

    /// Waits at the test gate, if there is one ([`crate::Hosting::follow_gate`]), before a
    /// roster newer than the one followed is followed.
    fn hold_before_following(&self) {
        if let Some(gate) = &self.ctx.follow_gate {
            gate.wait();
        }
    }

    /// What follows [`follow_roster`]'s change to the queues in memory: the gauges, the
    /// log, and the sessions of participants active again that are owed something, which
    /// are closed as after a rewind: a session that started before their queue was read
    /// (the roster is in force before the writer reads it) delivers forward from where it
    /// is, and would not send them. Their nodes connect again at once.
    fn followed(&mut self, version: u64, f: Followed) {
        self.roster_followed = version;
        self.follow_again_at = None;
        self.follow_failed = Self::follow_failed_throttle();
        for who in &f.let_go {
            self.ctx.metrics.forget_queue_depth(who);
            tracing::info!(participant = %who, roster_version = version, "participant no longer active on the roster: its queue leaves memory; what it is owed stays in the store, for a roster that lists it again");
        }
        if f.read.is_empty() {
            return;
        }
        self.publish_depths();
        for (who, owed) in &f.read {
            tracing::info!(participant = %who, roster_version = version, owed, "participant active on the roster again: its queue read from the store");
            if *owed > 0 {
                self.ctx.hub.close(
                    who,
                    b"the relay read this participant's queue again (a roster lists it once more): connect again to be delivered it",
                );
            }
        }
    }

    /// [`Command::Rewind`]: moves the cursors back in one transaction (journaled
    /// `queue.rewound`), installs the queues as the store then holds them (the writer is
    /// between batches, so they are the in-memory queues plus what was moved back), and
    /// closes the sessions of the recipients now owed something: their nodes connect again,
    /// and a new session delivers from the start of its queue.
    fn rewind(
        &mut self,
        only: Option<&ParticipantId>,
        since_ms: u64,
        first: FirstSince,
    ) -> Result<RewoundAll, String> {
        let roster = self.ctx.roster.borrow().clone();
        if let Err(e) = self.follow(&roster) {
            tracing::error!(error = %e, "reading the queues of participants active again failed; nothing moved back");
            return Err(format!("relay storage: {e}"));
        }
        // Watched for stalls as a batch's commit is (its sync is, in `WalSync`).
        self.ctx
            .metrics
            .disk
            .commit_began(std::time::Instant::now());
        self.journal.begin();
        let done = (|| {
            let tx = self.conn.transaction()?;
            let r = rewind_in(
                &tx,
                &mut self.journal,
                (only, Whose::ActiveOn(&roster)),
                (since_ms, first),
                crate::now_ms(),
            )?;
            if let Some(wait) = self.ctx.slow_commits {
                std::thread::sleep(wait);
            }
            tx.commit()?;
            Ok::<_, StoreError>(r)
        })();
        self.ctx.metrics.disk.operators_commit_ended();
        let (rewound, loaded) = match done {
            Ok(r) => r,
            Err(e) => {
                self.journal.rollback();
                tracing::error!(error = %e, "moving queues back failed; nothing changed");
                return Err(format!("relay storage: {e}"));
            }
        };
        // Answered only once on disk, as every commit (the writer stops if this fails).
        if let Some(Err(e)) = self.wal_sync.as_ref().map(WalSync::sync_now) {
            return Err(format!("relay storage: {e}"));
        }
        let changed = loaded.is_some();
        if let Some(loaded) = loaded {
            self.cursors = loaded.cursors;
            self.unread = loaded.unread;
            self.ahead = loaded.ahead;
            *self.ctx.queues.lock().unwrap_or_else(|p| p.into_inner()) = loaded.index;
            self.publish_depths();
        }
        for (who, r) in &rewound {
            // Its cursor moved back, or positions it had receipted ahead of it are owed
            // again (the cursor need not move for those): either way a live session,
            // which delivers forward from where it is, would not send them.
            if changed && r.messages > 0 {
                tracing::info!(recipient = %who, since_ms, cursor_was = r.cursor_was, cursor = r.cursor, owed = r.messages, "queue moved back");
                self.ctx.hub.close(
                    who,
                    b"the relay moved this participant's queue back: connect again to be delivered again",
                );
            } else if r.receipts > 0 {
                // Queued again behind where a live session forwards from.
                self.ctx.hub.close(
                    who,
                    b"the relay queued receipts again for this participant: connect again to be forwarded them",
                );
            }
            if r.receipts > 0 {
                tracing::info!(sender = %who, since_ms, receipts = r.receipts, "receipts of its messages queued again to be forwarded to it");
                let delta = HashMap::from([(who.clone(), r.receipts as i64)]);
                self.ctx.metrics.add_forward_depths(&delta);
                *self.forward_depths.entry(who.clone()).or_default() += r.receipts as i64;
            }
        }
        Ok(rewound)
    }

    /// After a failed commit, and every [`crate::limits::STORE_PROBE_MS`] while nothing else
    /// is committed (thread hosting only): one small write of the writer's own, committed
    /// as a batch is (and synced), so that the disk watch, and `/health`, learn that the
    /// store takes writes again (the operator freed space, or the file system was mounted
    /// writable again) without waiting for a node's message. A rolled-back write would
    /// prove nothing: SQLite writes to the log only at commit. The write is a journal entry,
    /// `store.recovered`, the audit record that commits failed from a time until this one;
    /// a probe that fails leaves nothing, and is tried again after the interval.
    fn probe(&mut self) {
        let Some(failing) = self.failing else {
            return;
        };
        let started = std::time::Instant::now();
        self.ctx.metrics.disk.commit_began(started);
        self.journal.begin();
        let since = hotline_config::utc::format_utc(failing.since_ms);
        let result = (|| {
            let tx = self.conn.transaction()?;
            self.journal.append(
                &tx,
                crate::now_ms(),
                "store.recovered",
                "",
                format!("commits failed from {since}").as_bytes(),
            )?;
            tx.commit()?;
            Ok::<_, StoreError>(())
        })();
        // Synced as a batch's answers are: the relay stops if the sync fails.
        let synced = result.is_ok()
            && self
                .wal_sync
                .as_ref()
                .is_none_or(|ws| ws.sync_now().is_ok());
        self.ctx.metrics.disk.commit_ended(synced);
        match result {
            Ok(()) if synced => {
                self.failing = None;
                tracing::info!(
                    failed_for_ms = u64::try_from(started.duration_since(failing.since).as_millis()).unwrap_or(u64::MAX),
                    since = %since,
                    "the store takes writes again after failed commits: /health is ok"
                );
            }
            Ok(()) => {}
            Err(e) => {
                self.journal.rollback();
                tracing::debug!(error = %e, "the store still refuses writes");
                self.failing = Some(Failing {
                    probe_at: started
                        + std::time::Duration::from_millis(crate::limits::STORE_PROBE_MS),
                    ..failing
                });
            }
        }
    }

    /// After a failed commit whose batch was already posted: closes the sessions it was
    /// posted to. They may have written items that are not stored, at positions the next
    /// commits will hand out again, which a live session (delivering forward from the last
    /// position it wrote) would skip; their nodes connect again and are served from the
    /// store. A recipient keeps what it was sent: a genuine message its sender is told was
    /// not accepted, and resends (`StorageUnavailable` is retried), so it is delivered
    /// again and deduplicated by id.
    /// Returns how many sessions it closed: the batch's recipients with a session (a post
    /// to one without is dropped, and its node is served from the store when it comes).
    fn recall(&self, posts: &[(ParticipantId, Kind, Posted)]) -> usize {
        let who: BTreeSet<&ParticipantId> = posts.iter().map(|(w, _, _)| w).collect();
        let closed = who
            .iter()
            .filter(|w| {
                self.ctx.hub.close(
                    w,
                    b"the relay could not store what it had just sent: connect again",
                )
            })
            .count();
        if closed > 0 {
            tracing::warn!(
                sessions = closed,
                "closed the sessions sent a batch whose commit then failed; their nodes connect again"
            );
        }
        closed
    }

    /// Logs refused forwards of receipts for messages not held here, throttled (the metric
    /// counts each).
    fn warn_unforwarded(&mut self, n: u64) {
        let Some(refused) = self.unforwarded.tick(n, std::time::Instant::now()) else {
            return;
        };
        warn!(
            refused,
            limit = self.ctx.forward_foreign_max,
            "receipts naming messages this relay does not hold were not forwarded: their senders' forward queues are at forward_foreign_max (a participant may be signing receipts for messages it never received; hotline_relay_forward_queue_depth shows whose queue)"
        );
    }

    /// Logs receipts not kept for their signer's budget of receipts naming only messages
    /// not held here, throttled as [`Writer::warn_unforwarded`], naming the signers refused
    /// since the last line.
    fn warn_over_budget(&mut self, n: u64, signers: BTreeSet<ParticipantId>) {
        self.over_budget_signers.extend(signers);
        let Some(refused) = self.over_budget.tick(n, std::time::Instant::now()) else {
            return;
        };
        let participants = std::mem::take(&mut self.over_budget_signers)
            .iter()
            .map(ParticipantId::as_str)
            .collect::<Vec<_>>()
            .join(",");
        warn!(
            refused,
            %participants,
            limit = self.foreign_budget.per_day_max,
            "receipts naming only messages this relay does not hold were neither kept nor forwarded: their signers are over foreign_receipts_per_day_max for today (UTC) (they may be signing receipts for messages they never received)"
        );
    }

    fn commit_batch(&mut self, batch: &mut Vec<Command>) {
        self.commit_batch_at(batch, crate::now_ms());
    }

    /// [`Writer::commit_batch`] with the clock read at `now` (ms since the epoch): tests
    /// give their own.
    fn commit_batch_at(&mut self, batch: &mut Vec<Command>, now: u64) {
        let started = std::time::Instant::now();
        self.ctx.metrics.disk.commit_began(started);
        let size = batch.len();
        let roster = self.ctx.roster.borrow().clone();
        let mut p = Pending {
            last_seq: HashMap::new(),
            queued: HashMap::new(),
            removed: Vec::new(),
            cursors: HashMap::new(),
            ahead: HashMap::new(),
            newest: self.newest,
            posts: Vec::new(),
            replies: Vec::with_capacity(size),
            forward_delta: HashMap::new(),
            accepted: 0,
            receipts: 0,
            redundant: 0,
            unforwarded: 0,
            foreign_kept: HashMap::new(),
            over_budget: 0,
            over_budget_signers: BTreeSet::new(),
            over_budget_forwards: 0,
            latencies_ms: Vec::new(),
            held: Vec::new(),
        };
        self.journal.begin();
        // Rows written before the batch: one that writes none commits without touching the
        // disk (a receipt that tells nothing new), and so says nothing of whether the disk
        // takes writes (below).
        let changes_before = self.conn.total_changes();
        // A statement that fails ends the transaction with the rest of the batch not run:
        // the failing command and those after it are answered with the rest (below), so
        // that no session waits for an answer that never comes.
        let mut commands = batch.drain(..);
        // When the batch was posted to sessions ahead of its commit, if it was.
        let mut posted_at = None;
        // Whether this batch looked for idle cursors to move up (`idle_cursors_up`).
        let mut swept = false;
        // What following a roster newer than the queues' changed in memory (`follow_roster`).
        let mut followed = None;
        if roster.version != self.roster_followed {
            self.hold_before_following();
        }
        let result = (|| -> Result<std::time::Instant, StoreError> {
            let tx = self.conn.transaction()?;
            // Before any command: they are routed against this roster, and receipts from a
            // participant active again take positions out of the queue read here. A failed
            // read fails the batch (its commands are answered as for a failed commit), and
            // the next batch reads again (or the writer, idle, `follow_again`).
            if roster.version != self.roster_followed {
                followed = Some(follow_roster(
                    &tx,
                    &self.ctx.queues,
                    (&self.cursors, &mut self.unread),
                    &roster,
                )?);
            }
            for cmd in commands.by_ref() {
                match cmd {
                    Command::Submit {
                        env,
                        digest,
                        reply,
                        read_at,
                        handed_at,
                    } => {
                        self.ctx.metrics.submission_staged(
                            handed_at.saturating_duration_since(read_at),
                            started.saturating_duration_since(handed_at),
                        );
                        let answer = submit(
                            &tx,
                            &mut self.journal,
                            &self.last_seq,
                            &self.cursors,
                            &self.ctx,
                            &roster,
                            (&env, digest),
                            now,
                            &mut p,
                        );
                        match answer {
                            Ok(answer) => p.replies.push((reply, answer)),
                            Err(e) => {
                                p.replies
                                    .push((reply, unanswered(Subject::Message(env.id))));
                                return Err(e);
                            }
                        }
                    }
                    Command::Receipt {
                        receipt,
                        digest,
                        reply,
                    } => {
                        let answer = store_receipt(
                            &tx,
                            &mut self.journal,
                            &self.held,
                            Queues {
                                index: &self.ctx.queues,
                                cursors: &self.cursors,
                                unread: &self.unread,
                                ahead: &self.ahead,
                                forward_depths: &self.forward_depths,
                                forward_foreign_max: self.ctx.forward_foreign_max,
                                foreign_budget: &self.foreign_budget,
                                roster: &roster,
                            },
                            (&receipt, digest),
                            now,
                            &mut p,
                        );
                        match answer {
                            Ok(answer) => p.replies.push((reply, answer)),
                            Err(e) => {
                                p.replies
                                    .push((reply, unanswered(Subject::Receipt(digest))));
                                return Err(e);
                            }
                        }
                    }
                    Command::ReceiptsStored {
                        participant,
                        digests,
                    } => {
                        let mut st = tx.prepare_cached(
                            "DELETE FROM rqueue WHERE recipient = ?1 AND digest = ?2",
                        )?;
                        let mut n = 0;
                        for d in digests {
                            n += st.execute(params![participant.as_str(), &d.0[..]])? as i64;
                        }
                        if n > 0 {
                            *p.forward_delta.entry(participant).or_default() -= n;
                        }
                    }
                    operators @ (Command::Rewind { .. } | Command::KeepRoster { .. }) => {
                        operators_not_here(operators)
                    }
                }
            }
            // Once the newest message is `IDLE_CURSOR_LAG_MAX` past the last look, the
            // cursors of recipients owed nothing move up to it, written with the rest.
            if p.newest >= self.idle_swept_at.saturating_add(self.idle_lag_max) {
                idle_cursors_up(
                    &self.ctx.queues,
                    (&self.cursors, &self.unread),
                    &self.ahead,
                    self.idle_lag_max,
                    &mut p,
                );
                swept = true;
            }
            // Each moved cursor, once per batch rather than once per message, in the same
            // transaction as the receipts. (A sender's highest number is its messages' own,
            // `SENDER_LAST_SEQ`.)
            upsert_each(
                &tx,
                "INSERT INTO cursors (recipient, rseq) VALUES (?1, ?2)
                 ON CONFLICT (recipient) DO UPDATE SET rseq = excluded.rseq",
                &p.cursors,
            )?;
            // Every statement has run: connected recipients get the batch now, while the
            // commit syncs, rather than after it (ARCHITECTURE.md, "Invariants"). Nobody is
            // answered before the commit, and the batch is posted again after it.
            if !p.posts.is_empty() && !self.last_commit_failed {
                let at = std::time::Instant::now();
                self.ctx.hub.post(&p.posts, at);
                posted_at = Some(at);
                if let Some(wait) = self.ctx.slow_commits {
                    std::thread::sleep(wait);
                }
            }
            tx.commit()?;
            Ok(std::time::Instant::now())
        })();
        // Whether the batch committed or not: what it read was committed before it.
        if let Some(f) = followed {
            self.followed(roster.version, f);
        } else if roster.version != self.roster_followed {
            // The read failed (or the batch before it): tried again while idle too.
            self.follow_again_later();
        }
        self.last_commit_failed = result.is_err();
        // While commits fail (a full disk), a commit that wrote nothing succeeds without
        // having written to the log: it does not end the spell, nor turn `/health` to `ok`
        // while every message is still refused. A commit that writes, or the writer's probe,
        // does.
        let proved = self.failing.is_none() || self.conn.total_changes() != changes_before;
        match &result {
            Ok(_) if !proved => self.ctx.metrics.disk.commit_ended(false),
            _ => self.ctx.metrics.disk.commit_ended(result.is_ok()),
        }
        self.failing = match (&result, self.failing) {
            (Ok(_), Some(f)) if !proved => Some(f),
            (Ok(_), _) => None,
            (Err(_), f) => Some(Failing {
                since: f.map_or(started, |f| f.since),
                since_ms: f.map_or(now, |f| f.since_ms),
                probe_at: std::time::Instant::now()
                    + std::time::Duration::from_millis(crate::limits::STORE_PROBE_MS),
            }),
        };
        match result {
            Ok(committed) => {
                for (id, h) in p.held {
                    self.held.insert(id, h);
                }
                for (k, v) in p.last_seq {
                    self.last_seq.insert(k, v);
                }
                self.cursors.extend(p.cursors);
                for (who, may_have) in p.ahead {
                    if may_have {
                        self.ahead.insert(who);
                    } else {
                        self.ahead.remove(&who);
                    }
                }
                self.newest = p.newest;
                if swept {
                    self.idle_swept_at = p.newest;
                }
                if let Some(c) = &mut self.checkpointer {
                    c.committed();
                }
                self.ctx.metrics.commit(size, started.elapsed());
                // Counted, and the deliveries its receipts ended timed, only once durable,
                // as its answers are sent: a commit whose sync fails stops the relay with
                // its batch refused, not counted.
                let durable = crate::metrics::Durable {
                    accepted: p.accepted,
                    receipts: p.receipts,
                    latencies_ms: std::mem::take(&mut p.latencies_ms),
                };
                // The committed messages join their recipients' queues, and then the depths
                // are published, before posting: a session that finds its depth 0 skips the
                // store read and relies on its mailbox (`Metrics::queue_depth`). Only this
                // commit's recipients changed.
                {
                    let mut ix = self.ctx.queues.lock().unwrap_or_else(|p| p.into_inner());
                    for (r, kind, posted) in &p.posts {
                        if *kind == Kind::Message {
                            ix.push(r, posted.pos);
                        }
                    }
                    let touched: HashSet<&ParticipantId> = p
                        .queued
                        .keys()
                        .chain(p.removed.iter().map(|(r, _)| r))
                        .collect();
                    self.ctx
                        .metrics
                        .set_queue_depths(touched.into_iter().map(|r| (r, ix.len(r) as i64)));
                }
                if !p.forward_delta.is_empty() {
                    self.ctx.metrics.add_forward_depths(&p.forward_delta);
                    for (s, n) in &p.forward_delta {
                        let d = self.forward_depths.entry(s.clone()).or_default();
                        *d = (*d + n).max(0);
                    }
                }
                // Only now, with the commit done, do its receipts count against their
                // signers' budgets.
                for (signer, n) in p.foreign_kept {
                    self.foreign_budget.add(signer, now / DAY_MS, n);
                }
                if p.redundant + p.unforwarded + p.over_budget_forwards > 0 {
                    self.ctx.metrics.receipts_not_kept(
                        p.redundant,
                        p.unforwarded,
                        p.over_budget_forwards,
                    );
                    if p.unforwarded > 0 {
                        self.warn_unforwarded(p.unforwarded);
                    }
                }
                if p.over_budget > 0 {
                    self.warn_over_budget(p.over_budget, p.over_budget_signers);
                }
                match &self.wal_sync {
                    // Answered once a sync covers this commit.
                    Some(ws) => ws.answer_after_sync(p.replies, durable),
                    None => {
                        // The commit synced itself (`synchronous=FULL`).
                        self.ctx.metrics.durable(durable);
                        for (reply, answer) in p.replies {
                            // Capacity is reserved by the session before it sends a
                            // command, so this only fails if the session has gone, which is
                            // fine: the node resubmits and gets the same answer.
                            let _ = reply.try_send(answer);
                        }
                    }
                }
                // Again, for the sessions the first post could not reach (module `hub`).
                self.ctx.hub.post(&p.posts, posted_at.unwrap_or(committed));
                if let Some(n) = self.ctx.fail_after_commits {
                    self.commits += 1;
                    if self.commits >= n {
                        panic!(
                            "store writer failure injected by a test (Hosting::fail_writer_after)"
                        );
                    }
                }
            }
            Err(e) => {
                p.replies.extend(commands.filter_map(unrun));
                self.journal.rollback();
                // What this batch's receipts took out of the queues is still owed.
                let mut ix = self.ctx.queues.lock().unwrap_or_else(|p| p.into_inner());
                for (r, rseq) in &p.removed {
                    ix.push(r, *rseq);
                }
                drop(ix);
                tracing::error!(error = %e, batch = size, "commit failed: refusing the whole batch");
                self.ctx.metrics.commit_failed();
                if posted_at.is_some() {
                    self.recall(&p.posts);
                }
                for (reply, answer) in p.replies {
                    let _ =
                        reply.try_send(refused_for_storage(&answer, format!("relay storage: {e}")));
                }
            }
        }
    }
}

/// `answer` turned into its refusal `StorageUnavailable` (same subject), for a batch whose
/// commit failed, or whose sync did (`crate::walsync`): whatever it was going to say
/// depended on the batch being stored.
pub(crate) fn refused_for_storage(answer: &RelayToNode, detail: String) -> RelayToNode {
    let subject = match answer {
        RelayToNode::Accepted(a) => Subject::Message(a.id),
        RelayToNode::Rejected(r) => r.subject.clone(),
        RelayToNode::ReceiptStored(d) => Subject::Receipt(*d),
        _ => Subject::Frame,
    };
    RelayToNode::Rejected(Rejected {
        subject,
        code: RejectCode::StorageUnavailable,
        detail: hotline_proto::frame::detail(detail),
    })
}

/// The answer owed to a command that will not run (its batch's commit failed before it, or
/// the writer is stopping): `StorageUnavailable`, with its reply channel. A rewind is
/// answered here.
fn unrun(cmd: Command) -> Option<(mpsc::Sender<RelayToNode>, RelayToNode)> {
    match cmd {
        Command::Submit { env, reply, .. } => Some((reply, unanswered(Subject::Message(env.id)))),
        Command::Receipt { digest, reply, .. } => {
            Some((reply, unanswered(Subject::Receipt(digest))))
        }
        // No answer is owed: its receipts stay queued, and are forwarded again.
        Command::ReceiptsStored { .. } => None,
        operators @ (Command::Rewind { .. } | Command::KeepRoster { .. }) => {
            operators_not_here(operators);
            None
        }
    }
}

/// Answers, as the writer stops for `why` (a failed sync of its log, or a panic), every
/// command it will not run: those deferred in `batch`, and every one still waiting in the
/// queue. A command dropped with the queue would never be answered: its session, at the
/// shutdown that follows, would have nothing to tell its node of it, and the node would
/// learn of it only at its next connection. The queue is closed first, so that nothing more
/// is queued, then drained to its end, a send already under way included: for the writer's
/// own thread only, which is no runtime's.
fn refuse_waiting(batch: &mut Vec<Command>, rx: &mut mpsc::Receiver<Command>, why: &str) {
    for cmd in batch.drain(..) {
        refuse_unrun(cmd, why);
    }
    rx.close();
    while let Some(cmd) = rx.blocking_recv() {
        refuse_unrun(cmd, why);
    }
}

/// Answers `cmd`, which a writer stopping for `why` (a failed sync of its log, or a panic)
/// will not run: a submission or a receipt `StorageUnavailable` (its node offers it
/// again), an operator's command with the error.
fn refuse_unrun(cmd: Command, why: &str) {
    match cmd {
        Command::Rewind { reply, .. } => {
            let _ = reply.send(Err(why.to_owned()));
        }
        Command::KeepRoster { reply, .. } => {
            let _ = reply.send(Err(why.to_owned()));
        }
        cmd => {
            if let Some((reply, answer)) = unrun(cmd) {
                let _ = reply.try_send(refused_for_storage(&answer, why.to_owned()));
            }
        }
    }
}

/// The answer of a command its batch's failed commit did not run (or stopped at): refused
/// with the rest of the batch.
fn unanswered(subject: Subject) -> RelayToNode {
    reject(subject, RejectCode::StorageUnavailable, "")
}

/// Runs `sql` (an upsert taking a participant and a value) for each entry of `rows`.
fn upsert_each<V: rusqlite::ToSql>(
    tx: &Transaction<'_>,
    sql: &str,
    rows: &HashMap<ParticipantId, V>,
) -> rusqlite::Result<()> {
    let mut st = tx.prepare_cached(sql)?;
    for (who, value) in rows {
        st.execute(params![who.as_str(), value])?;
    }
    Ok(())
}

fn reject(subject: Subject, code: RejectCode, detail: impl Into<String>) -> RelayToNode {
    RelayToNode::Rejected(Rejected {
        subject,
        code,
        detail: hotline_proto::frame::detail(detail),
    })
}

#[allow(clippy::too_many_arguments)]
fn submit(
    tx: &Transaction<'_>,
    journal: &mut Journal,
    last_seq: &HashMap<ParticipantId, u64>,
    cursors: &HashMap<ParticipantId, i64>,
    ctx: &WriterContext,
    roster: &Verified<Roster>,
    (env, digest): (&Verified<Envelope>, Digest),
    now: u64,
    p: &mut Pending,
) -> Result<RelayToNode, StoreError> {
    let signed = env.signed();
    let subject = Subject::Message(env.id);
    // `last` is the highest number this sender has stored, so only a number at or below it
    // can be taken: the usual in-order submission skips both look-ups below.
    let last = p
        .last_seq
        .get(&env.sender)
        .or_else(|| last_seq.get(&env.sender))
        .copied()
        .unwrap_or(0);
    // Idempotence: the same message again gets the same answer and is not queued again. A
    // message stored before carries a number at or below `last`; a higher number with a taken
    // id is caught by the INSERT below.
    if env.seq.0 <= last {
        if let Some(answer) = answer_for_stored(tx, env, &digest, &subject)? {
            return Ok(answer);
        }
    }
    // Replay: a sequence number already used, or too far behind the newest.
    let used = env.seq.0 <= last
        && tx
            .prepare_cached("SELECT 1 FROM messages WHERE sender = ?1 AND seq = ?2")?
            .query_row(params![env.sender.as_str(), env.seq.0], |_| Ok(()))
            .optional()?
            .is_some();
    if used || env.seq.0.saturating_add(SEQ_REORDER_WINDOW) <= last {
        return Ok(reject(
            subject,
            RejectCode::ReplayedSeq,
            format!(
                "sequence number {} already used or too old (last accepted {last})",
                env.seq
            ),
        ));
    }
    // Steps 12 and 13 refuse only after step 10 (PROTOCOL.md 7.3), which a number above
    // `last` skipped above: another message under a held id is `IdConflict` (final), not
    // a routing refusal or a retryable `QueueFull`. Looked up only on the way to a refusal.
    let refuse_unless_held = |refusal: RelayToNode| -> Result<RelayToNode, StoreError> {
        if env.seq.0 > last {
            if let Some(answer) = answer_for_stored(tx, env, &digest, &subject)? {
                return Ok(answer);
            }
        }
        Ok(refusal)
    };
    // Routing, with the observer reply rule answered from the store. A read that fails
    // there fails the batch (`StorageUnavailable`, offered again), rather than deny a reply
    // the store would have allowed (`PolicyDenied`, final).
    let failed_read = std::cell::RefCell::new(None);
    let routed = routing::resolve(roster, &ctx.policy, env, |r| {
        addressed_by(tx, env, r).unwrap_or_else(|e| {
            failed_read.borrow_mut().get_or_insert(e);
            false
        })
    });
    if let Some(e) = failed_read.into_inner() {
        return Err(e);
    }
    let recipients = match routed {
        Ok(r) => r,
        Err(e) => {
            return refuse_unless_held(reject(subject.clone(), e.reject_code(), e.to_string()))
        }
    };
    {
        let ix = ctx.queues.lock().unwrap_or_else(|p| p.into_inner());
        for r in &recipients {
            let d = ix.len(r) + p.queued.get(r).map_or(0, |a| a.count);
            if d as u64 >= ctx.queue_depth_max {
                let full = reject(
                    subject.clone(),
                    RejectCode::QueueFull,
                    format!("queue for {r} is full ({d} messages)"),
                );
                drop(ix);
                return refuse_unless_held(full);
            }
        }
    }
    let list = recipients
        .iter()
        .map(|r| r.as_str())
        .collect::<Vec<_>>()
        .join(",");
    let inserted = tx
        .prepare_cached(
            "INSERT INTO messages (id, sender, seq, digest, bytes, key, sig, accepted_at_ms, recipients)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) ON CONFLICT (id) DO NOTHING",
        )?
        .execute(params![
        &env.id.0[..],
        env.sender.as_str(),
        env.seq.0,
        &digest.0[..],
        signed.bytes(),
        &signed.key().0[..],
        &signed.signature().0[..],
        now,
        list
    ])?;
    if inserted == 0 {
        // The id is taken: by this very message (only if `last` were behind the store), or,
        // as it should be, by another one.
        return Ok(
            answer_for_stored(tx, env, &digest, &subject)?.unwrap_or_else(|| {
                reject(subject, RejectCode::IdConflict, "message id already used")
            }),
        );
    }
    let rseq = tx.last_insert_rowid();
    p.newest = rseq;
    if !recipients.is_empty() {
        let frame = shared_frame(&RelayToNode::Deliver(signed.clone()))?;
        for r in &recipients {
            // The first message ever addressed to `r`: its cursor starts just below it.
            if !cursors.contains_key(r) && !p.cursors.contains_key(r) {
                p.cursors.insert(r.clone(), rseq - 1);
            }
            match p.queued.get_mut(r) {
                Some(a) => a.count += 1,
                None => {
                    p.queued.insert(
                        r.clone(),
                        Added {
                            first: rseq,
                            count: 1,
                        },
                    );
                }
            }
            p.posts.push((
                r.clone(),
                Kind::Message,
                Posted {
                    pos: rseq,
                    id: Some(env.id),
                    frame: frame.clone(),
                    posted_at: None,
                },
            ));
        }
    }
    // Durable as the message's own `seq` (`SENDER_LAST_SEQ`); the map serves this batch.
    p.last_seq.insert(env.sender.clone(), last.max(env.seq.0));
    p.held.push((
        env.id,
        Held {
            sender: env.sender.clone(),
            digest,
            // `routing::resolve` returns them sorted.
            recipients: recipients.as_slice().into(),
            accepted_at_ms: now,
            rseq,
        },
    ));
    journal.append(
        tx,
        now,
        "message.accepted",
        &env.id.to_string(),
        &journal_record(signed, &digest),
    )?;
    p.accepted += 1;
    Ok(RelayToNode::Accepted(Accepted {
        id: env.id,
        recipients,
        accepted_at_ms: now,
    }))
}

/// The answer to a message whose id is already stored: the same answer again if it is the
/// same message, `IdConflict` if the id was used for other content; `None` if the id is free.
fn answer_for_stored(
    tx: &Transaction<'_>,
    env: &Envelope,
    digest: &Digest,
    subject: &Subject,
) -> Result<Option<RelayToNode>, StoreError> {
    let existing: Option<(Vec<u8>, String, u64)> = tx
        .prepare_cached("SELECT digest, recipients, accepted_at_ms FROM messages WHERE id = ?1")?
        .query_row([&env.id.0[..]], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?;
    let Some((d, recipients, at)) = existing else {
        return Ok(None);
    };
    if d[..] != digest.0[..] {
        return Ok(Some(reject(
            subject.clone(),
            RejectCode::IdConflict,
            "message id already used with different content",
        )));
    }
    let recipients = recipients
        .split(',')
        .filter_map(|s| ParticipantId::new(s).ok())
        .collect();
    Ok(Some(RelayToNode::Accepted(Accepted {
        id: env.id,
        recipients,
        accepted_at_ms: at,
    })))
}

/// Whether a message's stored recipient list (`messages.recipients`, comma-separated)
/// names `who`.
fn lists(stored: &str, who: &ParticipantId) -> bool {
    stored.split(',').any(|r| r == who.as_str())
}

/// Whether `recipient` authored a message referenced by `env` that was addressed to
/// `env`'s sender: the condition for an observer's reply. A read that fails is an error,
/// not a "no".
fn addressed_by(
    tx: &Transaction<'_>,
    env: &Envelope,
    recipient: &ParticipantId,
) -> Result<bool, StoreError> {
    let mut st = tx.prepare_cached("SELECT sender, recipients FROM messages WHERE id = ?1")?;
    for id in &env.references {
        let found = st
            .query_row([&id.0[..]], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
            })
            .optional()?;
        if found.is_some_and(|(sender, recipients)| {
            sender == recipient.as_str() && lists(&recipients, &env.sender)
        }) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The writer's queue state that storing a receipt changes.
struct Queues<'a> {
    index: &'a Mutex<QueueIndex>,
    cursors: &'a HashMap<ParticipantId, i64>,
    /// Recipients whose queues are not in memory (off the roster): what they are owed is
    /// the store's alone ([`follow_roster`]).
    unread: &'a HashSet<ParticipantId>,
    /// Recipients that may have rows in `ahead`, as committed (this batch's changes are in
    /// `Pending::ahead`).
    ahead: &'a HashSet<ParticipantId>,
    /// Each sender's forward queue depth, as committed (this batch's changes are in
    /// `Pending::forward_delta`).
    forward_depths: &'a HashMap<ParticipantId, i64>,
    forward_foreign_max: u64,
    /// Receipts kept today only for foreign items, by signer, as committed (this batch's
    /// are in `Pending::foreign_kept`).
    foreign_budget: &'a ForeignBudget,
    /// The roster in force: a foreign item is forwarded only to a sender listed on it. The
    /// signer writes a foreign item's sender as it likes, and each sender forwarded to costs
    /// a forward queue, a depth in memory and a metrics series that nobody could ever empty.
    roster: &'a Roster,
}

fn store_receipt(
    tx: &Transaction<'_>,
    journal: &mut Journal,
    cache: &HeldCache,
    queues: Queues<'_>,
    (receipt, digest): (&Verified<Receipt>, Digest),
    now: u64,
    p: &mut Pending,
) -> Result<RelayToNode, StoreError> {
    let signed = receipt.signed();
    let exists = tx
        .prepare_cached("SELECT 1 FROM receipts WHERE created_at_ms = ?1 AND digest = ?2")?
        .query_row(
            params![time_key(receipt.created_at_ms), &digest.0[..]],
            |_| Ok(()),
        )
        .optional()?
        .is_some();
    if exists {
        return Ok(RelayToNode::ReceiptStored(digest));
    }
    // Items naming a message we hold must name its sender, its exact content and a real
    // recipient: otherwise the receipt would be forwarded to a "sender" that never sent it.
    // Recently accepted messages are checked from memory; older ones are read. Each item's
    // acceptance time is kept for the delivery-latency metric, with its queue position.
    let mut accepted_at = Vec::with_capacity(receipt.items.len());
    for item in &receipt.items {
        let read;
        let held = match cache.map.get(&item.id) {
            Some(h) => Some((
                h.sender.as_str(),
                &h.digest.0[..],
                h.recipients.binary_search(&receipt.recipient).is_ok(),
                (h.accepted_at_ms, h.rseq),
            )),
            None => {
                read = tx
                    .prepare_cached(
                        "SELECT sender, digest, recipients, accepted_at_ms, rseq FROM messages WHERE id = ?1",
                    )?
                    .query_row([&item.id.0[..]], |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, Vec<u8>>(1)?,
                            r.get::<_, String>(2)?,
                            (r.get::<_, u64>(3)?, r.get::<_, i64>(4)?),
                        ))
                    })
                    .optional()?;
                read.as_ref()
                    .map(|(s, d, r, at)| (s.as_str(), &d[..], lists(r, &receipt.recipient), *at))
            }
        };
        accepted_at.push(held.map(|h| h.3));
        if let Some((sender, d, addressed, _)) = held {
            if sender != item.sender.as_str() || d != &item.digest.0[..] || !addressed {
                return Ok(reject(
                    Subject::Receipt(digest),
                    RejectCode::UnknownMessage,
                    format!(
                        "receipt names message {} with a different sender, digest or recipient",
                        item.id
                    ),
                ));
            }
        }
    }
    let is_ack = matches!(receipt.kind, ReceiptKind::Acknowledged { .. });
    let me = &receipt.recipient;
    // What the receipt tells this relay, item by item. An item naming a message held here
    // is news if it is the first receipt of either kind from `me` for it (it leaves `me`'s
    // queue, below) or its first acknowledgement (`acks`). An item naming a message not
    // held here ("foreign": accepted by another relay only) cannot be checked, and is
    // forwarded only to a sender on the roster, while its forward queue is below
    // `forward_foreign_max`; a receipt kept only for such items counts against its signer's
    // budget for the day.
    let mut news = false;
    let mut senders = BTreeSet::new();
    let mut foreign = BTreeSet::new();
    let mut first_acks = Vec::new();
    if is_ack {
        let mut ack =
            tx.prepare_cached("INSERT OR IGNORE INTO acks (recipient, rseq) VALUES (?1, ?2)")?;
        for (_, rseq) in accepted_at.iter().flatten() {
            first_acks.push(ack.execute(params![me.as_str(), rseq])? > 0);
        }
    }
    let mut first_acks = first_acks.into_iter();
    // A signer off the roster has no queue in memory, only in the store: its receipt was
    // verified before the roster that took it off (it was in flight), and what it names
    // past its cursor is receipted ahead there, so that neither a start nor a roster that
    // lists it again owes those messages again. Its cursor stays: what else it is owed is
    // not known without reading. Written before the queues' lock is taken (sessions share
    // it); the batch's transaction takes it back if the commit fails.
    let mut off_roster = HashSet::new();
    if queues.unread.contains(me) {
        let cursor = p
            .cursors
            .get(me)
            .or_else(|| queues.cursors.get(me))
            .copied()
            .unwrap_or(0);
        let mut st =
            tx.prepare_cached("INSERT OR IGNORE INTO ahead (recipient, rseq) VALUES (?1, ?2)")?;
        for (_, rseq) in accepted_at.iter().flatten() {
            if *rseq > cursor && st.execute(params![me.as_str(), rseq])? > 0 {
                off_roster.insert(*rseq);
            }
        }
        if !off_roster.is_empty() {
            p.ahead.insert(me.clone(), true);
        }
    }
    let mut removed = Vec::new();
    let cursor = {
        let mut ix = queues.index.lock().unwrap_or_else(|p| p.into_inner());
        let mut queue = ix.queue(me);
        for (item, at) in receipt.items.iter().zip(&accepted_at) {
            let Some((at, rseq)) = at else {
                // Only a sender on the roster (`Queues::roster`); cloned only the first
                // time: a receipt may name one sender hundreds of times.
                if item.sender != *me
                    && !foreign.contains(&item.sender)
                    && queues.roster.participant(&item.sender).is_some()
                {
                    foreign.insert(item.sender.clone());
                }
                continue;
            };
            // Either kind proves the node holds the message: it leaves the queue. The
            // first receipt to do so times the delivery.
            let mut fresh = first_acks.next().unwrap_or(false);
            if let Some(q) = &mut queue {
                if q.remove(*rseq) {
                    removed.push(*rseq);
                    // Put back if the batch's commit fails, whatever fails after this.
                    p.removed.push((me.clone(), *rseq));
                    p.latencies_ms.push(now.saturating_sub(*at));
                    fresh = true;
                }
            } else if off_roster.contains(rseq) {
                p.latencies_ms.push(now.saturating_sub(*at));
                fresh = true;
            }
            news |= fresh;
            if fresh && item.sender != *me && !senders.contains(&item.sender) {
                senders.insert(item.sender.clone());
            }
        }
        // The cursor goes just below the oldest message still owed to `me` (committed, or
        // queued by this batch), or to the newest message if none is.
        let floor = ix
            .first(me)
            .into_iter()
            .chain(p.queued.get(me).map(|a| a.first))
            .min();
        floor.map_or(p.newest, |f| f - 1)
    };
    let mut refused = false;
    for s in foreign {
        if senders.contains(&s) {
            continue;
        }
        let depth = queues.forward_depths.get(&s).copied().unwrap_or(0)
            + p.forward_delta.get(&s).copied().unwrap_or(0);
        if depth < queues.forward_foreign_max as i64 {
            senders.insert(s);
        } else {
            p.unforwarded += 1;
            refused = true;
            debug!(recipient = %me, sender = %s, receipt = %digest, "receipt for a message not held here not forwarded: the sender's forward queue is at forward_foreign_max");
        }
    }
    if !news && !senders.is_empty() {
        // Kept, if at all, only for foreign items: within the signer's budget for the day.
        // A sender's node confirms a forwarded receipt at once, so without the budget a
        // member signing receipts for made-up messages of a cooperating sender would have
        // the relay keep every one, at its receipt rate.
        let pending = p.foreign_kept.get(me).copied().unwrap_or(0);
        if !queues.foreign_budget.allows(me, now / DAY_MS, pending) {
            p.over_budget += 1;
            p.over_budget_forwards += senders.len() as u64;
            if !p.over_budget_signers.contains(me) {
                p.over_budget_signers.insert(me.clone());
            }
            debug!(recipient = %me, receipt = %digest, "receipt naming only messages not held here neither kept nor forwarded: its signer is over foreign_receipts_per_day_max today");
            return Ok(RelayToNode::ReceiptStored(digest));
        }
        match p.foreign_kept.get_mut(me) {
            Some(n) => *n += 1,
            None => {
                p.foreign_kept.insert(me.clone(), 1);
            }
        }
    }
    if !news && senders.is_empty() {
        // Everything it says is already held here, in an earlier receipt (or, for a foreign
        // message, the sender's queue is full): answered as stored, neither kept nor
        // forwarded. A node sends such receipts after a redelivery, and a hostile one could
        // send them without end.
        if !refused {
            p.redundant += 1;
            debug!(recipient = %me, receipt = %digest, "receipt tells nothing new; not kept");
        }
        return Ok(RelayToNode::ReceiptStored(digest));
    }
    tx.prepare_cached(
        "INSERT INTO receipts (created_at_ms, digest, recipient, is_ack, bytes, key, sig, stored_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        time_key(receipt.created_at_ms),
        &digest.0[..],
        receipt.recipient.as_str(),
        is_ack,
        signed.bytes(),
        &signed.key().0[..],
        &signed.signature().0[..],
        now
    ])?;
    let receipt_rseq = tx.last_insert_rowid();
    if !removed.is_empty() {
        let current = p
            .cursors
            .get(me)
            .or_else(|| queues.cursors.get(me))
            .copied()
            .unwrap_or(0);
        if cursor > current {
            p.cursors.insert(me.clone(), cursor);
            let may_have = p
                .ahead
                .get(me)
                .copied()
                .unwrap_or_else(|| queues.ahead.contains(me));
            if may_have {
                tx.prepare_cached("DELETE FROM ahead WHERE recipient = ?1 AND rseq <= ?2")?
                    .execute(params![me.as_str(), cursor])?;
                let left = tx
                    .prepare_cached("SELECT 1 FROM ahead WHERE recipient = ?1 LIMIT 1")?
                    .exists([me.as_str()])?;
                if !left {
                    p.ahead.insert(me.clone(), false);
                }
            }
        }
        // Receipted ahead of the cursor, out of order: kept, so that a restart does not
        // deliver them again.
        for rseq in removed.iter().filter(|r| **r > cursor) {
            tx.prepare_cached("INSERT OR IGNORE INTO ahead (recipient, rseq) VALUES (?1, ?2)")?
                .execute(params![me.as_str(), rseq])?;
            p.ahead.insert(me.clone(), true);
        }
    }
    if !senders.is_empty() {
        let frame = shared_frame(&RelayToNode::Receipt(signed.clone()))?;
        let mut fwd = tx.prepare_cached(
            "INSERT OR IGNORE INTO rqueue (recipient, rseq, digest) VALUES (?1, ?2, ?3)",
        )?;
        for s in senders {
            if fwd.execute(params![s.as_str(), receipt_rseq, &digest.0[..]])? > 0 {
                match p.forward_delta.get_mut(&s) {
                    Some(n) => *n += 1,
                    None => {
                        p.forward_delta.insert(s.clone(), 1);
                    }
                }
                p.posts.push((
                    s,
                    Kind::Receipt,
                    Posted {
                        pos: receipt_rseq,
                        id: None,
                        frame: frame.clone(),
                        posted_at: None,
                    },
                ));
            }
        }
    }
    let kind = if is_ack {
        "receipt.acknowledged"
    } else {
        "receipt.delivered"
    };
    journal.append(
        tx,
        now,
        kind,
        &digest.to_string(),
        &journal_record(signed, &digest),
    )?;
    p.receipts += 1;
    Ok(RelayToNode::ReceiptStored(digest))
}

/// The journal payload of a stored message or receipt: its digest, then the key and
/// signature it was signed with ([`JOURNAL_RECORD_BYTES`]). (Relays before this one
/// journaled the whole signed record; the chain holds either, as the payload is opaque to
/// it.)
///
/// The signed bytes themselves are in `messages` or `receipts`, which keep them for good,
/// and start-up checks that every row still hashes to its digest (`integrity_check`); the
/// digest in the chain commits the journal to those exact bytes. A second copy of each
/// message in the journal doubled what the writer wrote and hashed per message: p2p at
/// maximum, 16,036 msg/s with the copy against 17,990 without (docs/BENCHMARKS-ROUNDS.md, eighth
/// round).
fn journal_record<T: hotline_proto::SignedPayload>(signed: &Signed<T>, digest: &Digest) -> Vec<u8> {
    record_of(&digest.0, &signed.key().0, &signed.signature().0)
}

/// A journal record's size: digest, key, signature.
const JOURNAL_RECORD_BYTES: usize = 32 + 32 + 64;

/// A journal record from its parts (the one place that knows their order).
fn record_of(digest: &[u8], key: &[u8], sig: &[u8]) -> Vec<u8> {
    [digest, key, sig].concat()
}

/// The journal record of an entry that holds the whole signed record, as relays before this
/// one wrote it.
fn whole_record<T: hotline_proto::SignedPayload>(
    payload: &[u8],
) -> Result<Vec<u8>, hotline_proto::codec::DecodeError> {
    let s: Signed<T> = hotline_proto::codec::decode(payload, usize::MAX)?;
    Ok(journal_record(&s, &s.digest()))
}

/// A frame encoded once for all the sessions it is posted to.
fn shared_frame(f: &RelayToNode) -> Result<bytes::Bytes, StoreError> {
    hotline_proto::frame::encode_frame(f)
        .map(bytes::Bytes::from)
        .map_err(|e| StoreError::Sqlite(rusqlite::Error::ToSqlConversionFailure(Box::new(e))))
}

/// The stored copy of a message, for tests and tools.
pub fn read_message(
    conn: &Connection,
    id: &MessageId,
) -> Result<Option<Signed<Envelope>>, StoreError> {
    conn.query_row(
        "SELECT bytes, key, sig FROM messages WHERE id = ?1",
        [&id.0[..]],
        |r| signed_from_row(r, 0),
    )
    .optional()
    .map_err(StoreError::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hotline_proto::{
        Audience, Kind as MsgKind, Precedence, ReceiptItem, Seq, SigningKey, Status,
        PROTOCOL_VERSION,
    };

    /// A restore that died between setting the store aside and putting its copy in place
    /// (as `hotline restore` once did it, in two renames) left no `relay.db`, the store set
    /// aside beside it: a relay started then must not create an empty store and run on it,
    /// losing to it everything the store held, silently. It refuses, naming what it found.
    #[test]
    fn a_relay_does_not_create_an_empty_store_beside_one_set_aside() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, conn) = open_db(dir.path()).expect("store");
        drop(conn);
        // The old restore's first rename, then a crash before its second.
        let aside = dir.path().join("relay-replaced-20250101T000000.000Z.db");
        std::fs::rename(&path, &aside).expect("set aside");
        std::fs::write(dir.path().join(".relay.db.restoring"), b"").expect("incoming");
        let r = open_db(dir.path()).map(drop);
        assert!(r.is_err(), "a relay started on an empty store: {r:?}");
        assert!(!path.exists(), "no store created");
        let e = r.expect_err("refused").to_string();
        assert!(e.contains("relay-replaced-20250101T000000.000Z.db"), "{e}");
    }

    /// The schema as version 0 wrote it.
    const SCHEMA_V0: &str = "
    CREATE TABLE messages (id BLOB PRIMARY KEY, sender TEXT NOT NULL, seq INTEGER NOT NULL,
        digest BLOB NOT NULL, bytes BLOB NOT NULL, key BLOB NOT NULL, sig BLOB NOT NULL,
        accepted_at_ms INTEGER NOT NULL, recipients TEXT NOT NULL, UNIQUE (sender, seq));
    CREATE TABLE senders (participant TEXT PRIMARY KEY, last_seq INTEGER NOT NULL);
    CREATE TABLE queue (qid INTEGER PRIMARY KEY AUTOINCREMENT, recipient TEXT NOT NULL,
        msg_id BLOB NOT NULL, UNIQUE (recipient, msg_id));
    CREATE INDEX queue_by_recipient ON queue (recipient, qid);
    CREATE TABLE receipts (digest BLOB PRIMARY KEY, recipient TEXT NOT NULL,
        is_ack INTEGER NOT NULL, bytes BLOB NOT NULL, key BLOB NOT NULL, sig BLOB NOT NULL,
        stored_at_ms INTEGER NOT NULL);
    CREATE TABLE rqueue (qid INTEGER PRIMARY KEY AUTOINCREMENT, recipient TEXT NOT NULL,
        digest BLOB NOT NULL, UNIQUE (recipient, digest));
    CREATE INDEX rqueue_by_recipient ON rqueue (recipient, qid);
    CREATE TABLE matrix (msg_id BLOB NOT NULL, recipient TEXT NOT NULL,
        delivered_at_ms INTEGER, acked_at_ms INTEGER, PRIMARY KEY (msg_id, recipient))
        WITHOUT ROWID;
    ";

    fn pid(s: &str) -> ParticipantId {
        ParticipantId::new(s).expect("participant id")
    }

    /// Submissions commit at once and alone; receipts wait for their deadline or a full
    /// batch, and never ride in a submission's commit.
    #[test]
    fn submissions_commit_alone_and_receipts_wait_for_company() {
        let plan_of = |subs, others, due| {
            let p = plan(subs, others, 8, due);
            (p.submissions_now, p.others_now)
        };
        // A submission with receipts waiting: the submission alone.
        assert_eq!(plan_of(1, 3, false), (true, false));
        // Receipts alone wait...
        assert_eq!(plan_of(0, 3, false), (false, false));
        // ...until their deadline, with or without a submission beside them...
        assert_eq!(plan_of(0, 3, true), (false, true));
        assert_eq!(plan_of(1, 3, true), (true, true));
        // ...or until the batch is full.
        assert_eq!(plan_of(0, 8, false), (false, true));
        assert_eq!(plan_of(2, 6, false), (true, true));
        // Nothing to commit is never committed.
        assert_eq!(plan_of(1, 0, true), (true, false));
        assert_eq!(plan_of(0, 0, true), (false, false));
    }

    /// A sender's last sequence number is its messages' highest, or the `senders` floor
    /// where that is higher (a relay before the thirteenth round wrote the table in every
    /// commit; a deletion of messages must write it); 0 for a sender never seen. The writer's
    /// map, loaded at open, and the readers' query agree.
    #[test]
    fn a_senders_last_seq_is_its_messages_highest_or_the_floor() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, conn) = open_db(dir.path()).expect("store");
        let kaz = SigningKey::from_bytes(&[1; 32]);
        for n in [3u8, 7, 5] {
            let m = message(&kaz, n);
            conn.execute(
                "INSERT INTO messages (id, sender, seq, digest, bytes, key, sig, accepted_at_ms, recipients)
                 VALUES (?1, 'KAZ', ?2, ?3, ?4, ?5, ?6, 1000, 'CHN,IND')",
                params![&[n; 16][..], n, &m.digest().0[..], m.bytes(), &m.key().0[..], &m.signature().0[..]],
            )
            .expect("message");
        }
        // CHN's floor is above any message of its (it has none); KAZ's below its messages.
        conn.execute_batch(
            "INSERT INTO senders VALUES ('CHN', 12); INSERT INTO senders VALUES ('KAZ', 4);",
        )
        .expect("floors");
        let queues = load_queues(&conn, Whose::All).expect("queues").index;
        let readers = Readers::open(&path, Arc::new(Mutex::new(queues))).expect("readers");
        let read = |who: &str| readers.last_seq(0, &pid(who)).expect("last_seq");
        assert_eq!((read("KAZ"), read("CHN"), read("IND")), (7, 12, 0));

        let loaded: HashMap<String, u64> = conn
            .prepare(SENDERS_LAST_SEQ)
            .expect("prepare")
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows");
        assert_eq!(
            loaded,
            HashMap::from([("KAZ".to_owned(), 7), ("CHN".to_owned(), 12)])
        );
    }

    fn message(key: &SigningKey, n: u8) -> Signed<Envelope> {
        message_to(key, n, Audience::Participants(vec![pid("CHN"), pid("IND")]))
    }

    /// KAZ's alert number `n` (its id `[n; 16]`) to `audience`, signed with `key`.
    fn message_to(key: &SigningKey, n: u8, audience: Audience) -> Signed<Envelope> {
        let env = Envelope {
            version: PROTOCOL_VERSION,
            id: MessageId([n; 16]),
            sender: pid("KAZ"),
            seq: Seq(n as u64),
            audience,
            kind: MsgKind::Alert,
            precedence: Precedence::Routine,
            status: Status::Exercise,
            created_at_ms: 1_000,
            respond_by_ms: None,
            references: vec![],
            category: None,
            subject: format!("message {n}"),
            body: "body".into(),
        };
        Signed::sign(&env, key).expect("sign")
    }

    fn insert_v0_message(c: &Connection, s: &Signed<Envelope>, n: u8) {
        c.execute(
            "INSERT INTO messages VALUES (?1, 'KAZ', ?2, ?3, ?4, ?5, ?6, 1000, 'CHN,IND')",
            params![
                &[n; 16][..],
                n,
                &s.digest().0[..],
                s.bytes(),
                &s.key().0[..],
                &s.signature().0[..]
            ],
        )
        .expect("insert message");
    }

    /// Opens a store written by an older schema, which migrates it; checks the version.
    fn migrated(dir: &Path) -> (Connection, Readers) {
        let (path, conn) = open_db(dir).expect("migrated");
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .expect("version");
        assert_eq!(version, SCHEMA_VERSION);
        let queues = load_queues(&conn, Whose::All).expect("queues").index;
        let readers = Readers::open(&path, Arc::new(Mutex::new(queues))).expect("readers");
        (conn, readers)
    }

    #[test]
    fn a_version_0_store_is_migrated_with_its_queues_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(DB_FILE);
        let kaz = SigningKey::from_bytes(&[1; 32]);
        let chn = SigningKey::from_bytes(&[2; 32]);
        let (m1, m2, m3) = (message(&kaz, 1), message(&kaz, 2), message(&kaz, 3));
        // CHN holds message 1 (its receipt, queued for KAZ); both still wait for 2 and 3.
        let receipt = receipt_from(&chn, "CHN", 2_000, &m1);
        {
            let c = hotline_store::open(&path, true).expect("open");
            c.execute_batch(SCHEMA_V0).expect("v0 schema");
            c.execute_batch(hotline_store::journal::SCHEMA)
                .expect("journal");
            // Inserted out of id order, so that order is the insertion (acceptance) order.
            insert_v0_message(&c, &m3, 3);
            insert_v0_message(&c, &m1, 1);
            insert_v0_message(&c, &m2, 2);
            c.execute_batch(
                "INSERT INTO queue (recipient, msg_id) VALUES ('IND', x'01010101010101010101010101010101');
                 INSERT INTO queue (recipient, msg_id) VALUES ('IND', x'02020202020202020202020202020202');
                 INSERT INTO queue (recipient, msg_id) VALUES ('CHN', x'02020202020202020202020202020202');
                 INSERT INTO queue (recipient, msg_id) VALUES ('IND', x'03030303030303030303030303030303');
                 INSERT INTO queue (recipient, msg_id) VALUES ('CHN', x'03030303030303030303030303030303');",
            )
            .expect("queue");
            c.execute(
                "INSERT INTO receipts VALUES (?1, 'CHN', 0, ?2, ?3, ?4, 2000)",
                params![
                    &receipt.digest().0[..],
                    receipt.bytes(),
                    &receipt.key().0[..],
                    &receipt.signature().0[..]
                ],
            )
            .expect("receipt");
            c.execute_batch(
                "INSERT INTO matrix VALUES (x'01010101010101010101010101010101', 'CHN', 2000, NULL);",
            )
            .expect("matrix");
            c.execute(
                "INSERT INTO rqueue (recipient, digest) VALUES ('KAZ', ?1)",
                [&receipt.digest().0[..]],
            )
            .expect("rqueue");
        }
        let (conn, readers) = migrated(dir.path());
        let ids = |who: &str| -> Vec<u8> {
            readers
                .backlog(0, &pid(who), 0, 10)
                .expect("backlog")
                .0
                .iter()
                .map(|(_, id, _)| id.0[0])
                .collect()
        };
        // Acceptance order: 3 was accepted first.
        assert_eq!(ids("IND"), vec![3, 1, 2]);
        assert_eq!(ids("CHN"), vec![3, 2]);
        let (stored, _) = readers.backlog(0, &pid("CHN"), 0, 10).expect("backlog");
        assert_eq!(stored[1].2.bytes(), m2.bytes(), "bytes survive verbatim");
        let (receipts, _) = readers.receipts(0, &pid("KAZ"), 0, 10).expect("receipts");
        assert_eq!(receipts.len(), 1);
        assert_eq!(receipts[0].1.bytes(), receipt.bytes());
        let matrix = table_exists(&conn, "matrix").expect("schema");
        assert!(!matrix, "the relay's copy of the matrix is dropped");
        // Opening again is a no-op.
        drop(conn);
        open_db(dir.path()).expect("reopened");
        assert_eq!(ids("IND"), vec![3, 1, 2]);
    }

    /// The receipt tables as version 1 wrote them (the other tables are as now).
    const SCHEMA_V1_RECEIPTS: &str = "
    CREATE TABLE receipts (rseq INTEGER PRIMARY KEY AUTOINCREMENT, digest BLOB NOT NULL UNIQUE,
        recipient TEXT NOT NULL, is_ack INTEGER NOT NULL, bytes BLOB NOT NULL,
        key BLOB NOT NULL, sig BLOB NOT NULL, stored_at_ms INTEGER NOT NULL);
    CREATE TABLE rqueue (recipient TEXT NOT NULL, rseq INTEGER NOT NULL,
        PRIMARY KEY (recipient, rseq)) WITHOUT ROWID;
    ";

    fn receipt_from(
        key: &SigningKey,
        who: &str,
        at: u64,
        of: &Signed<Envelope>,
    ) -> Signed<Receipt> {
        receipt_of(ReceiptKind::Delivered, key, who, at, of)
    }

    fn receipt_of(
        kind: ReceiptKind,
        key: &SigningKey,
        who: &str,
        at: u64,
        of: &Signed<Envelope>,
    ) -> Signed<Receipt> {
        let env = of.decode_unverified().expect("message decodes");
        Signed::sign(
            &Receipt {
                version: PROTOCOL_VERSION,
                recipient: pid(who),
                kind,
                created_at_ms: at,
                items: vec![ReceiptItem {
                    id: env.id,
                    sender: env.sender,
                    digest: of.digest(),
                }],
            },
            key,
        )
        .expect("sign receipt")
    }

    /// A store from a relay before `acks` gets it filled from its acknowledgements, so that
    /// one of them sent again is not news; delivered receipts and other messages add nothing.
    #[test]
    fn a_store_without_acks_gets_them_from_its_acknowledgements() {
        for without_table in [true, false] {
            a_store_without_acks_gets_them(without_table);
        }
    }

    fn a_store_without_acks_gets_them(without_table: bool) {
        let dir = tempfile::tempdir().expect("tempdir");
        let kaz = SigningKey::from_bytes(&[1; 32]);
        let (chn, ind) = (
            SigningKey::from_bytes(&[2; 32]),
            SigningKey::from_bytes(&[3; 32]),
        );
        let (m1, m2) = (message(&kaz, 1), message(&kaz, 2));
        let ack = ReceiptKind::Acknowledged {
            officer: "Duty officer".into(),
            note: None,
        };
        {
            let (_, c) = open_db(dir.path()).expect("open");
            for (n, m) in [(1u8, &m1), (2, &m2)] {
                c.execute(
                    "INSERT INTO messages (id, sender, seq, digest, bytes, key, sig, accepted_at_ms, recipients)
                     VALUES (?1, 'KAZ', ?2, ?3, ?4, ?5, ?6, 1000, 'CHN,IND')",
                    params![&[n; 16][..], n, &m.digest().0[..], m.bytes(), &m.key().0[..], &m.signature().0[..]],
                )
                .expect("message");
            }
            let receipts = [
                (receipt_of(ack.clone(), &chn, "CHN", 2_000, &m1), "CHN", 1),
                (receipt_from(&ind, "IND", 2_001, &m1), "IND", 0),
                (receipt_of(ack.clone(), &ind, "IND", 2_002, &m2), "IND", 1),
            ];
            for (r, who, is_ack) in &receipts {
                c.execute(
                    "INSERT INTO receipts (created_at_ms, digest, recipient, is_ack, bytes, key, sig, stored_at_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 3000)",
                    params![
                        r.decode_unverified().expect("decodes").created_at_ms,
                        &r.digest().0[..],
                        who,
                        is_ack,
                        r.bytes(),
                        &r.key().0[..],
                        &r.signature().0[..]
                    ],
                )
                .expect("receipt");
            }
            // Last opened by a schema 3 relay from before `acks`: an empty table, or none.
            c.execute_batch("DELETE FROM acks; PRAGMA user_version = 3")
                .expect("as before acks");
            if without_table {
                c.execute_batch("DROP TABLE acks").expect("no table");
            }
        }
        let (_, c) = open_db(dir.path()).expect("reopen");
        let acks: Vec<(String, i64)> = c
            .prepare("SELECT recipient, m.seq FROM acks a JOIN messages m ON m.rseq = a.rseq ORDER BY 1, 2")
            .expect("acks")
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .expect("rows")
            .collect::<rusqlite::Result<_>>()
            .expect("read");
        assert_eq!(
            acks,
            vec![("CHN".to_owned(), 1), ("IND".to_owned(), 2)],
            "without the table: {without_table}"
        );
        // Opened again, nothing changes.
        drop(c);
        let (_, c) = open_db(dir.path()).expect("third open");
        let n: i64 = c
            .query_row("SELECT count(*) FROM acks", [], |r| r.get(0))
            .expect("count");
        assert_eq!(n, 2);
    }

    /// How many journal entries of `kind` the store holds.
    fn journaled(c: &Connection, kind: &str) -> i64 {
        c.query_row(
            "SELECT COUNT(*) FROM journal WHERE kind = ?1",
            [kind],
            |r| r.get(0),
        )
        .expect("journal")
    }

    /// Messages 1, 2, 3 from KAZ to CHN and IND, accepted at 1, 2 and 3 s; CHN has
    /// receipted 1, and 3 out of order; IND everything.
    fn three_messages_for_two(dir: &Path) {
        let kaz = SigningKey::from_bytes(&[1; 32]);
        let (_, c) = open_db(dir).expect("open");
        for n in 1u8..=3 {
            let m = message(&kaz, n);
            c.execute(
                "INSERT INTO messages (id, sender, seq, digest, bytes, key, sig, accepted_at_ms, recipients)
                 VALUES (?1, 'KAZ', ?2, ?3, ?4, ?5, ?6, ?7, 'CHN,IND')",
                params![&[n; 16][..], n, &m.digest().0[..], m.bytes(), &m.key().0[..], &m.signature().0[..], i64::from(n) * 1000],
            )
            .expect("message");
        }
        c.execute_batch(
            "INSERT INTO cursors VALUES ('CHN', 1), ('IND', 3); INSERT INTO ahead VALUES ('CHN', 3);",
        )
        .expect("queues");
    }

    /// A restored relay's queues, all moved back to a time at once, in one journaled
    /// transaction; nothing accepted since then changes nothing.
    #[test]
    fn every_recipient_is_owed_again_what_was_accepted_since_a_time() {
        let dir = tempfile::tempdir().expect("tempdir");
        three_messages_for_two(dir.path());
        let unchanged = redeliver_all_since(dir.path(), 5_000, 10_000).expect("rewind");
        assert!(unchanged
            .iter()
            .all(|(_, r)| r.messages == 0 && r.cursor == r.cursor_was));
        let all = redeliver_all_since(dir.path(), 1_500, 10_000).expect("rewind");
        let owed = |messages, cursor_was| Rewound {
            messages,
            cursor_was,
            cursor: 1,
            receipts: 0,
        };
        assert_eq!(
            all,
            vec![(pid("CHN"), owed(2, 1)), (pid("IND"), owed(2, 3))]
        );
        let (_, c) = open_db(dir.path()).expect("reopen");
        assert_eq!(queued_for(&c, &pid("IND")).expect("queue"), 2);
        assert_eq!(journaled(&c, "queue.rewound"), 2);
    }

    /// A stopped relay's queue for one recipient moved back to a time: what it was
    /// delivered since then is owed again, and nobody else's queue changes.
    #[test]
    fn a_recipient_is_owed_again_what_was_accepted_since_a_time() {
        let dir = tempfile::tempdir().expect("tempdir");
        three_messages_for_two(dir.path());
        {
            let (_, c) = open_db(dir.path()).expect("open");
            assert_eq!(queued_for(&c, &pid("CHN")).expect("queue"), 1);
        }
        let chn = pid("CHN");
        assert_eq!(
            redeliver_since(dir.path(), &chn, 2_000, 10_000).expect("rewind"),
            Rewound {
                messages: 2,
                cursor_was: 1,
                cursor: 1,
                receipts: 0,
            }
        );
        assert_eq!(
            redeliver_since(dir.path(), &pid("IND"), 1_500, 10_000).expect("rewind"),
            Rewound {
                messages: 2,
                cursor_was: 3,
                cursor: 1,
                receipts: 0,
            }
        );
        let (_, c) = open_db(dir.path()).expect("reopen");
        assert_eq!(queued_for(&c, &chn).expect("queue"), 2);
        assert_eq!(queued_for(&c, &pid("IND")).expect("queue"), 2);
        assert_eq!(journaled(&c, "queue.rewound"), 2);
        drop(c);
        // Nothing accepted since then, or a participant never addressed: nothing changes.
        assert_eq!(
            redeliver_since(dir.path(), &chn, 5_000, 10_000)
                .expect("rewind")
                .messages,
            0
        );
        assert_eq!(
            redeliver_since(dir.path(), &pid("TJK"), 0, 10_000)
                .expect("rewind")
                .messages,
            0
        );
    }

    /// A sender's node restored from a backup lost the receipts of its messages forwarded
    /// to it since, which it had confirmed (so they left its forward queue): redelivering
    /// to it since the backup's time queues again those stored since then, and not those
    /// stored before, nor, to a recipient, the receipts it signed itself.
    #[test]
    fn a_redelivery_to_a_sender_forwards_again_the_receipts_of_its_messages_since_a_time() {
        let dir = tempfile::tempdir().expect("tempdir");
        three_messages_for_two(dir.path());
        let kaz = SigningKey::from_bytes(&[1; 32]);
        let chn = SigningKey::from_bytes(&[2; 32]);
        let ind = SigningKey::from_bytes(&[3; 32]);
        {
            let (_, c) = open_db(dir.path()).expect("open");
            // CHN's receipt was stored at 1.5 s (before the backup at 2 s), IND's at 4 s,
            // IND's acknowledgement at 6 s; KAZ's node confirmed all three.
            let ack = ReceiptKind::Acknowledged {
                officer: "Duty officer".into(),
                note: None,
            };
            let kept = [
                (receipt_from(&chn, "CHN", 1_500, &message(&kaz, 1)), 1_500),
                (receipt_from(&ind, "IND", 4_000, &message(&kaz, 2)), 4_000),
                (
                    receipt_of(ack, &ind, "IND", 6_000, &message(&kaz, 2)),
                    6_000,
                ),
            ];
            for (r, stored) in &kept {
                let d = r.decode_unverified().expect("decodes");
                c.execute(
                    "INSERT INTO receipts (created_at_ms, digest, recipient, is_ack, bytes, key, sig, stored_at_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                    params![
                        d.created_at_ms as i64,
                        &r.digest().0[..],
                        d.recipient.as_str(),
                        d.is_ack(),
                        r.bytes(),
                        &r.key().0[..],
                        &r.signature().0[..],
                        *stored as i64
                    ],
                )
                .expect("receipt");
            }
        }
        let forwarded = |c: &Connection| -> Vec<String> {
            c.prepare("SELECT r.recipient FROM rqueue q JOIN receipts r ON r.rseq = q.rseq WHERE q.recipient = 'KAZ' ORDER BY q.rseq")
                .expect("prepare")
                .query_map([], |r| r.get(0))
                .expect("query")
                .collect::<Result<_, _>>()
                .expect("rows")
        };
        // To a recipient, its own receipts are not forwarded again.
        assert_eq!(
            redeliver_since(dir.path(), &pid("IND"), 2_000, 10_000)
                .expect("rewind")
                .receipts,
            0
        );
        let r = redeliver_since(dir.path(), &pid("KAZ"), 2_000, 10_000).expect("rewind");
        assert_eq!(r.receipts, 2);
        let (_, c) = open_db(dir.path()).expect("reopen");
        assert_eq!(forwarded(&c), ["IND", "IND"]);
        assert_eq!(journaled(&c, "receipts.forwarded_again"), 1);
        drop(c);
        // Asked again from further back: only CHN's, stored before 2 s, is queued now;
        // IND's are in the queue already.
        assert_eq!(
            redeliver_since(dir.path(), &pid("KAZ"), 0, 10_000)
                .expect("rewind")
                .receipts,
            1
        );
    }

    /// The running relay queues receipts again in its writer, which every submission waits
    /// for; receipts are kept for good, so the writer must not read the whole table to find
    /// those stored since the time (as the first message since it, the receipt it starts
    /// from is found on a read connection first): it reads them by position, from there.
    #[test]
    fn the_writer_reads_only_the_receipts_from_the_first_stored_since_the_time() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_, c) = open_db(dir.path()).expect("open");
        let mut st = c
            .prepare(&format!("EXPLAIN QUERY PLAN {FORWARD_AGAIN_READ}"))
            .expect("prepare");
        let zeros = rusqlite::params_from_iter(std::iter::repeat_n(0i64, st.parameter_count()));
        let plan: Vec<String> = st
            .query_map(zeros, |r| r.get::<_, String>(3))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows");
        assert!(
            plan.iter().all(|p| !p.starts_with("SCAN"))
                && plan.iter().any(|p| p.contains("rowid>")),
            "{plan:?}"
        );
    }

    #[test]
    fn a_version_1_store_is_migrated_keeping_receipt_positions_and_the_receipt_queue() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(DB_FILE);
        let kaz = SigningKey::from_bytes(&[1; 32]);
        let (chn, ind) = (
            SigningKey::from_bytes(&[2; 32]),
            SigningKey::from_bytes(&[3; 32]),
        );
        let m1 = message(&kaz, 1);
        let r_chn = receipt_from(&chn, "CHN", 2_000, &m1);
        // The latest signing time a receipt may carry (`TIME_MS_MAX`) keeps its place.
        let r_ind = receipt_from(&ind, "IND", hotline_proto::limits::TIME_MS_MAX, &m1);
        {
            let c = hotline_store::open(&path, true).expect("open");
            // Version 1: today's tables but for the two receipt tables.
            let v1: String = SCHEMA
                .split("CREATE TABLE IF NOT EXISTS receipts")
                .next()
                .expect("schema text")
                .to_owned();
            c.execute_batch(&v1).expect("v1 schema");
            c.execute_batch(QUEUE_V2).expect("v1 queue");
            c.execute_batch(SCHEMA_V1_RECEIPTS).expect("v1 receipts");
            c.execute_batch(hotline_store::journal::SCHEMA)
                .expect("journal");
            c.execute(
                "INSERT INTO messages (id, sender, seq, digest, bytes, key, sig, accepted_at_ms, recipients)
                 VALUES (?1, 'KAZ', 1, ?2, ?3, ?4, ?5, 1000, 'CHN,IND')",
                params![
                    &[1u8; 16][..],
                    &m1.digest().0[..],
                    m1.bytes(),
                    &m1.key().0[..],
                    &m1.signature().0[..]
                ],
            )
            .expect("message");
            for (rseq, r, who) in [(5, &r_chn, "CHN"), (6, &r_ind, "IND")] {
                c.execute(
                    "INSERT INTO receipts VALUES (?1, ?2, ?3, 0, ?4, ?5, ?6, 3000)",
                    params![
                        rseq,
                        &r.digest().0[..],
                        who,
                        r.bytes(),
                        &r.key().0[..],
                        &r.signature().0[..]
                    ],
                )
                .expect("receipt");
            }
            // Both wait to be forwarded to KAZ; position 9 was handed out and never kept.
            c.execute_batch(
                "INSERT INTO rqueue VALUES ('KAZ', 5); INSERT INTO rqueue VALUES ('KAZ', 6);
                 UPDATE sqlite_sequence SET seq = 9 WHERE name = 'receipts';
                 PRAGMA user_version = 1;",
            )
            .expect("rqueue");
        }
        let (conn, readers) = migrated(dir.path());
        let (queued, _) = readers.receipts(0, &pid("KAZ"), 0, 10).expect("receipts");
        let got: Vec<(i64, Vec<u8>)> = queued
            .iter()
            .map(|(pos, r)| (*pos, r.bytes().to_vec()))
            .collect();
        assert_eq!(
            got,
            vec![(5, r_chn.bytes().to_vec()), (6, r_ind.bytes().to_vec())],
            "positions and order kept"
        );
        let keys: Vec<(i64, Vec<u8>)> = conn
            .prepare("SELECT created_at_ms, digest FROM receipts ORDER BY rseq")
            .and_then(|mut st| {
                st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<rusqlite::Result<_>>()
            })
            .expect("keys");
        assert_eq!(
            keys,
            vec![
                (2_000, r_chn.digest().0.to_vec()),
                (i64::MAX, r_ind.digest().0.to_vec())
            ]
        );
        let forwarding: Vec<Vec<u8>> = conn
            .prepare("SELECT digest FROM rqueue WHERE recipient = 'KAZ' ORDER BY rseq")
            .and_then(|mut st| {
                st.query_map([], |r| r.get(0))?
                    .collect::<rusqlite::Result<_>>()
            })
            .expect("rqueue");
        assert_eq!(
            forwarding,
            vec![r_chn.digest().0.to_vec(), r_ind.digest().0.to_vec()],
            "the receipt queue names each receipt's digest"
        );
        let next: i64 = conn
            .query_row(
                "SELECT seq FROM sqlite_sequence WHERE name = 'receipts'",
                [],
                |r| r.get(0),
            )
            .expect("sequence");
        assert_eq!(
            next, 9,
            "a position once handed out is not handed out again"
        );
        // Opening again is a no-op.
        drop(conn);
        open_db(dir.path()).expect("reopened");
        assert_eq!(
            readers
                .receipts(0, &pid("KAZ"), 0, 10)
                .expect("receipts")
                .0
                .len(),
            2
        );
    }

    #[test]
    fn a_version_2_store_gets_cursors_for_its_queue_rows() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(DB_FILE);
        let kaz = SigningKey::from_bytes(&[1; 32]);
        {
            let c = hotline_store::open(&path, true).expect("open");
            let v2 = SCHEMA
                .split("CREATE TABLE IF NOT EXISTS cursors")
                .next()
                .expect("schema text");
            c.execute_batch(v2).expect("v2 schema");
            c.execute_batch(QUEUE_V2).expect("v2 queue");
            c.execute_batch(hotline_store::journal::SCHEMA)
                .expect("journal");
            for n in 1..=5u8 {
                let m = message(&kaz, n);
                // KGZ, only on the last one, has receipted it.
                let to = if n == 5 { "CHN,IND,KGZ" } else { "CHN,IND" };
                c.execute(
                    "INSERT INTO messages (id, sender, seq, digest, bytes, key, sig, accepted_at_ms, recipients)
                     VALUES (?1, 'KAZ', ?2, ?3, ?4, ?5, ?6, 1000, ?7)",
                    params![
                        &[n; 16][..],
                        n,
                        &m.digest().0[..],
                        m.bytes(),
                        &m.key().0[..],
                        &m.signature().0[..],
                        to
                    ],
                )
                .expect("message");
            }
            // IND has receipted messages 1 and 3 (3 out of order); CHN 2 to 4, all out of
            // order, so what it is owed is sparse.
            c.execute_batch(
                "INSERT INTO queue VALUES (2, 'IND'); INSERT INTO queue VALUES (4, 'IND');
                 INSERT INTO queue VALUES (5, 'IND'); INSERT INTO queue VALUES (1, 'CHN');
                 INSERT INTO queue VALUES (5, 'CHN'); PRAGMA user_version = 2;",
            )
            .expect("queue");
        }
        let (conn, readers) = migrated(dir.path());
        let ids = |readers: &Readers, who: &str| -> Vec<(i64, u8)> {
            readers
                .backlog(0, &pid(who), 0, 10)
                .expect("backlog")
                .0
                .iter()
                .map(|(pos, id, _)| (*pos, id.0[0]))
                .collect()
        };
        assert_eq!(ids(&readers, "IND"), vec![(2, 2), (4, 4), (5, 5)]);
        assert_eq!(ids(&readers, "CHN"), vec![(1, 1), (5, 5)]);
        assert_eq!(ids(&readers, "KGZ"), vec![]);
        let after_2: Vec<i64> = readers
            .backlog(0, &pid("IND"), 2, 1)
            .expect("backlog")
            .0
            .iter()
            .map(|(pos, _, _)| *pos)
            .collect();
        assert_eq!(after_2, vec![4], "after a position, up to the limit");
        let rows = |sql: &str| -> Vec<(String, i64)> {
            conn.prepare(sql)
                .and_then(|mut st| {
                    st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                        .collect::<rusqlite::Result<_>>()
                })
                .expect("rows")
        };
        assert_eq!(
            rows("SELECT recipient, rseq FROM cursors ORDER BY recipient"),
            vec![
                ("CHN".to_string(), 0),
                ("IND".to_string(), 1),
                ("KGZ".to_string(), 5)
            ],
            "just below the oldest queued, or at the newest message"
        );
        assert_eq!(
            rows("SELECT recipient, rseq FROM ahead ORDER BY recipient, rseq"),
            vec![
                ("CHN".to_string(), 2),
                ("CHN".to_string(), 3),
                ("CHN".to_string(), 4),
                ("IND".to_string(), 3)
            ],
            "receipted out of order"
        );
        let queue_left = table_exists(&conn, "queue").expect("schema");
        assert!(!queue_left, "the queue rows are gone");
        assert_eq!(queued_for(&conn, &pid("IND")).expect("queued"), 3);
        // Opening again is a no-op.
        drop((conn, readers));
        let (_conn, readers) = migrated(dir.path());
        assert_eq!(ids(&readers, "IND"), vec![(2, 2), (4, 4), (5, 5)]);
    }

    /// A message journaled the old way (the whole signed record) and one the new way
    /// (digest, key, signature) both match their rows; a row whose key no longer matches
    /// its old-style entry, and a row journaled nowhere, are named.
    #[test]
    fn journaled_records_of_either_form_match_their_rows() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, c) = open_db(dir.path()).expect("open");
        let key = SigningKey::from_bytes(&[7; 32]);
        let (old, new) = (message(&key, 1), message(&key, 2));
        // A message row as the writer stores it (the columns `verify_journaled_records`
        // reads, and what the schema requires).
        let insert = |rseq: i64, s: &Signed<Envelope>| {
            let env = s.decode_unverified().expect("decodes");
            c.execute(
                "INSERT INTO messages (rseq, id, sender, seq, digest, bytes, key, sig,
                 accepted_at_ms, recipients) VALUES (?1, ?2, 'KAZ', ?1, ?3, ?4, ?5, ?6, 1000, 'CHN')",
                params![
                    rseq,
                    &env.id.0[..],
                    &s.digest().0[..],
                    s.bytes(),
                    &s.key().0[..],
                    &s.signature().0[..]
                ],
            )
            .expect("message row");
            env.id
        };
        let mut journal = Journal::load(&c).expect("journal");
        for (rseq, s) in [(1i64, &old), (2, &new)] {
            let id = insert(rseq, s);
            let payload = if rseq == 1 {
                hotline_proto::codec::encode(s, usize::MAX).expect("encodes")
            } else {
                journal_record(s, &s.digest())
            };
            journal
                .append(&c, 1000, "message.accepted", &id.to_string(), &payload)
                .expect("journaled");
        }
        assert_eq!(verify_journaled_records(&c, &path).expect("match"), 2);

        c.execute("UPDATE messages SET key = zeroblob(32) WHERE rseq = 1", [])
            .expect("tamper");
        let err = verify_journaled_records(&c, &path).expect_err("key changed");
        assert!(
            err.to_string().contains("differs from journal entry 1"),
            "{err}"
        );
        c.execute(
            "UPDATE messages SET key = ?1 WHERE rseq = 1",
            params![&old.key().0[..]],
        )
        .expect("restore");

        insert(3, &message(&key, 3));
        let err = verify_journaled_records(&c, &path).expect_err("unjournaled");
        assert!(
            err.to_string()
                .contains("stored message 03030303030303030303030303030303 has no journal entry"),
            "{err}"
        );
    }

    /// The check walks rows and entries in the order of their names, so the journal's own
    /// order (acceptance, receipts interleaved) is not the rows': a store of thousands of
    /// each verifies, and of several faults the one named is the entry with the lowest
    /// number, or, with none, the first row journaled nowhere with how many are.
    #[test]
    fn journaled_records_are_matched_in_bounded_memory_and_the_first_fault_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, c) = open_db(dir.path()).expect("open");
        let (messages, receipts) = (3_000i64, 6_000i64);
        // Random names, so that no row's name follows its position or its entry's number.
        c.execute_batch(&format!(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {messages})
             INSERT INTO messages (rseq, id, sender, seq, digest, bytes, key, sig,
                                   accepted_at_ms, recipients)
             SELECT i, randomblob(16), 'KAZ', i, randomblob(32), x'00', randomblob(32),
                    randomblob(64), 1000, 'CHN' FROM n;
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {receipts})
             INSERT INTO receipts (rseq, created_at_ms, digest, recipient, is_ack, bytes, key,
                                   sig, stored_at_ms)
             SELECT i, i, randomblob(32), 'CHN', i % 2, x'00', randomblob(32), randomblob(64), 1
             FROM n;"
        ))
        .expect("rows");
        let mut journal = Journal::load(&c).expect("journal");
        let record = |table: &str, name: &str, rseq: i64| -> (String, Vec<u8>) {
            c.query_row(
                &format!("SELECT {name}, digest, key, sig FROM {table} WHERE rseq = ?1"),
                [rseq],
                |r| {
                    let name: Vec<u8> = r.get(0)?;
                    let (d, k, s): (Vec<u8>, Vec<u8>, Vec<u8>) = (r.get(1)?, r.get(2)?, r.get(3)?);
                    Ok((hex::encode(name), record_of(&d, &k, &s)))
                },
            )
            .expect("row")
        };
        // A message, then its two receipts, as a relay journals them; in one commit.
        let tx = c.unchecked_transaction().expect("tx");
        for i in 1..=messages {
            let (id, rec) = record("messages", "id", i);
            journal
                .append(&c, 1000, "message.accepted", &id, &rec)
                .expect("journaled");
            for r in [2 * i - 1, 2 * i] {
                let (digest, rec) = record("receipts", "digest", r);
                let kind = ["receipt.delivered", "receipt.acknowledged"][(r % 2) as usize];
                journal
                    .append(&c, 1000, kind, &digest, &rec)
                    .expect("journaled");
            }
        }
        tx.commit().expect("committed");
        assert_eq!(
            verify_journaled_records(&c, &path).expect("all match"),
            (messages + receipts) as u64
        );
        let fault = |c: &Connection| match verify_journaled_records(c, &path) {
            Err(StoreError::Corrupt { detail, .. }) => detail,
            other => panic!("expected Corrupt, got {other:?}"),
        };
        let tx = c.unchecked_transaction().expect("tx");
        // Faults in entries 9000 (a receipt gone), 4000 (a message's key edited) and 7000
        // (a message gone): 4000 is named.
        let entry_subject = |seq: i64| -> String {
            tx.query_row("SELECT subject FROM journal WHERE seq = ?1", [seq], |r| {
                r.get(0)
            })
            .expect("entry")
        };
        let (e4000, e7000, e9000) = (
            entry_subject(4000),
            entry_subject(7000),
            entry_subject(9000),
        );
        let kind_of = |seq: i64| -> String {
            tx.query_row("SELECT kind FROM journal WHERE seq = ?1", [seq], |r| {
                r.get(0)
            })
            .expect("entry")
        };
        assert_eq!(
            (
                kind_of(4000).as_str(),
                kind_of(7000).as_str(),
                kind_of(9000).as_str()
            ),
            ("message.accepted", "message.accepted", "receipt.delivered")
        );
        tx.execute(
            "DELETE FROM receipts WHERE lower(hex(digest)) = ?1",
            [&e9000],
        )
        .expect("gone");
        assert_eq!(
            fault(&tx),
            format!("journal entry 9000 (receipt.delivered) names {e9000}, which is not stored")
        );
        tx.execute("DELETE FROM messages WHERE lower(hex(id)) = ?1", [&e7000])
            .expect("gone");
        tx.execute(
            "UPDATE messages SET key = zeroblob(32) WHERE lower(hex(id)) = ?1",
            [&e4000],
        )
        .expect("edited");
        assert_eq!(
            fault(&tx),
            format!("stored message {e4000} differs from journal entry 4000")
        );
        tx.rollback().expect("undone");
        // Rows journaled nowhere: three receipts and two messages; the lowest message is named.
        let tx = c.unchecked_transaction().expect("tx");
        tx.execute_batch(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3)
             INSERT INTO receipts (created_at_ms, digest, recipient, is_ack, bytes, key, sig,
                                   stored_at_ms)
             SELECT 0, randomblob(32), 'CHN', 0, x'00', randomblob(32), randomblob(64), 1 FROM n;
             INSERT INTO messages (id, sender, seq, digest, bytes, key, sig, accepted_at_ms,
                                   recipients)
             VALUES (x'ffffffffffffffffffffffffffffffff', 'KAZ', 100000, zeroblob(32), x'00',
                     zeroblob(32), zeroblob(64), 1, 'CHN'),
                    (x'00000000000000000000000000000000', 'KAZ', 100001, zeroblob(32), x'00',
                     zeroblob(32), zeroblob(64), 1, 'CHN');",
        )
        .expect("unjournaled rows");
        assert_eq!(
            fault(&tx),
            "stored message 00000000000000000000000000000000 has no journal entry (2 in all)"
        );
        tx.execute_batch("DELETE FROM messages WHERE seq >= 100000")
            .expect("gone");
        assert!(
            fault(&tx).ends_with("has no journal entry (3 in all)"),
            "{}",
            fault(&tx)
        );
        tx.rollback().expect("undone");
        // An entry naming a message twice: the second names one no longer unmatched.
        let (id, rec) = record("messages", "id", 17);
        let tx = c.unchecked_transaction().expect("tx");
        journal
            .append(&tx, 1000, "message.accepted", &id, &rec)
            .expect("journaled");
        let seq = 3 * messages + 1;
        assert_eq!(
            fault(&tx),
            format!("journal entry {seq} (message.accepted) names {id}, which is not stored")
        );
        tx.rollback().expect("undone");
    }

    /// A new store in `dir` holding one message, KAZ's 1 to KGZ signed with `key`, and
    /// KGZ's delivered receipt for it, each at position 1 of its table; its connection.
    fn store_a_message_and_its_receipt(dir: &Path, key: &SigningKey) -> Connection {
        let (_, c) = open_db(dir).expect("open");
        let m = message(key, 1);
        c.execute(
            "INSERT INTO messages (id, sender, seq, digest, bytes, key, sig, accepted_at_ms, recipients)
             VALUES (?1, 'KAZ', 1, ?2, ?3, ?4, ?5, 1000, 'KGZ')",
            params![&[1u8; 16][..], &m.digest().0[..], m.bytes(), &m.key().0[..], &m.signature().0[..]],
        )
        .expect("message");
        let r = receipt_from(&SigningKey::from_bytes(&[2; 32]), "KGZ", 1, &m);
        c.execute(
            "INSERT INTO receipts (created_at_ms, digest, recipient, is_ack, bytes, key, sig, stored_at_ms)
             VALUES (1, ?1, 'KGZ', 0, ?2, ?3, ?4, 1)",
            params![&r.digest().0[..], r.bytes(), &r.key().0[..], &r.signature().0[..]],
        )
        .expect("receipt");
        c
    }

    /// The store in `dir`, damaged by `edit`, is refused at start as damage (`Corrupt`),
    /// naming its file and, in its detail, `names`.
    fn assert_refused_as_damage(dir: &Path, names: &str, edit: &str) {
        match open_db(dir) {
            Err(StoreError::Corrupt {
                path: named,
                detail,
            }) => {
                assert_eq!(named, dir.join(DB_FILE));
                assert!(detail.contains(names), "{edit}: {detail}");
            }
            Err(other) => panic!("{edit}: expected Corrupt, got {other:?}"),
            Ok(_) => panic!("{edit}: opened"),
        }
    }

    /// A stored record edited with the `sqlite3` shell, which writes a quoted value as text
    /// into a BLOB column too, is damage found by the start-up check and refused naming the
    /// file and the record (`Corrupt`: the service's exit status 78), not a storage failure
    /// that names neither, which the service's unit would restart on again and again.
    #[test]
    fn a_record_edited_to_text_is_refused_at_start_as_damage() {
        let key = SigningKey::from_bytes(&[1; 32]);
        for (table, edit) in [
            (
                "message",
                "UPDATE messages SET bytes = 'edited' WHERE rseq = 1",
            ),
            (
                "message",
                "UPDATE messages SET id = 'edited' WHERE rseq = 1",
            ),
            (
                "receipt",
                "UPDATE receipts SET digest = 'edited' WHERE rseq = 1",
            ),
        ] {
            let dir = tempfile::tempdir().expect("tempdir");
            store_a_message_and_its_receipt(dir.path(), &key)
                .execute_batch(edit)
                .expect("edited");
            assert_refused_as_damage(dir.path(), &format!("stored {table} at position 1"), edit);
        }
        // `hotline audit verify`, and a restore's check of its copy, read the key and
        // signature too (so does the start-up check, which also checks their sizes).
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, c) = open_db(dir.path()).expect("open");
        let m = message(&key, 1);
        c.execute(
            "INSERT INTO messages (id, sender, seq, digest, bytes, key, sig, accepted_at_ms, recipients)
             VALUES (?1, 'KAZ', 1, ?2, ?3, ?4, 'edited', 1000, 'KGZ')",
            params![&[1u8; 16][..], &m.digest().0[..], m.bytes(), &m.key().0[..]],
        )
        .expect("message");
        match verify_journaled_records(&c, &path) {
            Err(StoreError::Corrupt { detail, .. }) => assert!(
                detail.contains("stored message at position 1: its sig is Text"),
                "{detail}"
            ),
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }

    /// A value the relay reads back from a stored message or receipt, damaged to another
    /// type or size, is refused at start as damage, naming the record and the column: left
    /// in place, the relay started, and then failed every read of it (a recipient's backlog
    /// delivery, a receipt's check, a resubmission's answer) with an error that names
    /// neither, again at each try (a recipient never delivered past it, or every batch
    /// holding a receipt for it refused as if the disk had failed).
    #[test]
    fn a_stored_value_of_the_wrong_type_or_size_is_refused_at_start_as_damage() {
        let key = SigningKey::from_bytes(&[1; 32]);
        for (table, edit, says) in [
            (
                "message",
                "UPDATE messages SET key = zeroblob(31) WHERE rseq = 1",
                "its key is 31 bytes, not 32",
            ),
            (
                "message",
                "UPDATE messages SET sig = 'edited' WHERE rseq = 1",
                "its sig is Text, not bytes",
            ),
            (
                "message",
                "UPDATE messages SET id = zeroblob(15) WHERE rseq = 1",
                "its id is 15 bytes, not 16",
            ),
            (
                "message",
                "UPDATE messages SET recipients = CAST('KGZ' AS BLOB) WHERE rseq = 1",
                "its recipients is Blob, not text",
            ),
            (
                "message",
                "UPDATE messages SET sender = CAST('KAZ' AS BLOB) WHERE rseq = 1",
                "its sender is Blob, not text",
            ),
            (
                "message",
                "UPDATE messages SET accepted_at_ms = 'noon' WHERE rseq = 1",
                "its accepted_at_ms is Text, not a whole number from 0",
            ),
            (
                "message",
                "UPDATE messages SET seq = -1 WHERE rseq = 1",
                "its seq is -1, not a whole number from 0",
            ),
            (
                "receipt",
                "UPDATE receipts SET key = 'edited' WHERE rseq = 1",
                "its key is Text, not bytes",
            ),
            (
                "receipt",
                "UPDATE receipts SET sig = zeroblob(63) WHERE rseq = 1",
                "its sig is 63 bytes, not 64",
            ),
        ] {
            let dir = tempfile::tempdir().expect("tempdir");
            drop(store_a_message_and_its_receipt(dir.path(), &key));
            // Undamaged, it opens.
            drop(open_db(dir.path()).expect("reopened"));
            hotline_store::open(&dir.path().join(DB_FILE), false)
                .expect("open")
                .execute_batch(edit)
                .expect("edited");
            assert_refused_as_damage(
                dir.path(),
                &format!("stored {table} at position 1: {says}"),
                edit,
            );
        }
    }

    /// A value of the wrong type in one of the tables the writer reads at every start is
    /// refused as damage naming the table and the row; before, the start failed with
    /// SQLite's error, which named neither (nor the file).
    #[test]
    fn a_wrong_value_in_the_writers_tables_is_refused_at_start_naming_the_table() {
        for (edit, says) in [
            (
                "UPDATE cursors SET recipient = CAST('KGZ' AS BLOB)",
                "table cursors holds a value of the wrong type or out of range: recipient X'4B475A', rseq 0",
            ),
            (
                "UPDATE ahead SET rseq = 'five'",
                "table ahead holds a value of the wrong type or out of range: recipient 'KGZ', rseq 'five'",
            ),
            (
                "UPDATE senders SET last_seq = -1",
                "table senders holds a value of the wrong type or out of range: participant 'KAZ', last_seq -1",
            ),
            (
                "UPDATE rqueue SET recipient = CAST('KAZ' AS BLOB)",
                "table rqueue holds a value of the wrong type or out of range: recipient X'4B415A', rseq 1",
            ),
            (
                "UPDATE roster SET key = zeroblob(31)",
                "table roster holds a value of the wrong type or out of range: typeof(bytes) 'blob', typeof(key) 'blob', length(key) 31, typeof(sig) 'blob', length(sig) 64",
            ),
        ] {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join(DB_FILE);
            open_db(dir.path())
                .expect("open")
                .1
                .execute_batch(
                    "INSERT INTO cursors VALUES ('KGZ', 0);
                     INSERT INTO ahead VALUES ('KGZ', 5);
                     INSERT INTO senders VALUES ('KAZ', 1);
                     INSERT INTO rqueue VALUES ('KAZ', 1, zeroblob(32));
                     INSERT INTO roster VALUES (1, x'00', zeroblob(32), zeroblob(64));",
                )
                .expect("rows");
            drop(open_db(dir.path()).expect("undamaged, it opens"));
            hotline_store::open(&path, false)
                .expect("open")
                .execute_batch(edit)
                .expect("edited");
            match open_db(dir.path()) {
                Err(StoreError::Corrupt {
                    path: named,
                    detail,
                }) => {
                    assert_eq!(named, path);
                    assert_eq!(detail, says, "{edit}");
                }
                Err(other) => panic!("{edit}: expected Corrupt, got {other:?}"),
                Ok(_) => panic!("{edit}: opened"),
            }
        }
    }

    #[test]
    fn a_store_from_a_newer_relay_is_refused_by_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(DB_FILE);
        {
            let c = hotline_store::open(&path, true).expect("open");
            c.execute_batch("PRAGMA user_version = 99")
                .expect("version");
        }
        let err = open_db(dir.path()).expect_err("newer schema refused");
        let text = err.to_string();
        match err {
            StoreError::NewerSchema {
                path: named,
                found,
                supported,
                what,
            } => {
                assert_eq!(
                    (named, found, supported, what),
                    (path.clone(), 99, SCHEMA_VERSION, "relay")
                );
            }
            other => panic!("expected NewerSchema, got {other:?}"),
        }
        assert!(
            text.contains("relay.db")
                && text.contains("written by a newer version of the relay")
                && text.contains("schema version 99")
                && !text.contains("corrupt"),
            "{text}"
        );
        // Refused before anything was changed: the version is still the newer relay's.
        let c = hotline_store::open(&path, false).expect("open");
        let version: i64 = c
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .expect("version");
        assert_eq!(version, 99);
    }

    /// A writer on a fresh store in `dir` with CHN, IND and KAZ on its roster, holding
    /// message 1 from KAZ to CHN and IND (queued for both), keeping at most `budget`
    /// receipts a day per signer only for messages it does not hold. Returns the roster and
    /// the message too.
    /// Roster `version` signed by `key`, with one participant.
    fn signed_roster(key: &SigningKey, version: u64) -> Verified<Roster> {
        use hotline_proto::roster::{verify_roster, Participant, Role};
        let roster = Roster {
            protocol_version: PROTOCOL_VERSION,
            version,
            issued_at_ms: 1_000,
            network: "TEST".into(),
            participants: vec![Participant {
                id: pid("SEC"),
                name: "SEC".into(),
                role: Role::Secretariat,
                keys: vec![PublicKey::of(&SigningKey::from_bytes(&[1; 32]))],
                revoked: false,
            }],
            groups: vec![],
        };
        let signed = Signed::sign(&roster, key).expect("sign roster");
        verify_roster(&signed, &PublicKey::of(key)).expect("roster")
    }

    /// The version the store keeps for `key`, if one of that key.
    fn kept_version(c: &Connection, path: &Path, key: &SigningKey) -> Option<u64> {
        match kept_roster(c, path, &PublicKey::of(key)).expect("read") {
            KeptRoster::Roster(r) => Some(r.version),
            _ => None,
        }
    }

    /// The roster kept never goes back for one roster key; a roster of another key (the
    /// roster key replaced) replaces it; a store from schema 4 gets the table and keeps
    /// none, so the relay takes its file's.
    #[test]
    fn the_kept_roster_only_moves_forward_for_its_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, c) = open_db(dir.path()).expect("open");
        let (old_key, new_key) = (
            SigningKey::from_bytes(&[9; 32]),
            SigningKey::from_bytes(&[8; 32]),
        );
        assert!(matches!(
            kept_roster(&c, &path, &PublicKey::of(&old_key)).expect("read"),
            KeptRoster::None
        ));
        let mut j = Journal::load(&c).expect("journal");
        assert!(keep_roster(&c, &mut j, &path, &signed_roster(&old_key, 2), 7).expect("keep"));
        assert!(!keep_roster(&c, &mut j, &path, &signed_roster(&old_key, 1), 7).expect("older"));
        assert!(!keep_roster(&c, &mut j, &path, &signed_roster(&old_key, 2), 7).expect("same"));
        assert_eq!(kept_version(&c, &path, &old_key), Some(2));
        assert!(matches!(
            kept_roster(&c, &path, &PublicKey::of(&new_key)).expect("read"),
            KeptRoster::OtherKey { version: 2, .. }
        ));
        assert!(keep_roster(&c, &mut j, &path, &signed_roster(&new_key, 1), 7).expect("new key"));
        assert_eq!(kept_version(&c, &path, &new_key), Some(1));
        assert!(keep_roster(&c, &mut j, &path, &signed_roster(&new_key, 3), 7).expect("newer"));
        assert_eq!(kept_version(&c, &path, &new_key), Some(3));
        // Each roster kept is journaled whole, by version; one not kept is not.
        let journaled: Vec<(String, Vec<u8>)> = c
            .prepare(
                "SELECT subject, payload FROM journal WHERE kind = 'roster.installed' ORDER BY seq",
            )
            .expect("prepare")
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows");
        let versions: Vec<&str> = journaled.iter().map(|(v, _)| v.as_str()).collect();
        assert_eq!(versions, ["2", "1", "3"]);
        let last: Signed<Roster> =
            hotline_proto::codec::decode(&journaled[2].1, usize::MAX).expect("a signed roster");
        assert_eq!(last.decode_unverified().expect("decodes").version, 3);

        // As a schema 4 relay left it: no table.
        c.execute_batch("DROP TABLE roster; PRAGMA user_version = 4")
            .expect("as schema 4");
        assert!(matches!(
            kept_roster(&c, &path, &PublicKey::of(&new_key)).expect("read"),
            KeptRoster::None
        ));
        drop(c);
        let (path, c) = open_db(dir.path()).expect("reopen");
        let version: i64 = c
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .expect("version");
        assert_eq!(version, SCHEMA_VERSION);
        assert_eq!(kept_version(&c, &path, &new_key), None);
        let mut j = Journal::load(&c).expect("journal");
        assert!(keep_roster(&c, &mut j, &path, &signed_roster(&new_key, 1), 7).expect("keep"));
    }

    fn writer_with_foreign_budget(
        dir: &Path,
        budget: u64,
    ) -> (Writer, Verified<Roster>, Signed<Envelope>) {
        let (w, roster, mut held) = writer_holding(dir, budget, 1);
        (w, roster, held.remove(0))
    }

    /// A writer on a store holding KAZ's messages 1 to `n` (positions 1 to `n`), each for
    /// CHN and IND, with a foreign receipt budget of `budget`.
    fn writer_holding(
        dir: &Path,
        budget: u64,
        n: u8,
    ) -> (Writer, Verified<Roster>, Vec<Signed<Envelope>>) {
        let (_, conn) = open_db(dir).expect("open");
        let mut held = Vec::new();
        for i in 1..=n {
            let m = message(&SigningKey::from_bytes(&[1; 32]), i);
            conn.execute(
                "INSERT INTO messages (rseq, id, sender, seq, digest, bytes, key, sig, accepted_at_ms, recipients)
                 VALUES (?1, ?2, 'KAZ', ?1, ?3, ?4, ?5, ?6, 1000, 'CHN,IND')",
                params![i, &[i; 16][..], &m.digest().0[..], m.bytes(), &m.key().0[..], &m.signature().0[..]],
            )
            .expect("message");
            held.push(m);
        }
        conn.execute_batch("INSERT INTO cursors VALUES ('CHN', 0), ('IND', 0);")
            .expect("cursors");
        let (writer, roster) = writer_on(conn, budget);
        (writer, roster, held)
    }

    /// A writer on the store `conn`, for a roster of KAZ (the Secretariat), CHN and IND
    /// (key seeds 1, 2 and 3), with a foreign receipt budget of `budget`.
    fn writer_on(conn: Connection, budget: u64) -> (Writer, Verified<Roster>) {
        let roster = test_roster(1, &[("KAZ", 1), ("CHN", 2), ("IND", 3)], &[]);
        (writer_with(conn, budget, roster.clone()), roster)
    }

    /// Roster `version` listing `listed` (id and key seed; KAZ is the Secretariat, the
    /// others members), those in `revoked` revoked.
    fn test_roster(version: u64, listed: &[(&str, u8)], revoked: &[&str]) -> Verified<Roster> {
        use hotline_proto::roster::{verify_roster, Participant, Role};
        let roster_key = SigningKey::from_bytes(&[9; 32]);
        let roster = Roster {
            protocol_version: PROTOCOL_VERSION,
            version,
            issued_at_ms: 1_000,
            network: "TEST".into(),
            participants: listed
                .iter()
                .map(|(id, k)| Participant {
                    id: pid(id),
                    name: (*id).to_owned(),
                    role: if *id == "KAZ" {
                        Role::Secretariat
                    } else {
                        Role::Member
                    },
                    keys: vec![PublicKey::of(&SigningKey::from_bytes(&[*k; 32]))],
                    revoked: revoked.contains(id),
                })
                .collect(),
            groups: vec![],
        };
        let signed = Signed::sign(&roster, &roster_key).expect("sign roster");
        verify_roster(&signed, &PublicKey::of(&roster_key)).expect("roster")
    }

    /// Puts `roster` in force for `w`, as a reload does (the writer reads it at its next
    /// batch).
    fn reload(w: &mut Writer, roster: &Verified<Roster>) {
        w.ctx.roster = tokio::sync::watch::channel(Arc::new(roster.clone())).1;
    }

    /// A writer on the store `conn` with `roster` in force, with a foreign receipt budget of
    /// `budget`.
    fn writer_with(conn: Connection, budget: u64, roster: Verified<Roster>) -> Writer {
        let (_, roster_rx) = tokio::sync::watch::channel(Arc::new(roster));
        Writer::new(
            conn,
            WriterContext {
                roster: roster_rx,
                policy: Policy::default(),
                hub: Arc::new(Hub::new(crate::hub::LaneCap {
                    items: 16,
                    bytes: 1 << 20,
                })),
                metrics: Arc::new(Metrics::new()),
                queue_depth_max: 100,
                forward_foreign_max: 10_000,
                foreign_receipts_per_day_max: budget,
                batch_max: 64,
                queues: Arc::new(Mutex::new(QueueIndex::default())),
                fail_after_commits: None,
                fail_syncs_after: None,
                slow_commits: None,
                follow_gate: None,
            },
        )
        .expect("writer")
    }

    /// A receipt item naming message `n` of KAZ's, which the relay does not hold.
    fn made_up(n: u8) -> ReceiptItem {
        ReceiptItem {
            id: MessageId([0x80 | n; 16]),
            sender: pid("KAZ"),
            digest: Digest([n; 32]),
        }
    }

    /// Commits `receipts` (signer, key seed, items) as one batch at `now_ms`, and returns
    /// each one's digest and answer.
    fn commit_receipts(
        w: &mut Writer,
        roster: &Verified<Roster>,
        now_ms: u64,
        receipts: Vec<(&str, u8, Vec<ReceiptItem>)>,
    ) -> Vec<(Digest, RelayToNode)> {
        let mut batch = Vec::new();
        let mut answers = Vec::new();
        for (who, seed, items) in receipts {
            let signed = Signed::sign(
                &Receipt {
                    version: PROTOCOL_VERSION,
                    recipient: pid(who),
                    kind: ReceiptKind::Delivered,
                    created_at_ms: now_ms,
                    items,
                },
                &SigningKey::from_bytes(&[seed; 32]),
            )
            .expect("sign receipt");
            let receipt = roster.verify_receipt(&signed).expect("verifies");
            let (reply, answer) = mpsc::channel(1);
            let digest = signed.digest();
            batch.push(Command::Receipt {
                receipt,
                digest,
                reply,
            });
            answers.push((digest, answer));
        }
        w.commit_batch_at(&mut batch, now_ms);
        answers
            .into_iter()
            .map(|(d, mut a)| (d, a.try_recv().expect("answered")))
            .collect()
    }

    /// Commits the submission of `env` alone as one batch at `now_ms`, and returns its answer.
    fn commit_submission(w: &mut Writer, env: Verified<Envelope>, now_ms: u64) -> RelayToNode {
        let (reply, mut answer) = mpsc::channel(1);
        let now = std::time::Instant::now();
        let mut batch = vec![Command::Submit {
            digest: env.signed().digest(),
            env,
            reply,
            read_at: now,
            handed_at: now,
        }];
        w.commit_batch_at(&mut batch, now_ms);
        answer.try_recv().expect("answered")
    }

    /// Whether the relay kept the receipt of `digest`, and whether it queued it for KAZ.
    fn kept_and_forwarded(w: &Writer, digest: Digest) -> (bool, bool) {
        let has = |sql: &str| {
            w.conn
                .prepare(sql)
                .expect("prepare")
                .exists([&digest.0[..]])
                .expect("query")
        };
        (
            has("SELECT 1 FROM receipts WHERE digest = ?1"),
            has("SELECT 1 FROM rqueue WHERE recipient = 'KAZ' AND digest = ?1"),
        )
    }

    fn unforwarded_total(w: &Writer) -> String {
        let text = w.ctx.metrics.render(&[]);
        text.lines()
            .find(|l| {
                l.starts_with(
                    "hotline_relay_receipts_unforwarded_total{reason=\"signer_over_budget\"} ",
                )
            })
            .unwrap_or_else(|| panic!("no metric: {text}"))
            .to_owned()
    }

    /// A member can sign receipts for made-up messages of a cooperating sender, whose node
    /// confirms each at once, so `forward_foreign_max` never bites. With a budget of 2 a
    /// day: CHN's first two such receipts are kept and forwarded (one committed, one in the
    /// next batch beside the third), the third is answered as stored but neither kept nor
    /// forwarded, and so is a fourth hours later; IND has a budget of its own; a receipt of
    /// CHN's that names a message held here as well is news and unaffected; a batch that
    /// fails counts nothing; and the next UTC day CHN's budget is fresh.
    #[test]
    fn receipts_kept_only_for_messages_not_held_here_are_limited_per_signer_and_day() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut w, roster, m1) = writer_with_foreign_budget(dir.path(), 2);
        let stored = |(d, answer): &(Digest, RelayToNode)| {
            assert_eq!(answer, &RelayToNode::ReceiptStored(*d));
            *d
        };
        // 20,000 days after the epoch, at 01:00 UTC.
        let day = 20_000 * DAY_MS;
        let now = day + 3_600_000;

        let a = commit_receipts(&mut w, &roster, now, vec![("CHN", 2, vec![made_up(1)])]);
        let r1 = stored(&a[0]);
        let a = commit_receipts(
            &mut w,
            &roster,
            now + 1,
            vec![
                ("CHN", 2, vec![made_up(2)]),
                ("CHN", 2, vec![made_up(3), made_up(4)]),
            ],
        );
        let (r2, r3) = (stored(&a[0]), stored(&a[1]));
        assert_eq!(kept_and_forwarded(&w, r1), (true, true));
        assert_eq!(kept_and_forwarded(&w, r2), (true, true));
        assert_eq!(kept_and_forwarded(&w, r3), (false, false), "over budget");
        assert_eq!(
            unforwarded_total(&w),
            "hotline_relay_receipts_unforwarded_total{reason=\"signer_over_budget\"} 1"
        );

        // Hours later the same day: still over. IND's budget is its own.
        let later = now + 20 * 3_600_000;
        let a = commit_receipts(
            &mut w,
            &roster,
            later,
            vec![("CHN", 2, vec![made_up(5)]), ("IND", 3, vec![made_up(6)])],
        );
        let (r4, i1) = (stored(&a[0]), stored(&a[1]));
        assert_eq!(kept_and_forwarded(&w, r4), (false, false), "still over");
        assert_eq!(kept_and_forwarded(&w, i1), (true, true), "IND's own budget");

        // A receipt naming a message held here (the first for it from CHN: news) is kept
        // and forwarded, however many foreign items it names too; it uses no budget.
        let held = ReceiptItem {
            id: MessageId([1; 16]),
            sender: pid("KAZ"),
            digest: m1.digest(),
        };
        let a = commit_receipts(
            &mut w,
            &roster,
            later + 1,
            vec![("CHN", 2, vec![held, made_up(7)])],
        );
        let news = stored(&a[0]);
        assert_eq!(kept_and_forwarded(&w, news), (true, true), "news");
        assert_eq!(
            unforwarded_total(&w),
            "hotline_relay_receipts_unforwarded_total{reason=\"signer_over_budget\"} 2"
        );

        // The next UTC day, a fresh budget; a batch whose commit fails uses none of it.
        let next = day + DAY_MS + 1;
        let a = commit_receipts(&mut w, &roster, next, vec![("CHN", 2, vec![made_up(8)])]);
        let n1 = stored(&a[0]);
        assert_eq!(kept_and_forwarded(&w, n1), (true, true), "a new day");
        w.conn
            .execute_batch(
                "CREATE TEMP TRIGGER no_journal BEFORE INSERT ON journal
                 BEGIN SELECT RAISE(ABORT, 'disk gone'); END;",
            )
            .expect("trigger");
        let a = commit_receipts(&mut w, &roster, next, vec![("CHN", 2, vec![made_up(9)])]);
        assert!(
            matches!(&a[0].1, RelayToNode::Rejected(r) if r.code == RejectCode::StorageUnavailable),
            "{:?}",
            a[0].1
        );
        assert_eq!(kept_and_forwarded(&w, a[0].0), (false, false));
        w.conn
            .execute_batch("DROP TRIGGER no_journal")
            .expect("drop trigger");
        let a = commit_receipts(
            &mut w,
            &roster,
            next,
            vec![("CHN", 2, vec![made_up(10)]), ("CHN", 2, vec![made_up(11)])],
        );
        let (n2, n3) = (stored(&a[0]), stored(&a[1]));
        assert_eq!(
            kept_and_forwarded(&w, n2),
            (true, true),
            "the failed batch counted nothing"
        );
        assert_eq!(kept_and_forwarded(&w, n3), (false, false), "over again");
    }

    /// A signer's budget of receipts kept for messages not held here survives a restart:
    /// the writer rebuilds it from the receipts the store holds for the day. Before, it was
    /// kept in memory only, so a signer over its budget had a new one at every restart of
    /// the relay (after a failed sync, an upgrade, a crash), and the relay kept up to
    /// another day's worth of its receipts each time.
    #[test]
    fn the_foreign_receipt_budget_survives_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut w, roster, m1) = writer_with_foreign_budget(dir.path(), 2);
        let day = 20_000 * DAY_MS;
        let now = day + 3_600_000;
        let held = ReceiptItem {
            id: MessageId([1; 16]),
            sender: pid("KAZ"),
            digest: m1.digest(),
        };
        // CHN's budget used up, one receipt at a time; a receipt naming a held message
        // (news) is kept besides, and counts for nothing. IND has used one of its two.
        let a = commit_receipts(&mut w, &roster, now, vec![("CHN", 2, vec![made_up(1)])]);
        let b = commit_receipts(&mut w, &roster, now + 1, vec![("CHN", 2, vec![made_up(2)])]);
        let c = commit_receipts(
            &mut w,
            &roster,
            now + 2,
            vec![("CHN", 2, vec![held, made_up(3)])],
        );
        let d = commit_receipts(&mut w, &roster, now + 3, vec![("IND", 3, vec![made_up(4)])]);
        for r in [&a, &b, &c, &d] {
            assert_eq!(kept_and_forwarded(&w, r[0].0), (true, true));
        }
        // And one from the day before, which counts for that day only.
        let e = commit_receipts(&mut w, &roster, day - 1, vec![("IND", 3, vec![made_up(5)])]);
        assert_eq!(kept_and_forwarded(&w, e[0].0), (true, true));

        // The relay restarts later the same day.
        let Writer { conn, ctx, .. } = w;
        drop(conn);
        let (_, conn) = open_db(dir.path()).expect("reopen");
        let mut w = Writer::new_at(conn, ctx, now + 3_600_000).expect("writer");
        let over = commit_receipts(
            &mut w,
            &roster,
            now + 3_600_001,
            vec![("CHN", 2, vec![made_up(6)]), ("IND", 3, vec![made_up(7)])],
        );
        assert_eq!(
            kept_and_forwarded(&w, over[0].0),
            (false, false),
            "CHN is still over its budget after the restart"
        );
        assert_eq!(
            kept_and_forwarded(&w, over[1].0),
            (true, true),
            "IND had one left"
        );
        let last = commit_receipts(
            &mut w,
            &roster,
            now + 3_600_002,
            vec![("IND", 3, vec![made_up(8)])],
        );
        assert_eq!(
            kept_and_forwarded(&w, last[0].0),
            (false, false),
            "and now none"
        );
    }

    /// A foreign item's sender is whatever its signer wrote: one on no roster is never
    /// forwarded to (nobody could log in to collect it), so a member cannot make the relay
    /// keep a forward queue, a depth and a metrics series for each of up to 512 made-up
    /// senders a receipt, within its daily budget or riding on a receipt that is news. A
    /// receipt naming only such items is answered as stored and not kept; news is kept and
    /// forwarded to the real senders only.
    #[test]
    fn receipts_are_never_forwarded_to_senders_on_no_roster() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut w, roster, m1) = writer_with_foreign_budget(dir.path(), 10_000);
        let from = |sender: &str, n: u8| ReceiptItem {
            id: MessageId([0x40 | n; 16]),
            sender: pid(sender),
            digest: Digest([n; 32]),
        };
        let held = ReceiptItem {
            id: MessageId([1; 16]),
            sender: pid("KAZ"),
            digest: m1.digest(),
        };
        let now = 20_000 * DAY_MS;
        let a = commit_receipts(
            &mut w,
            &roster,
            now,
            vec![
                ("CHN", 2, vec![from("ZZA", 1), from("ZZB", 2)]),
                ("IND", 3, vec![held, from("ZZC", 3), from("CHN", 4)]),
            ],
        );
        assert_eq!(a[0].1, RelayToNode::ReceiptStored(a[0].0));
        assert_eq!(a[1].1, RelayToNode::ReceiptStored(a[1].0));
        let kept = |d: Digest| {
            w.conn
                .query_row(
                    "SELECT count(*) FROM receipts WHERE digest = ?1",
                    [&d.0[..]],
                    |r| r.get::<_, i64>(0),
                )
                .expect("count")
        };
        assert_eq!(kept(a[0].0), 0, "names only senders on no roster");
        assert_eq!(kept(a[1].0), 1, "news");
        let mut forwarded_to: Vec<String> = w
            .conn
            .prepare("SELECT recipient FROM rqueue ORDER BY recipient")
            .expect("prepare")
            .query_map([], |r| r.get(0))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows");
        forwarded_to.dedup();
        assert_eq!(forwarded_to, ["CHN", "KAZ"], "only senders on the roster");
        let text = w.ctx.metrics.render(&[]);
        assert!(
            !text.contains("\"ZZ"),
            "no series for made-up senders:\n{text}"
        );
    }

    /// A budget of 0 keeps no receipt naming only messages not held here, and still keeps
    /// news.
    #[test]
    fn a_foreign_receipt_budget_of_zero_keeps_none() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut w, roster, m1) = writer_with_foreign_budget(dir.path(), 0);
        let held = ReceiptItem {
            id: MessageId([1; 16]),
            sender: pid("KAZ"),
            digest: m1.digest(),
        };
        let now = 20_000 * DAY_MS;
        let a = commit_receipts(
            &mut w,
            &roster,
            now,
            vec![
                ("CHN", 2, vec![made_up(1)]),
                ("IND", 3, vec![held, made_up(2)]),
            ],
        );
        assert_eq!(a[0].1, RelayToNode::ReceiptStored(a[0].0));
        assert_eq!(a[1].1, RelayToNode::ReceiptStored(a[1].0));
        assert_eq!(kept_and_forwarded(&w, a[0].0), (false, false));
        assert_eq!(kept_and_forwarded(&w, a[1].0), (true, true));
    }

    /// While commits fail (here a trigger refuses every journal entry, as a full disk
    /// refuses every write), a batch that writes nothing (a receipt that tells nothing
    /// new, answered as stored) commits without touching the disk: it proves nothing, and
    /// `/health` stays `store_failing` rather than turning `ok` until the next message is
    /// refused. A batch that writes again is what ends the spell.
    #[test]
    fn a_commit_that_writes_nothing_does_not_end_a_failing_spell() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut w, roster, m1) = writer_with_foreign_budget(dir.path(), 0);
        let held = || ReceiptItem {
            id: MessageId([1; 16]),
            sender: pid("KAZ"),
            digest: m1.digest(),
        };
        let health = |w: &Writer| {
            crate::metrics::health_status(
                std::time::Duration::ZERO,
                w.ctx.metrics.disk.failing(),
                std::time::Duration::from_secs(10),
            )
            .1
        };
        let now = 20_000 * DAY_MS;
        let a = commit_receipts(&mut w, &roster, now, vec![("CHN", 2, vec![held()])]);
        assert_eq!(a[0].1, RelayToNode::ReceiptStored(a[0].0));

        w.conn
            .execute_batch(
                "CREATE TRIGGER injected BEFORE INSERT ON journal
                 BEGIN SELECT RAISE(ABORT, 'injected failure'); END;",
            )
            .expect("trigger");
        let a = commit_receipts(&mut w, &roster, now + 1, vec![("IND", 3, vec![held()])]);
        assert!(
            matches!(&a[0].1, RelayToNode::Rejected(r) if r.code == RejectCode::StorageUnavailable),
            "{:?}",
            a[0].1
        );
        assert_eq!(health(&w), "store_failing");

        // CHN's receipt again, signed anew: nothing new, nothing written.
        let a = commit_receipts(&mut w, &roster, now + 2, vec![("CHN", 2, vec![held()])]);
        assert_eq!(a[0].1, RelayToNode::ReceiptStored(a[0].0));
        assert_eq!(
            health(&w),
            "store_failing",
            "a commit that wrote nothing says nothing of the disk"
        );
        assert!(w.failing.is_some(), "the writer still probes the store");

        w.conn
            .execute_batch("DROP TRIGGER injected")
            .expect("trigger dropped");
        let a = commit_receipts(&mut w, &roster, now + 3, vec![("IND", 3, vec![held()])]);
        assert_eq!(a[0].1, RelayToNode::ReceiptStored(a[0].0));
        assert_eq!(health(&w), "ok");
        assert!(w.failing.is_none());
    }

    /// A receipt naming a recipient's oldest messages moves its cursor past the positions
    /// it receipted ahead, out of order, and deletes their `ahead` rows. If that batch's
    /// commit fails, the rows are still there; the writer's note of who has such rows must
    /// say so too, or the receipt sent again moves the cursor without deleting them.
    #[test]
    fn positions_receipted_ahead_are_cleared_after_a_failed_commit_too() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut w, roster, held) = writer_holding(dir.path(), 0, 3);
        let item = |n: u8| ReceiptItem {
            id: MessageId([n; 16]),
            sender: pid("KAZ"),
            digest: held[usize::from(n) - 1].digest(),
        };
        let count = |w: &Writer, sql: &str| -> i64 {
            w.conn.query_row(sql, [], |r| r.get(0)).expect("count")
        };
        let ahead = "SELECT count(*) FROM ahead WHERE recipient = 'CHN'";
        let cursor = "SELECT rseq FROM cursors WHERE recipient = 'CHN'";
        let now = 20_000 * DAY_MS;
        let a = commit_receipts(&mut w, &roster, now, vec![("CHN", 2, vec![item(3)])]);
        assert_eq!(a[0].1, RelayToNode::ReceiptStored(a[0].0));
        assert_eq!(count(&w, ahead), 1, "message 3 receipted ahead of 1 and 2");
        assert_eq!(count(&w, cursor), 0);

        w.conn
            .execute_batch(
                "CREATE TRIGGER injected BEFORE INSERT ON journal
                 BEGIN SELECT RAISE(ABORT, 'injected failure'); END;",
            )
            .expect("trigger");
        let a = commit_receipts(
            &mut w,
            &roster,
            now + 1,
            vec![("CHN", 2, vec![item(1), item(2)])],
        );
        assert!(
            matches!(&a[0].1, RelayToNode::Rejected(r) if r.code == RejectCode::StorageUnavailable),
            "{:?}",
            a[0].1
        );
        assert_eq!(count(&w, ahead), 1, "rolled back");
        assert_eq!(count(&w, cursor), 0, "rolled back");

        w.conn
            .execute_batch("DROP TRIGGER injected")
            .expect("trigger dropped");
        let a = commit_receipts(
            &mut w,
            &roster,
            now + 2,
            vec![("CHN", 2, vec![item(1), item(2)])],
        );
        assert_eq!(a[0].1, RelayToNode::ReceiptStored(a[0].0));
        assert_eq!(count(&w, cursor), 3, "every message receipted");
        assert_eq!(
            count(&w, ahead),
            0,
            "the cursor passed the position receipted ahead"
        );
    }

    /// A sync of the log that fails stops the writer (and with it the relay), and
    /// everything that depended on the store is refused `StorageUnavailable`, never left
    /// unanswered: that includes the commands still waiting in its queue when it stops.
    /// Left there, they were dropped with the queue: their sessions waited for answers
    /// that never came (at a shutdown, the whole of `SHUTDOWN_ANSWERS_MS`, then a warning
    /// that answers are owed), and their nodes learnt of them only at their next
    /// connection. Here a roster to keep comes first, its sync fails, and two receipts wait
    /// behind it.
    #[test]
    fn a_writer_stopped_by_a_failed_sync_refuses_what_still_waits_for_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut w, roster, held) = writer_holding(dir.path(), 0, 1);
        // One command a turn, and the first sync of the log fails.
        w.ctx.batch_max = 1;
        w.ctx.fail_syncs_after = Some(0);
        let (tx, rx) = mpsc::channel(16);
        let (keep, kept) = tokio::sync::oneshot::channel();
        tx.try_send(Command::KeepRoster {
            roster: Arc::new(roster.clone()),
            reply: keep,
        })
        .map_err(|_| "full")
        .expect("queued");
        let mut answers = Vec::new();
        for (who, seed) in [("CHN", 2u8), ("IND", 3)] {
            let signed = Signed::sign(
                &Receipt {
                    version: PROTOCOL_VERSION,
                    recipient: pid(who),
                    kind: ReceiptKind::Delivered,
                    created_at_ms: 1_000,
                    items: vec![ReceiptItem {
                        id: MessageId([1; 16]),
                        sender: pid("KAZ"),
                        digest: held[0].digest(),
                    }],
                },
                &SigningKey::from_bytes(&[seed; 32]),
            )
            .expect("sign receipt");
            let receipt = roster.verify_receipt(&signed).expect("verifies");
            let (reply, answer) = mpsc::channel(1);
            let digest = signed.digest();
            tx.try_send(Command::Receipt {
                receipt,
                digest,
                reply,
            })
            .map_err(|_| "full")
            .expect("queued");
            answers.push((digest, answer));
        }
        let stopped = std::thread::spawn(move || w.run(rx, None))
            .join()
            .expect("the writer thread ends");
        let why = stopped.expect("stopped on its own");
        assert!(why.contains("injected"), "{why}");
        assert!(
            matches!(kept.blocking_recv(), Ok(Err(_))),
            "the roster is not reported kept"
        );
        for (digest, mut answer) in answers {
            match answer.try_recv() {
                Ok(RelayToNode::Rejected(r)) => {
                    assert_eq!(r.code, RejectCode::StorageUnavailable, "{r:?}");
                    assert_eq!(r.subject, Subject::Receipt(digest));
                    assert!(r.detail.contains("injected"), "says why: {r:?}");
                }
                other => panic!("a command waiting for the writer when it stopped: {other:?}"),
            }
        }
        assert!(tx.is_closed(), "the writer takes nothing more");
    }

    /// A store where IND, rarely addressed, was sent message 1 (accepted at 500 ms) and
    /// receipted it, and KAZ sent CHN messages 2 to `n` (accepted at 1,000 ms), of which CHN
    /// is owed the last 20; OLD, off the roster, had message 1 too and receipted it. The
    /// messages are not signed (only their positions, senders, digests and recipients are
    /// read here): each names digest `[7; 32]`. Returns `n`.
    fn store_with_an_idle_recipient(conn: &Connection) -> i64 {
        let n = 3 * IDLE_CURSOR_LAG_MAX;
        conn.execute_batch("BEGIN").expect("begin");
        let mut insert = conn
            .prepare(
                "INSERT INTO messages (rseq, id, sender, seq, digest, bytes, key, sig, accepted_at_ms, recipients)
                 VALUES (?1, ?2, 'KAZ', ?1, ?3, X'00', ?4, ?5, ?6, ?7)",
            )
            .expect("prepare");
        for i in 1..=n {
            let (at, to) = if i == 1 {
                (500, "IND,OLD")
            } else {
                (1_000, "CHN")
            };
            insert
                .execute(params![
                    i,
                    &(i as u128).to_be_bytes()[..],
                    &[7u8; 32][..],
                    &[0u8; 32][..],
                    &[0u8; 64][..],
                    at,
                    to
                ])
                .expect("message");
        }
        drop(insert);
        conn.execute(
            "INSERT INTO cursors VALUES ('IND', 1), ('OLD', 1), ('CHN', ?1)",
            [n - 20],
        )
        .expect("cursors");
        conn.execute_batch("COMMIT").expect("commit");
        n
    }

    /// A receipt item naming message `rseq` of [`store_with_an_idle_recipient`].
    fn unsigned_item(rseq: i64) -> ReceiptItem {
        ReceiptItem {
            id: MessageId((rseq as u128).to_be_bytes()),
            sender: pid("KAZ"),
            digest: Digest([7; 32]),
        }
    }

    /// A start rebuilds the queues from the messages after the lowest cursor. A recipient
    /// owed nothing kept its cursor at the newest message of its last receipt, so one
    /// rarely addressed (IND here), or off the roster (OLD), held the lowest cursor far
    /// back, and every start read every message since, to keep CHN's 20: here 3,071 rows,
    /// and 100,000 took 0.42 s in a debug build. The writer now moves such a cursor up to
    /// the newest message in a commit it makes anyway, once it lags by more than
    /// `IDLE_CURSOR_LAG_MAX`, and a start reads no queue of a participant off the roster
    /// (whose cursor, its queue not in memory, is never taken for idle), so the next start
    /// reads only what is owed.
    #[test]
    fn a_start_does_not_read_the_messages_an_idle_recipients_cursor_lags() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_, conn) = open_db(dir.path()).expect("open");
        let n = store_with_an_idle_recipient(&conn);
        assert_eq!(
            load_queues(&conn, Whose::All).expect("queues").rows_read,
            n as u64 - 1,
            "IND's cursor, at 1, holds the start back"
        );
        let (mut w, roster) = writer_on(conn, 0);
        let a = commit_receipts(
            &mut w,
            &roster,
            20_000 * DAY_MS,
            vec![("CHN", 2, vec![unsigned_item(n - 19)])],
        );
        assert_eq!(a[0].1, RelayToNode::ReceiptStored(a[0].0));
        // The next start.
        let loaded = load_queues(&w.conn, Whose::ActiveOn(&roster)).expect("queues");
        assert_eq!(loaded.index.len(&pid("CHN")), 19, "CHN is owed the rest");
        assert_eq!(loaded.index.len(&pid("IND")), 0);
        assert_eq!(loaded.cursors.get(&pid("CHN")), Some(&(n - 19)));
        assert_eq!(loaded.cursors.get(&pid("IND")), Some(&n), "moved up");
        assert_eq!(
            loaded.cursors.get(&pid("OLD")),
            Some(&1),
            "off the roster: kept"
        );
        assert!(loaded.unread.contains(&pid("OLD")));
        assert_eq!(loaded.rows_read, 19, "only CHN's messages are read");
        assert_eq!(w.cursors, loaded.cursors, "the writer's copy as committed");
    }

    /// Moving an idle recipient's cursor up changes nothing a rewind redelivers: it looks
    /// for the messages accepted since a time and addressed to the recipient, from just
    /// before the first one, and none addressed to it lay between the cursor's old and new
    /// places. A recipient still owed something keeps its cursor, and its position
    /// receipted ahead.
    #[test]
    fn a_rewind_after_an_idle_cursor_moved_up_redelivers_the_same_messages() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_, conn) = open_db(dir.path()).expect("open");
        let n = store_with_an_idle_recipient(&conn);
        // KAZ is owed message `n` - 1 and receipted `n` ahead of it.
        conn.execute_batch(&format!(
            "UPDATE messages SET recipients = 'CHN,KAZ' WHERE rseq >= {};
             INSERT INTO cursors VALUES ('KAZ', {});
             INSERT INTO ahead VALUES ('KAZ', {n});",
            n - 1,
            n - 2
        ))
        .expect("KAZ");
        let (mut w, roster) = writer_on(conn, 0);
        let a = commit_receipts(
            &mut w,
            &roster,
            20_000 * DAY_MS,
            vec![("CHN", 2, vec![unsigned_item(n - 19)])],
        );
        assert_eq!(a[0].1, RelayToNode::ReceiptStored(a[0].0));
        assert_eq!(w.cursors.get(&pid("IND")), Some(&n), "moved up");
        assert_eq!(w.cursors.get(&pid("KAZ")), Some(&(n - 2)), "still owed");
        let ahead: i64 = w
            .conn
            .query_row(
                "SELECT count(*) FROM ahead WHERE recipient = 'KAZ'",
                [],
                |r| r.get(0),
            )
            .expect("ahead");
        assert_eq!(ahead, 1, "KAZ's position receipted ahead is kept");

        // Since after IND's one message: nothing to redeliver to it, and its cursor stays
        // where it was. (It used to move back to just before message 2, over messages none
        // of which was addressed to IND, journaled `cursor 3072 -> 1, 0 owed`; the next
        // start read every message from there, until a look for idle cursors moved it up
        // again.)
        let first = first_since(&w.conn, 1_000).expect("first");
        assert_eq!(first.message, Some(2));
        let r = w.rewind(Some(&pid("IND")), 1_000, first).expect("rewind");
        assert_eq!(
            r,
            vec![(
                pid("IND"),
                Rewound {
                    messages: 0,
                    cursor_was: n,
                    cursor: n,
                    receipts: 0,
                }
            )]
        );
        assert_eq!(w.ctx.queues.lock().expect("lock").len(&pid("IND")), 0);
        let said: Vec<u8> = w
            .conn
            .query_row(
                "SELECT payload FROM journal WHERE kind = 'queue.rewound' ORDER BY seq DESC LIMIT 1",
                [],
                |r| r.get(0),
            )
            .expect("journaled");
        assert_eq!(
            String::from_utf8_lossy(&said),
            format!("since 1000: cursor {n} -> {n}, 0 owed")
        );
        assert_eq!(
            load_queues(&w.conn, Whose::ActiveOn(&roster))
                .expect("queues")
                .rows_read,
            19,
            "a start reads only what CHN and KAZ are owed"
        );
        // Since its message: that one, and no other.
        let first = first_since(&w.conn, 500).expect("first");
        assert_eq!(first.message, Some(1));
        let r = w.rewind(Some(&pid("IND")), 500, first).expect("rewind");
        assert_eq!(
            r,
            vec![(
                pid("IND"),
                Rewound {
                    messages: 1,
                    cursor_was: n,
                    cursor: 0,
                    receipts: 0,
                }
            )]
        );
        assert_eq!(
            w.ctx.queues.lock().expect("lock").after(&pid("IND"), 0, 10),
            vec![1]
        );
        // Everyone, stopped (`redeliver_all_since`'s work): each is owed what was addressed
        // to it since, OLD included.
        let Writer { conn, .. } = w;
        let all = rewind_in_store(conn, None, 500, 20_000 * DAY_MS + 1).expect("rewind all");
        let owed: Vec<(&str, u64)> = all.iter().map(|(p, r)| (p.as_str(), r.messages)).collect();
        assert_eq!(
            owed,
            vec![("CHN", n as u64 - 1), ("IND", 1), ("KAZ", 2), ("OLD", 1)]
        );
    }

    /// A start reads the queues of the participants active on the roster only. OLD, taken
    /// off the roster, never receipted message 1: it is owed it, so no look for idle
    /// cursors moves its cursor, and every start read every message since (here 3,072
    /// rows, to keep CHN's 19), for good, as it never connects again. Its queue is no
    /// longer read at a start; what it is owed stays in the store (a tool reading every
    /// queue, on a stopped relay, counts it).
    #[test]
    fn a_start_reads_only_what_participants_on_the_roster_are_owed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_, conn) = open_db(dir.path()).expect("open");
        let n = store_with_an_idle_recipient(&conn);
        conn.execute("UPDATE cursors SET rseq = 0 WHERE recipient = 'OLD'", [])
            .expect("OLD owed message 1");
        let (mut w, roster) = writer_on(conn, 0);
        let a = commit_receipts(
            &mut w,
            &roster,
            20_000 * DAY_MS,
            vec![("CHN", 2, vec![unsigned_item(n - 19)])],
        );
        assert_eq!(a[0].1, RelayToNode::ReceiptStored(a[0].0));
        assert_eq!(w.cursors.get(&pid("IND")), Some(&n), "IND's moved up");
        assert_eq!(w.cursors.get(&pid("OLD")), Some(&0), "OLD is still owed 1");
        // The next start.
        let Writer { conn, .. } = w;
        let w = writer_with(conn, 0, roster);
        assert_eq!(
            w.start_rows_read, 19,
            "only what CHN, on the roster, is owed"
        );
        assert_eq!(w.ctx.queues.lock().expect("lock").len(&pid("CHN")), 19);
        assert_eq!(w.ctx.queues.lock().expect("lock").len(&pid("OLD")), 0);
        assert_eq!(queued_for(&w.conn, &pid("OLD")).expect("queued"), 1);
    }

    /// What a participant off the roster is owed does not grow while it is off: messages
    /// accepted meanwhile are not routed to it (PROTOCOL.md 7.3), to everyone included, so
    /// listed again it is owed at most what it was owed when taken off, each of those
    /// accepted under `queue_depth_max`. A queue above the limit (a limit lowered since, or
    /// a rewind) is read whole when the participant is listed again, exactly as a start
    /// reads it, and the limit then refuses new messages for it (`QueueFull`) until
    /// receipts take it below, as after a start.
    #[test]
    fn a_queue_read_for_a_participant_back_on_the_roster_is_bounded_as_at_a_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut w, _, _) = writer_holding(dir.path(), 0, 3);
        let listed = [("KAZ", 1), ("CHN", 2), ("IND", 3)];
        let submit = |w: &mut Writer, roster: &Verified<Roster>, n: u8, audience: Audience| {
            let signed = message_to(&SigningKey::from_bytes(&[1; 32]), n, audience);
            let env = roster.verify_envelope(&signed).expect("verifies");
            commit_submission(w, env, 20_000 * DAY_MS)
        };
        let queued =
            |w: &Writer, who: &str| w.ctx.queues.lock().expect("lock").after(&pid(who), 0, 100);

        // IND, owed messages 1 to 3, is revoked; five messages to every member follow.
        let v2 = test_roster(2, &listed, &["IND"]);
        reload(&mut w, &v2);
        for n in 4..=8 {
            let a = submit(&mut w, &v2, n, Audience::AllMembers);
            assert!(matches!(a, RelayToNode::Accepted(_)), "message {n}: {a:?}");
        }
        assert_eq!(queued(&w, "CHN"), (1..=8).collect::<Vec<i64>>());
        assert_eq!(queued(&w, "IND"), Vec::<i64>::new(), "off the roster");
        assert_eq!(
            queued_for(&w.conn, &pid("IND")).expect("queued"),
            3,
            "owed only what it was owed when taken off"
        );

        // Listed again, with the limit lowered below what it is owed: its whole queue is
        // read, and a message to it is refused as its queue is full.
        w.ctx.queue_depth_max = 2;
        let v3 = test_roster(3, &listed, &[]);
        reload(&mut w, &v3);
        match submit(&mut w, &v3, 9, Audience::Participants(vec![pid("IND")])) {
            RelayToNode::Rejected(r) => assert_eq!(r.code, RejectCode::QueueFull, "{r:?}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(queued(&w, "IND"), vec![1, 2, 3]);
        assert_eq!(w.ctx.metrics.queue_depth(&pid("IND")), 3);
        let started = load_queues(&w.conn, Whose::ActiveOn(&v3)).expect("queues");
        assert_eq!(
            started.index.after(&pid("IND"), 0, 100),
            queued(&w, "IND"),
            "what a start reads"
        );

        // A start on this store, with that limit: the same queue, the same refusal.
        let Writer { conn, .. } = w;
        let mut w = writer_with(conn, 0, v3.clone());
        w.ctx.queue_depth_max = 2;
        assert_eq!(queued(&w, "IND"), vec![1, 2, 3]);
        match submit(&mut w, &v3, 10, Audience::Participants(vec![pid("IND")])) {
            RelayToNode::Rejected(r) => assert_eq!(r.code, RejectCode::QueueFull, "{r:?}"),
            other => panic!("{other:?}"),
        }
    }

    /// A roster reload whose reading of a reinstated participant's queue fails (a store
    /// read error) is followed again while the relay is idle, not only at the next batch:
    /// before, the writer logged "tried again at the next batch" and parked, so a node of
    /// that participant that had logged in meanwhile (its session knowing nothing of the
    /// queue) was delivered nothing of what waited until someone's traffic made a batch.
    #[test]
    fn a_failed_read_of_a_reinstated_queue_is_tried_again_while_the_relay_is_idle() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut w, _, _) = writer_holding(dir.path(), 0, 3);
        let listed = [("KAZ", 1), ("CHN", 2), ("IND", 3)];
        // IND, owed messages 1 to 3, is revoked and its queue leaves memory.
        let v2 = test_roster(2, &listed, &["IND"]);
        w.follow(&v2).expect("followed");
        let (in_force, roster_rx) = tokio::sync::watch::channel(Arc::new(v2));
        w.ctx.roster = roster_rx;
        let gate = Arc::new(crate::FollowGate::default());
        w.ctx.follow_gate = Some(gate.clone());
        let queues = w.ctx.queues.clone();
        let (tx, rx) = mpsc::channel(16);
        let writer = std::thread::spawn(move || w.run(rx, None));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        let within = std::time::Duration::from_secs(10);
        let keep = |roster: &Verified<Roster>| {
            let (reply, kept) = tokio::sync::oneshot::channel();
            tx.try_send(Command::KeepRoster {
                roster: Arc::new(roster.clone()),
                reply,
            })
            .map_err(|_| "full")
            .expect("queued");
            kept
        };

        // The store cannot be read (a table gone, as a damaged file would fail a read)
        // when IND is listed again: the reload's follow fails, the roster is still kept.
        let (_, other) = open_db(dir.path()).expect("open");
        other
            .execute_batch("ALTER TABLE ahead RENAME TO ahead_away")
            .expect("rename");
        let v3 = test_roster(3, &listed, &[]);
        in_force.send_replace(Arc::new(v3.clone()));
        let kept = keep(&v3);
        rt.block_on(async {
            tokio::time::timeout(within, gate.reached.notified())
                .await
                .expect("the reload's follow reached the gate");
        });
        gate.go(1);
        let answer = rt.block_on(async { tokio::time::timeout(within, kept).await });
        assert!(matches!(answer, Ok(Ok(Ok(_)))), "{answer:?}");
        assert_eq!(
            queues.lock().expect("lock").after(&pid("IND"), 0, 100),
            Vec::<i64>::new(),
            "the read failed"
        );

        // The store reads again; nothing is sent to the writer, which follows again on
        // its own.
        other
            .execute_batch("ALTER TABLE ahead_away RENAME TO ahead")
            .expect("rename back");
        rt.block_on(async {
            tokio::time::timeout(within, gate.reached.notified())
                .await
                .expect("the writer, idle, follows the roster in force again");
        });
        gate.go(1);
        // A roster kept that needs no follow (not gated): answered once the follow above
        // is done, on the writer's one thread.
        let again = keep(&v3);
        let again = rt.block_on(async { tokio::time::timeout(within, again).await });
        assert!(matches!(again, Ok(Ok(Ok(_)))), "{again:?}");
        assert_eq!(
            queues.lock().expect("lock").after(&pid("IND"), 0, 100),
            vec![1, 2, 3],
            "IND's queue read once the store reads"
        );
        drop(tx);
        assert!(matches!(writer.join(), Ok(None)));
    }

    /// Counts the error-level events logged on the thread it is the default of.
    struct ErrorCount(Arc<std::sync::atomic::AtomicUsize>);

    impl tracing::Subscriber for ErrorCount {
        fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
            tracing::span::Id::from_u64(1)
        }
        fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
        fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
        fn event(&self, event: &tracing::Event<'_>) {
            if *event.metadata().level() == tracing::Level::ERROR {
                self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
        fn enter(&self, _: &tracing::span::Id) {}
        fn exit(&self, _: &tracing::span::Id) {}
    }

    /// A store whose reading of a reinstated participant's queue keeps failing (a damaged
    /// file) is read again every second while the relay is idle, and that is not an error
    /// line a second for as long as it lasts: before, every retry logged one (3,600 an
    /// hour, drowning the rest), where the store's own probe of failing writes logs its
    /// retries at debug. The reload's failure and the first retry's are logged; the
    /// retries after that at most once every `ROSTER_FOLLOW_FAILED_REPEAT_MS`, with their count.
    #[test]
    fn a_read_of_a_reinstated_queue_that_keeps_failing_is_not_an_error_line_a_second() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut w, _, _) = writer_holding(dir.path(), 0, 3);
        let listed = [("KAZ", 1), ("CHN", 2), ("IND", 3)];
        let v2 = test_roster(2, &listed, &["IND"]);
        w.follow(&v2).expect("followed");
        let (in_force, roster_rx) = tokio::sync::watch::channel(Arc::new(v2));
        w.ctx.roster = roster_rx;
        let gate = Arc::new(crate::FollowGate::default());
        w.ctx.follow_gate = Some(gate.clone());
        let errors = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = ErrorCount(errors.clone());
        let (tx, rx) = mpsc::channel(16);
        let writer = std::thread::spawn(move || {
            tracing::subscriber::with_default(counted, || w.run(rx, None))
        });
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        let within = std::time::Duration::from_secs(10);
        let reached = || {
            rt.block_on(async {
                tokio::time::timeout(within, gate.reached.notified())
                    .await
                    .expect("the writer follows the roster in force");
            })
        };

        // The store cannot be read when IND is listed again, and stays so.
        let (_, other) = open_db(dir.path()).expect("open");
        other
            .execute_batch("ALTER TABLE ahead RENAME TO ahead_away")
            .expect("rename");
        let v3 = test_roster(3, &listed, &[]);
        in_force.send_replace(Arc::new(v3.clone()));
        let (reply, kept) = tokio::sync::oneshot::channel();
        tx.try_send(Command::KeepRoster {
            roster: Arc::new(v3),
            reply,
        })
        .map_err(|_| "full")
        .expect("queued");
        // The reload's follow, then five retries while idle, each failing; the sixth is
        // held at the gate, so the five before it have logged what they log.
        reached();
        gate.go(1);
        let answer = rt.block_on(async { tokio::time::timeout(within, kept).await });
        assert!(matches!(answer, Ok(Ok(Ok(_)))), "{answer:?}");
        for _ in 0..5 {
            reached();
            gate.go(1);
        }
        reached();
        let logged = errors.load(std::sync::atomic::Ordering::SeqCst);
        assert!(
            logged <= 2,
            "{logged} error lines for one failing read tried again 5 times"
        );
        gate.go(u64::MAX / 2);
        drop(tx);
        assert!(matches!(writer.join(), Ok(None)));
    }

    /// A participant taken off the roster while the relay runs (revoked, or no longer
    /// listed) has its queue leave memory at the writer's next batch, and its gauge; a
    /// receipt of its still in flight takes what it names out of what the store owes it,
    /// and leaves its cursor. Listed again, it is owed what it was before, less that, read
    /// from its cursor, and receipting it moves its cursor as for anyone.
    #[test]
    fn a_participant_back_on_the_roster_is_owed_what_it_was_before() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_, conn) = open_db(dir.path()).expect("open");
        let n = store_with_an_idle_recipient(&conn);
        conn.execute("UPDATE cursors SET rseq = 0 WHERE recipient = 'OLD'", [])
            .expect("OLD owed message 1");
        let listed = [("KAZ", 1), ("CHN", 2), ("IND", 3), ("OLD", 4)];
        let (mut w, v1) = writer_on(conn, 0);
        let now = 20_000 * DAY_MS;
        let queued = |w: &Writer, who: &str| w.ctx.queues.lock().expect("lock").len(&pid(who));
        assert_eq!(queued(&w, "OLD"), 0, "off the roster");

        // OLD listed again (version 2): its queue is read at the next batch.
        let v2 = test_roster(2, &listed, &[]);
        reload(&mut w, &v2);
        let a = commit_receipts(
            &mut w,
            &v2,
            now,
            vec![("CHN", 2, vec![unsigned_item(n - 19)])],
        );
        assert_eq!(a[0].1, RelayToNode::ReceiptStored(a[0].0));
        assert_eq!(queued(&w, "OLD"), 1, "owed message 1 again");
        assert_eq!(w.ctx.metrics.queue_depth(&pid("OLD")), 1);
        assert_eq!(w.cursors.get(&pid("OLD")), Some(&0));

        // CHN revoked (version 3): its queue leaves memory, its cursor stays, and a receipt
        // it signed before (verified against version 2) takes n - 18 out of the store's
        // queue (receipted ahead), not out of memory.
        let v3 = test_roster(3, &listed, &["CHN"]);
        reload(&mut w, &v3);
        let a = commit_receipts(
            &mut w,
            &v2,
            now + 1,
            vec![("CHN", 2, vec![unsigned_item(n - 18)])],
        );
        assert_eq!(a[0].1, RelayToNode::ReceiptStored(a[0].0));
        assert_eq!(queued(&w, "CHN"), 0, "off the roster: not in memory");
        assert_eq!(w.ctx.metrics.queue_depth(&pid("CHN")), 0);
        assert!(
            !w.ctx
                .metrics
                .render(&[])
                .contains("hotline_relay_queue_depth{participant=\"CHN\"}"),
            "no gauge for a participant off the roster"
        );
        assert_eq!(
            w.cursors.get(&pid("CHN")),
            Some(&(n - 19)),
            "CHN's cursor stays"
        );
        assert_eq!(queued_for(&w.conn, &pid("CHN")).expect("queued"), 18);
        // Taken off, CHN's cursor is never taken for idle; at a start it is not read.
        w.idle_lag_max = 1;
        w.idle_swept_at = 0;
        let a = commit_receipts(
            &mut w,
            &v3,
            now + 2,
            vec![("OLD", 4, vec![unsigned_item(1)])],
        );
        assert_eq!(a[0].1, RelayToNode::ReceiptStored(a[0].0));
        assert_eq!(w.cursors.get(&pid("CHN")), Some(&(n - 19)));
        assert_eq!(w.cursors.get(&pid("OLD")), Some(&n), "OLD owes nothing now");
        let Writer { conn, .. } = w;
        let mut w = writer_with(conn, 0, v3.clone());
        assert_eq!(
            w.start_rows_read, 0,
            "nobody on the roster is owed anything"
        );

        // CHN reinstated (version 4): owed the 18 it was owed, receipted as before.
        let v4 = test_roster(4, &listed, &[]);
        reload(&mut w, &v4);
        let a = commit_receipts(
            &mut w,
            &v4,
            now + 3,
            vec![("CHN", 2, vec![unsigned_item(n - 17)])],
        );
        assert_eq!(a[0].1, RelayToNode::ReceiptStored(a[0].0));
        assert_eq!(queued(&w, "CHN"), 17);
        assert_eq!(w.cursors.get(&pid("CHN")), Some(&(n - 17)));
        let _ = v1;
    }

    /// A receipt its signer's session handed over before a reloaded roster revoked it (a
    /// receipt in flight: verified against the roster then in force) tells the relay that
    /// its node holds those messages. It is kept, forwarded to their sender, and what it
    /// names is no longer owed in the store, although the signer's queue is not in memory:
    /// a start, or the roster that lists it again, does not owe those messages again. It
    /// used to be answered `ReceiptStored` and dropped as telling nothing new: the sender
    /// never learnt of the delivery, and the relay owed the messages again.
    #[test]
    fn a_receipt_in_flight_when_its_signer_leaves_the_roster_is_kept_and_forwarded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_, conn) = open_db(dir.path()).expect("open");
        let n = store_with_an_idle_recipient(&conn);
        let listed = [("KAZ", 1), ("CHN", 2), ("IND", 3)];
        let (mut w, v1) = writer_on(conn, 0);
        let now = 20_000 * DAY_MS;
        assert_eq!(queued_for(&w.conn, &pid("CHN")).expect("queued"), 20);

        // CHN revoked (version 2) while its receipt, verified against version 1, waits.
        let v2 = test_roster(2, &listed, &["CHN"]);
        reload(&mut w, &v2);
        let a = commit_receipts(
            &mut w,
            &v1,
            now,
            vec![("CHN", 2, vec![unsigned_item(n - 18), unsigned_item(n - 15)])],
        );
        assert_eq!(a[0].1, RelayToNode::ReceiptStored(a[0].0));
        assert_eq!(
            kept_and_forwarded(&w, a[0].0),
            (true, true),
            "the delivery it records is kept, and forwarded to KAZ"
        );
        assert_eq!(w.ctx.queues.lock().expect("lock").len(&pid("CHN")), 0);
        assert_eq!(
            queued_for(&w.conn, &pid("CHN")).expect("queued"),
            18,
            "the two it names are no longer owed"
        );
        assert_eq!(w.cursors.get(&pid("CHN")), Some(&(n - 20)), "cursor stays");

        // Listed again after a restart (version 3): owed the other 18, not those two.
        let v3 = test_roster(3, &listed, &[]);
        let Writer { conn, .. } = w;
        let w = writer_with(conn, 0, v3);
        let owed = w
            .ctx
            .queues
            .lock()
            .expect("lock")
            .after(&pid("CHN"), 0, usize::MAX);
        assert_eq!(owed.len(), 18);
        assert!(!owed.contains(&(n - 18)) && !owed.contains(&(n - 15)));
    }

    /// A receipt from `who` (key seed `seed`) naming `held`, as its session hands it to the
    /// writer, with its digest and the channel its answer comes on.
    fn receipt_command(
        roster: &Verified<Roster>,
        who: &str,
        seed: u8,
        held: &Signed<Envelope>,
    ) -> (Command, Digest, mpsc::Receiver<RelayToNode>) {
        let signed = Signed::sign(
            &Receipt {
                version: PROTOCOL_VERSION,
                recipient: pid(who),
                kind: ReceiptKind::Delivered,
                created_at_ms: 1_000,
                items: vec![ReceiptItem {
                    id: MessageId([1; 16]),
                    sender: pid("KAZ"),
                    digest: held.digest(),
                }],
            },
            &SigningKey::from_bytes(&[seed; 32]),
        )
        .expect("sign receipt");
        let receipt = roster.verify_receipt(&signed).expect("verifies");
        let (reply, answer) = mpsc::channel(1);
        let digest = signed.digest();
        let cmd = Command::Receipt {
            receipt,
            digest,
            reply,
        };
        (cmd, digest, answer)
    }

    /// A writer that panics (a bug; here the test seam `fail_after_commits`, after its
    /// first commit) stops as after a failed sync: it returns why, so that the relay stops
    /// and says so, and every command still waiting in its queue is answered, never
    /// dropped. Before, the panic unwound through the writer and dropped its queue: a
    /// roster to keep was never answered, and a receipt's node, never told
    /// `StorageUnavailable`, learnt of it only at its next connection. What the first
    /// commit stored is still answered as stored (its answers were with the sync thread).
    #[test]
    fn a_writer_that_panics_answers_what_still_waits_for_it_and_says_why() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut w, roster, held) = writer_holding(dir.path(), 0, 1);
        // One command a turn, and a panic after the first commit.
        w.ctx.batch_max = 1;
        w.ctx.fail_after_commits = Some(1);
        let (tx, rx) = mpsc::channel(16);
        let (first, first_digest, mut first_answer) = receipt_command(&roster, "CHN", 2, &held[0]);
        tx.try_send(first).map_err(|_| "full").expect("queued");
        let (waiting, waiting_digest, mut waiting_answer) =
            receipt_command(&roster, "IND", 3, &held[0]);
        tx.try_send(waiting).map_err(|_| "full").expect("queued");
        let (keep, kept) = tokio::sync::oneshot::channel();
        tx.try_send(Command::KeepRoster {
            roster: Arc::new(roster.clone()),
            reply: keep,
        })
        .map_err(|_| "full")
        .expect("queued");
        let stopped = std::thread::spawn(move || w.run(rx, None)).join();
        let why = match stopped {
            Ok(Some(why)) => why,
            Ok(None) => panic!("the writer stopped as if its commands had ended"),
            Err(_) => panic!("the panic ended the writer's thread, dropping its queue"),
        };
        assert!(why.contains("panicked"), "{why}");
        assert!(why.contains("injected"), "says why: {why}");
        assert_eq!(
            first_answer
                .try_recv()
                .expect("the committed receipt is answered"),
            RelayToNode::ReceiptStored(first_digest)
        );
        match waiting_answer.try_recv() {
            Ok(RelayToNode::Rejected(r)) => {
                assert_eq!(r.code, RejectCode::StorageUnavailable, "{r:?}");
                assert_eq!(r.subject, Subject::Receipt(waiting_digest));
                assert!(r.detail.contains("panicked"), "says why: {r:?}");
            }
            other => panic!("a receipt waiting for the writer when it panicked: {other:?}"),
        }
        assert!(
            matches!(kept.blocking_recv(), Ok(Err(e)) if e.contains("panicked")),
            "the roster is not reported kept"
        );
        assert!(tx.is_closed(), "the writer takes nothing more");
    }

    /// An operator's commits, a roster kept or queues moved back, are watched for stalls
    /// as a batch's commits are: while one waits on the store, `/health` shows it
    /// (`store_stalled` once it has run `STORE_STALL_MS`). Before, `Metrics::disk` saw
    /// neither, so a disk that hung during one left `/health` answering `ok` while the
    /// writer, and with it every message, waited. The slow disk here is the test seam
    /// `slow_commits`, a wait before each `COMMIT`.
    #[test]
    fn an_operators_commit_that_waits_on_the_store_shows_as_busy() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut w, roster, _) = writer_holding(dir.path(), 0, 2);
        // Both recipients have had both messages: a rewind moves their cursors back.
        w.conn
            .execute_batch("UPDATE cursors SET rseq = 2")
            .expect("cursors");
        w.ctx.slow_commits = Some(std::time::Duration::from_millis(500));
        let metrics = w.ctx.metrics.clone();
        let waits = |w: &mut Writer, op: &(dyn Fn(&mut Writer) -> bool + Sync), what: &str| {
            std::thread::scope(|s| {
                let job = s.spawn(|| op(w));
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(4);
                let mut seen = false;
                while !job.is_finished() && std::time::Instant::now() < deadline {
                    if metrics.disk.busy() >= std::time::Duration::from_millis(20) {
                        seen = true;
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                let done = job.join().expect("no panic");
                assert!(seen, "{what} waited on the store unseen by the disk watch");
                assert!(done, "{what} done once the store answered");
            });
            assert_eq!(
                metrics.disk.busy(),
                std::time::Duration::ZERO,
                "{what} ended"
            );
        };
        waits(
            &mut w,
            &|w| w.keep_roster(&roster) == Ok(true),
            "keeping a roster",
        );
        waits(
            &mut w,
            &|w| {
                w.rewind(
                    None,
                    0,
                    FirstSince {
                        message: Some(1),
                        receipt: None,
                    },
                )
                .is_ok_and(|r| r.len() == 2 && r.iter().all(|(_, r)| r.messages == 2))
            },
            "moving queues back",
        );
    }

    /// A message counts as accepted (`hotline_relay_messages_accepted_total`), and a
    /// receipt as stored, only once the sync after its commit has succeeded, as its answer
    /// is sent: one whose sync failed was refused `StorageUnavailable`. Before, both were
    /// counted at the commit, so a failed sync, which stops the relay, left its last
    /// batch counted though refused.
    #[test]
    fn what_a_failed_sync_refused_is_not_counted_accepted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut w, roster, held) = writer_holding(dir.path(), 0, 1);
        w.ctx.batch_max = 1;
        w.ctx.fail_syncs_after = Some(0);
        let metrics = w.ctx.metrics.clone();
        let env = Envelope {
            version: PROTOCOL_VERSION,
            id: MessageId([0x20; 16]),
            sender: pid("KAZ"),
            seq: Seq(2),
            audience: Audience::Participants(vec![pid("CHN")]),
            kind: MsgKind::Alert,
            precedence: Precedence::Routine,
            status: Status::Exercise,
            created_at_ms: 1_000,
            respond_by_ms: None,
            references: vec![],
            category: None,
            subject: "its sync fails".into(),
            body: "body".into(),
        };
        let signed = Signed::sign(&env, &SigningKey::from_bytes(&[1; 32])).expect("sign");
        let env = roster.verify_envelope(&signed).expect("verifies");
        let (tx, rx) = mpsc::channel(16);
        let (reply, mut answer) = mpsc::channel(1);
        let now = std::time::Instant::now();
        tx.try_send(Command::Submit {
            digest: env.signed().digest(),
            env,
            reply,
            read_at: now,
            handed_at: now,
        })
        .map_err(|_| "full")
        .expect("queued");
        let (receipt, _, mut receipt_answer) = receipt_command(&roster, "CHN", 2, &held[0]);
        tx.try_send(receipt).map_err(|_| "full").expect("queued");
        // `tx` stays: the writer waits for more until the failed sync wakes it.
        let stopped = std::thread::spawn(move || w.run(rx, None))
            .join()
            .expect("the writer thread ends");
        assert!(stopped.is_some(), "stopped by the failed sync");
        for a in [answer.try_recv(), receipt_answer.try_recv()] {
            assert!(
                matches!(&a, Ok(RelayToNode::Rejected(r)) if r.code == RejectCode::StorageUnavailable),
                "{a:?}"
            );
        }
        assert_eq!(
            metrics.accepted.load(std::sync::atomic::Ordering::Relaxed),
            0,
            "refused, not accepted"
        );
        assert_eq!(
            metrics
                .receipts_stored
                .load(std::sync::atomic::Ordering::Relaxed),
            0,
            "refused, not stored"
        );
    }

    /// A receipt's delivery is timed (`hotline_relay_delivery_latency_seconds`) only once
    /// the sync after its commit has succeeded, as it is counted stored: one whose sync
    /// failed was refused `StorageUnavailable`, and its node sends it again. Before, the
    /// latency was observed at the commit, after the counts had moved to the sync, so a
    /// failed sync left the refused receipt's delivery timed (and timed again when the
    /// receipt came back).
    #[test]
    fn a_receipt_whose_sync_failed_times_no_delivery() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut w, roster, held) = writer_holding(dir.path(), 0, 1);
        w.ctx.batch_max = 1;
        w.ctx.fail_syncs_after = Some(0);
        let metrics = w.ctx.metrics.clone();
        let (tx, rx) = mpsc::channel(16);
        let (receipt, _, mut answer) = receipt_command(&roster, "CHN", 2, &held[0]);
        tx.try_send(receipt).map_err(|_| "full").expect("queued");
        // `tx` stays: the writer waits for more until the failed sync wakes it.
        let stopped = std::thread::spawn(move || w.run(rx, None))
            .join()
            .expect("the writer thread ends");
        assert!(stopped.is_some(), "stopped by the failed sync");
        let a = answer.try_recv();
        assert!(
            matches!(&a, Ok(RelayToNode::Rejected(r)) if r.code == RejectCode::StorageUnavailable),
            "{a:?}"
        );
        assert_eq!(
            metrics
                .receipts_stored
                .load(std::sync::atomic::Ordering::Relaxed),
            0,
            "refused, not stored"
        );
        assert_eq!(latencies_observed(&metrics), 0, "refused, not timed");
    }

    /// How many deliveries `hotline_relay_delivery_latency_seconds` has timed.
    fn latencies_observed(metrics: &Metrics) -> u64 {
        let text = metrics.render(&[]);
        let count = text
            .lines()
            .find_map(|l| l.strip_prefix("hotline_relay_delivery_latency_seconds_count "))
            .expect("the histogram is rendered");
        count.parse().expect("a count")
    }

    /// A receipt whose commit is durable times its delivery (here the commit syncs itself,
    /// as without the log's sync thread), once for each message it takes out of a queue.
    #[test]
    fn a_durable_receipt_times_each_delivery_it_ends() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut w, roster, held) = writer_holding(dir.path(), 0, 2);
        let item = |i: usize| ReceiptItem {
            id: MessageId([i as u8 + 1; 16]),
            sender: pid("KAZ"),
            digest: held[i].digest(),
        };
        let metrics = w.ctx.metrics.clone();
        let a = commit_receipts(
            &mut w,
            &roster,
            5_000,
            vec![("CHN", 2, vec![item(0), item(1)])],
        );
        assert_eq!(a[0].1, RelayToNode::ReceiptStored(a[0].0));
        assert_eq!(latencies_observed(&metrics), 2);
        // The same deliveries again, by another receipt: nothing more to time.
        let a = commit_receipts(&mut w, &roster, 5_001, vec![("CHN", 2, vec![item(1)])]);
        assert_eq!(a[0].1, RelayToNode::ReceiptStored(a[0].0));
        assert_eq!(latencies_observed(&metrics), 2);
    }

    /// After a failed commit whose batch was posted, the writer closes the sessions it was
    /// posted to and says how many: the sessions it closed, not the batch's recipients,
    /// most of whom may have no session (a post to one is dropped). Before, the line
    /// counted every recipient, here 2 where no session was closed.
    #[test]
    fn a_recall_counts_the_sessions_it_closed_not_the_recipients() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (w, _, _) = writer_holding(dir.path(), 0, 1);
        let posted = |pos| Posted {
            pos,
            id: None,
            frame: bytes::Bytes::from_static(b"frame"),
            posted_at: None,
        };
        let posts = vec![
            (pid("CHN"), Kind::Message, posted(1)),
            (pid("IND"), Kind::Message, posted(1)),
            (pid("CHN"), Kind::Message, posted(2)),
        ];
        assert_eq!(w.recall(&posts), 0, "neither recipient has a session");
    }

    /// An observer's reply is routed by what the store says it answers (PROTOCOL.md 7.4,
    /// step 3). A read of the store that fails there is a storage failure, answered
    /// `StorageUnavailable` (the node offers the message again), not `PolicyDenied`, which
    /// is final: its node would mark a permitted reply refused for good and tell its
    /// operator that policy forbids it. Here the read fails for want of its table,
    /// renamed away for one batch.
    #[test]
    fn a_failed_read_routing_an_observers_reply_is_a_storage_failure_not_a_refusal() {
        use hotline_proto::roster::{verify_roster, Participant, Role};
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut w, _, _) = writer_holding(dir.path(), 0, 1);
        // CHN observes; KAZ, whose message 1 was addressed to CHN, is a member.
        let roster_key = SigningKey::from_bytes(&[9; 32]);
        let roster = Roster {
            protocol_version: PROTOCOL_VERSION,
            version: 2,
            issued_at_ms: 2_000,
            network: "TEST".into(),
            participants: [
                ("KAZ", 1u8, Role::Member),
                ("CHN", 2, Role::Observer),
                ("IND", 3, Role::Member),
                ("SEC", 4, Role::Secretariat),
            ]
            .into_iter()
            .map(|(id, k, role)| Participant {
                id: pid(id),
                name: id.to_owned(),
                role,
                keys: vec![PublicKey::of(&SigningKey::from_bytes(&[k; 32]))],
                revoked: false,
            })
            .collect(),
            groups: vec![],
        };
        let signed = Signed::sign(&roster, &roster_key).expect("sign roster");
        let roster = verify_roster(&signed, &PublicKey::of(&roster_key)).expect("roster");
        let (_keep, roster_rx) = tokio::sync::watch::channel(Arc::new(roster.clone()));
        w.ctx.roster = roster_rx;
        let reply_to_kaz = |n: u8| {
            let env = Envelope {
                version: PROTOCOL_VERSION,
                id: MessageId([0x40 | n; 16]),
                sender: pid("CHN"),
                seq: Seq(u64::from(n)),
                audience: Audience::Participants(vec![pid("KAZ")]),
                kind: MsgKind::Reply,
                precedence: Precedence::Routine,
                status: Status::Exercise,
                created_at_ms: 1_000,
                respond_by_ms: None,
                references: vec![MessageId([1; 16])],
                category: None,
                subject: format!("reply {n}"),
                body: "body".into(),
            };
            let signed = Signed::sign(&env, &SigningKey::from_bytes(&[2; 32])).expect("sign");
            roster.verify_envelope(&signed).expect("verifies")
        };
        let commit =
            |w: &mut Writer, env: Verified<Envelope>| commit_submission(w, env, 20_000 * DAY_MS);
        assert!(
            matches!(commit(&mut w, reply_to_kaz(1)), RelayToNode::Accepted(_)),
            "an observer may reply to who addressed it"
        );

        w.conn
            .execute_batch("ALTER TABLE messages RENAME TO messages_away")
            .expect("renamed");
        match commit(&mut w, reply_to_kaz(2)) {
            RelayToNode::Rejected(r) => assert_eq!(r.code, RejectCode::StorageUnavailable, "{r:?}"),
            other => panic!("{other:?}"),
        }

        w.conn
            .execute_batch("ALTER TABLE messages_away RENAME TO messages")
            .expect("renamed back");
        assert!(
            matches!(commit(&mut w, reply_to_kaz(2)), RelayToNode::Accepted(_)),
            "offered again, it is accepted"
        );
    }

    /// Step 10 (an id already used) comes before routing and the queues (PROTOCOL.md 7.3,
    /// steps 12 and 13): another message under a held id is `IdConflict`, final, whatever
    /// else would refuse it. Answered `QueueFull` instead, which is retryable, its node
    /// offered it again every few seconds while the queue stayed full, for a message no
    /// relay holding that id could ever accept; answered `UnknownRecipient`, its operator
    /// was told the wrong reason.
    #[test]
    fn another_message_under_a_held_id_is_an_id_conflict_before_routing_and_queues() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut w, roster, held) = writer_holding(dir.path(), 0, 1);
        // CHN's and IND's queues hold message 1: they are full.
        w.ctx.queue_depth_max = 1;
        let submit = |w: &mut Writer, to: &[&str]| {
            let env = Envelope {
                version: PROTOCOL_VERSION,
                // Message 1's id, with other content and a later number.
                id: MessageId([1; 16]),
                sender: pid("KAZ"),
                seq: Seq(5),
                audience: Audience::Participants(to.iter().map(|p| pid(p)).collect()),
                kind: MsgKind::Alert,
                precedence: Precedence::Routine,
                status: Status::Exercise,
                created_at_ms: 1_000,
                respond_by_ms: None,
                references: vec![],
                category: None,
                subject: "not message 1".into(),
                body: "body".into(),
            };
            let signed = Signed::sign(&env, &SigningKey::from_bytes(&[1; 32])).expect("sign");
            assert_ne!(signed.digest(), held[0].digest());
            let env = roster.verify_envelope(&signed).expect("verifies");
            commit_submission(w, env, 20_000 * DAY_MS)
        };
        for to in [&["CHN"][..], &["XYZ"][..]] {
            match submit(&mut w, to) {
                RelayToNode::Rejected(r) => {
                    assert_eq!(r.code, RejectCode::IdConflict, "to {to:?}: {r:?}");
                    assert_eq!(r.subject, Subject::Message(MessageId([1; 16])));
                }
                other => panic!("to {to:?}: {other:?}"),
            }
        }
    }

    /// The relay's first promise, against a model, with idle cursors looked at every few
    /// batches (`idle_cursors_up`, its lag lowered from 1,024 to 8 to 63 positions): batches
    /// of KAZ's messages (mostly to CHN, to IND in every other spell, so that IND's cursor
    /// lags) mixed with CHN's and IND's receipts (in order, out of order, of positions
    /// already receipted), commits that fail, restarts, and rewinds of one member or all.
    /// IND is now and then revoked and reinstated by a reloaded roster: while revoked it is
    /// addressed nothing, and its receipts (signed before, in flight) take what they name
    /// out of what the store owes it, not its cursor.
    /// After each step every recipient is owed exactly what was addressed to it and not
    /// receipted (a rewind owes again at least what it names), as the store holds it; the
    /// writer's queues, and a start's, are those of the members on the roster, and no
    /// cursor has passed a position still owed. (It fails if `idle_cursors_up` ignores
    /// the messages the batch queued, the queues, or the members off the roster.)
    #[test]
    fn no_message_owed_is_passed_by_a_cursor_whatever_the_sequence() {
        for seed in 1..=4u64 {
            no_message_owed_is_passed_by_a_cursor_in_run(seed);
        }
    }

    fn no_message_owed_is_passed_by_a_cursor_in_run(seed: u64) {
        use std::collections::BTreeMap;
        let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let (_, conn) = open_db(dir.path()).expect("open");
        let (mut w, roster) = writer_on(conn, 0);
        // Looked at every few batches, so that a run meets every case often.
        let lag_max = 8 + next(56) as i64;
        w.idle_lag_max = lag_max;
        let kaz = SigningKey::from_bytes(&[1; 32]);
        let members = [("CHN", 2u8), ("IND", 3u8)];
        // The roster in force: IND revoked in every other version after the first.
        let listed = [("KAZ", 1u8), ("CHN", 2), ("IND", 3)];
        let mut in_force = roster.clone();
        let ind_off = |r: &Verified<Roster>| r.active(&pid("IND")).is_err();
        let mut revocations = 0;
        // Each committed message: its position, id, digest, recipients, acceptance time.
        let mut messages: BTreeMap<i64, (MessageId, Digest, Vec<&str>, u64)> = BTreeMap::new();
        // What each member is owed, by the model.
        let mut owed: HashMap<&str, BTreeSet<i64>> = HashMap::new();
        let mut counter: u64 = 0;
        let mut now = 20_000 * DAY_MS;
        let mut sweeps = 0;
        let mut moved_up = 0;
        for step in 0..300 {
            now += 1_000;
            match next(100) {
                // A restart: the writer rebuilt from the store.
                0..=2 => {
                    let Writer { conn, .. } = w;
                    w = writer_with(conn, 0, in_force.clone());
                    w.idle_lag_max = lag_max;
                }
                // A roster reloaded: IND revoked, or reinstated.
                5..=6 => {
                    let v = in_force.version + 1;
                    let revoked: &[&str] = if ind_off(&in_force) { &[] } else { &["IND"] };
                    in_force = test_roster(v, &listed, revoked);
                    revocations += usize::from(!revoked.is_empty());
                    reload(&mut w, &in_force);
                }
                // An operator's rewind on the running relay, of one member or all.
                3..=4 if !messages.is_empty() => {
                    let since = now - next(now - 20_000 * DAY_MS);
                    let only = match next(3) {
                        0 => None,
                        i => Some(pid(members[i as usize - 1].0)),
                    };
                    let first = first_since(&w.conn, since).expect("first");
                    w.rewind(only.as_ref(), since, first).expect("rewind");
                    // Owed again: at least what was addressed to them since; perhaps
                    // positions receipted ahead before too. Checked, then taken as owed.
                    for (m, _) in members {
                        if only.as_ref().is_some_and(|o| o.as_str() != m) {
                            continue;
                        }
                        let queue = owed.entry(m).or_default();
                        for (rseq, (_, _, to, _)) in &messages {
                            if first.message.is_some_and(|f| *rseq >= f) && to.contains(&m) {
                                queue.insert(*rseq);
                            }
                        }
                        // As the store holds it: a member off the roster has no queue in
                        // memory.
                        let now_owed: BTreeSet<i64> = load_queues(&w.conn, Whose::All)
                            .expect("queues")
                            .index
                            .after(&pid(m), 0, usize::MAX)
                            .into_iter()
                            .collect();
                        assert!(
                            queue.is_subset(&now_owed),
                            "seed {seed} step {step}: {m} not owed again all it should be"
                        );
                        for rseq in &now_owed {
                            assert!(messages[rseq].2.contains(&m), "{m} owed {rseq}");
                        }
                        *queue = now_owed;
                    }
                }
                // A batch: messages and receipts, its commit perhaps failing.
                _ => {
                    let fail = next(10) == 0;
                    if fail {
                        w.conn
                            .execute_batch(
                                "CREATE TRIGGER injected BEFORE INSERT ON journal
                                 BEGIN SELECT RAISE(ABORT, 'injected failure'); END;",
                            )
                            .expect("trigger");
                    }
                    let mut batch = Vec::new();
                    let mut submitted = Vec::new();
                    let mut receipted: Vec<(&str, Vec<i64>)> = Vec::new();
                    let commands = 1 + next(40);
                    for _ in 0..commands {
                        if next(3) > 0 {
                            counter += 1;
                            let to = match next(20) {
                                // IND, in every other spell of 30 steps only, and only
                                // while on the roster.
                                0 if step / 30 % 2 == 0 && !ind_off(&in_force) => vec!["IND"],
                                1 if step / 30 % 2 == 0 && !ind_off(&in_force) => {
                                    vec!["CHN", "IND"]
                                }
                                _ => vec!["CHN"],
                            };
                            let env = Envelope {
                                version: PROTOCOL_VERSION,
                                id: MessageId(u128::from(counter).to_be_bytes()),
                                sender: pid("KAZ"),
                                seq: Seq(counter),
                                audience: Audience::Participants(
                                    to.iter().map(|t| pid(t)).collect(),
                                ),
                                kind: MsgKind::Alert,
                                precedence: Precedence::Routine,
                                status: Status::Exercise,
                                created_at_ms: 1_000,
                                respond_by_ms: None,
                                references: vec![],
                                category: None,
                                subject: format!("message {counter}"),
                                body: "body".into(),
                            };
                            let signed = Signed::sign(&env, &kaz).expect("sign");
                            let digest = signed.digest();
                            let env = roster.verify_envelope(&signed).expect("verifies");
                            let (reply, answer) = mpsc::channel(1);
                            let at = std::time::Instant::now();
                            batch.push(Command::Submit {
                                env,
                                digest,
                                reply,
                                read_at: at,
                                handed_at: at,
                            });
                            submitted.push((
                                MessageId(u128::from(counter).to_be_bytes()),
                                digest,
                                to,
                                answer,
                            ));
                        } else {
                            let (m, key) = members[next(2) as usize];
                            let queue: Vec<i64> = owed
                                .get(m)
                                .map(|q| q.iter().copied().collect())
                                .unwrap_or_default();
                            let mut named: Vec<i64> = match next(4) {
                                // In order, the oldest.
                                0 | 1 => {
                                    queue.iter().take(1 + next(30) as usize).copied().collect()
                                }
                                // Out of order: some of them, anywhere.
                                2 => queue.iter().filter(|_| next(3) == 0).copied().collect(),
                                // The newest only.
                                _ => queue.last().into_iter().copied().collect(),
                            };
                            // Now and then, one already receipted.
                            if next(5) == 0 {
                                if let Some((rseq, _)) =
                                    messages.iter().find(|(r, (_, _, to, _))| {
                                        to.contains(&m) && !queue.contains(r)
                                    })
                                {
                                    named.push(*rseq);
                                }
                            }
                            named.truncate(hotline_proto::limits::RECEIPT_ITEMS_MAX);
                            if named.is_empty() {
                                continue;
                            }
                            counter += 1;
                            let items = named
                                .iter()
                                .map(|r| ReceiptItem {
                                    id: messages[r].0,
                                    sender: pid("KAZ"),
                                    digest: messages[r].1,
                                })
                                .collect();
                            let signed = Signed::sign(
                                &Receipt {
                                    version: PROTOCOL_VERSION,
                                    recipient: pid(m),
                                    kind: ReceiptKind::Delivered,
                                    created_at_ms: counter,
                                    items,
                                },
                                &SigningKey::from_bytes(&[key; 32]),
                            )
                            .expect("sign receipt");
                            let receipt = roster.verify_receipt(&signed).expect("verifies");
                            let (reply, _answer) = mpsc::channel(1);
                            batch.push(Command::Receipt {
                                receipt,
                                digest: signed.digest(),
                                reply,
                            });
                            receipted.push((m, named));
                        }
                    }
                    let swept_before = w.idle_swept_at;
                    let cursors_before = w.cursors.clone();
                    w.commit_batch_at(&mut batch, now);
                    if w.idle_swept_at != swept_before {
                        sweeps += 1;
                        // Moved up: the cursor of a member neither receipting nor sent to.
                        for (m, _) in members {
                            let quiet = !receipted.iter().any(|(r, _)| *r == m)
                                && !submitted.iter().any(|s| s.2.contains(&m));
                            if quiet && w.cursors.get(&pid(m)) != cursors_before.get(&pid(m)) {
                                moved_up += 1;
                            }
                        }
                    }
                    if fail {
                        w.conn
                            .execute_batch("DROP TRIGGER injected")
                            .expect("trigger dropped");
                        for (_, _, _, mut answer) in submitted {
                            let a = answer.try_recv().expect("answered");
                            assert!(!matches!(a, RelayToNode::Accepted(_)), "{a:?}");
                        }
                    } else {
                        for (m, named) in receipted {
                            let queue = owed.entry(m).or_default();
                            for r in named {
                                queue.remove(&r);
                            }
                        }
                        for (id, digest, to, mut answer) in submitted {
                            match answer.try_recv().expect("answered") {
                                RelayToNode::Accepted(_) => {
                                    let rseq: i64 = w
                                        .conn
                                        .query_row(
                                            "SELECT rseq FROM messages WHERE id = ?1",
                                            [&id.0[..]],
                                            |r| r.get(0),
                                        )
                                        .expect("stored");
                                    for t in &to {
                                        owed.entry(t).or_default().insert(rseq);
                                    }
                                    messages.insert(rseq, (id, digest, to, now));
                                }
                                RelayToNode::Rejected(r) => {
                                    assert_eq!(r.code, RejectCode::QueueFull, "{r:?}")
                                }
                                other => panic!("{other:?}"),
                            }
                        }
                    }
                }
            }
            // The store's queues are the model's; the writer's, and a start's, are those of
            // the members on the roster; no cursor passed a position owed.
            let loaded = load_queues(&w.conn, Whose::All).expect("queues");
            let started = load_queues(&w.conn, Whose::ActiveOn(&in_force)).expect("queues");
            for (m, _) in members {
                let want: Vec<i64> = owed
                    .get(m)
                    .map(|q| q.iter().copied().collect())
                    .unwrap_or_default();
                let off = m == "IND" && ind_off(&in_force);
                let in_memory = if off { Vec::new() } else { want.clone() };
                let live = w
                    .ctx
                    .queues
                    .lock()
                    .expect("lock")
                    .after(&pid(m), 0, usize::MAX);
                // The writer follows a reloaded roster at its next batch.
                if w.roster_followed == in_force.version {
                    assert_eq!(
                        live, in_memory,
                        "seed {seed} step {step}: {m}'s queue in memory"
                    );
                }
                assert_eq!(
                    loaded.index.after(&pid(m), 0, usize::MAX),
                    want,
                    "seed {seed} step {step}: {m}'s queue as the store holds it"
                );
                assert_eq!(
                    started.index.after(&pid(m), 0, usize::MAX),
                    in_memory,
                    "seed {seed} step {step}: {m}'s queue as a start rebuilds it"
                );
                if let (Some(c), Some(first)) = (loaded.cursors.get(&pid(m)), want.first()) {
                    assert!(
                        c < first,
                        "seed {seed} step {step}: {m}'s cursor {c} passed {first}"
                    );
                }
            }
            assert_eq!(w.cursors, loaded.cursors, "seed {seed} step {step}");
        }
        assert!(
            sweeps >= 2,
            "seed {seed}: idle cursors were looked at {sweeps} times"
        );
        assert!(moved_up >= 1, "seed {seed}: no idle cursor was moved up");
        assert!(revocations >= 1, "seed {seed}: IND was never revoked");
    }
}
