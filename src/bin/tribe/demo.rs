//! `tribe demo`: a local tribe of `tribe agent` processes on 127.0.0.1,
//! driven only through their admin APIs, with a narrative of what happens:
//! policies placing nodes by facts, a tribe created by a policy, per-tribe
//! catalogs, a fact change moving a node, failure detection after kill -9, a
//! late joiner inheriting the catalog, and a restart that rejoins from its
//! data dir.

/// Prints a line of the narration. A closed stdout (`tribe demo | head`)
/// must not end the demo before it stops its agents: the text is dropped.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use tribe::admin::json::{KeyHolding, Keys, Member, Status, Tribe};

use crate::client::Admin;

/// Options of `tribe demo`.
#[derive(clap::Args)]
pub struct DemoArgs {
    /// Number of agents to start (3 to 16).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u8).range(3..=16))]
    nodes: u8,
    /// Leave the tribe running at the end and print how to reach it.
    #[arg(long)]
    keep: bool,
}

type DemoResult<T = ()> = Result<T, String>;

/// The tribe's first key, written by the demo (mode 0600) before any agent starts.
const KEY_FILE: &str = "tribe.key";
/// With `--keep`: the key in force after the demo's rotation.
const CURRENT_KEY_FILE: &str = "current.key";

/// How long an agent may take to print its ready line.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// One agent process.
struct Agent {
    name: String,
    child: Child,
    /// The other end of the agent's stdin, held for the demo's life: when
    /// the demo dies however it dies, the agent leaves (see `--keep`).
    _lifeline: Option<std::process::ChildStdin>,
    gossip: SocketAddr,
    admin_addr: SocketAddr,
    admin: Admin,
}

/// Every agent started, killed on drop unless kept: an error halfway through
/// never leaves processes behind.
struct Demo {
    agents: Vec<Agent>,
    dir: PathBuf,
    start: Instant,
    keep: bool,
    /// `--keep`: the agents outlive the demo, so they get no lifeline.
    outlive: bool,
    /// The agents' pids, for the thread that stops them on a signal.
    pids: Arc<Mutex<Vec<u32>>>,
}

/// Set when a signal stops the demo: its thread stops the agents, and the
/// main thread leaves them to it.
static STOPPING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn stopping() -> bool {
    STOPPING.load(std::sync::atomic::Ordering::SeqCst)
}

impl Drop for Demo {
    fn drop(&mut self) {
        if self.keep || stopping() {
            return;
        }
        for a in &mut self.agents {
            let _ = a.child.kill();
            let _ = a.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Demo {
    fn say(&self, text: &str) {
        out!("[{:>5.1}s] {text}", self.start.elapsed().as_secs_f64());
    }

    /// Waits for `cond`, saying every few seconds that it still waits.
    fn wait_for(
        &self,
        what: &str,
        limit: Duration,
        mut cond: impl FnMut(&Self) -> DemoResult<bool>,
    ) -> DemoResult {
        let began = Instant::now();
        let mut next_note = began + Duration::from_secs(3);
        loop {
            if cond(self)? {
                return Ok(());
            }
            let now = Instant::now();
            if now > began + limit {
                return Err(format!(
                    "timed out after {}s waiting for {what}",
                    limit.as_secs()
                ));
            }
            if now > next_note {
                out!(
                    "          ... still waiting for {what} ({:.0}s)",
                    (now - began).as_secs_f64()
                );
                next_note = now + Duration::from_secs(3);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn spawn(
        &mut self,
        name: &str,
        facts: &[(&str, &str)],
        seed: Option<SocketAddr>,
    ) -> DemoResult<usize> {
        let agent = spawn_agent(&self.dir, name, facts, seed, &self.pids, !self.outlive)?;
        let line = format!(
            "started agent {name} (pid {}) gossip {} admin {}  facts {}",
            agent.child.id(),
            agent.gossip,
            agent.admin_addr,
            facts
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
        // Kept before anything else can fail, so the demo's end stops it.
        self.agents.push(agent);
        self.say(&line);
        Ok(self.agents.len() - 1)
    }
}

/// Writes a file readable by the owner only.
fn write_private(path: &Path, text: &str) -> DemoResult {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    writeln!(file, "{text}").map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Where a storage agent's file publisher writes.
fn published_file(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}-published.jsonl"))
}

fn spawn_agent(
    dir: &Path,
    name: &str,
    facts: &[(&str, &str)],
    seed: Option<SocketAddr>,
    pids: &Mutex<Vec<u32>>,
    lifeline: bool,
) -> DemoResult<Agent> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the tribe binary: {e}"))?;
    let log_path = dir.join(format!("{name}.log"));
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| format!("cannot create {}: {e}", log_path.display()))?;
    let mut cmd = Command::new(exe);
    cmd.arg("agent")
        .args(["--name", name])
        .args(["--bind", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .args(["--profile", "local", "--log-level", "info"])
        .arg("--data-dir")
        .arg(dir.join(name))
        .arg("--key-file")
        .arg(dir.join(KEY_FILE))
        .stdin(if lifeline {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(log);
    if lifeline {
        cmd.arg("--stop-at-stdin-eof");
    }
    for (k, v) in facts {
        cmd.arg("--fact").arg(format!("{k}={v}"));
    }
    if let Some(seed) = seed {
        cmd.arg("--seed").arg(seed.to_string());
    }
    // Storage nodes serve the built-in file publisher.
    if facts.contains(&("storage_tier", "true")) {
        cmd.arg("--publish-file").arg(published_file(dir, name));
    }
    // The demo's own environment must not reconfigure its agents.
    for (key, _) in std::env::vars() {
        if key.starts_with("TRIBE_") {
            cmd.env_remove(key);
        }
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start agent {name}: {e}"))?;
    pids.lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(child.id());
    // Started after the signal's thread took the pids: stopped here.
    if stopping() {
        let _ = child.kill();
        let _ = child.wait();
        return Err("stopping".into());
    }
    let stdout = child.stdout.take().ok_or("agent stdout not captured")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = match rx.recv_timeout(START_TIMEOUT) {
        Ok(line) if !line.is_empty() => line,
        _ => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "agent {name} did not start; see {}",
                log_path.display()
            ));
        }
    };
    let field = |key: &str| -> DemoResult<SocketAddr> {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("agent {name} printed an unexpected ready line: {line:?}"))
    };
    let gossip = field("gossip=")?;
    let admin_addr = field("admin=")?;
    Ok(Agent {
        name: name.to_string(),
        _lifeline: child.stdin.take(),
        child,
        gossip,
        admin_addr,
        admin: Admin::at(admin_addr),
    })
}

/// Sends SIGTERM (the agent leaves gracefully).
fn signal_stop(agent: &Agent) -> DemoResult {
    let pid = nix::unistd::Pid::from_raw(agent.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)
        .map_err(|e| format!("cannot signal {}: {e}", agent.name))
}

/// Waits for an agent to exit and checks it exited cleanly.
fn wait_exit(agent: &mut Agent) -> DemoResult {
    let status = agent
        .child
        .wait()
        .map_err(|e| format!("waiting for {}: {e}", agent.name))?;
    if !status.success() {
        return Err(format!("agent {} exited with {status}", agent.name));
    }
    Ok(())
}

fn terminate(agent: &mut Agent) -> DemoResult {
    signal_stop(agent)?;
    wait_exit(agent)
}

fn describe(t: &Tribe) -> String {
    let plugins: Vec<String> = t
        .plugins
        .iter()
        .map(|p| format!("{}:{} ({})", p.name, p.version, p.kind))
        .collect();
    let tasks: Vec<&str> = t.tasks.iter().map(|k| k.id.as_str()).collect();
    format!(
        "{:<8} members [{}]  plugins [{}]  tasks [{}]",
        t.name,
        t.members.join(", "),
        plugins.join(", "),
        tasks.join(", ")
    )
}

fn member_state(agent: &Agent, name: &str) -> DemoResult<Option<String>> {
    let members: Vec<Member> = agent.admin.get("/v1/members")?;
    Ok(members
        .into_iter()
        .find(|m| m.name == name)
        .map(|m| m.state))
}

fn in_tribe(agent: &Agent, tribe: &str, name: &str) -> DemoResult<bool> {
    match agent.admin.get::<Tribe>(&format!("/v1/tribes/{tribe}")) {
        Ok(t) => Ok(t.members.iter().any(|m| m == name)),
        Err(_) => Ok(false),
    }
}

/// Metrics published into storage agents' files, one sample line per source node.
fn published_sources(t: &Demo) -> DemoResult<std::collections::BTreeMap<String, String>> {
    let mut sources = std::collections::BTreeMap::new();
    for a in &t.agents {
        let Ok(text) = std::fs::read_to_string(published_file(&t.dir, &a.name)) else {
            continue;
        };
        for line in text.lines() {
            let Ok(metric) = serde_json::from_str::<tribe::workflow::Metric>(line) else {
                continue;
            };
            if let Some(source) = metric.tags.get("source") {
                sources
                    .entry(format!("{source} -> {}", a.name))
                    .or_insert_with(|| line.to_string());
            }
        }
    }
    Ok(sources)
}

/// Facts of the i-th agent: ubuntu and centos alternate; every third is a
/// storage node.
fn facts_of(i: usize) -> [(&'static str, &'static str); 3] {
    [
        (
            "os_dist",
            if i.is_multiple_of(2) {
                "ubuntu"
            } else {
                "centos"
            },
        ),
        ("storage_tier", if i % 3 == 1 { "true" } else { "false" }),
        ("rack", if i.is_multiple_of(2) { "r1" } else { "r2" }),
    ]
}

/// On SIGINT, SIGTERM or SIGHUP while the demo runs: its agents leave
/// (SIGTERM, then SIGKILL for any still there after 2 s), its directory
/// goes, and it exits as killed by that signal would (128 + its number).
/// Without this, a signal would end the demo before its cleanup and leave
/// the agents running.
fn stop_on_signal(pids: Arc<Mutex<Vec<u32>>>, dir: PathBuf) -> DemoResult {
    use nix::sys::signal::{kill, Signal};
    let mut watch = crate::signals::Watch::new(&[
        Signal::SIGINT as i32,
        Signal::SIGTERM as i32,
        Signal::SIGHUP as i32,
    ])?;
    std::thread::spawn(move || {
        let caught = Signal::try_from(watch.wait()).unwrap_or(Signal::SIGTERM);
        STOPPING.store(true, std::sync::atomic::Ordering::SeqCst);
        let pids = pids.lock().unwrap_or_else(|p| p.into_inner()).clone();
        // Only agents not reaped yet (a reaped one's pid may belong to
        // another process by now): still this process's children.
        let ours = |p: u32| {
            use nix::sys::wait::{waitid, Id, WaitPidFlag};
            let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
            waitid(Id::Pid(nix::unistd::Pid::from_raw(p as i32)), flags).is_ok()
        };
        let stop = |sig: Signal| {
            for &p in pids.iter().filter(|&&p| ours(p)) {
                let _ = kill(nix::unistd::Pid::from_raw(p as i32), sig);
            }
        };
        stop(Signal::SIGTERM);
        // Said after the agents were told: a closed stdout must not keep
        // them running.
        let _ = writeln!(std::io::stdout(), "\n{caught}: stopping the agents");
        std::thread::sleep(Duration::from_secs(2));
        stop(Signal::SIGKILL);
        let _ = std::fs::remove_dir_all(&dir);
        std::process::exit(128 + caught as i32);
    });
    Ok(())
}

/// Runs the demo; every agent is stopped before it returns (unless `--keep`).
pub fn run(args: DemoArgs) -> DemoResult {
    let result = run_demo(args);
    if stopping() {
        // What failed failed because a signal stops the agents: the
        // signal's thread ends the process.
        loop {
            std::thread::park();
        }
    }
    result
}

fn run_demo(args: DemoArgs) -> DemoResult {
    let n = usize::from(args.nodes);
    // A fresh directory only its owner may enter (tempfile makes it 0700,
    // with a random name): nobody can plant files or links in it first.
    let dir = tempfile::Builder::new()
        .prefix("tribe-demo-")
        .tempdir()
        .map_err(|e| {
            format!(
                "cannot create a directory in {}: {e}",
                std::env::temp_dir().display()
            )
        })?
        .keep();
    let pids = Arc::new(Mutex::new(Vec::new()));
    stop_on_signal(pids.clone(), dir.clone())?;
    let mut t = Demo {
        agents: Vec::new(),
        dir,
        start: Instant::now(),
        keep: false,
        outlive: args.keep,
        pids,
    };
    let first_key = tribe::SecretKey::generate();
    write_private(&t.dir.join(KEY_FILE), &first_key.to_base64())?;
    out!(
        "libtribe demo: {n} `tribe agent` processes on 127.0.0.1 (UDP gossip + TCP sync, profile 'local'),\n\
         driven through their admin HTTP APIs, all traffic sealed with key {} (like `tribe keygen`).\n\
         Agent logs: {}\n",
        first_key.id(),
        t.dir.display()
    );

    for i in 0..n {
        let seed = t.agents.first().map(|a| a.gossip);
        t.spawn(&format!("n{}", i + 1), &facts_of(i), seed)?;
    }
    t.wait_for(
        "every agent to see all others",
        Duration::from_secs(30),
        |t| {
            for a in &t.agents {
                if a.admin.get::<Status>("/v1/status")?.members_alive != n {
                    return Ok(false);
                }
            }
            Ok(true)
        },
    )?;
    t.say(&format!("all {n} agents see each other alive"));

    let last = n - 1;
    let admin = &t.agents[last].admin;
    admin.post("/v1/tribes", &json!({"name": "core"}))?;
    admin.post(
        "/v1/policies",
        &json!({"name": "core", "tribe": "core", "when": "facts.os_dist == \"ubuntu\""}),
    )?;
    admin.post(
        "/v1/policies",
        &json!({"name": "storage", "tribe": "storage", "when": "has(facts.storage_tier) && facts.storage_tier == \"true\""}),
    )?;
    t.say(&format!(
        "through {}'s admin API: created tribe core and added two policies",
        t.agents[last].name
    ));
    out!("          core:    facts.os_dist == \"ubuntu\"      -> tribe core");
    out!("          storage: has(facts.storage_tier) && facts.storage_tier == \"true\"");
    out!("                   -> tribe storage (not created beforehand)");
    t.wait_for(
        "the storage tribe to be created by its policy",
        Duration::from_secs(20),
        |t| {
            Ok(t.agents[last]
                .admin
                .get::<Tribe>("/v1/tribes/storage")
                .is_ok())
        },
    )?;
    let admin = &t.agents[last].admin;
    for (tribe, name, version, kind) in [
        ("core", "proc", "1", "collector"),
        ("core", "tag", "1", "processor"),
        ("storage", "file", "1", "publisher"),
    ] {
        admin.post(
            &format!("/v1/tribes/{tribe}/plugins"),
            &json!({"name": name, "version": version, "kind": kind}),
        )?;
    }
    admin.post(
        "/v1/tribes/core/tasks",
        &json!({"id": "load-to-storage", "manifest": {
            "schedule": {"interval": "1s"},
            "collect": {"plugin": "proc", "metrics": ["load/*", "mem/*"]},
            "process": [{"plugin": "tag", "config": {"pipeline": "demo"}}],
            "publish": [{"plugin": "file", "tribe": "storage"}]
        }}),
    )?;
    t.say("loaded proc and tag into core, file into storage; added task load-to-storage to core:");
    out!("          every second each core member collects load/* and mem/* from /proc, tags them");
    out!("          locally, and publishes them through a remote call to a storage member's file publisher");
    t.wait_for(
        "every agent to agree on the state",
        Duration::from_secs(30),
        |t| {
            let first = t.agents[0].admin.get::<Status>("/v1/status")?.state_digest;
            for a in &t.agents[1..] {
                if a.admin.get::<Status>("/v1/status")?.state_digest != first {
                    return Ok(false);
                }
            }
            Ok(true)
        },
    )?;
    t.say("every agent reports the same state digest; the tribes as n1 sees them:");
    for tribe in t.agents[0].admin.get::<Vec<Tribe>>("/v1/tribes")? {
        out!("          {}", describe(&tribe));
    }

    t.wait_for(
        "metrics from core members in a storage member's file",
        Duration::from_secs(20),
        |t| Ok(published_sources(t)?.len() >= 2),
    )?;
    let sources = published_sources(&t)?;
    t.say(&format!(
        "remote publish works: storage files hold metrics from core members {}",
        sources.keys().cloned().collect::<Vec<_>>().join(", ")
    ));
    if let Some(sample) = sources.values().next() {
        out!("          e.g. {sample}");
    }

    let moved = t.agents[1].name.clone();
    t.agents[1]
        .admin
        .put("/v1/facts/os_dist", Some(&json!({"value": "ubuntu"})))?;
    t.say(&format!("{moved} changes its fact os_dist to ubuntu ..."));
    t.wait_for(
        "the policy to move it into core",
        Duration::from_secs(20),
        |t| {
            for a in &t.agents {
                if !in_tribe(a, "core", &moved)? {
                    return Ok(false);
                }
            }
            Ok(true)
        },
    )?;
    t.say(&format!(
        "... and every agent now has {moved} in core: {}",
        describe(&t.agents[0].admin.get::<Tribe>("/v1/tribes/core")?)
    ));

    let mut victim = t.agents.remove(2);
    let _ = victim.child.kill();
    let _ = victim.child.wait();
    let killed = Instant::now();
    t.say(&format!(
        "kill -9 {} (pid {}): no goodbye; waiting for failure detection ...",
        victim.name,
        victim.child.id()
    ));
    t.wait_for(
        "every agent to mark it failed",
        Duration::from_secs(30),
        |t| {
            for a in &t.agents {
                if member_state(a, &victim.name)?.as_deref() != Some("failed") {
                    return Ok(false);
                }
            }
            Ok(true)
        },
    )?;
    t.say(&format!(
        "every agent marks {} failed after {:.1}s",
        victim.name,
        killed.elapsed().as_secs_f64()
    ));

    let seed = t.agents[0].gossip;
    let late = t.spawn(
        "late",
        &[
            ("os_dist", "ubuntu"),
            ("storage_tier", "true"),
            ("rack", "r3"),
        ],
        Some(seed),
    )?;
    t.wait_for(
        "the late joiner to inherit its tribes' catalogs",
        Duration::from_secs(20),
        |t| {
            let a = &t.agents[late];
            let Ok(core) = a.admin.get::<Tribe>("/v1/tribes/core") else {
                return Ok(false);
            };
            let Ok(storage) = a.admin.get::<Tribe>("/v1/tribes/storage") else {
                return Ok(false);
            };
            Ok(core.members.iter().any(|m| m == "late")
                && storage.members.iter().any(|m| m == "late")
                && core.plugins.len() == 2
                && core.tasks.len() == 1
                && storage.plugins.len() == 1)
        },
    )?;
    t.say("the late joiner (ubuntu, storage) is in core and storage and inherited their catalogs:");
    for tribe in ["core", "storage"] {
        let view = t.agents[late]
            .admin
            .get::<Tribe>(&format!("/v1/tribes/{tribe}"))?;
        out!("          {}", describe(&view));
    }

    let keeper = t.agents[0].name.clone();
    t.agents[0]
        .admin
        .post("/v1/tribes", &json!({"name": "ops"}))?;
    t.agents[0]
        .admin
        .put(&format!("/v1/tribes/ops/members/{keeper}"), None)?;
    t.say(&format!(
        "{keeper} joins tribe ops by hand, then stops (SIGTERM: a graceful leave)"
    ));
    t.wait_for(
        "its membership to reach the data dir",
        Duration::from_secs(10),
        |t| {
            let file = t.dir.join(&keeper).join(tribe::datadir::STATE_FILE);
            Ok(std::fs::read_to_string(file).is_ok_and(|s| s.contains("\"ops\"")))
        },
    )?;
    let mut stopped = t.agents.remove(0);
    terminate(&mut stopped)?;
    t.wait_for("the others to see it left", Duration::from_secs(20), |t| {
        for a in &t.agents {
            if member_state(a, &keeper)?.as_deref() != Some("left") {
                return Ok(false);
            }
        }
        Ok(true)
    })?;
    t.say(&format!(
        "{keeper} is 'left' everywhere; restarting it without any seed ..."
    ));
    let back = t.spawn(&keeper, &facts_of(0), None)?;
    t.wait_for(
        "it to rejoin from its data dir",
        Duration::from_secs(30),
        |t| {
            let alive = t.agents.len();
            let a = &t.agents[back];
            Ok(a.admin.get::<Status>("/v1/status")?.members_alive == alive
                && in_tribe(&t.agents[0], "ops", &keeper)?)
        },
    )?;
    t.say(&format!(
        "{keeper} found its peers from the data dir and is back in ops (and, by policy, in core)"
    ));

    // Key rotation without downtime: install, use, remove, through one agent.
    let second_key = tribe::SecretKey::generate();
    let admin = &t.agents[0].admin;
    admin.post("/v1/keys", &json!({ "key": second_key.to_base64() }))?;
    t.say(&format!(
        "rotating keys: installed key {} through {}'s admin API ...",
        second_key.id(),
        t.agents[0].name
    ));
    let every_node = |t: &Demo, check: &dyn Fn(&Keys, &KeyHolding) -> bool| -> DemoResult<bool> {
        let keys: Keys = t.agents[0].admin.get("/v1/keys")?;
        let Some(k) = keys
            .keys
            .iter()
            .find(|k| k.id == second_key.id().to_string())
        else {
            return Ok(false);
        };
        Ok(check(&keys, k))
    };
    t.wait_for(
        "every agent to hold the new key",
        Duration::from_secs(20),
        |t| every_node(t, &|keys, k| k.installed_on.len() == keys.members),
    )?;
    admin.put(&format!("/v1/keys/{}/primary", second_key.id()), None)?;
    t.wait_for(
        "every agent to seal with it",
        Duration::from_secs(20),
        |t| every_node(t, &|keys, k| k.primary_on.len() == keys.members),
    )?;
    admin.delete(&format!("/v1/keys/{}", first_key.id()))?;
    t.wait_for(
        "the old key to be gone everywhere",
        Duration::from_secs(20),
        |t| {
            let keys: Keys = t.agents[0].admin.get("/v1/keys")?;
            Ok(keys.keys.len() == 1)
        },
    )?;
    t.say(&format!(
        "... made it primary and removed key {}: every agent now holds only key {}",
        first_key.id(),
        second_key.id()
    ));

    if args.keep {
        t.keep = true;
        out!("\nThe tribe keeps running. Reach it with, for example:");
        for a in &t.agents {
            out!(
                "  tribe members --admin {}   # {} (pid {})",
                a.admin_addr,
                a.name,
                a.child.id()
            );
        }
        // Programs that embed libtribe (C, Go, Python examples) join with
        // the key in force after the rotation.
        let current = t.dir.join(CURRENT_KEY_FILE);
        write_private(&current, &second_key.to_base64())?;
        if let Some(first) = t.agents.first() {
            out!(
                "Embed a node in your own program and join it: seed {}, key file {}\n\
                 (tribe 'storage' serves the 'file' publisher; it writes {}/<agent>-published.jsonl)",
                first.gossip,
                current.display(),
                t.dir.display()
            );
            out!("join seed={} key_file={}", first.gossip, current.display());
        }
        let pids: Vec<String> = t.agents.iter().map(|a| a.child.id().to_string()).collect();
        out!("Stop it with: kill {}", pids.join(" "));
        return Ok(());
    }
    // All at once: each graceful leave takes up to 1.5 s of gossip.
    for a in &t.agents {
        signal_stop(a)?;
    }
    for a in &mut t.agents {
        wait_exit(a)?;
    }
    t.say("every agent left gracefully; demo done");
    Ok(())
}
