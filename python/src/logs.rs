//! The library's `tracing` output for Python's `logging`: each record is
//! formatted on the thread that logs it and queued (bounded; a full queue
//! drops records and counts them); a Python thread of the package drains
//! the queue into the `pytribe` logger. No runtime thread calls Python.

use std::io::Write;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::OnceLock;

use crossbeam_channel::{Receiver, Sender};
use pyo3::prelude::*;
use tracing::Level;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;

const QUEUE: usize = 10_000;

/// Python `logging` levels.
const DEBUG: u8 = 10;
const INFO: u8 = 20;
const WARNING: u8 = 30;
const ERROR: u8 = 40;

/// Least severe level forwarded (a Python level number).
static MIN_LEVEL: AtomicU8 = AtomicU8::new(INFO);
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// A record: Python level, Rust module path, node name (empty when the
/// record is not about one node's work), message.
type Record = (u8, String, String, String);

/// A record as queued, with the fork count of the process that queued it:
/// a forked child finds its parent's queued records in its copy of the
/// queue, and drops them (they are the parent's to log).
type Queued = (Record, u64);

struct Queue {
    tx: Sender<Queued>,
    rx: Receiver<Queued>,
}

thread_local! {
    /// The node of the record being formatted on this thread, set by
    /// [`Fields`] just before the record's writer is made.
    static NODE: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

static QUEUE_CELL: OnceLock<Queue> = OnceLock::new();

fn queue() -> &'static Queue {
    QUEUE_CELL.get_or_init(|| {
        let (tx, rx) = crossbeam_channel::bounded(QUEUE);
        Queue { tx, rx }
    })
}

fn py_level(level: &Level) -> u8 {
    match *level {
        Level::ERROR => ERROR,
        Level::WARN => WARNING,
        Level::INFO => INFO,
        _ => DEBUG,
    }
}

/// A writer for one formatted record.
struct RecordWriter {
    level: u8,
    target: String,
}

impl Write for RecordWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf).trim_end().to_string();
        if !text.is_empty()
            && queue()
                .tx
                .try_send((
                    (
                        self.level,
                        std::mem::take(&mut self.target),
                        NODE.with(|n| n.borrow().clone()),
                        text,
                    ),
                    crate::forks(),
                ))
                .is_err()
        {
            DROPPED.fetch_add(1, Ordering::Relaxed);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct MakeRecord;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for MakeRecord {
    type Writer = RecordWriter;

    fn make_writer(&'a self) -> RecordWriter {
        RecordWriter {
            level: INFO,
            target: String::new(),
        }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> RecordWriter {
        RecordWriter {
            level: py_level(meta.level()),
            target: meta.target().to_string(),
        }
    }
}

/// Formats a record as its fields alone, and notes the node whose work it
/// is (the library's `tribe` span, field `node`) for the record's writer.
struct Fields;

impl<S, N> FormatEvent<S, N> for Fields
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let node = ctx
            .event_scope()
            .into_iter()
            .flat_map(|scope| scope.from_root())
            .filter(|span| span.name() == "tribe")
            .find_map(|span| {
                let ext = span.extensions();
                let fields = ext.get::<FormattedFields<N>>()?;
                Some(fields.fields.strip_prefix("node=")?.to_string())
            })
            .unwrap_or_default();
        NODE.with(|n| *n.borrow_mut() = node);
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// Installs the forwarding subscriber as this module's global default (the
/// module has its own copy of `tracing`; nothing else sets one).
pub(crate) fn install() {
    let filter = tracing_subscriber::filter::filter_fn(|meta| {
        py_level(meta.level()) >= MIN_LEVEL.load(Ordering::Relaxed)
    });
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(MakeRecord)
        .with_ansi(false)
        .event_format(Fields);
    let subscriber =
        tracing_subscriber::registry().with(tracing_subscriber::Layer::with_filter(layer, filter));
    let _ = tracing::subscriber::set_global_default(subscriber);
}

/// The next log record `(level, target, node, message)` of the library,
/// waiting up to `timeout` seconds (GIL released); `None` when there is
/// none. `node` is the name of the node whose work logged it, or empty.
#[pyfunction]
#[pyo3(signature = (timeout=0.2))]
pub(crate) fn next_log(py: Python<'_>, timeout: f64) -> PyResult<Option<Record>> {
    let wait = crate::node::seconds("timeout", timeout, false)?.min(crate::SLICE);
    let rx = &queue().rx;
    Ok(py.detach(|| {
        let until = std::time::Instant::now() + wait;
        loop {
            let left = until.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok((record, forks)) if forks == crate::forks() => return Some(record),
                // The parent's, copied at a fork.
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    }))
}

/// Sets the least severe level forwarded to `logging`: `debug`, `info`,
/// `warning` or `error`; returns how many records were dropped so far
/// because the queue was full.
#[pyfunction]
pub(crate) fn set_log_level(level: &str) -> PyResult<u64> {
    let n = match level.to_ascii_lowercase().as_str() {
        "debug" | "trace" => DEBUG,
        "info" => INFO,
        "warning" | "warn" => WARNING,
        "error" => ERROR,
        other => {
            return Err(crate::errors::value_error(format!(
                "log level {other:?} is not debug, info, warning or error"
            )))
        }
    };
    MIN_LEVEL.store(n, Ordering::Relaxed);
    tracing::callsite::rebuild_interest_cache();
    Ok(DROPPED.load(Ordering::Relaxed))
}
