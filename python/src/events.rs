//! A subscriber to a node's events, read blocking (GIL released, signals
//! checked) or through asyncio.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use pyo3::prelude::*;
use tokio::sync::Mutex;

/// One subscriber: every event from the moment it was made (the first of a
/// node also gets those since start).
#[pyclass(frozen, module = "pytribe._native")]
pub(crate) struct NativeEvents {
    sub: Arc<Mutex<Subscriber>>,
    /// The stream's count of lost events as of its last read, for a look
    /// while a read holds the subscriber.
    missed: Arc<AtomicU64>,
}

/// The stream, and an event an asyncio wait took from it and has not
/// handed out yet. The asyncio wait only announces that an event is
/// there; the loop then takes it with `try_next`. So an event never rides
/// in a future of a loop that may be gone (a loop closed mid-wait, a
/// subscriber reused under a second `asyncio.run`): it waits here for
/// whoever reads next.
///
/// Events are handed out numbered, and the last one is kept until the
/// reader's next read names its number: a signal handler that raises as a
/// read returns (Python checks for signals right after a call, before the
/// caller stores its result) loses the event in Python, and the next read,
/// naming the number before it, gets it again.
struct Subscriber {
    stream: tribe::EventStream,
    held: Option<tribe::Event>,
    handed: Option<(u64, tribe::Event)>,
    count: u64,
    missed: Arc<AtomicU64>,
}

impl Subscriber {
    /// Notes the stream's count of lost events (after each read).
    fn note_missed(&self) {
        self.missed.store(self.stream.missed(), Ordering::Relaxed);
    }

    /// The last event handed out, again, when the reader (which got up to
    /// `after`) did not get it.
    fn again(&mut self, after: u64) -> Option<(u64, tribe::Event)> {
        match &self.handed {
            Some((n, e)) if *n > after => Some((*n, e.clone())),
            _ => {
                self.handed = None;
                None
            }
        }
    }

    fn hand(&mut self, e: tribe::Event) -> (u64, tribe::Event) {
        self.count += 1;
        self.handed = Some((self.count, e.clone()));
        (self.count, e)
    }

    async fn next(&mut self, after: u64) -> Option<(u64, tribe::Event)> {
        if let Some(again) = self.again(after) {
            return Some(again);
        }
        let e = match self.held.take() {
            Some(e) => e,
            None => {
                let e = self.stream.next().await;
                self.note_missed();
                e?
            }
        };
        Some(self.hand(e))
    }

    fn try_next(&mut self, after: u64) -> Option<(u64, tribe::Event)> {
        if let Some(again) = self.again(after) {
            return Some(again);
        }
        let e = self.held.take().or_else(|| self.stream.try_next());
        self.note_missed();
        Some(self.hand(e?))
    }
}

impl NativeEvents {
    pub(crate) fn new(stream: tribe::EventStream) -> Self {
        let missed = Arc::new(AtomicU64::new(0));
        NativeEvents {
            sub: Arc::new(Mutex::new(Subscriber {
                stream,
                held: None,
                handed: None,
                count: 0,
                missed: missed.clone(),
            })),
            missed,
        }
    }
}

/// Outcome of one wait: an event as `(number, dict)`, nothing yet, or the
/// end.
fn outcome<'py>(
    py: Python<'py>,
    got: Option<Option<(u64, tribe::Event)>>,
) -> PyResult<Bound<'py, PyAny>> {
    match got {
        // An event.
        Some(Some((n, e))) => {
            let event = crate::convert::to_py(py, &crate::convert::event(&e))?;
            Ok((n, event).into_pyobject(py)?.into_any())
        }
        // The node stopped: no more events.
        Some(None) => Ok(false.into_pyobject(py)?.to_owned().into_any()),
        // Timed out.
        None => Ok(py.None().into_bound(py)),
    }
}

#[pymethods]
impl NativeEvents {
    /// The next event after number `after` (the number of the last one
    /// the reader got), as `(number, dict)`; `None` after `timeout` seconds
    /// without one, or `False` once the node has stopped. Ctrl-C interrupts
    /// the wait.
    #[pyo3(signature = (timeout=None, after=0))]
    fn next<'py>(
        &self,
        py: Python<'py>,
        timeout: Option<f64>,
        after: u64,
    ) -> PyResult<Bound<'py, PyAny>> {
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
            let sub = self.sub.clone();
            // The lock is inside the time limit: an asyncio wait may hold it.
            let got = py.detach(move || {
                rt.block_on(async move {
                    tokio::time::timeout(slice, async move { sub.lock().await.next(after).await })
                        .await
                        .ok()
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

    /// An event already queued after number `after`, as `(number, dict)`,
    /// or `None`.
    #[pyo3(signature = (after=0))]
    fn try_next<'py>(&self, py: Python<'py>, after: u64) -> PyResult<Bound<'py, PyAny>> {
        let got = match self.sub.try_lock() {
            Ok(mut s) => s.try_next(after),
            Err(_) => None,
        };
        match got {
            Some(e) => outcome(py, Some(Some(e))),
            None => outcome(py, None),
        }
    }

    /// How many events this subscriber has lost by falling more than
    /// 65,536 behind (as of its last read when a read is under way).
    fn missed(&self) -> u64 {
        if let Ok(s) = self.sub.try_lock() {
            s.note_missed();
        }
        self.missed.load(Ordering::Relaxed)
    }

    /// An asyncio future (of `loop`) that is `True` once an event waits
    /// for `try_next`, or `False` once the node has stopped. Cancelling it
    /// loses nothing.
    fn anext<'py>(
        &self,
        py: Python<'py>,
        r#loop: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let sub = self.sub.clone();
        crate::aio::spawn(py, r#loop, async move {
            let ready = {
                let mut s = sub.lock().await;
                if s.held.is_none() {
                    // Cancel-safe: an abort here leaves the event queued.
                    s.held = s.stream.next().await;
                    s.note_missed();
                }
                s.held.is_some()
            };
            let out: crate::aio::Outcome =
                Box::new(move |py| Ok(ready.into_pyobject(py)?.to_owned().into_any().unbind()));
            out
        })
    }
}
