//! Receipt pacing, without I/O: which stored deliveries wait for a cumulative delivered
//! receipt, and when that receipt is due (`limits::RECEIPT_PACE_MS`, `RECEIPT_PACE_ITEMS`).
//! The link owns one per relay connection; the benchmark's recipients use the same.

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
    /// Items wait up to `pace` after the first of them, or until `max_items` wait. A zero
    /// pace receipts every batch at once.
    pub fn new(pace: Duration, max_items: usize) -> Self {
        Self {
            items: Vec::new(),
            ids: HashSet::new(),
            due: None,
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
        if !self.items.is_empty() {
            self.due.get_or_insert(now + self.pace);
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

    /// Takes every waiting item, for one receipt (or several, past the receipt item limit),
    /// and stops the timer.
    pub fn take(&mut self) -> Vec<ReceiptItem> {
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

    #[test]
    fn items_wait_for_the_pace_from_the_first_of_them() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut p = ReceiptPacer::new(ms(20), 512);
        assert_eq!(p.due(), None, "nothing waits");
        assert!(!p.add([item(1)], t0), "one item waits");
        assert_eq!(p.due(), Some(t0 + ms(20)));
        assert!(
            !p.add([item(2), item(1)], t0 + ms(15)),
            "still within the pace"
        );
        assert_eq!(p.due(), Some(t0 + ms(20)), "the first item sets the time");
        assert!(!p.is_due(t0 + ms(19)));
        assert!(p.is_due(t0 + ms(20)));
        let ids: Vec<u8> = p.take().iter().map(|i| i.id.0[0]).collect();
        assert_eq!(ids, vec![1, 2], "each message once, in order");
        assert_eq!(p.due(), None);
        assert!(!p.is_due(t0 + ms(100)), "nothing waits after take");
        assert!(!p.add([item(1)], t0 + ms(30)), "a redelivery waits again");
        assert_eq!(p.due(), Some(t0 + ms(50)));
    }

    #[test]
    fn enough_items_or_a_zero_pace_leave_at_once() {
        let t0 = Instant::now();
        let mut p = ReceiptPacer::new(Duration::from_millis(20), 3);
        assert!(!p.add([item(1), item(2)], t0));
        assert!(p.add([item(3)], t0), "the third item fills the receipt");
        assert_eq!(p.take().len(), 3);
        let mut now = ReceiptPacer::new(Duration::ZERO, 512);
        assert!(now.add([item(1)], t0), "no pace: at once");
        assert_eq!(now.take().len(), 1);
        let mut empty = ReceiptPacer::new(Duration::ZERO, 512);
        assert!(!empty.add([], t0), "nothing stored, nothing to receipt");
    }
}
