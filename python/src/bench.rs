//! Bench-only helpers: a Rust echo handler and a Rust call loop, so one
//! benchmark run compares Python → Python, Python → Rust and Rust → Rust on
//! the same nodes.

use std::time::{Duration, Instant};

use pyo3::prelude::*;
use tribe::{CallTarget, PluginKind};

use crate::errors::{check, value_error};
use crate::node::NativeNode;

/// Serves `name`/`version` on `node` with a Rust handler that echoes the payload.
#[pyfunction]
#[pyo3(signature = (node, name, version="1", kind="processor"))]
pub(crate) fn _bench_serve_echo(
    py: Python<'_>,
    node: &Bound<'_, NativeNode>,
    name: &str,
    version: &str,
    kind: &str,
) -> PyResult<()> {
    let kind: PluginKind = kind
        .parse()
        .map_err(|_| value_error(format!("bad kind {kind:?}")))?;
    let n = node.get().node().clone();
    let r = crate::wait(py, async move {
        n.serve(
            name,
            version,
            kind,
            |_info, payload| async move { Ok(payload) },
        )
        .await
    })?;
    check(py, r)
}

/// Runs `calls` calls of `payload_size` bytes from `node` in `concurrency`
/// runtime tasks; returns `(elapsed seconds, latencies in microseconds)`.
#[pyfunction]
#[pyo3(signature = (node, tribe, plugin, calls, concurrency=1, payload_size=100, kind="processor"))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn _bench_rust_calls(
    py: Python<'_>,
    node: &Bound<'_, NativeNode>,
    tribe: &str,
    plugin: &str,
    calls: usize,
    concurrency: usize,
    payload_size: usize,
    kind: &str,
) -> PyResult<(f64, Vec<f64>)> {
    if concurrency == 0 || calls == 0 {
        return Err(value_error("calls and concurrency must be more than 0"));
    }
    let kind: PluginKind = kind
        .parse()
        .map_err(|_| value_error(format!("bad kind {kind:?}")))?;
    let target = CallTarget::new(tribe, plugin, kind);
    let n = node.get().node().clone();
    let per_task = calls.div_ceil(concurrency);
    let rt = crate::runtime()?;
    let out = py.detach(move || {
        rt.block_on(async move {
            let start = Instant::now();
            let mut tasks = Vec::new();
            for _ in 0..concurrency {
                let n = n.clone();
                let target = target.clone();
                tasks.push(tokio::spawn(async move {
                    let mut lat = Vec::with_capacity(per_task);
                    for _ in 0..per_task {
                        let t = Instant::now();
                        n.call(&target, vec![7u8; payload_size], Duration::from_secs(10))
                            .await?;
                        lat.push(t.elapsed().as_secs_f64() * 1e6);
                    }
                    Ok::<_, tribe::Error>(lat)
                }));
            }
            let mut all = Vec::with_capacity(calls);
            for t in tasks {
                match t.await {
                    Ok(Ok(lat)) => all.extend(lat),
                    Ok(Err(e)) => return Err(e),
                    Err(_) => return Err(tribe::Error::ShuttingDown),
                }
            }
            Ok((start.elapsed().as_secs_f64(), all))
        })
    });
    check(py, out)
}
