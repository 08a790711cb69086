//! A formed cluster without its formation: the simulator gives each engine
//! every member and every node record at once, as if the mass join had
//! already happened, so that steady-state scenarios at thousands of nodes
//! need not first simulate N records gossiped to N nodes.

use foca::Member;

use super::delta::lock;
use super::identity::NodeId;
use super::Engine;
use crate::records::Key;
use crate::state::SharedWrite;

impl Engine {
    /// This node's own record, as published at start, shared.
    pub(crate) fn own_record(&self) -> Option<SharedWrite> {
        lock(&self.shared)
            .state
            .shared(&Key::Node(self.name.clone()))
    }

    /// Learns `members` (alive) and `records` without spreading either:
    /// the rest of the cluster knows them too. Both are shared with the
    /// engines they came from, not copied.
    pub(crate) fn preload(&mut self, now_ms: u64, members: &[NodeId], records: &[SharedWrite]) {
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
            for write in records {
                sh.accept_shared(write.clone());
            }
        }
        self.after_change();
    }
}
