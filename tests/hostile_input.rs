//! Malformed, truncated and oversized datagrams and frames are counted and
//! dropped; the node keeps working.
mod common;

use std::time::Duration;

use common::*;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UdpSocket};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_is_counted_and_dropped() {
    let nodes = start_cluster("hostile", 3, |_| {}).await;
    wait_converged_members(&nodes, 3).await;
    let target = &nodes[1];
    let before = target.counters();

    let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut envelope = b"TB\x03\x00\x00".to_vec();
    envelope.extend_from_slice(&[0xff; 40]); // valid envelope, garbage SWIM payload
    let datagrams: Vec<Vec<u8>> = vec![
        vec![],
        b"T".to_vec(),
        b"XX\x01\x00\x00hello".to_vec(),
        b"TB\x07\x00\x00".to_vec(),
        b"TB\x01\x00\x09ab".to_vec(),
        vec![0x54; 1500],
        b"TB\x03\x00\x05other-cluster".to_vec(),
        envelope,
    ];
    for d in &datagrams {
        udp.send_to(d, target.addr()).await.unwrap();
    }

    // A frame that claims 4 GiB, one of garbage, and one cut short.
    let mut huge = TcpStream::connect(target.addr()).await.unwrap();
    huge.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    let mut junk = TcpStream::connect(target.addr()).await.unwrap();
    junk.write_all(&[0, 0, 0, 8, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4])
        .await
        .unwrap();
    let mut short = TcpStream::connect(target.addr()).await.unwrap();
    short.write_all(&[0, 0, 1, 0, 1, 2]).await.unwrap();
    drop(short);

    wait_for("every bad input counted", Duration::from_secs(10), || {
        let c = target.counters();
        c.datagram_decode_errors >= before.datagram_decode_errors + 6
            && c.label_mismatches > before.label_mismatches
            && c.gossip_errors > before.gossip_errors
            && c.frame_decode_errors >= before.frame_decode_errors + 2
    })
    .await;
    drop((huge, junk));

    // Still working: a write on the attacked node reaches everyone.
    target.create_tribe("still-alive").await.unwrap();
    wait_for(
        "tribe spreads after the garbage",
        Duration::from_secs(10),
        || nodes.iter().all(|n| n.tribe("still-alive").is_some()),
    )
    .await;
    assert_eq!(target.members_alive(), 3);
    for n in &nodes {
        n.shutdown().await.unwrap();
    }
}

/// A flood of connections that never send a hello: each past the cap
/// pushes out the oldest unfinished setup, counted as stalled, gossip keeps
/// flowing, and once the flood ends the places come back (a late joiner
/// syncs through the node).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_is_capped_and_the_places_come_back() {
    let nodes = start_cluster("flood", 2, |_| {}).await;
    wait_converged_members(&nodes, 2).await;
    let target = &nodes[0];
    let before = target.counters();
    let mut flood = Vec::new();
    for _ in 0..300 {
        flood.push(TcpStream::connect(target.addr()).await.unwrap());
    }
    wait_for(
        "the setups past the cap made way",
        Duration::from_secs(10),
        || target.counters().streams_stalled >= before.streams_stalled + 300 - 256,
    )
    .await;
    // Gossip does not need a stream.
    nodes[1].create_tribe("during-flood").await.unwrap();
    wait_for("gossip during the flood", Duration::from_secs(10), || {
        target.tribe("during-flood").is_some()
    })
    .await;
    drop(flood);
    // The places are given back: a late joiner syncs through the target.
    let mut cfg = test_config("flood-late");
    cfg.seeds = vec![target.addr()];
    let late = tribe::Node::start(cfg).await.unwrap();
    wait_for("the late joiner synced", Duration::from_secs(15), || {
        late.tribe("during-flood").is_some() && late.members_alive() == 3
    })
    .await;
    late.shutdown().await.unwrap();
    for n in &nodes {
        n.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_host_that_never_sends_a_hello_cannot_take_every_place() {
    let nodes = start_cluster("hello-flood", 2, |_| {}).await;
    wait_converged_members(&nodes, 2).await;
    let target = &nodes[0];
    let before = target.counters();
    // Another host (127.0.0.2) opens 300 connections and sends nothing.
    let mut flood = Vec::new();
    for _ in 0..300 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        flood.push(socket.connect(target.addr()).await.unwrap());
    }
    wait_for(
        "the host held to its share",
        Duration::from_secs(10),
        || target.counters().streams_over_cap >= before.streams_over_cap + 300 - 32,
    )
    .await;
    // The tribe's own exchanges still get places: a joiner syncs through
    // the target during the flood.
    nodes[1].create_tribe("during-flood").await.unwrap();
    let mut cfg = test_config("hello-flood-late");
    cfg.seeds = vec![target.addr()];
    let late = tribe::Node::start(cfg).await.unwrap();
    wait_for("the joiner synced", Duration::from_secs(15), || {
        late.tribe("during-flood").is_some() && late.members_alive() == 3
    })
    .await;
    // The setups that never finished are counted as stalled.
    wait_for(
        "the stalled setups counted",
        Duration::from_secs(15),
        || target.counters().streams_stalled >= before.streams_stalled + 32,
    )
    .await;
    drop(flood);
    late.shutdown().await.unwrap();
    for n in &nodes {
        n.shutdown().await.unwrap();
    }
}

/// Nine other hosts (127.0.0.2–.10), each under its own bound, together
/// hold more than every place with connections that never send a hello and
/// come back as soon as they are closed. Each newcomer pushes out the
/// oldest setup of the busiest host instead of being closed at once, so
/// the tribe's own exchanges are never turned away and a joiner syncs
/// through the flooded node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_that_never_send_a_hello_together_cannot_keep_peers_out() {
    let hosts: Vec<Option<std::net::IpAddr>> = (2..=10u8)
        .flat_map(|host| std::iter::repeat_n(Some([127, 0, 0, host].into()), 30))
        .collect();
    peers_get_through_a_flood_of_silent_setups("hello-flood-many", &hosts).await;
}

/// A process of the node's own host (its own address, which has no bound
/// per host) holds more than every place with connections that never send
/// a hello and come back as soon as they are closed. Its setups make way
/// as any host's do, so a joiner still syncs through the node: before,
/// they were never pushed out, and every peer's connection was closed at
/// the cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_process_that_never_sends_a_hello_cannot_lock_peers_out() {
    // From the node's own address, as the tribe's other nodes on this
    // host connect.
    peers_get_through_a_flood_of_silent_setups("hello-flood-local", &[None; 300]).await;
}

/// One flooder per entry of `from` (its source address; `None`: the
/// kernel's choice, the node's own address) connects to a node, sends
/// nothing, and connects again 20 ms after the node closed it. A joiner
/// still syncs through the node, and no connection is closed at once:
/// each newcomer takes an unfinished setup's place.
async fn peers_get_through_a_flood_of_silent_setups(name: &str, from: &[Option<std::net::IpAddr>]) {
    let nodes = start_cluster(name, 2, |_| {}).await;
    wait_converged_members(&nodes, 2).await;
    let target = nodes[0].addr();
    let before = nodes[0].counters();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut flooders = Vec::new();
    for &source in from {
        let stop = stop.clone();
        flooders.push(tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let socket = tokio::net::TcpSocket::new_v4().unwrap();
                if let Some(ip) = source {
                    socket.bind(std::net::SocketAddr::new(ip, 0)).unwrap();
                }
                if let Ok(mut conn) = socket.connect(target).await {
                    // Held, silent, until the node closes it.
                    let mut buf = [0u8; 64];
                    let _ = tokio::time::timeout(
                        Duration::from_secs(2),
                        tokio::io::AsyncReadExt::read(&mut conn, &mut buf),
                    )
                    .await;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    wait_for(
        "setups pushed out for newcomers",
        Duration::from_secs(10),
        || nodes[0].counters().streams_stalled >= before.streams_stalled + 14,
    )
    .await;
    nodes[1].create_tribe("during-flood").await.unwrap();
    let mut cfg = test_config(&format!("{name}-late"));
    cfg.seeds = vec![target];
    let late = tribe::Node::start(cfg).await.unwrap();
    wait_for("the joiner synced", Duration::from_secs(10), || {
        late.tribe("during-flood").is_some() && late.members_alive() == 3
    })
    .await;
    // Push-pulls went on throughout (one every few seconds per node).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = nodes[0].counters();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for f in flooders {
        f.await.unwrap();
    }
    assert_eq!(
        after.streams_over_cap, before.streams_over_cap,
        "no connection was closed at once: each newcomer took an unfinished setup's place"
    );
    late.shutdown().await.unwrap();
    for n in &nodes {
        n.shutdown().await.unwrap();
    }
}

/// After a burst of silent connections past every place, a newcomer from
/// another host gets its place as soon as the setup told to make way has
/// gone: its bad hello is refused at once. A connection of the burst used
/// to take that place as it freed, and the newcomer, with every one after
/// it, waited for a setup to end on its own (4.5 s, the setup timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newcomer_after_a_burst_gets_the_place_made_for_it() {
    use tokio::io::AsyncReadExt;
    let nodes = start_cluster("burst", 2, |_| {}).await;
    wait_converged_members(&nodes, 2).await;
    let target = nodes[0].addr();
    let mut slowest = Duration::ZERO;
    for round in 0..8 {
        // All at once, as a burst comes (from a thread of its own, at the
        // kernel's pace): the node accepts them together.
        let burst = std::thread::spawn(move || {
            (0..300)
                .map(|_| std::net::TcpStream::connect(target).unwrap())
                .collect::<Vec<_>>()
        })
        .join()
        .unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket
            .bind(std::net::SocketAddr::new([127, 1, 0, 5].into(), 0))
            .unwrap();
        let mut probe = socket.connect(target).await.unwrap();
        let began = std::time::Instant::now();
        probe
            .write_all(&[0, 0, 0, 8, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4])
            .await
            .unwrap();
        let mut buf = [0u8; 256];
        // Answered (refused, then closed) once it has a place.
        let answered = tokio::time::timeout(Duration::from_secs(10), async {
            while let Ok(n) = probe.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        })
        .await;
        assert!(answered.is_ok(), "round {round}: never answered");
        slowest = slowest.max(began.elapsed());
        drop(burst);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // At once (a lost place waited for a setup to end, up to 5 s).
    assert!(
        slowest < Duration::from_millis(500),
        "a newcomer waited {slowest:?}"
    );
    for n in &nodes {
        n.shutdown().await.unwrap();
    }
}
