//! Plugin artifacts: bytes a plugin entry carries, which every member of the
//! tribe fetches from the holder and verifies by SHA-256 before its
//! `TRIBE_EVENT_PLUGIN_LOAD` (whose JSON then names the `sha256`).

use std::ffi::c_char;

use super::cast;
use super::commands::{command, entry_args};
use super::error::{FfiError, TRIBE_UNKNOWN_ARTIFACT};
use super::node::{node_handle, TribeNode};

/// Adds a plugin entry (`kind`: `TRIBE_KIND_*`) that carries `bytes` (copied;
/// NULL with length 0 for none) to a tribe's catalog. This node holds the
/// bytes and hands them out; every member, also a later one, fetches and
/// verifies them, then gets `TRIBE_EVENT_PLUGIN_LOAD` and reads them with
/// `tribe_node_artifact`. When `sha256_out` is not NULL it receives the
/// bytes' SHA-256 in lowercase hex (owned: `tribe_string_free`). Blocks for a
/// local write (and the hash of `bytes`). After shutdown:
/// `TRIBE_SHUTTING_DOWN`. The bytes stay held also when the entry is refused
/// (for instance `TRIBE_PLUGIN_EXISTS`). `TRIBE_TOO_LARGE` for bytes over
/// 256 MiB (268,435,456), refused before they are copied.
#[no_mangle]
pub extern "C" fn tribe_node_load_plugin_artifact(
    node: *const TribeNode,
    tribe: *const c_char,
    name: *const c_char,
    version: *const c_char,
    kind: u32,
    bytes: *const u8,
    bytes_len: usize,
    sha256_out: *mut *mut c_char,
    err: *mut *mut FfiError,
) -> u32 {
    ffi_call!(err, [sha256_out], {
        let e = entry_args(tribe, name, version, kind)?;
        // Refused before the copy: a buffer may be larger than memory allows.
        crate::artifacts::check_size(bytes_len)?;
        let bytes = cast::bytes(bytes, bytes_len, "bytes")?;
        let bytes = bytes.to_vec();
        let artifact = node_handle(node)?.live()?.hold_artifact(bytes)?;
        let entry = Some(artifact.clone());
        command(node, |n| {
            Ok(n.load_plugin(e.tribe, e.name, e.version, e.kind, entry))
        })?;
        if !sha256_out.is_null() {
            cast::give_string(
                sha256_out,
                std::ptr::null_mut(),
                hex::encode(artifact.sha256),
            );
        }
        Ok(())
    })
}

/// The verified bytes of an artifact this node holds (its own, or one it
/// fetched for a plugin entry of a tribe it is in), by SHA-256 in hex
/// (`sha256` of the plugin's event JSON). `*out` / `*out_len` receive an
/// owned copy (`tribe_bytes_free`; NULL for empty bytes).
/// `TRIBE_UNKNOWN_ARTIFACT` when this node holds no such bytes (not yet
/// fetched, or of a tribe it is not in); `TRIBE_INVALID_ARGUMENT` when
/// `sha256` is not 64 hex digits. Does not block. After shutdown:
/// `TRIBE_SHUTTING_DOWN`.
#[no_mangle]
pub extern "C" fn tribe_node_artifact(
    node: *const TribeNode,
    sha256: *const c_char,
    out: *mut *mut u8,
    out_len: *mut usize,
    err: *mut *mut FfiError,
) -> u32 {
    ffi_call!(err, [out, out_len], {
        let text = cast::text(sha256, "sha256")?;
        let out = cast::out(out, "out")?;
        let out_len = cast::out(out_len, "out_len")?;
        let mut sha = [0u8; 32];
        hex::decode_to_slice(text, &mut sha).map_err(|_| {
            let shown = crate::names::truncate_for_message(text);
            FfiError::invalid(format!("sha256 {shown:?} is not 64 hex digits"))
        })?;
        let n = node_handle(node)?.live()?;
        let bytes = n.artifact(&sha).ok_or_else(|| {
            FfiError::new(
                TRIBE_UNKNOWN_ARTIFACT,
                format!("this node holds no artifact with sha256 {text}"),
            )
        })?;
        cast::give_bytes(out, out_len, bytes.as_ref().clone());
        Ok(())
    })
}
