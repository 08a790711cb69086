//! Joining a running cluster (`tribe_node_join_cluster`), also with a
//! limit of the caller's and a cancel token (`_cancellable`).

use std::ffi::c_char;
use std::time::Duration;

use super::cancel::TribeCancel;
use super::cast;
use super::error::{FfiError, TRIBE_TIMEOUT};
use super::node::{node_handle, with_signals_blocked, TribeNode};
use crate::Error;

/// Joins the cluster through `places` (`places_len` strings `host:port`:
/// addresses, or names looked up), also while this node is in a cluster
/// already (two clusters then merge; their records merge as every record
/// does, the later write winning: a tribe or policy deleted on one side
/// within the tombstone grace deletes one of that name on the other when
/// the deletion is the later write): each place gets a join exchange, in
/// which this node sends its view and takes the peer's. The addresses
/// become seeds too, those that did not answer also (a node alone, or one
/// that loses every peer later, tries them again). Blocks until every
/// exchange ended: up to 5 s for the lookups plus 12 s for the exchanges
/// (those still under way then are given up; the ones that completed
/// count); a node runs 16 joins at once, the others wait their turn; at most 256
/// addresses are tried, the first ones, however many the names give;
/// `tribe_node_shutdown` from another thread ends it at once
/// (`TRIBE_SHUTTING_DOWN`). A name's lookup runs on a thread of its own
/// (the resolver cannot be cancelled): one that hangs outlives the node
/// until the resolver gives up; 32 run at once in a process, a name past
/// that fails at once. `*joined` (may be NULL) receives how many addresses
/// completed their exchange, 0 on error.
///
/// Errors: `TRIBE_INVALID_ARGUMENT` (no place, more than 256, one not
/// `host:port` or of port 0, only this node's own address), `TRIBE_IO`
/// when no address completed its exchange (the message names each and
/// why: refused, no answer, another key, a name that does not resolve,
/// this node itself through another of its addresses),
/// `TRIBE_SHUTTING_DOWN`.
#[no_mangle]
pub extern "C" fn tribe_node_join_cluster(
    node: *const TribeNode,
    places: *const *const c_char,
    places_len: usize,
    joined: *mut usize,
    err: *mut *mut FfiError,
) -> u32 {
    join(node, places, places_len, None, None, joined, err)
}

/// Like `tribe_node_join_cluster`, but waits at most `timeout_ms`
/// milliseconds in all (0: no limit of the caller's; the join's own are
/// 5 s for the lookups plus 12 s for the exchanges): then its exchanges
/// still under way are given up, and the addresses reached by then count
/// (`TRIBE_OK`, `*joined` of them, as memberlist's `Join` succeeds when
/// any address answered; when none was reached, `TRIBE_TIMEOUT` if no
/// address had answered at all, else `TRIBE_IO` naming each and why:
/// another key, refused, still under way at the limit). `cancel` (may
/// be NULL) ends it at once with `TRIBE_CANCELLED` when triggered, from
/// another thread or before the call (bad places are still told as
/// `TRIBE_INVALID_ARGUMENT`). A join given up drops its exchanges still
/// under way at once (their connections closed, their addresses not kept
/// as seeds unless a join exchange completed with them); those that
/// completed before keep what they merged (the peers' members, tribes and
/// catalogs), and their addresses stay seeds; `*joined` is 0 on an error.
/// `cancel` must stay alive until this function returns.
#[no_mangle]
pub extern "C" fn tribe_node_join_cluster_cancellable(
    node: *const TribeNode,
    places: *const *const c_char,
    places_len: usize,
    timeout_ms: u64,
    cancel: *const TribeCancel,
    joined: *mut usize,
    err: *mut *mut FfiError,
) -> u32 {
    let limit = (timeout_ms > 0).then(|| Duration::from_millis(timeout_ms));
    join(
        node,
        places,
        places_len,
        limit,
        cast::opt_ref(cancel),
        joined,
        err,
    )
}

fn join(
    node: *const TribeNode,
    places: *const *const c_char,
    places_len: usize,
    limit: Option<Duration>,
    cancel: Option<&TribeCancel>,
    joined: *mut usize,
    err: *mut *mut FfiError,
) -> u32 {
    ffi_call!(err, [joined], {
        let places = cast::texts(places, places_len, "places")?;
        let handle: &TribeNode = node_handle(node)?;
        // Bad places are told as such, also with a token triggered already.
        crate::api::join_places(&places)?;
        let n = with_signals_blocked(|| {
            let node = handle.live()?;
            handle.block_on(async {
                let join = async {
                    match limit {
                        None => Ok(node.join_cluster(&places).await?),
                        Some(l) => match node.join_cluster_within(&places, l).await {
                            Err(Error::Timeout { .. }) => Err(FfiError::new(
                                TRIBE_TIMEOUT,
                                format!("the join reached no address within {} ms", l.as_millis()),
                            )),
                            r => Ok(r?),
                        },
                    }
                };
                let cancelled = async {
                    match cancel {
                        Some(c) => c.triggered().await,
                        None => std::future::pending().await,
                    }
                };
                // Dropping the join ends its exchanges. A token triggered
                // already ends it before it starts.
                tokio::select! {
                    biased;
                    () = cancelled => Err(TribeCancel::error("the join")),
                    n = join => n,
                }
            })
        })?;
        cast::store(joined, n);
        Ok(())
    })
}
