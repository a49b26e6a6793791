//! The fuzz harnesses, shared by the cargo-fuzz targets in `fuzz/fuzz_targets/` (which
//! include this file by path) and by the test binary, which runs them over the seed corpus
//! and over random and mutated inputs on every `cargo test`.
//!
//! Besides "never panics", each harness asserts properties that must hold for any input:
//! whatever decodes re-encodes to exactly the same bytes (the encoding is canonical),
//! splitting a stream into arbitrary chunks does not change the frames read from it, and a
//! value that verifies against the roster also verifies by key and decodes unverified to
//! the same value; `session_frames` plays the per-frame steps of a relay session and checks
//! what it would accept and answer. It may name nothing but `hotline_proto` and
//! `crate::fixtures`.

#![allow(dead_code)]

use std::sync::OnceLock;

use hotline_proto::auth::AuthProof;
use hotline_proto::codec::{self, DecodeError};
use hotline_proto::envelope::Envelope;
use hotline_proto::frame::{
    self as frames, decode_frame, encode_frame, Accepted, FrameBuffer, NodeToRelay, RejectCode,
    Rejected, RelayToNode, Subject, FRAME_PREFIX_BYTES,
};
use hotline_proto::id::{MessageId, ParticipantId};
use hotline_proto::limits::{
    BODY_BYTES_MAX, CLOCK_SKEW_FUTURE_MAX_MS, DETAIL_BYTES_MAX, FRAME_BYTES_MAX, RECEIPT_ITEMS_MAX,
};
use hotline_proto::receipt::Receipt;
use hotline_proto::roster::{Participant, Role, Roster};
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

// --- session_frames ----------------------------------------------------------------------

/// The participants a relay session can be authenticated as: the fixture roster's active
/// ones, in roster order (the `session_frames` header selects one by index).
pub(crate) fn session_participants() -> Vec<&'static Participant> {
    roster()
        .participants
        .iter()
        .filter(|p| !p.revoked)
        .collect()
}

/// The header byte of a `session_frames` input: who the session authenticated as, whether
/// decodable submissions are re-signed by their claimed author, and the size of the pieces
/// the stream arrives in (1 to 16 bytes).
pub(crate) fn session_header(participant: &str, resign: bool, chunk: usize) -> u8 {
    let index = session_participants()
        .iter()
        .position(|p| p.id.as_str() == participant)
        .expect("an active fixture participant");
    assert!((1..=16).contains(&chunk));
    // The cast cannot truncate: the fixture roster has fewer than 8 active participants.
    index as u8 | if resign { 0x08 } else { 0 } | ((chunk - 1) as u8) << 4
}

/// The `session_frames` seeds, by file name: sessions of a member, a receipting member, an
/// observer and the Secretariat, with valid and refused submissions, receipts, pings and a
/// closing `Hello`, some in re-sign mode and in small pieces.
pub(crate) fn session_seeds() -> Vec<(String, Vec<u8>)> {
    use crate::fixtures::{self as fx, key_of, mid};
    use hotline_proto::envelope::{Audience, Kind};
    use hotline_proto::frame::Hello;
    use hotline_proto::receipt::ReceiptKind;
    use hotline_proto::sign::Digest;

    let signed = |env: Envelope| {
        let key = key_of(env.sender.as_str());
        NodeToRelay::Submit(Signed::sign(&env, &key).expect("fixture envelopes sign"))
    };
    let stream = |header: u8, frames: Vec<NodeToRelay>| -> Vec<u8> {
        let mut out = vec![header];
        for f in &frames {
            out.extend(encode_frame(f).expect("fixture frames encode"));
        }
        out
    };
    let alert = fx::signed_alert();
    let ack = Receipt {
        kind: ReceiptKind::Acknowledged {
            officer: "Duty officer".into(),
            note: Some("Seen.".into()),
        },
        ..fx::delivered("KAZ", &[&alert])
    };
    vec![
        (
            "seed-session-kaz".into(),
            stream(
                session_header("KAZ", false, 16),
                vec![
                    NodeToRelay::Submit(alert.clone()),
                    NodeToRelay::Ping(7),
                    NodeToRelay::ReceiptsStored(vec![Digest([0x11; 32])]),
                    NodeToRelay::Submit(alert.clone()),
                    NodeToRelay::Hello(Hello {
                        auth: fx::signed_auth(),
                        roster_version: 1,
                    }),
                ],
            ),
        ),
        (
            "seed-session-ind".into(),
            stream(
                session_header("IND", false, 5),
                vec![
                    NodeToRelay::Receipt(fx::signed_receipt()),
                    NodeToRelay::Submit(alert.clone()),
                    NodeToRelay::Ping(0),
                ],
            ),
        ),
        (
            "seed-session-un".into(),
            stream(
                session_header("UN", true, 16),
                vec![
                    signed(Envelope {
                        id: mid(0xB1),
                        ..fx::envelope("UN", Audience::Everyone)
                    }),
                    signed(Envelope {
                        id: mid(0xB2),
                        ..fx::to("UN", &["SEC"])
                    }),
                    signed(Envelope {
                        id: mid(0xB3),
                        kind: Kind::Reply,
                        references: vec![mid(0xA1)],
                        ..fx::to("UN", &["KAZ", "SEC"])
                    }),
                ],
            ),
        ),
        (
            "seed-session-kaz-resign".into(),
            stream(
                session_header("KAZ", true, 3),
                vec![
                    signed(Envelope {
                        id: mid(0xC1),
                        ..fx::envelope("KAZ", Audience::Group("maritime".into()))
                    }),
                    signed(Envelope {
                        id: mid(0xC2),
                        created_at_ms: fx::T0_MS + 24 * 3600 * 1000,
                        ..fx::envelope("KAZ", Audience::AllMembers)
                    }),
                    NodeToRelay::Receipt(
                        Signed::sign(&ack, &key_of("KAZ")).expect("fixture receipts sign"),
                    ),
                ],
            ),
        ),
        (
            "seed-session-sec".into(),
            stream(
                session_header("SEC", false, 16),
                vec![signed(Envelope {
                    id: mid(0xD1),
                    ..fx::envelope("SEC", Audience::Everyone)
                })],
            ),
        ),
    ]
}

/// What a `session_frames` run answered, so tests can check the seeds reach every path.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct SessionTally {
    /// Submissions accepted (routed).
    pub(crate) accepted: usize,
    /// Submissions and receipts refused, by code.
    pub(crate) refused: Vec<RejectCode>,
    /// Receipts stored.
    pub(crate) receipts: usize,
    /// Pings answered.
    pub(crate) pongs: usize,
    /// Whether a frame ended the session (a frame error, a second `Hello`).
    pub(crate) closed: bool,
}

/// The relay's clock in the `session_frames` harness.
const SESSION_NOW_MS: u64 = crate::fixtures::T0_MS;

/// A relay session after its handshake, fed arbitrary frames: the first byte is the header
/// (see [`session_header`]), the rest a stream of length-prefixed `NodeToRelay` frames.
///
/// Each frame goes through the pure steps `hotline-relay`'s session applies, in its order:
/// framing (a frame error closes the connection), then for a submission the refusal subject
/// read from bytes 2..18, the authorship check on the unverified decoding, verification
/// against the roster, the created-at check and routing with the default policy; for a
/// receipt the authorship check and verification; `Ping` is answered; `Hello` ends the
/// session. The invariants: what verifies is authored by the session's participant with one
/// of its listed keys, and nothing undecodable verifies (the authorship check is skipped
/// only for what verification then refuses); routing never returns the sender, only active
/// participants, sorted, and the stricter policy never routes more; every answer the session
/// would write (acceptance, refusal with its detail, pong, receipt stored) and every
/// delivery and forwarded receipt encodes as a frame and decodes back to itself; a
/// recipient list survives the store's comma-joined column. With the re-sign bit, a
/// submission or receipt that decodes is signed again with its claimed author's fixture key,
/// so arbitrary contents reach the verified paths (the signature itself is covered by
/// `verify_decoded`).
pub(crate) fn session_frames(data: &[u8]) -> SessionTally {
    let mut tally = SessionTally::default();
    let Some((&header, stream)) = data.split_first() else {
        return tally;
    };
    let active = session_participants();
    let me = active[usize::from(header & 0x07) % active.len()];
    let resign = header & 0x08 != 0;
    let chunk = usize::from(header >> 4) + 1;

    let mut buf = FrameBuffer::new();
    for piece in stream.chunks(chunk) {
        // An oversized length prefix: the relay closes the connection (FrameTooLarge).
        if buf.push(piece).is_err() {
            tally.closed = true;
            return tally;
        }
        loop {
            match buf.next_frame::<NodeToRelay>() {
                Ok(Some(f)) => {
                    if !session_frame(me, f, resign, &mut tally) {
                        tally.closed = true;
                        return tally;
                    }
                }
                Ok(None) => break,
                // A frame that does not decode: the relay closes (ProtocolViolation).
                Err(_) => {
                    tally.closed = true;
                    return tally;
                }
            }
        }
    }
    tally
}

/// One frame after authentication; false when the session ends on it.
fn session_frame(me: &Participant, f: NodeToRelay, resign: bool, tally: &mut SessionTally) -> bool {
    match f {
        // A second Hello is a protocol violation: the session closes.
        NodeToRelay::Hello(_) => false,
        NodeToRelay::Ping(n) => {
            answer(RelayToNode::Pong(n));
            tally.pongs += 1;
            true
        }
        NodeToRelay::Submit(s) => {
            match session_submit(me, s, resign) {
                Ok(()) => tally.accepted += 1,
                Err(code) => tally.refused.push(code),
            }
            true
        }
        NodeToRelay::Receipt(s) => {
            match session_receipt(me, s, resign) {
                Ok(()) => tally.receipts += 1,
                Err(code) => tally.refused.push(code),
            }
            true
        }
        NodeToRelay::ReceiptsStored(digests) => {
            // Passed to the store as is; the frame decoder already bounds the list.
            assert!((1..=RECEIPT_ITEMS_MAX).contains(&digests.len()));
            true
        }
        // A frame this version does not know: the session closes.
        _ => false,
    }
}

/// Signs a decodable payload again with `author`'s first fixture key (the one the fixture
/// roster lists first); the re-signed carrier holds the same bytes.
fn resigned<T: SignedPayload>(s: Signed<T>, author: &ParticipantId) -> Signed<T> {
    let value = s.decode_unverified().expect("the caller decoded it");
    let again = Signed::sign(&value, &crate::fixtures::key_of(author.as_str()))
        .expect("a decoded value re-signs");
    assert_eq!(again.bytes(), s.bytes(), "re-signing changed the bytes");
    again
}

/// Encodes an answer, a delivery or a forwarded receipt as the session writes it, and reads
/// it back as a node would.
fn answer(f: RelayToNode) {
    let bytes = encode_frame(&f).expect("every frame the relay writes encodes");
    assert!(bytes.len() <= FRAME_PREFIX_BYTES + FRAME_BYTES_MAX);
    let back: RelayToNode =
        decode_frame(&bytes[FRAME_PREFIX_BYTES..]).expect("a node decodes what the relay writes");
    assert_eq!(back, f, "the frame changed on the wire");
}

/// A refusal as the session writes it (the detail cut to the frame limit); the code.
fn refuse(subject: Subject, code: RejectCode, detail: String) -> Result<(), RejectCode> {
    let detail = frames::detail(detail);
    assert!(detail.len() <= DETAIL_BYTES_MAX);
    answer(RelayToNode::Rejected(Rejected {
        subject,
        code,
        detail,
    }));
    Err(code)
}

/// What a verified value's carrier must satisfy: the author is `me`, active, and signed
/// with one of its listed keys.
fn check_author<T: SignedPayload>(me: &Participant, author: &ParticipantId, v: &Verified<T>) {
    assert_eq!(
        author, &me.id,
        "verified, but not from the session's participant"
    );
    assert!(
        me.keys.contains(&v.signed().key()),
        "verified by an unlisted key"
    );
    assert!(roster().authorise(author, &v.signed().key()).is_ok());
}

/// A submission: accepted, or the code it is refused with.
fn session_submit(me: &Participant, s: Signed<Envelope>, resign: bool) -> Result<(), RejectCode> {
    let claimed = s.decode_unverified();
    // The relay names a refusal by bytes 2..18 (after the u16 version): they must be the id
    // of whatever decodes.
    let subject = match s
        .bytes()
        .get(2..18)
        .and_then(|b| <[u8; 16]>::try_from(b).ok())
    {
        Some(id) => Subject::Message(MessageId(id)),
        None => Subject::Frame,
    };
    if let Ok(env) = &claimed {
        assert_eq!(
            subject,
            Subject::Message(env.id),
            "bytes 2..18 are not the id"
        );
    }
    // Authorship first, on the unverified decoding.
    if let Ok(env) = &claimed {
        if env.sender != me.id {
            let detail = format!("session is {}, message is from {}", me.id, env.sender);
            return refuse(subject, RejectCode::NotAuthor, detail);
        }
    }
    let resign = resign && claimed.is_ok();
    let s = if resign { resigned(s, &me.id) } else { s };
    let v = match roster().verify_envelope(&s) {
        Ok(v) => v,
        // Re-signed with a listed key of the active author, a decodable envelope verifies.
        Err(e) if resign => panic!("a re-signed envelope from {} failed: {e}", me.id),
        // The code is the relay's choice (its `reject_code`); any code encodes alike.
        Err(e) => return refuse(subject, RejectCode::Malformed, e.to_string()),
    };
    // Verification decodes too: nothing it accepts skipped the authorship check.
    let claimed = claimed.expect("what verifies decodes");
    assert_eq!(v.value(), &claimed);
    assert_eq!(v.signed(), &s);
    check_author(me, &v.sender, &v);
    assert!(v.body.len() <= BODY_BYTES_MAX);

    let in_time = check_created_at(v.created_at_ms, SESSION_NOW_MS);
    assert_eq!(
        in_time.is_ok(),
        v.created_at_ms <= SESSION_NOW_MS + CLOCK_SKEW_FUTURE_MAX_MS
    );
    // A message in time stays in time as the clock advances.
    if in_time.is_ok() {
        assert!(check_created_at(v.created_at_ms, SESSION_NOW_MS.saturating_add(1 << 40)).is_ok());
    }
    if let Err(code) = in_time {
        return refuse(subject, code, "created_at is too far in the future".into());
    }
    session_route(me, &v)?;
    // Accepted: the relay delivers exactly these signed bytes to each recipient.
    answer(RelayToNode::Deliver(s));
    Ok(())
}

/// Routing as the relay's store does it, with the default policy, and the answer it gives.
fn session_route(me: &Participant, v: &Verified<Envelope>) -> Result<(), RejectCode> {
    let strict = Policy::default();
    let open = Policy {
        observers_may_address_anyone: true,
    };
    // The store answers "was the sender addressed by this recipient" from its tables; both
    // answers are possible.
    let routed = [false, true].map(|addressed| resolve(roster(), &strict, v, |_| addressed));
    let opened = resolve(roster(), &open, v, |_| false);
    for to in routed.iter().chain([&opened]).flatten() {
        assert!(!to.is_empty());
        assert!(!to.contains(&v.sender), "routed back to the sender");
        assert!(to.windows(2).all(|w| w[0] < w[1]), "sorted and unique");
        assert!(
            to.iter().all(|r| roster().active(r).is_ok()),
            "inactive recipient"
        );
        // The store keeps recipients comma-joined: ids never contain a comma.
        let joined = to.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(",");
        let split: Vec<&str> = joined.split(',').collect();
        assert_eq!(split, to.iter().map(|r| r.as_str()).collect::<Vec<_>>());
    }
    // The reply rule only ever widens what an observer may address; members and the
    // Secretariat are not subject to it; the open policy routes whatever the strict one does.
    if let Ok(to) = &routed[0] {
        assert_eq!(routed[1].as_ref(), Ok(to));
    }
    if me.role != Role::Observer {
        assert_eq!(routed[0], routed[1]);
    }
    if let Ok(to) = &routed[1] {
        assert_eq!(opened.as_ref(), Ok(to));
    }
    match &routed[0] {
        Ok(to) => {
            answer(RelayToNode::Accepted(Accepted {
                id: v.id,
                recipients: to.clone(),
                accepted_at_ms: SESSION_NOW_MS,
            }));
            Ok(())
        }
        Err(e) => refuse(Subject::Message(v.id), e.reject_code(), e.to_string()),
    }
}

/// A receipt: stored, or the code it is refused with.
fn session_receipt(me: &Participant, s: Signed<Receipt>, resign: bool) -> Result<(), RejectCode> {
    let claimed = s.decode_unverified();
    let subject = Subject::Receipt(s.digest());
    // As for messages: authorship before roster and signature.
    if let Ok(r) = &claimed {
        if r.recipient != me.id {
            let detail = format!("session is {}, receipt is from {}", me.id, r.recipient);
            return refuse(subject, RejectCode::NotAuthor, detail);
        }
    }
    let resign = resign && claimed.is_ok();
    let s = if resign { resigned(s, &me.id) } else { s };
    let v = match roster().verify_receipt(&s) {
        Ok(v) => v,
        Err(e) if resign => panic!("a re-signed receipt from {} failed: {e}", me.id),
        Err(e) => return refuse(subject, RejectCode::Malformed, e.to_string()),
    };
    let claimed = claimed.expect("what verifies decodes");
    assert_eq!(v.value(), &claimed);
    check_author(me, &v.recipient, &v);
    assert!((1..=RECEIPT_ITEMS_MAX).contains(&v.items.len()));
    let mut ids: Vec<MessageId> = v.items.iter().map(|i| i.id).collect();
    ids.sort();
    assert!(ids.windows(2).all(|w| w[0] != w[1]), "an item twice");
    answer(RelayToNode::ReceiptStored(s.digest()));
    // Forwarded unchanged to the senders it names.
    answer(RelayToNode::Receipt(s));
    Ok(())
}
