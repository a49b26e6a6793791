//! Roster rules, verification against a roster, routing and the clock check.

use std::cell::RefCell;

use ed25519_dalek::{Signer, VerifyingKey};
use hotline_proto::codec::{self, DecodeError, EncodeError};
use hotline_proto::envelope::{Audience, Envelope, Kind};
use hotline_proto::frame::RejectCode;
use hotline_proto::limits::{CLOCK_SKEW_FUTURE_MAX_MS, ROSTER_BYTES_MAX};
use hotline_proto::roster::{Group, Role, Roster};
use hotline_proto::routing::{resolve, Policy, RouteError};
use hotline_proto::sign::{
    PublicKey, Signature, Signed, SignedPayload, VerifyError, DOMAIN_ROSTER,
};
use hotline_proto::{check_created_at, verify_roster, ParticipantId};

use crate::fixtures::{self, key, key_of, pid, public, roster, to, T0_MS};

// --- Roster rules -----------------------------------------------------------------------

/// The field a roster's check refuses, or `None` if it passes.
fn refused_field(r: &Roster) -> Option<&'static str> {
    match r.check() {
        Ok(()) => None,
        Err(DecodeError::Invalid { field, .. }) => Some(field),
        Err(other) => panic!("check answers Invalid, not {other:?}"),
    }
}

fn entry<'a>(r: &'a mut Roster, id: &str) -> &'a mut hotline_proto::Participant {
    r.participants
        .iter_mut()
        .find(|p| p.id.as_str() == id)
        .expect("fixture participant")
}

/// A 32-byte string that is not the encoding of any curve point.
fn not_a_point() -> [u8; 32] {
    (2u8..=255)
        .map(|y| {
            let mut b = [0u8; 32];
            b[0] = y;
            b
        })
        .find(|b| VerifyingKey::from_bytes(b).is_err())
        .expect("about half of all y values are not on the curve")
}

#[test]
fn the_fixture_roster_is_valid() {
    assert_eq!(refused_field(&roster()), None);
}

#[test]
fn duplicate_participant_ids_are_refused() {
    let mut r = roster();
    let mut twin = r.participants[1].clone();
    twin.keys = vec![public(40)];
    r.participants.push(twin);
    assert_eq!(refused_field(&r), Some("participants"));
}

#[test]
fn unknown_group_members_are_refused() {
    let mut r = roster();
    r.groups[0].members.push(pid("MNG"));
    assert_eq!(refused_field(&r), Some("groups"));
    let mut r = roster();
    r.groups[1].members.clear();
    assert_eq!(refused_field(&r), Some("groups"), "an empty group");
    let mut r = roster();
    r.groups.push(Group {
        name: "maritime".into(),
        members: vec![pid("KAZ")],
    });
    assert_eq!(refused_field(&r), Some("groups"), "a group name twice");
}

#[test]
fn weak_and_malformed_keys_are_refused() {
    let identity = crate::vectors::identity_point();
    // The point (0, -1), of order 2.
    let mut order_two = [0xff; 32];
    order_two[0] = 0xec;
    order_two[31] = 0x7f;
    for bad in [identity, order_two, not_a_point()] {
        let mut r = roster();
        entry(&mut r, "CHN").keys = vec![PublicKey(bad)];
        assert_eq!(refused_field(&r), Some("keys"), "{}", hex::encode(bad));
        assert_eq!(PublicKey(bad).to_verifying_key(), Err(VerifyError::BadKey));
    }
}

#[test]
fn key_lists_are_checked() {
    let mut r = roster();
    entry(&mut r, "CHN").keys = vec![public(2)];
    assert_eq!(refused_field(&r), Some("keys"), "KAZ's key listed for CHN");
    let mut r = roster();
    entry(&mut r, "CHN").keys.clear();
    assert_eq!(refused_field(&r), Some("keys"), "no key");
    let mut r = roster();
    entry(&mut r, "CHN").keys = (40..45).map(public).collect();
    assert_eq!(refused_field(&r), Some("keys"), "five keys");
    let mut r = roster();
    entry(&mut r, "CHN").keys = (40..44).map(public).collect();
    assert_eq!(refused_field(&r), None, "four keys");
}

#[test]
fn a_roster_needs_an_active_secretariat() {
    let mut r = roster();
    entry(&mut r, "SEC").role = Role::Member;
    assert_eq!(refused_field(&r), Some("participants"));
    let mut r = roster();
    entry(&mut r, "SEC").revoked = true;
    assert_eq!(
        refused_field(&r),
        Some("participants"),
        "revoked Secretariat"
    );
}

#[test]
fn roster_header_rules() {
    let mut r = roster();
    r.version = 0;
    assert_eq!(refused_field(&r), Some("version"));
    let mut r = roster();
    r.protocol_version = 2;
    assert_eq!(refused_field(&r), Some("protocol_version"));
    let mut r = roster();
    r.network.clear();
    assert_eq!(refused_field(&r), Some("network"));
    let mut r = roster();
    entry(&mut r, "UN").name.clear();
    assert_eq!(refused_field(&r), Some("name"));
}

#[test]
fn an_invalid_roster_is_neither_signed_nor_accepted() {
    let mut r = roster();
    entry(&mut r, "CHN").keys = vec![PublicKey(crate::vectors::identity_point())];
    assert!(matches!(
        Signed::sign(&r, &fixtures::roster_key()),
        Err(EncodeError::Invalid { field: "keys", .. })
    ));
    // Validly signed by the roster key, but breaking a rule: refused on decode.
    let bytes = codec::encode(&r, ROSTER_BYTES_MAX).expect("encodes without checks");
    let sig = fixtures::roster_key().sign(&[DOMAIN_ROSTER, &bytes].concat());
    let signed = Signed::<Roster>::from_parts(
        bytes,
        PublicKey::of(&fixtures::roster_key()),
        Signature(sig.to_bytes()),
    );
    assert!(matches!(
        verify_roster(&signed, &PublicKey::of(&fixtures::roster_key())),
        Err(VerifyError::Decode(DecodeError::Invalid {
            field: "keys",
            ..
        }))
    ));
}

// --- Verification against the roster and the roster key ---------------------------------

fn signed(env: &Envelope, seed: u8) -> Signed<Envelope> {
    Signed::sign(env, &key(seed)).expect("test envelopes are valid")
}

#[test]
fn verify_envelope_accepts_every_listed_key() {
    let roster = fixtures::verified_roster();
    let env = to("KAZ", &["CHN"]);
    let v = roster
        .verify_envelope(&signed(&env, 2))
        .expect("current key");
    assert_eq!(v.value(), &env);
    roster
        .verify_envelope(&signed(&env, 12))
        .expect("second key during a rotation");
}

#[test]
fn verify_envelope_refuses_unknown_revoked_and_unlisted() {
    let roster = fixtures::verified_roster();
    assert_eq!(
        roster
            .verify_envelope(&signed(&to("MNG", &["KAZ"]), 30))
            .map(|_| ()),
        Err(VerifyError::UnknownSigner(pid("MNG")))
    );
    assert_eq!(
        roster
            .verify_envelope(&signed(&to("XXR", &["KAZ"]), 8))
            .map(|_| ()),
        Err(VerifyError::Revoked(pid("XXR")))
    );
    // CHN's key is on the roster, but not for KAZ.
    assert_eq!(
        roster
            .verify_envelope(&signed(&to("KAZ", &["IND"]), 3))
            .map(|_| ()),
        Err(VerifyError::KeyNotAuthorised(public(3)))
    );
    assert_eq!(
        roster
            .verify_envelope(&signed(&to("KAZ", &["IND"]), 99))
            .map(|_| ()),
        Err(VerifyError::KeyNotAuthorised(public(99)))
    );
}

#[test]
fn verify_envelope_refuses_bad_signatures_and_bytes() {
    let roster = fixtures::verified_roster();
    let good = fixtures::signed_alert();
    roster.verify_envelope(&good).expect("the fixture verifies");

    let mut sig = good.signature().0;
    sig[10] ^= 0x40;
    let forged = Signed::<Envelope>::from_parts(good.bytes().to_vec(), good.key(), Signature(sig));
    assert_eq!(
        roster.verify_envelope(&forged).map(|_| ()),
        Err(VerifyError::BadSignature)
    );

    // The body still decodes after the change, so only the signature catches it.
    let mut bytes = good.bytes().to_vec();
    *bytes.last_mut().expect("non-empty body") ^= 0x01;
    let tampered = Signed::<Envelope>::from_parts(bytes, good.key(), good.signature());
    tampered.decode_unverified().expect("still well-formed");
    assert_eq!(
        roster.verify_envelope(&tampered).map(|_| ()),
        Err(VerifyError::BadSignature)
    );

    let garbage = Signed::<Envelope>::from_parts(vec![1, 2, 3], good.key(), good.signature());
    assert!(matches!(
        roster.verify_envelope(&garbage),
        Err(VerifyError::Decode(_))
    ));

    let malleated = Signed::<Envelope>::from_parts(
        good.bytes().to_vec(),
        good.key(),
        Signature(crate::vectors::malleate(&good.signature().0)),
    );
    assert_eq!(
        roster.verify_envelope(&malleated).map(|_| ()),
        Err(VerifyError::BadSignature)
    );
}

#[test]
fn verify_receipt_checks_the_recipient() {
    let roster = fixtures::verified_roster();
    let receipt = fixtures::signed_receipt();
    let v = roster
        .verify_receipt(&receipt)
        .expect("IND's receipt verifies");
    assert_eq!(v.recipient, pid("IND"));
    assert!(!v.is_ack());

    let by_other = Signed::sign(
        receipt.decode_unverified().as_ref().expect("decodes"),
        &key(3),
    )
    .expect("signs");
    assert_eq!(
        roster.verify_receipt(&by_other).map(|_| ()),
        Err(VerifyError::KeyNotAuthorised(public(3)))
    );
    let unknown = fixtures::delivered("MNG", &[&fixtures::signed_alert()]);
    let unknown = Signed::sign(&unknown, &key(30)).expect("signs");
    assert_eq!(
        roster.verify_receipt(&unknown).map(|_| ()),
        Err(VerifyError::UnknownSigner(pid("MNG")))
    );
}

#[test]
fn verify_roster_needs_the_pinned_key() {
    let signed = fixtures::signed_roster();
    let pinned = PublicKey::of(&fixtures::roster_key());
    verify_roster(&signed, &pinned).expect("the pinned key verifies");
    // A participant's key is not the roster key, even the Secretariat's.
    assert_eq!(
        verify_roster(&signed, &public(1)).map(|_| ()),
        Err(VerifyError::KeyNotAuthorised(pinned))
    );
    let by_sec = Signed::sign(&roster(), &key_of("SEC")).expect("signs");
    assert_eq!(
        verify_roster(&by_sec, &pinned).map(|_| ()),
        Err(VerifyError::KeyNotAuthorised(public(1)))
    );
    // Claiming the pinned key with another key's signature.
    let claimed = Signed::<Roster>::from_parts(signed.bytes().to_vec(), pinned, by_sec.signature());
    assert_eq!(
        verify_roster(&claimed, &pinned).map(|_| ()),
        Err(VerifyError::BadSignature)
    );
}

#[test]
fn roster_lookups() {
    let r = roster();
    assert_eq!(
        r.participant(&pid("UN")).map(|p| p.role),
        Some(Role::Observer)
    );
    assert!(r.participant(&pid("MNG")).is_none());
    assert_eq!(r.group("maritime").map(|g| g.members.len()), Some(4));
    assert!(r.group("nope").is_none());
    assert_eq!(
        r.active(&pid("XXR")).map(|_| ()),
        Err(VerifyError::Revoked(pid("XXR")))
    );
    assert_eq!(r.authorise(&pid("KAZ"), &public(12)), Ok(()));
    assert_eq!(
        r.authorise(&pid("KAZ"), &public(4)),
        Err(VerifyError::KeyNotAuthorised(public(4)))
    );
}

// --- Routing ----------------------------------------------------------------------------

fn ids(codes: &[&str]) -> Vec<ParticipantId> {
    codes.iter().map(|c| pid(c)).collect()
}

fn route(env: &Envelope) -> Result<Vec<ParticipantId>, RouteError> {
    resolve(&roster(), &Policy::default(), env, |_| false)
}

fn with_kind(env: Envelope, kind: Kind) -> Envelope {
    Envelope {
        kind,
        references: if kind.needs_reference() {
            vec![fixtures::mid(0x01)]
        } else {
            vec![]
        },
        ..env
    }
}

#[test]
fn participants_resolve_sorted_without_the_sender() {
    assert_eq!(route(&to("KAZ", &["IND", "CHN"])), Ok(ids(&["CHN", "IND"])));
    assert_eq!(route(&to("KAZ", &["KAZ", "CHN"])), Ok(ids(&["CHN"])));
    assert_eq!(route(&to("KAZ", &["KAZ"])), Err(RouteError::NoRecipients));
    assert_eq!(
        route(&to("KAZ", &["UN"])),
        Ok(ids(&["UN"])),
        "members may address observers"
    );
}

#[test]
fn unknown_and_revoked_recipients_are_refused() {
    assert_eq!(
        route(&to("KAZ", &["CHN", "MNG"])),
        Err(RouteError::UnknownRecipient(pid("MNG")))
    );
    assert_eq!(
        route(&to("KAZ", &["XXR"])),
        Err(RouteError::UnknownRecipient(pid("XXR")))
    );
}

#[test]
fn groups_resolve_to_active_members() {
    let maritime = |sender| fixtures::envelope(sender, Audience::Group("maritime".into()));
    // XXR is in the group but revoked.
    assert_eq!(route(&maritime("CHN")), Ok(ids(&["KAZ", "TUR", "UN"])));
    assert_eq!(route(&maritime("KAZ")), Ok(ids(&["TUR", "UN"])));
    assert_eq!(
        route(&fixtures::envelope("KAZ", Audience::Group("nope".into()))),
        Err(RouteError::UnknownGroup("nope".into()))
    );
}

#[test]
fn all_members_excludes_observers_and_everyone_includes_them() {
    assert_eq!(
        route(&fixtures::envelope("SEC", Audience::AllMembers)),
        Ok(ids(&["CHN", "IND", "KAZ", "TUR"]))
    );
    assert_eq!(
        route(&fixtures::envelope("KAZ", Audience::AllMembers)),
        Ok(ids(&["CHN", "IND", "TUR"]))
    );
    assert_eq!(
        route(&fixtures::envelope("SEC", Audience::Everyone)),
        Ok(ids(&["CHN", "IND", "JPN", "KAZ", "TUR", "UN"]))
    );
    assert_eq!(
        route(&fixtures::envelope("KAZ", Audience::Everyone)),
        Ok(ids(&["CHN", "IND", "JPN", "SEC", "TUR", "UN"]))
    );
}

#[test]
fn observers_may_write_to_the_secretariat() {
    assert_eq!(route(&to("UN", &["SEC"])), Ok(ids(&["SEC"])));
    assert_eq!(
        route(&with_kind(to("JPN", &["SEC"]), Kind::ConsultationRequest)),
        Ok(ids(&["SEC"]))
    );
}

#[test]
fn observers_may_not_address_members_or_observers() {
    let denied = |recipient: &str| {
        Err(RouteError::PolicyDenied {
            sender: pid("UN"),
            recipient: pid(recipient),
        })
    };
    assert_eq!(route(&to("UN", &["KAZ"])), denied("KAZ"));
    assert_eq!(route(&to("UN", &["SEC", "KAZ"])), denied("KAZ"));
    assert_eq!(route(&to("UN", &["JPN"])), denied("JPN"));
    assert_eq!(
        route(&fixtures::envelope("UN", Audience::AllMembers)),
        denied("CHN")
    );
    assert_eq!(
        route(&fixtures::envelope("UN", Audience::Everyone)),
        denied("CHN")
    );
    assert_eq!(
        route(&fixtures::envelope(
            "UN",
            Audience::Group("maritime".into())
        )),
        denied("KAZ")
    );
    // Even when the member addressed the observer, only a reply may go back.
    let alert = to("UN", &["KAZ"]);
    assert_eq!(
        resolve(&roster(), &Policy::default(), &alert, |_| true),
        denied("KAZ")
    );
    assert_eq!(route(&denied_reply()), denied("KAZ"));
}

fn denied_reply() -> Envelope {
    with_kind(to("UN", &["KAZ"]), Kind::Reply)
}

#[test]
fn observers_may_reply_to_members_who_addressed_them() {
    let reply = with_kind(to("UN", &["KAZ"]), Kind::Reply);
    let asked = RefCell::new(Vec::new());
    let r = resolve(&roster(), &Policy::default(), &reply, |who| {
        asked.borrow_mut().push(who.clone());
        who.as_str() == "KAZ"
    });
    assert_eq!(r, Ok(ids(&["KAZ"])));
    assert_eq!(
        asked.into_inner(),
        ids(&["KAZ"]),
        "the closure is asked about KAZ"
    );

    // A reply to two members, only one of whom addressed UN.
    let reply = with_kind(to("UN", &["KAZ", "CHN"]), Kind::Reply);
    assert_eq!(
        resolve(&roster(), &Policy::default(), &reply, |who| who.as_str()
            == "KAZ"),
        Err(RouteError::PolicyDenied {
            sender: pid("UN"),
            recipient: pid("CHN")
        })
    );
}

#[test]
fn a_permissive_policy_lets_observers_address_anyone() {
    let policy = Policy {
        observers_may_address_anyone: true,
    };
    let everyone = fixtures::envelope("UN", Audience::Everyone);
    assert_eq!(
        resolve(&roster(), &policy, &everyone, |_| false),
        Ok(ids(&["CHN", "IND", "JPN", "KAZ", "SEC", "TUR"]))
    );
    assert!(!Policy::default().observers_may_address_anyone);
}

#[test]
fn members_are_not_bound_by_the_observer_policy() {
    assert_eq!(route(&to("KAZ", &["UN", "JPN"])), Ok(ids(&["JPN", "UN"])));
}

#[test]
fn route_errors_map_to_reject_codes() {
    assert_eq!(
        RouteError::UnknownRecipient(pid("MNG")).reject_code(),
        RejectCode::UnknownRecipient
    );
    assert_eq!(
        RouteError::UnknownGroup("x".into()).reject_code(),
        RejectCode::UnknownGroup
    );
    assert_eq!(
        RouteError::NoRecipients.reject_code(),
        RejectCode::NoRecipients
    );
    assert_eq!(
        RouteError::PolicyDenied {
            sender: pid("UN"),
            recipient: pid("KAZ")
        }
        .reject_code(),
        RejectCode::PolicyDenied
    );
}

// --- The clock --------------------------------------------------------------------------

#[test]
fn created_at_may_be_old_but_not_too_far_ahead() {
    let now = T0_MS;
    assert_eq!(check_created_at(now, now), Ok(()));
    assert_eq!(
        check_created_at(0, now),
        Ok(()),
        "an outbox may hold a message for days"
    );
    assert_eq!(
        check_created_at(now + CLOCK_SKEW_FUTURE_MAX_MS, now),
        Ok(())
    );
    assert_eq!(
        check_created_at(now + CLOCK_SKEW_FUTURE_MAX_MS + 1, now),
        Err(RejectCode::FutureTimestamp)
    );
    assert_eq!(
        check_created_at(u64::MAX, now),
        Err(RejectCode::FutureTimestamp)
    );
    // Near the end of time the bound saturates instead of overflowing.
    assert_eq!(check_created_at(u64::MAX, u64::MAX - 1), Ok(()));
    assert_eq!(
        check_created_at(CLOCK_SKEW_FUTURE_MAX_MS + 1, 0),
        Err(RejectCode::FutureTimestamp)
    );
}
