//! One simulated run: a plan (messages, loss, latency, partitions, clock offsets), a seed,
//! and the checks on what came out.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use hotline_net::transport::AbstractSocket;
use hotline_proto::frame::RejectCode;
use hotline_proto::limits::CLOCK_SKEW_FUTURE_MAX_MS;
use hotline_proto::ParticipantId;
use hotline_relay::Hosting;

use crate::client::{host_seed, seed_bytes, Composing, Peer};
use crate::fixture::{
    Fixture, RECIPIENT, RECIPIENT_HOST, RELAY_HOST, RELAY_PORT, SENDER, SENDER_HOST,
};
use crate::ledger::Ledger;
use crate::socket::{Loss, SimSocket};

/// A change to the network at a simulated time.
#[derive(Clone, Copy, Debug)]
pub enum Fault {
    /// Cut both directions between two hosts; datagrams in flight are lost.
    Partition(&'static str, &'static str),
    /// Heal both directions between two hosts.
    Repair(&'static str, &'static str),
    /// Cut datagrams from the first host to the second only.
    PartitionOneway(&'static str, &'static str),
    /// Heal the direction from the first host to the second.
    RepairOneway(&'static str, &'static str),
    /// Set every socket's independent datagram loss (0.0 to 1.0).
    Loss(f64),
}

/// What to simulate.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Name, for messages.
    pub name: &'static str,
    /// Messages the sender composes.
    pub messages: usize,
    /// When the first is composed (simulated ms after start).
    pub first_at_ms: u64,
    /// Interval between compositions (ms).
    pub every_ms: u64,
    /// How far the sender's clock is off true time (ms; positive is ahead). It dates
    /// everything the sender signs: messages, authentication proofs.
    pub sender_clock_ms: i64,
    /// How far the recipient's clock is off (ms): it dates the delivered receipts.
    pub recipient_clock_ms: i64,
    /// Independent datagram loss on every socket from the start (0.0 to 1.0).
    pub loss: f64,
    /// Per-datagram latency range, ms (turmoil draws from an exponential distribution
    /// between them, so datagrams overtake each other).
    pub latency_ms: (u64, u64),
    /// Network changes at simulated times (ms).
    pub faults: Vec<(u64, Fault)>,
    /// Cut the relay→sender direction as soon as the sender has written its first
    /// message, so the relay's `Accepted` for it is lost; heal it this many ms later.
    pub lose_first_ack_for_ms: Option<u64>,
    /// Simulated time after which an unsettled run fails (ms).
    pub limit_ms: u64,
    /// Most `Submit` frames allowed for one message.
    pub max_submits_per_message: u32,
    /// Most sessions allowed for the sender and for the recipient.
    pub max_sessions: u32,
    /// Fewest sessions expected for each (2 or more where a fault must break a session).
    pub min_sessions: u32,
    /// Fewest duplicate deliveries expected (where a fault must lose receipts).
    pub min_redeliveries: u32,
}

impl Plan {
    /// A plan with no faults: `messages` composed every `every_ms`, 1-20 ms latency.
    pub fn new(name: &'static str, messages: usize, every_ms: u64) -> Self {
        Self {
            name,
            messages,
            first_at_ms: 500,
            every_ms,
            sender_clock_ms: 0,
            recipient_clock_ms: 0,
            loss: 0.0,
            latency_ms: (1, 20),
            faults: vec![],
            lose_first_ack_for_ms: None,
            limit_ms: 300_000,
            max_submits_per_message: 1,
            max_sessions: 1,
            min_sessions: 1,
            min_redeliveries: 0,
        }
    }
}

/// What the relay's database holds at the end, for the sender's messages.
#[derive(Debug, Default)]
pub struct RelayFacts {
    /// Stored messages, by sender sequence number.
    pub stored_seqs: Vec<u64>,
    /// Messages still queued for the recipient.
    pub queued_for_recipient: u64,
    /// Journal entries (its hash chain verified).
    pub journal_entries: u64,
}

/// What a run produced.
#[derive(Debug)]
pub struct Outcome {
    /// The seed.
    pub seed: u64,
    /// What the participants saw.
    pub ledger: Ledger,
    /// What the relay stored.
    pub relay: RelayFacts,
    /// Datagrams offered and dropped by each host's socket (relay, sender, recipient).
    pub datagrams: [(u64, u64); 3],
    /// Whether the lost-acknowledgement check ran: the relay held the message while the
    /// sender had not seen `Accepted` for it.
    pub ack_loss_observed: bool,
    /// Simulated time the run took (ms).
    pub sim_ms: u64,
}

/// Runs `plan` with `seed`; an error if the simulation failed or did not settle in time.
pub fn run(seed: u64, plan: &Plan) -> anyhow::Result<Outcome> {
    let fixture = Fixture::new()?;
    let ledger = Rc::new(RefCell::new(Ledger {
        planned: plan.messages,
        ..Ledger::default()
    }));
    let losses = [RELAY_HOST, SENDER_HOST, RECIPIENT_HOST].map(|h| Loss::new(host_seed(seed, h)));
    for l in &losses {
        l.set_rate(plan.loss);
    }
    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .simulation_duration(Duration::from_millis(plan.limit_ms))
        .min_message_latency(Duration::from_millis(plan.latency_ms.0))
        .max_message_latency(Duration::from_millis(plan.latency_ms.1))
        .build();

    let relay_config = fixture.relay_config()?;
    let relay_loss = losses[0].clone();
    sim.host(RELAY_HOST, move || {
        let config = relay_config.clone();
        let loss = relay_loss.clone();
        async move {
            let socket = SimSocket::bind((Ipv4Addr::UNSPECIFIED, RELAY_PORT).into(), loss).await?;
            let socket = AbstractSocket {
                socket: Arc::new(socket),
                runtime: Arc::new(quinn::TokioRuntime),
                rng_seed: seed_bytes(seed, RELAY_HOST),
            };
            let hosting = Hosting::default().socket(socket).writer_on_runtime();
            let _relay = hotline_relay::Relay::spawn_with(config, hosting).await?;
            std::future::pending::<()>().await;
            Ok(())
        }
    });

    let roster = Arc::new(fixture.roster.clone());
    let peer = |id: &str, host: usize, clock_offset_ms: i64| -> anyhow::Result<Peer> {
        let store_dir = fixture.path().join(format!("node-{id}"));
        std::fs::create_dir_all(&store_dir)?;
        Ok(Peer {
            me: ParticipantId::new(id).map_err(|e| anyhow::anyhow!("{e}"))?,
            key: fixture.key(id)?,
            roster: roster.clone(),
            fingerprint: fixture.fingerprint,
            store_dir,
            loss: losses[host].clone(),
            seed,
            clock_offset_ms,
            ledger: ledger.clone(),
        })
    };
    let composing = Composing {
        messages: plan.messages,
        first_at_ms: plan.first_at_ms,
        every_ms: plan.every_ms,
    };
    let sender = peer(SENDER, 1, plan.sender_clock_ms)?;
    sim.client(SENDER_HOST, async move {
        crate::client::sender(sender, composing).await?;
        Ok(())
    });
    let recipient = peer(RECIPIENT, 2, plan.recipient_clock_ms)?;
    sim.client(RECIPIENT_HOST, async move {
        crate::client::recipient(recipient).await?;
        Ok(())
    });

    let mut faults = plan.faults.clone();
    faults.sort_by_key(|(t, _)| *t);
    let mut faults = faults.into_iter().peekable();
    let mut ack_cut_at: Option<Duration> = None;
    let mut ack_loss_observed = false;
    loop {
        let finished = match sim.step() {
            Ok(f) => f,
            Err(e) => bail!(
                "{} (seed {seed}): simulation failed at {:?}: {e}\nlast events:\n{}",
                plan.name,
                sim.elapsed(),
                ledger.borrow().tail(40)
            ),
        };
        let now = sim.elapsed();
        while let Some((at, fault)) = faults.peek().copied() {
            if Duration::from_millis(at) > now {
                break;
            }
            faults.next();
            ledger.borrow_mut().event(format!("network: {fault:?}"));
            match fault {
                Fault::Partition(a, b) => sim.partition(a, b),
                Fault::Repair(a, b) => sim.repair(a, b),
                Fault::PartitionOneway(a, b) => sim.partition_oneway(a, b),
                Fault::RepairOneway(a, b) => sim.repair_oneway(a, b),
                Fault::Loss(rate) => losses.iter().for_each(|l| l.set_rate(rate)),
            }
        }
        if let Some(heal_after) = plan.lose_first_ack_for_ms {
            match ack_cut_at {
                None => {
                    let written = ledger
                        .borrow()
                        .messages
                        .get(&1)
                        .is_some_and(|m| m.submits > 0);
                    if written {
                        sim.partition_oneway(RELAY_HOST, SENDER_HOST);
                        ledger
                            .borrow_mut()
                            .event("network: relay->sender cut after the first submit");
                        ack_cut_at = Some(now);
                    }
                }
                Some(at) if !ack_loss_observed && now >= at + Duration::from_millis(heal_after) => {
                    // Before healing: the relay holds the message (it committed and
                    // answered), and the sender has not seen that answer.
                    let l = ledger.borrow();
                    let first = l.messages.get(&1).context("message #1")?;
                    let id = first.id.context("message #1 id")?;
                    let stored = relay_has(&fixture, &id)?;
                    if !stored || first.accepted > 0 {
                        bail!(
                            "{} (seed {seed}): before healing, relay stored #1: {stored}, sender saw Accepted: {}",
                            plan.name,
                            first.accepted
                        );
                    }
                    drop(l);
                    ack_loss_observed = true;
                    sim.repair_oneway(RELAY_HOST, SENDER_HOST);
                    ledger.borrow_mut().event(
                        "network: relay->sender healed (relay held #1, sender had no Accepted)",
                    );
                }
                Some(_) => {}
            }
        }
        if finished {
            break;
        }
    }
    let sim_ms = sim.elapsed().as_millis() as u64;
    // Stop every host (and so the relay's store connections) before reading the store.
    drop(sim);
    let mut ledger = Rc::try_unwrap(ledger)
        .map_err(|_| anyhow::anyhow!("ledger still shared after the simulation"))?
        .into_inner();
    ledger.finished_at_ms = Some(sim_ms);
    let relay = relay_facts(&fixture, &ledger)?;
    Ok(Outcome {
        seed,
        ledger,
        relay,
        datagrams: [losses[0].counts(), losses[1].counts(), losses[2].counts()],
        ack_loss_observed,
        sim_ms,
    })
}

fn open_relay_db(fixture: &Fixture) -> anyhow::Result<rusqlite::Connection> {
    Ok(rusqlite::Connection::open_with_flags(
        fixture.relay_db(),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )?)
}

fn relay_has(fixture: &Fixture, id: &hotline_proto::MessageId) -> anyhow::Result<bool> {
    let conn = open_relay_db(fixture)?;
    Ok(hotline_relay::store::read_message(&conn, id)?.is_some())
}

fn relay_facts(fixture: &Fixture, ledger: &Ledger) -> anyhow::Result<RelayFacts> {
    let conn = open_relay_db(fixture)?;
    let mut stored_seqs = Vec::new();
    for (seq, m) in &ledger.messages {
        if let Some(id) = &m.id {
            if hotline_relay::store::read_message(&conn, id)?.is_some() {
                stored_seqs.push(*seq);
            }
        }
    }
    let queued_for_recipient =
        hotline_relay::store::queued_for(&conn, &ParticipantId::new(RECIPIENT)?)? as u64;
    let journal = hotline_store::verify_journal(&conn)?;
    Ok(RelayFacts {
        stored_seqs,
        queued_for_recipient,
        journal_entries: journal.entries,
    })
}

impl Outcome {
    /// Checks the guarantees: every accepted message shown exactly once to the recipient's
    /// operator and receipted back to the sender; every `Accepted` backed by the relay's
    /// store; a message from a clock too far ahead refused, never acknowledged; retries
    /// and sessions within the plan's bounds; nothing left queued.
    pub fn check(&self, plan: &Plan) -> Result<(), String> {
        let mut problems = Vec::new();
        let l = &self.ledger;
        if l.messages.len() != plan.messages {
            problems.push(format!(
                "{} of {} messages composed",
                l.messages.len(),
                plan.messages
            ));
        }
        let stored: std::collections::BTreeSet<u64> =
            self.relay.stored_seqs.iter().copied().collect();
        for (seq, m) in &l.messages {
            let too_far_ahead = m.clock_offset_ms > CLOCK_SKEW_FUTURE_MAX_MS as i64;
            if too_far_ahead {
                if m.rejected != Some(RejectCode::FutureTimestamp) {
                    problems.push(format!(
                        "#{seq} (clock {:+} ms) should be refused FutureTimestamp, got {:?}",
                        m.clock_offset_ms, m.rejected
                    ));
                }
                if m.accepted > 0 || stored.contains(seq) || m.deliveries > 0 {
                    problems.push(format!(
                        "#{seq} from a clock {:+} ms ahead was accepted {} times, stored {}, delivered {} times",
                        m.clock_offset_ms,
                        m.accepted,
                        stored.contains(seq),
                        m.deliveries
                    ));
                }
                continue;
            }
            if m.accepted == 0 {
                problems.push(format!("#{seq} never accepted (refused: {:?})", m.rejected));
            }
            if m.accepted > 0 && !stored.contains(seq) {
                problems.push(format!(
                    "#{seq}: the sender saw Accepted but the relay does not hold it (invented acknowledgement)"
                ));
            }
            if m.shown != 1 {
                problems.push(format!(
                    "#{seq} shown {} times to the recipient's operator (delivered {} times)",
                    m.shown, m.deliveries
                ));
            }
            if !m.receipt_at_sender {
                problems.push(format!(
                    "#{seq}: delivered receipt never reached the sender"
                ));
            }
            if m.submits > plan.max_submits_per_message {
                problems.push(format!(
                    "#{seq} submitted {} times (at most {})",
                    m.submits, plan.max_submits_per_message
                ));
            }
            if m.deliveries > l.recipient_sessions.max(1) {
                problems.push(format!(
                    "#{seq} delivered {} times over {} recipient sessions",
                    m.deliveries, l.recipient_sessions
                ));
            }
        }
        if !l.unknown_deliveries.is_empty() {
            problems.push(format!(
                "{} deliveries of messages never composed",
                l.unknown_deliveries.len()
            ));
        }
        let sessions = [l.sender_sessions, l.recipient_sessions];
        if sessions
            .iter()
            .any(|n| *n > plan.max_sessions || *n < plan.min_sessions)
        {
            problems.push(format!(
                "sessions: sender {}, recipient {} (expected {} to {})",
                l.sender_sessions, l.recipient_sessions, plan.min_sessions, plan.max_sessions
            ));
        }
        let redeliveries: u32 = l
            .messages
            .values()
            .map(|m| m.deliveries.saturating_sub(1))
            .sum();
        if redeliveries < plan.min_redeliveries {
            problems.push(format!(
                "{redeliveries} duplicate deliveries (expected at least {}): the fault did not lose receipts",
                plan.min_redeliveries
            ));
        }
        if self.relay.queued_for_recipient != 0 {
            problems.push(format!(
                "{} messages still queued for the recipient",
                self.relay.queued_for_recipient
            ));
        }
        // The sender reads the outbox on from the last row it read, as the node's link
        // does: each message once a submission; again only those in flight after one
        // refused for a reason that passes, once its pause is over (up to two pages a
        // time). Re-reading the page in flight at each pass read it once an answer.
        let submits: u64 = l.messages.values().map(|m| u64::from(m.submits)).sum();
        let retried: u64 = l
            .messages
            .values()
            .map(|m| u64::from(m.retryable_refusals))
            .sum();
        let page = hotline_node::limits::OUTBOX_PAGE as u64;
        if l.outbox_rows_read > submits + retried * 2 * page {
            problems.push(format!(
                "the sender read {} outbox rows for {submits} submissions and {retried} retryable refusals: rows in flight read again",
                l.outbox_rows_read
            ));
        }
        if plan.lose_first_ack_for_ms.is_some() {
            let first = l.messages.get(&1);
            let resubmitted = matches!(first, Some(m) if m.submits >= 2);
            if !self.ack_loss_observed || !resubmitted {
                problems.push(format!(
                    "the first Accepted was not lost and answered again on resubmission (observed {}, submits {:?})",
                    self.ack_loss_observed,
                    first.map(|m| m.submits)
                ));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            let mut msg = format!(
                "{} (seed {}): {}\n{}\nlast events:\n{}",
                plan.name,
                self.seed,
                problems.join("; "),
                self.summary(),
                l.tail(40)
            );
            let _ = write!(msg, "rerun with HOTLINE_SIM_SEED={}", self.seed);
            Err(msg)
        }
    }

    /// One line of numbers about the run.
    pub fn summary(&self) -> String {
        let l = &self.ledger;
        let submits: u32 = l.messages.values().map(|m| m.submits).sum();
        let deliveries: u32 = l.messages.values().map(|m| m.deliveries).sum();
        let (sent, dropped) = self
            .datagrams
            .iter()
            .fold((0, 0), |(s, d), (a, b)| (s + a, d + b));
        format!(
            "seed {}: {} messages, {} submits, {} deliveries ({} shown), sessions {}/{}, failed connects {}/{}, datagrams {} ({} dropped), relay journal {}, {} ms simulated",
            self.seed,
            l.messages.len(),
            submits,
            deliveries,
            l.messages.values().map(|m| m.shown).sum::<u32>(),
            l.sender_sessions,
            l.recipient_sessions,
            l.failed_connects.0,
            l.failed_connects.1,
            sent,
            dropped,
            self.relay.journal_entries,
            self.sim_ms
        )
    }

    /// Submissions per message, by sequence number (for reports).
    pub fn submits(&self) -> BTreeMap<u64, u32> {
        self.ledger
            .messages
            .iter()
            .map(|(s, m)| (*s, m.submits))
            .collect()
    }
}
