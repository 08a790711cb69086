//! Encrypted tribes: sealed clusters, nodes with a wrong key or none, label
//! isolation, tampered and replayed input, key rotation under traffic with a
//! node down, and moving a running plaintext cluster to encryption.
mod common;

use std::time::Duration;

use common::*;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UdpSocket};
use tribe::engine::sync::SyncMsg;
use tribe::stream::{self, Security};
use tribe::{wire, CallTarget, Config, Encryption, Keyring, Node, PluginKind, SecretKey};

fn keyed(key: &SecretKey) -> impl Fn(&mut Config) + '_ {
    move |cfg: &mut Config| cfg.keyring = Some(Keyring::new(key.clone()))
}

async fn settle(d: Duration) {
    tokio::time::sleep(d).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_tribe_forms_and_nodes_with_a_wrong_key_or_none_learn_nothing() {
    let key = SecretKey::generate();
    let nodes = start_cluster("k", 5, keyed(&key)).await;
    wait_converged_members(&nodes, 5).await;
    nodes[0].create_tribe("core").await.unwrap();
    nodes[0]
        .load_plugin("core", "cpu", "1", PluginKind::Collector, None)
        .await
        .unwrap();
    wait_same_digest(&nodes).await;
    let before = nodes[0].counters();

    let wrong = {
        let mut cfg = test_config("intruder");
        cfg.seeds = vec![nodes[0].addr()];
        cfg.keyring = Some(Keyring::new(SecretKey::generate()));
        Node::start(cfg).await.unwrap()
    };
    let plain = {
        let mut cfg = test_config("plain");
        cfg.seeds = vec![nodes[0].addr()];
        Node::start(cfg).await.unwrap()
    };
    settle(Duration::from_secs(4)).await;
    for outsider in [&wrong, &plain] {
        assert_eq!(
            outsider.members_alive(),
            1,
            "{} stays alone",
            outsider.name()
        );
        assert!(
            outsider.tribes().is_empty(),
            "{} learns no tribe",
            outsider.name()
        );
        assert_eq!(outsider.members().len(), 1);
    }
    wait_for(
        "the intruder's rejections counted",
        Duration::from_secs(20),
        || wrong.counters().key_rejections > 0,
    )
    .await;
    for node in &nodes {
        assert!(node
            .members()
            .iter()
            .all(|m| m.name != "intruder" && m.name != "plain"));
    }
    wait_converged_members(&nodes, 5).await;
    // The outsiders' join attempts (retried) are refused and counted.
    wait_for(
        "the refused streams counted",
        Duration::from_secs(20),
        || {
            let after = nodes[0].counters();
            after.stream_unknown_keys > before.stream_unknown_keys
                && after.plaintext_streams_refused > before.plaintext_streams_refused
        },
    )
    .await;
    let after = nodes[0].counters();
    assert!(
        after.datagram_auth_errors + after.plaintext_datagrams_refused
            >= before.datagram_auth_errors + before.plaintext_datagrams_refused,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clusters_with_one_key_and_different_labels_stay_apart() {
    let key = SecretKey::generate();
    let blue = start_cluster("blue", 2, |cfg| {
        cfg.keyring = Some(Keyring::new(key.clone()));
        cfg.cluster_label = "blue".into();
    })
    .await;
    wait_converged_members(&blue, 2).await;
    let seed = blue[0].addr();
    let green = start_cluster("green", 2, |cfg| {
        cfg.keyring = Some(Keyring::new(key.clone()));
        cfg.cluster_label = "green".into();
        // The first green node tries to join through a blue one.
        if cfg.seeds.is_empty() {
            cfg.seeds = vec![seed];
        }
    })
    .await;
    settle(Duration::from_secs(4)).await;
    for n in blue.iter().chain(green.iter()) {
        assert!(
            n.members()
                .iter()
                .all(|m| m.name.starts_with(&n.name()[..4])),
            "{} saw the other cluster: {:?}",
            n.name(),
            n.members()
        );
    }
    wait_for(
        "the attempts were refused and counted",
        Duration::from_secs(20),
        || {
            let c = blue[0].counters();
            c.label_mismatches + c.stream_auth_errors > 0
        },
    )
    .await;
}

/// Opens a sealed stream to `to` and returns the socket and the sealer.
async fn sealed_stream(to: std::net::SocketAddr, key: &SecretKey) -> (TcpStream, stream::Sealer) {
    let security = Security {
        keyring: Some(Keyring::new(key.clone())),
        encryption: Encryption::Require,
        label: String::new(),
    };
    let mut tcp = TcpStream::connect(to).await.unwrap();
    let (mut sealer, _opener) = stream::connect(&mut tcp, &security, 1 << 20).await.unwrap();
    sealer
        .write_frame(&mut tcp, &[wire::CHANNEL_SYNC])
        .await
        .unwrap();
    (tcp, sealer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_replayed_and_plaintext_input_is_refused_and_counted() {
    let key = SecretKey::generate();
    // No periodic exchange between the two nodes while the test counts
    // the target's frames (the first comes after at least 30 s).
    let quiet = |cfg: &mut Config| {
        keyed(&key)(cfg);
        let mut t = cfg.effective_timings();
        t.push_pull_interval = Duration::from_secs(600);
        cfg.timings = Some(t);
    };
    let nodes = start_cluster("t", 2, quiet).await;
    wait_converged_members(&nodes, 2).await;
    let target = &nodes[1];
    let ring = Keyring::new(key.clone());

    // Datagrams: one flipped bit in a sealed packet, and a plaintext packet.
    let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let before = target.counters();
    let mut sealed = wire::sealed_datagram("", &ring, [9; 24], b"not a swim packet");
    let last = sealed.len() - 1;
    sealed[last] ^= 0x01;
    udp.send_to(&sealed, target.addr()).await.unwrap();
    udp.send_to(&wire::plain_datagram("", b"hello"), target.addr())
        .await
        .unwrap();
    wait_for("datagram refusals counted", Duration::from_secs(5), || {
        let c = target.counters();
        c.datagram_auth_errors > before.datagram_auth_errors
            && c.plaintext_datagrams_refused > before.plaintext_datagrams_refused
    })
    .await;

    // A stream frame with a flipped bit.
    let body = wire::encode(&courier_hello());
    let before = target.counters();
    let (mut tcp, mut sealer) = sealed_stream(target.addr(), &key).await;
    let mut frame = Vec::new();
    sealer.write_frame(&mut frame, &body).await.unwrap();
    let mid = frame.len() / 2;
    frame[mid] ^= 0x10;
    tcp.write_all(&frame).await.unwrap();
    wait_for("the tampered frame refused", Duration::from_secs(5), || {
        target.counters().stream_auth_errors > before.stream_auth_errors
    })
    .await;
    assert_eq!(target.counters().frames_in, before.frames_in);

    // A genuine frame is accepted once; the same bytes again are refused.
    let before = target.counters();
    let (mut tcp, mut sealer) = sealed_stream(target.addr(), &key).await;
    let mut frame = Vec::new();
    sealer.write_frame(&mut frame, &body).await.unwrap();
    let mut twice = frame.clone();
    twice.extend_from_slice(&frame);
    tcp.write_all(&twice).await.unwrap();
    wait_for("the replayed frame refused", Duration::from_secs(5), || {
        let c = target.counters();
        c.frames_in == before.frames_in + 1 && c.stream_auth_errors == before.stream_auth_errors + 1
    })
    .await;

    // A plaintext stream is refused.
    let before = target.counters();
    let mut tcp = TcpStream::connect(target.addr()).await.unwrap();
    // One write: the node may reset the refused connection at once, so a
    // second write could fail (it did, every time, in release builds).
    let mut plain = wire::frame(&[wire::CHANNEL_SYNC]);
    plain.extend_from_slice(&wire::frame(&body));
    let _ = tcp.write_all(&plain).await;
    wait_for(
        "the plaintext stream refused",
        Duration::from_secs(5),
        || target.counters().plaintext_streams_refused > before.plaintext_streams_refused,
    )
    .await;
    assert_eq!(target.counters().frames_in, before.frames_in);

    // The node still works.
    nodes[0].create_tribe("still-ok").await.unwrap();
    wait_same_digest(&nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_rotate_under_traffic_with_a_node_down_during_install_and_use() {
    let k1 = SecretKey::generate();
    let k2 = SecretKey::generate();
    let mut nodes = start_cluster("r", 5, keyed(&k1)).await;
    wait_converged_members(&nodes, 5).await;
    nodes[0].create_tribe("load").await.unwrap();
    wait_same_digest(&nodes).await;

    // Traffic all along: a stream of catalog writes from two nodes.
    let writers = [nodes[1].clone(), nodes[2].clone()];
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let progress = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let traffic = {
        let stop = stop.clone();
        let progress = progress.clone();
        tokio::spawn(async move {
            let mut written = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let w = &writers[(written % 2) as usize];
                w.load_plugin(
                    "load",
                    &format!("p{written}"),
                    "1",
                    PluginKind::Collector,
                    None,
                )
                .await
                .unwrap();
                written += 1;
                progress.store(written, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            written
        })
    };

    // r4 is down while K2 is installed and made primary.
    let down = nodes.pop().unwrap();
    down.shutdown().await.unwrap();
    nodes[0].install_key(k2.clone()).await.unwrap();
    wait_for(
        "K2 installed on the 4 live nodes",
        Duration::from_secs(20),
        || nodes.iter().all(|n| holders(n, k2.id()).0 == 4),
    )
    .await;
    nodes[3].use_key(k2.id()).await.unwrap();
    wait_for(
        "K2 primary on the 4 live nodes",
        Duration::from_secs(20),
        || nodes.iter().all(|n| holders(n, k2.id()).1 == 4),
    )
    .await;

    // r4 comes back with only K1, still in the ring: it rejoins and catches up.
    let mut cfg = test_config("r4");
    cfg.seeds = vec![nodes[0].addr()];
    cfg.keyring = Some(Keyring::new(k1.clone()));
    let back = Node::start(cfg).await.unwrap();
    nodes.push(back);
    wait_converged_members(&nodes, 5).await;
    wait_for("r4 holds K2 as primary", Duration::from_secs(20), || {
        let s = nodes[4].keyring_status();
        s.primary == Some(k2.id())
    })
    .await;
    // And every node has heard so: while one still sees r4 sealing with
    // K1, a removal of K2 through it waits for a switch it takes for under
    // way (`key_not_spread` after the wait) instead of refusing the primary.
    wait_for(
        "every node sees all sealing with K2",
        Duration::from_secs(20),
        || {
            nodes.iter().all(|n| {
                n.keyring_status()
                    .keys
                    .iter()
                    .all(|k| k.id == k2.id() || k.primary_on.is_empty())
            })
        },
    )
    .await;

    // K1 goes; the primary cannot.
    assert_eq!(
        nodes[1].remove_key(k2.id()).await.unwrap_err().code(),
        "primary_key"
    );
    nodes[1].remove_key(k1.id()).await.unwrap();
    wait_for("K1 gone everywhere", Duration::from_secs(20), || {
        nodes
            .iter()
            .all(|n| holders(n, k1.id()).0 == 0 && holders(n, k2.id()).0 == 5)
    })
    .await;

    // The writes kept flowing through the whole rotation; let a few more
    // land after it before stopping.
    let during = progress.load(std::sync::atomic::Ordering::Relaxed);
    assert!(during > 0, "traffic ran during the rotation");
    wait_for("writes after the rotation", Duration::from_secs(10), || {
        progress.load(std::sync::atomic::Ordering::Relaxed) >= during + 5
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let written = traffic.await.unwrap();
    wait_same_digest(&nodes).await;
    for n in &nodes {
        assert_eq!(
            n.tribe("load").unwrap().plugins.len(),
            written as usize,
            "{} lost a write made during the rotation",
            n.name()
        );
    }

    // A node that still has only K1 is refused now, with a clear error.
    let mut cfg = test_config("late-k1");
    cfg.seeds = vec![nodes[0].addr()];
    cfg.keyring = Some(Keyring::new(k1.clone()));
    let stale = Node::start(cfg).await.unwrap();
    wait_for(
        "the stale node's key rejected",
        Duration::from_secs(10),
        || stale.counters().key_rejections > 0,
    )
    .await;
    assert_eq!(stale.members_alive(), 1);
    assert!(stale.tribes().is_empty());
}

/// The three keyring steps run back to back from one node, as a script or
/// a binding would: each waits for the live members to catch up with the
/// one before, so no node is cut off; a step that would cut one off (a
/// member that never gets the key) is refused and changes nothing.
/// `nodes[host]` serves `echo` in tribe `svc`, which every node sees.
async fn serve_echo(nodes: &[Node], host: usize) -> CallTarget {
    let echo = host_echo(&nodes[host]).await;
    wait_for("the endpoint seen", Duration::from_secs(20), || {
        nodes.iter().all(|n| {
            n.tribe("svc").is_some_and(|t| t.members.len() == 1)
                && n.members().iter().any(|m| !m.endpoints.is_empty())
        })
    })
    .await;
    echo
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyring_steps_run_back_to_back_cut_no_node_off() {
    let k1 = SecretKey::generate();
    let k2 = SecretKey::generate();
    let nodes = start_cluster("bb", 3, keyed(&k1)).await;
    wait_converged_members(&nodes, 3).await;
    // A call stream open before the steps: calls go on through new ones.
    let echo = serve_echo(&nodes, 1).await;
    let call = |p: &'static [u8]| nodes[0].call(&echo, p.to_vec(), Duration::from_secs(5));
    assert_eq!(call(b"before").await.unwrap(), b"before");
    nodes[0].install_key(k2.clone()).await.unwrap();
    nodes[0].use_key(k2.id()).await.unwrap();
    nodes[0].remove_key(k1.id()).await.unwrap();
    wait_for(
        "k2 alone, primary everywhere",
        Duration::from_secs(20),
        || {
            nodes
                .iter()
                .all(|n| holders(n, k1.id()).0 == 0 && holders(n, k2.id()) == (3, 3))
        },
    )
    .await;
    settle(Duration::from_secs(2)).await;
    for n in &nodes {
        assert_eq!(n.members_alive(), 3, "{} was cut off", n.name());
    }
    assert_eq!(call(b"after").await.unwrap(), b"after");

    // A member that refuses keyring records (it does not require
    // encryption) never gets k3: making it primary is refused.
    let mut cfg = test_config("bb-send");
    cfg.seeds = vec![nodes[0].addr()];
    cfg.keyring = Some(Keyring::new(k2.clone()));
    cfg.encryption = Encryption::Send;
    let lagging = Node::start(cfg).await.unwrap();
    wait_for("bb-send joined", Duration::from_secs(20), || {
        nodes.iter().all(|n| n.members_alive() == 4)
    })
    .await;
    let k3 = SecretKey::generate();
    nodes[1].install_key(k3.clone()).await.unwrap();
    let err = nodes[1].use_key(k3.id()).await.unwrap_err();
    assert_eq!(err.code(), "key_not_spread", "{err}");
    assert!(err.to_string().contains("bb-send"), "{err}");
    assert_eq!(nodes[1].keyring_status().primary, Some(k2.id()));
    assert_eq!(lagging.members_alive(), 4);
}

/// The same steps, each through another node, back to back: a step taken
/// through a node that has not yet heard of the one before waits for it
/// (it used to be refused: the key unknown there, or still its primary).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyring_steps_through_different_nodes_run_back_to_back() {
    let k1 = SecretKey::generate();
    let nodes = start_cluster("bx", 3, keyed(&k1)).await;
    wait_converged_members(&nodes, 3).await;
    let mut old = k1;
    for round in 0..3 {
        let new = SecretKey::generate();
        nodes[round % 3].install_key(new.clone()).await.unwrap();
        nodes[(round + 1) % 3].use_key(new.id()).await.unwrap();
        nodes[(round + 2) % 3].remove_key(old.id()).await.unwrap();
        wait_for(
            "the new key alone, primary everywhere",
            Duration::from_secs(20),
            || {
                nodes
                    .iter()
                    .all(|n| holders(n, old.id()).0 == 0 && holders(n, new.id()) == (3, 3))
            },
        )
        .await;
        old = new;
    }
    // The primary itself, with no switch under way, is refused (after 3 s).
    let err = nodes[1].remove_key(old.id()).await.unwrap_err();
    assert_eq!(err.code(), "primary_key", "{err}");
    // Also the one just made primary, while the others still switch to it
    // (it was taken for a switch away from it: not spread, after 10 s).
    let new = SecretKey::generate();
    nodes[0].install_key(new.clone()).await.unwrap();
    nodes[0].use_key(new.id()).await.unwrap();
    let err = nodes[0].remove_key(new.id()).await.unwrap_err();
    assert_eq!(err.code(), "primary_key", "{err}");
    for n in &nodes {
        assert_eq!(n.members_alive(), 3, "{} was cut off", n.name());
    }
}

/// A use and a removal of the same key through two nodes at the same
/// moment: whichever loses says what undid it (the key removed, or made
/// the primary), at once, not "not spread" after 10 s; the tribe stays
/// whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_use_and_a_removal_racing_end_with_what_happened() {
    let k1 = SecretKey::generate();
    let nodes = start_cluster("race", 3, keyed(&k1)).await;
    wait_converged_members(&nodes, 3).await;
    for _ in 0..3 {
        let k = SecretKey::generate();
        // The use waits for the install to spread; the removal, through
        // the node that installed it, comes meanwhile.
        nodes[0].install_key(k.clone()).await.unwrap();
        let (used, removed) = tokio::join!(nodes[1].use_key(k.id()), nodes[0].remove_key(k.id()));
        for r in [&used, &removed] {
            if let Err(e) = r {
                assert!(
                    ["unknown_key", "primary_key"].contains(&e.code()),
                    "use {used:?}, remove {removed:?}"
                );
            }
        }
        for n in &nodes {
            assert_eq!(n.members_alive(), 3, "{} was cut off", n.name());
        }
        // Back to k1 alone for the next round.
        if used.is_ok() && removed.is_err() {
            nodes[0].use_key(k1.id()).await.unwrap();
            nodes[0].remove_key(k.id()).await.unwrap();
        }
    }
}

/// A key only one member still holds (an old key file put back on it) is
/// removed through any other member, which does not hold it itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_only_another_member_holds_is_removed_through_any_member() {
    let k1 = SecretKey::generate();
    let stray = SecretKey::generate();
    let mut nodes = start_cluster("st", 2, keyed(&k1)).await;
    let mut cfg = test_config("st-old");
    cfg.seeds = vec![nodes[0].addr()];
    let mut ring = Keyring::new(k1.clone());
    ring.install(stray.clone()).unwrap();
    cfg.keyring = Some(ring);
    nodes.push(Node::start(cfg).await.unwrap());
    wait_for("the stray key seen", Duration::from_secs(20), || {
        nodes.iter().all(|n| n.members_alive() == 3) && holders(&nodes[0], stray.id()).0 == 1
    })
    .await;
    assert!(nodes[0].keyring_status().primary == Some(k1.id()));
    nodes[0].remove_key(stray.id()).await.unwrap();
    wait_for("the stray key gone", Duration::from_secs(20), || {
        nodes.iter().all(|n| holders(n, stray.id()).0 == 0)
    })
    .await;
    // An id no member holds is still unknown.
    let err = nodes[1]
        .remove_key(SecretKey::generate().id())
        .await
        .unwrap_err();
    assert_eq!(err.code(), "unknown_key", "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_plaintext_tribe_moves_to_encryption_without_downtime() {
    let key = SecretKey::generate();
    let mut nodes = start_cluster("m", 3, |_| {}).await;
    wait_converged_members(&nodes, 3).await;
    nodes[0].create_tribe("t").await.unwrap();

    // Step 1, rolling: each node restarts with the key, still sending plaintext.
    for i in 0..nodes.len() {
        let name = nodes[i].name().to_string();
        let seed = nodes[(i + 1) % nodes.len()].addr();
        nodes[i].shutdown().await.unwrap();
        let mut cfg = test_config(&name);
        cfg.seeds = vec![seed];
        cfg.keyring = Some(Keyring::new(key.clone()));
        cfg.encryption = Encryption::Accept;
        nodes[i] = Node::start(cfg).await.unwrap();
        wait_converged_members(&nodes, 3).await;
    }
    // Step 2, live: seal outgoing traffic, still accept plaintext.
    for (i, node) in nodes.iter().enumerate() {
        node.set_encryption(Encryption::Send).await.unwrap();
        node.load_plugin("t", &format!("step2-{i}"), "1", PluginKind::Collector, None)
            .await
            .unwrap();
    }
    wait_same_digest(&nodes).await;
    // Step 3, live: refuse plaintext.
    for node in &nodes {
        node.set_encryption(Encryption::Require).await.unwrap();
    }
    nodes[2]
        .load_plugin("t", "step3", "1", PluginKind::Collector, None)
        .await
        .unwrap();
    wait_same_digest(&nodes).await;
    settle(Duration::from_secs(2)).await;
    for node in &nodes {
        assert_eq!(node.members_alive(), 3, "nobody was lost on the way");
        assert_eq!(node.tribe("t").unwrap().plugins.len(), 4);
    }
    // Now a plaintext node cannot join.
    let mut cfg = test_config("plain-late");
    cfg.seeds = vec![nodes[0].addr()];
    let plain = Node::start(cfg).await.unwrap();
    settle(Duration::from_secs(3)).await;
    assert_eq!(plain.members_alive(), 1);
    assert!(nodes[0].counters().plaintext_streams_refused > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyring_records_are_taken_only_when_every_link_is_sealed() {
    use tokio::io::AsyncReadExt;
    use tribe::hlc::Hlc;
    use tribe::records::{Entry, Key, RingKeyRecord, Value};
    let key = SecretKey::generate();
    // Mid-migration: sealing outgoing traffic, still accepting plaintext.
    let nodes = start_cluster("s", 2, |cfg| {
        cfg.keyring = Some(Keyring::new(key.clone()));
        cfg.encryption = Encryption::Send;
    })
    .await;
    wait_converged_members(&nodes, 2).await;
    let target = &nodes[1];
    let attacker = SecretKey::generate();
    let version = Hlc {
        millis: tribe::runtime::wall_clock_ms(),
        counter: 0,
        node: "courier".into(),
    };
    let records = vec![
        (
            Key::RingKey(attacker.id()),
            Entry {
                version: version.clone(),
                value: Some(Value::RingKey(RingKeyRecord(attacker.clone()))),
                era: None,
            },
        ),
        (
            Key::RingPrimary,
            Entry {
                version,
                value: Some(Value::RingPrimary(attacker.id())),
                era: None,
            },
        ),
    ];
    // An unauthenticated peer pushes them over a plaintext stream.
    let mut tcp = TcpStream::connect(target.addr()).await.unwrap();
    tcp.write_all(&wire::frame(&[wire::CHANNEL_SYNC]))
        .await
        .unwrap();
    tcp.write_all(&wire::frame(&wire::encode(&courier_hello())))
        .await
        .unwrap();
    let mut header = [0u8; 4];
    tcp.read_exact(&mut header).await.unwrap();
    let mut reply = vec![0u8; u32::from_be_bytes(header) as usize];
    tcp.read_exact(&mut reply).await.unwrap();
    tcp.write_all(&wire::frame(&wire::encode(&SyncMsg::Push {
        records,
        more: false,
    })))
    .await
    .unwrap();
    wait_for(
        "the keyring records refused",
        Duration::from_secs(5),
        || target.counters().keyring_records_refused >= 2,
    )
    .await;
    let status = target.keyring_status();
    assert_eq!(status.primary, Some(key.id()));
    assert!(status.keys.iter().all(|k| k.id != attacker.id()));
    // And keyring operations themselves need `require`, refused before any
    // wait for other nodes (use and remove waited 3 s for nothing).
    assert_eq!(
        target
            .install_key(SecretKey::generate())
            .await
            .unwrap_err()
            .code(),
        "encryption_not_required"
    );
    let other = SecretKey::generate().id();
    let steps: [std::pin::Pin<Box<dyn std::future::Future<Output = tribe::Result<()>> + Send + '_>>;
        2] = [
        Box::pin(target.use_key(other)),
        Box::pin(target.remove_key(other)),
    ];
    for step in steps {
        let refused = tokio::time::timeout(Duration::from_secs(2), step)
            .await
            .expect("refused at once, not after waiting for other nodes");
        assert_eq!(refused.unwrap_err().code(), "encryption_not_required");
    }
}

/// Calls keep flowing through key rotations: a host whose keys change
/// retires its call streams with a goodbye, reads what its callers sent
/// before they saw it, and answers; no call is lost or refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_under_load_pass_through_key_rotations_unharmed() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    let k1 = SecretKey::generate();
    let nodes = start_cluster("rot", 3, keyed(&k1)).await;
    wait_converged_members(&nodes, 3).await;
    let echo = serve_echo(&nodes, 1).await;
    let done = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let mut callers = Vec::new();
    for c in 0..8 {
        let (node, echo, done, ok) = (
            nodes[if c % 2 == 0 { 0 } else { 2 }].clone(),
            echo.clone(),
            done.clone(),
            ok.clone(),
        );
        callers.push(tokio::spawn(async move {
            let mut failed = Vec::new();
            while !done.load(Ordering::Relaxed) {
                match node.call(&echo, vec![c; 100], Duration::from_secs(5)).await {
                    Ok(r) if r == vec![c; 100] => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    other => failed.push(format!("{other:?}")),
                }
            }
            failed
        }));
    }
    let mut old = k1;
    let all: Vec<&Node> = nodes.iter().collect();
    // Each of the three nodes rotates once.
    for by in &all {
        let new = SecretKey::generate();
        rotate_key(by, &all, &old, &new).await;
        old = new;
    }
    settle(Duration::from_millis(500)).await;
    done.store(true, Ordering::Relaxed);
    let mut failed = Vec::new();
    for c in callers {
        failed.extend(c.await.unwrap());
    }
    assert_calls_all_went_through(ok.load(Ordering::Relaxed), 100, &failed);
}

/// A call running when the host's keys change is answered on its stream:
/// the host drains the stream instead of cutting its handlers off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_running_through_a_key_change_is_answered() {
    let k1 = SecretKey::generate();
    let nodes = start_cluster("kc", 2, keyed(&k1)).await;
    wait_converged_members(&nodes, 2).await;
    let (caller, host) = (&nodes[0], &nodes[1]);
    host.create_tribe("svc").await.unwrap();
    host.join("svc", host.name()).await.unwrap();
    host.serve("slow", "1", PluginKind::Processor, |_, p| async move {
        tokio::time::sleep(Duration::from_millis(800)).await;
        Ok(p)
    })
    .await
    .unwrap();
    wait_for("the endpoint seen", Duration::from_secs(20), || {
        caller.tribe("svc").is_some_and(|t| t.members.len() == 1)
            && caller.members().iter().any(|m| !m.endpoints.is_empty())
    })
    .await;
    let slow = CallTarget::new("svc", "slow", PluginKind::Processor);
    let running = {
        let (caller, slow) = (caller.clone(), slow.clone());
        tokio::spawn(async move {
            caller
                .call(&slow, b"x".to_vec(), Duration::from_secs(10))
                .await
        })
    };
    settle(Duration::from_millis(200)).await;
    host.install_key(SecretKey::generate()).await.unwrap();
    assert_eq!(running.await.unwrap().unwrap(), b"x");
    assert_eq!(
        caller
            .call(&slow, b"y".to_vec(), Duration::from_secs(10))
            .await
            .unwrap(),
        b"y"
    );
}

/// A node that left gracefully while a rotation went on (the new key
/// installed, then made primary and the old one removed without it) and
/// restarts from its data dir with its old key file: no peer holds its old
/// primary any more and none dials a node that left, so it seals with the
/// other key it holds, is let in, and takes the cluster's keyring.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_left_during_a_rotation_comes_back_with_the_key_it_holds() {
    let k1 = SecretKey::generate();
    let k2 = SecretKey::generate();
    let dir = std::env::temp_dir().join(format!("tribe-test-rot-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut nodes = start_cluster("lr", 3, keyed(&k1)).await;
    let mut cfg = test_config("lr-away");
    cfg.seeds = vec![nodes[0].addr()];
    cfg.keyring = Some(Keyring::new(k1.clone()));
    cfg.data_dir = Some(dir.clone());
    let away = Node::start(cfg.clone()).await.unwrap();
    wait_for("four members", Duration::from_secs(20), || {
        nodes.iter().all(|n| n.members_alive() == 4) && away.members_alive() == 4
    })
    .await;
    nodes[0].install_key(k2.clone()).await.unwrap();
    wait_for("k2 on the node going away", Duration::from_secs(20), || {
        away.keyring_status()
            .keys
            .iter()
            .any(|k| k.id == k2.id() && k.installed_on.iter().any(|n| n == "lr-away"))
    })
    .await;
    away.shutdown().await.unwrap();
    nodes[1].use_key(k2.id()).await.unwrap();
    nodes[2].remove_key(k1.id()).await.unwrap();
    wait_for("k1 gone from the others", Duration::from_secs(20), || {
        nodes.iter().all(|n| holders(n, k1.id()).0 == 0)
    })
    .await;
    // Back with its old key file and its data dir (which holds k2 too).
    let back = Node::start(cfg).await.unwrap();
    wait_for("the node back in", Duration::from_secs(30), || {
        nodes.iter().all(|n| n.members_alive() == 4)
            && back.members_alive() == 4
            && back.keyring_status().primary == Some(k2.id())
    })
    .await;
    nodes.push(back);
    for n in &nodes {
        n.shutdown().await.unwrap();
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The same node, but a peer reaches it before any peer refuses its key
/// (the whole tribe restarted from its data dirs, this node first): it
/// hears peers seal with the newer key it holds, so when its own key is
/// refused it takes theirs, though some peer is up in its view.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_refused_its_key_by_peers_it_hears_takes_the_key_they_seal_with() {
    let k1 = SecretKey::generate();
    let k2 = SecretKey::generate();
    let nodes = start_cluster("hk", 2, keyed(&k2)).await;
    wait_converged_members(&nodes, 2).await;
    // Alone, with the old key primary and the new one installed.
    let mut ring = Keyring::new(k1.clone());
    ring.install(k2.clone()).unwrap();
    let mut cfg = test_config("hk-old");
    cfg.keyring = Some(ring);
    let old = Node::start(cfg).await.unwrap();
    // A peer reaches it first: it joins the others through both.
    let mut cfg = test_config("hk-late");
    cfg.keyring = Some(Keyring::new(k2.clone()));
    cfg.seeds = vec![old.addr(), nodes[0].addr()];
    let late = Node::start(cfg).await.unwrap();
    wait_for(
        "the old node in, sealing with the tribe's key",
        Duration::from_secs(30),
        || {
            nodes.iter().chain([&late]).all(|n| n.members_alive() == 4)
                && old.members_alive() == 4
                && old.keyring_status().primary == Some(k2.id())
        },
    )
    .await;
    for n in nodes.iter().chain([&late, &old]) {
        n.shutdown().await.unwrap();
    }
}

/// A listener at a seed's address that refuses every stream with `answer`.
async fn refusing_listener(answer: Vec<u8>) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let answer = answer.clone();
            tokio::spawn(async move {
                let _ = conn.write_all(&answer).await;
                tokio::time::sleep(Duration::from_secs(1)).await;
            });
        }
    });
    addr
}

/// Anyone who answers at a member's address can refuse a node's key: a
/// refusal that proves no key the node holds (four bytes, or proofs that do
/// not hold) switches no key, though it raises the alarm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_that_proves_no_key_switches_none() {
    let k1 = SecretKey::generate();
    let k2 = SecretKey::generate();
    let mut forged = b"TR\x01\x03\x01".to_vec();
    forged.extend_from_slice(&k2.id().0.to_be_bytes());
    forged.extend_from_slice(&[7u8; 16]);
    for answer in [b"TR\x01\x01".to_vec(), forged] {
        let fake = refusing_listener(answer).await;
        let mut ring = Keyring::new(k1.clone());
        ring.install(k2.clone()).unwrap();
        let mut cfg = test_config("unproven");
        cfg.keyring = Some(ring);
        cfg.seeds = vec![fake];
        let node = Node::start(cfg).await.unwrap();
        let switched = std::cell::Cell::new(false);
        wait_for("refusals", Duration::from_secs(20), || {
            switched.set(switched.get() || node.keyring_status().primary != Some(k1.id()));
            node.counters().key_rejections >= 3
        })
        .await;
        assert_eq!(node.key_refused_by(), Some(fake));
        assert!(
            !switched.get(),
            "the node switched its key on a refusal without proof"
        );
        assert_eq!(node.keyring_status().primary, Some(k1.id()));
        node.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_holding_only_keys_rotated_away_logs_that_it_is_cut_off() {
    logged();
    let current = SecretKey::generate();
    let nodes = start_cluster("co", 2, keyed(&current)).await;
    wait_converged_members(&nodes, 2).await;
    // Two keys the tribe no longer holds: tried in turn, then an error.
    let mut ring = Keyring::new(SecretKey::generate());
    ring.install(SecretKey::generate()).unwrap();
    let mut cfg = test_config("co-stale");
    cfg.seeds = vec![nodes[0].addr()];
    cfg.keyring = Some(ring);
    let stale = Node::start(cfg).await.unwrap();
    wait_for("the cut-off logged", Duration::from_secs(20), || {
        logged()
            .lines()
            .any(|l| l.contains("ERROR") && l.contains("does not hold this node's key"))
    })
    .await;
    assert_eq!(stale.members_alive(), 1);
    // Its status says so too, naming the peer that refused it.
    assert_eq!(stale.key_refused_by(), Some(nodes[0].addr()));
    assert_eq!(nodes[0].key_refused_by(), None);
    // The way back for a node that runs on: the tribe's current key,
    // installed on it.
    stale.install_key(current.clone()).await.unwrap();
    wait_for("the stale node back in", Duration::from_secs(20), || {
        stale.members_alive() == 3 && stale.key_refused_by().is_none()
    })
    .await;
    // What the command logged names the node, though it ran in this task.
    assert!(
        logged()
            .lines()
            .any(|l| l.contains("keyring: key installed") && l.contains("tribe{node=co-stale}")),
        "{}",
        logged()
    );
    stale.shutdown().await.unwrap();
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_left_in_accept_among_sealing_peers_says_so() {
    logged();
    let key = SecretKey::generate();
    let nodes = start_cluster("ac", 2, keyed(&key)).await;
    wait_converged_members(&nodes, 2).await;
    let mut cfg = test_config("ac-late");
    cfg.seeds = vec![nodes[0].addr()];
    cfg.keyring = Some(Keyring::new(key.clone()));
    let late = Node::start(cfg).await.unwrap();
    wait_for("three alive", Duration::from_secs(20), || {
        late.members_alive() == 3
    })
    .await;
    // Put back in `accept` (as one restarted with it left over from
    // turning encryption on): it sends plaintext, which its peers refuse,
    // and hears them seal.
    late.set_encryption(Encryption::Accept).await.unwrap();
    let warned = |l: &str| {
        l.contains("WARN")
            && l.contains("seals its traffic while this node sends plaintext")
            && l.contains("tribe{node=ac-late}")
    };
    wait_for("the accept node warned", Duration::from_secs(20), || {
        logged().lines().any(warned)
    })
    .await;
    // Once a minute at most, whatever the traffic.
    settle(Duration::from_secs(2)).await;
    assert_eq!(logged().lines().filter(|l| warned(l)).count(), 1);
    late.shutdown().await.unwrap();
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}

/// A switch to a key and its removal cross: the switch goes through a node
/// cut off from the others (its wait finds no live member behind), the
/// removal through one of them (no live member of its view seals with the
/// key). The removal wins: within seconds of the heal every node seals with
/// the key that stayed and counts every other alive. `split`: the two
/// others are cut apart too while the removal is taken, and the cut-off
/// node is heard by one of them first. Before, the cut-off node stayed out
/// some 30 s (a sighting of its former primary stood for peers sealing with
/// the new one), or the tribe split for good (its primary record named the
/// removed key, which nodes holding it followed; convergence fuzzer class D).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switch_and_a_removal_that_cross_leave_the_key_that_stayed() {
    for split in [false, true] {
        let k0 = SecretKey::generate();
        let k1 = SecretKey::generate();
        let nodes = start_cluster(if split { "cy" } else { "cx" }, 3, keyed(&k0)).await;
        wait_converged_members(&nodes, 3).await;
        nodes[0].install_key(k1.clone()).await.unwrap();
        wait_for("k1 everywhere", Duration::from_secs(20), || {
            nodes.iter().all(|n| holders(n, k1.id()).0 == 3)
        })
        .await;
        let cut = |a: usize, b: usize, on: bool| {
            for (x, y) in [(a, b), (b, a)] {
                if on {
                    nodes[x].faults().block(nodes[y].addr());
                } else {
                    nodes[x].faults().unblock(nodes[y].addr());
                }
            }
        };
        cut(0, 2, true);
        cut(1, 2, true);
        wait_for("node 2 cut off", Duration::from_secs(30), || {
            nodes[2].members_alive() == 1 && nodes[..2].iter().all(|n| n.members_alive() == 2)
        })
        .await;
        nodes[2].use_key(k1.id()).await.unwrap();
        if split {
            cut(0, 1, true);
        }
        nodes[0].remove_key(k1.id()).await.unwrap();
        if split {
            cut(1, 2, false);
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        for n in &nodes {
            n.faults().heal();
        }
        wait_for(
            "one key everywhere, every node alive",
            Duration::from_secs(20),
            || {
                nodes.iter().all(|n| {
                    n.members_alive() == 3
                        && n.keyring_status().primary == Some(k0.id())
                        && holders(n, k1.id()).0 == 0
                })
            },
        )
        .await;
        for n in nodes {
            n.shutdown().await.unwrap();
        }
    }
}

/// Both sides of a partition rotate to a key of their own, each keeping the
/// key the tribe had. Healed, neither side holds the other's primary, so
/// every stream between them was refused and the tribe stayed two for
/// good; now the exchanges between them are sealed with the key both kept,
/// the keys and the primary records cross, and the later primary wins on
/// both sides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sides_that_rotated_apart_merge_over_the_key_both_kept() {
    let k0 = SecretKey::generate();
    let (ka, kb) = (SecretKey::generate(), SecretKey::generate());
    let nodes = start_cluster("kp", 4, keyed(&k0)).await;
    wait_converged_members(&nodes, 4).await;
    let sides: [&[usize]; 2] = [&[0, 1], &[2, 3]];
    for &x in sides[0] {
        for &y in sides[1] {
            nodes[x].faults().block(nodes[y].addr());
            nodes[y].faults().block(nodes[x].addr());
        }
    }
    wait_for("two sides", Duration::from_secs(30), || {
        nodes.iter().all(|n| n.members_alive() == 2)
    })
    .await;
    for (side, key) in [(sides[0], &ka), (sides[1], &kb)] {
        nodes[side[0]].install_key(key.clone()).await.unwrap();
        wait_for(
            "the side's key on the side",
            Duration::from_secs(20),
            || side.iter().all(|&i| holders(&nodes[i], key.id()).0 == 2),
        )
        .await;
        nodes[side[0]].use_key(key.id()).await.unwrap();
        wait_for("the side seals with it", Duration::from_secs(20), || {
            side.iter()
                .all(|&i| nodes[i].keyring_status().primary == Some(key.id()))
        })
        .await;
    }
    for n in &nodes {
        n.faults().heal();
    }
    wait_for(
        "one tribe again, sealing with the later primary",
        Duration::from_secs(60),
        || {
            nodes
                .iter()
                .all(|n| n.members_alive() == 4 && n.keyring_status().primary == Some(kb.id()))
        },
    )
    .await;
    wait_same_digest(&nodes).await;
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}
