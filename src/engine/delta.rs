//! The fast dissemination path: each local write becomes a small delta that
//! foca piggybacks on SWIM packets as a custom broadcast.

use std::sync::{Arc, Mutex, MutexGuard};

use foca::{BroadcastHandler, Invalidates};

use crate::counters::Counters;
use crate::hlc::{Clock, Hlc};
use crate::records::{self, Entry, Key};
#[cfg(feature = "internals")]
use crate::state::SharedWrite;
use crate::state::State;
use crate::wire;

use super::identity::NodeId;
use super::name_claims::{Heard, NameClaims};

/// A refused record is logged at most this often (always counted).
const INVALID_LOG_EVERY_MS: u64 = 10_000;

/// What the engine and the broadcast handler share. foca owns the handler and
/// offers no access to it, so the store lives behind a lock both can take; the
/// engine is single-threaded, so the lock is never contended.
#[derive(Debug)]
pub struct Shared {
    /// The replicated records.
    pub state: State,
    /// Version source of this node.
    pub clock: Clock,
    /// Counters.
    pub counters: Counters,
    /// Latest wall-clock reading handed to the engine.
    pub now_ms: u64,
    /// Versions and generations further ahead of the reference clock
    /// (see [`Shared::reference_ms`]) than this are refused.
    pub max_skew_ms: u64,
    /// Median offset of the peers' clocks from ours (ms; 0 until three
    /// peers were sampled). A slow node uses it to keep accepting writes.
    pub cluster_offset_ms: i64,
    /// The latest time this node's own data dir shows the tribe reached
    /// (its kept versions and generation; 0 without one): a clock stepped
    /// back, or a tribe whose clocks all ran fast and were set right, must
    /// not make it refuse its own history, nor its peers' generations of
    /// that time.
    pub kept_floor_ms: u64,
    /// Our current SWIM identity, to tell claims on our name apart.
    pub own: NodeId,
    /// What was heard of other identities under our name.
    pub claims: NameClaims,
    /// Caps per kind of record.
    pub limits: crate::config::StateLimits,
    /// Tombstones older than this are not taken back in.
    pub tombstone_grace_ms: u64,
    /// Keyring records are taken only while every link is sealed
    /// (`require` mode): otherwise an unauthenticated peer could plant or
    /// remove keys.
    pub accept_keyring_records: bool,
    /// When a refused record was last logged (engine clock, ms).
    pub invalid_logged_ms: Option<u64>,
    /// A down notice about a member heard from itself this recently (ms,
    /// the suspicion timeout) is taken as a suspicion (see the codec).
    pub verdict_window_ms: u64,
    /// Down notices the codec took as suspicions, for the engine to time.
    pub softened: Vec<(NodeId, u16)>,
    /// The address the sender of the datagram being handled advertises
    /// (set by the codec), to compare with where the datagram came from.
    pub last_sender: Option<std::net::SocketAddr>,
}

/// Records of a kind a node takes from peers past its limit: 1/8 of it,
/// plus 64. Each node checks a command against what it holds, which lags
/// behind the cluster's writes: a bulk load through several nodes at once,
/// or policies creating their tribes on each node, went 40 % past a limit
/// of 60, and nodes that each refused different records never agreed again.
pub fn peer_margin(limit: usize) -> usize {
    limit / 8 + 64
}

impl Shared {
    /// Validates and merges a record from a peer; true when it was news.
    pub fn accept_remote(&mut self, key: Key, entry: Entry) -> bool {
        if !self.admits(&key, &entry) {
            return false;
        }
        let news = self.state.merge(key, entry);
        self.merged(news)
    }

    #[cfg(feature = "internals")] // the simulator's and the tests'
    /// [`Shared::accept_remote`] of a write another engine holds.
    pub(crate) fn accept_shared(&mut self, write: SharedWrite) -> bool {
        if !self.admits(write.key(), write.entry()) {
            return false;
        }
        let news = self.state.merge_shared(write);
        self.merged(news)
    }

    fn merged(&mut self, news: bool) -> bool {
        if news {
            self.counters.records_merged += 1;
        }
        news
    }

    /// Whether a record from a peer is valid and within every bound (and
    /// if so, the clock has seen its version).
    fn admits(&mut self, key: &Key, entry: &Entry) -> bool {
        if let Err(e) = records::validate(key, entry) {
            self.counters.invalid_records += 1;
            // Counted always, logged at a limited rate.
            if self.refusal_log_due() {
                // The writer's name may be what is wrong: quoted, and cut.
                let writer: String = entry.version.node.chars().take(64).collect();
                tracing::warn!(writer = ?writer, "a record from a peer was refused ({e}); the last valid one is kept");
            }
            return false;
        }
        if matches!(key, Key::RingKey(_) | Key::RingPrimary) && !self.accept_keyring_records {
            self.counters.keyring_records_refused += 1;
            return false;
        }
        if entry.version.millis > self.horizon_ms() {
            self.counters.clock_drift_rejections += 1;
            let writer = &entry.version.node;
            // The writer's name may be what is wrong: quoted, and cut.
            self.log_ahead(
                || format!("a record written by {:?}", writer.chars().take(64).collect::<String>()),
                entry.version.millis,
            );
            return false;
        }
        if entry.value.is_none()
            && entry.version.millis.saturating_add(self.tombstone_grace_ms) < self.now_ms
        {
            // An expired deletion: we collected it already, keep it collected.
            return false;
        }
        if !self.has_room_for_peer(key) {
            self.counters.records_over_limit += 1;
            // Counted always, logged at a limited rate (with invalid
            // records): a node that takes no more records of a kind is
            // silently out of step with the tribe otherwise.
            if self.refusal_log_due() {
                let kind = key.kind();
                let limit = self.limits.of(kind);
                tracing::warn!(
                    record = ?key,
                    writer = ?entry.version.node,
                    "a record from a peer was refused: this node holds its limit of {limit} {} \
                     and the {} more it takes from peers (deletions count until collected); \
                     a peer has a larger limit, or writes through several nodes at once went \
                     past the margin: keep the limits equal on every node, and load in bulk \
                     through one node (nodes that refused different records hold different \
                     states)",
                    kind.as_str(),
                    peer_margin(limit)
                );
            }
            return false;
        }
        self.clock.observe(&entry.version);
        true
    }
}

impl Shared {
    /// Whether a refused record may be logged now: one line per
    /// [`INVALID_LOG_EVERY_MS`] at most.
    fn refusal_log_due(&mut self) -> bool {
        let due = self
            .invalid_logged_ms
            .is_none_or(|t| self.now_ms.saturating_sub(t) >= INVALID_LOG_EVERY_MS);
        if due {
            self.invalid_logged_ms = Some(self.now_ms);
        }
        due
    }

    /// Says, at a limited rate, that `what` was refused for a
    /// time `at_ms` beyond the horizon: a clock far off (the peer's ahead,
    /// or this one behind) is otherwise silent but for a counter.
    fn log_ahead(&mut self, what: impl FnOnce() -> String, at_ms: u64) {
        if self.refusal_log_due() {
            let what = what();
            let ahead_s = at_ms.saturating_sub(self.now_ms) / 1000;
            let skew_s = self.max_skew_ms / 1000;
            tracing::warn!(
                ahead_s,
                "{what} was refused: it is from {ahead_s} s ahead of this node's clock, more than the {skew_s} s of clock skew taken; fix the clocks (a node whose clock is behind, or a peer's ahead)"
            );
        }
    }

    /// Our best guess of the cluster's time: our clock, or later when most
    /// peers' clocks are ahead of ours (a slow clock must not make us deaf).
    pub fn reference_ms(&self) -> u64 {
        self.now_ms
            .saturating_add(u64::try_from(self.cluster_offset_ms).unwrap_or(0))
    }

    /// Whether a record may travel in a gossip datagram: a datagram carries
    /// news, and one written longer ago than the grace may be recorded
    /// traffic sent again, to bring back what was deleted and whose
    /// tombstone is collected. Exchanges (whose streams refuse replays)
    /// carry records that old.
    pub fn gossip_takes(&self, entry: &Entry) -> bool {
        entry.version.millis.saturating_add(self.tombstone_grace_ms) >= self.now_ms
    }

    /// Whether a record under `key` fits the limits (an update always does).
    pub fn has_room(&self, key: &Key) -> bool {
        self.state.entry(key).is_some() || self.state.count(key.kind()) < self.limits.of(key.kind())
    }

    /// [`Shared::has_room`] for a record from a peer: up to a margin past
    /// the limit ([`peer_margin`]). Writes made at the same moment through
    /// different nodes at the limit are each taken by their own node; were
    /// each node to refuse the other's, the cluster would never converge.
    fn has_room_for_peer(&self, key: &Key) -> bool {
        let limit = self.limits.of(key.kind());
        self.state.entry(key).is_some()
            || self.state.count(key.kind()) < limit.saturating_add(peer_margin(limit))
    }

    /// The latest version or generation accepted from a peer.
    pub fn horizon_ms(&self) -> u64 {
        self.reference_ms()
            .max(self.kept_floor_ms)
            .saturating_add(self.max_skew_ms)
    }

    /// Screens an identity heard from a peer (`heard` says how): false
    /// refuses it (and the packet or message carrying it). Refused are
    /// generations beyond the clock horizon (a forged `u64::MAX` would win
    /// every conflict for that name) and identities that would displace
    /// ours; the latter are kept in `claims` for the engine to report and
    /// answer (see [`super::name_claims`]).
    pub fn screen_identity(&mut self, id: &NodeId, heard: Heard) -> bool {
        // A name no node may take (control characters, too long) never
        // enters the member table, nor the tables and logs that show it.
        if id.generation > self.horizon_ms() || !crate::names::is_valid(&id.name) {
            self.counters.identities_refused += 1;
            if id.generation > self.horizon_ms() {
                let who = || {
                    if crate::names::is_valid(&id.name) {
                        format!("the identity of {:?} at {}", id.name, id.addr)
                    } else {
                        format!("a node's identity from {}", id.addr)
                    }
                };
                self.log_ahead(who, id.generation);
            }
            return false;
        }
        if id.name == self.own.name && *id != self.own && self.claims.note(id, &self.own, heard) {
            self.counters.identity_claims += 1;
            return false;
        }
        true
    }

    /// Whether this node keeps out because a live node elsewhere holds
    /// its name (see [`super::name_claims`]).
    pub fn keeping_out(&self) -> bool {
        self.claims.keeping_out(self.now_ms)
    }

    /// Notes a "you are down" notice from `from`, to be asked about (see
    /// [`super::name_claims`]).
    pub fn note_down_notice(&mut self, from: std::net::SocketAddr) {
        let now = self.now_ms;
        self.claims.note_down_notice(from, now);
    }
}

/// Locks the shared part, recovering from a poisoned lock (the data is plain
/// and every update leaves it consistent).
pub fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    shared
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A delta on the wire: one record.
pub type Delta = (Key, Entry);

/// Key foca uses to replace a delta still being spread by a newer one.
/// Boxed: foca keeps its backlog in a binary heap that it pops and pushes
/// back whole for every packet it fills, so the entry's size is moved
/// around many times per packet while a join storm fills the backlog.
/// The key's hash sits beside the box: foca compares every new delta with
/// every delta in its backlog, and most differ in the hash already.
#[derive(Debug, Clone)]
pub struct DeltaKey {
    hash: u64,
    key: Box<(Key, (Option<Hlc>, Hlc))>,
}

impl DeltaKey {
    fn new(key: Key, version: (Option<Hlc>, Hlc)) -> DeltaKey {
        use std::hash::{Hash, Hasher};
        // Fixed keys: the same hash on every run (the simulator's traces).
        let mut h = std::hash::DefaultHasher::new();
        key.hash(&mut h);
        DeltaKey {
            hash: h.finish(),
            key: Box::new((key, version)),
        }
    }
}

impl Invalidates for DeltaKey {
    fn invalidates(&self, other: &Self) -> bool {
        if self.hash != other.hash {
            return false;
        }
        let ((key, version), (other_key, other_version)) = (&*self.key, &*other.key);
        key == other_key && version >= other_version
    }
}

/// Error for deltas that do not decode.
#[derive(Debug, thiserror::Error)]
#[error("bad delta: {0}")]
pub struct DeltaError(String);

/// foca's custom broadcast handler over the shared store.
pub struct DeltaHandler {
    shared: Arc<Mutex<Shared>>,
}

impl DeltaHandler {
    /// A handler merging into `shared`.
    pub fn new(shared: Arc<Mutex<Shared>>) -> Self {
        DeltaHandler { shared }
    }
}

impl BroadcastHandler<NodeId> for DeltaHandler {
    type Key = DeltaKey;
    type Error = DeltaError;

    fn receive_item(
        &mut self,
        data: &[u8],
        sender: Option<&NodeId>,
    ) -> Result<Option<DeltaKey>, DeltaError> {
        let (key, entry): Delta = match wire::decode(data) {
            Ok(delta) => delta,
            // It came in a datagram: foca refuses the whole packet and the
            // engine counts it once, as a gossip error.
            Err(e) => return Err(DeltaError(e.to_string())),
        };
        let delta_key = DeltaKey::new(key.clone(), (entry.era.clone(), entry.version.clone()));
        if sender.is_none() {
            // Our own write, already in the store: always spread it.
            return Ok(Some(delta_key));
        }
        let mut sh = lock(&self.shared);
        if !sh.gossip_takes(&entry) {
            sh.counters.stale_gossip_refused += 1;
            return Ok(None);
        }
        let news = sh.accept_remote(key, entry);
        Ok(news.then_some(delta_key))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A store as a node `own` starts with, at a fixed time.
    pub(crate) fn shared_of(own: NodeId) -> Arc<Mutex<Shared>> {
        Arc::new(Mutex::new(Shared {
            state: State::new(),
            clock: Clock::new(&own.name),
            counters: Counters::default(),
            now_ms: 2_000_000_000_000,
            max_skew_ms: 60_000,
            cluster_offset_ms: 0,
            kept_floor_ms: 0,
            own,
            claims: Default::default(),
            limits: Default::default(),
            accept_keyring_records: false,
            invalid_logged_ms: None,
            tombstone_grace_ms: 0,
            verdict_window_ms: 0,
            softened: Vec::new(),
            last_sender: None,
        }))
    }

    #[test]
    fn a_delta_that_does_not_decode_is_refused_and_counted_by_no_stream_counter() {
        let me = NodeId::new("me", ([127, 0, 0, 1], 1).into(), 1);
        let peer = NodeId::new("peer", ([127, 0, 0, 1], 2).into(), 1);
        let shared = shared_of(me);
        let mut handler = DeltaHandler::new(shared.clone());
        assert!(handler.receive_item(&[0xff; 12], Some(&peer)).is_err());
        assert_eq!(lock(&shared).counters.frame_decode_errors, 0);
    }
}
