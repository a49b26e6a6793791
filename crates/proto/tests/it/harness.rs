//! The fuzz harnesses, shared by the cargo-fuzz targets in `fuzz/fuzz_targets/` (which
//! include this file by path) and by the test binary, which runs them over the seed corpus
//! and over random and mutated inputs on every `cargo test`.
//!
//! Besides "never panics", each harness asserts properties that must hold for any input:
//! whatever decodes re-encodes to exactly the same bytes (the encoding is canonical),
//! splitting a stream into arbitrary chunks does not change the frames read from it, and a
//! value that verifies against the roster also verifies by key and decodes unverified to
//! the same value. It may name nothing but `hotline_proto` and `crate::fixtures`.

#![allow(dead_code)]

use std::sync::OnceLock;

use hotline_proto::auth::AuthProof;
use hotline_proto::codec::{self, DecodeError};
use hotline_proto::envelope::Envelope;
use hotline_proto::frame::{
    decode_frame, encode_frame, FrameBuffer, NodeToRelay, RelayToNode, FRAME_PREFIX_BYTES,
};
use hotline_proto::limits::FRAME_BYTES_MAX;
use hotline_proto::receipt::Receipt;
use hotline_proto::roster::Roster;
use hotline_proto::routing::{resolve, Policy};
use hotline_proto::sign::{PublicKey, Signed, SignedPayload, Verified};
use hotline_proto::{check_created_at, verify_roster};

use crate::fixtures;

/// The fixture roster, verified once.
pub(crate) fn roster() -> &'static Verified<Roster> {
    static ROSTER: OnceLock<Verified<Roster>> = OnceLock::new();
    ROSTER.get_or_init(fixtures::verified_roster)
}

/// The pinned roster key.
pub(crate) fn roster_key() -> PublicKey {
    PublicKey::of(&fixtures::roster_key())
}

/// Selector byte of each signed type in the `verify_decoded` input format.
pub(crate) const SELECT_ENVELOPE: u8 = 0;
/// See [`SELECT_ENVELOPE`].
pub(crate) const SELECT_RECEIPT: u8 = 1;
/// See [`SELECT_ENVELOPE`].
pub(crate) const SELECT_ROSTER: u8 = 2;
/// See [`SELECT_ENVELOPE`].
pub(crate) const SELECT_AUTH: u8 = 3;

/// Frames and stream: `data` is a byte stream of length-prefixed frames, read in both
/// directions, all at once and in chunks; `data` past its first four bytes is also decoded
/// as a single frame payload.
pub(crate) fn frame_decoder(data: &[u8]) {
    let chunk = data.first().map_or(1, |b| usize::from(b % 16) + 1);

    let whole = stream_node(data, data.len().max(1));
    assert_eq!(
        whole,
        stream_node(data, chunk),
        "chunking changed the frames"
    );
    for f in &whole.0 {
        check_node_frame(f);
    }
    let whole = stream_relay(data, data.len().max(1));
    assert_eq!(
        whole,
        stream_relay(data, chunk),
        "chunking changed the frames"
    );
    for f in &whole.0 {
        check_relay_frame(f);
    }

    let payload = data.get(FRAME_PREFIX_BYTES..).unwrap_or_default();
    if let Ok(f) = decode_frame::<NodeToRelay>(payload) {
        let again = encode_frame(&f).expect("a decoded frame re-encodes");
        assert_eq!(&again[FRAME_PREFIX_BYTES..], payload, "non-canonical frame");
        check_node_frame(&f);
    }
    if let Ok(f) = decode_frame::<RelayToNode>(payload) {
        let again = encode_frame(&f).expect("a decoded frame re-encodes");
        assert_eq!(&again[FRAME_PREFIX_BYTES..], payload, "non-canonical frame");
        check_relay_frame(&f);
    }
}

/// Reads a stream pushed in chunks of `chunk` bytes: the frames read, and the first error.
macro_rules! stream_fn {
    ($name:ident, $t:ty) => {
        fn $name(data: &[u8], chunk: usize) -> (Vec<$t>, Option<DecodeError>) {
            let mut buf = FrameBuffer::new();
            let mut frames = Vec::new();
            for piece in data.chunks(chunk) {
                if let Err(e) = buf.push(piece) {
                    return (frames, Some(e));
                }
                loop {
                    match buf.next_frame::<$t>() {
                        Ok(Some(f)) => {
                            let bytes = encode_frame(&f).expect("a decoded frame re-encodes");
                            assert!(bytes.len() <= FRAME_PREFIX_BYTES + FRAME_BYTES_MAX);
                            frames.push(f);
                        }
                        Ok(None) => break,
                        Err(e) => return (frames, Some(e)),
                    }
                }
                assert!(buf.pending_bytes() < FRAME_PREFIX_BYTES + FRAME_BYTES_MAX);
            }
            (frames, None)
        }
    };
}
stream_fn!(stream_node, NodeToRelay);
stream_fn!(stream_relay, RelayToNode);

fn check_node_frame(f: &NodeToRelay) {
    match f {
        NodeToRelay::Hello(h) => check_auth(&h.auth),
        NodeToRelay::Submit(s) => check_envelope(s),
        NodeToRelay::Receipt(s) => check_receipt(s),
        _ => {}
    }
}

fn check_relay_frame(f: &RelayToNode) {
    match f {
        RelayToNode::Welcome(w) => {
            if let Some(r) = &w.roster {
                check_roster(r);
            }
        }
        RelayToNode::Deliver(s) => check_envelope(s),
        RelayToNode::Receipt(s) => check_receipt(s),
        RelayToNode::RosterUpdate(r) => check_roster(r),
        _ => {}
    }
}

/// Signed values: the first byte selects the type (see [`SELECT_ENVELOPE`]), the rest is
/// the canonical encoding of a `Signed<T>` (bytes, key, signature), which is decoded and
/// verified against the fixture roster.
pub(crate) fn verify_decoded(data: &[u8]) {
    let Some((&select, rest)) = data.split_first() else {
        return;
    };
    match select % 4 {
        SELECT_ENVELOPE => carrier::<Envelope>(rest).iter().for_each(check_envelope),
        SELECT_RECEIPT => carrier::<Receipt>(rest).iter().for_each(check_receipt),
        SELECT_ROSTER => carrier::<Roster>(rest).iter().for_each(check_roster),
        _ => carrier::<AuthProof>(rest).iter().for_each(check_auth),
    }
}

/// Decodes a carrier, checking that what decodes re-encodes to the same bytes.
fn carrier<T: SignedPayload>(bytes: &[u8]) -> Option<Signed<T>> {
    let s: Signed<T> = codec::decode(bytes, FRAME_BYTES_MAX).ok()?;
    let again = codec::encode(&s, FRAME_BYTES_MAX).expect("a decoded carrier re-encodes");
    assert_eq!(again, bytes, "non-canonical carrier");
    Some(s)
}

/// Decodes the payload unverified and verifies it by its own key; returns both results
/// after checking they agree.
fn unverified_and_by_key<T: SignedPayload + PartialEq + std::fmt::Debug>(
    s: &Signed<T>,
) -> (Option<T>, Option<Verified<T>>) {
    let unverified = s.decode_unverified().ok();
    if let Some(v) = &unverified {
        let again = codec::encode(v, T::BYTES_MAX).expect("a decoded value re-encodes");
        assert_eq!(again, s.bytes(), "non-canonical payload");
    }
    let by_key = s.verify_with(&s.key()).ok();
    if let Some(v) = &by_key {
        assert_eq!(Some(v.value()), unverified.as_ref());
        assert_eq!(v.signed(), s);
    }
    (unverified, by_key)
}

fn check_envelope(s: &Signed<Envelope>) {
    let (_, by_key) = unverified_and_by_key(s);
    if let Ok(v) = roster().verify_envelope(s) {
        assert_eq!(Some(v.value()), by_key.as_ref().map(|k| k.value()));
        for closure_says in [false, true] {
            if let Ok(to) = resolve(roster(), &Policy::default(), &v, |_| closure_says) {
                assert!(!to.is_empty() && !to.contains(&v.sender));
                assert!(to.windows(2).all(|w| w[0] < w[1]), "sorted and unique");
            }
        }
        let _ = check_created_at(v.created_at_ms, fixtures::T0_MS);
    }
}

fn check_receipt(s: &Signed<Receipt>) {
    let (_, by_key) = unverified_and_by_key(s);
    if let Ok(v) = roster().verify_receipt(s) {
        assert_eq!(Some(v.value()), by_key.as_ref().map(|k| k.value()));
    }
}

fn check_roster(s: &Signed<Roster>) {
    let (_, by_key) = unverified_and_by_key(s);
    if let Ok(v) = verify_roster(s, &roster_key()) {
        assert_eq!(Some(v.value()), by_key.as_ref().map(|k| k.value()));
    }
}

fn check_auth(s: &Signed<AuthProof>) {
    unverified_and_by_key(s);
}
