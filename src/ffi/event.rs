//! Events (`tribe_event`): what the host takes from `tribe_node_next_event`
//! on its own thread — node events, incoming calls (carrying a responder)
//! and the completions of asynchronous calls.

use std::ffi::{c_char, CStr, CString};
use std::time::Duration;

use super::call::TribeResponder;
use super::call_names::CallNames;
use super::cast;
use super::error::{FfiError, TRIBE_WRONG_EVENT};
use super::mailbox::Taken;
use super::node::TribeNode;
use crate::Event;

/// No event (a NULL event).
pub const TRIBE_EVENT_NONE: u32 = 0;
/// This node joined a cluster (it has a live peer).
pub const TRIBE_EVENT_JOINED: u32 = 1;
/// This node lost every peer; it keeps trying its seeds.
pub const TRIBE_EVENT_ISOLATED: u32 = 2;
/// A node became alive (subject: its name): new, back after it was found
/// down, or restarted under its name before it was found down.
pub const TRIBE_EVENT_MEMBER_JOINED: u32 = 3;
/// A node's record (facts, endpoints) changed (subject: its name).
pub const TRIBE_EVENT_MEMBER_UPDATED: u32 = 4;
/// A node left on purpose (subject: its name).
pub const TRIBE_EVENT_MEMBER_LEFT: u32 = 5;
/// A node stopped answering and was declared failed (subject: its name).
pub const TRIBE_EVENT_MEMBER_FAILED: u32 = 6;
/// A failed or left node was forgotten (subject: its name).
pub const TRIBE_EVENT_MEMBER_REAPED: u32 = 7;
/// A tribe came into existence (tribe).
pub const TRIBE_EVENT_TRIBE_CREATED: u32 = 8;
/// A tribe was deleted (tribe).
pub const TRIBE_EVENT_TRIBE_DELETED: u32 = 9;
/// This node is now in a tribe (tribe).
pub const TRIBE_EVENT_TRIBE_JOINED: u32 = 10;
/// This node is no longer in a tribe (tribe).
pub const TRIBE_EVENT_TRIBE_LEFT: u32 = 11;
/// Load this plugin (tribe; subject: plugin name).
pub const TRIBE_EVENT_PLUGIN_LOAD: u32 = 12;
/// Unload this plugin (tribe; subject: plugin name).
pub const TRIBE_EVENT_PLUGIN_UNLOAD: u32 = 13;
/// Run this task (tribe; subject: task id).
pub const TRIBE_EVENT_TASK_RUN: u32 = 14;
/// Stop this task (tribe; subject: task id).
pub const TRIBE_EVENT_TASK_STOP: u32 = 15;
/// A holder sent artifact bytes that do not match their hash (tribe;
/// subject: plugin name).
pub const TRIBE_EVENT_ARTIFACT_CORRUPT: u32 = 16;
/// A plugin's artifact could not be fetched from any holder (tribe;
/// subject: plugin name).
pub const TRIBE_EVENT_ARTIFACT_UNAVAILABLE: u32 = 17;
/// A policy could not be evaluated for this node (subject: policy name).
pub const TRIBE_EVENT_POLICY_ERROR: u32 = 18;
/// A call to a plugin this node serves (tribe; subject: plugin name); take
/// its responder with `tribe_event_take_responder`.
pub const TRIBE_EVENT_CALL: u32 = 19;
/// An asynchronous call finished (`tribe_event_call_id`,
/// `tribe_event_take_reply`).
pub const TRIBE_EVENT_CALL_DONE: u32 = 20;

/// A log record of libtribe (subject: the message; `tribe_event_log_level`),
/// queued only for nodes started with `tribe_config_set_log_level`.
pub const TRIBE_EVENT_LOG: u32 = 21;
/// Another identity uses this node's name, a second node started under it
/// or a forgery (`tribe_event_json` has its address and generation). The
/// one with the newer generation holds the name; the other keeps out of the
/// cluster until the holder goes (meanwhile `name_held_by` in
/// `tribe_node_status_json` names the holder's address).
pub const TRIBE_EVENT_IDENTITY_CLAIMED: u32 = 22;
/// A peer's clock is off this node's (subject: its name; `tribe_event_json`
/// has the offset).
pub const TRIBE_EVENT_CLOCK_SKEW: u32 = 23;

/// What waits in a node's mailbox.
pub(super) enum Body {
    Node(Event),
    Log {
        level: u32,
        target: String,
        message: String,
    },
    Call(Option<Box<TribeResponder>>),
    CallDone {
        id: u64,
        result: Option<Result<Vec<u8>, FfiError>>,
        /// Counts the completion against the node's bound until freed.
        _unread: super::call::Unread,
    },
}

impl Body {
    /// Node events and log records may be dropped when the host falls behind.
    pub(super) fn is_droppable(&self) -> bool {
        matches!(self, Body::Node(_) | Body::Log { .. })
    }
}

/// An event taken by the host.
pub struct TribeEvent {
    body: Body,
    subject: Option<CString>,
    tribe: Option<CString>,
    /// A call event's details (its subject is the plugin), kept when its
    /// responder is taken.
    call: Option<CallSummary>,
}

/// What a call event tells of its call, also once its responder is taken.
struct CallSummary {
    names: CallNames,
    budget_ms: u64,
    payload_len: usize,
}

fn kind_of(body: &Body) -> u32 {
    match body {
        Body::Node(e) => match e {
            Event::Joined => TRIBE_EVENT_JOINED,
            Event::Isolated => TRIBE_EVENT_ISOLATED,
            Event::MemberJoined { .. } => TRIBE_EVENT_MEMBER_JOINED,
            Event::MemberUpdated { .. } => TRIBE_EVENT_MEMBER_UPDATED,
            Event::MemberLeft { .. } => TRIBE_EVENT_MEMBER_LEFT,
            Event::MemberFailed { .. } => TRIBE_EVENT_MEMBER_FAILED,
            Event::MemberReaped { .. } => TRIBE_EVENT_MEMBER_REAPED,
            Event::TribeCreated { .. } => TRIBE_EVENT_TRIBE_CREATED,
            Event::TribeDeleted { .. } => TRIBE_EVENT_TRIBE_DELETED,
            Event::TribeJoined { .. } => TRIBE_EVENT_TRIBE_JOINED,
            Event::TribeLeft { .. } => TRIBE_EVENT_TRIBE_LEFT,
            Event::PluginLoad(_) => TRIBE_EVENT_PLUGIN_LOAD,
            Event::PluginUnload(_) => TRIBE_EVENT_PLUGIN_UNLOAD,
            Event::TaskRun(_) => TRIBE_EVENT_TASK_RUN,
            Event::TaskStop(_) => TRIBE_EVENT_TASK_STOP,
            Event::ArtifactCorrupt { .. } => TRIBE_EVENT_ARTIFACT_CORRUPT,
            Event::ArtifactUnavailable { .. } => TRIBE_EVENT_ARTIFACT_UNAVAILABLE,
            Event::PolicyError { .. } => TRIBE_EVENT_POLICY_ERROR,
            Event::IdentityClaimed { .. } => TRIBE_EVENT_IDENTITY_CLAIMED,
            Event::ClockSkew { .. } => TRIBE_EVENT_CLOCK_SKEW,
        },
        Body::Log { .. } => TRIBE_EVENT_LOG,
        Body::Call(_) => TRIBE_EVENT_CALL,
        Body::CallDone { .. } => TRIBE_EVENT_CALL_DONE,
    }
}

fn c(s: &str) -> Option<CString> {
    CString::new(s).ok()
}

impl TribeEvent {
    fn new(body: Body) -> TribeEvent {
        let (subject, tribe) = match &body {
            Body::Node(e) => match e {
                Event::Joined | Event::Isolated => (None, None),
                Event::MemberJoined { name, .. }
                | Event::MemberUpdated { name }
                | Event::MemberLeft { name }
                | Event::MemberFailed { name }
                | Event::MemberReaped { name } => (c(name), None),
                Event::TribeCreated { tribe }
                | Event::TribeDeleted { tribe }
                | Event::TribeJoined { tribe, .. }
                | Event::TribeLeft { tribe } => (None, c(tribe)),
                Event::PluginLoad(p)
                | Event::PluginUnload(p)
                | Event::ArtifactCorrupt { plugin: p, .. }
                | Event::ArtifactUnavailable { plugin: p, .. } => (c(&p.name), c(&p.tribe)),
                Event::TaskRun(t) | Event::TaskStop(t) => (c(&t.id), c(&t.tribe)),
                Event::PolicyError { policy, .. } => (c(policy), None),
                Event::IdentityClaimed { .. } => (None, None),
                Event::ClockSkew { peer, .. } => (c(peer), None),
            },
            Body::Log { message, .. } => (Some(super::cast::c_text(message)), None),
            // Read from the call's names (see `subject` and `tribe`).
            Body::Call(_) | Body::CallDone { .. } => (None, None),
        };
        let call = match &body {
            Body::Call(Some(r)) => Some(CallSummary {
                names: r.names.clone(),
                budget_ms: u64::try_from(r.budget.as_millis()).unwrap_or(u64::MAX),
                payload_len: r.payload.len(),
            }),
            _ => None,
        };
        TribeEvent {
            body,
            subject,
            tribe,
            call,
        }
    }

    /// What the event is about, if its kind has a subject.
    fn subject(&self) -> Option<&CStr> {
        match &self.call {
            Some(call) => Some(call.names.plugin()),
            None => self.subject.as_deref(),
        }
    }

    /// The tribe the event is about, if its kind has one.
    fn tribe(&self) -> Option<&CStr> {
        match &self.call {
            Some(call) => Some(call.names.tribe()),
            None => self.tribe.as_deref(),
        }
    }

    fn json(&self) -> serde_json::Value {
        use serde_json::json;
        match &self.body {
            Body::Node(e) => crate::admin::json::event(e),
            Body::Log {
                level,
                target,
                message,
            } => json!({
                "kind": "log",
                "level": super::log::level_name(*level),
                "target": target,
                "message": message,
            }),
            Body::Call(_) => match &self.call {
                Some(call) => {
                    let text = |s: &CStr| s.to_string_lossy().into_owned();
                    json!({
                        "kind": "call",
                        "tribe": text(call.names.tribe()),
                        "plugin": text(call.names.plugin()),
                        "version": text(call.names.version()),
                        "caller": text(call.names.caller()),
                        "budget_ms": call.budget_ms,
                        "payload_len": call.payload_len,
                    })
                }
                None => json!({ "kind": "call" }),
            },
            Body::CallDone { id, result, .. } => {
                let outcome = match result {
                    Some(Ok(_)) => "ok",
                    Some(Err(e)) => super::error::code_name(e.code)
                        .to_str()
                        .unwrap_or("unknown"),
                    None => "taken",
                };
                json!({ "kind": "call_done", "id": id, "result": outcome })
            }
        }
    }
}

fn borrowed(value: Option<&CStr>, out: *mut *const c_char, what: &str) -> Result<(), FfiError> {
    let out = cast::out(out, "out")?;
    let value = value.ok_or_else(|| {
        FfiError::new(
            TRIBE_WRONG_EVENT,
            format!("this kind of event has no {what}"),
        )
    })?;
    cast::write(out, value.as_ptr());
    Ok(())
}

/// Takes the next event of `node`, waiting up to `timeout_ms` milliseconds
/// (0: do not wait; negative: wait until an event comes or the node stops).
/// Returns `TRIBE_OK` with `*out` set to an owned event (free it with
/// `tribe_event_free`), or `TRIBE_OK` with `*out` NULL when the time ran
/// out. After `tribe_node_shutdown` or `tribe_node_abort`, the events still
/// queued are handed out, then every call returns `TRIBE_SHUTTING_DOWN`
/// at once; a shutdown from another thread wakes a waiting call.
/// Blocks the calling thread up to `timeout_ms` (never less; as the timer
/// counts whole milliseconds, a wait that times out may last about 1 ms
/// longer, so a 1 ms timeout takes about 2); while it waits, the thread
/// reads the node's incoming calls and the answers to its asynchronous
/// calls from their sockets itself (libtribe's own thread does it while no
/// host thread waits). Before it blocks, a thread looks for events for up
/// to 50 µs, busy on its CPU, while this node's recent waits ended that
/// fast (a quick exchange of calls), since waking a thread that slept
/// costs more than that on a virtual machine; after long waits it blocks
/// at once. A signal handled on the waiting thread does not end the wait
/// (there is no `EINTR`): with a negative timeout it goes on until an
/// event or a shutdown.
#[no_mangle]
pub extern "C" fn tribe_node_next_event(
    node: *const TribeNode,
    timeout_ms: i32,
    out: *mut *mut TribeEvent,
    err: *mut *mut FfiError,
) -> u32 {
    ffi_call!(err, [out], {
        let out = cast::out(out, "out")?;
        let node = super::node::node_handle(node)?;
        let timeout = u64::try_from(timeout_ms).ok().map(Duration::from_millis);
        match node.take_events(timeout, 1) {
            Taken::Item(bodies) => {
                if let Some(body) = bodies.into_iter().next() {
                    cast::write(out, cast::into_handle(TribeEvent::new(body)));
                }
                Ok(())
            }
            Taken::Empty => Ok(()),
            Taken::Closed => Err(crate::Error::ShuttingDown.into()),
        }
    })
}

/// Takes up to `cap` events of `node` at once: waits like
/// `tribe_node_next_event` (up to `timeout_ms`; 0: do not wait; negative:
/// until an event comes or the node stops) for the first one, then takes
/// the events already queued behind it without waiting more. `out` is an
/// array of `cap` slots (at least 1); `*out_len` receives how many were
/// filled, each an owned event to free with `tribe_event_free`, in queue
/// order (0 when the time ran out). One wake of the calling thread then
/// serves a whole burst of incoming calls or completions. After shutdown it
/// behaves as `tribe_node_next_event`: the queued events are handed out,
/// then `TRIBE_SHUTTING_DOWN`. Blocks the calling thread up to `timeout_ms`,
/// driving the node's call streams meanwhile as `tribe_node_next_event`.
#[no_mangle]
pub extern "C" fn tribe_node_next_events(
    node: *const TribeNode,
    timeout_ms: i32,
    out: *mut *mut TribeEvent,
    cap: usize,
    out_len: *mut usize,
    err: *mut *mut FfiError,
) -> u32 {
    ffi_call!(err, [out_len], {
        let timeout = u64::try_from(timeout_ms).ok().map(Duration::from_millis);
        take_into(node, out, cap, out_len, |node| {
            node.take_events(timeout, cap)
        })
    })
}

/// Takes up to `cap` events of `node` without blocking, after driving its
/// call streams for one turn on the calling thread: the tasks ready now
/// run, and what the node's sockets hold is read, so incoming calls and
/// answers that arrived are among the events taken. Otherwise as
/// `tribe_node_next_events` with `timeout_ms` 0 (the same `out`, `cap` and
/// `*out_len`; after shutdown the queued events, then
/// `TRIBE_SHUTTING_DOWN`). When another thread drives the streams at that
/// moment it only takes what is queued.
///
/// For a host thread that must not block, yet may find the answers it
/// waits for before it would sleep: a thread that yields to other work
/// between looks, or an event loop spinning briefly before it sleeps. A
/// `tribe_node_next_events` with 0 ms only takes what other threads
/// queued: a loop that sleeps on the event fd between looks drains it
/// better that way (a look here takes the call streams over from
/// libtribe's thread, which takes them back after 0.1 ms).
#[no_mangle]
pub extern "C" fn tribe_node_poll_events(
    node: *const TribeNode,
    out: *mut *mut TribeEvent,
    cap: usize,
    out_len: *mut usize,
    err: *mut *mut FfiError,
) -> u32 {
    ffi_call!(err, [out_len], {
        take_into(node, out, cap, out_len, |node| node.poll_events(cap))
    })
}

/// Checks the arguments of the batch takes, takes with `take`, and hands
/// the events out.
fn take_into(
    node: *const TribeNode,
    out: *mut *mut TribeEvent,
    cap: usize,
    out_len: *mut usize,
    take: impl FnOnce(&TribeNode) -> Taken<Vec<Body>>,
) -> Result<(), FfiError> {
    let out_len = cast::out(out_len, "out_len")?;
    if cap == 0 {
        return Err(FfiError::invalid("cap must be at least 1"));
    }
    let slots = cast::out_array(out, cap, "out")?;
    let node = super::node::node_handle(node)?;
    match take(node) {
        Taken::Item(bodies) => {
            let n = bodies.len();
            for (slot, body) in slots.iter_mut().zip(bodies) {
                slot.write(cast::into_handle(TribeEvent::new(body)));
            }
            cast::write(out_len, n);
            Ok(())
        }
        Taken::Empty => Ok(()),
        Taken::Closed => Err(crate::Error::ShuttingDown.into()),
    }
}

/// The kind of an event (`TRIBE_EVENT_*`); `TRIBE_EVENT_NONE` for NULL.
#[no_mangle]
pub extern "C" fn tribe_event_kind(event: *const TribeEvent) -> u32 {
    ffi_infallible!(TRIBE_EVENT_NONE, {
        cast::opt_ref(event).map_or(TRIBE_EVENT_NONE, |e| kind_of(&e.body))
    })
}

/// The whole event as a JSON object `{"kind": ..., ...}` (schema in
/// docs/c-api.md). `*out` receives an owned string (`tribe_string_free`),
/// `*out_len` (if not NULL) its length.
#[no_mangle]
pub extern "C" fn tribe_event_json(
    event: *const TribeEvent,
    out: *mut *mut c_char,
    out_len: *mut usize,
    err: *mut *mut FfiError,
) -> u32 {
    ffi_call!(err, [out, out_len], {
        let out = cast::out(out, "out")?;
        let event = cast::handle(event, "event")?;
        cast::give_string(out, out_len, event.json().to_string());
        Ok(())
    })
}

/// What the event is about: a member's name, a plugin's name, a task's id,
/// a policy's name or a log message (see each `TRIBE_EVENT_*`). `*out` is borrowed: valid
/// until the event is freed. `TRIBE_WRONG_EVENT` for kinds without one.
#[no_mangle]
pub extern "C" fn tribe_event_subject(
    event: *const TribeEvent,
    out: *mut *const c_char,
    err: *mut *mut FfiError,
) -> u32 {
    ffi_call!(err, [out], {
        borrowed(cast::handle(event, "event")?.subject(), out, "subject")
    })
}

/// The tribe an event is about. `*out` is borrowed: valid until the event is
/// freed. `TRIBE_WRONG_EVENT` for kinds without one.
#[no_mangle]
pub extern "C" fn tribe_event_tribe(
    event: *const TribeEvent,
    out: *mut *const c_char,
    err: *mut *mut FfiError,
) -> u32 {
    ffi_call!(err, [out], {
        borrowed(cast::handle(event, "event")?.tribe(), out, "tribe")
    })
}

/// Moves the responder out of a `TRIBE_EVENT_CALL` event. `*out` receives
/// an owned responder: answer it with `tribe_responder_reply` or
/// `tribe_responder_fail` (from any thread) and free it with
/// `tribe_responder_free`. `TRIBE_CONSUMED` the second time;
/// `TRIBE_WRONG_EVENT` for other kinds. Freeing the event without taking the
/// responder answers the caller with the error code `"unanswered"`.
#[no_mangle]
pub extern "C" fn tribe_event_take_responder(
    event: *mut TribeEvent,
    out: *mut *mut TribeResponder,
    err: *mut *mut FfiError,
) -> u32 {
    ffi_call!(err, [out], {
        let out = cast::out(out, "out")?;
        let event = cast::handle_mut(event, "event")?;
        match &mut event.body {
            Body::Call(slot) => {
                // The event keeps what it tells of the call (`call`).
                let responder = slot
                    .take()
                    .ok_or_else(|| FfiError::consumed("the responder"))?;
                cast::write(out, Box::into_raw(responder));
                Ok(())
            }
            _ => Err(FfiError::new(
                TRIBE_WRONG_EVENT,
                "only a call event has a responder",
            )),
        }
    })
}

/// The level of a `TRIBE_EVENT_LOG` record: `TRIBE_LOG_ERROR` (1) to
/// `TRIBE_LOG_TRACE` (5). Its message is the event's subject.
/// `TRIBE_WRONG_EVENT` for other kinds.
#[no_mangle]
pub extern "C" fn tribe_event_log_level(
    event: *const TribeEvent,
    out: *mut u32,
    err: *mut *mut FfiError,
) -> u32 {
    ffi_call!(err, [out], {
        let out = cast::out(out, "out")?;
        match &cast::handle(event, "event")?.body {
            Body::Log { level, .. } => {
                cast::write(out, *level);
                Ok(())
            }
            _ => Err(FfiError::new(
                TRIBE_WRONG_EVENT,
                "only a log event has a level",
            )),
        }
    })
}

/// The id `tribe_node_call_async` gave the call a `TRIBE_EVENT_CALL_DONE`
/// event finishes. `TRIBE_WRONG_EVENT` for other kinds.
#[no_mangle]
pub extern "C" fn tribe_event_call_id(
    event: *const TribeEvent,
    out: *mut u64,
    err: *mut *mut FfiError,
) -> u32 {
    ffi_call!(err, [out], {
        let out = cast::out(out, "out")?;
        match &cast::handle(event, "event")?.body {
            Body::CallDone { id, .. } => {
                cast::write(out, *id);
                Ok(())
            }
            _ => Err(FfiError::new(
                TRIBE_WRONG_EVENT,
                "only a call_done event has a call id",
            )),
        }
    })
}

/// The outcome of the asynchronous call a `TRIBE_EVENT_CALL_DONE` event
/// finishes: returns what `tribe_node_call` would have returned (`TRIBE_OK`
/// with the reply in `*reply`/`*reply_len`, owned, freed with
/// `tribe_bytes_free`; or the call's error); `reply` and `reply_len` both
/// NULL take the outcome only (a publisher's), dropping the reply.
/// `TRIBE_CONSUMED` the second time; `TRIBE_WRONG_EVENT` for other kinds.
#[no_mangle]
pub extern "C" fn tribe_event_take_reply(
    event: *mut TribeEvent,
    reply: *mut *mut u8,
    reply_len: *mut usize,
    err: *mut *mut FfiError,
) -> u32 {
    ffi_call!(err, [reply, reply_len], {
        let wanted = cast::reply_wanted(reply, reply_len)?;
        match &mut cast::handle_mut(event, "event")?.body {
            Body::CallDone { result, .. } => {
                let bytes = result
                    .take()
                    .ok_or_else(|| FfiError::consumed("the reply"))??;
                if wanted {
                    cast::give_bytes(reply, reply_len, bytes);
                }
                Ok(())
            }
            _ => Err(FfiError::new(
                TRIBE_WRONG_EVENT,
                "only a call_done event has a reply",
            )),
        }
    })
}

/// Frees an event. An incoming call whose responder was not taken is
/// answered with the error code `"unanswered"`. NULL is ignored.
#[no_mangle]
pub extern "C" fn tribe_event_free(event: *mut TribeEvent) {
    ffi_infallible!((), { cast::free_handle(event) })
}
