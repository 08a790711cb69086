//! Task manifests, metric batches and metric-name globs, the built-in
//! plugins, and the runner of a manifest's chain: process steps in order,
//! then every publish step, each sent to a member of the tribe it names or
//! run by this node's own handler.
pub mod batch;
pub mod builtin;
mod file_publisher;
pub mod glob;
pub mod manifest;
mod object;
pub mod run;

pub use batch::Metric;
pub use manifest::Manifest;
pub use run::{RunReport, Stage, StepReport, StepRequest, StepResult, Workflow};
