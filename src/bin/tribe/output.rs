//! The agent's stdout after its ready line (the `stdout` publisher's metric
//! lines), written by a thread of its own through a bounded queue. A
//! reader that stops reading (a supervisor that took the ready line and no
//! more, a pipe left full) loses lines, counted, and never stalls the node:
//! a write to a full pipe used to block a runtime thread, and with it the
//! gossip, the admin API and the signal handling.

use tracing_appender::non_blocking::{ErrorCounter, NonBlocking, NonBlockingBuilder, WorkerGuard};

/// Lines queued per stream at most; past it new lines are dropped.
const QUEUED_LINES: usize = 16_384;

/// A stream's writer; the guard, when dropped, writes what is queued
/// (waiting at most about a second for a reader that does not read).
pub fn stream<W>(inner: W, thread: &str) -> (NonBlocking, WorkerGuard)
where
    W: std::io::Write + Send + 'static,
{
    NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(QUEUED_LINES)
        .thread_name(thread)
        .finish(inner)
}

/// Logs, once each time more were dropped, how many lines a stream lost
/// because nothing read it.
pub struct DropWatch {
    counter: ErrorCounter,
    reported: usize,
}

impl DropWatch {
    pub fn new(writer: &NonBlocking) -> DropWatch {
        DropWatch {
            counter: writer.error_counter(),
            reported: 0,
        }
    }

    /// Lines dropped since the last call, if any.
    pub fn newly_dropped(&mut self) -> Option<usize> {
        let dropped = self.counter.dropped_lines();
        let new = dropped.saturating_sub(self.reported);
        self.reported = dropped;
        (new > 0).then_some(new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    /// A writer that blocks until the test lets it go, as a full pipe does.
    struct Stuck(Arc<Mutex<()>>);

    impl Write for Stuck {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            drop(self.0.lock().unwrap());
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn writes_to_a_stream_nobody_reads_return_at_once_and_are_counted_dropped() {
        let gate = Arc::new(Mutex::new(()));
        let held = gate.lock().unwrap();
        let (mut writer, guard) = stream(Stuck(gate.clone()), "test-out");
        let mut watch = DropWatch::new(&writer);
        let began = std::time::Instant::now();
        for i in 0..3 * QUEUED_LINES {
            writer.write_all(format!("line {i}\n").as_bytes()).unwrap();
        }
        assert!(began.elapsed() < std::time::Duration::from_secs(5));
        let dropped = watch
            .newly_dropped()
            .expect("lines past the queue are dropped");
        assert!(dropped >= QUEUED_LINES, "{dropped}");
        assert_eq!(watch.newly_dropped(), None, "each drop is told once");
        drop(held);
        drop(guard);
    }
}
