//! Membership benchmark: how fast SWIM membership converges and how much it
//! costs at rest, with N nodes in one process on 127.0.0.1.
//!
//! For each cluster size (a fresh cluster every time) it measures:
//! 1. formation: every node seeded with node 0, until all see N alive;
//! 2. join seen by all: one extra node starts, until every other node counts
//!    N + 1 alive;
//! 3. crash seen by all: one node is aborted (no goodbye), until every
//!    remaining node lists it as failed;
//! 4. bytes/s per node at rest: counters sampled over a quiet window after
//!    the crash (the table), and the same window before it (the notes).
//!
//! It prints a markdown table, never asserts on timings. Caveats: all nodes
//! start together, so their push-pull timers fire in waves; a window shorter
//! than the push-pull interval (15 s, more above 32 nodes) catches zero or one
//! wave, so use `--rest-secs 30` or more for a stable push-pull rate. Stream
//! bytes are counted when queued, so dials to the crashed node count too.
//!
//! ```text
//! cargo bench --bench membership -- [--sizes 16,32,64] [--profile local|lan|wan]
//!     [--rest-secs 10] [--timeout-secs 120] [--settle-secs 3]
//! ```
//!
//! Logs go to stderr (`RUST_LOG`, default `warn`), progress too; the table
//! goes to stdout.

mod common;

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use tribe::{Config, Event, EventStream, MemberState, Node, Profile, Timings};

/// Condition checks while waiting: fine enough to resolve sub-second
/// dissemination, coarse enough not to steal the 2 cores from the nodes.
const POLL: Duration = Duration::from_millis(20);
/// Sampling of member states during the rest window, for false suspicions;
/// rarer than `POLL` because it walks every member list of every node.
const REST_SAMPLE: Duration = Duration::from_millis(250);
/// Upper bound on waiting for gossip backlogs to drain between phases; a
/// backlog that never drains must not stall the run.
const SETTLE_LIMIT: Duration = Duration::from_secs(30);
/// Upper bound on shutting a whole cluster down (graceful leaves run in parallel).
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(30);

/// Command-line options.
struct Opts {
    sizes: Vec<usize>,
    profile: Profile,
    profile_name: String,
    rest: Duration,
    timeout: Duration,
    settle: Duration,
}

const USAGE: &str = "usage: membership [--sizes 16,32,64] [--profile local|lan|wan] \
[--rest-secs 10] [--timeout-secs 120] [--settle-secs 3]";

fn parse_opts(args: impl Iterator<Item = String>) -> Result<Opts, String> {
    let mut opts = Opts {
        sizes: vec![16, 32, 64],
        profile: Profile::Local,
        profile_name: "local".into(),
        rest: Duration::from_secs(10),
        timeout: Duration::from_secs(120),
        settle: Duration::from_secs(3),
    };
    let mut args = args.peekable();
    while let Some(arg) = args.next() {
        // `--name=value` and `--name value` are both accepted.
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => (arg.clone(), None),
        };
        let mut value = || -> Result<String, String> {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        let secs = |v: String| -> Result<Duration, String> {
            let s: f64 = v
                .parse()
                .map_err(|_| format!("{name}: {v:?} is not a number"))?;
            if !(s.is_finite() && s > 0.0) {
                return Err(format!("{name} must be positive"));
            }
            Ok(Duration::from_secs_f64(s))
        };
        match name.as_str() {
            // cargo passes `--bench` to harness-less bench targets.
            "--bench" => {}
            "--sizes" => {
                let v = value()?;
                opts.sizes = v
                    .split(',')
                    .map(|s| match s.trim().parse::<usize>() {
                        Ok(n) if n >= 3 => Ok(n),
                        _ => Err(format!("--sizes: {s:?} is not a size of at least 3")),
                    })
                    .collect::<Result<_, _>>()?;
            }
            "--profile" => {
                let v = value()?;
                opts.profile = v.parse().map_err(|e| format!("--profile: {e}"))?;
                opts.profile_name = v;
            }
            "--rest-secs" => opts.rest = secs(value()?)?,
            "--timeout-secs" => opts.timeout = secs(value()?)?,
            "--settle-secs" => opts.settle = secs(value()?)?,
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    Ok(opts)
}

/// Outcome of one timed phase.
#[derive(Clone, Copy)]
enum Phase {
    Done(Duration),
    Timeout,
    /// Not run because an earlier phase failed.
    Skipped,
}

impl Phase {
    fn from_wait(w: Option<Duration>) -> Phase {
        w.map_or(Phase::Timeout, Phase::Done)
    }

    fn cell(self) -> String {
        match self {
            Phase::Done(d) => format!("{:.2}", d.as_secs_f64()),
            Phase::Timeout => "timeout".into(),
            Phase::Skipped => "-".into(),
        }
    }
}

/// Per-node rates over the rest window.
struct Rest {
    secs: f64,
    live: usize,
    gossip_bps: f64,
    stream_bps: f64,
    packets_ps: f64,
    frames_ps: f64,
    push_pulls_completed: u64,
    push_pulls_failed: u64,
    /// Samples in which some node saw a live member as suspect or down.
    suspect_samples: usize,
    samples: usize,
}

/// What one cluster size produced: the table row and notes on the side.
struct Outcome {
    n: usize,
    form: Phase,
    join: Phase,
    crash: Phase,
    rest: Option<Rest>,
    /// The same window before the crash, without a failed member to retry.
    rest_healthy: Option<Rest>,
    /// Per node, when it first met each phase's condition: shows whether a
    /// slow phase is a slow bulk or a few stragglers.
    form_spread: Vec<Option<Duration>>,
    join_spread: Vec<Option<Duration>>,
    crash_spread: Vec<Option<Duration>>,
    /// Time until the joiner itself saw N + 1 alive.
    join_self: Option<Duration>,
    /// `MemberFailed` events about nodes that were never crashed.
    false_failures: BTreeSet<String>,
    false_failure_events: usize,
    isolated_events: usize,
    /// Longest single poll over all nodes (how much the harness itself costs).
    max_poll: Duration,
    error: Option<String>,
}

/// One started node and its event stream (drained so it never piles up).
struct Member {
    node: Node,
    events: EventStream,
}

/// The nodes of one run plus what was observed on their event streams.
struct Cluster {
    members: Vec<Member>,
    /// Index of the aborted node, once aborted.
    victim: Option<usize>,
    false_failures: BTreeSet<String>,
    false_failure_events: usize,
    isolated_events: usize,
    max_poll: Duration,
}

impl Cluster {
    fn live(&self) -> impl Iterator<Item = &Node> {
        let victim = self.victim;
        self.members
            .iter()
            .enumerate()
            .filter(move |(i, _)| Some(*i) != victim)
            .map(|(_, m)| &m.node)
    }

    fn victim_name(&self) -> Option<&str> {
        self.victim.map(|i| self.members[i].node.name())
    }

    /// Reads pending events; a failure of anyone but the victim is false.
    fn drain_events(&mut self) {
        let victim = self.victim_name().map(str::to_owned);
        for m in &mut self.members {
            while let Some(ev) = m.events.try_next() {
                match ev {
                    Event::MemberFailed { name } if Some(&name) != victim.as_ref() => {
                        self.false_failure_events += 1;
                        self.false_failures.insert(name);
                    }
                    Event::Isolated => self.isolated_events += 1,
                    _ => {}
                }
            }
        }
    }

    async fn start(&mut self, cfg: Config) -> Result<(), String> {
        let name = cfg.name.clone();
        let node = Node::start(cfg)
            .await
            .map_err(|e| format!("starting {name}: {e}"))?;
        let events = node.events();
        self.members.push(Member { node, events });
        Ok(())
    }

    /// Polls `cond` every [`POLL`] until it holds or `limit` has passed since
    /// `since`; returns the time since `since`. Events are drained meanwhile.
    async fn wait_until(
        &mut self,
        since: Instant,
        limit: Duration,
        mut cond: impl FnMut(&Cluster) -> bool,
    ) -> Option<Duration> {
        loop {
            self.drain_events();
            let t = Instant::now();
            let ok = cond(self);
            self.max_poll = self.max_poll.max(t.elapsed());
            if ok {
                return Some(since.elapsed());
            }
            if since.elapsed() > limit {
                return None;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until no node has gossip left to spread (bounded), then a fixed
    /// pause, so the next phase starts from a quiet cluster.
    async fn settle(&mut self, limit: Duration, pause: Duration) {
        let since = Instant::now();
        let _ = self
            .wait_until(since, limit, |c| {
                c.live().all(|n| n.broadcast_backlog() == 0)
            })
            .await;
        let until = Instant::now() + pause;
        while Instant::now() < until {
            self.drain_events();
            tokio::time::sleep(POLL).await;
        }
        self.drain_events();
    }

    /// Graceful shutdown of every live node in parallel, bounded; anything
    /// still running afterwards is stopped when its last handle drops.
    async fn shutdown(self) {
        let mut set = JoinSet::new();
        for node in self.live() {
            let node = node.clone();
            set.spawn(async move {
                let _ = node.shutdown().await;
            });
        }
        let all = async { while set.join_next().await.is_some() {} };
        if tokio::time::timeout(SHUTDOWN_LIMIT, all).await.is_err() {
            eprintln!("  shutdown did not finish within {SHUTDOWN_LIMIT:?}; dropping the nodes");
        }
    }
}

fn node_config(opts: &Opts, name: String, seed: Option<std::net::SocketAddr>) -> Config {
    let mut cfg = Config::new(name);
    cfg.profile = opts.profile;
    // Host facts are irrelevant here and cost a /proc walk per node.
    cfg.collect_facts = false;
    cfg.seeds = seed.into_iter().collect();
    cfg
}

/// Runs the four phases on a fresh cluster of `n` nodes.
async fn run_size(opts: &Opts, n: usize) -> Outcome {
    let mut c = Cluster {
        members: Vec::with_capacity(n + 1),
        victim: None,
        false_failures: BTreeSet::new(),
        false_failure_events: 0,
        isolated_events: 0,
        max_poll: Duration::ZERO,
    };
    let mut out = Outcome {
        n,
        form: Phase::Skipped,
        join: Phase::Skipped,
        crash: Phase::Skipped,
        rest: None,
        rest_healthy: None,
        form_spread: Vec::new(),
        join_spread: Vec::new(),
        crash_spread: Vec::new(),
        join_self: None,
        false_failures: BTreeSet::new(),
        false_failure_events: 0,
        isolated_events: 0,
        max_poll: Duration::ZERO,
        error: None,
    };
    if let Err(e) = phases(opts, n, &mut c, &mut out).await {
        eprintln!("  N={n}: {e}");
        out.error = Some(e);
    }
    out.false_failures = std::mem::take(&mut c.false_failures);
    out.false_failure_events = c.false_failure_events;
    out.isolated_events = c.isolated_events;
    out.max_poll = c.max_poll;
    c.shutdown().await;
    out
}

async fn phases(opts: &Opts, n: usize, c: &mut Cluster, out: &mut Outcome) -> Result<(), String> {
    // 1. Formation, timed from the first start: starting is part of forming.
    let t0 = Instant::now();
    for i in 0..n {
        let seed = c.members.first().map(|m| m.node.addr());
        c.start(node_config(opts, format!("n{i}"), seed)).await?;
    }
    let mut spread = vec![None; n];
    let formed = c
        .wait_until(t0, opts.timeout, |c| {
            mark(&mut spread, t0, c.live().map(|x| x.members_alive() == n))
        })
        .await;
    out.form = Phase::from_wait(formed);
    out.form_spread = spread;
    eprintln!("  N={n}: form {}", out.form.cell());
    if !matches!(out.form, Phase::Done(_)) {
        return Ok(());
    }
    c.settle(opts.timeout.min(SETTLE_LIMIT), opts.settle).await;

    // 2. Join seen by all the others.
    let t1 = Instant::now();
    let seed = c.members[0].node.addr();
    c.start(node_config(opts, format!("n{n}"), Some(seed)))
        .await?;
    let mut join_self = None;
    let mut spread = vec![None; n];
    let joined = c
        .wait_until(t1, opts.timeout, |c| {
            let (old, new) = c.members.split_at(n);
            if join_self.is_none() && new[0].node.members_alive() == n + 1 {
                join_self = Some(t1.elapsed());
            }
            mark(
                &mut spread,
                t1,
                old.iter().map(|m| m.node.members_alive() == n + 1),
            )
        })
        .await;
    out.join = Phase::from_wait(joined);
    out.join_self = join_self;
    out.join_spread = spread;
    eprintln!("  N={n}: join seen by all {}", out.join.cell());
    c.settle(opts.timeout.min(SETTLE_LIMIT), opts.settle).await;

    // A healthy rest window too: after the crash every node keeps dialling
    // the dead one (reconnect), which the table's window includes.
    out.rest_healthy = Some(rest_window(opts, c, None).await);

    // 3. Crash of a node that is neither the seed nor the joiner.
    let victim = n / 2;
    let victim_name = c.members[victim].node.name().to_owned();
    let t2 = Instant::now();
    c.members[victim].node.abort().await;
    c.victim = Some(victim);
    let mut spread = vec![None; n];
    let crashed = c
        .wait_until(t2, opts.timeout, |c| {
            let failed = c.live().map(|node| {
                node.members()
                    .iter()
                    .any(|m| m.name == victim_name && m.state == MemberState::Failed)
            });
            mark(&mut spread, t2, failed)
        })
        .await;
    out.crash = Phase::from_wait(crashed);
    out.crash_spread = spread;
    eprintln!("  N={n}: crash seen by all {}", out.crash.cell());
    c.settle(opts.timeout.min(SETTLE_LIMIT), opts.settle).await;

    // 4. Rest: counter deltas of the live nodes over a quiet window.
    out.rest = Some(rest_window(opts, c, Some(&victim_name)).await);
    Ok(())
}

/// Records, per node, the first poll at which its condition held; true once
/// every node's has (a node that flaps back still counts as having seen it).
fn mark(
    spread: &mut [Option<Duration>],
    since: Instant,
    holds: impl Iterator<Item = bool>,
) -> bool {
    for (slot, ok) in spread.iter_mut().zip(holds) {
        if ok && slot.is_none() {
            *slot = Some(since.elapsed());
        }
    }
    spread.iter().all(Option::is_some)
}

/// "first / median / p90 / last (k of m)" of per-node times.
fn describe_spread(spread: &[Option<Duration>]) -> String {
    let mut t: Vec<f64> = spread.iter().flatten().map(Duration::as_secs_f64).collect();
    if t.is_empty() {
        return "none".into();
    }
    t.sort_by(f64::total_cmp);
    let at = |q: f64| t[((t.len() - 1) as f64 * q).round() as usize];
    format!(
        "{:.2}/{:.2}/{:.2}/{:.2} s ({} of {})",
        t[0],
        at(0.5),
        at(0.9),
        t[t.len() - 1],
        t.len(),
        spread.len()
    )
}

async fn rest_window(opts: &Opts, c: &mut Cluster, victim: Option<&str>) -> Rest {
    let before: Vec<_> = c.live().map(Node::counters).collect();
    let start = Instant::now();
    let (mut samples, mut suspect_samples) = (0usize, 0usize);
    while start.elapsed() < opts.rest {
        tokio::time::sleep(REST_SAMPLE.min(opts.rest.saturating_sub(start.elapsed()))).await;
        c.drain_events();
        samples += 1;
        let t = Instant::now();
        let suspicious = c.live().any(|node| {
            node.members()
                .iter()
                .any(|m| Some(m.name.as_str()) != victim && m.state != MemberState::Alive)
        });
        c.max_poll = c.max_poll.max(t.elapsed());
        suspect_samples += usize::from(suspicious);
    }
    let after: Vec<_> = c.live().map(Node::counters).collect();
    let secs = start.elapsed().as_secs_f64();
    let live = after.len();
    let sum = |f: fn(&tribe::counters::Counters) -> u64| -> u64 {
        before
            .iter()
            .zip(&after)
            .map(|(b, a)| f(a).saturating_sub(f(b)))
            .sum()
    };
    let per_node = |total: u64| total as f64 / live as f64 / secs;
    Rest {
        secs,
        live,
        gossip_bps: per_node(sum(|c| c.datagram_bytes_out)),
        stream_bps: per_node(sum(|c| c.frame_bytes_out)),
        packets_ps: per_node(sum(|c| c.datagrams_out)),
        frames_ps: per_node(sum(|c| c.frames_out)),
        push_pulls_completed: sum(|c| c.push_pulls_completed),
        push_pulls_failed: sum(|c| c.push_pulls_failed),
        suspect_samples,
        samples,
    }
}

fn describe_timings(t: &Timings) -> String {
    format!(
        "probe {:?}/rtt {:?}, indirect {}, suspicion ×{}, retransmit ×{}, gossip {:?}×{}, \
         push-pull {:?} (≤ 32 nodes), reconnect {:?}",
        t.probe_period,
        t.probe_rtt,
        t.indirect_probes,
        t.suspicion_mult,
        t.retransmit_mult,
        t.gossip_interval,
        t.gossip_fanout,
        t.push_pull_interval,
        t.reconnect_interval,
    )
}

/// First line of a /proc file, trimmed, or "?" when unreadable.
fn proc_line(path: &str) -> String {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.lines().next().map(|l| l.trim().to_owned()))
        .unwrap_or_else(|| "?".into())
}

fn header(opts: &Opts) -> String {
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!(
        "profile {} ({}); rest window {:?}, poll {:?}, phase timeout {:?}, settle {:?}; \
         machine: nproc {}, {}, kernel {}, loadavg {}",
        opts.profile_name,
        describe_timings(&opts.profile.timings()),
        opts.rest,
        POLL,
        opts.timeout,
        opts.settle,
        nproc,
        common::cpu_model(),
        proc_line("/proc/sys/kernel/osrelease"),
        proc_line("/proc/loadavg"),
    )
}

fn report(outcomes: &[Outcome]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| N | form (s) | join seen by all (s) | crash seen by all (s) | gossip B/s/node \
         | push-pull B/s/node | packets/s/node |"
    );
    let _ = writeln!(s, "|---:|---:|---:|---:|---:|---:|---:|");
    for o in outcomes {
        let (g, p, k) = match &o.rest {
            Some(r) => (
                format!("{:.0}", r.gossip_bps),
                format!("{:.0}", r.stream_bps),
                format!("{:.1}", r.packets_ps),
            ),
            None => ("-".into(), "-".into(), "-".into()),
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {g} | {p} | {k} |",
            o.n,
            o.form.cell(),
            o.join.cell(),
            o.crash.cell(),
        );
    }
    let _ = writeln!(s);
    let secs = |d: Option<Duration>| d.map_or("-".into(), |d| format!("{:.2} s", d.as_secs_f64()));
    for o in outcomes {
        let mut line = format!(
            "- N={}: per-node first/median/p90/last: form {}, join {}, crash {}; \
             joiner saw N+1 alive after {}; \
             false failures {} ({} events){}; isolated events {}; longest poll {:.1} ms",
            o.n,
            describe_spread(&o.form_spread),
            describe_spread(&o.join_spread),
            describe_spread(&o.crash_spread),
            secs(o.join_self),
            o.false_failures.len(),
            o.false_failure_events,
            if o.false_failures.is_empty() {
                String::new()
            } else {
                format!(
                    " [{}]",
                    o.false_failures
                        .iter()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(",")
                )
            },
            o.isolated_events,
            o.max_poll.as_secs_f64() * 1e3,
        );
        if let Some(e) = &o.error {
            let _ = write!(line, "; error: {e}");
        }
        let _ = writeln!(s, "{line}");
        if let Some(r) = &o.rest_healthy {
            let _ = writeln!(
                s,
                "  - {}",
                describe_rest("healthy rest (before the crash)", r)
            );
        }
        if let Some(r) = &o.rest {
            let _ = writeln!(
                s,
                "  - {}",
                describe_rest(
                    "table's rest (after the crash, failed node still listed)",
                    r
                )
            );
        }
    }
    s
}

fn describe_rest(label: &str, r: &Rest) -> String {
    format!(
        "{label}: {:.1} s over {} live nodes: gossip {:.0} B/s/node, push-pull {:.0} B/s/node, \
         {:.1} packets/s/node, {:.2} frames/s/node, push-pull ends {} completed / {} failed, \
         samples with a live member not alive {}/{}",
        r.secs,
        r.live,
        r.gossip_bps,
        r.stream_bps,
        r.packets_ps,
        r.frames_ps,
        r.push_pulls_completed,
        r.push_pulls_failed,
        r.suspect_samples,
        r.samples,
    )
}

fn main() {
    let opts = match parse_opts(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    // Two workers, as on the target machine: the nodes share them like real
    // agents would share a small host.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("building the tokio runtime");
    let head = header(&opts);
    eprintln!("{head}");
    let outcomes = rt.block_on(async {
        let mut outcomes = Vec::new();
        for &n in &opts.sizes {
            eprintln!("N={n}: starting");
            outcomes.push(run_size(&opts, n).await);
            // Let stray datagrams to closed ports die before the next size.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        outcomes
    });
    // Stream tasks of stopped nodes may linger up to their lifetime; do not wait.
    rt.shutdown_timeout(Duration::from_secs(2));
    println!("{head}\n");
    print!("{}", report(&outcomes));
    println!();
    print!("{}", result_lines(&outcomes));
}

/// One line per size for scripts (`scripts/bench-memberlist` reads them):
/// `result n=16 join=0.43 crash=7.10 bps=1234 false=0`, times in seconds
/// (`nan` when the phase did not finish), bytes/s per node over the
/// healthy rest window (gossip + push-pull), false failures as events.
fn result_lines(outcomes: &[Outcome]) -> String {
    let secs = |p: Phase| match p {
        Phase::Done(d) => format!("{:.3}", d.as_secs_f64()),
        Phase::Timeout | Phase::Skipped => "nan".into(),
    };
    let mut s = String::new();
    for o in outcomes {
        let bps = o.rest_healthy.as_ref().map_or("nan".into(), |r| {
            format!("{:.0}", r.gossip_bps + r.stream_bps)
        });
        let _ = writeln!(
            s,
            "result n={} join={} crash={} bps={bps} false={}",
            o.n,
            secs(o.join),
            secs(o.crash),
            o.false_failure_events,
        );
    }
    s
}
