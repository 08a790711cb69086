//! Telling a suspect that it is suspected (Lifeguard's "buddy system").
//!
//! foca starts a suspicion on the node whose probe failed, and only that
//! node's timer declares the member down. Whether the suspect hears of the
//! suspicion, and whether that node then hears the refutation, is left to
//! gossip, and under heavy loss many suspicions compete for the fixed room
//! in each packet. So the node that suspects a member also pings it
//! directly, with the suspicion piggybacked, at once and on every
//! housekeeping tick until the suspicion ends. The suspect refutes before
//! it answers, and its ack carries the new incarnation straight back to
//! the one node whose timer would have declared it down. In the simulator
//! (500 nodes, 30–50 % loss) suspicions end sooner and less of them is
//! gossiped: 4–10 % fewer events for the same virtual time.

use std::sync::Arc;

use foca::Incarnation;

use super::delta::lock;
use super::{codec, Engine, NodeId};

/// Suspicions this node started and still pings about; a bound, far above
/// the one suspicion a probe period can start.
const MAX_OPEN: usize = 64;

impl Engine {
    /// foca started a suspicion timer: this node's probe of `id` failed.
    pub(super) fn suspicion_started(&mut self, id: &NodeId, incarnation: Incarnation) {
        let open = self
            .buddies
            .get(&id.name)
            .is_some_and(|(b, inc)| b == id && *inc == incarnation);
        if open || self.buddies.len() >= MAX_OPEN {
            return;
        }
        self.buddies
            .insert(id.name.clone(), (id.clone(), incarnation));
        self.tell_suspect(&id.clone(), incarnation);
    }

    /// Pings again each member still suspected at the incarnation this
    /// node suspected; forgets the others. `suspects` are the members foca
    /// holds as suspect, with their incarnations.
    pub(super) fn retell_suspects(&mut self, suspects: &[(NodeId, Incarnation)]) {
        if self.buddies.is_empty() {
            return;
        }
        self.buddies
            .retain(|_, (id, inc)| suspects.iter().any(|(s, i)| s == &*id && *i == *inc));
        let open: Vec<(NodeId, Incarnation)> = self.buddies.values().cloned().collect();
        for (id, incarnation) in open {
            self.tell_suspect(&id, incarnation);
        }
    }

    fn tell_suspect(&mut self, id: &NodeId, incarnation: Incarnation) {
        let own = self.swim.identity().clone();
        match codec::suspicion_ping(&own, id, incarnation) {
            Ok(packet) => {
                lock(&self.shared).counters.suspects_told += 1;
                self.send_swim_packet(id.addr, &packet);
            }
            Err(e) => tracing::debug!(error = %e, "could not encode a suspicion ping"),
        }
    }
}

/// Open suspicions by member name: the suspected identity and incarnation.
pub(super) type Buddies = std::collections::BTreeMap<Arc<str>, (NodeId, Incarnation)>;
