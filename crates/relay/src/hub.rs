//! The registry of live, authenticated sessions: one per participant, each with a mailbox.
//!
//! After a commit, the store writer posts what it queued for a participant (the encoded
//! frame, with its queue position) to that participant's mailbox and wakes the session, so
//! a connected node is served from memory instead of reading back what was just written.
//! The store stays the truth: a mailbox that overflows is emptied and flagged, and the
//! session then reads its queue from the store (see [`Lane`]). A second connection for the
//! same participant supersedes the first.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use hotline_proto::frame::ErrorCode;
use hotline_proto::{MessageId, ParticipantId};
use tokio::sync::Notify;

/// Something committed for a participant: its queue position and the frame that carries it.
#[derive(Clone, Debug)]
pub(crate) struct Posted {
    /// Queue position (positions only grow, per lane).
    pub(crate) pos: i64,
    /// The message, for the delivery window (messages lane only).
    pub(crate) id: Option<MessageId>,
    /// The encoded frame, shared by every recipient of the same item.
    pub(crate) frame: bytes::Bytes,
    /// When the commit that stored it returned (set by [`Hub::post`]), for
    /// `hotline_relay_fanout_seconds`.
    pub(crate) committed: Option<std::time::Instant>,
}

/// One kind of queued item (messages, or forwarded receipts) waiting for a session.
///
/// The rule that keeps delivery gap-free: a session reads its queue from the store until
/// the store has nothing more (after registering, so everything committed later is posted
/// here), and from then on takes items from the lane, skipping positions it already wrote.
/// When the lane overflows it is emptied and `overflowed` set; the session clears the flag
/// *before* reading the store again, so an item committed after that read is posted after
/// the flag was cleared and is still in the lane.
#[derive(Debug, Default)]
pub(crate) struct Lane {
    items: VecDeque<Posted>,
    /// Bytes of the frames in `items` (a frame shared with other lanes counts in each).
    bytes: usize,
    overflowed: bool,
}

/// How much a lane may hold before it overflows.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LaneCap {
    /// Items.
    pub(crate) items: usize,
    /// Bytes of frames.
    pub(crate) bytes: usize,
}

/// What a session takes from a lane.
pub(crate) enum Take {
    /// Items in position order (possibly none).
    Items(Vec<Posted>),
    /// The lane overflowed since the last take: read the store from the session's cursor.
    ReadStore,
}

impl Lane {
    fn push(&mut self, p: Posted, cap: LaneCap) {
        if self.overflowed {
            // Already lost some: the session reads the store, which holds this one too.
            return;
        }
        if self.items.len() >= cap.items || self.bytes + p.frame.len() > cap.bytes {
            self.items.clear();
            self.bytes = 0;
            self.overflowed = true;
            return;
        }
        self.bytes += p.frame.len();
        self.items.push_back(p);
    }

    /// Takes up to `max` items positioned after `cursor`.
    pub(crate) fn take(&mut self, cursor: i64, max: usize) -> Take {
        if self.overflowed {
            self.overflowed = false;
            return Take::ReadStore;
        }
        while let Some(p) = self.items.front() {
            if p.pos > cursor {
                break;
            }
            self.bytes -= p.frame.len();
            self.items.pop_front();
        }
        let n = self.items.len().min(max);
        let taken: Vec<Posted> = self.items.drain(..n).collect();
        self.bytes -= taken.iter().map(|p| p.frame.len()).sum::<usize>();
        Take::Items(taken)
    }

    /// Marks the lane as needing a store read (a fresh session starts this way).
    fn reset(&mut self) {
        self.items.clear();
        self.bytes = 0;
        self.overflowed = true;
    }
}

/// A session's mailbox: the two lanes and the wake-up.
#[derive(Debug)]
pub(crate) struct Mailbox {
    lanes: Mutex<(Lane, Lane)>,
    wake: Notify,
    cap: LaneCap,
}

/// Which lane.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Messages to deliver.
    Message,
    /// Receipts to forward to a message's sender.
    Receipt,
}

impl Mailbox {
    fn new(cap: LaneCap) -> Self {
        let mut messages = Lane::default();
        let mut receipts = Lane::default();
        messages.reset();
        receipts.reset();
        Self {
            lanes: Mutex::new((messages, receipts)),
            wake: Notify::new(),
            cap,
        }
    }

    fn lock(&self) -> MutexGuard<'_, (Lane, Lane)> {
        // Nothing panics while holding this lock; recover the lanes if something did.
        self.lanes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes from one lane (see [`Lane::take`]).
    pub(crate) fn take(&self, kind: Kind, cursor: i64, max: usize) -> Take {
        let mut l = self.lock();
        match kind {
            Kind::Message => l.0.take(cursor, max),
            Kind::Receipt => l.1.take(cursor, max),
        }
    }

    /// Resolves when something was posted since the last wake-up was consumed.
    pub(crate) async fn notified(&self) {
        self.wake.notified().await
    }
}

struct Entry {
    conn_id: u64,
    conn: quinn::Connection,
    mailbox: Arc<Mailbox>,
}

/// Live sessions by participant.
pub(crate) struct Hub {
    sessions: Mutex<HashMap<ParticipantId, Entry>>,
    lane_cap: LaneCap,
}

impl Hub {
    /// A hub whose mailboxes hold up to `lane_cap` per lane.
    pub(crate) fn new(lane_cap: LaneCap) -> Self {
        Self {
            sessions: Mutex::new(HashMap::new()),
            lane_cap,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<ParticipantId, Entry>> {
        // Nothing panics while holding this lock; recover the map if something did.
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a session; closes an earlier one of the same participant as superseded.
    /// The new mailbox starts flagged, so the session's first take reads the store.
    pub(crate) fn register(
        &self,
        participant: &ParticipantId,
        conn_id: u64,
        conn: quinn::Connection,
    ) -> Arc<Mailbox> {
        let mailbox = Arc::new(Mailbox::new(self.lane_cap));
        let old = self.lock().insert(
            participant.clone(),
            Entry {
                conn_id,
                conn,
                mailbox: mailbox.clone(),
            },
        );
        if let Some(old) = old {
            tracing::info!(peer = %participant, old = old.conn_id, new = conn_id, "session superseded");
            old.conn.close(
                ErrorCode::Superseded.close_code().into(),
                b"another connection authenticated as this participant",
            );
        }
        mailbox
    }

    /// Closes `participant`'s session, if one is registered (code `Normal`, with `reason`):
    /// its node connects again, and its new session delivers from the start of its queue.
    pub(crate) fn close(&self, participant: &ParticipantId, reason: &[u8]) {
        if let Some(e) = self.lock().get(participant) {
            e.conn.close(ErrorCode::Normal.close_code().into(), reason);
        }
    }

    /// Removes a session if it is still the registered one; returns whether it was (if not,
    /// a later connection of the same participant superseded it).
    pub(crate) fn unregister(&self, participant: &ParticipantId, conn_id: u64) -> bool {
        let mut map = self.lock();
        let ours = map.get(participant).is_some_and(|e| e.conn_id == conn_id);
        if ours {
            map.remove(participant);
        }
        ours
    }

    /// Posts committed items to their participants' mailboxes and wakes those sessions.
    /// Items for a participant without a session are dropped: the store holds them.
    pub(crate) fn post(
        &self,
        items: Vec<(ParticipantId, Kind, Posted)>,
        committed: std::time::Instant,
    ) {
        if items.is_empty() {
            return;
        }
        let map = self.lock();
        let mut woken: Vec<&Arc<Mailbox>> = Vec::new();
        for (who, kind, mut p) in items {
            let Some(e) = map.get(&who) else { continue };
            p.committed = Some(committed);
            {
                let mut l = e.mailbox.lock();
                match kind {
                    Kind::Message => l.0.push(p, e.mailbox.cap),
                    Kind::Receipt => l.1.push(p, e.mailbox.cap),
                }
            }
            woken.push(&e.mailbox);
        }
        // A commit may post thousands of items to a few hundred sessions: wake each once.
        woken.sort_unstable_by_key(|m| Arc::as_ptr(m));
        woken.dedup_by(|a, b| Arc::ptr_eq(a, b));
        for m in woken {
            m.wake.notify_one();
        }
    }

    /// How many participants have a live session.
    pub(crate) fn session_count(&self) -> usize {
        self.lock().len()
    }

    /// Participants with a live session and each one's connection, in participant order
    /// (for the metrics; the connections' figures are read after the lock is released).
    pub(crate) fn sessions(&self) -> Vec<(ParticipantId, quinn::Connection)> {
        let mut v: Vec<_> = self
            .lock()
            .iter()
            .map(|(p, e)| (p.clone(), e.conn.clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAP8: LaneCap = LaneCap {
        items: 8,
        bytes: 1 << 20,
    };
    const CAP3: LaneCap = LaneCap {
        items: 3,
        bytes: 1 << 20,
    };

    fn posted(pos: i64) -> Posted {
        Posted {
            pos,
            id: None,
            frame: bytes::Bytes::from(vec![pos as u8]),
            committed: None,
        }
    }

    fn items(t: Take) -> Vec<i64> {
        match t {
            Take::Items(v) => v.iter().map(|p| p.pos).collect(),
            Take::ReadStore => panic!("expected items"),
        }
    }

    #[test]
    fn a_new_lane_asks_for_a_store_read_first() {
        let mut l = Lane::default();
        l.reset();
        l.push(posted(5), CAP8);
        assert!(matches!(l.take(0, 10), Take::ReadStore));
        // Posted after the flag was cleared: kept.
        l.push(posted(6), CAP8);
        assert_eq!(items(l.take(0, 10)), vec![6]);
    }

    #[test]
    fn positions_already_written_are_skipped_and_max_is_honoured() {
        let mut l = Lane::default();
        for p in 1..=6 {
            l.push(posted(p), CAP8);
        }
        assert_eq!(items(l.take(3, 2)), vec![4, 5]);
        assert_eq!(items(l.take(5, 10)), vec![6]);
        assert_eq!(items(l.take(6, 10)), Vec::<i64>::new());
    }

    #[test]
    fn overflow_empties_the_lane_and_flags_a_store_read() {
        let mut l = Lane::default();
        for p in 1..=3 {
            l.push(posted(p), CAP3);
        }
        l.push(posted(4), CAP3);
        l.push(posted(5), CAP3);
        assert!(matches!(l.take(0, 10), Take::ReadStore));
        l.push(posted(6), CAP3);
        assert_eq!(items(l.take(5, 10)), vec![6]);
    }

    #[test]
    fn a_lane_overflows_on_bytes_as_well_as_items() {
        let cap = LaneCap {
            items: 100,
            bytes: 2,
        };
        let mut l = Lane::default();
        l.push(posted(1), cap);
        l.push(posted(2), cap);
        assert_eq!(l.bytes, 2);
        assert_eq!(items(l.take(0, 1)), vec![1]);
        assert_eq!(l.bytes, 1, "taking releases bytes");
        l.push(posted(3), cap);
        l.push(posted(4), cap);
        assert!(matches!(l.take(0, 10), Take::ReadStore));
        assert_eq!(l.bytes, 0);
    }
}
