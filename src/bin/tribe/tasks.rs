//! What `tribe agent` does with its tribes' catalogs: it serves the built-in
//! plugins (`tag`, `stdout`, and `file` when asked) and runs every task of
//! the tribes it is in: collect with the built-in `proc` collector on the
//! task's schedule, then the manifest's process and publish steps, remote
//! where a step names a tribe.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tribe::admin::{TaskOutcome, TaskRuns};
use tribe::workflow::builtin::{FilePublisher, ProcCollector, StdoutPublisher, Tagger};
use tribe::workflow::manifest::ManifestError;
use tribe::workflow::{Manifest, StepRequest, StepResult, Workflow};
use tribe::{Event, HandlerError, Node, PluginKind, Task};

/// Version of every built-in plugin.
pub const BUILTIN_VERSION: &str = "1";
/// A failing task is logged at most this often.
const FAILURE_LOG_EVERY: Duration = Duration::from_secs(60);
/// A task's first run comes at a random point within its first interval
/// and at most this long after it starts (see `run_task`).
const FIRST_RUN_SPREAD: Duration = Duration::from_secs(10);

fn bad_request(e: impl std::fmt::Display) -> HandlerError {
    HandlerError::new("bad_input", e.to_string())
}

/// The `file` publisher appending to `path`, once it is known to be
/// writable: a file it cannot write would make the agent a sink that fails
/// every batch sent to it, so it refuses to start instead.
pub async fn file_publisher(path: PathBuf) -> Result<Arc<FilePublisher>, String> {
    let publisher = Arc::new(FilePublisher::new(path));
    publisher
        .check()
        .await
        .map_err(|e| format!("--publish-file cannot be written: {}", e.message))?;
    Ok(publisher)
}

/// Opens once the agent has printed its ready line. The `stdout` publisher
/// waits for it, so that the ready line is always stdout's first line.
#[derive(Clone)]
pub struct ReadyLine(tokio::sync::watch::Receiver<bool>);

impl ReadyLine {
    /// A gate not open yet, and what opens it (`send_replace(true)`).
    pub fn closed() -> (tokio::sync::watch::Sender<bool>, ReadyLine) {
        let (printed, gate) = tokio::sync::watch::channel(false);
        (printed, ReadyLine(gate))
    }

    /// Waits until the ready line is out (at once when the sender is gone:
    /// the agent is stopping).
    pub async fn printed(&mut self) {
        let _ = self.0.wait_for(|printed| *printed).await;
    }
}

/// Batches from this size up are tagged on a blocking thread.
const TAG_INLINE_BELOW: usize = 256 * 1024;

/// Serves `tag` and `stdout` on this node, and `file` when `publish_file` is
/// set; `max_reply` is the node's largest payload, which a tagged batch
/// must fit.
pub async fn serve_builtins(
    node: &Node,
    max_reply: usize,
    publish_file: Option<Arc<FilePublisher>>,
    ready_line: ReadyLine,
    stdout: tracing_appender::non_blocking::NonBlocking,
) -> Result<(), String> {
    let host = node.name().to_string();
    node.serve(
        "tag",
        BUILTIN_VERSION,
        PluginKind::Processor,
        move |info, payload| {
            let host = host.clone();
            let payload_len = payload.len();
            async move {
                let tag = move || {
                    let req = StepRequest::decode(&payload).map_err(bad_request)?;
                    let mut tags = req.config;
                    tags.entry("tagged_by".into()).or_insert(host);
                    tags.entry("caller".into()).or_insert(info.caller);
                    Tagger
                        .process_encoded(req.metrics, &tags, max_reply)
                        .map_err(|e| match e {
                            ManifestError::TooLarge { .. } => {
                                HandlerError::new("too_large", e.to_string())
                            }
                            e => bad_request(e),
                        })
                };
                // A large batch is decoded and tagged off the runtime's
                // workers: it stalled gossip and other calls for seconds.
                if payload_len < TAG_INLINE_BELOW {
                    return tag();
                }
                tokio::task::spawn_blocking(tag)
                    .await
                    .map_err(|e| HandlerError::new("error", e.to_string()))?
            }
        },
    )
    .await
    .map_err(|e| format!("cannot serve tag: {e}"))?;
    node.serve(
        "stdout",
        BUILTIN_VERSION,
        PluginKind::Publisher,
        move |_, payload| {
            let mut ready_line = ready_line.clone();
            let stdout = stdout.clone();
            async move {
                ready_line.printed().await;
                let req = StepRequest::decode(&payload).map_err(bad_request)?;
                // Queued for the stdout thread: never blocks this one.
                let n = StdoutPublisher.write_to(stdout, &req.metrics);
                Ok(n.to_string().into_bytes())
            }
        },
    )
    .await
    .map_err(|e| format!("cannot serve stdout: {e}"))?;
    if let Some(publisher) = publish_file {
        let last_warning = Arc::new(std::sync::Mutex::new(None::<std::time::Instant>));
        node.serve(
            "file",
            BUILTIN_VERSION,
            PluginKind::Publisher,
            move |info, payload| {
                let publisher = publisher.clone();
                let last_warning = last_warning.clone();
                async move {
                    let req = StepRequest::decode(&payload).map_err(bad_request)?;
                    // Within the call's budget, so that a stuck file is
                    // named to the caller (and here) before the call's end.
                    let wait = info.budget.saturating_sub(info.budget / 5);
                    match publisher.publish_within(&req.metrics, wait).await {
                        Ok(n) => Ok(n.to_string().into_bytes()),
                        Err(e) => {
                            let mut last = last_warning.lock().unwrap_or_else(|p| p.into_inner());
                            if last.is_none_or(|t| t.elapsed() >= FAILURE_LOG_EVERY) {
                                *last = Some(std::time::Instant::now());
                                tracing::warn!(
                                    caller = %info.caller,
                                    error = %e.message,
                                    "the file publisher could not write a batch (logged at most once a minute)"
                                );
                            }
                            Err(HandlerError::new(e.code, e.message))
                        }
                    }
                }
            },
        )
        .await
        .map_err(|e| format!("cannot serve file: {e}"))?;
    }
    Ok(())
}

/// When the agent sets its tasks again from the catalogs after its event
/// stream lost events (it fell 65,536 behind: a late joiner of a large
/// tribe), maybe a `TaskRun` or a `TaskStop` among them: once the older
/// events queued before them are read (a quiet second), or after 10 s of a
/// stream that stays busy, and then again at the next quiet second, since
/// events older than that resync, read after it, may have undone part of
/// it.
#[derive(Debug, Default)]
pub struct ResyncClock {
    /// Since when lost events wait to be made up for.
    behind: Option<Instant>,
    /// A resync was made while the stream was busy.
    again_when_quiet: bool,
}

/// The longest a resync waits for a quiet stream.
const RESYNC_WAIT: Duration = Duration::from_secs(10);

impl ResyncClock {
    /// The stream lost events.
    pub fn lost_events(&mut self, now: Instant) {
        self.behind.get_or_insert(now);
    }

    /// Whether to resync now, after a read (`quiet`: a second passed with
    /// no event).
    pub fn due(&mut self, quiet: bool, now: Instant) -> bool {
        if self
            .behind
            .is_some_and(|since| quiet || now.duration_since(since) >= RESYNC_WAIT)
        {
            self.behind = None;
            self.again_when_quiet = !quiet;
            return true;
        }
        if quiet && self.again_when_quiet {
            self.again_when_quiet = false;
            return true;
        }
        false
    }
}

/// Runs the tasks this node is asked to run.
pub struct TaskRunner {
    node: Node,
    /// The runs' outcomes, for `/metrics`.
    runs: TaskRuns,
    /// Each running task's run and the manifest it runs.
    running: HashMap<(String, String), (tokio::task::JoinHandle<()>, String)>,
}

impl TaskRunner {
    /// A runner with no task, noting its tasks' runs in `runs`.
    pub fn new(node: Node, runs: TaskRuns) -> TaskRunner {
        TaskRunner {
            node,
            runs,
            running: HashMap::new(),
        }
    }

    /// Sets the tasks run to what the snapshots say this node should run:
    /// after the event stream lost events (it fell 65,536 behind), a
    /// `TaskRun` or `TaskStop` may be among them.
    pub fn resync(&mut self) {
        let me = self.node.name().to_string();
        let wanted: Vec<Task> = self
            .node
            .tribes()
            .into_iter()
            .filter(|t| t.members.contains(&me))
            .flat_map(|t| t.tasks)
            .filter(|task| task.state == tribe::TaskState::Running)
            .collect();
        let keys: std::collections::HashSet<(String, String)> = wanted
            .iter()
            .map(|t| (t.tribe.clone(), t.id.clone()))
            .collect();
        let gone: Vec<(String, String)> = self
            .running
            .keys()
            .filter(|k| !keys.contains(*k))
            .cloned()
            .collect();
        for key in gone {
            self.stop(&key.0, &key.1);
        }
        for task in &wanted {
            let key = (task.tribe.clone(), task.id.clone());
            if self
                .running
                .get(&key)
                .is_none_or(|(_, m)| *m != task.manifest)
            {
                self.start(task);
            }
        }
    }

    fn stop(&mut self, tribe: &str, id: &str) {
        if let Some((handle, _)) = self.running.remove(&(tribe.to_string(), id.to_string())) {
            handle.abort();
            self.runs.stopped(tribe, id);
            tracing::info!(%tribe, task = %id, "task stopped");
        }
    }

    /// Starts, restarts or stops tasks as events say.
    pub fn on_event(&mut self, event: &Event) {
        match event {
            Event::TaskRun(task) => self.start(task),
            Event::TaskStop(task) => self.stop(&task.tribe, &task.id),
            _ => {}
        }
    }

    fn start(&mut self, task: &Task) {
        let key = (task.tribe.clone(), task.id.clone());
        if let Some((old, _)) = self.running.remove(&key) {
            old.abort();
            self.runs.stopped(&task.tribe, &task.id);
        }
        let manifest = match Manifest::parse(&task.id, &task.manifest) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(tribe = %task.tribe, task = %task.id, error = %e, "task manifest refused; not running it");
                return;
            }
        };
        if manifest.collect.plugin != "proc" {
            tracing::warn!(
                tribe = %task.tribe,
                task = %task.id,
                collector = %manifest.collect.plugin,
                "this agent collects only with the built-in `proc` collector; not running the task"
            );
            return;
        }
        if manifest
            .collect
            .version
            .as_deref()
            .is_some_and(|v| v != BUILTIN_VERSION)
        {
            tracing::warn!(
                tribe = %task.tribe,
                task = %task.id,
                version = ?manifest.collect.version,
                "this agent's built-in `proc` collector is version {BUILTIN_VERSION}; not running the task"
            );
            return;
        }
        tracing::info!(tribe = %task.tribe, task = %task.id, interval = ?manifest.schedule.interval, "task running");
        let node = self.node.clone();
        let tribe = task.tribe.clone();
        self.runs.started(&task.tribe, &task.id);
        let handle = tokio::spawn(run_task(node, tribe, manifest, self.runs.clone()));
        self.running.insert(key, (handle, task.manifest.clone()));
    }
}

async fn run_task(node: Node, tribe: String, manifest: Manifest, runs: TaskRuns) {
    let interval = manifest.schedule.interval;
    let patterns = manifest.collect.metrics.clone();
    let step_timeout = interval.clamp(Duration::from_secs(1), Duration::from_secs(10));
    let workflow = Workflow::new(manifest, step_timeout);
    let collector = ProcCollector::new();
    // Tasks started together (a late joiner inherits thousands at once)
    // would tick together for good, each tick opening as many files at
    // once: the first run comes within the first interval (10 s at most),
    // at a random point.
    let spread = interval.min(FIRST_RUN_SPREAD).as_millis() as u64;
    let first = Duration::from_millis(rand::random_range(0..spread.max(1)));
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + first, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_failure_log: Option<tokio::time::Instant> = None;
    let mut last_empty_log: Option<tokio::time::Instant> = None;
    let mut succeeded_once = false;
    let id = workflow.manifest().id.clone();
    loop {
        tick.tick().await;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut metrics = match collector.collect(&patterns, now).await {
            Ok(m) => m,
            Err(e) => {
                runs.ran(&tribe, &id, TaskOutcome::CollectFailed);
                if last_failure_log.is_none_or(|t| t.elapsed() >= FAILURE_LOG_EVERY) {
                    last_failure_log = Some(tokio::time::Instant::now());
                    tracing::warn!(%tribe, task = %id, error = %e, "collect failed");
                }
                continue;
            }
        };
        // A pattern with a typo matches nothing, and every run still
        // succeeds: said, at the pace of failures.
        if metrics.is_empty()
            && !patterns.is_empty()
            && last_empty_log.is_none_or(|t| t.elapsed() >= FAILURE_LOG_EVERY)
        {
            last_empty_log = Some(tokio::time::Instant::now());
            tracing::warn!(%tribe, task = %id, metrics = ?patterns, "the task's metric patterns match nothing the `proc` collector reads: its runs carry no metric");
        }
        for m in &mut metrics {
            m.tags.insert("source".into(), node.name().to_string());
        }
        let report = workflow.run(&node, metrics).await;
        let outcome = if report.ok() {
            TaskOutcome::Ok
        } else {
            TaskOutcome::StepFailed
        };
        runs.ran(&tribe, &id, outcome);
        if report.ok() {
            if !succeeded_once {
                succeeded_once = true;
                tracing::info!(%tribe, task = %id, metrics = report.metrics_in, steps = report.steps.len(), "task ran its whole chain");
            }
            continue;
        }
        let due = last_failure_log.is_none_or(|t| t.elapsed() >= FAILURE_LOG_EVERY);
        if due {
            last_failure_log = Some(tokio::time::Instant::now());
            for step in &report.steps {
                if let StepResult::Failed(e) = &step.result {
                    tracing::warn!(%tribe, task = %id, plugin = %step.plugin, through = ?step.tribe, error = %e, "task step failed");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ReadyLine;
    use std::time::Duration;

    #[tokio::test]
    async fn the_stdout_publisher_waits_for_the_ready_line() {
        let (printed, mut gate) = ReadyLine::closed();
        let mut early = gate.clone();
        let waited = tokio::time::timeout(Duration::from_millis(50), early.printed()).await;
        assert!(waited.is_err(), "opened before the ready line");
        printed.send_replace(true);
        tokio::time::timeout(Duration::from_secs(5), gate.printed())
            .await
            .expect("open once the ready line is out");
    }

    #[test]
    fn a_resync_made_while_the_stream_is_busy_is_made_again_when_it_is_quiet() {
        use super::ResyncClock;
        let t0 = std::time::Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut clock = ResyncClock::default();
        assert!(!clock.due(true, at(0)), "nothing lost, nothing to do");
        clock.lost_events(at(0));
        // Busy: no resync before 10 s, one at 10 s, none more while busy.
        assert!(!clock.due(false, at(5)));
        assert!(clock.due(false, at(10)));
        assert!(!clock.due(false, at(11)));
        // The first quiet second resyncs again, once.
        assert!(clock.due(true, at(12)));
        assert!(!clock.due(true, at(13)));
        // Lost events read up to a quiet second: one resync only.
        clock.lost_events(at(20));
        assert!(clock.due(true, at(21)));
        assert!(!clock.due(true, at(22)));
    }

    /// After lost events, the runner takes what to run from the catalogs:
    /// a task it missed the start of runs, one it missed the stop of stops,
    /// one whose manifest changed runs the new one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_resync_runs_what_the_catalogs_say() {
        let mut cfg = tribe::Config::new("resync");
        cfg.profile = tribe::Profile::Local;
        cfg.collect_facts = false;
        let node = tribe::Node::start(cfg).await.unwrap();
        node.create_tribe("t").await.unwrap();
        node.join("t", "resync").await.unwrap();
        let manifest = |interval: &str| {
            format!(
                r#"{{"schedule": {{"interval": "{interval}"}}, "collect": {{"plugin": "proc"}}}}"#
            )
        };
        node.add_task("t", "a", &manifest("1s"), tribe::TaskState::Running)
            .await
            .unwrap();
        node.add_task("t", "b", &manifest("1s"), tribe::TaskState::Stopped)
            .await
            .unwrap();
        let runs = tribe::admin::TaskRuns::default();
        let mut runner = super::TaskRunner::new(node.clone(), runs.clone());
        let running = |r: &super::TaskRunner| {
            let mut ids: Vec<String> = r.running.keys().map(|(_, id)| id.clone()).collect();
            ids.sort();
            ids
        };
        runner.resync();
        assert_eq!(running(&runner), ["a"]);
        let counted = |runs: &tribe::admin::TaskRuns| {
            runs.counts()
                .into_iter()
                .map(|c| c.task)
                .collect::<Vec<_>>()
        };
        assert_eq!(counted(&runs), ["a"]);
        node.set_task_state("t", "a", tribe::TaskState::Stopped)
            .await
            .unwrap();
        node.set_task_state("t", "b", tribe::TaskState::Running)
            .await
            .unwrap();
        runner.resync();
        assert_eq!(running(&runner), ["b"]);
        assert_eq!(counted(&runs), ["b"]);
        node.remove_task("t", "b").await.unwrap();
        node.add_task("t", "b", &manifest("2s"), tribe::TaskState::Running)
            .await
            .unwrap();
        runner.resync();
        let kept = &runner.running[&("t".to_string(), "b".to_string())].1;
        assert!(kept.contains(r#""2s""#), "{kept}");
        node.leave("t", "resync").await.unwrap();
        runner.resync();
        assert!(running(&runner).is_empty());
        assert!(counted(&runs).is_empty());
        node.shutdown().await.unwrap();
    }
}
