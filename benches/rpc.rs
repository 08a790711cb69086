//! RPC benchmark: what a remote plugin call costs over real loopback sockets,
//! next to the physical limit of a request/response over the same loopback.
//!
//! Paths, all in one run so the ratios between them are fair:
//! - `raw tcp`: a plain tokio TCP echo server with a 4-byte length prefix;
//!   concurrency c is c connections, each doing request → response in turn;
//! - `rpc plaintext`: two nodes in this process, a host that serves an
//!   `echo` processor in tribe `bench` (a member by hand) and a caller that
//!   is not a member, so every call goes over the pooled call stream to the
//!   host; concurrency c is c tokio tasks calling in a loop;
//! - `rpc sealed`: the same with both nodes holding one key (mode `require`).
//!
//! Each row: payloads of 100 B and 64 KiB, concurrency 1, 16 and 256, a
//! warm-up of 0.5 s then 3 s measured (0.1 s and 0.5 s with `--quick`).
//! Calls that start in the measured window count; latencies go to an
//! hdrhistogram. Rows are interleaved (raw, plaintext, sealed for each
//! payload and concurrency) so drift of the machine hits all paths alike.
//! It prints a markdown table and never asserts on timings.
//!
//! ```text
//! cargo bench --bench rpc -- [--quick] [--small | --large]
//! ```
//!
//! `--small` keeps the rows the C ABI benchmark (`scripts/bench-c`) compares
//! with: 100 B payloads at concurrency 1 and 16. In one process the tokio
//! runtime has a worker per core, or `TRIBE_BENCH_WORKERS`. `--large` keeps the 64 KiB
//! rows, for profiling the large-payload path.
//!
//! Apart, the host and the caller run in two processes, as two daemons of a
//! tribe would, each with one tokio worker (`TRIBE_BENCH_WORKERS`):
//! `--host` starts the host alone, prints "ADDRESS PID" and serves until its
//! standard input ends; `--caller ADDRESS PID` runs the 100 B rows at
//! concurrency 1 and 16 against it, with the CPU and switch columns over
//! both processes. `TRIBE_BENCH_KEY` (a key of `tribe keygen`) seals both,
//! and the rows are then `rpc sealed`.
//!
//! ```text
//! cargo bench --bench rpc -- --host
//! cargo bench --bench rpc -- --caller ADDRESS PID [--quick]
//! ```
//!
//! Logs go to stderr (`RUST_LOG`, default `warn`), progress too; the table
//! goes to stdout.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tribe::{CallTarget, Config, Keyring, Node, PluginKind, Profile, SecretKey};

const USAGE: &str =
    "usage: rpc [--quick] [--small | --large] | rpc --host | rpc --caller ADDRESS PID [--quick]";
const PAYLOADS: [usize; 2] = [100, 64 * 1024];
const CONCURRENCY: [usize; 3] = [1, 16, 256];
const TRIBE: &str = "bench";
const PLUGIN: &str = "echo";
/// Far above any latency seen here, so a slow call is measured, not an error.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Upper bound on forming the cluster and seeing the endpoint.
const SETUP_LIMIT: Duration = Duration::from_secs(30);
/// Upper bound on a graceful node shutdown at the end.
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(5);
/// Pause after a failed call, so a path that fails at once does not spin
/// and starve the other tasks; the error is still counted.
const ERROR_BACKOFF: Duration = Duration::from_millis(1);
/// Frames the raw echo server accepts; anything larger is a broken client.
const RAW_MAX_FRAME: usize = 1 << 20;
/// Read buffer of raw connections: one syscall can take a whole frame.
const RAW_READ_BUF: usize = 128 * 1024;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Path {
    Raw,
    Plaintext,
    Sealed,
    /// Plaintext calls from threads that block on them (`call_blocking`).
    PlaintextThreads,
    /// Sealed calls from threads that block on them.
    SealedThreads,
}

impl Path {
    fn label(self) -> &'static str {
        match self {
            Path::Raw => "raw tcp",
            Path::Plaintext => "rpc plaintext",
            Path::Sealed => "rpc sealed",
            Path::PlaintextThreads => "rpc plaintext threads",
            Path::SealedThreads => "rpc sealed threads",
        }
    }

    /// Whether its callers are threads that block on each call.
    fn blocks(self) -> bool {
        matches!(self, Path::PlaintextThreads | Path::SealedThreads)
    }

    /// The same calls made from threads that block on them.
    fn on_threads(self) -> Path {
        match self {
            Path::Plaintext => Path::PlaintextThreads,
            Path::Sealed => Path::SealedThreads,
            other => other,
        }
    }
}

/// One caller's way to make a call.
enum Client {
    Rpc {
        node: Node,
        target: CallTarget,
    },
    /// A thread of its own that blocks on each call, as a C or Python
    /// host's thread does (`Node::call_blocking`).
    Thread {
        node: Node,
        target: CallTarget,
    },
    Tcp {
        addr: SocketAddr,
        /// Opened on the first call (in the warm-up) and again after an error.
        conn: Option<BufReader<TcpStream>>,
        /// Length prefix plus payload, built once: the raw path copies
        /// nothing per call beyond what the kernel does.
        frame: Vec<u8>,
        reply: Vec<u8>,
    },
}

impl Client {
    /// A caller of `path` (not the raw one) through `node`.
    fn rpc(path: Path, node: Node) -> Client {
        let target = target();
        if path.blocks() {
            Client::Thread { node, target }
        } else {
            Client::Rpc { node, target }
        }
    }

    fn tcp(addr: SocketAddr, payload: &[u8]) -> Client {
        let mut frame = Vec::with_capacity(4 + payload.len());
        frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        frame.extend_from_slice(payload);
        Client::Tcp {
            addr,
            conn: None,
            frame,
            reply: Vec::with_capacity(payload.len()),
        }
    }

    /// One request/response; the reply must have the payload's length.
    async fn call(&mut self, payload: &[u8]) -> Result<(), String> {
        match self {
            // `run_row` gives a thread caller a thread of its own; here it
            // would call as a task.
            Client::Rpc { node, target } | Client::Thread { node, target } => {
                // `call` takes the payload by value, so every caller pays this copy.
                let reply = node
                    .call(target, payload.to_vec(), CALL_TIMEOUT)
                    .await
                    .map_err(|e| format!("call failed: {e}"))?;
                check_len(reply.len(), payload.len())
            }
            Client::Tcp {
                addr,
                conn,
                frame,
                reply,
            } => {
                if conn.is_none() {
                    let s = TcpStream::connect(*addr)
                        .await
                        .map_err(|e| format!("connect: {e}"))?;
                    let _ = s.set_nodelay(true);
                    *conn = Some(BufReader::with_capacity(RAW_READ_BUF, s));
                }
                let Some(s) = conn.as_mut() else {
                    return Err("no connection".into());
                };
                let result = raw_round_trip(s, frame, reply).await;
                if result.is_err() {
                    // The stream state is unknown after an error: start afresh.
                    *conn = None;
                }
                result.map_err(|e| format!("raw tcp: {e}"))?;
                check_len(reply.len(), payload.len())
            }
        }
    }
}

fn check_len(got: usize, want: usize) -> Result<(), String> {
    if got == want {
        Ok(())
    } else {
        Err(format!("reply of {got} bytes to a payload of {want}"))
    }
}

async fn raw_round_trip(
    s: &mut BufReader<TcpStream>,
    frame: &[u8],
    reply: &mut Vec<u8>,
) -> std::io::Result<()> {
    // BufReader passes writes straight to the socket.
    s.write_all(frame).await?;
    let mut header = [0u8; 4];
    s.read_exact(&mut header).await?;
    let len = u32::from_be_bytes(header) as usize;
    if len > RAW_MAX_FRAME {
        return Err(std::io::Error::other("oversized reply"));
    }
    reply.resize(len, 0);
    s.read_exact(reply).await?;
    Ok(())
}

/// The raw baseline's server: echoes each length-prefixed frame back, one
/// task per connection, in a single write per reply.
async fn start_raw_echo() -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((s, _)) => {
                    tokio::spawn(raw_echo_conn(s));
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    eprintln!("raw echo: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    });
    Ok(addr)
}

async fn raw_echo_conn(s: TcpStream) {
    let _ = s.set_nodelay(true);
    let mut s = BufReader::with_capacity(RAW_READ_BUF, s);
    let mut buf = Vec::new();
    loop {
        let mut header = [0u8; 4];
        if s.read_exact(&mut header).await.is_err() {
            return;
        }
        let len = u32::from_be_bytes(header) as usize;
        if len > RAW_MAX_FRAME {
            return;
        }
        buf.clear();
        buf.extend_from_slice(&header);
        buf.resize(4 + len, 0);
        if s.read_exact(&mut buf[4..]).await.is_err() || s.write_all(&buf).await.is_err() {
            return;
        }
    }
}

/// What one caller task saw.
struct Tally {
    /// Latencies in ns of the calls that started in the measured window.
    latencies: Vec<u64>,
    errors: u64,
    first_error: Option<String>,
    /// When its last call ended.
    finished: Option<Instant>,
    /// Context switches of a caller thread of its own over its life: the
    /// row's count at the end of the warm-up holds its switches until then,
    /// and once it has ended the count at the end no longer holds any.
    own_switches: u64,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            latencies: Vec::with_capacity(4096),
            errors: 0,
            first_error: None,
            finished: None,
            own_switches: 0,
        }
    }

    /// Counts a call that began at `started` and ended now; false if it
    /// failed (the caller then backs off).
    fn record(&mut self, started: Instant, outcome: Result<(), String>, warm_end: Instant) -> bool {
        let done = Instant::now();
        self.finished = Some(done);
        match outcome {
            Ok(()) => {
                if started >= warm_end {
                    self.latencies.push((done - started).as_nanos() as u64);
                }
                true
            }
            // Errors count in the warm-up too: any failed call is news.
            Err(e) => {
                self.errors += 1;
                self.first_error.get_or_insert(e);
                false
            }
        }
    }
}

/// Calls in a loop until `end`; calls that start before `warm_end` only warm up.
async fn caller_task(
    mut client: Client,
    payload: Arc<Vec<u8>>,
    warm_end: Instant,
    end: Instant,
) -> Tally {
    let mut t = Tally::new();
    loop {
        let started = Instant::now();
        if started >= end {
            break;
        }
        let outcome = client.call(&payload).await;
        if !t.record(started, outcome, warm_end) {
            tokio::time::sleep(ERROR_BACKOFF).await;
        }
    }
    t
}

/// Like [`caller_task`], on a thread of its own that blocks on each call
/// (`Node::call_blocking` under `Handle::block_on`, as a C host's thread
/// calls `tribe_node_call`).
async fn caller_thread(
    node: Node,
    target: CallTarget,
    payload: Arc<Vec<u8>>,
    warm_end: Instant,
    end: Instant,
) -> Tally {
    let rt = tokio::runtime::Handle::current();
    let thread = std::thread::spawn(move || {
        let mut t = Tally::new();
        loop {
            let started = Instant::now();
            if started >= end {
                break;
            }
            let outcome = rt
                .block_on(node.call_blocking(&target, payload.to_vec(), CALL_TIMEOUT))
                .map_err(|e| format!("call failed: {e}"))
                .and_then(|reply| check_len(reply.len(), payload.len()));
            if !t.record(started, outcome, warm_end) {
                std::thread::sleep(ERROR_BACKOFF);
            }
        }
        t.own_switches =
            task_switches(std::path::Path::new("/proc/thread-self/status")).unwrap_or(0);
        t
    });
    match tokio::task::spawn_blocking(move || thread.join()).await {
        Ok(Ok(t)) => t,
        _ => {
            let mut t = Tally::new();
            t.record(end, Err("caller thread died".into()), end);
            t
        }
    }
}

/// One line of the table.
struct Row {
    path: Path,
    payload: usize,
    concurrency: usize,
    calls: u64,
    /// From the end of the warm-up to the end of the last call.
    elapsed: Duration,
    /// Latencies in ns.
    hist: Histogram<u64>,
    errors: u64,
    first_error: Option<String>,
    /// CPU seconds the process used from the end of the warm-up on.
    cpu: Option<f64>,
    /// Context switches of the process's threads over the same time.
    switches: Option<u64>,
}

impl Row {
    fn calls_per_s(&self) -> f64 {
        self.calls as f64 / self.elapsed.as_secs_f64()
    }

    /// Process CPU per call (every thread of the run), in µs.
    fn cpu_us_per_call(&self) -> f64 {
        self.cpu
            .map_or(f64::NAN, |cpu| cpu * 1e6 / self.calls.max(1) as f64)
    }

    /// Context switches per call (every thread of the run).
    fn switches_per_call(&self) -> f64 {
        self.switches
            .map_or(f64::NAN, |n| n as f64 / self.calls.max(1) as f64)
    }

    /// Payload megabytes (10^6 bytes) per second, one way.
    fn mb_per_s(&self) -> f64 {
        self.calls_per_s() * self.payload as f64 / 1e6
    }

    fn quantile_us(&self, q: f64) -> f64 {
        if self.hist.is_empty() {
            return f64::NAN;
        }
        self.hist.value_at_quantile(q) as f64 / 1e3
    }
}

struct Timing {
    warm: Duration,
    window: Duration,
}

async fn run_row(path: Path, payload_len: usize, clients: Vec<Client>, timing: &Timing) -> Row {
    let concurrency = clients.len();
    let payload = Arc::new(pattern(payload_len));
    let start = Instant::now();
    let warm_end = start + timing.warm;
    let end = warm_end + timing.window;
    let mut set = JoinSet::new();
    for client in clients {
        match client {
            Client::Thread { node, target } => {
                set.spawn(caller_thread(node, target, payload.clone(), warm_end, end))
            }
            client => set.spawn(caller_task(client, payload.clone(), warm_end, end)),
        };
    }
    // 1 ns .. 60 s at 3 significant digits; one histogram per row, filled
    // after the run so no task shares it while calling.
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)
        .expect("building a latency histogram");
    tokio::time::sleep_until(warm_end.into()).await;
    let cpu_before = process_cpu_secs();
    let switches_before = process_switches();
    let mut row_errors = 0;
    let mut first_error = None;
    let mut last = end;
    let mut calls = 0u64;
    let mut own_switches = 0;
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok(t) => {
                own_switches += t.own_switches;
                for &ns in &t.latencies {
                    hist.saturating_record(ns);
                }
                calls += t.latencies.len() as u64;
                row_errors += t.errors;
                if first_error.is_none() {
                    first_error = t.first_error;
                }
                if let Some(f) = t.finished {
                    last = last.max(f);
                }
            }
            Err(e) => {
                row_errors += 1;
                first_error.get_or_insert(format!("caller task died: {e}"));
            }
        }
    }
    let cpu = process_cpu_secs()
        .zip(cpu_before)
        .map(|(after, before)| after - before);
    let switches = process_switches()
        .zip(switches_before)
        .map(|(after, before)| (after + own_switches).saturating_sub(before));
    Row {
        path,
        payload: payload_len,
        concurrency,
        calls,
        elapsed: last - warm_end,
        hist,
        errors: row_errors,
        first_error,
        cpu,
        switches,
    }
}

/// The host's process in a run apart: its CPU and switches count too.
static HOST_PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();

/// The processes a row's CPU and switches cover.
fn measured_procs() -> Vec<String> {
    let mut procs = vec!["self".to_string()];
    procs.extend(HOST_PID.get().map(u32::to_string));
    procs
}

/// CPU time of this whole process (every thread: clients, both nodes, the
/// raw echo) and of the host's apart, in seconds (10 ms ticks).
fn process_cpu_secs() -> Option<f64> {
    measured_procs().iter().map(|p| proc_cpu_secs(p)).sum()
}

/// Context switches of this process's live threads and the host's apart.
fn process_switches() -> Option<u64> {
    measured_procs().iter().map(|p| proc_switches(p)).sum()
}

/// CPU time of process `pid` (or `self`), from `/proc/PID/stat`.
fn proc_cpu_secs(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which ends with the last ')'.
    let fields: Vec<&str> = stat.get(stat.rfind(')')? + 2..)?.split(' ').collect();
    let ticks = |i: usize| fields.get(i)?.parse::<f64>().ok();
    // utime and stime are fields 14 and 15 of the whole line.
    Some((ticks(11)? + ticks(12)?) / 100.0)
}

/// Context switches, voluntary and not, of the live threads of process
/// `pid` (or `self`), from `/proc/PID/task/*/status`. A thread that ends
/// during a row takes its count with it; the runtime's threads live
/// through every row.
fn proc_switches(pid: &str) -> Option<u64> {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        // A thread that ended meanwhile is skipped.
        if let Some(n) = task_switches(&task.ok()?.path().join("status")) {
            total += n;
        }
    }
    Some(total)
}

/// Context switches of one thread, from its `status` file.
fn task_switches(status: &std::path::Path) -> Option<u64> {
    let status = std::fs::read_to_string(status).ok()?;
    let mut total = 0;
    for line in status.lines() {
        if let Some(v) = line
            .strip_prefix("voluntary_ctxt_switches:")
            .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"))
        {
            total += v.trim().parse::<u64>().ok()?;
        }
    }
    Some(total)
}

fn pattern(size: usize) -> Vec<u8> {
    (0..size).map(|i| (i * 31 + 7) as u8).collect()
}

fn target() -> CallTarget {
    CallTarget::new(TRIBE, PLUGIN, PluginKind::Processor)
}

fn node_config(name: String, seed: Option<SocketAddr>, key: Option<&SecretKey>) -> Config {
    let mut cfg = Config::new(name);
    cfg.profile = Profile::Local;
    // Host facts are irrelevant here and cost a /proc walk per node.
    cfg.collect_facts = false;
    cfg.seeds = seed.into_iter().collect();
    cfg.keyring = key.map(|k| Keyring::new(k.clone()));
    cfg
}

/// Polls `cond`; a setup that never completes is a failed run.
async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + SETUP_LIMIT;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "setup: timed out after {SETUP_LIMIT:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A host serving `echo` in tribe `bench` and a caller outside the tribe.
struct Pair {
    host: Node,
    caller: Node,
}

async fn start_pair(tag: &str, key: Option<&SecretKey>) -> Pair {
    let host = start_host(tag, key).await;
    let caller = Node::start(node_config(format!("{tag}-caller"), Some(host.addr()), key))
        .await
        .expect("setup: starting the caller node");
    wait_until(&format!("{tag}: both nodes alive to each other"), || {
        host.members_alive() == 2 && caller.members_alive() == 2
    })
    .await;
    let host_name = host.name().to_string();
    see_endpoint(tag, &caller, &host_name).await;
    Pair { host, caller }
}

/// A node serving `echo` in tribe `bench`, which it made and joined.
async fn start_host(tag: &str, key: Option<&SecretKey>) -> Node {
    let host = Node::start(node_config(format!("{tag}-host"), None, key))
        .await
        .expect("setup: starting the host node");
    host.create_tribe(TRIBE)
        .await
        .expect("setup: creating the bench tribe");
    host.join(TRIBE, host.name())
        .await
        .expect("setup: joining the host to the bench tribe");
    host.serve(
        PLUGIN,
        "1",
        PluginKind::Processor,
        |_info, payload| async move { Ok(payload) },
    )
    .await
    .expect("setup: serving echo on the host");
    host
}

/// Waits until `caller` sees `host_name` serve `echo` in tribe `bench`, and
/// makes a first call, which opens the pooled stream.
async fn see_endpoint(tag: &str, caller: &Node, host_name: &str) {
    wait_until(&format!("{tag}: the caller sees the endpoint"), || {
        let serves = caller
            .members()
            .iter()
            .any(|m| m.name == host_name && m.endpoints.iter().any(|e| e.name == PLUGIN));
        let tribe_ok = caller
            .tribe(TRIBE)
            .is_some_and(|t| t.members == [host_name]);
        serves && tribe_ok
    })
    .await;
    // Opens the pooled stream and checks the echo before anything is timed.
    let reply = caller
        .call(&target(), b"hello".to_vec(), CALL_TIMEOUT)
        .await
        .expect("setup: a first call through the tribe");
    assert_eq!(reply, b"hello", "setup: echo must return the payload");
}

fn size_label(size: usize) -> String {
    if size >= 1024 && size.is_multiple_of(1024) {
        format!("{} KiB", size / 1024)
    } else {
        format!("{size} B")
    }
}

/// Tenths only below 100 µs, where they still mean something.
fn us(value: f64) -> String {
    if value.is_nan() {
        "-".into()
    } else if value < 100.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.0}")
    }
}

/// Resident memory of this process: the progress lines show whether a
/// path keeps memory it no longer needs.
fn rss_mib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    match args.first().map(String::as_str) {
        Some("--host") if args.len() == 1 => return apart_host(),
        Some("--caller") => return apart_caller(&args[1..]),
        Some("--host") => usage_exit(),
        _ => {}
    }
    let flags = common::flags(USAGE, &["--quick", "--small", "--large"]);
    let quick = flags.contains("--quick");
    let small = flags.contains("--small");
    let (payloads, concurrency): (&[usize], &[usize]) = if small {
        (&PAYLOADS[..1], &CONCURRENCY[..2])
    } else if flags.contains("--large") {
        (&PAYLOADS[1..], &CONCURRENCY)
    } else {
        (&PAYLOADS, &CONCURRENCY)
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let timing = if quick {
        Timing {
            warm: Duration::from_millis(100),
            window: Duration::from_millis(500),
        }
    } else {
        Timing {
            warm: Duration::from_millis(500),
            window: Duration::from_secs(3),
        }
    };
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let workers = bench_workers(cores.max(1));
    // One worker per core unless `TRIBE_BENCH_WORKERS` says otherwise: load
    // generator, echo server and both nodes share them, as they would share
    // a small host.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .expect("setup: building the tokio runtime");
    let begun = Instant::now();

    let (rows, notes) = rt.block_on(async {
        let raw = start_raw_echo()
            .await
            .expect("setup: binding the raw echo server");
        eprintln!("starting the plaintext pair");
        let plain = start_pair("plain", None).await;
        eprintln!("starting the sealed pair");
        let key = SecretKey::generate();
        let sealed = start_pair("sealed", Some(&key)).await;
        let pair_of = |path: Path| match path {
            Path::Sealed | Path::SealedThreads => &sealed,
            _ => &plain,
        };
        // The rows the C ABI's benchmark compares with also have callers
        // on threads of their own, as its blocking caller is.
        let paths: &[Path] = if small {
            &[
                Path::Raw,
                Path::Plaintext,
                Path::Sealed,
                Path::PlaintextThreads,
                Path::SealedThreads,
            ]
        } else {
            &[Path::Raw, Path::Plaintext, Path::Sealed]
        };

        let mut rows = Vec::new();
        for &size in payloads {
            for &c in concurrency {
                for &path in paths {
                    let clients = (0..c)
                        .map(|_| match path {
                            Path::Raw => Client::tcp(raw, &pattern(size)),
                            _ => Client::rpc(path, pair_of(path).caller.clone()),
                        })
                        .collect();
                    let row = run_row(path, size, clients, &timing).await;
                    eprintln!(
                        "{:>13} {:>6} x{:<3} {:>9.0} calls/s  p50 {} µs  errors {}  rss {} MiB",
                        path.label(),
                        size_label(size),
                        c,
                        row.calls_per_s(),
                        us(row.quantile_us(0.5)),
                        row.errors,
                        rss_mib().map_or("?".into(), |m| m.to_string()),
                    );
                    if let Some(e) = &row.first_error {
                        eprintln!("  first error: {e}");
                    }
                    rows.push(row);
                }
            }
        }

        // Evidence that calls went remote: the callers served nothing.
        let mut notes = Vec::new();
        for (label, pair) in [("plaintext", &plain), ("sealed", &sealed)] {
            let c = pair.caller.rpc_stats();
            let h = pair.host.rpc_stats();
            notes.push(format!(
                "{label}: caller ok {} served {} (timeout {}, overloaded {}, disconnected {}, \
                 failovers {}); host served {} refused {}",
                c.ok,
                c.served,
                c.timeout,
                c.overloaded,
                c.disconnected,
                c.failovers,
                h.served,
                h.refused
            ));
        }
        for pair in [plain, sealed] {
            for node in [pair.caller, pair.host] {
                if tokio::time::timeout(SHUTDOWN_LIMIT, node.shutdown())
                    .await
                    .is_err()
                {
                    eprintln!("{}: shutdown did not finish in time", node.name());
                }
            }
        }
        (rows, notes)
    });
    // Raw echo connections and stream tasks may linger; do not wait for them.
    rt.shutdown_timeout(Duration::from_secs(1));

    print_rows(&rows);
    println!(
        "\n{} run on {cores} cores ({}), tokio workers {workers}; {:.1} s measured + {:.1} s \
         warm-up per row; total wall time {:.1} s.",
        if quick { "--quick" } else { "full" },
        common::cpu_model(),
        timing.window.as_secs_f64(),
        timing.warm.as_secs_f64(),
        begun.elapsed().as_secs_f64(),
    );
    println!(
        "MB/s = 10^6 payload bytes per second one way (the echo sends as many back). \
         CPU µs/call = CPU time of the whole process (clients and servers alike) \
         from the end of the warm-up, per call; switches/call = context switches of \
         its threads over the same time, per call. Errors include the warm-up."
    );
    for note in notes {
        println!("{note}");
    }
    targets(&rows, if quick { 100 } else { 500 });
    print_first_errors(&rows);
}

/// The table of rows; the raw TCP column is empty for rows without a raw
/// row of the same size and concurrency.
fn print_rows(rows: &[Row]) {
    println!(
        "| path | payload | concurrency | calls/s | MB/s | p50 µs | p99 µs | p999 µs \
         | calls/s vs raw TCP | CPU µs/call | switches/call | errors |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for row in rows {
        let raw = rows
            .iter()
            .find(|r| {
                r.path == Path::Raw && r.payload == row.payload && r.concurrency == row.concurrency
            })
            .map_or(f64::NAN, Row::calls_per_s);
        println!(
            "| {} | {} | {} | {:.0} | {:.1} | {} | {} | {} | {:.2} | {} | {:.2} | {} |",
            row.path.label(),
            size_label(row.payload),
            row.concurrency,
            row.calls_per_s(),
            row.mb_per_s(),
            us(row.quantile_us(0.5)),
            us(row.quantile_us(0.99)),
            us(row.quantile_us(0.999)),
            row.calls_per_s() / raw,
            us(row.cpu_us_per_call()),
            row.switches_per_call(),
            row.errors,
        );
    }
}

fn print_first_errors(rows: &[Row]) {
    for row in rows.iter().filter(|r| r.first_error.is_some()) {
        println!(
            "first error of {} {} x{}: {}",
            row.path.label(),
            size_label(row.payload),
            row.concurrency,
            row.first_error.as_deref().unwrap_or_default()
        );
    }
}

/// One-core time to seal a 64 KiB frame as a stream does (body copied into
/// a reused buffer, sealed in place), measured for about `ms` milliseconds.
fn seal_64k_ns(ms: u64) -> f64 {
    use tribe::crypto::{Role, StreamCipher, StreamHello};
    let key = SecretKey::generate();
    let (i, r) = (
        StreamHello::new(key.id()).salt,
        StreamHello::new(key.id()).salt,
    );
    let mut cipher = StreamCipher::new(&key, Role::Initiator, &i, &r, b"bench");
    let data = pattern(64 * 1024);
    let mut buf = Vec::with_capacity(data.len() + 16);
    let began = Instant::now();
    let mut n = 0u64;
    while began.elapsed() < Duration::from_millis(ms) {
        buf.clear();
        buf.extend_from_slice(std::hint::black_box(&data));
        if let Ok(tag) = cipher.seal_in_place(&mut buf) {
            buf.extend_from_slice(&tag);
        }
        std::hint::black_box(&buf);
        n += 1;
    }
    began.elapsed().as_nanos() as f64 / n.max(1) as f64
}

/// The ratios the sealed and large-payload paths are held to, from this
/// run's rows (see docs/benchmarks.md).
fn targets(rows: &[Row], seal_ms: u64) {
    let rate = |path: Path, payload: usize, c: usize| {
        rows.iter()
            .find(|r| r.path == path && r.payload == payload && r.concurrency == c)
            .map(Row::calls_per_s)
    };
    let seal_ns = seal_64k_ns(seal_ms);
    println!(
        "\nTargets (same run; one-core seal of 64 KiB measured after the rows: {:.1} µs)\n",
        seal_ns / 1e3
    );
    println!("| ratio | concurrency | value | target |");
    println!("|---|---:|---:|---:|");
    for c in CONCURRENCY {
        if let (Some(sealed), Some(plain)) =
            (rate(Path::Sealed, 100, c), rate(Path::Plaintext, 100, c))
        {
            println!(
                "| sealed / plaintext calls/s, 100 B | {c} | {:.2} | ≥ 0.85 |",
                sealed / plain
            );
        }
    }
    let big = 64 * 1024;
    if let (Some(sealed), Some(plain)) = (rate(Path::Sealed, big, 1), rate(Path::Plaintext, big, 1))
    {
        // A sealed call is a plaintext call plus four 64 KiB seal/open passes.
        let bound = 1e9 / (1e9 / plain + 4.0 * seal_ns);
        println!(
            "| sealed 64 KiB calls/s / cipher bound ({bound:.0} calls/s) | 1 | {:.2} | ≥ 0.8 |",
            sealed / bound
        );
    }
    for c in CONCURRENCY {
        if let (Some(plain), Some(raw)) = (rate(Path::Plaintext, big, c), rate(Path::Raw, big, c)) {
            println!(
                "| plaintext 64 KiB / raw TCP calls/s | {c} | {:.2} | ≥ 0.8 |",
                plain / raw
            );
        }
    }
}

fn usage_exit() -> ! {
    eprintln!("{USAGE}");
    std::process::exit(2);
}

/// The key of a run apart (`TRIBE_BENCH_KEY`), if it is sealed.
fn apart_key() -> Option<SecretKey> {
    let text = std::env::var("TRIBE_BENCH_KEY")
        .ok()
        .filter(|k| !k.is_empty())?;
    match SecretKey::from_base64(text.trim()) {
        Ok(key) => Some(key),
        Err(e) => {
            eprintln!("TRIBE_BENCH_KEY: {e}");
            std::process::exit(2);
        }
    }
}

/// `TRIBE_BENCH_WORKERS` (tokio workers per process), or `default`.
fn bench_workers(default: usize) -> usize {
    std::env::var("TRIBE_BENCH_WORKERS")
        .ok()
        .and_then(|w| w.parse().ok())
        .filter(|&w: &usize| w > 0)
        .unwrap_or(default)
}

/// A runtime with `TRIBE_BENCH_WORKERS` workers (default 1): one process of
/// a run apart, as small as one node of the run in one process.
fn apart_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(bench_workers(1))
        .enable_all()
        .build()
        .expect("setup: building the tokio runtime")
}

/// The host of a run apart: serves until standard input ends.
fn apart_host() {
    let key = apart_key();
    let rt = apart_runtime();
    rt.block_on(async {
        let host = start_host("bench", key.as_ref()).await;
        println!("{} {}", host.addr(), std::process::id());
        let _ = tokio::task::spawn_blocking(|| {
            std::io::copy(&mut std::io::stdin(), &mut std::io::sink())
        })
        .await;
        let _ = tokio::time::timeout(SHUTDOWN_LIMIT, host.shutdown()).await;
    });
    rt.shutdown_timeout(Duration::from_secs(1));
}

/// The caller of a run apart: the 100 B rows at concurrency 1 and 16
/// against the host at ADDRESS, whose process PID is measured too.
fn apart_caller(args: &[String]) {
    let quick = args.len() == 3 && args[2] == "--quick";
    if args.len() != 2 && !quick {
        usage_exit();
    }
    let (Ok(addr), Ok(pid)) = (args[0].parse::<SocketAddr>(), args[1].parse::<u32>()) else {
        usage_exit();
    };
    let _ = HOST_PID.set(pid);
    let key = apart_key();
    let path = if key.is_some() {
        Path::Sealed
    } else {
        Path::Plaintext
    };
    let timing = if quick {
        Timing {
            warm: Duration::from_millis(100),
            window: Duration::from_millis(500),
        }
    } else {
        Timing {
            warm: Duration::from_millis(500),
            window: Duration::from_secs(3),
        }
    };
    let rt = apart_runtime();
    let rows = rt.block_on(async {
        let caller = Node::start(node_config("bench-caller".into(), Some(addr), key.as_ref()))
            .await
            .expect("setup: starting the caller node");
        see_endpoint("apart", &caller, "bench-host").await;
        let mut rows = Vec::new();
        for path in [path, path.on_threads()] {
            for c in [1, 16] {
                let clients = (0..c).map(|_| Client::rpc(path, caller.clone())).collect();
                rows.push(run_row(path, PAYLOADS[0], clients, &timing).await);
            }
        }
        let _ = tokio::time::timeout(SHUTDOWN_LIMIT, caller.shutdown()).await;
        rows
    });
    rt.shutdown_timeout(Duration::from_secs(1));
    print_rows(&rows);
    println!(
        "\napart: caller and host in two processes, tokio workers per process as \
         TRIBE_BENCH_WORKERS (default 1); `threads` rows call from a thread per call \
         in flight (call_blocking); CPU µs/call and switches/call cover both."
    );
    print_first_errors(&rows);
}
