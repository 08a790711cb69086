//! `tribe agent` processes on 127.0.0.1, driven only through the admin HTTP
//! API and the admin commands of the `tribe` binary.

mod common;

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const TRIBE: &str = env!("CARGO_BIN_EXE_tribe");

/// One agent process, killed when dropped.
struct Agent {
    name: String,
    child: Child,
    gossip: SocketAddr,
    admin: SocketAddr,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn scratch_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tribe-agents-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Starts an agent with extra arguments and waits for its ready line.
fn start_agent(dir: &Path, name: &str, extra: &[String]) -> Agent {
    start_agent_env(dir, name, extra, &[])
}

/// Whether an agent's arguments or environment give it a key (or a data dir
/// that may keep one); the others are test tribes started with
/// `--insecure-plaintext`.
fn keyed(extra: &[String], envs: &[(&str, &str)]) -> bool {
    extra
        .iter()
        .any(|a| ["--key", "--key-file", "--insecure-plaintext", "--config"].contains(&a.as_str()))
        || envs
            .iter()
            .any(|(k, _)| ["TRIBE_KEY", "TRIBE_KEY_FILE", "TRIBE_INSECURE_PLAINTEXT"].contains(k))
}

/// Starts an agent with extra arguments and environment variables (the
/// caller's TRIBE_* variables are not passed on). An agent given no key runs
/// with `--insecure-plaintext`.
fn start_agent_env(dir: &Path, name: &str, extra: &[String], envs: &[(&str, &str)]) -> Agent {
    start_agent_in(dir, name, extra, envs, None)
}

/// [`start_agent_env`], the agent run by `bash -c` after `shell` (limits
/// set with `ulimit`, say), when given.
fn start_agent_in(
    dir: &Path,
    name: &str,
    extra: &[String],
    envs: &[(&str, &str)],
    shell: Option<&str>,
) -> Agent {
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
    let mut cmd = match shell {
        None => Command::new(TRIBE),
        Some(shell) => {
            let mut cmd = Command::new("bash");
            cmd.args(["-c", &format!("{shell}; exec \"$0\" \"$@\""), TRIBE]);
            cmd
        }
    };
    cmd.arg("agent")
        .args(["--bind", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .args(["--profile", "local"])
        .args(extra);
    if !extra.iter().any(|a| a == "--log-level") {
        cmd.args(["--log-level", "debug"]);
    }
    if !keyed(extra, envs) {
        cmd.arg("--insecure-plaintext");
    }
    for (key, _) in std::env::vars() {
        if key.starts_with("TRIBE_") {
            cmd.env_remove(key);
        }
    }
    cmd.envs(envs.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log);
    if !extra.iter().any(|a| a == "--config") {
        cmd.args(["--name", name]);
    }
    let mut child = cmd.spawn().expect("spawn tribe agent");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(Duration::from_secs(30)).unwrap_or_default();
    let mut field = |key: &str| -> SocketAddr {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| {
                let _ = child.kill();
                let log = std::fs::read_to_string(dir.join(format!("{name}.log")));
                panic!("agent {name}: no ready line ({line:?}); log: {log:?}")
            })
    };
    let gossip = field("gossip=");
    let admin = field("admin=");
    Agent {
        name: name.to_string(),
        child,
        gossip,
        admin,
    }
}

/// Sends SIGTERM to a child process.
fn sigterm(child: &Child) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn http() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into()
}

/// A request to an agent's admin API: (status, JSON body or Null).
fn call(agent: &Agent, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let url = format!("http://{}{path}", agent.admin);
    let http = http();
    let result = match (method, body) {
        ("GET", _) => http.get(&url).call(),
        ("DELETE", _) => http.delete(&url).call(),
        ("POST", Some(b)) => http.post(&url).send_json(b),
        ("PUT", Some(b)) => http.put(&url).send_json(b),
        ("PUT", None) => http.put(&url).send_empty(),
        other => panic!("unsupported request {other:?}"),
    };
    let mut resp = result.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap();
    let value = if text.trim().is_empty() {
        Value::Null
    } else if path == "/metrics" {
        Value::String(text)
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {text}"))
    };
    (status, value)
}

fn get(agent: &Agent, path: &str) -> Value {
    let (status, body) = call(agent, "GET", path, None);
    assert_eq!(status, 200, "GET {path}: {body}");
    body
}

/// Runs an admin command of the `tribe` binary against an agent.
fn cli(agent: &Agent, list: &[&str]) -> Output {
    Command::new(TRIBE)
        .args(list)
        .args(["--admin", &agent.admin.to_string()])
        .output()
        .expect("run tribe")
}

fn cli_ok(agent: &Agent, list: &[&str]) -> String {
    let out = cli(agent, list);
    assert!(
        out.status.success(),
        "tribe {list:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn cli_json(agent: &Agent, list: &[&str]) -> Value {
    let mut with_json = list.to_vec();
    with_json.push("--json");
    serde_json::from_str(&cli_ok(agent, &with_json)).unwrap()
}

fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn tribe_members(agent: &Agent, tribe: &str) -> Option<Vec<String>> {
    let (status, body) = call(agent, "GET", &format!("/v1/tribes/{tribe}"), None);
    (status == 200).then(|| {
        body["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m.as_str().unwrap().to_string())
            .collect()
    })
}

/// One text field of the member `name` as `agent` sees it.
fn member_field(agent: &Agent, name: &str, field: &str) -> Option<String> {
    get(agent, "/v1/members")
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == name)
        .map(|m| m[field].as_str().unwrap().to_string())
}

fn member_state(agent: &Agent, name: &str) -> Option<String> {
    member_field(agent, name, "state")
}

fn alive(agent: &Agent) -> u64 {
    get(agent, "/v1/status")["members_alive"].as_u64().unwrap()
}

/// Four agents: a1 (ubuntu, storage), a2 (centos), a3 (ubuntu), a4 (centos, storage).
fn four_agents(dir: &Path) -> Vec<Agent> {
    let specs = [
        ("a1", "ubuntu", "true"),
        ("a2", "centos", "false"),
        ("a3", "ubuntu", "false"),
        ("a4", "centos", "true"),
    ];
    let mut agents: Vec<Agent> = Vec::new();
    for (name, os, storage) in specs {
        let mut extra = args(&[
            "--fact",
            &format!("os_dist={os}"),
            "--fact",
            &format!("storage_tier={storage}"),
            "--data-dir",
            dir.join(name).to_str().unwrap(),
        ]);
        if let Some(first) = agents.first() {
            extra.extend(args(&["--seed", &first.gossip.to_string()]));
        }
        agents.push(start_agent(dir, name, &extra));
    }
    wait_for(
        "4 agents to see each other",
        Duration::from_secs(30),
        || agents.iter().all(|a| alive(a) == 4),
    );
    agents
}

#[test]
fn policies_place_agents_catalogs_reach_every_member_and_late_joiners_inherit() {
    let dir = scratch_dir("placement");
    let agents = four_agents(&dir);
    let a1 = &agents[0];

    // Policies through the CLI; the storage tribe does not exist beforehand.
    cli_ok(
        a1,
        &[
            "policy",
            "add",
            "core",
            "core",
            r#"facts.os_dist == "ubuntu""#,
        ],
    );
    cli_ok(
        &agents[1],
        &[
            "policy",
            "add",
            "storage",
            "storage",
            r#"facts.storage_tier == "true""#,
        ],
    );
    wait_for(
        "policy placement on every agent",
        Duration::from_secs(20),
        || {
            agents.iter().all(|a| {
                tribe_members(a, "core") == Some(args(&["a1", "a3"]))
                    && tribe_members(a, "storage") == Some(args(&["a1", "a4"]))
            })
        },
    );
    // `tribe members` shows the facts that placed them, also a collected
    // one (os_dist) that a policy names; not the other collected ones.
    let table = cli_ok(a1, &["members"]);
    let row = table.lines().find(|l| l.starts_with("a1*")).unwrap();
    assert!(
        row.contains("os_dist=ubuntu") && row.contains("storage_tier=true"),
        "{table}"
    );
    assert!(!row.contains("processor_count="), "{table}");

    // A bad expression: 400 quoting the error, and a one-line CLI error.
    let (status, body) = call(
        a1,
        "POST",
        "/v1/policies",
        Some(json!({"name": "bad", "tribe": "core", "when": "facts.os_dist == "})),
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "invalid_policy");
    assert!(
        body["message"].as_str().unwrap().contains("line 1"),
        "{body}"
    );
    let out = cli(a1, &["policy", "add", "bad", "core", "facts.os_dist =="]);
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("tribe: ") && err.contains("invalid_policy"),
        "{err}"
    );
    let policies = cli_json(a1, &["policy", "ls"]);
    assert_eq!(policies.as_array().unwrap().len(), 2, "{policies}");
    // `remove` and `list` are the other verbs' names for `rm` and `ls`.
    cli_ok(a1, &["policy", "add", "spare", "core", "true"]);
    cli_ok(a1, &["policy", "remove", "spare"]);
    cli_ok(a1, &["tribe", "create", "scratch"]);
    cli_ok(a1, &["tribe", "rm", "scratch"]);
    let policies = cli_json(a1, &["policy", "list"]);
    assert_eq!(policies.as_array().unwrap().len(), 2, "{policies}");

    // Plugins and a task through the CLI on one agent, seen by every agent.
    cli_ok(
        &agents[2],
        &["plugin", "load", "core", "cpu", "1", "collector"],
    );
    cli_ok(
        &agents[3],
        &["plugin", "load", "storage", "file", "2", "publisher"],
    );
    cli_ok(
        a1,
        &[
            "task",
            "add",
            "core",
            "cpu-5s",
            r#"{"schedule":{"interval":"5s"},"collect":{"plugin":"cpu"}}"#,
        ],
    );
    wait_for(
        "the catalog on every agent",
        Duration::from_secs(20),
        || {
            agents.iter().all(|a| {
                let core = get(a, "/v1/tribes/core");
                let storage = get(a, "/v1/tribes/storage");
                core["plugins"] == json!([{"name": "cpu", "version": "1", "kind": "collector"}])
                    && core["tasks"][0]["id"] == "cpu-5s"
                    && core["tasks"][0]["state"] == "running"
                    && storage["plugins"][0]["name"] == "file"
            })
        },
    );
    let table = cli_ok(&agents[1], &["tribes"]);
    let header = table.lines().next().unwrap();
    assert!(
        header.starts_with("TRIBE") && header.contains("PLUGINS"),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("core") && l.contains("a1,a3") && l.contains("cpu:1")),
        "{table}"
    );

    // A late joiner inherits both catalogs.
    let late = start_agent(
        &dir,
        "late",
        &args(&[
            "--fact",
            "os_dist=ubuntu",
            "--fact",
            "storage_tier=true",
            "--seed",
            &agents[3].gossip.to_string(),
        ]),
    );
    wait_for(
        "the late joiner to inherit",
        Duration::from_secs(20),
        || {
            let Some(core) = tribe_members(&late, "core") else {
                return false;
            };
            let tribe = get(&late, "/v1/tribes/core");
            core.contains(&"late".to_string())
                && tribe["plugins"][0]["name"] == "cpu"
                && tribe["tasks"][0]["id"] == "cpu-5s"
                && get(&late, "/v1/tribes/storage")["plugins"][0]["name"] == "file"
        },
    );
    let me = cli_json(&late, &["members"]);
    let me = me
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["local"] == true)
        .unwrap()
        .clone();
    assert_eq!(me["tribes"], json!(["core", "storage"]), "{me}");
    assert_eq!(me["facts"]["os_dist"], "ubuntu");

    // Unknown things are JSON 404s; unknown routes too.
    let (status, body) = call(a1, "GET", "/v1/tribes/nope", None);
    assert_eq!(
        (status, body["error"].as_str()),
        (404, Some("unknown_tribe"))
    );
    let (status, body) = call(a1, "GET", "/v1/nothing", None);
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")));
    // An empty name is one, also where it leaves a segment of the path empty.
    for (method, path) in [
        ("DELETE", "/v1/tribes/"),
        ("PUT", "/v1/tribes/core/tasks//start"),
        ("DELETE", "/v1/tribes/core/plugins//1"),
    ] {
        let (status, body) = call(a1, method, path, None);
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_name")),
            "{method} {path}"
        );
    }
    let out = cli(a1, &["fact", "set", "", "v"]);
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    // Told by the CLI in a fact's terms, before any request.
    assert!(said.contains("fact key is empty"), "{said}");
    let (status, body) = call(a1, "POST", "/v1/tribes", Some(json!({"nom": "x"})));
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_json"))
    );
    let (status, body) = call(a1, "POST", "/v1/tribes", Some(json!({"name": "core"})));
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("tribe_exists"))
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn kill_9_is_detected_and_a_restart_with_its_data_dir_rejoins_its_tribes() {
    let dir = scratch_dir("restart");
    let mut agents = four_agents(&dir);

    // a2 joins "ops" by hand through the CLI (its own name by default).
    cli_ok(&agents[0], &["tribe", "create", "ops"]);
    wait_for("ops to reach a2", Duration::from_secs(20), || {
        tribe_members(&agents[1], "ops").is_some()
    });
    cli_ok(&agents[1], &["tribe", "join", "ops"]);
    wait_for("a2 in ops everywhere", Duration::from_secs(20), || {
        agents
            .iter()
            .all(|a| tribe_members(a, "ops") == Some(args(&["a2"])))
    });

    // kill -9 a4: every other agent marks it failed, and /metrics counts it.
    let victim = agents.remove(3);
    drop(victim);
    wait_for("a4 failed everywhere", Duration::from_secs(30), || {
        agents
            .iter()
            .all(|a| member_state(a, "a4").as_deref() == Some("failed"))
    });
    let metrics = get(&agents[0], "/metrics");
    let metrics = metrics.as_str().unwrap();
    assert!(
        metrics.contains("tribe_members{state=\"failed\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tribe_members{state=\"alive\"} 3"),
        "{metrics}"
    );
    assert!(metrics.contains("tribe_tribes 1"), "{metrics}");
    // Without asking for OpenMetrics: the classic text format.
    assert!(
        metrics.contains("# TYPE tribe_admin_refused_total counter\n"),
        "{metrics}"
    );
    assert!(!metrics.contains("# EOF"), "{metrics}");
    // Prometheus asks for OpenMetrics, and gets it.
    let mut open = http()
        .get(format!("http://{}/metrics", agents[0].admin))
        .header(
            "Accept",
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
        )
        .call()
        .unwrap();
    let kind = open.headers()["content-type"].to_str().unwrap().to_string();
    assert!(kind.starts_with("application/openmetrics-text"), "{kind}");
    let text = open.body_mut().read_to_string().unwrap();
    assert!(
        text.contains("# TYPE tribe_admin_refused counter\n"),
        "{text}"
    );
    assert!(text.ends_with("# EOF\n"), "{text}");
    let members_table = cli_ok(&agents[0], &["members"]);
    // The admin address may be given as a URL too.
    let as_url = Command::new(TRIBE)
        .args([
            "members",
            "--admin",
            &format!("http://{}/", agents[0].admin),
        ])
        .output()
        .unwrap();
    assert!(
        as_url.status.success(),
        "{}",
        String::from_utf8_lossy(&as_url.stderr)
    );
    assert!(String::from_utf8_lossy(&as_url.stdout)
        .lines()
        .any(|l| l.starts_with("a4 ")));
    assert!(
        members_table
            .lines()
            .any(|l| l.starts_with("a4 ") && l.contains("failed")),
        "{members_table}"
    );
    // A reader that went away (`tribe members | head`) is no error.
    let mut piped = Command::new(TRIBE)
        .args(["members", "--admin", &agents[0].admin.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(piped.stdout.take());
    let out = piped.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // A log that is not a terminal gets no colour codes.
    let log = std::fs::read_to_string(dir.join("a1.log")).unwrap();
    assert!(!log.is_empty() && !log.contains('\x1b'), "{log}");

    // a2 stops gracefully (SIGTERM), then restarts with its data dir and no seed.
    let a2 = agents.remove(1);
    sigterm(&a2.child);
    let mut a2 = a2;
    let status = a2.child.wait().unwrap();
    assert!(status.success(), "a graceful leave exits 0: {status}");
    wait_for("a2 left everywhere", Duration::from_secs(20), || {
        agents
            .iter()
            .all(|a| member_state(a, "a2").as_deref() == Some("left"))
    });
    let saved = std::fs::read_to_string(dir.join("a2").join(tribe::datadir::STATE_FILE)).unwrap();
    assert!(saved.contains("ops"), "{saved}");

    let back = start_agent(
        &dir,
        "a2",
        &args(&[
            "--fact",
            "os_dist=centos",
            "--data-dir",
            dir.join("a2").to_str().unwrap(),
        ]),
    );
    wait_for(
        "a2 to rejoin and be back in ops",
        Duration::from_secs(30),
        || {
            alive(&back) == 3
                && agents
                    .iter()
                    .chain(std::iter::once(&back))
                    .all(|a| tribe_members(a, "ops") == Some(args(&["a2"])))
        },
    );
    assert!(agents
        .iter()
        .all(|a| member_state(a, "a2").as_deref() == Some("alive")));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn agent_options_come_from_flags_environment_and_a_toml_file() {
    let dir = scratch_dir("config");
    let file = dir.join("agent.toml");
    std::fs::write(
        &file,
        "name = \"from-file\"\nfact = [\"rack=r9\", \"os_dist=ubuntu\"]\nprofile = \"local\"\n\
         insecure-plaintext = true\n[limits]\ntribes = 2\nmax-streams = 16\n",
    )
    .unwrap();
    // The file names the node; TRIBE_FACT (environment) adds facts and beats the
    // file's fact of the same key.
    let mut cmd = Command::new(TRIBE);
    cmd.args(["agent", "--config", file.to_str().unwrap()])
        .args(["--bind", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .env("TRIBE_FACT", "rack=r1, zone=z2")
        // A trailing comma adds no empty seed (it refused the start).
        .env("TRIBE_SEED", "127.0.0.1:1,")
        .env_remove("TRIBE_ADMIN")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let admin: SocketAddr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("admin="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("ready line {line:?}"));
    let agent = Agent {
        name: "from-file".into(),
        child,
        gossip: "127.0.0.1:1".parse().unwrap(),
        admin,
    };
    assert!(agent.admin.ip().is_loopback());
    let status = get(&agent, "/v1/status");
    assert_eq!(status["name"], agent.name);
    let facts = cli_json(&agent, &["fact", "ls"]);
    assert_eq!(facts["rack"], "r1");
    assert_eq!(facts["zone"], "z2");
    assert_eq!(facts["os_dist"], "ubuntu", "{facts}");
    // The file's [limits] hold: the third tribe is refused, not created.
    cli_ok(&agent, &["tribe", "create", "t1"]);
    cli_ok(&agent, &["tribe", "create", "t2"]);
    let out = cli(&agent, &["tribe", "create", "t3"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("limit"), "{err}");
    let (status, body) = call(&agent, "POST", "/v1/tribes", Some(json!({"name": "t4"})));
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("limit_reached"))
    );
    assert_eq!(get(&agent, "/v1/tribes").as_array().map(Vec::len), Some(2));

    // Bad values are clear errors with a non-zero exit, not panics.
    for bad in [
        vec!["agent", "--name", "x", "--bind", "nowhere"],
        vec!["agent", "--name", "x", "--profile", "fast"],
        vec!["agent", "--name", "x", "--fact", "novalue"],
        vec!["agent", "--name", "bad name"],
        vec!["agent", "--config", "/nonexistent/agent.toml"],
    ] {
        let out = Command::new(TRIBE).args(&bad).output().unwrap();
        assert!(!out.status.success(), "{bad:?} should fail");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.starts_with("tribe: "), "{bad:?}: {err}");
    }
    // A key file given by a flag beats TRIBE_KEY (the later bad mode is what
    // fails); a key file of two lines is named as such.
    let key_file = dir.join("agent.key");
    std::fs::write(&key_file, tribe::SecretKey::generate().to_base64()).unwrap();
    let agent_with_key_file = |file: &std::path::Path, more: &[&str]| {
        let out = Command::new(TRIBE)
            .args(["agent", "--name", "x", "--key-file", file.to_str().unwrap()])
            .args(more)
            .env("TRIBE_KEY", "not a key")
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = agent_with_key_file(&key_file, &["--encryption", "loud"]);
    assert!(err.contains("tribe: --encryption"), "{err}");
    let two_lines = dir.join("two.key");
    std::fs::write(
        &two_lines,
        format!("{0}\n{0}\n", tribe::SecretKey::generate().to_base64()),
    )
    .unwrap();
    let err = agent_with_key_file(&two_lines, &[]);
    assert!(err.contains("more than one line"), "{err}");
    // An endless file is refused after a few KiB, not read into memory.
    let err = agent_with_key_file(std::path::Path::new("/dev/zero"), &[]);
    assert!(err.contains("over 4096 bytes"), "{err}");
    // An empty token flag (a variable left unset in a unit file) would
    // open the admin API without a word.
    let err = agent_with_key_file(&key_file, &["--admin-token", ""]);
    assert!(
        err.contains("--admin-token (or admin-token in the config file) is empty"),
        "{err}"
    );
    // Environment variables that are not UTF-8 are refused, not ignored.
    let out = Command::new(TRIBE)
        .args(["agent", "--name", "x"])
        .env(
            "TRIBE_FACT",
            <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(b"rack=\xff"),
        )
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("TRIBE_FACT is not valid UTF-8"), "{err}");
    // A flag's fact keeps its commas (the later bad profile is what fails);
    // a misspelt log level is refused rather than silencing every log.
    for (args, blamed) in [
        (
            vec![
                "agent",
                "--name",
                "x",
                "--fact",
                "ports=80,443",
                "--profile",
                "fast",
            ],
            "--profile",
        ),
        (
            vec![
                "agent",
                "--name",
                "x",
                "--insecure-plaintext",
                "--log-level",
                "warnn",
            ],
            "--log-level",
        ),
    ] {
        let out = Command::new(TRIBE).args(&args).output().unwrap();
        assert!(!out.status.success(), "{args:?} should fail");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.starts_with(&format!("tribe: {blamed}")),
            "{args:?}: {err}"
        );
    }
    let unknown_key = dir.join("bad.toml");
    std::fs::write(&unknown_key, "nmae = \"typo\"\n").unwrap();
    let out = Command::new(TRIBE)
        .args(["agent", "--config", unknown_key.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nmae"));
    let bad_limit = dir.join("bad-limit.toml");
    std::fs::write(
        &bad_limit,
        "name = \"x\"\ninsecure-plaintext = true\n[limits]\nmoons = 3\n",
    )
    .unwrap();
    let out = Command::new(TRIBE)
        .args(["agent", "--config", bad_limit.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("moons"));

    // The CLI against no agent: one line, non-zero.
    let out = Command::new(TRIBE)
        .args(["status", "--admin", "127.0.0.1:1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stderr).lines().count(), 1);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn keygen_keyed_agents_and_key_rotation_through_the_cli_never_show_a_key() {
    let dir = scratch_dir("keys");
    let keygen = |_: ()| -> String {
        let out = Command::new(TRIBE).arg("keygen").output().unwrap();
        assert!(out.status.success());
        let key = String::from_utf8(out.stdout).unwrap().trim().to_string();
        assert_eq!(key.len(), 44, "32 bytes in base64: {key}");
        key
    };
    let k1 = keygen(());
    let k2 = keygen(());
    assert_ne!(k1, k2);
    let key_file = dir.join("k1.key");
    std::fs::write(&key_file, format!("{k1}\n")).unwrap();

    // One agent takes the key from a file, the others from TRIBE_KEY.
    let mut agents = vec![start_agent(
        &dir,
        "e1",
        &args(&[
            "--key-file",
            key_file.to_str().unwrap(),
            "--data-dir",
            dir.join("e1").to_str().unwrap(),
        ]),
    )];
    for name in ["e2", "e3"] {
        let a = start_agent_env(
            &dir,
            name,
            &args(&["--seed", &agents[0].gossip.to_string()]),
            &[("TRIBE_KEY", &k1)],
        );
        agents.push(a);
    }
    wait_for("3 keyed agents", Duration::from_secs(30), || {
        agents.iter().all(|a| alive(a) == 3)
    });
    let status = get(&agents[0], "/v1/status");
    assert_eq!(status["encryption"], "require");

    // A plaintext agent cannot join them.
    let plain = start_agent(
        &dir,
        "plain",
        &args(&["--seed", &agents[0].gossip.to_string()]),
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(alive(&plain), 1);
    drop(plain);
    // One that sends plaintext (mode accept, left over from turning
    // encryption on) hears why no seed answers.
    let accept = start_agent_env(
        &dir,
        "accept",
        &args(&[
            "--seed",
            &agents[0].gossip.to_string(),
            "--encryption",
            "accept",
        ]),
        &[("TRIBE_KEY", &k1)],
    );
    wait_for("the plaintext hint logged", Duration::from_secs(15), || {
        std::fs::read_to_string(dir.join("accept.log"))
            .unwrap()
            .contains("encryption mode accept")
    });
    drop(accept);
    // Refusals name the sender, so that an operator can find it.
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let sender = udp.local_addr().unwrap();
    udp.send_to(&tribe::wire::plain_datagram("", b"hello"), agents[0].gossip)
        .unwrap();
    let log = || std::fs::read_to_string(dir.join("e1.log")).unwrap();
    let datagram = format!("plaintext datagram from {sender} refused");
    wait_for(
        "the datagram's refusal logged",
        Duration::from_secs(5),
        || log().contains(&datagram),
    );
    // Under the target of the module that refused it, so that a log filter
    // on the keyring's module does not take datagram refusals with it.
    let line = log()
        .lines()
        .find(|l| l.contains(&datagram))
        .unwrap()
        .to_string();
    assert!(
        line.contains(" tribe::engine:") && !line.contains("engine::keys"),
        "{line}"
    );
    udp.send_to(
        &tribe::wire::plain_datagram("other", b"hello"),
        agents[0].gossip,
    )
    .unwrap();
    let labelled = format!("datagram from {sender} refused: it carries another cluster label");
    wait_for("the other label logged", Duration::from_secs(5), || {
        log().contains(&labelled)
    });
    let stream = "plaintext stream refused: encryption is required (peer 127.0.0.1:";
    assert!(log().contains(stream), "no {stream:?} in: {}", log());
    // Refused streams are logged under their own module, not the keyring's.
    let line = log()
        .lines()
        .find(|l| l.contains(stream))
        .unwrap()
        .to_string();
    assert!(line.contains("tribe::engine::refusals"), "{line}");

    // Rotate with the CLI: install, use, remove; each waits for every node.
    // The key from standard input: a command line is seen by every user.
    let install_from_stdin = |input: &[u8]| {
        let admin = agents[1].admin.to_string();
        let mut install = Command::new(TRIBE)
            .args(["keys", "install", "-", "--admin", &admin])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        install.stdin.take().unwrap().write_all(input).unwrap();
        install.wait_with_output().unwrap()
    };
    let done = install_from_stdin(format!("{k2}\n").as_bytes());
    let out = String::from_utf8_lossy(&done.stdout);
    assert!(
        done.status.success() && out.contains("installed on 3/3"),
        "{out}"
    );
    // Standard input that is no key: over 4 KiB (a character cut at the
    // limit says so too), or not text.
    let mut over = "a".repeat(4095).into_bytes();
    over.extend("é".as_bytes());
    for (input, why) in [(over, "more than 4 KiB"), (vec![0xff, b'\n'], "not UTF-8")] {
        let done = install_from_stdin(&input);
        let err = String::from_utf8_lossy(&done.stderr);
        assert!(!done.status.success() && err.contains(why), "{why}: {err}");
    }
    let out = cli_ok(&agents[2], &["keys", "use", &k2]);
    assert!(out.contains("primary on 3/3"), "{out}");
    let out = cli(&agents[0], &["keys", "remove", &k2]);
    assert!(!out.status.success(), "removing the primary is refused");
    assert!(String::from_utf8_lossy(&out.stderr).contains("primary_key"));
    let out = cli_ok(&agents[0], &["keys", "remove", &k1]);
    assert!(out.contains("removed on 3/3"), "{out}");
    let keys = cli_json(&agents[0], &["keys", "list"]);
    assert_eq!(keys["keys"].as_array().unwrap().len(), 1, "{keys}");
    assert_eq!(keys["keys"][0]["installed_on"].as_array().unwrap().len(), 3);
    // Every agent gives the same answer: the lists are sorted by name.
    let names: Vec<&str> = agents.iter().map(|a| a.name.as_str()).collect();
    let mut sorted = names.clone();
    sorted.sort_unstable();
    for agent in &agents {
        let keys = cli_json(agent, &["keys", "list"]);
        let key = &keys["keys"][0];
        for list in ["installed_on", "primary_on"] {
            assert_eq!(key[list], json!(sorted), "{} {list}: {keys}", agent.name);
        }
    }
    let table = cli_ok(&agents[0], &["keys", "list"]);
    assert!(table.contains("KEY ID") && table.contains("3/3"), "{table}");

    // The keyring file is private and the keys appear nowhere else.
    let ring_file = dir.join("e1").join(tribe::datadir::KEYRING_FILE);
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&ring_file).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    wait_for("the rotated ring on disk", Duration::from_secs(5), || {
        let text = std::fs::read_to_string(&ring_file).unwrap();
        text.contains(&k2) && !text.contains(&k1)
    });
    let metrics = get(&agents[0], "/metrics");
    let mut seen = vec![metrics.as_str().unwrap().to_string()];
    for path in ["/v1/status", "/v1/members", "/v1/keys", "/v1/tribes"] {
        seen.push(get(&agents[0], path).to_string());
    }
    // A key where its id belongs (the CLI takes either; a path does not):
    // refused without repeating it.
    let in_path = |k: &str| {
        k.replace('/', "%2F")
            .replace('+', "%2B")
            .replace('=', "%3D")
    };
    for (method, path) in [
        ("PUT", format!("/v1/keys/{}/primary", in_path(&k2))),
        ("DELETE", format!("/v1/keys/{}", in_path(&k1))),
    ] {
        let (status, body) = call(&agents[0], method, &path, None);
        assert_eq!(status, 400, "{body}");
        seen.push(body.to_string());
    }
    // A member down (kill -9: failed, not left) is not counted by a keyring
    // step, and the step says so.
    let k3 = keygen(());
    agents[2].child.kill().unwrap();
    wait_for("e3 failed at e1", Duration::from_secs(30), || {
        get(&agents[0], "/v1/members")
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["name"] == "e3" && m["state"] == "failed")
    });
    let out = cli_ok(&agents[0], &["keys", "install", &k3]);
    assert!(
        out.contains("installed on 2/2 live nodes (1 failed member(s) not counted: e3;"),
        "{out}"
    );
    seen.push(out);
    drop(agents);
    for name in ["e1", "e2", "e3"] {
        seen.push(std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap());
    }
    for text in &seen {
        for key in [&k1, &k2, &k3] {
            assert!(
                !text.contains(key.as_str()),
                "a key leaked into: {}",
                &text[..text.len().min(300)]
            );
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn agents_run_their_tribes_tasks_and_publish_through_a_remote_member() {
    let dir = scratch_dir("tasks");
    let out = dir.join("store-published.jsonl");
    let store = start_agent(
        &dir,
        "store",
        &args(&["--publish-file", out.to_str().unwrap()]),
    );
    let worker = start_agent(
        &dir,
        "worker",
        &args(&["--seed", &store.gossip.to_string()]),
    );
    wait_for("two agents", Duration::from_secs(30), || {
        alive(&worker) == 2
    });
    cli_ok(&store, &["tribe", "create", "storage"]);
    cli_ok(&store, &["tribe", "create", "work"]);
    wait_for("tribes everywhere", Duration::from_secs(20), || {
        tribe_members(&worker, "storage").is_some() && tribe_members(&worker, "work").is_some()
    });
    cli_ok(&store, &["tribe", "join", "storage"]);
    cli_ok(&worker, &["tribe", "join", "work"]);
    // A manifest no agent could run is refused, naming the field.
    let (status, body) = call(
        &worker,
        "POST",
        "/v1/tribes/work/tasks",
        Some(
            json!({"id": "bad", "manifest": {"schedule": {"interval": "5 parsecs"}, "collect": {"plugin": "proc"}}}),
        ),
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "invalid_manifest", "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("schedule.interval"),
        "{body}"
    );
    // A bad id and an unknown tribe keep their own codes.
    let bad = json!({"schedule": {"interval": "5 parsecs"}});
    let (status, body) = call(
        &worker,
        "POST",
        "/v1/tribes/work/tasks",
        Some(json!({"id": "-x", "manifest": bad})),
    );
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_name")),
        "{body}"
    );
    let (status, body) = call(
        &worker,
        "POST",
        "/v1/tribes/nope/tasks",
        Some(json!({"id": "x", "manifest": bad})),
    );
    assert_eq!(
        (status, body["error"].as_str()),
        (404, Some("unknown_tribe")),
        "{body}"
    );
    cli_ok(
        &worker,
        &[
            "task",
            "add",
            "work",
            "load",
            r#"{"schedule":{"interval":"200ms"},"collect":{"plugin":"proc","metrics":["load/*"]},
               "process":[{"plugin":"tag","config":{"team":"ops"}}],
               "publish":[{"plugin":"file","tribe":"storage"}]}"#,
        ],
    );
    wait_for(
        "worker metrics in the store's file",
        Duration::from_secs(20),
        || {
            std::fs::read_to_string(&out).is_ok_and(|t| {
                t.lines()
                    .any(|l| l.contains("\"source\":\"worker\"") && l.contains("\"team\":\"ops\""))
            })
        },
    );
    // The store is not in `work`, so it runs no task of its own.
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(!text.contains("\"source\":\"store\""), "{text}");
    // A task whose publisher nobody serves fails each run: /metrics counts
    // its runs by outcome next to the working task's.
    cli_ok(
        &worker,
        &[
            "task",
            "add",
            "work",
            "orphan",
            r#"{"schedule":{"interval":"200ms"},"collect":{"plugin":"proc","metrics":["load/*"]},
               "publish":[{"plugin":"nobody-serves-this","tribe":"work"}]}"#,
        ],
    );
    let runs = |task: &str, outcome: &str| -> u64 {
        let metrics = get(&worker, "/metrics");
        let prefix = format!(
            "tribe_task_runs_total{{tribe=\"work\",task=\"{task}\",outcome=\"{outcome}\"}} "
        );
        metrics
            .as_str()
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .map_or(0, |n| n.trim().parse().unwrap())
    };
    wait_for(
        "task runs counted by outcome",
        Duration::from_secs(20),
        || runs("load", "ok") > 0 && runs("orphan", "step_failed") > 0,
    );
    assert_eq!(runs("orphan", "ok"), 0);
    assert!(get(&worker, "/metrics")
        .as_str()
        .unwrap()
        .contains("tribe_tasks_running 2\n"));
    // A pattern with a typo matches nothing: every run succeeds, and the
    // log says why no metric flows.
    cli_ok(
        &worker,
        &[
            "task",
            "add",
            "work",
            "typo",
            r#"{"schedule":{"interval":"200ms"},"collect":{"plugin":"proc","metrics":["laod/*"]}}"#,
        ],
    );
    wait_for(
        "a pattern matching nothing told",
        Duration::from_secs(20),
        || {
            std::fs::read_to_string(dir.join("worker.log")).is_ok_and(|log| {
                log.lines().any(|l| {
                    l.contains("task=typo")
                        && l.contains("metric patterns match nothing")
                        && l.contains("laod/*")
                })
            })
        },
    );
    cli_ok(&worker, &["task", "remove", "work", "typo"]);
    cli_ok(&worker, &["task", "remove", "work", "orphan"]);
    wait_for(
        "a removed task's runs dropped",
        Duration::from_secs(20),
        || {
            !get(&worker, "/metrics")
                .as_str()
                .unwrap()
                .contains("task=\"orphan\"")
        },
    );
    // Stopping the task stops the flow.
    cli_ok(&worker, &["task", "stop", "work", "load"]);
    // A run under way at the stop (two calls across three processes) may
    // still land: wait until the file stops growing, then it must stay so.
    let lines = || std::fs::read_to_string(&out).unwrap().lines().count();
    let settle_until = Instant::now() + Duration::from_secs(15);
    let mut before = lines();
    loop {
        std::thread::sleep(Duration::from_millis(1_000));
        let now = lines();
        if now == before {
            break;
        }
        assert!(
            Instant::now() < settle_until,
            "metrics still flow after the stop"
        );
        before = now;
    }
    std::thread::sleep(Duration::from_millis(1_500));
    assert_eq!(before, lines(), "no metrics once the task is stopped");
    let metrics = get(&worker, "/metrics");
    assert!(
        metrics
            .as_str()
            .unwrap()
            .contains("tribe_rpc_calls_total{outcome=\"ok\"}"),
        "call outcomes in /metrics"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn the_admin_api_wants_its_token_an_address_as_host_and_json_bodies() {
    let dir = scratch_dir("guard");
    let agent = start_agent_env(&dir, "guarded", &[], &[("TRIBE_ADMIN_TOKEN", "s3cret")]);
    // No token: 401, and the CLI says so in one line.
    let (status, body) = call(&agent, "GET", "/v1/status", None);
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("unauthorized"))
    );
    let out = cli(&agent, &["status"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unauthorized"));
    // With the token (flag or environment) it works.
    let out = Command::new(TRIBE)
        .args([
            "status",
            "--json",
            "--token",
            "s3cret",
            "--admin",
            &agent.admin.to_string(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // In the admin API's field order, name first (not sorted).
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.starts_with("{\n  \"name\": "), "{printed}");
    let http = http();
    let url = format!("http://{}/v1/tribes", agent.admin);
    // A DNS name as Host (a rebinding page) is refused, even with the token.
    let resp = http
        .get(&url)
        .header("Authorization", "Bearer s3cret")
        .header("Host", "evil.example:7947")
        .call()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 403);
    // A body that is not declared JSON (a cross-site "simple" POST) is refused.
    let resp = http
        .post(&url)
        .header("Authorization", "Bearer s3cret")
        .header("Content-Type", "text/plain")
        .send(r#"{"name": "x"}"#)
        .unwrap();
    assert_eq!(resp.status().as_u16(), 415);
    let resp = http
        .post(&url)
        .header("Authorization", "Bearer s3cret")
        .send_json(json!({"name": "x"}))
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    // A request without a Host header is refused too.
    {
        use std::io::{Read as _, Write as _};
        let mut raw = std::net::TcpStream::connect(agent.admin).unwrap();
        raw.write_all(b"GET /v1/status HTTP/1.0\r\nAuthorization: Bearer s3cret\r\n\r\n")
            .unwrap();
        let mut answer = String::new();
        let _ = raw.read_to_string(&mut answer);
        assert!(answer.starts_with("HTTP/1.0 403"), "{answer}");
    }
    // Media types are case-insensitive.
    let resp = http
        .post(&url)
        .header("Authorization", "Bearer s3cret")
        .header("Content-Type", "Application/JSON; charset=utf-8")
        .send(r#"{"name": "y"}"#)
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    // Only that media type, and for a body sent with any method.
    let resp = http
        .post(&url)
        .header("Authorization", "Bearer s3cret")
        .header("Content-Type", "application/jsonp")
        .send(r#"{"name": "z"}"#)
        .unwrap();
    assert_eq!(resp.status().as_u16(), 415);
    {
        use std::io::{Read as _, Write as _};
        let mut raw = std::net::TcpStream::connect(agent.admin).unwrap();
        raw.write_all(
            b"GET /v1/status HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer s3cret\r\n\
              Content-Type: text/plain\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
        )
        .unwrap();
        let mut answer = String::new();
        let _ = raw.read_to_string(&mut answer);
        assert!(answer.starts_with("HTTP/1.1 415"), "{answer}");
    }
    // A body declared over 2 MiB is refused at once, before any is sent
    // (it waited 30 s for the body, then answered 408).
    {
        use std::io::{Read as _, Write as _};
        let mut raw = std::net::TcpStream::connect(agent.admin).unwrap();
        raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        raw.write_all(
            b"POST /v1/tribes HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer s3cret\r\n\
              Content-Type: application/json\r\nContent-Length: 99999999999\r\n\r\n",
        )
        .unwrap();
        let mut answer = [0u8; 64];
        let n = raw.read(&mut answer).unwrap_or(0);
        let answer = String::from_utf8_lossy(&answer[..n]);
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    }
    // A body over 2 MiB: 413 in the API's JSON error shape.
    let mut resp = http
        .post(&url)
        .header("Authorization", "Bearer s3cret")
        .send_json(json!({"name": "x".repeat(3 << 20)}))
        .unwrap();
    assert_eq!(resp.status().as_u16(), 413);
    assert_eq!(
        resp.headers().get("connection").map(|v| v.as_bytes()),
        Some(&b"close"[..])
    );
    let body: Value = resp.body_mut().read_json().unwrap();
    assert_eq!(body["error"], "too_large", "{body}");
    // The API closes a connection whose body it did not read, and says so:
    // the client's next request goes out on a new one.
    // A misspelt field is refused, not ignored.
    let mut resp = http
        .post(&format!("http://{}/v1/policies", agent.admin))
        .header("Authorization", "Bearer s3cret")
        .send_json(json!({"name": "p", "tribe": "t", "when": "true", "whne": "false"}))
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let body: Value = resp.body_mut().read_json().unwrap();
    assert_eq!(body["error"], "invalid_json", "{body}");
    assert!(body["message"].as_str().unwrap().contains("whne"), "{body}");
    // A body is one object: an array is not taken field by field, and a key
    // sent in the wrong shape is not echoed back.
    let key = tribe::SecretKey::generate().to_base64();
    for (path, body) in [
        ("/v1/policies", json!(["pa", "t", "true"])),
        ("/v1/keys", json!([key.clone()])),
        ("/v1/keys", json!(key.clone())),
        ("/v1/keys", json!({"key": 5, "note": key.clone()})),
        ("/v1/keys", json!({"key": [key.clone()]})),
        (
            "/v1/keys",
            Value::Object([(key.clone(), json!(1))].into_iter().collect()),
        ),
    ] {
        let mut resp = http
            .post(&format!("http://{}{path}", agent.admin))
            .header("Authorization", "Bearer s3cret")
            .send_json(&body)
            .unwrap();
        assert_eq!(resp.status().as_u16(), 400, "{path} {body}");
        let answer: Value = resp.body_mut().read_json().unwrap();
        assert_eq!(answer["error"], "invalid_json", "{answer}");
        assert!(!answer.to_string().contains(&key), "{answer}");
    }
    // A write route that takes no body refuses one, before it acts.
    for (method, path) in [
        ("DELETE", "/v1/tribes/t"),
        ("PUT", "/v1/tribes/t/tasks/t1/start"),
        ("PUT", "/v1/keys/0badc0de/primary"),
    ] {
        let url = format!("http://{}{path}", agent.admin);
        let sent = if method == "DELETE" {
            http.delete(&url)
                .force_send_body()
                .header("Authorization", "Bearer s3cret")
                .header("Content-Type", "application/json")
                .send(r#"{"bogus": 1}"#)
        } else {
            http.put(&url)
                .header("Authorization", "Bearer s3cret")
                .header("Content-Type", "application/json")
                .send(r#"{"bogus": 1}"#)
        };
        let mut resp = sent.unwrap();
        assert_eq!(resp.status().as_u16(), 400, "{method} {path}");
        let answer: Value = resp.body_mut().read_json().unwrap();
        assert_eq!(answer["error"], "invalid_json", "{answer}");
    }
    // A field given twice is refused, not taken as its last value.
    let mut resp = http
        .post(&format!("http://{}/v1/tribes", agent.admin))
        .header("Authorization", "Bearer s3cret")
        .header("Content-Type", "application/json")
        .send(r#"{"name": "twice-a", "name": "twice-b"}"#)
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let answer: Value = resp.body_mut().read_json().unwrap();
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("duplicate field"),
        "{answer}"
    );
    // A byte-order mark before the object is ignored.
    let resp = http
        .post(&format!("http://{}/v1/tribes", agent.admin))
        .header("Authorization", "Bearer s3cret")
        .header("Content-Type", "application/json")
        .send("\u{feff}{\"name\": \"bom\"}")
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    // Bad chunked encoding and a path that is not UTF-8: 400 in the JSON
    // error shape too.
    for request in [
        &b"POST /v1/tribes HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer s3cret\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\n{}\r\n0\r\n\r\n"[..],
        &b"GET /v1/tribes/%ff%fe HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer s3cret\r\nConnection: close\r\n\r\n"[..],
    ] {
        use std::io::{Read as _, Write as _};
        let mut raw = std::net::TcpStream::connect(agent.admin).unwrap();
        raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        raw.write_all(request).unwrap();
        let mut answer = String::new();
        let _ = raw.read_to_string(&mut answer);
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
        assert!(
            answer.to_ascii_lowercase().contains("content-type: application/json")
                && answer.contains(r#""error":"bad_request""#),
            "{answer}"
        );
    }
    // A seed that never answers is said in the log, not only at debug.
    let lonely = start_agent(&dir, "lonely", &args(&["--seed", "127.0.0.1:9"]));
    wait_for(
        "the unanswered seed in the log",
        Duration::from_secs(15),
        || {
            std::fs::read_to_string(dir.join("lonely.log")).is_ok_and(|log| {
                log.contains("no seed has answered yet") && log.contains("127.0.0.1:9")
            })
        },
    );
    drop(lonely);
    // SIGHUP (a closed terminal, a reload) changes nothing.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent.child.id() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let resp = http
        .get(&url)
        .header("Authorization", "Bearer s3cret")
        .call()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200, "the agent survives SIGHUP");
    // Clients that connect and stall (one mid-headers, one silent) do not
    // hold up a SIGTERM.
    let mut stalled = std::net::TcpStream::connect(agent.admin).unwrap();
    stalled.write_all(b"GET /v1/status HTTP/1.1\r\n").unwrap();
    let _silent = std::net::TcpStream::connect(agent.admin).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let mut agent = agent;
    sigterm(&agent.child);
    let began = std::time::Instant::now();
    let status = loop {
        if let Some(status) = agent.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            began.elapsed() < Duration::from_secs(15),
            "the agent did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn agents_log_text_by_default_and_json_lines_with_a_flag() {
    let dir = scratch_dir("logs");
    let text = start_agent(&dir, "plain-logs", &[]);
    let json = start_agent(&dir, "json-logs", &args(&["--log-json"]));
    // The environment turns off what the options file turns on.
    let options = dir.join("json.toml");
    std::fs::write(&options, "log-json = true\ninsecure-plaintext = true\n").unwrap();
    let overridden = start_agent_env(
        &dir,
        "env-off",
        &args(&["--config", options.to_str().unwrap()]),
        &[("TRIBE_LOG_JSON", "false")],
    );
    let flag_off = start_agent(
        &dir,
        "flag-off",
        &args(&["--config", options.to_str().unwrap(), "--log-json=false"]),
    );
    // An empty variable (`TRIBE_LOG_JSON=`, as a unit file clears one) is
    // unset: the options file decides.
    let env_empty = start_agent_env(
        &dir,
        "env-empty",
        &args(&["--config", options.to_str().unwrap()]),
        &[("TRIBE_LOG_JSON", "")],
    );
    drop((text, json, overridden, flag_off, env_empty));
    let read = |name: &str| std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap();
    for name in ["plain-logs", "env-off", "flag-off"] {
        let text = read(name);
        assert!(
            text.contains("agent running") && !text.trim_start().starts_with('{'),
            "{name}: {text}"
        );
    }
    for name in ["json-logs", "env-empty"] {
        let json = read(name);
        let lines: Vec<&str> = json.lines().filter(|l| !l.trim().is_empty()).collect();
        assert!(!lines.is_empty(), "{name}");
        for line in lines {
            let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
            assert!(
                v.get("level").is_some() && v.get("fields").is_some(),
                "{line}"
            );
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// An agent logging JSON that stops with an error (its address taken)
/// logs that error as a JSON line too: its log's reader sees no plain line.
#[test]
fn an_agent_logging_json_stops_with_a_json_error_line() {
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let mut cmd = Command::new(TRIBE);
    cmd.args([
        "agent",
        "--name",
        "taken",
        "--profile",
        "local",
        "--bind",
        &addr,
    ])
    .args([
        "--admin",
        "127.0.0.1:0",
        "--insecure-plaintext",
        "--log-json",
    ])
    .stdin(Stdio::null());
    for (key, _) in std::env::vars() {
        if key.starts_with("TRIBE_") {
            cmd.env_remove(key);
        }
    }
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started on a taken address: {err}");
    let entries: Vec<Value> = err
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let last = entries
        .last()
        .unwrap_or_else(|| panic!("no log line: {err}"));
    assert_eq!(last["level"], "ERROR", "{err}");
    assert!(
        last["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("cannot start the node")),
        "{err}"
    );
    drop(taken);
}

/// `tribe agent` with the caller's TRIBE_* variables removed.
fn bare_agent_command(list: &[&str]) -> Command {
    let mut cmd = Command::new(TRIBE);
    cmd.arg("agent")
        .args(["--bind", "127.0.0.1:0", "--profile", "local"])
        .args(list)
        .stdin(Stdio::null());
    for (key, _) in std::env::vars() {
        if key.starts_with("TRIBE_") {
            cmd.env_remove(key);
        }
    }
    cmd
}

#[test]
fn an_agent_without_a_key_refuses_to_start_unless_told_plaintext() {
    let dir = scratch_dir("no-key");
    let out = bare_agent_command(&["--name", "nokey", "--admin", "127.0.0.1:0"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started without a key: {err}");
    assert!(out.stdout.is_empty(), "no ready line expected");
    assert!(
        err.starts_with("tribe: no encryption key") && err.contains("--insecure-plaintext"),
        "{err}"
    );
    // An empty data dir keeps no key either.
    let data = dir.join("data");
    let data_dir = data.to_str().unwrap();
    let out = bare_agent_command(&["--name", "nokey", "--data-dir", data_dir])
        .output()
        .unwrap();
    assert!(!out.status.success());
    // A key and --insecure-plaintext together are a mistake, not a choice.
    let key =
        String::from_utf8(Command::new(TRIBE).arg("keygen").output().unwrap().stdout).unwrap();
    let out = bare_agent_command(&["--name", "both", "--insecure-plaintext"])
        .env("TRIBE_KEY", key.trim())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("contradict"));
    // So are plaintext and an encryption mode, which it would ignore.
    let out = bare_agent_command(&[
        "--name",
        "mode",
        "--insecure-plaintext",
        "--encryption",
        "send",
    ])
    .output()
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("--encryption send needs a key"), "{err}");

    // A keyed run leaves its keyring in the data dir: a restart without the
    // key is encrypted and needs no flag.
    let first = start_agent(
        &dir,
        "kept",
        &args(&["--key", key.trim(), "--data-dir", data_dir]),
    );
    wait_for("the keyring file", Duration::from_secs(10), || {
        data.join("keyring.json").exists()
    });
    drop(first);
    // Put back readable by others (a backup restored with the wrong mode):
    // the start says its keys may have been read.
    {
        use std::os::unix::fs::PermissionsExt as _;
        let ring = data.join("keyring.json");
        std::fs::set_permissions(&ring, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let again = start_agent_env(
        &dir,
        "kept",
        &args(&["--data-dir", data_dir]),
        // No key and no plaintext flag: the kept keyring is enough.
        &[("TRIBE_INSECURE_PLAINTEXT", "false")],
    );
    assert_eq!(get(&again, "/v1/status")["encryption"], "require");
    let log = std::fs::read_to_string(dir.join("kept.log")).unwrap();
    assert!(
        log.contains("was readable by other users (mode 644)"),
        "{log}"
    );
    drop(again);
    // Asking for plaintext over a kept keyring is refused, naming the file.
    let out = bare_agent_command(&[
        "--name",
        "kept",
        "--data-dir",
        data_dir,
        "--insecure-plaintext",
    ])
    .output()
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("keyring.json") && err.contains("--insecure-plaintext"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn an_agent_refuses_a_publish_file_it_cannot_write() {
    let out = bare_agent_command(&[
        "--name",
        "sink",
        "--admin",
        "127.0.0.1:0",
        "--insecure-plaintext",
        "--publish-file",
        "/proc/nonexistent/out.jsonl",
    ])
    .output()
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started: {err}");
    assert!(out.stdout.is_empty(), "no ready line expected");
    assert!(
        err.contains("--publish-file") && err.contains("/proc/nonexistent"),
        "{err}"
    );
}

/// An agent whose publish file is a FIFO in `dir` that nobody reads.
fn agent_publishing_to_an_unread_fifo(dir: &Path, name: &str) -> Child {
    let fifo = dir.join("out.fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    bare_agent_command(&[
        "--name",
        name,
        "--admin",
        "127.0.0.1:0",
        "--insecure-plaintext",
        "--publish-file",
        fifo.to_str().unwrap(),
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap()
}

/// The output of `child` once it exits, which must be within `bound`
/// (else it is killed and the test fails with `why`).
fn exit_within(child: &mut Child, bound: Duration, why: &str) -> std::process::Output {
    let deadline = Instant::now() + bound;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{why}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut out = std::process::Output {
        status: child.wait().unwrap(),
        stdout: Vec::new(),
        stderr: Vec::new(),
    };
    use std::io::Read as _;
    if let Some(mut e) = child.stderr.take() {
        e.read_to_end(&mut out.stderr).unwrap();
    }
    if let Some(mut o) = child.stdout.take() {
        o.read_to_end(&mut out.stdout).unwrap();
    }
    out
}

/// A publish file whose open hangs (a FIFO nobody reads stands in for a
/// hung mount) holds the start up; SIGTERM ends it, exit 1, as for a hung
/// data dir. (The open used to ignore signals: only SIGKILL ended it.)
#[test]
fn a_start_stuck_opening_the_publish_file_ends_at_sigterm() {
    let dir = scratch_dir("fifo-publish");
    let mut child = agent_publishing_to_an_unread_fifo(&dir, "stuck");
    std::thread::sleep(Duration::from_millis(500));
    sigterm(&child);
    let out = exit_within(
        &mut child,
        Duration::from_secs(10),
        "SIGTERM did not end the start",
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("stopped by a signal while starting"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

/// A publish file that is a FIFO no one reads fails the start after 10 s,
/// saying why (it used to wait for good, silently).
#[test]
fn a_publish_file_fifo_without_a_reader_fails_the_start_in_bounded_time() {
    let dir = scratch_dir("fifo-publish-bounded");
    let mut child = agent_publishing_to_an_unread_fifo(&dir, "unread");
    let out = exit_within(
        &mut child,
        Duration::from_secs(40),
        "the start waited for a reader for good",
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("not opened within 10 s"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

/// Signals that come while the agent reads its options (a key file that
/// is a FIFO waits for its writer): SIGHUP changes nothing, SIGTERM ends
/// the start with exit 1. Both used to kill it unheard (129, 143).
#[test]
fn signals_while_the_options_are_read_are_taken() {
    let dir = scratch_dir("fifo-key-signals");
    let fifo = dir.join("key");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let child = bare_agent_command(&[
        "--name",
        "waiting",
        "--admin",
        "127.0.0.1:0",
        "--key-file",
        fifo.to_str().unwrap(),
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    std::thread::sleep(Duration::from_millis(500));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    sigterm(&child);
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("stopped by a signal while starting"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_plaintext_agent_warns_at_start_and_shows_encryption_off() {
    let dir = scratch_dir("plaintext");
    // From the environment variable (the flag is used by every other test).
    let agent = start_agent_env(&dir, "open", &[], &[("TRIBE_INSECURE_PLAINTEXT", "true")]);
    let log = std::fs::read_to_string(dir.join("open.log")).unwrap();
    let warning = log
        .lines()
        .find(|l| l.contains("encryption is OFF"))
        .unwrap_or_else(|| panic!("no warning in {log}"));
    assert!(warning.contains("WARN"), "{warning}");
    assert_eq!(get(&agent, "/v1/status")["encryption"], "off");
    let table = cli_ok(&agent, &["status"]);
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    let column = header.iter().position(|h| *h == "ENCRYPTION").unwrap();
    assert_eq!(row[column], "off", "{table}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn an_admin_api_reachable_from_other_hosts_needs_a_token() {
    for admin in ["0.0.0.0:0", "[::]:0"] {
        let out = bare_agent_command(&["--name", "exposed", "--insecure-plaintext"])
            .args(["--admin", admin])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{admin}: {err}");
        assert!(out.stdout.is_empty(), "{admin}: no ready line expected");
        assert!(err.contains("--admin-token"), "{admin}: {err}");
        // The same from the environment, with an empty token.
        let out = bare_agent_command(&["--name", "exposed", "--insecure-plaintext"])
            .env("TRIBE_ADMIN", admin)
            .env("TRIBE_ADMIN_TOKEN", "")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{admin} from the environment");
    }
    // A token no HTTP client can send is refused at start (a line end from
    // a file, surrounding spaces, non-ASCII), rather than locking them out.
    for token in ["tok\r", " tok ", "t\u{e9}k"] {
        let out = bare_agent_command(&["--name", "tokened", "--insecure-plaintext"])
            .env("TRIBE_ADMIN_TOKEN", token)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{token:?}");
        assert!(err.contains("visible ASCII"), "{token:?}: {err}");
    }
}

/// Whether `pid` still runs (a zombie no one reaped does not).
/// Reads a spawned agent's ready line; the agent (admin address only) and
/// its stdout, left open.
fn read_ready_line(name: &str, mut child: Child) -> (Agent, BufReader<std::process::ChildStdout>) {
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let admin: SocketAddr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("admin="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no ready line: {line:?}"));
    let agent = Agent {
        name: name.into(),
        child,
        gossip: admin,
        admin,
    };
    (agent, stdout)
}

/// Sends SIGTERM to `child`; whether it ended within `limit`.
fn stops_at_sigterm(child: &Child, limit: Duration) -> bool {
    let pid = child.id() as i32;
    sigterm(child);
    let sent = Instant::now();
    while running(pid) && sent.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(50));
    }
    !running(pid)
}

fn running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

/// A `tribe demo` of three agents, once two have started: the demo, their
/// pids, its directory, and the rest of its output.
fn demo_with_two_agents() -> (
    Child,
    Vec<i32>,
    Option<PathBuf>,
    std::io::Lines<BufReader<std::process::ChildStdout>>,
) {
    let mut demo = Command::new(TRIBE)
        .args(["demo", "--nodes", "3"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut pids = Vec::new();
    let mut dir = None;
    let mut lines = BufReader::new(demo.stdout.take().unwrap()).lines();
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(d) = line.strip_prefix("Agent logs: ") {
            dir = Some(PathBuf::from(d.trim()));
        }
        if let Some(rest) = line.split("(pid ").nth(1) {
            pids.push(rest.split(')').next().unwrap().parse::<i32>().unwrap());
        }
        if pids.len() == 2 {
            break;
        }
    }
    (demo, pids, dir, lines)
}

#[test]
fn a_demo_stopped_by_a_signal_stops_its_agents() {
    let bad = Command::new(TRIBE)
        .args(["demo", "--nodes", "40"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("3..=16"));

    let (mut demo, pids, _, lines) = demo_with_two_agents();
    sigterm(&demo);
    std::thread::spawn(move || lines.for_each(drop));
    let status = demo.wait().unwrap();
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), None);
    assert_eq!(status.code(), Some(143), "{status}");
    for pid in pids {
        assert!(!running(pid), "agent {pid} outlived the demo");
    }

    // Killed outright, the demo cannot stop its agents: they leave once
    // their stdin, whose other end the demo held, ends.
    let (mut demo, pids, dir, lines) = demo_with_two_agents();
    demo.kill().unwrap();
    demo.wait().unwrap();
    drop(lines);
    wait_for(
        "the agents of a killed demo to leave",
        Duration::from_secs(30),
        || pids.iter().all(|&pid| !running(pid)),
    );
    if let Some(dir) = dir {
        std::fs::remove_dir_all(dir).ok();
    }
}

/// A local client that opens more connections than the admin API has
/// places and sends none of them a whole request does not lock the
/// operator out until their header timeout (10 s): the CLI is answered
/// at once, each of its connections taking the place of a stalled one.
#[test]
fn stalled_admin_connections_do_not_lock_out_the_cli() {
    use std::io::Write;
    let dir = scratch_dir("stalled_admin");
    let agent = start_agent(&dir, "besieged", &[]);
    let stalled: Vec<std::net::TcpStream> = (0..200)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(agent.admin).unwrap();
            let _ = s.write_all(b"GET /v1/status HTTP/1.1\r\nHost: 1");
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let began = Instant::now();
    let status = cli_json(&agent, &["status"]);
    assert_eq!(status["name"], "besieged");
    // The stalled clients hold their places for the header timeout (10 s).
    assert!(
        began.elapsed() < Duration::from_secs(8),
        "the CLI waited {:?} for a place",
        began.elapsed()
    );
    drop(stalled);
}

/// Where `agent` sees the member `name`.
fn member_addr(agent: &Agent, name: &str) -> Option<String> {
    member_field(agent, name, "addr")
}

/// A second agent started under a running agent's name (a copied config):
/// the later one holds the name, steadily; the first keeps out, with at
/// most one renewal (it used to renew once a round trip until its
/// generation passed the other's, then the two displaced each other many
/// times a second) and without making the seed renew (its stale view used
/// to), and has the name back once the second is killed.
#[test]
fn a_second_agent_under_a_running_agents_name_holds_it_and_the_first_gets_it_back() {
    let dir = scratch_dir("dup");
    let seed = start_agent(&dir, "seed", &[]);
    let seed_addr = seed.gossip.to_string();
    let first = start_agent(&dir, "twin", &args(&["--seed", &seed_addr]));
    wait_for("the first twin", Duration::from_secs(30), || {
        member_addr(&seed, "twin") == Some(first.gossip.to_string())
    });
    // Generations are start times in ms: two seconds apart.
    std::thread::sleep(Duration::from_secs(2));
    let copy_dir = dir.join("copy");
    std::fs::create_dir_all(&copy_dir).unwrap();
    let second = start_agent(&copy_dir, "twin", &args(&["--seed", &seed_addr]));
    let held = second.gossip.to_string();
    wait_for(
        "the second twin holds the name",
        Duration::from_secs(30),
        || member_addr(&seed, "twin").as_deref() == Some(held.as_str()),
    );
    let log = || std::fs::read_to_string(dir.join("twin.log")).unwrap();
    wait_for("the first twin keeps out", Duration::from_secs(30), || {
        log().contains("keeps out of the cluster")
    });
    let began = Instant::now();
    while began.elapsed() < Duration::from_secs(10) {
        assert_eq!(
            member_addr(&seed, "twin").as_deref(),
            Some(held.as_str()),
            "the name went back while the second twin runs"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let renewals = log().matches("rejoining with a new generation").count();
    assert!(renewals <= 1, "the first twin renewed {renewals} times");
    // The holder's operator is told too: the first twin dials it.
    let copy_log = || std::fs::read_to_string(copy_dir.join("twin.log")).unwrap();
    wait_for("the holder told", Duration::from_secs(10), || {
        copy_log().contains(&format!(
            "a node at {} runs under this node's name with an older generation",
            first.gossip
        ))
    });
    // Its operator can tell: status, metrics and the CLI name the holder.
    assert_eq!(get(&first, "/v1/status")["name_held_by"], held.as_str());
    assert!(get(&second, "/v1/status")["name_held_by"].is_null());
    let metrics = get(&first, "/metrics");
    assert!(
        metrics
            .as_str()
            .unwrap()
            .contains("tribe_name_held_elsewhere 1"),
        "{metrics}"
    );
    let status = cli(&first, &["status"]);
    let warning = String::from_utf8_lossy(&status.stderr);
    assert!(
        status.status.success() && warning.contains(&format!("another node at {held}")),
        "{warning}"
    );
    // The twin kept out tells the others nothing that makes them renew.
    let seed_log = std::fs::read_to_string(dir.join("seed.log")).unwrap();
    let seed_renewals = seed_log.matches("rejoining with a new generation").count();
    assert_eq!(seed_renewals, 0, "the seed renewed {seed_renewals} times");
    drop(second);
    let back = first.gossip.to_string();
    wait_for("the first twin back", Duration::from_secs(60), || {
        member_addr(&seed, "twin").as_deref() == Some(back.as_str())
            && member_state(&seed, "twin").as_deref() == Some("alive")
    });
    assert!(log().contains("taking it back"), "{}", log());
    assert!(get(&first, "/v1/status")["name_held_by"].is_null());
    let metrics = get(&first, "/metrics");
    assert!(
        metrics
            .as_str()
            .unwrap()
            .contains("tribe_name_held_elsewhere 0"),
        "{metrics}"
    );
}

/// The non-empty lines of an agent's log.
fn log_lines(dir: &Path, name: &str) -> Vec<String> {
    std::fs::read_to_string(dir.join(format!("{name}.log")))
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(String::from)
        .collect()
}

#[test]
fn a_log_filter_of_targets_only_keeps_info_for_every_other_target() {
    let dir = scratch_dir("log-targets");
    // A misspelt target: without a bare level it would silence everything.
    let agent = start_agent(&dir, "targets", &args(&["--log-level", "trbie=debug"]));
    let log = log_lines(&dir, "targets").join("\n");
    assert!(log.contains("encryption is OFF"), "{log}");
    assert!(log.contains("agent running"), "{log}");
    drop(agent);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_key_file_others_may_read_is_used_with_a_warning_in_the_log_format() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = scratch_dir("shared-key");
    let key_file = dir.join("shared.key");
    std::fs::write(&key_file, tribe::SecretKey::generate().to_base64()).unwrap();
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let agent = start_agent(
        &dir,
        "shared",
        &args(&["--key-file", key_file.to_str().unwrap(), "--log-json"]),
    );
    assert_eq!(get(&agent, "/v1/status")["encryption"], "require");
    let lines = log_lines(&dir, "shared");
    let entries: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let warning = entries
        .iter()
        .find(|v| v.to_string().contains("readable by other users"))
        .unwrap_or_else(|| panic!("no warning in {lines:?}"));
    assert_eq!(warning["level"], "WARN", "{warning}");
    drop(agent);
    // So does a config file that holds the key.
    let config = dir.join("shared.toml");
    let key = tribe::SecretKey::generate().to_base64();
    std::fs::write(&config, format!("name = \"shared2\"\nkey = \"{key}\"\n")).unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let agent = start_agent(
        &dir,
        "shared2",
        &args(&["--config", config.to_str().unwrap()]),
    );
    let lines = log_lines(&dir, "shared2");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("config file") && l.contains("readable by other users")),
        "no warning in {lines:?}"
    );
    drop(agent);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_wrong_admin_token_is_rejected_as_such() {
    let dir = scratch_dir("wrong-token");
    let agent = start_agent_env(&dir, "locked", &[], &[("TRIBE_ADMIN_TOKEN", "s3cret")]);
    let url = format!("http://{}/v1/status", agent.admin);
    let mut missing = http().get(&url).call().unwrap();
    let missing: Value = missing.body_mut().read_json().unwrap();
    let mut wrong = http()
        .get(&url)
        .header("Authorization", "Bearer guess")
        .call()
        .unwrap();
    assert_eq!(wrong.status().as_u16(), 401);
    let wrong: Value = wrong.body_mut().read_json().unwrap();
    assert_eq!(missing["error"], "unauthorized", "{missing}");
    assert_eq!(wrong["error"], "unauthorized", "{wrong}");
    assert!(
        !missing["message"].as_str().unwrap().contains("rejected"),
        "{missing}"
    );
    assert!(
        wrong["message"]
            .as_str()
            .unwrap()
            .starts_with("token rejected"),
        "{wrong}"
    );
    let out = cli(&agent, &["status", "--token", "guess"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.starts_with("tribe: token rejected") && err.trim_end().ends_with("(unauthorized)"),
        "{err}"
    );
    // Each refusal counted, and logged once (at most once a minute).
    let mut metrics = http()
        .get(format!("http://{}/metrics", agent.admin))
        .header("Authorization", "Bearer s3cret")
        .call()
        .unwrap();
    let metrics = metrics.body_mut().read_to_string().unwrap();
    assert!(metrics.contains("tribe_admin_refused_total 3"), "{metrics}");
    drop(agent);
    let log = std::fs::read_to_string(dir.join("locked.log")).unwrap();
    // Once a minute, naming the client.
    assert_eq!(
        log.matches("admin request from 127.0.0.1:").count(),
        1,
        "{log}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn admin_commands_exit_1_on_failure_2_on_usage_and_name_an_unreachable_agent() {
    let run = |list: &[&str]| {
        let mut cmd = Command::new(TRIBE);
        cmd.args(list);
        for (key, _) in std::env::vars() {
            if key.starts_with("TRIBE_") {
                cmd.env_remove(key);
            }
        }
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(&["status", "--admin", "127.0.0.1:1"]);
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("tribe: cannot reach the agent at http://127.0.0.1:1")
            && err.trim_end().ends_with("(unreachable)"),
        "{err}"
    );
    // A bad fact is told in a fact's terms, before any request.
    let (code, err) = run(&["fact", "set", "", "v", "--admin", "127.0.0.1:1"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("fact key is empty"), "{err}");
    // Another server at the address: its page is told in one line, cut,
    // its control characters escaped (they must not drive the terminal),
    // also in a reply shaped as the API's errors are.
    let html = format!(
        "<!DOCTYPE HTML>\x1b[31m\x07\n<html>\n{}\n</html>\n",
        "x".repeat(5_000)
    );
    let json = "{\"error\":\"x\\u001b[2J\",\"message\":\"\\u001b]0;pwned\\u0007\"}".to_string();
    for (status, body, want) in [
        ("404 Not Found", html, r"<!DOCTYPE HTML>\u{1b}[31m\u{7} ..."),
        ("500 Oops", json, r"\u{1b}]0;pwned\u{7} (x\u{1b}[2J)"),
    ] {
        let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let at = other.local_addr().unwrap().to_string();
        let server = std::thread::spawn(move || {
            use std::io::{Read, Write};
            let (mut s, _) = other.accept().unwrap();
            let mut req = [0u8; 4096];
            let _ = s.read(&mut req);
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            s.write_all(head.as_bytes()).unwrap();
            s.write_all(body.as_bytes()).unwrap();
        });
        let (code, err) = run(&["status", "--admin", &at]);
        server.join().unwrap();
        assert_eq!(code, Some(1), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.len() < 400 && err.contains(want), "{err}");
        assert!(!err.contains('\x1b'), "{err}");
    }
    for usage in [
        &["status", "--bogus"][..],
        &["tribe"][..],
        &["policy", "add", "only-a-name"][..],
        // No address at all: a usage error, not an unreachable agent.
        &["status", "--admin", "127.0.0.1:99999"][..],
        &["status", "--admin", ""][..],
    ] {
        let (code, err) = run(usage);
        assert_eq!(code, Some(2), "{usage:?}: {err}");
    }
}

#[test]
fn the_running_agents_snippet_of_the_readme_works_as_written() {
    let dir = scratch_dir("readme");
    let agent = start_agent(&dir, "web-1", &args(&["--fact", "storage_tier=true"]));
    let members = cli_ok(&agent, &["members"]);
    assert!(members.contains("storage_tier=true"), "{members}");
    cli_ok(&agent, &["tribe", "create", "storage"]);
    cli_ok(
        &agent,
        &[
            "policy",
            "add",
            "storage",
            "storage",
            r#"has(facts.storage_tier) && facts.storage_tier == "true""#,
        ],
    );
    cli_ok(
        &agent,
        &["plugin", "load", "storage", "disk", "2", "collector"],
    );
    let tribes = cli_json(&agent, &["tribes"]);
    assert_eq!(tribes[0]["name"], "storage", "{tribes}");
    assert_eq!(tribes[0]["plugins"][0]["name"], "disk", "{tribes}");
    drop(agent);
    std::fs::remove_dir_all(&dir).ok();
}

/// A supervisor that reads the ready line and then no more leaves the
/// agent's stdout a pipe that fills: the `stdout` publisher's lines are
/// dropped, and the node, its admin API and its signal handling go on.
/// (A write to the full pipe used to block the runtime's threads: the
/// admin API stopped answering and SIGTERM was ignored.)
#[test]
fn an_agent_whose_stdout_nobody_reads_keeps_working() {
    let dir = scratch_dir("unread-stdout");
    let log = std::fs::File::create(dir.join("unread.log")).unwrap();
    let child = bare_agent_command(&[
        "--name",
        "unread",
        "--admin",
        "127.0.0.1:0",
        "--insecure-plaintext",
    ])
    .stdout(Stdio::piped())
    .stderr(log)
    .spawn()
    .unwrap();
    // Read the ready line, and keep the pipe open without reading it.
    let (agent, stdout) = read_ready_line("unread", child);
    cli_ok(&agent, &["tribe", "create", "s"]);
    cli_ok(&agent, &["tribe", "join", "s"]);
    let flood = r#"{"schedule":{"interval":"100ms"},"collect":{"plugin":"proc"},"publish":[{"plugin":"stdout"}]}"#;
    for id in ["flood-1", "flood-2", "flood-3", "flood-4"] {
        cli_ok(&agent, &["task", "add", "s", id, flood]);
    }
    // A pipe holds 64 KiB: full within a few seconds, then the admin API
    // must keep answering.
    let began = Instant::now();
    while began.elapsed() < Duration::from_secs(8) {
        let (status, body) = call(&agent, "GET", "/v1/status", None);
        assert_eq!(status, 200, "{body}");
        std::thread::sleep(Duration::from_millis(500));
    }
    let stopped = stops_at_sigterm(&agent.child, Duration::from_secs(10));
    let log = std::fs::read_to_string(dir.join("unread.log")).unwrap_or_default();
    assert!(stopped, "SIGTERM ignored; log: {log}");
    drop(stdout);
    drop(agent);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `tribe keygen` into a full device or a closed pipe says so and fails;
/// it used to panic.
#[test]
fn keygen_reports_a_stdout_it_cannot_write() {
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let out = Command::new(TRIBE)
        .arg("keygen")
        .stdout(full)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.starts_with("tribe: writing to stdout:"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// Keys installed at the same moment through two agents, each ring one key
/// from full: each agent answers 201 only for a key every live node holds,
/// else 409 `key_not_spread` naming the node without it. (Both used to
/// answer 201 while each node held only its own key.)
#[test]
fn a_key_install_answers_created_only_once_every_live_node_holds_it() {
    let dir = scratch_dir("key-race");
    let keygen = || {
        let out = Command::new(TRIBE).arg("keygen").output().unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let k1 = keygen();
    let a = start_agent_env(&dir, "race-a", &[], &[("TRIBE_KEY", &k1)]);
    let b = start_agent_env(
        &dir,
        "race-b",
        &args(&["--seed", &a.gossip.to_string()]),
        &[("TRIBE_KEY", &k1)],
    );
    wait_for("2 keyed agents", Duration::from_secs(30), || {
        alive(&a) == 2 && alive(&b) == 2
    });
    // Six more keys: seven in every ring, one place left.
    for _ in 0..6 {
        let (status, body) = call(&a, "POST", "/v1/keys", Some(json!({ "key": keygen() })));
        assert_eq!(status, 201, "{body}");
    }
    let (x, y) = (keygen(), keygen());
    // An install waits up to 10 s for the spread: more than `call` allows.
    let install = |agent: &Agent, key: &str| -> (u16, Value) {
        let http: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        let url = format!("http://{}/v1/keys", agent.admin);
        let mut resp = http.post(&url).send_json(json!({ "key": key })).unwrap();
        let text = resp.body_mut().read_to_string().unwrap();
        (resp.status().as_u16(), serde_json::from_str(&text).unwrap())
    };
    let (ax, by) = std::thread::scope(|s| {
        let ax = s.spawn(|| install(&a, &x));
        let by = s.spawn(|| install(&b, &y));
        (ax.join().unwrap(), by.join().unwrap())
    });
    for ((status, body), agent) in [(ax, &a), (by, &b)] {
        match status {
            201 => {
                let id = body["id"].as_str().unwrap().to_string();
                let keys = get(agent, "/v1/keys");
                let held = keys["keys"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|k| k["id"] == id.as_str())
                    .map(|k| k["installed_on"].as_array().unwrap().len());
                assert_eq!(held, Some(2), "201 for {id}, but: {keys}");
            }
            409 => assert!(
                ["key_not_spread", "keyring_full"].contains(&body["error"].as_str().unwrap()),
                "{body}"
            ),
            other => panic!("{other}: {body}"),
        }
    }
    drop((a, b));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Calls to an agent stopped with SIGTERM as they begin all end well: the
/// agent answers what it runs and refuses the rest unrun before it exits,
/// also on streams still being opened, so every call lands on the other
/// agent serving `tag` (none "may or may not have run").
#[test]
fn calls_to_an_agent_stopped_with_sigterm_move_to_another_agent() {
    let dir = scratch_dir("sigterm_calls");
    let a = start_agent(&dir, "st-a", &[]);
    let b = start_agent(&dir, "st-b", &args(&["--seed", &a.gossip.to_string()]));
    cli_ok(&a, &["tribe", "create", "svc"]);
    cli_ok(&a, &["tribe", "join", "svc"]);
    wait_for("st-b knows svc", Duration::from_secs(20), || {
        tribe_members(&b, "svc").is_some()
    });
    cli_ok(&b, &["tribe", "join", "svc"]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let failed = rt.block_on(async {
        let mut cfg = tribe::Config::new("st-caller");
        cfg.bind = "127.0.0.1:0".parse().unwrap();
        cfg.seeds = vec![a.gossip];
        cfg.profile = tribe::Profile::Local;
        cfg.collect_facts = false;
        let node = tribe::Node::start(cfg).await.unwrap();
        let tag = tribe::CallTarget::new("svc", "tag", tribe::PluginKind::Processor);
        let deadline = Instant::now() + Duration::from_secs(30);
        while node.tribe("svc").is_none_or(|t| {
            t.members.len() < 2
                || node
                    .members()
                    .iter()
                    .filter(|m| !m.endpoints.is_empty())
                    .count()
                    < 2
        }) {
            assert!(
                Instant::now() < deadline,
                "the caller never saw both agents serve tag"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut callers = Vec::new();
        for _ in 0..8 {
            let (node, done, tag) = (node.clone(), done.clone(), tag.clone());
            callers.push(tokio::spawn(async move {
                let mut failed = Vec::new();
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    let batch = br#"[{"name":"x","value":1.0}]"#.to_vec();
                    match node.call(&tag, batch, Duration::from_secs(5)).await {
                        // Ran (the handler's own answer, whatever it says).
                        Ok(_) | Err(tribe::Error::Remote { .. }) => {}
                        Err(e) => failed.push(e.to_string()),
                    }
                }
                failed
            }));
        }
        // While the callers open their first streams to it.
        sigterm(&a.child);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut failed = Vec::new();
        for c in callers {
            failed.extend(c.await.unwrap());
        }
        node.shutdown().await.unwrap();
        failed
    });
    assert!(
        failed.is_empty(),
        "{} calls failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
}

/// An agent whose data dir cannot be written when it stops (a full disk)
/// says so at the stop, whatever it logged a moment before, and exits
/// non-zero: the state a restart comes back with is older than the one it
/// left with.
#[test]
fn an_agent_that_cannot_save_its_last_state_says_so_at_the_stop() {
    let dir = scratch_dir("unsaved");
    let data = dir.join("data");
    let agent = start_agent(
        &dir,
        "unsaved",
        &args(&["--data-dir", data.to_str().unwrap()]),
    );
    // Every write of the state file fails from now on: its temporary file's
    // place is taken by a directory that cannot be removed as a file (tried
    // again while a write of the agent's holds that place as a file).
    wait_for(
        "the temporary file's place taken",
        Duration::from_secs(10),
        || std::fs::create_dir_all(data.join("node-state.json.tmp").join("held")).is_ok(),
    );
    cli_ok(&agent, &["tribe", "create", "lost"]);
    sigterm(&agent.child);
    let mut agent = agent;
    let status = agent.child.wait().unwrap();
    let log = std::fs::read_to_string(dir.join("unsaved.log")).unwrap();
    // It exits non-zero, so a supervisor sees the loss too.
    assert!(!status.success(), "{status}: {log}");
    assert!(
        log.contains("last state could not be written to its data dir")
            && log.contains("tribe: leaving: ")
            && log.contains("did not take its last state"),
        "{log}"
    );
}

/// An agent whose log pipe's reader went (`2>&1 | logger`, a `tee` that
/// died) keeps running and, on SIGTERM, still leaves gracefully: the first
/// log line after it panicked the agent (exit 101), and a SIGTERM then
/// killed it mid-goodbye, told failed by its peers.
#[test]
fn an_agent_whose_log_reader_went_runs_on_and_leaves_gracefully() {
    let dir = scratch_dir("epipe");
    let first = start_agent(&dir, "ep1", &[]);
    let mut child = Command::new(TRIBE)
        .args(["agent", "--bind", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .args([
            "--profile",
            "local",
            "--insecure-plaintext",
            "--log-level",
            "debug",
        ])
        .args(["--name", "ep2", "--seed", &first.gossip.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stderr.take());
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        // Read to the end: only the log's reader goes.
        let mut lines = BufReader::new(stdout).lines();
        while let Some(Ok(_)) = lines.next() {}
    });
    wait_for("ep2 alive at ep1", Duration::from_secs(30), || {
        member_state(&first, "ep2").as_deref() == Some("alive")
    });
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        child.try_wait().unwrap().is_none(),
        "ep2 exited while running"
    );
    sigterm(&child);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "ep2 did not stop");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "ep2 ended with {status:?}");
    wait_for("ep2 left at ep1", Duration::from_secs(10), || {
        member_state(&first, "ep2").as_deref() == Some("left")
    });
}

/// `tribe ARGS` under a process limit of `limit` (`prlimit --nproc`), as the
/// nobody user when the tests run as root (the limit does not bind root).
fn tribe_at_process_limit(limit: u32, list: &[&str]) -> Output {
    use std::os::unix::fs::MetadataExt as _;
    // `/proc/self` belongs to the process's effective user.
    let root = std::fs::metadata("/proc/self").unwrap().uid() == 0;
    let mut cmd = if root {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "prlimit",
        ]);
        c
    } else {
        Command::new("prlimit")
    };
    cmd.arg(format!("--nproc={limit}:{limit}"))
        .arg(TRIBE)
        .args(list)
        .stdin(Stdio::null());
    for (key, _) in std::env::vars() {
        if key.starts_with("TRIBE_") {
            cmd.env_remove(key);
        }
    }
    cmd.output().expect("run tribe under a process limit")
}

#[test]
fn at_a_thread_limit_the_agent_and_the_admin_commands_end_with_an_error_not_a_panic() {
    let dir = scratch_dir("thread-limit");
    let agent = start_agent(&dir, "tl1", &[]);
    let admin = agent.admin.to_string();
    // The admin commands need no thread of their own.
    let out = tribe_at_process_limit(1, &["status", "--admin", &admin, "--json"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "status at a limit of 1: {stderr}");
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["name"], "tl1", "{status}");
    // An agent that cannot make its threads says so and exits.
    for limit in 1..=4 {
        let out = tribe_at_process_limit(
            limit,
            &[
                "agent",
                "--bind",
                "127.0.0.1:0",
                "--admin",
                "127.0.0.1:0",
                "--insecure-plaintext",
            ],
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "limit {limit}: {stderr}");
        assert!(stderr.contains("thread"), "limit {limit}: {stderr}");
        assert!(!stderr.contains("panicked"), "limit {limit}: {stderr}");
    }
}

/// A log collector that stops reading leaves the agent's stderr a pipe that
/// fills: log lines are dropped (and counted, and told once the reader is
/// back), and the node, its admin API and its signal handling go on. (Each
/// log line used to be written at once: on the full pipe a runtime thread
/// blocked, the admin API stopped answering, peers found the node failed
/// and SIGTERM was ignored.)
#[test]
fn an_agent_whose_stderr_nobody_reads_keeps_working() {
    let mut child = bare_agent_command(&[
        "--name",
        "quiet",
        "--admin",
        "127.0.0.1:0",
        "--insecure-plaintext",
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    // The log pipe is kept open and never read.
    let stderr = child.stderr.take().unwrap();
    let (agent, _stdout) = read_ready_line("quiet", child);
    // Far more than a pipe's 64 KiB of log lines (each policy's error, a
    // fact it lacks, is logged once, some 450 bytes), while the admin API
    // keeps answering.
    let lacking = "f".repeat(200);
    for i in 0..300 {
        let when = format!("facts.{lacking}_{i} == 'x'");
        let policy = json!({"name": format!("p{i}"), "tribe": "t", "when": when});
        let (status, body) = call(&agent, "POST", "/v1/policies", Some(policy));
        assert_eq!(status, 201, "{body}");
    }
    let began = Instant::now();
    while began.elapsed() < Duration::from_secs(5) {
        let (status, body) = call(&agent, "GET", "/v1/status", None);
        assert_eq!(status, 200, "{body}");
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(
        stops_at_sigterm(&agent.child, Duration::from_secs(10)),
        "SIGTERM ignored"
    );
    drop(stderr);
    drop(agent);
}

/// A data dir made read-only after a first run (its lock file still opens)
/// is refused at start: the agent would run and save nothing. One it
/// cannot list is refused naming the dir, not a file in it. As root,
/// whom modes do not stop, the agent runs as user nobody (`setpriv`).
#[test]
fn an_agent_refuses_a_data_dir_it_cannot_write_in_or_list() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = scratch_dir("ro-data-dir");
    let data = dir.join("data");
    let root = nix::unistd::geteuid().is_root();
    // A copy nobody may run, wherever the checkout is.
    let tribe = dir.join("tribe");
    std::fs::copy(TRIBE, &tribe).unwrap();
    std::fs::set_permissions(&tribe, std::fs::Permissions::from_mode(0o755)).unwrap();
    let run = |expect_ok: bool| {
        let mut cmd = if root {
            let mut cmd = Command::new("setpriv");
            cmd.args(["--reuid", "65534", "--regid", "65534", "--clear-groups"]);
            cmd.arg(&tribe).arg("agent");
            cmd.args(["--bind", "127.0.0.1:0", "--profile", "local"])
                .stdin(Stdio::null());
            cmd
        } else {
            bare_agent_command(&[])
        };
        let child = cmd
            .args([
                "--name",
                "ro",
                "--admin",
                "127.0.0.1:0",
                "--insecure-plaintext",
            ])
            .arg("--data-dir")
            .arg(&data)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("setpriv (util-linux) and the tribe binary run");
        if expect_ok {
            let (agent, _ready) = read_ready_line("ro", child);
            sigterm(&agent.child);
            let mut agent = agent;
            assert!(agent.child.wait().unwrap().success());
            return String::new();
        }
        let mut child = child;
        let began = std::time::Instant::now();
        while child.try_wait().unwrap().is_none() {
            if began.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                panic!("started in a read-only data dir");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = child.wait_with_output().unwrap();
        assert!(!out.status.success(), "started in a read-only data dir");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    std::fs::create_dir_all(&data).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
    if root {
        let nobody = Some(nix::unistd::Uid::from_raw(65534));
        nix::unistd::chown(&data, nobody, Some(nix::unistd::Gid::from_raw(65534))).unwrap();
    }
    run(true);
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o500)).unwrap();
    let err = run(false);
    assert!(err.contains("cannot write in data dir"), "{err}");
    // One it cannot list is named, with its owner and mode (not a file in it).
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o300)).unwrap();
    let err = run(false);
    assert!(
        err.contains("cannot read data dir") && err.contains("mode 300"),
        "{err}"
    );
    let _ = std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Blocking calls that give up while their streams are still being opened
/// to a stalled host (SIGSTOP) leave at most 32 streams to it once it runs
/// again: the dials that go on after their calls keep their places. Before,
/// each round of calls opened new ones, up to the host's bound of streams,
/// and every other node's calls to it were refused for a minute.
#[test]
fn blocking_calls_to_a_stalled_host_open_at_most_32_streams() {
    let dir = scratch_dir("stalled_host");
    let host = start_agent(&dir, "stall-host", &[]);
    cli_ok(&host, &["tribe", "create", "svc"]);
    cli_ok(&host, &["tribe", "join", "svc"]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut cfg = tribe::Config::new("stall-caller");
    cfg.bind = "127.0.0.1:0".parse().unwrap();
    cfg.seeds = vec![host.gossip];
    cfg.profile = tribe::Profile::Local;
    cfg.collect_facts = false;
    let node = rt.block_on(tribe::Node::start(cfg)).unwrap();
    let tag = tribe::CallTarget::new("svc", "tag", tribe::PluginKind::Processor);
    wait_for(
        "the caller sees tag served in svc",
        Duration::from_secs(30),
        || {
            node.members().iter().any(|m| !m.endpoints.is_empty())
                && node.tribe("svc").is_some_and(|t| !t.members.is_empty())
        },
    );
    let batch = br#"[{"name":"x","value":1.0}]"#.to_vec();
    let call = |timeout: Duration| rt.block_on(node.call_blocking(&tag, batch.clone(), timeout));
    // Run by the host (the handler's own answer, whatever it says).
    match call(Duration::from_secs(5)) {
        Ok(_) | Err(tribe::Error::Remote { .. }) => {}
        Err(e) => panic!("a first call: {e}"),
    }
    let pid = nix::unistd::Pid::from_raw(host.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    for _round in 0..10 {
        std::thread::scope(|s| {
            for _ in 0..64 {
                s.spawn(|| call(Duration::from_millis(30)));
            }
        });
    }
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    // The dials still under way end (their connect timeout is 3 s).
    std::thread::sleep(Duration::from_secs(4));
    let streams = common::connections_to(host.gossip);
    assert!(
        streams <= 34,
        "{streams} streams to the host after the stall"
    );
    // Run by the host (the handler's own answer, whatever it says).
    match call(Duration::from_secs(5)) {
        Ok(_) | Err(tribe::Error::Remote { .. }) => {}
        Err(e) => panic!("a call after the stall: {e}"),
    }
    rt.block_on(node.shutdown()).unwrap();
    drop(host);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A write past the file-size limit (`ulimit -f`) fails and is counted and
/// retried like any failed write of the data dir; SIGXFSZ's default action
/// would kill the agent with no goodbye and no log line.
#[test]
fn an_agent_past_its_file_size_limit_counts_the_failed_writes_and_keeps_running() {
    let dir = scratch_dir("fsize");
    let data = dir.join("data");
    let mut agent = start_agent_in(
        &dir,
        "fsize",
        &args(&["--data-dir", data.to_str().unwrap(), "--log-level", "warn"]),
        &[],
        Some("ulimit -f 8"),
    );
    let value = "v".repeat(200);
    for i in 0..80 {
        let (status, body) = call(
            &agent,
            "PUT",
            &format!("/v1/facts/f{i}"),
            Some(json!({ "value": value })),
        );
        assert_eq!(status, 204, "{body}");
    }
    wait_for("a failed write counted", Duration::from_secs(20), || {
        let Value::String(metrics) = get(&agent, "/metrics") else {
            return false;
        };
        metrics.lines().any(|l| {
            l.starts_with("tribe_data_dir_errors_total ")
                && l.split_whitespace().nth(1).is_some_and(|v| v != "0")
        })
    });
    assert!(agent.child.try_wait().unwrap().is_none(), "the agent died");
    sigterm(&agent.child);
    let status = agent.child.wait().unwrap();
    // It left gracefully, and says its last state (past the limit) is not
    // kept: exit status 1, not a signal's.
    let log = std::fs::read_to_string(dir.join("fsize.log")).unwrap();
    assert_eq!(status.code(), Some(1), "{status:?}: {log}");
    assert!(log.contains("tribe: leaving: "), "{log}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn agents_started_apart_join_through_the_cli_and_a_join_to_no_one_says_why() {
    let dir = scratch_dir("join");
    let a = start_agent(&dir, "join-a", &[]);
    let b = start_agent(&dir, "join-b", &[]);
    assert_eq!(alive(&b), 1);

    let out = cli_ok(&b, &["join", &a.gossip.to_string()]);
    assert!(out.contains("joined through 1 address"), "{out}");
    wait_for(
        "both agents see both alive",
        Duration::from_secs(20),
        || alive(&a) == 2 && alive(&b) == 2,
    );

    // The admin API: JSON in, JSON out; nobody answering is a 502.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (status, body) = call(
        &b,
        "POST",
        "/v1/join",
        Some(serde_json::json!({"addrs": [dead.to_string()]})),
    );
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"], "io", "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains(&dead.to_string()),
        "{body}"
    );
    let (status, body) = call(
        &b,
        "POST",
        "/v1/join",
        Some(serde_json::json!({"addrs": []})),
    );
    assert_eq!(status, 400, "{body}");
    let (status, body) = call(
        &b,
        "POST",
        "/v1/join",
        Some(serde_json::json!({"addrs": [a.gossip.to_string()]})),
    );
    assert_eq!((status, body["joined"].as_u64()), (200, Some(1)), "{body}");

    let out = cli(&b, &["join", "no-port"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("invalid_argument"),
        "{out:?}"
    );
}

/// A key given under the wrong option, as a key file's path, or in a wrong
/// admin API field is never quoted back: it would end in a service
/// manager's log, or in a proxy's.
#[test]
fn a_key_given_in_the_wrong_place_is_withheld_from_every_error() {
    let key =
        String::from_utf8(Command::new(TRIBE).arg("keygen").output().unwrap().stdout).unwrap();
    let key = key.trim();
    for list in [
        ["--name", "wk", "--encryption", key],
        ["--name", "wk", "--key-file", key],
        ["--name", "wk", "--reap-after", key],
        ["--name", "wk", "--advertise", key],
        ["--name", "wk", "--seed", key],
    ] {
        let out = bare_agent_command(&list).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{list:?} started");
        assert!(!err.contains(key), "{list:?}: {err}");
        assert!(err.contains("withheld"), "{list:?}: {err}");
    }
    // Where a key would be sent to the network (the label in the clear in
    // every datagram, a fact to every member), it is refused. A key with
    // neither `+` nor `/` splits at its padding into a valid fact name.
    let plain_key = (0..200)
        .map(|_| {
            let out = Command::new(TRIBE).arg("keygen").output().unwrap().stdout;
            String::from_utf8(out).unwrap().trim().to_string()
        })
        .find(|k| !k.contains(['+', '/']))
        .expect("a key without + or / in 200");
    for list in [
        ["--name", "wk", "--label", key],
        ["--name", "wk", "--fact", plain_key.as_str()],
    ] {
        let out = bare_agent_command(&list).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{list:?} started");
        assert!(!err.contains(list[3]), "{list:?}: {err}");
        assert!(err.contains("encryption key"), "{list:?}: {err}");
    }
    let dir = scratch_dir("wrong-key-place");
    let a = start_agent(&dir, "wk-api", &[]);
    let (status, body) = call(
        &a,
        "PUT",
        "/v1/encryption",
        Some(serde_json::json!({ "mode": key })),
    );
    assert_eq!(status, 400, "{body}");
    assert!(!body.to_string().contains(key), "{body}");
}

/// A batch the `file` publisher cannot write whole (a full disk, here a
/// file-size limit) leaves nothing of itself in the file: no lines of a
/// batch its caller was told failed, no half line for the next batch's
/// first line to be appended to.
#[test]
fn a_batch_the_file_publisher_cannot_write_whole_leaves_nothing_of_itself() {
    let dir = scratch_dir("publish_fsize");
    let out = dir.join("published.jsonl");
    let store = start_agent_in(
        &dir,
        "pf-store",
        &args(&[
            "--publish-file",
            out.to_str().unwrap(),
            "--log-level",
            "warn",
        ]),
        &[],
        Some("ulimit -f 4"),
    );
    cli_ok(&store, &["tribe", "create", "storage"]);
    cli_ok(&store, &["tribe", "join", "storage"]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let outcomes = rt.block_on(async {
        let mut cfg = tribe::Config::new("pf-caller");
        cfg.bind = "127.0.0.1:0".parse().unwrap();
        cfg.seeds = vec![store.gossip];
        cfg.profile = tribe::Profile::Local;
        cfg.collect_facts = false;
        let node = tribe::Node::start(cfg).await.unwrap();
        let file = tribe::CallTarget::new("storage", "file", tribe::PluginKind::Publisher);
        let deadline = Instant::now() + Duration::from_secs(30);
        while node.tribe("storage").is_none_or(|t| t.members.is_empty()) {
            assert!(Instant::now() < deadline, "the caller never saw storage");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut outcomes = Vec::new();
        // Each batch about 700 bytes: the 4 KiB limit falls inside one.
        for i in 0..10 {
            let metrics: Vec<_> = (0..5)
                .map(|j| json!({"name": format!("m/{i}/{j}"), "value": j, "timestamp_ms": 1, "tags": {"pad": "p".repeat(100)}}))
                .collect();
            let batch = serde_json::to_vec(&json!({ "metrics": metrics })).unwrap();
            outcomes.push(node.call(&file, batch, Duration::from_secs(5)).await.is_ok());
        }
        node.shutdown().await.unwrap();
        outcomes
    });
    assert!(
        outcomes.iter().any(|ok| !ok),
        "no write failed: {outcomes:?}"
    );
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "a half line: {text:?}"
    );
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect();
    // Whole batches only, those told they were written.
    let written = outcomes.iter().filter(|ok| **ok).count();
    assert_eq!(lines.len(), 5 * written, "{outcomes:?}: {text}");
}

/// Agents stopped together each say goodbye and relay each other's down
/// notices: one of those can reach an observer before the notice's own
/// record saying `left`. The observer tells each of them left, never
/// failed first (an alert on `MemberFailed` would page at every deploy).
#[test]
fn agents_stopped_together_are_told_left_never_failed_first() {
    let dir = scratch_dir("stop_together");
    for round in 0..3 {
        let first = start_agent(&dir, &format!("sa{round}-0"), &[]);
        let seed = args(&["--seed", &first.gossip.to_string()]);
        let mut agents = vec![first];
        for i in 1..4 {
            agents.push(start_agent(&dir, &format!("sa{round}-{i}"), &seed));
        }
        let observer = start_agent(&dir, &format!("sa{round}-obs"), &seed);
        wait_for("five alive", Duration::from_secs(30), || {
            alive(&observer) == 5
        });
        for a in &agents {
            sigterm(&a.child);
        }
        for a in &mut agents {
            let _ = a.child.wait();
        }
        // Left, or failed: on a loaded box a goodbye may not get out in
        // time, and then the member is rightly told failed, alone.
        wait_for("every stopped agent down", Duration::from_secs(30), || {
            (0..4).all(|i| {
                matches!(
                    member_state(&observer, &format!("sa{round}-{i}")).as_deref(),
                    Some("left" | "failed")
                )
            })
        });
        // A leave told after a failure would come within the second after.
        std::thread::sleep(Duration::from_millis(1500));
        let log = std::fs::read_to_string(dir.join(format!("sa{round}-obs.log"))).unwrap();
        for i in 0..4 {
            let name = format!("\"sa{round}-{i}\"");
            let told: Vec<&str> = log
                .lines()
                .filter(|l| l.contains(&name))
                .filter_map(|l| {
                    ["MemberFailed", "MemberLeft"]
                        .into_iter()
                        .find(|kind| l.contains(kind))
                })
                .collect();
            assert!(
                !told.windows(2).any(|w| w == ["MemberFailed", "MemberLeft"]),
                "round {round}, {name}: {told:?}"
            );
        }
    }
}

/// An agent killed and started again under its name before its peers
/// found it down is a new life all the same: they tell it joined (as serf
/// tells a crash and a quick restart), not only that its record changed.
#[test]
fn a_crash_and_a_quick_restart_is_told_as_a_join() {
    let dir = scratch_dir("quick_restart");
    let seed = start_agent(&dir, "qr-seed", &[]);
    let seeded = args(&["--seed", &seed.gossip.to_string()]);
    let mut first = start_agent(&dir, "qr-node", &seeded);
    wait_for("two alive", Duration::from_secs(30), || alive(&seed) == 2);
    let joins = || {
        std::fs::read_to_string(dir.join("qr-seed.log"))
            .unwrap()
            .lines()
            .filter(|l| l.contains("MemberJoined") && l.contains("\"qr-node\""))
            .count()
    };
    wait_for(
        "the first MemberJoined logged",
        Duration::from_secs(10),
        || joins() == 1,
    );
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    // Its own dir: its log must not overwrite the first life's.
    let again = start_agent(&scratch_dir("quick_restart_again"), "qr-node", &seeded);
    wait_for("the new life seen", Duration::from_secs(20), || {
        member_addr(&seed, "qr-node").as_deref() == Some(&again.gossip.to_string())
    });
    wait_for("a second MemberJoined", Duration::from_secs(10), || {
        joins() == 2
    });
}

/// An admin address in use is told in one line and exit 1, naming
/// TRIBE_ADMIN when it gave the address (not when `--admin` did), also
/// with an argument that is not UTF-8 on the command line.
#[test]
fn a_busy_admin_address_is_told_and_names_the_variable_that_gave_it() {
    use std::os::unix::ffi::OsStrExt;
    let dir = scratch_dir("busy_admin");
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = held.local_addr().unwrap().to_string();
    let odd = std::ffi::OsStr::from_bytes(b"pub\xff.jsonl");
    let run = |cmd: &mut Command| {
        let out = cmd
            .arg("--publish-file")
            .arg(dir.join(odd))
            .args(["--name", "busy", "--insecure-plaintext"])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(bare_agent_command(&[]).env("TRIBE_ADMIN", &busy));
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("cannot listen for the admin API") && err.contains("came from TRIBE_ADMIN"),
        "{err}"
    );
    let (code, err) = run(bare_agent_command(&["--admin", &busy]).env("TRIBE_ADMIN", &busy));
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("cannot listen for the admin API") && !err.contains("TRIBE_ADMIN"),
        "{err}"
    );
    drop(held);
    std::fs::remove_dir_all(&dir).ok();
}
