//! Warnings that an outsider could cause at any rate are logged at most once per interval,
//! with the count since the last one: the relay's refusals and failed logins, the node's
//! local API at its connection limit.

use std::time::{Duration, Instant};

/// Counts events and says when to log them.
#[derive(Debug)]
pub struct Throttle {
    every: Duration,
    count: u64,
    last: Option<Instant>,
}

impl Throttle {
    /// One line at most every `every`.
    pub const fn new(every: Duration) -> Self {
        Self {
            every,
            count: 0,
            last: None,
        }
    }

    /// Counts `n` more events at `now`. When a log line is due (the first time, then at
    /// most once every interval), returns how many to report: those since the last line.
    pub fn tick(&mut self, n: u64, now: Instant) -> Option<u64> {
        self.count += n;
        if self
            .last
            .is_some_and(|t| now.saturating_duration_since(t) < self.every)
        {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.count))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_is_logged_then_one_line_an_interval_with_the_count_between() {
        let mut t = Throttle::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(t.tick(1, t0), Some(1));
        assert_eq!(t.tick(3, t0 + Duration::from_secs(1)), None);
        assert_eq!(t.tick(2, t0 + Duration::from_secs(9)), None);
        assert_eq!(t.tick(1, t0 + Duration::from_secs(10)), Some(6));
        assert_eq!(t.tick(1, t0 + Duration::from_secs(11)), None);
    }
}
