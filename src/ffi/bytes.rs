//! Strings and byte buffers handed to C, their free functions, and the
//! library-wide functions (version, ABI version, key generation, the
//! naming rules).

use std::ffi::c_char;

use super::cast;
use super::error::FfiError;

/// The version of the C ABI. It grows only when a function's signature or
/// meaning changes in a way older programs would notice.
pub const TRIBE_ABI_VERSION: u32 = 1;

/// The C ABI version this library implements (`TRIBE_ABI_VERSION` of the
/// header it was built with). A program can compare it with the header's.
#[no_mangle]
pub extern "C" fn tribe_abi_version() -> u32 {
    TRIBE_ABI_VERSION
}

/// The libtribe version, e.g. `"0.1.0"`. Static: never freed.
#[no_mangle]
pub extern "C" fn tribe_version() -> *const c_char {
    const VERSION: &std::ffi::CStr = match std::ffi::CStr::from_bytes_with_nul(
        concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes(),
    ) {
        Ok(v) => v,
        Err(_) => c"unknown",
    };
    VERSION.as_ptr()
}

/// Generates a new random cluster key, as base64 text (what `tribe keygen`
/// prints). `*out` receives an owned string (free it with
/// `tribe_string_free`); `*out_len`, if not NULL, its length without the NUL.
/// Does not block.
#[no_mangle]
pub extern "C" fn tribe_keygen(
    out: *mut *mut c_char,
    out_len: *mut usize,
    err: *mut *mut FfiError,
) -> u32 {
    ffi_call!(err, [out, out_len], {
        let out = cast::out(out, "out")?;
        cast::give_string(out, out_len, crate::SecretKey::generate().to_base64());
        Ok(())
    })
}

/// The public id of a key (base64, as `tribe_keygen` gives): 8 hex digits,
/// as snapshots and `tribe_node_keys_json` name keys, so a host can watch a
/// key it installed spread. `*out` receives an owned string (free it with
/// `tribe_string_free`); `*out_len`, if not NULL, its length.
/// `TRIBE_INVALID_ARGUMENT` for text that is no key. Does not block; needs
/// no node.
#[no_mangle]
pub extern "C" fn tribe_key_id(
    key: *const c_char,
    out: *mut *mut c_char,
    out_len: *mut usize,
    err: *mut *mut FfiError,
) -> u32 {
    ffi_call!(err, [out, out_len], {
        let out = cast::out(out, "out")?;
        let key = cast::text(key, "key")?;
        let key =
            crate::SecretKey::from_base64(key).map_err(|e| FfiError::invalid(e.to_string()))?;
        cast::give_string(out, out_len, key.id().to_string());
        Ok(())
    })
}

/// Checks `name` against the naming rules of nodes, tribes, policies and
/// plugins (1 to 64 bytes, a letter or a digit first, then letters, digits
/// and `_ - . : @`): `TRIBE_OK`, or `TRIBE_INVALID_NAME` saying which rule
/// it breaks, so a host can refuse a bad name in its own configuration
/// before anything uses it. Does not block; needs no node.
#[no_mangle]
pub extern "C" fn tribe_name_check(name: *const c_char, err: *mut *mut FfiError) -> u32 {
    ffi_call!(err, {
        let name = cast::text(name, "name")?;
        crate::names::check("name", name)?;
        Ok(())
    })
}

/// Checks `version` against the rules of plugin versions (those of names,
/// up to 32 bytes): `TRIBE_OK`, or `TRIBE_INVALID_NAME` saying which rule
/// it breaks. Does not block; needs no node.
#[no_mangle]
pub extern "C" fn tribe_version_check(version: *const c_char, err: *mut *mut FfiError) -> u32 {
    ffi_call!(err, {
        let version = cast::text(version, "version")?;
        crate::names::check_version(version)?;
        Ok(())
    })
}

/// Checks a step request, the payload a publisher or processor of a task
/// receives (`{"config": {...}, "metrics": [...]}`), as the agent's
/// publishers do: `TRIBE_OK` with the number of metrics in `*metrics`, or
/// `TRIBE_INVALID_ARGUMENT` saying what is wrong (not JSON, trailing text,
/// a metric without a name, a control character, over the batch limits);
/// `*metrics` is 0 then. The answer a publisher gives is that number, as
/// text. `payload` may be NULL only with `len` 0. Does not block; needs no
/// node.
#[no_mangle]
pub extern "C" fn tribe_step_request_check(
    payload: *const u8,
    len: usize,
    metrics: *mut usize,
    err: *mut *mut FfiError,
) -> u32 {
    ffi_call!(err, [metrics], {
        let metrics = cast::out(metrics, "metrics")?;
        let payload = cast::bytes(payload, len, "payload")?;
        let request = crate::workflow::StepRequest::decode(payload)
            .map_err(|e| FfiError::invalid(e.to_string()))?;
        cast::write(metrics, request.metrics.len());
        Ok(())
    })
}

/// Frees a string returned by libtribe. NULL is ignored. Passing anything
/// else, or freeing twice, is undefined behaviour.
#[no_mangle]
pub extern "C" fn tribe_string_free(s: *mut c_char) {
    ffi_infallible!((), { cast::free_string(s) })
}

/// Frees a byte buffer returned by libtribe, with the length it came with.
/// NULL is ignored (an empty buffer is returned as NULL).
#[no_mangle]
pub extern "C" fn tribe_bytes_free(bytes: *mut u8, len: usize) {
    ffi_infallible!((), { cast::free_bytes(bytes, len) })
}
