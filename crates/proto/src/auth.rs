//! The authentication proof a node sends first on every connection.
//!
//! The node signs the TLS exporter keying material of *this* connection (RFC 5705 / RFC
//! 8446 §7.5, label [`EXPORTER_LABEL`], empty context, 32 bytes). A proof copied from another
//! connection names different keying material, so it is refused.

use crate::codec::DecodeError;
use crate::id::ParticipantId;
use crate::limits::CHANNEL_BINDING_BYTES;
use crate::sign::{SignedPayload, DOMAIN_AUTH};
use crate::PROTOCOL_VERSION;

/// TLS exporter label for the channel binding.
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-cica-hotline-auth";

/// What the node signs to prove who it is on this connection.
#[derive(Clone, Debug, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct AuthProof {
    /// Protocol version.
    pub version: u16,
    /// The participant the node speaks for.
    pub participant: ParticipantId,
    /// TLS exporter keying material of this connection.
    pub channel_binding: [u8; CHANNEL_BINDING_BYTES],
    /// When the node signed, in milliseconds since the Unix epoch (informational: the
    /// channel binding, not the time, is what stops replay).
    pub created_at_ms: u64,
}

impl SignedPayload for AuthProof {
    const DOMAIN: &'static [u8] = DOMAIN_AUTH;
    const BYTES_MAX: usize = 256;

    fn check(&self) -> Result<(), DecodeError> {
        if self.version != PROTOCOL_VERSION {
            return Err(DecodeError::Invalid {
                field: "version",
                reason: "unsupported protocol version",
            });
        }
        Ok(())
    }
}
