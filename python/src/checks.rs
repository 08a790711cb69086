//! Checks that need no node, as C's `tribe_name_check`,
//! `tribe_version_check` and `tribe_step_request_check` (the config check
//! is `NativeConfig.check`, beside the code that builds a config).

use pyo3::prelude::*;

use crate::errors::{check, value_error};

/// Checks `name` against the naming rules of nodes, tribes, policies and
/// plugins: `InvalidNameError` saying which rule it breaks.
#[pyfunction]
pub(crate) fn check_name(py: Python<'_>, name: &str) -> PyResult<()> {
    check(py, tribe::names::check("name", name))
}

/// Checks a plugin version (the rules of names, up to 32 bytes):
/// `InvalidNameError` saying which rule it breaks.
#[pyfunction]
pub(crate) fn check_version(py: Python<'_>, version: &str) -> PyResult<()> {
    check(py, tribe::names::check_version(version))
}

/// Checks a step request as the agent's publishers do: the number of its
/// metrics, or `InvalidArgumentError` saying what is wrong. Decoded with
/// the GIL released (a batch may be megabytes).
#[pyfunction]
pub(crate) fn check_step_request(py: Python<'_>, payload: &Bound<'_, PyAny>) -> PyResult<usize> {
    let bytes = crate::node::payload_bytes("payload", payload)?;
    py.detach(|| tribe::workflow::StepRequest::decode(&bytes).map(|r| r.metrics.len()))
        .map_err(|e| value_error(e.to_string()))
}
