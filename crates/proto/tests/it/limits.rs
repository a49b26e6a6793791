//! Limits at their edges: the largest allowed value passes, one more is refused on encode
//! and on decode, and the largest values of every kind fit in a frame.

use hotline_proto::codec::{self, DecodeError, EncodeError};
use hotline_proto::envelope::{Audience, Envelope, Kind};
use hotline_proto::frame::{
    decode_frame, detail, encode_frame, Accepted, NodeToRelay, RejectCode, Rejected, RelayToNode,
    Subject,
};
use hotline_proto::id::{MessageId, ParticipantId};
use hotline_proto::limits::{
    ACCEPTED_RECIPIENTS_MAX, AUDIENCE_PARTICIPANTS_MAX, BODY_BYTES_MAX, CATEGORY_BYTES_MAX,
    DETAIL_BYTES_MAX, ENVELOPE_BYTES_MAX, FRAME_BYTES_MAX, KEYS_PER_PARTICIPANT_MAX,
    NAME_BYTES_MAX, NOTE_BYTES_MAX, OFFICER_BYTES_MAX, RECEIPT_BYTES_MAX, RECEIPT_ITEMS_MAX,
    REFERENCES_MAX, ROSTER_GROUPS_MAX, ROSTER_PARTICIPANTS_MAX, SEQ_MAX, SUBJECT_BYTES_MAX,
    TIME_MS_MAX,
};
use hotline_proto::receipt::{Receipt, ReceiptItem, ReceiptKind};
use hotline_proto::roster::{Group, Participant, Role, Roster};
use hotline_proto::sign::{Digest, PublicKey, Signature, Signed, SignedPayload};
use hotline_proto::SigningKey;

use crate::fixtures::{self, pid, to, T0_MS};

/// The field an envelope's rules refuse, checked on sign and on decode alike.
fn refused(env: &Envelope) -> Option<&'static str> {
    let on_sign = match Signed::sign(env, &fixtures::key(2)) {
        Ok(_) => None,
        Err(EncodeError::Invalid { field, .. }) => Some(field),
        Err(other) => panic!("{other:?}"),
    };
    let bytes = codec::encode(env, FRAME_BYTES_MAX).expect("encodes without checks");
    let carried = Signed::<Envelope>::from_parts(bytes, fixtures::public(2), Signature([0; 64]));
    let on_decode = match carried.decode_unverified() {
        Ok(_) => None,
        Err(DecodeError::Invalid { field, .. } | DecodeError::OverLimit { field, .. }) => {
            Some(field)
        }
        Err(DecodeError::TooLarge { .. }) => Some("too large"),
        Err(other) => panic!("{other:?}"),
    };
    assert_eq!(on_sign, on_decode, "sign and decode apply the same rules");
    on_sign
}

fn text(bytes: usize) -> String {
    // Two-byte characters where they fit, to count bytes rather than characters.
    let mut s = "é".repeat(bytes / 2);
    if bytes % 2 == 1 {
        s.push('x');
    }
    assert_eq!(s.len(), bytes);
    s
}

fn numbered_ids(n: usize) -> Vec<ParticipantId> {
    (0..n).map(|i| pid(&format!("P{i:05}"))).collect()
}

#[test]
fn envelope_text_limits() {
    let base = to("KAZ", &["CHN"]);
    let with = |f: &dyn Fn(&mut Envelope)| {
        let mut e = base.clone();
        f(&mut e);
        e
    };
    assert_eq!(refused(&with(&|e| e.body = text(BODY_BYTES_MAX))), None);
    assert_eq!(
        refused(&with(&|e| e.body = text(BODY_BYTES_MAX + 1))),
        Some("body")
    );
    assert_eq!(
        refused(&with(&|e| e.subject = text(SUBJECT_BYTES_MAX))),
        None
    );
    assert_eq!(
        refused(&with(&|e| e.subject = text(SUBJECT_BYTES_MAX + 1))),
        Some("subject")
    );
    assert_eq!(refused(&with(&|e| e.subject.clear())), Some("subject"));
    assert_eq!(
        refused(&with(&|e| e.category = Some(text(CATEGORY_BYTES_MAX)))),
        None
    );
    assert_eq!(
        refused(&with(&|e| e.category = Some(text(CATEGORY_BYTES_MAX + 1)))),
        Some("category")
    );
    assert_eq!(
        refused(&with(&|e| e.category = Some(String::new()))),
        Some("category")
    );
    assert_eq!(
        refused(&with(
            &|e| e.audience = Audience::Group(text(NAME_BYTES_MAX))
        )),
        None
    );
    assert_eq!(
        refused(&with(
            &|e| e.audience = Audience::Group(text(NAME_BYTES_MAX + 1))
        )),
        Some("audience")
    );
    // Over its limit, a group name is `OverLimit` (the relay answers `TooLarge`); empty, it
    // is `Invalid` (`Malformed`).
    let decoded = |name: String| {
        let env = with(&|e| e.audience = Audience::Group(name.clone()));
        let bytes = codec::encode(&env, FRAME_BYTES_MAX).expect("encodes without checks");
        Signed::<Envelope>::from_parts(bytes, fixtures::public(2), Signature([0; 64]))
            .decode_unverified()
    };
    assert!(
        matches!(
            decoded(text(NAME_BYTES_MAX + 1)),
            Err(DecodeError::OverLimit {
                field: "audience",
                max: NAME_BYTES_MAX
            })
        ),
        "{:?}",
        decoded(text(NAME_BYTES_MAX + 1))
    );
    assert!(matches!(
        decoded(String::new()),
        Err(DecodeError::Invalid {
            field: "audience",
            ..
        })
    ));
}

#[test]
fn envelope_list_and_field_rules() {
    let base = to("KAZ", &["CHN"]);
    let with = |f: &dyn Fn(&mut Envelope)| {
        let mut e = base.clone();
        f(&mut e);
        e
    };
    let refs = |n: usize| {
        (0..n)
            .map(|i| MessageId([i as u8 + 1; 16]))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        refused(&with(&|e| e.references = refs(REFERENCES_MAX))),
        None
    );
    assert_eq!(
        refused(&with(&|e| e.references = refs(REFERENCES_MAX + 1))),
        Some("references")
    );
    assert_eq!(
        refused(&with(
            &|e| e.audience = Audience::Participants(numbered_ids(AUDIENCE_PARTICIPANTS_MAX))
        )),
        None
    );
    assert_eq!(
        refused(&with(&|e| e.audience = Audience::Participants(
            numbered_ids(AUDIENCE_PARTICIPANTS_MAX + 1)
        ))),
        Some("audience")
    );
    assert_eq!(
        refused(&with(&|e| e.audience = Audience::Participants(vec![]))),
        Some("audience")
    );
    assert_eq!(
        refused(&with(&|e| e.audience = Audience::Participants(vec![
            pid("CHN"),
            pid("IND"),
            pid("CHN")
        ]))),
        Some("audience")
    );
    assert_eq!(refused(&with(&|e| e.seq.0 = 0)), Some("seq"));
    // Stores keep sequence numbers as SQLite's signed 64-bit integers.
    assert_eq!(refused(&with(&|e| e.seq.0 = SEQ_MAX)), None);
    assert_eq!(refused(&with(&|e| e.seq.0 = SEQ_MAX + 1)), Some("seq"));
    assert_eq!(refused(&with(&|e| e.seq.0 = u64::MAX)), Some("seq"));
    // Times too: a deadline past 2^63 - 1 ms could not be stored.
    let late = |e: &mut Envelope, by: u64| {
        e.created_at_ms = TIME_MS_MAX - 1;
        e.respond_by_ms = Some(by);
    };
    assert_eq!(refused(&with(&|e| late(e, TIME_MS_MAX))), None);
    assert_eq!(
        refused(&with(&|e| late(e, TIME_MS_MAX + 1))),
        Some("respond_by_ms")
    );
    assert_eq!(
        refused(&with(&|e| {
            e.created_at_ms = TIME_MS_MAX + 1;
            e.respond_by_ms = None;
        })),
        Some("created_at_ms")
    );
    assert_eq!(refused(&with(&|e| e.version = 2)), Some("version"));
    assert_eq!(
        refused(&with(&|e| e.respond_by_ms = Some(e.created_at_ms))),
        Some("respond_by_ms")
    );
    assert_eq!(
        refused(&with(&|e| e.respond_by_ms = Some(e.created_at_ms + 1))),
        None
    );
    for kind in [Kind::Update, Kind::Cancel, Kind::Reply] {
        assert_eq!(
            refused(&with(&|e| e.kind = kind)),
            Some("references"),
            "{kind:?}"
        );
    }
    assert_eq!(
        refused(&with(&|e| e.references = vec![e.id])),
        Some("references"),
        "a message referencing itself"
    );
}

fn receipt(items: usize, kind: ReceiptKind) -> Receipt {
    Receipt {
        version: hotline_proto::PROTOCOL_VERSION,
        recipient: pid("IND"),
        kind,
        created_at_ms: T0_MS,
        items: (0..items)
            .map(|i| ReceiptItem {
                id: MessageId((i as u128).to_le_bytes()),
                sender: pid("TURKPA01"),
                digest: Digest([0xDD; 32]),
            })
            .collect(),
    }
}

fn receipt_refused(r: &Receipt) -> Option<&'static str> {
    match r.check() {
        Ok(()) => None,
        Err(DecodeError::Invalid { field, .. } | DecodeError::OverLimit { field, .. }) => {
            Some(field)
        }
        Err(other) => panic!("{other:?}"),
    }
}

#[test]
fn receipt_limits() {
    let ack = |officer: usize, note: Option<usize>| ReceiptKind::Acknowledged {
        officer: text(officer),
        note: note.map(text),
    };
    // The largest receipt: every item, the longest officer and note, the longest ids.
    let largest = receipt(
        RECEIPT_ITEMS_MAX,
        ack(OFFICER_BYTES_MAX, Some(NOTE_BYTES_MAX)),
    );
    let signed = Signed::sign(&largest, &fixtures::key(4)).expect("the largest receipt signs");
    assert!(signed.bytes().len() <= RECEIPT_BYTES_MAX);
    let frame = encode_frame(&NodeToRelay::Receipt(signed)).expect("and fits a frame");
    assert!(frame.len() <= FRAME_BYTES_MAX + 4);

    assert_eq!(
        receipt_refused(&receipt(RECEIPT_ITEMS_MAX + 1, ReceiptKind::Delivered)),
        Some("items")
    );
    assert_eq!(
        receipt_refused(&receipt(0, ReceiptKind::Delivered)),
        Some("items")
    );
    let at = |ms: u64| Receipt {
        created_at_ms: ms,
        ..receipt(1, ReceiptKind::Delivered)
    };
    assert_eq!(receipt_refused(&at(TIME_MS_MAX)), None);
    assert_eq!(receipt_refused(&at(TIME_MS_MAX + 1)), Some("created_at_ms"));
    assert_eq!(
        receipt_refused(&receipt(1, ack(OFFICER_BYTES_MAX + 1, None))),
        Some("officer")
    );
    assert_eq!(
        receipt_refused(&receipt(
            1,
            ReceiptKind::Acknowledged {
                officer: "  \t".into(),
                note: None
            }
        )),
        Some("officer"),
        "a blank officer"
    );
    assert_eq!(
        receipt_refused(&receipt(1, ack(8, Some(NOTE_BYTES_MAX + 1)))),
        Some("note")
    );
    let mut twice = receipt(2, ReceiptKind::Delivered);
    twice.items[1].id = twice.items[0].id;
    assert_eq!(
        receipt_refused(&twice),
        Some("items"),
        "a message listed twice"
    );
}

/// The largest roster the rules allow in participants and keys, with the longest names and
/// every group, signs and fits a frame.
#[test]
fn a_roster_at_the_participant_and_key_limits_fits_a_frame() {
    let mut seed = 0u32;
    let mut next_key = || {
        seed += 1;
        let mut s = [0u8; 32];
        s[..4].copy_from_slice(&seed.to_le_bytes());
        PublicKey::of(&SigningKey::from_bytes(&s))
    };
    let ids = numbered_ids(ROSTER_PARTICIPANTS_MAX);
    let participants: Vec<Participant> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| Participant {
            id: id.clone(),
            name: text(NAME_BYTES_MAX),
            role: if i == 0 {
                Role::Secretariat
            } else {
                Role::Member
            },
            keys: (0..KEYS_PER_PARTICIPANT_MAX).map(|_| next_key()).collect(),
            revoked: false,
        })
        .collect();
    // Every group names 32 participants: groups are coordinators of an area, not the whole
    // network. (The rules do not cap a group's size; only ROSTER_BYTES_MAX does.)
    let groups: Vec<Group> = (0..ROSTER_GROUPS_MAX)
        .map(|g| Group {
            name: format!("{g:0width$}", width = NAME_BYTES_MAX),
            members: ids.iter().skip(g).take(32).cloned().collect(),
        })
        .collect();
    let roster = Roster {
        protocol_version: hotline_proto::PROTOCOL_VERSION,
        version: u64::MAX,
        issued_at_ms: T0_MS,
        network: text(NAME_BYTES_MAX),
        participants,
        groups,
    };
    let signed = Signed::sign(&roster, &fixtures::roster_key()).expect("the large roster signs");
    let frame = encode_frame(&RelayToNode::RosterUpdate(signed.clone())).expect("fits a frame");
    assert_eq!(
        decode_frame::<RelayToNode>(&frame[4..]),
        Ok(RelayToNode::RosterUpdate(signed))
    );

    let mut too_many = roster.clone();
    too_many.participants.push(Participant {
        id: pid("EXTRA"),
        ..too_many.participants[1].clone()
    });
    too_many.participants.last_mut().expect("pushed").keys = vec![next_key()];
    assert!(matches!(
        too_many.check(),
        Err(DecodeError::Invalid {
            field: "participants",
            ..
        })
    ));
    let mut too_many = roster;
    too_many.groups.push(Group {
        name: "one-more".into(),
        members: vec![pid("P00001")],
    });
    assert!(matches!(
        too_many.check(),
        Err(DecodeError::Invalid {
            field: "groups",
            ..
        })
    ));
}

#[test]
fn the_largest_envelope_fits_a_frame() {
    let env = Envelope {
        audience: Audience::Participants(numbered_ids(AUDIENCE_PARTICIPANTS_MAX)),
        references: (1..=REFERENCES_MAX as u8)
            .map(|i| MessageId([i; 16]))
            .collect(),
        category: Some(text(CATEGORY_BYTES_MAX)),
        subject: text(SUBJECT_BYTES_MAX),
        body: text(BODY_BYTES_MAX),
        // The latest time a store can keep: nine bytes, as long as any u64 encodes.
        respond_by_ms: Some(TIME_MS_MAX),
        ..to("TURKPA01", &["KAZ"])
    };
    let signed = Signed::sign(&env, &fixtures::key(2)).expect("signs");
    assert!(signed.bytes().len() <= ENVELOPE_BYTES_MAX);
    let frame = encode_frame(&RelayToNode::Deliver(signed)).expect("fits a frame");
    assert!(frame.len() <= FRAME_BYTES_MAX + 4);
}

#[test]
fn frame_detail_and_recipient_limits() {
    let rejected = |d: String| {
        RelayToNode::Rejected(Rejected {
            subject: Subject::Frame,
            code: RejectCode::Malformed,
            detail: d,
        })
    };
    encode_frame(&rejected("x".repeat(DETAIL_BYTES_MAX))).expect("the longest detail");
    let long = rejected("x".repeat(DETAIL_BYTES_MAX + 1));
    assert!(matches!(
        encode_frame(&long),
        Err(EncodeError::Invalid {
            field: "detail",
            ..
        })
    ));
    // A peer that sends it anyway is refused on decode.
    let payload = codec::encode(&long, FRAME_BYTES_MAX).expect("encodes without checks");
    assert!(matches!(
        decode_frame::<RelayToNode>(&payload),
        Err(DecodeError::Invalid {
            field: "detail",
            ..
        })
    ));

    let accepted = |n: usize| {
        RelayToNode::Accepted(Accepted {
            id: fixtures::mid(1),
            recipients: numbered_ids(n),
            accepted_at_ms: T0_MS,
        })
    };
    encode_frame(&accepted(ACCEPTED_RECIPIENTS_MAX)).expect("the most recipients");
    let payload =
        codec::encode(&accepted(ACCEPTED_RECIPIENTS_MAX + 1), FRAME_BYTES_MAX).expect("encodes");
    assert!(matches!(
        decode_frame::<RelayToNode>(&payload),
        Err(DecodeError::Invalid {
            field: "recipients",
            ..
        })
    ));
    // A node stores the acceptance time: one past 2^63 - 1 ms is refused, not stored.
    let at = |ms: u64| {
        RelayToNode::Accepted(Accepted {
            id: fixtures::mid(1),
            recipients: numbered_ids(1),
            accepted_at_ms: ms,
        })
    };
    let frame = encode_frame(&at(TIME_MS_MAX)).expect("the latest time");
    assert_eq!(
        decode_frame::<RelayToNode>(&frame[4..]),
        Ok(at(TIME_MS_MAX))
    );
    let payload = codec::encode(&at(TIME_MS_MAX + 1), FRAME_BYTES_MAX).expect("encodes");
    assert!(matches!(
        decode_frame::<RelayToNode>(&payload),
        Err(DecodeError::Invalid {
            field: "accepted_at_ms",
            ..
        })
    ));
}

#[test]
fn receipts_stored_names_one_to_the_most_receipts() {
    let stored = |n: usize| NodeToRelay::ReceiptsStored(vec![Digest([7; 32]); n]);
    let frame = encode_frame(&stored(RECEIPT_ITEMS_MAX)).expect("the most digests");
    assert_eq!(
        decode_frame::<NodeToRelay>(&frame[4..]),
        Ok(stored(RECEIPT_ITEMS_MAX))
    );
    for n in [0, RECEIPT_ITEMS_MAX + 1] {
        assert!(
            matches!(encode_frame(&stored(n)), Err(EncodeError::Invalid { .. })),
            "{n}"
        );
        let payload = codec::encode(&stored(n), FRAME_BYTES_MAX).expect("encodes unchecked");
        assert!(
            matches!(
                decode_frame::<NodeToRelay>(&payload),
                Err(DecodeError::Invalid { .. })
            ),
            "{n}"
        );
    }
}

#[test]
fn detail_truncates_on_a_character_boundary() {
    assert_eq!(detail("short"), "short");
    let s = format!("x{}", "é".repeat(DETAIL_BYTES_MAX));
    let d = detail(s.clone());
    assert!(d.len() <= DETAIL_BYTES_MAX && d.len() >= DETAIL_BYTES_MAX - 1);
    assert!(s.starts_with(&d));
}
