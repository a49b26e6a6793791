//! Session frames, by direction, and their length-prefixed framing on a QUIC stream.
//!
//! A frame on the stream is a 4-byte little-endian length `n` (1 ≤ n ≤ [`FRAME_BYTES_MAX`])
//! followed by `n` bytes: the canonical encoding of one [`NodeToRelay`] or [`RelayToNode`].
//! A receiver checks `n` before it allocates anything.

use crate::auth::AuthProof;
use crate::codec::{self, DecodeError, EncodeError};
use crate::envelope::Envelope;
use crate::id::{MessageId, ParticipantId, Seq};
use crate::limits::{
    ACCEPTED_RECIPIENTS_MAX, DETAIL_BYTES_MAX, FRAME_BYTES_MAX, RECEIPT_ITEMS_MAX,
};
use crate::receipt::Receipt;
use crate::roster::Roster;
use crate::sign::{Digest, Signed};

/// ALPN protocol id, offered by nodes and required by relays.
pub const ALPN: &[u8] = b"cica-hotline/1";

/// Bytes of the length prefix.
pub const FRAME_PREFIX_BYTES: usize = 4;

// The largest `Hello` a relay could still take apart (its tag, the proof's length and bytes
// at their limit, key, signature, roster version) is under the limit on a first frame.
const _: () = assert!(
    4 + 8 + <AuthProof as crate::SignedPayload>::BYTES_MAX + 32 + 64 + 8
        <= crate::limits::HELLO_FRAME_BYTES_MAX
);

/// The first frame a node sends on its session stream.
#[derive(Clone, Debug, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct Hello {
    /// Signed proof bound to this TLS session.
    pub auth: Signed<AuthProof>,
    /// The roster version the node holds (0 if none): the relay sends a newer one.
    pub roster_version: u64,
}

/// Frames from a node to the relay.
#[derive(Clone, Debug, PartialEq, Eq, bincode::Encode, bincode::Decode)]
#[non_exhaustive]
pub enum NodeToRelay {
    /// Tag 0: authenticate; must be the first frame.
    Hello(Hello),
    /// Tag 1: a message to route. Answered by `Accepted` or `Rejected`.
    Submit(Signed<Envelope>),
    /// Tag 2: a delivered or acknowledged receipt. Answered by `ReceiptStored` or `Rejected`.
    Receipt(Signed<Receipt>),
    /// Tag 3: liveness check, answered by `Pong` with the same nonce.
    Ping(u64),
    /// Tag 4: the node holds these forwarded receipts (named by the digests of their signed
    /// bytes) durably; the relay may drop them from its forward queue. Unsigned: the session
    /// is authenticated, and this only releases relay storage. At most
    /// [`RECEIPT_ITEMS_MAX`] digests.
    ReceiptsStored(Vec<Digest>),
}

/// Answer to a successful `Hello`.
#[derive(Clone, Debug, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct Welcome {
    /// The relay's clock, in milliseconds since the Unix epoch (for skew warnings).
    pub relay_time_ms: u64,
    /// The highest sequence number the relay has accepted from this participant.
    pub last_seq: Seq,
    /// The current roster, if newer than the one the node said it holds.
    pub roster: Option<Signed<Roster>>,
}

/// The relay holds a message durably and will deliver it.
#[derive(Clone, Debug, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct Accepted {
    /// The message.
    pub id: MessageId,
    /// Everyone it will be delivered to, after routing.
    pub recipients: Vec<ParticipantId>,
    /// When the relay first accepted it, in milliseconds since the Unix epoch.
    pub accepted_at_ms: u64,
}

/// What a `Rejected` frame refers to.
#[derive(Clone, Debug, PartialEq, Eq, bincode::Encode, bincode::Decode)]
#[non_exhaustive]
pub enum Subject {
    /// Tag 0: a submitted message.
    Message(MessageId),
    /// Tag 1: a submitted receipt, by the digest of its signed bytes.
    Receipt(Digest),
    /// Tag 2: a frame that could not be attributed to anything.
    Frame,
}

/// Why a submitted message or receipt was refused. The connection stays open.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, bincode::Encode, bincode::Decode)]
#[non_exhaustive]
pub enum RejectCode {
    /// Tag 0: the signed bytes do not decode or break a field rule.
    Malformed,
    /// Tag 1: the signature does not verify.
    BadSignature,
    /// Tag 2: the author is not the authenticated participant of this connection.
    NotAuthor,
    /// Tag 3: the author is not on the roster.
    UnknownSender,
    /// Tag 4: the author is revoked, or the key is not one of the author's.
    Revoked,
    /// Tag 5: a listed recipient is not on the roster, or revoked.
    UnknownRecipient,
    /// Tag 6: the addressed group does not exist.
    UnknownGroup,
    /// Tag 7: the routing policy forbids this sender to address these recipients.
    PolicyDenied,
    /// Tag 8: the audience resolves to nobody.
    NoRecipients,
    /// Tag 9: the body or another field is over its limit.
    TooLarge,
    /// Tag 10: an accepted message of this sender already has this sequence number, or it
    /// is 4096 or more below the highest accepted from this sender (PROTOCOL.md section 8).
    ReplayedSeq,
    /// Tag 11: created-at is too far in the future.
    FutureTimestamp,
    /// Tag 12: this message id was accepted before with different content.
    IdConflict,
    /// Tag 13: a recipient's queue is full.
    QueueFull,
    /// Tag 14: the sender exceeded its rate limit; retry later.
    RateLimited,
    /// Tag 15: the relay cannot store right now (e.g. disk full); retry later.
    StorageUnavailable,
    /// Tag 16: a receipt item contradicts a message the relay holds: another sender or
    /// digest, or the receipt's recipient was not one of its recipients. (A receipt naming
    /// a message the relay does not hold is stored and forwarded, PROTOCOL.md 7.5.)
    UnknownMessage,
    /// Tag 17: the protocol version is not supported.
    UnsupportedVersion,
}

/// A refusal of one submitted item.
#[derive(Clone, Debug, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct Rejected {
    /// What is refused.
    pub subject: Subject,
    /// Why.
    pub code: RejectCode,
    /// Human-readable detail, at most [`DETAIL_BYTES_MAX`] bytes.
    pub detail: String,
}

/// Why a connection is being closed. The same numbers are the QUIC application close codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, bincode::Encode, bincode::Decode)]
#[non_exhaustive]
pub enum ErrorCode {
    /// Tag / close code 0: normal close.
    Normal,
    /// 1: a frame was malformed or out of order.
    ProtocolViolation,
    /// 2: the authentication proof is invalid (bad signature, wrong channel binding).
    AuthFailed,
    /// 3: the participant is not on the roster.
    UnknownParticipant,
    /// 4: the participant or its key is revoked.
    Revoked,
    /// 5: no authentication proof arrived in time.
    AuthTimeout,
    /// 6: a frame exceeded the size limit.
    FrameTooLarge,
    /// 7: a per-connection limit (streams, queue, rate) was exceeded.
    LimitExceeded,
    /// 8: the relay is shutting down; reconnect later.
    GoingAway,
    /// 9: the relay is at its connection limit.
    Busy,
    /// 10: another connection authenticated as the same participant.
    Superseded,
    /// 11: unsupported protocol version.
    UnsupportedVersion,
    /// 12: internal error in the relay.
    Internal,
    /// 13: the peer did not read its stream in time (slow consumer).
    SlowConsumer,
}

impl ErrorCode {
    /// The QUIC application close code for this error.
    pub fn close_code(self) -> u32 {
        self as u32
    }

    /// The error for a QUIC application close code, if defined.
    pub fn from_close_code(code: u64) -> Option<Self> {
        use ErrorCode::*;
        const ALL: [ErrorCode; 14] = [
            Normal,
            ProtocolViolation,
            AuthFailed,
            UnknownParticipant,
            Revoked,
            AuthTimeout,
            FrameTooLarge,
            LimitExceeded,
            GoingAway,
            Busy,
            Superseded,
            UnsupportedVersion,
            Internal,
            SlowConsumer,
        ];
        ALL.get(usize::try_from(code).ok()?).copied()
    }
}

/// The relay's last word before it closes a connection.
#[derive(Clone, Debug, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct ErrorFrame {
    /// Why.
    pub code: ErrorCode,
    /// Human-readable detail.
    pub detail: String,
}

/// Frames from the relay to a node.
#[derive(Clone, Debug, PartialEq, Eq, bincode::Encode, bincode::Decode)]
#[non_exhaustive]
pub enum RelayToNode {
    /// Tag 0: authentication succeeded.
    Welcome(Welcome),
    /// Tag 1: a submitted message is durable and routed.
    Accepted(Accepted),
    /// Tag 2: a submitted message or receipt is refused.
    Rejected(Rejected),
    /// Tag 3: a message for this node; answer with a delivered receipt.
    Deliver(Signed<Envelope>),
    /// Tag 4: a receipt from a recipient of a message this node sent.
    Receipt(Signed<Receipt>),
    /// Tag 5: a submitted receipt is durable (named by the digest of its signed bytes).
    ReceiptStored(Digest),
    /// Tag 6: a newer roster.
    RosterUpdate(Signed<Roster>),
    /// Tag 7: answer to `Ping`.
    Pong(u64),
    /// Tag 8: the relay is closing the connection.
    Error(ErrorFrame),
}

/// Encodes a frame with its length prefix.
pub fn encode_frame<T: bincode::Encode + FrameCheck>(frame: &T) -> Result<Vec<u8>, EncodeError> {
    frame.check_limits()?;
    let payload = codec::encode(frame, FRAME_BYTES_MAX)?;
    let mut out = Vec::with_capacity(FRAME_PREFIX_BYTES + payload.len());
    // The cast cannot truncate: `codec::encode` refused anything over FRAME_BYTES_MAX.
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

/// Reads a length prefix and checks it against the frame limit, before any allocation.
pub fn frame_len(prefix: [u8; FRAME_PREFIX_BYTES]) -> Result<usize, DecodeError> {
    frame_len_within(prefix, FRAME_BYTES_MAX)
}

/// Reads a length prefix and checks it against `max` (at most [`FRAME_BYTES_MAX`]), before
/// any allocation: for a frame known to be smaller than the largest, such as the `Hello`
/// that must open a session ([`HELLO_FRAME_BYTES_MAX`](crate::limits::HELLO_FRAME_BYTES_MAX)).
pub fn frame_len_within(
    prefix: [u8; FRAME_PREFIX_BYTES],
    max: usize,
) -> Result<usize, DecodeError> {
    let max = max.min(FRAME_BYTES_MAX);
    let len = u32::from_le_bytes(prefix) as usize;
    if len == 0 {
        return Err(DecodeError::Invalid {
            field: "frame length",
            reason: "empty frame",
        });
    }
    if len > max {
        return Err(DecodeError::TooLarge { len, max });
    }
    Ok(len)
}

/// Decodes one frame payload (without its prefix).
pub fn decode_frame<T: bincode::Decode<()> + FrameCheck>(payload: &[u8]) -> Result<T, DecodeError> {
    let frame: T = codec::decode(payload, FRAME_BYTES_MAX)?;
    frame.check_limits()?;
    Ok(frame)
}

/// Per-frame limits that the type system does not already enforce.
pub trait FrameCheck {
    /// Checks free-text and list lengths.
    fn check_limits(&self) -> Result<(), DecodeError>;
}

impl FrameCheck for NodeToRelay {
    fn check_limits(&self) -> Result<(), DecodeError> {
        match self {
            NodeToRelay::ReceiptsStored(d) if d.is_empty() || d.len() > RECEIPT_ITEMS_MAX => {
                Err(DecodeError::Invalid {
                    field: "receipts stored",
                    reason: "must name 1 to 512 receipts",
                })
            }
            _ => Ok(()),
        }
    }
}

impl FrameCheck for RelayToNode {
    fn check_limits(&self) -> Result<(), DecodeError> {
        let detail = match self {
            RelayToNode::Rejected(r) => &r.detail,
            RelayToNode::Error(e) => &e.detail,
            RelayToNode::Accepted(a) if a.recipients.len() > ACCEPTED_RECIPIENTS_MAX => {
                return Err(DecodeError::Invalid {
                    field: "recipients",
                    reason: "too many",
                })
            }
            RelayToNode::Accepted(a) if a.accepted_at_ms > crate::limits::TIME_MS_MAX => {
                return Err(DecodeError::Invalid {
                    field: "accepted_at_ms",
                    reason: "times end at 2^63 - 1 ms",
                })
            }
            _ => return Ok(()),
        };
        if detail.len() > DETAIL_BYTES_MAX {
            return Err(DecodeError::Invalid {
                field: "detail",
                reason: "longer than 512 bytes",
            });
        }
        Ok(())
    }
}

/// Truncates a detail string to [`DETAIL_BYTES_MAX`] on a character boundary.
pub fn detail(s: impl Into<String>) -> String {
    let mut s = s.into();
    if s.len() > DETAIL_BYTES_MAX {
        let mut cut = DETAIL_BYTES_MAX;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

/// How a close reason says when to try again: it ends with `retry in S.T s`.
const RETRY_IN: &str = "retry in ";

/// The end of a close reason that says when to try again, `retry in S.T s` (seconds and a
/// tenth): `retry_in_ms` rounded up to a tenth of a second, so that a peer trying again when
/// told is not early. The relay writes it after a login refused for the participant's budget
/// of sessions (`LimitExceeded`), and the node reads it back with [`retry_in_ms_of`]: one
/// place for both, so the two cannot drift apart.
pub fn retry_in_text(retry_in_ms: u64) -> String {
    let tenths = retry_in_ms.div_ceil(100);
    format!("{RETRY_IN}{}.{} s", tenths / 10, tenths % 10)
}

/// When a close reason says to try again, in milliseconds: the `retry in S.T s` that ends
/// it (as [`retry_in_text`] writes it; whole seconds, or up to three decimals, are read
/// too). `None` when the reason says nothing so, or something else (a sign, an exponent, a
/// number cut off, more text after it), or a time too long to count in milliseconds: the
/// reader then does as it would without a hint. The reason is a peer's text: how long to
/// wait at the most is the reader's to decide.
pub fn retry_in_ms_of(reason: &str) -> Option<u64> {
    let (_, hint) = reason.rsplit_once(RETRY_IN)?;
    let number = hint.strip_suffix(" s")?;
    let (secs, frac) = number.split_once('.').unwrap_or((number, ""));
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    if !digits(secs) || number.contains('.') && (!digits(frac) || frac.len() > 3) {
        return None;
    }
    // At most 3 digits, so this parses; right-padded to milliseconds.
    let frac_ms = format!("{frac:0<3}").parse::<u64>().ok()?;
    secs.parse::<u64>()
        .ok()?
        .checked_mul(1_000)?
        .checked_add(frac_ms)
}

/// A sans-I/O frame splitter: push bytes as they arrive, pull whole frames out.
///
/// It holds what was pushed and not yet taken; a caller that takes every complete frame after
/// each push holds at most one read plus one partial frame. An oversized length prefix (over
/// [`FRAME_BYTES_MAX`], or the lower limit set with [`FrameBuffer::set_frame_bytes_max`]) is
/// refused as soon as the prefix is complete. Taking a frame only advances a cursor; the
/// consumed bytes are dropped at the next push, so splitting a large read costs linear time.
#[derive(Debug)]
pub struct FrameBuffer {
    buf: Vec<u8>,
    start: usize,
    max: usize,
}

impl Default for FrameBuffer {
    fn default() -> Self {
        Self {
            buf: Vec::new(),
            start: 0,
            max: FRAME_BYTES_MAX,
        }
    }
}

impl FrameBuffer {
    /// An empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Refuses, from the next pending frame on, a length prefix over `max` (capped at
    /// [`FRAME_BYTES_MAX`], which is also the default). A relay lowers it to
    /// [`HELLO_FRAME_BYTES_MAX`](crate::limits::HELLO_FRAME_BYTES_MAX) for the first frame
    /// of a session, so that a peer that has not authenticated cannot make it buffer a
    /// whole frame's worth of bytes, and raises it again once the `Hello` is taken.
    pub fn set_frame_bytes_max(&mut self, max: usize) {
        self.max = max.min(FRAME_BYTES_MAX);
    }

    /// The limit on the length prefix of the next pending frame.
    pub fn frame_bytes_max(&self) -> usize {
        self.max
    }

    /// Appends received bytes. Returns an error if the pending frame is oversized; the
    /// stream must then be closed.
    pub fn push(&mut self, bytes: &[u8]) -> Result<(), DecodeError> {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
        if self.buf.len() >= FRAME_PREFIX_BYTES {
            let mut prefix = [0u8; FRAME_PREFIX_BYTES];
            prefix.copy_from_slice(&self.buf[..FRAME_PREFIX_BYTES]);
            frame_len_within(prefix, self.max)?;
        }
        Ok(())
    }

    /// Takes the next complete frame, if there is one.
    pub fn next_frame<T: bincode::Decode<()> + FrameCheck>(
        &mut self,
    ) -> Result<Option<T>, DecodeError> {
        let pending = &self.buf[self.start..];
        if pending.len() < FRAME_PREFIX_BYTES {
            return Ok(None);
        }
        let mut prefix = [0u8; FRAME_PREFIX_BYTES];
        prefix.copy_from_slice(&pending[..FRAME_PREFIX_BYTES]);
        let len = frame_len_within(prefix, self.max)?;
        if pending.len() < FRAME_PREFIX_BYTES + len {
            return Ok(None);
        }
        let frame = decode_frame(&pending[FRAME_PREFIX_BYTES..FRAME_PREFIX_BYTES + len]);
        self.start += FRAME_PREFIX_BYTES + len;
        frame.map(Some)
    }

    /// Bytes buffered and not yet returned as frames.
    pub fn pending_bytes(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Bytes of memory the buffer holds (to give a large one back once it is empty).
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retry_hint_reads_back_as_written_rounded_up_to_a_tenth() {
        for (ms, text) in [
            (0, "retry in 0.0 s"),
            (1, "retry in 0.1 s"),
            (100, "retry in 0.1 s"),
            (4_101, "retry in 4.2 s"),
            (4_200, "retry in 4.2 s"),
            (600_000, "retry in 600.0 s"),
        ] {
            assert_eq!(retry_in_text(ms), text);
            let back = retry_in_ms_of(&format!("KAZ started sessions too fast: {text}"));
            assert_eq!(back, Some(ms.div_ceil(100) * 100), "{text}");
        }
        // Written whatever the time; read back only if it counts in milliseconds.
        assert_eq!(retry_in_text(u64::MAX), "retry in 18446744073709551.7 s");
        assert_eq!(retry_in_ms_of(&retry_in_text(u64::MAX)), None);
    }

    #[test]
    fn a_retry_hint_missing_or_garbled_is_none() {
        for reason in [
            "",
            "retry in",
            "retry in  s",
            "retry in s",
            "retry in 4.2",
            "retry in 4.2 s and more",
            "retry in 4.2s",
            "retry in -4.2 s",
            "retry in +4 s",
            "retry in 4. s",
            "retry in .5 s",
            "retry in 4.2.1 s",
            "retry in 4.2345 s",
            "retry in 4e3 s",
            "retry in 4,2 s",
            "retry in ٤ s",
            "retry in 99999999999999999999 s",
            "retry in 18446744073709552 s",
            "KAZ is revoked",
        ] {
            assert_eq!(retry_in_ms_of(reason), None, "{reason:?}");
        }
    }

    /// A reason cut to `DETAIL_BYTES_MAX` (`detail`) anywhere in its hint never reads as a
    /// shorter wait: a cut that leaves no whole `retry in S.T s` at its end reads as none.
    #[test]
    fn a_retry_hint_cut_at_the_detail_limit_reads_as_none() {
        let hint = retry_in_text(12_500);
        for keep in 0..hint.len() {
            let pad = "x".repeat(DETAIL_BYTES_MAX - keep);
            let cut = detail(format!("{pad}{hint}"));
            assert_eq!(cut.len(), DETAIL_BYTES_MAX);
            assert_eq!(retry_in_ms_of(&cut), None, "{:?}", &cut[pad.len()..]);
        }
        let whole = detail(format!(
            "{}{hint}",
            "x".repeat(DETAIL_BYTES_MAX - hint.len())
        ));
        assert_eq!(retry_in_ms_of(&whole), Some(12_500));
    }

    #[test]
    fn a_retry_hint_is_read_from_the_end_of_the_reason() {
        assert_eq!(retry_in_ms_of("retry in 3 s"), Some(3_000));
        assert_eq!(retry_in_ms_of("retry in 0.25 s"), Some(250));
        assert_eq!(retry_in_ms_of("retry in 1.005 s"), Some(1_005));
        assert_eq!(
            retry_in_ms_of("said retry in 9.9 s before; now retry in 1.5 s"),
            Some(1_500)
        );
        assert_eq!(
            retry_in_ms_of("retry in 18446744073709551 s"),
            Some(18_446_744_073_709_551_000)
        );
    }
}
