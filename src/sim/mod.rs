//! A deterministic simulator: many engines in one process, driven over a
//! simulated network in virtual time. The same engine code as the tokio
//! runtime, with no sockets, threads or sleeps: an event queue orders
//! datagrams, stream segments and timers by virtual time (ties by insertion
//! order), and one seeded RNG draws every latency and loss, so the same seed
//! and the same calls give the same trace, byte for byte.
//!
//! Faults: packet loss, one-way link cuts, two-sided partitions, crashes
//! (no goodbye) and restarts under the same name, pauses (a node that
//! processes nothing for a while, as under a long GC pause) and clock
//! offsets. Streams (anti-entropy) are reliable and ordered, with latency
//! and bandwidth; a stream across a cut link breaks.

mod net;
mod observe;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::config::{Config, Profile, Timings};
use crate::engine::{ConnId, Engine, Output, Timer};
use crate::Command;

pub use net::{Latency, NetConfig};
use observe::Observer;
pub use observe::{Spread, Watch};

/// Wall-clock time (ms since the Unix epoch) at virtual time zero.
const EPOCH_MS: u64 = 1_800_000_000_000;
/// How long a stream to an unreachable peer takes to fail (a connect
/// timeout; a crashed peer's refusal comes after one latency instead).
const CONNECT_TIMEOUT_US: u64 = 3_000_000;
/// The port every simulated node uses; nodes differ by address.
const PORT: u16 = 7946;

/// The simulation's settings.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Seed of every random draw (network and engines).
    pub seed: u64,
    /// Protocol timings of every node.
    pub profile: Profile,
    /// Timings that replace the profile's (e.g. a longer suspicion).
    pub timings: Option<Timings>,
    /// The network.
    pub net: NetConfig,
    /// Seeds of a new node: the first this many nodes.
    pub seeds: usize,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            seed: 1,
            profile: Profile::Lan,
            timings: None,
            net: NetConfig::default(),
            seeds: 1,
        }
    }
}

/// Traffic sent by one node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Datagrams sent.
    pub datagrams: u64,
    /// Datagram bytes sent.
    pub datagram_bytes: u64,
    /// Stream frame bytes sent.
    pub stream_bytes: u64,
}

struct Node {
    name: String,
    addr: SocketAddr,
    /// `None` while crashed.
    engine: Option<Engine>,
    /// Bumped by each crash and restart: timers and stream segments of an
    /// earlier incarnation are dropped.
    incarnation: u64,
    /// Virtual µs until which the node processes nothing.
    paused_until: u64,
    /// Added to the node's wall clock, ms.
    clock_offset_ms: i64,
    traffic: Traffic,
    /// Answers the engine's policy requests at once (the runtime answers on
    /// a blocking thread).
    policies: crate::policy_set::PolicySet,
}

/// What the queue delivers.
enum Ev {
    Datagram {
        from: SocketAddr,
        to: usize,
        bytes: Vec<u8>,
    },
    Timer {
        node: usize,
        incarnation: u64,
        timer: Timer,
    },
    Frame {
        node: usize,
        incarnation: u64,
        conn: ConnId,
        body: Vec<u8>,
    },
    Closed {
        node: usize,
        incarnation: u64,
        conn: ConnId,
    },
    /// A dial to a crashed node: nothing listens at the address.
    Refused {
        node: usize,
        incarnation: u64,
        conn: ConnId,
    },
}

impl Ev {
    fn node(&self) -> usize {
        match *self {
            Ev::Datagram { to, .. } => to,
            Ev::Timer { node, .. }
            | Ev::Frame { node, .. }
            | Ev::Closed { node, .. }
            | Ev::Refused { node, .. } => node,
        }
    }
}

struct Scheduled {
    at: u64,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// One direction of an open stream.
struct Link {
    peer: usize,
    peer_incarnation: u64,
    peer_conn: ConnId,
    /// When the last segment in this direction arrives (keeps order).
    last_at: u64,
}

/// The simulator. See the module documentation.
pub struct Sim {
    cfg: SimConfig,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<Scheduled>>,
    nodes: Vec<Node>,
    by_addr: HashMap<SocketAddr, usize>,
    /// Open streams by (node, its conn id); ordered, so that walking them
    /// (on a crash) is deterministic.
    links: BTreeMap<(usize, ConnId), Link>,
    net: net::Net,
    rng: StdRng,
    observer: Observer,
    events_processed: u64,
    /// (from, to): streams `from` opens to `to` time out (datagrams pass).
    streams_blocked: std::collections::BTreeSet<(usize, usize)>,
    /// Datagrams sent while recording (sender's address, receiver, bytes),
    /// for an attacker on the path to send again.
    recorded: Option<Vec<(SocketAddr, usize, Vec<u8>)>>,
}

impl Sim {
    /// An empty simulation at virtual time zero.
    pub fn new(cfg: SimConfig) -> Sim {
        Sim {
            net: net::Net::new(cfg.net.clone()),
            rng: StdRng::seed_from_u64(cfg.seed),
            cfg,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            nodes: Vec::new(),
            by_addr: HashMap::new(),
            links: BTreeMap::new(),
            observer: Observer::default(),
            events_processed: 0,
            streams_blocked: Default::default(),
            recorded: None,
        }
    }

    /// Virtual time since the start.
    pub fn now(&self) -> Duration {
        Duration::from_micros(self.now)
    }

    /// Number of nodes ever added (crashed ones included).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether no node was added yet.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Name of node `i` (`sim-<i>`).
    pub fn name(&self, i: usize) -> &str {
        &self.nodes[i].name
    }

    /// Queue entries handled so far (a measure of work).
    pub fn events_processed(&self) -> u64 {
        self.events_processed
    }

    /// The engine of node `i`, unless it is crashed.
    pub fn engine(&self, i: usize) -> Option<&Engine> {
        self.nodes.get(i).and_then(|n| n.engine.as_ref())
    }

    /// Traffic sent by node `i` so far.
    pub fn traffic(&self, i: usize) -> Traffic {
        self.nodes[i].traffic
    }

    /// A digest of everything that happened (events seen by nodes, with
    /// their times): equal for two runs with the same seed and calls.
    pub fn trace_digest(&self) -> u64 {
        self.observer.trace_digest()
    }

    /// Adds and starts a node, seeded with the first `SimConfig::seeds`
    /// nodes. Returns its index.
    pub fn add_node(&mut self) -> usize {
        self.add_node_with_clock(0)
    }

    /// [`Sim::add_node`] of a node whose clock runs `offset_ms` ahead of
    /// the others' from its start (negative: behind; a host booted with a
    /// wrong clock), where [`Sim::set_clock_offset`] steps a running one.
    pub fn add_node_with_clock(&mut self, offset_ms: i64) -> usize {
        let i = self.push_node();
        self.nodes[i].clock_offset_ms = offset_ms;
        self.boot(i, true, None);
        i
    }

    /// Adds `n` nodes that start as a formed cluster: each knows every
    /// other one alive and holds every node record, as after a mass join,
    /// without simulating it (nothing of it is gossiped). For steady-state
    /// scenarios at sizes where the mass join itself would take hours.
    pub fn add_formed(&mut self, n: usize) {
        let first = self.nodes.len();
        for _ in 0..n {
            let i = self.push_node();
            self.boot(i, false, None);
        }
        let running: Vec<usize> = (first..self.nodes.len())
            .filter(|&i| self.nodes[i].engine.is_some())
            .collect();
        let ids: Vec<_> = running
            .iter()
            .filter_map(|&i| self.nodes[i].engine.as_ref())
            .map(|e| e.identity().clone())
            .collect();
        let records: Vec<_> = running
            .iter()
            .filter_map(|&i| self.nodes[i].engine.as_ref()?.own_record())
            .collect();
        for &i in &running {
            let now_ms = self.wall_ms(i);
            if let Some(engine) = self.nodes[i].engine.as_mut() {
                engine.preload(now_ms, &ids, &records);
            }
            self.drain(i);
        }
    }

    fn push_node(&mut self) -> usize {
        let i = self.nodes.len();
        let octets = (i as u32 + 1).to_be_bytes();
        let addr = SocketAddr::from((Ipv4Addr::new(10, octets[1], octets[2], octets[3]), PORT));
        self.nodes.push(Node {
            name: format!("sim-{i}"),
            addr,
            engine: None,
            incarnation: 0,
            paused_until: 0,
            clock_offset_ms: 0,
            traffic: Traffic::default(),
            policies: Default::default(),
        });
        self.by_addr.insert(addr, i);
        self.net.grow(self.nodes.len());
        i
    }

    /// Adds and starts a node under node `of`'s name at an address of its
    /// own, as a copied configuration would.
    pub fn add_twin(&mut self, of: usize) -> usize {
        let i = self.push_node();
        self.nodes[i].name = self.nodes[of].name.clone();
        self.boot(i, true, None);
        i
    }

    /// Node `i` leaves gracefully: it says goodbye now and stops `after`
    /// that (as a process exits once its goodbye's time is up).
    pub fn leave(&mut self, i: usize, after: Duration) {
        let now_ms = self.wall_ms(i);
        let Some(engine) = self.nodes[i].engine.as_mut() else {
            return;
        };
        engine.leave(now_ms);
        self.drain(i);
        self.run_for(after);
        self.crash(i);
    }

    /// Stops node `i` at once, without a goodbye: its streams break.
    pub fn crash(&mut self, i: usize) {
        if self.nodes[i].engine.take().is_none() {
            return;
        }
        self.nodes[i].incarnation += 1;
        let broken: Vec<(usize, ConnId)> = self
            .links
            .range((i, ConnId(0))..=(i, ConnId(u64::MAX)))
            .map(|(k, _)| *k)
            .collect();
        for key in broken {
            if let Some(link) = self.links.remove(&key) {
                self.links.remove(&(link.peer, link.peer_conn));
                let delay = self.net.segment(&mut self.rng, 0);
                self.push(
                    delay,
                    Ev::Closed {
                        node: link.peer,
                        incarnation: link.peer_incarnation,
                        conn: link.peer_conn,
                    },
                );
            }
        }
    }

    /// Starts a crashed node again under the same name and address, with a
    /// newer generation and empty state (no data dir).
    pub fn restart(&mut self, i: usize) {
        if self.nodes[i].engine.is_none() {
            self.nodes[i].incarnation += 1;
            self.boot(i, true, None);
        }
    }

    /// What node `i` would keep in its data dir now; `None` while it is
    /// down.
    pub fn data_dir(&mut self, i: usize) -> Option<crate::engine::durable::Durable> {
        self.nodes[i].engine.as_mut().map(Engine::durable)
    }

    /// Records every datagram sent from now on (as an attacker on the path
    /// can), until [`Sim::replay_recorded`].
    pub fn record_datagrams(&mut self) {
        self.recorded = Some(Vec::new());
    }

    /// Sends every recorded datagram again, as from its sender, to its
    /// receiver (now), and stops recording; returns how many.
    pub fn replay_recorded(&mut self) -> usize {
        let recorded = self.recorded.take().unwrap_or_default();
        let n = recorded.len();
        for (from, to, bytes) in recorded {
            self.push(0, Ev::Datagram { from, to, bytes });
        }
        n
    }

    /// Starts a crashed node again from what its data dir kept, without
    /// seeds (it joins through the peers kept), as `tribe agent
    /// --data-dir` does.
    pub fn restart_from(&mut self, i: usize, kept: crate::engine::durable::Durable) {
        if self.nodes[i].engine.is_none() {
            self.nodes[i].incarnation += 1;
            self.boot(i, false, Some(kept));
        }
    }

    /// Makes node `i` process nothing for `d`: what reaches it waits, as in
    /// a socket buffer, and its timers fire late.
    pub fn pause(&mut self, i: usize, d: Duration) {
        let until = self.now + d.as_micros() as u64;
        let node = &mut self.nodes[i];
        node.paused_until = node.paused_until.max(until);
    }

    /// Sets node `i`'s clock `offset_ms` ahead (negative: behind).
    pub fn set_clock_offset(&mut self, i: usize, offset_ms: i64) {
        self.nodes[i].clock_offset_ms = offset_ms;
    }

    /// Sets the datagram loss rate (0..=1).
    pub fn set_loss(&mut self, loss: f64) {
        self.net.cfg.loss = loss.clamp(0.0, 1.0);
    }

    /// Cuts traffic from `from` to `to` (one way).
    pub fn block(&mut self, from: usize, to: usize) {
        self.net.block(from, to);
    }

    /// Restores traffic from `from` to `to`.
    pub fn unblock(&mut self, from: usize, to: usize) {
        self.net.unblock(from, to);
    }

    /// Makes streams between `a` and `b` (either way) fail to open while
    /// datagrams still pass: a peer out of file descriptors or at its
    /// stream cap, a firewall that drops TCP. Open streams are left alone.
    pub fn block_streams(&mut self, a: usize, b: usize) {
        self.streams_blocked.insert((a, b));
        self.streams_blocked.insert((b, a));
    }

    /// Lets streams between `a` and `b` open again.
    pub fn unblock_streams(&mut self, a: usize, b: usize) {
        self.streams_blocked.remove(&(a, b));
        self.streams_blocked.remove(&(b, a));
    }

    /// Splits the nodes in two: `side(i)` says which side node `i` is on.
    /// Streams across the cut break.
    pub fn partition(&mut self, side: impl Fn(usize) -> bool) {
        let sides: Vec<bool> = (0..self.nodes.len()).map(side).collect();
        self.net.partition(sides);
        let cut: Vec<(usize, ConnId)> = self
            .links
            .iter()
            .filter(|(k, l)| !self.net.connected(k.0, l.peer))
            .map(|(k, _)| *k)
            .collect();
        for key in cut {
            self.break_link(key);
        }
    }

    /// Ends the partition.
    pub fn heal(&mut self) {
        self.net.heal();
    }

    /// Runs a command on node `i` (as `tribe::Node` would).
    pub fn command(&mut self, i: usize, cmd: Command) -> crate::Result<()> {
        let now_ms = self.wall_ms(i);
        let engine = self.nodes[i]
            .engine
            .as_mut()
            .ok_or(crate::Error::ShuttingDown)?;
        let result = engine.handle_command(now_ms, cmd);
        self.drain(i);
        result
    }

    /// Records, for every node, when it first sees `watch`.
    pub fn watch(&mut self, watch: Watch) {
        self.observer.watch(watch, self.now);
    }

    /// When each node first saw `watch` (µs after the watch began), in
    /// node order; `None`: not yet (or never watched).
    pub fn seen(&self, watch: &Watch) -> Vec<Option<u64>> {
        self.observer.seen(watch, self.nodes.len())
    }

    /// `MemberFailed` events about nodes that were not crashed or paused at
    /// the time, as (observer, subject, µs).
    pub fn false_failures(&self) -> &[(usize, String, u64)] {
        self.observer.false_failures()
    }

    /// Live members each node counts (from its events).
    pub fn alive_counts(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .map(|i| self.observer.alive_count(i))
            .collect()
    }

    /// Runs until virtual time `t` (everything due by then is handled).
    pub fn run_until(&mut self, t: Duration) {
        let end = t.as_micros() as u64;
        while let Some(Reverse(next)) = self.queue.peek() {
            if next.at > end {
                break;
            }
            let Some(Reverse(s)) = self.queue.pop() else {
                break;
            };
            self.now = s.at;
            self.events_processed += 1;
            self.deliver(s.ev);
        }
        self.now = self.now.max(end);
    }

    /// Runs for `d` of virtual time.
    pub fn run_for(&mut self, d: Duration) {
        let t = self.now() + d;
        self.run_until(t);
    }

    // ---- internals ----

    fn wall_ms(&self, i: usize) -> u64 {
        let base = EPOCH_MS + self.now / 1_000;
        base.saturating_add_signed(self.nodes[i].clock_offset_ms)
    }

    /// Starts node `i`; `seeded`: with the first `SimConfig::seeds` nodes
    /// as seeds (a formed cluster's nodes need none).
    fn boot(&mut self, i: usize, seeded: bool, kept: Option<crate::engine::durable::Durable>) {
        let mut cfg = Config::new(self.nodes[i].name.clone());
        cfg.profile = self.cfg.profile;
        cfg.timings = self.cfg.timings.clone();
        cfg.collect_facts = false;
        cfg.bind = self.nodes[i].addr;
        if seeded {
            cfg.seeds = (0..self.cfg.seeds.min(self.nodes.len()))
                .filter(|&s| s != i)
                .map(|s| self.nodes[s].addr)
                .collect();
        }
        let now_ms = self.wall_ms(i);
        // Generations grow with the clock, as in the runtime.
        let generation = now_ms;
        let seed = self.rng.random();
        match Engine::new(
            &cfg,
            self.nodes[i].addr,
            generation,
            Default::default(),
            now_ms,
            seed,
        ) {
            Ok(mut engine) => {
                if let Some(kept) = kept {
                    engine.restore(now_ms, kept);
                }
                engine.start(now_ms);
                self.nodes[i].engine = Some(engine);
                self.observer.booted(i);
                self.drain(i);
            }
            Err(e) => tracing::warn!(node = i, error = %e, "simulated node did not start"),
        }
    }

    fn push(&mut self, delay_us: u64, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse(Scheduled {
            at: self.now + delay_us,
            seq: self.seq,
            ev,
        }));
    }

    fn deliver(&mut self, ev: Ev) {
        let i = ev.node();
        let paused_until = self.nodes[i].paused_until;
        if paused_until > self.now {
            let wait = paused_until - self.now;
            self.push(wait, ev);
            return;
        }
        let incarnation = self.nodes[i].incarnation;
        let now_ms = self.wall_ms(i);
        let elapsed_ms = self.now / 1_000;
        let Some(engine) = self.nodes[i].engine.as_mut() else {
            return;
        };
        // The simulated host's boot clock: what a pause stops, not the
        // wall clock an offset shifts.
        engine.set_elapsed_ms(elapsed_ms);
        match ev {
            Ev::Datagram { from, bytes, .. } => engine.handle_datagram(now_ms, from, &bytes),
            Ev::Timer {
                incarnation: inc,
                timer,
                ..
            } => {
                if inc != incarnation {
                    return;
                }
                engine.handle_timer(now_ms, timer);
            }
            Ev::Frame {
                incarnation: inc,
                conn,
                body,
                ..
            } => {
                if inc != incarnation {
                    return;
                }
                engine.handle_frame(now_ms, conn, &body);
            }
            Ev::Closed {
                incarnation: inc,
                conn,
                ..
            } => {
                if inc != incarnation {
                    return;
                }
                self.links.remove(&(i, conn));
                engine.handle_stream_closed(now_ms, conn);
            }
            Ev::Refused {
                incarnation: inc,
                conn,
                ..
            } => {
                if inc != incarnation {
                    return;
                }
                engine.handle_connect_refused(now_ms, conn);
            }
        }
        self.drain(i);
    }

    /// Carries out everything node `i`'s engine asked for.
    fn drain(&mut self, i: usize) {
        loop {
            let Some(out) = self.nodes[i].engine.as_mut().and_then(Engine::poll_output) else {
                return;
            };
            match out {
                Output::Datagram { to, bytes } => {
                    let t = &mut self.nodes[i].traffic;
                    t.datagrams += 1;
                    t.datagram_bytes += bytes.len() as u64;
                    let Some(&j) = self.by_addr.get(&to) else {
                        continue;
                    };
                    let from = self.nodes[i].addr;
                    if let Some(recorded) = self.recorded.as_mut() {
                        recorded.push((from, j, bytes.clone()));
                    }
                    if let Some(delay) = self.net.datagram(&mut self.rng, i, j) {
                        self.push(delay, Ev::Datagram { from, to: j, bytes });
                    }
                }
                Output::Connect { conn, to } => self.connect(i, conn, to),
                Output::Frame { conn, body } => {
                    self.nodes[i].traffic.stream_bytes += body.len() as u64 + 4;
                    self.send_frame(i, conn, body);
                }
                Output::Close { conn, .. } => self.close(i, conn),
                Output::Schedule { timer, after } => {
                    let incarnation = self.nodes[i].incarnation;
                    self.push(
                        after.as_micros() as u64,
                        Ev::Timer {
                            node: i,
                            incarnation,
                            timer,
                        },
                    );
                }
                Output::EvaluatePolicies(request) => {
                    let now_ms = self.wall_ms(i);
                    let node = &mut self.nodes[i];
                    let results = node.policies.answer(&request);
                    if let Some(engine) = node.engine.as_mut() {
                        engine.handle_policy_results(now_ms, results);
                    }
                }
                Output::Event(e) => {
                    let (nodes, now) = (&self.nodes, self.now);
                    self.observer
                        .event(i, &e, now, |name| is_down(nodes, now, name));
                }
            }
        }
    }

    fn connect(&mut self, i: usize, conn: ConnId, to: SocketAddr) {
        let incarnation = self.nodes[i].incarnation;
        let unreachable = |()| Ev::Closed {
            node: i,
            incarnation,
            conn,
        };
        let Some(&j) = self.by_addr.get(&to) else {
            self.push(CONNECT_TIMEOUT_US, unreachable(()));
            return;
        };
        if !self.net.connected(i, j)
            || !self.net.connected(j, i)
            || self.streams_blocked.contains(&(i, j))
        {
            self.push(CONNECT_TIMEOUT_US, unreachable(()));
            return;
        }
        let peer_incarnation = self.nodes[j].incarnation;
        let Some(peer) = self.nodes[j].engine.as_mut() else {
            // The host answers for the crashed process: a reset.
            let delay = 2 * self.net.segment(&mut self.rng, 0);
            self.push(
                delay,
                Ev::Refused {
                    node: i,
                    incarnation,
                    conn,
                },
            );
            return;
        };
        let peer_conn = peer.accept_stream();
        self.links.insert(
            (i, conn),
            Link {
                peer: j,
                peer_incarnation,
                peer_conn,
                last_at: self.now,
            },
        );
        self.links.insert(
            (j, peer_conn),
            Link {
                peer: i,
                peer_incarnation: incarnation,
                peer_conn: conn,
                last_at: self.now,
            },
        );
    }

    fn send_frame(&mut self, i: usize, conn: ConnId, body: Vec<u8>) {
        let Some(link) = self.links.get(&(i, conn)) else {
            return;
        };
        if !self.net.connected(i, link.peer) {
            self.break_link((i, conn));
            return;
        }
        let delay = self.net.segment(&mut self.rng, body.len() + 4);
        let Some(link) = self.links.get_mut(&(i, conn)) else {
            return;
        };
        let at = link.last_at.max(self.now + delay);
        link.last_at = at;
        let ev = Ev::Frame {
            node: link.peer,
            incarnation: link.peer_incarnation,
            conn: link.peer_conn,
            body,
        };
        let delay = at - self.now;
        self.push(delay, ev);
    }

    /// Our side closes: the peer learns after the frames already sent.
    fn close(&mut self, i: usize, conn: ConnId) {
        let Some(link) = self.links.remove(&(i, conn)) else {
            return;
        };
        let delay = self.net.segment(&mut self.rng, 0);
        let at = link.last_at.max(self.now + delay);
        self.push(
            at - self.now,
            Ev::Closed {
                node: link.peer,
                incarnation: link.peer_incarnation,
                conn: link.peer_conn,
            },
        );
    }

    /// A stream across a cut link: both ends see it break.
    fn break_link(&mut self, key: (usize, ConnId)) {
        let Some(link) = self.links.remove(&key) else {
            return;
        };
        self.links.remove(&(link.peer, link.peer_conn));
        let incarnation = self.nodes[key.0].incarnation;
        self.push(
            CONNECT_TIMEOUT_US,
            Ev::Closed {
                node: key.0,
                incarnation,
                conn: key.1,
            },
        );
        self.push(
            CONNECT_TIMEOUT_US,
            Ev::Closed {
                node: link.peer,
                incarnation: link.peer_incarnation,
                conn: link.peer_conn,
            },
        );
    }
}

/// Whether the node called `name` is crashed or paused at `now` (a failure
/// report about it is then not a false one).
fn is_down(nodes: &[Node], now: u64, name: &str) -> bool {
    name.strip_prefix("sim-")
        .and_then(|s| s.parse::<usize>().ok())
        .and_then(|i| nodes.get(i))
        .is_some_and(|n| n.engine.is_none() || n.paused_until > now)
}
