//! Anti-entropy push-pull over streams. The initiator sends its members and
//! bucket hashes; the responder merges the members and answers with its own
//! members and every record of the buckets that differ; the initiator merges
//! them and pushes back only what the responder lacks. Records travel in
//! chunks of bounded size, so a state of any legal size reaches a late
//! joiner without one frame above the frame limit.
//!
//! A periodic exchange opens with digests only (`Summary`): at rest both
//! sides hold the same members and records, and the responder's `InSync`
//! ends it there; `Differ` makes the initiator send the full `Hello` on the
//! same stream. Reconnects to failed members and dials of suspects open
//! the same way (most are refused, and then only the summary was queued). A
//! join, or a node with records it cannot vouch for, starts with the full
//! `Hello`.
//!
//! ```text
//! A → B  Summary { members digest, records digest, clock }
//! B → A  InSync  { clock }                  (digests equal: done)
//!      | Differ  { clock }                  (otherwise A goes on with Hello)
//! A → B  Hello   { members, buckets, want, clock }
//! B → A  Reply   { members, mismatched, records…, pending, clock, more }
//! B → A  Records { records…, more }        (while `more`)
//! A → B  Push    { records…, more }        (only when buckets differed)
//! A → B  Records { records…, more }        (while `more`)
//! ```

use std::collections::{BTreeMap, BTreeSet};

use foca::Member;
use serde::{Deserialize, Serialize};

use super::delta::lock;
use super::identity::NodeId;
use super::name_claims::{self, Heard};
use super::{ConnId, Engine, Output, SYNC_TIMEOUT};
use crate::hlc::Hlc;
use crate::names;
use crate::records::{Entry, Key};
use crate::state::{self, BUCKETS};

/// Addresses of seeds given by name a node keeps at most (the latest
/// lookups replace the earlier ones).
const MAX_NAMED_SEEDS: usize = 256;
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
        /// Buckets to answer in full even when their hashes match (the
        /// initiator holds records there it cannot vouch for yet).
        want: Vec<u16>,
        /// Its clock (ms since the Unix epoch), for skew detection.
        clock_ms: u64,
    },
    /// Answers a Hello.
    Reply {
        /// The responder.
        from: NodeId,
        /// Its full membership state.
        members: Vec<Member<NodeId>>,
        /// Buckets whose hashes differed (or were wanted).
        mismatched: Vec<u16>,
        /// The first chunk of the responder's records in those buckets.
        records: Vec<(Key, Entry)>,
        /// Records the responder itself kept from before a long absence and
        /// cannot vouch for, in the wanted buckets: evidence, not news.
        pending: Vec<(Key, Entry)>,
        /// Its clock (ms since the Unix epoch), for skew detection.
        clock_ms: u64,
        /// Whether [`SyncMsg::Records`] frames follow.
        more: bool,
    },
    /// Records the responder lacked (first chunk).
    Push {
        /// The records.
        records: Vec<(Key, Entry)>,
        /// Whether [`SyncMsg::Records`] frames follow.
        more: bool,
    },
    /// A further chunk of a Reply or a Push.
    Records {
        /// The records.
        records: Vec<(Key, Entry)>,
        /// Whether more chunks follow.
        more: bool,
    },
    /// Opens a periodic exchange with digests only.
    Summary {
        /// The initiator.
        from: NodeId,
        /// Cluster label.
        label: String,
        /// Digest of its membership view, leaving out both ends.
        members: Digest16,
        /// Digest of its bucket hashes.
        buckets: Digest16,
        /// Its clock (ms since the Unix epoch), for skew detection.
        clock_ms: u64,
    },
    /// Answers a Summary whose digests match: nothing to exchange.
    InSync {
        /// The responder.
        from: NodeId,
        /// Its clock.
        clock_ms: u64,
    },
    /// Answers a Summary whose digests differ: a full Hello follows.
    Differ {
        /// The responder.
        from: NodeId,
        /// Its clock.
        clock_ms: u64,
    },
}

/// A truncated SHA-256.
pub type Digest16 = [u8; 16];

fn digest16(bytes: &[u8]) -> Digest16 {
    let mut out = [0u8; 16];
    out.copy_from_slice(&<sha2::Sha256 as sha2::Digest>::digest(bytes)[..16]);
    out
}

/// Least time between two pushes of this node's own record (see
/// [`Engine::push_own_record`]).
const OWN_NEWS_GAP_MS: u64 = 5_000;

/// Where an exchange stands.
#[derive(Debug)]
pub struct Exchange {
    pub(super) initiator: bool,
    /// A join exchange (through a seed or a join's address), not
    /// anti-entropy with a member.
    pub(super) join: bool,
    /// Last progress (engine clock); the exchange expires after
    /// [`SYNC_TIMEOUT`] without any.
    active_ms: u64,
    pub(super) peer: Option<std::net::SocketAddr>,
    /// Initiator: the responder, once its Reply arrived.
    pub(super) responder: Option<NodeId>,
    /// Initiator: the buckets the Reply covers.
    mismatched: BTreeSet<usize>,
    /// Initiator: versions the responder holds in those buckets.
    theirs: BTreeMap<Key, Hlc>,
    /// Initiator, held since a stall: records the responder holds pending
    /// too, which it can neither confirm nor deny.
    undecided: BTreeSet<Key>,
    /// Chunks of records still expected from the peer.
    expecting: bool,
    /// Initiator: a Summary awaits its answer. Responder: a Differ was sent
    /// and the full Hello is awaited.
    summary: bool,
    /// The peer answered under this node's name: the node holding it
    /// answers there (see `NameClaims::holder_exchange_ended`).
    holder_spoke: bool,
    /// The join (`Engine::join_through`) that opened it.
    pub(super) ticket: Option<u64>,
    /// A join's exchange opened again after its peer refused this node's
    /// key and proved one this node holds (it is not opened a third time).
    pub(super) retried: bool,
    /// Why it failed, when known (told to the join that opened it).
    pub(super) why: Option<String>,
}

impl Exchange {
    fn new(initiator: bool, join: bool, now: u64, peer: std::net::SocketAddr) -> Exchange {
        Exchange {
            initiator,
            join,
            active_ms: now,
            peer: Some(peer),
            responder: None,
            mismatched: BTreeSet::new(),
            theirs: BTreeMap::new(),
            undecided: BTreeSet::new(),
            expecting: false,
            summary: false,
            holder_spoke: false,
            ticket: None,
            retried: false,
            why: None,
        }
    }
}

/// Splits records into chunks whose encoding stays below `budget` bytes
/// (a single record above it travels alone; records are bounded far below
/// any legal frame size).
fn chunks(records: Vec<(Key, Entry)>, budget: usize) -> Vec<Vec<(Key, Entry)>> {
    let mut out = Vec::new();
    let mut chunk = Vec::new();
    let mut size = 0;
    for record in records {
        let len = wire::encode(&record).len();
        if !chunk.is_empty() && size + len > budget {
            out.push(std::mem::take(&mut chunk));
            size = 0;
        }
        size += len;
        chunk.push(record);
    }
    if !chunk.is_empty() || out.is_empty() {
        out.push(chunk);
    }
    out
}

impl Engine {
    /// Bytes of records per frame: well below the frame limit, leaving room
    /// for the member list and the envelope.
    fn chunk_budget(&self) -> usize {
        (self.max_frame / 4).clamp(16 * 1024, 4 * 1024 * 1024)
    }

    /// Opens a full exchange with `to`.
    pub(super) fn start_sync(&mut self, to: std::net::SocketAddr, join: bool) -> ConnId {
        let hello = self.full_hello(join);
        self.open_exchange(to, join, false, &hello)
    }

    /// Opens a periodic exchange with `peer`: digests first, unless this
    /// node holds records it must ask about.
    pub(super) fn start_summary(&mut self, peer: &NodeId) {
        if !self.pending.is_empty() {
            self.start_sync(peer.addr, false);
            return;
        }
        let (buckets, clock_ms) = {
            let sh = lock(&self.shared);
            (sh.state.bucket_hashes(), sh.now_ms)
        };
        let summary = SyncMsg::Summary {
            from: self.swim.identity().clone(),
            label: self.label.clone(),
            members: self.members_digest(&peer.name),
            buckets: buckets_digest(&buckets),
            clock_ms,
        };
        self.open_exchange(peer.addr, false, true, &summary);
    }

    /// Dials `to` for an exchange opened by `first`.
    fn open_exchange(
        &mut self,
        to: std::net::SocketAddr,
        join: bool,
        summary: bool,
        first: &SyncMsg,
    ) -> ConnId {
        let conn = self.next_conn();
        let mut exchange = Exchange::new(true, join, self.now_ms(), to);
        exchange.summary = summary;
        self.conns.insert(conn, exchange);
        lock(&self.shared).counters.push_pulls_started += 1;
        self.outputs.push_back(Output::Connect { conn, to });
        self.send_frame(conn, first);
        conn
    }

    fn full_hello(&self, join: bool) -> SyncMsg {
        let (buckets, clock_ms) = {
            let sh = lock(&self.shared);
            (sh.state.bucket_hashes(), sh.now_ms)
        };
        let want: BTreeSet<u16> = self
            .pending
            .keys()
            .map(|k| state::bucket_of(k) as u16)
            .collect();
        SyncMsg::Hello {
            from: self.swim.identity().clone(),
            label: self.label.clone(),
            join,
            members: self.swim_members(),
            buckets,
            want: want.into_iter().collect(),
            clock_ms,
        }
    }

    /// Digest of this node's view of every member but itself and `peer`
    /// (each end knows itself better than the other does), in name order.
    fn members_digest(&self, peer: &str) -> Digest16 {
        let mut view: Vec<(&NodeId, u16, u8)> = self
            .swim
            .iter_membership_state()
            .filter(|m| *m.id().name != *peer && *m.id().name != *self.name)
            .map(|m| (m.id(), m.incarnation(), severity(m.state())))
            .collect();
        view.sort_by(|a, b| {
            (&a.0.name, a.0.generation, a.0.addr).cmp(&(&b.0.name, b.0.generation, b.0.addr))
        });
        digest16(&wire::encode(&view))
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

    /// Sends the chunks after the first as [`SyncMsg::Records`] frames.
    fn send_rest(&mut self, conn: ConnId, rest: Vec<Vec<(Key, Entry)>>) {
        let n = rest.len();
        for (i, records) in rest.into_iter().enumerate() {
            self.send_frame(
                conn,
                &SyncMsg::Records {
                    records,
                    more: i + 1 < n,
                },
            );
        }
    }

    fn finish(&mut self, conn: ConnId, ok: bool) {
        self.end_exchange(conn, ok, false);
    }

    /// Ends an exchange; `abandon`: given up, its stream dropped at once.
    fn end_exchange(&mut self, conn: ConnId, ok: bool, abandon: bool) {
        let exchange = self.conns.remove(&conn);
        self.outputs.push_back(Output::Close { conn, abandon });
        self.note_holder_check(exchange.as_ref());
        self.note_exchange_outcome(exchange.as_ref(), ok);
        let steady = self.steady_ms();
        let mut sh = lock(&self.shared);
        if ok {
            self.last_contact_ms = sh.now_ms;
            self.last_exchange_steady_ms = steady;
            // The peer that refused this node's key takes it now.
            let peer = exchange.as_ref().and_then(|x| x.peer);
            if self.key_refused.is_some_and(|(by, _)| Some(by) == peer) {
                self.key_refused = None;
            }
            self.last_exchanged = exchange.and_then(|x| x.peer).map(|p| (p, sh.now_ms));
            sh.counters.push_pulls_completed += 1;
            drop(sh);
            self.follow_cluster_primary();
            self.release_restart_view(true);
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
                self.note_why(conn, "an unreadable frame (another build?)");
                self.finish(conn, false);
                return;
            }
        };
        let now = self.now_ms();
        let known = self.conns.get_mut(&conn).map(|x| {
            x.active_ms = now;
            (x.initiator, x.expecting, x.summary)
        });
        match (known, msg) {
            (
                None,
                SyncMsg::Summary {
                    from,
                    label,
                    members,
                    buckets,
                    clock_ms,
                },
            ) => self.on_summary(conn, from, label, members, buckets, clock_ms),
            (Some((true, false, true)), SyncMsg::InSync { from, clock_ms }) => {
                if self.check_responder(conn, &from) {
                    self.sample_clock(&from.name, clock_ms);
                    lock(&self.shared).counters.push_pulls_in_sync += 1;
                    self.finish(conn, true);
                }
            }
            (Some((true, false, true)), SyncMsg::Differ { from, clock_ms }) => {
                if self.check_responder(conn, &from) {
                    self.sample_clock(&from.name, clock_ms);
                    if let Some(x) = self.conns.get_mut(&conn) {
                        x.summary = false;
                    }
                    let hello = self.full_hello(false);
                    self.send_frame(conn, &hello);
                }
            }
            (
                None | Some((false, false, true)),
                SyncMsg::Hello {
                    from,
                    label,
                    join,
                    members,
                    buckets,
                    want,
                    clock_ms,
                },
            ) => {
                let hello = Hello {
                    from,
                    label,
                    join,
                    buckets,
                    want,
                    clock_ms,
                };
                self.on_hello(conn, hello, members)
            }
            (
                Some((true, false, false)),
                SyncMsg::Reply {
                    from,
                    members,
                    mismatched,
                    records,
                    pending,
                    clock_ms,
                    more,
                },
            ) => self.on_reply(
                conn, from, members, mismatched, records, pending, clock_ms, more,
            ),
            (Some((true, true, false)), SyncMsg::Records { records, more }) => {
                self.on_reply_records(conn, records, more)
            }
            (Some((false, _, false)), SyncMsg::Push { records, more })
            | (Some((false, true, false)), SyncMsg::Records { records, more }) => {
                self.merge_records(records);
                if more {
                    if let Some(x) = self.conns.get_mut(&conn) {
                        x.expecting = true;
                    }
                } else {
                    self.finish(conn, true);
                }
            }
            _ => {
                lock(&self.shared).counters.frame_decode_errors += 1;
                self.finish(conn, false);
            }
        }
        self.after_change();
    }

    /// A frame over the size limit or unreadable arrived (`why`), from
    /// `peer` when the runtime knows it; the stream is gone.
    pub fn handle_bad_frame(
        &mut self,
        now_ms: u64,
        conn: ConnId,
        why: &str,
        peer: Option<std::net::SocketAddr>,
    ) {
        self.tick(now_ms);
        self.note_why(conn, "a frame over the size limit or unreadable");
        lock(&self.shared).counters.frame_decode_errors += 1;
        let peer = peer.or_else(|| self.conns.get(&conn).and_then(|x| x.peer));
        warn_limited!(self, "bad_frame", || format!(
            "stream dropped: {why}{}",
            peer.map_or_else(String::new, |a| format!(" (peer {a})"))
        ));
        let exchange = self.conns.remove(&conn);
        self.note_exchange_outcome(exchange.as_ref(), false);
        if exchange.is_some() {
            lock(&self.shared).counters.push_pulls_failed += 1;
        }
    }

    /// Why a stream failed (an I/O error), told to the join that opened
    /// its exchange; the stream's close follows.
    pub fn note_stream_failure(&mut self, conn: ConnId, why: String) {
        self.note_why(conn, why);
    }

    /// A stream closed or failed (connect refused, reset, timeout).
    pub fn handle_stream_closed(&mut self, now_ms: u64, conn: ConnId) {
        self.tick(now_ms);
        self.note_why(
            conn,
            "the connection closed before the exchange ended (a node stopping, or one that \
             refused it: another cluster label, or another key)",
        );
        let exchange = self.conns.remove(&conn);
        self.note_holder_check(exchange.as_ref());
        self.note_exchange_outcome(exchange.as_ref(), false);
        if let Some(x) = exchange {
            lock(&self.shared).counters.push_pulls_failed += 1;
            tracing::debug!(peer = ?x.peer, "exchange ended early");
        }
    }

    /// An exchange ended, however: if it was with the node holding this
    /// node's name, that node answered under the name or it did not (a
    /// close, a reset, a timeout, or someone else answering there).
    fn note_holder_check(&mut self, exchange: Option<&Exchange>) {
        let Some(x) = exchange else { return };
        let Some(addr) = x.peer else { return };
        let mut sh = lock(&self.shared);
        if sh.claims.holder.is_none() {
            return;
        }
        let (own, now) = (sh.own.clone(), sh.now_ms);
        if sh.claims.holder_exchange_ended(addr, x.holder_spoke, &own, now) {
            tracing::warn!(
                %addr,
                "the node at {addr} that claimed this node's name did not answer under it {} times in a row: taking the name back",
                super::name_claims::HOLDER_MISSES
            );
        }
    }

    /// Checks the opening of an exchange: same cluster, a valid name, an
    /// identity that passes the screen. Ends the exchange when not.
    fn admit(&mut self, conn: ConnId, from: &NodeId, label: &str) -> bool {
        if label != self.label {
            lock(&self.shared).counters.label_mismatches += 1;
        } else if !names::is_valid(&from.name) {
            lock(&self.shared).counters.frame_decode_errors += 1;
        } else {
            let (ahead, answered) = {
                let mut sh = lock(&self.shared);
                if sh.screen_identity(from, Heard::Speaking) {
                    return true;
                }
                let ahead = from.generation > sh.horizon_ms();
                // A node under our name elsewhere, newer (it holds the
                // name): answered all the same, so that a copy seeded with
                // this node alone joins the others through it (see
                // `name_claims`). Its identity never reaches foca: the
                // screen keeps it out of every member list this node applies.
                (ahead, from.name == sh.own.name && from.addr != sh.own.addr && !ahead)
            };
            if answered {
                return true;
            }
            if ahead {
                self.report_ahead(&from.name, from.generation);
            }
        }
        self.finish(conn, false);
        false
    }

    /// Checks the responder's identity in an answer; ends the exchange when
    /// it does not pass.
    fn check_responder(&mut self, conn: ConnId, from: &NodeId) -> bool {
        let (own_name, passes) = {
            let mut sh = lock(&self.shared);
            let own_name = sh.own.name == from.name;
            (own_name, names::is_valid(&from.name) && sh.screen_identity(from, Heard::Speaking))
        };
        if let Some(x) = self.conns.get_mut(&conn) {
            // Refused when it holds our name, yet it answered.
            x.holder_spoke = own_name && x.peer == Some(from.addr);
        }
        if passes {
            return true;
        }
        self.note_why(conn, "the peer's identity was refused (a bad name, or a clock far ahead)");
        self.finish(conn, false);
        false
    }

    /// A periodic exchange opened with digests: equal ones end it, with no
    /// member list or bucket hash sent either way.
    fn on_summary(
        &mut self,
        conn: ConnId,
        from: NodeId,
        label: String,
        members: Digest16,
        buckets: Digest16,
        clock_ms: u64,
    ) {
        if !self.admit(conn, &from, &label) {
            return;
        }
        self.check_absence(clock_ms);
        self.hold_after_stall(true);
        self.sample_clock(&from.name, clock_ms);
        // The initiator must be a live member as this node knows it;
        // otherwise the full exchange tells this node who it is now.
        let known_up = self
            .swim
            .iter_members()
            .any(|m| *m.id() == from && m.state() == foca::State::Alive);
        let ours = buckets_digest(&lock(&self.shared).state.bucket_hashes());
        let same = known_up && buckets == ours && members == self.members_digest(&from.name);
        let now = self.now_ms();
        let reply = if same {
            SyncMsg::InSync {
                from: self.swim.identity().clone(),
                clock_ms: now,
            }
        } else {
            SyncMsg::Differ {
                from: self.swim.identity().clone(),
                clock_ms: now,
            }
        };
        self.send_frame(conn, &reply);
        if same {
            lock(&self.shared).counters.push_pulls_in_sync += 1;
            self.finish(conn, true);
        } else {
            let mut exchange = Exchange::new(false, false, now, from.addr);
            exchange.summary = true;
            self.conns.insert(conn, exchange);
        }
    }

    fn on_hello(&mut self, conn: ConnId, hello: Hello, members: Vec<Member<NodeId>>) {
        if !self.admit(conn, &hello.from, &hello.label) {
            return;
        }
        self.check_absence(hello.clock_ms);
        self.hold_after_stall(true);
        if hello.buckets.len() != BUCKETS {
            lock(&self.shared).counters.frame_decode_errors += 1;
            self.finish(conn, false);
            return;
        }
        let now = self.now_ms();
        self.conns
            .insert(conn, Exchange::new(false, hello.join, now, hello.from.addr));
        self.sample_clock(&hello.from.name, hello.clock_ms);
        self.apply_members(members);
        let wanted: BTreeSet<usize> = hello
            .want
            .iter()
            .map(|&b| usize::from(b))
            .filter(|&b| b < BUCKETS)
            .collect();
        let (mismatched, records) = {
            let sh = lock(&self.shared);
            let ours = sh.state.bucket_hashes();
            let mismatched: BTreeSet<usize> = (0..BUCKETS)
                .filter(|&i| ours[i] != hello.buckets[i] || wanted.contains(&i))
                .collect();
            let records: Vec<(Key, Entry)> = sh
                .state
                .entries_in_buckets(&mismatched)
                .into_iter()
                .filter(|(k, _)| self.may_send(k))
                .collect();
            (mismatched, records)
        };
        let pending: Vec<(Key, Entry)> = self
            .pending
            .iter()
            .filter(|(k, _)| wanted.contains(&state::bucket_of(k)) && self.may_send(k))
            .map(|(k, e)| (k.clone(), e.clone()))
            .collect();
        let mut parts = chunks(records, self.chunk_budget()).into_iter();
        let first = parts.next().unwrap_or_default();
        let rest: Vec<_> = parts.collect();
        let reply = SyncMsg::Reply {
            from: self.swim.identity().clone(),
            members: self.swim_members(),
            mismatched: mismatched.iter().map(|&b| b as u16).collect(),
            records: first,
            pending,
            clock_ms: now,
            more: !rest.is_empty(),
        };
        self.send_frame(conn, &reply);
        self.send_rest(conn, rest);
        if mismatched.is_empty() {
            self.finish(conn, true);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_reply(
        &mut self,
        conn: ConnId,
        from: NodeId,
        members: Vec<Member<NodeId>>,
        mismatched: Vec<u16>,
        records: Vec<(Key, Entry)>,
        pending: Vec<(Key, Entry)>,
        clock_ms: u64,
        more: bool,
    ) {
        // Sampled first: a responder refused for a generation beyond this
        // node's horizon may be telling it that its own clock is behind.
        if names::is_valid(&from.name) {
            self.sample_clock(&from.name, clock_ms);
        }
        if !self.check_responder(conn, &from) {
            return;
        }
        // Before anything is pushed back (an exchange opened while no peer
        // was up).
        self.check_absence(clock_ms);
        self.hold_after_stall(true);
        let mismatched: BTreeSet<usize> = mismatched
            .into_iter()
            .map(usize::from)
            .filter(|&b| b < BUCKETS)
            .collect();
        // Our records the responder holds pending too stay undecided (after
        // a stall or a long absence alike): two nodes that slept, or were
        // down, together would vouch for each other's records deleted
        // meanwhile; the hold's end keeps what no other peer decides (a
        // whole cluster restarting from its data dirs).
        let also_pending = pending
            .into_iter()
            .map(|(k, _)| k)
            .filter(|k| self.pending.contains_key(k));
        if let Some(x) = self.conns.get_mut(&conn) {
            x.responder = Some(from);
            x.mismatched = mismatched;
            x.undecided.extend(also_pending);
        }
        self.apply_members(members);
        self.on_reply_records(conn, records, more);
    }

    /// A chunk of the responder's records; after the last, push back what
    /// it lacks.
    fn on_reply_records(&mut self, conn: ConnId, records: Vec<(Key, Entry)>, more: bool) {
        let Some(x) = self.conns.get_mut(&conn) else {
            return;
        };
        for (k, e) in &records {
            if x.mismatched.contains(&state::bucket_of(k)) {
                x.theirs.insert(k.clone(), e.version.clone());
            }
        }
        x.expecting = more;
        self.merge_records(records);
        if more {
            return;
        }
        let Some(x) = self.conns.get_mut(&conn) else {
            return;
        };
        let join = x.join;
        let from = x.responder.clone();
        let mismatched = std::mem::take(&mut x.mismatched);
        let theirs = std::mem::take(&mut x.theirs);
        let undecided = std::mem::take(&mut x.undecided);
        self.resolve_pending(&mismatched, &theirs, &undecided);
        if let (false, Some(from)) = (undecided.is_empty(), &from) {
            self.stall_undecided_by.insert(from.name.to_string());
            self.end_stall_hold_when_due();
        }
        if !mismatched.is_empty() {
            let push: Vec<(Key, Entry)> = {
                let sh = lock(&self.shared);
                sh.state
                    .entries_in_buckets(&mismatched)
                    .into_iter()
                    .filter(|(k, e)| theirs.get(k) != Some(&e.version))
                    .filter(|(k, _)| self.may_send(k))
                    .collect()
            };
            let mut parts = chunks(push, self.chunk_budget()).into_iter();
            let first = parts.next().unwrap_or_default();
            let rest: Vec<_> = parts.collect();
            self.send_frame(
                conn,
                &SyncMsg::Push {
                    records: first,
                    more: !rest.is_empty(),
                },
            );
            self.send_rest(conn, rest);
        }
        self.finish(conn, true);
        if let Some(from) = from {
            // Not while another node holds our name: the seed would
            // only answer that this node is down.
            if join && *from.name != *self.name && !lock(&self.shared).keeping_out() {
                // Now that we know the seed's identity, say hello the SWIM way too.
                if let Err(e) = self.swim.announce(from, &mut self.swim_rt) {
                    tracing::debug!(error = %e, "announce failed");
                }
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
        // foca scans its whole member list for each update it is fed; feed
        // it only what would change its view (a peer's list is mostly what
        // this node knows already), so an exchange costs O(N log N), not O(N²).
        let known: std::collections::HashMap<&NodeId, (u16, u8)> = self
            .swim
            .iter_membership_state()
            .map(|m| (m.id(), (m.incarnation(), severity(m.state()))))
            .collect();
        let news: Vec<Member<NodeId>> = members
            .into_iter()
            .filter(|m| {
                known
                    .get(m.id())
                    .is_none_or(|&known| (m.incarnation(), severity(m.state())) > known)
            })
            .map(|m| {
                // A peer's word that a member this node holds up is down
                // is taken as a suspicion, which the member refutes if it
                // lives, as memberlist does in a push-pull. Taken as final,
                // the view of a node cut off for a while made everyone
                // declare healthy peers failed when the cut healed. A
                // goodbye (the record says left) stays final, and so does
                // this node's own down: foca keeps a down identity down, so
                // only a new generation brings it back where the others
                // hold it so.
                let up_here = known
                    .get(m.id())
                    .is_some_and(|&(_, s)| s < severity(foca::State::Down));
                if m.state() == foca::State::Down && up_here && !self.left_flag(&m.id().name) {
                    lock(&self.shared)
                        .softened
                        .push((m.id().clone(), m.incarnation()));
                    Member::new(m.id().clone(), m.incarnation(), foca::State::Suspect)
                } else {
                    m
                }
            })
            .collect();
        let (valid, out): (Vec<Member<NodeId>>, bool) = {
            let mut sh = lock(&self.shared);
            let out = sh.keeping_out();
            let valid = news
                .into_iter()
                .filter(|m| {
                    names::is_valid(&m.id().name)
                        && sh.screen_identity(m.id(), Heard::listed(m.state()))
                })
                .collect();
            (valid, out)
        };
        // Kept out of its name, this node only looks for the holder here
        // (the screen above notes it): fed to foca, the others would come
        // up and, unanswered, go down again, round after round.
        if out {
            return;
        }
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
    pub(super) fn merge_records(&mut self, records: Vec<(Key, Entry)>) {
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
        let holder = lock(&self.shared).claims.holder_addr(now_ms);
        let stale: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, x)| {
                let limit = if x.peer.is_some() && x.peer == holder {
                    super::name_claims::HOLDER_CHECK_TIMEOUT_MS
                } else {
                    timeout
                };
                x.active_ms.saturating_add(limit) < now_ms
            })
            .map(|(c, _)| *c)
            .collect();
        for conn in stale {
            self.note_why(conn, format!("no answer within {} s", SYNC_TIMEOUT.as_secs()));
            self.finish(conn, false);
        }
    }

    /// Why exchange `conn` is failing, for the join that opened it (the
    /// first reason found stands).
    pub(super) fn note_why(&mut self, conn: ConnId, why: impl Into<String>) {
        if let Some(x) = self.conns.get_mut(&conn) {
            if x.ticket.is_some() && x.why.is_none() {
                x.why = Some(why.into());
            }
        }
    }

    /// Ends the exchanges this node opened to join (through a seed, a
    /// join, a reconnect): a node that leaves joins nothing, and one
    /// waiting on a seed that never answers would hold its stop until the
    /// goodbye's deadline.
    pub(super) fn end_joining_exchanges(&mut self) {
        self.end_exchanges(|x| x.initiator && x.join, "this node is stopping");
    }

    /// Ends, as failed for `why`, every exchange `which` picks.
    pub(super) fn end_exchanges(&mut self, which: impl Fn(&Exchange) -> bool, why: &str) {
        let picked: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, x)| which(x))
            .map(|(conn, _)| *conn)
            .collect();
        for conn in picked {
            self.note_why(conn, why);
            self.end_exchange(conn, false, true);
        }
    }

    /// Joins through every seed (and announces to known ones).
    pub(super) fn join(&mut self) {
        let mut seeds = self.seeds.clone();
        for addr in &self.named_seeds {
            if !seeds.contains(addr) && !self.own_seeds.contains(addr) {
                seeds.push(*addr);
            }
        }
        if seeds.is_empty() {
            return;
        }
        let out = lock(&self.shared).keeping_out();
        // Attempts while another node holds our name are answered (and
        // are no join): they do not count as silent seeds.
        if out {
            self.join_attempts = 0;
        } else {
            self.join_attempts += 1;
        }
        // Said after the first retry, then more rarely (the 4th, 8th and
        // 16th attempt, then every 20th: some 10 minutes apart once the
        // retries are 30 s apart): an operator whose seeds are wrong or
        // down hears of it without a log line every few seconds, nor goes
        // hours without one.
        let n = self.join_attempts;
        if n >= 2 && ((n.is_power_of_two() && n <= 16) || n.is_multiple_of(20)) {
            let list: Vec<String> = seeds.iter().map(ToString::to_string).collect();
            // Seeds that refuse this node's streams look like silent ones
            // from here: name the usual reasons.
            let everyone_left = self.members.iter().next().is_some()
                && self
                    .members
                    .iter()
                    .all(|(_, row)| row.state == super::members::MemberState::Left);
            let hint = if self.joined_once && everyone_left {
                "every other member it knew left, saying goodbye: it joins again when one of them, or a seed, is back"
            } else if self.joined_once {
                "it was in the tribe before: a network cut, or the seeds are down; or it missed a key rotation meanwhile"
            } else if self.keyring.is_none() {
                "not reachable, or the tribe is encrypted and this node has no key, or they run with another cluster label"
            } else if self.seals().is_none() {
                "not reachable, or they require encryption while this node sends plaintext (encryption mode accept: the tribe may have moved on to require), or they hold other keys or run with another cluster label"
            } else {
                "not reachable, or they hold other keys or run with another cluster label"
            };
            // Seeds refuse, without a word, the identity of a node whose
            // clock runs beyond their horizon: also one that was in the
            // tribe (its clock stepped ahead, or the peers' gossip reached
            // it before they refused it).
            let clock = if everyone_left {
                ""
            } else {
                "; or this node's clock runs ahead of theirs by more than the clock skew they take (check the clocks)"
            };
            tracing::warn!(
                unanswered = self.join_attempts - 1,
                seeds = %list.join(", "),
                "no seed has answered {} ({hint}{clock}); still trying",
                if self.joined_once { "since this node lost contact with the others" } else { "yet" }
            );
        }
        for seed in seeds {
            self.start_sync(seed, true);
        }
        // While another node holds our name, its going is looked for
        // more often than an absent seed.
        let cap = if out {
            std::time::Duration::from_millis(name_claims::KEEP_OUT_JOIN_RETRY_MS)
        } else {
            std::time::Duration::from_secs(30)
        };
        let retry = self.join_backoff.min(cap);
        self.join_backoff = (self.join_backoff * 2).min(cap);
        self.schedule_join(retry);
    }

    /// Schedules the next join attempt, unless one is scheduled already.
    pub(super) fn schedule_join(&mut self, after: std::time::Duration) {
        if !std::mem::replace(&mut self.join_pending, true) {
            self.schedule(super::Timer::Join, after);
        }
    }

    /// Sets the seeds given by name to what the runtime last looked up (at
    /// most [`MAX_NAMED_SEEDS`]); a node still alone joins through the new
    /// ones at once. How many were new.
    pub fn set_named_seeds(&mut self, now_ms: u64, addrs: &[std::net::SocketAddr]) -> usize {
        self.tick(now_ms);
        if self.left {
            return 0;
        }
        let me = lock(&self.shared).own.addr;
        let mut named = Vec::new();
        for &addr in addrs {
            if addr != me && !named.contains(&addr) && named.len() < MAX_NAMED_SEEDS {
                named.push(addr);
            }
        }
        let fresh: Vec<_> = named
            .iter()
            .copied()
            .filter(|a| {
                !self.named_seeds.contains(a) && !self.seeds.contains(a) && !self.own_seeds.contains(a)
            })
            .collect();
        self.named_seeds = named;
        if !self.active && !fresh.is_empty() {
            for &seed in &fresh {
                self.start_sync(seed, true);
            }
            let retry = self.join_backoff;
            self.schedule_join(retry);
        }
        fresh.len()
    }

    /// Exchanges state with one random live member (or a seed when alone).
    pub(super) fn periodic_sync(&mut self) {
        if self.left {
            return;
        }
        let up = self.up_peers();
        if up.is_empty() {
            return;
        }
        // Prefer a peer with no exchange under way, so fan-out picks differ.
        let busy: Vec<std::net::SocketAddr> = self.conns.values().filter_map(|x| x.peer).collect();
        let idle: Vec<NodeId> = up
            .iter()
            .filter(|id| !busy.contains(&id.addr))
            .cloned()
            .collect();
        let pool = if idle.is_empty() { &up } else { &idle };
        let pick = pool[rand::RngExt::random_range(&mut self.rng, 0..pool.len())].clone();
        self.exchange_with(&pick);
    }

    /// Opens an anti-entropy exchange with `peer`: a summary first, or a
    /// whole exchange while this node keeps out of its name.
    pub(super) fn exchange_with(&mut self, peer: &NodeId) {
        if lock(&self.shared).keeping_out() {
            // A summary leaves our own name out: a whole exchange lists
            // the node holding it, or tells it is gone.
            self.start_sync(peer.addr, false);
            return;
        }
        self.start_summary(peer);
    }

    /// A change of this node's own record (its facts, the tribes its
    /// policies give it) also goes, in an exchange, to the peer of the
    /// last whole exchange if that ended within a push-pull interval and
    /// the peer is still up: gossip picks its targets among all members,
    /// and a node that just joined may know only its seed alive among
    /// several that crashed a moment ago and are not yet found out (one
    /// join in six waited 7–20 s for anti-entropy). At most once every
    /// 5 s: a node whose facts change every second makes no exchange a
    /// second.
    pub(super) fn push_own_record(&mut self, now: u64) {
        if !self.own_news || now.saturating_sub(self.own_news_ms) < OWN_NEWS_GAP_MS {
            return;
        }
        // Before the first exchange ends (a join's, under way), wait for it.
        let Some((addr, at)) = self.last_exchanged else {
            return;
        };
        self.own_news = false;
        let recent = self.timings.push_pull_interval.as_millis() as u64;
        if now.saturating_sub(at) > recent || self.left || lock(&self.shared).keeping_out() {
            return;
        }
        let Some(peer) = self.up_peers().into_iter().find(|id| id.addr == addr) else {
            return;
        };
        self.own_news_ms = now;
        self.start_summary(&peer);
    }

    /// Starts a sync with up to `n` distinct peers that are up, picked at
    /// random whether or not an exchange with them is under way: for a
    /// goodbye, which must not go to one peer twice while another (the one
    /// a node just joined through, busy with the join's exchange) gets none.
    pub(super) fn sync_with_distinct(&mut self, n: usize) {
        let mut up = self.up_peers();
        for _ in 0..n {
            if up.is_empty() {
                return;
            }
            let pick = up.swap_remove(rand::RngExt::random_range(&mut self.rng, 0..up.len()));
            self.start_summary(&pick);
        }
    }

    /// The members that are up (alive or suspect).
    pub(super) fn up_peers(&self) -> Vec<NodeId> {
        self.members
            .iter()
            .filter(|(_, r)| r.state.is_up())
            .map(|(_, r)| r.id.clone())
            .collect()
    }

    /// Tries one failed member again, or a peer an earlier run kept that
    /// this one has not met: heals partitions whose sides both declared the
    /// other down, and islands a restart of the whole tribe left (a node
    /// joins through the first kept peer that answers, and stops dialling
    /// the others).
    pub(super) fn reconnect(&mut self) {
        if self.left {
            return;
        }
        let failed = self.members.failed();
        let unmet = self.unmet_kept_peers();
        let n = failed.len() + unmet.len();
        if n == 0 {
            return;
        }
        let i = rand::RngExt::random_range(&mut self.rng, 0..n);
        if let Some(pick) = failed.get(i) {
            tracing::debug!(peer = %pick.name, "reconnecting to a failed member");
            // Digests first: a failed member mostly refuses the connection,
            // and then only the summary was queued, not this node's whole view.
            self.start_summary(&pick.clone());
        } else {
            let addr = unmet[i - failed.len()];
            tracing::debug!(%addr, "trying a peer an earlier run kept");
            // As a join: the SWIM announce after it merges the two sides.
            self.start_sync(addr, true);
        }
    }
}

/// The fields of a Hello the responder uses.
struct Hello {
    from: NodeId,
    label: String,
    join: bool,
    buckets: Vec<u64>,
    want: Vec<u16>,
    clock_ms: u64,
}

/// Digest of bucket hashes: equal iff a Hello would find no bucket differing.
fn buckets_digest(buckets: &[u64]) -> Digest16 {
    let bytes: Vec<u8> = buckets.iter().flat_map(|h| h.to_le_bytes()).collect();
    digest16(&bytes)
}

/// SWIM's order of states at one incarnation: a later one overrides.
fn severity(state: foca::State) -> u8 {
    match state {
        foca::State::Alive => 0,
        foca::State::Suspect => 1,
        foca::State::Down => 2,
    }
}

#[cfg(test)]
mod named_seed_tests {
    use std::net::SocketAddr;

    use super::super::{Engine, Output, Timer};
    use crate::config::Config;

    fn engine() -> Engine {
        let cfg = Config::new("named");
        let me: SocketAddr = "127.0.0.1:7000".parse().unwrap();
        let mut e = Engine::new(&cfg, me, 1, Default::default(), 1_000, 7).unwrap();
        e.start(1_000);
        while e.poll_output().is_some() {}
        e
    }

    /// (streams opened, to where; join retries scheduled)
    fn drain(e: &mut Engine) -> (Vec<SocketAddr>, usize) {
        let (mut dialled, mut joins) = (Vec::new(), 0);
        while let Some(out) = e.poll_output() {
            match out {
                Output::Connect { to, .. } => dialled.push(to),
                Output::Schedule {
                    timer: Timer::Join, ..
                } => joins += 1,
                _ => {}
            }
        }
        (dialled, joins)
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn names_found_later_are_joined_through_with_one_retry_chain() {
        let mut e = engine();
        // Alone, no seed: the first address found is dialled, retries start.
        assert_eq!(e.set_named_seeds(2_000, &[addr(7001)]), 1);
        assert_eq!(drain(&mut e), (vec![addr(7001)], 1));
        // More found before the retry: dialled, but no second chain.
        assert_eq!(e.set_named_seeds(2_100, &[addr(7001), addr(7002)]), 1);
        assert_eq!(drain(&mut e), (vec![addr(7002)], 0));
        // The retry dials both, and schedules the next one.
        e.handle_timer(3_000, Timer::Join);
        let (dialled, joins) = drain(&mut e);
        assert!(dialled.contains(&addr(7001)) && dialled.contains(&addr(7002)));
        assert_eq!(joins, 1);
        // This node's own address is never a seed.
        assert_eq!(e.set_named_seeds(3_100, &[addr(7000)]), 0);
    }

    #[test]
    fn the_latest_lookups_replace_the_earlier_ones() {
        let mut e = engine();
        // A name that gave many dead addresses, past the cap...
        let dead: Vec<SocketAddr> = (10_000..10_400).map(addr).collect();
        e.set_named_seeds(2_000, &dead);
        let (dialled, _) = drain(&mut e);
        assert_eq!(dialled.len(), super::MAX_NAMED_SEEDS);
        // ...and later the live one: it is dialled at once.
        assert_eq!(e.set_named_seeds(3_000, &[addr(7001)]), 1);
        assert_eq!(drain(&mut e).0, vec![addr(7001)]);
    }
}
