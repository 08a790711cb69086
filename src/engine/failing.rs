//! Exchanges that keep failing with a member gossip hears alive: this
//! node's state stops converging with it while it looks healthy (a firewall
//! that passes UDP but not TCP, a path that drops large segments). Said in
//! a warning after a few failures in a row, then ever more rarely, and in a
//! gauge an alert can watch.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use super::delta::lock;
use super::sync::Exchange;
use super::Engine;

/// Failed exchanges in a row with one peer before the first warning; the
/// next ones come at twice as many each time.
pub(super) const FIRST_WARNING: u32 = 3;
/// Peers whose failures are followed at most: others are counted once one
/// of these is forgotten.
const MAX_TRACKED: usize = 256;

/// Failures in a row, by the address this node dialled.
#[derive(Debug, Default)]
pub(super) struct Streaks {
    by_peer: BTreeMap<SocketAddr, u32>,
}

impl Streaks {
    /// Counts a failure; returns the streak when it calls for a warning.
    fn failed(&mut self, peer: SocketAddr) -> Option<u32> {
        if !self.by_peer.contains_key(&peer) && self.by_peer.len() >= MAX_TRACKED {
            return None;
        }
        let n = self.by_peer.entry(peer).or_insert(0);
        *n = n.saturating_add(1);
        let n = *n;
        (n.is_multiple_of(FIRST_WARNING) && (n / FIRST_WARNING).is_power_of_two()).then_some(n)
    }

    fn forget(&mut self, peer: SocketAddr) {
        self.by_peer.remove(&peer);
    }

    /// Peers failing at least [`FIRST_WARNING`] times in a row.
    fn failing(&self) -> usize {
        self.by_peer.values().filter(|&&n| n >= FIRST_WARNING).count()
    }
}

impl Engine {
    /// Follows how an exchange this node opened ended.
    pub(super) fn note_exchange_outcome(&mut self, exchange: Option<&Exchange>, ok: bool) {
        self.note_join_outcome(exchange, ok);
        if let Some(addr) = exchange.filter(|x| ok && x.initiator && x.join).and_then(|x| x.peer) {
            if self.seeds.contains(&addr) && !self.seeds_answered.contains(&addr) {
                self.seeds_answered.push(addr);
            }
        }
        let Some(peer) = exchange.filter(|x| x.initiator).and_then(|x| x.peer) else {
            return;
        };
        let warn_at = if ok {
            self.failing.forget(peer);
            None
        } else {
            match self.alive_member_at(peer) {
                Some(name) => self.failing.failed(peer).map(|n| (name, n)),
                // Down, suspect or unknown there: gossip tells of it already.
                None => {
                    self.failing.forget(peer);
                    None
                }
            }
        };
        lock(&self.shared).counters.members_failing_exchanges = self.failing.failing() as u64;
        if let Some((name, n)) = warn_at {
            tracing::warn!(
                member = %name,
                %peer,
                failures = n,
                "state exchanges with {name} at {peer} failed {n} times in a row while gossip hears it alive: \
                 only small writes reach it now (by gossip), and the two repair no difference; check that TCP \
                 to {peer} passes (a firewall that lets UDP through) and that large segments do (path MTU)"
            );
        }
    }

    /// Forgets the failures of a member that went down.
    pub(super) fn forget_failures(&mut self, peer: SocketAddr) {
        self.failing.forget(peer);
        lock(&self.shared).counters.members_failing_exchanges = self.failing.failing() as u64;
    }

    /// The name of the member gossip holds alive (not suspect) at `addr`.
    fn alive_member_at(&self, addr: SocketAddr) -> Option<String> {
        self.swim
            .iter_membership_state()
            .find(|m| m.id().addr == addr && m.state() == foca::State::Alive)
            .map(|m| m.id().name.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warns_at_three_then_ever_more_rarely() {
        let mut s = Streaks::default();
        let peer: SocketAddr = "127.0.0.1:7946".parse().unwrap();
        let warned: Vec<u32> = (1..=50).filter_map(|_| s.failed(peer)).collect();
        assert_eq!(warned, vec![3, 6, 12, 24, 48]);
        assert_eq!(s.failing(), 1);
        s.forget(peer);
        assert_eq!(s.failing(), 0);
        assert_eq!(s.failed(peer), None);
    }

    #[test]
    fn follows_a_bounded_number_of_peers() {
        let mut s = Streaks::default();
        for port in 0..(MAX_TRACKED as u16 + 10) {
            let peer = SocketAddr::from(([127, 0, 0, 1], port));
            for _ in 0..FIRST_WARNING {
                s.failed(peer);
            }
        }
        assert_eq!(s.failing(), MAX_TRACKED);
    }
}
