//! `tribe agent`: runs one node with its admin API until SIGINT or SIGTERM,
//! then leaves the tribe gracefully.
//!
//! Options come from flags, then `TRIBE_<FLAG>` environment variables, then
//! the TOML file given with `--config`, then defaults, in that order.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;
use tribe::{Config, Event, Node, Profile};

/// Default gossip port (UDP and TCP), as memberlist's.
pub const DEFAULT_BIND: &str = "0.0.0.0:7946";
/// Default admin API address: loopback only.
pub const DEFAULT_ADMIN: &str = "127.0.0.1:7947";

/// Options of `tribe agent`. No `Debug`: it may hold a key.
#[derive(clap::Args, Default)]
pub struct AgentArgs {
    /// TOML file with any of the options below; keys are the long flag
    /// names (`name`, `bind`, `seed = [..]`, `fact = ["k=v", ..]`, `data-dir`, ...),
    /// switches are TOML booleans (`log-json = true`).
    #[arg(long, env = "TRIBE_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Node name, unique in the tribe [default: the host name].
    #[arg(long, env = "TRIBE_NAME")]
    name: Option<String>,
    /// Where to listen for gossip (UDP) and sync/calls (TCP, same port); port 0 picks one
    /// [default: 0.0.0.0:7946].
    #[arg(long, env = "TRIBE_BIND", value_name = "HOST:PORT")]
    bind: Option<String>,
    /// Address peers should use to reach this node [default: the bind address; with an
    /// unspecified bind host, the source address of the default route of its family].
    #[arg(long, env = "TRIBE_ADVERTISE", value_name = "HOST:PORT")]
    advertise: Option<String>,
    /// A node to join through (repeatable; comma-separated in TRIBE_SEED; added to
    /// the file's `seed` list).
    #[arg(
        long = "seed",
        env = "TRIBE_SEED",
        value_name = "HOST:PORT",
        value_delimiter = ','
    )]
    seeds: Vec<String>,
    /// A user fact; overrides a collected fact and the file's fact of the same key
    /// (repeatable; a value may hold commas; without --fact, TRIBE_FACT gives
    /// facts separated by commas).
    #[arg(long = "fact", value_name = "KEY=VALUE")]
    facts: Vec<String>,
    /// Timing profile: lan, wan or local [default: lan].
    #[arg(long, env = "TRIBE_PROFILE")]
    profile: Option<String>,
    /// How long a failed or left member stays listed before it is forgotten
    /// (its record and memberships by hand deleted), as `90s`, `10m` or `24h`
    /// [default: the profile's: 24h with lan and wan, 5m with local].
    #[arg(long, env = "TRIBE_REAP_AFTER", value_name = "DURATION")]
    reap_after: Option<String>,
    /// Where the admin HTTP API listens; port 0 picks one [default: 127.0.0.1:7947].
    #[arg(long, env = "TRIBE_ADMIN", value_name = "HOST:PORT")]
    admin: Option<String>,
    /// Directory that keeps, across restarts, the replicated records (tribes, memberships
    /// by hand, policies, plugin entries, tasks, and their deletions), the facts set by
    /// command, the known peers, the last generation and the keyring.
    #[arg(long, env = "TRIBE_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Cluster label: agents with different labels never talk [default: none].
    #[arg(long, env = "TRIBE_LABEL")]
    label: Option<String>,
    /// Log filter: error, warn, info, debug, trace, off, or tracing directives such as
    /// `tribe=debug` or `warn,tribe::rpc=trace`; a filter with no bare level keeps `info`
    /// for every other target (`tribe=debug` is `info,tribe=debug`) [default: info].
    #[arg(long, env = "TRIBE_LOG_LEVEL", value_name = "LEVEL")]
    log_level: Option<String>,
    /// Log as JSON lines instead of human-readable text (`--log-json=false`
    /// or TRIBE_LOG_JSON=false overrides the options file).
    #[arg(
        long,
        env = "TRIBE_LOG_JSON",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_name = "BOOL",
        hide_possible_values = true,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    log_json: Option<bool>,
    /// Leave the tribe when stdin ends: `tribe demo` keeps the other end, so
    /// its agents stop also when the demo is killed (SIGKILL, out of memory).
    #[arg(long, hide = true)]
    stop_at_stdin_eof: bool,
    /// Encryption key, base64 as `tribe keygen` prints it. Prefer --key-file or
    /// TRIBE_KEY: command lines are visible to other users. A key given by a
    /// flag beats TRIBE_KEY / TRIBE_KEY_FILE, which beat the config file.
    #[arg(long, value_name = "BASE64")]
    key: Option<String>,
    /// File holding the encryption key (base64), or TRIBE_KEY_FILE.
    #[arg(long, value_name = "FILE")]
    key_file: Option<PathBuf>,
    /// With a key: accept (send plaintext, accept both), send (send sealed, accept
    /// both) or require (sealed only) [default: require]. The first two are the steps
    /// of turning encryption on in a running tribe; a mode set later with
    /// `tribe keys encryption` lasts until the agent stops.
    #[arg(long, env = "TRIBE_ENCRYPTION", value_name = "MODE")]
    encryption: Option<String>,
    /// Run without an encryption key: gossip, sync and calls travel in plaintext
    /// that anyone on the network can read and forge. For tests on one host only;
    /// without it the agent refuses to start with no key.
    #[arg(
        long,
        env = "TRIBE_INSECURE_PLAINTEXT",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_name = "BOOL",
        hide_possible_values = true,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    insecure_plaintext: Option<bool>,
    /// Token the admin API requires as `Authorization: Bearer <token>` (the admin
    /// commands send TRIBE_ADMIN_TOKEN or --token) [default: none].
    #[arg(
        long,
        env = "TRIBE_ADMIN_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    admin_token: Option<String>,
    /// Serve the built-in `file` publisher, appending published metrics to FILE as
    /// JSON lines (other members call it through the tribes this agent is in).
    #[arg(long, env = "TRIBE_PUBLISH_FILE", value_name = "FILE")]
    publish_file: Option<PathBuf>,
}

/// The options a TOML file may set (the fields of [`FileOptions`]).
const FILE_OPTIONS: [&str; 19] = [
    "name",
    "bind",
    "advertise",
    "seed",
    "fact",
    "profile",
    "reap-after",
    "admin",
    "data-dir",
    "label",
    "log-level",
    "log-json",
    "key",
    "key-file",
    "encryption",
    "insecure-plaintext",
    "publish-file",
    "admin-token",
    "limits",
];

/// The same options read from a TOML file. No `Debug`: it may hold a key.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileOptions {
    name: Option<String>,
    bind: Option<String>,
    advertise: Option<String>,
    #[serde(default)]
    seed: Vec<String>,
    #[serde(default)]
    fact: Vec<String>,
    profile: Option<String>,
    reap_after: Option<String>,
    admin: Option<String>,
    data_dir: Option<PathBuf>,
    label: Option<String>,
    log_level: Option<String>,
    log_json: Option<bool>,
    key: Option<String>,
    key_file: Option<PathBuf>,
    encryption: Option<String>,
    insecure_plaintext: Option<bool>,
    publish_file: Option<PathBuf>,
    admin_token: Option<String>,
    /// `[limits]`: caps of the replicated state and inbound call streams.
    #[serde(default)]
    limits: std::collections::BTreeMap<String, usize>,
}

/// Everything the agent needs, resolved and checked.
pub struct AgentPlan {
    /// The node's configuration.
    pub config: Config,
    /// Admin API address.
    pub admin: SocketAddr,
    /// Log filter.
    pub log_level: String,
    /// JSON logs.
    pub log_json: bool,
    /// Where the built-in `file` publisher writes, if served.
    pub publish_file: Option<PathBuf>,
    /// Token the admin API requires.
    pub admin_token: Option<String>,
    /// The node runs with no keyring (`--insecure-plaintext`): warn at start.
    pub plaintext: bool,
    /// Warnings found while planning, logged once logging is set up.
    pub warnings: Vec<String>,
    /// Leave the tribe when stdin ends (`--stop-at-stdin-eof`).
    pub stop_at_stdin_eof: bool,
}

fn resolve_addr(what: &str, text: &str) -> Result<SocketAddr, String> {
    tribe::config::resolve_address(&format!("--{what}"), text).map_err(|e| e.to_string())
}

fn read_file_options(path: &PathBuf) -> Result<FileOptions, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| toml_error(path, &text, &e))
}

/// A config file's parse error by line and column, without the file's text:
/// `toml` quotes the offending line, and values in it (a key, the admin
/// token) would end up in a service manager's log. Quoted values in the
/// message are withheld too.
fn toml_error(path: &std::path::Path, text: &str, e: &toml::de::Error) -> String {
    let message = tribe::admin::withhold_values(e.message());
    match e.span() {
        Some(span) => {
            let before = text.get(..span.start).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            // The option the line sets, when it sets one of the file's
            // options: never anything else of the line.
            let option = text
                .lines()
                .nth(line - 1)
                .and_then(|l| l.split_once('='))
                .map(|(o, _)| o.trim())
                .filter(|o| FILE_OPTIONS.contains(o))
                .map(|o| format!(" (`{o}`)"))
                .unwrap_or_default();
            format!(
                "config file {}, line {line}{option}, column {column}: {message}",
                path.display()
            )
        }
        None => format!("config file {}: {message}", path.display()),
    }
}

impl AgentArgs {
    /// Merges flags, environment and file, checks every value, and builds the
    /// node configuration. `collected` are the host facts (for the defaults
    /// of the name and the advertise address).
    pub fn plan(self, collected: &tribe::facts::Facts) -> Result<AgentPlan, String> {
        let file = match &self.config {
            Some(path) => read_file_options(path)?,
            None => FileOptions::default(),
        };
        let file_holds_secret = file.key.is_some() || file.admin_token.is_some();
        let name = self
            .name
            .or(file.name)
            .or_else(|| collected.get("hostname").cloned())
            .ok_or("no --name given and the host name is unknown")?;
        let bind_text = self
            .bind
            .or(file.bind)
            .unwrap_or_else(|| DEFAULT_BIND.to_string());
        let bind = resolve_addr("bind", &bind_text)?;
        let advertise = match self.advertise.or(file.advertise) {
            Some(a) => Some(resolve_addr("advertise", &a)?),
            None if bind.ip().is_unspecified() => {
                // The route of the bind's family: `[::]` takes IPv6.
                let (fact, family) = if bind.is_ipv6() {
                    ("default_ipv6", "IPv6")
                } else {
                    ("default_ipv4", "IPv4")
                };
                let ip = collected
                    .get(fact)
                    .and_then(|ip| ip.parse::<std::net::IpAddr>().ok())
                    .ok_or(format!("--bind has an unspecified host and no {family} default route was found: give --advertise"))?;
                Some(SocketAddr::new(ip, bind.port()))
            }
            None => None,
        };
        // Lists add up, as serf's: the file's seeds and facts first, then the
        // flags' (a flag's fact overrides the file's fact of the same key).
        let seed_texts: Vec<String> = file
            .seed
            .into_iter()
            // Empty items skipped, as TRIBE_FACT's: `TRIBE_SEED=a:1,b:1,`.
            .chain(
                self.seeds
                    .iter()
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty()),
            )
            .collect();
        // Commas split facts only in the environment variable: a flag's
        // value may hold them (`--fact ports=80,443`).
        let (flag_facts, fact_source) = if self.facts.is_empty() {
            let facts = env_text("TRIBE_FACT")?
                .unwrap_or_default()
                .split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(String::from)
                .collect();
            (facts, "TRIBE_FACT")
        } else {
            (self.facts, "--fact")
        };
        let file_facts = file.fact.into_iter().map(|t| (t, "fact"));
        let mut config = Config::new(name);
        for (text, source) in file_facts.chain(flag_facts.into_iter().map(|t| (t, fact_source))) {
            let (k, v) = tribe::facts::parse_fact_arg(&text)
                .map_err(|e| format!("{source} {text:?}: {e}"))?;
            config.facts.insert(k, v);
        }
        let profile_text = self
            .profile
            .or(file.profile)
            .unwrap_or_else(|| "lan".into());
        config.profile = profile_text
            .parse::<Profile>()
            .map_err(|e| format!("--profile: {e}"))?;
        if let Some(text) = self.reap_after.or(file.reap_after) {
            let reap_after = humantime::parse_duration(&text).map_err(|e| {
                format!("--reap-after {text:?}: {e} (give a duration such as 90s, 10m or 24h)")
            })?;
            config
                .set_reap_after(reap_after)
                .map_err(|e| format!("--reap-after {text:?}: {e}"))?;
        }
        let admin_text = self
            .admin
            .or(file.admin)
            .unwrap_or_else(|| DEFAULT_ADMIN.to_string());
        let admin = resolve_addr("admin", &admin_text)?;
        let given_token = self.admin_token.or(file.admin_token);
        // An empty variable counts as unset; an empty flag or file entry
        // (`--admin-token "$TOKEN"` with TOKEN unset) would open the API
        // without a word.
        let env_empty = std::env::var_os("TRIBE_ADMIN_TOKEN").is_some_and(|v| v.is_empty());
        if given_token.as_deref() == Some("") && !env_empty {
            return Err(
                "--admin-token (or admin-token in the config file) is empty: give a \
                 token, or leave the option out for an admin API without one"
                    .into(),
            );
        }
        let admin_token = given_token.filter(|t| !t.is_empty());
        // A client sends it in an HTTP header, trimmed: a space, a line
        // end or a non-ASCII character would lock every client out.
        if let Some(bad) = admin_token
            .as_deref()
            .and_then(|t| t.chars().find(|c| !c.is_ascii_graphic()))
        {
            return Err(format!(
                "--admin-token (or TRIBE_ADMIN_TOKEN, admin-token) holds {bad:?}: a token is \
                 visible ASCII only (letters, digits, punctuation), as HTTP clients send it"
            ));
        }
        if !admin.ip().is_loopback() && admin_token.is_none() {
            return Err(format!(
                "--admin {admin} is reachable from other hosts: give --admin-token \
                 (or TRIBE_ADMIN_TOKEN), or listen on a loopback address such as {DEFAULT_ADMIN}"
            ));
        }
        config.bind = bind;
        config.advertise = advertise;
        // A name is looked up by the node, at start and while it is alone.
        for text in &seed_texts {
            config
                .add_seed(text)
                .map_err(|e| format!("--seed (or TRIBE_SEED) {text:?}: {e}"))?;
        }
        config.data_dir = self.data_dir.or(file.data_dir);
        config.cluster_label = self.label.or(file.label).unwrap_or_default();
        // The first place that names a key gives it: flags, then the
        // environment, then the file (a key and a key file in one place
        // contradict each other).
        let env_key = env_text("TRIBE_KEY")?.filter(|k| !k.is_empty());
        let env_key_file = std::env::var_os("TRIBE_KEY_FILE")
            .filter(|f| !f.is_empty())
            .map(PathBuf::from);
        let mut warnings = Vec::new();
        if let Some(path) = &self.config {
            if file_holds_secret {
                warnings.extend(tribe::keyfile::exposure(
                    "config file (it holds a key or the admin token)",
                    path,
                ));
            }
        }
        let (key, key_file, names) = if self.key.is_some() || self.key_file.is_some() {
            (self.key, self.key_file, ("--key", "--key-file"))
        } else if env_key.is_some() || env_key_file.is_some() {
            (env_key, env_key_file, ("TRIBE_KEY", "TRIBE_KEY_FILE"))
        } else {
            (file.key, file.key_file, ("key", "key-file"))
        };
        config.keyring = read_key(key, key_file, names, &mut warnings)?.map(tribe::Keyring::new);
        let mode = self.encryption.or(file.encryption);
        if let Some(mode) = &mode {
            config.encryption = mode.parse().map_err(|e| format!("--encryption: {e}"))?;
        }
        // The command line and the environment win over the file, also to
        // turn a switch off.
        let insecure_plaintext = self
            .insecure_plaintext
            .or(file.insecure_plaintext)
            .unwrap_or(false);
        let plaintext = check_plaintext(&config, insecure_plaintext)?;
        if plaintext {
            if let Some(mode) = mode {
                return Err(format!(
                    "--encryption {mode} needs a key (--key or --key-file): with \
                     --insecure-plaintext the node neither seals nor opens sealed traffic"
                ));
            }
        }
        set_file_limits(&mut config, &file.limits)?;
        config.validate().map_err(|e| e.to_string())?;
        Ok(AgentPlan {
            config,
            admin,
            log_level: self
                .log_level
                .or(file.log_level)
                .unwrap_or_else(|| "info".into()),
            log_json: self.log_json.or(file.log_json).unwrap_or(false),
            publish_file: self.publish_file.or(file.publish_file),
            admin_token,
            plaintext,
            warnings,
            stop_at_stdin_eof: self.stop_at_stdin_eof,
        })
    }
}

/// Secure by default: with no key (given, or kept in the data dir by an
/// earlier run) the agent starts only when the operator asked for plaintext.
/// Returns whether the node will run without encryption.
fn check_plaintext(config: &Config, insecure_plaintext: bool) -> Result<bool, String> {
    let has_key = config.will_hold_keys().map_err(|e| e.to_string())?;
    match (has_key, insecure_plaintext) {
        (true, true) if config.keyring.is_some() => {
            Err("--insecure-plaintext and an encryption key contradict each other: give one".into())
        }
        (true, true) => Err(format!(
            "--insecure-plaintext, but the data dir keeps a keyring from an earlier run ({}): \
             the node would encrypt with it; drop --insecure-plaintext, or remove that file \
             to run in plaintext",
            config
                .data_dir
                .as_deref()
                .unwrap_or(std::path::Path::new("."))
                .join(tribe::datadir::KEYRING_FILE)
                .display()
        )),
        (true, _) => Ok(false),
        (false, true) => Ok(true),
        (false, false) => Err(
            "no encryption key: give --key-file FILE (or TRIBE_KEY_FILE, --key, \
             TRIBE_KEY) with a key from `tribe keygen`; for a test tribe whose traffic anyone \
             may read and forge, give --insecure-plaintext"
                .into(),
        ),
    }
}

/// The names of `[limits]`, kebab-case as every other key of the file.
fn file_limit_names() -> Vec<String> {
    Config::LIMIT_NAMES
        .iter()
        .map(|name| name.replace('_', "-"))
        .collect()
}

/// Applies the file's `[limits]`. Errors quote the key as the file spells
/// it and list the names in the file's spelling; the snake_case spelling of
/// the library (`max_streams`) is taken too, but not both for one limit.
fn set_file_limits(
    config: &mut Config,
    limits: &std::collections::BTreeMap<String, usize>,
) -> Result<(), String> {
    let known = file_limit_names();
    let mut seen = std::collections::BTreeMap::new();
    for (name, value) in limits {
        let kebab = name.replace('_', "-");
        if !known.contains(&kebab) {
            // Withheld when longer than any limit's name: a key put here
            // by mistake.
            let name = if name.chars().count() >= 20 {
                "(a name, withheld)".to_string()
            } else {
                format!("{name:?}")
            };
            return Err(format!(
                "[limits] {name} is not a limit (known: {})",
                known.join(", ")
            ));
        }
        if let Some(other) = seen.insert(kebab.clone(), name) {
            return Err(format!(
                "[limits] {other:?} and {name:?} name the same limit: give one"
            ));
        }
        if *value == 0 {
            return Err(format!("[limits] {name:?} must be at least 1"));
        }
        config
            .set_limit(&kebab.replace('-', "_"), *value)
            .map_err(|e| format!("[limits] {name:?}: {e}"))?;
    }
    Ok(())
}

/// An environment variable the agent reads itself (not through clap):
/// absent is `None`, text that is not UTF-8 an error rather than ignored.
fn env_text(name: &str) -> Result<Option<String>, String> {
    match std::env::var(name) {
        Ok(text) => Ok(Some(text)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => Err(format!("{name} is not valid UTF-8")),
    }
}

/// The key from a key or a key file, named as where they came from
/// (`names`: the key's and the file's); errors never quote the key. A key
/// file other users may read adds a warning.
fn read_key(
    key: Option<String>,
    key_file: Option<PathBuf>,
    names: (&str, &str),
    warnings: &mut Vec<String>,
) -> Result<Option<tribe::SecretKey>, String> {
    match (key, key_file) {
        (Some(_), Some(_)) => Err(format!("give one of {} and {}, not both", names.0, names.1)),
        (Some(text), None) => tribe::SecretKey::from_base64(&text)
            .map(Some)
            .map_err(|e| format!("{}: {e}", names.0)),
        (None, Some(path)) => {
            let text = read_small(&path, KEY_FILE_MAX)
                .map_err(|e| format!("cannot read key file {}: {e}", path.display()))?;
            warnings.extend(tribe::keyfile::exposure("key file", &path));
            tribe::keyfile::parse(&path, &text)
                .map(Some)
                .map_err(|e| e.to_string())
        }
        (None, None) => Ok(None),
    }
}

/// A key file's bound: a key is 44 characters; what is longer is no key
/// file (`--key-file /dev/zero` would fill the memory).
const KEY_FILE_MAX: u64 = tribe::keyfile::MAX_KEY_FILE;

/// A small text file, read whole (also a pipe, as `<(command)` gives);
/// one over `max` bytes is refused without being read to its end.
fn read_small(path: &std::path::Path, max: u64) -> std::io::Result<String> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    // Opened without waiting: a FIFO no one writes to would block the open
    // for good. Its writer may come later (`mkfifo k; tribe agent
    // --key-file k & cat key > k`), so the read waits for one, bounded.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    wait_for_a_writer(&file, KEY_FILE_WRITER_WAIT)?;
    let flags = OFlag::from_bits_truncate(fcntl(&file, FcntlArg::F_GETFL)?);
    fcntl(&file, FcntlArg::F_SETFL(flags - OFlag::O_NONBLOCK))?;
    let mut bytes = Vec::new();
    file.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(std::io::Error::other(format!(
            "it holds over {max} bytes, where a key is 44"
        )));
    }
    String::from_utf8(bytes).map_err(|_| std::io::Error::other("it is not UTF-8 text"))
}

/// How long a key file that is a FIFO may wait for its writer.
const KEY_FILE_WRITER_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Waits until `file` has something to read or its writer hung up (at
/// once for a regular file); a FIFO no one opens for writing within `wait`
/// is an error rather than a start that hangs.
fn wait_for_a_writer(file: &std::fs::File, wait: std::time::Duration) -> std::io::Result<()> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd as _;
    let deadline = std::time::Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let timeout = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(file.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, timeout) {
            Ok(0) => {
                return Err(std::io::Error::other(format!(
                    "no one wrote to it within {} s (a FIFO waits for its writer that long)",
                    wait.as_secs()
                )))
            }
            Ok(_) => return Ok(()),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Levels a bare word of `--log-level` may be; any other bare word would be
/// taken as a log target and silence every log (a typo such as `warnn`).
const LOG_LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

/// Whether a directive is a bare level (`warn`, `3`), the default for
/// every target no other directive names.
fn is_level(directive: &str) -> bool {
    LOG_LEVELS.contains(&directive.to_ascii_lowercase().as_str())
        || directive
            .parse::<tracing_subscriber::filter::LevelFilter>()
            .is_ok()
}

/// Refuses a bare word that is not a level (`warnn`); directives with a
/// target, empty ones and numeric levels pass.
fn check_log_level(level: &str) -> Result<(), String> {
    for directive in level.split(',').map(str::trim) {
        // `warn=` would be taken as the target `warn` at every level.
        if let Some((_, "")) = directive.rsplit_once('=') {
            return Err(format!(
                "--log-level (or TRIBE_LOG_LEVEL, log-level) {level:?}: {directive:?} names no \
                 level after its `=` ({})",
                LOG_LEVELS.join(", ")
            ));
        }
        let bare = !directive.is_empty() && !directive.contains('=') && !directive.contains("::");
        if bare && !is_level(directive) {
            return Err(format!(
                "--log-level (or TRIBE_LOG_LEVEL, log-level) {level:?}: {directive:?} is not a \
                 level ({}) nor a target=level directive",
                LOG_LEVELS.join(", ")
            ));
        }
    }
    Ok(())
}

/// The filter to use: without a bare level, tracing would log only the
/// targets named (a misspelt one: nothing at all), silencing warnings such
/// as "encryption is OFF"; so every other target keeps `info`.
fn with_default_level(level: &str) -> String {
    // An empty directive parses as a level but sets none (`tribe=debug,`).
    let mut directives = level.split(',').map(str::trim).filter(|d| !d.is_empty());
    if directives.any(is_level) {
        level.to_string()
    } else {
        format!("info,{level}")
    }
}

fn init_logging(level: &str, json: bool) -> Result<(), String> {
    check_log_level(level)?;
    let filter = tracing_subscriber::EnvFilter::try_new(with_default_level(level))
        .map_err(|e| format!("--log-level (or TRIBE_LOG_LEVEL, log-level) {level:?}: {e}"))?;
    // Colours only for a terminal: a log file or journald gets plain text.
    // Written at once until the ready line, queued after it (see
    // `log_writer`).
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(crate::log_writer::LogWriter)
        // A log pipe whose reader went (`| logger`, `| tee` that died):
        // its lines are lost, and reporting that on stderr would panic
        // (a node killed mid-goodbye, told failed by its peers).
        .log_internal_errors(false);
    let result = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
    result.map_err(|e| format!("cannot set up logging: {e}"))
}

/// Raises SIGTERM (taken by the agent's watch: a graceful leave) once
/// stdin ends, as it does when the process holding its other end dies.
fn stop_at_stdin_eof() -> Result<(), String> {
    std::thread::Builder::new()
        .name("tribe-stdin".into())
        .spawn(|| {
            let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
            tracing::info!("stdin ended: the process that started this agent is gone");
            let _ = signal_hook::low_level::raise(signal_hook::consts::SIGTERM);
        })
        .map(drop)
        .map_err(|e| format!("cannot start the tribe-stdin thread: {e}"))
}

/// Runs the agent until a signal; returns once it has left the tribe.
pub fn run(args: AgentArgs) -> Result<(), String> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    // Taken before the plan, which may wait (a key file's FIFO, a name
    // lookup): a SIGHUP or SIGTERM then must not kill the agent unheard.
    // SIGHUP too: a closed terminal or a service manager's "reload" must
    // not kill the node without a goodbye; there is nothing to reload, so
    // it is logged.
    let mut signals = crate::signals::Watch::new(&[SIGTERM, SIGINT, SIGHUP])?;
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    let workers = std::thread::available_parallelism().map_or(1, usize::from);
    // Guarded: at the thread limit tokio panics, or hangs.
    let runtime = tribe::runtime_build::build(builder, workers, 0)
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let (plan, hups) = runtime.block_on(plan_or_signal(args, &mut signals))?;
    init_logging(&plan.log_level, plan.log_json)?;
    for warning in &plan.warnings {
        tracing::warn!("{warning}");
    }
    if hups > 0 {
        tracing::info!("SIGHUP while starting: nothing to reload; still starting");
    }
    let log_json = plan.log_json;
    let served = runtime.block_on(serve(plan, signals));
    // Not waiting for the workers: one may be stuck in a start a signal
    // ended (the process exits next).
    runtime.shutdown_background();
    crate::log_writer::direct_from_now();
    match served {
        // A JSON log's reader gets the error as a JSON line too, not a
        // plain one among its lines; the message says it was logged.
        Err(e) if log_json => {
            tracing::error!("{}", tribe::keyfile::withhold_keys(&e));
            Err(LOGGED.into())
        }
        served => served,
    }
}

/// The error message of an agent that logged its error already (as a JSON
/// line): `main` prints nothing more.
pub const LOGGED: &str = "";

/// How long the start waits for the publish file to open.
const PUBLISH_FILE_OPEN_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// The agent's plan, made on a thread of its own (it may block), raced
/// with the signals; with the SIGHUPs received meanwhile.
async fn plan_or_signal(
    args: AgentArgs,
    signals: &mut crate::signals::Watch,
) -> Result<(AgentPlan, usize), String> {
    let (tx, planned) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("tribe-plan".into())
        .spawn(move || {
            let collected = tribe::facts::collect();
            let _ = tx.send(args.plan(&collected));
        })
        .map_err(|e| format!("cannot start the tribe-plan thread: {e}"))?;
    tokio::pin!(planned);
    let mut hups = 0;
    loop {
        tokio::select! {
            plan = &mut planned => {
                let plan = plan.map_err(|_| "the agent's options could not be read (internal error)")?;
                return Ok((plan?, hups));
            }
            signal = signals.next() => {
                if signal != signal_hook::consts::SIGHUP {
                    return Err("stopped by a signal while starting".into());
                }
                hups += 1;
            }
        }
    }
}

async fn serve(plan: AgentPlan, mut signals: crate::signals::Watch) -> Result<(), String> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    if plan.stop_at_stdin_eof {
        stop_at_stdin_eof()?;
    }

    // The publish file first: a path it cannot write is the operator's
    // mistake, said before any port is taken (or found taken).
    let publisher = match plan.publish_file {
        Some(path) => {
            // Raced with the signals, as the node's start: the file may sit
            // on a hung mount.
            let shown = path.display().to_string();
            let opening = crate::tasks::file_publisher(path);
            tokio::pin!(opening);
            let given_up = tokio::time::sleep(PUBLISH_FILE_OPEN_WAIT);
            tokio::pin!(given_up);
            loop {
                tokio::select! {
                    opened = &mut opening => break Some(opened?),
                    () = &mut given_up => {
                        return Err(format!(
                            "--publish-file {shown}: not opened within {} s (a FIFO waits \
                             for its reader: start the reader first; or a hung mount)",
                            PUBLISH_FILE_OPEN_WAIT.as_secs()
                        ));
                    }
                    signal = signals.next() => {
                        if signal != SIGHUP {
                            return Err("stopped by a signal while starting".into());
                        }
                        tracing::info!("SIGHUP while starting: nothing to reload; still starting");
                    }
                }
            }
        }
        None => None,
    };
    let admin_listener = tokio::net::TcpListener::bind(plan.admin)
        .await
        .map_err(|e| {
            // The CLI reads TRIBE_ADMIN too: one left exported from using it
            // beats the config file's `admin` here, and surprises.
            // Not when the flag gave it (clap does not say which did).
            let flag = std::env::args_os().any(|a| {
                a == "--admin" || a.as_encoded_bytes().starts_with(b"--admin=")
            });
            let env = std::env::var_os("TRIBE_ADMIN")
                .filter(|_| !flag)
                .map(|_| {
                    " (the address came from TRIBE_ADMIN in the environment, which the CLI reads too)"
                })
                .unwrap_or_default();
            format!(
                "cannot listen for the admin API on {}: {e}{env}",
                plan.admin
            )
        })?;
    let admin_addr = admin_listener
        .local_addr()
        .map_err(|e| format!("admin listener: {e}"))?;
    // The `stdout` publisher's lines (the ready line goes first,
    // directly); its thread is made before the node's, so that at the
    // process's thread limit the node's start says so (the stream's thread
    // cannot fail but by panicking).
    let (stdout, mut stdout_drops, _stdout_lines) =
        crate::output::stream(std::io::stdout(), "tribe-stdout")?;
    // Made now, used from the ready line on (see `log_writer`).
    let log_queue = crate::log_writer::queue_later()?;
    // On a task of its own: a start stuck in the file system (a hung
    // network mount under the data dir) still ends at SIGTERM or SIGINT.
    let max_reply = plan.config.rpc.max_payload;
    let mut starting = tokio::spawn(Node::start(plan.config));
    // A signal that comes as the start ends: the node leaves at once.
    let mut stop_at_once = false;
    let node = loop {
        tokio::select! {
            started = &mut starting => break started
                .map_err(|e| format!("cannot start the node: {e}"))?
                .map_err(|e| format!("cannot start the node: {e}"))?,
            signal = signals.next() => {
                if signal == SIGHUP {
                    tracing::info!("SIGHUP while starting: nothing to reload; still starting");
                    continue;
                }
                if !starting.is_finished() {
                    return Err("stopped by a signal while starting".into());
                }
                stop_at_once = true;
            }
        }
    };

    let mut events = node.events();
    let (ready_line_out, ready_line) = crate::tasks::ReadyLine::closed();
    let (log_queue, mut log_drops, _log_lines) = log_queue;
    tokio::spawn(async move {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(10));
        loop {
            every.tick().await;
            if let Some(n) = stdout_drops.newly_dropped() {
                tracing::warn!(
                    lines = n,
                    "stdout is not being read, or writes to it fail (a full disk behind it): the stdout publisher dropped metric lines"
                );
            }
            // Told in the log itself, once its reader reads again.
            log_drops.tell_dropped(|n| {
                tracing::warn!(
                    lines = n,
                    "stderr was not being read: log lines were dropped meanwhile"
                );
            });
        }
    });
    crate::tasks::serve_builtins(&node, max_reply, publisher, ready_line, stdout).await?;
    let task_runs = tribe::admin::TaskRuns::default();
    let mut runner = crate::tasks::TaskRunner::new(node.clone(), task_runs.clone());
    tokio::spawn(async move {
        let mut log = EventLog::default();
        let mut missed = 0;
        let mut resync = crate::tasks::ResyncClock::default();
        loop {
            // A quiet second still reports what the last one skipped.
            let next = tokio::time::timeout(std::time::Duration::from_secs(1), events.next());
            let quiet = match next.await {
                Ok(Some(event)) => {
                    log.event(&event, std::time::Instant::now());
                    runner.on_event(&event);
                    false
                }
                Ok(None) => break,
                Err(_) => {
                    log.roll(std::time::Instant::now());
                    true
                }
            };
            // The stream fell behind (a burst of 65,536 events: a late
            // joiner of a large tribe) and lost the newest, maybe a TaskRun
            // or a TaskStop among them. Once the older ones queued before
            // them are read (a quiet second; 10 s at most), the tribes'
            // catalogs say what to run.
            if events.missed() > missed {
                tracing::warn!(
                    lost = events.missed() - missed,
                    "the agent's event stream fell behind and lost events; its tasks are set again from the tribes' catalogs"
                );
                missed = events.missed();
                resync.lost_events(std::time::Instant::now());
            }
            if resync.due(quiet, std::time::Instant::now()) {
                runner.resync();
            }
        }
    });

    let (stop_admin, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    let guard = tribe::admin::guard::Guard {
        token: plan.admin_token.clone(),
        ..Default::default()
    };
    let admin = tokio::spawn(tribe::admin::serve_with_tasks(
        node.clone(),
        admin_listener,
        guard,
        task_runs,
        async {
            let _ = admin_stopped.await;
        },
    ));

    if plan.plaintext {
        tracing::warn!(
            "encryption is OFF (--insecure-plaintext): anyone on the network can read and forge \
             this tribe's gossip, sync and calls; use it for tests only"
        );
    }
    tracing::info!(name = node.name(), gossip = %node.addr(), admin = %admin_addr, "agent running");
    // The ready line first on stdout, for scripts and the demo; logs go to
    // stderr, and only the `stdout` publisher's metric lines follow it.
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "ready name={} gossip={} admin={}",
        node.name(),
        node.addr(),
        admin_addr
    );
    let _ = out.flush();
    drop(out);
    crate::log_writer::queue_from_now(log_queue);
    ready_line_out.send_replace(true);

    if stop_at_once {
        tracing::info!("a signal came as the node started: leaving the tribe");
    } else {
        loop {
            match signals.next().await {
                SIGTERM => tracing::info!("SIGTERM: leaving the tribe"),
                SIGINT => tracing::info!("SIGINT: leaving the tribe"),
                _ => {
                    tracing::info!("SIGHUP: nothing to reload (change facts, keys and tribes through the admin API); still running");
                    continue;
                }
            }
            break;
        }
    }
    let left = node.shutdown().await;
    // The process exits next: the replies of calls still running go out
    // first, and callers move what came after the goodbye elsewhere.
    let _ = tokio::time::timeout(EXIT_DRAIN, node.calls_drained()).await;
    let _ = stop_admin.send(());
    let _ = admin.await;
    left.map_err(|e| format!("leaving: {e}"))?;
    tracing::info!("left the tribe");
    Ok(())
}

/// How long a stopping agent waits for its calls to be answered and its
/// call streams to end before it exits.
const EXIT_DRAIN: std::time::Duration = std::time::Duration::from_secs(2);

/// Events logged per second, at most: a burst (thousands of members
/// gossiped in at once, or found failed together) would otherwise write a
/// line each on every node. The rest are counted and the count logged.
const EVENTS_LOGGED_PER_SECOND: u32 = 50;

/// The agent's log of its node's events, at a bounded rate.
#[derive(Default)]
struct EventLog {
    window: Option<std::time::Instant>,
    logged: u32,
    skipped: u64,
}

impl EventLog {
    /// Logs `event` at `now`, or counts it when the second's share is used
    /// up; whether it was logged.
    fn event(&mut self, event: &Event, now: std::time::Instant) -> bool {
        // Said once per policy and message, and the only word an operator
        // gets of why a node stays out of a tribe: never left for a burst
        // of member events to crowd out.
        if let Event::PolicyError { .. } = event {
            tracing::warn!(?event, "policy error");
            return true;
        }
        self.roll(now);
        if self.window.is_none() {
            self.window = Some(now);
        }
        if self.logged >= EVENTS_LOGGED_PER_SECOND {
            self.skipped += 1;
            return false;
        }
        self.logged += 1;
        match event {
            // A manifest may be 64 KiB: its size, not its text, per line.
            Event::TaskRun(task) | Event::TaskStop(task) => {
                let kind = if matches!(event, Event::TaskRun(_)) {
                    "TaskRun"
                } else {
                    "TaskStop"
                };
                tracing::info!(
                    event = kind,
                    tribe = %task.tribe,
                    task = %task.id,
                    manifest_bytes = task.manifest.len(),
                    "event"
                );
            }
            _ => tracing::info!(?event, "event"),
        }
        true
    }

    /// Ends the second's window once it is over, reporting what it skipped.
    fn roll(&mut self, now: std::time::Instant) {
        let over = self
            .window
            .is_some_and(|w| now.duration_since(w) >= std::time::Duration::from_secs(1));
        if !over {
            return;
        }
        if self.skipped > 0 {
            tracing::warn!(
                skipped = self.skipped,
                "{} events not logged (more than {EVENTS_LOGGED_PER_SECOND} a second)",
                self.skipped
            );
        }
        *self = EventLog::default();
    }
}

#[cfg(test)]
mod tests {
    /// A key file that is a FIFO waits for its writer, bounded: one that
    /// comes later or was there first is read, none is an error, not a
    /// start that hangs.
    #[test]
    fn a_key_file_fifo_waits_for_its_writer_bounded() {
        let dir = std::env::temp_dir().join(format!("tribe-agent-fifo-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("key");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let reader = {
            use std::os::unix::fs::OpenOptionsExt as _;
            std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&fifo)
                .unwrap()
        };
        let err =
            super::wait_for_a_writer(&reader, std::time::Duration::from_millis(200)).unwrap_err();
        assert!(err.to_string().contains("no one wrote to it"), "{err}");
        drop(reader);
        let mut warnings = Vec::new();
        for writer_first in [false, true] {
            let key = tribe::SecretKey::generate();
            let writer = {
                let (fifo, text) = (fifo.clone(), key.to_base64());
                std::thread::spawn(move || {
                    if !writer_first {
                        std::thread::sleep(std::time::Duration::from_millis(300));
                    }
                    std::fs::write(fifo, text).unwrap()
                })
            };
            if writer_first {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            let got = super::read_key(
                None,
                Some(fifo.clone()),
                ("--key", "--key-file"),
                &mut warnings,
            );
            writer.join().unwrap();
            assert_eq!(
                got.unwrap().map(|k| k.id()),
                Some(key.id()),
                "{writer_first}"
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn events_are_logged_at_a_bounded_rate() {
        let mut log = super::EventLog::default();
        let start = std::time::Instant::now();
        let event = tribe::Event::Joined;
        let logged = (0..1_000).filter(|_| log.event(&event, start)).count();
        assert_eq!(logged, super::EVENTS_LOGGED_PER_SECOND as usize);
        assert_eq!(log.skipped, 1_000 - logged as u64);
        let later = start + std::time::Duration::from_secs(1);
        assert!(log.event(&event, later), "a new second, a new share");
        assert_eq!(log.skipped, 0);
        // With no event after a burst, the tick reports the skipped ones.
        (0..1_000).for_each(|_| {
            log.event(&event, later);
        });
        assert!(log.skipped > 0);
        log.roll(later + std::time::Duration::from_millis(999));
        assert!(log.skipped > 0, "not before the second is over");
        log.roll(later + std::time::Duration::from_secs(1));
        assert_eq!((log.skipped, log.window), (0, None));
        // A policy error is logged whatever the burst.
        (0..1_000).for_each(|_| {
            log.event(&event, later);
        });
        let error = tribe::Event::PolicyError {
            policy: "p".into(),
            message: "no such key: rack".into(),
        };
        assert!(log.event(&error, later));
    }

    /// A config file that does not parse is named by line and column; the
    /// values in it (a key, the admin token) are not quoted back.
    #[test]
    fn config_file_errors_withhold_the_values() {
        let key = "mp+coKP5jV6+EoGcLD+P8dkO+T6nKt+k44zZ4omecOE=";
        let path = std::path::Path::new("/etc/tribe/agent.toml");
        for (text, line) in [
            (format!("name = \"a\"\nkey = \"{key}\n"), 2),
            (format!("kee = \"{key}\"\n"), 1),
            (format!("name = \"a\"\nport = \"{key}\"\n"), 2),
            ("admin-token = \"s3cr3t-token\n".to_string(), 1),
            (format!("\"{key}\" = \"x\"\n"), 1),
            (format!("[{key}]\n"), 1),
            // A value on a line of its own, and a 32-character token.
            (
                "name = \"a\"\nadmin-token =\n  0123456789abcdef0123456789abcdef\n".into(),
                3,
            ),
            ("0123456789abcdef0123456789abcdef = 1\n".into(), 1),
        ] {
            let Err(e) = toml::from_str::<super::FileOptions>(&text) else {
                panic!("parsed: {text}")
            };
            let message = super::toml_error(path, &text, &e);
            assert!(!message.contains(key), "{message}");
            assert!(!message.contains("s3cr3t"), "{message}");
            assert!(!message.contains("0123456789abcdef"), "{message}");
            assert!(
                message.starts_with(&format!("config file {}, line {line}", path.display())),
                "{message}"
            );
        }
        // A line that sets an option twice names the option.
        let text = "seed = [\"127.0.0.1:1\"]\nseed = [\"127.0.0.1:2\"]\n";
        let Err(e) = toml::from_str::<super::FileOptions>(text) else {
            panic!("parsed: {text}")
        };
        let message = super::toml_error(path, text, &e);
        assert!(message.contains("line 2 (`seed`)"), "{message}");
        // The options named are the file's.
        let Err(e) = toml::from_str::<super::FileOptions>("nonesuch = 1\n") else {
            panic!("parsed an unknown option")
        };
        let expected: Vec<&str> = e
            .message()
            .split_once("expected one of ")
            .expect("serde lists the options")
            .1
            .split(", ")
            .map(|o| o.trim_matches('`'))
            .collect();
        assert_eq!(expected, super::FILE_OPTIONS);
        // A key put in `[limits]` as a name is withheld; a short typo is
        // named.
        let key = "rVQWVDvuJnEUYcexBu4IRDoGcHcU2fX2ni+sz1u5xmM=";
        let mut config = tribe::Config::new("n");
        for (name, shown) in [(key, false), ("moons", true)] {
            let limits = [(name.to_string(), 3)].into_iter().collect();
            let why = super::set_file_limits(&mut config, &limits).unwrap_err();
            assert_eq!(why.contains(name), shown, "{why}");
        }
    }

    use super::{check_log_level, set_file_limits, with_default_level};

    #[test]
    fn an_unspecified_bind_advertises_the_default_route_of_its_family() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            agent: super::AgentArgs,
        }
        use clap::Parser as _;
        let facts: tribe::facts::Facts =
            [("default_ipv4", "10.0.0.5"), ("default_ipv6", "fd00::5")]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        let plan = |bind: &str, facts: &tribe::facts::Facts| {
            Cli::try_parse_from([
                "agent",
                "--name",
                "n",
                "--bind",
                bind,
                "--insecure-plaintext",
            ])
            .unwrap()
            .agent
            .plan(facts)
            .map(|p| p.config.advertise)
        };
        assert_eq!(
            plan("0.0.0.0:7946", &facts).unwrap(),
            Some("10.0.0.5:7946".parse().unwrap())
        );
        assert_eq!(
            plan("[::]:7946", &facts).unwrap(),
            Some("[fd00::5]:7946".parse().unwrap())
        );
        let v4_only: tribe::facts::Facts = facts
            .iter()
            .filter(|(k, _)| *k == "default_ipv4")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let err = plan("[::]:7946", &v4_only).err().unwrap();
        assert!(err.contains("no IPv6 default route"), "{err}");
        // A bad address says why.
        let err = plan("[::1]", &facts).err().unwrap();
        assert!(
            err.contains("--bind \"[::1]\" is not host:port: no port"),
            "{err}"
        );
    }

    /// An operator shortens how long failed members stay listed (serf's
    /// reconnect_timeout); a bad duration says what it wants.
    #[test]
    fn reap_after_takes_a_duration() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            agent: super::AgentArgs,
        }
        use clap::Parser as _;
        let plan = |args: &[&str]| {
            let base = [
                "agent",
                "--name",
                "n",
                "--bind",
                "127.0.0.1:0",
                "--insecure-plaintext",
            ];
            Cli::try_parse_from(base.iter().chain(args))
                .unwrap()
                .agent
                .plan(&tribe::facts::Facts::new())
                .map(|p| p.config.reap_after)
        };
        assert_eq!(plan(&[]).unwrap(), None);
        assert_eq!(
            plan(&["--reap-after", "10m"]).unwrap(),
            Some(std::time::Duration::from_secs(600))
        );
        let err = plan(&["--reap-after", "soon"]).unwrap_err();
        assert!(
            err.contains("--reap-after \"soon\"") && err.contains("10m"),
            "{err}"
        );
    }

    #[test]
    fn a_log_level_is_a_level_or_a_directive() {
        for good in [
            "info",
            "WARN",
            "off",
            "3",
            "tribe=debug,",
            "warn,tribe::rpc=trace",
            "",
        ] {
            assert!(check_log_level(good).is_ok(), "{good:?}");
        }
        for bad in ["warnn", "loud", "info,verbose"] {
            let err = check_log_level(bad).unwrap_err();
            assert!(err.contains("is not a level"), "{bad:?}: {err}");
        }
        // A key given by mistake ends in `=` too.
        let key = tribe::SecretKey::generate().to_base64();
        for bad in ["warn=", "info,tribe=", key.as_str()] {
            let err = check_log_level(bad).unwrap_err();
            assert!(
                err.contains("names no level after its `=`"),
                "{bad:?}: {err}"
            );
        }
    }

    #[test]
    fn a_filter_of_targets_only_keeps_info_for_the_rest() {
        for (given, used) in [
            ("tribe=debug", "info,tribe=debug"),
            ("trbie=debug", "info,trbie=debug"),
            ("tribe::rpc", "info,tribe::rpc"),
            ("tribe=debug,", "info,tribe=debug,"),
            ("", "info,"),
            ("warn", "warn"),
            ("tribe=trace,error", "tribe=trace,error"),
            ("OFF", "OFF"),
            ("2,tribe=debug", "2,tribe=debug"),
        ] {
            assert_eq!(with_default_level(given), used, "{given:?}");
        }
    }

    fn limits(pairs: &[(&str, usize)]) -> std::collections::BTreeMap<String, usize> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn limit_errors_quote_the_file_and_list_kebab_case_names() {
        let mut config = tribe::Config::new("x");
        set_file_limits(
            &mut config,
            &limits(&[("max-streams", 7), ("max_serving", 9), ("tribes", 3)]),
        )
        .unwrap();
        assert_eq!(config.rpc.max_streams, 7);
        assert_eq!(config.rpc.max_serving, 9);
        assert_eq!(config.limits.tribes, 3);
        let err = set_file_limits(&mut config, &limits(&[("max-strams", 7)])).unwrap_err();
        assert!(err.contains("\"max-strams\""), "{err}");
        assert!(
            err.contains("max-streams") && err.contains("max-inflight-per-conn"),
            "{err}"
        );
        assert!(!err.contains('_'), "{err}");
        let err = set_file_limits(&mut config, &limits(&[("max-serving", 0)])).unwrap_err();
        assert!(err.contains("\"max-serving\" must be at least 1"), "{err}");
        let err =
            set_file_limits(&mut config, &limits(&[("max-serving", 99_999_999)])).unwrap_err();
        assert!(err.contains("\"max-serving\""), "{err}");
        assert!(err.contains("must be at most 16777216"), "{err}");
        let err = set_file_limits(
            &mut config,
            &limits(&[("max-serving", 1), ("max_serving", 2)]),
        )
        .unwrap_err();
        assert!(err.contains("name the same limit"), "{err}");
    }
}
