//! Derived views over the replicated store: which tribes exist, who is in
//! them (explicit ∪ policy-derived, ∩ alive), and their catalogs. Also the
//! snapshot types handed to API users.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use crate::records::{
    ArtifactRef, Endpoint, Key, NodeRecord, PluginKind, PluginRecord, TaskRecord, TaskState,
    TribeRecord, Value,
};
use crate::state::State;

pub use super::members::MemberState;

/// A member as seen by this node.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MemberInfo {
    /// Node name.
    pub name: String,
    /// Advertised address.
    pub addr: SocketAddr,
    /// Liveness.
    pub state: MemberState,
    /// Generation of its current identity.
    pub generation: u64,
    /// Its facts (empty until its record arrives).
    pub facts: BTreeMap<String, String>,
    /// Tribes whose live view holds it; for a failed or left member, the
    /// tribes it would be in (by hand or by policy) were it up.
    pub tribes: Vec<String>,
    /// Plugins it serves.
    pub endpoints: Vec<Endpoint>,
    /// SHA-256 of the plugin artifacts it holds.
    pub artifacts: Vec<[u8; 32]>,
    /// Whether this is the local node.
    pub is_local: bool,
}

/// How a node is in a tribe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Membership {
    /// Joined by hand (explicit membership record).
    pub by_hand: bool,
    /// A policy holds for it.
    pub by_policy: bool,
}

/// A plugin entry of a tribe's catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PluginEntry {
    /// Tribe.
    pub tribe: String,
    /// Plugin name.
    pub name: String,
    /// Plugin version.
    pub version: String,
    /// Plugin kind.
    pub kind: PluginKind,
    /// Artifact to fetch, if any.
    pub artifact: Option<ArtifactRef>,
}

/// A task of a tribe.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Task {
    /// Tribe.
    pub tribe: String,
    /// Task id.
    pub id: String,
    /// JSON manifest.
    pub manifest: String,
    /// Desired state.
    pub state: TaskState,
}

/// A live member of a tribe that serves a plugin (a host for calls).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provider {
    /// Node name.
    pub name: String,
    /// Its stream address.
    pub addr: SocketAddr,
    /// The version it serves (its highest, for a call to any version).
    pub version: String,
    /// For a call to any version: the other versions it serves, highest
    /// first, tried on it when it refuses `version` (unserved meanwhile).
    pub older: Vec<String>,
    /// Whether it is this node.
    pub local: bool,
    /// Whether SWIM suspects it (missed probes): tried after the others, as
    /// a stopped or overloaded host would hold a call to its deadline.
    pub suspect: bool,
}

/// A policy.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Policy {
    /// Policy name.
    pub name: String,
    /// Target tribe.
    pub tribe: String,
    /// CEL expression over `facts`.
    pub when: String,
}

/// A tribe with its live view and catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TribeInfo {
    /// Tribe name.
    pub name: String,
    /// Live members: (by hand ∪ by policy) ∩ alive, sorted.
    pub members: Vec<String>,
    /// Members by hand, alive or not.
    pub explicit_members: Vec<String>,
    /// Plugin entries.
    pub plugins: Vec<PluginEntry>,
    /// Tasks.
    pub tasks: Vec<Task>,
}

/// Read-only helpers over a store.
pub struct View<'a> {
    /// The store.
    pub state: &'a State,
}

impl<'a> View<'a> {
    /// The record of a live tribe.
    pub fn tribe_record(&self, tribe: &str) -> Option<&'a TribeRecord> {
        match self.state.get(&Key::Tribe(tribe.to_string())) {
            Some(Value::Tribe(t)) => Some(t),
            _ => None,
        }
    }

    /// Whether a tribe exists.
    pub fn tribe_exists(&self, tribe: &str) -> bool {
        self.tribe_record(tribe).is_some()
    }

    /// Names of existing tribes.
    pub fn tribe_names(&self) -> BTreeSet<String> {
        self.state
            .live_from(&Key::Tribe(String::new()))
            .map_while(|(k, _)| match k {
                Key::Tribe(t) => Some(t.clone()),
                _ => None,
            })
            .collect()
    }

    /// How many tribes exist.
    pub fn tribe_count(&self) -> usize {
        self.state
            .live_from(&Key::Tribe(String::new()))
            .take_while(|(k, _)| matches!(k, Key::Tribe(_)))
            .count()
    }

    /// Whether a child record of a tribe is current: the tribe exists and the
    /// record was written after the deletion that ended its previous life.
    pub fn child_is_current(&self, key: &Key) -> bool {
        let Some(tribe) = key.tribe() else {
            return true;
        };
        match (self.tribe_created(tribe), self.state.entry(key)) {
            (Some((t, mark)), Some(entry)) => {
                // Its own era's, or the latest one it met (see `State`).
                let era_ok = entry.era == t.era || (mark.is_some() && entry.era.as_ref() == mark);
                era_ok && t.after.as_ref().is_none_or(|d| entry.version > *d)
            }
            _ => false,
        }
    }

    /// A tribe's record and its mark: the latest era it met (see `State`).
    pub fn tribe_created(
        &self,
        tribe: &str,
    ) -> Option<(&'a TribeRecord, Option<&'a crate::hlc::Hlc>)> {
        let entry = self.state.entry(&Key::Tribe(tribe.to_string()))?;
        match &entry.value {
            Some(Value::Tribe(t)) => Some((t, entry.era.as_ref())),
            _ => None,
        }
    }

    /// The era a record written into `tribe` now takes: the later of its
    /// record's own and its mark.
    pub fn era_to_write(&self, tribe: &str) -> Option<crate::hlc::Hlc> {
        let (t, mark) = self.tribe_created(tribe)?;
        t.era.clone().max(mark.cloned())
    }

    fn tribe_range(&self, tribe: &str, kind: fn(&str) -> Key) -> Vec<(&'a Key, &'a Value)> {
        let from = kind(tribe);
        self.state
            .live_from(&from)
            .take_while(|(k, _)| {
                k.tribe() == Some(tribe)
                    && std::mem::discriminant(*k) == std::mem::discriminant(&from)
            })
            .filter(|(k, _)| self.child_is_current(k))
            .collect()
    }

    /// Every record of a tribe's children (memberships by hand, plugin
    /// entries, tasks), deletions and records of other eras included.
    pub fn child_entries(&self, tribe: &str) -> Vec<&'a crate::records::Entry> {
        let t = || tribe.to_string();
        let starts = [
            Key::Member {
                tribe: t(),
                node: String::new(),
            },
            Key::Plugin {
                tribe: t(),
                name: String::new(),
                version: String::new(),
            },
            Key::Task {
                tribe: t(),
                id: String::new(),
            },
        ];
        starts
            .iter()
            .flat_map(|from| {
                self.state
                    .entries_from(from)
                    .take_while(move |(k, _)| {
                        k.tribe() == Some(tribe)
                            && std::mem::discriminant(*k) == std::mem::discriminant(from)
                    })
                    .map(|(_, e)| e)
            })
            .collect()
    }

    /// Members by hand of a tribe (any liveness).
    pub fn explicit_members(&self, tribe: &str) -> BTreeSet<String> {
        let mk = |t: &str| Key::Member {
            tribe: t.to_string(),
            node: String::new(),
        };
        self.tribe_range(tribe, mk)
            .into_iter()
            .filter_map(|(k, _)| match k {
                Key::Member { node, .. } => Some(node.clone()),
                _ => None,
            })
            .collect()
    }

    /// Plugin entries of a tribe.
    pub fn plugins(&self, tribe: &str) -> Vec<PluginEntry> {
        let mk = |t: &str| Key::Plugin {
            tribe: t.to_string(),
            name: String::new(),
            version: String::new(),
        };
        self.tribe_range(tribe, mk)
            .into_iter()
            .filter_map(|(k, v)| match (k, v) {
                (
                    Key::Plugin {
                        tribe,
                        name,
                        version,
                    },
                    Value::Plugin(PluginRecord { kind, artifact }),
                ) => Some(PluginEntry {
                    tribe: tribe.clone(),
                    name: name.clone(),
                    version: version.clone(),
                    kind: *kind,
                    artifact: artifact.clone(),
                }),
                _ => None,
            })
            .collect()
    }

    /// Tasks of a tribe.
    pub fn tasks(&self, tribe: &str) -> Vec<Task> {
        let mk = |t: &str| Key::Task {
            tribe: t.to_string(),
            id: String::new(),
        };
        self.tribe_range(tribe, mk)
            .into_iter()
            .filter_map(|(k, v)| match (k, v) {
                (Key::Task { tribe, id }, Value::Task(TaskRecord { manifest, state })) => {
                    Some(Task {
                        tribe: tribe.clone(),
                        id: id.clone(),
                        manifest: manifest.clone(),
                        state: *state,
                    })
                }
                _ => None,
            })
            .collect()
    }

    /// Live policies.
    pub fn policies(&self) -> Vec<Policy> {
        self.state
            .live_from(&Key::Policy(String::new()))
            .map_while(|(k, v)| match (k, v) {
                (Key::Policy(name), Value::Policy(p)) => Some(Policy {
                    name: name.clone(),
                    tribe: p.tribe.clone(),
                    when: p.when.clone(),
                }),
                _ => None,
            })
            .collect()
    }

    /// The record of a node.
    pub fn node_record(&self, name: &str) -> Option<&'a NodeRecord> {
        match self.state.get(&Key::Node(name.to_string())) {
            Some(Value::Node(r)) => Some(r),
            _ => None,
        }
    }

    /// Members of one tribe, by hand or by policy (up or not).
    pub fn tribe_members(&self, tribe: &str) -> BTreeSet<String> {
        let mut out: BTreeSet<String> = self.explicit_members(tribe).into_iter().collect();
        for (node, record) in self.node_records() {
            if record.policy_tribes.contains(tribe) {
                out.insert(node.clone());
            }
        }
        out
    }

    /// Whether `node` is in `tribe` (by hand or by policy): two lookups,
    /// where [`View::tribe_members`] walks every node record.
    pub fn is_member(&self, tribe: &str, node: &str) -> bool {
        if !self.tribe_exists(tribe) {
            return false;
        }
        let key = Key::Member {
            tribe: tribe.to_string(),
            node: node.to_string(),
        };
        (self.state.get(&key).is_some() && self.child_is_current(&key))
            || self
                .node_record(node)
                .is_some_and(|r| r.policy_tribes.contains(tribe))
    }

    /// Every node record.
    pub fn node_records(&self) -> impl Iterator<Item = (&'a String, &'a NodeRecord)> {
        self.state
            .live_from(&Key::Node(String::new()))
            .map_while(|(k, v)| match (k, v) {
                (Key::Node(n), Value::Node(r)) => Some((n, r)),
                _ => None,
            })
    }

    /// The existing tribes one node is in, and how: one lookup per tribe,
    /// where [`View::memberships`] walks every node record.
    pub fn memberships_of(&self, node: &str) -> BTreeMap<String, Membership> {
        let policy_tribes = self.node_record(node).map(|r| &r.policy_tribes);
        let mut out = BTreeMap::new();
        // One key for every lookup, its tribe replaced in place.
        let mut key = Key::Member {
            tribe: String::new(),
            node: node.to_string(),
        };
        let tribes = self
            .state
            .live_from(&Key::Tribe(String::new()))
            .map_while(|(k, _)| match k {
                Key::Tribe(t) => Some(t),
                _ => None,
            });
        for tribe in tribes {
            if let Key::Member { tribe: t, .. } = &mut key {
                t.clone_from(tribe);
            }
            let by = Membership {
                by_hand: self.state.get(&key).is_some() && self.child_is_current(&key),
                by_policy: policy_tribes.is_some_and(|t| t.contains(tribe)),
            };
            if by.by_hand || by.by_policy {
                out.insert(tribe.clone(), by);
            }
        }
        out
    }

    /// Membership of every node in one existing tribe, alive or not.
    pub fn memberships_in(&self, tribe: &str) -> BTreeMap<String, Membership> {
        let mut out: BTreeMap<String, Membership> = self
            .explicit_members(tribe)
            .into_iter()
            .map(|node| {
                let by = Membership {
                    by_hand: true,
                    by_policy: false,
                };
                (node, by)
            })
            .collect();
        for (node, record) in self.node_records() {
            if record.policy_tribes.contains(tribe) {
                out.entry(node.clone()).or_default().by_policy = true;
            }
        }
        out
    }

    /// Membership of every node in every existing tribe, alive or not.
    pub fn memberships(&self) -> BTreeMap<String, BTreeMap<String, Membership>> {
        let tribes = self.tribe_names();
        let mut out: BTreeMap<String, BTreeMap<String, Membership>> = BTreeMap::new();
        for tribe in &tribes {
            for node in self.explicit_members(tribe) {
                out.entry(tribe.clone())
                    .or_default()
                    .entry(node)
                    .or_default()
                    .by_hand = true;
            }
        }
        for (node, record) in self.node_records() {
            for tribe in record.policy_tribes.iter().filter(|t| tribes.contains(*t)) {
                out.entry(tribe.clone())
                    .or_default()
                    .entry(node.clone())
                    .or_default()
                    .by_policy = true;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hlc::Hlc;
    use crate::records::{Entry, PluginRecord};

    fn v(millis: u64, node: &str) -> Hlc {
        Hlc {
            millis,
            counter: 0,
            node: node.into(),
        }
    }

    fn tribe(created: u64, after: Option<u64>) -> (Key, Entry) {
        (
            Key::Tribe("t".into()),
            Entry {
                version: v(created, "a"),
                value: Some(Value::Tribe(TribeRecord {
                    after: after.map(|d| v(d, "a")),
                    era: None,
                })),
                era: None,
            },
        )
    }

    fn member(at: u64) -> (Key, Entry) {
        (
            Key::Member {
                tribe: "t".into(),
                node: "n1".into(),
            },
            Entry {
                version: v(at, "b"),
                value: Some(Value::Member),
                era: None,
            },
        )
    }

    fn plugin(at: u64) -> (Key, Entry) {
        (
            Key::Plugin {
                tribe: "t".into(),
                name: "p".into(),
                version: "1".into(),
            },
            Entry {
                version: v(at, "b"),
                value: Some(Value::Plugin(PluginRecord {
                    kind: PluginKind::Collector,
                    artifact: None,
                })),
                era: None,
            },
        )
    }

    fn node(name: &str, at: u64, policy_tribes: &[&str]) -> (Key, Entry) {
        (
            Key::Node(name.into()),
            Entry {
                version: v(at, name),
                value: Some(Value::Node(NodeRecord {
                    addr: "127.0.0.1:1".parse().unwrap(),
                    generation: 1,
                    facts: BTreeMap::new(),
                    policy_tribes: policy_tribes.iter().map(|t| t.to_string()).collect(),
                    endpoints: Vec::new(),
                    left: false,
                    keys: Vec::new(),
                    primary_key: None,
                    artifacts: Vec::new(),
                })),
                era: None,
            },
        )
    }

    #[test]
    fn one_nodes_memberships_match_the_full_table() {
        let mut s = State::new();
        // "t" exists (n1 by hand, a stale hand membership of n3 from an
        // older life), "u" does not (n2's policy names it anyway).
        let stale = (
            Key::Member {
                tribe: "t".into(),
                node: "n3".into(),
            },
            Entry {
                version: v(5, "b"),
                value: Some(Value::Member),
                era: None,
            },
        );
        for (k, e) in [
            tribe(10, Some(6)),
            member(20),
            stale,
            node("n1", 1, &["t"]),
            node("n2", 1, &["t", "u"]),
            node("n3", 1, &[]),
        ] {
            s.merge(k, e);
        }
        let view = View { state: &s };
        let table = view.memberships();
        for name in ["n1", "n2", "n3", "nobody"] {
            let expected: BTreeMap<String, Membership> = table
                .iter()
                .filter_map(|(t, nodes)| nodes.get(name).map(|m| (t.clone(), *m)))
                .collect();
            assert_eq!(view.memberships_of(name), expected, "{name}");
        }
        assert_eq!(
            view.memberships_of("n1").get("t"),
            Some(&Membership {
                by_hand: true,
                by_policy: true
            })
        );
        assert!(view.memberships_of("n3").is_empty());
        // One node in one tribe, as the whole member list says.
        for tribe in ["t", "u", "none"] {
            let members = view.tribe_members(tribe);
            for name in ["n1", "n2", "n3", "nobody"] {
                let listed = view.tribe_exists(tribe) && members.contains(name);
                assert_eq!(view.is_member(tribe, name), listed, "{name} in {tribe}");
            }
        }
    }

    #[test]
    fn children_arriving_before_their_tribe_appear_once_it_arrives() {
        let mut out_of_order = State::new();
        for (k, e) in [member(20), plugin(21)] {
            out_of_order.merge(k, e);
        }
        {
            let view = View {
                state: &out_of_order,
            };
            assert!(!view.tribe_exists("t"));
            assert!(view.explicit_members("t").is_empty());
            assert!(view.memberships().is_empty());
        }
        let (k, e) = tribe(10, None);
        out_of_order.merge(k, e);
        let mut in_order = State::new();
        for (k, e) in [tribe(10, None), member(20), plugin(21)] {
            in_order.merge(k, e);
        }
        assert_eq!(out_of_order.digest(), in_order.digest());
        let view = View {
            state: &out_of_order,
        };
        assert_eq!(view.explicit_members("t").len(), 1);
        assert_eq!(view.plugins("t").len(), 1);
    }

    #[test]
    fn children_of_an_older_incarnation_stay_hidden_after_recreation() {
        let mut s = State::new();
        // Written into the tribe's first life (deleted at 25), delivered
        // after it was recreated.
        for (k, e) in [tribe(30, Some(25)), member(20), plugin(21)] {
            s.merge(k, e);
        }
        let view = View { state: &s };
        assert!(view.tribe_exists("t"));
        assert!(view.explicit_members("t").is_empty());
        assert!(view.plugins("t").is_empty());
    }

    #[test]
    fn a_concurrent_second_creation_does_not_hide_the_first_ones_catalog() {
        let mut s = State::new();
        // Created by hand at 10, catalog written at 20, then created again at
        // 30 by a node that had not seen it yet (a policy held there).
        for (k, e) in [tribe(10, None), plugin(20), tribe(30, None)] {
            s.merge(k, e);
        }
        let view = View { state: &s };
        assert_eq!(view.plugins("t").len(), 1);
    }
}
