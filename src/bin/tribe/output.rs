//! The agent's stdout after its ready line (the `stdout` publisher's metric
//! lines), written by a thread of its own through a bounded queue. A
//! reader that stops reading (a supervisor that took the ready line and no
//! more, a pipe left full) loses lines, counted, and never stalls the node:
//! a write to a full pipe used to block a runtime thread, and with it the
//! gossip, the admin API and the signal handling.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tracing_appender::non_blocking::{ErrorCounter, NonBlocking, NonBlockingBuilder, WorkerGuard};

/// Lines queued per stream at most; past it new lines are dropped.
const QUEUED_LINES: usize = 16_384;

/// A stream's writer, the watch on the lines it loses, and the guard that,
/// when dropped, writes what is queued (waiting at most about a second for
/// a reader that does not read).
pub fn stream<W>(inner: W, thread: &str) -> Result<(NonBlocking, DropWatch, WorkerGuard), String>
where
    W: std::io::Write + Send + 'static,
{
    // tracing-appender panics when it cannot make its thread: one is made
    // (and ended) first, so that the process's thread limit is an error.
    std::thread::Builder::new()
        .spawn(|| {})
        .and_then(|t| t.join().map_err(|_| std::io::Error::other("panicked")))
        .map_err(|e| {
            format!("cannot start the {thread} thread ({e}); is the process at its thread limit?")
        })?;
    let failed = Arc::new(AtomicUsize::new(0));
    let inner = Counting {
        inner,
        failed: failed.clone(),
    };
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(QUEUED_LINES)
        .thread_name(thread)
        .finish(inner);
    let watch = DropWatch {
        queue: writer.error_counter(),
        failed,
        reported: 0,
    };
    Ok((writer, watch, guard))
}

/// Counts the lines that could not be written (the reader closed its end:
/// the writing thread drops them without a word).
struct Counting<W> {
    inner: W,
    failed: Arc<AtomicUsize>,
}

impl<W: std::io::Write> std::io::Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let written = self.inner.write(buf);
        // (`write_all` retries an interrupted write, and gives up a line
        // at its first other error.)
        if written
            .as_ref()
            .is_err_and(|e| e.kind() != std::io::ErrorKind::Interrupted)
        {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
        written
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// How many lines a stream lost because nothing read it: past the queue,
/// or refused by a reader that went away.
pub struct DropWatch {
    queue: ErrorCounter,
    failed: Arc<AtomicUsize>,
    reported: usize,
}

impl DropWatch {
    fn dropped(&self) -> usize {
        self.queue.dropped_lines() + self.failed.load(Ordering::Relaxed)
    }

    /// Lines dropped since the last call, if any.
    pub fn newly_dropped(&mut self) -> Option<usize> {
        let dropped = self.dropped();
        let new = dropped.saturating_sub(self.reported);
        self.reported = dropped;
        (new > 0).then_some(new)
    }

    /// Tells `say` how many lines were dropped since they were last told,
    /// if any; they count as told only if no line was dropped meanwhile
    /// (the log's own count, said into the log, is lost with the lines
    /// while its reader stays away: it is told again, once it reads).
    pub fn tell_dropped(&mut self, say: impl FnOnce(usize)) {
        let dropped = self.dropped();
        let new = dropped.saturating_sub(self.reported);
        if new == 0 {
            return;
        }
        say(new);
        if self.dropped() == dropped {
            self.reported = dropped;
        }
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
        let (mut writer, mut watch, guard) = stream(Stuck(gate.clone()), "test-out").unwrap();
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

    /// The count of dropped lines, told into the stream that dropped them
    /// while its reader is away, is lost with them: it is told again, in
    /// full, once a line gets through.
    #[test]
    fn a_count_told_into_a_stuck_stream_is_told_again() {
        let gate = Arc::new(Mutex::new(()));
        let held = gate.lock().unwrap();
        let (writer, mut watch, guard) = stream(Stuck(gate.clone()), "test-told").unwrap();
        let line = |w: &NonBlocking, text: &str| {
            let mut w = w.clone();
            w.write_all(text.as_bytes()).unwrap();
        };
        for i in 0..2 * QUEUED_LINES {
            line(&writer, &format!("line {i}\n"));
        }
        let mut told = Vec::new();
        watch.tell_dropped(|n| {
            told.push(n);
            line(&writer, "dropped, with its count\n");
        });
        drop(held);
        // The queue drains: the next line gets through.
        std::thread::sleep(std::time::Duration::from_millis(300));
        watch.tell_dropped(|n| {
            told.push(n);
            line(&writer, "told\n");
        });
        assert_eq!(told.len(), 2, "{told:?}");
        assert!(told[1] > told[0], "{told:?}");
        watch.tell_dropped(|n| told.push(n));
        assert_eq!(
            told.len(),
            2,
            "each count is told once it got through: {told:?}"
        );
        drop(guard);
    }

    /// A reader that closed its end (EPIPE), as a supervisor that took
    /// the ready line and closed the pipe.
    struct Gone;

    impl Write for Gone {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_a_closed_reader_refused_are_counted_dropped() {
        let (mut writer, mut watch, guard) = stream(Gone, "test-gone").unwrap();
        for i in 0..10 {
            writer.write_all(format!("line {i}\n").as_bytes()).unwrap();
        }
        // Written by the stream's thread: wait for it.
        drop(guard);
        assert_eq!(watch.newly_dropped(), Some(10));
        assert_eq!(watch.newly_dropped(), None);
    }
}
