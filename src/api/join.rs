//! Joining a running cluster after the start, through addresses learnt
//! then (memberlist's and serf's `Join`): a configured seed is one known
//! before the start.

use std::time::Duration;

use futures_util::future::join_all;

use super::{need_tokio, Node};
use crate::config::{join_place, JoinPlace};
use crate::engine::SYNC_TIMEOUT;
use crate::error::{Error, Result};
use crate::runtime::DriverInput;

/// Places one join takes at most.
pub const MAX_JOIN_PLACES: usize = 256;
/// Joins of one node under way at once; more wait for one to end.
pub(super) const MAX_JOINS: usize = 16;
/// How long the names given are looked up for, at most (all at once).
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a join waits for its exchanges: they expire at the engine's
/// next tick past [`SYNC_TIMEOUT`].
const EXCHANGES_WAIT: Duration = Duration::from_secs(SYNC_TIMEOUT.as_secs() + 2);
/// How often the exchanges' outcome is looked at.
const POLL: Duration = Duration::from_millis(10);

impl Node {
    /// Joins the cluster through `places` (`host:port`: an address, or a
    /// name looked up, as [`crate::Config::add_seed`] takes), also while
    /// this node is in a cluster already (two clusters then merge, as
    /// their seeds' would: their records merge as every record does, the
    /// later write winning, so a tribe or policy deleted on one side within
    /// the tombstone grace deletes one of that name on the other when the
    /// deletion is the later write). Each place gets a join exchange: this
    /// node sends its view and takes the peer's, so when this returns this
    /// node knows the peer's members, tribes and catalogs. The addresses
    /// become seeds too, also those that did not answer: a node that is
    /// alone, or loses every peer later, tries them again.
    ///
    /// Returns how many addresses completed their exchange; waits for all
    /// of them (a lookup is abandoned after 5 s, an exchange after 10 s
    /// without progress; after 12 s of exchanges those still under way
    /// are given up and the ones that completed count; a
    /// node runs 16 joins at once, the others wait their turn; a join
    /// whose future is dropped, as by a timeout, drops its exchanges still
    /// under way at once, their connections closed and their addresses
    /// not kept as seeds unless a join exchange completed with them (one
    /// already sent may still reach its peer, which then knows this node,
    /// and gossip makes them one cluster: a join given up may still take
    /// effect); at most [`MAX_JOIN_PLACES`] addresses are tried, the first ones,
    /// however many the names give). Errors:
    /// `InvalidArgument` (no place, more than [`MAX_JOIN_PLACES`], one not
    /// `host:port`, only this node's own address), `Io` when no address
    /// completed its exchange (the message names each and why: refused,
    /// no answer, another key, a name that does not resolve, this node
    /// itself), `ShuttingDown` (also when the node stops meanwhile).
    pub async fn join_cluster<S: AsRef<str>>(&self, places: &[S]) -> Result<usize> {
        self.join_until(places, None).await
    }

    /// [`Node::join_cluster`] that waits at most `limit` in all (its turn,
    /// the lookups and the exchanges): then its exchanges still under way
    /// are given up, as when the future is dropped, and the addresses
    /// reached by then count. Returns how many completed their exchange
    /// (memberlist's `Join` likewise succeeds when any address answered);
    /// when none had: `Timeout` if no address had answered at all, `Io`
    /// naming each address and why (another key, refused, still under way
    /// at the limit) if some had refused.
    pub async fn join_cluster_within<S: AsRef<str>>(
        &self,
        places: &[S],
        limit: Duration,
    ) -> Result<usize> {
        let until = tokio::time::Instant::now().checked_add(limit);
        self.join_until(places, until).await
    }

    async fn join_until<S: AsRef<str>>(
        &self,
        places: &[S],
        until: Option<tokio::time::Instant>,
    ) -> Result<usize> {
        let places = join_places(places)?;
        if self.inner.inbox.is_closed() {
            return Err(Error::ShuttingDown);
        }
        need_tokio("a join")?;
        // Every wait below ends when the node stops.
        tokio::select! {
            joined = self.join_through(places, until) => joined,
            () = self.inner.inbox.closed() => Err(Error::ShuttingDown),
        }
    }

    /// The join; `until` (the caller's limit) ends it with what it
    /// reached by then.
    async fn join_through(
        &self,
        places: Vec<JoinPlace>,
        until: Option<tokio::time::Instant>,
    ) -> Result<usize> {
        let late = || Error::Timeout { host: None };
        let _turn = within(until, self.inner.joins.acquire())
            .await
            .ok_or_else(late)?
            .map_err(|_| Error::ShuttingDown)?;
        let (addrs, mut unreached) = within(until, look_up(places)).await.ok_or_else(late)?;
        if addrs.is_empty() {
            return Err(none_reached(&unreached));
        }
        // A limit already past (a timeout of 0) reaches nobody: no exchange
        // is opened, only to be given up at once.
        if until.is_some_and(|u| tokio::time::Instant::now() >= u) {
            return Err(late());
        }
        let shared = &self.inner.shared;
        let ticket = shared.engine().join_through(shared.now_ms(), &addrs)?;
        let _forget = ForgetJoin { node: self, ticket };
        // The engine queued the exchanges; the driver opens them.
        let _ = self.inner.inbox.send(DriverInput::Wake);
        let own = tokio::time::Instant::now() + EXCHANGES_WAIT;
        let deadline = until.map_or(own, |u| u.min(own));
        let outcome = loop {
            let (outcome, left) = {
                let mut engine = shared.engine();
                (engine.join_outcome(ticket), engine.has_left())
            };
            // A node that leaves ends its joins' exchanges.
            if left {
                return Err(Error::ShuttingDown);
            }
            if let Some(outcome) = outcome {
                break Some(outcome);
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                break None;
            }
            // Not past the deadline: a limit is kept to the millisecond.
            tokio::time::sleep(POLL.min(deadline - now)).await;
        };
        let outcome = match outcome {
            Some(outcome) => outcome,
            // Out of time: what completed by now counts, the rest is given
            // up (by `_forget`).
            None => {
                let so_far = shared.engine().join_progress(ticket).unwrap_or_default();
                let open: Vec<_> = addrs
                    .iter()
                    .filter(|a| {
                        !so_far.reached.contains(a) && !so_far.failed.iter().any(|(f, _)| f == *a)
                    })
                    .copied()
                    .collect();
                let ours = until.is_some_and(|u| u < own);
                // Nothing heard at all: the limit is the news. Any reason
                // heard (another key, a refused port, a name that does not
                // resolve) is told instead, with the rest still under way.
                let heard = !so_far.failed.is_empty() || !unreached.is_empty();
                if so_far.reached.is_empty() && ours && !heard {
                    return Err(late());
                }
                let why = if ours {
                    "still under way at the join's limit".to_string()
                } else {
                    format!("still under way after {} s", EXCHANGES_WAIT.as_secs())
                };
                if !open.is_empty() {
                    unreached.push(format!("{}: {why}", list(&open)));
                }
                so_far
            }
        };
        unreached.extend(
            outcome
                .failed
                .iter()
                .map(|(addr, why)| format!("{addr}: {why}")),
        );
        if outcome.reached.is_empty() {
            return Err(none_reached(&unreached));
        }
        if !unreached.is_empty() {
            tracing::warn!(
                reached = %list(&outcome.reached),
                failed = %unreached.join("; "),
                "joined through some of the addresses given, not all"
            );
        }
        Ok(outcome.reached.len())
    }
}

/// The places of a join, checked: `InvalidArgument` for none, more than
/// [`MAX_JOIN_PLACES`], or one not `host:port` (a join's first step; the
/// C ABI checks them before it looks at a cancel token).
pub(crate) fn join_places<S: AsRef<str>>(places: &[S]) -> Result<Vec<JoinPlace>> {
    if places.is_empty() {
        return Err(Error::InvalidArgument("no address to join through".into()));
    }
    if places.len() > MAX_JOIN_PLACES {
        return Err(Error::InvalidArgument(format!(
            "{} addresses to join through; at most {MAX_JOIN_PLACES}",
            places.len()
        )));
    }
    places.iter().map(|p| join_place(p.as_ref())).collect()
}

/// Forgets a join's ticket (and ends its exchanges) when its caller gives
/// up on it; a no-op once the outcome was collected.
struct ForgetJoin<'a> {
    node: &'a Node,
    ticket: u64,
}

impl Drop for ForgetJoin<'_> {
    fn drop(&mut self) {
        let inner = &self.node.inner;
        inner.shared.engine().forget_join(self.ticket);
        // The driver closes the streams of the exchanges ended.
        let _ = inner.inbox.send(DriverInput::Wake);
    }
}

/// The addresses of `places` (names looked up at once, for at most
/// [`LOOKUP_TIMEOUT`]), and why each name that gave none did not.
async fn look_up(places: Vec<JoinPlace>) -> (Vec<std::net::SocketAddr>, Vec<String>) {
    let mut addrs = Vec::new();
    let mut names = Vec::new();
    for place in places {
        match place {
            JoinPlace::Addr(a) => addrs.push(a),
            JoinPlace::Name(n) => names.push(n),
        }
    }
    let answers = join_all(names.iter().map(|name| {
        let rx = crate::seeds::start_lookup(name);
        tokio::time::timeout(LOOKUP_TIMEOUT, rx)
    }))
    .await;
    let mut unreached = Vec::new();
    for (name, answer) in names.iter().zip(answers) {
        match answer {
            Ok(Ok(Ok(found))) => addrs.extend(found),
            Ok(Ok(Err(why))) => unreached.push(format!("{name}: does not resolve: {why}")),
            Ok(Err(_)) => unreached.push(format!("{name}: no thread to look it up")),
            Err(_) => unreached.push(format!("{name}: the lookup takes over 5 s")),
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    addrs.retain(|a| seen.insert(*a));
    // A name may give thousands (a hostile or broken resolver): a join
    // opens at most as many exchanges as it takes places.
    if addrs.len() > MAX_JOIN_PLACES {
        unreached.push(format!(
            "{} more addresses that the names gave were not tried (a join tries at most {MAX_JOIN_PLACES})",
            addrs.len() - MAX_JOIN_PLACES
        ));
        addrs.truncate(MAX_JOIN_PLACES);
    }
    (addrs, unreached)
}

/// `fut`'s output, or `None` when `until` came first.
async fn within<F: std::future::Future>(
    until: Option<tokio::time::Instant>,
    fut: F,
) -> Option<F::Output> {
    match until {
        Some(u) => tokio::time::timeout_at(u, fut).await.ok(),
        None => Some(fut.await),
    }
}

fn none_reached(why: &[String]) -> Error {
    Error::Io(format!("joined through no address: {}", why.join("; ")))
}

fn list(addrs: &[std::net::SocketAddr]) -> String {
    addrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
