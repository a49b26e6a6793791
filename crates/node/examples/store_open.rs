//! What opening a node store costs as it grows, and how much of that is the check that
//! every stored record is one its journal holds (`store::verify_records`).
//!
//! ```sh
//! cargo run --release -p hotline-node --example store_open -- 20000
//! ```
//!
//! Fills a store in a temporary directory with N received messages (1 KiB bodies, stored
//! 500 at a time as deliveries are), then opens it three times and runs the record check
//! alone three times, printing each time.

use hotline_node::store::{verify_records, NodeStore, DB_FILE};
use hotline_proto::{
    Audience, Envelope, Kind, MessageId, ParticipantId, Precedence, Seq, Signed, SigningKey,
    Status, PROTOCOL_VERSION,
};

fn main() -> anyhow::Result<()> {
    let n: u64 = match std::env::args().nth(1) {
        Some(a) => a.parse()?,
        None => 20_000,
    };
    let dir = tempfile::tempdir()?;
    let now = 1_800_000_000_000;
    {
        let mut store = NodeStore::open(dir.path())?;
        let kaz = SigningKey::from_bytes(&[1; 32]);
        let mut batch = Vec::new();
        for seq in 1..=n {
            let env = Envelope {
                version: PROTOCOL_VERSION,
                id: MessageId::random(),
                sender: ParticipantId::new("KAZ")?,
                seq: Seq(seq),
                audience: Audience::Participants(vec![ParticipantId::new("KGZ")?]),
                kind: Kind::Alert,
                precedence: Precedence::Routine,
                status: Status::Actual,
                created_at_ms: now,
                respond_by_ms: None,
                references: vec![],
                category: None,
                subject: format!("message {seq}"),
                body: "x".repeat(1024),
            };
            batch.push((Signed::sign(&env, &kaz)?, Ok(env)));
            if batch.len() == 500 || seq == n {
                store.store_deliveries(&batch, now)?;
                batch.clear();
            }
        }
    }
    for _ in 0..3 {
        let t = std::time::Instant::now();
        drop(NodeStore::open(dir.path())?);
        println!("open, {n} received messages: {:?}", t.elapsed());
    }
    let path = dir.path().join(DB_FILE);
    let conn = rusqlite::Connection::open(&path)?;
    for _ in 0..3 {
        let t = std::time::Instant::now();
        let records = verify_records(&conn, &path)?;
        println!("record check alone, {records} records: {:?}", t.elapsed());
    }
    Ok(())
}
