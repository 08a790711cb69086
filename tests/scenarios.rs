//! Multi-node scenarios on 127.0.0.1 (issue: core). Each starts real nodes
//! with real UDP and TCP sockets.
mod common;

use std::time::Duration;

use common::*;
use tribe::{Event, MemberState, Node, PluginKind, TaskState};

const LONG: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anti_entropy_alone_spreads_tribe_plugin_and_task() {
    let nodes = start_cluster("ae", 5, |cfg| cfg.gossip_deltas = false).await;
    wait_converged_members(&nodes, 5).await;
    let writer = &nodes[2];
    writer.create_tribe("metrics").await.unwrap();
    writer
        .load_plugin("metrics", "psutil", "2", PluginKind::Collector, None)
        .await
        .unwrap();
    writer
        .add_task(
            "metrics",
            "cpu-task",
            r#"{"schedule":{"interval":"5s"}}"#,
            TaskState::Running,
        )
        .await
        .unwrap();
    wait_for("catalog on every node", LONG, || {
        nodes.iter().all(|n| {
            n.tribe("metrics")
                .is_some_and(|t| t.plugins.len() == 1 && t.tasks.len() == 1)
        })
    })
    .await;
    wait_same_digest(&nodes).await;
    // Nothing travelled as a gossip delta: only anti-entropy did it.
    assert!(nodes.iter().all(|n| n.counters().deltas_broadcast == 0));
    assert!(nodes.iter().any(|n| n.counters().push_pulls_completed > 0));
    for n in &nodes {
        n.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joiners_inherit_the_seed_catalog() {
    let seed_only = start_cluster("inherit", 1, |_| {}).await;
    let seed = &seed_only[0];
    seed.create_tribe("web").await.unwrap();
    for (name, kind) in [
        ("nginx", PluginKind::Collector),
        ("influx", PluginKind::Publisher),
    ] {
        seed.load_plugin("web", name, "1", kind, None)
            .await
            .unwrap();
    }
    for id in ["t1", "t2"] {
        seed.add_task(
            "web",
            id,
            r#"{"collect":{"plugin":"nginx"}}"#,
            TaskState::Running,
        )
        .await
        .unwrap();
    }
    let mut nodes = seed_only.clone();
    for i in 1..5 {
        let mut cfg = test_config(&format!("inherit{i}"));
        cfg.seeds = vec![seed.addr()];
        nodes.push(tribe::Node::start(cfg).await.unwrap());
    }
    wait_converged_members(&nodes, 5).await;
    let expected = seed.tribe("web").unwrap();
    wait_for(
        "every joiner has the seed's tribe and catalog",
        LONG,
        || {
            nodes.iter().all(|n| {
                n.tribe("web")
                    .is_some_and(|t| t.plugins == expected.plugins && t.tasks == expected.tasks)
            })
        },
    )
    .await;
    wait_same_digest(&nodes).await;
    for n in &nodes {
        n.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leave_drops_out_of_live_views_and_crash_is_failed_then_reaped() {
    let nodes = start_cluster("lv", 5, |_| {}).await;
    wait_converged_members(&nodes, 5).await;
    nodes[0].create_tribe("all").await.unwrap();
    for n in &nodes {
        nodes[0].join("all", n.name()).await.unwrap();
    }
    wait_for("tribe 'all' has 5 live members everywhere", LONG, || {
        nodes
            .iter()
            .all(|n| n.tribe("all").is_some_and(|t| t.members.len() == 5))
    })
    .await;

    let mut watch = nodes[0].events();
    // Graceful leave: peers record *left*, not failed.
    nodes[4].shutdown().await.unwrap();
    let rest = &nodes[..4];
    wait_for(
        "node lv4 is left everywhere and out of the live view",
        LONG,
        || {
            rest.iter().all(|n| {
                n.members()
                    .iter()
                    .any(|m| m.name == "lv4" && m.state == MemberState::Left)
                    && n.tribe("all")
                        .is_some_and(|t| !t.members.contains(&"lv4".to_string()))
            })
        },
    )
    .await;

    // Crash: peers record *failed*, then reap it.
    nodes[3].abort().await;
    let rest = &nodes[..3];
    wait_for("node lv3 is failed everywhere", LONG, || {
        rest.iter().all(|n| {
            n.members()
                .iter()
                .any(|m| m.name == "lv3" && m.state == MemberState::Failed)
                && n.tribe("all").is_some_and(|t| t.members.len() == 3)
        })
    })
    .await;
    wait_for("node lv3 and lv4 reaped everywhere", LONG, || {
        rest.iter().all(|n| {
            n.members()
                .iter()
                .all(|m| m.name != "lv3" && m.name != "lv4")
        })
    })
    .await;
    // Their memberships by hand go with them (they piled up with churn).
    wait_for("reaped nodes' memberships deleted", LONG, || {
        rest.iter().all(|n| {
            n.tribe("all")
                .is_some_and(|t| t.explicit_members == ["lv0", "lv1", "lv2"])
        })
    })
    .await;
    let seen = collect_until(&mut watch, LONG, |seen| {
        seen.contains(&Event::MemberReaped { name: "lv3".into() })
    })
    .await;
    assert!(
        seen.contains(&Event::MemberLeft { name: "lv4".into() }),
        "{seen:#?}"
    );
    assert!(
        seen.contains(&Event::MemberFailed { name: "lv3".into() }),
        "{seen:#?}"
    );
    assert!(
        !seen.contains(&Event::MemberFailed { name: "lv4".into() }),
        "{seen:#?}"
    );
    for n in rest {
        n.shutdown().await.unwrap();
    }
}

/// A node whose record is too large for gossip (many facts) leaves
/// gracefully: its peers tell a leave, never a failure first (its record
/// saying so came by TCP after foca's down notice, which was told as a
/// failure at once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_leave_of_a_node_with_a_large_record_is_no_failure() {
    let nodes = start_cluster("big-lv", 4, |cfg| {
        if cfg.name == "big-lv3" {
            for i in 0..30 {
                cfg.facts
                    .insert(format!("label_{i:02}"), format!("value-{i:02}-0123456789"));
            }
        }
    })
    .await;
    wait_converged_members(&nodes, 4).await;
    let mut watches: Vec<_> = nodes[..3].iter().map(|n| n.events()).collect();
    nodes[3].shutdown().await.unwrap();
    let rest = &nodes[..3];
    wait_for("big-lv3 left everywhere", LONG, || {
        rest.iter().all(|n| {
            n.members()
                .iter()
                .any(|m| m.name == "big-lv3" && m.state == MemberState::Left)
        })
    })
    .await;
    for watch in &mut watches {
        // Past the wait of a failure for a record saying it left.
        let mut seen = Vec::new();
        let until = tokio::time::Instant::now() + Duration::from_secs(5);
        while let Ok(Some(e)) = tokio::time::timeout_at(until, watch.next()).await {
            seen.push(e);
        }
        assert!(
            seen.contains(&Event::MemberLeft {
                name: "big-lv3".into()
            }),
            "{seen:#?}"
        );
        assert!(
            !seen.contains(&Event::MemberFailed {
                name: "big-lv3".into()
            }),
            "{seen:#?}"
        );
    }
    for n in rest {
        n.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_joiner_of_a_tribe_gets_plugin_and_task_events() {
    let mut nodes = start_cluster("late", 5, |_| {}).await;
    wait_converged_members(&nodes, 5).await;
    let admin = &nodes[1];
    admin.create_tribe("db").await.unwrap();
    admin
        .load_plugin("db", "pg", "3", PluginKind::Collector, None)
        .await
        .unwrap();
    admin
        .add_task(
            "db",
            "pg-stats",
            r#"{"collect":{"plugin":"pg"}}"#,
            TaskState::Running,
        )
        .await
        .unwrap();
    wait_same_digest(&nodes).await;

    let mut cfg = test_config("late5");
    cfg.seeds = vec![nodes[0].addr()];
    let late = tribe::Node::start(cfg).await.unwrap();
    let mut events = late.events();
    nodes.push(late.clone());
    wait_converged_members(&nodes, 6).await;
    nodes[2].join("db", "late5").await.unwrap();
    let seen = collect_until(&mut events, LONG, |seen| {
        seen.iter()
            .any(|e| matches!(e, Event::PluginLoad(p) if p.name == "pg"))
            && seen
                .iter()
                .any(|e| matches!(e, Event::TaskRun(t) if t.id == "pg-stats"))
    })
    .await;
    assert!(seen
        .iter()
        .any(|e| matches!(e, Event::TribeJoined { tribe, by } if tribe == "db" && by.by_hand)));

    // Stopping the task reaches the late joiner as TaskStop, with its new state.
    nodes[3]
        .set_task_state("db", "pg-stats", TaskState::Stopped)
        .await
        .unwrap();
    collect_until(&mut events, LONG, |seen| {
        seen.iter()
            .any(|e| matches!(e, Event::TaskStop(t) if t.id == "pg-stats" && t.state == TaskState::Stopped))
    })
    .await;
    for n in &nodes {
        n.shutdown().await.unwrap();
    }
}

fn in_tribe(node: &tribe::Node, tribe: &str, member: &str) -> bool {
    node.tribe(tribe)
        .is_some_and(|t| t.members.iter().any(|m| m == member))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_place_nodes_and_follow_fact_changes() {
    // n0, n1, n2: ubuntu; n1 and n3: storage tier; n4: neither.
    let facts = |i: usize| -> Vec<(&'static str, &'static str)> {
        let mut f = vec![("os_dist", if i <= 2 { "ubuntu" } else { "centos" })];
        if i == 1 || i == 3 {
            f.push(("storage_tier", "true"));
        }
        f
    };
    let nodes = start_cluster("pol", 5, |cfg| {
        let i: usize = cfg.name["pol".len()..].parse().unwrap();
        for (k, v) in facts(i) {
            cfg.facts.insert(k.into(), v.into());
        }
    })
    .await;
    wait_converged_members(&nodes, 5).await;
    nodes[4].create_tribe("core").await.unwrap();
    nodes[4]
        .add_policy("core", "core", r#"facts.os_dist == "ubuntu""#)
        .await
        .unwrap();
    // The storage tribe does not exist: the policy creates it.
    nodes[4]
        .add_policy("storage", "storage", r#"facts.storage_tier == "true""#)
        .await
        .unwrap();
    let expect = |tribe: &str, members: &[&str]| {
        let members: Vec<String> = members.iter().map(|s| s.to_string()).collect();
        let tribe = tribe.to_string();
        let nodes = nodes.clone();
        move || {
            nodes
                .iter()
                .all(|n| n.tribe(&tribe).is_some_and(|t| t.members == members))
        }
    };
    wait_for(
        "core = pol0..2",
        LONG,
        expect("core", &["pol0", "pol1", "pol2"]),
    )
    .await;
    wait_for(
        "storage = pol1, pol3",
        LONG,
        expect("storage", &["pol1", "pol3"]),
    )
    .await;

    // A fact change moves a node: pol4 becomes ubuntu, pol1 leaves storage.
    nodes[4].set_fact("os_dist", "ubuntu").await.unwrap();
    nodes[1].set_fact("storage_tier", "false").await.unwrap();
    wait_for(
        "core gains pol4",
        LONG,
        expect("core", &["pol0", "pol1", "pol2", "pol4"]),
    )
    .await;
    wait_for("storage loses pol1", LONG, expect("storage", &["pol3"])).await;

    // Membership by hand is never removed by a policy.
    nodes[0].join("storage", "pol0").await.unwrap();
    wait_for(
        "pol0 in storage by hand",
        LONG,
        expect("storage", &["pol0", "pol3"]),
    )
    .await;
    nodes[0].remove_policy("storage").await.unwrap();
    wait_for(
        "only the hand member stays",
        LONG,
        expect("storage", &["pol0"]),
    )
    .await;

    // A bad expression is refused locally, with a position, and never spreads.
    let err = nodes[2]
        .add_policy("bad", "core", r#"facts.os_dist == "#)
        .await
        .unwrap_err();
    assert!(
        matches!(err, tribe::Error::InvalidPolicy(ref e) if e.line.is_some()),
        "{err}"
    );
    // The compiler's error is the source, for `?` chains that walk it.
    let source = std::error::Error::source(&err).map(ToString::to_string);
    assert!(source.is_some_and(|s| s.contains("line")), "{err:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(nodes
        .iter()
        .all(|n| n.policies().iter().all(|p| p.name != "bad")));
    for n in &nodes {
        n.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_node_rejoins_and_is_readded_by_policy() {
    let mut nodes = start_cluster("rs", 4, |cfg| {
        cfg.facts.insert("role".into(), "edge".into());
    })
    .await;
    wait_converged_members(&nodes, 4).await;
    nodes[0]
        .add_policy("edges", "edge", r#"facts.role == "edge""#)
        .await
        .unwrap();
    wait_for("edge has 4 members", LONG, || {
        nodes
            .iter()
            .all(|n| n.tribe("edge").is_some_and(|t| t.members.len() == 4))
    })
    .await;

    // Crash rs3; while it is down the edge catalog changes.
    nodes[3].abort().await;
    nodes[1]
        .load_plugin("edge", "nginx", "1", PluginKind::Collector, None)
        .await
        .unwrap();
    // Restart it under the same name on a new port.
    let mut cfg = test_config("rs3");
    cfg.facts.insert("role".into(), "edge".into());
    cfg.seeds = vec![nodes[0].addr()];
    let restarted = tribe::Node::start(cfg).await.unwrap();
    let mut events = restarted.events();
    nodes[3] = restarted.clone();
    wait_for(
        "everyone sees the new rs3 alive at its new address",
        LONG,
        || {
            nodes.iter().all(|n| {
                n.members().iter().any(|m| {
                    m.name == "rs3" && m.state == MemberState::Alive && m.addr == restarted.addr()
                })
            })
        },
    )
    .await;
    wait_for("rs3 back in edge everywhere", LONG, || {
        nodes.iter().all(|n| in_tribe(n, "edge", "rs3"))
    })
    .await;
    // It gets the current truth: the plugin loaded while it was down.
    collect_until(&mut events, LONG, |seen| {
        seen.iter()
            .any(|e| matches!(e, Event::PluginLoad(p) if p.name == "nginx"))
    })
    .await;
    wait_same_digest(&nodes).await;
    for n in &nodes {
        n.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_heals_with_no_write_lost() {
    let nodes = start_cluster("pt", 6, |_| {}).await;
    wait_converged_members(&nodes, 6).await;
    let (left, right) = nodes.split_at(3);
    for a in left {
        for b in right {
            a.faults().block(b.addr());
            b.faults().block(a.addr());
        }
    }
    wait_for("each side sees 3 alive", LONG, || {
        nodes.iter().all(|n| n.members_alive() == 3)
    })
    .await;
    // Writes on both sides during the partition.
    left[0].create_tribe("left-side").await.unwrap();
    left[1].set_fact("zone", "a").await.unwrap();
    right[0].create_tribe("right-side").await.unwrap();
    right[2]
        .add_policy("zoned", "zoned", r#"has(facts.zone)"#)
        .await
        .unwrap();
    for n in &nodes {
        n.faults().heal();
    }
    wait_converged_members(&nodes, 6).await;
    wait_same_digest(&nodes).await;
    // Placements by the policy are made, then gossiped, after it arrives.
    wait_for("every node sees the merged state", LONG, || {
        nodes.iter().all(|n| {
            n.tribe("left-side").is_some()
                && n.tribe("right-side").is_some()
                && n.policies().iter().any(|p| p.name == "zoned")
                && in_tribe(n, "zoned", "pt1")
        })
    })
    .await;
    for n in &nodes {
        n.shutdown().await.unwrap();
    }
}

/// A graceful leave is the goodbye, not a restart: the answer to the
/// goodbye sync lists the leaver as down, and feeding that back to its own
/// membership protocol made it rejoin under a new generation, so in a small
/// cluster peers saw it alive again until suspicion ran out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_leave_does_not_come_back_as_a_new_generation() {
    for size in [2, 3] {
        let nodes = start_cluster(&format!("bye{size}-"), size, |_| {}).await;
        wait_converged_members(&nodes, size).await;
        let leaver = nodes[size - 1].name().to_string();
        let generation = nodes[0]
            .members()
            .iter()
            .find(|m| m.name == leaver)
            .map(|m| m.generation)
            .unwrap();
        nodes[size - 1].shutdown().await.unwrap();
        wait_for(&format!("{leaver} is left"), LONG, || {
            nodes[0]
                .members()
                .iter()
                .any(|m| m.name == leaver && m.state == MemberState::Left)
        })
        .await;
        // It stays left, with the generation it had: no rejoin.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        for n in &nodes[..size - 1] {
            let m = n.members().into_iter().find(|m| m.name == leaver).unwrap();
            assert_eq!(m.state, MemberState::Left, "{} sees {leaver}", n.name());
            assert_eq!(m.generation, generation, "{} sees {leaver}", n.name());
        }
        for n in &nodes[..size - 1] {
            n.shutdown().await.unwrap();
        }
    }
}

/// A node whose SWIM goodbye never reached a peer (its datagrams were lost,
/// or went to members going down with it) is still *left* there at once:
/// its goodbye sync carries its record marked left, which takes it down as
/// left, rather than leaving it alive or suspect until suspicion runs out
/// (60 s here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_goodbye_that_arrives_only_by_sync_makes_the_node_left_at_once() {
    let long_suspicion = |cfg: &mut tribe::Config| {
        let mut t = cfg.effective_timings();
        t.suspicion_mult = 60;
        t.reap_after = Duration::from_secs(600);
        cfg.timings = Some(t);
    };
    let nodes = start_cluster("gs", 2, long_suspicion).await;
    wait_converged_members(&nodes, 2).await;
    let (observer, leaver) = (&nodes[0], &nodes[1]);
    // The observer hears no datagram from the leaver any more; streams
    // the leaver opens still reach it.
    observer.faults().block(leaver.addr());
    leaver.shutdown().await.unwrap();
    wait_for(
        "the leaver is left at the observer",
        Duration::from_secs(20),
        || {
            observer
                .members()
                .iter()
                .any(|m| m.name == leaver.name() && m.state == MemberState::Left)
        },
    )
    .await;
    observer.shutdown().await.unwrap();
}

/// A crashed node's address refuses connections: the suspicion is confirmed
/// and the node declared failed long before the suspicion timeout (60 s
/// here). A node cut off by a partition (no refusal) stays alive or
/// suspect for that while, so it is not declared failed early.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_confirms_a_suspect_but_a_partition_does_not() {
    let long_suspicion = |cfg: &mut tribe::Config| {
        let mut t = cfg.effective_timings();
        t.suspicion_mult = 60;
        t.reap_after = Duration::from_secs(600);
        cfg.timings = Some(t);
    };
    let nodes = start_cluster("sc", 5, long_suspicion).await;
    wait_converged_members(&nodes, 5).await;

    // Partition sc4 from everyone: suspected, never refused.
    for n in &nodes[..4] {
        n.faults().block(nodes[4].addr());
        nodes[4].faults().block(n.addr());
    }
    // Crash sc3: its port refuses connections.
    nodes[3].abort().await;
    let rest = &nodes[..3];
    wait_for(
        "sc3 failed everywhere, well within the suspicion timeout",
        Duration::from_secs(20),
        || {
            rest.iter().all(|n| {
                n.members()
                    .iter()
                    .any(|m| m.name == "sc3" && m.state == MemberState::Failed)
            })
        },
    )
    .await;
    let confirmed: u64 = rest.iter().map(|n| n.counters().suspects_confirmed).sum();
    assert!(
        confirmed >= 1,
        "no suspect was confirmed by a refused connection"
    );
    // By now sc4 has been suspected too, for as long, and is not failed.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for n in rest {
        let state = n
            .members()
            .into_iter()
            .find(|m| m.name == "sc4")
            .map(|m| m.state);
        assert_ne!(
            state,
            Some(MemberState::Failed),
            "{} declared the partitioned sc4 failed early",
            n.name()
        );
    }
    for n in &nodes[..3] {
        n.shutdown().await.unwrap();
    }
    nodes[4].abort().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joiner_is_placed_by_policy_at_once_while_crashed_members_are_not_yet_found_out() {
    // LAN timings: anti-entropy only every 30 s, crashes found out in
    // seconds. The joiners learn the crashed members from their seed and
    // gossip to them as much as to the seed.
    let lan = |name: &str| {
        let mut cfg = test_config(name);
        cfg.profile = tribe::Profile::Lan;
        cfg.timings = None;
        cfg
    };
    let seed = tribe::Node::start(lan("jc-seed")).await.unwrap();
    seed.add_policy("all", "t", "true").await.unwrap();
    let mut crashed = Vec::new();
    for i in 0..10 {
        let mut cfg = lan(&format!("jc-crash-{i}"));
        cfg.seeds = vec![seed.addr()];
        crashed.push(tribe::Node::start(cfg).await.unwrap());
    }
    wait_for("every node in t", Duration::from_secs(30), || {
        seed.tribe("t").is_some_and(|t| t.members.len() == 11)
    })
    .await;
    for node in crashed {
        node.abort().await;
    }
    let mut joiners = Vec::new();
    for i in 0..5 {
        let name = format!("jc-new-{i}");
        let mut cfg = lan(&name);
        cfg.seeds = vec![seed.addr()];
        joiners.push(tribe::Node::start(cfg).await.unwrap());
        // One in two waited for anti-entropy (up to 30 s) before.
        wait_for(
            &format!("{name} in t at the seed"),
            Duration::from_secs(10),
            || seed.tribe("t").is_some_and(|t| t.members.contains(&name)),
        )
        .await;
    }
    for node in joiners {
        node.shutdown().await.unwrap();
    }
    seed.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_leaving_at_the_same_moment_are_all_seen_as_left() {
    // A host's collectors, or a fleet stopped at once: each goodbye must
    // reach the one node that stays, not only peers that are leaving too.
    let nodes = start_cluster("mass", 13, |_| {}).await;
    wait_converged_members(&nodes, 13).await;
    let (stays, leaving) = nodes.split_first().unwrap();
    for result in futures_util::future::join_all(leaving.iter().map(|n| n.shutdown())).await {
        result.unwrap();
    }
    wait_for("every leaver down where one node stays", LONG, || {
        stays.members_alive() == 1
    })
    .await;
    let failed: Vec<String> = stays
        .members()
        .into_iter()
        .filter(|m| m.name != stays.name() && m.state != MemberState::Left)
        .map(|m| format!("{} {:?}", m.name, m.state))
        .collect();
    assert!(failed.is_empty(), "seen as not left: {failed:?}");
    stays.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_stopping_together_answer_each_others_goodbye_exchanges() {
    // Each leaver syncs its goodbye with three peers; peers leaving too
    // must still answer, or every stop waits out the leave's deadline.
    logged();
    let nodes = start_cluster("together", 8, |_| {}).await;
    wait_converged_members(&nodes, 8).await;
    for result in futures_util::future::join_all(nodes.iter().map(|n| n.shutdown())).await {
        result.unwrap();
    }
    let unanswered: Vec<String> = logged()
        .lines()
        .filter(|l| l.contains("node=together") && l.contains("goodbye's exchanges"))
        .map(str::to_owned)
        .collect();
    assert!(unanswered.is_empty(), "{unanswered:#?}");
}

/// A node that died while the nodes that saw it fail all restarted (a
/// rolling restart, before `reap_after`) is still forgotten: no member
/// lists it after the restarts, and its record and membership by hand go
/// after `reap_after` all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_died_before_every_restart_is_still_reaped() {
    let mut nodes = start_cluster("rr", 3, |_| {}).await;
    wait_converged_members(&nodes, 3).await;
    nodes[0].create_tribe("s").await.unwrap();
    nodes[0].join("s", "rr2").await.unwrap();
    wait_for("rr2 is in s everywhere", LONG, || {
        nodes
            .iter()
            .all(|n| n.tribe("s").is_some_and(|t| t.members == ["rr2"]))
    })
    .await;
    let ghost = nodes.pop().unwrap();
    ghost.abort().await;
    wait_for("rr2 is failed everywhere", LONG, || {
        nodes.iter().all(|n| {
            n.members()
                .iter()
                .any(|m| m.name == "rr2" && m.state == MemberState::Failed)
        })
    })
    .await;
    // Both restart (each from the other) before the 6 s of reap_after:
    // neither member table lists rr2 any more, its records stay.
    async fn restart(seed: &Node, node: Node) -> Node {
        let (name, addr) = (node.name().to_string(), node.addr());
        node.shutdown().await.unwrap();
        let mut cfg = test_config(&name);
        cfg.bind = addr;
        cfg.seeds = vec![seed.addr()];
        let again = Node::start(cfg).await.unwrap();
        wait_for("the tribe learnt back", LONG, || {
            again
                .tribe("s")
                .is_some_and(|t| t.explicit_members == ["rr2"])
        })
        .await;
        again
    }
    let first = nodes.remove(0);
    let survivor = nodes.pop().unwrap();
    let again = restart(&survivor, first).await;
    let survivor_again = restart(&again, survivor).await;
    let nodes = [again, survivor_again];
    for n in &nodes {
        assert!(
            n.tribe("s").is_some_and(|t| t.explicit_members == ["rr2"]),
            "{:?}",
            n.tribe("s")
        );
        assert!(n.members().iter().all(|m| m.name != "rr2"));
    }
    wait_for("rr2's records reaped everywhere", LONG, || {
        nodes
            .iter()
            .all(|n| n.tribe("s").is_some_and(|t| t.explicit_members.is_empty()))
    })
    .await;
    for n in &nodes {
        n.shutdown().await.unwrap();
    }
}
