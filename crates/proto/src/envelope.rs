//! The message envelope: who says what to whom, how urgently, and by when to answer.
//!
//! Modelled on OASIS CAP 1.2 (status, references) and military precedence.

use serde::{Deserialize, Serialize};

use crate::codec::DecodeError;
use crate::id::{MessageId, ParticipantId, Seq};
use crate::limits::{
    AUDIENCE_PARTICIPANTS_MAX, BODY_BYTES_MAX, CATEGORY_BYTES_MAX, ENVELOPE_BYTES_MAX,
    NAME_BYTES_MAX, REFERENCES_MAX, SUBJECT_BYTES_MAX,
};
use crate::sign::{SignedPayload, DOMAIN_ENVELOPE};

/// The protocol version this crate speaks, carried in every signed value.
pub const PROTOCOL_VERSION: u16 = 1;

/// Who a message is addressed to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
#[serde(rename_all = "snake_case", tag = "type", content = "to")]
#[non_exhaustive]
pub enum Audience {
    /// The listed participants (wire tag 0).
    Participants(Vec<ParticipantId>),
    /// Every participant of a roster group, e.g. the coordinators of a CBM area (tag 1).
    Group(String),
    /// Every member state (tag 2).
    AllMembers,
    /// Every participant: members, observers and the Secretariat (tag 3).
    Everyone,
}

/// What a message is for.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    bincode::Encode,
    bincode::Decode,
)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Kind {
    /// A new alert about an incident (tag 0).
    Alert,
    /// New information on an earlier message, which it references (tag 1).
    Update,
    /// Withdraws an earlier message, which it references (tag 2).
    Cancel,
    /// A request for consultation or clarification, usually with a respond-by time (tag 3).
    ConsultationRequest,
    /// An answer to an earlier message, which it references (tag 4).
    Reply,
    /// A communications check (roll call): recipients acknowledge to prove the line works (tag 5).
    CommunicationsCheck,
    /// General information (tag 6).
    Notice,
}

impl Kind {
    /// Whether this kind must reference the message it answers or changes.
    pub fn needs_reference(self) -> bool {
        matches!(self, Kind::Update | Kind::Cancel | Kind::Reply)
    }
}

/// Handling precedence, highest first.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    bincode::Encode,
    bincode::Decode,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[non_exhaustive]
pub enum Precedence {
    /// Tag 0: handle at once, interrupt everything.
    Flash,
    /// Tag 1: handle as soon as possible.
    Immediate,
    /// Tag 2: handle promptly.
    Priority,
    /// Tag 3: normal handling.
    Routine,
}

impl Precedence {
    /// Whether an unacknowledged inbound message of this precedence keeps paging.
    pub fn pages(self) -> bool {
        matches!(self, Precedence::Flash | Precedence::Immediate)
    }
}

/// Whether a message is real. Exercise and test traffic is always marked as such.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    bincode::Encode,
    bincode::Decode,
)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Status {
    /// Tag 0: real traffic.
    Actual,
    /// Tag 1: part of a drill.
    Exercise,
    /// Tag 2: a technical test.
    Test,
}

/// A message, as signed by its author.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
pub struct Envelope {
    /// Protocol version, [`PROTOCOL_VERSION`].
    pub version: u16,
    /// Random 128-bit id, unique across the network.
    pub id: MessageId,
    /// The author.
    pub sender: ParticipantId,
    /// The author's sequence number: each new message takes the next (see [`Seq`] for the
    /// relay's reorder window).
    pub seq: Seq,
    /// Who it is for.
    pub audience: Audience,
    /// What it is for.
    pub kind: Kind,
    /// How urgent.
    pub precedence: Precedence,
    /// Actual, exercise or test.
    pub status: Status,
    /// When the author signed it, in milliseconds since the Unix epoch (UTC).
    pub created_at_ms: u64,
    /// When recipients must acknowledge by, in milliseconds since the Unix epoch, if at all.
    pub respond_by_ms: Option<u64>,
    /// Messages this one answers, updates or cancels.
    pub references: Vec<MessageId>,
    /// Subject area, e.g. a CBM area.
    pub category: Option<String>,
    /// One-line subject.
    pub subject: String,
    /// The text.
    pub body: String,
}

impl Envelope {
    /// The version, id and author of encoded envelope bytes, read from their start without
    /// decoding the rest (they are the first fields of the canonical encoding). Unverified:
    /// for a client that only needs them to receipt what it has stored, such as the load
    /// generator's recipients, which would otherwise spend an allocation of the body per
    /// delivery on the relay's CPUs.
    pub fn head(bytes: &[u8]) -> Result<(u16, MessageId, ParticipantId), DecodeError> {
        crate::codec::decode_prefix(bytes)
    }
}

fn over(field: &'static str, max: usize) -> DecodeError {
    DecodeError::OverLimit { field, max }
}

fn invalid(field: &'static str, reason: &'static str) -> DecodeError {
    DecodeError::Invalid { field, reason }
}

impl SignedPayload for Envelope {
    const DOMAIN: &'static [u8] = DOMAIN_ENVELOPE;
    const BYTES_MAX: usize = ENVELOPE_BYTES_MAX;

    fn check(&self) -> Result<(), DecodeError> {
        if self.version != PROTOCOL_VERSION {
            return Err(invalid("version", "unsupported protocol version"));
        }
        if self.seq.0 == 0 {
            return Err(invalid("seq", "sequence numbers start at 1"));
        }
        if self.seq.0 > crate::limits::SEQ_MAX {
            return Err(invalid("seq", "sequence numbers end at 2^63 - 1"));
        }
        if self.created_at_ms > crate::limits::TIME_MS_MAX {
            return Err(invalid("created_at_ms", "times end at 2^63 - 1 ms"));
        }
        if self
            .respond_by_ms
            .is_some_and(|by| by > crate::limits::TIME_MS_MAX)
        {
            return Err(invalid("respond_by_ms", "times end at 2^63 - 1 ms"));
        }
        match &self.audience {
            Audience::Participants(ids) => {
                if ids.is_empty() {
                    return Err(invalid("audience", "empty participant list"));
                }
                if ids.len() > AUDIENCE_PARTICIPANTS_MAX {
                    return Err(over("audience", AUDIENCE_PARTICIPANTS_MAX));
                }
                let mut sorted: Vec<_> = ids.iter().collect();
                sorted.sort();
                if sorted.windows(2).any(|w| w[0] == w[1]) {
                    return Err(invalid("audience", "participant listed twice"));
                }
            }
            Audience::Group(name) => {
                if name.is_empty() {
                    return Err(invalid("audience", "empty group name"));
                }
                if name.len() > NAME_BYTES_MAX {
                    return Err(over("audience", NAME_BYTES_MAX));
                }
            }
            Audience::AllMembers | Audience::Everyone => {}
        }
        if let Some(by) = self.respond_by_ms {
            if by <= self.created_at_ms {
                return Err(invalid("respond_by_ms", "must be after created_at_ms"));
            }
        }
        if self.references.len() > REFERENCES_MAX {
            return Err(over("references", REFERENCES_MAX));
        }
        if self.kind.needs_reference() && self.references.is_empty() {
            return Err(invalid(
                "references",
                "update, cancel and reply must reference a message",
            ));
        }
        if self.references.contains(&self.id) {
            return Err(invalid("references", "a message cannot reference itself"));
        }
        if let Some(c) = &self.category {
            if c.is_empty() {
                return Err(invalid("category", "empty"));
            }
            if c.len() > CATEGORY_BYTES_MAX {
                return Err(over("category", CATEGORY_BYTES_MAX));
            }
        }
        if self.subject.is_empty() {
            return Err(invalid("subject", "empty"));
        }
        if self.subject.len() > SUBJECT_BYTES_MAX {
            return Err(over("subject", SUBJECT_BYTES_MAX));
        }
        if self.body.len() > BODY_BYTES_MAX {
            return Err(over("body", BODY_BYTES_MAX));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Signed, SigningKey};

    #[test]
    fn the_head_of_signed_bytes_is_their_version_id_and_author() {
        let env = Envelope {
            version: PROTOCOL_VERSION,
            id: MessageId([9; 16]),
            sender: ParticipantId::new("OSCE").expect("valid"),
            seq: Seq(3),
            audience: Audience::Everyone,
            kind: Kind::Alert,
            precedence: Precedence::Flash,
            status: Status::Exercise,
            created_at_ms: 1,
            respond_by_ms: None,
            references: vec![],
            category: None,
            subject: "head".into(),
            body: "b".repeat(1024),
        };
        let signed = Signed::sign(&env, &SigningKey::from_bytes(&[4; 32])).expect("signs");
        let (version, id, sender) = Envelope::head(signed.bytes()).expect("head");
        assert_eq!((version, id, sender), (env.version, env.id, env.sender));
        assert_eq!(
            Envelope::head(&signed.bytes()[..10]),
            Err(DecodeError::Truncated)
        );
    }
}
