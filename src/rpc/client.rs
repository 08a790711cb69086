//! The calling side: multiplexed streams to each host (one for small
//! calls, a few more while large ones overlap), calls matched to replies by
//! id, bounds on calls in flight, and the router that picks a host and
//! fails over.

use tracing::Instrument as _;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::TcpStream;
use tokio::sync::{oneshot, Semaphore};
use tokio::time::Instant;

use super::outbox::{Outbox, SendError};
use super::proto::{Refusal, RpcMsg};
use super::{RpcCounters, RpcLimits};
use crate::stream::{self, Security};
use crate::wire;

mod borrowed;
mod unreachable;
pub use borrowed::Outcome;

/// A pooled stream unused this long is replaced rather than reused: well
/// before the host's own idle timeout, so a call never races its closing.
pub const CLIENT_IDLE: std::time::Duration = std::time::Duration::from_secs(60);
/// How long a request that could not be written waits for the host's
/// refusal of the stream, if one is on its way.
const REFUSAL_GRACE: std::time::Duration = std::time::Duration::from_millis(200);
/// How long connecting to a host may take.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);
/// After a host refused a stream, no more are opened to it for this long.
const REFUSED_FOR: std::time::Duration = std::time::Duration::from_secs(10);
/// A request or an answer at least this large is a large call.
pub const LARGE_CALL: usize = 16 * 1024;
/// Streams to one host that large calls may spread over. Large frames
/// queued on one socket wait for one another and for one reader on each
/// side; on separate sockets they are written, carried and read in
/// parallel. Small calls keep to one stream, where one write carries many.
const MAX_STREAMS_PER_HOST: usize = 4;
/// Streams a request tries when each is retired by its host's goodbye
/// before the request goes out (a host rotating keys back to back).
const RENEW_TRIES: usize = 3;
/// How often a stream its host retired looks whether calls still wait on
/// it (`next_frame` is cancel-safe).
const RETIRED_POLL: std::time::Duration = std::time::Duration::from_millis(100);

/// What came back for one request.
#[derive(Debug)]
pub enum Answer {
    /// The handler's result.
    Reply(Result<Vec<u8>, (String, String)>),
    /// Refused before any handler ran.
    Refused(Refusal),
    /// Artifact bytes.
    Chunk(Vec<u8>),
    /// The stream ended with the request in flight.
    Lost,
    /// The stream ended before any byte of the request was written: the
    /// host never saw it (another host may be tried).
    Unsent,
}

/// Why a request was not sent at all (so another host may be tried).
#[derive(Debug)]
pub enum NotSent {
    /// Could not connect (or the handshake failed).
    Connect(String),
    /// Could not open a connection for want of this process's own
    /// resources (descriptors, buffers, memory): no host is to blame,
    /// and every host not reached through an open stream fails the same.
    Local(String),
    /// The stream to this host is at this node's bound of calls in
    /// flight on one stream (`max_inflight_per_conn`).
    StreamFull,
    /// The stream's outgoing buffer is full: the host does not take what
    /// was sent to it.
    Busy,
    /// The caller's deadline passed while connecting.
    OutOfTime,
}

/// A call waiting for its answer.
struct Waiting {
    tx: oneshot::Sender<Answer>,
    /// Where its request starts on the stream, once queued.
    starts_at: Option<u64>,
}

type Pending = Mutex<HashMap<u64, Waiting>>;

/// The streams to one host.
#[derive(Default)]
struct Slot {
    /// Open streams, the first opened by whichever call needed one first.
    conns: Mutex<Vec<Arc<Conn>>>,
    /// Held while a call opens the first stream to the host, so calls that
    /// start together open one, not one each.
    dialing: tokio::sync::Mutex<()>,
    /// Set while another stream is being opened in the background.
    dialing_another: AtomicBool,
    /// When the host last refused a whole stream (at its bound of streams).
    refused_at: Mutex<Option<Instant>>,
}

/// Clears [`Slot::dialing_another`] however its task ends (also when the
/// runtime stops and drops it).
struct DialingAnother(Arc<Slot>);

impl Drop for DialingAnother {
    fn drop(&mut self) {
        self.0.dialing_another.store(false, Ordering::Release);
    }
}

impl Slot {
    /// Ends every stream of the slot: the calls waiting on them end as
    /// `Lost` (they may have run).
    fn end(&self) {
        let conns = std::mem::take(&mut *self.conns.lock().unwrap_or_else(|p| p.into_inner()));
        for conn in conns {
            {
                // Under the lock the calls register in: none gets on after.
                let _p = conn.pending.lock().unwrap_or_else(|p| p.into_inner());
                conn.alive.store(false, Ordering::Relaxed);
            }
            conn.reader.abort();
            conn.out.cut();
            answer_waiting(&conn.pending, Some(&conn.out), || Answer::Lost);
        }
    }

    /// Drops the streams no new call may use (a retired one stays while
    /// calls wait on it, so that ending the slot ends them).
    fn drop_unusable(&self, conns: &mut Vec<Arc<Conn>>) {
        conns.retain(|c| {
            let usable = c.usable();
            if !usable && c.refused_whole() {
                // Refused before any call went on it.
                self.note_refused();
            }
            usable || (c.is_retired() && c.in_flight() > 0)
        });
    }

    fn add(&self, conn: Conn) -> Arc<Conn> {
        let conn = Arc::new(conn);
        self.conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(conn.clone());
        conn
    }

    /// Whether the host refused a stream within [`REFUSED_FOR`]: no more
    /// are opened to it meanwhile.
    fn refused_lately(&self) -> bool {
        self.refused_at
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|at| at.elapsed() < REFUSED_FOR)
    }

    fn note_refused(&self) {
        *self.refused_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }

    /// The oldest usable stream other than `conn`: the one most likely
    /// to have been taken by the host (a newer one may be refused too).
    fn oldest_besides(&self, conn: &Conn) -> Option<Arc<Conn>> {
        let conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        conns
            .iter()
            .find(|c| !std::ptr::eq(c.as_ref(), conn) && c.usable())
            .map(|c| c.touch())
    }
}

/// One multiplexed stream to a host.
struct Conn {
    /// When a call last used it; an idle stream is replaced before the host
    /// would close it (see `server::CALL_STREAM_IDLE`).
    last_used: Mutex<Instant>,
    /// Bounded: a host that stops reading makes new calls `Busy`, not
    /// an ever-growing queue. A call writes its own request (see
    /// [`Outbox`]).
    out: Arc<Outbox>,
    pending: Arc<Pending>,
    alive: Arc<AtomicBool>,
    /// Set when the host said goodbye: no new call goes on the stream, the
    /// calls on it are still answered.
    retired: Arc<AtomicBool>,
    /// Set by the reader when it ends: `Some(why)` when the host refused
    /// the whole stream (so a request that could not be written learns why).
    ended: tokio::sync::watch::Receiver<Option<Option<Refusal>>>,
    /// The task reading the host's answers.
    reader: tokio::task::AbortHandle,
}

impl Conn {
    /// Whether a new call may use it: not failed, its tasks still running
    /// (they run on the runtime of the call that opened it, which may have
    /// been dropped since, its tasks with it), and not idle so long that
    /// the host may be closing it.
    fn usable(&self) -> bool {
        self.alive.load(Ordering::Relaxed)
            && !self.reader.is_finished()
            && self
                .last_used
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .elapsed()
                < CLIENT_IDLE
    }

    /// Whether the host said goodbye (a call that finds it so goes on a
    /// new stream to the same host).
    fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Relaxed)
    }

    /// Whether the host refused the whole stream.
    fn refused_whole(&self) -> bool {
        matches!(*self.ended.borrow(), Some(Some(_)))
    }

    fn in_flight(&self) -> usize {
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    fn touch(self: &Arc<Self>) -> Arc<Conn> {
        *self.last_used.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        self.clone()
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        // The last call is done with the stream: its queued requests are
        // written, then the writing side closes.
        self.out.close();
    }
}

/// Streams to hosts, reused by every call.
pub struct Pool {
    slots: Mutex<HashMap<SocketAddr, Arc<Slot>>>,
    /// Calls routed to each host and not finished, counted from the moment
    /// of the choice so that calls starting together spread.
    load: Mutex<HashMap<SocketAddr, Arc<AtomicUsize>>>,
    /// Hosts that could not be reached lately: tried last for a while.
    unreachable: unreachable::Unreachable,
    inflight: Arc<Semaphore>,
    limits: RpcLimits,
    next_id: AtomicU64,
    dialer: Dialer,
    /// Set once the node stops: every stream is ended, none opens again.
    closed: AtomicBool,
    /// Streams lent whole to blocking calls.
    borrowed: Arc<borrowed::Borrowed>,
}

/// Opens call streams; cloned into the tasks that open streams beside the
/// ones calls are waiting on.
#[derive(Clone)]
struct Dialer {
    max_frame: usize,
    counters: Arc<RpcCounters>,
    /// The node's span, for the tasks of its call streams (callers run in
    /// spans of their own).
    span: tracing::Span,
}

/// A call counted against a host.
pub struct Reservation(Arc<AtomicUsize>);

impl Drop for Reservation {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Where a request goes, to open a new stream there when the one it took
/// is retired.
struct Host<'a> {
    slot: &'a Arc<Slot>,
    addr: SocketAddr,
    security: &'a Security,
    large: bool,
}

/// Takes `id` out of the pending map when the waiting call gives up; a
/// call given up before its deadline (its caller cancelled it) is also
/// cancelled at the host, which stops its handler there at once instead of
/// at the deadline (a responder's handler sees it abandoned).
struct Forget<'a> {
    conn: &'a Conn,
    id: u64,
    deadline: Instant,
    /// Whether the request was queued, so the host may know the call.
    sent: bool,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        let unanswered = self
            .conn
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id)
            .is_some();
        if unanswered && self.sent && Instant::now() < self.deadline {
            // Best effort: a stream that ended or is full has no use for it.
            let _ = self.conn.out.send(&RpcMsg::Cancel { id: self.id }, false);
        }
    }
}

impl Pool {
    /// An empty pool.
    pub fn new(limits: RpcLimits, max_frame: usize, counters: Arc<RpcCounters>) -> Pool {
        Pool {
            slots: Mutex::new(HashMap::new()),
            load: Mutex::new(HashMap::new()),
            unreachable: unreachable::Unreachable::default(),
            inflight: Arc::new(Semaphore::new(limits.max_inflight)),
            limits,
            next_id: AtomicU64::new(1),
            dialer: Dialer {
                max_frame,
                counters,
                span: tracing::Span::current(),
            },
            closed: AtomicBool::new(false),
            borrowed: Arc::default(),
        }
    }

    /// The bounds in force.
    pub fn limits(&self) -> &RpcLimits {
        &self.limits
    }

    /// Calls made here and not over yet.
    pub fn in_flight(&self) -> usize {
        self.limits
            .max_inflight
            .saturating_sub(self.inflight.available_permits())
    }

    /// A slot of the node-wide bound, or `None` when this node has too many
    /// calls in flight.
    pub fn try_inflight(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.inflight.clone().try_acquire_owned().ok()
    }

    /// Calls routed to `addr` and not finished (for least-outstanding routing).
    pub fn outstanding(&self, addr: SocketAddr) -> usize {
        self.load
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&addr)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Notes that `addr` could not be reached.
    pub fn mark_unreachable(&self, addr: SocketAddr) {
        self.unreachable.mark(addr);
    }

    /// Whether `addr` is to be tried after the others: it could not be
    /// reached lately (see [`unreachable`]).
    pub fn recently_unreachable(&self, addr: SocketAddr) -> bool {
        self.unreachable.is_recent(addr)
    }

    /// Counts a call against `addr` until the guard drops.
    pub fn reserve(&self, addr: SocketAddr) -> Reservation {
        let counter = self
            .load
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(addr)
            .or_default()
            .clone();
        counter.fetch_add(1, Ordering::Relaxed);
        Reservation(counter)
    }

    /// Ends the streams to `addr`, a host the membership declared failed:
    /// one that froze or lost its network sends no reset, and the calls
    /// waiting on it would wait for their deadlines, or for ever. They end
    /// as `Lost` (they may have run); later calls open a new stream.
    pub fn host_failed(&self, addr: SocketAddr) {
        let slot = self
            .slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&addr);
        if let Some(slot) = slot {
            slot.end();
        }
        self.borrowed.end(Some(addr));
    }

    /// Closes the streams no call may take any more: idle past
    /// [`CLIENT_IDLE`] (their hosts close them at their own idle timeout,
    /// which would leave our ends half-closed until the next call to the
    /// host), failed, or opened before the keys changed. A stream a call
    /// uses stays open until its call ends. Run every second or so.
    pub fn close_idle(&self) {
        let slots: Vec<Arc<Slot>> = self
            .slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        for slot in slots {
            slot.drop_unusable(&mut slot.conns.lock().unwrap_or_else(|p| p.into_inner()));
        }
        self.forget_unused_hosts();
        self.borrowed.sweep();
    }

    /// Lets go of what is kept per host address for hosts no call uses:
    /// hosts come and go at new addresses (port 0, DHCP, pods), and each
    /// address's slot and counter stayed for good (some 200 B each).
    fn forget_unused_hosts(&self) {
        self.slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, slot| {
                Arc::strong_count(slot) > 1
                    || !slot.conns.lock().unwrap_or_else(|p| p.into_inner()).is_empty()
                    || slot.refused_lately()
            });
        self.load
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, count| Arc::strong_count(count) > 1 || count.load(Ordering::Relaxed) > 0);
        self.unreachable.prune();
    }

    /// Later calls open new streams (the node's keys or encryption mode
    /// changed); calls in flight finish on the streams they have, which
    /// their hosts end gracefully.
    pub fn forget_streams(&self) {
        self.slots.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.borrowed.forget();
    }

    /// Ends every stream for good (the node stopped): their pending calls
    /// end now, and later requests are answered `Lost` at once.
    pub fn close_all(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let slots = std::mem::take(&mut *self.slots.lock().unwrap_or_else(|p| p.into_inner()));
        for slot in slots.into_values() {
            slot.end();
        }
        self.borrowed.end(None);
    }

    /// Whether the node stopped (see [`Pool::close_all`]).
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// The stream slot of `addr`, made on first use.
    fn slot(&self, addr: SocketAddr) -> Arc<Slot> {
        self.slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(addr)
            .or_default()
            .clone()
    }

    /// The stream a call to `addr` goes on: the least busy open one. A
    /// large call that finds every stream busy has another opened (up to
    /// [`MAX_STREAMS_PER_HOST`]) in the background, for the calls after
    /// it: no call waits for a stream it does not need.
    async fn conn(
        &self,
        slot: &Arc<Slot>,
        addr: SocketAddr,
        security: &Security,
        large: bool,
    ) -> Result<Arc<Conn>, NotSent> {
        if let Some(conn) = self.open_conn(slot, addr, security, large) {
            return Ok(conn);
        }
        // Boxed: dialling (connect and handshake) is the rare path, and its
        // state would otherwise make every call's future as large as it.
        Box::pin(self.dial(slot, addr, security)).await
    }

    /// The quietest usable stream to `addr`, if one is open (opening one
    /// more in the background for a large call when they are all busy).
    fn open_conn(
        &self,
        slot: &Arc<Slot>,
        addr: SocketAddr,
        security: &Security,
        large: bool,
    ) -> Option<Arc<Conn>> {
        let (best, count) = quietest(slot);
        let (best, load) = best?;
        let enough = !large || count >= MAX_STREAMS_PER_HOST || load == 0 || slot.refused_lately();
        if !enough {
            self.open_another(slot, addr, security);
        }
        Some(best.touch())
    }

    /// Opens a stream to `addr`, one dialler at a time per host.
    async fn dial(
        &self,
        slot: &Arc<Slot>,
        addr: SocketAddr,
        security: &Security,
    ) -> Result<Arc<Conn>, NotSent> {
        let _dialing = slot.dialing.lock().await;
        // Whoever held the lock before may have opened one.
        if let (Some((best, _)), _) = quietest(slot) {
            return Ok(best.touch());
        }
        let conn = self.dialer.open(addr, security).await?;
        self.unreachable.clear(addr);
        Ok(slot.add(conn))
    }

    /// Opens one more stream to `addr` in a task of its own, unless one is
    /// being opened already.
    fn open_another(&self, slot: &Arc<Slot>, addr: SocketAddr, security: &Security) {
        if slot.dialing_another.swap(true, Ordering::AcqRel) {
            return;
        }
        let dialing = DialingAnother(slot.clone());
        let (dialer, security) = (self.dialer.clone(), security.clone());
        let unreachable = self.unreachable.clone();
        tokio::spawn(async move {
            match dialer.open(addr, &security).await {
                Ok(conn) => {
                    unreachable.clear(addr);
                    dialing.0.add(conn);
                }
                Err(e) => tracing::debug!(%addr, error = ?e, "another call stream not opened"),
            }
        }.instrument(self.dialer.span.clone()));
    }

    /// Takes `stream` as the call stream to `addr` (the fuzz harness's
    /// in-memory host), as if it had been dialled.
    #[cfg(any(test, feature = "fuzzing"))]
    pub async fn adopt<S>(&self, addr: SocketAddr, mut stream: S, security: &Security) -> bool
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static + Unpin,
    {
        let Ok((sealer, opener)) = self.dialer.handshake(&mut stream, security).await else {
            return false;
        };
        let (reader, writer) = tokio::io::split(stream);
        let conn = self.dialer.conn_over(reader, writer, sealer, opener);
        self.slot(addr).add(conn);
        true
    }

    /// Sends one request built by `make(id)` to `addr` and waits for its
    /// answer until `deadline`. `large` says the request or its answer is
    /// at least [`LARGE_CALL`] bytes. `Ok(None)` means the deadline passed.
    pub async fn request(
        &self,
        addr: SocketAddr,
        security: &Security,
        deadline: Instant,
        large: bool,
        make: impl FnOnce(u64) -> RpcMsg,
    ) -> Result<Option<Answer>, NotSent> {
        let mut msg = make(0);
        self.send_request(addr, security, deadline, large, &mut msg)
            .await
    }

    /// [`Pool::request`] of a message the caller keeps: a call refused
    /// before it ran still holds its payload for another host.
    pub async fn send_request(
        &self,
        addr: SocketAddr,
        security: &Security,
        deadline: Instant,
        large: bool,
        msg: &mut RpcMsg,
    ) -> Result<Option<Answer>, NotSent> {
        if self.is_closed() {
            return Ok(Some(Answer::Lost));
        }
        let slot = self.slot(addr);
        let conn = tokio::time::timeout_at(deadline, self.conn(&slot, addr, security, large))
            .await
            .map_err(|_| {
                // No stream within the call's whole time: the next calls
                // try other hosts first (a host whose TCP is dropped).
                self.unreachable.mark(addr);
                NotSent::OutOfTime
            })??;
        if self.is_closed() {
            // The node stopped while this stream opened.
            slot.end();
            return Ok(Some(Answer::Lost));
        }
        let mut conn = conn;
        let to = Host {
            slot: &slot,
            addr,
            security,
            large,
        };
        let mut answer = self.send_renewing(&to, &mut conn, msg, deadline).await?;
        // The host would not take the stream (at its bound of streams), so
        // the call did not run: it goes on the oldest other stream to the
        // same host, if one is open, and no more are opened for a while.
        for _ in 1..MAX_STREAMS_PER_HOST {
            if !matches!(answer, Some(Answer::Refused(_))) || !conn.refused_whole() {
                break;
            }
            slot.note_refused();
            let Some(other) = slot.oldest_besides(&conn) else {
                break;
            };
            conn = other;
            answer = self.send_renewing(&to, &mut conn, msg, deadline).await?;
        }
        Ok(answer)
    }

    /// Sends `msg`, numbered anew, on `conn`; when the host said goodbye
    /// on it meanwhile (the request was not sent), on a new stream to the
    /// same host.
    async fn send_renewing(
        &self,
        to: &Host<'_>,
        conn: &mut Arc<Conn>,
        msg: &mut RpcMsg,
        deadline: Instant,
    ) -> Result<Option<Answer>, NotSent> {
        for _ in 0..RENEW_TRIES {
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            if let Some(slot) = msg.id_mut() {
                *slot = id;
            }
            match self.send_on(conn, id, msg, deadline).await {
                Err(NotSent::Connect(_)) if conn.is_retired() => {
                    if self.is_closed() {
                        // The node stopped meanwhile: no new stream.
                        return Ok(Some(Answer::Lost));
                    }
                    let fresh = self.conn(to.slot, to.addr, to.security, to.large);
                    *conn = tokio::time::timeout_at(deadline, fresh)
                        .await
                        .map_err(|_| NotSent::OutOfTime)??;
                }
                other => return other,
            }
        }
        Err(NotSent::Connect(
            "the host said goodbye on every stream tried".into(),
        ))
    }

    /// Sends `msg`, numbered `id`, on `conn` and waits for its answer
    /// until `deadline`.
    async fn send_on(
        &self,
        conn: &Conn,
        id: u64,
        msg: &RpcMsg,
        deadline: Instant,
    ) -> Result<Option<Answer>, NotSent> {
        let (tx, rx) = oneshot::channel();
        let alone = {
            let mut pending = conn.pending.lock().unwrap_or_else(|p| p.into_inner());
            // Checked under the lock: the reader marks the stream dead before
            // it drains the waiters, so a call that gets in here is answered.
            if !conn.alive.load(Ordering::Relaxed) {
                None
            } else if pending.len() >= self.limits.max_inflight_per_conn {
                return Err(NotSent::StreamFull);
            } else {
                pending.insert(id, Waiting { tx, starts_at: None });
                Some(pending.len() == 1)
            }
        };
        let Some(alone) = alone else {
            return closed(conn, deadline).await;
        };
        let mut forget = Forget {
            conn,
            id,
            deadline,
            sent: false,
        };
        // A call alone on the stream writes its request itself (no hop to
        // another thread); with company, the flusher batches them.
        let sent = if alone {
            conn.out.send(msg, false)
        } else {
            conn.out.defer(msg, false)
        };
        match sent {
            Ok(starts_at) => {
                forget.sent = true;
                let mut pending = conn.pending.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(w) = pending.get_mut(&id) {
                    w.starts_at = Some(starts_at);
                }
            }
            Err(SendError::Full) => return Err(NotSent::Busy),
            Err(SendError::Closed) => return closed(conn, deadline).await,
            // It may have gone out: the stream's end answers it (as lost,
            // or refused when the host refused the stream).
            Err(SendError::Broke) => forget.sent = true,
        }
        // From here the call may have reached the host: it is never retried
        // elsewhere, only answered or reported lost.
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(answer)) => Ok(Some(answer)),
            Ok(Err(_)) => Ok(Some(Answer::Lost)),
            Err(_) => Ok(None),
        }
    }
}

/// Whether a connect failed for want of this process's (or this
/// machine's) own resources, not because of the host: out of descriptors,
/// of socket buffers or memory. (Not EADDRNOTAVAIL: besides local ports
/// run out, it is also a host's address of a family this machine has
/// turned off.)
pub(crate) fn is_local_shortage(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

impl Dialer {
    async fn open(&self, addr: SocketAddr, security: &Security) -> Result<Conn, NotSent> {
        let (tcp, sealer, opener) = self.dial(addr, security).await?;
        let (reader, writer) = tcp.into_split();
        let writer = super::tcp_writer::TcpWriter::new(writer);
        Ok(self.conn_over(reader, writer, sealer, opener))
    }

    /// Connects to `addr` and opens the call channel on it.
    async fn dial(
        &self,
        addr: SocketAddr,
        security: &Security,
    ) -> Result<(TcpStream, stream::Sealer, stream::Opener), NotSent> {
        let connect = async {
            let mut tcp = TcpStream::connect(addr).await.map_err(|e| {
                if is_local_shortage(&e) {
                    NotSent::Local(format!("cannot open a connection: {e}"))
                } else {
                    NotSent::Connect(e.to_string())
                }
            })?;
            let _ = tcp.set_nodelay(true);
            let (sealer, opener) = self
                .handshake(&mut tcp, security)
                .await
                .map_err(NotSent::Connect)?;
            Ok::<_, NotSent>((tcp, sealer, opener))
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
            Ok(result) => result,
            Err(_) => Err(NotSent::Connect("connect timed out".into())),
        }
    }

    /// The stream hello and the call channel's first frame.
    async fn handshake<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
        &self,
        stream: &mut S,
        security: &Security,
    ) -> Result<(stream::Sealer, stream::Opener), String> {
        let (mut sealer, opener) = stream::connect(stream, security, self.max_frame)
            .await
            .map_err(|e| {
                // A host refusing our key or not sealing is a security
                // refusal, counted like a cut call stream.
                if matches!(e, stream::StreamError::Refused(_)) {
                    RpcCounters::bump(&self.counters.stream_errors);
                }
                e.to_string()
            })?;
        sealer
            .write_frame(stream, &[wire::CHANNEL_RPC])
            .await
            .map_err(|e| e.to_string())?;
        Ok((sealer, opener))
    }

    /// A call stream over an established transport: its outbox and the
    /// task reading the host's answers.
    fn conn_over<R, W>(
        &self,
        mut reader: R,
        writer: W,
        sealer: stream::Sealer,
        mut opener: stream::Opener,
    ) -> Conn
    where
        R: tokio::io::AsyncRead + Unpin + Send + 'static,
        W: tokio::io::AsyncWrite + Send + 'static,
    {
        let (out, flusher) = Outbox::new(sealer, writer);
        let pending: Arc<Pending> = Arc::default();
        let alive = Arc::new(AtomicBool::new(true));
        let retired = Arc::new(AtomicBool::new(false));
        let (end, ended) = tokio::sync::watch::channel(None);
        {
            let alive = alive.clone();
            let pending = pending.clone();
            let out = out.clone();
            let mut reader_ended = ended.clone();
            tokio::spawn(async move {
                flusher.await;
                if out.is_failed() {
                    // Requests may have been dropped unsent: every call
                    // waiting learns the stream is gone now, not at its
                    // deadline (marked dead first, under the same lock,
                    // as the reader does, so no call gets on it after).
                    {
                        let _p = pending.lock().unwrap_or_else(|p| p.into_inner());
                        alive.store(false, Ordering::Relaxed);
                    }
                    // A host that refused the stream closes it after saying
                    // so, which can fail a write before the reader reads
                    // why: the reader then answers the waiting calls with
                    // the refusal (they did not run). Only what it leaves
                    // is lost.
                    let ended = reader_ended.wait_for(Option::is_some);
                    let _ = tokio::time::timeout(REFUSAL_GRACE, ended).await;
                    answer_waiting(&pending, Some(&out), || Answer::Lost);
                }
                alive.store(false, Ordering::Relaxed);
            }.instrument(self.span.clone()));
        }
        let reader = {
            let pending = pending.clone();
            let alive = alive.clone();
            let retired = retired.clone();
            let out = out.clone();
            tokio::spawn(async move {
                // Set when the host refused the whole stream.
                let mut refused = None;
                let mut said_goodbye = false;
                loop {
                    let frame = if said_goodbye {
                        // Read only while calls wait: a host that says
                        // goodbye and never closes holds no socket of ours.
                        if pending.lock().unwrap_or_else(|p| p.into_inner()).is_empty() {
                            break;
                        }
                        match tokio::time::timeout(RETIRED_POLL, opener.next_frame(&mut reader))
                            .await
                        {
                            Ok(frame) => frame,
                            Err(_) => continue,
                        }
                    } else {
                        opener.next_frame(&mut reader).await
                    };
                    let Ok(Some(body)) = frame else {
                        break;
                    };
                    let (id, answer) = match wire::decode::<RpcMsg>(body) {
                        Ok(RpcMsg::Refused {
                            id: super::server::STREAM_REFUSAL_ID,
                            why,
                        }) => {
                            // No call on this stream ran.
                            refused = Some(why);
                            break;
                        }
                        Ok(RpcMsg::Reply { id, result }) => {
                            (id, Answer::Reply(result.map(|b| b.into_vec())))
                        }
                        Ok(RpcMsg::Refused { id, why }) => (id, Answer::Refused(why)),
                        Ok(RpcMsg::Chunk { id, data }) => (id, Answer::Chunk(data)),
                        Ok(RpcMsg::Goodbye) => {
                            {
                                // Under the lock calls register in: none
                                // gets on after; one that got on before
                                // queues its request ahead of our end, or
                                // finds the box closed and takes a new
                                // stream.
                                let _p = pending.lock().unwrap_or_else(|p| p.into_inner());
                                retired.store(true, Ordering::Relaxed);
                                alive.store(false, Ordering::Relaxed);
                            }
                            // What is queued goes out, then our side ends:
                            // the host reads to there and answers it all.
                            out.close();
                            said_goodbye = true;
                            continue;
                        }
                        _ => break,
                    };
                    let waiter = pending
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&id);
                    // A call that gave up has no waiter; its late answer is dropped.
                    if let Some(w) = waiter {
                        let _ = w.tx.send(answer);
                    }
                }
                alive.store(false, Ordering::Relaxed);
                end.send_replace(Some(refused));
                // Nothing more goes out, so what was not written never
                // will be; every call still waiting learns the stream is
                // gone.
                out.cut();
                match refused {
                    // No call on a refused stream ran, written or not.
                    Some(why) => answer_waiting(&pending, None, || Answer::Refused(why)),
                    None => answer_waiting(&pending, Some(&out), || Answer::Lost),
                }
            }.instrument(self.span.clone()))
            .abort_handle()
        };
        Conn {
            last_used: Mutex::new(Instant::now()),
            out,
            pending,
            alive,
            retired,
            ended,
            reader,
        }
    }
}

/// Answers every call still waiting on a stream that ended (outside the
/// lock: a waiter's task may run at once). With the stream's box `out`,
/// cut or failed, a call of which no byte went out is `Unsent`.
fn answer_waiting(pending: &Pending, out: Option<&Outbox>, answer: impl Fn() -> Answer) {
    let orphans: Vec<_> = pending
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .drain()
        .collect();
    let written = out.map_or(0, Outbox::written);
    for (_, w) in orphans {
        let unsent = out.is_some() && w.starts_at.is_some_and(|at| at >= written);
        let _ = w.tx.send(if unsent { Answer::Unsent } else { answer() });
    }
}

/// The outcome of a request that found its stream closed before it went
/// out: not sent (another host may be tried) — or, when the host refused
/// the whole stream, that refusal. A host may close the stream right after
/// its refusal frame, before our request is written; the refusal, read a
/// moment later, says why and that the call did not run.
async fn closed(conn: &Conn, deadline: Instant) -> Result<Option<Answer>, NotSent> {
    if conn.is_retired() {
        return Err(NotSent::Connect("the host said goodbye on the stream".into()));
    }
    let mut ended = conn.ended.clone();
    let soon = deadline.min(Instant::now() + REFUSAL_GRACE);
    if let Ok(Ok(end)) = tokio::time::timeout_at(soon, ended.wait_for(Option::is_some)).await {
        if let Some(Some(why)) = *end {
            return Ok(Some(Answer::Refused(why)));
        }
    }
    Err(NotSent::Connect("the stream to the host closed".into()))
}

/// A host that may serve a call.
pub type Candidate = crate::engine::view::Provider;

/// Orders candidates: this node first, then members not suspected, then
/// hosts reached lately, then fewest calls outstanding, ties broken at
/// random so load spreads.
pub fn order(mut cands: Vec<Candidate>, pool: &Pool) -> Vec<Candidate> {
    use rand::seq::SliceRandom;
    cands.shuffle(&mut rand::rng());
    // Keys read live counters: compute each once, so the sort sees a
    // consistent order.
    cands.sort_by_cached_key(|c| {
        (
            !c.local,
            c.suspect,
            pool.recently_unreachable(c.addr),
            pool.outstanding(c.addr),
        )
    });
    cands
}

/// Counts one outcome.
pub fn count(counters: &RpcCounters, result: &crate::Result<Vec<u8>>) {
    use crate::Error;
    let c = match result {
        Ok(_) => &counters.ok,
        Err(Error::NoProvider { .. }) => &counters.no_provider,
        Err(Error::Timeout { .. }) => &counters.timeout,
        // The host refused to send a reply over the limit: a size refusal,
        // as every face tells the caller.
        Err(Error::Remote { code, .. }) if code == "too_large" => &counters.too_large,
        Err(Error::Remote { .. }) => &counters.remote_error,
        Err(Error::TooLarge { .. }) => &counters.too_large,
        Err(Error::Overloaded { .. }) => &counters.overloaded,
        Err(Error::Disconnected { .. }) => &counters.disconnected,
        // The one `Io` a call ends with: no connection could be opened.
        Err(Error::Io(_)) => &counters.not_sent,
        // A tribe deleted while callers still use it: a dashboard of
        // outcomes must show those calls failing.
        Err(Error::UnknownTribe(_)) => &counters.unknown_tribe,
        Err(_) => return,
    };
    RpcCounters::bump(c);
}

/// The usable stream to the slot's host with the fewest calls in flight,
/// with that load, and how many usable streams there are. Streams no
/// longer usable are dropped.
fn quietest(slot: &Slot) -> (Option<(Arc<Conn>, usize)>, usize) {
    let mut conns = slot.conns.lock().unwrap_or_else(|p| p.into_inner());
    slot.drop_unusable(&mut conns);
    let count = conns.iter().filter(|c| c.usable()).count();
    let best = conns
        .iter()
        .filter(|c| c.usable())
        .map(|c| (c.in_flight(), c))
        .min_by_key(|(load, _)| *load)
        .map(|(load, c)| (c.clone(), load));
    (best, count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::PluginKind;
    use crate::rpc::proto::ByteBuf;

    /// Call `id` with a payload of `size` bytes.
    pub(super) fn sized_call(id: u64, size: usize) -> RpcMsg {
        RpcMsg::Call {
            id,
            caller: "a".into(),
            tribe: "t".into(),
            plugin: "p".into(),
            version: "1".into(),
            kind: PluginKind::Processor,
            budget_ms: 1_000,
            payload: vec![1; size],
        }
    }

    fn call(id: u64) -> RpcMsg {
        sized_call(id, 10)
    }

    /// A host's listener on loopback, and the (plaintext) security its
    /// streams use.
    async fn listen() -> (tokio::net::TcpListener, SocketAddr, Security) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        (listener, addr, Security::plaintext("t"))
    }

    /// Takes a call stream on `listener` as a host would, up to its first
    /// call (read and dropped).
    async fn accept_first_call(
        listener: &tokio::net::TcpListener,
        plain: &Security,
    ) -> (stream::Sealer, stream::Opener, TcpStream) {
        let (mut theirs, _) = listener.accept().await.unwrap();
        let (sealer, mut opener) = stream::accept(&mut theirs, plain, 1 << 20)
            .await
            .unwrap();
        let channel = opener.read_frame(&mut theirs).await.unwrap();
        assert_eq!(channel.as_deref(), Some(&[wire::CHANNEL_RPC][..]));
        assert!(opener.read_frame(&mut theirs).await.unwrap().is_some());
        (sealer, opener, theirs)
    }

    /// A host that says goodbye and then neither answers nor closes: the
    /// call waiting on the stream keeps it until its deadline, and then the
    /// caller lets the socket go (a hostile host cannot pile up ours).
    #[tokio::test]
    async fn a_retired_stream_is_let_go_once_no_call_waits_on_it() {
        let (listener, addr, plain) = listen().await;
        let host = {
            let plain = plain.clone();
            tokio::spawn(async move {
                let (mut sealer, mut opener, mut theirs) =
                    accept_first_call(&listener, &plain).await;
                sealer
                    .write_msg(&mut theirs, &RpcMsg::Goodbye)
                    .await
                    .unwrap();
                // The caller ends its side after the goodbye.
                assert_eq!(opener.read_frame(&mut theirs).await.unwrap(), None);
                (sealer, theirs)
            })
        };
        let pool = Pool::new(RpcLimits::default(), 1 << 20, Arc::default());
        let deadline = Instant::now() + std::time::Duration::from_millis(300);
        let answer = pool.request(addr, &plain, deadline, false, call).await;
        assert!(matches!(answer, Ok(None)), "{answer:?}");
        let (mut sealer, mut theirs) = host.await.unwrap();
        // A late answer, which a caller still reading drops; once it
        // closed the socket, a write to it is reset.
        let late = RpcMsg::Reply {
            id: 999,
            result: Ok(ByteBuf::from(vec![1])),
        };
        let mut let_go = false;
        for _ in 0..50 {
            if sealer.write_msg(&mut theirs, &late).await.is_err() {
                let_go = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert!(let_go, "the caller still holds the retired stream");
    }

    /// A host whose stream does not open within a call's time (a firewall
    /// that drops its TCP; here, one that never answers the hello) is tried
    /// after the others by the next calls, not chosen again and again.
    #[tokio::test]
    async fn a_host_whose_stream_never_opens_in_time_is_tried_last() {
        // Never accepted: the kernel completes the connection, and no hello
        // ever comes back.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = silent.local_addr().unwrap();
        let sealed = Security {
            keyring: Some(crate::crypto::Keyring::new(crate::crypto::SecretKey::generate())),
            encryption: crate::config::Encryption::Require,
            label: "t".into(),
        };
        let pool = Pool::new(RpcLimits::default(), 1 << 20, Arc::default());
        assert!(!pool.recently_unreachable(addr));
        let deadline = Instant::now() + std::time::Duration::from_millis(300);
        let answer = pool.request(addr, &sealed, deadline, false, call).await;
        assert!(matches!(answer, Err(NotSent::OutOfTime)), "{answer:?}");
        assert!(pool.recently_unreachable(addr));
        drop(silent);
    }

    /// What is kept per host address goes once no call uses it: hosts that
    /// come back at new addresses left an entry each, for good.
    #[test]
    fn hosts_no_call_uses_are_forgotten() {
        let pool = Pool::new(RpcLimits::default(), 1 << 20, Arc::default());
        let addr = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        for port in 1..=100 {
            drop(pool.slot(addr(port)));
            drop(pool.reserve(addr(port)));
        }
        let busy = pool.reserve(addr(7));
        let held = pool.slot(addr(8));
        pool.close_idle();
        fn kept<V>(map: &Mutex<HashMap<SocketAddr, V>>) -> Vec<SocketAddr> {
            let mut keys: Vec<_> = map.lock().unwrap().keys().copied().collect();
            keys.sort();
            keys
        }
        assert_eq!(kept(&pool.load), [addr(7)]);
        assert_eq!(kept(&pool.slots), [addr(8)]);
        drop((busy, held));
        pool.close_idle();
        assert!(kept(&pool.load).is_empty() && kept(&pool.slots).is_empty());
    }

    /// A host that stops reading, then is declared failed: the call whose
    /// request went out in part ends as lost (it may have run), the ones
    /// whose requests never left end as unsent, so they may go to another
    /// host.
    #[tokio::test]
    async fn calls_whose_requests_never_left_are_told_so_when_the_stream_ends() {
        let (ours, mut theirs) = tokio::io::duplex(4096);
        let plain = Security::plaintext("t");
        let host = {
            let plain = plain.clone();
            tokio::spawn(async move {
                let (_sealer, mut opener) = stream::accept(&mut theirs, &plain, 1 << 20)
                    .await
                    .unwrap();
                opener.read_frame(&mut theirs).await.unwrap();
                // Reads nothing more: the pipe fills with the first request.
                std::future::pending::<()>().await;
            })
        };
        let pool = Arc::new(Pool::new(RpcLimits::default(), 1 << 20, Arc::default()));
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        assert!(pool.adopt(addr, ours, &plain).await);
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        let big = |id| sized_call(id, 10_000);
        let mut calls = Vec::new();
        for _ in 0..3 {
            let (pool, plain) = (pool.clone(), plain.clone());
            calls.push(tokio::spawn(async move {
                pool.request(addr, &plain, deadline, false, big).await
            }));
            // In order: the first request is the one partly written.
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        pool.host_failed(addr);
        let mut answers = Vec::new();
        for call in calls {
            match call.await.unwrap() {
                Ok(Some(Answer::Lost)) => answers.push("lost"),
                Ok(Some(Answer::Unsent)) => answers.push("unsent"),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(answers, ["lost", "unsent", "unsent"]);
        host.abort();
    }

    /// A host that says goodbye with a call on the stream and then freezes:
    /// when the membership declares it failed, that call ends at once,
    /// although a later call to the host took another stream.
    #[tokio::test]
    async fn a_call_on_a_retired_stream_ends_when_its_host_fails() {
        let (listener, addr, plain) = listen().await;
        let host = {
            let plain = plain.clone();
            tokio::spawn(async move {
                let mut held = Vec::new();
                for n in 0..2 {
                    let (mut sealer, opener, mut theirs) =
                        accept_first_call(&listener, &plain).await;
                    if n == 0 {
                        sealer
                            .write_msg(&mut theirs, &RpcMsg::Goodbye)
                            .await
                            .unwrap();
                    }
                    held.push((sealer, opener, theirs));
                }
                // Frozen: never answers, never closes.
                std::future::pending::<()>().await;
            })
        };
        let pool = Arc::new(Pool::new(RpcLimits::default(), 1 << 20, Arc::default()));
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        let first = {
            let (pool, plain) = (pool.clone(), plain.clone());
            tokio::spawn(async move { pool.request(addr, &plain, deadline, false, call).await })
        };
        // The second call finds the first stream retired and opens another.
        let retired = || {
            let slot = pool.slot(addr);
            let conns = slot.conns.lock().unwrap();
            conns.iter().any(|c| c.is_retired())
        };
        while !retired() {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let second = {
            let (pool, plain) = (pool.clone(), plain.clone());
            tokio::spawn(async move { pool.request(addr, &plain, deadline, false, call).await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let started = Instant::now();
        pool.host_failed(addr);
        for waiting in [first, second] {
            let answer = waiting.await.unwrap();
            assert!(matches!(answer, Ok(Some(Answer::Lost))), "{answer:?}");
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
        host.abort();
    }
}
