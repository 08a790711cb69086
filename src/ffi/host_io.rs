//! The runtime of a node's call streams, driven by the host's own threads.
//!
//! A call served by the host, or a completion of an asynchronous call, was
//! read by a runtime thread and handed to the host thread waiting for
//! events: every call woke two threads. So a node's call streams (those it
//! accepts, and those its asynchronous calls open) run on a current-thread
//! runtime instead, and a host thread waiting in `tribe_node_next_event(s)`
//! drives it: it reads the requests and answers from the sockets itself,
//! and wakes nobody.
//!
//! When no host thread waits (a host that polls the event fd, or one busy
//! in a handler), the caretaker thread drives the runtime. It steps in once
//! a whole tick has passed with no host thread entering or leaving a wait,
//! and steps back as soon as one comes to wait.
//!
//! Work started on a thread that does not drive the runtime (a call from
//! a Go goroutine while the polling thread waits) can be handed over with
//! [`HostIo::hand_over`]: a burst of it wakes the driving thread once,
//! where a spawn each would wake it every time. Work started while no
//! thread drives the runtime at all is left to the next one that does
//! ([`HostIo::defer`]): a spawn would write to the runtime's wake-up
//! eventfd for nobody, and the next wait would return at once for it.

use std::future::Future;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use tokio::runtime::Runtime;

/// How long the runtime may go undriven after a host thread stopped
/// waiting, before the caretaker drives it (up to two ticks).
const TICK: Duration = Duration::from_millis(5);

/// The same after a turn ([`HostIo::turn`]): a host that spins with turns
/// takes far less between them, and one that stopped may now sleep in its
/// own loop until the event fd wakes it, which takes the caretaker reading
/// the sockets.
const TURN_TICK: Duration = Duration::from_micros(100);

pub(super) struct HostIo {
    runtime: Option<Arc<Runtime>>,
    shared: Arc<Shared>,
    caretaker: Option<std::thread::JoinHandle<()>>,
    handed: Arc<Handed>,
}

/// Work to run on the runtime's thread.
pub(super) type Job = Box<dyn FnOnce() + Send>;

/// Work handed over and not yet run, and the task that runs it.
#[derive(Default)]
struct Handed {
    jobs: Mutex<Vec<Job>>,
    /// Wakes the task; notified only when the list stops being empty.
    arrived: tokio::sync::Notify,
}

impl Handed {
    fn lock(&self) -> MutexGuard<'_, Vec<Job>> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Runs handed-over work, a burst at a time, on the runtime's thread.
async fn run_handed(handed: Arc<Handed>) {
    loop {
        // Made before looking: a job handed over in between leaves a
        // permit, so this wait ends at once.
        let arrived = handed.arrived.notified();
        let jobs = std::mem::take(&mut *handed.lock());
        if jobs.is_empty() {
            arrived.await;
            continue;
        }
        for job in jobs {
            job();
        }
    }
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the caretaker from its sleep.
    changed: Condvar,
    /// Tells the caretaker, while it drives, to hand the runtime over.
    host_came: tokio::sync::Notify,
}

#[derive(Default)]
struct State {
    /// Host threads inside [`HostIo::drive`].
    hosts: usize,
    /// How many times a host thread left [`HostIo::drive`].
    exits: u64,
    /// Whether the caretaker drives the runtime.
    caretaker_driving: bool,
    /// How many times the caretaker let go of the runtime (for a host).
    let_go: u64,
    /// Whether a host thread asked the driving caretaker to hand the
    /// runtime over (cleared as it does): a wake-up without it is one left
    /// over from a hand-over already made.
    take_over: bool,
    /// Whether the caretaker sleeps until the last host thread leaves.
    caretaker_waits: bool,
    /// Host threads inside [`HostIo::turn`].
    turning: usize,
    /// Whether the last host thread to leave left a turn, not a wait.
    turned_last: bool,
    /// Set when work was kept for a thread to drive after a turn: the host
    /// that turned has gone on (answered a call, maybe to sleep in its own
    /// loop), so the caretaker drives at once, not after its countdown.
    drive_now: bool,
    /// Work started while no thread drove the runtime, for the next one
    /// that does to run from inside it.
    deferred: Vec<Job>,
    stop: bool,
}

impl State {
    /// Whether no thread drives the runtime (none can be woken by a spawn).
    fn undriven(&self) -> bool {
        self.hosts == 0 && self.turning == 0 && !self.caretaker_driving && !self.stop
    }
}

/// Runs work deferred until a thread drove the runtime; called inside the
/// runtime, so what it spawns is queued there without a wake-up.
fn run_deferred(jobs: Vec<Job>) {
    for job in jobs {
        job();
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl HostIo {
    /// Builds the runtime and starts its caretaker; `on_start` runs first
    /// on each thread either starts (signal mask, log sink).
    pub(super) fn new(on_start: impl Fn() + Send + Sync + 'static) -> std::io::Result<HostIo> {
        let on_start = Arc::new(on_start);
        let runtime = Arc::new({
            let on_start = on_start.clone();
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .on_thread_start(move || on_start())
                .build()
                .map_err(|e| {
                    std::io::Error::new(
                        e.kind(),
                        format!("cannot make the event loop of the call streams: {e}"),
                    )
                })?
        });
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            host_came: tokio::sync::Notify::new(),
        });
        let caretaker = {
            let (runtime, shared) = (runtime.clone(), shared.clone());
            std::thread::Builder::new()
                .name("tribe-calls".into())
                .spawn(move || {
                    on_start();
                    care(&runtime, &shared);
                })
                .map_err(|e| {
                    std::io::Error::new(
                        e.kind(),
                        format!(
                            "cannot start the tribe-calls thread ({e}); is the process at its \
                             thread limit?"
                        ),
                    )
                })?
        };
        let handed = Arc::new(Handed::default());
        runtime.spawn(run_handed(handed.clone()));
        Ok(HostIo {
            runtime: Some(runtime),
            shared,
            caretaker: Some(caretaker),
            handed,
        })
    }

    /// Runs `job` on the thread that drives the runtime, when it next
    /// polls its tasks: only the first job of a burst wakes it. Jobs not
    /// run when the runtime stops are dropped.
    pub(super) fn hand_over(&self, job: impl FnOnce() + Send + 'static) {
        let Some(job) = self.defer(job) else {
            return;
        };
        let first = {
            let mut jobs = self.handed.lock();
            jobs.push(Box::new(job));
            jobs.len() == 1
        };
        if first {
            self.handed.arrived.notify_one();
        }
    }

    /// Keeps `job` (work that spawns onto the runtime) for the next thread
    /// that drives the runtime, when none does now; gives it back
    /// otherwise, for the caller to run at once (its spawn wakes the
    /// driving thread, as it must). Boxed only when kept. Kept work may run
    /// before work handed over earlier and not run yet: each job starts
    /// one call's task, independent of the others.
    pub(super) fn defer<F: FnOnce() + Send + 'static>(&self, job: F) -> Option<F> {
        let mut state = self.shared.lock();
        if state.undriven() {
            state.deferred.push(Box::new(job));
            if state.turned_last && !state.drive_now {
                state.drive_now = true;
                drop(state);
                self.shared.changed.notify_one();
            }
            return None;
        }
        Some(job)
    }

    /// Whether a host thread drives the call streams now (inside
    /// [`HostIo::drive`]).
    pub(super) fn host_drives(&self) -> bool {
        self.shared.lock().hosts > 0
    }

    /// Where the call streams run.
    pub(super) fn handle(&self) -> &tokio::runtime::Handle {
        self.runtime().handle()
    }

    fn runtime(&self) -> &Runtime {
        self.runtime
            .as_ref()
            .expect("the runtime lives until the node is freed")
    }

    /// Runs `fut` to its end on this host thread, driving the call streams
    /// meanwhile (or, when another thread drives them, waiting for it).
    pub(super) fn drive<F: Future>(&self, fut: F) -> F::Output {
        /// Counts the thread out also when `fut` panics.
        struct Inside<'a>(&'a Shared);
        impl Drop for Inside<'_> {
            fn drop(&mut self) {
                let mut state = self.0.lock();
                state.hosts -= 1;
                state.exits += 1;
                state.turned_last = false;
                if state.hosts == 0 && state.caretaker_waits {
                    state.caretaker_waits = false;
                    drop(state);
                    self.0.changed.notify_one();
                }
            }
        }
        let (take_over, deferred) = {
            let mut state = self.shared.lock();
            state.hosts += 1;
            state.take_over |= state.caretaker_driving;
            (state.caretaker_driving, std::mem::take(&mut state.deferred))
        };
        let _inside = Inside(&self.shared);
        if take_over {
            self.shared.host_came.notify_one();
        }
        self.runtime().block_on(async move {
            run_deferred(deferred);
            fut.await
        })
    }

    /// Drives the call streams for one turn without blocking: runs the
    /// tasks ready now, polls the sockets, and runs what they made ready.
    /// Does nothing when another thread drives them.
    pub(super) fn turn(&self) {
        /// Counts the turn out also when a deferred job panics.
        struct Turning<'a>(&'a Shared);
        impl Drop for Turning<'_> {
            fn drop(&mut self) {
                self.0.lock().turning -= 1;
            }
        }
        // Not counted as a host inside: the caretaker, sleeping until the
        // last host leaves, would be woken by every turn. A turn only
        // restarts its countdown, and takes the runtime from it.
        let (take_over, deferred) = {
            let mut state = self.shared.lock();
            state.exits += 1;
            state.turning += 1;
            state.turned_last = true;
            state.take_over |= state.caretaker_driving;
            (state.caretaker_driving, std::mem::take(&mut state.deferred))
        };
        let _turning = Turning(&self.shared);
        if take_over {
            self.shared.host_came.notify_one();
        }
        self.runtime().block_on(async {
            run_deferred(deferred);
            // Each yield lets the runtime poll its driver once before
            // this future runs again.
            tokio::task::yield_now().await;
            tokio::task::yield_now().await;
        })
    }

    /// Stops the caretaker and the runtime; tasks still there are dropped.
    pub(super) fn shut_down(&mut self) {
        self.shared.lock().stop = true;
        self.shared.changed.notify_all();
        self.shared.host_came.notify_one();
        if let Some(caretaker) = self.caretaker.take() {
            let _ = caretaker.join();
        }
        if let Some(runtime) = self.runtime.take().and_then(Arc::into_inner) {
            runtime.shutdown_timeout(Duration::from_secs(2));
        }
        // Dropped here, not by whoever frees the node's last handle.
        drop(std::mem::take(&mut *self.handed.lock()));
        let deferred = std::mem::take(&mut self.shared.lock().deferred);
        drop(deferred);
    }
}

impl Drop for HostIo {
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// The caretaker: drives the runtime whenever no host thread has waited
/// for a whole tick, until one comes to wait.
fn care(runtime: &Runtime, shared: &Shared) {
    let mut seen = None;
    loop {
        let mut state = shared.lock();
        loop {
            if state.stop {
                return;
            }
            if state.hosts > 0 {
                // A host thread drives: sleep until the last one leaves.
                state.caretaker_waits = true;
                state = shared
                    .changed
                    .wait(state)
                    .unwrap_or_else(|p| p.into_inner());
                seen = None;
                continue;
            }
            if seen == Some(state.exits) || state.drive_now {
                break;
            }
            // Give a host thread that just left a tick to come back.
            seen = Some(state.exits);
            let tick = if state.turned_last { TURN_TICK } else { TICK };
            state = shared
                .changed
                .wait_timeout(state, tick)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        state.caretaker_driving = true;
        state.drive_now = false;
        let deferred = std::mem::take(&mut state.deferred);
        drop(state);
        runtime.block_on(async {
            run_deferred(deferred);
            loop {
                shared.host_came.notified().await;
                // A permit left by a thread that asked while this one was
                // handing over before says nothing now: keep driving.
                let state = shared.lock();
                if state.take_over || state.stop {
                    break;
                }
            }
        });
        let mut state = shared.lock();
        state.caretaker_driving = false;
        state.let_go += 1;
        state.take_over = false;
        drop(state);
        seen = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Instant;

    /// A wake-up meant for a hand-over that already happened (a turn that
    /// came while the caretaker was handing over) does not make the
    /// caretaker let go of the runtime with no thread to take it.
    #[test]
    fn a_stale_wake_up_does_not_leave_the_runtime_undriven() {
        let io = HostIo::new(|| {}).unwrap();
        let driving = || io.shared.lock().caretaker_driving;
        let begun = Instant::now();
        while !driving() {
            assert!(
                begun.elapsed() < Duration::from_secs(5),
                "the caretaker never drove"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        io.shared.host_came.notify_one();
        // Given time to let go (it would then wait a whole tick before
        // driving again).
        std::thread::sleep(TICK / 5);
        assert!(driving(), "the caretaker let go with no thread to drive");
        // A turn still takes the runtime from it, however short (the
        // caretaker takes it back 0.1 ms after: counted, not watched).
        let let_go = io.shared.lock().let_go;
        io.turn();
        let begun = Instant::now();
        while io.shared.lock().let_go == let_go {
            assert!(
                begun.elapsed() < Duration::from_secs(5),
                "a turn did not take over"
            );
            std::thread::sleep(Duration::from_micros(100));
        }
    }

    /// A task on the runtime makes progress with no host thread driving it.
    #[test]
    fn the_caretaker_drives_when_no_host_waits() {
        let io = HostIo::new(|| {}).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        io.handle().spawn(async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            let _ = tx.send(());
        });
        rx.recv_timeout(Duration::from_secs(5))
            .expect("the task never ran");
    }

    /// A host thread that waits drives the runtime itself, also while the
    /// caretaker drove it before; the caretaker takes over once it leaves.
    #[test]
    fn a_waiting_host_thread_drives_and_hands_back() {
        let io = HostIo::new(|| {}).unwrap();
        let host = std::thread::current().id();
        // The caretaker may still hold the runtime for a moment when the
        // host comes (a thread stalled on a loaded machine): any of three.
        let on_host = (0..3).any(|_| {
            // Let the caretaker take the runtime first.
            std::thread::sleep(TICK * 4);
            let on_host = Arc::new(AtomicBool::new(false));
            let flag = on_host.clone();
            let ran = io.drive(async move {
                tokio::spawn(async move {
                    flag.store(std::thread::current().id() == host, Ordering::Relaxed);
                })
                .await
                .is_ok()
            });
            assert!(ran);
            on_host.load(Ordering::Relaxed)
        });
        assert!(on_host, "the task ran on another thread each time");
        let (tx, rx) = std::sync::mpsc::channel();
        io.handle().spawn(async move {
            let _ = tx.send(std::thread::current().id());
        });
        let by = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("the caretaker did not take over");
        assert_ne!(by, host);
    }

    /// Handed-over work runs on the runtime, in the order it was handed
    /// over, also a burst handed over at once with nobody driving yet.
    #[test]
    fn handed_over_work_runs_on_the_runtime_in_order() {
        let io = HostIo::new(|| {}).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        for i in 0..100 {
            let tx = tx.clone();
            io.hand_over(move || {
                let on_runtime = tokio::runtime::Handle::try_current().is_ok();
                let _ = tx.send((i, on_runtime));
            });
        }
        for i in 0..100 {
            let (got, on_runtime) = rx
                .recv_timeout(Duration::from_secs(5))
                .expect("handed-over work never ran");
            assert_eq!(got, i);
            assert!(on_runtime, "job {i} ran off the runtime");
        }
        // Work handed over while a host thread drives runs meanwhile (on
        // that thread, or on the caretaker's while it hands over).
        let (tx, rx) = std::sync::mpsc::channel();
        let ran = io.drive(async {
            io.hand_over(move || {
                let _ = tx.send(());
            });
            tokio::task::yield_now().await;
            tokio::time::timeout(Duration::from_secs(5), async {
                loop {
                    if let Ok(id) = rx.try_recv() {
                        return id;
                    }
                    tokio::task::yield_now().await;
                }
            })
            .await
        });
        assert!(
            ran.is_ok(),
            "handed-over work did not run while a host drove"
        );
    }

    /// Work started while no thread drives the runtime is kept for the
    /// next thread that does, which runs it inside the runtime (so what it
    /// spawns wakes nobody); with no host thread coming, the caretaker runs
    /// it.
    #[test]
    fn deferred_work_runs_on_the_next_thread_that_drives() {
        let io = HostIo::new(|| {}).unwrap();
        let here = std::thread::current().id();
        let probe = |tx: std::sync::mpsc::Sender<_>| -> Job {
            Box::new(move || {
                let inside = tokio::runtime::Handle::try_current().is_ok();
                let _ = tx.send((std::thread::current().id(), inside));
            })
        };
        // Right after a host thread left, nobody drives (for up to a tick,
        // unless this thread stalls and the caretaker steps in: try again).
        let kept = (0..5).any(|_| {
            io.drive(async {});
            let (tx, rx) = std::sync::mpsc::channel();
            match io.defer(probe(tx)) {
                Some(job) => {
                    job();
                    false
                }
                None => {
                    assert!(rx.try_recv().is_err(), "deferred work ran at once");
                    io.drive(async {});
                    let (by, inside) = rx.try_recv().expect("the next drive ran it");
                    assert_eq!(by, here);
                    assert!(inside, "it ran outside the runtime");
                    true
                }
            }
        });
        assert!(kept, "nobody-driving was never seen");
        // Nobody comes: the caretaker runs it.
        io.drive(async {});
        let (tx, rx) = std::sync::mpsc::channel();
        let ran_here = io.defer(probe(tx)).map(|job| job()).is_some();
        let (_, inside) = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("deferred work never ran");
        assert!(
            ran_here || inside,
            "the caretaker ran it outside the runtime"
        );
    }

    /// A turn reads what a socket holds and runs the task it readies on
    /// the calling thread. Turns keep the caretaker off (each restarts its
    /// countdown), unless this thread stalls for a whole tick: one of three
    /// tries is enough.
    #[test]
    fn a_turn_reads_the_sockets_on_the_calling_thread() {
        let io = HostIo::new(|| {}).unwrap();
        let here = std::thread::current().id();
        let on_this_thread = (0..3).any(|_| {
            io.turn();
            let std_socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            std_socket.set_nonblocking(true).unwrap();
            let addr = std_socket.local_addr().unwrap();
            let socket = {
                let _runtime = io.handle().enter();
                tokio::net::UdpSocket::from_std(std_socket).unwrap()
            };
            let (tx, rx) = std::sync::mpsc::channel();
            io.handle().spawn(async move {
                let mut buf = [0u8; 8];
                if socket.recv(&mut buf).await.is_ok() {
                    let _ = tx.send(std::thread::current().id());
                }
            });
            // The task's first poll registers its interest in the socket.
            io.turn();
            let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            sender.send_to(b"x", addr).unwrap();
            let began = Instant::now();
            loop {
                io.turn();
                if let Ok(by) = rx.try_recv() {
                    return by == here;
                }
                assert!(
                    began.elapsed() < Duration::from_secs(5),
                    "no turn read the socket"
                );
            }
        });
        assert!(on_this_thread, "turns did not run the task themselves");
    }

    /// Many host threads waiting at once all finish; the runtime stops
    /// with tasks still pending on it.
    #[test]
    fn several_hosts_and_a_stop() {
        let io = Arc::new(HostIo::new(|| {}).unwrap());
        let began = Instant::now();
        let threads: Vec<_> = (0..4)
            .map(|i| {
                let io = io.clone();
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        io.drive(async move {
                            tokio::time::sleep(Duration::from_micros(100 * i)).await
                        });
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(began.elapsed() < Duration::from_secs(10));
        io.handle().spawn(std::future::pending::<()>());
        let mut io = Arc::into_inner(io).unwrap();
        io.shut_down();
    }

    /// Work kept after a host's turn (an answer to a call it took with
    /// `tribe_node_poll_events`, before it sleeps in its own loop) has the
    /// caretaker drive at once, not after its countdown. Before, each such
    /// answer waited 5 to 10 ms.
    #[test]
    fn work_kept_after_a_turn_is_driven_at_once() {
        let io = HostIo::new(|| {}).unwrap();
        io.turn();
        let (tx, rx) = std::sync::mpsc::channel();
        assert!(
            io.defer(move || {
                let _ = tx.send(());
            })
            .is_none()
                || io.shared.lock().caretaker_driving
        );
        {
            let state = io.shared.lock();
            assert!(
                state.drive_now || state.caretaker_driving || state.deferred.is_empty(),
                "kept after a turn without asking the caretaker to drive"
            );
        }
        rx.recv_timeout(Duration::from_secs(5))
            .expect("the kept work never ran");
        // After a wait, kept work waits for the next thread as before.
        io.drive(async {});
        let kept = io.defer(|| {});
        let state = io.shared.lock();
        assert!(
            kept.is_some() || !state.drive_now,
            "asked to drive after a wait"
        );
    }
}
