//! The Rust API: [`Node::start`] a node, send it commands (async methods
//! returning `Result`), read snapshots, and consume events from a stream.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tracing::Instrument as _;

use crate::config::Config;
use crate::counters::Counters;
use crate::engine::commands::Command;
use crate::engine::{Engine, Event};
use crate::error::{Error, Result};
use crate::records::{ArtifactRef, PluginKind, TaskState};
use crate::rpc::call::Carry;
use crate::rpc::server::Serving;
use crate::runtime::{self, Driver, DriverInput, Faults};
use crate::{MemberInfo, Policy, TribeInfo};

mod join;
pub(crate) use join::join_places;
pub use join::MAX_JOIN_PLACES;

/// How long a keyring step waits for the live members to catch up with
/// the one before it (see [`Node::use_key`], [`Node::remove_key`]).
pub const KEY_SPREAD_WAIT: Duration = Duration::from_secs(10);

/// How long [`Node::use_key`] waits for a key no live member is known to
/// hold to be heard of (installed through another node a moment ago),
/// before it refuses it as unknown.
pub const UNKNOWN_KEY_WAIT: Duration = Duration::from_secs(3);

/// `InvalidArgument` unless polled inside a tokio runtime: `what` waits on
/// tokio's timers or sockets, which panic anywhere else.
fn need_tokio(what: &str) -> Result<()> {
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(Error::InvalidArgument(format!(
            "{what} needs a tokio runtime: poll it in a task, or drive it with \
             tokio's Handle::block_on"
        )));
    }
    Ok(())
}

/// A running node. Cheap to clone; every clone drives the same node.
/// Dropping the last clone without [`Node::shutdown`] stops the node without
/// a goodbye (peers will mark it failed); calls it serves are refused from
/// then on (their callers move them), those running are still answered,
/// and calls it made end `ShuttingDown`. A handler served by a node that
/// keeps a clone of that node keeps it alive (the node holds its handlers)
/// until [`Node::shutdown`] or [`Node::abort`]; a handler that only needs
/// it while the node runs keeps a [`WeakNode`] instead.
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

/// A handle that does not keep its node running (see [`Node::downgrade`]):
/// for a handler or a task that calls back into the node serving it.
#[derive(Clone)]
pub struct WeakNode {
    inner: std::sync::Weak<Inner>,
}

impl WeakNode {
    /// The node, while any [`Node`] clone of it is left.
    pub fn upgrade(&self) -> Option<Node> {
        self.inner.upgrade().map(|inner| Node { inner })
    }
}

impl std::fmt::Debug for WeakNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WeakNode").finish_non_exhaustive()
    }
}

struct Inner {
    shared: Arc<runtime::Shared>,
    inbox: mpsc::UnboundedSender<DriverInput>,
    name: String,
    addr: SocketAddr,
    first_events: Mutex<Option<EventStream>>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    rpc: Arc<crate::rpc::call::Rpc>,
    /// Joins under way at once (see [`Node::join_cluster`]); more wait.
    joins: tokio::sync::Semaphore,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(task) = self.task.lock().unwrap_or_else(|p| p.into_inner()).take() {
            task.abort();
        }
        // The call streams go with the node (they would otherwise live on,
        // refusing every call as not served by a host its callers still
        // list alive): new calls are refused as by a stopping node (their
        // callers move them), and each stream says goodbye and ends once
        // its calls are answered (a handler that dropped the node's last
        // handle still answers). The node's own streams close.
        self.rpc.server.stop();
        self.rpc.server.farewell();
        self.rpc.pool.close_all();
    }
}

/// Events of one subscriber, in order.
pub struct EventStream {
    rx: mpsc::Receiver<Event>,
    missed: Arc<std::sync::atomic::AtomicU64>,
}

impl EventStream {
    /// A stream and the node's side of it.
    fn new() -> (runtime::Subscriber, EventStream) {
        let (tx, rx) = mpsc::channel(runtime::EVENT_QUEUE);
        let missed = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let sub = runtime::Subscriber {
            tx,
            missed: missed.clone(),
        };
        (sub, EventStream { rx, missed })
    }

    /// How many events this stream has lost so far because it fell more
    /// than 65,536 events behind (the node-wide sum is
    /// [`Counters::events_dropped`]). When it grows, what the stream showed
    /// is incomplete from that point: read the snapshots
    /// ([`Node::members`], [`Node::tribes`], ...) again for the current truth.
    pub fn missed(&self) -> u64 {
        self.missed.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The next event; `None` once the node has stopped.
    pub async fn next(&mut self) -> Option<Event> {
        self.rx.recv().await
    }

    /// An event already queued, without waiting.
    pub fn try_next(&mut self) -> Option<Event> {
        self.rx.try_recv().ok()
    }
}

impl Node {
    /// Binds the sockets, starts the engine and joins through the seeds. Must
    /// be called inside a tokio runtime with I/O and timers enabled
    /// (`enable_all`); without them it panics with tokio's message, here
    /// rather than in the node's tasks later. Events from the very start are
    /// kept for the first [`Node::events`] call.
    pub async fn start(config: Config) -> Result<Node> {
        Node::start_inner(config, Arc::new(Faults::default())).await
    }

    /// [`Node::start`] with fault injection in place from the first moment
    /// (a skewed clock, say); for tests (feature `internals`).
    #[cfg(feature = "internals")]
    #[doc(hidden)]
    pub async fn start_with_faults(config: Config, faults: Arc<Faults>) -> Result<Node> {
        Node::start_inner(config, faults).await
    }

    async fn start_inner(mut config: Config, faults: Arc<Faults>) -> Result<Node> {
        config.validate()?;
        // Fixed now: a relative data dir would move with the process's
        // working directory (a daemon's chdir), and the node would then
        // write its state somewhere else, or nowhere.
        if let Some(dir) = config.data_dir.take() {
            config.data_dir = Some(std::path::absolute(&dir).map_err(|e| {
                Error::Io(format!(
                    "cannot make data dir {} absolute: {e}",
                    dir.display()
                ))
            })?);
        }
        // Every log record of the node's own work names it: each of its
        // tasks runs in this span (several nodes may share a process).
        let span = runtime::node_span(&config.name);
        Node::start_in_span(config, faults).instrument(span).await
    }

    async fn start_in_span(config: Config, faults: Arc<Faults>) -> Result<Node> {
        // Without timers the driver would die in its first turn and leave a
        // node that only says "shutting down": tokio's panic says why, here.
        tokio::time::sleep(Duration::ZERO).await;
        crate::policy::warm_up();
        let (udp, listener) = runtime::bind(config.bind).await?;
        let bound = udp.local_addr()?;
        // `validate` refused an unspecified bind with no advertise address.
        let addr = match config.advertise {
            // Port 0 there means "the port bound" (as for a bind to port 0,
            // behind the same address a NAT or container maps).
            Some(a) if a.port() == 0 => SocketAddr::new(a.ip(), bound.port()),
            Some(a) => a,
            None => bound,
        };
        let collected = if config.collect_facts {
            crate::facts::collect()
        } else {
            Default::default()
        };
        let now = faults.now_ms();
        let mut config = config;
        let mut dir_lock = None;
        let mut durable = None;
        if let Some(dir) = &config.data_dir {
            crate::datadir::prepare(dir)?;
            dir_lock = Some(Arc::new(crate::datadir::lock(dir)?));
            crate::datadir::refuse_unwritable(dir)?;
            durable = crate::datadir::load_for(dir, &config.name)?;
            config.keyring = crate::datadir::merge_keyring(dir, config.keyring.take())?;
        }
        // A restart is newer than the last run even if the clock stepped
        // back; not past the peers' horizon for a damaged kept time.
        let kept_generation = durable.as_ref().map(|d| d.generation).filter(|&g| {
            let plausible = crate::engine::durable::plausible_kept_ms(g, now);
            if !plausible {
                tracing::warn!(
                    ahead_s = g.saturating_sub(now) / 1000,
                    "the data dir's start time of this node is far ahead of its clock (more than 30 days): taken as damaged, not as this node's floor"
                );
            }
            plausible
        });
        let kept_generation = kept_generation.map(|g| g.saturating_add(1));
        let generation = config
            .generation
            .unwrap_or(now)
            .max(kept_generation.unwrap_or(0));
        let mut engine = Engine::new(&config, addr, generation, collected, now, rand::random())?;
        engine.reseed_nonces(rand::random());
        if let Some(durable) = durable {
            tracing::info!(
                peers = durable.peers.len(),
                records = durable.records.len(),
                "read from the data dir"
            );
            engine.restore(now, durable);
        }
        engine.start(now);

        let rpc_counters = Arc::new(crate::rpc::RpcCounters::default());
        // The server asks the engine whether this node is in a call's tribe;
        // the engine's home is made just below.
        let home: Arc<std::sync::OnceLock<std::sync::Weak<runtime::Shared>>> = Arc::default();
        let in_tribe = {
            let home = home.clone();
            Box::new(move |tribe: &str| {
                home.get()
                    .and_then(std::sync::Weak::upgrade)
                    .is_some_and(|shared| shared.engine().in_tribe(tribe))
            })
        };
        let rpc = Arc::new(crate::rpc::call::Rpc {
            server: Arc::new(crate::rpc::server::Server::new(
                config.rpc.clone(),
                rpc_counters.clone(),
                in_tribe,
            )),
            pool: crate::rpc::client::Pool::new(
                config.rpc.clone(),
                config.max_frame,
                rpc_counters.clone(),
            ),
            counters: rpc_counters,
        });
        let (first_sub, first_events) = EventStream::new();
        let (inbox_tx, inbox_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(runtime::Shared {
            engine: Mutex::new(engine),
            subscribers: Mutex::new(Some(vec![first_sub])),
            ended: tokio::sync::watch::Sender::new(false),
            stop_taken: std::sync::atomic::AtomicBool::new(false),
            last_state_unsaved: std::sync::atomic::AtomicBool::new(false),
            events_dropped: Default::default(),
            faults,
            max_frame: config.max_frame,
            data_dir: config.data_dir.clone(),
            rpc: rpc.clone(),
            wake: inbox_tx.clone(),
            artifact_loads: Default::default(),
            // `start_in_span` runs in the node's span.
            span: tracing::Span::current(),
        });
        let _ = home.set(Arc::downgrade(&shared));
        let mut driver = Driver::new(shared.clone(), udp, listener, inbox_rx, inbox_tx.clone())?;
        driver.dir_lock = dir_lock;
        let task = tokio::spawn(driver.run().in_current_span());
        if !config.seed_names.is_empty() {
            tokio::spawn(
                crate::seeds::follow(
                    config.seed_names.clone(),
                    Arc::downgrade(&shared),
                    config.effective_timings().join_retry,
                )
                .in_current_span(),
            );
        }
        // Said with the start: a node given no keyring runs in plaintext.
        let encryption = match &config.keyring {
            Some(_) => config.encryption.as_str(),
            None => "off (no keyring)",
        };
        tracing::info!(%addr, encryption, "node started");
        Ok(Node {
            inner: Arc::new(Inner {
                shared,
                inbox: inbox_tx,
                name: config.name,
                addr,
                first_events: Mutex::new(Some(first_events)),
                task: Mutex::new(Some(task)),
                rpc,
                joins: tokio::sync::Semaphore::new(join::MAX_JOINS),
            }),
        })
    }

    /// A handle to this node that does not keep it running: a handler the
    /// node serves that calls back into it keeps one of these, not a
    /// [`Node`] clone (which would keep the node alive while it serves).
    pub fn downgrade(&self) -> WeakNode {
        WeakNode {
            inner: Arc::downgrade(&self.inner),
        }
    }

    /// This node's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The advertised gossip and stream address.
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// The event stream. The first call gets every event since start; later
    /// calls get events from about the moment of the call (events are
    /// delivered by the node's task, so one of a command that returned just
    /// before may still come). A subscriber more than
    /// 65,536 events behind loses new ones (counted in its
    /// [`EventStream::missed`] and in [`Counters::events_dropped`]);
    /// snapshots always give the current truth.
    pub fn events(&self) -> EventStream {
        if let Some(stream) = self
            .inner
            .first_events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            return stream;
        }
        let (sub, stream) = EventStream::new();
        // After the node stopped, `sub` is dropped here and the stream ends.
        if let Some(subs) = self
            .inner
            .shared
            .subscribers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
        {
            // Streams dropped since the last event are let go here too, not
            // only when an event comes: a program that opens a stream now
            // and then on a quiet node would keep every one.
            subs.retain(|old| !old.tx.is_closed());
            subs.push(sub);
        }
        stream
    }

    /// How many event streams the node keeps sending to; for tests
    /// (feature `internals`).
    #[cfg(feature = "internals")]
    #[doc(hidden)]
    pub fn event_subscribers(&self) -> usize {
        self.inner
            .shared
            .subscribers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map_or(0, Vec::len)
    }

    /// Fault injection (drop traffic to or from peers, random loss); for
    /// tests (feature `internals`).
    #[cfg(feature = "internals")]
    #[doc(hidden)]
    pub fn faults(&self) -> Arc<Faults> {
        self.inner.shared.faults.clone()
    }

    async fn command(&self, cmd: Command) -> Result<()> {
        if self.inner.inbox.is_closed() {
            return Err(Error::ShuttingDown);
        }
        let result = self
            .inner
            .shared
            .engine()
            .handle_command(self.inner.shared.now_ms(), cmd);
        // The engine queued outputs; the driver sends them.
        let _ = self.inner.inbox.send(DriverInput::Wake);
        result
    }

    /// Creates an empty tribe.
    pub async fn create_tribe(&self, tribe: &str) -> Result<()> {
        self.command(Command::CreateTribe {
            tribe: tribe.into(),
        })
        .await
    }

    /// Deletes a tribe, its catalog, its memberships and the policies that target it.
    pub async fn delete_tribe(&self, tribe: &str) -> Result<()> {
        self.command(Command::DeleteTribe {
            tribe: tribe.into(),
        })
        .await
    }

    /// Adds `node` (any known node, this one included) to `tribe` by hand.
    pub async fn join(&self, tribe: &str, node: &str) -> Result<()> {
        self.command(Command::Join {
            tribe: tribe.into(),
            node: node.into(),
        })
        .await
    }

    /// Removes the membership by hand of `node` in `tribe`.
    pub async fn leave(&self, tribe: &str, node: &str) -> Result<()> {
        self.command(Command::Leave {
            tribe: tribe.into(),
            node: node.into(),
        })
        .await
    }

    /// Adds a policy; `when` is CEL over `facts`, checked before it is spread.
    pub async fn add_policy(&self, name: &str, tribe: &str, when: &str) -> Result<()> {
        // Checked here, on the caller's thread: the engine never compiles.
        crate::policy::Condition::compile(when).map_err(|e| {
            // No thread to compile on says nothing of the expression.
            if e.is_transient() {
                Error::Io(e.message)
            } else {
                Error::InvalidPolicy(e)
            }
        })?;
        self.command(Command::AddPolicy {
            name: name.into(),
            tribe: tribe.into(),
            when: when.into(),
        })
        .await
    }

    /// Removes a policy.
    pub async fn remove_policy(&self, name: &str) -> Result<()> {
        self.command(Command::RemovePolicy { name: name.into() })
            .await
    }

    /// Sets a user fact of this node (it overrides a collected fact of that name).
    pub async fn set_fact(&self, key: &str, value: &str) -> Result<()> {
        self.command(Command::SetFact {
            key: key.into(),
            value: value.into(),
        })
        .await
    }

    /// Removes a user fact of this node.
    pub async fn remove_fact(&self, key: &str) -> Result<()> {
        self.command(Command::RemoveFact { key: key.into() }).await
    }

    /// Adds a plugin entry to a tribe's catalog.
    pub async fn load_plugin(
        &self,
        tribe: &str,
        name: &str,
        version: &str,
        kind: PluginKind,
        artifact: Option<ArtifactRef>,
    ) -> Result<()> {
        self.command(Command::LoadPlugin {
            tribe: tribe.into(),
            name: name.into(),
            version: version.into(),
            kind,
            artifact,
        })
        .await
    }

    /// Removes a plugin entry from a tribe's catalog.
    pub async fn unload_plugin(&self, tribe: &str, name: &str, version: &str) -> Result<()> {
        self.command(Command::UnloadPlugin {
            tribe: tribe.into(),
            name: name.into(),
            version: version.into(),
        })
        .await
    }

    /// Adds a task (a JSON object manifest) to a tribe.
    pub async fn add_task(
        &self,
        tribe: &str,
        id: &str,
        manifest: &str,
        state: TaskState,
    ) -> Result<()> {
        self.command(Command::AddTask {
            tribe: tribe.into(),
            id: id.into(),
            manifest: manifest.into(),
            state,
        })
        .await
    }

    /// Removes a task.
    pub async fn remove_task(&self, tribe: &str, id: &str) -> Result<()> {
        self.command(Command::RemoveTask {
            tribe: tribe.into(),
            id: id.into(),
        })
        .await
    }

    /// Adds a key to every node's keyring. Keys travel only between nodes
    /// that require encryption, so this node must be in `require` mode.
    pub async fn install_key(&self, key: crate::SecretKey) -> Result<()> {
        self.command(Command::InstallKey(key)).await
    }

    /// Waits (up to 10 s) until every live member holds key `id`, else
    /// [`Error::KeyNotSpread`] naming those without it (the admin API's
    /// install answers once the key is everywhere).
    pub(crate) async fn wait_key_installed(&self, id: crate::KeyId) -> Result<()> {
        self.wait_for_keys(id, false).await
    }

    /// Makes an installed key the primary (sealing) key of every node.
    /// A key installed through another node a moment ago is waited for
    /// (up to 3 s, [`UNKNOWN_KEY_WAIT`], until some member is heard to hold
    /// it; else [`Error::UnknownKey`]).
    /// Then waits (up to 10 s) until every live member holds the key:
    /// a member sealing with a key another lacks is cut off from it, so a
    /// key not there by then is refused with [`Error::KeyNotSpread`] and
    /// nothing changes.
    pub async fn use_key(&self, id: crate::KeyId) -> Result<()> {
        self.keyring_steps_allowed()?;
        // A key installed through another node a moment ago may not be
        // heard of here yet.
        if self
            .heard_soon(|s| s.keys.iter().any(|k| k.id == id))
            .await?
        {
            self.wait_for_keys(id, false).await?;
        }
        self.command(Command::UseKey(id)).await
    }

    /// Removes a key from every node's keyring; the primary is refused.
    /// First waits (up to 10 s) until no live member seals with it any
    /// more (after a [`Node::use_key`] of another key, also one made
    /// through another node that has not reached this one yet), else
    /// refuses with [`Error::KeyNotSpread`]. This node's own primary is
    /// refused ([`Error::PrimaryKey`]) unless a switch to another key is
    /// heard of within 3 s ([`UNKNOWN_KEY_WAIT`]).
    pub async fn remove_key(&self, id: crate::KeyId) -> Result<()> {
        self.keyring_steps_allowed()?;
        // A switch made through another node a moment ago may not be heard
        // of here yet; this node's primary follows it once it is. (Another
        // member still sealing with another key says nothing: it may be
        // one that has not yet switched *to* `id`.)
        let switched = |s: &crate::KeyringStatus| s.primary != Some(id);
        if self.heard_soon(switched).await? {
            self.wait_for_keys(id, true).await?;
        }
        self.command(Command::RemoveKey(id)).await
    }

    /// Refuses a keyring step at once where the node would refuse it
    /// after the waits for other nodes (the engine's own check).
    fn keyring_steps_allowed(&self) -> Result<()> {
        self.inner.shared.engine().check_keyring_op()
    }

    /// Whether the keyring status satisfies `heard` within
    /// [`UNKNOWN_KEY_WAIT`]: a step taken through another node a moment
    /// ago may not have reached this one yet.
    async fn heard_soon(&self, heard: impl Fn(&crate::KeyringStatus) -> bool) -> Result<bool> {
        let deadline = tokio::time::Instant::now() + UNKNOWN_KEY_WAIT;
        loop {
            if heard(&self.keyring_status()) {
                return Ok(true);
            }
            if self.inner.inbox.is_closed() {
                return Err(Error::ShuttingDown);
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(false);
            }
            need_tokio("a keyring step that waits for the members")?;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until no live member lags behind the last keyring step on
    /// `id` (see `Engine::members_lagging`).
    async fn wait_for_keys(&self, id: crate::KeyId, primary: bool) -> Result<()> {
        let deadline = tokio::time::Instant::now() + KEY_SPREAD_WAIT;
        loop {
            let (lagging, left) = {
                let engine = self.inner.shared.engine();
                (engine.members_lagging(id, primary), engine.has_left())
            };
            if left || self.inner.inbox.is_closed() {
                return Err(Error::ShuttingDown);
            }
            if lagging.is_empty() {
                return Ok(());
            }
            // A step through another node undid what is waited for: say so
            // now, not as "not spread" after the whole wait.
            let status = self.keyring_status();
            if !primary && !status.keys.iter().any(|k| k.id == id) {
                // Removed meanwhile.
                return Err(Error::UnknownKey(id.to_string()));
            }
            if primary && status.primary == Some(id) {
                // Made the primary again meanwhile.
                return Err(Error::PrimaryKey(id.to_string()));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::KeyNotSpread {
                    key: id.to_string(),
                    step: if primary {
                        "switched to another primary key"
                    } else {
                        "installed"
                    }
                    .into(),
                    waiting_for: lagging,
                    waited_s: KEY_SPREAD_WAIT.as_secs(),
                });
            }
            need_tokio("a keyring step that waits for the members")?;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Changes this node's encryption mode (the live migration steps).
    pub async fn set_encryption(&self, mode: crate::Encryption) -> Result<()> {
        self.command(Command::SetEncryption(mode)).await
    }

    /// Which live nodes hold which keys, and which is primary where.
    pub fn keyring_status(&self) -> crate::KeyringStatus {
        self.inner.shared.engine().keyring_status()
    }

    /// Sets a task's desired state.
    pub async fn set_task_state(&self, tribe: &str, id: &str, state: TaskState) -> Result<()> {
        self.command(Command::SetTaskState {
            tribe: tribe.into(),
            id: id.into(),
            state,
        })
        .await
    }

    /// Every known member, this node included.
    pub fn members(&self) -> Vec<MemberInfo> {
        self.inner.shared.engine().members()
    }

    /// While another live node runs under this node's name with a newer
    /// generation (a copied configuration), the address it runs at: this
    /// node then keeps out of the cluster (it writes nothing, does not
    /// renew its generation, and is silent in gossip) until that node goes,
    /// then takes its name back. `None` while this node holds its name.
    pub fn name_held_by(&self) -> Option<SocketAddr> {
        self.inner.shared.engine().name_held_by()
    }

    /// A peer that refused this node's key in the last minute (until an
    /// exchange with it succeeds): the tribe may have rotated its keys
    /// without this node, which was down, frozen or cut off meanwhile, and
    /// now lives on alone (or with other nodes left behind). Installing the
    /// tribe's current key on this node ([`Node::install_key`]) brings it
    /// back. `None` otherwise.
    pub fn key_refused_by(&self) -> Option<SocketAddr> {
        self.inner.shared.engine().key_refused_by()
    }

    /// Live members, this node included.
    pub fn members_alive(&self) -> usize {
        self.inner.shared.engine().members_alive()
    }

    /// Every tribe with its live view and catalog.
    pub fn tribes(&self) -> Vec<TribeInfo> {
        self.inner.shared.engine().tribes()
    }

    /// How many tribes exist (the status line's count, without a snapshot).
    pub(crate) fn tribe_count(&self) -> usize {
        self.inner.shared.engine().tribe_count()
    }

    /// One tribe.
    pub fn tribe(&self, name: &str) -> Option<TribeInfo> {
        self.inner.shared.engine().tribe(name)
    }

    /// Every policy.
    pub fn policies(&self) -> Vec<Policy> {
        self.inner.shared.engine().policies()
    }

    /// Digest of the replicated state: equal on converged nodes.
    pub fn state_digest(&self) -> String {
        self.inner.shared.engine().state_digest()
    }

    /// Counters since start.
    pub fn counters(&self) -> Counters {
        let mut c = self.inner.shared.engine().counters();
        c.events_dropped = self
            .inner
            .shared
            .events_dropped
            .load(std::sync::atomic::Ordering::Relaxed);
        c
    }

    /// Gossip items not yet fully spread.
    pub fn broadcast_backlog(&self) -> usize {
        self.inner.shared.engine().broadcast_backlog()
    }

    /// Leaves the cluster gracefully (peers record *left*) and stops; it
    /// returns once the goodbye has gone out (about 1.5 s at most when
    /// peers do not answer). Calls
    /// this node still has in flight end with [`Error::ShuttingDown`]. Calls
    /// it serves are refused from now on (callers try another host); those
    /// already running are answered (handlers get up to 10 s while the
    /// runtime runs; a C node's until `tribe_node_free`, which sends the
    /// replies given by then, waiting at most 2 s) before its call streams
    /// close; [`Node::calls_drained`] tells when they have. A handler still
    /// running after those 10 s is cut off: its caller gets
    /// [`Error::Disconnected`] (the call may have run). Idempotent: a
    /// later call, or one after a call whose future was dropped before it
    /// finished, completes what is left of the stop and returns `Ok`.
    /// [`Error::ShuttingDown`] when the node had stopped without being
    /// told (the runtime it started on ended): it said no goodbye, and its
    /// peers record it *failed*.
    /// [`Error::Io`] when the node stopped, but its data dir did not take
    /// its last state (a full disk; a hung one, waited for 5 s): a restart
    /// from it comes back with what it last saved. Only the stop that
    /// found it says so; a later call returns `Ok`.
    pub async fn shutdown(&self) -> Result<()> {
        self.stop(true).await
    }

    /// Stops at once without a goodbye, as a crash would (peers record
    /// *failed*). Calls in flight end as with [`Node::shutdown`].
    pub async fn abort(&self) {
        let _ = self.stop(false).await;
    }

    /// Serves a plugin: registers `handler` and advertises the endpoint in
    /// this node's record, so members of this node's tribes can call it.
    /// Serving the same name and version again replaces the handler. The
    /// handler's future runs on the runtime's threads, beside the node's
    /// own work: it must not block them (a `std::thread::sleep` or a
    /// blocking read there delays every call and the node's protocol, and
    /// peers may suspect it); blocking work goes to
    /// `tokio::task::spawn_blocking` or [`Node::serve_responder`].
    pub async fn serve<F, Fut>(
        &self,
        name: &str,
        version: &str,
        kind: PluginKind,
        handler: F,
    ) -> Result<()>
    where
        F: Fn(crate::CallInfo, Vec<u8>) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = std::result::Result<Vec<u8>, crate::HandlerError>>
            + Send
            + 'static,
    {
        let handler: crate::rpc::Handler =
            Arc::new(move |info, payload| Box::pin(handler(info, payload)));
        self.register_and_advertise(name, version, kind, Serving::Future(handler))
            .await
    }

    /// Serves a plugin whose handler answers through a
    /// [`Responder`](crate::Responder) rather than a future: `handler` runs
    /// on a runtime thread for each call and must return at once, handing
    /// the call (and its responder) to a thread of the host's, which answers
    /// with `reply`, `fail` or `decline` from wherever it runs. The answer
    /// is written to the caller's stream from that thread, without a hop
    /// back through the runtime: the way to serve from a pool of threads of
    /// one's own (or another language's). Calls are bounded by the caller's
    /// deadline like any handler's; a responder dropped unanswered answers
    /// `"unanswered"`.
    pub async fn serve_responder<F>(
        &self,
        name: &str,
        version: &str,
        kind: PluginKind,
        handler: F,
    ) -> Result<()>
    where
        F: Fn(crate::CallInfo, Vec<u8>, crate::Responder) + Send + Sync + 'static,
    {
        self.register_and_advertise(name, version, kind, Serving::Responder(Arc::new(handler)))
            .await
    }

    async fn register_and_advertise(
        &self,
        name: &str,
        version: &str,
        kind: PluginKind,
        handler: Serving,
    ) -> Result<()> {
        crate::names::check("plugin name", name)?;
        crate::names::check_version(version)?;
        self.inner.rpc.server.register(name, version, kind, handler);
        let endpoint = crate::Endpoint {
            name: name.into(),
            version: version.into(),
            kind,
            addr: self.inner.addr,
        };
        let result = self.command(Command::Serve(endpoint)).await;
        if result.is_err() {
            self.inner.rpc.server.unregister(name, version);
        }
        result
    }

    /// Stops serving a plugin and withdraws its endpoint.
    pub async fn unserve(&self, name: &str, version: &str) -> Result<()> {
        self.command(Command::Unserve {
            name: name.into(),
            version: version.into(),
        })
        .await?;
        self.inner.rpc.server.unregister(name, version);
        Ok(())
    }

    /// Calls a plugin served by a live member of `target.tribe`: this node
    /// first when it serves it, then the member with the fewest calls
    /// outstanding, members suspected by SWIM last. A host that refuses or cannot be reached before the call
    /// ran is failed over, also (for a payload under 16 KiB) to a member
    /// that began serving the plugin while the call ran; every call ends
    /// with the reply or an error
    /// (`UnknownTribe` when this node does not know the tribe, or not yet;
    /// `NoProvider`, `Timeout`, `Remote`, `TooLarge`, `Overloaded`,
    /// `Disconnected`, `ShuttingDown`; `InvalidName` for a tribe or plugin
    /// name no command would take; `Io` when this process could not open a
    /// connection to any host for want of its own descriptors, buffers or
    /// memory, which no host is blamed for). A host runs a call for at most 5
    /// minutes: a longer `timeout` ends with `Timeout` after that, unless
    /// answered first.
    pub async fn call(
        &self,
        target: &crate::CallTarget,
        payload: Vec<u8>,
        timeout: std::time::Duration,
    ) -> Result<Vec<u8>> {
        self.call_carried(target, payload, timeout, Carry::Shared, true)
            .await
    }

    /// [`Node::call`] for a thread that blocks on the call anyway: one
    /// outside the runtime that drives this future with
    /// [`tokio::runtime::Runtime::block_on`] or
    /// [`tokio::runtime::Handle::block_on`] (a C or Python host's thread).
    /// A call to another node borrows a stream of its own, and the thread
    /// polling this future writes the request and waits in the socket for
    /// the answer itself: no runtime thread is woken to read the answer
    /// and hand it over. While the stream's recent answers came within
    /// microseconds, the thread looks for the answer for up to 50 µs
    /// before it blocks in the socket. Each poll may block the thread for about 20 ms
    /// (40 at most), after which the future is ready to be polled again at
    /// once, so a `select!` or `timeout` around it is looked at that often.
    ///
    /// Polled from a task, or on a current-thread runtime, it behaves as
    /// [`Node::call`] and never blocks. Driven by another executor than
    /// tokio's (outside any tokio runtime), it ends at once with
    /// `InvalidArgument`, as [`Node::call`] does.
    pub async fn call_blocking(
        &self,
        target: &crate::CallTarget,
        payload: Vec<u8>,
        timeout: std::time::Duration,
    ) -> Result<Vec<u8>> {
        // A task must not block its runtime's thread, nor the root future
        // of a current-thread runtime, whose thread runs the node.
        let current_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread);
        let carry = if tokio::task::try_id().is_some() || current_thread {
            Carry::Shared
        } else {
            Carry::Borrowed
        };
        self.call_carried(target, payload, timeout, carry, true)
            .await
    }

    /// [`Node::call`] whose outcome is not counted yet: a C host's
    /// asynchronous call, which its host may end first
    /// (`tribe_node_call_expire`), counts as whichever ends it.
    pub(crate) async fn call_uncounted(
        &self,
        target: &crate::CallTarget,
        payload: Vec<u8>,
        timeout: std::time::Duration,
    ) -> Result<Vec<u8>> {
        self.call_carried(target, payload, timeout, Carry::Shared, false)
            .await
    }

    /// Counts a call's outcome in [`Node::rpc_stats`].
    pub(crate) fn count_call(&self, result: &Result<Vec<u8>>) {
        crate::rpc::client::count(&self.inner.rpc.counters, result);
    }

    /// Counts a call its caller gave up on in [`Node::rpc_stats`].
    pub(crate) fn count_abandoned_call(&self) {
        crate::rpc::RpcCounters::bump(&self.inner.rpc.counters.abandoned);
    }

    async fn call_carried(
        &self,
        target: &crate::CallTarget,
        payload: Vec<u8>,
        timeout: std::time::Duration,
        carry: Carry,
        counted: bool,
    ) -> Result<Vec<u8>> {
        if self.inner.inbox.is_closed() {
            return Err(Error::ShuttingDown);
        }
        need_tokio("a call")?;
        target.check()?;
        let providers = || {
            self.inner.shared.engine().providers(
                &target.tribe,
                &target.plugin,
                target.version.as_deref(),
                target.kind,
            )
        };
        let snap = crate::rpc::call::Snapshot {
            me: self.inner.name.clone(),
            providers: providers(),
            security: self.inner.shared.engine().stream_security(),
        };
        self.inner
            .rpc
            .call(snap, &providers, target, payload, timeout, carry, counted)
            .await
    }

    /// Calls this node's own handler for a plugin, with the same bounds and
    /// protection as a remote call (for workflow steps that name no tribe).
    pub async fn call_local(
        &self,
        plugin: &str,
        version: Option<&str>,
        kind: PluginKind,
        payload: Vec<u8>,
        timeout: std::time::Duration,
    ) -> Result<Vec<u8>> {
        need_tokio("a call")?;
        let rpc = &self.inner.rpc;
        let local = crate::rpc::call::Local {
            caller: &self.inner.name,
            tribe: "",
            plugin,
            version,
            kind,
        };
        let result = rpc.run_local(local, payload, timeout).await;
        crate::rpc::client::count(&rpc.counters, &result);
        result
    }

    /// Keeps `bytes` as a plugin artifact this node hands out, advertised in
    /// its record; the returned reference goes into a plugin entry.
    pub fn hold_artifact(&self, bytes: Vec<u8>) -> Result<crate::ArtifactRef> {
        crate::artifacts::hold(&self.inner.shared, Arc::new(bytes))
    }

    /// Holds `bytes` and adds a plugin entry carrying them to a tribe's
    /// catalog: every member fetches and verifies them before its `PluginLoad`.
    pub async fn load_plugin_with_artifact(
        &self,
        tribe: &str,
        name: &str,
        version: &str,
        kind: PluginKind,
        bytes: Vec<u8>,
    ) -> Result<crate::ArtifactRef> {
        let artifact = self.hold_artifact(bytes)?;
        self.load_plugin(tribe, name, version, kind, Some(artifact.clone()))
            .await?;
        Ok(artifact)
    }

    /// The verified bytes of an artifact this node holds.
    pub fn artifact(&self, sha256: &[u8; 32]) -> Option<Arc<Vec<u8>>> {
        self.inner.rpc.server.artifact(sha256)
    }

    /// Counters of the call path.
    pub fn rpc_stats(&self) -> crate::rpc::RpcStats {
        let rpc = &self.inner.rpc;
        let mut stats = rpc.counters.stats();
        stats.in_flight = rpc.pool.in_flight() as u64;
        stats.serving = rpc.server.serving() as u64;
        stats.streams_accepted = rpc.server.streams_accepted() as u64;
        stats
    }

    /// Runs the call streams this node accepts on `handle` (another
    /// runtime's), from now on.
    pub(crate) fn set_call_executor(&self, handle: tokio::runtime::Handle) {
        self.inner.rpc.server.set_executor(handle);
    }

    /// Ends once every call this node read has been answered (or is over
    /// without an answer: its caller gave up, its budget ran out, its
    /// stream ended; a handler still at work on it has nothing left to
    /// send) and every reply written to its stream (or the stream cut).
    /// After [`Node::shutdown`] it also waits until the connections being
    /// set up are served and the call streams have gone 50 ms without a
    /// request: what callers sent before they heard the goodbye is refused
    /// unrun, and they move it to another member. A program that exits
    /// right after awaits it (with a timeout of its choice) so that no
    /// reply is cut short and no request lost. While the node serves, it
    /// ends at a moment with no call running. `InvalidArgument` when
    /// polled outside a tokio runtime (its timers are tokio's).
    pub async fn calls_drained(&self) -> Result<()> {
        need_tokio("calls_drained")?;
        self.inner.rpc.server.replies_sent().await;
        Ok(())
    }

    /// [`Node::calls_drained`] without waiting for the calls still
    /// unanswered (the C ABI's free after a host gave up on its handlers).
    pub(crate) async fn given_replies_sent(&self) {
        self.inner.rpc.server.given_replies_sent().await;
    }

    /// The raw call path (server, pool, counters); for tests (feature
    /// `internals`).
    #[cfg(feature = "internals")]
    #[doc(hidden)]
    pub fn rpc(&self) -> Arc<crate::rpc::call::Rpc> {
        self.inner.rpc.clone()
    }

    async fn stop(&self, leave: bool) -> Result<()> {
        if leave {
            self.inner.rpc.server.stop();
        } else {
            self.inner.rpc.server.kill();
        }
        let (done, wait) = oneshot::channel();
        if self
            .inner
            .inbox
            .send(DriverInput::Stop { leave, done })
            .is_ok()
        {
            let _ = wait.await;
        }
        let stop_taken = self
            .inner
            .shared
            .stop_taken
            .load(std::sync::atomic::Ordering::SeqCst);
        // Every step from here is safe to repeat, so a stop whose caller
        // gave up waiting (a timeout around it) is finished by the next.
        let mut ended = self.inner.shared.ended.subscribe();
        let _ = ended.wait_for(|ended| *ended).await;
        // The listener is closed now: callers told to move on find nobody here.
        if leave {
            self.inner.rpc.server.farewell();
        }
        self.inner.rpc.pool.close_all();
        // The runtime ended before any stop: no goodbye went out.
        if leave && !stop_taken {
            return Err(Error::ShuttingDown);
        }
        let unsaved = &self.inner.shared.last_state_unsaved;
        if leave && unsaved.swap(false, std::sync::atomic::Ordering::SeqCst) {
            return Err(Error::Io(
                "the node stopped, but its data dir did not take its last state (see the log): \
                 a restart from it comes back with what it last saved"
                    .into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A policy that finds no thread to compile on is an I/O error (a
    /// passing shortage), not an invalid expression.
    #[tokio::test]
    async fn a_policy_compiled_without_a_thread_is_an_io_error() {
        let mut cfg = Config::new("no-thread");
        cfg.bind = "127.0.0.1:0".parse().unwrap();
        cfg.collect_facts = false;
        let node = Node::start(cfg).await.unwrap();
        crate::policy::FAIL_THREAD_START.with(|f| f.set(true));
        let refused = node.add_policy("p", "t", "true").await;
        crate::policy::FAIL_THREAD_START.with(|f| f.set(false));
        assert!(matches!(refused, Err(Error::Io(_))), "{refused:?}");
        node.add_policy("p", "t", "true").await.unwrap();
        node.shutdown().await.unwrap();
    }
}
