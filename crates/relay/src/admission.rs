//! Admission of connections before they authenticate.
//!
//! Anyone who can reach the relay's UDP port can complete a TLS handshake with it (nodes
//! prove who they are afterwards, with their participant key), and a connection that has
//! not authenticated is held until `handshake_timeout_ms`. Without a bound of their own,
//! such connections could take every slot of `connections_max` and keep nodes out. So the
//! relay counts the connections it has admitted and that have not yet authenticated
//! ("handshakes"):
//!
//! - at most `handshakes_max` in all, and at most `handshakes_per_ip_max` from one address
//!   (an IPv6 address counts by its /64, which one host usually holds whole); past either,
//!   a new connection is refused at once (QUIC `CONNECTION_REFUSED`, no handshake work);
//! - once half of `handshakes_max` are in progress, a connection whose source address is
//!   not yet proven is first asked to prove it (a QUIC Retry: stateless, one more round
//!   trip, which quinn clients answer on their own), so that spoofed source addresses
//!   cannot fill the count.
//!
//! A node's connection holds its place for the few milliseconds of its handshake and
//! authentication; authenticated sessions count only against `connections_max`.
//!
//! [`Gate`] is the decision, without I/O; [`Admission`] shares it between the accept loop
//! and the sessions, and [`Ticket`] gives a place back when dropped.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};

use crate::metrics::Metrics;

/// Why a new connection does not go on to its handshake now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NotNow {
    /// Ask the client to prove its address first (QUIC Retry).
    Validate,
    /// Refuse: too many handshakes in progress from this address.
    Address,
    /// Refuse: too many handshakes in progress in all.
    Total,
}

/// The handshakes in progress, and the limits on them. Pure state.
#[derive(Debug)]
pub(crate) struct Gate {
    max: usize,
    /// 0: no limit per address.
    per_ip_max: usize,
    pending: usize,
    by_ip: HashMap<IpAddr, usize>,
}

impl Gate {
    pub(crate) fn new(max: usize, per_ip_max: usize) -> Self {
        Self {
            max,
            per_ip_max,
            pending: 0,
            by_ip: HashMap::new(),
        }
    }

    /// Decides about a connection from `ip`; `validated`: its address is proven (or cannot
    /// be asked again). An admitted connection is counted until [`Gate::release`].
    pub(crate) fn decide(&mut self, ip: IpAddr, validated: bool) -> Result<(), NotNow> {
        if !validated && self.pending >= self.max / 2 {
            return Err(NotNow::Validate);
        }
        if self.pending >= self.max {
            return Err(NotNow::Total);
        }
        let n = self.by_ip.entry(key(ip)).or_insert(0);
        if self.per_ip_max > 0 && *n >= self.per_ip_max {
            return Err(NotNow::Address);
        }
        *n += 1;
        self.pending += 1;
        Ok(())
    }

    /// An admitted connection from `ip` has authenticated, or ended.
    pub(crate) fn release(&mut self, ip: IpAddr) {
        let ip = key(ip);
        if let Some(n) = self.by_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.by_ip.remove(&ip);
            }
            self.pending -= 1;
        }
    }

    pub(crate) fn pending(&self) -> usize {
        self.pending
    }
}

/// The address a connection counts under: IPv4 as it is (also when mapped into IPv6), IPv6
/// by its /64.
fn key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::from([s[0], s[1], s[2], s[3], 0, 0, 0, 0])
        }
        v4 => v4,
    }
}

/// The gate, shared by the accept loop and the sessions.
pub(crate) struct Admission {
    gate: Mutex<Gate>,
    metrics: Arc<Metrics>,
}

impl Admission {
    pub(crate) fn new(max: usize, per_ip_max: usize, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            gate: Mutex::new(Gate::new(max, per_ip_max)),
            metrics,
        })
    }

    /// [`Gate::decide`]; an admitted connection gets a [`Ticket`] that holds its place.
    pub(crate) fn decide(self: &Arc<Self>, ip: IpAddr, validated: bool) -> Result<Ticket, NotNow> {
        let mut gate = self.gate.lock().unwrap_or_else(|p| p.into_inner());
        gate.decide(ip, validated)?;
        self.metrics
            .handshakes_pending
            .store(gate.pending() as u64, Relaxed);
        Ok(Ticket {
            admission: self.clone(),
            ip,
        })
    }
}

/// An admitted connection's place among the handshakes; given back when dropped (the
/// session drops it once authenticated, or when it ends).
pub(crate) struct Ticket {
    admission: Arc<Admission>,
    ip: IpAddr,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let a = &self.admission;
        let mut gate = a.gate.lock().unwrap_or_else(|p| p.into_inner());
        gate.release(self.ip);
        a.metrics
            .handshakes_pending
            .store(gate.pending() as u64, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    #[test]
    fn an_address_past_its_share_is_refused_and_admitted_again_when_one_ends() {
        let mut g = Gate::new(100, 2);
        let a = ip("192.0.2.1");
        assert_eq!(g.decide(a, true), Ok(()));
        assert_eq!(g.decide(a, true), Ok(()));
        assert_eq!(g.decide(a, true), Err(NotNow::Address));
        // Another address is not affected; the IPv4-mapped form is the same address.
        assert_eq!(g.decide(ip("192.0.2.2"), true), Ok(()));
        assert_eq!(g.decide(ip("::ffff:192.0.2.1"), true), Err(NotNow::Address));
        g.release(a);
        assert_eq!(g.decide(ip("::ffff:192.0.2.1"), true), Ok(()));
        assert_eq!(g.pending(), 3);
    }

    #[test]
    fn an_ipv6_host_counts_by_its_64() {
        let mut g = Gate::new(100, 1);
        assert_eq!(g.decide(ip("2001:db8:1:2::1"), true), Ok(()));
        assert_eq!(
            g.decide(ip("2001:db8:1:2:ffff::9"), true),
            Err(NotNow::Address)
        );
        assert_eq!(g.decide(ip("2001:db8:1:3::1"), true), Ok(()));
    }

    #[test]
    fn past_half_the_total_unproven_addresses_are_asked_to_prove_them_and_past_it_all_are_refused()
    {
        let mut g = Gate::new(4, 0);
        for n in 1..=2 {
            assert_eq!(g.decide(ip(&format!("192.0.2.{n}")), false), Ok(()));
        }
        assert_eq!(g.decide(ip("192.0.2.3"), false), Err(NotNow::Validate));
        assert_eq!(g.pending(), 2, "a Retry holds no place");
        for n in 3..=4 {
            assert_eq!(g.decide(ip(&format!("192.0.2.{n}")), true), Ok(()));
        }
        assert_eq!(g.decide(ip("192.0.2.5"), true), Err(NotNow::Total));
        g.release(ip("192.0.2.1"));
        assert_eq!(g.decide(ip("192.0.2.5"), true), Ok(()));
    }

    proptest::proptest! {
        /// Whatever connections arrive and end, from whichever addresses, proven or not:
        /// the count is the admitted connections not yet released, never more than the
        /// limits allow, and a refusal or a Retry is given only at a limit.
        #[test]
        fn the_count_is_what_was_admitted_and_never_past_a_limit(
            max in 1usize..8,
            per_ip_max in 0usize..4,
            steps in proptest::collection::vec((0u8..4, proptest::bool::ANY, proptest::bool::ANY), 0..64),
        ) {
            let mut g = Gate::new(max, per_ip_max);
            let mut held: Vec<IpAddr> = Vec::new();
            for (host, validated, arrive) in steps {
                let ip = IpAddr::from([192, 0, 2, host]);
                if arrive || held.is_empty() {
                    let from_ip = held.iter().filter(|h| **h == ip).count();
                    match g.decide(ip, validated) {
                        Ok(()) => held.push(ip),
                        Err(NotNow::Validate) => {
                            proptest::prop_assert!(!validated && held.len() >= max / 2)
                        }
                        Err(NotNow::Total) => proptest::prop_assert_eq!(held.len(), max),
                        Err(NotNow::Address) => {
                            proptest::prop_assert!(per_ip_max > 0 && from_ip == per_ip_max)
                        }
                    }
                } else {
                    let gone = held.swap_remove(usize::from(host) % held.len());
                    g.release(gone);
                }
                proptest::prop_assert_eq!(g.pending(), held.len());
                proptest::prop_assert!(held.len() <= max);
                if per_ip_max > 0 {
                    proptest::prop_assert!(held.iter().all(|h| held.iter().filter(|x| *x == h).count() <= per_ip_max));
                }
            }
        }
    }

    #[test]
    fn releasing_an_address_never_admitted_changes_nothing() {
        let mut g = Gate::new(4, 0);
        assert_eq!(g.decide(ip("192.0.2.1"), true), Ok(()));
        g.release(ip("192.0.2.9"));
        assert_eq!(g.pending(), 1);
    }
}
