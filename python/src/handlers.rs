//! Python handlers of served plugins. A call reaches the Rust handler on a
//! runtime worker, which only queues a job with the call's responder; the
//! Python threads of the node's pool take jobs from the queue
//! ([`take_call`]), run the handler, and answer through the responder,
//! which writes the reply to the caller's stream from the pool thread. A
//! handler never runs on a runtime worker.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyByteArray, PyBytes, PyDict};
use tribe::HandlerError;

/// The responder of a call running in a handler, shared with its
/// `CallInfo` so the handler can ask whether the call was abandoned.
type Running = Arc<Mutex<Option<tribe::Responder>>>;

/// What a handler learns about a call.
#[pyclass(frozen, module = "pytribe._native", eq)]
pub(crate) struct CallInfo {
    /// Calling node.
    #[pyo3(get)]
    caller: String,
    /// Tribe the call came through (also for a call this node made to itself
    /// through a tribe; empty only for a task step that names no tribe).
    #[pyo3(get)]
    tribe: String,
    /// Plugin name.
    #[pyo3(get)]
    plugin: String,
    /// Plugin version.
    #[pyo3(get)]
    version: String,
    /// When the caller stops waiting, on the `time.monotonic()` clock.
    #[pyo3(get)]
    deadline: f64,
    /// The call's responder while the handler runs (none for a `CallInfo`
    /// made in Python).
    running: Option<Running>,
}

impl PartialEq for CallInfo {
    fn eq(&self, other: &Self) -> bool {
        (
            &self.caller,
            &self.tribe,
            &self.plugin,
            &self.version,
            self.deadline,
        ) == (
            &other.caller,
            &other.tribe,
            &other.plugin,
            &other.version,
            other.deadline,
        )
    }
}

#[pymethods]
impl CallInfo {
    /// Made by hand (tests of a handler): each argument is checked and
    /// named, as the node's methods name theirs.
    #[new]
    fn new(
        caller: &Bound<'_, PyAny>,
        tribe: &Bound<'_, PyAny>,
        plugin: &Bound<'_, PyAny>,
        version: &Bound<'_, PyAny>,
        deadline: &Bound<'_, PyAny>,
    ) -> PyResult<Self> {
        let deadline_value = if deadline.is_instance_of::<pyo3::types::PyBool>() {
            None
        } else {
            deadline.extract::<f64>().ok()
        };
        let deadline = match deadline_value {
            Some(d) if d.is_nan() => {
                return Err(crate::errors::value_error(
                    "CallInfo: deadline must be a number of seconds, not nan",
                ))
            }
            Some(d) => d,
            None => {
                return Err(pyo3::exceptions::PyTypeError::new_err(format!(
                    "CallInfo: deadline must be a float, not {}",
                    type_name(deadline)
                )))
            }
        };
        Ok(CallInfo {
            caller: text_argument("caller", caller)?,
            tribe: text_argument("tribe", tribe)?,
            plugin: text_argument("plugin", plugin)?,
            version: text_argument("version", version)?,
            deadline,
            running: None,
        })
    }

    /// Whether the call is over without this handler's answer: its caller
    /// cancelled it (or gave up) or its budget ran out (the caller was
    /// answered "timeout"). A long handler may check it and stop early;
    /// its answer is dropped.
    fn abandoned(&self, py: Python<'_>) -> PyResult<bool> {
        match &self.running {
            // Asked of the call itself, as C's `tribe_responder_is_abandoned`:
            // this side's reading of the deadline may come before the call
            // is over, and an answer given then still reaches the caller.
            Some(r) => Ok(r
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
                .is_none_or(tribe::Responder::is_abandoned)),
            // A `CallInfo` made in Python has only its deadline.
            None => Ok(monotonic(py)? >= self.deadline),
        }
    }

    /// Seconds left before the deadline (never negative).
    fn remaining(&self, py: Python<'_>) -> PyResult<f64> {
        Ok((self.deadline - monotonic(py)?).max(0.0))
    }

    // A view of one live call: a copy or a pickle could not follow it.
    fn __copy__(&self) -> PyResult<()> {
        Err(not_copied())
    }

    fn __deepcopy__(&self, memo: &Bound<'_, PyAny>) -> PyResult<()> {
        let _ = memo;
        Err(not_copied())
    }

    fn __reduce__(&self) -> PyResult<()> {
        Err(not_copied())
    }

    fn __repr__(&self) -> String {
        format!(
            "CallInfo(caller={:?}, tribe={:?}, plugin={:?}, version={:?}, deadline={:?})",
            self.caller, self.tribe, self.plugin, self.version, self.deadline
        )
    }
}

fn type_name(value: &Bound<'_, PyAny>) -> String {
    value
        .get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into())
}

/// A `str` argument of `CallInfo(...)`, as UTF-8.
fn text_argument(name: &str, value: &Bound<'_, PyAny>) -> PyResult<String> {
    let Ok(text) = value.cast::<pyo3::types::PyString>() else {
        return Err(pyo3::exceptions::PyTypeError::new_err(format!(
            "CallInfo: {name} must be str, not {}",
            type_name(value)
        )));
    };
    text.to_cow().map(|t| t.into_owned()).map_err(|_| {
        crate::errors::value_error(format!(
            "CallInfo: {name} holds text that UTF-8 cannot encode (a lone surrogate)"
        ))
    })
}

fn not_copied() -> PyErr {
    pyo3::exceptions::PyTypeError::new_err("pytribe.CallInfo cannot be copied or pickled")
}

static MONOTONIC: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static HANDLER_ERROR: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static LOGGER: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

fn monotonic(py: Python<'_>) -> PyResult<f64> {
    MONOTONIC
        .import(py, "time", "monotonic")?
        .call0()?
        .extract::<f64>()
}

/// One call waiting for a pool thread.
pub(crate) struct Job {
    handler: Arc<Py<PyAny>>,
    info: tribe::CallInfo,
    queued: Instant,
    payload: Vec<u8>,
    /// Taken by the answer; a job dropped unrun tells its caller that this
    /// host is stopping, and the caller moves the call to another host.
    responder: Option<tribe::Responder>,
}

impl Drop for Job {
    fn drop(&mut self) {
        if let Some(r) = self.responder.take() {
            r.refuse_stopping();
        }
    }
}

/// What pool threads take from the queue.
pub(crate) enum Work {
    Call(Job),
    /// One pool thread leaves.
    Stop,
}

/// A node's handler pool: the queue and whether it still takes calls.
pub(crate) struct Pool {
    pub(crate) tx: Sender<Work>,
    pub(crate) rx: Receiver<Work>,
    pub(crate) closed: Arc<AtomicBool>,
    /// The node's name, for the records its handlers' failures log.
    node: Arc<str>,
    /// [`crate::forks`] when the pool was made: in a forked child its
    /// queue is fed by nothing, and a pool thread there takes nothing.
    forks: u64,
}

impl Pool {
    pub(crate) fn new(node: &str) -> Pool {
        let (tx, rx) = crossbeam_channel::unbounded();
        Pool {
            tx,
            rx,
            node: node.into(),
            closed: Arc::default(),
            forks: crate::forks(),
        }
    }

    /// The Rust handler registered with `tribe::Node::serve_responder` for
    /// a Python callable: it queues the call for the pool and returns.
    pub(crate) fn rust_handler(
        &self,
        handler: Py<PyAny>,
    ) -> impl Fn(tribe::CallInfo, Vec<u8>, tribe::Responder) + Send + Sync + 'static {
        let handler = Arc::new(handler);
        let tx = self.tx.clone();
        let closed = self.closed.clone();
        move |info, payload, responder| {
            if closed.load(Ordering::Acquire) {
                // Not run here: the caller moves it to another host.
                responder.refuse_stopping();
                return;
            }
            let job = Job {
                handler: handler.clone(),
                info,
                queued: Instant::now(),
                payload,
                responder: Some(responder),
            };
            // A pool that stopped drops the job, which refuses the call.
            let _ = tx.send(Work::Call(job));
        }
    }

    /// Drops every queued call (their callers move them to other hosts).
    pub(crate) fn drain(&self) {
        while let Ok(work) = self.rx.try_recv() {
            drop(work);
        }
    }
}

/// Takes the next call for a pool thread, waiting for it with the GIL
/// released while the pool is open; `None` once the node closes or the
/// thread is told to stop. Calls whose caller gave up while they were
/// queued are skipped.
pub(crate) fn take_call(py: Python<'_>, pool: &Pool) -> PyResult<Option<Taken>> {
    loop {
        // A closed pool takes nothing more (its queue was drained), and
        // waits for nothing: at interpreter exit no pool thread may be in
        // native code with the GIL released (see `TakenCall`).
        if pool.closed.load(Ordering::Acquire) || pool.forks != crate::forks() {
            return Ok(None);
        }
        let work = py.detach(|| pool.rx.recv());
        let mut job = match work {
            Ok(Work::Call(job)) => job,
            Ok(Work::Stop) | Err(_) => return Ok(None),
        };
        let Some(responder) = job.responder.take() else {
            continue;
        };
        if responder.is_abandoned() {
            // The caller gave up while the call was queued.
            continue;
        }
        return TakenCall::start(py, job, responder, pool).map(Some);
    }
}

/// What [`take_call`] hands a pool thread: the handler, its arguments, and
/// the call to answer.
pub(crate) type Taken = (Py<PyAny>, Py<PyBytes>, Py<CallInfo>, TakenCall);

/// A call a pool thread took: Python runs `handler(payload, info)` and
/// answers with `reply` or `fail`. The loop around it is Python's
/// (`pytribe._serve_calls`), so no native frame is on the thread's stack
/// while a handler runs: an interpreter that exits meanwhile ends the
/// (daemon) thread cleanly, where unwinding it through native frames would
/// abort the process.
#[pyclass(frozen, module = "pytribe._native")]
pub(crate) struct TakenCall {
    call: tribe::CallInfo,
    /// The serving node's name.
    node: Arc<str>,
    running: Running,
    /// Whether the node closed: then the answer is written with the GIL
    /// held (a write to a socket), never released while the interpreter may
    /// be finishing.
    closed: Arc<AtomicBool>,
    /// [`crate::forks`] when the call was taken: a handler that forked
    /// returns in the child too, which must not answer on the parent's
    /// stream (the caller would take the child's answer).
    forks: u64,
}

impl Drop for TakenCall {
    fn drop(&mut self) {
        // Dropped unanswered, a responder answers the caller: not from a
        // forked child. No wait on the lock there: a parent thread may
        // have held it at the fork.
        if self.forks != crate::forks() {
            if let Ok(mut running) = self.running.try_lock() {
                std::mem::forget(running.take());
            } else {
                std::mem::forget(self.running.clone());
            }
        }
    }
}

impl TakenCall {
    /// The call, and the handler and arguments to run it with (apart, so
    /// that the loop reads no attributes per call).
    fn start(
        py: Python<'_>,
        mut job: Job,
        responder: tribe::Responder,
        pool: &Pool,
    ) -> PyResult<Taken> {
        let running: Running = Arc::new(Mutex::new(Some(responder)));
        let left = job.info.budget.saturating_sub(job.queued.elapsed());
        let info = CallInfo {
            caller: job.info.caller.clone(),
            tribe: job.info.tribe.clone(),
            plugin: job.info.plugin.clone(),
            version: job.info.version.clone(),
            deadline: monotonic(py)? + left.as_secs_f64(),
            running: Some(running.clone()),
        };
        Ok((
            job.handler.clone_ref(py),
            PyBytes::new(py, &job.payload).unbind(),
            Py::new(py, info)?,
            TakenCall {
                // Moved: the job is done with its names.
                call: tribe::CallInfo {
                    caller: std::mem::take(&mut job.info.caller),
                    tribe: std::mem::take(&mut job.info.tribe),
                    plugin: std::mem::take(&mut job.info.plugin),
                    version: std::mem::take(&mut job.info.version),
                    budget: job.info.budget,
                },
                node: pool.node.clone(),
                running,
                closed: pool.closed.clone(),
                forks: pool.forks,
            },
        ))
    }

    /// The responder, once: `None` when the call was answered already or
    /// abandoned meanwhile, and in a forked child.
    fn take(&self) -> Option<tribe::Responder> {
        if self.forks != crate::forks() {
            return None;
        }
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }
}

#[pymethods]
impl TakenCall {
    /// Answers with the handler's return value (bytes, bytearray or
    /// memoryview; anything else fails the call with code `TypeError`).
    fn reply(&self, py: Python<'_>, out: &Bound<'_, PyAny>) {
        let Some(responder) = self.take() else {
            return;
        };
        match reply_bytes(out) {
            Ok(reply) => {
                let sent = if self.closed.load(Ordering::Acquire) {
                    responder.reply(reply)
                } else {
                    // Written to the caller's stream from this thread, without the GIL.
                    py.detach(|| responder.reply(reply))
                };
                if let Err(tribe::Error::TooLarge { size, limit }) = sent {
                    // The caller got "too_large"; the handler's author
                    // learns it here.
                    let why = format!("the reply has {size} bytes, over the limit of {limit}");
                    log_failure(
                        py,
                        self,
                        &HandlerError::new("too_large", why),
                        None,
                        "error",
                    );
                }
            }
            Err(e) => {
                // Answered before the log: a log handler that blocks (a
                // full pipe, a network sink) must not hold up the caller.
                let err = HandlerError::new("TypeError", e);
                responder.fail(err.clone());
                log_failure(py, self, &err, None, "error");
            }
        }
    }

    /// Answers with the exception the handler raised: a `HandlerError`
    /// keeps its code, any other exception is named by its class; logged.
    fn fail(&self, py: Python<'_>, exc: &Bound<'_, PyAny>) {
        let Some(responder) = self.take() else {
            return;
        };
        let e = PyErr::from_value(exc.clone());
        let not_served = NOT_SERVED
            .import(py, "pytribe._errors", "_NotServed")
            .is_ok_and(|cls| exc.is_instance(cls).unwrap_or(false));
        if not_served {
            // Unserved while queued: the caller moves the call on.
            responder.refuse_stopping();
            return;
        }
        let (err, chosen) = handler_error(py, &e);
        // Answered before the log, as in `reply`.
        responder.fail(err.clone());
        // An answer the handler chose (a refusal it expects to give, maybe
        // at every call) is logged at debug, as Go logs none; its
        // traceback goes with it, for a `raise HandlerError(..) from e`.
        let level = if chosen { "debug" } else { "error" };
        log_failure(py, self, &err, Some(e), level);
    }
}

static NOT_SERVED: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// Bytes of a handler's reply: `bytes`, `bytearray` or `memoryview`.
pub(crate) fn reply_bytes(out: &Bound<'_, PyAny>) -> Result<Vec<u8>, String> {
    bytes_like(out).ok_or_else(|| {
        let type_name = out
            .get_type()
            .name()
            .map(|n| n.to_string())
            .unwrap_or_else(|_| "?".into());
        if type_name == "memoryview" {
            // A released view, or one whose buffer cannot be read.
            return "a handler returned a memoryview that was released".to_string();
        }
        format!("a handler must return bytes, bytearray or memoryview, not {type_name}")
    })
}

/// The bytes of a `bytes`, `bytearray` or `memoryview`; `None` for anything else.
pub(crate) fn bytes_like(obj: &Bound<'_, PyAny>) -> Option<Vec<u8>> {
    if let Ok(b) = obj.cast::<PyBytes>() {
        return Some(b.as_bytes().to_vec());
    }
    if let Ok(b) = obj.cast::<PyByteArray>() {
        return Some(b.to_vec());
    }
    if let Ok(view) = obj.cast::<pyo3::types::PyMemoryView>() {
        let bytes: PyBackedBytes = view.call_method0("tobytes").ok()?.extract().ok()?;
        return Some(bytes.to_vec());
    }
    None
}

/// A handler's exception as a `HandlerError`: `pytribe.HandlerError(code,
/// message)` keeps its code (and is told as chosen: `true`); any other
/// exception is named by its class.
fn handler_error(py: Python<'_>, e: &PyErr) -> (HandlerError, bool) {
    let value = e.value(py);
    let explicit = HANDLER_ERROR
        .import(py, "pytribe._errors", "HandlerError")
        .ok()
        .filter(|cls| value.is_instance(cls).unwrap_or(false));
    if explicit.is_some() {
        let code = text_of(value.getattr("code")).unwrap_or_else(|| "error".into());
        let message = text_of(value.getattr("message")).unwrap_or_default();
        return (HandlerError::new(code, message), true);
    }
    let code = value
        .get_type()
        .name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "Exception".into());
    let message = text_of(value.str().map(|s| s.into_any())).unwrap_or_default();
    (HandlerError::new(code, message), false)
}

/// A `str`'s text, with what UTF-8 cannot hold (lone surrogates) replaced
/// rather than the whole text lost.
fn text_of(obj: PyResult<Bound<'_, PyAny>>) -> Option<String> {
    let obj = obj.ok()?;
    let s = obj.cast::<pyo3::types::PyString>().ok()?;
    Some(s.to_string_lossy().into_owned())
}

/// Logs a failed handler on the serving side (logger `pytribe`, with the
/// serving node in `tribe_node` as the library's records have it), at
/// `level` (a `logging.Logger` method).
fn log_failure(
    py: Python<'_>,
    call: &TakenCall,
    err: &HandlerError,
    exc: Option<PyErr>,
    level: &str,
) {
    let info = &call.call;
    let logged = (|| -> PyResult<()> {
        let logger = LOGGER.get_or_try_init(py, || -> PyResult<Py<PyAny>> {
            Ok(py
                .import("logging")?
                .call_method1("getLogger", ("pytribe",))?
                .unbind())
        })?;
        let kwargs = PyDict::new(py);
        if let Some(exc) = exc {
            kwargs.set_item("exc_info", exc.into_value(py))?;
        }
        let extra = PyDict::new(py);
        extra.set_item("tribe_target", "pytribe")?;
        extra.set_item("tribe_node", &*call.node)?;
        kwargs.set_item("extra", extra)?;
        logger.bind(py).call_method(
            level,
            (
                "handler %s:%s failed for a call from %s: %s: %s",
                &info.plugin,
                &info.version,
                &info.caller,
                &err.code,
                &err.message,
            ),
            Some(&kwargs),
        )?;
        Ok(())
    })();
    if let Err(e) = logged {
        e.write_unraisable(py, None);
    }
}
