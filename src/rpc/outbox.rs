//! The sending side of a call stream, shared by everyone with a frame to
//! send. A sender seals its frame and, when no one else is writing, writes
//! it to the socket from its own thread; only bytes the socket does not
//! take at once are left to the stream's flusher task. So a call or a reply
//! usually reaches the socket without waking another thread — what a host
//! thread answering a call, or a thread blocked in a call, would otherwise
//! pay twice per call. Under load (several calls in flight on the stream)
//! senders rather leave their frames to the flusher ([`Outbox::defer`]), so
//! that one write carries many.
//!
//! Two locks, never contended for long: `queue` is held to append an
//! encoded frame (with room for its tag); `wire` is held only by the one
//! writer of the moment (the token's holder), which seals the frames it
//! takes, in stream order as the nonces require, and writes them. So
//! appending never waits for a seal or for the socket. Frames stay in the
//! buffers they were encoded into, and one vectored write carries several:
//! a large frame is never copied into a batch.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use tokio::io::AsyncWrite;
use tokio::sync::Notify;

use super::proto::RpcMsg;
use crate::stream::Sealer;

/// Unsent bytes beyond which a caller's new request is refused as busy and
/// a host stops reading new calls: a peer that does not read cannot make
/// the queue grow without end. Well above what a healthy stream holds
/// (256 calls of 64 KiB in flight queue 16 MiB at worst).
pub const MAX_UNSENT: usize = 64 * 1024 * 1024;

/// Unsent bytes of all the call streams a node serves together, past which
/// a stream holding more than [`SHARE_PAST_BUDGET`] stops reading calls:
/// without it, callers that never read their replies could hold
/// [`MAX_UNSENT`] on each of a node's streams (64 GiB at 1,024 streams).
pub const NODE_UNSENT_BUDGET: usize = 256 * 1024 * 1024;

/// What a stream may hold and still read calls once the node's streams
/// together are past their budget: far above a healthy stream's backlog,
/// so a stream whose caller reads keeps going.
pub const SHARE_PAST_BUDGET: usize = 1024 * 1024;

/// Unsent bytes shared by several outboxes (see [`NODE_UNSENT_BUDGET`]).
#[derive(Debug)]
pub struct UnsentBudget {
    total: AtomicUsize,
    limit: usize,
    share: usize,
}

impl UnsentBudget {
    /// A budget of `limit` bytes, past which an outbox holding more than
    /// `share` has no room.
    pub fn new(limit: usize, share: usize) -> Arc<UnsentBudget> {
        Arc::new(UnsentBudget {
            total: AtomicUsize::new(0),
            limit,
            share,
        })
    }

    /// Unsent bytes of every outbox on this budget.
    pub fn total(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// Whether an outbox holding `waiting` bytes may take more calls.
    fn allows(&self, waiting: usize) -> bool {
        waiting <= self.share || self.total() <= self.limit
    }
}

/// A written buffer larger than this is dropped rather than kept for reuse.
const KEEP_CAPACITY: usize = 256 * 1024;

/// Buffers one write hands to the socket at most (well under `IOV_MAX`).
const BUFFERS_PER_WRITE: usize = 64;

/// A frame smaller than this is copied behind the small frames queued
/// before it, so that many small frames leave as one buffer; a larger one
/// stays in the buffer it was encoded into.
const COPY_BELOW: usize = 4096;

/// Why a frame was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum SendError {
    /// The peer is not reading: more than [`MAX_UNSENT`] bytes wait.
    Full,
    /// The stream failed or was closed before the frame was queued: it
    /// did not go out.
    Closed,
    /// The frame was queued, but the stream failed while it was being
    /// written: it may have gone out, whole or in part.
    Broke,
}

type Writer = Pin<Box<dyn AsyncWrite + Send>>;

/// Who may write to the socket now.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Token {
    Free,
    /// A sender writing from its own thread.
    Sender,
    /// The flusher task (the socket was full, or a sender deferred).
    Flusher,
}

/// Frames encoded and not yet taken by the writer.
struct Queue {
    /// Buffers of whole frames: one large frame, or small frames back to
    /// back.
    unsent: Vec<Vec<u8>>,
    /// Whether the last buffer of `unsent` holds small frames (and takes
    /// more).
    small_last: bool,
    /// A written buffer kept for the next small frames (empty).
    spare: Vec<u8>,
    /// Bytes of `unsent`.
    unsent_bytes: usize,
    /// Bytes of the batch the writer holds (for the bound on waiting bytes).
    in_batch: usize,
    token: Token,
    /// No more frames are taken; the flusher ends once all are written.
    closing: bool,
    /// Bytes ever queued: where the next frame starts on the stream
    /// (sealing keeps a frame's length).
    queued_total: u64,
    /// The budget this box's bytes count against, and what it counts now.
    budget: Option<(Arc<UnsentBudget>, usize)>,
}

impl Queue {
    fn waiting(&self) -> usize {
        self.unsent_bytes + self.in_batch
    }

    /// Brings the budget's count of this box's bytes up to date; called
    /// wherever `waiting` changes.
    fn report(&mut self) {
        let now = self.waiting();
        if let Some((budget, counted)) = &mut self.budget {
            if now >= *counted {
                budget.total.fetch_add(now - *counted, Ordering::Relaxed);
            } else {
                budget.total.fetch_sub(*counted - now, Ordering::Relaxed);
            }
            *counted = now;
        }
    }
}

impl Drop for Queue {
    fn drop(&mut self) {
        self.unsent_bytes = 0;
        self.in_batch = 0;
        self.report();
    }
}

/// The writing side, touched only by the token's holder (and by a cut).
struct Wire {
    sealer: Sealer,
    /// `None` once the stream was cut or failed.
    writer: Option<Writer>,
    /// Buffers of sealed frames being written; the first has `sent` bytes
    /// out.
    batch: VecDeque<Vec<u8>>,
    sent: usize,
    /// A written buffer on its way back to the queue's `spare`.
    spare: Vec<u8>,
    /// Bytes ever written.
    written_total: u64,
}

impl Wire {
    /// Counts `n` bytes as written, dropping the frames they finish.
    fn advance(&mut self, mut n: usize) {
        self.written_total += n as u64;
        while let Some(first) = self.batch.front() {
            let left = first.len() - self.sent;
            if n < left {
                self.sent += n;
                return;
            }
            n -= left;
            self.sent = 0;
            if let Some(mut done) = self.batch.pop_front() {
                if self.spare.capacity() == 0 && done.capacity() <= KEEP_CAPACITY {
                    done.clear();
                    self.spare = done;
                }
            }
        }
    }
}

/// Cuts the stream when a panic starts while the token's holder writes
/// (not when a thread already unwinding answers a call).
struct CutOnUnwind<'a> {
    outbox: &'a Outbox,
    unwinding_before: bool,
}

impl<'a> CutOnUnwind<'a> {
    fn new(outbox: &'a Outbox) -> CutOnUnwind<'a> {
        CutOnUnwind {
            outbox,
            unwinding_before: std::thread::panicking(),
        }
    }
}

impl Drop for CutOnUnwind<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() && !self.unwinding_before {
            self.outbox.cut();
        }
    }
}

/// One call stream's sending side.
pub struct Outbox {
    /// Bytes each frame leaves for its tag (0 on a plaintext stream).
    tag_len: usize,
    queue: Mutex<Queue>,
    wire: Mutex<Wire>,
    /// Wakes the flusher: the token was handed to it, or the box closes.
    flush: Notify,
    /// Wakes those waiting for room ([`Outbox::room`]).
    drained: Notify,
    failed: AtomicBool,
}

impl Outbox {
    /// An outbox over `writer`; the returned future is its flusher, which
    /// the owner spawns and which ends when the box closes or fails.
    /// `writer` must not buffer (a socket or a pipe): frames are never
    /// flushed, only written.
    pub fn new<W: AsyncWrite + Send + 'static>(
        sealer: Sealer,
        writer: W,
    ) -> (Arc<Outbox>, impl std::future::Future<Output = ()> + Send) {
        let outbox = Arc::new(Outbox {
            tag_len: sealer.tag_len(),
            queue: Mutex::new(Queue {
                unsent: Vec::new(),
                small_last: false,
                spare: Vec::new(),
                unsent_bytes: 0,
                in_batch: 0,
                token: Token::Free,
                closing: false,
                queued_total: 0,
                budget: None,
            }),
            wire: Mutex::new(Wire {
                sealer,
                writer: Some(Box::pin(writer)),
                batch: VecDeque::new(),
                sent: 0,
                spare: Vec::new(),
                written_total: 0,
            }),
            flush: Notify::new(),
            drained: Notify::new(),
            failed: AtomicBool::new(false),
        });
        let flusher = outbox.clone().flusher();
        (outbox, flusher)
    }

    /// Counts this box's unsent bytes against `budget` (a node's, shared
    /// by the streams it serves); set before anything is queued.
    pub fn share_budget(&self, budget: Arc<UnsentBudget>) {
        let mut q = self.queue();
        q.budget = Some((budget, 0));
        q.report();
    }

    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wire(&self) -> MutexGuard<'_, Wire> {
        self.wire.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `msg` and, when no one is writing, writes it from this thread
    /// as far as the socket takes it at once; never blocks. `Full` when the
    /// peer has stopped reading (a reply, which must not be lost, passes
    /// `always` and is queued anyway: the host bounds those by not reading
    /// new calls, see [`Outbox::room`]). Returns where on the stream the
    /// frame starts (compare with [`Outbox::written`]).
    pub fn send(&self, msg: &RpcMsg, always: bool) -> Result<u64, SendError> {
        let (mine, starts_at) = self.enqueue(msg, always, Token::Sender)?;
        if !mine {
            return Ok(starts_at);
        }
        let mut cx = Context::from_waker(Waker::noop());
        // One batch (the one holding this frame): a thread that is not the
        // runtime's never ends up writing for everyone under load.
        match self.drive(&mut cx, Some(1)) {
            Poll::Ready(true) => Ok(starts_at),
            // Nothing of the frame went out when the stream broke before it.
            Poll::Ready(false) if self.wire().written_total <= starts_at => {
                Err(SendError::Closed)
            }
            Poll::Ready(false) => Err(SendError::Broke),
            Poll::Pending => {
                // The socket is full: the flusher, which registers itself
                // for writability, takes over the token and the rest.
                self.queue().token = Token::Flusher;
                self.flush.notify_one();
                Ok(starts_at)
            }
        }
    }

    /// Queues `msg` for the flusher without writing it: for a sender with
    /// company (other calls in flight on the stream), so that one write
    /// carries the frames of many rather than each paying a syscall and a
    /// wake-up of the peer. A sender alone uses [`Outbox::send`].
    pub fn defer(&self, msg: &RpcMsg, always: bool) -> Result<u64, SendError> {
        let (mine, starts_at) = self.enqueue(msg, always, Token::Flusher)?;
        if mine {
            self.flush.notify_one();
        }
        Ok(starts_at)
    }

    /// Bytes written so far. Once the box is cut or failed it stays put: a
    /// frame starting at or past it (see [`Outbox::send`]) never went out.
    pub fn written(&self) -> u64 {
        self.wire().written_total
    }

    /// Encodes and appends `msg`; true when the token was free and is now
    /// `who`'s (who must then write), and where on the stream the frame
    /// starts.
    fn enqueue(&self, msg: &RpcMsg, always: bool, who: Token) -> Result<(bool, u64), SendError> {
        // Encoded before taking the lock; only the copy happens under it.
        let frame = Sealer::encode_frame(msg, self.tag_len).map_err(|_| SendError::Closed)?;
        let mut q = self.queue();
        if q.closing {
            return Err(SendError::Closed);
        }
        if !always && q.waiting() > MAX_UNSENT {
            return Err(SendError::Full);
        }
        q.unsent_bytes += frame.len();
        q.report();
        let starts_at = q.queued_total;
        q.queued_total += frame.len() as u64;
        let small = frame.len() < COPY_BELOW;
        let q = &mut *q;
        match q.unsent.last_mut() {
            Some(last) if small && q.small_last => last.extend_from_slice(&frame),
            _ if small && q.spare.capacity() >= frame.len() => {
                // Small frames go into a reused buffer, which the ones
                // behind them fill without growing it.
                let mut buf = std::mem::take(&mut q.spare);
                buf.extend_from_slice(&frame);
                q.unsent.push(buf);
                q.small_last = true;
            }
            _ => {
                q.unsent.push(frame);
                q.small_last = small;
            }
        }
        if q.token != Token::Free {
            // The holder writes it with the rest before letting go.
            return Ok((false, starts_at));
        }
        q.token = who;
        Ok((true, starts_at))
    }

    /// Writes batches until nothing waits (`Ready(true)`, token released),
    /// `max_batches` were written and more wait (`Ready(true)`, token handed
    /// to the flusher), the socket is full (`Pending`, token kept, `cx`
    /// registered) or the stream fails (`Ready(false)`). Only the token's
    /// holder calls this.
    fn drive(&self, cx: &mut Context<'_>, max_batches: Option<usize>) -> Poll<bool> {
        // A panic below (a writer's, a poisoned lock's) must not leave the
        // token held by no one: the stream is cut instead.
        let _unwind = CutOnUnwind::new(self);
        let mut batches = 0;
        let mut wire = self.wire();
        loop {
            if wire.batch.is_empty() {
                let mut q = self.queue();
                if q.unsent.is_empty() {
                    q.in_batch = 0;
                    q.report();
                    q.token = Token::Free;
                    let closing = q.closing;
                    drop(q);
                    drop(wire);
                    self.drained.notify_waiters();
                    if closing {
                        self.flush.notify_one();
                    }
                    return Poll::Ready(true);
                }
                if max_batches.is_some_and(|max| batches >= max) {
                    q.token = Token::Flusher;
                    drop(q);
                    drop(wire);
                    self.flush.notify_one();
                    return Poll::Ready(true);
                }
                batches += 1;
                q.in_batch = std::mem::take(&mut q.unsent_bytes);
                q.small_last = false;
                if q.spare.capacity() == 0 {
                    q.spare = std::mem::take(&mut wire.spare);
                }
                let Wire { batch, sealer, .. } = &mut *wire;
                batch.extend(q.unsent.drain(..));
                drop(q);
                if batch.iter_mut().any(|f| sealer.seal_frames(f).is_err()) {
                    // The stream's nonce sequence is broken: nothing more
                    // may go out on it.
                    drop(wire);
                    self.cut();
                    return Poll::Ready(false);
                }
            }
            let Wire {
                writer,
                batch,
                sent,
                ..
            } = &mut *wire;
            let Some(writer) = writer.as_mut() else {
                drop(wire);
                self.cut();
                return Poll::Ready(false);
            };
            let written = if batch.len() == 1 {
                // The usual case (one call alone, or one batch of small
                // frames): a plain write.
                writer.as_mut().poll_write(cx, &batch[0][*sent..])
            } else {
                let mut slices = [IoSlice::new(&[]); BUFFERS_PER_WRITE];
                let mut count = 0;
                for (slot, frame) in slices.iter_mut().zip(batch.iter()) {
                    *slot = IoSlice::new(&frame[if count == 0 { *sent } else { 0 }..]);
                    count += 1;
                }
                writer.as_mut().poll_write_vectored(cx, &slices[..count])
            };
            match written {
                Poll::Ready(Ok(n)) if n > 0 => wire.advance(n),
                Poll::Ready(_) => {
                    drop(wire);
                    self.cut();
                    return Poll::Ready(false);
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// Whether at most [`MAX_UNSENT`] bytes wait, and the budget shared
    /// with other boxes, if any, allows this box's (or the box closed).
    pub fn has_room(&self) -> bool {
        let q = self.queue();
        let waiting = q.waiting();
        q.closing
            || (waiting <= MAX_UNSENT && q.budget.as_ref().is_none_or(|(b, _)| b.allows(waiting)))
    }

    /// Waits until [`Outbox::has_room`].
    pub async fn room(&self) {
        loop {
            let drained = self.drained.notified();
            if self.has_room() {
                return;
            }
            drained.await;
        }
    }

    /// Whether every frame queued so far has been written (or never will
    /// be: the stream failed or was cut).
    pub fn is_flushed(&self) -> bool {
        let queued = self.queue().queued_total;
        self.is_failed() || self.wire().written_total >= queued
    }

    /// Whether the stream failed (a write error, or it was cut).
    pub fn is_failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }

    /// Whether the box takes no more frames (closing, cut or failed).
    pub fn is_closed(&self) -> bool {
        self.queue().closing
    }

    /// Takes no more frames; the flusher writes what waits, then shuts the
    /// writing side down.
    pub fn close(&self) {
        self.queue().closing = true;
        self.flush.notify_one();
    }

    /// Cuts the stream now: what waits is dropped and the writing side
    /// closed without a flush.
    pub fn cut(&self) {
        {
            let mut q = self.queue();
            q.closing = true;
            q.unsent = Vec::new();
            q.small_last = false;
            q.unsent_bytes = 0;
            // What the writer holds is dropped with the writer.
            q.in_batch = 0;
            q.report();
        }
        // Waits at most for a write syscall of the token's holder.
        let writer = self.wire().writer.take();
        drop(writer);
        self.failed.store(true, Ordering::Relaxed);
        self.flush.notify_one();
        self.drained.notify_waiters();
    }

    async fn flusher(self: Arc<Self>) {
        loop {
            self.flush.notified().await;
            if self.is_failed() {
                return;
            }
            let (mine, shut) = {
                let mut q = self.queue();
                match q.token {
                    Token::Flusher => (true, false),
                    Token::Free if q.closing => {
                        // Nothing waits and nothing more can come: keep the
                        // token for good and shut the writing side down.
                        q.token = Token::Flusher;
                        (false, true)
                    }
                    _ => (false, false),
                }
            };
            if mine {
                loop {
                    tokio::select! {
                        ok = std::future::poll_fn(|cx| self.drive(cx, None)) => {
                            if !ok {
                                return;
                            }
                            break;
                        }
                        // A cut drops the writer, which then wakes no one.
                        _ = self.flush.notified() => {
                            if self.is_failed() {
                                return;
                            }
                        }
                    }
                }
            }
            if shut {
                let writer = self.wire().writer.take();
                if let Some(mut w) = writer {
                    let _ = std::future::poll_fn(|cx| w.as_mut().poll_shutdown(cx)).await;
                }
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire;
    use tokio::io::AsyncReadExt;

    fn plain_sealer() -> Sealer {
        Sealer::plaintext_for_tests()
    }

    fn refusal(id: u64) -> RpcMsg {
        RpcMsg::Refused {
            id,
            why: super::super::proto::Refusal::Overloaded,
        }
    }

    async fn read_ids(r: &mut (impl tokio::io::AsyncRead + Unpin), n: usize) -> Vec<u64> {
        let mut ids = Vec::new();
        for _ in 0..n {
            let mut len = [0u8; wire::FRAME_HEADER];
            r.read_exact(&mut len).await.unwrap();
            let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
            r.read_exact(&mut body).await.unwrap();
            match wire::decode::<RpcMsg>(&body).unwrap() {
                RpcMsg::Refused { id, .. } => ids.push(id),
                RpcMsg::Chunk { id, data } => {
                    assert_eq!(data, large(id).1, "large frame {id} intact");
                    ids.push(id)
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        ids
    }

    /// A frame that keeps a buffer of its own (not copied behind small
    /// ones) and is larger than the test pipes take at once.
    fn large(id: u64) -> (RpcMsg, Vec<u8>) {
        let data: Vec<u8> = (0..COPY_BELOW + 100)
            .map(|i| (i as u64 ^ id) as u8)
            .collect();
        (
            RpcMsg::Chunk {
                id,
                data: data.clone(),
            },
            data,
        )
    }

    /// Four threads send and defer 50 frames each, some larger than a
    /// write takes at once; `far` must read each thread's in its order.
    async fn frames_keep_their_order<R, W>(mut far: R, near: W)
    where
        R: tokio::io::AsyncRead + Unpin,
        W: AsyncWrite + Send + 'static,
    {
        let (outbox, flusher) = Outbox::new(plain_sealer(), near);
        let flusher = tokio::spawn(flusher);
        let senders: Vec<_> = (0..4u64)
            .map(|t| {
                let outbox = outbox.clone();
                std::thread::spawn(move || {
                    for i in 0..50 {
                        let id = t * 1000 + i;
                        let msg = if i % 7 == 0 { large(id).0 } else { refusal(id) };
                        if (t + i) % 3 == 0 {
                            outbox.defer(&msg, false).unwrap();
                        } else {
                            outbox.send(&msg, false).unwrap();
                        }
                    }
                })
            })
            .collect();
        let ids = read_ids(&mut far, 200).await;
        for s in senders {
            s.join().unwrap();
        }
        for t in 0..4u64 {
            let mine: Vec<u64> = ids.iter().copied().filter(|i| i / 1000 == t).collect();
            assert_eq!(mine, (0..50).map(|i| t * 1000 + i).collect::<Vec<_>>());
        }
        outbox.close();
        flusher.await.unwrap();
        let mut rest = Vec::new();
        far.read_to_end(&mut rest).await.unwrap();
        assert!(
            rest.is_empty(),
            "the writing side was shut down after the frames"
        );
        assert_eq!(outbox.send(&refusal(1), true), Err(SendError::Closed));
    }

    #[tokio::test]
    async fn frames_written_directly_deferred_and_by_the_flusher_keep_their_order() {
        // A pipe smaller than the frames written: most of them wait for the
        // flusher while others are appended behind them.
        let (far, near) = tokio::io::duplex(64);
        frames_keep_their_order(far, near).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn vectored_writes_to_a_socket_keep_frames_whole_and_in_order() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        // A send buffer of a few frames: writes end inside frames.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_send_buffer_size(4096).unwrap();
        let near = socket
            .connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (far, _) = listener.accept().await.unwrap();
        let (_, near) = near.into_split();
        frames_keep_their_order(far, near).await;
    }

    #[tokio::test]
    async fn a_peer_that_does_not_read_makes_new_requests_busy_but_not_replies() {
        let (far, near) = tokio::io::duplex(1024);
        let (outbox, flusher) = Outbox::new(plain_sealer(), near);
        let flusher = tokio::spawn(flusher);
        let big = RpcMsg::Chunk {
            id: 1,
            data: vec![7; 1024 * 1024],
        };
        let mut full = false;
        for _ in 0..(MAX_UNSENT / (1024 * 1024) + 4) {
            if outbox.send(&big, false) == Err(SendError::Full) {
                full = true;
                break;
            }
        }
        assert!(full, "an unread stream refuses requests beyond the bound");
        assert!(outbox.send(&refusal(2), true).is_ok(), "replies still queue");
        let room = tokio::time::timeout(std::time::Duration::from_millis(50), outbox.room());
        assert!(room.await.is_err(), "no room while the peer does not read");
        // The peer goes away: the stream fails, and waiters are released.
        drop(far);
        tokio::time::timeout(std::time::Duration::from_secs(5), outbox.room())
            .await
            .expect("a failed stream releases those waiting for room");
        flusher.await.unwrap();
        assert!(outbox.is_failed());
        assert_eq!(outbox.send(&refusal(3), true), Err(SendError::Closed));
    }

    #[tokio::test]
    async fn streams_past_their_shared_budget_read_on_only_while_they_hold_little() {
        const KIB: usize = 1024;
        let budget = UnsentBudget::new(2048 * KIB, 256 * KIB);
        let unread = || {
            let (far, near) = tokio::io::duplex(1024);
            let (outbox, flusher) = Outbox::new(plain_sealer(), near);
            outbox.share_budget(budget.clone());
            (far, outbox, tokio::spawn(flusher))
        };
        let chunk = |kib: usize| RpcMsg::Chunk {
            id: 1,
            data: vec![7; kib * KIB],
        };
        let (far_a, a, flusher_a) = unread();
        let (far_b, b, flusher_b) = unread();
        // A's caller reads nothing: its replies pass the node's budget,
        // far below the bound of one stream.
        for _ in 0..3 {
            a.send(&chunk(1024), true).unwrap();
        }
        assert!(budget.total() > 2048 * KIB, "{}", budget.total());
        assert!(!a.has_room(), "the stream holding the budget stops reading");
        // B, holding little, still reads; holding more than its share, not.
        b.send(&chunk(100), true).unwrap();
        assert!(b.has_room());
        b.send(&chunk(400), true).unwrap();
        assert!(!b.has_room());
        // A is cut: its bytes leave the budget, and B reads again.
        a.cut();
        assert!(b.has_room());
        assert!(budget.total() < 600 * KIB, "{}", budget.total());
        drop((far_a, far_b));
        b.cut();
        flusher_a.await.unwrap();
        flusher_b.await.unwrap();
        drop((a, b));
        assert_eq!(budget.total(), 0, "dropped boxes count nothing");
    }

    /// A writer that takes `left` bytes and then fails.
    struct BreaksAfter(usize);

    impl AsyncWrite for BreaksAfter {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            if self.0 == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()));
            }
            let n = buf.len().min(self.0);
            self.0 -= n;
            Poll::Ready(Ok(n))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// A frame of which some bytes went out before the stream broke may
    /// have reached the peer: the sender is told so (a caller must not send
    /// it again elsewhere). One of which nothing went out did not.
    #[tokio::test]
    async fn a_write_that_fails_tells_whether_the_frame_may_have_gone_out() {
        for (takes, want) in [(0, SendError::Closed), (2, SendError::Broke)] {
            let (outbox, _flusher) = Outbox::new(plain_sealer(), BreaksAfter(takes));
            assert_eq!(outbox.send(&refusal(1), true), Err(want));
            assert!(outbox.is_failed());
            assert_eq!(outbox.send(&refusal(2), true), Err(SendError::Closed));
        }
    }

    #[tokio::test]
    async fn a_cut_stream_drops_what_waits_and_refuses_more() {
        let (mut far, near) = tokio::io::duplex(16);
        let (outbox, flusher) = Outbox::new(plain_sealer(), near);
        let flusher = tokio::spawn(flusher);
        outbox.send(&refusal(1), false).unwrap();
        outbox.cut();
        flusher.await.unwrap();
        assert_eq!(outbox.send(&refusal(2), true), Err(SendError::Closed));
        let mut got = Vec::new();
        far.read_to_end(&mut got).await.unwrap();
        assert!(got.len() <= 16, "nothing is written after the cut");
    }
}
