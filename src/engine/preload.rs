//! A formed cluster without its formation: the simulator gives each engine
//! every member and every node record at once, as if the mass join had
//! already happened, so that steady-state scenarios at thousands of nodes
//! need not first simulate N records gossiped to N nodes.

use foca::Member;

use super::delta::lock;
use super::identity::NodeId;
use super::Engine;
use crate::records::{Entry, Key};

impl Engine {
    /// This node's own record, as published at start.
    pub(crate) fn own_record(&self) -> Option<(Key, Entry)> {
        let key = Key::Node(self.name.clone());
        let entry = lock(&self.shared).state.entry(&key)?.clone();
        Some((key, entry))
    }

    /// Learns `members` (alive) and `records` without spreading either:
    /// the rest of the cluster knows them too.
    pub(crate) fn preload(&mut self, now_ms: u64, members: &[NodeId], records: &[(Key, Entry)]) {
        self.tick(now_ms);
        let me = self.swim.identity().clone();
        let others = members
            .iter()
            .filter(|id| **id != me)
            .cloned()
            .map(Member::alive);
        if let Err(e) = self.swim.apply_many(others, false, &mut self.swim_rt) {
            tracing::debug!(error = %e, "preload: members refused");
        }
        {
            let mut sh = lock(&self.shared);
            for (key, entry) in records {
                sh.accept_remote(key.clone(), entry.clone());
            }
        }
        self.after_change();
    }
}
