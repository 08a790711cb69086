//! A node's own thread for blocking work (policy evaluations, data-dir
//! writes), started with the node. Nothing on the driver's path creates a
//! thread later: tokio's `spawn_blocking` panics when the OS refuses one
//! (a process at its thread limit), which would take the driver down with
//! it, while a thread that cannot be started here fails the start cleanly.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, OnceLock};

type Job = Box<dyn FnOnce() + Send>;

/// What a thread made here takes over from the thread that made it (the
/// C ABI's log sink and signal mask), as the runtime's own threads do.
/// Set once by an embedding layer; called on the making thread, its result
/// runs first on the new one.
pub(crate) type Inherit = fn() -> Box<dyn FnOnce() + Send>;

static INHERIT: OnceLock<Inherit> = OnceLock::new();

/// Registers what new threads inherit (the first registration stays).
pub(crate) fn set_inherit(inherit: Inherit) {
    let _ = INHERIT.set(inherit);
}

/// What a thread about to be made should run first (see [`Inherit`]),
/// captured on the making thread: for threads made elsewhere in the crate
/// (a seed's name lookup, a policy's compile), which must block the
/// host's signals as much as the node's own.
pub(crate) fn inherited() -> Option<Box<dyn FnOnce() + Send>> {
    INHERIT.get().map(|capture| capture())
}

/// Threads that ran [`inherited`]'s hook: the mark of the thread that
/// made them ([`mark`]), their name, and whether SIGTERM was blocked on
/// them after it: what the tests look at.
#[cfg(test)]
pub(crate) static MASKS_SEEN: std::sync::Mutex<Vec<(u64, String, bool)>> =
    std::sync::Mutex::new(Vec::new());

#[cfg(test)]
thread_local! {
    /// A test's own mark, so that it finds the threads it made among
    /// those of tests running beside it.
    pub(crate) static MARK: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// The calling thread's mark (see [`MARK`]).
#[cfg(test)]
pub(crate) fn mark() -> u64 {
    MARK.with(|m| m.get())
}

/// Notes the calling thread's mask in [`MASKS_SEEN`], under `mark`.
#[cfg(test)]
pub(crate) fn note_mask(mark: u64) {
    use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow, Signal};
    let mut mask = SigSet::empty();
    let _ = pthread_sigmask(SigmaskHow::SIG_BLOCK, None, Some(&mut mask));
    let name = std::thread::current().name().unwrap_or("").to_string();
    let blocked = mask.contains(Signal::SIGTERM);
    MASKS_SEEN.lock().unwrap().push((mark, name, blocked));
}

/// Runs jobs one after another on one thread. Dropping this handle lets
/// the queued jobs finish and waits for the thread to end: what it holds
/// (the host's log sink, its thread-locals) goes before the node's free
/// returns, not later, when a host may have reused the descriptors.
pub(crate) struct BlockingThread {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Set as the handle drops: a long job (policies) gives up at its next
    /// step rather than hold the stop (see [`BlockingThread::stopping`]).
    stopping: Arc<AtomicBool>,
    /// The process that started the thread: in a child forked since, the
    /// thread does not exist (nothing to wait for).
    pid: u32,
}

impl BlockingThread {
    /// Starts the thread (named `name`, as `top` and debuggers show it).
    pub fn start(name: &str) -> std::io::Result<BlockingThread> {
        let (jobs, queued) = mpsc::channel::<Job>();
        let inherited = inherited();
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                if let Some(take_over) = inherited {
                    take_over();
                }
                for job in queued {
                    // A job that panics loses its result (its receiver sees
                    // the sender dropped); the thread serves the next one.
                    let _ = catch_unwind(AssertUnwindSafe(job));
                }
            })
            .map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!(
                        "cannot start the {name} thread ({e}); is the process at its thread limit?"
                    ),
                )
            })?;
        Ok(BlockingThread {
            jobs: Some(jobs),
            thread: Some(thread),
            stopping: Arc::new(AtomicBool::new(false)),
            pid: std::process::id(),
        })
    }

    /// Set once the handle drops: a long job checks it between its steps.
    pub fn stopping(&self) -> Arc<AtomicBool> {
        self.stopping.clone()
    }

    /// Runs `f` on the thread; its result comes on the receiver, which
    /// ends without one if `f` panicked.
    pub fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> tokio::sync::oneshot::Receiver<T> {
        let (done, result) = tokio::sync::oneshot::channel();
        // The thread lives as long as this handle, so the send succeeds.
        if let Some(jobs) = &self.jobs {
            let _ = jobs.send(Box::new(move || {
                let _ = done.send(f());
            }));
        }
        result
    }
}

impl Drop for BlockingThread {
    fn drop(&mut self) {
        // The closed queue ends the thread after its last job.
        self.jobs = None;
        self.stopping.store(true, Ordering::Relaxed);
        let Some(thread) = self.thread.take() else {
            return;
        };
        if self.pid != std::process::id() {
            // A forked child's copy: its thread was never here.
            std::mem::forget(thread);
        } else if thread.thread().id() != std::thread::current().id() {
            // A job that dropped its own thread's handle cannot wait for it.
            // A job stuck for good (a lock a fork left held) is left to
            // itself after a while rather than hang the node's stop.
            let until = std::time::Instant::now() + JOIN_WAIT;
            while !thread.is_finished() && std::time::Instant::now() < until {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            if thread.is_finished() {
                let _ = thread.join();
            }
        }
    }
}

/// How long a dropped handle waits for its thread's last job.
const JOIN_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn jobs_run_in_order_and_a_panic_loses_only_its_own_result() {
        let thread = BlockingThread::start("tribe-test").unwrap();
        let first = thread.run(|| std::thread::current().name().map(str::to_string));
        let panicked = thread.run(|| -> u32 { panic!("a job failed") });
        let after = thread.run(|| 7);
        assert_eq!(first.await.unwrap().as_deref(), Some("tribe-test"));
        assert!(panicked.await.is_err());
        assert_eq!(after.await.unwrap(), 7);
    }

    /// Threads made outside the node's start (a policy's compile, a seed's
    /// name lookup, made on a host thread that may take signals) block the
    /// host's signals too. Before, they kept the host thread's mask.
    #[tokio::test]
    async fn threads_made_later_block_the_hosts_signals() {
        crate::runtime_build::block_signals_on_node_threads();
        // Tests beside this one make such threads too (some before the
        // hook was registered): this one looks at its own.
        const MINE: u64 = 0x5167_7e57;
        MARK.with(|m| m.set(MINE));
        crate::policy::Condition::compile("facts.rack == 'r1'").unwrap();
        let _ = crate::seeds::start_lookup("localhost:7946").await;
        let seen: Vec<(String, bool)> = MASKS_SEEN
            .lock()
            .unwrap()
            .iter()
            .filter(|(mark, ..)| *mark == MINE)
            .map(|(_, name, blocked)| (name.clone(), *blocked))
            .collect();
        for name in ["policy-compile", "tribe-seed-lookup"] {
            assert!(
                seen.iter().any(|(n, _)| n == name),
                "{name} not seen: {seen:?}"
            );
        }
        assert!(seen.iter().all(|(_, blocked)| *blocked), "{seen:?}");
    }

    #[test]
    fn a_dropped_handle_waits_for_its_jobs_and_its_thread() {
        let thread = BlockingThread::start("tribe-test").unwrap();
        let held = std::sync::Arc::new(());
        let in_job = held.clone();
        let result = thread.run(move || {
            std::thread::sleep(std::time::Duration::from_millis(50));
            drop(in_job);
        });
        drop(thread);
        drop(result);
        // The job, and what it held, ended before the drop returned.
        assert_eq!(std::sync::Arc::strong_count(&held), 1);
    }

    #[test]
    fn a_job_stuck_for_good_does_not_hold_the_drop() {
        let thread = BlockingThread::start("tribe-test").unwrap();
        let (_never, stuck) = std::sync::mpsc::channel::<()>();
        let (started, has_started) = std::sync::mpsc::channel();
        let _result = thread.run(move || {
            let _ = started.send(());
            let _ = stuck.recv();
        });
        has_started.recv().unwrap();
        let began = std::time::Instant::now();
        drop(thread);
        assert!(began.elapsed() >= JOIN_WAIT);
        assert!(began.elapsed() < JOIN_WAIT * 10, "{:?}", began.elapsed());
    }

    #[test]
    fn a_long_job_that_looks_at_the_flag_ends_with_the_handle() {
        let thread = BlockingThread::start("tribe-test").unwrap();
        let stopping = thread.stopping();
        let (started, has_started) = std::sync::mpsc::channel();
        let result = thread.run(move || {
            let _ = started.send(());
            // A job of many steps (policies), each looking at the flag.
            for _ in 0..3_000 {
                if stopping.load(Ordering::Relaxed) {
                    return false;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            true
        });
        has_started.recv().unwrap();
        drop(thread);
        // Given up at its next step, not run to its end (30 s).
        assert_eq!(result.blocking_recv(), Ok(false));
    }
}
