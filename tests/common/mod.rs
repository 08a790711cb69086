//! Helpers for multi-node tests on 127.0.0.1.
#![allow(dead_code)]

use std::time::Duration;

use tribe::{CallTarget, Config, Event, EventStream, Node, PluginKind, Profile};

/// A config for fast local tests: `local` profile, quick anti-entropy.
pub fn test_config(name: &str) -> Config {
    let mut cfg = Config::new(name);
    cfg.profile = Profile::Local;
    let mut t = Profile::Local.timings();
    t.push_pull_interval = Duration::from_secs(1);
    t.reconnect_interval = Duration::from_secs(1);
    t.reap_after = Duration::from_secs(6);
    t.join_retry = Duration::from_millis(200);
    cfg.timings = Some(t);
    cfg.collect_facts = false;
    cfg
}

/// Starts `n` nodes named `{prefix}0..`, each seeded with the first.
pub async fn start_cluster(prefix: &str, n: usize, tweak: impl Fn(&mut Config)) -> Vec<Node> {
    let mut nodes: Vec<Node> = Vec::new();
    for i in 0..n {
        let mut cfg = test_config(&format!("{prefix}{i}"));
        if let Some(first) = nodes.first() {
            cfg.seeds = vec![first.addr()];
        }
        tweak(&mut cfg);
        nodes.push(Node::start(cfg).await.expect("node starts"));
    }
    nodes
}

/// A sync `Hello` from a peer named "courier" with all-zero bucket hashes
/// (they differ from any non-empty bucket, so the reply asks for a push).
pub fn courier_hello() -> tribe::engine::sync::SyncMsg {
    tribe::engine::sync::SyncMsg::Hello {
        from: tribe::engine::NodeId::new("courier", "127.0.0.1:9".parse().unwrap(), 1),
        label: String::new(),
        join: false,
        members: Vec::new(),
        buckets: vec![0; tribe::state::BUCKETS],
        want: Vec::new(),
        clock_ms: tribe::runtime::wall_clock_ms(),
    }
}

/// Waits until `cond` holds, polling; panics with `what` after `limit`.
pub async fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if cond() {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {limit:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until every node sees `n` live members.
pub async fn wait_converged_members(nodes: &[Node], n: usize) {
    wait_for(
        &format!("{} nodes see {n} alive", nodes.len()),
        Duration::from_secs(20),
        || nodes.iter().all(|node| node.members_alive() == n),
    )
    .await;
}

/// Waits until every node reports the same state digest.
pub async fn wait_same_digest(nodes: &[Node]) {
    wait_for("equal state digests", Duration::from_secs(20), || {
        let first = nodes[0].state_digest();
        nodes.iter().all(|n| n.state_digest() == first)
    })
    .await;
}

/// Collects events that arrive within `limit` and satisfy `keep`, until `done` holds.
pub async fn collect_until(
    events: &mut EventStream,
    limit: Duration,
    mut done: impl FnMut(&[Event]) -> bool,
) -> Vec<Event> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    while !done(&seen) {
        match tokio::time::timeout_at(deadline, events.next()).await {
            Ok(Some(e)) => seen.push(e),
            Ok(None) => break,
            Err(_) => panic!("timed out collecting events; saw {seen:#?}"),
        }
    }
    seen
}

/// Stops `host` gracefully, waits until `seed` sees it left, and starts a
/// node of the same name on the same address seeded by `seed`, once it
/// learnt tribe `tribe` back (with one member).
pub async fn restart_in_place(seed: &Node, host: Node, tribe: &str) -> Node {
    let (name, addr) = (host.name().to_string(), host.addr());
    host.shutdown().await.unwrap();
    wait_for("the host left", Duration::from_secs(10), || {
        seed.members()
            .iter()
            .any(|m| m.name == name && m.state == tribe::MemberState::Left)
    })
    .await;
    let mut cfg = test_config(&name);
    cfg.bind = addr;
    cfg.seeds = vec![seed.addr()];
    let again = Node::start(cfg).await.unwrap();
    // Tribe membership outlives the restart.
    wait_for("the tribe learnt", Duration::from_secs(20), || {
        again.tribe(tribe).is_some_and(|t| t.members.len() == 1)
    })
    .await;
    again
}

/// How many nodes hold key `id`, and how many use it as their primary.
pub fn holders(node: &Node, id: tribe::KeyId) -> (usize, usize) {
    node.keyring_status()
        .keys
        .iter()
        .find(|k| k.id == id)
        .map(|k| (k.installed_on.len(), k.primary_on.len()))
        .unwrap_or((0, 0))
}

/// Rotates the tribe's key the way an operator would: `by` installs `new`,
/// makes it primary once every node in `nodes` holds it, and removes `old`
/// once every node uses `new`; returns when no node holds `old` any more.
pub async fn rotate_key(
    by: &Node,
    nodes: &[&Node],
    old: &tribe::SecretKey,
    new: &tribe::SecretKey,
) {
    let n = nodes.len();
    let limit = Duration::from_secs(20);
    by.install_key(new.clone()).await.unwrap();
    wait_for("the new key everywhere", limit, || {
        nodes.iter().all(|x| holders(x, new.id()).0 == n)
    })
    .await;
    by.use_key(new.id()).await.unwrap();
    wait_for("the new key primary everywhere", limit, || {
        nodes.iter().all(|x| holders(x, new.id()).1 == n)
    })
    .await;
    by.remove_key(old.id()).await.unwrap();
    wait_for("the old key gone everywhere", limit, || {
        nodes.iter().all(|x| holders(x, old.id()).0 == 0)
    })
    .await;
}

/// Makes `node` the one member of a new tribe `svc` and serves there an
/// `echo` processor (version 1) that answers with the payload; the target
/// that calls it.
pub async fn host_echo(node: &Node) -> CallTarget {
    node.create_tribe("svc").await.unwrap();
    node.join("svc", node.name()).await.unwrap();
    serve_echo(node).await;
    CallTarget::new("svc", "echo", PluginKind::Processor)
}

/// Serves on `node` an `echo` processor (version 1) that answers with the
/// payload.
pub async fn serve_echo(node: &Node) {
    node.serve(
        "echo",
        "1",
        PluginKind::Processor,
        |_, p| async move { Ok(p) },
    )
    .await
    .unwrap();
}

/// What the nodes of this test process logged (at `info` and above), as
/// text: the first call installs the process's subscriber.
pub fn logged() -> String {
    use std::sync::{Mutex, OnceLock};
    static LOG: OnceLock<&'static Mutex<Vec<u8>>> = OnceLock::new();
    struct Sink(&'static Mutex<Vec<u8>>);
    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let log = LOG.get_or_init(|| {
        let log: &'static Mutex<Vec<u8>> = Box::leak(Box::default());
        let _ = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .with_writer(move || Sink(log))
            .try_init();
        log
    });
    String::from_utf8_lossy(&log.lock().unwrap()).into_owned()
}

/// Established TCP connections of this process's sockets to `to` (from
/// `/proc/net/tcp`): call streams, and for a moment now and then an
/// anti-entropy exchange, which uses the same port.
pub fn connections_to(to: std::net::SocketAddr) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let port = format!(":{:04X}", to.port());
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            cols.len() > 3 && cols[2].ends_with(&port) && cols[3] == "01"
        })
        .count()
}

/// Asserts that more than `at_least` calls went through and none failed,
/// showing a few of the failures.
#[allow(dead_code)] // not every test binary checks call outcomes
pub fn assert_calls_all_went_through(ok: usize, at_least: usize, failed: &[String]) {
    assert!(ok > at_least, "only {ok} calls went through");
    assert!(
        failed.is_empty(),
        "{} of {} calls failed: {:?}",
        failed.len(),
        ok + failed.len(),
        &failed[..failed.len().min(5)]
    );
}
