//! Answering a served call from any thread. A handler served with
//! [`crate::Node::serve_responder`] receives each call with a [`Responder`]
//! and returns at once; whichever thread holds the responder later answers,
//! and the answer is written to the caller's stream from that thread (see
//! `rpc::outbox`), so a host that runs its handlers on threads of its
//! own (C, Go, Python) costs no extra hop back through the runtime.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{oneshot, OwnedSemaphorePermit};

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

/// Longest error code a handler's error carries to its caller.
pub const MAX_ERROR_CODE: usize = 256;
/// Longest error message a handler's error carries to its caller (longer
/// ones are cut, so that an error never outgrows the frames the caller
/// accepts and takes the stream, and every call on it, down).
pub const MAX_ERROR_MESSAGE: usize = 64 * 1024;

/// `s` cut to at most `max` bytes on a character boundary, marked as cut.
fn cut(mut s: String, max: usize) -> String {
    if s.len() <= max {
        return s;
    }
    const MARK: &str = "…";
    let mut end = max.saturating_sub(MARK.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s.push_str(MARK);
    s
}

/// A handler's result, with a reply over `max_payload` turned into the
/// error `"too_large"` (and counted), and an error's code and message cut
/// to [`MAX_ERROR_CODE`] and [`MAX_ERROR_MESSAGE`].
pub(crate) fn bounded(
    result: Result<Vec<u8>, HandlerError>,
    max_payload: usize,
    counters: &RpcCounters,
) -> Result<Vec<u8>, HandlerError> {
    match result {
        Err(HandlerError { code, message }) => Err(HandlerError {
            // An empty code tells the caller nothing; C's NULL code is the same.
            code: if code.is_empty() {
                "error".into()
            } else {
                cut(code, MAX_ERROR_CODE)
            },
            message: cut(message, MAX_ERROR_MESSAGE),
        }),
        Ok(reply) if reply.len() > max_payload => {
            Err(too_large(reply.len(), max_payload, counters))
        }
        other => other,
    }
}

/// The error a caller gets for a reply of `size` bytes over `max_payload`
/// (counted).
fn too_large(size: usize, max_payload: usize, counters: &RpcCounters) -> HandlerError {
    RpcCounters::bump(&counters.replies_too_large);
    HandlerError::new(
        "too_large",
        format!("the reply has {size} bytes, over the limit of {max_payload}"),
    )
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

/// Writes call `id`'s answer to `outbox`: from this thread when `now`
/// (a call alone on its stream, see [`Company::alone`]), else left to the
/// flusher to batch with others. A stream that ended has no caller left to
/// answer.
pub(crate) fn write_reply(
    outbox: &Outbox,
    id: u64,
    result: Result<Vec<u8>, HandlerError>,
    now: bool,
) {
    let result = result.map(ByteBuf::from).map_err(|e| (e.code, e.message));
    let reply = RpcMsg::Reply { id, result };
    let _ = if now {
        outbox.send(&reply, true)
    } else {
        outbox.defer(&reply, true)
    };
}

/// What a call this node made to itself gets back.
pub(crate) type LocalAnswer = Result<Vec<u8>, LocalRefusal>;

/// Why this node's own handler gave no answer to a local call.
pub(crate) enum LocalRefusal {
    /// The handler failed the call.
    Failed(HandlerError),
    /// The host is stopping: the caller moves the call to another member.
    Stopping,
}

/// A served call's places: one of its stream's and one of the node's.
pub(crate) type Places = (OwnedSemaphorePermit, NodePlace);

/// A call's place among the node's: `held`, one of the places its handlers
/// may hold at once (see [`Held`]), and `open`, which counts the call only
/// until it is over (answered, its budget ran out, its caller gave up or
/// its stream ended): what a stop waits for before it cuts the streams. A
/// handler still holding an abandoned call's responder sends nothing more.
/// `held` may come back first (before the answer is written), `open` only
/// once the answer is queued; `open` counts and bounds nothing.
pub(crate) struct NodePlace {
    pub(crate) open: OwnedSemaphorePermit,
    pub(crate) held: OwnedSemaphorePermit,
}

/// The places a responder call holds (a call this node makes to itself
/// has none of a stream's). They come back once the call is over (answered,
/// its budget ran out, its caller gave up, its stream ended) *and* its
/// responder is gone: a host that keeps calls unanswered (a C host that
/// does not poll, handlers that hang) reaches the node's bounds and new
/// calls are refused as overloaded, rather than queueing without end; a
/// declined call holds them as if its handler still ran.
struct Held {
    _stream: Option<OwnedSemaphorePermit>,
    _node: OwnedSemaphorePermit,
}

/// Where an answer goes.
enum Sink {
    /// A call that came over a call stream: written there at once, from
    /// the thread that answers, with company or not. That thread is the
    /// host's, which for the C ABI drives the stream's flusher only when it
    /// next waits for events: left to the flusher, the answers of a whole
    /// burst would wait for the last one (apart, async c16 went from about
    /// 80k to 140k calls/s written at once).
    Stream { outbox: Arc<Outbox>, id: u64 },
    /// A call this node made to itself.
    Local(oneshot::Sender<LocalAnswer>),
}

/// What a responder and the call's budget share: whoever takes the sink
/// first answers.
pub(crate) struct Slot {
    sink: Mutex<Option<Sink>>,
    /// Given back once the sink is taken (see [`NodePlace`]); before
    /// `places` (fields drop in order).
    open: Mutex<Option<OwnedSemaphorePermit>>,
    /// Given back once the sink is taken and the responder gone.
    places: Mutex<Option<Held>>,
    /// The responder is gone (answered, dropped or declined).
    gone: AtomicBool,
    /// Threads between taking the sink and having queued what they send
    /// there: until then the call is not over (see [`Slot::is_answered`]).
    answering: AtomicUsize,
    max_payload: usize,
    counters: Arc<RpcCounters>,
}

/// One thread's turn at ending the call (see [`Slot::answering`]).
struct Answering<'a>(&'a Slot);

impl<'a> Answering<'a> {
    fn start(slot: &'a Slot) -> Answering<'a> {
        slot.answering.fetch_add(1, Ordering::SeqCst);
        Answering(slot)
    }

    /// Takes the sink: whoever takes it first ends the call.
    fn take(&self) -> Option<Sink> {
        self.0.sink.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

impl Drop for Answering<'_> {
    fn drop(&mut self) {
        self.0.answering.fetch_sub(1, Ordering::SeqCst);
        // After the answer is queued: a responder gone meanwhile sees the
        // call over, or leaves the places to this.
        if self.0.is_answered() {
            self.0.close();
            if self.0.gone.load(Ordering::SeqCst) {
                self.0.give_places_back();
            }
        }
    }
}

impl Slot {
    /// The responder went: the places come back now if the call is over,
    /// else when it ends.
    fn responder_gone(&self) {
        self.gone.store(true, Ordering::SeqCst);
        if self.is_answered() {
            self.give_places_back();
        }
    }

    /// The call is over: its `open` place comes back.
    fn close(&self) {
        drop(self.open.lock().unwrap_or_else(|p| p.into_inner()).take());
    }

    /// Gives `open` back too, also when another thread that answered has
    /// not yet.
    fn give_places_back(&self) {
        self.close();
        drop(self.places.lock().unwrap_or_else(|p| p.into_inner()).take());
    }

    /// Answers unless someone did already; false when someone did.
    pub(crate) fn answer(&self, result: Result<Vec<u8>, HandlerError>) -> bool {
        self.answer_counted(result, true, false)
    }

    /// [`Slot::answer`] by the responder, which goes with it: the places
    /// it held come back before the answer is written, so that a caller
    /// that makes its next call once it has this answer finds them free
    /// (at `max_serving` 1, one that made one call at a time was refused
    /// as overloaded). `open` comes back after, as always: a stop waits
    /// for the answer to be queued.
    fn answer_going(&self, result: Result<Vec<u8>, HandlerError>) -> bool {
        self.answer_counted(result, true, true)
    }

    /// [`Slot::answer`]; `served` says whether the answer is the host's
    /// (counted in `served`) rather than the library's own at the end of
    /// the call's budget; `going`, whether the responder goes with it.
    fn answer_counted(
        &self,
        result: Result<Vec<u8>, HandlerError>,
        served: bool,
        going: bool,
    ) -> bool {
        let turn = Answering::start(self);
        let Some(sink) = turn.take() else {
            return false;
        };
        if going {
            drop(self.places.lock().unwrap_or_else(|p| p.into_inner()).take());
        }
        if served {
            RpcCounters::bump(&self.counters.served);
        }
        let result = bounded(result, self.max_payload, &self.counters);
        match sink {
            Sink::Stream { outbox, id } => write_reply(&outbox, id, result, true),
            Sink::Local(tx) => {
                let _ = tx.send(result.map_err(LocalRefusal::Failed));
            }
        }
        true
    }

    /// Whether the call was answered (its answer queued on the stream) or
    /// abandoned already. A stream that ends once its calls are answered
    /// must not close while an answer is still being encoded (a large
    /// reply takes milliseconds): the sink is taken first, so it is read
    /// first here.
    pub(crate) fn is_answered(&self) -> bool {
        self.sink
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none()
            && self.answering.load(Ordering::SeqCst) == 0
    }

    /// Ends a call its caller gave up on: no answer is sent, and a later
    /// one is dropped.
    pub(crate) fn abandon(&self) {
        let turn = Answering::start(self);
        drop(turn.take());
    }

    /// Tells the caller that this host is stopping and did not run the
    /// call, so it moves the call to another host (nothing when the call
    /// was answered already).
    pub(crate) fn refuse_stopping(&self) {
        let turn = Answering::start(self);
        let Some(sink) = turn.take() else {
            return;
        };
        RpcCounters::bump(&self.counters.refused);
        match sink {
            Sink::Stream { outbox, id } => {
                let refusal = RpcMsg::Refused {
                    id,
                    why: super::proto::Refusal::ShuttingDown,
                };
                let _ = outbox.send(&refusal, true);
            }
            Sink::Local(tx) => {
                let _ = tx.send(Err(LocalRefusal::Stopping));
            }
        }
    }

    /// Answers a call whose budget ran out (the caller stops waiting now).
    pub(crate) fn overran(&self, budget: Duration) {
        self.answer_counted(Err(overrun(budget)), false, false);
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
    slot: Option<Holder>,
}

/// A responder's link to its call: tells the call when the responder
/// goes, after whatever answer it gave (see [`Held`]).
struct Holder(Arc<Slot>);

impl std::ops::Deref for Holder {
    type Target = Slot;
    fn deref(&self) -> &Slot {
        &self.0
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        self.0.responder_gone();
    }
}

impl std::fmt::Debug for Responder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Responder").finish_non_exhaustive()
    }
}

impl Responder {
    fn new(
        sink: Sink,
        places: Held,
        open: OwnedSemaphorePermit,
        max_payload: usize,
        counters: Arc<RpcCounters>,
    ) -> (Responder, Arc<Slot>) {
        let slot = Arc::new(Slot {
            sink: Mutex::new(Some(sink)),
            open: Mutex::new(Some(open)),
            places: Mutex::new(Some(places)),
            gone: AtomicBool::new(false),
            answering: AtomicUsize::new(0),
            max_payload,
            counters,
        });
        (
            Responder {
                slot: Some(Holder(slot.clone())),
            },
            slot,
        )
    }

    /// A responder for call `id` of a call stream, holding the call's
    /// places (see [`Held`]).
    pub(crate) fn for_stream(
        outbox: Arc<Outbox>,
        id: u64,
        (stream, node): Places,
        max_payload: usize,
        counters: Arc<RpcCounters>,
    ) -> (Responder, Arc<Slot>) {
        let places = Held {
            _stream: Some(stream),
            _node: node.held,
        };
        Responder::new(
            Sink::Stream { outbox, id },
            places,
            node.open,
            max_payload,
            counters,
        )
    }

    /// A responder for a call this node makes to itself, holding its place
    /// among the node's serving ones (see [`Held`]).
    pub(crate) fn local(
        place: NodePlace,
        max_payload: usize,
        counters: Arc<RpcCounters>,
    ) -> (Responder, Arc<Slot>, oneshot::Receiver<LocalAnswer>) {
        let (tx, rx) = oneshot::channel();
        let places = Held {
            _stream: None,
            _node: place.held,
        };
        let (r, slot) = Responder::new(Sink::Local(tx), places, place.open, max_payload, counters);
        (r, slot, rx)
    }

    /// Answers with `reply`. A reply over the node's payload limit is not
    /// sent: the caller gets the error `"too_large"` instead, and this
    /// returns [`crate::Error::TooLarge`] so the handler learns it too. An
    /// answer the caller no longer waits for (its deadline passed, the
    /// stream ended) is dropped, which is not the handler's error.
    pub fn reply(mut self, reply: Vec<u8>) -> Result<(), crate::Error> {
        let Some(slot) = self.slot.take() else {
            return Ok(());
        };
        let (size, limit) = (reply.len(), slot.max_payload);
        slot.answer_going(Ok(reply));
        if size > limit {
            return Err(crate::Error::TooLarge { size, limit });
        }
        Ok(())
    }

    /// [`Responder::reply`] with a copy of `reply`, made only when it is
    /// within the limit: a host's buffer over it (a C caller's, perhaps
    /// larger than memory allows) is answered `"too_large"` uncopied.
    pub(crate) fn reply_copied(self, reply: &[u8]) -> Result<(), crate::Error> {
        match &self.slot {
            Some(slot) if reply.len() <= slot.max_payload => self.reply(reply.to_vec()),
            _ => self.reply_too_large(reply.len()),
        }
    }

    /// Answers `"too_large"` for a reply of `size` bytes, over the limit
    /// (C's length of a buffer no memory holds, `(size_t)-1`, is one).
    pub(crate) fn reply_too_large(mut self, size: usize) -> Result<(), crate::Error> {
        let Some(slot) = self.slot.take() else {
            return Ok(());
        };
        let limit = slot.max_payload;
        slot.answer_going(Err(too_large(size, limit, &slot.counters)));
        Err(crate::Error::TooLarge { size, limit })
    }

    /// Answers with an error: the caller gets [`crate::Error::Remote`] with
    /// its code and message.
    pub fn fail(mut self, error: HandlerError) {
        if let Some(slot) = self.slot.take() {
            slot.answer_going(Err(error));
        }
    }

    /// Whether the call is over without this responder: its caller
    /// cancelled it, its budget ran out (the caller was answered
    /// `"timeout"`) or its stream ended. A handler that has not started may
    /// skip the work; a long one may stop.
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

    /// Answers that this host is stopping and did not run the call (a
    /// handler pool that stops with calls still queued): the caller moves
    /// the call to another host that serves the plugin, as it does for a
    /// call that reaches a host already stopping. Only for a call whose
    /// handler did not run, or stopped without effect.
    pub fn refuse_stopping(mut self) {
        if let Some(slot) = self.slot.take() {
            slot.refuse_stopping();
        }
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
            slot.answer_going(Err(HandlerError::new(
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
    fn long_error_texts_are_cut_on_a_character_boundary() {
        let counters = RpcCounters::default();
        let long = "é".repeat(MAX_ERROR_MESSAGE);
        let e = bounded(
            Err(HandlerError::new("c".repeat(1000), long)),
            10,
            &counters,
        )
        .unwrap_err();
        assert!(e.code.len() <= MAX_ERROR_CODE && e.code.ends_with('…'));
        assert!(e.message.len() <= MAX_ERROR_MESSAGE && e.message.ends_with('…'));
        let short = bounded(Err(HandlerError::new("c", "m")), 10, &counters).unwrap_err();
        assert_eq!((short.code.as_str(), short.message.as_str()), ("c", "m"));
    }

    #[test]
    fn a_responder_dropped_while_its_thread_panics_answers_panic() {
        let counters = Arc::new(RpcCounters::default());
        let (place, _, _) = node_place(1);
        let (responder, _slot, mut answer) = Responder::local(place, 1024, counters.clone());
        let unwound = std::thread::spawn(move || {
            let _held = responder;
            panic!("a host thread's bug");
        })
        .join();
        assert!(unwound.is_err());
        let got = answer
            .try_recv()
            .expect("answered at once, not at the deadline");
        match got {
            Err(LocalRefusal::Failed(e)) => assert_eq!(e.code, "panic"),
            _ => panic!("want a failure with code panic"),
        }
        assert_eq!(
            counters.panics.load(std::sync::atomic::Ordering::Relaxed),
            1
        );
    }

    #[tokio::test]
    async fn a_call_holds_its_places_until_its_responder_goes() {
        let (_far, near) = tokio::io::duplex(1024);
        let (outbox, _flusher) = Outbox::new(crate::stream::Sealer::plaintext_for_tests(), near);
        let slots = Arc::new(tokio::sync::Semaphore::new(4));
        let (place, node, open) = node_place(1);
        let places = (slots.clone().try_acquire_owned().unwrap(), place);
        let counters = Arc::new(RpcCounters::default());
        let (responder, slot) = Responder::for_stream(outbox.clone(), 1, places, 1024, counters);
        assert!(!responder.is_abandoned());
        assert_eq!(open.available_permits(), 0, "open until it is over");
        outbox.close();
        assert!(responder.is_abandoned(), "its stream ended");
        slot.abandon();
        assert_eq!(
            node.available_permits(),
            0,
            "held while the host still holds the call"
        );
        assert_eq!(open.available_permits(), 1, "over: nothing left to send");
        responder.decline();
        assert_eq!(
            (slots.available_permits(), node.available_permits()),
            (4, 1),
            "the places come back with the responder"
        );
    }

    #[tokio::test]
    async fn a_declined_call_holds_its_places_until_it_ends() {
        let (_far, near) = tokio::io::duplex(1024);
        let (outbox, _flusher) = Outbox::new(crate::stream::Sealer::plaintext_for_tests(), near);
        let (place, node, open) = node_place(1);
        let places = (
            Arc::new(tokio::sync::Semaphore::new(1))
                .try_acquire_owned()
                .unwrap(),
            place,
        );
        let counters = Arc::new(RpcCounters::default());
        let (responder, slot) = Responder::for_stream(outbox, 1, places, 1024, counters);
        responder.decline();
        assert_eq!(node.available_permits(), 0, "held as if the handler ran");
        assert_eq!(open.available_permits(), 0);
        slot.overran(Duration::from_millis(5));
        assert_eq!(node.available_permits(), 1, "given back at the budget");
        assert_eq!(open.available_permits(), 1);
    }

    /// A node place from two semaphores of `n` places, and the semaphores.
    fn node_place(
        n: usize,
    ) -> (
        NodePlace,
        Arc<tokio::sync::Semaphore>,
        Arc<tokio::sync::Semaphore>,
    ) {
        let held = Arc::new(tokio::sync::Semaphore::new(n));
        let open = Arc::new(tokio::sync::Semaphore::new(n));
        let place = NodePlace {
            held: held.clone().try_acquire_owned().unwrap(),
            open: open.clone().try_acquire_owned().unwrap(),
        };
        (place, held, open)
    }
}
