//! The Secretariat's network-wide picture (`hotline relay report`): for each message the
//! relay accepted in a period, who it went to and, for each recipient, when that
//! recipient's node said it held the message and when a person there acknowledged it.
//!
//! Read from the relay's own store, which keeps every accepted message and every signed
//! receipt for good: nothing here is a copy that could disagree with the signed record.
//! Reads only (the store's schema is `store.rs`'s); safe beside a running relay (WAL).
//!
//! The times are the recipients' signing times (`Receipt.created_at_ms`, their clocks):
//! what each recipient signed, and so can be held to. A receipt names its messages inside
//! its signed bytes, so the report decodes the receipts stored since the oldest message of
//! the period; it reads the newest messages and receipts first and stops a margin before
//! the period's start (the relay's clock may have stepped back), so its cost follows the
//! period, not the store's size.

use std::collections::HashMap;

use rusqlite::Connection;

use hotline_proto::{
    codec, Envelope, MessageId, ParticipantId, Receipt, ReceiptKind, SignedPayload,
};
use hotline_store::StoreError;

/// Receipts stored up to this long before the period's first message are read too, and
/// messages accepted up to this long before the period's start (not reported): the relay's
/// clock may have stepped back, and a receipt is never stored before its message.
const CLOCK_STEP_MARGIN_MS: u64 = 10 * 60 * 1000;

/// One recipient of a message, as its receipts tell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecipientState {
    /// The recipient.
    pub recipient: ParticipantId,
    /// When it signed its first receipt naming the message (delivered, or an acknowledgement,
    /// which implies it), its clock.
    pub delivered_at_ms: Option<u64>,
    /// When it signed its first acknowledgement of the message, its clock.
    pub acked_at_ms: Option<u64>,
    /// Who acknowledged it, as signed.
    pub officer: Option<String>,
    /// When it signed its first message referencing this one (a reply, an update) that
    /// this relay accepted, its clock.
    pub answered_at_ms: Option<u64>,
}

/// One accepted message and where it stands.
#[derive(Clone, Debug)]
pub struct Tracked {
    /// The message (decoded from the stored bytes, which the relay verified when it accepted
    /// them and checks at every start).
    pub envelope: Envelope,
    /// When the relay accepted it, the relay's clock.
    pub accepted_at_ms: u64,
    /// Its recipients, as routed when it was accepted, in that order.
    pub recipients: Vec<RecipientState>,
}

impl Tracked {
    /// Recipients whose acknowledgement is due (`respond_by_ms` has passed at `now_ms`) and
    /// missing.
    pub fn overdue(&self, now_ms: u64) -> impl Iterator<Item = &RecipientState> {
        self.recipients
            .iter()
            .filter(move |r| self.is_overdue(r, now_ms))
    }

    /// Whether `r`'s acknowledgement is due at `now_ms` and missing.
    pub fn is_overdue(&self, r: &RecipientState, now_ms: u64) -> bool {
        r.acked_at_ms.is_none() && self.envelope.respond_by_ms.is_some_and(|by| by <= now_ms)
    }
}

fn undecodable(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Record(format!("{what}: {e}").into())
}

/// The messages accepted at or after `since_ms` (at most `limit`, the newest), newest
/// first, each with its recipients' delivered and acknowledged times.
pub fn track(conn: &Connection, since_ms: u64, limit: usize) -> Result<Vec<Tracked>, StoreError> {
    let mut out = period(conn, since_ms, limit, |_| true)?;
    add_receipts(conn, &mut out)?;
    add_answers(conn, &mut out)?;
    Ok(out)
}

/// The messages accepted at or after `since_ms` that have a recipient overdue at `now_ms`
/// ([`Tracked::overdue`]): at most `limit`, the newest, newest first, as [`track`] gives
/// them. The limit counts overdue messages, not all the period's: an overdue message behind
/// `limit` newer ones that are not overdue is found (a script paging the Secretariat on
/// overdue messages must not be told there are none). Only messages whose respond-by time
/// has passed are read with their receipts, so the cost follows those; their bodies (up to
/// 64 KiB each, which no report shows) are not kept while the period is read, so the
/// memory it takes follows their number, not their size.
pub fn track_overdue(
    conn: &Connection,
    since_ms: u64,
    limit: usize,
    now_ms: u64,
) -> Result<Vec<Tracked>, StoreError> {
    let due = |e: &mut Envelope| {
        let due = e.respond_by_ms.is_some_and(|by| by <= now_ms);
        if due {
            e.body = String::new();
        }
        due
    };
    let mut out = period(conn, since_ms, usize::MAX, due)?;
    add_receipts(conn, &mut out)?;
    out.retain(|t| t.overdue(now_ms).next().is_some());
    out.truncate(limit);
    add_answers(conn, &mut out)?;
    Ok(out)
}

/// The messages accepted at or after `since_ms` for which `keep` holds (it may trim what it
/// keeps), at most `limit`, newest first, nobody's receipt read yet.
fn period(
    conn: &Connection,
    since_ms: u64,
    limit: usize,
    mut keep: impl FnMut(&mut Envelope) -> bool,
) -> Result<Vec<Tracked>, StoreError> {
    let mut out: Vec<Tracked> = Vec::new();
    {
        let mut st = conn
            .prepare("SELECT bytes, recipients, accepted_at_ms FROM messages ORDER BY rseq DESC")?;
        let mut rows = st.query([])?;
        while let Some(r) = rows.next()? {
            if out.len() >= limit {
                break;
            }
            let accepted_at_ms: u64 = r.get(2)?;
            // Read past the period's start by the margin: a message accepted after the
            // relay's clock stepped back carries an earlier time than the one before it,
            // and stopping at it would leave out older positions still in the period.
            if accepted_at_ms.saturating_add(CLOCK_STEP_MARGIN_MS) < since_ms {
                break;
            }
            if accepted_at_ms < since_ms {
                continue;
            }
            let mut t = tracked(r)?;
            if keep(&mut t.envelope) {
                out.push(t);
            }
        }
    }
    Ok(out)
}

/// One message, by id (`None` if the relay never accepted it), with its recipients'
/// delivered and acknowledged times.
pub fn track_one(conn: &Connection, id: &MessageId) -> Result<Option<Tracked>, StoreError> {
    let one = conn
        .prepare("SELECT bytes, recipients, accepted_at_ms FROM messages WHERE id = ?1")?
        .query([&id.0[..]])?
        .next()?
        .map(tracked)
        .transpose()?;
    let mut out: Vec<Tracked> = one.into_iter().collect();
    add_receipts(conn, &mut out)?;
    add_answers(conn, &mut out)?;
    Ok(out.pop())
}

/// A message row (`bytes, recipients, accepted_at_ms`), nobody's receipt read yet.
fn tracked(r: &rusqlite::Row<'_>) -> Result<Tracked, StoreError> {
    let bytes: Vec<u8> = r.get(0)?;
    let envelope: Envelope =
        codec::decode(&bytes, Envelope::BYTES_MAX).map_err(|e| undecodable("message", e))?;
    let listed: String = r.get(1)?;
    let recipients = listed
        .split(',')
        .filter_map(|p| ParticipantId::new(p).ok())
        .map(|recipient| RecipientState {
            recipient,
            delivered_at_ms: None,
            acked_at_ms: None,
            officer: None,
            answered_at_ms: None,
        })
        .collect();
    Ok(Tracked {
        envelope,
        accepted_at_ms: r.get(2)?,
        recipients,
    })
}

/// Reads the records of `sql` (`bytes, at_ms`, newest first) back to the oldest acceptance
/// among `out` (less `CLOCK_STEP_MARGIN_MS`), decoding each as `T` (`what` names it in an
/// error) and handing it to `each` with `out` and the position of each of `out`'s messages
/// by id.
fn scan_back<T: SignedPayload>(
    conn: &Connection,
    out: &mut [Tracked],
    sql: &str,
    what: &str,
    mut each: impl FnMut(T, &HashMap<MessageId, usize>, &mut [Tracked]),
) -> Result<(), StoreError> {
    let Some(oldest) = out.iter().map(|t| t.accepted_at_ms).min() else {
        return Ok(());
    };
    let index: HashMap<MessageId, usize> = out
        .iter()
        .enumerate()
        .map(|(i, t)| (t.envelope.id, i))
        .collect();
    let mut st = conn.prepare(sql)?;
    let mut rows = st.query([])?;
    while let Some(r) = rows.next()? {
        let at_ms: u64 = r.get(1)?;
        if at_ms.saturating_add(CLOCK_STEP_MARGIN_MS) < oldest {
            break;
        }
        let bytes: Vec<u8> = r.get(0)?;
        let record: T = codec::decode(&bytes, T::BYTES_MAX).map_err(|e| undecodable(what, e))?;
        each(record, &index, out);
    }
    Ok(())
}

/// Fills in `out`'s recipients from the receipts stored since the oldest of them was
/// accepted (newest first, stopping there).
fn add_receipts(conn: &Connection, out: &mut [Tracked]) -> Result<(), StoreError> {
    let sql = "SELECT bytes, stored_at_ms FROM receipts ORDER BY rseq DESC";
    scan_back(conn, out, sql, "receipt", |receipt: Receipt, index, out| {
        let officer = match &receipt.kind {
            ReceiptKind::Acknowledged { officer, .. } => Some(officer),
            _ => None,
        };
        for item in &receipt.items {
            let Some(&i) = index.get(&item.id) else {
                continue;
            };
            let Some(state) = out[i]
                .recipients
                .iter_mut()
                .find(|s| s.recipient == receipt.recipient)
            else {
                continue;
            };
            let at = receipt.created_at_ms;
            state.delivered_at_ms = Some(state.delivered_at_ms.map_or(at, |d| d.min(at)));
            if let Some(officer) = officer {
                // Receipts are read newest first: the earliest acknowledgement is the last
                // one met, and its officer is the one kept.
                if state.acked_at_ms.is_none_or(|a| at <= a) {
                    state.acked_at_ms = Some(at);
                    state.officer = Some(officer.clone());
                }
            }
        }
    })
}

/// Fills in when `out`'s recipients answered: the messages accepted since the oldest of them
/// (newest first, stopping there) that reference one of them, from one of its recipients.
fn add_answers(conn: &Connection, out: &mut [Tracked]) -> Result<(), StoreError> {
    let sql = "SELECT bytes, accepted_at_ms FROM messages ORDER BY rseq DESC";
    scan_back(conn, out, sql, "message", |answer: Envelope, index, out| {
        for referenced in &answer.references {
            let Some(&i) = index.get(referenced) else {
                continue;
            };
            if let Some(state) = out[i]
                .recipients
                .iter_mut()
                .find(|s| s.recipient == answer.sender)
            {
                let at = answer.created_at_ms;
                state.answered_at_ms = Some(state.answered_at_ms.map_or(at, |a| a.min(at)));
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hotline_proto::{
        Audience, Kind, Precedence, ReceiptItem, Seq, Signed, SigningKey, Status, PROTOCOL_VERSION,
    };
    use rusqlite::params;

    fn pid(s: &str) -> ParticipantId {
        ParticipantId::new(s).expect("a valid id")
    }

    /// Stores KAZ's message to KGZ and SEC accepted at `at` (as the writer would), returning
    /// its id.
    fn message(conn: &Connection, seq: u64, at: u64) -> MessageId {
        stored(conn, "KAZ", seq, at, vec![], "KGZ,SEC")
    }

    /// Stores `sender`'s message referencing `references`, created and accepted at `at`.
    fn stored(
        conn: &Connection,
        sender: &str,
        seq: u64,
        at: u64,
        references: Vec<MessageId>,
        recipients: &str,
    ) -> MessageId {
        let env = Envelope {
            version: PROTOCOL_VERSION,
            id: MessageId::random(),
            sender: pid(sender),
            seq: Seq(seq),
            audience: Audience::Participants(vec![pid("KGZ"), pid("SEC")]),
            kind: Kind::Alert,
            precedence: Precedence::Flash,
            status: Status::Actual,
            created_at_ms: at,
            respond_by_ms: Some(at + 1_000),
            references,
            category: None,
            subject: format!("message {seq}"),
            body: String::new(),
        };
        let s = Signed::sign(&env, &SigningKey::from_bytes(&[1; 32])).expect("signs");
        conn.execute(
            "INSERT INTO messages (id, sender, seq, digest, bytes, key, sig, accepted_at_ms, recipients)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![&env.id.0[..], sender, seq, &s.digest().0[..], s.bytes(), &s.key().0[..], &s.signature().0[..], at, recipients],
        )
        .expect("stored");
        env.id
    }

    /// Stores `who`'s receipt of `ids`, signed at `signed_at`, stored at `stored_at`.
    fn receipt(
        conn: &Connection,
        who: &str,
        kind: ReceiptKind,
        ids: &[MessageId],
        signed_at: u64,
        stored_at: u64,
    ) {
        let r = Receipt {
            version: PROTOCOL_VERSION,
            recipient: pid(who),
            kind,
            created_at_ms: signed_at,
            items: ids
                .iter()
                .map(|id| ReceiptItem {
                    id: *id,
                    sender: pid("KAZ"),
                    digest: hotline_proto::Digest([0; 32]),
                })
                .collect(),
        };
        let s = Signed::sign(&r, &SigningKey::from_bytes(&[2; 32])).expect("signs");
        conn.execute(
            "INSERT INTO receipts (created_at_ms, digest, recipient, is_ack, bytes, key, sig, stored_at_ms)
             VALUES (?1, ?2, ?3, 0, ?4, ?5, ?6, ?7)",
            params![signed_at as i64, &s.digest().0[..], who, s.bytes(), &s.key().0[..], &s.signature().0[..], stored_at],
        )
        .expect("stored");
    }

    fn ack(officer: &str) -> ReceiptKind {
        ReceiptKind::Acknowledged {
            officer: officer.into(),
            note: None,
        }
    }

    #[test]
    fn each_recipient_is_told_by_its_earliest_signed_receipts() {
        let dir = tempfile::tempdir().expect("a directory");
        let (_, conn) = crate::store::open_db(dir.path()).expect("opens");
        const T: u64 = 1_800_000_000_000;
        let old = message(&conn, 1, T - 10_000);
        let a = message(&conn, 2, T);
        let b = message(&conn, 3, T + 10);
        receipt(
            &conn,
            "KGZ",
            ReceiptKind::Delivered,
            &[a, b],
            T + 50,
            T + 60,
        );
        // Two acknowledgements of `a`, the later-signed one stored first.
        receipt(&conn, "KGZ", ack("Second officer"), &[a], T + 300, T + 310);
        receipt(&conn, "KGZ", ack("First officer"), &[a], T + 200, T + 320);
        // Not a recipient of `a`, and a message outside the period: neither counts.
        receipt(&conn, "TJK", ack("Stranger"), &[a, old], T + 400, T + 410);

        let report = track(&conn, T - 1, 100).expect("reads");
        let ids: Vec<_> = report.iter().map(|t| t.envelope.id).collect();
        assert_eq!(ids, vec![b, a], "the period's messages, newest first");
        let kgz = |t: &Tracked| t.recipients[0].clone();
        assert_eq!(
            kgz(&report[1]),
            RecipientState {
                recipient: pid("KGZ"),
                delivered_at_ms: Some(T + 50),
                acked_at_ms: Some(T + 200),
                officer: Some("First officer".into()),
                answered_at_ms: None,
            }
        );
        assert_eq!(kgz(&report[0]).acked_at_ms, None);
        assert_eq!(report[1].recipients.len(), 2);
        assert_eq!(
            report[1].recipients[1].delivered_at_ms, None,
            "SEC has nothing"
        );
        let overdue: Vec<_> = report[1]
            .overdue(T + 1_000)
            .map(|r| r.recipient.as_str())
            .collect();
        assert_eq!(overdue, ["SEC"]);
        assert_eq!(report[1].overdue(T + 999).count(), 0, "not yet due");
        assert_eq!(track(&conn, T - 1, 1).expect("reads").len(), 1, "the limit");
        let one = track_one(&conn, &a).expect("reads").expect("held");
        assert_eq!(
            one.recipients, report[1].recipients,
            "by id, the same picture"
        );
        assert!(track_one(&conn, &MessageId::random())
            .expect("reads")
            .is_none());
    }

    /// The relay's clock stepped back between two acceptances: a message accepted in the
    /// period is reported although a later one (by position) carries an earlier time, and
    /// one accepted before the period is not.
    #[test]
    fn a_period_is_read_past_a_clock_step_back() {
        let dir = tempfile::tempdir().expect("a directory");
        let (_, conn) = crate::store::open_db(dir.path()).expect("opens");
        const T: u64 = 1_800_000_000_000;
        let before = message(&conn, 1, T - 60_000);
        let a = message(&conn, 2, T + 1_000);
        // The clock stepped back two seconds before this one was accepted.
        let stepped = message(&conn, 3, T - 1_000);
        let c = message(&conn, 4, T + 2_000);
        let ids: Vec<_> = track(&conn, T, 100)
            .expect("reads")
            .iter()
            .map(|t| t.envelope.id)
            .collect();
        assert_eq!(ids, vec![c, a], "every message accepted in the period");
        assert!(!ids.contains(&stepped) && !ids.contains(&before));
    }

    #[test]
    fn a_recipient_answered_when_it_signed_its_first_message_referencing_one() {
        let dir = tempfile::tempdir().expect("a directory");
        let (_, conn) = crate::store::open_db(dir.path()).expect("opens");
        const T: u64 = 1_800_000_000_000;
        let a = message(&conn, 1, T);
        // KGZ answers twice; TJK, not a recipient, answers too; SEC does not.
        stored(&conn, "KGZ", 1, T + 600, vec![a], "KAZ");
        stored(&conn, "KGZ", 2, T + 500, vec![a], "KAZ");
        stored(&conn, "TJK", 1, T + 700, vec![a], "KAZ");
        let one = track_one(&conn, &a).expect("reads").expect("held");
        let answered: Vec<_> = one
            .recipients
            .iter()
            .map(|r| (r.recipient.as_str(), r.answered_at_ms))
            .collect();
        assert_eq!(answered, vec![("KGZ", Some(T + 500)), ("SEC", None)]);
        let all = track(&conn, T - 1, 100).expect("reads");
        let a_row = all.iter().find(|t| t.envelope.id == a).expect("a");
        assert_eq!(a_row.recipients, one.recipients, "the same by period");
    }
}
