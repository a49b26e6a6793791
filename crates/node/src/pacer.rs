//! Receipt pacing, without I/O: which stored deliveries wait for a cumulative delivered
//! receipt, and when that receipt is due (`limits::RECEIPT_PACE_MS`, `RECEIPT_PACE_ITEMS`).
//! The link owns one per relay connection; the benchmark's recipients use the same.
//!
//! The pace spaces receipts, it does not delay the first: a delivery stored when no
//! receipt has left for a whole pace is receipted at once, and only what is stored within
//! a pace of the last receipt waits for the next, due a pace after the last. Steady traffic
//! gets one receipt per pace, as with a timer started by the first waiting item, while a
//! lone message (the usual case on a hotline) is receipted as soon as it is stored instead
//! of a pace later.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use hotline_proto::limits::RECEIPT_ITEMS_MAX;
use hotline_proto::{
    EncodeError, MessageId, ParticipantId, Receipt, ReceiptItem, ReceiptKind, Signed, SigningKey,
    PROTOCOL_VERSION,
};

use crate::limits::{RECEIPT_PACE_ITEMS, RECEIPT_PACE_MS};

/// Deliveries stored durably and not yet receipted.
#[derive(Debug)]
pub struct ReceiptPacer {
    items: Vec<ReceiptItem>,
    ids: HashSet<MessageId>,
    due: Option<Instant>,
    /// When the last receipt left ([`ReceiptPacer::take`]).
    last: Option<Instant>,
    pace: Duration,
    max_items: usize,
}

impl Default for ReceiptPacer {
    /// The node's pacing: 20 ms, or at once when 512 wait.
    fn default() -> Self {
        Self::new(Duration::from_millis(RECEIPT_PACE_MS), RECEIPT_PACE_ITEMS)
    }
}

impl ReceiptPacer {
    /// Receipts leave at most one per `pace` (at once when `max_items` wait). A zero pace
    /// receipts every batch at once.
    pub fn new(pace: Duration, max_items: usize) -> Self {
        Self {
            items: Vec::new(),
            ids: HashSet::new(),
            due: None,
            last: None,
            pace,
            max_items: max_items.max(1),
        }
    }

    /// Adds stored deliveries, each message once however often it was delivered. Returns
    /// whether the receipt should leave now (the pace is zero, or enough items wait).
    pub fn add(&mut self, items: impl IntoIterator<Item = ReceiptItem>, now: Instant) -> bool {
        for item in items {
            if self.ids.insert(item.id) {
                self.items.push(item);
            }
        }
        if !self.items.is_empty() && self.due.is_none() {
            let spaced = self.last.map(|last| last + self.pace);
            self.due = Some(spaced.map_or(now, |t| t.max(now)));
        }
        self.is_due(now)
    }

    /// When the waiting items' receipt is due, if any wait.
    pub fn due(&self) -> Option<Instant> {
        self.due
    }

    /// Whether items wait and their receipt is due at `now`.
    pub fn is_due(&self, now: Instant) -> bool {
        self.due
            .is_some_and(|due| now >= due || self.items.len() >= self.max_items)
    }

    /// Takes every waiting item, for one receipt (or several, past the receipt item limit)
    /// leaving at `now`, and stops the timer. Nothing waiting, nothing leaves: the next
    /// receipt is spaced from the last one that did.
    pub fn take(&mut self, now: Instant) -> Vec<ReceiptItem> {
        if !self.items.is_empty() {
            self.last = Some(now);
        }
        self.due = None;
        self.ids.clear();
        std::mem::take(&mut self.items)
    }
}

/// Signs `me`'s cumulative delivered receipts for `items`, one per `RECEIPT_ITEMS_MAX` of
/// them (a pacer may release up to 511 waiting items plus the batch that took them past
/// its limit).
pub fn sign_delivered(
    me: &ParticipantId,
    key: &SigningKey,
    items: &[ReceiptItem],
    now_ms: u64,
) -> Result<Vec<Signed<Receipt>>, EncodeError> {
    items
        .chunks(RECEIPT_ITEMS_MAX)
        .map(|chunk| {
            let receipt = Receipt {
                version: PROTOCOL_VERSION,
                recipient: me.clone(),
                kind: ReceiptKind::Delivered,
                created_at_ms: now_ms,
                items: chunk.to_vec(),
            };
            Signed::sign(&receipt, key)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hotline_proto::{Digest, ParticipantId};

    fn item(n: u8) -> ReceiptItem {
        ReceiptItem {
            id: MessageId([n; 16]),
            sender: ParticipantId::new("KAZ").expect("valid id"),
            digest: Digest([n; 32]),
        }
    }

    fn ids(items: Vec<ReceiptItem>) -> Vec<u8> {
        items.iter().map(|i| i.id.0[0]).collect()
    }

    #[test]
    fn a_lone_delivery_leaves_at_once_and_later_ones_a_pace_after_the_last_receipt() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut p = ReceiptPacer::new(ms(20), 512);
        assert_eq!(p.due(), None, "nothing waits");
        assert!(p.add([item(1)], t0), "no receipt has left yet: at once");
        assert_eq!(ids(p.take(t0)), vec![1]);
        assert!(
            !p.add([item(2)], t0 + ms(5)),
            "within a pace of the last receipt"
        );
        assert_eq!(p.due(), Some(t0 + ms(20)), "a pace after the last receipt");
        assert!(
            !p.add([item(3), item(2)], t0 + ms(15)),
            "still within the pace"
        );
        assert_eq!(p.due(), Some(t0 + ms(20)), "later items do not move it");
        assert!(!p.is_due(t0 + ms(19)));
        assert!(p.is_due(t0 + ms(20)));
        assert_eq!(
            ids(p.take(t0 + ms(20))),
            vec![2, 3],
            "each message once, in order"
        );
        assert_eq!(p.due(), None);
        assert!(!p.is_due(t0 + ms(100)), "nothing waits after take");
        assert!(!p.add([item(1)], t0 + ms(30)), "a redelivery waits too");
        assert_eq!(p.due(), Some(t0 + ms(40)));
        assert_eq!(ids(p.take(t0 + ms(40))), vec![1]);
        assert!(
            p.add([item(4)], t0 + ms(61)),
            "quiet for more than a pace: at once again"
        );
    }

    #[test]
    fn taking_nothing_does_not_count_as_a_receipt() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut p = ReceiptPacer::new(ms(20), 512);
        assert!(p.add([item(1)], t0));
        assert_eq!(p.take(t0).len(), 1);
        assert!(p.take(t0 + ms(15)).is_empty());
        assert!(
            p.add([item(2)], t0 + ms(21)),
            "spaced from the receipt at t0, not from the empty take"
        );
    }

    #[test]
    fn enough_items_or_a_zero_pace_leave_at_once() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut p = ReceiptPacer::new(ms(20), 3);
        assert!(p.add([item(1)], t0));
        assert_eq!(p.take(t0).len(), 1);
        assert!(!p.add([item(2), item(3)], t0 + ms(1)));
        assert!(
            p.add([item(4)], t0 + ms(2)),
            "the third waiting item fills the receipt"
        );
        assert_eq!(p.take(t0 + ms(2)).len(), 3);
        let mut now = ReceiptPacer::new(Duration::ZERO, 512);
        assert!(now.add([item(1)], t0), "no pace: at once");
        assert_eq!(now.take(t0).len(), 1);
        assert!(now.add([item(2)], t0), "no pace: at once, every time");
        let mut empty = ReceiptPacer::new(Duration::ZERO, 512);
        assert!(!empty.add([], t0), "nothing stored, nothing to receipt");
    }
}
