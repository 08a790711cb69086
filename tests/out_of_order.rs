//! Changes arriving out of order converge: a peer speaking the real stream
//! protocol delivers a membership (and a plugin entry) before the tribe they
//! belong to. The receiver hides them until the tribe arrives, then shows
//! them, and all five nodes converge on the same state.
mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tribe::engine::sync::SyncMsg;
use tribe::hlc::Hlc;
use tribe::records::{Entry, Key, PluginKind, PluginRecord, TribeRecord, Value};
use tribe::wire;

/// Runs one exchange as initiator and pushes `records` to `target`.
async fn push_records(target: std::net::SocketAddr, records: Vec<(Key, Entry)>) {
    let mut stream = TcpStream::connect(target).await.unwrap();
    let hello = courier_hello();
    stream
        .write_all(&wire::frame(&[wire::CHANNEL_SYNC]))
        .await
        .unwrap();
    stream
        .write_all(&wire::frame(&wire::encode(&hello)))
        .await
        .unwrap();
    let mut header = [0u8; 4];
    stream.read_exact(&mut header).await.unwrap();
    let mut body = vec![0u8; u32::from_be_bytes(header) as usize];
    stream.read_exact(&mut body).await.unwrap();
    assert!(matches!(
        wire::decode::<SyncMsg>(&body).unwrap(),
        SyncMsg::Reply { .. }
    ));
    stream
        .write_all(&wire::frame(&wire::encode(&SyncMsg::Push {
            records,
            more: false,
        })))
        .await
        .unwrap();
    stream.shutdown().await.unwrap();
}

fn version(millis: u64) -> Hlc {
    Hlc {
        millis,
        counter: 0,
        node: "courier".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_before_its_tribe_converges() {
    let nodes = start_cluster("ooo", 5, |_| {}).await;
    wait_converged_members(&nodes, 5).await;
    let now = tribe::runtime::wall_clock_ms();
    let created = version(now);
    let member = (
        Key::Member {
            tribe: "late-tribe".into(),
            node: "ooo3".into(),
        },
        Entry {
            version: version(now + 5),
            value: Some(Value::Member),
            era: None,
        },
    );
    let plugin = (
        Key::Plugin {
            tribe: "late-tribe".into(),
            name: "disk".into(),
            version: "1".into(),
        },
        Entry {
            version: version(now + 6),
            value: Some(Value::Plugin(PluginRecord {
                kind: PluginKind::Collector,
                artifact: None,
            })),
            era: None,
        },
    );
    let tribe_record = (
        Key::Tribe("late-tribe".into()),
        Entry {
            version: created.clone(),
            value: Some(Value::Tribe(TribeRecord {
                after: None,
                era: None,
            })),
            era: None,
        },
    );

    // The children first, to one node: they are held but not shown.
    push_records(nodes[1].addr(), vec![member, plugin]).await;
    wait_for("children reach every node", Duration::from_secs(15), || {
        let d = nodes[1].state_digest();
        nodes.iter().all(|n| n.state_digest() == d) && nodes[1].counters().records_merged >= 2
    })
    .await;
    assert!(nodes.iter().all(|n| n.tribe("late-tribe").is_none()));
    assert!(nodes
        .iter()
        .all(|n| n.members().iter().all(|m| m.tribes.is_empty())));

    // Then the tribe, to another node: everything appears everywhere.
    push_records(nodes[4].addr(), vec![tribe_record]).await;
    wait_for(
        "tribe with its member and plugin everywhere",
        Duration::from_secs(15),
        || {
            nodes.iter().all(|n| {
                n.tribe("late-tribe")
                    .is_some_and(|t| t.members == ["ooo3"] && t.plugins.len() == 1)
            })
        },
    )
    .await;
    wait_same_digest(&nodes).await;
    for n in &nodes {
        n.shutdown().await.unwrap();
    }
}
