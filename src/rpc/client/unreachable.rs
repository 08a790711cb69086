//! Hosts this node could not reach for calls: tried after the others for
//! a while, so that calls do not keep knocking on a dead host (or one whose
//! TCP a firewall drops while its gossip passes) until SWIM declares it. A
//! host that stays unreachable is tried less and less often: each strike
//! doubles its wait, from [`UNREACHABLE_FOR`] up to 16 times as long, and
//! a connection that opens clears them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long a host that could not be reached once is tried after the
/// others.
pub const UNREACHABLE_FOR: Duration = Duration::from_secs(2);

/// Strikes past which the wait stops doubling (2 s × 16 = 32 s).
const MAX_DOUBLINGS: u32 = 4;

/// A host's strikes are forgotten once it has gone this long past its
/// wait without a new one.
const FORGET_AFTER: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy)]
struct Strikes {
    last: Instant,
    count: u32,
}

impl Strikes {
    fn wait(&self) -> Duration {
        UNREACHABLE_FOR * 2u32.pow(self.count.saturating_sub(1).min(MAX_DOUBLINGS))
    }
}

/// The hosts that could not be reached lately; shared with the tasks that
/// finish dials in the background.
#[derive(Debug, Clone, Default)]
pub struct Unreachable(Arc<Mutex<HashMap<SocketAddr, Strikes>>>);

impl Unreachable {
    fn lock(&self) -> MutexGuard<'_, HashMap<SocketAddr, Strikes>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `addr` could not be reached (a connect that failed, or that did not
    /// open within the call's time). Calls that fail together (waiting on
    /// one dial, or on one stream that closed) make one strike: a strike
    /// within the wait of the last one adds nothing.
    pub fn mark(&self, addr: SocketAddr) {
        let now = Instant::now();
        let mut map = self.lock();
        let count = match map.get(&addr) {
            Some(s) if s.last.elapsed() < s.wait() => return,
            Some(s) if s.last.elapsed() < s.wait() + FORGET_AFTER => s.count.saturating_add(1),
            _ => 1,
        };
        map.insert(addr, Strikes { last: now, count });
    }

    /// A connection to `addr` opened: its strikes are forgotten.
    pub fn clear(&self, addr: SocketAddr) {
        let mut map = self.lock();
        if !map.is_empty() {
            map.remove(&addr);
        }
    }

    /// Whether `addr` is to be tried after the others.
    pub fn is_recent(&self, addr: SocketAddr) -> bool {
        self.lock()
            .get(&addr)
            .is_some_and(|s| s.last.elapsed() < s.wait())
    }

    /// Forgets the hosts whose strikes have lapsed.
    pub fn prune(&self) {
        self.lock()
            .retain(|_, s| s.last.elapsed() < s.wait() + FORGET_AFTER);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each strike doubles the wait, up to 32 s; a connection that opens
    /// clears them.
    #[test]
    fn strikes_double_the_wait_and_an_open_connection_clears_them() {
        let u = Unreachable::default();
        let addr: SocketAddr = "10.0.0.1:7946".parse().unwrap();
        assert!(!u.is_recent(addr));
        // Calls failing together make one strike.
        for _ in 0..8 {
            u.mark(addr);
        }
        assert_eq!(u.lock()[&addr].wait(), UNREACHABLE_FOR);
        let mut waits = Vec::new();
        for _ in 0..6 {
            // Each strike after the last one's wait.
            let last = u.lock()[&addr].last;
            u.lock().get_mut(&addr).unwrap().last = last - UNREACHABLE_FOR * 16;
            u.mark(addr);
            waits.push(u.lock()[&addr].wait().as_secs());
        }
        assert_eq!(waits, [4, 8, 16, 32, 32, 32]);
        assert!(u.is_recent(addr));
        u.clear(addr);
        assert!(!u.is_recent(addr));
        u.mark(addr);
        assert_eq!(u.lock()[&addr].wait(), UNREACHABLE_FOR);
        u.prune();
        assert!(u.is_recent(addr), "a strike within its wait is kept");
    }
}
