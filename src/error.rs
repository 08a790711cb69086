//! The error type of every public operation.

use crate::policy::PolicyError;

/// Why a command, a start or a read failed. Each variant is stable: the C ABI
/// maps them to result codes that are never renumbered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A name (node, tribe, policy, plugin, task, fact) broke the naming rules.
    #[error("invalid {what} {name:?}: {reason}")]
    InvalidName {
        /// What kind of name it was.
        what: &'static str,
        /// The name as given (truncated).
        name: String,
        /// The rule it broke.
        reason: &'static str,
    },
    /// An argument other than a name was out of range or malformed.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The tribe does not exist.
    #[error("unknown tribe {:?}", shown(.0))]
    UnknownTribe(String),
    /// The tribe exists already.
    #[error("tribe {0:?} exists already")]
    TribeExists(String),
    /// No node of that name is known to this node.
    #[error("unknown node {:?}", shown(.0))]
    UnknownNode(String),
    /// The node is a member of the tribe by hand already.
    #[error("node {node:?} is a member of tribe {tribe:?} already")]
    AlreadyMember {
        /// The tribe.
        tribe: String,
        /// The node.
        node: String,
    },
    /// The node is not a member of the tribe by hand (it may be one by policy).
    #[error("node {node:?} is not a member of tribe {tribe:?} by hand")]
    NotMember {
        /// The tribe.
        tribe: String,
        /// The node.
        node: String,
    },
    /// A policy expression did not compile.
    #[error("invalid policy: {0}")]
    InvalidPolicy(#[source] PolicyError),
    /// The policy does not exist.
    #[error("unknown policy {:?}", shown(.0))]
    UnknownPolicy(String),
    /// A policy of that name exists already.
    #[error("policy {0:?} exists already")]
    PolicyExists(String),
    /// The plugin entry does not exist in the tribe's catalog (or, with no
    /// tribe, this node does not serve it).
    #[error("unknown plugin {}:{}{}", shown(.name), shown(.version), where_unknown(.tribe))]
    UnknownPlugin {
        /// The tribe.
        tribe: String,
        /// Plugin name.
        name: String,
        /// Plugin version.
        version: String,
    },
    /// The plugin entry exists already in the tribe's catalog.
    #[error("plugin {name}:{version} is loaded in tribe {tribe:?} already")]
    PluginExists {
        /// The tribe.
        tribe: String,
        /// Plugin name.
        name: String,
        /// Plugin version.
        version: String,
    },
    /// The task does not exist in the tribe.
    #[error("unknown task {:?} in tribe {:?}", shown(.id), shown(.tribe))]
    UnknownTask {
        /// The tribe.
        tribe: String,
        /// Task id.
        id: String,
    },
    /// A task with that id exists already in the tribe.
    #[error("task {id:?} exists in tribe {tribe:?} already")]
    TaskExists {
        /// The tribe.
        tribe: String,
        /// Task id.
        id: String,
    },
    /// The fact is not a user fact of this node.
    #[error("unknown user fact {:?}", shown(.0))]
    UnknownFact(String),
    /// A keyring operation on a node without encryption.
    #[error("this node has no keyring: start it with a key")]
    NoKeyring,
    /// Keyring operations need every link sealed, or keys would travel in plaintext.
    #[error("keys are spread only by nodes that require encryption: switch to `require` first")]
    EncryptionNotRequired,
    /// The keyring holds the most keys it can.
    #[error("the keyring holds 8 keys already; remove one first")]
    KeyringFull,
    /// No such key in the keyring.
    #[error("key {0} is not in the keyring")]
    UnknownKey(String),
    /// The primary key cannot be removed.
    #[error("key {0} is the primary key; make another key primary first")]
    PrimaryKey(String),
    /// A keyring step would cut live members off: the key is not yet on
    /// every live member (making it primary), or some still seal with it
    /// (removing it). Nothing changed; retry once the last step has spread.
    #[error("key {key}: not yet {step} on {} (waited {waited_s} s); going on now would cut them off", .waiting_for.join(", "))]
    KeyNotSpread {
        /// The key's id.
        key: String,
        /// What the members named have not done yet (`"installed"`, or
        /// `"switched to another primary key"`).
        step: String,
        /// The live members not there yet.
        waiting_for: Vec<String>,
        /// How long the step waited for them.
        waited_s: u64,
    },
    /// No live member of the tribe serves the plugin (or every one that
    /// did refused the call as it stopped serving it: stopping, or
    /// unserving it with the call still queued).
    #[error("{} {plugin:?} ({wanted}){}{}", who_serves(.tribe), stopping_note(.stopping), unreachable_note(.unreachable))]
    NoProvider {
        /// The tribe; empty for a call to the node's own handler (a
        /// workflow step that names no tribe).
        tribe: String,
        /// The plugin.
        plugin: String,
        /// The kind and version asked for (`processor, any version`), as
        /// members may serve the name as another kind or version.
        wanted: String,
        /// The members that served it but refused this call, unrun, as they
        /// stopped serving it (empty when none did).
        stopping: Vec<String>,
        /// The members listed as serving it that could not be reached (the
        /// call did not run there; empty when none).
        unreachable: Vec<String>,
    },
    /// The call did not complete within its timeout.
    #[error("the call did not complete within its timeout{}", waiting_on(.host))]
    Timeout {
        /// The member the call waited on when its time ran out (`None`
        /// before one was tried, or for a handler's own `timeout`).
        host: Option<String>,
    },
    /// The handler returned an error (or panicked: code `panic`).
    #[error("the handler failed: {code}: {message}")]
    Remote {
        /// The handler's code.
        code: String,
        /// The handler's message.
        message: String,
    },
    /// A call's payload or its reply over the limit (the host's
    /// `max_payload` for what it takes, the caller's for what it sends and
    /// accepts back), or a plugin artifact over its limit. A reply over the
    /// host's own limit is not sent: the caller gets
    /// [`Error::Remote`] with code `"too_large"` (as C does);
    /// [`Error::is_too_large`] matches both.
    #[error("{size} bytes is over the limit of {limit} bytes")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// Too many calls (or joins) under way, here or at every host;
    /// [`Overload`] says where.
    #[error("overloaded: {by}; try again later")]
    Overloaded {
        /// Which limit refused it.
        by: Overload,
    },
    /// The host went away with the call in flight; it may or may not have run.
    #[error("host {host:?} went away with the call in flight (it may or may not have run)")]
    Disconnected {
        /// The host.
        host: String,
    },
    /// The node is shutting down or has stopped.
    #[error("the node is shutting down")]
    ShuttingDown,
    /// A socket or a file could not be used.
    #[error("i/o error: {0}")]
    Io(String),
    /// The configuration is inconsistent.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The replicated state holds as many records of a kind as allowed
    /// ([`crate::config::StateLimits`]). Removed records count until their
    /// tombstones are collected (after the tombstone grace).
    #[error(
        "this node holds {limit} {what} or more already (the limit; removed ones count until \
         their tombstones are collected, after the tombstone grace)"
    )]
    LimitReached {
        /// Kind of record, plural.
        what: String,
        /// The limit.
        limit: usize,
    },
}

/// Which limit refused a call or a join as [`Error::Overloaded`]: this
/// node's own (raise it, or call less at once) or the hosts' (add hosts,
/// or retry later).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Overload {
    /// This node has as many calls in flight as it allows
    /// ([`crate::rpc::RpcLimits::max_inflight`]).
    #[error("this node has as many calls in flight as it allows (max_inflight {limit})")]
    Calls {
        /// The limit.
        limit: usize,
    },
    /// This node's stream to the host carries as many calls as it allows
    /// ([`crate::rpc::RpcLimits::max_inflight_per_conn`]).
    #[error(
        "this node's stream to {host} carries as many calls as it allows \
         (max_inflight_per_conn {limit})"
    )]
    Stream {
        /// The host the stream goes to.
        host: String,
        /// The limit.
        limit: usize,
    },
    /// The hosts named (this node too, when it serves the plugin), each
    /// running as many calls as it allows (its `max_serving`), serving as
    /// many call streams (`max_streams`), or not taking what was sent to
    /// it; others serving it could not be reached, if any.
    #[error(
        "busy hosts: {} (each runs as many calls or call streams as it allows, max_serving and \
         max_streams, or does not take what was sent to it)",
        .0.join(", ")
    )]
    Hosts(Vec<String>),
    /// This node has as many joins under way as it allows.
    #[error("this node has as many joins under way as it allows ({limit})")]
    Joins {
        /// The limit.
        limit: usize,
    },
    /// The C ABI (and the Go package over it): this node's calls in
    /// flight, with completions not yet taken in C, reach its
    /// `max_inflight` (take completions, or call less at once).
    #[error(
        "this node has as many calls in flight as it allows (max_inflight {limit}; in C, \
         completions not yet taken count as in flight)"
    )]
    Completions {
        /// The bound.
        limit: usize,
    },
}

impl Error {
    /// Whether a payload or a reply was over a limit: [`Error::TooLarge`],
    /// or a host's refusal of its handler's reply ([`Error::Remote`] with
    /// code `"too_large"`), as Go's `ErrTooLarge` matches both.
    pub fn is_too_large(&self) -> bool {
        match self {
            Error::TooLarge { .. } => true,
            Error::Remote { code, .. } => code == "too_large",
            _ => false,
        }
    }

    /// A stable snake_case code for the variant, used by the admin API's
    /// `{"error": code}` bodies and by bindings.
    pub fn code(&self) -> &'static str {
        match self {
            Error::InvalidName { .. } => "invalid_name",
            Error::InvalidArgument(_) => "invalid_argument",
            Error::UnknownTribe(_) => "unknown_tribe",
            Error::TribeExists(_) => "tribe_exists",
            Error::UnknownNode(_) => "unknown_node",
            Error::AlreadyMember { .. } => "already_member",
            Error::NotMember { .. } => "not_member",
            Error::InvalidPolicy(_) => "invalid_policy",
            Error::UnknownPolicy(_) => "unknown_policy",
            Error::PolicyExists(_) => "policy_exists",
            Error::UnknownPlugin { .. } => "unknown_plugin",
            Error::PluginExists { .. } => "plugin_exists",
            Error::UnknownTask { .. } => "unknown_task",
            Error::TaskExists { .. } => "task_exists",
            Error::UnknownFact(_) => "unknown_fact",
            Error::NoKeyring => "no_keyring",
            Error::EncryptionNotRequired => "encryption_not_required",
            Error::KeyringFull => "keyring_full",
            Error::UnknownKey(_) => "unknown_key",
            Error::PrimaryKey(_) => "primary_key",
            Error::KeyNotSpread { .. } => "key_not_spread",
            Error::NoProvider { .. } => "no_provider",
            Error::Timeout { .. } => "timeout",
            Error::Remote { .. } => "remote",
            Error::TooLarge { .. } => "too_large",
            Error::Overloaded { .. } => "overloaded",
            Error::Disconnected { .. } => "disconnected",
            Error::ShuttingDown => "shutting_down",
            Error::Io(_) => "io",
            Error::Config(_) => "config",
            Error::LimitReached { .. } => "limit_reached",
        }
    }
}

/// A key that could not be parsed, or a keyring step the keyring refused,
/// as a libtribe error (so `?` takes a [`SecretKey`](crate::SecretKey)
/// parse in a function returning [`Result`]).
impl From<crate::crypto::KeyError> for Error {
    fn from(e: crate::crypto::KeyError) -> Self {
        use crate::crypto::KeyError;
        match e {
            KeyError::Full => Error::KeyringFull,
            KeyError::UnknownKey(id) => Error::UnknownKey(id.to_string()),
            KeyError::IsPrimary(id) => Error::PrimaryKey(id.to_string()),
            other => Error::InvalidArgument(other.to_string()),
        }
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(e.to_string())
    }
}

/// Result of libtribe operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A name the caller gave, as an "unknown" error quotes it: cut at 80
/// characters (a read of any name answers with it, however long).
fn shown(name: &str) -> std::borrow::Cow<'_, str> {
    crate::names::truncate_for_message(name)
}

/// Where an unknown plugin was looked for: a tribe's catalog, or (no tribe)
/// what this node serves.
fn where_unknown(tribe: &str) -> String {
    if tribe.is_empty() {
        " (this node does not serve it)".into()
    } else {
        format!(" in tribe {:?}", shown(tribe))
    }
}

/// How [`Error::NoProvider`] names the kind and version a call asked for.
pub(crate) fn wanted(kind: crate::PluginKind, version: Option<&str>) -> String {
    match version {
        Some(v) => format!("{}, version {v:?}", kind.as_str()),
        None => format!("{}, any version", kind.as_str()),
    }
}

/// Where [`Error::NoProvider`] looked: a tribe's members, or the node alone.
fn who_serves(tribe: &str) -> String {
    if tribe.is_empty() {
        "this node does not serve".to_string()
    } else {
        format!("no live member of tribe {tribe:?} serves")
    }
}

/// Which members could not be reached though listed as serving the plugin.
fn unreachable_note(unreachable: &[String]) -> String {
    match unreachable {
        [] => String::new(),
        [one] => format!("; {one}, listed as serving it, could not be reached"),
        many => format!(
            "; {}, listed as serving it, could not be reached",
            many.join(", ")
        ),
    }
}

/// Which members refused a call as they stopped serving its plugin.
fn stopping_note(stopping: &[String]) -> String {
    match stopping {
        [] => String::new(),
        [one] => format!("; {one} refused it as it stopped serving it"),
        many => format!(
            "; {} refused it as they stopped serving it",
            many.join(", ")
        ),
    }
}

/// The host part of a timeout's message.
fn waiting_on(host: &Option<String>) -> String {
    host.as_ref()
        .map(|h| format!(" (waiting on {h:?})"))
        .unwrap_or_default()
}
