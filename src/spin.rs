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
//! doubles it (up to [`MAX`]; one it missed at [`MAX`] halves it), and a
//! long wait halves it down to none. [`GIVE_UP`] short waits missed in a
//! row (answers from across a network, or from a thread that does not
//! spin and is woken each time) close it for the next [`REST`] waits. So a
//! thread that waits long (an idle daemon, many calls in flight sharing
//! two cores) soon spins not at all, and one in a quick exchange of calls
//! spins through each of them instead of sleeping.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The longest spin, in microseconds.
const MAX: u32 = 50;
/// The first window after none, in microseconds.
const START: u32 = 10;
/// A wait up to this long (µs) is one a longer window could have caught
/// once both sides spin: it grows the window. A longer one shrinks it.
const WORTH: u32 = 2 * MAX;
/// Short waits missed in a row (opening the window from none takes four)
/// after which it closes for [`REST`] waits.
const GIVE_UP: u32 = 8;
/// Short waits the window stays closed for after it gave up; then it opens
/// again, in case the other end spins by then.
const REST: u32 = 64;

/// How long a thread looks again before it blocks, adapted to the waits
/// it saw. Shared by the threads waiting on one thing, of which one spins
/// at a time (the others would only look at the same thing); a race
/// between two updates only loses one of them.
#[derive(Debug, Default)]
pub(crate) struct SpinWindow {
    micros: AtomicU32,
    spinning: AtomicBool,
    /// Short waits missed in a row.
    missed: AtomicU32,
    /// Short waits left before the window may open again, after it missed
    /// [`GIVE_UP`] in a row.
    resting: AtomicU32,
}

/// What a spin gave.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Spun<T> {
    /// What it looked for.
    Found(T),
    /// Nothing within the window (none, when it is closed): the thread
    /// blocks next, and its whole wait is one to adapt the window to.
    Missed,
    /// Another thread spins on the window, or `look` need not be tried:
    /// this thread's wait says nothing about the window.
    Busy,
}

impl SpinWindow {
    /// Looks with `look` until it finds something, for up to the window
    /// and `limit`. Never looks when the window is closed or another
    /// thread spins on it. Between looks it yields its CPU: a thread it
    /// woke (the other end of a loopback call) is often placed on the
    /// waker's CPU, and would otherwise wait for the spin to end.
    pub(crate) fn spin<T>(&self, limit: Duration, mut look: impl FnMut() -> Option<T>) -> Spun<T> {
        /// Lets another thread spin also when `look` panics.
        struct Spinning<'a>(&'a AtomicBool);
        impl Drop for Spinning<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Release);
            }
        }
        let window = Duration::from_micros(self.micros.load(Ordering::Relaxed).into()).min(limit);
        if window.is_zero() {
            return Spun::Missed;
        }
        if self.spinning.swap(true, Ordering::Acquire) {
            return Spun::Busy;
        }
        let _spinning = Spinning(&self.spinning);
        let begun = Instant::now();
        loop {
            if let Some(found) = look() {
                return Spun::Found(found);
            }
            if begun.elapsed() >= window {
                return Spun::Missed;
            }
            std::thread::yield_now();
        }
    }

    /// Adapts the window to a whole wait (spin and block) that just ended,
    /// with what it waited for or with its timeout (a long wait, which
    /// closes the window).
    pub(crate) fn waited(&self, wait: Duration) {
        let wait = u32::try_from(wait.as_micros()).unwrap_or(u32::MAX);
        let now = self.micros.load(Ordering::Relaxed);
        if wait <= now || wait > WORTH {
            self.missed.store(0, Ordering::Relaxed);
        }
        let next = if wait <= now {
            return;
        } else if wait > WORTH {
            if now / 2 < START {
                0
            } else {
                now / 2
            }
        } else if self
            .resting
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                left.checked_sub(1)
            })
            .is_ok()
        {
            // Resting (two threads' updates at once never wrap it).
            return;
        } else if self.missed.fetch_add(1, Ordering::Relaxed) + 1 >= GIVE_UP {
            // Short waits that the window keeps missing: the other end
            // does not spin (its own waits are long), so ours only cost CPU.
            self.missed.store(0, Ordering::Relaxed);
            self.resting.store(REST, Ordering::Relaxed);
            0
        } else if now >= MAX {
            now / 2
        } else {
            (now * 2).clamp(START, MAX)
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
        w.waited(us(20));
        assert_eq!(w.micros(), MAX / 2, "a caught wait changes nothing");
        // Short waits missed in a row: it gives up and rests.
        let mut widths = Vec::new();
        for _ in 0..GIVE_UP {
            w.waited(us(70));
            widths.push(w.micros());
        }
        assert_eq!(widths, [MAX, MAX / 2, MAX, MAX / 2, MAX, MAX / 2, MAX, 0]);
        for _ in 0..REST {
            w.waited(us(70));
            assert_eq!(w.micros(), 0, "it opened before its rest ended");
        }
        for _ in 0..4 {
            w.waited(us(70));
        }
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
        let spun = w.spin(Duration::from_secs(1), || {
            looked += 1;
            Some(())
        });
        assert_eq!(spun, Spun::Missed);
        assert_eq!(looked, 0);
        for _ in 0..4 {
            w.waited(us(70));
        }
        assert_eq!(w.micros(), MAX);
        // How many looks fit in the window depends on the machine's load:
        // only the first one is sure.
        assert_eq!(w.spin(Duration::from_secs(1), || Some(7)), Spun::Found(7));
        let begun = Instant::now();
        let mut looks = 0;
        let spun = w.spin(Duration::from_secs(1), || {
            looks += 1;
            None::<()>
        });
        assert_eq!(spun, Spun::Missed);
        assert!(looks >= 1);
        assert!(begun.elapsed() >= us(MAX.into()));
        let spun = w.spin(Duration::ZERO, || -> Option<()> {
            panic!("looked past a zero limit")
        });
        assert_eq!(spun, Spun::Missed);
        let inner = w.spin(Duration::from_secs(1), || {
            Some(w.spin(Duration::from_secs(1), || Some(())))
        });
        assert_eq!(
            inner,
            Spun::Found(Spun::Busy),
            "a second thread spun at once"
        );
    }

    /// A look that panics leaves the window free for the next thread.
    #[test]
    fn a_panicking_look_frees_the_window() {
        let w = SpinWindow::default();
        for _ in 0..4 {
            w.waited(us(70));
        }
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            w.spin(Duration::from_secs(1), || -> Option<()> {
                panic!("a look failed")
            })
        }));
        assert!(panicked.is_err());
        assert_eq!(w.spin(Duration::from_secs(1), || Some(1)), Spun::Found(1));
    }
}
