//! Entry points of the fuzz targets in `fuzz/`: one function per decoder or
//! handler of bytes from outside, each taking the raw input. `cargo fuzz`
//! calls them with the `fuzzing` feature; the tests below replay every
//! committed seed corpus (`fuzz/corpus/<target>/`) under plain `cargo test`,
//! so a regression on a known input fails without a nightly toolchain.
//!
//! The inputs of multi-message targets are split into messages by [`split`]:
//! a little-endian `u16` length, then that many bytes, repeated.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::config::{Config, Encryption, Profile};
use crate::crypto::{Keyring, SecretKey};
use crate::engine::{Engine, NodeId, Output, Shared};
use crate::rpc::proto::RpcMsg;
use crate::rpc::{RpcCounters, RpcLimits};
use crate::stream::Security;
use crate::wire;

/// Cluster label of every fuzzed node.
pub const LABEL: &str = "fuzz";
/// Wall clock handed to the engines (ms), far from zero so versions fit.
pub const NOW_MS: u64 = 1_700_000_000_000;
/// Largest frame the stream and call targets accept.
pub const MAX_FRAME: usize = 64 * 1024;
/// Messages a multi-message input is cut into, at most.
const MAX_MESSAGES: usize = 64;

/// The fixed key of keyed targets (the seed generator seals with it too).
pub fn key() -> SecretKey {
    SecretKey::from_bytes([7u8; 32])
}

/// A keyring holding [`key`].
pub fn keyring() -> Keyring {
    Keyring::new(key())
}

/// Cuts `data` into messages: `u16` LE length, bytes, repeated (a short last
/// message takes what is left).
pub fn split(data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = data;
    while rest.len() >= 2 && out.len() < MAX_MESSAGES {
        let len = usize::from(u16::from_le_bytes([rest[0], rest[1]]));
        let body = &rest[2..];
        let take = len.min(body.len());
        out.push(&body[..take]);
        rest = &body[take..];
    }
    out
}

/// Joins messages the way [`split`] cuts them (for seeds).
pub fn join<B: AsRef<[u8]>>(messages: &[B]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in messages {
        let m = m.as_ref();
        let len = u16::try_from(m.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&m[..usize::from(len)]);
    }
    out
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime")
    })
}

// ------------------------------------------------------------ datagrams

/// Envelope check and open of a datagram, with and without a keyring.
pub fn datagram(data: &[u8]) {
    let ring = keyring();
    let _ = wire::open_datagram(LABEL, Some(&ring), data);
    let _ = wire::open_datagram(LABEL, None, data);
}

/// Address and name of the fuzzed engine (its SWIM identity).
pub fn engine_id() -> NodeId {
    NodeId::new("fuzz-b", SocketAddr::from(([127, 0, 0, 1], 7002)), 1)
}

/// Address and name of the peer the seed generator runs against it.
pub fn peer_id() -> NodeId {
    NodeId::new("fuzz-a", SocketAddr::from(([127, 0, 0, 1], 7001)), 1)
}

/// An engine with identity `id`, plaintext, `local` timings, started.
pub fn engine(id: &NodeId, seeds: Vec<SocketAddr>) -> Engine {
    engine_with(id, seeds, Vec::new())
}

/// [`engine`] with commands applied before it starts.
pub fn engine_with(
    id: &NodeId,
    seeds: Vec<SocketAddr>,
    commands: Vec<crate::engine::commands::Command>,
) -> Engine {
    let mut cfg = Config::new(id.name.to_string());
    cfg.cluster_label = LABEL.into();
    cfg.profile = Profile::Local;
    cfg.collect_facts = false;
    cfg.seeds = seeds;
    let mut engine = Engine::new(&cfg, id.addr, id.generation, BTreeMap::new(), NOW_MS, 1)
        .expect("a valid engine config");
    for cmd in commands {
        let _ = engine.handle_command(NOW_MS, cmd);
    }
    engine.start(NOW_MS);
    engine
}

thread_local! {
    /// Compiled policies, shared by every engine of a fuzzing thread.
    static POLICIES: std::cell::RefCell<crate::policy_set::PolicySet> = Default::default();
}

/// Drains an engine's outputs, answering its policy requests at once.
pub fn drain(engine: &mut Engine) -> Vec<Output> {
    let mut outputs = Vec::new();
    while let Some(output) = engine.poll_output() {
        match output {
            Output::EvaluatePolicies(request) => {
                let results = POLICIES.with(|s| s.borrow_mut().answer(&request));
                engine.handle_policy_results(NOW_MS, results);
            }
            other => outputs.push(other),
        }
    }
    outputs
}

/// Whole datagrams (envelope included) handed to the engine in order: the
/// SWIM payload addressed to our identity, with its custom broadcasts
/// (gossip deltas) validated and merged.
pub fn swim(data: &[u8]) {
    let mut b = engine(&engine_id(), Vec::new());
    drain(&mut b);
    for (i, d) in split(data).into_iter().enumerate() {
        b.handle_datagram(NOW_MS + 10 * i as u64, peer_id().addr, d);
        drain(&mut b);
    }
    let _ = (b.members(), b.tribes(), b.state_digest());
}

/// Gossip deltas: each decoded as the broadcast handler decodes it, then
/// validated and merged into one store. The first byte's low bit says
/// whether keyring records are taken (`require` mode).
pub fn gossip_delta(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let mut shared = Shared {
        state: crate::state::State::new(),
        clock: crate::hlc::Clock::new("fuzz-b"),
        counters: Default::default(),
        now_ms: NOW_MS,
        max_skew_ms: 60_000,
        cluster_offset_ms: 0,
        kept_floor_ms: 0,
        own: NodeId::new(
            "fuzz-b",
            "127.0.0.1:7946".parse().expect("a literal address"),
            1,
        ),
        claims: Default::default(),
        limits: crate::config::StateLimits::default(),
        tombstone_grace_ms: 3_600_000,
        verdict_window_ms: 0,
        softened: Vec::new(),
        last_sender: None,
        accept_keyring_records: flags & 1 == 1,
        invalid_logged_ms: None,
    };
    for item in split(rest) {
        if let Ok((key, entry)) = wire::decode::<(crate::records::Key, crate::records::Entry)>(item)
        {
            shared.accept_remote(key, entry);
        }
    }
    let _ = shared.state.digest();
}

// ------------------------------------------------------------ sync

/// Sync frames through the exchange. The first byte picks the role: even,
/// the engine answers a stream the peer opened; odd, the engine opened it
/// (as a join through its seed) and the frames are the peer's answers.
pub fn sync(data: &[u8]) {
    let Some((&role, rest)) = data.split_first() else {
        return;
    };
    let (mut b, conn) = if role & 1 == 0 {
        let mut b = engine(&engine_id(), Vec::new());
        drain(&mut b);
        let conn = b.accept_stream();
        (b, conn)
    } else {
        let mut b = engine(&engine_id(), vec![peer_id().addr]);
        let conn = drain(&mut b).into_iter().find_map(|o| match o {
            Output::Connect { conn, .. } => Some(conn),
            _ => None,
        });
        let Some(conn) = conn else { return };
        (b, conn)
    };
    for (i, frame) in split(rest).into_iter().enumerate() {
        b.handle_frame(NOW_MS + i as u64, conn, frame);
        drain(&mut b);
    }
    b.handle_stream_closed(NOW_MS + 100, conn);
    drain(&mut b);
    let _ = b.state_digest();
}

// ------------------------------------------------------------ streams

/// What one side of an in-memory stream receives: `bytes`, then the end.
async fn peer_sends(bytes: Vec<u8>) -> (tokio::io::DuplexStream, tokio::task::JoinHandle<()>) {
    let (ours, theirs) = tokio::io::duplex(256 * 1024);
    let (mut r, mut w) = tokio::io::split(theirs);
    let task = tokio::spawn(async move {
        let _ = w.write_all(&bytes).await;
        let _ = w.shutdown().await;
        // Read what we answer so our writes never block; keep the pipe open.
        let mut sink = Vec::new();
        let _ = r.read_to_end(&mut sink).await;
    });
    (ours, task)
}

/// Stream hello and frames. The first byte picks the side and security:
/// 0 accepts with a required key, 1 accepts plaintext, 2 connects with a key.
pub fn stream(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let keyed = Security {
        keyring: Some(keyring()),
        encryption: Encryption::Require,
        label: LABEL.into(),
    };
    let plain = Security::plaintext(LABEL);
    let bytes = rest.to_vec();
    runtime().block_on(async move {
        let (mut s, peer) = peer_sends(bytes).await;
        let halves = match mode % 3 {
            0 => crate::stream::accept(&mut s, &keyed, MAX_FRAME).await,
            1 => crate::stream::accept(&mut s, &plain, MAX_FRAME).await,
            _ => crate::stream::connect(&mut s, &keyed, MAX_FRAME).await,
        };
        if let Ok((_sealer, mut opener)) = halves {
            for _ in 0..MAX_MESSAGES {
                match opener.read_frame(&mut s).await {
                    Ok(Some(body)) => {
                        let _ = wire::decode::<RpcMsg>(&body);
                    }
                    _ => break,
                }
            }
        }
        drop(s);
        let _ = peer.await;
    });
}

// ------------------------------------------------------------ calls

/// A call of the fuzzed server's `echo` processor in tribe `t`.
fn echo_call(id: u64) -> RpcMsg {
    RpcMsg::Call {
        id,
        caller: "fuzz-a".into(),
        tribe: "t".into(),
        plugin: "echo".into(),
        version: "1".into(),
        kind: crate::PluginKind::Processor,
        budget_ms: 1000,
        payload: b"ping".to_vec(),
    }
}

/// SHA-256 of the artifact the fuzzed server holds.
pub fn artifact_bytes() -> Vec<u8> {
    (0..1000u32).map(|i| i as u8).collect()
}

/// Call-channel frames (length-prefixed, plaintext) read by a serving node:
/// calls to an `echo` processor in tribe `t`, artifact fetches.
pub fn rpc_server(data: &[u8]) {
    let bytes = data.to_vec();
    runtime().block_on(async move {
        use crate::rpc::server::Serving;
        let server = Arc::new(crate::rpc::server::Server::new(
            RpcLimits {
                max_payload: 4096,
                max_inflight_per_conn: 8,
                ..RpcLimits::default()
            },
            Arc::new(RpcCounters::default()),
            Box::new(|tribe| tribe == "t"),
        ));
        server.register(
            "echo",
            "1",
            crate::PluginKind::Processor,
            Serving::Future(Arc::new(|_info, payload| {
                Box::pin(async move { Ok(payload) })
            })),
        );
        // Answered through a responder: at once, declined, or dropped.
        server.register(
            "echo",
            "2",
            crate::PluginKind::Processor,
            Serving::Responder(Arc::new(|_info, payload, responder| {
                match payload.first() {
                    Some(0) => responder.decline(),
                    Some(1) => drop(responder),
                    _ => {
                        let _ = responder.reply(payload);
                    }
                }
            })),
        );
        let artifact = artifact_bytes();
        server.hold_artifact(crate::artifacts::sha256(&artifact), Arc::new(artifact));
        let (mut s, peer) = peer_sends(bytes).await;
        let plain = Security::plaintext(LABEL);
        let Ok((sealer, opener)) = crate::stream::accept(&mut s, &plain, MAX_FRAME).await else {
            return;
        };
        let (r, w) = tokio::io::split(s);
        server.serve_stream(r, w, sealer, opener).await;
        let _ = peer.await;
    });
}

/// The bytes a calling node reads back from a host: the fuzz input is
/// everything the host answers (length-prefixed frames) after it has read
/// the caller's channel byte and its call (id 1) or artifact fetch (id 1).
/// The first byte picks which.
pub fn rpc_client(data: &[u8]) {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let answer = rest.to_vec();
    runtime().block_on(async move {
        // The host is the far end of an in-memory pipe the pool adopts as
        // its stream to `addr`: the client code is the same as over TCP.
        let addr = SocketAddr::from(([127, 0, 0, 1], 9));
        let (ours, mut theirs) = tokio::io::duplex(256 * 1024);
        let host = tokio::spawn(async move {
            // The channel byte's frame, then the request's frame.
            for _ in 0..2 {
                let mut header = [0u8; wire::FRAME_HEADER];
                if theirs.read_exact(&mut header).await.is_err() {
                    return;
                }
                let len = u32::from_be_bytes(header) as usize;
                let mut body = vec![0u8; len.min(MAX_FRAME)];
                if theirs.read_exact(&mut body).await.is_err() {
                    return;
                }
            }
            let _ = theirs.write_all(&answer).await;
            let _ = theirs.shutdown().await;
            let mut sink = Vec::new();
            let _ = theirs.read_to_end(&mut sink).await;
        });
        let pool = crate::rpc::client::Pool::new(
            RpcLimits::default(),
            MAX_FRAME,
            Arc::new(RpcCounters::default()),
        );
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        let security = Security::plaintext(LABEL);
        if !pool.adopt(addr, ours, &security).await {
            host.abort();
            return;
        }
        let sha = crate::artifacts::sha256(&artifact_bytes());
        let _ = pool
            // Never large: the adopted in-memory host is the only stream.
            .request(addr, &security, deadline, false, |id| {
                if which & 1 == 0 {
                    echo_call(id)
                } else {
                    RpcMsg::Fetch {
                        id,
                        sha256: sha,
                        offset: 0,
                        len: crate::rpc::server::MAX_CHUNK,
                    }
                }
            })
            .await;
        pool.close_all();
        host.abort();
        let _ = host.await;
    });
}

// ------------------------------------------------------------ files and bodies

/// A scratch directory of this process. A fuzzer process ends without a
/// word (libFuzzer exits), so those of processes gone are removed here.
fn scratch() -> &'static std::path::Path {
    static DIR: OnceLock<std::path::PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        const PREFIX: &str = "tribe-fuzz-datadir-";
        let tmp = std::env::temp_dir();
        for entry in std::fs::read_dir(&tmp).into_iter().flatten().flatten() {
            let name = entry.file_name();
            let pid = name.to_str().and_then(|n| n.strip_prefix(PREFIX));
            let gone = pid.is_some_and(|p| {
                p.parse::<u32>().is_ok() && !std::path::Path::new("/proc").join(p).exists()
            });
            if gone {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        let dir = tmp.join(format!("{PREFIX}{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        dir
    })
}

/// Data-dir files: the input is written as the state file and as the keyring
/// file of a scratch directory, which is then loaded as at a restart.
pub fn datadir(data: &[u8]) {
    static LOCK: Mutex<()> = Mutex::new(());
    let _one = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let dir = scratch();
    if std::fs::write(dir.join(crate::datadir::STATE_FILE), data).is_ok() {
        let _ = crate::datadir::load(dir);
    }
    if std::fs::write(dir.join(crate::datadir::KEYRING_FILE), data).is_ok() {
        let _ = crate::datadir::load_keyring(dir);
        let _ = crate::datadir::merge_keyring(dir, Some(keyring()));
    }
}

/// A task manifest (JSON text), parsed and validated.
pub fn task_manifest(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(m) = crate::workflow::manifest::Manifest::parse("fuzz-task", text) {
        let _ = m.validate();
    }
}

/// A metric batch and a step request as a publisher or processor receives them.
pub fn metric_batch(data: &[u8]) {
    if let Ok(metrics) = crate::workflow::manifest::decode_metrics(data) {
        let _ = crate::workflow::manifest::encode_metrics(&metrics);
    }
    let _ = crate::workflow::run::StepRequest::decode(data);
}

/// A CEL policy: the first line is compiled, the other lines (`key=value`)
/// are the facts it is evaluated over.
pub fn policy(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.lines();
    let when = lines.next().unwrap_or_default();
    let facts: BTreeMap<String, String> = lines
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    if let Ok(condition) = crate::policy::Condition::compile(when) {
        let _ = condition.evaluate(&facts);
    }
}

/// An admin API write: the first byte picks the route, the bytes up to the
/// first NUL are the path segment, the rest is the JSON body. The node is
/// one keyed node per process, so state carries over between inputs.
pub fn admin_body(data: &[u8]) {
    static NODE: OnceLock<crate::Node> = OnceLock::new();
    let Some((&route, rest)) = data.split_first() else {
        return;
    };
    let (segment, body) = match rest.iter().position(|&b| b == 0) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (&rest[..0], rest),
    };
    let segment = String::from_utf8_lossy(segment).into_owned();
    let body = bytes::Bytes::copy_from_slice(body);
    runtime().block_on(async move {
        let node = match NODE.get() {
            Some(n) => n.clone(),
            None => {
                let mut cfg = Config::new("fuzz-admin");
                cfg.bind = SocketAddr::from(([127, 0, 0, 1], 0));
                cfg.profile = Profile::Local;
                cfg.collect_facts = false;
                cfg.keyring = Some(keyring());
                let node = crate::Node::start(cfg).await.expect("a fuzzed node");
                NODE.get_or_init(|| node).clone()
            }
        };
        let _ = crate::admin::fuzz_write(node, route, segment, body).await;
    });
}

/// The seed corpus: real encodings made by the code under test. Run by the
/// ignored test `write_seed_corpus` (see docs/fuzzing.md); returns
/// `(target, file name, bytes)`.
pub fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    use crate::engine::commands::Command;
    use crate::engine::Timer;
    use crate::workflow::manifest::{encode_metrics, Metric};

    let mut out: Vec<(&'static str, String, Vec<u8>)> = Vec::new();
    let mut add = |target: &'static str, name: &str, bytes: Vec<u8>| {
        out.push((target, name.to_string(), bytes));
    };

    // Two engines exchanging datagrams and sync frames under virtual time:
    // A (with tribes, a policy and a fact) joins through B, the fuzzed identity.
    let (a_id, b_id) = (peer_id(), engine_id());
    let mut a = engine_with(
        &a_id,
        vec![b_id.addr],
        vec![
            Command::CreateTribe {
                tribe: "core".into(),
            },
            Command::AddPolicy {
                name: "ubuntu".into(),
                tribe: "core".into(),
                when: "facts.os_dist == \"ubuntu\"".into(),
            },
            Command::SetFact {
                key: "os_dist".into(),
                value: "ubuntu".into(),
            },
            Command::Join {
                tribe: "core".into(),
                node: "fuzz-b".into(),
            },
        ],
    );
    let mut b = engine(&b_id, Vec::new());
    let mut to_b: Vec<Vec<u8>> = Vec::new();
    let mut a_frames: Vec<Vec<u8>> = Vec::new();
    let mut timers: Vec<(u64, bool, Timer)> = Vec::new();
    let mut a_conn_at_b = None;
    let mut a_conn = None;
    let mut pending: Vec<(bool, Output)> = drain(&mut a).into_iter().map(|o| (true, o)).collect();
    pending.extend(drain(&mut b).into_iter().map(|o| (false, o)));
    let mut now = NOW_MS;
    for _round in 0..40 {
        for (from_a, o) in std::mem::take(&mut pending) {
            let dst = if from_a { &mut b } else { &mut a };
            match o {
                Output::Datagram { bytes, .. } => {
                    if from_a && to_b.len() < 24 {
                        to_b.push(bytes.clone());
                    }
                    let from = if from_a { a_id.addr } else { b_id.addr };
                    dst.handle_datagram(now, from, &bytes);
                }
                Output::Connect { conn, .. } if from_a => {
                    a_conn = Some(conn);
                    a_conn_at_b = Some(dst.accept_stream());
                }
                Output::Frame { body, .. } if from_a => {
                    a_frames.push(body.clone());
                    if let Some(conn) = a_conn_at_b {
                        dst.handle_frame(now, conn, &body);
                    }
                }
                Output::Frame { body, .. } => {
                    // B answers on the stream A opened, known to A by its own id.
                    if let Some(c) = a_conn {
                        dst.handle_frame(now, c, &body);
                    }
                }
                Output::Schedule { timer, after } => {
                    timers.push((now + after.as_millis() as u64, from_a, timer));
                }
                _ => {}
            }
        }
        now += 50;
        let (due, later): (Vec<_>, Vec<_>) = timers.drain(..).partition(|t| t.0 <= now);
        timers = later;
        for (_, on_a, timer) in due {
            if on_a {
                a.handle_timer(now, timer);
            } else {
                b.handle_timer(now, timer);
            }
        }
        pending.extend(drain(&mut a).into_iter().map(|o| (true, o)));
        pending.extend(drain(&mut b).into_iter().map(|o| (false, o)));
    }
    for (i, d) in to_b.iter().enumerate() {
        add("swim", &format!("datagram-{i:02}"), join(&[d]));
        if i < 4 {
            add("datagram", &format!("swim-{i:02}"), d.clone());
        }
    }
    add("swim", "all-datagrams", join(&to_b));
    add("datagram", "plain", wire::plain_datagram(LABEL, b"payload"));
    add(
        "datagram",
        "sealed",
        wire::sealed_datagram(LABEL, &keyring(), [9u8; 24], b"payload"),
    );

    // Sync: B answers A's hello (and push); B joins through A.
    let mut b_resp = vec![0u8];
    b_resp.extend(join(&a_frames));
    add("sync", "responder-hello-push", b_resp);
    if let Some(hello) = a_frames.first() {
        add(
            "sync",
            "responder-hello",
            [vec![0u8], join(&[hello])].concat(),
        );
    }
    let mut b2 = engine(&b_id, vec![a_id.addr]);
    let mut a2 = engine(&a_id, Vec::new());
    for cmd in [
        Command::CreateTribe {
            tribe: "ops".into(),
        },
        Command::SetFact {
            key: "rack".into(),
            value: "r1".into(),
        },
    ] {
        let _ = a2.handle_command(NOW_MS, cmd);
    }
    drain(&mut a2);
    let hello = drain(&mut b2).into_iter().find_map(|o| match o {
        Output::Frame { body, .. } => Some(body),
        _ => None,
    });
    if let Some(hello) = hello {
        let conn = a2.accept_stream();
        a2.handle_frame(NOW_MS, conn, &hello);
        let replies: Vec<Vec<u8>> = drain(&mut a2)
            .into_iter()
            .filter_map(|o| match o {
                Output::Frame { body, .. } => Some(body),
                _ => None,
            })
            .collect();
        add(
            "sync",
            "initiator-reply",
            [vec![1u8], join(&replies)].concat(),
        );
        for frame in a_frames.iter().chain(&replies) {
            if let Ok(msg) = wire::decode::<crate::engine::sync::SyncMsg>(frame) {
                let records = match msg {
                    crate::engine::sync::SyncMsg::Reply { records, .. }
                    | crate::engine::sync::SyncMsg::Push { records, .. } => records,
                    _ => continue,
                };
                let deltas: Vec<Vec<u8>> = records.iter().map(wire::encode).collect();
                for (i, d) in deltas.iter().enumerate().take(8) {
                    add(
                        "gossip_delta",
                        &format!("record-{i:02}"),
                        [vec![0u8], join(&[d])].concat(),
                    );
                }
                add(
                    "gossip_delta",
                    "all-records",
                    [vec![1u8], join(&deltas)].concat(),
                );
            }
        }
    }

    // Streams: a real hello, then frames.
    let hello = crate::crypto::StreamHello::new(key().id())
        .encode()
        .to_vec();
    let call = echo_call(1);
    let fetch = RpcMsg::Fetch {
        id: 2,
        sha256: crate::artifacts::sha256(&artifact_bytes()),
        offset: 0,
        len: 512,
    };
    let frames = [
        wire::frame(&wire::encode(&call)),
        wire::frame(&wire::encode(&fetch)),
    ]
    .concat();
    add(
        "stream",
        "accept-hello",
        [vec![0u8], hello.clone()].concat(),
    );
    add(
        "stream",
        "accept-plain-frames",
        [vec![1u8], frames.clone()].concat(),
    );
    add(
        "stream",
        "connect-hello-frames",
        [vec![2u8], hello, frames.clone()].concat(),
    );
    add("rpc_server", "call-and-fetch", frames);
    add(
        "rpc_server",
        "bad-tribe",
        wire::frame(&wire::encode(&RpcMsg::Call {
            id: 3,
            caller: "x".into(),
            tribe: "other".into(),
            plugin: "echo".into(),
            version: "1".into(),
            kind: crate::PluginKind::Processor,
            budget_ms: 0,
            payload: Vec::new(),
        })),
    );
    let reply = RpcMsg::Reply {
        id: 1,
        result: Ok(crate::rpc::proto::ByteBuf::from(b"pong".to_vec())),
    };
    let failed = RpcMsg::Reply {
        id: 1,
        result: Err(("boom".into(), "it broke".into())),
    };
    let refused = RpcMsg::Refused {
        id: 1,
        why: crate::rpc::proto::Refusal::Overloaded,
    };
    let chunk = RpcMsg::Chunk {
        id: 1,
        data: artifact_bytes(),
    };
    for (name, which, msg) in [
        ("call-reply", 0u8, reply),
        ("call-error", 0, failed),
        ("call-refused", 0, refused),
        ("fetch-chunk", 1, chunk),
    ] {
        add(
            "rpc_client",
            name,
            [vec![which], wire::frame(&wire::encode(&msg))].concat(),
        );
    }

    // Files and bodies.
    let durable = a.durable();
    add(
        "datadir",
        "state",
        serde_json::to_vec(&durable).unwrap_or_default(),
    );
    let dir = std::env::temp_dir().join(format!("tribe-fuzz-seed-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    if crate::datadir::save_keyring(&dir, &keyring()).is_ok() {
        if let Ok(bytes) = std::fs::read(dir.join(crate::datadir::KEYRING_FILE)) {
            add("datadir", "keyring", bytes);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    add(
        "task_manifest",
        "full",
        br#"{"id": "fuzz-task", "schedule": {"interval": "5s"},
 "collect": {"plugin": "proc", "metrics": ["load/*", "mem/*"]},
 "process": [{"plugin": "tag", "version": "1", "tribe": "core", "config": {"team": "ops"}}],
 "publish": [{"plugin": "file", "tribe": "storage"}]}"#
            .to_vec(),
    );
    add(
        "task_manifest",
        "minimal",
        br#"{"schedule": {"interval": "100ms"}, "collect": {"plugin": "proc"}}"#.to_vec(),
    );
    let mut m = Metric::new("load/1min", 0.5, NOW_MS);
    m.tags.insert("host".into(), "fuzz-a".into());
    let metrics = vec![m, Metric::new("mem/free", 1024.0, NOW_MS)];
    add("metric_batch", "metrics", encode_metrics(&metrics));
    let config: BTreeMap<String, String> = [("team".to_string(), "ops".to_string())].into();
    add(
        "metric_batch",
        "step-request",
        crate::workflow::run::StepRequest::encode(&config, &metrics),
    );
    for (name, text) in [
        ("equals", "facts.os_dist == \"ubuntu\"\nos_dist=ubuntu"),
        ("and-has", "has(facts.rack) && facts.rack.startsWith(\"r\") && int(facts.processor_count) > 2\nrack=r1\nprocessor_count=4"),
        ("in-list", "facts.zone in [\"a\", \"b\"] || size(facts) > 3\nzone=c"),
        ("regex", "facts.hostname.matches(\"^web-[0-9]+$\")\nhostname=web-12"),
    ] {
        add("policy", name, text.as_bytes().to_vec());
    }
    for (name, route, segment, body) in [
        ("create-tribe", 0u8, "", r#"{"name": "ops"}"#),
        (
            "add-policy",
            1,
            "",
            r#"{"name": "p", "tribe": "ops", "when": "facts.rack == \"r1\""}"#,
        ),
        (
            "load-plugin",
            2,
            "ops",
            r#"{"name": "disk", "version": "2", "kind": "collector"}"#,
        ),
        (
            "add-task",
            3,
            "ops",
            r#"{"id": "t1", "manifest": {"schedule": {"interval": "1s"}, "collect": {"plugin": "proc"}}, "state": "stopped"}"#,
        ),
        ("set-fact", 4, "rack", r#"{"value": "r2"}"#),
        (
            "install-key",
            5,
            "",
            r#"{"key": "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc="}"#,
        ),
        ("set-encryption", 6, "", r#"{"mode": "require"}"#),
    ] {
        add(
            "admin_body",
            name,
            [
                vec![route],
                segment.as_bytes().to_vec(),
                vec![0],
                body.as_bytes().to_vec(),
            ]
            .concat(),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A target's directory name under `fuzz/corpus/` and its entry point.
    type Target = (&'static str, fn(&[u8]));

    /// Every target.
    const TARGETS: &[Target] = &[
        ("datagram", datagram),
        ("swim", swim),
        ("gossip_delta", gossip_delta),
        ("sync", sync),
        ("stream", stream),
        ("rpc_server", rpc_server),
        ("rpc_client", rpc_client),
        ("datadir", datadir),
        ("task_manifest", task_manifest),
        ("metric_batch", metric_batch),
        ("policy", policy),
        ("admin_body", admin_body),
    ];

    fn corpus_dir(target: &str) -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/corpus")
            .join(target)
    }

    fn files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
            .unwrap_or_default();
        files.sort();
        files
    }

    #[test]
    fn every_committed_seed_and_found_input_replays_without_a_panic() {
        for (target, run) in TARGETS {
            let seeds = files(&corpus_dir(target));
            assert!(!seeds.is_empty(), "no seed corpus for {target}");
            let found = files(
                &std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("fuzz/artifacts-found")
                    .join(target),
            );
            for file in seeds.iter().chain(&found) {
                let data = std::fs::read(file).unwrap();
                run(&data);
            }
        }
    }

    /// Writes `fuzz/corpus/<target>/<name>` from [`seeds`]:
    /// `cargo test --lib write_seed_corpus -- --ignored`.
    #[test]
    #[ignore]
    fn write_seed_corpus() {
        for (target, name, bytes) in seeds() {
            let dir = corpus_dir(target);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }

    #[test]
    fn the_seed_generator_covers_every_target() {
        let seeds = seeds();
        for (target, _) in TARGETS {
            assert!(
                seeds.iter().any(|(t, _, _)| t == target),
                "no seed for {target}"
            );
        }
    }

    /// Of the committed corpus, not only of [`seeds`]: seeds of an older
    /// wire version stop at the decoders, and the fuzzers then fuzz little
    /// else (write them again, see `write_seed_corpus`).
    #[test]
    fn the_seeds_reach_past_the_decoders() {
        let seed = |target: &str, name: &str| {
            std::fs::read(corpus_dir(target).join(name)).unwrap_or_else(|e| {
                panic!("no seed {target}/{name} ({e}): cargo test --lib write_seed_corpus -- --ignored")
            })
        };
        // The datagrams are addressed to the fuzzed identity: B learns A and
        // A's tribe through SWIM and its gossip deltas.
        let mut b = engine(&engine_id(), Vec::new());
        for d in split(&seed("swim", "all-datagrams")) {
            b.handle_datagram(NOW_MS, peer_id().addr, d);
        }
        assert!(b.members().iter().any(|m| m.name == "fuzz-a"));
        // The sync seeds carry A's records; the delta seeds merge.
        let mut b = engine(&engine_id(), Vec::new());
        let conn = b.accept_stream();
        for f in split(&seed("sync", "responder-hello-push")[1..]) {
            b.handle_frame(NOW_MS, conn, f);
        }
        assert!(b.tribes().iter().any(|t| t.name == "core"));
        assert!(split(&seed("gossip_delta", "all-records")[1..])
            .iter()
            .all(|d| wire::decode::<(crate::records::Key, crate::records::Entry)>(d).is_ok()));
    }

    #[test]
    fn split_and_join_round_trip() {
        let msgs: Vec<&[u8]> = vec![b"a", b"", b"hello"];
        assert_eq!(split(&join(&msgs)), msgs);
        // A short last message takes what is left; a lone byte is dropped.
        assert_eq!(split(&[5, 0, 1, 2]), vec![&[1u8, 2][..]]);
        assert!(split(&[1]).is_empty());
    }
}
