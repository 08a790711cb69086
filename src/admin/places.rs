//! The admin API's connection places, and who gives one up when they are
//! all taken.
//!
//! A client that opens connections and sends nothing (or sends its headers
//! or a body a byte at a time) would otherwise hold every place for the
//! header or request timeout, again and again, and lock the operator out.
//! So a connection that arrives when every place is taken takes the place
//! of the one that has waited longest for a request (a new connection that
//! sent no whole header yet, one whose request body has not all come, or
//! a kept-alive one between requests); it is refused only when every place
//! is answering a request (or still writing an answer out to a client that
//! reads it slowly, until the write timeout).

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Instant;

use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

/// The places, shared by the accepting loop and the connections.
pub(super) struct Places {
    max: usize,
    held: Mutex<Vec<Arc<Conn>>>,
}

/// One connection's standing.
pub(super) struct Conn {
    /// Requests being answered (their answers' bodies not yet taken whole).
    answering: AtomicUsize,
    /// Request bodies not yet read whole: such a request still comes.
    reading: AtomicUsize,
    /// An answer is still going out: set when its body was taken whole,
    /// cleared once the stream is flushed (or when a write waits for the
    /// client to read, set again).
    writing: AtomicBool,
    /// Since when it waits for a request (its arrival, or its last answer).
    waiting_since: Mutex<Instant>,
    /// Told to close: another connection took its place.
    cut: Notify,
}

impl Places {
    pub(super) fn new(max: usize) -> Arc<Places> {
        Arc::new(Places {
            max: max.max(1),
            held: Mutex::new(Vec::new()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Arc<Conn>>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A place for a new connection: a free one, or the one of the
    /// connection that has waited longest for a request, which is told to
    /// close. `None` when every place is answering a request.
    pub(super) fn admit(self: &Arc<Places>) -> Option<Place> {
        let mut held = self.lock();
        if held.len() >= self.max {
            let (at, _) = held
                .iter()
                .enumerate()
                .filter(|(_, c)| c.waits_for_a_request())
                .min_by_key(|(_, c)| *c.waiting())?;
            let given_up = held.swap_remove(at);
            given_up.cut.notify_one();
            tracing::debug!(
                "admin API: every place taken; the longest-waiting connection is closed"
            );
        }
        let conn = Arc::new(Conn {
            answering: AtomicUsize::new(0),
            reading: AtomicUsize::new(0),
            writing: AtomicBool::new(false),
            waiting_since: Mutex::new(Instant::now()),
            cut: Notify::new(),
        });
        held.push(conn.clone());
        Some(Place {
            places: self.clone(),
            conn,
        })
    }
}

impl Conn {
    fn waiting(&self) -> MutexGuard<'_, Instant> {
        self.waiting_since.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn waits_for_a_request(&self) -> bool {
        let still_coming = self.reading.load(Ordering::Acquire) > 0;
        !self.writing.load(Ordering::Acquire)
            && (still_coming || self.answering.load(Ordering::Acquire) == 0)
    }

    /// Ends when another connection took this one's place.
    pub(super) async fn cut(&self) {
        self.cut.notified().await
    }

    /// Counts a request as being answered until the guard (carried by its
    /// answer's body) is dropped.
    pub(super) fn answering(self: &Arc<Conn>) -> Answering {
        self.answering.fetch_add(1, Ordering::AcqRel);
        Answering(self.clone())
    }
}

/// A connection's place, given back when dropped.
pub(super) struct Place {
    places: Arc<Places>,
    pub(super) conn: Arc<Conn>,
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut held = self.places.lock();
        if let Some(at) = held.iter().position(|c| Arc::ptr_eq(c, &self.conn)) {
            held.swap_remove(at);
        }
    }
}

/// A request being answered; the connection waits for the next one from
/// when it is dropped.
pub(super) struct Answering(Arc<Conn>);

impl Drop for Answering {
    fn drop(&mut self) {
        // The time first: a connection is never seen idle with an old one.
        *self.0.waiting() = Instant::now();
        // The body was taken whole, not written yet: it goes out until
        // the stream is flushed.
        self.0.writing.store(true, Ordering::Release);
        self.0.answering.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A request's or an answer's body, telling its connection how far it got.
/// A request's body is counted in [`Conn::reading`] until read whole (or
/// dropped): until then the request is still coming, and the connection
/// may give its place up as one that sent no whole request. An answer's
/// body holds its request's [`Answering`] until taken whole (or dropped
/// with its connection).
pub(super) struct Watch<B> {
    body: B,
    reading: Option<Arc<Conn>>,
    _answering: Option<Answering>,
}

impl<B: Body> Watch<B> {
    pub(super) fn request(body: B, conn: &Arc<Conn>) -> Watch<B> {
        let reading = (!body.is_end_stream()).then(|| {
            conn.reading.fetch_add(1, Ordering::AcqRel);
            conn.clone()
        });
        Watch {
            body,
            reading,
            _answering: None,
        }
    }

    pub(super) fn answer(body: B, answering: Answering) -> Watch<B> {
        Watch {
            body,
            reading: None,
            _answering: Some(answering),
        }
    }
}

impl<B> Watch<B> {
    fn read_whole(&mut self) {
        if let Some(conn) = self.reading.take() {
            conn.reading.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl<B> Drop for Watch<B> {
    fn drop(&mut self) {
        self.read_whole();
    }
}

impl<B: Body + Unpin> Body for Watch<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        let ended = match &polled {
            Poll::Ready(None | Some(Err(_))) => true,
            Poll::Ready(Some(Ok(_))) => self.body.is_end_stream(),
            Poll::Pending => false,
        };
        if ended {
            self.read_whole();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A connection's stream, noting whether an answer is still going out.
pub(super) struct Watched<T> {
    pub(super) io: T,
    pub(super) conn: Arc<Conn>,
}

impl<T> Watched<T> {
    /// A write that waits for the client: an answer is going out.
    fn note_write<R>(&self, polled: Poll<R>) -> Poll<R> {
        if polled.is_pending() {
            self.conn.writing.store(true, Ordering::Release);
        }
        polled
    }

    /// The stream flushed: what was written went out (the server flushes
    /// once its buffer is written).
    fn note_flush<R>(&self, polled: Poll<R>) -> Poll<R> {
        self.conn
            .writing
            .store(polled.is_pending(), Ordering::Release);
        polled
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        self.note_write(polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.note_write(polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_flush(cx);
        self.note_flush(polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    #[test]
    fn a_full_house_gives_up_the_longest_waiting_place_and_never_a_busy_one() {
        let places = Places::new(2);
        let first = places.admit().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(5));
        let second = places.admit().unwrap();
        // Both wait: the first, waiting longer, is told to close.
        let third = places.admit().unwrap();
        assert!(first.conn.cut.notified().now_or_never().is_some());
        assert!(second.conn.cut.notified().now_or_never().is_none());
        // Its place is not given back twice when it closes.
        drop(first);
        assert_eq!(places.lock().len(), 2);
        // Both remaining places answer a request: a newcomer is refused.
        let a = second.conn.answering();
        let b = third.conn.answering();
        assert!(places.admit().is_none());
        // An answer taken whole keeps the place until the stream flushed.
        drop(b);
        assert!(places.admit().is_none());
        // Flushed: its connection gives way again.
        third.conn.writing.store(false, Ordering::Release);
        let fourth = places.admit().unwrap();
        assert!(third.conn.cut.notified().now_or_never().is_some());
        drop((a, second, third, fourth));
        assert!(places.lock().is_empty());
    }

    #[test]
    fn a_request_whose_body_still_comes_gives_way() {
        let places = Places::new(1);
        let first = places.admit().unwrap();
        let _answering = first.conn.answering();
        let body = Watch::request(Coming, &first.conn);
        let second = places.admit().unwrap();
        assert!(first.conn.cut.notified().now_or_never().is_some());
        drop(body);
        // Read whole (here: dropped by the handler), it is answered.
        let _answering = second.conn.answering();
        drop(Watch::request(Coming, &second.conn));
        assert!(places.admit().is_none());
    }

    /// A body whose next frame never comes.
    struct Coming;

    impl Body for Coming {
        type Data = &'static [u8];
        type Error = std::convert::Infallible;

        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
            Poll::Pending
        }
    }
}
