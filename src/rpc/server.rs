//! The serving side: the handlers this node serves, the artifacts it holds,
//! and the loop that answers one multiplexed call stream. A handler runs in
//! its own task, so one that panics or hangs cannot take the node or the
//! stream down; it is cut at the caller's deadline.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, Semaphore};

use super::proto::{ByteBuf, Refusal, RpcMsg};
use super::{CallInfo, Handler, HandlerError, RpcCounters, RpcLimits};
use crate::records::PluginKind;
use crate::stream::{Opener, Sealer};
use crate::wire;

/// Largest artifact chunk sent in one frame.
pub const MAX_CHUNK: u32 = 256 * 1024;

struct Served {
    kind: PluginKind,
    handler: Handler,
}

/// What this node serves.
pub struct Server {
    handlers: RwLock<HashMap<(String, String), Served>>,
    artifacts: RwLock<HashMap<[u8; 32], Arc<Vec<u8>>>>,
    serving: Arc<Semaphore>,
    limits: RpcLimits,
    counters: Arc<RpcCounters>,
    stopping: AtomicBool,
    /// Set when the node stops without a goodbye: every call stream is cut
    /// at once, as a crash would, so callers see their calls lost.
    killed: tokio::sync::watch::Sender<bool>,
}

impl Server {
    /// A server with nothing registered.
    pub fn new(limits: RpcLimits, counters: Arc<RpcCounters>) -> Server {
        Server {
            handlers: RwLock::new(HashMap::new()),
            artifacts: RwLock::new(HashMap::new()),
            serving: Arc::new(Semaphore::new(limits.max_serving)),
            limits,
            counters,
            stopping: AtomicBool::new(false),
            killed: tokio::sync::watch::Sender::new(false),
        }
    }

    /// The bounds in force.
    pub fn limits(&self) -> &RpcLimits {
        &self.limits
    }

    /// Registers a handler; replaces one of the same name and version.
    pub fn register(&self, name: &str, version: &str, kind: PluginKind, handler: Handler) {
        self.handlers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert((name.into(), version.into()), Served { kind, handler });
    }

    /// Drops a handler; false when there was none.
    pub fn unregister(&self, name: &str, version: &str) -> bool {
        self.handlers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(name.to_string(), version.to_string()))
            .is_some()
    }

    /// The handler for `name` (and `version`, or any) of `kind`.
    pub fn lookup(
        &self,
        name: &str,
        version: Option<&str>,
        kind: PluginKind,
    ) -> Option<(String, Handler)> {
        let handlers = self.handlers.read().unwrap_or_else(|p| p.into_inner());
        handlers
            .iter()
            .filter(|((n, v), s)| {
                n == name && s.kind == kind && version.is_none_or(|want| want == v)
            })
            .max_by(|a, b| a.0 .1.cmp(&b.0 .1))
            .map(|((_, v), s)| (v.clone(), s.handler.clone()))
    }

    /// Keeps an artifact to hand out to members that fetch it.
    pub fn hold_artifact(&self, sha256: [u8; 32], bytes: Arc<Vec<u8>>) {
        self.artifacts
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(sha256, bytes);
    }

    /// An artifact this node holds.
    pub fn artifact(&self, sha256: &[u8; 32]) -> Option<Arc<Vec<u8>>> {
        self.artifacts
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(sha256)
            .cloned()
    }

    /// Refuses new calls from now on.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    /// Refuses new calls and cuts every call stream now.
    pub fn kill(&self) {
        self.stop();
        self.killed.send_replace(true);
    }

    /// Whether the server refuses new calls.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    /// Takes a serving slot, or `None` at the bound.
    pub fn try_slot(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.serving.clone().try_acquire_owned().ok()
    }

    /// Runs one handler within `info.budget`. A panic, an overrun or an
    /// oversized reply becomes an error; a late reply is dropped.
    pub async fn run_handler(
        &self,
        handler: Handler,
        info: CallInfo,
        payload: Vec<u8>,
    ) -> Result<Vec<u8>, HandlerError> {
        let budget = info.budget;
        let panicked = |counters: &RpcCounters| {
            RpcCounters::bump(&counters.panics);
            HandlerError::new("panic", "the handler panicked")
        };
        // Building the future runs user code too.
        let future = match std::panic::catch_unwind(AssertUnwindSafe(|| handler(info, payload))) {
            Ok(f) => f,
            Err(_) => return Err(panicked(&self.counters)),
        };
        // The handler runs in the calling task (no extra hop between
        // threads); a panic is caught here and an overrun drops the future.
        let guarded = futures_util::FutureExt::catch_unwind(AssertUnwindSafe(future));
        let result = match tokio::time::timeout(budget, guarded).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(panicked(&self.counters)),
            Err(_) => Err(HandlerError::new(
                "timeout",
                format!("the handler did not answer within {budget:?}"),
            )),
        };
        match result {
            Ok(reply) if reply.len() > self.limits.max_payload => Err(HandlerError::new(
                "too_large",
                format!(
                    "the reply has {} bytes, over the limit of {}",
                    reply.len(),
                    self.limits.max_payload
                ),
            )),
            other => other,
        }
    }

    /// Answers one call stream until it closes. Frames are read here and
    /// handlers run concurrently; replies go out in completion order.
    pub async fn serve_stream<R, W>(
        self: Arc<Self>,
        reader: R,
        mut writer: W,
        mut sealer: Sealer,
        mut opener: Opener,
    ) where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let (tx, rx) = mpsc::unbounded_channel::<RpcMsg>();
        let writing = tokio::spawn(async move {
            super::proto::write_queued(rx, &mut sealer, &mut writer).await;
        });
        let mut reader = tokio::io::BufReader::with_capacity(64 * 1024, reader);
        let mut killed = self.killed.subscribe();
        if *killed.borrow_and_update() {
            writing.abort();
            return;
        }
        let per_stream = Arc::new(Semaphore::new(self.limits.max_inflight_per_conn));
        loop {
            let body = tokio::select! {
                frame = opener.read_frame(&mut reader) => match frame {
                    Ok(Some(body)) => body,
                    _ => break,
                },
                _ = killed.changed() => {
                    // Cut the stream without flushing what is queued.
                    writing.abort();
                    return;
                }
            };
            let Ok(msg) = wire::decode::<RpcMsg>(&body) else {
                tracing::debug!("malformed call frame; closing the call stream");
                break;
            };
            match msg {
                RpcMsg::Call {
                    id,
                    caller,
                    tribe,
                    plugin,
                    version,
                    kind,
                    budget_ms,
                    payload,
                } => {
                    let refuse = |why: Refusal| {
                        RpcCounters::bump(&self.counters.refused);
                        let _ = tx.send(RpcMsg::Refused { id, why });
                    };
                    if self.is_stopping() {
                        refuse(Refusal::ShuttingDown);
                        continue;
                    }
                    if payload.len() > self.limits.max_payload {
                        refuse(Refusal::TooLarge);
                        continue;
                    }
                    let Some((version, handler)) = self.lookup(&plugin, Some(&version), kind)
                    else {
                        refuse(Refusal::NoSuchPlugin);
                        continue;
                    };
                    let (Ok(stream_slot), Some(node_slot)) =
                        (per_stream.clone().try_acquire_owned(), self.try_slot())
                    else {
                        refuse(Refusal::Overloaded);
                        continue;
                    };
                    let info = CallInfo {
                        caller,
                        tribe,
                        plugin,
                        version,
                        budget: Duration::from_millis(u64::from(budget_ms)),
                    };
                    let server = self.clone();
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        let result = server.run_handler(handler, info, payload).await;
                        RpcCounters::bump(&server.counters.served);
                        let result = result.map(ByteBuf::from).map_err(|e| (e.code, e.message));
                        let _ = tx.send(RpcMsg::Reply { id, result });
                        drop((stream_slot, node_slot));
                    });
                }
                RpcMsg::Fetch {
                    id,
                    sha256,
                    offset,
                    len,
                } => match self.artifact(&sha256) {
                    Some(bytes) => {
                        let start = usize::try_from(offset)
                            .unwrap_or(usize::MAX)
                            .min(bytes.len());
                        let end = start
                            .saturating_add(len.min(MAX_CHUNK) as usize)
                            .min(bytes.len());
                        let _ = tx.send(RpcMsg::Chunk {
                            id,
                            data: bytes[start..end].to_vec(),
                        });
                    }
                    None => {
                        let _ = tx.send(RpcMsg::Refused {
                            id,
                            why: Refusal::NoSuchPlugin,
                        });
                    }
                },
                // Answers only travel the other way.
                RpcMsg::Reply { .. } | RpcMsg::Refused { .. } | RpcMsg::Chunk { .. } => break,
            }
        }
        drop(tx);
        let _ = writing.await;
    }
}
