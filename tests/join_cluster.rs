//! Joining a running cluster after the start (`Node::join_cluster`).

mod common;

use std::time::Duration;

use common::{start_cluster, test_config, wait_converged_members, wait_for};
use tribe::{Error, Keyring, Node, SecretKey};

/// A port nobody listens on (bound, then closed).
fn dead_addr() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_started_alone_joins_through_an_address_learnt_later() {
    let a = Node::start(test_config("ja")).await.unwrap();
    a.create_tribe("web").await.unwrap();
    let b = Node::start(test_config("jb")).await.unwrap();
    assert_eq!(b.members_alive(), 1);

    let joined = b.join_cluster(&[a.addr().to_string()]).await.unwrap();
    assert_eq!(joined, 1);
    // The exchange has ended: b holds a's state already.
    assert!(
        b.tribes().iter().any(|t| t.name == "web"),
        "{:?}",
        b.tribes()
    );
    wait_converged_members(&[a.clone(), b.clone()], 2).await;
    b.shutdown().await.unwrap();
    a.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_running_clusters_merge_through_one_join() {
    let left = start_cluster("jl", 2, |_| {}).await;
    let right = start_cluster("jr", 2, |_| {}).await;
    wait_converged_members(&left, 2).await;
    wait_converged_members(&right, 2).await;
    left[0].create_tribe("left-only").await.unwrap();

    let joined = right[1]
        .join_cluster(&[format!("localhost:{}", left[1].addr().port())])
        .await
        .unwrap();
    assert_eq!(joined, 1);
    let all: Vec<Node> = left.iter().chain(&right).cloned().collect();
    wait_converged_members(&all, 4).await;
    wait_for(
        "every node knows the left tribe",
        Duration::from_secs(20),
        || {
            all.iter()
                .all(|n| n.tribes().iter().any(|t| t.name == "left-only"))
        },
    )
    .await;
    for n in all {
        n.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_counts_the_addresses_that_answered_and_says_why_none_did() {
    let a = Node::start(test_config("jc-a")).await.unwrap();
    let b = Node::start(test_config("jc-b")).await.unwrap();
    let dead = dead_addr();

    // One of two answers: Ok(1).
    let joined = b
        .join_cluster(&[dead.to_string(), a.addr().to_string()])
        .await
        .unwrap();
    assert_eq!(joined, 1);

    // None answers: Io naming each place and why.
    let c = Node::start(test_config("jc-c")).await.unwrap();
    let err = c
        .join_cluster(&[dead.to_string(), "no-such-host.invalid:7946".to_string()])
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Io(_)), "{err:?}");
    assert!(
        msg.contains(&format!("{dead}: connection refused")),
        "{msg}"
    );
    assert!(
        msg.contains("no-such-host.invalid:7946: does not resolve"),
        "{msg}"
    );
    assert_eq!(c.members_alive(), 1);

    // Bad places are refused before anything is sent.
    let none: [&str; 0] = [];
    for bad in [
        c.join_cluster(&none).await,
        c.join_cluster(&["127.0.0.1"]).await,
        c.join_cluster(&["127.0.0.1:0"]).await,
        c.join_cluster(&["224.0.0.1:7946"]).await,
        c.join_cluster(&["host name:7946"]).await,
        c.join_cluster(&[c.addr().to_string()]).await,
        c.join_cluster(&[format!("0.0.0.0:{}", c.addr().port())])
            .await,
        c.join_cluster(&[format!("[::ffff:127.0.0.1]:{}", a.addr().port())])
            .await,
        c.join_cluster(&vec!["127.0.0.1:9"; tribe::api::MAX_JOIN_PLACES + 1])
            .await,
    ] {
        assert!(matches!(bad, Err(Error::InvalidArgument(_))), "{bad:?}");
    }
    for n in [a, b, c] {
        n.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_through_a_node_holding_other_keys_fails_and_a_stopped_node_refuses() {
    let keyed = |name: &str| {
        let mut cfg = test_config(name);
        cfg.keyring = Some(Keyring::new(SecretKey::generate()));
        cfg
    };
    let a = Node::start(keyed("jk-a")).await.unwrap();
    let b = Node::start(keyed("jk-b")).await.unwrap();
    let err = b.join_cluster(&[a.addr().to_string()]).await.unwrap_err();
    assert!(matches!(err, Error::Io(_)), "{err:?}");
    assert!(
        err.to_string().contains("does not hold this node's key"),
        "{err}"
    );
    assert_eq!(b.members_alive(), 1);
    assert_eq!(a.members_alive(), 1);

    // A node without a key gets no refusal it could check: the stream
    // its peer cut says what that most likely means.
    let plain = Node::start(test_config("jk-plain")).await.unwrap();
    let err = plain
        .join_cluster(&[a.addr().to_string()])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Io(_)), "{err:?}");
    assert!(
        err.to_string().contains("it may require encryption"),
        "{err}"
    );
    plain.shutdown().await.unwrap();

    b.shutdown().await.unwrap();
    let after = b.join_cluster(&[a.addr().to_string()]).await;
    assert!(matches!(after, Err(Error::ShuttingDown)), "{after:?}");
    a.shutdown().await.unwrap();
}

/// A node started with a key the tribe has left, given the current one
/// (install, as an operator mends it), joins at once: its peer refuses the
/// old key and proves the current one, and the join's exchange is opened
/// again with it rather than failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_right_after_installing_the_current_key_goes_through() {
    let (old, current) = (SecretKey::generate(), SecretKey::generate());
    let with = |name: &str, key: &SecretKey| {
        let mut cfg = test_config(name);
        cfg.keyring = Some(Keyring::new(key.clone()));
        cfg
    };
    let a = Node::start(with("jr-a", &current)).await.unwrap();
    let c = Node::start(with("jr-c", &old)).await.unwrap();
    let err = c.join_cluster(&[a.addr().to_string()]).await.unwrap_err();
    assert!(
        err.to_string().contains("does not hold this node's key"),
        "{err}"
    );
    c.install_key(current.clone()).await.unwrap();
    let joined = c.join_cluster(&[a.addr().to_string()]).await;
    assert!(matches!(joined, Ok(1)), "{joined:?}");
    c.shutdown().await.unwrap();
    a.shutdown().await.unwrap();
}

/// A node bound to every address is reached through another of them: the
/// exchange answers under its own identity, and the join says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_through_another_address_of_this_node_is_no_join() {
    let mut cfg = test_config("jself");
    cfg.bind = "0.0.0.0:0".parse().unwrap();
    cfg.advertise = Some("127.0.0.1:0".parse().unwrap());
    let n = Node::start(cfg).await.unwrap();
    let other = format!("127.0.0.2:{}", n.addr().port());
    let err = n.join_cluster(&[other.as_str()]).await.unwrap_err();
    assert!(matches!(err, Error::Io(_)), "{err:?}");
    assert!(err.to_string().contains("this node itself"), "{err}");
    assert_eq!(n.members_alive(), 1);
    // Not kept as a seed: an alone node would dial itself there for good.
    let started = n.counters().push_pulls_started;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(n.counters().push_pulls_started, started);
    n.shutdown().await.unwrap();
}

/// A join waiting on a name whose lookup does not answer ends when the
/// node stops, at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_ends_a_join_at_once() {
    let n = Node::start(test_config("jstop")).await.unwrap();
    // A TCP port that accepts and never answers: the exchange waits.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let place = silent.local_addr().unwrap().to_string();
    let joining = {
        let n = n.clone();
        tokio::spawn(async move { n.join_cluster(&[place]).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let asked = std::time::Instant::now();
    n.shutdown().await.unwrap();
    let ended = joining.await.unwrap();
    assert!(matches!(ended, Err(Error::ShuttingDown)), "{ended:?}");
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "{:?}",
        asked.elapsed()
    );
    drop(silent);
}

/// A place that takes the connection and never answers is told as such,
/// not as a node that refused this one's key or label.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_place_that_never_answers_is_told_so() {
    let mut cfg = test_config("jsilent");
    cfg.keyring = Some(Keyring::new(SecretKey::generate()));
    let n = Node::start(cfg).await.unwrap();
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let place = silent.local_addr().unwrap().to_string();
    let err = n.join_cluster(&[place.as_str()]).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains(&format!(
            "{place}: the peer did not finish the stream setup in time"
        )),
        "{msg}"
    );
    drop(silent);
    n.shutdown().await.unwrap();
}

/// A join with a limit counts what it reached by then (a live node beside
/// one that never answers), gives the rest up, and is `Timeout` when it
/// reached nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_within_a_limit_counts_what_it_reached_by_then() {
    let a = Node::start(test_config("jwa")).await.unwrap();
    let b = Node::start(test_config("jwb")).await.unwrap();
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let place = silent.local_addr().unwrap().to_string();
    let limit = Duration::from_millis(800);

    let began = std::time::Instant::now();
    let err = b
        .join_cluster_within(&[place.as_str()], limit)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    assert!(began.elapsed() >= limit && began.elapsed() < 5 * limit);
    // A refusal heard by the limit is told (with the rest still under
    // way), not hidden behind a timeout.
    let refusing = dead_addr().to_string();
    let err = b
        .join_cluster_within(&[place.clone(), refusing.clone()], limit)
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Io(_)), "{err:?}");
    assert!(
        msg.contains(&refusing)
            && msg.contains(&format!("{place}: still under way at the join's limit")),
        "{msg}"
    );

    let began = std::time::Instant::now();
    let both = [place.clone(), a.addr().to_string()];
    assert_eq!(b.join_cluster_within(&both, limit).await.unwrap(), 1);
    assert!(began.elapsed() >= limit && began.elapsed() < 5 * limit);
    assert_eq!(b.members_alive(), 2);
    // A limit the join does not need changes nothing.
    let quick = b
        .join_cluster_within(&[a.addr().to_string()], Duration::from_secs(30))
        .await;
    assert_eq!(quick.unwrap(), 1);
    drop(silent);
    b.shutdown().await.unwrap();
    a.shutdown().await.unwrap();
}

/// A join whose limit is already past (a timeout of 0) is a timeout that
/// reaches nobody: no connection is opened to the place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_with_no_time_reaches_nobody() {
    let b = Node::start(test_config("jzero")).await.unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let place = listener.local_addr().unwrap().to_string();
    for _ in 0..5 {
        let err = b
            .join_cluster_within(&[place.as_str()], Duration::ZERO)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let reached = listener.accept();
    assert!(
        reached
            .as_ref()
            .is_err_and(|e| e.kind() == std::io::ErrorKind::WouldBlock),
        "a connection came: {reached:?}"
    );
    b.shutdown().await.unwrap();
}

/// Joins whose callers give up (a timeout, a dropped future, an HTTP
/// client gone) leave nothing behind: their exchanges end at once, also
/// one still setting up its stream with a peer that never answers, and
/// later joins run as if they had never been.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_given_up_on_leave_nothing_behind() {
    // Sealed: a stream's setup waits for the peer's part of it.
    let key = SecretKey::generate();
    let sealed = |name: &str| {
        let mut cfg = test_config(name);
        cfg.keyring = Some(Keyring::new(key.clone()));
        cfg
    };
    let a = Node::start(sealed("jgone-a")).await.unwrap();
    let n = Node::start(sealed("jgone")).await.unwrap();
    // In a cluster already: the engine tries no seed of its own.
    assert_eq!(n.join_cluster(&[a.addr().to_string()]).await.unwrap(), 1);
    // A TCP port that accepts and never answers: each exchange would wait
    // for its whole timeout.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    silent.set_nonblocking(true).unwrap();
    let place = silent.local_addr().unwrap().to_string();
    for _ in 0..80 {
        let given_up =
            tokio::time::timeout(Duration::from_millis(30), n.join_cluster(&[place.as_str()]))
                .await;
        assert!(given_up.is_err(), "a silent place answered: {given_up:?}");
    }
    assert_eq!(n.join_cluster(&[a.addr().to_string()]).await.unwrap(), 1);
    // Each given-up exchange closed its stream at once, not at the end of
    // the stream setup's 5 s wait for the peer: the silent side reads the
    // end of each it accepted.
    let mut accepted = Vec::new();
    let mut closed = std::collections::BTreeSet::new();
    wait_for(
        "the given-up exchanges to close",
        Duration::from_secs(3),
        || {
            while let Ok((s, _)) = silent.accept() {
                s.set_nonblocking(true).unwrap();
                accepted.push(s);
            }
            for (i, s) in accepted.iter_mut().enumerate() {
                use std::io::Read;
                let mut buf = [0u8; 4096];
                while let Ok(got) = s.read(&mut buf) {
                    if got == 0 {
                        closed.insert(i);
                        break;
                    }
                }
            }
            accepted.len() >= 80 && closed.len() == accepted.len()
        },
    )
    .await;
    n.shutdown().await.unwrap();
    a.shutdown().await.unwrap();
}

/// A join given up keeps as a seed an address another join reached
/// meanwhile: a node alone later still dials it. (Through a proxy that
/// holds its first connection silent and forwards the others.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_given_up_keeps_a_seed_another_join_reached() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let l = Node::start(test_config("js-l")).await.unwrap();
    let target = l.addr();
    let proxy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let via = proxy.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let seen = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut inbound, _)) = proxy.accept().await {
            if seen.fetch_add(1, Ordering::SeqCst) == 0 {
                held.push(inbound);
                continue;
            }
            tokio::spawn(async move {
                if let Ok(mut out) = tokio::net::TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                }
            });
        }
    });
    let b = Node::start(test_config("js-b")).await.unwrap();
    let places = [via.to_string()];
    let held = tokio::time::timeout(Duration::from_secs(2), b.join_cluster(&places));
    let (held, reached) = tokio::join!(held, async {
        // Once the held join's connection is in.
        wait_for("the first join's dial", Duration::from_secs(5), || {
            accepted.load(Ordering::SeqCst) >= 1
        })
        .await;
        b.join_cluster(&places).await
    });
    assert!(held.is_err(), "the held join ended: {held:?}");
    assert!(matches!(reached, Ok(1)), "{reached:?}");
    // Alone again, the node dials its seed, the proxy.
    l.abort().await;
    let before = accepted.load(Ordering::SeqCst);
    wait_for("a dial of the kept seed", Duration::from_secs(30), || {
        accepted.load(Ordering::SeqCst) > before
    })
    .await;
    b.shutdown().await.unwrap();
}
