//! Two nodes under one name (a copied configuration, a second process
//! started by mistake). SWIM keeps one identity per name, the one with the
//! newer generation, so the two displace each other. If each answered the
//! other's claim with a still newer generation, the name would flip between
//! them many times a second for as long as both run. Instead the older one
//! keeps out: it stops renewing, writes nothing under the name and checks
//! through its seeds, at the join retry pace, whether the holder is still
//! up; once the holder is reported down or gone, it takes the name back with
//! a generation newer than the holder's.
//!
//! A claim at this node's own address is an earlier life of this node (a
//! restart whose clock went back), and a claim reported down is a node that
//! went away: both are answered at once, as before.

use std::net::SocketAddr;

use super::identity::NodeId;

/// How long one sighting of a live holder keeps this node out. Longer than
/// the longest gap between two join attempts (30 s) plus the time SWIM takes
/// to find this node's old peers unresponsive, so a holder still up is seen
/// again before this runs out.
pub const KEEP_OUT_MS: u64 = 60_000;

/// Join attempts while kept out are at most this far apart, so the name is
/// taken back soon after its holder goes.
pub const KEEP_OUT_JOIN_RETRY_MS: u64 = 10_000;

/// After a renewal, "you are down" notices are dropped for this long. A
/// renewal that does not take (the cluster holds a newer identity of this
/// name, which such notices never name) would otherwise be followed by
/// another at once, one a round trip, until this node's generation passed
/// the other's. The exchange asked for after each renewal names the
/// holder, and this node then keeps out.
pub const RENEW_QUIET_MS: u64 = 1_000;

/// How an identity was heard of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heard {
    /// It sent what carried it itself (a packet's sender, an exchange's
    /// side): it is up now.
    Speaking,
    /// A peer lists it as alive or suspect.
    Listed,
    /// A peer lists it as down.
    Down,
}

/// A claim on our name: an identity that would displace ours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The claiming identity.
    pub id: NodeId,
    /// Whether it was last heard of as down.
    pub down: bool,
}

/// What the packet screen learnt about our name, for the engine to act on.
#[derive(Debug, Default)]
pub struct NameClaims {
    /// Identities that would displace ours, not yet handled.
    pub winning: Vec<Claim>,
    /// Identities under our name at another address that lose to ours and
    /// spoke themselves (a second node started with an older generation),
    /// not yet reported. Ones only listed by peers are left out: after a
    /// restart at a new address, peers still list this node's earlier life.
    pub losing: Vec<NodeId>,
    /// Until then (engine clock, ms) a live node at another address holds
    /// our name and this node keeps out.
    pub keep_out_until_ms: u64,
    /// Until then (engine clock, ms) a fresh renewal is given time to take.
    pub quiet_until_ms: u64,
}

/// At most this many claims wait to be handled.
const MAX_PENDING: usize = 64;

impl NameClaims {
    /// Notes `id`, an identity under our name other than `own`; true when it
    /// would displace `own` (the packet carrying it is then refused).
    pub fn note(&mut self, id: &NodeId, own: &NodeId, heard: Heard) -> bool {
        if foca::Identity::win_addr_conflict(id, own) {
            let down = heard == Heard::Down;
            let full = self.winning.len() >= MAX_PENDING;
            match self.winning.iter_mut().find(|c| c.id == *id) {
                Some(c) => c.down = down,
                None if !full => self.winning.push(Claim {
                    id: id.clone(),
                    down,
                }),
                None => {}
            }
            return true;
        }
        if heard == Heard::Speaking
            && id.addr != own.addr
            && !self.losing.contains(id)
            && self.losing.len() < MAX_PENDING
        {
            self.losing.push(id.clone());
        }
        false
    }

    /// Whether this node keeps out at `now_ms`.
    pub fn keeping_out(&self, now_ms: u64) -> bool {
        now_ms < self.keep_out_until_ms
    }

    /// Whether a "you are down" notice is dropped at `now_ms`: while this
    /// node keeps out, or soon after a renewal.
    pub fn deaf_to_down(&self, now_ms: u64) -> bool {
        self.keeping_out(now_ms) || now_ms < self.quiet_until_ms
    }
}

/// What to do about the claims of one round.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// Nothing.
    None,
    /// Keep out: a live node at `addr` holds the name.
    KeepOut {
        /// The holder's address.
        addr: SocketAddr,
    },
    /// Take a generation newer than `newest`.
    Renew {
        /// The newest claim's generation.
        newest: u64,
    },
}

/// Decides about `claims` (this round's) for a node that is `own` now.
pub fn answer(claims: &[Claim], own: &NodeId) -> Answer {
    let holder = claims
        .iter()
        .filter(|c| !c.down && c.id.addr != own.addr)
        .max_by_key(|c| (c.id.generation, c.id.addr));
    if let Some(holder) = holder {
        return Answer::KeepOut {
            addr: holder.id.addr,
        };
    }
    match claims.iter().map(|c| c.id.generation).max() {
        Some(newest) => Answer::Renew { newest },
        None => Answer::None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(port: u16, generation: u64) -> NodeId {
        NodeId::new("n", ([127, 0, 0, 1], port).into(), generation)
    }

    #[test]
    fn a_live_holder_elsewhere_is_left_alone_and_a_gone_one_is_answered() {
        let own = id(7000, 100);
        let mut claims = NameClaims::default();
        assert!(claims.note(&id(7001, 200), &own, Heard::Listed));
        assert_eq!(
            answer(&claims.winning, &own),
            Answer::KeepOut {
                addr: ([127, 0, 0, 1], 7001).into()
            }
        );
        // The same holder reported down later: the latest word counts.
        assert!(claims.note(&id(7001, 200), &own, Heard::Down));
        assert_eq!(
            answer(&claims.winning, &own),
            Answer::Renew { newest: 200 }
        );
    }

    #[test]
    fn an_earlier_life_at_our_own_address_is_answered_at_once() {
        let own = id(7000, 100);
        let mut claims = NameClaims::default();
        assert!(claims.note(&id(7000, 300), &own, Heard::Speaking));
        assert_eq!(
            answer(&claims.winning, &own),
            Answer::Renew { newest: 300 }
        );
    }

    #[test]
    fn only_a_losing_identity_that_speaks_is_kept_for_reporting() {
        let own = id(7000, 100);
        let mut claims = NameClaims::default();
        assert!(!claims.note(&id(7001, 50), &own, Heard::Listed));
        assert!(!claims.note(&id(7000, 50), &own, Heard::Speaking));
        assert!(claims.losing.is_empty(), "an earlier life, only listed");
        assert!(!claims.note(&id(7002, 60), &own, Heard::Speaking));
        assert!(!claims.note(&id(7002, 60), &own, Heard::Speaking));
        assert_eq!(claims.losing, vec![id(7002, 60)]);
        assert_eq!(answer(&claims.winning, &own), Answer::None);
    }

    #[test]
    fn keeping_out_ends_when_its_time_is_up() {
        let claims = NameClaims {
            keep_out_until_ms: 1_000,
            ..NameClaims::default()
        };
        assert!(claims.keeping_out(999));
        assert!(!claims.keeping_out(1_000));
        let renewed = NameClaims {
            quiet_until_ms: 500,
            ..NameClaims::default()
        };
        assert!(renewed.deaf_to_down(499) && !renewed.keeping_out(499));
        assert!(!renewed.deaf_to_down(500));
    }
}
