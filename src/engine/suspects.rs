//! Confirming a suspicion early. When SWIM suspects a member, a few nodes
//! dial its address over TCP; a refused connection means no process
//! listens there any more, a second and independent sign that it crashed,
//! so the member is declared down at once instead of after the suspicion
//! timeout. A connection that opens, times out or is blocked says nothing
//! and changes nothing: the suspicion runs its course (the member can still
//! refute it), so a slow or partitioned node is not declared down sooner.

use std::collections::BTreeSet;
use std::sync::Arc;

use foca::{Member, State};

use super::delta::lock;
use super::{ConnId, Engine, NodeId};

/// How many nodes of the cluster, on average, dial each suspect (none does
/// with probability e^-5, under 1 %; then the suspicion runs its course).
const CHECKERS: f64 = 5.0;

/// How many suspicion timeouts longer a node that hears no one holds its
/// verdicts (see [`Engine::holds_verdict`]).
const HOLD_FACTOR: u64 = 2;

impl Engine {
    /// Looks at the members SWIM suspects: pings again those this node
    /// suspected (see `buddy.rs`), and dials each new one with probability
    /// `CHECKERS / cluster size` (an anti-entropy exchange, useful in itself
    /// if the member answers).
    pub(super) fn check_suspects(&mut self) {
        // Kept out of its name, this node suspects everyone (it sends no
        // probes): not news to tell.
        if self.left || !self.active || lock(&self.shared).keeping_out() {
            return;
        }
        let suspects: Vec<(NodeId, foca::Incarnation)> = self
            .swim
            .iter_members()
            .filter(|m| m.state() == State::Suspect)
            .map(|m| (m.id().clone(), m.incarnation()))
            .collect();
        self.retell_suspects(&suspects);
        let keys: BTreeSet<(Arc<str>, u64)> = suspects
            .iter()
            .map(|(id, _)| (id.name.clone(), id.generation))
            .collect();
        self.suspects_seen.retain(|k| keys.contains(k));
        self.suspects_held.retain(|k, _| keys.contains(k));
        let p = (CHECKERS / self.swim.num_members().max(1) as f64).min(1.0);
        let now = self.now_ms();
        let window = lock(&self.shared).verdict_window_ms;
        for (id, _) in suspects {
            let key = (id.name.clone(), id.generation);
            if self.suspects_seen.insert(key.clone()) && rand::RngExt::random_bool(&mut self.rng, p) {
                // Digests only: the dial is the point.
                self.start_summary(&id);
            }
            // A suspicion learned by gossip has no timer here (foca times
            // only those it starts): if its down notice never reaches this
            // node, it would stay suspect until this node's own probe came
            // round to it. Still suspect after a suspicion timeout, it is
            // dialed once: a refused dial declares it down.
            let since = *self.suspects_held.entry(key).or_insert(Some(now));
            if since.is_some_and(|t| now.saturating_sub(t) >= window) {
                self.suspects_held.insert((id.name.clone(), id.generation), None);
                self.start_summary(&id);
            }
        }
    }

    /// Whether one of foca's timers should still reach it. foca 2.0.0
    /// answers every expired suspicion timer with a `TurnUndead` message to
    /// the member, also when the member refuted the suspicion meanwhile (its
    /// incarnation check guards only the Down). The member then believes
    /// the cluster declared it down and rejoins under a new generation:
    /// at 40 % loss, hundreds of healthy nodes of 500 did so within a
    /// minute, and a peer still probing the old identity declared it
    /// failed. So a suspicion timer is dropped once its suspicion is over.
    pub(super) fn swim_timer_is_live(&self, timer: &foca::Timer<NodeId>) -> bool {
        let foca::Timer::ChangeSuspectToDown {
            member_id,
            incarnation,
            ..
        } = timer
        else {
            return true;
        };
        self.swim.iter_members().any(|m| {
            m.id() == member_id && m.state() == State::Suspect && m.incarnation() == *incarnation
        })
    }

    /// Whether to hold a suspicion's verdict for now: while this node has
    /// heard no one for two probe periods (it can send but not receive: a
    /// one-way cut, a full receive buffer), its probes all fail, it
    /// suspects everyone, and no refutation reaches it; its verdicts,
    /// gossiped to peers that hear it, had healthy nodes declared failed
    /// everywhere. Held, the peers find it down first and then take
    /// nothing it says. Held for at most [`HOLD_FACTOR`] times the
    /// suspicion timeout (a last survivor must still find its dead peer
    /// down; one whose port refuses a dial is down at once anyway).
    pub(super) fn holds_verdict(&mut self, timer: &foca::Timer<NodeId>) -> bool {
        let foca::Timer::ChangeSuspectToDown {
            member_id,
            incarnation,
            ..
        } = timer
        else {
            return false;
        };
        let now = self.now_ms();
        let probe = self.timings.probe_period.as_millis() as u64;
        let suspicion = lock(&self.shared).verdict_window_ms;
        let key = (member_id.name.clone(), member_id.generation, *incarnation);
        let deaf = now.saturating_sub(self.last_heard_ms) > 2 * probe;
        let Some(&(since, last)) = self.held_verdicts.get(&key) else {
            if !deaf {
                return false;
            }
            if self.held_verdicts.len() >= 1024 {
                self.held_verdicts.clear();
            }
            self.held_verdicts.insert(key, (now, now));
            return true;
        };
        // Heard again: the suspect gets a whole suspicion timeout to
        // refute, now that its refutation can reach this node.
        let hold = if deaf {
            now.saturating_sub(since) < HOLD_FACTOR * suspicion
        } else {
            now.saturating_sub(last) < suspicion
        };
        if !hold {
            self.held_verdicts.remove(&key);
        } else if deaf {
            self.held_verdicts.insert(key, (since, now));
        }
        hold
    }

    /// Times the down notices taken as suspicions (see the codec and
    /// `apply_members`; after every input): foca times only the
    /// suspicions it starts itself,
    /// so without this a member suspected on a peer's word stayed suspect
    /// until this node probed it (a round of the whole cluster). And dials
    /// each such member at once: a crashed one refuses the connection and
    /// is down now, as the peer said, rather than a suspicion timeout
    /// later (in an active cluster most nodes heard the member lately, so
    /// most softened a true verdict); a healthy one answers, and its
    /// suspicion runs its course.
    pub(super) fn time_softened_verdicts(&mut self) {
        let (softened, window) = {
            let mut sh = lock(&self.shared);
            (std::mem::take(&mut sh.softened), sh.verdict_window_ms)
        };
        let dial = !self.left && self.active && !lock(&self.shared).keeping_out();
        for (member, incarnation) in softened {
            let key = (member.name.clone(), member.generation, incarnation);
            if dial && !self.softened_dialed.contains(&key) {
                if self.softened_dialed.len() >= 1024 {
                    self.softened_dialed.clear();
                }
                self.softened_dialed.insert(key);
                self.start_summary(&member);
            }
            let timer = super::Timer::Verdict {
                member,
                incarnation,
            };
            self.schedule(timer, std::time::Duration::from_millis(window));
        }
    }

    /// A suspicion taken from a peer's verdict ran its course: the member
    /// is down unless it refuted it meanwhile.
    pub(super) fn verdict_due(&mut self, member: &NodeId, incarnation: foca::Incarnation) {
        let still = self.swim.iter_members().any(|m| {
            m.id() == member && m.state() == State::Suspect && m.incarnation() == incarnation
        });
        if still {
            let down = Member::new(member.clone(), incarnation, State::Down);
            if let Err(e) = self
                .swim
                .apply_many(std::iter::once(down), true, &mut self.swim_rt)
            {
                tracing::debug!(error = %e, "declaring a suspect down failed");
            }
        }
        self.after_change();
    }

    /// The driver could not connect stream `conn`: its address refused
    /// the connection. If a suspect lives there, it is down.
    pub fn handle_connect_refused(&mut self, now_ms: u64, conn: ConnId) {
        self.tick(now_ms);
        self.note_why(conn, "connection refused: no node listens there");
        let peer = self.conns.get(&conn).and_then(|x| x.peer);
        self.handle_stream_closed(now_ms, conn);
        let Some(addr) = peer else { return };
        let holder_gone = {
            let mut sh = lock(&self.shared);
            let (own, now) = (sh.own.clone(), sh.now_ms);
            sh.claims.holder_refused(addr, &own, now)
        };
        if holder_gone {
            tracing::debug!(%addr, "the node holding this node's name refused a connection: gone");
            return self.after_change();
        }
        let suspect = self
            .swim
            .iter_members()
            .find(|m| m.id().addr == addr && m.state() == State::Suspect)
            .map(|m| Member::new(m.id().clone(), m.incarnation(), State::Down));
        if let Some(down) = suspect {
            lock(&self.shared).counters.suspects_confirmed += 1;
            tracing::debug!(member = %down.id().name, "suspect refused a connection: down");
            if let Err(e) = self
                .swim
                .apply_many(std::iter::once(down), true, &mut self.swim_rt)
            {
                tracing::debug!(error = %e, "declaring a suspect down failed");
            }
        }
        self.after_change();
    }
}
