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
//! Memory: 8 bytes per queued (message, recipient), at most `queue_depth_max` per
//! recipient.

use std::collections::{HashMap, VecDeque};

use hotline_proto::ParticipantId;

/// One recipient's queue ([`QueueIndex::queue`]).
pub(crate) struct Queue<'a>(&'a mut VecDeque<i64>);

impl Queue<'_> {
    /// Removes `rseq`; whether it was there.
    pub(crate) fn remove(&mut self, rseq: i64) -> bool {
        let q = &mut *self.0;
        // Receipts name messages in order, so the usual case is the front.
        if q.front() == Some(&rseq) {
            q.pop_front();
            return true;
        }
        match q.binary_search(&rseq) {
            Ok(i) => {
                q.remove(i);
                true
            }
            Err(_) => false,
        }
    }
}

/// Each recipient's unreceipted positions, ascending.
#[derive(Debug, Default)]
pub(crate) struct QueueIndex {
    queues: HashMap<ParticipantId, VecDeque<i64>>,
}

impl QueueIndex {
    /// Appends `rseq` to `recipient`'s queue. Positions are handed out in increasing order,
    /// so this is an append; an out-of-order one is put in its place.
    pub(crate) fn push(&mut self, recipient: &ParticipantId, rseq: i64) {
        let q = match self.queues.get_mut(recipient) {
            Some(q) => q,
            None => self.queues.entry(recipient.clone()).or_default(),
        };
        match q.back() {
            Some(last) if *last >= rseq => {
                if let Err(i) = q.binary_search(&rseq) {
                    q.insert(i, rseq);
                }
            }
            _ => q.push_back(rseq),
        }
    }

    /// `recipient`'s queue, looked up once for several removals (a cumulative receipt names
    /// up to 512 messages).
    pub(crate) fn queue(&mut self, recipient: &ParticipantId) -> Option<Queue<'_>> {
        self.queues.get_mut(recipient).map(Queue)
    }

    /// The oldest position queued for `recipient`.
    pub(crate) fn first(&self, recipient: &ParticipantId) -> Option<i64> {
        self.queues.get(recipient).and_then(|q| q.front().copied())
    }

    /// How many messages are queued for `recipient`.
    pub(crate) fn len(&self, recipient: &ParticipantId) -> usize {
        self.queues.get(recipient).map_or(0, |q| q.len())
    }

    /// Messages queued in all.
    pub(crate) fn total(&self) -> usize {
        self.queues.values().map(|q| q.len()).sum()
    }

    /// Every recipient that has had a queue, with its length.
    pub(crate) fn depths(&self) -> impl Iterator<Item = (&ParticipantId, usize)> {
        self.queues.iter().map(|(p, q)| (p, q.len()))
    }

    /// Up to `limit` positions queued for `recipient` after `after`, ascending.
    pub(crate) fn after(&self, recipient: &ParticipantId, after: i64, limit: usize) -> Vec<i64> {
        let Some(q) = self.queues.get(recipient) else {
            return Vec::new();
        };
        let start = q.partition_point(|p| *p <= after);
        q.range(start..).take(limit).copied().collect()
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
