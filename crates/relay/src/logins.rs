//! Each participant's budget of sessions: how often one authenticated participant may start
//! a session, checked right after its `Hello` is, before the session reads anything from
//! the store.
//!
//! A session costs the relay more than its handshake: a read of the participant's last
//! sequence number, a lookup of its queues, and a first page of its backlog written (up to
//! `FETCH_PAGE_BYTES`, 4 MiB), again at every new session, as a node that never receipts
//! keeps its backlog. A node with a valid key (compromised, or buggy) reconnecting in a
//! tight loop was bounded only by the handshake rate. Each participant has a token bucket
//! (a generic cell rate algorithm: the time at which its bucket would be full again): a
//! burst of `session_burst` sessions, one more every `session_refill_ms`. Past it the login
//! is refused with `LimitExceeded` and a detail saying when to try again; the participant's
//! live session, if any, is left alone (a refused login supersedes nothing).
//!
//! The reference node waits as long as such a refusal says (`hotline_proto::frame::
//! retry_in_text` writes it, `retry_in_ms_of` reads it back; 5 min at most), plus jitter, so
//! that a node refused once is let in at its next attempt. An honest node starts a session after a restart, a relay's restart, or
//! a link lost: a link lost within 10 s of being made is remade only after a pause that
//! doubles up to 10 s, one that lasted longer at once, so it starts at most about one every
//! 10 s for long, and the burst (30) takes a flurry of restarts or flaps.
//!
//! Refusals are logged at most once every [`LOG_EVERY`] per participant, with the count
//! since the last line; the metric `hotline_relay_connections_closed_total{code=
//! "LimitExceeded"}` counts each.
//!
//! Bounded: an entry is made only for a participant that has just authenticated, so one on
//! the roster; a roster lists at most `ROSTER_PARTICIPANTS_MAX` (256). Participants a
//! reloaded roster no longer lists keep their entry until the map reaches that size, when
//! every entry whose bucket is full again (so no different from a new one) and that has no
//! refusal left to log is dropped: what is left are participants that logged in within
//! the last `session_burst` × `session_refill_ms`, each on the roster then.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use hotline_proto::ParticipantId;

/// The time a budget is kept in: tokio's, so that on a simulation's paused clock a
/// session's budget refills with simulated time, as the node's back-off runs on it.
pub(crate) type Instant = tokio::time::Instant;

/// At most one line of refusals a participant this often, with the count since the last.
pub(crate) const LOG_EVERY: Duration = Duration::from_secs(10);

/// Entries kept before the full ones are dropped: the most participants a roster lists.
const ENTRIES_MAX: usize = hotline_proto::limits::ROSTER_PARTICIPANTS_MAX;

/// A login refused for its participant's budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refused {
    /// How long until the participant may start a session again.
    pub(crate) retry_in: Duration,
    /// `Some(n)` when a log line is due: the refusals of this participant since the last
    /// line, this one included. `None`: counted, for the next line.
    pub(crate) log: Option<u64>,
}

/// One participant's bucket.
#[derive(Debug)]
struct Bucket {
    /// When the bucket is full again: every session moves it on by one refill (from now,
    /// if it was already full). A login is allowed if that leaves it at most a burst's worth
    /// of refills ahead of now.
    full_at: Instant,
    /// Refusals not yet logged.
    unlogged: u64,
    /// When the last line of refusals was logged.
    logged_at: Option<Instant>,
}

impl Bucket {
    fn new(now: Instant) -> Self {
        Self {
            full_at: now,
            unlogged: 0,
            logged_at: None,
        }
    }

    /// Takes one session at `now`, or says how long until one is due.
    fn take(&mut self, burst: u32, refill: Duration, now: Instant) -> Result<(), Duration> {
        let window = refill.saturating_mul(burst);
        let next = self.full_at.max(now) + refill;
        let ahead = next.saturating_duration_since(now);
        if ahead <= window {
            self.full_at = next;
            Ok(())
        } else {
            Err(ahead - window)
        }
    }

    /// Counts a refusal at `now`; the count to log if a line is due.
    fn refused(&mut self, now: Instant) -> Option<u64> {
        self.unlogged += 1;
        if self
            .logged_at
            .is_some_and(|t| now.saturating_duration_since(t) < LOG_EVERY)
        {
            return None;
        }
        self.logged_at = Some(now);
        Some(std::mem::take(&mut self.unlogged))
    }

    /// Whether the bucket is as a new one would be: full, nothing left to log.
    fn idle(&self, now: Instant) -> bool {
        self.full_at <= now && self.unlogged == 0
    }
}

/// The budgets of every participant's sessions.
#[derive(Debug)]
pub(crate) struct Logins {
    burst: u32,
    refill: Duration,
    buckets: Mutex<HashMap<ParticipantId, Bucket>>,
    /// Tests only ([`crate::Hosting::login_clock`]): the clock [`Logins::now`] reads
    /// instead of the real one.
    clock: Option<crate::LoginClock>,
}

impl Logins {
    /// Budgets of `burst` sessions at once (at least 1), one more every `refill`.
    pub(crate) fn new(burst: u32, refill: Duration) -> Self {
        Self {
            burst: burst.max(1),
            refill,
            buckets: Mutex::new(HashMap::new()),
            clock: None,
        }
    }

    /// The same budgets on a test's clock, if one is given ([`crate::Hosting::login_clock`]).
    pub(crate) fn with_clock(self, clock: Option<crate::LoginClock>) -> Self {
        Self { clock, ..self }
    }

    /// The time to take a session at: the real time, or a test's clock.
    pub(crate) fn now(&self) -> Instant {
        match &self.clock {
            None => Instant::now(),
            Some(clock) => clock.now(),
        }
    }

    /// Takes one session from `who`'s budget at `now`, or refuses it.
    pub(crate) fn take(&self, who: &ParticipantId, now: Instant) -> Result<(), Refused> {
        // Nothing panics while holding this lock; recover the map if something did.
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= ENTRIES_MAX && !buckets.contains_key(who) {
            buckets.retain(|_, b| !b.idle(now));
        }
        let bucket = buckets
            .entry(who.clone())
            .or_insert_with(|| Bucket::new(now));
        bucket
            .take(self.burst, self.refill, now)
            .map_err(|retry_in| Refused {
                retry_in,
                log: bucket.refused(now),
            })
    }

    /// Participants with a budget held (tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.buckets.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn pid(s: &str) -> ParticipantId {
        ParticipantId::new(s).unwrap()
    }

    const S: Duration = Duration::from_secs(1);

    /// A burst of sessions at once, then one every refill: the refusal says how long until
    /// the next, and that long later (not a moment before) one is allowed.
    #[test]
    fn a_burst_then_one_a_refill_and_the_refusal_says_when() {
        let logins = Logins::new(3, 5 * S);
        let (kaz, t0) = (pid("KAZ"), Instant::now());
        for i in 0..3 {
            assert_eq!(
                logins.take(&kaz, t0 + i * 10 * Duration::from_millis(1)),
                Ok(())
            );
        }
        let at = t0 + S;
        let r = logins.take(&kaz, at).unwrap_err();
        assert_eq!(r.retry_in, 4 * S, "one refill after the first session");
        assert!(logins
            .take(&kaz, at + r.retry_in - Duration::from_millis(1))
            .is_err());
        assert_eq!(logins.take(&kaz, at + r.retry_in), Ok(()));
        // Empty again: the next is a whole refill away.
        let r = logins.take(&kaz, at + r.retry_in).unwrap_err();
        assert_eq!(r.retry_in, 5 * S);
    }

    /// A steady pace at the refill rate is never refused; a faster one is once the burst is
    /// spent; and a budget left alone for a burst's worth of refills is full again.
    #[test]
    fn the_refill_rate_is_sustained_and_the_burst_comes_back() {
        let logins = Logins::new(2, 5 * S);
        let (kaz, t0) = (pid("KAZ"), Instant::now());
        for i in 0..100 {
            assert_eq!(logins.take(&kaz, t0 + i * 5 * S), Ok(()), "session {i}");
        }
        let t1 = t0 + 1000 * S;
        let paced: Vec<bool> = (0..6)
            .map(|i| logins.take(&kaz, t1 + i * 2 * S).is_ok())
            .collect();
        // At one every 2 s against one every 5 s with 2 in hand: the burst, then every
        // other one or so.
        assert_eq!(paced, [true, true, false, true, false, true]);
        let t2 = t1 + 100 * S;
        assert_eq!(logins.take(&kaz, t2), Ok(()));
        assert_eq!(logins.take(&kaz, t2), Ok(()));
        assert!(logins.take(&kaz, t2).is_err());
    }

    /// Refusals are logged once per participant per `LOG_EVERY`, the line counting those
    /// since the last; another participant's budget and log are its own.
    #[test]
    fn refusals_are_logged_once_a_window_with_the_count_and_others_are_untouched() {
        let logins = Logins::new(1, 60 * S);
        let (kaz, kgz, t0) = (pid("KAZ"), pid("KGZ"), Instant::now());
        assert_eq!(logins.take(&kaz, t0), Ok(()));
        let logs: Vec<Option<u64>> = (0..25)
            .map(|i| logins.take(&kaz, t0 + i * S / 2).unwrap_err().log)
            .collect();
        // The first at once, then the 20 of the next 10 s at the first refusal past them.
        assert_eq!(logs[0], Some(1));
        assert!(logs[1..20].iter().all(Option::is_none), "{logs:?}");
        assert_eq!(logs[20], Some(20));
        assert!(logs[21..].iter().all(Option::is_none), "{logs:?}");
        // KGZ has its whole budget, and its first refusal is logged at once.
        assert_eq!(logins.take(&kgz, t0 + 12 * S), Ok(()));
        assert_eq!(logins.take(&kgz, t0 + 12 * S).unwrap_err().log, Some(1));
    }

    /// The map holds at most a roster's worth of participants: past it, budgets that are
    /// full again (as a new one would be) are dropped; those still in use are kept.
    #[test]
    fn the_map_is_bounded_by_the_roster_size() {
        let logins = Logins::new(2, 5 * S);
        let t0 = Instant::now();
        let busy = pid("BUSY");
        assert_eq!(logins.take(&busy, t0), Ok(()));
        assert_eq!(logins.take(&busy, t0), Ok(()));
        for i in 1..ENTRIES_MAX {
            assert_eq!(logins.take(&pid(&format!("P{i}")), t0), Ok(()));
        }
        assert_eq!(logins.len(), ENTRIES_MAX);
        // 6 s on, every budget but BUSY's (two sessions, 10 s to refill) is full again.
        let later = t0 + 6 * S;
        assert_eq!(logins.take(&pid("NEW"), later), Ok(()));
        assert_eq!(logins.len(), 2, "BUSY's and NEW's");
        assert!(logins.take(&busy, later).is_ok());
        assert!(logins.take(&busy, later).is_err(), "BUSY's budget was kept");
        // Rosters replaced one participant at a time, each of its budgets full again before
        // the next logs in: the map stays within a roster's size.
        for i in 0..10 * ENTRIES_MAX as u32 {
            let _ = logins.take(&pid(&format!("Q{i}")), t0 + 100 * S + i * 6 * S);
            assert!(logins.len() <= ENTRIES_MAX, "{i}: {}", logins.len());
        }
    }

    /// A test's clock (`Hosting::login_clock`) moves the budget on as far as it is
    /// advanced, at once; without one the budget reads the real clock.
    #[test]
    fn a_test_clock_moves_the_budget_on() {
        let kaz = pid("KAZ");
        let real = Logins::new(1, 60 * S);
        assert_eq!(real.take(&kaz, real.now()), Ok(()));
        assert!(real.take(&kaz, real.now()).is_err());

        let clock = crate::LoginClock::default();
        let logins = Logins::new(1, 60 * S).with_clock(Some(clock.clone()));
        assert_eq!(logins.take(&kaz, logins.now()), Ok(()));
        let r = logins.take(&kaz, logins.now()).unwrap_err();
        assert!(r.retry_in > 59 * S, "{r:?}");
        let before = Instant::now();
        clock.advance(r.retry_in);
        assert!(logins.now() >= before + r.retry_in);
        assert_eq!(logins.take(&kaz, logins.now()), Ok(()));
        assert!(
            logins.take(&kaz, logins.now()).is_err(),
            "one refill, one session"
        );
    }
}
