//! `NativeNode`: one `tribe::Node` and its handler pool.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};
use tribe::{CallTarget, Config, Encryption, KeyId, Keyring, PluginKind, Profile, SecretKey};

use crate::errors::{check, to_py, value_error};
use crate::handlers::{Pool, Work};
use crate::{convert, wait};

/// The longest cluster label (bytes), as the library and C's
/// `tribe_config_set_label` bound it.
const MAX_LABEL: usize = 64;

/// How long a graceful stop waits for the replies of handlers still
/// running to be sent.
const DRAIN_GRACE: Duration = Duration::from_secs(2);

const OPEN: u8 = 0;
const CLOSED: u8 = 1;

/// A running node (the package's `Node` wraps it).
#[pyclass(frozen, module = "pytribe._native")]
pub(crate) struct NativeNode {
    node: tribe::Node,
    name: String,
    addr: String,
    pool: Pool,
    state: AtomicU8,
    /// Turns true once a shutdown or abort has finished.
    stopped: tokio::sync::watch::Sender<bool>,
    /// Set by an abort: a graceful stop under way stops waiting for the
    /// replies of handlers still running.
    aborted: tokio::sync::watch::Sender<bool>,
    /// Why the graceful stop could not keep the node's last state (its
    /// data dir did not take it); raised once, by the `shutdown` that
    /// sees the stop end.
    unsaved: std::sync::Arc<std::sync::Mutex<Option<tribe::Error>>>,
}

/// A call's timeout: 0 is a deadline already passed (a handler passing on
/// what is left of its budget, `info.remaining()`, once none is), which
/// raises `CallTimeoutError` at once, as the call would.
fn call_timeout(py: Python<'_>, timeout: f64) -> PyResult<Duration> {
    let timeout = seconds("timeout", timeout, true)?;
    if timeout.is_zero() {
        return Err(to_py(py, tribe::Error::Timeout { host: None }));
    }
    Ok(timeout)
}

/// A duration in seconds: finite, not negative (zero only when allowed).
pub(crate) fn seconds(what: &str, t: f64, allow_zero: bool) -> PyResult<Duration> {
    if !t.is_finite() || t < 0.0 || (!allow_zero && t == 0.0) || t > 1e9 {
        let want = if allow_zero {
            "from 0 to 1e9"
        } else {
            "more than 0, at most 1e9"
        };
        return Err(value_error(format!(
            "{what} must be a finite number of seconds, {want}, not {t}"
        )));
    }
    Ok(Duration::from_secs_f64(t))
}

/// Checks the timeout of a wait for the stop (None: no limit).
fn check_wait(timeout: Option<f64>) -> PyResult<()> {
    timeout.map_or(Ok(()), |t| seconds("timeout", t, true).map(|_| ()))
}

fn parse_addr(py: Python<'_>, what: &str, text: &str) -> PyResult<SocketAddr> {
    if let Ok(a) = text.parse::<SocketAddr>() {
        return Ok(a);
    }
    // A host name: resolved without the GIL, as DNS may take seconds. A bad
    // or unresolvable one is InvalidArgumentError, as in C and Go.
    let (what_owned, name) = (what.to_string(), text.to_string());
    py.detach(move || tribe::config::resolve_address(&what_owned, &name))
        .map_err(|e| to_py(py, e))
}

fn kind(text: &str) -> PyResult<PluginKind> {
    text.parse::<PluginKind>().map_err(|_| {
        value_error(format!(
            "plugin kind {text:?} is not collector, processor or publisher"
        ))
    })
}

fn secret(text: &str) -> PyResult<SecretKey> {
    SecretKey::from_base64(text.trim()).map_err(|e| value_error(e.to_string()))
}

/// The keyring a node starts with: `key` or the one in `key_file` seals,
/// `extra` also open (as C's `tribe_config_add_key` and Go's `ExtraKeys`).
fn keyring(
    py: Python<'_>,
    key: Option<&str>,
    key_file: Option<&std::path::Path>,
    extra: &[String],
) -> PyResult<Option<Keyring>> {
    let config = |why: &str| to_py(py, tribe::Error::Config(why.into()));
    let primary = match (key, key_file) {
        (Some(_), Some(_)) => return Err(config("key and key_file both given: give one")),
        (Some(k), None) => secret(k)?,
        (None, Some(path)) => {
            // Read without the GIL (a file system may be slow).
            py.detach(|| tribe::keyfile::read(path))
                .map_err(|e| to_py(py, e))?
        }
        (None, None) if extra.is_empty() => return Ok(None),
        (None, None) => {
            return Err(config(
                "extra_keys need a key or key_file (the key that seals)",
            ))
        }
    };
    let mut ring = Keyring::new(primary);
    for k in extra {
        ring.install(secret(k)?).map_err(|e| match e {
            tribe::crypto::KeyError::Full => to_py(py, tribe::Error::KeyringFull),
            other => value_error(other.to_string()),
        })?;
    }
    Ok(Some(ring))
}

/// A key or its id → the id.
fn key_id(text: &str) -> PyResult<KeyId> {
    KeyId::of_key_or_id(text).map_err(|e| value_error(e.to_string()))
}

/// The bytes of argument `what` (`payload`, `artifact`).
pub(crate) fn payload_bytes(what: &str, payload: &Bound<'_, PyAny>) -> PyResult<Vec<u8>> {
    crate::handlers::bytes_like(payload).ok_or_else(|| {
        let type_name = payload
            .get_type()
            .name()
            .map(|n| n.to_string())
            .unwrap_or_else(|_| "?".into());
        if type_name == "memoryview" {
            // A released view, or one whose buffer cannot be read.
            return value_error(format!("{what} is a memoryview that was released"));
        }
        PyTypeError::new_err(format!(
            "{what} must be bytes, bytearray or memoryview, not {type_name}"
        ))
    })
}

fn hex_sha(text: &str) -> PyResult<[u8; 32]> {
    let bad = || {
        // Cut as libtribe cuts names in its errors (a key in it withheld).
        let text = tribe::keyfile::withhold_keys(text);
        let shown: String = match text.char_indices().nth(80) {
            Some((end, _)) => format!("{}...", &text[..end]),
            None => text.into_owned(),
        };
        value_error(format!("{shown:?} is not a hex SHA-256 (64 hex digits)"))
    };
    if text.len() != 64 || !text.is_ascii() {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, chunk) in text.as_bytes().chunks(2).enumerate() {
        let s = std::str::from_utf8(chunk).map_err(|_| bad())?;
        out[i] = u8::from_str_radix(s, 16).map_err(|_| bad())?;
    }
    Ok(out)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The `tribe::Config` a node started with some arguments gets, built
/// once for `NativeNode(config)` or `config.check()`.
#[pyclass(frozen)]
pub(crate) struct NativeConfig {
    cfg: Config,
}

/// The longest `reap_after` a config takes (365 days, as
/// `Config::set_reap_after`), in seconds.
const MAX_REAP_AFTER_S: f64 = 365.0 * 24.0 * 3600.0;

#[pymethods]
impl NativeConfig {
    /// Builds the config of these arguments (those of `pytribe.Node`):
    /// each value refused as given (`InvalidArgumentError`, as C's setters
    /// and Go's `Start` refuse it), and the options that need each other
    /// (`ConfigError`: an encryption mode with no key, `key` and
    /// `key_file` both). What only holds together is left to
    /// `Config::validate`. The files it reads (a key file, a data dir's
    /// keyring) are read with the GIL released; a host name is looked up
    /// so too.
    #[new]
    #[pyo3(signature = (
        name, bind="127.0.0.1:0", seeds=Vec::new(), facts=BTreeMap::new(), key=None,
        profile="lan", label=None, encryption=None, data_dir=None, advertise=None,
        collect_facts=true, max_payload=None, limits=BTreeMap::new(), key_file=None,
        extra_keys=Vec::new(), reap_after=None
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        name: String,
        bind: &str,
        seeds: Vec<String>,
        facts: BTreeMap<String, String>,
        key: Option<&str>,
        profile: &str,
        label: Option<String>,
        encryption: Option<&str>,
        data_dir: Option<std::path::PathBuf>,
        advertise: Option<&str>,
        collect_facts: bool,
        max_payload: Option<usize>,
        limits: BTreeMap<String, usize>,
        key_file: Option<std::path::PathBuf>,
        extra_keys: Vec<String>,
        reap_after: Option<f64>,
    ) -> PyResult<NativeConfig> {
        let mut cfg = Config::new(name);
        cfg.bind = parse_addr(py, "bind", bind)?;
        // A name is looked up by the node, at start and while it is alone.
        for seed in &seeds {
            cfg.add_seed(seed).map_err(|e| match e {
                // Refused as given, not at start: no "invalid configuration".
                tribe::Error::Config(why) => value_error(why),
                other => value_error(other.to_string()),
            })?;
        }
        // Each fact and the label are checked as they are given, as C's
        // setters (and so Go's `Start`) do: `InvalidArgumentError`.
        for (k, v) in &facts {
            tribe::facts::validate_fact(k, v).map_err(|e| value_error(e.to_string()))?;
        }
        cfg.facts = facts;
        cfg.collect_facts = collect_facts;
        // The library's own errors, as C and Go get for the same values.
        cfg.profile = check(py, profile.parse::<Profile>())?;
        let label = label.unwrap_or_default();
        if label.len() > MAX_LABEL {
            return Err(value_error(format!(
                "the label is longer than {MAX_LABEL} bytes"
            )));
        }
        cfg.cluster_label = label;
        cfg.keyring = keyring(py, key, key_file.as_deref(), &extra_keys)?;
        if let Some(mode) = encryption {
            cfg.encryption = check(py, mode.parse::<Encryption>())?;
        }
        cfg.data_dir = data_dir;
        // Silently running in plaintext is not what a mode asks for.
        // (A data dir's keyring is read without the GIL.)
        if encryption.is_some() && !check(py, py.detach(|| cfg.will_hold_keys()))? {
            return Err(to_py(
                py,
                tribe::Error::Config(
                    "an encryption mode needs a key (key=...) or a data_dir holding a keyring"
                        .into(),
                ),
            ));
        }
        if let Some(a) = advertise {
            cfg.advertise = Some(parse_addr(py, "advertise", a)?);
        }
        if let Some(limit) = max_payload {
            // Past `tribe::MAX_PAYLOAD` the library refuses the configuration
            // at start (`ConfigError`), as `tribe_node_start` does in C.
            cfg.set_max_payload(limit);
        }
        for (name, value) in &limits {
            check(py, cfg.set_limit(name, *value))?;
        }
        if let Some(t) = reap_after {
            // Checked as a float first: a conversion to a Duration of
            // one out of range (or not finite) would panic.
            if !(0.001..=MAX_REAP_AFTER_S).contains(&t) {
                return Err(value_error(format!(
                    "reap_after must be 0.001 s to 365 days, not {t}"
                )));
            }
            check(py, cfg.set_reap_after(Duration::from_secs_f64(t)))?;
        }
        Ok(NativeConfig { cfg })
    }

    /// Checks the config as the start would before it opens any socket
    /// (`Config::check`, as C's `tribe_config_check`): raises what the
    /// start would raise; the GIL is released meanwhile.
    fn check(&self, py: Python<'_>) -> PyResult<()> {
        let cfg = &self.cfg;
        check(py, py.detach(|| cfg.check()))
    }
}

impl NativeNode {
    pub(crate) fn node(&self) -> &tribe::Node {
        &self.node
    }

    /// `ShutdownError` once the node is closed: what it last knew is no
    /// longer the cluster's state.
    fn live(&self, py: Python<'_>) -> PyResult<()> {
        if self.closed() {
            return Err(to_py(py, tribe::Error::ShuttingDown));
        }
        Ok(())
    }

    fn command<F>(&self, py: Python<'_>, fut: F) -> PyResult<()>
    where
        F: std::future::Future<Output = tribe::Result<()>> + Send,
    {
        let r = wait(py, fut)?;
        check(py, r)
    }

    /// Marks the node closed; `false` when it was already. Its handler
    /// pool is closed by the stop (see `begin_stop`).
    fn mark_closed(&self) -> bool {
        self.state.swap(CLOSED, Ordering::AcqRel) == OPEN
    }

    /// Closes the handler pool: its threads take no more calls, and the
    /// calls still queued are dropped (their callers move them).
    fn close_pool(&self) {
        self.pool.closed.store(true, Ordering::Release);
        self.pool.drain();
    }

    /// Starts a graceful shutdown (`leave`) or an abort on the runtime, so
    /// it finishes even if nobody waits; `false` when one had started already.
    /// An abort after a graceful shutdown cuts short what it left running:
    /// its call streams, and this node's calls to its own handlers.
    fn begin_stop(&self, leave: bool) -> PyResult<bool> {
        if !leave {
            self.aborted.send_replace(true);
        }
        if !self.mark_closed() {
            if !leave {
                let node = self.node.clone();
                crate::runtime()?.spawn(async move { node.abort().await });
            }
            return Ok(false);
        }
        let node = self.node.clone();
        let stopped = self.stopped.clone();
        let mut aborted = self.aborted.subscribe();
        let runtime = match crate::runtime() {
            Ok(runtime) => runtime,
            Err(e) => {
                self.close_pool();
                return Err(e);
            }
        };
        // The stop's first step, taken here, refuses new calls; only then
        // is the pool closed, its queued calls refused as by a stopping
        // node: their callers move them, and this node's own calls among
        // them end ShuttingDown (not NoProvider naming this node).
        let first = node.clone();
        let unsaved = self.unsaved.clone();
        let mut stop: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> =
            Box::pin(async move {
                if leave {
                    if let Err(e @ tribe::Error::Io(_)) = first.shutdown().await {
                        *unsaved.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                    }
                } else {
                    first.abort().await;
                }
            });
        let done = runtime.block_on(async {
            tokio::select! {
                biased;
                () = &mut stop => true,
                () = std::future::ready(()) => false,
            }
        });
        self.close_pool();
        runtime.spawn(async move {
            if !done {
                stop.await;
            }
            if leave {
                // The replies of handlers still running go out before the
                // node counts as stopped: a program may exit right after.
                // An abort meanwhile gives them up.
                let given_up = tokio::select! {
                    _ = tokio::time::timeout(DRAIN_GRACE, node.calls_drained()) => false,
                    _ = aborted.wait_for(|a| *a) => true,
                };
                if given_up {
                    node.abort().await;
                }
            }
            stopped.send_replace(true);
        });
        Ok(true)
    }
}

#[pymethods]
impl NativeNode {
    #[new]
    fn new(py: Python<'_>, config: &NativeConfig) -> PyResult<NativeNode> {
        let cfg = config.cfg.clone();
        let started = wait(py, async move { tribe::Node::start(cfg).await })?;
        let node = check(py, started)?;
        Ok(NativeNode {
            name: node.name().to_string(),
            addr: node.addr().to_string(),
            pool: Pool::new(node.name()),
            node,
            state: AtomicU8::new(OPEN),
            stopped: tokio::sync::watch::Sender::new(false),
            aborted: tokio::sync::watch::Sender::new(false),
            unsaved: Default::default(),
        })
    }

    /// This node's name.
    #[getter]
    fn name(&self) -> &str {
        &self.name
    }

    /// The advertised address (gossip UDP and stream TCP), `host:port`.
    #[getter]
    fn addr(&self) -> &str {
        &self.addr
    }

    /// Whether `shutdown` or `abort` was called.
    #[getter]
    fn closed(&self) -> bool {
        self.state.load(Ordering::Acquire) != OPEN
    }

    fn members<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        self.live(py)?;
        let members = py.detach(|| self.node.members());
        let list = PyList::empty(py);
        for m in &members {
            list.append(convert::to_py(py, &convert::member(m))?)?;
        }
        Ok(list)
    }

    fn members_alive(&self, py: Python<'_>) -> PyResult<usize> {
        self.live(py)?;
        Ok(py.detach(|| self.node.members_alive()))
    }

    fn tribes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        self.live(py)?;
        let tribes = py.detach(|| self.node.tribes());
        let list = PyList::empty(py);
        for t in &tribes {
            list.append(convert::to_py(py, &convert::tribe_info(t))?)?;
        }
        Ok(list)
    }

    fn tribe<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Option<Bound<'py, PyAny>>> {
        self.live(py)?;
        let t = py.detach(|| self.node.tribe(name));
        t.map(|t| convert::to_py(py, &convert::tribe_info(&t)))
            .transpose()
    }

    fn policies<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        self.live(py)?;
        let policies = py.detach(|| self.node.policies());
        let list = PyList::empty(py);
        for p in &policies {
            list.append(convert::to_py(py, &convert::policy(p))?)?;
        }
        Ok(list)
    }

    fn name_held_by(&self, py: Python<'_>) -> PyResult<Option<String>> {
        self.live(py)?;
        Ok(py
            .detach(|| self.node.name_held_by())
            .map(|a| a.to_string()))
    }

    fn key_refused_by(&self, py: Python<'_>) -> PyResult<Option<String>> {
        self.live(py)?;
        Ok(py
            .detach(|| self.node.key_refused_by())
            .map(|a| a.to_string()))
    }

    /// As the admin API's `GET /v1/status` (C's `tribe_node_status_json`).
    fn status<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.live(py)?;
        let status = py.detach(|| tribe::admin::json::Status::of(&self.node));
        convert::to_py(py, &convert::value(&status))
    }

    fn state_digest(&self, py: Python<'_>) -> PyResult<String> {
        self.live(py)?;
        Ok(py.detach(|| self.node.state_digest()))
    }

    fn keys<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.live(py)?;
        let status = py.detach(|| self.node.keyring_status());
        convert::to_py(py, &convert::keys(&status))
    }

    /// Every counter of the call path, named as in the `calls` object of
    /// C's `tribe_node_counters_json` (Go's `Counters()`); also after close.
    fn rpc_stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        convert::to_py(py, &serde_json::json!(self.node.rpc_stats()))
    }

    /// The node's counters as C's `tribe_node_counters_json` (Go's
    /// `Counters()`): `{"engine": ..., "calls": ...}`; also after close.
    fn counters<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let engine = py.detach(|| self.node.counters());
        let counters = serde_json::json!({ "engine": engine, "calls": self.node.rpc_stats() });
        convert::to_py(py, &counters)
    }

    fn create_tribe(&self, py: Python<'_>, tribe: &str) -> PyResult<()> {
        self.command(py, self.node.create_tribe(tribe))
    }

    fn delete_tribe(&self, py: Python<'_>, tribe: &str) -> PyResult<()> {
        self.command(py, self.node.delete_tribe(tribe))
    }

    fn join(&self, py: Python<'_>, tribe: &str, node: &str) -> PyResult<()> {
        self.command(py, self.node.join(tribe, node))
    }

    fn leave(&self, py: Python<'_>, tribe: &str, node: &str) -> PyResult<()> {
        self.command(py, self.node.leave(tribe, node))
    }

    fn add_policy(&self, py: Python<'_>, name: &str, tribe: &str, when: &str) -> PyResult<()> {
        self.command(py, self.node.add_policy(name, tribe, when))
    }

    fn remove_policy(&self, py: Python<'_>, name: &str) -> PyResult<()> {
        self.command(py, self.node.remove_policy(name))
    }

    fn set_fact(&self, py: Python<'_>, key: &str, value: &str) -> PyResult<()> {
        self.command(py, self.node.set_fact(key, value))
    }

    fn remove_fact(&self, py: Python<'_>, key: &str) -> PyResult<()> {
        self.command(py, self.node.remove_fact(key))
    }

    #[pyo3(signature = (tribe, name, version, kind, artifact=None))]
    fn load_plugin(
        &self,
        py: Python<'_>,
        tribe: &str,
        name: &str,
        version: &str,
        kind: &str,
        artifact: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Option<String>> {
        let k = self::kind(kind)?;
        match artifact {
            None => {
                self.command(py, self.node.load_plugin(tribe, name, version, k, None))?;
                Ok(None)
            }
            Some(bytes) => {
                let bytes = payload_bytes("load_plugin: artifact", bytes)?;
                let r = wait(
                    py,
                    self.node
                        .load_plugin_with_artifact(tribe, name, version, k, bytes),
                )?;
                Ok(Some(hex(&check(py, r)?.sha256)))
            }
        }
    }

    fn unload_plugin(
        &self,
        py: Python<'_>,
        tribe: &str,
        name: &str,
        version: &str,
    ) -> PyResult<()> {
        self.command(py, self.node.unload_plugin(tribe, name, version))
    }

    /// The verified bytes of an artifact this node holds, by hex SHA-256.
    fn artifact<'py>(
        &self,
        py: Python<'py>,
        sha256: &str,
    ) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let sha = hex_sha(sha256)?;
        self.live(py)?;
        Ok(self.node.artifact(&sha).map(|b| PyBytes::new(py, &b)))
    }

    #[pyo3(signature = (tribe, id, manifest, state="running"))]
    fn add_task(
        &self,
        py: Python<'_>,
        tribe: &str,
        id: &str,
        manifest: &str,
        state: &str,
    ) -> PyResult<()> {
        let state = task_state(state)?;
        self.command(py, self.node.add_task(tribe, id, manifest, state))
    }

    fn remove_task(&self, py: Python<'_>, tribe: &str, id: &str) -> PyResult<()> {
        self.command(py, self.node.remove_task(tribe, id))
    }

    fn set_task_state(&self, py: Python<'_>, tribe: &str, id: &str, state: &str) -> PyResult<()> {
        let state = task_state(state)?;
        self.command(py, self.node.set_task_state(tribe, id, state))
    }

    fn install_key(&self, py: Python<'_>, key: &str) -> PyResult<String> {
        let key = secret(key)?;
        let id = key.id().to_string();
        self.command(py, self.node.install_key(key))?;
        Ok(id)
    }

    fn use_key(&self, py: Python<'_>, key: &str) -> PyResult<String> {
        let id = key_id(key)?;
        self.command(py, self.node.use_key(id))?;
        Ok(id.to_string())
    }

    fn remove_key(&self, py: Python<'_>, key: &str) -> PyResult<String> {
        let id = key_id(key)?;
        self.command(py, self.node.remove_key(id))?;
        Ok(id.to_string())
    }

    /// Joins the cluster through `places` (see `tribe::Node::join_cluster`);
    /// how many addresses completed their exchange, or `None` when none
    /// had within `timeout` seconds (see `join_cluster_within`).
    #[pyo3(signature = (places, timeout=None))]
    fn join_cluster(
        &self,
        py: Python<'_>,
        places: Vec<String>,
        timeout: Option<f64>,
    ) -> PyResult<Option<usize>> {
        let r = match timeout {
            None => wait(py, self.node.join_cluster(&places))?,
            Some(t) => {
                let limit = seconds("timeout", t, true)?;
                match wait(py, self.node.join_cluster_within(&places, limit))? {
                    Err(tribe::Error::Timeout { .. }) => return Ok(None),
                    r => r,
                }
            }
        };
        check(py, r).map(Some)
    }

    /// `join_cluster` for asyncio: an asyncio future of how many addresses
    /// completed their exchange, or `None` as `join_cluster` gives it;
    /// cancelling it gives the join up.
    #[pyo3(signature = (r#loop, places, timeout=None))]
    fn join_cluster_async<'py>(
        &self,
        py: Python<'py>,
        r#loop: &Bound<'py, PyAny>,
        places: Vec<String>,
        timeout: Option<f64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let limit = timeout.map(|t| seconds("timeout", t, true)).transpose()?;
        let node = self.node.clone();
        crate::aio::spawn(py, r#loop, async move {
            let r = match limit {
                None => node.join_cluster(&places).await.map(Some),
                Some(l) => match node.join_cluster_within(&places, l).await {
                    Err(tribe::Error::Timeout { .. }) => Ok(None),
                    r => r.map(Some),
                },
            };
            let out: crate::aio::Outcome = Box::new(move |py| match r {
                Ok(n) => Ok(n.into_pyobject(py)?.into_any().unbind()),
                Err(e) => Err(to_py(py, e)),
            });
            out
        })
    }

    fn set_encryption(&self, py: Python<'_>, mode: &str) -> PyResult<()> {
        let mode = check(py, mode.parse::<Encryption>())?;
        self.command(py, self.node.set_encryption(mode))
    }

    /// Serves a plugin with a Python callable `handler(payload, info)`; its
    /// calls are queued for the pool threads (`take_call`).
    fn serve(
        &self,
        py: Python<'_>,
        name: &str,
        version: &str,
        kind: &str,
        handler: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        if !handler.is_callable() {
            return Err(PyTypeError::new_err("handler must be callable"));
        }
        if self.closed() {
            return Err(to_py(py, tribe::Error::ShuttingDown));
        }
        let k = self::kind(kind)?;
        let h = self.pool.rust_handler(handler.clone().unbind());
        self.command(py, self.node.serve_responder(name, version, k, h))
    }

    fn unserve(&self, py: Python<'_>, name: &str, version: &str) -> PyResult<()> {
        self.command(py, self.node.unserve(name, version))
    }

    /// The next call for a pool thread (see `pytribe._serve_calls`); `None`
    /// once the node closes or after `stop_workers`.
    fn take_call(&self, py: Python<'_>) -> PyResult<Option<crate::handlers::Taken>> {
        crate::handlers::take_call(py, &self.pool)
    }

    /// Tells `n` pool threads to leave once idle.
    fn stop_workers(&self, n: usize) {
        for _ in 0..n {
            let _ = self.pool.tx.send(Work::Stop);
        }
    }

    #[pyo3(signature = (tribe, plugin, payload, kind="processor", version=None, timeout=2.0))]
    #[allow(clippy::too_many_arguments)]
    fn call<'py>(
        &self,
        py: Python<'py>,
        tribe: &str,
        plugin: &str,
        payload: &Bound<'py, PyAny>,
        kind: &str,
        version: Option<String>,
        timeout: f64,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let target = CallTarget {
            tribe: tribe.into(),
            plugin: plugin.into(),
            version,
            kind: self::kind(kind)?,
        };
        let timeout = call_timeout(py, timeout)?;
        let payload = payload_bytes("call: payload", payload)?;
        let node = self.node.clone();
        let r = wait(py, async move {
            node.call_blocking(&target, payload, timeout).await
        })?;
        Ok(PyBytes::new(py, &check(py, r)?))
    }

    #[pyo3(signature = (r#loop, tribe, plugin, payload, kind="processor", version=None, timeout=2.0))]
    #[allow(clippy::too_many_arguments)]
    fn call_async<'py>(
        &self,
        py: Python<'py>,
        r#loop: &Bound<'py, PyAny>,
        tribe: &str,
        plugin: &str,
        payload: &Bound<'py, PyAny>,
        kind: &str,
        version: Option<String>,
        timeout: f64,
    ) -> PyResult<Bound<'py, PyAny>> {
        let target = CallTarget {
            tribe: tribe.into(),
            plugin: plugin.into(),
            version,
            kind: self::kind(kind)?,
        };
        let timeout = call_timeout(py, timeout)?;
        let payload = payload_bytes("call_async: payload", payload)?;
        let node = self.node.clone();
        crate::aio::spawn(py, r#loop, async move {
            let r = node.call(&target, payload, timeout).await;
            let out: crate::aio::Outcome = Box::new(move |py| match r {
                Ok(bytes) => Ok(PyBytes::new(py, &bytes).into_any().unbind()),
                Err(e) => Err(to_py(py, e)),
            });
            out
        })
    }

    /// A new event subscriber (the first one also gets the events since start).
    fn events(&self) -> crate::events::NativeEvents {
        crate::events::NativeEvents::new(self.node.events())
    }

    /// Leaves gracefully (peers record *left*) and stops; waits at most
    /// `timeout` seconds (None: until done). Idempotent. Returns whether the
    /// node has stopped; raises the I/O error of a stop whose data dir did
    /// not take the node's last state, once.
    #[pyo3(signature = (timeout=None))]
    fn shutdown(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<bool> {
        // A bad timeout is refused before anything stops.
        check_wait(timeout)?;
        self.begin_stop(true)?;
        let stopped = self.wait_stopped(py, timeout)?;
        if stopped {
            let unsaved = self
                .unsaved
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            if let Some(e) = unsaved {
                return Err(to_py(py, e));
            }
        }
        Ok(stopped)
    }

    /// Stops without a goodbye (peers record *failed*); waits like `shutdown`.
    #[pyo3(signature = (timeout=None))]
    fn abort(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<bool> {
        check_wait(timeout)?;
        self.begin_stop(false)?;
        self.wait_stopped(py, timeout)
    }

    /// Starts a graceful shutdown (`leave=True`) or an abort and returns at once.
    #[pyo3(signature = (leave=true))]
    fn stop_background(&self, leave: bool) -> PyResult<()> {
        self.begin_stop(leave).map(|_| ())
    }

    /// Waits until a shutdown or abort has finished, at most `timeout`
    /// seconds (None: as long as it takes); returns whether it has.
    #[pyo3(signature = (timeout=None))]
    fn wait_stopped(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<bool> {
        let mut rx = self.stopped.subscribe();
        let done = async move {
            let _ = rx.wait_for(|stopped| *stopped).await;
        };
        match timeout {
            None => {
                wait(py, done)?;
                Ok(true)
            }
            Some(t) => {
                let limit = seconds("timeout", t, true)?;
                Ok(crate::wait_for(py, done, limit)?.is_some())
            }
        }
    }

    fn __repr__(&self) -> String {
        format!("<NativeNode {} {}>", self.name, self.addr)
    }
}

fn task_state(state: &str) -> PyResult<tribe::TaskState> {
    match state {
        "running" => Ok(tribe::TaskState::Running),
        "stopped" => Ok(tribe::TaskState::Stopped),
        other => Err(value_error(format!(
            "task state {other:?} is not running or stopped"
        ))),
    }
}
