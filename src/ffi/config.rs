//! The config builder (`tribe_config`): made by `tribe_config_new`, filled
//! by setters, consumed by `tribe_node_start`, freed by `tribe_config_free`.

use std::ffi::c_char;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::cast;
use super::error::FfiError;
use super::group::{GroupCore, TribeGroup};
use crate::{Config, Error, Keyring, SecretKey};

/// What `tribe_node_start` takes.
pub struct TribeConfig {
    /// `None` once a start has used it.
    pub(super) inner: Option<Pending>,
}

/// A config not yet used by a start.
pub(super) struct Pending {
    pub(super) config: Config,
    pub(super) keys: Vec<SecretKey>,
    pub(super) worker_threads: usize,
    /// Log records queued as events from this level on (0: none).
    pub(super) log_level: u32,
    /// Whether the host chose an encryption mode, which needs a key.
    pub(super) encryption_set: bool,
    /// The poll group whose call-stream runtime the node shares.
    pub(super) group: Option<Arc<GroupCore>>,
    /// Warnings about what was given (a key file others may read), logged
    /// by the node at its start: no node's log is there to take them now.
    pub(super) warnings: Vec<String>,
}

/// What a start takes from a config.
pub(super) struct StartPlan {
    pub(super) config: Config,
    pub(super) worker_threads: usize,
    pub(super) log_level: u32,
    pub(super) group: Option<Arc<GroupCore>>,
    pub(super) warnings: Vec<String>,
}

impl TribeConfig {
    fn pending(&mut self) -> Result<&mut Pending, FfiError> {
        self.inner
            .as_mut()
            .ok_or_else(|| FfiError::consumed("the config (a start used it)"))
    }

    /// Takes the config for a start, building the keyring.
    pub(super) fn take(&mut self) -> Result<StartPlan, FfiError> {
        let Pending {
            mut config,
            keys,
            worker_threads,
            log_level,
            encryption_set,
            group,
            warnings,
        } = self
            .inner
            .take()
            .ok_or_else(|| FfiError::consumed("the config (a start used it)"))?;
        config.keyring = keyring(&config, keys, encryption_set)?;
        Ok(StartPlan {
            config,
            worker_threads,
            log_level,
            group,
            warnings,
        })
    }

    /// What a start would refuse in this config, before any socket.
    fn check(&self) -> Result<(), FfiError> {
        let p = self
            .inner
            .as_ref()
            .ok_or_else(|| FfiError::consumed("the config (a start used it)"))?;
        let mut config = p.config.clone();
        config.keyring = keyring(&config, p.keys.clone(), p.encryption_set)?;
        Ok(config.check()?)
    }
}

/// The keyring of the keys a config was given (the first one primary).
fn keyring(
    config: &Config,
    keys: Vec<SecretKey>,
    encryption_set: bool,
) -> Result<Option<Keyring>, FfiError> {
    // Silently running in plaintext is not what a mode asks for.
    if encryption_set && keys.is_empty() && !config.will_hold_keys()? {
        return Err(Error::Config(
            "an encryption mode needs a key or a data dir holding a keyring".into(),
        )
        .into());
    }
    let mut keys = keys.into_iter();
    let Some(primary) = keys.next() else {
        return Ok(None);
    };
    let mut ring = Keyring::new(primary);
    for key in keys {
        ring.install(key)
            .map_err(|e| FfiError::invalid(e.to_string()))?;
    }
    Ok(Some(ring))
}

fn with_config(
    cfg: *mut TribeConfig,
    f: impl FnOnce(&mut Pending) -> Result<(), FfiError>,
) -> Result<(), FfiError> {
    f(cast::handle_mut(cfg, "config")?.pending()?)
}

/// Resolves `host:port` (a literal address or a host name; may block on
/// DNS), for the bind and advertise addresses. The message says what is
/// wrong, as a seed's does (port 0 is allowed here: any free port).
fn address(text: &str, what: &str) -> Result<SocketAddr, FfiError> {
    crate::config::resolve_address(what, text).map_err(FfiError::from)
}

/// Makes a config for a node called `name`, with the defaults of the Rust
/// API: bind `127.0.0.1:0`, profile `lan`, host facts collected, no key,
/// 2 runtime threads. Encryption: with a key (`tribe_config_add_key`, or a
/// keyring the data dir kept), `require` by default; without one,
/// plaintext (for tests only); a mode set without a key (or a data dir
/// that keeps a keyring) is refused at start (`TRIBE_CONFIG`). `*out`
/// receives an owned config: free it with `tribe_config_free`, also after
/// a start used it.
/// A name that breaks the naming rules is `TRIBE_INVALID_NAME` at once (see
/// `tribe_name_check`), and no config is made. Does not block.
#[no_mangle]
pub extern "C" fn tribe_config_new(
    name: *const c_char,
    out: *mut *mut TribeConfig,
    err: *mut *mut FfiError,
) -> u32 {
    ffi_call!(err, [out], {
        let out = cast::out(out, "out")?;
        let name = cast::text(name, "name")?;
        crate::names::check("node name", name)?;
        let pending = Pending {
            config: Config::new(name),
            keys: Vec::new(),
            worker_threads: 2,
            log_level: 0,
            encryption_set: false,
            group: None,
            warnings: Vec::new(),
        };
        cast::write(
            out,
            cast::into_handle(TribeConfig {
                inner: Some(pending),
            }),
        );
        Ok(())
    })
}

/// Checks a config as `tribe_node_start` would before it opens any socket:
/// the options that only make sense together (an encryption mode with no
/// key and no data dir is `TRIBE_CONFIG`, so is a bind to an unspecified
/// address with no advertise address), names, facts, limits and timings,
/// and an existing data dir as the start would (`TRIBE_CONFIG` when any
/// user may write it, its state or keyring file is not one, or the state
/// in it is another node's; nothing is created or changed). For a host that reads its configuration before it starts the
/// node (a collectd plugin, a daemon's `-t` check): a config that passes
/// fails to start only for what the machine says: a port in use, a data
/// dir another node holds (`TRIBE_CONFIG` at the start; a check made while
/// the daemon runs passes), no thread to be had, a data dir that cannot be
/// created, read or written (`TRIBE_IO`). Does not consume the config (`TRIBE_CONSUMED` after a
/// start used it); does not block on the network.
#[no_mangle]
pub extern "C" fn tribe_config_check(cfg: *const TribeConfig, err: *mut *mut FfiError) -> u32 {
    ffi_call!(err, { cast::handle(cfg, "config")?.check() })
}

/// Frees a config (started or not). NULL is ignored.
#[no_mangle]
pub extern "C" fn tribe_config_free(cfg: *mut TribeConfig) {
    ffi_infallible!((), { cast::free_handle(cfg) })
}

/// Sets the address to bind (UDP gossip and TCP on one port), e.g.
/// `"0.0.0.0:7946"`; port 0 picks a free port. May block on DNS for a name.
/// `TRIBE_INVALID_ARGUMENT` when `addr` is not `host:port` (the message
/// says why: no port, a port out of range, a host that does not resolve).
#[no_mangle]
pub extern "C" fn tribe_config_set_bind(
    cfg: *mut TribeConfig,
    addr: *const c_char,
    err: *mut *mut FfiError,
) -> u32 {
    ffi_call!(err, {
        let addr = address(cast::text(addr, "addr")?, "bind address")?;
        with_config(cfg, |p| {
            p.config.bind = addr;
            Ok(())
        })
    })
}

/// Sets the address peers use to reach this node (NAT, binding 0.0.0.0).
/// Without it, the bound address is advertised; a bind to an unspecified
/// host (`0.0.0.0`, `[::]`) without it is `TRIBE_CONFIG` at start (see
/// `tribe_config_check`). The address is parsed as the bind address is.
#[no_mangle]
pub extern "C" fn tribe_config_set_advertise(
    cfg: *mut TribeConfig,
    addr: *const c_char,
    err: *mut *mut FfiError,
) -> u32 {
    ffi_call!(err, {
        let addr = address(cast::text(addr, "addr")?, "advertise address")?;
        with_config(cfg, |p| {
            p.config.advertise = Some(addr);
            Ok(())
        })
    })
}

/// Adds a seed (`host:port` of a node to join through); repeatable. A name
/// is not looked up here (this does not block): the node looks it up when
/// it starts and again while it has no live peer, so one that does not
/// resolve yet is no error (see `seed_lookups_failed` in the counters).
/// `TRIBE_INVALID_ARGUMENT` when `addr` is not an address or a `host:port`.
#[no_mangle]
pub extern "C" fn tribe_config_add_seed(
    cfg: *mut TribeConfig,
    addr: *const c_char,
    err: *mut *mut FfiError,
) -> u32 {
    ffi_call!(err, {
        let addr = cast::text(addr, "addr")?;
        with_config(cfg, |p| {
            p.config.add_seed(addr).map_err(|e| match e {
                // Refused as given, not at start: no "invalid configuration".
                Error::Config(why) => FfiError::invalid(why),
                other => FfiError::invalid(other.to_string()),
            })
        })
    })
}

/// Sets a user fact (it overrides a collected fact of that name). The key
/// is 1 to 64 bytes of `[A-Za-z_][A-Za-z0-9_]*` other than `true`,
/// `false`, `null` and `in` (so `facts.key` works in a policy); the value
/// at most 1,024 bytes of UTF-8 without control characters. Otherwise
/// `TRIBE_INVALID_ARGUMENT` at once. A node has at most 256 facts, the
/// collected ones included (checked at start: `TRIBE_CONFIG`).
#[no_mangle]
pub extern "C" fn tribe_config_set_fact(
    cfg: *mut TribeConfig,
    key: *const c_char,
    value: *const c_char,
    err: *mut *mut FfiError,
) -> u32 {
    ffi_call!(err, {
        let key = cast::text(key, "key")?;
        let value = cast::text(value, "value")?;
        crate::facts::validate_fact(key, value).map_err(|e| FfiError::invalid(e.to_string()))?;
        with_config(cfg, |p| {
            p.config.facts.insert(key.into(), value.into());
            Ok(())
        })
    })
}

/// Whether to collect host facts (architecture, os_dist, ...); on by default.
#[no_mangle]
pub extern "C" fn tribe_config_set_collect_facts(
    cfg: *mut TribeConfig,
    collect: bool,
    err: *mut *mut FfiError,
) -> u32 {
    ffi_call!(err, {
        with_config(cfg, |p| {
            p.config.collect_facts = collect;
            Ok(())
        })
    })
}

/// Sets the timing profile: `"lan"` (default), `"wan"` or `"local"`.
#[no_mangle]
pub extern "C" fn tribe_config_set_profile(
    cfg: *mut TribeConfig,
    profile: *const c_char,
    err: *mut *mut FfiError,
) -> u32 {
    ffi_call!(err, {
        let profile = cast::text(profile, "profile")?.parse()?;
        with_config(cfg, |p| {
            p.config.profile = profile;
            Ok(())
        })
    })
}

/// Sets how long a failed or left member stays listed before it is
/// reaped (forgotten, with its memberships), in milliseconds, over the
/// profile's (24 h for `"lan"` and `"wan"`, 5 min for `"local"`; the
/// agent's `--reap-after`). A reap deletes the member's record and its
/// memberships by hand for the whole tribe (the deletion spreads), so the
/// shortest `reap_after` in a tribe decides for every node: keep it alike
/// everywhere, and longer than any pause a member may come back from
/// (hours, not seconds: a member frozen past it comes back out of its
/// tribes by hand). 1 ms to 365 days (`TRIBE_INVALID_ARGUMENT` otherwise).
#[no_mangle]
pub extern "C" fn tribe_config_set_reap_after(
    cfg: *mut TribeConfig,
    reap_after_ms: u64,
    err: *mut *mut FfiError,
) -> u32 {
    ffi_call!(err, {
        let after = Duration::from_millis(reap_after_ms);
        with_config(cfg, |p| Ok(p.config.set_reap_after(after)?))
    })
}

/// Sets the cluster label (at most 64 bytes, no control characters:
/// `TRIBE_INVALID_ARGUMENT`): nodes with different labels never talk.
#[no_mangle]
pub extern "C" fn tribe_config_set_label(
    cfg: *mut TribeConfig,
    label: *const c_char,
    err: *mut *mut FfiError,
) -> u32 {
    ffi_call!(err, {
        let label = cast::text(label, "label")?;
        if label.len() > crate::wire::MAX_LABEL_LEN {
            return Err(FfiError::invalid("the label is longer than 64 bytes"));
        }
        // Refused here, as a fact is, rather than only at the start.
        if label.chars().any(char::is_control) {
            return Err(FfiError::invalid("the label holds a control character"));
        }
        with_config(cfg, |p| {
            p.config.cluster_label = label.into();
            Ok(())
        })
    })
}

/// Adds a cluster key (base64 of 32 bytes, as `tribe_keygen` makes); the
/// first one added seals, all open. Without a key traffic is plaintext,
/// which is for tests only (see `tribe_config_new`). The key is never
/// logged or shown.
#[no_mangle]
pub extern "C" fn tribe_config_add_key(
    cfg: *mut TribeConfig,
    key: *const c_char,
    err: *mut *mut FfiError,
) -> u32 {
    ffi_call!(err, {
        // The config first: a NULL one is TRIBE_NULL_ARGUMENT, whatever the key.
        with_config(cfg, |p| {
            let key = SecretKey::from_base64(cast::text(key, "key")?)
                .map_err(|e| FfiError::invalid(e.to_string()))?;
            if p.keys.len() >= crate::crypto::MAX_KEYS {
                return Err(crate::Error::KeyringFull.into());
            }
            p.keys.push(key);
            Ok(())
        })
    })
}

/// Adds a cluster key read from a file holding it as base64 (what `tribe
/// keygen` prints; surrounding whitespace is ignored), as
/// `tribe_config_add_key`. Reads the file, which must be a regular file of
/// at most 4096 bytes (a link to one is followed; a FIFO or a device is
/// refused at once with `TRIBE_CONFIG`, not waited on); a file that cannot
/// be read is `TRIBE_IO`, one that holds no key `TRIBE_INVALID_ARGUMENT`.
/// The key is never shown.
#[no_mangle]
pub extern "C" fn tribe_config_add_key_file(
    cfg: *mut TribeConfig,
    path: *const c_char,
    err: *mut *mut FfiError,
) -> u32 {
    ffi_call!(err, {
        // The config first: no file is read for a NULL or used-up one.
        cast::handle_mut(cfg, "config")?.pending()?;
        let path = cast::text(path, "path")?;
        let key = crate::keyfile::read(std::path::Path::new(path))?;
        let exposed = crate::keyfile::exposure("key file", std::path::Path::new(path));
        with_config(cfg, |p| {
            if p.keys.len() >= crate::crypto::MAX_KEYS {
                return Err(crate::Error::KeyringFull.into());
            }
            p.keys.push(key);
            p.warnings.extend(exposed);
            Ok(())
        })
    })
}

/// Sets the encryption mode: `"require"`, `"send"` or `"accept"` (the live
/// migration steps; see docs/operating.md). With a key (or a keyring the
/// data dir kept), `require` by default; without one, plaintext; a mode set
/// without a key (or a data dir that keeps a keyring) is refused at start
/// (`TRIBE_CONFIG`; `tribe_config_check` tells it before). An unknown mode
/// is `TRIBE_INVALID_ARGUMENT`.
#[no_mangle]
pub extern "C" fn tribe_config_set_encryption(
    cfg: *mut TribeConfig,
    mode: *const c_char,
    err: *mut *mut FfiError,
) -> u32 {
    ffi_call!(err, {
        let mode = cast::text(mode, "mode")?.parse()?;
        with_config(cfg, |p| {
            p.config.encryption = mode;
            p.encryption_set = true;
            Ok(())
        })
    })
}

/// Sets the data directory (known peers, memberships by hand, keyring kept
/// across restarts). A relative path is made absolute now, against the
/// working directory of this call (a daemon that changes directory before
/// it starts the node keeps the dir its configuration named and
/// `tribe_config_check` checked). Created at start (owner-only) if missing; an existing
/// one keeps its mode, but one every user may write, or one that belongs
/// to another user than root or this process's, is refused at start
/// (`TRIBE_CONFIG`; one its group may write is taken, with a warning).
#[no_mangle]
pub extern "C" fn tribe_config_set_data_dir(
    cfg: *mut TribeConfig,
    dir: *const c_char,
    err: *mut *mut FfiError,
) -> u32 {
    ffi_call!(err, {
        let dir = cast::text(dir, "dir")?;
        if dir.is_empty() {
            return Err(FfiError::invalid("the data dir is empty"));
        }
        // Against the working directory now: a daemon that reads its
        // configuration and then changes directory keeps the dir it checked.
        let dir = std::path::absolute(dir).map_err(|e| {
            FfiError::from(crate::Error::Io(format!(
                "cannot make data dir {dir:?} absolute: {e}"
            )))
        })?;
        with_config(cfg, |p| {
            p.config.data_dir = Some(dir);
            Ok(())
        })
    })
}

/// The node the data dir `dir` belongs to (the name its state was kept
/// under): `*out` receives an owned string (free it with
/// `tribe_string_free`), or NULL when the dir holds no state (missing,
/// empty, or kept before names were); `*out_len`, if not NULL, its length.
/// For a host that learns its node's name only later (collectd's
/// `Hostname`) and checks the rest of its configuration now.
/// `TRIBE_CONFIG` for a state file that is damaged or not a regular file,
/// `TRIBE_IO` for one that cannot be read. Reads the state file (up to its
/// size); does not block on the network; needs no node.
#[no_mangle]
pub extern "C" fn tribe_data_dir_owner(
    dir: *const c_char,
    out: *mut *mut c_char,
    out_len: *mut usize,
    err: *mut *mut FfiError,
) -> u32 {
    ffi_call!(err, [out, out_len], {
        let out = cast::out(out, "out")?;
        let dir = cast::text(dir, "dir")?;
        match crate::datadir::owner(std::path::Path::new(dir))? {
            Some(name) => cast::give_string(out, out_len, name),
            None => {
                cast::write(out, std::ptr::null_mut());
                cast::store(out_len, 0);
            }
        }
        Ok(())
    })
}

/// Sets the bounds of remote calls; 0 keeps a bound's default. Defaults:
/// payload 4 MiB, 256 calls in flight per connection, 4096 per node, 1024
/// handlers at once. Checked at start (`TRIBE_CONFIG`): the payload at most
/// 1 GiB less 1 KiB (1,073,740,800), the others at most 16,777,216.
#[no_mangle]
pub extern "C" fn tribe_config_set_rpc_limits(
    cfg: *mut TribeConfig,
    max_payload: usize,
    max_inflight_per_conn: usize,
    max_inflight: usize,
    max_serving: usize,
    err: *mut *mut FfiError,
) -> u32 {
    ffi_call!(err, {
        with_config(cfg, |p| {
            let keep = |v: usize, d: usize| if v == 0 { d } else { v };
            if max_payload != 0 {
                p.config.set_max_payload(max_payload);
            }
            let r = &mut p.config.rpc;
            r.max_inflight_per_conn = keep(max_inflight_per_conn, r.max_inflight_per_conn);
            r.max_inflight = keep(max_inflight, r.max_inflight);
            r.max_serving = keep(max_serving, r.max_serving);
            Ok(())
        })
    })
}

/// Sets one named limit to `value` (at least 1). Names and defaults: the
/// replicated state's caps per kind of record, `"nodes"` 20,000,
/// `"tribes"` 10,000, `"members"` (memberships by hand) 200,000,
/// `"policies"` 1,000, `"plugins"` 20,000, `"tasks"` 20,000 (keep them
/// equal cluster-wide; a command past one fails with
/// `TRIBE_LIMIT_REACHED`); `"max_streams"`, inbound call streams served
/// at once, 1,024 (one more is refused, its calls see `TRIBE_OVERLOADED`);
/// and the call bounds `tribe_config_set_rpc_limits` also sets:
/// `"max_inflight_per_conn"` 256, `"max_inflight"` 4,096, `"max_serving"`
/// 1,024. An unknown name, a zero value or a call bound (`max_*`) over
/// 16,777,216 is `TRIBE_INVALID_ARGUMENT`.
#[no_mangle]
pub extern "C" fn tribe_config_set_limit(
    cfg: *mut TribeConfig,
    name: *const c_char,
    value: u64,
    err: *mut *mut FfiError,
) -> u32 {
    ffi_call!(err, {
        let name = cast::text(name, "name")?;
        // Above usize::MAX the limit is as good as none.
        let value = usize::try_from(value).unwrap_or(usize::MAX);
        with_config(cfg, |p| Ok(p.config.set_limit(name, value)?))
    })
}

/// Starts the node in a poll group (see `tribe_group_new`): its call
/// streams run on the runtime the group's members share, and
/// `tribe_group_wait` wakes for its events. The config keeps its own
/// reference: the group handle may be freed before the start. Does not
/// block.
#[no_mangle]
pub extern "C" fn tribe_config_set_group(
    cfg: *mut TribeConfig,
    group: *const TribeGroup,
    err: *mut *mut FfiError,
) -> u32 {
    ffi_call!(err, {
        let core = super::group::core_of(group)?;
        with_config(cfg, |p| {
            p.group = Some(core);
            Ok(())
        })
    })
}

/// Sets how many threads the node's runtime runs (1 to 64; default 2).
#[no_mangle]
pub extern "C" fn tribe_config_set_worker_threads(
    cfg: *mut TribeConfig,
    threads: u32,
    err: *mut *mut FfiError,
) -> u32 {
    ffi_call!(err, {
        if !(1..=64).contains(&threads) {
            return Err(FfiError::invalid("worker threads must be 1 to 64"));
        }
        with_config(cfg, |p| {
            p.worker_threads = threads as usize;
            Ok(())
        })
    })
}

/// Queues libtribe's log records from `level` on as `TRIBE_EVENT_LOG`
/// events of this node: `"off"` (default), `"error"`, `"warn"`, `"info"`,
/// `"debug"` or `"trace"`. The records come from the node's own threads and
/// from host threads while they call into this node; they are delivered only
/// if the process has no other global `tracing` subscriber (a C, Go or
/// Python host has none). Like other node events, records are dropped when
/// more than 65,536 wait.
#[no_mangle]
pub extern "C" fn tribe_config_set_log_level(
    cfg: *mut TribeConfig,
    level: *const c_char,
    err: *mut *mut FfiError,
) -> u32 {
    ffi_call!(err, {
        let name = cast::text(level, "level")?;
        let level = super::log::parse_level(name).ok_or_else(|| {
            FfiError::invalid(format!(
                "log level {name:?} is not off, error, warn, info, debug or trace"
            ))
        })?;
        with_config(cfg, |p| {
            p.log_level = level;
            Ok(())
        })
    })
}
