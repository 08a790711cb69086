//! Answering a served call from any thread. A handler served with
//! [`crate::Node::serve_responder`] receives each call with a [`Responder`]
//! and returns at once; whichever thread holds the responder later answers,
//! and the answer is written to the caller's stream from that thread (see
//! [`super::outbox`]), so a host that runs its handlers on threads of its
//! own (C, Go, Python) costs no extra hop back through the runtime.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

use super::outbox::Outbox;
use super::proto::{ByteBuf, RpcMsg};
use super::{HandlerError, RpcCounters};

/// A handler that answers through a [`Responder`]. It runs on a runtime
/// thread and must not block: it hands the call on and returns.
pub type ResponderHandler =
    Arc<dyn Fn(super::CallInfo, Vec<u8>, Responder) + Send + Sync + 'static>;

/// The error of a handler that did not answer within its budget.
pub(crate) fn overrun(budget: Duration) -> HandlerError {
    HandlerError::new(
        "timeout",
        format!("the handler did not answer within {budget:?}"),
    )
}

/// A handler's result, with a reply over `max_payload` turned into the
/// error `"too_large"` (and counted).
pub(crate) fn bounded(
    result: Result<Vec<u8>, HandlerError>,
    max_payload: usize,
    counters: &RpcCounters,
) -> Result<Vec<u8>, HandlerError> {
    match result {
        Ok(reply) if reply.len() > max_payload => {
            RpcCounters::bump(&counters.replies_too_large);
            Err(HandlerError::new(
                "too_large",
                format!(
                    "the reply has {} bytes, over the limit of {max_payload}",
                    reply.len()
                ),
            ))
        }
        other => other,
    }
}

/// The calls in flight on one call stream, read from its bound.
#[derive(Clone)]
pub(crate) struct Company {
    pub(crate) slots: Arc<tokio::sync::Semaphore>,
    pub(crate) max: usize,
}

impl Company {
    /// Whether the call answering now is the only one in flight.
    pub(crate) fn alone(&self) -> bool {
        self.max.saturating_sub(self.slots.available_permits()) <= 1
    }
}

/// What a call this node made to itself gets back.
pub(crate) type LocalAnswer = Result<Vec<u8>, HandlerError>;

/// Where an answer goes.
enum Sink {
    /// A call that came over a call stream: written there directly; `done`
    /// tells the call's budget task that the call is over.
    Stream {
        outbox: Arc<Outbox>,
        id: u64,
        done: oneshot::Sender<()>,
        /// Calls in flight on the stream: alone, the answer is written at
        /// once; with company, left to the flusher to batch.
        company: Company,
    },
    /// A call this node made to itself.
    Local(oneshot::Sender<LocalAnswer>),
}

/// What a responder and the call's budget share: whoever takes the sink
/// first answers.
pub(crate) struct Slot {
    sink: Mutex<Option<Sink>>,
    max_payload: usize,
    counters: Arc<RpcCounters>,
}

impl Slot {
    fn take(&self) -> Option<Sink> {
        self.sink.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Answers unless someone did already; false when someone did.
    pub(crate) fn answer(&self, result: Result<Vec<u8>, HandlerError>) -> bool {
        let Some(sink) = self.take() else {
            return false;
        };
        RpcCounters::bump(&self.counters.served);
        let result = bounded(result, self.max_payload, &self.counters);
        match sink {
            Sink::Stream {
                outbox,
                id,
                done,
                company,
            } => {
                let result = result.map(ByteBuf::from).map_err(|e| (e.code, e.message));
                let reply = RpcMsg::Reply { id, result };
                // A stream that ended has no caller left to answer.
                let _ = if company.alone() {
                    outbox.send(&reply, true)
                } else {
                    outbox.defer(&reply, true)
                };
                let _ = done.send(());
            }
            Sink::Local(tx) => {
                let _ = tx.send(result);
            }
        }
        true
    }

    /// Answers a call whose budget ran out (the caller stops waiting now).
    pub(crate) fn overran(&self, budget: Duration) {
        self.answer(Err(overrun(budget)));
    }

    /// Answers a call whose handler panicked.
    pub(crate) fn panicked(&self) {
        if self.answer(Err(HandlerError::new("panic", "the handler panicked"))) {
            RpcCounters::bump(&self.counters.panics);
        }
    }
}

/// The right to answer one call, once, from any thread. Dropping it
/// unanswered answers the caller with the error code `"unanswered"`.
pub struct Responder {
    slot: Option<Arc<Slot>>,
}

impl std::fmt::Debug for Responder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Responder").finish_non_exhaustive()
    }
}

impl Responder {
    fn new(sink: Sink, max_payload: usize, counters: Arc<RpcCounters>) -> (Responder, Arc<Slot>) {
        let slot = Arc::new(Slot {
            sink: Mutex::new(Some(sink)),
            max_payload,
            counters,
        });
        (
            Responder {
                slot: Some(slot.clone()),
            },
            slot,
        )
    }

    /// A responder for call `id` of a call stream; the receiver fires once
    /// the call is answered.
    pub(crate) fn for_stream(
        outbox: Arc<Outbox>,
        id: u64,
        company: Company,
        max_payload: usize,
        counters: Arc<RpcCounters>,
    ) -> (Responder, Arc<Slot>, oneshot::Receiver<()>) {
        let (done, answered) = oneshot::channel();
        let sink = Sink::Stream {
            outbox,
            id,
            done,
            company,
        };
        let (r, slot) = Responder::new(sink, max_payload, counters);
        (r, slot, answered)
    }

    /// A responder for a call this node makes to itself.
    pub(crate) fn local(
        max_payload: usize,
        counters: Arc<RpcCounters>,
    ) -> (Responder, Arc<Slot>, oneshot::Receiver<LocalAnswer>) {
        let (tx, rx) = oneshot::channel();
        let (r, slot) = Responder::new(Sink::Local(tx), max_payload, counters);
        (r, slot, rx)
    }

    /// Answers with `reply`. A reply over the node's payload limit reaches
    /// the caller as the error `"too_large"`; an answer the caller no longer
    /// waits for (its deadline passed, the stream ended) is dropped.
    pub fn reply(mut self, reply: Vec<u8>) {
        if let Some(slot) = self.slot.take() {
            slot.answer(Ok(reply));
        }
    }

    /// Answers with an error: the caller gets [`crate::Error::Remote`] with
    /// its code and message.
    pub fn fail(mut self, error: HandlerError) {
        if let Some(slot) = self.slot.take() {
            slot.answer(Err(error));
        }
    }

    /// Whether the call is over without this responder: its budget ran
    /// out (the caller was answered `"timeout"`) or its stream ended. A
    /// handler that has not started may skip the work.
    pub fn is_abandoned(&self) -> bool {
        self.slot.as_ref().is_none_or(|s| {
            match &*s.sink.lock().unwrap_or_else(|p| p.into_inner()) {
                None => true,
                // The stream ended: no one is left to read an answer.
                Some(Sink::Stream { outbox, .. }) => outbox.is_closed(),
                Some(Sink::Local(tx)) => tx.is_closed(),
            }
        })
    }

    /// Gives up without an answer: the caller gets what its own deadline
    /// gives ([`crate::Error::Timeout`]), as if the handler still ran.
    pub fn decline(mut self) {
        self.slot = None;
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        let Some(slot) = self.slot.take() else {
            return;
        };
        if std::thread::panicking() {
            // Whichever thread was unwinding (a handler's, a pool's), the
            // caller learns now rather than at its deadline.
            slot.panicked();
        } else {
            slot.answer(Err(HandlerError::new(
                "unanswered",
                "the handler dropped the call without answering it",
            )));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_responder_dropped_while_its_thread_panics_answers_panic() {
        let counters = Arc::new(RpcCounters::default());
        let (responder, _slot, mut answer) = Responder::local(1024, counters.clone());
        let unwound = std::thread::spawn(move || {
            let _held = responder;
            panic!("a host thread's bug");
        })
        .join();
        assert!(unwound.is_err());
        let got = answer
            .try_recv()
            .expect("answered at once, not at the deadline");
        assert_eq!(got.unwrap_err().code, "panic");
        assert_eq!(
            counters.panics.load(std::sync::atomic::Ordering::Relaxed),
            1
        );
    }

    #[tokio::test]
    async fn a_call_whose_stream_ended_is_abandoned() {
        let (_far, near) = tokio::io::duplex(1024);
        let (outbox, _flusher) = Outbox::new(crate::stream::Sealer::plaintext_for_tests(), near);
        let company = Company {
            slots: Arc::new(tokio::sync::Semaphore::new(4)),
            max: 4,
        };
        let counters = Arc::new(RpcCounters::default());
        let (responder, _slot, _answered) =
            Responder::for_stream(outbox.clone(), 1, company, 1024, counters);
        assert!(!responder.is_abandoned());
        outbox.close();
        assert!(responder.is_abandoned());
        responder.decline();
    }
}
