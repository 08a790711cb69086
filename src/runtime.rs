//! The tokio driver of the engine: one UDP socket and one TCP listener on the
//! same port, stream tasks, and one ordered timer scheduler. The driver owns
//! all I/O; the engine (behind a lock shared with the API for reads and
//! commands) owns all decisions.

use tracing::Instrument as _;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::blocking::BlockingThread;
use crate::setup_slots::MAX_SETUPS_PER_HOST;
use crate::engine::{ConnId, Engine, Event, Output, Timer};
use crate::stream::{self, Security, StreamError};
use crate::wire;

/// How long connecting a stream may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Events buffered per subscriber before new ones are dropped (and counted):
/// a subscriber that never reads must not grow memory without bound.
pub const EVENT_QUEUE: usize = 65_536;
/// Longest life of one stream.
pub const STREAM_LIFETIME: Duration = Duration::from_secs(30);
/// How often the durable state is written when it changed.
pub const SAVE_INTERVAL: Duration = Duration::from_secs(1);
/// Least time between two warnings of failed writes of the data dir.
const SAVE_WARN_EVERY: Duration = Duration::from_secs(60);

/// How long a stop waits for its data dir to take the node's last state.
const SAVE_AT_STOP: Duration = Duration::from_secs(5);
/// Accepted connections that may be in their setup (hello, channel frame)
/// or running an anti-entropy exchange at once; one more pushes out the
/// oldest setup of the busiest host, or, when every place holds an
/// exchange, is closed at once and counted in `streams_over_cap`. Setups last at most the hello timeout,
/// exchanges at most [`STREAM_LIFETIME`].
pub const MAX_ACCEPTED_STREAMS: usize = 256;

/// The span a node's tasks run in, so that its log records name it. At
/// error level: enabled whatever level the subscriber lets through.
pub(crate) fn node_span(name: &str) -> tracing::Span {
    tracing::error_span!("tribe", node = %name)
}

/// Wall-clock milliseconds since the Unix epoch.
/// Milliseconds of `CLOCK_BOOTTIME`: runs while the process is stopped or
/// the machine sleeps, never steps (see [`Engine::set_elapsed_ms`]).
fn boot_clock_ms() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|t| {
            let ms = i128::from(t.tv_sec()) * 1000 + i128::from(t.tv_nsec()) / 1_000_000;
            u64::try_from(ms).unwrap_or(0)
        })
        .unwrap_or(0)
}

pub fn wall_clock_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Fault injection for tests: peers whose traffic is dropped both ways, and
/// a share of datagrams lost at random. Used to make partitions on one host.
#[derive(Debug, Default)]
pub struct Faults {
    blocked: Mutex<HashSet<SocketAddr>>,
    /// Per-mille of datagrams dropped on receive.
    loss_per_mille: Mutex<u32>,
    /// Added to every wall-clock reading of the node (a skewed clock).
    clock_offset_ms: std::sync::atomic::AtomicI64,
    /// How long each write to the data dir takes first (a slow disk).
    save_delay_ms: std::sync::atomic::AtomicU64,
}

impl Faults {
    fn blocked(&self) -> MutexGuard<'_, HashSet<SocketAddr>> {
        self.blocked.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drops all traffic to and from `peer`.
    #[cfg(any(test, feature = "internals"))]
    pub fn block(&self, peer: SocketAddr) {
        self.blocked().insert(peer);
    }

    /// Lets traffic to and from `peer` through again.
    #[cfg(any(test, feature = "internals"))]
    pub fn unblock(&self, peer: SocketAddr) {
        self.blocked().remove(&peer);
    }

    /// Lets all traffic through again.
    #[cfg(any(test, feature = "internals"))]
    pub fn heal(&self) {
        self.blocked().clear();
        *self
            .loss_per_mille
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = 0;
    }

    /// Drops this share (0.0–1.0) of received datagrams.
    #[cfg(any(test, feature = "internals"))]
    pub fn set_loss(&self, share: f64) {
        *self
            .loss_per_mille
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = (share.clamp(0.0, 1.0) * 1000.0) as u32;
    }

    /// Makes the node's wall clock run `offset_ms` ahead (negative: behind).
    #[cfg(any(test, feature = "internals"))]
    pub fn set_clock_offset(&self, offset_ms: i64) {
        self.clock_offset_ms
            .store(offset_ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// Makes every write to the data dir take `delay` first (a slow or
    /// hung disk).
    #[cfg(any(test, feature = "internals"))]
    pub fn delay_saves(&self, delay: Duration) {
        self.save_delay_ms.store(
            u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    fn save_delay(&self) -> Duration {
        Duration::from_millis(self.save_delay_ms.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// The node's wall clock: the real one plus the injected offset.
    pub fn now_ms(&self) -> u64 {
        let offset = self
            .clock_offset_ms
            .load(std::sync::atomic::Ordering::Relaxed);
        wall_clock_ms().saturating_add_signed(offset)
    }

    fn is_blocked(&self, peer: &SocketAddr) -> bool {
        self.blocked().contains(peer)
    }

    fn drop_incoming(&self, from: &SocketAddr) -> bool {
        if self.is_blocked(from) {
            return true;
        }
        let loss = *self
            .loss_per_mille
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        loss > 0 && rand::random_range(0..1000) < loss
    }
}

/// Inputs of the driver loop that do not come from its own sockets.
pub(crate) enum DriverInput {
    Frame(ConnId, Vec<u8>),
    Closed(ConnId),
    /// A frame over the size limit or otherwise unreadable.
    BadFrame(ConnId, String, Option<SocketAddr>),
    /// Refused for a security reason (plaintext, unknown key, failed authentication).
    Refused(ConnId, crate::stream::Refusal, Option<SocketAddr>),
    /// A dialled peer refused this node's primary (`rejected`) and proved
    /// it holds `shared`, with which the stream was then sealed.
    SealedWithShared {
        rejected: crate::crypto::KeyId,
        shared: crate::crypto::KeyId,
        peer: SocketAddr,
    },
    /// The API queued outputs (a command ran).
    Wake,
    /// A dial was refused: nothing listens at the address.
    ConnectRefused(ConnId),
    /// A stream failed with an I/O error (why, for a join to tell);
    /// `Closed` follows.
    Failed(ConnId, String),
    /// A policy evaluation finished on its blocking thread.
    Policies(crate::policy_set::PolicyResults),
    /// A policy evaluation failed as a whole (a panic); nothing changes.
    PoliciesLost,
    /// Stop; `leave` first when graceful.
    Stop {
        leave: bool,
        done: tokio::sync::oneshot::Sender<()>,
    },
}

/// A data-dir write on the node's writer thread.
struct SaveJob {
    result: tokio::sync::oneshot::Receiver<std::io::Result<()>>,
    revision: (u64, usize, usize, usize),
    ring: Option<(Vec<crate::crypto::KeyId>, crate::crypto::KeyId)>,
}

enum ConnOut {
    Frame(Vec<u8>),
    /// Close once the queued frames are sent, and wait for the peer's end.
    Close,
    /// The exchange was given up: drop the stream at once (a peer that
    /// never answers would hold its descriptor until the stream's lifetime).
    Abandon,
}

/// One event stream's sending side, and how many events it lost.
pub(crate) struct Subscriber {
    pub tx: mpsc::Sender<Event>,
    /// Read by the stream ([`crate::EventStream::missed`]).
    pub missed: Arc<std::sync::atomic::AtomicU64>,
}

/// What the driver shares with the API.
pub(crate) struct Shared {
    pub engine: Mutex<Engine>,
    /// `None` once the node stopped: every stream has ended, and one asked
    /// for later ends at once.
    pub subscribers: Mutex<Option<Vec<Subscriber>>>,
    /// Set once the driver has ended, however it ended.
    pub ended: tokio::sync::watch::Sender<bool>,
    /// Set once the driver has taken a stop (with or without a goodbye):
    /// a driver that ended without one ended with its runtime.
    pub stop_taken: std::sync::atomic::AtomicBool,
    /// Set when a stop ended without its data dir taking the node's last
    /// state; taken (and cleared) by the graceful stop that reports it.
    pub last_state_unsaved: std::sync::atomic::AtomicBool,
    /// Events dropped because a subscriber fell more than [`EVENT_QUEUE`] behind.
    pub events_dropped: std::sync::atomic::AtomicU64,
    pub faults: Arc<Faults>,
    pub max_frame: usize,
    /// Where the durable state is kept, if anywhere.
    pub data_dir: Option<std::path::PathBuf>,
    /// The call path: handlers and artifacts served, streams to hosts.
    pub rpc: Arc<crate::rpc::call::Rpc>,
    /// Wakes the driver after a command made outside it.
    pub wake: mpsc::UnboundedSender<DriverInput>,
    /// Artifact fetches under way, by plugin entry.
    pub artifact_loads: crate::artifacts::Loads,
    /// The node's span (see [`node_span`]), entered while the engine is
    /// locked: what a command logs names the node too, whoever runs it.
    pub span: tracing::Span,
}

/// The locked engine, in the node's span.
pub(crate) struct EngineGuard<'a> {
    // Dropped first: the lock is released inside the span.
    engine: MutexGuard<'a, Engine>,
    _span: tracing::span::Entered<'a>,
}

impl std::ops::Deref for EngineGuard<'_> {
    type Target = Engine;

    fn deref(&self) -> &Engine {
        &self.engine
    }
}

impl std::ops::DerefMut for EngineGuard<'_> {
    fn deref_mut(&mut self) -> &mut Engine {
        &mut self.engine
    }
}

impl Shared {
    pub fn engine(&self) -> EngineGuard<'_> {
        let span = self.span.enter();
        let mut engine = self.engine.lock().unwrap_or_else(|p| p.into_inner());
        engine.set_elapsed_ms(boot_clock_ms());
        EngineGuard {
            engine,
            _span: span,
        }
    }

    /// Hands an event to every subscriber; one that fell too far behind
    /// loses it (counted), one that went away is dropped.
    pub fn deliver(&self, event: Event) {
        let mut subs = self.subscribers.lock().unwrap_or_else(|p| p.into_inner());
        let Some(subs) = subs.as_mut() else {
            return;
        };
        subs.retain(|sub| match sub.tx.try_send(event.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.events_dropped
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                sub.missed
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
    }

    /// This node's wall clock (faults included).
    pub fn now_ms(&self) -> u64 {
        self.faults.now_ms()
    }

    /// Runs a command on the engine from outside the driver loop.
    pub fn command(&self, cmd: crate::Command) -> crate::Result<()> {
        let result = self.engine().handle_command(self.now_ms(), cmd);
        let _ = self.wake.send(DriverInput::Wake);
        result
    }
}

/// The driver loop state.
pub(crate) struct Driver {
    shared: Arc<Shared>,
    udp: Arc<UdpSocket>,
    listener: TcpListener,
    inbox: mpsc::UnboundedReceiver<DriverInput>,
    inbox_tx: mpsc::UnboundedSender<DriverInput>,
    conns: HashMap<ConnId, mpsc::UnboundedSender<ConnOut>>,
    timers: BinaryHeap<Reverse<(Instant, u64)>>,
    timer_slots: HashMap<u64, Timer>,
    timer_seq: u64,
    /// Held while the driver runs, and by a write under way: no second node
    /// uses the data dir (a node dropped without a shutdown, its write
    /// still running, let the next start take the lock and race it).
    pub(crate) dir_lock: Option<Arc<crate::datadir::DirLock>>,
    /// Revision of the durable state last written to the data dir.
    saved_revision: Option<(u64, usize, usize, usize)>,
    /// The data-dir write under way.
    saving: Option<SaveJob>,
    /// The engine's security epoch the call streams were set up under.
    security_epoch: u64,
    /// Key ids and primary of the keyring last written to the data dir.
    saved_ring: Option<(Vec<crate::crypto::KeyId>, crate::crypto::KeyId)>,
    /// Failed writes of the data dir not yet logged, and when the last was.
    save_failures: (u64, Option<Instant>),
    /// Accepted connections in their setup or running an exchange: bounded,
    /// so a flood of connections that never send a hello cannot pile up
    /// tasks and buffers. Call streams give theirs back at the handoff (the
    /// call server has its own bound).
    accepting: Arc<tokio::sync::Semaphore>,
    /// Of those, the ones in their setup, per remote host.
    setups: crate::setup_slots::SetupSlots,
    /// Policy evaluations: one at a time, off the driver.
    policies: PolicyJobs,
    /// Runs policy evaluations.
    policy_thread: BlockingThread,
    /// Writes the data dir (when there is one).
    save_thread: Option<BlockingThread>,
    /// Accepting is paused until then after the listener failed (out of
    /// file descriptors, say): the pending connection keeps the listener
    /// readable, and retrying at once would spin.
    accept_paused_until: Option<Instant>,
    /// When a datagram that could not be sent was last logged.
    send_failure_logged: Option<Instant>,
    /// When accepting last failed for want of descriptors or memory and
    /// said so (once a minute: the failures are counted).
    accept_failure_logged: Option<Instant>,
    /// Dropped with the driver, also with its task never polled.
    _ended: DriverEnded,
}

/// The driver's policy evaluations: at most one runs (on a blocking
/// thread) and one waits; a newer request replaces the waiting one, since
/// the engine only takes the answer to its latest.
#[derive(Default)]
struct PolicyJobs {
    set: Arc<Mutex<crate::policy_set::PolicySet>>,
    running: bool,
    next: Option<crate::policy_set::PolicyRequest>,
}

/// An evaluation of a node's policies slower than this is logged.
const SLOW_POLICIES: Duration = Duration::from_millis(100);
/// How long accepting pauses after the listener failed.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// Binds the UDP socket and a TCP listener on the same port. With port 0 the
/// UDP port is picked first and TCP tries it; a few retries cover the rare
/// case where that TCP port is taken.
/// Errors name the address and the socket, keeping the system's reason.
pub(crate) async fn bind(addr: SocketAddr) -> std::io::Result<(UdpSocket, TcpListener)> {
    let named = |what: &str, at: SocketAddr, e: std::io::Error| {
        std::io::Error::new(e.kind(), format!("cannot bind {what} {at}: {e}"))
    };
    let mut last_err = None;
    for _ in 0..16 {
        let udp = UdpSocket::bind(addr)
            .await
            .map_err(|e| named("the gossip socket (UDP)", addr, e))?;
        let port = udp.local_addr()?.port();
        let at = SocketAddr::new(addr.ip(), port);
        match TcpListener::bind(at).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) if addr.port() == 0 => last_err = Some(named("the stream listener (TCP)", at, e)),
            Err(e) => return Err(named("the stream listener (TCP)", at, e)),
        }
    }
    Err(last_err.unwrap_or_else(|| std::io::Error::other("could not bind")))
}

/// Ends every event stream, and tells those waiting for the stop, when the
/// driver ends, however it ends: stopped, or dropped with its runtime while
/// the node's handles live on (they would otherwise wait for ever), also
/// before its task first ran.
struct DriverEnded(Arc<Shared>);

impl Drop for DriverEnded {
    fn drop(&mut self) {
        *self
            .0
            .subscribers
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = None;
        // No call is taken any more: the handlers go, and any clone of the
        // node they kept with them, also when no stop ran to its end (its
        // future dropped half-way).
        self.0.rpc.server.forget_handlers();
        self.0.ended.send_replace(true);
    }
}

impl Driver {
    pub fn new(
        shared: Arc<Shared>,
        udp: UdpSocket,
        listener: TcpListener,
        inbox: mpsc::UnboundedReceiver<DriverInput>,
        inbox_tx: mpsc::UnboundedSender<DriverInput>,
    ) -> std::io::Result<Self> {
        let save_thread = match shared.data_dir {
            Some(_) => Some(BlockingThread::start("tribe-save")?),
            None => None,
        };
        let own_ip = listener.local_addr().ok().map(|a| a.ip());
        // Its other nodes on this host dial the advertised address too.
        let advertised = shared.engine().addr().ip();
        Ok(Driver {
            _ended: DriverEnded(shared.clone()),
            shared,
            udp: Arc::new(udp),
            listener,
            inbox,
            inbox_tx,
            conns: HashMap::new(),
            timers: BinaryHeap::new(),
            timer_slots: HashMap::new(),
            timer_seq: 0,
            dir_lock: None,
            saved_revision: None,
            saving: None,
            saved_ring: None,
            save_failures: (0, None),
            security_epoch: 0,
            accepting: Arc::new(tokio::sync::Semaphore::new(MAX_ACCEPTED_STREAMS)),
            setups: crate::setup_slots::SetupSlots::new(own_ip, Some(advertised)),
            policies: PolicyJobs::default(),
            policy_thread: BlockingThread::start("tribe-policy")?,
            save_thread,
            accept_paused_until: None,
            accept_failure_logged: None,
            send_failure_logged: None,
        })
    }

    /// Runs until stopped.
    pub async fn run(mut self) {
        let mut buf = vec![0u8; 65_536];
        // Saves durable state and closes idle call streams.
        let mut tick = tokio::time::interval(SAVE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.flush();
            let next_timer = self
                .timers
                .peek()
                .map(|Reverse((at, _))| *at)
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                received = self.udp.recv_from(&mut buf) => {
                    match received {
                        Ok((len, from)) => {
                            if !self.shared.faults.drop_incoming(&from) {
                                self.shared.engine().handle_datagram(self.shared.now_ms(), from, &buf[..len]);
                            }
                        }
                        Err(e) => tracing::debug!(error = %e, "udp receive error"),
                    }
                }
                next = next_connection(&self.listener, self.accept_paused_until) => self.on_connection(next),
                input = self.inbox.recv() => {
                    match input {
                        Some(DriverInput::Stop { leave, done }) => {
                            self.shared
                                .stop_taken
                                .store(true, std::sync::atomic::Ordering::SeqCst);
                            if leave {
                                self.leave_gracefully().await;
                            }
                            self.save_durable_now().await;
                            if leave {
                                self.accept_backlog();
                            }
                            let _ = done.send(());
                            return;
                        }
                        Some(other) => self.on_stream_input(other),
                        None => return,
                    }
                }
                _ = tokio::time::sleep_until(next_timer) => self.fire_due_timers(),
                _ = tick.tick() => {
                    self.save_durable();
                    self.shared.rpc.pool.close_idle();
                    crate::artifacts::release_unreferenced(&self.shared);
                    crate::artifacts::retry_unavailable(&self.shared);
                }
            }
        }
    }

    /// A place among the accepted streams for a new connection (whose
    /// setup is `newcomer`). When every place is taken, the oldest setup of
    /// the busiest host makes way for it; none when no other setup can
    /// (every place holds an exchange).
    fn free_place(&self, newcomer: &crate::setup_slots::SetupSlot) -> Option<Place> {
        match self.accepting.clone().try_acquire_owned() {
            Ok(permit) => Some(Place::Held(permit)),
            Err(_) if self.setups.evict_one(newcomer) => {
                // Queued for the place now (the semaphore is fair), before
                // a later connection takes it as it frees: that one would
                // leave this newcomer, and every one after it, waiting for a
                // setup to end on its own. Never told to make way itself
                // while it waits: that would free no place.
                let marker = newcomer.marker();
                marker.waiting(true);
                let mut place: WaitedPlace = Box::pin(self.accepting.clone().acquire_owned());
                let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
                match place.as_mut().poll(&mut cx) {
                    std::task::Poll::Ready(Ok(permit)) => {
                        marker.waiting(false);
                        Some(Place::Held(permit))
                    }
                    std::task::Poll::Ready(Err(_)) => None,
                    std::task::Poll::Pending => Some(Place::MadeWay(place, marker)),
                }
            }
            Err(_) => None,
        }
    }

    /// Closes a new connection at once (cheaper than any reply), counted
    /// and logged at a limited rate.
    fn close_at_cap(&self, stream: TcpStream, from: SocketAddr, limit: usize, what: &'static str) {
        drop(stream);
        self.shared.engine().stream_over_cap(from, limit, what);
    }

    /// Writes the durable state when it changed, on a blocking thread so
    /// that a slow disk never stalls the protocol; one write at a time. A
    /// failed write is logged and retried at the next tick.
    fn save_durable(&mut self) {
        let Some(dir) = self.shared.data_dir.clone() else {
            return;
        };
        if let Some(job) = &mut self.saving {
            let result = match job.result.try_recv() {
                Err(tokio::sync::oneshot::error::TryRecvError::Empty) => return,
                Ok(result) => Some(result),
                Err(tokio::sync::oneshot::error::TryRecvError::Closed) => None,
            };
            if let Some(job) = self.saving.take() {
                self.saved(result, job.revision, job.ring);
            }
        }
        let Some(writer) = &self.save_thread else {
            return;
        };
        let (revision, durable, ring) = {
            let mut engine = self.shared.engine();
            let revision = engine.durable_revision();
            let ring = engine.keyring().cloned();
            let ring_changed = ring
                .as_ref()
                .is_some_and(|r| self.saved_ring.as_ref() != Some(&(r.ids(), r.primary_id())));
            if self.saved_revision == Some(revision) && !ring_changed {
                return;
            }
            let durable = (self.saved_revision != Some(revision)).then(|| engine.durable());
            (revision, durable, ring.filter(|_| ring_changed))
        };
        let shape = ring.as_ref().map(|r| (r.ids(), r.primary_id()));
        let lock = self.dir_lock.clone();
        let delay = self.shared.faults.save_delay();
        let result = writer.run(move || -> std::io::Result<()> {
            if !delay.is_zero() {
                std::thread::sleep(delay);
            }
            if let Some(lock) = &lock {
                crate::datadir::still_held(&dir, lock.id())?;
            }
            if let Some(ring) = &ring {
                crate::datadir::save_keyring(&dir, ring)?;
            }
            if let Some(durable) = &durable {
                crate::datadir::save(&dir, durable)?;
            }
            Ok(())
        });
        self.saving = Some(SaveJob {
            result,
            revision,
            ring: shape,
        });
    }

    /// Notes the outcome of a finished write.
    fn saved(
        &mut self,
        result: Option<std::io::Result<()>>,
        revision: (u64, usize, usize, usize),
        ring: Option<(Vec<crate::crypto::KeyId>, crate::crypto::KeyId)>,
    ) {
        match result {
            Some(Ok(())) => {
                if self.save_failures.1.take().is_some() {
                    tracing::info!("the data dir is written again");
                }
                self.save_failures.0 = 0;
                self.saved_revision = Some(revision);
                if ring.is_some() {
                    self.saved_ring = ring;
                }
                return;
            }
            Some(Err(e)) => self.save_failed(&e.to_string()),
            None => self.save_failed("the writer thread ended"),
        }
        self.shared.engine().data_dir_write_failed();
    }

    /// Logs a failed write of the data dir: the first at once, then at most
    /// once a minute while writes keep failing (they are retried each
    /// second), with how many failed meanwhile.
    fn save_failed(&mut self, error: &str) {
        let now = Instant::now();
        let failures = &mut self.save_failures;
        failures.0 += 1;
        if failures.1.is_some_and(|at| now.duration_since(at) < SAVE_WARN_EVERY) {
            return;
        }
        tracing::warn!(
            failed = failures.0,
            "cannot write the data dir ({error}); retried every second, logged once a minute"
        );
        *failures = (0, Some(now));
    }

    /// Waits for the write under way, then writes what is current and
    /// waits for that too; says so at once if that last write failed (the
    /// node stops, and its data dir keeps older state).
    async fn save_durable_now(&mut self) {
        // Its failure is logged now, whatever was logged a moment ago.
        self.save_failures.1 = None;
        // Bounded: a supervisor's stop timeout would kill a process that
        // waits on a hung disk, and its goodbye is said already. A write
        // still under way holds the data dir's lock until it ends.
        let deadline = Instant::now() + SAVE_AT_STOP;
        for last in [false, false, true] {
            if let Some(job) = self.saving.take() {
                let Ok(result) = tokio::time::timeout_at(deadline, job.result).await else {
                    tracing::error!(
                        "the data dir did not take the node's last state within {} s (a slow \
                         or hung disk): the node stops without it; a restart from it comes \
                         back with what it last saved",
                        SAVE_AT_STOP.as_secs()
                    );
                    self.last_state_unsaved();
                    return;
                };
                self.saved(result.ok(), job.revision, job.ring);
            }
            if !last {
                self.save_durable();
            }
        }
        // Still failing: a failure since the reset above, none written after.
        if self.save_failures.1.is_some() && self.shared.data_dir.is_some() {
            tracing::error!(
                "the node's last state could not be written to its data dir (see the warning \
                 before): a restart from it comes back with what it last saved"
            );
            self.last_state_unsaved();
        }
    }

    fn last_state_unsaved(&self) {
        self.shared
            .last_state_unsaved
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Marks us left, then keeps gossiping briefly so the goodbye spreads.
    async fn leave_gracefully(&mut self) {
        self.shared.engine().leave(self.shared.now_ms());
        let deadline = Instant::now() + Duration::from_millis(1500);
        let mut buf = vec![0u8; 65_536];
        while Instant::now() < deadline {
            self.flush();
            // foca sent its goodbye already and stays silent from here on;
            // what is left is the goodbye sync (none without live peers).
            // Connections still in their setup are not waited on: a flood
            // of silent ones would hold the stop up to its deadline.
            if self.streams_past_setup() == 0 {
                break;
            }
            let next_timer = self
                .timers
                .peek()
                .map(|Reverse((at, _))| *at)
                .unwrap_or(deadline)
                .min(deadline);
            tokio::select! {
                received = self.udp.recv_from(&mut buf) => {
                    if let Ok((len, from)) = received {
                        if !self.shared.faults.drop_incoming(&from) {
                            self.shared.engine().handle_datagram(self.shared.now_ms(), from, &buf[..len]);
                        }
                    }
                }
                // Peers stopping at the same moment sync their goodbyes
                // with each other: unanswered, each would wait out the
                // deadline.
                next = next_connection(&self.listener, self.accept_paused_until) => self.on_connection(next),
                input = self.inbox.recv() => {
                    if let Some(input) = input {
                        self.on_stream_input(input);
                    }
                }
                _ = tokio::time::sleep_until(next_timer) => self.fire_due_timers(),
            }
        }
        let open = self.streams_past_setup();
        if open > 0 {
            tracing::info!(
                open,
                "stopped before the goodbye's exchanges with peers ended; they hear of it by gossip"
            );
        }
        self.flush();
    }

    /// Streams this node dialled, and accepted ones past their setup.
    fn streams_past_setup(&self) -> usize {
        self.conns.len().saturating_sub(self.setups.under_way())
    }

    /// Stream news from connection tasks (and wake-ups from the API).
    fn on_stream_input(&mut self, input: DriverInput) {
        match input {
            // A frame on a stream the engine closed is not its business.
            DriverInput::Frame(conn, body) if self.conns.contains_key(&conn) => {
                self.shared
                    .engine()
                    .handle_frame(self.shared.now_ms(), conn, &body);
            }
            DriverInput::Frame(..) => {}
            DriverInput::Closed(conn) => {
                self.conns.remove(&conn);
                self.shared
                    .engine()
                    .handle_stream_closed(self.shared.now_ms(), conn);
            }
            DriverInput::BadFrame(conn, why, peer) => {
                self.conns.remove(&conn);
                self.shared
                    .engine()
                    .handle_bad_frame(self.shared.now_ms(), conn, &why, peer);
            }
            DriverInput::Refused(conn, why, peer) => {
                self.conns.remove(&conn);
                self.shared
                    .engine()
                    .handle_stream_refused(self.shared.now_ms(), conn, why, peer);
            }
            DriverInput::SealedWithShared {
                rejected,
                shared,
                peer,
            } => {
                self.shared.engine().handle_sealed_with_shared(
                    self.shared.now_ms(),
                    rejected,
                    shared,
                    peer,
                );
            }
            DriverInput::Failed(conn, why) => {
                self.shared.engine().note_stream_failure(conn, why);
            }
            DriverInput::ConnectRefused(conn) => {
                self.conns.remove(&conn);
                self.shared
                    .engine()
                    .handle_connect_refused(self.shared.now_ms(), conn);
            }
            DriverInput::Policies(results) => {
                self.shared
                    .engine()
                    .handle_policy_results(self.shared.now_ms(), results);
                self.policies.running = false;
                if let Some(next) = self.policies.next.take() {
                    self.evaluate_policies(next);
                }
            }
            DriverInput::PoliciesLost => {
                self.policies.running = false;
                if let Some(next) = self.policies.next.take() {
                    self.evaluate_policies(next);
                }
            }
            // A stop during a graceful leave is already under way.
            DriverInput::Wake | DriverInput::Stop { .. } => {}
        }
    }

    fn fire_due_timers(&mut self) {
        let now = Instant::now();
        // Deliver every due timer in (deadline, submission) order.
        while let Some(Reverse((at, seq))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            if let Some(timer) = self.timer_slots.remove(&seq) {
                self.shared
                    .engine()
                    .handle_timer(self.shared.now_ms(), timer);
            }
        }
    }

    /// Carries out everything the engine queued.
    fn flush(&mut self) {
        let epoch = self.shared.engine().security_epoch();
        if epoch != self.security_epoch {
            // Keys or mode changed: call streams set up before must not live on.
            self.security_epoch = epoch;
            self.shared.rpc.server.reset_streams();
            self.shared.rpc.pool.forget_streams();
        }
        loop {
            let batch: Vec<Output> = {
                let mut engine = self.shared.engine();
                std::iter::from_fn(|| engine.poll_output()).collect()
            };
            if batch.is_empty() {
                return;
            }
            for out in batch {
                self.perform(out);
            }
        }
    }

    /// Evaluates policies on a blocking thread, or queues the request when
    /// an evaluation runs.
    fn evaluate_policies(&mut self, request: crate::policy_set::PolicyRequest) {
        if self.policies.running {
            self.policies.next = Some(request);
            return;
        }
        self.policies.running = true;
        let set = self.policies.set.clone();
        let inbox = self.inbox_tx.clone();
        let stopping = self.policy_thread.stopping();
        let answered = self.policy_thread.run(move || {
            let started = Instant::now();
            let results = set
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .answer_unless(&request, &stopping);
            let took = started.elapsed();
            if took > SLOW_POLICIES {
                tracing::warn!(
                    policies = request.policies.len(),
                    took_ms = took.as_millis() as u64,
                    "policies are slow to evaluate"
                );
            }
            results
        });
        // A panicking policy fails alone inside `answer`; should the rest
        // panic (the receiver ends empty), the driver must still hear of
        // it, or no evaluation would run again. The node keeps its tribes.
        tokio::spawn(async move {
            let input = match answered.await {
                Ok(results) => DriverInput::Policies(results),
                Err(_) => DriverInput::PoliciesLost,
            };
            let _ = inbox.send(input);
        }.in_current_span());
    }

    /// Counts a connection the listener failed to accept and, when the
    /// process or system is out of a resource, pauses accepting a moment.
    fn on_connection(&mut self, next: NextConnection) {
        match next {
            NextConnection::Resumed => self.accept_paused_until = None,
            NextConnection::Accepted(Ok((stream, from))) => self.on_accepted(stream, from),
            NextConnection::Accepted(Err(e)) => self.accept_failed(e),
        }
    }

    fn accept_failed(&mut self, e: std::io::Error) {
        self.shared.engine().accept_failed();
        let out_of_resources = crate::rpc::client::is_local_shortage(&e);
        if out_of_resources {
            let now = Instant::now();
            let due = self
                .accept_failure_logged
                .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(60));
            if due {
                self.accept_failure_logged = Some(now);
                tracing::warn!(
                    error = %e,
                    "cannot accept connections; pausing (said once a minute; counted in accept_errors_total)"
                );
            }
            self.accept_paused_until = Some(now + ACCEPT_PAUSE);
        } else {
            tracing::debug!(error = %e, "accept error");
        }
    }

    /// A full send buffer drops the datagram as the network would; any
    /// other failure (a member of the other address family, a broadcast
    /// address) never goes away by itself: said at most once a minute.
    fn datagram_not_sent(&mut self, to: SocketAddr, e: &std::io::Error) {
        if e.kind() == std::io::ErrorKind::WouldBlock {
            tracing::trace!(error = %e, %to, "datagram not sent");
            return;
        }
        let now = Instant::now();
        if self
            .send_failure_logged
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(60))
        {
            return;
        }
        self.send_failure_logged = Some(now);
        let local = self.udp.local_addr().ok();
        let hint = match local {
            Some(l) if l.is_ipv4() != to.is_ipv4() => format!(
                ": this node's socket ({l}) and the member's address are of two address \
                 families; every node of a tribe must advertise addresses of one family"
            ),
            _ => String::new(),
        };
        tracing::warn!(error = %e, %to, "cannot send datagrams to {to}{hint}");
    }

    fn perform(&mut self, out: Output) {
        match out {
            Output::EvaluatePolicies(request) => self.evaluate_policies(request),
            Output::Datagram { to, bytes } => {
                if self.shared.faults.is_blocked(&to) {
                    return;
                }
                // UDP send on a non-blocking socket: a full buffer drops the
                // packet, exactly as the network would.
                if let Err(e) = self.udp.try_send_to(&bytes, to) {
                    self.datagram_not_sent(to, &e);
                }
            }
            Output::Connect { conn, to } => {
                self.spawn_conn(conn, ConnTarget::Dial(to));
            }
            Output::Frame { conn, body } => {
                if let Some(tx) = self.conns.get(&conn) {
                    let _ = tx.send(ConnOut::Frame(body));
                }
            }
            Output::Close { conn, abandon } => {
                if let Some(tx) = self.conns.remove(&conn) {
                    let _ = tx.send(if abandon {
                        ConnOut::Abandon
                    } else {
                        ConnOut::Close
                    });
                }
            }
            Output::Schedule { timer, after } => {
                self.timer_seq += 1;
                self.timers
                    .push(Reverse((Instant::now() + after, self.timer_seq)));
                self.timer_slots.insert(self.timer_seq, timer);
            }
            Output::Event(Event::PluginLoad(entry)) if entry.artifact.is_some() => {
                // Held back until its artifact is fetched and verified.
                crate::artifacts::load(self.shared.clone(), entry);
            }
            Output::Event(Event::PluginUnload(entry)) => {
                // An entry whose load was still waiting for its artifact was
                // never handed over: cancel the load, say nothing.
                if !crate::artifacts::cancel(&self.shared, &entry) {
                    self.shared.deliver(Event::PluginUnload(entry));
                }
            }
            Output::Event(event) => {
                if let Event::MemberFailed { name } = &event {
                    self.host_failed(name);
                }
                self.shared.deliver(event)
            }
        }
    }

    /// Ends the calls in flight to a member just declared failed (see
    /// `Pool::host_failed`), at its address and at those it serves on, and
    /// the calls it made to this node.
    fn host_failed(&self, name: &str) {
        // The calls it made here, too: their handlers have no caller left.
        self.shared.rpc.server.caller_failed(name);
        let Some(addrs) = self.shared.engine().failed_member_addrs(name) else {
            return;
        };
        for addr in addrs {
            self.shared.rpc.pool.host_failed(addr);
        }
    }

    /// Sets up an accepted connection, within the bounds of setups per
    /// host and of accepted connections.
    fn on_accepted(&mut self, stream: TcpStream, from: SocketAddr) {
        let Some(setup) = self.setups.try_take(from.ip()) else {
            return self.close_at_cap(
                stream,
                from,
                MAX_SETUPS_PER_HOST,
                "connections from its host in their setup",
            );
        };
        match self.free_place(&setup) {
            Some(place) => {
                let conn = self.shared.engine().accept_stream();
                // Counted for the stop's drain only where it may carry a
                // plaintext caller's request (sent without waiting for the
                // setup): a node that requires sealed streams waits for none.
                let plaintext_possible = !self.shared.engine().stream_security().requires_sealed();
                let held = plaintext_possible.then(|| self.shared.rpc.server.hold_stream());
                self.spawn_conn(conn, ConnTarget::Accepted(stream, place, setup, held));
            }
            None => self.close_at_cap(
                stream,
                from,
                MAX_ACCEPTED_STREAMS,
                "accepted connections in an exchange",
            ),
        }
    }

    /// At a graceful stop, takes the connections waiting to be accepted
    /// before the listener closes, which would reset them: a plaintext
    /// caller sends its requests without waiting for the host, and would
    /// see them lost ("may or may not have run") where the stopping host
    /// refuses them, unrun, and the caller moves them to another member.
    fn accept_backlog(&mut self) {
        use futures_util::FutureExt;
        while let Some(Ok((stream, from))) = self.listener.accept().now_or_never() {
            self.on_accepted(stream, from);
        }
    }

    fn spawn_conn(&mut self, conn: ConnId, target: ConnTarget) {
        let (tx, rx) = mpsc::unbounded_channel();
        self.conns.insert(conn, tx);
        let inbox = self.inbox_tx.clone();
        let faults = self.shared.faults.clone();
        let max_frame = self.shared.max_frame;
        let security = self.shared.engine().stream_security();
        let plaintext = !security.dials_sealed();
        let server = self.shared.rpc.server.clone();
        let peer = match &target {
            ConnTarget::Dial(addr) => Some(*addr),
            ConnTarget::Accepted(stream, ..) => stream.peer_addr().ok(),
        };
        tokio::spawn(async move {
            let mut rx = rx;
            // The engine may end the exchange while the stream is being set
            // up (a join given up, a node leaving, an exchange timed out):
            // the setup, which may wait on a peer that never answers, ends
            // then too. Frames queued meanwhile are sent once it is set up.
            let mut early = Vec::new();
            let opening = open_stream(target, &faults, max_frame, &security, server);
            tokio::pin!(opening);
            let opened = loop {
                tokio::select! {
                    opened = &mut opening => break Some(opened),
                    out = rx.recv() => match out {
                        Some(ConnOut::Frame(body)) => early.push(body),
                        Some(ConnOut::Close | ConnOut::Abandon) => break None,
                        // The driver stopped (a graceful stop): a call
                        // stream still in its setup goes on to the server,
                        // which refuses its calls as stopping, unrun.
                        None => break Some((&mut opening).await),
                    },
                }
            };
            let Some(opened) = opened else {
                let _ = inbox.send(DriverInput::Closed(conn));
                return;
            };
            let stream = match opened {
                Ok(Some(s)) => {
                    if let (Some((rejected, shared)), Some(peer)) = (s.fell_back, peer) {
                        let _ = inbox.send(DriverInput::SealedWithShared {
                            rejected,
                            shared,
                            peer,
                        });
                    }
                    s
                }
                // A call stream: the server has it; the engine never will.
                Ok(None) => {
                    let _ = inbox.send(DriverInput::Closed(conn));
                    return;
                }
                Err(StreamError::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    let _ = inbox.send(DriverInput::ConnectRefused(conn));
                    return;
                }
                Err(e) => {
                    // A peer that never answered the setup is told as
                    // such (a join names why each address failed).
                    report(&inbox, conn, peer, false, stalled_if_timed_out(e));
                    let _ = inbox.send(DriverInput::Closed(conn));
                    return;
                }
            };
            let heard = std::sync::atomic::AtomicBool::new(false);
            let result = tokio::time::timeout(
                STREAM_LIFETIME,
                run_conn(conn, stream, early, rx, inbox.clone(), &heard),
            )
            .await;
            // A plaintext stream cut before the peer said anything may be
            // one refused for want of encryption.
            let unanswered = plaintext && !heard.load(std::sync::atomic::Ordering::Relaxed);
            match result {
                Ok(Ok(())) => {}
                Ok(Err(e)) => report(&inbox, conn, peer, unanswered, e),
                Err(_) => tracing::debug!(?conn, "stream timed out"),
            }
            let _ = inbox.send(DriverInput::Closed(conn));
        }.in_current_span());
    }
}

enum ConnTarget {
    Dial(SocketAddr),
    /// With its place among the accepted streams, held until the stream
    /// ends or is handed to the call server, and its host's place for a
    /// setup, held until the setup ends.
    Accepted(
        TcpStream,
        Place,
        crate::setup_slots::SetupSlot,
        Option<crate::rpc::server::StreamHeld>,
    ),
}

/// An accepted stream's place among the accepted streams.
enum Place {
    Held(tokio::sync::OwnedSemaphorePermit),
    /// Another setup was told to make way: the place, queued for, is taken
    /// once it has.
    MadeWay(WaitedPlace, crate::setup_slots::SetupMarker),
}

/// A place queued for.
type WaitedPlace = std::pin::Pin<
    Box<
        dyn std::future::Future<
                Output = Result<tokio::sync::OwnedSemaphorePermit, tokio::sync::AcquireError>,
            > + Send,
    >,
>;

/// Hands a stream failure to the engine for counting (and naming `peer`).
fn report(
    inbox: &mpsc::UnboundedSender<DriverInput>,
    conn: ConnId,
    peer: Option<SocketAddr>,
    plaintext_unanswered: bool,
    e: StreamError,
) {
    match e {
        StreamError::BadFrame(why) => {
            let _ = inbox.send(DriverInput::BadFrame(conn, why.to_string(), peer));
        }
        StreamError::Refused(why) => {
            let _ = inbox.send(DriverInput::Refused(conn, why, peer));
        }
        StreamError::Io(e) => {
            tracing::debug!(?conn, error = %e, "stream ended with an error");
            let _ = inbox.send(DriverInput::Failed(conn, io_failure(&e, plaintext_unanswered)));
        }
    }
}

/// A dial whose connection was not accepted within [`CONNECT_TIMEOUT`]: a
/// host down behind a firewall that drops, not a peer that stalls its
/// setup (not counted as a stalled stream).
#[derive(Debug)]
struct ConnectTimedOut;

impl std::fmt::Display for ConnectTimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "connect timed out")
    }
}

impl std::error::Error for ConnectTimedOut {}

/// Why a stream failed, for a join to tell: the process's own shortage is
/// not the peer's fault, and a plaintext stream cut before the peer said
/// anything may be refused by a peer that requires encryption (which
/// cannot say so to a node without the key).
fn io_failure(e: &std::io::Error, plaintext_unanswered: bool) -> String {
    if e.get_ref().is_some_and(|inner| inner.is::<ConnectTimedOut>()) {
        return format!(
            "no answer (the connection was not accepted within {} s)",
            CONNECT_TIMEOUT.as_secs()
        );
    }
    if crate::rpc::client::is_local_shortage(e) {
        format!("this process could not open a connection ({e}): out of descriptors, socket buffers or memory, not the peer's fault")
    } else if plaintext_unanswered
        && matches!(
            e.kind(),
            std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::UnexpectedEof
                | std::io::ErrorKind::BrokenPipe
        )
    {
        format!(
            "the connection failed ({e}) before the peer said anything: it may require \
             encryption, which this node does not send (it has no key, or its encryption \
             mode is accept), or it is no tribe node"
        )
    } else if matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::UnexpectedEof
            | std::io::ErrorKind::BrokenPipe
    ) {
        format!(
            "the connection failed ({e}): the peer closed it before the exchange ended (a node \
             stopping, or one at its bound of connections, which logs that it closed one)"
        )
    } else {
        format!("the connection failed ({e})")
    }
}

/// A sync stream ready for frames.
struct SyncStream {
    stream: TcpStream,
    sealer: stream::Sealer,
    opener: stream::Opener,
    /// An accepted stream's place among the accepted streams.
    _place: Option<tokio::sync::OwnedSemaphorePermit>,
    /// A dialled stream sealed with a key the peer proved it holds after it
    /// refused this node's primary: (primary, that key).
    fell_back: Option<(crate::crypto::KeyId, crate::crypto::KeyId)>,
}

/// Connects or accepts, runs the hello exchange and the channel frame. An
/// accepted call stream is handed to the call server (`Ok(None)`).
async fn open_stream(
    target: ConnTarget,
    faults: &Faults,
    max_frame: usize,
    security: &Security,
    server: Arc<crate::rpc::server::Server>,
) -> Result<Option<SyncStream>, StreamError> {
    let setup = async {
        match target {
            ConnTarget::Dial(to) => {
                if faults.is_blocked(&to) {
                    return Err(std::io::Error::other("blocked by fault injection").into());
                }
                let dial = || async {
                    let s = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(to))
                        .await
                        .map_err(|_| std::io::Error::other(ConnectTimedOut))??;
                    let _ = s.set_nodelay(true);
                    Ok::<_, StreamError>(s)
                };
                let mut s = dial().await?;
                let mut fell_back = None;
                let (mut sealer, opener) = match stream::connect(&mut s, security, max_frame).await {
                    // The peer does not hold this node's primary but proved
                    // it holds another key of this node's ring: the two
                    // sides of a partition that each rotated to a key of
                    // their own. The exchange is sealed with the shared key,
                    // so that the cluster's records (its keys, its primary)
                    // reach both sides, and the later primary wins on both.
                    Err(StreamError::Refused(stream::Refusal::KeyRejected {
                        rejected,
                        proven: Some(shared),
                    })) if shared != rejected => {
                        s = dial().await?;
                        let pair = stream::connect_with_key(&mut s, security, shared, max_frame).await?;
                        fell_back = Some((rejected, shared));
                        pair
                    }
                    done => done?,
                };
                sealer.write_frame(&mut s, &[wire::CHANNEL_SYNC]).await?;
                Ok(Some(SyncStream {
                    stream: s,
                    sealer,
                    opener,
                    _place: None,
                    fell_back,
                }))
            }
            ConnTarget::Accepted(mut s, place, mut setup, held) => {
                let handshake = async {
                    let place = match place {
                        Place::Held(permit) => permit,
                        Place::MadeWay(place, marker) => {
                            let place = place
                                .await
                                .map_err(|_| std::io::Error::other("the node is stopping"))?;
                            marker.waiting(false);
                            place
                        }
                    };
                    let _ = s.set_nodelay(true);
                    let (sealer, mut opener) = stream::accept(&mut s, security, max_frame)
                        .await
                        .map_err(stalled_if_timed_out)?;
                    let channel = opener.read_frame(&mut s).await?;
                    Ok::<_, StreamError>((place, sealer, opener, channel))
                };
                let (place, sealer, opener, channel) = tokio::select! {
                    done = handshake => done?,
                    () = setup.evicted() => {
                        return Err(StreamError::Refused(crate::stream::Refusal::MadeWay));
                    }
                };
                drop(setup);
                match channel.as_deref() {
                    Some([wire::CHANNEL_SYNC]) => Ok(Some(SyncStream {
                        stream: s,
                        sealer,
                        opener,
                        _place: Some(place),
                        fell_back: None,
                    })),
                    Some([wire::CHANNEL_RPC]) => {
                        drop(place);
                        if let Some(executor) = server.executor().cloned() {
                            // Moved to the runtime where this node's call
                            // streams run (the C ABI's host-driven one).
                            let std = s.into_std()?;
                            executor.spawn(async move {
                                match TcpStream::from_std(std) {
                                    Ok(s) => {
                                        let (reader, writer) = s.into_split();
                                        let writer = crate::rpc::tcp_writer::TcpWriter::new(writer);
                                        // Served from here on: a goodbye is its own.
                                        drop(held);
                                        server.serve_stream(reader, writer, sealer, opener).await;
                                    }
                                    Err(e) => tracing::warn!(error = %e, "a call stream could not be moved"),
                                }
                            }.in_current_span());
                            return Ok(None);
                        }
                        let (reader, writer) = s.into_split();
                        let writer = crate::rpc::tcp_writer::TcpWriter::new(writer);
                        tokio::spawn(async move {
                            drop(held);
                            server.serve_stream(reader, writer, sealer, opener).await;
                        }.in_current_span());
                        Ok(None)
                    }
                    Some(_) => Err(StreamError::BadFrame(wire::WireError::Malformed(
                        "unknown stream channel".into(),
                    ))),
                    None => Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into()),
                }
            }
        }
    };
    tokio::time::timeout(stream::HANDSHAKE_TIMEOUT + CONNECT_TIMEOUT, setup)
        .await
        .map_err(|_| StreamError::Refused(crate::stream::Refusal::Stalled))?
}

/// A peer that did not finish the hello in time is counted as stalled
/// (and named), like one that did not finish the whole setup.
fn stalled_if_timed_out(e: StreamError) -> StreamError {
    match e {
        StreamError::Io(io) if io.kind() == std::io::ErrorKind::TimedOut => {
            StreamError::Refused(crate::stream::Refusal::Stalled)
        }
        other => other,
    }
}

/// One sync stream: queued frames written, received frames handed to the
/// driver's inbox.
async fn run_conn(
    conn: ConnId,
    stream: SyncStream,
    early: Vec<Vec<u8>>,
    mut rx: mpsc::UnboundedReceiver<ConnOut>,
    inbox: mpsc::UnboundedSender<DriverInput>,
    heard: &std::sync::atomic::AtomicBool,
) -> Result<(), StreamError> {
    // `_place` is held until the exchange ends.
    let SyncStream {
        stream,
        mut sealer,
        mut opener,
        _place,
        ..
    } = stream;
    let (mut reader, mut writer) = stream.into_split();
    // Whether the engine gave the exchange up.
    let writing = async move {
        for body in early {
            sealer.write_frame(&mut writer, &body).await?;
        }
        while let Some(out) = rx.recv().await {
            match out {
                ConnOut::Frame(body) => sealer.write_frame(&mut writer, &body).await?,
                ConnOut::Close => break,
                ConnOut::Abandon => return Ok(true),
            }
        }
        writer.shutdown().await.map_err(StreamError::from)?;
        Ok::<_, StreamError>(false)
    };
    let reading = async move {
        loop {
            match opener.read_frame(&mut reader).await? {
                Some(body) => {
                    heard.store(true, std::sync::atomic::Ordering::Relaxed);
                    if inbox.send(DriverInput::Frame(conn, body)).is_err() {
                        return Ok(());
                    }
                }
                None => {
                    // Tell the engine now; the writer may still be waiting.
                    let _ = inbox.send(DriverInput::Closed(conn));
                    return Ok(());
                }
            }
        }
    };
    // The stream is done when we closed our side and the peer closed theirs,
    // at the first error on either side, or at once when the exchange was
    // given up.
    tokio::pin!(writing, reading);
    let mut read_all = false;
    loop {
        tokio::select! {
            abandoned = &mut writing => {
                return match abandoned? {
                    true => Ok(()),
                    false if read_all => Ok(()),
                    false => (&mut reading).await,
                };
            }
            read = &mut reading, if !read_all => {
                read?;
                read_all = true;
            }
        }
    }
}

/// What the listener gave: a connection (or an accept error), or the end
/// of a pause after running out of descriptors.
enum NextConnection {
    Accepted(std::io::Result<(TcpStream, SocketAddr)>),
    Resumed,
}

/// The next connection, or the end of the accept pause when one runs.
async fn next_connection(listener: &TcpListener, paused_until: Option<Instant>) -> NextConnection {
    match paused_until {
        Some(until) => {
            tokio::time::sleep_until(until).await;
            NextConnection::Resumed
        }
        None => NextConnection::Accepted(listener.accept().await),
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::time::Duration;

    /// A plaintext caller's call stream still in its setup when its host
    /// stops gracefully: the host refuses the call as stopping (a caller
    /// may move it elsewhere), it does not cut the connection unanswered.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_call_stream_in_its_setup_at_a_graceful_stop_is_refused_not_cut() {
        use crate::rpc::proto::RpcMsg;
        let mut cfg = crate::Config::new("setup-at-stop");
        cfg.profile = crate::Profile::Local;
        cfg.collect_facts = false;
        let host = crate::Node::start(cfg).await.unwrap();
        // Accepted; its setup waits for the stream's first bytes.
        let mut raw = std::net::TcpStream::connect(host.addr()).unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        host.shutdown().await.unwrap();
        let call = crate::wire::encode(&RpcMsg::Call {
            id: 1,
            caller: "raw".into(),
            tribe: "t".into(),
            plugin: "p".into(),
            version: "1".into(),
            kind: crate::records::PluginKind::Processor,
            budget_ms: 5000,
            payload: b"x".to_vec(),
        });
        let mut bytes = vec![0, 0, 0, 1, crate::wire::CHANNEL_RPC];
        bytes.extend_from_slice(&u32::try_from(call.len()).unwrap().to_be_bytes());
        bytes.extend_from_slice(&call);
        raw.write_all(&bytes).unwrap();
        raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = raw.read(&mut buf) {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        let mut answers = Vec::new();
        let mut at = 0;
        while at + 4 <= got.len() {
            let len = u32::from_be_bytes(got[at..at + 4].try_into().unwrap()) as usize;
            let Some(frame) = got.get(at + 4..at + 4 + len) else {
                break;
            };
            answers.push(format!("{:?}", crate::wire::decode::<RpcMsg>(frame)));
            at += 4 + len;
        }
        assert!(
            answers.iter().any(|a| a.contains("ShuttingDown")),
            "the call was neither run nor refused: {answers:?}"
        );
    }

    #[test]
    fn a_stream_failed_for_want_of_this_process_own_resources_blames_no_peer() {
        let own = super::io_failure(&std::io::Error::from_raw_os_error(libc::EMFILE), true);
        assert!(own.contains("this process could not open a connection"), "{own}");
        assert!(own.contains("not the peer's fault"), "{own}");
        let reset = std::io::Error::from_raw_os_error(libc::ECONNRESET);
        let peer = super::io_failure(&reset, false);
        assert!(peer.starts_with("the connection failed ("), "{peer}");
        assert!(!peer.contains("encryption"), "{peer}");
        // A plaintext stream cut by its peer: most likely one that requires
        // encryption.
        let plain = super::io_failure(&reset, true);
        assert!(plain.contains("it may require encryption"), "{plain}");
        // A connect that timed out is no answer, not a stalled setup.
        let timed_out = std::io::Error::other(super::ConnectTimedOut);
        assert!(super::io_failure(&timed_out, true).starts_with("no answer"));
        assert!(matches!(
            super::stalled_if_timed_out(crate::stream::StreamError::Io(timed_out)),
            crate::stream::StreamError::Io(_)
        ));
    }
}
