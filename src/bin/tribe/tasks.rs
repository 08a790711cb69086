//! What `tribe agent` does with its tribes' catalogs: it serves the built-in
//! plugins (`tag`, `stdout`, and `file` when asked) and runs every task of
//! the tribes it is in: collect with the built-in `proc` collector on the
//! task's schedule, then the manifest's process and publish steps, remote
//! where a step names a tribe.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tribe::workflow::builtin::{FilePublisher, ProcCollector, StdoutPublisher, Tagger};
use tribe::workflow::manifest::encode_metrics;
use tribe::workflow::{Manifest, StepRequest, StepResult, Workflow};
use tribe::{Event, HandlerError, Node, PluginKind, Task};

/// Version of every built-in plugin.
pub const BUILTIN_VERSION: &str = "1";
/// A failing task is logged at most this often.
const FAILURE_LOG_EVERY: Duration = Duration::from_secs(60);

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

/// Serves `tag` and `stdout` on this node, and `file` when `publish_file` is set.
pub async fn serve_builtins(
    node: &Node,
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
            async move {
                let req = StepRequest::decode(&payload).map_err(bad_request)?;
                let mut tags = req.config;
                tags.entry("tagged_by".into()).or_insert(host);
                tags.entry("caller".into()).or_insert(info.caller);
                let tagged = Tagger.process(req.metrics, &tags).map_err(bad_request)?;
                Ok(encode_metrics(&tagged))
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

/// Runs the tasks this node is asked to run.
pub struct TaskRunner {
    node: Node,
    running: HashMap<(String, String), tokio::task::JoinHandle<()>>,
}

impl TaskRunner {
    /// A runner with no task.
    pub fn new(node: Node) -> TaskRunner {
        TaskRunner {
            node,
            running: HashMap::new(),
        }
    }

    /// Starts, restarts or stops tasks as events say.
    pub fn on_event(&mut self, event: &Event) {
        match event {
            Event::TaskRun(task) => self.start(task),
            Event::TaskStop(task) => {
                if let Some(handle) = self.running.remove(&(task.tribe.clone(), task.id.clone())) {
                    handle.abort();
                    tracing::info!(tribe = %task.tribe, task = %task.id, "task stopped");
                }
            }
            _ => {}
        }
    }

    fn start(&mut self, task: &Task) {
        let key = (task.tribe.clone(), task.id.clone());
        if let Some(old) = self.running.remove(&key) {
            old.abort();
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
        tracing::info!(tribe = %task.tribe, task = %task.id, interval = ?manifest.schedule.interval, "task running");
        let node = self.node.clone();
        let tribe = task.tribe.clone();
        let handle = tokio::spawn(run_task(node, tribe, manifest));
        self.running.insert(key, handle);
    }
}

async fn run_task(node: Node, tribe: String, manifest: Manifest) {
    let interval = manifest.schedule.interval;
    let patterns = manifest.collect.metrics.clone();
    let step_timeout = interval.clamp(Duration::from_secs(1), Duration::from_secs(10));
    let workflow = Workflow::new(manifest, step_timeout);
    let collector = ProcCollector::new();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_failure_log: Option<tokio::time::Instant> = None;
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
                tracing::warn!(%tribe, task = %id, error = %e, "collect failed");
                continue;
            }
        };
        for m in &mut metrics {
            m.tags.insert("source".into(), node.name().to_string());
        }
        let report = workflow.run(&node, metrics).await;
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
}
