//! The serving side: the handlers this node serves, the artifacts it holds,
//! and the loop that answers one multiplexed call stream. A future handler
//! runs in its own task, so one that panics or hangs cannot take the node or
//! the stream down; it is cut at the caller's deadline. A responder call has
//! no task: the thread that answers writes the reply, and the stream's loop
//! answers `"timeout"` for it when its budget runs out (see `running`).

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Semaphore;

use super::outbox::Outbox;
use super::proto::{ByteBuf, Refusal, RpcMsg};
use super::responder::{self, Company, Responder, ResponderHandler, Slot};
use super::running::Running;
use super::{CallInfo, Handler, HandlerError, RpcCounters, RpcLimits};
use crate::records::PluginKind;
use crate::stream::{Opener, Sealer};
use crate::wire;

/// Largest artifact chunk sent in one frame.
pub const MAX_CHUNK: u32 = 256 * 1024;
/// A call stream with no complete frame for this long is closed.
pub const CALL_STREAM_IDLE: Duration = Duration::from_secs(120);
/// Longest a handler runs, whatever budget the caller asks for.
pub const MAX_CALL_BUDGET: Duration = Duration::from_secs(300);
/// How long an ending call stream may take to flush what it queued.
const CLOSE_FLUSH: Duration = Duration::from_secs(10);
/// How long a refused call stream's refusal frame may take to write.
const REFUSAL_WRITE: Duration = Duration::from_secs(1);
/// Id of the refusal that answers a whole stream: callers number their
/// calls from 1, so it never names a call.
pub const STREAM_REFUSAL_ID: u64 = 0;

struct Served {
    kind: PluginKind,
    handler: Serving,
}

/// How a served plugin answers.
#[derive(Clone)]
pub enum Serving {
    /// With the future it returns, run in a task of the node.
    Future(Handler),
    /// Through a [`Responder`], from any thread.
    Responder(ResponderHandler),
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
    /// Bumped when the node's keys or encryption mode change: streams set
    /// up under the old security end.
    epoch: tokio::sync::watch::Sender<u64>,
    streams: Arc<Semaphore>,
    /// Whether this node is in a tribe's live view (set by the node).
    in_tribe: Box<dyn Fn(&str) -> bool + Send + Sync>,
}

impl Server {
    /// A server with nothing registered; `in_tribe` tells whether this node
    /// is in a tribe's live view (a call naming another tribe is refused).
    pub fn new(
        limits: RpcLimits,
        counters: Arc<RpcCounters>,
        in_tribe: Box<dyn Fn(&str) -> bool + Send + Sync>,
    ) -> Server {
        let streams = Arc::new(Semaphore::new(limits.max_streams.max(1)));
        Server {
            handlers: RwLock::new(HashMap::new()),
            artifacts: RwLock::new(HashMap::new()),
            serving: Arc::new(Semaphore::new(limits.max_serving)),
            limits,
            counters,
            stopping: AtomicBool::new(false),
            killed: tokio::sync::watch::Sender::new(false),
            epoch: tokio::sync::watch::Sender::new(0),
            streams,
            in_tribe,
        }
    }

    /// The bounds in force.
    pub fn limits(&self) -> &RpcLimits {
        &self.limits
    }

    /// Registers a handler; replaces one of the same name and version.
    pub fn register(&self, name: &str, version: &str, kind: PluginKind, handler: Serving) {
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
    ) -> Option<(String, Serving)> {
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

    /// Ends every call stream (gracefully): the node's security changed.
    pub fn reset_streams(&self) {
        self.epoch.send_modify(|e| *e += 1);
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
            Err(_) => Err(responder::overrun(budget)),
        };
        responder::bounded(result, self.limits.max_payload, &self.counters)
    }

    /// Hands a call to a responder handler, which returns at once; a panic
    /// in it answers the call `"panic"`.
    pub(crate) fn start_responder(
        &self,
        handler: &ResponderHandler,
        info: CallInfo,
        payload: Vec<u8>,
        responder: Responder,
        slot: &Slot,
    ) {
        if std::panic::catch_unwind(AssertUnwindSafe(|| handler(info, payload, responder))).is_err()
        {
            slot.panicked();
        }
    }

    /// Answers one call stream until it closes, goes idle, or the node's
    /// security changes. Frames are read here and handlers run concurrently;
    /// replies go out in completion order, each written by the task that
    /// finished it (see [`Outbox`]). A peer that stops reading its replies
    /// stops being read; handlers still running when the stream ends are
    /// cancelled.
    pub async fn serve_stream<R, W>(
        self: Arc<Self>,
        mut reader: R,
        mut writer: W,
        mut sealer: Sealer,
        mut opener: Opener,
    ) where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let Ok(_stream_slot) = self.streams.clone().try_acquire_owned() else {
            RpcCounters::bump(&self.counters.streams_refused);
            // Say why before closing, so the caller's calls end as
            // `Overloaded` (safe to retry elsewhere) rather than lost.
            let refusal = RpcMsg::Refused {
                id: STREAM_REFUSAL_ID,
                why: Refusal::Overloaded,
            };
            let _ = tokio::time::timeout(REFUSAL_WRITE, async {
                let _ = sealer.write_msg(&mut writer, &refusal).await;
                let _ = tokio::io::AsyncWriteExt::shutdown(&mut writer).await;
            })
            .await;
            return;
        };
        let (outbox, flusher) = Outbox::new(sealer, writer);
        let mut flushing = tokio::spawn(flusher);
        let mut killed = self.killed.subscribe();
        let mut epoch = self.epoch.subscribe();
        if *killed.borrow_and_update() {
            outbox.cut();
            flushing.abort();
            return;
        }
        epoch.borrow_and_update();
        let per_stream = Arc::new(Semaphore::new(self.limits.max_inflight_per_conn));
        let company = Company {
            slots: per_stream.clone(),
            max: self.limits.max_inflight_per_conn,
        };
        let mut handlers = tokio::task::JoinSet::new();
        let mut running = Running::new(self.limits.max_inflight_per_conn);
        // Rings at the earliest budget of a responder call still unanswered.
        let mut alarm = std::pin::pin!(tokio::time::sleep(CALL_STREAM_IDLE));
        let mut alarm_at = None;
        loop {
            let due = running.next_due();
            if due != alarm_at {
                if let Some(at) = due {
                    alarm.as_mut().reset(at);
                }
                alarm_at = due;
            }
            if !outbox.has_room() {
                // The peer does not read its replies: stop reading its calls.
                let stuck = tokio::select! {
                    _ = outbox.room() => false,
                    _ = killed.changed() => true,
                    _ = epoch.changed() => true,
                    _ = &mut alarm, if alarm_at.is_some() => {
                        running.expire(tokio::time::Instant::now());
                        alarm_at = None;
                        continue;
                    }
                    _ = tokio::time::sleep(CALL_STREAM_IDLE) => true,
                };
                if stuck {
                    // Nothing queued could be flushed to this peer anyway.
                    running.end();
                    outbox.cut();
                    flushing.abort();
                    return;
                }
            }
            let body = tokio::select! {
                // `next_frame` is cancel-safe: when another branch wins, a
                // half-read frame resumes on the next turn.
                frame = tokio::time::timeout(CALL_STREAM_IDLE, opener.next_frame(&mut reader)) => match frame {
                    Ok(Ok(Some(body))) => body,
                    Ok(Ok(None)) => break,
                    Ok(Err(_)) | Err(_) => {
                        RpcCounters::bump(&self.counters.stream_errors);
                        break;
                    }
                },
                _ = killed.changed() => {
                    // Cut the stream without flushing what is queued.
                    running.end();
                    outbox.cut();
                    flushing.abort();
                    return;
                }
                _ = epoch.changed() => break,
                _ = &mut alarm, if alarm_at.is_some() => {
                    running.expire(tokio::time::Instant::now());
                    alarm_at = None;
                    continue;
                }
                // Reap finished handlers so the set does not grow.
                Some(_) = handlers.join_next(), if !handlers.is_empty() => continue,
            };
            let Ok(msg) = wire::decode::<RpcMsg>(body) else {
                RpcCounters::bump(&self.counters.stream_errors);
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
                    let refusal = if self.is_stopping() {
                        Some(Refusal::ShuttingDown)
                    } else if payload.len() > self.limits.max_payload {
                        Some(Refusal::TooLargeFor {
                            limit: self.limits.max_payload as u64,
                        })
                    } else if !(self.in_tribe)(&tribe) {
                        // Only members of the tribe a call names serve it.
                        Some(Refusal::NoSuchPlugin)
                    } else {
                        None
                    };
                    let found = match refusal {
                        Some(why) => Err(why),
                        None => self
                            .lookup(&plugin, Some(&version), kind)
                            .ok_or(Refusal::NoSuchPlugin),
                    };
                    let slots = found.and_then(|h| {
                        match (per_stream.clone().try_acquire_owned(), self.try_slot()) {
                            (Ok(a), Some(b)) => Ok((h, (a, b))),
                            _ => Err(Refusal::Overloaded),
                        }
                    });
                    let ((version, handler), places) = match slots {
                        Ok(x) => x,
                        Err(why) => {
                            RpcCounters::bump(&self.counters.refused);
                            if outbox.send(&RpcMsg::Refused { id, why }, true).is_err() {
                                break;
                            }
                            continue;
                        }
                    };
                    let budget = Duration::from_millis(u64::from(budget_ms)).min(MAX_CALL_BUDGET);
                    let info = CallInfo {
                        caller,
                        tribe,
                        plugin,
                        version,
                        budget,
                    };
                    let server = self.clone();
                    match handler {
                        Serving::Future(handler) => {
                            let outbox = outbox.clone();
                            let company = company.clone();
                            let task = handlers.spawn(async move {
                                let result = server.run_handler(handler, info, payload).await;
                                RpcCounters::bump(&server.counters.served);
                                let result =
                                    result.map(ByteBuf::from).map_err(|e| (e.code, e.message));
                                // Alone on the stream, written from this task;
                                // with company, batched by the flusher. A
                                // stream that ended has no caller left.
                                let reply = RpcMsg::Reply { id, result };
                                let _ = if company.alone() {
                                    outbox.send(&reply, true)
                                } else {
                                    outbox.defer(&reply, true)
                                };
                                drop(places);
                            });
                            running.add_task(id, task);
                        }
                        Serving::Responder(handler) => {
                            // The answer goes out from whichever thread gives
                            // it, which then gives the places back; this loop
                            // only answers "timeout" when the budget runs out.
                            let (responder, slot) = Responder::for_stream(
                                outbox.clone(),
                                id,
                                company.clone(),
                                places,
                                self.limits.max_payload,
                                self.counters.clone(),
                            );
                            running.add_slot(id, slot.clone(), budget, tokio::time::Instant::now());
                            self.start_responder(&handler, info, payload, responder, &slot);
                        }
                    }
                }
                RpcMsg::Fetch {
                    id,
                    sha256,
                    offset,
                    len,
                } => {
                    let answer = match self.artifact(&sha256) {
                        Some(bytes) if !self.is_stopping() => {
                            RpcCounters::bump(&self.counters.chunks_served);
                            let start = usize::try_from(offset)
                                .unwrap_or(usize::MAX)
                                .min(bytes.len());
                            let end = start
                                .saturating_add(len.min(MAX_CHUNK) as usize)
                                .min(bytes.len());
                            RpcMsg::Chunk {
                                id,
                                data: bytes[start..end].to_vec(),
                            }
                        }
                        _ => {
                            RpcCounters::bump(&self.counters.refused);
                            RpcMsg::Refused {
                                id,
                                why: Refusal::NoSuchPlugin,
                            }
                        }
                    };
                    if outbox.send(&answer, true).is_err() {
                        break;
                    }
                }
                RpcMsg::Cancel { id } => {
                    if running.cancel(id) {
                        RpcCounters::bump(&self.counters.cancelled);
                    }
                }
                // Answers only travel the other way.
                RpcMsg::Reply { .. } | RpcMsg::Refused { .. } | RpcMsg::Chunk { .. } => {
                    RpcCounters::bump(&self.counters.stream_errors);
                    break;
                }
            }
        }
        // Handlers of a stream that ended are cancelled; their callers have
        // lost the stream and will see the call as disconnected.
        handlers.abort_all();
        running.end();
        outbox.close();
        // What is queued goes out, unless the peer stops reading or the
        // node is killed meanwhile: the stream's place is not held for it.
        tokio::select! {
            _ = &mut flushing => {}
            _ = killed.changed() => {}
            _ = tokio::time::sleep(CLOSE_FLUSH) => {}
        }
        outbox.cut();
        flushing.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::{self, Security};
    use tokio::io::AsyncWriteExt;

    /// A peer that asks for more than the pipe holds, never reads, and then
    /// ends its side: the server ends the stream after a grace period
    /// instead of waiting forever to flush, and gives its place back.
    #[tokio::test(start_paused = true)]
    async fn a_stream_whose_peer_stops_reading_ends_and_frees_its_place() {
        let server = Arc::new(Server::new(
            RpcLimits {
                max_streams: 1,
                ..RpcLimits::default()
            },
            Arc::new(RpcCounters::default()),
            Box::new(|_| true),
        ));
        server.hold_artifact([7; 32], Arc::new(vec![1; MAX_CHUNK as usize]));
        let (mut ours, mut theirs) = tokio::io::duplex(64 * 1024);
        let plain = Security::plaintext("t");
        let (accepted, connected) =
            tokio::join!(stream::accept(&mut ours, &plain, 1 << 20), async {
                let (mut sealer, opener) = stream::connect(&mut theirs, &plain, 1 << 20).await?;
                sealer
                    .write_frame(&mut theirs, &[crate::wire::CHANNEL_RPC])
                    .await?;
                Ok::<_, stream::StreamError>((sealer, opener))
            });
        let (sealer, mut opener) = accepted.unwrap();
        let (mut peer_sealer, _) = connected.unwrap();
        assert_eq!(
            opener.read_frame(&mut ours).await.unwrap().as_deref(),
            Some(&[crate::wire::CHANNEL_RPC][..])
        );
        let (r, w) = tokio::io::split(ours);
        let serving = tokio::spawn(server.clone().serve_stream(r, w, sealer, opener));
        for id in 1..=8 {
            let fetch = RpcMsg::Fetch {
                id,
                sha256: [7; 32],
                offset: 0,
                len: MAX_CHUNK,
            };
            peer_sealer.write_msg(&mut theirs, &fetch).await.unwrap();
        }
        theirs.shutdown().await.unwrap();
        // Paused time: the grace period passes as soon as all is idle.
        tokio::time::timeout(CLOSE_FLUSH * 2, serving)
            .await
            .expect("the stream ends although its peer never read")
            .unwrap();
        assert_eq!(
            server.streams.available_permits(),
            1,
            "its place is free again"
        );
        drop(theirs);
    }
}
