use hotline_node::store::{Draft, NodeStore};
use hotline_proto::*;
use std::time::Instant;

#[test]
fn perf() {
    let dir = tempfile::tempdir().unwrap();
    let mut st = NodeStore::open(dir.path()).unwrap();
    let me = ParticipantId::new("KGZ").unwrap();
    let key = SigningKey::from_bytes(&[1; 32]);
    let other = ParticipantId::new("KAZ").unwrap();
    let okey = SigningKey::from_bytes(&[2; 32]);
    let n: usize = std::env::var("N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20000);
    let body = "x".repeat(
        std::env::var("BODY")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(2000),
    );
    let now = 1_800_000_000_000u64;
    let mut batch = Vec::new();
    for i in 0..n {
        let env = Envelope {
            version: PROTOCOL_VERSION,
            id: MessageId::random(),
            sender: other.clone(),
            seq: Seq(i as u64 + 1),
            audience: Audience::Participants(vec![me.clone()]),
            kind: Kind::Alert,
            precedence: Precedence::Routine,
            status: Status::Actual,
            created_at_ms: now,
            respond_by_ms: None,
            references: vec![],
            category: None,
            subject: "s".into(),
            body: body.clone(),
        };
        let s = Signed::sign(&env, &okey).unwrap();
        batch.push((s, Ok(env)));
        if batch.len() == 500 {
            st.store_deliveries(&me, &key, &batch, now).unwrap();
            batch.clear();
        }
    }
    for i in 0..n {
        let d = Draft {
            audience: Audience::Participants(vec![other.clone()]),
            kind: Kind::Alert,
            precedence: Precedence::Routine,
            status: Status::Actual,
            respond_by_ms: if i % 10 == 0 { Some(now + 1000) } else { None },
            references: vec![],
            category: None,
            subject: "s".into(),
            body: body.clone(),
        };
        st.compose(&me, &key, d, &[other.clone()], 1, now)
            .unwrap()
            .unwrap();
    }
    for _ in 0..3 {
        let t = Instant::now();
        let a = st.mark_overdue(now + 500_000).unwrap().len();
        let t1 = t.elapsed();
        let t = Instant::now();
        let b = st.due_pages(now + 500_000, 300_000).unwrap().len();
        eprintln!(
            "mark_overdue {t1:?} ({a})  due_pages {:?} ({b})",
            t.elapsed()
        );
    }
}
