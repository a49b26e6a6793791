//! The relay, in-process, with protocol-level clients.

use std::sync::Arc;

use hotline_e2e::*;
use hotline_net::NetError;
use hotline_proto::frame::{ErrorCode, Hello, NodeToRelay, RejectCode, RelayToNode, Subject};
use hotline_proto::{
    Audience, AuthProof, Envelope, MessageId, ParticipantId, PublicKey, Receipt, ReceiptKind, Role,
    Signature, Signed, SignedPayload, SigningKey,
};

/// The Secretariat and two members.
const TWO: &[(&str, Role)] = &[
    ("SEC", Role::Secretariat),
    ("KAZ", Role::Member),
    ("KGZ", Role::Member),
];

fn two() -> Net {
    Net::new(TWO, &[])
}

/// A relay for `net`, and KAZ and KGZ connected to it.
async fn relay_kaz_kgz(net: &Net) -> (hotline_relay::RelayHandle, Client, Client) {
    let relay = net.relay().await;
    let addr = relay.local_addr();
    let kaz = net.client(addr, "KAZ").await.unwrap();
    let kgz = net.client(addr, "KGZ").await.unwrap();
    (relay, kaz, kgz)
}

/// [`relay_kaz_kgz`], with the relay's metrics address.
async fn with_metrics(
    net: &Net,
) -> (
    hotline_relay::RelayHandle,
    std::net::SocketAddr,
    Client,
    Client,
) {
    let (relay, kaz, kgz) = relay_kaz_kgz(net).await;
    let maddr = relay
        .metrics_addr()
        .expect("metrics enabled in the test config");
    (relay, maddr, kaz, kgz)
}

/// [`two`] with `extra` appended to the relay's configuration.
fn two_with(extra: &str) -> Net {
    Net::with_relay_toml(TWO, &[], extra)
}

/// [`TWO`] and TJK, a member, with `extra` appended to the relay's configuration.
fn with_tjk(extra: &str) -> Net {
    let mut participants = TWO.to_vec();
    participants.push(("TJK", Role::Member));
    Net::with_relay_toml(&participants, &[], extra)
}

#[tokio::test]
async fn message_and_receipts_flow_between_two_clients() {
    let net = two();
    let (relay, mut kaz, mut kgz) = relay_kaz_kgz(&net).await;

    let env = kaz.envelope(Audience::Participants(vec![pid("KGZ")]), "test");
    let signed = kaz.sign(&env);
    kaz.submit(&signed).await.unwrap();
    let (accepted, _) = kaz
        .until(|f| match f {
            RelayToNode::Accepted(a) => Some(a.clone()),
            _ => None,
        })
        .await
        .unwrap();
    assert_eq!(accepted.id, env.id);
    assert_eq!(accepted.recipients, vec![pid("KGZ")]);

    let (delivered, _) = kgz
        .until(|f| match f {
            RelayToNode::Deliver(s) => Some(s.clone()),
            _ => None,
        })
        .await
        .unwrap();
    assert_eq!(
        delivered, signed,
        "the relay forwards the signed bytes unchanged"
    );

    let r = kgz
        .receipt(ReceiptKind::Delivered, std::slice::from_ref(&delivered))
        .await
        .unwrap();
    let (stored, _) = kgz
        .until(|f| match f {
            RelayToNode::ReceiptStored(d) => Some(*d),
            _ => None,
        })
        .await
        .unwrap();
    assert_eq!(stored, r.digest());

    let (fwd, _) = kaz.next_receipt().await.unwrap();
    assert_eq!(fwd, r);
    kaz.send(&NodeToRelay::ReceiptsStored(vec![fwd.digest()]))
        .await
        .unwrap();

    let ack = kgz
        .receipt(
            ReceiptKind::Acknowledged {
                officer: "Duty officer".into(),
                note: Some("seen".into()),
            },
            &[delivered],
        )
        .await
        .unwrap();
    let (fwd_ack, _) = kaz
        .until(|f| match f {
            RelayToNode::Receipt(s) if s.digest() == ack.digest() => Some(s.clone()),
            _ => None,
        })
        .await
        .unwrap();
    let roster = hotline_proto::verify_roster(
        &Signed::sign(&net.roster, &net.roster_key).unwrap(),
        &hotline_proto::PublicKey::of(&net.roster_key),
    )
    .unwrap();
    let v = roster.verify_receipt(&fwd_ack).unwrap();
    assert!(v.is_ack());
    relay.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------

/// Members KAZ, KGZ, TJK, UZB; observers UN, OSCE; the Secretariat SEC; group G1.
fn cica(extra: &str) -> Net {
    Net::with_relay_toml(
        &[
            ("SEC", Role::Secretariat),
            ("KAZ", Role::Member),
            ("KGZ", Role::Member),
            ("TJK", Role::Member),
            ("UZB", Role::Member),
            ("UN", Role::Observer),
            ("OSCE", Role::Observer),
        ],
        &[("G1", &["KAZ", "KGZ", "UN", "UZB"])],
        extra,
    )
}

fn ids(v: &[&str]) -> Vec<ParticipantId> {
    v.iter().map(|s| pid(s)).collect()
}

fn to(who: &[&str]) -> Audience {
    Audience::Participants(ids(who))
}

/// The roster as the relay signs it, verified, to check forwarded signed values.
fn verified_roster(net: &Net) -> hotline_proto::Verified<hotline_proto::Roster> {
    hotline_proto::verify_roster(
        &Signed::sign(&net.roster, &net.roster_key).unwrap(),
        &PublicKey::of(&net.roster_key),
    )
    .unwrap()
}

/// A tiny deterministic generator for "random" bytes (xorshift64*).
fn noise(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.max(1);
    (0..n)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Store and forward
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn offline_recipient_receives_backlog_and_sender_gets_the_receipt() {
    let net = two();
    let relay = net.relay().await;
    let addr = relay.local_addr();
    let mut kaz = net.client(addr, "KAZ").await.unwrap();

    // KGZ is not connected: the relay accepts and queues.
    let env = kaz.envelope(to(&["KGZ"]), "while you were away");
    let signed = kaz.sign(&env);
    let accepted = kaz.submit_wait(&signed).await.unwrap().unwrap();
    assert_eq!(accepted.recipients, ids(&["KGZ"]));

    let mut kgz = net.client(addr, "KGZ").await.unwrap();
    let (got, skipped) = kgz.next_deliver().await.unwrap();
    assert_eq!(got, signed, "backlog delivers the signed bytes unchanged");
    assert!(
        skipped.is_empty(),
        "nothing before the backlog: {skipped:?}"
    );

    let r = kgz
        .receipt_stored(ReceiptKind::Delivered, &[got])
        .await
        .unwrap();
    let (fwd, _) = kaz.next_receipt().await.unwrap();
    assert_eq!(fwd, r, "the receipt is forwarded unchanged");
    let v = verified_roster(&net).verify_receipt(&fwd).unwrap();
    assert_eq!(v.items[0].id, env.id);
    assert_eq!(v.items[0].digest, signed.digest());

    // Receipted: a reconnecting KGZ gets no redelivery; the next Deliver is a new message.
    kgz.close();
    let mut kgz = net.client(addr, "KGZ").await.unwrap();
    let m2 = kaz.send_to("KGZ", "second").await.unwrap();
    let (next, _) = kgz.next_deliver().await.unwrap();
    assert_eq!(next, m2, "the receipted message is not redelivered");
    relay.shutdown().await;
}

#[tokio::test]
async fn receipt_for_a_disconnected_sender_waits_for_its_reconnect() {
    let net = two();
    let relay = net.relay().await;
    let addr = relay.local_addr();
    let mut kaz = net.client(addr, "KAZ").await.unwrap();
    let signed = kaz.send_to("KGZ", "queued").await.unwrap();
    kaz.close();

    let mut kgz = net.client(addr, "KGZ").await.unwrap();
    let (got, _) = kgz.next_deliver().await.unwrap();
    assert_eq!(got, signed);
    let delivered = kgz
        .receipt_stored(ReceiptKind::Delivered, std::slice::from_ref(&got))
        .await
        .unwrap();
    let ack = kgz
        .receipt_stored(
            ReceiptKind::Acknowledged {
                officer: "Duty officer".into(),
                note: None,
            },
            &[got],
        )
        .await
        .unwrap();
    // A message for KAZ too, whose receipt serves as the barrier below.
    kgz.send_to("KAZ", "reply").await.unwrap();

    // Both receipts wait for KAZ, in the order they were stored.
    let mut kaz = net.client(addr, "KAZ").await.unwrap();
    let mut fwd = Vec::new();
    let mut reply = None;
    enum Got {
        Receipt(Signed<Receipt>),
        Message(Signed<Envelope>),
    }
    while fwd.len() < 2 || reply.is_none() {
        let (got, _) = kaz
            .until(|f| match f {
                RelayToNode::Receipt(s) => Some(Got::Receipt(s.clone())),
                RelayToNode::Deliver(m) => Some(Got::Message(m.clone())),
                _ => None,
            })
            .await
            .unwrap();
        match got {
            Got::Receipt(r) => fwd.push(r),
            Got::Message(m) => reply = Some(m),
        }
    }
    assert_eq!(fwd, vec![delivered.clone(), ack.clone()]);

    // KAZ confirms one: only the other is sent again on the next connection.
    kaz.send(&NodeToRelay::ReceiptsStored(vec![delivered.digest()]))
        .await
        .unwrap();
    // The barrier: the relay commits receipts and confirmations in arrival order, in the
    // same commit or later ones (submissions commit apart, so an *accepted* would not do).
    // So once this receipt, sent after the confirmation, is stored, so is the confirmation.
    let reply = reply.expect("loop ends with the reply");
    kaz.receipt_stored(ReceiptKind::Delivered, &[reply])
        .await
        .unwrap();
    kaz.close();
    let mut kaz = net.client(addr, "KAZ").await.unwrap();
    let (again, _) = kaz.next_receipt().await.unwrap();
    assert_eq!(again, ack, "the confirmed receipt is not sent again");
    relay.shutdown().await;
}

#[tokio::test]
async fn backlog_is_delivered_in_per_sender_order() {
    let net = two();
    let relay = net.relay().await;
    let addr = relay.local_addr();
    let mut kaz = net.client(addr, "KAZ").await.unwrap();
    let mut sent = Vec::new();
    for i in 0..50 {
        let env = kaz.envelope(to(&["KGZ"]), &format!("message {i}"));
        let s = kaz.sign(&env);
        kaz.submit(&s).await.unwrap();
        sent.push((env, s));
    }
    let all: Vec<_> = sent.iter().map(|(e, _)| e.id).collect();
    for a in kaz.answers(&all).await.unwrap() {
        a.unwrap();
    }

    let mut kgz = net.client(addr, "KGZ").await.unwrap();
    let mut seqs = Vec::new();
    for (env, s) in &sent {
        let (got, skipped) = kgz.next_deliver().await.unwrap();
        assert!(skipped.is_empty(), "{skipped:?}");
        let e = got.decode_unverified().unwrap();
        assert_eq!(e.id, env.id, "delivery {} out of order", seqs.len());
        assert_eq!(&got, s);
        seqs.push(e.seq.0);
    }
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    relay.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// Idempotence and replay protection
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn duplicate_submit_is_answered_again_and_delivered_once() {
    let net = two();
    let (relay, mut kaz, mut kgz) = relay_kaz_kgz(&net).await;
    let addr = relay.local_addr();

    let env = kaz.envelope(to(&["KGZ"]), "once");
    let m1 = kaz.sign(&env);
    let first = kaz.submit_wait(&m1).await.unwrap().unwrap();
    let second = kaz.submit_wait(&m1).await.unwrap().unwrap();
    assert_eq!(first, second, "same recipients and original accepted_at_ms");

    // From a new connection too (a node that does not know whether it was committed).
    kaz.close();
    let mut kaz = net.client(addr, "KAZ").await.unwrap();
    assert_eq!(kaz.seq, env.seq.0, "Welcome.last_seq is the accepted seq");
    let third = kaz.submit_wait(&m1).await.unwrap().unwrap();
    assert_eq!(first, third);

    let (got, _) = kgz.next_deliver().await.unwrap();
    assert_eq!(got, m1);
    kgz.receipt_stored(ReceiptKind::Delivered, &[got])
        .await
        .unwrap();
    let m2 = kaz.send_to("KGZ", "two").await.unwrap();
    let (next, skipped) = kgz.next_deliver().await.unwrap();
    assert_eq!(next, m2, "M1 was delivered only once");
    assert!(
        !skipped.iter().any(|f| matches!(f, RelayToNode::Deliver(_))),
        "{skipped:?}"
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn id_conflict_replayed_seq_and_future_timestamp_are_rejected() {
    let net = two();
    let (relay, mut kaz, mut kgz) = relay_kaz_kgz(&net).await;

    let env = kaz.envelope(to(&["KGZ"]), "original");
    let first = kaz.submit_wait(&kaz.sign(&env)).await.unwrap().unwrap();
    // The same message again: the same answer, and (below) no second delivery.
    let again = kaz.submit_wait(&kaz.sign(&env)).await.unwrap().unwrap();
    assert_eq!(again.accepted_at_ms, first.accepted_at_ms);
    assert_eq!(again.recipients, first.recipients);

    // Same id, other content.
    let mut other = env.clone();
    other.subject = "altered".into();
    let r = kaz.submit_wait(&kaz.sign(&other)).await.unwrap();
    assert_eq!(r.unwrap_err().code, RejectCode::IdConflict);

    // A new sequence number with a taken id: no look-up runs for a number above the
    // sender's highest, and the store's unique id refuses it all the same.
    let mut reused = kaz.envelope(to(&["KGZ"]), "reused id");
    reused.id = env.id;
    let r = kaz.submit_wait(&kaz.sign(&reused)).await.unwrap();
    assert_eq!(r.unwrap_err().code, RejectCode::IdConflict);

    // Fresh id, the sequence number already used.
    let mut replay = env.clone();
    replay.id = MessageId::random();
    let r = kaz.submit_wait(&kaz.sign(&replay)).await.unwrap();
    assert_eq!(r.unwrap_err().code, RejectCode::ReplayedSeq);

    // Dated an hour ahead of the relay's clock.
    let mut future = kaz.envelope(to(&["KGZ"]), "from the future");
    future.created_at_ms = now_ms() + 3_600_000;
    let r = kaz.submit_wait(&kaz.sign(&future)).await.unwrap();
    assert_eq!(r.unwrap_err().code, RejectCode::FutureTimestamp);

    // None of these reached KGZ: its only delivery is the original, then a fresh message.
    let (got, _) = kgz.next_deliver().await.unwrap();
    assert_eq!(got.decode_unverified().unwrap(), env);
    kgz.receipt_stored(ReceiptKind::Delivered, &[got])
        .await
        .unwrap();
    assert_flows(&mut kaz, &mut kgz, "after replays")
        .await
        .unwrap();
    relay.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// Bad input: each refused while a well-behaved pair (KAZ -> KGZ) keeps working
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn forged_and_misattributed_messages_are_rejected() {
    let net = cica("");
    let (relay, mut kaz, mut kgz) = relay_kaz_kgz(&net).await;
    let addr = relay.local_addr();
    let mut tjk = net.client(addr, "TJK").await.unwrap();
    assert_flows(&mut kaz, &mut kgz, "before").await.unwrap();

    // One byte of the signature flipped.
    let env = tjk.envelope(to(&["KGZ"]), "forged");
    let good = tjk.sign(&env);
    let mut sig = good.signature();
    sig.0[10] ^= 0x01;
    let forged = Signed::from_parts(good.bytes().to_vec(), good.key(), sig);
    let r = tjk.submit_wait(&forged).await.unwrap();
    assert_eq!(r.unwrap_err().code, RejectCode::BadSignature);
    assert_flows(&mut kaz, &mut kgz, "after a forged signature")
        .await
        .unwrap();

    // One bit of the body flipped (the body is the last field: "body" -> "bodx").
    let mut bytes = good.bytes().to_vec();
    *bytes.last_mut().unwrap() ^= 0x01;
    let tampered = Signed::<Envelope>::from_parts(bytes, good.key(), good.signature());
    assert_eq!(tampered.decode_unverified().unwrap().body, "bodx");
    let r = tjk.submit_wait(&tampered).await.unwrap();
    assert_eq!(r.unwrap_err().code, RejectCode::BadSignature);
    assert_flows(&mut kaz, &mut kgz, "after a flipped body bit")
        .await
        .unwrap();

    // A valid message by another participant (UZB's key), submitted on TJK's session.
    let mut uzb_env = env.clone();
    uzb_env.id = MessageId::random();
    uzb_env.sender = pid("UZB");
    let by_uzb = Signed::sign(&uzb_env, &net.key("UZB")).unwrap();
    let r = tjk.submit_wait(&by_uzb).await.unwrap();
    assert_eq!(r.unwrap_err().code, RejectCode::NotAuthor);

    // TJK's own key, claiming to be UZB: the authorship check comes first (7.3, step 4).
    let by_tjk_as_uzb = Signed::sign(&uzb_env, &net.key("TJK")).unwrap();
    let r = tjk.submit_wait(&by_tjk_as_uzb).await.unwrap();
    assert_eq!(r.unwrap_err().code, RejectCode::NotAuthor);
    assert_flows(&mut kaz, &mut kgz, "after misattributed messages")
        .await
        .unwrap();

    // The unmodified original is still accepted: the refusals left no trace.
    let a = tjk.submit_wait(&good).await.unwrap().unwrap();
    assert_eq!(a.recipients, ids(&["KGZ"]));
    relay.shutdown().await;
}

#[tokio::test]
async fn misattributed_and_forged_receipts_are_rejected() {
    let net = cica("");
    let (relay, mut kaz, mut kgz) = relay_kaz_kgz(&net).await;
    let addr = relay.local_addr();
    let mut tjk = net.client(addr, "TJK").await.unwrap();
    let m = kaz.send_to("KGZ", "receipt me").await.unwrap();
    let (got, _) = kgz.next_deliver().await.unwrap();

    let receipt_naming = |recipient: &str, key: &str, sender: &str| {
        let r = Receipt {
            version: hotline_proto::PROTOCOL_VERSION,
            recipient: pid(recipient),
            kind: ReceiptKind::Delivered,
            created_at_ms: now_ms(),
            items: vec![hotline_proto::ReceiptItem {
                id: m.decode_unverified().unwrap().id,
                sender: pid(sender),
                digest: m.digest(),
            }],
        };
        Signed::sign(&r, &net.key(key)).unwrap()
    };
    let receipt = |recipient: &str, key: &str| receipt_naming(recipient, key, "KAZ");
    async fn refused(c: &mut Client, r: &Signed<Receipt>) -> RejectCode {
        let d = r.digest();
        c.send(&NodeToRelay::Receipt(r.clone())).await.unwrap();
        let (code, _) = c
            .until(|f| match f {
                RelayToNode::Rejected(x) if x.subject == Subject::Receipt(d) => Some(x.code),
                RelayToNode::ReceiptStored(x) if *x == d => Some(RejectCode::Malformed),
                _ => None,
            })
            .await
            .unwrap();
        code
    }
    // KGZ's valid receipt, sent on TJK's session; and TJK's key claiming to be KGZ.
    assert_eq!(
        refused(&mut tjk, &receipt("KGZ", "KGZ")).await,
        RejectCode::NotAuthor
    );
    assert_eq!(
        refused(&mut tjk, &receipt("KGZ", "TJK")).await,
        RejectCode::NotAuthor
    );
    // TJK was not a recipient of the message it claims to have received.
    assert_eq!(
        refused(&mut tjk, &receipt("TJK", "TJK")).await,
        RejectCode::UnknownMessage
    );
    // The right message and digest, but another sender: it would be forwarded to TJK, who
    // has no business learning about KAZ's message (7.5, step 5).
    assert_eq!(
        refused(&mut kgz, &receipt_naming("KGZ", "KGZ", "TJK")).await,
        RejectCode::UnknownMessage
    );
    // A forged signature.
    let good = receipt("KGZ", "KGZ");
    let mut sig = good.signature();
    sig.0[0] ^= 0x80;
    let forged = Signed::from_parts(good.bytes().to_vec(), good.key(), sig);
    assert_eq!(refused(&mut kgz, &forged).await, RejectCode::BadSignature);

    // None of that reached KAZ or released the message: the real receipt does.
    let r = kgz
        .receipt_stored(ReceiptKind::Delivered, &[got])
        .await
        .unwrap();
    let (fwd, skipped) = kaz.next_receipt().await.unwrap();
    assert_eq!(fwd, r);
    assert!(
        !skipped.iter().any(|f| matches!(f, RelayToNode::Receipt(_))),
        "{skipped:?}"
    );
    let before = until_pong(&mut tjk, 7).await;
    assert!(
        !before.iter().any(|f| matches!(f, RelayToNode::Receipt(_))),
        "TJK was sent a receipt for a message it did not send: {before:?}"
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn unknown_and_revoked_participants_are_refused() {
    let mut net = cica("");
    net.roster
        .participants
        .iter_mut()
        .find(|p| p.id == pid("TJK"))
        .unwrap()
        .revoked = true;
    net.write_roster();
    let (relay, mut kaz, mut kgz) = relay_kaz_kgz(&net).await;
    let addr = relay.local_addr();

    let stranger = SigningKey::from_bytes(&[0x5A; 32]);
    let code = refusal_code(Client::connect(addr, net.fingerprint, "ZZZ", stranger).await);
    assert_eq!(code.unwrap(), ErrorCode::UnknownParticipant);
    assert_flows(&mut kaz, &mut kgz, "after an unknown participant")
        .await
        .unwrap();

    let code = refusal_code(net.client(addr, "TJK").await);
    assert_eq!(code.unwrap(), ErrorCode::Revoked);
    assert_flows(&mut kaz, &mut kgz, "after a revoked participant")
        .await
        .unwrap();

    // A listed participant presenting a key that is not its own.
    let code = refusal_code(Client::connect(addr, net.fingerprint, "UZB", net.key("KGZ")).await);
    assert_eq!(code.unwrap(), ErrorCode::Revoked);

    // Nobody may address the revoked participant.
    let env = kaz.envelope(to(&["TJK"]), "to the revoked");
    let r = kaz.submit_wait(&kaz.sign(&env)).await.unwrap();
    assert_eq!(r.unwrap_err().code, RejectCode::UnknownRecipient);
    assert_flows(&mut kaz, &mut kgz, "after a wrong key")
        .await
        .unwrap();
    relay.shutdown().await;
}

/// The protocol has no use for QUIC datagrams, so the relay does not offer to take any: a
/// peer cannot park a buffer of them in a connection before logging in.
#[tokio::test]
async fn the_relay_takes_no_quic_datagrams() {
    let net = two();
    let relay = net.relay().await;
    let (_ep, conn) = raw_connect(relay.local_addr(), net.fingerprint)
        .await
        .unwrap();
    assert_eq!(conn.max_datagram_size(), None);
    assert!(conn.send_datagram(vec![0u8].into()).is_err());
    relay.shutdown().await;
}

/// A session needs one stream: a peer may open one bidirectional stream, before its login
/// and after it, and no other, nor any unidirectional one, so it cannot make the relay
/// hold a stream's buffers many times over. (QUIC's stream limits: opening is refused by
/// the peer's own stack, at once, without a round trip.)
#[tokio::test]
async fn a_peer_may_open_one_stream_and_no_more() {
    fn opens<F: std::future::Future>(f: F) -> bool {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        std::pin::pin!(f).poll(&mut cx).is_ready()
    }
    let net = two();
    let (relay, mut kaz, mut kgz) = relay_kaz_kgz(&net).await;
    let (_ep, conn) = raw_connect(relay.local_addr(), net.fingerprint)
        .await
        .unwrap();
    assert!(!opens(conn.open_uni()), "a unidirectional stream");
    let (_send, _recv) = conn.open_bi().await.unwrap();
    assert!(!opens(conn.open_bi()), "a second stream before logging in");
    assert!(!opens(kaz.session.conn.open_bi()), "a second stream");
    assert!(!opens(kaz.session.conn.open_uni()), "a unidirectional one");
    assert_flows(&mut kaz, &mut kgz, "after streams refused")
        .await
        .unwrap();
    relay.shutdown().await;
}

#[tokio::test]
async fn wrong_alpn_fails_in_the_tls_handshake() {
    let net = two();
    let (relay, mut kaz, mut kgz) = relay_kaz_kgz(&net).await;
    let addr = relay.local_addr();

    let mut tls = hotline_net::tls::client_config(vec![net.fingerprint]).unwrap();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut ep = quinn::Endpoint::client(([127, 0, 0, 1], 0).into()).unwrap();
    ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
    match hotline_net::connect(&ep, addr, EVENT_TIMEOUT).await {
        Ok(_) => panic!("a client without ALPN cica-hotline/1 completed the handshake"),
        Err(NetError::Connection(quinn::ConnectionError::ConnectionClosed(c))) => {
            // TLS alert 120 (no_application_protocol) as a QUIC crypto error.
            assert_eq!(
                c.error_code,
                quinn::TransportErrorCode::crypto(120),
                "{c:?}"
            );
        }
        Err(e) => panic!("expected a TLS alert from the relay, got {e}"),
    }
    assert_flows(&mut kaz, &mut kgz, "after a wrong ALPN")
        .await
        .unwrap();
    relay.shutdown().await;
}

#[tokio::test]
async fn silent_connection_is_closed_with_auth_timeout() {
    let net = two_with("[limits]\nhandshake_timeout_ms = 300\n");
    let (relay, mut kaz, mut kgz) = relay_kaz_kgz(&net).await;
    let addr = relay.local_addr();

    // A stream opened but nothing sent on it (so the relay does not even see the stream).
    let (_ep, conn) = raw_connect(addr, net.fingerprint).await.unwrap();
    let (_send, _recv) = conn.open_bi().await.unwrap();
    assert_eq!(close_code(&conn).await.unwrap(), ErrorCode::AuthTimeout);

    // A stream with half a Hello: the deadline covers the whole first frame.
    let (_ep2, conn2) = raw_connect(addr, net.fingerprint).await.unwrap();
    let (mut send, _recv2) = conn2.open_bi().await.unwrap();
    send.write_all(&[200, 0, 0, 0, 0, 0]).await.unwrap();
    assert_eq!(close_code(&conn2).await.unwrap(), ErrorCode::AuthTimeout);

    // Authenticated sessions are not subject to it.
    assert_flows(&mut kaz, &mut kgz, "after silent peers")
        .await
        .unwrap();
    relay.shutdown().await;
}

/// The running relay's control socket: only its owner may use it, it refuses what is not a
/// request with a reason (changing nothing, and going on serving), and it is gone once the
/// relay has stopped.
#[tokio::test]
async fn the_control_socket_is_private_refuses_bad_requests_and_goes_with_the_relay() {
    use hotline_relay::admin::{ask, Answer, Request, SOCKET_FILE};
    use std::io::{BufRead as _, Write as _};
    use std::os::unix::fs::PermissionsExt as _;

    let net = two();
    let (relay, mut kaz, mut kgz) = relay_kaz_kgz(&net).await;
    let data = net.path().join("relay-data");
    let path = data.join(SOCKET_FILE);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");

    let sock = path.clone();
    let raw = move |line: &[u8]| {
        let mut s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
        s.write_all(line).unwrap();
        let mut answer = String::new();
        std::io::BufReader::new(&s).read_line(&mut answer).unwrap();
        answer
    };
    let (garbage, long) =
        tokio::task::spawn_blocking(move || (raw(b"drop everything\n"), raw(&[b'x'; 5000])))
            .await
            .unwrap();
    assert!(
        garbage.starts_with(r#"{"answer":"refused","error":"not a request"#),
        "{garbage}"
    );
    assert!(
        long.contains("a request is one line of at most 4096 bytes"),
        "{long}"
    );
    let data2 = data.clone();
    let bad_id = tokio::task::spawn_blocking(move || {
        ask(
            &data2,
            &Request::Redeliver {
                to: Some("not an id!".into()),
                since_ms: 0,
            },
        )
    })
    .await
    .unwrap()
    .unwrap();
    assert!(
        matches!(&bad_id, Answer::Refused { error } if error.starts_with("to: ")),
        "{bad_id:?}"
    );
    assert_flows(&mut kaz, &mut kgz, "after bad control requests")
        .await
        .unwrap();
    relay.shutdown().await;
    assert!(!path.exists(), "the socket is removed at shutdown");
}

/// Delivering again on a running relay (`hotline relay redeliver`) closes the recipient's
/// session also when its cursor does not move: here the recipient receipted the second of
/// two messages, not the first, so only the position it receipted ahead is owed again. Its
/// next session delivers both; the sender's session is not touched.
#[tokio::test]
async fn a_running_relays_redelivery_reaches_what_was_receipted_ahead() {
    use hotline_relay::admin::{ask, Answer, Request};
    let net = two();
    let (relay, mut kaz, mut kgz) = relay_kaz_kgz(&net).await;
    let m1 = kaz.send_to("KGZ", "first").await.unwrap();
    let m2 = kaz.send_to("KGZ", "second").await.unwrap();
    for m in [&m1, &m2] {
        let (got, _) = kgz.next_deliver().await.unwrap();
        assert_eq!(got.digest(), m.digest());
    }
    kgz.receipt_stored(ReceiptKind::Delivered, std::slice::from_ref(&m2))
        .await
        .unwrap();

    let data = net.path().join("relay-data");
    let answer = tokio::task::spawn_blocking(move || {
        ask(
            &data,
            &Request::Redeliver {
                to: Some("KGZ".into()),
                since_ms: 0,
            },
        )
    })
    .await
    .unwrap()
    .unwrap();
    let Answer::Redelivered { rewound } = answer else {
        panic!("{answer:?}")
    };
    assert_eq!(rewound.len(), 1, "{rewound:?}");
    assert_eq!(rewound[0].messages, 2, "{rewound:?}");
    assert_eq!(rewound[0].cursor, rewound[0].cursor_was, "{rewound:?}");
    assert_eq!(
        close_code(&kgz.session.conn).await.unwrap(),
        ErrorCode::Normal
    );
    let mut kgz = net.client(relay.local_addr(), "KGZ").await.unwrap();
    let mut again = Vec::new();
    for _ in 0..2 {
        again.push(kgz.next_deliver().await.unwrap().0.digest());
    }
    assert_eq!(again, [m1.digest(), m2.digest()]);
    assert_flows(&mut kaz, &mut kgz, "after the redelivery")
        .await
        .unwrap();
    relay.shutdown().await;
}

/// A connection to the relay at `addr` from a client that reads nothing the relay sends (a
/// stream receive window of 0), kept alive by pings, and its endpoint (which must outlive it).
async fn deaf_connection(
    net: &Net,
    addr: std::net::SocketAddr,
) -> (quinn::Endpoint, quinn::Connection) {
    let mut cfg = hotline_net::transport::client_quinn_config(
        vec![net.fingerprint],
        &hotline_net::transport::TransportLimits::default(),
    )
    .unwrap();
    let mut deaf = quinn::TransportConfig::default();
    deaf.stream_receive_window(quinn::VarInt::from_u32(0));
    deaf.keep_alive_interval(Some(std::time::Duration::from_millis(50)));
    cfg.transport_config(Arc::new(deaf));
    let mut ep = quinn::Endpoint::client(([127, 0, 0, 1], 0).into()).unwrap();
    ep.set_default_client_config(cfg);
    let conn = hotline_net::connect(&ep, addr, EVENT_TIMEOUT)
        .await
        .unwrap();
    (ep, conn)
}

/// A client that reads nothing the relay sends (a stream receive window of 0, kept alive by
/// pings) and whose `Hello` is refused: the relay's `Error` frame can never leave, and the
/// handshake deadline still closes the connection, so it does not hold a handshake slot
/// (and a connection) for good.
#[tokio::test]
async fn a_refused_hello_whose_error_cannot_be_sent_is_closed_at_the_deadline() {
    let net = two_with("[limits]\nhandshake_timeout_ms = 300\n");
    let (relay, mut kaz, mut kgz) = relay_kaz_kgz(&net).await;
    let addr = relay.local_addr();

    let (_ep, conn) = deaf_connection(&net, addr).await;
    // KAZ's name, signed with a key that is not KAZ's: refused (PROTOCOL.md 6.4, rule 7).
    let code = hello_with_binding(
        &conn,
        "KAZ",
        &SigningKey::from_bytes(&[9; 32]),
        hotline_net::channel_binding(&conn).unwrap(),
    )
    .await;
    assert_eq!(code, ErrorCode::Revoked);
    assert_flows(&mut kaz, &mut kgz, "after a deaf client")
        .await
        .unwrap();
    relay.shutdown().await;
}

/// Before it has logged in, a peer cannot make the relay buffer more than a few KiB of
/// stream data: QUIC flow control grants an unauthenticated connection room for little more
/// than a `Hello` (as the relay takes no datagrams from it). Here a client that reads
/// nothing (so the relay's `Error` frame never leaves and the relay, until its deadline,
/// reads no further) sends a refused `Hello` and then 64 KiB more: quinn's default window,
/// 1.25 MB a connection, took it all at once (and 1,024 such connections, the default
/// `handshakes_max`, 1.3 GB), where now the write cannot finish before the relay closes the
/// connection at the deadline.
#[tokio::test]
async fn a_peer_that_has_not_logged_in_cannot_make_the_relay_buffer_more_than_a_hello() {
    let net = two_with("[limits]\nhandshake_timeout_ms = 300\n");
    let (relay, mut kaz, mut kgz) = relay_kaz_kgz(&net).await;
    let addr = relay.local_addr();

    let (_ep, conn) = deaf_connection(&net, addr).await;
    let proof = AuthProof {
        version: hotline_proto::PROTOCOL_VERSION,
        participant: pid("ZZZ"),
        channel_binding: hotline_net::channel_binding(&conn).unwrap(),
        created_at_ms: now_ms(),
    };
    let (send, _recv) = conn.open_bi().await.unwrap();
    let mut w = hotline_net::FrameWriter::new(send);
    w.write(&NodeToRelay::Hello(Hello {
        auth: Signed::sign(&proof, &SigningKey::from_bytes(&[9; 32])).unwrap(),
        roster_version: 0,
    }))
    .await
    .unwrap();
    // The relay closes at its deadline, 300 ms on, whatever happens: this write ends then
    // at the latest (`EVENT_TIMEOUT` only keeps a broken relay from hanging the test).
    let more = tokio::time::timeout(EVENT_TIMEOUT, w.write_raw(&vec![0u8; 64 * 1024])).await;
    assert!(
        matches!(more, Ok(Err(_))),
        "the relay took 64 KiB more from a peer that has not logged in: {more:?}"
    );
    assert_eq!(
        close_code(&conn).await.unwrap(),
        ErrorCode::UnknownParticipant
    );
    assert_flows(
        &mut kaz,
        &mut kgz,
        "after a peer pushing bytes before its login",
    )
    .await
    .unwrap();
    relay.shutdown().await;
}

/// Sends a `Hello` whose proof names `binding` on `conn` and returns the close code.
async fn hello_with_binding(
    conn: &quinn::Connection,
    who: &str,
    key: &SigningKey,
    binding: [u8; 32],
) -> ErrorCode {
    let proof = AuthProof {
        version: hotline_proto::PROTOCOL_VERSION,
        participant: pid(who),
        channel_binding: binding,
        created_at_ms: now_ms(),
    };
    let (send, _recv) = conn.open_bi().await.unwrap();
    let mut w = hotline_net::FrameWriter::new(send);
    w.write(&NodeToRelay::Hello(Hello {
        auth: Signed::sign(&proof, key).unwrap(),
        roster_version: 0,
    }))
    .await
    .unwrap();
    close_code(conn).await.unwrap()
}

#[tokio::test]
async fn auth_proof_bound_to_another_session_is_refused() {
    let net = cica("");
    let (relay, mut kaz, mut kgz) = relay_kaz_kgz(&net).await;
    let addr = relay.local_addr();
    let tjk = net.key("TJK");

    // A made-up binding.
    let (_ep, conn) = raw_connect(addr, net.fingerprint).await.unwrap();
    assert_eq!(
        hello_with_binding(&conn, "TJK", &tjk, [7; 32]).await,
        ErrorCode::AuthFailed
    );
    assert_flows(&mut kaz, &mut kgz, "after a made-up binding")
        .await
        .unwrap();

    // The binding of another live connection (a proof captured there, replayed here).
    let (_ep1, one) = raw_connect(addr, net.fingerprint).await.unwrap();
    let (_ep2, two) = raw_connect(addr, net.fingerprint).await.unwrap();
    let theirs = hotline_net::channel_binding(&one).unwrap();
    assert_ne!(theirs, hotline_net::channel_binding(&two).unwrap());
    assert_eq!(
        hello_with_binding(&two, "TJK", &tjk, theirs).await,
        ErrorCode::AuthFailed
    );
    // The same proof on its own connection is fine.
    let ours = hotline_net::channel_binding(&one).unwrap();
    let session = hotline_net::authenticate(one, &pid("TJK"), &tjk, 0, now_ms(), EVENT_TIMEOUT)
        .await
        .unwrap();
    assert_eq!(session.welcome.last_seq.0, 0);
    assert_eq!(ours, theirs);
    assert_flows(&mut kaz, &mut kgz, "after a replayed proof")
        .await
        .unwrap();
    relay.shutdown().await;
}

#[tokio::test]
async fn frames_out_of_order_are_protocol_violations() {
    let net = cica("");
    let (relay, mut kaz, mut kgz) = relay_kaz_kgz(&net).await;
    let addr = relay.local_addr();

    // A first frame that is not Hello.
    let (_ep, conn) = raw_connect(addr, net.fingerprint).await.unwrap();
    let (send, _recv) = conn.open_bi().await.unwrap();
    let mut w = hotline_net::FrameWriter::new(send);
    w.write(&NodeToRelay::Ping(1)).await.unwrap();
    assert_eq!(
        close_code(&conn).await.unwrap(),
        ErrorCode::ProtocolViolation
    );

    // A second Hello after authentication.
    let mut tjk = net.client(addr, "TJK").await.unwrap();
    let proof = AuthProof {
        version: hotline_proto::PROTOCOL_VERSION,
        participant: pid("TJK"),
        channel_binding: hotline_net::channel_binding(&tjk.session.conn).unwrap(),
        created_at_ms: now_ms(),
    };
    tjk.send(&NodeToRelay::Hello(Hello {
        auth: Signed::sign(&proof, &net.key("TJK")).unwrap(),
        roster_version: 0,
    }))
    .await
    .unwrap();
    assert_eq!(
        tjk.closed_code().await.unwrap(),
        ErrorCode::ProtocolViolation
    );

    // A zero-length frame.
    let tjk = net.client(addr, "TJK").await.unwrap();
    let mut tjk = tjk;
    tjk.session.writer.write_raw(&[0, 0, 0, 0]).await.unwrap();
    assert_eq!(
        tjk.closed_code().await.unwrap(),
        ErrorCode::ProtocolViolation
    );
    assert_flows(&mut kaz, &mut kgz, "after protocol violations")
        .await
        .unwrap();
    relay.shutdown().await;
}

/// A peer that has not authenticated cannot make the relay hold a frame's worth of bytes:
/// a first frame announced longer than any `Hello` is refused as soon as its length prefix
/// arrives, with `FrameTooLarge`, not left to fill the relay's buffer until the handshake
/// deadline (here the default 5 s, which `close_code` outwaits).
#[tokio::test]
async fn a_first_frame_longer_than_any_hello_is_refused_at_its_prefix() {
    let net = two();
    let (relay, mut kaz, mut kgz) = relay_kaz_kgz(&net).await;
    let addr = relay.local_addr();
    let hello_max = hotline_proto::limits::HELLO_FRAME_BYTES_MAX as u32;
    for len in [hotline_proto::limits::FRAME_BYTES_MAX as u32, hello_max + 1] {
        let (_ep, conn) = raw_connect(addr, net.fingerprint).await.unwrap();
        let (mut send, _recv) = conn.open_bi().await.unwrap();
        send.write_all(&len.to_le_bytes()).await.unwrap();
        // Unfixed, the relay waits for the rest and closes with `AuthTimeout` at 5 s.
        let (code, reason) = close_code_and_reason(&conn).await.unwrap();
        assert_eq!(code, ErrorCode::FrameTooLarge, "{len}: {reason}");
    }
    assert_flows(&mut kaz, &mut kgz, "after an oversized first frame")
        .await
        .unwrap();
    relay.shutdown().await;
}

#[tokio::test]
async fn oversized_frame_closes_the_connection() {
    let net = cica("");
    let (relay, mut kaz, mut kgz) = relay_kaz_kgz(&net).await;
    let addr = relay.local_addr();

    let mut tjk = net.client(addr, "TJK").await.unwrap();
    tjk.session
        .writer
        .write_raw(&[0xFF, 0xFF, 0xFF, 0xFF])
        .await
        .unwrap();
    assert_eq!(tjk.closed_code().await.unwrap(), ErrorCode::FrameTooLarge);

    // One byte over the limit is as bad as 4 GiB.
    let mut tjk = net.client(addr, "TJK").await.unwrap();
    let n = (hotline_proto::limits::FRAME_BYTES_MAX as u32 + 1).to_le_bytes();
    tjk.session.writer.write_raw(&n).await.unwrap();
    assert_eq!(tjk.closed_code().await.unwrap(), ErrorCode::FrameTooLarge);
    assert_flows(&mut kaz, &mut kgz, "after oversized frames")
        .await
        .unwrap();

    // The offender can come back and behave.
    let mut tjk = net.client(addr, "TJK").await.unwrap();
    assert_flows(&mut tjk, &mut kgz, "offender reconnected")
        .await
        .unwrap();
    relay.shutdown().await;
}

#[tokio::test]
async fn garbage_frame_closes_the_connection() {
    let net = cica("");
    let (relay, mut kaz, mut kgz) = relay_kaz_kgz(&net).await;
    let addr = relay.local_addr();

    for seed in [1u64, 2, 3] {
        let mut tjk = net.client(addr, "TJK").await.unwrap();
        let payload = noise(seed, 64);
        let mut frame = (payload.len() as u32).to_le_bytes().to_vec();
        frame.extend_from_slice(&payload);
        tjk.session.writer.write_raw(&frame).await.unwrap();
        assert_eq!(
            tjk.closed_code().await.unwrap(),
            ErrorCode::ProtocolViolation,
            "seed {seed}"
        );
        assert_flows(&mut kaz, &mut kgz, &format!("after garbage {seed}"))
            .await
            .unwrap();
    }
    relay.shutdown().await;
}

#[tokio::test]
async fn routing_failures_and_the_observer_policy() {
    let net = cica("");
    let (relay, mut kaz, mut kgz) = relay_kaz_kgz(&net).await;
    let addr = relay.local_addr();
    let mut un = net.client(addr, "UN").await.unwrap();
    let mut sec = net.client(addr, "SEC").await.unwrap();

    let env = kaz.envelope(to(&["KGZ", "XYZ"]), "to nobody");
    let r = kaz.submit_wait(&kaz.sign(&env)).await.unwrap();
    assert_eq!(r.unwrap_err().code, RejectCode::UnknownRecipient);
    assert_flows(&mut kaz, &mut kgz, "after an unknown recipient")
        .await
        .unwrap();

    let env = kaz.envelope(Audience::Group("NOPE".into()), "to no group");
    let r = kaz.submit_wait(&kaz.sign(&env)).await.unwrap();
    assert_eq!(r.unwrap_err().code, RejectCode::UnknownGroup);
    assert_flows(&mut kaz, &mut kgz, "after an unknown group")
        .await
        .unwrap();

    let env = kaz.envelope(to(&["KAZ"]), "to myself");
    let r = kaz.submit_wait(&kaz.sign(&env)).await.unwrap();
    assert_eq!(r.unwrap_err().code, RejectCode::NoRecipients);

    // An observer may not open a conversation with a member...
    let env = un.envelope(to(&["KAZ"]), "unsolicited");
    let r = un.submit_wait(&un.sign(&env)).await.unwrap();
    assert_eq!(r.unwrap_err().code, RejectCode::PolicyDenied);
    let mut reply = un.envelope(to(&["KAZ"]), "reply to nothing");
    reply.kind = hotline_proto::Kind::Reply;
    reply.references = vec![env.id];
    let r = un.submit_wait(&un.sign(&reply)).await.unwrap();
    assert_eq!(
        r.unwrap_err().code,
        RejectCode::PolicyDenied,
        "a refused message does not authorise a reply"
    );
    assert_flows(&mut kaz, &mut kgz, "after a policy refusal")
        .await
        .unwrap();

    // ... but may write to the Secretariat ...
    assert_flows(&mut un, &mut sec, "observer to the Secretariat")
        .await
        .unwrap();

    // ... and reply to a member who addressed it.
    let question = kaz.send_to("UN", "question").await.unwrap();
    let (got, _) = un.next_deliver().await.unwrap();
    assert_eq!(got, question);
    let mut answer = un.envelope(to(&["KAZ"]), "answer");
    answer.kind = hotline_proto::Kind::Reply;
    answer.references = vec![question.decode_unverified().unwrap().id];
    let a = un.submit_wait(&un.sign(&answer)).await.unwrap().unwrap();
    assert_eq!(a.recipients, ids(&["KAZ"]));
    // Not to a member who did not.
    let mut sideways = un.envelope(to(&["KAZ", "KGZ"]), "answer to all");
    sideways.kind = hotline_proto::Kind::Reply;
    sideways.references = answer.references.clone();
    let r = un.submit_wait(&un.sign(&sideways)).await.unwrap();
    assert_eq!(r.unwrap_err().code, RejectCode::PolicyDenied);
    relay.shutdown().await;
}

#[tokio::test]
async fn body_over_the_relay_limit_is_too_large() {
    let net = with_tjk("[limits]\nbody_bytes_max = 100\n");
    let (relay, mut kaz, mut kgz) = relay_kaz_kgz(&net).await;
    let addr = relay.local_addr();
    let mut tjk = net.client(addr, "TJK").await.unwrap();

    let mut env = tjk.envelope(to(&["KGZ"]), "long");
    env.body = "x".repeat(101);
    let r = tjk.submit_wait(&tjk.sign(&env)).await.unwrap();
    assert_eq!(r.unwrap_err().code, RejectCode::TooLarge);
    assert_flows(&mut kaz, &mut kgz, "after a long body")
        .await
        .unwrap();

    let mut env = tjk.envelope(to(&["KGZ"]), "exactly at the limit");
    env.body = "x".repeat(100);
    tjk.submit_wait(&tjk.sign(&env)).await.unwrap().unwrap();
    relay.shutdown().await;
}

/// A participant sending receipts faster than its budget is slowed down, not refused: the
/// relay stops reading its connection until the bucket refills, every receipt is still
/// stored, and the pauses are counted.
#[tokio::test]
async fn receipts_over_the_rate_pause_reading_and_lose_nothing() {
    let net = two_with("[limits]\nreceipt_rate_per_sec = 20\nreceipt_rate_burst = 2\n");
    let (relay, maddr, mut kaz, mut kgz) = with_metrics(&net).await;
    let mut delivered = Vec::new();
    for i in 0..6 {
        kaz.send_to("KGZ", &format!("m{i}")).await.unwrap();
        delivered.push(kgz.next_deliver().await.unwrap().0);
    }
    let text = http_get(maddr, "/metrics").await.unwrap();
    assert_eq!(
        metric(&text, "hotline_relay_receipt_read_pauses_total"),
        Some(0.0),
        "{text}"
    );

    // Six receipts at once against a burst of two.
    let mut digests = Vec::new();
    for m in &delivered {
        let r = kgz
            .receipt(ReceiptKind::Delivered, std::slice::from_ref(m))
            .await
            .unwrap();
        digests.push(r.digest());
    }
    for d in &digests {
        let res = kgz.receipt_answer(*d).await.unwrap();
        assert_eq!(res, Ok(()), "every receipt is stored, none refused");
    }
    let text = http_get(maddr, "/metrics").await.unwrap();
    let pauses = metric(&text, "hotline_relay_receipt_read_pauses_total").unwrap();
    assert!(pauses >= 1.0, "{text}");
    assert_eq!(
        metric(&text, "hotline_relay_receipts_stored_total"),
        Some(6.0),
        "{text}"
    );
    // The sender has all six forwarded receipts.
    for d in &digests {
        kaz.until(|f| match f {
            RelayToNode::Receipt(r) if r.digest() == *d => Some(()),
            _ => None,
        })
        .await
        .unwrap();
    }
    relay.shutdown().await;
}

/// Receipts are charged by the messages they name, not only one a receipt: each item costs
/// the store writer, which every participant shares, a look-up (a read of the store for a
/// message it does not hold). A member sending receipts of 512 made-up items, well within
/// the receipt count budget, is slowed to its item budget: reading its connection pauses,
/// nothing is refused, and every receipt is still answered. (Charged one a receipt, such a
/// member kept the writer looking up 512,000 items a second within the default count
/// budget of 1,000 receipts.)
#[tokio::test]
async fn receipts_naming_many_messages_are_charged_by_their_items() {
    // An item budget of 5,120 a second with a burst of one receipt's worth: after the
    // first, each receipt of 512 items waits 100 ms. The count budget (defaults: 1,000 a
    // second, burst 10,000) never binds here.
    let net =
        two_with("[limits]\nreceipt_item_rate_per_sec = 5120\nreceipt_item_rate_burst = 512\n");
    let (relay, maddr, _kaz, mut kgz) = with_metrics(&net).await;
    let made_up = |r: u16, i: u16| {
        let mut id = [0u8; 16];
        id[..2].copy_from_slice(&r.to_be_bytes());
        id[2..4].copy_from_slice(&i.to_be_bytes());
        hotline_proto::ReceiptItem {
            id: MessageId(id),
            sender: pid("KAZ"),
            digest: hotline_proto::Digest([7; 32]),
        }
    };
    let receipts: Vec<_> = (0..6u16)
        .map(|r| {
            let receipt = Receipt {
                version: hotline_proto::PROTOCOL_VERSION,
                recipient: pid("KGZ"),
                kind: ReceiptKind::Delivered,
                created_at_ms: now_ms(),
                items: (0..512).map(|i| made_up(r, i)).collect(),
            };
            Signed::sign(&receipt, &net.key("KGZ")).unwrap()
        })
        .collect();
    let started = std::time::Instant::now();
    for r in &receipts {
        kgz.send(&NodeToRelay::Receipt(r.clone())).await.unwrap();
    }
    for r in &receipts {
        let res = kgz.receipt_answer(r.digest()).await.unwrap();
        assert_eq!(res, Ok(()), "answered as stored, none refused");
    }
    // The sixth is read only once the budget has earned back four receipts' items past its
    // burst: 2,048 items at 5,120 a second.
    let took = started.elapsed();
    assert!(
        took >= std::time::Duration::from_millis(400),
        "six receipts of 512 items answered in {took:?}"
    );
    let text = http_get(maddr, "/metrics").await.unwrap();
    let pauses = metric(&text, "hotline_relay_receipt_read_pauses_total").unwrap();
    assert!(pauses >= 1.0, "{text}");
    relay.shutdown().await;
}

#[tokio::test]
async fn submissions_over_the_rate_are_rate_limited() {
    let net = with_tjk("[limits]\nrate_per_sec = 1\nrate_burst = 2\n");
    let (relay, mut kaz, mut kgz) = relay_kaz_kgz(&net).await;
    let addr = relay.local_addr();
    let mut tjk = net.client(addr, "TJK").await.unwrap();

    // Three at once: the burst covers two.
    let envs: Vec<_> = (0..3)
        .map(|i| tjk.envelope(to(&["KGZ"]), &format!("burst {i}")))
        .collect();
    for e in &envs {
        let s = tjk.sign(e);
        tjk.submit(&s).await.unwrap();
    }
    let all: Vec<_> = envs.iter().map(|e| e.id).collect();
    let codes: Vec<_> = tjk
        .answers(&all)
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.map(|_| ()).map_err(|r| r.code))
        .collect();
    assert_eq!(codes, vec![Ok(()), Ok(()), Err(RejectCode::RateLimited)]);
    // Reconnecting does not refill the bucket: the limit belongs to the participant.
    tjk.close();
    let mut tjk = net.client(addr, "TJK").await.unwrap();
    let env = tjk.envelope(to(&["KGZ"]), "after reconnecting");
    let r = tjk.submit_wait(&tjk.sign(&env)).await.unwrap();
    assert_eq!(r.unwrap_err().code, RejectCode::RateLimited);
    // The limit is per participant: KAZ (with its own burst) still gets through.
    assert_flows(&mut kaz, &mut kgz, "while TJK is limited")
        .await
        .unwrap();
    relay.shutdown().await;
}

/// A sender past its byte budget with large messages is refused `RateLimited` (a refusal a
/// node retries), naming the budget, and counted; a small message of its own still fits,
/// and another sender is not affected. The sustained rate is a byte a second, so nothing
/// refills while the test runs (the refill itself: `node::messages_refused_for_the_senders_
/// byte_budget_are_offered_again_and_arrive`).
#[tokio::test]
async fn submissions_over_the_byte_budget_are_rate_limited() {
    let net = with_tjk("[limits]\nbyte_rate_per_sec = 1\nbyte_rate_burst = 131072\n");
    let (relay, maddr, mut kaz, mut kgz) = with_metrics(&net).await;
    let addr = relay.local_addr();
    let mut tjk = net.client(addr, "TJK").await.unwrap();
    let large = |c: &mut Client, subject: &str| {
        let mut env = c.envelope(to(&["KGZ"]), subject);
        env.body = "x".repeat(60_000);
        c.sign(&env)
    };

    // Three large ones at once (about 60 KB each): the burst of 128 KiB covers two.
    let signed: Vec<_> = (0..3)
        .map(|i| large(&mut tjk, &format!("large {i}")))
        .collect();
    for s in &signed {
        tjk.submit(s).await.unwrap();
    }
    let ids: Vec<_> = signed
        .iter()
        .map(|s| s.decode_unverified().unwrap().id)
        .collect();
    let answers = tjk.answers(&ids).await.unwrap();
    let codes: Vec<_> = answers
        .iter()
        .map(|a| a.as_ref().map(|_| ()).map_err(|r| r.code))
        .collect();
    assert_eq!(codes, vec![Ok(()), Ok(()), Err(RejectCode::RateLimited)]);
    let detail = &answers[2].as_ref().unwrap_err().detail;
    assert!(
        detail.contains("byte_rate_per_sec 1") && detail.contains("byte_rate_burst 131072"),
        "{detail}"
    );
    // The budget is in bytes, and the refusal took none: a small message still fits.
    let small = tjk.envelope(to(&["KGZ"]), "small");
    tjk.submit_wait(&tjk.sign(&small)).await.unwrap().unwrap();
    // The large one again, on a new connection: still refused, the budget is the
    // participant's and nothing has refilled.
    tjk.close();
    let mut tjk = net.client(addr, "TJK").await.unwrap();
    let r = tjk.submit_wait(&signed[2]).await.unwrap();
    assert_eq!(r.unwrap_err().code, RejectCode::RateLimited);
    // KAZ, with a budget of its own, sends a large one.
    let s = large(&mut kaz, "large from KAZ");
    kaz.submit_wait(&s).await.unwrap().unwrap();
    assert_flows(&mut kaz, &mut kgz, "while TJK is over its byte budget")
        .await
        .unwrap();

    let text = http_get(maddr, "/metrics").await.unwrap();
    for (name, want) in [
        (
            "hotline_relay_submissions_rate_limited_total{budget=\"bytes\"}",
            2.0,
        ),
        (
            "hotline_relay_submissions_rate_limited_total{budget=\"count\"}",
            0.0,
        ),
        (
            "hotline_relay_messages_rejected_total{reason=\"rate_limited\"}",
            2.0,
        ),
    ] {
        assert_eq!(metric(&text, name), Some(want), "{name}\n{text}");
    }
    relay.shutdown().await;
}

#[tokio::test]
async fn full_queue_refuses_more_for_that_recipient() {
    let net = Net::with_relay_toml(
        &[
            ("SEC", Role::Secretariat),
            ("KAZ", Role::Member),
            ("KGZ", Role::Member),
            ("TJK", Role::Member),
            ("UZB", Role::Member),
        ],
        &[],
        "[limits]\nqueue_depth_max = 2\n",
    );
    let (relay, mut kaz, mut kgz) = relay_kaz_kgz(&net).await;
    let addr = relay.local_addr();
    let mut tjk = net.client(addr, "TJK").await.unwrap();

    // UZB is offline: two fit, the third does not.
    let mut queued = Vec::new();
    for i in 0..2 {
        queued.push(tjk.send_to("UZB", &format!("queued {i}")).await.unwrap());
    }
    let env = tjk.envelope(to(&["UZB"]), "one too many");
    let r = tjk.submit_wait(&tjk.sign(&env)).await.unwrap();
    assert_eq!(r.unwrap_err().code, RejectCode::QueueFull);
    // All or nothing: a message to UZB and KGZ is refused as a whole.
    let env = tjk.envelope(to(&["KGZ", "UZB"]), "partly full");
    let r = tjk.submit_wait(&tjk.sign(&env)).await.unwrap();
    assert_eq!(r.unwrap_err().code, RejectCode::QueueFull);
    assert_flows(&mut kaz, &mut kgz, "while UZB's queue is full")
        .await
        .unwrap();

    // UZB drains its queue; there is room again.
    let mut uzb = net.client(addr, "UZB").await.unwrap();
    let mut got = Vec::new();
    for _ in 0..2 {
        got.push(uzb.next_deliver().await.unwrap().0);
    }
    assert_eq!(got, queued);
    uzb.receipt_stored(ReceiptKind::Delivered, &got)
        .await
        .unwrap();
    tjk.send_to("UZB", "room again").await.unwrap();
    relay.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// Routing
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn audiences_resolve_against_the_roster() {
    let mut net = cica("");
    // A revoked member is skipped by group and broadcast routing.
    net.roster
        .participants
        .iter_mut()
        .find(|p| p.id == pid("UZB"))
        .unwrap()
        .revoked = true;
    net.write_roster();
    let relay = net.relay().await;
    let addr = relay.local_addr();
    let mut kaz = net.client(addr, "KAZ").await.unwrap();
    let mut un = net.client(addr, "UN").await.unwrap();
    let mut sec = net.client(addr, "SEC").await.unwrap();

    async fn recipients(
        c: &mut Client,
        audience: Audience,
    ) -> (Vec<ParticipantId>, Signed<Envelope>) {
        let env = c.envelope(audience, "routing");
        let s = c.sign(&env);
        let a = c.submit_wait(&s).await.unwrap().unwrap();
        (a.recipients, s)
    }
    // G1 = KAZ, KGZ, UN, UZB: the sender and the revoked member drop out.
    let (r, _) = recipients(&mut kaz, Audience::Group("G1".into())).await;
    assert_eq!(r, ids(&["KGZ", "UN"]));
    // Members only, not the sender, not observers, not the Secretariat, not the revoked.
    let (r, _) = recipients(&mut kaz, Audience::AllMembers).await;
    assert_eq!(r, ids(&["KGZ", "TJK"]));
    // Everyone active but the sender, observers and the Secretariat included.
    let (r, everyone) = recipients(&mut kaz, Audience::Everyone).await;
    assert_eq!(r, ids(&["KGZ", "OSCE", "SEC", "TJK", "UN"]));
    // A list naming the sender (allowed) and a duplicate-free sorted result.
    let (r, _) = recipients(&mut kaz, to(&["TJK", "KAZ", "KGZ"])).await;
    assert_eq!(r, ids(&["KGZ", "TJK"]));

    // The resolved recipients do receive it: UN gets the group message then the broadcast;
    // SEC gets only the broadcast.
    let (first, _) = un.next_deliver().await.unwrap();
    assert_eq!(
        first.decode_unverified().unwrap().audience,
        Audience::Group("G1".into())
    );
    let (second, _) = un.next_deliver().await.unwrap();
    assert_eq!(second, everyone);
    let (only, _) = sec.next_deliver().await.unwrap();
    assert_eq!(only, everyone);
    relay.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// Roster reload and sessions
// ---------------------------------------------------------------------------------------

/// A relay keeps the newest roster it has run with and refuses to start on an older one of
/// the same key, which would undo a revocation: started on version 2 (TJK revoked), then on
/// version 1 again (TJK restored), it does not start, naming both versions and the file;
/// back on version 2 it starts and TJK is refused. After the roster key is replaced
/// (OPERATIONS.md 4.7), the old key's roster holds back none of the new key's.
#[tokio::test]
async fn a_relay_refuses_to_start_on_a_roster_older_than_it_ran_with() {
    let mut net = cica("");
    let file = net.path().join("roster.signed");
    let v1 = std::fs::read(&file).unwrap();
    net.revoke("TJK");
    let v2 = std::fs::read(&file).unwrap();
    let relay = net.relay().await;
    let code = refusal_code(net.client(relay.local_addr(), "TJK").await);
    assert_eq!(code.unwrap(), ErrorCode::Revoked);
    relay.shutdown().await;

    std::fs::write(&file, &v1).unwrap();
    let refused = hotline_relay::Relay::spawn(net.config()).await;
    let e = refused.err().expect("an older roster is refused at start");
    assert!(
        matches!(
            e,
            hotline_relay::RelayError::RosterRollback {
                file_version: 1,
                kept_version: 2,
                ..
            }
        ),
        "{e:?}"
    );
    let text = e.to_string();
    assert!(
        text.starts_with(&format!(
            "roster {}: version 1 is older than version 2",
            file.display()
        )),
        "{text}"
    );
    // `hotline config check` says so too, pointing at the roster line.
    let check = hotline_cli(net.path(), &["config", "check", "relay.toml"])
        .await
        .unwrap();
    assert_eq!(check.status.code(), Some(1), "{}", check.stderr);
    assert!(
        check.stderr.contains("version 1 is older than version 2"),
        "{}",
        check.stderr
    );

    // The right file back: it starts, and TJK stays revoked.
    std::fs::write(&file, &v2).unwrap();
    let relay = net.relay().await;
    let code = refusal_code(net.client(relay.local_addr(), "TJK").await);
    assert_eq!(code.unwrap(), ErrorCode::Revoked);
    relay.shutdown().await;

    // A new roster key: its version 1 starts the relay (and is kept from then on).
    net.roster_key = SigningKey::from_bytes(&[0xBB; 32]);
    net.roster.version = 1;
    net.write_roster();
    let toml = std::fs::read_to_string(&net.relay_config).unwrap().replace(
        &PublicKey::of(&SigningKey::from_bytes(&[0xAA; 32])).to_string(),
        &PublicKey::of(&net.roster_key).to_string(),
    );
    std::fs::write(&net.relay_config, toml).unwrap();
    let relay = net.relay().await;
    relay.shutdown().await;
}

/// A participant revoked while a message waits for it keeps that message. The relay no
/// longer reads its queue at a start nor keeps it in memory (a revoked participant, owed
/// something and never receipting again, held every start's reading back for good), but
/// its store still owes it, and a roster that reinstates it has it delivered at its next
/// connection.
#[tokio::test]
async fn a_reinstated_participant_is_delivered_what_waited_for_it_across_restarts() {
    let mut net = cica("");
    let relay = net.relay().await;
    let mut kaz = net.client(relay.local_addr(), "KAZ").await.unwrap();
    let waiting = kaz.send_to("TJK", "before the revocation").await.unwrap();
    net.revoke("TJK");
    assert_eq!(relay.reload_roster().await.unwrap(), 2);
    kaz.close();
    relay.shutdown().await;

    // Started with TJK revoked: the others are served, and the store still owes TJK.
    let relay = net.relay().await;
    let mut kaz = net.client(relay.local_addr(), "KAZ").await.unwrap();
    let mut kgz = net.client(relay.local_addr(), "KGZ").await.unwrap();
    assert_flows(&mut kaz, &mut kgz, "with TJK revoked")
        .await
        .unwrap();
    kaz.close();
    kgz.close();
    relay.shutdown().await;
    let db = net.path().join("relay-data").join("relay.db");
    let conn = rusqlite::Connection::open(&db).unwrap();
    assert_eq!(
        hotline_relay::store::queued_for(&conn, &pid("TJK")).unwrap(),
        1
    );
    drop(conn);

    // Reinstated by a reload: delivered at its next connection.
    let relay = net.relay().await;
    net.update_roster(|r| {
        r.participants
            .iter_mut()
            .find(|p| p.id == pid("TJK"))
            .unwrap()
            .revoked = false;
    });
    assert_eq!(relay.reload_roster().await.unwrap(), 3);
    let mut tjk = net.client(relay.local_addr(), "TJK").await.unwrap();
    let (got, _) = tjk.next_deliver().await.unwrap();
    assert_eq!(got.digest(), waiting.digest());
    tjk.close();
    relay.shutdown().await;
}

/// A node that logs in once a reloaded roster lists its participant as active again, but
/// before the store writer has read that participant's queue from the store (the roster is
/// in force before the writer follows it), has a live session that knows nothing of what
/// waited. It must still be delivered it: on that session, or on the next one once the
/// writer, having read the queue, closes that session. The writer is held at that point
/// by a test gate; the session is live (welcomed) before it goes on.
#[tokio::test]
async fn a_reinstated_participant_logging_in_before_its_queue_is_read_is_delivered_it() {
    let mut net = cica("");
    let gate = Arc::new(hotline_relay::FollowGate::default());
    let relay = net
        .relay_with(hotline_relay::Hosting::default().follow_gate(gate.clone()))
        .await;
    let addr = relay.local_addr();
    let mut kaz = net.client(addr, "KAZ").await.unwrap();
    let waiting = kaz.send_to("TJK", "before the revocation").await.unwrap();

    // Revoked: the writer lets TJK's queue go as soon as it follows (one permit).
    gate.go(1);
    net.revoke("TJK");
    assert_eq!(relay.reload_roster().await.unwrap(), 2);
    tokio::time::timeout(EVENT_TIMEOUT, gate.reached.notified())
        .await
        .expect("the writer followed version 2");

    // Reinstated: the writer is held before it reads TJK's queue, and TJK logs in then.
    net.update_roster(|r| {
        r.participants
            .iter_mut()
            .find(|p| p.id == pid("TJK"))
            .unwrap()
            .revoked = false;
    });
    let meanwhile = async {
        tokio::time::timeout(EVENT_TIMEOUT, gate.reached.notified())
            .await
            .expect("the writer is about to follow version 3");
        let tjk = net
            .client(addr, "TJK")
            .await
            .expect("TJK, active again, logs in");
        gate.go(1_000);
        tjk
    };
    let (reloaded, mut tjk) = tokio::join!(relay.reload_roster(), meanwhile);
    assert_eq!(reloaded.unwrap(), 3);

    let got = match tjk.next_deliver().await {
        Ok((got, _)) => got,
        Err(e) => {
            assert!(
                tjk.session.conn.close_reason().is_some(),
                "TJK's live session was neither delivered what waited nor closed: {e:#}"
            );
            assert_eq!(tjk.closed_code().await.unwrap(), ErrorCode::Normal);
            let mut again = net.client(addr, "TJK").await.unwrap();
            let (got, _) = again.next_deliver().await.unwrap();
            again.close();
            got
        }
    };
    assert_eq!(got.digest(), waiting.digest());
    kaz.close();
    relay.shutdown().await;
}

#[tokio::test]
async fn roster_reload_revokes_live_sessions_and_updates_the_others() {
    let mut net = cica("");
    let (relay, mut kaz, mut kgz) = relay_kaz_kgz(&net).await;
    let addr = relay.local_addr();
    let tjk = net.client(addr, "TJK").await.unwrap();

    net.revoke("TJK");
    assert_eq!(relay.reload_roster().await.unwrap(), 2);
    assert_eq!(tjk.closed_code().await.unwrap(), ErrorCode::Revoked);

    let (update, _) = kaz
        .until(|f| match f {
            RelayToNode::RosterUpdate(r) => Some(r.clone()),
            _ => None,
        })
        .await
        .unwrap();
    let v = hotline_proto::verify_roster(&update, &PublicKey::of(&net.roster_key)).unwrap();
    assert_eq!(v.version, 2);
    assert!(v.participant(&pid("TJK")).unwrap().revoked);

    // The new roster is in force for connecting and routing.
    let code = refusal_code(net.client(addr, "TJK").await);
    assert_eq!(code.unwrap(), ErrorCode::Revoked);
    let env = kaz.envelope(to(&["TJK"]), "to the revoked");
    let r = kaz.submit_wait(&kaz.sign(&env)).await.unwrap();
    assert_eq!(r.unwrap_err().code, RejectCode::UnknownRecipient);
    assert_flows(&mut kaz, &mut kgz, "after the reload")
        .await
        .unwrap();

    // The same version again is refused, even with other content.
    assert!(relay.reload_roster().await.is_err());
    net.roster.participants[0].name = "Renamed".into();
    net.write_roster();
    assert!(relay.reload_roster().await.is_err());
    // A newer roster not signed by the pinned key is refused.
    net.roster.version = 3;
    let forged = Signed::sign(&net.roster, &SigningKey::from_bytes(&[0x33; 32])).unwrap();
    hotline_config::roster_file::write_signed_roster(&net.path().join("roster.signed"), &forged)
        .unwrap();
    assert!(relay.reload_roster().await.is_err());

    // Version 2 stays in force: a node that holds nothing is sent version 2.
    let uzb = net.client(addr, "UZB").await.unwrap();
    let welcome_roster = uzb.session.welcome.roster.clone().unwrap();
    assert_eq!(welcome_roster.decode_unverified().unwrap().version, 2);
    relay.shutdown().await;
}

/// A roster revoking a participant, reloaded after that participant's `Hello` was checked
/// but before its session began, still ends that session: it is not marked seen unchecked.
/// (Before, the session took the reload for one it had handled and ran on.)
#[tokio::test]
async fn a_roster_reloaded_while_a_node_logs_in_is_checked_against_it() {
    let mut net = cica("");
    let gate = Arc::new(hotline_relay::LoginGate::default());
    let relay = net
        .relay_with(hotline_relay::Hosting::default().login_gate(gate.clone()))
        .await;
    let addr = relay.local_addr();
    let connecting = {
        let (fingerprint, key) = (net.fingerprint, net.key("TJK"));
        tokio::spawn(async move { Client::connect(addr, fingerprint, "TJK", key).await })
    };
    tokio::time::timeout(EVENT_TIMEOUT, gate.reached.notified())
        .await
        .expect("TJK logged in");
    net.revoke("TJK");
    assert_eq!(relay.reload_roster().await.unwrap(), 2);
    gate.go.add_permits(1_000);
    let code = match tokio::time::timeout(EVENT_TIMEOUT, connecting)
        .await
        .unwrap()
        .unwrap()
    {
        Ok(tjk) => tjk.closed_code().await,
        refused => refusal_code(refused),
    };
    assert_eq!(code.unwrap(), ErrorCode::Revoked);

    // Those still listed log in and pass messages as before.
    let mut kaz = net.client(addr, "KAZ").await.unwrap();
    let mut kgz = net.client(addr, "KGZ").await.unwrap();
    assert_flows(&mut kaz, &mut kgz, "after the gate")
        .await
        .unwrap();
    relay.shutdown().await;
}

#[tokio::test]
async fn roster_reload_that_drops_a_key_closes_sessions_using_it() {
    let mut net = cica("");
    let relay = net.relay().await;
    let addr = relay.local_addr();
    let mut kaz = net.client(addr, "KAZ").await.unwrap();
    let kgz_old = net.client(addr, "KGZ").await.unwrap();

    // KGZ's key is rotated: the old one is no longer listed.
    let new_key = SigningKey::from_bytes(&[0x77; 32]);
    net.update_roster(|r| {
        r.participants
            .iter_mut()
            .find(|p| p.id == pid("KGZ"))
            .unwrap()
            .keys = vec![PublicKey::of(&new_key)];
    });
    relay.reload_roster().await.unwrap();
    let (code, reason) = close_code_and_reason(&kgz_old.session.conn).await.unwrap();
    assert_eq!(code, ErrorCode::Revoked);
    // Told that its key was rotated out, not that it was revoked.
    assert!(reason.contains("is no longer listed by roster"), "{reason}");
    assert!(!reason.contains("revoked"), "{reason}");
    let code = refusal_code(net.client(addr, "KGZ").await);
    assert_eq!(code.unwrap(), ErrorCode::Revoked);

    let mut kgz = Client::connect(addr, net.fingerprint, "KGZ", new_key)
        .await
        .unwrap();
    assert_flows(&mut kaz, &mut kgz, "to the new key")
        .await
        .unwrap();
    relay.shutdown().await;
}

/// The first connection is closed with `Superseded`, and counted so: the metric that
/// OPERATIONS.md 7.2's `HotlineSecurityRefusals` watches for two nodes with one identity
/// (it used to be counted as `Normal`).
#[tokio::test]
async fn second_connection_supersedes_the_first() {
    let net = two();
    let relay = net.relay().await;
    let addr = relay.local_addr();
    let maddr = relay
        .metrics_addr()
        .expect("metrics enabled in the test config");
    let mut kaz = net.client(addr, "KAZ").await.unwrap();
    let first = net.client(addr, "KGZ").await.unwrap();
    let mut second = net.client(addr, "KGZ").await.unwrap();
    assert_eq!(first.closed_code().await.unwrap(), ErrorCode::Superseded);
    let superseded = "hotline_relay_connections_closed_total{code=\"Superseded\"}";
    wait_metric(maddr, superseded, |n| n == 1.0).await.unwrap();
    let text = http_get(maddr, "/metrics").await.unwrap();
    assert_eq!(
        metric(
            &text,
            "hotline_relay_connections_closed_total{code=\"Normal\"}"
        ),
        Some(0.0),
        "{text}"
    );
    assert_flows(&mut kaz, &mut second, "to the newer connection")
        .await
        .unwrap();
    assert_flows(&mut second, &mut kaz, "from the newer connection")
        .await
        .unwrap();
    relay.shutdown().await;
}

/// A participant logging in again and again (a node with a valid key, in a loop) is let in
/// `session_burst` times, then refused `LimitExceeded` right after authenticating, with a
/// detail saying when to try again: no `Welcome`, its backlog neither read nor sent again
/// (each session that is let in is sent it, and counted), and its live session is not
/// superseded. Another participant logs in meanwhile as usual; before the time the refusal
/// named it is refused again, once it has passed it is let in again and sent its backlog.
/// (Each login used to cost a read of the store and a page of backlog, bounded only by the
/// handshake rate.) The time passes on the budget's own clock (`Hosting::login_clock`), not
/// in a sleep: the refill is a minute, far longer than this test takes in real time.
#[tokio::test]
async fn a_participant_logging_in_in_a_loop_is_refused_past_its_session_budget() {
    const BURST: usize = 3;
    const REFILL_MS: u64 = 60_000;
    let net = two_with(&format!(
        "[limits]\nsession_burst = {BURST}\nsession_refill_ms = {REFILL_MS}\n"
    ));
    let clock = hotline_relay::LoginClock::default();
    let relay = net
        .relay_with(hotline_relay::Hosting::default().login_clock(clock.clone()))
        .await;
    let addr = relay.local_addr();
    let maddr = relay
        .metrics_addr()
        .expect("metrics enabled in the test config");
    let mut kaz = net.client(addr, "KAZ").await.unwrap();
    // A backlog for KGZ, which it never receipts: each session of KGZ is sent it again.
    let queued = kaz.send_to("KGZ", "the backlog").await.unwrap();
    let deliveries = "hotline_relay_deliveries_total";
    let refusals = "hotline_relay_connections_closed_total{code=\"LimitExceeded\"}";
    async fn sent(c: &mut Client, m: &Signed<Envelope>) -> anyhow::Result<()> {
        c.until(|f| matches!(f, RelayToNode::Deliver(d) if d == m).then_some(()))
            .await
            .map(|_| ())
    }

    // KGZ logs in again and again until refused: at least its burst is let in (more only if
    // this machine took longer than a refill over them).
    let mut live = None;
    let mut let_in = 0;
    let reason = loop {
        assert!(let_in <= BURST + 5, "never refused after {let_in} logins");
        match net.client(addr, "KGZ").await {
            Ok(mut kgz) => {
                let_in += 1;
                sent(&mut kgz, &queued).await.unwrap();
                wait_metric(maddr, deliveries, |n| n == let_in as f64)
                    .await
                    .unwrap();
                live = Some(kgz);
            }
            Err(e) => match e.downcast_ref::<NetError>() {
                Some(NetError::Closed {
                    code: ErrorCode::LimitExceeded,
                    reason,
                }) => break reason.clone(),
                _ => panic!("refused otherwise: {e:#}"),
            },
        }
    };
    assert!(let_in >= BURST, "refused after {let_in}");
    assert!(
        reason.contains("KGZ") && reason.contains("retry in"),
        "{reason}"
    );
    wait_metric(maddr, refusals, |n| n == 1.0).await.unwrap();
    let text = http_get(maddr, "/metrics").await.unwrap();
    assert_eq!(metric(&text, deliveries), Some(let_in as f64), "{text}");

    // The refused login superseded nothing: KGZ's live session is served on.
    let mut live = live.expect("let in at least once");
    assert_flows(&mut kaz, &mut live, "to the session still live")
        .await
        .unwrap();
    // Another participant is not affected, nor is KAZ logging in again.
    let mut sec = net.client(addr, "SEC").await.unwrap();
    let mut kaz = net.client(addr, "KAZ").await.unwrap();
    assert_flows(&mut sec, &mut kaz, "from another participant")
        .await
        .unwrap();

    // The refusal says when to try again (`retry in S.T s`, counted from the refusal; at
    // most a refill), read as the node reads it. The time a token bucket takes to refill is
    // what is tested here: the relay's budget clock is moved on, first by half that time.
    let retry_in_ms_of = |reason: &str| {
        hotline_proto::frame::retry_in_ms_of(reason)
            .unwrap_or_else(|| panic!("no `retry in S.T s` in {reason:?}"))
    };
    let retry_in_ms = retry_in_ms_of(&reason);
    assert!(retry_in_ms <= REFILL_MS + 100, "{reason}");
    assert!(retry_in_ms > REFILL_MS / 2, "{reason}");
    let early_ms = retry_in_ms / 2;
    clock.advance(std::time::Duration::from_millis(early_ms));
    // Before then, KGZ is refused again, told to wait what is left (the real time this
    // test has taken since is seconds at most; the refill is a minute).
    let reason = match net.client(addr, "KGZ").await {
        Ok(_) => panic!("let in {early_ms} ms after a refusal that said {retry_in_ms} ms"),
        Err(e) => match e.downcast_ref::<NetError>() {
            Some(NetError::Closed {
                code: ErrorCode::LimitExceeded,
                reason,
            }) => reason.clone(),
            _ => panic!("refused otherwise: {e:#}"),
        },
    };
    let left_ms = retry_in_ms_of(&reason);
    assert!(left_ms <= retry_in_ms - early_ms + 100, "{reason}");
    wait_metric(maddr, refusals, |n| n == 2.0).await.unwrap();
    // Trying again when the last refusal said, KGZ is let in, and sent its backlog.
    clock.advance(std::time::Duration::from_millis(left_ms));
    let mut kgz = net.client(addr, "KGZ").await.unwrap();
    sent(&mut kgz, &queued).await.unwrap();
    assert_flows(&mut kaz, &mut kgz, "after the refill")
        .await
        .unwrap();
    let text = http_get(maddr, "/metrics").await.unwrap();
    assert_eq!(metric(&text, refusals), Some(2.0), "{text}");
    relay.shutdown().await;
}

/// A node that leaves is counted as having ended its connection, not as one the relay
/// closed: `connections_closed_total` is what the relay refused or shut, and an operator
/// alerting on it must not be woken by nodes restarting.
#[tokio::test]
async fn a_node_leaving_is_counted_apart_from_the_relays_closes() {
    let net = two();
    let (relay, maddr, kaz, kgz) = with_metrics(&net).await;
    kaz.close();
    let left = "hotline_relay_connections_ended_by_node_total{code=\"Normal\"}";
    wait_metric(maddr, left, |n| n == 1.0).await.unwrap();
    kgz.session
        .conn
        .close(ErrorCode::Internal.close_code().into(), b"store failed");
    let failed = "hotline_relay_connections_ended_by_node_total{code=\"Internal\"}";
    wait_metric(maddr, failed, |n| n == 1.0).await.unwrap();
    let text = http_get(maddr, "/metrics").await.unwrap();
    for closed in ["Normal", "Internal"] {
        assert_eq!(
            metric(
                &text,
                &format!("hotline_relay_connections_closed_total{{code=\"{closed}\"}}")
            ),
            Some(0.0),
            "{text}"
        );
    }
    assert_eq!(
        metric(&text, "hotline_relay_connections_lost_total"),
        Some(0.0),
        "{text}"
    );
    relay.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// Operations: metrics, health, audit journal
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn metrics_and_health_report_traffic() {
    let net = two();
    let (relay, maddr, mut kaz, mut kgz) = with_metrics(&net).await;
    for i in 0..3 {
        assert_flows(&mut kaz, &mut kgz, &format!("m{i}"))
            .await
            .unwrap();
    }
    let env = kaz.envelope(to(&["KGZ"]), "forged");
    let good = kaz.sign(&env);
    let mut sig = good.signature();
    sig.0[33] ^= 0x04;
    let r = kaz
        .submit_wait(&Signed::from_parts(good.bytes().to_vec(), good.key(), sig))
        .await
        .unwrap();
    assert_eq!(r.unwrap_err().code, RejectCode::BadSignature);

    let text = http_get(maddr, "/metrics").await.unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert_eq!(
        metric(&text, "hotline_relay_messages_accepted_total"),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "hotline_relay_receipts_stored_total"),
        Some(3.0)
    );
    let forged = metric(
        &text,
        "hotline_relay_messages_rejected_total{reason=\"bad_signature\"}",
    )
    .unwrap();
    assert!(forged >= 1.0, "{text}");
    assert_eq!(metric(&text, "hotline_relay_sessions"), Some(2.0));
    assert_eq!(
        metric(
            &text,
            "hotline_relay_participant_connected{participant=\"KAZ\"}"
        ),
        Some(1.0)
    );
    // Each session's link: a round trip measured (loopback: far under a second), packets
    // sent to KGZ (three deliveries at least), none lost on loopback.
    let rtt = metric(
        &text,
        "hotline_relay_participant_rtt_seconds{participant=\"KGZ\"}",
    )
    .unwrap();
    assert!(rtt > 0.0 && rtt < 1.0, "{text}");
    let sent = metric(
        &text,
        "hotline_relay_participant_packets_sent_total{participant=\"KGZ\"}",
    )
    .unwrap();
    assert!(sent >= 3.0, "{text}");
    assert!(
        metric(
            &text,
            "hotline_relay_participant_packets_lost_total{participant=\"KAZ\"}"
        )
        .is_some(),
        "{text}"
    );
    // Commits are timed, in seconds: the three messages' commits at least (a scrape may
    // fall between the two observations of a commit that is still finishing, so the count
    // is not compared with the batch histogram's), each more than nothing (a commit writes
    // the log) and far less than a second here.
    let commits = metric(&text, "hotline_relay_commit_duration_seconds_count").unwrap();
    assert!(commits >= 3.0, "{text}");
    let total = metric(&text, "hotline_relay_commit_duration_seconds_sum").unwrap();
    assert!(total > 0.0 && total / commits < 1.0, "{text}");
    // Each message was answered after a sync of the log on its own thread (one after the
    // other, so a sync each at least), and no sync failed.
    let syncs = metric(&text, "hotline_relay_wal_sync_duration_seconds_count").unwrap();
    assert!(syncs >= 3.0, "{text}");
    let synced = metric(&text, "hotline_relay_wal_sync_duration_seconds_sum").unwrap();
    assert!(synced > 0.0 && synced / syncs < 1.0, "{text}");
    assert_eq!(
        metric(&text, "hotline_relay_wal_sync_failures_total"),
        Some(0.0),
        "{text}"
    );
    // A message's stages: each accepted submission was checked and waited for the writer
    // once (the forged one never reached it), and each was written to KGZ's stream from
    // memory once. The fan-out is observed just after the write, so it is waited for.
    for stage in [
        "hotline_relay_submit_check_seconds",
        "hotline_relay_writer_wait_seconds",
    ] {
        assert_eq!(
            metric(&text, &format!("{stage}_count")),
            Some(3.0),
            "{text}"
        );
        let sum = metric(&text, &format!("{stage}_sum")).unwrap();
        assert!((0.0..3.0).contains(&sum), "{stage}: {text}");
    }
    // The check includes a signature verification: more than nothing.
    assert!(metric(&text, "hotline_relay_submit_check_seconds_sum").unwrap() > 0.0);
    wait_metric(maddr, "hotline_relay_fanout_seconds_count", |n| n >= 3.0)
        .await
        .unwrap();
    let text = http_get(maddr, "/metrics").await.unwrap();
    assert_eq!(
        metric(&text, "hotline_relay_fanout_seconds_count"),
        Some(3.0),
        "{text}"
    );
    let fanout = metric(&text, "hotline_relay_fanout_seconds_sum").unwrap();
    assert!((0.0..3.0).contains(&fanout), "{text}");

    let health = http_get(maddr, "/health").await.unwrap();
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    let body = health.split("\r\n\r\n").nth(1).unwrap_or_default();
    assert!(body.contains("\"status\":\"ok\""), "{health}");
    assert!(body.contains("\"roster_version\":1"), "{health}");
    relay.shutdown().await;
}

/// `/health` until its status is `want`: the whole response.
async fn wait_health(maddr: std::net::SocketAddr, want: &str) -> anyhow::Result<String> {
    let deadline = tokio::time::Instant::now() + EVENT_TIMEOUT;
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(20));
    loop {
        tick.tick().await;
        let health = http_get(maddr, "/health").await?;
        if health.contains(&format!("\"status\":\"{want}\"")) {
            return Ok(health);
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "/health never answered {want}: last {health}"
        );
    }
}

/// A disk that stops answering shows while it lasts: a commit still running after the stall
/// threshold makes `/health` answer `store_stalled` with 503, and
/// `hotline_relay_store_busy_seconds` count up; once the commit ends the relay is `ok`
/// again. (The histograms see a commit only once it has ended: before, a hung disk left the
/// relay accepting nothing with `/health` answering ok.) The disk is a test seam: each
/// commit waits 1.5 s before its `COMMIT`, and 200 ms counts as a stall.
#[tokio::test]
async fn a_store_whose_disk_stops_answering_is_unhealthy_while_it_lasts() -> anyhow::Result<()> {
    let net = two();
    let relay = net
        .relay_with(
            hotline_relay::Hosting::default()
                .slow_commits(std::time::Duration::from_millis(1_500))
                .store_stall_after(std::time::Duration::from_millis(200)),
        )
        .await;
    let maddr = relay
        .metrics_addr()
        .expect("metrics enabled in the test config");
    let addr = relay.local_addr();
    let mut kaz = net.client(addr, "KAZ").await?;
    let _kgz = net.client(addr, "KGZ").await?;
    let health = http_get(maddr, "/health").await?;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");

    let env = kaz.envelope(Audience::Participants(vec![pid("KGZ")]), "on a slow disk");
    kaz.submit(&kaz.sign(&env)).await?;
    let stalled = wait_health(maddr, "store_stalled").await?;
    assert!(stalled.starts_with("HTTP/1.1 503"), "{stalled}");
    let busy = metric(
        &http_get(maddr, "/metrics").await?,
        "hotline_relay_store_busy_seconds",
    );
    assert!(busy.is_some_and(|b| b >= 0.2), "{busy:?}");

    let (accepted, _) = kaz
        .until(|f| match f {
            RelayToNode::Accepted(a) => Some(a.id),
            _ => None,
        })
        .await?;
    assert_eq!(accepted, env.id);
    let ok = wait_health(maddr, "ok").await?;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    relay.shutdown().await;
    Ok(())
}

/// A store whose commits fail answers `store_failing` on `/health` while it refuses writes,
/// and `ok` again once it takes them, with no traffic meanwhile: the writer tries a write of
/// its own (a `store.recovered` journal entry) while commits fail. Before, `/health` stayed
/// `store_failing` until a node happened to send something, after the operator had freed
/// the disk. The failure is a trigger added to the running relay's store (as in
/// `faults.rs`), on the journal, which every commit and every such try writes to.
#[tokio::test]
async fn a_failing_store_is_healthy_again_once_it_takes_writes_without_traffic(
) -> anyhow::Result<()> {
    let net = two();
    let (relay, maddr, mut kaz, _kgz) = with_metrics(&net).await;
    let db = rusqlite::Connection::open(net.path().join("relay-data/relay.db"))?;
    db.execute_batch(
        "CREATE TRIGGER injected BEFORE INSERT ON journal
         BEGIN SELECT RAISE(ABORT, 'injected failure'); END;",
    )?;
    let env = kaz.envelope(Audience::Participants(vec![pid("KGZ")]), "while failing");
    kaz.submit(&kaz.sign(&env)).await?;
    let refused = kaz
        .answer(env.id)
        .await?
        .expect_err("a message whose commit failed is refused");
    assert_eq!(refused.code, RejectCode::StorageUnavailable, "{refused:?}");
    // The writer's own tries fail too while the trigger stands.
    let failing = http_get(maddr, "/health").await?;
    assert!(failing.starts_with("HTTP/1.1 503"), "{failing}");
    assert!(
        failing.contains("\"status\":\"store_failing\""),
        "{failing}"
    );

    db.execute_batch("DROP TRIGGER injected")?;
    let ok = wait_health(maddr, "ok").await?;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    let recovered: i64 = db.query_row(
        "SELECT count(*) FROM journal WHERE kind = 'store.recovered'",
        [],
        |r| r.get(0),
    )?;
    assert_eq!(recovered, 1);
    relay.shutdown().await;
    // The entry is in the journal's chain: the relay's start-up check passes over it.
    net.relay().await.shutdown().await;
    Ok(())
}

/// The receipts a relay holds for a sender until it says it has stored them
/// (`ReceiptsStored`) are counted per sender (`hotline_relay_forward_queue_depth`): one per
/// receipt KGZ sends for KAZ's messages, one less for each KAZ confirms, and after a
/// restart the count comes from the store.
#[tokio::test]
async fn forwarded_receipts_are_counted_until_the_sender_has_stored_them() {
    let net = two();
    let depth = "hotline_relay_forward_queue_depth{participant=\"KAZ\"}";
    let (relay, maddr, mut kaz, mut kgz) = with_metrics(&net).await;
    let mut receipts = Vec::new();
    for i in 0..2 {
        kaz.send_to("KGZ", &format!("m{i}")).await.unwrap();
        let (m, _) = kgz.next_deliver().await.unwrap();
        receipts.push(
            kgz.receipt_stored(ReceiptKind::Delivered, &[m])
                .await
                .unwrap(),
        );
    }
    wait_metric(maddr, depth, |n| n == 2.0).await.unwrap();
    // (A node names only receipts it holds; the relay does not check that, so the test
    // names the first without reading it from KAZ's stream.)
    let first = receipts[0].digest();
    kaz.send(&NodeToRelay::ReceiptsStored(vec![first]))
        .await
        .unwrap();
    wait_metric(maddr, depth, |n| n == 1.0).await.unwrap();
    drop((kaz, kgz));
    relay.shutdown().await;

    let (relay, maddr, _kaz, _kgz) = with_metrics(&net).await;
    let text = http_get(maddr, "/metrics").await.unwrap();
    assert_eq!(metric(&text, depth), Some(1.0), "{text}");
    relay.shutdown().await;
}

/// The Secretariat's network-wide picture (`hotline relay report`), read from a running
/// relay's store: KAZ's alert to KGZ and SEC, with a deadline already past; KGZ's node
/// receipts it and its duty officer acknowledges; SEC never connects. The report shows 1 of
/// 2 delivered and acknowledged (by whom), SEC overdue, and nothing of a message outside
/// the period.
#[tokio::test]
async fn the_relay_report_shows_who_holds_and_who_acknowledged_each_message() {
    let net = two();
    let (relay, mut kaz, mut kgz) = relay_kaz_kgz(&net).await;
    let mut env = kaz.envelope(
        Audience::Participants(vec![pid("KGZ"), pid("SEC")]),
        "Incident",
    );
    env.respond_by_ms = Some(env.created_at_ms + 1);
    let sent = kaz.sign(&env);
    kaz.submit_wait(&sent).await.unwrap().unwrap();
    let (got, _) = kgz.next_deliver().await.unwrap();
    kgz.receipt_stored(ReceiptKind::Delivered, std::slice::from_ref(&got))
        .await
        .unwrap();
    let ack = ReceiptKind::Acknowledged {
        officer: "Duty officer Aliyeva".into(),
        note: None,
    };
    kgz.receipt_stored(ack, &[got]).await.unwrap();
    // A later message without a deadline: listed, never overdue.
    let plain = kaz.envelope(Audience::Participants(vec![pid("KGZ")]), "Notice");
    kaz.submit_wait(&kaz.sign(&plain)).await.unwrap().unwrap();

    let config = net.relay_config.to_str().unwrap();
    let out = hotline_cli(net.path(), &["relay", "report", "-c", config, "--json"])
        .await
        .unwrap();
    let all = out.json().unwrap();
    let all = all.as_array().unwrap();
    assert_eq!(all.len(), 2, "{all:?}");
    assert_eq!(all[0]["id"], plain.id.to_string().as_str(), "newest first");
    assert_eq!(all[0]["overdue"], 0);
    let m = &all[1];
    assert_eq!(m["id"], env.id.to_string().as_str());
    assert_eq!(
        (
            &m["total"],
            &m["delivered"],
            &m["acknowledged"],
            &m["overdue"]
        ),
        (&json(2), &json(1), &json(1), &json(1)),
        "{m}"
    );
    let rows = m["recipients"].as_array().unwrap();
    let row = |who: &str| rows.iter().find(|r| r["recipient"] == who).unwrap();
    assert_eq!(row("KGZ")["officer"], "Duty officer Aliyeva");
    assert!(row("KGZ")["acked_at_ms"].as_u64().unwrap() >= env.created_at_ms);
    assert_eq!(row("KGZ")["overdue"], false);
    assert!(row("SEC")["delivered_at_ms"].is_null());
    assert_eq!(row("SEC")["overdue"], true);

    let one = hotline_cli(
        net.path(),
        &["relay", "report", "-c", config, "--id", &env.id.to_string()],
    )
    .await
    .unwrap();
    assert!(one.status.success(), "{}", one.stderr);
    assert!(
        one.stdout
            .contains("delivered 1/2  acknowledged 1/2  overdue 1"),
        "{}",
        one.stdout
    );
    assert!(
        one.stdout.contains("Duty officer Aliyeva"),
        "{}",
        one.stdout
    );
    assert!(one.stdout.contains("OVERDUE"), "{}", one.stdout);
    // A malformed id is said to be one, not a message the store lacks
    // (a malformed argument, status 2).
    let bad = hotline_cli(
        net.path(),
        &["relay", "report", "-c", config, "--id", "not-an-id"],
    )
    .await
    .unwrap();
    assert_eq!(bad.status.code(), Some(2), "{}", bad.stderr);
    assert!(
        bad.stderr
            .contains("--id: message id \"not-an-id\" must be 32 hexadecimal digits")
            && !bad.stderr.contains("no message"),
        "{}",
        bad.stderr
    );
    let overdue = hotline_cli(
        net.path(),
        &["relay", "report", "-c", config, "--overdue", "--json"],
    )
    .await
    .unwrap();
    let overdue = overdue.json().unwrap();
    let ids: Vec<_> = overdue
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].clone())
        .collect();
    assert_eq!(ids, vec![serde_json::json!(env.id.to_string())]);
    // A period that ends before the message: nothing.
    let none = hotline_cli(
        net.path(),
        &["relay", "report", "-c", config, "--hours", "0", "--json"],
    )
    .await
    .unwrap();
    assert_eq!(
        none.json().unwrap(),
        serde_json::json!([]),
        "{}",
        none.stdout
    );
    relay.shutdown().await;
}

fn json(n: u64) -> serde_json::Value {
    serde_json::json!(n)
}

/// A relay whose writer is idle between commits copies its write-ahead log into the
/// database in the background (`crates/relay/src/checkpoint.rs`), not inside a commit: the
/// rounds are timed and counted, none fails, and traffic flows on.
#[tokio::test]
async fn the_write_ahead_log_is_checkpointed_in_the_background() {
    let net = two();
    let (relay, maddr, mut kaz, mut kgz) = with_metrics(&net).await;
    // One message at a time, each accepted, delivered and receipted before the next: at
    // least 24 commits (`CHECKPOINT_EVERY_COMMITS`), with the writer waiting in between.
    for i in 0..24 {
        assert_flows(&mut kaz, &mut kgz, &format!("m{i}"))
            .await
            .unwrap();
    }
    wait_metric(
        maddr,
        "hotline_relay_checkpoint_duration_seconds_count",
        |n| n >= 1.0,
    )
    .await
    .unwrap();
    let text = http_get(maddr, "/metrics").await.unwrap();
    assert_eq!(
        metric(&text, "hotline_relay_checkpoint_failures_total"),
        Some(0.0),
        "{text}"
    );
    assert!(
        metric(&text, "hotline_relay_wal_frames").is_some_and(|f| f > 0.0),
        "{text}"
    );
    assert_flows(&mut kaz, &mut kgz, "after").await.unwrap();
    relay.shutdown().await;
}

#[tokio::test]
async fn audit_journal_records_everything_and_names_a_tampered_entry() {
    let net = two();
    let (relay, mut kaz, mut kgz) = relay_kaz_kgz(&net).await;
    let mut messages = Vec::new();
    for i in 0..3 {
        messages.push(kaz.send_to("KGZ", &format!("m{i}")).await.unwrap());
        // A duplicate submit records nothing new.
        let again = kaz.submit_wait(messages.last().unwrap()).await.unwrap();
        assert!(again.is_ok());
    }
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(kgz.next_deliver().await.unwrap().0);
    }
    let delivered = kgz
        .receipt_stored(ReceiptKind::Delivered, &got)
        .await
        .unwrap();
    // A repeated receipt is stored once.
    let d = delivered.digest();
    kgz.send(&NodeToRelay::Receipt(delivered.clone()))
        .await
        .unwrap();
    kgz.until(|f| matches!(f, RelayToNode::ReceiptStored(x) if *x == d).then_some(()))
        .await
        .unwrap();
    kgz.receipt_stored(
        ReceiptKind::Acknowledged {
            officer: "Duty officer".into(),
            note: Some("seen".into()),
        },
        &got[..1],
    )
    .await
    .unwrap();
    // And one rejected message: not journaled.
    let env = kaz.envelope(to(&["NOPE"]), "nobody");
    assert!(kaz.submit_wait(&kaz.sign(&env)).await.unwrap().is_err());
    kaz.close();
    kgz.close();
    relay.shutdown().await;

    let data = net.path().join("relay-data");
    let db = data.join("relay.db");
    let conn = rusqlite::Connection::open(&db).unwrap();
    let report = hotline_store::verify_journal(&conn).unwrap();
    assert_eq!(
        report.entries,
        1 + 3 + 2,
        "the roster it started on, 3 messages and 2 receipts"
    );
    let entries: Vec<(String, Vec<u8>)> = conn
        .prepare("SELECT kind, payload FROM journal ORDER BY seq")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let kinds: Vec<&str> = entries.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "roster.installed",
            "message.accepted",
            "message.accepted",
            "message.accepted",
            "receipt.delivered",
            "receipt.acknowledged"
        ]
    );
    // The roster whole (its row is replaced by the next one kept).
    let roster: hotline_proto::Signed<hotline_proto::Roster> =
        hotline_proto::codec::decode(&entries[0].1, usize::MAX).unwrap();
    assert_eq!(roster.decode_unverified().unwrap().version, 1);
    // Each entry commits to its record's exact bytes: the digest, then the key and
    // signature (the bytes themselves are in `messages` and `receipts`).
    let payloads = entries[1..].iter().map(|(_, p)| p);
    let mut records: Vec<_> = messages
        .iter()
        .map(|m| (m.digest(), m.key(), m.signature()))
        .collect();
    records.push((d, delivered.key(), delivered.signature()));
    for (payload, (digest, key, sig)) in payloads.zip(&records) {
        assert_eq!(payload.len(), 128);
        assert_eq!(&payload[..32], &digest.0[..]);
        assert_eq!(&payload[32..64], &key.0[..]);
        assert_eq!(&payload[64..], &sig.0[..]);
    }

    let ok = std::process::Command::new(hotline_bin().unwrap())
        .args(["audit", "verify", "--data"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(ok.status.success(), "{ok:?}");
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(stdout.contains("6 entries"), "{stdout}");
    assert!(
        stdout.contains("5 stored messages and receipts match their entries"),
        "{stdout}"
    );
    let audit = || {
        let out = std::process::Command::new(hotline_bin().unwrap())
            .args(["audit", "verify", "--data"])
            .arg(&data)
            .output()
            .unwrap();
        assert!(!out.status.success(), "a tampered store verified: {out:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };

    // The first message's row given the second's bytes and digest: every row still hashes
    // to its digest, so only the journal can tell.
    let swap = "UPDATE messages SET bytes = (SELECT bytes FROM messages WHERE rseq = ?2),
                digest = (SELECT digest FROM messages WHERE rseq = ?2) WHERE rseq = ?1";
    let first: (Vec<u8>, Vec<u8>) = conn
        .query_row(
            "SELECT bytes, digest FROM messages WHERE rseq = 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    conn.execute(swap, [1, 2]).unwrap();
    let stderr = audit();
    assert!(stderr.contains("differs from journal entry 2"), "{stderr}");
    conn.execute(
        "UPDATE messages SET bytes = ?1, digest = ?2 WHERE rseq = 1",
        rusqlite::params![first.0, first.1],
    )
    .unwrap();
    // A stored receipt removed: its journal entry names what is no longer there.
    conn.execute("DELETE FROM receipts WHERE is_ack = 1", [])
        .unwrap();
    let stderr = audit();
    assert!(
        stderr.contains("journal entry 6 (receipt.acknowledged)") && stderr.contains("not stored"),
        "{stderr}"
    );

    conn.execute("UPDATE journal SET payload = x'00' WHERE seq = 5", [])
        .unwrap();
    match hotline_store::verify_journal(&conn) {
        Err(hotline_store::StoreError::JournalBroken { seq, .. }) => assert_eq!(seq, 5),
        other => panic!("expected the chain to break at entry 5, got {other:?}"),
    }
    drop(conn);
    let stderr = audit();
    assert!(stderr.contains("entry 5"), "{stderr}");
}

// ---------------------------------------------------------------------------------------
// Delivery details: redelivery, the delivery window, receipts across senders
// ---------------------------------------------------------------------------------------

/// Fails, saying `why`, if anything is delivered to `c` before the Pong of a Ping sent now:
/// nothing more is on its way.
async fn nothing_delivered_before_pong(c: &mut Client, nonce: u64, why: &str) {
    let before = until_pong(c, nonce).await;
    assert!(
        !before.iter().any(|f| matches!(f, RelayToNode::Deliver(_))),
        "{why}: {before:?}"
    );
}

/// Sends a Ping and returns every frame that arrived before its Pong: a barrier that
/// proves what the relay has (not) sent so far.
async fn until_pong(c: &mut Client, nonce: u64) -> Vec<RelayToNode> {
    c.send(&NodeToRelay::Ping(nonce)).await.unwrap();
    let ((), before) = c
        .until(|f| matches!(f, RelayToNode::Pong(n) if *n == nonce).then_some(()))
        .await
        .unwrap();
    before
}

#[tokio::test]
async fn unreceipted_messages_are_redelivered_on_reconnect() {
    let net = two();
    let (relay, mut kaz, mut kgz) = relay_kaz_kgz(&net).await;
    let addr = relay.local_addr();
    let m1 = kaz.send_to("KGZ", "one").await.unwrap();
    let m2 = kaz.send_to("KGZ", "two").await.unwrap();
    assert_eq!(kgz.next_deliver().await.unwrap().0, m1);
    assert_eq!(kgz.next_deliver().await.unwrap().0, m2);
    // Only the first is receipted before the node goes away.
    kgz.receipt_stored(ReceiptKind::Delivered, std::slice::from_ref(&m1))
        .await
        .unwrap();
    kgz.close();

    let mut kgz = net.client(addr, "KGZ").await.unwrap();
    let (again, _) = kgz.next_deliver().await.unwrap();
    assert_eq!(
        again, m2,
        "at-least-once: the unreceipted message comes again"
    );
    nothing_delivered_before_pong(&mut kgz, 1, "the receipted message is not redelivered").await;
    relay.shutdown().await;
}

#[tokio::test]
async fn delivery_pauses_at_the_window_until_receipts_arrive() {
    let net = two_with("[limits]\ndelivery_window = 3\n");
    let relay = net.relay().await;
    let addr = relay.local_addr();
    let mut kaz = net.client(addr, "KAZ").await.unwrap();
    let mut sent = Vec::new();
    for i in 0..7 {
        sent.push(kaz.send_to("KGZ", &format!("m{i}")).await.unwrap());
    }

    let mut kgz = net.client(addr, "KGZ").await.unwrap();
    let mut got = Vec::new();
    // Deliveries released by a receipt may overtake its ReceiptStored: keep them.
    let mut early = std::collections::VecDeque::new();
    for round in 0..3 {
        let expect = (sent.len() - got.len()).min(3);
        let mut batch = Vec::new();
        for _ in 0..expect {
            match early.pop_front() {
                Some(d) => batch.push(d),
                None => batch.push(kgz.next_deliver().await.unwrap().0),
            }
        }
        assert!(early.is_empty(), "round {round}: {} early", early.len());
        nothing_delivered_before_pong(
            &mut kgz,
            round,
            &format!("round {round}: more than the window in flight"),
        )
        .await;
        let d = kgz
            .receipt(ReceiptKind::Delivered, &batch)
            .await
            .unwrap()
            .digest();
        let ((), before) = kgz
            .until(|f| matches!(f, RelayToNode::ReceiptStored(x) if *x == d).then_some(()))
            .await
            .unwrap();
        early.extend(before.into_iter().filter_map(|f| match f {
            RelayToNode::Deliver(s) => Some(s),
            _ => None,
        }));
        got.extend(batch);
    }
    assert_eq!(got, sent);
    relay.shutdown().await;
}

#[tokio::test]
async fn receipts_reach_every_sender_they_name_once() {
    let net = cica("");
    let relay = net.relay().await;
    let addr = relay.local_addr();
    let mut kaz = net.client(addr, "KAZ").await.unwrap();
    let mut tjk = net.client(addr, "TJK").await.unwrap();
    let mut kgz = net.client(addr, "KGZ").await.unwrap();
    let from_kaz = kaz.send_to("KGZ", "from KAZ").await.unwrap();
    let from_tjk = tjk.send_to("KGZ", "from TJK").await.unwrap();
    let mut got = vec![
        kgz.next_deliver().await.unwrap().0,
        kgz.next_deliver().await.unwrap().0,
    ];
    got.sort_by_key(|s| s.decode_unverified().unwrap().sender);
    assert_eq!(got, vec![from_kaz, from_tjk]);

    // One cumulative receipt covering both senders' messages, sent twice.
    let r = kgz
        .receipt_stored(ReceiptKind::Delivered, &got)
        .await
        .unwrap();
    let d = r.digest();
    kgz.send(&NodeToRelay::Receipt(r.clone())).await.unwrap();
    kgz.until(|f| matches!(f, RelayToNode::ReceiptStored(x) if *x == d).then_some(()))
        .await
        .unwrap();
    // A receipt naming a message this relay never held (sent through another relay) is
    // still stored and forwarded to the sender it names.
    let elsewhere = Receipt {
        version: hotline_proto::PROTOCOL_VERSION,
        recipient: pid("KGZ"),
        kind: ReceiptKind::Delivered,
        created_at_ms: now_ms(),
        items: vec![hotline_proto::ReceiptItem {
            id: MessageId::random(),
            sender: pid("KAZ"),
            digest: hotline_proto::Digest([9; 32]),
        }],
    };
    let elsewhere = Signed::sign(&elsewhere, &net.key("KGZ")).unwrap();
    let e = elsewhere.digest();
    kgz.send(&NodeToRelay::Receipt(elsewhere.clone()))
        .await
        .unwrap();
    kgz.until(|f| matches!(f, RelayToNode::ReceiptStored(x) if *x == e).then_some(()))
        .await
        .unwrap();

    for (who, c) in [("KAZ", &mut kaz), ("TJK", &mut tjk)] {
        let (fwd, _) = c.next_receipt().await.unwrap();
        assert_eq!(fwd, r, "{who} gets the cumulative receipt unchanged");
    }
    // KAZ's next forwarded receipt is the one for the foreign message, not a duplicate.
    let (next, _) = kaz.next_receipt().await.unwrap();
    assert_eq!(next, elsewhere);
    // TJK is named only by the first.
    let before = until_pong(&mut tjk, 1).await;
    assert!(
        !before.iter().any(|f| matches!(f, RelayToNode::Receipt(_))),
        "{before:?}"
    );
    relay.shutdown().await;
}

/// `c`'s signed receipt of `kind` for `messages`, signed at `at` (so that two receipts
/// for the same messages differ), sent and answered.
async fn receipt_at(
    c: &mut Client,
    kind: ReceiptKind,
    messages: &[hotline_proto::ReceiptItem],
    at: u64,
) -> Signed<Receipt> {
    let r = Receipt {
        version: hotline_proto::PROTOCOL_VERSION,
        recipient: c.id.clone(),
        kind,
        created_at_ms: at,
        items: messages.to_vec(),
    };
    let r = Signed::sign(&r, &c.key).unwrap();
    c.send(&NodeToRelay::Receipt(r.clone())).await.unwrap();
    assert_eq!(c.receipt_answer(r.digest()).await.unwrap(), Ok(()));
    r
}

/// A receipt is kept and forwarded only when it tells something new: the first receipt from
/// a recipient for a message, and its first acknowledgement. Another delivered receipt or
/// acknowledgement for the same message is answered as stored (the node stops sending it)
/// but neither kept nor forwarded, also after a restart. Receipts for messages the relay
/// does not hold are forwarded while the sender's forward queue is below
/// `forward_foreign_max`, and kept only within their signer's budget for the day
/// (`foreign_receipts_per_day_max`, which a restart keeps: the relay rebuilds it from the
/// receipts it stored that day). Without these rules a
/// participant could fill the relay's disk and another's forward queue with signed
/// receipts, within its receipt rate.
#[tokio::test]
async fn receipts_that_tell_nothing_new_are_answered_but_neither_kept_nor_forwarded() {
    let net = two_with("[limits]\nforward_foreign_max = 1\nforeign_receipts_per_day_max = 2\n");
    let depth = "hotline_relay_forward_queue_depth{participant=\"KAZ\"}";
    // Receipts stored, redundant, and unforwarded (for a full forward queue, and for a
    // signer over its budget) since the relay started, and KAZ's forward queue.
    let counts = |maddr| async move {
        let text = http_get(maddr, "/metrics").await.unwrap();
        [
            "hotline_relay_receipts_stored_total",
            "hotline_relay_receipts_redundant_total",
            "hotline_relay_receipts_unforwarded_total{reason=\"forward_queue_full\"}",
            "hotline_relay_receipts_unforwarded_total{reason=\"signer_over_budget\"}",
            depth,
        ]
        .map(|m| match metric(&text, m) {
            Some(v) => v,
            // A relay started with KAZ's forward queue empty has no series for it until
            // it forwards something.
            None if m == depth => 0.0,
            None => panic!("{m} missing: {text}"),
        })
    };
    let (relay, maddr, mut kaz, mut kgz) = with_metrics(&net).await;
    let m = kaz.send_to("KGZ", "one").await.unwrap();
    let (got, _) = kgz.next_deliver().await.unwrap();
    assert_eq!(got, m);
    let env = m.decode_unverified().unwrap();
    let item = hotline_proto::ReceiptItem {
        id: env.id,
        sender: env.sender,
        digest: m.digest(),
    };
    let ack = |n: &str| ReceiptKind::Acknowledged {
        officer: n.into(),
        note: None,
    };
    let t = now_ms();
    let items = std::slice::from_ref(&item);
    let d1 = receipt_at(&mut kgz, ReceiptKind::Delivered, items, t).await;
    let d2 = receipt_at(&mut kgz, ReceiptKind::Delivered, items, t + 1).await;
    let a1 = receipt_at(&mut kgz, ack("Ivanova"), items, t + 2).await;
    receipt_at(&mut kgz, ack("Petrov"), items, t + 3).await;
    receipt_at(&mut kgz, ReceiptKind::Delivered, items, t + 4).await;
    assert_ne!(d1.digest(), d2.digest());
    // The counters and the forward queue are updated before the answers are sent.
    assert_eq!(counts(maddr).await, [2.0, 3.0, 0.0, 0.0, 2.0]);
    for want in [&d1, &a1] {
        let (fwd, _) = kaz.next_receipt().await.unwrap();
        assert_eq!(&fwd, want);
    }
    kaz.send(&NodeToRelay::ReceiptsStored(vec![d1.digest(), a1.digest()]))
        .await
        .unwrap();
    wait_metric(maddr, depth, |n| n == 0.0).await.unwrap();

    // Messages the relay never held: the first receipt is forwarded, the second waits on
    // a full queue and is not.
    let foreign = |n: u8| hotline_proto::ReceiptItem {
        id: MessageId::random(),
        sender: pid("KAZ"),
        digest: hotline_proto::Digest([n; 32]),
    };
    // The budget is the relay's for the UTC day of its clock, which is this one: a run
    // across midnight may start the budget again midway (below).
    let utc_day = || now_ms() / 86_400_000;
    let day = utc_day();
    let f1 = receipt_at(&mut kgz, ReceiptKind::Delivered, &[foreign(1)], t + 5).await;
    receipt_at(&mut kgz, ReceiptKind::Delivered, &[foreign(2)], t + 6).await;
    assert_eq!(counts(maddr).await, [3.0, 3.0, 1.0, 0.0, 1.0]);
    let (fwd, _) = kaz.next_receipt().await.unwrap();
    assert_eq!(fwd, f1);

    // A cooperating sender's node confirms such receipts at once, so its queue never
    // fills: the signer's budget (2 a day here) is what bounds them. KGZ's second kept
    // one is forwarded; the third is answered as stored but neither kept nor forwarded.
    kaz.send(&NodeToRelay::ReceiptsStored(vec![f1.digest()]))
        .await
        .unwrap();
    wait_metric(maddr, depth, |n| n == 0.0).await.unwrap();
    let f3 = receipt_at(&mut kgz, ReceiptKind::Delivered, &[foreign(3)], t + 7).await;
    let (fwd, _) = kaz.next_receipt().await.unwrap();
    assert_eq!(fwd, f3);
    kaz.send(&NodeToRelay::ReceiptsStored(vec![f3.digest()]))
        .await
        .unwrap();
    wait_metric(maddr, depth, |n| n == 0.0).await.unwrap();
    receipt_at(&mut kgz, ReceiptKind::Delivered, &[foreign(4)], t + 8).await;
    let c = counts(maddr).await;
    if utc_day() == day {
        assert_eq!(c, [4.0, 3.0, 1.0, 1.0, 0.0]);
    } else {
        // Past midnight the fourth may have been the new day's first, kept and forwarded.
        assert!(
            c == [4.0, 3.0, 1.0, 1.0, 0.0] || c == [5.0, 3.0, 1.0, 0.0, 1.0],
            "{c:?}"
        );
    }
    drop((kaz, kgz));
    relay.shutdown().await;

    // Who acknowledged what is in the store: after a restart a third acknowledgement is
    // still not news. Nor does a restart give KGZ a new budget: the relay counts again
    // the receipts it stored today for messages it does not hold.
    let (relay, maddr, _kaz, mut kgz) = with_metrics(&net).await;
    receipt_at(&mut kgz, ack("Sidorov"), items, t + 9).await;
    receipt_at(&mut kgz, ReceiptKind::Delivered, &[foreign(5)], t + 10).await;
    let c = counts(maddr).await;
    if utc_day() == day {
        assert_eq!(c, [0.0, 1.0, 0.0, 1.0, 0.0], "still over its budget");
    } else {
        // Past midnight the fifth may have been the new day's first, kept and forwarded.
        assert!(
            c == [0.0, 1.0, 0.0, 1.0, 0.0] || c == [1.0, 1.0, 0.0, 0.0, 1.0],
            "{c:?}"
        );
    }
    relay.shutdown().await;
}

/// Anyone who can reach the relay can complete a TLS handshake and then never
/// authenticate. Such connections are limited per address and in all, so that they cannot
/// keep nodes out; past half the limit, a new connection must first prove its address (QUIC
/// Retry, which the client answers on its own). 127.0.0.x stand in for other machines.
#[tokio::test]
async fn connections_that_do_not_authenticate_are_limited_per_address_and_in_all() {
    let net = two_with("[limits]\nhandshakes_per_ip_max = 2\nhandshakes_max = 6\n");
    let relay = net.relay().await;
    let (addr, fp) = (relay.local_addr(), net.fingerprint);
    let maddr = relay.metrics_addr().unwrap();
    let pending = "hotline_relay_handshakes_pending";
    let by_address = "hotline_relay_handshakes_refused_total{reason=\"address\"}";
    let validations = "hotline_relay_address_validations_total";

    // Two connections from 127.0.0.1 that never authenticate; a third is refused at once.
    let (_e1, c1) = raw_connect(addr, fp).await.unwrap();
    let (_e2, _c2) = raw_connect(addr, fp).await.unwrap();
    wait_metric(maddr, pending, |n| n == 2.0).await.unwrap();
    let third = raw_connect(addr, fp).await;
    let err = third.expect_err("the third connection from one address is refused");
    assert!(
        format!("{err:#}").contains("refused"),
        "a refusal says so: {err:#}"
    );
    let text = http_get(maddr, "/metrics").await.unwrap();
    assert_eq!(metric(&text, by_address), Some(1.0), "{text}");
    assert_eq!(metric(&text, validations), Some(0.0), "{text}");

    // A node on another address is not affected, and its place is free once it has
    // authenticated.
    let mut kaz = Client::connect_from([127, 0, 0, 2], addr, fp, "KAZ", net.key("KAZ"))
        .await
        .unwrap();
    wait_metric(maddr, pending, |n| n == 2.0).await.unwrap();
    // A third silent connection, elsewhere: half of the limit is in progress, so the next
    // node proves its address first, then gets in.
    let (_e3, _c3) = raw_connect_from([127, 0, 0, 3], addr, fp).await.unwrap();
    wait_metric(maddr, pending, |n| n == 3.0).await.unwrap();
    let mut kgz = Client::connect_from([127, 0, 0, 4], addr, fp, "KGZ", net.key("KGZ"))
        .await
        .unwrap();
    let text = http_get(maddr, "/metrics").await.unwrap();
    assert_eq!(metric(&text, validations), Some(1.0), "{text}");
    assert_flows(&mut kaz, &mut kgz, "through the limits")
        .await
        .unwrap();

    // One of 127.0.0.1's connections ends: that address may connect again.
    c1.close(0u32.into(), b"done");
    wait_metric(maddr, pending, |n| n == 2.0).await.unwrap();
    raw_connect(addr, fp).await.unwrap();
    relay.shutdown().await;
}

#[tokio::test]
async fn welcome_carries_the_roster_only_to_nodes_that_lack_it() {
    let net = two();
    let relay = net.relay().await;
    let addr = relay.local_addr();
    let kaz = net.client(addr, "KAZ").await.unwrap();
    let roster = kaz
        .session
        .welcome
        .roster
        .clone()
        .expect("a node holding none gets it");
    let v = hotline_proto::verify_roster(&roster, &PublicKey::of(&net.roster_key)).unwrap();
    assert_eq!(v.version, 1);
    let now = kaz.session.welcome.relay_time_ms;
    assert!(now.abs_diff(now_ms()) < 60_000, "relay clock {now}");

    let (_ep, conn) = raw_connect(addr, net.fingerprint).await.unwrap();
    let s = hotline_net::authenticate(
        conn,
        &pid("KGZ"),
        &net.key("KGZ"),
        1,
        now_ms(),
        EVENT_TIMEOUT,
    )
    .await
    .unwrap();
    assert!(
        s.welcome.roster.is_none(),
        "a node holding version 1 gets none"
    );
    relay.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// Connection-level limits
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn connections_over_the_limit_are_refused_busy() {
    let net = with_tjk("[limits]\nconnections_max = 2\n");
    let (relay, mut kaz, mut kgz) = relay_kaz_kgz(&net).await;
    let addr = relay.local_addr();
    let code = refusal_code(net.client(addr, "TJK").await);
    assert_eq!(code.unwrap(), ErrorCode::Busy);
    assert_flows(&mut kaz, &mut kgz, "at the connection limit")
        .await
        .unwrap();
    relay.shutdown().await;
}

/// Sends 60 messages of the largest body (about 3.9 MB in all) from `from` to `recipient`,
/// each accepted; their ids, in order.
async fn sixty_largest_to(from: &mut Client, recipient: &str) -> Vec<MessageId> {
    let body = "x".repeat(hotline_proto::limits::BODY_BYTES_MAX);
    let mut ids = Vec::new();
    for i in 0..60 {
        let mut env = from.envelope(to(&[recipient]), &format!("big {i}"));
        env.body = body.clone();
        ids.push(env.id);
        let s = from.sign(&env);
        from.submit(&s).await.unwrap();
    }
    for a in from.answers(&ids).await.unwrap() {
        a.unwrap();
    }
    ids
}

/// After an outage a node flushes a page of its outbox as it connects, while the relay sends
/// it its backlog: each side writes more than the other's QUIC stream window holds before it
/// reads. The relay must go on reading while it writes. (It read nothing until it had written
/// the backlog, and the node, whose link then read what arrived only between its writes (as
/// another implementation's may still), nothing until its write was taken: each waited on the other until one gave the link up as
/// stalled, and so again at every connection, the backlog and the outbox never moving.)
#[tokio::test]
async fn a_node_writing_its_outbox_as_its_backlog_arrives_is_read_and_served() {
    let net = with_tjk("[limits]\nwrite_timeout_ms = 1000\n");
    let relay = net.relay().await;
    let addr = relay.local_addr();
    let mut tjk = net.client(addr, "TJK").await.unwrap();
    // About 3.9 MB queued for KGZ while it is away, three times QUIC's stream window.
    let backlog = sixty_largest_to(&mut tjk, "KGZ").await;

    // KGZ connects and, reading nothing yet, writes thirty of the largest messages (about
    // 2 MB, more than the relay's stream window) in one write, as a node's link writes a
    // page of its outbox.
    let mut kgz = net.client(addr, "KGZ").await.unwrap();
    let body = "x".repeat(hotline_proto::limits::BODY_BYTES_MAX);
    let mut outbox = Vec::new();
    let mut buf = Vec::new();
    for i in 0..30 {
        let mut env = kgz.envelope(to(&["KAZ"]), &format!("outbox {i}"));
        env.body = body.clone();
        outbox.push(env.id);
        let frame = NodeToRelay::Submit(kgz.sign(&env));
        buf.extend(hotline_proto::frame::encode_frame(&frame).unwrap());
    }
    tokio::time::timeout(EVENT_TIMEOUT, kgz.session.writer.write_raw(&buf))
        .await
        .expect("the relay takes the node's write")
        .expect("the connection stays up");

    // Then KGZ reads: its whole backlog, and an acceptance for each message it wrote.
    let mut delivered = Vec::new();
    let mut accepted = Vec::new();
    while delivered.len() < backlog.len() || accepted.len() < outbox.len() {
        match kgz.next().await.unwrap() {
            RelayToNode::Deliver(d) => delivered.push(d.decode_unverified().unwrap().id),
            RelayToNode::Accepted(a) => accepted.push(a.id),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(delivered, backlog);
    accepted.sort();
    outbox.sort();
    assert_eq!(accepted, outbox);
    relay.shutdown().await;
}

/// A sender's node that was away comes back to a large backlog of receipts forwarded to it,
/// writes a page of its outbox as it connects, and confirms the receipts (`ReceiptsStored`)
/// batch by batch as it stores them, reading what arrives only between its writes (as the
/// reference node's link did until it wrote its queue beside reading, and as another
/// implementation's may). The relay must not write the whole backlog before reading again.
/// (It did: once the frames it reads ahead while writing (`READ_AHEAD_FRAMES`, here taken by
/// the outbox page) and its stream window were full of confirmations, the node's write
/// waited on the relay and the relay's on the node, until the relay closed the link as a
/// slow consumer, with nothing confirmed, and so again at every connection. It now stops at
/// `FORWARD_WINDOW` unconfirmed receipts and goes on as they are confirmed.) The receipts
/// name messages this relay does not hold, which are quickest to queue by the ten thousand.
#[tokio::test]
async fn a_node_confirming_a_large_forward_backlog_as_it_arrives_is_read_and_served() {
    // About 39,000 confirmations fill the relay's stream window once the outbox page has
    // taken the frames it reads ahead; KAZ's own receive buffers hold a few thousand more.
    const BACKLOG: usize = 60_000;
    let net = two_with(
        "[limits]\nwrite_timeout_ms = 1000\nforward_foreign_max = 1000000\n\
         foreign_receipts_per_day_max = 1000000\nreceipt_rate_burst = 1000000\n\
         receipt_item_rate_burst = 1000000\n",
    );
    let relay = net.relay().await;
    let addr = relay.local_addr();

    // While KAZ is away, KGZ receipts BACKLOG messages from KAZ, in one write, reading the
    // answers as they come.
    let mut kgz = net.client(addr, "KGZ").await.unwrap();
    let t = now_ms();
    let mut buf = Vec::new();
    for _ in 0..BACKLOG {
        let r = Receipt {
            version: hotline_proto::PROTOCOL_VERSION,
            recipient: kgz.id.clone(),
            kind: ReceiptKind::Delivered,
            created_at_ms: t,
            items: vec![hotline_proto::ReceiptItem {
                id: MessageId::random(),
                sender: pid("KAZ"),
                digest: hotline_proto::Digest([3; 32]),
            }],
        };
        let frame = NodeToRelay::Receipt(Signed::sign(&r, &kgz.key).unwrap());
        buf.extend(hotline_proto::frame::encode_frame(&frame).unwrap());
    }
    let session = &mut kgz.session;
    let write = async {
        session.writer.write_raw(&buf).await?;
        anyhow::Ok(())
    };
    let answers = async {
        for _ in 0..BACKLOG {
            match session.reader.read::<RelayToNode>().await? {
                Some(RelayToNode::ReceiptStored(_)) => {}
                other => anyhow::bail!("unexpected {other:?}"),
            }
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(EVENT_TIMEOUT, async { tokio::try_join!(write, answers) })
        .await
        .expect("the relay stores the receipts in time")
        .unwrap();

    // KAZ connects and, reading nothing yet, writes a page of its outbox.
    let mut kaz = net.client(addr, "KAZ").await.unwrap();
    let mut outbox = Vec::new();
    let mut buf = Vec::new();
    for i in 0..256 {
        let env = kaz.envelope(to(&["KGZ"]), &format!("outbox {i}"));
        outbox.push(env.id);
        let frame = NodeToRelay::Submit(kaz.sign(&env));
        buf.extend(hotline_proto::frame::encode_frame(&frame).unwrap());
    }
    tokio::time::timeout(EVENT_TIMEOUT, kaz.session.writer.write_raw(&buf))
        .await
        .expect("the relay takes the node's write")
        .expect("the connection stays up");

    // Then it reads what has arrived, up to 512 frames at a time, and confirms the
    // receipts among them before reading again.
    let (mut forwarded, mut accepted) = (0, 0);
    while forwarded < BACKLOG || accepted < outbox.len() {
        let mut batch = vec![kaz.next().await.expect("the link stays up")];
        while batch.len() < 512 {
            match kaz.session.reader.try_read::<RelayToNode>() {
                Ok(Some(f)) => batch.push(f),
                Ok(None) => break,
                Err(e) => panic!("the link stays up: {e}"),
            }
        }
        let mut digests = Vec::new();
        for f in batch {
            match f {
                RelayToNode::Receipt(r) => digests.push(r.digest()),
                RelayToNode::Accepted(_) => accepted += 1,
                other => panic!("unexpected {other:?}"),
            }
        }
        forwarded += digests.len();
        if !digests.is_empty() {
            let confirm = NodeToRelay::ReceiptsStored(digests);
            tokio::time::timeout(EVENT_TIMEOUT, kaz.send(&confirm))
                .await
                .expect("the relay reads the node's confirmations")
                .expect("the link stays up");
        }
    }
    assert_eq!(forwarded, BACKLOG);
    relay.shutdown().await;
}

#[tokio::test]
async fn a_node_that_stops_reading_is_closed_as_a_slow_consumer() {
    let net = with_tjk("[limits]\nwrite_timeout_ms = 300\n");
    let relay = net.relay().await;
    let addr = relay.local_addr();
    let mut kaz = net.client(addr, "KAZ").await.unwrap();
    let mut tjk = net.client(addr, "TJK").await.unwrap();
    let kgz = net.client(addr, "KGZ").await.unwrap();

    // KGZ never reads; far more than QUIC's receive windows is sent to it.
    let ids = sixty_largest_to(&mut tjk, "KGZ").await;
    assert_eq!(kgz.closed_code().await.unwrap(), ErrorCode::SlowConsumer);

    // Nothing was lost: a reading KGZ gets all of it.
    let mut kgz = net.client(addr, "KGZ").await.unwrap();
    for id in &ids {
        let (got, _) = kgz.next_deliver().await.unwrap();
        assert_eq!(got.decode_unverified().unwrap().id, *id);
    }
    assert_flows(&mut kaz, &mut kgz, "after the slow consumer")
        .await
        .unwrap();
    relay.shutdown().await;
}

/// A backlog of large messages is read from the store in pages bounded by bytes
/// (`FETCH_PAGE_BYTES`, 4 MiB), not only by rows: 120 of the largest messages (7.8 MB) take
/// one more page than a backlog of one, and all arrive, in order. (A page of 512 such
/// messages was about 34 MB, held twice by each session reading its backlog.)
#[tokio::test]
async fn a_backlog_of_large_messages_is_read_in_pages_bounded_by_bytes() {
    let net = two();
    let relay = net.relay().await;
    let addr = relay.local_addr();
    let maddr = relay
        .metrics_addr()
        .expect("metrics enabled in the test config");
    let reads = || async {
        let text = http_get(maddr, "/metrics").await.unwrap();
        metric(&text, "hotline_relay_store_reads_total").unwrap()
    };
    let mut kaz = net.client(addr, "KAZ").await.unwrap();

    // What a login with a backlog of one message reads.
    kaz.send_to("KGZ", "one").await.unwrap();
    let before = reads().await;
    let mut kgz = net.client(addr, "KGZ").await.unwrap();
    let (one, _) = kgz.next_deliver().await.unwrap();
    kgz.receipt_stored(ReceiptKind::Delivered, &[one])
        .await
        .unwrap();
    let baseline = reads().await - before;
    kgz.close();

    let ids = sixty_largest_to(&mut kaz, "KGZ").await;
    let more = sixty_largest_to(&mut kaz, "KGZ").await;
    let before = reads().await;
    let mut kgz = net.client(addr, "KGZ").await.unwrap();
    for id in ids.iter().chain(&more) {
        let (d, _) = kgz.next_deliver().await.unwrap();
        assert_eq!(d.decode_unverified().unwrap().id, *id);
    }
    assert_eq!(
        reads().await - before,
        baseline + 1.0,
        "one more page for 7.8 MB of messages"
    );
    relay.shutdown().await;
}

/// A node confirms (`ReceiptsStored`) the receipts forwarded to it on its connection, and no
/// more: each digest costs the store writer a deletion in everyone's commits, so a node
/// naming more than it was forwarded is closed as a protocol violation.
#[tokio::test]
async fn a_node_may_confirm_only_the_receipts_it_was_forwarded() {
    let net = two();
    let (relay, mut kaz, mut kgz) = relay_kaz_kgz(&net).await;
    let sent = kaz.send_to("KGZ", "one").await.unwrap();
    let (delivered, _) = kgz.next_deliver().await.unwrap();
    assert_eq!(delivered, sent);
    kgz.receipt_stored(ReceiptKind::Delivered, &[delivered])
        .await
        .unwrap();
    let (fwd, _) = kaz.next_receipt().await.unwrap();
    // What was forwarded may be confirmed, and the connection goes on.
    kaz.send(&NodeToRelay::ReceiptsStored(vec![fwd.digest()]))
        .await
        .unwrap();
    assert_flows(&mut kaz, &mut kgz, "after a confirmation")
        .await
        .unwrap();
    // KGZ was forwarded nothing: 512 made-up digests are refused.
    let made_up: Vec<_> = (0..512u32)
        .map(|i| {
            let mut d = [0u8; 32];
            d[..4].copy_from_slice(&i.to_be_bytes());
            hotline_proto::Digest(d)
        })
        .collect();
    kgz.send(&NodeToRelay::ReceiptsStored(made_up))
        .await
        .unwrap();
    assert_eq!(
        kgz.closed_code().await.unwrap(),
        ErrorCode::ProtocolViolation
    );
    relay.shutdown().await;
}

/// A node behind a poor link reads its backlog slowly but steadily: it is given the time it
/// takes, however much longer than `write_timeout_ms` the whole takes. (A page of a backlog
/// is one write of up to 512 messages; with the limit on the whole write, such a node was
/// closed as a slow consumer at every connection, and never got its messages.)
#[tokio::test]
async fn a_node_reading_its_backlog_slowly_but_steadily_gets_all_of_it() {
    let net = two_with("[limits]\nwrite_timeout_ms = 300\n");
    let relay = net.relay().await;
    let addr = relay.local_addr();
    let mut kaz = net.client(addr, "KAZ").await.unwrap();

    // About 3.9 MB queued for KGZ while it is away: one page, three times QUIC's receive
    // window for a stream, so the relay's write waits on KGZ's reading.
    let ids = sixty_largest_to(&mut kaz, "KGZ").await;

    // The link's pace is the scenario here, not a wait for an event: one message every
    // 20 ms, so the backlog takes about 1.2 s, four times the write limit, while QUIC
    // takes more of the write at least every 20 ms.
    let mut kgz = net.client(addr, "KGZ").await.unwrap();
    let mut pace = tokio::time::interval(std::time::Duration::from_millis(20));
    let started = std::time::Instant::now();
    let mut got = Vec::new();
    for id in &ids {
        pace.tick().await;
        let (d, _) = kgz.next_deliver().await.unwrap();
        assert_eq!(d.decode_unverified().unwrap().id, *id);
        got.push(d);
    }
    assert!(
        started.elapsed() > std::time::Duration::from_millis(900),
        "the reading took {:?}: the test did not read slowly",
        started.elapsed()
    );
    kgz.receipt_stored(ReceiptKind::Delivered, &got)
        .await
        .unwrap();
    assert_flows(&mut kaz, &mut kgz, "after the slow backlog")
        .await
        .unwrap();
    relay.shutdown().await;
}

/// A backlog of three pages of the largest messages (about 11.7 MB; a page is cut at
/// `FETCH_PAGE_BYTES`, 4 MiB, 64 of them) queued for KGZ while it is away; their ids, in
/// order.
async fn three_pages_to_kgz(kaz: &mut Client) -> Vec<MessageId> {
    let mut backlog = Vec::new();
    for _ in 0..3 {
        backlog.extend(sixty_largest_to(kaz, "KGZ").await);
    }
    backlog
}

/// A node that comes back to a backlog is served between its pages: what it writes as it
/// connects (its outbox, its receipts, a `Ping`) is answered after the page being written,
/// not after the whole delivery window (up to 4,096 messages, 320 MB of the largest, which
/// a node behind a poor link reads for many minutes). (The session wrote page after page
/// until the window was full or the backlog written, reading the node's frames ahead but
/// handling none of them: here the `Pong` came after all 180 messages.)
#[tokio::test]
async fn a_node_is_answered_between_the_pages_of_its_backlog() {
    let net = two();
    let relay = net.relay().await;
    let addr = relay.local_addr();
    let mut kaz = net.client(addr, "KAZ").await.unwrap();
    let backlog = three_pages_to_kgz(&mut kaz).await;

    // KGZ pings before it reads anything: the relay's first page waits on its reading.
    let mut kgz = net.client(addr, "KGZ").await.unwrap();
    let before = until_pong(&mut kgz, 1).await;
    let mut delivered: Vec<MessageId> = before
        .iter()
        .filter_map(|f| match f {
            RelayToNode::Deliver(d) => Some(d.decode_unverified().unwrap().id),
            _ => None,
        })
        .collect();
    assert!(
        delivered.len() <= 64,
        "the Pong came after {} of the {} messages: the node was not served until its backlog was written",
        delivered.len(),
        backlog.len()
    );
    // The rest follows, in order, none twice.
    while delivered.len() < backlog.len() {
        let (d, _) = kgz.next_deliver().await.unwrap();
        delivered.push(d.decode_unverified().unwrap().id);
    }
    assert_eq!(delivered, backlog);
    relay.shutdown().await;
}

/// A roster that revokes a participant ends its session after the page of its backlog being
/// written, not after the whole delivery window: a revoked participant is not sent what it
/// may no longer read (7.7). (The session noticed the new roster only once it had written
/// page after page up to the window: here all 180 messages, then `Revoked`.)
#[tokio::test]
async fn a_revocation_ends_a_session_within_a_page_of_its_backlog() {
    let mut net = two();
    let relay = net.relay().await;
    let addr = relay.local_addr();
    let maddr = relay
        .metrics_addr()
        .expect("metrics enabled in the test config");
    let mut kaz = net.client(addr, "KAZ").await.unwrap();
    let backlog = three_pages_to_kgz(&mut kaz).await;

    // KGZ logs in and reads nothing yet: the relay's first page waits on its reading. The
    // roster revoking it is reloaded meanwhile.
    let mut kgz = net.client(addr, "KGZ").await.unwrap();
    net.revoke("KGZ");
    assert_eq!(relay.reload_roster().await.unwrap(), 2);
    let mut delivered = 0;
    let mut told = None;
    loop {
        let read = tokio::time::timeout(EVENT_TIMEOUT, kgz.session.reader.read::<RelayToNode>())
            .await
            .expect("a frame, or the end of the connection");
        match read {
            Ok(Some(RelayToNode::Deliver(_))) => delivered += 1,
            Ok(Some(RelayToNode::Error(e))) => told = Some(e.code),
            Ok(Some(other)) => panic!("unexpected {other:?}"),
            Ok(None) | Err(_) => break,
        }
    }
    // Closed as revoked. (Its close, sent while the page was in flight, may be lost on the
    // way, and the client then learns of the end from a stateless reset: the relay's count
    // says why.)
    assert!(matches!(told, None | Some(ErrorCode::Revoked)), "{told:?}");
    let revoked = "hotline_relay_connections_closed_total{code=\"Revoked\"}";
    wait_metric(maddr, revoked, |n| n == 1.0).await.unwrap();
    assert!(
        delivered <= 64,
        "{delivered} of the {} messages were written to a revoked participant",
        backlog.len()
    );
    relay.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// Submissions that do not decode, or speak another version
// ---------------------------------------------------------------------------------------

/// Signs arbitrary bytes as a `T` (bypassing the field checks `Signed::sign` applies).
fn sign_raw<T: SignedPayload>(bytes: Vec<u8>, key: &SigningKey) -> Signed<T> {
    use ed25519_dalek::Signer as _;
    let sig = key.sign(&[T::DOMAIN, &bytes[..]].concat());
    Signed::from_parts(bytes, PublicKey::of(key), Signature(sig.to_bytes()))
}

#[tokio::test]
async fn undecodable_and_other_version_submissions_are_refused_by_name() {
    let net = cica("");
    let (relay, mut kaz, mut kgz) = relay_kaz_kgz(&net).await;
    let addr = relay.local_addr();
    let mut tjk = net.client(addr, "TJK").await.unwrap();
    let key = net.key("TJK");

    // Version 2: refused as such, by message id.
    let mut env = tjk.envelope(to(&["KGZ"]), "from the future protocol");
    env.version = 2;
    let bytes = hotline_proto::codec::encode(&env, usize::MAX).unwrap();
    tjk.submit(&sign_raw(bytes, &key)).await.unwrap();
    assert_eq!(
        tjk.rejected(env.id).await.unwrap(),
        RejectCode::UnsupportedVersion
    );

    // Truncated: Malformed, still named by the id at bytes 2..18.
    let env = tjk.envelope(to(&["KGZ"]), "cut short");
    let bytes = tjk.sign(&env).bytes()[..40].to_vec();
    tjk.submit(&sign_raw(bytes, &key)).await.unwrap();
    let r = tjk.answer(env.id).await.unwrap().unwrap_err();
    assert_eq!(r.code, RejectCode::Malformed);
    assert_eq!(r.subject, Subject::Message(env.id));

    // Too short to name a message: the subject is the frame.
    tjk.submit(&sign_raw(vec![1, 0, 7, 7], &key)).await.unwrap();
    let (code, _) = tjk
        .until(|f| match f {
            RelayToNode::Rejected(x) if x.subject == Subject::Frame => Some(x.code),
            _ => None,
        })
        .await
        .unwrap();
    assert_eq!(code, RejectCode::Malformed);

    // A body over the protocol limit (not just the relay's).
    let mut env = tjk.envelope(to(&["KGZ"]), "huge");
    env.body = "x".repeat(hotline_proto::limits::BODY_BYTES_MAX + 1);
    let bytes = hotline_proto::codec::encode(&env, usize::MAX).unwrap();
    tjk.submit(&sign_raw(bytes, &key)).await.unwrap();
    assert_eq!(tjk.rejected(env.id).await.unwrap(), RejectCode::TooLarge);
    assert_flows(&mut kaz, &mut kgz, "after undecodable submissions")
        .await
        .unwrap();

    // None of them used up a sequence number.
    let mut tjk2 = net.client(addr, "TJK").await.unwrap();
    assert_eq!(tjk2.seq, 0, "refusals leave no trace");
    assert_flows(&mut tjk2, &mut kgz, "TJK behaves")
        .await
        .unwrap();

    // An authentication proof of version 2 closes with UnsupportedVersion.
    let (_ep, conn) = raw_connect(addr, net.fingerprint).await.unwrap();
    let proof = AuthProof {
        version: 2,
        participant: pid("UZB"),
        channel_binding: hotline_net::channel_binding(&conn).unwrap(),
        created_at_ms: now_ms(),
    };
    let bytes = hotline_proto::codec::encode(&proof, usize::MAX).unwrap();
    let (send, _recv) = conn.open_bi().await.unwrap();
    let mut w = hotline_net::FrameWriter::new(send);
    w.write(&NodeToRelay::Hello(Hello {
        auth: sign_raw(bytes, &net.key("UZB")),
        roster_version: 0,
    }))
    .await
    .unwrap();
    assert_eq!(
        close_code(&conn).await.unwrap(),
        ErrorCode::UnsupportedVersion
    );
    relay.shutdown().await;
}

/// A connected recipient whose delivery window is full while more than its mailbox holds is
/// committed for it: the mailbox overflows, the session falls back to reading the store, and
/// every message still arrives exactly once, in order.
#[tokio::test]
async fn a_mailbox_overflow_falls_back_to_the_store_without_gaps_or_duplicates() {
    let net = two_with("[limits]\ndelivery_window = 8\n");
    let relay = net.relay().await;
    let addr = relay.local_addr();
    let maddr = relay.metrics_addr().expect("metrics enabled");
    let mut kgz = net.client(addr, "KGZ").await.unwrap();
    // KGZ's session is live (its first store read is done once it answers a ping).
    until_pong(&mut kgz, 1).await;
    let mut kaz = net.client(addr, "KAZ").await.unwrap();
    let n = hotline_relay::limits::MAILBOX_ITEMS + 200;
    let mut sent = Vec::with_capacity(n);
    for i in 0..n {
        let env = kaz.envelope(to(&["KGZ"]), &format!("m{i}"));
        let s = kaz.sign(&env);
        kaz.submit(&s).await.unwrap();
        sent.push(s);
    }
    let ids: Vec<MessageId> = sent
        .iter()
        .map(|s| s.decode_unverified().unwrap().id)
        .collect();
    for (id, answer) in ids.iter().zip(kaz.answers(&ids).await.unwrap()) {
        assert!(answer.is_ok(), "{id}: {answer:?}");
    }
    let reads_before = metric(
        &http_get(maddr, "/metrics").await.unwrap(),
        "hotline_relay_store_reads_total",
    )
    .unwrap();

    // Receipt whatever arrives until everything has.
    let mut got: Vec<Signed<Envelope>> = Vec::with_capacity(n);
    while got.len() < n {
        let (first, _) = kgz.next_deliver().await.unwrap();
        let mut batch = vec![first];
        // Take the rest of the window that is already on its way.
        let extra = until_pong(&mut kgz, got.len() as u64 + 2).await;
        batch.extend(extra.into_iter().filter_map(|f| match f {
            RelayToNode::Deliver(s) => Some(s),
            _ => None,
        }));
        kgz.receipt(ReceiptKind::Delivered, &batch).await.unwrap();
        got.extend(batch);
    }
    let got_ids: Vec<MessageId> = got
        .iter()
        .map(|s| s.decode_unverified().unwrap().id)
        .collect();
    assert_eq!(got_ids.len(), ids.len());
    assert!(got_ids == ids, "deliveries out of order or duplicated");
    let reads_after = metric(
        &http_get(maddr, "/metrics").await.unwrap(),
        "hotline_relay_store_reads_total",
    )
    .unwrap();
    assert!(
        reads_after > reads_before,
        "the overflow was served from the store ({reads_before} → {reads_after})"
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn receipts_out_of_order_survive_relay_restarts() {
    let net = two();
    let (relay, mut kaz, mut kgz) = relay_kaz_kgz(&net).await;
    let mut sent = Vec::new();
    for i in 1..=4 {
        sent.push(kaz.send_to("KGZ", &format!("m{i}")).await.unwrap());
    }
    for m in &sent {
        assert_eq!(&kgz.next_deliver().await.unwrap().0, m);
    }
    // The second and the fourth are receipted, ahead of the first.
    kgz.receipt_stored(ReceiptKind::Delivered, &[sent[1].clone(), sent[3].clone()])
        .await
        .unwrap();
    kaz.close();
    kgz.close();
    relay.shutdown().await;

    // What a restarted relay still owes KGZ: exactly the unreceipted, in order.
    async fn owed(net: &Net, expected: &[Signed<Envelope>], receipt: &[Signed<Envelope>]) {
        let relay = net.relay().await;
        let mut kgz = net.client(relay.local_addr(), "KGZ").await.unwrap();
        for m in expected {
            assert_eq!(&kgz.next_deliver().await.unwrap().0, m);
        }
        nothing_delivered_before_pong(&mut kgz, 7, "nothing receipted comes again").await;
        if !receipt.is_empty() {
            kgz.receipt_stored(ReceiptKind::Delivered, receipt)
                .await
                .unwrap();
        }
        kgz.close();
        relay.shutdown().await;
    }
    owed(&net, &[sent[0].clone(), sent[2].clone()], &sent[..1]).await;
    owed(&net, &sent[2..3], &sent[2..3]).await;
    owed(&net, &[], &[]).await;

    let conn = rusqlite::Connection::open(net.path().join("relay-data").join("relay.db")).unwrap();
    let kgz = ParticipantId::new("KGZ").unwrap();
    assert_eq!(hotline_relay::store::queued_for(&conn, &kgz).unwrap(), 0);
}

/// Requires that `relay` has stopped on its own with a reason that says `says`, and that it
/// still shuts down.
async fn stopped_on_its_own(relay: hotline_relay::RelayHandle, says: &str) {
    let reason = tokio::time::timeout(EVENT_TIMEOUT, relay.failed())
        .await
        .expect("the relay reports that it stopped");
    assert!(reason.contains(says), "{reason}");
    tokio::time::timeout(EVENT_TIMEOUT, relay.shutdown())
        .await
        .expect("a relay that stopped on its own still shuts down");
}

/// A relay whose store writer dies (a bug: here a panic injected after two commits) stops,
/// rather than go on accepting connections it can no longer serve: it says why, closes its
/// sessions, and its handle reports the fault, so that `hotline relay` exits with an error
/// and its supervisor restarts it. What it accepted before is kept.
#[tokio::test]
async fn a_relay_whose_store_writer_dies_stops_and_says_why() {
    let net = two();
    let relay = net
        .relay_with(hotline_relay::Hosting::default().fail_writer_after(2))
        .await;
    let addr = relay.local_addr();
    let mut kaz = net.client(addr, "KAZ").await.unwrap();
    let first = kaz.send_to("KGZ", "first").await.unwrap();
    let second = kaz
        .send_to("KGZ", "second: the writer dies after this commit")
        .await
        .unwrap();

    // Told in-band, as at a shutdown, not only by the close when the grace runs out.
    frames_before_going_away(&mut kaz).await;
    let code = kaz.closed_code().await.unwrap();
    assert_eq!(code, ErrorCode::GoingAway);
    stopped_on_its_own(relay, "store writer").await;

    // Restarted on the same store, it has both messages for KGZ.
    let relay = net.relay().await;
    let mut kgz = net.client(relay.local_addr(), "KGZ").await.unwrap();
    let (a, _) = kgz.next_deliver().await.unwrap();
    let (b, _) = kgz.next_deliver().await.unwrap();
    assert_eq!([a.digest(), b.digest()], [first.digest(), second.digest()]);
    relay.shutdown().await;
}

/// A relay whose store's write-ahead log fails to sync (a disk error, injected here on the
/// second sync) never answers *accepted* what that sync was to cover: the message is refused
/// `StorageUnavailable`, the relay stops and says why, and its handle reports the fault, so
/// that `hotline relay` exits with an error for its supervisor. Restarted, it still holds
/// what it accepted; the refused message, sent again as a node's outbox does, is accepted,
/// and each message is delivered once.
#[tokio::test]
async fn a_relay_whose_log_sync_fails_refuses_what_it_covered_and_stops() {
    let net = two();
    let relay = net
        .relay_with(hotline_relay::Hosting::default().fail_syncs_after(1))
        .await;
    let mut kaz = net.client(relay.local_addr(), "KAZ").await.unwrap();
    let first = kaz.send_to("KGZ", "first").await.unwrap();
    let env = kaz.envelope(
        Audience::Participants(vec![pid("KGZ")]),
        "second: the sync of its commit fails",
    );
    let second = kaz.sign(&env);
    let refused = kaz
        .submit_wait(&second)
        .await
        .unwrap()
        .expect_err("a message whose sync failed is not accepted");
    assert_eq!(refused.code, RejectCode::StorageUnavailable, "{refused:?}");
    assert!(refused.detail.contains("sync"), "{refused:?}");

    assert_eq!(kaz.closed_code().await.unwrap(), ErrorCode::GoingAway);
    stopped_on_its_own(relay, "write-ahead log").await;

    let relay = net.relay().await;
    let mut kaz = net.client(relay.local_addr(), "KAZ").await.unwrap();
    kaz.submit_wait(&second)
        .await
        .unwrap()
        .expect("sent again, it is accepted");
    let mut kgz = net.client(relay.local_addr(), "KGZ").await.unwrap();
    let (a, _) = kgz.next_deliver().await.unwrap();
    let (b, _) = kgz.next_deliver().await.unwrap();
    assert_eq!([a.digest(), b.digest()], [first.digest(), second.digest()]);
    nothing_delivered_before_pong(&mut kgz, 3, "each message once").await;
    relay.shutdown().await;
}

/// An operator's redelivery is answered only once its change is on disk: when the sync
/// after its commit fails (injected on the first sync), the operator is told so, not that
/// the queues moved back, and the relay stops as after any failed sync.
#[tokio::test]
async fn a_redelivery_whose_sync_fails_is_not_reported_done() {
    use hotline_relay::admin::{ask, Answer, Request};
    let net = two();
    let relay = net
        .relay_with(hotline_relay::Hosting::default().fail_syncs_after(0))
        .await;
    let data = net.path().join("relay-data");
    let answer = tokio::task::spawn_blocking(move || {
        ask(
            &data,
            &Request::Redeliver {
                to: None,
                since_ms: 0,
            },
        )
    })
    .await
    .unwrap()
    .unwrap();
    let Answer::Refused { error } = &answer else {
        panic!("a redelivery whose sync failed is reported done: {answer:?}")
    };
    assert!(error.contains("write-ahead log"), "{error}");
    stopped_on_its_own(relay, "write-ahead log").await;
}

/// Reads `kgz`'s deliveries until every message up to sequence number `end` not in `stored`
/// has come, checking that the connection delivers in order without a gap: the first
/// delivery is the oldest message not yet receipted, and between two deliveries every
/// skipped message was receipted (`stored`). A gap is a message the live session will not
/// send until the next connection.
async fn deliveries_without_a_gap(
    kgz: &mut Client,
    stored: &std::collections::BTreeSet<u64>,
    end: u64,
) -> anyhow::Result<Vec<Signed<Envelope>>> {
    let mut got = Vec::new();
    let mut last = 0u64;
    while !(last + 1..=end).all(|s| stored.contains(&s)) {
        let (m, _) = kgz.next_deliver().await?;
        let seq = m.decode_unverified()?.seq.0;
        let skipped: Vec<u64> = (last + 1..seq).filter(|s| !stored.contains(s)).collect();
        anyhow::ensure!(
            skipped.is_empty(),
            "delivered #{seq} after #{last} on one connection, skipping {skipped:?}, never receipted"
        );
        last = seq;
        got.push(m);
    }
    Ok(got)
}

/// A recipient that connects while messages stream in misses none of them on its live
/// connection. The store writer posts a batch to the sessions before its commit's sync and
/// again after it (module `hub`); a session that registers, or reads the store, in between
/// must still get the batch (without the second post, this test fails). KAZ streams
/// messages to KGZ, on a relay whose commits are slow, while KGZ connects twenty times,
/// each time takes what was accepted before it connected and a window more, receipts
/// them, and leaves; every connection must deliver in order without a gap, and the last
/// one everything left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recipient_connecting_mid_stream_misses_nothing_on_its_live_connection(
) -> anyhow::Result<()> {
    const WINDOW: u64 = 20;
    const CONNECTIONS: usize = 20;
    let net = Net::sec_kaz_kgz();
    // A disk slow to sync: each commit takes 5 ms after its batch was posted, so KGZ's
    // connections start during one.
    let relay = hotline_relay::Relay::spawn_with(
        net.config(),
        hotline_relay::Hosting::default().slow_commits(std::time::Duration::from_millis(5)),
    )
    .await?;
    let addr = relay.local_addr();
    let mut kaz = net.client(addr, "KAZ").await?;
    // Two windows of submissions in flight, so that the store writer is always busy.
    let accepted = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let sender = tokio::spawn({
        let accepted = accepted.clone();
        async move {
            let mut in_flight: Vec<MessageId> = Vec::new();
            loop {
                let next: Vec<_> = if *stopped.borrow() {
                    Vec::new()
                } else {
                    (0..WINDOW)
                        .map(|_| {
                            let env =
                                kaz.envelope(Audience::Participants(vec![pid("KGZ")]), "stream");
                            (env.id, kaz.sign(&env))
                        })
                        .collect()
                };
                for (_, s) in &next {
                    kaz.submit(s).await?;
                }
                for a in kaz.answers(&in_flight).await? {
                    if let Err(r) = a {
                        anyhow::bail!("refused: {r:?}");
                    }
                }
                accepted.fetch_add(in_flight.len() as u64, std::sync::atomic::Ordering::SeqCst);
                if next.is_empty() {
                    return anyhow::Ok(());
                }
                in_flight = next.into_iter().map(|(id, _)| id).collect();
            }
        }
    });

    let mut stored = std::collections::BTreeSet::new();
    let mut during = 0;
    for _ in 0..CONNECTIONS {
        during += usize::from(!sender.is_finished());
        let end = accepted.load(std::sync::atomic::Ordering::SeqCst) + WINDOW;
        let mut kgz = net.client(addr, "KGZ").await?;
        let got = deliveries_without_a_gap(&mut kgz, &stored, end).await?;
        for chunk in got.chunks(512) {
            let r = kgz.receipt(ReceiptKind::Delivered, chunk).await?;
            // Deliveries keep coming meanwhile; not receipted, they come again.
            kgz.until(|f| {
                matches!(f, RelayToNode::ReceiptStored(d) if *d == r.digest()).then_some(())
            })
            .await?;
        }
        for m in &got {
            stored.insert(m.decode_unverified()?.seq.0);
        }
        kgz.close();
    }
    stop.send(true)?;
    sender.await??;
    let last = accepted.load(std::sync::atomic::Ordering::SeqCst);
    let mut kgz = net.client(addr, "KGZ").await?;
    let rest = deliveries_without_a_gap(&mut kgz, &stored, last).await?;
    println!(
        "{last} messages streamed; {CONNECTIONS} connections ({during} while they streamed) took and receipted {}, the last one had the other {}",
        stored.len(),
        rest.len()
    );
    relay.shutdown().await;
    Ok(())
}

/// A relay shutting down answers what it committed before it goes: every message it
/// delivered was also answered `Accepted` to its sender, and each node reads `GoingAway`
/// in the stream, after those answers, before the connection closes. (Otherwise a sender
/// learns of such an acceptance only when it offers the message again.) The shutdown comes
/// while hundreds of submissions are on their way, so that answers are owed when it does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_shutting_down_answers_what_it_committed_before_it_goes() {
    let net = two();
    let (relay, mut kaz, mut kgz) = relay_kaz_kgz(&net).await;
    let mut sent = std::collections::HashSet::new();
    for n in 0..300 {
        let env = kaz.envelope(Audience::Participants(vec![pid("KGZ")]), &format!("{n}"));
        kaz.submit(&kaz.sign(&env)).await.unwrap();
        sent.insert(env.id);
    }
    let (first, _) = kgz.next_deliver().await.unwrap();
    let stopped = tokio::spawn(relay.shutdown());

    // Each side reads up to the relay's last frame, which must be GoingAway.
    let mut accepted = std::collections::HashSet::new();
    for f in frames_before_going_away(&mut kaz).await {
        match f {
            RelayToNode::Accepted(a) => assert!(accepted.insert(a.id), "{a:?} twice"),
            other => panic!("KAZ: unexpected {other:?}"),
        }
    }
    kaz.close();
    let mut delivered = vec![first.decode_unverified().unwrap().id];
    for f in frames_before_going_away(&mut kgz).await {
        match f {
            RelayToNode::Deliver(s) => delivered.push(s.decode_unverified().unwrap().id),
            other => panic!("KGZ: unexpected {other:?}"),
        }
    }
    kgz.close();
    stopped.await.unwrap();

    assert!(accepted.is_subset(&sent));
    let unanswered: Vec<_> = delivered
        .iter()
        .filter(|id| !accepted.contains(id))
        .collect();
    assert!(
        unanswered.is_empty(),
        "{} of {} delivered messages were never answered to their sender ({} answered): {unanswered:?}",
        unanswered.len(),
        delivered.len(),
        accepted.len()
    );
}

/// The frames `c` reads up to the relay's last, which must be `Error(GoingAway)`.
async fn frames_before_going_away(c: &mut Client) -> Vec<RelayToNode> {
    let mut frames = Vec::new();
    loop {
        match c.next().await.unwrap() {
            RelayToNode::Error(e) => {
                assert_eq!(e.code, ErrorCode::GoingAway, "{e:?}");
                return frames;
            }
            f => frames.push(f),
        }
    }
}
