//! A process out of file descriptors: the listener cannot accept, and the
//! node must not spin on the connection that waits (it stays readable).
//! Alone in its test binary, since it lowers the process's own fd limit.
mod common;

use std::time::Duration;

use common::*;
use nix::sys::resource::{getrlimit, setrlimit, Resource};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_out_of_descriptors_pauses_instead_of_spinning() {
    logged();
    let nodes = start_cluster("fds", 1, |_| {}).await;
    let node = &nodes[0];
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, 512.min(hard), hard).unwrap();

    // Use up every descriptor, then free one for a client's connection:
    // the node's accept then fails with EMFILE while it waits.
    let mut held = Vec::new();
    while let Ok(f) = std::fs::File::open("/dev/null") {
        held.push(f);
    }
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
