//! Every protocol limit, in one place. Units are last in each name.
//!
//! Decoders check these before allocating; encoders refuse values that break them, so a
//! conforming peer never sends what the other side must reject.

/// Largest frame payload on a stream (the 4-byte length prefix excluded): one envelope with
/// the largest body, or the largest roster, fits with room to spare.
pub const FRAME_BYTES_MAX: usize = 256 * 1024;

/// Largest first frame of a session, the `Hello` (prefix excluded): its tag (4 bytes), the
/// carried proof's length (8) and bytes (at most 256, `AuthProof::BYTES_MAX`; a valid one is
/// at most 58), key (32) and signature (64), and the roster version (8) make at most 372
/// bytes. A relay refuses a longer first frame as soon as its length prefix arrives, so that
/// a peer that has not authenticated cannot make it hold a whole frame's worth of bytes.
pub const HELLO_FRAME_BYTES_MAX: usize = 512;

/// Largest message body: hotline traffic is text, attachments are out of scope.
pub const BODY_BYTES_MAX: usize = 64 * 1024;

/// Largest subject line, in UTF-8 bytes.
pub const SUBJECT_BYTES_MAX: usize = 256;

/// Largest category (e.g. a CBM area name), in UTF-8 bytes.
pub const CATEGORY_BYTES_MAX: usize = 64;

/// Most message ids one envelope may reference (thread, update, cancel).
pub const REFERENCES_MAX: usize = 16;

/// Most participant ids one audience list may name: more than any roster holds.
pub const AUDIENCE_PARTICIPANTS_MAX: usize = ROSTER_PARTICIPANTS_MAX;

/// Largest signed envelope encoding: the body plus generous room for every other field.
pub const ENVELOPE_BYTES_MAX: usize = BODY_BYTES_MAX + 16 * 1024;

/// Most messages one cumulative receipt may cover.
pub const RECEIPT_ITEMS_MAX: usize = 512;

/// Largest signed receipt encoding.
pub const RECEIPT_BYTES_MAX: usize = 64 * 1024;

/// Largest officer name on an acknowledgement.
pub const OFFICER_BYTES_MAX: usize = 128;

/// Largest note on an acknowledgement.
pub const NOTE_BYTES_MAX: usize = 2 * 1024;

/// Participant ids are 2 to 8 characters (ISO 3166 alpha-3, `UN`, `OSCE`, `TURKPA`, `SEC`).
pub const PARTICIPANT_ID_BYTES_MIN: usize = 2;
/// See [`PARTICIPANT_ID_BYTES_MIN`].
pub const PARTICIPANT_ID_BYTES_MAX: usize = 8;

/// Most participants in a roster: CICA has 38, this leaves room to grow.
pub const ROSTER_PARTICIPANTS_MAX: usize = 256;

/// Most keys one participant may hold at once (current and next, during a rotation).
pub const KEYS_PER_PARTICIPANT_MAX: usize = 4;

/// Most groups in a roster.
pub const ROSTER_GROUPS_MAX: usize = 64;

/// Largest participant or group display name, or roster network name.
pub const NAME_BYTES_MAX: usize = 128;

/// Largest signed roster encoding.
pub const ROSTER_BYTES_MAX: usize = 192 * 1024;

/// Largest free-text detail in a rejection or error frame.
pub const DETAIL_BYTES_MAX: usize = 512;

/// The highest sequence number an envelope may carry: stores keep it as a signed 64-bit
/// integer (SQLite's), so one above it could not be stored. Counting from 1 at a million
/// messages a second, a sender reaches it after 290,000 years.
pub const SEQ_MAX: u64 = i64::MAX as u64;

/// The latest time, in milliseconds since the Unix epoch, that an envelope (`created_at_ms`,
/// `respond_by_ms`), a receipt (`created_at_ms`) or an `Accepted` answer (`accepted_at_ms`)
/// may carry: stores keep times as signed 64-bit integers, as they keep sequence numbers. It
/// falls some 292 million years from now; a value past it is bad input, refused at decode
/// with the field named, instead of failing the transaction that would store it.
pub const TIME_MS_MAX: u64 = i64::MAX as u64;

/// How far in the future a created-at may be before it is refused as a replay or a broken
/// clock. Old created-at values are allowed: an outbox may hold a message for days.
pub const CLOCK_SKEW_FUTURE_MAX_MS: u64 = 5 * 60 * 1000;

/// Most recipient ids an `accepted` frame lists.
pub const ACCEPTED_RECIPIENTS_MAX: usize = ROSTER_PARTICIPANTS_MAX;

/// Bytes of TLS exporter keying material the authentication proof signs.
pub const CHANNEL_BINDING_BYTES: usize = 32;

/// Room a frame needs beyond the signed bytes it carries (tags, key, signature, lengths).
const FRAME_OVERHEAD_BYTES: usize = 4 * 1024;

const _: () = assert!(ENVELOPE_BYTES_MAX + FRAME_OVERHEAD_BYTES <= FRAME_BYTES_MAX);
const _: () = assert!(ROSTER_BYTES_MAX + FRAME_OVERHEAD_BYTES <= FRAME_BYTES_MAX);
const _: () = assert!(RECEIPT_BYTES_MAX + FRAME_OVERHEAD_BYTES <= FRAME_BYTES_MAX);
// A receipt item is an id, a sender id and a digest: well under 128 bytes.
const _: () = assert!(RECEIPT_ITEMS_MAX * 128 <= RECEIPT_BYTES_MAX);
const _: () = assert!(HELLO_FRAME_BYTES_MAX <= FRAME_BYTES_MAX);
// The frame length travels as a u32.
const _: () = assert!(FRAME_BYTES_MAX < u32::MAX as usize);
