//! The poll group (`tribe_group`): nodes of one process that share one
//! host-driven runtime for their call streams, so that one host thread can
//! drive them all and wait for the events of any of them.
//!
//! Without a group each node's streams run on a runtime of their own, and
//! each node needs a thread waiting in its own `tribe_node_next_events` to
//! read them. A program that runs several nodes (a Go process with a node
//! per tribe, a test) then keeps a thread blocked per node, and a call from
//! one of its nodes to another wakes the other's thread. In a group the
//! thread that waits in `tribe_group_wait` reads every member's sockets
//! itself, and a call between two members is answered without a wake.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use super::cast;
use super::error::FfiError;
use super::host_io::HostIo;
use super::owner::Owner;
use crate::Error;

/// A poll group.
pub struct TribeGroup {
    pub(super) core: Arc<GroupCore>,
    owner: Owner,
}

/// What the group's members share; it lives until the group handle and the
/// last member are freed.
pub(super) struct GroupCore {
    pub(super) io: Arc<HostIo>,
    /// Notified when a member queues an event or stops, and by
    /// `tribe_group_wake`; a notification nobody waits for is kept for the
    /// next wait.
    pub(super) ready: Arc<Notify>,
    /// The process that made the group: a config carrying it into a
    /// forked child must not start a node on the parent's runtime.
    pub(super) owner: Owner,
}

impl Drop for GroupCore {
    fn drop(&mut self) {
        // In a forked child the runtime's threads are the parent's: its
        // shutdown would wait on them for good. The child releases nothing.
        if self.owner.is_elsewhere() {
            std::mem::forget(self.io.clone());
        }
    }
}

/// Makes a poll group. Pass it to `tribe_config_set_group` for each node
/// that joins it, and wait for the events of all of them on one thread with
/// `tribe_group_wait`. `*out` receives an owned group: free it with
/// `tribe_group_free` (its members keep what they share until they are
/// freed too). Starts one thread (which drives the members' call streams
/// while no host thread waits). Does not block.
#[no_mangle]
pub extern "C" fn tribe_group_new(out: *mut *mut TribeGroup, err: *mut *mut FfiError) -> u32 {
    ffi_call!(err, [out], {
        let out = cast::out(out, "out")?;
        let io =
            super::node::with_signals_blocked(|| HostIo::new(super::node::block_async_signals))
                .map_err(Error::from)?;
        let group = TribeGroup {
            core: Arc::new(GroupCore {
                io: Arc::new(io),
                ready: Arc::new(Notify::new()),
                owner: Owner::here(),
            }),
            owner: Owner::here(),
        };
        cast::write(out, cast::into_handle(group));
        Ok(())
    })
}

/// Frees the group handle. Nodes started in it go on working; the runtime
/// they share stops when the last of them is freed. When no node of the
/// group is left, it stops the group's thread and runtime (up to about
/// 2 s). No other thread may use the handle during or after this call.
/// NULL is ignored.
#[no_mangle]
pub extern "C" fn tribe_group_free(group: *mut TribeGroup) {
    ffi_infallible!((), { cast::free_owned_handle(group, |g| &g.owner) })
}

/// Waits until a member of the group queues an event or stops, or
/// `tribe_group_wake` is called, up to `timeout_ms` milliseconds (0: do
/// not wait; negative: no limit). While it waits, the calling thread reads
/// every member's incoming calls and answers from their sockets itself, as
/// `tribe_node_next_events` does for one node; with 0 it does so for one
/// turn. (When another thread drives the group's streams at that moment,
/// in its own wait, it only waits.) Then take the events with
/// `tribe_node_next_events(node, 0, ...)`
/// from each member. Returns `TRIBE_OK` also when the time ran out.
/// It waits for a notification, not for a state: one that came while no
/// thread waited is kept for the next wait (one at most), but events left
/// untaken and a member that stopped before do not end a later wait. So
/// take from every member (until it gives none, or `TRIBE_SHUTTING_DOWN`
/// once it stopped) before waiting again; it may also return once for
/// events already taken. With several threads waiting, each notification
/// of events ends one of their waits (the one woken takes for all); a
/// member that stops ends them all. Blocks the calling thread up to
/// `timeout_ms`.
#[no_mangle]
pub extern "C" fn tribe_group_wait(
    group: *const TribeGroup,
    timeout_ms: i32,
    err: *mut *mut FfiError,
) -> u32 {
    ffi_call!(err, {
        let group = group_handle(group)?;
        let core = &group.core;
        if timeout_ms == 0 {
            core.io.turn();
            return Ok(());
        }
        let timeout = u64::try_from(timeout_ms).ok().map(Duration::from_millis);
        core.io.drive(async {
            let ready = core.ready.notified();
            match timeout {
                None => ready.await,
                Some(t) => {
                    let _ = tokio::time::timeout(t, ready).await;
                }
            }
        });
        Ok(())
    })
}

/// Makes one `tribe_group_wait` in progress, or the next one, return at
/// once (for a host that added a node to the set it takes events from).
/// Does not block; callable from any thread.
#[no_mangle]
pub extern "C" fn tribe_group_wake(group: *const TribeGroup, err: *mut *mut FfiError) -> u32 {
    ffi_call!(err, {
        group_handle(group)?.core.ready.notify_one();
        Ok(())
    })
}

fn group_handle<'a>(group: *const TribeGroup) -> Result<&'a TribeGroup, FfiError> {
    let group = cast::handle(group, "group")?;
    group.owner.check("the group")?;
    Ok(group)
}

/// The group a config names, for `tribe_config_set_group`.
pub(super) fn core_of(group: *const TribeGroup) -> Result<Arc<GroupCore>, FfiError> {
    Ok(group_handle(group)?.core.clone())
}
