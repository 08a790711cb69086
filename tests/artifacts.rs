//! Plugin artifacts: fetched in chunks from a holder, verified by hash
//! before `PluginLoad`; a holder with corrupt bytes is reported and skipped;
//! a missing artifact is reported unavailable.
mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use tribe::{Event, Node, PluginKind};

fn bytes(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

async fn next_about(events: &mut tribe::EventStream, plugin: &str) -> Event {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let e = tokio::time::timeout_at(deadline, events.next())
            .await
            .expect("an artifact event in time")
            .expect("stream open");
        match &e {
            Event::PluginLoad(p) if p.name == plugin => return e,
            Event::ArtifactCorrupt { plugin: p, .. } if p.name == plugin => return e,
            Event::ArtifactUnavailable { plugin: p, .. } if p.name == plugin => return e,
            _ => {}
        }
    }
}

async fn cluster() -> Vec<Node> {
    let nodes = start_cluster("a", 4, |cfg| {
        cfg.rpc.artifact_rounds = 4;
        cfg.rpc.artifact_backoff = Duration::from_millis(200);
    })
    .await;
    wait_converged_members(&nodes, 4).await;
    nodes[0].create_tribe("t").await.unwrap();
    wait_same_digest(&nodes).await;
    for n in &nodes[2..] {
        nodes[0].join("t", n.name()).await.unwrap();
    }
    wait_for("loaders in t", Duration::from_secs(20), || {
        nodes
            .iter()
            .all(|n| n.tribe("t").is_some_and(|t| t.members.len() == 2))
    })
    .await;
    nodes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_fetch_verify_and_then_load_an_artifact() {
    let nodes = cluster().await;
    let mut loaders: Vec<_> = nodes[2..].iter().map(|n| n.events()).collect();
    let payload = bytes(700 * 1024, 1); // three chunks
    let artifact = nodes[0]
        .load_plugin_with_artifact("t", "disk", "1", PluginKind::Collector, payload.clone())
        .await
        .unwrap();
    for (i, events) in loaders.iter_mut().enumerate() {
        match next_about(events, "disk").await {
            Event::PluginLoad(p) => {
                assert_eq!(p.artifact.as_ref(), Some(&artifact));
                let held = nodes[2 + i]
                    .artifact(&artifact.sha256)
                    .expect("held before the event");
                assert_eq!(*held, payload);
            }
            other => panic!("{other:?}"),
        }
    }
    // Loaders hold and advertise it too.
    wait_for(
        "loaders advertise the artifact",
        Duration::from_secs(20),
        || {
            nodes[1]
                .members()
                .iter()
                .filter(|m| m.artifacts.contains(&artifact.sha256))
                .count()
                == 3
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_holder_is_reported_and_a_good_one_is_used() {
    let nodes = cluster().await;
    let (good, bad) = (&nodes[0], &nodes[1]);
    let mut events = nodes[2].events();
    let payload = bytes(300 * 1024, 7);
    // The bad node advertises the artifact but serves other bytes.
    let artifact = bad.hold_artifact(payload.clone()).unwrap();
    bad.rpc()
        .server
        .hold_artifact(artifact.sha256, Arc::new(bytes(300 * 1024, 8)));
    bad.load_plugin(
        "t",
        "net",
        "1",
        PluginKind::Collector,
        Some(artifact.clone()),
    )
    .await
    .unwrap();
    match next_about(&mut events, "net").await {
        Event::ArtifactCorrupt { holder, .. } => assert_eq!(holder, bad.name()),
        other => panic!("expected a corrupt report first: {other:?}"),
    }
    assert!(
        nodes[2].artifact(&artifact.sha256).is_none(),
        "nothing unverified is kept"
    );
    // A good holder appears; the next round uses it.
    good.hold_artifact(payload.clone()).unwrap();
    loop {
        match next_about(&mut events, "net").await {
            Event::ArtifactCorrupt { holder, .. } => assert_eq!(holder, bad.name()),
            Event::PluginLoad(_) => break,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(*nodes[2].artifact(&artifact.sha256).unwrap(), payload);
    let stats = nodes[2].rpc_stats();
    assert!(
        stats.artifacts_corrupt >= 1 && stats.artifacts_fetched == 1,
        "{stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_artifact_nobody_holds_is_reported_unavailable() {
    logged();
    let nodes = cluster().await;
    let mut events = nodes[3].events();
    let missing = tribe::ArtifactRef {
        sha256: [9; 32],
        size: 1000,
    };
    nodes[0]
        .load_plugin("t", "ghost", "1", PluginKind::Processor, Some(missing))
        .await
        .unwrap();
    match next_about(&mut events, "ghost").await {
        // Said as it is: no member holds it, not bytes that did not match.
        Event::ArtifactUnavailable { reason, .. } => {
            assert!(reason.contains("no live member held it"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(nodes[3].rpc_stats().artifacts_unavailable, 1);
    // The warning comes from a task of the loader's, and names it (several
    // nodes share this process).
    let loader = format!("tribe{{node={}}}", nodes[3].name());
    wait_for("the loader's warning", Duration::from_secs(5), || {
        logged()
            .lines()
            .any(|l| l.contains("artifact unavailable") && l.contains(&loader))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unloading_a_plugin_whose_artifact_is_still_awaited_cancels_its_load() {
    let nodes = cluster().await;
    let mut events = nodes[2].events();
    let missing = tribe::ArtifactRef {
        sha256: [3; 32],
        size: 10,
    };
    nodes[0]
        .load_plugin("t", "pending", "1", PluginKind::Processor, Some(missing))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    nodes[0].unload_plugin("t", "pending", "1").await.unwrap();
    // Neither a load, an unload nor an unavailable report for it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while let Ok(Some(e)) = tokio::time::timeout_at(deadline, events.next()).await {
        let about_it = match &e {
            Event::PluginLoad(p) | Event::PluginUnload(p) => p.name == "pending",
            Event::ArtifactUnavailable { plugin, .. } | Event::ArtifactCorrupt { plugin, .. } => {
                plugin.name == "pending"
            }
            _ => false,
        };
        assert!(!about_it, "{e:?}");
    }
}

/// An artifact over the size members fetch is refused where it is made,
/// not accepted and then left unfetchable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_artifact_over_the_fetch_limit_is_refused_at_once() {
    let nodes = start_cluster("big", 1, |_| {}).await;
    let over = 256 * 1024 * 1024 + 1; // members fetch up to 256 MiB
    match nodes[0].hold_artifact(vec![0u8; over]) {
        Err(tribe::Error::TooLarge { size, .. }) => assert_eq!(size, over),
        other => panic!("expected TooLarge, got {other:?}"),
    }
}

/// Bytes no plugin entry names any more (unloaded, replaced, or held for a
/// load that was refused) are let go after `RELEASE_AFTER`, on the holder
/// and on the members that fetched them: a node's bound on artifacts held
/// counts what it holds now, not what it ever held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifacts_no_entry_names_are_let_go() {
    let nodes = cluster().await;
    let mut loader = nodes[2].events();
    let used = nodes[0]
        .load_plugin_with_artifact("t", "p", "1", PluginKind::Processor, bytes(1000, 7))
        .await
        .unwrap();
    assert!(matches!(
        next_about(&mut loader, "p").await,
        Event::PluginLoad(_)
    ));
    // Held for a load refused as the entry exists.
    let refused = nodes[0]
        .load_plugin_with_artifact("t", "p", "1", PluginKind::Processor, bytes(1000, 8))
        .await;
    assert!(
        matches!(refused, Err(tribe::Error::PluginExists { .. })),
        "{refused:?}"
    );
    let orphan = nodes[0].hold_artifact(bytes(1000, 8)).unwrap().sha256;
    assert!(nodes[0].artifact(&orphan).is_some());
    nodes[0].unload_plugin("t", "p", "1").await.unwrap();
    let wait = tribe::ARTIFACT_RELEASE_AFTER + Duration::from_secs(15);
    wait_for("the bytes let go", wait, || {
        [&nodes[0], &nodes[2], &nodes[3]]
            .iter()
            .all(|n| n.artifact(&used.sha256).is_none())
            && nodes[0].artifact(&orphan).is_none()
    })
    .await;
}

/// A member told an artifact is unavailable tries again when a holder it
/// did not try appears (another node holds the same bytes), rather than
/// never: only an unload and a new load of the whole tribe mended it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unavailable_artifact_is_fetched_when_a_new_holder_appears() {
    let mut nodes = cluster().await;
    // Its only holder (not in the tribe) goes before anyone fetched it;
    // the members of the tribe are nodes[1] and nodes[2] from here on.
    let gone = nodes.remove(1);
    let mut loader = nodes[1].events();
    let payload = bytes(5000, 9);
    let artifact = gone.hold_artifact(payload.clone()).unwrap();
    gone.abort().await;
    nodes[0]
        .load_plugin(
            "t",
            "late",
            "1",
            PluginKind::Processor,
            Some(artifact.clone()),
        )
        .await
        .unwrap();
    match next_about(&mut loader, "late").await {
        Event::ArtifactUnavailable { .. } => {}
        other => panic!("want unavailable first: {other:?}"),
    }
    // Another node holds the same bytes.
    assert_eq!(nodes[0].hold_artifact(payload.clone()).unwrap(), artifact);
    match next_about(&mut loader, "late").await {
        Event::PluginLoad(p) => assert_eq!(p.artifact, Some(artifact.clone())),
        other => panic!("want a load once a holder appeared: {other:?}"),
    }
    assert_eq!(
        nodes[1].artifact(&artifact.sha256).unwrap().as_slice(),
        &payload[..]
    );
}
