//! `tribe-sim`: the libtribe engine at thousands of simulated nodes in one
//! process, in virtual time, deterministic for a seed (see `tribe::sim` and
//! docs/simulation.md). Each scenario prints a markdown summary; `--csv`
//! also writes its time series and `--png` a chart of it.

mod plot;

/// `println!` that goes on quietly when stdout is gone (a closed pipe, as
/// under `| head`) instead of panicking: the run goes on to write the
/// `--csv` and `--png` files it was asked for.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use tribe::engine::commands::Command;
use tribe::sim::{Latency, NetConfig, Sim, SimConfig, Spread, Watch};
use tribe::{PluginKind, Profile};

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
    /// Suspicion timeout multiplier, in place of the profile's
    /// (timeout = multiplier × max(1, log10 N) × probe period).
    #[arg(long)]
    suspicion_mult: Option<u32>,
    /// Members asked to probe indirectly, in place of the profile's.
    #[arg(long)]
    indirect_probes: Option<usize>,
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
    /// Draw the scenario's time series here as a PNG chart.
    #[arg(long)]
    png: Option<PathBuf>,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Only the mass join from the seeds (the warm-up, sampled every 100 ms).
    MassJoin,
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
    /// A policy change re-placing a tenth of the nodes: a tribe held by
    /// policy over the nodes of one shard (a fact, 10 shards) moves to the
    /// next shard.
    Policy,
    /// A 50/50 partition with writes on both sides, then the heal.
    Partition {
        /// Virtual seconds the partition lasts after the writes on both
        /// sides (made 2 s after the cut).
        #[arg(long, default_value_t = 60.0)]
        secs: f64,
    },
    /// Bytes/s per node at rest.
    Rest {
        /// Virtual seconds measured.
        #[arg(long, default_value_t = 60.0)]
        secs: f64,
    },
    /// Bytes/s per node during churn: a node crashes every `--every-secs`
    /// and comes back (same name, new generation) `--down-secs` later.
    Churn {
        /// Virtual seconds measured.
        #[arg(long, default_value_t = 60.0)]
        secs: f64,
        /// Virtual seconds between two crashes.
        #[arg(long, default_value_t = 2.0)]
        every_secs: f64,
        /// Virtual seconds a crashed node stays down.
        #[arg(long, default_value_t = 10.0)]
        down_secs: f64,
    },
}

impl Scenario {
    /// Refuses bad flags before any node is simulated.
    fn check(&self) -> Result<(), String> {
        match self {
            Scenario::MassJoin | Scenario::Join | Scenario::Catalog | Scenario::Policy => Ok(()),
            Scenario::Crash {
                paused,
                observe_secs,
            } => {
                if !(0.0..=1.0).contains(paused) {
                    return Err("--paused must be between 0 and 1".into());
                }
                secs(*observe_secs).map(drop)
            }
            Scenario::Partition { secs: s } | Scenario::Rest { secs: s } => secs(*s).map(drop),
            Scenario::Churn {
                secs: s,
                every_secs,
                down_secs,
            } => {
                secs(*s)?;
                if secs(*every_secs)? < Duration::from_millis(100) {
                    return Err("--every-secs must be at least 0.1".into());
                }
                secs(*down_secs).map(drop)
            }
        }
    }
}

/// Largest median latency: samples reach 100 times the median, and virtual
/// time must not overflow.
const MAX_LATENCY_US: u64 = 60_000_000;

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(&cli) {
        eprintln!("tribe-sim: {e}");
        std::process::exit(1);
    }
}

/// Most nodes simulated: about 11,000 fit in 24 GB (docs/simulation.md);
/// a typo must not take the machine's memory.
const MAX_NODES: usize = 50_000;

fn run(cli: &Cli) -> Result<(), String> {
    if !(2..=MAX_NODES).contains(&cli.nodes) {
        return Err(format!(
            "--nodes must be between 2 and {MAX_NODES} (about 2 MB of memory a node)"
        ));
    }
    for (flag, value) in [
        ("--latency-us", cli.latency_us),
        ("--bandwidth", cli.bandwidth),
        ("--seeds", cli.seeds as u64),
        ("--suspicion-mult", cli.suspicion_mult.map_or(1, u64::from)),
    ] {
        if value == 0 {
            return Err(format!("{flag} must be at least 1"));
        }
    }
    if cli
        .png
        .as_ref()
        .is_some_and(|p| !p.extension().is_some_and(|e| e.eq_ignore_ascii_case("png")))
    {
        return Err("--png wants a file name ending in .png".into());
    }
    if !(0.0..=1.0).contains(&cli.loss) {
        return Err("--loss must be between 0 and 1".into());
    }
    if cli.latency_us > MAX_LATENCY_US {
        return Err(format!(
            "--latency-us must be at most {MAX_LATENCY_US} (one minute)"
        ));
    }
    // Output files are tried before the run, not found unwritable after it.
    for path in [&cli.csv, &cli.png].into_iter().flatten() {
        std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    if !(cli.warmup_secs.is_finite() && cli.warmup_secs >= 0.0) {
        return Err("--warmup-secs must be a non-negative number".into());
    }
    cli.scenario.check()?;
    if matches!(cli.scenario, Scenario::Churn { .. }) && cli.seeds >= cli.nodes {
        return Err("churn crashes nodes that are no seeds: give --seeds below --nodes".into());
    }
    if cli.formed && matches!(cli.scenario, Scenario::MassJoin) {
        return Err("mass-join simulates the join: leave out --formed".into());
    }
    let timings = (cli.suspicion_mult.is_some() || cli.indirect_probes.is_some()).then(|| {
        let mut t = cli.profile.timings();
        t.suspicion_mult = cli.suspicion_mult.unwrap_or(t.suspicion_mult);
        t.indirect_probes = cli.indirect_probes.unwrap_or(t.indirect_probes);
        t
    });
    // Timings a node would refuse would leave every simulated node unstarted
    // and the summary empty: refused here, as a node refuses them.
    if let Some(t) = &timings {
        let mut probe = tribe::Config::new("sim");
        probe.timings = Some(t.clone());
        probe
            .validate()
            .map_err(|e| format!("--suspicion-mult / --indirect-probes: {e}"))?;
    }
    let cfg = SimConfig {
        seed: cli.seed,
        profile: cli.profile,
        timings,
        net: NetConfig {
            latency: Latency::LogNormal {
                median_us: cli.latency_us,
                sigma: 0.5,
            },
            // The warm-up is lossless, but for the mass join it measures.
            loss: if matches!(cli.scenario, Scenario::MassJoin) {
                cli.loss
            } else {
                0.0
            },
            bandwidth: cli.bandwidth,
        },
        seeds: cli.seeds,
    };
    let wall = Instant::now();
    let mut sim = Sim::new(cfg);
    let about = format!(
        "{} nodes, loss {:.0} %, seed {}",
        cli.nodes,
        cli.loss * 100.0,
        cli.seed
    );
    let nodes = Some(cli.nodes as f64);
    let join_about = if matches!(cli.scenario, Scenario::MassJoin) {
        about.clone()
    } else {
        format!("{} nodes, lossless warm-up, seed {}", cli.nodes, cli.seed)
    };
    let mut series = Series::new(
        format!("Mass join: nodes that see all alive ({join_about})"),
        "nodes",
        &["t_s", "nodes_converged"],
        nodes,
    );
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
    let mut done_at_end = 0;
    while sim.now() < warmup {
        sim.run_for(Duration::from_millis(100));
        let done = sim
            .alive_counts()
            .iter()
            .filter(|&&c| c == cli.nodes)
            .count();
        series.row(&[sim.now().as_secs_f64(), done as f64]);
        done_at_end = done;
        if done == cli.nodes && all_at.is_none() {
            all_at = Some(sim.now());
        }
    }
    let overrides: String = [
        cli.suspicion_mult.map(|m| format!(", suspicion ×{m}")),
        cli.indirect_probes
            .map(|k| format!(", {k} indirect probes")),
    ]
    .into_iter()
    .flatten()
    .collect();
    say!(
        "# tribe-sim: {} nodes, seed {}, profile {:?}{}, loss {}, median latency {} µs\n",
        cli.nodes,
        cli.seed,
        cli.profile,
        overrides,
        cli.loss,
        cli.latency_us
    );
    let everyone_saw_all = all_at.is_some();
    let all_at = all_at.map_or("(not within the warm-up)".to_string(), |t| {
        format!("{:.1} s", t.as_secs_f64())
    });
    if cli.formed {
        say!(
            "- formed cluster ({:.1} s of wall time to build): every node saw all {} alive after {all_at}",
            formed_in.as_secs_f64(),
            cli.nodes
        );
    } else {
        let lossless = if matches!(cli.scenario, Scenario::MassJoin) {
            ""
        } else {
            " (lossless)"
        };
        // Under heavy loss, nodes may lose sight of others again.
        let at_end = if everyone_saw_all && done_at_end < cli.nodes {
            format!("; {done_at_end} saw all alive at the end of the warm-up")
        } else {
            String::new()
        };
        say!(
            "- mass join{lossless}: every node saw all {} alive after {all_at}{at_end}",
            cli.nodes
        );
    }
    sim.set_loss(cli.loss);
    let step = Instant::now();
    match &cli.scenario {
        Scenario::MassJoin => {}
        Scenario::Join => {
            let name = format!("sim-{}", cli.nodes);
            let w = Watch::MemberJoined(name);
            sim.watch(w.clone());
            sim.add_node();
            series = Series::new(
                format!("Late join: nodes that know the joiner ({about})"),
                "nodes",
                &["t_s", "nodes_knowing_joiner"],
                nodes,
            );
            sample_spread(&mut sim, &w, cli.nodes, secs(30.0)?, &mut series);
            let seen = sim.seen(&w);
            print_spread("late join known by", &seen[..cli.nodes]);
        }
        Scenario::Crash {
            paused,
            observe_secs,
        } => {
            let victim = cli.nodes / 2;
            let w = Watch::MemberFailed(sim.name(victim).to_string());
            sim.watch(w.clone());
            let before = sim.false_failures().len();
            sim.crash(victim);
            let k = (paused * cli.nodes as f64).round() as usize;
            for i in (0..cli.nodes).filter(|&i| i != victim).take(k) {
                sim.pause(i, Duration::from_secs(3));
            }
            series = Series::new(
                format!("Crash: nodes that declared it failed ({about})"),
                "nodes",
                &["t_s", "nodes_declaring_crash", "false_failures"],
                nodes,
            );
            let start = sim.now();
            while sim.now() < start + secs(*observe_secs)? {
                sim.run_for(Duration::from_millis(100));
                let seen = sim.seen(&w).iter().filter(|t| t.is_some()).count();
                let wrong = sim.false_failures().len() - before;
                series.row(&[(sim.now() - start).as_secs_f64(), seen as f64, wrong as f64]);
            }
            let mut seen = sim.seen(&w);
            seen.truncate(cli.nodes);
            seen.remove(victim);
            print_spread("crash declared by", &seen);
            let false_failures = sim.false_failures().len() - before;
            say!(
                "- false failure reports (a node neither crashed nor paused declared failed) over {observe_secs} s: {false_failures}"
            );
            print_first_false_failures(&sim, before);
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
            series = Series::new(
                format!("Catalog: nodes told to load a new plugin ({about})"),
                "nodes",
                &["t_s", "nodes_told_to_load"],
                nodes,
            );
            sample_spread(&mut sim, &w, cli.nodes, secs(30.0)?, &mut series);
            print_spread("plugin entry reached", &sim.seen(&w));
        }
        Scenario::Policy => policy_change(&mut sim, cli.nodes, &about, &mut series)?,
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
            series = Series::new(
                format!("Partition heal: nodes with node 0's state digest ({about})"),
                "nodes",
                &["t_s", "nodes_with_first_digest"],
                nodes,
            );
            let mut same_at = None;
            let mut first = true;
            while sim.now() < healed + Duration::from_secs(300) {
                // A row at the heal itself: a heal done by the first sample
                // still draws a line.
                if !first {
                    sim.run_for(Duration::from_millis(500));
                }
                first = false;
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
            say!(
                "- identical state digests on all {n} nodes {} after the heal; nodes missing a write: {lost}",
                same_at.map_or("not within 300 s".to_string(), |t| format!("{:.1} s", t.as_secs_f64()))
            );
        }
        Scenario::Rest { secs: window } => {
            series = traffic_series(format!("At rest: bytes/s per node ({about})"));
            let mut meter = TrafficMeter::new(&sim);
            let start = sim.now();
            while sim.now() < start + secs(*window)? {
                sim.run_for(Duration::from_secs(1));
                meter.sample(&sim, start, &mut series);
            }
            meter.print("at rest", &sim, start);
        }
        Scenario::Churn {
            secs: window,
            every_secs,
            down_secs,
        } => {
            let every = secs(*every_secs)?;
            let down = secs(*down_secs)?;
            series = traffic_series(format!(
                "Churn: bytes/s per node, a crash every {every_secs} s, down {down_secs} s ({about})"
            ));
            let mut meter = TrafficMeter::new(&sim);
            let start = sim.now();
            // Victims in turn from the last node down, never a seed.
            let candidates: Vec<usize> = (cli.seeds.min(cli.nodes - 1)..cli.nodes).rev().collect();
            let mut down_now: std::collections::VecDeque<(Duration, usize)> = Default::default();
            let (mut crashes, mut skipped, mut turn, mut next_crash) =
                (0usize, 0usize, 0usize, start);
            let before = sim.false_failures().len();
            while sim.now() < start + secs(*window)? {
                if sim.now() >= next_crash {
                    let victim = candidates[turn % candidates.len()];
                    // A victim still down is skipped, not crashed again.
                    if !down_now.iter().any(|&(_, i)| i == victim) {
                        sim.crash(victim);
                        down_now.push_back((sim.now() + down, victim));
                        crashes += 1;
                    } else {
                        skipped += 1;
                    }
                    turn += 1;
                    next_crash += every;
                }
                while down_now.front().is_some_and(|&(at, _)| at <= sim.now()) {
                    if let Some((_, i)) = down_now.pop_front() {
                        sim.restart(i);
                    }
                }
                sim.run_for(Duration::from_secs(1).min(every));
                meter.sample(&sim, start, &mut series);
            }
            let skipped = if skipped > 0 {
                format!(", {skipped} skipped: the victim was still down")
            } else {
                String::new()
            };
            meter.print(
                &format!("during churn ({crashes} crashes{skipped})"),
                &sim,
                start,
            );
            say!(
                "- false failure reports (a node neither crashed nor paused declared failed): {}",
                sim.false_failures().len() - before
            );
        }
    }
    say!(
        "- wall time: {:.1} s in all ({:.1} s for the step), {} queue events, {:.1} virtual s",
        wall.elapsed().as_secs_f64(),
        step.elapsed().as_secs_f64(),
        sim.events_processed(),
        sim.now().as_secs_f64()
    );
    if let Some(path) = &cli.csv {
        series
            .write_csv(path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    if let Some(path) = &cli.png {
        series.write_png(path)?;
    }
    Ok(())
}

/// Every node takes a fact `shard` (its index mod 10), a policy puts shard
/// 0 in tribe `hot`, and once that has settled the policy is replaced by
/// one for shard 1: the nodes of shard 0 leave `hot`, those of shard 1
/// join it, and every node has to learn both.
fn policy_change(sim: &mut Sim, n: usize, about: &str, series: &mut Series) -> Result<(), String> {
    let shard = |i: usize| (i % 10).to_string();
    let policy = |s: &str| Command::AddPolicy {
        name: "hot".into(),
        tribe: "hot".into(),
        when: format!("facts.shard == \"{s}\""),
    };
    for i in 0..n {
        let fact = Command::SetFact {
            key: "shard".into(),
            value: shard(i),
        };
        sim.command(i, fact).map_err(|e| e.to_string())?;
    }
    sim.command(0, policy("0")).map_err(|e| e.to_string())?;
    sim.run_for(Duration::from_secs(20));
    let placed = (0..n)
        .filter(|&i| sim.engine(i).is_some_and(|e| e.in_tribe("hot")))
        .count();
    let (joined, left) = (
        Watch::TribeJoined("hot".into()),
        Watch::TribeLeft("hot".into()),
    );
    sim.watch(joined.clone());
    sim.watch(left.clone());
    sim.command(0, Command::RemovePolicy { name: "hot".into() })
        .map_err(|e| e.to_string())?;
    sim.command(0, policy("1")).map_err(|e| e.to_string())?;
    let movers = |s: usize| (0..n).filter(move |i| i % 10 == s);
    let (joiners, leavers) = (movers(1).count(), movers(0).count());
    *series = Series::new(
        format!("Policy change: {joiners} nodes join a tribe, {leavers} leave it ({about})"),
        "nodes",
        &["t_s", "joined", "left", "nodes_holding_the_whole_change"],
        Some(n as f64),
    );
    let start = sim.now();
    let mut same_at = None;
    // Per sample: time, joiners and leavers done, and each node's state
    // digest (its first 64 bits), to count against the final one after.
    let mut samples: Vec<(f64, usize, usize, Vec<u64>)> = Vec::new();
    while sim.now() < start + Duration::from_secs(60) && same_at.is_none() {
        sim.run_for(Duration::from_millis(100));
        let count = |w: &Watch, s: usize| {
            let seen = sim.seen(w);
            movers(s).filter(|&i| seen[i].is_some()).count()
        };
        let digests: Vec<u64> = (0..n)
            .filter_map(|i| sim.engine(i).map(|e| e.state_digest()))
            .map(|d| u64::from_str_radix(&d[..16], 16).unwrap_or(0))
            .collect();
        if digests.iter().all(|d| *d == digests[0]) {
            same_at = Some(sim.now() - start);
        }
        let t = (sim.now() - start).as_secs_f64();
        samples.push((t, count(&joined, 1), count(&left, 0), digests));
    }
    // The final state is the one most nodes hold at the end (all of them,
    // when the change converged).
    let mut last = samples.last().map(|s| s.3.clone()).unwrap_or_default();
    last.sort_unstable();
    let final_digest = last
        .chunk_by(|a, b| a == b)
        .max_by_key(|run| run.len())
        .map_or(0, |run| run[0]);
    for (t, j, l, digests) in &samples {
        let holding = digests.iter().filter(|d| **d == final_digest).count();
        series.row(&[*t, *j as f64, *l as f64, holding as f64]);
    }
    say!("- before the change: {placed} nodes in tribe hot (shard 0)");
    let pick = |w: &Watch, s: usize| {
        let seen = sim.seen(w);
        movers(s).map(|i| seen[i]).collect::<Vec<_>>()
    };
    print_spread("joined by", &pick(&joined, 1));
    print_spread("left by", &pick(&left, 0));
    // A tribe's live members come sorted.
    let mut expected: Vec<String> = movers(1).map(|i| sim.name(i).to_string()).collect();
    expected.sort();
    let wrong = (0..n)
        .filter(|&i| {
            sim.engine(i)
                .is_some_and(|e| e.tribe("hot").map(|t| t.members).unwrap_or_default() != expected)
        })
        .count();
    say!(
        "- identical state digests on all {n} nodes {} after the change; nodes whose view of tribe hot is not shard 1: {wrong}",
        same_at.map_or("not within 60 s".to_string(), |t| format!("{:.1} s", t.as_secs_f64()))
    );
    Ok(())
}

/// Longest virtual duration taken: a year (virtual time counts µs in 64
/// bits; far longer ones wrapped).
const MAX_SECS: f64 = 365.0 * 24.0 * 3600.0;

fn secs(s: f64) -> Result<Duration, String> {
    if s > MAX_SECS {
        return Err(format!("{s} s is more than a year of virtual time"));
    }
    Duration::try_from_secs_f64(s).map_err(|_| format!("{s} is not a duration in seconds"))
}

/// Runs `limit`, sampling every 10 ms how many of the first `n` nodes saw
/// `w`, until one second after all of them have (a spread takes well
/// under a second; coarser samples would show only a step).
fn sample_spread(sim: &mut Sim, w: &Watch, n: usize, limit: Duration, series: &mut Series) {
    let start = sim.now();
    let mut all_at = None;
    while sim.now() < start + limit {
        sim.run_for(Duration::from_millis(10));
        if all_at.is_some_and(|t| sim.now() > t + Duration::from_secs(1)) {
            continue;
        }
        let seen = sim.seen(w).iter().take(n).filter(|t| t.is_some()).count();
        series.row(&[(sim.now() - start).as_secs_f64(), seen as f64]);
        if seen == n && all_at.is_none() {
            all_at = Some(sim.now());
        }
    }
}

/// Which healthy nodes were declared failed, when, and by whom first.
fn print_first_false_failures(sim: &Sim, before: usize) {
    let mut first: std::collections::BTreeMap<&str, (u64, usize, usize)> = Default::default();
    for (by, name, at) in &sim.false_failures()[before..] {
        let e = first.entry(name.as_str()).or_insert((*at, *by, 0));
        if *at < e.0 {
            (e.0, e.1) = (*at, *by);
        }
        e.2 += 1;
    }
    for (name, (at, by, reports)) in first {
        say!(
            "  - {name}: first declared failed by {} at {:.2} virtual s, {reports} reports",
            sim.name(by),
            at as f64 / 1e6
        );
    }
}

fn print_spread(what: &str, times: &[Option<u64>]) {
    match Spread::of(times) {
        Some(s) => say!(
            "- {what} {}/{} nodes: first {:.2} s, p50 {:.2} s, p99 {:.2} s, p99.99 {:.2} s, last {:.2} s",
            s.seen,
            s.of,
            s.first as f64 / 1e6,
            s.p50 as f64 / 1e6,
            s.p99 as f64 / 1e6,
            s.p9999 as f64 / 1e6,
            s.max as f64 / 1e6
        ),
        None => say!("- {what} no node"),
    }
}

fn traffic_series(title: String) -> Series {
    Series::new(
        title,
        "bytes/s per node",
        &["t_s", "gossip_bytes_per_s", "anti_entropy_bytes_per_s"],
        None,
    )
}

/// Bytes sent by all nodes, sampled into a series of bytes/s per node.
struct TrafficMeter {
    first: [u64; 3],
    last: [u64; 3],
    last_at: Duration,
}

impl TrafficMeter {
    fn total(sim: &Sim) -> [u64; 3] {
        (0..sim.len()).fold([0u64; 3], |[d, s, p], i| {
            let t = sim.traffic(i);
            [d + t.datagram_bytes, s + t.stream_bytes, p + t.datagrams]
        })
    }

    fn new(sim: &Sim) -> TrafficMeter {
        let first = TrafficMeter::total(sim);
        TrafficMeter {
            first,
            last: first,
            last_at: sim.now(),
        }
    }

    fn sample(&mut self, sim: &Sim, start: Duration, series: &mut Series) {
        let now = TrafficMeter::total(sim);
        let span = (sim.now() - self.last_at).as_secs_f64().max(1e-9) * sim.len() as f64;
        let rate = |k: usize| now[k].saturating_sub(self.last[k]) as f64 / span;
        series.row(&[(sim.now() - start).as_secs_f64(), rate(0), rate(1)]);
        self.last = now;
        self.last_at = sim.now();
    }

    fn print(&self, what: &str, sim: &Sim, start: Duration) {
        let measured = (sim.now() - start).as_secs_f64();
        let per = |k: usize| {
            (self.last[k] - self.first[k]) as f64 / measured.max(1e-9) / sim.len() as f64
        };
        say!(
            "- {what} over {measured} s: gossip {:.0} B/s/node, anti-entropy {:.0} B/s/node, {:.1} datagrams/s/node",
            per(0),
            per(1),
            per(2)
        );
    }
}

/// A time series for `--csv` and `--png`.
struct Series {
    title: String,
    y_label: &'static str,
    cols: Vec<&'static str>,
    rows: Vec<Vec<f64>>,
    y_max: Option<f64>,
}

impl Series {
    fn new(
        title: String,
        y_label: &'static str,
        cols: &[&'static str],
        y_max: Option<f64>,
    ) -> Series {
        Series {
            title,
            y_label,
            cols: cols.to_vec(),
            rows: Vec::new(),
            y_max,
        }
    }

    fn row(&mut self, values: &[f64]) {
        self.rows.push(values.to_vec());
    }

    fn write_csv(&self, path: &Path) -> std::io::Result<()> {
        let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
        writeln!(f, "{}", self.cols.join(","))?;
        for r in &self.rows {
            let cells: Vec<String> = r.iter().map(|v| format!("{v:.3}")).collect();
            writeln!(f, "{}", cells.join(","))?;
        }
        f.flush()
    }

    fn write_png(&self, path: &Path) -> Result<(), String> {
        plot::write_png(
            path,
            &plot::Chart {
                title: &self.title,
                x_label: "virtual seconds",
                y_label: self.y_label,
                lines: &self.cols[1..],
                rows: &self.rows,
                y_max: self.y_max,
            },
        )
    }
}
