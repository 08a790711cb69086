//! Remote calls from C: serving a plugin (incoming calls arrive as events
//! carrying a `tribe_responder`), calling one (blocking, or asynchronous
//! with the outcome as an event) and cancelling an asynchronous call.

use std::collections::HashMap;
use std::ffi::c_char;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt;
use tokio::task::AbortHandle;

use super::call_names::CallNames;
use super::cast;
use super::commands::plugin_kind;
use super::error::FfiError;
use super::event::Body;
use super::mailbox::{Class, Mailbox};
use super::node::{next_call_id, TribeNode};
use super::owner::Owner;
use crate::{CallInfo, Error, HandlerError, Overload, Responder};

/// Gathers metrics.
pub const TRIBE_KIND_COLLECTOR: u32 = 1;
/// Transforms metrics.
pub const TRIBE_KIND_PROCESSOR: u32 = 2;
/// Sends metrics somewhere.
pub const TRIBE_KIND_PUBLISHER: u32 = 3;

/// Asynchronous calls not finished yet. Whoever removes an id — the call
/// finishing, a cancel, or the node stopping — reports its one completion,
/// under the same lock as the close of the mailbox, so none is lost.
pub(super) struct AsyncCalls {
    inner: Mutex<Pending>,
    /// Completions queued for the host and not yet freed: with the calls
    /// running, held to the node's `max_inflight`, so a host that starts
    /// calls and never takes their completions is refused (`Overloaded`)
    /// instead of queueing without end.
    unread: Arc<AtomicUsize>,
    bound: usize,
}

/// One completion not yet freed by the host.
pub(super) struct Unread(Arc<AtomicUsize>);

impl Drop for Unread {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[derive(Default)]
struct Pending {
    calls: HashMap<u64, Option<AbortHandle>>,
    closed: bool,
}

impl AsyncCalls {
    pub(super) fn new(bound: usize) -> AsyncCalls {
        AsyncCalls {
            inner: Mutex::default(),
            unread: Arc::default(),
            bound: bound.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers `id`; gives how many other calls are in flight.
    fn register(&self, id: u64) -> Result<usize, Error> {
        let mut p = self.lock();
        if p.closed {
            return Err(Error::ShuttingDown);
        }
        if p.calls.len() + self.unread.load(Ordering::Acquire) >= self.bound {
            return Err(Error::Overloaded {
                by: Overload::Completions { limit: self.bound },
            });
        }
        p.calls.insert(id, None);
        Ok(p.calls.len() - 1)
    }

    fn unread(&self) -> Unread {
        self.unread.fetch_add(1, Ordering::AcqRel);
        Unread(self.unread.clone())
    }

    /// Gives `id` its task, or aborts the task when the call ended
    /// meanwhile (cancelled while its first step ran on the host's thread).
    fn attach(&self, id: u64, task: AbortHandle) {
        match self.lock().calls.get_mut(&id) {
            Some(slot) => *slot = Some(task),
            None => task.abort(),
        }
    }

    /// Reports the completion of `id` unless someone did already (then
    /// false); the task is aborted (a no-op when it is the one reporting).
    pub(super) fn finish(
        &self,
        id: u64,
        mailbox: &Mailbox<Body>,
        result: Result<Vec<u8>, FfiError>,
    ) -> bool {
        let mut p = self.lock();
        let Some(task) = p.calls.remove(&id) else {
            return false;
        };
        if let Some(task) = task {
            task.abort();
        }
        self.report(mailbox, id, result);
        true
    }

    /// Reports what a call's task ended with, unless someone ended the call
    /// first (`count`ed only then, so an expired call counts once); a
    /// panic becomes `TRIBE_PANIC`.
    fn complete(
        &self,
        id: u64,
        mailbox: &Mailbox<Body>,
        outcome: std::thread::Result<Result<Vec<u8>, Error>>,
        count: impl FnOnce(&Result<Vec<u8>, Error>),
    ) {
        let mut p = self.lock();
        if p.calls.remove(&id).is_none() {
            return;
        }
        let result = match outcome {
            Ok(result) => {
                count(&result);
                result.map_err(FfiError::from)
            }
            Err(panic) => Err(FfiError::panic(panic)),
        };
        // Not aborted: this is the call's own task, ending.
        self.report(mailbox, id, result);
    }

    /// Queues the one completion of `id`, counted until the host frees it.
    fn report(&self, mailbox: &Mailbox<Body>, id: u64, result: Result<Vec<u8>, FfiError>) {
        let done = Body::CallDone {
            id,
            result: Some(result),
            _unread: self.unread(),
        };
        let _ = mailbox.push(done, Class::Kept);
    }

    /// Finishes every pending call with `TRIBE_SHUTTING_DOWN`, refuses new
    /// ones and closes the mailbox.
    pub(super) fn close(&self, mailbox: &Mailbox<Body>) {
        let mut p = self.lock();
        p.closed = true;
        let mut ids: Vec<u64> = p.calls.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            if let Some(Some(task)) = p.calls.remove(&id) {
                task.abort();
            }
            self.report(mailbox, id, Err(Error::ShuttingDown.into()));
        }
        mailbox.close();
    }
}

/// An incoming call waiting for its answer.
pub struct TribeResponder {
    /// Caller, tribe, plugin and version as C strings (shared with the
    /// call's event).
    pub(super) names: CallNames,
    /// How long the caller still waited when the call arrived.
    pub(super) budget: Duration,
    /// When the call arrived (when the host's clock of its budget began).
    arrived: std::time::Instant,
    pub(super) payload: Vec<u8>,
    /// Taken by the first answer; dropping it unanswered answers
    /// `"unanswered"`.
    responder: Mutex<Option<Responder>>,
    /// The process the call arrived in (a forked child may not answer it).
    owner: Owner,
}

impl Drop for TribeResponder {
    fn drop(&mut self) {
        // Dropped unanswered, the responder answers "unanswered" on the
        // caller's stream; a forked child shares that socket with its
        // parent and must leave it alone.
        if self.owner.is_elsewhere() {
            // No lock: a parent thread may have held it at the fork.
            let responder = self.responder.get_mut().unwrap_or_else(|p| p.into_inner());
            std::mem::forget(responder.take());
        }
    }
}

/// How the host answered.
enum Answer<'a> {
    /// Copied only when within the node's `max_payload`.
    Reply(&'a [u8]),
    /// A length no buffer has: over every limit.
    TooLarge(usize),
    Fail(HandlerError),
    RefuseStopping,
    Decline,
}

impl TribeResponder {
    fn new(info: CallInfo, payload: Vec<u8>, responder: Responder) -> TribeResponder {
        TribeResponder {
            names: CallNames::new(&info),
            budget: info.budget,
            arrived: std::time::Instant::now(),
            payload,
            responder: Mutex::new(Some(responder)),
            owner: Owner::here(),
        }
    }

    fn take(&self) -> Option<Responder> {
        self.responder
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    /// Answers from the host's thread: the reply is written to the caller's
    /// stream from here. An answer the caller no longer waits for
    /// (deadline, shutdown) is dropped, which is not the host's error.
    fn answer(&self, answer: Answer) -> Result<(), FfiError> {
        self.owner.check("the responder")?;
        let responder = self
            .take()
            .ok_or_else(|| FfiError::consumed("the responder (it was answered)"))?;
        match answer {
            Answer::Reply(bytes) => responder.reply_copied(bytes)?,
            Answer::TooLarge(size) => responder.reply_too_large(size)?,
            Answer::Fail(e) => responder.fail(e),
            Answer::RefuseStopping => responder.refuse_stopping(),
            Answer::Decline => responder.decline(),
        }
        Ok(())
    }
}

/// Serves a plugin: advertises it in this node's record, so members of this
/// node's tribes can call it. Each incoming call becomes a
/// `TRIBE_EVENT_CALL` event for `tribe_node_next_event`; libtribe never
/// calls into the host. A call that arrives once the node is stopping is
/// refused as `tribe_responder_refuse_stopping` would (the caller moves it to
/// another member). Serving the same name and version again replaces the
/// first (its kind too: a name and version is served as one kind).
#[no_mangle]
pub extern "C" fn tribe_node_serve(
    node: *const TribeNode,
    name: *const c_char,
    version: *const c_char,
    kind: u32,
    err: *mut *mut FfiError,
) -> u32 {
    ffi_call!(err, {
        let name = cast::text(name, "name")?;
        let version = cast::text(version, "version")?;
        let kind = plugin_kind(kind)?;
        let handle = super::node::node_handle(node)?;
        let mailbox: Arc<Mailbox<Body>> = handle.mailbox.clone();
        let serve =
            handle
                .live()?
                .serve_responder(name, version, kind, move |info, payload, responder| {
                    let call = Box::new(TribeResponder::new(info, payload, responder));
                    if let Err(Body::Call(Some(call))) =
                        mailbox.push(Body::Call(Some(call)), Class::Kept)
                    {
                        // The node is stopping: refuse without the host,
                        // so the caller moves the call to another member.
                        if let Some(r) = call.take() {
                            r.refuse_stopping();
                        }
                    }
                });
        Ok(handle.block_on(serve)?)
    })
}

/// Stops serving a plugin and withdraws its endpoint.
#[no_mangle]
pub extern "C" fn tribe_node_unserve(
    node: *const TribeNode,
    name: *const c_char,
    version: *const c_char,
    err: *mut *mut FfiError,
) -> u32 {
    ffi_call!(err, {
        let name = cast::text(name, "name")?;
        let version = cast::text(version, "version")?;
        let handle = super::node::node_handle(node)?;
        Ok(handle.block_on(handle.live()?.unserve(name, version))?)
    })
}

/// A call's timeout, checked after its other arguments: 0 is a deadline
/// already passed (a handler passing on what is left of its budget,
/// `tribe_responder_remaining_us`, once none is), `TRIBE_TIMEOUT` at once
/// as the call would end, the way Go and Python take it.
fn timeout(ms: u32) -> Result<Duration, FfiError> {
    if ms == 0 {
        return Err(crate::Error::Timeout { host: None }.into());
    }
    Ok(Duration::from_millis(ms.into()))
}

/// The longest a host runs a call, in ms (5 minutes): a call's handler gets
/// at most this budget, so a call with a longer `timeout_ms` ends with
/// `TRIBE_TIMEOUT` after it unless answered first.
#[allow(dead_code)] // For C only; a test ties it to the host's bound.
pub const TRIBE_MAX_CALL_BUDGET_MS: u32 = 300_000;

/// Calls `plugin` (`version`: NULL for any) of kind `kind` served by a live
/// member of `tribe`: this node first when it serves it, then the member
/// with the fewest calls outstanding, suspected members last. Blocks the calling thread until the
/// reply, an error, `timeout_ms` (a host runs the call for at most
/// `TRIBE_MAX_CALL_BUDGET_MS`; 0 is a deadline already passed, as a handler
/// passing on `tribe_responder_remaining_us(r) / 1000` gets once its budget
/// is spent: `TRIBE_TIMEOUT` at once, as in Go and Python), or a shutdown of the node from
/// another thread (`TRIBE_SHUTTING_DOWN`). On `TRIBE_OK`, `*reply` receives
/// an owned buffer (free with `tribe_bytes_free(*reply, *reply_len)`; NULL
/// for an empty reply); `reply` and `reply_len` both NULL drop the reply
/// (a publisher's, say: its caller wants only the outcome), one of them
/// NULL is `TRIBE_NULL_ARGUMENT`. Errors: `TRIBE_NO_PROVIDER`, `TRIBE_TIMEOUT`,
/// `TRIBE_REMOTE` (the handler's code and message in the error),
/// `TRIBE_TOO_LARGE` (a payload over the node's `max_payload` is refused
/// at once, before it is copied; or a reply over it), `TRIBE_OVERLOADED`,
/// `TRIBE_DISCONNECTED`, `TRIBE_SHUTTING_DOWN`, `TRIBE_IO` (this process
/// could not open a connection: out of descriptors, buffers or memory;
/// no host is blamed). `payload` may be NULL when
/// `payload_len` is 0. A call to another node goes on a TCP stream this
/// call borrows whole, and the calling thread reads the reply from the
/// socket itself (a thread blocked here holds one stream to the host it
/// calls; they are reused). Before the thread blocks in the socket it
/// looks for the reply for up to 50 µs while this stream's recent replies
/// came that fast (see `tribe_node_next_event`).
/// A signal handled on the calling thread does not end the wait (there is
/// no `EINTR`): it goes on until the reply, the timeout or a shutdown.
#[no_mangle]
pub extern "C" fn tribe_node_call(
    node: *const TribeNode,
    tribe: *const c_char,
    plugin: *const c_char,
    version: *const c_char,
    kind: u32,
    payload: *const u8,
    payload_len: usize,
    timeout_ms: u32,
    reply: *mut *mut u8,
    reply_len: *mut usize,
    err: *mut *mut FfiError,
) -> u32 {
    ffi_call!(err, [reply, reply_len], {
        let wanted = cast::reply_wanted(reply, reply_len)?;
        let handle = super::node::node_handle(node)?;
        let target = handle.targets.get(tribe, plugin, version, kind)?;
        let n = handle.live()?;
        within_limit(handle, n, payload_len)?;
        let payload = cast::bytes(payload, payload_len, "payload")?.to_vec();
        let timeout = timeout(timeout_ms)?;
        let mut closing = handle.closing.subscribe();
        let bytes = handle.block_on(async {
            tokio::select! {
                result = n.call_blocking(&target, payload, timeout) => result,
                _ = closing.wait_for(|c| *c) => Err(Error::ShuttingDown),
            }
        })?;
        if wanted {
            cast::give_bytes(reply, reply_len, bytes);
        }
        Ok(())
    })
}

/// `TRIBE_TOO_LARGE`, counted as a call refused for it, when a payload of
/// `len` bytes is over the node's `max_payload`: checked before the payload
/// is looked at or copied, as a host's buffer may be larger than memory
/// allows (and a length no buffer can have is over it too).
fn within_limit(handle: &TribeNode, node: &crate::Node, len: usize) -> Result<(), FfiError> {
    if len <= handle.max_payload {
        return Ok(());
    }
    let too_large = Error::TooLarge {
        size: len,
        limit: handle.max_payload,
    };
    node.count_call(&Err(too_large.clone()));
    Err(too_large.into())
}

/// Starts a call like `tribe_node_call` without blocking: `*call_id`
/// receives its id, and exactly one `TRIBE_EVENT_CALL_DONE` event with that
/// id reports the outcome (`tribe_event_take_reply`): the reply, the call's
/// error, `TRIBE_CANCELLED` after `tribe_node_call_cancel`,
/// `TRIBE_SHUTTING_DOWN` when the node stops first, or `TRIBE_PANIC` if the
/// library panicked while running the call. Errors in the arguments are
/// returned at once and give no event (`*call_id` is then 0, which no call
/// has), and so are a payload over the node's `max_payload`
/// (`TRIBE_TOO_LARGE`) and a `timeout_ms` of 0 (`TRIBE_TIMEOUT`), as
/// `tribe_node_call` gives them. `*call_id` is written
/// before the call starts, but another thread may take the completion
/// before this function returns: a host that maps ids to waiting callers
/// holds that map's lock across this call (its event thread then waits for
/// the entry).
/// A call with no other asynchronous call of the node in flight runs its
/// first step on the calling thread: when a stream to the chosen host is
/// open, the request is written before this returns (a write that does
/// not block). With others in flight, the call is handed to the thread that
/// waits in `tribe_node_next_event(s)`, which sends the requests of a burst
/// together (libtribe's own thread while none waits). That thread reads the
/// answers.
#[no_mangle]
pub extern "C" fn tribe_node_call_async(
    node: *const TribeNode,
    tribe: *const c_char,
    plugin: *const c_char,
    version: *const c_char,
    kind: u32,
    payload: *const u8,
    payload_len: usize,
    timeout_ms: u32,
    call_id: *mut u64,
    err: *mut *mut FfiError,
) -> u32 {
    ffi_call!(err, [call_id], {
        let call_id = cast::out(call_id, "call_id")?;
        let handle = super::node::node_handle(node)?;
        let target = handle.targets.get(tribe, plugin, version, kind)?;
        let n = handle.live()?.clone();
        // Refused here, as the blocking call refuses it, rather than in a
        // completion.
        within_limit(handle, &n, payload_len)?;
        let payload = cast::bytes(payload, payload_len, "payload")?.to_vec();
        let timeout = timeout(timeout_ms)?;
        let id = next_call_id(handle);
        let calls = handle.calls.clone();
        let mailbox = handle.mailbox.clone();
        // The id is registered before the task exists, so a call that
        // finishes at once still finds it.
        let company = calls.register(id).map_err(|e| {
            // Refused for this node's own load: counted as the call's
            // outcome, as a host's refusal is.
            if matches!(e, Error::Overloaded { .. }) {
                n.count_call(&Err(e.clone()));
            }
            FfiError::from(e)
        })?;
        // Written before the call starts, so the host knows the id before
        // its completion can exist.
        cast::write(call_id, id);
        let registry = calls.clone();
        let mut call = Box::pin(async move {
            let outcome = AssertUnwindSafe(n.call_uncounted(&target, payload, timeout))
                .catch_unwind()
                .await;
            registry.complete(id, &mailbox, outcome, |result| n.count_call(result));
        });
        // Its log records go to this node's queue also when a poll group's
        // thread, which belongs to no node, runs it.
        let sink = handle.log_sink().cloned();
        let mut call = std::future::poll_fn(move |cx| {
            super::log::with_sink(sink.as_ref(), || call.as_mut().poll(cx))
        });
        // The call's first step runs here: its request is written from
        // this thread, where a task would first wake the thread that
        // drives the call streams to write it (and with many callers, the
        // writing is spread over their threads). What is left runs as a
        // task on the streams' runtime, whose first poll registers the
        // wakers this one could not.
        let streams = handle.host_io.handle().clone();
        let first = {
            let _runtime = streams.enter();
            std::pin::Pin::new(&mut call)
                .poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
        };
        if first.is_ready() {
            return Ok(());
        }
        let start = move || {
            let task = streams.spawn(call);
            calls.attach(id, task.abort_handle());
        };
        if company > 0 {
            // Other calls are in flight, so the driving thread will wake
            // for their answers anyway: the task waits for it, and a burst
            // of calls from other threads wakes it once (a spawn each
            // would wake it every time).
            handle.host_io.hand_over(start);
        } else if let Some(start) = handle.host_io.defer(start) {
            // When no thread drives the runtime now (a host thread that
            // calls, then waits for events), the task is spawned by the
            // next one that does, from inside: a spawn from here would
            // write the runtime's wake-up eventfd, and that wait would
            // return once for nothing.
            start();
        }
        Ok(())
    })
}

/// Cancels an asynchronous call: if it has not finished, it is abandoned
/// and its `TRIBE_EVENT_CALL_DONE` event carries `TRIBE_CANCELLED`. An id
/// that already finished (or never existed) is ignored, also after a
/// shutdown (`TRIBE_OK`: the stop ended every call). Does not block.
#[no_mangle]
pub extern "C" fn tribe_node_call_cancel(
    node: *const TribeNode,
    call_id: u64,
    err: *mut *mut FfiError,
) -> u32 {
    ffi_call!(err, {
        let handle = super::node::node_handle(node)?;
        let cancelled = FfiError::new(super::error::TRIBE_CANCELLED, "the call was cancelled");
        if handle
            .calls
            .finish(call_id, &handle.mailbox, Err(cancelled))
        {
            handle.node.count_abandoned_call();
        }
        Ok(())
    })
}

/// Ends an asynchronous call as timed out, for a host that keeps the
/// call's deadline itself (a Go context's): if it has not finished, it is
/// abandoned, its `TRIBE_EVENT_CALL_DONE` event carries `TRIBE_TIMEOUT`,
/// and it counts as a timeout in the node's counters, as a call libtribe
/// timed out does. An id that already finished (or never existed) is
/// ignored, also after a shutdown. Does not block.
#[no_mangle]
pub extern "C" fn tribe_node_call_expire(
    node: *const TribeNode,
    call_id: u64,
    err: *mut *mut FfiError,
) -> u32 {
    ffi_call!(err, {
        let handle = super::node::node_handle(node)?;
        let expired = Error::Timeout { host: None };
        if handle.calls.finish(
            call_id,
            &handle.mailbox,
            Err(FfiError::from(Error::Timeout { host: None })),
        ) {
            handle.node.count_call(&Err(expired));
        }
        Ok(())
    })
}

/// The payload of a call. `*len` receives its length; the bytes are
/// borrowed until `tribe_responder_free` (NULL when empty or for NULL).
#[no_mangle]
pub extern "C" fn tribe_responder_payload(r: *const TribeResponder, len: *mut usize) -> *const u8 {
    ffi_infallible!(std::ptr::null(), {
        let r = cast::opt_ref(r);
        cast::store(len, r.map_or(0, |r| r.payload.len()));
        match r {
            Some(r) if !r.payload.is_empty() => r.payload.as_ptr(),
            _ => std::ptr::null(),
        }
    })
}

/// What `tribe_responder_info` tells about an incoming call. Every pointer
/// is borrowed from the responder until `tribe_responder_free`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct TribeCallInfo {
    /// The calling node's name.
    pub caller: *const c_char,
    /// The tribe the call came through.
    pub tribe: *const c_char,
    /// The plugin called.
    pub plugin: *const c_char,
    /// The version of the served plugin that takes the call (also when the
    /// caller asked for any version).
    pub version: *const c_char,
    /// The payload (NULL when empty) and its length.
    pub payload: *const u8,
    pub payload_len: usize,
    /// How long the caller still waited when the call arrived, in
    /// microseconds.
    pub budget_us: u64,
}

impl cast::Blank for TribeCallInfo {
    const BLANK: Self = TribeCallInfo {
        caller: std::ptr::null(),
        tribe: std::ptr::null(),
        plugin: std::ptr::null(),
        version: std::ptr::null(),
        payload: std::ptr::null(),
        payload_len: 0,
        budget_us: 0,
    };
}

/// Everything `tribe_responder_caller`, `_tribe`, `_plugin`, `_version`,
/// `_payload` and `_budget_us` give, in one call (for bindings, where each
/// call into C has a cost). Writes `*info`; `TRIBE_NULL_ARGUMENT` for NULL.
/// Does not block.
#[no_mangle]
pub extern "C" fn tribe_responder_info(
    r: *const TribeResponder,
    info: *mut TribeCallInfo,
    err: *mut *mut FfiError,
) -> u32 {
    ffi_call!(err, [info], {
        let r = cast::handle(r, "responder")?;
        let info = cast::out(info, "info")?;
        cast::write(
            info,
            TribeCallInfo {
                caller: r.names.caller().as_ptr(),
                tribe: r.names.tribe().as_ptr(),
                plugin: r.names.plugin().as_ptr(),
                version: r.names.version().as_ptr(),
                payload: if r.payload.is_empty() {
                    std::ptr::null()
                } else {
                    r.payload.as_ptr()
                },
                payload_len: r.payload.len(),
                budget_us: r.budget.as_micros().try_into().unwrap_or(u64::MAX),
            },
        );
        Ok(())
    })
}

/// The calling node's name. Borrowed until `tribe_responder_free`; NULL for NULL.
#[no_mangle]
pub extern "C" fn tribe_responder_caller(r: *const TribeResponder) -> *const c_char {
    cast::field_str(r, |r| r.names.caller())
}

/// The tribe the call came through. Borrowed until `tribe_responder_free`.
#[no_mangle]
pub extern "C" fn tribe_responder_tribe(r: *const TribeResponder) -> *const c_char {
    cast::field_str(r, |r| r.names.tribe())
}

/// The plugin called. Borrowed until `tribe_responder_free`.
#[no_mangle]
pub extern "C" fn tribe_responder_plugin(r: *const TribeResponder) -> *const c_char {
    cast::field_str(r, |r| r.names.plugin())
}

/// The version of the served plugin that takes the call (also when the
/// caller asked for any version). Borrowed until `tribe_responder_free`.
#[no_mangle]
pub extern "C" fn tribe_responder_version(r: *const TribeResponder) -> *const c_char {
    cast::field_str(r, |r| r.names.version())
}

/// How long the caller still waited when the call arrived, in ms; an answer
/// after that is dropped. 0 for NULL.
#[no_mangle]
pub extern "C" fn tribe_responder_budget_ms(r: *const TribeResponder) -> u64 {
    ffi_infallible!(0, {
        cast::opt_ref(r).map_or(0, |r| r.budget.as_millis().try_into().unwrap_or(u64::MAX))
    })
}

/// How long the caller still waited when the call arrived, in
/// microseconds (`tribe_responder_budget_ms` rounds down to whole ms).
/// 0 for NULL.
#[no_mangle]
pub extern "C" fn tribe_responder_budget_us(r: *const TribeResponder) -> u64 {
    ffi_infallible!(0, {
        cast::opt_ref(r).map_or(0, |r| r.budget.as_micros().try_into().unwrap_or(u64::MAX))
    })
}

/// How long the caller still waits now, in microseconds: the budget less
/// the time since the call arrived (0 once it has run out). A host that
/// starts a call's work late (queued behind others) sets its own deadline
/// from this rather than from the budget, so that it ends when libtribe
/// answers the caller `"timeout"`. 0 for NULL.
#[no_mangle]
pub extern "C" fn tribe_responder_remaining_us(r: *const TribeResponder) -> u64 {
    ffi_infallible!(0, {
        cast::opt_ref(r).map_or(0, |r| {
            let left = r.budget.saturating_sub(r.arrived.elapsed());
            left.as_micros().try_into().unwrap_or(u64::MAX)
        })
    })
}

/// Whether the call is over without this responder's answer: its caller
/// cancelled it (`tribe_node_call_cancel`, a cancelled Go context, ...),
/// its budget ran out, or its stream or node ended. An answer given now is
/// dropped; a long handler may check this to stop early. True for NULL and
/// for a responder already answered, and in a forked child. Does not block.
#[no_mangle]
pub extern "C" fn tribe_responder_is_abandoned(r: *const TribeResponder) -> bool {
    ffi_infallible!(true, {
        // A forked child must not take the parent's locks.
        cast::opt_ref(r).is_none_or(|r| {
            r.owner.is_elsewhere()
                || r.responder
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .as_ref()
                    .is_none_or(Responder::is_abandoned)
        })
    })
}

/// Answers a call with `reply` (copied; NULL allowed when `reply_len` is 0).
/// Callable from any thread. `TRIBE_CONSUMED` if the call was answered
/// already. `TRIBE_TOO_LARGE` if `reply_len` is over the node's
/// `max_payload` (checked before the reply is copied): the reply is not
/// sent, the caller gets `TRIBE_REMOTE` with the code `"too_large"`, and
/// the call is answered. An answer the caller no longer waits for (deadline passed, node stopped) is dropped without an
/// error. The responder must still be
/// freed. Does not block: the reply is written to the caller's stream from
/// this thread with a non-blocking write, and what the socket does not take
/// at once is left to the node's threads.
#[no_mangle]
pub extern "C" fn tribe_responder_reply(
    r: *const TribeResponder,
    reply: *const u8,
    reply_len: usize,
    err: *mut *mut FfiError,
) -> u32 {
    ffi_call!(err, {
        let r = cast::handle(r, "responder")?;
        if reply_len > isize::MAX as usize {
            return r.answer(Answer::TooLarge(reply_len));
        }
        let reply = cast::bytes(reply, reply_len, "reply")?;
        r.answer(Answer::Reply(reply))
    })
}

/// Answers a call with an error: the caller gets `TRIBE_REMOTE` with this
/// `code` (short, stable; NULL or "" gives `"error"`) and `message` (NULL
/// gives ""). Longer ones are cut without an error: the code to 256 bytes,
/// the message to 65,536 (64 KiB), each on a character boundary and ending
/// in "…" (counted in the limit). Bytes that are not UTF-8 (a file name,
/// `strerror` text in another encoding) are replaced with U+FFFD, not
/// refused, so the failure still reaches the caller, as in Go and Python.
/// The code `"timeout"` is reserved: it
/// reaches the caller as `TRIBE_TIMEOUT`, without the message, as a host's
/// answer to a handler that overran the caller's budget. Otherwise like
/// `tribe_responder_reply`.
#[no_mangle]
pub extern "C" fn tribe_responder_fail(
    r: *const TribeResponder,
    code: *const c_char,
    message: *const c_char,
    err: *mut *mut FfiError,
) -> u32 {
    ffi_call!(err, {
        let r = cast::handle(r, "responder")?;
        let code = cast::opt_text_lossy(code).unwrap_or("error".into());
        let message = cast::opt_text_lossy(message).unwrap_or_default();
        r.answer(Answer::Fail(HandlerError::new(code, message)))
    })
}

/// Answers that this host is stopping and did not run the call (a handler
/// pool that stops with calls still queued, a handler that gave up because
/// its node is closing before it had any effect; one that may have had
/// effects answers with `tribe_responder_fail` instead, or the caller runs
/// the call again elsewhere): the caller moves the call to another member
/// that serves the plugin, as for a call that reaches a host already stopping
/// (`TRIBE_NO_PROVIDER` when there is none). `TRIBE_CONSUMED` if the call
/// was answered already. The responder must still be freed. Does not block.
#[no_mangle]
pub extern "C" fn tribe_responder_refuse_stopping(
    r: *const TribeResponder,
    err: *mut *mut FfiError,
) -> u32 {
    ffi_call!(err, {
        cast::handle(r, "responder")?.answer(Answer::RefuseStopping)
    })
}

/// Declines to answer a call: the caller gets what its own deadline gives
/// (`TRIBE_TIMEOUT`), as if the handler were still running — for a handler
/// that gave up at its budget. `TRIBE_CONSUMED` if the call was answered
/// already. The responder must still be freed. Does not block.
#[no_mangle]
pub extern "C" fn tribe_responder_decline(
    r: *const TribeResponder,
    err: *mut *mut FfiError,
) -> u32 {
    ffi_call!(err, {
        cast::handle(r, "responder")?.answer(Answer::Decline)
    })
}

/// Frees a responder; an unanswered call is answered with the error code
/// `"unanswered"`. NULL is ignored.
#[no_mangle]
pub extern "C" fn tribe_responder_free(r: *mut TribeResponder) {
    ffi_infallible!((), { cast::free_handle(r) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_cap_in_the_header_is_the_hosts() {
        assert_eq!(
            Duration::from_millis(TRIBE_MAX_CALL_BUDGET_MS.into()),
            crate::rpc::server::MAX_CALL_BUDGET
        );
    }

    #[test]
    fn the_limits_the_header_names_are_the_librarys() {
        // tribe_responder_fail, tribe_config_set_fact, tribe_node_set_fact.
        assert_eq!(crate::rpc::responder::MAX_ERROR_CODE, 256);
        assert_eq!(crate::rpc::responder::MAX_ERROR_MESSAGE, 65_536);
        assert_eq!(crate::facts::MAX_FACT_KEY_LEN, 64);
        assert_eq!(crate::facts::MAX_FACT_VALUE_LEN, 1024);
        assert_eq!(crate::records::limits::MAX_FACTS, 256);
    }

    /// The result of the one completion `calls` queued for `id`.
    fn completion(
        calls: &AsyncCalls,
        id: u64,
        outcome: std::thread::Result<Result<Vec<u8>, Error>>,
    ) -> (Result<Vec<u8>, FfiError>, bool) {
        let mailbox = Mailbox::new().unwrap();
        calls.register(id).unwrap();
        let mut counted = false;
        calls.complete(id, &mailbox, outcome, |_| counted = true);
        match mailbox.take(Some(Duration::ZERO), |_| false) {
            super::super::mailbox::Taken::Item(Body::CallDone {
                result: Some(result),
                ..
            }) => (result, counted),
            _ => panic!("no completion queued"),
        }
    }

    #[test]
    fn a_call_that_panics_completes_as_a_panic() {
        let calls = AsyncCalls::new(4);
        let panic =
            std::panic::catch_unwind(|| -> Result<Vec<u8>, Error> { panic!("broken call") });
        let (result, counted) = completion(&calls, 1, panic);
        let err = result.unwrap_err();
        assert_eq!(err.code, super::super::error::TRIBE_PANIC);
        assert!(format!("{err:?}").contains("broken call"), "{err:?}");
        assert!(!counted, "a panic is not a call outcome");
    }

    #[test]
    fn a_call_that_fails_keeps_its_code() {
        let calls = AsyncCalls::new(4);
        let (result, counted) = completion(&calls, 1, Ok(Err(Error::Timeout { host: None })));
        let err = result.unwrap_err();
        assert_eq!(
            err.code,
            super::super::error::code_of(&Error::Timeout { host: None })
        );
        assert!(counted);
    }

    #[test]
    fn a_call_ended_by_its_host_first_is_counted_by_the_host_only() {
        let calls = AsyncCalls::new(4);
        let mailbox = Mailbox::new().unwrap();
        calls.register(7).unwrap();
        assert!(calls.finish(7, &mailbox, Err(Error::Timeout { host: None }.into())));
        // The call's own task ends after: neither reported nor counted.
        let mut counted = false;
        calls.complete(7, &mailbox, Ok(Err(Error::Timeout { host: None })), |_| {
            counted = true
        });
        assert!(!counted);
        assert!(!calls.finish(7, &mailbox, Err(Error::Timeout { host: None }.into())));
        let mut events = 0;
        while let super::super::mailbox::Taken::Item(_) =
            mailbox.take(Some(Duration::ZERO), |_| false)
        {
            events += 1;
        }
        assert_eq!(events, 1, "one completion per call");
    }
}
