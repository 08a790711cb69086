//! After every input: evaluate policies over our facts, refute stale copies of
//! our record, and turn the difference between the previous and the current
//! derived view into events ("current truth, not a replay of history").

use std::collections::{BTreeMap, BTreeSet};

use crate::policy_set::{PolicyInput, PolicyOutcome, PolicyRequest, PolicyResults};
use crate::records::{Key, PluginRecord, TaskRecord, TribeRecord, Value};

use super::delta::lock;
use super::identity::NodeId;
use super::name_claims;
use super::view::{Membership, PluginEntry, Task, View};
use super::{Engine, Output};

/// Least time between two reports of one failing policy whose message
/// changed.
const POLICY_ERROR_REPEAT_MS: u64 = 60_000;

/// What happened, as this node sees it. Of the changes one step of the
/// node's view brings, what ends is told first, inside out ([`Event::TaskStop`],
/// [`Event::PluginUnload`], [`Event::TribeLeft`], [`Event::TribeDeleted`]), then
/// what begins, outside in ([`Event::TribeCreated`], [`Event::TribeJoined`],
/// [`Event::PluginLoad`], [`Event::TaskRun`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// This node joined a cluster (it has a live peer).
    Joined,
    /// This node lost every peer; it keeps trying its seeds.
    Isolated,
    /// A node became alive: new, back after it was found down, or
    /// restarted under its name (a newer generation) before it was found
    /// down (a crash and a quick restart, or a move).
    MemberJoined {
        /// Its name.
        name: String,
        /// Its address.
        addr: std::net::SocketAddr,
    },
    /// A node's record (facts, endpoints) changed.
    MemberUpdated {
        /// Its name.
        name: String,
    },
    /// A node left on purpose.
    MemberLeft {
        /// Its name.
        name: String,
    },
    /// A node stopped answering and was declared failed. One found down
    /// without a suspicion here (as a graceful leave is) is told a moment
    /// later (up to 3 s when its record is too large for gossip: many facts
    /// or tribes), unless its record says it left meanwhile
    /// ([`Event::MemberLeft`] then, alone).
    MemberFailed {
        /// Its name.
        name: String,
    },
    /// A failed or left node was forgotten.
    MemberReaped {
        /// Its name.
        name: String,
    },
    /// A tribe came into existence.
    TribeCreated {
        /// The tribe.
        tribe: String,
    },
    /// A tribe was deleted.
    TribeDeleted {
        /// The tribe.
        tribe: String,
    },
    /// This node is now in a tribe.
    TribeJoined {
        /// The tribe.
        tribe: String,
        /// How.
        by: Membership,
    },
    /// This node is no longer in a tribe.
    TribeLeft {
        /// The tribe.
        tribe: String,
    },
    /// Load this plugin (it is in the catalog of a tribe this node is in).
    PluginLoad(PluginEntry),
    /// Unload this plugin.
    PluginUnload(PluginEntry),
    /// Run this task (new, started, or its manifest changed).
    TaskRun(Task),
    /// Stop this task (stopped, removed, or this node left its tribe).
    TaskStop(Task),
    /// A holder of a plugin's artifact sent bytes that do not match its
    /// hash; they were thrown away and another holder is tried.
    ArtifactCorrupt {
        /// The plugin entry.
        plugin: PluginEntry,
        /// The holder that sent them.
        holder: String,
    },
    /// A plugin's artifact could not be fetched and verified from any
    /// holder; the plugin is not handed over (no `PluginLoad`) until a
    /// later try succeeds: when a holder not tried before appears, or
    /// every minute while some holder is listed.
    ArtifactUnavailable {
        /// The plugin entry.
        plugin: PluginEntry,
        /// Why.
        reason: String,
    },
    /// Another identity uses this node's name: a second node started
    /// under it, or a forgery. One with a newer generation takes the name
    /// while it is up: this node keeps out (it writes nothing under the
    /// name and does not renew its generation) and takes the name back,
    /// with a newer generation, once the other is reported down or gone
    /// (meanwhile [`crate::Node::name_held_by`] gives the holder's address).
    /// One with an older generation keeps out itself. Reported once per
    /// address and generation.
    IdentityClaimed {
        /// Address the claim carries.
        addr: std::net::SocketAddr,
        /// Generation the claim carries.
        generation: u64,
    },
    /// A peer's clock is off this node's by more than 30 s. Writes still flow
    /// both ways; last-writer-wins favours the faster clock until fixed.
    ClockSkew {
        /// The peer.
        peer: String,
        /// Its clock minus ours, in milliseconds.
        offset_ms: i64,
    },
    /// A policy could not be evaluated for this node (counts as not holding).
    /// Reported once per policy and error, not per evaluation.
    PolicyError {
        /// Policy name.
        policy: String,
        /// Why.
        message: String,
    },
}

/// A failing policy's message as said, when, and a newer one held back
/// until a minute has passed since.
#[derive(Debug)]
struct SaidError {
    said: String,
    at: u64,
    unsaid: Option<String>,
}

/// What a policy request was asked over (see [`Engine::evaluate_policies`]).
#[derive(Debug, PartialEq)]
struct PolicyAsked {
    facts: BTreeMap<String, String>,
    policies: Vec<PolicyInput>,
    /// Tribes our policies held for that did not exist: one deleted (by a
    /// command that raced the policy) is made again by the next answer.
    missing: BTreeSet<String>,
    /// Whether a tribe could be made then (below the limit of tribes): one
    /// refused at the limit is made once room frees.
    room: bool,
}

/// What was last reported to the application.
#[derive(Debug, Default)]
pub struct Reconciler {
    tribes: BTreeSet<String>,
    mine: BTreeMap<String, Membership>,
    plugins: BTreeMap<(String, String, String), PluginRecord>,
    tasks: BTreeMap<(String, String), TaskRecord>,
    /// Ordinal of the last policy request.
    policy_seq: u64,
    /// Facts and policies of the last request, and which of their tribes
    /// were missing then, to ask only when one of them changes (cleared
    /// when an answer holds a transient failure).
    policy_asked: Option<PolicyAsked>,
    /// Policy errors reported, by policy name.
    reported_errors: BTreeMap<String, SaidError>,
    /// What of this node's own record and state the view last derived
    /// from: its policy tribes, and whether it had left.
    own_inputs: Option<(BTreeSet<String>, bool)>,
}

impl Engine {
    /// Runs after every input: policies, refutation, events, foca output.
    pub(super) fn after_change(&mut self) {
        self.hold_after_stall(false);
        self.answer_claims();
        self.time_softened_verdicts();
        // Policies can write (our record, a missing tribe), and writes are
        // changes; two rounds reach a fixed point since a policy step only
        // depends on policies, tribes and our own facts.
        for _ in 0..2 {
            let changes = lock(&self.shared).state.take_changes();
            if changes.is_empty() {
                break;
            }
            let own = Key::Node(self.name.clone());
            let policy_relevant = changes
                .iter()
                .any(|k| matches!(**k, Key::Policy(_) | Key::Tribe(_)) || **k == own);
            if changes.contains(&own) {
                self.refute_own_record();
            }
            if changes
                .iter()
                .any(|k| matches!(**k, Key::RingKey(_) | Key::RingPrimary))
            {
                self.apply_ring();
            }
            if policy_relevant {
                self.evaluate_policies();
            }
            for key in &changes {
                if let Key::Node(name) = &**key {
                    if *name != self.name {
                        let left = match lock(&self.shared).state.get(key) {
                            Some(Value::Node(r)) if r.left => Some(r.generation),
                            _ => None,
                        };
                        self.on_peer_record(name, left);
                    }
                }
            }
            if self.view_may_have_changed(&changes)
                && self.stall_hold_until.is_none()
                && self.view_held_until.is_none()
            {
                self.emit_view_changes();
            }
        }
        self.drain_swim();
        self.forward_news();
    }

    /// Reports identities that claimed our name, and answers the claims
    /// (see [`super::name_claims`]): keeps out while a live node elsewhere
    /// holds the name; otherwise takes a generation newer than the newest
    /// claim, when that is within the clock horizon (a claim at the horizon
    /// itself cannot be beaten until time passes).
    fn answer_claims(&mut self) {
        if self.left {
            return;
        }
        self.ask_about_down_notice();
        self.end_lapsed_keep_out();
        let (claims, losing, horizon, now, holder) = {
            let mut sh = lock(&self.shared);
            let claims = std::mem::take(&mut sh.claims.winning);
            let losing = std::mem::take(&mut sh.claims.losing);
            let holder = sh.claims.holder.clone();
            (claims, losing, sh.horizon_ms(), sh.now_ms, holder)
        };
        if claims.is_empty() && losing.is_empty() {
            return;
        }
        let own = self.swim.identity().clone();
        self.report_claims(&claims, &losing);
        match name_claims::answer(&claims, &own, holder.as_ref()) {
            name_claims::Answer::None => {}
            name_claims::Answer::KeepOut { holder } => {
                let keep_out_ms = u64::try_from(self.timings.push_pull_interval.as_millis())
                    .unwrap_or(u64::MAX)
                    .saturating_mul(3)
                    .max(name_claims::KEEP_OUT_MS);
                let new_holder = {
                    let mut sh = lock(&self.shared);
                    let new_holder =
                        sh.claims.holder.as_ref().map(|h| h.addr) != Some(holder.addr);
                    sh.claims.keep_out_until_ms = now.saturating_add(keep_out_ms);
                    sh.claims.holder = Some(holder.clone());
                    new_holder
                };
                if new_holder {
                    warn_limited!(self, "keep_out", || {
                        format!(
                            "a node at {} runs under this node's name with a newer generation; this node keeps out of the cluster until that node goes, then takes its name back",
                            holder.addr
                        )
                    });
                }
            }
            name_claims::Answer::Renew { newest } => {
                let Some(next) = newest.checked_add(1).filter(|g| *g <= horizon) else {
                    return;
                };
                if own.generation >= next {
                    return;
                }
                let renewed = own.with_generation(next);
                let was_out = {
                    let mut sh = lock(&self.shared);
                    sh.own = renewed.clone();
                    sh.claims.holder = None;
                    std::mem::take(&mut sh.claims.keep_out_until_ms) > now
                };
                if let Err(e) = self.swim.change_identity(renewed, &mut self.swim_rt) {
                    tracing::debug!(error = %e, "could not take a newer generation");
                }
                if was_out {
                    tracing::info!(
                        generation = next,
                        "the node that held this node's name is gone; taking it back"
                    );
                }
                // The claimant wrote under our name: ours goes out again.
                self.refute_own_record();
                if was_out && !self.active {
                    self.join_backoff = self.timings.join_retry;
                    self.join_attempts = 0;
                    self.join();
                }
            }
        }
    }

    /// Logs and reports each identity under our name once per address and
    /// generation.
    fn report_claims(&mut self, claims: &[name_claims::Claim], losing: &[NodeId]) {
        let heard = claims.iter().map(|c| (&c.id, true));
        for (id, wins) in heard.chain(losing.iter().map(|id| (id, false))) {
            if self.claims_seen.len() >= 1024 {
                self.claims_seen.clear();
            }
            if !self.claims_seen.insert((id.addr, id.generation)) {
                continue;
            }
            // Each kind at most once per interval: forged claims with ever
            // new generations would otherwise write a line each (the
            // counter and the events tell them all).
            if wins {
                warn_limited!(self, "claim_winning", || {
                    format!(
                        "another identity claims this node's name: a node at {} (generation {})",
                        id.addr, id.generation
                    )
                });
            } else {
                warn_limited!(self, "claim_losing", || {
                    format!(
                        "a node at {} runs under this node's name with an older generation; it keeps out while this one is up",
                        id.addr
                    )
                });
            }
            self.emit(Event::IdentityClaimed {
                addr: id.addr,
                generation: id.generation,
            });
        }
    }

    /// A peer told this node it is down: asks it (at most once a second)
    /// for its member list, which says whether this node was declared down
    /// or another node holds its name (see [`super::name_claims`]).
    fn ask_about_down_notice(&mut self) {
        // By the steady clock: after a step back of the wall clock the
        // engine's stands still, and a gap by it would not pass until the
        // wall clock caught up (minutes without an ask, the node counted
        // failed by a peer meanwhile).
        let last_exchange = self.last_exchange_steady_ms;
        let now = self.steady_ms();
        let peer = {
            let mut sh = lock(&self.shared);
            let peer = sh.claims.take_down_check(now);
            let kept_out = sh.keeping_out();
            sh.claims.settle_fallback(now, last_exchange, kept_out);
            peer
        };
        if let Some(peer) = peer {
            self.start_sync(peer, false);
        }
    }

    /// Ends keeping out once it ran out without word of the holder (the
    /// claim may have been forged, or the holder gone where this node cannot
    /// see), and sends the record this node held back meanwhile.
    fn end_lapsed_keep_out(&mut self) {
        let (lapsed, out) = {
            let mut sh = lock(&self.shared);
            let out = sh.keeping_out();
            let lapsed = !out && sh.claims.holder.take().is_some();
            (lapsed, out)
        };
        if lapsed {
            tracing::info!(
                "no word of the node that held this node's name for a while; this node no longer keeps out"
            );
        }
        if self.record_owed && !out {
            self.publish_record();
        }
    }

    /// A peer's record changed; `left` is the generation it left at, when
    /// its record says it left.
    fn on_peer_record(&mut self, name: &str, left: Option<u64>) {
        if let Some(generation) = left {
            self.went_away(name, generation);
        }
        if left.is_some() {
            self.left_after_all(name);
        }
        if left.is_some() && self.members.mark_left(name) {
            self.emit(Event::MemberLeft {
                name: name.to_string(),
            });
        }
        if self.members.get(name).is_some_and(|r| r.state.is_up()) {
            self.emit(Event::MemberUpdated {
                name: name.to_string(),
            });
        }
    }

    /// A member whose record says it left is down now, as *left*, also
    /// when its goodbye through gossip has not reached this node (it may
    /// have gone to peers going down too): SWIM is told, so it stops
    /// probing the member and spreads the news, and its notice below makes
    /// the member *left* here. Only for the generation that left: a node
    /// back since then is up under a newer one.
    fn went_away(&mut self, name: &str, generation: u64) {
        let Some(row) = self.members.get(name) else {
            return;
        };
        if !row.state.is_up() || row.id.generation != generation {
            return;
        }
        let id = row.id.clone();
        let down = std::iter::once(foca::Member::down(id));
        if let Err(e) = self.swim.apply_many(down, true, &mut self.swim_rt) {
            tracing::debug!(error = %e, "could not mark a departed member down");
        }
    }

    /// Someone overwrote our record (a tombstone, or a copy from before a
    /// restart that carried a later version): publish ours again, newer.
    fn refute_own_record(&mut self) {
        // Left: the goodbye stands (a slim one differs from `record` on
        // purpose, and writing the whole record back undid it).
        if self.left {
            return;
        }
        let stale = {
            let sh = lock(&self.shared);
            match sh.state.get(&Key::Node(self.name.clone())) {
                Some(Value::Node(r)) => r != &self.record,
                _ => true,
            }
        };
        if stale {
            self.publish_record();
        }
    }

    /// Whether the last evaluation failed for a passing shortage (no
    /// thread) and is to be asked again.
    pub(super) fn reconcile_retry_due(&self) -> bool {
        match &self.reconcile.policy_asked {
            None => self.reconcile.policy_seq > 0,
            // A tribe our policies want is missing: asked again when room
            // for it frees (a tombstone collected changes no record).
            Some(asked) => !asked.missing.is_empty(),
        }
    }

    /// Says the policy errors whose message changed within a minute of the
    /// last one said, once that minute has passed: policies are evaluated
    /// again only when facts or policies change, and the newer cause would
    /// otherwise never be told.
    pub(super) fn say_held_policy_errors(&mut self) {
        let now = self.now_ms();
        let mut due = Vec::new();
        for (policy, e) in &mut self.reconcile.reported_errors {
            if now.saturating_sub(e.at) < POLICY_ERROR_REPEAT_MS {
                continue;
            }
            if let Some(message) = e.unsaid.take() {
                e.said = message.clone();
                e.at = now;
                due.push((policy.clone(), message));
            }
        }
        for (policy, message) in due {
            self.emit(Event::PolicyError { policy, message });
        }
    }

    /// Asks for every policy to be evaluated over our facts (see
    /// [`crate::policy_set`]), unless nothing changed since the last ask.
    pub(super) fn evaluate_policies(&mut self) {
        if self.left || self.stall_hold_until.is_some() {
            return;
        }
        let (policies, missing, room) = {
            let sh = lock(&self.shared);
            let view = View { state: &sh.state };
            let policies: Vec<PolicyInput> = view
                .policies()
                .into_iter()
                .map(|p| PolicyInput {
                    name: p.name,
                    tribe: p.tribe,
                    when: p.when,
                })
                .collect();
            let missing: BTreeSet<String> = self
                .record
                .policy_tribes
                .iter()
                .filter(|t| !view.tribe_exists(t))
                .cloned()
                .collect();
            let room = missing
                .first()
                .is_some_and(|t| sh.has_room(&Key::Tribe(t.clone())));
            (policies, missing, room)
        };
        let asked = PolicyAsked {
            facts: self.record.facts.clone(),
            policies,
            missing,
            room,
        };
        if self.reconcile.policy_asked.as_ref() == Some(&asked) {
            return;
        }
        self.reconcile.policy_seq += 1;
        let request = PolicyRequest {
            seq: self.reconcile.policy_seq,
            facts: asked.facts.clone(),
            policies: asked.policies.clone(),
        };
        self.reconcile.policy_asked = Some(asked);
        self.outputs.push_back(Output::EvaluatePolicies(request));
    }

    /// Takes the answer to the last policy request (older ones are
    /// ignored): updates our policy tribes, creates a target tribe that does
    /// not exist yet, and reports each new failure once.
    pub fn handle_policy_results(&mut self, now_ms: u64, results: PolicyResults) {
        self.tick(now_ms);
        if results.seq != self.reconcile.policy_seq || self.left {
            return;
        }
        let mut holding = BTreeSet::new();
        let mut held_by = Vec::new();
        let mut errors = BTreeMap::new();
        for (p, outcome) in results.outcomes {
            match outcome {
                PolicyOutcome::Holds => {
                    holding.insert(p.tribe.clone());
                    held_by.push((p.name, p.tribe));
                }
                PolicyOutcome::DoesNotHold => {}
                PolicyOutcome::Failed { message, transient } => {
                    if transient {
                        // Asked again at the next housekeeping.
                        self.reconcile.policy_asked = None;
                    }
                    errors.insert(p.name, message);
                }
            }
        }
        // A tribe a policy names is created when the policy first holds;
        // past the limit of tribes it cannot be, which the policy's error
        // says (it would do nothing, silently, otherwise).
        for (policy, tribe) in &held_by {
            let (exists, room, limit) = {
                let sh = lock(&self.shared);
                let key = Key::Tribe(tribe.clone());
                let exists = View { state: &sh.state }.tribe_exists(tribe);
                (exists, sh.has_room(&key), sh.limits.tribes)
            };
            if exists {
                continue;
            }
            if room {
                self.create_tribe_record(tribe);
            } else {
                errors.insert(
                    policy.clone(),
                    format!(
                        "tribe {tribe:?} does not exist and cannot be created: \
                         the limit of {limit} tribes is reached"
                    ),
                );
            }
        }
        // A failing policy is said again when its message changes, but not
        // more than once a minute: a message that quotes a fact's value
        // (`division by zero of Int(7)`) changes with every change of it.
        // A change within the minute is said when it ends
        // ([`Engine::say_held_policy_errors`]).
        let now = self.now_ms();
        let mut reported = BTreeMap::new();
        for (policy, message) in errors {
            let said = match self.reconcile.reported_errors.remove(&policy) {
                Some(mut before) if before.said == message => {
                    before.unsaid = None;
                    before
                }
                Some(mut before) if now.saturating_sub(before.at) < POLICY_ERROR_REPEAT_MS => {
                    before.unsaid = Some(message);
                    before
                }
                _ => {
                    self.emit(Event::PolicyError {
                        policy: policy.clone(),
                        message: message.clone(),
                    });
                    SaidError {
                        said: message,
                        at: now,
                        unsaid: None,
                    }
                }
            };
            reported.insert(policy, said);
        }
        // A policy that holds again is remembered for the rest of its
        // minute: a fact that flaps (set, removed, set) would otherwise
        // have its same error said at every flap.
        for (policy, mut before) in std::mem::take(&mut self.reconcile.reported_errors) {
            if now.saturating_sub(before.at) < POLICY_ERROR_REPEAT_MS {
                before.unsaid = None;
                reported.insert(policy, before);
            }
        }
        self.reconcile.reported_errors = reported;

        if holding != self.record.policy_tribes {
            self.record.policy_tribes = holding;
            self.publish_record();
        }
        self.after_change();
    }

    /// Creates a tribe. One created again after a deletion is a new
    /// incarnation, its era the deletion's version: writes made into the
    /// old one (concurrent with the deletion, or from a node that had not
    /// heard of it, also after this creation) belong to no tribe, and lose
    /// every conflict with this one's records of the same key.
    pub(super) fn create_tribe_record(&mut self, tribe: &str) {
        let key = Key::Tribe(tribe.to_string());
        let era = {
            let sh = lock(&self.shared);
            match sh.state.entry(&key) {
                Some(deleted) if deleted.value.is_none() => Some(deleted.version.clone()),
                Some(_) => None,
                // No record at all. Records of the tribe of a later era
                // than none are left from an incarnation whose deletion was
                // forgotten: this one's era comes after all of them, so
                // that none wins a conflict with its records. (Records of
                // no era may be a first tribe's whose record is on its way:
                // they keep theirs.)
                None => {
                    let children = View { state: &sh.state }.child_entries(tribe);
                    let latest_era = children.iter().filter_map(|e| e.era.clone()).max();
                    latest_era.map(|era| {
                        children
                            .iter()
                            .filter(|e| e.era.as_ref() == Some(&era))
                            .map(|e| e.version.clone())
                            .max()
                            .unwrap_or(era)
                    })
                }
            }
        };
        // Records written into the older tribe (at the moment of its
        // deletion, or by a node cut off from it) carry its era: they are
        // not this one's, whatever their versions.
        let after = era.clone();
        self.write(key, Some(Value::Tribe(TribeRecord { after, era })));
    }

    /// Whether `changes` may change what [`Engine::emit_view_changes`]
    /// derives: deriving it walks every tribe, too much to do for each
    /// write anywhere (a fact of a peer, say) once the state is large.
    fn view_may_have_changed(&mut self, changes: &BTreeSet<std::sync::Arc<Key>>) -> bool {
        // This node's own inputs are looked at again only when its record
        // changed (or it left): most changes are other records.
        let own_record_changed = changes
            .iter()
            .any(|k| matches!(&**k, Key::Node(n) if *n == self.name));
        let left_changed = self
            .reconcile
            .own_inputs
            .as_ref()
            .is_none_or(|(_, left)| *left != self.left);
        let mut own_changed = false;
        if own_record_changed || left_changed {
            let own = {
                let sh = lock(&self.shared);
                let tribes = match sh.state.get(&Key::Node(self.name.clone())) {
                    Some(Value::Node(r)) => r.policy_tribes.clone(),
                    _ => BTreeSet::new(),
                };
                (tribes, self.left)
            };
            own_changed = self.reconcile.own_inputs.as_ref() != Some(&own);
            self.reconcile.own_inputs = Some(own);
        }
        own_changed
            || changes.iter().any(|k| match &**k {
                Key::Tribe(_) => true,
                Key::Member { node, .. } => *node == self.name,
                Key::Plugin { tribe, .. } | Key::Task { tribe, .. } => {
                    self.reconcile.mine.contains_key(tribe)
                }
                _ => false,
            })
    }

    /// Compares the derived view with what was reported and emits the difference.
    pub(super) fn emit_view_changes(&mut self) {
        let (tribes, mine, plugins, tasks) = {
            let sh = lock(&self.shared);
            let view = View { state: &sh.state };
            let tribes = view.tribe_names();
            let mine: BTreeMap<String, Membership> = if self.left {
                BTreeMap::new()
            } else {
                view.memberships_of(&self.name)
            };
            let mut plugins = BTreeMap::new();
            let mut tasks = BTreeMap::new();
            for tribe in mine.keys() {
                for p in view.plugins(tribe) {
                    plugins.insert(
                        (p.tribe, p.name, p.version),
                        PluginRecord {
                            kind: p.kind,
                            artifact: p.artifact,
                        },
                    );
                }
                for t in view.tasks(tribe) {
                    tasks.insert(
                        (t.tribe, t.id),
                        TaskRecord {
                            manifest: t.manifest,
                            state: t.state,
                        },
                    );
                }
            }
            (tribes, mine, plugins, tasks)
        };

        // What ends is told first, from the inside out (tasks, plugins,
        // membership, the tribe), then what begins, from the outside in: a
        // host that drops a tribe's bookkeeping at its deletion hears of
        // nothing of it afterwards.
        let mut ending = Vec::new();
        let mut beginning = Vec::new();

        let old = std::mem::take(&mut self.reconcile.tasks);
        for ((tribe, id), rec) in &old {
            let now = tasks.get(&(tribe.clone(), id.clone()));
            let still_running = now.is_some_and(|n| n.state == crate::records::TaskState::Running);
            if rec.state == crate::records::TaskState::Running && !still_running {
                // The new record when the task was stopped (its new state),
                // the last one when it went away.
                ending.push(Event::TaskStop(task(tribe, id, now.unwrap_or(rec))));
            }
        }
        let mut runs = Vec::new();
        for ((tribe, id), rec) in &tasks {
            let before = old.get(&(tribe.clone(), id.clone()));
            if rec.state == crate::records::TaskState::Running && before != Some(rec) {
                runs.push(Event::TaskRun(task(tribe, id, rec)));
            }
        }
        self.reconcile.tasks = tasks;

        let old = std::mem::take(&mut self.reconcile.plugins);
        for ((tribe, name, version), rec) in &old {
            if plugins.get(&(tribe.clone(), name.clone(), version.clone())) != Some(rec) {
                ending.push(Event::PluginUnload(plugin_entry(tribe, name, version, rec)));
            }
        }
        let mut loads = Vec::new();
        for ((tribe, name, version), rec) in &plugins {
            if old.get(&(tribe.clone(), name.clone(), version.clone())) != Some(rec) {
                loads.push(Event::PluginLoad(plugin_entry(tribe, name, version, rec)));
            }
        }
        self.reconcile.plugins = plugins;

        let old = std::mem::take(&mut self.reconcile.mine);
        for t in old.keys().filter(|t| !mine.contains_key(*t)) {
            ending.push(Event::TribeLeft { tribe: t.clone() });
        }
        let mut joins = Vec::new();
        for (t, by) in &mine {
            if !old.contains_key(t) {
                joins.push(Event::TribeJoined {
                    tribe: t.clone(),
                    by: *by,
                });
            }
        }
        self.reconcile.mine = mine;

        let old = std::mem::take(&mut self.reconcile.tribes);
        for t in old.difference(&tribes) {
            ending.push(Event::TribeDeleted { tribe: t.clone() });
        }
        for t in tribes.difference(&old) {
            beginning.push(Event::TribeCreated { tribe: t.clone() });
        }
        self.reconcile.tribes = tribes;

        beginning.extend(joins);
        beginning.extend(loads);
        beginning.extend(runs);
        for event in ending.into_iter().chain(beginning) {
            self.emit(event);
        }
    }
}

fn plugin_entry(tribe: &str, name: &str, version: &str, rec: &PluginRecord) -> PluginEntry {
    PluginEntry {
        tribe: tribe.to_string(),
        name: name.to_string(),
        version: version.to_string(),
        kind: rec.kind,
        artifact: rec.artifact.clone(),
    }
}

fn task(tribe: &str, id: &str, rec: &TaskRecord) -> Task {
    Task {
        tribe: tribe.to_string(),
        id: id.to_string(),
        manifest: rec.manifest.clone(),
        state: rec.state,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Output;
    use crate::hlc::Hlc;
    use crate::policy_set::PolicySet;
    use crate::records::{Entry, PolicyRecord};

    /// Drains outputs, answering policy requests at once as the simulator
    /// does, and returns the events.
    fn drain_events(engine: &mut Engine, set: &mut PolicySet) -> Vec<Event> {
        let mut events = Vec::new();
        while let Some(o) = engine.poll_output() {
            match o {
                Output::Event(e) => events.push(e),
                Output::EvaluatePolicies(request) => {
                    let results = set.answer(&request);
                    engine.handle_policy_results(1_000, results);
                }
                _ => {}
            }
        }
        events
    }

    /// Takes `value` under `key` as a record written by peer `writer` at
    /// `millis`.
    fn from_peer(engine: &Engine, key: Key, value: Value, millis: u64, writer: &str) {
        let entry = Entry {
            version: Hlc {
                millis,
                counter: 0,
                node: writer.into(),
            },
            value: Some(value),
            era: None,
        };
        lock(&engine.shared).accept_remote(key, entry);
    }

    /// A started engine of no collected facts (only the policies' own),
    /// its start's outputs drained, and the set that answers its requests.
    fn started_without_host_facts() -> (Engine, PolicySet) {
        let mut cfg = crate::Config::new("n");
        cfg.collect_facts = false;
        let mut engine = Engine::started_for_test(&cfg);
        let mut set = PolicySet::new();
        drain_events(&mut engine, &mut set);
        (engine, set)
    }

    #[test]
    fn a_compiler_thread_that_could_not_start_is_not_remembered_as_a_bad_policy() {
        let cfg = crate::Config::new("n");
        let mut engine = Engine::started_for_test(&cfg);
        let mut set = PolicySet::new();
        drain_events(&mut engine, &mut set);
        // A policy from a peer, compiled while threads are short.
        crate::policy::FAIL_THREAD_START.with(|f| f.set(true));
        from_peer(&engine, Key::Policy("all".into()), Value::Policy(PolicyRecord {
                    tribe: "everyone".into(),
                    when: "true".into(),
                }), 900, "peer");
        engine.after_change();
        let events = drain_events(&mut engine, &mut set);
        assert!(
            events
                .iter()
                .any(|e| matches!(e, Event::PolicyError { .. })),
            "{events:?}"
        );
        crate::policy::FAIL_THREAD_START.with(|f| f.set(false));
        // Asked again at the next housekeeping, with no other change: it
        // compiles for real and the policy holds.
        engine.handle_timer(1_500, super::super::Timer::Housekeeping);
        drain_events(&mut engine, &mut set);
        assert!(engine.in_tribe("everyone"));
    }

    /// A member restarted under its name on another address is called
    /// there, also before its new record arrives (the last run's record
    /// named the old address, and calls failed there).
    #[test]
    fn a_member_restarted_elsewhere_is_called_where_it_is_now() {
        let (mut engine, mut set) = started_without_host_facts();
        engine
            .handle_command(1_100, crate::Command::CreateTribe { tribe: "t".into() })
            .unwrap();
        let old: std::net::SocketAddr = "127.0.0.1:7001".parse().unwrap();
        let now: std::net::SocketAddr = "127.0.0.1:7002".parse().unwrap();
        let record = crate::records::NodeRecord {
            addr: old,
            generation: 500,
            facts: BTreeMap::new(),
            policy_tribes: ["t".to_string()].into(),
            endpoints: vec![crate::Endpoint {
                name: "p".into(),
                version: "1".into(),
                kind: crate::PluginKind::Processor,
                addr: old,
            }],
            left: true,
            keys: Vec::new(),
            primary_key: None,
            artifacts: Vec::new(),
        };
        from_peer(&engine, Key::Node("h".into()), Value::Node(record), 1_000, "h");
        engine.after_change();
        drain_events(&mut engine, &mut set);
        let addr = |engine: &mut Engine| {
            engine
                .providers("t", "p", None, crate::PluginKind::Processor)
                .unwrap()
                .iter()
                .map(|p| p.addr)
                .collect::<Vec<_>>()
        };
        engine.members.up(&NodeId::new("h", old, 500), 1_200);
        assert_eq!(addr(&mut engine), [old]);
        engine.members.up(&NodeId::new("h", now, 900), 1_300);
        assert_eq!(addr(&mut engine), [now]);
    }

    #[test]
    fn a_policy_error_that_quotes_a_changing_fact_is_said_at_most_once_a_minute() {
        let (mut engine, mut set) = started_without_host_facts();
        let policy = crate::Command::AddPolicy {
            name: "p".into(),
            tribe: "t".into(),
            when: "has(facts.ctr) && int(facts.ctr) / 0 == 1".into(),
        };
        engine.handle_command(1_100, policy).unwrap();
        // The policy errors told after a fact change (or a housekeeping).
        fn told(engine: &mut Engine, set: &mut PolicySet, at: u64, ctr: Option<u64>) -> Vec<String> {
            match ctr {
                Some(value) => {
                    let fact = crate::Command::SetFact {
                        key: "ctr".into(),
                        value: value.to_string(),
                    };
                    engine.handle_command(at, fact).unwrap();
                }
                None => engine.handle_timer(at, super::super::Timer::Housekeeping),
            }
            drain_events(engine, set)
                .into_iter()
                .filter_map(|e| match e {
                    Event::PolicyError { message, .. } => Some(message),
                    _ => None,
                })
                .collect()
        }
        // Each value gives another message ("... of Int(7)").
        let said: usize = (0..20)
            .map(|i| told(&mut engine, &mut set, 2_000 + i * 100, Some(i)).len())
            .sum();
        assert_eq!(said, 1);
        // The last cause is told once the minute has passed, with no other
        // change to evaluate the policy again; once only.
        assert!(told(&mut engine, &mut set, 30_000, None).is_empty());
        let last = told(&mut engine, &mut set, 62_500, None);
        assert!(last.len() == 1 && last[0].contains("19"), "{last:?}");
        assert!(told(&mut engine, &mut set, 63_500, None).is_empty());
        assert_eq!(told(&mut engine, &mut set, 130_000, Some(99)).len(), 1);
    }

    #[test]
    fn a_tribe_created_again_leaves_out_writes_made_while_it_was_gone() {
        let mut cfg = crate::Config::new("n");
        cfg.collect_facts = false;
        let mut engine = Engine::started_for_test(&cfg);
        let tribe = |t: &str| crate::Command::CreateTribe { tribe: t.into() };
        engine.handle_command(1_100, tribe("x")).unwrap();
        engine
            .handle_command(1_200, crate::Command::DeleteTribe { tribe: "x".into() })
            .unwrap();
        // A peer that had not heard of the deletion loaded a plugin into
        // it after it (by the clock).
        from_peer(&engine, Key::Plugin {
                tribe: "x".into(),
                name: "pl".into(),
                version: "1".into(),
            }, Value::Plugin(crate::records::PluginRecord {
                    kind: crate::PluginKind::Processor,
                    artifact: None,
                }), 1_300, "peer");
        engine.after_change();
        assert!(engine.tribe("x").is_none());
        engine.handle_command(2_000, tribe("x")).unwrap();
        let again = engine.tribe("x").expect("created again");
        assert!(again.plugins.is_empty(), "{:?}", again.plugins);
        // What is loaded into the new tribe is in it.
        engine
            .handle_command(
                2_100,
                crate::Command::LoadPlugin {
                    tribe: "x".into(),
                    name: "pl".into(),
                    version: "2".into(),
                    kind: crate::PluginKind::Processor,
                    artifact: None,
                },
            )
            .unwrap();
        assert_eq!(engine.tribe("x").unwrap().plugins.len(), 1);
    }

    /// One side of a partition deletes a tribe and creates it again; the
    /// other, cut off, goes on writing into the old one, later by the
    /// clock. After the heal the new tribe holds only its own records: the
    /// cut-off side's removal of an entry of the same key loses to the new
    /// entry, and its membership and task stay out.
    #[test]
    fn writes_into_an_old_incarnation_stay_out_of_one_created_during_a_partition() {
        let mut cfg = crate::Config::new("n");
        cfg.collect_facts = false;
        let mut engine = Engine::started_for_test(&cfg);
        let load = |kind| crate::Command::LoadPlugin {
            tribe: "t".into(),
            name: "pa".into(),
            version: "1".into(),
            kind,
            artifact: None,
        };
        engine
            .handle_command(1_100, crate::Command::CreateTribe { tribe: "t".into() })
            .unwrap();
        engine
            .handle_command(1_200, load(crate::PluginKind::Collector))
            .unwrap();
        engine
            .handle_command(1_300, crate::Command::DeleteTribe { tribe: "t".into() })
            .unwrap();
        engine
            .handle_command(1_400, crate::Command::CreateTribe { tribe: "t".into() })
            .unwrap();
        engine
            .handle_command(1_500, load(crate::PluginKind::Processor))
            .unwrap();
        // The cut-off side's writes into the old tribe (era None), later.
        let cut_off = |millis: u64, key: Key, value: Option<Value>| {
            let entry = Entry {
                version: Hlc {
                    millis,
                    counter: 0,
                    node: "b".into(),
                },
                value,
                era: None,
            };
            lock(&engine.shared).accept_remote(key, entry)
        };
        let plugin = Key::Plugin {
            tribe: "t".into(),
            name: "pa".into(),
            version: "1".into(),
        };
        assert!(!cut_off(2_000, plugin, None), "an older era's removal lost");
        let member = Key::Member {
            tribe: "t".into(),
            node: "n4".into(),
        };
        cut_off(2_100, member, Some(Value::Member));
        engine.after_change();
        let t = engine.tribe("t").unwrap();
        assert_eq!(t.plugins.len(), 1, "{:?}", t.plugins);
        assert_eq!(t.plugins[0].kind, crate::PluginKind::Processor);
        assert!(t.explicit_members.is_empty(), "{:?}", t.explicit_members);
    }

    #[test]
    fn writes_made_while_a_tribe_was_gone_stay_out_after_its_deletion_is_forgotten() {
        let mut cfg = crate::Config::new("n");
        cfg.collect_facts = false;
        let mut timings = crate::Profile::Lan.timings();
        timings.tombstone_grace = std::time::Duration::from_secs(10);
        cfg.timings = Some(timings);
        let mut engine = Engine::started_for_test(&cfg);
        let tribe = |t: &str| crate::Command::CreateTribe { tribe: t.into() };
        engine.handle_command(1_100, tribe("x")).unwrap();
        engine.handle_command(1_100, tribe("kept")).unwrap();
        engine
            .handle_command(1_200, crate::Command::DeleteTribe { tribe: "x".into() })
            .unwrap();
        let plugin = |tribe: &str, millis: u64| {
            (
                Key::Plugin {
                    tribe: tribe.into(),
                    name: "pl".into(),
                    version: "1".into(),
                },
                Entry {
                    version: Hlc {
                        millis,
                        counter: 0,
                        node: "peer".into(),
                    },
                    value: Some(Value::Plugin(crate::records::PluginRecord {
                        kind: crate::PluginKind::Processor,
                        artifact: None,
                    })),
                    era: None,
                },
            )
        };
        // Written into x by a peer that had not heard of its deletion, and
        // into a tribe that exists.
        for (key, entry) in [plugin("x", 1_300), plugin("kept", 1_300)] {
            assert!(lock(&engine.shared).accept_remote(key, entry));
        }
        // The deletion is forgotten after the grace; the record written
        // into x goes with it, the one in `kept` stays.
        engine.handle_timer(12_000, super::super::Timer::Housekeeping);
        let held = |engine: &Engine, tribe: &str| {
            lock(&engine.shared).state.entry(&plugin(tribe, 0).0).is_some()
        };
        assert!(!held(&engine, "x"));
        assert!(held(&engine, "kept"));
        // A peer that kept it sends it back: swept within a minute.
        let (key, entry) = plugin("x", 1_300);
        lock(&engine.shared).accept_remote(key, entry);
        engine.handle_timer(72_500, super::super::Timer::Housekeeping);
        assert!(!held(&engine, "x"));
        // One it takes back in before the next sweep is not the new
        // tribe's either, and loses to its records of the same key.
        let (key, mut entry) = plugin("x", 72_600);
        entry.era = Some(Hlc {
            millis: 1_200,
            counter: 0,
            node: "n".into(),
        });
        assert!(lock(&engine.shared).accept_remote(key, entry));
        engine.handle_command(73_000, tribe("x")).unwrap();
        assert!(engine.tribe("x").unwrap().plugins.is_empty());
        engine
            .handle_command(
                73_100,
                crate::Command::LoadPlugin {
                    tribe: "x".into(),
                    name: "pl".into(),
                    version: "1".into(),
                    kind: crate::PluginKind::Collector,
                    artifact: None,
                },
            )
            .unwrap();
        assert_eq!(engine.tribe("x").unwrap().plugins.len(), 1);
        assert_eq!(engine.tribe("kept").unwrap().plugins.len(), 1);
        assert_eq!(engine.counters().stale_records_dropped, 2);
    }

    fn policy_requests(engine: &mut Engine) -> Vec<PolicyRequest> {
        std::iter::from_fn(|| engine.poll_output())
            .filter_map(|o| match o {
                Output::EvaluatePolicies(r) => Some(r),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn policies_are_evaluated_outside_the_engine_and_stale_answers_are_ignored() {
        let (mut engine, mut set) = started_without_host_facts();
        let add = crate::Command::AddPolicy {
            name: "kv".into(),
            tribe: "kv".into(),
            when: r#"facts.k == "v""#.into(),
        };
        engine.handle_command(1_100, add).unwrap();
        let first = policy_requests(&mut engine);
        assert_eq!(
            first.len(),
            1,
            "one request, not an evaluation in the engine"
        );
        engine
            .handle_command(
                1_200,
                crate::Command::SetFact {
                    key: "k".into(),
                    value: "v".into(),
                },
            )
            .unwrap();
        let second = policy_requests(&mut engine);
        assert_eq!(second.len(), 1);
        assert!(second[0].seq > first[0].seq);
        assert!(!engine.in_tribe("kv"), "nothing holds before an answer");
        // The answer to the newer request counts; the older one is stale.
        let newer = set.answer(&second[0]);
        engine.handle_policy_results(1_300, newer);
        assert!(engine.in_tribe("kv"));
        let older = set.answer(&first[0]);
        assert_ne!(older.outcomes[0].1, crate::policy_set::PolicyOutcome::Holds);
        engine.handle_policy_results(1_400, older);
        assert!(engine.in_tribe("kv"));
        // Nothing changed: no new request.
        engine.after_change();
        assert!(policy_requests(&mut engine).is_empty());
    }
}
