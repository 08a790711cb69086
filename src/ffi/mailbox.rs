//! The queue between the node's runtime and the host: node events, incoming
//! calls and finished asynchronous calls wait here until the host takes
//! them on its own thread. An eventfd is readable exactly while something
//! waits (or once the node has stopped), so the host can poll it. Both
//! wake-ups cost a system call, so each is made only when someone can be
//! woken: the condvar only while a thread waits on it, the eventfd only
//! once the host has asked for it.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// Node events kept for a host that does not read them; more are dropped
/// (and counted). Calls and completions are bounded by the call limits.
pub(super) const MAX_NODE_EVENTS: usize = 65_536;

/// Whether an item may be dropped when the host falls behind.
pub(super) enum Class {
    /// A node event: dropped beyond [`MAX_NODE_EVENTS`].
    Droppable,
    /// An incoming call or a completion: always kept.
    Kept,
}

pub(super) struct Mailbox<T> {
    state: Mutex<State<T>>,
    ready: Condvar,
    /// Wakes the tasks waiting in [`Mailbox::take_many_async`].
    arrived: tokio::sync::Notify,
    fd: EventFd,
    /// The poll group's notifier, told of every item and of the close.
    group: Option<std::sync::Arc<tokio::sync::Notify>>,
}

struct State<T> {
    items: VecDeque<T>,
    droppable: usize,
    closed: bool,
    dropped: u64,
    /// Threads waiting on the condvar.
    waiters: usize,
    /// Tasks waiting for [`Mailbox::arrived`].
    async_waiters: usize,
    /// Whether the host has the eventfd, so it must follow the queue.
    fd_live: bool,
}

/// What a wait ended with.
pub(super) enum Taken<T> {
    Item(T),
    Empty,
    Closed,
}

impl<T> Mailbox<T> {
    #[cfg(test)]
    pub(super) fn new() -> std::io::Result<Mailbox<T>> {
        Mailbox::in_group(None)
    }

    /// A mailbox whose items and close also notify `group`.
    pub(super) fn in_group(
        group: Option<std::sync::Arc<tokio::sync::Notify>>,
    ) -> std::io::Result<Mailbox<T>> {
        Ok(Mailbox {
            state: Mutex::new(State {
                items: VecDeque::new(),
                droppable: 0,
                closed: false,
                dropped: 0,
                waiters: 0,
                async_waiters: 0,
                fd_live: false,
            }),
            ready: Condvar::new(),
            arrived: tokio::sync::Notify::new(),
            fd: EventFd::new()?,
            group,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues an item; gives it back once the mailbox is closed, and drops
    /// a droppable one when the host is too far behind.
    pub(super) fn push(&self, item: T, class: Class) -> Result<(), T> {
        let mut state = self.lock();
        if state.closed {
            return Err(item);
        }
        if matches!(class, Class::Droppable) {
            if state.droppable >= MAX_NODE_EVENTS {
                state.dropped += 1;
                return Ok(());
            }
            state.droppable += 1;
        }
        if state.items.is_empty() && state.fd_live {
            self.fd.raise();
        }
        state.items.push_back(item);
        let waiting = state.waiters > 0;
        let waiting_tasks = state.async_waiters > 0;
        drop(state);
        if waiting {
            self.ready.notify_one();
        }
        if waiting_tasks {
            self.arrived.notify_one();
        }
        if let Some(group) = &self.group {
            group.notify_one();
        }
        Ok(())
    }

    /// Takes the next item, waiting up to `timeout` (`None`: until an item
    /// comes or the mailbox closes). Items queued before the close are
    /// still handed out.
    pub(super) fn take(
        &self,
        timeout: Option<Duration>,
        droppable: impl Fn(&T) -> bool,
    ) -> Taken<T> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut state = self.lock();
        loop {
            if let Some(item) = state.items.pop_front() {
                if droppable(&item) {
                    state.droppable -= 1;
                }
                if state.items.is_empty() && !state.closed && state.fd_live {
                    self.fd.lower();
                }
                return Taken::Item(item);
            }
            if state.closed {
                return Taken::Closed;
            }
            let left = match deadline {
                None => None,
                Some(deadline) => match deadline.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => Some(left),
                    _ => return Taken::Empty,
                },
            };
            state.waiters += 1;
            state = match left {
                None => self.ready.wait(state).unwrap_or_else(|p| p.into_inner()),
                Some(left) => {
                    self.ready
                        .wait_timeout(state, left)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
            };
            state.waiters -= 1;
        }
    }

    /// Like [`Mailbox::take`], then also takes up to `max - 1` more items
    /// already queued, without waiting for them: one wake and one lock for
    /// a burst of items.
    pub(super) fn take_many(
        &self,
        timeout: Option<Duration>,
        max: usize,
        droppable: impl Fn(&T) -> bool,
    ) -> Taken<Vec<T>> {
        let first = match self.take(timeout, &droppable) {
            Taken::Item(item) => item,
            Taken::Empty => return Taken::Empty,
            Taken::Closed => return Taken::Closed,
        };
        if max <= 1 {
            return Taken::Item(vec![first]);
        }
        let mut state = self.lock();
        // Sized to what is queued: a vector for `max` items would be a
        // large allocation on every wait (items are about 160 bytes).
        let mut taken = Vec::with_capacity(state.items.len().min(max - 1) + 1);
        taken.push(first);
        while taken.len() < max {
            let Some(item) = state.items.pop_front() else {
                break;
            };
            if droppable(&item) {
                state.droppable -= 1;
            }
            taken.push(item);
        }
        if state.items.is_empty() && !state.closed && state.fd_live {
            self.fd.lower();
        }
        Taken::Item(taken)
    }

    /// Like [`Mailbox::take_many`] with no timeout, as a future: for a
    /// host thread that drives the call streams while it waits.
    pub(super) async fn take_many_async(
        &self,
        max: usize,
        droppable: impl Fn(&T) -> bool,
    ) -> Taken<Vec<T>> {
        /// Counts the task out however the wait ends.
        struct Waiting<'a, T>(&'a Mailbox<T>);
        impl<T> Drop for Waiting<'_, T> {
            fn drop(&mut self) {
                self.0.lock().async_waiters -= 1;
            }
        }
        self.lock().async_waiters += 1;
        let _waiting = Waiting(self);
        loop {
            // Registered before looking, so an item pushed in between
            // still wakes this task (a notification that finds no task
            // waiting is kept for the next).
            let arrived = self.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            match self.take_many(Some(Duration::ZERO), max, &droppable) {
                Taken::Empty => arrived.await,
                taken => return taken,
            }
        }
    }

    /// Refuses new items and wakes every waiter; the fd stays readable.
    pub(super) fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        self.fd.raise();
        drop(state);
        self.ready.notify_all();
        self.arrived.notify_waiters();
        if let Some(group) = &self.group {
            group.notify_one();
        }
    }

    /// Node events dropped because the host fell behind.
    pub(super) fn dropped(&self) -> u64 {
        self.lock().dropped
    }

    /// The eventfd, which follows the queue from the first time it is asked
    /// for: raised now if items wait or the mailbox is closed.
    pub(super) fn fd(&self) -> std::ffi::c_int {
        let mut state = self.lock();
        if !state.fd_live {
            state.fd_live = true;
            if !state.items.is_empty() || state.closed {
                self.fd.raise();
            }
        }
        self.fd.0.as_raw_fd()
    }
}

/// A Linux eventfd used as a level: readable while raised.
struct EventFd(OwnedFd);

impl EventFd {
    fn new() -> std::io::Result<EventFd> {
        // SAFETY: eventfd takes no pointers; the result is checked below.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        Ok(EventFd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Makes the fd readable (called with the mailbox lock held, so raise
    /// and lower never interleave).
    fn raise(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to our own eventfd. A full
        // counter (EAGAIN) still leaves it readable, so the result is ignored.
        let _ = unsafe {
            libc::write(
                self.0.as_raw_fd(),
                (&one as *const u64).cast::<libc::c_void>(),
                8,
            )
        };
    }

    /// Makes the fd unreadable (mailbox lock held).
    fn lower(&self) {
        let mut count: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64 from our own non-blocking
        // eventfd; EAGAIN (already lowered) is fine.
        let _ = unsafe {
            libc::read(
                self.0.as_raw_fd(),
                (&mut count as *mut u64).cast::<libc::c_void>(),
                8,
            )
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn readable(m: &Mailbox<u32>) -> bool {
        let mut fds = [libc::pollfd {
            fd: m.fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        // SAFETY: one live pollfd, no wait.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 1, 0) };
        n == 1
    }

    #[test]
    fn take_many_hands_out_a_burst_in_order_and_lowers_the_fd() {
        let m = Mailbox::new().unwrap();
        for i in 0..5 {
            assert!(m.push(i, Class::Kept).is_ok());
        }
        assert!(readable(&m));
        let Taken::Item(first) = m.take_many(Some(Duration::ZERO), 3, |_| false) else {
            panic!("items were queued");
        };
        assert_eq!(first, vec![0, 1, 2]);
        assert!(readable(&m), "two items still wait");
        let Taken::Item(rest) = m.take_many(None, 64, |_| false) else {
            panic!("items were queued");
        };
        assert_eq!(rest, vec![3, 4]);
        assert!(!readable(&m), "the queue is empty");
        assert!(matches!(
            m.take_many(Some(Duration::from_millis(1)), 8, |_| false),
            Taken::Empty
        ));
    }

    #[test]
    fn take_many_counts_droppable_items_and_reports_the_close() {
        let m = Mailbox::new().unwrap();
        for i in 0..4 {
            assert!(m.push(i, Class::Droppable).is_ok());
        }
        m.close();
        let Taken::Item(all) = m.take_many(None, 10, |_| true) else {
            panic!("items queued before the close are handed out");
        };
        assert_eq!(all, vec![0, 1, 2, 3]);
        assert_eq!(m.lock().droppable, 0);
        assert!(matches!(m.take_many(None, 10, |_| true), Taken::Closed));
        assert!(readable(&m), "a closed mailbox stays readable");
    }

    #[test]
    fn the_fd_follows_the_queue_from_when_it_is_first_asked_for() {
        let m = Mailbox::new().unwrap();
        assert!(m.push(1, Class::Kept).is_ok());
        assert!(readable(&m), "an item queued before the fd was asked for");
        assert!(matches!(m.take(None, |_| false), Taken::Item(1)));
        assert!(!readable(&m));
        assert!(m.push(2, Class::Kept).is_ok());
        assert!(readable(&m));
        let late = Mailbox::<u32>::new().unwrap();
        late.close();
        assert!(
            readable(&late),
            "a mailbox closed before the fd was asked for"
        );
    }

    #[test]
    fn a_push_wakes_each_waiting_taker() {
        let m = std::sync::Arc::new(Mailbox::new().unwrap());
        let takers: Vec<_> = (0..3)
            .map(|_| {
                let m = m.clone();
                std::thread::spawn(
                    move || match m.take(Some(Duration::from_secs(20)), |_| false) {
                        Taken::Item(i) => i,
                        _ => panic!("no item within 20 s"),
                    },
                )
            })
            .collect();
        while m.lock().waiters < 3 {
            std::thread::yield_now();
        }
        for i in 0..3 {
            assert!(m.push(i, Class::Kept).is_ok());
        }
        let mut got: Vec<u32> = takers.into_iter().map(|t| t.join().unwrap()).collect();
        got.sort();
        assert_eq!(got, vec![0, 1, 2]);
        assert_eq!(m.lock().waiters, 0);
    }
}
