//! The canonical byte encoding, and the only module that names bincode.
//!
//! Configuration (frozen by the test vectors): bincode 2, little-endian, fixed-width
//! integers, lengths as `u64`, enum tags as `u32`, `Option` as a one-byte tag, byte arrays
//! without a length. Decoding is capped at [`FRAME_BYTES_MAX`] claimed bytes, so a length
//! field can never make us allocate more than a frame could hold, and a value must consume
//! its input exactly (no trailing bytes), which makes every accepted encoding canonical.

use bincode::config::{Configuration, Fixint, Limit, LittleEndian};
use bincode::de::Decoder;

use crate::limits::FRAME_BYTES_MAX;

type Config = Configuration<LittleEndian, Fixint, Limit<FRAME_BYTES_MAX>>;

const CONFIG: Config = bincode::config::standard()
    .with_little_endian()
    .with_fixed_int_encoding()
    .with_limit::<FRAME_BYTES_MAX>();

/// Why bytes could not be turned into a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input (or a frame's length prefix) is larger than the limit for its type.
    #[error("{len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Bytes offered.
        len: usize,
        /// Bytes allowed.
        max: usize,
    },
    /// The input ended before the value did.
    #[error("input truncated")]
    Truncated,
    /// The value ended before the input did: only the exact encoding is accepted.
    #[error("{extra} trailing bytes after the value")]
    TrailingBytes {
        /// Bytes left over.
        extra: usize,
    },
    /// An enum tag that this protocol version does not define.
    #[error("unknown tag {found} for {type_name}")]
    UnknownTag {
        /// The Rust type being decoded.
        type_name: &'static str,
        /// The tag found.
        found: u32,
    },
    /// The bytes are not a valid encoding (bad UTF-8, invalid id, bad bool…).
    #[error("malformed: {0}")]
    Malformed(String),
    /// A field is longer, or a list has more entries, than the protocol allows.
    #[error("{field} exceeds its limit of {max}")]
    OverLimit {
        /// The offending field.
        field: &'static str,
        /// The limit (bytes for text, entries for lists).
        max: usize,
    },
    /// The encoding is valid but a field breaks a protocol rule.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The offending field.
        field: &'static str,
        /// What rule it breaks.
        reason: &'static str,
    },
}

/// Why a value could not be turned into bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The value breaks a protocol rule or limit, so a peer would refuse it.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The offending field.
        field: &'static str,
        /// What rule it breaks.
        reason: &'static str,
    },
    /// The encoding is larger than the limit for its type.
    #[error("encoding of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Bytes produced.
        len: usize,
        /// Bytes allowed.
        max: usize,
    },
    /// The encoder itself failed (should not happen for our types).
    #[error("encoder: {0}")]
    Encoder(String),
}

impl From<DecodeError> for EncodeError {
    fn from(e: DecodeError) -> Self {
        match e {
            DecodeError::Invalid { field, reason } => EncodeError::Invalid { field, reason },
            DecodeError::TooLarge { len, max } => EncodeError::TooLarge { len, max },
            DecodeError::OverLimit { field, .. } => EncodeError::Invalid {
                field,
                reason: "exceeds its protocol limit",
            },
            other => EncodeError::Encoder(other.to_string()),
        }
    }
}

/// Encodes a value canonically, refusing an encoding over `max` bytes.
pub fn encode<T: bincode::Encode>(value: &T, max: usize) -> Result<Vec<u8>, EncodeError> {
    let bytes =
        bincode::encode_to_vec(value, CONFIG).map_err(|e| EncodeError::Encoder(e.to_string()))?;
    if bytes.len() > max {
        return Err(EncodeError::TooLarge {
            len: bytes.len(),
            max,
        });
    }
    Ok(bytes)
}

/// Decodes exactly one value from `bytes`, which must be at most `max` bytes long and must
/// be consumed completely.
pub fn decode<T: bincode::Decode<()>>(bytes: &[u8], max: usize) -> Result<T, DecodeError> {
    if bytes.len() > max {
        return Err(DecodeError::TooLarge {
            len: bytes.len(),
            max,
        });
    }
    let (value, used) = bincode::decode_from_slice(bytes, CONFIG).map_err(map_decode_error)?;
    if used != bytes.len() {
        return Err(DecodeError::TrailingBytes {
            extra: bytes.len() - used,
        });
    }
    Ok(value)
}

/// Decodes one value from the start of `bytes` and ignores what follows: for reading the
/// leading fields of a longer encoding (see [`crate::Envelope::head`]).
pub fn decode_prefix<T: bincode::Decode<()>>(bytes: &[u8]) -> Result<T, DecodeError> {
    bincode::decode_from_slice(bytes, CONFIG)
        .map(|(value, _)| value)
        .map_err(map_decode_error)
}

fn map_decode_error(e: bincode::error::DecodeError) -> DecodeError {
    use bincode::error::DecodeError as B;
    match e {
        B::UnexpectedEnd { .. } => DecodeError::Truncated,
        B::LimitExceeded => DecodeError::TooLarge {
            len: usize::MAX,
            max: FRAME_BYTES_MAX,
        },
        B::UnexpectedVariant {
            type_name, found, ..
        } => DecodeError::UnknownTag { type_name, found },
        other => DecodeError::Malformed(other.to_string()),
    }
}

/// Reads a string's length and checks it against `max` (claiming that many bytes) before
/// anything is read or allocated; the caller then reads the bytes (a participant id, into a
/// buffer on the stack).
pub(crate) fn decode_bounded_len<D: Decoder>(
    decoder: &mut D,
    max: usize,
) -> Result<usize, bincode::error::DecodeError> {
    let len = <u64 as bincode::Decode<D::Context>>::decode(decoder)?;
    let len = usize::try_from(len).map_err(|_| bincode::error::DecodeError::LimitExceeded)?;
    if len > max {
        return Err(bincode::error::DecodeError::OtherString(format!(
            "string of {len} bytes exceeds {max}"
        )));
    }
    decoder.claim_bytes_read(len)?;
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_fixed_little_endian() {
        let bytes = encode(&(1u32, Some(2u16), "ab".to_string()), 64).expect("small value");
        assert_eq!(
            bytes,
            [1, 0, 0, 0, 1, 2, 0, 2, 0, 0, 0, 0, 0, 0, 0, b'a', b'b'],
            "u32 LE, Option tag + u16 LE, u64 length + UTF-8"
        );
    }

    #[test]
    fn trailing_bytes_and_truncation_are_refused() {
        let mut bytes = encode(&7u64, 64).expect("small value");
        assert_eq!(decode::<u64>(&bytes[..7], 64), Err(DecodeError::Truncated));
        bytes.push(0);
        assert_eq!(
            decode::<u64>(&bytes, 64),
            Err(DecodeError::TrailingBytes { extra: 1 })
        );
    }

    #[test]
    fn huge_length_fields_do_not_allocate() {
        // A Vec<u64> claiming 2^60 elements in 8 bytes of input.
        let bytes = (1u64 << 60).to_le_bytes();
        let r = decode::<Vec<u64>>(&bytes, 64);
        assert!(matches!(r, Err(DecodeError::TooLarge { .. })), "{r:?}");
        let r = decode::<String>(&u64::MAX.to_le_bytes(), 64);
        assert!(r.is_err());
    }
}
