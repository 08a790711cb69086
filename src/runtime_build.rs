//! Building a tokio runtime in a process that may be at its thread limit
//! (or its address-space limit): tokio panics when it cannot start a
//! worker, keeps what it had built (descriptors, at times a thread waiting
//! for ever) and may hang the caller. Used by every face that makes a
//! runtime for its host (the C ABI, pytribe), so that a refused start is an
//! error, and a host that retries it loses nothing.

use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The stack of the runtime's threads: tokio's default, or a larger
/// `RUST_MIN_STACK` a host set (said here so that [`threads_available`]
/// tries the same: under an address-space limit, small stacks fit where the
/// workers' do not).
fn worker_stack() -> usize {
    let asked = std::env::var("RUST_MIN_STACK")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok());
    asked.unwrap_or(0).max(2 * 1024 * 1024)
}

/// Blocks the host's asynchronous signals (SIGINT, SIGTERM, SIGCHLD, ...)
/// on the calling thread: a thread a face makes for libtribe calls it first,
/// so that process-directed signals reach the host's own threads.
pub fn block_async_signals() {
    crate::ffi::node::block_async_signals()
}

/// Has every thread a node makes for itself (policies, data-dir writes)
/// block the host's asynchronous signals as it starts, whatever the mask
/// of the host thread that started the node (pytribe's; the C ABI sets its
/// own, which also carries its log sink). The first registration stays.
pub fn block_signals_on_node_threads() {
    crate::blocking::set_inherit(|| Box::new(block_async_signals));
}

/// Runs `f` with the host's asynchronous signals blocked on the calling
/// (host) thread, so that every thread `f` makes starts with them blocked
/// (a node's own threads among them); the thread's mask is restored after.
pub fn with_signals_blocked<T>(f: impl FnOnce() -> T) -> T {
    crate::ffi::node::with_signals_blocked(f)
}

/// How long building a runtime may take before the start gives up.
const BUILD_WAIT: Duration = Duration::from_secs(10);

/// Builds `builder`'s runtime of `workers` threads, with `extra` more
/// threads the caller will make next, or an error saying why: the threads
/// are tried first (made, all alive at once, then ended), then the runtime
/// is built on a thread of its own under `catch_unwind`, waited for at most
/// 10 s (a thread count that falls between the two is caught there; the
/// one stuck thread is left).
pub fn build(
    mut builder: tokio::runtime::Builder,
    workers: usize,
    extra: usize,
) -> std::io::Result<tokio::runtime::Runtime> {
    let no_threads = |why: &str| {
        std::io::Error::other(format!(
            "cannot start the node's threads ({why}); is the process at its thread or address-space limit?"
        ))
    };
    let stack = worker_stack();
    builder.thread_stack_size(stack);
    // And the thread that builds it, alive while the workers start.
    threads_available(workers + extra + 1, stack).map_err(|e| no_threads(&e.to_string()))?;
    let (built, result) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("tribe-start".into())
        .spawn(move || {
            let outcome =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| builder.build()));
            let _ = built.send(outcome);
        })
        .map_err(|e| no_threads(&e.to_string()))?;
    match result.recv_timeout(BUILD_WAIT) {
        Ok(Ok(Ok(runtime))) => Ok(runtime),
        // tokio's own error names no step (out of descriptors, say).
        Ok(Ok(Err(e))) => Err(std::io::Error::new(
            e.kind(),
            format!("cannot make the node's runtime (its event loop): {e}"),
        )),
        Ok(Err(_)) => Err(no_threads("a thread could not be made")),
        Err(_) => Err(no_threads("no answer in 10 s")),
    }
}

/// Whether `n` more threads can be made now.
fn threads_available(n: usize, stack: usize) -> std::io::Result<()> {
    let gate = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
    let mut made = Vec::with_capacity(n);
    let mut failed = None;
    for _ in 0..n {
        let gate = gate.clone();
        let spawned = std::thread::Builder::new()
            .name("tribe-start".into())
            .stack_size(stack)
            .spawn(move || {
                let (open, changed) = &*gate;
                let mut open = open.lock().unwrap_or_else(|p| p.into_inner());
                while !*open {
                    open = changed.wait(open).unwrap_or_else(|p| p.into_inner());
                }
            });
        match spawned {
            Ok(thread) => made.push(thread),
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    *gate.0.lock().unwrap_or_else(|p| p.into_inner()) = true;
    gate.1.notify_all();
    for thread in made {
        let _ = thread.join();
    }
    failed.map_or(Ok(()), Err)
}
