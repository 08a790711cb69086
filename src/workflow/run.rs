//! Runs a manifest's chain for one batch of metrics: the process steps in
//! order, then every publish step. A step that names a tribe is a remote call
//! to a member of that tribe; the others run on this node's own handler.
//! Each step's outcome is reported; a failed process step skips the rest of
//! the chain, since publishing half-processed metrics would be wrong.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::batch::{check_batch, decode_metrics, Bounded, Metric, MAX_METRICS_BYTES};
use super::manifest::{Manifest, ManifestError, Step};
use super::object::object_only;
use crate::error::{Error, Result};
use crate::{CallTarget, Node, PluginKind};

/// What a step's plugin receives: the step's `config` and the metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(remote = "Self")]
pub struct StepRequest {
    /// The step's configuration from the manifest.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    /// The metrics.
    pub metrics: Vec<Metric>,
}

object_only!(StepRequest, "an object with config and metrics", serialize);

impl StepRequest {
    /// Encodes a request (metrics a receiver would refuse are left out).
    pub fn encode(config: &BTreeMap<String, String>, metrics: &[Metric]) -> Vec<u8> {
        let kept: Vec<&Metric> = metrics.iter().filter(|m| m.validate().is_ok()).collect();
        serde_json::to_vec(&serde_json::json!({ "config": config, "metrics": kept }))
            .unwrap_or_default()
    }

    /// Decodes and checks a request with the limits of a metric batch.
    pub fn decode(bytes: &[u8]) -> Result<StepRequest, ManifestError> {
        #[derive(Deserialize)]
        #[serde(remote = "Self")]
        struct Raw {
            #[serde(default)]
            config: BTreeMap<String, String>,
            metrics: Bounded,
        }
        object_only!(Raw, "an object with config and metrics");
        if bytes.len() > MAX_METRICS_BYTES {
            return Err(ManifestError::TooLarge {
                what: "step request",
                len: bytes.len(),
                max: MAX_METRICS_BYTES,
            });
        }
        let raw: Raw = serde_json::from_slice(bytes).map_err(|e| ManifestError::Json {
            what: "step request",
            message: e.to_string(),
        })?;
        let Bounded(metrics) = raw.metrics;
        check_batch(&metrics)?;
        Ok(StepRequest {
            config: raw.config,
            metrics,
        })
    }
}

/// Which part of the chain a step belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// A process step.
    Process,
    /// A publish step.
    Publish,
}

/// How one step went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepResult {
    /// Done; metrics handed on (process) or sent (publish).
    Done(usize),
    /// The step failed.
    Failed(Error),
    /// Not run because an earlier process step failed.
    Skipped,
}

/// One step's report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepReport {
    /// Process or publish.
    pub stage: Stage,
    /// Plugin name.
    pub plugin: String,
    /// The tribe the step was sent through, or `None` for this node.
    pub tribe: Option<String>,
    /// The outcome.
    pub result: StepResult,
}

/// A whole run's report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunReport {
    /// Metrics the run started with.
    pub metrics_in: usize,
    /// Every step, in manifest order.
    pub steps: Vec<StepReport>,
}

impl RunReport {
    /// Whether every step was done.
    pub fn ok(&self) -> bool {
        self.steps
            .iter()
            .all(|s| matches!(s.result, StepResult::Done(_)))
    }
}

/// A manifest's chain, ready to run batches through.
#[derive(Debug, Clone)]
pub struct Workflow {
    manifest: Manifest,
    step_timeout: Duration,
}

impl Workflow {
    /// A workflow whose every step may take up to `step_timeout`.
    pub fn new(manifest: Manifest, step_timeout: Duration) -> Workflow {
        Workflow {
            manifest,
            step_timeout,
        }
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    async fn run_step(
        &self,
        node: &Node,
        step: &Step,
        kind: PluginKind,
        metrics: &[Metric],
    ) -> Result<Vec<u8>> {
        let payload = StepRequest::encode(&step.config, metrics);
        match &step.tribe {
            Some(tribe) => {
                let target = CallTarget {
                    tribe: tribe.clone(),
                    plugin: step.plugin.clone(),
                    version: step.version.clone(),
                    kind,
                };
                node.call(&target, payload, self.step_timeout).await
            }
            None => {
                node.call_local(
                    &step.plugin,
                    step.version.as_deref(),
                    kind,
                    payload,
                    self.step_timeout,
                )
                .await
            }
        }
    }

    /// Runs `metrics` through the process steps, then every publish step.
    pub async fn run(&self, node: &Node, metrics: Vec<Metric>) -> RunReport {
        let metrics_in = metrics.len();
        let mut steps = Vec::new();
        let mut current = Some(metrics);
        for step in &self.manifest.process {
            let result = match &current {
                None => StepResult::Skipped,
                Some(batch) => match self
                    .run_step(node, step, PluginKind::Processor, batch)
                    .await
                {
                    Ok(reply) => match decode_metrics(&reply) {
                        Ok(out) => {
                            let n = out.len();
                            current = Some(out);
                            StepResult::Done(n)
                        }
                        Err(e) => {
                            current = None;
                            StepResult::Failed(Error::Remote {
                                code: "bad_reply".into(),
                                message: format!("the processor's reply: {e}"),
                            })
                        }
                    },
                    Err(e) => {
                        current = None;
                        StepResult::Failed(e)
                    }
                },
            };
            steps.push(StepReport {
                stage: Stage::Process,
                plugin: step.plugin.clone(),
                tribe: step.tribe.clone(),
                result,
            });
        }
        for step in &self.manifest.publish {
            let result = match &current {
                None => StepResult::Skipped,
                Some(batch) => match self
                    .run_step(node, step, PluginKind::Publisher, batch)
                    .await
                {
                    Ok(_) => StepResult::Done(batch.len()),
                    Err(e) => StepResult::Failed(e),
                },
            };
            steps.push(StepReport {
                stage: Stage::Publish,
                plugin: step.plugin.clone(),
                tribe: step.tribe.clone(),
                result,
            });
        }
        RunReport { metrics_in, steps }
    }
}
