//! JSON snapshots of a node (`tribe_node_*_json`, in the schema of the
//! admin HTTP API) and its state digest.

use std::ffi::c_char;

use super::cast;
use super::error::FfiError;
use super::node::{node_handle, TribeNode};
use crate::admin::json;
use crate::{Error, Node};

/// Hands a snapshot to C as JSON.
fn snapshot(
    node: *const TribeNode,
    out: *mut *mut c_char,
    out_len: *mut usize,
    f: impl FnOnce(&Node) -> Result<String, FfiError>,
) -> Result<(), FfiError> {
    let out = cast::out(out, "out")?;
    let text = f(node_handle(node)?.live()?)?;
    cast::give_string(out, out_len, text);
    Ok(())
}

/// The JSON text of `value`, its fields in the order the admin API gives
/// them (a `serde_json::Value` on the way would sort them).
fn to_json<T: serde::Serialize>(value: T) -> Result<String, FfiError> {
    serde_json::to_string(&value).map_err(|e| FfiError::invalid(e.to_string()))
}

/// Every known member, this node included, as the JSON array of the
/// admin API's `GET /v1/members`. `*out` is owned (`tribe_string_free`).
/// Does not block. `TRIBE_SHUTTING_DOWN` once the node stops (so for
/// every snapshot).
#[no_mangle]
pub extern "C" fn tribe_node_members_json(
    node: *const TribeNode,
    out: *mut *mut c_char,
    out_len: *mut usize,
    err: *mut *mut FfiError,
) -> u32 {
    ffi_call!(err, [out, out_len], {
        snapshot(node, out, out_len, |n| {
            to_json(
                n.members()
                    .iter()
                    .map(json::Member::from)
                    .collect::<Vec<_>>(),
            )
        })
    })
}

/// One member by name, this node included, as the admin API's
/// `GET /v1/members/{name}`; `TRIBE_UNKNOWN_NODE` if none,
/// `TRIBE_INVALID_NAME` for a name no node can have. `*out` is
/// owned (`tribe_string_free`). Does not block.
#[no_mangle]
pub extern "C" fn tribe_node_member_json(
    node: *const TribeNode,
    name: *const c_char,
    out: *mut *mut c_char,
    out_len: *mut usize,
    err: *mut *mut FfiError,
) -> u32 {
    ffi_call!(err, [out, out_len], {
        let name = cast::text(name, "name")?;
        // A name no node can have is named so, as every command does.
        crate::names::check("node name", name)?;
        snapshot(node, out, out_len, |n| {
            let members = n.members();
            let member = members
                .iter()
                .find(|m| m.name == name)
                .ok_or_else(|| Error::UnknownNode(name.into()))?;
            to_json(json::Member::from(member))
        })
    })
}

/// Every tribe with its live members and catalog, as `GET /v1/tribes`.
#[no_mangle]
pub extern "C" fn tribe_node_tribes_json(
    node: *const TribeNode,
    out: *mut *mut c_char,
    out_len: *mut usize,
    err: *mut *mut FfiError,
) -> u32 {
    ffi_call!(err, [out, out_len], {
        snapshot(node, out, out_len, |n| {
            to_json(n.tribes().iter().map(json::Tribe::from).collect::<Vec<_>>())
        })
    })
}

/// Every policy, as `GET /v1/policies`.
#[no_mangle]
pub extern "C" fn tribe_node_policies_json(
    node: *const TribeNode,
    out: *mut *mut c_char,
    out_len: *mut usize,
    err: *mut *mut FfiError,
) -> u32 {
    ffi_call!(err, [out, out_len], {
        snapshot(node, out, out_len, |n| {
            to_json(
                n.policies()
                    .iter()
                    .map(json::PolicyJson::from)
                    .collect::<Vec<_>>(),
            )
        })
    })
}

/// Which live nodes hold which keys (ids only), as `GET /v1/keys`.
#[no_mangle]
pub extern "C" fn tribe_node_keys_json(
    node: *const TribeNode,
    out: *mut *mut c_char,
    out_len: *mut usize,
    err: *mut *mut FfiError,
) -> u32 {
    ffi_call!(err, [out, out_len], {
        snapshot(node, out, out_len, |n| {
            to_json(json::Keys::from(&n.keyring_status()))
        })
    })
}

/// Name, address, live members, state digest, encryption, as
/// `GET /v1/status`.
#[no_mangle]
pub extern "C" fn tribe_node_status_json(
    node: *const TribeNode,
    out: *mut *mut c_char,
    out_len: *mut usize,
    err: *mut *mut FfiError,
) -> u32 {
    ffi_call!(err, [out, out_len], {
        snapshot(node, out, out_len, |n| to_json(json::Status::of(n)))
    })
}

/// The node's counters (traffic, refusals, sync, calls) as one JSON
/// object: `{"engine": {...}, "calls": {...}}`; names in docs/c-api.md.
/// Unlike the snapshots, also after a shutdown or an abort (until
/// `tribe_node_free`): the final counts. Does not block.
#[no_mangle]
pub extern "C" fn tribe_node_counters_json(
    node: *const TribeNode,
    out: *mut *mut c_char,
    out_len: *mut usize,
    err: *mut *mut FfiError,
) -> u32 {
    ffi_call!(err, [out, out_len], {
        let out = cast::out(out, "out")?;
        let handle = node_handle(node)?;
        let n = &handle.node;
        let mut engine = n.counters();
        // The host's queue drops too (`tribe_node_events_dropped`).
        engine.events_dropped += handle.mailbox.dropped();
        #[derive(serde::Serialize)]
        struct Counters {
            engine: crate::counters::Counters,
            calls: crate::rpc::RpcStats,
        }
        let calls = n.rpc_stats();
        cast::give_string(out, out_len, to_json(Counters { engine, calls })?);
        Ok(())
    })
}

/// One tribe, as `GET /v1/tribes/{name}`; `TRIBE_UNKNOWN_TRIBE` if none,
/// `TRIBE_INVALID_NAME` for a name no tribe can have (empty, say).
#[no_mangle]
pub extern "C" fn tribe_node_tribe_json(
    node: *const TribeNode,
    tribe: *const c_char,
    out: *mut *mut c_char,
    out_len: *mut usize,
    err: *mut *mut FfiError,
) -> u32 {
    ffi_call!(err, [out, out_len], {
        let tribe = cast::text(tribe, "tribe")?;
        // A name no tribe can have is named so, as every command does.
        crate::names::check("tribe name", tribe)?;
        snapshot(node, out, out_len, |n| {
            let info = n
                .tribe(tribe)
                .ok_or_else(|| Error::UnknownTribe(tribe.into()))?;
            to_json(json::Tribe::from(&info))
        })
    })
}

/// The digest of the replicated state (hex): equal on converged nodes.
/// `*out` is owned (`tribe_string_free`).
#[no_mangle]
pub extern "C" fn tribe_node_state_digest(
    node: *const TribeNode,
    out: *mut *mut c_char,
    out_len: *mut usize,
    err: *mut *mut FfiError,
) -> u32 {
    ffi_call!(err, [out, out_len], {
        let out = cast::out(out, "out")?;
        let digest = node_handle(node)?.live()?.state_digest();
        cast::give_string(out, out_len, digest);
        Ok(())
    })
}
