//! `pytribe._native`: the private native half of the `pytribe` package, a
//! PyO3 layer over `tribe::Node` (the Rust API, not the C ABI).
//!
//! Threads: one tokio runtime (two workers) owned by this module runs every
//! node. No Python code ever runs on a runtime worker: handlers run on Python
//! threads of each node's pool (fed through a channel), asyncio futures are
//! completed from tokio's blocking pool through `call_soon_threadsafe`, and
//! log records are queued for a Python thread to drain. Every blocking wait
//! releases the GIL in slices of at most 50 ms and checks for signals.
#![forbid(unsafe_code)]

mod aio;
mod bench;
mod checks;
mod convert;
mod errors;
mod events;
mod handlers;
mod logs;
mod node;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use pyo3::prelude::*;
use tokio::runtime::Runtime;

/// Longest time the GIL stays released before signals are checked.
pub(crate) const SLICE: Duration = Duration::from_millis(50);

/// The process's runtime. Never dropped: after a `fork()` the child gets a
/// new one (see [`_after_fork_in_child`]) and the parent's, whose threads
/// do not exist there, is left alone.
static RUNTIME: Mutex<Option<&'static Runtime>> = Mutex::new(None);

/// Set by the package's atexit hook: from then on nothing calls into Python
/// from a thread of the runtime.
static EXITING: AtomicBool = AtomicBool::new(false);

/// The runtime's worker threads.
const RUNTIME_WORKERS: usize = 2;

/// Threads the first node makes besides the runtime's (its policy and
/// data-dir threads): tried with the runtime's.
const NODE_THREADS: usize = 2;

/// The module's runtime, created on first use.
pub(crate) fn runtime() -> PyResult<&'static Runtime> {
    let mut slot = RUNTIME.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(rt) = *slot {
        return Ok(rt);
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder
        .worker_threads(RUNTIME_WORKERS)
        .thread_name("pytribe-rt")
        .enable_all()
        // Signals are the host's: Python runs its handlers on the main
        // thread, and a daemon that blocks SIGTERM to `sigwait` for it
        // must not have it taken (and the process killed) by ours.
        .on_thread_start(tribe::runtime_build::block_async_signals);
    // Guarded: at the process's thread limit tokio panics (a
    // PanicException no `except Exception` catches, descriptors leaked at
    // each retry) or hangs the caller with the GIL held.
    tribe::runtime_build::block_signals_on_node_threads();
    let rt = tribe::runtime_build::with_signals_blocked(|| {
        tribe::runtime_build::build(builder, RUNTIME_WORKERS, NODE_THREADS)
    })
    .map_err(|e| {
        pyo3::exceptions::PyRuntimeError::new_err(format!("cannot start the runtime: {e}"))
    })?;
    let rt: &'static Runtime = Box::leak(Box::new(rt));
    *slot = Some(rt);
    Ok(rt)
}

/// Called in a child process right after `fork()` (the package registers
/// it with `os.register_at_fork`): the parent's runtime threads do not
/// exist here, so the next use starts a new runtime.
#[pyfunction]
fn _after_fork_in_child() {
    FORKS.fetch_add(1, Ordering::SeqCst);
    *RUNTIME.lock().unwrap_or_else(|p| p.into_inner()) = None;
    aio::after_fork_in_child();
    // The parent's threads counted there do not exist here.
    IN_PYTHON.store(0, Ordering::SeqCst);
    EXITING.store(false, Ordering::SeqCst);
    FORKING.store(false, Ordering::SeqCst);
}

/// Drives `fut` to completion on the runtime with the GIL released, waking
/// every [`SLICE`] to check for signals: a `KeyboardInterrupt` drops `fut`
/// (which abandons what it was doing) and is raised. The future runs on the
/// calling thread: a call writes its request from here, and only its reply
/// crosses from a runtime thread (spawning it instead would first wake a
/// runtime thread to send the request).
pub(crate) fn wait<F>(py: Python<'_>, fut: F) -> PyResult<F::Output>
where
    F: Future + Send,
    F::Output: Send,
{
    let rt = runtime()?;
    let mut fut = Box::pin(fut);
    loop {
        let polled =
            py.detach(|| rt.block_on(async { tokio::time::timeout(SLICE, fut.as_mut()).await }));
        match polled {
            Ok(out) => return Ok(out),
            Err(_) => py.check_signals()?,
        }
    }
}

/// Like [`wait`], but gives up after `limit` (the future is dropped):
/// `None` then.
pub(crate) fn wait_for<F>(py: Python<'_>, fut: F, limit: Duration) -> PyResult<Option<F::Output>>
where
    F: Future + Send,
    F::Output: Send,
{
    let rt = runtime()?;
    let start = std::time::Instant::now();
    let mut fut = Box::pin(fut);
    loop {
        let slice = limit.saturating_sub(start.elapsed()).min(SLICE);
        let polled =
            py.detach(|| rt.block_on(async { tokio::time::timeout(slice, fut.as_mut()).await }));
        match polled {
            Ok(out) => return Ok(Some(out)),
            Err(_) => py.check_signals()?,
        }
        if start.elapsed() >= limit {
            return Ok(None);
        }
    }
}

/// A new random key: base64 of 32 bytes, as `tribe keygen` prints it.
#[pyfunction]
fn keygen() -> String {
    tribe::SecretKey::generate().to_base64()
}

/// The public id (8 hex digits) of a base64 key.
#[pyfunction]
fn key_id(key: &str) -> PyResult<String> {
    let key = tribe::SecretKey::from_base64(key.trim())
        .map_err(|e| crate::errors::value_error(e.to_string()))?;
    Ok(key.id().to_string())
}

/// Forks in this process's line (bumped in each child): a call taken
/// before a fork belongs to the parent, whose sockets a child shares.
static FORKS: AtomicU64 = AtomicU64::new(0);

/// The count of [`FORKS`] now, for an object to tell later whether it was
/// made in this process.
pub(crate) fn forks() -> u64 {
    FORKS.load(Ordering::SeqCst)
}

/// Threads of the module's own (the asyncio completer) attached to the
/// interpreter or on their way in. The exit hook marks the exit and then
/// waits until none is: from then on no such thread is in Python or will
/// enter it. (One that were, when the interpreter finalizes, would be ended
/// by `pthread_exit` inside Rust frames, which aborts the process.)
/// Counted rather than locked: a fork copies a lock that another thread
/// holds (the completer, waiting for the GIL) locked for good, and the
/// child's exit hook then waited forever.
static IN_PYTHON: AtomicUsize = AtomicUsize::new(0);

/// A module thread's turn in Python; `None` once the interpreter exits.
pub(crate) fn enter_python() -> Option<InPython> {
    loop {
        IN_PYTHON.fetch_add(1, Ordering::SeqCst);
        if EXITING.load(Ordering::SeqCst) {
            IN_PYTHON.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        if !FORKING.load(Ordering::SeqCst) {
            return Some(InPython);
        }
        IN_PYTHON.fetch_sub(1, Ordering::SeqCst);
        while FORKING.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_micros(100));
        }
    }
}

/// Set from just before a `fork()` until just after it (the package's
/// at-fork hooks): no module thread enters Python meanwhile. Entering
/// makes the thread's interpreter state under CPython's interpreter-wide
/// lock, without the GIL; a fork at that moment left that lock held in
/// the child, whose own after-fork step then waited for it forever.
static FORKING: AtomicBool = AtomicBool::new(false);

/// Before a `fork()` (registered with `os.register_at_fork`): waits until
/// no module thread is in Python or on its way in, and keeps them out
/// until the fork is done.
#[pyfunction]
fn _before_fork(py: Python<'_>) {
    // Detached: the thread inside may need the GIL to leave.
    py.detach(|| {
        FORKING.store(true, Ordering::SeqCst);
        while IN_PYTHON.load(Ordering::SeqCst) > 0 {
            std::thread::sleep(Duration::from_micros(100));
        }
    });
}

/// After a `fork()`, in the parent: module threads may enter Python again.
#[pyfunction]
fn _after_fork_in_parent() {
    FORKING.store(false, Ordering::SeqCst);
}

/// Held while a module thread may be in Python (see [`enter_python`]).
pub(crate) struct InPython;

impl Drop for InPython {
    fn drop(&mut self) {
        IN_PYTHON.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Marks the interpreter as exiting (called by the package's atexit hook).
#[pyfunction]
fn _set_exiting(py: Python<'_>) {
    // Detached: the thread inside may need the GIL to leave.
    py.detach(|| {
        EXITING.store(true, Ordering::SeqCst);
        while IN_PYTHON.load(Ordering::SeqCst) > 0 {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    });
}

#[pymodule(gil_used = false)]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(keygen, m)?)?;
    m.add_function(wrap_pyfunction!(key_id, m)?)?;
    m.add_function(wrap_pyfunction!(checks::check_name, m)?)?;
    m.add_function(wrap_pyfunction!(checks::check_version, m)?)?;
    m.add_function(wrap_pyfunction!(checks::check_step_request, m)?)?;
    m.add_function(wrap_pyfunction!(_set_exiting, m)?)?;
    m.add_function(wrap_pyfunction!(_after_fork_in_child, m)?)?;
    m.add_function(wrap_pyfunction!(_before_fork, m)?)?;
    m.add_function(wrap_pyfunction!(_after_fork_in_parent, m)?)?;
    m.add_function(wrap_pyfunction!(aio::_complete, m)?)?;
    m.add_function(wrap_pyfunction!(logs::next_log, m)?)?;
    m.add_function(wrap_pyfunction!(logs::set_log_level, m)?)?;
    m.add_function(wrap_pyfunction!(bench::_bench_serve_echo, m)?)?;
    m.add_function(wrap_pyfunction!(bench::_bench_rust_calls, m)?)?;
    m.add_class::<node::NativeConfig>()?;
    m.add_class::<node::NativeNode>()?;
    m.add_class::<events::NativeEvents>()?;
    m.add_class::<handlers::CallInfo>()?;
    m.add_class::<handlers::TakenCall>()?;
    m.add_class::<aio::AbortOnCancel>()?;
    logs::install();
    Ok(())
}
