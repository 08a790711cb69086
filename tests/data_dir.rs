//! What a data dir keeps across restarts, with nodes in this process on
//! fixed ports (restarted where they were).
mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;
use tribe::{Config, MemberState, Node};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tribe-dd-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn config(name: &str, dir: &std::path::Path, bind: std::net::SocketAddr) -> Config {
    let mut cfg = test_config(name);
    cfg.data_dir = Some(dir.join(name));
    cfg.bind = bind;
    cfg
}

fn sees_alive(node: &Node, name: &str) -> bool {
    node.members()
        .iter()
        .any(|m| m.name == name && m.state == MemberState::Alive)
}

/// The whole tribe goes down, one node comes back alone for a while (its
/// peers are not up yet), then all restart without seeds: they must still
/// find each other through the peers their data dirs kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_alone_keeps_the_peers_a_later_restart_rejoins_through() {
    let dir = scratch("peers");
    let any = "127.0.0.1:0".parse().unwrap();
    let a = Node::start(config("dd-a", &dir, any)).await.unwrap();
    let mut b_cfg = config("dd-b", &dir, any);
    b_cfg.seeds = vec![a.addr()];
    let b = Node::start(b_cfg).await.unwrap();
    wait_converged_members(&[a.clone(), b.clone()], 2).await;
    let (a_addr, b_addr) = (a.addr(), b.addr());
    // Two save ticks, so both data dirs hold the other as a peer.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();

    // a alone, for longer than a save tick, with nobody answering.
    let a = Node::start(config("dd-a", &dir, a_addr)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    a.shutdown().await.unwrap();

    let a = Node::start(config("dd-a", &dir, a_addr)).await.unwrap();
    let b = Node::start(config("dd-b", &dir, b_addr)).await.unwrap();
    wait_for(
        "the restarted nodes meet without seeds",
        Duration::from_secs(20),
        || sees_alive(&a, "dd-b") && sees_alive(&b, "dd-a"),
    )
    .await;
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_that_keep_failing_are_logged_once_with_the_file() {
    logged();
    let dir = scratch("unwritable");
    let node = Node::start(config(
        "dd-unwritable",
        &dir,
        "127.0.0.1:0".parse().unwrap(),
    ))
    .await
    .unwrap();
    // The data dir becomes a file: every write fails, even as root. It is
    // moved aside in one step, as the node may be writing into it right now
    // (a removal would race with that write's temporary file).
    let data = dir.join("dd-unwritable");
    std::fs::rename(&data, dir.join("moved-aside")).unwrap();
    std::fs::write(&data, b"not a directory").unwrap();
    let before = node.counters().data_dir_errors;
    for i in 0..3 {
        node.set_fact("round", &i.to_string()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1_100)).await;
    }
    // A failed write is counted at the save tick after it (1 s apart).
    wait_for("each failure counted", Duration::from_secs(10), || {
        node.counters().data_dir_errors >= before + 2
    })
    .await;
    let warnings: Vec<String> = logged()
        .lines()
        .filter(|l| l.contains("cannot write the data dir"))
        .map(str::to_owned)
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains(&data.display().to_string()),
        "{warnings:?}"
    );
    // Its last state is not kept either, which the stop says.
    let stopped = node.shutdown().await;
    assert!(matches!(stopped, Err(tribe::Error::Io(_))), "{stopped:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_under_another_name_refuses_the_data_dir() {
    let dir = scratch("other-name");
    let key = tribe::SecretKey::generate();
    let keyed = |name: &str, key: &tribe::SecretKey| {
        let mut cfg = config(name, &dir, "127.0.0.1:0".parse().unwrap());
        cfg.keyring = Some(tribe::Keyring::new(key.clone()));
        cfg.data_dir = Some(dir.join("dd-owner"));
        cfg
    };
    let first = Node::start(keyed("dd-owner", &key)).await.unwrap();
    first.set_fact("owner", "dd-owner").await.unwrap();
    first.shutdown().await.unwrap();
    let files = || {
        ["keyring.json", "configured-key", "node-state.json"]
            .map(|f| std::fs::read(dir.join("dd-owner").join(f)).unwrap())
    };
    let before = files();
    // Another node, with a key of another cluster: refused, and the
    // directory is left as it was (its key was made the owner's primary
    // before the name was looked at, and let the other cluster in).
    let Err(e) = Node::start(keyed("dd-other", &tribe::SecretKey::generate())).await else {
        panic!("started with another node's data dir");
    };
    assert!(matches!(e, tribe::Error::Config(_)), "{e}");
    assert!(
        e.to_string().contains("belongs to node \"dd-owner\""),
        "{e}"
    );
    assert!(files() == before, "a refused start changed the data dir");
    // Its own node still starts with it, and keeps the fact it set.
    let again = Node::start(keyed("dd-owner", &key)).await.unwrap();
    let me = again
        .members()
        .into_iter()
        .find(|m| m.name == "dd-owner")
        .unwrap();
    assert_eq!(me.facts.get("owner").map(String::as_str), Some("dd-owner"));
    again.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// `n` nodes `{prefix}0..`, each with a data dir under `dir`, seeded with
/// the first, converged; their names too.
async fn tribe_with_data_dirs(
    dir: &std::path::Path,
    prefix: &str,
    n: usize,
) -> (Vec<String>, Vec<Node>) {
    let names: Vec<String> = (0..n).map(|i| format!("{prefix}{i}")).collect();
    let mut nodes: Vec<Node> = Vec::new();
    for name in &names {
        let mut cfg = config(name, dir, "127.0.0.1:0".parse().unwrap());
        cfg.seeds = nodes.first().map(|n| vec![n.addr()]).unwrap_or_default();
        nodes.push(Node::start(cfg).await.unwrap());
    }
    wait_converged_members(&nodes, n).await;
    (names, nodes)
}

/// A rolling restart of the whole tribe without seeds: the nodes stop one
/// by one (each seeing the earlier ones leave) and come back in the same
/// order, a moment apart. Each kept every member it knew, those that had
/// left too, so each finds whichever came back first, and the tribe comes
/// back as one, not as islands of the nodes that happened to know each
/// other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_without_seeds_comes_back_as_one_tribe() {
    let dir = scratch("rolling");
    let (names, nodes) = tribe_with_data_dirs(&dir, "dd-roll", 5).await;
    let addrs: Vec<_> = nodes.iter().map(Node::addr).collect();
    for (i, node) in nodes.iter().enumerate() {
        node.shutdown().await.unwrap();
        // The others see it leave before the next one stops.
        for other in &nodes[i + 1..] {
            let name = node.name().to_string();
            wait_for("the leave seen", Duration::from_secs(10), || {
                other
                    .members()
                    .iter()
                    .any(|m| m.name == name && m.state == MemberState::Left)
            })
            .await;
        }
    }
    let mut back: Vec<Node> = Vec::new();
    for (name, addr) in names.iter().zip(&addrs) {
        back.push(Node::start(config(name, &dir, *addr)).await.unwrap());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    wait_for("one tribe again", Duration::from_secs(15), || {
        back.iter().all(|n| n.members_alive() == 5)
    })
    .await;
    for n in &back {
        n.shutdown().await.unwrap();
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Two nodes come back first and find each other; the two others come
/// back later at their addresses but afresh (new data dirs) and find only
/// each other. The first two keep trying the peers their data dirs kept
/// that they have not met since, and the two islands merge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_peers_not_met_since_a_restart_are_tried_again_and_islands_merge() {
    let dir = scratch("islands");
    let (names, nodes) = tribe_with_data_dirs(&dir, "dd-isle", 4).await;
    let addrs: Vec<_> = nodes.iter().map(Node::addr).collect();
    for node in &nodes {
        node.shutdown().await.unwrap();
    }
    // 0 and 1 come back, seeded with each other.
    let mut first = Vec::new();
    for (i, other) in [(0, 1), (1, 0)] {
        let mut cfg = config(&names[i], &dir, addrs[i]);
        cfg.seeds = vec![addrs[other]];
        first.push(Node::start(cfg).await.unwrap());
    }
    wait_converged_members(&first, 2).await;
    // 2 and 3 come back afresh, seeded with each other only.
    let mut later = Vec::new();
    for (i, other) in [(2, 3), (3, 2)] {
        let _ = std::fs::remove_dir_all(dir.join(&names[i]));
        let mut cfg = config(&names[i], &dir, addrs[i]);
        cfg.seeds = vec![addrs[other]];
        later.push(Node::start(cfg).await.unwrap());
    }
    wait_for("the islands merged", Duration::from_secs(15), || {
        first.iter().chain(&later).all(|n| n.members_alive() == 4)
    })
    .await;
    for n in first.iter().chain(&later) {
        n.shutdown().await.unwrap();
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A tribe whose clocks all ran 2 h fast is stopped, its clocks set right
/// and restarted from its data dirs: each node takes its own kept history
/// and its peers' generations of that time (before, each refused both as
/// beyond the clock horizon, rewrote its state file empty and stayed apart
/// from the other), and new writes still win over the old ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tribe_whose_clocks_ran_fast_restarts_with_its_history_after_they_are_set_right() {
    let dir = scratch("fastclock");
    let fast = || {
        let faults = std::sync::Arc::new(tribe::runtime::Faults::default());
        faults.set_clock_offset(2 * 3600 * 1000);
        faults
    };
    let any = "127.0.0.1:0".parse().unwrap();
    let a = Node::start_with_faults(config("dd-fa", &dir, any), fast())
        .await
        .unwrap();
    let mut c_cfg = config("dd-fc", &dir, any);
    c_cfg.seeds = vec![a.addr()];
    let c = Node::start_with_faults(c_cfg, fast()).await.unwrap();
    a.create_tribe("fast").await.unwrap();
    a.add_policy("all", "fast", "true").await.unwrap();
    wait_for("the tribe everywhere", Duration::from_secs(10), || {
        [&a, &c]
            .iter()
            .all(|n| n.tribe("fast").is_some_and(|t| t.members.len() == 2))
    })
    .await;
    let (a_addr, c_addr) = (a.addr(), c.addr());
    // Two save ticks, so both data dirs hold it all.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    a.shutdown().await.unwrap();
    c.shutdown().await.unwrap();

    let a = Node::start(config("dd-fa", &dir, a_addr)).await.unwrap();
    let c = Node::start(config("dd-fc", &dir, c_addr)).await.unwrap();
    wait_for(
        "the restarted nodes meet, with their tribe",
        Duration::from_secs(20),
        || {
            sees_alive(&a, "dd-fc")
                && sees_alive(&c, "dd-fa")
                && [&a, &c]
                    .iter()
                    .all(|n| n.tribe("fast").is_some_and(|t| t.members.len() == 2))
        },
    )
    .await;
    assert_eq!(a.counters().clock_drift_rejections, 0);
    // A removal now outranks the writes of the fast hours.
    c.remove_policy("all").await.unwrap();
    wait_for("the removal on both", Duration::from_secs(10), || {
        a.policies().is_empty() && c.policies().is_empty()
    })
    .await;
    a.shutdown().await.unwrap();
    c.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A data dir removed under a running node and taken by another node: the
/// first stops writing into it (its lock file is not the one it holds),
/// so the directory holds the second node's state alone (both wrote it in
/// turn before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_data_dir_was_removed_and_taken_writes_no_more_into_it() {
    let dir = scratch("taken");
    let any = "127.0.0.1:0".parse().unwrap();
    let path = dir.join("dd-first");
    let first = Node::start(config("dd-first", &dir, any)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    std::fs::remove_dir_all(&path).unwrap();
    let mut cfg = config("dd-second", &dir, any);
    cfg.data_dir = Some(path.clone());
    let second = Node::start(cfg).await.unwrap();
    first.set_fact("who", "first").await.unwrap();
    second.set_fact("who", "second").await.unwrap();
    wait_for(
        "the first node's writes refused",
        Duration::from_secs(10),
        || first.counters().data_dir_errors > 0,
    )
    .await;
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let state = std::fs::read_to_string(path.join("node-state.json")).unwrap();
        assert!(state.contains("\"dd-second\""), "not the second node's");
        assert!(
            !state.contains("\"dd-first\""),
            "the first node wrote into it"
        );
    }
    // The first's last state went nowhere, which its stop says.
    let stopped = first.shutdown().await;
    assert!(matches!(stopped, Err(tribe::Error::Io(_))), "{stopped:?}");
    second.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A node restarted from its data dir while a plugin of its tribe was
/// unloaded and another tribe deleted holds its view until its first
/// exchange: it does not load what is gone, only to unload it a moment
/// later (an agent would have started a collector for nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_does_not_load_what_was_removed_while_it_was_down() {
    let dir = scratch("removed");
    let any = "127.0.0.1:0".parse().unwrap();
    let keeper = Node::start(config("dd-keeper", &dir, any)).await.unwrap();
    let mut cfg = config("dd-back", &dir, any);
    cfg.seeds = vec![keeper.addr()];
    let node = Node::start(cfg.clone()).await.unwrap();
    wait_converged_members(&[keeper.clone(), node.clone()], 2).await;
    for tribe in ["stays", "goes"] {
        keeper.create_tribe(tribe).await.unwrap();
        keeper.join(tribe, "dd-back").await.unwrap();
    }
    for plugin in ["kept", "unloaded"] {
        keeper
            .load_plugin("stays", plugin, "1", tribe::PluginKind::Collector, None)
            .await
            .unwrap();
    }
    keeper
        .load_plugin("goes", "gone", "1", tribe::PluginKind::Collector, None)
        .await
        .unwrap();
    wait_for("the catalog on the node", Duration::from_secs(20), || {
        node.tribe("stays").is_some_and(|t| t.plugins.len() == 2) && node.tribe("goes").is_some()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(2500)).await; // saved
    cfg.bind = node.addr();
    node.abort().await;
    keeper
        .unload_plugin("stays", "unloaded", "1")
        .await
        .unwrap();
    keeper.delete_tribe("goes").await.unwrap();

    cfg.seeds = Vec::new(); // back through the peer its data dir keeps
    let node = Node::start(cfg).await.unwrap();
    let mut events = node.events();
    wait_for("the node caught up", Duration::from_secs(20), || {
        node.tribe("goes").is_none() && node.tribe("stays").is_some_and(|t| t.plugins.len() == 1)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut loaded = Vec::new();
    while let Some(e) = events.try_next() {
        if let tribe::Event::PluginLoad(p) = e {
            loaded.push(p.name);
        }
    }
    assert_eq!(loaded, ["kept"], "plugins loaded at the restart");
    keeper.shutdown().await.unwrap();
    node.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A data dir whose start time of the node is far ahead of any clock (a
/// damaged or edited file, 40 days) does not become the node's identity:
/// its peers would refuse it as from beyond their horizon, and it would
/// never rejoin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_far_future_start_time_in_the_data_dir_does_not_keep_the_node_out() {
    let dir = scratch("far-generation");
    let any = "127.0.0.1:0".parse().unwrap();
    let keeper = Node::start(test_config("dd-keeper")).await.unwrap();
    let mut cfg = config("dd-ahead", &dir, any);
    cfg.seeds = vec![keeper.addr()];
    let node = Node::start(cfg.clone()).await.unwrap();
    wait_converged_members(&[keeper.clone(), node.clone()], 2).await;
    tokio::time::sleep(Duration::from_millis(1500)).await; // saved
    cfg.bind = node.addr();
    node.shutdown().await.unwrap();
    let file = dir.join("dd-ahead").join("node-state.json");
    let mut state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let generation = state["generation"].as_u64().expect("a generation kept");
    state["generation"] = (generation + 40 * 24 * 3600 * 1000).into();
    std::fs::write(&file, state.to_string()).unwrap();
    let node = Node::start(cfg).await.unwrap();
    wait_for(
        "the node back in the tribe",
        Duration::from_secs(20),
        || sees_alive(&keeper, "dd-ahead") && sees_alive(&node, "dd-keeper"),
    )
    .await;
    node.shutdown().await.unwrap();
    keeper.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A stop waits a bounded time for a slow or hung data dir (a supervisor's
/// stop timeout would kill it first), says the last state was not saved,
/// and a restart finds the lock held until that write ends. (It waited
/// for every write under way and one more: 27 s on a disk that took 15 s a
/// write.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_waits_a_bounded_time_for_a_hung_data_dir() {
    logged();
    let dir = scratch("hungdisk");
    let faults = std::sync::Arc::new(tribe::runtime::Faults::default());
    let cfg = config("dd-hung", &dir, "127.0.0.1:0".parse().unwrap());
    let node = Node::start_with_faults(cfg.clone(), faults.clone())
        .await
        .unwrap();
    faults.delay_saves(Duration::from_secs(30));
    node.set_fact("round", "1").await.unwrap();
    let began = std::time::Instant::now();
    let stopped = node.shutdown().await;
    let took = began.elapsed();
    assert!(
        matches!(&stopped, Err(tribe::Error::Io(why)) if why.contains("last state")),
        "{stopped:?}"
    );
    // Said once: the stop is done.
    node.shutdown().await.unwrap();
    assert!(took < Duration::from_secs(20), "the stop took {took:?}");
    assert!(
        logged().contains("the data dir did not take the node's last state"),
        "no word of the lost save"
    );
    // The write still under way holds the data dir.
    let again = Node::start(cfg).await.err();
    assert!(
        again.is_some_and(|e| e.to_string().contains("in use")),
        "a second node took the data dir while a write was under way"
    );
    drop(node);
}

/// A node killed, then every other node stopped and started again from its
/// data dir (an upgrade): the data dirs keep its memberships by hand but no
/// node record, and no member table lists it. Its memberships are reaped
/// after reap_after all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memberships_of_a_node_that_died_before_a_stop_all_start_all_are_reaped() {
    let dir = scratch("upgrade-reap");
    let any = "127.0.0.1:0".parse().unwrap();
    let a = Node::start(config("ur-a", &dir, any)).await.unwrap();
    let mut cfg = config("ur-b", &dir, any);
    cfg.seeds = vec![a.addr()];
    let b = Node::start(cfg).await.unwrap();
    let mut cfg = config("ur-c", &dir, any);
    cfg.seeds = vec![a.addr()];
    let c = Node::start(cfg).await.unwrap();
    let three = [a.clone(), b.clone(), c.clone()];
    wait_converged_members(&three, 3).await;
    a.create_tribe("s").await.unwrap();
    a.join("s", "ur-c").await.unwrap();
    wait_for("ur-c is in s everywhere", Duration::from_secs(20), || {
        three
            .iter()
            .all(|n| n.tribe("s").is_some_and(|t| t.explicit_members == ["ur-c"]))
    })
    .await;
    c.abort().await;
    let (a_addr, b_addr) = (a.addr(), b.addr());
    b.shutdown().await.unwrap();
    a.shutdown().await.unwrap();

    let a = Node::start(config("ur-a", &dir, a_addr)).await.unwrap();
    let b = Node::start(config("ur-b", &dir, b_addr)).await.unwrap();
    let two = [a.clone(), b.clone()];
    wait_converged_members(&two, 2).await;
    for n in &two {
        assert!(
            n.tribe("s").is_some_and(|t| t.explicit_members == ["ur-c"]),
            "{:?}",
            n.tribe("s")
        );
        assert!(n.members().iter().all(|m| m.name != "ur-c"));
    }
    wait_for(
        "ur-c's membership reaped everywhere",
        Duration::from_secs(30),
        || {
            two.iter()
                .all(|n| n.tribe("s").is_some_and(|t| t.explicit_members.is_empty()))
        },
    )
    .await;
    for n in two {
        n.shutdown().await.unwrap();
    }
    let _ = std::fs::remove_dir_all(&dir);
}
