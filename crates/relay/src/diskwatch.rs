//! Tells the operator when the store's disk stops answering.
//!
//! A hung device or a lost network volume leaves the store writer inside a commit, or the
//! sync thread inside an `fdatasync`, for as long as it lasts: nothing is accepted or stored
//! meanwhile, and the commit and sync histograms, which see an operation once it has ended,
//! show nothing. [`crate::metrics::DiskWatch`] records since when the running commit and sync
//! have run; `/health` answers `store_stalled` from it, and this task logs a warning when a
//! stall passes [`crate::limits::STORE_STALL_MS`], again every
//! [`crate::limits::STORE_STALL_REPEAT_MS`] while it lasts, and once more when the store
//! answers again. It also covers a shutdown that waits for the writer's last commit.
//!
//! The decisions are [`StallLog`]'s, a pure state machine; the task only feeds it the clock.

use std::sync::Weak;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::metrics::Metrics;

/// What the log should say after an observation.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Note {
    /// A stall has passed the threshold: the oldest running operation began `busy` ago.
    Began { busy: Duration },
    /// The stall goes on.
    Still { busy: Duration },
    /// The store answers again after a stall first noted `lasted` ago (at least).
    Ended { lasted: Duration },
}

/// Whether a stall is being reported, and when it was last said.
#[derive(Debug)]
pub(crate) struct StallLog {
    stall_after: Duration,
    repeat: Duration,
    /// When the stall began (now less the busy time at its first note), and the last note.
    stalled: Option<(Instant, Instant)>,
}

impl StallLog {
    pub(crate) fn new(stall_after: Duration, repeat: Duration) -> Self {
        Self {
            stall_after,
            repeat,
            stalled: None,
        }
    }

    /// The store has been busy for `busy` (zero when idle) at `now`.
    pub(crate) fn observe(&mut self, busy: Duration, now: Instant) -> Option<Note> {
        let stalled = busy >= self.stall_after;
        match (&mut self.stalled, stalled) {
            (None, true) => {
                self.stalled = Some((now.checked_sub(busy).unwrap_or(now), now));
                Some(Note::Began { busy })
            }
            (Some((_, said)), true) if now.duration_since(*said) >= self.repeat => {
                *said = now;
                Some(Note::Still { busy })
            }
            (Some((since, _)), false) => {
                let lasted = now.duration_since(*since);
                self.stalled = None;
                Some(Note::Ended { lasted })
            }
            _ => None,
        }
    }
}

/// Watches `metrics.disk` until nothing holds the metrics any more (the writer has ended):
/// every fifth of `stall_after`, at most every 2 s.
pub(crate) async fn run(metrics: Weak<Metrics>, stall_after: Duration) {
    let repeat = Duration::from_millis(crate::limits::STORE_STALL_REPEAT_MS);
    let mut log = StallLog::new(stall_after, repeat);
    let mut tick = tokio::time::interval(
        (stall_after / 5).clamp(Duration::from_millis(10), Duration::from_secs(2)),
    );
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(m) = metrics.upgrade() else { return };
        let busy = m.disk.busy();
        drop(m);
        match log.observe(busy, Instant::now()) {
            Some(Note::Began { busy }) => warn!(
                busy_s = busy.as_secs(),
                "the store has been committing or syncing for {}s: its disk is not answering; nothing is accepted or stored until it does (/health answers store_stalled)",
                busy.as_secs()
            ),
            Some(Note::Still { busy }) => warn!(
                busy_s = busy.as_secs(),
                "the store's disk is still not answering after {}s",
                busy.as_secs()
            ),
            Some(Note::Ended { lasted }) => info!(
                stalled_s = lasted.as_secs(),
                "the store's disk answers again, after a stall of about {}s",
                lasted.as_secs()
            ),
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stall_is_noted_when_it_passes_the_threshold_repeated_and_its_end_noted_once() {
        let s = Duration::from_secs;
        let t0 = Instant::now();
        let at = |secs: u64| t0 + s(secs);
        let mut log = StallLog::new(s(10), s(60));
        // Busy, but not yet for long: nothing said.
        assert_eq!(log.observe(Duration::ZERO, at(0)), None);
        assert_eq!(log.observe(s(9), at(9)), None);
        assert_eq!(
            log.observe(s(10), at(10)),
            Some(Note::Began { busy: s(10) })
        );
        assert_eq!(log.observe(s(12), at(12)), None, "said once");
        assert_eq!(log.observe(s(69), at(69)), None);
        assert_eq!(
            log.observe(s(70), at(70)),
            Some(Note::Still { busy: s(70) })
        );
        assert_eq!(log.observe(s(100), at(100)), None);
        // Answered again: the stall began at t0 (10 s busy at 10 s).
        assert_eq!(
            log.observe(Duration::ZERO, at(101)),
            Some(Note::Ended { lasted: s(101) })
        );
        assert_eq!(log.observe(Duration::ZERO, at(102)), None, "ended once");
        // Short commits in a row never add up to a stall.
        for t in 103..200 {
            assert_eq!(log.observe(s(1), at(t)), None);
        }
        // A second stall is a new one.
        assert_eq!(
            log.observe(s(15), at(215)),
            Some(Note::Began { busy: s(15) })
        );
    }
}
