//! Streams refused or cut for a security reason (a key, plaintext, a
//! peer that stalled its setup): counted, logged at a limited rate under
//! this module's target, and told to the join or exchange they ended.

use crate::stream::Refusal;

use super::delta::lock;
use super::{ConnId, Engine};

impl Engine {
    /// A stream with `peer` (when the runtime knows it) was refused or cut
    /// for a security reason.
    pub fn handle_stream_refused(
        &mut self,
        now_ms: u64,
        conn: ConnId,
        why: Refusal,
        peer: Option<std::net::SocketAddr>,
    ) {
        self.tick(now_ms);
        {
            let mut sh = lock(&self.shared);
            let c = &mut sh.counters;
            match why {
                Refusal::Plaintext => c.plaintext_streams_refused += 1,
                Refusal::UnknownKey(_) | Refusal::NoKeyring => c.stream_unknown_keys += 1,
                Refusal::KeyRejected { .. } => c.key_rejections += 1,
                Refusal::PeerNotSealing | Refusal::Auth => c.stream_auth_errors += 1,
                Refusal::Stalled | Refusal::MadeWay => c.streams_stalled += 1,
            }
        }
        // Which peer, so that an operator finds the node behind.
        let peer = peer.or_else(|| self.conns.get(&conn).and_then(|x| x.peer));
        let refused_by = peer;
        let peer = move || peer.map_or_else(String::new, |a| format!(" (peer {a})"));
        // A stream this node dialled was not set up, not refused: its peer
        // may be frozen or not a tribe node at all.
        let dialled = self.conns.get(&conn).is_some_and(|x| x.initiator);
        let what = if dialled {
            "stream to a peer not set up"
        } else {
            "stream refused"
        };
        match why {
            // This node cannot take part at all: an error, not a warning.
            Refusal::KeyRejected { rejected, proven } => {
                if let Some(addr) = refused_by {
                    self.key_refused = Some((addr, now_ms));
                }
                if !self.try_another_key(now_ms, rejected, proven) {
                    if self.log_due("key_rejected") {
                        tracing::error!("{why}{}", peer());
                    }
                } else if self.join_again_sealed_anew(conn) {
                    // Not the join's failure: it goes on with the key the
                    // peer proved (a current key installed just before the
                    // join, on a node still sealing with a removed one).
                    self.handle_stream_closed(now_ms, conn);
                    return;
                }
            }
            Refusal::Plaintext => {
                warn_limited!(self, "plaintext_stream", || format!("stream refused: {why}{}", peer()))
            }
            // Its own slot: a flood of idle connections would otherwise
            // hide a real peer's refusal for keys or label.
            Refusal::Stalled | Refusal::MadeWay => {
                warn_limited!(self, "stream_stalled", || format!("{what}: {why}{}", peer()))
            }
            _ => warn_limited!(self, "stream_auth", || format!("stream refused: {why}{}", peer())),
        }
        self.note_why(conn, why.to_string());
        self.handle_stream_closed(now_ms, conn);
    }

    /// A peer this node dialled refused its primary, `rejected`, and proved
    /// it holds `shared`, with which the exchange was then sealed: the two
    /// sides of a partition that each made a key of their own primary, or
    /// a node behind a rotation. Counted and told as a refusal; this node
    /// takes `shared` when a refusal would make it (see `try_another_key`).
    /// Else the exchange carries the cluster's keys and primary record
    /// across, and the later primary wins on both sides.
    pub fn handle_sealed_with_shared(
        &mut self,
        now_ms: u64,
        rejected: crate::crypto::KeyId,
        shared: crate::crypto::KeyId,
        peer: std::net::SocketAddr,
    ) {
        self.tick(now_ms);
        lock(&self.shared).counters.key_rejections += 1;
        self.key_refused = Some((peer, now_ms));
        if !self.try_another_key(now_ms, rejected, Some(shared)) && self.log_due("key_rejected_shared") {
            tracing::warn!(
                %peer,
                refused = %rejected,
                shared = %shared,
                "a peer does not hold this node's key {rejected} but holds key {shared}, which this node holds too: exchanges with it are sealed with {shared} until the tribe's primary record (the later `tribe keys use`) settles one key for every node"
            );
        }
        self.after_change();
    }
}
