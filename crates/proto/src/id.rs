//! Identifiers: participant codes, message ids, per-sender sequence numbers.

use std::fmt;
use std::str::FromStr;

use bincode::de::read::Reader;
use bincode::de::Decoder;
use bincode::enc::Encoder;
use serde::{Deserialize, Serialize};

use crate::limits::{PARTICIPANT_ID_BYTES_MAX, PARTICIPANT_ID_BYTES_MIN};

/// Why a participant id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdError {
    /// The id is shorter or longer than the allowed 2 to 8 characters.
    #[error("participant id {0:?} must be 2 to 8 characters")]
    Length(String),
    /// The id holds something other than upper-case ASCII letters and digits, or starts
    /// with a digit.
    #[error("participant id {0:?} must be upper-case letters and digits, starting with a letter")]
    Charset(String),
    /// A message id was not 32 hexadecimal digits.
    #[error("message id {0:?} must be 32 hexadecimal digits")]
    MessageId(String),
}

/// A participant's short code: `KAZ`, `UN`, `OSCE`, `SEC`.
///
/// Always 2 to 8 characters of `A-Z0-9`, starting with a letter; a value of this type has
/// been checked, whether it came from a string, a file or the wire.
///
/// Held inline (the code's bytes, padded with zeros), not as a `String`: the relay's store
/// writer copies a 37-way message's recipients several times per message (its queue
/// bookkeeping, its mailbox posts, the receipt check) and looks one up per receipt item, and as
/// heap strings those copies were allocations and the look-ups pointer chases (malloc and
/// the recipient search were 12 % of the relay's samples at fanout37 maximum,
/// docs/BENCHMARKS-ROUNDS.md, seventh round). Zero never occurs in a code and sorts below every
/// character that does, so comparing the padded bytes orders ids as their strings.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ParticipantId([u8; PARTICIPANT_ID_BYTES_MAX]);

impl ParticipantId {
    /// Checks and wraps a participant code.
    pub fn new(code: &str) -> Result<Self, IdError> {
        if !(PARTICIPANT_ID_BYTES_MIN..=PARTICIPANT_ID_BYTES_MAX).contains(&code.len()) {
            return Err(IdError::Length(code.chars().take(16).collect()));
        }
        let mut chars = code.chars();
        let first_ok = chars.next().is_some_and(|c| c.is_ascii_uppercase());
        if !first_ok || !chars.all(|c| c.is_ascii_uppercase() || c.is_ascii_digit()) {
            return Err(IdError::Charset(code.to_owned()));
        }
        let mut bytes = [0u8; PARTICIPANT_ID_BYTES_MAX];
        bytes[..code.len()].copy_from_slice(code.as_bytes());
        Ok(Self(bytes))
    }

    /// The code as a string slice.
    pub fn as_str(&self) -> &str {
        let len = self.0.iter().position(|b| *b == 0).unwrap_or(self.0.len());
        // Only ASCII was ever stored (`new` is the only constructor), so this cannot fail.
        std::str::from_utf8(&self.0[..len]).unwrap_or_default()
    }
}

impl FromStr for ParticipantId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<String> for ParticipantId {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(&s)
    }
}

impl From<ParticipantId> for String {
    fn from(id: ParticipantId) -> String {
        id.as_str().to_owned()
    }
}

impl fmt::Display for ParticipantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for ParticipantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ParticipantId({})", self.as_str())
    }
}

impl bincode::Encode for ParticipantId {
    fn encode<E: Encoder>(&self, encoder: &mut E) -> Result<(), bincode::error::EncodeError> {
        self.as_str().encode(encoder)
    }
}

impl<Context> bincode::Decode<Context> for ParticipantId {
    fn decode<D: Decoder<Context = Context>>(
        decoder: &mut D,
    ) -> Result<Self, bincode::error::DecodeError> {
        // Refuse an over-long id before reading it; the bytes go to the stack, as the id
        // is held inline.
        let len = crate::codec::decode_bounded_len(decoder, PARTICIPANT_ID_BYTES_MAX)?;
        let mut buf = [0u8; PARTICIPANT_ID_BYTES_MAX];
        let code = buf
            .get_mut(..len)
            .ok_or(bincode::error::DecodeError::LimitExceeded)?;
        decoder.reader().read(code)?;
        let code = std::str::from_utf8(code)
            .map_err(|inner| bincode::error::DecodeError::Utf8 { inner })?;
        ParticipantId::new(code)
            .map_err(|_| bincode::error::DecodeError::OtherString("invalid participant id".into()))
    }
}
bincode::impl_borrow_decode!(ParticipantId);

/// A message's 128-bit id, unique across the network, shown as 32 lower-case hexadecimal
/// digits. Receivers treat it as 16 opaque bytes.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, bincode::Encode, bincode::Decode)]
pub struct MessageId(pub [u8; 16]);

impl MessageId {
    /// A fresh id for a message created at `now_ms` (milliseconds since the Unix epoch): the
    /// time's low 48 bits, big-endian, then 80 bits from the operating system's random source
    /// (UUIDv7's layout, without its version bits). Ids made one after another sort by time,
    /// so the stores that index them by id (the relay's and the sender's) add each new one at
    /// the end of the index instead of on a random page of it: with fully random ids every
    /// message dirtied one more page per commit, and the relay spent about a fifth more CPU
    /// per message at maximum rate (docs/BENCHMARKS-ROUNDS.md, fifth round). 80 random bits
    /// keep ids unguessable and collisions out of reach within a millisecond.
    pub fn generate(now_ms: u64) -> Self {
        let mut b = [0u8; 16];
        b[..6].copy_from_slice(&now_ms.to_be_bytes()[2..]);
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut b[6..]);
        Self(b)
    }

    /// A fresh id made of 128 bits from the operating system's random source (tests).
    pub fn random() -> Self {
        let mut b = [0u8; 16];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut b);
        Self(b)
    }

    /// The id's bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({self})")
    }
}

impl FromStr for MessageId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut b = [0u8; 16];
        hex::decode_to_slice(s, &mut b).map_err(|_| IdError::MessageId(s.to_owned()))?;
        Ok(Self(b))
    }
}

impl Serialize for MessageId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MessageId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A per-sender sequence number: each participant numbers its messages 1, 2, 3…. The relay
/// refuses a number it has already accepted from that sender, or one 4096 or more below the
/// highest it has accepted (the reorder window, PROTOCOL.md section 8), so a message retried
/// after later ones is still accepted.
#[derive(
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Debug,
    Default,
    Serialize,
    Deserialize,
    bincode::Encode,
    bincode::Decode,
)]
#[serde(transparent)]
pub struct Seq(pub u64);

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn participant_ids() {
        for ok in ["KAZ", "UN", "OSCE", "TURKPA", "SEC", "A1"] {
            assert!(ParticipantId::new(ok).is_ok(), "{ok}");
        }
        for bad in ["", "K", "kaz", "1AB", "TOOLONGID", "KA Z", "КАЗ", "K-Z"] {
            assert!(ParticipantId::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn participant_ids_keep_their_text_order_and_wire_form() {
        let codes = ["A1", "AB", "ABC", "ABCDEFGH", "ABD", "B", "KAZ", "UN", "Z9"];
        let mut ids: Vec<ParticipantId> = codes
            .iter()
            .filter_map(|c| ParticipantId::new(c).ok())
            .collect();
        ids.reverse();
        ids.sort();
        let texts: Vec<&str> = ids.iter().map(|i| i.as_str()).collect();
        let mut expected: Vec<&str> = codes.iter().copied().filter(|c| c.len() >= 2).collect();
        expected.sort();
        assert_eq!(texts, expected, "ids sort as their codes do");
        for code in ["UN", "ABCDEFGH", "SEC"] {
            let id = ParticipantId::new(code).expect("valid");
            assert_eq!(id.to_string(), code);
            assert_eq!(String::from(id.clone()), code);
            let cfg = bincode::config::standard();
            let as_id = bincode::encode_to_vec(&id, cfg).expect("encodes");
            let as_text = bincode::encode_to_vec(code.to_owned(), cfg).expect("encodes");
            assert_eq!(as_id, as_text, "on the wire an id is its code as a string");
            let (back, _): (ParticipantId, usize) =
                bincode::decode_from_slice(&as_id, cfg).expect("decodes");
            assert_eq!(back, id);
        }
    }

    #[test]
    fn message_id_round_trips_through_hex() {
        let id = MessageId::random();
        let back: MessageId = id.to_string().parse().expect("own display parses");
        assert_eq!(id, back);
        assert!("xyz".parse::<MessageId>().is_err());
    }

    #[test]
    fn generated_ids_sort_by_time_and_differ_within_a_millisecond() {
        let t = 1_764_460_800_123u64;
        let a = MessageId::generate(t);
        let b = MessageId::generate(t);
        let later = MessageId::generate(t + 1);
        assert_eq!(&a.0[..6], &t.to_be_bytes()[2..], "time first, big-endian");
        assert_ne!(a, b, "the random part tells apart ids of one millisecond");
        assert!(a < later && b < later, "a later millisecond sorts after");
    }
}
