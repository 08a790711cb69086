//! Which process a node's objects belong to. After `fork()` the child has
//! none of the node's threads (only the forking thread is copied), so a
//! wait on them would never end, and a write to the sockets it shares with
//! the parent would corrupt the parent's streams: in the child, the
//! parent's node and responders refuse work with `TRIBE_FORKED`, and
//! freeing them releases nothing.

use super::error::{FfiError, TRIBE_FORKED};

/// The process that made an object.
#[derive(Debug, Clone, Copy)]
pub(super) struct Owner(u32);

impl Owner {
    /// The calling process.
    pub fn here() -> Owner {
        Owner(std::process::id())
    }

    /// Whether the calling process is a child forked after the object was
    /// made.
    pub fn is_elsewhere(self) -> bool {
        std::process::id() != self.0
    }

    /// Refuses use of `what` from a forked child.
    pub fn check(self, what: &str) -> Result<(), FfiError> {
        if self.is_elsewhere() {
            return Err(FfiError::new(
                TRIBE_FORKED,
                format!(
                    "{what} belongs to process {}; a process forked from it cannot use it \
                     (start a new node in the child)",
                    self.0
                ),
            ));
        }
        Ok(())
    }
}
