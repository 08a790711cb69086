//! A short, adaptive spin before a thread blocks for something that
//! usually comes within microseconds.
//!
//! A thread that blocks gives its CPU up; on a virtual machine whose idle
//! CPUs halt, waking it again costs tens of microseconds, more than a
//! whole loopback call (docs/benchmarks.md, "A caller and a host that look
//! again before they block"). So a thread that waits for an answer or an
//! event first looks again for up to a window, the way the guest kernel's
//! `haltpoll` governor polls before it halts, and adapts that window the
//! same way: a wait the window caught keeps it, a short wait it missed
//! doubles it (up to [`MAX`]), and a long wait halves it down to none, as
//! does a wait that even the whole window missed (an answer from across a
//! network, later than any spin would catch). So a thread that waits long
//! (an idle daemon, many calls in flight sharing two cores) soon spins not
//! at all, and one in a quick exchange of calls spins through each of them
//! instead of sleeping.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The longest spin, in microseconds.
const MAX: u32 = 50;
/// The first window after none, in microseconds.
const START: u32 = 10;
/// A wait up to this long (µs) is one a longer window could have caught
/// once both sides spin: it grows the window. A longer one shrinks it.
const WORTH: u32 = 2 * MAX;

/// How long a thread looks again before it blocks, adapted to the waits
/// it saw. Shared by the threads waiting on one thing, of which one spins
/// at a time (the others would only look at the same thing); a race
/// between two updates only loses one of them.
#[derive(Debug, Default)]
pub(crate) struct SpinWindow {
    micros: AtomicU32,
    spinning: AtomicBool,
}

impl SpinWindow {
    /// Looks with `look` until it finds something, for up to the window
    /// and `limit`. Never looks when the window is closed or another
    /// thread spins on it.
    pub(crate) fn spin<T>(
        &self,
        limit: Duration,
        mut look: impl FnMut() -> Option<T>,
    ) -> Option<T> {
        let window = Duration::from_micros(self.micros.load(Ordering::Relaxed).into()).min(limit);
        if window.is_zero() || self.spinning.swap(true, Ordering::Acquire) {
            return None;
        }
        let begun = Instant::now();
        let found = loop {
            if let Some(found) = look() {
                break Some(found);
            }
            if begun.elapsed() >= window {
                break None;
            }
            std::hint::spin_loop();
        };
        self.spinning.store(false, Ordering::Release);
        found
    }

    /// Adapts the window to a whole wait (spin and block) that just ended
    /// with what it waited for.
    pub(crate) fn waited(&self, wait: Duration) {
        let wait = u32::try_from(wait.as_micros()).unwrap_or(u32::MAX);
        let now = self.micros.load(Ordering::Relaxed);
        let next = if wait <= now {
            return;
        } else if wait <= WORTH && now < MAX {
            (now * 2).clamp(START, MAX)
        } else if now / 2 < START {
            0
        } else {
            now / 2
        };
        self.micros.store(next, Ordering::Relaxed);
    }

    #[cfg(test)]
    fn micros(&self) -> u32 {
        self.micros.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    /// Short waits open the window up to its bound, a wait it caught keeps
    /// it, long waits close it again.
    #[test]
    fn the_window_follows_the_waits() {
        let w = SpinWindow::default();
        assert_eq!(w.micros(), 0);
        w.waited(us(70));
        assert_eq!(w.micros(), START);
        for _ in 0..3 {
            w.waited(us(70));
        }
        assert_eq!(w.micros(), MAX);
        w.waited(us(20));
        assert_eq!(w.micros(), MAX, "a caught wait changes nothing");
        w.waited(us(70));
        assert_eq!(w.micros(), MAX / 2, "the whole window missed it");
        w.waited(us(70));
        assert_eq!(w.micros(), MAX);
        w.waited(us(5_000));
        assert_eq!(w.micros(), MAX / 2);
        for _ in 0..10 {
            w.waited(Duration::from_secs(1));
        }
        assert_eq!(w.micros(), 0, "long waits close it");
        w.waited(Duration::from_secs(u64::MAX / 4));
        assert_eq!(w.micros(), 0);
    }

    /// A closed window never looks; an open one looks until it finds
    /// something or the window (or the caller's limit) ends, one thread at
    /// a time.
    #[test]
    fn spinning_looks_within_the_window() {
        let w = SpinWindow::default();
        let mut looked = 0;
        assert_eq!(
            w.spin(Duration::from_secs(1), || {
                looked += 1;
                Some(())
            }),
            None
        );
        assert_eq!(looked, 0);
        for _ in 0..4 {
            w.waited(us(70));
        }
        assert_eq!(w.micros(), MAX);
        let mut left = 3;
        let found = w.spin(Duration::from_secs(1), || {
            left -= 1;
            (left == 0).then_some(7)
        });
        assert_eq!(found, Some(7));
        let begun = Instant::now();
        assert_eq!(w.spin(Duration::from_secs(1), || None::<()>), None);
        assert!(begun.elapsed() >= us(MAX.into()));
        assert_eq!(
            w.spin(Duration::ZERO, || -> Option<()> {
                panic!("looked past a zero limit")
            }),
            None
        );
        let inner = w.spin(Duration::from_secs(1), || {
            Some(w.spin(Duration::from_secs(1), || Some(())))
        });
        assert_eq!(inner, Some(None), "a second thread spun at once");
    }
}
