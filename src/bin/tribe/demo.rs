//! `tribe demo`: a local tribe of real nodes (UDP + TCP on 127.0.0.1) that
//! walks through every feature of the core: policies placing nodes by facts,
//! a tribe created by a policy, per-tribe catalogs, failure detection and a
//! late joiner inheriting the catalog.

use std::time::{Duration, Instant};

use tribe::{Config, Event, MemberState, Node, PluginKind, Profile, TaskState};

/// Options of `tribe demo`.
#[derive(clap::Args)]
pub struct DemoArgs {
    /// Number of nodes to start (at least 3).
    #[arg(long, default_value_t = 5)]
    nodes: usize,
}

type DemoResult = Result<(), Box<dyn std::error::Error>>;

fn say(start: Instant, text: &str) {
    println!("[{:>5.1}s] {text}", start.elapsed().as_secs_f64());
}

async fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) -> DemoResult {
    let deadline = Instant::now() + limit;
    while !cond() {
        if Instant::now() > deadline {
            return Err(format!("timed out waiting for {what}").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

fn node_config(name: &str, i: usize, seed: Option<std::net::SocketAddr>) -> Config {
    let mut cfg = Config::new(name);
    cfg.profile = Profile::Local;
    cfg.seeds = seed.into_iter().collect();
    let os = if i.is_multiple_of(2) {
        "ubuntu"
    } else {
        "centos"
    };
    cfg.facts.insert("os_dist".into(), os.into());
    let tier = if i % 3 == 1 { "true" } else { "false" };
    cfg.facts.insert("storage_tier".into(), tier.into());
    cfg
}

fn describe(node: &Node, tribe: &str) -> String {
    match node.tribe(tribe) {
        Some(t) => format!(
            "{tribe}: members [{}], plugins [{}], tasks [{}]",
            t.members.join(", "),
            t.plugins
                .iter()
                .map(|p| format!("{}:{}", p.name, p.version))
                .collect::<Vec<_>>()
                .join(", "),
            t.tasks
                .iter()
                .map(|t| t.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        None => format!("{tribe}: (does not exist)"),
    }
}

/// Runs the demo; every node is stopped before it returns.
pub async fn run(args: DemoArgs) -> DemoResult {
    let n = args.nodes.clamp(3, 32);
    let start = Instant::now();
    println!(
        "libtribe demo: {n} nodes on 127.0.0.1 (UDP gossip + TCP push-pull, profile 'local')\n"
    );
    let mut nodes: Vec<Node> = Vec::new();
    for i in 0..n {
        let seed = nodes.first().map(Node::addr);
        let node = Node::start(node_config(&format!("node{i}"), i, seed)).await?;
        say(
            start,
            &format!("started {} at {}", node.name(), node.addr()),
        );
        nodes.push(node);
    }
    wait_until("the cluster to form", Duration::from_secs(30), || {
        nodes.iter().all(|x| x.members_alive() == n)
    })
    .await?;
    say(start, &format!("all {n} nodes see each other alive"));

    let admin = nodes[n - 1].clone();
    admin.create_tribe("core").await?;
    admin
        .add_policy("core", "core", r#"facts.os_dist == "ubuntu""#)
        .await?;
    admin
        .add_policy("storage", "storage", r#"facts.storage_tier == "true""#)
        .await?;
    say(
        start,
        "policy core:    facts.os_dist == \"ubuntu\"       -> tribe core",
    );
    say(start, "policy storage: facts.storage_tier == \"true\"    -> tribe storage (not created beforehand)");
    admin
        .load_plugin("core", "cpu", "1", PluginKind::Collector, None)
        .await?;
    wait_until(
        "the storage tribe to be created by its policy",
        Duration::from_secs(20),
        || nodes.iter().all(|x| x.tribe("storage").is_some()),
    )
    .await?;
    admin
        .load_plugin("storage", "disk", "2", PluginKind::Collector, None)
        .await?;
    admin
        .add_task(
            "core",
            "cpu-every-5s",
            r#"{"schedule":{"interval":"5s"},"collect":{"plugin":"cpu"}}"#,
            TaskState::Running,
        )
        .await?;
    wait_until(
        "every node to agree on the state",
        Duration::from_secs(30),
        || {
            let d = nodes[0].state_digest();
            nodes.iter().all(|x| x.state_digest() == d)
        },
    )
    .await?;
    say(start, "every node reports the same state digest:");
    println!("          {}", describe(&nodes[0], "core"));
    println!("          {}", describe(&nodes[0], "storage"));

    let moved = nodes[1].clone();
    moved.set_fact("os_dist", "ubuntu").await?;
    say(
        start,
        &format!("{} changes its fact os_dist to ubuntu ...", moved.name()),
    );
    wait_until(
        "the fact change to move the node",
        Duration::from_secs(20),
        || {
            nodes.iter().all(|x| {
                x.tribe("core")
                    .is_some_and(|t| t.members.iter().any(|m| m == moved.name()))
            })
        },
    )
    .await?;
    say(
        start,
        &format!(
            "... and the policy puts it into core: {}",
            describe(&nodes[0], "core")
        ),
    );

    let victim = nodes.remove(2);
    let victim_name = victim.name().to_string();
    victim.abort().await;
    let killed_at = Instant::now();
    say(
        start,
        &format!("killed {victim_name} without a goodbye; waiting for failure detection ..."),
    );
    wait_until("failure detection", Duration::from_secs(30), || {
        nodes.iter().all(|x| {
            x.members()
                .iter()
                .any(|m| m.name == victim_name && m.state == MemberState::Failed)
        })
    })
    .await?;
    say(
        start,
        &format!(
            "every node marks {victim_name} failed after {:.1}s",
            killed_at.elapsed().as_secs_f64()
        ),
    );

    let late = Node::start(node_config("late-joiner", 0, Some(nodes[0].addr()))).await?;
    let mut events = late.events();
    say(
        start,
        "started late-joiner (os_dist=ubuntu): it inherits the catalog of its tribes",
    );
    let mut loads = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while loads.len() < 2 {
        match tokio::time::timeout_at(deadline, events.next()).await {
            Ok(Some(Event::PluginLoad(p))) => loads.push(format!(
                "load plugin {}:{} (tribe {})",
                p.name, p.version, p.tribe
            )),
            Ok(Some(Event::TaskRun(t))) => {
                loads.push(format!("run task {} (tribe {})", t.id, t.tribe))
            }
            Ok(Some(_)) => {}
            _ => return Err("late joiner did not receive its catalog".into()),
        }
    }
    for l in loads {
        say(start, &format!("late-joiner event: {l}"));
    }
    nodes.push(late);
    for node in &nodes {
        node.shutdown().await?;
    }
    say(start, "every node left gracefully; demo done");
    Ok(())
}
