//! The node handle (`tribe_node`): start, shutdown, abort, free. Each node
//! owns a small tokio runtime, so a host needs none and freeing the node
//! stops every thread it started. Its commands are in `commands`, its JSON
//! snapshots in `snapshot`.

use std::ffi::{c_char, c_int, CString};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::cast;
use super::config::TribeConfig;
use super::error::FfiError;
use super::event::Body;
use super::host_io::HostIo;
use super::mailbox::{Class, Mailbox, Taken};
use super::owner::Owner;
use crate::spin::Spun;
use crate::{Error, Node};

/// How long a free waits for the call streams to flush their replies.
const FREE_GRACE: std::time::Duration = std::time::Duration::from_secs(2);
/// How long a stop waits for the calls it aborted to end.
const SETTLE_GRACE: std::time::Duration = std::time::Duration::from_millis(200);

/// A running node.
pub struct TribeNode {
    pub(super) node: Node,
    runtime: Option<tokio::runtime::Runtime>,
    /// The runtime of the node's call streams, driven by host threads that
    /// wait for events (see `host_io`).
    pub(super) host_io: Arc<HostIo>,
    pub(super) mailbox: Arc<Mailbox<Body>>,
    name: CString,
    addr: CString,
    /// Set when a shutdown or abort begins; wakes blocked calls.
    pub(super) closing: watch::Sender<bool>,
    /// Whether the node has stopped (held while it stops).
    stopped: Mutex<bool>,
    /// Aborted, also after a graceful stop: the free waits for no call
    /// still unanswered.
    cut: std::sync::atomic::AtomicBool,
    /// Where log records go, when the host asked for them.
    log_sink: Option<super::log::Sink>,
    /// Asynchronous calls not finished yet.
    pub(super) calls: Arc<super::call::AsyncCalls>,
    /// The largest payload a call may carry (`max_payload`).
    pub(super) max_payload: usize,
    pub(super) next_call: AtomicU64,
    /// The targets the host last called.
    pub(super) targets: super::targets::Targets,
    /// The process that started the node (a forked child may not use it).
    pub(super) owner: Owner,
    /// How long a host thread looks for events before it blocks.
    pub(super) wait_spin: crate::spin::SpinWindow,
}

impl TribeNode {
    pub(super) fn runtime(&self) -> &tokio::runtime::Runtime {
        self.runtime
            .as_ref()
            .expect("the runtime lives until the node is freed")
    }

    /// Runs a future on the node's runtime from the host's thread.
    pub(super) fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        super::log::with_sink(self.log_sink.as_ref(), || self.runtime().block_on(f))
    }

    /// Takes up to `max` events for a host thread, waiting up to `timeout`
    /// (`None`: until one comes or the node stops). A thread that waits
    /// drives the node's call streams meanwhile.
    pub(super) fn take_events(
        &self,
        timeout: Option<std::time::Duration>,
        max: usize,
    ) -> Taken<Vec<Body>> {
        if timeout == Some(std::time::Duration::ZERO) {
            return self.mailbox.take_many(timeout, max, Body::is_droppable);
        }
        let begun = std::time::Instant::now();
        // While another host thread drives the call streams, a turn here
        // would do nothing but contend with it for their state.
        let spun = if self.host_io.host_drives() {
            Spun::Busy
        } else {
            let limit = timeout.unwrap_or(std::time::Duration::MAX);
            self.wait_spin.spin(limit, || match self.poll_events(max) {
                Taken::Empty => None,
                taken => Some(taken),
            })
        };
        let adapt = !matches!(spun, Spun::Busy);
        if let Spun::Found(taken) = spun {
            self.wait_spin.waited(begun.elapsed());
            return taken;
        }
        let wait = self.mailbox.take_many_async(max, Body::is_droppable);
        let taken = super::log::with_sink(self.log_sink.as_ref(), || {
            self.host_io.drive(async {
                match timeout {
                    None => wait.await,
                    Some(t) => tokio::time::timeout(t.saturating_sub(begun.elapsed()), wait)
                        .await
                        .unwrap_or(Taken::Empty),
                }
            })
        });
        if adapt {
            self.wait_spin.waited(begun.elapsed());
        }
        taken
    }

    /// Takes up to `max` events queued after one turn of the node's call
    /// streams on this thread (see [`HostIo::turn`]), without blocking.
    pub(super) fn poll_events(&self, max: usize) -> Taken<Vec<Body>> {
        super::log::with_sink(self.log_sink.as_ref(), || self.host_io.turn());
        self.mailbox
            .take_many(Some(std::time::Duration::ZERO), max, Body::is_droppable)
    }

    /// Where the node's log records go, when the host asked for them.
    pub(super) fn log_sink(&self) -> Option<&super::log::Sink> {
        self.log_sink.as_ref()
    }

    /// Refuses work once the node is stopping.
    pub(super) fn live(&self) -> Result<&Node, FfiError> {
        if *self.closing.borrow() {
            return Err(Error::ShuttingDown.into());
        }
        Ok(&self.node)
    }

    /// Stops once; the first graceful stop returns an I/O error when the
    /// data dir did not take the node's last state (stopped all the same).
    fn stop(&self, graceful: bool) -> Result<(), Error> {
        use std::sync::atomic::Ordering;
        self.closing.send_replace(true);
        let mut stopped = self.stopped.lock().unwrap_or_else(|p| p.into_inner());
        if !graceful {
            // After a graceful stop (a host's second signal, or a host
            // that gave up on its handlers): the free waits for no call
            // still unanswered.
            self.cut.store(true, Ordering::SeqCst);
        }
        if *stopped {
            return Ok(());
        }
        let mut left = Ok(());
        if graceful {
            left = self.block_on(self.node.shutdown());
        } else {
            self.block_on(self.node.abort());
        }
        self.calls.close(&self.mailbox);
        self.settle_aborted_calls();
        *stopped = true;
        match left {
            Err(unsaved @ Error::Io(_)) => Err(unsaved),
            _ => Ok(()),
        }
    }

    /// The asynchronous calls a stop aborted end (their places given
    /// back) when the call streams' runtime next runs their tasks: it runs them here, so that the counters read after the
    /// stop (the final ones) show them ended.
    fn settle_aborted_calls(&self) {
        let node = &self.node;
        super::log::with_sink(self.log_sink.as_ref(), || {
            self.host_io.drive(async {
                let settled = async {
                    while node.rpc_stats().in_flight > 0 {
                        // Sleeping drives the runtime (or lets the thread
                        // driving it run) without spinning.
                        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                    }
                };
                // Blocking calls of other threads end on those threads.
                let _ = tokio::time::timeout(SETTLE_GRACE, settled).await;
            })
        });
    }
}

impl Drop for TribeNode {
    fn drop(&mut self) {
        let graceful = *self.stopped.lock().unwrap_or_else(|p| p.into_inner());
        let cut = self.cut.load(std::sync::atomic::Ordering::SeqCst);
        if !graceful {
            let _ = self.stop(false);
        }
        // After a graceful stop the call streams answer what they read and
        // flush it; dropping their runtime first would lose replies the
        // host gave just before the free. An abort after it waits for the
        // replies given only.
        if graceful {
            super::log::with_sink(self.log_sink.as_ref(), || {
                self.host_io.drive(async {
                    if cut {
                        let _ =
                            tokio::time::timeout(FREE_GRACE, self.node.given_replies_sent()).await;
                    } else {
                        let _ = tokio::time::timeout(FREE_GRACE, self.node.calls_drained()).await;
                    }
                })
            });
        }
        // Then every call stream is cut, also after a graceful stop: in a
        // poll group the runtime, and the streams' tasks with their queued
        // calls, outlive this node.
        self.block_on(self.node.abort());
        // In a poll group the runtime stops with its last member.
        if let Some(io) = Arc::get_mut(&mut self.host_io) {
            io.shut_down();
        }
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(std::time::Duration::from_secs(2));
        }
    }
}

/// The asynchronous signals: all but faults, which stay deliverable
/// (blocking them would kill the process on a fault).
fn async_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigfillset initialises it before the
    // sigdelset calls read it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        for sig in [
            libc::SIGSEGV,
            libc::SIGBUS,
            libc::SIGFPE,
            libc::SIGILL,
            libc::SIGTRAP,
            libc::SIGABRT,
        ] {
            libc::sigdelset(&mut set, sig);
        }
        set
    }
}

/// Keeps the host's signals off libtribe's threads, so process-directed
/// signals (SIGINT, SIGTERM, SIGCHLD, ...) reach the host's own threads.
pub(crate) fn block_async_signals() {
    let set = async_signals();
    // SAFETY: only the calling thread's mask changes; `set` is initialised.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut()) };
}

/// Runs `f` with asynchronous signals blocked on this (host) thread, so
/// threads it creates start with them blocked; the mask is restored after.
pub(crate) fn with_signals_blocked<T>(f: impl FnOnce() -> T) -> T {
    /// Puts the host thread's mask back also when `f` panics (the panic
    /// is caught further up and the host goes on with this thread).
    struct Restore(libc::sigset_t);
    impl Drop for Restore {
        fn drop(&mut self) {
            // SAFETY: restores a mask saved on this same thread (the guard
            // never leaves the function that made it).
            unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.0, std::ptr::null_mut()) };
        }
    }
    let set = async_signals();
    // SAFETY: sigset_t is plain data, filled in by pthread_sigmask.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: only the calling thread's mask changes; both sets are valid.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &set, &mut old) };
    let _restore = Restore(old);
    f()
}

/// The node behind a handle, refused when NULL or in a forked child.
pub(super) fn node_handle<'a>(node: *const TribeNode) -> Result<&'a TribeNode, FfiError> {
    let node = cast::handle(node, "node")?;
    node.owner.check("the node")?;
    Ok(node)
}

/// Starts a node from `cfg`: builds its runtime, binds the sockets, starts
/// gossip and joins through the seeds (in the background: it does not wait
/// for peers; `TRIBE_EVENT_JOINED` tells when it has one, and tribes made
/// elsewhere are known after the first sync, so a call made before may be
/// `TRIBE_UNKNOWN_TRIBE` or `TRIBE_NO_PROVIDER`). libtribe's threads block
/// asynchronous signals, so the host's threads receive them. Blocks for the bind only (milliseconds; longer when a data
/// dir is read). `cfg` is consumed on every path, success or not: later use
/// of it returns `TRIBE_CONSUMED`, and it must still be freed with
/// `tribe_config_free`. `*out` receives an owned node: stop it with
/// `tribe_node_shutdown` (or `tribe_node_abort`), then free it with
/// `tribe_node_free`. Every descriptor libtribe opens belongs to one node
/// (or poll group) and is closed by its free: none is process-wide, so a
/// daemon may close every descriptor after the free and start nodes again
/// (but a name lookup's, which only the system resolver ends: see the top
/// of this header).
#[no_mangle]
pub extern "C" fn tribe_node_start(
    cfg: *mut TribeConfig,
    out: *mut *mut TribeNode,
    err: *mut *mut FfiError,
) -> u32 {
    ffi_call!(err, [out], {
        // The config is consumed on every path, a NULL `out` included.
        let taken = cast::handle_mut(cfg, "config")?.take();
        let out = cast::out(out, "out")?;
        let super::config::StartPlan {
            config,
            worker_threads: threads,
            log_level,
            group,
            warnings,
        } = taken?;
        if let Some(group) = &group {
            // Its runtime's epoll set is shared with the parent, whose
            // threads would read (and misread) the child's readiness.
            if group.owner.is_elsewhere() {
                return Err(FfiError::new(
                    super::error::TRIBE_FORKED,
                    "the config's poll group was made before this process was forked, and \
                     its runtime runs in the parent: make a group in this process and give \
                     it to a new config",
                ));
            }
        }
        let max_inflight = config.rpc.max_inflight;
        let max_payload = config.rpc.max_payload;
        let notify = group.as_ref().map(|g| g.ready.clone());
        let mailbox = Arc::new(Mailbox::in_group(notify).map_err(|e| {
            Error::Io(format!(
                "cannot make the node's event queue (its eventfd): {e}"
            ))
        })?);
        let log_sink = (log_level > 0).then(|| {
            super::log::enable(log_level);
            super::log::Sink::new(&mailbox, log_level)
        });
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder
            .worker_threads(threads)
            .thread_name("tribe-worker")
            .enable_all();
        let sink = log_sink.clone();
        crate::blocking::set_inherit(super::log::inherit_sink);
        builder.on_thread_start(move || {
            block_async_signals();
            if let Some(sink) = &sink {
                super::log::set_thread_sink(sink.clone());
            }
        });
        // Threads made now (workers, blocking threads of the start) take
        // the blocked mask from this thread; later ones block it themselves.
        let sink = log_sink.clone();
        let (runtime, host_io, node) = with_signals_blocked(|| {
            let host_io = match &group {
                Some(group) => group.io.clone(),
                None => Arc::new(
                    HostIo::new(move || {
                        block_async_signals();
                        if let Some(sink) = &sink {
                            super::log::set_thread_sink(sink.clone());
                        }
                    })
                    .map_err(Error::from)?,
                ),
            };
            let runtime = crate::runtime_build::build(builder, threads, START_THREADS)
                .map_err(|e| FfiError::from(Error::Io(e.to_string())))?;
            let node = super::log::with_sink(log_sink.as_ref(), || {
                let node = runtime.block_on(Node::start(config))?;
                for warning in &warnings {
                    tracing::warn!("{warning}");
                }
                Ok::<_, Error>(node)
            })?;
            Ok::<_, FfiError>((runtime, host_io, node))
        })?;
        node.set_call_executor(host_io.handle().clone());
        let mut events = node.events();
        let forward = mailbox.clone();
        runtime.spawn(async move {
            while let Some(event) = events.next().await {
                if forward.push(Body::Node(event), Class::Droppable).is_err() {
                    break;
                }
            }
        });
        let handle = TribeNode {
            name: CString::new(node.name()).unwrap_or_default(),
            addr: CString::new(node.addr().to_string()).unwrap_or_default(),
            node,
            runtime: Some(runtime),
            host_io,
            mailbox,
            closing: watch::channel(false).0,
            stopped: Mutex::new(false),
            cut: std::sync::atomic::AtomicBool::new(false),
            log_sink,
            calls: Arc::new(super::call::AsyncCalls::new(max_inflight)),
            max_payload,
            targets: Default::default(),
            next_call: AtomicU64::new(1),
            owner: Owner::here(),
            wait_spin: Default::default(),
        };
        cast::write(out, cast::into_handle(handle));
        Ok(())
    })
}

/// Threads a node keeps besides the runtime's workers: the policy thread
/// and the data-dir writer (made once the thread building the runtime has
/// ended).
const START_THREADS: usize = 2;

/// Leaves the cluster gracefully (peers record the node as *left*) and
/// stops: blocked `tribe_node_call`s and `tribe_node_next_event`s on other
/// threads return `TRIBE_SHUTTING_DOWN`, pending asynchronous calls finish
/// with `TRIBE_SHUTTING_DOWN` events, and every later command returns
/// `TRIBE_SHUTTING_DOWN`. Idempotent: a second call (also from another
/// thread) returns `TRIBE_OK` once the first has finished. Blocks while the
/// goodbye is sent (well under a second on a LAN, 1.5 s at most when peers
/// do not answer it, as when they stop at the same time) and, with a data
/// dir, while the node's last state is written (`TRIBE_IO` when the data
/// dir did not take it: a full disk, or a hung one waited for 5 s; the node
/// is stopped all the same, and a restart from the data dir comes back
/// with what it last saved). Calls to
/// this node's plugins are refused from the start (callers move them to
/// another host); those it already runs are still answered, and its call
/// streams close once they are, or at `tribe_node_free` (whose callers
/// then get `TRIBE_DISCONNECTED`, and whose responders turn abandoned).
/// Not async-signal-safe (it takes locks, allocates and waits for the
/// node's threads), nor is any other libtribe function: on SIGTERM, have
/// the handler write to a self-pipe (or take the signal from a `signalfd`
/// instead of a handler), and call this from the ordinary thread that
/// reads it.
#[no_mangle]
pub extern "C" fn tribe_node_shutdown(node: *const TribeNode, err: *mut *mut FfiError) -> u32 {
    ffi_call!(err, { Ok(node_handle(node)?.stop(true)?) })
}

/// Stops at once without a goodbye, as a crash would (peers record the node
/// as *failed*); otherwise like `tribe_node_shutdown`. Idempotent. After
/// (or during) a `tribe_node_shutdown`, as a host's second signal or a host
/// that gave up on its handlers, it makes `tribe_node_free` wait only for
/// the replies already given to be sent, not for calls still unanswered
/// (their callers get `TRIBE_DISCONNECTED` at the free). During a
/// `tribe_node_shutdown` of another thread it does not cut the goodbye
/// short: it returns when that shutdown does (1.5 s at most, plus the
/// data dir's last write).
#[no_mangle]
pub extern "C" fn tribe_node_abort(node: *const TribeNode, err: *mut *mut FfiError) -> u32 {
    ffi_call!(err, { Ok(node_handle(node)?.stop(false)?) })
}

/// Frees a node: aborts it if it was not stopped, ends its threads and
/// closes its sockets and event fd. After `tribe_node_shutdown` it
/// first lets the call streams send the replies given meanwhile (answer
/// every responder before the free), up to 2 s, and waits for no call
/// whose caller gave up on it (its timeout passed, it was cancelled, its
/// stream ended; after a `tribe_node_abort`, for no call still
/// unanswered); the threads get up to 2 s more. No other thread may use
/// the node during or after this call. NULL is ignored; in a
/// process forked from the one that started the node, nothing is released
/// (see fork() above).
#[no_mangle]
pub extern "C" fn tribe_node_free(node: *mut TribeNode) {
    ffi_infallible!((), { cast::free_owned_handle(node, |n| &n.owner) })
}

/// The node's name. Borrowed: valid until `tribe_node_free`. NULL for NULL.
#[no_mangle]
pub extern "C" fn tribe_node_name(node: *const TribeNode) -> *const c_char {
    cast::field_str(node, |n| &n.name)
}

/// The advertised address, `ip:port` with the bound port. Borrowed: valid
/// until `tribe_node_free`. NULL for NULL.
#[no_mangle]
pub extern "C" fn tribe_node_addr(node: *const TribeNode) -> *const c_char {
    cast::field_str(node, |n| &n.addr)
}

/// A file descriptor that is readable while events wait for
/// `tribe_node_next_event`, and stays readable once the node has stopped.
/// It is a level: with `EPOLLET`, take events until none is left (a wait
/// of 0 ms that gives none) before waiting again, as an event queued while
/// others wait makes no new edge. Owned by the node (do not read, write or
/// close it); valid until `tribe_node_free`. -1 for NULL, and in a forked
/// child.
#[no_mangle]
pub extern "C" fn tribe_node_event_fd(node: *const TribeNode) -> c_int {
    ffi_infallible!(-1, { here(node).map_or(-1, |n| n.mailbox.fd()) })
}

/// Node events dropped because the host read them too slowly (more than
/// 65,536 waiting). 0 for NULL, and in a forked child.
#[no_mangle]
pub extern "C" fn tribe_node_events_dropped(node: *const TribeNode) -> u64 {
    ffi_infallible!(0, { here(node).map_or(0, |n| n.mailbox.dropped()) })
}

/// The node, unless NULL or made by the process this one was forked from
/// (whose locks a child may have inherited held: it must not take them).
fn here<'a>(node: *const TribeNode) -> Option<&'a TribeNode> {
    cast::opt_ref(node).filter(|n| !n.owner.is_elsewhere())
}

/// Asks for the next asynchronous call id.
pub(super) fn next_call_id(node: &TribeNode) -> u64 {
    node.next_call.fetch_add(1, Ordering::Relaxed)
}
