//! The C ABI (`include/tribe.h`, generated from this module by cbindgen).
//!
//! Every exported function runs its body inside [`ffi_call!`], the panic
//! boundary: a Rust error becomes a result code plus an optional owned
//! `tribe_error`, and a panic becomes `TRIBE_PANIC` instead of unwinding into
//! C. Raw pointers are turned into references only in [`cast`], so each body
//! reads as plain Rust. No library thread ever calls into the host: events,
//! incoming calls and completions of asynchronous calls wait in a
//! [`mailbox`] that the host drains with `tribe_node_next_event`.

/// Runs an exported body behind the panic boundary. `$err` is the optional
/// `tribe_error **` out-parameter; the body returns `Result<(), FfiError>`.
///
/// The other out-parameters, listed in brackets, hold NULL / 0 unless the
/// call succeeds (the header's rule): each non-NULL one is cleared before
/// the body runs, so no early return can leave the caller's old value, and
/// again after a failure or a panic, in case the body wrote it first.
macro_rules! ffi_call {
    ($err:expr, $body:block) => {{
        let err_out: *mut *mut $crate::ffi::error::FfiError = $err;
        let result = ::std::panic::catch_unwind(::std::panic::AssertUnwindSafe(
            || -> ::std::result::Result<(), $crate::ffi::error::FfiError> { $body },
        ));
        $crate::ffi::error::finish(result, err_out)
    }};
    ($err:expr, [$($out:expr),+ $(,)?], $body:block) => {{
        $( $crate::ffi::cast::clear($out); )+
        let err_out: *mut *mut $crate::ffi::error::FfiError = $err;
        let result = ::std::panic::catch_unwind(::std::panic::AssertUnwindSafe(
            || -> ::std::result::Result<(), $crate::ffi::error::FfiError> { $body },
        ));
        if !matches!(result, Ok(Ok(()))) {
            $( $crate::ffi::cast::clear($out); )+
        }
        $crate::ffi::error::finish(result, err_out)
    }};
}

/// Like [`ffi_call!`] for functions that cannot report an error: a panic
/// yields `$fallback`.
macro_rules! ffi_infallible {
    ($fallback:expr, $body:block) => {{
        ::std::panic::catch_unwind(::std::panic::AssertUnwindSafe(|| $body)).unwrap_or($fallback)
    }};
}

pub mod artifact;
pub mod bytes;
pub mod call;
mod call_names;
pub mod cancel;
mod cast;
pub mod commands;
pub mod config;
pub mod error;
pub mod event;
pub(crate) mod fork_locks;
pub mod group;
mod host_io;
pub mod join;
pub mod log;
mod mailbox;
pub mod node;
mod owner;
pub mod snapshot;
mod targets;
