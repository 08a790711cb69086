//! Commands (local writes) and snapshot reads.

use std::num::{NonZeroU8, NonZeroUsize};

use crate::error::{Error, Result};
use crate::names;
use crate::records::{
    ArtifactRef, Entry, Key, PluginKind, PluginRecord, PolicyRecord, TaskRecord, TaskState, Value,
};

use super::delta::lock;
use super::view::{MemberInfo, MemberState, Policy, TribeInfo, View};
use super::Engine;

/// How long a peer's refusal of this node's key is shown (ms).
const KEY_REFUSAL_SHOWN_MS: u64 = 60_000;

/// Most members a leaving node sends its goodbye to directly; the others
/// hear it from them.
const LEAVE_FANOUT: usize = 128;
/// Most members a leaving node pushes its record to directly when it is too
/// large for gossip.
const LEAVE_SYNCS: usize = 16;

/// A mutation requested by the application.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Command {
    /// Create an empty tribe.
    CreateTribe {
        /// Tribe name.
        tribe: String,
    },
    /// Delete a tribe with its catalog, its memberships and the policies targeting it.
    DeleteTribe {
        /// Tribe name.
        tribe: String,
    },
    /// Add a node to a tribe by hand.
    Join {
        /// Tribe name.
        tribe: String,
        /// Node name.
        node: String,
    },
    /// Remove a node's membership by hand.
    Leave {
        /// Tribe name.
        tribe: String,
        /// Node name.
        node: String,
    },
    /// Add a policy.
    AddPolicy {
        /// Policy name.
        name: String,
        /// Target tribe.
        tribe: String,
        /// CEL expression over `facts`.
        when: String,
    },
    /// Remove a policy.
    RemovePolicy {
        /// Policy name.
        name: String,
    },
    /// Set a user fact of this node.
    SetFact {
        /// Fact key.
        key: String,
        /// Fact value.
        value: String,
    },
    /// Remove a user fact of this node.
    RemoveFact {
        /// Fact key.
        key: String,
    },
    /// Add a plugin entry to a tribe's catalog.
    LoadPlugin {
        /// Tribe name.
        tribe: String,
        /// Plugin name.
        name: String,
        /// Plugin version.
        version: String,
        /// Plugin kind.
        kind: PluginKind,
        /// Optional artifact.
        artifact: Option<ArtifactRef>,
    },
    /// Remove a plugin entry.
    UnloadPlugin {
        /// Tribe name.
        tribe: String,
        /// Plugin name.
        name: String,
        /// Plugin version.
        version: String,
    },
    /// Add a task to a tribe.
    AddTask {
        /// Tribe name.
        tribe: String,
        /// Task id.
        id: String,
        /// JSON manifest (an object).
        manifest: String,
        /// Desired state.
        state: TaskState,
    },
    /// Remove a task.
    RemoveTask {
        /// Tribe name.
        tribe: String,
        /// Task id.
        id: String,
    },
    /// Change a task's desired state.
    SetTaskState {
        /// Tribe name.
        tribe: String,
        /// Task id.
        id: String,
        /// Desired state.
        state: TaskState,
    },
    /// Add a key to every node's keyring.
    InstallKey(crate::crypto::SecretKey),
    /// Make an installed key every node's primary.
    UseKey(crate::crypto::KeyId),
    /// Remove a key from every node's keyring.
    RemoveKey(crate::crypto::KeyId),
    /// Change this node's encryption mode.
    SetEncryption(crate::config::Encryption),
    /// Advertise a served plugin in this node's record.
    Serve(crate::records::Endpoint),
    /// Advertise that this node holds an artifact (by SHA-256).
    HoldArtifact([u8; 32]),
    /// Stop advertising artifacts this node let go of.
    ReleaseArtifacts(Vec<[u8; 32]>),
    /// Withdraw a served plugin.
    Unserve {
        /// Plugin name.
        name: String,
        /// Plugin version.
        version: String,
    },
}

impl Engine {
    /// Writes one record locally and spreads it (gossip delta when small,
    /// anti-entropy always).
    pub(super) fn write(&mut self, key: Key, value: Option<Value>) {
        let entry = {
            let mut sh = lock(&self.shared);
            let now = sh.now_ms;
            // A child record belongs to the tribe's incarnation it is
            // written into: the latest it met (see `State`), or that of the
            // record it replaces when later (written into a creation whose
            // record has not reached this node yet: with an earlier era,
            // this write would lose to it, here too, and its command would
            // return Ok for nothing).
            let era = match key.tribe() {
                Some(tribe) if !matches!(key, Key::Tribe(_)) => {
                    let into = super::view::View { state: &sh.state }.era_to_write(tribe);
                    into.max(sh.state.entry(&key).and_then(|held| held.era.clone()))
                }
                _ => None,
            };
            // Near the tribe's time when this clock is far behind it (by
            // more than half the tombstone grace): a write stamped further
            // back than the grace would be taken for replayed gossip, and a
            // deletion for a collected one. No further ahead than that: a
            // node that follows a fast peer (the median of one or two
            // samples) must not stamp past its other peers' horizon.
            let half_grace = sh.tombstone_grace_ms / 2;
            let at = sh.reference_ms().saturating_sub(half_grace).max(now);
            let entry = Entry {
                version: sh.clock.tick(at),
                value,
                era,
            };
            sh.state.merge(key.clone(), entry.clone());
            // What is kept is spread: a tribe created again over its
            // deletion is kept marked with it, and peers that never see
            // the deletion (a later delta of the key replaces it in the
            // queue) would keep it unmarked, their digests apart until
            // the next push-pull.
            sh.state.entry(&key).cloned().unwrap_or(entry)
        };
        if self.gossip_deltas {
            self.spread(&(key, entry));
        }
    }

    /// Queues a record as a gossip delta, or asks for an early exchange when
    /// it is too large to piggyback on SWIM packets.
    pub(super) fn spread(&mut self, delta: &(Key, Entry)) {
        if !self.may_send(&delta.0) {
            return;
        }
        if !self.may_gossip(&delta.0) {
            self.sync_soon = true;
            self.sync_wide = true;
            return;
        }
        // Older than gossip takes (merged after a long partition): by an
        // early exchange, as a large record goes.
        if !lock(&self.shared).gossip_takes(&delta.1) {
            self.sync_soon = true;
            return;
        }
        let delta = crate::wire::encode(delta);
        if delta.len() > super::MAX_DELTA_LEN {
            lock(&self.shared).counters.deltas_too_large += 1;
            self.sync_soon = true;
            return;
        }
        match self.swim.add_broadcast(&delta) {
            Ok(_) => lock(&self.shared).counters.deltas_broadcast += 1,
            Err(e) => tracing::debug!(error = %e, "delta not queued"),
        }
    }

    /// Applies a command at `now_ms`.
    pub fn handle_command(&mut self, now_ms: u64, cmd: Command) -> Result<()> {
        self.tick(now_ms);
        if self.left {
            return Err(Error::ShuttingDown);
        }
        let result = self.apply_command(cmd);
        self.after_change();
        result
    }

    fn view_check<T>(&self, f: impl FnOnce(&View) -> T) -> T {
        let sh = lock(&self.shared);
        f(&View { state: &sh.state })
    }

    fn require_tribe(&self, tribe: &str) -> Result<()> {
        names::check("tribe name", tribe)?;
        if self.view_check(|v| v.tribe_exists(tribe)) {
            Ok(())
        } else {
            Err(Error::UnknownTribe(tribe.to_string()))
        }
    }

    /// Fails when a new record under `key` would pass its kind's limit.
    pub(super) fn check_room(&self, key: &Key) -> Result<()> {
        let sh = lock(&self.shared);
        if sh.has_room(key) {
            Ok(())
        } else {
            Err(Error::LimitReached {
                what: key.kind().as_str().to_string(),
                limit: sh.limits.of(key.kind()),
            })
        }
    }

    /// The live value of `key`, unless it is a child of an older tribe of that name.
    fn live(&self, key: &Key) -> Option<Value> {
        let sh = lock(&self.shared);
        let current =
            matches!(key, Key::Tribe(_)) || View { state: &sh.state }.child_is_current(key);
        current.then(|| sh.state.get(key).cloned()).flatten()
    }

    fn apply_command(&mut self, cmd: Command) -> Result<()> {
        match cmd {
            Command::InstallKey(key) => self.install_key(key)?,
            Command::UseKey(id) => self.use_key(id)?,
            Command::RemoveKey(id) => self.remove_key(id)?,
            Command::SetEncryption(mode) => self.set_encryption(mode)?,
            Command::Serve(endpoint) => {
                names::check("plugin name", &endpoint.name)?;
                names::check_version(&endpoint.version)?;
                self.record
                    .endpoints
                    .retain(|e| !(e.name == endpoint.name && e.version == endpoint.version));
                if self.record.endpoints.len() >= crate::records::limits::MAX_ENDPOINTS {
                    return Err(Error::InvalidArgument(format!(
                        "a node serves at most {} plugins",
                        crate::records::limits::MAX_ENDPOINTS
                    )));
                }
                self.record.endpoints.push(endpoint);
                self.record.endpoints.sort();
                self.publish_record();
            }
            Command::HoldArtifact(sha) => {
                if !self.record.artifacts.contains(&sha) {
                    if self.record.artifacts.len() >= crate::records::limits::MAX_ARTIFACTS {
                        return Err(Error::InvalidArgument(format!(
                            "a node advertises at most {} artifacts",
                            crate::records::limits::MAX_ARTIFACTS
                        )));
                    }
                    self.record.artifacts.push(sha);
                    self.record.artifacts.sort();
                    self.publish_record();
                }
            }
            Command::ReleaseArtifacts(gone) => {
                let before = self.record.artifacts.len();
                self.record.artifacts.retain(|sha| !gone.contains(sha));
                if self.record.artifacts.len() != before {
                    self.publish_record();
                }
            }
            Command::Unserve { name, version } => {
                let before = self.record.endpoints.len();
                self.record
                    .endpoints
                    .retain(|e| !(e.name == name && e.version == version));
                if self.record.endpoints.len() == before {
                    return Err(Error::UnknownPlugin {
                        tribe: String::new(),
                        name,
                        version,
                    });
                }
                self.publish_record();
            }
            Command::CreateTribe { tribe } => {
                names::check("tribe name", &tribe)?;
                if self.view_check(|v| v.tribe_exists(&tribe)) {
                    return Err(Error::TribeExists(tribe));
                }
                self.check_room(&Key::Tribe(tribe.clone()))?;
                self.create_tribe_record(&tribe);
            }
            Command::DeleteTribe { tribe } => {
                self.require_tribe(&tribe)?;
                let (children, policies) = self.view_check(|v| {
                    let members = v
                        .explicit_members(&tribe)
                        .into_iter()
                        .map(|node| Key::Member {
                            tribe: tribe.clone(),
                            node,
                        });
                    let plugins = v.plugins(&tribe).into_iter().map(|p| Key::Plugin {
                        tribe: p.tribe,
                        name: p.name,
                        version: p.version,
                    });
                    let tasks = v.tasks(&tribe).into_iter().map(|t| Key::Task {
                        tribe: t.tribe,
                        id: t.id,
                    });
                    let policies: Vec<Key> = v
                        .policies()
                        .into_iter()
                        .filter(|p| p.tribe == tribe)
                        .map(|p| Key::Policy(p.name))
                        .collect();
                    (
                        members.chain(plugins).chain(tasks).collect::<Vec<_>>(),
                        policies,
                    )
                });
                for key in children.into_iter().chain(policies) {
                    self.write(key, None);
                }
                self.write(Key::Tribe(tribe), None);
            }
            Command::Join { tribe, node } => {
                self.require_tribe(&tribe)?;
                names::check("node name", &node)?;
                if !self.knows_node(&node) {
                    return Err(Error::UnknownNode(node));
                }
                let key = Key::Member {
                    tribe: tribe.clone(),
                    node: node.clone(),
                };
                if self.live(&key).is_some() {
                    return Err(Error::AlreadyMember { tribe, node });
                }
                self.check_room(&key)?;
                self.write(key, Some(Value::Member));
            }
            Command::Leave { tribe, node } => {
                self.require_tribe(&tribe)?;
                names::check("node name", &node)?;
                let key = Key::Member {
                    tribe: tribe.clone(),
                    node: node.clone(),
                };
                if self.live(&key).is_none() {
                    return Err(Error::NotMember { tribe, node });
                }
                self.write(key, None);
            }
            Command::AddPolicy { name, tribe, when } => {
                names::check("policy name", &name)?;
                names::check("tribe name", &tribe)?;
                // The expression was compiled by the caller (`Node::add_policy`);
                // one that fails anyway is reported when evaluated.
                crate::policy::check_length(&when).map_err(Error::InvalidPolicy)?;
                let key = Key::Policy(name.clone());
                if self.live(&key).is_some() {
                    return Err(Error::PolicyExists(name));
                }
                self.check_room(&key)?;
                self.write(key, Some(Value::Policy(PolicyRecord { tribe, when })));
            }
            Command::RemovePolicy { name } => {
                names::check("policy name", &name)?;
                let key = Key::Policy(name.clone());
                if self.live(&key).is_none() {
                    return Err(Error::UnknownPolicy(name));
                }
                self.write(key, None);
            }
            Command::SetFact { key, value } => {
                crate::facts::validate_fact(&key, &value)
                    .map_err(|e| Error::InvalidArgument(e.to_string()))?;
                // Peers refuse a record with more facts (and keep the old one).
                if self.over_fact_limit_with(&key) {
                    return Err(Error::InvalidArgument(format!(
                        "a node has at most {} facts, collected ones included",
                        crate::records::limits::MAX_FACTS
                    )));
                }
                if self.user_facts.get(&key) != Some(&value) {
                    self.user_facts.insert(key.clone(), value.clone());
                    self.note_fact_change(key, Some(value));
                    self.facts_changed();
                }
            }
            Command::RemoveFact { key } => {
                if self.user_facts.remove(&key).is_none() {
                    return Err(Error::UnknownFact(key));
                }
                self.note_fact_change(key, None);
                self.facts_changed();
            }
            Command::LoadPlugin {
                tribe,
                name,
                version,
                kind,
                artifact,
            } => {
                self.require_tribe(&tribe)?;
                names::check("plugin name", &name)?;
                names::check_version(&version)?;
                let key = Key::Plugin {
                    tribe: tribe.clone(),
                    name: name.clone(),
                    version: version.clone(),
                };
                if self.live(&key).is_some() {
                    return Err(Error::PluginExists {
                        tribe,
                        name,
                        version,
                    });
                }
                self.check_room(&key)?;
                self.write(key, Some(Value::Plugin(PluginRecord { kind, artifact })));
            }
            Command::UnloadPlugin {
                tribe,
                name,
                version,
            } => {
                self.require_tribe(&tribe)?;
                let key = Key::Plugin {
                    tribe: tribe.clone(),
                    name: name.clone(),
                    version: version.clone(),
                };
                if self.live(&key).is_none() {
                    return Err(Error::UnknownPlugin {
                        tribe,
                        name,
                        version,
                    });
                }
                self.write(key, None);
            }
            Command::AddTask {
                tribe,
                id,
                manifest,
                state,
            } => {
                self.require_tribe(&tribe)?;
                names::check("task id", &id)?;
                let manifest = compact_manifest(&manifest)?;
                let key = Key::Task {
                    tribe: tribe.clone(),
                    id: id.clone(),
                };
                if self.live(&key).is_some() {
                    return Err(Error::TaskExists { tribe, id });
                }
                self.check_room(&key)?;
                self.write(key, Some(Value::Task(TaskRecord { manifest, state })));
            }
            Command::RemoveTask { tribe, id } => {
                self.require_tribe(&tribe)?;
                let key = Key::Task {
                    tribe: tribe.clone(),
                    id: id.clone(),
                };
                if self.live(&key).is_none() {
                    return Err(Error::UnknownTask { tribe, id });
                }
                self.write(key, None);
            }
            Command::SetTaskState { tribe, id, state } => {
                self.require_tribe(&tribe)?;
                let key = Key::Task {
                    tribe: tribe.clone(),
                    id: id.clone(),
                };
                let Some(Value::Task(mut task)) = self.live(&key) else {
                    return Err(Error::UnknownTask { tribe, id });
                };
                if task.state != state {
                    task.state = state;
                    self.write(key, Some(Value::Task(task)));
                }
            }
        }
        Ok(())
    }

    /// Keeps a fact command for the data dir (a restart applies it again).
    pub(super) fn note_fact_change(&mut self, key: String, value: Option<String>) {
        if value.as_ref() == self.configured_facts.get(&key) {
            // Back to what the node was started with.
            self.fact_changes.remove(&key);
        } else {
            self.fact_changes.insert(key, value);
        }
        self.fact_revision += 1;
    }

    pub(super) fn facts_changed(&mut self) {
        self.record.facts = self.merged_facts();
        self.publish_record();
    }

    fn knows_node(&self, node: &str) -> bool {
        node == self.name
            || self.members.get(node).is_some()
            || self.view_check(|v| v.node_record(node).is_some())
    }

    /// Leaves the cluster gracefully: marks our record *left* and tells peers.
    pub fn leave(&mut self, now_ms: u64) {
        self.tick(now_ms);
        if self.left {
            return;
        }
        self.record.left = true;
        // The goodbye (foca's down notice and the record saying `left`)
        // goes to every live member, up to LEAVE_FANOUT, not to foca's
        // three: nodes stopping at the same moment (a host's collectors, a
        // fleet's `systemctl stop`) drop what they hear, and a goodbye
        // relayed only through them was lost, its sender then seen as
        // failed. Set before the record is queued, whose transmissions it
        // counts; foca is done with the config once it has left.
        let mut wide = super::foca_config(&self.timings, self.cluster_size_hint);
        let fanout = self.members.count_up().clamp(1, LEAVE_FANOUT);
        wide.num_indirect_probes = NonZeroUsize::new(fanout).unwrap_or(NonZeroUsize::MIN);
        let sends = NonZeroU8::new(fanout.min(255) as u8).unwrap_or(NonZeroU8::MIN);
        wide.max_transmissions = wide.max_transmissions.max(sends);
        if let Err(e) = self.swim.set_config(wide) {
            tracing::debug!(error = %e, "foca refused the goodbye's fanout");
        }
        self.publish_record();
        if !self.record_owed && self.record_rides_gossip(&self.name) == Some(false) {
            // Too large for a datagram (many facts), the goodbye would hang
            // on exchanges a slow or lossy link does not finish before the
            // process exits: peers then told a failure, for good. What a
            // left node serves, holds and states about itself tells them
            // nothing more, so its last record goes without (this node
            // still shows its own while it stops).
            let mut slim = self.record.clone();
            slim.facts.clear();
            slim.endpoints.clear();
            slim.artifacts.clear();
            self.publish(slim);
        }
        // Push the goodbye by anti-entropy too, so it does not hinge on
        // gossip; to three distinct peers, as one of them may be going
        // down too. A record too large for gossip (many facts or tribes)
        // goes so to more: the others would hear foca's notice alone, and
        // wait for the record to tell a leave from a failure.
        let gossiped = self.record_rides_gossip(&self.name) != Some(false);
        self.end_joining_exchanges();
        self.sync_with_distinct(if gossiped { 3 } else { LEAVE_SYNCS });
        self.left = true;
        if let Err(e) = self.swim.leave_cluster(&mut self.swim_rt) {
            tracing::debug!(error = %e, "leave failed");
        }
        self.after_change();
    }

    /// The artifacts the plugin entries of the replicated state name.
    pub fn referenced_artifacts(&self) -> std::collections::BTreeSet<[u8; 32]> {
        // Keys order by kind first: the plugin entries of every tribe
        // come together.
        let first = Key::Plugin {
            tribe: String::new(),
            name: String::new(),
            version: String::new(),
        };
        lock(&self.shared)
            .state
            .live_from(&first)
            .take_while(|(k, _)| matches!(k, Key::Plugin { .. }))
            .filter_map(|(_, v)| match v {
                Value::Plugin(PluginRecord {
                    artifact: Some(a), ..
                }) => Some(a.sha256),
                _ => None,
            })
            .collect()
    }

    /// Whether [`Engine::leave`] was called.
    pub fn has_left(&self) -> bool {
        self.left
    }

    // ---- snapshot reads ----

    /// Where calls reach `name` (its address and those it serves on),
    /// when it is down as failed; `None` otherwise.
    pub fn failed_member_addrs(&self, name: &str) -> Option<Vec<std::net::SocketAddr>> {
        let row = self.members.get(name)?;
        if row.state != MemberState::Failed {
            return None;
        }
        let sh = lock(&self.shared);
        let view = View { state: &sh.state };
        let mut addrs: Vec<std::net::SocketAddr> = view
            .node_record(name)
            .map(|r| r.endpoints.iter().map(|e| e.addr).collect())
            .unwrap_or_default();
        addrs.push(row.id.addr);
        addrs.sort();
        addrs.dedup();
        Some(addrs)
    }

    /// Every known member, this node included, by name.
    pub fn members(&self) -> Vec<MemberInfo> {
        let sh = lock(&self.shared);
        let view = View { state: &sh.state };
        // Each node's tribes, in one pass (per member, a walk of every
        // tribe made the snapshot members × tribes).
        let mut by_node: std::collections::BTreeMap<&str, Vec<String>> = Default::default();
        let memberships = view.memberships();
        for (tribe, nodes) in &memberships {
            for node in nodes.keys() {
                by_node.entry(node).or_default().push(tribe.clone());
            }
        }
        let tribes_of = |name: &str| -> Vec<String> { by_node.get(name).cloned().unwrap_or_default() };
        let suspects: std::collections::HashSet<&str> = self
            .swim
            .iter_membership_state()
            .filter(|m| m.state() == foca::State::Suspect)
            .map(|m| &*m.id().name)
            .collect();
        let mut out = Vec::new();
        let me = self.swim.identity();
        out.push(MemberInfo {
            name: self.name.clone(),
            addr: me.addr,
            state: if self.left {
                MemberState::Left
            } else {
                MemberState::Alive
            },
            generation: me.generation,
            facts: self.record.facts.clone(),
            tribes: tribes_of(&self.name),
            endpoints: self.record.endpoints.clone(),
            artifacts: self.record.artifacts.clone(),
            is_local: true,
        });
        for (name, row) in self.members.iter() {
            let record = view.node_record(name);
            let state = if row.state == MemberState::Alive && suspects.contains(name) {
                MemberState::Suspect
            } else {
                row.state
            };
            out.push(MemberInfo {
                name: name.to_string(),
                addr: row.id.addr,
                state,
                generation: row.id.generation,
                facts: record.map(|r| r.facts.clone()).unwrap_or_default(),
                tribes: tribes_of(name),
                endpoints: record.map(|r| r.endpoints.clone()).unwrap_or_default(),
                artifacts: record.map(|r| r.artifacts.clone()).unwrap_or_default(),
                is_local: false,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// The address of the node that holds this node's name while this one
    /// keeps out of the cluster for it (see [`super::name_claims`]).
    pub fn name_held_by(&self) -> Option<std::net::SocketAddr> {
        let sh = lock(&self.shared);
        if sh.keeping_out() {
            sh.claims.holder.as_ref().map(|h| h.addr)
        } else {
            None
        }
    }

    /// A peer that refused this node's key in the last minute, until an
    /// exchange with it succeeds: the tribe may have rotated its keys
    /// without this node (it was down, frozen or cut off meanwhile), which
    /// then lives on alone or with others left behind, its status looking
    /// healthy otherwise.
    pub fn key_refused_by(&self) -> Option<std::net::SocketAddr> {
        let (addr, at) = self.key_refused?;
        (self.now_ms() < at.saturating_add(KEY_REFUSAL_SHOWN_MS)).then_some(addr)
    }

    /// Number of live members, this node included.
    pub fn members_alive(&self) -> usize {
        self.members.count_up() + usize::from(!self.left)
    }

    /// One tribe with its live view and catalog.
    pub fn tribe(&self, name: &str) -> Option<TribeInfo> {
        let sh = lock(&self.shared);
        let view = View { state: &sh.state };
        if !view.tribe_exists(name) {
            return None;
        }
        Some(self.tribe_info(&view, name, view.memberships_in(name)))
    }

    /// Every tribe. One pass over the memberships, whatever the number of
    /// tribes: taken per tribe, a snapshot of 4,000 tribes held the engine
    /// for seconds (peers then suspected the node).
    pub fn tribes(&self) -> Vec<TribeInfo> {
        let sh = lock(&self.shared);
        let view = View { state: &sh.state };
        let mut memberships = view.memberships();
        view.tribe_names()
            .into_iter()
            .map(|t| {
                let nodes = memberships.remove(&t).unwrap_or_default();
                self.tribe_info(&view, &t, nodes)
            })
            .collect()
    }

    /// How many tribes exist.
    pub fn tribe_count(&self) -> usize {
        self.view_check(|v| v.tribe_count())
    }

    fn tribe_info(
        &self,
        view: &View,
        name: &str,
        nodes: std::collections::BTreeMap<String, super::view::Membership>,
    ) -> TribeInfo {
        TribeInfo {
            name: name.to_string(),
            members: nodes.into_keys().filter(|n| self.is_up(n)).collect(),
            explicit_members: view.explicit_members(name).into_iter().collect(),
            plugins: view.plugins(name),
            tasks: view.tasks(name),
        }
    }

    /// Whether this node is in the live view of `tribe`.
    pub fn in_tribe(&self, tribe: &str) -> bool {
        let sh = lock(&self.shared);
        let view = View { state: &sh.state };
        !self.left && view.is_member(tribe, &self.name)
    }

    /// Every policy.
    pub fn policies(&self) -> Vec<Policy> {
        self.view_check(|v| v.policies())
    }

    pub(super) fn is_up(&self, name: &str) -> bool {
        if name == self.name {
            return !self.left;
        }
        self.members.get(name).is_some_and(|r| r.state.is_up())
    }
}

/// Longest manifest text looked at: its compact form must still fit in
/// [`crate::records::limits::MAX_MANIFEST_LEN`].
const MAX_MANIFEST_TEXT: usize = 1 << 20;

/// A task's manifest as its record keeps it: compact JSON, which every
/// face (the agent's admin API, C, Go, Python) measures alike, whatever
/// spacing its text came with.
fn compact_manifest(manifest: &str) -> Result<String> {
    let too_large = |len: usize| {
        Error::InvalidArgument(format!(
            "task manifest is {len} bytes as compact JSON, more than the limit of {} (64 KiB)",
            crate::records::limits::MAX_MANIFEST_LEN
        ))
    };
    if manifest.len() > MAX_MANIFEST_TEXT {
        return Err(Error::InvalidArgument(format!(
            "task manifest text is {} bytes, more than the {} read before its spacing is taken out (the limit is {} bytes as compact JSON)",
            manifest.len(),
            MAX_MANIFEST_TEXT,
            crate::records::limits::MAX_MANIFEST_LEN
        )));
    }
    let depth = crate::records::json_depth(manifest);
    if depth > crate::records::limits::MAX_MANIFEST_DEPTH {
        return Err(Error::InvalidArgument(format!(
            "task manifest nests {depth} deep, more than the limit of {}",
            crate::records::limits::MAX_MANIFEST_DEPTH
        )));
    }
    let value = match serde_json::from_str::<serde_json::Value>(manifest) {
        Ok(v @ serde_json::Value::Object(_)) => v,
        Ok(_) => {
            return Err(Error::InvalidArgument(
                "task manifest must be a JSON object".into(),
            ))
        }
        Err(e) => {
            return Err(Error::InvalidArgument(format!(
                "task manifest is not JSON: {e}"
            )))
        }
    };
    let compact = value.to_string();
    if compact.len() > crate::records::limits::MAX_MANIFEST_LEN {
        return Err(too_large(compact.len()));
    }
    Ok(compact)
}
