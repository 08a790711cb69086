//! Clock skew: every exchange carries the sender's clock; the offsets tell
//! this node how far its clock is from its peers'. A large offset is
//! reported (event, log line, counter); the median offset moves the horizon
//! for accepting versions, so a node with a slow clock never refuses its
//! peers' writes. Writes are never refused for skew below the horizon
//! ([`crate::Config::max_clock_skew`]), so a node with a fast clock is heard.

use super::delta::lock;
use super::{Engine, Event, CLOCK_SKEW_REPORT, MAX_CLOCK_SAMPLES};


impl Engine {
    /// Records the clock reading `their_ms` that `peer` sent just now.
    pub(super) fn sample_clock(&mut self, peer: &str, their_ms: u64) {
        // Just after a gap in this node's running, the frame may have
        // waited in the socket through it.
        if peer == self.name || self.elapsed_ms.is_some_and(|e| e < self.clock_samples_from_ms) {
            return;
        }
        let now = self.now_ms();
        let offset = clamp_i64(i128::from(their_ms) - i128::from(now));
        if self.clock_offsets.len() >= MAX_CLOCK_SAMPLES && !self.clock_offsets.contains_key(peer) {
            return;
        }
        self.clock_offsets.insert(peer.to_string(), offset);
        self.follow_peers_clocks();
        self.report_skew(peer, offset);
    }

    /// A peer whose identity was refused as from beyond the horizon (its
    /// start time, `generation`, ahead of this node's clock): reported as a
    /// skewed clock, naming it, since it is refused before its clock is
    /// sampled (it cannot join, and only this side can say why).
    pub(super) fn report_ahead(&mut self, peer: &str, generation: u64) {
        // As many as clocks sampled: made-up names (a plaintext tribe, or
        // a key holder) must not grow the set, nor the log, without end.
        if self.skewed.len() >= MAX_CLOCK_SAMPLES && !self.skewed.contains(peer) {
            return;
        }
        let now = self.now_ms();
        self.report_skew(peer, clamp_i64(i128::from(generation) - i128::from(now)));
    }

    /// Reports a peer's clock `offset` ms off this node's, once until it
    /// comes back within half the bound.
    fn report_skew(&mut self, peer: &str, offset: i64) {
        let bound = CLOCK_SKEW_REPORT.as_millis() as i64;
        if offset.unsigned_abs() > bound as u64 {
            if self.skewed.insert(peer.to_string()) {
                let (max_skew_ms, beyond) = {
                    let mut sh = lock(&self.shared);
                    sh.counters.clock_skew_reports += 1;
                    // A peer ahead of this node's horizon: its writes are
                    // refused here (one behind is heard all the same).
                    let beyond = sh.now_ms.saturating_add_signed(offset) > sh.horizon_ms();
                    (sh.max_skew_ms, beyond)
                };
                if beyond {
                    tracing::warn!(
                        peer,
                        offset_ms = offset,
                        "peer clock is off this node's clock by more than the clock skew taken \
                         ({} s): writes and generations from beyond it are refused; fix the clocks",
                        max_skew_ms / 1000
                    );
                } else if offset < 0 && offset.unsigned_abs() > max_skew_ms {
                    // This node is the one ahead: the peer's horizon is
                    // behind this node's writes.
                    tracing::warn!(
                        peer,
                        offset_ms = offset,
                        "this node's clock runs ahead of the peer's by more than the clock skew taken \
                         ({} s): this node's writes and generations are refused there, unless the \
                         peer follows this node's clock (a tribe of two follows its one peer); fix \
                         the clocks",
                        max_skew_ms / 1000
                    );
                } else {
                    tracing::warn!(
                        peer,
                        offset_ms = offset,
                        "peer clock is off this node's clock; fix the clocks (writes still flow, the faster clock wins ties)"
                    );
                }
                self.emit(Event::ClockSkew {
                    peer: peer.to_string(),
                    offset_ms: offset,
                });
            }
        } else if offset.unsigned_abs() < (bound / 2) as u64 {
            // Fixed: report again if it drifts off later.
            self.skewed.remove(peer);
        }
    }

    /// Forgets the clock of a node that was reaped.
    pub(super) fn forget_clock(&mut self, peer: &str) {
        self.clock_offsets.remove(peer);
        self.skewed.remove(peer);
        self.follow_peers_clocks();
    }

    /// Takes the lower median of the peers' offsets as the tribe's time:
    /// among three or more, one peer far off cannot move it; with one or
    /// two (before it joined, or a small tribe) the node follows them, as
    /// a node with a clock hours behind refuses every peer's generation
    /// otherwise.
    fn follow_peers_clocks(&mut self) {
        let offset = lower_median(self.clock_offsets.values().copied()).unwrap_or(0);
        let mut sh = lock(&self.shared);
        sh.cluster_offset_ms = offset;
        sh.counters.clock_offset_ms = offset;
    }
}

fn clamp_i64(x: i128) -> i64 {
    x.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
}

/// The lower median; none of no values.
fn lower_median(values: impl Iterator<Item = i64>) -> Option<i64> {
    let mut v: Vec<i64> = values.collect();
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    Some(v[(v.len() - 1) / 2])
}

#[cfg(test)]
mod tests {
    use super::lower_median;

    /// Frames that waited in the listen backlog while the node could not
    /// accept (out of descriptors) carry old clocks: none is sampled until
    /// a while after the last refusal; then a skewed peer is reported.
    #[test]
    fn clocks_from_the_backlog_of_refused_accepts_are_not_sampled() {
        let mut engine = super::Engine::started_for_test(&crate::Config::new("n"));
        engine.set_elapsed_ms(10_000);
        engine.accept_failed();
        let an_hour_ahead = 1_000 + 3_600_000;
        engine.sample_clock("p", an_hour_ahead);
        assert_eq!(engine.counters().clock_skew_reports, 0);
        engine.set_elapsed_ms(10_000 + super::super::STALE_FRAMES_READ_MS);
        engine.sample_clock("p", an_hour_ahead);
        assert_eq!(engine.counters().clock_skew_reports, 1);
    }

    #[test]
    fn one_liar_among_three_does_not_move_the_median() {
        assert_eq!(lower_median([0, 1, i64::MAX].into_iter()), Some(1));
        assert_eq!(lower_median([i64::MIN, 0, 1].into_iter()), Some(0));
        assert_eq!(
            lower_median([600_000, 600_000, 600_000, 0].into_iter()),
            Some(600_000)
        );
        assert_eq!(lower_median([5, 0].into_iter()), Some(0));
        assert_eq!(lower_median([5].into_iter()), Some(5));
        assert_eq!(lower_median([].into_iter()), None);
    }
}
