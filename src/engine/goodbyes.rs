//! A member that leaves gracefully sends foca's down notice and its record
//! saying `left`; a record too large to ride on a datagram follows by TCP,
//! after the notice. A member found down without a suspicion here may be
//! leaving: its `MemberFailed` waits briefly for that record (a moment when
//! it rides gossip, longer when it follows by TCP), so that a graceful stop
//! is not told as a failure and then as a leave.

use super::delta::lock;
use super::{Engine, Event};
use crate::records::Key;

/// How long a member's failure waits for its record saying it left, when
/// that record follows by TCP.
const LEAVE_WORD_MS: u64 = 3_000;
/// ... and when it rides on gossip: it may come a moment after the down
/// notice, in another datagram or from another member (nodes stopped
/// together relay each other's notices). The wait ends at the next
/// housekeeping tick after it, within a second.
const LEAVE_WORD_GOSSIP_MS: u64 = 200;

impl Engine {
    /// How long the word that `name` (of `generation`), found down, left
    /// may still take to come (ms): none when it was seen suspect here (a
    /// crash is, most often, before it is found down; a goodbye is not); a
    /// moment when its record rides on gossip (it mostly comes with the
    /// notice, but a notice relayed by another member can come first);
    /// longer when no record of it is here yet or it comes by TCP.
    pub(super) fn leave_word_wait(&self, name: &str, generation: u64) -> Option<u64> {
        let suspected = self
            .suspects_seen
            .iter()
            .any(|(n, g)| **n == *name && *g == generation);
        if suspected {
            return None;
        }
        match self.record_rides_gossip(name) {
            Some(true) => Some(LEAVE_WORD_GOSSIP_MS),
            _ => Some(LEAVE_WORD_MS),
        }
    }

    /// Whether the record of node `name` is small enough to ride on gossip
    /// (see [`Engine::spread`]); `None` when there is none here.
    pub(super) fn record_rides_gossip(&self, name: &str) -> Option<bool> {
        let key = Key::Node(name.to_string());
        let sh = lock(&self.shared);
        let entry = sh.state.entry(&key)?;
        Some(crate::wire::encode(&(&key, entry)).len() <= super::MAX_DELTA_LEN)
    }

    /// Tells that `name` failed once its record had the time to say it
    /// left instead (see [`Engine::say_overdue_failures`]).
    pub(super) fn defer_failed(&mut self, name: String, wait_ms: u64) {
        let due = self.now_ms().saturating_add(wait_ms);
        self.failures_unsaid.insert(name, due);
    }

    /// The record of `name` says it left: its failure is not told.
    pub(super) fn left_after_all(&mut self, name: &str) {
        self.failures_unsaid.remove(name);
    }

    /// `name` is up again: a failure not told yet is told first, so that
    /// the events say it went away and came back.
    pub(super) fn say_failure_before_up(&mut self, name: &str) {
        if self.failures_unsaid.remove(name).is_some() {
            self.emit(Event::MemberFailed {
                name: name.to_string(),
            });
        }
    }

    /// Tells the failures whose wait is over, of members still failed.
    pub(super) fn say_overdue_failures(&mut self) {
        if self.failures_unsaid.is_empty() {
            return;
        }
        let now = self.now_ms();
        let due: Vec<String> = self
            .failures_unsaid
            .iter()
            .filter(|(_, &at)| at <= now)
            .map(|(name, _)| name.clone())
            .collect();
        for name in due {
            self.failures_unsaid.remove(&name);
            let failed = self
                .members
                .get(&name)
                .is_some_and(|r| r.state == super::members::MemberState::Failed);
            if failed {
                self.emit(Event::MemberFailed { name });
            }
        }
    }
}
