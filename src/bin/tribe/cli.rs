//! The admin commands: each is one or two requests to an agent's admin API,
//! printed as an aligned table (or JSON with `--json`).

use std::io::Write as _;

use clap::{Args, Subcommand};
use serde_json::json;
use tribe::admin::json::{KeyHolding, Keys, Member, PolicyJson, Status, Tribe};

use crate::agent::DEFAULT_ADMIN;
use crate::client::{seg, Admin, Reply};

/// Where the agent is and how to print. No `Debug`: it may hold a token.
#[derive(Args, Clone)]
pub struct AdminOpts {
    /// Admin API address of the agent to talk to (a bare port: on 127.0.0.1).
    #[arg(long, global = true, env = "TRIBE_ADMIN", value_name = "HOST:PORT", default_value = DEFAULT_ADMIN, value_parser = admin_address)]
    pub admin: String,
    /// Token of the agent's admin API, if it requires one.
    #[arg(long, global = true, env = "TRIBE_ADMIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print the agent's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

/// `tribe tribe ...`
#[derive(Subcommand, Debug)]
pub enum TribeCmd {
    /// Show one tribe: live members, plugins and tasks.
    Show {
        /// Tribe name.
        tribe: String,
    },
    /// Create an empty tribe.
    Create {
        /// Tribe name.
        tribe: String,
    },
    /// Delete a tribe with its catalog, memberships and the policies that target it.
    #[command(visible_aliases = ["rm", "remove"])]
    Delete {
        /// Tribe name.
        tribe: String,
    },
    /// Put a node in a tribe by hand.
    Join {
        /// Tribe name.
        tribe: String,
        /// Node name [default: the agent's own].
        node: Option<String>,
    },
    /// Take a node out of a tribe (membership by hand only; policies still apply).
    Leave {
        /// Tribe name.
        tribe: String,
        /// Node name [default: the agent's own].
        node: Option<String>,
    },
}

/// `tribe policy ...`
#[derive(Subcommand, Debug)]
pub enum PolicyCmd {
    /// Add a policy: nodes whose facts satisfy WHEN are in TRIBE (created when missing).
    Add {
        /// Policy name.
        name: String,
        /// Tribe it puts nodes in.
        tribe: String,
        /// CEL expression over `facts`, e.g. 'facts.os_dist == "ubuntu"'.
        when: String,
    },
    /// Remove a policy.
    #[command(visible_alias = "remove")]
    Rm {
        /// Policy name.
        name: String,
    },
    /// List policies.
    #[command(visible_alias = "list")]
    Ls,
}

/// `tribe plugin ...`
#[derive(Subcommand, Debug)]
pub enum PluginCmd {
    /// Add a plugin to a tribe's catalog; every member is asked to load it.
    Load {
        /// Tribe name.
        tribe: String,
        /// Plugin name.
        name: String,
        /// Plugin version.
        version: String,
        /// collector, processor or publisher.
        kind: String,
    },
    /// Remove a plugin from a tribe's catalog.
    Unload {
        /// Tribe name.
        tribe: String,
        /// Plugin name.
        name: String,
        /// Plugin version.
        version: String,
    },
}

/// `tribe task ...`
#[derive(Subcommand, Debug)]
pub enum TaskCmd {
    /// Add a task to a tribe; every member inherits it.
    Add {
        /// Tribe name.
        tribe: String,
        /// Task id, unique in the tribe.
        id: String,
        /// The manifest, a JSON object (or @FILE to read it from a file).
        manifest: String,
        /// Add it stopped instead of running.
        #[arg(long)]
        stopped: bool,
    },
    /// Remove a task.
    #[command(visible_alias = "remove")]
    Rm {
        /// Tribe name.
        tribe: String,
        /// Task id.
        id: String,
    },
    /// Ask members to run a task.
    Start {
        /// Tribe name.
        tribe: String,
        /// Task id.
        id: String,
    },
    /// Ask members to stop a task.
    Stop {
        /// Tribe name.
        tribe: String,
        /// Task id.
        id: String,
    },
}

/// `tribe fact ...`
#[derive(Subcommand, Debug)]
pub enum FactCmd {
    /// List the agent's facts (collected and user ones).
    #[command(visible_alias = "list")]
    Ls,
    /// Set a user fact of the agent (policies are evaluated again).
    Set {
        /// Fact key.
        key: String,
        /// Fact value.
        value: String,
    },
    /// Remove a user fact of the agent.
    #[command(visible_alias = "remove")]
    Rm {
        /// Fact key.
        key: String,
    },
}

/// `tribe keys ...`
#[derive(Subcommand, Debug)]
pub enum KeysCmd {
    /// Show which live nodes hold which keys and which key each seals with.
    #[command(visible_alias = "ls")]
    List,
    /// Install a key (base64) on every node, and wait until every live node holds it.
    Install {
        /// The key, as `tribe keygen` prints it, or `-` to read it from
        /// standard input (a command line is visible to every user of the host).
        key: String,
        /// How long to wait for every live node to report the key, in seconds.
        #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(0..=3600))]
        wait: u64,
    },
    /// Make an installed key every node's primary (sealing) key.
    Use {
        /// The key (base64) or its id (8 hex digits).
        key: String,
        /// How long to wait for every live node to switch, in seconds.
        #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(0..=3600))]
        wait: u64,
    },
    /// Remove a key from every node's keyring (the primary is refused).
    #[command(visible_alias = "rm")]
    Remove {
        /// The key (base64) or its id (8 hex digits).
        key: String,
        /// How long to wait for every live node to drop it, in seconds.
        #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(0..=3600))]
        wait: u64,
    },
    /// Set this agent's encryption mode: accept, send or require. It lasts until the
    /// agent stops: put it in the agent's configuration before a restart.
    Encryption {
        /// accept | send | require
        mode: String,
    },
}

/// One admin command, ready to run.
#[derive(Debug)]
pub enum AdminCommand {
    /// `tribe status`
    Status,
    /// `tribe members`: each member's state, tribes and facts (those under
    /// names no collected fact has, and those a policy names; every fact
    /// with `--json`). A member's JSON merges its facts, so a user fact
    /// under a collected fact's name (`kernel`) cannot be told from the
    /// collected one: it shows only when a policy names it.
    Members,
    /// `tribe tribes`
    Tribes,
    /// `tribe tribe ...`
    Tribe(TribeCmd),
    /// `tribe policy ...`
    Policy(PolicyCmd),
    /// `tribe plugin ...`
    Plugin(PluginCmd),
    /// `tribe task ...`
    Task(TaskCmd),
    /// `tribe fact ...`
    Fact(FactCmd),
    /// `tribe keys ...`
    Keys(KeysCmd),
    /// `tribe join ADDR...`
    Join(Vec<String>),
}

/// What a write to stdout comes to: nothing more to do when the reader went
/// away (`tribe members | head`), an error otherwise.
fn stdout_result(result: std::io::Result<()>) -> Result<(), String> {
    match result {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.map_err(|e| format!("writing to stdout: {e}")),
    }
}

/// One line on stdout.
fn print_line(text: impl std::fmt::Display) -> Result<(), String> {
    stdout_result(writeln!(std::io::stdout(), "{text}"))
}

/// Aligned columns with a header row.
fn print_table(headers: &[&str], rows: Vec<Vec<String>>) -> Result<(), String> {
    let mut tw = tabwriter::TabWriter::new(std::io::stdout()).padding(3);
    let write_all = || -> std::io::Result<()> {
        writeln!(tw, "{}", headers.join("\t"))?;
        for row in rows {
            let cells: Vec<_> = row.iter().map(|c| table_cell(c)).collect();
            writeln!(tw, "{}", cells.join("\t"))?;
        }
        tw.flush()
    };
    stdout_result(write_all())
}

/// The key `tribe keys install -` reads: the one line of standard input
/// that is not blank (a key file, `tribe keygen`'s output).
fn key_from_stdin() -> Result<String, String> {
    use std::io::Read as _;
    // A key is 44 characters: more than a page is no key file. Sized
    // ahead, so that no reallocation leaves a copy behind; the length is
    // checked before the text (a character cut at the limit is no error
    // of its own).
    let mut bytes = zeroize::Zeroizing::new(Vec::with_capacity(4097));
    std::io::stdin()
        .take(4097)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read the key from standard input: {e}"))?;
    if bytes.len() > 4096 {
        return Err(
            "invalid argument: standard input holds more than 4 KiB: give one key (invalid_argument)"
                .into(),
        );
    }
    let text = std::str::from_utf8(&bytes).map_err(|_| {
        "invalid argument: standard input is not UTF-8 text: give one key (invalid_argument)"
            .to_string()
    })?;
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    match (lines.next(), lines.next()) {
        (Some(key), None) => Ok(key.to_string()),
        (None, _) => Err("invalid argument: no key on standard input (invalid_argument)".into()),
        (Some(_), Some(_)) => Err(
            "invalid argument: standard input holds more than one line: give one key (invalid_argument)"
                .into(),
        ),
    }
}

/// A value as one table cell: a tab or a line break in it (a policy's
/// expression may hold them) would start another column or row, other
/// control characters (an escape sequence in a peer's fact) would reach the
/// terminal, and bidirectional overrides would make a line read otherwise
/// than it is; a backslash is doubled, so that `\n` in a value reads apart
/// from an escaped line break.
fn table_cell(value: &str) -> std::borrow::Cow<'_, str> {
    let shown_escaped = |c: char| c == '\\' || c.is_control() || is_bidi_control(c);
    if !value.chars().any(shown_escaped) {
        return value.into();
    }
    let mut out = String::with_capacity(value.len() + 8);
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() || is_bidi_control(c) => {
                out.push_str(&format!("\\u{{{:x}}}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.into()
}

/// The marks and overrides that change the direction text is shown in.
fn is_bidi_control(c: char) -> bool {
    matches!(
        c,
        '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
    )
}

/// A line on standard error; lost if it is closed (no panic, as
/// `eprintln!` would).
fn warn_line(text: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "{text}");
}

fn print_json(value: &serde_json::Value) -> Result<(), String> {
    let text = serde_json::to_string_pretty(value).map_err(|e| e.to_string())?;
    print_line(text)
}

fn list_or_dash(items: &[String]) -> String {
    if items.is_empty() {
        "-".into()
    } else {
        items.join(",")
    }
}

fn own_name(admin: &Admin) -> Result<String, String> {
    Ok(admin.get::<Status>("/v1/status")?.name)
}

/// What a mutation prints: its reply with `--json`, else a short confirmation.
fn done(opts: &AdminOpts, reply: Reply, what: String) -> Result<(), String> {
    if opts.json {
        print_json(&reply.unwrap_or_else(|| json!({})))
    } else {
        print_line(what)
    }
}

fn read_manifest(text: &str) -> Result<serde_json::Value, String> {
    let raw = match text.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read manifest file {path}: {e}"))?,
        None => text.to_string(),
    };
    serde_json::from_str(&raw).map_err(|e| format!("the manifest is not JSON: {e}"))
}

/// `--admin`: `HOST:PORT`, `http://HOST:PORT/` or a port of this host; any
/// other text is a usage error, not an unreachable agent.
fn admin_address(text: &str) -> Result<String, String> {
    if let Some((scheme, _)) = text.split_once("://").filter(|(s, _)| *s != "http") {
        return Err(format!(
            "the admin API speaks plain HTTP, not {scheme}: give HOST:PORT or http://HOST:PORT \
             (for TLS, put a proxy in front and reach it with a client of your own)"
        ));
    }
    let bare = text.strip_prefix("http://").unwrap_or(text);
    let bare = bare.trim_end_matches('/');
    let port_ok = |p: &str| p.parse::<u16>().is_ok_and(|p| p > 0);
    let valid = port_ok(bare)
        || bare
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port_ok(port));
    if valid {
        Ok(text.to_string())
    } else {
        Err("not HOST:PORT (or a port of this host, 1 to 65535)".into())
    }
}

/// Warns, on standard error, that the agent keeps out of the cluster for
/// another node under its name.
fn warn_if_kept_out(s: &Status) {
    if let Some(holder) = &s.name_held_by {
        warn_line(&format!(
            "warning: another node at {holder} runs under this node's name (a copied configuration?); this node keeps out of the cluster until that node stops"
        ));
    }
}

/// Runs one admin command against the agent at `opts.admin`.
pub fn run(opts: AdminOpts, cmd: AdminCommand) -> Result<(), String> {
    let admin = Admin::new(&opts.admin, opts.token.clone());
    match cmd {
        AdminCommand::Status => {
            let value = admin.get_value("/v1/status")?;
            if opts.json {
                return print_json(&value);
            }
            let s: Status = serde_json::from_value(value).map_err(|e| e.to_string())?;
            // On standard error, so that the table stays as scripts read it.
            warn_if_kept_out(&s);
            if let Some(peer) = &s.key_refused_by {
                warn_line(&format!(
                    "warning: the peer at {peer} refused this node's key in the last minute: the tribe may have rotated its keys without this node; install the tribe's current key on it (tribe keys install KEY --admin THIS-AGENT)"
                ));
            }
            print_table(
                &[
                    "NAME",
                    "ADDR",
                    "ALIVE",
                    "TRIBES",
                    "BACKLOG",
                    "ENCRYPTION",
                    "DIGEST",
                ],
                vec![vec![
                    s.name,
                    s.addr,
                    s.members_alive.to_string(),
                    s.tribes.to_string(),
                    s.broadcast_backlog.to_string(),
                    s.encryption.unwrap_or_else(|| "-".into()),
                    s.state_digest.chars().take(16).collect(),
                ]],
            )
        }
        AdminCommand::Members => {
            let value = admin.get_value("/v1/members")?;
            if opts.json {
                return print_json(&value);
            }
            let members: Vec<Member> = serde_json::from_value(value).map_err(|e| e.to_string())?;
            // Its own row says alive while another node holds its name.
            if let Ok(status) = admin.get::<Status>("/v1/status") {
                warn_if_kept_out(&status);
            }
            // Facts under names no collected fact has, and those a policy
            // names (they place the nodes in tribes); the other collected
            // names are in `--json`.
            let policies: Vec<PolicyJson> = admin.get("/v1/policies")?;
            let named: std::collections::BTreeSet<String> = policies
                .iter()
                .flat_map(|p| tribe::policy::fact_names(&p.when))
                .collect();
            let rows = members
                .into_iter()
                .map(|m| {
                    let facts: Vec<String> = m
                        .facts
                        .iter()
                        .filter(|(k, _)| {
                            !tribe::facts::COLLECTED_FACTS.contains(&k.as_str())
                                || named.contains(k.as_str())
                        })
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect();
                    vec![
                        if m.local {
                            format!("{}*", m.name)
                        } else {
                            m.name
                        },
                        m.addr,
                        m.state,
                        list_or_dash(&m.tribes),
                        list_or_dash(&facts),
                    ]
                })
                .collect();
            print_table(&["NAME", "ADDR", "STATE", "TRIBES", "FACTS"], rows)
        }
        AdminCommand::Tribes => {
            let value = admin.get_value("/v1/tribes")?;
            if opts.json {
                return print_json(&value);
            }
            let tribes: Vec<Tribe> = serde_json::from_value(value).map_err(|e| e.to_string())?;
            print_tribes(tribes)
        }
        AdminCommand::Tribe(cmd) => run_tribe(&opts, &admin, cmd),
        AdminCommand::Policy(cmd) => run_policy(&opts, &admin, cmd),
        AdminCommand::Plugin(cmd) => match cmd {
            PluginCmd::Load {
                tribe,
                name,
                version,
                kind,
            } => {
                let reply = admin.post(
                    &format!("/v1/tribes/{}/plugins", seg(&tribe)),
                    &json!({"name": name, "version": version, "kind": kind}),
                )?;
                done(
                    &opts,
                    reply,
                    format!("loaded {name}:{version} ({kind}) in tribe {tribe}"),
                )
            }
            PluginCmd::Unload {
                tribe,
                name,
                version,
            } => {
                let reply = admin.delete(&format!(
                    "/v1/tribes/{}/plugins/{}/{}",
                    seg(&tribe),
                    seg(&name),
                    seg(&version)
                ))?;
                done(
                    &opts,
                    reply,
                    format!("unloaded {name}:{version} from tribe {tribe}"),
                )
            }
        },
        AdminCommand::Task(cmd) => run_task(&opts, &admin, cmd),
        AdminCommand::Keys(cmd) => run_keys(&opts, &admin, cmd),
        AdminCommand::Join(addrs) => {
            let reply = admin.post("/v1/join", &json!({ "addrs": addrs }))?;
            let joined = reply
                .as_ref()
                .and_then(|r| r.get("joined"))
                .and_then(serde_json::Value::as_u64)
                .ok_or("unexpected reply to POST /v1/join")?;
            done(&opts, reply, format!("joined through {joined} address(es)"))
        }
        AdminCommand::Fact(cmd) => match cmd {
            FactCmd::Ls => {
                let value = admin.get_value("/v1/facts")?;
                if opts.json {
                    return print_json(&value);
                }
                let facts: std::collections::BTreeMap<String, String> =
                    serde_json::from_value(value).map_err(|e| e.to_string())?;
                print_table(
                    &["KEY", "VALUE"],
                    facts.into_iter().map(|(k, v)| vec![k, v]).collect(),
                )
            }
            FactCmd::Set { key, value } => {
                // Told here in a fact's terms (the API would speak of its
                // path: an empty key is an empty path segment there).
                tribe::facts::validate_fact(&key, &value)
                    .map_err(|e| format!("{e} (invalid_argument)"))?;
                let reply = admin.put(
                    &format!("/v1/facts/{}", seg(&key)),
                    Some(&json!({"value": value})),
                )?;
                done(&opts, reply, format!("set fact {key}={value}"))
            }
            FactCmd::Rm { key } => {
                tribe::facts::validate_fact(&key, "")
                    .map_err(|e| format!("{e} (invalid_argument)"))?;
                let reply = admin.delete(&format!("/v1/facts/{}", seg(&key)))?;
                done(&opts, reply, format!("removed fact {key}"))
            }
        },
    }
}

fn print_tribes(tribes: Vec<Tribe>) -> Result<(), String> {
    let rows = tribes
        .into_iter()
        .map(|t| {
            let plugins: Vec<String> = t
                .plugins
                .iter()
                .map(|p| format!("{}:{}", p.name, p.version))
                .collect();
            let tasks: Vec<String> = t
                .tasks
                .iter()
                .map(|k| format!("{}({})", k.id, k.state))
                .collect();
            vec![
                t.name,
                list_or_dash(&t.members),
                list_or_dash(&plugins),
                list_or_dash(&tasks),
            ]
        })
        .collect();
    print_table(&["TRIBE", "MEMBERS", "PLUGINS", "TASKS"], rows)
}

fn run_tribe(opts: &AdminOpts, admin: &Admin, cmd: TribeCmd) -> Result<(), String> {
    match cmd {
        TribeCmd::Show { tribe } => {
            let value = admin.get_value(&format!("/v1/tribes/{}", seg(&tribe)))?;
            if opts.json {
                return print_json(&value);
            }
            let t: Tribe = serde_json::from_value(value).map_err(|e| e.to_string())?;
            print_tribes(vec![t])
        }
        TribeCmd::Create { tribe } => {
            let reply = admin.post("/v1/tribes", &json!({"name": tribe}))?;
            done(opts, reply, format!("created tribe {tribe}"))
        }
        TribeCmd::Delete { tribe } => {
            let reply = admin.delete(&format!("/v1/tribes/{}", seg(&tribe)))?;
            done(opts, reply, format!("deleted tribe {tribe}"))
        }
        TribeCmd::Join { tribe, node } => {
            let node = match node {
                Some(n) => n,
                None => own_name(admin)?,
            };
            let reply = admin.put(
                &format!("/v1/tribes/{}/members/{}", seg(&tribe), seg(&node)),
                None,
            )?;
            done(opts, reply, format!("{node} joined tribe {tribe}"))
        }
        TribeCmd::Leave { tribe, node } => {
            let node = match node {
                Some(n) => n,
                None => own_name(admin)?,
            };
            let reply = admin.delete(&format!(
                "/v1/tribes/{}/members/{}",
                seg(&tribe),
                seg(&node)
            ))?;
            done(
                opts,
                reply,
                format!("{node} is no longer in tribe {tribe} by hand (a policy may still place it there)"),
            )
        }
    }
}

fn run_policy(opts: &AdminOpts, admin: &Admin, cmd: PolicyCmd) -> Result<(), String> {
    match cmd {
        PolicyCmd::Add { name, tribe, when } => {
            let reply = admin.post(
                "/v1/policies",
                &json!({"name": name, "tribe": tribe, "when": when}),
            )?;
            done(
                opts,
                reply,
                format!("added policy {name} for tribe {tribe}"),
            )
        }
        PolicyCmd::Rm { name } => {
            let reply = admin.delete(&format!("/v1/policies/{}", seg(&name)))?;
            done(opts, reply, format!("removed policy {name}"))
        }
        PolicyCmd::Ls => {
            let value = admin.get_value("/v1/policies")?;
            if opts.json {
                return print_json(&value);
            }
            let policies: Vec<PolicyJson> =
                serde_json::from_value(value).map_err(|e| e.to_string())?;
            print_table(
                &["POLICY", "TRIBE", "WHEN"],
                policies
                    .into_iter()
                    .map(|p| vec![p.name, p.tribe, p.when])
                    .collect(),
            )
        }
    }
}

fn run_task(opts: &AdminOpts, admin: &Admin, cmd: TaskCmd) -> Result<(), String> {
    match cmd {
        TaskCmd::Add {
            tribe,
            id,
            manifest,
            stopped,
        } => {
            let manifest = read_manifest(&manifest)?;
            let state = if stopped { "stopped" } else { "running" };
            let reply = admin.post(
                &format!("/v1/tribes/{}/tasks", seg(&tribe)),
                &json!({"id": id, "manifest": manifest, "state": state}),
            )?;
            done(
                opts,
                reply,
                format!("added task {id} ({state}) to tribe {tribe}"),
            )
        }
        TaskCmd::Rm { tribe, id } => {
            let reply = admin.delete(&format!("/v1/tribes/{}/tasks/{}", seg(&tribe), seg(&id)))?;
            done(opts, reply, format!("removed task {id} from tribe {tribe}"))
        }
        TaskCmd::Start { tribe, id } => {
            let reply = admin.put(
                &format!("/v1/tribes/{}/tasks/{}/start", seg(&tribe), seg(&id)),
                None,
            )?;
            done(
                opts,
                reply,
                format!("task {id} of tribe {tribe} set to running"),
            )
        }
        TaskCmd::Stop { tribe, id } => {
            let reply = admin.put(
                &format!("/v1/tribes/{}/tasks/{}/stop", seg(&tribe), seg(&id)),
                None,
            )?;
            done(
                opts,
                reply,
                format!("task {id} of tribe {tribe} set to stopped"),
            )
        }
    }
}

/// A key id from a key (base64) or an id (8 hex digits).
fn key_id_of(text: &str) -> Result<tribe::KeyId, String> {
    tribe::KeyId::of_key_or_id(text)
        .map_err(|e| format!("invalid argument: {e} (invalid_argument)"))
}

/// Polls `/v1/keys` until `done` holds for the key or `wait` passes; says how far it got.
fn wait_keys(
    admin: &Admin,
    id: tribe::KeyId,
    wait: u64,
    what: &str,
    done: impl Fn(&KeyHolding, usize) -> usize,
    undone: impl Fn(&Keys, std::time::Duration) -> Option<String>,
) -> Result<String, String> {
    let began = std::time::Instant::now();
    let deadline = began + std::time::Duration::from_secs(wait);
    loop {
        let keys: Keys = admin.get("/v1/keys")?;
        if let Some(why) = undone(&keys, began.elapsed()) {
            return Err(why);
        }
        let hold = keys
            .keys
            .iter()
            .find(|k| k.id == id.to_string())
            .map(|k| done(k, keys.members))
            .unwrap_or_else(|| {
                done(
                    &KeyHolding {
                        id: id.to_string(),
                        installed_on: vec![],
                        primary_on: vec![],
                    },
                    keys.members,
                )
            });
        let summary = format!("key {id} {what} on {hold}/{} live nodes", keys.members);
        if hold == keys.members {
            return Ok(format!("{summary}{}", not_counted(admin)));
        }
        if std::time::Instant::now() > deadline {
            return Err(format!("{summary} after {wait}s"));
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// The members down (failed, not left) that a keyring step did not count:
/// cut apart by a partition, they hold the keys they held, and a removal
/// of every key they hold cuts them off once they are back.
fn not_counted(admin: &Admin) -> String {
    let Ok(members) = admin.get::<Vec<Member>>("/v1/members") else {
        return String::new();
    };
    let failed: Vec<&str> = members
        .iter()
        .filter(|m| m.state == "failed")
        .map(|m| m.name.as_str())
        .collect();
    if failed.is_empty() {
        return String::new();
    }
    format!(
        " ({} failed member(s) not counted: {}; they take this step when they are back, \
         unless every key they hold has been removed meanwhile)",
        failed.len(),
        failed.join(", ")
    )
}

/// What undid a `keys use` of `id` while it spread (a step made through
/// another node at the same moment): the key removed, or another made
/// primary everywhere (looked for once the use had time to spread).
fn other_step(keys: &Keys, id: tribe::KeyId, waited: std::time::Duration) -> Option<String> {
    let id = id.to_string();
    if !keys.keys.iter().any(|k| k.id == id) {
        return Some(format!(
            "key {id} is no longer in the keyring: it was removed meanwhile (a `tribe keys \
             remove` through another node?)"
        ));
    }
    let instead = keys
        .keys
        .iter()
        .find(|k| k.id != id && k.primary_on.len() == keys.members)
        .filter(|_| waited >= std::time::Duration::from_secs(2))?;
    Some(format!(
        "key {} was made primary on every live node instead of {id} (a `tribe keys use` \
         through another node at the same moment?)",
        instead.id
    ))
}

fn run_keys(opts: &AdminOpts, admin: &Admin, cmd: KeysCmd) -> Result<(), String> {
    match cmd {
        KeysCmd::List => {
            let value = admin.get_value("/v1/keys")?;
            if opts.json {
                return print_json(&value);
            }
            let keys: Keys = serde_json::from_value(value).map_err(|e| e.to_string())?;
            if keys.encryption.is_none() {
                return print_line("encryption is off on this agent");
            }
            print_line(format_args!(
                "mode {}, primary {}, {} live nodes",
                keys.encryption.unwrap_or_default(),
                keys.primary.unwrap_or_default(),
                keys.members
            ))?;
            let rows = keys
                .keys
                .into_iter()
                .map(|k| {
                    vec![
                        k.id,
                        format!("{}/{}", k.installed_on.len(), keys.members),
                        format!("{}/{}", k.primary_on.len(), keys.members),
                        list_or_dash(&k.installed_on),
                    ]
                })
                .collect();
            print_table(&["KEY ID", "INSTALLED", "PRIMARY", "NODES"], rows)
        }
        KeysCmd::Install { key, wait } => {
            let key = if key == "-" { key_from_stdin()? } else { key };
            let id = tribe::SecretKey::from_base64(&key)
                .map_err(|e| format!("invalid argument: {e} (invalid_argument)"))?
                .id();
            let reply = admin.post("/v1/keys", &json!({ "key": key }))?;
            let summary = wait_keys(
                admin,
                id,
                wait,
                "installed",
                |k, _| k.installed_on.len(),
                |_, _| None,
            )?;
            done(opts, reply, summary)
        }
        KeysCmd::Use { key, wait } => {
            let id = key_id_of(&key)?;
            let reply = admin.put(&format!("/v1/keys/{id}/primary"), None)?;
            let summary = wait_keys(
                admin,
                id,
                wait,
                "primary",
                |k, _| k.primary_on.len(),
                |keys, waited| other_step(keys, id, waited),
            )?;
            done(opts, reply, summary)
        }
        KeysCmd::Remove { key, wait } => {
            let id = key_id_of(&key)?;
            let reply = admin.delete(&format!("/v1/keys/{id}"))?;
            let summary = wait_keys(
                admin,
                id,
                wait,
                "removed",
                |k, members| members - k.installed_on.len(),
                |_, _| None,
            )?;
            done(opts, reply, summary)
        }
        KeysCmd::Encryption { mode } => {
            let reply = admin.put("/v1/encryption", Some(&json!({ "mode": mode })))?;
            done(opts, reply, format!("encryption mode set to {mode}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{admin_address, other_step, table_cell};
    use tribe::admin::json::{KeyHolding, Keys};

    /// A `keys use` whose key another step removed, or which another `use`
    /// beat, fails at once saying so, not "primary on 0/4" after 15 s.
    #[test]
    fn a_use_undone_by_another_step_says_what_happened() {
        let id = tribe::SecretKey::generate().id();
        let holding = |id: String, primary: usize| KeyHolding {
            id,
            installed_on: vec!["a".into(), "b".into()],
            primary_on: ["a", "b"][..primary]
                .iter()
                .map(|s| s.to_string())
                .collect(),
        };
        let keys = |keys| Keys {
            encryption: Some("require".into()),
            primary: None,
            members: 2,
            keys,
        };
        let second = std::time::Duration::from_secs(1);
        let other = "0badc0de".to_string();
        let removed = other_step(&keys(vec![holding(other.clone(), 2)]), id, second).unwrap();
        assert!(removed.contains("removed meanwhile"), "{removed}");
        let beaten = keys(vec![holding(id.to_string(), 0), holding(other.clone(), 2)]);
        // Not at once: the use may not have reached this node yet.
        assert_eq!(other_step(&beaten, id, second), None);
        let beaten = other_step(&beaten, id, second * 3).unwrap();
        assert!(beaten.contains("0badc0de was made primary"), "{beaten}");
        let spreading = keys(vec![holding(id.to_string(), 1), holding(other, 1)]);
        assert_eq!(other_step(&spreading, id, second * 3), None);
    }

    /// `--admin https://...` is refused as such, not taken for a host
    /// named `https` (the error said "http://https://...: unreachable").
    #[test]
    fn an_admin_address_with_another_scheme_is_refused() {
        for ok in [
            "127.0.0.1:7947",
            "http://127.0.0.1:7947/",
            "7947",
            "[::1]:7947",
        ] {
            assert!(admin_address(ok).is_ok(), "{ok}");
        }
        let err = admin_address("https://127.0.0.1:7947").unwrap_err();
        assert!(err.contains("plain HTTP, not https"), "{err}");
        assert!(admin_address("127.0.0.1").is_err());
    }

    #[test]
    fn a_cell_keeps_to_its_row_and_column() {
        assert_eq!(
            table_cell("facts.a == 'x' &&\n\tfacts.b == 'y'"),
            "facts.a == 'x' &&\\n\\tfacts.b == 'y'"
        );
        assert_eq!(table_cell("plain"), "plain");
        assert_eq!(table_cell("a\\nb"), "a\\\\nb");
        assert_eq!(table_cell("x\u{1b}[2Jy\u{7f}"), "x\\u{1b}[2Jy\\u{7f}");
        assert_eq!(table_cell("é ü"), "é ü");
        assert_eq!(table_cell("a\u{202e}b"), "a\\u{202e}b");
        assert_eq!(table_cell("a\u{61c}b"), "a\\u{61c}b");
    }
}
