//! The fast dissemination path: each local write becomes a small delta that
//! foca piggybacks on SWIM packets as a custom broadcast.

use std::sync::{Arc, Mutex, MutexGuard};

use foca::{BroadcastHandler, Invalidates};

use crate::counters::Counters;
use crate::hlc::{Clock, Hlc};
use crate::records::{self, Entry, Key};
use crate::state::State;
use crate::wire;

use super::identity::NodeId;

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
    /// Versions further ahead of our clock than this are refused.
    pub max_drift_ms: u64,
    /// Tombstones older than this are not taken back in.
    pub tombstone_grace_ms: u64,
    /// Keyring records are taken only while every link is sealed
    /// (`require` mode): otherwise an unauthenticated peer could plant or
    /// remove keys.
    pub accept_keyring_records: bool,
}

impl Shared {
    /// Validates and merges a record from a peer; true when it was news.
    pub fn accept_remote(&mut self, key: Key, entry: Entry) -> bool {
        if records::validate(&key, &entry).is_err() {
            self.counters.invalid_records += 1;
            return false;
        }
        if matches!(key, Key::RingKey(_) | Key::RingPrimary) && !self.accept_keyring_records {
            self.counters.keyring_records_refused += 1;
            return false;
        }
        if entry.version.millis > self.now_ms.saturating_add(self.max_drift_ms) {
            self.counters.clock_drift_rejections += 1;
            return false;
        }
        if entry.value.is_none()
            && entry.version.millis.saturating_add(self.tombstone_grace_ms) < self.now_ms
        {
            // An expired deletion: we collected it already, keep it collected.
            return false;
        }
        self.clock.observe(&entry.version);
        let news = self.state.merge(key, entry);
        if news {
            self.counters.records_merged += 1;
        }
        news
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
#[derive(Debug, Clone)]
pub struct DeltaKey {
    key: Key,
    version: Hlc,
}

impl Invalidates for DeltaKey {
    fn invalidates(&self, other: &Self) -> bool {
        self.key == other.key && self.version >= other.version
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
            Err(e) => {
                lock(&self.shared).counters.frame_decode_errors += 1;
                return Err(DeltaError(e.to_string()));
            }
        };
        let delta_key = DeltaKey {
            key: key.clone(),
            version: entry.version.clone(),
        };
        if sender.is_none() {
            // Our own write, already in the store: always spread it.
            return Ok(Some(delta_key));
        }
        let news = lock(&self.shared).accept_remote(key, entry);
        Ok(news.then_some(delta_key))
    }
}
