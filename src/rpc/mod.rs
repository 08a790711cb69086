//! Remote plugin calls. A node serving a plugin advertises an endpoint in its
//! replicated record; any node calls it through a tribe: the router picks a
//! live member of that tribe that serves the plugin (this node first, then
//! the one with the fewest calls outstanding), fails over when a host refuses
//! or cannot be reached before the call ran, and every call ends with a reply
//! or an error. A blocking call from a host's thread borrows a stream of its
//! own, whose answer that thread reads (`client::borrowed`); other calls
//! share one multiplexed stream per host, on the node's
//! TCP port (sealed like every stream); overlapping large calls spread over
//! a few (see `client`).

internal_mod!(call);
internal_mod!(client);
internal_mod!(outbox);
internal_mod!(proto);
pub mod responder;
mod running;
internal_mod!(server);
pub(crate) mod tcp_writer;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::records::PluginKind;

/// What a call is addressed to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallTarget {
    /// Tribe whose live members may serve the call.
    pub tribe: String,
    /// Plugin name.
    pub plugin: String,
    /// Plugin version; `None` takes any version a host serves: the
    /// highest (compared as strings) it advertises, and, should it have
    /// stopped serving that one since, the next one it serves.
    pub version: Option<String>,
    /// Plugin kind.
    pub kind: PluginKind,
}

impl CallTarget {
    /// A target for any version of `plugin`.
    pub fn new(tribe: &str, plugin: &str, kind: PluginKind) -> CallTarget {
        CallTarget {
            tribe: tribe.into(),
            plugin: plugin.into(),
            version: None,
            kind,
        }
    }

    /// A name no tribe or plugin could have, or a version no plugin could
    /// be served under, is the caller's error (as it is for `serve`), not
    /// a missing tribe or provider.
    pub(crate) fn check(&self) -> crate::Result<()> {
        crate::names::check("tribe name", &self.tribe)?;
        crate::names::check("plugin name", &self.plugin)?;
        if let Some(version) = &self.version {
            crate::names::check_version(version)?;
        }
        Ok(())
    }
}

/// What a handler learns about a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallInfo {
    /// Calling node.
    pub caller: String,
    /// Tribe the call came through.
    pub tribe: String,
    /// Plugin name.
    pub plugin: String,
    /// Plugin version.
    pub version: String,
    /// How long the caller still waits; the handler is cut after that.
    pub budget: Duration,
}

/// A handler's error, returned to the caller as [`crate::Error::Remote`].
/// An empty code reaches the caller as `"error"`; a code over 256 bytes or
/// a message over 64 KiB is cut (and ends with `…`). The code `"timeout"`
/// is reserved: it reaches the caller as [`crate::Error::Timeout`] (without
/// the message), as a host's answer to a handler that overran its budget.
/// The code `"too_large"` is the host's own for a reply over the caller's
/// limit, counted so (`too_large`) by the caller: keep it for that.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerError {
    /// Short stable code chosen by the handler.
    pub code: String,
    /// Human-readable message.
    pub message: String,
}

impl HandlerError {
    /// A handler error.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> HandlerError {
        HandlerError {
            code: code.into(),
            message: message.into(),
        }
    }
}

/// The future a handler returns.
pub(crate) type HandlerFuture = Pin<Box<dyn Future<Output = Result<Vec<u8>, HandlerError>> + Send>>;
/// A served plugin's handler.
pub(crate) type Handler = Arc<dyn Fn(CallInfo, Vec<u8>) -> HandlerFuture + Send + Sync>;

/// Bounds of the call path. Start from [`RpcLimits::default`]
/// (`#[non_exhaustive]`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RpcLimits {
    /// Largest payload of a call or reply.
    pub max_payload: usize,
    /// Calls in flight on one connection before the next is `Overloaded`.
    pub max_inflight_per_conn: usize,
    /// Calls this node may have in flight, all hosts together.
    pub max_inflight: usize,
    /// Calls this node's handlers may run at once.
    pub max_serving: usize,
    /// Inbound call streams served at once (at least 1). One more is
    /// refused with a frame saying so, which its caller's calls see as
    /// `Overloaded` (and may fail over), and counted in `streams_refused`.
    pub max_streams: usize,
    /// Rounds over all holders of a plugin artifact before it is reported
    /// unavailable.
    pub artifact_rounds: u32,
    /// Pause after the first failed round; it doubles up to 8 s. Shorter
    /// retries sooner but loads the holders more when an artifact is missing.
    pub artifact_backoff: Duration,
}

impl Default for RpcLimits {
    fn default() -> Self {
        RpcLimits {
            max_payload: 4 * 1024 * 1024,
            max_inflight_per_conn: 256,
            max_inflight: 4096,
            max_serving: 1024,
            max_streams: 1024,
            artifact_rounds: 6,
            artifact_backoff: Duration::from_millis(500),
        }
    }
}

/// Counters of the call path (read by `/metrics`).
#[derive(Debug, Default)]
// The call path's own counters; read them through `Node::rpc_stats`.
#[doc(hidden)]
pub struct RpcCounters {
    /// Calls answered with a reply.
    pub ok: AtomicU64,
    /// Calls with no live provider.
    pub no_provider: AtomicU64,
    /// Calls past their deadline.
    pub timeout: AtomicU64,
    /// Calls whose handler returned an error.
    pub remote_error: AtomicU64,
    /// Calls refused for size.
    pub too_large: AtomicU64,
    /// Calls refused for load, here or at every host.
    pub overloaded: AtomicU64,
    /// Calls whose host went away with the call in flight.
    pub disconnected: AtomicU64,
    /// Calls not sent: this process could not open a connection (out of
    /// descriptors, socket buffers or memory).
    pub not_sent: AtomicU64,
    /// Calls to a tribe this node does not know (never created, or
    /// deleted): no member was asked.
    pub unknown_tribe: AtomicU64,
    /// Calls that moved to another host after a refusal or a failed connect.
    pub failovers: AtomicU64,
    /// Calls this node's handlers served.
    pub served: AtomicU64,
    /// Calls this node refused to serve.
    pub refused: AtomicU64,
    /// Calls served here whose handler's reply was over `max_payload`
    /// (each became a `too_large` error for its caller).
    pub replies_too_large: AtomicU64,
    /// Handlers that panicked (each became a `Remote` error).
    pub panics: AtomicU64,
    /// Call streams cut for a malformed, unauthentic or stalled frame.
    pub stream_errors: AtomicU64,
    /// Call streams refused at the bound of streams served at once.
    pub streams_refused: AtomicU64,
    /// Artifact chunks served.
    pub chunks_served: AtomicU64,
    /// Artifacts fetched and verified.
    pub artifacts_fetched: AtomicU64,
    /// Artifact holders that sent bytes not matching the hash.
    pub artifacts_corrupt: AtomicU64,
    /// Artifacts given up on.
    pub artifacts_unavailable: AtomicU64,
    /// Calls served here that their caller abandoned before the answer:
    /// it cancelled the call (the handler is stopped, or told, and its
    /// place freed at once), or its stream ended with the call running.
    pub cancelled: AtomicU64,
    /// Calls made here that their caller gave up on before they ended (a
    /// dropped future, a cancelled context or task).
    pub abandoned: AtomicU64,
}

/// A snapshot of [`RpcCounters`].
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct RpcStats {
    /// Calls answered with a reply.
    pub ok: u64,
    /// Calls with no live provider.
    pub no_provider: u64,
    /// Calls past their deadline.
    pub timeout: u64,
    /// Calls whose handler returned an error.
    pub remote_error: u64,
    /// Calls refused for size.
    pub too_large: u64,
    /// Calls refused for load.
    pub overloaded: u64,
    /// Calls whose host went away with the call in flight.
    pub disconnected: u64,
    /// Calls not sent: this process could not open a connection (out of
    /// descriptors, socket buffers or memory; the error is `Io`).
    pub not_sent: u64,
    /// Calls to a tribe this node does not know (never created, or
    /// deleted; the error is `UnknownTribe`).
    pub unknown_tribe: u64,
    /// Failovers to another host.
    pub failovers: u64,
    /// Calls served here.
    pub served: u64,
    /// Calls refused here.
    pub refused: u64,
    /// Replies over `max_payload` here (each a `too_large` error).
    pub replies_too_large: u64,
    /// Handler panics here.
    pub panics: u64,
    /// Call streams cut for a malformed, unauthentic or stalled frame (a
    /// caller closing its stream mid-frame, giving up, is not one).
    pub stream_errors: u64,
    /// Call streams refused at the bound.
    pub streams_refused: u64,
    /// Artifact chunks served.
    pub chunks_served: u64,
    /// Artifacts fetched and verified.
    pub artifacts_fetched: u64,
    /// Corrupt artifact holders met.
    pub artifacts_corrupt: u64,
    /// Artifacts given up on.
    pub artifacts_unavailable: u64,
    /// Calls served here that their caller abandoned before the answer (a
    /// cancel, or its stream's end with the call running).
    pub cancelled: u64,
    /// Calls made here that their caller gave up on before they ended.
    pub abandoned: u64,
    /// Gauge: calls made here and not over yet.
    pub in_flight: u64,
    /// Gauge: calls served here whose handler still holds its place (a
    /// handler at work, or a responder a host holds unanswered, also past
    /// the call's budget or its caller's cancel); at `max_serving` new
    /// calls are refused as overloaded.
    pub serving: u64,
    /// Gauge: call streams other nodes opened to this one, open now.
    pub streams_accepted: u64,
}

impl RpcCounters {
    /// Adds one to `c`.
    pub fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// A snapshot.
    pub fn stats(&self) -> RpcStats {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        RpcStats {
            ok: g(&self.ok),
            no_provider: g(&self.no_provider),
            timeout: g(&self.timeout),
            remote_error: g(&self.remote_error),
            too_large: g(&self.too_large),
            overloaded: g(&self.overloaded),
            disconnected: g(&self.disconnected),
            not_sent: g(&self.not_sent),
            unknown_tribe: g(&self.unknown_tribe),
            failovers: g(&self.failovers),
            served: g(&self.served),
            refused: g(&self.refused),
            replies_too_large: g(&self.replies_too_large),
            panics: g(&self.panics),
            stream_errors: g(&self.stream_errors),
            streams_refused: g(&self.streams_refused),
            chunks_served: g(&self.chunks_served),
            artifacts_fetched: g(&self.artifacts_fetched),
            artifacts_corrupt: g(&self.artifacts_corrupt),
            artifacts_unavailable: g(&self.artifacts_unavailable),
            cancelled: g(&self.cancelled),
            abandoned: g(&self.abandoned),
            // Gauges: read from the pool and the server (see `Rpc::stats`).
            in_flight: 0,
            serving: 0,
            streams_accepted: 0,
        }
    }
}
