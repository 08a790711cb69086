//! A task manifest's chain across nodes: collect, process locally, publish
//! through a tribe to a member serving a file publisher; per-step errors.
mod common;

use std::time::Duration;

use common::*;
use tribe::workflow::builtin::{FilePublisher, Tagger};
use tribe::workflow::manifest::encode_metrics;
use tribe::workflow::{Manifest, Metric, Stage, StepRequest, StepResult, Workflow};
use tribe::{Error, HandlerError, PluginKind};

fn batch(n: usize) -> Vec<Metric> {
    (0..n)
        .map(|i| Metric::new(format!("load/{i}"), i as f64, 1_700_000_000_000))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_processes_locally_and_publishes_through_a_tribe() {
    let dir = std::env::temp_dir().join(format!("tribe-workflow-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let nodes = start_cluster("w", 3, |_| {}).await;
    wait_converged_members(&nodes, 3).await;
    let (caller, store) = (&nodes[0], &nodes[2]);
    caller.create_tribe("storage").await.unwrap();
    wait_same_digest(&nodes).await;
    caller.join("storage", store.name()).await.unwrap();

    // The caller tags locally; the storage node appends to a file.
    caller
        .serve("tag", "1", PluginKind::Processor, |_, payload| async move {
            let req = StepRequest::decode(&payload)
                .map_err(|e| HandlerError::new("bad_input", e.to_string()))?;
            let tagged = Tagger
                .process(req.metrics, &req.config)
                .map_err(|e| HandlerError::new("bad_input", e.to_string()))?;
            Ok(encode_metrics(&tagged))
        })
        .await
        .unwrap();
    let file = dir.join("published.jsonl");
    let publisher = std::sync::Arc::new(FilePublisher::new(file.clone()));
    store
        .serve("file", "1", PluginKind::Publisher, move |_, payload| {
            let publisher = publisher.clone();
            async move {
                let req = StepRequest::decode(&payload)
                    .map_err(|e| HandlerError::new("bad_input", e.to_string()))?;
                let n = publisher
                    .publish(&req.metrics)
                    .await
                    .map_err(|e| HandlerError::new(e.code, e.message))?;
                Ok(n.to_string().into_bytes())
            }
        })
        .await
        .unwrap();
    wait_for("the file endpoint seen", Duration::from_secs(20), || {
        caller
            .members()
            .iter()
            .any(|m| m.name == store.name() && !m.endpoints.is_empty())
            && [caller, store]
                .iter()
                .all(|n| n.tribe("storage").is_some_and(|t| t.members.len() == 1))
    })
    .await;

    let manifest = Manifest::parse(
        "t1",
        r#"{"schedule": {"interval": "1s"},
            "collect": {"plugin": "proc"},
            "process": [{"plugin": "tag", "config": {"pipeline": "test"}}],
            "publish": [{"plugin": "file", "tribe": "storage"},
                        {"plugin": "nowhere", "tribe": "storage"}]}"#,
    )
    .unwrap();
    let report = Workflow::new(manifest, Duration::from_secs(5))
        .run(caller, batch(10))
        .await;
    assert_eq!(report.metrics_in, 10);
    assert_eq!(report.steps.len(), 3);
    assert_eq!(report.steps[0].stage, Stage::Process);
    assert_eq!(report.steps[0].result, StepResult::Done(10));
    assert_eq!(report.steps[1].result, StepResult::Done(10));
    assert!(matches!(
        report.steps[2].result,
        StepResult::Failed(Error::NoProvider { .. })
    ));
    assert!(!report.ok());
    let lines: Vec<Metric> = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 10);
    assert!(lines
        .iter()
        .all(|m| m.tags.get("pipeline").map(String::as_str) == Some("test")));

    // A process step that fails skips the rest of the chain.
    let manifest = Manifest::parse(
        "t2",
        r#"{"schedule": {"interval": "1s"}, "collect": {"plugin": "proc"},
            "process": [{"plugin": "missing"}, {"plugin": "tag"}],
            "publish": [{"plugin": "file", "tribe": "storage"}]}"#,
    )
    .unwrap();
    let report = Workflow::new(manifest, Duration::from_secs(5))
        .run(caller, batch(3))
        .await;
    assert!(matches!(
        report.steps[0].result,
        StepResult::Failed(Error::NoProvider { .. })
    ));
    assert_eq!(report.steps[1].result, StepResult::Skipped);
    assert_eq!(report.steps[2].result, StepResult::Skipped);
    assert_eq!(std::fs::read_to_string(&file).unwrap().lines().count(), 10);
    std::fs::remove_dir_all(&dir).ok();
}
