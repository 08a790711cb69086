//! The kinds of replicated record: their keys, their values and the checks a
//! record from a peer must pass before it is merged.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::crypto::{KeyId, SecretKey};
use crate::hlc::Hlc;
use crate::names;

/// Stable key of a replicated record. Ordering groups the records of one kind
/// and, within a kind, those of one tribe, so a tribe's records are a range.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[allow(clippy::enum_variant_names)] // `RingKey` says which key: a keyring's
pub enum Key {
    /// A node's own record (written only by that node).
    Node(String),
    /// A tribe exists.
    Tribe(String),
    /// A membership by hand `(tribe, node)`.
    Member {
        /// Tribe name.
        tribe: String,
        /// Node name.
        node: String,
    },
    /// A policy by name.
    Policy(String),
    /// A plugin entry of a tribe's catalog.
    Plugin {
        /// Tribe name.
        tribe: String,
        /// Plugin name.
        name: String,
        /// Plugin version.
        version: String,
    },
    /// A task of a tribe.
    Task {
        /// Tribe name.
        tribe: String,
        /// Task id.
        id: String,
    },
    /// A key of the cluster's keyring: live means installed, a tombstone
    /// means removed. Travels only over sealed links.
    RingKey(KeyId),
    /// Which key is the cluster's primary.
    RingPrimary,
}

impl Key {
    /// The tribe this record belongs to, for the kinds that belong to one.
    pub fn tribe(&self) -> Option<&str> {
        match self {
            Key::Tribe(t) | Key::Member { tribe: t, .. } => Some(t),
            Key::Plugin { tribe, .. } | Key::Task { tribe, .. } => Some(tribe),
            Key::Node(_) | Key::Policy(_) | Key::RingKey(_) | Key::RingPrimary => None,
        }
    }
}

/// Kind of a record, for limits and counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// [`Key::Node`].
    Node,
    /// [`Key::Tribe`].
    Tribe,
    /// [`Key::Member`].
    Member,
    /// [`Key::Policy`].
    Policy,
    /// [`Key::Plugin`].
    Plugin,
    /// [`Key::Task`].
    Task,
    /// [`Key::RingKey`] and [`Key::RingPrimary`].
    Ring,
}

impl Kind {
    /// Every kind, in order.
    pub const ALL: [Kind; 7] = [
        Kind::Node,
        Kind::Tribe,
        Kind::Member,
        Kind::Policy,
        Kind::Plugin,
        Kind::Task,
        Kind::Ring,
    ];

    /// Lower-case plural name used in errors and docs.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Node => "node records",
            Kind::Tribe => "tribes",
            Kind::Member => "memberships by hand",
            Kind::Policy => "policies",
            Kind::Plugin => "plugin entries",
            Kind::Task => "tasks",
            Kind::Ring => "keyring records",
        }
    }
}

impl Key {
    /// The kind of record this key names.
    pub fn kind(&self) -> Kind {
        match self {
            Key::Node(_) => Kind::Node,
            Key::Tribe(_) => Kind::Tribe,
            Key::Member { .. } => Kind::Member,
            Key::Policy(_) => Kind::Policy,
            Key::Plugin { .. } => Kind::Plugin,
            Key::Task { .. } => Kind::Task,
            Key::RingKey(_) | Key::RingPrimary => Kind::Ring,
        }
    }
}

/// Kind of plugin, as in snap.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum PluginKind {
    /// Gathers metrics.
    Collector,
    /// Transforms metrics.
    Processor,
    /// Sends metrics somewhere.
    Publisher,
}

impl PluginKind {
    /// Lower-case name used in APIs and manifests.
    pub fn as_str(self) -> &'static str {
        match self {
            PluginKind::Collector => "collector",
            PluginKind::Processor => "processor",
            PluginKind::Publisher => "publisher",
        }
    }
}

impl std::str::FromStr for PluginKind {
    type Err = crate::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "collector" => Ok(PluginKind::Collector),
            "processor" => Ok(PluginKind::Processor),
            "publisher" => Ok(PluginKind::Publisher),
            other => Err(crate::Error::InvalidArgument(format!(
                "plugin kind {other:?} is not collector, processor or publisher"
            ))),
        }
    }
}

/// A plugin a node actually serves, with where to reach it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Endpoint {
    /// Plugin name.
    pub name: String,
    /// Plugin version.
    pub version: String,
    /// Plugin kind.
    pub kind: PluginKind,
    /// TCP address that serves calls.
    pub addr: SocketAddr,
}

/// A node's self-description, written only by its owner.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Advertised gossip (UDP) and stream (TCP) address.
    pub addr: SocketAddr,
    /// Start generation; a restarted node has a larger one.
    pub generation: u64,
    /// Collected facts overlaid with user facts.
    pub facts: BTreeMap<String, String>,
    /// Tribes this node is in because a policy holds for it.
    pub policy_tribes: BTreeSet<String>,
    /// Plugins this node serves.
    pub endpoints: Vec<Endpoint>,
    /// Set when the node left on purpose (peers then say *left*, not *failed*).
    pub left: bool,
    /// Ids of the keys this node holds (empty without encryption).
    pub keys: Vec<KeyId>,
    /// Id of the key this node seals with, if any.
    pub primary_key: Option<KeyId>,
    /// SHA-256 of the plugin artifacts this node holds and hands out.
    pub artifacts: Vec<[u8; 32]>,
}

/// A tribe's existence. `after` tells apart records of an older tribe of the
/// same name that was deleted: children written at or before that deletion
/// are stale. Two nodes creating the same tribe concurrently (a policy holding
/// on both before either saw the other's record) both write `after` from the
/// same history, so neither hides the other's catalog.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TribeRecord {
    /// Version of the deletion this incarnation was created after, if the
    /// creator knew of one, or later: the latest record of the tribe the
    /// creator held then (see `create_tribe_record`).
    pub after: Option<Hlc>,
    /// The incarnation: the version of the deletion it was created after
    /// (`None` for a tribe never deleted, or whose deletion was forgotten).
    /// Concurrent creations after the same deletion share it. Each child
    /// record carries the era of the tribe it was written into
    /// ([`Entry::era`]): one written into an older incarnation (by a node
    /// cut off from the deletion) is not the new tribe's, and loses every
    /// conflict with the new tribe's records of the same key.
    #[serde(default)]
    pub era: Option<Hlc>,
}

/// A policy: `when` holds for a node → the node is in `tribe`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRecord {
    /// Target tribe (created by the first node the policy holds for).
    pub tribe: String,
    /// CEL expression over `facts`.
    pub when: String,
}

/// Content address of a plugin artifact.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactRef {
    /// SHA-256 of the bytes.
    pub sha256: [u8; 32],
    /// Size in bytes.
    pub size: u64,
}

/// A plugin entry of a tribe's catalog.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginRecord {
    /// Plugin kind.
    pub kind: PluginKind,
    /// Optional artifact every member should fetch and verify.
    pub artifact: Option<ArtifactRef>,
}

/// Desired state of a task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TaskState {
    /// Members should run it.
    Running,
    /// Members should not run it.
    Stopped,
}

impl TaskState {
    /// Lower-case name used in APIs.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Running => "running",
            TaskState::Stopped => "stopped",
        }
    }
}

/// A task of a tribe.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRecord {
    /// JSON manifest (an object).
    pub manifest: String,
    /// Desired state.
    pub state: TaskState,
}

/// A keyring key as a replicated value. Its bytes are serialised for sealed
/// links only; `Debug` shows the key id.
#[derive(Clone, PartialEq, Eq)]
pub struct RingKeyRecord(pub SecretKey);

impl std::fmt::Debug for RingKeyRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RingKeyRecord({})", self.0.id())
    }
}

impl Serialize for RingKeyRecord {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.as_bytes().serialize(s)
    }
}

impl<'de> Deserialize<'de> for RingKeyRecord {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <[u8; crate::crypto::KEY_LEN]>::deserialize(d)
            .map(|b| RingKeyRecord(SecretKey::from_bytes(b)))
    }
}

/// Value of a record; the variant always matches the key's kind.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Value {
    /// For [`Key::Node`].
    Node(NodeRecord),
    /// For [`Key::Tribe`].
    Tribe(TribeRecord),
    /// For [`Key::Member`].
    Member,
    /// For [`Key::Policy`].
    Policy(PolicyRecord),
    /// For [`Key::Plugin`].
    Plugin(PluginRecord),
    /// For [`Key::Task`].
    Task(TaskRecord),
    /// For [`Key::RingKey`].
    RingKey(RingKeyRecord),
    /// For [`Key::RingPrimary`].
    RingPrimary(KeyId),
}

/// One versioned register: a value, or a tombstone (`None`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Version of the write.
    pub version: Hlc,
    /// The value, or `None` once deleted.
    pub value: Option<Value>,
    /// For a tribe's child record (membership by hand, plugin entry, task),
    /// the era of the tribe it was written into ([`TribeRecord::era`], or
    /// the tribe's mark when later): a later era wins a conflict whatever
    /// the versions. On a tribe's own key, its mark: the latest era of the
    /// writes it beat, whose records are the tribe's too. `None` otherwise.
    #[serde(default)]
    pub era: Option<Hlc>,
}

impl Entry {
    /// What orders two writes of one child key: the era, then the version
    /// (a tribe's own key is ordered by its version alone).
    pub fn order(&self) -> (Option<&Hlc>, &Hlc) {
        (self.era.as_ref(), &self.version)
    }
}

/// Bounds on what a peer may send in one record.
pub mod limits {
    /// Facts per node.
    pub const MAX_FACTS: usize = 256;
    /// Endpoints per node.
    pub const MAX_ENDPOINTS: usize = 256;
    /// Policy-derived tribes per node.
    pub const MAX_POLICY_TRIBES: usize = 1024;
    /// Artifacts one node advertises.
    pub const MAX_ARTIFACTS: usize = 256;
    /// Bytes of a task manifest.
    pub const MAX_MANIFEST_LEN: usize = 64 * 1024;
    /// Nesting of a task manifest's JSON (objects and arrays; a manifest of
    /// the documented schema nests 4 deep). JSON readers stop at a depth
    /// (serde_json at 128): a manifest near it, wrapped in a reply, made
    /// that reply unreadable.
    pub const MAX_MANIFEST_DEPTH: usize = 32;
}

/// How deep the objects and arrays of a JSON text nest (0 for a scalar),
/// brackets inside strings not counted. For a text already parsed or
/// bounded in size: it does not check the JSON.
pub fn json_depth(text: &str) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for b in text.bytes() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// Why a record from a peer was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid record: {0}")]
pub struct InvalidRecord(pub &'static str);

/// Checks a record received from the network before it is merged.
pub fn validate(key: &Key, entry: &Entry) -> Result<(), InvalidRecord> {
    if !names::is_valid(&entry.version.node) {
        return Err(InvalidRecord("bad writer name in version"));
    }
    let names_ok = match key {
        Key::Node(n) | Key::Tribe(n) | Key::Policy(n) => names::is_valid(n),
        Key::Member { tribe, node } => names::is_valid(tribe) && names::is_valid(node),
        Key::Plugin {
            tribe,
            name,
            version,
        } => {
            names::is_valid(tribe) && names::is_valid(name) && names::check_version(version).is_ok()
        }
        Key::Task { tribe, id } => names::is_valid(tribe) && names::is_valid(id),
        Key::RingKey(_) | Key::RingPrimary => true,
    };
    if !names_ok {
        return Err(InvalidRecord("bad name in key"));
    }
    let child = matches!(
        key,
        Key::Member { .. } | Key::Plugin { .. } | Key::Task { .. }
    );
    // A tribe's write carries the latest era of those it beat (see `State`).
    let tribe = matches!(key, Key::Tribe(_));
    if let Some(era) = &entry.era {
        if !child && !tribe {
            return Err(InvalidRecord("an era on a record that is not a tribe's"));
        }
        // An incarnation is a deletion's version, written before the
        // record. A tribe's mark may reach its own version: another write
        // under the same version (hostile input only) marks it so in every
        // store that met both, and a store must not hold what peers refuse.
        let too_late = if tribe {
            *era > entry.version
        } else {
            *era >= entry.version
        };
        if too_late || !names::is_valid(&era.node) {
            return Err(InvalidRecord("an era that is not an earlier version"));
        }
    }
    let Some(value) = &entry.value else {
        return Ok(());
    };
    match (key, value) {
        (Key::Node(owner), Value::Node(rec)) => {
            // Only the owner writes its record; a tombstone may come from anyone.
            if &entry.version.node != owner {
                return Err(InvalidRecord("node record not written by its owner"));
            }
            validate_node(rec)
        }
        (Key::Tribe(_), Value::Tribe(t)) => {
            if t.era
                .as_ref()
                .is_some_and(|e| *e >= entry.version || !names::is_valid(&e.node))
            {
                return Err(InvalidRecord(
                    "a tribe's era that is not an earlier version",
                ));
            }
            Ok(())
        }
        (Key::Member { .. }, Value::Member) => Ok(()),
        (Key::Policy(_), Value::Policy(p)) => {
            if !names::is_valid(&p.tribe) || p.when.len() > crate::policy::MAX_EXPRESSION_LEN {
                Err(InvalidRecord("bad policy"))
            } else {
                Ok(())
            }
        }
        (Key::Plugin { .. }, Value::Plugin(_)) => Ok(()),
        (Key::Task { .. }, Value::Task(t)) => {
            if t.manifest.len() > limits::MAX_MANIFEST_LEN {
                Err(InvalidRecord("task manifest too large"))
            } else if json_depth(&t.manifest) > limits::MAX_MANIFEST_DEPTH {
                Err(InvalidRecord("task manifest nests too deep"))
            } else {
                Ok(())
            }
        }
        (Key::RingKey(id), Value::RingKey(k)) => {
            if k.0.id() == *id {
                Ok(())
            } else {
                Err(InvalidRecord("keyring key does not match its id"))
            }
        }
        (Key::RingPrimary, Value::RingPrimary(_)) => Ok(()),
        _ => Err(InvalidRecord("value does not match key kind")),
    }
}

fn validate_node(rec: &NodeRecord) -> Result<(), InvalidRecord> {
    if rec.facts.len() > limits::MAX_FACTS
        || rec
            .facts
            .iter()
            .any(|(k, v)| crate::facts::validate_fact(k, v).is_err())
    {
        return Err(InvalidRecord("bad facts"));
    }
    if rec.policy_tribes.len() > limits::MAX_POLICY_TRIBES
        || !rec.policy_tribes.iter().all(|t| names::is_valid(t))
    {
        return Err(InvalidRecord("bad policy tribes"));
    }
    if rec.endpoints.len() > limits::MAX_ENDPOINTS
        || !rec
            .endpoints
            .iter()
            .all(|e| names::is_valid(&e.name) && names::check_version(&e.version).is_ok())
    {
        return Err(InvalidRecord("bad endpoints"));
    }
    if rec.artifacts.len() > limits::MAX_ARTIFACTS || rec.keys.len() > crate::crypto::MAX_KEYS {
        return Err(InvalidRecord("too many artifacts or keys"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_depth_counts_brackets_outside_strings() {
        assert_eq!(json_depth("1"), 0);
        assert_eq!(json_depth("{}"), 1);
        assert_eq!(json_depth(r#"{"a":[{"b":{}}],"c":[]}"#), 4);
        assert_eq!(json_depth(r#"{"a":"[[[{{{","b":"\\\"[["}"#), 1);
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert_eq!(json_depth(&deep), 200);
    }
}
