//! Receipts: a recipient's signed statement that it holds (delivered) or that a person has
//! read (acknowledged) one or more messages.
//!
//! One receipt may cover many messages (the cumulative form): under load the recipient signs
//! once for a whole batch, which is what keeps signing cost off the critical path.

use serde::Serialize;

use crate::codec::DecodeError;
use crate::id::{MessageId, ParticipantId};
use crate::limits::{NOTE_BYTES_MAX, OFFICER_BYTES_MAX, RECEIPT_BYTES_MAX, RECEIPT_ITEMS_MAX};
use crate::sign::{Digest, SignedPayload, DOMAIN_RECEIPT};
use crate::PROTOCOL_VERSION;

/// What the recipient states.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, bincode::Encode, bincode::Decode)]
#[serde(rename_all = "snake_case", tag = "type")]
#[non_exhaustive]
pub enum ReceiptKind {
    /// Tag 0: the recipient's node holds the messages durably.
    Delivered,
    /// Tag 1: a named person at the recipient has read the messages.
    Acknowledged {
        /// Who acknowledged (name or duty position).
        officer: String,
        /// Optional remark.
        note: Option<String>,
    },
}

/// One message a receipt covers, named by id, author and the digest of exactly what was
/// signed, so the receipt commits to the content received.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, bincode::Encode, bincode::Decode)]
pub struct ReceiptItem {
    /// The message.
    pub id: MessageId,
    /// Its author.
    pub sender: ParticipantId,
    /// SHA-256 of the message's signed bytes (domain prefix included).
    pub digest: Digest,
}

/// A signed delivered or acknowledged statement about one or more messages.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, bincode::Encode, bincode::Decode)]
pub struct Receipt {
    /// Protocol version.
    pub version: u16,
    /// The recipient, and signer, of the receipt.
    pub recipient: ParticipantId,
    /// Delivered or acknowledged.
    pub kind: ReceiptKind,
    /// When the recipient signed it, in milliseconds since the Unix epoch.
    pub created_at_ms: u64,
    /// The messages covered: one, or many for the cumulative form.
    pub items: Vec<ReceiptItem>,
}

impl Receipt {
    /// Whether this is an acknowledgement (as opposed to a delivery receipt).
    pub fn is_ack(&self) -> bool {
        matches!(self.kind, ReceiptKind::Acknowledged { .. })
    }
}

impl SignedPayload for Receipt {
    const DOMAIN: &'static [u8] = DOMAIN_RECEIPT;
    const BYTES_MAX: usize = RECEIPT_BYTES_MAX;

    fn check(&self) -> Result<(), DecodeError> {
        let invalid = |field, reason| DecodeError::Invalid { field, reason };
        if self.version != PROTOCOL_VERSION {
            return Err(invalid("version", "unsupported protocol version"));
        }
        if self.created_at_ms > crate::limits::TIME_MS_MAX {
            return Err(invalid("created_at_ms", "times end at 2^63 - 1 ms"));
        }
        if self.items.is_empty() {
            return Err(invalid("items", "must cover at least one message"));
        }
        if self.items.len() > RECEIPT_ITEMS_MAX {
            return Err(DecodeError::OverLimit {
                field: "items",
                max: RECEIPT_ITEMS_MAX,
            });
        }
        let mut ids: Vec<_> = self.items.iter().map(|i| i.id).collect();
        ids.sort();
        if ids.windows(2).any(|w| w[0] == w[1]) {
            return Err(invalid("items", "message listed twice"));
        }
        if let ReceiptKind::Acknowledged { officer, note } = &self.kind {
            if officer.trim().is_empty() {
                return Err(invalid("officer", "empty"));
            }
            if officer.len() > OFFICER_BYTES_MAX {
                return Err(DecodeError::OverLimit {
                    field: "officer",
                    max: OFFICER_BYTES_MAX,
                });
            }
            if note.as_ref().is_some_and(|n| n.len() > NOTE_BYTES_MAX) {
                return Err(DecodeError::OverLimit {
                    field: "note",
                    max: NOTE_BYTES_MAX,
                });
            }
        }
        Ok(())
    }
}
