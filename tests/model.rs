//! Model test: 3–5 engines driven in memory (no sockets, virtual time),
//! with random interleavings of commands, datagrams, stream frames and
//! timers chosen from a seed. Whatever the interleaving, once the traffic
//! settles every engine holds the same state digest and derives the same
//! view; and the same seed gives the same outputs, byte for byte (no hash
//! order leaks out of the engine).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tribe::engine::commands::Command;
use tribe::engine::{ConnId, Engine, Output, Timer};
use tribe::policy_set::{PolicyResults, PolicySet};
use tribe::{Config, PluginKind, Profile, TaskState};

enum Item {
    Frame(Vec<u8>),
    Closed,
}

struct Sim {
    nodes: Vec<Engine>,
    addrs: Vec<SocketAddr>,
    now: u64,
    timers: BTreeMap<(u64, u64), (usize, Timer)>,
    seq: u64,
    /// Our end of a stream → the peer's end.
    links: BTreeMap<(usize, ConnId), (usize, ConnId)>,
    /// Ends still reading.
    open: BTreeSet<(usize, ConnId)>,
    streams: BTreeMap<(usize, ConnId), VecDeque<Item>>,
    datagrams: Vec<(SocketAddr, usize, Vec<u8>)>,
    /// Crashed nodes: no inputs, no outputs.
    dead: BTreeSet<usize>,
    rng: StdRng,
    /// Hash of every output, in order.
    trace: std::collections::hash_map::DefaultHasher,
    /// Each node's compiled policies.
    policy_sets: Vec<PolicySet>,
    /// Policy answers not yet handed back, delivered at random later steps
    /// as a blocking thread would (a newer request makes one stale).
    policy_answers: Vec<(usize, PolicyResults)>,
}

const START_MS: u64 = 1_700_000_000_000;

fn config(i: usize, seed: Option<SocketAddr>, tweak: fn(&mut tribe::Timings)) -> Config {
    let mut cfg = Config::new(format!("m{i}"));
    cfg.profile = Profile::Local;
    let mut t = Profile::Local.timings();
    t.push_pull_interval = Duration::from_secs(1);
    t.reconnect_interval = Duration::from_secs(1);
    tweak(&mut t);
    cfg.timings = Some(t);
    cfg.collect_facts = false;
    cfg.seeds = seed.into_iter().collect();
    cfg
}

impl Sim {
    fn new(n: usize, seed: u64) -> Sim {
        Sim::with_timings(n, seed, |_| {})
    }

    fn with_timings(n: usize, seed: u64, tweak: fn(&mut tribe::Timings)) -> Sim {
        let addrs: Vec<SocketAddr> = (0..n)
            .map(|i| SocketAddr::from(([127, 0, 0, 1], 20_000 + i as u16)))
            .collect();
        let mut rng = StdRng::seed_from_u64(seed);
        let nodes = (0..n)
            .map(|i| {
                let cfg = config(i, (i > 0).then(|| addrs[0]), tweak);
                Engine::new(
                    &cfg,
                    addrs[i],
                    1 + i as u64,
                    Default::default(),
                    START_MS,
                    rng.random(),
                )
                .unwrap()
            })
            .collect();
        let mut sim = Sim {
            nodes,
            addrs,
            now: START_MS,
            timers: BTreeMap::new(),
            seq: 0,
            links: BTreeMap::new(),
            open: BTreeSet::new(),
            streams: BTreeMap::new(),
            datagrams: Vec::new(),
            dead: BTreeSet::new(),
            rng,
            trace: Default::default(),
            policy_sets: (0..n).map(|_| PolicySet::new()).collect(),
            policy_answers: Vec::new(),
        };
        for i in 0..n {
            sim.nodes[i].start(START_MS);
            sim.drain(i);
        }
        sim
    }

    fn index(&self, addr: SocketAddr) -> Option<usize> {
        self.addrs.iter().position(|a| *a == addr)
    }

    fn drain(&mut self, i: usize) {
        while let Some(out) = self.nodes[i].poll_output() {
            if self.dead.contains(&i) {
                continue;
            }
            format!("{i} {out:?}").hash(&mut self.trace);
            match out {
                Output::Datagram { to, bytes } => {
                    // 2 % loss: anti-entropy has work to do.
                    if let Some(j) = self.index(to) {
                        if self.rng.random_range(0..100) >= 2 {
                            self.datagrams.push((self.addrs[i], j, bytes));
                        }
                    }
                }
                Output::Connect { conn, to } => {
                    if let Some(j) = self.index(to) {
                        let cj = self.nodes[j].accept_stream();
                        self.links.insert((i, conn), (j, cj));
                        self.links.insert((j, cj), (i, conn));
                        self.open.insert((i, conn));
                        self.open.insert((j, cj));
                    } else {
                        self.streams
                            .entry((i, conn))
                            .or_default()
                            .push_back(Item::Closed);
                        self.open.insert((i, conn));
                    }
                }
                Output::Frame { conn, body } => {
                    if let Some(&peer) = self.links.get(&(i, conn)) {
                        self.streams
                            .entry(peer)
                            .or_default()
                            .push_back(Item::Frame(body));
                    }
                }
                Output::Close { conn, .. } => {
                    self.open.remove(&(i, conn));
                    if let Some(peer) = self.links.remove(&(i, conn)) {
                        self.streams
                            .entry(peer)
                            .or_default()
                            .push_back(Item::Closed);
                    }
                }
                Output::Schedule { timer, after } => {
                    self.seq += 1;
                    let due = self.now + after.as_millis() as u64;
                    self.timers.insert((due, self.seq), (i, timer));
                }
                Output::EvaluatePolicies(request) => {
                    let answer = self.policy_sets[i].answer(&request);
                    self.policy_answers.push((i, answer));
                }
                Output::Event(_) => {}
            }
        }
    }

    fn deliver_policy_answer(&mut self) -> bool {
        if self.policy_answers.is_empty() {
            return false;
        }
        let k = self.rng.random_range(0..self.policy_answers.len());
        let (j, answer) = self.policy_answers.remove(k);
        if !self.dead.contains(&j) {
            self.nodes[j].handle_policy_results(self.now, answer);
            self.drain(j);
        }
        true
    }

    fn deliver_datagram(&mut self) -> bool {
        if self.datagrams.is_empty() {
            return false;
        }
        let k = self.rng.random_range(0..self.datagrams.len());
        let (from, j, bytes) = self.datagrams.swap_remove(k);
        if self.dead.contains(&j) {
            return true;
        }
        self.nodes[j].handle_datagram(self.now, from, &bytes);
        self.drain(j);
        true
    }

    fn deliver_stream(&mut self) -> bool {
        let ready: Vec<(usize, ConnId)> = self
            .streams
            .iter()
            .filter(|(_, q)| !q.is_empty())
            .map(|(k, _)| *k)
            .collect();
        if ready.is_empty() {
            return false;
        }
        let end = ready[self.rng.random_range(0..ready.len())];
        let item = self.streams.get_mut(&end).and_then(|q| q.pop_front());
        let (j, conn) = end;
        if !self.open.contains(&end) || self.dead.contains(&j) {
            return true;
        }
        match item {
            Some(Item::Frame(body)) => self.nodes[j].handle_frame(self.now, conn, &body),
            Some(Item::Closed) => {
                self.open.remove(&end);
                self.links.remove(&end);
                self.nodes[j].handle_stream_closed(self.now, conn);
            }
            None => {}
        }
        self.drain(j);
        true
    }

    fn fire_timer(&mut self) {
        let Some(((due, seq), _)) = self.timers.first_key_value() else {
            return;
        };
        let key = (*due, *seq);
        let (i, timer) = self.timers.remove(&key).unwrap();
        self.now = self.now.max(key.0);
        if self.dead.contains(&i) {
            return;
        }
        self.nodes[i].handle_timer(self.now, timer);
        self.drain(i);
    }

    fn random_command(&mut self) {
        let n = self.nodes.len();
        let i = self.rng.random_range(0..n);
        let tribe = format!("t{}", self.rng.random_range(0..3));
        let node = format!("m{}", self.rng.random_range(0..n));
        let cmd = match self.rng.random_range(0..12) {
            0 | 1 => Command::CreateTribe { tribe },
            2 => Command::DeleteTribe { tribe },
            3 => Command::Join { tribe, node },
            4 => Command::Leave { tribe, node },
            5 => Command::AddPolicy {
                name: format!("p{}", self.rng.random_range(0..2)),
                tribe,
                when: "facts.role == \"db\"".into(),
            },
            6 => Command::RemovePolicy {
                name: format!("p{}", self.rng.random_range(0..2)),
            },
            7 => Command::SetFact {
                key: "role".into(),
                value: if self.rng.random() { "db" } else { "web" }.into(),
            },
            8 => Command::LoadPlugin {
                tribe,
                name: format!("pl{}", self.rng.random_range(0..2)),
                version: "1".into(),
                kind: PluginKind::Collector,
                artifact: None,
            },
            9 => Command::UnloadPlugin {
                tribe,
                name: format!("pl{}", self.rng.random_range(0..2)),
                version: "1".into(),
            },
            10 => Command::AddTask {
                tribe,
                id: format!("k{}", self.rng.random_range(0..2)),
                manifest: "{}".into(),
                state: TaskState::Running,
            },
            _ => Command::SetTaskState {
                tribe,
                id: format!("k{}", self.rng.random_range(0..2)),
                state: if self.rng.random() {
                    TaskState::Running
                } else {
                    TaskState::Stopped
                },
            },
        };
        // Refused commands (unknown tribe, exists already) are fine.
        let _ = self.nodes[i].handle_command(self.now, cmd);
        self.drain(i);
    }

    /// Random interleaving of commands, deliveries and timers.
    fn busy(&mut self, steps: usize) {
        for _ in 0..steps {
            match self.rng.random_range(0..11) {
                0 => self.random_command(),
                1..=4 => {
                    if !self.deliver_datagram() {
                        self.fire_timer();
                    }
                }
                5..=8 => {
                    if !self.deliver_stream() {
                        self.fire_timer();
                    }
                }
                9 => {
                    if !self.deliver_policy_answer() {
                        self.fire_timer();
                    }
                }
                _ => self.fire_timer(),
            }
        }
    }

    /// No more commands: traffic and timers run for `ms` of virtual time.
    fn settle(&mut self, ms: u64) {
        let until = self.now + ms;
        while self.now < until {
            while self.deliver_stream() || self.deliver_datagram() || self.deliver_policy_answer() {
            }
            self.fire_timer();
        }
    }

    fn converged(&self) -> bool {
        let digest = self.nodes[0].state_digest();
        let view = format!(
            "{:?} {:?}",
            self.nodes[0].tribes(),
            self.nodes[0].policies()
        );
        self.nodes.iter().all(|e| {
            e.state_digest() == digest
                && format!("{:?} {:?}", e.tribes(), e.policies()) == view
                && e.members_alive() == self.nodes.len()
        })
    }
}

fn run(seed: u64) -> (bool, u64, String) {
    let n = 3 + (seed % 3) as usize;
    let mut sim = Sim::new(n, seed);
    sim.settle(5_000);
    sim.busy(3_000);
    // Anti-entropy runs every second; a minute is ample.
    for _ in 0..60 {
        sim.settle(1_000);
        if sim.converged() {
            break;
        }
    }
    let report = sim
        .nodes
        .iter()
        .map(|e| {
            let members: Vec<_> = e
                .members()
                .into_iter()
                .map(|m| (m.name, m.state, m.generation))
                .collect();
            format!(
                "{}: {} {:?} {:?}\n",
                e.name(),
                e.state_digest(),
                e.tribes(),
                members
            )
        })
        .collect();
    (sim.converged(), sim.trace.finish(), report)
}

#[test]
fn random_interleavings_converge_to_one_digest_and_one_view() {
    for seed in 0..12u64 {
        let (ok, _, report) = run(seed);
        assert!(ok, "seed {seed} did not converge:\n{report}");
    }
}

#[test]
fn the_same_inputs_give_the_same_outputs_in_the_same_order() {
    for seed in [3u64, 7] {
        let (_, a, _) = run(seed);
        let (_, b, _) = run(seed);
        assert_eq!(a, b, "seed {seed}: outputs differ between two runs");
    }
}

#[test]
fn the_record_of_a_reaped_node_is_deleted_everywhere() {
    let mut sim = Sim::with_timings(3, 11, |t| {
        t.reap_after = Duration::from_secs(3);
        t.tombstone_grace = Duration::from_secs(2);
    });
    sim.settle(5_000);
    assert!(sim.converged());
    // Three node records and nothing else.
    assert!(sim.nodes.iter().all(|e| e.state_len() == 3));
    sim.dead.insert(2);
    sim.settle(30_000);
    for e in &sim.nodes[..2] {
        assert_eq!(e.members_alive(), 2);
        assert_eq!(
            e.state_len(),
            2,
            "{} still holds the reaped node's record",
            e.name()
        );
    }
    assert_eq!(sim.nodes[0].state_digest(), sim.nodes[1].state_digest());
}

/// A node that leaves ends the exchanges it opened to join: one waiting on
/// a seed that never answers would hold its stop up to the goodbye's
/// deadline.
#[test]
fn leaving_ends_the_exchange_with_a_seed_that_never_answered() {
    let silent = SocketAddr::from(([127, 0, 0, 1], 29_999));
    let cfg = config(0, Some(silent), |_| {});
    let addr = SocketAddr::from(([127, 0, 0, 1], 20_000));
    let mut engine = Engine::new(&cfg, addr, 1, Default::default(), START_MS, 7).unwrap();
    engine.start(START_MS);
    let mut dialled = Vec::new();
    while let Some(out) = engine.poll_output() {
        if let Output::Connect { conn, to } = out {
            if to == silent {
                dialled.push(conn);
            }
        }
    }
    assert!(!dialled.is_empty(), "the seed was not dialled");
    engine.leave(START_MS + 100);
    let mut closed = Vec::new();
    while let Some(out) = engine.poll_output() {
        match out {
            Output::Close { conn, .. } => closed.push(conn),
            Output::Connect { to, .. } => assert_ne!(to, silent, "a leaving node dials its seed"),
            _ => {}
        }
    }
    for conn in dialled {
        assert!(
            closed.contains(&conn),
            "the exchange with the seed stays open"
        );
    }
}

/// Runs the engine's timers for `ms` of its time (100 ms steps),
/// and gives its dials to `to`.
fn dials_to(
    engine: &mut Engine,
    (now, timers): (&mut u64, &mut Vec<(Timer, Duration)>),
    ms: u64,
    to: SocketAddr,
) -> Vec<ConnId> {
    let mut dialled = Vec::new();
    let end = *now + ms;
    loop {
        while let Some(out) = engine.poll_output() {
            match out {
                Output::Connect { conn, to: at } if at == to => dialled.push(conn),
                Output::Schedule { timer, after } => timers.push((timer, after)),
                _ => {}
            }
        }
        if *now >= end {
            return dialled;
        }
        *now += 100;
        for (timer, after) in std::mem::take(timers) {
            if after.as_millis() as u64 <= 100 {
                engine.handle_timer(*now, timer);
            } else {
                timers.push((timer, after - Duration::from_millis(100)));
            }
        }
    }
}

/// An engine started with no seed, its start's output taken.
fn started_alone(port: u16) -> Engine {
    let cfg = config(0, None, |_| {});
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut engine = Engine::new(&cfg, addr, 1, Default::default(), START_MS, 7).unwrap();
    engine.start(START_MS);
    while engine.poll_output().is_some() {}
    engine
}

/// A join its caller gave up on drops its streams at once (a peer that
/// never answers would hold each for the stream's lifetime), also those
/// a node alone opened meanwhile to the address as a seed, and the
/// address it made a seed is not dialled again.
#[test]
fn a_join_given_up_is_abandoned_and_its_silent_address_not_dialled_again() {
    let silent = SocketAddr::from(([127, 0, 0, 1], 29_998));
    let mut engine = started_alone(20_001);
    let ticket = engine.join_through(START_MS + 10, &[silent]).unwrap();
    let mut timers = Vec::new();
    let mut now = START_MS + 10;
    // Alone, the node also dials it as a seed while the join waits.
    let mut dialled = dials_to(&mut engine, (&mut now, &mut timers), 3_000, silent);
    assert!(
        dialled.len() >= 2,
        "neither the join nor the seed dials: {dialled:?}"
    );
    engine.forget_join(ticket);
    let mut abandoned = Vec::new();
    while let Some(out) = engine.poll_output() {
        match out {
            Output::Close {
                conn,
                abandon: true,
            } => abandoned.push(conn),
            Output::Schedule { timer, after } => timers.push((timer, after)),
            _ => {}
        }
    }
    abandoned.sort();
    dialled.sort();
    assert_eq!(abandoned, dialled, "a given-up join's streams are kept");
    // A minute more: the address is not tried again.
    let later = dials_to(&mut engine, (&mut now, &mut timers), 60_000, silent);
    assert!(
        later.is_empty(),
        "a given-up join's address was dialled again"
    );
}

/// Two joins through one silent address, both given up, the first one
/// first: the address, kept while the second still dialled it, is dropped
/// with the second.
#[test]
fn two_joins_given_up_through_one_silent_address_drop_it() {
    let silent = SocketAddr::from(([127, 0, 0, 1], 29_997));
    let mut engine = started_alone(20_002);
    let (mut now, mut timers) = (START_MS + 10, Vec::new());
    let mut tickets = Vec::new();
    for _ in 0..2 {
        tickets.push(engine.join_through(now, &[silent]).unwrap());
        dials_to(&mut engine, (&mut now, &mut timers), 200, silent);
    }
    for ticket in tickets {
        engine.forget_join(ticket);
    }
    let later = dials_to(&mut engine, (&mut now, &mut timers), 120_000, silent);
    assert!(
        later.is_empty(),
        "dialled {} times after both were given up",
        later.len()
    );
}

/// Joins past the engine's bound are refused as overloaded, naming the
/// bound of joins (not of calls), and one given up makes room again.
#[test]
fn joins_past_the_bound_are_refused_naming_the_joins() {
    let mut engine = started_alone(20_007);
    let mut tickets = Vec::new();
    let refused = loop {
        let port = 30_000 + u16::try_from(tickets.len()).unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        match engine.join_through(START_MS + 10, &[addr]) {
            Ok(t) => tickets.push(t),
            Err(e) => break e,
        }
        assert!(tickets.len() <= 1_000, "joins are never refused");
    };
    let tribe::Error::Overloaded {
        by: tribe::Overload::Joins { limit },
    } = refused
    else {
        panic!("expected the joins' bound, got {refused:?}");
    };
    assert_eq!(limit, tickets.len());
    assert!(refused.to_string().contains("joins"), "{refused}");
    engine.forget_join(tickets[0]);
    let again = SocketAddr::from(([127, 0, 0, 1], 29_000));
    assert!(engine.join_through(START_MS + 20, &[again]).is_ok());
}

/// A join given up keeps as seeds the addresses whose exchange had ended
/// (one that refused, as a whole join keeps it) and drops only those
/// still under way: the node alone dials the refused one again, never the
/// silent one.
#[test]
fn a_join_given_up_keeps_an_address_that_had_refused() {
    let refusing = SocketAddr::from(([127, 0, 0, 1], 29_996));
    let silent = SocketAddr::from(([127, 0, 0, 1], 29_997));
    let mut engine = started_alone(20_009);
    let ticket = engine
        .join_through(START_MS + 10, &[refusing, silent])
        .unwrap();
    let mut timers = Vec::new();
    while let Some(out) = engine.poll_output() {
        match out {
            Output::Connect { conn, to } if to == refusing => {
                engine.note_stream_failure(conn, "connection refused".into());
                engine.handle_connect_refused(START_MS + 20, conn);
            }
            Output::Schedule { timer, after } => timers.push((timer, after)),
            _ => {}
        }
    }
    engine.forget_join(ticket);
    let mut now = START_MS + 30;
    let to_silent = dials_to(&mut engine, (&mut now, &mut timers), 60_000, silent);
    assert!(to_silent.is_empty(), "the silent address was dialled again");
    let to_refusing = dials_to(&mut engine, (&mut now, &mut timers), 60_000, refusing);
    assert!(
        !to_refusing.is_empty(),
        "the refused address is no seed any more"
    );
}

/// A seed that is this node itself by another of its addresses (a bind to
/// 0.0.0.0 seeded with 127.0.0.1) is dropped once its exchange shows it:
/// it would be dialled, and warned about as a seed that never answers,
/// for as long as the node is alone. A seed at another port that reached
/// this node (a load balancer in front of several) is kept: next time it
/// may reach another.
#[test]
fn a_seed_that_is_this_node_itself_is_dropped() {
    let me = SocketAddr::from(([127, 0, 0, 1], 20_011));
    let other_address = SocketAddr::from(([127, 0, 0, 2], 20_011));
    assert_eq!(dials_of_a_seed_that_loops_back(me, other_address, false), 1);
    // A join through it later dials it once, and makes it no seed again.
    assert_eq!(dials_of_a_seed_that_loops_back(me, other_address, true), 2);
    let balancer = SocketAddr::from(([127, 0, 0, 1], 30_000));
    assert!(dials_of_a_seed_that_loops_back(me, balancer, false) > 1);
}

/// How many times an engine at `me` alone dials `seed` in two minutes,
/// each stream to it reaching the engine itself (and, with `join_again`,
/// joined through it after one minute).
fn dials_of_a_seed_that_loops_back(me: SocketAddr, seed: SocketAddr, join_again: bool) -> usize {
    let cfg = config(0, Some(seed), |_| {});
    let mut engine = Engine::new(&cfg, me, 1, Default::default(), START_MS, 7).unwrap();
    engine.start(START_MS);
    let mut links: HashMap<ConnId, ConnId> = HashMap::new();
    // In order, as a stream delivers them: a frame, or the end (`None`).
    let mut frames: VecDeque<(ConnId, Option<Vec<u8>>)> = VecDeque::new();
    let mut timers: Vec<(Timer, Duration)> = Vec::new();
    let mut dials = 0;
    let mut now = START_MS;
    while now < START_MS + 120_000 {
        loop {
            while let Some(out) = engine.poll_output() {
                match out {
                    Output::Connect { conn, to } if to == seed => {
                        dials += 1;
                        let back = engine.accept_stream();
                        links.insert(conn, back);
                        links.insert(back, conn);
                    }
                    Output::Frame { conn, body } => {
                        if let Some(&peer) = links.get(&conn) {
                            frames.push_back((peer, Some(body)));
                        }
                    }
                    Output::Close { conn, .. } => {
                        if let Some(peer) = links.remove(&conn) {
                            links.remove(&peer);
                            frames.push_back((peer, None));
                        }
                    }
                    Output::Schedule { timer, after } => timers.push((timer, after)),
                    _ => {}
                }
            }
            match frames.pop_front() {
                Some((conn, Some(body))) => engine.handle_frame(now, conn, &body),
                Some((conn, None)) => engine.handle_stream_closed(now, conn),
                None => break,
            }
        }
        now += 100;
        if join_again && now == START_MS + 60_000 {
            engine.join_through(now, &[seed]).unwrap();
        }
        for (timer, after) in std::mem::take(&mut timers) {
            if after.as_millis() as u64 <= 100 {
                engine.handle_timer(now, timer);
            } else {
                timers.push((timer, after - Duration::from_millis(100)));
            }
        }
    }
    dials
}
