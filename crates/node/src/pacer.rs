//! Receipt pacing, without I/O: which stored deliveries wait for a cumulative delivered
//! receipt, and when that receipt is due (`limits::RECEIPT_PACE_MS`, `RECEIPT_PACE_ITEMS`).
//! The link owns one per relay connection; the benchmark's recipients use the same.
//!
//! Pacing only applies to traffic: a delivery stored after a quiet spell (nothing stored on
//! the link for `limits::RECEIPT_QUIET_MS`, or for the pace if that is longer) is receipted
//! at once. Otherwise the waiting deliveries are receipted a pace after the first of them.
//! A lone message, the usual case on a hotline, is receipted as soon as it is stored; a
//! burst or steady traffic gets one receipt per pace or so, and at most one more per quiet
//! spell.
//!
//! Measured with the benchmark (fanout37, windows of 64 and 1,024 messages), two shorter
//! quiet spells sent 40-90 % more receipts than pacing alone: "no receipt for a pace", and
//! "nothing stored for a pace". Window-bound fan-out delivers in bursts with gaps of a pace
//! or more between them, so each burst left one receipt at once and one a pace later.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use hotline_proto::limits::RECEIPT_ITEMS_MAX;
use hotline_proto::{
    EncodeError, MessageId, ParticipantId, Receipt, ReceiptItem, ReceiptKind, Signed, SigningKey,
    PROTOCOL_VERSION,
};

use crate::limits::RECEIPT_QUIET_MS;

/// Deliveries stored durably and not yet receipted.
#[derive(Debug)]
pub struct ReceiptPacer {
    items: Vec<ReceiptItem>,
    ids: HashSet<MessageId>,
    due: Option<Instant>,
    /// When deliveries were last stored ([`ReceiptPacer::add`]).
    last_stored: Option<Instant>,
    pace: Duration,
    /// Nothing stored for this long: the next delivery is receipted at once.
    quiet: Duration,
    max_items: usize,
}

impl ReceiptPacer {
    /// Deliveries wait up to `pace` after the first of them (none after a quiet spell, and
    /// none once `max_items` wait). A zero pace receipts every batch at once.
    pub fn new(pace: Duration, max_items: usize) -> Self {
        Self {
            items: Vec::new(),
            ids: HashSet::new(),
            due: None,
            last_stored: None,
            pace,
            quiet: pace.max(Duration::from_millis(RECEIPT_QUIET_MS)),
            max_items: max_items.max(1),
        }
    }

    /// Adds stored deliveries, each message once however often it was delivered. Returns
    /// whether the receipt should leave now (after a quiet spell, with a zero pace, or when
    /// enough items wait).
    pub fn add(&mut self, items: impl IntoIterator<Item = ReceiptItem>, now: Instant) -> bool {
        let mut any = false;
        for item in items {
            any = true;
            if self.ids.insert(item.id) {
                self.items.push(item);
            }
        }
        if !any {
            return self.is_due(now);
        }
        let quiet = !matches!(self.last_stored, Some(t) if now < t + self.quiet);
        self.last_stored = Some(now);
        if self.due.is_none() {
            self.due = Some(if quiet { now } else { now + self.pace });
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

    fn ids(items: Vec<ReceiptItem>) -> Vec<u8> {
        items.iter().map(|i| i.id.0[0]).collect()
    }

    #[test]
    fn after_a_quiet_spell_at_once_otherwise_a_pace_after_the_first_waiting() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut p = ReceiptPacer::new(ms(20), 512);
        assert_eq!(p.due(), None, "nothing waits");
        assert!(p.add([item(1)], t0), "nothing stored before: at once");
        assert_eq!(ids(p.take()), vec![1]);
        assert!(
            !p.add([item(2)], t0 + ms(5)),
            "stored within a pace of the last: waits"
        );
        assert_eq!(p.due(), Some(t0 + ms(25)), "a pace after the first waiting");
        assert!(
            !p.add([item(3), item(2)], t0 + ms(15)),
            "still within the pace"
        );
        assert_eq!(p.due(), Some(t0 + ms(25)), "later items do not move it");
        assert!(!p.is_due(t0 + ms(24)));
        assert!(p.is_due(t0 + ms(25)));
        assert_eq!(ids(p.take()), vec![2, 3], "each message once, in order");
        assert_eq!(p.due(), None);
        assert!(!p.is_due(t0 + ms(100)), "nothing waits after take");
        assert!(
            !p.add([item(1)], t0 + ms(30)),
            "a redelivery within a pace of the last stored waits"
        );
        assert_eq!(p.due(), Some(t0 + ms(50)));
        assert_eq!(ids(p.take()), vec![1]);
        assert!(
            !p.add([item(4)], t0 + ms(1029)),
            "stored 999 ms after the last: not quiet yet"
        );
        assert_eq!(ids(p.take()), vec![4]);
        assert!(
            p.add([item(5)], t0 + ms(2029)),
            "nothing stored for RECEIPT_QUIET_MS (1 s): at once again"
        );
    }

    #[test]
    fn a_pace_longer_than_the_quiet_spell_is_the_quiet_spell() {
        let t0 = Instant::now();
        let hour = Duration::from_secs(3600);
        let mut p = ReceiptPacer::new(hour, 512);
        assert!(p.add([item(1)], t0));
        assert_eq!(p.take().len(), 1);
        assert!(!p.add([item(2)], t0 + Duration::from_secs(5)), "waits");
        assert_eq!(p.due(), Some(t0 + Duration::from_secs(5) + hour));
    }

    #[test]
    fn steady_traffic_gets_one_receipt_per_pace() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut p = ReceiptPacer::new(ms(20), 512);
        let mut receipts = 0;
        // A delivery every 2 ms for 200 ms, the timer checked at each.
        for n in 0..100u8 {
            let now = t0 + ms(2 * u64::from(n));
            if p.add([item(n)], now) || p.is_due(now) {
                p.take();
                receipts += 1;
            }
        }
        assert!((10..=12).contains(&receipts), "{receipts} receipts");
    }

    #[test]
    fn enough_items_or_a_zero_pace_leave_at_once() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut p = ReceiptPacer::new(ms(20), 3);
        assert!(p.add([item(1)], t0));
        assert_eq!(p.take().len(), 1);
        assert!(!p.add([item(2), item(3)], t0 + ms(1)));
        assert!(
            p.add([item(4)], t0 + ms(2)),
            "the third waiting item fills the receipt"
        );
        assert_eq!(p.take().len(), 3);
        let mut now = ReceiptPacer::new(Duration::ZERO, 512);
        assert!(now.add([item(1)], t0), "no pace: at once");
        assert_eq!(now.take().len(), 1);
        assert!(now.add([item(2)], t0), "no pace: at once, every time");
        let mut empty = ReceiptPacer::new(Duration::ZERO, 512);
        assert!(!empty.add([], t0), "nothing stored, nothing to receipt");
    }
}
