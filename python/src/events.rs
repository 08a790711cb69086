//! A subscriber to a node's events, read blocking (GIL released, signals
//! checked) or through asyncio.

use std::sync::Arc;
use std::time::Instant;

use pyo3::prelude::*;
use tokio::sync::Mutex;

/// One subscriber: every event from the moment it was made (the first of a
/// node also gets those since start).
#[pyclass(frozen, module = "pytribe._native")]
pub(crate) struct NativeEvents {
    stream: Arc<Mutex<tribe::EventStream>>,
}

impl NativeEvents {
    pub(crate) fn new(stream: tribe::EventStream) -> Self {
        NativeEvents {
            stream: Arc::new(Mutex::new(stream)),
        }
    }
}

/// Outcome of one wait: an event as a dict, nothing yet, or the end.
fn outcome<'py>(py: Python<'py>, got: Option<Option<tribe::Event>>) -> PyResult<Bound<'py, PyAny>> {
    match got {
        // An event.
        Some(Some(e)) => crate::convert::to_py(py, &crate::convert::event(&e)),
        // The node stopped: no more events.
        Some(None) => Ok(false.into_pyobject(py)?.to_owned().into_any()),
        // Timed out.
        None => Ok(py.None().into_bound(py)),
    }
}

#[pymethods]
impl NativeEvents {
    /// The next event (a dict), `None` after `timeout` seconds without one,
    /// or `False` once the node has stopped. Ctrl-C interrupts the wait.
    #[pyo3(signature = (timeout=None))]
    fn next<'py>(&self, py: Python<'py>, timeout: Option<f64>) -> PyResult<Bound<'py, PyAny>> {
        let limit = match timeout {
            None => None,
            Some(t) => Some(crate::node::seconds("timeout", t, true)?),
        };
        let rt = crate::runtime()?;
        let start = Instant::now();
        loop {
            let slice = match limit {
                None => crate::SLICE,
                Some(l) => l.saturating_sub(start.elapsed()).min(crate::SLICE),
            };
            let stream = self.stream.clone();
            let got = py.detach(move || {
                rt.block_on(async move {
                    let mut s = stream.lock().await;
                    tokio::time::timeout(slice, s.next()).await.ok()
                })
            });
            if got.is_some() {
                return outcome(py, got);
            }
            py.check_signals()?;
            if limit.is_some_and(|l| start.elapsed() >= l) {
                return outcome(py, None);
            }
        }
    }

    /// An event already queued (a dict), or `None`.
    fn try_next<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let got = match self.stream.try_lock() {
            Ok(mut s) => s.try_next(),
            Err(_) => None,
        };
        match got {
            Some(e) => outcome(py, Some(Some(e))),
            None => outcome(py, None),
        }
    }

    /// An asyncio future (of `loop`) of the next event: a dict, or `False`
    /// once the node has stopped. Cancelling it leaves the stream intact.
    fn anext<'py>(
        &self,
        py: Python<'py>,
        r#loop: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let stream = self.stream.clone();
        crate::aio::spawn(py, r#loop, async move {
            let got = {
                let mut s = stream.lock().await;
                s.next().await
            };
            let out: crate::aio::Outcome = Box::new(move |py| Ok(outcome(py, Some(got))?.unbind()));
            out
        })
    }
}
