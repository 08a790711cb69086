//! The admin API's connections: bounded in number (a newcomer takes the
//! place of the connection that waited longest for a request, see
//! [`super::places`]), in how long a client may take to send a request's
//! headers, in how long any read or write may stall, and in how long a stop
//! waits for them, so a stalled or hostile client can neither exhaust
//! descriptors, hold the places, nor hold up the agent's exit.

use std::future::Future;
use std::time::Duration;

use axum::Router;
use hyper::service::Service as _;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::places::{Places, Watch, Watched};

/// The bounds on the connections.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Connections served at once. A connection over it takes the place of
    /// the one that has waited longest for a request, and is closed at
    /// once only when every connection is answering one.
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

/// How long a connection the API ended still has its input read (and
/// dropped) before it closes, while the client has not closed it: a
/// socket closed with input unread resets the connection, and a client
/// still sending a body the API refused (413) would lose the answer
/// (as `lingering_close` in nginx).
const LINGER: Duration = Duration::from_secs(5);
/// Connections lingering at once; past it, one closes at once.
const MAX_LINGERING: usize = 64;

/// Serves `app` on `listener` until `shutdown` completes, then lets the
/// requests being answered finish for up to `bounds.stop_grace`.
pub async fn run(
    listener: TcpListener,
    app: Router,
    bounds: Bounds,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let places = Places::new(bounds.max_connections);
    let lingering = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_LINGERING));
    let (stopping, stop) = watch::channel(false);
    let mut conns = JoinSet::new();
    // When an accept last failed and it was said (once a minute).
    let mut accept_failure_said: Option<tokio::time::Instant> = None;
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
        };
        let (stream, client) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors or a reset before accept: wait a
                // moment rather than spin. Said once a minute: the admin
                // API answers nothing meanwhile.
                let now = tokio::time::Instant::now();
                if accept_failure_said
                    .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(60))
                {
                    accept_failure_said = Some(now);
                    tracing::warn!(error = %e, "admin API: cannot accept connections (said once a minute)");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(place) = places.admit() else {
            tracing::debug!("admin API: every place answers a request; connection closed");
            continue;
        };
        let app = TowerToHyperService::new(app.clone());
        let conn_state = place.conn.clone();
        // Each request counts as being answered until its answer's body
        // was written whole: only then may a newcomer take the place.
        let service = hyper::service::service_fn(move |request: hyper::Request<_>| {
            let answering = conn_state.answering();
            let mut request = request.map(|body| Watch::request(body, &conn_state));
            // Who asked, for the guard's warnings.
            request
                .extensions_mut()
                .insert(axum::extract::ConnectInfo(client));
            let answer = app.call(request);
            async move {
                let response = answer.await?;
                Ok::<_, std::convert::Infallible>(
                    response.map(|body| Watch::answer(body, answering)),
                )
            }
        });
        let mut stop = stop.clone();
        let lingering = lingering.clone();
        conns.spawn(async move {
            // A second descriptor of the socket keeps it open once hyper
            // is done with the first.
            let lingers = socket2::SockRef::from(&stream).try_clone().ok();
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(bounds.header_timeout);
            let mut stream = tokio_io_timeout::TimeoutStream::new(stream);
            stream.set_read_timeout(Some(bounds.io_timeout));
            stream.set_write_timeout(Some(bounds.io_timeout));
            let stream = Watched {
                io: Box::pin(stream),
                conn: place.conn.clone(),
            };
            let ended = {
                let conn = builder.serve_connection(TokioIo::new(stream), service);
                tokio::pin!(conn);
                // Whether the connection ended of itself; `None` at a stop.
                let ended = tokio::select! {
                    result = conn.as_mut() => {
                        if let Err(e) = result {
                            tracing::debug!(error = %e, "admin API: connection ended");
                        }
                        Some(true)
                    }
                    _ = stop.wait_for(|s| *s) => None,
                    // Another connection took the place.
                    () = place.conn.cut() => Some(false),
                };
                if ended.is_none() {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
                ended == Some(true)
            };
            drop(place);
            if let (true, Some(sock), Ok(_permit)) = (ended, lingers, lingering.try_acquire()) {
                linger(sock, &mut stop).await;
            }
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

/// Closes our side of a connection the API is done with, then reads and
/// drops what the client still sends until it closes too, for up to
/// [`LINGER`] or until the agent stops.
async fn linger(sock: socket2::Socket, stop: &mut watch::Receiver<bool>) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let Ok(mut sock) = tokio::net::TcpStream::from_std(sock.into()) else {
        return;
    };
    let _ = sock.shutdown().await;
    let drain = async {
        let mut buf = vec![0u8; 16 * 1024];
        while let Ok(1..) = sock.read(&mut buf).await {}
    };
    tokio::select! {
        () = drain => {}
        () = tokio::time::sleep(LINGER) => {}
        _ = stop.wait_for(|s| *s) => {}
    }
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

    /// Timeouts long enough that a client cut within the test was cut to
    /// make room, not for stalling.
    const PATIENT: Bounds = Bounds {
        header_timeout: Duration::from_secs(20),
        io_timeout: Duration::from_secs(20),
        ..SHORT
    };

    /// Takes every place with a connection that sent `start` of a request
    /// and stalls, oldest first.
    async fn fill_with(addr: std::net::SocketAddr, start: &[u8]) -> Vec<TcpStream> {
        let mut stalled = Vec::new();
        for _ in 0..SHORT.max_connections {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(start).await.unwrap();
            stalled.push(s);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        stalled
    }

    async fn start() -> (
        std::net::SocketAddr,
        watch::Sender<bool>,
        tokio::task::JoinHandle<()>,
    ) {
        start_with(SHORT).await
    }

    async fn start_with(
        bounds: Bounds,
    ) -> (
        std::net::SocketAddr,
        watch::Sender<bool>,
        tokio::task::JoinHandle<()>,
    ) {
        let (addr, stop, server, _) = start_counting(bounds).await;
        (addr, stop, server)
    }

    /// As [`start_with`], and how many `/hang` requests reached the app.
    async fn start_counting(
        bounds: Bounds,
    ) -> (
        std::net::SocketAddr,
        watch::Sender<bool>,
        tokio::task::JoinHandle<()>,
        std::sync::Arc<std::sync::atomic::AtomicUsize>,
    ) {
        let hanging = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let entered = hanging.clone();
        let app = Router::new()
            .route("/ok", get(|| async { "ok" }))
            .route(
                "/echo",
                axum::routing::post(|body: String| async move { body }),
            )
            .route("/big", get(|| async { "x".repeat(64 << 20) }))
            .route(
                "/small",
                axum::routing::post(|body: String| async move { body })
                    .layer(axum::extract::DefaultBodyLimit::max(1024)),
            )
            .route(
                "/hang",
                get(move || {
                    entered.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    std::future::pending::<&'static str>()
                }),
            );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, mut stopped) = watch::channel(false);
        let shutdown = async move {
            let _ = stopped.wait_for(|s| *s).await;
        };
        let server = tokio::spawn(async move {
            run(listener, app, bounds, shutdown).await.unwrap();
        });
        (addr, stop, server, hanging)
    }

    /// Waits until `n` `/hang` requests reached the app.
    async fn wait_hanging(count: &std::sync::atomic::AtomicUsize, n: usize) {
        let read = async {
            while count.load(std::sync::atomic::Ordering::SeqCst) < n {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .expect("the /hang requests reached the app");
    }

    /// Reads until the server closes the connection; what it sent.
    async fn read_to_close(stream: &mut TcpStream) -> String {
        let mut out = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out));
        read.await.expect("the server closed the connection").ok();
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn a_client_still_sending_a_body_the_api_refused_reads_the_answer() {
        let (addr, stop, server) = start_with(PATIENT).await;
        // More than the socket buffers hold: the server answers 413 and
        // closes while the client still writes.
        let size = 16 << 20;
        let answer = tokio::task::spawn_blocking(move || {
            use std::io::{Read as _, Write as _};
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            let head = format!(
                "POST /small HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {size}\r\n\r\n"
            );
            s.write_all(head.as_bytes()).unwrap();
            let chunk = vec![b'x'; 64 << 10];
            for _ in 0..size / chunk.len() {
                s.write_all(&chunk).expect("the refused body could be sent");
            }
            let mut answer = String::new();
            s.read_to_string(&mut answer)
                .expect("the answer could be read");
            answer
        })
        .await
        .unwrap();
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
        stop.send(true).unwrap();
        server.await.unwrap();
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
        let (addr, stop, server, count) = start_counting(SHORT).await;
        let mut hanging = TcpStream::connect(addr).await.unwrap();
        hanging
            .write_all(b"GET /hang HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .await
            .unwrap();
        let mut idle = TcpStream::connect(addr).await.unwrap();
        wait_hanging(&count, 1).await;
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
        let (addr, stop, server, count) = start_counting(SHORT).await;
        let mut held = Vec::new();
        for _ in 0..SHORT.max_connections {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(b"GET /hang HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                .await
                .unwrap();
            held.push(s);
        }
        wait_hanging(&count, SHORT.max_connections).await;
        let mut extra = TcpStream::connect(addr).await.unwrap();
        let _ = extra
            .write_all(b"GET /ok HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .await;
        assert_eq!(read_to_close(&mut extra).await, "", "closed unanswered");
        stop.send(true).unwrap();
        server.await.unwrap();
    }

    /// Clients that open connections and send no whole request (slowly,
    /// or not at all) cannot lock others out until their header timeout:
    /// each newcomer takes the place of the one that waited longest, also
    /// of a kept-alive connection between requests; a connection still
    /// writing its answer keeps its place.
    #[tokio::test]
    async fn connections_waiting_for_a_request_give_way_to_newcomers() {
        let (addr, stop, server, count) = start_counting(PATIENT).await;
        let get_ok = b"GET /ok HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
        let mut stalled = fill_with(addr, b"GET /ok HTTP/1.1\r\nHost: 1").await;
        let began = tokio::time::Instant::now();
        let mut fine = TcpStream::connect(addr).await.unwrap();
        fine.write_all(get_ok).await.unwrap();
        assert!(read_to_close(&mut fine).await.ends_with("ok"));
        // The oldest stalled one was closed for it, long before its timeout.
        assert_eq!(read_to_close(&mut stalled[0]).await, "");
        assert!(began.elapsed() < Duration::from_secs(5));

        // A kept-alive connection between requests gives way too.
        let mut kept = TcpStream::connect(addr).await.unwrap();
        kept.write_all(b"GET /ok HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .await
            .unwrap();
        let mut answer = [0u8; 512];
        let n = kept.read(&mut answer).await.unwrap();
        assert!(String::from_utf8_lossy(&answer[..n]).ends_with("ok"));
        // Places: the second stalled one, then `kept` (waiting since its
        // answer). A newcomer takes the stalled one's place.
        let mut next = TcpStream::connect(addr).await.unwrap();
        next.write_all(get_ok).await.unwrap();
        assert!(read_to_close(&mut next).await.ends_with("ok"));
        assert_eq!(read_to_close(&mut stalled[1]).await, "");
        // A new stalled one takes the place `next` left; the next newcomer
        // takes the place of `kept`, which has waited longer.
        let mut late = TcpStream::connect(addr).await.unwrap();
        late.write_all(b"GET /ok HTTP/1.1\r\nHost: 1")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut next = TcpStream::connect(addr).await.unwrap();
        next.write_all(get_ok).await.unwrap();
        assert!(read_to_close(&mut next).await.ends_with("ok"));
        assert_eq!(read_to_close(&mut kept).await, "");
        drop(late);

        // An answer still being written keeps its place.
        let mut big = TcpStream::connect(addr).await.unwrap();
        big.write_all(b"GET /big HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .await
            .unwrap();
        let mut head = [0u8; 1024];
        let n = big.read(&mut head).await.unwrap();
        let body_at = head[..n]
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("the headers come in the first read")
            + 4;
        let mut hang = TcpStream::connect(addr).await.unwrap();
        hang.write_all(b"GET /hang HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .await
            .unwrap();
        wait_hanging(&count, 1).await;
        let mut refused = TcpStream::connect(addr).await.unwrap();
        let _ = refused.write_all(get_ok).await;
        assert_eq!(read_to_close(&mut refused).await, "", "closed unanswered");
        // The big answer still comes whole.
        let mut got = n - body_at;
        let mut chunk = vec![0u8; 1 << 16];
        let whole = tokio::time::timeout(Duration::from_secs(10), async {
            while got < 64 << 20 {
                match big.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got += n,
                }
            }
        });
        whole.await.expect("the big answer stalled");
        assert!(got >= 64 << 20, "the big answer was cut after {got} bytes");
        let _ = stop.send(true);
        drop(hang);
        server.await.unwrap();
    }

    /// A request whose body comes a byte at a time (or not at all) gives
    /// way like one whose headers do: it is not being answered yet.
    #[tokio::test]
    async fn requests_whose_bodies_stall_give_way_to_newcomers() {
        let (addr, stop, server) = start_with(PATIENT).await;
        let post = b"POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\nabc";
        let mut stalled = fill_with(addr, post).await;
        let began = tokio::time::Instant::now();
        let mut fine = TcpStream::connect(addr).await.unwrap();
        fine.write_all(b"GET /ok HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        assert!(read_to_close(&mut fine).await.ends_with("ok"));
        assert_eq!(read_to_close(&mut stalled[0]).await, "");
        assert!(began.elapsed() < Duration::from_secs(5));
        // A body that comes whole is answered.
        let mut whole = TcpStream::connect(addr).await.unwrap();
        whole
            .write_all(b"POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi")
            .await
            .unwrap();
        assert!(read_to_close(&mut whole).await.ends_with("hi"));
        let _ = stop.send(true);
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
