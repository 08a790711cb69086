//! `tribe-sim`: the libtribe engine at thousands of simulated nodes in one
//! process, in virtual time, deterministic for a seed (see `tribe::sim` and
//! docs/simulation.md). Each scenario prints a markdown summary; `--csv`
//! also writes its time series.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use tribe::sim::{Latency, NetConfig, Sim, SimConfig, Spread, Watch};
use tribe::{Command, PluginKind, Profile};

#[derive(Parser)]
#[command(
    name = "tribe-sim",
    version,
    about = "Simulate a libtribe cluster in virtual time"
)]
struct Cli {
    /// Number of nodes.
    #[arg(long, short = 'n', default_value_t = 1000)]
    nodes: usize,
    /// Seed of every random draw: the same seed and flags give the same output.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Protocol timings: local, lan or wan.
    #[arg(long, default_value = "lan")]
    profile: Profile,
    /// Datagram loss, 0..1.
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Median one-way latency, µs (log-normal, σ 0.5).
    #[arg(long, default_value_t = 500)]
    latency_us: u64,
    /// Stream bandwidth per connection, bytes/s.
    #[arg(long, default_value_t = 100_000_000)]
    bandwidth: u64,
    /// Nodes the others are seeded with.
    #[arg(long, default_value_t = 3)]
    seeds: usize,
    /// Virtual seconds given to the mass join before the scenario's step.
    #[arg(long, default_value_t = 30.0)]
    warmup_secs: f64,
    /// Start from a formed cluster (every node knowing every other one and
    /// its record) instead of simulating the mass join; the warm-up then
    /// runs on the formed cluster.
    #[arg(long)]
    formed: bool,
    /// Write the scenario's time series here as CSV.
    #[arg(long)]
    csv: Option<PathBuf>,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Mass join from the seeds, then one late join's spread.
    Join,
    /// One crash: detection time and false failures (with --loss, --paused).
    Crash {
        /// Share of other nodes paused for 3 s at the crash (0..1).
        #[arg(long, default_value_t = 0.0)]
        paused: f64,
        /// Virtual seconds observed after the crash (false failures too).
        #[arg(long, default_value_t = 60.0)]
        observe_secs: f64,
    },
    /// A plugin entry of a tribe holding every node reaching all of them.
    Catalog,
    /// A 50/50 partition with writes on both sides, then the heal.
    Partition {
        /// Virtual seconds the partition lasts.
        #[arg(long, default_value_t = 60.0)]
        secs: f64,
    },
    /// Bytes/s per node at rest.
    Rest {
        /// Virtual seconds measured.
        #[arg(long, default_value_t = 60.0)]
        secs: f64,
    },
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(&cli) {
        eprintln!("tribe-sim: {e}");
        std::process::exit(1);
    }
}

fn run(cli: &Cli) -> Result<(), String> {
    if cli.nodes < 2 {
        return Err("--nodes must be at least 2".into());
    }
    if !(0.0..=1.0).contains(&cli.loss) {
        return Err("--loss must be between 0 and 1".into());
    }
    if !(cli.warmup_secs.is_finite() && cli.warmup_secs >= 0.0) {
        return Err("--warmup-secs must be a non-negative number".into());
    }
    let cfg = SimConfig {
        seed: cli.seed,
        profile: cli.profile,
        net: NetConfig {
            latency: Latency::LogNormal {
                median_us: cli.latency_us.max(1),
                sigma: 0.5,
            },
            loss: 0.0,
            bandwidth: cli.bandwidth.max(1),
        },
        seeds: cli.seeds.max(1),
    };
    let wall = Instant::now();
    let mut sim = Sim::new(cfg);
    let mut series = Series::new(&["t_s", "nodes_converged"]);
    // The mass join (or a formed cluster), lossless, sampled every 100 ms.
    if cli.formed {
        sim.add_formed(cli.nodes);
    } else {
        for _ in 0..cli.nodes {
            sim.add_node();
        }
    }
    let formed_in = wall.elapsed();
    let warmup = secs(cli.warmup_secs)?;
    let mut all_at = None;
    while sim.now() < warmup {
        sim.run_for(Duration::from_millis(100));
        let done = sim
            .alive_counts()
            .iter()
            .filter(|&&c| c == cli.nodes)
            .count();
        series.row(&[sim.now().as_secs_f64(), done as f64]);
        if done == cli.nodes && all_at.is_none() {
            all_at = Some(sim.now());
        }
    }
    println!(
        "# tribe-sim: {} nodes, seed {}, profile {:?}, loss {}, median latency {} µs\n",
        cli.nodes, cli.seed, cli.profile, cli.loss, cli.latency_us
    );
    let all_at = all_at.map_or("(not within the warm-up)".to_string(), |t| {
        format!("{:.1} s", t.as_secs_f64())
    });
    if cli.formed {
        println!(
            "- formed cluster ({:.1} s of wall time to build): every node saw all {} alive after {all_at}",
            formed_in.as_secs_f64(),
            cli.nodes
        );
    } else {
        println!(
            "- mass join: every node saw all {} alive after {all_at}",
            cli.nodes
        );
    }
    sim.set_loss(cli.loss);
    let step = Instant::now();
    match &cli.scenario {
        Scenario::Join => {
            let name = format!("sim-{}", cli.nodes);
            let w = Watch::MemberJoined(name);
            sim.watch(w.clone());
            sim.add_node();
            series = Series::new(&["t_s", "nodes_knowing_joiner"]);
            sample_spread(&mut sim, &w, cli.nodes, secs(30.0)?, &mut series);
            let seen = sim.seen(&w);
            print_spread("late join known by", &seen[..cli.nodes]);
        }
        Scenario::Crash {
            paused,
            observe_secs,
        } => {
            if !(0.0..=1.0).contains(paused) {
                return Err("--paused must be between 0 and 1".into());
            }
            let victim = cli.nodes / 2;
            let w = Watch::MemberFailed(sim.name(victim).to_string());
            sim.watch(w.clone());
            let before = sim.false_failures().len();
            sim.crash(victim);
            let k = (paused * cli.nodes as f64).round() as usize;
            for i in (0..cli.nodes).filter(|&i| i != victim).take(k) {
                sim.pause(i, Duration::from_secs(3));
            }
            series = Series::new(&["t_s", "nodes_declaring_crash"]);
            sample_spread(&mut sim, &w, cli.nodes, secs(*observe_secs)?, &mut series);
            let mut seen = sim.seen(&w);
            seen.truncate(cli.nodes);
            seen.remove(victim);
            print_spread("crash declared by", &seen);
            let false_failures = sim.false_failures().len() - before;
            println!(
                "- false failures (a node neither crashed nor paused declared failed) over {observe_secs} s: {false_failures}"
            );
        }
        Scenario::Catalog => {
            sim.command(
                0,
                Command::CreateTribe {
                    tribe: "all".into(),
                },
            )
            .map_err(|e| e.to_string())?;
            for i in 0..cli.nodes {
                let node = sim.name(i).to_string();
                sim.command(
                    0,
                    Command::Join {
                        tribe: "all".into(),
                        node,
                    },
                )
                .map_err(|e| e.to_string())?;
            }
            sim.run_for(Duration::from_secs(20));
            let w = Watch::PluginLoad {
                tribe: "all".into(),
                name: "disk".into(),
            };
            sim.watch(w.clone());
            sim.command(
                1,
                Command::LoadPlugin {
                    tribe: "all".into(),
                    name: "disk".into(),
                    version: "1".into(),
                    kind: PluginKind::Collector,
                    artifact: None,
                },
            )
            .map_err(|e| e.to_string())?;
            series = Series::new(&["t_s", "nodes_told_to_load"]);
            sample_spread(&mut sim, &w, cli.nodes, secs(30.0)?, &mut series);
            print_spread("plugin entry reached", &sim.seen(&w));
        }
        Scenario::Partition { secs: cut } => {
            let n = cli.nodes;
            sim.partition(|i| i < n / 2);
            sim.run_for(Duration::from_secs(2));
            sim.command(
                0,
                Command::CreateTribe {
                    tribe: "left".into(),
                },
            )
            .map_err(|e| e.to_string())?;
            sim.command(
                n - 1,
                Command::CreateTribe {
                    tribe: "right".into(),
                },
            )
            .map_err(|e| e.to_string())?;
            sim.run_for(secs(*cut)?);
            sim.heal();
            let healed = sim.now();
            series = Series::new(&["t_s", "nodes_with_majority_digest"]);
            let mut same_at = None;
            while sim.now() < healed + Duration::from_secs(300) {
                sim.run_for(Duration::from_millis(500));
                let digests: Vec<String> = (0..n)
                    .filter_map(|i| sim.engine(i).map(|e| e.state_digest()))
                    .collect();
                let same = digests.iter().filter(|d| **d == digests[0]).count();
                series.row(&[(sim.now() - healed).as_secs_f64(), same as f64]);
                if same == n {
                    same_at = Some(sim.now() - healed);
                    break;
                }
            }
            let lost = (0..n)
                .filter(|&i| {
                    sim.engine(i)
                        .is_some_and(|e| e.tribe("left").is_none() || e.tribe("right").is_none())
                })
                .count();
            println!(
                "- identical state digests on all {n} nodes {} after the heal; nodes missing a write: {lost}",
                same_at.map_or("not within 300 s".to_string(), |t| format!("{:.1} s", t.as_secs_f64()))
            );
        }
        Scenario::Rest { secs: window } => {
            let before: Vec<_> = (0..cli.nodes).map(|i| sim.traffic(i)).collect();
            sim.run_for(secs(*window)?);
            let mut d = 0u64;
            let mut s = 0u64;
            let mut p = 0u64;
            for (i, b) in before.iter().enumerate() {
                let t = sim.traffic(i);
                d += t.datagram_bytes - b.datagram_bytes;
                s += t.stream_bytes - b.stream_bytes;
                p += t.datagrams - b.datagrams;
            }
            let per = |x: u64| x as f64 / window / cli.nodes as f64;
            println!(
                "- at rest over {window} s: gossip {:.0} B/s/node, anti-entropy {:.0} B/s/node, {:.1} datagrams/s/node",
                per(d),
                per(s),
                per(p)
            );
        }
    }
    println!(
        "- wall time: {:.1} s in all ({:.1} s for the step), {} queue events, {:.1} virtual s",
        wall.elapsed().as_secs_f64(),
        step.elapsed().as_secs_f64(),
        sim.events_processed(),
        sim.now().as_secs_f64()
    );
    if let Some(path) = &cli.csv {
        series
            .write(path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}

fn secs(s: f64) -> Result<Duration, String> {
    Duration::try_from_secs_f64(s).map_err(|_| format!("{s} is not a duration in seconds"))
}

/// Runs `limit`, sampling every 100 ms how many of the first `n` nodes saw `w`.
fn sample_spread(sim: &mut Sim, w: &Watch, n: usize, limit: Duration, series: &mut Series) {
    let start = sim.now();
    while sim.now() < start + limit {
        sim.run_for(Duration::from_millis(100));
        let seen = sim.seen(w).iter().take(n).filter(|t| t.is_some()).count();
        series.row(&[(sim.now() - start).as_secs_f64(), seen as f64]);
    }
}

fn print_spread(what: &str, times: &[Option<u64>]) {
    match Spread::of(times) {
        Some(s) => println!(
            "- {what} {}/{} nodes: first {:.2} s, p50 {:.2} s, p99 {:.2} s, p99.99 {:.2} s, last {:.2} s",
            s.seen,
            s.of,
            s.first as f64 / 1e6,
            s.p50 as f64 / 1e6,
            s.p99 as f64 / 1e6,
            s.p9999 as f64 / 1e6,
            s.max as f64 / 1e6
        ),
        None => println!("- {what} no node"),
    }
}

/// A time series for `--csv`.
struct Series {
    head: String,
    rows: Vec<String>,
}

impl Series {
    fn new(cols: &[&str]) -> Series {
        Series {
            head: cols.join(","),
            rows: Vec::new(),
        }
    }

    fn row(&mut self, values: &[f64]) {
        let cells: Vec<String> = values.iter().map(|v| format!("{v:.3}")).collect();
        self.rows.push(cells.join(","));
    }

    fn write(&self, path: &PathBuf) -> std::io::Result<()> {
        let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
        writeln!(f, "{}", self.head)?;
        for r in &self.rows {
            writeln!(f, "{r}")?;
        }
        f.flush()
    }
}
