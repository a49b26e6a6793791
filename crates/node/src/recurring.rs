//! Logging for a check that runs again and again (the node's deadline and paging ticks):
//! a store that cannot be written, as on a full disk, would otherwise log the same error
//! every tick.

use tracing::{error, info};

/// A check that runs again and again: its first failure is logged as an error, the repeats
/// of a failure at debug level, and its recovery once.
pub(crate) struct Recurring {
    what: &'static str,
    failures: u64,
}

impl Recurring {
    pub(crate) fn new(what: &'static str) -> Self {
        Self { what, failures: 0 }
    }

    /// Logs a failure; true if it was the first of a run (logged as an error).
    pub(crate) fn failed(&mut self, e: &dyn std::fmt::Display) -> bool {
        self.failures += 1;
        let first = self.failures == 1;
        if first {
            error!(error = %e, check = self.what, "check failed; repeats are logged at debug level until it works again");
        } else {
            tracing::debug!(error = %e, check = self.what, failures = self.failures, "check failed again");
        }
        first
    }

    /// What a run of the check returned, logged as above; on a failure, nothing (the
    /// default) to act on.
    pub(crate) fn take<T: Default, E: std::fmt::Display>(&mut self, r: Result<T, E>) -> T {
        match r {
            Ok(v) => {
                self.succeeded();
                v
            }
            Err(e) => {
                self.failed(&e);
                T::default()
            }
        }
    }

    /// Records a success; true if it ended a run of failures (logged).
    pub(crate) fn succeeded(&mut self) -> bool {
        let recovered = self.failures > 0;
        if recovered {
            info!(
                check = self.what,
                failures = self.failures,
                "check works again"
            );
            self.failures = 0;
        }
        recovered
    }
}

#[cfg(test)]
mod tests {
    use super::Recurring;

    #[test]
    fn a_run_of_failures_is_an_error_once_and_its_end_is_told() {
        let mut c = Recurring::new("deadline check");
        assert!(!c.succeeded(), "nothing to recover from");
        assert!(c.failed(&"disk full"), "the first failure is an error");
        assert!(!c.failed(&"disk full"), "a repeat is not");
        assert!(!c.failed(&"disk full"));
        assert!(c.succeeded(), "the end of the run is told");
        assert!(!c.succeeded());
        assert!(c.failed(&"disk full"), "a new run is an error again");
    }

    #[test]
    fn take_gives_the_value_or_nothing_to_act_on() {
        let mut c = Recurring::new("paging check");
        assert_eq!(c.take::<Vec<u8>, _>(Err("disk full")), Vec::<u8>::new());
        assert_eq!(c.take::<_, String>(Ok(vec![1u8])), vec![1]);
        assert!(!c.succeeded(), "the Ok above ended the run");
    }
}
