//! NATS JetStream with async-nats: one file-storage stream with interest retention (a
//! message is kept until every consumer has acknowledged it, as the relay keeps a queue entry
//! until the recipient's receipt), a publish acknowledgement per message ("accepted"), and 37
//! durable pull consumers with explicit acks, each acknowledging only after its batch is
//! durable. Every client has its own connection.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt as _;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::common::{Ledger, Plan, Received, Recipient, BATCH_MAX};
use crate::Target;

const STREAM: &str = "FANOUT37";
const SUBJECT: &str = "hotline.fanout37";

async fn connect(t: &Target, name: &str) -> anyhow::Result<async_nats::Client> {
    async_nats::ConnectOptions::new()
        .name(name)
        .connection_timeout(Duration::from_secs(10))
        .request_timeout(Some(Duration::from_secs(30)))
        .connect(format!("{}:{}", t.host, t.port))
        .await
        .with_context(|| format!("connecting to nats-server at {}:{}", t.host, t.port))
}

/// Creates the stream and the durable consumers, and starts the subscribers.
pub async fn subscribers(
    t: &Target,
    plan: &Plan,
    ledger: &Arc<Ledger>,
    stop: &watch::Receiver<bool>,
) -> anyhow::Result<Vec<JoinHandle<Recipient>>> {
    let admin = jetstream::new(connect(t, "admin").await?);
    let s = admin
        .create_stream(stream::Config {
            name: STREAM.into(),
            subjects: vec![SUBJECT.into()],
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Interest,
            num_replicas: 1,
            ..Default::default()
        })
        .await
        .context("creating the stream")?;
    let mut tasks = Vec::new();
    for i in 0..plan.subscribers {
        let who = format!("sub{i:03}");
        s.create_consumer(consumer::pull::Config {
            durable_name: Some(who.clone()),
            ack_policy: consumer::AckPolicy::Explicit,
            deliver_policy: consumer::DeliverPolicy::All,
            ack_wait: Duration::from_secs(30),
            max_ack_pending: 100_000,
            ..Default::default()
        })
        .await
        .with_context(|| format!("creating consumer {who}"))?;
        let js = jetstream::new(connect(t, &who).await?);
        let c: consumer::PullConsumer = js
            .get_stream(STREAM)
            .await?
            .get_consumer(&who)
            .await
            .map_err(|e| anyhow::anyhow!("getting consumer {who}: {e}"))?;
        let msgs = c
            .stream()
            .max_messages_per_batch(1_000)
            .heartbeat(Duration::from_secs(5))
            .messages()
            .await
            .with_context(|| format!("consuming as {who}"))?;
        let rec = Recipient::open(who, plan.durability, &t.dir, ledger.capacity())?;
        tasks.push(tokio::spawn(subscriber(
            rec,
            msgs,
            ledger.clone(),
            stop.clone(),
        )));
    }
    Ok(tasks)
}

async fn subscriber(
    mut rec: Recipient,
    msgs: consumer::pull::Stream,
    ledger: Arc<Ledger>,
    mut stop: watch::Receiver<bool>,
) -> Recipient {
    let mut chunks = msgs.ready_chunks(BATCH_MAX);
    loop {
        let chunk = tokio::select! {
            biased;
            _ = stop.changed() => break,
            c = chunks.next() => c,
        };
        let Some(chunk) = chunk else { break };
        let at = ledger.now_ns();
        let mut got = Vec::with_capacity(chunk.len());
        for m in chunk {
            match m {
                Ok(m) => got.push(m),
                Err(e) => {
                    if !*stop.borrow() {
                        ledger.error(&rec.who, e);
                    }
                }
            }
        }
        let batch = got
            .iter()
            .filter_map(|m| {
                ledger.index_of(&m.payload).map(|idx| Received {
                    idx,
                    at_ns: at,
                    payload: m.payload.clone(),
                })
            })
            .collect();
        if let Err(e) = rec.store(&ledger, batch).await {
            ledger.error(&rec.who, e);
            break;
        }
        for m in &got {
            if let Err(e) = m.ack().await {
                ledger.error(&rec.who, e);
                break;
            }
        }
    }
    rec
}

/// The publisher: every publication waits for its acknowledgement in a task of its own.
pub struct Publisher {
    js: jetstream::Context,
    payload_len: usize,
    ledger: Arc<Ledger>,
}

impl Publisher {
    pub async fn connect(t: &Target, plan: &Plan, ledger: &Arc<Ledger>) -> anyhow::Result<Self> {
        Ok(Self {
            js: jetstream::new(connect(t, "publisher").await?),
            payload_len: plan.body_bytes,
            ledger: ledger.clone(),
        })
    }

    pub async fn publish(&mut self, idx: usize) -> anyhow::Result<()> {
        let ack = self
            .js
            .publish(SUBJECT, self.ledger.payload(idx, self.payload_len))
            .await?;
        let ledger = self.ledger.clone();
        tokio::spawn(async move {
            match ack.await {
                Ok(_) => ledger.accepted(idx),
                Err(e) => ledger.error("publisher", e),
            }
        });
        Ok(())
    }

    pub async fn close(self) {
        let _ = self.js.client().flush().await;
    }
}
