//! The relay, in-process, with protocol-level clients.

use hotline_e2e::*;
use hotline_proto::frame::{NodeToRelay, RelayToNode};
use hotline_proto::{Audience, ReceiptKind, Role, Signed};

fn two() -> Net {
    Net::new(
        &[
            ("SEC", Role::Secretariat),
            ("KAZ", Role::Member),
            ("KGZ", Role::Member),
        ],
        &[],
    )
}

#[tokio::test]
async fn message_and_receipts_flow_between_two_clients() {
    let net = two();
    let relay = net.relay().await;
    let addr = relay.local_addr();
    let mut kaz = net.client(addr, "KAZ").await.unwrap();
    let mut kgz = net.client(addr, "KGZ").await.unwrap();

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
        .receipt(ReceiptKind::Delivered, &[delivered.clone()])
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

    let (fwd, _) = kaz
        .until(|f| match f {
            RelayToNode::Receipt(s) => Some(s.clone()),
            _ => None,
        })
        .await
        .unwrap();
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
