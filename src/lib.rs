//! libtribe: monitoring agents form *tribes* — a SWIM gossip cluster split into
//! named, overlapping subtribes, with facts, CEL policies and per-tribe catalogs
//! of plugins and tasks that every member inherits.
//!
//! Layers (arrows point down only): [`api`] → `runtime` → `engine` →
//! `state` / [`policy`] / `wire` / [`facts`]. The engine is sans-IO: the
//! tokio runtime and the deterministic simulator drive the same code.
#![deny(unsafe_code)]
#![warn(missing_docs)]

/// Declares an engine-internal module: crate-private, unless the
/// `internals` feature (tests, benches, fuzzing, the simulator's
/// scenarios) makes it public. What embedders use is re-exported below.
macro_rules! internal_mod {
    ($name:ident) => {
        #[cfg(feature = "internals")]
        #[doc(hidden)]
        pub mod $name;
        #[cfg(not(feature = "internals"))]
        pub(crate) mod $name;
    };
}

pub mod admin;
pub mod api;
internal_mod!(artifacts);
mod blocking;
pub mod config;
pub mod counters;
pub mod crypto;
// The data dir's files, for the `tribe` command: not part of the API.
#[doc(hidden)]
pub mod datadir;
internal_mod!(engine);
pub mod error;
pub mod facts;
pub mod keyfile;
// Entry points of the fuzz targets (`fuzz/`); compiled for tests too, so the
// seed corpora replay under plain `cargo test`.
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
// The C ABI: the only module allowed `unsafe`, each block with a SAFETY note.
#[allow(unsafe_code)]
mod ffi;
internal_mod!(hlc);
pub mod names;
pub mod policy;
internal_mod!(policy_set);
internal_mod!(records);
pub mod rpc;
// The runtime the bindings and the `tribe` command build: not part of the API.
#[doc(hidden)]
pub mod runtime_build;
internal_mod!(runtime);
mod seeds;
mod setup_slots;
// The engine in virtual time, for `tribe-sim` and the tests: nothing else
// in the crate uses it.
#[cfg(feature = "internals")]
#[doc(hidden)]
pub mod sim;
mod small_file;
mod spin;
internal_mod!(state);
internal_mod!(stream);
internal_mod!(wire);
pub mod workflow;

pub use api::{EventStream, Node, WeakNode};
pub use artifacts::RELEASE_AFTER as ARTIFACT_RELEASE_AFTER;
pub use config::{Config, Encryption, Profile, Timings, MAX_PAYLOAD};
pub use crypto::{KeyId, Keyring, SecretKey};
pub(crate) use engine::commands::Command;
pub use engine::keys::{KeyHolding, KeyringStatus};
pub use engine::view::{MemberInfo, MemberState, Membership, PluginEntry, Policy, Task, TribeInfo};
pub use engine::Event;
pub use error::{Error, Overload, Result};
pub use records::{ArtifactRef, Endpoint, PluginKind, TaskState};
pub use rpc::responder::Responder;
pub use rpc::{CallInfo, CallTarget, HandlerError};
