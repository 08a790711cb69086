//! Streams that a blocking call borrows whole. A host thread that blocks
//! on a call anyway (the C ABI's `tribe_node_call`, pytribe's `Node.call`)
//! writes the request and waits in the socket for the answer itself, so
//! the kernel wakes that thread when the answer lands. On a shared stream
//! a runtime thread reads the answer and then wakes the caller's thread:
//! one more thread woken on the path the call waits on, often an idle CPU
//! (docs/benchmarks.md measures what that costs).
//!
//! A borrowed stream carries one call at a time and goes back to the pool
//! after its answer. It is dropped instead when its call ended otherwise
//! (deadline, cancel, a broken stream), when its host said goodbye, or when
//! the node's keys changed since it opened.

use std::collections::HashMap;
use std::future::Future;
use std::io::{self, Read};
use std::mem::MaybeUninit;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, ReadBuf};
use tokio::time::Instant;

use super::{Answer, NotSent, Pool, CLIENT_IDLE, REFUSAL_GRACE};
use crate::rpc::proto::RpcMsg;
use crate::rpc::server::STREAM_REFUSAL_ID;
use crate::stream::{Opener, Sealer, Security, StreamError};
use crate::wire;

/// Longest a borrowing thread stays in the socket before it looks at its
/// deadline, at the node's stop, and lets whoever polls its call check
/// what it waits for besides (a signal, a shutdown).
const SLICE: Duration = Duration::from_millis(20);
/// Borrowed streams to one host at once, lent and idle; past it, calls
/// share the multiplexed streams.
const MAX_PER_HOST: usize = 32;
/// Bytes one read asks of the socket (the buffer it reads into is zeroed
/// first).
const READ_CAP: usize = 8 * 1024;

/// The borrowed streams of a pool.
#[derive(Default)]
pub(super) struct Borrowed {
    idle: Mutex<HashMap<SocketAddr, Vec<Own>>>,
    /// A second handle on each lent stream's socket, to cut it when its
    /// host fails or the node stops (which wakes the thread in it).
    lent: Mutex<HashMap<u64, (SocketAddr, Arc<TcpStream>)>>,
    /// Bumped when the node's keys change: a stream opened before is not
    /// lent again.
    generation: AtomicU64,
    next_lease: AtomicU64,
}

/// One borrowed stream.
struct Own {
    sock: Arc<TcpStream>,
    /// The socket's read and write timeout (each call's last slice may be
    /// shorter than [`SLICE`]; set again only when it changes).
    timeout: Duration,
    sealer: Sealer,
    opener: Opener,
    generation: u64,
    last_used: Instant,
}

/// A stream lent to one call; back to the idle ones on drop when `keep`.
struct Lease<'a> {
    pool: &'a Borrowed,
    addr: SocketAddr,
    id: u64,
    own: Option<Own>,
    keep: bool,
    /// Taken from the idle ones (so it may have gone stale meanwhile).
    reused: bool,
    /// The host said goodbye on it.
    retired: bool,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        self.pool
            .lent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
        let Some(mut own) = self.own.take() else {
            return;
        };
        if !self.keep || own.generation != self.pool.generation.load(Ordering::Acquire) {
            return;
        }
        own.last_used = Instant::now();
        self.pool
            .idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(self.addr)
            .or_default()
            .push(own);
    }
}

impl Borrowed {
    /// Lends an idle stream to `addr`: `None` when there is none fit to
    /// use; `Err` when `addr` has as many borrowed streams as it may.
    fn take_idle(&self, addr: SocketAddr) -> Result<Option<Own>, ()> {
        let generation = self.generation.load(Ordering::Acquire);
        let lent = self
            .lent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|(a, _)| *a == addr)
            .count();
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let streams = idle.entry(addr).or_default();
        streams.retain(|own| own.generation == generation && own.last_used.elapsed() < CLIENT_IDLE);
        while let Some(own) = streams.pop() {
            if quiet(&own.sock) {
                return Ok(Some(own));
            }
        }
        if lent >= MAX_PER_HOST {
            return Err(());
        }
        Ok(None)
    }

    fn lend(&self, addr: SocketAddr, own: Own, reused: bool) -> Lease<'_> {
        let second = own.sock.clone();
        let id = self.next_lease.fetch_add(1, Ordering::Relaxed);
        self.lent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, (addr, second));
        Lease {
            pool: self,
            addr,
            id,
            own: Some(own),
            keep: false,
            reused,
            retired: false,
        }
    }

    /// Streams opened from now on use the node's new keys.
    pub(super) fn forget(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// Ends the streams to `addr` (every host when `None`): idle ones
    /// close, lent ones are cut, which wakes their callers.
    pub(super) fn end(&self, addr: Option<SocketAddr>) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        match addr {
            Some(addr) => drop(idle.remove(&addr)),
            None => idle.clear(),
        }
        drop(idle);
        for (at, sock) in self.lent.lock().unwrap_or_else(|p| p.into_inner()).values() {
            if addr.is_none_or(|a| a == *at) {
                let _ = sock.shutdown(Shutdown::Both);
            }
        }
    }
}

/// Whether an idle stream may carry a call: open, and nothing arrived on
/// it (a host's goodbye, or its end).
fn quiet(sock: &TcpStream) -> bool {
    let mut byte = [MaybeUninit::<u8>::uninit(); 1];
    let peeked = socket2::SockRef::from(sock)
        .recv_with_flags(&mut byte, libc::MSG_PEEK | libc::MSG_DONTWAIT);
    matches!(peeked, Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}

/// What a borrowed stream made of one request.
pub enum Outcome {
    /// Answered, or not (`None`: the deadline passed).
    Done(Option<Answer>),
    /// The host takes no more streams, or none could be borrowed: the
    /// request goes on a shared stream (it did not run).
    Share(RpcMsg),
}

impl Pool {
    /// Sends `msg` on a stream borrowed for it alone, and reads the answer
    /// on this thread, blocking it for up to [`SLICE`] at a time between
    /// polls, until `deadline`.
    pub async fn request_borrowing(
        &self,
        addr: SocketAddr,
        security: &Security,
        deadline: Instant,
        mut msg: RpcMsg,
    ) -> Result<Outcome, NotSent> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if let Some(at) = msg.id_mut() {
            *at = id;
        }
        if self.slot(addr).refused_lately() {
            return Ok(Outcome::Share(msg));
        }
        let mut reuse = true;
        loop {
            if self.is_closed() {
                return Ok(Outcome::Done(Some(Answer::Lost)));
            }
            let idle = if reuse {
                match self.borrowed.take_idle(addr) {
                    Ok(idle) => idle,
                    Err(()) => return Ok(Outcome::Share(msg)),
                }
            } else {
                None
            };
            let reused = idle.is_some();
            let own = match idle {
                Some(own) => own,
                None => {
                    let dial = self.dialer.dial(addr, security);
                    let (tcp, sealer, opener) = tokio::time::timeout_at(deadline, dial)
                        .await
                        .map_err(|_| NotSent::OutOfTime)??;
                    let sock = tcp
                        .into_std()
                        .and_then(|s| s.set_nonblocking(false).map(|()| s))
                        .and_then(|s| s.set_read_timeout(Some(SLICE)).map(|()| s))
                        .and_then(|s| s.set_write_timeout(Some(SLICE)).map(|()| s))
                        .map_err(|e| NotSent::Connect(e.to_string()))?;
                    Own {
                        sock: Arc::new(sock),
                        timeout: SLICE,
                        sealer,
                        opener,
                        generation: self.borrowed.generation.load(Ordering::Acquire),
                        last_used: Instant::now(),
                    }
                }
            };
            let mut lease = self.borrowed.lend(addr, own, reused);
            let got = match lease.write(&msg, deadline) {
                Written::All => lease.answer(id, deadline, self).await?,
                Written::Part => return Ok(Outcome::Done(Some(Answer::Lost))),
                // A stream that went stale while idle: once more, on a new one.
                Written::None(_) if lease.reused => {
                    reuse = false;
                    continue;
                }
                Written::None(e) => match lease.refusal() {
                    Some(()) => Got::Refused,
                    None => return Err(NotSent::Connect(e.to_string())),
                },
            };
            if matches!(got, Got::Refused) {
                // Not again for a while: each try costs a connection.
                self.slot(addr).note_refused();
            }
            return Ok(got.outcome(msg));
        }
    }
}

/// How much of a request went out.
enum Written {
    All,
    /// Some bytes: the host may have read the call.
    Part,
    /// None: the host never saw the call.
    None(io::Error),
}

/// What the read of an answer gave.
enum Got {
    Answer(Option<Answer>),
    /// The host refused the whole stream (at its bound of streams).
    Refused,
}

impl Got {
    fn outcome(self, msg: RpcMsg) -> Outcome {
        match self {
            Got::Answer(answer) => Outcome::Done(answer),
            Got::Refused => Outcome::Share(msg),
        }
    }
}

impl Lease<'_> {
    fn own(&mut self) -> &mut Own {
        self.own.as_mut().expect("a lease holds its stream until dropped")
    }

    fn write(&mut self, msg: &RpcMsg, deadline: Instant) -> Written {
        let own = self.own();
        let frame = Sealer::encode_frame(msg, own.sealer.tag_len()).and_then(|mut frame| {
            own.sealer.seal_frames(&mut frame)?;
            Ok(frame)
        });
        let frame = match frame {
            Ok(frame) => frame,
            Err(e) => return Written::None(io::Error::other(e.to_string())),
        };
        let mut at = 0;
        while at < frame.len() {
            if let Err(e) = own.slice(deadline) {
                return if at == 0 {
                    Written::None(e)
                } else {
                    Written::Part
                };
            }
            match socket2::SockRef::from(&*own.sock).send_with_flags(&frame[at..], libc::MSG_NOSIGNAL) {
                Ok(n) => at += n,
                // A host slow to read: on until the deadline.
                Err(e) if waits(&e) => {}
                Err(e) if at == 0 => return Written::None(e),
                Err(_) => return Written::Part,
            }
        }
        Written::All
    }

    /// Whether the host refused the stream (read within a short grace: a
    /// host at its bound says so, then closes, which may fail our write
    /// first).
    fn refusal(&mut self) -> Option<()> {
        let until = Instant::now() + REFUSAL_GRACE;
        loop {
            let own = self.own();
            if own.slice(until).is_err() {
                return None;
            }
            match read_frame(&mut own.opener, &own.sock) {
                Ok(Some(body)) => {
                    return match wire::decode::<RpcMsg>(body) {
                        Ok(RpcMsg::Refused {
                            id: STREAM_REFUSAL_ID,
                            ..
                        }) => Some(()),
                        _ => None,
                    }
                }
                Err(StreamError::Io(e)) if waits(&e) => {}
                _ => return None,
            }
        }
    }

    /// Reads until the answer to call `id` arrives, the stream ends, or
    /// `deadline` passes.
    async fn answer(&mut self, id: u64, deadline: Instant, pool: &Pool) -> Result<Got, NotSent> {
        let mut waited = false;
        loop {
            if waited {
                // Whoever polls this call may have more to look at.
                tokio::task::yield_now().await;
                if pool.is_closed() {
                    return Ok(Got::Answer(Some(Answer::Lost)));
                }
            }
            let own = self.own();
            match own.slice(deadline) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::TimedOut => return Ok(Got::Answer(None)),
                Err(_) => return Ok(Got::Answer(Some(Answer::Lost))),
            }
            let body = match read_frame(&mut own.opener, &own.sock) {
                Ok(Some(body)) => body,
                Err(StreamError::Io(e)) if waits(&e) => {
                    waited = true;
                    continue;
                }
                Ok(None) | Err(_) => return Ok(Got::Answer(Some(Answer::Lost))),
            };
            let answer = match wire::decode::<RpcMsg>(body) {
                Ok(RpcMsg::Refused {
                    id: STREAM_REFUSAL_ID,
                    ..
                }) => return Ok(Got::Refused),
                Ok(RpcMsg::Reply { id: got, result }) if got == id => {
                    Answer::Reply(result.map(|b| b.into_vec()))
                }
                Ok(RpcMsg::Refused { id: got, why }) if got == id => Answer::Refused(why),
                Ok(RpcMsg::Chunk { id: got, data }) if got == id => Answer::Chunk(data),
                Ok(RpcMsg::Goodbye) => {
                    // The host reads on to our end and answers what it
                    // read: ours, already written. The stream is not lent
                    // again.
                    let _ = own.sock.shutdown(Shutdown::Write);
                    self.retired = true;
                    continue;
                }
                // Nothing else is ours (one call at a time).
                Ok(_) => continue,
                Err(_) => return Ok(Got::Answer(Some(Answer::Lost))),
            };
            self.keep = !self.retired;
            return Ok(Got::Answer(Some(answer)));
        }
    }
}

impl Own {
    /// Bounds the socket's next wait by [`SLICE`] and `until`: `TimedOut`
    /// once `until` passed.
    fn slice(&mut self, until: Instant) -> io::Result<()> {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        let timeout = left.min(SLICE);
        if timeout != self.timeout {
            self.sock.set_read_timeout(Some(timeout))?;
            self.sock.set_write_timeout(Some(timeout))?;
            self.timeout = timeout;
        }
        Ok(())
    }
}

/// Whether a read ended only because its time slice did (or a signal).
fn waits(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

/// Reads the next frame from a blocking socket on this thread (up to its
/// read timeout). `next_frame` keeps every byte read in the opener, so a
/// read that ends with its time slice loses nothing.
fn read_frame<'o>(opener: &'o mut Opener, sock: &TcpStream) -> Result<Option<&'o [u8]>, StreamError> {
    let mut reader = Blocking(sock);
    let mut next = pin!(opener.next_frame(&mut reader));
    match next.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(read) => read,
        // A blocking read is never pending.
        Poll::Pending => Err(io::Error::from(io::ErrorKind::WouldBlock).into()),
    }
}

/// A blocking socket as an `AsyncRead` that is always ready: each poll
/// blocks in the socket up to its read timeout.
struct Blocking<'a>(&'a TcpStream);

impl AsyncRead for Blocking<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let want = buf.remaining().min(READ_CAP);
        let read = (&mut &*self.0).read(buf.initialize_unfilled_to(want));
        Poll::Ready(read.map(|n| buf.advance(n)))
    }
}
