//! Snapshot and command costs as a tribe's state grows: one node (and a
//! peer, so that commands spread), tribes created in batches; after each
//! batch, the time of the batch's creates, of 100 fact writes (a write
//! that changes no tribe, as most writes in a running tribe), and of one
//! `tribes()`, `members()` and `tribe()` snapshot. A snapshot holds the node's engine,
//! so its time is how long the node stops answering gossip.
//!
//! ```text
//! cargo bench --bench state_scale -- [--batches 5] [--batch 1000]
//! ```
//!
//! Prints a markdown table; never asserts on timings.

use std::time::{Duration, Instant};

use tribe::{Config, Node, Profile};

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn config(name: &str, tribes: usize) -> Config {
    let mut cfg = Config::new(name);
    cfg.profile = Profile::Local;
    cfg.bind = "127.0.0.1:0".parse().expect("address");
    cfg.limits.tribes = tribes.max(1);
    cfg
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), tribe::Error> {
    let (batches, batch) = (arg("--batches", 5), arg("--batch", 1000));
    let node = Node::start(config("scale-0", batches * batch)).await?;
    let mut cfg = config("scale-1", batches * batch);
    cfg.seeds = vec![node.addr()];
    let peer = Node::start(cfg).await?;
    while node.members_alive() < 2 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("| tribes | {batch} creates, ms | per create, ms | per fact write, ms | tribes() ms | members() ms | tribe() ms |");
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for b in 0..batches {
        let t = Instant::now();
        for i in 0..batch {
            node.create_tribe(&format!("t{b}-{i}")).await?;
        }
        let creates = t.elapsed();
        let t = Instant::now();
        for i in 0..100 {
            node.set_fact("churn", &i.to_string()).await?;
        }
        let facts = t.elapsed();
        let t = Instant::now();
        let all = node.tribes();
        let tribes = t.elapsed();
        let t = Instant::now();
        let members = node.members();
        let members_t = t.elapsed();
        let t = Instant::now();
        let one = node.tribe("t0-0");
        let one_t = t.elapsed();
        assert!(one.is_some() && members.len() == 2);
        println!(
            "| {} | {} | {:.3} | {:.3} | {} | {} | {} |",
            all.len(),
            ms(creates),
            creates.as_secs_f64() * 1e3 / batch as f64,
            facts.as_secs_f64() * 1e3 / 100.0,
            ms(tribes),
            ms(members_t),
            ms(one_t)
        );
    }
    peer.shutdown().await?;
    node.shutdown().await?;
    Ok(())
}
