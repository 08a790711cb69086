//! The member table: what this node knows of every other node's liveness,
//! from foca's notifications plus the *left* marker of node records.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::identity::NodeId;

/// Liveness of a member as this node sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MemberState {
    /// Answering probes.
    Alive,
    /// Missed probes; may still refute.
    Suspect,
    /// Declared down without saying goodbye.
    Failed,
    /// Said goodbye.
    Left,
}

impl MemberState {
    /// Lower-case name used in APIs.
    pub fn as_str(self) -> &'static str {
        match self {
            MemberState::Alive => "alive",
            MemberState::Suspect => "suspect",
            MemberState::Failed => "failed",
            MemberState::Left => "left",
        }
    }

    /// Alive or suspect: counted in live views.
    pub fn is_up(self) -> bool {
        matches!(self, MemberState::Alive | MemberState::Suspect)
    }
}

/// One row of the member table.
#[derive(Debug, Clone)]
pub struct Row {
    /// Current identity.
    pub id: NodeId,
    /// Down (failed or left) or up; suspicion comes from foca at read time.
    pub state: MemberState,
    /// When `state` last changed (steady clock, ms: a step of the wall
    /// clock moves no reaping).
    pub since_ms: u64,
}

/// Other nodes by name (this node is not in it).
#[derive(Debug, Default)]
pub struct Members {
    /// Keyed by the identity's own name (shared, not copied).
    rows: BTreeMap<Arc<str>, Row>,
    /// Rows up, kept in step: read after every notification, and a scan per
    /// read was quadratic in a mass join.
    up: usize,
    /// Grows whenever a member goes up or down (see [`Members::revision`]).
    revision: u64,
}

/// What a notification changed, for events.
#[derive(Debug, PartialEq, Eq)]
pub enum Change {
    /// A node became alive (new or back).
    Up,
    /// A node alive here is alive under a newer generation: it restarted
    /// (crashed and came back, or moved) before it was found down.
    Restarted,
    /// A node went down.
    Down,
    /// Nothing visible changed.
    None,
}

impl Members {
    /// Records that `id` is alive.
    pub fn up(&mut self, id: &NodeId, now_ms: u64) -> Change {
        match self.rows.get_mut(&*id.name) {
            Some(row) if row.state.is_up() => {
                // Renamed (restarted elsewhere under its name): what was
                // worked out from its address (call targets) is stale.
                if row.id == *id {
                    return Change::None;
                }
                let restarted = id.generation > row.id.generation;
                row.id = id.clone();
                self.revision += 1;
                if restarted {
                    row.since_ms = now_ms;
                    Change::Restarted
                } else {
                    Change::None
                }
            }
            Some(row) => {
                *row = Row {
                    id: id.clone(),
                    state: MemberState::Alive,
                    since_ms: now_ms,
                };
                self.up += 1;
                self.revision += 1;
                Change::Up
            }
            None => {
                self.up += 1;
                self.revision += 1;
                self.rows.insert(
                    id.name.clone(),
                    Row {
                        id: id.clone(),
                        state: MemberState::Alive,
                        since_ms: now_ms,
                    },
                );
                Change::Up
            }
        }
    }

    /// Records that `id` went down; `left` says whether it said goodbye.
    pub fn down(&mut self, id: &NodeId, left: bool, now_ms: u64) -> Change {
        let Some(row) = self.rows.get_mut(&*id.name) else {
            return Change::None;
        };
        // A down notice about an older identity says nothing of the current one.
        if row.id.generation > id.generation || !row.state.is_up() {
            return Change::None;
        }
        row.state = if left {
            MemberState::Left
        } else {
            MemberState::Failed
        };
        row.since_ms = now_ms;
        self.up -= 1;
        self.revision += 1;
        Change::Down
    }

    /// A failed member whose record now says it left is relabelled.
    pub fn mark_left(&mut self, name: &str) -> bool {
        match self.rows.get_mut(name) {
            Some(row) if row.state == MemberState::Failed => {
                row.state = MemberState::Left;
                true
            }
            _ => false,
        }
    }

    /// Removes members down for longer than `reap_after_ms`; returns their names.
    pub fn reap(&mut self, now_ms: u64, reap_after_ms: u64) -> Vec<String> {
        if self.up == self.rows.len() {
            // Nothing down: no scan (this runs every housekeeping tick).
            return Vec::new();
        }
        let expired: Vec<String> = self
            .rows
            .iter()
            .filter(|(_, r)| !r.state.is_up() && r.since_ms.saturating_add(reap_after_ms) <= now_ms)
            .map(|(n, _)| n.to_string())
            .collect();
        for name in &expired {
            self.rows.remove(name.as_str());
        }
        expired
    }

    /// Grows whenever a member goes up or down: what was worked out from
    /// who is up holds while it stays.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// The row of `name`.
    pub fn get(&self, name: &str) -> Option<&Row> {
        self.rows.get(name)
    }

    /// Every row, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Row)> {
        self.rows.iter().map(|(name, row)| (&**name, row))
    }

    /// Number of members that are up.
    pub fn count_up(&self) -> usize {
        debug_assert_eq!(
            self.up,
            self.rows.values().filter(|r| r.state.is_up()).count()
        );
        self.up
    }

    /// Identities of failed (not left) members, to retry after partitions.
    pub fn failed(&self) -> Vec<NodeId> {
        self.rows
            .values()
            .filter(|r| r.state == MemberState::Failed)
            .map(|r| r.id.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_up_count_follows_every_change() {
        let id = |name: &str, generation: u64| {
            NodeId::new(name, ([127, 0, 0, 1], 7000).into(), generation)
        };
        let mut m = Members::default();
        assert_eq!(m.up(&id("a", 1), 0), Change::Up);
        assert_eq!(m.up(&id("b", 1), 0), Change::Up);
        assert_eq!(m.up(&id("a", 1), 1), Change::None);
        assert_eq!(m.count_up(), 2);
        assert_eq!(m.down(&id("a", 1), false, 2), Change::Down);
        assert_eq!(m.down(&id("a", 1), false, 3), Change::None);
        assert_eq!(m.count_up(), 1);
        assert!(m.mark_left("a"));
        assert_eq!(m.count_up(), 1);
        assert_eq!(m.up(&id("a", 2), 4), Change::Up);
        assert_eq!(m.down(&id("b", 1), true, 5), Change::Down);
        assert_eq!(m.reap(100, 10), vec!["b".to_string()]);
        assert_eq!(m.count_up(), 1);
        assert_eq!(
            m.down(&id("a", 1), false, 101),
            Change::None,
            "older generation"
        );
        assert_eq!(m.count_up(), 1);
    }
}
