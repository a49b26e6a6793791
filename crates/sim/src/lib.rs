//! `hotline-sim`: deterministic network simulation of the relay and its participants.
//!
//! The real relay (`hotline_relay::Relay`, its real SQLite store in a temporary directory)
//! and two protocol-level participants built on the real node store run over a simulated
//! network ([turmoil]): partitions longer than the idle timeout, independent datagram loss
//! with latency jitter (reordering), a lost acknowledgement, a clock an hour off. Every
//! host runs on the simulation's one thread on paused virtual time, so an hour of network
//! time costs seconds.
//!
//! A seed fixes turmoil's generator (latency, and so ordering), quinn's generators (through
//! `EndpointConfig::rng_seed`), the datagram loss ([`socket::Loss`]) and the clients'
//! back-off jitter; packet sizes do not vary (Ed25519 everywhere: the relay's certificate
//! and every protocol signature are fixed-size). The relay's store writer runs on the relay
//! host's runtime (`Hosting::writer_on_runtime`), so a commit takes no simulated time. Two
//! runs of one seed give the same trace ([`ledger::Ledger::trace`]), which
//! `same_seed_same_run` checks. Not reproduced: the bytes themselves (TLS key shares and
//! message ids come from the operating system's generator; wall-clock timestamps in
//! messages), and anything that depends on real time outside the simulation.

#![warn(missing_docs)]

mod client;
pub mod fixture;
pub mod ledger;
pub mod run;
pub mod socket;

pub use run::{run, Fault, Outcome, Plan};

/// The seeds to run: `HOTLINE_SIM_SEED` alone if set, else `0..count`.
pub fn seeds(count: u64) -> Vec<u64> {
    match std::env::var("HOTLINE_SIM_SEED") {
        Ok(s) => match s.trim().parse() {
            Ok(seed) => vec![seed],
            Err(_) => panic!("HOTLINE_SIM_SEED={s:?} is not a number"),
        },
        Err(_) => (0..count).collect(),
    }
}
