//! The replicated store: last-writer-wins registers with tombstones, merged in
//! any order to the same result, summarised by a digest and by bucket hashes
//! for anti-entropy.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::records::{Entry, Key, Kind, Value};

/// Buckets the key space is split into for anti-entropy digests.
pub const BUCKETS: usize = 64;

#[derive(Debug)]
struct Stored {
    entry: Entry,
    /// Hash of `(key, entry)`; equal on every node that holds the same write.
    hash: [u8; 32],
}

/// One write as a store holds it (key, entry and hash, all shared), so
/// that stores in one process can hold the same write without copying it
/// (the simulator's formed clusters: N stores of N records each).
#[derive(Debug, Clone)]
pub(crate) struct SharedWrite {
    key: Arc<Key>,
    stored: Arc<Stored>,
}

impl SharedWrite {
    fn new(key: Key, entry: Entry, hash: [u8; 32]) -> Self {
        SharedWrite {
            key: Arc::new(key),
            stored: Arc::new(Stored { entry, hash }),
        }
    }

    fn of(key: Key, entry: Entry) -> Self {
        let hash = entry_hash(&key, &entry);
        Self::new(key, entry, hash)
    }

    #[cfg(feature = "internals")] // the simulator's and the tests'
    pub(crate) fn key(&self) -> &Key {
        &self.key
    }

    #[cfg(feature = "internals")] // the simulator's and the tests'
    pub(crate) fn entry(&self) -> &Entry {
        &self.stored.entry
    }
}

/// All replicated records of this node's view of the cluster.
#[derive(Debug, Default, Clone)]
pub struct State {
    /// Keys and writes behind `Arc`s: a shared write costs a store two
    /// pointers.
    entries: BTreeMap<Arc<Key>, Arc<Stored>>,
    /// Keys changed since the last [`State::take_changes`].
    changed: BTreeSet<Arc<Key>>,
    /// Grows on every change, so that savers can skip an unchanged store.
    revision: u64,
    /// Records held of each kind (tombstones included), by [`Kind::ALL`] index.
    counts: [usize; Kind::ALL.len()],
    /// Tombstones held: collecting them scans the store, so only when
    /// there are some.
    tombstones: usize,
    /// [`State::bucket_hashes`], kept in step with every change: every
    /// exchange reads them, and computing them hashed every key.
    buckets: Buckets,
}

/// XORs of the hashes of every write: per bucket, of their first 8 bytes;
/// over all writes, of the whole hash (for [`State::digest`]).
#[derive(Debug, Clone)]
struct Buckets {
    per_bucket: [u64; BUCKETS],
    all: [u8; 32],
}

impl Default for Buckets {
    fn default() -> Self {
        Buckets {
            per_bucket: [0; BUCKETS],
            all: [0; 32],
        }
    }
}

impl Buckets {
    /// Adds or removes (XOR is its own inverse) one write.
    fn toggle(&mut self, bucket: usize, hash: &[u8; 32]) {
        let mut word = [0u8; 8];
        word.copy_from_slice(&hash[..8]);
        self.per_bucket[bucket] ^= u64::from_le_bytes(word);
        for (all, byte) in self.all.iter_mut().zip(hash) {
            *all ^= byte;
        }
    }
}

fn kind_index(kind: Kind) -> usize {
    Kind::ALL.iter().position(|k| *k == kind).unwrap_or(0)
}

/// Whether `a` wins over `b` under last-writer-wins. Equal versions from a
/// well-behaved cluster carry equal values; for hostile input the encoded
/// bytes decide, so that merge stays commutative.
fn wins(a: &Entry, a_hash: &[u8; 32], b: &Stored) -> bool {
    match a.order().cmp(&b.entry.order()) {
        std::cmp::Ordering::Greater => true,
        std::cmp::Ordering::Less => false,
        std::cmp::Ordering::Equal => a_hash > &b.hash,
    }
}

/// What a store keeps when a write meets the one it holds under its key.
enum Settled {
    /// The held write stands.
    Kept,
    /// The incoming write replaces it.
    Taken,
    /// The winner of a tribe's key, marked with what the loser knew.
    Marked(Box<Entry>),
}

fn settle(key: &Key, entry: &Entry, hash: &[u8; 32], current: &Stored) -> Settled {
    if !matches!(key, Key::Tribe(_)) || *hash == current.hash {
        return if wins(entry, hash, current) {
            Settled::Taken
        } else {
            Settled::Kept
        };
    }
    // Two marks of one write (met through stores that had marked it
    // apart): the latest mark; it knows no more than that of itself.
    let (incoming_wins, twins) = match entry.version.cmp(&current.entry.version) {
        std::cmp::Ordering::Equal => {
            let (a, b) = (unmarked(key, entry), unmarked(key, &current.entry));
            (a > b, a == b)
        }
        later => (later.is_gt(), false),
    };
    let (winner, loser) = if incoming_wins {
        (entry, &current.entry)
    } else {
        (&current.entry, entry)
    };
    let met = if twins {
        loser.era.clone()
    } else {
        latest_era(loser)
    };
    let mut settled = winner.clone();
    settled.era = winner.era.clone().max(met);
    if settled == current.entry {
        Settled::Kept
    } else if settled == *entry {
        Settled::Taken
    } else {
        Settled::Marked(Box::new(settled))
    }
}

/// The latest incarnation a write of a tribe's key knows of: a creation's
/// own era ([`crate::records::TribeRecord::era`]), a deletion's version
/// (what is created after it is a new incarnation), and the mark it carries
/// (`Entry::era`: the latest of the writes it beat).
///
/// The key is decided by version, as any; the winner keeps the latest era
/// of every write it beat as its mark. A tribe's records written into that
/// era are the tribe's too (as are those of its own era), and what is
/// written into the tribe from then on takes it. So when a node that never
/// heard of a deletion (restarted empty, or cut off) created the tribe
/// blind, the records of the incarnation its creation beat stay, and later
/// writes win over them: before, their later era beat every such write, a
/// join that returned `Ok` and never took effect. Records of an
/// incarnation that a deletion ended stay out (the deletion's version is
/// the later era), as do those of an incarnation older than the latest.
/// Marks only grow, so stores that met the writes in any order hold the
/// same.
fn latest_era(entry: &Entry) -> Option<crate::hlc::Hlc> {
    let own = match &entry.value {
        Some(Value::Tribe(t)) => t.era.clone(),
        _ => Some(entry.version.clone()),
    };
    entry.era.clone().max(own)
}

/// Equal versions of a tribe's key (hostile input) are ordered by what was
/// written, not by the marks stores gave it since.
fn unmarked(key: &Key, entry: &Entry) -> [u8; 32] {
    let mut bare = entry.clone();
    bare.era = None;
    entry_hash(key, &bare)
}

fn entry_hash(key: &Key, entry: &Entry) -> [u8; 32] {
    let mut h = Sha256::new();
    // Encoding these plain types into a Vec cannot fail.
    h.update(postcard::to_allocvec(key).unwrap_or_default());
    h.update(postcard::to_allocvec(entry).unwrap_or_default());
    h.finalize().into()
}

/// Which anti-entropy bucket a key falls in; stable across nodes and builds.
pub fn bucket_of(key: &Key) -> usize {
    let digest = Sha256::digest(postcard::to_allocvec(key).unwrap_or_default());
    usize::from(digest[0]) % BUCKETS
}

impl State {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    #[cfg(feature = "internals")] // the simulator's and the tests'
    /// Number of records, tombstones included.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the store holds nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entry (value or tombstone) under `key`.
    pub fn entry(&self, key: &Key) -> Option<&Entry> {
        self.entries.get(key).map(|s| &s.entry)
    }

    /// The live value under `key`.
    pub fn get(&self, key: &Key) -> Option<&Value> {
        self.entry(key).and_then(|e| e.value.as_ref())
    }

    /// Merges one write. Returns true when it was news (it replaced what we had).
    pub fn merge(&mut self, key: Key, entry: Entry) -> bool {
        let hash = entry_hash(&key, &entry);
        let write = match self.entries.get(&key) {
            Some(current) => match settle(&key, &entry, &hash, current) {
                Settled::Kept => return false,
                Settled::Taken => SharedWrite::new(key, entry, hash),
                Settled::Marked(marked) => SharedWrite::of(key, *marked),
            },
            None => SharedWrite::new(key, entry, hash),
        };
        self.insert(write);
        true
    }

    #[cfg(feature = "internals")] // the simulator's and the tests'
    /// [`State::merge`] of a write another store holds.
    pub(crate) fn merge_shared(&mut self, write: SharedWrite) -> bool {
        let write = match self.entries.get(&*write.key) {
            Some(current) => {
                match settle(&write.key, &write.stored.entry, &write.stored.hash, current) {
                    Settled::Kept => return false,
                    Settled::Taken => write,
                    Settled::Marked(marked) => SharedWrite::of((*write.key).clone(), *marked),
                }
            }
            None => write,
        };
        self.insert(write);
        true
    }

    fn insert(&mut self, write: SharedWrite) {
        self.changed.insert(write.key.clone());
        self.revision += 1;
        let kind = write.key.kind();
        self.tombstones += usize::from(write.stored.entry.value.is_none());
        // One hash of the key for both the new write and the one it replaces.
        let bucket = bucket_of(&write.key);
        self.buckets.toggle(bucket, &write.stored.hash);
        match self.entries.insert(write.key, write.stored) {
            None => self.counts[kind_index(kind)] += 1,
            Some(old) => {
                self.tombstones -= usize::from(old.entry.value.is_none());
                self.buckets.toggle(bucket, &old.hash);
            }
        }
    }

    #[cfg(feature = "internals")] // the simulator's and the tests'
    /// The write under `key`, to hand to another store.
    pub(crate) fn shared(&self, key: &Key) -> Option<SharedWrite> {
        let (key, stored) = self.entries.get_key_value(key)?;
        Some(SharedWrite {
            key: key.clone(),
            stored: stored.clone(),
        })
    }

    /// Records held of `kind`, tombstones included.
    pub fn count(&self, kind: Kind) -> usize {
        self.counts[kind_index(kind)]
    }

    /// Grows on every change of the store.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// Keys changed since the last call, in key order.
    pub fn take_changes(&mut self) -> BTreeSet<Arc<Key>> {
        std::mem::take(&mut self.changed)
    }

    /// Iterates over every entry, tombstones included, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&Key, &Entry)> {
        self.entries.iter().map(|(k, s)| (&**k, &s.entry))
    }

    /// Iterates over live values in key order.
    #[cfg(any(test, feature = "internals"))]
    pub fn live(&self) -> impl Iterator<Item = (&Key, &Value)> {
        self.entries
            .iter()
            .filter_map(|(k, s)| s.entry.value.as_ref().map(|v| (&**k, v)))
    }

    /// Every entry from `from` on, tombstones included, in key order.
    pub fn entries_from<'a>(&'a self, from: &Key) -> impl Iterator<Item = (&'a Key, &'a Entry)> + 'a {
        self.entries
            .range::<Key, _>((Bound::Included(from), Bound::Unbounded))
            .map(|(k, s)| (&**k, &s.entry))
    }

    /// Live values from `from` on, in key order.
    pub fn live_from<'a>(&'a self, from: &Key) -> impl Iterator<Item = (&'a Key, &'a Value)> + 'a {
        self.entries
            .range::<Key, _>((Bound::Included(from), Bound::Unbounded))
            .filter_map(|(k, s)| s.entry.value.as_ref().map(|v| (&**k, v)))
    }

    /// Digest of the whole store: equal on two nodes iff they hold the same
    /// writes. SHA-256 of the number of writes and the XOR of their hashes
    /// (each a SHA-256 of key and write), kept up to date on every change:
    /// reading it costs one hash, not one per record.
    pub fn digest(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update((self.entries.len() as u64).to_le_bytes());
        h.update(self.buckets.all);
        h.finalize().into()
    }

    /// Digest as lower-case hex.
    pub fn digest_hex(&self) -> String {
        hex::encode(self.digest())
    }

    /// One 64-bit summary per bucket (XOR of entry hashes, so order-free).
    pub fn bucket_hashes(&self) -> Vec<u64> {
        self.buckets.per_bucket.to_vec()
    }

    /// Every entry whose key falls in one of `buckets`.
    pub fn entries_in_buckets(&self, buckets: &BTreeSet<usize>) -> Vec<(Key, Entry)> {
        self.entries
            .iter()
            .filter(|(k, _)| buckets.contains(&bucket_of(k)))
            .map(|(k, s)| (Key::clone(k), s.entry.clone()))
            .collect()
    }

    /// Drops the records of tribes that have no record at all (their
    /// deletion collected), written before `before_ms`; returns how many.
    /// Such records belong to no tribe: written into one while it was being
    /// deleted, they would otherwise come back when it is created again
    /// after its deletion has been forgotten.
    pub fn drop_orphans(&mut self, before_ms: u64) -> usize {
        let tribes: BTreeSet<String> = self
            .entries
            .range::<Key, _>((Bound::Included(&Key::Tribe(String::new())), Bound::Unbounded))
            .map_while(|(k, _)| match &**k {
                Key::Tribe(t) => Some(t.clone()),
                _ => None,
            })
            .collect();
        let before = self.entries.len();
        let (counts, buckets, tombstones) = (&mut self.counts, &mut self.buckets, &mut self.tombstones);
        self.entries.retain(|k, s| {
            let orphan = !matches!(**k, Key::Tribe(_))
                && k.tribe().is_some_and(|t| !tribes.contains(t))
                && s.entry.version.millis < before_ms;
            if orphan {
                counts[kind_index(k.kind())] -= 1;
                buckets.toggle(bucket_of(k), &s.hash);
                *tombstones -= usize::from(s.entry.value.is_none());
            }
            !orphan
        });
        let n = before - self.entries.len();
        if n > 0 {
            self.revision += 1;
        }
        n
    }

    /// Takes out the live records `which` picks, as if never held (no
    /// tombstone): records a node can no longer vouch for, to be confirmed
    /// by a peer first (see `engine::durable`).
    pub fn take_live(&mut self, mut which: impl FnMut(&Key, &Entry) -> bool) -> Vec<(Key, Entry)> {
        let picked: Vec<Arc<Key>> = self
            .entries
            .iter()
            .filter(|(k, s)| s.entry.value.is_some() && which(k, &s.entry))
            .map(|(k, _)| k.clone())
            .collect();
        let mut taken = Vec::with_capacity(picked.len());
        for key in picked {
            if let Some(stored) = self.entries.remove(&key) {
                self.counts[kind_index(key.kind())] -= 1;
                self.buckets.toggle(bucket_of(&key), &stored.hash);
                self.changed.insert(key.clone());
                taken.push(((*key).clone(), stored.entry.clone()));
            }
        }
        if !taken.is_empty() {
            self.revision += 1;
        }
        taken
    }

    /// Drops tombstones written before `before_ms`; returns how many.
    pub fn collect_tombstones(&mut self, before_ms: u64) -> usize {
        if self.tombstones == 0 {
            return 0;
        }
        let before = self.entries.len();
        let counts = &mut self.counts;
        let buckets = &mut self.buckets;
        self.entries.retain(|k, s| {
            let keep = s.entry.value.is_some() || s.entry.version.millis >= before_ms;
            if !keep {
                counts[kind_index(k.kind())] -= 1;
                buckets.toggle(bucket_of(k), &s.hash);
            }
            keep
        });
        let n = before - self.entries.len();
        self.tombstones -= n;
        if n > 0 {
            self.revision += 1;
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hlc::Hlc;
    use crate::records::{PolicyRecord, TribeRecord};
    use proptest::prelude::*;

    fn version(millis: u64, counter: u32, node: &str) -> Hlc {
        Hlc {
            millis,
            counter,
            node: node.to_string(),
        }
    }

    /// Keys of every kind, from small pools so that writes collide.
    fn arb_key() -> impl Strategy<Value = Key> {
        prop_oneof![
            (0u8..3).prop_map(|i| Key::Node(format!("n{i}"))),
            (0u8..4).prop_map(|i| Key::Tribe(format!("t{i}"))),
            (0u8..3, 0u8..3).prop_map(|(t, n)| Key::Member {
                tribe: format!("t{t}"),
                node: format!("n{n}")
            }),
            (0u8..3).prop_map(|i| Key::Policy(format!("p{i}"))),
            (0u8..3, 0u8..2).prop_map(|(t, v)| Key::Plugin {
                tribe: format!("t{t}"),
                name: "psutil".into(),
                version: format!("{v}"),
            }),
            (0u8..3, 0u8..2).prop_map(|(t, i)| Key::Task {
                tribe: format!("t{t}"),
                id: format!("k{i}"),
            }),
            (0u8..2).prop_map(|i| Key::RingKey(ring_key(i).id())),
            Just(Key::RingPrimary),
        ]
    }

    fn ring_key(i: u8) -> crate::crypto::SecretKey {
        crate::crypto::SecretKey::from_bytes([i + 1; crate::crypto::KEY_LEN])
    }

    /// A value of the key's kind; `flavour` picks among a few of them.
    fn value_for(key: &Key, flavour: u8) -> Value {
        use crate::records::{
            ArtifactRef, NodeRecord, PluginKind, PluginRecord, RingKeyRecord, TaskRecord, TaskState,
        };
        match key {
            Key::Node(_) => Value::Node(NodeRecord {
                addr: "127.0.0.1:1".parse().unwrap(),
                generation: u64::from(flavour),
                facts: [("role".to_string(), format!("r{flavour}"))].into(),
                policy_tribes: Default::default(),
                endpoints: Vec::new(),
                left: flavour == 2,
                keys: Vec::new(),
                primary_key: None,
                artifacts: vec![[flavour; 32]],
            }),
            // Re-creation of a tribe after a deletion carries `after`,
            // and the deletion's version as its era.
            Key::Tribe(_) => Value::Tribe(TribeRecord {
                after: (flavour > 0).then(|| version(u64::from(flavour), 0, "n0")),
                era: (flavour > 0).then(|| version(u64::from(flavour), 0, "n0")),
            }),
            Key::Member { .. } => Value::Member,
            Key::Policy(_) => Value::Policy(PolicyRecord {
                tribe: format!("t{flavour}"),
                when: "true".into(),
            }),
            Key::Plugin { .. } => Value::Plugin(PluginRecord {
                kind: PluginKind::Collector,
                artifact: (flavour > 0).then(|| ArtifactRef {
                    sha256: [flavour; 32],
                    size: u64::from(flavour),
                }),
            }),
            Key::Task { .. } => Value::Task(TaskRecord {
                manifest: format!("{{\"v\":{flavour}}}"),
                state: if flavour == 1 {
                    TaskState::Stopped
                } else {
                    TaskState::Running
                },
            }),
            Key::RingKey(id) => Value::RingKey(RingKeyRecord(
                (0..2).map(ring_key).find(|k| k.id() == *id).unwrap(),
            )),
            Key::RingPrimary => Value::RingPrimary(ring_key(flavour % 2).id()),
        }
    }

    fn arb_write() -> impl Strategy<Value = (Key, Entry)> {
        (arb_key(), 0u64..5, 0u32..2, 0u8..3, any::<bool>(), 0u8..3).prop_map(
            |(key, millis, counter, node, alive, flavour)| {
                let v = version(millis, counter, &format!("n{node}"));
                let value = alive.then(|| value_for(&key, flavour));
                // A tribe's write may carry the mark of what it beat.
                let era = (matches!(key, Key::Tribe(_)) && flavour > 0 && counter == 1)
                    .then(|| version(u64::from(flavour), 0, "n1"));
                (key, Entry { version: v, value, era })
            },
        )
    }

    #[test]
    fn a_shared_write_is_held_not_copied() {
        let key = Key::Tribe("t".into());
        let entry = Entry {
            version: version(1, 0, "n0"),
            value: Some(value_for(&key, 0)),
            era: None,
        };
        let mut a = State::new();
        assert!(a.merge(key.clone(), entry.clone()));
        let write = a.shared(&key).unwrap();
        let mut b = State::new();
        assert!(b.merge_shared(write.clone()));
        assert!(!b.merge_shared(write), "not news twice");
        let (ka, sa) = a.entries.get_key_value(&key).unwrap();
        let (kb, sb) = b.entries.get_key_value(&key).unwrap();
        assert!(Arc::ptr_eq(ka, kb) && Arc::ptr_eq(sa, sb));
        assert_eq!(a.digest(), b.digest());
        assert_eq!(a.bucket_hashes(), b.bucket_hashes());
        assert_eq!(b.take_changes().len(), 1);
    }

    /// The bucket hashes computed from scratch, as they once were.
    fn recomputed_buckets(s: &State) -> Vec<u64> {
        let mut buckets = vec![0u64; BUCKETS];
        for (key, stored) in &s.entries {
            let mut word = [0u8; 8];
            word.copy_from_slice(&stored.hash[..8]);
            buckets[bucket_of(key)] ^= u64::from_le_bytes(word);
        }
        buckets
    }

    /// [`State::digest`] from scratch: every write hashed again.
    fn recomputed_digest(s: &State) -> [u8; 32] {
        let mut all = [0u8; 32];
        for (key, entry) in s.iter() {
            for (a, b) in all.iter_mut().zip(entry_hash(key, entry)) {
                *a ^= b;
            }
        }
        let mut h = Sha256::new();
        h.update((s.len() as u64).to_le_bytes());
        h.update(all);
        h.finalize().into()
    }

    fn apply(writes: &[(Key, Entry)]) -> State {
        let mut s = State::new();
        for (k, e) in writes {
            s.merge(k.clone(), e.clone());
        }
        s
    }

    proptest! {
        #[test]
        fn any_delivery_order_converges(writes in prop::collection::vec(arb_write(), 0..40), seed in any::<u64>()) {
            let mut shuffled = writes.clone();
            // Deterministic shuffle from the seed.
            let mut x = seed | 1;
            for i in (1..shuffled.len()).rev() {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                shuffled.swap(i, (x as usize) % (i + 1));
            }
            prop_assert_eq!(apply(&writes).digest(), apply(&shuffled).digest());
        }

        #[test]
        fn merge_is_commutative(a in arb_write(), b in arb_write()) {
            prop_assert_eq!(apply(&[a.clone(), b.clone()]).digest(), apply(&[b, a]).digest());
        }

        #[test]
        fn merge_is_associative(xs in prop::collection::vec(arb_write(), 0..10),
                                ys in prop::collection::vec(arb_write(), 0..10),
                                zs in prop::collection::vec(arb_write(), 0..10)) {
            // (X ∪ Y) ∪ Z == X ∪ (Y ∪ Z), merging whole states.
            let merge_states = |a: &State, b: &State| {
                let mut out = a.clone();
                for (k, e) in b.iter() { out.merge(k.clone(), e.clone()); }
                out
            };
            let (x, y, z) = (apply(&xs), apply(&ys), apply(&zs));
            prop_assert_eq!(
                merge_states(&merge_states(&x, &y), &z).digest(),
                merge_states(&x, &merge_states(&y, &z)).digest()
            );
        }

        #[test]
        fn merge_is_idempotent(writes in prop::collection::vec(arb_write(), 0..20)) {
            let once = apply(&writes);
            let mut twice = once.clone();
            for (k, e) in once.iter() {
                prop_assert!(!twice.merge(k.clone(), e.clone()));
            }
            prop_assert_eq!(once.digest(), twice.digest());
        }

        #[test]
        fn counts_and_live_views_follow_the_merged_writes(writes in prop::collection::vec(arb_write(), 0..40)) {
            let s = apply(&writes);
            for kind in Kind::ALL {
                prop_assert_eq!(s.count(kind), s.iter().filter(|(k, _)| k.kind() == kind).count());
            }
            prop_assert_eq!(s.tombstones, s.iter().filter(|(_, e)| e.value.is_none()).count());
            prop_assert_eq!(s.bucket_hashes(), recomputed_buckets(&s));
            prop_assert_eq!(s.digest(), recomputed_digest(&s));
            let mut collected = s.clone();
            collected.collect_tombstones(u64::MAX);
            prop_assert_eq!(collected.tombstones, 0);
            prop_assert_eq!(collected.bucket_hashes(), recomputed_buckets(&collected));
            prop_assert_eq!(collected.digest(), recomputed_digest(&collected));
            if collected.len() != s.len() {
                prop_assert_ne!(collected.digest(), s.digest());
            }
            for kind in Kind::ALL {
                prop_assert_eq!(collected.count(kind), s.live().filter(|(k, _)| k.kind() == kind).count());
            }
        }

        #[test]
        fn equal_buckets_mean_equal_digests(a in prop::collection::vec(arb_write(), 0..20), b in prop::collection::vec(arb_write(), 0..20)) {
            let (sa, sb) = (apply(&a), apply(&b));
            if sa.bucket_hashes() == sb.bucket_hashes() {
                prop_assert_eq!(sa.digest(), sb.digest());
            }
        }
    }

    #[test]
    fn a_creation_that_wins_is_marked_with_the_latest_era_it_beat() {
        let key = Key::Tribe("core".into());
        let d20 = version(20, 0, "d");
        let tribe = |millis, node, era: Option<Hlc>, mark: Option<Hlc>| Entry {
            version: version(millis, 0, node),
            value: Some(Value::Tribe(TribeRecord {
                after: era.clone(),
                era,
            })),
            era: mark,
        };
        // Created again after the deletion at 20, and later created blind
        // by a node that never heard of the deletion.
        let incarnation = tribe(30, "a", Some(d20.clone()), None);
        let blind = tribe(40, "b", None, None);
        let marked = tribe(40, "b", None, Some(d20.clone()));
        for order in [[&incarnation, &blind], [&blind, &incarnation]] {
            let mut s = State::new();
            for e in order {
                assert!(s.merge(key.clone(), e.clone()));
            }
            assert_eq!(s.entry(&key), Some(&marked));
            // Met again, from a store that had not marked it: no news.
            assert!(!s.merge(key.clone(), blind.clone()));
            assert!(!s.merge(key.clone(), incarnation.clone()));
            let mut from_marked = State::new();
            assert!(from_marked.merge(key.clone(), blind.clone()));
            assert!(from_marked.merge(key.clone(), marked.clone()));
            assert_eq!(s.digest(), from_marked.digest());
        }
        // A deletion that ended the incarnation marks the creation after
        // it with its own version: the incarnation's records stay out.
        let deletion = Entry {
            version: version(35, 0, "c"),
            value: None,
            era: None,
        };
        let after_deletion = tribe(40, "b", None, Some(version(35, 0, "c")));
        for order in [
            [&incarnation, &deletion, &blind],
            [&blind, &deletion, &incarnation],
            [&deletion, &blind, &incarnation],
        ] {
            let mut s = State::new();
            for e in order {
                s.merge(key.clone(), e.clone());
            }
            assert_eq!(s.entry(&key), Some(&after_deletion));
        }
    }

    /// Two writes under one version of a tribe's key (hostile input) leave
    /// a write every peer takes: a store holds nothing they refuse.
    #[test]
    fn equal_versions_of_a_tribe_key_leave_a_valid_write() {
        let key = Key::Tribe("core".into());
        let created = Entry {
            version: version(40, 0, "b"),
            value: Some(Value::Tribe(TribeRecord { after: None, era: None })),
            era: None,
        };
        let deleted = Entry {
            value: None,
            ..created.clone()
        };
        for order in [[&created, &deleted], [&deleted, &created]] {
            let mut s = State::new();
            for e in order {
                s.merge(key.clone(), e.clone());
            }
            let held = s.entry(&key).unwrap();
            assert_eq!(crate::records::validate(&key, held), Ok(()), "{held:?}");
        }
    }

    #[test]
    fn later_write_wins_and_tombstones_are_collected() {
        let mut s = State::new();
        let key = Key::Tribe("core".into());
        let live = Entry {
            version: version(10, 0, "a"),
            value: Some(Value::Tribe(TribeRecord { after: None, era: None })),
            era: None,
        };
        let dead = Entry {
            version: version(20, 0, "b"),
            value: None,
            era: None,
        };
        assert!(s.merge(key.clone(), live.clone()));
        assert!(s.merge(key.clone(), dead.clone()));
        assert!(!s.merge(key.clone(), live));
        assert!(s.get(&key).is_none());
        assert_eq!(s.collect_tombstones(15), 0);
        assert_eq!(s.collect_tombstones(21), 1);
        assert!(s.is_empty());
    }
}
