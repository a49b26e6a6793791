//! The node's durable state in `node.db`: the sequence counter, sent messages and their
//! per-relay outbox, the per-recipient delivery matrix, the inbox, receipts to send and
//! receipts received, the newest roster, and the audit journal.
//!
//! Every change is one transaction that also appends its journal entry. Invariants:
//! a message is signed and stored in the same transaction that takes its sequence number,
//! so a crash can never reuse a number; a delivered receipt is signed only for messages
//! whose storing transaction is the one that records the receipt.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension};

use hotline_proto::frame::{Accepted, RejectCode};
use hotline_proto::limits::SEQ_MAX;
use hotline_proto::{
    codec, Digest, Envelope, MessageId, ParticipantId, PublicKey, Receipt, ReceiptItem,
    ReceiptKind, Roster, Seq, Signature, Signed, SigningKey, Status, Verified, PROTOCOL_VERSION,
};
use hotline_store::{Journal, StoreError};

/// What an answer from a relay was to this node's records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answered {
    /// The first such answer from that relay, the message's first acceptance, or one naming
    /// recipients no relay had named: recorded.
    New {
        /// The message's status (actual, exercise or test), for the event that tells of it;
        /// `None` only if the stored message does not decode.
        status: Option<Status>,
    },
    /// That relay had answered it before (a resubmission's answer): nothing changed.
    Again,
    /// This node never sent that message, or never signed it with the number the link
    /// wrote: ignored.
    Unknown,
}

/// File name of the node database inside the data directory.
pub const DB_FILE: &str = "node.db";

/// `paged_at_ms` of a received message that never pages (not FLASH or IMMEDIATE): later
/// than any time, so that the paging query's index range never reaches it again.
const NEVER_PAGES: i64 = i64::MAX;

/// The schema version this code writes (`PRAGMA user_version`).
///
/// Version 1 is the schema with its one-time fills (`answers`, `acks_out`, `mismatches`)
/// done. Version 2 adds `matrix_signed` (the times signed in receipts) and the journal's
/// `message.recipients.added`: a version-1 node would open such a store and keep neither
/// up to date (a rollback that kept the store), so the version is raised for it to refuse
/// the store instead, and a store found at a version below 2 has `matrix_signed` filled
/// again from every kept receipt, whatever it already holds (a store a version-1 node wrote
/// after an earlier build of this one made the table is complete again). Version 3 adds
/// `signings`, the earlier signings of a message signed again after a restore: a version-2
/// node would sign again without recording the signing it replaced, so a store found at a
/// version below 3 has it filled again from the journal (and, if that finds any, `mismatches`
/// and `matrix_signed` again from the kept receipts, which may name such a signing).
///
/// Stores from before the version existed record 0, as does a new file: [`NodeStore::open`]
/// brings any older store to this version by the same `CREATE TABLE IF NOT EXISTS` and
/// fills, and sets the version in the transaction that commits them, so that a store
/// recording a version has all that version's tables filled. A store recording a version
/// above this one was written by a newer node, whose schema this code does not know: it is
/// refused ([`check_schema_version`]) before anything in it is changed, rather than run on
/// tables this node would misread or leave half-kept. A later release that adds a table
/// derived from what the store holds, or a record an older node would not keep, raises this.
///
/// `escalated` (overdue escalations, and whether each is announced) came without a raise:
/// nothing an older node does with such a store is worse than what it does with its own. It
/// escalates without writing there, so its escalations are as they were before (not
/// re-announced after a crash); an acceptance here that drops a row it marked copies the mark
/// into the table first. It leaves an escalation this node had not finished announcing
/// unannounced, so this node announces it once, `recovered`, at its next start (for the
/// recipients still unacknowledged); the table is never refilled, so nothing is announced
/// again at later starts.
///
/// `receipts_held` (forwarded receipts waiting for a roster that lists their signer's key)
/// came without a raise for the same reason: a version-3 node opening such a store neither
/// reads nor writes it, and discards such receipts as it always did; what this node held
/// meanwhile is checked again at its next start or roster, and nothing is derived from the
/// table, so nothing needs filling again.
///
/// Indexes come without a raise (`quarantine_by_time`): SQLite keeps an index up to date
/// whoever writes its table, so an older node running on the store leaves it whole.
pub const SCHEMA_VERSION: i64 = 3;

/// The first schema version whose nodes keep `matrix_signed`.
const SIGNED_TIMES_VERSION: i64 = 2;

/// The first schema version whose nodes keep `signings`.
const SIGNINGS_VERSION: i64 = 3;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS sent (
    id BLOB PRIMARY KEY,
    seq INTEGER NOT NULL UNIQUE,
    bytes BLOB NOT NULL, key BLOB NOT NULL, sig BLOB NOT NULL,
    created_at_ms INTEGER NOT NULL,
    respond_by_ms INTEGER,
    accepted_at_ms INTEGER,
    rejected_code TEXT,
    rejected_detail TEXT
);
CREATE TABLE IF NOT EXISTS outbox (
    relay INTEGER NOT NULL,
    id BLOB NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (relay, id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS outbox_by_seq ON outbox (relay, seq);
CREATE TABLE IF NOT EXISTS matrix (
    id BLOB NOT NULL,
    recipient TEXT NOT NULL,
    delivered_at_ms INTEGER,
    acked_at_ms INTEGER,
    officer TEXT,
    note TEXT,
    overdue_at_ms INTEGER,
    PRIMARY KEY (id, recipient)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS inbox (
    id BLOB PRIMARY KEY,
    sender TEXT NOT NULL,
    seq INTEGER NOT NULL,
    bytes BLOB NOT NULL, key BLOB NOT NULL, sig BLOB NOT NULL,
    received_at_ms INTEGER NOT NULL,
    acked_at_ms INTEGER,
    officer TEXT,
    note TEXT,
    paged_at_ms INTEGER
);
CREATE INDEX IF NOT EXISTS inbox_by_time ON inbox (received_at_ms);
-- The deadline tick asks these two questions every 250 ms; without the indexes each
-- question read every stored message (bodies included) every time.
-- `paged_at_ms` is the last page, or NEVER_PAGES for a message that does not page.
CREATE INDEX IF NOT EXISTS inbox_page_due ON inbox (COALESCE(paged_at_ms, received_at_ms))
    WHERE acked_at_ms IS NULL;
CREATE INDEX IF NOT EXISTS sent_by_respond_by ON sent (respond_by_ms, id)
    WHERE respond_by_ms IS NOT NULL;
-- Messages stored but not yet announced to the operator (event, log, paging hook). A node
-- killed between storing and announcing announces them at its next start.
CREATE TABLE IF NOT EXISTS unannounced (id BLOB PRIMARY KEY);
-- Escalations: recipient `recipient` of our message `id` was found overdue at `at_ms`
-- (`NodeStore::mark_overdue`, in the transaction that marks its matrix row), and whether the
-- operator has been told (`announced`: 0 until the log line, the event and the `on_overdue`
-- hook are done, `NodeStore::overdue_announced`). A node killed in between announces what
-- is left at its next start (`NodeStore::unannounced_overdue`). A row stays when an
-- acceptance's list drops the recipient's matrix row (one dropped carrying a mark an older
-- node made is copied here then), so that a relay naming the recipient again brings back
-- its mark and it is not escalated twice.
CREATE TABLE IF NOT EXISTS escalated (
    id BLOB NOT NULL,
    recipient TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    announced INTEGER NOT NULL,
    PRIMARY KEY (id, recipient)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS escalated_unannounced ON escalated (id) WHERE announced = 0;
-- Answers: message `id` references message `ref`, one received and the other sent (a
-- reply received to one of ours, or one of ours to a message received; message ids are
-- unique across both). Derived from the inbox and the sent messages: filled as messages
-- are stored and sent (and from both the first time a store opens with this table), read
-- for a sent message's answers and a received message's answers from here.
CREATE TABLE IF NOT EXISTS answers (
    ref BLOB NOT NULL,
    id BLOB NOT NULL,
    PRIMARY KEY (ref, id)
) WITHOUT ROWID;
-- A sent message's answers are counted, ordered and told apart by sender from here
-- (`answer_counts`, `answers_of`), not from their rows: in a row, `received_at_ms` comes
-- after the envelope's bytes, and SQLite reaches it through the pages of those bytes (up to
-- 80 KiB an answer, for every answer of every message of a page). Added without a raise of
-- the schema version, as `quarantine_by_time` below.
CREATE INDEX IF NOT EXISTS inbox_answering ON inbox (id, received_at_ms, sender);
CREATE TABLE IF NOT EXISTS quarantine (
    digest BLOB PRIMARY KEY,
    bytes BLOB NOT NULL, key BLOB NOT NULL, sig BLOB NOT NULL,
    reason TEXT NOT NULL,
    received_at_ms INTEGER NOT NULL
);
-- The quarantine's list, newest first a page at a time, and a discard of the oldest read
-- it in arrival order (`QUARANTINE_PAGE_SQL`, `QUARANTINE_OLDEST_SQL`): without the index
-- each page sorted every held delivery (bodies included) to answer a handful. Added without
-- a raise of the schema version: SQLite keeps an index up to date whoever writes the table,
-- so an older node running on the store leaves it whole, and a store opened without it
-- gains it here.
CREATE INDEX IF NOT EXISTS quarantine_by_time ON quarantine (received_at_ms);
CREATE TABLE IF NOT EXISTS receipts_out (
    digest BLOB PRIMARY KEY,
    bytes BLOB NOT NULL, key BLOB NOT NULL, sig BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS receipts_pending (
    relay INTEGER NOT NULL,
    digest BLOB NOT NULL,
    PRIMARY KEY (relay, digest)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS receipts_in (
    digest BLOB PRIMARY KEY,
    recipient TEXT NOT NULL,
    bytes BLOB NOT NULL, key BLOB NOT NULL, sig BLOB NOT NULL,
    received_at_ms INTEGER NOT NULL
);
-- The acknowledgement this node signed for received message `id` (a row of receipts_out),
-- to offer it again to a relay that delivers the message again (`NodeStore::reoffer_acks`).
-- Filled as messages are acknowledged, and from receipts_out the first time a store opens
-- with this table.
CREATE TABLE IF NOT EXISTS acks_out (
    id BLOB PRIMARY KEY,
    digest BLOB NOT NULL
) WITHOUT ROWID;
-- Per relay (its certificate's fingerprint, `NodeStore::set_relays`), the highest sequence number
-- it has answered `Accepted`. A relay whose `Welcome.last_seq` is lower has lost messages
-- it accepted (its store restored from a backup): `NodeStore::offer_lost` sends them again.
CREATE TABLE IF NOT EXISTS relay_seq (
    relay TEXT PRIMARY KEY,
    seq INTEGER NOT NULL
);
-- Which relay each configuration index (the `relay` column of outbox and receipts_pending)
-- named at the last start (`NodeStore::set_relays`): what waits for a relay follows it when
-- the configuration lists the relays in another order.
CREATE TABLE IF NOT EXISTS relay_slots (
    idx INTEGER PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    address TEXT NOT NULL
);
-- The times signed in the receipts the matrix records (`Receipt.created_at_ms`, by the
-- recipient's clock): the earliest receipt of either kind kept for message `id` from
-- `recipient`, and its earliest acknowledgement. The matrix's own times are when the receipts
-- reached this node, by its clock; these are what the recipient attests, as the relay's
-- report shows them. Written in the transaction that keeps the receipt, and from
-- receipts_in the first time a store opens with this table.
CREATE TABLE IF NOT EXISTS matrix_signed (
    id BLOB NOT NULL,
    recipient TEXT NOT NULL,
    delivered_ms INTEGER,
    acked_ms INTEGER,
    PRIMARY KEY (id, recipient)
) WITHOUT ROWID;
-- That this node keeps a receipt signed by `signer` (its `Receipt.recipient`, addressed or
-- not) naming our message `id` with a digest other than that message's: the first such
-- receipt is the evidence, and later ones from that signer for that message are not kept
-- (`NodeStore::store_forwarded`). Written in the transaction that keeps the receipt, and from
-- receipts_in the first time a store opens with this table.
CREATE TABLE IF NOT EXISTS mismatches (
    id BLOB NOT NULL,
    signer TEXT NOT NULL,
    PRIMARY KEY (id, signer)
) WITHOUT ROWID;
-- The earlier signings of sent message `id`: one a relay refused for a number a restore made
-- it reuse is signed again under its id with a new number (`NodeStore::resequence`), and the
-- signing `sent` held until then is recorded here by its number and digest. Another relay may
-- have taken that signing meanwhile (its acceptance is recorded against that number), and
-- the recipients it delivers to receipt it (a receipt of it is a receipt of the message).
-- Written in the transaction that signs again, and from the journal the first time a store
-- opens at schema 3.
-- Forwarded receipts that failed verification only because their signer, or the key that
-- signed them, is not on this node's roster, which may lag the relay's
-- (`NodeStore::hold_receipts`; PROTOCOL.md 7.2). Checked again whenever a newer roster is
-- installed, and at start: one that then verifies is kept as if it had just arrived
-- (`NodeStore::release_receipts`) and removed from here. Not journaled while held: nothing
-- here is believed before it verifies against a roster, and then it is journaled as any
-- received receipt. Bounded per claimed signer and in all (`RECEIPTS_HELD_PER_SIGNER_MAX`,
-- `RECEIPTS_HELD_MAX`), the oldest (lowest rowid) dropped first.
CREATE TABLE IF NOT EXISTS receipts_held (
    digest BLOB PRIMARY KEY,
    signer TEXT NOT NULL,
    bytes BLOB NOT NULL, key BLOB NOT NULL, sig BLOB NOT NULL,
    reason TEXT NOT NULL,
    received_at_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS receipts_held_by_signer ON receipts_held (signer);
CREATE TABLE IF NOT EXISTS signings (
    id BLOB NOT NULL,
    seq INTEGER NOT NULL,
    digest BLOB NOT NULL,
    PRIMARY KEY (id, seq)
) WITHOUT ROWID;
-- The idempotency keys of the API's sends (`Idempotency-Key`, docs/API.md): a client's
-- `key`, the digest of the `request` it came with (as the API understood it), and the
-- message `id` that request stored, so that the request repeated with its key stores
-- nothing more and is answered with that message (`NodeStore::compose_keyed`, which reads
-- and writes it in the transaction that composes). Kept `IDEMPOTENCY_KEY_KEPT_MS` and at
-- most `IDEMPOTENCY_KEYS_MAX` (`n` counts them in; the oldest go first), pruned in the
-- transactions that compose. Not journaled: it records no message or receipt, only which
-- request stored one (the message itself is journaled as sent). Added without a raise of
-- the schema version: an older node running on the store neither reads nor writes it (it
-- takes no key), and nothing is derived from it.
CREATE TABLE IF NOT EXISTS idempotency (
    n INTEGER PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,
    request BLOB NOT NULL,
    id BLOB NOT NULL,
    created_at_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS idempotency_by_time ON idempotency (created_at_ms);
";

/// A page of the quarantine, newest first ([`quarantine_page`]): `?1` rows from below
/// arrival time `?2` and row `?3`, read along `quarantine_by_time` (whose entries end with
/// the rowid), never sorted.
const QUARANTINE_PAGE_SQL: &str =
    "SELECT digest, bytes, key, sig, reason, received_at_ms, rowid FROM quarantine \
     WHERE received_at_ms <= ?2 AND (received_at_ms < ?2 OR rowid < ?3) \
     ORDER BY received_at_ms DESC, rowid DESC LIMIT ?1";

/// The oldest `?1` deliveries held in quarantine, for a discard of the oldest
/// (`NodeStore::discard_quarantined`), read along `quarantine_by_time`.
const QUARANTINE_OLDEST_SQL: &str =
    "SELECT digest, reason, LENGTH(bytes) FROM quarantine ORDER BY received_at_ms, rowid LIMIT ?1";

/// A relay's pending acknowledgements, a page of them (`NodeStore::pending_receipts`).
const PENDING_RECEIPTS_SQL: &str = "SELECT r.bytes, r.key, r.sig FROM receipts_pending p JOIN receipts_out r ON r.digest = p.digest WHERE p.relay = ?1 ORDER BY p.digest LIMIT ?2";

/// Refuses a store written by a newer node, whose schema (`PRAGMA user_version`) is above
/// [`SCHEMA_VERSION`], as [`StoreError::NewerSchema`] (not `Corrupt`: the store is good, for
/// the node that wrote it). It only reads, so it serves a backup opened read-only too
/// (`hotline restore`, which must not put such a copy in place of a store this node opens).
/// Returns the version found. `path` names the file in the error.
pub fn check_schema_version(conn: &Connection, path: &Path) -> Result<i64, StoreError> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::NewerSchema {
            path: path.to_owned(),
            found: version,
            supported: SCHEMA_VERSION,
            what: "node",
        });
    }
    Ok(version)
}

/// Names `relay_seq`'s records by fingerprint alone: the first stores to have the table
/// (from `d215f77`) named them `FINGERPRINT@ADDRESS`. Each fingerprint keeps the highest
/// number any of its addresses recorded. A read at every start; a write only once.
fn rename_relay_records(conn: &Connection) -> Result<(), StoreError> {
    let named_with_address: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM relay_seq WHERE instr(relay, '@') > 0)",
        [],
        |r| r.get(0),
    )?;
    if !named_with_address {
        return Ok(());
    }
    let tx = conn.unchecked_transaction()?;
    tx.execute(
        "INSERT INTO relay_seq (relay, seq)
             SELECT substr(relay, 1, instr(relay, '@') - 1), MAX(seq) FROM relay_seq
             WHERE instr(relay, '@') > 0 GROUP BY 1
             ON CONFLICT (relay) DO UPDATE SET seq = MAX(seq, excluded.seq)",
        [],
    )?;
    tx.execute("DELETE FROM relay_seq WHERE instr(relay, '@') > 0", [])?;
    tx.commit()?;
    Ok(())
}

/// Whose store this is: the participant recorded in `meta` at its first start since the
/// record exists, or, in a store from before it, the author of the first message it signed,
/// else of an acknowledgement it signed, else of the first delivered receipt it signed (kept
/// whole in its journal). `None` for a store that has recorded, sent and receipted nothing.
/// It only reads, so it serves a backup opened read-only too (`hotline restore`).
pub fn store_participant(
    conn: &Connection,
    path: &Path,
) -> Result<Option<ParticipantId>, StoreError> {
    match recorded_participant(conn, path)? {
        Some(p) => Ok(Some(p)),
        None => inferred_participant(conn, path),
    }
}

/// What a node configured as a participant finds in its store ([`check_participant`]).
#[derive(Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Claim {
    /// The store records this participant: nothing to write.
    Recorded,
    /// The store records no participant, or `previous`, another one whose store holds
    /// nothing yet (a first start with a mistyped participant, corrected): the node records
    /// this one at its start ([`NodeStore::claim_participant`]).
    Unrecorded {
        /// The other participant the store records, if any.
        previous: Option<ParticipantId>,
    },
}

/// Whether a node configured as `me` may use this store: refused
/// ([`StoreError::OtherParticipant`]) if it is another participant's ([`store_participant`])
/// and holds something. It only reads, so that `hotline config check` tells an operator,
/// beside a running node or before a start, what the node would refuse at its start.
pub fn check_participant(
    conn: &Connection,
    path: &Path,
    me: &ParticipantId,
) -> Result<Claim, StoreError> {
    // At every start after the first, one read: the record, and it is `me`.
    let holder = match recorded_participant(conn, path)? {
        Some(recorded) if recorded == *me => return Ok(Claim::Recorded),
        Some(recorded) => Some(recorded),
        None => inferred_participant(conn, path)?,
    };
    let previous = holder.filter(|h| h != me);
    if let Some(holder) = &previous {
        if !holds_nothing(conn)? {
            return Err(StoreError::OtherParticipant {
                path: path.to_owned(),
                holder: holder.to_string(),
                configured: me.to_string(),
            });
        }
    }
    Ok(Claim::Unrecorded { previous })
}

/// The participant recorded in `meta`, if any.
fn recorded_participant(
    conn: &Connection,
    path: &Path,
) -> Result<Option<ParticipantId>, StoreError> {
    let recorded: Option<Vec<u8>> = conn
        .query_row(
            "SELECT value FROM meta WHERE key = 'participant'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    recorded
        .map(|v| {
            String::from_utf8(v)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| StoreError::Corrupt {
                    path: path.to_owned(),
                    detail: "its participant record is not a participant id".into(),
                })
        })
        .transpose()
}

/// The participant a store without the record is known by: the author of what it signed.
fn inferred_participant(
    conn: &Connection,
    path: &Path,
) -> Result<Option<ParticipantId>, StoreError> {
    let corrupt = |detail: String| StoreError::Corrupt {
        path: path.to_owned(),
        detail,
    };
    let first = |sql: &str| -> Result<Option<Vec<u8>>, StoreError> {
        Ok(conn.query_row(sql, [], |r| r.get(0)).optional()?)
    };
    if let Some(bytes) = first("SELECT bytes FROM sent ORDER BY seq LIMIT 1")? {
        return codec::decode::<Envelope>(&bytes, bytes.len())
            .map(|e| Some(e.sender))
            .map_err(|e| corrupt(format!("its first sent message does not decode: {e}")));
    }
    if let Some(bytes) = first("SELECT bytes FROM receipts_out LIMIT 1")? {
        return codec::decode::<Receipt>(&bytes, bytes.len())
            .map(|r| Some(r.recipient))
            .map_err(|e| corrupt(format!("a receipt it signed does not decode: {e}")));
    }
    // A member that only ever received: its delivered receipts are journaled, not kept.
    if let Some(record) =
        first("SELECT payload FROM journal WHERE kind = 'receipt.delivered' ORDER BY seq LIMIT 1")?
    {
        return codec::decode::<Signed<Receipt>>(&record, record.len())
            .map_err(|e| e.to_string())
            .and_then(|s| s.decode_unverified().map_err(|e| e.to_string()))
            .map(|r| Some(r.recipient))
            .map_err(|e| {
                corrupt(format!(
                    "a delivered receipt it journaled does not decode: {e}"
                ))
            });
    }
    Ok(None)
}

/// Whether the store holds nothing of a participant's: nothing sent, received, quarantined
/// or receipted (a store recorded for a mistyped participant at a first start).
fn holds_nothing(conn: &Connection) -> Result<bool, StoreError> {
    Ok(conn.query_row(
        "SELECT NOT EXISTS (SELECT 1 FROM sent) AND NOT EXISTS (SELECT 1 FROM inbox)
            AND NOT EXISTS (SELECT 1 FROM quarantine) AND NOT EXISTS (SELECT 1 FROM receipts_out)
            AND NOT EXISTS (SELECT 1 FROM journal WHERE kind = 'receipt.delivered')",
        [],
        |r| r.get(0),
    )?)
}

/// What the operator asks to send; the store adds id, sequence number, sender and time.
#[derive(Clone, Debug)]
pub struct Draft {
    /// Audience.
    pub audience: hotline_proto::Audience,
    /// Kind.
    pub kind: hotline_proto::Kind,
    /// Precedence.
    pub precedence: hotline_proto::Precedence,
    /// Status.
    pub status: hotline_proto::Status,
    /// Respond-by, ms since the epoch.
    pub respond_by_ms: Option<u64>,
    /// Referenced messages.
    pub references: Vec<MessageId>,
    /// Category.
    pub category: Option<String>,
    /// Subject.
    pub subject: String,
    /// Body.
    pub body: String,
}

#[cfg(test)]
impl Draft {
    /// A routine, actual alert to `to` with `subject` and no body, what most tests compose;
    /// a test that needs more sets it over this (`Draft { precedence, ..Draft::alert(..) }`).
    pub(crate) fn alert(to: &[ParticipantId], subject: &str) -> Self {
        Self {
            audience: hotline_proto::Audience::Participants(to.to_vec()),
            kind: hotline_proto::Kind::Alert,
            precedence: hotline_proto::Precedence::Routine,
            status: hotline_proto::Status::Actual,
            respond_by_ms: None,
            references: vec![],
            category: None,
            subject: subject.into(),
            body: String::new(),
        }
    }
}

/// A send's `Idempotency-Key` and what it came with ([`NodeStore::compose_keyed`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Idempotency {
    /// The client's key: 1 to [`crate::limits::IDEMPOTENCY_KEY_BYTES_MAX`] visible ASCII
    /// characters (the API checks it).
    pub key: String,
    /// The digest of the request as the node understood it: what decides the message.
    pub request: Digest,
}

/// What a kept idempotency key already names ([`NodeStore::keyed`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Keyed {
    /// The key came with this same request, which stored message `id` at `created_at_ms`.
    Same {
        /// The message stored.
        id: MessageId,
        /// When it was stored (the key's time).
        created_at_ms: u64,
    },
    /// The key came with another request (its digest differs).
    Other,
}

/// What [`NodeStore::compose_keyed`] did.
#[derive(Debug)]
pub enum Composed {
    /// Signed and stored a new message.
    New(Signed<Envelope>),
    /// Stored nothing: the key is kept, from an earlier request.
    Before(Keyed),
}

/// One recipient's line in a sent message's delivery matrix.
#[derive(Clone, Debug, serde::Serialize)]
pub struct MatrixRow {
    /// The recipient.
    pub recipient: ParticipantId,
    /// When its delivered receipt arrived (ms), if it has.
    pub delivered_at_ms: Option<u64>,
    /// When its acknowledgement arrived (ms), if it has.
    pub acked_at_ms: Option<u64>,
    /// Who acknowledged.
    pub officer: Option<String>,
    /// The acknowledgement's note.
    pub note: Option<String>,
    /// When the respond-by passed without acknowledgement (ms), if it did.
    pub overdue_at_ms: Option<u64>,
    /// The time signed in the earliest receipt kept from this recipient (either kind), by
    /// its clock: when its node says it stored the message. `delivered_at_ms` is when the
    /// receipt reached this node, by this node's clock.
    pub delivered_signed_at_ms: Option<u64>,
    /// The time signed in its earliest acknowledgement kept, by its clock: when its officer
    /// acknowledged, as it attests (and as the relay's report shows). `acked_at_ms` is when
    /// that reached this node, and decides overdue.
    pub acked_signed_at_ms: Option<u64>,
    /// When this node stored this recipient's first answer (a received message from it that
    /// references this one), if any: of all its answers, not only those listed.
    pub answered_at_ms: Option<u64>,
}

/// A sent message with its state.
#[derive(Clone, Debug)]
pub struct SentMessage {
    /// The message as signed.
    pub envelope: Envelope,
    /// When the first relay accepted it.
    pub accepted_at_ms: Option<u64>,
    /// Why it was refused, if every relay refused it.
    pub rejected: Option<(String, String)>,
    /// Per recipient.
    pub matrix: Vec<MatrixRow>,
    /// Received messages that reference it, oldest first: the first
    /// [`crate::limits::ANSWERS_LISTED_MAX`] of them.
    pub answers: Vec<Answer>,
    /// How many received messages reference it, all of them.
    pub answers_total: u64,
}

/// A received message that references one this node sent (a reply, an update).
#[derive(Clone, Debug, serde::Serialize)]
pub struct Answer {
    /// Its id.
    pub id: MessageId,
    /// Its sender.
    pub from: ParticipantId,
    /// Its kind.
    pub kind: hotline_proto::Kind,
    /// Its subject.
    pub subject: String,
    /// When this node stored it.
    pub received_at_ms: u64,
}

/// A received message with its acknowledgement state.
#[derive(Clone, Debug)]
pub struct InboxMessage {
    /// The message as signed by its author (verified when stored).
    pub envelope: Envelope,
    /// When this node stored it.
    pub received_at_ms: u64,
    /// When it was acknowledged here, by whom, with what note.
    pub ack: Option<(u64, String, Option<String>)>,
    /// When this node first answered it (sent a message referencing it), its clock.
    pub answered_at_ms: Option<u64>,
}

/// What one forwarded receipt told us ([`NodeStore::store_forwarded`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Forwarded {
    /// Kept now: it tells something new (the first delivered receipt or acknowledgement from
    /// its recipient for one of our messages, or a first mismatch) and was not held before.
    /// A receipt forwarded again, or one telling nothing new (such as a second relay's copy,
    /// or a later mismatch), is not kept.
    pub fresh: bool,
    /// Our messages this receipt is the first news of, from its recipient, for its kind.
    pub first: Vec<News>,
    /// Our messages this receipt is the first to name, of those its signer signed, with a
    /// digest other than theirs: what the signer holds (and receipted) is not what this node
    /// sent, so nothing is recorded for them in the matrix; the receipt is kept as the
    /// evidence, to be reported. One per message and signer, whatever its kind and whether
    /// or not the message was addressed to the signer: a participant can sign such receipts
    /// without end, each with another made-up digest, and each kept would be a row, a journal
    /// entry and a log line. A later one from that signer for that message is not listed
    /// here (nor kept, unless it is news for another message), also after a restart.
    pub mismatched: Vec<MessageId>,
    /// It names no message this node sent, or is signed by this node's own participant (to
    /// which no message of its is sent), so it was not kept: a relay forwards a receipt
    /// only to the senders it names, and one forwarding others' could fill this disk.
    pub unrelated: bool,
}

/// One of our messages a forwarded receipt is the first news of ([`Forwarded::first`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct News {
    /// The message.
    pub id: MessageId,
    /// Its status (actual, exercise or test), so that the event telling of its delivery or
    /// acknowledgement reads as a drill's when it is one; `None` only if the stored message
    /// does not decode.
    pub status: Option<Status>,
}

/// A forwarded receipt to hold until a roster lists its signer's key
/// ([`NodeStore::hold_receipts`]): as it came, with what it claims and why it failed.
#[derive(Clone, Debug)]
pub struct Unverified {
    /// The bytes as forwarded, with the key and signature they came with.
    pub signed: Signed<Receipt>,
    /// What they claim, not verified.
    pub claim: Receipt,
    /// Why verification failed (the roster lacks the signer, or its key).
    pub reason: String,
}

/// A forwarded receipt held in `receipts_held` ([`NodeStore::held_receipts`]).
#[derive(Clone, Debug)]
pub struct HeldReceipt {
    /// Its digest (what this node confirmed to the relay).
    pub digest: Digest,
    /// The bytes as forwarded, with the key and signature they came with.
    pub signed: Signed<Receipt>,
    /// Why it failed when it arrived.
    pub reason: String,
    /// When it arrived, this node's clock.
    pub received_at_ms: u64,
}

/// What [`NodeStore::hold_receipts`] did with the receipts it was given.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeldOutcome {
    /// Held now (not held before).
    pub held: Vec<Digest>,
    /// Not held: they name no message this node sent, or this node keeps them already.
    pub skipped: Vec<Digest>,
    /// Held before and dropped to make room, oldest first, with the signer each claims.
    pub dropped: Vec<(Digest, String)>,
}

/// A delivery held in quarantine: it failed a check when it arrived, so it is not shown.
#[derive(Clone, Debug)]
pub struct Quarantined {
    /// Its digest (the quarantine's key, and what this node's delivered receipt named).
    pub digest: Digest,
    /// The bytes as delivered, with the key and signature they came with.
    pub signed: Signed<Envelope>,
    /// Why it was held.
    pub reason: String,
    /// When it arrived.
    pub received_at_ms: u64,
}

/// Where a walk down the quarantine stands ([`NodeStore::quarantined_below`]): the arrival
/// time and row of the last delivery it listed, in the order of `quarantine_by_time`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuarantinePlace {
    received_at_ms: i64,
    row: i64,
}

/// A sent message newly overdue ([`NodeStore::mark_overdue`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Overdue {
    /// The message.
    pub id: MessageId,
    /// Its subject.
    pub subject: String,
    /// The recipients that have not acknowledged it by its respond-by time.
    pub recipients: Vec<ParticipantId>,
    /// Actual, exercise or test (`None` only if the stored message does not decode).
    pub status: Option<hotline_proto::Status>,
}

impl Overdue {
    /// Adds `recipient` to message `id`'s escalation in `found`, or a new escalation for it
    /// (its subject and status read from `signed`, the message as sent).
    fn add(
        found: &mut Vec<Overdue>,
        id: MessageId,
        recipient: ParticipantId,
        signed: &Signed<Envelope>,
    ) {
        match found.iter_mut().find(|o| o.id == id) {
            Some(o) => o.recipients.push(recipient),
            None => {
                let (subject, status) = match signed.decode_unverified() {
                    Ok(e) => (e.subject, Some(e.status)),
                    Err(_) => (String::new(), None),
                };
                found.push(Overdue {
                    id,
                    subject,
                    recipients: vec![recipient],
                    status,
                });
            }
        }
    }
}

/// What `store_deliveries` did with one delivered message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stored {
    /// New: stored and to be shown.
    New,
    /// Already held: not shown again.
    Duplicate,
    /// Failed verification: kept in quarantine, not shown.
    Quarantined(String),
    /// Failed verification, and the quarantine is full (`quarantine_max_bytes`): not stored
    /// and not receipted, so the relay keeps it and delivers it again at the next
    /// connection. The reason is the check it failed.
    Refused(String),
}

/// Outcome of an acknowledgement request.
#[derive(Debug)]
pub enum AckOutcome {
    /// Signed and queued for every relay.
    Acked {
        /// The acknowledgement receipt.
        receipt: Signed<Receipt>,
        /// The acknowledged message's status (actual, exercise or test), for the event that
        /// tells of it.
        status: Status,
    },
    /// Already acknowledged (by this officer or another) at this time.
    Already(u64, String),
    /// No such received message.
    NotFound,
}

/// The node database.
pub struct NodeStore {
    conn: Connection,
    journal: Journal,
    path: PathBuf,
    /// What the quarantine holds now, kept with every change so that a delivery to hold is
    /// checked against the limit without reading the table.
    quarantine: QuarantineSize,
    /// The most the quarantine may hold, in envelope bytes (`quarantine_max_bytes`).
    quarantine_max_bytes: u64,
    /// What names each configured relay in `relay_seq` (its pinned certificate's
    /// fingerprint and its address), by configuration index; `#N` for an index not named.
    relay_names: Vec<String>,
}

/// How much the quarantine holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QuarantineSize {
    /// Deliveries held.
    pub held: u64,
    /// Their envelopes' bytes, together.
    pub bytes: u64,
}

fn blob_array<const N: usize>(v: Vec<u8>, col: usize) -> rusqlite::Result<[u8; N]> {
    v.try_into().map_err(|_| {
        rusqlite::Error::FromSqlConversionFailure(
            col,
            rusqlite::types::Type::Blob,
            "stored value has the wrong length".into(),
        )
    })
}

fn signed_at<T: hotline_proto::SignedPayload>(
    r: &rusqlite::Row<'_>,
    first: usize,
) -> rusqlite::Result<Signed<T>> {
    let bytes: Vec<u8> = r.get(first)?;
    let key = blob_array::<32>(r.get(first + 1)?, first + 1)?;
    let sig = blob_array::<64>(r.get(first + 2)?, first + 2)?;
    Ok(Signed::from_parts(bytes, PublicKey(key), Signature(sig)))
}

/// The last sequence number this node has used (or learnt a relay has seen), 0 if none.
fn current_seq(conn: &Connection) -> Result<u64, StoreError> {
    Ok(conn
        .query_row("SELECT value FROM meta WHERE key = 'seq'", [], |r| {
            let b: Vec<u8> = r.get(0)?;
            Ok(u64::from_le_bytes(blob_array::<8>(b, 0)?))
        })
        .optional()?
        .unwrap_or(0))
}

/// The number after `last`: `SeqExhausted` if none may follow it (an envelope carries at
/// most `SEQ_MAX`), rather than a number no envelope may carry, or an overflow.
fn next_seq(last: u64) -> Result<u64, StoreError> {
    match last.checked_add(1) {
        Some(next) if next <= SEQ_MAX => Ok(next),
        _ => Err(StoreError::SeqExhausted { last }),
    }
}

fn set_seq(conn: &Connection, seq: u64) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO meta (key, value) VALUES ('seq', ?1) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        [&seq.to_le_bytes()[..]],
    )?;
    Ok(())
}

/// The roster stored last (`NodeStore::save_roster`), if any that decodes, not verified. It
/// only reads, so it serves a store opened read-only beside a running node too (`hotline
/// config check`).
pub fn stored_roster(conn: &Connection) -> Result<Option<Signed<Roster>>, StoreError> {
    let v: Option<Vec<u8>> = conn
        .query_row("SELECT value FROM meta WHERE key = 'roster'", [], |r| {
            r.get(0)
        })
        .optional()?;
    Ok(v.and_then(|b| codec::decode(&b, hotline_proto::limits::ROSTER_BYTES_MAX + 4096).ok()))
}

/// How far the last check of the whole quarantine against a roster went
/// ([`NodeStore::quarantine_check`]), kept in `meta` under `quarantine_checked` as a tag
/// byte and a digest of what it was checked against: the roster's payload and the rules of
/// the check (`link::quarantine_check_basis`; so a roster signed again by another key checks
/// the same, and one of the same version with other content, or a release whose checks let
/// through more, does not).
///
/// It lets a node skip, at a start on the roster its quarantine was last fully checked
/// against, the walk of the whole quarantine (seconds of verification when it is full of
/// small forgeries): every delivery held since was checked on arrival against that same
/// roster, since a delivery held after a check against any other clears the mark in the
/// transaction that holds it ([`NodeStore::store_deliveries_checked_against`]). It came
/// without a raise of [`SCHEMA_VERSION`]: an older node neither reads nor writes it, and
/// any roster it installs differs from the mark, so this node walks again at its next
/// start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuarantineCheck {
    /// A walk against this began and has not ended (or was cut short): nothing is known
    /// to have been checked against it.
    Walking(Digest),
    /// Every delivery the quarantine holds has been checked against this.
    Checked(Digest),
}

/// `meta`'s key for [`QuarantineCheck`].
const QUARANTINE_CHECKED_KEY: &str = "quarantine_checked";

impl QuarantineCheck {
    fn encode(self) -> [u8; 33] {
        let (tag, d) = match self {
            QuarantineCheck::Walking(d) => (0, d),
            QuarantineCheck::Checked(d) => (1, d),
        };
        let mut b = [0u8; 33];
        b[0] = tag;
        b[1..].copy_from_slice(&d.0);
        b
    }

    /// `None` for a value this code did not write: a damaged one only costs a walk.
    fn decode(b: &[u8]) -> Option<Self> {
        let (tag, d) = b.split_first()?;
        let d = Digest(<[u8; 32]>::try_from(d).ok()?);
        match tag {
            0 => Some(QuarantineCheck::Walking(d)),
            1 => Some(QuarantineCheck::Checked(d)),
            _ => None,
        }
    }

    fn roster(self) -> Digest {
        match self {
            QuarantineCheck::Walking(d) | QuarantineCheck::Checked(d) => d,
        }
    }
}

fn quarantine_check_in(conn: &Connection) -> Result<Option<QuarantineCheck>, StoreError> {
    let v: Option<Vec<u8>> = conn
        .query_row(
            "SELECT value FROM meta WHERE key = ?1",
            [QUARANTINE_CHECKED_KEY],
            |r| r.get(0),
        )
        .optional()?;
    Ok(v.and_then(|b| QuarantineCheck::decode(&b)))
}

fn set_quarantine_check(conn: &Connection, check: QuarantineCheck) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        params![QUARANTINE_CHECKED_KEY, &check.encode()[..]],
    )?;
    Ok(())
}

/// A message in a relay's outbox, as it is to be sent.
#[derive(Debug)]
pub struct Outgoing {
    /// The message's id.
    pub id: MessageId,
    /// Its sequence number (in `signed`).
    pub seq: u64,
    /// The signed message.
    pub signed: Signed<Envelope>,
}

/// What [`NodeStore::resequence`] did with a message refused for its sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resequenced {
    /// Signed again with this number: offer it again.
    Signed(u64),
    /// Signed again already, since the refused bytes were sent: offer it again as it is.
    AlreadyFresh,
    /// Left as it is: the refusal is final for this relay (another relay accepted the
    /// message, or the refused number was not one a restore could explain).
    Final,
}

/// The columns [`InboxRow::read`] reads, in its order: the signed envelope, when it came,
/// its acknowledgement, and when the first answer to it was created.
const INBOX_COLUMNS: &str = "bytes, key, sig, received_at_ms, acked_at_ms, officer, note, \
     (SELECT MIN(s.created_at_ms) FROM answers a JOIN sent s ON s.id = a.id WHERE a.ref = inbox.id)";

/// One row of [`INBOX_COLUMNS`], before its envelope is decoded (decoding is a
/// [`StoreError`], which a row mapper cannot return).
struct InboxRow {
    signed: Signed<Envelope>,
    received_at_ms: u64,
    ack: Option<(u64, String, Option<String>)>,
    answered_at_ms: Option<u64>,
}

impl InboxRow {
    fn read(r: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        let acked: Option<u64> = r.get(4)?;
        let officer: Option<String> = r.get(5)?;
        let note: Option<String> = r.get(6)?;
        Ok(Self {
            signed: signed_at(r, 0)?,
            received_at_ms: r.get(3)?,
            ack: acked.map(|a| (a, officer.unwrap_or_default(), note)),
            answered_at_ms: r.get(7)?,
        })
    }

    fn into_message(self) -> Result<InboxMessage, StoreError> {
        Ok(InboxMessage {
            envelope: decode_stored(&self.signed)?,
            received_at_ms: self.received_at_ms,
            ack: self.ack,
            answered_at_ms: self.answered_at_ms,
        })
    }
}

fn decode_stored<T: hotline_proto::SignedPayload>(s: &Signed<T>) -> Result<T, StoreError> {
    s.decode_unverified()
        .map_err(|e| StoreError::Record(Box::new(e)))
}

/// Signs a record inside a transaction whose failure ends it: a refusal by the signer (a rule
/// or limit the value breaks) is [`StoreError::Signing`], not a database error. Where the
/// value is the caller's (a draft, an acknowledgement), its refusal is an answer instead,
/// and `Signed::sign` is called directly.
fn sign<T: hotline_proto::SignedPayload>(
    value: &T,
    key: &SigningKey,
) -> Result<Signed<T>, StoreError> {
    Signed::sign(value, key).map_err(|e| StoreError::Signing(Box::new(e)))
}

fn encode_record<T>(s: &Signed<T>) -> Result<Vec<u8>, StoreError> {
    codec::encode(s, usize::MAX).map_err(|e| StoreError::Record(Box::new(e)))
}

/// Stores a verified message in the inbox, journaled, to be announced; false if a message
/// with its id is already there. `received_at_ms`: when this node first held it durably.
fn receive(
    tx: &rusqlite::Transaction<'_>,
    j: &mut Journal,
    signed: &Signed<Envelope>,
    env: &Envelope,
    received_at_ms: u64,
    now_ms: u64,
) -> Result<bool, StoreError> {
    let n = tx
        .prepare_cached(
            "INSERT OR IGNORE INTO inbox (id, sender, seq, bytes, key, sig, received_at_ms, paged_at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?
        .execute(params![
            &env.id.0[..],
            env.sender.as_str(),
            env.seq.0,
            signed.bytes(),
            &signed.key().0[..],
            &signed.signature().0[..],
            received_at_ms,
            // One received earlier (released from quarantine) is announced now, and that
            // announcement is its first page: it is due again an interval from now, not at
            // once because it arrived long ago.
            if env.precedence.pages() {
                (received_at_ms < now_ms).then_some(now_ms)
            } else {
                Some(NEVER_PAGES as u64)
            }
        ])?;
    if n == 0 {
        return Ok(false);
    }
    j.append(
        tx,
        now_ms,
        "message.received",
        &env.id.to_string(),
        &encode_record(signed)?,
    )?;
    tx.prepare_cached("INSERT OR IGNORE INTO unannounced (id) VALUES (?1)")?
        .execute([&env.id.0[..]])?;
    index_answer(tx, env, "sent")?;
    Ok(true)
}

/// Holds a delivery in quarantine (once: it is keyed by digest), journaled, unless the
/// quarantine is full: a hostile relay could otherwise fill the disk with forgeries, so
/// what does not fit is [`Stored::Refused`] and stays with the relay, not lost. Otherwise
/// [`Stored::Quarantined`] with `reason`.
fn hold(
    tx: &rusqlite::Transaction<'_>,
    j: &mut Journal,
    signed: &Signed<Envelope>,
    reason: &str,
    now_ms: u64,
    size: &mut QuarantineSize,
    max_bytes: u64,
) -> Result<Stored, StoreError> {
    let digest = signed.digest();
    let held: bool = tx
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM quarantine WHERE digest = ?1)")?
        .query_row([&digest.0[..]], |r| r.get(0))?;
    if !held {
        if size.bytes >= max_bytes {
            return Ok(Stored::Refused(reason.to_owned()));
        }
        tx.execute(
            "INSERT INTO quarantine (digest, bytes, key, sig, reason, received_at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![&digest.0[..], signed.bytes(), &signed.key().0[..], &signed.signature().0[..], reason, now_ms],
        )?;
        j.append(
            tx,
            now_ms,
            "message.quarantined",
            &digest.to_string(),
            &encode_record(signed)?,
        )?;
        size.held += 1;
        size.bytes += signed.bytes().len() as u64;
    }
    Ok(Stored::Quarantined(reason.to_owned()))
}

/// For a verified delivery whose id the inbox already holds: `None` when the inbox holds
/// these very bytes (a duplicate), else the sender of the different message it holds.
fn id_conflict(
    tx: &rusqlite::Transaction<'_>,
    env: &Envelope,
    signed: &Signed<Envelope>,
) -> Result<Option<String>, StoreError> {
    let (same, holder): (bool, String) = tx
        .prepare_cached("SELECT bytes = ?2, sender FROM inbox WHERE id = ?1")?
        .query_row(params![&env.id.0[..], signed.bytes()], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
    Ok((!same).then_some(holder))
}

/// Where each relay of the last start's configuration (`old`, by index: fingerprint and
/// address) is in the new one (`new`): for each old index, the new index of the same relay
/// (the same fingerprint at the same address first, then the same fingerprint anywhere),
/// or `None` for a relay no longer listed; and the new indices no old relay maps to (relays
/// listed for the first time), ascending. An empty `old` (a store from before the record)
/// maps nothing.
fn match_relays(
    old: &[(String, String)],
    new: &[(String, String)],
) -> (Vec<Option<usize>>, Vec<usize>) {
    let mut taken = vec![false; new.len()];
    let mut map = vec![None; old.len()];
    for same_address in [true, false] {
        for (o, (fp, addr)) in old.iter().enumerate() {
            if map[o].is_some() {
                continue;
            }
            let found = new
                .iter()
                .enumerate()
                .position(|(j, (f, a))| !taken[j] && f == fp && (!same_address || a == addr));
            if let Some(j) = found {
                taken[j] = true;
                map[o] = Some(j);
            }
        }
    }
    let fresh = (0..new.len()).filter(|j| !taken[*j]).collect();
    (map, fresh)
}

/// Records `env` as an answer to each message it references that `other` holds: `"sent"`
/// for a received message (an answer to one of ours), `"inbox"` for one this node sent.
fn index_answer(conn: &Connection, env: &Envelope, other: &str) -> Result<(), StoreError> {
    for r in &env.references {
        conn.prepare_cached(&format!(
            "INSERT OR IGNORE INTO answers (ref, id) SELECT ?1, ?2 WHERE EXISTS (SELECT 1 FROM {other} WHERE id = ?1)"
        ))?
        .execute(params![&r.0[..], &env.id.0[..]])?;
    }
    Ok(())
}

/// Fills the `answers` table from the whole inbox and every sent message, once, in a store
/// made before the table existed.
fn index_stored_answers(tx: &Connection) -> Result<(), StoreError> {
    for (table, other) in [("inbox", "sent"), ("sent", "inbox")] {
        let mut st = tx.prepare(&format!("SELECT bytes, key, sig FROM {table}"))?;
        let mut rows = st.query([])?;
        while let Some(r) = rows.next()? {
            let signed: Signed<Envelope> = signed_at(r, 0)?;
            index_answer(tx, &decode_stored(&signed)?, other)?;
        }
    }
    Ok(())
}

/// Fills `acks_out` from the acknowledgements the store holds (a store from before it).
fn index_stored_acks(tx: &Connection) -> Result<(), StoreError> {
    {
        let mut st = tx.prepare("SELECT bytes, key, sig FROM receipts_out")?;
        let mut add = tx.prepare("INSERT OR IGNORE INTO acks_out (id, digest) VALUES (?1, ?2)")?;
        let mut rows = st.query([])?;
        while let Some(r) = rows.next()? {
            let signed: Signed<Receipt> = signed_at(r, 0)?;
            let receipt = decode_stored(&signed)?;
            if matches!(receipt.kind, ReceiptKind::Acknowledged { .. }) {
                for item in &receipt.items {
                    add.execute(params![&item.id.0[..], &signed.digest().0[..]])?;
                }
            }
        }
    }
    Ok(())
}

/// Calls `f` with each receipt this store keeps (`receipts_in`) and each of its items, and,
/// for an item naming a message this node sent, that message's author and the digests of
/// its signings ([`signing_digests`]). Each sent message is read once.
fn for_each_kept_receipt_item(
    tx: &Connection,
    mut f: impl FnMut(
        &Receipt,
        &ReceiptItem,
        Option<&(ParticipantId, Vec<Digest>)>,
    ) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let mut st = tx.prepare("SELECT bytes, key, sig FROM receipts_in")?;
    let mut sent = tx.prepare("SELECT bytes, key, sig FROM sent WHERE id = ?1")?;
    // Per id: this node's message's author and digests, or None for an id it never sent.
    let mut held: HashMap<MessageId, Option<(ParticipantId, Vec<Digest>)>> = HashMap::new();
    let mut rows = st.query([])?;
    while let Some(r) = rows.next()? {
        let signed: Signed<Receipt> = signed_at(r, 0)?;
        let receipt = decode_stored(&signed)?;
        for item in &receipt.items {
            let ours = match held.entry(item.id) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(e) => {
                    let found = sent
                        .query_row([&item.id.0[..]], |row| signed_at::<Envelope>(row, 0))
                        .optional()?;
                    let ours = match found {
                        Some(s) => Some((
                            decode_stored(&s)?.sender,
                            earlier_signings(tx, &item.id, s.digest())?,
                        )),
                        None => None,
                    };
                    e.insert(ours)
                }
            };
            f(&receipt, item, ours.as_ref())?;
        }
    }
    Ok(())
}

/// `current`, the digest of sent message `id` as `sent` holds it, and those of its earlier
/// signings (`signings`): every digest under which a recipient may hold it.
fn earlier_signings(
    tx: &Connection,
    id: &MessageId,
    current: Digest,
) -> Result<Vec<Digest>, StoreError> {
    let mut digests = vec![current];
    let mut st = tx.prepare_cached("SELECT digest FROM signings WHERE id = ?1")?;
    let rows = st.query_map([&id.0[..]], |r| Ok(Digest(blob_array::<32>(r.get(0)?, 0)?)))?;
    for d in rows {
        digests.push(d?);
    }
    Ok(digests)
}

/// A sent message as a forwarded receipt is checked against ([`signing_digests`]).
struct SentSignings {
    /// The digests of its signings, the current first.
    digests: Vec<Digest>,
    /// Its status, for the events telling of its receipts (`None` if it does not decode).
    status: Option<Status>,
}

/// Every digest sent message `id` was signed under ([`earlier_signings`]) and its status,
/// or `None` if this node never sent it.
fn signing_digests(tx: &Connection, id: &MessageId) -> Result<Option<SentSignings>, StoreError> {
    let current = tx
        .prepare_cached("SELECT bytes, key, sig FROM sent WHERE id = ?1")?
        .query_row([&id.0[..]], |row| signed_at::<Envelope>(row, 0))
        .optional()?;
    let Some(s) = current else { return Ok(None) };
    let status = s.decode_unverified().ok().map(|e| e.status);
    let digests = earlier_signings(tx, id, s.digest())?;
    Ok(Some(SentSignings { digests, status }))
}

/// Fills `signings` from the journal (a store from before it): each signing journaled as
/// `message.sent` under the id of a message signed again (`message.resequenced`), other
/// than the one `sent` holds.
fn index_stored_signings(tx: &Connection) -> Result<(), StoreError> {
    let mut st = tx.prepare(
        "SELECT payload FROM journal WHERE kind = 'message.sent' AND subject IN (SELECT subject FROM journal WHERE kind = 'message.resequenced')",
    )?;
    let mut current = tx.prepare("SELECT seq FROM sent WHERE id = ?1")?;
    let mut add =
        tx.prepare("INSERT OR IGNORE INTO signings (id, seq, digest) VALUES (?1, ?2, ?3)")?;
    let mut rows = st.query([])?;
    while let Some(r) = rows.next()? {
        let payload: Vec<u8> = r.get(0)?;
        let signed: Signed<Envelope> =
            codec::decode(&payload, usize::MAX).map_err(|e| StoreError::Record(Box::new(e)))?;
        let env = decode_stored(&signed)?;
        let seq: Option<u64> = current
            .query_row([&env.id.0[..]], |r| r.get(0))
            .optional()?;
        if seq.is_some_and(|s| s != env.seq.0) {
            add.execute(params![&env.id.0[..], env.seq.0, &signed.digest().0[..]])?;
        }
    }
    Ok(())
}

/// Fills `mismatches` from the forwarded receipts the store holds (a store from before it):
/// every (message, signer) for which it keeps a receipt naming one of its sent messages with
/// a digest other than any of that message's signings. A sent message's author is this node, as the items
/// `store_forwarded` checks name it; each id is looked up and hashed once, found or not (a
/// cumulative receipt names up to 512 messages, mostly other senders').
fn index_stored_mismatches(tx: &Connection) -> Result<(), StoreError> {
    let mut add = tx.prepare("INSERT OR IGNORE INTO mismatches (id, signer) VALUES (?1, ?2)")?;
    for_each_kept_receipt_item(tx, |receipt, item, ours| {
        if let Some((author, digests)) = ours {
            if *author == item.sender && !digests.contains(&item.digest) {
                add.execute(params![&item.id.0[..], receipt.recipient.as_str()])?;
            }
        }
        Ok(())
    })
}

/// Fills `matrix_signed` from the receipts this store keeps: for each of its messages and
/// each recipient whose receipt of what it sent is kept, the earliest time signed in one,
/// and in an acknowledgement.
fn index_stored_signed_times(tx: &Connection) -> Result<(), StoreError> {
    let mut add = tx.prepare(SIGNED_TIMES_UPSERT)?;
    for_each_kept_receipt_item(tx, |receipt, item, ours| {
        if ours.is_some_and(|(author, digests)| {
            *author == item.sender && digests.contains(&item.digest)
        }) {
            let acked = matches!(receipt.kind, ReceiptKind::Acknowledged { .. })
                .then_some(receipt.created_at_ms);
            add.execute(params![
                &item.id.0[..],
                receipt.recipient.as_str(),
                receipt.created_at_ms,
                acked
            ])?;
        }
        Ok(())
    })
}

/// Records, for message ?1 and recipient ?2, a receipt signed at ?3 (an acknowledgement if
/// ?4, the same time, is not NULL): the earliest of each is kept.
const SIGNED_TIMES_UPSERT: &str =
    "INSERT INTO matrix_signed (id, recipient, delivered_ms, acked_ms) VALUES (?1, ?2, ?3, ?4)
     ON CONFLICT (id, recipient) DO UPDATE SET
         delivered_ms = COALESCE(MIN(delivered_ms, excluded.delivered_ms), excluded.delivered_ms),
         acked_ms = COALESCE(MIN(acked_ms, excluded.acked_ms), acked_ms, excluded.acked_ms)";

/// What the quarantine table holds, counted.
fn quarantine_size(conn: &Connection) -> Result<QuarantineSize, StoreError> {
    Ok(conn.query_row(
        "SELECT COUNT(*), COALESCE(SUM(LENGTH(bytes)), 0) FROM quarantine",
        [],
        |r| {
            Ok(QuarantineSize {
                held: r.get(0)?,
                bytes: r.get(1)?,
            })
        },
    )?)
}

/// [`NodeStore::hold_receipts`] in the caller's transaction.
fn hold_in(
    tx: &rusqlite::Transaction<'_>,
    me: &ParticipantId,
    receipts: &[Unverified],
    now_ms: u64,
) -> Result<HeldOutcome, StoreError> {
    if receipts.is_empty() {
        return Ok(HeldOutcome::default());
    }
    let mut out = HeldOutcome::default();
    for u in receipts {
        let d = u.signed.digest();
        let mut ours = false;
        // Our own receipt names nothing sent to us ([`keep_forwarded`]).
        let own = &u.claim.recipient == me;
        for item in u.claim.items.iter().filter(|i| &i.sender == me && !own) {
            if signing_digests(tx, &item.id)?.is_some() {
                ours = true;
                break;
            }
        }
        let kept: bool = tx
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM receipts_in WHERE digest = ?1)")?
            .query_row([&d.0[..]], |r| r.get(0))?;
        if !ours || kept {
            out.skipped.push(d);
            continue;
        }
        let signer = u.claim.recipient.as_str();
        let n = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO receipts_held (digest, signer, bytes, key, sig, reason, received_at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )?
                .execute(params![
                    &d.0[..],
                    signer,
                    u.signed.bytes(),
                    &u.signed.key().0[..],
                    &u.signed.signature().0[..],
                    &u.reason,
                    now_ms
                ])?;
        if n == 0 {
            continue;
        }
        out.held.push(d);
        let over: i64 = tx
            .prepare_cached("SELECT COUNT(*) FROM receipts_held WHERE signer = ?1")?
            .query_row([signer], |r| r.get(0))?;
        let over = over - crate::limits::RECEIPTS_HELD_PER_SIGNER_MAX as i64;
        if over > 0 {
            out.dropped.extend(drop_held(
                    tx,
                    "SELECT digest, signer FROM receipts_held WHERE signer = ?1 ORDER BY rowid LIMIT ?2",
                    params![signer, over],
                )?);
        }
    }
    let total: i64 = tx.query_row("SELECT COUNT(*) FROM receipts_held", [], |r| r.get(0))?;
    let over = total - crate::limits::RECEIPTS_HELD_MAX as i64;
    if over > 0 {
        out.dropped.extend(drop_held(
            tx,
            "SELECT digest, signer FROM receipts_held ORDER BY rowid LIMIT ?1",
            params![over],
        )?);
    }
    // One dropped in the call that held it was never held for the caller.
    out.held
        .retain(|d| !out.dropped.iter().any(|(x, _)| x == d));
    Ok(out)
}

/// Deletes the held receipts `select` lists (digest, signer) and returns them.
fn drop_held(
    tx: &rusqlite::Transaction<'_>,
    select: &str,
    args: impl rusqlite::Params,
) -> Result<Vec<(Digest, String)>, StoreError> {
    let rows: Vec<(Digest, String)> = tx
        .prepare_cached(select)?
        .query_map(args, |r| {
            Ok((Digest(blob_array::<32>(r.get(0)?, 0)?), r.get(1)?))
        })?
        .collect::<Result<_, _>>()?;
    for (d, _) in &rows {
        tx.prepare_cached("DELETE FROM receipts_held WHERE digest = ?1")?
            .execute([&d.0[..]])?;
    }
    Ok(rows)
}

/// [`NodeStore::store_forwarded`] in the caller's transaction.
fn keep_forwarded(
    tx: &rusqlite::Transaction<'_>,
    j: &mut Journal,
    me: &ParticipantId,
    receipts: &[Verified<Receipt>],
    now_ms: u64,
) -> Result<Vec<Forwarded>, StoreError> {
    let mut out = Vec::with_capacity(receipts.len());
    // Per message named: the digests of its signings and its status, or `None` if this
    // node did not send it.
    let mut sent_digests: HashMap<MessageId, Option<SentSignings>> = HashMap::new();
    for r in receipts {
        let s = r.signed();
        let d = s.digest();
        let mut news = Forwarded {
            fresh: false,
            first: Vec::new(),
            mismatched: Vec::new(),
            unrelated: false,
        };
        // The items naming messages this node sent, each checked against the bytes it
        // signed: a recipient that was handed altered content under an id (and
        // quarantined it) receipts that content's digest, and must not be counted as
        // having ours. Any signing of ours is ours: a message signed again after a
        // restore may reach a recipient under each of its numbers, through different
        // relays. Each message is read, hashed and decoded (for the status its events
        // carry) once per batch: a fan-out's receipts from every recipient name the
        // same one.
        let mut ours = Vec::new();
        let mut names_ours = false;
        // A receipt signed by this node's own participant names nothing sent to it: a
        // sender is never a recipient of its own message (PROTOCOL.md 7.4 step 1). Such a
        // receipt exists when a relay delivered one of our messages back to us (it was
        // quarantined, and receipted); counted, it would add us to our own matrix.
        let own = &r.recipient == me;
        for item in r.items.iter().filter(|i| &i.sender == me && !own) {
            let sent = match sent_digests.entry(item.id) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(e) => e.insert(signing_digests(tx, &item.id)?),
            };
            match sent {
                Some(sent) if sent.digests.contains(&item.digest) => ours.push((item, sent.status)),
                Some(_) => {
                    // Other content under our id: news only the first time this
                    // signer says so for this message. A participant can sign such
                    // receipts without end, each with another made-up digest.
                    let seen: bool = tx
                            .prepare_cached("SELECT EXISTS (SELECT 1 FROM mismatches WHERE id = ?1 AND signer = ?2)")?
                            .query_row(params![&item.id.0[..], r.recipient.as_str()], |row| row.get(0))?;
                    if !seen {
                        news.mismatched.push(item.id);
                    }
                }
                None => continue,
            }
            names_ours = true;
        }
        if !names_ours {
            news.unrelated = true;
            out.push(news);
            continue;
        }
        // First news: no acknowledgement yet for an acknowledgement, or not yet
        // delivered for a delivered receipt. No row: a recipient the relay that
        // delivered to it listed, and whose acceptance this node has not seen (or
        // did not take: another relay's came first); the receipt, signed over our
        // bytes, shows it has the message, so it gets a row.
        let mut rowless = Vec::new();
        for &(item, status) in &ours {
            let before: Option<(Option<u64>, Option<u64>)> = tx
                    .prepare_cached("SELECT delivered_at_ms, acked_at_ms FROM matrix WHERE id = ?1 AND recipient = ?2")?
                    .query_row(params![&item.id.0[..], r.recipient.as_str()], |row| Ok((row.get(0)?, row.get(1)?)))
                    .optional()?;
            match (before, r.is_ack()) {
                (None, _) => {
                    rowless.push(item.id);
                    news.first.push(News {
                        id: item.id,
                        status,
                    });
                }
                (Some((_, None)), true) | (Some((None, _)), false) => news.first.push(News {
                    id: item.id,
                    status,
                }),
                _ => {}
            }
        }
        // A receipt that tells nothing new is not kept: the first delivered receipt
        // and the first acknowledgement from each recipient are the record, and a
        // participant signing receipts without end could otherwise fill this disk
        // (PROTOCOL.md 7.5, 12.2). A second relay's copy is such a receipt.
        if news.first.is_empty() && news.mismatched.is_empty() {
            out.push(news);
            continue;
        }
        let n = tx.execute(
                "INSERT OR IGNORE INTO receipts_in (digest, recipient, bytes, key, sig, received_at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![&d.0[..], r.recipient.as_str(), s.bytes(), &s.key().0[..], &s.signature().0[..], now_ms],
            )?;
        news.fresh = n > 0;
        if n == 0 {
            news.first.clear();
            news.mismatched.clear();
            out.push(news);
            continue;
        }
        for id in &news.mismatched {
            tx.prepare_cached("INSERT OR IGNORE INTO mismatches (id, signer) VALUES (?1, ?2)")?
                .execute(params![&id.0[..], r.recipient.as_str()])?;
        }
        for id in &rowless {
            tx.execute(
                "INSERT OR IGNORE INTO matrix (id, recipient) VALUES (?1, ?2)",
                params![&id.0[..], r.recipient.as_str()],
            )?;
        }
        // The earliest signed times over every kept receipt of what we sent, as the
        // first open of a store computes them from `receipts_in`: this receipt's
        // items that are not news (it is kept for another) count too.
        let signed_acked = r.is_ack().then_some(r.created_at_ms);
        for (item, _) in &ours {
            tx.prepare_cached(SIGNED_TIMES_UPSERT)?.execute(params![
                &item.id.0[..],
                r.recipient.as_str(),
                r.created_at_ms,
                signed_acked
            ])?;
        }
        for News { id, .. } in &news.first {
            tx.execute(
                    "UPDATE matrix SET delivered_at_ms = COALESCE(delivered_at_ms, ?3) WHERE id = ?1 AND recipient = ?2",
                    params![&id.0[..], r.recipient.as_str(), now_ms],
                )?;
            if let ReceiptKind::Acknowledged { officer, note } = &r.kind {
                tx.execute(
                        "UPDATE matrix SET acked_at_ms = COALESCE(acked_at_ms, ?3), officer = COALESCE(officer, ?4), note = COALESCE(note, ?5) WHERE id = ?1 AND recipient = ?2",
                        params![&id.0[..], r.recipient.as_str(), now_ms, officer, note],
                    )?;
            }
        }
        let kind = if r.is_ack() {
            "receipt.acknowledged.received"
        } else {
            "receipt.delivered.received"
        };
        j.append(tx, now_ms, kind, &d.to_string(), &encode_record(s)?)?;
        out.push(news);
    }
    Ok(out)
}

/// The tables holding signed records, each with its key column and the kinds of journal
/// entry that hold a row's whole record under that key (hex) as their subject.
const RECORDED: [(&str, &str, &[&str]); 5] = [
    ("sent", "id", &["message.sent"]),
    ("inbox", "id", &["message.received"]),
    ("quarantine", "digest", &["message.quarantined"]),
    ("receipts_out", "digest", &["receipt.acknowledged"]),
    (
        "receipts_in",
        "digest",
        &[
            "receipt.acknowledged.received",
            "receipt.delivered.received",
        ],
    ),
];

/// Checks that every stored message and receipt (sent, received, quarantined, signed here
/// or received) is, byte for byte, a record its journal holds: an entry of its kind, under
/// its id or digest. With the journal's chain, checked before, the signed bytes an operator
/// is shown are then those the journal committed to; a row edited, swapped or added outside
/// the node is refused, naming the file. Returns how many rows were checked. It reads every
/// journal entry once and keeps one digest of each recorded entry, at start-up and in
/// `hotline audit verify`.
///
/// The set is kept on purpose, unlike the relay's check (`hotline_relay::store::
/// verify_journaled_records`, which walks rows and entries side by side in bounded memory): this one runs at every start, and walking each table's rows beside the
/// journal's entries sorted by subject took 85 ms where the set takes 61, for 20,000
/// received messages (release build, `examples/store_open.rs`), to save about 80 bytes a
/// record, some 1.6 MB there; a node's store is small.
pub fn verify_records(conn: &Connection, path: &Path) -> Result<u64, StoreError> {
    let corrupt = |detail: String| StoreError::Corrupt {
        path: path.to_owned(),
        detail,
    };
    // One digest names an entry: its kind, its subject and its record (neither a kind nor
    // a hex subject holds a NUL, so the parts cannot run into each other).
    let entry = |kind: &str, subject: &str, record: &[u8]| {
        Digest::of(&[kind.as_bytes(), b"\0", subject.as_bytes(), b"\0", record])
    };
    type ReadFailure = Box<dyn std::error::Error + Send + Sync>;
    let check = || -> Result<Result<u64, String>, ReadFailure> {
        let mut journaled = std::collections::HashSet::new();
        let mut st = conn.prepare("SELECT kind, subject, payload FROM journal")?;
        let mut rows = st.query([])?;
        while let Some(r) = rows.next()? {
            let kind = r.get_ref(0)?.as_str()?;
            if RECORDED.iter().any(|(_, _, kinds)| kinds.contains(&kind)) {
                journaled.insert(entry(
                    kind,
                    r.get_ref(1)?.as_str()?,
                    r.get_ref(2)?.as_blob()?,
                ));
            }
        }
        let mut n = 0u64;
        for (table, key_column, kinds) in RECORDED {
            let mut st = conn.prepare(&format!(
                "SELECT {key_column}, bytes, key, sig FROM {table}"
            ))?;
            let mut rows = st.query([])?;
            while let Some(r) = rows.next()? {
                let subject = hex::encode(r.get_ref(0)?.as_blob()?);
                let signed: Signed<Envelope> = signed_at(r, 1)?;
                let record = encode_record(&signed)?;
                let held = |kind: &&str| journaled.contains(&entry(kind, &subject, &record));
                if !kinds.iter().any(held) {
                    return Ok(Err(format!(
                        "{table} row {subject} is not the record its journal holds"
                    )));
                }
                n += 1;
            }
        }
        Ok(Ok(n))
    };
    match check() {
        Ok(Ok(n)) => Ok(n),
        Ok(Err(detail)) => Err(corrupt(detail)),
        Err(e) => Err(corrupt(format!("reading its records: {e}"))),
    }
}

impl NodeStore {
    /// Opens (creating) `node.db` in `data_dir`, refusing a damaged file by name, and a
    /// store written by a newer node ([`StoreError::NewerSchema`]) before changing anything
    /// in it. A store at schema version 0 (new, or from before the version was recorded) is
    /// brought to [`SCHEMA_VERSION`] in the transaction that creates what it lacks. Refused
    /// while a restore into `data_dir` is unfinished, and where there is no store but signs
    /// of an earlier one ([`hotline_store::check_startable`]): an empty store would take its
    /// place.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        hotline_store::check_startable(data_dir, DB_FILE)?;
        let path = data_dir.join(DB_FILE);
        let conn = hotline_store::open(&path, true)?;
        hotline_store::quick_check(&conn, &path)?;
        // Before any table is created or filled: a newer node's store stays as it was.
        let version = check_schema_version(&conn, &path)?;
        let has_table = |name: &str| -> Result<bool, StoreError> {
            Ok(conn.query_row(
                "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1)",
                [name],
                |r| r.get(0),
            )?)
        };
        let answers_indexed = has_table("answers")?;
        let acks_indexed = has_table("acks_out")?;
        let mismatches_indexed = has_table("mismatches")?;
        let signed_times_indexed = has_table("matrix_signed")?;
        let signings_indexed = has_table("signings")?;
        // A store from before this version, rather than a new one.
        let older = has_table("receipts_in")?;
        if version < SCHEMA_VERSION && has_table("journal")? {
            tracing::info!(db = %path.display(), "migrating the node store from schema version {version} to {SCHEMA_VERSION}");
        }
        // The tables and their one-time fills from what an older store holds, and the
        // schema version, in one transaction: a start stopped midway leaves neither a table
        // nor an empty one that would never be filled, nor a version its tables lack.
        let tx = conn.unchecked_transaction()?;
        tx.execute_batch(SCHEMA)?;
        tx.execute_batch(hotline_store::journal::SCHEMA)?;
        // A damaged journal is refused at start-up, naming the file, rather than extended;
        // so is a stored message or receipt that is not the record its journal holds.
        hotline_store::verify_journal(&conn).map_err(|e| StoreError::Corrupt {
            path: path.clone(),
            detail: e.to_string(),
        })?;
        let records = verify_records(&conn, &path)?;
        tracing::debug!(
            records,
            "stored messages and receipts match their journal entries"
        );
        // Before the fills from receipts, which take a receipt of an earlier signing as one
        // of the message.
        let mut signed_again = false;
        if !signings_indexed || version < SIGNINGS_VERSION {
            tx.execute("DELETE FROM signings", [])?;
            index_stored_signings(&tx)?;
            signed_again =
                tx.query_row("SELECT EXISTS (SELECT 1 FROM signings)", [], |r| r.get(0))?;
        }
        if signed_again && mismatches_indexed {
            // An older node took receipts of an earlier signing for mismatches.
            tx.execute("DELETE FROM mismatches", [])?;
            index_stored_mismatches(&tx)?;
        }
        if !answers_indexed {
            index_stored_answers(&tx)?;
        }
        if !acks_indexed {
            index_stored_acks(&tx)?;
        }
        if !mismatches_indexed {
            if older {
                tracing::info!("recording the mismatched receipts this store holds (once, at the first start of this version)");
            }
            index_stored_mismatches(&tx)?;
        }
        if !signed_times_indexed || version < SIGNED_TIMES_VERSION || signed_again {
            // Filled from scratch: a table made by an earlier build but stamped with the
            // older version may lack what a node that does not keep it wrote since.
            tx.execute("DELETE FROM matrix_signed", [])?;
            index_stored_signed_times(&tx)?;
        }
        if version < SCHEMA_VERSION {
            tx.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION}"))?;
        }
        tx.commit()?;
        rename_relay_records(&conn)?;
        let journal = Journal::load(&conn)?;
        let quarantine = quarantine_size(&conn)?;
        Ok(Self {
            conn,
            journal,
            path,
            quarantine,
            quarantine_max_bytes: crate::limits::QUARANTINE_MAX_BYTES,
            relay_names: Vec::new(),
        })
    }

    /// Records that this is `me`'s store, or refuses it as another participant's
    /// ([`StoreError::OtherParticipant`], by [`check_participant`]): a node started as KGZ on
    /// KAZ's store (a backup restored into the wrong directory) would show KAZ's messages to
    /// KGZ's officers, and submit KAZ's signed messages as its own. Called at every start,
    /// once the configuration has passed its checks and before anything is served; it
    /// writes (journaled `store.participant`) only the first time, and again only for a
    /// store that holds nothing of anyone's yet (a first start with a mistyped participant,
    /// corrected). A participant's key may change with the roster; its id does not.
    pub fn claim_participant(&mut self, me: &ParticipantId, now_ms: u64) -> Result<(), StoreError> {
        let previous = match check_participant(&self.conn, &self.path, me)? {
            Claim::Recorded => return Ok(()),
            Claim::Unrecorded { previous } => previous,
        };
        if let Some(previous) = previous {
            tracing::warn!(recorded = %previous, participant = %me, "this store was recorded for another participant but holds nothing yet: recorded again");
        }
        self.tx(|tx, j| {
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ('participant', ?1)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [me.as_str().as_bytes()],
            )?;
            j.append(tx, now_ms, "store.participant", me.as_str(), &[])?;
            Ok(())
        })
    }

    /// Records which relay each configuration index names (`relays`: each relay's pinned
    /// fingerprint and address, in the configuration's order), and keeps what waits for
    /// each relay (its outbox, the acknowledgements pending for it) with that relay when the
    /// configuration has changed since the last start ([`match_relays`]): a relay listed at
    /// another index keeps its rows at its new index; a relay no longer listed gives its
    /// rows to the relays listed for the first time (a relay replaced by another), or, if
    /// there are none, they are dropped: every other relay has rows of its own for what it
    /// has not accepted. A store from before this record takes the configuration as it
    /// finds it. Returns how many rows moved and how many were dropped, for the log.
    ///
    /// It also names each relay for the record of what it has accepted (`relay_seq`): the
    /// fingerprint of its pinned certificate, which stays with a relay when the
    /// configuration lists its relays in another order, and when the relay moves to another
    /// address (a Secretariat that lost its machine restores the relay's store, key and
    /// certificate on a new one, and its losses are still noticed); it changes when a relay
    /// is replaced by a new one, which has accepted nothing. Relays that share a
    /// certificate share a record: one that has accepted less than another is then sent
    /// what it lacks ([`Self::offer_lost`]), which makes it whole and ends there.
    pub fn set_relays(&mut self, relays: &[(String, String)]) -> Result<(u64, u64), StoreError> {
        self.relay_names = relays.iter().map(|(fp, _)| fp.clone()).collect();
        self.tx(|tx, _| {
            let old: Vec<(String, String)> = {
                let mut st = tx.prepare("SELECT fingerprint, address FROM relay_slots ORDER BY idx")?;
                let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
                rows.collect::<Result<_, _>>()?
            };
            if old == relays {
                return Ok((0, 0));
            }
            let (mut moved, mut dropped) = (0u64, 0u64);
            let (map, fresh) = match_relays(&old, relays);
            if map.iter().enumerate().any(|(o, n)| *n != Some(o)) {
                // Moved out of the way of the indices being moved into, then back.
                const ASIDE: i64 = 1 << 32;
                for (table, rest) in [("outbox", "id, seq"), ("receipts_pending", "digest")] {
                    for (o, n) in map.iter().enumerate() {
                        let o = o as i64;
                        if let Some(n) = n {
                            moved += tx.execute(&format!("UPDATE {table} SET relay = ?2 WHERE relay = ?1"), params![o, *n as i64 + ASIDE])? as u64;
                            continue;
                        }
                        for j in &fresh {
                            tx.execute(&format!("INSERT OR IGNORE INTO {table} SELECT ?2, {rest} FROM {table} WHERE relay = ?1"), params![o, *j as i64 + ASIDE])?;
                        }
                        let n = tx.execute(&format!("DELETE FROM {table} WHERE relay = ?1"), [o])? as u64;
                        if fresh.is_empty() { dropped += n } else { moved += n }
                    }
                    tx.execute(&format!("UPDATE {table} SET relay = relay - ?1 WHERE relay >= ?1"), [ASIDE])?;
                }
            }
            tx.execute("DELETE FROM relay_slots", [])?;
            for (j, (fp, addr)) in relays.iter().enumerate() {
                tx.execute("INSERT INTO relay_slots (idx, fingerprint, address) VALUES (?1, ?2, ?3)", params![j as i64, fp, addr])?;
            }
            Ok((moved, dropped))
        })
    }

    fn relay_name(&self, relay: usize) -> String {
        self.relay_names
            .get(relay)
            .cloned()
            .unwrap_or_else(|| format!("#{relay}"))
    }

    /// Sets the most the quarantine may hold, in envelope bytes (the configuration's
    /// `quarantine_max_bytes`; [`crate::limits::QUARANTINE_MAX_BYTES`] until set). What it
    /// holds beyond a lowered limit stays; only new deliveries are refused.
    pub fn set_quarantine_max_bytes(&mut self, max: u64) {
        self.quarantine_max_bytes = max;
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` in one transaction with the journal; rolls the journal back on failure.
    fn tx<R>(
        &mut self,
        f: impl FnOnce(&rusqlite::Transaction<'_>, &mut Journal) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        self.journal.begin();
        let result = (|| {
            let tx = self.conn.transaction()?;
            let r = f(&tx, &mut self.journal)?;
            tx.commit()?;
            Ok(r)
        })();
        if result.is_err() {
            self.journal.rollback();
        }
        result
    }

    /// The store's connection, for tests that inject a failure (a temporary trigger).
    #[cfg(test)]
    pub(crate) fn conn_for_tests(&self) -> &Connection {
        &self.conn
    }

    /// The newest roster this node has installed, if any.
    pub fn roster(&self) -> Result<Option<Signed<Roster>>, StoreError> {
        stored_roster(&self.conn)
    }

    /// Installs a verified roster if it is newer than the one stored; returns whether it
    /// did. One not newer (two links offering rosters at once, the older one second) is not
    /// written: a roster never rolls back. Only a stored roster signed by the same key
    /// counts: one signed by a roster key since replaced (OPERATIONS.md 4.7), which the
    /// node no longer trusts, is replaced whatever its version, so that a stolen key's
    /// roster at a high version cannot hold back every roster of the new key.
    pub fn save_roster(
        &mut self,
        roster: &Verified<Roster>,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        let bytes = encode_record(roster.signed())?;
        let version = roster.version;
        let key = roster.signed().key();
        self.tx(|tx, j| {
            let stored = stored_roster(tx)?
                .filter(|s| s.key() == key)
                .and_then(|s| s.decode_unverified().ok());
            if stored.is_some_and(|r| r.version >= version) {
                return Ok(false);
            }
            tx.execute("INSERT INTO meta (key, value) VALUES ('roster', ?1) ON CONFLICT (key) DO UPDATE SET value = excluded.value", [&bytes])?;
            j.append(tx, now_ms, "roster.installed", &version.to_string(), &bytes)?;
            Ok(true)
        })
    }

    /// Takes the next sequence number, signs, and stores the message with an outbox entry
    /// per relay and its expected recipients, all in one transaction. A counter at `SEQ_MAX`
    /// has no next number: `SeqExhausted`, and nothing is stored.
    pub fn compose(
        &mut self,
        me: &ParticipantId,
        key: &SigningKey,
        draft: Draft,
        expected: &[ParticipantId],
        relays: usize,
        now_ms: u64,
    ) -> Result<Result<Signed<Envelope>, hotline_proto::EncodeError>, StoreError> {
        self.tx(|tx, j| {
            forget_old_keys(tx, now_ms)?;
            compose_in(tx, j, me, key, draft, expected, relays, now_ms, None)
        })
    }

    /// [`Self::compose`], unless `idem`'s key is kept ([`Self::keyed`]): then nothing is
    /// stored, and the answer says what the key names (`Composed::Before`). Otherwise the
    /// key is recorded with the message, in the transaction that stores it, so that of two
    /// requests with one key only the first composes. Every compose also forgets the keys
    /// older than [`crate::limits::IDEMPOTENCY_KEY_KEPT_MS`], and the oldest beyond
    /// [`crate::limits::IDEMPOTENCY_KEYS_MAX`].
    #[allow(clippy::too_many_arguments)]
    pub fn compose_keyed(
        &mut self,
        me: &ParticipantId,
        key: &SigningKey,
        draft: Draft,
        expected: &[ParticipantId],
        relays: usize,
        now_ms: u64,
        idem: &Idempotency,
    ) -> Result<Result<Composed, hotline_proto::EncodeError>, StoreError> {
        self.tx(|tx, j| {
            forget_old_keys(tx, now_ms)?;
            if let Some(before) = keyed(tx, idem, now_ms)? {
                return Ok(Ok(Composed::Before(before)));
            }
            let signed = compose_in(tx, j, me, key, draft, expected, relays, now_ms, Some(idem))?;
            Ok(signed.map(Composed::New))
        })
    }

    /// What `idem`'s key names if it is kept (given within
    /// [`crate::limits::IDEMPOTENCY_KEY_KEPT_MS`] before `now_ms`, and not among the oldest
    /// dropped past [`crate::limits::IDEMPOTENCY_KEYS_MAX`]): the message its request
    /// stored, if `idem` is that request, else `Other`. `None` for a key not kept. A look
    /// before the request is checked against the roster, which may have changed since the
    /// message was stored; [`Self::compose_keyed`] looks again in its transaction.
    pub fn keyed(&self, idem: &Idempotency, now_ms: u64) -> Result<Option<Keyed>, StoreError> {
        keyed(&self.conn, idem, now_ms)
    }

    /// The operator has been told of these messages (event, log line, paging hook).
    pub fn mark_announced(&mut self, ids: &[MessageId]) -> Result<(), StoreError> {
        self.tx(|tx, _| {
            let mut st = tx.prepare_cached("DELETE FROM unannounced WHERE id = ?1")?;
            for id in ids {
                st.execute([&id.0[..]])?;
            }
            Ok(())
        })
    }

    /// Messages stored but never announced: the node was stopped between the two.
    pub fn unannounced(&self) -> Result<Vec<Envelope>, StoreError> {
        let mut st = self.conn.prepare(
            "SELECT i.bytes, i.key, i.sig FROM unannounced u JOIN inbox i ON i.id = u.id ORDER BY i.received_at_ms",
        )?;
        let rows = st.query_map([], |r| signed_at::<Envelope>(r, 0))?;
        let mut out = Vec::new();
        for r in rows {
            out.push(decode_stored(&r?)?);
        }
        Ok(out)
    }

    /// The sequence counter: the highest number this node has signed or taken as a floor.
    pub fn seq_counter(&self) -> Result<u64, StoreError> {
        current_seq(&self.conn)
    }

    /// Raises the sequence counter to at least `floor` (the relay's last accepted number for
    /// this participant). Returns whether it moved. A floor above `SEQ_MAX`, which no relay
    /// can have accepted, is refused (`SeqExhausted`) and changes nothing: taken, it would
    /// leave this node no number to sign with.
    pub fn raise_seq_floor(&mut self, floor: u64) -> Result<bool, StoreError> {
        if floor > SEQ_MAX {
            return Err(StoreError::SeqExhausted { last: floor });
        }
        if floor <= current_seq(&self.conn)? {
            return Ok(false);
        }
        set_seq(&self.conn, floor)?;
        Ok(true)
    }

    /// Relay `relay` says the highest number it has accepted from this node is `last_seq`
    /// (`Welcome.last_seq`), but it has answered `Accepted` for higher ones: it lost them,
    /// its store restored from a backup. Every message numbered above `last_seq` and up to
    /// the highest it accepted, accepted by some relay and not already waiting for this one,
    /// goes back into its outbox, to be submitted again: to the relay they are new (ids it
    /// does not hold, numbers above its last), and recipients that already hold them keep
    /// their copy (nodes dedup by id). The relay's recorded highest becomes `last_seq`, and
    /// rises again with its acceptances. Returns how many were put back, and the highest
    /// number the relay had accepted. A message signed again (`signings`) counts by each of
    /// its numbers, and goes back as `sent` holds it: its newest signing, numbered above the
    /// earlier ones, so above `last_seq` too. (A message the relay accepted after the backup
    /// with a number at or below `last_seq`, a retry inside the reorder window, is not seen;
    /// PROTOCOL.md 8.)
    pub fn offer_lost(
        &mut self,
        relay: usize,
        last_seq: u64,
        now_ms: u64,
    ) -> Result<(usize, u64), StoreError> {
        let name = self.relay_name(relay);
        // Read first: at almost every connection there is nothing to do, and no
        // transaction is needed to find that out.
        let accepted: u64 = self
            .conn
            .query_row("SELECT seq FROM relay_seq WHERE relay = ?1", [&name], |r| {
                r.get(0)
            })
            .optional()?
            .unwrap_or(0);
        if accepted <= last_seq {
            return Ok((0, accepted));
        }
        self.tx(|tx, j| {
            let n = tx.execute(
                "INSERT OR IGNORE INTO outbox (relay, id, seq) SELECT ?1, id, seq FROM sent WHERE accepted_at_ms IS NOT NULL AND ((seq > ?2 AND seq <= ?3) OR id IN (SELECT id FROM signings WHERE seq > ?2 AND seq <= ?3))",
                params![relay as i64, last_seq, accepted],
            )?;
            // Raised again as the relay accepts them; one it refuses for good is then not
            // offered again at every connection.
            tx.execute("UPDATE relay_seq SET seq = ?2 WHERE relay = ?1", params![name, last_seq])?;
            j.append(
                tx,
                now_ms,
                "relay.lost_messages",
                &name,
                format!("last_seq {last_seq}, had accepted up to {accepted}: {n} offered again").as_bytes(),
            )?;
            Ok((n, accepted))
        })
    }

    /// Messages still to be sent through `relay`, lowest sequence number first.
    pub fn outbox(&self, relay: usize, limit: usize) -> Result<Vec<Outgoing>, StoreError> {
        self.outbox_after(relay, 0, limit)
    }

    /// Messages still to be sent through `relay` numbered above `after`, lowest sequence
    /// number first: a link reads on from the last message it wrote, not again past the
    /// page it has in flight (messages of up to 64 KiB). An outbox row's number is its
    /// message's (`sent.seq`: set so by `compose`, `offer_lost` and `set_relays`, and moved
    /// with it by `resequence`, only ever upwards).
    pub fn outbox_after(
        &self,
        relay: usize,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Outgoing>, StoreError> {
        let mut st = self.conn.prepare_cached(
            "SELECT s.id, s.seq, s.bytes, s.key, s.sig FROM outbox o JOIN sent s ON s.id = o.id WHERE o.relay = ?1 AND o.seq > ?2 ORDER BY o.seq LIMIT ?3",
        )?;
        let rows = st.query_map(params![relay as i64, after, limit as i64], |r| {
            Ok(Outgoing {
                id: MessageId(blob_array::<16>(r.get(0)?, 0)?),
                seq: r.get(1)?,
                signed: signed_at(r, 2)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The status (actual, exercise or test) of message `id` this node sent, for the event
    /// telling of a relay's refusal of it; `None` if this node holds no such message or it
    /// does not decode.
    pub fn sent_status(&self, id: &MessageId) -> Result<Option<Status>, StoreError> {
        let signed = self
            .conn
            .prepare_cached("SELECT bytes, key, sig FROM sent WHERE id = ?1")?
            .query_row([&id.0[..]], |r| signed_at::<Envelope>(r, 0))
            .optional()?;
        Ok(signed
            .and_then(|s| s.decode_unverified().ok())
            .map(|e| e.status))
    }

    /// A relay refused message `id`, sent with sequence number `refused_seq`, because it
    /// has accepted another message of ours with that number (`ReplayedSeq`). That happens
    /// to an honest node only when its store went back in time (restored from a backup) and
    /// it signed new messages before a relay told it its last number (`Welcome.last_seq`,
    /// `floor` here). No relay holds this id (the relay checks ids before numbers, and an
    /// id it holds is answered `Accepted`), so the message is signed again under the same
    /// id, with the same content and creation time and the next unused number, and stays in
    /// every outbox it is in. It is signed again only if no relay has accepted it, the
    /// refused number is at or below `floor` (so a relay that keeps refusing cannot make the
    /// node count up without end), and those are still the bytes stored (another relay's
    /// refusal may have had it signed again already: then it is only offered again). The
    /// signing replaced is kept in `signings`, by number and digest: another relay may have
    /// been written it before this refusal came, and take it ([`Self::accepted`] records
    /// that relay against its number), and the recipients it delivers to receipt it
    /// ([`Self::store_forwarded`] counts such a receipt). If no number may follow the
    /// counter and `floor` (`SEQ_MAX`), `SeqExhausted`, and nothing changes.
    pub fn resequence(
        &mut self,
        id: &MessageId,
        refused_seq: u64,
        floor: u64,
        key: &SigningKey,
        now_ms: u64,
    ) -> Result<Resequenced, StoreError> {
        self.tx(|tx, j| {
            let row = tx
                .query_row(
                    "SELECT seq, accepted_at_ms IS NOT NULL, bytes, key, sig FROM sent WHERE id = ?1",
                    [&id.0[..]],
                    |r| Ok((r.get::<_, u64>(0)?, r.get::<_, bool>(1)?, signed_at::<Envelope>(r, 2)?)),
                )
                .optional()?;
            let Some((seq, accepted, signed)) = row else {
                return Ok(Resequenced::Final);
            };
            if accepted {
                return Ok(Resequenced::Final);
            }
            if seq != refused_seq {
                return Ok(Resequenced::AlreadyFresh);
            }
            if refused_seq > floor {
                return Ok(Resequenced::Final);
            }
            tx.execute(
                "INSERT OR IGNORE INTO signings (id, seq, digest) VALUES (?1, ?2, ?3)",
                params![&id.0[..], seq, &signed.digest().0[..]],
            )?;
            let mut env = decode_stored(&signed)?;
            let last = current_seq(tx)?;
            let fresh = next_seq(last.max(floor))?;
            env.seq = Seq(fresh);
            let signed = sign(&env, key)?;
            set_seq(tx, fresh)?;
            tx.execute(
                "UPDATE sent SET seq = ?2, bytes = ?3, key = ?4, sig = ?5, rejected_code = NULL, rejected_detail = NULL WHERE id = ?1",
                params![&id.0[..], fresh, signed.bytes(), &signed.key().0[..], &signed.signature().0[..]],
            )?;
            tx.execute("UPDATE outbox SET seq = ?2 WHERE id = ?1", params![&id.0[..], fresh])?;
            j.append(
                tx,
                now_ms,
                "message.resequenced",
                &id.to_string(),
                format!("{refused_seq} -> {fresh}: a relay had accepted another message with {refused_seq}").as_bytes(),
            )?;
            j.append(tx, now_ms, "message.sent", &id.to_string(), &encode_record(&signed)?)?;
            Ok(Resequenced::Signed(fresh))
        })
    }

    /// Messages waiting for any relay.
    pub fn outbox_len(&self) -> Result<u64, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT COUNT(DISTINCT id) FROM outbox", [], |r| r.get(0))?)
    }

    /// What the quarantine holds, and whether it is full: a delivery failing its checks now
    /// would be refused (not stored, not receipted) rather than held.
    pub fn quarantine_size(&self) -> (QuarantineSize, bool) {
        (
            self.quarantine,
            self.quarantine.bytes >= self.quarantine_max_bytes,
        )
    }

    /// A relay accepted a message, which the link wrote to it signed with number `seq`: it
    /// leaves that relay's outbox; the relay's recipient list becomes the matrix; the relay's
    /// record of what it holds (`relay_seq`, for [`Self::offer_lost`]) rises to `seq`.
    ///
    /// `seq` is the link's, not `sent`'s: a message signed again after a restore
    /// ([`Self::resequence`]) may be taken by one relay under its earlier number while
    /// another refused that number and had it signed again. That relay holds the earlier
    /// signing and has seen no higher number for it; recorded as holding the newer one, it
    /// would look, at its next `Welcome`, as if it had lost messages, and be sent the newer
    /// signing, which it refuses (`IdConflict`). The sent message stays one record, by id
    /// ([`Self::store_forwarded`]). A number that is none of the message's signings:
    /// [`Answered::Unknown`]. No number (the link has written the message no signing on this
    /// connection, or has had its answer already): [`Answered::Again`] for a message this
    /// node sent, nothing recorded.
    pub fn accepted(
        &mut self,
        relay: usize,
        a: &Accepted,
        seq: Option<u64>,
        now_ms: u64,
    ) -> Result<Answered, StoreError> {
        let name = self.relay_name(relay);
        self.tx(|tx, j| {
            // The message's bytes come with its row, for the status its event carries.
            let row = tx
                .prepare_cached("SELECT seq, bytes, key, sig FROM sent WHERE id = ?1")?
                .query_row([&a.id.0[..]], |r| Ok((r.get::<_, u64>(0)?, signed_at::<Envelope>(r, 1)?)))
                .optional()?;
            let Some((current, signed)) = row else {
                return Ok(Answered::Unknown);
            };
            let Some(seq) = seq else {
                return Ok(Answered::Again);
            };
            if seq != current {
                let earlier: bool = tx
                    .prepare_cached("SELECT EXISTS (SELECT 1 FROM signings WHERE id = ?1 AND seq = ?2)")?
                    .query_row(params![&a.id.0[..], seq], |r| r.get(0))?;
                if !earlier {
                    return Ok(Answered::Unknown);
                }
            }
            let n = tx.execute("DELETE FROM outbox WHERE relay = ?1 AND id = ?2", params![relay as i64, &a.id.0[..]])?;
            tx.prepare_cached(
                "INSERT INTO relay_seq (relay, seq) VALUES (?1, ?2) ON CONFLICT (relay) DO UPDATE SET seq = MAX(seq, excluded.seq)",
            )?
            .execute(params![name, seq])?;
            let first = tx.execute(
                "UPDATE sent SET accepted_at_ms = ?2, rejected_code = NULL, rejected_detail = NULL WHERE id = ?1 AND accepted_at_ms IS NULL",
                params![&a.id.0[..], a.accepted_at_ms],
            )?;
            let list: Vec<&str> = a.recipients.iter().map(|r| r.as_str()).collect();
            if first > 0 {
                // The first acceptance's list replaces what this node's roster expected, but
                // not a recipient whose receipt has come already (it has the message).
                let placeholders = list.iter().map(|r| format!("'{r}'")).collect::<Vec<_>>().join(",");
                // Ids are validated `[A-Z0-9]` codes, so inlining them cannot inject SQL.
                let dropped = format!("matrix WHERE id = ?1 AND recipient NOT IN ({placeholders}) AND delivered_at_ms IS NULL AND acked_at_ms IS NULL");
                // A dropped row's escalation is kept (`escalated`): another relay naming the
                // recipient brings its row back, and it must not be escalated again. This
                // node wrote one for each it escalated; an older node, for none.
                tx.execute(
                    &format!("INSERT OR IGNORE INTO escalated (id, recipient, at_ms, announced) SELECT id, recipient, overdue_at_ms, 1 FROM {dropped} AND overdue_at_ms IS NOT NULL"),
                    [&a.id.0[..]],
                )?;
                tx.execute(&format!("DELETE FROM {dropped}"), [&a.id.0[..]])?;
            }
            // Every relay's list is added: one whose roster resolved the audience to more
            // recipients (a roster change in flight) delivers to them too. A recipient whose
            // row an earlier list dropped after it was escalated comes back marked overdue.
            let mut added = Vec::new();
            for r in &list {
                if tx.prepare_cached(
                    "INSERT OR IGNORE INTO matrix (id, recipient, overdue_at_ms)
                     VALUES (?1, ?2, (SELECT at_ms FROM escalated WHERE id = ?1 AND recipient = ?2))",
                )?
                .execute(params![&a.id.0[..], r])? > 0 {
                    added.push(*r);
                }
            }
            if first > 0 {
                j.append(tx, now_ms, "message.accepted", &a.id.to_string(), list.join(",").as_bytes())?;
            } else if !added.is_empty() {
                j.append(tx, now_ms, "message.recipients.added", &a.id.to_string(), added.join(",").as_bytes())?;
            }
            // News if it took the message off this relay's outbox, was its first acceptance,
            // or named a recipient no relay had named (a relay with no outbox row for it:
            // one added to the configuration since, whose list is news all the same).
            // Decoded only for news, the one answer told as an event.
            Ok(if n > 0 || first > 0 || !added.is_empty() {
                Answered::New { status: signed.decode_unverified().ok().map(|e| e.status) }
            } else {
                Answered::Again
            })
        })
    }

    /// A relay refused a message. A retryable refusal leaves it in the outbox; a final one
    /// removes it there, and marks the message refused unless another relay accepted it.
    pub fn rejected(
        &mut self,
        relay: usize,
        id: &MessageId,
        code: RejectCode,
        detail: &str,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        if retryable(code) {
            return Ok(false);
        }
        self.tx(|tx, j| {
            tx.execute("DELETE FROM outbox WHERE relay = ?1 AND id = ?2", params![relay as i64, &id.0[..]])?;
            let n = tx.execute(
                "UPDATE sent SET rejected_code = ?2, rejected_detail = ?3 WHERE id = ?1 AND accepted_at_ms IS NULL",
                params![&id.0[..], format!("{code:?}"), detail],
            )?;
            if n > 0 {
                j.append(tx, now_ms, "message.rejected", &id.to_string(), format!("{code:?}: {detail}").as_bytes())?;
            }
            Ok(true)
        })
    }

    /// Stores delivered messages (verified, or quarantined with a reason) in one
    /// transaction. Returns what became of each, and the items a delivered receipt must cover
    /// ([`NodeStore::delivered_receipts`]): every message now held, new or already held, as
    /// the relay redelivers until it has a receipt.
    ///
    /// Checked against no roster it is told of: a delivery it newly holds clears the record
    /// of the quarantine's last full check ([`Self::store_deliveries_checked_against`]).
    pub fn store_deliveries(
        &mut self,
        batch: &[(Signed<Envelope>, Result<Envelope, String>)],
        now_ms: u64,
    ) -> Result<(Vec<Stored>, Vec<ReceiptItem>), StoreError> {
        self.store_deliveries_checked_against(batch, None, now_ms)
    }

    /// [`Self::store_deliveries`] for a batch checked against `roster` (a roster and the
    /// rules of the check, as [`QuarantineCheck`] records them). If it newly holds a delivery in quarantine, the record that the whole
    /// quarantine was checked against a roster ([`QuarantineCheck`]) is cleared in the same
    /// transaction unless it names this very roster: a delivery checked against an older
    /// roster and held after a walk against the newer one has passed its place must not be
    /// taken as checked against the newer one, even by a node that stops before it walks
    /// again.
    pub fn store_deliveries_checked_against(
        &mut self,
        batch: &[(Signed<Envelope>, Result<Envelope, String>)],
        roster: Option<&Digest>,
        now_ms: u64,
    ) -> Result<(Vec<Stored>, Vec<ReceiptItem>), StoreError> {
        let max_bytes = self.quarantine_max_bytes;
        let mut size = self.quarantine;
        let held_before = size.held;
        let (out, items) = self.tx(|tx, j| {
            let mut out = Vec::with_capacity(batch.len());
            let mut items = Vec::with_capacity(batch.len());
            for (signed, checked) in batch {
                let digest = signed.digest();
                match checked {
                    Ok(env) => {
                        if receive(tx, j, signed, env, now_ms, now_ms)? {
                            out.push(Stored::New);
                        } else if let Some(holder) = id_conflict(tx, env, signed)? {
                            // Another message, validly signed, under an id the inbox holds:
                            // a sender reusing an id, or a member copying one it was sent
                            // to front-run it through a second relay. The first stays
                            // shown; this one is held where an officer can see it, never
                            // dropped as a duplicate (a receipt would then name content
                            // this node does not hold).
                            let reason = format!(
                                "id conflict: the inbox already holds a different message with id {} (from {holder})",
                                env.id
                            );
                            match hold(tx, j, signed, &reason, now_ms, &mut size, max_bytes)? {
                                Stored::Refused(r) => {
                                    out.push(Stored::Refused(r));
                                    continue;
                                }
                                held => out.push(held),
                            }
                        } else {
                            out.push(Stored::Duplicate);
                        }
                        if !items.iter().any(|i: &ReceiptItem| i.id == env.id) {
                            items.push(ReceiptItem { id: env.id, sender: env.sender.clone(), digest });
                        }
                    }
                    Err(reason) => {
                        // The very bytes the inbox holds under this id, delivered again (a
                        // relay restored from a backup, or `hotline relay redeliver`) after
                        // its signer's key left the roster (rotated out, or revoked): the
                        // message passed every check when it was stored, and is not new. A
                        // duplicate, as with its key still listed: receipted again, nothing
                        // quarantined, nothing shown.
                        if let Ok(env) = signed.decode_unverified() {
                            let same: bool = tx
                                .prepare_cached("SELECT EXISTS (SELECT 1 FROM inbox WHERE id = ?1 AND bytes = ?2)")?
                                .query_row(params![&env.id.0[..], signed.bytes()], |r| r.get(0))?;
                            if same {
                                out.push(Stored::Duplicate);
                                if !items.iter().any(|i: &ReceiptItem| i.id == env.id) {
                                    items.push(ReceiptItem { id: env.id, sender: env.sender, digest });
                                }
                                continue;
                            }
                        }
                        let held = hold(tx, j, signed, reason, now_ms, &mut size, max_bytes)?;
                        if matches!(held, Stored::Refused(_)) {
                            out.push(held);
                            continue;
                        }
                        out.push(held);
                        // The relay keeps redelivering until it has a receipt; a quarantined
                        // message is held durably here, so it is receipted too (by digest).
                        if let Ok(env) = signed.decode_unverified() {
                            if !items.iter().any(|i: &ReceiptItem| i.id == env.id) {
                                items.push(ReceiptItem { id: env.id, sender: env.sender, digest });
                            }
                        }
                    }
                }
            }
            if size.held > held_before
                && quarantine_check_in(tx)?.is_some_and(|c| Some(&c.roster()) != roster)
            {
                tx.execute("DELETE FROM meta WHERE key = ?1", [QUARANTINE_CHECKED_KEY])?;
            }
            Ok((out, items))
        })?;
        self.quarantine = size;
        Ok((out, items))
    }

    /// The quarantine, newest first, at most `limit`.
    pub fn quarantined(&self, limit: usize) -> Result<Vec<Quarantined>, StoreError> {
        Ok(quarantine_page(&self.conn, None, limit)?.unwrap_or_default())
    }

    /// The quarantine, newest first, at most `limit` from below `place` (from the newest
    /// without it), with the place of the last one listed: the next page starts there. A
    /// place is a position, not a row, so the walk goes on when the rows it listed leave the
    /// quarantine meanwhile (released, discarded), as a digest cursor
    /// ([`NodeReader::quarantine_each`]) could not. For a walk over the whole quarantine
    /// ([`crate::NodeState::recheck_quarantine`]).
    pub fn quarantined_below(
        &self,
        place: Option<QuarantinePlace>,
        limit: usize,
    ) -> Result<(Vec<Quarantined>, Option<QuarantinePlace>), StoreError> {
        let (time, row) = place.map_or((i64::MAX, i64::MAX), |p| (p.received_at_ms, p.row));
        let (mut page, mut last) = (Vec::new(), None);
        quarantine_rows(&self.conn, time, row, limit, |q, place| {
            page.push(q);
            last = Some(place);
            ControlFlow::Continue(())
        })?;
        Ok((page, last))
    }

    /// How far the last check of the whole quarantine against a roster went, if any is
    /// recorded ([`QuarantineCheck`]).
    pub fn quarantine_check(&self) -> Result<Option<QuarantineCheck>, StoreError> {
        quarantine_check_in(&self.conn)
    }

    /// A walk of the whole quarantine against `roster` (as [`QuarantineCheck`] records it) begins
    /// ([`QuarantineCheck::Walking`]): until it ends ([`Self::end_quarantine_walk`]), no
    /// start takes the quarantine as checked.
    pub fn begin_quarantine_walk(&mut self, roster: &Digest) -> Result<(), StoreError> {
        self.tx(|tx, _| set_quarantine_check(tx, QuarantineCheck::Walking(*roster)))
    }

    /// A walk begun against `roster` ([`Self::begin_quarantine_walk`]) has checked every
    /// delivery the quarantine held: recorded as [`QuarantineCheck::Checked`] if nothing
    /// cleared or replaced the record meanwhile (a delivery held after a check against
    /// another roster, another walk begun). Returns whether it was recorded.
    pub fn end_quarantine_walk(&mut self, roster: &Digest) -> Result<bool, StoreError> {
        self.tx(|tx, _| {
            if quarantine_check_in(tx)? != Some(QuarantineCheck::Walking(*roster)) {
                return Ok(false);
            }
            set_quarantine_check(tx, QuarantineCheck::Checked(*roster))?;
            Ok(true)
        })
    }

    /// Moves quarantined deliveries that have since passed every check (`passed`: their
    /// digests and verified envelopes; a newer roster now holds their sender's key) into the
    /// inbox, as received when they arrived, to be announced. A row whose id the inbox
    /// already holds stays quarantined, unless the inbox holds those very bytes (a copy
    /// delivered again after the roster changed), when it is only removed. Returns the
    /// messages moved.
    pub fn release(
        &mut self,
        passed: &[(Digest, Envelope)],
        now_ms: u64,
    ) -> Result<Vec<Envelope>, StoreError> {
        let (out, removed) = self.tx(|tx, j| {
            let mut out = Vec::new();
            let mut removed = QuarantineSize::default();
            for (digest, env) in passed {
                let held = tx
                    .prepare_cached(
                        "SELECT bytes, key, sig, received_at_ms FROM quarantine WHERE digest = ?1",
                    )?
                    .query_row([&digest.0[..]], |r| {
                        Ok((signed_at::<Envelope>(r, 0)?, r.get::<_, u64>(3)?))
                    })
                    .optional()?;
                let Some((signed, received_at)) = held else {
                    continue;
                };
                if signed.digest() != *digest {
                    continue;
                }
                if receive(tx, j, &signed, env, received_at, now_ms)? {
                    out.push(env.clone());
                } else {
                    let same: bool = tx
                        .prepare_cached("SELECT bytes = ?2 FROM inbox WHERE id = ?1")?
                        .query_row(params![&env.id.0[..], signed.bytes()], |r| r.get(0))?;
                    if !same {
                        continue;
                    }
                }
                tx.prepare_cached("DELETE FROM quarantine WHERE digest = ?1")?
                    .execute([&digest.0[..]])?;
                removed.held += 1;
                removed.bytes += signed.bytes().len() as u64;
            }
            Ok((out, removed))
        })?;
        self.quarantine.held = self.quarantine.held.saturating_sub(removed.held);
        self.quarantine.bytes = self.quarantine.bytes.saturating_sub(removed.bytes);
        Ok(out)
    }

    /// Discards quarantined deliveries at an officer's word (`hotline discard`): the one held
    /// under `which`'s digest, or with `None` the oldest `max` held. Each is journaled
    /// (`message.quarantine_discarded`, under its digest: who decided and why it was held;
    /// its bytes are in its `message.quarantined` entry). It was receipted when it was held,
    /// so the relay no longer has it: if it was genuine (its sender was not yet on this
    /// node's roster), it is gone from this node. Returns how many were discarded.
    pub fn discard_quarantined(
        &mut self,
        which: Option<&Digest>,
        by: &str,
        now_ms: u64,
        max: usize,
    ) -> Result<u64, StoreError> {
        let (n, bytes) = self.tx(|tx, j| {
            let rows: Vec<(Vec<u8>, String, u64)> = match which {
                Some(d) => tx
                    .prepare_cached(
                        "SELECT digest, reason, LENGTH(bytes) FROM quarantine WHERE digest = ?1",
                    )?
                    .query_map([&d.0[..]], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                    .collect::<Result<_, _>>()?,
                None => tx
                    .prepare_cached(QUARANTINE_OLDEST_SQL)?
                    .query_map([max as i64], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                    .collect::<Result<_, _>>()?,
            };
            let mut bytes = 0u64;
            for (digest, reason, len) in &rows {
                tx.prepare_cached("DELETE FROM quarantine WHERE digest = ?1")?
                    .execute([digest])?;
                let record = format!("by {by}; held because: {reason}");
                j.append(
                    tx,
                    now_ms,
                    "message.quarantine_discarded",
                    &hex::encode(digest),
                    record.as_bytes(),
                )?;
                bytes += len;
            }
            Ok((rows.len() as u64, bytes))
        })?;
        self.quarantine.held = self.quarantine.held.saturating_sub(n);
        self.quarantine.bytes = self.quarantine.bytes.saturating_sub(bytes);
        Ok(n)
    }

    /// Signs cumulative delivered receipts for `items` (stored by
    /// [`NodeStore::store_deliveries`]), one per `RECEIPT_ITEMS_MAX` of them, and journals
    /// them in one transaction. Receipt pacing can hold more items than one receipt may
    /// name (the waiting items plus the batch that took them past the limit).
    pub fn delivered_receipts(
        &mut self,
        me: &ParticipantId,
        key: &SigningKey,
        items: Vec<ReceiptItem>,
        now_ms: u64,
    ) -> Result<Vec<Signed<Receipt>>, StoreError> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let receipts = crate::pacer::sign_delivered(me, key, &items, now_ms)
            .map_err(|e| StoreError::Signing(Box::new(e)))?;
        self.tx(|tx, j| {
            for signed in &receipts {
                j.append(
                    tx,
                    now_ms,
                    "receipt.delivered",
                    &signed.digest().to_string(),
                    &encode_record(signed)?,
                )?;
            }
            Ok(receipts)
        })
    }

    /// Records an operator's acknowledgement and queues the signed receipt for every relay.
    // The arguments are the signer (me, key), the request (id, officer, note) and the
    // context (relays, now); grouping them in structs would only move the list elsewhere.
    #[allow(clippy::too_many_arguments)]
    pub fn acknowledge(
        &mut self,
        me: &ParticipantId,
        key: &SigningKey,
        id: &MessageId,
        officer: &str,
        note: Option<String>,
        relays: usize,
        now_ms: u64,
    ) -> Result<Result<AckOutcome, hotline_proto::EncodeError>, StoreError> {
        self.tx(|tx, j| {
            let row: Option<(Signed<Envelope>, Option<u64>, Option<String>)> = tx
                .query_row(
                    "SELECT bytes, key, sig, acked_at_ms, officer FROM inbox WHERE id = ?1",
                    [&id.0[..]],
                    |r| Ok((signed_at(r, 0)?, r.get(3)?, r.get(4)?)),
                )
                .optional()?;
            let Some((signed_msg, acked, by)) = row else {
                return Ok(Ok(AckOutcome::NotFound));
            };
            if let Some(at) = acked {
                return Ok(Ok(AckOutcome::Already(at, by.unwrap_or_default())));
            }
            let env = decode_stored(&signed_msg)?;
            let receipt = Receipt {
                version: PROTOCOL_VERSION,
                recipient: me.clone(),
                kind: ReceiptKind::Acknowledged {
                    officer: officer.to_owned(),
                    note: note.clone(),
                },
                created_at_ms: now_ms,
                items: vec![ReceiptItem {
                    id: *id,
                    sender: env.sender,
                    digest: signed_msg.digest(),
                }],
            };
            let signed = match Signed::sign(&receipt, key) {
                Ok(s) => s,
                Err(e) => return Ok(Err(e)),
            };
            let d = signed.digest();
            tx.execute(
                "UPDATE inbox SET acked_at_ms = ?2, officer = ?3, note = ?4 WHERE id = ?1",
                params![&id.0[..], now_ms, officer, note],
            )?;
            tx.execute(
                "INSERT INTO receipts_out (digest, bytes, key, sig) VALUES (?1, ?2, ?3, ?4)",
                params![
                    &d.0[..],
                    signed.bytes(),
                    &signed.key().0[..],
                    &signed.signature().0[..]
                ],
            )?;
            for relay in 0..relays {
                tx.execute(
                    "INSERT INTO receipts_pending (relay, digest) VALUES (?1, ?2)",
                    params![relay as i64, &d.0[..]],
                )?;
            }
            tx.execute(
                "INSERT OR IGNORE INTO acks_out (id, digest) VALUES (?1, ?2)",
                params![&id.0[..], &d.0[..]],
            )?;
            j.append(
                tx,
                now_ms,
                "receipt.acknowledged",
                &d.to_string(),
                &encode_record(&signed)?,
            )?;
            Ok(Ok(AckOutcome::Acked {
                receipt: signed,
                status: env.status,
            }))
        })
    }

    /// Relay `relay` delivered again these received messages (duplicates here). A relay
    /// delivers a message again when it has no delivered receipt for it: the receipt was
    /// lost on the way, or the relay lost it, its store restored from a backup, and with it
    /// perhaps this node's acknowledgement, which the sender may not have had yet. So the
    /// acknowledgements of those this node has acknowledged go back into that relay's queue
    /// of receipts to send; a relay that holds one already answers it as stored and drops it
    /// (PROTOCOL.md 7.5). Returns how many were queued again.
    pub fn reoffer_acks(&mut self, relay: usize, ids: &[MessageId]) -> Result<usize, StoreError> {
        let mut digests = Vec::new();
        {
            let mut st = self
                .conn
                .prepare_cached("SELECT digest FROM acks_out WHERE id = ?1")?;
            for id in ids {
                if let Some(d) = st
                    .query_row([&id.0[..]], |r| r.get::<_, Vec<u8>>(0))
                    .optional()?
                {
                    digests.push(d);
                }
            }
        }
        if digests.is_empty() {
            return Ok(0);
        }
        self.tx(|tx, _| {
            let mut n = 0;
            for d in &digests {
                n += tx.execute(
                    "INSERT OR IGNORE INTO receipts_pending (relay, digest) VALUES (?1, ?2)",
                    params![relay as i64, d],
                )?;
            }
            Ok(n)
        })
    }

    /// How many acknowledgement receipts each relay (by index) has yet to confirm storing;
    /// relays with none are absent.
    pub fn pending_receipt_counts(&self) -> Result<HashMap<usize, u64>, StoreError> {
        let mut st = self
            .conn
            .prepare_cached("SELECT relay, COUNT(*) FROM receipts_pending GROUP BY relay")?;
        let rows = st.query_map([], |r| {
            Ok((r.get::<_, i64>(0)? as usize, r.get::<_, u64>(1)?))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Acknowledgement receipts still to be stored by `relay`: the first `limit` of them in
    /// the order of their digests (the table's key), so that a link reads what it can write
    /// and not, at every pass, a backlog of thousands left by a long outage. A receipt stays
    /// in the table until the relay answers it, so the ones after those read come first at a
    /// later pass.
    pub fn pending_receipts(
        &self,
        relay: usize,
        limit: usize,
    ) -> Result<Vec<Signed<Receipt>>, StoreError> {
        let mut st = self.conn.prepare_cached(PENDING_RECEIPTS_SQL)?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = st.query_map(params![relay as i64, limit], |r| signed_at(r, 0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// `relay` stored one of our receipts.
    pub fn receipt_stored(&mut self, relay: usize, digest: &Digest) -> Result<(), StoreError> {
        self.conn.execute(
            "DELETE FROM receipts_pending WHERE relay = ?1 AND digest = ?2",
            params![relay as i64, &digest.0[..]],
        )?;
        Ok(())
    }

    /// Stores receipts forwarded to us (verified by the caller) that tell something new, and
    /// updates the matrix. Returns, per receipt, whether it was kept and which of our messages
    /// it is the first news of: the first delivered receipt from that recipient (or an
    /// acknowledgement, which also marks it delivered), or the first acknowledgement. With two
    /// relays a recipient receipts a message once through each, in two receipts unless they
    /// happen to be the same bytes; the operator is told once, and the second is not kept.
    ///
    /// A receipt naming one of our messages with another digest is kept only if it is the
    /// first to do so from its signer for that message ([`Forwarded::mismatched`]); that it
    /// was is recorded (`mismatches`) in the transaction that keeps it. So at most one such
    /// receipt per message and roster member is kept, and reported. A receipt of what this
    /// node sent is still news after a mismatch from the same signer (the recipient may have
    /// quarantined an altered copy, then received the genuine one): the matrix records what
    /// matches, and a mismatch records nothing there.
    pub fn store_forwarded(
        &mut self,
        me: &ParticipantId,
        receipts: &[Verified<Receipt>],
        now_ms: u64,
    ) -> Result<Vec<Forwarded>, StoreError> {
        self.tx(|tx, j| keep_forwarded(tx, j, me, receipts, now_ms))
    }

    /// Holds forwarded receipts that failed verification only because this node's roster
    /// lacks their signer or the key that signed them (PROTOCOL.md 7.2): the roster may lag
    /// the relay's, and a newer one may list them ([`Self::release_receipts`]). Only a
    /// receipt naming a message this node sent, and not kept already, is held. At most
    /// `RECEIPTS_HELD_PER_SIGNER_MAX` are held per claimed signer and `RECEIPTS_HELD_MAX`
    /// in all: past either, the oldest are dropped (returned, to be logged), so that a relay
    /// forwarding made-up receipts, or a participant whose rotated-out key still signs,
    /// cannot fill this disk.
    pub fn hold_receipts(
        &mut self,
        me: &ParticipantId,
        receipts: &[Unverified],
        now_ms: u64,
    ) -> Result<HeldOutcome, StoreError> {
        self.tx(|tx, _| hold_in(tx, me, receipts, now_ms))
    }

    /// [`Self::store_forwarded`] for the receipts of a batch that verified and
    /// [`Self::hold_receipts`] for those that failed only for want of a newer roster, in
    /// one transaction: a failure keeps neither, so nothing kept goes untold.
    pub fn take_forwarded(
        &mut self,
        me: &ParticipantId,
        verified: &[Verified<Receipt>],
        unverified: &[Unverified],
        now_ms: u64,
    ) -> Result<(Vec<Forwarded>, HeldOutcome), StoreError> {
        self.tx(|tx, j| {
            let fresh = keep_forwarded(tx, j, me, verified, now_ms)?;
            Ok((fresh, hold_in(tx, me, unverified, now_ms)?))
        })
    }

    /// The forwarded receipts held for a newer roster, oldest first (at most
    /// `RECEIPTS_HELD_MAX`).
    pub fn held_receipts(&self) -> Result<Vec<HeldReceipt>, StoreError> {
        let mut st = self.conn.prepare_cached(
            "SELECT digest, bytes, key, sig, reason, received_at_ms FROM receipts_held ORDER BY rowid LIMIT ?1",
        )?;
        let rows = st.query_map([crate::limits::RECEIPTS_HELD_MAX as i64], |r| {
            Ok(HeldReceipt {
                digest: Digest(blob_array::<32>(r.get(0)?, 0)?),
                signed: signed_at::<Receipt>(r, 1)?,
                reason: r.get(4)?,
                received_at_ms: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Takes held receipts out of `receipts_held` in one transaction: those in `passed`
    /// verify against the roster now in force and are kept as forwarded receipts are
    /// ([`Self::store_forwarded`], as if they had just arrived, `now_ms`), and those in
    /// `failed` fail for a reason no newer roster mends (a bad signature by a key now listed,
    /// a signer now revoked) and are dropped. Returns what each of `passed` told.
    pub fn release_receipts(
        &mut self,
        me: &ParticipantId,
        passed: &[Verified<Receipt>],
        failed: &[Digest],
        now_ms: u64,
    ) -> Result<Vec<Forwarded>, StoreError> {
        self.tx(|tx, j| {
            let gone = passed
                .iter()
                .map(|v| v.signed().digest())
                .chain(failed.iter().copied());
            for d in gone {
                tx.prepare_cached("DELETE FROM receipts_held WHERE digest = ?1")?
                    .execute([&d.0[..]])?;
            }
            keep_forwarded(tx, j, me, passed, now_ms)
        })
    }

    /// Sent messages whose respond-by has passed with recipients that have not
    /// acknowledged: marks them overdue and returns each with its newly overdue recipients.
    /// The status goes with the escalation so that a drill's is never taken for actual
    /// traffic.
    ///
    /// Each recipient is escalated at most once per message: the escalation is recorded
    /// (`escalated`) in the transaction that marks the row, as not yet announced, until
    /// [`Self::overdue_announced`]; a row without its mark whose recipient was escalated
    /// before (a row dropped by one relay's acceptance and brought back by another's, or
    /// by a receipt) gets its mark back and is not returned.
    pub fn mark_overdue(&mut self, now_ms: u64) -> Result<Vec<Overdue>, StoreError> {
        self.tx(|tx, j| {
            let mut found: Vec<Overdue> = Vec::new();
            let mut marked_before: Vec<(MessageId, String, u64)> = Vec::new();
            {
                // Driven by `sent_by_respond_by`: only messages with a passed deadline are
                // looked at, and only their newly overdue rows read the message itself.
                let mut st = tx.prepare_cached(
                    "SELECT m.id, m.recipient, s.bytes, s.key, s.sig, e.at_ms FROM sent s JOIN matrix m ON m.id = s.id
                     LEFT JOIN escalated e ON e.id = m.id AND e.recipient = m.recipient
                     WHERE s.respond_by_ms IS NOT NULL AND s.respond_by_ms <= ?1 AND m.acked_at_ms IS NULL AND m.overdue_at_ms IS NULL",
                )?;
                let rows = st.query_map([now_ms], |r| {
                    Ok((MessageId(blob_array::<16>(r.get(0)?, 0)?), r.get::<_, String>(1)?, signed_at::<Envelope>(r, 2)?, r.get::<_, Option<u64>>(5)?))
                })?;
                for row in rows {
                    let (id, rcpt, signed, before) = row?;
                    if let Some(at_ms) = before {
                        marked_before.push((id, rcpt, at_ms));
                        continue;
                    }
                    let Ok(rcpt) = ParticipantId::new(&rcpt) else { continue };
                    Overdue::add(&mut found, id, rcpt, &signed);
                }
            }
            let mut mark = tx.prepare_cached("UPDATE matrix SET overdue_at_ms = ?3 WHERE id = ?1 AND recipient = ?2")?;
            for (id, r, at_ms) in &marked_before {
                mark.execute(params![&id.0[..], r, at_ms])?;
            }
            let mut record = tx.prepare_cached(
                "INSERT OR IGNORE INTO escalated (id, recipient, at_ms, announced) VALUES (?1, ?2, ?3, 0)",
            )?;
            for Overdue { id, recipients, .. } in &found {
                for r in recipients {
                    mark.execute(params![&id.0[..], r.as_str(), now_ms])?;
                    record.execute(params![&id.0[..], r.as_str(), now_ms])?;
                }
                let list = recipients.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(",");
                j.append(tx, now_ms, "message.overdue", &id.to_string(), list.as_bytes())?;
            }
            Ok(found)
        })
    }

    /// The operator has been told of escalation `id` for `recipients` (log line, event,
    /// `on_overdue` hook ended): it is not announced again at the next start.
    pub fn overdue_announced(
        &mut self,
        id: &MessageId,
        recipients: &[ParticipantId],
    ) -> Result<(), StoreError> {
        self.tx(|tx, _| {
            let mut st = tx.prepare_cached(
                "UPDATE escalated SET announced = 1 WHERE id = ?1 AND recipient = ?2 AND announced = 0",
            )?;
            for r in recipients {
                st.execute(params![&id.0[..], r.as_str()])?;
            }
            Ok(())
        })
    }

    /// Escalations made but never announced ([`Self::mark_overdue`] without
    /// [`Self::overdue_announced`]: the node stopped in between), oldest first, each with
    /// its recipients that have still not acknowledged. One whose recipients have all
    /// acknowledged since is recorded as announced instead: there is no one left to chase.
    pub fn unannounced_overdue(&mut self) -> Result<Vec<Overdue>, StoreError> {
        self.tx(|tx, _| {
            let mut found: Vec<Overdue> = Vec::new();
            let mut answered: Vec<(MessageId, String)> = Vec::new();
            {
                // A recipient whose row an acceptance dropped is still unacknowledged.
                let mut st = tx.prepare(
                    "SELECT e.id, e.recipient, m.acked_at_ms IS NOT NULL, s.bytes, s.key, s.sig
                     FROM escalated e JOIN sent s ON s.id = e.id
                     LEFT JOIN matrix m ON m.id = e.id AND m.recipient = e.recipient
                     WHERE e.announced = 0 ORDER BY e.at_ms, s.seq, e.recipient",
                )?;
                let rows = st.query_map([], |r| {
                    Ok((
                        MessageId(blob_array::<16>(r.get(0)?, 0)?),
                        r.get::<_, String>(1)?,
                        r.get::<_, bool>(2)?,
                        signed_at::<Envelope>(r, 3)?,
                    ))
                })?;
                for row in rows {
                    let (id, rcpt, acked, signed) = row?;
                    // One not to announce (acknowledged, or not a participant id) is done with.
                    match ParticipantId::new(&rcpt).ok().filter(|_| !acked) {
                        Some(recipient) => Overdue::add(&mut found, id, recipient, &signed),
                        None => answered.push((id, rcpt)),
                    }
                }
            }
            let mut st = tx.prepare_cached(
                "UPDATE escalated SET announced = 1 WHERE id = ?1 AND recipient = ?2",
            )?;
            for (id, r) in &answered {
                st.execute(params![&id.0[..], r])?;
            }
            Ok(found)
        })
    }

    /// Unacknowledged urgent received messages due for another page; marks them paged, all
    /// in one transaction (no journal entry: paging is not a record), so that a tick costs
    /// one commit however many are due, and a failure marks none of those it does not
    /// return. One last paged (or received) after `now_ms`, before the clock was stepped
    /// back, counts as paged now.
    pub fn due_pages(
        &mut self,
        now_ms: u64,
        interval_ms: u64,
    ) -> Result<Vec<Envelope>, StoreError> {
        // Due: unacknowledged, and last paged (or received) at least `interval_ms` ago. The
        // expression and condition are those of the index `inbox_page_due`, so only due
        // rows are read. A row that turns out not to page (stored before NEVER_PAGES was
        // written at arrival) is marked so and never read again.
        let cutoff = now_ms.saturating_sub(interval_ms);
        let rows: Vec<(MessageId, Signed<Envelope>)> = {
            let mut st = self.conn.prepare_cached(
                "SELECT id, bytes, key, sig FROM inbox
                 WHERE acked_at_ms IS NULL AND COALESCE(paged_at_ms, received_at_ms) <= ?1 LIMIT ?2",
            )?;
            let rows = st.query_map(
                params![cutoff, crate::limits::PAGES_PER_TICK_MAX as i64],
                |r| {
                    Ok((
                        MessageId(blob_array::<16>(r.get(0)?, 0)?),
                        signed_at::<Envelope>(r, 1)?,
                    ))
                },
            )?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        // A row stamped later than now (last paged, or received) was stamped before the
        // clock was stepped back (an NTP correction of a clock that ran fast). Kept, the
        // stamp would hold its next page until the clock had caught up with it, for as long
        // as the step; brought back to now, the message pages again an interval from now.
        // Read through the same index, past the due rows and short of NEVER_PAGES.
        let ahead: bool = self
            .conn
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM inbox WHERE acked_at_ms IS NULL
                 AND COALESCE(paged_at_ms, received_at_ms) > ?1 AND COALESCE(paged_at_ms, received_at_ms) < ?2)",
            )?
            .query_row(params![now_ms, NEVER_PAGES], |r| r.get(0))?;
        if rows.is_empty() && !ahead {
            // Nothing to mark (almost every tick): no transaction.
            return Ok(Vec::new());
        }
        // The store has one connection, behind the node's store lock: nothing changes the
        // rows between that read and these marks.
        let tx = self.conn.transaction()?;
        let mut due = Vec::new();
        if ahead {
            tx.prepare_cached(
                "UPDATE inbox SET paged_at_ms = ?1 WHERE acked_at_ms IS NULL
                 AND COALESCE(paged_at_ms, received_at_ms) > ?1 AND COALESCE(paged_at_ms, received_at_ms) < ?2",
            )?
            .execute(params![now_ms, NEVER_PAGES])?;
        }
        {
            let mut mark = tx.prepare_cached("UPDATE inbox SET paged_at_ms = ?2 WHERE id = ?1")?;
            for (id, s) in rows {
                let env = s.decode_unverified().ok().filter(|e| e.precedence.pages());
                let next: i64 = if env.is_some() {
                    now_ms as i64
                } else {
                    NEVER_PAGES
                };
                mark.execute(params![&id.0[..], next])?;
                due.extend(env);
            }
        }
        tx.commit()?;
        Ok(due)
    }

    /// Received messages, newest first.
    pub fn inbox(&self, limit: usize) -> Result<Vec<InboxMessage>, StoreError> {
        Ok(inbox_page(&self.conn, None, limit, false)?.unwrap_or_default())
    }

    /// Received messages not yet acknowledged, newest first: all of them up to `limit`,
    /// however many acknowledged ones are newer (`GET /v1/inbox?unacknowledged=true`).
    pub fn unacknowledged(&self, limit: usize) -> Result<Vec<InboxMessage>, StoreError> {
        Ok(inbox_page(&self.conn, None, limit, true)?.unwrap_or_default())
    }

    /// One received message.
    pub fn inbox_message(&self, id: &MessageId) -> Result<Option<InboxMessage>, StoreError> {
        inbox_message(&self.conn, id)
    }

    /// One sent message with its matrix.
    pub fn sent_message(&self, id: &MessageId) -> Result<Option<SentMessage>, StoreError> {
        sent_message(&self.conn, id)
    }

    /// Forwarded receipts received (for audits and drills).
    pub fn receipts_in(&self) -> Result<Vec<Signed<Receipt>>, StoreError> {
        receipts_in(&self.conn)
    }
}

/// Forwarded receipts received, in the order they arrived.
fn receipts_in(conn: &Connection) -> Result<Vec<Signed<Receipt>>, StoreError> {
    let mut st =
        conn.prepare_cached("SELECT bytes, key, sig FROM receipts_in ORDER BY received_at_ms")?;
    let rows = st.query_map([], |r| signed_at(r, 0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// One received message.
fn inbox_message(conn: &Connection, id: &MessageId) -> Result<Option<InboxMessage>, StoreError> {
    conn.query_row(
        &format!("SELECT {INBOX_COLUMNS} FROM inbox WHERE id = ?1"),
        [&id.0[..]],
        InboxRow::read,
    )
    .optional()?
    .map(InboxRow::into_message)
    .transpose()
}

/// Received messages, newest first (by arrival, then by row), the first `limit` of those
/// after received message `before` in that order (from the newest without it); only those
/// not yet acknowledged with `unacknowledged`. `None` if this node received no message
/// `before`. [`inbox_rows`], collected.
fn inbox_page(
    conn: &Connection,
    before: Option<&MessageId>,
    limit: usize,
    unacknowledged: bool,
) -> Result<Option<Vec<InboxMessage>>, StoreError> {
    collected(|each| inbox_rows(conn, before, limit, unacknowledged, each))
}

/// What a list's walk (`inbox_rows`, `sent_rows`, `quarantine_each`) gives, collected, or
/// `None` when it names nothing `before`: a list's page for a caller that keeps it whole.
fn collected<T>(
    walk: impl FnOnce(&mut dyn FnMut(T) -> ControlFlow<()>) -> Result<Option<()>, StoreError>,
) -> Result<Option<Vec<T>>, StoreError> {
    let mut out = Vec::new();
    let listed = walk(&mut |item| {
        out.push(item);
        ControlFlow::Continue(())
    })?;
    Ok(listed.map(|()| out))
}

/// [`inbox_page`]'s messages, each given to `each` as it is read, until `each` breaks: the
/// local API stops a page once its answer would pass its bytes (`API_PAGE_BYTES_MAX`), and
/// so reads no more than it answers. Read through the deadline tick's partial index with
/// `unacknowledged`, which holds the unacknowledged rows alone (by time, SQLite read every
/// acknowledged message, bodies included, to find none). `None` if this node received no
/// message `before`.
fn inbox_rows(
    conn: &Connection,
    before: Option<&MessageId>,
    limit: usize,
    unacknowledged: bool,
    mut each: impl FnMut(InboxMessage) -> ControlFlow<()>,
) -> Result<Option<()>, StoreError> {
    let Some((time, row)) = inbox_cursor(conn, before)? else {
        return Ok(None);
    };
    let (from, only) = if unacknowledged {
        ("inbox INDEXED BY inbox_page_due", "acked_at_ms IS NULL AND")
    } else {
        ("inbox", "")
    };
    let mut st = conn.prepare_cached(&format!(
        "SELECT {INBOX_COLUMNS} FROM {from} WHERE {only} received_at_ms <= ?2 \
         AND (received_at_ms < ?2 OR rowid < ?3) \
         ORDER BY received_at_ms DESC, rowid DESC LIMIT ?1"
    ))?;
    let rows = st.query_map(params![limit as i64, time, row], InboxRow::read)?;
    for row in rows {
        if each(row?.into_message()?).is_break() {
            break;
        }
    }
    Ok(Some(()))
}

/// Where a page of the inbox after received message `before` starts, in the list's order:
/// below this arrival time and row (from the top without `before`). `None` if this node
/// received no message `before`.
fn inbox_cursor(
    conn: &Connection,
    before: Option<&MessageId>,
) -> Result<Option<(i64, i64)>, StoreError> {
    let Some(id) = before else {
        return Ok(Some((i64::MAX, i64::MAX)));
    };
    Ok(conn
        .query_row(
            "SELECT received_at_ms, rowid FROM inbox WHERE id = ?1",
            [&id.0[..]],
            |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)),
        )
        .optional()?)
}

/// The received messages that reference our message `references` (its answers), as
/// [`inbox_rows`] lists the inbox: newest first, after received message `before`, only
/// those not yet acknowledged with `unacknowledged`, each given to `each` as it is read
/// until `each` breaks. Which they are is read along `inbox_answering` where the store has
/// it ([`answering`]; with each row's
/// acknowledgement for `unacknowledged`), then each message, one at a time. `None` if this
/// node received no message `before`.
fn answer_rows(
    conn: &Connection,
    references: &MessageId,
    before: Option<&MessageId>,
    limit: usize,
    unacknowledged: bool,
    mut each: impl FnMut(InboxMessage) -> ControlFlow<()>,
) -> Result<Option<()>, StoreError> {
    let Some((time, row)) = inbox_cursor(conn, before)? else {
        return Ok(None);
    };
    let only = if unacknowledged {
        "AND i.acked_at_ms IS NULL"
    } else {
        ""
    };
    let inbox = answering(conn)?;
    let rows: Vec<i64> = conn
        .prepare_cached(&format!(
            "SELECT i.rowid FROM answers a JOIN {inbox} ON i.id = a.id WHERE a.ref = ?4 {only} \
             AND i.received_at_ms <= ?2 AND (i.received_at_ms < ?2 OR i.rowid < ?3) \
             ORDER BY i.received_at_ms DESC, i.rowid DESC LIMIT ?1"
        ))?
        .query_map(params![limit as i64, time, row, &references.0[..]], |r| {
            r.get(0)
        })?
        .collect::<rusqlite::Result<_>>()?;
    let mut st = conn.prepare_cached(&format!(
        "SELECT {INBOX_COLUMNS} FROM inbox WHERE rowid = ?1"
    ))?;
    for row in rows {
        // Read in the snapshot that listed it: always there.
        let Some(m) = st.query_row([row], InboxRow::read).optional()? else {
            continue;
        };
        if each(m.into_message()?).is_break() {
            break;
        }
    }
    Ok(Some(()))
}

/// Deliveries held in quarantine, newest first (by arrival, then by row), the first `limit`
/// of those after the one held under `before` in that order (from the newest without it).
/// `None` if nothing is held under `before` (it may have been discarded, or released, since
/// it was listed). [`quarantine_each`], collected.
fn quarantine_page(
    conn: &Connection,
    before: Option<&Digest>,
    limit: usize,
) -> Result<Option<Vec<Quarantined>>, StoreError> {
    collected(|each| quarantine_each(conn, before, limit, each))
}

/// [`quarantine_page`]'s deliveries, each given to `each` as it is read, until `each`
/// breaks (as [`inbox_rows`]): the local API stops a page once its answer would pass its
/// bytes, and so reads no more deliveries (each up to `ENVELOPE_BYTES_MAX`) than it
/// answers, one at a time. `None` if nothing is held under `before`.
fn quarantine_each(
    conn: &Connection,
    before: Option<&Digest>,
    limit: usize,
    mut each: impl FnMut(Quarantined) -> ControlFlow<()>,
) -> Result<Option<()>, StoreError> {
    // Where the page starts: below this arrival time and row, in the list's order.
    let (time, row) = match before {
        None => (i64::MAX, i64::MAX),
        Some(d) => {
            let at = conn
                .query_row(
                    "SELECT received_at_ms, rowid FROM quarantine WHERE digest = ?1",
                    [&d.0[..]],
                    |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)),
                )
                .optional()?;
            match at {
                Some(at) => at,
                None => return Ok(None),
            }
        }
    };
    quarantine_rows(conn, time, row, limit, |q, _| each(q))?;
    Ok(Some(()))
}

/// Up to `limit` deliveries held in quarantine, newest first, from below arrival time
/// `time` and row `row`, each given to `each` with its place as it is read, until `each`
/// breaks.
fn quarantine_rows(
    conn: &Connection,
    time: i64,
    row: i64,
    limit: usize,
    mut each: impl FnMut(Quarantined, QuarantinePlace) -> ControlFlow<()>,
) -> Result<(), StoreError> {
    let mut st = conn.prepare_cached(QUARANTINE_PAGE_SQL)?;
    let rows = st.query_map(params![limit as i64, time, row], |r| {
        let place = QuarantinePlace {
            received_at_ms: r.get(5)?,
            row: r.get(6)?,
        };
        Ok((
            Quarantined {
                digest: Digest(blob_array::<32>(r.get(0)?, 0)?),
                signed: signed_at::<Envelope>(r, 1)?,
                reason: r.get(4)?,
                received_at_ms: r.get(5)?,
            },
            place,
        ))
    })?;
    for r in rows {
        let (q, place) = r?;
        if each(q, place).is_break() {
            break;
        }
    }
    Ok(())
}

/// Sent messages with their matrices, newest first (by sequence number), the first `limit`
/// of those after sent message `before` in that order (from the newest without it). `None`
/// if this node sent no message `before`. [`sent_rows`], collected.
fn sent_page(
    conn: &Connection,
    before: Option<&MessageId>,
    limit: usize,
) -> Result<Option<Vec<SentMessage>>, StoreError> {
    collected(|each| sent_rows(conn, before, limit, each))
}

/// [`sent_page`]'s messages, each given to `each` as it is read, until `each` breaks (as
/// [`inbox_rows`]). `None` if this node sent no message `before`.
fn sent_rows(
    conn: &Connection,
    before: Option<&MessageId>,
    limit: usize,
    mut each: impl FnMut(SentMessage) -> ControlFlow<()>,
) -> Result<Option<()>, StoreError> {
    let below = match before {
        None => i64::MAX,
        Some(id) => {
            let seq = conn
                .query_row("SELECT seq FROM sent WHERE id = ?1", [&id.0[..]], |r| {
                    r.get::<_, i64>(0)
                })
                .optional()?;
            match seq {
                Some(seq) => seq,
                None => return Ok(None),
            }
        }
    };
    let ids: Vec<MessageId> = {
        let mut st =
            conn.prepare_cached("SELECT id FROM sent WHERE seq < ?2 ORDER BY seq DESC LIMIT ?1")?;
        let rows = st.query_map(params![limit as i64, below], |r| {
            Ok(MessageId(blob_array::<16>(r.get(0)?, 0)?))
        })?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    for id in ids {
        if let Some(s) = sent_message(conn, &id)? {
            if each(s).is_break() {
                break;
            }
        }
    }
    Ok(Some(()))
}

/// [`NodeStore::compose`]'s work in its transaction `tx` (with the journal `j`), recording
/// `idem`'s key with the message if given (and forgetting the oldest keys past
/// [`crate::limits::IDEMPOTENCY_KEYS_MAX`]).
#[allow(clippy::too_many_arguments)]
fn compose_in(
    tx: &rusqlite::Transaction<'_>,
    j: &mut Journal,
    me: &ParticipantId,
    key: &SigningKey,
    draft: Draft,
    expected: &[ParticipantId],
    relays: usize,
    now_ms: u64,
    idem: Option<&Idempotency>,
) -> Result<Result<Signed<Envelope>, hotline_proto::EncodeError>, StoreError> {
    let seq = next_seq(current_seq(tx)?)?;
    let env = Envelope {
        version: PROTOCOL_VERSION,
        id: MessageId::generate(now_ms),
        sender: me.clone(),
        seq: Seq(seq),
        audience: draft.audience,
        kind: draft.kind,
        precedence: draft.precedence,
        status: draft.status,
        created_at_ms: now_ms,
        respond_by_ms: draft.respond_by_ms,
        references: draft.references,
        category: draft.category,
        subject: draft.subject,
        body: draft.body,
    };
    let signed = match Signed::sign(&env, key) {
        Ok(s) => s,
        // Nothing was written: the transaction is dropped.
        Err(e) => return Ok(Err(e)),
    };
    set_seq(tx, seq)?;
    tx.execute(
        "INSERT INTO sent (id, seq, bytes, key, sig, created_at_ms, respond_by_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![&env.id.0[..], seq, signed.bytes(), &signed.key().0[..], &signed.signature().0[..], now_ms, env.respond_by_ms],
    )?;
    for relay in 0..relays {
        tx.execute(
            "INSERT INTO outbox (relay, id, seq) VALUES (?1, ?2, ?3)",
            params![relay as i64, &env.id.0[..], seq],
        )?;
    }
    for r in expected {
        tx.execute(
            "INSERT OR IGNORE INTO matrix (id, recipient) VALUES (?1, ?2)",
            params![&env.id.0[..], r.as_str()],
        )?;
    }
    j.append(
        tx,
        now_ms,
        "message.sent",
        &env.id.to_string(),
        &encode_record(&signed)?,
    )?;
    index_answer(tx, &env, "inbox")?;
    if let Some(idem) = idem {
        tx.prepare_cached(
            "INSERT INTO idempotency (key, request, id, created_at_ms) VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![
            idem.key,
            &idem.request.0[..],
            &env.id.0[..],
            now_ms
        ])?;
        let newest = tx.last_insert_rowid();
        tx.prepare_cached("DELETE FROM idempotency WHERE n <= ?1")?
            .execute([newest.saturating_sub(crate::limits::IDEMPOTENCY_KEYS_MAX as i64)])?;
    }
    Ok(Ok(signed))
}

/// Forgets the idempotency keys older than [`crate::limits::IDEMPOTENCY_KEY_KEPT_MS`] at
/// `now_ms` (read along `idempotency_by_time`).
fn forget_old_keys(tx: &rusqlite::Transaction<'_>, now_ms: u64) -> Result<(), StoreError> {
    tx.prepare_cached("DELETE FROM idempotency WHERE created_at_ms < ?1")?
        .execute([keys_kept_since(now_ms)])?;
    Ok(())
}

/// The oldest time an idempotency key kept at `now_ms` may have.
fn keys_kept_since(now_ms: u64) -> i64 {
    now_ms.saturating_sub(crate::limits::IDEMPOTENCY_KEY_KEPT_MS) as i64
}

/// [`NodeStore::keyed`], on `conn` (or a transaction).
fn keyed(conn: &Connection, idem: &Idempotency, now_ms: u64) -> Result<Option<Keyed>, StoreError> {
    let row = conn
        .prepare_cached(
            "SELECT request, id, created_at_ms FROM idempotency WHERE key = ?1 AND created_at_ms >= ?2",
        )?
        .query_row(params![idem.key, keys_kept_since(now_ms)], |r| {
            Ok((
                blob_array::<32>(r.get(0)?, 0)?,
                blob_array::<16>(r.get(1)?, 1)?,
                r.get::<_, u64>(2)?,
            ))
        })
        .optional()?;
    Ok(row.map(|(request, id, created_at_ms)| {
        if request == idem.request.0 {
            Keyed::Same {
                id: MessageId(id),
                created_at_ms,
            }
        } else {
            Keyed::Other
        }
    }))
}

/// One sent message with its matrix.
fn sent_message(conn: &Connection, id: &MessageId) -> Result<Option<SentMessage>, StoreError> {
    type SentRow = (
        Signed<Envelope>,
        Option<u64>,
        Option<String>,
        Option<String>,
    );
    let row: Option<SentRow> = conn
        .query_row("SELECT bytes, key, sig, accepted_at_ms, rejected_code, rejected_detail FROM sent WHERE id = ?1", [&id.0[..]], |r| {
            Ok((signed_at(r, 0)?, r.get(3)?, r.get(4)?, r.get(5)?))
        })
        .optional()?;
    let Some((s, accepted, code, detail)) = row else {
        return Ok(None);
    };
    let mut st = conn.prepare_cached(
        "SELECT m.recipient, m.delivered_at_ms, m.acked_at_ms, m.officer, m.note, m.overdue_at_ms, s.delivered_ms, s.acked_ms
         FROM matrix m LEFT JOIN matrix_signed s ON s.id = m.id AND s.recipient = m.recipient
         WHERE m.id = ?1 ORDER BY m.recipient",
    )?;
    let rows = st.query_map([&id.0[..]], |r| {
        let rc: String = r.get(0)?;
        Ok(MatrixRow {
            recipient: ParticipantId::new(&rc)
                .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?,
            delivered_at_ms: r.get(1)?,
            acked_at_ms: r.get(2)?,
            officer: r.get(3)?,
            note: r.get(4)?,
            overdue_at_ms: r.get(5)?,
            delivered_signed_at_ms: r.get(6)?,
            acked_signed_at_ms: r.get(7)?,
            answered_at_ms: None,
        })
    })?;
    let mut matrix: Vec<MatrixRow> = rows.collect::<rusqlite::Result<_>>()?;
    let inbox = answering(conn)?;
    let (answers_total, first) = answer_counts(conn, inbox, id)?;
    for row in &mut matrix {
        row.answered_at_ms = first.get(row.recipient.as_str()).copied();
    }
    Ok(Some(SentMessage {
        envelope: decode_stored(&s)?,
        accepted_at_ms: accepted,
        rejected: code.map(|c| (c, detail.unwrap_or_default())),
        matrix,
        answers: answers_of(conn, inbox, id, crate::limits::ANSWERS_LISTED_MAX)?,
        answers_total,
    }))
}

/// How many received messages reference our message `id`, and when this node stored the
/// first from each sender: read along `inbox_answering` alone, no answer's row, where the
/// store has it (`inbox` as [`answering`] names it).
fn answer_counts(
    conn: &Connection,
    inbox: &str,
    id: &MessageId,
) -> Result<(u64, HashMap<String, u64>), StoreError> {
    let mut st = conn.prepare_cached(&answer_counts_sql(inbox))?;
    let mut total = 0;
    let mut first = HashMap::new();
    let rows = st.query_map([&id.0[..]], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, u64>(1)?,
            r.get::<_, u64>(2)?,
        ))
    })?;
    for row in rows {
        let (sender, at, n) = row?;
        total += n;
        first.insert(sender, at);
    }
    Ok((total, first))
}

/// The received messages that reference our message `id`, oldest first (by arrival, then by
/// row), the first `limit` of them. Which they are is read along `inbox_answering` (`inbox`
/// as [`answering`] names it); then
/// each one's envelope, one at a time, for its kind and subject: read all at once, with the
/// sort, they were every answer's envelope (bodies included) held together.
fn answers_of(
    conn: &Connection,
    inbox: &str,
    id: &MessageId,
    limit: usize,
) -> Result<Vec<Answer>, StoreError> {
    let rows: Vec<i64> = conn
        .prepare_cached(&answers_first_sql(inbox))?
        .query_map(params![&id.0[..], limit as i64], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut answers = Vec::with_capacity(rows.len());
    let mut st =
        conn.prepare_cached("SELECT bytes, key, sig, received_at_ms FROM inbox WHERE rowid = ?1")?;
    for row in rows {
        let held = st
            .query_row([row], |r| {
                Ok((signed_at::<Envelope>(r, 0)?, r.get::<_, u64>(3)?))
            })
            .optional()?;
        // Read in the snapshot that listed it: always there.
        let Some((signed, received_at_ms)) = held else {
            continue;
        };
        let e = decode_stored(&signed)?;
        answers.push(Answer {
            id: e.id,
            from: e.sender,
            kind: e.kind,
            subject: e.subject,
            received_at_ms,
        });
    }
    Ok(answers)
}

/// How the queries of a sent message's answers read `inbox`: along `inbox_answering`
/// ([`ANSWERING`]) where the store has it, else as SQLite picks (reading each answer's row:
/// slower, the same answer). A store an older release wrote gains the index at a read-write
/// open of this release's ([`NodeStore::open`]) only; one read read-only before then, as a
/// drill reads the store of a node down at the end ([`NodeReader`]), cannot add it, and a
/// query naming it was refused "no such index": none of that node's sent messages could be
/// read.
fn answering(conn: &Connection) -> Result<&'static str, StoreError> {
    let indexed = conn
        .prepare_cached(
            "SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = 'inbox_answering'",
        )?
        .exists([])?;
    Ok(if indexed { ANSWERING } else { "inbox i" })
}

/// `inbox` read along `inbox_answering`, named: by the unique index on `id`, SQLite read
/// every answer's row for its time and sender ([`answering`]).
const ANSWERING: &str = "inbox i INDEXED BY inbox_answering";

/// Per sender, when this node stored its first message that references our message `?1`,
/// and how many it stored ([`answer_counts`]), reading `inbox` as [`answering`] says.
fn answer_counts_sql(inbox: &str) -> String {
    format!(
        "SELECT i.sender, MIN(i.received_at_ms), COUNT(*) \
         FROM answers a JOIN {inbox} ON i.id = a.id WHERE a.ref = ?1 GROUP BY i.sender"
    )
}

/// The rows of the first `?2` received messages that reference our message `?1`, oldest
/// first ([`answers_of`]), reading `inbox` as [`answering`] says.
fn answers_first_sql(inbox: &str) -> String {
    format!(
        "SELECT i.rowid FROM answers a JOIN {inbox} ON i.id = a.id \
         WHERE a.ref = ?1 ORDER BY i.received_at_ms, i.rowid LIMIT ?2"
    )
}

/// A read-only connection to the node's store, for the local API's lists: each is read in
/// one read transaction, a snapshot of the store as one commit left it, without the store's
/// lock. A list of 1,000 sent messages, each with its matrix and answers, held that lock
/// across some 3,000 queries, and the links' writes (deliveries, receipts) waited behind it;
/// SQLite's write-ahead log lets this connection read while the store's writes go on.
pub struct NodeReader {
    conn: Connection,
}

impl NodeReader {
    /// Opens the store in `data_dir` for reading, once [`NodeStore::open`] has made it.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        let path = data_dir.join(DB_FILE);
        let conn = hotline_store::open_read_only(&path)?;
        conn.busy_timeout(std::time::Duration::from_millis(
            hotline_store::db::BUSY_TIMEOUT_MS,
        ))?;
        Ok(Self { conn })
    }

    /// [`inbox_page`], in one snapshot.
    pub fn inbox_page(
        &mut self,
        before: Option<&MessageId>,
        limit: usize,
        unacknowledged: bool,
    ) -> Result<Option<Vec<InboxMessage>>, StoreError> {
        // Dropped at the end, which ends the read transaction (nothing was written).
        let tx = self.conn.transaction()?;
        inbox_page(&tx, before, limit, unacknowledged)
    }

    /// [`inbox_rows`], in one snapshot: the page's messages, each given to `each` as it is
    /// read, until `each` breaks. `None` if this node received no message `before`.
    pub fn inbox_each(
        &mut self,
        before: Option<&MessageId>,
        limit: usize,
        unacknowledged: bool,
        each: impl FnMut(InboxMessage) -> ControlFlow<()>,
    ) -> Result<Option<()>, StoreError> {
        let tx = self.conn.transaction()?;
        inbox_rows(&tx, before, limit, unacknowledged, each)
    }

    /// [`answer_rows`], in one snapshot, as [`NodeReader::inbox_each`]: the received
    /// messages that reference our message `references`.
    pub fn answers_each(
        &mut self,
        references: &MessageId,
        before: Option<&MessageId>,
        limit: usize,
        unacknowledged: bool,
        each: impl FnMut(InboxMessage) -> ControlFlow<()>,
    ) -> Result<Option<()>, StoreError> {
        let tx = self.conn.transaction()?;
        answer_rows(&tx, references, before, limit, unacknowledged, each)
    }

    /// Whether this node sent message `id`.
    pub fn sent(&self, id: &MessageId) -> Result<bool, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT 1 FROM sent WHERE id = ?1", [&id.0[..]], |_| Ok(()))
            .optional()?
            .is_some())
    }

    /// [`sent_rows`], in one snapshot, as [`NodeReader::inbox_each`].
    pub fn sent_each(
        &mut self,
        before: Option<&MessageId>,
        limit: usize,
        each: impl FnMut(SentMessage) -> ControlFlow<()>,
    ) -> Result<Option<()>, StoreError> {
        let tx = self.conn.transaction()?;
        sent_rows(&tx, before, limit, each)
    }

    /// [`quarantine_each`], in one snapshot, as [`NodeReader::inbox_each`].
    pub fn quarantine_each(
        &mut self,
        before: Option<&Digest>,
        limit: usize,
        each: impl FnMut(Quarantined) -> ControlFlow<()>,
    ) -> Result<Option<()>, StoreError> {
        let tx = self.conn.transaction()?;
        quarantine_each(&tx, before, limit, each)
    }

    /// [`sent_page`], in one snapshot.
    pub fn sent_page(
        &mut self,
        before: Option<&MessageId>,
        limit: usize,
    ) -> Result<Option<Vec<SentMessage>>, StoreError> {
        let tx = self.conn.transaction()?;
        sent_page(&tx, before, limit)
    }

    /// The message that the send which came with idempotency key `key` stored, and when
    /// (the key's time), if the store keeps the key (`None` if it does not: no send with it
    /// stored a message, or the key was forgotten, [`crate::limits::IDEMPOTENCY_KEY_KEPT_MS`]),
    /// whatever request it came with. For a client that lost the answer to a keyed send and
    /// cannot ask the node again: a drill whose sender's node went down for good (it reads
    /// the store at rest, read-only). A key is recorded in the transaction that stores its
    /// message, so that a store that does not keep it, read after its node stopped, holds
    /// no message from that send.
    pub fn keyed_message(&self, key: &str) -> Result<Option<(MessageId, u64)>, StoreError> {
        let row = self
            .conn
            .prepare_cached("SELECT id, created_at_ms FROM idempotency WHERE key = ?1")?
            .query_row([key], |r| {
                Ok((blob_array::<16>(r.get(0)?, 0)?, r.get::<_, u64>(1)?))
            })
            .optional()?;
        Ok(row.map(|(id, at)| (MessageId(id), at)))
    }

    /// [`NodeStore::receipts_in`], read-only: for a check of a store at rest, which must
    /// change nothing in what it checks (a drill's `check_stores`).
    pub fn receipts_in(&self) -> Result<Vec<Signed<Receipt>>, StoreError> {
        receipts_in(&self.conn)
    }

    /// What the quarantine holds ([`NodeStore::quarantine_size`], without whether it is
    /// full, which is the running node's limit), read-only.
    pub fn quarantine_size(&self) -> Result<QuarantineSize, StoreError> {
        quarantine_size(&self.conn)
    }
}

/// Refusals that a later attempt may overcome; the message stays in the outbox.
pub fn retryable(code: RejectCode) -> bool {
    matches!(
        code,
        RejectCode::RateLimited | RejectCode::QueueFull | RejectCode::StorageUnavailable
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::BTreeSet;

    use hotline_proto::{Audience, Kind, Precedence, Status};

    use super::*;

    const NOW: u64 = 1_800_000_000_000;
    const EVERY: u64 = 1_000;

    fn pid(s: &str) -> ParticipantId {
        ParticipantId::new(s).unwrap()
    }

    fn envelope(seq: u64, precedence: Precedence) -> Envelope {
        Envelope {
            version: PROTOCOL_VERSION,
            id: MessageId::random(),
            sender: pid("KAZ"),
            seq: Seq(seq),
            audience: Audience::Participants(vec![pid("KGZ")]),
            kind: Kind::Alert,
            precedence,
            status: Status::Actual,
            created_at_ms: NOW,
            respond_by_ms: None,
            references: vec![],
            category: None,
            subject: format!("message {seq}"),
            body: String::new(),
        }
    }

    fn ids(envs: &[Envelope]) -> BTreeSet<MessageId> {
        envs.iter().map(|e| e.id).collect()
    }

    /// A store with a row in each table of signed records; the store's directory.
    fn store_with_every_record() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let mut store = NodeStore::open(dir.path()).unwrap();
        let me = pid("KGZ");
        let key = SigningKey::from_bytes(&[3; 32]);
        let draft = Draft::alert(&[pid("KAZ")], "sent");
        let sent = store
            .compose(&me, &key, draft, &[pid("KAZ")], 1, NOW)
            .unwrap()
            .unwrap();
        let kaz = SigningKey::from_bytes(&[1; 32]);
        let received = Signed::sign(&envelope(1, Precedence::Routine), &kaz).unwrap();
        let env = received.decode_unverified().unwrap();
        let odd = Signed::sign(&envelope(2, Precedence::Routine), &kaz).unwrap();
        store
            .store_deliveries(
                &[(received, Ok(env.clone())), (odd, Err("a test".into()))],
                NOW,
            )
            .unwrap();
        store
            .acknowledge(&me, &key, &env.id, "Duty officer", None, 1, NOW)
            .unwrap()
            .unwrap();
        let receipt = Receipt {
            version: PROTOCOL_VERSION,
            recipient: pid("KAZ"),
            kind: ReceiptKind::Delivered,
            created_at_ms: NOW,
            items: vec![ReceiptItem {
                id: sent.decode_unverified().unwrap().id,
                sender: me.clone(),
                digest: sent.digest(),
            }],
        };
        let signed = Signed::sign(&receipt, &kaz).unwrap();
        let verified = signed.verify_with(&signed.key()).unwrap();
        store.store_forwarded(&me, &[verified], NOW).unwrap();
        dir
    }

    /// A store in `dir` holding one message received from KAZ (stored as new): the store,
    /// KAZ's key and the message.
    fn store_with_one_received(dir: &Path) -> (NodeStore, SigningKey, Signed<Envelope>) {
        let mut store = NodeStore::open(dir).unwrap();
        let kaz = SigningKey::from_bytes(&[1; 32]);
        let signed = Signed::sign(&envelope(1, Precedence::Routine), &kaz).unwrap();
        let env = signed.decode_unverified().unwrap();
        let (out, _) = store
            .store_deliveries(&[(signed.clone(), Ok(env))], NOW)
            .unwrap();
        assert_eq!(out, [Stored::New]);
        (store, kaz, signed)
    }

    /// A send's idempotency key is checked and recorded in the transaction that composes:
    /// the same request again stores nothing and names the message stored; another request
    /// with the key stores nothing and says so; a key is forgotten after
    /// `IDEMPOTENCY_KEY_KEPT_MS`, and the oldest past `IDEMPOTENCY_KEYS_MAX`, so that the
    /// table stays bounded.
    #[test]
    fn a_kept_idempotency_key_composes_once_and_is_forgotten_in_time() {
        use crate::limits::{IDEMPOTENCY_KEYS_MAX, IDEMPOTENCY_KEY_KEPT_MS};
        let dir = tempfile::tempdir().unwrap();
        let mut store = NodeStore::open(dir.path()).unwrap();
        let (me, key) = (pid("KAZ"), SigningKey::from_bytes(&[1; 32]));
        let draft = |subject: &str| Draft::alert(&[pid("KGZ")], subject);
        let idem = |k: &str, request: u8| Idempotency {
            key: k.into(),
            request: Digest([request; 32]),
        };
        let sent = |store: &NodeStore| -> i64 {
            store
                .conn
                .query_row("SELECT COUNT(*) FROM sent", [], |r| r.get(0))
                .unwrap()
        };
        let compose = |store: &mut NodeStore, subject: &str, i: &Idempotency, now: u64| {
            store
                .compose_keyed(&me, &key, draft(subject), &[pid("KGZ")], 1, now, i)
                .unwrap()
                .unwrap()
        };
        let Composed::New(first) = compose(&mut store, "first", &idem("k", 1), NOW) else {
            panic!("a new key composes");
        };
        let id = first.decode_unverified().unwrap().id;
        let same = Keyed::Same {
            id,
            created_at_ms: NOW,
        };
        assert_eq!(
            store.keyed(&idem("k", 1), NOW + 1).unwrap(),
            Some(same.clone())
        );
        assert!(matches!(
            compose(&mut store, "first", &idem("k", 1), NOW + 1),
            Composed::Before(k) if k == same
        ));
        assert!(matches!(
            compose(&mut store, "other", &idem("k", 2), NOW + 1),
            Composed::Before(Keyed::Other)
        ));
        assert_eq!(sent(&store), 1, "nothing more was stored");
        assert_eq!(store.keyed(&idem("unknown", 1), NOW).unwrap(), None);
        // A reader of the store at rest finds the message by its key alone (a drill whose
        // send got no answer and whose node went down), and nothing under a key not kept.
        let reader = NodeReader::open(dir.path()).unwrap();
        assert_eq!(reader.keyed_message("k").unwrap(), Some((id, NOW)));
        assert_eq!(reader.keyed_message("unknown").unwrap(), None);
        drop(reader);
        // Kept for its time and no longer: the key then names a new message.
        let last = NOW + IDEMPOTENCY_KEY_KEPT_MS;
        assert_eq!(store.keyed(&idem("k", 1), last).unwrap(), Some(same));
        assert_eq!(store.keyed(&idem("k", 1), last + 1).unwrap(), None);
        assert!(matches!(
            compose(&mut store, "later", &idem("k", 1), last + 1),
            Composed::New(_)
        ));
        assert_eq!(sent(&store), 2);
        // A compose without a key forgets the keys past their time too.
        store
            .compose(&me, &key, draft("plain"), &[pid("KGZ")], 1, last * 2)
            .unwrap()
            .unwrap();
        let kept = |store: &NodeStore| -> i64 {
            store
                .conn
                .query_row("SELECT COUNT(*) FROM idempotency", [], |r| r.get(0))
                .unwrap()
        };
        assert_eq!(kept(&store), 0);
        // At most IDEMPOTENCY_KEYS_MAX, the oldest going first.
        let now = last * 2;
        {
            let tx = store.conn.transaction().unwrap();
            for n in 0..IDEMPOTENCY_KEYS_MAX {
                tx.execute(
                    "INSERT INTO idempotency (key, request, id, created_at_ms) VALUES (?1, ?2, ?3, ?4)",
                    params![format!("old-{n}"), &[0u8; 32][..], &id.0[..], now],
                )
                .unwrap();
            }
            tx.commit().unwrap();
        }
        assert!(store.keyed(&idem("old-0", 0), now).unwrap().is_some());
        assert!(matches!(
            compose(&mut store, "newest", &idem("newest", 1), now),
            Composed::New(_)
        ));
        assert_eq!(kept(&store), IDEMPOTENCY_KEYS_MAX as i64);
        assert_eq!(store.keyed(&idem("old-0", 0), now).unwrap(), None);
        assert!(store.keyed(&idem("old-1", 0), now).unwrap().is_some());
        assert!(store.keyed(&idem("newest", 1), now).unwrap().is_some());
    }

    /// A record that no longer decodes (a damaged store, one from a newer version) is a
    /// `Record` error naming what is wrong, not a SQLite failure.
    #[test]
    fn a_stored_record_that_does_not_decode_is_a_record_error() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _, _) = store_with_one_received(dir.path());
        assert_eq!(store.inbox(10).unwrap().len(), 1);
        store
            .conn
            .execute_batch("UPDATE inbox SET bytes = x'ff'")
            .unwrap();
        let e = store.inbox(10).expect_err("undecodable");
        assert!(matches!(e, StoreError::Record(_)), "{e:?}");
        assert!(
            e.to_string().starts_with("a stored record does not decode"),
            "{e}"
        );
    }

    /// The schema version `node.db` records, read on a connection of its own.
    fn user_version(dir: &Path) -> i64 {
        hotline_store::open(&dir.join(DB_FILE), false)
            .unwrap()
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap()
    }

    /// The tables `node.db` has, by name.
    fn tables(dir: &Path) -> Vec<String> {
        let conn = hotline_store::open(&dir.join(DB_FILE), false).unwrap();
        let mut st = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .unwrap();
        let names = st.query_map([], |r| r.get(0)).unwrap();
        names.collect::<Result<_, _>>().unwrap()
    }

    /// A restore that died between setting the store aside and putting its copy in place
    /// (as `hotline restore` once did it, in two renames) left no `node.db`: a node started
    /// then must not create an empty store, showing its officers nothing they had.
    #[test]
    fn a_node_does_not_create_an_empty_store_beside_one_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        drop(NodeStore::open(dir.path()).unwrap());
        let path = dir.path().join(DB_FILE);
        std::fs::rename(
            &path,
            dir.path().join("node-replaced-20250101T000000.000Z.db"),
        )
        .unwrap();
        let r = NodeStore::open(dir.path()).map(drop);
        assert!(r.is_err(), "a node started on an empty store: {r:?}");
        assert!(!path.exists(), "no store created");
        let e = r.unwrap_err().to_string();
        assert!(e.contains("node-replaced-20250101T000000.000Z.db"), "{e}");
    }

    #[test]
    fn a_new_store_records_the_schema_version() {
        let dir = tempfile::tempdir().unwrap();
        drop(NodeStore::open(dir.path()).unwrap());
        assert_eq!(user_version(dir.path()), SCHEMA_VERSION);
        // Opened again, it stays there.
        drop(NodeStore::open(dir.path()).unwrap());
        assert_eq!(user_version(dir.path()), SCHEMA_VERSION);
    }

    /// A store from before the version was recorded (user_version 0, and, older still,
    /// without a derived table) keeps what it holds and is brought to [`SCHEMA_VERSION`].
    #[test]
    fn a_store_from_before_the_schema_version_is_brought_to_it_with_its_data() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _, signed) = store_with_one_received(dir.path());
        let id = signed.decode_unverified().unwrap().id;
        store
            .conn
            .execute_batch("DROP TABLE answers; PRAGMA user_version = 0")
            .unwrap();
        drop(store);
        assert_eq!(user_version(dir.path()), 0);

        let store = NodeStore::open(dir.path()).unwrap();
        let inbox = store.inbox(10).unwrap();
        assert_eq!(inbox.len(), 1);
        assert_eq!(inbox[0].envelope.id, id);
        drop(store);
        assert_eq!(user_version(dir.path()), SCHEMA_VERSION);
        assert!(tables(dir.path()).iter().any(|t| t == "answers"));
    }

    /// A store written by a newer node is refused as such, naming the file, and left as it
    /// was: its version, its tables (one this node would create is not) and its bytes.
    #[test]
    fn a_store_from_a_newer_node_is_refused_and_left_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _, _) = store_with_one_received(dir.path());
        store
            .conn
            .execute_batch("DROP TABLE answers; PRAGMA user_version = 99")
            .unwrap();
        drop(store);
        let path = dir.path().join(DB_FILE);
        let before = (std::fs::read(&path).unwrap(), tables(dir.path()));

        let err = NodeStore::open(dir.path())
            .err()
            .expect("a newer node's store is refused");
        let text = err.to_string();
        match err {
            StoreError::NewerSchema {
                path: named,
                found,
                supported,
                what,
            } => assert_eq!(
                (named, found, supported, what),
                (path.clone(), 99, SCHEMA_VERSION, "node")
            ),
            other => panic!("expected NewerSchema, got {other:?}"),
        }
        assert!(
            text.contains("node.db was written by a newer version of the node")
                && text.contains("schema version 99")
                && text.contains(&format!("up to {SCHEMA_VERSION}"))
                && !text.contains("corrupt"),
            "{text}"
        );
        assert_eq!(user_version(dir.path()), 99);
        let after = (std::fs::read(&path).unwrap(), tables(dir.path()));
        assert!(after.1.iter().all(|t| t != "answers"), "{:?}", after.1);
        assert!(before == after, "the store was changed");
    }

    #[test]
    fn a_held_message_delivered_again_after_its_key_left_the_roster_is_a_duplicate() {
        // A relay restored from a backup (or `relay redeliver`) delivers again what this node
        // holds. If the signer's key has since been rotated out (or the signer revoked), the
        // copy fails the roster check; but it is the very message stored when it passed:
        // receipted again, not quarantined.
        let dir = tempfile::tempdir().unwrap();
        let (mut store, kaz, signed) = store_with_one_received(dir.path());
        let env = signed.decode_unverified().unwrap();
        let reason = "key 8a88e3dd7409f195 is not authorised for this signer".to_owned();
        let (out, items) = store
            .store_deliveries(&[(signed.clone(), Err(reason.clone()))], NOW + 1)
            .unwrap();
        assert_eq!(out, [Stored::Duplicate]);
        assert_eq!(
            items,
            [ReceiptItem {
                id: env.id,
                sender: pid("KAZ"),
                digest: signed.digest()
            }],
            "receipted again, so that the relay stops delivering it"
        );
        assert!(store.quarantined(10).unwrap().is_empty());
        assert_eq!(store.quarantine_size().0.held, 0);

        // Other bytes under that id are not the message held: quarantined, as before.
        let mut altered = env.clone();
        altered.body = "altered".into();
        let altered = Signed::sign(&altered, &kaz).unwrap();
        let (out, _) = store
            .store_deliveries(&[(altered, Err(reason.clone()))], NOW + 2)
            .unwrap();
        assert_eq!(out, [Stored::Quarantined(reason)]);
        assert_eq!(store.quarantined(10).unwrap().len(), 1);
    }

    /// A walk down the quarantine (`quarantined_below`) lists every delivery once, newest
    /// first, and goes on when what it listed leaves the quarantine meanwhile (a release or
    /// a discard between pages), as the recheck against a newer roster does; a digest cursor
    /// would end there (`quarantine_page` answers `None`).
    #[test]
    fn a_walk_down_the_quarantine_survives_the_rows_it_listed_leaving() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = NodeStore::open(dir.path()).unwrap();
        let forger = SigningKey::from_bytes(&[9; 32]);
        let held: Vec<_> = (1..=5)
            .map(|seq| Signed::sign(&envelope(seq, Precedence::Routine), &forger).unwrap())
            .collect();
        for (i, signed) in held.iter().enumerate() {
            // Two arrive at once: the row orders them.
            let at = NOW + (i as u64 / 2);
            store
                .store_deliveries(&[(signed.clone(), Err("bad signature".into()))], at)
                .unwrap();
        }
        let mut place = None;
        let mut seen = Vec::new();
        loop {
            let (page, last) = store.quarantined_below(place, 2).unwrap();
            for q in &page {
                store
                    .discard_quarantined(Some(&q.digest), "test", NOW + 10, 1)
                    .unwrap();
                seen.push(q.digest);
            }
            match last {
                Some(p) => place = Some(p),
                None => break,
            }
        }
        let newest_first: Vec<_> = held.iter().rev().map(Signed::digest).collect();
        assert_eq!(seen, newest_first);
        assert_eq!(store.quarantine_size().0.held, 0);
    }

    #[test]
    fn another_message_under_an_id_the_inbox_holds_is_held_not_dropped_as_a_duplicate() {
        // A member that was sent KAZ's message signs its own under the same id and has a
        // second relay deliver it here first (or the other way round). Both verify. The one
        // shown stays; the other is held where an officer can see it, and the receipt names
        // each by the content this node holds for it, never one for the other's bytes.
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _, genuine) = store_with_one_received(dir.path());
        let env = genuine.decode_unverified().unwrap();
        let mallory = SigningKey::from_bytes(&[9; 32]);
        let mut copy = env.clone();
        copy.sender = pid("UZB");
        copy.subject = "front-run under a copied id".into();
        let copy = Signed::sign(&copy, &mallory).unwrap();
        let copy_env = copy.decode_unverified().unwrap();
        let (out, items) = store
            .store_deliveries(&[(copy.clone(), Ok(copy_env))], NOW + 1)
            .unwrap();
        let [Stored::Quarantined(reason)] = &out[..] else {
            panic!("held, not a duplicate: {out:?}");
        };
        assert!(
            reason.contains("id conflict") && reason.contains("from KAZ"),
            "{reason}"
        );
        assert_eq!(
            items,
            [ReceiptItem {
                id: env.id,
                sender: pid("UZB"),
                digest: copy.digest()
            }],
            "receipted as held, by its own digest"
        );
        let held = store.quarantined(10).unwrap();
        assert_eq!(held.len(), 1);
        assert_eq!(held[0].digest, copy.digest());
        assert_eq!(store.inbox(10).unwrap().len(), 1);
        let shown = store.inbox_message(&env.id).unwrap().unwrap();
        assert_eq!(shown.envelope.sender, pid("KAZ"), "the first stays shown");

        // The genuine copy delivered again is still a plain duplicate.
        let (out, _) = store
            .store_deliveries(&[(genuine.clone(), Ok(env))], NOW + 2)
            .unwrap();
        assert_eq!(out, [Stored::Duplicate]);
        assert_eq!(store.quarantined(10).unwrap().len(), 1);
        drop(store);
        let path = dir.path().join(DB_FILE);
        verify_records(&Connection::open(&path).unwrap(), &path).unwrap();
    }

    /// Entries under subjects no row has (sorting before, between and after the rows'), and
    /// several records under one subject (a message signed again), leave every row matched;
    /// a row whose record none of them is, is named.
    #[test]
    fn entries_under_other_subjects_and_other_signings_leave_rows_matched() {
        let dir = store_with_every_record();
        let path = dir.path().join(DB_FILE);
        let conn = Connection::open(&path).unwrap();
        let mut journal = hotline_store::Journal::load(&conn).unwrap();
        let id: Vec<u8> = conn
            .query_row("SELECT id FROM inbox", [], |r| r.get(0))
            .unwrap();
        let subject = hex::encode(&id);
        for (subject, payload) in [
            ("00".to_owned(), b"before".to_vec()),
            (format!("{subject}00"), b"just after".to_vec()),
            ("ff".to_owned(), b"after".to_vec()),
            (subject.clone(), b"another signing".to_vec()),
        ] {
            journal
                .append(&conn, NOW, "message.received", &subject, &payload)
                .unwrap();
        }
        assert_eq!(verify_records(&conn, &path).unwrap(), 5);
        conn.execute("UPDATE inbox SET sig = zeroblob(64)", [])
            .unwrap();
        let err = verify_records(&conn, &path).unwrap_err().to_string();
        assert!(
            err.contains(&format!("inbox row {subject} is not the record")),
            "{err}"
        );
    }

    #[test]
    fn every_stored_record_must_be_one_its_journal_holds() {
        let dir = store_with_every_record();
        let path = dir.path().join(DB_FILE);
        let conn = Connection::open(&path).unwrap();
        assert_eq!(
            verify_records(&conn, &path).unwrap(),
            5,
            "one row in each table"
        );
        drop(conn);
        for (table, _, _) in RECORDED {
            let dir = store_with_every_record();
            let path = dir.path().join(DB_FILE);
            let conn = Connection::open(&path).unwrap();
            // One byte of the signed bytes changed, or the signature swapped.
            conn.execute(
                &format!("UPDATE {table} SET bytes = CAST(bytes || x'00' AS BLOB)"),
                [],
            )
            .unwrap();
            let err = verify_records(&conn, &path).unwrap_err().to_string();
            assert!(
                err.contains(table) && err.contains("node.db"),
                "{table}: {err}"
            );
            conn.execute(
                &format!("UPDATE {table} SET bytes = substr(bytes, 1, length(bytes) - 1)"),
                [],
            )
            .unwrap();
            verify_records(&conn, &path).unwrap();
            conn.execute(&format!("UPDATE {table} SET sig = zeroblob(64)"), [])
                .unwrap();
            let err = verify_records(&conn, &path).unwrap_err().to_string();
            assert!(err.contains(table), "{table}: {err}");
        }
        // Opening refuses it too, by name, although the journal's chain is intact.
        let dir = store_with_every_record();
        let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
        conn.execute("UPDATE inbox SET bytes = CAST(bytes || x'00' AS BLOB)", [])
            .unwrap();
        hotline_store::verify_journal(&conn).unwrap();
        drop(conn);
        let err = NodeStore::open(dir.path())
            .err()
            .expect("refused")
            .to_string();
        assert!(err.contains("node.db") && err.contains("inbox"), "{err}");
    }

    #[test]
    fn the_unacknowledged_are_listed_newest_first_whatever_was_acknowledged_since() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = NodeStore::open(dir.path()).unwrap();
        let kaz = SigningKey::from_bytes(&[2; 32]);
        let (me, key) = (pid("KGZ"), SigningKey::from_bytes(&[1; 32]));
        let envs: Vec<Envelope> = (1..=5).map(|s| envelope(s, Precedence::Routine)).collect();
        for (i, e) in envs.iter().enumerate() {
            let batch = [(Signed::sign(e, &kaz).unwrap(), Ok(e.clone()))];
            store.store_deliveries(&batch, NOW + i as u64).unwrap();
        }
        for e in &envs[2..4] {
            store
                .acknowledge(&me, &key, &e.id, "Duty officer", None, 1, NOW + 10)
                .unwrap()
                .unwrap();
        }
        let listed = |limit| -> Vec<MessageId> {
            let got = store.unacknowledged(limit).unwrap();
            assert!(got.iter().all(|m| m.ack.is_none()));
            got.into_iter().map(|m| m.envelope.id).collect()
        };
        assert_eq!(listed(10), [envs[4].id, envs[1].id, envs[0].id]);
        assert_eq!(listed(2), [envs[4].id, envs[1].id]);
        assert_eq!(store.inbox(2).unwrap().len(), 2);
    }

    /// A page after a message continues the list where the page before ended, messages
    /// that arrived at the same millisecond included (ordered by row), each listed once;
    /// with only the unacknowledged too; a message the store does not hold names no page.
    #[test]
    fn the_inbox_pages_after_a_message_list_every_one_once_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = NodeStore::open(dir.path()).unwrap();
        let kaz = SigningKey::from_bytes(&[2; 32]);
        let (me, key) = (pid("KGZ"), SigningKey::from_bytes(&[1; 32]));
        let envs: Vec<Envelope> = (1..=7).map(|s| envelope(s, Precedence::Routine)).collect();
        // Three arrive at NOW, one by one, then four at NOW + 1 in one batch.
        for e in &envs[..3] {
            store
                .store_deliveries(&[(Signed::sign(e, &kaz).unwrap(), Ok(e.clone()))], NOW)
                .unwrap();
        }
        let batch: Vec<_> = envs[3..]
            .iter()
            .map(|e| (Signed::sign(e, &kaz).unwrap(), Ok(e.clone())))
            .collect();
        store.store_deliveries(&batch, NOW + 1).unwrap();
        for e in [&envs[1], &envs[4]] {
            store
                .acknowledge(&me, &key, &e.id, "Duty officer", None, 1, NOW + 10)
                .unwrap()
                .unwrap();
        }
        let mut reader = NodeReader::open(dir.path()).unwrap();
        let mut pages = |limit, unacknowledged| -> Vec<Vec<MessageId>> {
            let mut all = Vec::new();
            let mut before = None;
            loop {
                let page: Vec<MessageId> = reader
                    .inbox_page(before.as_ref(), limit, unacknowledged)
                    .unwrap()
                    .unwrap()
                    .into_iter()
                    .map(|m| m.envelope.id)
                    .collect();
                if page.is_empty() {
                    return all;
                }
                before = page.last().copied();
                all.push(page);
            }
        };
        let newest_first: Vec<MessageId> = envs.iter().rev().map(|e| e.id).collect();
        assert_eq!(pages(3, false).concat(), newest_first);
        assert_eq!(pages(3, false).len(), 3);
        assert_eq!(pages(1, false).concat(), newest_first);
        let waiting: Vec<MessageId> = newest_first
            .iter()
            .copied()
            .filter(|id| *id != envs[1].id && *id != envs[4].id)
            .collect();
        assert_eq!(pages(2, true).concat(), waiting);
        assert_eq!(
            store.unacknowledged(10).unwrap().len(),
            waiting.len(),
            "the store's own list"
        );
        let unknown = MessageId([7; 16]);
        assert!(reader
            .inbox_page(Some(&unknown), 10, false)
            .unwrap()
            .is_none());
        assert!(reader.sent_page(Some(&unknown), 10).unwrap().is_none());
    }

    /// Paging the unacknowledged goes on after the last message of the page before even
    /// once that one is acknowledged (the cursor is looked for in the whole inbox, not among
    /// the unacknowledged alone, which would answer 404 and end a sweep); a message
    /// acknowledged meanwhile further down is left out, and one that arrives between pages
    /// is not listed among the older ones.
    #[test]
    fn the_unacknowledged_go_on_after_a_message_acknowledged_between_pages() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = NodeStore::open(dir.path()).unwrap();
        let kaz = SigningKey::from_bytes(&[2; 32]);
        let (me, key) = (pid("KGZ"), SigningKey::from_bytes(&[1; 32]));
        let envs: Vec<Envelope> = (1..=7).map(|s| envelope(s, Precedence::Routine)).collect();
        let batch: Vec<_> = envs[..6]
            .iter()
            .map(|e| (Signed::sign(e, &kaz).unwrap(), Ok(e.clone())))
            .collect();
        // All at the same millisecond: ordered by row alone.
        store.store_deliveries(&batch, NOW).unwrap();
        let mut reader = NodeReader::open(dir.path()).unwrap();
        let ids = |page: Vec<InboxMessage>| -> Vec<MessageId> {
            page.into_iter().map(|m| m.envelope.id).collect()
        };
        let newest_first: Vec<MessageId> = envs[..6].iter().rev().map(|e| e.id).collect();
        let first = ids(reader.inbox_page(None, 3, true).unwrap().unwrap());
        assert_eq!(first, newest_first[..3]);
        for id in [&first[2], &newest_first[4]] {
            store
                .acknowledge(&me, &key, id, "Duty officer", None, 1, NOW + 10)
                .unwrap()
                .unwrap();
        }
        let e = &envs[6];
        store
            .store_deliveries(&[(Signed::sign(e, &kaz).unwrap(), Ok(e.clone()))], NOW + 20)
            .unwrap();
        let rest = reader.inbox_page(Some(&first[2]), 3, true).unwrap();
        assert_eq!(
            rest.map(ids),
            Some(vec![newest_first[3], newest_first[5]]),
            "after the acknowledged cursor, without the one acknowledged meanwhile"
        );
    }

    #[test]
    fn only_unacknowledged_flash_and_immediate_messages_page_again() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = NodeStore::open(dir.path()).unwrap();
        let kaz = SigningKey::from_bytes(&[2; 32]);
        let me = pid("KGZ");
        let key = SigningKey::from_bytes(&[1; 32]);
        let flash = envelope(1, Precedence::Flash);
        let immediate = envelope(2, Precedence::Immediate);
        let routine = envelope(3, Precedence::Routine);
        let batch: Vec<_> = [&flash, &immediate, &routine]
            .into_iter()
            .map(|e| (Signed::sign(e, &kaz).unwrap(), Ok(e.clone())))
            .collect();
        store.store_deliveries(&batch, NOW).unwrap();

        assert!(store.due_pages(NOW + EVERY - 1, EVERY).unwrap().is_empty());
        let urgent = BTreeSet::from([flash.id, immediate.id]);
        assert_eq!(ids(&store.due_pages(NOW + EVERY, EVERY).unwrap()), urgent);
        assert!(
            store.due_pages(NOW + EVERY, EVERY).unwrap().is_empty(),
            "paged"
        );
        assert_eq!(
            ids(&store.due_pages(NOW + 2 * EVERY, EVERY).unwrap()),
            urgent
        );

        store
            .acknowledge(&me, &key, &immediate.id, "Duty officer", None, 1, NOW)
            .unwrap()
            .unwrap();
        let due = store.due_pages(NOW + 3 * EVERY, EVERY).unwrap();
        assert_eq!(ids(&due), BTreeSet::from([flash.id]));

        // A routine message stored without the never-pages mark (an older store) is
        // looked at once, marked, and not returned.
        store
            .conn
            .execute(
                "UPDATE inbox SET paged_at_ms = NULL WHERE id = ?1",
                [&routine.id.0[..]],
            )
            .unwrap();
        assert!(!ids(&store.due_pages(NOW + 4 * EVERY, EVERY).unwrap()).contains(&routine.id));
        let mark: i64 = store
            .conn
            .query_row(
                "SELECT paged_at_ms FROM inbox WHERE id = ?1",
                [&routine.id.0[..]],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(mark, NEVER_PAGES);
    }

    /// The node's clock stepped back (an NTP correction of a clock that ran an hour fast)
    /// after an urgent message was received, and after one was paged: each pages again an
    /// interval after the step, not an hour and an interval later, when the clock has
    /// caught up with the times it stamped.
    #[test]
    fn a_clock_stepped_back_delays_no_page_by_the_step() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = NodeStore::open(dir.path()).unwrap();
        let kaz = SigningKey::from_bytes(&[2; 32]);
        const HOUR: u64 = 3_600_000;
        let (received, paged) = (
            envelope(1, Precedence::Flash),
            envelope(2, Precedence::Flash),
        );
        let sign = |e: &Envelope| (Signed::sign(e, &kaz).unwrap(), Ok(e.clone()));
        store.store_deliveries(&[sign(&paged)], NOW).unwrap();
        assert_eq!(
            ids(&store.due_pages(NOW + EVERY, EVERY).unwrap()),
            BTreeSet::from([paged.id])
        );
        store
            .store_deliveries(&[sign(&received)], NOW + EVERY)
            .unwrap();
        // Stepped back an hour: the first tick after the step pages nothing (neither was
        // paged an interval ago by any clock), and an interval later both page.
        let stepped = NOW + EVERY + 1 - HOUR;
        assert!(store.due_pages(stepped, EVERY).unwrap().is_empty());
        assert!(store
            .due_pages(stepped + EVERY - 1, EVERY)
            .unwrap()
            .is_empty());
        assert_eq!(
            ids(&store.due_pages(stepped + EVERY, EVERY).unwrap()),
            BTreeSet::from([received.id, paged.id]),
            "an interval after the step, not once the clock is back at the times stamped"
        );
        assert!(store.due_pages(stepped + EVERY, EVERY).unwrap().is_empty());
        assert_eq!(
            store.due_pages(stepped + 2 * EVERY, EVERY).unwrap().len(),
            2,
            "and every interval after that"
        );
    }

    /// More due pages than a tick takes: each tick marks all it returns, in one
    /// transaction, so the next tick takes the rest and then none; a tick that fails to mark
    /// one marks none, and the next tick pages them all.
    #[test]
    fn due_pages_are_marked_together_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = NodeStore::open(dir.path()).unwrap();
        let kaz = SigningKey::from_bytes(&[2; 32]);
        let tick = crate::limits::PAGES_PER_TICK_MAX;
        let envs: Vec<_> = (1..=tick as u64 + 44)
            .map(|seq| envelope(seq, Precedence::Flash))
            .collect();
        for (i, chunk) in envs.chunks(100).enumerate() {
            let batch: Vec<_> = chunk
                .iter()
                .map(|e| (Signed::sign(e, &kaz).unwrap(), Ok(e.clone())))
                .collect();
            store.store_deliveries(&batch, NOW + i as u64).unwrap();
        }
        let all = ids(&envs);
        let at = NOW + 10 + EVERY;
        let first = store.due_pages(at, EVERY).unwrap();
        let rest = store.due_pages(at, EVERY).unwrap();
        assert_eq!((first.len(), rest.len()), (tick, 44));
        assert_eq!(&ids(&first) | &ids(&rest), all);
        assert!(store.due_pages(at, EVERY).unwrap().is_empty(), "all marked");

        // A tick whose marking fails (here, at its hundredth message) marks none.
        store
            .conn
            .execute_batch(
                "CREATE TEMP TABLE marked (n INTEGER NOT NULL);
                 INSERT INTO marked VALUES (0);
                 CREATE TEMP TRIGGER page_fails BEFORE UPDATE OF paged_at_ms ON main.inbox
                 BEGIN
                     UPDATE marked SET n = n + 1;
                     SELECT RAISE(ABORT, 'injected failure') WHERE (SELECT n FROM marked) >= 100;
                 END;",
            )
            .unwrap();
        let later = at + EVERY;
        assert!(store.due_pages(later, EVERY).is_err());
        store
            .conn
            .execute_batch("DROP TRIGGER temp.page_fails")
            .unwrap();
        let again = store.due_pages(later, EVERY).unwrap();
        let again_rest = store.due_pages(later, EVERY).unwrap();
        assert_eq!(
            (again.len(), again_rest.len()),
            (tick, 44),
            "none were marked by the tick that failed"
        );
    }

    #[test]
    fn a_passed_deadline_marks_the_unacknowledged_recipients_overdue_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = NodeStore::open(dir.path()).unwrap();
        let key = SigningKey::from_bytes(&[1; 32]);
        let me = pid("KAZ");
        let to = [pid("KGZ"), pid("TJK")];
        let draft = |respond_by_ms| Draft {
            audience: Audience::Participants(to.to_vec()),
            kind: Kind::ConsultationRequest,
            precedence: Precedence::Priority,
            status: Status::Actual,
            respond_by_ms,
            references: vec![],
            category: None,
            subject: "Request for clarification".into(),
            body: String::new(),
        };
        let with = store
            .compose(&me, &key, draft(Some(NOW + EVERY)), &to, 1, NOW)
            .unwrap()
            .unwrap();
        store
            .compose(&me, &key, draft(None), &to, 1, NOW)
            .unwrap()
            .unwrap();
        let with = with.decode_unverified().unwrap().id;

        assert!(store.mark_overdue(NOW + EVERY - 1).unwrap().is_empty());
        let found = store.mark_overdue(NOW + EVERY).unwrap();
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].id, with);
        assert_eq!(found[0].subject, "Request for clarification");
        assert_eq!(found[0].recipients, to.to_vec());
        assert_eq!(found[0].status, Some(Status::Actual));
        assert!(
            store.mark_overdue(NOW + 2 * EVERY).unwrap().is_empty(),
            "once"
        );
    }

    /// An escalation is recorded as not yet announced in the transaction that marks it, and
    /// stays so, across a restart, until the node records it announced: a node killed
    /// between marking and announcing (before, the marks were committed and the
    /// announcement lost for good) finds it at its next start. A recipient that has
    /// acknowledged since is left out, and a row an acceptance dropped since is not.
    #[test]
    fn an_escalation_not_announced_before_a_restart_is_found_at_the_next_start() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = NodeStore::open(dir.path()).unwrap();
        let me = pid("KAZ");
        let to = [pid("KGZ"), pid("TJK"), pid("UZB")];
        let draft = Draft {
            respond_by_ms: Some(NOW + EVERY),
            status: Status::Exercise,
            ..flash_draft(&to, "Request for clarification")
        };
        let key = SigningKey::from_bytes(&[1; 32]);
        let sent = store
            .compose(&me, &key, draft, &to, 1, NOW)
            .unwrap()
            .unwrap();
        let id = sent.decode_unverified().unwrap().id;
        let found = store.mark_overdue(NOW + EVERY).unwrap();
        let escalation = Overdue {
            id,
            subject: "Request for clarification".into(),
            recipients: to.to_vec(),
            status: Some(Status::Exercise),
        };
        assert_eq!(found, vec![escalation.clone()]);
        drop(store);

        // Killed before announcing: found again at each start until recorded announced.
        let mut store = NodeStore::open(dir.path()).unwrap();
        assert_eq!(
            store.unannounced_overdue().unwrap(),
            vec![escalation.clone()]
        );
        assert!(store.mark_overdue(NOW + 2 * EVERY).unwrap().is_empty());
        drop(store);
        let mut store = NodeStore::open(dir.path()).unwrap();
        assert_eq!(
            store.unannounced_overdue().unwrap(),
            vec![escalation.clone()]
        );

        // KGZ acknowledges (late) and relay 0's list drops UZB: KGZ is left out, UZB not.
        let item = ReceiptItem {
            id,
            sender: me.clone(),
            digest: sent.digest(),
        };
        let ack = kgz_receipt(NOW + 2 * EVERY, duty_ack(), item);
        store.store_forwarded(&me, &[ack], NOW + 2 * EVERY).unwrap();
        let a = Accepted {
            id,
            recipients: vec![pid("KGZ"), pid("TJK")],
            accepted_at_ms: NOW + 2 * EVERY,
        };
        store.accepted(0, &a, Some(1), NOW + 2 * EVERY).unwrap();
        let rest = Overdue {
            recipients: vec![pid("TJK"), pid("UZB")],
            ..escalation
        };
        assert_eq!(store.unannounced_overdue().unwrap(), vec![rest.clone()]);
        // UZB's delivered receipt brings its row back without the mark: the next tick puts
        // the mark back, and does not escalate UZB again.
        let uzb = receipt_by("UZB", 6, NOW + 3 * EVERY, &me, id, sent.digest());
        store.store_forwarded(&me, &[uzb], NOW + 3 * EVERY).unwrap();
        assert!(store.mark_overdue(NOW + 3 * EVERY).unwrap().is_empty());
        let uzb_row = store.sent_message(&id).unwrap().unwrap().matrix;
        let uzb_row = uzb_row.iter().find(|r| r.recipient == pid("UZB")).unwrap();
        assert_eq!(uzb_row.overdue_at_ms, Some(NOW + EVERY));
        drop(store);
        let mut store = NodeStore::open(dir.path()).unwrap();
        assert_eq!(store.unannounced_overdue().unwrap(), vec![rest.clone()]);

        // Announced: not found again, after a restart either.
        store.overdue_announced(&id, &rest.recipients).unwrap();
        assert!(store.unannounced_overdue().unwrap().is_empty());
        drop(store);
        let mut store = NodeStore::open(dir.path()).unwrap();
        assert!(store.unannounced_overdue().unwrap().is_empty());
        assert!(store.mark_overdue(NOW + 3 * EVERY).unwrap().is_empty());
    }

    /// A message whose respond-by passed before any relay accepted it (the node was
    /// offline), to KGZ, TJK and UZB by this node's roster, sent through two relays whose
    /// rosters resolve its audience differently: relay 0's to KGZ and TJK, relay 1's to KGZ,
    /// TJK, UZB and MNG. Whichever relay accepts first, each recipient is escalated once:
    /// UZB, escalated before the acceptances, not again when relay 0's list has dropped its
    /// row and relay 1's names it again; MNG, named only by relay 1, once, as new. Before,
    /// relay 0 first dropped UZB's row with its overdue mark and relay 1 added it back
    /// without, so UZB was escalated twice.
    #[test]
    fn a_recipient_is_escalated_once_whatever_the_order_of_two_relays_acceptances() {
        for relay_0_first in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let mut store = NodeStore::open(dir.path()).unwrap();
            let me = pid("KAZ");
            let expected = [pid("KGZ"), pid("TJK"), pid("UZB")];
            let draft = Draft {
                respond_by_ms: Some(NOW + EVERY),
                ..flash_draft(&expected, "Request for clarification")
            };
            let key = SigningKey::from_bytes(&[1; 32]);
            let sent = store.compose(&me, &key, draft, &expected, 2, NOW);
            let id = sent.unwrap().unwrap().decode_unverified().unwrap().id;
            let overdue = |store: &mut NodeStore, at: u64| -> Vec<String> {
                let found = store.mark_overdue(at).unwrap();
                assert!(found.iter().all(|o| o.id == id), "{found:?}");
                let rs = found.iter().flat_map(|o| o.recipients.iter());
                rs.map(|r| r.to_string()).collect()
            };
            assert_eq!(overdue(&mut store, NOW + EVERY), ["KGZ", "TJK", "UZB"]);

            let accepted = |recipients: &[&str]| Accepted {
                id,
                recipients: recipients.iter().map(|r| pid(r)).collect(),
                accepted_at_ms: NOW + 2 * EVERY,
            };
            let by_0 = (0, accepted(&["KGZ", "TJK"]));
            let by_1 = (1, accepted(&["KGZ", "MNG", "TJK", "UZB"]));
            let order = if relay_0_first {
                [by_0, by_1]
            } else {
                [by_1, by_0]
            };
            for (relay, a) in &order {
                assert_eq!(
                    store.accepted(*relay, a, Some(1), NOW + 2 * EVERY).unwrap(),
                    Answered::New {
                        status: Some(Status::Actual)
                    }
                );
            }
            let rows = |store: &NodeStore| -> Vec<(String, Option<u64>)> {
                let m = store.sent_message(&id).unwrap().unwrap().matrix;
                m.iter()
                    .map(|r| (r.recipient.to_string(), r.overdue_at_ms))
                    .collect()
            };
            let first = Some(NOW + EVERY);
            // UZB is named by relay 1, so it is a recipient, and it was escalated already.
            let want = |mng| {
                [("KGZ", first), ("MNG", mng), ("TJK", first), ("UZB", first)]
                    .map(|(r, at)| (r.to_owned(), at))
                    .to_vec()
            };
            assert_eq!(rows(&store), want(None), "relay 0 first: {relay_0_first}");
            assert_eq!(
                overdue(&mut store, NOW + 3 * EVERY),
                ["MNG"],
                "relay 0 first: {relay_0_first}"
            );
            assert!(overdue(&mut store, NOW + 4 * EVERY).is_empty());
            assert_eq!(rows(&store), want(Some(NOW + 3 * EVERY)));
        }
    }

    /// KGZ's receipt of one item, signed at `at`, verified.
    fn kgz_receipt(at: u64, kind: ReceiptKind, item: ReceiptItem) -> Verified<Receipt> {
        receipt_of("KGZ", 3, at, kind, item)
    }

    /// A receipt of `kind` signed by `who` (key seed `seed`) at `at`, naming `item`.
    fn receipt_of(
        who: &str,
        seed: u8,
        at: u64,
        kind: ReceiptKind,
        item: ReceiptItem,
    ) -> Verified<Receipt> {
        let r = Receipt {
            version: PROTOCOL_VERSION,
            recipient: pid(who),
            kind,
            created_at_ms: at,
            items: vec![item],
        };
        let signed = Signed::sign(&r, &SigningKey::from_bytes(&[seed; 32])).unwrap();
        signed.verify_with(&signed.key()).unwrap()
    }

    /// A duty officer's acknowledgement, without a note.
    fn duty_ack() -> ReceiptKind {
        ReceiptKind::Acknowledged {
            officer: "Duty officer".into(),
            note: None,
        }
    }

    /// A store in `dir` holding KAZ's FLASH alert to KGZ and TJK: the store, KAZ, the alert
    /// as signed, and the receipt item naming it.
    fn alert_to_kgz_and_tjk(
        dir: &Path,
    ) -> (NodeStore, ParticipantId, Signed<Envelope>, ReceiptItem) {
        let mut store = NodeStore::open(dir).unwrap();
        let me = pid("KAZ");
        let sent = flash_alert(&mut store, &me, &[pid("KGZ"), pid("TJK")]);
        let item = ReceiptItem {
            id: sent.decode_unverified().unwrap().id,
            sender: me.clone(),
            digest: sent.digest(),
        };
        (store, me, sent, item)
    }

    /// A FLASH alert to `to`, to compose.
    fn flash_draft(to: &[ParticipantId], subject: &str) -> Draft {
        Draft {
            precedence: Precedence::Flash,
            ..Draft::alert(to, subject)
        }
    }

    /// A FLASH alert from `me` to `to`, composed in `store` for one relay.
    fn flash_alert(
        store: &mut NodeStore,
        me: &ParticipantId,
        to: &[ParticipantId],
    ) -> Signed<Envelope> {
        let draft = flash_draft(to, "Incident at the border");
        store
            .compose(me, &SigningKey::from_bytes(&[1; 32]), draft, to, 1, NOW)
            .unwrap()
            .unwrap()
    }

    /// A store restored from a backup: its counter is behind what the relay has seen. A
    /// message it signed before a relay said so is signed again, once, with an unused
    /// number; the record stays one the journal holds.
    #[test]
    fn a_message_refused_for_a_number_used_before_a_restore_is_signed_again() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = NodeStore::open(dir.path()).unwrap();
        let (me, to) = (pid("KAZ"), [pid("KGZ")]);
        let key = SigningKey::from_bytes(&[1; 32]);
        let accepted = flash_alert(&mut store, &me, &to);
        let stale = flash_alert(&mut store, &me, &to);
        let before = stale.decode_unverified().unwrap();
        assert_eq!(before.seq, Seq(2));
        let a = Accepted {
            id: accepted.decode_unverified().unwrap().id,
            recipients: to.to_vec(),
            accepted_at_ms: NOW,
        };
        store.accepted(0, &a, Some(1), NOW).unwrap();
        // The relay had accepted up to 5 from this participant before the restore.
        let floor = 5;
        // A number above what the relay had seen is not one a restore explains.
        assert_eq!(
            store.resequence(&before.id, 2, 1, &key, NOW).unwrap(),
            Resequenced::Final
        );
        // An accepted message stays as it was accepted.
        assert_eq!(
            store.resequence(&a.id, 1, floor, &key, NOW).unwrap(),
            Resequenced::Final
        );
        assert_eq!(
            store
                .resequence(&before.id, 2, floor, &key, NOW + 1)
                .unwrap(),
            Resequenced::Signed(6)
        );
        // A second relay's refusal of the same old bytes: it is only offered again.
        assert_eq!(
            store
                .resequence(&before.id, 2, floor, &key, NOW + 2)
                .unwrap(),
            Resequenced::AlreadyFresh
        );
        let out = store.outbox(0, 10).unwrap();
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!((out[0].id, out[0].seq), (before.id, 6));
        let after = out[0].signed.verify_with(&PublicKey::of(&key)).unwrap();
        assert_eq!(
            Envelope {
                seq: Seq(2),
                ..(*after).clone()
            },
            before,
            "only the number changed"
        );
        // The next message takes the number after it.
        let next = flash_alert(&mut store, &me, &to);
        assert_eq!(next.decode_unverified().unwrap().seq, Seq(7));
        // Reopened, every stored record is one its journal holds.
        drop(store);
        NodeStore::open(dir.path()).unwrap();
    }

    /// A store restored from a backup composes a message for two relays with a number
    /// relay B had taken: B refuses it and it is signed again, while relay A, which had
    /// not seen that number, takes the first signing. Each relay is recorded against the
    /// number it took, so neither looks at its next `Welcome` as if it had lost messages; a
    /// receipt of either signing records its recipient, and is no mismatch; a relay that
    /// lost the first signing (restored from a backup in turn) is sent the newest.
    #[test]
    fn each_relay_is_recorded_for_the_signing_it_took() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = NodeStore::open(dir.path()).unwrap();
        let (me, to) = (pid("KAZ"), [pid("KGZ"), pid("TJK")]);
        let key = SigningKey::from_bytes(&[1; 32]);
        let draft = flash_draft(&to, "Incident at the border");
        let old = store
            .compose(&me, &key, draft, &to, 2, NOW)
            .unwrap()
            .unwrap();
        let id = old.decode_unverified().unwrap().id;
        assert_eq!(
            store.resequence(&id, 1, 5, &key, NOW).unwrap(),
            Resequenced::Signed(6)
        );
        let new = store.outbox(1, 10).unwrap().remove(0).signed;
        let a = Accepted {
            id,
            recipients: to.to_vec(),
            accepted_at_ms: NOW,
        };
        assert_eq!(
            store.accepted(1, &a, Some(6), NOW).unwrap(),
            Answered::New {
                status: Some(Status::Actual)
            }
        );
        assert_eq!(
            store.accepted(0, &a, Some(1), NOW + 1).unwrap(),
            Answered::New {
                status: Some(Status::Actual)
            }
        );
        assert!(store.outbox(0, 10).unwrap().is_empty());
        // A number the message was never signed with answers nothing; no number (nothing
        // written on that connection) records nothing.
        assert_eq!(
            store.accepted(0, &a, Some(3), NOW + 1).unwrap(),
            Answered::Unknown
        );
        assert_eq!(
            store.accepted(0, &a, None, NOW + 1).unwrap(),
            Answered::Again
        );
        assert_eq!(store.offer_lost(0, 1, NOW).unwrap(), (0, 1));
        assert_eq!(store.offer_lost(1, 6, NOW).unwrap(), (0, 6));

        let item = |s: &Signed<Envelope>| ReceiptItem {
            id,
            sender: me.clone(),
            digest: s.digest(),
        };
        let through_a = kgz_receipt(NOW, ReceiptKind::Delivered, item(&old));
        let through_b = receipt_of("TJK", 5, NOW, duty_ack(), item(&new));
        let out = store
            .store_forwarded(&me, &[through_a, through_b], NOW + 2)
            .unwrap();
        for f in &out {
            assert_eq!(
                (&f.first, &f.mismatched),
                (
                    &vec![News {
                        id,
                        status: Some(Status::Actual)
                    }],
                    &vec![]
                ),
                "{out:?}"
            );
        }
        let sent = store.sent_message(&id).unwrap().unwrap();
        assert_eq!(
            sent.envelope.seq,
            Seq(6),
            "the record holds the newest signing"
        );
        let row = |r: &str| {
            sent.matrix
                .iter()
                .find(|m| m.recipient.as_str() == r)
                .unwrap()
        };
        assert_eq!(row("KGZ").delivered_at_ms, Some(NOW + 2));
        assert_eq!(row("TJK").acked_at_ms, Some(NOW + 2));

        // Relay A, restored to before it took the first signing, is sent the newest.
        assert_eq!(store.offer_lost(0, 0, NOW).unwrap(), (1, 1));
        let out = store.outbox(0, 10).unwrap();
        assert_eq!((out[0].id, out[0].seq), (id, 6));
        drop(store);
        NodeStore::open(dir.path()).unwrap();
    }

    /// A schema 2 store (before `signings`) learns the earlier signings of the messages it
    /// signed again from its journal when it opens, and drops the mismatches a schema 2
    /// node recorded for receipts of them.
    #[test]
    fn a_store_from_before_the_record_of_signings_learns_it_from_its_journal() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = NodeStore::open(dir.path()).unwrap();
        let (me, to) = (pid("KAZ"), [pid("KGZ")]);
        let key = SigningKey::from_bytes(&[1; 32]);
        let old = flash_alert(&mut store, &me, &to);
        let id = old.decode_unverified().unwrap().id;
        store.resequence(&id, 1, 5, &key, NOW).unwrap();
        let item = ReceiptItem {
            id,
            sender: me.clone(),
            digest: old.digest(),
        };
        store
            .store_forwarded(&me, &[kgz_receipt(NOW, ReceiptKind::Delivered, item)], NOW)
            .unwrap();
        store
            .conn
            .execute_batch(&format!(
                "DROP TABLE signings; INSERT INTO mismatches (id, signer) VALUES (X'{}', 'KGZ'); PRAGMA user_version = 2",
                hex::encode(id.0)
            ))
            .unwrap();
        drop(store);

        let mut store = NodeStore::open(dir.path()).unwrap();
        assert_eq!(user_version(dir.path()), SCHEMA_VERSION);
        let mismatches: i64 = store
            .conn
            .query_row("SELECT COUNT(*) FROM mismatches", [], |r| r.get(0))
            .unwrap();
        assert_eq!(
            mismatches, 0,
            "a receipt of the earlier signing is no mismatch"
        );
        let a = Accepted {
            id,
            recipients: to.to_vec(),
            accepted_at_ms: NOW,
        };
        assert_eq!(
            store.accepted(0, &a, Some(1), NOW).unwrap(),
            Answered::New {
                status: Some(Status::Actual)
            },
            "the earlier signing is known"
        );
        assert_eq!(store.offer_lost(0, 1, NOW).unwrap(), (0, 1));
    }

    /// An unverified receipt "from" `who`, signed at `at` (so each has its own digest),
    /// naming `item`, to hold.
    fn unverified(who: &str, at: u64, item: &ReceiptItem) -> Unverified {
        let v = receipt_of(who, 7, at, ReceiptKind::Delivered, item.clone());
        Unverified {
            signed: v.signed().clone(),
            claim: (*v).clone(),
            reason: format!("unknown signer {who}"),
        }
    }

    fn held_digests(store: &NodeStore) -> Vec<Digest> {
        store
            .held_receipts()
            .unwrap()
            .into_iter()
            .map(|h| h.digest)
            .collect()
    }

    /// Receipts held for a newer roster are bounded per claimed signer and in all, the
    /// oldest dropped first and reported; one naming no message this node sent is not held.
    #[test]
    fn held_receipts_are_bounded_per_signer_and_in_all_dropping_the_oldest() {
        use crate::limits::{RECEIPTS_HELD_MAX, RECEIPTS_HELD_PER_SIGNER_MAX};
        let dir = tempfile::tempdir().unwrap();
        let (mut store, me, _, item) = alert_to_kgz_and_tjk(dir.path());
        let stray = ReceiptItem {
            id: MessageId::random(),
            ..item.clone()
        };
        let out = store
            .hold_receipts(&me, &[unverified("TJK", NOW, &stray)], NOW)
            .unwrap();
        assert_eq!(out.skipped.len(), 1, "{out:?}");
        assert!(held_digests(&store).is_empty());

        // One signer: its oldest go once it has more than its share.
        let tjk: Vec<_> = (0..RECEIPTS_HELD_PER_SIGNER_MAX as u64 + 2)
            .map(|i| unverified("TJK", NOW + i, &item))
            .collect();
        let digest = |u: &Unverified| u.signed.digest();
        let out = store.hold_receipts(&me, &tjk, NOW).unwrap();
        let dropped: Vec<_> = out.dropped.iter().map(|(d, _)| *d).collect();
        assert_eq!(dropped, [digest(&tjk[0]), digest(&tjk[1])]);
        assert!(out.dropped.iter().all(|(_, by)| by == "TJK"));
        assert_eq!(out.held.len(), RECEIPTS_HELD_PER_SIGNER_MAX);
        let want: Vec<_> = tjk[2..].iter().map(digest).collect();
        assert_eq!(held_digests(&store), want);
        // Held again: nothing changes.
        let again = store.hold_receipts(&me, &tjk[2..3], NOW).unwrap();
        assert_eq!(again, HeldOutcome::default());

        // Many signers: the oldest in all go, whoever signed them.
        let others: Vec<_> = (0..RECEIPTS_HELD_MAX as u64)
            .map(|i| unverified(&format!("P{}", i % 100), NOW + i, &item))
            .collect();
        let out = store.hold_receipts(&me, &others, NOW).unwrap();
        assert_eq!(out.dropped.len(), RECEIPTS_HELD_PER_SIGNER_MAX);
        assert!(out.dropped.iter().all(|(_, by)| by == "TJK"), "the oldest");
        assert_eq!(
            held_digests(&store),
            others.iter().map(digest).collect::<Vec<_>>()
        );
    }

    /// A held receipt that verifies against a newer roster is recorded as if it had just
    /// arrived (the matrix, news to tell), and one that fails for good is dropped; both
    /// leave the table.
    #[test]
    fn a_released_receipt_is_recorded_as_one_just_arrived() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, me, _, item) = alert_to_kgz_and_tjk(dir.path());
        let good = unverified("TJK", NOW, &item);
        let bad = unverified("TJK", NOW + 1, &item);
        let out = store
            .hold_receipts(&me, &[good.clone(), bad.clone()], NOW)
            .unwrap();
        assert_eq!(out.held.len(), 2);
        let verified = good.signed.verify_with(&good.signed.key()).unwrap();
        let told = store
            .release_receipts(&me, &[verified], &[bad.signed.digest()], NOW + 5)
            .unwrap();
        assert_eq!(
            told,
            [Forwarded {
                fresh: true,
                first: vec![News {
                    id: item.id,
                    status: Some(Status::Actual)
                }],
                mismatched: vec![],
                unrelated: false,
            }]
        );
        assert!(held_digests(&store).is_empty());
        let delivered: Option<u64> = store
            .conn
            .query_row(
                "SELECT delivered_at_ms FROM matrix WHERE id = ?1 AND recipient = 'TJK'",
                [&item.id.0[..]],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(delivered, Some(NOW + 5));
        // Kept now, so not held again if forwarded again.
        let out = store.hold_receipts(&me, &[good], NOW).unwrap();
        assert_eq!(out.skipped.len(), 1);
    }

    /// A store written by the previous schema (version 3, without `receipts_held`) opens
    /// with what it holds, gains the table, and holds receipts; the version stays what an
    /// older node reads, since that node may keep running on it (`SCHEMA_VERSION`).
    #[test]
    fn a_store_from_before_held_receipts_gains_the_table_with_its_data() {
        let dir = store_with_every_record();
        {
            let store = NodeStore::open(dir.path()).unwrap();
            store
                .conn
                .execute_batch("DROP TABLE receipts_held; PRAGMA user_version = 3")
                .unwrap();
        }
        assert!(!tables(dir.path()).contains(&"receipts_held".to_string()));
        let mut store = NodeStore::open(dir.path()).unwrap();
        assert!(tables(dir.path()).contains(&"receipts_held".to_string()));
        assert_eq!(user_version(dir.path()), SCHEMA_VERSION);
        assert_eq!(store.inbox(10).unwrap().len(), 1);
        assert_eq!(store.receipts_in().unwrap().len(), 1);
        let me = pid("KGZ");
        let sent = store.receipts_in().unwrap()[0]
            .decode_unverified()
            .unwrap()
            .items[0]
            .clone();
        let out = store
            .hold_receipts(&me, &[unverified("TJK", NOW, &sent)], NOW)
            .unwrap();
        assert_eq!(out.held.len(), 1, "{out:?}");
        drop(store);
        let store = NodeStore::open(dir.path()).unwrap();
        assert_eq!(held_digests(&store), out.held, "held across a restart");
    }

    /// A sent message's answers are found, ordered and counted along `inbox_answering`,
    /// without their rows (an answer's arrival time and sender follow its envelope's bytes
    /// there): a store from before the index gains it at open, with the version an older
    /// node reads unchanged, as `quarantine_by_time` came.
    #[test]
    fn a_sent_messages_answers_are_found_and_counted_along_an_index() {
        let dir = store_with_every_record();
        {
            let store = NodeStore::open(dir.path()).unwrap();
            store
                .conn
                .execute_batch("DROP INDEX IF EXISTS inbox_answering")
                .unwrap();
        }
        let store = NodeStore::open(dir.path()).unwrap();
        assert_eq!(user_version(dir.path()), SCHEMA_VERSION);
        // The store's queries name it, now that it is there.
        assert_eq!(answering(&store.conn).unwrap(), ANSWERING);
        use rusqlite::types::Value;
        let id = || Value::Blob(vec![0; 16]);
        for (sql, args) in [
            (answers_first_sql(ANSWERING), vec![id(), Value::Integer(64)]),
            (answer_counts_sql(ANSWERING), vec![id()]),
        ] {
            let steps: Vec<String> = store
                .conn
                .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
                .unwrap()
                .query_map(rusqlite::params_from_iter(args), |r| r.get::<_, String>(3))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            assert!(
                steps
                    .iter()
                    .any(|step| step.contains("COVERING INDEX inbox_answering")),
                "{sql}: {steps:?}"
            );
            assert!(
                steps.iter().all(|step| !step.starts_with("SCAN")),
                "{sql}: {steps:?}"
            );
        }
    }

    /// A store that an older release wrote, with no `inbox_answering` (it comes at a
    /// read-write open, without a raise of the schema version), read read-only before a
    /// node of this release opened it: a drill's read at rest of a node down at the end
    /// (`HOTLINE_BIN` an earlier release's binary), which cannot add the index. Its sent
    /// messages, their answers counted, and the answers listed apart are read all the same,
    /// as where the index is. The queries named the index (`INDEXED BY`), and SQLite refused
    /// each of them, "no such index": no sent message of that node could be read.
    #[test]
    fn a_store_without_the_answers_index_is_read_read_only_all_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let me = pid("KGZ");
        let (sent, answer) = {
            let mut store = NodeStore::open(dir.path()).unwrap();
            let key = SigningKey::from_bytes(&[3; 32]);
            let sent = store
                .compose(
                    &me,
                    &key,
                    Draft::alert(&[pid("KAZ")], "sent"),
                    &[pid("KAZ")],
                    1,
                    NOW,
                )
                .unwrap()
                .unwrap()
                .decode_unverified()
                .unwrap()
                .id;
            let mut answer = envelope(1, Precedence::Routine);
            answer.kind = Kind::Update;
            answer.references = vec![sent];
            let kaz = SigningKey::from_bytes(&[1; 32]);
            let signed = Signed::sign(&answer, &kaz).unwrap();
            store
                .store_deliveries(&[(signed, Ok(answer.clone()))], NOW + 5)
                .unwrap();
            // As an older release left it.
            store
                .conn
                .execute_batch("DROP INDEX inbox_answering")
                .unwrap();
            (sent, answer.id)
        };
        let mut reader = NodeReader::open(dir.path()).unwrap();
        let page = reader.sent_page(None, 10).unwrap().unwrap();
        assert_eq!(page.len(), 1);
        let s = &page[0];
        assert_eq!(s.envelope.id, sent);
        assert_eq!(s.answers_total, 1);
        assert_eq!(s.answers.iter().map(|a| a.id).collect::<Vec<_>>(), [answer]);
        assert_eq!(s.matrix[0].answered_at_ms, Some(NOW + 5));
        let mut listed = Vec::new();
        reader
            .answers_each(&sent, None, 10, false, |m| {
                listed.push(m.envelope.id);
                ControlFlow::Continue(())
            })
            .unwrap()
            .unwrap();
        assert_eq!(listed, [answer]);
        // A node of this release opening it read-write adds the index, as ever.
        drop(reader);
        let store = NodeStore::open(dir.path()).unwrap();
        assert_eq!(store.sent_message(&sent).unwrap().unwrap().answers_total, 1);
    }

    /// The quarantine's page and a discard of the oldest read along an index, stopping at
    /// their limit: without one, every page sorted the whole quarantine (up to its bytes'
    /// limit of held deliveries, bodies included) to answer a thousand. A store from before
    /// the index gains it at open, with the version an older node reads unchanged, as
    /// `escalated` and `receipts_held` came (`SCHEMA_VERSION`).
    #[test]
    fn the_quarantines_page_and_oldest_are_read_along_an_index_not_sorted() {
        let plan = |conn: &Connection, sql: &str, args: &[i64]| -> Vec<String> {
            conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
                .unwrap()
                .query_map(rusqlite::params_from_iter(args), |r| r.get::<_, String>(3))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap()
        };
        let dir = store_with_every_record();
        {
            let store = NodeStore::open(dir.path()).unwrap();
            store
                .conn
                .execute_batch("DROP INDEX IF EXISTS quarantine_by_time")
                .unwrap();
        }
        let store = NodeStore::open(dir.path()).unwrap();
        assert_eq!(user_version(dir.path()), SCHEMA_VERSION);
        for (sql, args) in [
            (QUARANTINE_PAGE_SQL, &[1000, i64::MAX, i64::MAX][..]),
            (QUARANTINE_OLDEST_SQL, &[1000][..]),
        ] {
            let steps = plan(&store.conn, sql, args);
            assert!(
                steps.iter().all(|step| !step.contains("TEMP B-TREE")),
                "{sql}: {steps:?}"
            );
            assert!(
                steps.iter().any(|step| step.contains("quarantine_by_time")),
                "{sql}: {steps:?}"
            );
        }
    }

    /// Two links offering rosters at once may save the older one second: it is not
    /// written, so the stored roster never goes back a version.
    #[test]
    fn a_stored_roster_is_never_replaced_by_an_older_or_the_same_version() {
        use hotline_proto::{Participant, Role};
        let dir = tempfile::tempdir().unwrap();
        let mut store = NodeStore::open(dir.path()).unwrap();
        let key = SigningKey::from_bytes(&[3; 32]);
        let roster = |version: u64| {
            let r = Roster {
                protocol_version: PROTOCOL_VERSION,
                version,
                issued_at_ms: NOW + version,
                network: "CICA".into(),
                participants: vec![Participant {
                    id: pid("SEC"),
                    name: "Secretariat".into(),
                    role: Role::Secretariat,
                    keys: vec![PublicKey::of(&key)],
                    revoked: false,
                }],
                groups: vec![],
            };
            Signed::sign(&r, &key)
                .unwrap()
                .verify_with(&PublicKey::of(&key))
                .unwrap()
        };
        let stored = |store: &NodeStore| {
            let r = store.roster().unwrap().unwrap();
            r.decode_unverified().unwrap().version
        };
        assert!(store.save_roster(&roster(7), NOW).unwrap());
        assert!(!store.save_roster(&roster(6), NOW).unwrap(), "older");
        assert!(!store.save_roster(&roster(7), NOW).unwrap(), "the same");
        assert_eq!(stored(&store), 7);
        assert!(store.save_roster(&roster(8), NOW).unwrap());
        assert_eq!(stored(&store), 8);
        // Reopened, the journal (which records only what was installed) still verifies.
        drop(store);
        assert_eq!(stored(&NodeStore::open(dir.path()).unwrap()), 8);
    }

    /// After the roster key is replaced (OPERATIONS.md 4.7), a roster the old key signed at
    /// a higher version (a thief's, with a stolen key) is still in the store, but the node
    /// no longer trusts it: the new key's rosters replace it, then compare among themselves.
    #[test]
    fn a_roster_signed_by_a_replaced_roster_key_does_not_hold_back_the_new_keys() {
        use hotline_proto::{Participant, Role};
        let dir = tempfile::tempdir().unwrap();
        let mut store = NodeStore::open(dir.path()).unwrap();
        let (old, new) = (
            SigningKey::from_bytes(&[3; 32]),
            SigningKey::from_bytes(&[4; 32]),
        );
        let roster = |key: &SigningKey, version: u64| {
            let r = Roster {
                protocol_version: PROTOCOL_VERSION,
                version,
                issued_at_ms: NOW + version,
                network: "CICA".into(),
                participants: vec![Participant {
                    id: pid("SEC"),
                    name: "Secretariat".into(),
                    role: Role::Secretariat,
                    keys: vec![PublicKey::of(key)],
                    revoked: false,
                }],
                groups: vec![],
            };
            Signed::sign(&r, key)
                .unwrap()
                .verify_with(&PublicKey::of(key))
                .unwrap()
        };
        let stored = |store: &NodeStore| {
            let r = store.roster().unwrap().unwrap();
            (r.key(), r.decode_unverified().unwrap().version)
        };
        assert!(store.save_roster(&roster(&old, 1000), NOW).unwrap());
        assert!(store.save_roster(&roster(&new, 5), NOW).unwrap(), "new key");
        assert_eq!(stored(&store), (PublicKey::of(&new), 5));
        assert!(
            !store.save_roster(&roster(&new, 5), NOW).unwrap(),
            "the same"
        );
        assert!(!store.save_roster(&roster(&new, 4), NOW).unwrap(), "older");
        assert!(store.save_roster(&roster(&new, 6), NOW).unwrap());
        drop(store);
        assert_eq!(
            stored(&NodeStore::open(dir.path()).unwrap()),
            (PublicKey::of(&new), 6)
        );
    }

    /// A floor above the highest number an envelope may carry is refused and changes
    /// nothing; a counter at that number (or past it, in a store written before floors were
    /// checked) composes and signs again nothing, with an error that says so, not an
    /// overflow.
    #[test]
    fn a_counter_at_the_highest_sequence_number_signs_nothing_more() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = NodeStore::open(dir.path()).unwrap();
        let (me, to) = (pid("KAZ"), [pid("KGZ")]);
        let key = SigningKey::from_bytes(&[1; 32]);
        fn exhausted<T: std::fmt::Debug>(r: Result<T, StoreError>) -> u64 {
            match r {
                Err(StoreError::SeqExhausted { last }) => last,
                other => panic!("not SeqExhausted: {other:?}"),
            }
        }
        for floor in [SEQ_MAX + 1, u64::MAX] {
            assert_eq!(exhausted(store.raise_seq_floor(floor)), floor);
            assert_eq!(
                current_seq(&store.conn).unwrap(),
                0,
                "floor {floor} not taken"
            );
        }
        assert!(store.raise_seq_floor(SEQ_MAX - 1).unwrap());
        let last = flash_alert(&mut store, &me, &to);
        let last = last.decode_unverified().unwrap();
        assert_eq!(last.seq, Seq(SEQ_MAX));
        let compose = |store: &mut NodeStore| {
            let draft = flash_draft(&to, "One too many");
            store.compose(&me, &key, draft, &to, 1, NOW).map(|_| ())
        };
        assert_eq!(exhausted(compose(&mut store)), SEQ_MAX);
        assert_eq!(store.outbox_len().unwrap(), 1, "nothing stored");
        // Refused for its number: no number is left to sign it again with.
        assert_eq!(
            exhausted(store.resequence(&last.id, SEQ_MAX, SEQ_MAX, &key, NOW)),
            SEQ_MAX
        );
        let out = store.outbox(0, 10).unwrap();
        assert_eq!((out[0].id, out[0].seq), (last.id, SEQ_MAX), "unchanged");
        // A counter written past it before floors were checked: an error, not an overflow.
        set_seq(&store.conn, u64::MAX).unwrap();
        assert_eq!(exhausted(compose(&mut store)), u64::MAX);
        assert_eq!(
            exhausted(store.resequence(&last.id, SEQ_MAX, SEQ_MAX, &key, NOW)),
            u64::MAX
        );
    }

    /// What the signer can refuse is a value breaking a protocol rule or limit (ed25519
    /// signing itself cannot fail). In `resequence` that cannot happen: the envelope decoded,
    /// which checks the same rules, and its new number is one `next_seq` allows. Were the
    /// signer to refuse all the same (a number past `SEQ_MAX`, the one field `resequence`
    /// changes), the error says signing failed, naming why, and is not a database error.
    #[test]
    fn a_refusal_to_sign_is_a_signing_error_not_a_database_one() {
        let key = SigningKey::from_bytes(&[1; 32]);
        assert!(sign(&envelope(SEQ_MAX, Precedence::Routine), &key).is_ok());
        let e = sign(&envelope(SEQ_MAX + 1, Precedence::Routine), &key).unwrap_err();
        assert!(matches!(e, StoreError::Signing(_)), "{e:?}");
        assert_eq!(
            e.to_string(),
            "signing failed: invalid seq: sequence numbers end at 2^63 - 1"
        );
        let source = std::error::Error::source(&e).expect("the signer's error");
        assert!(source
            .downcast_ref::<hotline_proto::EncodeError>()
            .is_some());
    }

    /// What waits for a relay stays with it when the configuration lists the relays in
    /// another order, and a relay no longer listed leaves its share to one listed for the
    /// first time. (Before, the rows were keyed by index alone: reordered relays swapped
    /// their outboxes, and a removed relay's rows stayed in `outbox` for good.)
    #[test]
    fn what_waits_for_a_relay_follows_it_when_the_configuration_changes() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = NodeStore::open(dir.path()).unwrap();
        let (me, to) = (pid("KAZ"), [pid("KGZ")]);
        let relay = |fp: &str, addr: &str| (fp.to_owned(), addr.to_owned());
        let (a, b, c) = (
            relay("aa", "10.0.0.1:7400"),
            relay("bb", "10.0.0.2:7400"),
            relay("cc", "10.0.0.3:7400"),
        );
        assert_eq!(store.set_relays(&[a.clone(), b.clone()]).unwrap(), (0, 0));
        let draft = flash_draft(&to, "Incident at the border");
        let m1 = store
            .compose(&me, &SigningKey::from_bytes(&[1; 32]), draft, &to, 2, NOW)
            .unwrap()
            .unwrap()
            .decode_unverified()
            .unwrap()
            .id;
        // A has taken it; B has not.
        let accepted = Accepted {
            id: m1,
            recipients: to.to_vec(),
            accepted_at_ms: NOW,
        };
        store.accepted(0, &accepted, Some(1), NOW).unwrap();
        let ids = |s: &NodeStore, r: usize| -> Vec<MessageId> {
            s.outbox(r, 10).unwrap().iter().map(|m| m.id).collect()
        };
        assert_eq!((ids(&store, 0), ids(&store, 1)), (vec![], vec![m1]));

        // The same relays, listed the other way round: B's message is at B's new index.
        drop(store);
        let mut store = NodeStore::open(dir.path()).unwrap();
        assert_eq!(store.set_relays(&[b.clone(), a.clone()]).unwrap(), (1, 0));
        assert_eq!((ids(&store, 0), ids(&store, 1)), (vec![m1], vec![]));
        // Again at the next start: nothing to move.
        assert_eq!(store.set_relays(&[b.clone(), a.clone()]).unwrap(), (0, 0));

        // B replaced by C (and A moved to the address of another machine): C takes B's.
        assert_eq!(
            store
                .set_relays(&[relay("aa", "10.0.0.9:7400"), c.clone()])
                .unwrap(),
            (1, 0)
        );
        assert_eq!((ids(&store, 0), ids(&store, 1)), (vec![], vec![m1]));

        // C removed, with no newcomer to take its share: dropped, not left for good.
        assert_eq!(store.set_relays(std::slice::from_ref(&a)).unwrap(), (0, 1));
        assert_eq!(store.outbox_len().unwrap(), 0);
    }

    /// A relay restored from a backup says a lower last number than it had accepted: what
    /// it accepted above that number goes back into its outbox, once.
    #[test]
    fn messages_a_relay_lost_go_back_into_its_outbox() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = NodeStore::open(dir.path()).unwrap();
        let (me, to) = (pid("KAZ"), [pid("KGZ")]);
        let ids: Vec<MessageId> = (0..3)
            .map(|_| {
                flash_alert(&mut store, &me, &to)
                    .decode_unverified()
                    .unwrap()
                    .id
            })
            .collect();
        for (id, seq) in [(ids[0], 1), (ids[2], 3)] {
            let a = Accepted {
                id,
                recipients: to.to_vec(),
                accepted_at_ms: NOW,
            };
            assert_eq!(
                store.accepted(0, &a, Some(seq), NOW).unwrap(),
                Answered::New {
                    status: Some(Status::Actual)
                }
            );
        }
        store
            .rejected(0, &ids[1], RejectCode::PolicyDenied, "no", NOW)
            .unwrap();
        assert!(store.outbox(0, 10).unwrap().is_empty());
        // The relay has everything it accepted.
        assert_eq!(store.offer_lost(0, 3, NOW).unwrap(), (0, 3));
        // Restored to before the second and third: only the accepted third comes back.
        assert_eq!(store.offer_lost(0, 1, NOW).unwrap(), (1, 3));
        let out: Vec<_> = store.outbox(0, 10).unwrap().iter().map(|m| m.id).collect();
        assert_eq!(out, vec![ids[2]]);
        // Not again at the next connection, whatever the relay does with it.
        assert_eq!(store.offer_lost(0, 1, NOW).unwrap(), (0, 1));
        let a = Accepted {
            id: ids[2],
            recipients: to.to_vec(),
            accepted_at_ms: NOW + 5,
        };
        assert_eq!(
            store.accepted(0, &a, Some(3), NOW + 5).unwrap(),
            Answered::New {
                status: Some(Status::Actual)
            }
        );
        assert!(store.outbox(0, 10).unwrap().is_empty());
        assert_eq!(store.offer_lost(0, 3, NOW).unwrap(), (0, 3));
        // Another relay's record is its own.
        assert_eq!(store.offer_lost(1, 0, NOW).unwrap(), (0, 0));
    }

    /// The records of a store that named relays `FINGERPRINT@ADDRESS` are named by
    /// fingerprint at open, each with the highest number of any of its addresses.
    #[test]
    fn relay_records_named_with_an_address_are_renamed_by_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        let store = NodeStore::open(dir.path()).unwrap();
        for (relay, seq) in [
            ("AA@10.0.0.1:7400", 5),
            ("AA@10.0.0.2:7400", 9),
            ("BB@10.0.0.1:7401", 2),
            ("CC", 4),
            ("AA", 7),
        ] {
            store
                .conn
                .execute(
                    "INSERT INTO relay_seq (relay, seq) VALUES (?1, ?2)",
                    params![relay, seq],
                )
                .unwrap();
        }
        drop(store);
        let store = NodeStore::open(dir.path()).unwrap();
        let mut stmt = store
            .conn
            .prepare("SELECT relay, seq FROM relay_seq ORDER BY relay")
            .unwrap();
        let rows: Vec<(String, u64)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let want = [("AA", 9), ("BB", 2), ("CC", 4)].map(|(r, s)| (r.to_owned(), s));
        assert_eq!(rows, want);
    }

    /// A backlog of acknowledgements to send (a long outage): each pass of a link reads a
    /// page of them, not all, in one order, and one answered leaves room for the next, so
    /// every one is offered in turn. The query reads the table's key in order, without
    /// sorting the backlog.
    #[test]
    fn pending_acknowledgements_are_read_a_page_at_a_time_in_one_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = NodeStore::open(dir.path()).unwrap();
        let (me, key) = (pid("KGZ"), SigningKey::from_bytes(&[3; 32]));
        let kaz = SigningKey::from_bytes(&[1; 32]);
        let received: Vec<_> = (1..=40)
            .map(|seq| {
                let s = Signed::sign(&envelope(seq, Precedence::Routine), &kaz).unwrap();
                let env = s.decode_unverified().unwrap();
                (s, Ok(env))
            })
            .collect();
        store.store_deliveries(&received, NOW).unwrap();
        for (_, env) in &received {
            let id = env.as_ref().unwrap().id;
            store
                .acknowledge(&me, &key, &id, "Duty officer", None, 1, NOW)
                .unwrap()
                .unwrap();
        }
        let all = store.pending_receipts(0, usize::MAX).unwrap();
        assert_eq!(all.len(), 40);
        let digests = |rs: &[Signed<Receipt>]| rs.iter().map(|r| r.digest()).collect::<Vec<_>>();
        let mut sorted = digests(&all);
        sorted.sort_by_key(|d| d.0);
        assert_eq!(digests(&all), sorted, "in the order of their digests");

        // Pages of 16, each answered before the next is read: every one once, in order.
        let mut seen = Vec::new();
        loop {
            let page = store.pending_receipts(0, 16).unwrap();
            assert!(page.len() <= 16, "{}", page.len());
            if page.is_empty() {
                break;
            }
            for r in &page {
                store.receipt_stored(0, &r.digest()).unwrap();
            }
            seen.extend(digests(&page));
        }
        assert_eq!(seen, sorted);

        // Read by the key, stopping at the limit: no sort of the whole backlog first.
        let plan: Vec<String> = store
            .conn
            .prepare(&format!("EXPLAIN QUERY PLAN {PENDING_RECEIPTS_SQL}"))
            .unwrap()
            .query_map(params![0, 16], |r| r.get::<_, String>(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(
            plan.iter().all(|step| !step.contains("TEMP B-TREE")),
            "{plan:?}"
        );
    }

    /// A message delivered again after this node acknowledged it: its acknowledgement goes
    /// back into that relay's queue, once; also in a store from before `acks_out`.
    #[test]
    fn a_message_delivered_again_has_its_acknowledgement_offered_again() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = NodeStore::open(dir.path()).unwrap();
        let (me, key) = (pid("KGZ"), SigningKey::from_bytes(&[3; 32]));
        let kaz = SigningKey::from_bytes(&[1; 32]);
        let [acked, other] = [1, 2].map(|seq| {
            let s = Signed::sign(&envelope(seq, Precedence::Routine), &kaz).unwrap();
            let env = s.decode_unverified().unwrap();
            (s, env)
        });
        let batch = [acked.clone(), other.clone()].map(|(s, e)| (s, Ok(e)));
        store.store_deliveries(&batch, NOW).unwrap();
        let ack = match store
            .acknowledge(&me, &key, &acked.1.id, "Duty officer", None, 2, NOW)
            .unwrap()
            .unwrap()
        {
            AckOutcome::Acked { receipt, .. } => receipt,
            other => panic!("{other:?}"),
        };
        for relay in [0, 1] {
            store.receipt_stored(relay, &ack.digest()).unwrap();
        }
        let ids = [acked.1.id, other.1.id];
        assert_eq!(store.reoffer_acks(0, &ids).unwrap(), 1);
        assert_eq!(
            store.pending_receipts(0, usize::MAX).unwrap(),
            vec![ack.clone()]
        );
        assert!(
            store.pending_receipts(1, usize::MAX).unwrap().is_empty(),
            "that relay only"
        );
        assert_eq!(store.reoffer_acks(0, &ids).unwrap(), 0, "already queued");

        // A store from before the table learns it from its acknowledgements.
        store.receipt_stored(0, &ack.digest()).unwrap();
        store.conn.execute_batch("DROP TABLE acks_out").unwrap();
        drop(store);
        let mut store = NodeStore::open(dir.path()).unwrap();
        assert_eq!(store.reoffer_acks(1, &ids).unwrap(), 1);
        assert_eq!(store.pending_receipts(1, usize::MAX).unwrap(), vec![ack]);
    }

    #[test]
    fn received_messages_referencing_a_sent_one_are_its_answers() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = NodeStore::open(dir.path()).unwrap();
        let me = pid("KGZ");
        let sent = flash_alert(&mut store, &me, &[pid("KAZ")]);
        let sent_id = sent.decode_unverified().unwrap().id;
        let kaz = SigningKey::from_bytes(&[1; 32]);
        let mut reply = envelope(1, Precedence::Flash);
        reply.kind = Kind::Reply;
        reply.references = vec![sent_id];
        reply.subject = "Re: Incident at the border".into();
        let mut unrelated = envelope(2, Precedence::Routine);
        unrelated.references = vec![MessageId([0xAB; 16])];
        let plain = envelope(3, Precedence::Routine);
        let batch: Vec<_> = [&reply, &unrelated, &plain]
            .map(|e| (Signed::sign(e, &kaz).unwrap(), Ok(e.clone())))
            .into();
        store.store_deliveries(&batch, NOW + 1).unwrap();
        let answers = |store: &NodeStore| -> Vec<(MessageId, Kind, u64)> {
            store
                .sent_message(&sent_id)
                .unwrap()
                .unwrap()
                .answers
                .into_iter()
                .map(|a| (a.id, a.kind, a.received_at_ms))
                .collect()
        };
        assert_eq!(answers(&store), vec![(reply.id, Kind::Reply, NOW + 1)]);
        // This node answers `plain` (received): that message shows it was answered here.
        let draft = Draft {
            kind: Kind::Reply,
            references: vec![plain.id],
            ..Draft::alert(&[pid("KAZ")], "Re: message 3")
        };
        store
            .compose(
                &me,
                &SigningKey::from_bytes(&[1; 32]),
                draft,
                &[pid("KAZ")],
                1,
                NOW + 2,
            )
            .unwrap()
            .unwrap();
        let answered_here = |store: &NodeStore, id: &MessageId| {
            store.inbox_message(id).unwrap().unwrap().answered_at_ms
        };
        assert_eq!(answered_here(&store, &plain.id), Some(NOW + 2));
        assert_eq!(answered_here(&store, &reply.id), None);
        assert_eq!(
            store
                .inbox(10)
                .unwrap()
                .iter()
                .filter(|m| m.answered_at_ms.is_some())
                .count(),
            1
        );
        // A store made before the table existed fills it from its inbox and its sent
        // messages when opened.
        store.conn.execute_batch("DROP TABLE answers").unwrap();
        drop(store);
        let store = NodeStore::open(dir.path()).unwrap();
        assert_eq!(answers(&store), vec![(reply.id, Kind::Reply, NOW + 1)]);
        assert_eq!(answered_here(&store, &plain.id), Some(NOW + 2));
    }

    #[test]
    fn a_recipient_is_news_once_per_kind_however_many_receipts_say_it() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, me, _, item) = alert_to_kgz_and_tjk(dir.path());
        let id = item.id;
        // KGZ's receipts: through each of two relays, and at different times, so different
        // bytes; then two acknowledgements.
        let receipt = |at: u64, kind: ReceiptKind| kgz_receipt(at, kind, item.clone());
        let ack = duty_ack;
        let news = |store: &mut NodeStore, r: Verified<Receipt>| {
            let out = store.store_forwarded(&me, &[r], NOW).unwrap();
            assert_eq!(out.len(), 1);
            (
                out[0].fresh,
                out[0].first.iter().map(|n| n.id).collect::<Vec<_>>(),
            )
        };

        let first = receipt(NOW + 1, ReceiptKind::Delivered);
        assert_eq!(news(&mut store, first.clone()), (true, vec![id]));
        assert_eq!(
            news(&mut store, first),
            (false, vec![]),
            "the same bytes again"
        );
        assert_eq!(
            news(&mut store, receipt(NOW + 2, ReceiptKind::Delivered)),
            (false, vec![]),
            "another delivered receipt from KGZ is no news, and not kept"
        );
        assert_eq!(news(&mut store, receipt(NOW + 3, ack())), (true, vec![id]));
        assert_eq!(news(&mut store, receipt(NOW + 4, ack())), (false, vec![]));
        assert_eq!(
            news(&mut store, receipt(NOW + 5, ReceiptKind::Delivered)),
            (false, vec![]),
            "a late delivered receipt after the acknowledgement"
        );
        // A receipt over our bytes from a participant no acceptance listed (a relay whose
        // roster resolved the audience to more recipients delivered to it) is news: it has
        // the message.
        let stranger = receipt_of("MNG", 4, NOW, ReceiptKind::Delivered, item.clone());
        assert_eq!(news(&mut store, stranger.clone()), (true, vec![id]));
        assert_eq!(news(&mut store, stranger), (false, vec![]), "once");
        // What is kept is the record: KGZ's first delivered receipt and first acknowledgement,
        // and MNG's delivered receipt.
        let kept: Vec<(String, u64)> = store
            .receipts_in()
            .unwrap()
            .iter()
            .map(|r| r.decode_unverified().unwrap())
            .map(|r| (r.recipient.to_string(), r.created_at_ms))
            .collect();
        assert_eq!(kept.len(), 3, "{kept:?}");
        for want in [("KGZ", NOW + 1), ("KGZ", NOW + 3), ("MNG", NOW)] {
            assert!(kept.contains(&(want.0.to_string(), want.1)), "{kept:?}");
        }
        let rows = store.sent_message(&id).unwrap().unwrap().matrix;
        let rows: Vec<(&str, bool, bool)> = rows
            .iter()
            .map(|r| {
                (
                    r.recipient.as_str(),
                    r.delivered_at_ms.is_some(),
                    r.acked_at_ms.is_some(),
                )
            })
            .collect();
        assert_eq!(
            rows,
            [
                ("KGZ", true, true),
                ("MNG", true, false),
                ("TJK", false, false)
            ]
        );
    }

    /// The recipients a sender's records show are every relay's: the first acceptance's
    /// list replaces what this node's roster expected (but not a recipient whose receipt came
    /// first), and a later relay's acceptance adds those its roster listed and the first's
    /// did not (a roster change in flight). PROTOCOL.md 12.2.
    #[test]
    fn every_relays_recipients_are_recorded_and_a_receipted_one_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = NodeStore::open(dir.path()).unwrap();
        let me = pid("KAZ");
        let draft = flash_draft(
            &[pid("KGZ"), pid("TJK"), pid("UZB")],
            "Incident at the border",
        );
        let expected = [pid("KGZ"), pid("TJK"), pid("UZB")];
        let sent = store
            .compose(
                &me,
                &SigningKey::from_bytes(&[1; 32]),
                draft,
                &expected,
                2,
                NOW,
            )
            .unwrap()
            .unwrap();
        let id = sent.decode_unverified().unwrap().id;
        let recipients = |store: &NodeStore| -> Vec<(String, bool)> {
            let m = store.sent_message(&id).unwrap().unwrap().matrix;
            m.iter()
                .map(|r| (r.recipient.to_string(), r.delivered_at_ms.is_some()))
                .collect()
        };
        // UZB's receipt comes before any acceptance: UZB has the message.
        let uzb = receipt_by("UZB", 6, NOW, &me, id, sent.digest());
        assert_eq!(
            store.store_forwarded(&me, &[uzb], NOW).unwrap()[0].first,
            [News {
                id,
                status: Some(Status::Actual)
            }]
        );
        // Relay 0 (its roster revoked TJK and UZB) accepts first: TJK leaves the record, UZB,
        // which has receipted, stays.
        let accepted = |recipients: &[&str]| Accepted {
            id,
            recipients: recipients.iter().map(|r| pid(r)).collect(),
            accepted_at_ms: NOW + 1,
        };
        assert_eq!(
            store
                .accepted(0, &accepted(&["KGZ"]), Some(1), NOW + 1)
                .unwrap(),
            Answered::New {
                status: Some(Status::Actual)
            }
        );
        assert_eq!(
            recipients(&store),
            [("KGZ".into(), false), ("UZB".into(), true)]
        );
        // Relay 1, whose roster has TJK and also MNG, accepts second: both are added.
        let second = accepted(&["KGZ", "MNG", "TJK"]);
        assert_eq!(
            store.accepted(1, &second, Some(1), NOW + 2).unwrap(),
            Answered::New {
                status: Some(Status::Actual)
            }
        );
        let want: Vec<(String, bool)> = [
            ("KGZ", false),
            ("MNG", false),
            ("TJK", false),
            ("UZB", true),
        ]
        .map(|(p, d)| (p.to_string(), d))
        .to_vec();
        assert_eq!(recipients(&store), want);
        // Its answer to a resubmission changes nothing, and the record survives a restart.
        assert_eq!(
            store.accepted(1, &second, Some(1), NOW + 3).unwrap(),
            Answered::Again
        );
        // A relay that holds no outbox row for it (a third, added to the configuration
        // after the message was sent) answers with one more recipient: news, not a repeat.
        assert_eq!(
            store
                .accepted(2, &accepted(&["KGZ", "TKM"]), Some(1), NOW + 4)
                .unwrap(),
            Answered::New {
                status: Some(Status::Actual)
            }
        );
        let mut want = want;
        want.insert(3, ("TKM".into(), false));
        assert_eq!(recipients(&store), want);
        drop(store);
        let store = NodeStore::open(dir.path()).unwrap();
        assert_eq!(recipients(&store), want);
        let kinds: Vec<String> = store
            .conn
            .prepare("SELECT kind FROM journal WHERE kind LIKE 'message.%' ORDER BY seq")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(
            kinds,
            [
                "message.sent",
                "message.accepted",
                "message.recipients.added",
                "message.recipients.added"
            ]
        );
    }

    /// The matrix shows both times of each receipt it records: when it reached this node
    /// (by this node's clock: `delivered_at_ms`, `acked_at_ms`) and when the recipient signed
    /// it (by its clock, as the relay's report shows). A recipient that acknowledged before the
    /// deadline while its receipt came after (a relay down meanwhile) shows as acknowledged
    /// in time by its own word. A store from before the signed times learns them from the
    /// receipts it keeps, the first time it opens.
    #[test]
    fn the_matrix_keeps_the_times_signed_in_the_receipts_beside_their_arrival() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, me, _, item) = alert_to_kgz_and_tjk(dir.path());
        let id = item.id;
        let ack = duty_ack;
        // KGZ stores it at NOW + 1 and acknowledges at NOW + 5; both reach KAZ at NOW + 90.
        store
            .store_forwarded(
                &me,
                &[kgz_receipt(NOW + 1, ReceiptKind::Delivered, item.clone())],
                NOW + 90,
            )
            .unwrap();
        store
            .store_forwarded(&me, &[kgz_receipt(NOW + 5, ack(), item.clone())], NOW + 90)
            .unwrap();
        // TJK's acknowledgement, signed at NOW + 7, is its first receipt, and arrives at NOW + 95.
        let tjk = receipt_of("TJK", 5, NOW + 7, ack(), item.clone());
        store.store_forwarded(&me, &[tjk], NOW + 95).unwrap();
        type Times = (Option<u64>, Option<u64>, Option<u64>, Option<u64>);
        let times = |store: &NodeStore| -> Vec<Times> {
            let m = store.sent_message(&id).unwrap().unwrap().matrix;
            m.iter()
                .map(|r| {
                    (
                        r.delivered_at_ms,
                        r.delivered_signed_at_ms,
                        r.acked_at_ms,
                        r.acked_signed_at_ms,
                    )
                })
                .collect()
        };
        let want = vec![
            (Some(NOW + 90), Some(NOW + 1), Some(NOW + 90), Some(NOW + 5)),
            (Some(NOW + 95), Some(NOW + 7), Some(NOW + 95), Some(NOW + 7)),
        ];
        assert_eq!(times(&store), want);
        // A second message B, and a receipt from KGZ signed earlier than its first one
        // (it came through another relay, late): kept as news for B, it also gives A's row
        // its earlier signed time, as the fill below computes it.
        let b = flash_alert(&mut store, &me, &[pid("KGZ")]);
        let b_item = ReceiptItem {
            id: b.decode_unverified().unwrap().id,
            sender: me.clone(),
            digest: b.digest(),
        };
        let both = Receipt {
            version: PROTOCOL_VERSION,
            recipient: pid("KGZ"),
            kind: ReceiptKind::Delivered,
            created_at_ms: NOW,
            items: vec![item.clone(), b_item],
        };
        let both = Signed::sign(&both, &SigningKey::from_bytes(&[3; 32])).unwrap();
        let out = store
            .store_forwarded(&me, &[both.verify_with(&both.key()).unwrap()], NOW + 99)
            .unwrap();
        assert!(out[0].fresh, "news for B");
        let mut want = want;
        want[0].1 = Some(NOW);
        assert_eq!(times(&store), want);
        // A store from before the table: learnt from its receipts when it opens.
        store
            .conn
            .execute_batch("DROP TABLE matrix_signed")
            .unwrap();
        drop(store);
        let store = NodeStore::open(dir.path()).unwrap();
        assert_eq!(times(&store), want);
        // A store a version-1 node wrote after the table was made (a rollback that kept the
        // store): the table lacks that node's receipts, and the version says so. It is
        // filled again, and the version raised.
        store
            .conn
            .execute_batch(
                "DELETE FROM matrix_signed WHERE recipient = 'KGZ'; PRAGMA user_version = 1",
            )
            .unwrap();
        drop(store);
        let store = NodeStore::open(dir.path()).unwrap();
        assert_eq!(times(&store), want);
        drop(store);
        assert_eq!(user_version(dir.path()), SCHEMA_VERSION);
    }

    #[test]
    fn a_receipt_naming_other_content_under_our_id_is_not_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = NodeStore::open(dir.path()).unwrap();
        let me = pid("KAZ");
        let sent = flash_alert(&mut store, &me, &[pid("KGZ")]);
        let id = sent.decode_unverified().unwrap().id;
        let receipt = |digest: Digest, kind: ReceiptKind| {
            let item = ReceiptItem {
                id,
                sender: me.clone(),
                digest,
            };
            kgz_receipt(NOW, kind, item)
        };
        let ack = duty_ack();
        // KGZ, genuinely, receipts content that is not what KAZ signed (a relay altered it
        // and KGZ quarantined it): stored as received, recorded as nothing. Its
        // acknowledgement of that content tells nothing more of it, and is not kept: one
        // mismatch per message and signer, whatever its kind.
        let other = Digest([7; 32]);
        let out = store
            .store_forwarded(&me, &[receipt(other, ReceiptKind::Delivered)], NOW)
            .unwrap();
        assert_eq!(out[0], kept_mismatch(id));
        let out = store
            .store_forwarded(&me, &[receipt(other, ack.clone())], NOW)
            .unwrap();
        assert_eq!(out[0], REDUNDANT);
        let row = |store: &NodeStore| -> (Option<u64>, Option<u64>) {
            store
                .conn
                .query_row(
                    "SELECT delivered_at_ms, acked_at_ms FROM matrix WHERE id = ?1",
                    [&id.0[..]],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .unwrap()
        };
        assert_eq!(row(&store), (None, None));
        // The receipt of what KAZ sent is news.
        let out = store
            .store_forwarded(&me, &[receipt(sent.digest(), ack)], NOW + 1)
            .unwrap();
        assert_eq!(
            out[0],
            Forwarded {
                fresh: true,
                first: vec![News {
                    id,
                    status: Some(Status::Actual)
                }],
                mismatched: vec![],
                unrelated: false,
            }
        );
        assert_eq!(row(&store), (Some(NOW + 1), Some(NOW + 1)));
        // A genuine receipt naming only messages this node never sent (others', or ids
        // it does not hold) is not kept: a relay forwarding the network's receipts here
        // would otherwise fill the disk.
        let held = store.receipts_in().unwrap().len();
        let others = ReceiptItem {
            id: MessageId([0xEE; 16]),
            sender: me.clone(),
            digest: other,
        };
        let theirs = ReceiptItem {
            id,
            sender: pid("TKM"),
            digest: sent.digest(),
        };
        for item in [others, theirs] {
            let out = store
                .store_forwarded(
                    &me,
                    &[kgz_receipt(NOW + 2, ReceiptKind::Delivered, item)],
                    NOW + 2,
                )
                .unwrap();
            assert_eq!(
                out[0],
                Forwarded {
                    fresh: false,
                    first: vec![],
                    mismatched: vec![],
                    unrelated: true,
                }
            );
        }
        assert_eq!(store.receipts_in().unwrap().len(), held);
    }

    /// An acknowledgement that comes before the delivered receipt (that relay's link to
    /// this node was down, another's was up) shows the recipient delivered too, and the late
    /// delivered receipt is no news.
    #[test]
    fn an_acknowledgement_before_the_delivered_receipt_shows_both() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, me, _, item) = alert_to_kgz_and_tjk(dir.path());
        let id = item.id;
        let acked = kgz_receipt(NOW + 2, duty_ack(), item.clone());
        let told = store.store_forwarded(&me, &[acked], NOW + 3).unwrap();
        assert_eq!(told[0].first.len(), 1);
        let delivered = kgz_receipt(NOW + 1, ReceiptKind::Delivered, item);
        let told = store.store_forwarded(&me, &[delivered], NOW + 4).unwrap();
        assert!(!told[0].fresh && told[0].first.is_empty(), "{told:?}");
        let m = store.sent_message(&id).unwrap().unwrap().matrix;
        let kgz = m.iter().find(|r| r.recipient.as_str() == "KGZ").unwrap();
        assert_eq!(
            (kgz.delivered_at_ms, kgz.acked_at_ms),
            (Some(NOW + 3), Some(NOW + 3))
        );
    }

    /// The sender is never a recipient of its own message (PROTOCOL.md 7.4 step 1), so a
    /// receipt of it signed by this node's own participant is none: a relay that delivers
    /// a node its own message back has it quarantined and receipted there, and may forward
    /// that receipt. It must not add this node to its own delivery matrix.
    #[test]
    fn a_receipt_of_our_message_signed_by_ourselves_records_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = NodeStore::open(dir.path()).unwrap();
        let me = pid("KAZ");
        let key = SigningKey::from_bytes(&[1; 32]);
        let draft = flash_draft(&[pid("KGZ")], "Incident at the border");
        let sent = store
            .compose(&me, &key, draft, &[pid("KGZ")], 1, NOW)
            .unwrap()
            .unwrap();
        let id = sent.decode_unverified().unwrap().id;
        let own = receipt_by("KAZ", 1, NOW, &me, id, sent.digest());
        let told = store.store_forwarded(&me, &[own], NOW).unwrap();
        assert_eq!(
            told,
            [Forwarded {
                fresh: false,
                first: vec![],
                mismatched: vec![],
                unrelated: true,
            }]
        );
        let m = store.sent_message(&id).unwrap().unwrap().matrix;
        let rows: Vec<(String, bool)> = m
            .iter()
            .map(|r| (r.recipient.to_string(), r.delivered_at_ms.is_some()))
            .collect();
        assert_eq!(rows, [("KGZ".to_string(), false)]);
    }

    /// A delivered receipt signed by `who` (key seed `seed`) at `at`, naming `id` (sent by
    /// `me`) with `digest`.
    fn receipt_by(
        who: &str,
        seed: u8,
        at: u64,
        me: &ParticipantId,
        id: MessageId,
        digest: Digest,
    ) -> Verified<Receipt> {
        let item = ReceiptItem {
            id,
            sender: me.clone(),
            digest,
        };
        receipt_of(who, seed, at, ReceiptKind::Delivered, item)
    }

    /// Kept as the first evidence of other content under `id`, from its signer.
    fn kept_mismatch(id: MessageId) -> Forwarded {
        Forwarded {
            fresh: true,
            first: vec![],
            mismatched: vec![id],
            unrelated: false,
        }
    }

    /// Not kept, and nothing to tell: a redundant receipt.
    const REDUNDANT: Forwarded = Forwarded {
        fresh: false,
        first: vec![],
        mismatched: vec![],
        unrelated: false,
    };

    /// A participant signing receipts without end that name one of our messages with made-up
    /// digests: each would be a new receipt, so without a bound each was kept, journaled and
    /// logged. The first from each signer for each message is kept (an addressee or not);
    /// later ones, in the same batch or after a restart, are not. A receipt of what was sent
    /// is still news after a mismatch from the same signer.
    #[test]
    fn one_mismatched_receipt_per_message_and_signer_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = NodeStore::open(dir.path()).unwrap();
        let me = pid("KAZ");
        let sent = flash_alert(&mut store, &me, &[pid("KGZ"), pid("TJK")]);
        let id = sent.decode_unverified().unwrap().id;
        let made_up = |n: u8| Digest([n; 32]);
        let forward = |store: &mut NodeStore, rs: &[Verified<Receipt>]| {
            store.store_forwarded(&me, rs, NOW).unwrap()
        };
        let held = |store: &NodeStore| store.receipts_in().unwrap().len();

        let kgz = |at: u64, digest: Digest| receipt_by("KGZ", 3, at, &me, id, digest);
        assert_eq!(
            forward(&mut store, &[kgz(NOW, made_up(7))]),
            [kept_mismatch(id)]
        );
        assert_eq!(held(&store), 1);
        // Another digest, another time, an acknowledgement: none is kept.
        let ack = {
            let item = ReceiptItem {
                id,
                sender: me.clone(),
                digest: made_up(7),
            };
            kgz_receipt(NOW + 2, duty_ack(), item)
        };
        for r in [kgz(NOW + 1, made_up(8)), kgz(NOW + 1, made_up(7)), ack] {
            assert_eq!(forward(&mut store, &[r]), [REDUNDANT]);
        }
        assert_eq!(held(&store), 1, "KGZ's later mismatches are not kept");

        // Another addressee, and a participant the message was not addressed to: each's
        // first is kept, also when the second comes in the same batch.
        for (who, seed) in [("TJK", 5), ("MNG", 4)] {
            let batch = [
                receipt_by(who, seed, NOW, &me, id, made_up(7)),
                receipt_by(who, seed, NOW + 1, &me, id, made_up(9)),
            ];
            assert_eq!(forward(&mut store, &batch), [kept_mismatch(id), REDUNDANT]);
        }
        assert_eq!(held(&store), 3);

        // The record survives a restart.
        drop(store);
        let mut store = NodeStore::open(dir.path()).unwrap();
        for (who, seed) in [("KGZ", 3), ("TJK", 5), ("MNG", 4)] {
            let r = receipt_by(who, seed, NOW + 3, &me, id, made_up(10));
            assert_eq!(forward(&mut store, &[r]), [REDUNDANT], "{who}");
        }
        assert_eq!(held(&store), 3);

        // KGZ's receipt of what KAZ sent is news: the matrix records what matches.
        let out = forward(&mut store, &[kgz(NOW + 4, sent.digest())]);
        assert_eq!(
            out,
            [Forwarded {
                fresh: true,
                first: vec![News {
                    id,
                    status: Some(Status::Actual)
                }],
                mismatched: vec![],
                unrelated: false,
            }]
        );
        assert_eq!(held(&store), 4);
        let r = kgz(NOW + 5, made_up(11));
        assert_eq!(forward(&mut store, &[r]), [REDUNDANT]);
        assert_eq!(held(&store), 4);
    }

    /// A store from before the record of mismatches learns it from the receipts it holds
    /// when it opens, and its bound holds from then on.
    #[test]
    fn a_store_from_before_the_mismatch_record_learns_it_from_its_receipts() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = NodeStore::open(dir.path()).unwrap();
        let me = pid("KAZ");
        let sent = flash_alert(&mut store, &me, &[pid("KGZ"), pid("TJK")]);
        let id = sent.decode_unverified().unwrap().id;
        let kgz = |at: u64, digest: Digest| receipt_by("KGZ", 3, at, &me, id, digest);
        // KGZ's mismatch and TJK's receipt of what was sent, kept as the previous version
        // kept them: a store without the table.
        let batch = [
            kgz(NOW, Digest([7; 32])),
            receipt_by("TJK", 5, NOW, &me, id, sent.digest()),
        ];
        store.store_forwarded(&me, &batch, NOW).unwrap();
        store.conn.execute_batch("DROP TABLE mismatches").unwrap();
        drop(store);

        let mut store = NodeStore::open(dir.path()).unwrap();
        let held = store.receipts_in().unwrap().len();
        assert_eq!(held, 2);
        let out = store
            .store_forwarded(&me, &[kgz(NOW + 1, Digest([8; 32]))], NOW + 1)
            .unwrap();
        assert_eq!(out, [REDUNDANT], "KGZ's mismatch was learnt");
        let tjk = receipt_by("TJK", 5, NOW + 1, &me, id, Digest([8; 32]));
        let out = store.store_forwarded(&me, &[tjk], NOW + 1).unwrap();
        assert_eq!(
            out,
            [kept_mismatch(id)],
            "TJK's matching receipt is no mismatch"
        );
        assert_eq!(store.receipts_in().unwrap().len(), held + 1);
    }

    #[test]
    fn quarantined_deliveries_that_now_pass_move_to_the_inbox_as_received_when_they_came() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = NodeStore::open(dir.path()).unwrap();
        let kaz = SigningKey::from_bytes(&[1; 32]);
        let held = |e: &Envelope| {
            (
                Signed::sign(e, &kaz).unwrap(),
                Err("unknown key".to_string()),
            )
        };
        let (a, b, c) = (
            envelope(1, Precedence::Flash),
            envelope(2, Precedence::Routine),
            envelope(3, Precedence::Routine),
        );
        // `b` is also in the inbox already, as these bytes; `c`'s id is there with others.
        let mut c_other = c.clone();
        c_other.subject = "another text under the same id".into();
        let batch = [held(&a), held(&b), held(&c)];
        store.store_deliveries(&batch, NOW).unwrap();
        let inbox_copies = [
            (batch[1].0.clone(), Ok(b.clone())),
            (Signed::sign(&c_other, &kaz).unwrap(), Ok(c_other.clone())),
        ];
        store.store_deliveries(&inbox_copies, NOW + 5).unwrap();
        assert_eq!(store.quarantined(10).unwrap().len(), 3);

        let passed: Vec<_> = batch
            .iter()
            .zip([&a, &b, &c])
            .map(|((s, _), e)| (s.digest(), e.clone()))
            .collect();
        let released = store.release(&passed, NOW + 10).unwrap();
        assert_eq!(
            ids(&released),
            ids(std::slice::from_ref(&a)),
            "only the one not in the inbox"
        );
        let left: Vec<_> = store
            .quarantined(10)
            .unwrap()
            .into_iter()
            .map(|q| q.digest)
            .collect();
        assert_eq!(
            left,
            vec![batch[2].0.digest()],
            "other bytes under an id the inbox holds stay"
        );
        let shown = store.inbox_message(&a.id).unwrap().unwrap();
        assert_eq!(shown.received_at_ms, NOW, "received when it arrived");
        assert_eq!(
            ids(&store.unannounced().unwrap()),
            ids(&[a.clone(), b.clone(), c_other.clone()])
        );
        // Released again: nothing (the row has gone).
        assert!(store.release(&passed, NOW + 20).unwrap().is_empty());
        // The journal holds every stored record.
        drop(store);
        let path = dir.path().join(DB_FILE);
        verify_records(&Connection::open(&path).unwrap(), &path).unwrap();
    }

    #[test]
    fn a_flash_message_released_from_quarantine_pages_again_an_interval_after_its_release() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = NodeStore::open(dir.path()).unwrap();
        let kaz = SigningKey::from_bytes(&[1; 32]);
        let flash = envelope(1, Precedence::Flash);
        let signed = Signed::sign(&flash, &kaz).unwrap();
        store
            .store_deliveries(&[(signed.clone(), Err("unknown key".into()))], NOW)
            .unwrap();
        let interval = 300_000;
        let released_at = NOW + 10 * interval;
        let released = store
            .release(&[(signed.digest(), flash.clone())], released_at)
            .unwrap();
        assert_eq!(ids(&released), ids(std::slice::from_ref(&flash)));
        assert!(
            store
                .due_pages(released_at + 1, interval)
                .unwrap()
                .is_empty(),
            "its announcement at release was its page"
        );
        let due = store.due_pages(released_at + interval, interval).unwrap();
        assert_eq!(ids(&due), ids(&[flash]));
    }

    #[test]
    fn a_full_quarantine_refuses_what_fails_its_checks_until_the_operator_discards() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = NodeStore::open(dir.path()).unwrap();
        let kaz = SigningKey::from_bytes(&[1; 32]);
        let forged = |n: u64| {
            let s = Signed::sign(&envelope(n, Precedence::Routine), &kaz).unwrap();
            (s, Err("unknown key".to_string()))
        };
        let (a, b, c) = (forged(1), forged(2), forged(3));
        // Room for `a` only: the limit is checked before each one is held.
        store.set_quarantine_max_bytes(a.0.bytes().len() as u64);
        let (out, items) = store
            .store_deliveries(&[a.clone(), b.clone()], NOW)
            .unwrap();
        assert_eq!(
            out,
            vec![
                Stored::Quarantined("unknown key".into()),
                Stored::Refused("unknown key".into())
            ]
        );
        assert_eq!(items.len(), 1, "what is refused is not receipted");
        assert_eq!(items[0].digest, a.0.digest());
        let (size, full) = store.quarantine_size();
        assert_eq!(
            (size.held, size.bytes, full),
            (1, a.0.bytes().len() as u64, true)
        );
        // `a` delivered again while full: still held, so receipted again.
        let (out, items) = store
            .store_deliveries(&[a.clone(), c.clone()], NOW + 1)
            .unwrap();
        assert_eq!(out[0], Stored::Quarantined("unknown key".into()));
        assert!(matches!(out[1], Stored::Refused(_)));
        assert_eq!(items.len(), 1);
        assert_eq!(store.quarantine_size().0.held, 1, "counted once");

        let discard = |store: &mut NodeStore, d: Option<&Digest>, max| {
            store
                .discard_quarantined(d, "Duty officer", NOW + 2, max)
                .unwrap()
        };
        assert_eq!(discard(&mut store, Some(&b.0.digest()), 1), 0, "not held");
        assert_eq!(discard(&mut store, Some(&a.0.digest()), 1), 1);
        assert_eq!(store.quarantine_size(), (QuarantineSize::default(), false));
        // Room again: `b` and `c` are held; all are discarded, the oldest first, two a call.
        store.set_quarantine_max_bytes(u64::MAX);
        let (out, _) = store
            .store_deliveries(&[b.clone(), c.clone(), a.clone()], NOW + 3)
            .unwrap();
        assert_eq!(out, vec![Stored::Quarantined("unknown key".into()); 3]);
        assert_eq!(discard(&mut store, None, 2), 2);
        assert_eq!(store.quarantine_size().0.held, 1);
        assert_eq!(discard(&mut store, None, 2), 1);
        assert_eq!(discard(&mut store, None, 2), 0);
        assert_eq!(store.quarantine_size(), (QuarantineSize::default(), false));
        let (out, _) = store
            .store_deliveries(std::slice::from_ref(&b), NOW + 4)
            .unwrap();
        assert_eq!(out, vec![Stored::Quarantined("unknown key".into())]);
        // A reopened store counts what its table holds.
        drop(store);
        let store = NodeStore::open(dir.path()).unwrap();
        assert_eq!(store.quarantine_size().0.held, 1);
        assert_eq!(store.quarantine_size().0.bytes, b.0.bytes().len() as u64);
        let discarded: Vec<String> = store
            .conn
            .prepare("SELECT subject FROM journal WHERE kind = 'message.quarantine_discarded'")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let order = [&a, &b, &c, &a].map(|x| x.0.digest().to_string());
        assert_eq!(discarded, order, "journaled one by one, the oldest first");
        drop(store);
        let path = dir.path().join(DB_FILE);
        verify_records(&Connection::open(&path).unwrap(), &path).unwrap();
    }

    #[test]
    fn more_waiting_deliveries_than_a_receipt_holds_are_receipted_in_several() {
        // Receipt pacing lets up to RECEIPT_PACE_ITEMS wait and then adds a whole batch
        // (up to RECEIPT_BATCH_MAX more) before the receipt leaves.
        let dir = tempfile::tempdir().unwrap();
        let mut store = NodeStore::open(dir.path()).unwrap();
        let key = SigningKey::from_bytes(&[1; 32]);
        let n = crate::limits::RECEIPT_PACE_ITEMS + crate::limits::RECEIPT_BATCH_MAX - 1;
        let items: Vec<ReceiptItem> = (0..n)
            .map(|i| ReceiptItem {
                id: MessageId::generate(NOW + i as u64),
                sender: pid("KAZ"),
                digest: Digest([i as u8; 32]),
            })
            .collect();
        let receipts = store
            .delivered_receipts(&pid("KGZ"), &key, items.clone(), NOW)
            .unwrap();
        let sizes: Vec<usize> = receipts
            .iter()
            .map(|r| r.verify_with(&r.key()).unwrap().value().items.len())
            .collect();
        let max = hotline_proto::limits::RECEIPT_ITEMS_MAX;
        assert_eq!(sizes, vec![max, n - max]);
        let covered: Vec<ReceiptItem> = receipts
            .iter()
            .flat_map(|r| r.decode_unverified().unwrap().items)
            .collect();
        assert_eq!(covered, items, "every item once, in order");
    }

    fn claimed(store: &NodeStore) -> Vec<String> {
        store
            .conn
            .prepare("SELECT subject FROM journal WHERE kind = 'store.participant'")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[test]
    fn a_store_is_its_first_participants_and_refused_to_another() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = NodeStore::open(dir.path()).unwrap();
        assert_eq!(store_participant(&store.conn, &store.path).unwrap(), None);
        // A first start with a mistyped participant, corrected: the store held nothing yet.
        store.claim_participant(&pid("TJK"), NOW).unwrap();
        store.claim_participant(&pid("KGZ"), NOW).unwrap();
        assert_eq!(claimed(&store), ["TJK", "KGZ"]);
        store.claim_participant(&pid("KGZ"), NOW + 1).unwrap();
        assert_eq!(
            claimed(&store),
            ["TJK", "KGZ"],
            "recorded once a participant"
        );
        // Once it holds something of KGZ's (here a message it received), it is KGZ's.
        let kaz = SigningKey::from_bytes(&[1; 32]);
        let received = Signed::sign(&envelope(1, Precedence::Routine), &kaz).unwrap();
        let env = received.decode_unverified().unwrap();
        store.store_deliveries(&[(received, Ok(env))], NOW).unwrap();
        let err = store.claim_participant(&pid("KAZ"), NOW + 2).unwrap_err();
        match &err {
            StoreError::OtherParticipant {
                holder, configured, ..
            } => assert_eq!((holder.as_str(), configured.as_str()), ("KGZ", "KAZ")),
            other => panic!("{other:?}"),
        }
        let text = err.to_string();
        assert!(text.contains("node.db") && text.contains("KGZ"), "{text}");
        // Reopened, it is still KGZ's; the refusal changed nothing.
        drop(store);
        let mut store = NodeStore::open(dir.path()).unwrap();
        assert!(store.claim_participant(&pid("KAZ"), NOW + 3).is_err());
        assert_eq!(claimed(&store), ["TJK", "KGZ"]);
        let path = dir.path().join(DB_FILE);
        verify_records(&Connection::open(&path).unwrap(), &path).unwrap();
    }

    #[test]
    fn a_store_from_before_the_record_is_known_by_what_it_signed() {
        // KGZ sent a message (and acknowledged one): never claimed, it is KGZ's.
        let dir = store_with_every_record();
        let mut store = NodeStore::open(dir.path()).unwrap();
        assert_eq!(
            store_participant(&store.conn, &store.path).unwrap(),
            Some(pid("KGZ"))
        );
        assert!(matches!(
            store.claim_participant(&pid("KAZ"), NOW),
            Err(StoreError::OtherParticipant { .. })
        ));
        assert!(claimed(&store).is_empty(), "a refusal records nothing");
        store.claim_participant(&pid("KGZ"), NOW).unwrap();
        assert_eq!(claimed(&store), ["KGZ"]);

        // One that only acknowledged: known by its receipt.
        let dir = tempfile::tempdir().unwrap();
        let mut store = NodeStore::open(dir.path()).unwrap();
        let kaz = SigningKey::from_bytes(&[1; 32]);
        let received = Signed::sign(&envelope(1, Precedence::Routine), &kaz).unwrap();
        let env = received.decode_unverified().unwrap();
        store
            .store_deliveries(&[(received, Ok(env.clone()))], NOW)
            .unwrap();
        assert_eq!(
            store_participant(&store.conn, &store.path).unwrap(),
            None,
            "a received message does not say whose store it is"
        );
        let key = SigningKey::from_bytes(&[3; 32]);
        store
            .acknowledge(&pid("KGZ"), &key, &env.id, "Duty officer", None, 1, NOW)
            .unwrap()
            .unwrap();
        assert_eq!(
            store_participant(&store.conn, &store.path).unwrap(),
            Some(pid("KGZ"))
        );
        assert!(store.claim_participant(&pid("TJK"), NOW).is_err());

        // One that only received and receipted delivery: known by its journal.
        let dir = tempfile::tempdir().unwrap();
        let mut store = NodeStore::open(dir.path()).unwrap();
        let received = Signed::sign(&envelope(2, Precedence::Routine), &kaz).unwrap();
        let env = received.decode_unverified().unwrap();
        let (_, items) = store.store_deliveries(&[(received, Ok(env))], NOW).unwrap();
        assert_eq!(store_participant(&store.conn, &store.path).unwrap(), None);
        store
            .delivered_receipts(&pid("KGZ"), &key, items, NOW)
            .unwrap();
        assert_eq!(
            store_participant(&store.conn, &store.path).unwrap(),
            Some(pid("KGZ"))
        );
        assert!(store.claim_participant(&pid("TJK"), NOW).is_err());
    }
}
