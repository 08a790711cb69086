//! Hybrid logical clock: versions that order writes across nodes even when
//! wall clocks disagree a little, and never go backwards on one node.

use serde::{Deserialize, Serialize};

/// A version `(physical ms, counter, node)`, totally ordered in that order.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Hlc {
    /// Wall-clock milliseconds since the Unix epoch (as the writer saw them).
    pub millis: u64,
    /// Tie-breaker for writes within the same millisecond.
    pub counter: u32,
    /// The writing node: makes concurrent versions distinct.
    pub node: String,
}

/// Issues versions for one node.
#[derive(Debug, Clone)]
pub struct Clock {
    node: String,
    millis: u64,
    counter: u32,
}

impl Clock {
    /// A clock for `node` that has seen nothing yet.
    pub fn new(node: &str) -> Self {
        Clock {
            node: node.to_string(),
            millis: 0,
            counter: 0,
        }
    }

    /// A fresh version later than every version issued or observed so far.
    pub fn tick(&mut self, now_ms: u64) -> Hlc {
        if now_ms > self.millis {
            self.millis = now_ms;
            self.counter = 0;
        } else {
            self.bump_counter();
        }
        Hlc {
            millis: self.millis,
            counter: self.counter,
            node: self.node.clone(),
        }
    }

    /// Moves the clock past a version seen from a peer, so that our next write
    /// orders after it. Callers must refuse versions too far in the future first.
    pub fn observe(&mut self, seen: &Hlc) {
        if seen.millis > self.millis {
            self.millis = seen.millis;
            self.counter = seen.counter;
        } else if seen.millis == self.millis && seen.counter > self.counter {
            self.counter = seen.counter;
        }
    }

    /// The latest point issued or observed: every later [`Clock::tick`]
    /// orders after it.
    pub fn latest(&self) -> (u64, u32) {
        (self.millis, self.counter)
    }

    fn bump_counter(&mut self) {
        // On counter overflow borrow the next millisecond rather than wrap.
        match self.counter.checked_add(1) {
            Some(c) => self.counter = c,
            None => {
                self.millis += 1;
                self.counter = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_strictly_increasing_even_when_time_stalls_or_goes_back() {
        let mut c = Clock::new("a");
        let a = c.tick(100);
        let b = c.tick(100);
        let d = c.tick(50);
        assert!(a < b && b < d);
    }

    #[test]
    fn observing_a_later_version_orders_our_next_write_after_it() {
        let mut c = Clock::new("a");
        let remote = Hlc {
            millis: 1_000,
            counter: 7,
            node: "b".into(),
        };
        c.observe(&remote);
        let next = c.tick(10);
        assert!(next > remote);
    }
}
