//! MQTT 3.1.1 with rumqttc: QoS 1 publications (the broker's PUBACK is "accepted"), and 37
//! subscribers with persistent sessions (clean session off, fixed client ids), each
//! acknowledging (PUBACK, manual acks) only after its batch is durable.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context as _};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::common::{Ledger, Plan, Received, Recipient, BATCH_MAX};
use crate::Target;

const TOPIC: &str = "hotline/fanout37";

fn options(id: &str, t: &Target) -> MqttOptions {
    let mut o = MqttOptions::new(id, t.host.clone(), t.port);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_clean_session(false);
    o.set_inflight(u16::MAX / 2);
    o.set_max_packet_size(1 << 20, 1 << 20);
    o
}

/// Connects and subscribes the subscribers; each task ends when `stop` turns true.
pub async fn subscribers(
    t: &Target,
    plan: &Plan,
    ledger: &Arc<Ledger>,
    stop: &watch::Receiver<bool>,
) -> anyhow::Result<Vec<JoinHandle<Recipient>>> {
    let mut tasks = Vec::new();
    let mut ready = Vec::new();
    for i in 0..plan.subscribers {
        let who = format!("sub{i:03}");
        let mut o = options(&who, t);
        o.set_manual_acks(true);
        let (client, eventloop) = AsyncClient::new(o, 65_536);
        // Unbounded on purpose, and bounded in fact: the broker sends a subscriber at most
        // its in-flight window of unacknowledged QoS 1 messages (`max_inflight_messages
        // 1000` in run.sh's config), and they are acked only after `sub_store` has them. A
        // bounded channel here could deadlock: the event loop would wait for `sub_store`,
        // which waits for the event loop to take its acks.
        let (tx, rx) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = oneshot::channel();
        tokio::spawn(sub_events(
            who.clone(),
            eventloop,
            tx,
            ready_tx,
            ledger.clone(),
            stop.clone(),
        ));
        client.subscribe(TOPIC, QoS::AtLeastOnce).await?;
        ready.push(ready_rx);
        let rec = Recipient::open(who, plan.durability, &t.dir, ledger.capacity())?;
        tasks.push(tokio::spawn(sub_store(
            rec,
            client,
            rx,
            ledger.clone(),
            stop.clone(),
        )));
    }
    for r in ready {
        match tokio::time::timeout(Duration::from_secs(20), r).await {
            Ok(Ok(())) => {}
            _ => bail!("an MQTT subscriber did not get its SUBACK"),
        }
    }
    Ok(tasks)
}

async fn sub_events(
    who: String,
    mut ev: EventLoop,
    tx: mpsc::UnboundedSender<(u64, rumqttc::Publish)>,
    ready: oneshot::Sender<()>,
    ledger: Arc<Ledger>,
    mut stop: watch::Receiver<bool>,
) {
    let mut ready = Some(ready);
    loop {
        let e = tokio::select! {
            biased;
            _ = stop.changed() => break,
            e = ev.poll() => e,
        };
        match e {
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if tx.send((ledger.now_ns(), p)).is_err() {
                    break;
                }
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => {
                if let Some(r) = ready.take() {
                    let _ = r.send(());
                }
            }
            Ok(_) => {}
            Err(e) => {
                if !*stop.borrow() {
                    ledger.error(&who, e);
                }
                break;
            }
        }
    }
}

async fn sub_store(
    mut rec: Recipient,
    client: AsyncClient,
    mut rx: mpsc::UnboundedReceiver<(u64, rumqttc::Publish)>,
    ledger: Arc<Ledger>,
    mut stop: watch::Receiver<bool>,
) -> Recipient {
    loop {
        let first = tokio::select! {
            biased;
            _ = stop.changed() => break,
            f = rx.recv() => f,
        };
        let Some(first) = first else { break };
        let mut pubs = vec![first];
        while pubs.len() < BATCH_MAX {
            match rx.try_recv() {
                Ok(p) => pubs.push(p),
                Err(_) => break,
            }
        }
        let batch = pubs
            .iter()
            .filter_map(|(at, p)| {
                ledger.index_of(&p.payload).map(|idx| Received {
                    idx,
                    at_ns: *at,
                    payload: p.payload.clone(),
                })
            })
            .collect();
        if let Err(e) = rec.store(&ledger, batch).await {
            ledger.error(&rec.who, e);
            break;
        }
        for (_, p) in &pubs {
            if let Err(e) = client.ack(p).await {
                ledger.error(&rec.who, e);
                break;
            }
        }
    }
    let _ = client.try_disconnect();
    rec
}

/// The publisher: QoS 1, its own persistent session.
pub struct Publisher {
    client: AsyncClient,
    queued: Arc<Mutex<VecDeque<usize>>>,
    payload_len: usize,
    ledger: Arc<Ledger>,
    events: JoinHandle<()>,
}

impl Publisher {
    pub async fn connect(t: &Target, plan: &Plan, ledger: &Arc<Ledger>) -> anyhow::Result<Self> {
        let (client, mut ev) = AsyncClient::new(options("publisher", t), 65_536);
        // Wait for the CONNACK before timing anything.
        loop {
            match tokio::time::timeout(Duration::from_secs(20), ev.poll())
                .await
                .context("MQTT connect timed out")?
            {
                Ok(Event::Incoming(Packet::ConnAck(_))) => break,
                Ok(_) => {}
                Err(e) => bail!("MQTT publisher: {e}"),
            }
        }
        let queued: Arc<Mutex<VecDeque<usize>>> = Default::default();
        let events = tokio::spawn(pub_events(ev, queued.clone(), ledger.clone()));
        Ok(Self {
            client,
            queued,
            payload_len: plan.body_bytes,
            ledger: ledger.clone(),
            events,
        })
    }

    pub async fn publish(&mut self, idx: usize) -> anyhow::Result<()> {
        let payload = self.ledger.payload(idx, self.payload_len);
        self.queued
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(idx);
        self.client
            .publish_bytes(TOPIC, QoS::AtLeastOnce, false, payload)
            .await?;
        Ok(())
    }

    pub async fn close(self) {
        let _ = self.client.try_disconnect();
        let _ = tokio::time::timeout(Duration::from_secs(2), self.events).await;
    }
}

/// Maps packet ids to message indices as the publications go out (in order), and counts the
/// PUBACKs.
async fn pub_events(mut ev: EventLoop, queued: Arc<Mutex<VecDeque<usize>>>, ledger: Arc<Ledger>) {
    let mut by_pkid: HashMap<u16, usize> = HashMap::new();
    loop {
        match ev.poll().await {
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                if let Some(idx) = queued.lock().unwrap_or_else(|p| p.into_inner()).pop_front() {
                    by_pkid.insert(pkid, idx);
                }
            }
            Ok(Event::Incoming(Packet::PubAck(a))) => {
                if let Some(idx) = by_pkid.remove(&a.pkid) {
                    ledger.accepted(idx);
                }
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => break,
            Ok(_) => {}
            Err(e) => {
                ledger.error("publisher", e);
                break;
            }
        }
    }
}
