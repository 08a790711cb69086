//! New generations this node takes because peers found it down while it
//! ran. Once in a while that is a partition healing; again and again, its
//! peers do not hear its gossip (UDP dropped while the TCP streams through
//! which it rejoins pass), which SWIM alone never tells.

use std::collections::VecDeque;

/// Renewals within [`WINDOW_MS`] that are warned about.
pub(super) const WARNED: usize = 3;
/// The window, in ms (engine clock).
pub(super) const WINDOW_MS: u64 = 5 * 60_000;

/// The last [`WARNED`] renewals' times.
#[derive(Debug, Default)]
pub(super) struct Renewals(VecDeque<u64>);

impl Renewals {
    /// Notes a renewal at `now_ms`; true when it makes [`WARNED`] within
    /// [`WINDOW_MS`].
    pub(super) fn note(&mut self, now_ms: u64) -> bool {
        self.0.push_back(now_ms);
        while self.0.len() > WARNED {
            self.0.pop_front();
        }
        self.0.len() == WARNED
            && self
                .0
                .front()
                .is_some_and(|&first| now_ms.saturating_sub(first) <= WINDOW_MS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_renewals_within_the_window_are_warned_about() {
        let mut r = Renewals::default();
        assert!(!r.note(0));
        assert!(!r.note(60_000));
        assert!(r.note(120_000));
        assert!(r.note(130_000), "each further one within the window too");
        // Spread over more than the window: a partition healing now and
        // then.
        let mut spread = Renewals::default();
        for at in [0, WINDOW_MS, 2 * WINDOW_MS, 3 * WINDOW_MS] {
            assert!(!spread.note(at + 1));
        }
    }
}
