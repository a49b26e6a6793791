//! What the simulated participants saw, recorded as it happens, for the checks at the end
//! and for comparing two runs of one seed.
//!
//! The simulation runs on one thread, so the clients share the ledger through `Rc<RefCell>`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use hotline_proto::frame::RejectCode;
use hotline_proto::MessageId;

/// Simulated milliseconds since the simulation started.
pub fn sim_ms() -> u64 {
    turmoil::sim_elapsed()
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// One message's story, by the sender's sequence number.
#[derive(Clone, Debug, Default)]
pub struct MessageRecord {
    /// Its id.
    pub id: Option<MessageId>,
    /// When the sender composed it (simulated ms).
    pub composed_at_ms: u64,
    /// How far the sender's clock was off when it composed it (ms).
    pub clock_offset_ms: i64,
    /// `Submit` frames written for it, over all connections.
    pub submits: u32,
    /// `Accepted` answers the sender read (a resubmission is answered again).
    pub accepted: u32,
    /// When the sender first read `Accepted` (simulated ms).
    pub accepted_at_ms: Option<u64>,
    /// A final refusal the sender read.
    pub rejected: Option<RejectCode>,
    /// Retryable refusals the sender read.
    pub retryable_refusals: u32,
    /// Times the relay delivered it to the recipient (duplicates included).
    pub deliveries: u32,
    /// Times the recipient's store took it as new, i.e. showed it to the operator.
    pub shown: u32,
    /// Whether the recipient's delivered receipt reached the sender.
    pub receipt_at_sender: bool,
}

/// Everything both clients saw.
#[derive(Debug, Default)]
pub struct Ledger {
    /// Messages the plan has the sender compose.
    pub planned: usize,
    /// By sequence number.
    pub messages: BTreeMap<u64, MessageRecord>,
    /// Sequence number by id.
    pub seq_of: BTreeMap<MessageId, u64>,
    /// Delivered messages whose id the sender never composed (must stay empty).
    pub unknown_deliveries: BTreeSet<MessageId>,
    /// Sessions the sender authenticated.
    pub sender_sessions: u32,
    /// Sessions the recipient authenticated.
    pub recipient_sessions: u32,
    /// Outbox rows the sender read to find what to write next: each message once a
    /// session it is written in, and those in flight after one refused for a reason that
    /// passes again once its pause is over.
    pub outbox_rows_read: u64,
    /// Failed connection attempts (sender, recipient).
    pub failed_connects: (u32, u32),
    /// Every event, with its simulated time: two runs of one seed must give the same trace.
    pub trace: Vec<String>,
    /// When the run finished (simulated ms).
    pub finished_at_ms: Option<u64>,
}

impl Ledger {
    /// Records an event in the trace.
    pub fn event(&mut self, what: impl AsRef<str>) {
        let line = format!("{:>7} {}", sim_ms(), what.as_ref());
        self.trace.push(line);
    }

    /// The sequence number of `id`, if the sender composed it.
    pub fn seq(&self, id: &MessageId) -> Option<u64> {
        self.seq_of.get(id).copied()
    }

    /// The record of `id`.
    pub fn record(&mut self, id: &MessageId) -> Option<&mut MessageRecord> {
        let seq = self.seq(id)?;
        self.messages.get_mut(&seq)
    }

    /// Everything the plan asks for has happened: every message composed and finally
    /// answered, every accepted one shown to the recipient's operator, and its delivered
    /// receipt back at the sender.
    pub fn settled(&self) -> bool {
        self.messages.len() == self.planned
            && self.messages.values().all(|m| {
                if m.accepted > 0 {
                    m.shown > 0 && m.receipt_at_sender
                } else {
                    m.rejected.is_some()
                }
            })
    }

    /// The last `n` trace lines, for a failure message.
    pub fn tail(&self, n: usize) -> String {
        let mut out = String::new();
        for l in self.trace.iter().skip(self.trace.len().saturating_sub(n)) {
            let _ = writeln!(out, "  {l}");
        }
        out
    }
}
