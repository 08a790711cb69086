//! API behaviour on small clusters: clear errors, facts, policy errors
//! reported once, IPv6, and separate bind/advertise addresses.
mod common;

use std::time::Duration;

use common::*;
use tribe::{Error, Event, Node, PluginKind, TaskState};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_fail_with_clear_errors() {
    let nodes = start_cluster("err", 2, |_| {}).await;
    wait_converged_members(&nodes, 2).await;
    let n = &nodes[0];
    assert_eq!(
        n.join("nope", "err1").await,
        Err(Error::UnknownTribe("nope".into()))
    );
    n.create_tribe("t").await.unwrap();
    assert_eq!(
        n.create_tribe("t").await,
        Err(Error::TribeExists("t".into()))
    );
    assert_eq!(
        n.join("t", "ghost").await,
        Err(Error::UnknownNode("ghost".into()))
    );
    n.join("t", "err1").await.unwrap();
    assert!(matches!(
        n.join("t", "err1").await,
        Err(Error::AlreadyMember { .. })
    ));
    n.leave("t", "err1").await.unwrap();
    assert!(matches!(
        n.leave("t", "err1").await,
        Err(Error::NotMember { .. })
    ));
    let huge = "x".repeat(1 << 20);
    for bad in ["", "has space", "-dash", &"x".repeat(65), &huge] {
        assert!(
            matches!(n.create_tribe(bad).await, Err(Error::InvalidName { .. })),
            "{bad:?}"
        );
        // A call names a tribe and a plugin as the commands do.
        let second = std::time::Duration::from_secs(1);
        for target in [
            tribe::CallTarget::new(bad, "p", PluginKind::Processor),
            tribe::CallTarget::new("t", bad, PluginKind::Processor),
        ] {
            let err = n.call(&target, Vec::new(), second).await.unwrap_err();
            assert!(matches!(err, Error::InvalidName { .. }), "{err:?}");
            assert!(err.to_string().len() < 300, "the name is not echoed whole");
        }
    }
    assert!(matches!(
        n.load_plugin("ghost", "p", "1", PluginKind::Collector, None)
            .await,
        Err(Error::UnknownTribe(_))
    ));
    n.load_plugin("t", "p", "1", PluginKind::Collector, None)
        .await
        .unwrap();
    assert!(matches!(
        n.load_plugin("t", "p", "1", PluginKind::Collector, None)
            .await,
        Err(Error::PluginExists { .. })
    ));
    assert!(matches!(
        n.unload_plugin("t", "p", "2").await,
        Err(Error::UnknownPlugin { .. })
    ));
    assert!(matches!(
        n.add_task("t", "x", "not json", TaskState::Running).await,
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        n.add_task("t", "x", "[1,2]", TaskState::Running).await,
        Err(Error::InvalidArgument(_))
    ));
    n.add_task("t", "x", "{}", TaskState::Stopped)
        .await
        .unwrap();
    assert!(matches!(
        n.add_task("t", "x", "{}", TaskState::Running).await,
        Err(Error::TaskExists { .. })
    ));
    // The 64 KiB bound is on the compact form every face measures (the
    // agent's admin API compacts a manifest it is given): spacing neither
    // counts nor is kept.
    let spaced = |len: usize| format!("{{ \"pad\" : \"{}\" }}", "x".repeat(len));
    let fits = spaced(64 * 1024 - 10);
    assert!(fits.len() > 64 * 1024);
    n.add_task("t", "spaced", &fits, TaskState::Stopped)
        .await
        .unwrap();
    let kept = n.tribe("t").unwrap().tasks;
    let kept = &kept.iter().find(|t| t.id == "spaced").unwrap().manifest;
    assert_eq!(kept.len(), 64 * 1024);
    assert!(kept.starts_with("{\"pad\":\"x"), "{}", &kept[..20]);
    let err = n
        .add_task("t", "over", &spaced(64 * 1024 - 9), TaskState::Stopped)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("64 KiB"), "{err}");
    // Text over the 1 MiB read before compacting is named as such, not
    // measured as compact JSON it never became.
    let err = n
        .add_task(
            "t",
            "over",
            &format!("{{{}}}", " ".repeat(1 << 20)),
            TaskState::Stopped,
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("task manifest text is 1048578 bytes"),
        "{err}"
    );
    assert!(
        !err.to_string().contains("bytes as compact JSON, more"),
        "{err}"
    );
    // Nesting is bounded (a reply wrapping a manifest near a JSON reader's
    // depth limit was unreadable); 32 deep is kept.
    let nested = |depth: usize| format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth));
    n.add_task("t", "deep32", &nested(32), TaskState::Stopped)
        .await
        .unwrap();
    let err = n
        .add_task("t", "deep33", &nested(33), TaskState::Stopped)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidArgument(m) if m.contains("nests 33 deep, more than the limit of 32")),
        "{err}"
    );
    assert!(matches!(
        n.remove_task("t", "y").await,
        Err(Error::UnknownTask { .. })
    ));
    assert_eq!(
        n.remove_policy("none").await,
        Err(Error::UnknownPolicy("none".into()))
    );
    assert_eq!(
        n.remove_fact("none").await,
        Err(Error::UnknownFact("none".into()))
    );
    assert!(matches!(
        n.set_fact("bad-key", "v").await,
        Err(Error::InvalidArgument(_))
    ));
    n.add_policy("p", "t", "true").await.unwrap();
    assert_eq!(
        n.add_policy("p", "t", "true").await,
        Err(Error::PolicyExists("p".into()))
    );

    // Delete removes the catalog, memberships and policies everywhere.
    n.delete_tribe("t").await.unwrap();
    wait_for(
        "tribe t and its policy gone everywhere",
        Duration::from_secs(10),
        || {
            nodes
                .iter()
                .all(|x| x.tribe("t").is_none() && x.policies().is_empty())
        },
    )
    .await;
    // A tribe recreated under the same name starts empty.
    n.create_tribe("t").await.unwrap();
    wait_for("t recreated everywhere", Duration::from_secs(10), || {
        nodes.iter().all(|x| {
            x.tribe("t")
                .is_some_and(|t| t.plugins.is_empty() && t.tasks.is_empty() && t.members.is_empty())
        })
    })
    .await;
    for x in &nodes {
        x.shutdown().await.unwrap();
    }
    assert_eq!(nodes[0].create_tribe("z").await, Err(Error::ShuttingDown));
}

/// A node holds at most as many facts as peers accept in its record
/// (collected ones included): more are refused where they are given, not
/// accepted here and then refused by every peer, which kept the node's
/// old record (and so nothing it served later).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn facts_beyond_what_peers_accept_are_refused_where_given() {
    let max = 256;
    let many = |n: usize| -> std::collections::BTreeMap<String, String> {
        (0..n).map(|i| (format!("k{i}"), "v".to_string())).collect()
    };
    let mut cfg = test_config("facts-over");
    cfg.facts = many(max + 1);
    assert!(matches!(Node::start(cfg).await, Err(Error::Config(_))));
    // Collected facts count too.
    let mut cfg = test_config("facts-over-collected");
    cfg.facts = many(max);
    cfg.collect_facts = true;
    assert!(matches!(Node::start(cfg).await, Err(Error::Config(_))));

    let nodes = start_cluster("facts-max", 2, |cfg| cfg.facts = many(max)).await;
    wait_converged_members(&nodes, 2).await;
    let full = &nodes[1];
    let refused = full.set_fact("one-more", "v").await;
    assert!(
        matches!(refused, Err(Error::InvalidArgument(_))),
        "{refused:?}"
    );
    // Changing a fact it has is fine, and what it serves reaches peers.
    full.set_fact("k0", "changed").await.unwrap();
    serve_echo(full).await;
    wait_for(
        "the full node's record reaches its peer",
        Duration::from_secs(10),
        || {
            nodes[0].members().iter().any(|m| {
                m.name == full.name()
                    && m.facts.get("k0").map(String::as_str) == Some("changed")
                    && !m.endpoints.is_empty()
            })
        },
    )
    .await;
    for n in &nodes {
        n.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn facts_propagate_and_user_facts_override() {
    let nodes = start_cluster("facts", 3, |cfg| {
        cfg.collect_facts = true;
    })
    .await;
    wait_converged_members(&nodes, 3).await;
    let collected = tribe::facts::collect();
    let kernel = collected
        .get("kernel")
        .cloned()
        .expect("kernel collected on Linux");
    let member = |name: &str| {
        nodes[2]
            .members()
            .into_iter()
            .find(|m| m.name == name)
            .unwrap()
    };
    wait_for("collected facts visible", Duration::from_secs(10), || {
        member("facts0").facts.get("kernel") == Some(&kernel)
    })
    .await;
    nodes[0].set_fact("kernel", "custom").await.unwrap();
    nodes[0].set_fact("rack", "r7").await.unwrap();
    wait_for(
        "user facts visible and override",
        Duration::from_secs(10),
        || {
            let f = member("facts0").facts;
            f.get("kernel").map(String::as_str) == Some("custom")
                && f.get("rack").map(String::as_str) == Some("r7")
        },
    )
    .await;
    nodes[0].remove_fact("kernel").await.unwrap();
    nodes[0].remove_fact("rack").await.unwrap();
    wait_for(
        "removal restores the collected fact",
        Duration::from_secs(10),
        || {
            let f = member("facts0").facts;
            f.get("kernel") == Some(&kernel) && !f.contains_key("rack")
        },
    )
    .await;
    for x in &nodes {
        x.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_policy_is_reported_once_and_does_not_hold() {
    let nodes = start_cluster("perr", 2, |_| {}).await;
    wait_converged_members(&nodes, 2).await;
    let mut events = nodes[1].events();
    nodes[0]
        .add_policy("needs-tier", "tiered", r#"facts.tier == "gold""#)
        .await
        .unwrap();
    let seen = collect_until(&mut events, Duration::from_secs(10), |seen| {
        seen.iter().any(|e| matches!(e, Event::PolicyError { .. }))
    })
    .await;
    assert!(seen.iter().any(
        |e| matches!(e, Event::PolicyError { policy, message } if policy == "needs-tier" && message.contains("tier"))
    ));
    // Many evaluations later (facts and policies change), still reported once.
    nodes[1].set_fact("other", "1").await.unwrap();
    nodes[0].add_policy("noop", "core", "false").await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut again = 0;
    while let Some(e) = events.try_next() {
        if matches!(e, Event::PolicyError { ref policy, .. } if policy == "needs-tier") {
            again += 1;
        }
    }
    assert_eq!(again, 0);
    assert!(nodes.iter().all(|n| n.tribe("tiered").is_none()));
    // Once the fact appears the policy holds.
    nodes[1].set_fact("tier", "gold").await.unwrap();
    wait_for("tiered created with perr1", Duration::from_secs(10), || {
        nodes
            .iter()
            .all(|n| n.tribe("tiered").is_some_and(|t| t.members == ["perr1"]))
    })
    .await;
    for x in &nodes {
        x.shutdown().await.unwrap();
    }
}

/// A tribe created, deleted and created again in quick succession: every
/// node's digest agrees within a few gossip rounds, not at the next
/// push-pull (the deletion never left its node, a later write of the key
/// having replaced it in the queue, and peers kept the new creation
/// without its mark).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tribe_deleted_and_created_again_at_once_converges_by_gossip() {
    let nodes = start_cluster("recreate", 3, |cfg| {
        if let Some(t) = cfg.timings.as_mut() {
            t.push_pull_interval = Duration::from_secs(120);
        }
    })
    .await;
    wait_converged_members(&nodes, 3).await;
    nodes[0].create_tribe("base").await.unwrap();
    wait_same_digest(&nodes).await;
    for round in 0..3 {
        nodes[1].create_tribe("db").await.unwrap();
        nodes[1].delete_tribe("db").await.unwrap();
        nodes[1].create_tribe("db").await.unwrap();
        wait_for(
            &format!("equal digests by gossip, round {round}"),
            Duration::from_secs(10),
            || {
                let first = nodes[0].state_digest();
                nodes.iter().all(|n| n.state_digest() == first)
            },
        )
        .await;
        nodes[1].delete_tribe("db").await.unwrap();
    }
    for n in &nodes {
        n.shutdown().await.unwrap();
    }
}

/// A tribe deleted under its member ends inside out: its task stops, its
/// plugin unloads, the member leaves, then the tribe is deleted (a host
/// that drops a tribe's bookkeeping at its deletion hears nothing of it
/// after); a tribe made and joined begins outside in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tribe_ends_inside_out_and_begins_outside_in() {
    let nodes = start_cluster("order", 1, |_| {}).await;
    let n = &nodes[0];
    let mut events = n.events();
    n.create_tribe("t").await.unwrap();
    n.join("t", n.name()).await.unwrap();
    n.load_plugin("t", "p", "1", PluginKind::Collector, None)
        .await
        .unwrap();
    n.add_task("t", "x", "{}", TaskState::Running)
        .await
        .unwrap();
    n.delete_tribe("t").await.unwrap();
    let kinds = |seen: &[Event]| -> Vec<&'static str> {
        seen.iter()
            .filter_map(|e| match e {
                Event::TribeCreated { .. } => Some("created"),
                Event::TribeJoined { .. } => Some("joined"),
                Event::PluginLoad(_) => Some("load"),
                Event::TaskRun(_) => Some("run"),
                Event::TaskStop(_) => Some("stop"),
                Event::PluginUnload(_) => Some("unload"),
                Event::TribeLeft { .. } => Some("left"),
                Event::TribeDeleted { .. } => Some("deleted"),
                _ => None,
            })
            .collect()
    };
    let seen = collect_until(&mut events, Duration::from_secs(10), |seen| {
        kinds(seen).contains(&"deleted")
    })
    .await;
    let order = kinds(&seen);
    let begun = order
        .iter()
        .position(|k| *k == "stop")
        .unwrap_or(order.len());
    assert_eq!(
        &order[begun..],
        ["stop", "unload", "left", "deleted"],
        "{order:?}"
    );
    let mut begin = order[..begun].to_vec();
    begin.dedup();
    assert_eq!(begin, ["created", "joined", "load", "run"], "{order:?}");
    n.shutdown().await.unwrap();
}

/// A fact that flaps (set, removed, set) under a policy that fails while it
/// is missing: the same error is said once, not at every flap (a flood that
/// pushed the events that matter out of a host's queue).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flapping_fact_does_not_repeat_its_policy_error() {
    let nodes = start_cluster("pflap", 1, |_| {}).await;
    let node = &nodes[0];
    let mut events = node.events();
    node.add_policy("needs-rack", "racked", r#"facts.rack == "r1""#)
        .await
        .unwrap();
    for _ in 0..20 {
        node.set_fact("rack", "r2").await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        node.remove_fact("rack").await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut said = 0;
    while let Some(e) = events.try_next() {
        if matches!(e, Event::PolicyError { ref policy, .. } if policy == "needs-rack") {
            said += 1;
        }
    }
    assert_eq!(said, 1, "the same error said {said} times");
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_whose_tribe_cannot_be_created_at_the_limit_says_so() {
    let nodes = start_cluster("plim", 1, |cfg| cfg.limits.tribes = 2).await;
    let node = &nodes[0];
    let mut events = node.events();
    node.create_tribe("t0").await.unwrap();
    node.create_tribe("t1").await.unwrap();
    node.add_policy("everyone", "t2", "true").await.unwrap();
    let seen = collect_until(&mut events, Duration::from_secs(10), |seen| {
        seen.iter().any(|e| matches!(e, Event::PolicyError { .. }))
    })
    .await;
    assert!(
        seen.iter()
            .any(|e| matches!(e, Event::PolicyError { policy, message }
            if policy == "everyone" && message.contains("limit of 2 tribes"))),
        "{seen:?}"
    );
    assert!(node.tribe("t2").is_none());
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_loopback_cluster() {
    let mut nodes: Vec<Node> = Vec::new();
    for i in 0..3 {
        let mut cfg = test_config(&format!("v6n{i}"));
        cfg.bind = "[::1]:0".parse().unwrap();
        cfg.seeds = nodes.first().map(|n| n.addr()).into_iter().collect();
        match Node::start(cfg).await {
            Ok(n) => nodes.push(n),
            Err(e) => {
                eprintln!("skipping: no IPv6 loopback here ({e})");
                return;
            }
        }
    }
    assert!(nodes[0].addr().is_ipv6());
    wait_converged_members(&nodes, 3).await;
    nodes[0].create_tribe("six").await.unwrap();
    wait_same_digest(&nodes).await;
    for x in &nodes {
        x.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_and_advertise_are_separate() {
    let first = Node::start(test_config("adv0")).await.unwrap();
    // Bind on all interfaces, advertise loopback at the same port.
    // The port is picked free and then bound again, so a test running beside
    // this one may take it in between: pick another one then.
    let mut attempt = 0;
    let (second, port) = loop {
        let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = probe.local_addr().unwrap().port();
        drop(probe);
        let mut cfg = test_config("adv1");
        cfg.bind = format!("0.0.0.0:{port}").parse().unwrap();
        cfg.advertise = Some(format!("127.0.0.1:{port}").parse().unwrap());
        cfg.seeds = vec![first.addr()];
        match Node::start(cfg).await {
            Ok(node) => break (node, port),
            Err(Error::Io(e)) if attempt < 20 => {
                attempt += 1;
                eprintln!("port {port} taken meanwhile ({e}), picking another");
            }
            Err(e) => panic!("start adv1: {e:?}"),
        }
    };
    let nodes = [first, second];
    wait_converged_members(&nodes, 2).await;
    let seen = nodes[0]
        .members()
        .into_iter()
        .find(|m| m.name == "adv1")
        .unwrap();
    assert_eq!(seen.addr.to_string(), format!("127.0.0.1:{port}"));
    // Advertised port 0 is the port bound, as for a bind to port 0.
    let mut cfg = test_config("adv3");
    cfg.bind = "0.0.0.0:0".parse().unwrap();
    cfg.advertise = Some("127.0.0.1:0".parse().unwrap());
    cfg.seeds = vec![nodes[0].addr()];
    let third = Node::start(cfg).await.unwrap();
    assert_ne!(third.addr().port(), 0);
    wait_converged_members(&[nodes[0].clone(), third.clone()], 3).await;
    third.shutdown().await.unwrap();
    // An unspecified advertise address is refused: peers could not reach it.
    let mut cfg = test_config("adv4");
    cfg.advertise = Some("0.0.0.0:0".parse().unwrap());
    assert!(matches!(Node::start(cfg).await, Err(Error::Config(_))));
    // Binding to 0.0.0.0 without an advertise address is refused clearly.
    let mut cfg = test_config("adv2");
    cfg.bind = "0.0.0.0:0".parse().unwrap();
    assert!(matches!(Node::start(cfg).await, Err(Error::Config(_))));
    for x in &nodes {
        x.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_streams_asked_for_after_a_stop_end_at_once() {
    for graceful in [true, false] {
        let nodes = start_cluster(if graceful { "evs" } else { "eva" }, 1, |_| {}).await;
        let node = &nodes[0];
        let mut before = node.events();
        if graceful {
            node.shutdown().await.unwrap();
        } else {
            node.abort().await;
        }
        let mut after = node.events();
        let ended = tokio::time::timeout(Duration::from_secs(5), async {
            while before.next().await.is_some() {}
            while after.next().await.is_some() {}
        })
        .await;
        assert!(ended.is_ok(), "an event stream outlived the node");
    }
}

/// A seed given by name is looked up by the node, not at configuration: a
/// name that does not resolve is counted and retried, and the start does
/// not fail; one that does resolve (`localhost`) is joined through, also by
/// a node that has no seed by address at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeds_by_name_are_looked_up_by_the_node() {
    let first = Node::start(test_config("byname0")).await.unwrap();
    let mut cfg = test_config("byname1");
    cfg.add_seed("no-such-seed.invalid:7946").unwrap();
    cfg.add_seed(&format!("localhost:{}", first.addr().port()))
        .unwrap();
    assert!(cfg.seeds.is_empty(), "a name went to the addresses");
    let second = Node::start(cfg)
        .await
        .expect("an unresolvable seed failed the start");
    let nodes = [first, second];
    wait_converged_members(&nodes, 2).await;
    // The lookups run side by side: the join may come before the failure.
    wait_for("the failed lookup counted", Duration::from_secs(15), || {
        nodes[1].counters().seed_lookups_failed >= 1
    })
    .await;
    // Forms that are neither an address nor host:port are refused at once.
    let mut cfg = test_config("byname2");
    for bad in [
        "localhost",
        "localhost:0",
        "localhost:99999",
        "bad host:1",
        ":7946",
    ] {
        assert!(
            matches!(cfg.add_seed(bad), Err(Error::Config(_))),
            "{bad:?}"
        );
    }
    cfg.add_seed("[::1]:7946").unwrap();
    assert_eq!(cfg.seeds, vec!["[::1]:7946".parse().unwrap()]);
    for x in &nodes {
        x.shutdown().await.unwrap();
    }
}

/// Event streams dropped on a quiet node are let go by the next one opened,
/// not kept until an event comes (a script that opens one every second on
/// a stable cluster grew by gigabytes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_event_streams_are_let_go_without_an_event() {
    let nodes = start_cluster("evq", 1, |_| {}).await;
    let n = &nodes[0];
    drop(n.events());
    for _ in 0..1000 {
        drop(n.events());
    }
    let kept = n.event_subscribers();
    assert!(kept <= 1, "{kept} dropped event streams kept");
    let live = n.events();
    drop(n.events());
    assert_eq!(n.event_subscribers(), 2, "the live stream and the last one");
    drop(live);
    n.shutdown().await.unwrap();
}

/// The event streams of a node whose runtime was dropped under it end
/// (after its queued events), as they do at a shutdown: a consumer's loop
/// does not wait for ever.
#[test]
fn event_streams_end_when_the_nodes_runtime_is_dropped() {
    let first = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let nodes = first.block_on(start_cluster("evd", 1, |_| {}));
    let node = nodes[0].clone();
    let mut events = node.events();
    drop(first);
    let second = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    second.block_on(async {
        let drained = tokio::time::timeout(Duration::from_secs(10), async {
            while events.next().await.is_some() {}
        })
        .await;
        assert!(drained.is_ok(), "the event stream did not end");
        assert_eq!(node.create_tribe("t").await, Err(Error::ShuttingDown));
        // It said no goodbye, and a shutdown now says so.
        assert_eq!(node.shutdown().await, Err(Error::ShuttingDown));
    });
}

/// A shutdown whose future is dropped half-way (a timeout around it) is
/// finished by the next one, which returns Ok: the call streams to other
/// nodes close, instead of holding a place at each host while handles live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_given_up_half_way_is_finished_by_the_next() {
    let nodes = start_cluster("cut", 2, |_| {}).await;
    wait_converged_members(&nodes, 2).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let echo = host_echo(b).await;
    wait_for("a sees b serve echo", Duration::from_secs(20), || {
        a.members().iter().any(|m| !m.endpoints.is_empty())
            && a.tribe("svc").is_some_and(|t| t.members.len() == 1)
    })
    .await;
    a.call(&echo, b"x".to_vec(), Duration::from_secs(5))
        .await
        .unwrap();
    // "No limit" is a timeout too (a host's 5 minutes bound it).
    assert_eq!(
        a.call(&echo, b"y".to_vec(), Duration::MAX).await,
        Ok(b"y".to_vec())
    );
    wait_for("b holds a's stream", Duration::from_secs(5), || {
        b.rpc_stats().streams_accepted == 1
    })
    .await;
    let _ = tokio::time::timeout(Duration::from_micros(1), a.shutdown()).await;
    assert_eq!(a.shutdown().await, Ok(()));
    assert_eq!(a.shutdown().await, Ok(()), "again: idempotent");
    wait_for("a's stream to b closed", Duration::from_secs(10), || {
        b.rpc_stats().streams_accepted == 0
    })
    .await;
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_lost_its_tribe_says_so_rather_than_a_first_join_hint() {
    logged();
    let nodes = start_cluster("lost", 2, |_| {}).await;
    wait_converged_members(&nodes, 2).await;
    // Its seed goes: it retries its seeds, after being in the tribe.
    let before = logged().len();
    nodes[0].abort().await;
    let since = || logged()[before..].to_string();
    wait_for("the lost contact logged", Duration::from_secs(30), || {
        since().lines().any(|l| {
            l.contains("node=lost1")
                && l.contains("no seed has answered since this node lost contact with the others")
        })
    })
    .await;
    assert!(!since()
        .lines()
        .any(|l| l.contains("node=lost1") && l.contains("no seed has answered yet")));
    nodes[1].shutdown().await.unwrap();
}

/// A node whose peers all left, saying goodbye, says so when it retries
/// its seeds, rather than blaming a network cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_peers_all_left_says_so_rather_than_a_cut() {
    logged();
    let nodes = start_cluster("alone", 2, |_| {}).await;
    wait_converged_members(&nodes, 2).await;
    let before = logged().len();
    nodes[0].shutdown().await.unwrap();
    let since = || logged()[before..].to_string();
    wait_for("the goodbyes logged", Duration::from_secs(30), || {
        since()
            .lines()
            .any(|l| l.contains("node=alone1") && l.contains("every other member it knew left"))
    })
    .await;
    assert!(!since()
        .lines()
        .any(|l| l.contains("node=alone1") && l.contains("a network cut")));
    nodes[1].shutdown().await.unwrap();
}

/// A runtime without timers cannot run a node: the start panics with
/// tokio's message, instead of returning a node whose tasks died at once.
#[test]
fn a_start_on_a_runtime_without_timers_says_why() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    let mut cfg = tribe::Config::new("no-timers");
    cfg.collect_facts = false;
    let started = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        rt.block_on(Node::start(cfg)).map(|_| ())
    }));
    let why = started.expect_err("the start should not succeed");
    let text = why
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| why.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default();
    assert!(text.contains("timers are disabled"), "{text}");
}

/// A policy's tribe refused at the limit of tribes is made once room frees
/// (a tribe deleted and its tombstone collected), with no other change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_tribe_refused_at_the_limit_is_made_once_room_frees() {
    let nodes = start_cluster("room", 1, |cfg| {
        cfg.set_limit("tribes", 3).unwrap();
        let mut t = cfg.effective_timings();
        t.tombstone_grace = Duration::from_secs(2);
        cfg.timings = Some(t);
        cfg.facts.insert("role".into(), "a".into());
    })
    .await;
    let node = &nodes[0];
    for t in ["a", "b", "c"] {
        node.create_tribe(t).await.unwrap();
    }
    node.add_policy("p", "want", r#"has(facts.role) && facts.role == "a""#)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(node.tribe("want").is_none(), "no room yet");
    node.delete_tribe("a").await.unwrap();
    wait_for("the policy's tribe made", Duration::from_secs(40), || {
        node.tribe("want")
            .is_some_and(|t| t.members.iter().any(|m| m == node.name()))
    })
    .await;
    node.shutdown().await.unwrap();
}

/// A stream that falls more than 65,536 events behind says how many it
/// lost, and only its own: a stream read meanwhile lost none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_fell_behind_says_how_many_events_it_missed() {
    let nodes = start_cluster("lag", 1, |_| {}).await;
    let n = &nodes[0];
    let mut read = n.events();
    let unread = n.events();
    n.create_tribe("t").await.unwrap();
    let name = n.name().to_string();
    let reader = tokio::spawn(async move {
        let mut seen = 0u64;
        while let Some(event) = read.next().await {
            if matches!(event, Event::TribeJoined { .. } | Event::TribeLeft { .. }) {
                seen += 1;
            }
        }
        (seen, read.missed())
    });
    // 35,000 joins and leaves: 70,000 events, more than a stream holds.
    for _ in 0..35_000 {
        n.join("t", &name).await.unwrap();
        n.leave("t", &name).await.unwrap();
    }
    n.shutdown().await.unwrap();
    let (seen, read_missed) = reader.await.unwrap();
    assert_eq!(read_missed, 0);
    assert_eq!(
        seen, 70_000,
        "the stream read meanwhile has every join and leave"
    );
    let mut unread = unread;
    let mut queued = 0;
    while unread.next().await.is_some() {
        queued += 1;
    }
    let missed = unread.missed();
    assert_eq!(queued, 65_536, "the unread stream held as much as it could");
    assert!(
        missed >= 70_000 - 65_536,
        "the unread stream says it missed {missed}"
    );
    assert_eq!(
        n.counters().events_dropped,
        missed,
        "only the unread stream lost events"
    );
}

/// A node serving a handler that keeps a clone of it.
async fn self_holding_node(name: &str) -> Node {
    let nodes = start_cluster(name, 1, |_| {}).await;
    let node = nodes.into_iter().next().unwrap();
    let held = node.clone();
    node.serve("self", "1", PluginKind::Processor, move |_, _| {
        let node = held.clone();
        async move { Ok(node.name().as_bytes().to_vec()) }
    })
    .await
    .unwrap();
    node
}

/// A handler that keeps a clone of the node serving it no longer keeps the
/// node (its sockets, tasks and memory) once it has shut down; one that
/// keeps a `WeakNode` lets the node stop when its last handle is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_holding_their_node_let_it_go() {
    let node = self_holding_node("cycle").await;
    let weak = node.downgrade();
    node.shutdown().await.unwrap();
    drop(node);
    assert!(
        weak.upgrade().is_none(),
        "the stopped node is still held by its handler"
    );

    let nodes = start_cluster("weak", 2, |_| {}).await;
    let mut nodes = nodes.into_iter();
    let (node, peer) = (nodes.next().unwrap(), nodes.next().unwrap());
    let back = node.downgrade();
    node.serve("self", "1", PluginKind::Processor, move |_, _| {
        let node = back.upgrade();
        async move {
            let name = node.map(|n| n.name().to_string()).unwrap_or_default();
            Ok(name.into_bytes())
        }
    })
    .await
    .unwrap();
    let weak = node.downgrade();
    let name = node.name().to_string();
    wait_for("the peer to see the node", Duration::from_secs(20), || {
        peer.members()
            .iter()
            .any(|m| m.name == name && m.state == tribe::MemberState::Alive)
    })
    .await;
    drop(node);
    assert!(
        weak.upgrade().is_none(),
        "a handler's weak handle kept the node"
    );
    // Dropped without a goodbye: the peer finds it failed.
    let began = std::time::Instant::now();
    while !peer
        .members()
        .iter()
        .any(|m| m.name == name && m.state != tribe::MemberState::Alive)
    {
        assert!(
            began.elapsed() < Duration::from_secs(30),
            "the dropped node still looks alive"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    peer.shutdown().await.unwrap();
}

/// A shutdown given up after its first step (its future dropped) still
/// lets a node go whose handler keeps a clone of it, once its last handle
/// is dropped: the handlers go when the node's driver ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_given_up_half_way_still_lets_a_self_holding_node_go() {
    let node = self_holding_node("halfcycle").await;
    let weak = node.downgrade();
    {
        let shutdown = node.shutdown();
        tokio::pin!(shutdown);
        tokio::select! {
            biased;
            _ = &mut shutdown => {}
            () = tokio::task::yield_now() => {}
        }
    }
    drop(node);
    let began = std::time::Instant::now();
    while weak.upgrade().is_some() {
        assert!(
            began.elapsed() < Duration::from_secs(10),
            "the node is still held by its handler"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
