//! Result codes and the owned error object (`tribe_error`).
//!
//! Codes below 100 belong to the C ABI itself; from 100 on, one code per
//! [`crate::Error`] variant. A number is never reused or renumbered.

use std::any::Any;
use std::ffi::{c_char, CStr, CString};

use super::cast::c_text;
use crate::Error;

/// Success. Any other code is a failure, and then every out-parameter the
/// caller passed (a pointer or a length other than `err`) holds NULL or 0,
/// whatever the cause: a NULL or invalid argument, a used-up object, an
/// error of the operation, a caught panic. Nothing but the error needs
/// freeing then. (The slots of an event array are not written: its
/// length is 0.)
pub const TRIBE_OK: u32 = 0;
/// A panic was caught inside libtribe; the object it happened on may be unusable.
pub const TRIBE_PANIC: u32 = 1;
/// A required pointer argument was NULL.
pub const TRIBE_NULL_ARGUMENT: u32 = 2;
/// A string argument was not valid UTF-8.
pub const TRIBE_INVALID_UTF8: u32 = 3;
/// The object was used up already (a started config, an answered responder,
/// a responder or reply taken from its event).
pub const TRIBE_CONSUMED: u32 = 4;
/// The accessor does not apply to this kind of event.
pub const TRIBE_WRONG_EVENT: u32 = 5;
/// An asynchronous call was cancelled by `tribe_node_call_cancel`.
pub const TRIBE_CANCELLED: u32 = 6;
/// The node (or responder) was made by the process this one was forked
/// from; a forked child cannot use it.
pub const TRIBE_FORKED: u32 = 7;
/// This node holds no artifact with that SHA-256 (`tribe_node_artifact`).
pub const TRIBE_UNKNOWN_ARTIFACT: u32 = 8;
/// A name broke the naming rules.
pub const TRIBE_INVALID_NAME: u32 = 100;
/// An argument other than a name was out of range or malformed.
pub const TRIBE_INVALID_ARGUMENT: u32 = 101;
/// The tribe does not exist.
pub const TRIBE_UNKNOWN_TRIBE: u32 = 102;
/// The tribe exists already.
pub const TRIBE_TRIBE_EXISTS: u32 = 103;
/// No node of that name is known.
pub const TRIBE_UNKNOWN_NODE: u32 = 104;
/// The node is a member of the tribe by hand already.
pub const TRIBE_ALREADY_MEMBER: u32 = 105;
/// The node is not a member of the tribe by hand.
pub const TRIBE_NOT_MEMBER: u32 = 106;
/// A policy expression did not compile (see `tribe_error_line`/`_column`).
pub const TRIBE_INVALID_POLICY: u32 = 107;
/// The policy does not exist.
pub const TRIBE_UNKNOWN_POLICY: u32 = 108;
/// A policy of that name exists already.
pub const TRIBE_POLICY_EXISTS: u32 = 109;
/// The plugin entry does not exist in the tribe's catalog.
pub const TRIBE_UNKNOWN_PLUGIN: u32 = 110;
/// The plugin entry exists already.
pub const TRIBE_PLUGIN_EXISTS: u32 = 111;
/// The task does not exist in the tribe.
pub const TRIBE_UNKNOWN_TASK: u32 = 112;
/// A task with that id exists already.
pub const TRIBE_TASK_EXISTS: u32 = 113;
/// The fact is not a user fact of this node.
pub const TRIBE_UNKNOWN_FACT: u32 = 114;
/// A keyring operation on a node started without a key.
pub const TRIBE_NO_KEYRING: u32 = 115;
/// Keyring operations need the `require` encryption mode.
pub const TRIBE_ENCRYPTION_NOT_REQUIRED: u32 = 116;
/// The keyring is full.
pub const TRIBE_KEYRING_FULL: u32 = 117;
/// No such key in the keyring.
pub const TRIBE_UNKNOWN_KEY: u32 = 118;
/// The primary key cannot be removed.
pub const TRIBE_PRIMARY_KEY: u32 = 119;
/// No live member of the tribe serves the plugin.
pub const TRIBE_NO_PROVIDER: u32 = 120;
/// The call did not complete before its deadline.
pub const TRIBE_TIMEOUT: u32 = 121;
/// The handler failed (see `tribe_error_remote_code`/`_message`).
pub const TRIBE_REMOTE: u32 = 122;
/// A payload over the limit.
pub const TRIBE_TOO_LARGE: u32 = 123;
/// Too many calls in flight.
pub const TRIBE_OVERLOADED: u32 = 124;
/// The host went away with the call in flight (it may have run).
pub const TRIBE_DISCONNECTED: u32 = 125;
/// The node is shutting down or has stopped.
pub const TRIBE_SHUTTING_DOWN: u32 = 126;
/// A socket or file could not be used.
pub const TRIBE_IO: u32 = 127;
/// The configuration is inconsistent.
pub const TRIBE_CONFIG: u32 = 128;
/// The replicated state holds as many records of a kind as allowed.
pub const TRIBE_LIMIT_REACHED: u32 = 129;
/// A keyring step would cut live members off (the key has not spread yet);
/// nothing changed.
pub const TRIBE_KEY_NOT_SPREAD: u32 = 130;

/// An error: its result code, stable name and message, plus the handler's
/// code and message for `TRIBE_REMOTE` and the position for
/// `TRIBE_INVALID_POLICY`.
#[derive(Debug)]
pub struct FfiError {
    pub(super) code: u32,
    message: CString,
    remote: Option<(CString, CString)>,
    position: (u32, u32),
}

impl FfiError {
    /// An error of the C ABI's own codes.
    pub(super) fn new(code: u32, message: impl AsRef<str>) -> FfiError {
        FfiError {
            code,
            message: c_text(&crate::keyfile::withhold_keys(message.as_ref())),
            remote: None,
            position: (0, 0),
        }
    }

    pub(super) fn null(what: &str) -> FfiError {
        FfiError::new(TRIBE_NULL_ARGUMENT, format!("{what} is NULL"))
    }

    pub(super) fn consumed(what: &str) -> FfiError {
        FfiError::new(TRIBE_CONSUMED, format!("{what} was used up already"))
    }

    /// `TRIBE_INVALID_ARGUMENT`, its message as the Rust API words one
    /// (`invalid argument: ...`).
    pub(super) fn invalid(message: impl AsRef<str>) -> FfiError {
        FfiError::from(Error::InvalidArgument(message.as_ref().to_string()))
    }

    pub(super) fn panic(payload: Box<dyn Any + Send>) -> FfiError {
        let what = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        FfiError::new(TRIBE_PANIC, format!("libtribe panicked: {what}"))
    }
}

/// The result code of a library error.
pub fn code_of(e: &Error) -> u32 {
    match e {
        Error::InvalidName { .. } => TRIBE_INVALID_NAME,
        Error::InvalidArgument(_) => TRIBE_INVALID_ARGUMENT,
        Error::UnknownTribe(_) => TRIBE_UNKNOWN_TRIBE,
        Error::TribeExists(_) => TRIBE_TRIBE_EXISTS,
        Error::UnknownNode(_) => TRIBE_UNKNOWN_NODE,
        Error::AlreadyMember { .. } => TRIBE_ALREADY_MEMBER,
        Error::NotMember { .. } => TRIBE_NOT_MEMBER,
        Error::InvalidPolicy(_) => TRIBE_INVALID_POLICY,
        Error::UnknownPolicy(_) => TRIBE_UNKNOWN_POLICY,
        Error::PolicyExists(_) => TRIBE_POLICY_EXISTS,
        Error::UnknownPlugin { .. } => TRIBE_UNKNOWN_PLUGIN,
        Error::PluginExists { .. } => TRIBE_PLUGIN_EXISTS,
        Error::UnknownTask { .. } => TRIBE_UNKNOWN_TASK,
        Error::TaskExists { .. } => TRIBE_TASK_EXISTS,
        Error::UnknownFact(_) => TRIBE_UNKNOWN_FACT,
        Error::NoKeyring => TRIBE_NO_KEYRING,
        Error::EncryptionNotRequired => TRIBE_ENCRYPTION_NOT_REQUIRED,
        Error::KeyringFull => TRIBE_KEYRING_FULL,
        Error::UnknownKey(_) => TRIBE_UNKNOWN_KEY,
        Error::PrimaryKey(_) => TRIBE_PRIMARY_KEY,
        Error::NoProvider { .. } => TRIBE_NO_PROVIDER,
        Error::Timeout { .. } => TRIBE_TIMEOUT,
        Error::Remote { .. } => TRIBE_REMOTE,
        Error::TooLarge { .. } => TRIBE_TOO_LARGE,
        Error::Overloaded { .. } => TRIBE_OVERLOADED,
        Error::Disconnected { .. } => TRIBE_DISCONNECTED,
        Error::ShuttingDown => TRIBE_SHUTTING_DOWN,
        Error::Io(_) => TRIBE_IO,
        Error::Config(_) => TRIBE_CONFIG,
        Error::LimitReached { .. } => TRIBE_LIMIT_REACHED,
        Error::KeyNotSpread { .. } => TRIBE_KEY_NOT_SPREAD,
    }
}

/// The stable snake_case name of a code (the library's [`Error::code`] for
/// codes from 100 on).
pub fn code_name(code: u32) -> &'static CStr {
    match code {
        TRIBE_OK => c"ok",
        TRIBE_PANIC => c"panic",
        TRIBE_NULL_ARGUMENT => c"null_argument",
        TRIBE_INVALID_UTF8 => c"invalid_utf8",
        TRIBE_CONSUMED => c"consumed",
        TRIBE_WRONG_EVENT => c"wrong_event",
        TRIBE_CANCELLED => c"cancelled",
        TRIBE_FORKED => c"forked",
        TRIBE_UNKNOWN_ARTIFACT => c"unknown_artifact",
        TRIBE_INVALID_NAME => c"invalid_name",
        TRIBE_INVALID_ARGUMENT => c"invalid_argument",
        TRIBE_UNKNOWN_TRIBE => c"unknown_tribe",
        TRIBE_TRIBE_EXISTS => c"tribe_exists",
        TRIBE_UNKNOWN_NODE => c"unknown_node",
        TRIBE_ALREADY_MEMBER => c"already_member",
        TRIBE_NOT_MEMBER => c"not_member",
        TRIBE_INVALID_POLICY => c"invalid_policy",
        TRIBE_UNKNOWN_POLICY => c"unknown_policy",
        TRIBE_POLICY_EXISTS => c"policy_exists",
        TRIBE_UNKNOWN_PLUGIN => c"unknown_plugin",
        TRIBE_PLUGIN_EXISTS => c"plugin_exists",
        TRIBE_UNKNOWN_TASK => c"unknown_task",
        TRIBE_TASK_EXISTS => c"task_exists",
        TRIBE_UNKNOWN_FACT => c"unknown_fact",
        TRIBE_NO_KEYRING => c"no_keyring",
        TRIBE_ENCRYPTION_NOT_REQUIRED => c"encryption_not_required",
        TRIBE_KEYRING_FULL => c"keyring_full",
        TRIBE_UNKNOWN_KEY => c"unknown_key",
        TRIBE_PRIMARY_KEY => c"primary_key",
        TRIBE_NO_PROVIDER => c"no_provider",
        TRIBE_TIMEOUT => c"timeout",
        TRIBE_REMOTE => c"remote",
        TRIBE_TOO_LARGE => c"too_large",
        TRIBE_OVERLOADED => c"overloaded",
        TRIBE_DISCONNECTED => c"disconnected",
        TRIBE_SHUTTING_DOWN => c"shutting_down",
        TRIBE_IO => c"io",
        TRIBE_CONFIG => c"config",
        TRIBE_LIMIT_REACHED => c"limit_reached",
        TRIBE_KEY_NOT_SPREAD => c"key_not_spread",
        _ => c"unknown",
    }
}

impl From<Error> for FfiError {
    fn from(e: Error) -> FfiError {
        let code = code_of(&e);
        let mut out = FfiError {
            code,
            // A key given under the wrong argument is not quoted back (a
            // remote handler's own message is the handler's).
            message: c_text(&match &e {
                Error::Remote { .. } => e.to_string(),
                _ => crate::keyfile::withhold_keys(&e.to_string()).into_owned(),
            }),
            remote: None,
            position: (0, 0),
        };
        match &e {
            Error::Remote { code, message } => {
                out.remote = Some((c_text(code), c_text(message)));
            }
            Error::InvalidPolicy(p) => {
                out.position = (p.line.unwrap_or(0), p.column.unwrap_or(0));
            }
            _ => {}
        }
        out
    }
}

/// Turns a body's outcome into a result code, storing the error (if any)
/// where the caller asked for it. On success `*err` is set to NULL.
pub(super) fn finish(
    result: std::thread::Result<Result<(), FfiError>>,
    err_out: *mut *mut FfiError,
) -> u32 {
    let error = match result {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e),
        Err(payload) => Some(FfiError::panic(payload)),
    };
    let code = error.as_ref().map_or(TRIBE_OK, |e| e.code);
    if !err_out.is_null() {
        let handle = error.map_or(std::ptr::null_mut(), super::cast::into_handle);
        super::cast::write(err_out, handle);
    }
    code
}

/// The result code of an error (`TRIBE_NULL_ARGUMENT` for NULL).
#[no_mangle]
pub extern "C" fn tribe_error_code(err: *const FfiError) -> u32 {
    ffi_infallible!(TRIBE_PANIC, {
        super::cast::opt_ref(err).map_or(TRIBE_NULL_ARGUMENT, |e| e.code)
    })
}

/// The error's message (UTF-8, NUL-terminated). Borrowed: valid until
/// `tribe_error_free`. NULL for a NULL error.
#[no_mangle]
pub extern "C" fn tribe_error_message(err: *const FfiError) -> *const c_char {
    ffi_infallible!(std::ptr::null(), {
        super::cast::opt_ref(err).map_or(std::ptr::null(), |e| e.message.as_ptr())
    })
}

/// The error's stable snake_case name (e.g. `"no_provider"`), the same as
/// the admin API's `"error"` field. Static: never freed. NULL for a NULL error.
#[no_mangle]
pub extern "C" fn tribe_error_name(err: *const FfiError) -> *const c_char {
    ffi_infallible!(std::ptr::null(), {
        super::cast::opt_ref(err).map_or(std::ptr::null(), |e| code_name(e.code).as_ptr())
    })
}

/// The stable snake_case name of a result code (`"unknown"` for a number
/// that is not a code). Static: never freed.
#[no_mangle]
pub extern "C" fn tribe_result_name(code: u32) -> *const c_char {
    ffi_infallible!(std::ptr::null(), { code_name(code).as_ptr() })
}

/// For `TRIBE_REMOTE`: the code the handler chose (`"panic"` for a handler
/// that panicked). Borrowed until `tribe_error_free`; NULL for other errors.
#[no_mangle]
pub extern "C" fn tribe_error_remote_code(err: *const FfiError) -> *const c_char {
    ffi_infallible!(std::ptr::null(), {
        super::cast::opt_ref(err)
            .and_then(|e| e.remote.as_ref())
            .map_or(std::ptr::null(), |(code, _)| code.as_ptr())
    })
}

/// For `TRIBE_REMOTE`: the handler's message. Borrowed until
/// `tribe_error_free`; NULL for other errors.
#[no_mangle]
pub extern "C" fn tribe_error_remote_message(err: *const FfiError) -> *const c_char {
    ffi_infallible!(std::ptr::null(), {
        super::cast::opt_ref(err)
            .and_then(|e| e.remote.as_ref())
            .map_or(std::ptr::null(), |(_, message)| message.as_ptr())
    })
}

/// For `TRIBE_INVALID_POLICY`: the line of the error in the expression,
/// from 1; 0 when unknown or for other errors.
#[no_mangle]
pub extern "C" fn tribe_error_line(err: *const FfiError) -> u32 {
    ffi_infallible!(0, { super::cast::opt_ref(err).map_or(0, |e| e.position.0) })
}

/// For `TRIBE_INVALID_POLICY`: the column of the error on its line, from 1,
/// in characters; 0 when unknown or for other errors.
#[no_mangle]
pub extern "C" fn tribe_error_column(err: *const FfiError) -> u32 {
    ffi_infallible!(0, { super::cast::opt_ref(err).map_or(0, |e| e.position.1) })
}

/// Frees an error. NULL is ignored.
#[no_mangle]
pub extern "C" fn tribe_error_free(err: *mut FfiError) {
    ffi_infallible!((), { super::cast::free_handle(err) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::PolicyError;

    fn every_error() -> Vec<Error> {
        let s = || "x".to_string();
        vec![
            Error::InvalidName {
                what: "tribe",
                name: s(),
                reason: "r",
            },
            Error::InvalidArgument(s()),
            Error::UnknownTribe(s()),
            Error::TribeExists(s()),
            Error::UnknownNode(s()),
            Error::AlreadyMember {
                tribe: s(),
                node: s(),
            },
            Error::NotMember {
                tribe: s(),
                node: s(),
            },
            Error::InvalidPolicy(PolicyError {
                message: s(),
                line: Some(2),
                column: Some(5),
            }),
            Error::UnknownPolicy(s()),
            Error::PolicyExists(s()),
            Error::UnknownPlugin {
                tribe: s(),
                name: s(),
                version: s(),
            },
            Error::PluginExists {
                tribe: s(),
                name: s(),
                version: s(),
            },
            Error::UnknownTask {
                tribe: s(),
                id: s(),
            },
            Error::TaskExists {
                tribe: s(),
                id: s(),
            },
            Error::UnknownFact(s()),
            Error::NoKeyring,
            Error::EncryptionNotRequired,
            Error::KeyringFull,
            Error::UnknownKey(s()),
            Error::PrimaryKey(s()),
            Error::NoProvider {
                tribe: s(),
                plugin: s(),
                wanted: s(),
                stopping: vec![s()],
                unreachable: vec![s()],
            },
            Error::Timeout { host: None },
            Error::Remote {
                code: "bad".into(),
                message: "m\0n".into(),
            },
            Error::TooLarge { size: 2, limit: 1 },
            Error::Overloaded {
                by: crate::Overload::Calls { limit: 1 },
            },
            Error::Disconnected { host: s() },
            Error::ShuttingDown,
            Error::Io(s()),
            Error::Config(s()),
            Error::LimitReached {
                what: s(),
                limit: 1,
            },
            Error::KeyNotSpread {
                key: s(),
                step: s(),
                waiting_for: vec![s()],
                waited_s: 1,
            },
        ]
    }

    #[test]
    fn codes_are_distinct_and_named_like_the_library_errors() {
        let mut seen = std::collections::BTreeSet::new();
        for e in every_error() {
            let code = code_of(&e);
            assert!(code >= 100, "{e:?}");
            assert!(seen.insert(code), "code {code} used twice");
            assert_eq!(code_name(code).to_str().unwrap(), e.code());
        }
        for code in 0..=8 {
            assert_ne!(code_name(code).to_str().unwrap(), "unknown");
        }
        assert_eq!(code_name(99).to_str().unwrap(), "unknown");
    }

    #[test]
    fn errors_keep_remote_details_and_positions() {
        for e in every_error() {
            let f = FfiError::from(e.clone());
            assert_eq!(f.code, code_of(&e));
            match e {
                Error::Remote { .. } => {
                    let (code, message) = f.remote.as_ref().unwrap();
                    assert_eq!(code.to_str().unwrap(), "bad");
                    // An interior NUL cannot truncate the message in C.
                    assert_eq!(message.to_str().unwrap(), "m\u{fffd}n");
                }
                Error::InvalidPolicy(_) => assert_eq!(f.position, (2, 5)),
                _ => assert!(f.remote.is_none() && f.position == (0, 0)),
            }
        }
    }
}
