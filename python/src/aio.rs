//! asyncio integration: a runtime task whose outcome completes an asyncio
//! future through the loop's `call_soon_threadsafe`, attached to the
//! interpreter from one completer thread (never from a runtime worker),
//! which hands over what finished meanwhile in one attach. Cancelling the
//! asyncio future aborts the task, which drops (abandons) what it was doing.

use std::future::Future;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Mutex;

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;

static COMPLETE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// Done-callback of an asyncio future: aborts the runtime task when the
/// future was cancelled.
#[pyclass(frozen, module = "pytribe._native")]
pub(crate) struct AbortOnCancel {
    handle: tokio::task::AbortHandle,
}

#[pymethods]
impl AbortOnCancel {
    fn __call__(&self, fut: &Bound<'_, PyAny>) -> PyResult<()> {
        if fut.call_method0("cancelled")?.is_truthy()? {
            self.handle.abort();
        }
        Ok(())
    }
}

/// Sets a future's result or exception unless it is done already
/// (cancelled); scheduled on the loop by `call_soon_threadsafe`.
#[pyfunction]
pub(crate) fn _complete(
    fut: &Bound<'_, PyAny>,
    failed: bool,
    value: &Bound<'_, PyAny>,
) -> PyResult<()> {
    if fut.call_method0("done")?.is_truthy()? {
        return Ok(());
    }
    if failed {
        fut.call_method1("set_exception", (value,))?;
    } else {
        fut.call_method1("set_result", (value,))?;
    }
    Ok(())
}

/// What a finished task hands to the loop: a value or an exception, built
/// while attached.
pub(crate) type Outcome = Box<dyn FnOnce(Python<'_>) -> PyResult<Py<PyAny>> + Send>;

/// Runs `work` on the runtime and returns an asyncio future of `loop_`
/// completed with what `work`'s outcome builds.
pub(crate) fn spawn<'py, F>(
    py: Python<'py>,
    loop_: &Bound<'py, PyAny>,
    work: F,
) -> PyResult<Bound<'py, PyAny>>
where
    F: Future<Output = Outcome> + Send + 'static,
{
    let rt = crate::runtime()?;
    let fut = loop_.call_method0("create_future")?;
    let fut_ref: Py<PyAny> = fut.clone().unbind();
    let loop_ref: Py<PyAny> = loop_.clone().unbind();
    let complete: Py<PyAny> = COMPLETE
        .get_or_try_init(py, || -> PyResult<Py<PyAny>> {
            Ok(wrap_pyfunction!(_complete, py)?.into_any().unbind())
        })?
        .clone_ref(py);
    // Taken here, not in the task: a runtime worker holding the queue's
    // lock when another thread forks would leave it locked in the child.
    let to = completer();
    let task = rt.spawn(async move {
        let outcome = work.await;
        // To the completer thread: a runtime worker never waits for the GIL.
        if let Some(to) = to {
            let _ = to.send(Delivery {
                outcome,
                loop_ref,
                fut_ref,
                complete,
            });
        }
    });
    let canceller = Bound::new(
        py,
        AbortOnCancel {
            handle: task.abort_handle(),
        },
    )?;
    fut.call_method1("add_done_callback", (canceller,))?;
    Ok(fut)
}

/// A finished task's outcome on its way to its asyncio future.
struct Delivery {
    outcome: Outcome,
    loop_ref: Py<PyAny>,
    fut_ref: Py<PyAny>,
    complete: Py<PyAny>,
}

/// The completer thread's queue; None until first used, and again in a
/// forked child (where the thread does not exist).
static COMPLETER: Mutex<Option<Sender<Delivery>>> = Mutex::new(None);

/// The queue of the completer thread, started on first use.
fn completer() -> Option<Sender<Delivery>> {
    let mut slot = COMPLETER.lock().unwrap_or_else(|p| p.into_inner());
    if slot.is_none() {
        let (to, from) = channel();
        std::thread::Builder::new()
            .name("pytribe-aio".into())
            .spawn(move || {
                tribe::runtime_build::block_async_signals();
                complete_all(&from)
            })
            .ok()?;
        *slot = Some(to);
    }
    slot.clone()
}

/// Forgets the parent's completer in a forked child.
pub(crate) fn after_fork_in_child() {
    *COMPLETER.lock().unwrap_or_else(|p| p.into_inner()) = None;
}

/// The completer thread: attaches once for what finished meanwhile.
fn complete_all(from: &Receiver<Delivery>) {
    while let Ok(first) = from.recv() {
        let batch: Vec<Delivery> = std::iter::once(first).chain(from.try_iter()).collect();
        let Some(_turn) = crate::enter_python() else {
            continue;
        };
        let _ = Python::try_attach(|py| {
            for d in batch {
                let (failed, value) = match (d.outcome)(py) {
                    Ok(v) => (false, v),
                    Err(e) => (true, e.into_value(py).into_any()),
                };
                // A closed loop refuses; nobody is waiting then.
                let _ = d.loop_ref.bind(py).call_method1(
                    "call_soon_threadsafe",
                    (d.complete.bind(py), d.fut_ref.bind(py), failed, value),
                );
            }
        });
    }
}
