//! Bounds of the serving side, over real nodes on 127.0.0.1: call streams
//! over the configured limit are refused with a frame that callers read as
//! `Overloaded` (and counted), a caller whose extra stream for large calls
//! is refused keeps calling on the stream it has, and a handler's reply
//! over `max_payload` reaches its caller as a `too_large` error (and is
//! counted) while the stream lives on.
mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use tribe::{CallTarget, Error, Node, PluginKind};

const SECOND: Duration = Duration::from_secs(1);

/// `max_payload` of every node here.
const LIMIT: usize = 64 * 1024;

/// `nodes[1]` hosts tribe `svc` and serves `echo` and `big` (a reply one
/// byte over [`LIMIT`]); the others see both endpoints.
async fn host_cluster(prefix: &str, n: usize, tweak: impl Fn(&mut tribe::Config)) -> Vec<Node> {
    let nodes = start_cluster(prefix, n, |cfg| {
        cfg.rpc.max_payload = LIMIT;
        tweak(cfg);
    })
    .await;
    wait_converged_members(&nodes, n).await;
    let host = &nodes[1];
    host_echo(host).await;
    host.serve("big", "1", PluginKind::Processor, |_, _| async move {
        Ok(vec![7u8; LIMIT + 1])
    })
    .await
    .unwrap();
    wait_for("endpoints seen", Duration::from_secs(20), || {
        nodes.iter().all(|n| {
            n.members().iter().any(|m| m.endpoints.len() == 2)
                && n.tribe("svc").is_some_and(|t| t.members.len() == 1)
        })
    })
    .await;
    nodes
}

fn target(plugin: &str) -> CallTarget {
    CallTarget::new("svc", plugin, PluginKind::Processor)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_streams_over_the_bound_are_refused_as_overloaded() {
    let nodes = host_cluster("sb", 3, |cfg| cfg.rpc.max_streams = 1).await;
    let (first, host, second) = (&nodes[0], &nodes[1], &nodes[2]);
    // The first caller's pooled stream takes the host's only slot.
    assert_eq!(
        first
            .call(&target("echo"), b"a".to_vec(), SECOND)
            .await
            .unwrap(),
        b"a"
    );
    // The second caller's stream is refused: its call did not run, and it
    // says so rather than reporting the host gone.
    match second.call(&target("echo"), b"b".to_vec(), SECOND).await {
        Err(Error::Overloaded {
            by: tribe::Overload::Hosts(hosts),
        }) => assert_eq!(hosts, [host.name()]),
        other => panic!("expected Overloaded, got {other:?}"),
    }
    assert!(host.rpc_stats().streams_refused >= 1);
    assert_eq!(host.rpc_stats().served, 1);
    let stats = second.rpc_stats();
    assert_eq!((stats.overloaded, stats.disconnected), (1, 0));
    // The stream that holds the slot still serves.
    assert_eq!(
        first
            .call(&target("echo"), b"c".to_vec(), SECOND)
            .await
            .unwrap(),
        b"c"
    );
    for n in nodes {
        let _ = n.shutdown().await;
    }
}

/// `n` calls of `size`-byte payloads at once to the host's `slow`
/// handler; each reply must be its own payload.
async fn overlapping_calls(caller: &Node, n: u8, size: usize) {
    let calls = (0..n).map(|i| async move {
        let payload = vec![i; size];
        let reply = caller
            .call(&target("slow"), payload.clone(), 5 * SECOND)
            .await;
        assert_eq!(reply.unwrap(), payload, "call {i} of {size} B");
    });
    futures_util::future::join_all(calls).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_calls_try_another_stream_and_keep_the_one_they_have_when_refused() {
    let nodes = host_cluster("ls", 2, |cfg| cfg.rpc.max_streams = 1).await;
    let (caller, host) = (&nodes[0], &nodes[1]);
    host.serve(
        "slow",
        "1",
        PluginKind::Processor,
        |_, payload| async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            Ok(payload)
        },
    )
    .await
    .unwrap();
    wait_for("slow seen", Duration::from_secs(20), || {
        caller.members().iter().any(|m| m.endpoints.len() == 3)
    })
    .await;
    // Small calls share one stream however many overlap: none is refused.
    overlapping_calls(caller, 12, 100).await;
    assert_eq!(host.rpc_stats().streams_refused, 0);
    // Overlapping large calls ask for another stream; the host at its
    // bound refuses it, and every call still runs, on the first stream.
    overlapping_calls(caller, 12, 32 * 1024).await;
    let refused = host.rpc_stats().streams_refused;
    assert!(refused >= 1, "no second stream was tried");
    let stats = caller.rpc_stats();
    assert_eq!((stats.ok, stats.overloaded, stats.failovers), (24, 0, 0));
    // For a while after a refusal no more streams are tried.
    overlapping_calls(caller, 12, 32 * 1024).await;
    assert_eq!(host.rpc_stats().streams_refused, refused);
    for n in nodes {
        let _ = n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_over_max_payload_are_refused_and_counted() {
    let nodes = host_cluster("rb", 2, |_| {}).await;
    let (caller, host) = (&nodes[0], &nodes[1]);
    match caller.call(&target("big"), b"x".to_vec(), SECOND).await {
        Err(Error::Remote { code, message }) => {
            assert_eq!(code, "too_large");
            assert!(message.contains("65537"), "{message}");
        }
        other => panic!("expected a too_large error, got {other:?}"),
    }
    assert_eq!(host.rpc_stats().replies_too_large, 1);
    // The same stream carries the next call: nothing was cut.
    assert_eq!(
        caller
            .call(&target("echo"), b"y".to_vec(), SECOND)
            .await
            .unwrap(),
        b"y"
    );
    // Counted as a size refusal, as the caller is told.
    let stats = caller.rpc_stats();
    assert_eq!(
        (
            stats.ok,
            stats.too_large,
            stats.remote_error,
            stats.disconnected
        ),
        (1, 1, 0, 0)
    );
    assert_eq!(host.rpc_stats().stream_errors, 0);
    for n in nodes {
        let _ = n.shutdown().await;
    }
}

/// Starts `n` calls of `plugin` with a long timeout and drops them once the
/// host has them, as a caller whose context was cancelled does.
async fn start_and_cancel(caller: &Node, plugin: &str, n: usize, running: impl Fn() -> usize) {
    let calls: Vec<_> = (0..n)
        .map(|_| {
            let caller = caller.clone();
            let t = target(plugin);
            tokio::spawn(async move { caller.call(&t, b"x".to_vec(), 60 * SECOND).await })
        })
        .collect();
    wait_for("calls running at the host", 10 * SECOND, || running() == n).await;
    for call in calls {
        call.abort();
    }
}

/// Serves `hold`, whose handler keeps every responder unanswered in the
/// list returned.
async fn serve_hold(host: &Node) -> Arc<Mutex<Vec<tribe::Responder>>> {
    let held = Arc::new(Mutex::new(Vec::new()));
    let h = held.clone();
    host.serve_responder("hold", "1", PluginKind::Processor, move |_, _, r| {
        h.lock().unwrap().push(r);
    })
    .await
    .unwrap();
    held
}

/// Serves `hang` on `host` (a future handler that never ends unless
/// cancelled; the count of its starts is returned) and `hold` (see
/// [`serve_hold`]), and waits until `caller` sees both.
async fn serve_hang_and_hold(
    host: &Node,
    caller: &Node,
) -> (
    Arc<std::sync::atomic::AtomicUsize>,
    Arc<Mutex<Vec<tribe::Responder>>>,
) {
    let started = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let s = started.clone();
    host.serve("hang", "1", PluginKind::Processor, move |_, _| {
        s.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        async move {
            std::future::pending::<()>().await;
            Ok(Vec::new())
        }
    })
    .await
    .unwrap();
    let held = serve_hold(host).await;
    wait_for("endpoints seen", 20 * SECOND, || {
        caller.members().iter().any(|m| m.endpoints.len() == 4)
    })
    .await;
    (started, held)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_call_frees_its_place_at_the_host_at_once() {
    use std::sync::atomic::Ordering;
    const PER_STREAM: usize = 4;
    let nodes = host_cluster("cx", 2, |cfg| cfg.rpc.max_inflight_per_conn = PER_STREAM).await;
    let (caller, host) = (&nodes[0], &nodes[1]);
    let (started, held) = serve_hang_and_hold(host, caller).await;

    start_and_cancel(caller, "hang", PER_STREAM, || {
        started.load(Ordering::SeqCst)
    })
    .await;
    // Without the cancel the stream's places stay taken for 60 s and this
    // call is refused as overloaded.
    wait_for("the host counts the cancels", 10 * SECOND, || {
        host.rpc_stats().cancelled == PER_STREAM as u64
    })
    .await;
    let echo = caller
        .call(&target("echo"), b"e".to_vec(), 5 * SECOND)
        .await;
    assert_eq!(echo.unwrap(), b"e");

    start_and_cancel(caller, "hold", PER_STREAM, || held.lock().unwrap().len()).await;
    wait_for("the held calls are abandoned", 10 * SECOND, || {
        held.lock().unwrap().iter().all(|r| r.is_abandoned())
    })
    .await;
    assert_eq!(host.rpc_stats().cancelled, 2 * PER_STREAM as u64);
    // A responder call holds its places until its responder goes, also
    // once abandoned: the host still holds it, and the gauge says so.
    assert_eq!(host.rpc_stats().serving, PER_STREAM as u64);
    match caller.call(&target("echo"), b"f".to_vec(), SECOND).await {
        Err(Error::Overloaded { .. }) => {}
        r => panic!("expected Overloaded while the abandoned calls are held, got {r:?}"),
    }
    // A late answer to a cancelled call is dropped, gives the places back,
    // and the stream lives on.
    for r in held.lock().unwrap().drain(..) {
        r.reply(b"late".to_vec()).unwrap();
    }
    assert_eq!(host.rpc_stats().serving, 0);
    let echo = caller
        .call(&target("echo"), b"g".to_vec(), 5 * SECOND)
        .await;
    assert_eq!(echo.unwrap(), b"g");
}

/// Calls `echo` until the host has a place for it again; false when it
/// still refuses as overloaded after `within`.
async fn echo_gets_a_place(caller: &Node, within: Duration) -> bool {
    let end = tokio::time::Instant::now() + within;
    loop {
        match caller.call(&target("echo"), b"e".to_vec(), SECOND).await {
            Ok(reply) => {
                assert_eq!(reply, b"e");
                return true;
            }
            Err(Error::Overloaded { .. }) if tokio::time::Instant::now() < end => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(Error::Overloaded { .. }) => return false,
            Err(other) => panic!("expected the echo or Overloaded, got {other:?}"),
        }
    }
}

/// Serves "ignore", whose handler declines every call, and waits until
/// `caller` sees it.
async fn serve_declining(caller: &Node, host: &Node) {
    host.serve_responder("ignore", "1", PluginKind::Processor, |_, _, r| r.decline())
        .await
        .unwrap();
    wait_for("endpoints seen", 20 * SECOND, || {
        caller.members().iter().any(|m| m.endpoints.len() == 3)
    })
    .await;
}

/// A responder call its host declines (never answers) holds its places as
/// if its handler still ran, and gives them back when its budget runs out:
/// no cancel comes, since the caller's own deadline passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declined_responder_call_frees_its_place_at_its_budget() {
    const PER_STREAM: usize = 2;
    let nodes = host_cluster("ub", 2, |cfg| cfg.rpc.max_inflight_per_conn = PER_STREAM).await;
    let (caller, host) = (&nodes[0], &nodes[1]);
    serve_declining(caller, host).await;
    let short = Duration::from_millis(300);
    let ignore = target("ignore");
    let served = host.rpc_stats().served;
    let ignored = futures_util::future::join_all(
        (0..PER_STREAM).map(|_| caller.call(&ignore, b"x".to_vec(), short)),
    )
    .await;
    for r in ignored {
        assert!(matches!(r, Err(Error::Timeout { .. })), "{r:?}");
    }
    // The answers at the end of their budgets are the library's, not the
    // host's: no call was served.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(host.rpc_stats().served, served);
    assert!(
        echo_gets_a_place(caller, 5 * SECOND).await,
        "the unanswered calls still hold the stream's places"
    );
}

/// A node that stops ends its calls in flight (`ShuttingDown`) and their
/// streams; a responder call still unanswered when its stream ends turns
/// abandoned then, and gives the host's place back with its responder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_call_frees_its_place_when_its_stream_ends() {
    let nodes = host_cluster("he", 3, |cfg| cfg.rpc.max_serving = 1).await;
    let (gone, host, other) = (&nodes[0], &nodes[1], &nodes[2]);
    let held = serve_hold(host).await;
    wait_for("endpoints seen", 20 * SECOND, || {
        [gone, other]
            .iter()
            .all(|n| n.members().iter().any(|m| m.endpoints.len() == 3))
    })
    .await;
    let waiting = {
        let gone = gone.clone();
        tokio::spawn(async move {
            gone.call(&target("hold"), b"x".to_vec(), 120 * SECOND)
                .await
        })
    };
    wait_for("the call is held", 10 * SECOND, || {
        held.lock().unwrap().len() == 1
    })
    .await;
    // The host's one serving place is taken.
    match other.call(&target("echo"), b"e".to_vec(), SECOND).await {
        Err(Error::Overloaded { .. }) => {}
        r => panic!("expected Overloaded while the place is held, got {r:?}"),
    }
    // Its own call ends as the node stops, not at its deadline.
    gone.abort().await;
    let ended = tokio::time::timeout(5 * SECOND, waiting)
        .await
        .expect("the call ends with its node")
        .unwrap();
    assert!(matches!(ended, Err(Error::ShuttingDown)), "{ended:?}");
    wait_for("the held call is abandoned", 10 * SECOND, || {
        held.lock().unwrap()[0].is_abandoned()
    })
    .await;
    held.lock().unwrap().clear();
    assert!(
        echo_gets_a_place(other, 10 * SECOND).await,
        "the held call of a stream that ended still holds the place"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_running_when_their_callers_stream_ends_count_as_cancelled() {
    use std::sync::atomic::Ordering;
    let nodes = host_cluster("ce", 2, |_| {}).await;
    let (gone, host) = (&nodes[0], &nodes[1]);
    let (started, held) = serve_hang_and_hold(host, gone).await;
    let mut calls = Vec::new();
    for plugin in ["hang", "hang", "hold", "hold"] {
        let gone = gone.clone();
        calls.push(tokio::spawn(async move {
            gone.call(&target(plugin), b"x".to_vec(), 120 * SECOND)
                .await
        }));
    }
    wait_for("four calls running at the host", 10 * SECOND, || {
        started.load(Ordering::SeqCst) == 2 && held.lock().unwrap().len() == 2
    })
    .await;
    assert_eq!(host.rpc_stats().cancelled, 0);
    // The calling node dies without a word: its streams end with the calls
    // running, which no caller will hear the answer of.
    gone.abort().await;
    wait_for("the host counts the four as cancelled", 10 * SECOND, || {
        host.rpc_stats().cancelled == 4
    })
    .await;
    assert!(held.lock().unwrap().iter().all(|r| r.is_abandoned()));
    held.lock().unwrap().clear();
    for call in calls {
        let _ = call.await;
    }
}

/// Serves "hold" on `host` and makes a call from `host` to itself that the
/// handler keeps: its responders, and the call's task.
async fn hold_a_local_call(
    host: &Node,
) -> (
    Arc<Mutex<Vec<tribe::Responder>>>,
    tokio::task::JoinHandle<tribe::Result<Vec<u8>>>,
) {
    let held = serve_hold(host).await;
    let waiting = {
        let host = host.clone();
        tokio::spawn(async move { host.call(&target("hold"), b"x".to_vec(), 30 * SECOND).await })
    };
    wait_for("the call is held", 10 * SECOND, || {
        held.lock().unwrap().len() == 1
    })
    .await;
    (held, waiting)
}

/// A call to this node's own handler that the host refuses as stopping
/// while the node stops (its handlers stop with it, as the Go package's do
/// at `Close`) ends `ShuttingDown` when no other member serves the plugin,
/// not `NoProvider`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_call_refused_as_stopping_ends_shutting_down() {
    let nodes = host_cluster("ls", 2, |_| {}).await;
    let host = &nodes[1];
    let (held, waiting) = hold_a_local_call(host).await;
    host.shutdown().await.unwrap();
    let r = held.lock().unwrap().pop().unwrap();
    r.refuse_stopping();
    let ended = tokio::time::timeout(5 * SECOND, waiting)
        .await
        .expect("the call ends at the refusal")
        .unwrap();
    assert!(matches!(ended, Err(Error::ShuttingDown)), "{ended:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_refused_by_a_stopping_handler_moves_to_another_host() {
    let nodes = start_cluster("rs", 3, |_| {}).await;
    wait_converged_members(&nodes, 3).await;
    nodes[1].create_tribe("svc").await.unwrap();
    for host in &nodes[1..] {
        nodes[1].join("svc", host.name()).await.unwrap();
    }
    // One host's pool is stopping: it refuses every call without running it.
    nodes[1]
        .serve_responder("work", "1", PluginKind::Processor, |_, _, r| {
            r.refuse_stopping()
        })
        .await
        .unwrap();
    nodes[2]
        .serve_responder("work", "1", PluginKind::Processor, |_, _, r| {
            r.reply(b"ran".to_vec()).unwrap();
        })
        .await
        .unwrap();
    // Every node's view, the hosts' too: a host serves a tribe's calls
    // only once it knows itself a member.
    wait_for("both endpoints seen", 20 * SECOND, || {
        nodes
            .iter()
            .all(|n| n.tribe("svc").is_some_and(|t| t.members.len() == 2))
            && nodes[0]
                .members()
                .iter()
                .filter(|m| !m.endpoints.is_empty())
                .count()
                == 2
    })
    .await;
    for _ in 0..10 {
        let reply = nodes[0]
            .call(&target("work"), b"x".to_vec(), 5 * SECOND)
            .await;
        assert_eq!(reply.unwrap(), b"ran");
    }
    assert_eq!(nodes[2].rpc_stats().served, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_side_names_its_own_limit_when_a_payload_is_over_it() {
    // Node 0 accepts four times what the host (node 1) does, node 2 half.
    let nodes = host_cluster("tl", 3, |cfg| {
        if cfg.name.ends_with('0') {
            cfg.rpc.max_payload = 4 * LIMIT;
        } else if cfg.name.ends_with('2') {
            cfg.rpc.max_payload = LIMIT / 2;
        }
    })
    .await;
    match nodes[0]
        .call(&target("echo"), vec![1; LIMIT + 1], 5 * SECOND)
        .await
    {
        Err(Error::TooLarge { size, limit }) => assert_eq!((size, limit), (LIMIT + 1, LIMIT)),
        other => panic!("expected the host's limit, got {other:?}"),
    }
    // A reply within the host's limit but over the caller's is refused by
    // the caller, with its own limit.
    match nodes[2]
        .call(&target("echo"), vec![2; LIMIT / 2], 5 * SECOND)
        .await
    {
        Ok(reply) => assert_eq!(reply.len(), LIMIT / 2),
        other => panic!("a reply at the limit: {other:?}"),
    }
    nodes[1]
        .serve("half", "1", PluginKind::Processor, |_, _| async move {
            Ok(vec![0u8; LIMIT / 2 + 1])
        })
        .await
        .unwrap();
    wait_for("the new endpoint seen", 20 * SECOND, || {
        nodes[2].members().iter().any(|m| m.endpoints.len() == 3)
    })
    .await;
    match nodes[2].call(&target("half"), Vec::new(), 5 * SECOND).await {
        Err(Error::TooLarge { size, limit }) => {
            assert_eq!((size, limit), (LIMIT / 2 + 1, LIMIT / 2))
        }
        other => panic!("expected the caller's limit, got {other:?}"),
    }
}

/// A call a node makes to its own responder handler holds one of the
/// node's serving places until the host lets go of the responder, also
/// after the caller's wait ended: a host that never answers makes the node
/// refuse calls as overloaded instead of piling them up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_call_the_host_holds_keeps_its_place() {
    let nodes = host_cluster("lh", 2, |cfg| cfg.rpc.max_serving = 1).await;
    let host = &nodes[1];
    let held = serve_hold(host).await;
    let short = SECOND;
    let first = host.call(&target("hold"), b"x".to_vec(), short).await;
    assert!(matches!(first, Err(Error::Timeout { .. })), "{first:?}");
    wait_for("the host holds the call", 5 * SECOND, || {
        held.lock().unwrap().len() == 1
    })
    .await;
    let second = host.call(&target("hold"), b"x".to_vec(), short).await;
    // The host is this node: the message names it.
    let second = second.unwrap_err();
    assert_eq!(
        second,
        Error::Overloaded {
            by: tribe::Overload::Hosts(vec![host.name().to_string()])
        }
    );
    assert!(second.to_string().contains(host.name()), "{second}");
    assert_eq!(
        held.lock().unwrap().len(),
        1,
        "a second call reached the host"
    );
    held.lock().unwrap().clear();
    let third = host.call(&target("echo"), b"e".to_vec(), 5 * SECOND).await;
    assert_eq!(third.unwrap(), b"e");
}

/// Many calls a host declines stay within its serving places: the ones
/// over the bound are refused as overloaded until the declined ones' budget
/// runs out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declined_calls_stay_within_the_serving_places() {
    let nodes = host_cluster("dc", 2, |cfg| cfg.rpc.max_serving = 2).await;
    let (caller, host) = (&nodes[0], &nodes[1]);
    serve_declining(caller, host).await;
    let ignore = target("ignore");
    let results = futures_util::future::join_all(
        // Budgets long enough that all twenty arrive within the first two's.
        (0..20).map(|_| caller.call(&ignore, b"x".to_vec(), 5 * SECOND)),
    )
    .await;
    let timeouts = results
        .iter()
        .filter(|r| matches!(r, Err(Error::Timeout { .. })))
        .count();
    let overloaded = results
        .iter()
        .filter(|r| matches!(r, Err(Error::Overloaded { .. })))
        .count();
    assert_eq!((timeouts, overloaded), (2, 18), "{results:?}");
}

/// A call a node makes to its own handler ends when the node is aborted,
/// and its handler sees it abandoned (a graceful stop lets it be answered).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_call_ends_when_its_node_is_aborted() {
    let nodes = host_cluster("la", 2, |_| {}).await;
    let host = &nodes[1];
    let (held, waiting) = hold_a_local_call(host).await;
    host.abort().await;
    let ended = tokio::time::timeout(5 * SECOND, waiting)
        .await
        .expect("the call ends with its node")
        .unwrap();
    assert!(matches!(ended, Err(Error::ShuttingDown)), "{ended:?}");
    assert!(held.lock().unwrap()[0].is_abandoned());
}

/// A call's places come back before its answer is written: a caller that
/// makes one call at a time, each once it has the last one's answer,
/// never finds them taken, at `max_serving` 1, whether the answer comes
/// from a future handler or from a responder answered on another thread
/// (as a C, Go or Python host does), over a stream or to the node itself.
/// Before, they came back just after, and such a caller was refused as
/// overloaded for up to 3 calls in 4.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_call_at_a_time_is_never_refused_at_max_serving_one() {
    let nodes = host_cluster("sq", 2, |cfg| cfg.rpc.max_serving = 1).await;
    let host = &nodes[1];
    let (tx, rx) = std::sync::mpsc::channel::<(Vec<u8>, tribe::Responder)>();
    let answering = std::thread::spawn(move || {
        for (payload, responder) in rx {
            responder.reply(payload).unwrap();
        }
    });
    let tx = Mutex::new(tx);
    host.serve_responder(
        "answer",
        "1",
        PluginKind::Processor,
        move |_, payload, r| {
            let _ = tx.lock().unwrap().send((payload, r));
        },
    )
    .await
    .unwrap();
    wait_for("endpoints seen", 20 * SECOND, || {
        nodes[0].members().iter().any(|m| m.endpoints.len() == 3)
    })
    .await;
    for plugin in ["echo", "answer"] {
        for caller in [&nodes[0], host] {
            let mut refused = 0;
            for i in 0..300u32 {
                let payload = i.to_le_bytes().to_vec();
                match caller.call(&target(plugin), payload.clone(), SECOND).await {
                    Ok(reply) => assert_eq!(reply, payload),
                    Err(Error::Overloaded { .. }) => refused += 1,
                    Err(other) => panic!("{plugin}: {other:?}"),
                }
            }
            assert_eq!(refused, 0, "{plugin} from {}", caller.name());
        }
    }
    host.unserve("answer", "1").await.unwrap();
    for node in &nodes {
        node.shutdown().await.unwrap();
    }
    drop(nodes);
    answering.join().unwrap();
}
