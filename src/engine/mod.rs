//! The sans-IO core. Inputs: datagrams, stream frames, timers, commands and a
//! wall-clock reading; outputs: datagrams to send, streams to open and write,
//! timers to schedule and events. No sockets, threads, sleeps or clocks here,
//! so the tokio runtime and a deterministic simulator drive the same code.

/// Logs a warning of `kind` at most once per interval (refusals come in
/// floods; each is counted all the same); the message is made only then.
/// A macro, so that the line's target is the module that logs it
/// (`tribe::engine` for datagrams, `tribe::engine::keys` for streams).
macro_rules! warn_limited {
    ($engine:expr, $kind:expr, $message:expr $(,)?) => {
        if $engine.log_due($kind) {
            tracing::warn!(kind = $kind, "{}", ($message)());
        }
    };
}

/// Said of a datagram refused for what its header claims: neither its
/// source address nor its header is authenticated.
const UNPROVEN: &str = " (its source and header are not authenticated: it may also be forged, or junk)";

mod advertise;
mod buddy;
mod codec;
pub mod commands;
mod delta;
mod failing;
mod goodbyes;
pub mod durable;
mod identity;
pub mod joins;
pub mod keys;
mod members;
mod name_claims;
mod news;
mod renewals;
// The simulator's: nothing else preloads an engine.
#[cfg(feature = "internals")]
mod preload;
mod providers;
mod reconcile;
mod refusals;
mod skew;
mod suspects;
pub mod sync;
pub mod view;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::num::{NonZeroU8, NonZeroUsize};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use foca::{AccumulatingRuntime, Foca, Member, OwnedNotification};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::config::{Config, Timings};
use crate::counters::Counters;
use crate::hlc::Clock;
use crate::records::{Key, NodeRecord};
use crate::wire;

pub use delta::Shared;
use delta::{lock, DeltaHandler};
pub use identity::NodeId;
use members::Members;
pub use reconcile::Event;

/// Largest delta piggybacked on gossip; larger writes travel by anti-entropy.
pub const MAX_DELTA_LEN: usize = 400;
/// Default of [`Config::max_clock_skew`]: versions and generations more
/// than this far ahead of the reference clock are refused as forged.
pub const MAX_CLOCK_DRIFT: Duration = Duration::from_secs(3600);
/// A peer whose clock is off ours by more than this is reported (event,
/// log line, counter); its writes are still taken.
pub const CLOCK_SKEW_REPORT: Duration = Duration::from_secs(30);
/// Peers' clock offsets kept for the median.
const MAX_CLOCK_SAMPLES: usize = 4096;
/// How often a refused gossip packet is logged (above debug).
const GOSSIP_REFUSED_LOG_EVERY_MS: u64 = 600_000;
/// Queue entries past which a drained queue gives its memory back.
const BURST: usize = 256;
/// An anti-entropy exchange that takes longer is abandoned.
pub const SYNC_TIMEOUT: Duration = Duration::from_secs(10);
/// Fewest times an update or delta is sent on by each node that learns it.
pub const MIN_RETRANSMITS: f64 = 5.0;
/// How often reaping, tombstone collection and exchange timeouts run.
pub const HOUSEKEEPING_INTERVAL: Duration = Duration::from_millis(500);
/// Shortest gap between inputs taken for a stall (see `Engine::after_stall`).
const MIN_STALL_MS: u64 = 60_000;
/// A gap between inputs this long (timers run every half second) means the
/// process ran nothing; for this long after it, the frames that waited are
/// read and peers' clocks are not sampled.
const STALE_FRAMES_GAP_MS: u64 = 5_000;
const STALE_FRAMES_READ_MS: u64 = 5_000;

/// How often records of tribes without a record are swept (besides after
/// every tombstone collection).
const ORPHAN_SWEEP_EVERY_MS: u64 = 60_000;
/// How often the records are scanned for nodes the member table does not
/// list (at most; a quarter of `reap_after` when that is shorter): a scan
/// reads every node record, too many to read at each housekeeping tick in
/// a large tribe.
const UNLISTED_SCAN_EVERY_MS: u64 = 30_000;

/// Peers each node that learns of a keyring step pushes it to at once.
/// Keyring records never ride gossip; with `gossip_fanout` (3) pushes per
/// informed node, about e^-3 of the nodes (one in twenty) waited for a
/// push-pull round (30 s on a LAN), longer than a step waits for the one
/// before it. Steps are rare: a wider push costs little.
pub const KEYRING_FANOUT: usize = 16;

/// Identifies one stream (TCP connection) between the engine and its driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// A timer the engine asked for; deliver it back through [`Engine::handle_timer`].
/// A driver only hands timers back, so new kinds may come in any release.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Timer {
    /// A SWIM protocol timer.
    Swim(foca::Timer<NodeId>),
    /// Retry joining through the seeds.
    Join,
    /// Start a periodic anti-entropy exchange.
    PushPull,
    /// Try a failed member again (heals partitions).
    Reconnect,
    /// Reap, collect tombstones, expire stalled exchanges.
    Housekeeping,
    /// An early gossip round (news faster than the tick).
    News,
    /// A peer's verdict that `member` is down, taken here as a suspicion
    /// (see [`suspects`]): down unless refuted by now.
    Verdict {
        /// The member.
        member: NodeId,
        /// The incarnation the verdict was about.
        incarnation: u16,
    },
}

/// Something the driver must do for the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send one datagram.
    Datagram {
        /// Destination.
        to: SocketAddr,
        /// Bytes, envelope included.
        bytes: Vec<u8>,
    },
    /// Open a stream to `to`; later frames for `conn` follow in order.
    Connect {
        /// Stream id chosen by the engine.
        conn: ConnId,
        /// Destination.
        to: SocketAddr,
    },
    /// Send one frame body on a stream (the driver adds the length prefix).
    Frame {
        /// Stream.
        conn: ConnId,
        /// Frame body.
        body: Vec<u8>,
    },
    /// Close a stream once its queued frames are sent.
    Close {
        /// Stream.
        conn: ConnId,
        /// The exchange was given up (a join abandoned, a node leaving):
        /// drop the stream at once, queued frames and all, rather than
        /// wait for the peer to end it.
        abandon: bool,
    },
    /// Call [`Engine::handle_timer`] with `timer` after `after`.
    Schedule {
        /// The timer.
        timer: Timer,
        /// Delay.
        after: Duration,
    },
    /// Hand an event to the application.
    Event(Event),
    /// Evaluate the node's policies (off the engine, on any thread) and
    /// hand the answer to [`Engine::handle_policy_results`].
    EvaluatePolicies(crate::policy_set::PolicyRequest),
}

type Swim = Foca<NodeId, codec::GuardedCodec, StdRng, DeltaHandler>;

/// The protocol engine of one node.
pub struct Engine {
    name: String,
    label: String,
    timings: Timings,
    seeds: Vec<SocketAddr>,
    gossip_deltas: bool,
    swim: Swim,
    swim_rt: AccumulatingRuntime<NodeId>,
    shared: Arc<Mutex<Shared>>,
    members: Members,
    /// Nodes with a record that the member table has not listed, and the
    /// steady time (ms) each was first found so: a node that died before
    /// this process started (every node that saw it fail restarted since)
    /// is forgotten after `reap_after` like one seen to fail.
    unlisted_since: std::collections::BTreeMap<String, u64>,
    /// When (steady ms) the records were last scanned for them.
    unlisted_scanned_ms: Option<u64>,
    /// The hosts of each call target, while they hold.
    providers: providers::Cache,
    /// What this node publishes about itself.
    record: NodeRecord,
    /// Collected facts (user facts live in `user_facts` and win).
    collected_facts: crate::facts::Facts,
    user_facts: crate::facts::Facts,
    /// Facts set or removed by commands, in this run or kept from earlier
    /// ones (see `durable`): only where they differ from the configured
    /// facts, so the map stays as small as the facts themselves.
    fact_changes: std::collections::BTreeMap<String, Option<String>>,
    /// The facts the node was started with.
    configured_facts: crate::facts::Facts,
    /// Grows with each change of `fact_changes`.
    fact_revision: usize,
    outputs: VecDeque<Output>,
    conns: BTreeMap<ConnId, sync::Exchange>,
    next_conn: u64,
    rng: StdRng,
    active: bool,
    join_backoff: Duration,
    /// Join attempts since this node was last joined.
    join_attempts: u32,
    /// Whether this node was ever part of a tribe (its join retries after
    /// that are a lost contact, not a first join).
    joined_once: bool,
    /// Whether a `Timer::Join` is scheduled: never two retry chains.
    join_pending: bool,
    /// Seeds given by name, as the runtime last looked them up.
    named_seeds: Vec<SocketAddr>,
    /// Seeds (by address or by name) found to be this node itself at
    /// another of its addresses: never dialled again.
    own_seeds: Vec<SocketAddr>,
    /// New generations this node took because peers had found it down.
    renewals: renewals::Renewals,
    /// Seeds a join exchange completed with at least once: kept when a
    /// join that made them seeds is given up.
    seeds_answered: Vec<SocketAddr>,
    /// Joins asked for after the start, and their outcomes.
    joins: joins::Joins,
    left: bool,
    /// A write too big for gossip asks for an early exchange.
    sync_soon: bool,
    /// A keyring write (never gossiped) asks for early exchanges with up
    /// to [`KEYRING_FANOUT`] peers, not `gossip_fanout`.
    sync_wide: bool,
    /// This node's own record changed: it also goes to `last_exchanged`
    /// (see `push_own_record`).
    own_news: bool,
    /// The peer of the last whole exchange, and when it ended: one that
    /// answered a moment ago, where gossip may pick members that crashed
    /// and are not yet found out.
    last_exchanged: Option<(SocketAddr, u64)>,
    /// When `own_news` last went out.
    own_news_ms: u64,
    reconcile: reconcile::Reconciler,
    cluster_size_hint: usize,
    /// Keys for sealing; `None` means plaintext.
    keyring: Option<crate::crypto::Keyring>,
    encryption: crate::config::Encryption,
    /// Source of datagram nonces (reseeded from OS entropy by the runtime).
    nonce_rng: StdRng,
    /// When each kind of refusal was last logged.
    warned: BTreeMap<&'static str, u64>,
    /// Members seen sending from another address than they advertise.
    advertise_seen: BTreeMap<SocketAddr, advertise::AdvertiseSeen>,
    /// Last clock offset sampled from each peer (their clock − ours, ms).
    clock_offsets: BTreeMap<String, i64>,
    /// Peers whose skew was reported and has not gone away since.
    skewed: BTreeSet<String>,
    /// Exchanges failing in a row with members gossip hears (see [`failing`]).
    failing: failing::Streaks,
    /// Claims on our name already reported.
    claims_seen: BTreeSet<(SocketAddr, u64)>,
    /// Our record changed while another node held our name: it goes out
    /// when this node no longer keeps out (see [`name_claims`]).
    record_owed: bool,
    /// See [`Engine::security_epoch`].
    security_epoch: u64,
    /// The last peer that refused this node's key, and when (engine clock,
    /// ms): shown for a while (see [`Engine::key_refused_by`]).
    key_refused: Option<(SocketAddr, u64)>,
    /// The key of the last sealed datagram a peer sent with another key
    /// than this node's primary, and when (engine clock, ms): what the
    /// tribe seals with, should this node's own key be refused (see
    /// `try_another_key`).
    peer_key: Option<(crate::crypto::KeyId, u64)>,
    /// The key of the last datagram a peer sealed with this node's own
    /// primary (as it was then), and when (engine clock, ms): a peer
    /// refusing that same key is then the one behind. The key is kept: a
    /// sighting of a former primary says nothing about the current one.
    own_key_heard: Option<(crate::crypto::KeyId, u64)>,
    /// Records kept from before a long absence, awaiting a peer's word
    /// (see [`durable`]).
    pending: BTreeMap<Key, crate::records::Entry>,
    /// After a stall longer than the tombstone grace: until when (engine
    /// clock) this node's view and policies wait for its records to be
    /// confirmed (see [`Engine::after_stall`]).
    stall_hold_until: Option<u64>,
    /// A stall longer than the tombstone grace happened (or a restart after
    /// as long an absence) and no peer has decided this node's records
    /// since (see [`Engine::after_stall`]): the clock's latest point then.
    /// Records written after it (commands since, peers' writes) are news
    /// the cluster holds or will hold, and are not held.
    stall_unconfirmed: Option<(u64, u32)>,
    /// Peers that held this node's held records pending too, since the hold
    /// began: once every peer up did, no one is left to decide them.
    stall_undecided_by: BTreeSet<String>,
    /// The last reading given to [`Engine::set_elapsed_ms`].
    elapsed_ms: Option<u64>,
    /// A stall found there, for the next input.
    stalled_ms: Option<u64>,
    /// The reading of that clock before which peers' clocks are not
    /// sampled: just after a gap in this node's running.
    clock_samples_from_ms: u64,
    /// When an exchange last completed (engine clock, ms; 0 if never).
    last_contact_ms: u64,
    /// When an exchange last completed, by [`Engine::steady_ms`].
    last_exchange_steady_ms: u64,
    /// While records are held after a stall or a long absence, the last
    /// contact before it: what the data dir keeps (see `durable`).
    held_contact_ms: Option<u64>,
    /// Restored from a data dir whose last contact (kept here, with the
    /// clock's latest point then) is within the grace by this node's clock:
    /// the first peer's clock says whether it really is (a clock that
    /// stepped back across the restart); see `durable`.
    absence_unchecked: Option<(u64, (u64, u32))>,
    /// Until when the view of a node restarted from its data dir holds
    /// still, waiting for its first exchange (see `durable`).
    view_held_until: Option<u64>,
    /// When records of tribes without a record were last swept (see
    /// [`crate::state::State::drop_orphans`]).
    orphans_swept_ms: u64,
    /// The peers an earlier run kept (see [`durable`]): seeds at start,
    /// then tried now and then, as failed members are, while this run has
    /// not met them, until `kept_until_ms`.
    kept_peers: Vec<SocketAddr>,
    kept_until_ms: u64,
    /// The last non-empty list of peers the data dir kept.
    last_kept: Vec<SocketAddr>,
    /// Largest stream frame, to size anti-entropy chunks.
    max_frame: usize,
    /// Gossips news before the next tick.
    news: news::Forwarder,
    /// Suspects this node has decided about dialling (see [`suspects`]).
    suspects_seen: BTreeSet<(Arc<str>, u64)>,
    /// Members found down without a suspicion here, and when their failure
    /// is told unless their record says they left (see `goodbyes`).
    failures_unsaid: BTreeMap<String, u64>,
    /// Since when each suspect has been one here (engine clock, ms; `None`
    /// once dialed for it; see `check_suspects`).
    suspects_held: BTreeMap<(Arc<str>, u64), Option<u64>>,
    /// Members dialed for a peer's verdict this node softened (name,
    /// generation, incarnation; see `time_softened_verdicts`).
    softened_dialed: BTreeSet<(Arc<str>, u64, foca::Incarnation)>,
    /// Suspicions this node started, pinged about (see [`buddy`]).
    buddies: buddy::Buddies,
    /// When a datagram last got through to SWIM (see [`suspects`]).
    last_heard_ms: u64,
    /// Verdicts held while this node hears no one: since when, and when
    /// last held deaf, by (name, generation, incarnation) (see
    /// [`suspects`]).
    held_verdicts: BTreeMap<(Arc<str>, u64, u16), (u64, u64)>,
}

fn foca_config(t: &Timings, cluster_size: usize) -> foca::Config {
    let n = cluster_size.max(1) as f64;
    let log_n = n.log10().max(1.0);
    let suspicion = t.probe_period.mul_f64(f64::from(t.suspicion_mult) * log_n);
    // memberlist's formula gives 2–4 sends per update in small clusters. If
    // every node that learns an update sends it k times to random peers,
    // about N·e^-k nodes never hear of it and wait for anti-entropy (seen as
    // one node learning of a crash 15–35 s late). k ≥ ln N + 4.6 keeps that
    // near 1 % of a node per update, for a few hundred bytes more per write.
    let epidemic_floor = (n.ln() + 4.6).ceil();
    let retransmits = (f64::from(t.retransmit_mult) * (n + 1.0).log10().ceil())
        .max(epidemic_floor)
        .clamp(MIN_RETRANSMITS, 255.0);
    let mut cfg = foca::Config::new_lan(std::num::NonZeroU32::MIN);
    cfg.probe_period = t.probe_period;
    cfg.probe_rtt = t.probe_rtt;
    cfg.num_indirect_probes = NonZeroUsize::new(t.indirect_probes).unwrap_or(NonZeroUsize::MIN);
    cfg.max_transmissions = NonZeroU8::new(retransmits as u8).unwrap_or(NonZeroU8::MIN);
    cfg.suspect_to_down_after = suspicion;
    // foca must remember down identities long enough to refuse stale ones;
    // our own member table does the user-visible reaping.
    cfg.remove_down_after = Some(Duration::from_secs(24 * 3600).max(t.reap_after));
    cfg.max_packet_size =
        NonZeroUsize::new(wire::MAX_DATAGRAM - wire::ENVELOPE_BUDGET).unwrap_or(NonZeroUsize::MIN);
    cfg.notify_down_members = true;
    // Periodic push-pull already exchanges the full member list over TCP;
    // foca's periodic announce would send the same list again over UDP.
    cfg.periodic_announce = None;
    cfg.periodic_announce_to_down_members = Some(foca::PeriodicParams {
        frequency: t.reconnect_interval,
        num_members: NonZeroUsize::MIN,
    });
    cfg.periodic_gossip = Some(foca::PeriodicParams {
        frequency: t.gossip_interval,
        num_members: NonZeroUsize::new(t.gossip_fanout).unwrap_or(NonZeroUsize::MIN),
    });
    cfg
}

impl Engine {
    /// Builds an engine. `addr` is the advertised address, `generation` the
    /// start generation, `collected_facts` the host facts, `seed` the RNG seed
    /// (fixed in the simulator, random in the runtime).
    pub fn new(
        cfg: &Config,
        addr: SocketAddr,
        generation: u64,
        collected_facts: crate::facts::Facts,
        now_ms: u64,
        seed: u64,
    ) -> Result<Engine, crate::Error> {
        cfg.validate()?;
        let timings = cfg.effective_timings();
        // Early gossip rounds at most four times per tick.
        let news_gap_ms =
            u64::try_from((timings.gossip_interval / 4).as_millis()).unwrap_or(u64::MAX);
        let id = NodeId::new(cfg.name.as_str(), addr, generation);
        let shared = Arc::new(Mutex::new(Shared {
            state: crate::state::State::new(),
            clock: Clock::new(&cfg.name),
            counters: Counters::default(),
            now_ms,
            max_skew_ms: u64::try_from(cfg.max_clock_skew.as_millis()).unwrap_or(u64::MAX),
            cluster_offset_ms: 0,
            kept_floor_ms: 0,
            own: id.clone(),
            claims: Default::default(),
            limits: cfg.limits,
            accept_keyring_records: cfg.keyring.is_some()
                && cfg.encryption == crate::config::Encryption::Require,
            tombstone_grace_ms: timings.tombstone_grace.as_millis() as u64,
            verdict_window_ms: foca_config(&timings, 1).suspect_to_down_after.as_millis() as u64,
            softened: Vec::new(),
            last_sender: None,
            invalid_logged_ms: None,
        }));
        if !cfg.seeds.is_empty()
            && cfg.seed_names.is_empty()
            && cfg.seeds.iter().all(|s| *s == addr)
        {
            // Dropped (it would reach only this node): said, so that a
            // mistyped seed is not taken for a tribe that never answers.
            tracing::warn!(
                seed = %addr,
                "the only seed given is this node's own address: it runs alone until \
                 another node joins through it"
            );
        }
        let mut rng = StdRng::seed_from_u64(seed);
        let swim_rng = StdRng::seed_from_u64(rng.random());
        let swim = Foca::with_custom_broadcast(
            id,
            foca_config(&timings, 1),
            swim_rng,
            codec::GuardedCodec::new(shared.clone()),
            DeltaHandler::new(shared.clone()),
        );
        let record = NodeRecord {
            addr,
            generation,
            facts: Default::default(),
            policy_tribes: Default::default(),
            endpoints: Vec::new(),
            left: false,
            keys: cfg.keyring.as_ref().map(|r| r.ids()).unwrap_or_default(),
            primary_key: cfg.keyring.as_ref().map(|r| r.primary_id()),
            artifacts: Vec::new(),
        };
        let nonce_rng = StdRng::seed_from_u64(rng.random());
        let mut engine = Engine {
            name: cfg.name.clone(),
            label: cfg.cluster_label.clone(),
            join_backoff: timings.join_retry,
            join_attempts: 0,
            joined_once: false,
            join_pending: false,
            named_seeds: Vec::new(),
            own_seeds: Vec::new(),
            renewals: renewals::Renewals::default(),
            seeds_answered: Vec::new(),
            joins: joins::Joins::default(),
            timings,
            seeds: cfg.seeds.iter().copied().filter(|s| *s != addr).collect(),
            gossip_deltas: cfg.gossip_deltas,
            swim,
            swim_rt: AccumulatingRuntime::new(),
            shared,
            members: Members::default(),
            unlisted_since: Default::default(),
            unlisted_scanned_ms: None,
            providers: providers::Cache::default(),
            record,
            collected_facts,
            user_facts: cfg.facts.clone(),
            fact_changes: Default::default(),
            configured_facts: cfg.facts.clone(),
            fact_revision: 0,
            outputs: VecDeque::new(),
            conns: BTreeMap::new(),
            next_conn: 0,
            rng,
            active: false,
            left: false,
            sync_soon: false,
            own_news: false,
            last_exchanged: None,
            own_news_ms: 0,
            sync_wide: false,
            reconcile: reconcile::Reconciler::default(),
            cluster_size_hint: 1,
            keyring: cfg.keyring.clone(),
            encryption: cfg.encryption,
            nonce_rng,
            warned: BTreeMap::new(),
            advertise_seen: BTreeMap::new(),
            clock_offsets: BTreeMap::new(),
            skewed: BTreeSet::new(),
            failing: Default::default(),
            claims_seen: BTreeSet::new(),
            record_owed: false,
            pending: BTreeMap::new(),
            stall_hold_until: None,
            stall_unconfirmed: None,
            stall_undecided_by: BTreeSet::new(),
            elapsed_ms: None,
            stalled_ms: None,
            clock_samples_from_ms: 0,
            last_contact_ms: 0,
            last_exchange_steady_ms: 0,
            held_contact_ms: None,
            absence_unchecked: None,
            view_held_until: None,
            orphans_swept_ms: 0,
            kept_peers: Vec::new(),
            kept_until_ms: 0,
            last_kept: Vec::new(),
            max_frame: cfg.max_frame,
            news: news::Forwarder::new(news_gap_ms),
            suspects_seen: BTreeSet::new(),
            failures_unsaid: BTreeMap::new(),
            suspects_held: BTreeMap::new(),
            softened_dialed: BTreeSet::new(),
            buddies: Default::default(),
            last_heard_ms: 0,
            held_verdicts: BTreeMap::new(),
            security_epoch: 0,
            key_refused: None,
            peer_key: None,
            own_key_heard: None,
        };
        engine.record.facts = engine.merged_facts();
        Ok(engine)
    }

    /// Seeds datagram nonces from real entropy. The runtime calls this; the
    /// simulator keeps the nonces derived from its seed.
    pub fn reseed_nonces(&mut self, seed: [u8; 32]) {
        self.nonce_rng = StdRng::from_seed(seed);
    }

    /// Starts the protocol: publishes our record, evaluates policies, joins
    /// through the seeds and arms the periodic timers.
    pub fn start(&mut self, now_ms: u64) {
        self.tick(now_ms);
        self.publish_record();
        self.after_change();
        self.join();
        self.schedule(Timer::Housekeeping, HOUSEKEEPING_INTERVAL);
        // The first exchange at a random point of the interval (memberlist's
        // stagger): nodes started together do not all exchange at once.
        let first = self
            .push_pull_interval()
            .mul_f64(self.rng.random_range(0.05..1.0));
        self.schedule(Timer::PushPull, first);
        self.schedule_jittered(Timer::Reconnect, self.timings.reconnect_interval);
    }

    #[cfg(feature = "internals")] // the simulator's and the tests'
    /// Name of this node.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The address this node advertises.
    pub fn addr(&self) -> SocketAddr {
        self.swim.identity().addr
    }

    #[cfg(feature = "internals")] // the simulator's and the tests'
    /// Current SWIM identity of this node.
    pub fn identity(&self) -> &NodeId {
        self.swim.identity()
    }

    /// Whether this node has joined a cluster (has at least one live peer).
    pub fn is_active(&self) -> bool {
        self.active
    }

    /// The next output, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        let next = self.outputs.pop_front();
        if next.is_none() && self.outputs.capacity() > BURST {
            // A burst (a mass join's events) would otherwise keep its queue
            // for the node's lifetime: N entries on each of N nodes.
            self.outputs.shrink_to(BURST / 8);
        }
        next
    }

    /// A datagram received from `from` (named in the warnings it earns).
    pub fn handle_datagram(&mut self, now_ms: u64, from: SocketAddr, bytes: &[u8]) {
        self.tick(now_ms);
        {
            let mut sh = lock(&self.shared);
            sh.counters.datagrams_in += 1;
            sh.counters.datagram_bytes_in += bytes.len() as u64;
        }
        // A node that left stays gone: fed a peer's gossip about its own
        // departure, foca would rejoin under a new generation.
        if self.left {
            return;
        }
        let opened = match wire::open_datagram(&self.label, self.keyring.as_ref(), bytes) {
            Ok(p) => p,
            Err(e) => {
                self.count_wire_error(&e, from);
                return;
            }
        };
        let payload: std::borrow::Cow<'_, [u8]> = match opened {
            wire::Opened::Plain(p) => {
                if self.requires_sealed() {
                    lock(&self.shared).counters.plaintext_datagrams_refused += 1;
                    warn_limited!(self, "plaintext_datagram", || {
                        format!("plaintext datagram from {from} refused: encryption is required{UNPROVEN}")
                    });
                    return;
                }
                p.into()
            }
            wire::Opened::Sealed(p) => {
                self.note_sealed_peer(from);
                let key = wire::sealed_key_id(bytes);
                let primary = self.keyring.as_ref().map(|r| r.primary_id());
                if let Some(k) = key.filter(|k| Some(*k) == primary) {
                    self.own_key_heard = Some((k, now_ms));
                } else if key.is_some() {
                    self.peer_key = key.map(|k| (k, self.now_ms()));
                }
                p.into()
            }
        };
        let handled = self.swim.handle_data(&payload, &mut self.swim_rt);
        if handled.is_ok() {
            self.last_heard_ms = self.now_ms();
            // Set by the codec for every packet that decodes.
            let advertised = lock(&self.shared).last_sender.take();
            if let Some(advertised) = advertised {
                self.check_advertised(advertised, from);
            }
        }
        if let Err(e) = handled {
            tracing::debug!(error = %e, %from, "gossip packet refused");
            // A "you are down" notice, held back on purpose, is no error:
            // peers send one per probe after a pause of this node.
            let held_back = matches!(
                &e,
                foca::Error::Decode(inner)
                    if matches!(inner.downcast_ref(), Some(codec::GuardError::DownNotice))
            );
            if !held_back {
                lock(&self.shared).counters.gossip_errors += 1;
                // Said now and then, so that a counter that grows has a
                // reason in the log.
                if self.log_due_every("gossip_refused", GOSSIP_REFUSED_LOG_EVERY_MS) {
                    tracing::info!(error = %e, %from, "a gossip packet was refused (counted in gossip_errors; said at most every 10 minutes)");
                }
            }
        }
        self.after_change();
    }

    /// A timer fired.
    pub fn handle_timer(&mut self, now_ms: u64, timer: Timer) {
        self.tick(now_ms);
        match timer {
            Timer::Swim(t) => {
                if !self.swim_timer_is_live(&t) {
                    return self.after_change();
                }
                // Kept out of its name, this node holds its SWIM view as it
                // was: run, its probes (unsent) would declare every peer
                // down, and each would have to renew once this node is
                // back (see `name_claims`).
                if lock(&self.shared).keeping_out() {
                    self.schedule(Timer::Swim(t), Duration::from_secs(1));
                    return self.after_change();
                }
                if self.holds_verdict(&t) {
                    self.schedule(Timer::Swim(t), self.timings.probe_period);
                    return self.after_change();
                }
                if let Err(e) = self.swim.handle_timer(t, &mut self.swim_rt) {
                    tracing::debug!(error = %e, "swim timer error");
                }
            }
            Timer::Verdict {
                member,
                incarnation,
            } => self.verdict_due(&member, incarnation),
            Timer::Join => {
                self.join_pending = false;
                if !self.active && !self.left {
                    self.join();
                }
            }
            Timer::PushPull => {
                self.periodic_sync();
                let next = self.push_pull_interval();
                self.schedule_jittered(Timer::PushPull, next);
            }
            Timer::Reconnect => {
                self.reconnect();
                self.schedule_jittered(Timer::Reconnect, self.timings.reconnect_interval);
            }
            Timer::News => self.news.timer_fired(),
            Timer::Housekeeping => {
                self.end_stall_hold_when_due();
                // An evaluation that could not start its thread is asked
                // again, not only at the next change of facts or policies.
                if self.reconcile_retry_due() {
                    self.evaluate_policies();
                }
                self.say_held_policy_errors();
                self.say_overdue_failures();
                self.release_restart_view(false);
                self.housekeeping();
                self.check_suspects();
                self.schedule(Timer::Housekeeping, HOUSEKEEPING_INTERVAL);
            }
        }
        self.after_change();
    }

    /// An engine of `cfg` at 127.0.0.1:1, started at 1,000 ms: what unit
    /// tests drive by hand.
    #[cfg(test)]
    pub(crate) fn started_for_test(cfg: &crate::Config) -> Engine {
        let addr = "127.0.0.1:1".parse().expect("an address");
        let mut engine = Engine::new(cfg, addr, 1, Default::default(), 1_000, 1).expect("an engine");
        engine.start(1_000);
        engine
    }

    /// A snapshot of the counters.
    pub fn counters(&self) -> Counters {
        lock(&self.shared).counters.clone()
    }

    /// Outstanding gossip backlog (membership updates + deltas).
    pub fn broadcast_backlog(&self) -> usize {
        self.swim.updates_backlog() + self.swim.custom_broadcast_backlog()
    }

    /// Digest of the replicated state (equal on converged nodes), hex.
    pub fn state_digest(&self) -> String {
        lock(&self.shared).state.digest_hex()
    }

    #[cfg(feature = "internals")] // the simulator's and the tests'
    /// Number of replicated records (tombstones included).
    pub fn state_len(&self) -> usize {
        lock(&self.shared).state.len()
    }

    // ---- internals shared by the submodules ----

    fn tick(&mut self, now_ms: u64) {
        {
            let mut sh = lock(&self.shared);
            // The wall clock may step back; the engine's notion of now does not.
            sh.now_ms = sh.now_ms.max(now_ms);
        }
        if let Some(gap) = self.stalled_ms.take() {
            self.after_stall(gap);
        }
    }

    /// Reads the host's clock that keeps running while the process is
    /// stopped or the machine sleeps, and never steps (`CLOCK_BOOTTIME`;
    /// the driver sets it before each input). Timers run every half second:
    /// a gap longer than the tombstone grace (and a minute) is a host that
    /// ran nothing (suspended, a paused VM, SIGSTOP), handled at the next
    /// input. A step of the wall clock is none.
    pub fn set_elapsed_ms(&mut self, ms: u64) {
        let Some(before) = self.elapsed_ms.replace(ms) else {
            return;
        };
        let grace = self.timings.tombstone_grace.as_millis() as u64;
        let gap = ms.saturating_sub(before);
        if gap > grace.max(MIN_STALL_MS) {
            self.stalled_ms = Some(gap);
        }
        if gap > STALE_FRAMES_GAP_MS {
            // The frames that waited in the sockets meanwhile carry clocks
            // as old as the gap: no peer's clock is off by it.
            self.clock_samples_from_ms = ms.saturating_add(STALE_FRAMES_READ_MS);
        }
    }

    fn now_ms(&self) -> u64 {
        lock(&self.shared).now_ms
    }

    /// A clock for gaps between this node's own acts: the boot clock when
    /// the driver gives it (it never steps), else the engine's. The
    /// engine's stands still after the wall clock steps back (it never
    /// goes back), which would hold a gap open for as long as the step.
    fn steady_ms(&self) -> u64 {
        self.elapsed_ms.unwrap_or_else(|| self.now_ms())
    }

    fn schedule(&mut self, timer: Timer, after: Duration) {
        self.outputs.push_back(Output::Schedule { timer, after });
    }

    fn schedule_jittered(&mut self, timer: Timer, after: Duration) {
        let after = self.jitter(after);
        self.schedule(timer, after);
    }

    fn emit(&mut self, event: Event) {
        self.outputs.push_back(Output::Event(event));
    }

    /// Up to ±10 % jitter so that periodic work of many nodes does not align.
    fn jitter(&mut self, d: Duration) -> Duration {
        let factor = 0.9 + self.rng.random::<f64>() * 0.2;
        d.mul_f64(factor)
    }

    /// memberlist's scaling: the interval grows with log2 of the cluster size
    /// above 32 nodes, so the exchange rate per node stays bounded.
    fn push_pull_interval(&self) -> Duration {
        let n = self.members.count_up() + 1;
        if n <= 32 {
            return self.timings.push_pull_interval;
        }
        let mult = ((n as f64).log2() - 32f64.log2()).ceil() + 1.0;
        self.timings.push_pull_interval.mul_f64(mult)
    }

    fn count_wire_error(&mut self, e: &wire::WireError, from: SocketAddr) {
        {
            let mut sh = lock(&self.shared);
            match e {
                wire::WireError::LabelMismatch => sh.counters.label_mismatches += 1,
                wire::WireError::UnknownKey(_) | wire::WireError::Auth => {
                    sh.counters.datagram_auth_errors += 1
                }
                _ => sh.counters.datagram_decode_errors += 1,
            }
        }
        // Each kind at most once per interval: a flood of any one kind
        // leaves one line, and the counters tell how many.
        let kind = match e {
            // A key this node lacks (a node left behind by a rotation,
            // or junk naming any key) apart from a failed tag: a flood of
            // one does not hide the other.
            wire::WireError::UnknownKey(_) => "datagram_unknown_key",
            wire::WireError::Auth => "datagram_auth",
            wire::WireError::LabelMismatch => "datagram_label",
            // Its own: junk now and then must not hide a node of another
            // build.
            wire::WireError::UnsupportedVersion(_) => "datagram_version",
            _ => "datagram_malformed",
        };
        // What only an unauthenticated header says may be a forgery, or
        // junk that happens to start like a datagram.
        let unproven = matches!(
            e,
            wire::WireError::UnsupportedVersion(_)
                | wire::WireError::LabelMismatch
                | wire::WireError::UnknownKey(_)
                | wire::WireError::Auth
        );
        warn_limited!(self, kind, || format!(
            "datagram from {from} refused: {e}{}",
            if unproven { UNPROVEN } else { "" }
        ));
    }

    /// Whether setting fact `key` would give this node more facts than a
    /// peer accepts in its record (collected ones included).
    fn over_fact_limit_with(&self, key: &str) -> bool {
        let only_collected = self
            .collected_facts
            .keys()
            .filter(|k| !self.user_facts.contains_key(*k))
            .count();
        !self.user_facts.contains_key(key)
            && !self.collected_facts.contains_key(key)
            && self.user_facts.len() + only_collected >= crate::records::limits::MAX_FACTS
    }

    fn merged_facts(&self) -> crate::facts::Facts {
        let mut facts = self.collected_facts.clone();
        facts.extend(self.user_facts.clone());
        facts
    }

    /// Writes our own node record (facts, policy tribes, endpoints, left).
    fn publish_record(&mut self) {
        // While another node holds our name, its record is the one under
        // it; ours goes out when the name is back (see `name_claims`).
        if lock(&self.shared).keeping_out() {
            self.record_owed = true;
            return;
        }
        self.record_owed = false;
        self.publish(self.record.clone());
    }

    /// Writes `record` as this node's.
    fn publish(&mut self, record: crate::records::NodeRecord) {
        let value = crate::records::Value::Node(record);
        self.write(Key::Node(self.name.clone()), Some(value));
        self.own_news = true;
    }

    /// Sends out what foca produced and reacts to its notifications.
    /// Gossips at once when the last input brought news, and once more a
    /// gap later while it is queued (see [`news`]).
    fn forward_news(&mut self) {
        if self.left || !self.active {
            return;
        }
        loop {
            let backlog = self.swim.updates_backlog() + self.swim.custom_broadcast_backlog();
            match self.news.next_round(self.now_ms(), backlog) {
                news::Round::No => return,
                news::Round::After(ms) => {
                    return self.schedule(Timer::News, Duration::from_millis(ms));
                }
                news::Round::Now => {
                    // Gossip only shrinks the backlog, so the next look
                    // sees no news in it, only a follow-up owed.
                    if let Err(e) = self.swim.gossip(&mut self.swim_rt) {
                        tracing::debug!(error = %e, "early gossip failed");
                    }
                    self.drain_swim();
                }
            }
        }
    }

    fn drain_swim(&mut self) {
        while let Some((to, packet)) = self.swim_rt.to_send() {
            // foca keeps this node's earlier identity (from before it
            // rejoined) among its down members, and announces to it now and
            // then: a packet to ourselves, refused here as from ourselves
            // (gossip_errors grew every few seconds after a pause).
            if *to.name == *self.name {
                continue;
            }
            self.send_swim_packet(to.addr, &packet);
        }
        while let Some((after, timer)) = self.swim_rt.to_schedule() {
            if let foca::Timer::ChangeSuspectToDown {
                member_id,
                incarnation,
                ..
            } = &timer
            {
                self.suspicion_started(member_id, *incarnation);
            }
            self.schedule(Timer::Swim(timer), after);
        }
        let mut notified = 0;
        while let Some(n) = self.swim_rt.to_notify() {
            self.on_notification(n);
            notified += 1;
        }
        if notified > BURST && self.swim_rt.backlog() == 0 {
            // foca's queues keep their largest size; start them afresh.
            self.swim_rt = AccumulatingRuntime::new();
        }
    }

    /// Wraps one of foca's packets for the wire (sealed when the keyring
    /// says so) and sends it.
    fn send_swim_packet(&mut self, to: SocketAddr, packet: &[u8]) {
        let mut nonce = [0u8; 24];
        if self.seals().is_some() {
            rand::Rng::fill_bytes(&mut self.nonce_rng, &mut nonce);
        }
        let bytes = match self.seals() {
            Some(ring) => wire::sealed_datagram(&self.label, ring, nonce, packet),
            None => wire::plain_datagram(&self.label, packet),
        };
        {
            let mut sh = lock(&self.shared);
            // A node kept out of its name is silent in SWIM: its view of
            // the others is stale, and told to them, it made healthy peers
            // renew (see `name_claims`). Checked here, under the lock the
            // counters take anyway; the packet sealed for nothing is rare.
            if sh.keeping_out() {
                return;
            }
            sh.counters.datagrams_out += 1;
            sh.counters.datagram_bytes_out += bytes.len() as u64;
        }
        self.outputs.push_back(Output::Datagram { to, bytes });
    }

    fn on_notification(&mut self, n: OwnedNotification<NodeId>) {
        // Members are reaped by the steady clock: after the wall clock
        // stepped back, the engine's stands still for as long as the step.
        let now = self.steady_ms();
        // foca can report an earlier identity of this very node (stale gossip
        // about it arriving after a rejoin); the member table is for others.
        if let OwnedNotification::MemberUp(id)
        | OwnedNotification::Rename(_, id)
        | OwnedNotification::MemberDown(id) = &n
        {
            if *id.name == *self.name {
                return;
            }
        }
        match n {
            OwnedNotification::MemberUp(id) | OwnedNotification::Rename(_, id) => {
                self.news.member_changed();
                self.say_failure_before_up(&id.name);
                // A restart before the node was found down is a new life
                // all the same: told as a join (serf tells a crash and a
                // quick restart as a failure and a join).
                if matches!(
                    self.members.up(&id, now),
                    members::Change::Up | members::Change::Restarted
                ) {
                    // Back (perhaps restarted, with another clock): its
                    // clock is told again if it is off.
                    self.skewed.remove(&*id.name);
                    self.emit(Event::MemberJoined {
                        name: id.name.to_string(),
                        addr: id.addr,
                    });
                }
            }
            OwnedNotification::MemberDown(id) => {
                self.news.member_changed();
                let left = self.left_flag(&id.name);
                self.forget_failures(id.addr);
                if !left {
                    self.note_failed_at(id.addr);
                }
                let leave_word = if left {
                    None
                } else {
                    self.leave_word_wait(&id.name, id.generation)
                };
                if self.members.down(&id, left, now) == members::Change::Down {
                    let name = id.name.to_string();
                    if left {
                        self.emit(Event::MemberLeft { name });
                    } else if let Some(wait) = leave_word {
                        self.defer_failed(name, wait);
                    } else {
                        self.emit(Event::MemberFailed { name });
                    }
                }
            }
            OwnedNotification::Active => {
                // foca says so again after each rejoin (a new generation,
                // e.g. while another node claims this name): one event per
                // change from isolated to joined.
                let was_active = std::mem::replace(&mut self.active, true);
                self.joined_once = true;
                self.join_backoff = self.timings.join_retry;
                self.join_attempts = 0;
                if !was_active {
                    self.emit(Event::Joined);
                }
            }
            OwnedNotification::Idle => {
                self.active = false;
                if !self.left {
                    self.emit(Event::Isolated);
                    let retry = self.timings.join_retry;
                    self.schedule_join(retry);
                }
            }
            OwnedNotification::Rejoin(id) => {
                {
                    let mut sh = lock(&self.shared);
                    sh.own = id.clone();
                    sh.claims.renewed();
                }
                tracing::info!(
                    generation = id.generation,
                    "rejoining with a new generation"
                );
                self.note_renewal(now);
            }
            OwnedNotification::Defunct => {}
        }
        self.resize_swim();
    }

    /// Peers found this node down while it ran (it rejoins at once):
    /// counted, and warned about when it repeats (see [`renewals`]).
    fn note_renewal(&mut self, now: u64) {
        lock(&self.shared).counters.renewals += 1;
        if self.renewals.note(now) {
            warn_limited!(self, "renewals", || format!(
                "peers found this node down {} times within {} minutes while it \
                 runs: they do not hear its gossip, or it does not hear theirs (an \
                 advertised address at which nothing of this node listens: check \
                 --advertise; UDP blocked while TCP passes, as a firewall may; a host \
                 paused or overloaded; or a peer whose own link is cut one way, which \
                 declares healthy nodes down)",
                renewals::WARNED,
                renewals::WINDOW_MS / 60_000
            ));
        }
    }

    fn left_flag(&self, name: &str) -> bool {
        let sh = lock(&self.shared);
        view::View { state: &sh.state }
            .node_record(name)
            .is_some_and(|r| r.left)
    }

    /// Retransmissions and suspicion grow with log N: keep foca's in step
    /// whenever the derived values change.
    fn resize_swim(&mut self) {
        let n = self.members.count_up() + 1;
        if n == self.cluster_size_hint {
            return;
        }
        let old = foca_config(&self.timings, self.cluster_size_hint);
        let new = foca_config(&self.timings, n);
        self.cluster_size_hint = n;
        lock(&self.shared).verdict_window_ms = new.suspect_to_down_after.as_millis() as u64;
        if old.max_transmissions != new.max_transmissions
            || old.suspect_to_down_after != new.suspect_to_down_after
        {
            if let Err(e) = self.swim.set_config(new) {
                tracing::debug!(error = %e, "foca refused config change");
            }
        }
    }

    /// Forgets a node down for longer than `reap_after`, with its records:
    /// its own, and its memberships by hand (else they pile up with every
    /// name that comes and goes). If the node comes back, it publishes a
    /// newer record, and is joined again by hand.
    fn reap_member(&mut self, name: String) {
        self.forget_clock(&name);
        let gone: Vec<Key> = {
            let sh = lock(&self.shared);
            let view = view::View { state: &sh.state };
            let memberships = view.tribe_names().into_iter().map(|tribe| Key::Member {
                tribe,
                node: name.clone(),
            });
            std::iter::once(Key::Node(name.clone()))
                .chain(memberships)
                .filter(|k| sh.state.get(k).is_some())
                .collect()
        };
        for key in gone {
            self.write(key, None);
        }
        self.emit(Event::MemberReaped { name });
    }

    /// Nodes whose record, or a membership by hand, has stood for
    /// `reap_after`, while some member was up, without the member table
    /// listing them: down since before this
    /// process started (no member that is up lists a node it never heard
    /// from), so that no row of the table would ever reap them.
    fn unlisted_to_reap(&mut self, steady: u64, reap_after: u64) -> Vec<String> {
        // Only while some member is up: a node alone since its start (its
        // records restored from the data dir, the network down) lists no
        // one, and would delete every record it holds, to the whole
        // tribe's loss once it joins again.
        // Nor while kept out of its name: it feeds no member news to its
        // table then, so the nodes that join meanwhile are unlisted here
        // though alive.
        if self.members.count_up() == 0 || lock(&self.shared).keeping_out() {
            self.unlisted_since.clear();
            return Vec::new();
        }
        let every = UNLISTED_SCAN_EVERY_MS.min(reap_after / 4);
        if self
            .unlisted_scanned_ms
            .is_some_and(|at| steady.saturating_sub(at) < every)
        {
            return Vec::new();
        }
        self.unlisted_scanned_ms = Some(steady);
        let unlisted: Vec<String> = {
            let sh = lock(&self.shared);
            let view = view::View { state: &sh.state };
            // Also names only a membership by hand holds: the data dir
            // keeps no node records, so after every node stopped and
            // started again (an upgrade), a node that died before is left
            // with its memberships alone.
            let by_hand: BTreeSet<String> = view
                .tribe_names()
                .iter()
                .flat_map(|tribe| view.explicit_members(tribe))
                .collect();
            let mut names: BTreeSet<String> =
                view.node_records().map(|(name, _)| name.clone()).collect();
            names.extend(by_hand);
            names
                .into_iter()
                .filter(|name| *name != self.name && self.members.get(name).is_none())
                .collect()
        };
        // Sorted (a BTreeMap's keys): the ones listed since, or whose
        // record went, are dropped.
        self.unlisted_since
            .retain(|name, _| unlisted.binary_search(name).is_ok());
        let mut expired = Vec::new();
        for name in unlisted {
            let since = *self.unlisted_since.entry(name.clone()).or_insert(steady);
            if since.saturating_add(reap_after) <= steady {
                self.unlisted_since.remove(&name);
                expired.push(name);
            }
        }
        expired
    }

    fn housekeeping(&mut self) {
        let now = self.now_ms();
        let steady = self.steady_ms();
        let reap_after = self.timings.reap_after.as_millis() as u64;
        for name in self.members.reap(steady, reap_after) {
            self.reap_member(name);
        }
        for name in self.unlisted_to_reap(steady, reap_after) {
            self.reap_member(name);
        }
        let grace = self.timings.tombstone_grace.as_millis() as u64;
        {
            let mut sh = lock(&self.shared);
            let n = sh.state.collect_tombstones(now.saturating_sub(grace));
            sh.counters.tombstones_collected += n as u64;
            // Right after a collection (a tribe's deletion may be among
            // it), and now and then for records a peer sent back since.
            if n > 0 || now.saturating_sub(self.orphans_swept_ms) >= ORPHAN_SWEEP_EVERY_MS {
                self.orphans_swept_ms = now;
                let dropped = sh.state.drop_orphans(now.saturating_sub(grace));
                sh.counters.stale_records_dropped += dropped as u64;
            }
        }
        self.expire_exchanges(now);
        let holder = {
            let mut sh = lock(&self.shared);
            sh.claims.take_holder_check(now)
        };
        if let Some(addr) = holder {
            // The holder itself (a refusal: it is gone), and a peer, whose
            // member list says when the others found it down (a frozen or
            // cut-off holder refuses nothing), sooner than a push-pull
            // round (30 s on a LAN).
            self.start_sync(addr, false);
            self.periodic_sync();
        }
        self.push_own_record(now);
        // News too large for gossip goes to a few peers at once (rumour
        // mongering over streams); with no peer yet, it waits for one.
        if self.sync_soon && self.members.count_up() > 0 {
            self.sync_soon = false;
            let fanout = if std::mem::take(&mut self.sync_wide) {
                KEYRING_FANOUT
            } else {
                self.timings.gossip_fanout
            };
            for _ in 0..fanout.min(self.members.count_up()) {
                self.periodic_sync();
            }
        }
    }

    /// Members of the membership protocol worth sending in an exchange.
    fn swim_members(&self) -> Vec<Member<NodeId>> {
        // Kept out of its name, this node's view is stale (see
        // `send_swim_packet`): it lists only the members it last knew
        // alive, not itself (through them a holder that knows only this
        // node joins the others). Its suspicions are not news to tell.
        if lock(&self.shared).keeping_out() {
            return self
                .swim
                .iter_membership_state()
                .filter(|m| m.state() == foca::State::Alive)
                .cloned()
                .collect();
        }
        let mut out: Vec<Member<NodeId>> = self.swim.iter_membership_state().cloned().collect();
        if !self.left {
            out.push(Member::alive(self.swim.identity().clone()));
        }
        out
    }

    fn next_conn(&mut self) -> ConnId {
        self.next_conn += 1;
        ConnId(self.next_conn << 1)
    }

    /// An id for a stream the peer opened; odd, so never equal to our own.
    pub fn accept_stream(&mut self) -> ConnId {
        self.next_conn += 1;
        ConnId((self.next_conn << 1) | 1)
    }

    /// Counts an accepted connection from `from` closed at once: `limit`
    /// of `what` were under way already.
    pub fn stream_over_cap(&mut self, from: SocketAddr, limit: usize, what: &'static str) {
        lock(&self.shared).counters.streams_over_cap += 1;
        warn_limited!(self, "stream_cap", || {
            format!("connection from {from} closed at once: {limit} {what} already")
        });
    }

    /// Counts a connection the listener failed to accept.
    pub fn accept_failed(&mut self) {
        lock(&self.shared).counters.accept_errors += 1;
        // The connections that wait in the listen backlog meanwhile (out of
        // descriptors, for as long as that lasts) bring clocks as old as
        // their wait when they are taken: none is sampled until a while
        // after the last refusal.
        if let Some(now) = self.elapsed_ms {
            self.clock_samples_from_ms = now.saturating_add(STALE_FRAMES_READ_MS);
        }
    }

    /// Counts a write of the data dir that failed.
    pub fn data_dir_write_failed(&mut self) {
        lock(&self.shared).counters.data_dir_errors += 1;
    }

    /// Counts a lookup of a seed name that failed.
    pub fn seed_lookup_failed(&mut self) {
        lock(&self.shared).counters.seed_lookups_failed += 1;
    }
}
