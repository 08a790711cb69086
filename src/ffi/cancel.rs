//! A cancel token (`tribe_cancel`): a host thread triggers it to end a
//! blocking operation another thread waits in (a join), as a Go context or
//! a daemon's own shutdown flag would.

use tokio::sync::watch;

use super::cast;
use super::error::{FfiError, TRIBE_CANCELLED};

/// A cancel token.
pub struct TribeCancel {
    triggered: watch::Sender<bool>,
}

impl TribeCancel {
    /// Ends when the token is triggered (at once if it was already).
    pub(super) async fn triggered(&self) {
        let mut rx = self.triggered.subscribe();
        // The sender lives in `self`, so the wait ends only by a trigger.
        let _ = rx.wait_for(|t| *t).await;
    }

    /// The error of an operation the token ended.
    pub(super) fn error(what: &str) -> FfiError {
        FfiError::new(TRIBE_CANCELLED, format!("{what} was cancelled"))
    }
}

/// Makes a cancel token, not triggered. `*out` receives an owned token:
/// free it with `tribe_cancel_free` once no function given it is still
/// running. One token may be given to several operations, one after the
/// other or at once; a triggered token stays triggered. Does not block.
#[no_mangle]
pub extern "C" fn tribe_cancel_new(out: *mut *mut TribeCancel, err: *mut *mut FfiError) -> u32 {
    ffi_call!(err, [out], {
        let out = cast::out(out, "out")?;
        let (triggered, _) = watch::channel(false);
        cast::write(out, cast::into_handle(TribeCancel { triggered }));
        Ok(())
    })
}

/// Triggers the token: every operation given it ends at once with
/// `TRIBE_CANCELLED`, and so does every later one. Safe from any thread
/// (and idempotent); does not block. NULL is ignored.
#[no_mangle]
pub extern "C" fn tribe_cancel_trigger(cancel: *const TribeCancel) {
    ffi_infallible!((), {
        if let Some(c) = cast::opt_ref(cancel) {
            c.triggered.send_replace(true);
        }
    })
}

/// Whether the token was triggered. NULL gives false.
#[no_mangle]
pub extern "C" fn tribe_cancel_is_triggered(cancel: *const TribeCancel) -> bool {
    ffi_infallible!(false, {
        cast::opt_ref(cancel).is_some_and(|c| *c.triggered.borrow())
    })
}

/// Frees the token. No operation given it may still be running, and no
/// other thread may use the handle during or after this call. NULL is
/// ignored.
#[no_mangle]
pub extern "C" fn tribe_cancel_free(cancel: *mut TribeCancel) {
    ffi_infallible!((), { cast::free_handle(cancel) })
}
