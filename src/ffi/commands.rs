//! The commands of a node (`tribe_node_*`): tribes, memberships, policies,
//! facts, the catalog (plugins and tasks) and the keyring. Each runs one
//! command of the Rust API; they block for a local write only, but for the
//! keyring steps, which wait for peers (each says how long). Joining a
//! running cluster is in [`super::join`].

use std::ffi::c_char;

use super::cast;
use super::error::FfiError;
use super::node::{node_handle, with_signals_blocked, TribeNode};
use crate::{KeyId, Node, SecretKey, TaskState};

/// Task states for `tribe_node_add_task` and `tribe_node_set_task_state`.
pub const TRIBE_TASK_RUNNING: u32 = 1;
/// A task members should not run.
pub const TRIBE_TASK_STOPPED: u32 = 2;

/// Runs one command of the Rust API for an exported function.
pub(super) fn command<'a, F, Fut>(node: *const TribeNode, f: F) -> Result<(), FfiError>
where
    F: FnOnce(&'a Node) -> Result<Fut, FfiError>,
    Fut: std::future::Future<Output = crate::Result<()>>,
{
    let handle: &'a TribeNode = node_handle(node)?;
    // A command may start threads from the host's (the policy compiler's,
    // the runtime's blocking pool): they start with the signals blocked.
    with_signals_blocked(|| {
        let fut = f(handle.live()?)?;
        Ok(handle.block_on(fut)?)
    })
}

/// Creates an empty tribe. Blocks for a local write only (microseconds);
/// the tribe then spreads to every node. `TRIBE_TRIBE_EXISTS` if it exists.
#[no_mangle]
pub extern "C" fn tribe_node_create_tribe(
    node: *const TribeNode,
    tribe: *const c_char,
    err: *mut *mut FfiError,
) -> u32 {
    ffi_call!(err, {
        let tribe = cast::text(tribe, "tribe")?;
        command(node, |n| Ok(n.create_tribe(tribe)))
    })
}
/// Deletes a tribe with its catalog, memberships and the policies that
/// target it. `TRIBE_UNKNOWN_TRIBE` if it does not exist.
#[no_mangle]
pub extern "C" fn tribe_node_delete_tribe(
    node: *const TribeNode,
    tribe: *const c_char,
    err: *mut *mut FfiError,
) -> u32 {
    ffi_call!(err, {
        let tribe = cast::text(tribe, "tribe")?;
        command(node, |n| Ok(n.delete_tribe(tribe)))
    })
}
/// Removes a policy. `TRIBE_UNKNOWN_POLICY` if it does not exist.
#[no_mangle]
pub extern "C" fn tribe_node_remove_policy(
    node: *const TribeNode,
    name: *const c_char,
    err: *mut *mut FfiError,
) -> u32 {
    ffi_call!(err, {
        let name = cast::text(name, "name")?;
        command(node, |n| Ok(n.remove_policy(name)))
    })
}
/// Sets a user fact of this node (it overrides a collected fact of that
/// name); policies are evaluated again and the fact spreads to peers. The
/// key and value follow the rules of `tribe_config_set_fact` (key 1 to 64
/// bytes of `[A-Za-z_][A-Za-z0-9_]*`, not `true`, `false`, `null` or `in`;
/// value at most 1,024 bytes, no control characters), else
/// `TRIBE_INVALID_ARGUMENT`. A node has at most 256 facts, the collected
/// ones included: a new one beyond that is `TRIBE_INVALID_ARGUMENT`.
#[no_mangle]
pub extern "C" fn tribe_node_set_fact(
    node: *const TribeNode,
    key: *const c_char,
    value: *const c_char,
    err: *mut *mut FfiError,
) -> u32 {
    ffi_call!(err, {
        let key = cast::text(key, "key")?;
        let value = cast::text(value, "value")?;
        command(node, |n| Ok(n.set_fact(key, value)))
    })
}
/// Removes a user fact of this node. `TRIBE_UNKNOWN_FACT` if it is not one.
#[no_mangle]
pub extern "C" fn tribe_node_remove_fact(
    node: *const TribeNode,
    key: *const c_char,
    err: *mut *mut FfiError,
) -> u32 {
    ffi_call!(err, {
        let key = cast::text(key, "key")?;
        command(node, |n| Ok(n.remove_fact(key)))
    })
}
/// Adds a policy: the nodes whose facts satisfy `when` (CEL over
/// `facts`, e.g. `has(facts.rack) && facts.rack == "r1"`) join `tribe`,
/// which is created when the policy first holds on some node (with the
/// tribes' limit reached, once room frees; a `TRIBE_EVENT_POLICY_ERROR`
/// says so meanwhile). Reading a fact a node lacks is an
/// evaluation error there (the node stays out and gets a
/// `TRIBE_EVENT_POLICY_ERROR`): guard optional facts with `has()`. A bad
/// expression is `TRIBE_INVALID_POLICY` with the position in
/// `tribe_error_line`/`tribe_error_column`; it never spreads. Policies
/// apply in the background: the tribe and this node's place in it may
/// appear a moment (about a millisecond) after this returns.
/// `TRIBE_IO` when no thread could be made to compile it on (the process
/// at its thread limit): try again later. A policy from a peer that meets
/// the same shortage is evaluated again every half second until it can.
#[no_mangle]
pub extern "C" fn tribe_node_add_policy(
    node: *const TribeNode,
    name: *const c_char,
    tribe: *const c_char,
    when: *const c_char,
    err: *mut *mut FfiError,
) -> u32 {
    ffi_call!(err, {
        let name = cast::text(name, "name")?;
        let tribe = cast::text(tribe, "tribe")?;
        let when = cast::text(when, "when")?;
        command(node, |n| Ok(n.add_policy(name, tribe, when)))
    })
}
/// Removes a plugin entry from a tribe's catalog.
#[no_mangle]
pub extern "C" fn tribe_node_unload_plugin(
    node: *const TribeNode,
    tribe: *const c_char,
    name: *const c_char,
    version: *const c_char,
    err: *mut *mut FfiError,
) -> u32 {
    ffi_call!(err, {
        let tribe = cast::text(tribe, "tribe")?;
        let name = cast::text(name, "name")?;
        let version = cast::text(version, "version")?;
        command(node, |n| Ok(n.unload_plugin(tribe, name, version)))
    })
}
/// Removes a task from a tribe.
#[no_mangle]
pub extern "C" fn tribe_node_remove_task(
    node: *const TribeNode,
    tribe: *const c_char,
    id: *const c_char,
    err: *mut *mut FfiError,
) -> u32 {
    ffi_call!(err, {
        let tribe = cast::text(tribe, "tribe")?;
        let id = cast::text(id, "id")?;
        command(node, |n| Ok(n.remove_task(tribe, id)))
    })
}

/// Adds `member` (any known node; NULL for this node) to `tribe` by hand.
#[no_mangle]
pub extern "C" fn tribe_node_join(
    node: *const TribeNode,
    tribe: *const c_char,
    member: *const c_char,
    err: *mut *mut FfiError,
) -> u32 {
    ffi_call!(err, {
        let tribe = cast::text(tribe, "tribe")?;
        let member = cast::opt_text(member, "member")?;
        command(node, |n| Ok(n.join(tribe, member.unwrap_or(n.name()))))
    })
}

/// Removes the membership by hand of `member` (NULL for this node) in
/// `tribe`. A membership by policy stays while its policy holds.
#[no_mangle]
pub extern "C" fn tribe_node_leave(
    node: *const TribeNode,
    tribe: *const c_char,
    member: *const c_char,
    err: *mut *mut FfiError,
) -> u32 {
    ffi_call!(err, {
        let tribe = cast::text(tribe, "tribe")?;
        let member = cast::opt_text(member, "member")?;
        command(node, |n| Ok(n.leave(tribe, member.unwrap_or(n.name()))))
    })
}

/// The arguments naming a plugin entry of a tribe's catalog, checked.
pub(super) struct EntryArgs<'a> {
    pub tribe: &'a str,
    pub name: &'a str,
    pub version: &'a str,
    pub kind: crate::PluginKind,
}

pub(super) fn entry_args<'a>(
    tribe: *const c_char,
    name: *const c_char,
    version: *const c_char,
    kind: u32,
) -> Result<EntryArgs<'a>, FfiError> {
    Ok(EntryArgs {
        tribe: cast::text(tribe, "tribe")?,
        name: cast::text(name, "name")?,
        version: cast::text(version, "version")?,
        kind: plugin_kind(kind)?,
    })
}

pub(super) fn plugin_kind(kind: u32) -> Result<crate::PluginKind, FfiError> {
    use super::call::{TRIBE_KIND_COLLECTOR, TRIBE_KIND_PROCESSOR, TRIBE_KIND_PUBLISHER};
    match kind {
        TRIBE_KIND_COLLECTOR => Ok(crate::PluginKind::Collector),
        TRIBE_KIND_PROCESSOR => Ok(crate::PluginKind::Processor),
        TRIBE_KIND_PUBLISHER => Ok(crate::PluginKind::Publisher),
        other => Err(FfiError::invalid(format!(
            "plugin kind {other} is not TRIBE_KIND_COLLECTOR, _PROCESSOR or _PUBLISHER"
        ))),
    }
}

fn task_state(state: u32) -> Result<TaskState, FfiError> {
    match state {
        TRIBE_TASK_RUNNING => Ok(TaskState::Running),
        TRIBE_TASK_STOPPED => Ok(TaskState::Stopped),
        other => Err(FfiError::invalid(format!(
            "task state {other} is not TRIBE_TASK_RUNNING or TRIBE_TASK_STOPPED"
        ))),
    }
}

/// Adds a plugin entry (`kind`: `TRIBE_KIND_*`) to a tribe's catalog: every
/// member, also a later one, gets a `TRIBE_EVENT_PLUGIN_LOAD`.
#[no_mangle]
pub extern "C" fn tribe_node_load_plugin(
    node: *const TribeNode,
    tribe: *const c_char,
    name: *const c_char,
    version: *const c_char,
    kind: u32,
    err: *mut *mut FfiError,
) -> u32 {
    ffi_call!(err, {
        let e = entry_args(tribe, name, version, kind)?;
        command(node, |n| {
            Ok(n.load_plugin(e.tribe, e.name, e.version, e.kind, None))
        })
    })
}

/// Adds a task to a tribe: `manifest` is a JSON object (schema in
/// docs/task-manifest.md), `state` is `TRIBE_TASK_RUNNING` or
/// `TRIBE_TASK_STOPPED`. Members get `TRIBE_EVENT_TASK_RUN` while it runs.
#[no_mangle]
pub extern "C" fn tribe_node_add_task(
    node: *const TribeNode,
    tribe: *const c_char,
    id: *const c_char,
    manifest: *const c_char,
    state: u32,
    err: *mut *mut FfiError,
) -> u32 {
    ffi_call!(err, {
        let tribe = cast::text(tribe, "tribe")?;
        let id = cast::text(id, "id")?;
        let manifest = cast::text(manifest, "manifest")?;
        let state = task_state(state)?;
        command(node, |n| Ok(n.add_task(tribe, id, manifest, state)))
    })
}

/// Sets a task's desired state (`TRIBE_TASK_RUNNING` or `TRIBE_TASK_STOPPED`).
#[no_mangle]
pub extern "C" fn tribe_node_set_task_state(
    node: *const TribeNode,
    tribe: *const c_char,
    id: *const c_char,
    state: u32,
    err: *mut *mut FfiError,
) -> u32 {
    ffi_call!(err, {
        let tribe = cast::text(tribe, "tribe")?;
        let id = cast::text(id, "id")?;
        let state = task_state(state)?;
        command(node, |n| Ok(n.set_task_state(tribe, id, state)))
    })
}

fn key_id(text: &str) -> Result<KeyId, FfiError> {
    KeyId::of_key_or_id(text).map_err(|e| FfiError::invalid(e.to_string()))
}

/// Adds a key (base64) to every node's keyring. The node must have been
/// started with a key and be in `require` mode.
#[no_mangle]
pub extern "C" fn tribe_node_install_key(
    node: *const TribeNode,
    key: *const c_char,
    err: *mut *mut FfiError,
) -> u32 {
    ffi_call!(err, {
        let key = SecretKey::from_base64(cast::text(key, "key")?)
            .map_err(|e| FfiError::invalid(e.to_string()))?;
        command(node, |n| Ok(n.install_key(key)))
    })
}

/// Makes an installed key (its id, 8 hex digits, or the base64 key) the
/// sealing key of every node. A key installed through another node a
/// moment ago is waited for (up to 3 s until some member is heard to hold
/// it, else `TRIBE_UNKNOWN_KEY`). Then blocks (up to 10 s) until every live
/// member, this node included, holds the key; a key not there by then is
/// refused with `TRIBE_KEY_NOT_SPREAD` (naming the members) and nothing
/// changes.
#[no_mangle]
pub extern "C" fn tribe_node_use_key(
    node: *const TribeNode,
    key: *const c_char,
    err: *mut *mut FfiError,
) -> u32 {
    ffi_call!(err, {
        let id = key_id(cast::text(key, "key")?)?;
        command(node, |n| Ok(n.use_key(id)))
    })
}

/// Removes a key (id or base64) from every node's keyring; the primary key
/// is refused with `TRIBE_PRIMARY_KEY` (this node's own primary after up to
/// 3 s, unless a switch to another key made through another node is heard
/// of by then). First blocks (up to 10 s) until no live member, this node
/// included, seals with the key any more, else `TRIBE_KEY_NOT_SPREAD`.
/// Returns once this node dropped the key; the removal reaches the other
/// members by gossip (`tribe_node_keys_json` lists it on them until then,
/// well under a second on a LAN).
#[no_mangle]
pub extern "C" fn tribe_node_remove_key(
    node: *const TribeNode,
    key: *const c_char,
    err: *mut *mut FfiError,
) -> u32 {
    ffi_call!(err, {
        let id = key_id(cast::text(key, "key")?)?;
        command(node, |n| Ok(n.remove_key(id)))
    })
}

/// Changes this node's encryption mode live: `"accept"`, `"send"` or
/// `"require"`.
#[no_mangle]
pub extern "C" fn tribe_node_set_encryption(
    node: *const TribeNode,
    mode: *const c_char,
    err: *mut *mut FfiError,
) -> u32 {
    ffi_call!(err, {
        let mode = cast::text(mode, "mode")?.parse()?;
        command(node, |n| Ok(n.set_encryption(mode)))
    })
}
