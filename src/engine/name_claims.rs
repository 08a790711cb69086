//! Two nodes under one name (a copied configuration, a second process
//! started by mistake). SWIM keeps one identity per name, the one with the
//! newer generation, so the two displace each other. If each answered the
//! other's claim with a still newer generation, the name would flip between
//! them many times a second for as long as both run. Instead the older one
//! keeps out: it stops renewing, writes nothing under the name and looks at
//! the member lists of its exchanges with peers (and seeds, when alone)
//! whether the holder is still up; once the holder is reported down or
//! gone, it takes the name back with a generation newer than the holder's.
//!
//! "You are down" notices (foca's `TurnUndead`, or our identity gossiped as
//! down) never say why: this node was declared down, or another identity
//! of its name holds it. foca would renew at once, by one generation, and
//! with the name held elsewhere be told again, a renewal a round trip. So
//! such notices never reach foca: each (at most one a second) opens an
//! exchange with its sender, whose member list tells which it is; our own
//! identity listed as down there is what makes foca renew. When streams
//! fail while datagrams pass, no exchange completes: after
//! [`DOWN_FALLBACK_MS`] of that, notices reach foca again.
//!
//! The holder may know no one but this node (a copy seeded with this node
//! alone): so a kept-out node still answers the holder's exchanges, with
//! the members it last knew alive, through which the holder joins the
//! others; and every [`HOLDER_CHECK_MS`] it dials the holder itself, a
//! refused connection (no process listens there any more) being word that
//! the holder is gone, and has a whole exchange with a peer, whose member
//! list tells when the others found the holder down.
//!
//! A claim at this node's own address is an earlier life of this node (a
//! restart whose clock went back), and a claim reported down is a node that
//! went away: both are answered at once, as before.

use std::net::SocketAddr;

use super::identity::NodeId;

/// How long one sighting of a live holder keeps this node out, at least
/// (three push-pull intervals when that is longer): longer than the gap
/// between two exchanges, so a holder still up is seen again before this
/// runs out.
pub const KEEP_OUT_MS: u64 = 60_000;

/// Join attempts while kept out are at most this far apart, so the name is
/// taken back soon after its holder goes.
pub const KEEP_OUT_JOIN_RETRY_MS: u64 = 10_000;

/// While kept out, the holder is dialled this often (an exchange with it):
/// a refused connection says it is gone, an answer that it is up.
pub const HOLDER_CHECK_MS: u64 = 2_000;

/// A holder check whose exchange has not completed this long has failed
/// (an exchange otherwise waits [`super::SYNC_TIMEOUT`]).
pub const HOLDER_CHECK_TIMEOUT_MS: u64 = 3_000;

/// Holder checks failed in a row after which the holder counts as gone: a
/// claim sent by someone who is not a node of the tribe (a forged packet
/// naming an address that accepts connections and never answers) keeps
/// this node out for seconds, not for as long as it is repeated.
pub const HOLDER_MISSES: u32 = 3;

/// Addresses whose holders failed their checks, remembered so that a claim
/// from there again (the same, or with a newer generation) is taken as one
/// of a node that is gone.
const MAX_DISCREDITED: usize = 16;

/// "You are down" notices open an exchange at most this often.
pub const DOWN_CHECK_GAP_MS: u64 = 1_000;

/// When no exchange has completed this long after a notice was first asked
/// about (streams fail while datagrams pass: out of file descriptors,
/// peers at their stream cap, a firewall), notices reach foca again, which
/// renews as it would without this module.
pub const DOWN_FALLBACK_MS: u64 = 5_000;

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

impl Heard {
    /// How a member a peer lists in `state` is heard of.
    pub fn listed(state: foca::State) -> Heard {
        if state == foca::State::Down {
            Heard::Down
        } else {
            Heard::Listed
        }
    }
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
    /// The live node this node keeps out for, as last heard of.
    pub holder: Option<NodeId>,
    /// A peer that told this node it is down, to be asked why.
    pub down_notice: Option<SocketAddr>,
    /// When a peer was last asked why (steady clock, ms: the engine's stands
    /// still after a step back of the wall clock).
    pub down_asked_ms: Option<u64>,
    /// When the first ask not followed by a completed exchange was made.
    pub unanswered_since_ms: Option<u64>,
    /// Whether notices reach foca (see [`DOWN_FALLBACK_MS`]).
    pub pass_down_notices: bool,
    /// When the holder was last dialled (engine clock, ms).
    pub holder_checked_ms: Option<u64>,
    /// Holder checks failed in a row (see [`HOLDER_MISSES`]).
    pub holder_misses: u32,
    /// Addresses of holders that failed their checks, newest last.
    pub discredited: Vec<SocketAddr>,
}

/// At most this many claims wait to be handled.
const MAX_PENDING: usize = 64;

impl NameClaims {
    /// Notes `id`, an identity under our name other than `own`; true when it
    /// would displace `own` (the packet carrying it is then refused).
    pub fn note(&mut self, id: &NodeId, own: &NodeId, heard: Heard) -> bool {
        if foca::Identity::win_addr_conflict(id, own) {
            let down = heard == Heard::Down || self.discredited.contains(&id.addr);
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

    /// The holder's address, when it is due a check (see
    /// [`HOLDER_CHECK_MS`]) while this node keeps out.
    pub fn take_holder_check(&mut self, now_ms: u64) -> Option<SocketAddr> {
        if !self.keeping_out(now_ms) {
            return None;
        }
        let addr = self.holder.as_ref()?.addr;
        let due = self
            .holder_checked_ms
            .is_none_or(|t| now_ms >= t.saturating_add(HOLDER_CHECK_MS));
        if !due {
            return None;
        }
        self.holder_checked_ms = Some(now_ms);
        Some(addr)
    }

    /// A connection to `addr` was refused: when the holder lives there, it
    /// is gone (noted as reported down, which ends keeping out). Whether it
    /// was.
    pub fn holder_refused(&mut self, addr: SocketAddr, own: &NodeId, now_ms: u64) -> bool {
        let Some(holder) = self.holder.clone().filter(|h| h.addr == addr) else {
            return false;
        };
        if !self.keeping_out(now_ms) {
            return false;
        }
        self.note(&holder, own, Heard::Down);
        true
    }

    /// An exchange with `addr` ended: completed (`answered`), or failed or
    /// timed out. When the holder lives there, an answer resets its misses;
    /// the [`HOLDER_MISSES`]th failure in a row discredits it (noted as
    /// reported down, which ends keeping out). Whether it was.
    pub fn holder_exchange_ended(
        &mut self,
        addr: SocketAddr,
        answered: bool,
        own: &NodeId,
        now_ms: u64,
    ) -> bool {
        let Some(holder) = self.holder.clone().filter(|h| h.addr == addr) else {
            return false;
        };
        if answered || !self.keeping_out(now_ms) {
            self.holder_misses = 0;
            return false;
        }
        self.holder_misses += 1;
        if self.holder_misses < HOLDER_MISSES {
            return false;
        }
        self.holder_misses = 0;
        if self.discredited.len() >= MAX_DISCREDITED {
            self.discredited.remove(0);
        }
        self.discredited.push(holder.addr);
        self.note(&holder, own, Heard::Down);
        true
    }

    /// The holder's address while this node keeps out: exchanges with it
    /// are checks, which fail sooner (see [`HOLDER_CHECK_TIMEOUT_MS`]).
    pub fn holder_addr(&self, now_ms: u64) -> Option<SocketAddr> {
        self.holder.as_ref().map(|h| h.addr).filter(|_| self.keeping_out(now_ms))
    }

    /// Notes a "you are down" notice from `from` (not while keeping out:
    /// the holder is known then).
    pub fn note_down_notice(&mut self, from: SocketAddr, now_ms: u64) {
        if !self.keeping_out(now_ms) && self.down_notice.is_none() {
            self.down_notice = Some(from);
        }
    }

    /// The peer to ask why this node was told it is down, at most once per
    /// [`DOWN_CHECK_GAP_MS`]; notices in between are dropped (peers repeat
    /// them while it lasts).
    pub fn take_down_check(&mut self, now_ms: u64) -> Option<SocketAddr> {
        let from = self.down_notice.take()?;
        let due = self
            .down_asked_ms
            .is_none_or(|t| now_ms >= t.saturating_add(DOWN_CHECK_GAP_MS));
        if !due {
            return None;
        }
        self.down_asked_ms = Some(now_ms);
        self.unanswered_since_ms.get_or_insert(now_ms);
        Some(from)
    }

    /// Decides whether notices reach foca, given when an exchange last
    /// completed (on the clock of [`NameClaims::take_down_check`]) and
    /// whether this node keeps out: only after [`DOWN_FALLBACK_MS`] of asks
    /// with none.
    pub fn settle_fallback(&mut self, now_ms: u64, last_exchange_ms: u64, kept_out: bool) {
        if self
            .unanswered_since_ms
            .is_some_and(|since| last_exchange_ms >= since)
        {
            self.unanswered_since_ms = None;
        }
        self.pass_down_notices = !kept_out
            && self
                .unanswered_since_ms
                .is_some_and(|since| now_ms >= since.saturating_add(DOWN_FALLBACK_MS));
    }

    /// foca renewed: notices are asked about again.
    pub fn renewed(&mut self) {
        self.unanswered_since_ms = None;
        self.pass_down_notices = false;
    }
}

/// What to do about the claims of one round.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// Nothing.
    None,
    /// Keep out: a live node holds the name.
    KeepOut {
        /// The holder.
        holder: NodeId,
    },
    /// Take a generation newer than `newest`.
    Renew {
        /// The newest claim's generation.
        newest: u64,
    },
}

/// Decides about `claims` (this round's) for a node that is `own` now and
/// keeps out for `holder`, if it does. A holder reported down at an older
/// generation than the one it was last heard alive at is stale news.
pub fn answer(claims: &[Claim], own: &NodeId, holder: Option<&NodeId>) -> Answer {
    let live = claims
        .iter()
        .filter(|c| !c.down && c.id.addr != own.addr)
        .max_by_key(|c| (c.id.generation, c.id.addr));
    if let Some(live) = live {
        return Answer::KeepOut {
            holder: live.id.clone(),
        };
    }
    let newest = claims
        .iter()
        .map(|c| c.id.generation)
        .filter(|g| holder.is_none_or(|h| *g >= h.generation))
        .max();
    match newest {
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
            answer(&claims.winning, &own, None),
            Answer::KeepOut {
                holder: id(7001, 200)
            }
        );
        // The same holder reported down later: the latest word counts.
        assert!(claims.note(&id(7001, 200), &own, Heard::Down));
        assert_eq!(
            answer(&claims.winning, &own, Some(&id(7001, 200))),
            Answer::Renew { newest: 200 }
        );
    }

    #[test]
    fn an_earlier_life_at_our_own_address_is_answered_at_once() {
        let own = id(7000, 100);
        let mut claims = NameClaims::default();
        assert!(claims.note(&id(7000, 300), &own, Heard::Speaking));
        assert_eq!(
            answer(&claims.winning, &own, None),
            Answer::Renew { newest: 300 }
        );
    }

    #[test]
    fn an_older_life_of_the_holder_reported_down_is_stale_news() {
        let own = id(7000, 100);
        let holder = id(7001, 300);
        let mut claims = NameClaims::default();
        assert!(claims.note(&id(7001, 200), &own, Heard::Down));
        assert_eq!(answer(&claims.winning, &own, Some(&holder)), Answer::None);
        assert_eq!(
            answer(&claims.winning, &own, None),
            Answer::Renew { newest: 200 }
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
        assert_eq!(answer(&claims.winning, &own, None), Answer::None);
    }

    #[test]
    fn keeping_out_ends_when_its_time_is_up() {
        let claims = NameClaims {
            keep_out_until_ms: 1_000,
            ..NameClaims::default()
        };
        assert!(claims.keeping_out(999));
        assert!(!claims.keeping_out(1_000));
    }

    /// This node (`own`) keeping out for a minute while `holder` holds its
    /// name.
    fn kept_out_by_a_holder() -> (NodeId, NodeId, NameClaims) {
        let holder = id(7001, 200);
        let claims = NameClaims {
            keep_out_until_ms: 60_000,
            holder: Some(holder.clone()),
            ..NameClaims::default()
        };
        (id(7000, 100), holder, claims)
    }

    #[test]
    fn a_holder_that_never_completes_a_check_is_discredited() {
        let (own, holder, mut claims) = kept_out_by_a_holder();
        // An answer in between resets the count.
        assert!(!claims.holder_exchange_ended(holder.addr, false, &own, 1_000));
        assert!(!claims.holder_exchange_ended(holder.addr, true, &own, 2_000));
        assert!(!claims.holder_exchange_ended(id(7002, 1).addr, false, &own, 2_500));
        for t in [3_000, 5_000] {
            assert!(!claims.holder_exchange_ended(holder.addr, false, &own, t));
        }
        assert!(claims.holder_exchange_ended(holder.addr, false, &own, 7_000));
        assert_eq!(
            answer(&claims.winning, &own, Some(&holder)),
            Answer::Renew { newest: 200 }
        );
        // The same claim again, the claimant speaking, is one of a node gone.
        claims.winning.clear();
        assert!(claims.note(&holder, &own, Heard::Speaking));
        assert!(claims.winning[0].down);
    }

    #[test]
    fn the_holder_is_dialled_every_few_seconds_and_its_refusal_ends_keeping_out() {
        let (own, holder, mut claims) = kept_out_by_a_holder();
        assert_eq!(claims.take_holder_check(1_000), Some(holder.addr));
        assert_eq!(claims.take_holder_check(2_999), None);
        assert_eq!(claims.take_holder_check(3_000), Some(holder.addr));
        // Another address refusing says nothing of the holder.
        assert!(!claims.holder_refused(id(7002, 1).addr, &own, 3_100));
        assert!(claims.winning.is_empty());
        assert!(claims.holder_refused(holder.addr, &own, 3_100));
        assert_eq!(
            answer(&claims.winning, &own, Some(&holder)),
            Answer::Renew { newest: 200 }
        );
        // Not kept out: no dial, and a refusal is no word of a holder.
        let mut free = NameClaims {
            holder: Some(holder.clone()),
            ..NameClaims::default()
        };
        assert_eq!(free.take_holder_check(1_000), None);
        assert!(!free.holder_refused(holder.addr, &own, 1_000));
    }

    #[test]
    fn notices_reach_foca_only_when_asking_gets_no_exchange_done() {
        let peer: SocketAddr = ([127, 0, 0, 1], 7005).into();
        let mut claims = NameClaims::default();
        claims.note_down_notice(peer, 1_000);
        assert_eq!(claims.take_down_check(1_000), Some(peer));
        claims.settle_fallback(5_999, 0, false);
        assert!(!claims.pass_down_notices);
        claims.settle_fallback(6_000, 0, false);
        assert!(claims.pass_down_notices, "no exchange for 5 s");
        claims.renewed();
        assert!(!claims.pass_down_notices);
        claims.note_down_notice(peer, 7_000);
        assert_eq!(claims.take_down_check(7_000), Some(peer));
        claims.settle_fallback(12_500, 7_200, false);
        assert!(!claims.pass_down_notices, "an exchange completed after the ask");
        assert_eq!(claims.unanswered_since_ms, None);
    }

    #[test]
    fn down_notices_are_asked_about_once_a_second_and_not_while_out() {
        let peer: SocketAddr = ([127, 0, 0, 1], 7005).into();
        let mut claims = NameClaims::default();
        claims.note_down_notice(peer, 1_000);
        assert_eq!(claims.take_down_check(1_000), Some(peer));
        claims.note_down_notice(peer, 1_500);
        assert_eq!(claims.take_down_check(1_500), None, "within the gap");
        assert_eq!(claims.take_down_check(2_500), None, "dropped, not kept");
        claims.note_down_notice(peer, 2_500);
        assert_eq!(claims.take_down_check(2_500), Some(peer));
        claims.keep_out_until_ms = 10_000;
        claims.note_down_notice(peer, 5_000);
        assert_eq!(claims.take_down_check(5_000), None, "kept out");
    }
}
