//! The loop that answers one multiplexed call stream. Frames are read here
//! and handlers run concurrently; replies go out in completion order, each
//! written by whoever finished the call (see [`Outbox`]). When the node's
//! keys change or it stops, the stream says goodbye and drains: it reads
//! what the caller sent until the caller ends its side, answers every call
//! it read, and then closes, so no call on the wire is lost.

use tracing::Instrument as _;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};

use super::super::outbox::Outbox;
use super::super::proto::{Refusal, RpcMsg};
use super::super::responder::{write_reply, Company, Responder};
use super::super::running::Running;
use super::super::{CallInfo, RpcCounters};
use super::{
    Server, Serving, CALL_STREAM_IDLE, CLOSE_FLUSH, MAX_CALL_BUDGET, MAX_CHUNK, REFUSAL_WRITE,
    STREAM_REFUSAL_ID,
};
use crate::stream::{Opener, Sealer};
use crate::wire;

/// How long a stream that said goodbye waits for its caller to end its
/// side; requests still unread then are lost to the caller.
const GOODBYE_READ: Duration = Duration::from_secs(5);
/// How often a draining stream looks whether its responder calls are
/// answered: they are answered from threads that do not wake it.
const DRAIN_POLL: Duration = Duration::from_millis(20);

/// How the reading of a stream ended.
enum Ended {
    /// After a goodbye, the caller ended its side (or did not in time): the
    /// calls running are answered before the stream closes.
    Drained,
    /// The caller closed or broke the protocol, or the stream went idle:
    /// the calls running have no caller left and are cancelled.
    Closed,
    /// The node was killed, or the caller does not read its replies: the
    /// stream is cut without a flush.
    Cut,
}

/// One stream's calls.
struct Calls {
    server: Arc<Server>,
    outbox: Arc<Outbox>,
    per_stream: Arc<Semaphore>,
    company: Company,
    handlers: JoinSet<()>,
    running: Running,
    /// Rings at the earliest budget of a responder call still unanswered.
    alarm: Pin<Box<Sleep>>,
    alarm_at: Option<Instant>,
    /// The member that opens this stream, named by its first call.
    caller: Option<String>,
}

impl Server {
    /// Answers one call stream until it closes, goes idle, or the node's
    /// security changes or it stops (then after a goodbye and a drain). A
    /// peer that stops reading its replies stops being read; handlers still
    /// running when the stream ends otherwise are cancelled.
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
        let Ok(place) = self.streams.clone().try_acquire_owned() else {
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
        let mut place = Some(place);
        let (outbox, flusher) = Outbox::new(sealer, writer);
        self.track(&outbox);
        let mut flushing = tokio::spawn(flusher.in_current_span());
        let mut killed = self.killed.subscribe();
        let mut epoch = self.epoch.subscribe();
        if *killed.borrow_and_update() {
            outbox.cut();
            flushing.abort();
            return;
        }
        epoch.borrow_and_update();
        let mut failures = self.failed_callers.watch();
        let failures_before = *failures.borrow_and_update();
        let mut calls = Calls::new(self.clone(), outbox.clone());
        // Set once the stream said goodbye: reading ends when the caller
        // ends its side, or at this instant. A draining stream no longer
        // holds one of the node's places for streams (callers are opening
        // new ones meanwhile); its drain is bounded in time.
        let mut read_until = None;
        if self.farewell.load(std::sync::atomic::Ordering::Relaxed) {
            read_until = Some(calls.goodbye());
            drop(place.take());
        }
        let ended = loop {
            calls.rearm();
            let idle_until = read_until.unwrap_or_else(|| Instant::now() + CALL_STREAM_IDLE);
            if !outbox.has_room() {
                // The peer does not read its replies: stop reading its calls.
                // Nothing queued could be flushed to it, so it is cut when
                // the node's security changes or it stays so; after a
                // goodbye, its running calls are still answered.
                tokio::select! {
                    _ = outbox.room() => {}
                    _ = killed.changed() => break Ended::Cut,
                    _ = epoch.changed(), if read_until.is_none() => break Ended::Cut,
                    _ = &mut calls.alarm, if calls.alarm_at.is_some() => {
                        calls.expire();
                        continue;
                    }
                    _ = tokio::time::sleep_until(idle_until) => {
                        break if read_until.is_some() { Ended::Drained } else { Ended::Cut };
                    }
                }
            }
            let body = tokio::select! {
                // `next_frame` is cancel-safe: when another branch wins, a
                // half-read frame resumes on the next turn.
                frame = tokio::time::timeout_at(idle_until, opener.next_frame(&mut reader)) => match frame {
                    Ok(Ok(Some(body))) => body,
                    Ok(Ok(None)) | Err(_) if read_until.is_some() => break Ended::Drained,
                    Ok(Ok(None)) => break Ended::Closed,
                    // Quiet while a call runs (one long call alone on
                    // its stream) is not idle: its answer is still due.
                    Err(_) if !calls.running.all_over() => continue,
                    // A caller that gave up on a call mid-request (its
                    // stream dropped half-written) is gone, not in error.
                    Ok(Err(e)) => {
                        if !crate::stream::caller_went_away(&e) {
                            RpcCounters::bump(&self.counters.stream_errors);
                        }
                        break Ended::Closed;
                    }
                    // Idle: a stream its caller keeps and no longer uses
                    // (a pooled one) ends without being an error; one left
                    // in the middle of a frame is stalled.
                    Err(_) => {
                        if opener.holds_more() {
                            RpcCounters::bump(&self.counters.stream_errors);
                        }
                        break Ended::Closed;
                    }
                },
                _ = killed.changed() => break Ended::Cut,
                _ = epoch.changed(), if read_until.is_none() => {
                    read_until = Some(calls.goodbye());
                    drop(place.take());
                    continue;
                }
                _ = failures.changed() => {
                    let failed = calls.caller.as_deref().is_some_and(|caller| {
                        self.failed_callers.failed_since(caller, failures_before)
                    });
                    if failed {
                        break Ended::Cut;
                    }
                    continue;
                }
                _ = &mut calls.alarm, if calls.alarm_at.is_some() => {
                    calls.expire();
                    continue;
                }
                // Reap finished handlers so the set does not grow.
                Some(_) = calls.handlers.join_next(), if !calls.handlers.is_empty() => continue,
            };
            if read_until.is_some() {
                self.read_after_goodbye();
            }
            let Ok(msg) = wire::decode::<RpcMsg>(body) else {
                RpcCounters::bump(&self.counters.stream_errors);
                break Ended::Closed;
            };
            if !calls.take(msg) {
                break Ended::Closed;
            }
        };
        let cut = match ended {
            Ended::Cut => true,
            Ended::Drained => !calls.drain(&mut killed, &mut epoch).await,
            Ended::Closed => false,
        };
        // Handlers of a stream that ended otherwise are cancelled; their
        // callers have lost the stream and see the calls as disconnected.
        calls.end();
        if cut {
            outbox.cut();
            flushing.abort();
            return;
        }
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
        drop(place);
    }
}

impl Drop for Calls {
    /// Also when the stream's task is dropped mid-stream (its runtime
    /// stopped, as at a C node's free): its calls are abandoned and the
    /// stream cut, so their callers learn now, not when the host lets go of
    /// their responders. After a normal end both were done already.
    fn drop(&mut self) {
        self.end();
        self.outbox.cut();
    }
}

impl Calls {
    /// The stream ended: the calls still running have no caller left. They
    /// count as cancelled, as a caller's own cancel counts them: a caller
    /// that died, was killed or lost its stream abandoned them as surely.
    fn end(&mut self) {
        let abandoned = self.running.end();
        self.server
            .counters
            .cancelled
            .fetch_add(abandoned, std::sync::atomic::Ordering::Relaxed);
        self.handlers.abort_all();
    }

    fn new(server: Arc<Server>, outbox: Arc<Outbox>) -> Calls {
        let bound = server.limits.max_inflight_per_conn;
        let per_stream = Arc::new(Semaphore::new(bound));
        Calls {
            company: Company {
                slots: per_stream.clone(),
                max: bound,
            },
            per_stream,
            server,
            outbox,
            handlers: JoinSet::new(),
            running: Running::new(bound),
            alarm: Box::pin(tokio::time::sleep(CALL_STREAM_IDLE)),
            alarm_at: None,
            caller: None,
        }
    }

    /// Sets the alarm to the earliest budget of a responder call still
    /// unanswered.
    fn rearm(&mut self) {
        let due = self.running.next_due();
        if due != self.alarm_at {
            if let Some(at) = due {
                self.alarm.as_mut().reset(at);
            }
            self.alarm_at = due;
        }
    }

    /// The alarm rang: answers `"timeout"` for the calls whose budget ran out.
    fn expire(&mut self) {
        self.running.expire(Instant::now());
        self.alarm_at = None;
    }

    /// Tells the caller to put no new call on the stream; returns until
    /// when its requests are read.
    fn goodbye(&self) -> Instant {
        // A stream whose box is closed has no caller left to tell.
        let _ = self.outbox.send(&RpcMsg::Goodbye, true);
        Instant::now() + GOODBYE_READ
    }

    /// Waits until every call read is answered: a handler's by its budget
    /// at the latest, and within [`CLOSE_FLUSH`] once the node stops. False
    /// when the node is killed meanwhile.
    async fn drain(
        &mut self,
        killed: &mut watch::Receiver<bool>,
        epoch: &mut watch::Receiver<u64>,
    ) -> bool {
        let stop_cap = || Instant::now() + CLOSE_FLUSH;
        let mut cap = if self.server.is_stopping() {
            stop_cap()
        } else {
            Instant::now() + MAX_CALL_BUDGET
        };
        loop {
            while self.handlers.try_join_next().is_some() {}
            if self.handlers.is_empty() && self.running.all_over() {
                return true;
            }
            self.rearm();
            tokio::select! {
                Some(_) = self.handlers.join_next(), if !self.handlers.is_empty() => {}
                _ = &mut self.alarm, if self.alarm_at.is_some() => self.expire(),
                _ = tokio::time::sleep(DRAIN_POLL) => {}
                _ = tokio::time::sleep_until(cap) => return true,
                _ = epoch.changed() => {
                    if self.server.is_stopping() {
                        cap = cap.min(stop_cap());
                    }
                }
                _ = killed.changed() => return false,
            }
        }
    }

    /// Acts on one frame from the caller; false when the stream must end
    /// (its box is closed, or the caller broke the protocol).
    fn take(&mut self, msg: RpcMsg) -> bool {
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
                if self.caller.is_none() {
                    self.caller = Some(caller.clone());
                }
                let server = &self.server;
                let refusal = if server.is_stopping() {
                    Some(Refusal::ShuttingDown)
                } else if payload.len() > server.limits.max_payload {
                    Some(Refusal::TooLargeFor {
                        limit: server.limits.max_payload as u64,
                    })
                } else if !(server.in_tribe)(&tribe) {
                    // Only members of the tribe a call names serve it.
                    Some(Refusal::NoSuchPlugin)
                } else {
                    None
                };
                let found = match refusal {
                    Some(why) => Err(why),
                    None => server
                        .lookup(&plugin, Some(&version), kind)
                        .ok_or(Refusal::NoSuchPlugin),
                };
                let slots = found.and_then(|h| {
                    match (self.per_stream.clone().try_acquire_owned(), server.try_slot()) {
                        (Ok(a), Some(b)) => Ok((h, (a, b))),
                        _ => Err(Refusal::Overloaded),
                    }
                });
                let ((version, handler), places) = match slots {
                    Ok(x) => x,
                    Err(why) => {
                        RpcCounters::bump(&server.counters.refused);
                        return self
                            .outbox
                            .send(&RpcMsg::Refused { id, why }, true)
                            .is_ok();
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
                match handler {
                    Serving::Future(handler) => {
                        let (server, outbox) = (server.clone(), self.outbox.clone());
                        let company = self.company.clone();
                        let task = self.handlers.spawn(async move {
                            let result = server.run_handler(handler, info, payload).await;
                            RpcCounters::bump(&server.counters.served);
                            // The places come back before the answer goes
                            // out (a caller's next call may come at once),
                            // `open` after it (see `NodePlace`); whether it
                            // has company is read while it holds its place.
                            let alone = company.alone();
                            let (stream, node) = places;
                            drop((stream, node.held));
                            write_reply(&outbox, id, result, alone);
                            drop(node.open);
                        }.in_current_span());
                        self.running.add_task(id, task);
                    }
                    Serving::Responder(handler) => {
                        // The answer goes out from whichever thread gives
                        // it, which then gives the places back; this loop
                        // only answers "timeout" when the budget runs out.
                        let (responder, slot) = Responder::for_stream(
                            self.outbox.clone(),
                            id,
                            places,
                            server.limits.max_payload,
                            server.counters.clone(),
                        );
                        self.running
                            .add_slot(id, slot.clone(), budget, Instant::now());
                        server.start_responder(&handler, info, payload, responder, &slot);
                    }
                }
                true
            }
            RpcMsg::Fetch {
                id,
                sha256,
                offset,
                len,
            } => {
                let server = &self.server;
                let answer = match server.artifact(&sha256) {
                    Some(bytes) if !server.is_stopping() => {
                        RpcCounters::bump(&server.counters.chunks_served);
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
                        RpcCounters::bump(&server.counters.refused);
                        RpcMsg::Refused {
                            id,
                            why: Refusal::NoSuchPlugin,
                        }
                    }
                };
                self.outbox.send(&answer, true).is_ok()
            }
            RpcMsg::Cancel { id } => {
                if self.running.cancel(id) {
                    RpcCounters::bump(&self.server.counters.cancelled);
                }
                true
            }
            // Answers and goodbyes only travel the other way.
            RpcMsg::Reply { .. }
            | RpcMsg::Refused { .. }
            | RpcMsg::Chunk { .. }
            | RpcMsg::Goodbye => {
                RpcCounters::bump(&self.server.counters.stream_errors);
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::super::RpcLimits;
    use super::*;
    use crate::stream::{self, Security};
    use tokio::io::{AsyncWriteExt, DuplexStream};
    use tokio::task::JoinHandle;

    /// A plaintext RPC stream over an in-memory pipe, served by `server`:
    /// the peer's end, its sealer and opener, and the serving task.
    async fn serve_duplex(
        server: &Arc<Server>,
    ) -> (DuplexStream, Sealer, Opener, JoinHandle<()>) {
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
        let (peer_sealer, peer_opener) = connected.unwrap();
        assert_eq!(
            opener.read_frame(&mut ours).await.unwrap().as_deref(),
            Some(&[crate::wire::CHANNEL_RPC][..])
        );
        let (r, w) = tokio::io::split(ours);
        let serving = tokio::spawn(server.clone().serve_stream(r, w, sealer, opener));
        (theirs, peer_sealer, peer_opener, serving)
    }

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
        let (mut theirs, mut peer_sealer, _, serving) = serve_duplex(&server).await;
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

    /// A stream whose only call runs longer than the idle timeout, with no
    /// other frame meanwhile, is not closed as idle: the answer arrives.
    #[tokio::test(start_paused = true)]
    async fn a_long_call_alone_on_its_stream_outlives_the_idle_timeout() {
        let server = Arc::new(Server::new(
            RpcLimits::default(),
            Arc::new(RpcCounters::default()),
            Box::new(|_| true),
        ));
        let long = CALL_STREAM_IDLE * 2;
        let handler: crate::rpc::Handler = Arc::new(move |_info, payload| {
            Box::pin(async move {
                tokio::time::sleep(long).await;
                Ok(payload)
            })
        });
        server.register(
            "slow",
            "1",
            crate::records::PluginKind::Processor,
            Serving::Future(handler),
        );
        let (mut theirs, mut peer_sealer, mut peer_opener, _serving) = serve_duplex(&server).await;
        let call = RpcMsg::Call {
            id: 9,
            caller: "c".into(),
            tribe: "t".into(),
            plugin: "slow".into(),
            version: "1".into(),
            kind: crate::records::PluginKind::Processor,
            budget_ms: u32::try_from((long * 2).as_millis()).unwrap(),
            payload: b"late".to_vec(),
        };
        peer_sealer.write_msg(&mut theirs, &call).await.unwrap();
        let frame = peer_opener.read_frame(&mut theirs).await.unwrap().unwrap();
        let reply: RpcMsg = crate::wire::decode(&frame).unwrap();
        assert!(
            matches!(&reply, RpcMsg::Reply { id: 9, result: Ok(b) } if b.as_slice() == b"late"),
            "{reply:?}"
        );
    }

    /// A stream that goes quiet ends at the idle timeout without counting
    /// as an error (a caller's pooled stream it no longer uses); one left
    /// in the middle of a frame is a stalled stream, counted.
    #[tokio::test(start_paused = true)]
    async fn an_idle_stream_ends_without_an_error_and_a_stalled_frame_counts() {
        let counters = Arc::new(RpcCounters::default());
        let server = Arc::new(Server::new(
            RpcLimits::default(),
            counters.clone(),
            Box::new(|_| true),
        ));
        let (theirs, _, _, serving) = serve_duplex(&server).await;
        tokio::time::timeout(CALL_STREAM_IDLE * 2, serving)
            .await
            .expect("an idle stream ends")
            .unwrap();
        assert_eq!(counters.stats().stream_errors, 0);
        drop(theirs);

        let (mut theirs, _, _, serving) = serve_duplex(&server).await;
        // Three bytes of a frame's length header, and no more.
        theirs.write_all(&[0, 0, 1]).await.unwrap();
        tokio::time::timeout(CALL_STREAM_IDLE * 2, serving)
            .await
            .expect("a stalled stream ends")
            .unwrap();
        assert_eq!(counters.stats().stream_errors, 1);
        drop(theirs);
    }
}
