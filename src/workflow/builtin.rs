//! Small plugins built into `tribe agent`: a `/proc` collector, a tagger, a
//! JSON-lines file publisher and a stdout publisher. None of them touches the
//! network; the agent wires them to task steps and RPC.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use tokio::io::AsyncReadExt;

use super::batch::{Metric, MAX_METRIC_TAGS};
pub use super::file_publisher::FilePublisher;
use super::glob::{metric_matches, pattern_problem};
use super::manifest::{ManifestError, MAX_METRIC_PATTERNS};

/// Why a built-in plugin failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct PluginError {
    /// Stable short code: `"io"` or `"bad_input"`.
    pub code: &'static str,
    /// What went wrong, naming the file or the input.
    pub message: String,
}

impl PluginError {
    /// A file could not be read or written.
    pub fn io(path: &Path, err: &std::io::Error) -> PluginError {
        PluginError {
            code: "io",
            message: format!("{}: {err}", path.display()),
        }
    }

    /// The caller passed something the plugin refuses.
    pub fn bad_input(message: impl Into<String>) -> PluginError {
        PluginError {
            code: "bad_input",
            message: message.into(),
        }
    }
}

/// `/proc` files are a few KiB; the cap only guards a strange root.
const MAX_PROC_FILE_BYTES: u64 = 256 * 1024;

const LOAD_NAMES: [&str; 3] = ["load/1min", "load/5min", "load/15min"];
const MEM_NAMES: [(&str, &str); 3] = [
    ("MemTotal", "mem/total_kb"),
    ("MemFree", "mem/free_kb"),
    ("MemAvailable", "mem/available_kb"),
];
/// Positions after the `cpu` label: user, nice, system, idle, ...
const CPU_NAMES: [(usize, &str); 3] = [(0, "cpu/user"), (2, "cpu/system"), (3, "cpu/idle")];
const UPTIME_NAME: &str = "uptime/seconds";

/// Collects load, memory, CPU and uptime figures from `/proc`.
///
/// Metrics: `load/1min`, `load/5min`, `load/15min` (from `loadavg`),
/// `mem/total_kb`, `mem/free_kb`, `mem/available_kb` (from `meminfo`),
/// `cpu/user`, `cpu/system`, `cpu/idle` in jiffies (first `cpu` line of
/// `stat`) and `uptime/seconds` (from `uptime`), each tagged `plugin=proc`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcCollector {
    root: PathBuf,
}

impl Default for ProcCollector {
    fn default() -> Self {
        ProcCollector::new()
    }
}

impl ProcCollector {
    /// Reads the real `/proc`.
    pub fn new() -> ProcCollector {
        ProcCollector::with_root("/")
    }

    /// Reads `<root>/proc/...` instead; for tests.
    pub fn with_root(root: impl Into<PathBuf>) -> ProcCollector {
        ProcCollector { root: root.into() }
    }

    /// Collects the metrics matching any of `patterns` (all when empty),
    /// stamped `now_ms`. Missing files are skipped and so are values that do
    /// not parse; other read errors fail with code `"io"`, bad patterns with
    /// `"bad_input"`.
    pub async fn collect(
        &self,
        patterns: &[String],
        now_ms: u64,
    ) -> Result<Vec<Metric>, PluginError> {
        check_patterns(patterns)?;
        let wanted =
            |name: &str| patterns.is_empty() || patterns.iter().any(|p| metric_matches(p, name));
        let mut found: Vec<(&'static str, f64)> = Vec::new();
        // Only read a file when one of its metrics is wanted.
        if LOAD_NAMES.iter().any(|n| wanted(n)) {
            if let Some(text) = self.read("loadavg").await? {
                found.extend(parse_loadavg(&text));
            }
        }
        if MEM_NAMES.iter().any(|(_, n)| wanted(n)) {
            if let Some(text) = self.read("meminfo").await? {
                found.extend(parse_meminfo(&text));
            }
        }
        if CPU_NAMES.iter().any(|(_, n)| wanted(n)) {
            if let Some(text) = self.read("stat").await? {
                found.extend(parse_stat(&text));
            }
        }
        if wanted(UPTIME_NAME) {
            if let Some(text) = self.read("uptime").await? {
                found.extend(parse_uptime(&text));
            }
        }
        Ok(found
            .into_iter()
            .filter(|(name, value)| value.is_finite() && wanted(name))
            .map(|(name, value)| {
                let mut metric = Metric::new(name, value, now_ms);
                metric.tags.insert("plugin".into(), "proc".into());
                metric
            })
            .collect())
    }

    /// Reads `<root>/proc/<name>`, `None` when it does not exist.
    async fn read(&self, name: &str) -> Result<Option<String>, PluginError> {
        let path = self.root.join("proc").join(name);
        let file = match tokio::fs::File::open(&path).await {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(PluginError::io(&path, &e)),
        };
        let mut bytes = Vec::new();
        file.take(MAX_PROC_FILE_BYTES)
            .read_to_end(&mut bytes)
            .await
            .map_err(|e| PluginError::io(&path, &e))?;
        // Bad bytes only spoil the values they sit in, which then fail to parse.
        Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
    }
}

fn check_patterns(patterns: &[String]) -> Result<(), PluginError> {
    if patterns.len() > MAX_METRIC_PATTERNS {
        return Err(PluginError::bad_input(format!(
            "{} metric patterns, more than {MAX_METRIC_PATTERNS}",
            patterns.len()
        )));
    }
    for pattern in patterns {
        if let Some(reason) = pattern_problem(pattern) {
            let short: String = pattern.chars().take(80).collect();
            return Err(PluginError::bad_input(format!(
                "metric pattern {short:?} {reason}"
            )));
        }
    }
    Ok(())
}

/// `0.52 0.58 0.59 1/467 12345`: the first three fields.
fn parse_loadavg(text: &str) -> Vec<(&'static str, f64)> {
    LOAD_NAMES
        .iter()
        .zip(text.split_whitespace())
        .filter_map(|(name, field)| Some((*name, field.parse().ok()?)))
        .collect()
}

/// `MemTotal:       16316412 kB` lines.
fn parse_meminfo(text: &str) -> Vec<(&'static str, f64)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let Some((_, name)) = MEM_NAMES.iter().find(|(k, _)| *k == key.trim()) else {
            continue;
        };
        if let Some(kb) = rest
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
        {
            out.push((*name, kb as f64));
        }
    }
    out
}

/// The aggregate `cpu  user nice system idle ...` line.
fn parse_stat(text: &str) -> Vec<(&'static str, f64)> {
    let Some(line) = text
        .lines()
        .find(|l| l.split_whitespace().next() == Some("cpu"))
    else {
        return Vec::new();
    };
    let fields: Vec<&str> = line.split_whitespace().skip(1).collect();
    CPU_NAMES
        .iter()
        .filter_map(|(at, name)| {
            let jiffies = fields.get(*at)?.parse::<u64>().ok()?;
            Some((*name, jiffies as f64))
        })
        .collect()
}

/// `350735.47 234388.90`: seconds up, then seconds idle.
fn parse_uptime(text: &str) -> Vec<(&'static str, f64)> {
    text.split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .map(|seconds| vec![(UPTIME_NAME, seconds)])
        .unwrap_or_default()
}

/// Adds tags to metrics: a step's `config`, plus what the agent adds (such as
/// `host=<node>`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tagger;

impl Tagger {
    /// Sets every tag in `tags` on every metric, replacing values already
    /// there. New keys stop at [`MAX_METRIC_TAGS`] per metric, so tagged
    /// metrics still decode. Tags a metric may not carry (an empty or
    /// over-long key, an over-long value, control characters) are refused
    /// as a whole, rather than leaving out every metric they would spoil.
    pub fn process(
        &self,
        mut metrics: Vec<Metric>,
        tags: &BTreeMap<String, String>,
    ) -> Result<Vec<Metric>, ManifestError> {
        super::batch::check_tags("config", tags)?;
        for metric in &mut metrics {
            tag(metric, tags);
        }
        Ok(metrics)
    }

    /// [`process`](Self::process) then [`encode_metrics`](super::batch::encode_metrics),
    /// one metric at a time, refused as `TooLarge` once the encoding passes
    /// `max_bytes`: tagged whole, a batch of many metrics under many tags
    /// grew to hundreds of times its size in memory before its encoding
    /// was found over the limit of a reply.
    pub fn process_encoded(
        &self,
        metrics: Vec<Metric>,
        tags: &BTreeMap<String, String>,
        max_bytes: usize,
    ) -> Result<Vec<u8>, ManifestError> {
        super::batch::check_tags("config", tags)?;
        let mut out = Vec::with_capacity(max_bytes.min(1 << 16));
        out.push(b'[');
        for mut metric in metrics {
            tag(&mut metric, tags);
            if metric.validate().is_err() {
                continue;
            }
            if out.len() > 1 {
                out.push(b',');
            }
            // A metric of strings, a finite float and string-keyed maps
            // always serialises; one that did not is left out.
            let mark = out.len();
            if serde_json::to_writer(&mut out, &metric).is_err() {
                out.truncate(mark.saturating_sub(usize::from(mark > 1)));
            }
            // Its tags go now, not with the batch.
            drop(metric);
            if out.len() + 1 > max_bytes {
                return Err(ManifestError::TooLarge {
                    what: "the tagged batch (its encoding stopped there)",
                    len: out.len() + 1,
                    max: max_bytes,
                });
            }
        }
        out.push(b']');
        Ok(out)
    }
}

/// Sets every tag in `tags` on `metric` (see [`Tagger::process`]).
fn tag(metric: &mut Metric, tags: &BTreeMap<String, String>) {
    for (key, value) in tags {
        if let Some(existing) = metric.tags.get_mut(key) {
            existing.clone_from(value);
        } else if metric.tags.len() < MAX_METRIC_TAGS {
            metric.tags.insert(key.clone(), value.clone());
        }
    }
}

/// Prints metrics to stdout, one `name value tag=v,...` line each.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StdoutPublisher;

impl StdoutPublisher {
    /// Prints the metrics and returns the lines printed; stops early, without
    /// panicking, if stdout is closed.
    pub fn publish(&self, metrics: &[Metric]) -> usize {
        self.write_to(std::io::stdout().lock(), metrics)
    }

    /// Like [`publish`](Self::publish) but to any writer.
    pub fn write_to<W: Write>(&self, mut out: W, metrics: &[Metric]) -> usize {
        let mut lines = 0;
        for metric in metrics {
            // One write per line: a writer shared by several publishers
            // (a queue to a thread of its own) never interleaves them.
            let mut line = format_line(metric);
            line.push('\n');
            if out.write_all(line.as_bytes()).is_err() {
                break;
            }
            lines += 1;
        }
        // Errors were already counted out above; a failed flush loses nothing more we can report.
        let _ = out.flush();
        lines
    }
}

/// `name value tag=v,...`, or `name value` without tags; control characters
/// are shown as `?` so a metric cannot drive the terminal.
fn format_line(metric: &Metric) -> String {
    let mut line = format!("{} {}", metric.name, metric.value);
    let tags: Vec<String> = metric
        .tags
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if !tags.is_empty() {
        line.push(' ');
        line.push_str(&tags.join(","));
    }
    line.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A temporary directory removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "tribe-builtin-{}-{name}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }

        fn write(&self, rel: &str, contents: impl AsRef<[u8]>) {
            let path = self.0.join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, contents).unwrap();
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn fake_proc() -> TempDir {
        let dir = TempDir::new("proc");
        dir.write("proc/loadavg", "0.52 0.58 0.59 1/467 12345\n");
        dir.write(
            "proc/meminfo",
            "MemTotal:       16316412 kB\nMemFree:         1205824 kB\nMemAvailable:    9876543 kB\nBuffers:          123456 kB\n",
        );
        dir.write(
            "proc/stat",
            "cpu  4705 150 1120 16250 520 0 30 0 0 0\ncpu0 1000 1 2 3 4 5 6 7 8 9\nintr 1 2 3\n",
        );
        dir.write("proc/uptime", "350735.47 234388.90\n");
        dir
    }

    fn by_name(metrics: &[Metric]) -> BTreeMap<&str, f64> {
        metrics.iter().map(|m| (m.name.as_str(), m.value)).collect()
    }

    #[tokio::test]
    async fn collects_every_metric_from_a_fake_proc() {
        let dir = fake_proc();
        let metrics = ProcCollector::with_root(&dir.0)
            .collect(&[], 42)
            .await
            .unwrap();
        let values = by_name(&metrics);
        let expected = BTreeMap::from([
            ("load/1min", 0.52),
            ("load/5min", 0.58),
            ("load/15min", 0.59),
            ("mem/total_kb", 16316412.0),
            ("mem/free_kb", 1205824.0),
            ("mem/available_kb", 9876543.0),
            ("cpu/user", 4705.0),
            ("cpu/system", 1120.0),
            ("cpu/idle", 16250.0),
            ("uptime/seconds", 350735.47),
        ]);
        assert_eq!(values, expected);
        for m in &metrics {
            assert_eq!(m.timestamp_ms, 42);
            assert_eq!(m.tags.get("plugin").map(String::as_str), Some("proc"));
            assert!(m.validate().is_ok());
        }
    }

    #[tokio::test]
    async fn filters_by_pattern() {
        let dir = fake_proc();
        let collector = ProcCollector::with_root(&dir.0);
        let patterns = vec!["load/*".to_string(), "*/idle".to_string()];
        let metrics = collector.collect(&patterns, 1).await.unwrap();
        let names: Vec<&str> = metrics.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["load/1min", "load/5min", "load/15min", "cpu/idle"]);
        let none = collector.collect(&["disk/*".to_string()], 1).await.unwrap();
        assert!(none.is_empty());
    }

    #[tokio::test]
    async fn missing_files_are_skipped() {
        let dir = TempDir::new("missing");
        let collector = ProcCollector::with_root(&dir.0);
        assert!(collector.collect(&[], 1).await.unwrap().is_empty());
        dir.write("proc/uptime", "12.5 3.0\n");
        let metrics = collector.collect(&[], 1).await.unwrap();
        assert_eq!(
            by_name(&metrics),
            BTreeMap::from([("uptime/seconds", 12.5)])
        );
    }

    #[tokio::test]
    async fn malformed_files_do_not_panic() {
        let dir = TempDir::new("malformed");
        dir.write("proc/loadavg", "0.5 zero NaN");
        dir.write(
            "proc/meminfo",
            "MemTotal 12 kB\nMemFree: lots kB\n:::\nMemAvailable:\nMemAvailable: 99999999999999999999999 kB\n",
        );
        dir.write("proc/stat", "cpu0 1 2 3 4\ncpu 7 x\n");
        dir.write("proc/uptime", b"\xff\xfe inf");
        let metrics = ProcCollector::with_root(&dir.0)
            .collect(&[], 1)
            .await
            .unwrap();
        assert_eq!(
            by_name(&metrics),
            BTreeMap::from([("cpu/user", 7.0), ("load/1min", 0.5)])
        );

        for garbage in ["", "\n\n", "cpu", "   "] {
            for file in ["loadavg", "meminfo", "stat", "uptime"] {
                dir.write(&format!("proc/{file}"), garbage);
            }
            let metrics = ProcCollector::with_root(&dir.0)
                .collect(&[], 1)
                .await
                .unwrap();
            assert!(metrics.is_empty(), "{garbage:?}");
        }
    }

    #[tokio::test]
    async fn unreadable_files_are_io_errors() {
        let dir = TempDir::new("unreadable");
        std::fs::create_dir_all(dir.0.join("proc/loadavg")).unwrap();
        let err = ProcCollector::with_root(&dir.0)
            .collect(&[], 1)
            .await
            .unwrap_err();
        assert_eq!(err.code, "io");
        assert!(err.message.contains("loadavg"), "{err}");
        // Not reading the directory when its metrics are not wanted.
        let ok = ProcCollector::with_root(&dir.0)
            .collect(&["mem/*".to_string()], 1)
            .await;
        assert_eq!(ok, Ok(Vec::new()));
    }

    #[tokio::test]
    async fn refuses_bad_patterns() {
        let collector = ProcCollector::with_root("/nonexistent");
        for patterns in [
            vec![String::new()],
            vec!["x".repeat(129)],
            vec!["a\nb".to_string()],
            vec!["*".to_string(); 65],
        ] {
            let err = collector.collect(&patterns, 1).await.unwrap_err();
            assert_eq!(err.code, "bad_input");
        }
    }

    #[test]
    fn tagger_adds_and_overrides() {
        let mut m = Metric::new("load/1min", 1.0, 1);
        m.tags.insert("plugin".into(), "proc".into());
        m.tags.insert("host".into(), "old".into());
        let tags = BTreeMap::from([
            ("host".to_string(), "node-1".to_string()),
            ("env".to_string(), "prod".to_string()),
        ]);
        let out = Tagger
            .process(vec![m, Metric::new("x", 2.0, 1)], &tags)
            .unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(
            out[0].tags,
            BTreeMap::from([
                ("env".to_string(), "prod".to_string()),
                ("host".to_string(), "node-1".to_string()),
                ("plugin".to_string(), "proc".to_string()),
            ])
        );
        assert_eq!(out[1].tags, tags);
        assert!(Tagger.process(Vec::new(), &tags).unwrap().is_empty());
    }

    #[test]
    fn tagged_and_encoded_at_once_is_what_tagging_then_encoding_gives() {
        let mut m = Metric::new("load/1min", 1.5, 7);
        m.tags.insert("host".into(), "old".into());
        let batch = vec![m, Metric::new("x", f64::NAN, 1), Metric::new("y", 2.0, 1)];
        let tags = BTreeMap::from([
            ("host".to_string(), "node-1".to_string()),
            ("env".to_string(), "prod".to_string()),
        ]);
        let whole =
            super::super::batch::encode_metrics(&Tagger.process(batch.clone(), &tags).unwrap());
        let streamed = Tagger.process_encoded(batch, &tags, 1 << 20).unwrap();
        assert_eq!(
            String::from_utf8(streamed).unwrap(),
            String::from_utf8(whole).unwrap()
        );
        assert_eq!(Tagger.process_encoded(Vec::new(), &tags, 2).unwrap(), b"[]");
        let bad = BTreeMap::from([("k".to_string(), "a\nb".to_string())]);
        assert!(matches!(
            Tagger.process_encoded(vec![Metric::new("x", 1.0, 1)], &bad, 1 << 20),
            Err(ManifestError::Invalid { .. })
        ));
    }

    /// Many metrics under many long tags: refused once the encoding passes
    /// the limit, not tagged whole first (which took gigabytes).
    #[test]
    fn a_tagged_batch_over_the_limit_is_refused_as_it_passes_it() {
        let batch: Vec<Metric> = (0..50_000)
            .map(|i| Metric::new(format!("m{i}"), 1.0, 1))
            .collect();
        let tags: BTreeMap<String, String> = (0..32)
            .map(|i| (format!("{i:0>64}"), "v".repeat(256)))
            .collect();
        let max = 1 << 20;
        let err = Tagger.process_encoded(batch, &tags, max).unwrap_err();
        assert!(
            matches!(err, ManifestError::TooLarge { len, max: m, .. } if m == max && len > max && len < max + 16 * 1024),
            "{err}"
        );
        assert_eq!(err.code(), "too_large");
    }

    #[test]
    fn tagger_keeps_metrics_decodable() {
        let mut m = Metric::new("a", 1.0, 1);
        for i in 0..MAX_METRIC_TAGS {
            m.tags.insert(format!("k{i}"), "v".into());
        }
        let tags = BTreeMap::from([
            ("k0".to_string(), "new".to_string()),
            ("extra".to_string(), "x".to_string()),
        ]);
        let out = Tagger.process(vec![m], &tags).unwrap();
        assert_eq!(out[0].tags.len(), MAX_METRIC_TAGS);
        assert_eq!(out[0].tags["k0"], "new");
        assert!(!out[0].tags.contains_key("extra"));
    }

    #[test]
    fn tagger_refuses_tags_no_metric_may_carry() {
        // Set, they would make every metric invalid, and the batch would
        // encode as empty: the caller's data lost without an error.
        for (key, value) in [
            (String::new(), "v".to_string()),
            ("k".repeat(129), "v".to_string()),
            ("k".to_string(), "v".repeat(257)),
            ("k".to_string(), "a\nb".to_string()),
        ] {
            let tags = BTreeMap::from([(key, value)]);
            let err = Tagger
                .process(vec![Metric::new("a", 1.0, 1)], &tags)
                .unwrap_err();
            assert!(err.to_string().contains("config"), "{err}");
        }
        let tags = BTreeMap::from([("k".repeat(128), "v".repeat(256))]);
        let out = Tagger
            .process(vec![Metric::new("a", 1.0, 1)], &tags)
            .unwrap();
        assert_eq!(out[0].tags, tags);
    }

    #[test]
    fn stdout_lines() {
        let mut m = Metric::new("load/1min", 0.25, 1);
        m.tags.insert("plugin".into(), "proc".into());
        m.tags.insert("host".into(), "n1".into());
        let plain = Metric::new("up", 3.0, 1);
        let mut evil = Metric::new("a\x1b[2J", 1.0, 1);
        evil.tags.insert("k".into(), "v\n".into());
        let mut out = Vec::new();
        assert_eq!(
            StdoutPublisher.write_to(&mut out, &[m.clone(), plain, evil]),
            3
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "load/1min 0.25 host=n1,plugin=proc\nup 3\na?[2J 1 k=v?\n"
        );
        assert_eq!(StdoutPublisher.publish(&[m]), 1);
    }

    #[test]
    fn stdout_stops_on_a_closed_writer() {
        struct Closed;
        impl Write for Closed {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Err(std::io::ErrorKind::BrokenPipe.into())
            }
        }
        assert_eq!(
            StdoutPublisher.write_to(Closed, &[Metric::new("a", 1.0, 1)]),
            0
        );
    }
}
