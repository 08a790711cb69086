//! The JSON bodies of the admin API. The server builds them from snapshots;
//! the `tribe` admin commands read them back, so both sides share one shape.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::engine::keys::KeyringStatus;
use crate::engine::view::{MemberInfo, PluginEntry, Policy, Task, TribeInfo};
use crate::records::Endpoint;
use crate::Event;

/// `GET /v1/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// Node name.
    pub name: String,
    /// Advertised gossip address.
    pub addr: String,
    /// Live members, this node included: alive or suspect (a suspect is
    /// up until it is found failed; `/metrics` counts the two apart).
    pub members_alive: usize,
    /// Hex digest of the replicated state (equal on converged nodes).
    pub state_digest: String,
    /// Tribes that exist.
    pub tribes: usize,
    /// Gossip updates waiting to be sent.
    pub broadcast_backlog: usize,
    /// libtribe version.
    pub version: String,
    /// Encryption mode: `accept`, `send`, `require`, or `off` without a keyring.
    #[serde(default)]
    pub encryption: Option<String>,
    /// Primary key id, absent without a keyring.
    #[serde(default)]
    pub primary_key: Option<String>,
    /// While another live node holds this node's name, the address it
    /// runs at (this node keeps out meanwhile); absent otherwise.
    #[serde(default)]
    pub name_held_by: Option<String>,
    /// A peer that refused this node's key in the last minute (the tribe
    /// may have rotated its keys without this node); absent otherwise.
    #[serde(default)]
    pub key_refused_by: Option<String>,
}

/// A plugin a member serves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndpointJson {
    /// Plugin name.
    pub name: String,
    /// Plugin version.
    pub version: String,
    /// `collector`, `processor` or `publisher`.
    pub kind: String,
    /// TCP address serving calls.
    pub addr: String,
}

/// `GET /v1/members` item and `GET /v1/members/{name}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Member {
    /// Node name.
    pub name: String,
    /// Advertised address.
    pub addr: String,
    /// `alive`, `suspect`, `failed` or `left`.
    pub state: String,
    /// Generation of its identity (grows on restart).
    pub generation: u64,
    /// Its facts.
    pub facts: BTreeMap<String, String>,
    /// Tribes whose live view holds it; for a failed or left member, the
    /// tribes it would be in (by hand or by policy) were it up.
    pub tribes: Vec<String>,
    /// Plugins it serves.
    pub endpoints: Vec<EndpointJson>,
    /// Whether it is the node answering.
    pub local: bool,
}

/// A plugin entry of a tribe's catalog.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plugin {
    /// Plugin name.
    pub name: String,
    /// Plugin version.
    pub version: String,
    /// `collector`, `processor` or `publisher`.
    pub kind: String,
    /// Hex SHA-256 of the artifact, when the entry has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Artifact size in bytes, when the entry has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}

/// A task of a tribe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskJson {
    /// Task id.
    pub id: String,
    /// `running` or `stopped`.
    pub state: String,
    /// The manifest (a JSON object).
    pub manifest: serde_json::Value,
}

/// `GET /v1/tribes` item and `GET /v1/tribes/{name}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tribe {
    /// Tribe name.
    pub name: String,
    /// Live members (by hand or by policy, and up), sorted.
    pub members: Vec<String>,
    /// Members by hand, up or not.
    pub explicit_members: Vec<String>,
    /// Catalog of plugins.
    pub plugins: Vec<Plugin>,
    /// Tasks.
    pub tasks: Vec<TaskJson>,
}

/// A policy, as listed; [`NewPolicy`] is the body that adds one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyJson {
    /// Policy name.
    pub name: String,
    /// Tribe it puts nodes in (created when missing).
    pub tribe: String,
    /// CEL expression over `facts`.
    pub when: String,
}

/// Body of `POST /v1/policies`: the fields of [`PolicyJson`], and no other
/// (a misspelt field is refused, not ignored).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewPolicy {
    /// Policy name.
    pub name: String,
    /// Tribe it puts nodes in (created when missing).
    pub tribe: String,
    /// CEL expression over `facts`.
    pub when: String,
}

/// Body of `POST /v1/tribes`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTribe {
    /// Tribe name.
    pub name: String,
}

/// Body of `POST /v1/tribes/{name}/plugins`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadPlugin {
    /// Plugin name.
    pub name: String,
    /// Plugin version.
    pub version: String,
    /// `collector`, `processor` or `publisher`.
    pub kind: String,
}

/// Body of `POST /v1/tribes/{name}/tasks`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddTask {
    /// Task id, unique in the tribe.
    pub id: String,
    /// The manifest: a JSON object.
    pub manifest: serde_json::Value,
    /// `running` (the default) or `stopped`.
    #[serde(default)]
    pub state: Option<String>,
}

/// Body of `PUT /v1/facts/{key}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetFact {
    /// The new value.
    pub value: String,
}

/// `GET /v1/keys`: which live nodes hold which keys (ids only, never keys).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Keys {
    /// This node's mode (`accept`, `send`, `require`), absent without a keyring.
    pub encryption: Option<String>,
    /// This node's primary key id.
    pub primary: Option<String>,
    /// Live members counted, this node included.
    pub members: usize,
    /// Every key some live member holds.
    pub keys: Vec<KeyHolding>,
}

/// One key across the live members.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyHolding {
    /// Public key id (8 hex digits).
    pub id: String,
    /// Live nodes that hold it.
    pub installed_on: Vec<String>,
    /// Live nodes that seal with it.
    pub primary_on: Vec<String>,
}

/// Body of `POST /v1/keys`. `Debug` never shows the key.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstallKey {
    /// The key, base64 (as `tribe keygen` prints it).
    pub key: String,
}

impl std::fmt::Debug for InstallKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InstallKey { key: <redacted> }")
    }
}

/// Body of `POST /v1/join`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinCluster {
    /// `host:port` places to join through: addresses, or names looked up.
    pub addrs: Vec<String>,
}

/// Reply of `POST /v1/join`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Joined {
    /// Addresses whose join exchange completed.
    pub joined: usize,
}

/// Body of `PUT /v1/encryption`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetEncryption {
    /// `accept`, `send` or `require`.
    pub mode: String,
}

/// Every error body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Stable snake_case code (see [`crate::Error::code`]).
    pub error: String,
    /// Human-readable message.
    pub message: String,
}

/// The `encryption` a status shows for a node with no keyring.
pub const ENCRYPTION_OFF: &str = "off";

impl Status {
    /// The status of a running node.
    pub fn of(node: &crate::Node) -> Status {
        let keys = node.keyring_status();
        Status {
            encryption: Some(
                keys.encryption
                    .map_or(ENCRYPTION_OFF, |e| e.as_str())
                    .to_string(),
            ),
            primary_key: keys.primary.map(|p| p.to_string()),
            name: node.name().to_string(),
            addr: node.addr().to_string(),
            members_alive: node.members_alive(),
            state_digest: node.state_digest(),
            tribes: node.tribe_count(),
            broadcast_backlog: node.broadcast_backlog(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            name_held_by: node.name_held_by().map(|a| a.to_string()),
            key_refused_by: node.key_refused_by().map(|a| a.to_string()),
        }
    }
}

fn endpoint(e: &Endpoint) -> EndpointJson {
    EndpointJson {
        name: e.name.clone(),
        version: e.version.clone(),
        kind: e.kind.as_str().to_string(),
        addr: e.addr.to_string(),
    }
}

impl From<&MemberInfo> for Member {
    fn from(m: &MemberInfo) -> Self {
        Member {
            name: m.name.clone(),
            addr: m.addr.to_string(),
            state: m.state.as_str().to_string(),
            generation: m.generation,
            facts: m.facts.clone(),
            tribes: m.tribes.clone(),
            endpoints: m.endpoints.iter().map(endpoint).collect(),
            local: m.is_local,
        }
    }
}

impl From<&PluginEntry> for Plugin {
    fn from(p: &PluginEntry) -> Self {
        Plugin {
            name: p.name.clone(),
            version: p.version.clone(),
            kind: p.kind.as_str().to_string(),
            sha256: p.artifact.as_ref().map(|a| hex::encode(a.sha256)),
            size: p.artifact.as_ref().map(|a| a.size),
        }
    }
}

impl From<&Task> for TaskJson {
    fn from(t: &Task) -> Self {
        TaskJson {
            id: t.id.clone(),
            state: t.state.as_str().to_string(),
            // Manifests are checked to be JSON objects when added; a record
            // that is not still shows, as a string.
            manifest: serde_json::from_str(&t.manifest)
                .unwrap_or_else(|_| serde_json::Value::String(t.manifest.clone())),
        }
    }
}

impl From<&TribeInfo> for Tribe {
    fn from(t: &TribeInfo) -> Self {
        Tribe {
            name: t.name.clone(),
            members: t.members.clone(),
            explicit_members: t.explicit_members.clone(),
            plugins: t.plugins.iter().map(Plugin::from).collect(),
            tasks: t.tasks.iter().map(TaskJson::from).collect(),
        }
    }
}

impl From<&KeyringStatus> for Keys {
    fn from(s: &KeyringStatus) -> Self {
        Keys {
            encryption: s.encryption.map(|e| e.as_str().to_string()),
            primary: s.primary.map(|p| p.to_string()),
            members: s.members,
            keys: s
                .keys
                .iter()
                .map(|k| KeyHolding {
                    id: k.id.to_string(),
                    installed_on: k.installed_on.clone(),
                    primary_on: k.primary_on.clone(),
                })
                .collect(),
        }
    }
}

impl From<&Policy> for PolicyJson {
    fn from(p: &Policy) -> Self {
        PolicyJson {
            name: p.name.clone(),
            tribe: p.tribe.clone(),
            when: p.when.clone(),
        }
    }
}

/// The stable snake_case name of an event's kind (the `"kind"` of its JSON).
pub fn event_kind(e: &Event) -> &'static str {
    match e {
        Event::Joined => "joined",
        Event::Isolated => "isolated",
        Event::MemberJoined { .. } => "member_joined",
        Event::MemberUpdated { .. } => "member_updated",
        Event::MemberLeft { .. } => "member_left",
        Event::MemberFailed { .. } => "member_failed",
        Event::MemberReaped { .. } => "member_reaped",
        Event::TribeCreated { .. } => "tribe_created",
        Event::TribeDeleted { .. } => "tribe_deleted",
        Event::TribeJoined { .. } => "tribe_joined",
        Event::TribeLeft { .. } => "tribe_left",
        Event::PluginLoad(_) => "plugin_load",
        Event::PluginUnload(_) => "plugin_unload",
        Event::TaskRun(_) => "task_run",
        Event::TaskStop(_) => "task_stop",
        Event::ArtifactCorrupt { .. } => "artifact_corrupt",
        Event::ArtifactUnavailable { .. } => "artifact_unavailable",
        Event::PolicyError { .. } => "policy_error",
        Event::IdentityClaimed { .. } => "identity_claimed",
        Event::ClockSkew { .. } => "clock_skew",
    }
}

/// An event as JSON: `{"kind": ..., fields of the kind}` (the schema is in
/// docs/c-api.md).
pub fn event(e: &Event) -> serde_json::Value {
    use serde_json::json;
    let kind = event_kind(e);
    match e {
        Event::Joined | Event::Isolated => json!({ "kind": kind }),
        Event::MemberJoined { name, addr } => {
            json!({ "kind": kind, "name": name, "addr": addr.to_string() })
        }
        Event::MemberUpdated { name }
        | Event::MemberLeft { name }
        | Event::MemberFailed { name }
        | Event::MemberReaped { name } => json!({ "kind": kind, "name": name }),
        Event::TribeCreated { tribe }
        | Event::TribeDeleted { tribe }
        | Event::TribeLeft { tribe } => {
            json!({ "kind": kind, "tribe": tribe })
        }
        Event::TribeJoined { tribe, by } => json!({
            "kind": kind, "tribe": tribe, "by_hand": by.by_hand, "by_policy": by.by_policy
        }),
        Event::PluginLoad(p) | Event::PluginUnload(p) => {
            json!({ "kind": kind, "tribe": p.tribe, "plugin": Plugin::from(p) })
        }
        Event::TaskRun(t) | Event::TaskStop(t) => {
            json!({ "kind": kind, "tribe": t.tribe, "task": TaskJson::from(t) })
        }
        Event::ArtifactCorrupt { plugin, holder } => json!({
            "kind": kind, "tribe": plugin.tribe, "plugin": Plugin::from(plugin), "holder": holder
        }),
        Event::ArtifactUnavailable { plugin, reason } => json!({
            "kind": kind, "tribe": plugin.tribe, "plugin": Plugin::from(plugin), "reason": reason
        }),
        Event::PolicyError { policy, message } => {
            json!({ "kind": kind, "policy": policy, "message": message })
        }
        Event::IdentityClaimed { addr, generation } => {
            json!({ "kind": kind, "addr": addr.to_string(), "generation": generation })
        }
        Event::ClockSkew { peer, offset_ms } => {
            json!({ "kind": kind, "name": peer, "offset_ms": offset_ms })
        }
    }
}
