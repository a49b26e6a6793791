//! Deterministic fixtures: keys from fixed seeds, a small roster, envelopes and receipts.
//!
//! Everything here is a pure function of constants, so the test vectors and the fuzz seed
//! corpus built from it are reproducible byte for byte. The fuzz targets include this file
//! by path (`#[path = …] mod fixtures;`), so it may name nothing but `hotline_proto`.

#![allow(dead_code)]

use hotline_proto::auth::AuthProof;
use hotline_proto::envelope::{Audience, Envelope, Kind, Precedence, Status, PROTOCOL_VERSION};
use hotline_proto::frame::{
    Accepted, ErrorCode, ErrorFrame, Hello, NodeToRelay, RejectCode, Rejected, RelayToNode,
    Subject, Welcome,
};
use hotline_proto::id::{MessageId, ParticipantId, Seq};
use hotline_proto::receipt::{Receipt, ReceiptItem, ReceiptKind};
use hotline_proto::roster::{Group, Participant, Role, Roster};
use hotline_proto::sign::{Digest, PublicKey, Signed, Verified};
use hotline_proto::{verify_roster, SigningKey};

/// 2026-01-01T00:00:00Z, in milliseconds since the Unix epoch: every fixture's clock.
pub(crate) const T0_MS: u64 = 1_767_225_600_000;

/// Seed byte of the Secretariat's roster key (distinct from every participant key).
pub(crate) const ROSTER_KEY_SEED: u8 = 0x52;

/// Seed bytes of the participant keys, as `(id, role, seeds, revoked)`.
///
/// KAZ holds two keys (a rotation in progress); XXR is a revoked member; UN and JPN are
/// observers.
pub(crate) const PARTICIPANTS: &[(&str, Role, &[u8], bool)] = &[
    ("SEC", Role::Secretariat, &[1], false),
    ("KAZ", Role::Member, &[2, 12], false),
    ("CHN", Role::Member, &[3], false),
    ("IND", Role::Member, &[4], false),
    ("TUR", Role::Member, &[5], false),
    ("UN", Role::Observer, &[6], false),
    ("JPN", Role::Observer, &[7], false),
    ("XXR", Role::Member, &[8], true),
];

/// A signing key from a fixed seed: `[n; 32]`.
pub(crate) fn key(n: u8) -> SigningKey {
    SigningKey::from_bytes(&[n; 32])
}

/// The public half of [`key`]`(n)`.
pub(crate) fn public(n: u8) -> PublicKey {
    PublicKey::of(&key(n))
}

/// The Secretariat's roster key.
pub(crate) fn roster_key() -> SigningKey {
    key(ROSTER_KEY_SEED)
}

/// A participant id that the caller knows is valid.
pub(crate) fn pid(code: &str) -> ParticipantId {
    ParticipantId::new(code).expect("fixture ids are valid")
}

/// A message id made of one repeated byte.
pub(crate) fn mid(n: u8) -> MessageId {
    MessageId([n; 16])
}

/// The first (current) signing key of a fixture participant.
pub(crate) fn key_of(code: &str) -> SigningKey {
    let (_, _, seeds, _) = PARTICIPANTS
        .iter()
        .find(|(id, ..)| *id == code)
        .expect("fixture participant exists");
    key(seeds[0])
}

/// The fixture roster, version 1.
pub(crate) fn roster() -> Roster {
    Roster {
        protocol_version: PROTOCOL_VERSION,
        version: 1,
        issued_at_ms: T0_MS,
        network: "CICA".into(),
        participants: PARTICIPANTS
            .iter()
            .map(|(id, role, seeds, revoked)| Participant {
                id: pid(id),
                name: format!("{id} national contact point"),
                role: *role,
                keys: seeds.iter().map(|s| public(*s)).collect(),
                revoked: *revoked,
            })
            .collect(),
        groups: vec![
            Group {
                name: "maritime".into(),
                members: vec![pid("KAZ"), pid("TUR"), pid("UN"), pid("XXR")],
            },
            Group {
                name: "new-challenges".into(),
                members: vec![pid("CHN"), pid("IND")],
            },
        ],
    }
}

/// The fixture roster, signed with the roster key.
pub(crate) fn signed_roster() -> Signed<Roster> {
    Signed::sign(&roster(), &roster_key()).expect("fixture roster is valid")
}

/// The fixture roster, verified against the roster key.
pub(crate) fn verified_roster() -> Verified<Roster> {
    verify_roster(&signed_roster(), &PublicKey::of(&roster_key())).expect("fixture roster verifies")
}

/// A minimal valid envelope: an alert from `sender` to `audience`.
pub(crate) fn envelope(sender: &str, audience: Audience) -> Envelope {
    Envelope {
        version: PROTOCOL_VERSION,
        id: mid(0xA1),
        sender: pid(sender),
        seq: Seq(1),
        audience,
        kind: Kind::Alert,
        precedence: Precedence::Routine,
        status: Status::Actual,
        created_at_ms: T0_MS,
        respond_by_ms: None,
        references: vec![],
        category: None,
        subject: "Test".into(),
        body: String::new(),
    }
}

/// An envelope addressed to the listed participants.
pub(crate) fn to(sender: &str, recipients: &[&str]) -> Envelope {
    envelope(
        sender,
        Audience::Participants(recipients.iter().map(|r| pid(r)).collect()),
    )
}

/// A delivered receipt from `recipient` for the given signed messages.
pub(crate) fn delivered(recipient: &str, messages: &[&Signed<Envelope>]) -> Receipt {
    Receipt {
        version: PROTOCOL_VERSION,
        recipient: pid(recipient),
        kind: ReceiptKind::Delivered,
        created_at_ms: T0_MS + 1_000,
        items: messages.iter().map(|m| item(m)).collect(),
    }
}

/// The receipt item naming a signed message.
pub(crate) fn item(m: &Signed<Envelope>) -> ReceiptItem {
    let env = m.decode_unverified().expect("fixture message decodes");
    ReceiptItem {
        id: env.id,
        sender: env.sender,
        digest: m.digest(),
    }
}

/// A signed alert from KAZ to CHN and IND.
pub(crate) fn signed_alert() -> Signed<Envelope> {
    let env = Envelope {
        precedence: Precedence::Flash,
        respond_by_ms: Some(T0_MS + 30 * 60 * 1000),
        category: Some("maritime".into()),
        body: "Two vessels collided west of Aktau.".into(),
        ..to("KAZ", &["CHN", "IND"])
    };
    Signed::sign(&env, &key_of("KAZ")).expect("fixture envelope is valid")
}

/// IND's signed delivered receipt for [`signed_alert`].
pub(crate) fn signed_receipt() -> Signed<Receipt> {
    Signed::sign(&delivered("IND", &[&signed_alert()]), &key_of("IND"))
        .expect("fixture receipt is valid")
}

/// KAZ's signed authentication proof over a fixed channel binding.
pub(crate) fn signed_auth() -> Signed<AuthProof> {
    let proof = AuthProof {
        version: PROTOCOL_VERSION,
        participant: pid("KAZ"),
        channel_binding: [0xCB; 32],
        created_at_ms: T0_MS,
    };
    Signed::sign(&proof, &key_of("KAZ")).expect("fixture proof is valid")
}

/// One frame of every `NodeToRelay` variant, in tag order.
pub(crate) fn node_frames() -> Vec<NodeToRelay> {
    vec![
        NodeToRelay::Hello(Hello {
            auth: signed_auth(),
            roster_version: 1,
        }),
        NodeToRelay::Submit(signed_alert()),
        NodeToRelay::Receipt(signed_receipt()),
        NodeToRelay::Ping(u64::MAX),
        NodeToRelay::ReceiptsStored(vec![signed_receipt().digest(), Digest([0x11; 32])]),
    ]
}

/// One frame of every `RelayToNode` variant (and both `Welcome` forms and every `Subject`),
/// in tag order.
pub(crate) fn relay_frames() -> Vec<RelayToNode> {
    let alert = signed_alert();
    let receipt = signed_receipt();
    vec![
        RelayToNode::Welcome(Welcome {
            relay_time_ms: T0_MS,
            last_seq: Seq(41),
            roster: Some(signed_roster()),
        }),
        RelayToNode::Welcome(Welcome {
            relay_time_ms: T0_MS,
            last_seq: Seq(0),
            roster: None,
        }),
        RelayToNode::Accepted(Accepted {
            id: mid(0xA1),
            recipients: vec![pid("CHN"), pid("IND")],
            accepted_at_ms: T0_MS + 5,
        }),
        RelayToNode::Rejected(Rejected {
            subject: Subject::Message(mid(0xA2)),
            code: RejectCode::ReplayedSeq,
            detail: "sequence number 3 does not exceed 41".into(),
        }),
        RelayToNode::Rejected(Rejected {
            subject: Subject::Receipt(receipt.digest()),
            code: RejectCode::UnknownMessage,
            detail: String::new(),
        }),
        RelayToNode::Rejected(Rejected {
            subject: Subject::Frame,
            code: RejectCode::Malformed,
            detail: "trailing bytes".into(),
        }),
        RelayToNode::Deliver(alert),
        RelayToNode::Receipt(receipt.clone()),
        RelayToNode::ReceiptStored(receipt.digest()),
        RelayToNode::RosterUpdate(signed_roster()),
        RelayToNode::Pong(7),
        RelayToNode::Error(ErrorFrame {
            code: ErrorCode::GoingAway,
            detail: "shutting down".into(),
        }),
    ]
}
