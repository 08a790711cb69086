//! What a node keeps across restarts: the peers it knew (so it can rejoin
//! without seeds), its last generation (so a restart is newer even if the
//! clock stepped back), and the replicated records — tribes, memberships,
//! policies, plugin entries, tasks and their deletions — so that a restart
//! of the whole cluster loses nothing. The engine only builds and takes
//! this value; the runtime reads and writes the file.
//!
//! A node that was out of contact for longer than the tombstone grace may
//! hold records whose deletions the others have since forgotten. It keeps
//! such records *pending*: invisible, never sent, until an exchange with a
//! peer shows whether the peer still knows them (kept) or not (dropped), so
//! a deleted tribe does not come back.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::delta::lock;
use super::Engine;
use crate::hlc::Hlc;
use crate::records::{self, Entry, Key};

/// Durable part of a node's knowledge.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Durable {
    /// The node that wrote it (empty in files from before it was kept): a
    /// node under another name refuses the dir rather than take on the
    /// writer's facts and peers.
    #[serde(default)]
    pub name: String,
    /// Addresses of the members that were up, this node excluded.
    pub peers: Vec<SocketAddr>,
    /// Replicated records (deletions included, so a leave is not undone by
    /// a restart); node records and keyring records are not kept here.
    pub records: Vec<(Key, Entry)>,
    /// This node's SWIM generation when this was written.
    #[serde(default)]
    pub generation: u64,
    /// When this node last completed an exchange with a peer (engine clock,
    /// ms; 0 if never).
    #[serde(default)]
    pub last_contact_ms: u64,
    /// This node's facts set (a value) or removed (`None`) by commands, in
    /// any earlier run: applied over the configured facts at a restart.
    #[serde(default)]
    pub fact_changes: BTreeMap<String, Option<String>>,
}

/// The most peers the data dir keeps: all of them a restart dials at once
/// as seeds, a bound on that burst in a large tribe.
pub const MAX_KEPT_PEERS: usize = 64;

/// How long, after a stall and once a peer is up, records wait for a peer
/// to decide them before they are taken back unconfirmed.
const STALL_HOLD_MS: u64 = 30_000;

/// 2200-01-01 in ms since the Unix epoch: a kept time past this is no
/// clock's, and is not taken as this node's floor.
const LATEST_PLAUSIBLE_MS: u64 = 7_258_118_400_000;

/// Furthest ahead of this node's clock a kept time is taken as its floor:
/// a tribe whose clocks ran hours or days fast keeps its history; one
/// record dated decades ahead (an edited or damaged file) must not move
/// every write of this node past its peers' horizon.
const MAX_KEPT_AHEAD_MS: u64 = 30 * 24 * 3600 * 1000;

/// Whether a time kept in the data dir (a record's version, the node's
/// generation) may be taken at `now_ms`: neither past any clock's reading
/// nor more than [`MAX_KEPT_AHEAD_MS`] ahead.
pub(crate) fn plausible_kept_ms(ms: u64, now_ms: u64) -> bool {
    ms <= LATEST_PLAUSIBLE_MS && ms <= now_ms.saturating_add(MAX_KEPT_AHEAD_MS)
}

/// Longest a node restarted from its data dir holds its view still while
/// it waits for its first exchange (see [`Engine::restore`]).
const RESTART_VIEW_HOLD_MS: u64 = 5_000;

/// Whether a record belongs in the data dir.
fn kept(key: &Key) -> bool {
    !matches!(key, Key::Node(_) | Key::RingKey(_) | Key::RingPrimary)
}

impl Engine {
    /// The durable part of what this node knows now. While it knows no
    /// peer at all (alone since a restart, or every member reaped), the
    /// last peers it knew are kept.
    pub fn durable(&mut self) -> Durable {
        let mut peers = self.peers_to_keep();
        if peers.is_empty() {
            peers = self.last_kept.clone();
        } else {
            self.last_kept = peers.clone();
        }
        let sh = lock(&self.shared);
        let mut records: Vec<(Key, Entry)> = sh
            .state
            .iter()
            .filter(|(k, _)| kept(k))
            .map(|(k, e)| (k.clone(), e.clone()))
            .collect();
        records.extend(self.pending.iter().map(|(k, e)| (k.clone(), e.clone())));
        Durable {
            name: self.name.clone(),
            peers,
            records,
            generation: self.swim.identity().generation,
            // While records are held, the contact before the hold: a
            // restart meanwhile holds them again (exchanges with peers that
            // held them too, which decide nothing, are no contact).
            last_contact_ms: self.held_contact_ms.unwrap_or(self.last_contact_ms),
            fact_changes: self.fact_changes.clone(),
        }
    }

    /// The peers the data dir keeps, for a restart without seeds: every
    /// member this node knows, up ones first, then those that failed or
    /// left, then the peers an earlier run kept that this one has not met;
    /// at most [`MAX_KEPT_PEERS`]. Not only those up: a rolling restart of
    /// the whole tribe stops its nodes one by one and brings them back in
    /// any order, and each must find whichever came back first (keeping
    /// only the peers up at its stop, the first to stop knew none of the
    /// earlier ones, and the tribe came back as islands).
    fn peers_to_keep(&self) -> Vec<SocketAddr> {
        let own = self.swim.identity().addr;
        let mut up = BTreeSet::new();
        let mut down = BTreeSet::new();
        for (_, r) in self.members.iter() {
            if r.state.is_up() {
                up.insert(r.id.addr);
            } else {
                down.insert(r.id.addr);
            }
        }
        let mut peers: Vec<SocketAddr> = Vec::new();
        for addr in up.iter().chain(&down).chain(&self.unmet_kept_peers()) {
            if peers.len() == MAX_KEPT_PEERS {
                break;
            }
            if *addr != own && !peers.contains(addr) {
                peers.push(*addr);
            }
        }
        peers
    }

    /// The peers an earlier run kept that this run has not met (no member
    /// at their address), while they are still tried.
    pub(super) fn unmet_kept_peers(&self) -> Vec<SocketAddr> {
        if self.now_ms() >= self.kept_until_ms {
            return Vec::new();
        }
        let known: BTreeSet<SocketAddr> = self.members.iter().map(|(_, r)| r.id.addr).collect();
        self.kept_peers
            .iter()
            .filter(|a| !known.contains(a))
            .copied()
            .collect()
    }

    /// Changes whenever [`Engine::durable`] may have changed.
    pub fn durable_revision(&self) -> (u64, usize, usize, usize) {
        let revision = lock(&self.shared).state.revision();
        (
            revision,
            self.pending.len(),
            self.members.count_up(),
            self.fact_revision,
        )
    }

    /// Takes back what an earlier run kept. Records go through the same
    /// checks and last-writer-wins merge as records from a peer, so a newer
    /// change made while this node was down still wins. Call before
    /// [`Engine::start`]; the peers become extra seeds.
    pub fn restore(&mut self, now_ms: u64, durable: Durable) {
        self.tick(now_ms);
        self.last_contact_ms = durable.last_contact_ms;
        self.restore_facts(durable.fact_changes);
        let grace = self.timings.tombstone_grace.as_millis() as u64;
        let away = durable.last_contact_ms > 0
            && durable.last_contact_ms.saturating_add(grace) < self.now_ms();
        {
            let mut sh = lock(&self.shared);
            // Only from records that will be taken, and no later than any
            // clock could read: one bad record in the file must not move
            // this node's writes past every peer's horizon.
            let floor = durable
                .records
                .iter()
                .filter(|(k, e)| kept(k) && records::validate(k, e).is_ok())
                .map(|(_, e)| e.version.millis)
                .chain([durable.generation])
                .filter(|&ms| plausible_kept_ms(ms, sh.now_ms))
                .max()
                .unwrap_or(0);
            if floor > sh.horizon_ms() {
                let ahead_s = floor.saturating_sub(sh.now_ms) / 1000;
                tracing::warn!(
                    ahead_s,
                    "the data dir holds writes from up to {ahead_s} s ahead of this node's clock: the clock stepped back, or the tribe's clocks ran fast and were set right; writes and generations up to that time are taken (a node that keeps no such data dir refuses them until its clock gets there: fix the clocks)"
                );
            }
            sh.kept_floor_ms = floor;
            let mut implausible = 0usize;
            // Told as the file's, not blamed on a peer: the first one's
            // reason, and how many.
            let mut invalid: (usize, Option<String>) = (0, None);
            for (key, entry) in durable.records {
                if !kept(&key) {
                    continue;
                }
                if let Err(e) = records::validate(&key, &entry) {
                    invalid.0 += 1;
                    invalid.1.get_or_insert_with(|| e.to_string());
                    continue;
                }
                if !plausible_kept_ms(entry.version.millis, sh.now_ms) {
                    implausible += 1;
                    continue;
                }
                if away {
                    if entry.value.is_some() {
                        // As a merge would: this node's next writes order
                        // after what it kept.
                        sh.clock.observe(&entry.version);
                        self.pending.insert(key, entry);
                    }
                } else {
                    sh.accept_remote(key, entry);
                }
            }
            if let (records @ 1.., Some(first)) = invalid {
                tracing::warn!(
                    records,
                    first = %first,
                    "records in the data dir that break the rules (an edited or damaged file) are not taken"
                );
            }
            if implausible > 0 {
                tracing::warn!(
                    records = implausible,
                    "records in the data dir dated more than 30 days ahead of this node's clock \
                     (an edited or damaged file, or this clock far behind: fix it) are not taken"
                );
            }
        }
        if !away && durable.last_contact_ms > 0 {
            let upto = lock(&self.shared).clock.latest();
            self.absence_unchecked = Some((durable.last_contact_ms, upto));
        }
        if away {
            // Held as after a stall (see `hold_after_stall`): a peer that
            // holds them pending too (restarted with this node) decides
            // nothing, or the two would vouch for records deleted meanwhile.
            // Past the kept records too (the clock has seen them): once
            // back after an isolated hold, the next hold takes them again.
            self.stall_unconfirmed = Some(lock(&self.shared).clock.latest());
            self.held_contact_ms = Some(durable.last_contact_ms);
            tracing::info!(
                records = self.pending.len(),
                "out of contact for longer than the tombstone grace: kept records wait for a peer to confirm them"
            );
        }
        let me = self.swim.identity().addr;
        self.kept_peers = durable
            .peers
            .into_iter()
            .filter(|p| *p != me)
            .take(MAX_KEPT_PEERS)
            .collect();
        // Tried as long as a failed member would be, before it is reaped.
        self.kept_until_ms = self
            .now_ms()
            .saturating_add(self.timings.reap_after.as_millis() as u64);
        for peer in &self.kept_peers {
            if !self.seeds.contains(peer) {
                self.seeds.push(*peer);
            }
        }
        self.last_kept = self.kept_peers.clone();
        // What changed while this node was down reaches it in its first
        // exchange: until then (or RESTART_VIEW_HOLD_MS), its view holds
        // still, so that it does not load, run and then undo what was
        // deleted or stopped meanwhile.
        let restored = !lock(&self.shared).state.is_empty();
        if restored && !away && !self.seeds.is_empty() {
            self.view_held_until = Some(self.now_ms().saturating_add(RESTART_VIEW_HOLD_MS));
        }
    }

    /// Lets the view held since a restart go: at its first exchange, or
    /// once that is overdue.
    pub(super) fn release_restart_view(&mut self, exchanged: bool) {
        let Some(until) = self.view_held_until else {
            return;
        };
        if exchanged || self.now_ms() >= until {
            self.view_held_until = None;
            self.emit_view_changes();
        }
    }

    /// After a stall longer than the tombstone grace (`stalled_ms`; a
    /// suspended host or VM: no input at all), records this node holds may
    /// have been deleted meanwhile and their tombstones collected by its
    /// peers: sent to them, they would come back everywhere. They wait for
    /// a peer to confirm them, as a restart's records do after as long an
    /// absence (see [`Engine::hold_after_stall`]).
    pub(super) fn after_stall(&mut self, stalled_ms: u64) {
        if self.stall_unconfirmed.is_some() {
            return;
        }
        tracing::warn!(
            stalled_s = stalled_ms / 1000,
            "this node ran nothing for longer than the tombstone grace (a suspended host or VM): \
             its records wait for a peer to confirm them, so that none deleted meanwhile comes back"
        );
        self.stall_unconfirmed = Some(lock(&self.shared).clock.latest());
        self.held_contact_ms = Some(self.last_contact_ms);
        self.hold_after_stall(false);
    }

    /// At the first contact after a restart that this node's clock put
    /// within the grace: a peer clock (`their_ms`, of an admitted peer)
    /// past the kept last contact plus the grace means this node's clock
    /// stepped back (a dead RTC battery, a clock set by hand), and it was
    /// away as long: its kept records are held as after a long absence
    /// (a tribe deleted meanwhile came back everywhere). Call before
    /// [`Engine::hold_after_stall`] with `contact`.
    pub(super) fn check_absence(&mut self, their_ms: u64) {
        let Some((last_contact_ms, upto)) = self.absence_unchecked.take() else {
            return;
        };
        let grace = self.timings.tombstone_grace.as_millis() as u64;
        if last_contact_ms.saturating_add(grace) >= their_ms || self.stall_unconfirmed.is_some() {
            return;
        }
        tracing::warn!(
            behind_s = their_ms.saturating_sub(self.now_ms()) / 1000,
            "a peer's clock says this node was out of contact for longer than the tombstone grace \
             (its clock is behind, or stepped back across the restart): kept records wait for a \
             peer to confirm them; fix the clock"
        );
        self.stall_unconfirmed = Some(upto);
        self.held_contact_ms = Some(last_contact_ms);
    }

    /// Holds the records of a node woken from a stall once a peer is up
    /// (after every input), or talks to it (`contact`: before this node
    /// answers its exchange). While held, they are pending, and this node's
    /// view (its events) and policies hold still, so that confirmed
    /// records cause no churn. With no peer up, no one can confirm them:
    /// they stay as they are until one is (a link that comes up after the
    /// wake).
    pub(super) fn hold_after_stall(&mut self, contact: bool) {
        let Some(upto) = self.stall_unconfirmed else {
            return;
        };
        if self.stall_hold_until.is_some() || (!contact && self.members.count_up() == 0) {
            return;
        }
        // Only what was written before the stall or the restart: a command
        // given since is news, and no peer could vouch for it yet.
        let taken = lock(&self.shared)
            .state
            .take_live(|k, e| kept(k) && (e.version.millis, e.version.counter) <= upto);
        // Records restored after a long absence are pending already.
        if taken.is_empty() && self.pending.is_empty() {
            self.stall_unconfirmed = None;
            self.held_contact_ms = None;
            return;
        }
        self.pending.extend(taken);
        tracing::info!(
            records = self.pending.len(),
            "records held until a peer confirms them (after a stall or a long absence)"
        );
        self.stall_hold_until = Some(self.now_ms().saturating_add(STALL_HOLD_MS));
        self.stall_undecided_by.clear();
    }

    /// Ends the hold of [`Engine::hold_after_stall`] once its records are
    /// resolved; when every member held them too (a tribe that slept
    /// together), or no peer decided them in time, they are kept. When no
    /// peer is up any more, they are back until one is.
    pub(super) fn end_stall_hold_when_due(&mut self) {
        let Some(until) = self.stall_hold_until else {
            return;
        };
        if !self.pending.is_empty() {
            // No peer up, and none answered since the hold began: a peer
            // that answers before SWIM counts it up (a restart's first
            // exchange, with a kept peer) is contact, and the records must
            // not come back (and be pushed to it in that very exchange).
            let isolated = self.members.count_up() == 0 && self.stall_undecided_by.is_empty();
            // Every member slept too (a tribe suspended as a whole): no one
            // is left to decide, and waiting would only hide the records.
            // Failed ones count: sleepers cut off from the others may see
            // them down, and must not vouch for each other sooner.
            // So do the peers an earlier run kept and this one has not met
            // yet: nodes restarted together meet each other first.
            let all_held = self
                .members
                .iter()
                .filter(|(_, r)| r.state != super::members::MemberState::Left)
                .all(|(name, _)| self.stall_undecided_by.contains(name))
                && self.unmet_kept_peers().is_empty();
            if self.now_ms() < until && !isolated && !all_held {
                // Only an exchange this node opens decides them: one with
                // each peer in turn, not one a push-pull interval; a peer
                // that held them too is not asked again (failed members,
                // never asked, keep the hold to its end).
                if !self.conns.values().any(|x| x.initiator) {
                    let unasked: Vec<_> = self
                        .up_peers()
                        .into_iter()
                        .filter(|id| !self.stall_undecided_by.contains(&*id.name))
                        .collect();
                    if !unasked.is_empty() {
                        let i = rand::RngExt::random_range(&mut self.rng, 0..unasked.len());
                        self.exchange_with(&unasked[i]);
                    }
                }
                return;
            }
            let back: Vec<(Key, Entry)> = std::mem::take(&mut self.pending).into_iter().collect();
            if isolated {
                tracing::info!(
                    records = back.len(),
                    "no peer is up: the records held since the stall are back until one is"
                );
            } else {
                let why = if all_held {
                    "every member held them too (the tribe slept together)"
                } else {
                    "no peer decided them in time"
                };
                tracing::info!(
                    records = back.len(),
                    "the records held since the stall are kept as they were: {why}"
                );
                self.stall_unconfirmed = None;
                self.held_contact_ms = None;
            }
            // Not spread: queued gossip would carry them to the first peer
            // met, before any exchange could decide them.
            let mut sh = lock(&self.shared);
            for (key, entry) in back {
                sh.accept_remote(key, entry);
            }
        } else {
            self.stall_unconfirmed = None;
            self.held_contact_ms = None;
        }
        self.stall_hold_until = None;
        self.evaluate_policies();
        self.emit_view_changes();
    }

    /// After an exchange that covered the buckets `covered`, in which the
    /// peer held `theirs` and held `undecided` pending too: pending records
    /// the peer knows are merged (it may hold a newer version or the
    /// deletion), those it holds pending too stay pending, the others are
    /// dropped.
    pub(super) fn resolve_pending(
        &mut self,
        covered: &BTreeSet<usize>,
        theirs: &BTreeMap<Key, Hlc>,
        undecided: &BTreeSet<Key>,
    ) {
        if self.pending.is_empty() {
            return;
        }
        let (resolved, keep): (BTreeMap<Key, Entry>, BTreeMap<Key, Entry>) =
            std::mem::take(&mut self.pending)
                .into_iter()
                .partition(|(k, _)| {
                    covered.contains(&crate::state::bucket_of(k)) && !undecided.contains(k)
                });
        self.pending = keep;
        let mut confirmed = Vec::new();
        let mut dropped = 0u64;
        for (key, entry) in resolved {
            if theirs.contains_key(&key) {
                confirmed.push((key, entry));
            } else {
                dropped += 1;
            }
        }
        if dropped > 0 {
            tracing::info!(
                dropped,
                "records kept from before a long absence are unknown to the cluster (deleted since): dropped"
            );
        }
        lock(&self.shared).counters.stale_records_dropped += dropped;
        self.merge_records(confirmed);
        if self.pending.is_empty() {
            self.end_stall_hold_when_due();
        }
    }
}

impl Engine {
    /// Applies the fact commands of earlier runs over the configured facts
    /// (each checked again, as the file may have been edited).
    fn restore_facts(&mut self, changes: BTreeMap<String, Option<String>>) {
        if changes.is_empty() {
            return;
        }
        // Removals first: each frees a place a kept fact may need.
        let (removals, sets): (Vec<_>, Vec<_>) =
            changes.into_iter().partition(|(_, value)| value.is_none());
        for (key, value) in removals.into_iter().chain(sets) {
            // The configuration's value loses to a command's, kept from an
            // earlier run: said, or an edited `--fact` seems ignored.
            if self.user_facts.get(&key).is_some_and(|c| Some(c) != value.as_ref()) {
                tracing::info!(
                    fact = %crate::keyfile::withhold_keys(&key),
                    "a configured fact is overridden by a command kept in the data dir ({}); a command changes it",
                    if value.is_some() { "set" } else { "removed" }
                );
            }
            match &value {
                Some(v) if crate::facts::validate_fact(&key, v).is_err() => {
                    tracing::warn!(fact = %crate::keyfile::withhold_keys(&key), "a kept fact is not valid; dropped");
                    continue;
                }
                Some(_) if self.over_fact_limit_with(&key) => {
                    // Peers would refuse the whole record and keep the old.
                    tracing::warn!(
                        fact = %key,
                        "a kept fact would pass the limit of {} facts a node has (the configured and collected ones first); dropped",
                        crate::records::limits::MAX_FACTS
                    );
                    continue;
                }
                Some(v) => {
                    self.user_facts.insert(key.clone(), v.clone());
                }
                None => {
                    self.user_facts.remove(&key);
                }
            }
            self.note_fact_change(key, value);
        }
        self.facts_changed();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::commands::Command;
    use crate::Config;

    fn engine(facts: &[(&str, &str)]) -> Engine {
        let mut cfg = Config::new("keeper");
        // No host facts are handed in below: none count against the cap.
        cfg.collect_facts = false;
        for (k, v) in facts {
            cfg.facts.insert(k.to_string(), v.to_string());
        }
        let me: SocketAddr = "127.0.0.1:7000".parse().unwrap();
        let mut e = Engine::new(&cfg, me, 1, Default::default(), 1_000, 7).unwrap();
        e.start(1_000);
        while e.poll_output().is_some() {}
        e
    }

    fn set(e: &mut Engine, key: &str, value: Option<&str>) {
        let cmd = match value {
            Some(v) => Command::SetFact {
                key: key.into(),
                value: v.into(),
            },
            None => Command::RemoveFact { key: key.into() },
        };
        e.handle_command(2_000, cmd).unwrap();
    }

    #[test]
    fn fact_commands_are_kept_only_where_they_differ_from_the_configured_facts() {
        let mut e = engine(&[("rack", "r1")]);
        // Keys set and removed again leave nothing behind.
        for i in 0..100 {
            let key = format!("job{i}");
            set(&mut e, &key, Some("x"));
            set(&mut e, &key, None);
        }
        assert!(e.durable().fact_changes.is_empty());
        // A configured fact changed, removed, and set back.
        set(&mut e, "rack", Some("r2"));
        assert_eq!(e.durable().fact_changes["rack"].as_deref(), Some("r2"));
        set(&mut e, "rack", None);
        assert_eq!(e.durable().fact_changes["rack"], None);
        set(&mut e, "rack", Some("r1"));
        assert!(e.durable().fact_changes.is_empty());
        // A restart applies what differs, dropping what is not valid.
        set(&mut e, "role", Some("db"));
        let mut kept = e.durable();
        kept.fact_changes.insert("bad key".into(), Some("x".into()));
        kept.fact_changes.insert("gone".into(), None);
        let mut again = engine(&[("rack", "r1")]);
        again.restore(3_000, kept);
        let changes = again.durable().fact_changes;
        assert_eq!(changes.len(), 1, "{changes:?}");
        assert_eq!(again.merged_facts().get("role").map(String::as_str), Some("db"));
    }

    /// A kept removal frees its place for a kept fact, whatever their keys'
    /// order.
    #[test]
    fn a_kept_removal_frees_a_place_for_a_kept_fact() {
        let max = crate::records::limits::MAX_FACTS;
        let mut names: Vec<String> = (0..max - 1).map(|i| format!("f{i:03}")).collect();
        names.push("zzz".into());
        let configured: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "x")).collect();
        let mut again = engine(&configured);
        let kept = Durable {
            fact_changes: [("aaa".to_string(), Some("1".to_string())), ("zzz".to_string(), None)]
                .into_iter()
                .collect(),
            ..Durable::default()
        };
        again.restore(3_000, kept);
        let facts = again.merged_facts();
        assert_eq!(facts.get("aaa").map(String::as_str), Some("1"), "{}", facts.len());
        assert!(!facts.contains_key("zzz"));
        assert_eq!(facts.len(), max);
    }

    /// Kept facts never take a restarted node past the limit of facts a
    /// peer accepts in a record (configured facts come first), so its
    /// record keeps spreading; a kept change to a fact it has still applies.
    #[test]
    fn kept_facts_stop_at_the_limit_a_peer_accepts() {
        let max = crate::records::limits::MAX_FACTS;
        let mut e = engine(&[]);
        for i in 0..max - e.merged_facts().len() {
            set(&mut e, &format!("f{i:03}"), Some("x"));
        }
        assert_eq!(e.merged_facts().len(), max);
        let kept = e.durable();
        let mut again = engine(&[("new1", "1"), ("new2", "2"), ("f000", "configured")]);
        again.restore(3_000, kept);
        let facts = again.merged_facts();
        assert_eq!(facts.len(), max, "a restart passed the limit");
        assert_eq!(facts["new1"], "1");
        assert_eq!(facts["new2"], "2");
        assert_eq!(facts["f000"], "x", "a kept change to a configured fact applies");
        let record = crate::records::Value::Node(again.record.clone());
        let entry = crate::records::Entry {
            version: crate::hlc::Hlc {
                millis: 1,
                counter: 0,
                node: "keeper".into(),
            },
            value: Some(record),
            era: None,
        };
        assert!(crate::records::validate(&Key::Node("keeper".into()), &entry).is_ok());
    }
    /// A record in the file that fails its checks is the file's fault:
    /// not taken, and not counted as a peer's refused record; the valid
    /// ones beside it are taken.
    #[test]
    fn an_invalid_kept_record_is_not_blamed_on_a_peer() {
        let entry = Entry {
            version: Hlc {
                millis: 2_500,
                counter: 0,
                node: "keeper".into(),
            },
            value: Some(records::Value::Member),
            era: None,
        };
        let member = |tribe: &str| Key::Member {
            tribe: tribe.into(),
            node: "x".into(),
        };
        let (bad, good) = (member("-bad name"), member("good"));
        assert!(records::validate(&bad, &entry).is_err());
        let mut e = engine(&[]);
        let kept = Durable {
            records: vec![(bad.clone(), entry.clone()), (good.clone(), entry)],
            ..Durable::default()
        };
        e.restore(3_000, kept);
        let sh = lock(&e.shared);
        assert_eq!(sh.counters.invalid_records, 0);
        assert!(sh.state.entry(&good).is_some());
        assert!(sh.state.entry(&bad).is_none());
    }

    /// A record in the file that fails its checks, or dated past any clock,
    /// moves neither the horizon nor this node's next writes.
    #[test]
    fn a_bad_or_far_future_kept_record_does_not_become_the_floor() {
        for far in [9_000_000_000_000_000u64, 3_000 + MAX_KEPT_AHEAD_MS + 1] {
            far_kept_record_is_no_floor(far);
        }
    }

    fn far_kept_record_is_no_floor(far: u64) {
        let entry = |node: &str| Entry {
            version: Hlc {
                millis: far,
                counter: 0,
                node: node.into(),
            },
            value: Some(records::Value::Member),
            era: None,
        };
        let invalid = Key::Member {
            tribe: "no such tribe!".into(),
            node: "x".into(),
        };
        assert!(records::validate(&invalid, &entry("keeper")).is_err());
        let valid = Key::Member {
            tribe: "t".into(),
            node: "x".into(),
        };
        for key in [invalid, valid] {
            let mut e = engine(&[]);
            let kept = Durable {
                records: vec![(key.clone(), entry("keeper"))],
                ..Durable::default()
            };
            e.restore(3_000, kept);
            assert!(lock(&e.shared).horizon_ms() < far, "{key:?}");
            e.handle_command(
                4_000,
                Command::CreateTribe {
                    tribe: "mine".into(),
                },
            )
            .unwrap();
            let sh = lock(&e.shared);
            let mine = sh.state.entry(&Key::Tribe("mine".into())).unwrap();
            assert!(mine.version.millis < far, "{key:?}");
        }
    }
}
