//! `hotline-proto`: the CICA Hotline protocol — identifiers, the roster, envelopes, receipts,
//! session frames, the canonical codec and signatures.
//!
//! No I/O, no async runtime, no clock: time comes in as an argument. Everything a relay and
//! a node must agree on lives here once. `docs/PROTOCOL.md` is the byte-level specification
//! and `tests/vectors.json` the test vectors that freeze it.

#![warn(missing_docs)]

pub mod auth;
pub mod codec;
pub mod envelope;
pub mod frame;
pub mod id;
pub mod limits;
pub mod receipt;
pub mod roster;
pub mod routing;
pub mod sign;

pub use auth::AuthProof;
pub use codec::{DecodeError, EncodeError};
pub use envelope::{Audience, Envelope, Kind, Precedence, Status, PROTOCOL_VERSION};
pub use frame::{NodeToRelay, RejectCode, RelayToNode};
pub use id::{IdError, MessageId, ParticipantId, Seq};
pub use receipt::{Receipt, ReceiptItem, ReceiptKind};
pub use roster::{verify_roster, Group, Participant, Role, Roster};
pub use sign::{Digest, PublicKey, Signature, Signed, SignedPayload, Verified, VerifyError};

/// Re-exported so callers name one ed25519 implementation.
pub use ed25519_dalek::SigningKey;

/// Checks a created-at against the receiver's clock: refuses one too far in the future.
pub fn check_created_at(created_at_ms: u64, now_ms: u64) -> Result<(), RejectCode> {
    if created_at_ms > now_ms.saturating_add(limits::CLOCK_SKEW_FUTURE_MAX_MS) {
        return Err(RejectCode::FutureTimestamp);
    }
    Ok(())
}
