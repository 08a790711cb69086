//! Where the agent's log lines go: straight to stderr until the ready line
//! (a line logged before it is on stderr when the ready line is read), then
//! through a bounded queue that a thread of its own writes (see
//! [`crate::output::stream`]). A log collector that stops reading (a stuck
//! `journald` pipe, a `| tee` that hangs) loses lines, counted, and never
//! stalls the node: a write to a full stderr pipe used to block a runtime
//! thread, and with it the gossip (peers found the node failed), the admin
//! API and the handling of SIGTERM.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use tracing_appender::non_blocking::{NonBlocking, WorkerGuard};
use tracing_subscriber::fmt::MakeWriter;

use crate::output::DropWatch;

/// The queue, once the agent is ready.
static QUEUED: OnceLock<NonBlocking> = OnceLock::new();

/// Set once the queue's thread has ended (the agent stopped): lines logged
/// after it, such as the error the agent stops with, go straight to stderr.
static DIRECT_AGAIN: AtomicBool = AtomicBool::new(false);

/// The writer the log subscriber makes per line.
pub struct LogWriter;

/// One line's writer: stderr, or the queue.
pub enum LogLine {
    Direct(std::io::Stderr),
    Queued(NonBlocking),
}

impl Write for LogLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            LogLine::Direct(w) => w.write(buf),
            LogLine::Queued(w) => w.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            LogLine::Direct(w) => w.flush(),
            LogLine::Queued(w) => w.flush(),
        }
    }
}

impl<'a> MakeWriter<'a> for LogWriter {
    type Writer = LogLine;

    fn make_writer(&'a self) -> LogLine {
        match QUEUED.get() {
            Some(queue) if !DIRECT_AGAIN.load(Ordering::Relaxed) => LogLine::Queued(queue.clone()),
            _ => LogLine::Direct(std::io::stderr()),
        }
    }
}

/// Makes the queue's thread before the node starts (so that at the
/// process's thread limit the start says so); the writer goes to
/// [`queue_from_now`] at the ready line, the guard, dropped at exit, writes
/// what is queued (waiting about a second at most).
pub fn queue_later() -> Result<(NonBlocking, DropWatch, WorkerGuard), String> {
    crate::output::stream(std::io::stderr(), "tribe-log")
}

/// From now on, log lines go through `queue`.
pub fn queue_from_now(queue: NonBlocking) {
    // Set once: the agent runs once per process.
    let _ = QUEUED.set(queue);
}

/// From now on, log lines go straight to stderr again: the queue's guard
/// has written what was queued, and its thread is gone.
pub fn direct_from_now() {
    DIRECT_AGAIN.store(true, Ordering::Relaxed);
}
