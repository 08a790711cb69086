//! The keyring as the engine sees it: sealing decisions for datagrams and
//! streams, cluster-wide keyring operations as replicated records, each
//! node answering with the key ids it holds in its own record, and refusals
//! counted and logged at a limited rate.

use crate::config::Encryption;
use crate::crypto::{KeyError, KeyId, Keyring, SecretKey};
use crate::error::{Error, Result};
use crate::records::{Key, RingKeyRecord, Value};
use crate::stream::Security;

use super::delta::lock;
use super::{ConnId, Engine};

/// The same refusal is logged at most this often (it is always counted).
const WARN_EVERY_MS: u64 = 10_000;

/// How often a node in `accept` mode says that its peers seal.
const SEALED_PEER_EVERY_MS: u64 = 60_000;

/// Which nodes hold one key.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyHolding {
    /// The key's public id.
    pub id: KeyId,
    /// Live nodes (this one included) that hold it, sorted by name.
    pub installed_on: Vec<String>,
    /// Live nodes that seal with it, sorted by name.
    pub primary_on: Vec<String>,
}

/// The keyring across the live members, as their records report it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyringStatus {
    /// This node's mode, `None` without a keyring.
    pub encryption: Option<Encryption>,
    /// This node's primary key.
    pub primary: Option<KeyId>,
    /// Every key some live member holds.
    pub keys: Vec<KeyHolding>,
    /// Live members counted, this node included.
    pub members: usize,
}

fn key_error(e: KeyError) -> Error {
    e.into()
}

/// How long a peer's sealing key, as last heard, stands for the tribe's.
const PEER_KEY_FRESH_MS: u64 = 30_000;

impl Engine {
    /// Whether this node seals what it sends.
    pub(super) fn seals(&self) -> Option<&Keyring> {
        self.keyring
            .as_ref()
            .filter(|_| self.encryption != Encryption::Accept)
    }

    /// Whether plaintext from peers is refused.
    pub(super) fn requires_sealed(&self) -> bool {
        self.keyring.is_some() && self.encryption == Encryption::Require
    }

    /// Keys travel only from nodes whose every link is sealed, and only over
    /// streams (whose security is checked when each exchange is sent, while a
    /// gossip item could be sent again after a switch to plaintext).
    pub(super) fn may_send(&self, key: &Key) -> bool {
        !matches!(key, Key::RingKey(_) | Key::RingPrimary) || self.requires_sealed()
    }

    /// Whether a record may ride on gossip.
    pub(super) fn may_gossip(&self, key: &Key) -> bool {
        !matches!(key, Key::RingKey(_) | Key::RingPrimary)
    }

    /// Grows whenever the keyring or the mode changes: streams opened under
    /// the old security should be closed.
    pub fn security_epoch(&self) -> u64 {
        self.security_epoch
    }

    /// What a new stream needs to know.
    pub fn stream_security(&self) -> Security {
        Security {
            keyring: self.keyring.clone(),
            encryption: self.encryption,
            label: self.label.clone(),
        }
    }

    /// This node's keyring, if encryption is configured.
    pub fn keyring(&self) -> Option<&Keyring> {
        self.keyring.as_ref()
    }

    #[cfg(feature = "internals")] // the simulator's and the tests'
    /// This node's encryption mode.
    pub fn encryption(&self) -> Encryption {
        self.encryption
    }

    /// A peer sealed a datagram to this node. In `accept` mode this node
    /// still sends plaintext, which a peer that requires encryption refuses
    /// (counting it, and warning on its side): without a word here, an
    /// operator would see only this node's membership flap. Once a minute
    /// at most: during a migration every node passes through this state.
    pub(super) fn note_sealed_peer(&mut self, from: std::net::SocketAddr) {
        if self.encryption == Encryption::Accept && self.log_due_every("sealed_peer", SEALED_PEER_EVERY_MS) {
            tracing::warn!(
                kind = "sealed_peer",
                "{from} seals its traffic while this node sends plaintext (encryption accept): \
                 a peer that requires encryption refuses this node's datagrams and streams; \
                 switch this node to send (`tribe keys encryption send`, and `encryption = \"send\"` \
                 or no `encryption` in its configuration)"
            );
        }
    }

    /// Whether a line of `kind` is due: at most one per [`WARN_EVERY_MS`]
    /// (see the engine's `warn_limited!`).
    pub(super) fn log_due(&mut self, kind: &'static str) -> bool {
        self.log_due_every(kind, WARN_EVERY_MS)
    }

    pub(super) fn log_due_every(&mut self, kind: &'static str, every_ms: u64) -> bool {
        let now = self.now_ms();
        let last = self.warned.get(kind).copied();
        let due = last.is_none_or(|t| now.saturating_sub(t) >= every_ms);
        if due {
            self.warned.insert(kind, now);
        }
        due
    }

    /// Opens a join's exchange that its peer refused for this node's key
    /// again, once, now that this node seals with another: the join's
    /// ticket moves to the new exchange. Whether it did.
    pub(super) fn join_again_sealed_anew(&mut self, conn: ConnId) -> bool {
        let Some(x) = self.conns.get_mut(&conn) else {
            return false;
        };
        let (Some(ticket), Some(addr)) = (x.ticket, x.peer) else {
            return false;
        };
        if x.retried || !x.initiator {
            return false;
        }
        x.ticket = None;
        let again = self.start_sync(addr, true);
        if let Some(y) = self.conns.get_mut(&again) {
            y.ticket = Some(ticket);
            y.retried = true;
        }
        true
    }

    /// A peer refused `rejected`, this node's primary, and proved it holds
    /// `proven`, a key this node holds too (see `stream::proven_refusal`).
    /// A refusal without proof changes nothing but the alarm: anyone who
    /// answers at a member's address can send one. With proof, this node
    /// seals with `proven` when it reaches no peer (it missed the end of a
    /// rotation: it left gracefully during it, and no peer dials a node
    /// that left), or when peers were heard sealing with that key lately
    /// (a whole tribe restarted from its data dirs, this node first, hears
    /// its peers before any refuses it); a node that reaches peers sealing
    /// with its own key keeps it (the refusing peer is behind itself). The
    /// cluster's own records set its primary again once an exchange gets
    /// through. Whether the refusal is dealt with: it switched, or sealed
    /// with another key already (a stream opened before the switch).
    pub(super) fn try_another_key(
        &mut self,
        now_ms: u64,
        rejected: KeyId,
        proven: Option<KeyId>,
    ) -> bool {
        let Some(ring) = self.keyring.as_mut() else {
            return false;
        };
        if ring.primary_id() != rejected {
            return true;
        }
        let Some(theirs) = proven.filter(|k| *k != rejected) else {
            return false;
        };
        // Heard lately: an old sighting may name a key the tribe has
        // left since.
        let fresh = |at: u64| now_ms.saturating_sub(at) <= PEER_KEY_FRESH_MS;
        let heard = self.peer_key.is_some_and(|(k, at)| k == theirs && fresh(at));
        if !heard && self.members.count_up() > 0 {
            return false;
        }
        // Peers seal with this node's own key too: the refusing peer is the
        // one behind (it missed the rotation), and switching to its key
        // would undo the rotation here.
        if self
            .own_key_heard
            .is_some_and(|(k, at)| k == rejected && fresh(at))
        {
            return false;
        }
        if ring.use_key(theirs).is_err() {
            return false;
        }
        tracing::warn!(
            refused = %rejected,
            next = %theirs,
            "a peer refused this node's key {rejected} and proved it holds key {theirs}: sealing with it (a rotation may have ended while this node was away, or this node was started with a key the tribe has not been told to use: run `tribe keys use` for it)"
        );
        self.security_epoch += 1;
        self.record.primary_key = Some(theirs);
        self.publish_record();
        true
    }

    /// Adds a key to every node's keyring (sent over sealed links only).
    pub(super) fn install_key(&mut self, key: SecretKey) -> Result<()> {
        self.check_keyring_op()?;
        let id = key.id();
        let mut probe = self.keyring.clone().ok_or(Error::NoKeyring)?;
        probe.install(key.clone()).map_err(key_error)?;
        // Refused here, as a limit, not by every peer (the key then stayed
        // on this node alone and `use` timed out as not spread).
        self.check_room(&Key::RingKey(id))?;
        self.write(Key::RingKey(id), Some(Value::RingKey(RingKeyRecord(key))));
        Ok(())
    }

    /// Makes an installed key every node's primary.
    pub(super) fn use_key(&mut self, id: KeyId) -> Result<()> {
        self.check_keyring_op()?;
        let ring = self.keyring.as_ref().ok_or(Error::NoKeyring)?;
        if ring.get(id).is_none() {
            return Err(Error::UnknownKey(id.to_string()));
        }
        self.write(Key::RingPrimary, Some(Value::RingPrimary(id)));
        Ok(())
    }

    /// Removes a key from every node's keyring; the primary cannot be removed.
    pub(super) fn remove_key(&mut self, id: KeyId) -> Result<()> {
        self.check_keyring_op()?;
        let ring = self.keyring.as_ref().ok_or(Error::NoKeyring)?;
        let cluster_primary = match lock(&self.shared).state.get(&Key::RingPrimary) {
            Some(Value::RingPrimary(p)) => Some(*p),
            _ => None,
        };
        if ring.primary_id() == id || cluster_primary == Some(id) {
            return Err(Error::PrimaryKey(id.to_string()));
        }
        // A key only some other member still holds (one put back by an old
        // key file) is removed through any member, as the docs promise.
        let held_elsewhere = || self.keyring_status().keys.iter().any(|k| k.id == id);
        if ring.get(id).is_none() && !held_elsewhere() {
            return Err(Error::UnknownKey(id.to_string()));
        }
        self.write(Key::RingKey(id), None);
        Ok(())
    }

    /// Refuses a keyring step on a node without a keyring, or one whose
    /// mode lets plaintext through (keys would travel in the clear).
    pub(crate) fn check_keyring_op(&self) -> Result<()> {
        if self.keyring.is_none() {
            return Err(Error::NoKeyring);
        }
        if !self.requires_sealed() {
            return Err(Error::EncryptionNotRequired);
        }
        Ok(())
    }

    /// Changes how strictly encryption applies on this node.
    pub(super) fn set_encryption(&mut self, mode: Encryption) -> Result<()> {
        if self.keyring.is_none() {
            return Err(Error::NoKeyring);
        }
        if mode != self.encryption {
            tracing::info!(
                from = self.encryption.as_str(),
                to = mode.as_str(),
                "encryption mode changed"
            );
            self.encryption = mode;
            lock(&self.shared).accept_keyring_records = self.requires_sealed();
            self.security_epoch += 1;
        }
        Ok(())
    }

    /// After an exchange got through, this node holds the tribe's keyring
    /// records: a primary taken from a refusing peer's proof (see
    /// `try_another_key`) goes back to the tribe's once this node holds it.
    /// The records alone never say so again: they did not change, and the
    /// tribe went on sealing with its own primary while this node kept the
    /// stale one for good (and a removal of the old key waited for it).
    pub(super) fn follow_cluster_primary(&mut self) {
        let primary = match lock(&self.shared).state.get(&Key::RingPrimary) {
            Some(Value::RingPrimary(p)) => *p,
            _ => return,
        };
        if self
            .keyring
            .as_ref()
            .is_some_and(|ring| ring.primary_id() != primary && ring.get(primary).is_some())
        {
            self.apply_ring();
        }
    }

    /// Brings the local keyring in line with the replicated operations:
    /// installs live keys, switches to the cluster primary once held, and
    /// drops removed keys (never the one in use).
    pub(super) fn apply_ring(&mut self) {
        let (installs, removes, primary) = {
            let sh = lock(&self.shared);
            let mut installs = Vec::new();
            let mut removes = Vec::new();
            for (key, entry) in sh.state.iter() {
                if let Key::RingKey(id) = key {
                    match &entry.value {
                        Some(Value::RingKey(k)) => installs.push(k.0.clone()),
                        _ => removes.push(*id),
                    }
                }
            }
            let primary = match sh.state.get(&Key::RingPrimary) {
                Some(Value::RingPrimary(p)) => Some(*p),
                _ => None,
            };
            (installs, removes, primary)
        };
        // The key peers were heard sealing with lately (see below).
        let now = self.now_ms();
        let heard = self
            .peer_key
            .filter(|(_, at)| now.saturating_sub(*at) <= PEER_KEY_FRESH_MS)
            .map(|(k, _)| k);
        let Some(ring) = self.keyring.as_mut() else {
            return;
        };
        let before = (ring.ids(), ring.primary_id());
        let mut full = false;
        // Removals first, so a full ring has room for what replaces them.
        for id in &removes {
            if ring.get(*id).is_some() && ring.primary_id() != *id && ring.remove(*id).is_ok() {
                tracing::info!(key = %id, "keyring: key removed");
            }
        }
        for key in installs {
            let id = key.id();
            match ring.install(key) {
                Ok(true) => tracing::info!(key = %id, "keyring: key installed"),
                Ok(false) => {}
                Err(_) => full = true,
            }
        }
        // A `use` and a `remove` of the same key that crossed (the `use`
        // through a node cut off from the one that took the removal) leave
        // the cluster's primary naming a removed key: the removal wins.
        // Following that primary, or keeping it, leaves the nodes that still
        // hold the key sealing with one their peers dropped, for good (each
        // hears the other seal with it, so no refusal moves it). Such a
        // node seals with a key it holds that was not removed instead: the
        // one peers were heard sealing with lately, else the lowest id.
        let primary = primary.filter(|p| !removes.contains(p));
        if let Some(p) = primary {
            if ring.primary_id() != p && ring.use_key(p).is_ok() {
                tracing::info!(key = %p, "keyring: primary key changed");
            }
        } else if removes.contains(&ring.primary_id()) {
            let kept: Vec<KeyId> = ring
                .ids()
                .into_iter()
                .filter(|k| !removes.contains(k))
                .collect();
            let next = heard
                .filter(|k| kept.contains(k))
                .or_else(|| kept.iter().min().copied());
            if let Some(next) = next {
                if ring.use_key(next).is_ok() {
                    tracing::warn!(
                        removed = %before.1,
                        key = %next,
                        "keyring: this node's primary key was removed (a `use` and a `remove` of it crossed): sealing with {next}"
                    );
                }
            }
        }
        // A removed key that was primary until the switch above goes now.
        for id in removes {
            if ring.get(id).is_some() && ring.remove(id).is_ok() {
                tracing::info!(key = %id, "keyring: key removed");
            }
        }
        let after = (ring.ids(), ring.primary_id());
        if full {
            warn_limited!(self, "keyring_full", || {
                String::from("keyring: a key could not be installed, the ring holds 8 keys; remove one")
            });
        }
        if after != before {
            self.security_epoch += 1;
            self.record.keys = after.0;
            self.record.primary_key = Some(after.1);
            self.publish_record();
        }
    }

    /// Live members, this node first, that do not hold `id` yet
    /// (`primary: false`) or still seal with it (`primary: true`), by name
    /// (peers by their records). This node lags when a step taken through
    /// another node has not reached it yet.
    pub fn members_lagging(&self, id: KeyId, primary: bool) -> Vec<String> {
        let mut lagging = Vec::new();
        if let Some(ring) = &self.keyring {
            let (holds, seals) = (ring.get(id).is_some(), ring.primary_id() == id);
            if (primary && seals) || (!primary && !holds) {
                lagging.push(self.name.to_string());
            }
        }
        let sh = lock(&self.shared);
        let view = super::view::View { state: &sh.state };
        for (name, row) in self.members.iter() {
            if !row.state.is_up() {
                continue;
            }
            // A member whose record has not arrived yet may hold or seal
            // with anything: it counts as lagging either way.
            let (holds, seals) = view.node_record(name).map_or((false, true), |r| {
                (r.keys.contains(&id), r.primary_key == Some(id))
            });
            if (primary && seals) || (!primary && !holds) {
                lagging.push(name.to_string());
            }
        }
        lagging
    }

    /// The keyring across live members.
    pub fn keyring_status(&self) -> KeyringStatus {
        let mut holdings: std::collections::BTreeMap<KeyId, KeyHolding> = Default::default();
        let mut note = |name: &str, keys: &[KeyId], primary: Option<KeyId>| {
            for id in keys {
                let h = holdings.entry(*id).or_insert_with(|| KeyHolding {
                    id: *id,
                    installed_on: Vec::new(),
                    primary_on: Vec::new(),
                });
                h.installed_on.push(name.to_string());
                if primary == Some(*id) {
                    h.primary_on.push(name.to_string());
                }
            }
        };
        let mut members = 0;
        if let Some(ring) = &self.keyring {
            note(&self.name, &ring.ids(), Some(ring.primary_id()));
        }
        if !self.left {
            members += 1;
        }
        let sh = lock(&self.shared);
        let view = super::view::View { state: &sh.state };
        for (name, row) in self.members.iter() {
            if !row.state.is_up() {
                continue;
            }
            members += 1;
            if let Some(rec) = view.node_record(name) {
                note(name, &rec.keys, rec.primary_key);
            }
        }
        // Sorted, as every list of the snapshots: every node of a tribe
        // gives the same answer, whichever one is asked.
        for h in holdings.values_mut() {
            h.installed_on.sort_unstable();
            h.primary_on.sort_unstable();
        }
        KeyringStatus {
            encryption: self.keyring.as_ref().map(|_| self.encryption),
            primary: self.keyring.as_ref().map(Keyring::primary_id),
            keys: holdings.into_values().collect(),
            members,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::commands::Command;

    /// A node that took an old key from a stale peer's proof seals with the
    /// tribe's primary again after its next exchange (it kept the old one
    /// for good, and a removal of the old key waited for it).
    #[test]
    fn a_primary_taken_from_a_stale_peers_proof_goes_back_after_an_exchange() {
        let old = SecretKey::generate();
        let old_id = old.id();
        let mut cfg = crate::Config::new("n");
        cfg.keyring = Some(crate::crypto::Keyring::new(old));
        let mut engine = Engine::started_for_test(&cfg);
        let new = SecretKey::generate();
        let new_id = new.id();
        engine.handle_command(2_000, Command::InstallKey(new)).unwrap();
        engine.handle_command(2_100, Command::UseKey(new_id)).unwrap();
        let primary = |e: &Engine| e.keyring.as_ref().unwrap().primary_id();
        assert_eq!(primary(&engine), new_id);
        // A peer that missed the rotation refuses the new key, proving it
        // holds the old one; no peer up here, so this node takes it.
        assert!(engine.try_another_key(3_000, new_id, Some(old_id)));
        assert_eq!(primary(&engine), old_id);
        engine.follow_cluster_primary();
        assert_eq!(primary(&engine), new_id);
        // While peers are heard sealing with the new key, a stale peer's
        // refusal moves nothing: it is the one behind (nodes flipped
        // between the two keys every few seconds around such a peer).
        engine.own_key_heard = Some((new_id, 3_500));
        assert!(!engine.try_another_key(4_000, new_id, Some(old_id)));
        assert_eq!(primary(&engine), new_id);
        // A sighting of a former primary stands for no peer sealing with
        // the current one: a node switched while cut off (its old key
        // heard up to the cut) takes the key a refusing peer proves.
        engine.own_key_heard = Some((old_id, 3_500));
        assert!(engine.try_another_key(4_000, new_id, Some(old_id)));
        assert_eq!(primary(&engine), old_id);
    }

    /// Installed keys and removed ones (until collected) count against the
    /// keyring records' limit: the install past it is refused where it is
    /// asked, as a limit, not by every peer.
    #[test]
    fn an_install_past_the_keyring_records_limit_is_refused_where_it_is_asked() {
        let mut cfg = crate::Config::new("n");
        cfg.keyring = Some(crate::crypto::Keyring::new(SecretKey::generate()));
        let mut engine = Engine::started_for_test(&cfg);
        let limit = crate::config::MAX_RING_RECORDS;
        let mut installed = 0;
        let refusal = loop {
            let key = SecretKey::generate();
            let id = key.id();
            let now = 2_000 + installed as u64;
            match engine.handle_command(now, Command::InstallKey(key)) {
                Ok(()) => installed += 1,
                Err(e) => break e,
            }
            engine.handle_command(now, Command::RemoveKey(id)).unwrap();
            assert!(installed <= limit, "no refusal past the limit");
        };
        assert!(matches!(refusal, Error::LimitReached { .. }), "{refusal}");
        assert!(installed >= limit - 1, "refused after {installed}");
    }
}
