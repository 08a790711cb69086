//! Joins asked for after the start (`Node::join_cluster`): a join exchange
//! with each address given, as with a seed, and the outcome of each kept
//! under a ticket until the caller collects it. The addresses become seeds
//! too, so a node that later loses every peer tries them again.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use super::delta::lock;
use super::sync::Exchange;
use super::Engine;
use crate::error::{Error, Overload, Result};

/// Joins waiting for their exchanges at once; more are refused (the API
/// lets fewer in at once).
const MAX_OPEN_JOINS: usize = 64;
/// Seeds a node keeps at most, those of its config included: joins past
/// that still run, and their addresses are not kept.
const MAX_SEEDS: usize = 256;
/// How long (engine ms) the outcome of a join nobody collected is kept.
const UNCOLLECTED_MS: u64 = 60_000;

/// How the exchanges of one join ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JoinOutcome {
    /// Addresses whose exchange completed: the node took their view.
    pub reached: Vec<SocketAddr>,
    /// Addresses whose exchange failed, and why (no answer, refused,
    /// another key or cluster label, this node itself).
    pub failed: Vec<(SocketAddr, String)>,
}

/// One join under way, or ended and not collected yet.
#[derive(Debug, Default)]
struct Ticket {
    pending: usize,
    /// Addresses this join made seeds (none of them was one before).
    seeded: Vec<SocketAddr>,
    outcome: JoinOutcome,
    /// Engine ms when the last exchange ended.
    ended_ms: Option<u64>,
}

/// The joins of one engine.
#[derive(Debug, Default)]
pub(super) struct Joins {
    tickets: BTreeMap<u64, Ticket>,
    next: u64,
}

impl Engine {
    /// Opens a join exchange with each of `addrs` (this node's own
    /// address left out); their outcome is read with
    /// [`Engine::join_outcome`] under the ticket returned.
    pub fn join_through(&mut self, now_ms: u64, addrs: &[SocketAddr]) -> Result<u64> {
        self.tick(now_ms);
        if self.left {
            return Err(Error::ShuttingDown);
        }
        let me = lock(&self.shared).own.addr;
        // Its own address, also as the unspecified address of its port
        // (which reaches this host); other addresses of this host are told
        // by the exchange, which then answers under this node's identity.
        let own = |a: SocketAddr| a == me || (a.ip().is_unspecified() && a.port() == me.port());
        let mut targets: Vec<SocketAddr> = Vec::new();
        for &addr in addrs {
            if !own(addr) && !targets.contains(&addr) {
                targets.push(addr);
            }
        }
        if targets.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "no address to join through but this node's own ({me})"
            )));
        }
        let now = self.now_ms();
        self.joins
            .tickets
            .retain(|_, t| t.ended_ms.is_none_or(|end| end + UNCOLLECTED_MS > now));
        if self.joins.tickets.len() >= MAX_OPEN_JOINS {
            return Err(Error::Overloaded {
                by: Overload::Joins {
                    limit: MAX_OPEN_JOINS,
                },
            });
        }
        let ticket = self.joins.next;
        self.joins.next += 1;
        self.joins.tickets.insert(
            ticket,
            Ticket {
                pending: targets.len(),
                ..Ticket::default()
            },
        );
        for &addr in &targets {
            // One found to be this node is no seed, joined through again.
            let seed = !self.seeds.contains(&addr) && !self.own_seeds.contains(&addr);
            if seed && self.seeds.len() < MAX_SEEDS {
                self.seeds.push(addr);
                if let Some(t) = self.joins.tickets.get_mut(&ticket) {
                    t.seeded.push(addr);
                }
            }
            let conn = self.start_sync(addr, true);
            if let Some(x) = self.conns.get_mut(&conn) {
                x.ticket = Some(ticket);
            }
        }
        if !self.active {
            // Alone: keep trying them (and the other seeds) as at the start.
            let retry = self.join_backoff;
            self.schedule_join(retry);
        }
        Ok(ticket)
    }

    /// The outcome of a join once each of its exchanges ended (and the
    /// ticket is then forgotten); `None` while some still run, or for a
    /// ticket unknown.
    pub fn join_outcome(&mut self, ticket: u64) -> Option<JoinOutcome> {
        let t = self.joins.tickets.get(&ticket)?;
        if t.pending > 0 {
            return None;
        }
        self.joins.tickets.remove(&ticket).map(|t| t.outcome)
    }

    /// What a join under way reached and what failed so far (`None` for a
    /// ticket unknown): what counts when its caller stops waiting.
    pub fn join_progress(&self, ticket: u64) -> Option<JoinOutcome> {
        self.joins.tickets.get(&ticket).map(|t| t.outcome.clone())
    }

    /// Forgets a join whose caller gave up on it (a timeout, a dropped
    /// future, an HTTP client gone) and ends its exchanges still running:
    /// they would hold their sockets, and the ticket its place, for
    /// nobody. The addresses it made seeds stay seeds if their exchange
    /// had ended (completed or failed, as a whole join's do) or another
    /// join exchange completed with them: one still under way when the
    /// caller gave up is not dialled again.
    pub fn forget_join(&mut self, ticket: u64) {
        let Some(t) = self.joins.tickets.remove(&ticket) else {
            return;
        };
        self.end_exchanges(|x| x.ticket == Some(ticket), "the join was given up");
        // Kept when its exchange ended before (reached or failed: a seed,
        // as a whole join's addresses are), or any join exchange completed
        // with it (another join's, or this node's own dial of its seeds
        // while alone): only one still under way is dropped.
        let ended = |addr: &SocketAddr| {
            t.outcome.reached.contains(addr) || t.outcome.failed.iter().any(|(f, _)| f == addr)
        };
        let unanswered: Vec<SocketAddr> = t
            .seeded
            .into_iter()
            .filter(|addr| !ended(addr) && !self.seeds_answered.contains(addr))
            .collect();
        let mut dropped = Vec::new();
        for addr in unanswered {
            // Kept while another join still dials it, and handed to that
            // join: given up too, it drops the address then.
            let other = self
                .conns
                .values()
                .find(|x| x.ticket.is_some() && x.peer == Some(addr))
                .and_then(|x| x.ticket);
            match other.and_then(|o| self.joins.tickets.get_mut(&o)) {
                Some(o) => {
                    if !o.seeded.contains(&addr) {
                        o.seeded.push(addr);
                    }
                }
                None => dropped.push(addr),
            }
        }
        self.seeds.retain(|s| !dropped.contains(s));
        // A node alone dials its seeds meanwhile: those dials end too.
        self.end_exchanges(
            |x| x.initiator && x.join && x.ticket.is_none() && x.peer.is_some_and(|p| dropped.contains(&p)),
            "the join that made it a seed was given up",
        );
    }

    /// Whether `addr` is one of this node's own: its advertised address,
    /// or a loopback address at its port.
    fn is_own_address(&self, addr: SocketAddr) -> bool {
        let me = self.swim.identity().addr;
        addr == me || (addr.port() == me.port() && addr.ip().to_canonical().is_loopback())
    }

    /// An exchange ended: if a join opened it, its outcome is noted.
    pub(super) fn note_join_outcome(&mut self, exchange: Option<&Exchange>, ok: bool) {
        let Some(addr) = exchange.and_then(|x| x.peer) else {
            return;
        };
        let itself = exchange
            .and_then(|x| x.responder.as_ref())
            .is_some_and(|r| r == self.swim.identity());
        // Only an address of this node's own: a load balancer in front of
        // several nodes reaches this one now and another next time.
        let seed = self.seeds.contains(&addr) || self.named_seeds.contains(&addr);
        if itself && seed && self.is_own_address(addr) && !self.own_seeds.contains(&addr) {
            // No seed: trying it again would only reach this node again
            // (and be counted as a seed that never answers).
            tracing::warn!(seed = %addr, "a seed is this node itself (another of its addresses); dropped");
            self.own_seeds.push(addr);
            self.seeds.retain(|s| *s != addr);
            self.seeds_answered.retain(|s| *s != addr);
        }
        let Some(ticket) = exchange.and_then(|x| x.ticket) else {
            return;
        };
        let now = self.now_ms();
        let why = exchange.and_then(|x| x.why.clone());
        let Some(t) = self.joins.tickets.get_mut(&ticket) else {
            return;
        };
        if itself {
            t.outcome
                .failed
                .push((addr, "this node itself (another of its addresses)".into()));
        } else if ok {
            t.outcome.reached.push(addr);
        } else {
            let why = why.unwrap_or_else(|| "the exchange failed".into());
            t.outcome.failed.push((addr, why));
        }
        t.pending = t.pending.saturating_sub(1);
        if t.pending == 0 {
            t.ended_ms = Some(now);
        }
    }
}
