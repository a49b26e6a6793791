//! Deterministic network simulation scenarios, each over ten seeds (`HOTLINE_SIM_SEED=N`
//! runs seed N alone; `HOTLINE_SIM_LOG=debug` or any tracing filter shows the relay's and
//! quinn's logs, e.g. to follow one failing seed). Every run checks: each accepted message shown exactly once to the
//! recipient's operator and its delivered receipt back at the sender; each `Accepted` the
//! sender saw backed by the relay's store; submissions and sessions within bounds; nothing
//! left queued. See the crate documentation for what a seed reproduces.

#![allow(clippy::unwrap_used)]

use hotline_sim::fixture::{RECIPIENT_HOST, RELAY_HOST, SENDER_HOST};
use hotline_sim::{run, seeds, Fault, Plan};

/// Seeds per scenario when `HOTLINE_SIM_SEED` is not set.
const SEEDS: u64 = 10;

/// One hour, in ms.
const HOUR_MS: i64 = 3_600_000;

/// Logs to the test output if `HOTLINE_SIM_LOG` holds a tracing filter.
fn logs() {
    if let Ok(filter) = std::env::var("HOTLINE_SIM_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
}

fn run_all(plan: &Plan) {
    logs();
    for seed in seeds(SEEDS) {
        let started = std::time::Instant::now();
        let outcome = match run(seed, plan) {
            Ok(o) => o,
            Err(e) => panic!("{e:#}\nrerun with HOTLINE_SIM_SEED={seed}"),
        };
        if let Err(e) = outcome.check(plan) {
            panic!("{e}");
        }
        eprintln!(
            "{}: {} ({:?} real)",
            plan.name,
            outcome.summary(),
            started.elapsed()
        );
    }
}

/// The sender, then the recipient, cut off from the relay for 15 s, longer than the 10 s
/// idle timeout: both sessions die and reconnect; messages composed before, during and
/// after each partition are delivered once. Then only the recipient→relay direction is cut
/// for 15 s: deliveries arrive but their receipts are lost, so the relay delivers them
/// again on the next session and the recipient's store shows each once.
#[test]
fn partitions_longer_than_the_idle_timeout_then_heal() {
    let mut plan = Plan::new("partitions", 55, 1_000);
    plan.faults = vec![
        (3_000, Fault::Partition(SENDER_HOST, RELAY_HOST)),
        (18_000, Fault::Repair(SENDER_HOST, RELAY_HOST)),
        (21_000, Fault::Partition(RECIPIENT_HOST, RELAY_HOST)),
        (36_000, Fault::Repair(RECIPIENT_HOST, RELAY_HOST)),
        (39_000, Fault::PartitionOneway(RECIPIENT_HOST, RELAY_HOST)),
        (54_000, Fault::RepairOneway(RECIPIENT_HOST, RELAY_HOST)),
    ];
    plan.min_sessions = 2;
    plan.max_sessions = 3;
    plan.max_submits_per_message = 2;
    plan.min_redeliveries = 1;
    run_all(&plan);
}

fn lossy(name: &'static str, loss: f64) -> Plan {
    let mut plan = Plan::new(name, 50, 50);
    plan.loss = loss;
    plan.latency_ms = (5, 150);
    plan.max_submits_per_message = 2;
    plan.max_sessions = 2;
    plan
}

/// 10 % independent loss on every datagram, 5-150 ms latency (datagrams overtake each
/// other): QUIC recovers, every message arrives once.
#[test]
fn ten_percent_loss_with_delay_and_reordering() {
    run_all(&lossy("loss 10%", 0.10));
}

/// As above with 30 % loss.
#[test]
fn thirty_percent_loss_with_delay_and_reordering() {
    run_all(&lossy("loss 30%", 0.30));
}

/// The relay commits the first messages and answers `Accepted`, but the answers are lost
/// (relay→sender cut for 15 s, past the idle timeout). The sender resubmits the same signed
/// messages on its next session; the relay answers `Accepted` again without storing or
/// queueing them twice, and the recipient shows each once.
#[test]
fn lost_acknowledgement_is_answered_again_on_resubmission() {
    let mut plan = Plan::new("lost Accepted", 5, 500);
    plan.lose_first_ack_for_ms = Some(15_000);
    plan.min_sessions = 1;
    plan.max_sessions = 2;
    plan.max_submits_per_message = 2;
    run_all(&plan);
}

/// A sender whose clock is an hour ahead: every message is refused `FutureTimestamp`,
/// nothing is stored or delivered, and no `Accepted` is ever seen.
#[test]
fn sender_clock_an_hour_ahead_is_refused() {
    let mut plan = Plan::new("clock +1h", 5, 500);
    plan.sender_clock_ms = HOUR_MS;
    run_all(&plan);
}

/// A sender an hour behind and a recipient an hour ahead: old timestamps are allowed, so
/// every message is accepted and delivered once, and the recipient's receipts still reach
/// the sender.
#[test]
fn clocks_an_hour_off_the_other_way_still_deliver() {
    let mut plan = Plan::new("clock -1h/+1h", 5, 500);
    plan.sender_clock_ms = -HOUR_MS;
    plan.recipient_clock_ms = HOUR_MS;
    run_all(&plan);
}

/// The sender composes a backlog of more than a page (`OUTBOX_PAGE`, 256) while cut off
/// from the relay, then writes it: a page at first, the rest as the relay answers, each
/// message read from the outbox once. (The simulator's sender read the outbox from its
/// start at each answer, every message in flight read again: tens of thousands of rows for
/// these 300.)
#[test]
fn a_backlog_is_read_from_the_outbox_once() {
    let mut plan = Plan::new("backlog", 300, 10);
    plan.faults = vec![
        (0, Fault::Partition(SENDER_HOST, RELAY_HOST)),
        (8_000, Fault::Repair(SENDER_HOST, RELAY_HOST)),
    ];
    logs();
    // Three seeds: the point is the count, which no seed changes.
    for seed in seeds(3) {
        let outcome = match run(seed, &plan) {
            Ok(o) => o,
            Err(e) => panic!("{e:#}\nrerun with HOTLINE_SIM_SEED={seed}"),
        };
        if let Err(e) = outcome.check(&plan) {
            panic!("{e}");
        }
        assert_eq!(
            outcome.ledger.outbox_rows_read,
            300,
            "seed {seed}: each message read once; {}",
            outcome.summary()
        );
    }
}

/// Two runs of one seed see the same events at the same simulated times.
#[test]
fn same_seed_same_run() {
    let mut plan = lossy("reproducible", 0.30);
    plan.messages = 20;
    plan.faults = vec![
        (1_000, Fault::Partition(RECIPIENT_HOST, RELAY_HOST)),
        (13_000, Fault::Repair(RECIPIENT_HOST, RELAY_HOST)),
    ];
    plan.max_sessions = 3;
    logs();
    // Seed 7 unless HOTLINE_SIM_SEED names another.
    let seed = match std::env::var("HOTLINE_SIM_SEED") {
        Ok(_) => seeds(SEEDS)[0],
        Err(_) => 7,
    };
    let a = run(seed, &plan).unwrap();
    let b = run(seed, &plan).unwrap();
    a.check(&plan).unwrap();
    if let Some(i) = (0..a.ledger.trace.len().max(b.ledger.trace.len()))
        .find(|i| a.ledger.trace.get(*i) != b.ledger.trace.get(*i))
    {
        panic!(
            "seed {seed}: runs differ at event {i}:\n  {:?}\n  {:?}\n{}\n{}",
            a.ledger.trace.get(i),
            b.ledger.trace.get(i),
            a.summary(),
            b.summary()
        );
    }
    assert_eq!(a.datagrams, b.datagrams, "seed {seed}: datagram counts");
    assert_eq!(a.sim_ms, b.sim_ms, "seed {seed}: simulated duration");
}
