//! Hardening: forged identities, skewed clocks, deletions that must stay
//! deleted, bounded state, anti-entropy of a state larger than one frame, a
//! whole-cluster restart and the data-dir lock. Real nodes on 127.0.0.1.
mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tribe::engine::sync::SyncMsg;
use tribe::engine::NodeId;
use tribe::runtime::Faults;
use tribe::{Config, Event, MemberState, Node, PluginKind, TaskState};

const LONG: Duration = Duration::from_secs(30);

/// Opens an exchange with `target` as `from`, offering `members`, and reads
/// the first frame of the reply.
async fn hello_with_members(
    target: std::net::SocketAddr,
    from: NodeId,
    members: Vec<foca::Member<NodeId>>,
) {
    let hello = SyncMsg::Hello {
        from,
        label: String::new(),
        join: false,
        members,
        buckets: vec![0; tribe::state::BUCKETS],
        want: Vec::new(),
        clock_ms: tribe::runtime::wall_clock_ms(),
    };
    let mut stream = TcpStream::connect(target).await.unwrap();
    let mut bytes = tribe::wire::frame(&[tribe::wire::CHANNEL_SYNC]);
    bytes.extend_from_slice(&tribe::wire::frame(&tribe::wire::encode(&hello)));
    stream.write_all(&bytes).await.unwrap();
    // The node answers (or closes); either way it has handled the hello.
    let mut header = [0u8; 4];
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut header)).await;
}

fn generation_of(node: &Node, name: &str) -> Option<(MemberState, u64)> {
    node.members()
        .into_iter()
        .find(|m| m.name == name)
        .map(|m| (m.state, m.generation))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_generation_does_not_displace_a_node() {
    let nodes = start_cluster("forge", 3, |_| {}).await;
    wait_converged_members(&nodes, 3).await;
    let victim = &nodes[2];
    let real = generation_of(&nodes[0], "forge2").unwrap().1;
    let courier = NodeId::new("courier", "127.0.0.1:9".parse().unwrap(), 1);
    let forged = NodeId::new("forge2", "127.0.0.1:9".parse().unwrap(), u64::MAX);
    for target in [nodes[0].addr(), nodes[1].addr()] {
        hello_with_members(
            target,
            courier.clone(),
            vec![foca::Member::alive(forged.clone())],
        )
        .await;
    }
    // Give a displacement time to show, then check nobody took it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for n in &nodes[..2] {
        assert_eq!(
            generation_of(n, "forge2"),
            Some((MemberState::Alive, real)),
            "{} lost the victim",
            n.name()
        );
    }
    assert!(nodes[..2]
        .iter()
        .all(|n| n.counters().identities_refused > 0));

    // A claim within the clock horizon, at an address where nothing
    // answers, reaches every node: the victim reports it and keeps out
    // while the others hold the claim alive; they find nothing there and
    // declare it down, and the victim takes a newer generation, which the
    // others follow.
    let mut events = victim.events();
    let claim = NodeId::new("forge2", "127.0.0.1:9".parse().unwrap(), real + 1000);
    for n in &nodes {
        hello_with_members(
            n.addr(),
            courier.clone(),
            vec![foca::Member::alive(claim.clone())],
        )
        .await;
    }
    let seen = collect_until(&mut events, LONG, |seen| {
        seen.iter()
            .any(|e| matches!(e, Event::IdentityClaimed { .. }))
    })
    .await;
    assert!(seen.iter().any(|e| matches!(
        e,
        Event::IdentityClaimed { generation, .. } if *generation == real + 1000
    )));
    assert!(victim.counters().identity_claims > 0);
    wait_for("the victim is alive under a newer generation", LONG, || {
        nodes[..2].iter().all(|n| {
            generation_of(n, "forge2")
                .is_some_and(|(s, g)| s == MemberState::Alive && g > real + 1000)
        })
    })
    .await;
    // Taking the new generation is no new join: the victim never left.
    // (The first subscriber also got the start's events: look past the claim.)
    let mut all = seen;
    while let Some(e) = events.try_next() {
        all.push(e);
    }
    let claim_at = all
        .iter()
        .position(|e| matches!(e, Event::IdentityClaimed { .. }))
        .unwrap_or(0);
    assert!(
        !all[claim_at..].iter().any(|e| matches!(e, Event::Joined)),
        "a rejoin under a new generation reported as a join: {all:?}"
    );
    for n in &nodes {
        n.shutdown().await.unwrap();
    }
}

/// A second node started under a live node's name (a copied config), much
/// later than the real one, takes the name (the newer generation wins) and
/// keeps it while it runs: the real node reports the claim and keeps out
/// instead of fighting back (which made the name flip between the two many
/// times a second). Once the second node stops, the real node is back,
/// alive at its own address, and its plugin answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_name_was_taken_gets_it_back_when_the_impostor_stops() {
    let nodes = start_cluster("dup", 3, |_| {}).await;
    wait_converged_members(&nodes, 3).await;
    let victim = &nodes[2];
    let echo = host_echo(victim).await;
    let call = || nodes[0].call(&echo, b"hi".to_vec(), Duration::from_secs(1));
    wait_for("the endpoint seen", LONG, || {
        nodes[0].members().iter().any(|m| !m.endpoints.is_empty())
    })
    .await;
    assert_eq!(call().await.unwrap(), b"hi");
    let mut events = victim.events();
    let mut cfg = test_config("dup2");
    cfg.seeds = vec![nodes[0].addr()];
    let real = generation_of(&nodes[0], "dup2").unwrap().1;
    cfg.generation = Some(real + 100_000);
    let impostor = Node::start(cfg).await.unwrap();
    let at = |n: &Node, addr| {
        n.members()
            .into_iter()
            .any(|m| m.name == "dup2" && m.addr == addr && m.state == MemberState::Alive)
    };
    wait_for("the impostor seen", LONG, || {
        nodes[..2].iter().all(|n| at(n, impostor.addr()))
    })
    .await;
    let seen = collect_until(&mut events, LONG, |seen| {
        seen.iter()
            .any(|e| matches!(e, Event::IdentityClaimed { .. }))
    })
    .await;
    assert!(
        seen.iter().any(|e| matches!(
            e,
            Event::IdentityClaimed { addr, .. } if *addr == impostor.addr()
        )),
        "{seen:?}"
    );
    // For as long as a copied config would run: the name stays with the
    // newer node at every sample, and the real node sends little.
    let sent_before = victim.counters().datagrams_out;
    let began = std::time::Instant::now();
    while began.elapsed() < Duration::from_secs(5) {
        for n in &nodes[..2] {
            let holder = n.members().into_iter().find(|m| m.name == "dup2");
            assert_eq!(
                holder.map(|m| m.addr),
                Some(impostor.addr()),
                "{} gave the name back while the newer node runs",
                n.name()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let sent = victim.counters().datagrams_out - sent_before;
    assert!(
        sent < 1_000,
        "the real node sent {sent} datagrams in 5 s while kept out"
    );
    assert_eq!(victim.name_held_by(), Some(impostor.addr()));
    assert_eq!(impostor.name_held_by(), None);
    impostor.shutdown().await.unwrap();
    let began = std::time::Instant::now();
    wait_for("the real node back everywhere", LONG, || {
        nodes[..2].iter().all(|n| at(n, victim.addr()))
    })
    .await;
    let mut answered = false;
    while began.elapsed() < LONG {
        if call().await.is_ok() {
            answered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(answered, "the real node's plugin never answered again");
    assert_eq!(victim.members_alive(), 3);
    assert_eq!(victim.name_held_by(), None);
    for n in &nodes[..2] {
        let m = n.members().into_iter().find(|m| m.name == "dup2").unwrap();
        assert_eq!(m.state, MemberState::Alive, "{}: {m:?}", n.name());
    }
    for n in &nodes {
        n.shutdown().await.unwrap();
    }
}

/// A node config with the local profile's own push-pull interval (15 s):
/// what is checked below must not wait for periodic exchanges.
fn slow_exchanges(name: &str) -> Config {
    let mut cfg = test_config(name);
    if let Some(t) = cfg.timings.as_mut() {
        t.push_pull_interval = tribe::Profile::Local.timings().push_pull_interval;
    }
    cfg
}

/// A copy started with the node whose name it takes as its only seed
/// (a copied config of a two-node setup): the first node keeps out, yet
/// still answers the copy, which joins the others through it; once the
/// copy is gone, the first node has its name back in seconds, not after its
/// keep-out runs out (60 s): it dials the holder, whose port now refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_seeded_with_the_node_it_displaces_joins_through_it_and_goes_without_a_wait() {
    // The two alone.
    let first = Node::start(slow_exchanges("cp1")).await.unwrap();
    let mut cfg = slow_exchanges("cp1");
    cfg.seeds = vec![first.addr()];
    tokio::time::sleep(Duration::from_millis(20)).await;
    let copy = Node::start(cfg).await.unwrap();
    wait_for("the first node keeps out", LONG, || {
        first.name_held_by() == Some(copy.addr())
    })
    .await;
    assert_eq!(copy.name_held_by(), None);
    copy.abort().await;
    wait_for("the name back", Duration::from_secs(20), || {
        first.name_held_by().is_none()
    })
    .await;

    // With a third node that knows only the first.
    let first = Node::start(slow_exchanges("cp2")).await.unwrap();
    let mut cfg = slow_exchanges("cp2-other");
    cfg.seeds = vec![first.addr()];
    let other = Node::start(cfg).await.unwrap();
    let at = |addr| {
        other
            .members()
            .into_iter()
            .any(|m| m.name == "cp2" && m.addr == addr && m.state == MemberState::Alive)
    };
    wait_for("the first node seen", LONG, || at(first.addr())).await;
    let mut cfg = slow_exchanges("cp2");
    cfg.seeds = vec![first.addr()];
    let copy = Node::start(cfg).await.unwrap();
    wait_for("the copy joined through the first node", LONG, || {
        at(copy.addr()) && copy.members_alive() == 2
    })
    .await;
    assert_eq!(first.name_held_by(), Some(copy.addr()));
    copy.abort().await;
    wait_for("the first node back", Duration::from_secs(20), || {
        first.name_held_by().is_none() && at(first.addr())
    })
    .await;
    other.shutdown().await.unwrap();
    first.shutdown().await.unwrap();
}

/// Five nodes, the last with its clock `offset_ms` off from the start.
async fn skewed_cluster(prefix: &str, offset_ms: i64) -> Vec<Node> {
    let mut nodes = start_cluster(prefix, 4, |_| {}).await;
    let faults = Arc::new(Faults::default());
    faults.set_clock_offset(offset_ms);
    let mut cfg = test_config(&format!("{prefix}4"));
    cfg.seeds = vec![nodes[0].addr()];
    nodes.push(Node::start_with_faults(cfg, faults).await.unwrap());
    wait_converged_members(&nodes, 5).await;
    nodes
}

async fn writes_converge_despite_skew(prefix: &str, offset_ms: i64) {
    let nodes = skewed_cluster(prefix, offset_ms).await;
    let skewed = &nodes[4];
    let mut events = nodes[0].events();
    // A write from the skewed node and one to it.
    skewed.create_tribe("from-skewed").await.unwrap();
    nodes[1].create_tribe("to-skewed").await.unwrap();
    nodes[1].join("to-skewed", skewed.name()).await.unwrap();
    wait_for("the tribe reaches the skewed node", LONG, || {
        skewed.tribe("to-skewed").is_some()
    })
    .await;
    skewed
        .add_task("to-skewed", "t", "{}", TaskState::Running)
        .await
        .unwrap();
    wait_for("both writes everywhere", LONG, || {
        nodes.iter().all(|n| {
            n.tribe("from-skewed").is_some()
                && n.tribe("to-skewed").is_some_and(|t| {
                    t.tasks.len() == 1 && t.explicit_members == vec![skewed.name().to_string()]
                })
        })
    })
    .await;
    wait_same_digest(&nodes).await;
    assert!(nodes
        .iter()
        .all(|n| n.counters().clock_drift_rejections == 0));
    // Reported on both sides.
    let seen = collect_until(&mut events, LONG, |seen| {
        seen.iter()
            .any(|e| matches!(e, Event::ClockSkew { peer, .. } if peer == skewed.name()))
    })
    .await;
    let offset = seen
        .iter()
        .find_map(|e| match e {
            Event::ClockSkew { offset_ms, .. } => Some(*offset_ms),
            _ => None,
        })
        .unwrap();
    assert!((offset - offset_ms).abs() < 30_000, "offset {offset}");
    assert!(skewed.counters().clock_skew_reports >= 1);
    for n in &nodes {
        n.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_ten_minutes_slow_hears_and_is_heard() {
    writes_converge_despite_skew("slow", -600_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_ten_minutes_fast_hears_and_is_heard() {
    writes_converge_despite_skew("fast", 600_000).await;
}

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("tribe-hardening-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn short_grace(cfg: &mut Config) {
    let t = cfg.timings.as_mut().unwrap();
    t.tombstone_grace = Duration::from_secs(2);
}

/// A whole tribe down for longer than the grace and restarted from its
/// data dirs keeps everything, within seconds: every member held the
/// records too, and no one is left to decide them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_tribe_restarted_after_the_grace_keeps_its_state() {
    let mut cfgs = Vec::new();
    let mut nodes: Vec<Node> = Vec::new();
    for i in 0..3 {
        let mut cfg = test_config(&format!("all-back-{i}"));
        short_grace(&mut cfg);
        cfg.seeds = nodes.iter().map(Node::addr).take(1).collect();
        cfg.data_dir = Some(scratch(&format!("all-back-{i}")));
        let node = Node::start(cfg.clone()).await.unwrap();
        cfg.bind = node.addr();
        cfg.seeds = Vec::new(); // back through the peers its data dir keeps
        cfgs.push(cfg);
        nodes.push(node);
    }
    wait_converged_members(&nodes, 3).await;
    nodes[0].create_tribe("web").await.unwrap();
    nodes[1].create_tribe("db").await.unwrap();
    wait_for("the tribes everywhere", LONG, || {
        nodes
            .iter()
            .all(|n| n.tribe("web").is_some() && n.tribe("db").is_some())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for n in nodes.drain(..) {
        n.abort().await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await; // past the grace
    for cfg in &cfgs {
        nodes.push(Node::start(cfg.clone()).await.unwrap());
    }
    wait_converged_members(&nodes, 3).await;
    // Well before the hold's 30 s.
    wait_for(
        "the tribes kept everywhere",
        Duration::from_secs(15),
        || {
            nodes
                .iter()
                .all(|n| n.tribe("web").is_some() && n.tribe("db").is_some())
        },
    )
    .await;
    assert!(nodes
        .iter()
        .all(|n| n.counters().stale_records_dropped == 0));
    for n in nodes {
        n.shutdown().await.unwrap();
    }
    for cfg in cfgs {
        let _ = std::fs::remove_dir_all(cfg.data_dir.unwrap());
    }
}

/// Two nodes down together for longer than the grace, restarted from their
/// data dirs, that meet each other before a peer that deleted a tribe
/// meanwhile, do not vouch for each other's copy of it (it came back
/// everywhere).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_restarted_together_after_the_grace_bring_no_deletion_back() {
    let keeper = start_cluster("pair-c", 1, short_grace).await.remove(0);
    let mut cfgs = Vec::new();
    let mut pair = Vec::new();
    for i in 0..2 {
        let mut cfg = test_config(&format!("pair-{i}"));
        short_grace(&mut cfg);
        cfg.seeds = vec![keeper.addr()];
        cfg.data_dir = Some(scratch(&format!("pair-{i}")));
        let node = Node::start(cfg.clone()).await.unwrap();
        // Back on the same address: the other keeps it as a peer.
        cfg.bind = node.addr();
        cfgs.push(cfg);
        pair.push(node);
    }
    let all: Vec<&Node> = [&keeper].into_iter().chain(&pair).collect();
    wait_for("three members everywhere", LONG, || {
        all.iter().all(|n| n.members_alive() == 3)
    })
    .await;
    keeper.create_tribe("doomed").await.unwrap();
    keeper.create_tribe("kept").await.unwrap();
    wait_for("the tribes everywhere", LONG, || {
        all.iter()
            .all(|n| n.tribe("doomed").is_some() && n.tribe("kept").is_some())
    })
    .await;
    // Kept in the data dirs, then both crash.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for n in pair.drain(..) {
        n.abort().await;
    }
    let before = keeper.counters().tombstones_collected;
    keeper.delete_tribe("doomed").await.unwrap();
    wait_for("the deletion's tombstone collected", LONG, || {
        keeper.counters().tombstones_collected > before
    })
    .await;
    // Back together, the keeper out of their reach for a while.
    for cfg in &cfgs {
        let faults = Arc::new(Faults::default());
        faults.block(keeper.addr());
        let mut cfg = cfg.clone();
        cfg.seeds = pair.iter().map(Node::addr).collect();
        pair.push(Node::start_with_faults(cfg, faults).await.unwrap());
    }
    wait_for("the pair met", LONG, || {
        pair.iter().all(|n| n.members_alive() == 2)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    for n in &pair {
        assert!(
            n.tribe("doomed").is_none(),
            "{} took its copy as confirmed",
            n.name()
        );
        n.faults().unblock(keeper.addr());
    }
    let all: Vec<&Node> = [&keeper].into_iter().chain(&pair).collect();
    wait_for("the pair decided by the keeper", LONG, || {
        pair.iter()
            .all(|n| n.counters().stale_records_dropped >= 1 && n.tribe("kept").is_some())
    })
    .await;
    for _ in 0..20 {
        for n in &all {
            assert!(n.tribe("doomed").is_none(), "{} brought it back", n.name());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for n in all {
        n.shutdown().await.unwrap();
    }
    for cfg in cfgs {
        let _ = std::fs::remove_dir_all(cfg.data_dir.unwrap());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tribe_deleted_while_a_node_was_down_stays_deleted() {
    let dir = scratch("deleted");
    let mut nodes = start_cluster("gone", 2, short_grace).await;
    let mut cfg = test_config("gone2");
    short_grace(&mut cfg);
    cfg.seeds = vec![nodes[0].addr()];
    cfg.data_dir = Some(dir.clone());
    nodes.push(Node::start(cfg.clone()).await.unwrap());
    wait_converged_members(&nodes, 3).await;
    nodes[0].create_tribe("doomed").await.unwrap();
    nodes[0].join("doomed", "gone2").await.unwrap();
    wait_for("the tribe everywhere", LONG, || {
        nodes.iter().all(|n| {
            n.tribe("doomed")
                .is_some_and(|t| t.explicit_members.len() == 1)
        })
    })
    .await;
    // Kept in the data dir, then the node crashes.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let down = nodes.pop().unwrap();
    down.abort().await;
    drop(down);

    let before: Vec<u64> = nodes
        .iter()
        .map(|n| n.counters().tombstones_collected)
        .collect();
    nodes[0].delete_tribe("doomed").await.unwrap();
    wait_for("deleted and its tombstones collected", LONG, || {
        nodes
            .iter()
            .zip(&before)
            .all(|(n, b)| n.tribe("doomed").is_none() && n.counters().tombstones_collected >= b + 2)
    })
    .await;

    cfg.seeds = vec![nodes[0].addr()];
    let back = Node::start(cfg).await.unwrap();
    nodes.push(back);
    wait_converged_members(&nodes, 3).await;
    for _ in 0..30 {
        for n in &nodes {
            assert!(n.tribe("doomed").is_none(), "{} brought it back", n.name());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_for("the returning node asked a peer", LONG, || {
        nodes[2].counters().stale_records_dropped >= 2
    })
    .await;
    wait_same_digest(&nodes).await;
    for n in &nodes {
        n.shutdown().await.unwrap();
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_cluster_restart_keeps_tribes_policies_plugins_and_tasks() {
    let dirs: Vec<_> = (0..3).map(|i| scratch(&format!("restart{i}"))).collect();
    let start = |seed: Option<std::net::SocketAddr>, i: usize| {
        let mut cfg = test_config(&format!("restart{i}"));
        // Down longer than the grace: the kept records must confirm each other.
        short_grace(&mut cfg);
        cfg.seeds = seed.into_iter().collect();
        cfg.data_dir = Some(dirs[i].clone());
        Node::start(cfg)
    };
    let first = start(None, 0).await.unwrap();
    let mut nodes = vec![first.clone()];
    for i in 1..3 {
        nodes.push(start(Some(first.addr()), i).await.unwrap());
    }
    wait_converged_members(&nodes, 3).await;
    let w = &nodes[1];
    w.create_tribe("kept").await.unwrap();
    w.add_policy("kept-policy", "kept", "facts.role == \"db\"")
        .await
        .unwrap();
    w.load_plugin("kept", "psutil", "1", PluginKind::Collector, None)
        .await
        .unwrap();
    w.add_task("kept", "cpu", "{}", TaskState::Running)
        .await
        .unwrap();
    // A fact set by a command is kept too (and places the node again).
    w.set_fact("role", "db").await.unwrap();
    w.set_fact("gone", "soon").await.unwrap();
    w.remove_fact("gone").await.unwrap();
    wait_same_digest(&nodes).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for n in nodes.drain(..) {
        n.shutdown().await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(3)).await;

    let first = start(None, 0).await.unwrap();
    nodes.push(first.clone());
    for i in 1..3 {
        nodes.push(start(Some(first.addr()), i).await.unwrap());
    }
    wait_converged_members(&nodes, 3).await;
    wait_for("everything back on every node", LONG, || {
        nodes.iter().all(|n| {
            n.policies().len() == 1
                && n.tribe("kept").is_some_and(|t| {
                    t.plugins.len() == 1 && t.tasks.len() == 1 && t.members == ["restart1"]
                })
        })
    })
    .await;
    let me = nodes[1]
        .members()
        .into_iter()
        .find(|m| m.name == "restart1")
        .unwrap();
    assert_eq!(me.facts.get("role").map(String::as_str), Some("db"));
    assert!(!me.facts.contains_key("gone"));
    for n in &nodes {
        n.shutdown().await.unwrap();
    }
    for d in &dirs {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_cannot_share_a_data_dir() {
    let dir = scratch("shared");
    let mut cfg = test_config("owner");
    cfg.data_dir = Some(dir.clone());
    let owner = Node::start(cfg.clone()).await.unwrap();
    cfg.name = "intruder".into();
    let err = Node::start(cfg.clone()).await.err().expect("refused");
    assert!(err.to_string().contains("in use"), "{err}");
    owner.shutdown().await.unwrap();
    drop(owner);
    // Free again once the owner stopped, for the owner (another name is
    // refused it: tests/data_dir.rs).
    tokio::time::sleep(Duration::from_millis(200)).await;
    cfg.name = "owner".into();
    let next = Node::start(cfg).await.unwrap();
    next.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_limits_refuse_commands_and_peer_records() {
    logged();
    let nodes = start_cluster("capped", 2, |cfg| cfg.limits.tribes = 3).await;
    wait_converged_members(&nodes, 2).await;
    for t in ["a", "b", "c"] {
        nodes[0].create_tribe(t).await.unwrap();
    }
    let err = nodes[0].create_tribe("d").await.unwrap_err();
    assert_eq!(err.code(), "limit_reached", "{err}");
    // A peer with a larger limit cannot push more in than the margin
    // taken from peers (64 past a limit of 3: writes racing at the limit).
    let mut cfg = test_config("capped-big");
    cfg.limits.tribes = 100;
    cfg.seeds = vec![nodes[0].addr()];
    let big = Node::start(cfg).await.unwrap();
    for i in 0..70 {
        big.create_tribe(&format!("more-{i}")).await.unwrap();
    }
    wait_for("the extra tribes refused and counted", LONG, || {
        nodes
            .iter()
            .all(|n| n.counters().records_over_limit > 0 && n.tribes().len() == 67)
    })
    .await;
    // Logged too: a node at a limit is otherwise silently out of step.
    assert!(
        logged().lines().any(|l| l.contains("WARN")
            && l.contains("holds its limit of 3 tribes and the 64 more")
            && l.contains("node=capped")),
        "{}",
        logged()
    );
    for n in nodes.iter().chain([&big]) {
        n.shutdown().await.unwrap();
    }
}

/// A node whose advertise address is not where it sends from (a wrong
/// `--advertise`) is named by its peers, instead of flapping in silence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_advertise_address_is_named_by_peers() {
    logged();
    let a = start_cluster("adv", 1, |_| {}).await.remove(0);
    let mut cfg = test_config("adv-wrong");
    cfg.advertise = Some("127.0.0.2:0".parse().unwrap());
    cfg.seeds = vec![a.addr()];
    let wrong = Node::start(cfg).await.unwrap();
    // A wrong port is as wrong (nothing listens on port 9 here).
    let mut cfg = test_config("adv-port");
    cfg.advertise = Some("127.0.0.1:9".parse().unwrap());
    cfg.seeds = vec![a.addr()];
    let wrong_port = Node::start(cfg).await.unwrap();
    // Bound to every address and reached where it advertises: its kernel
    // sends from 127.0.0.1, and that is fine.
    let mut cfg = test_config("adv-any");
    cfg.bind = "0.0.0.0:0".parse().unwrap();
    cfg.advertise = Some("127.0.0.2:0".parse().unwrap());
    cfg.seeds = vec![a.addr()];
    let any = Node::start(cfg).await.unwrap();
    let named = |addr: std::net::SocketAddr| {
        logged().lines().any(|l| {
            l.contains("WARN")
                && l.contains("node=adv0")
                && l.contains(&format!("a member advertising {addr} "))
                && l.contains("its advertise address is wrong")
        })
    };
    wait_for("the mismatches named", LONG, || {
        named(wrong.addr()) && named(wrong_port.addr())
    })
    .await;
    wait_for("the node bound to every address alive", LONG, || {
        a.members()
            .iter()
            .any(|m| m.name == "adv-any" && m.state == tribe::MemberState::Alive)
    })
    .await;
    assert!(!named(any.addr()), "{}", logged());
    // One real crash and restart of it is no wrong address either.
    let any_addr = any.addr();
    any.abort().await;
    wait_for("the crashed node declared failed", LONG, || {
        a.members()
            .iter()
            .any(|m| m.name == "adv-any" && m.state == tribe::MemberState::Failed)
    })
    .await;
    let mut cfg = test_config("adv-any");
    cfg.bind = format!("0.0.0.0:{}", any_addr.port()).parse().unwrap();
    cfg.advertise = Some(any_addr);
    cfg.seeds = vec![a.addr()];
    let any = Node::start(cfg).await.unwrap();
    wait_for("the restarted node alive", LONG, || {
        a.members()
            .iter()
            .any(|m| m.name == "adv-any" && m.state == tribe::MemberState::Alive)
    })
    .await;
    // A few rounds of its gossip from 127.0.0.1 after it came back.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!named(any.addr()), "{}", logged());
    for n in [a, wrong, wrong_port, any] {
        n.shutdown().await.unwrap();
    }
}

/// Writes made through different nodes at the limit, before either heard
/// of the other's, are taken everywhere: the cluster converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_racing_at_a_limit_converge() {
    let nodes = start_cluster("race", 2, |cfg| cfg.limits.tribes = 3).await;
    wait_converged_members(&nodes, 2).await;
    nodes[0].create_tribe("a").await.unwrap();
    nodes[0].create_tribe("b").await.unwrap();
    wait_same_digest(&nodes).await;
    // Apart, each takes the last place.
    nodes[0].faults().block(nodes[1].addr());
    nodes[1].faults().block(nodes[0].addr());
    nodes[0].create_tribe("c").await.unwrap();
    nodes[1].create_tribe("d").await.unwrap();
    for n in &nodes {
        n.faults().heal();
    }
    wait_converged_members(&nodes, 2).await;
    wait_same_digest(&nodes).await;
    for n in &nodes {
        assert_eq!(n.tribes().len(), 4);
        // Commands still stop at the limit.
        assert_eq!(
            n.create_tribe("e").await.unwrap_err().code(),
            "limit_reached"
        );
    }
    for n in &nodes {
        n.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_joiner_gets_a_state_larger_than_one_frame() {
    let seed = start_cluster("big", 1, |_| {}).await.remove(0);
    seed.create_tribe("bulk").await.unwrap();
    // 800 tasks of 64 KiB: about 52 MiB, over three times the frame limit.
    let pad = "x".repeat(64 * 1024 - 16);
    let manifest = format!("{{\"pad\":\"{pad}\"}}");
    for i in 0..800 {
        seed.add_task("bulk", &format!("t{i}"), &manifest, TaskState::Stopped)
            .await
            .unwrap();
    }
    let mut cfg = test_config("big1");
    cfg.seeds = vec![seed.addr()];
    let max_frame = cfg.max_frame as u64;
    let joiner = Node::start(cfg).await.unwrap();
    let nodes = [seed, joiner];
    wait_for(
        "the late joiner holds every task",
        Duration::from_secs(120),
        || nodes[1].tribe("bulk").is_some_and(|t| t.tasks.len() == 800),
    )
    .await;
    wait_same_digest(&nodes).await;
    let c = nodes[1].counters();
    assert!(c.frame_bytes_in > 3 * max_frame, "{c:?}");
    for n in &nodes {
        n.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_artifact_bytes_are_not_kept() {
    let node = start_cluster("held", 1, |_| {}).await.remove(0);
    for i in 0..256u32 {
        node.hold_artifact(i.to_be_bytes().to_vec()).unwrap();
    }
    let extra = 256u32.to_be_bytes().to_vec();
    let err = node.hold_artifact(extra.clone()).unwrap_err();
    assert_eq!(err.code(), "invalid_argument", "{err}");
    let sha: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(&extra).into();
    assert!(node.artifact(&sha).is_none(), "refused bytes were kept");
    node.shutdown().await.unwrap();
}

/// A claim on a node's name sent to that node alone, naming an address that
/// accepts connections and never answers (no node of the tribe: a forged
/// packet), keeps it out only until its checks of that "holder" fail three
/// times in a row; the same claim sent again is then one of a node gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_claim_that_never_answers_keeps_its_victim_out_for_seconds_only() {
    let nodes = start_cluster("mute", 3, |_| {}).await;
    wait_converged_members(&nodes, 3).await;
    let victim = &nodes[2];
    let real = generation_of(&nodes[0], "mute2").unwrap().1;
    let mute = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mute_addr = mute.local_addr().unwrap();
    let holding = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = mute.accept().await {
            held.push(s);
        }
    });
    let courier = NodeId::new("courier", "127.0.0.1:9".parse().unwrap(), 1);
    let claim = NodeId::new("mute2", mute_addr, real + 1000);
    let send_claim = || {
        hello_with_members(
            victim.addr(),
            courier.clone(),
            vec![foca::Member::alive(claim.clone())],
        )
    };
    send_claim().await;
    wait_for("the victim keeps out", Duration::from_secs(5), || {
        victim.name_held_by() == Some(mute_addr)
    })
    .await;
    // Before, it kept out for a minute after every sighting.
    wait_for("the name taken back", Duration::from_secs(20), || {
        victim.name_held_by().is_none()
    })
    .await;
    send_claim().await;
    // Nor one from there with a newer generation.
    let newer = NodeId::new("mute2", mute_addr, real + 2000);
    hello_with_members(
        victim.addr(),
        courier.clone(),
        vec![foca::Member::alive(newer)],
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        victim.name_held_by(),
        None,
        "a claim from there kept it out again"
    );
    // A "holder" that accepts and closes at once (any TCP service) fails
    // its checks too.
    let closing = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closing_addr = closing.local_addr().unwrap();
    let closer = tokio::spawn(async move {
        while let Ok((s, _)) = closing.accept().await {
            drop(s);
        }
    });
    let at_closer = NodeId::new("mute2", closing_addr, real + 3000);
    hello_with_members(
        victim.addr(),
        courier.clone(),
        vec![foca::Member::alive(at_closer)],
    )
    .await;
    wait_for("the victim keeps out again", Duration::from_secs(5), || {
        victim.name_held_by() == Some(closing_addr)
    })
    .await;
    wait_for("the name taken back again", Duration::from_secs(20), || {
        victim.name_held_by().is_none()
    })
    .await;
    closer.abort();
    wait_for("the others see the victim alive", LONG, || {
        nodes[..2].iter().all(|n| {
            generation_of(n, "mute2").is_some_and(|(s, g)| s == MemberState::Alive && g > real)
        })
    })
    .await;
    holding.abort();
    for n in &nodes {
        n.shutdown().await.unwrap();
    }
}
