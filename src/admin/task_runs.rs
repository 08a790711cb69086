//! Counts of the runs of the tasks a host runs (the `tribe agent` runs the
//! catalogs' `proc` tasks), for `/metrics`: a task whose runs keep failing
//! shows there, not only in the logs.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// How one run of a task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TaskOutcome {
    /// It collected and every step of its chain succeeded.
    Ok = 0,
    /// Its collector failed: nothing went down the chain.
    CollectFailed = 1,
    /// A step of its chain (a processor or publisher call) failed.
    StepFailed = 2,
}

impl TaskOutcome {
    /// The `outcome` label of `tribe_task_runs_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskOutcome::Ok => "ok",
            TaskOutcome::CollectFailed => "collect_failed",
            TaskOutcome::StepFailed => "step_failed",
        }
    }

    const ALL: [TaskOutcome; 3] = [
        TaskOutcome::Ok,
        TaskOutcome::CollectFailed,
        TaskOutcome::StepFailed,
    ];
}

/// The runs of each task being run, by outcome. A task's counts start when
/// it starts running here and are dropped when it stops (a task removed
/// from a catalog leaves no series behind; one started again counts from
/// zero, a reset Prometheus expects of counters). Cheap to clone: clones
/// share the counts.
#[derive(Debug, Clone, Default)]
pub struct TaskRuns {
    tasks: Arc<Mutex<Counts>>,
}

/// Runs by outcome (in [`TaskOutcome::ALL`] order) of each (tribe, task).
type Counts = BTreeMap<(String, String), [u64; 3]>;

/// One task's counts, as `/metrics` reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskRunCounts {
    /// The tribe whose catalog holds the task.
    pub tribe: String,
    /// The task's id.
    pub task: String,
    /// Runs by outcome.
    pub runs: Vec<(TaskOutcome, u64)>,
}

impl TaskRuns {
    fn lock(&self) -> MutexGuard<'_, Counts> {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The task now runs here (again: its counts start from zero).
    pub fn started(&self, tribe: &str, task: &str) {
        self.lock().insert((tribe.into(), task.into()), [0; 3]);
    }

    /// The task no longer runs here: its counts are dropped.
    pub fn stopped(&self, tribe: &str, task: &str) {
        self.lock().remove(&(tribe.to_string(), task.to_string()));
    }

    /// A run of the task ended. Ignored for a task not started (a run that
    /// ended as its task was stopped).
    pub fn ran(&self, tribe: &str, task: &str, outcome: TaskOutcome) {
        let mut tasks = self.lock();
        if let Some(counts) = tasks.get_mut(&(tribe.to_string(), task.to_string())) {
            let slot = &mut counts[outcome as usize];
            *slot = slot.saturating_add(1);
        }
    }

    /// Every task being run, in tribe and task order.
    pub fn counts(&self) -> Vec<TaskRunCounts> {
        self.lock()
            .iter()
            .map(|((tribe, task), counts)| TaskRunCounts {
                tribe: tribe.clone(),
                task: task.clone(),
                runs: TaskOutcome::ALL.into_iter().zip(*counts).collect(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_follow_the_tasks_being_run() {
        let runs = TaskRuns::default();
        runs.ran("t", "early", TaskOutcome::Ok);
        assert!(
            runs.counts().is_empty(),
            "a task not started is not counted"
        );
        runs.started("t", "b");
        runs.started("t", "a");
        runs.ran("t", "a", TaskOutcome::Ok);
        runs.ran("t", "a", TaskOutcome::StepFailed);
        runs.ran("t", "a", TaskOutcome::StepFailed);
        let counts = runs.counts();
        assert_eq!(counts.len(), 2);
        assert_eq!(counts[0].task, "a");
        assert_eq!(
            counts[0].runs,
            vec![
                (TaskOutcome::Ok, 1),
                (TaskOutcome::CollectFailed, 0),
                (TaskOutcome::StepFailed, 2)
            ]
        );
        runs.stopped("t", "a");
        runs.started("t", "b");
        let counts = runs.counts();
        assert_eq!(counts.len(), 1);
        assert!(counts[0].runs.iter().all(|(_, n)| *n == 0));
    }
}
