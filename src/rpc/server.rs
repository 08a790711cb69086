//! The serving side: the handlers this node serves and the artifacts it
//! holds; the loop that answers one call stream is in `call_stream`. A
//! future handler runs in its own task, so one that panics or hangs cannot
//! take the node or the stream down; it is cut at the caller's deadline. A
//! responder call has no task: the thread that answers writes the reply,
//! and the stream's loop answers `"timeout"` for it when its budget runs out
//! (see `running`).

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::Semaphore;

mod call_stream;
mod failed_callers;

use super::responder::{self, NodePlace, Responder, ResponderHandler, Slot};
use super::{CallInfo, Handler, HandlerError, HandlerFuture, RpcCounters, RpcLimits};
use crate::records::PluginKind;

/// Largest artifact chunk sent in one frame.
pub const MAX_CHUNK: u32 = 256 * 1024;
/// A call stream with no complete frame for this long is closed.
pub const CALL_STREAM_IDLE: Duration = Duration::from_secs(120);
/// Longest a handler runs, whatever budget the caller asks for.
pub const MAX_CALL_BUDGET: Duration = Duration::from_secs(300);
/// How long an ending call stream may take to flush what it queued.
const CLOSE_FLUSH: Duration = Duration::from_secs(10);
/// How long a refused call stream's refusal frame may take to write.
const REFUSAL_WRITE: Duration = Duration::from_secs(1);
/// Id of the refusal that answers a whole stream: callers number their
/// calls from 1, so it never names a call.
pub const STREAM_REFUSAL_ID: u64 = 0;

struct Served {
    kind: PluginKind,
    handler: Serving,
}

/// How a served plugin answers.
#[derive(Clone)]
pub enum Serving {
    /// With the future it returns, run in a task of the node.
    Future(Handler),
    /// Through a [`Responder`], from any thread.
    Responder(ResponderHandler),
}

/// What this node serves.
pub struct Server {
    handlers: RwLock<HashMap<(String, String), Served>>,
    artifacts: RwLock<HashMap<[u8; 32], Arc<Vec<u8>>>>,
    serving: Arc<Semaphore>,
    /// Calls not over yet (see [`NodePlace`]): a count, not a bound
    /// (`serving` bounds them), since a call gives `held` back before its
    /// answer is written and `open` after.
    open: Arc<Semaphore>,
    limits: RpcLimits,
    counters: Arc<RpcCounters>,
    stopping: AtomicBool,
    /// Set by [`Server::farewell`].
    farewell: AtomicBool,
    /// Accepted connections in their setup (see [`StreamHeld`]).
    setups: AtomicUsize,
    /// When the server was made: the origin of the two times below, in ms.
    born: std::time::Instant,
    /// When [`Server::farewell`] was said, and when a stream last read a
    /// frame after its goodbye (ms since `born`).
    farewell_at: AtomicU64,
    read_after_goodbye: AtomicU64,
    /// Set when the node stops without a goodbye: every call stream is cut
    /// at once, as a crash would, so callers see their calls lost.
    killed: tokio::sync::watch::Sender<bool>,
    /// Bumped when the node's keys or encryption mode change, or at its
    /// farewell: streams say goodbye and end once their calls are answered.
    epoch: tokio::sync::watch::Sender<u64>,
    streams: Arc<Semaphore>,
    /// The sending sides of the call streams being served.
    outboxes: std::sync::Mutex<Vec<std::sync::Weak<super::outbox::Outbox>>>,
    /// What replies waiting on those streams may hold together.
    unsent: Arc<super::outbox::UnsentBudget>,
    /// Whether this node is in a tribe's live view (set by the node).
    in_tribe: Box<dyn Fn(&str) -> bool + Send + Sync>,
    /// Where accepted call streams run, when not on the node's runtime.
    executor: std::sync::OnceLock<tokio::runtime::Handle>,
    /// Callers declared failed: their streams are cut.
    failed_callers: failed_callers::FailedCallers,
}

/// How long after the farewell, and after the last request a stream read
/// since its goodbye, [`Server::replies_sent`] waits: requests a caller sent
/// before it read the goodbye arrive meanwhile and are refused unrun (its
/// caller moves them), rather than lost when the node cuts its streams. A
/// caller that reads the goodbye ends its stream at once; an idle one that
/// does not (a blocking caller's borrowed stream) is not waited for.
const GOODBYE_SETTLE: Duration = Duration::from_millis(50);

/// An accepted connection in its setup, counted by [`Server::hold_stream`]
/// until dropped.
pub(crate) struct StreamHeld(Arc<Server>);

impl Drop for StreamHeld {
    fn drop(&mut self) {
        self.0.setups.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Server {
    /// A server with nothing registered; `in_tribe` tells whether this node
    /// is in a tribe's live view (a call naming another tribe is refused).
    pub fn new(
        limits: RpcLimits,
        counters: Arc<RpcCounters>,
        in_tribe: Box<dyn Fn(&str) -> bool + Send + Sync>,
    ) -> Server {
        let streams = Arc::new(Semaphore::new(limits.max_streams.max(1)));
        Server {
            handlers: RwLock::new(HashMap::new()),
            artifacts: RwLock::new(HashMap::new()),
            serving: Arc::new(Semaphore::new(limits.max_serving)),
            open: Arc::new(Semaphore::new(Semaphore::MAX_PERMITS)),
            limits,
            counters,
            stopping: AtomicBool::new(false),
            farewell: AtomicBool::new(false),
            setups: AtomicUsize::new(0),
            born: std::time::Instant::now(),
            farewell_at: AtomicU64::new(0),
            read_after_goodbye: AtomicU64::new(0),
            killed: tokio::sync::watch::Sender::new(false),
            epoch: tokio::sync::watch::Sender::new(0),
            streams,
            outboxes: Default::default(),
            unsent: super::outbox::UnsentBudget::new(
                super::outbox::NODE_UNSENT_BUDGET,
                super::outbox::SHARE_PAST_BUDGET,
            ),
            in_tribe,
            executor: std::sync::OnceLock::new(),
            failed_callers: Default::default(),
        }
    }

    /// Runs accepted call streams on `handle` from now on.
    pub(crate) fn set_executor(&self, handle: tokio::runtime::Handle) {
        let _ = self.executor.set(handle);
    }

    /// Where accepted call streams run, when not on the node's runtime.
    pub(crate) fn executor(&self) -> Option<&tokio::runtime::Handle> {
        self.executor.get()
    }

    /// Calls served here whose handler still holds its place: one at work,
    /// or a responder held unanswered, also once the call is over (its
    /// budget ran out, its caller gave up). At `max_serving` new calls are
    /// refused as overloaded, so this is the number to watch, not the calls
    /// still waiting for an answer.
    pub fn serving(&self) -> usize {
        self.limits
            .max_serving
            .saturating_sub(self.serving.available_permits())
    }

    /// Holds an accepted connection among those [`Server::replies_sent`]
    /// waits for after the farewell, until its call stream is served (a
    /// caller whose setup is done sends its requests at once).
    pub(crate) fn hold_stream(self: &Arc<Self>) -> StreamHeld {
        self.setups.fetch_add(1, Ordering::Relaxed);
        StreamHeld(self.clone())
    }

    fn ms_since_born(&self) -> u64 {
        u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// A stream read a frame after its goodbye (see [`GOODBYE_SETTLE`]).
    pub(super) fn read_after_goodbye(&self) {
        self.read_after_goodbye
            .fetch_max(self.ms_since_born(), Ordering::Relaxed);
    }

    /// Whether the farewell, if said, has settled: no connection is in its
    /// setup, and no stream has read a request for [`GOODBYE_SETTLE`].
    fn farewell_settled(&self) -> bool {
        if !self.farewell.load(Ordering::Relaxed) {
            return true;
        }
        let last = self
            .farewell_at
            .load(Ordering::Relaxed)
            .max(self.read_after_goodbye.load(Ordering::Relaxed));
        self.setups.load(Ordering::Relaxed) == 0
            && self.ms_since_born().saturating_sub(last) >= GOODBYE_SETTLE.as_millis() as u64
    }

    /// Call streams accepted and open now.
    pub fn streams_accepted(&self) -> usize {
        self.limits
            .max_streams
            .max(1)
            .saturating_sub(self.streams.available_permits())
    }

    /// The bounds in force.
    pub fn limits(&self) -> &RpcLimits {
        &self.limits
    }

    /// Registers a handler; replaces one of the same name and version.
    pub fn register(&self, name: &str, version: &str, kind: PluginKind, handler: Serving) {
        self.handlers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert((name.into(), version.into()), Served { kind, handler });
    }

    /// Drops every handler: the node has stopped.
    pub(crate) fn forget_handlers(&self) {
        // Dropped outside the lock: a handler's drop may do anything.
        let gone = std::mem::take(&mut *self.handlers.write().unwrap_or_else(|p| p.into_inner()));
        drop(gone);
    }

    /// Drops a handler; false when there was none.
    pub fn unregister(&self, name: &str, version: &str) -> bool {
        self.handlers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(name.to_string(), version.to_string()))
            .is_some()
    }

    /// The handler for `name` (and `version`, or any) of `kind`.
    pub fn lookup(
        &self,
        name: &str,
        version: Option<&str>,
        kind: PluginKind,
    ) -> Option<(String, Serving)> {
        let handlers = self.handlers.read().unwrap_or_else(|p| p.into_inner());
        handlers
            .iter()
            .filter(|((n, v), s)| {
                n == name && s.kind == kind && version.is_none_or(|want| want == v)
            })
            .max_by(|a, b| a.0 .1.cmp(&b.0 .1))
            .map(|((_, v), s)| (v.clone(), s.handler.clone()))
    }

    /// Keeps an artifact to hand out to members that fetch it.
    pub fn hold_artifact(&self, sha256: [u8; 32], bytes: Arc<Vec<u8>>) {
        self.artifacts
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(sha256, bytes);
    }

    /// The artifacts this node holds, with their sizes.
    pub(crate) fn held_artifacts(&self) -> Vec<([u8; 32], u64)> {
        self.artifacts
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(sha, bytes)| (*sha, bytes.len() as u64))
            .collect()
    }

    /// Lets go of an artifact's bytes.
    pub(crate) fn release_artifact(&self, sha256: &[u8; 32]) {
        self.artifacts
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(sha256);
    }

    /// An artifact this node holds.
    pub fn artifact(&self, sha256: &[u8; 32]) -> Option<Arc<Vec<u8>>> {
        self.artifacts
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(sha256)
            .cloned()
    }

    /// Refuses new calls from now on: callers move them to another host.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    /// Ends every call stream after a goodbye, once its calls are answered
    /// (see `call_stream`); a stream that starts later says goodbye at
    /// once. For a stopping node whose listener is closed: callers that
    /// open a new stream then find nobody, rather than a socket that waits
    /// to be accepted and is reset.
    pub fn farewell(&self) {
        self.farewell_at
            .store(self.ms_since_born(), Ordering::Relaxed);
        self.farewell.store(true, Ordering::Relaxed);
        self.epoch.send_modify(|e| *e += 1);
    }

    /// Refuses new calls and cuts every call stream now.
    pub fn kill(&self) {
        self.stopping.store(true, Ordering::Relaxed);
        self.killed.send_replace(true);
        // Their streams are cut on their own tasks, a moment later: the
        // responders of the calls in flight read as abandoned (and take no
        // answer) from now on.
        for outbox in self
            .outboxes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter_map(std::sync::Weak::upgrade)
        {
            outbox.close();
        }
    }

    /// Cuts the call streams member `name` opened to this node, which the
    /// membership declared failed: the calls they carry have no caller left
    /// (they count as cancelled, and their handlers see it).
    pub(crate) fn caller_failed(&self, name: &str) {
        self.failed_callers.fail(name);
    }

    /// Ends every call stream after a goodbye, once its calls are answered:
    /// the node's security changed.
    pub fn reset_streams(&self) {
        self.epoch.send_modify(|e| *e += 1);
    }

    /// Ends when the node is killed (aborted); pending for ever otherwise.
    pub(crate) async fn killed(&self) {
        let mut killed = self.killed.subscribe();
        if killed.wait_for(|k| *k).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Ends once every call read has been answered (or is over without an
    /// answer: its caller gave up, its budget ran out), every reply
    /// written (or its stream cut), and, after the farewell, every accepted
    /// connection is past its setup and the streams have read what their
    /// callers sent before they heard the goodbye (see [`GOODBYE_SETTLE`]).
    pub(crate) async fn replies_sent(&self) {
        /// How often the streams are looked at: answers come from threads
        /// that wake nobody here.
        const LOOK: Duration = Duration::from_millis(5);
        while !self.quiet() {
            tokio::time::sleep(LOOK).await;
        }
    }

    /// [`Server::replies_sent`] without waiting for the calls still
    /// unanswered: a host that gave up on its handlers.
    pub(crate) async fn given_replies_sent(&self) {
        const LOOK: Duration = Duration::from_millis(5);
        while !self.flushed() {
            tokio::time::sleep(LOOK).await;
        }
    }

    /// No call is being served (none that a handler could still answer:
    /// one its caller gave up on is over), every stream's replies are
    /// written, and the farewell, if said, has settled.
    fn quiet(&self) -> bool {
        self.open.available_permits() >= Semaphore::MAX_PERMITS && self.flushed()
    }

    /// Every stream's replies are written, and the farewell, if said, has
    /// settled.
    fn flushed(&self) -> bool {
        self.farewell_settled()
            && self
                .outboxes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .filter_map(std::sync::Weak::upgrade)
                .all(|o| o.is_flushed())
    }

    /// Keeps `outbox` for [`Server::replies_sent`].
    fn track(&self, outbox: &Arc<super::outbox::Outbox>) {
        outbox.share_budget(self.unsent.clone());
        let mut kept = self.outboxes.lock().unwrap_or_else(|p| p.into_inner());
        kept.retain(|o| o.strong_count() > 0);
        kept.push(Arc::downgrade(outbox));
    }

    /// Whether the server refuses new calls.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    /// Takes a serving slot, or `None` at the bound.
    pub(crate) fn try_slot(&self) -> Option<NodePlace> {
        let held = self.serving.clone().try_acquire_owned().ok()?;
        // Never short: `open` counts (see `NodePlace`).
        let open = self.open.clone().try_acquire_owned().ok()?;
        Some(NodePlace { open, held })
    }

    /// Runs one handler within `info.budget`. A panic, an overrun or an
    /// oversized reply becomes an error; a late reply is dropped.
    pub async fn run_handler(
        &self,
        handler: Handler,
        info: CallInfo,
        payload: Vec<u8>,
    ) -> Result<Vec<u8>, HandlerError> {
        let budget = info.budget;
        let panicked = |counters: &RpcCounters| {
            RpcCounters::bump(&counters.panics);
            HandlerError::new("panic", "the handler panicked")
        };
        // Building the future runs user code too.
        let future = match std::panic::catch_unwind(AssertUnwindSafe(|| handler(info, payload))) {
            Ok(f) => f,
            Err(_) => return Err(panicked(&self.counters)),
        };
        // The handler runs in the calling task (no extra hop between
        // threads); a panic is caught here and an overrun drops the future.
        let guarded = futures_util::FutureExt::catch_unwind(AssertUnwindSafe(Contained(Some(future))));
        let result = match tokio::time::timeout(budget, guarded).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(panicked(&self.counters)),
            Err(_) => Err(responder::overrun(budget)),
        };
        responder::bounded(result, self.limits.max_payload, &self.counters)
    }

    /// Hands a call to a responder handler, which returns at once; a panic
    /// in it answers the call `"panic"`.
    pub(crate) fn start_responder(
        &self,
        handler: &ResponderHandler,
        info: CallInfo,
        payload: Vec<u8>,
        responder: Responder,
        slot: &Slot,
    ) {
        if std::panic::catch_unwind(AssertUnwindSafe(|| handler(info, payload, responder))).is_err()
        {
            slot.panicked();
        }
    }
}

/// A handler's future whose drop (at its budget, or when the call is
/// dropped) cannot unwind into the task that runs it: on a local call that
/// is the caller's own task, which a panicking `Drop` of the handler's
/// state took down.
struct Contained(Option<HandlerFuture>);

impl std::future::Future for Contained {
    type Output = Result<Vec<u8>, HandlerError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        match self.0.as_mut() {
            Some(future) => future.as_mut().poll(cx),
            None => std::task::Poll::Pending,
        }
    }
}

impl Drop for Contained {
    fn drop(&mut self) {
        if let Some(future) = self.0.take() {
            let _ = std::panic::catch_unwind(AssertUnwindSafe(move || drop(future)));
        }
    }
}
