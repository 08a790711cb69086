//! A process out of file descriptors: the listener cannot accept, and the
//! node must not spin on the connection that waits (it stays readable); a
//! call that cannot open a connection says why, and blames no host.
//! Alone in its test binary, since it lowers the process's own fd limit
//! (and its tests take turns).
mod common;

use std::time::Duration;

use common::*;
use nix::sys::resource::{getrlimit, setrlimit, Resource};

/// The tests take turns: each changes the process's descriptor limit.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Opens files until the process has no descriptor left.
fn use_up_descriptors() -> Vec<std::fs::File> {
    let mut held = Vec::new();
    while let Ok(f) = std::fs::File::open("/dev/null") {
        held.push(f);
    }
    held
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_out_of_descriptors_pauses_instead_of_spinning() {
    let _turn = TURN.lock().await;
    logged();
    let nodes = start_cluster("fds", 1, |_| {}).await;
    let node = &nodes[0];
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, 512.min(hard), hard).unwrap();

    // Use up every descriptor, then free one for a client's connection:
    // the node's accept then fails with EMFILE while it waits.
    let mut held = use_up_descriptors();
    held.pop();
    let client = std::net::TcpStream::connect(node.addr()).unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let failed = node.counters().accept_errors;

    drop(held);
    setrlimit(Resource::RLIMIT_NOFILE, soft, hard).unwrap();
    // One failure then a pause of 100 ms: about ten in that second, where
    // retrying at once made tens of thousands and took a whole core.
    assert!(failed >= 1, "the accept never failed");
    assert!(failed <= 30, "{failed} accept failures in one second");
    // Said once, not at every failure (ten lines a second, all day long).
    let said = logged().matches("cannot accept connections").count();
    assert!(
        failed < 2 || said == 1,
        "{said} warnings for {failed} failures"
    );

    // With descriptors back, the waiting connection is taken.
    let mut accepted = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let after = node.counters().accept_errors;
        tokio::time::sleep(Duration::from_millis(200)).await;
        if node.counters().accept_errors == after {
            accepted = true;
            break;
        }
    }
    assert!(accepted, "accepting never recovered");
    drop(client);
    node.shutdown().await.unwrap();
}

/// A call that cannot open a connection to its host for want of this
/// process's descriptors ends with an `Io` error that says so, and does not
/// name the host as unreachable (it is not to blame); with descriptors back,
/// calls go through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_out_of_descriptors_says_so_and_blames_no_host() {
    let _turn = TURN.lock().await;
    let nodes = start_cluster("fdc", 3, |_| {}).await;
    wait_converged_members(&nodes, 3).await;
    // Two hosts: the call tries both, and moving from one to the other
    // after a connection this process could not open is no failover.
    let target = host_echo(&nodes[1]).await;
    nodes[1].join("svc", nodes[2].name()).await.unwrap();
    serve_echo(&nodes[2]).await;
    let caller = &nodes[0];
    wait_for("both hosts serve", Duration::from_secs(20), || {
        caller.tribe("svc").is_some_and(|t| t.members.len() == 2)
            && caller
                .members()
                .iter()
                .filter(|m| !m.endpoints.is_empty())
                .count()
                == 2
    })
    .await;
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, 512.min(hard), hard).unwrap();
    let held = use_up_descriptors();
    // No stream to the host is open yet: the call needs a connection.
    let outcome = caller
        .call(&target, b"x".to_vec(), Duration::from_secs(2))
        .await;
    drop(held);
    setrlimit(Resource::RLIMIT_NOFILE, soft, hard).unwrap();
    match outcome {
        Err(tribe::Error::Io(why)) => {
            assert!(why.contains("Too many open files"), "{why}")
        }
        other => panic!("{other:?}"),
    }
    let stats = caller.rpc_stats();
    assert_eq!(
        (stats.not_sent, stats.no_provider, stats.failovers),
        (1, 0, 0),
        "{stats:?}"
    );
    let reply = caller
        .call(&target, b"x".to_vec(), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(reply, b"x");
    for n in &nodes {
        n.shutdown().await.unwrap();
    }
}
