//! Redis Streams with redis-rs: `XADD` to one stream (its reply is "accepted": with
//! `appendfsync always` Redis writes and fsyncs the AOF before it replies), and 37 consumer
//! groups, one per subscriber, each reading with `XREADGROUP` and acknowledging with `XACK`
//! only after its batch is durable. Every client has its own connection.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use redis::aio::MultiplexedConnection;
use redis::streams::StreamReadReply;
use redis::Value;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::common::{Ledger, Plan, Received, Recipient, BATCH_MAX};
use crate::Target;

const STREAM: &str = "fanout37";
const FIELD: &str = "m";

async fn connect(t: &Target) -> anyhow::Result<MultiplexedConnection> {
    let client = redis::Client::open(format!("redis://{}:{}/", t.host, t.port))?;
    // No response timeout: with `appendfsync always` a reply waits for an fsync, and reads
    // block on purpose.
    let cfg = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(10)))
        .set_response_timeout(None);
    client
        .get_multiplexed_async_connection_with_config(&cfg)
        .await
        .with_context(|| format!("connecting to redis-server at {}:{}", t.host, t.port))
}

/// Creates the stream and the consumer groups, and starts the subscribers.
pub async fn subscribers(
    t: &Target,
    plan: &Plan,
    ledger: &Arc<Ledger>,
    stop: &watch::Receiver<bool>,
) -> anyhow::Result<Vec<JoinHandle<Recipient>>> {
    let mut admin = connect(t).await?;
    let mut tasks = Vec::new();
    for i in 0..plan.subscribers {
        let who = format!("sub{i:03}");
        let _: () = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(STREAM)
            .arg(&who)
            .arg("$")
            .arg("MKSTREAM")
            .query_async(&mut admin)
            .await
            .with_context(|| format!("creating consumer group {who}"))?;
        let conn = connect(t).await?;
        let rec = Recipient::open(who, plan.durability, &t.dir, ledger.capacity())?;
        tasks.push(tokio::spawn(subscriber(
            rec,
            conn,
            ledger.clone(),
            stop.clone(),
        )));
    }
    Ok(tasks)
}

async fn subscriber(
    mut rec: Recipient,
    mut conn: MultiplexedConnection,
    ledger: Arc<Ledger>,
    stop: watch::Receiver<bool>,
) -> Recipient {
    let group = rec.who.clone();
    while !*stop.borrow() {
        let r: redis::RedisResult<Option<StreamReadReply>> = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(&group)
            .arg("c")
            .arg("COUNT")
            .arg(BATCH_MAX)
            .arg("BLOCK")
            .arg(200)
            .arg("STREAMS")
            .arg(STREAM)
            .arg(">")
            .query_async(&mut conn)
            .await;
        let reply = match r {
            Ok(Some(r)) => r,
            Ok(None) => continue,
            Err(e) => {
                if !*stop.borrow() {
                    ledger.error(&rec.who, e);
                }
                break;
            }
        };
        let at = ledger.now_ns();
        let mut ids = Vec::new();
        let mut batch = Vec::new();
        for key in reply.keys {
            for e in key.ids {
                if let Some(Value::BulkString(b)) = e.map.get(FIELD) {
                    if let Some(idx) = ledger.index_of(b) {
                        batch.push(Received {
                            idx,
                            at_ns: at,
                            payload: bytes::Bytes::copy_from_slice(b),
                        });
                    }
                }
                ids.push(e.id);
            }
        }
        if ids.is_empty() {
            continue;
        }
        if let Err(e) = rec.store(&ledger, batch).await {
            ledger.error(&rec.who, e);
            break;
        }
        let r: redis::RedisResult<u64> = redis::cmd("XACK")
            .arg(STREAM)
            .arg(&group)
            .arg(&ids)
            .query_async(&mut conn)
            .await;
        if let Err(e) = r {
            ledger.error(&rec.who, e);
            break;
        }
    }
    rec
}

/// The publisher: one pipelined connection; each `XADD` waits for its reply in a task.
pub struct Publisher {
    conn: MultiplexedConnection,
    payload_len: usize,
    ledger: Arc<Ledger>,
}

impl Publisher {
    pub async fn connect(t: &Target, plan: &Plan, ledger: &Arc<Ledger>) -> anyhow::Result<Self> {
        Ok(Self {
            conn: connect(t).await?,
            payload_len: plan.body_bytes,
            ledger: ledger.clone(),
        })
    }

    pub async fn publish(&mut self, idx: usize) -> anyhow::Result<()> {
        let mut conn = self.conn.clone();
        let payload = self.ledger.payload(idx, self.payload_len);
        let ledger = self.ledger.clone();
        // Tasks may put their commands on the connection slightly out of order: the index
        // travels in the payload, so the measurement does not depend on the order.
        let fut = async move {
            redis::cmd("XADD")
                .arg(STREAM)
                .arg("*")
                .arg(FIELD)
                .arg(payload.as_ref())
                .query_async::<String>(&mut conn)
                .await
        };
        tokio::spawn(async move {
            match fut.await {
                Ok(_) => ledger.accepted(idx),
                Err(e) => ledger.error("publisher", e),
            }
        });
        Ok(())
    }

    pub async fn close(self) {}
}
