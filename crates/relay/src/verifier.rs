//! Receipt signatures, verified in batches gathered from every session.
//!
//! A fan-out brings one receipt per recipient, each on its own connection, so a session
//! rarely holds more than one receipt at a time and would verify them one by one (about
//! 34 µs each). Sessions instead pass receipts that passed their authorship check
//! (`Session::pre_receipt`) to this one task, which verifies whatever has arrived from all
//! of them as one batch (about 14 µs a signature), answers the forged ones `Rejected` on the
//! session's own answer channel, and hands the rest to the store writer.
//!
//! Receipts are off the path a message takes to its recipients, so the extra hand-off (and
//! a small batch's wait for company, `limits::RECEIPT_VERIFY_GATHER`) costs no delivery
//! latency; submissions are still verified in their sessions, where the hand-off
//! would. The answer of each receipt — stored or rejected — reaches its session as before;
//! the session reserved room for it when it passed the receipt on.

use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tracing::error;

use hotline_proto::frame::{Rejected, RelayToNode, Subject};
use hotline_proto::{Receipt, Roster, Signed, Verified};

use crate::metrics::Metrics;
use crate::store::Command;

/// A receipt whose author matches its session, not yet verified.
pub(crate) struct Unverified {
    /// As received.
    pub(crate) signed: Signed<Receipt>,
    /// Its decoded content (decoded once, by the session's authorship check).
    pub(crate) value: Receipt,
    /// The session's answer channel (room reserved).
    pub(crate) reply: mpsc::Sender<RelayToNode>,
}

/// Verifies receipts from `rx` in batches of up to `batch_max` against the roster in force,
/// until every session has gone; then returns, dropping its writer handle so the writer can
/// finish.
pub(crate) async fn run(
    mut rx: mpsc::Receiver<Unverified>,
    roster: watch::Receiver<Arc<Verified<Roster>>>,
    writer: mpsc::Sender<Command>,
    metrics: Arc<Metrics>,
    batch_max: usize,
) {
    let mut batch = Vec::with_capacity(batch_max);
    loop {
        if rx.recv_many(&mut batch, batch_max).await == 0 {
            return;
        }
        // Receipts of one fan-out arrive on many connections within a moment: let the
        // other sessions hand theirs over before verifying (a small batch waits a little
        // for them, `limits::RECEIPT_VERIFY_GATHER`).
        if batch.len() < batch_max {
            if batch.len() < crate::limits::RECEIPT_VERIFY_GATHER_BELOW {
                tokio::time::sleep(crate::limits::RECEIPT_VERIFY_GATHER).await;
            } else {
                tokio::task::yield_now().await;
            }
            while batch.len() < batch_max {
                match rx.try_recv() {
                    Ok(u) => batch.push(u),
                    Err(_) => break,
                }
            }
        }
        metrics.receipts_verified(batch.len());
        let roster = roster.borrow().clone();
        let mut signed = Vec::with_capacity(batch.len());
        let mut values = Vec::with_capacity(batch.len());
        let mut replies = Vec::with_capacity(batch.len());
        for u in batch.drain(..) {
            signed.push(u.signed);
            values.push(u.value);
            replies.push(u.reply);
        }
        let results = roster.verify_receipts(signed.iter().zip(values));
        for ((result, s), reply) in results.into_iter().zip(&signed).zip(replies) {
            match result {
                Ok(receipt) => {
                    if writer
                        .send(Command::Receipt {
                            digest: s.digest(),
                            receipt,
                            reply,
                        })
                        .await
                        .is_err()
                    {
                        error!("store writer gone: receipts can no longer be stored");
                        return;
                    }
                }
                Err(e) => {
                    // Counted and logged by the session when it writes the answer.
                    let _ = reply.try_send(RelayToNode::Rejected(Rejected {
                        subject: Subject::Receipt(s.digest()),
                        code: crate::session::reject_code(&e),
                        detail: hotline_proto::frame::detail(e.to_string()),
                    }));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hotline_proto::roster::{verify_roster, Participant, Role};
    use hotline_proto::{
        MessageId, ParticipantId, PublicKey, ReceiptItem, ReceiptKind, SigningKey, PROTOCOL_VERSION,
    };

    fn pid(s: &str) -> ParticipantId {
        ParticipantId::new(s).expect("participant id")
    }

    fn receipt(who: &str, n: u8, key: &SigningKey) -> (Signed<Receipt>, Receipt) {
        let r = Receipt {
            version: PROTOCOL_VERSION,
            recipient: pid(who),
            kind: ReceiptKind::Delivered,
            created_at_ms: 1_000,
            items: vec![ReceiptItem {
                id: MessageId([n; 16]),
                sender: pid("SEC"),
                digest: hotline_proto::Digest([n; 32]),
            }],
        };
        (Signed::sign(&r, key).expect("sign"), r)
    }

    /// Receipts from several sessions verified as one batch: the forged one (a signature
    /// that is not over its bytes) is answered `BadSignature` on its own session's
    /// channel; the others go to the writer, in order, and their sessions hear nothing yet.
    #[tokio::test]
    async fn a_forgery_in_a_batch_is_refused_to_its_session_and_the_rest_stored() {
        let ids = ["CHN", "IND", "KAZ", "SEC"];
        let keys: Vec<SigningKey> = (1..=4u8)
            .map(|i| SigningKey::from_bytes(&[i; 32]))
            .collect();
        let roster_key = SigningKey::from_bytes(&[9; 32]);
        let roster = hotline_proto::Roster {
            protocol_version: PROTOCOL_VERSION,
            version: 1,
            issued_at_ms: 1_000,
            network: "TEST".into(),
            participants: ids
                .iter()
                .zip(&keys)
                .map(|(id, k)| Participant {
                    id: pid(id),
                    name: id.to_string(),
                    role: if *id == "SEC" {
                        Role::Secretariat
                    } else {
                        Role::Member
                    },
                    keys: vec![PublicKey::of(k)],
                    revoked: false,
                })
                .collect(),
            groups: vec![],
        };
        let signed = Signed::sign(&roster, &roster_key).expect("sign roster");
        let roster = verify_roster(&signed, &PublicKey::of(&roster_key)).expect("roster");
        let (_roster_tx, roster_rx) = watch::channel(Arc::new(roster));

        let (tx, rx) = mpsc::channel(16);
        let (writer_tx, mut writer_rx) = mpsc::channel(16);
        let mut sessions = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            let (reply, answers) = mpsc::channel(4);
            let (mut signed, value) = receipt(id, i as u8, &keys[i]);
            if *id == "KAZ" {
                // KAZ's key, but the signature of another of its receipts.
                let (other, _) = receipt(id, 99, &keys[i]);
                signed =
                    Signed::from_parts(signed.bytes().to_vec(), signed.key(), other.signature());
            }
            let digest = signed.digest();
            tx.send(Unverified {
                signed,
                value,
                reply,
            })
            .await
            .expect("queued");
            sessions.push((digest, answers));
        }
        drop(tx);
        let metrics = Arc::new(Metrics::new());
        // All four are queued before it starts, so they are one batch.
        run(rx, roster_rx, writer_tx, metrics.clone(), 256).await;

        let mut stored = Vec::new();
        while let Ok(cmd) = writer_rx.try_recv() {
            match cmd {
                Command::Receipt { receipt, .. } => stored.push(receipt.recipient.clone()),
                _ => panic!("only receipts reach the writer"),
            }
        }
        assert_eq!(stored, vec![pid("CHN"), pid("IND"), pid("SEC")]);
        for (i, (digest, answers)) in sessions.iter_mut().enumerate() {
            match answers.try_recv() {
                Ok(RelayToNode::Rejected(r)) => {
                    assert_eq!(ids[i], "KAZ", "only the forgery is refused");
                    assert_eq!(r.subject, Subject::Receipt(*digest));
                    assert_eq!(r.code, hotline_proto::frame::RejectCode::BadSignature);
                }
                Ok(other) => panic!("unexpected answer {other:?}"),
                Err(_) => assert_ne!(ids[i], "KAZ", "the forgery must be answered"),
            }
        }
        assert!(
            metrics
                .render(&[])
                .contains("hotline_relay_receipt_verify_batch_size_bucket{le=\"4\"} 1"),
            "one batch of four"
        );
    }
}
