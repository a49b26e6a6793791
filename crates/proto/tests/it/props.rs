//! Property tests of the decoders, the framing and signing.
//!
//! Decoders never panic and answer every input with a value or a typed [`DecodeError`];
//! truncated, over-long, oversized, unknown-tagged and badly-identified inputs are refused
//! with the right error; valid values round-trip through encoding, framing and signing, and
//! no single flipped bit survives verification.

use std::sync::OnceLock;

use ed25519_dalek::VerifyingKey;
use hotline_proto::codec::{self, DecodeError};
use hotline_proto::envelope::{Audience, Envelope, Kind, Precedence, Status, PROTOCOL_VERSION};
use hotline_proto::frame::{
    decode_frame, encode_frame, frame_len, ErrorCode, FrameBuffer, NodeToRelay, RejectCode,
    RelayToNode, Subject, FRAME_PREFIX_BYTES,
};
use hotline_proto::id::{MessageId, ParticipantId, Seq};
use hotline_proto::limits::{
    ENVELOPE_BYTES_MAX, FRAME_BYTES_MAX, REFERENCES_MAX, SEQ_MAX, TIME_MS_MAX,
};
use hotline_proto::receipt::{Receipt, ReceiptItem, ReceiptKind};
use hotline_proto::roster::Role;
use hotline_proto::sign::{Digest, PublicKey, Signature, Signed, SignedPayload};
use hotline_proto::SigningKey;
use proptest::collection::{btree_map, btree_set, vec};
use proptest::prelude::*;
use proptest::sample::Index;

use crate::{fixtures, harness};

// --- Strategies -------------------------------------------------------------------------

fn participant_id() -> impl Strategy<Value = ParticipantId> {
    "[A-Z][A-Z0-9]{1,7}".prop_map(|s| ParticipantId::new(&s).expect("the pattern makes valid ids"))
}

/// Strings that are not participant ids: wrong case, leading digit, too short or too long,
/// punctuation, anything at all.
fn bad_participant_id() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z][a-z0-9]{1,7}",
        "[0-9][A-Z0-9]{1,7}",
        "[A-Z]?",
        "[A-Z][A-Z0-9]{8,20}",
        "[A-Z][A-Z0-9 .-]{1,7}",
        "\\PC{0,10}",
    ]
    .prop_filter("must be invalid", |s| ParticipantId::new(s).is_err())
}

fn message_id() -> impl Strategy<Value = MessageId> {
    any::<[u8; 16]>().prop_map(MessageId)
}

fn audience() -> impl Strategy<Value = Audience> {
    prop_oneof![
        btree_set(participant_id(), 1..8)
            .prop_map(|s| s.into_iter().collect::<Vec<_>>())
            .prop_shuffle()
            .prop_map(Audience::Participants),
        "\\PC{1,32}".prop_map(Audience::Group),
        Just(Audience::AllMembers),
        Just(Audience::Everyone),
    ]
}

fn kind() -> impl Strategy<Value = Kind> {
    prop::sample::select(KINDS.to_vec())
}

fn precedence() -> impl Strategy<Value = Precedence> {
    prop::sample::select(PRECEDENCES.to_vec())
}

fn status() -> impl Strategy<Value = Status> {
    prop::sample::select(STATUSES.to_vec())
}

prop_compose! {
    /// Any envelope that obeys the field rules.
    fn envelope()(
        id in message_id(),
        sender in participant_id(),
        seq in 1..=SEQ_MAX,
        audience in audience(),
        (kind, precedence, status) in (kind(), precedence(), status()),
        created_at_ms in 0..=TIME_MS_MAX / 2,
        respond_after_ms in proptest::option::of(1..=TIME_MS_MAX / 2),
        references in vec(message_id(), 0..=REFERENCES_MAX - 1),
        (category, subject, body) in (
            proptest::option::of("\\PC{1,16}"),
            "\\PC{1,64}",
            "\\PC{0,300}",
        ),
    ) -> Envelope {
        let mut references: Vec<_> = references.into_iter().filter(|r| *r != id).collect();
        if kind.needs_reference() && references.is_empty() {
            let mut other = id;
            other.0[0] ^= 1;
            references.push(other);
        }
        Envelope {
            version: PROTOCOL_VERSION,
            id,
            sender,
            seq: Seq(seq),
            audience,
            kind,
            precedence,
            status,
            created_at_ms,
            respond_by_ms: respond_after_ms.map(|d| created_at_ms + d),
            references,
            category,
            subject,
            body,
        }
    }
}

prop_compose! {
    /// Any receipt that obeys the field rules.
    fn receipt()(
        recipient in participant_id(),
        kind in prop_oneof![
            Just(ReceiptKind::Delivered),
            ("[A-Za-z]\\PC{0,30}", proptest::option::of("\\PC{0,200}"))
                .prop_map(|(officer, note)| ReceiptKind::Acknowledged { officer, note }),
        ],
        created_at_ms in 0..=TIME_MS_MAX,
        items in btree_map(message_id(), (participant_id(), any::<[u8; 32]>()), 1..20),
    ) -> Receipt {
        Receipt {
            version: PROTOCOL_VERSION,
            recipient,
            kind,
            created_at_ms,
            items: items
                .into_iter()
                .map(|(id, (sender, digest))| ReceiptItem { id, sender, digest: Digest(digest) })
                .collect(),
        }
    }
}

// --- Fixed samples ----------------------------------------------------------------------

const KINDS: [Kind; 7] = [
    Kind::Alert,
    Kind::Update,
    Kind::Cancel,
    Kind::ConsultationRequest,
    Kind::Reply,
    Kind::CommunicationsCheck,
    Kind::Notice,
];
const PRECEDENCES: [Precedence; 4] = [
    Precedence::Flash,
    Precedence::Immediate,
    Precedence::Priority,
    Precedence::Routine,
];
const STATUSES: [Status; 3] = [Status::Actual, Status::Exercise, Status::Test];

/// Variants of `NodeToRelay`: tags `0..NODE_TO_RELAY_TAGS` are defined. A new variant fails
/// `wire_tags_are_the_documented_ones` until it has a sample in the fixtures and this count
/// is raised.
const NODE_TO_RELAY_TAGS: u32 = 5;
/// Variants of `RelayToNode`, as [`NODE_TO_RELAY_TAGS`].
const RELAY_TO_NODE_TAGS: u32 = 9;

/// Encoded frames with their prefixes: node to relay, and relay to node.
type EncodedFrames = (Vec<Vec<u8>>, Vec<Vec<u8>>);

/// Every sample frame, encoded with its prefix.
fn encoded_frames() -> &'static EncodedFrames {
    static FRAMES: OnceLock<EncodedFrames> = OnceLock::new();
    FRAMES.get_or_init(|| {
        let enc = |f: Result<Vec<u8>, _>| f.expect("sample frames encode");
        (
            fixtures::node_frames()
                .iter()
                .map(|f| enc(encode_frame(f)))
                .collect(),
            fixtures::relay_frames()
                .iter()
                .map(|f| enc(encode_frame(f)))
                .collect(),
        )
    })
}

/// Every sample input of the `verify_decoded` harness.
fn encoded_carriers() -> &'static Vec<Vec<u8>> {
    static CARRIERS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    CARRIERS.get_or_init(|| {
        let with = |select: u8, bytes: Result<Vec<u8>, _>| {
            [vec![select], bytes.expect("sample carriers encode")].concat()
        };
        vec![
            with(
                harness::SELECT_ENVELOPE,
                codec::encode(&fixtures::signed_alert(), FRAME_BYTES_MAX),
            ),
            with(
                harness::SELECT_RECEIPT,
                codec::encode(&fixtures::signed_receipt(), FRAME_BYTES_MAX),
            ),
            with(
                harness::SELECT_ROSTER,
                codec::encode(&fixtures::signed_roster(), FRAME_BYTES_MAX),
            ),
            with(
                harness::SELECT_AUTH,
                codec::encode(&fixtures::signed_auth(), FRAME_BYTES_MAX),
            ),
        ]
    })
}

/// Every sample input of the `session_frames` harness.
fn session_streams() -> &'static Vec<Vec<u8>> {
    static STREAMS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    STREAMS.get_or_init(|| {
        harness::session_seeds()
            .into_iter()
            .map(|(_, bytes)| bytes)
            .collect()
    })
}

/// An edit of a byte string: replace, insert or delete one byte.
#[derive(Clone, Debug)]
enum Edit {
    Set(Index, u8),
    Insert(Index, u8),
    Delete(Index),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        3 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Edit::Set(i, b)),
        1 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Edit::Insert(i, b)),
        1 => any::<Index>().prop_map(Edit::Delete),
    ]
}

fn apply(bytes: &mut Vec<u8>, edits: &[Edit]) {
    for e in edits {
        match e {
            Edit::Set(i, b) if !bytes.is_empty() => {
                let at = i.index(bytes.len());
                bytes[at] = *b;
            }
            Edit::Insert(i, b) => {
                let at = i.index(bytes.len() + 1);
                bytes.insert(at, *b);
            }
            Edit::Delete(i) if !bytes.is_empty() => {
                let at = i.index(bytes.len());
                bytes.remove(at);
            }
            _ => {}
        }
    }
}

fn flip(bytes: &mut [u8], bit: Index) {
    let at = bit.index(bytes.len() * 8);
    bytes[at / 8] ^= 1 << (at % 8);
}

/// Drains a buffer after pushing `data` in chunks of the given sizes (cycled).
fn read_stream<T>(data: &[u8], chunks: &[usize]) -> Result<Vec<T>, DecodeError>
where
    T: bincode::Decode<()> + hotline_proto::frame::FrameCheck,
{
    let mut buf = FrameBuffer::new();
    let mut out = Vec::new();
    let mut rest = data;
    for size in chunks.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (piece, tail) = rest.split_at((*size).clamp(1, rest.len()));
        rest = tail;
        buf.push(piece)?;
        while let Some(f) = buf.next_frame::<T>()? {
            out.push(f);
        }
    }
    assert_eq!(
        buf.pending_bytes(),
        0,
        "a whole stream leaves nothing behind"
    );
    Ok(out)
}

fn prefixed(payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("test payloads are small");
    [&len.to_le_bytes()[..], payload].concat()
}

// --- Never panic ------------------------------------------------------------------------

proptest! {
    /// Arbitrary bytes: every decoder answers with a value or a typed error, and the
    /// harnesses' invariants (canonical re-encoding, chunking independence) hold.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..1024)) {
        let _ = decode_frame::<NodeToRelay>(&bytes);
        let _ = decode_frame::<RelayToNode>(&bytes);
        if let Ok(env) = codec::decode::<Envelope>(&bytes, ENVELOPE_BYTES_MAX) {
            prop_assert_eq!(codec::encode(&env, ENVELOPE_BYTES_MAX).expect("re-encodes"), bytes.clone());
        }
        let carried = Signed::<Envelope>::from_parts(bytes.clone(), PublicKey([0; 32]), Signature([0; 64]));
        let _ = carried.decode_unverified();
        prop_assert!(carried.verify_with(&PublicKey([0; 32])).is_err());
        let mut buf = FrameBuffer::new();
        if buf.push(&bytes).is_ok() {
            for _ in 0..bytes.len() {
                match buf.next_frame::<NodeToRelay>() {
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => break,
                }
            }
        }
        harness::frame_decoder(&bytes);
        harness::verify_decoded(&bytes);
        harness::session_frames(&bytes);
    }

    /// Valid frames and signed carriers with a few bytes replaced, inserted or deleted: the
    /// harnesses reach deep into the decoders and must still hold.
    #[test]
    fn edited_frames_never_panic(
        which in any::<Index>(),
        edits in vec(edit(), 1..6),
    ) {
        let (node, relay) = encoded_frames();
        let all: Vec<&Vec<u8>> = node
            .iter()
            .chain(relay)
            .chain(encoded_carriers())
            .chain(session_streams())
            .collect();
        let mut bytes = which.get(&all).to_vec();
        apply(&mut bytes, &edits);
        harness::frame_decoder(&bytes);
        harness::verify_decoded(&bytes);
        harness::session_frames(&bytes);
        // The same edits behind the frame header exercise the payload decoders directly.
        if bytes.len() > FRAME_PREFIX_BYTES {
            let _ = decode_frame::<NodeToRelay>(&bytes[FRAME_PREFIX_BYTES..]);
        }
    }
}

// --- Truncation, trailing bytes, sizes --------------------------------------------------

#[test]
fn every_truncation_of_a_valid_frame_is_refused() {
    let (node, relay) = encoded_frames();
    for full in node {
        let payload = &full[FRAME_PREFIX_BYTES..];
        decode_frame::<NodeToRelay>(payload).expect("the sample decodes");
        for k in 0..payload.len() {
            assert_eq!(
                decode_frame::<NodeToRelay>(&payload[..k]),
                Err(DecodeError::Truncated),
                "prefix of {k} bytes"
            );
        }
    }
    for full in relay {
        let payload = &full[FRAME_PREFIX_BYTES..];
        decode_frame::<RelayToNode>(payload).expect("the sample decodes");
        for k in 0..payload.len() {
            assert_eq!(
                decode_frame::<RelayToNode>(&payload[..k]),
                Err(DecodeError::Truncated),
                "prefix of {k} bytes"
            );
        }
    }
}

/// Fed one byte at a time, a buffer answers "not yet" until the last byte of a frame, then
/// the frame, and keeps nothing behind.
macro_rules! byte_by_byte {
    ($frames:expr, $t:ty) => {
        for f in $frames {
            let full = encode_frame(&f).expect("encodes");
            let mut buf = FrameBuffer::new();
            for (i, byte) in full.iter().enumerate() {
                buf.push(&[*byte]).expect("a valid prefix");
                let got = buf.next_frame::<$t>();
                if i + 1 < full.len() {
                    assert_eq!(got, Ok(None), "after {} of {} bytes", i + 1, full.len());
                } else {
                    assert_eq!(got, Ok(Some(f.clone())));
                }
            }
            assert_eq!(buf.pending_bytes(), 0, "the frame was consumed");
        }
    };
}

#[test]
fn a_frame_buffer_waits_for_the_whole_frame() {
    byte_by_byte!(fixtures::node_frames(), NodeToRelay);
    byte_by_byte!(fixtures::relay_frames(), RelayToNode);
}

#[test]
fn every_truncation_of_signed_bytes_is_refused() {
    let alert = fixtures::signed_alert();
    let receipt = fixtures::signed_receipt();
    let roster = fixtures::signed_roster();
    for k in 0..alert.bytes().len() {
        let s = Signed::<Envelope>::from_parts(
            alert.bytes()[..k].to_vec(),
            alert.key(),
            alert.signature(),
        );
        assert_eq!(s.decode_unverified(), Err(DecodeError::Truncated));
    }
    for k in 0..receipt.bytes().len() {
        let s = Signed::<Receipt>::from_parts(
            receipt.bytes()[..k].to_vec(),
            receipt.key(),
            receipt.signature(),
        );
        assert_eq!(s.decode_unverified(), Err(DecodeError::Truncated));
    }
    for k in 0..roster.bytes().len() {
        let s = Signed::<hotline_proto::Roster>::from_parts(
            roster.bytes()[..k].to_vec(),
            roster.key(),
            roster.signature(),
        );
        assert_eq!(s.decode_unverified(), Err(DecodeError::Truncated));
    }
}

proptest! {
    /// A valid frame followed by anything is refused with the count of extra bytes, as a
    /// payload and inside a stream whose prefix covers the extra bytes.
    #[test]
    fn trailing_bytes_are_refused(extra in vec(any::<u8>(), 1..64)) {
        let (node, relay) = encoded_frames();
        let want = Err(DecodeError::TrailingBytes { extra: extra.len() });
        for full in node {
            let padded = [&full[FRAME_PREFIX_BYTES..], &extra[..]].concat();
            prop_assert_eq!(decode_frame::<NodeToRelay>(&padded).map(|_| ()), want.clone());
            let mut buf = FrameBuffer::new();
            buf.push(&prefixed(&padded)).expect("the prefix is in range");
            prop_assert_eq!(buf.next_frame::<NodeToRelay>().map(|_| ()), want.clone());
            prop_assert_eq!(buf.pending_bytes(), 0, "the bad frame is dropped");
        }
        for full in relay {
            let padded = [&full[FRAME_PREFIX_BYTES..], &extra[..]].concat();
            prop_assert_eq!(decode_frame::<RelayToNode>(&padded).map(|_| ()), want.clone());
        }
        let alert = fixtures::signed_alert();
        let padded = [alert.bytes(), &extra[..]].concat();
        let s = Signed::<Envelope>::from_parts(padded, alert.key(), alert.signature());
        prop_assert_eq!(s.decode_unverified().map(|_| ()), want.clone());
        prop_assert!(s.verify_with(&alert.key()).is_err());
    }

    /// Any length prefix over the limit is refused by `frame_len` and by the buffer as soon
    /// as the prefix is complete, whatever follows.
    #[test]
    fn oversized_prefixes_are_refused(len in (FRAME_BYTES_MAX as u32 + 1)..=u32::MAX, tail in vec(any::<u8>(), 0..16)) {
        let want = Err(DecodeError::TooLarge { len: len as usize, max: FRAME_BYTES_MAX });
        prop_assert_eq!(frame_len(len.to_le_bytes()), want.clone());
        let mut buf = FrameBuffer::new();
        prop_assert_eq!(buf.push(&[&len.to_le_bytes()[..], &tail[..]].concat()), want.clone().map(|_| ()));
    }
}

#[test]
fn named_oversized_prefixes_are_refused_before_the_payload() {
    for len in [u32::MAX, 1 << 31, FRAME_BYTES_MAX as u32 + 1] {
        let want = DecodeError::TooLarge {
            len: len as usize,
            max: FRAME_BYTES_MAX,
        };
        assert_eq!(frame_len(len.to_le_bytes()), Err(want.clone()));
        // Fed one byte at a time: the first three are fine, the fourth completes the prefix
        // and is refused at once, with nothing but the prefix buffered.
        let mut buf = FrameBuffer::new();
        let prefix = len.to_le_bytes();
        for b in &prefix[..3] {
            assert_eq!(buf.push(&[*b]), Ok(()));
            assert_eq!(buf.next_frame::<NodeToRelay>(), Ok(None));
        }
        assert_eq!(buf.push(&prefix[3..]), Err(want.clone()));
        assert_eq!(buf.pending_bytes(), FRAME_PREFIX_BYTES);
        assert_eq!(buf.next_frame::<RelayToNode>(), Err(want));
    }
    assert_eq!(
        frame_len((FRAME_BYTES_MAX as u32).to_le_bytes()),
        Ok(FRAME_BYTES_MAX)
    );
    assert_eq!(frame_len(1u32.to_le_bytes()), Ok(1));
    assert!(matches!(
        frame_len([0; 4]),
        Err(DecodeError::Invalid {
            field: "frame length",
            ..
        })
    ));
    assert!(
        FrameBuffer::new().push(&[0; 4]).is_err(),
        "empty frames too"
    );
}

/// A session's first frame is read under the `Hello` limit: a longer prefix is refused as
/// soon as it is complete, before any of its payload (a peer that has not authenticated
/// cannot make a relay hold a frame's worth of bytes), while the largest `Hello` still
/// passes; the frames after it are held to the frame limit again once it is raised.
#[test]
fn a_first_frame_over_the_hello_limit_is_refused_at_its_prefix() {
    use hotline_proto::frame::Hello;
    use hotline_proto::limits::HELLO_FRAME_BYTES_MAX;

    // The largest proof the decoder would take apart (the proof limit, in bytes).
    let auth = fixtures::signed_auth();
    let largest = Signed::from_parts(
        vec![0; <hotline_proto::AuthProof as SignedPayload>::BYTES_MAX],
        auth.key(),
        auth.signature(),
    );
    for auth in [auth, largest] {
        let hello = encode_frame(&NodeToRelay::Hello(Hello {
            auth,
            roster_version: u64::MAX,
        }))
        .expect("encodes");
        assert!(hello.len() - FRAME_PREFIX_BYTES <= HELLO_FRAME_BYTES_MAX);
        let mut buf = FrameBuffer::new();
        buf.set_frame_bytes_max(HELLO_FRAME_BYTES_MAX);
        let env = Envelope {
            body: "b".repeat(HELLO_FRAME_BYTES_MAX),
            ..fixtures::to("KAZ", &["CHN"])
        };
        let env = Signed::sign(&env, &fixtures::key_of("KAZ")).expect("signs");
        let submit = encode_frame(&NodeToRelay::Submit(env)).expect("encodes");
        assert!(submit.len() - FRAME_PREFIX_BYTES > HELLO_FRAME_BYTES_MAX);
        buf.push(&[&hello[..], &submit[..]].concat())
            .expect("a Hello fits");
        assert!(matches!(
            buf.next_frame::<NodeToRelay>(),
            Ok(Some(NodeToRelay::Hello(_)))
        ));
        buf.set_frame_bytes_max(FRAME_BYTES_MAX);
        assert!(matches!(
            buf.next_frame::<NodeToRelay>(),
            Ok(Some(NodeToRelay::Submit(_)))
        ));
    }

    let want = DecodeError::TooLarge {
        len: HELLO_FRAME_BYTES_MAX + 1,
        max: HELLO_FRAME_BYTES_MAX,
    };
    let mut buf = FrameBuffer::new();
    buf.set_frame_bytes_max(HELLO_FRAME_BYTES_MAX);
    let prefix = (HELLO_FRAME_BYTES_MAX as u32 + 1).to_le_bytes();
    assert_eq!(buf.push(&prefix[..3]), Ok(()));
    assert_eq!(buf.push(&prefix[3..]), Err(want.clone()));
    assert_eq!(buf.next_frame::<NodeToRelay>(), Err(want));
    // A limit above the frame limit is the frame limit.
    buf.set_frame_bytes_max(usize::MAX);
    assert_eq!(buf.frame_bytes_max(), FRAME_BYTES_MAX);
}

#[test]
fn huge_length_fields_inside_a_frame_are_refused_without_allocating() {
    // A Submit frame whose carried byte string claims 2^62 bytes, and one claiming just over
    // the frame limit: both refused as too large, not as out of memory.
    for claim in [1u64 << 62, FRAME_BYTES_MAX as u64 + 1, u64::MAX] {
        let mut payload = 1u32.to_le_bytes().to_vec();
        payload.extend_from_slice(&claim.to_le_bytes());
        payload.extend_from_slice(&[0; 96]);
        let r = decode_frame::<NodeToRelay>(&payload);
        assert!(
            matches!(r, Err(DecodeError::TooLarge { .. })),
            "{claim}: {r:?}"
        );
    }
    // An envelope whose subject claims 2^40 bytes.
    let env = fixtures::to("KAZ", &["CHN"]);
    let bytes = codec::encode(&env, ENVELOPE_BYTES_MAX).expect("encodes");
    let subject_at = bytes.len() - (8 + env.subject.len()) - 8;
    let mut evil = bytes[..subject_at].to_vec();
    evil.extend_from_slice(&(1u64 << 40).to_le_bytes());
    let r = codec::decode::<Envelope>(&evil, ENVELOPE_BYTES_MAX);
    assert!(matches!(r, Err(DecodeError::TooLarge { .. })), "{r:?}");
    // A participant id claiming 2^40 bytes is refused by the id's own bound.
    let mut evil = bytes[..18].to_vec();
    evil.extend_from_slice(&(1u64 << 40).to_le_bytes());
    let r = codec::decode::<Envelope>(&evil, ENVELOPE_BYTES_MAX);
    assert!(matches!(r, Err(DecodeError::Malformed(_))), "{r:?}");
}

// --- Tags -------------------------------------------------------------------------------

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("four bytes"))
}

fn set_u32(bytes: &mut [u8], at: usize, v: u32) {
    bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// Offsets of the audience, kind, precedence and status tags, and of the respond-by option
/// tag, in an envelope whose audience is `AllMembers`.
fn envelope_tag_offsets(env: &Envelope) -> [usize; 5] {
    let audience = 2 + 16 + 8 + env.sender.as_str().len() + 8;
    [
        audience,
        audience + 4,
        audience + 8,
        audience + 12,
        audience + 16 + 8,
    ]
}

#[test]
fn wire_tags_are_the_documented_ones() {
    let tag = |bytes: Vec<u8>| u32_at(&bytes, 0);
    for (i, k) in KINDS.iter().enumerate() {
        assert_eq!(
            tag(codec::encode(k, 4).expect("encodes")),
            i as u32,
            "{k:?}"
        );
    }
    for (i, p) in PRECEDENCES.iter().enumerate() {
        assert_eq!(
            tag(codec::encode(p, 4).expect("encodes")),
            i as u32,
            "{p:?}"
        );
    }
    for (i, s) in STATUSES.iter().enumerate() {
        assert_eq!(
            tag(codec::encode(s, 4).expect("encodes")),
            i as u32,
            "{s:?}"
        );
    }
    for (i, r) in [Role::Member, Role::Observer, Role::Secretariat]
        .iter()
        .enumerate()
    {
        assert_eq!(
            tag(codec::encode(r, 4).expect("encodes")),
            i as u32,
            "{r:?}"
        );
    }
    let audiences = [
        Audience::Participants(vec![fixtures::pid("KAZ")]),
        Audience::Group("g".into()),
        Audience::AllMembers,
        Audience::Everyone,
    ];
    for (i, a) in audiences.iter().enumerate() {
        assert_eq!(
            tag(codec::encode(a, 64).expect("encodes")),
            i as u32,
            "{a:?}"
        );
    }
    let (node, relay) = encoded_frames();
    let node_tags: Vec<u32> = node.iter().map(|f| u32_at(f, 4)).collect();
    assert_eq!(
        node_tags,
        (0..NODE_TO_RELAY_TAGS).collect::<Vec<_>>(),
        "one sample of every NodeToRelay variant"
    );
    let mut relay_tags: Vec<u32> = relay.iter().map(|f| u32_at(f, 4)).collect();
    relay_tags.dedup();
    assert_eq!(
        relay_tags,
        (0..RELAY_TO_NODE_TAGS).collect::<Vec<_>>(),
        "one sample of every RelayToNode variant"
    );
    // The first tag past the last variant is unknown in both directions.
    let payload = |t: u32| [&t.to_le_bytes()[..], &[0u8; 64][..]].concat();
    assert!(is_unknown_tag(
        &decode_frame::<NodeToRelay>(&payload(NODE_TO_RELAY_TAGS)),
        NODE_TO_RELAY_TAGS
    ));
    assert!(is_unknown_tag(
        &decode_frame::<RelayToNode>(&payload(RELAY_TO_NODE_TAGS)),
        RELAY_TO_NODE_TAGS
    ));
    // RejectCode and ErrorCode: every defined tag decodes and re-encodes; ErrorCode's tags
    // are also its QUIC close codes.
    for t in 0..18u32 {
        let code: RejectCode = codec::decode(&t.to_le_bytes(), 4).expect("defined tag");
        assert_eq!(codec::encode(&code, 4).expect("encodes"), t.to_le_bytes());
    }
    for t in 0..14u32 {
        let code: ErrorCode = codec::decode(&t.to_le_bytes(), 4).expect("defined tag");
        assert_eq!(code.close_code(), t);
        assert_eq!(ErrorCode::from_close_code(u64::from(t)), Some(code));
    }
    assert_eq!(ErrorCode::from_close_code(14), None);
    assert_eq!(ErrorCode::from_close_code(u64::MAX), None);
}

fn is_unknown_tag<T: std::fmt::Debug>(r: &Result<T, DecodeError>, tag: u32) -> bool {
    matches!(r, Err(DecodeError::UnknownTag { found, .. }) if *found == tag)
}

proptest! {
    /// Any tag past the last defined variant is `UnknownTag` with the tag found, for the
    /// frame enums, for each enum field inside an otherwise valid envelope, and for the
    /// one-byte `Option` tag.
    #[test]
    fn unknown_tags_are_refused(
        t in prop_oneof![0u32..32, any::<u32>(), Just(u32::MAX)],
        tail in vec(any::<u8>(), 0..32),
    ) {
        let with_tag = |t: u32| [&t.to_le_bytes()[..], &tail[..]].concat();
        if t >= NODE_TO_RELAY_TAGS {
            prop_assert!(is_unknown_tag(&decode_frame::<NodeToRelay>(&with_tag(t)), t));
        }
        if t >= RELAY_TO_NODE_TAGS {
            prop_assert!(is_unknown_tag(&decode_frame::<RelayToNode>(&with_tag(t)), t));
        }
        let bytes = |t: u32| t.to_le_bytes();
        if t >= 7 {
            prop_assert!(is_unknown_tag(&codec::decode::<Kind>(&bytes(t), 4), t));
        }
        if t >= 4 {
            prop_assert!(is_unknown_tag(&codec::decode::<Precedence>(&bytes(t), 4), t));
        }
        if t >= 3 {
            prop_assert!(is_unknown_tag(&codec::decode::<Status>(&bytes(t), 4), t));
            prop_assert!(is_unknown_tag(&codec::decode::<Role>(&bytes(t), 4), t));
            prop_assert!(is_unknown_tag(&codec::decode::<Subject>(&with_tag(t), 64), t));
        }
        if t >= 18 {
            prop_assert!(is_unknown_tag(&codec::decode::<RejectCode>(&bytes(t), 4), t));
        }
        if t >= 14 {
            prop_assert!(is_unknown_tag(&codec::decode::<ErrorCode>(&bytes(t), 4), t));
        }
        if t >= 2 {
            prop_assert!(is_unknown_tag(&codec::decode::<ReceiptKind>(&with_tag(t), 64), t));
        }

        // Inside an otherwise valid envelope.
        let env = Envelope {
            respond_by_ms: Some(fixtures::T0_MS + 1),
            ..fixtures::envelope("KAZ", Audience::AllMembers)
        };
        let good = codec::encode(&env, ENVELOPE_BYTES_MAX).expect("encodes");
        let [audience, kind, precedence, status, option] = envelope_tag_offsets(&env);
        prop_assert_eq!(
            [u32_at(&good, audience), u32_at(&good, kind), u32_at(&good, precedence), u32_at(&good, status)],
            [2, 0, 3, 0],
            "offsets point at the tags"
        );
        prop_assert_eq!(good[option], 1);
        for (at, defined) in [(audience, 4), (kind, 7), (precedence, 4), (status, 3)] {
            let mut bad = good.clone();
            set_u32(&mut bad, at, t);
            let r = codec::decode::<Envelope>(&bad, ENVELOPE_BYTES_MAX);
            if t >= defined {
                prop_assert!(is_unknown_tag(&r, t), "{:?}", r);
            }
        }
        let byte = (t % 256) as u8;
        if byte >= 2 {
            let mut bad = good.clone();
            bad[option] = byte;
            let r = codec::decode::<Envelope>(&bad, ENVELOPE_BYTES_MAX);
            prop_assert!(is_unknown_tag(&r, u32::from(byte)), "{:?}", r);
        }
    }
}

// --- Participant ids --------------------------------------------------------------------

/// Replaces the length-prefixed string at `at` (whose current length is `old_len`).
fn splice_string(bytes: &[u8], at: usize, old_len: usize, new: &str) -> Vec<u8> {
    let mut out = bytes[..at].to_vec();
    out.extend_from_slice(&(new.len() as u64).to_le_bytes());
    out.extend_from_slice(new.as_bytes());
    out.extend_from_slice(&bytes[at + 8 + old_len..]);
    out
}

proptest! {
    /// An invalid participant id anywhere in an otherwise valid encoding is refused as
    /// malformed: envelope sender and audience, receipt recipient, roster entry, and the
    /// recipients of an `Accepted` frame.
    #[test]
    fn invalid_participant_ids_are_refused(bad in bad_participant_id()) {
        let is_malformed = |r: Result<(), DecodeError>| matches!(r, Err(DecodeError::Malformed(_)));

        let env = fixtures::to("KAZ", &["CHN", "IND"]);
        let good = codec::encode(&env, ENVELOPE_BYTES_MAX).expect("encodes");
        // The sender follows the version and the id.
        let spliced = splice_string(&good, 18, 3, &bad);
        prop_assert!(is_malformed(codec::decode::<Envelope>(&spliced, ENVELOPE_BYTES_MAX).map(|_| ())));
        // The first audience id follows the sender, the sequence number, the audience tag
        // and the list length.
        let first = 18 + 8 + 3 + 8 + 4 + 8;
        prop_assert_eq!(&good[first + 8..first + 11], b"CHN");
        let spliced = splice_string(&good, first, 3, &bad);
        prop_assert!(is_malformed(codec::decode::<Envelope>(&spliced, ENVELOPE_BYTES_MAX).map(|_| ())));
        // Carried in a signed envelope, decode_unverified refuses it too.
        let carried = Signed::<Envelope>::from_parts(spliced, fixtures::public(2), Signature([0; 64]));
        prop_assert!(is_malformed(carried.decode_unverified().map(|_| ())));

        let receipt = fixtures::signed_receipt();
        prop_assert_eq!(&receipt.bytes()[10..13], b"IND");
        let spliced = splice_string(receipt.bytes(), 2, 3, &bad);
        prop_assert!(is_malformed(codec::decode::<Receipt>(&spliced, 65536).map(|_| ())));

        let roster = fixtures::signed_roster();
        // protocol version, version, issued-at, network "CICA", participant count.
        let first = 2 + 8 + 8 + 8 + 4 + 8;
        prop_assert_eq!(&roster.bytes()[first + 8..first + 11], b"SEC");
        let spliced = splice_string(roster.bytes(), first, 3, &bad);
        prop_assert!(is_malformed(codec::decode::<hotline_proto::Roster>(&spliced, 1 << 18).map(|_| ())));

        let accepted = encoded_frames().1[2].clone();
        // prefix, tag, message id, list length.
        let first = 4 + 4 + 16 + 8;
        prop_assert_eq!(&accepted[first + 8..first + 11], b"CHN");
        let spliced = splice_string(&accepted, first, 3, &bad);
        prop_assert!(is_malformed(decode_frame::<RelayToNode>(&spliced[4..]).map(|_| ())));
    }
}

// --- Round trips and signatures ---------------------------------------------------------

proptest! {
    /// Valid envelopes encode and decode to themselves, sign and verify, travel through
    /// frames in both directions; any single flipped bit of the signed bytes, the domain
    /// prefix, the signature or the key makes verification fail.
    #[test]
    fn envelopes_round_trip_and_resist_bit_flips(
        env in envelope(),
        seed in any::<[u8; 32]>(),
        flips in vec(any::<Index>(), 4),
    ) {
        let bytes = codec::encode(&env, ENVELOPE_BYTES_MAX).expect("valid envelopes encode");
        prop_assert_eq!(codec::decode::<Envelope>(&bytes, ENVELOPE_BYTES_MAX), Ok(env.clone()));

        let key = SigningKey::from_bytes(&seed);
        let public = PublicKey::of(&key);
        let signed = Signed::sign(&env, &key).expect("valid envelopes sign");
        prop_assert_eq!(signed.bytes(), &bytes[..]);
        let verified = signed.verify_with(&public).expect("own signature verifies");
        prop_assert_eq!(verified.value(), &env);

        // The carrier and both frames that carry it.
        let carrier = codec::encode(&signed, FRAME_BYTES_MAX).expect("encodes");
        prop_assert_eq!(codec::decode::<Signed<Envelope>>(&carrier, FRAME_BYTES_MAX), Ok(signed.clone()));
        let submit = NodeToRelay::Submit(signed.clone());
        let frame = encode_frame(&submit).expect("encodes");
        prop_assert_eq!(read_stream::<NodeToRelay>(&frame, &[7])?, vec![submit]);
        let deliver = RelayToNode::Deliver(signed.clone());
        let frame = encode_frame(&deliver).expect("encodes");
        prop_assert_eq!(read_stream::<RelayToNode>(&frame, &[frame.len()])?, vec![deliver]);

        let strict_ok = |pk: &[u8; 32], msg: &[u8], sig: &[u8; 64]| {
            VerifyingKey::from_bytes(pk).is_ok_and(|k| {
                k.verify_strict(msg, &ed25519_dalek::Signature::from_bytes(sig)).is_ok()
            })
        };
        prop_assert!(strict_ok(&public.0, &signed.signed_message(), &signed.signature().0));
        for bit in flips {
            let mut b = bytes.clone();
            flip(&mut b, bit);
            let s = Signed::<Envelope>::from_parts(b, public, signed.signature());
            prop_assert!(s.verify_with(&public).is_err(), "flipped payload bit verified");

            let mut m = signed.signed_message();
            flip(&mut m, bit);
            prop_assert!(!strict_ok(&public.0, &m, &signed.signature().0), "flipped message bit");

            let mut sig = signed.signature().0;
            flip(&mut sig, bit);
            let s = Signed::<Envelope>::from_parts(bytes.clone(), public, Signature(sig));
            prop_assert!(s.verify_with(&public).is_err(), "flipped signature bit verified");

            let mut pk = public.0;
            flip(&mut pk, bit);
            let s = Signed::<Envelope>::from_parts(bytes.clone(), PublicKey(pk), signed.signature());
            prop_assert!(s.verify_with(&PublicKey(pk)).is_err(), "flipped key bit verified");
            prop_assert!(s.verify_with(&public).is_err(), "carried key differs from expected");
        }
    }

    /// Valid receipts round-trip and sign, and a flipped bit is refused.
    #[test]
    fn receipts_round_trip(receipt in receipt(), seed in any::<[u8; 32]>(), bit in any::<Index>()) {
        let bytes = codec::encode(&receipt, Receipt::BYTES_MAX).expect("valid receipts encode");
        prop_assert_eq!(codec::decode::<Receipt>(&bytes, Receipt::BYTES_MAX), Ok(receipt.clone()));
        let key = SigningKey::from_bytes(&seed);
        let signed = Signed::sign(&receipt, &key).expect("valid receipts sign");
        let verified = signed.verify_with(&PublicKey::of(&key)).expect("verifies");
        prop_assert_eq!(verified.value(), &receipt);
        let frame = NodeToRelay::Receipt(signed.clone());
        prop_assert_eq!(read_stream::<NodeToRelay>(&encode_frame(&frame).expect("encodes"), &[3, 100])?, vec![frame]);
        let mut b = bytes.clone();
        flip(&mut b, bit);
        let s = Signed::<Receipt>::from_parts(b, signed.key(), signed.signature());
        prop_assert!(s.verify_with(&signed.key()).is_err());
    }

    /// Every sample frame of both directions, concatenated into one stream and pushed in
    /// arbitrary chunks, comes back whole and in order.
    #[test]
    fn every_frame_round_trips_through_a_chunked_stream(chunks in vec(1usize..300, 1..16)) {
        let node = fixtures::node_frames();
        let stream: Vec<u8> = node.iter().flat_map(|f| encode_frame(f).expect("encodes")).collect();
        prop_assert_eq!(read_stream::<NodeToRelay>(&stream, &chunks)?, node);
        let relay = fixtures::relay_frames();
        let stream: Vec<u8> = relay.iter().flat_map(|f| encode_frame(f).expect("encodes")).collect();
        prop_assert_eq!(read_stream::<RelayToNode>(&stream, &chunks)?, relay);
    }
}

#[test]
fn every_frame_round_trips_alone() {
    for f in fixtures::node_frames() {
        let bytes = encode_frame(&f).expect("encodes");
        let len = frame_len(bytes[..4].try_into().expect("prefix")).expect("in range");
        assert_eq!(len, bytes.len() - FRAME_PREFIX_BYTES);
        assert_eq!(decode_frame::<NodeToRelay>(&bytes[4..]), Ok(f.clone()));
        assert_eq!(read_stream::<NodeToRelay>(&bytes, &[1]), Ok(vec![f]));
    }
    for f in fixtures::relay_frames() {
        let bytes = encode_frame(&f).expect("encodes");
        assert_eq!(decode_frame::<RelayToNode>(&bytes[4..]), Ok(f.clone()));
        assert_eq!(read_stream::<RelayToNode>(&bytes, &[1]), Ok(vec![f]));
    }
}
