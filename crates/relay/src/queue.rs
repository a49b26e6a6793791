//! The relay's delivery queues, in memory: for each recipient, the positions (`rseq`) of the
//! messages addressed to it that it has not yet receipted, in order.
//!
//! The store keeps no row per queued (message, recipient) (schema 3). What is durable per
//! recipient is a **cursor** (every message addressed to it at or below this position has
//! been receipted) and the few positions it receipted **ahead** of the cursor, out of order;
//! with the messages' recipient lists, that is enough to rebuild this index when the relay
//! starts (`store::Writer::new`). Accepting a 37-way message then writes no queue rows, and a
//! cumulative receipt moves one cursor instead of deleting a row per message it names
//! (docs/BENCHMARKS-ROUNDS.md, seventh round).
//!
//! The store writer is this index's only writer. It adds a message's positions only after
//! the commit that holds the message (so a session never delivers what is not durable), and
//! removes a position when it stores the receipt that names it (putting it back if that
//! commit fails). Sessions read it, under its lock, to find their backlog.
//!
//! Memory: 8 bytes per queued (message, recipient), and while receipts come out of order, a
//! set of the positions removed behind the front (at most half the queue, see
//! [`Positions`]). `queue_depth_max` bounds what acceptance adds to a queue, not what a
//! rewind owes again or a limit lowered since leaves: such a queue is held whole, as a
//! start reads it (`store::load_queues` says why it is not paged), and takes no new message
//! until receipts bring it below the limit.
//!
//! Cost: every operation is O(log n) but the rare put-back of a failed commit's removals.
//! Receipts usually name the oldest queued messages, which pop from the front; one naming
//! positions in the middle of a queue (out of order) marks them removed instead of moving
//! half a queue of up to `queue_depth_max` positions, under the lock the sessions share,
//! once per position (117 ms for a receipt of 512 in a queue of 1,000,000, 37 µs marked).

use std::collections::{BTreeSet, HashMap, VecDeque};

use hotline_proto::ParticipantId;

/// One recipient's positions: `live` ascending, less those in `gone`, which were removed
/// from its middle (more than [`SHIFT_MAX`] from either end) and not yet cleared out of
/// `live`.
///
/// Invariants: `gone` ⊆ `live`; the front of `live` is never in `gone`; `gone` holds at
/// most half of `live` once it is above [`COMPACT_MIN`] (then `live` is rebuilt without
/// them, O(n) once per n/2 removals).
#[derive(Debug, Default)]
struct Positions {
    live: VecDeque<i64>,
    gone: BTreeSet<i64>,
}

/// Below this many removed positions a queue is not rebuilt (a rebuild would cost more than
/// the few it clears). Lower in the unit tests, so that short runs rebuild often.
const COMPACT_MIN: usize = if cfg!(test) { 4 } else { 64 };

/// A position this close to either end of a queue is removed at once rather than marked.
const SHIFT_MAX: usize = if cfg!(test) { 2 } else { 64 };

impl Positions {
    fn len(&self) -> usize {
        self.live.len() - self.gone.len()
    }

    fn first(&self) -> Option<i64> {
        self.live.front().copied()
    }

    fn push(&mut self, rseq: i64) {
        match self.live.back() {
            Some(last) if *last >= rseq => {
                // A put-back (a failed commit): still in `live` if it was marked removed
                // from the middle, otherwise put back in its place.
                if !self.gone.remove(&rseq) {
                    if let Err(i) = self.live.binary_search(&rseq) {
                        self.live.insert(i, rseq);
                    }
                }
            }
            _ => self.live.push_back(rseq),
        }
    }

    fn remove(&mut self, rseq: i64) -> bool {
        if self.live.front() == Some(&rseq) {
            self.live.pop_front();
            // Positions removed just behind it leave with it, so the front is never gone.
            while let Some(f) = self.live.front().filter(|_| !self.gone.is_empty()) {
                if !self.gone.remove(f) {
                    break;
                }
                self.live.pop_front();
            }
            self.compact_if_half_gone();
            return true;
        }
        let Ok(i) = self.live.binary_search(&rseq) else {
            return false;
        };
        if self.gone.contains(&rseq) {
            return false;
        }
        // Near either end, removing moves at most `SHIFT_MAX` positions (a backlog
        // receipted newest first comes off the back).
        if i.min(self.live.len() - 1 - i) <= SHIFT_MAX {
            self.live.remove(i);
        } else {
            self.gone.insert(rseq);
        }
        self.compact_if_half_gone();
        true
    }

    /// Whether the marked positions are over half of `live` (and at least
    /// [`COMPACT_MIN`]): what a removal never leaves behind.
    fn half_gone(&self) -> bool {
        self.gone.len() >= COMPACT_MIN && self.gone.len() * 2 > self.live.len()
    }

    /// Rebuilds `live` without the marked positions once they are half of it (and at least
    /// [`COMPACT_MIN`]): after any removal, since one at either end shortens `live` but not
    /// `gone`.
    fn compact_if_half_gone(&mut self) {
        if self.half_gone() {
            let gone = std::mem::take(&mut self.gone);
            self.live.retain(|p| !gone.contains(p));
        }
    }

    fn after(&self, after: i64, limit: usize) -> Vec<i64> {
        let start = self.live.partition_point(|p| *p <= after);
        self.live
            .range(start..)
            .filter(|p| !self.gone.contains(p))
            .take(limit)
            .copied()
            .collect()
    }
}

/// One recipient's queue ([`QueueIndex::queue`]).
pub(crate) struct Queue<'a>(&'a mut Positions);

impl Queue<'_> {
    /// Removes `rseq`; whether it was there.
    pub(crate) fn remove(&mut self, rseq: i64) -> bool {
        self.0.remove(rseq)
    }
}

/// Each recipient's unreceipted positions, ascending.
#[derive(Debug, Default)]
pub(crate) struct QueueIndex {
    queues: HashMap<ParticipantId, Positions>,
}

impl QueueIndex {
    /// Appends `rseq` to `recipient`'s queue. Positions are handed out in increasing order,
    /// so this is an append; an out-of-order one is put in its place.
    pub(crate) fn push(&mut self, recipient: &ParticipantId, rseq: i64) {
        let q = match self.queues.get_mut(recipient) {
            Some(q) => q,
            None => self.queues.entry(recipient.clone()).or_default(),
        };
        q.push(rseq);
    }

    /// `recipient`'s queue, looked up once for several removals (a cumulative receipt names
    /// up to 512 messages).
    pub(crate) fn queue(&mut self, recipient: &ParticipantId) -> Option<Queue<'_>> {
        self.queues.get_mut(recipient).map(Queue)
    }

    /// Lets `recipient`'s queue go (a participant taken off the roster: the store keeps
    /// what it is owed).
    pub(crate) fn forget(&mut self, recipient: &ParticipantId) {
        self.queues.remove(recipient);
    }

    /// The oldest position queued for `recipient`.
    pub(crate) fn first(&self, recipient: &ParticipantId) -> Option<i64> {
        self.queues.get(recipient).and_then(Positions::first)
    }

    /// How many messages are queued for `recipient`.
    pub(crate) fn len(&self, recipient: &ParticipantId) -> usize {
        self.queues.get(recipient).map_or(0, Positions::len)
    }

    /// Messages queued in all.
    pub(crate) fn total(&self) -> usize {
        self.queues.values().map(Positions::len).sum()
    }

    /// Every recipient that has had a queue, with its length.
    pub(crate) fn depths(&self) -> impl Iterator<Item = (&ParticipantId, usize)> {
        self.queues.iter().map(|(p, q)| (p, q.len()))
    }

    /// Up to `limit` positions queued for `recipient` after `after`, ascending.
    pub(crate) fn after(&self, recipient: &ParticipantId, after: i64, limit: usize) -> Vec<i64> {
        self.queues
            .get(recipient)
            .map_or_else(Vec::new, |q| q.after(after, limit))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pid(s: &str) -> ParticipantId {
        ParticipantId::new(s).expect("valid id")
    }

    #[test]
    fn positions_come_out_in_order_after_a_cursor() {
        let (kaz, ind) = (pid("KAZ"), pid("IND"));
        let mut ix = QueueIndex::default();
        for r in [1, 2, 4, 7] {
            ix.push(&kaz, r);
        }
        ix.push(&ind, 4);
        assert_eq!(ix.after(&kaz, 0, 10), [1, 2, 4, 7]);
        assert_eq!(ix.after(&kaz, 2, 10), [4, 7]);
        assert_eq!(ix.after(&kaz, 3, 1), [4]);
        assert_eq!(ix.after(&kaz, 7, 10), Vec::<i64>::new());
        assert_eq!(ix.after(&pid("CHN"), 0, 10), Vec::<i64>::new());
        assert_eq!((ix.len(&kaz), ix.len(&ind), ix.total()), (4, 1, 5));
        assert_eq!(ix.first(&kaz), Some(1));
    }

    #[test]
    fn removal_in_order_and_out_of_order() {
        let kaz = pid("KAZ");
        let mut ix = QueueIndex::default();
        for r in 1..=5 {
            ix.push(&kaz, r);
        }
        let mut q = ix.queue(&kaz).expect("KAZ has a queue");
        assert!(q.remove(1), "the front");
        assert!(q.remove(4), "from the middle");
        assert!(!q.remove(4), "only once");
        assert!(!q.remove(9), "never queued");
        assert!(ix.queue(&pid("CHN")).is_none(), "another recipient's");
        assert_eq!(ix.after(&kaz, 0, 10), [2, 3, 5]);
        assert_eq!(ix.first(&kaz), Some(2));
    }

    /// Any sequence of appends, removals (in order, out of order, of what is not there) and
    /// put-backs leaves the queue as a plain ordered set would be, whatever the removals
    /// behind the front and the rebuilds did inside.
    #[test]
    fn the_queue_is_an_ordered_set_whatever_the_order_of_removals() {
        use proptest::prelude::*;
        use std::collections::BTreeSet;
        #[derive(Clone, Debug)]
        enum Op {
            Append(u8),
            Remove(u16),
            PutBack(u16),
        }
        let op = prop_oneof![
            (1u8..4).prop_map(Op::Append),
            any::<u16>().prop_map(Op::Remove),
            any::<u16>().prop_map(Op::PutBack),
        ];
        let kaz = pid("KAZ");
        proptest!(ProptestConfig::with_cases(256), |(ops in proptest::collection::vec(op, 1..600))| {
            let mut ix = QueueIndex::default();
            let mut model = BTreeSet::new();
            let mut removed: Vec<i64> = Vec::new();
            let mut next = 0i64;
            for op in ops {
                match op {
                    Op::Append(n) => {
                        for _ in 0..n {
                            next += 1;
                            ix.push(&kaz, next);
                            model.insert(next);
                        }
                    }
                    Op::Remove(k) => {
                        // Mostly a queued position (any of them), sometimes one that is not.
                        let target = if model.is_empty() || k % 7 == 0 {
                            i64::from(k % 64)
                        } else {
                            *model.iter().nth(usize::from(k) % model.len()).expect("in range")
                        };
                        let was = model.remove(&target);
                        let q = ix.queue(&kaz);
                        prop_assert_eq!(q.map(|mut q| q.remove(target)).unwrap_or(false), was);
                        if was {
                            removed.push(target);
                        }
                    }
                    Op::PutBack(k) => {
                        if !removed.is_empty() {
                            let p = removed.swap_remove(usize::from(k) % removed.len());
                            ix.push(&kaz, p);
                            model.insert(p);
                        }
                    }
                }
                if let Some(p) = ix.queues.get(&kaz) {
                    prop_assert!(!p.half_gone(), "{} marked of {}", p.gone.len(), p.live.len());
                }
                let all: Vec<i64> = model.iter().copied().collect();
                prop_assert_eq!(ix.after(&kaz, 0, usize::MAX), all.clone());
                prop_assert_eq!(ix.len(&kaz), all.len());
                prop_assert_eq!(ix.total(), all.len());
                prop_assert_eq!(ix.first(&kaz), all.first().copied());
                if let Some(mid) = all.get(all.len() / 2) {
                    let want: Vec<i64> = all.iter().copied().filter(|p| p > mid).take(5).collect();
                    prop_assert_eq!(ix.after(&kaz, *mid, 5), want);
                }
            }
        });
    }

    /// A member receipting a long backlog newest first takes positions off the back: nothing
    /// is marked. One receipting it from the middle outwards marks what it removes there,
    /// never more than half the queue, and the queue ends empty either way.
    #[test]
    fn a_backlog_receipted_from_the_back_or_the_middle_empties_the_queue() {
        let kaz = pid("KAZ");
        let fill = |ix: &mut QueueIndex| {
            for r in 1..=10_000 {
                ix.push(&kaz, r);
            }
        };
        let mut ix = QueueIndex::default();
        fill(&mut ix);
        for r in (1..=10_000).rev() {
            assert!(ix.queue(&kaz).expect("queued").remove(r), "{r}");
            assert!(ix.queues[&kaz].gone.is_empty(), "{r}");
        }
        assert_eq!((ix.len(&kaz), ix.first(&kaz)), (0, None));

        fill(&mut ix);
        let middle_out = (1..=5_000).flat_map(|d| [5_000 + d, 5_001 - d]);
        for r in middle_out {
            assert!(ix.queue(&kaz).expect("queued").remove(r), "{r}");
            let p = &ix.queues[&kaz];
            assert!(
                p.gone.len() <= COMPACT_MIN.max(p.live.len() / 2),
                "{r}: {} of {}",
                p.gone.len(),
                p.live.len()
            );
            assert_eq!(ix.len(&kaz), p.live.len() - p.gone.len());
        }
        assert_eq!((ix.len(&kaz), ix.first(&kaz)), (0, None));
        let p = &ix.queues[&kaz];
        assert!(
            p.live.is_empty() && p.gone.is_empty(),
            "{} / {}",
            p.live.len(),
            p.gone.len()
        );
    }

    /// The marked positions stay at most half the queue after a removal at an end too,
    /// which shortens the queue without marking: the queue holds what it is owed and not
    /// twice that.
    #[test]
    fn marks_stay_at_most_half_the_queue_when_its_ends_are_taken() {
        let kaz = pid("KAZ");
        let mut ix = QueueIndex::default();
        for r in 1..=20 {
            ix.push(&kaz, r);
        }
        let mut q = ix.queue(&kaz).expect("queued");
        for r in 4..=13 {
            assert!(q.remove(r), "{r}");
        }
        assert_eq!(
            (q.0.gone.len(), q.0.live.len()),
            (10, 20),
            "half marked, no rebuild yet"
        );
        assert!(q.remove(20), "from the back");
        assert!(
            q.0.gone.is_empty(),
            "rebuilt: {} of {}",
            q.0.gone.len(),
            q.0.live.len()
        );
        assert_eq!(ix.after(&kaz, 0, 100), [1, 2, 3, 14, 15, 16, 17, 18, 19]);
        // The same from the front.
        let mut q = ix.queue(&kaz).expect("queued");
        for r in 16..=18 {
            assert!(q.remove(r), "{r}");
        }
        assert!(!q.0.half_gone());
        for r in 1..=3 {
            assert!(q.remove(r), "{r}");
            assert!(!q.0.half_gone());
        }
        assert_eq!(ix.after(&kaz, 0, 100), [14, 15, 19]);
    }

    #[test]
    fn a_position_put_back_goes_to_its_place_once() {
        let kaz = pid("KAZ");
        let mut ix = QueueIndex::default();
        for r in [2, 5, 9] {
            ix.push(&kaz, r);
        }
        // A failed commit puts back what its receipts removed.
        ix.push(&kaz, 1);
        ix.push(&kaz, 6);
        ix.push(&kaz, 6);
        assert_eq!(ix.after(&kaz, 0, 10), [1, 2, 5, 6, 9]);
        let depths: Vec<(String, usize)> = ix.depths().map(|(p, n)| (p.to_string(), n)).collect();
        assert_eq!(depths, [("KAZ".to_string(), 5)]);
    }
}
