//! The registry of live, authenticated sessions: one per participant, each with a mailbox.
//!
//! The store writer posts what a batch queues for a participant (the encoded frame, with
//! its queue position) to that participant's mailbox and wakes the session, so a connected
//! node is served from memory instead of reading back what was just written. It posts
//! twice: once just before the commit's sync, so that the fan-out overlaps the `fsync`
//! (ARCHITECTURE.md, "Invariants"), and once after the commit, when the items are in the
//! store; a lane takes an item only once (positions it already holds or held are skipped),
//! so the second post only fills in what the first could not place (no session yet, or a
//! lane that overflowed and may have read the store before the commit).
//! The store stays the truth: a mailbox that overflows is emptied and flagged, and the
//! session then reads its queue from the store (see [`Lane`]). A second connection for the
//! same participant supersedes the first.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
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
    /// When the writer first posted it (set by [`Hub::post`]), for
    /// `hotline_relay_fanout_seconds`.
    pub(crate) posted_at: Option<std::time::Instant>,
}

/// One kind of queued item (messages, or forwarded receipts) waiting for a session.
///
/// The rule that keeps delivery gap-free: a session reads its queue from the store until
/// the store has nothing more (after registering, so everything committed later is posted
/// here), and from then on takes items from the lane, skipping positions it already wrote.
/// When the lane overflows it is emptied and `overflowed` set; the session clears the flag
/// *before* reading the store again, so an item committed after that read is posted after
/// the flag was cleared and is still in the lane.
///
/// The rest of the post that overflowed a lane is not placed in it, even once the session
/// has cleared the flag: the writer holds a lane's lock only while it places one item, so a
/// session can take between two items of one post. Had it then read the store before the
/// batch committed, and been given the post's later items, it would have written positions
/// above those the overflow emptied, and skipped those for good on this connection (it
/// delivers in position order). The second post places the whole batch instead.
#[derive(Debug, Default)]
pub(crate) struct Lane {
    items: VecDeque<Posted>,
    /// Bytes of the frames in `items` (a frame shared with other lanes counts in each).
    bytes: usize,
    overflowed: bool,
    /// The highest position this lane has taken since it was last emptied by an overflow
    /// (0: none): the writer's second post of a batch is skipped up to it.
    last: i64,
    /// The post ([`Hub::post`] numbers them from 1) during which this lane last
    /// overflowed (0: none): the rest of that post is not placed here.
    lost_in: u64,
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
    /// Adds a copy of `p`, stamped `posted_at`, unless the lane already took its position
    /// (then nothing is copied: most of the writer's second post) or overflowed earlier in
    /// this `post`; whether the session has something new to look at (the item, or an
    /// overflow).
    fn push(
        &mut self,
        p: &Posted,
        posted_at: Option<std::time::Instant>,
        cap: LaneCap,
        post: u64,
    ) -> bool {
        if self.overflowed {
            // Already lost some: the session reads the store, which holds this one too once
            // it has committed (and the writer posts it again after the commit, in case the
            // session read the store before).
            return false;
        }
        if post == self.lost_in {
            // This post overflowed the lane, and the session has taken the overflow since:
            // it must not get this item ahead of those the overflow emptied (see `Lane`).
            // The batch's second post places them all, or the store holds them.
            return false;
        }
        if p.pos <= self.last {
            return false;
        }
        if self.items.len() >= cap.items || self.bytes + p.frame.len() > cap.bytes {
            self.items.clear();
            self.bytes = 0;
            self.overflowed = true;
            // What was emptied may not be in the store yet: take the batch's second post.
            self.last = 0;
            self.lost_in = post;
            return true;
        }
        self.last = p.pos;
        self.bytes += p.frame.len();
        self.items.push_back(Posted {
            posted_at,
            ..p.clone()
        });
        true
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
        self.last = 0;
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
    /// Posts made so far: each [`Hub::post`] takes the next number (see [`Lane`]).
    posts: AtomicU64,
}

impl Hub {
    /// A hub whose mailboxes hold up to `lane_cap` per lane.
    pub(crate) fn new(lane_cap: LaneCap) -> Self {
        Self {
            sessions: Mutex::new(HashMap::new()),
            lane_cap,
            posts: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<ParticipantId, Entry>> {
        // Nothing panics while holding this lock; recover the map if something did.
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a session; closes an earlier one of the same participant as superseded.
    /// The new mailbox starts flagged, so the session's first take reads the store.
    ///
    /// The newest connection wins (PROTOCOL.md 6.4), by `conn_id` (connections are numbered
    /// as they are accepted), not by which session registers last: a login can finish after
    /// a newer one of the same participant (its read of the last sequence number waited on
    /// a busy disk, and its node, tired of waiting for `Welcome`, connected again). `None`:
    /// a newer connection is registered, which is left alone; this session is the
    /// superseded one and must end.
    pub(crate) fn register(
        &self,
        participant: &ParticipantId,
        conn_id: u64,
        conn: quinn::Connection,
    ) -> Option<Arc<Mailbox>> {
        let mailbox = Arc::new(Mailbox::new(self.lane_cap));
        let old = {
            let mut map = self.lock();
            if let Some(newer) = map.get(participant).filter(|e| e.conn_id > conn_id) {
                tracing::info!(peer = %participant, old = conn_id, new = newer.conn_id, "session superseded: a newer connection logged in first");
                return None;
            }
            map.insert(
                participant.clone(),
                Entry {
                    conn_id,
                    conn,
                    mailbox: mailbox.clone(),
                },
            )
        };
        if let Some(old) = old {
            tracing::info!(peer = %participant, old = old.conn_id, new = conn_id, "session superseded");
            old.conn.close(
                ErrorCode::Superseded.close_code().into(),
                b"another connection authenticated as this participant",
            );
        }
        Some(mailbox)
    }

    /// Closes `participant`'s session, if one is registered (code `Normal`, with `reason`):
    /// its node connects again, and its new session delivers from the start of its queue.
    /// Returns whether one was.
    pub(crate) fn close(&self, participant: &ParticipantId, reason: &[u8]) -> bool {
        match self.lock().get(participant) {
            Some(e) => {
                e.conn.close(ErrorCode::Normal.close_code().into(), reason);
                true
            }
            None => false,
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

    /// Posts a batch's items to their participants' mailboxes and wakes the sessions that
    /// have something new. Items for a participant without a session are dropped: the
    /// store holds them once the batch has committed. The writer posts each batch twice,
    /// before and after its commit (see the module's documentation); `at` is the first.
    pub(crate) fn post(&self, items: &[(ParticipantId, Kind, Posted)], at: std::time::Instant) {
        if items.is_empty() {
            return;
        }
        let post = self.posts.fetch_add(1, Ordering::Relaxed) + 1;
        let map = self.lock();
        let mut woken: Vec<&Arc<Mailbox>> = Vec::new();
        for (who, kind, p) in items {
            let Some(e) = map.get(who) else { continue };
            let news = {
                let mut l = e.mailbox.lock();
                let lane = match kind {
                    Kind::Message => &mut l.0,
                    Kind::Receipt => &mut l.1,
                };
                lane.push(p, Some(at), e.mailbox.cap, post)
            };
            if news {
                woken.push(&e.mailbox);
            }
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
            posted_at: None,
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
        l.push(&posted(5), None, CAP8, 1);
        assert!(matches!(l.take(0, 10), Take::ReadStore));
        // Posted after the flag was cleared: kept.
        l.push(&posted(6), None, CAP8, 2);
        assert_eq!(items(l.take(0, 10)), vec![6]);
    }

    #[test]
    fn positions_already_written_are_skipped_and_max_is_honoured() {
        let mut l = Lane::default();
        for p in 1..=6 {
            l.push(&posted(p), None, CAP8, 1);
        }
        assert_eq!(items(l.take(3, 2)), vec![4, 5]);
        assert_eq!(items(l.take(5, 10)), vec![6]);
        assert_eq!(items(l.take(6, 10)), Vec::<i64>::new());
    }

    #[test]
    fn overflow_empties_the_lane_and_flags_a_store_read() {
        let mut l = Lane::default();
        for p in 1..=3 {
            l.push(&posted(p), None, CAP3, 1);
        }
        l.push(&posted(4), None, CAP3, 1);
        l.push(&posted(5), None, CAP3, 1);
        assert!(matches!(l.take(0, 10), Take::ReadStore));
        l.push(&posted(6), None, CAP3, 2);
        assert_eq!(items(l.take(5, 10)), vec![6]);
    }

    #[test]
    fn the_second_post_of_a_batch_adds_nothing_the_first_placed() {
        let mut l = Lane::default();
        assert!(l.push(&posted(1), None, CAP8, 1));
        assert!(l.push(&posted(2), None, CAP8, 1));
        assert_eq!(items(l.take(0, 1)), vec![1]);
        // After the commit: 1 was taken, 2 is waiting; neither comes twice, nor wakes.
        assert!(!l.push(&posted(1), None, CAP8, 2));
        assert!(!l.push(&posted(2), None, CAP8, 2));
        assert_eq!(items(l.take(1, 10)), vec![2]);
        assert!(l.push(&posted(3), None, CAP8, 3), "the next batch");
    }

    #[test]
    fn the_second_post_fills_a_lane_that_read_the_store_before_the_commit() {
        // A fresh session: the first post finds the lane flagged and is dropped.
        let mut l = Lane::default();
        l.reset();
        assert!(!l.push(&posted(7), None, CAP8, 1));
        // The session reads the store (before the commit: 7 is not there yet).
        assert!(matches!(l.take(0, 10), Take::ReadStore));
        // After the commit, the second post places it.
        assert!(l.push(&posted(7), None, CAP8, 2));
        assert_eq!(items(l.take(0, 10)), vec![7]);
    }

    #[test]
    fn a_batch_that_overflows_its_first_post_is_placed_whole_by_the_second() {
        let mut l = Lane::default();
        assert!(l.push(&posted(1), None, CAP3, 1));
        assert!(l.push(&posted(2), None, CAP3, 1));
        assert!(l.push(&posted(3), None, CAP3, 1));
        assert!(
            l.push(&posted(4), None, CAP3, 1),
            "the overflow wakes the session"
        );
        assert!(matches!(l.take(0, 10), Take::ReadStore));
        // The store read found 1 to 3 only if they had committed; say it found none. The
        // second post of 1 to 3 (the batch that overflowed) places them again.
        for p in 1..=3 {
            assert!(l.push(&posted(p), None, CAP3, 2));
        }
        assert_eq!(items(l.take(0, 10)), vec![1, 2, 3]);
    }

    /// Connections to a loopback endpoint, as the relay holds them, in the order they were
    /// made; with the endpoints, which must outlive them.
    async fn connections(n: usize) -> (Vec<quinn::Endpoint>, Vec<quinn::Connection>) {
        use hotline_net::transport::{client_endpoint, server_endpoint, TransportLimits};
        let dir = tempfile::tempdir().expect("temporary directory");
        let (cert, key) = (dir.path().join("relay.crt"), dir.path().join("relay.key"));
        let fp = hotline_net::tls::write_self_signed(&cert, &key).expect("certificate");
        let identity = hotline_net::RelayIdentity::load(&cert, &key).expect("identity");
        let limits = TransportLimits::default();
        let local = "127.0.0.1:0".parse().expect("address");
        let server = server_endpoint(local, &identity, &limits).expect("server");
        let addr = server.local_addr().expect("bound");
        let client = client_endpoint(local, vec![fp], &limits).expect("client");
        let mut conns = Vec::new();
        for _ in 0..n {
            let wait = std::time::Duration::from_secs(10);
            let (made, accepted) = tokio::join!(hotline_net::connect(&client, addr, wait), async {
                server
                    .accept()
                    .await
                    .expect("incoming")
                    .await
                    .expect("accepted")
            });
            made.expect("connected");
            conns.push(accepted);
        }
        (vec![server, client], conns)
    }

    /// A login whose session registers late (its last sequence number was slow to read, and
    /// its node, tired of waiting for `Welcome`, connected again) must not close the newer
    /// connection that has meanwhile logged in and is being served: the newest connection
    /// wins (PROTOCOL.md 6.4). The late, older one is the one superseded. (Before, the late
    /// registration closed the live connection as `Superseded`: its node waited 10 s and
    /// reported another instance holding its identity.)
    #[tokio::test]
    async fn an_older_connection_registering_late_does_not_supersede_a_newer_one() {
        let (_endpoints, conns) = connections(2).await;
        let (older, newer) = (&conns[0], &conns[1]);
        let hub = Hub::new(CAP8);
        let kaz = ParticipantId::new("KAZ").expect("participant id");
        assert!(hub.register(&kaz, 2, newer.clone()).is_some());
        let late = hub.register(&kaz, 1, older.clone());
        assert!(
            newer.close_reason().is_none(),
            "the newer connection was closed: {:?}",
            newer.close_reason()
        );
        assert!(
            late.is_none(),
            "the older connection, registering late, is the one superseded"
        );
        assert!(!hub.unregister(&kaz, 1), "the older one is not registered");
        assert!(hub.unregister(&kaz, 2), "the newer one stays registered");
    }

    /// `close` says whether it closed a session: the store writer's recall after a failed
    /// commit counts the sessions it closed, not every recipient of the batch.
    #[tokio::test]
    async fn closing_says_whether_a_session_was_there() {
        let (_endpoints, conns) = connections(1).await;
        let hub = Hub::new(CAP8);
        let kaz = ParticipantId::new("KAZ").expect("participant id");
        let kgz = ParticipantId::new("KGZ").expect("participant id");
        assert!(hub.register(&kaz, 1, conns[0].clone()).is_some());
        assert!(!hub.close(&kgz, b"test"), "KGZ has no session");
        assert!(conns[0].close_reason().is_none());
        assert!(hub.close(&kaz, b"test"), "KAZ's session is closed");
        assert!(conns[0].close_reason().is_some());
    }

    /// A session may take from its mailbox between two items of one post (the writer holds
    /// each lane's lock only while it places one item). If a batch overflowed the lane in
    /// its first post, before its commit, and the session took meanwhile (and read the store,
    /// where the batch is not yet), the rest of that post must not reach the session ahead
    /// of what the overflow emptied: the session delivers in position order and skips
    /// positions below the last it wrote, so those would never come on this connection.
    #[test]
    fn a_session_taking_during_a_post_that_overflows_misses_nothing_of_it() {
        let cap = LaneCap {
            items: 4,
            bytes: 1 << 20,
        };
        let mut l = Lane::default();
        // An earlier batch, 1 and 2, committed; the session has not taken it yet.
        l.push(&posted(1), None, cap, 1);
        l.push(&posted(2), None, cap, 1);
        // The first post of the next batch, 3 to 6, before its commit: 5 overflows the lane.
        for p in 3..=5 {
            l.push(&posted(p), None, cap, 2);
        }
        // Meanwhile the session takes: it reads the store, which holds 1 and 2 but not yet
        // the batch.
        assert!(matches!(l.take(0, 10), Take::ReadStore));
        let mut written = vec![1, 2];
        // The rest of the first post, and the session takes what is there.
        l.push(&posted(6), None, cap, 2);
        written.extend(items(l.take(2, 10)));
        // The commit, and the batch's second post.
        for p in 3..=6 {
            l.push(&posted(p), None, cap, 3);
        }
        let cursor = written.last().copied().unwrap_or(0);
        written.extend(items(l.take(cursor, 10)));
        assert_eq!(written, vec![1, 2, 3, 4, 5, 6], "every position, in order");
    }

    #[test]
    fn a_lane_overflows_on_bytes_as_well_as_items() {
        let cap = LaneCap {
            items: 100,
            bytes: 2,
        };
        let mut l = Lane::default();
        l.push(&posted(1), None, cap, 1);
        l.push(&posted(2), None, cap, 1);
        assert_eq!(l.bytes, 2);
        assert_eq!(items(l.take(0, 1)), vec![1]);
        assert_eq!(l.bytes, 1, "taking releases bytes");
        l.push(&posted(3), None, cap, 2);
        l.push(&posted(4), None, cap, 2);
        assert!(matches!(l.take(0, 10), Take::ReadStore));
        assert_eq!(l.bytes, 0);
    }
}
