//! The outbox messages a relay link has written on its connection and not had answered,
//! and how far it has read the outbox: what the node's link (`link.rs`) and the
//! simulator's sender (`hotline-sim`) write next, each message once a connection, in order.

use std::collections::{HashMap, HashSet};

use hotline_proto::MessageId;
use hotline_store::StoreError;

use crate::limits::OUTBOX_PAGE;
use crate::store::Outgoing;

/// The outbox messages a link has written on its connection and not had answered, and how
/// far it has read the outbox, which it reads in its order (sequence number) on from there.
/// A pass that has room for more reads only what follows, not again the page in flight
/// (up to 255 messages of up to 64 KiB, read and skipped at each answer). A message is
/// written once a connection: a new connection starts a new `InFlight`, which writes the
/// whole outbox again.
#[derive(Debug, Default)]
pub struct InFlight {
    /// Messages written on this connection and in flight (not yet answered, or `waiting`),
    /// with the sequence number each was written with.
    sent: HashMap<MessageId, u64>,
    /// Where the next pass reads on from: the highest sequence number read on this
    /// connection (0: none yet), lowered by `again`. What this link has not written lies
    /// above it: a row's number only rises (`NodeStore::resequence`), a message composed
    /// takes a number above every other, and the rows put back into this relay's outbox
    /// (`NodeStore::offer_lost`) are put back before the connection's first pass.
    read_to: u64,
    /// Messages among `sent` refused for a reason that passes (or whose answer could not
    /// be recorded), to be written again after the pause: answered, so that a refusal
    /// naming one again answers no `Submit`.
    waiting: HashSet<MessageId>,
}

impl InFlight {
    /// The outbox messages to write next, in order, while fewer than `OUTBOX_PAGE` are
    /// unanswered; `read(after, limit)` reads the outbox (`NodeStore::outbox_after`). At
    /// most a page unanswered: the relay reads a page ahead while its own write waits
    /// (`OUTBOX_PAGE` says why), so the next messages follow as it answers, not a page more
    /// at every pass (each acknowledgement answered, each message composed), which after an
    /// outage put pages of up to 20 MB in flight beyond what it reads ahead.
    pub fn next(
        &mut self,
        mut read: impl FnMut(u64, usize) -> Result<Vec<Outgoing>, StoreError>,
    ) -> Result<Vec<Outgoing>, StoreError> {
        let mut out = Vec::new();
        // As many as there is room for: with none in flight above `read_to`, as after each
        // answer, every row read is written.
        let mut limit = OUTBOX_PAGE - self.sent.len();
        while self.sent.len() < OUTBOX_PAGE {
            let rows = read(self.read_to, limit)?;
            let n = rows.len();
            for m in rows {
                // Rows not taken stay above `read_to`, for the next pass.
                if self.sent.len() >= OUTBOX_PAGE {
                    break;
                }
                self.read_to = self.read_to.max(m.seq);
                // In flight already: what `again` put back is read again with those in
                // flight after it, and a message signed again for another relay's refusal
                // (`NodeStore::resequence`) moves above what this link has read.
                if self.sent.contains_key(&m.id) {
                    continue;
                }
                self.sent.insert(m.id, m.seq);
                out.push(m);
            }
            if n < limit {
                // The outbox holds no more.
                break;
            }
            // Some were in flight: read on, more at a time.
            limit = (limit * 2).min(OUTBOX_PAGE);
        }
        Ok(out)
    }

    /// The sequence number message `id` was written with on this connection, if it is
    /// unanswered.
    pub fn seq(&self, id: &MessageId) -> Option<u64> {
        self.sent.get(id).copied()
    }

    /// Whether message `id` was written on this connection and its answer has not come.
    pub fn unanswered(&self, id: &MessageId) -> bool {
        self.sent.contains_key(id) && !self.waiting.contains(id)
    }

    /// Message `id` is answered: accepted, or refused for good.
    pub fn answered(&mut self, id: &MessageId) {
        self.sent.remove(id);
        self.waiting.remove(id);
    }

    /// Message `id` is answered, and is to be written again after the pause (`again`),
    /// in flight until then.
    pub fn retry_later(&mut self, id: &MessageId) {
        if self.sent.contains_key(id) {
            self.waiting.insert(*id);
        }
    }

    /// Message `id`, in flight, is to be written again on this connection (refused for a
    /// reason that passes, or signed again): the next pass reads again from where it was.
    pub fn again(&mut self, id: &MessageId) {
        self.waiting.remove(id);
        if let Some(seq) = self.sent.remove(id) {
            self.read_to = self.read_to.min(seq.saturating_sub(1));
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use hotline_proto::ParticipantId;

    /// A pass with room for more of the outbox reads on from the last message it read, not
    /// again the page in flight: after the first page, each answer costs one message read,
    /// where the pass read the outbox from its start, every message in flight (up to 255,
    /// of up to 64 KiB) read to be skipped. Each message is still written once a
    /// connection, in order, again if refused for a reason that passes, and all of them on
    /// a new connection; a message signed again for another relay's refusal while in flight
    /// here moves above what was read, and is not written twice.
    #[test]
    fn a_pass_reads_the_outbox_on_from_what_it_read_not_the_page_in_flight() {
        use crate::store::{Draft, NodeStore};
        use hotline_proto::frame::Accepted;
        use hotline_proto::{Precedence, SigningKey, Status};

        const NOW: u64 = 1_800_000_000_000;
        let dir = tempfile::tempdir().unwrap();
        let mut store = NodeStore::open(dir.path()).unwrap();
        let (kaz, kgz) = (
            ParticipantId::new("KAZ").unwrap(),
            ParticipantId::new("KGZ").unwrap(),
        );
        let key = SigningKey::from_bytes(&[1; 32]);
        let mut ids = Vec::new();
        for i in 0..300 {
            let draft = Draft {
                precedence: Precedence::Flash,
                status: Status::Exercise,
                ..Draft::alert(std::slice::from_ref(&kgz), &format!("outbox {i}"))
            };
            let signed = store
                .compose(&kaz, &key, draft, std::slice::from_ref(&kgz), 1, NOW)
                .unwrap()
                .unwrap();
            ids.push(signed.decode_unverified().unwrap().id);
        }
        // A pass, as the link makes it: the messages it writes, and how many it read.
        let pass = |f: &mut InFlight, store: &NodeStore| {
            let mut read = 0;
            let written = f
                .next(|after, limit| {
                    let rows = store.outbox_after(0, after, limit)?;
                    read += rows.len();
                    Ok(rows)
                })
                .unwrap();
            (written.into_iter().map(|m| m.id).collect::<Vec<_>>(), read)
        };
        let accept = |f: &mut InFlight, store: &mut NodeStore, id: &MessageId| {
            let a = Accepted {
                id: *id,
                recipients: vec![kgz.clone()],
                accepted_at_ms: NOW,
            };
            let seq = f.seq(id);
            assert!(seq.is_some(), "{id} is in flight");
            store.accepted(0, &a, seq, NOW).unwrap();
            f.answered(id);
        };

        let mut f = InFlight::default();
        assert_eq!(pass(&mut f, &store), (ids[..256].to_vec(), 256));
        assert_eq!(pass(&mut f, &store), (vec![], 0), "a page in flight");
        accept(&mut f, &mut store, &ids[0]);
        assert_eq!(
            pass(&mut f, &store),
            (vec![ids[256]], 1),
            "one answered, one read and written"
        );

        // Another relay refused message 100 for its number: signed again, its outbox row
        // moves above every other, where this link, which has it in flight, reads it.
        let seq = f.seq(&ids[100]).unwrap();
        store.resequence(&ids[100], seq, seq, &key, NOW).unwrap();
        let mut written = Vec::new();
        let mut read = 0;
        for id in &ids[1..] {
            accept(&mut f, &mut store, id);
            let (w, r) = pass(&mut f, &store);
            read += r;
            if w.is_empty() {
                break;
            }
            written.extend(w);
        }
        assert_eq!(written, ids[257..].to_vec(), "in order, none twice");
        assert_eq!(read, 43 + 1, "those written, and message 100 once");
        let answered = 1 + 44;
        assert_eq!(f.sent.len(), 300 - answered);

        // Refused for a reason that passes: answered, still in flight until the pause is
        // over, then written again, before anything after it.
        f.retry_later(&ids[50]);
        assert!(!f.unanswered(&ids[50]) && f.unanswered(&ids[51]));
        assert_eq!(pass(&mut f, &store), (vec![], 0));
        f.again(&ids[50]);
        assert!(f.waiting.is_empty());
        let (w, read) = pass(&mut f, &store);
        assert_eq!(w, vec![ids[50]]);
        assert!(f.unanswered(&ids[50]));
        // It and those after it, in flight, read again: a pass after a refusal that
        // passes costs what every pass cost before.
        assert!(read <= 256, "{read}");
        assert_eq!(pass(&mut f, &store), (vec![], 0));

        // A new connection writes the whole outbox again, in order.
        let mut f = InFlight::default();
        let mut again: Vec<_> = ids[answered..].to_vec();
        again.retain(|id| *id != ids[100]);
        again.push(ids[100]);
        assert_eq!(pass(&mut f, &store).0, again);
    }
}
