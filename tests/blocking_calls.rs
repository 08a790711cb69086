//! `Node::call_blocking` from threads outside the runtime (as C and Python
//! hosts call): each call borrows a stream of its own, whose answer the
//! calling thread reads itself; the streams are reused, dropped when their
//! call ends otherwise, and never lose a call to a key change, a deadline,
//! a restarted host, or a host at its bound of streams.
mod common;

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::*;
use tribe::{CallTarget, Error, Node, PluginKind, SecretKey};

const SECOND: Duration = Duration::from_secs(1);

fn echo() -> CallTarget {
    CallTarget::new("svc", "echo", PluginKind::Processor)
}

/// Two nodes; the second serves `echo` (its payload back, after the
/// payload's first byte in tens of milliseconds) in tribe `svc`.
async fn pair(prefix: &str, tweak: impl Fn(&mut tribe::Config)) -> (Node, Node) {
    let nodes = start_cluster(prefix, 2, tweak).await;
    wait_converged_members(&nodes, 2).await;
    let (caller, host) = (nodes[0].clone(), nodes[1].clone());
    serve(&host).await;
    wait_for("the host's endpoint seen", Duration::from_secs(20), || {
        caller.members().iter().any(|m| !m.endpoints.is_empty())
            && caller.tribe("svc").is_some_and(|t| t.members.len() == 1)
    })
    .await;
    (caller, host)
}

async fn serve(host: &Node) {
    if host.tribe("svc").is_none() {
        host.create_tribe("svc").await.unwrap();
    }
    if !host
        .tribe("svc")
        .is_some_and(|t| t.members.iter().any(|m| m == host.name()))
    {
        host.join("svc", host.name()).await.unwrap();
    }
    host.serve(
        "echo",
        "1",
        PluginKind::Processor,
        |_info, payload| async move {
            let pause = u64::from(payload.first().copied().unwrap_or(0));
            tokio::time::sleep(Duration::from_millis(pause * 10)).await;
            Ok(payload)
        },
    )
    .await
    .unwrap();
}

/// Starts `f` on a thread of its own (not the runtime's), as a host
/// would; the future gives its result.
fn on_host_thread<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> impl std::future::Future<Output = T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    async move { rx.await.expect("the host thread ended without a result") }
}

/// A blocking call from the current (non-runtime) thread.
fn call(
    rt: &tokio::runtime::Handle,
    node: &Node,
    payload: Vec<u8>,
    timeout: Duration,
) -> tribe::Result<Vec<u8>> {
    rt.block_on(node.call_blocking(&echo(), payload, timeout))
}

/// What `work` gives, and the most call streams `host` had open at once
/// while it ran (sampled every 5 ms: streams open as the calls start, at
/// a moment a loaded machine does not tell).
async fn most_streams_during<T>(
    host: &Node,
    work: impl std::future::Future<Output = T>,
) -> (T, u64) {
    let mut work = std::pin::pin!(work);
    let mut most = 0;
    loop {
        most = most.max(host.rpc_stats().streams_accepted);
        tokio::select! {
            out = &mut work => return (out, most.max(host.rpc_stats().streams_accepted)),
            () = tokio::time::sleep(Duration::from_millis(5)) => {}
        }
    }
}

/// Four threads blocked in calls at once hold a stream each (a shared
/// stream would carry all four); later calls reuse them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_blocked_thread_has_a_stream_of_its_own_and_they_are_reused() {
    let (caller, host) = pair("own", |_| {}).await;
    let rt = tokio::runtime::Handle::current();
    let together = Arc::new(Barrier::new(4));
    let mut threads = Vec::new();
    for t in 0..4u8 {
        let (rt, caller, together) = (rt.clone(), caller.clone(), together.clone());
        threads.push(on_host_thread(move || {
            together.wait();
            // 600 ms in the handler: the four overlap.
            let payload = vec![60, t, 1, 2, 3];
            let reply = call(&rt, &caller, payload.clone(), 5 * SECOND);
            reply.map(|r| r == payload)
        }));
    }
    let (results, during) =
        most_streams_during(&host, futures_util::future::join_all(threads)).await;
    for ok in results {
        assert!(ok.unwrap(), "a reply differed from its payload");
    }
    assert!(
        during >= 4,
        "four calls in flight at once went over {during} stream(s)"
    );
    let rt2 = rt.clone();
    let caller2 = caller.clone();
    on_host_thread(move || {
        for i in 0..50u8 {
            let payload = vec![0, i, 7];
            assert_eq!(
                call(&rt2, &caller2, payload.clone(), 5 * SECOND).unwrap(),
                payload
            );
        }
    })
    .await;
    let after = host.rpc_stats().streams_accepted;
    assert!(
        after <= during,
        "50 calls after opened more streams: {during} then {after}"
    );
    caller.shutdown().await.unwrap();
    host.shutdown().await.unwrap();
}

/// A call past its deadline times out; its stream, on which the late
/// answer may still arrive, is not lent again: the next call gets its own
/// answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_call_leaves_no_late_answer_for_the_next() {
    let (caller, host) = pair("late", |_| {}).await;
    let rt = tokio::runtime::Handle::current();
    let c = caller.clone();
    on_host_thread(move || {
        // 400 ms in the handler, 100 ms allowed.
        let slow = call(&rt, &c, vec![40, 1], Duration::from_millis(100));
        assert!(matches!(slow, Err(Error::Timeout { .. })), "{slow:?}");
        for i in 0..5u8 {
            let payload = vec![0, 2, i];
            assert_eq!(call(&rt, &c, payload.clone(), 5 * SECOND).unwrap(), payload);
        }
        // Past the late answer's arrival too.
        std::thread::sleep(Duration::from_millis(400));
        let payload = vec![0, 3];
        assert_eq!(call(&rt, &c, payload.clone(), 5 * SECOND).unwrap(), payload);
    })
    .await;
    caller.shutdown().await.unwrap();
    host.shutdown().await.unwrap();
}

/// Stopping the calling node wakes a thread blocked in a call at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_caller_wakes_a_blocked_call() {
    let (caller, host) = pair("stopw", |_| {}).await;
    let rt = tokio::runtime::Handle::current();
    let c = caller.clone();
    let blocked = on_host_thread(move || {
        let start = Instant::now();
        // 2.5 s in the handler.
        let r = call(&rt, &c, vec![250], 20 * SECOND);
        (r, start.elapsed())
    });
    let stop = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        caller.abort().await;
    };
    let ((result, took), ()) = tokio::join!(blocked, stop);
    assert!(
        matches!(result, Err(Error::ShuttingDown)),
        "a call cut by its node's stop gave {result:?}"
    );
    assert!(took < 2 * SECOND, "the blocked call woke after {took:?}");
    host.shutdown().await.unwrap();
}

/// Blocking calls keep flowing while the host's keys rotate: a host whose
/// keys change says goodbye on the borrowed streams too and answers what
/// was sent on them; no call fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_calls_pass_through_key_rotations() {
    let k1 = SecretKey::generate();
    let (caller, host) = pair("brot", |cfg| {
        cfg.keyring = Some(tribe::Keyring::new(k1.clone()));
    })
    .await;
    let rt = tokio::runtime::Handle::current();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut threads = Vec::new();
    for t in 0..3u8 {
        let (rt, c, done) = (rt.clone(), caller.clone(), done.clone());
        threads.push(on_host_thread(move || {
            let (mut ok, mut failed) = (0usize, Vec::new());
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let payload = vec![0, t, 9];
                match call(&rt, &c, payload.clone(), 5 * SECOND) {
                    Ok(r) if r == payload => ok += 1,
                    other => failed.push(format!("{other:?}")),
                }
            }
            (ok, failed)
        }));
    }
    let mut old = k1;
    for _ in 0..2 {
        let new = SecretKey::generate();
        rotate_key(&host, &[&caller, &host], &old, &new).await;
        old = new;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut ok = 0;
    let mut failed = Vec::new();
    for (n, f) in futures_util::future::join_all(threads).await {
        ok += n;
        failed.extend(f);
    }
    assert_calls_all_went_through(ok, 50, &failed);
    caller.shutdown().await.unwrap();
    host.shutdown().await.unwrap();
}

/// A host restarted on its address after a call left an idle borrowed
/// stream to it: the next call notices the old stream is gone and opens a
/// new one, instead of losing the call on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_host_is_reached_past_an_idle_borrowed_stream() {
    let (caller, host) = pair("brst", |_| {}).await;
    let rt = tokio::runtime::Handle::current();
    let c = caller.clone();
    let r = rt.clone();
    on_host_thread(move || call(&r, &c, vec![0, 1], 5 * SECOND).unwrap()).await;
    let name = host.name().to_string();
    let again = restart_in_place(&caller, host, "svc").await;
    serve(&again).await;
    wait_for("the host is back", Duration::from_secs(20), || {
        caller.members().iter().any(|m| {
            m.name == name && m.state == tribe::MemberState::Alive && !m.endpoints.is_empty()
        })
    })
    .await;
    let c = caller.clone();
    let reply = on_host_thread(move || call(&rt, &c, vec![0, 2], 5 * SECOND)).await;
    assert_eq!(reply.unwrap(), vec![0, 2]);
    caller.shutdown().await.unwrap();
    again.shutdown().await.unwrap();
}

/// A host at its bound of streams refuses a borrowed one; the call goes on
/// the stream it already shares with the caller and succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_at_its_bound_of_streams_is_called_on_the_shared_one() {
    let (caller, host) = pair("bnd", |cfg| cfg.rpc.max_streams = 1).await;
    // The shared stream takes the host's only place.
    let payload = vec![0, 5];
    assert_eq!(
        caller
            .call(&echo(), payload.clone(), 5 * SECOND)
            .await
            .unwrap(),
        payload
    );
    let rt = tokio::runtime::Handle::current();
    let c = caller.clone();
    on_host_thread(move || {
        for i in 0..3u8 {
            let payload = vec![0, 6, i];
            assert_eq!(call(&rt, &c, payload.clone(), 5 * SECOND).unwrap(), payload);
        }
    })
    .await;
    // (An anti-entropy exchange to the host's port may be open a moment.)
    wait_for("one stream to the host", 5 * SECOND, || {
        connections_to(host.addr()) == 1
    })
    .await;
    caller.shutdown().await.unwrap();
    host.shutdown().await.unwrap();
}

/// Polled from a task, `call_blocking` is `call`: it shares the stream and
/// never blocks the runtime's thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_blocking_from_a_task_shares_the_stream() {
    let (caller, host) = pair("task", |_| {}).await;
    let mut calls = Vec::new();
    for i in 0..4u8 {
        let c = caller.clone();
        calls.push(tokio::spawn(async move {
            let payload = vec![20, i];
            c.call_blocking(&echo(), payload.clone(), 5 * SECOND)
                .await
                .map(|r| r == payload)
        }));
    }
    let (results, during) = most_streams_during(&host, futures_util::future::join_all(calls)).await;
    for ok in results {
        assert!(ok.unwrap().unwrap());
    }
    assert_eq!(during, 1, "calls from tasks went over {during} streams");
    caller.shutdown().await.unwrap();
    host.shutdown().await.unwrap();
}

/// A large request on a borrowed stream that the host refuses (at its
/// bound of streams, it says so and closes without reading, which may
/// break the write half-way): the call did not run, and goes on the
/// shared stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_call_refused_half_written_goes_on_the_shared_stream() {
    let (caller, _host) = pair("bigref", |cfg| cfg.rpc.max_streams = 1).await;
    assert_eq!(
        caller.call(&echo(), vec![0, 1], 5 * SECOND).await.unwrap(),
        vec![0, 1]
    );
    let rt = tokio::runtime::Handle::current();
    let c = caller.clone();
    on_host_thread(move || {
        let mut big = vec![7u8; 3 << 20];
        big[0] = 0;
        for _ in 0..2 {
            let reply = call(&rt, &c, big.clone(), 10 * SECOND);
            assert!(
                reply.as_deref() == Ok(&big[..]),
                "{:?}",
                reply.map(|r| r.len())
            );
        }
    })
    .await;
}

/// Large replies a host gives from its own threads after it began a
/// graceful shutdown all reach their callers: a stream draining after its
/// goodbye closes once each answer is queued on it, not as soon as a
/// thread took the call to answer it (encoding a reply of megabytes takes
/// long enough for the stream to close in between, and the reply was lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_replies_given_after_a_graceful_shutdown_reach_their_callers() {
    const CALLS: usize = 6;
    const SIZE: usize = 3 << 20;
    let nodes = start_cluster("lr", 2, |_| {}).await;
    wait_converged_members(&nodes, 2).await;
    let (caller, host) = (nodes[0].clone(), nodes[1].clone());
    host.create_tribe("svc").await.unwrap();
    host.join("svc", host.name()).await.unwrap();
    let (held, taken) = std::sync::mpsc::channel::<tribe::Responder>();
    let held = std::sync::Mutex::new(held);
    host.serve_responder("big", "1", PluginKind::Processor, move |_, _, r| {
        let _ = held.lock().unwrap().send(r);
    })
    .await
    .unwrap();
    wait_for("the host's endpoint seen", Duration::from_secs(20), || {
        caller.members().iter().any(|m| !m.endpoints.is_empty())
            && caller.tribe("svc").is_some_and(|t| t.members.len() == 1)
    })
    .await;
    let target = CallTarget::new("svc", "big", PluginKind::Processor);
    // Blocking callers, each on a stream of its own, which ends its side
    // as soon as it reads the goodbye.
    let rt = tokio::runtime::Handle::current();
    let calls: Vec<_> = (0..CALLS)
        .map(|_| {
            let (rt, caller, target) = (rt.clone(), caller.clone(), target.clone());
            std::thread::spawn(move || {
                rt.block_on(caller.call_blocking(&target, b"x".to_vec(), 20 * SECOND))
            })
        })
        .collect();
    let responders = tokio::task::spawn_blocking(move || {
        (0..CALLS)
            .map(|_| taken.recv_timeout(Duration::from_secs(10)).unwrap())
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    host.shutdown().await.unwrap();
    // The host's "threads" answer now, each with megabytes.
    std::thread::scope(|s| {
        for r in responders {
            s.spawn(move || r.reply(vec![7; SIZE]).unwrap());
        }
    });
    let replies = tokio::task::spawn_blocking(move || {
        calls
            .into_iter()
            .map(|c| c.join().unwrap())
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    for reply in replies {
        assert!(
            matches!(&reply, Ok(b) if b.len() == SIZE),
            "{:?}",
            reply.map(|b| b.len())
        );
    }
}

/// Calls given up while their large request is still being written (the
/// stream dropped half-way) are no stream errors at the host: the caller
/// went away, it sent nothing wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_given_up_mid_request_are_no_stream_errors_at_the_host() {
    let (caller, host) = pair("gu", |_| {}).await;
    let rt = tokio::runtime::Handle::current();
    let (c, r) = (caller.clone(), rt.clone());
    let outcomes = on_host_thread(move || {
        (0..30u64)
            .map(|i| {
                let payload = vec![0u8; 3 << 20];
                // From 1 ms: 3 MiB there and back take longer, also on a
                // quiet, fast box (from 2 ms, every call once finished).
                call(&r, &c, payload, Duration::from_millis(1 + i % 4)).is_ok()
            })
            .collect::<Vec<_>>()
    })
    .await;
    assert!(outcomes.iter().any(|ok| !ok), "some calls were given up");
    // The host is fine, and counts no error for them.
    let (c, r) = (caller.clone(), rt.clone());
    let after = on_host_thread(move || call(&r, &c, b"\0after".to_vec(), 5 * SECOND)).await;
    assert_eq!(after.unwrap(), b"\0after");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(host.rpc_stats().stream_errors, 0, "{:?}", host.rpc_stats());
    caller.shutdown().await.unwrap();
    host.shutdown().await.unwrap();
}

/// Many threads that call one host at the same moment open no more than 32
/// borrowed streams to it (the rest share the multiplexed one): the bound
/// holds while the streams are still being opened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_that_start_together_open_at_most_32_streams_to_a_host() {
    let (caller, host) = pair("many", |_| {}).await;
    let rt = tokio::runtime::Handle::current();
    let together = Arc::new(Barrier::new(64));
    let mut threads = Vec::new();
    for t in 0..64u8 {
        let (rt, caller, together) = (rt.clone(), caller.clone(), together.clone());
        threads.push(on_host_thread(move || {
            together.wait();
            // 300 ms in the handler: all of them overlap.
            let payload = vec![30, t];
            call(&rt, &caller, payload.clone(), 10 * SECOND).map(|r| r == payload)
        }));
    }
    let (results, most) = most_streams_during(&host, futures_util::future::join_all(threads)).await;
    for ok in results {
        assert!(ok.unwrap(), "a reply differed from its payload");
    }
    // 32 borrowed streams, the shared one, and an anti-entropy exchange
    // now and then.
    assert!(
        most <= 34,
        "64 calls started together opened {most} streams"
    );
    caller.shutdown().await.unwrap();
    host.shutdown().await.unwrap();
}

/// A call, a keyring step that waits, or `calls_drained`, driven by another
/// executor than tokio's (outside any tokio runtime), ends with an error
/// saying so, rather than panicking in tokio.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_outside_any_tokio_runtime_is_an_error_not_a_panic() {
    // Keyed: a keyring step waits for other nodes only where there is a
    // keyring (a node without one refuses it at once).
    let key = tribe::SecretKey::generate();
    let (caller, host) = pair("exec", |c| {
        c.keyring = Some(tribe::Keyring::new(key.clone()))
    })
    .await;
    let node = caller.clone();
    let outcomes = on_host_thread(move || {
        use std::future::Future as _;
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let mut out = Vec::new();
        let target = echo();
        let mut blocking = std::pin::pin!(node.call_blocking(&target, vec![0], SECOND));
        out.push(blocking.as_mut().poll(&mut cx));
        let mut shared = std::pin::pin!(node.call(&target, vec![0], SECOND));
        out.push(shared.as_mut().poll(&mut cx));
        let mut local = std::pin::pin!(node.call_local(
            "echo",
            None,
            tribe::PluginKind::Processor,
            vec![0],
            SECOND
        ));
        out.push(local.as_mut().poll(&mut cx));
        // A key no member holds is waited for: tokio's timers.
        let unknown = tribe::SecretKey::generate().id();
        let mut use_key = std::pin::pin!(node.use_key(unknown));
        out.push(
            use_key
                .as_mut()
                .poll(&mut cx)
                .map(|r| r.map(|()| Vec::new())),
        );
        let mut drained = std::pin::pin!(node.calls_drained());
        out.push(
            drained
                .as_mut()
                .poll(&mut cx)
                .map(|r| r.map(|()| Vec::new())),
        );
        out
    })
    .await;
    assert_eq!(outcomes.len(), 5);
    for outcome in outcomes {
        match outcome {
            std::task::Poll::Ready(Err(tribe::Error::InvalidArgument(why))) => {
                assert!(why.contains("tokio"), "{why}")
            }
            other => panic!("{other:?}"),
        }
    }
    caller.shutdown().await.unwrap();
    host.shutdown().await.unwrap();
}
