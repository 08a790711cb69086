//! Remote plugin calls across real nodes on 127.0.0.1: routing, spreading,
//! failover when a host dies mid-stream, deadlines, overload, size limits,
//! failing and panicking handlers, encrypted calls.
mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use tribe::{CallTarget, Error, HandlerError, Keyring, Node, PluginKind, SecretKey};

const SECOND: Duration = Duration::from_secs(1);

/// Serves `echo` (processor) on `node`: replies `<node name>:<payload>`,
/// after `delay`.
async fn serve_echo(node: &Node, delay: Duration) {
    let name = node.name().to_string();
    node.serve("echo", "1", PluginKind::Processor, move |_info, payload| {
        let name = name.clone();
        async move {
            tokio::time::sleep(delay).await;
            let mut out = format!("{name}:").into_bytes();
            out.extend_from_slice(&payload);
            Ok(out)
        }
    })
    .await
    .unwrap();
}

/// A node on a runtime of its own, on a thread that stops running it at
/// [`Freezable::freeze`] (as a stopped process would) until
/// [`Freezable::thaw`], which aborts it.
struct Freezable {
    name: String,
    freeze: Option<tokio::sync::oneshot::Sender<()>>,
    thaw: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

/// Starts a node of `cfg` on its own thread and runs `setup` on it there.
async fn freezable<F, Fut>(cfg: tribe::Config, setup: F) -> Freezable
where
    F: FnOnce(Node) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let (freeze, frozen) = tokio::sync::oneshot::channel::<()>();
    let (named, name) = tokio::sync::oneshot::channel::<String>();
    let (thaw, thawed) = std::sync::mpsc::channel::<()>();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let node = Node::start(cfg).await.unwrap();
            setup(node.clone()).await;
            named.send(node.name().to_string()).unwrap();
            let _ = frozen.await;
            // Blocks the runtime's one thread: nothing of the node runs.
            let _ = thawed.recv_timeout(Duration::from_secs(60));
            node.abort().await;
        });
    });
    Freezable {
        name: name.await.unwrap(),
        freeze: Some(freeze),
        thaw,
        thread,
    }
}

impl Freezable {
    fn freeze(&mut self) {
        self.freeze.take().unwrap().send(()).unwrap();
    }

    async fn thaw(self) {
        self.thaw.send(()).unwrap();
        tokio::task::spawn_blocking(move || self.thread.join().unwrap())
            .await
            .unwrap();
    }
}

/// Waits until `caller` sees the one host of `svc` serving `endpoints` plugins.
async fn wait_served(caller: &Node, endpoints: usize) {
    wait_for("the host's endpoints seen", Duration::from_secs(20), || {
        caller
            .members()
            .iter()
            .any(|m| m.endpoints.len() == endpoints)
            && caller.tribe("svc").is_some_and(|t| t.members.len() == 1)
    })
    .await;
}

fn echo() -> CallTarget {
    CallTarget::new("svc", "echo", PluginKind::Processor)
}

fn host_of(reply: &[u8]) -> String {
    let text = String::from_utf8_lossy(reply);
    text.split(':').next().unwrap_or_default().to_string()
}

/// Five nodes; `svc` holds n1..n4 by hand; `hosts` serve echo.
async fn svc_cluster(prefix: &str, hosts: &[usize], delay: Duration) -> Vec<Node> {
    let nodes = start_cluster(prefix, 5, |_| {}).await;
    wait_converged_members(&nodes, 5).await;
    nodes[0].create_tribe("svc").await.unwrap();
    wait_same_digest(&nodes).await;
    for n in &nodes[1..] {
        nodes[0].join("svc", n.name()).await.unwrap();
    }
    for &h in hosts {
        serve_echo(&nodes[h], delay).await;
    }
    let want = hosts.len();
    wait_for("endpoints everywhere", Duration::from_secs(20), || {
        nodes.iter().all(|n| {
            n.members()
                .iter()
                .filter(|m| !m.endpoints.is_empty())
                .count()
                == want
                && n.tribe("svc").is_some_and(|t| t.members.len() == 4)
        })
    })
    .await;
    nodes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_reach_hosts_across_five_nodes_local_first() {
    let nodes = svc_cluster("c", &[1, 2, 3], Duration::ZERO).await;
    let mut hosts = BTreeMap::new();
    for i in 0..30 {
        let reply = nodes[0]
            .call(&echo(), format!("ping{i}").into_bytes(), 5 * SECOND)
            .await
            .unwrap();
        assert!(reply.ends_with(format!("ping{i}").as_bytes()));
        *hosts.entry(host_of(&reply)).or_insert(0) += 1;
    }
    assert!(hosts.len() >= 2, "calls spread over hosts: {hosts:?}");
    // A host that serves the plugin answers its own calls.
    for _ in 0..5 {
        let reply = nodes[2].call(&echo(), b"x".to_vec(), SECOND).await.unwrap();
        assert_eq!(host_of(&reply), nodes[2].name());
    }
    // A pinned version that nobody serves, and a tribe with no host.
    let mut v2 = echo();
    v2.version = Some("2".into());
    let err = nodes[0].call(&v2, vec![], SECOND).await.unwrap_err();
    assert!(matches!(err, Error::NoProvider { .. }), "{err}");
    // The message names what was asked for: members do serve the name.
    assert!(err.to_string().contains("version \"2\""), "{err}");
    nodes[0].create_tribe("empty").await.unwrap();
    let mut none = echo();
    none.tribe = "empty".into();
    assert!(matches!(
        nodes[0].call(&none, vec![], SECOND).await,
        Err(Error::NoProvider { .. })
    ));
    // Unserving withdraws the endpoint everywhere.
    for host in &nodes[1..=3] {
        host.unserve("echo", "1").await.unwrap();
    }
    wait_for("endpoints withdrawn", Duration::from_secs(20), || {
        nodes[0].members().iter().all(|m| m.endpoints.is_empty())
    })
    .await;
    assert!(matches!(
        nodes[0].call(&echo(), vec![], SECOND).await,
        Err(Error::NoProvider { .. })
    ));
    // A tribe no node knows (never created, or deleted under its callers).
    let mut gone = echo();
    gone.tribe = "gone".into();
    assert!(matches!(
        nodes[0].call(&gone, vec![], SECOND).await,
        Err(Error::UnknownTribe(_))
    ));
    let stats = nodes[0].rpc_stats();
    assert_eq!(stats.ok, 30);
    assert_eq!(stats.no_provider, 3);
    assert_eq!(stats.unknown_tribe, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_spread_to_the_least_loaded_hosts() {
    let nodes = svc_cluster("l", &[1, 2, 3], Duration::from_millis(300)).await;
    let caller = nodes[0].clone();
    let calls: Vec<_> = (0..30)
        .map(|i| {
            let caller = caller.clone();
            tokio::spawn(async move {
                caller
                    .call(&echo(), format!("{i}").into_bytes(), 10 * SECOND)
                    .await
            })
        })
        .collect();
    let mut hosts = BTreeMap::new();
    for c in calls {
        let reply = c.await.unwrap().unwrap();
        *hosts.entry(host_of(&reply)).or_insert(0usize) += 1;
    }
    assert_eq!(hosts.len(), 3, "{hosts:?}");
    for (host, n) in &hosts {
        assert!(
            *n >= 6,
            "{host} got only {n} of 30 concurrent calls: {hosts:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_killed_mid_stream_fails_over_and_no_call_is_lost() {
    let nodes = svc_cluster("f", &[1, 2], Duration::from_millis(20)).await;
    let caller = nodes[0].clone();
    let made = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let caller = caller.clone();
            let made = made.clone();
            tokio::spawn(async move {
                let mut outcomes = Vec::new();
                for _ in 0..40 {
                    made.fetch_add(1, Ordering::Relaxed);
                    outcomes.push(caller.call(&echo(), b"work".to_vec(), 3 * SECOND).await);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                outcomes
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(400)).await;
    nodes[1].abort().await;
    let mut replies = 0;
    let mut errors = BTreeMap::new();
    let mut after_kill_hosts = BTreeMap::new();
    for w in workers {
        for (i, outcome) in w.await.unwrap().into_iter().enumerate() {
            match outcome {
                Ok(reply) => {
                    replies += 1;
                    if i > 30 {
                        *after_kill_hosts.entry(host_of(&reply)).or_insert(0) += 1;
                    }
                }
                Err(e) => *errors.entry(e.code()).or_insert(0) += 1,
            }
        }
    }
    let made = made.load(Ordering::Relaxed);
    let failed: usize = errors.values().sum();
    eprintln!(
        "calls {made}: {replies} replies, errors {errors:?}, failovers {}",
        caller.rpc_stats().failovers
    );
    assert_eq!(replies + failed, made, "every call ended: {errors:?}");
    assert_eq!(made, 320);
    for code in errors.keys() {
        assert!(
            ["disconnected", "timeout"].contains(code),
            "only calls caught in flight may fail: {errors:?}"
        );
    }
    assert!(
        failed <= 16,
        "at most the calls in flight at the kill failed: {errors:?}"
    );
    assert_eq!(
        after_kill_hosts.keys().collect::<Vec<_>>(),
        vec![nodes[2].name()],
        "late calls went to the surviving host"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlines_overload_size_limits_and_failing_handlers() {
    let nodes = start_cluster("d", 2, |cfg| {
        cfg.rpc.max_serving = 2;
        cfg.rpc.max_payload = 64 * 1024;
    })
    .await;
    wait_converged_members(&nodes, 2).await;
    let (caller, host) = (&nodes[0], &nodes[1]);
    host.create_tribe("svc").await.unwrap();
    host.join("svc", host.name()).await.unwrap();
    host.serve("slow", "1", PluginKind::Processor, |info, _| async move {
        tokio::time::sleep(Duration::from_millis(600).min(info.budget * 4)).await;
        Ok(b"late".to_vec())
    })
    .await
    .unwrap();
    host.serve("fail", "1", PluginKind::Publisher, |_, _| async move {
        Err(HandlerError::new("disk_full", "no space left"))
    })
    .await
    .unwrap();
    host.serve(
        "boom",
        "1",
        PluginKind::Publisher,
        |_, payload| async move {
            if payload.is_empty() {
                panic!("handler bug");
            }
            Ok(payload)
        },
    )
    .await
    .unwrap();
    wait_served(caller, 3).await;
    let slow = CallTarget::new("svc", "slow", PluginKind::Processor);

    // Deadline: cut at 200 ms; the late reply is dropped and the stream lives on.
    let began = std::time::Instant::now();
    assert!(matches!(
        caller.call(&slow, vec![], Duration::from_millis(200)).await,
        Err(Error::Timeout { .. })
    ));
    assert!(began.elapsed() < 5 * SECOND, "{:?}", began.elapsed());

    // Overload: the host runs 2 handlers at once; the rest are refused.
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let caller = caller.clone();
            let slow = slow.clone();
            tokio::spawn(async move { caller.call(&slow, vec![], 5 * SECOND).await })
        })
        .collect();
    let mut ok = 0;
    let mut overloaded = 0;
    for c in calls {
        match c.await.unwrap() {
            Ok(r) => {
                assert_eq!(r, b"late");
                ok += 1
            }
            Err(Error::Overloaded { .. }) => overloaded += 1,
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert_eq!(ok + overloaded, 8);
    assert!(
        ok >= 1 && overloaded >= 1,
        "ok {ok}, overloaded {overloaded}"
    );

    // Size: over the caller's limit, refused before sending.
    assert!(matches!(
        caller.call(&slow, vec![0; 64 * 1024 + 1], SECOND).await,
        Err(Error::TooLarge { .. })
    ));

    // A handler error and a handler panic reach the caller as Remote errors.
    let fail = CallTarget::new("svc", "fail", PluginKind::Publisher);
    match caller.call(&fail, b"m".to_vec(), SECOND).await {
        Err(Error::Remote { code, message }) => {
            assert_eq!(
                (code.as_str(), message.as_str()),
                ("disk_full", "no space left")
            )
        }
        other => panic!("{other:?}"),
    }
    let boom = CallTarget::new("svc", "boom", PluginKind::Publisher);
    match caller.call(&boom, vec![], SECOND).await {
        Err(Error::Remote { code, .. }) => assert_eq!(code, "panic"),
        other => panic!("{other:?}"),
    }
    // The host survived its handler's panic and still serves.
    assert_eq!(
        caller.call(&boom, b"ok".to_vec(), SECOND).await.unwrap(),
        b"ok"
    );
    assert_eq!(host.rpc_stats().panics, 1);
    let stats = caller.rpc_stats();
    assert!(stats.timeout >= 1 && stats.overloaded >= 1 && stats.too_large == 1);
    assert_eq!(stats.remote_error, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_are_sealed_in_an_encrypted_tribe() {
    let key = SecretKey::generate();
    let nodes = start_cluster("e", 3, |cfg| cfg.keyring = Some(Keyring::new(key.clone()))).await;
    wait_converged_members(&nodes, 3).await;
    nodes[0].create_tribe("svc").await.unwrap();
    wait_same_digest(&nodes).await;
    nodes[0].join("svc", nodes[2].name()).await.unwrap();
    serve_echo(&nodes[2], Duration::ZERO).await;
    // Caller and host both see the host in svc (a host serves only calls
    // through tribes it knows it is in).
    wait_for(
        "endpoint and membership seen",
        Duration::from_secs(20),
        || {
            nodes[0].members().iter().any(|m| !m.endpoints.is_empty())
                && [&nodes[0], &nodes[2]]
                    .iter()
                    .all(|n| n.tribe("svc").is_some_and(|t| t.members.len() == 1))
        },
    )
    .await;
    let big = vec![7u8; 64 * 1024];
    let reply = nodes[0]
        .call(&echo(), big.clone(), 5 * SECOND)
        .await
        .unwrap();
    assert_eq!(&reply[reply.len() - big.len()..], &big[..]);
    assert_eq!(host_of(&reply), nodes[2].name());
    assert_eq!(nodes[2].counters().plaintext_streams_refused, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_serves_only_calls_through_tribes_it_is_in() {
    use tribe::rpc::client::Answer;
    use tribe::rpc::proto::{Refusal, RpcMsg};
    let nodes = svc_cluster("m", &[1], Duration::ZERO).await;
    nodes[0].create_tribe("other").await.unwrap();
    wait_same_digest(&nodes).await;
    // A peer that names a tribe the host is not in is refused, not served.
    let rpc = nodes[0].rpc();
    let security = tribe::stream::Security::plaintext("");
    let deadline = tokio::time::Instant::now() + SECOND;
    for (tribe, refused) in [("other", true), ("svc", false)] {
        let answer = rpc
            .pool
            .request(nodes[1].addr(), &security, deadline, false, |id| {
                RpcMsg::Call {
                    id,
                    caller: "n0".into(),
                    tribe: tribe.into(),
                    plugin: "echo".into(),
                    version: "1".into(),
                    kind: PluginKind::Processor,
                    budget_ms: 1000,
                    payload: b"x".to_vec(),
                }
            })
            .await
            .unwrap_or_else(|_| panic!("sent"))
            .expect("answered in time");
        match (refused, answer) {
            (true, Answer::Refused(Refusal::NoSuchPlugin)) => {}
            (false, Answer::Reply(Ok(_))) => {}
            (_, other) => panic!("{tribe}: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_in_flight_are_bounded_per_node_and_per_stream() {
    for (per_node, per_stream) in [(2, 64), (64, 2)] {
        let prefix = format!("b{per_node}");
        let nodes = start_cluster(&prefix, 2, |cfg| {
            cfg.rpc.max_inflight = per_node;
            cfg.rpc.max_inflight_per_conn = per_stream;
        })
        .await;
        wait_converged_members(&nodes, 2).await;
        let (caller, host) = (&nodes[0], &nodes[1]);
        host.create_tribe("svc").await.unwrap();
        host.join("svc", host.name()).await.unwrap();
        // Long enough that the eight calls overlap on a loaded machine.
        serve_echo(host, 2 * SECOND).await;
        wait_for("endpoint seen", Duration::from_secs(20), || {
            caller.members().iter().any(|m| !m.endpoints.is_empty())
                && caller.tribe("svc").is_some_and(|t| t.members.len() == 1)
        })
        .await;
        let calls: Vec<_> = (0..8)
            .map(|_| {
                let caller = caller.clone();
                tokio::spawn(async move { caller.call(&echo(), b"x".to_vec(), 5 * SECOND).await })
            })
            .collect();
        let (mut ok, mut overloaded) = (0, 0);
        for c in calls {
            match c.await.unwrap() {
                Ok(_) => ok += 1,
                // Each bound is named: this node's own, or the host's.
                Err(Error::Overloaded { by }) => {
                    // The caller's own bound on its stream stops it before
                    // the host's (the same) would.
                    let expected = if per_node == 2 {
                        tribe::Overload::Calls { limit: 2 }
                    } else {
                        tribe::Overload::Stream {
                            host: host.name().to_string(),
                            limit: 2,
                        }
                    };
                    assert_eq!(by, expected);
                    overloaded += 1;
                }
                Err(e) => panic!("unexpected {e:?}"),
            }
        }
        assert_eq!(ok + overloaded, 8);
        assert!(
            (1..=2).contains(&ok) && overloaded >= 6,
            "bound ({per_node}, {per_stream}): ok {ok}, overloaded {overloaded}"
        );
    }
}

/// A host answering from threads of its own through `serve_responder`:
/// replies, failures, declines, dropped responders, oversized replies and
/// panics, over the call stream and for the host's own calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responders_answer_from_threads_of_the_host() {
    let nodes = start_cluster("r", 2, |cfg| cfg.rpc.max_payload = 1024).await;
    wait_converged_members(&nodes, 2).await;
    let (caller, host) = (&nodes[0], &nodes[1]);
    host.create_tribe("svc").await.unwrap();
    host.join("svc", host.name()).await.unwrap();
    // The host's "pool": one thread taking calls from a channel.
    let (jobs, queue) = std::sync::mpsc::channel::<(Vec<u8>, tribe::Responder)>();
    // What `reply` told the pool about the reply over the limit.
    let (told, big_outcome) = std::sync::mpsc::channel();
    let pool = std::thread::spawn(move || {
        for (payload, responder) in queue {
            match payload.as_slice() {
                b"fail" => responder.fail(HandlerError::new("nope", "refused")),
                b"decline" => responder.decline(),
                b"drop" => drop(responder),
                b"big" => {
                    let _ = told.send(responder.reply(vec![0; 4096]));
                }
                _ => {
                    let mut out = b"pool:".to_vec();
                    out.extend_from_slice(&payload);
                    responder.reply(out).unwrap();
                }
            }
        }
    });
    let jobs = std::sync::Mutex::new(jobs);
    host.serve_responder(
        "mirror",
        "1",
        PluginKind::Processor,
        move |_info, payload, r| {
            if payload == b"panic" {
                panic!("handler bug");
            }
            let _ = jobs.lock().unwrap().send((payload, r));
        },
    )
    .await
    .unwrap();
    wait_served(caller, 1).await;
    let mirror = CallTarget::new("svc", "mirror", PluginKind::Processor);
    for node in [caller, host] {
        let call = |p: &'static [u8], t: Duration| node.call(&mirror, p.to_vec(), t);
        assert_eq!(call(b"hi", SECOND).await.unwrap(), b"pool:hi");
        let remote_code = |r: tribe::Result<Vec<u8>>| match r {
            Err(Error::Remote { code, .. }) => code,
            other => panic!("expected a remote error, got {other:?}"),
        };
        assert_eq!(remote_code(call(b"fail", SECOND).await), "nope");
        assert_eq!(remote_code(call(b"drop", SECOND).await), "unanswered");
        let big = call(b"big", SECOND).await;
        assert!(big.as_ref().is_err_and(Error::is_too_large), "{big:?}");
        assert_eq!(remote_code(big), "too_large");
        let outcome = big_outcome.recv_timeout(Duration::from_secs(5)).unwrap();
        assert!(
            matches!(
                outcome,
                Err(Error::TooLarge {
                    size: 4096,
                    limit: 1024
                })
            ),
            "the handler is told: {outcome:?}"
        );
        assert_eq!(remote_code(call(b"panic", SECOND).await), "panic");
        let began = std::time::Instant::now();
        let declined = call(b"decline", Duration::from_millis(200)).await;
        assert!(
            matches!(declined, Err(Error::Timeout { .. })),
            "{declined:?}"
        );
        assert!(began.elapsed() < 5 * SECOND, "{:?}", began.elapsed());
        // Many at once, all answered by the one pool thread.
        let many: Vec<_> = (0..64)
            .map(|i| node.call(&mirror, format!("{i}").into_bytes(), 10 * SECOND))
            .collect();
        for (i, r) in futures_util::future::join_all(many)
            .await
            .into_iter()
            .enumerate()
        {
            assert_eq!(r.unwrap(), format!("pool:{i}").into_bytes());
        }
    }
    let stats = host.rpc_stats();
    assert!(stats.panics >= 2, "each panic is counted: {stats:?}");
    assert!(stats.replies_too_large >= 2, "{stats:?}");
    host.unserve("mirror", "1").await.unwrap();
    for n in &nodes {
        n.shutdown().await.unwrap();
    }
    // The pool thread ends once the node drops the handler holding `jobs`.
    drop((nodes, pool));
}

/// A caller and a host in tribe "svc" whose `plugin` keeps the responder
/// of every call it gets, unanswered, in the list returned.
async fn host_keeping_calls(
    prefix: &str,
    plugin: &str,
) -> (Node, Node, Arc<std::sync::Mutex<Vec<tribe::Responder>>>) {
    let nodes = start_cluster(prefix, 2, |_| {}).await;
    wait_converged_members(&nodes, 2).await;
    let (caller, host) = (nodes[0].clone(), nodes[1].clone());
    host.create_tribe("svc").await.unwrap();
    host.join("svc", host.name()).await.unwrap();
    let held = Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = held.clone();
    host.serve_responder(plugin, "1", PluginKind::Processor, move |_i, _p, r| {
        keep.lock().unwrap().push(r)
    })
    .await
    .unwrap();
    wait_served(&caller, 1).await;
    (caller, host, held)
}

/// A host that freezes (no answer, no reset: a hung process, a lost
/// network) is declared failed by the membership; the calls waiting on it
/// end then as `Disconnected`, not at their deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_to_a_host_declared_failed_end_then() {
    // The handler keeps every call unanswered, as a frozen host would.
    let (caller, host, held) = host_keeping_calls("frz", "stuck").await;
    let target = CallTarget::new("svc", "stuck", PluginKind::Processor);
    let waiting = {
        let caller = caller.clone();
        tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            let result = caller.call(&target, b"x".to_vec(), 120 * SECOND).await;
            (result, started.elapsed())
        })
    };
    wait_for("the call reached the host", Duration::from_secs(10), || {
        held.lock().unwrap().len() == 1
    })
    .await;
    // Gossip is cut both ways (the call stream stays open): the caller
    // declares the host failed (and the host the caller: whichever does
    // first ends the stream).
    caller.faults().block(host.addr());
    host.faults().block(caller.addr());
    let (result, took) = waiting.await.unwrap();
    assert!(
        matches!(result, Err(Error::Disconnected { .. })),
        "{result:?}"
    );
    assert!(took < 60 * SECOND, "the call ended after {took:?}");
    wait_for("the host declared failed", Duration::from_secs(30), || {
        caller
            .members()
            .iter()
            .any(|m| m.name == host.name() && m.state == tribe::MemberState::Failed)
    })
    .await;
}

/// A caller that freezes with a call in flight (its process stopped: no
/// cancel, no reset, its stream open) is declared failed by the host's
/// membership: the host's handler sees the call abandoned then, and its
/// place comes back, rather than at the end of the call's budget (up to 5
/// minutes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_whose_caller_is_declared_failed_is_abandoned_then() {
    let host = start_cluster("cfz", 1, |_| {}).await.remove(0);
    host.create_tribe("svc").await.unwrap();
    host.join("svc", host.name()).await.unwrap();
    let held = Arc::new(std::sync::Mutex::new(Vec::<tribe::Responder>::new()));
    let keep = held.clone();
    host.serve_responder("stuck", "1", PluginKind::Processor, move |_i, _p, r| {
        keep.lock().unwrap().push(r)
    })
    .await
    .unwrap();
    // The caller runs on a runtime of its own, on a thread that then
    // stops running it, as a stopped process would.
    let mut cfg = test_config("cfz-caller");
    cfg.seeds = vec![host.addr()];
    let mut frozen_caller = freezable(cfg, |caller| async move {
        wait_served(&caller, 1).await;
        let target = CallTarget::new("svc", "stuck", PluginKind::Processor);
        tokio::spawn(async move { caller.call(&target, b"x".to_vec(), 120 * SECOND).await });
    })
    .await;
    let caller = frozen_caller.name.clone();
    wait_for("the call reached the host", Duration::from_secs(10), || {
        held.lock().unwrap().len() == 1
    })
    .await;
    let cancelled = host.rpc_stats().cancelled;
    frozen_caller.freeze();
    wait_for(
        "the host's handler sees the call abandoned",
        Duration::from_secs(30),
        || held.lock().unwrap()[0].is_abandoned(),
    )
    .await;
    assert!(host
        .members()
        .iter()
        .any(|m| m.name == caller && m.state == tribe::MemberState::Failed));
    assert_eq!(host.rpc_stats().cancelled, cancelled + 1);
    host.shutdown().await.unwrap();
    frozen_caller.thaw().await;
}

/// A host that stops answering probes (a stopped process) is suspected
/// before it is declared failed: while it is, calls go to the other hosts,
/// not to one that would hold them to their deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_pass_over_a_suspected_host() {
    // A long suspicion: the calls below run while it lasts.
    let slow_verdict = |cfg: &mut tribe::Config| {
        if let Some(t) = cfg.timings.as_mut() {
            t.suspicion_mult = 30;
        }
    };
    let nodes = start_cluster("sph", 2, slow_verdict).await;
    let (caller, host) = (&nodes[0], &nodes[1]);
    caller.create_tribe("svc").await.unwrap();
    serve_echo(host, Duration::ZERO).await;
    // The other host runs on a runtime of its own, on a thread that then
    // stops running it.
    let mut cfg = test_config("sph-stopped");
    slow_verdict(&mut cfg);
    cfg.seeds = vec![caller.addr()];
    let mut frozen_host = freezable(cfg, |stopped| async move {
        serve_echo(&stopped, Duration::ZERO).await;
    })
    .await;
    let stopped = frozen_host.name.clone();
    wait_for("the third node seen", 20 * SECOND, || {
        caller.members().len() == 3
    })
    .await;
    for n in [host.name(), stopped.as_str()] {
        caller.join("svc", n).await.unwrap();
    }
    wait_for("both hosts seen serving", 20 * SECOND, || {
        caller.tribe("svc").is_some_and(|t| t.members.len() == 2)
            && caller
                .members()
                .iter()
                .filter(|m| !m.endpoints.is_empty())
                .count()
                == 2
    })
    .await;
    // Both take calls while both answer.
    let mut hosts = BTreeMap::new();
    for _ in 0..40 {
        let reply = caller
            .call(&echo(), b"x".to_vec(), 5 * SECOND)
            .await
            .unwrap();
        *hosts.entry(host_of(&reply)).or_insert(0) += 1;
    }
    assert_eq!(hosts.len(), 2, "{hosts:?}");
    frozen_host.freeze();
    wait_for("the stopped host suspected", 20 * SECOND, || {
        caller
            .members()
            .iter()
            .any(|m| m.name == stopped && m.state == tribe::MemberState::Suspect)
    })
    .await;
    // Housekeeping marks suspects twice a second.
    tokio::time::sleep(SECOND).await;
    for i in 0..20 {
        let reply = caller.call(&echo(), b"x".to_vec(), 2 * SECOND).await;
        let still = caller
            .members()
            .iter()
            .any(|m| m.name == stopped && m.state == tribe::MemberState::Suspect);
        assert!(
            matches!(&reply, Ok(r) if host_of(r) == host.name()) || !still,
            "call {i}: {reply:?}"
        );
    }
    for n in &nodes {
        n.shutdown().await.unwrap();
    }
    frozen_host.thaw().await;
}

/// A stop waits for the replies of calls still being answered, not for a
/// handler that holds a call its caller gave up on: that call is over, and
/// nothing is left to send. A call still waited for keeps it waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_does_not_wait_for_calls_their_callers_gave_up_on() {
    // The handler keeps every call's responder, as a host thread still at
    // work would.
    let (caller, host, held) = host_keeping_calls("gvu", "slow").await;
    let target = CallTarget::new("svc", "slow", PluginKind::Processor);
    // Long enough for the first stream's setup on a loaded machine.
    let result = caller.call(&target, b"x".to_vec(), SECOND).await;
    // It says which member it waited on.
    assert!(
        matches!(&result, Err(e @ Error::Timeout { host: Some(h) })
            if *h == host.name() && e.to_string().contains(host.name())),
        "{result:?}"
    );
    wait_for("the host holds the call", 5 * SECOND, || {
        held.lock().unwrap().len() == 1
    })
    .await;
    // (The host's clock of the call's budget started when it read it.)
    let drained = tokio::time::timeout(5 * SECOND, host.calls_drained()).await;
    assert!(drained.is_ok(), "waited for a call its caller gave up on");
    // So is a call of the host to itself whose caller stops waiting (a
    // cancelled task, a timeout around the call).
    let gave_up =
        tokio::time::timeout(SECOND, host.call(&target, b"self".to_vec(), 30 * SECOND)).await;
    assert!(gave_up.is_err(), "{gave_up:?}");
    wait_for("the host holds its own call", 5 * SECOND, || {
        held.lock().unwrap().len() == 2
    })
    .await;
    let drained = tokio::time::timeout(5 * SECOND, host.calls_drained()).await;
    assert!(drained.is_ok(), "waited for a self-call given up");
    held.lock().unwrap().clear();
    // A call still waited for is waited for.
    let waiting = {
        let caller = caller.clone();
        let target = target.clone();
        tokio::spawn(async move { caller.call(&target, b"y".to_vec(), 30 * SECOND).await })
    };
    wait_for(
        "the next call reached the host",
        Duration::from_secs(10),
        || held.lock().unwrap().len() == 1,
    )
    .await;
    let drained = tokio::time::timeout(SECOND / 2, host.calls_drained()).await;
    assert!(drained.is_err(), "did not wait for a call still waited for");
    let second = held.lock().unwrap().pop().unwrap();
    second.reply(b"late".to_vec()).unwrap();
    assert_eq!(waiting.await.unwrap().unwrap(), b"late");
    tokio::time::timeout(5 * SECOND, host.calls_drained())
        .await
        .expect("drained once answered")
        .expect("inside tokio");
}

/// A host that leaves gracefully tells its callers to retire their streams
/// to it: a node started again on the same address is reached through a
/// new stream at once, not refused on the old one as "shutting down".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_restarted_on_its_address_is_called_through_a_new_stream() {
    let nodes = start_cluster("rst", 2, |_| {}).await;
    wait_converged_members(&nodes, 2).await;
    let (caller, host) = (nodes[0].clone(), nodes[1].clone());
    host.create_tribe("svc").await.unwrap();
    host.join("svc", host.name()).await.unwrap();
    serve_echo(&host, Duration::ZERO).await;
    wait_served(&caller, 1).await;
    // The call stream to the host is open.
    caller
        .call(&echo(), b"a".to_vec(), 5 * SECOND)
        .await
        .unwrap();
    let name = host.name().to_string();
    let again = restart_in_place(&caller, host, "svc").await;
    serve_echo(&again, Duration::ZERO).await;
    wait_for("the host is back", Duration::from_secs(20), || {
        caller.members().iter().any(|m| {
            m.name == name && m.state == tribe::MemberState::Alive && !m.endpoints.is_empty()
        }) && caller.tribe("svc").is_some_and(|t| t.members.len() == 1)
    })
    .await;
    let reply = caller.call(&echo(), b"b".to_vec(), 5 * SECOND).await;
    assert_eq!(reply.unwrap(), format!("{name}:b").into_bytes());
    again.shutdown().await.unwrap();
}

/// Calls flowing while one of two hosts leaves gracefully all succeed: the
/// leaving host refuses new calls (they move to the other host), answers
/// the ones it runs, and says goodbye only once it accepts no stream, so
/// no call is lost on a stream it would never read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_flowing_while_a_host_leaves_all_succeed() {
    let nodes = svc_cluster("lv", &[1, 2], Duration::from_millis(400)).await;
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut callers = Vec::new();
    for c in 0..8u8 {
        let (node, done) = (nodes[if c % 2 == 0 { 0 } else { 3 }].clone(), done.clone());
        callers.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0, Vec::new());
            while !done.load(Ordering::Relaxed) {
                match node.call(&echo(), vec![c; 10], 5 * SECOND).await {
                    Ok(r) if r.ends_with(&[c; 10]) => ok += 1,
                    other => failed.push(format!("{other:?}")),
                }
            }
            (ok, failed)
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    nodes[1].shutdown().await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    done.store(true, Ordering::Relaxed);
    let (mut ok, mut failed) = (0, Vec::new());
    for c in callers {
        let (o, f) = c.await.unwrap();
        ok += o;
        failed.extend(f);
    }
    assert!(ok >= 20, "only {ok} calls went through");
    assert!(
        failed.is_empty(),
        "{} calls failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
}

/// A host that leaves while its callers are still opening their first
/// streams to it loses none of their calls: the connections it has not
/// accepted yet, or not set up, are taken and told to move on before it
/// cuts its streams, so every call ends at the other host (a plaintext
/// caller sends its requests without waiting for the host: a reset
/// connection made them "may or may not have run").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_to_a_host_that_leaves_as_their_streams_open_all_succeed() {
    let nodes = svc_cluster("lo", &[1, 2], Duration::ZERO).await;
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut callers = Vec::new();
    for c in 0..16u8 {
        let (node, done) = (nodes[if c % 2 == 0 { 0 } else { 3 }].clone(), done.clone());
        callers.push(tokio::spawn(async move {
            let mut failed = Vec::new();
            while !done.load(Ordering::Relaxed) {
                match node.call(&echo(), vec![c; 10], 5 * SECOND).await {
                    Ok(r) if r.ends_with(&[c; 10]) => {}
                    other => failed.push(format!("{other:?}")),
                }
            }
            failed
        }));
    }
    nodes[1].shutdown().await.unwrap();
    tokio::time::timeout(5 * SECOND, nodes[1].calls_drained())
        .await
        .expect("drained")
        .expect("inside tokio");
    nodes[1].abort().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    done.store(true, Ordering::Relaxed);
    let mut failed = Vec::new();
    for c in callers {
        failed.extend(c.await.unwrap());
    }
    assert!(
        failed.is_empty(),
        "{} calls failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
}

/// A host leaving gracefully answers the call it runs, and a call made
/// right after that learns the host is gone (`NoProvider`): it is never
/// sent on a new stream the leaving host would not accept, and lost there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_right_after_a_host_leaves_is_refused_not_lost() {
    let nodes = start_cluster("lq", 2, |_| {}).await;
    wait_converged_members(&nodes, 2).await;
    let (caller, host) = (nodes[0].clone(), nodes[1].clone());
    host.create_tribe("svc").await.unwrap();
    host.join("svc", host.name()).await.unwrap();
    serve_echo(&host, SECOND).await;
    wait_served(&caller, 1).await;
    let calls = {
        let caller = caller.clone();
        tokio::spawn(async move {
            let first = caller.call(&echo(), b"a".to_vec(), 5 * SECOND).await;
            let second = caller.call(&echo(), b"b".to_vec(), 5 * SECOND).await;
            (first, second)
        })
    };
    wait_for("the first call in the handler", 5 * SECOND, || {
        host.rpc_stats().serving == 1
    })
    .await;
    host.shutdown().await.unwrap();
    let (first, second) = calls.await.unwrap();
    assert_eq!(first.unwrap(), format!("{}:a", host.name()).into_bytes());
    assert!(
        matches!(second, Err(Error::NoProvider { .. })),
        "{second:?}"
    );
}

/// A call whose one known host refuses it as stopping goes to a host that
/// began serving the plugin while it ran, not to `NoProvider`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_call_moves_to_a_host_that_appeared_meanwhile() {
    // Small and large payloads alike (a large one is not copied for it).
    moved_call("mv", 1).await;
    moved_call("mvl", 200 * 1024).await;
}

async fn moved_call(prefix: &str, size: usize) {
    let nodes = start_cluster(prefix, 3, |_| {}).await;
    wait_converged_members(&nodes, 3).await;
    let (caller, old, new) = (nodes[0].clone(), &nodes[1], &nodes[2]);
    old.create_tribe("svc").await.unwrap();
    old.join("svc", old.name()).await.unwrap();
    old.join("svc", new.name()).await.unwrap();
    let held = Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = held.clone();
    old.serve_responder("moved", "1", PluginKind::Processor, move |_i, _p, r| {
        keep.lock().unwrap().push(r)
    })
    .await
    .unwrap();
    wait_for("the first host's endpoint seen", 20 * SECOND, || {
        caller.members().iter().any(|m| !m.endpoints.is_empty())
            && caller.tribe("svc").is_some_and(|t| t.members.len() == 2)
    })
    .await;
    let target = CallTarget::new("svc", "moved", PluginKind::Processor);
    let waiting = {
        let (caller, target) = (caller.clone(), target.clone());
        tokio::spawn(async move { caller.call(&target, vec![b'x'; size], 30 * SECOND).await })
    };
    wait_for("the call reached the first host", 10 * SECOND, || {
        held.lock().unwrap().len() == 1
    })
    .await;
    new.serve("moved", "1", PluginKind::Processor, |_i, p| async move {
        Ok(format!("new:{}", p.len()).into_bytes())
    })
    .await
    .unwrap();
    // The second host serves the tribe's calls once it knows itself a member.
    wait_for("the caller sees the second host", 20 * SECOND, || {
        caller
            .members()
            .iter()
            .filter(|m| !m.endpoints.is_empty())
            .count()
            == 2
            && new.tribe("svc").is_some_and(|t| t.members.len() == 2)
    })
    .await;
    let responder = held.lock().unwrap().pop().unwrap();
    responder.refuse_stopping();
    assert_eq!(
        waiting.await.unwrap().unwrap(),
        format!("new:{size}").into_bytes()
    );
    for n in &nodes {
        n.shutdown().await.unwrap();
    }
}

/// A call that every host serving the plugin refuses as it stops is
/// `NoProvider` naming those hosts: not a bare "no live member serves it"
/// while the caller can see a member that does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_refused_by_every_stopping_host_names_them() {
    let nodes = start_cluster("stp", 2, |_| {}).await;
    wait_converged_members(&nodes, 2).await;
    let (caller, host) = (nodes[0].clone(), nodes[1].clone());
    host.create_tribe("svc").await.unwrap();
    host.join("svc", host.name()).await.unwrap();
    host.serve_responder("gives-up", "1", PluginKind::Processor, |_i, _p, r| {
        r.refuse_stopping()
    })
    .await
    .unwrap();
    wait_served(&caller, 1).await;
    let target = CallTarget::new("svc", "gives-up", PluginKind::Processor);
    let err = caller
        .call(&target, b"x".to_vec(), 10 * SECOND)
        .await
        .unwrap_err();
    match &err {
        Error::NoProvider { stopping, .. } => assert_eq!(stopping, &[host.name().to_string()]),
        other => panic!("{other:?}"),
    }
    let note = format!("; {} refused it as it stopped serving it", host.name());
    assert!(err.to_string().ends_with(&note), "{err}");
    for n in &nodes {
        n.shutdown().await.unwrap();
    }
}

/// A call whose only host cannot be reached (gone without a word, still
/// listed as alive) is `NoProvider` naming it as unreachable: not a bare
/// "no live member serves it" while the caller lists one that does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_whose_hosts_cannot_be_reached_names_them() {
    let nodes = start_cluster("unr", 2, |_| {}).await;
    wait_converged_members(&nodes, 2).await;
    let (caller, host) = (nodes[0].clone(), nodes[1].clone());
    host.create_tribe("svc").await.unwrap();
    host.join("svc", host.name()).await.unwrap();
    serve_echo(&host, Duration::ZERO).await;
    wait_served(&caller, 1).await;
    wait_for("the tribe seen", 20 * SECOND, || {
        caller.tribe("svc").is_some_and(|t| t.members.len() == 1)
    })
    .await;
    host.abort().await;
    let err = caller
        .call(&echo(), b"x".to_vec(), 10 * SECOND)
        .await
        .unwrap_err();
    // Unless the caller already found the host down (then nobody serves it).
    let still_listed = caller
        .members()
        .iter()
        .any(|m| m.name == host.name() && !m.endpoints.is_empty());
    match &err {
        Error::NoProvider { unreachable, .. } if !unreachable.is_empty() => {
            assert_eq!(unreachable, &[host.name().to_string()]);
            let note = format!(
                "; {}, listed as serving it, could not be reached",
                host.name()
            );
            assert!(err.to_string().ends_with(&note), "{err}");
        }
        Error::NoProvider { .. } => assert!(!still_listed, "{err}"),
        other => panic!("{other:?}"),
    }
    caller.shutdown().await.unwrap();
}

/// A call made as soon as the caller's own view puts a host in the tribe
/// reaches it, though the host has not heard of it yet (it refuses as not
/// serving the tribe until it has): the caller tries it again, shortly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_right_after_a_host_was_put_in_the_tribe_waits_for_the_host_to_hear_of_it() {
    let nodes = start_cluster("fresh", 2, |_| {}).await;
    wait_converged_members(&nodes, 2).await;
    let (caller, host) = (&nodes[0], &nodes[1]);
    serve_echo(host, Duration::ZERO).await;
    wait_for("the endpoint seen", 20 * SECOND, || {
        caller.members().iter().any(|m| !m.endpoints.is_empty())
    })
    .await;
    let target = echo();
    for round in 0..5 {
        let tribe = format!("t{round}");
        caller.create_tribe(&tribe).await.unwrap();
        caller.join(&tribe, host.name()).await.unwrap();
        assert!(caller
            .tribe(&tribe)
            .is_some_and(|t| t.members == [host.name().to_string()]));
        let target = CallTarget {
            tribe: tribe.clone(),
            ..target.clone()
        };
        let reply = caller.call(&target, b"hi".to_vec(), 5 * SECOND).await;
        assert_eq!(host_of(&reply.unwrap()), host.name(), "round {round}");
    }
    // A host that does not serve the tribe at all is still no provider,
    // after the short retries.
    caller.create_tribe("never").await.unwrap();
    let target = CallTarget {
        tribe: "never".into(),
        ..target
    };
    assert!(matches!(
        caller.call(&target, b"hi".to_vec(), 5 * SECOND).await,
        Err(Error::NoProvider { .. })
    ));
    for n in &nodes {
        n.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_its_caller_gives_up_on_is_counted_as_abandoned() {
    let nodes = svc_cluster("abandon", &[1], 5 * SECOND).await;
    let caller = &nodes[0];
    let before = caller.rpc_stats();
    // The caller stops waiting long before the call's own deadline.
    let gave_up = tokio::time::timeout(
        Duration::from_millis(200),
        caller.call(&echo(), b"x".to_vec(), 10 * SECOND),
    )
    .await;
    assert!(gave_up.is_err());
    let after = caller.rpc_stats();
    assert_eq!(after.abandoned, before.abandoned + 1);
    assert_eq!(after.timeout, before.timeout, "not a timeout of its own");
    for n in &nodes {
        n.shutdown().await.unwrap();
    }
}

/// The gauges of what is open now follow the calls and come back to rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_call_gauges_follow_the_calls_and_come_back_to_rest() {
    // Calls long enough to be seen open by a test starved for a while.
    let nodes = svc_cluster("gauge", &[1], 3 * SECOND).await;
    let (host, caller) = (&nodes[1], &nodes[2]);
    assert_eq!(caller.rpc_stats().in_flight, 0);
    assert_eq!(host.rpc_stats().serving, 0);
    let calls: Vec<_> = (0..3)
        .map(|i| {
            let caller = caller.clone();
            tokio::spawn(async move { caller.call(&echo(), vec![i], 10 * SECOND).await.unwrap() })
        })
        .collect();
    wait_for("three calls open on both sides", 5 * SECOND, || {
        let (c, h) = (caller.rpc_stats(), host.rpc_stats());
        c.in_flight == 3 && h.serving == 3 && h.streams_accepted >= 1
    })
    .await;
    for call in calls {
        call.await.unwrap();
    }
    wait_for("nothing open once they are over", 5 * SECOND, || {
        let (c, h) = (caller.rpc_stats(), host.rpc_stats());
        c.in_flight == 0 && h.serving == 0
    })
    .await;
    for n in nodes {
        let _ = n.shutdown().await;
    }
}

/// A call made from a short-lived runtime (a test's, a request's) opens the
/// call stream on it; once that runtime is gone, the next call opens a new
/// stream rather than find the dead one usable and give up on the host as
/// unreachable (`NoProvider` for a minute).
#[test]
fn a_stream_opened_from_a_runtime_since_dropped_is_not_reused() {
    let main = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let nodes = main.block_on(async {
        let nodes = start_cluster("rtd", 2, |_| {}).await;
        wait_converged_members(&nodes, 2).await;
        nodes[1].create_tribe("svc").await.unwrap();
        nodes[1].join("svc", nodes[1].name()).await.unwrap();
        serve_echo(&nodes[1], Duration::ZERO).await;
        wait_served(&nodes[0], 1).await;
        nodes
    });
    let caller = nodes[0].clone();
    {
        let short = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let reply = short.block_on(caller.call(&echo(), b"a".to_vec(), 5 * SECOND));
        assert!(reply.unwrap().ends_with(b"a"));
    }
    for i in 0..3u8 {
        let reply = main.block_on(caller.call(&echo(), vec![i], 5 * SECOND));
        assert!(reply.as_ref().is_ok_and(|r| r.ends_with(&[i])), "{reply:?}");
    }
    main.block_on(async {
        for n in nodes {
            n.shutdown().await.unwrap();
        }
    });
}

/// A handler whose state panics when dropped (at its budget) fails its call
/// alone, also on the host's own call, which runs in the caller's task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_panics_when_dropped_at_its_budget_fails_only_its_call() {
    struct PanicsOnDrop;
    impl Drop for PanicsOnDrop {
        fn drop(&mut self) {
            panic!("the handler's state panicked as it was dropped");
        }
    }
    let nodes = start_cluster("dp", 2, |_| {}).await;
    wait_converged_members(&nodes, 2).await;
    let (caller, host) = (&nodes[0], &nodes[1]);
    host.create_tribe("svc").await.unwrap();
    host.join("svc", host.name()).await.unwrap();
    host.serve(
        "slow",
        "1",
        PluginKind::Processor,
        |_info, _payload| async {
            let _guard = PanicsOnDrop;
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok(Vec::new())
        },
    )
    .await
    .unwrap();
    wait_served(caller, 1).await;
    let slow = CallTarget::new("svc", "slow", PluginKind::Processor);
    for node in [caller, host] {
        let r = node
            .call(&slow, b"x".to_vec(), Duration::from_millis(300))
            .await;
        assert!(
            matches!(r, Err(Error::Timeout { .. } | Error::Remote { .. })),
            "{r:?}"
        );
    }
    // Both nodes go on: the host answers an ordinary call after it.
    serve_echo(host, Duration::ZERO).await;
    wait_served(caller, 2).await;
    for node in [caller, host] {
        let reply = node.call(&echo(), b"after".to_vec(), SECOND).await.unwrap();
        assert_eq!(reply, format!("{}:after", host.name()).into_bytes());
    }
    for n in &nodes {
        n.shutdown().await.unwrap();
    }
}

/// A call with under a millisecond left (a handler passing on what is left
/// of its own budget) reaches its host with a budget of a millisecond, not
/// none: its handler ran with nothing left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_under_a_millisecond_reaches_the_host_rounded_up() {
    let nodes = start_cluster("subms", 2, |_| {}).await;
    wait_converged_members(&nodes, 2).await;
    let host = &nodes[1];
    host.create_tribe("svc").await.unwrap();
    host.join("svc", host.name()).await.unwrap();
    let budgets = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = budgets.clone();
    host.serve("note", "1", PluginKind::Processor, move |info, _| {
        seen.lock().unwrap().push(info.budget);
        async { Ok(vec![]) }
    })
    .await
    .unwrap();
    let target = CallTarget::new("svc", "note", PluginKind::Processor);
    wait_for("the endpoint seen", Duration::from_secs(20), || {
        nodes[0].tribe("svc").is_some_and(|t| t.members.len() == 1)
            && nodes[0].members().iter().any(|m| !m.endpoints.is_empty())
    })
    .await;
    nodes[0]
        .call(&target, vec![], Duration::from_secs(2))
        .await
        .unwrap();
    for _ in 0..20 {
        let _ = nodes[0]
            .call(&target, vec![], Duration::from_micros(900))
            .await;
    }
    let budgets = budgets.lock().unwrap().clone();
    assert!(budgets.len() > 1, "no short call reached the host");
    assert!(budgets.iter().all(|b| !b.is_zero()), "{budgets:?}");
}

/// A host whose program dropped its last handle without a stop is gone:
/// its call streams are cut, so a call names it as unreachable (or
/// disconnected) at once, rather than being refused as not served by a
/// host that is still listed alive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_dropped_without_a_stop_is_unreachable_at_once() {
    let mut nodes = svc_cluster("dr", &[1], Duration::ZERO).await;
    let caller = nodes.remove(0);
    let reply = caller
        .call(&echo(), b"x".to_vec(), Duration::from_secs(5))
        .await;
    assert_eq!(host_of(&reply.unwrap()), "dr1");
    drop(nodes.remove(0));
    // A call that raced with the drop may still be answered.
    let mut outcomes = Vec::new();
    for _ in 0..50 {
        let outcome = caller
            .call(&echo(), b"x".to_vec(), Duration::from_secs(5))
            .await;
        let done = outcome.is_err();
        outcomes.push(outcome);
        if done {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let err = outcomes.pop().unwrap().expect_err("the host is gone");
    // Refused as by a stopping host, or unreachable once its streams
    // ended: either way named.
    match &err {
        Error::NoProvider {
            unreachable,
            stopping,
            ..
        } => {
            assert!(unreachable == &["dr1"] || stopping == &["dr1"], "{err:?}")
        }
        Error::Disconnected { host } => assert_eq!(host, "dr1"),
        other => panic!("{other:?}"),
    }
    caller.shutdown().await.unwrap();
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}

/// A handler that drops its node's last handle still answers the call it
/// runs: the dropped node's streams refuse new calls and end once their
/// calls are answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_drops_its_nodes_last_handle_still_answers() {
    let mut nodes = svc_cluster("dh", &[], Duration::ZERO).await;
    let caller = nodes.remove(0);
    let host = nodes.remove(0);
    let slot = std::sync::Arc::new(std::sync::Mutex::new(None::<Node>));
    let held = slot.clone();
    host.serve("drop", "1", PluginKind::Processor, move |_info, payload| {
        let last = held.lock().unwrap().take();
        async move {
            drop(last);
            Ok(payload)
        }
    })
    .await
    .unwrap();
    wait_for("the endpoint seen", Duration::from_secs(20), || {
        caller.members().iter().any(|m| !m.endpoints.is_empty())
    })
    .await;
    *slot.lock().unwrap() = Some(host);
    let target = CallTarget::new("svc", "drop", PluginKind::Processor);
    let reply = caller
        .call(&target, b"answered".to_vec(), Duration::from_secs(5))
        .await;
    assert_eq!(reply.unwrap(), b"answered");
    caller.shutdown().await.unwrap();
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}

/// A host that stops serving one version of a plugin while it serves
/// another: calls to any version go on to the other, from other members
/// (whose view still lists the version gone) and from the host itself. A
/// version rolled back under load failed such calls `NoProvider`, naming
/// no host, though the host still served the plugin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_unserved_under_load_moves_calls_to_the_version_still_served() {
    let nodes = start_cluster("ver", 2, |_| {}).await;
    wait_converged_members(&nodes, 2).await;
    nodes[0].create_tribe("svc").await.unwrap();
    wait_same_digest(&nodes).await;
    nodes[0].join("svc", nodes[1].name()).await.unwrap();
    let host = nodes[1].clone();
    let serve_version = |v: &'static str| {
        let host = host.clone();
        async move {
            host.serve(
                "echo",
                v,
                PluginKind::Processor,
                move |_info, _payload| async move { Ok(v.as_bytes().to_vec()) },
            )
            .await
            .unwrap();
        }
    };
    serve_version("1").await;
    serve_version("2").await;
    wait_for("both versions seen", Duration::from_secs(20), || {
        nodes[0].members().iter().any(|m| m.endpoints.len() == 2)
            && nodes[0].tribe("svc").is_some_and(|t| t.members.len() == 1)
    })
    .await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut callers = Vec::new();
    for caller in [
        nodes[0].clone(),
        nodes[0].clone(),
        host.clone(),
        host.clone(),
    ] {
        let stop = stop.clone();
        callers.push(tokio::spawn(async move {
            let mut failed = Vec::new();
            let mut ok = 0;
            while !stop.load(Ordering::Relaxed) {
                match caller.call(&echo(), vec![], 5 * SECOND).await {
                    Ok(reply) => {
                        assert!(reply == b"1" || reply == b"2", "{reply:?}");
                        ok += 1;
                    }
                    Err(e) => failed.push(e.to_string()),
                }
                // A call to this node's own handler may finish without
                // waiting: the node's own tasks need their turn.
                tokio::task::yield_now().await;
            }
            (ok, failed)
        }));
    }
    let began = std::time::Instant::now();
    while began.elapsed() < 2 * SECOND {
        host.unserve("echo", "2").await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        serve_version("2").await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let (mut ok, mut failed) = (0, Vec::new());
    for c in callers {
        let (o, f) = c.await.unwrap();
        ok += o;
        failed.extend(f);
    }
    assert_calls_all_went_through(ok, 100, &failed);
}
