//! Anti-entropy push-pull over streams. The initiator sends its members and
//! bucket hashes; the responder merges the members and answers with its own
//! members and every record of the buckets that differ; the initiator merges
//! them and pushes back only what the responder lacks.
//!
//! ```text
//! A → B  Hello { members, buckets }
//! B → A  Reply { members, mismatched, records of those buckets }
//! A → B  Push  { records B lacks }         (only when buckets differed)
//! ```

use std::collections::{BTreeMap, BTreeSet};

use foca::Member;
use serde::{Deserialize, Serialize};

use super::delta::lock;
use super::identity::NodeId;
use super::{ConnId, Engine, Output, SYNC_TIMEOUT};
use crate::names;
use crate::records::{Entry, Key};
use crate::state::{self, BUCKETS};
use crate::wire;

/// Messages of an exchange.
#[derive(Debug, Serialize, Deserialize)]
pub enum SyncMsg {
    /// Opens an exchange.
    Hello {
        /// The initiator.
        from: NodeId,
        /// Cluster label (plaintext clusters must not merge by accident).
        label: String,
        /// Whether the initiator is joining.
        join: bool,
        /// Its full membership state.
        members: Vec<Member<NodeId>>,
        /// Its bucket hashes.
        buckets: Vec<u64>,
    },
    /// Answers a Hello.
    Reply {
        /// The responder.
        from: NodeId,
        /// Its full membership state.
        members: Vec<Member<NodeId>>,
        /// Buckets whose hashes differed.
        mismatched: Vec<u16>,
        /// All the responder's records in those buckets.
        records: Vec<(Key, Entry)>,
    },
    /// Records the responder lacked.
    Push {
        /// The records.
        records: Vec<(Key, Entry)>,
    },
}

/// Where an exchange stands.
#[derive(Debug)]
pub struct Exchange {
    initiator: bool,
    join: bool,
    started_ms: u64,
    peer: Option<std::net::SocketAddr>,
}

impl Engine {
    /// Opens an exchange with `to`.
    pub(super) fn start_sync(&mut self, to: std::net::SocketAddr, join: bool) {
        let conn = self.next_conn();
        let now = self.now_ms();
        self.conns.insert(
            conn,
            Exchange {
                initiator: true,
                join,
                started_ms: now,
                peer: Some(to),
            },
        );
        let buckets = lock(&self.shared).state.bucket_hashes();
        let hello = SyncMsg::Hello {
            from: self.swim.identity().clone(),
            label: self.label.clone(),
            join,
            members: self.swim_members(),
            buckets,
        };
        lock(&self.shared).counters.push_pulls_started += 1;
        self.outputs.push_back(Output::Connect { conn, to });
        self.send_frame(conn, &hello);
    }

    fn send_frame(&mut self, conn: ConnId, msg: &SyncMsg) {
        let body = wire::encode(msg);
        {
            let mut sh = lock(&self.shared);
            sh.counters.frames_out += 1;
            sh.counters.frame_bytes_out += body.len() as u64;
        }
        self.outputs.push_back(Output::Frame { conn, body });
    }

    fn finish(&mut self, conn: ConnId, ok: bool) {
        self.conns.remove(&conn);
        self.outputs.push_back(Output::Close { conn });
        let mut sh = lock(&self.shared);
        if ok {
            sh.counters.push_pulls_completed += 1;
        } else {
            sh.counters.push_pulls_failed += 1;
        }
    }

    /// A frame arrived on a stream.
    pub fn handle_frame(&mut self, now_ms: u64, conn: ConnId, body: &[u8]) {
        self.tick(now_ms);
        {
            let mut sh = lock(&self.shared);
            sh.counters.frames_in += 1;
            sh.counters.frame_bytes_in += body.len() as u64;
        }
        let msg: SyncMsg = match wire::decode(body) {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(error = %e, "bad stream frame");
                lock(&self.shared).counters.frame_decode_errors += 1;
                self.finish(conn, false);
                return;
            }
        };
        let known = self.conns.get(&conn).map(|x| x.initiator);
        match (known, msg) {
            (
                None,
                SyncMsg::Hello {
                    from,
                    label,
                    join,
                    members,
                    buckets,
                },
            ) => self.on_hello(conn, from, label, join, members, buckets),
            (
                Some(true),
                SyncMsg::Reply {
                    from,
                    members,
                    mismatched,
                    records,
                },
            ) => self.on_reply(conn, from, members, mismatched, records),
            (Some(false), SyncMsg::Push { records }) => {
                self.merge_records(records);
                self.finish(conn, true);
            }
            _ => {
                lock(&self.shared).counters.frame_decode_errors += 1;
                self.finish(conn, false);
            }
        }
        self.after_change();
    }

    /// A frame over the size limit or unreadable arrived; the stream is gone.
    pub fn handle_bad_frame(&mut self, now_ms: u64, conn: ConnId) {
        self.tick(now_ms);
        lock(&self.shared).counters.frame_decode_errors += 1;
        if self.conns.remove(&conn).is_some() {
            lock(&self.shared).counters.push_pulls_failed += 1;
        }
    }

    /// A stream closed or failed (connect refused, reset, timeout).
    pub fn handle_stream_closed(&mut self, now_ms: u64, conn: ConnId) {
        self.tick(now_ms);
        if let Some(x) = self.conns.remove(&conn) {
            lock(&self.shared).counters.push_pulls_failed += 1;
            tracing::debug!(peer = ?x.peer, "exchange ended early");
        }
    }

    fn on_hello(
        &mut self,
        conn: ConnId,
        from: NodeId,
        label: String,
        join: bool,
        members: Vec<Member<NodeId>>,
        buckets: Vec<u64>,
    ) {
        if label != self.label {
            lock(&self.shared).counters.label_mismatches += 1;
            self.finish(conn, false);
            return;
        }
        if buckets.len() != BUCKETS || !names::is_valid(&from.name) {
            lock(&self.shared).counters.frame_decode_errors += 1;
            self.finish(conn, false);
            return;
        }
        let now = self.now_ms();
        self.conns.insert(
            conn,
            Exchange {
                initiator: false,
                join,
                started_ms: now,
                peer: Some(from.addr),
            },
        );
        self.apply_members(members);
        let (mismatched, records) = {
            let sh = lock(&self.shared);
            let ours = sh.state.bucket_hashes();
            let mismatched: BTreeSet<usize> =
                (0..BUCKETS).filter(|&i| ours[i] != buckets[i]).collect();
            let records = sh
                .state
                .entries_in_buckets(&mismatched)
                .into_iter()
                .filter(|(k, _)| self.may_send(k))
                .collect();
            (mismatched, records)
        };
        let reply = SyncMsg::Reply {
            from: self.swim.identity().clone(),
            members: self.swim_members(),
            mismatched: mismatched.iter().map(|&b| b as u16).collect(),
            records,
        };
        self.send_frame(conn, &reply);
        if mismatched.is_empty() {
            self.finish(conn, true);
        }
    }

    fn on_reply(
        &mut self,
        conn: ConnId,
        from: NodeId,
        members: Vec<Member<NodeId>>,
        mismatched: Vec<u16>,
        records: Vec<(Key, Entry)>,
    ) {
        let join = self.conns.get(&conn).is_some_and(|x| x.join);
        let mismatched: BTreeSet<usize> = mismatched
            .into_iter()
            .map(usize::from)
            .filter(|&b| b < BUCKETS)
            .collect();
        // What the responder holds in those buckets, to push back only news.
        let theirs: BTreeMap<Key, Entry> = records
            .iter()
            .filter(|(k, _)| mismatched.contains(&state::bucket_of(k)))
            .cloned()
            .collect();
        self.apply_members(members);
        self.merge_records(records);
        if !mismatched.is_empty() {
            let push: Vec<(Key, Entry)> = {
                let sh = lock(&self.shared);
                sh.state
                    .entries_in_buckets(&mismatched)
                    .into_iter()
                    .filter(|(k, e)| match theirs.get(k) {
                        None => true,
                        Some(t) => t != e,
                    })
                    .filter(|(k, _)| self.may_send(k))
                    .collect()
            };
            self.send_frame(conn, &SyncMsg::Push { records: push });
        }
        self.finish(conn, true);
        if join && *from.name != *self.name {
            // Now that we know the seed's identity, say hello the SWIM way too.
            if let Err(e) = self.swim.announce(from, &mut self.swim_rt) {
                tracing::debug!(error = %e, "announce failed");
            }
        }
    }

    /// Feeds members learnt from a peer to the membership protocol.
    fn apply_members(&mut self, members: Vec<Member<NodeId>>) {
        // After a leave, the goodbye sync's answer lists this node as down:
        // fed to foca, that would make it rejoin under a new generation.
        if self.left {
            return;
        }
        let valid: Vec<Member<NodeId>> = members
            .into_iter()
            .filter(|m| names::is_valid(&m.id().name))
            .collect();
        if let Err(e) = self
            .swim
            .apply_many(valid.into_iter(), true, &mut self.swim_rt)
        {
            tracing::debug!(error = %e, "apply_many failed");
        }
    }

    /// Merges records from an exchange. News is spread on at once, so that
    /// anti-entropy acts as an epidemic too: small records as gossip deltas,
    /// large ones by an early exchange with another peer.
    fn merge_records(&mut self, records: Vec<(Key, Entry)>) {
        let mut news = Vec::new();
        {
            let mut sh = lock(&self.shared);
            for (key, entry) in records {
                if sh.accept_remote(key.clone(), entry.clone()) {
                    news.push((key, entry));
                }
            }
        }
        if !self.gossip_deltas {
            return;
        }
        for delta in news {
            self.spread(&delta);
        }
    }

    pub(super) fn expire_exchanges(&mut self, now_ms: u64) {
        let timeout = SYNC_TIMEOUT.as_millis() as u64;
        let stale: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, x)| x.started_ms.saturating_add(timeout) < now_ms)
            .map(|(c, _)| *c)
            .collect();
        for conn in stale {
            self.finish(conn, false);
        }
    }

    /// Joins through every seed (and announces to known ones).
    pub(super) fn join(&mut self) {
        if self.seeds.is_empty() {
            return;
        }
        for seed in self.seeds.clone() {
            self.start_sync(seed, true);
        }
        let retry = self.join_backoff;
        self.join_backoff = (self.join_backoff * 2).min(std::time::Duration::from_secs(30));
        self.schedule(super::Timer::Join, retry);
    }

    /// Exchanges state with one random live member (or a seed when alone).
    pub(super) fn periodic_sync(&mut self) {
        if self.left {
            return;
        }
        let up: Vec<std::net::SocketAddr> = self
            .members
            .iter()
            .filter(|(_, r)| r.state.is_up())
            .map(|(_, r)| r.id.addr)
            .collect();
        if up.is_empty() {
            return;
        }
        // Prefer a peer with no exchange under way, so fan-out picks differ.
        let busy: Vec<std::net::SocketAddr> = self.conns.values().filter_map(|x| x.peer).collect();
        let idle: Vec<std::net::SocketAddr> =
            up.iter().copied().filter(|a| !busy.contains(a)).collect();
        let pool = if idle.is_empty() { &up } else { &idle };
        let pick = pool[rand::RngExt::random_range(&mut self.rng, 0..pool.len())];
        self.start_sync(pick, false);
    }

    /// Tries one failed member again: heals partitions whose sides both
    /// declared the other down.
    pub(super) fn reconnect(&mut self) {
        if self.left {
            return;
        }
        let failed = self.members.failed();
        if failed.is_empty() {
            return;
        }
        let pick = failed[rand::RngExt::random_range(&mut self.rng, 0..failed.len())].clone();
        tracing::debug!(peer = %pick.name, "reconnecting to a failed member");
        self.start_sync(pick.addr, false);
    }
}
