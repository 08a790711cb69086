//! The admin API's connections: bounded in number, in how long a client
//! may take to send a request's headers, in how long any read or write may
//! stall, and in how long a stop waits for them, so a stalled or hostile
//! client can neither exhaust descriptors, hold a place for long, nor hold
//! up the agent's exit.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

/// The bounds on the connections.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Connections served at once; more are closed as they arrive.
    pub max_connections: usize,
    /// How long a client may take to send a request's headers (also the
    /// longest an idle kept-alive connection stays open).
    pub header_timeout: Duration,
    /// How long a read from the client or a write to it may stall (a
    /// client that stops reading its answer). Longer than the request
    /// deadline, so that a body that stalls is answered 408 rather than
    /// cut.
    pub io_timeout: Duration,
    /// How long a stop waits for requests being answered.
    pub stop_grace: Duration,
}

impl Default for Bounds {
    fn default() -> Bounds {
        Bounds {
            max_connections: 128,
            header_timeout: Duration::from_secs(10),
            io_timeout: Duration::from_secs(35),
            stop_grace: Duration::from_secs(5),
        }
    }
}

/// Serves `app` on `listener` until `shutdown` completes, then lets the
/// requests being answered finish for up to `bounds.stop_grace`.
pub async fn run(
    listener: TcpListener,
    app: Router,
    bounds: Bounds,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let places = Arc::new(Semaphore::new(bounds.max_connections));
    let (stopping, stop) = watch::channel(false);
    let mut conns = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors or a reset before accept: wait a
                // moment rather than spin.
                tracing::debug!(error = %e, "admin API: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(place) = places.clone().try_acquire_owned() else {
            tracing::debug!("admin API: connection limit reached; connection closed");
            continue;
        };
        let service = TowerToHyperService::new(app.clone());
        let mut stop = stop.clone();
        conns.spawn(async move {
            let _place = place;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(bounds.header_timeout);
            let mut stream = tokio_io_timeout::TimeoutStream::new(stream);
            stream.set_read_timeout(Some(bounds.io_timeout));
            stream.set_write_timeout(Some(bounds.io_timeout));
            let conn = builder.serve_connection(TokioIo::new(Box::pin(stream)), service);
            tokio::pin!(conn);
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "admin API: connection ended");
                    }
                    return;
                }
                _ = stop.wait_for(|s| *s) => conn.as_mut().graceful_shutdown(),
            }
            let _ = conn.await;
        });
    }
    drop(listener);
    let _ = stopping.send(true);
    let drained = async { while conns.join_next().await.is_some() {} };
    if tokio::time::timeout(bounds.stop_grace, drained)
        .await
        .is_err()
    {
        tracing::debug!("admin API: requests still open at the stop are dropped");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    const SHORT: Bounds = Bounds {
        max_connections: 2,
        header_timeout: Duration::from_millis(300),
        io_timeout: Duration::from_millis(300),
        stop_grace: Duration::from_millis(300),
    };

    async fn start() -> (
        std::net::SocketAddr,
        watch::Sender<bool>,
        tokio::task::JoinHandle<()>,
    ) {
        let app = Router::new()
            .route("/ok", get(|| async { "ok" }))
            .route("/big", get(|| async { "x".repeat(64 << 20) }))
            .route("/hang", get(std::future::pending::<&'static str>));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, mut stopped) = watch::channel(false);
        let shutdown = async move {
            let _ = stopped.wait_for(|s| *s).await;
        };
        let server = tokio::spawn(async move {
            run(listener, app, SHORT, shutdown).await.unwrap();
        });
        (addr, stop, server)
    }

    /// Reads until the server closes the connection; what it sent.
    async fn read_to_close(stream: &mut TcpStream) -> String {
        let mut out = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out));
        read.await.expect("the server closed the connection").ok();
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn a_client_that_stalls_in_its_headers_is_cut() {
        let (addr, stop, server) = start().await;
        let mut stalled = TcpStream::connect(addr).await.unwrap();
        stalled
            .write_all(b"GET /ok HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            .await
            .unwrap();
        let began = tokio::time::Instant::now();
        read_to_close(&mut stalled).await;
        assert!(began.elapsed() < Duration::from_secs(5));
        // Others are still served.
        let mut fine = TcpStream::connect(addr).await.unwrap();
        fine.write_all(b"GET /ok HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        assert!(read_to_close(&mut fine).await.ends_with("ok"));
        stop.send(true).unwrap();
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_stop_waits_for_hanging_requests_only_for_its_grace() {
        let (addr, stop, server) = start().await;
        let mut hanging = TcpStream::connect(addr).await.unwrap();
        hanging
            .write_all(b"GET /hang HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .await
            .unwrap();
        let mut idle = TcpStream::connect(addr).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let began = tokio::time::Instant::now();
        stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("the server stopped despite its clients")
            .unwrap();
        assert!(began.elapsed() < Duration::from_secs(3));
        read_to_close(&mut idle).await;
        read_to_close(&mut hanging).await;
    }

    #[tokio::test]
    async fn connections_over_the_bound_are_closed_at_once() {
        let (addr, stop, server) = start().await;
        let mut held = Vec::new();
        for _ in 0..SHORT.max_connections {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(b"GET /hang HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                .await
                .unwrap();
            held.push(s);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut extra = TcpStream::connect(addr).await.unwrap();
        let _ = extra
            .write_all(b"GET /ok HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .await;
        assert_eq!(read_to_close(&mut extra).await, "", "closed unanswered");
        stop.send(true).unwrap();
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_client_that_stops_reading_its_answer_is_cut() {
        let (addr, stop, server) = start().await;
        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET /big HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .await
            .unwrap();
        // Never read: the answer fills the socket buffers and stalls.
        tokio::time::sleep(Duration::from_secs(2)).await;
        // Its place is free again: two more clients get in (of two).
        let _idle = TcpStream::connect(addr).await.unwrap();
        let mut fine = TcpStream::connect(addr).await.unwrap();
        fine.write_all(b"GET /ok HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        assert!(read_to_close(&mut fine).await.ends_with("ok"));
        stop.send(true).unwrap();
        server.await.unwrap();
    }
}
