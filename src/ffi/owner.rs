//! Which process a node's objects belong to. After `fork()` the child has
//! none of the node's threads (only the forking thread is copied), so a
//! wait on them would never end, and a write to the sockets it shares with
//! the parent would corrupt the parent's streams: in the child, the
//! parent's node and responders refuse work with `TRIBE_FORKED`, and
//! freeing them releases nothing.
//!
//! Every C call checks this, so it must be cheap: glibc no longer caches
//! the process id, and `getpid` is a system call. A fork handler counts
//! the forks instead, and the check compares that count; only when the
//! handler could not be registered does it ask for the process id. The
//! handler also keeps the process id, which objects record for messages.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Once;

use super::error::{FfiError, TRIBE_FORKED};

/// Forks of this process's ancestors' line since the handler was
/// registered: bumped in each child, so a child's count differs from the
/// one its parent's objects recorded.
static FORKS: AtomicU64 = AtomicU64::new(0);
/// This process's id while forks are counted (set again in each child).
static PID: AtomicU32 = AtomicU32::new(0);
static REGISTER: Once = Once::new();
static COUNTING: AtomicBool = AtomicBool::new(false);

/// Runs in the child of every `fork()`, on its only thread; it touches
/// nothing but atomics, `getpid` and `close`, which are async-signal-safe.
extern "C" fn forked() {
    // SAFETY: getpid takes no arguments and cannot fail.
    PID.store(unsafe { libc::getpid() } as u32, Ordering::Relaxed);
    FORKS.fetch_add(1, Ordering::Relaxed);
    super::fork_locks::close_in_child();
}

/// Whether forks are counted (registers the handler on first use).
pub(super) fn watch_forks() -> bool {
    REGISTER.call_once(|| {
        PID.store(std::process::id(), Ordering::Relaxed);
        // SAFETY: `forked` is a plain function that lives as long as this
        // library's code (glibc drops the handlers of a library that is
        // unloaded) and only bumps an atomic, which is allowed in a child
        // of a threaded process.
        let rc = unsafe { libc::pthread_atfork(None, None, Some(forked)) };
        COUNTING.store(rc == 0, Ordering::Release);
    });
    COUNTING.load(Ordering::Acquire)
}

/// The process that made an object.
#[derive(Debug, Clone, Copy)]
pub(super) struct Owner {
    pid: u32,
    /// [`FORKS`] when the object was made (`None`: forks are not counted).
    forks: Option<u64>,
}

impl Owner {
    /// The calling process.
    pub fn here() -> Owner {
        if watch_forks() {
            Owner {
                pid: PID.load(Ordering::Relaxed),
                forks: Some(FORKS.load(Ordering::Relaxed)),
            }
        } else {
            Owner {
                pid: std::process::id(),
                forks: None,
            }
        }
    }

    /// Whether the calling process is a child forked after the object was
    /// made.
    pub fn is_elsewhere(self) -> bool {
        match self.forks {
            Some(forks) => FORKS.load(Ordering::Relaxed) != forks,
            None => std::process::id() != self.pid,
        }
    }

    /// Refuses use of `what` from a forked child.
    pub fn check(self, what: &str) -> Result<(), FfiError> {
        if self.is_elsewhere() {
            return Err(FfiError::new(
                TRIBE_FORKED,
                format!(
                    "{what} belongs to process {}; a process forked from it cannot use it \
                     (start a new node in the child)",
                    self.pid
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_object_of_this_process_is_here() {
        let owner = Owner::here();
        assert!(!owner.is_elsewhere());
        assert!(owner.check("the node").is_ok());
    }

    /// The child of a fork sees its parent's objects as elsewhere; the
    /// parent still owns them.
    #[test]
    fn a_forked_child_sees_the_object_elsewhere() {
        let owner = Owner::here();
        assert!(owner.forks.is_some(), "the fork handler was not registered");
        // SAFETY (test): the child only reads atomics and calls _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            // SAFETY (test): getpid cannot fail.
            let me = unsafe { libc::getpid() } as u32;
            let code = if owner.is_elsewhere() && Owner::here().pid == me {
                0
            } else {
                1
            };
            // SAFETY (test): ends the child at once, running no Rust code.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY (test): waits for the child made above.
        let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(waited, pid);
        assert!(libc::WIFEXITED(status));
        assert_eq!(
            libc::WEXITSTATUS(status),
            0,
            "the child saw the object as its own"
        );
        assert!(!owner.is_elsewhere(), "the parent lost its object");
    }
}
