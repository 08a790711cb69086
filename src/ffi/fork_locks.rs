//! Data-dir locks a forked child lets go of. A node's lock is an `flock`
//! on its lock file, which belongs to the open file: a child made by
//! `fork()` (without `exec`) shares it, and kept the directory locked after
//! its parent crashed, so the parent's restart found it "in use". The
//! child's copy of each lock descriptor is closed in the child, at once,
//! by the fork handler (`close` is async-signal-safe); the parent keeps
//! its lock.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicI32, Ordering};

/// Lock descriptors of this process's nodes (-1: a free slot). A node
/// beyond the slots keeps its lock also in a forked child.
static HELD: [AtomicI32; 64] = [const { AtomicI32::new(-1) }; 64];

/// A lock descriptor listed for forks; unlisted when dropped, before the
/// descriptor closes (so no later file at that number is closed in a child).
#[derive(Debug)]
pub(crate) struct Listed {
    slot: Option<usize>,
    /// The process that listed it: a forked child's copy unlists nothing
    /// (the fork handler emptied the slots; the child may fill them again).
    pid: u32,
}

/// Lists `fd` (registering the fork handler on first use).
pub(crate) fn list(fd: RawFd) -> Listed {
    let pid = std::process::id();
    if !super::owner::watch_forks() {
        return Listed { slot: None, pid };
    }
    let slot = HELD.iter().position(|s| {
        s.compare_exchange(-1, fd, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    });
    Listed { slot, pid }
}

impl Drop for Listed {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.filter(|_| self.pid == std::process::id()) {
            HELD[slot].store(-1, Ordering::Release);
        }
    }
}

/// In a forked child, on its only thread: closes the child's copies.
pub(super) fn close_in_child() {
    for slot in &HELD {
        let fd = slot.swap(-1, Ordering::AcqRel);
        if fd >= 0 {
            // SAFETY: `fd` is a lock descriptor the parent listed, copied
            // into this child by fork; nothing in the child uses it (the
            // parent's nodes refuse work here, and a copied lock, dropped
            // in the child, neither unlocks nor closes it: `DirLock`'s
            // drop), and close is async-signal-safe.
            unsafe { libc::close(fd) };
        }
    }
}
