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
    assert!(
        node.counters().data_dir_errors >= before + 2,
        "each failure counted"
    );
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
    node.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_under_another_name_refuses_the_data_dir() {
    let dir = scratch("other-name");
    let first = Node::start(config("dd-owner", &dir, "127.0.0.1:0".parse().unwrap()))
        .await
        .unwrap();
    first.set_fact("owner", "dd-owner").await.unwrap();
    first.shutdown().await.unwrap();
    let mut cfg = config("dd-other", &dir, "127.0.0.1:0".parse().unwrap());
    cfg.data_dir = Some(dir.join("dd-owner"));
    let Err(e) = Node::start(cfg).await else {
        panic!("started with another node's data dir");
    };
    assert!(matches!(e, tribe::Error::Config(_)), "{e}");
    assert!(
        e.to_string().contains("belongs to node \"dd-owner\""),
        "{e}"
    );
    // Its own node still starts with it, and keeps the fact it set.
    let again = Node::start(config("dd-owner", &dir, "127.0.0.1:0".parse().unwrap()))
        .await
        .unwrap();
    let me = again
        .members()
        .into_iter()
        .find(|m| m.name == "dd-owner")
        .unwrap();
    assert_eq!(me.facts.get("owner").map(String::as_str), Some("dd-owner"));
    again.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
