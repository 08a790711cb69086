//! News faster than the gossip tick: when an input brings membership news
//! (a member up or down) or queues a new broadcast, the engine gossips at
//! once instead of waiting for the next tick, so an update crosses the
//! cluster in a few network round trips rather than a few ticks. A gap
//! between such early rounds bounds what a burst of changes can send; at
//! rest nothing changes, so nothing more is sent.

/// When to gossip early.
#[derive(Debug)]
pub(super) struct Forwarder {
    /// Least time between two early rounds, ms.
    gap_ms: u64,
    /// When the last early round went out (ms; `None` before the first).
    last_ms: Option<u64>,
    /// Broadcasts queued after the last look.
    last_backlog: usize,
    /// A member came up or went down since the last look.
    member_news: bool,
}

impl Forwarder {
    pub(super) fn new(gap_ms: u64) -> Self {
        Forwarder {
            gap_ms,
            last_ms: None,
            last_backlog: 0,
            member_news: false,
        }
    }

    /// Notes a member's change reported by the membership protocol.
    pub(super) fn member_changed(&mut self) {
        self.member_news = true;
    }

    /// Whether to gossip now, given the broadcast backlog after the input.
    /// A growing backlog means something new was queued.
    pub(super) fn should_gossip(&mut self, now_ms: u64, backlog: usize) -> bool {
        let news = std::mem::take(&mut self.member_news) || backlog > self.last_backlog;
        self.last_backlog = backlog;
        let due = self
            .last_ms
            .is_none_or(|last| now_ms.saturating_sub(last) >= self.gap_ms);
        if news && due && backlog > 0 {
            self.last_ms = Some(now_ms);
            return true;
        }
        false
    }

    /// Records the backlog after an early round (it may have shrunk).
    pub(super) fn sent(&mut self, backlog: usize) {
        self.last_backlog = backlog;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn news_goes_out_at_once_and_bursts_are_spaced() {
        let mut f = Forwarder::new(50);
        assert!(!f.should_gossip(0, 0), "nothing queued");
        assert!(f.should_gossip(10, 2), "a new broadcast");
        assert!(!f.should_gossip(20, 3), "within the gap");
        assert!(!f.should_gossip(70, 3), "nothing new since");
        f.member_changed();
        assert!(f.should_gossip(80, 3), "a member changed");
        assert!(!f.should_gossip(200, 1), "the backlog shrank: no news");
    }
}
