//! The write half of a call stream's TCP socket, whose writes never raise
//! SIGPIPE. libtribe lives inside C daemons, where SIGPIPE keeps its default
//! action (end the process) and frames are written from the host's own
//! threads: a write to a peer that has gone must fail with `EPIPE`, not kill
//! the host. Plain writes already pass `MSG_NOSIGNAL` (std's `send`);
//! std's vectored write is `writev`, which has no such flag, so vectored
//! writes go through `sendmsg` with it.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncWrite, Interest};
use tokio::net::tcp::OwnedWriteHalf;

/// A TCP write half whose writes end in an error, never a signal.
pub struct TcpWriter(OwnedWriteHalf);

impl TcpWriter {
    /// Wraps the write half of a connected socket.
    pub fn new(half: OwnedWriteHalf) -> TcpWriter {
        TcpWriter(half)
    }
}

impl AsyncWrite for TcpWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let stream: &tokio::net::TcpStream = self.0.as_ref();
        loop {
            ready!(stream.poll_write_ready(cx))?;
            let sent = stream.try_io(Interest::WRITABLE, || {
                socket2::SockRef::from(stream).send_vectored_with_flags(bufs, libc::MSG_NOSIGNAL)
            });
            match sent {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                other => return Poll::Ready(other),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::signal::{SigSet, Signal};
    use tokio::io::AsyncWriteExt;

    /// Whether SIGPIPE waits, blocked, on this thread (Linux shows a
    /// thread's own pending signals in `/proc/thread-self/status`).
    fn sigpipe_pending_here() -> bool {
        let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("SigPnd:")).unwrap();
        let mask = u64::from_str_radix(line["SigPnd:".len()..].trim(), 16).unwrap();
        mask & (1 << (libc::SIGPIPE - 1)) != 0
    }

    // Rust ignores SIGPIPE, which would hide it; a blocked signal is never
    // ignored, so it stays pending on the thread that raised it, where the
    // test can see it. The current-thread runtime writes on this thread.
    #[tokio::test(flavor = "current_thread")]
    async fn a_vectored_write_to_a_closed_socket_fails_without_sigpipe() {
        let mut pipe = SigSet::empty();
        pipe.add(Signal::SIGPIPE);
        pipe.thread_block().unwrap();
        assert!(!sigpipe_pending_here());

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let near = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let _far = listener.accept().await.unwrap();
        let (_read, write) = near.into_split();
        let mut writer = TcpWriter::new(write);
        // Shutting our own side for writing makes every later write EPIPE.
        writer.shutdown().await.unwrap();
        let frames = [IoSlice::new(b"one frame"), IoSlice::new(b"and another")];
        let err = writer.write_vectored(&frames).await.unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EPIPE));
        assert!(!sigpipe_pending_here(), "the write raised SIGPIPE");
        let err = writer.write(b"one frame").await.unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EPIPE));
        assert!(!sigpipe_pending_here(), "the write raised SIGPIPE");
    }
}
