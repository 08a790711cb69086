//! Bounds of the serving side, over real nodes on 127.0.0.1: call streams
//! over the configured limit are refused with a frame that callers read as
//! `Overloaded` (and counted), a caller whose extra stream for large calls
//! is refused keeps calling on the stream it has, and a handler's reply
//! over `max_payload` reaches its caller as a `too_large` error (and is
//! counted) while the stream lives on.
mod common;

use std::time::Duration;

use common::*;
use tribe::{CallTarget, Error, Node, PluginKind};

const SECOND: Duration = Duration::from_secs(1);

/// `max_payload` of every node here.
const LIMIT: usize = 64 * 1024;

/// `nodes[1]` hosts tribe `svc` and serves `echo` and `big` (a reply one
/// byte over [`LIMIT`]); the others see both endpoints.
async fn host_cluster(prefix: &str, n: usize, tweak: impl Fn(&mut tribe::Config)) -> Vec<Node> {
    let nodes = start_cluster(prefix, n, |cfg| {
        cfg.rpc.max_payload = LIMIT;
        tweak(cfg);
    })
    .await;
    wait_converged_members(&nodes, n).await;
    let host = &nodes[1];
    host.create_tribe("svc").await.unwrap();
    host.join("svc", host.name()).await.unwrap();
    host.serve(
        "echo",
        "1",
        PluginKind::Processor,
        |_, payload| async move { Ok(payload) },
    )
    .await
    .unwrap();
    host.serve("big", "1", PluginKind::Processor, |_, _| async move {
        Ok(vec![7u8; LIMIT + 1])
    })
    .await
    .unwrap();
    wait_for("endpoints seen", Duration::from_secs(20), || {
        nodes.iter().all(|n| {
            n.members().iter().any(|m| m.endpoints.len() == 2)
                && n.tribe("svc").is_some_and(|t| t.members.len() == 1)
        })
    })
    .await;
    nodes
}

fn target(plugin: &str) -> CallTarget {
    CallTarget::new("svc", plugin, PluginKind::Processor)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_streams_over_the_bound_are_refused_as_overloaded() {
    let nodes = host_cluster("sb", 3, |cfg| cfg.rpc.max_streams = 1).await;
    let (first, host, second) = (&nodes[0], &nodes[1], &nodes[2]);
    // The first caller's pooled stream takes the host's only slot.
    assert_eq!(
        first
            .call(&target("echo"), b"a".to_vec(), SECOND)
            .await
            .unwrap(),
        b"a"
    );
    // The second caller's stream is refused: its call did not run, and it
    // says so rather than reporting the host gone.
    match second.call(&target("echo"), b"b".to_vec(), SECOND).await {
        Err(Error::Overloaded) => {}
        other => panic!("expected Overloaded, got {other:?}"),
    }
    assert!(host.rpc_stats().streams_refused >= 1);
    assert_eq!(host.rpc_stats().served, 1);
    let stats = second.rpc_stats();
    assert_eq!((stats.overloaded, stats.disconnected), (1, 0));
    // The stream that holds the slot still serves.
    assert_eq!(
        first
            .call(&target("echo"), b"c".to_vec(), SECOND)
            .await
            .unwrap(),
        b"c"
    );
    for n in nodes {
        let _ = n.shutdown().await;
    }
}

/// `n` calls of `size`-byte payloads at once to the host's `slow`
/// handler; each reply must be its own payload.
async fn overlapping_calls(caller: &Node, n: u8, size: usize) {
    let calls = (0..n).map(|i| async move {
        let payload = vec![i; size];
        let reply = caller
            .call(&target("slow"), payload.clone(), 5 * SECOND)
            .await;
        assert_eq!(reply.unwrap(), payload, "call {i} of {size} B");
    });
    futures_util::future::join_all(calls).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_calls_try_another_stream_and_keep_the_one_they_have_when_refused() {
    let nodes = host_cluster("ls", 2, |cfg| cfg.rpc.max_streams = 1).await;
    let (caller, host) = (&nodes[0], &nodes[1]);
    host.serve(
        "slow",
        "1",
        PluginKind::Processor,
        |_, payload| async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            Ok(payload)
        },
    )
    .await
    .unwrap();
    wait_for("slow seen", Duration::from_secs(20), || {
        caller.members().iter().any(|m| m.endpoints.len() == 3)
    })
    .await;
    // Small calls share one stream however many overlap: none is refused.
    overlapping_calls(caller, 12, 100).await;
    assert_eq!(host.rpc_stats().streams_refused, 0);
    // Overlapping large calls ask for another stream; the host at its
    // bound refuses it, and every call still runs, on the first stream.
    overlapping_calls(caller, 12, 32 * 1024).await;
    let refused = host.rpc_stats().streams_refused;
    assert!(refused >= 1, "no second stream was tried");
    let stats = caller.rpc_stats();
    assert_eq!((stats.ok, stats.overloaded, stats.failovers), (24, 0, 0));
    // For a while after a refusal no more streams are tried.
    overlapping_calls(caller, 12, 32 * 1024).await;
    assert_eq!(host.rpc_stats().streams_refused, refused);
    for n in nodes {
        let _ = n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_over_max_payload_are_refused_and_counted() {
    let nodes = host_cluster("rb", 2, |_| {}).await;
    let (caller, host) = (&nodes[0], &nodes[1]);
    match caller.call(&target("big"), b"x".to_vec(), SECOND).await {
        Err(Error::Remote { code, message }) => {
            assert_eq!(code, "too_large");
            assert!(message.contains("65537"), "{message}");
        }
        other => panic!("expected a too_large error, got {other:?}"),
    }
    assert_eq!(host.rpc_stats().replies_too_large, 1);
    // The same stream carries the next call: nothing was cut.
    assert_eq!(
        caller
            .call(&target("echo"), b"y".to_vec(), SECOND)
            .await
            .unwrap(),
        b"y"
    );
    let stats = caller.rpc_stats();
    assert_eq!(
        (stats.ok, stats.remote_error, stats.disconnected),
        (1, 1, 0)
    );
    assert_eq!(host.rpc_stats().stream_errors, 0);
    for n in nodes {
        let _ = n.shutdown().await;
    }
}
