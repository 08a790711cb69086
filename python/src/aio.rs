//! asyncio integration: a runtime task whose outcome completes an asyncio
//! future through the loop's `call_soon_threadsafe`, attached to the
//! interpreter from tokio's blocking pool (never from a runtime worker).
//! Cancelling the asyncio future aborts the task, which drops (abandons)
//! what it was doing.

use std::future::Future;

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
    let task = rt.spawn(async move {
        let outcome = work.await;
        // Attach from the blocking pool: a runtime worker never waits for
        // the GIL.
        let _ = tokio::task::spawn_blocking(move || {
            if !crate::may_call_python() {
                return;
            }
            let _ = Python::try_attach(|py| {
                let (failed, value) = match outcome(py) {
                    Ok(v) => (false, v),
                    Err(e) => (true, e.into_value(py).into_any()),
                };
                // A closed loop refuses; nobody is waiting then.
                let _ = loop_ref.bind(py).call_method1(
                    "call_soon_threadsafe",
                    (complete.bind(py), fut_ref.bind(py), failed, value),
                );
            });
        })
        .await;
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
