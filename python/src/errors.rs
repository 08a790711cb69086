//! `tribe::Error` → the Python exception hierarchy of `pytribe._errors`.

use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple};

static FROM_NATIVE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// The exception for a Rust error: a `pytribe.TribeError` subclass chosen
/// by the error's stable code, with `.code`, `.message` and the variant's
/// fields as attributes.
pub(crate) fn to_py(py: Python<'_>, e: tribe::Error) -> PyErr {
    built(py, &e, || {
        PyRuntimeError::new_err(format!("{}: {e}", e.code()))
    })
}

/// The exception for `e`, or `fallback`'s should the package's error
/// module be unusable. Building it runs Python code, where pending signals
/// are handled: an exception a signal handler raises then (Ctrl-C's
/// `KeyboardInterrupt`, an alarm's) wins, as it would in Python code,
/// rather than being lost.
fn built(py: Python<'_>, e: &tribe::Error, fallback: impl FnOnce() -> PyErr) -> PyErr {
    if let Err(raised) = py.check_signals() {
        return raised;
    }
    let Ok(make) = FROM_NATIVE.import(py, "pytribe._errors", "_from_native") else {
        return fallback();
    };
    build(py, make, e).unwrap_or_else(|raised| raised)
}

fn build(py: Python<'_>, make: &Bound<'_, PyAny>, e: &tribe::Error) -> PyResult<PyErr> {
    let attrs = PyDict::new(py);
    let mut code = e.code().to_string();
    // A key given under the wrong argument is not quoted back (a remote
    // handler's own message is the handler's).
    let mut message = match e {
        tribe::Error::Remote { .. } => e.to_string(),
        _ => tribe::keyfile::withhold_keys(&e.to_string()).into_owned(),
    };
    match e {
        tribe::Error::InvalidPolicy(p) => {
            attrs.set_item("line", p.line)?;
            attrs.set_item("column", p.column)?;
            attrs.set_item("reason", &p.message)?;
        }
        tribe::Error::Remote {
            code: remote,
            message: text,
        } => {
            // A handler's own code and message, as the issue asks.
            attrs.set_item("error_code", &code)?;
            code = remote.clone();
            message = text.clone();
        }
        tribe::Error::TooLarge { size, limit } => {
            attrs.set_item("size", size)?;
            attrs.set_item("limit", limit)?;
        }
        tribe::Error::Disconnected { host } => attrs.set_item("host", host)?,
        tribe::Error::NoProvider {
            tribe,
            plugin,
            stopping,
            unreachable,
            ..
        } => {
            attrs.set_item("tribe", tribe)?;
            attrs.set_item("plugin", plugin)?;
            attrs.set_item("stopping", PyTuple::new(py, stopping)?)?;
            attrs.set_item("unreachable", PyTuple::new(py, unreachable)?)?;
        }
        tribe::Error::UnknownTribe(t) | tribe::Error::TribeExists(t) => {
            attrs.set_item("tribe", t)?;
        }
        tribe::Error::UnknownNode(n) => attrs.set_item("node", n)?,
        tribe::Error::UnknownPolicy(p) | tribe::Error::PolicyExists(p) => {
            attrs.set_item("policy", p)?;
        }
        tribe::Error::UnknownFact(f) => attrs.set_item("fact", f)?,
        tribe::Error::UnknownKey(k) => attrs.set_item("key", k)?,
        tribe::Error::AlreadyMember { tribe, node } | tribe::Error::NotMember { tribe, node } => {
            attrs.set_item("tribe", tribe)?;
            attrs.set_item("node", node)?;
        }
        tribe::Error::InvalidName { what, name, reason } => {
            attrs.set_item("what", *what)?;
            attrs.set_item("name", name)?;
            attrs.set_item("reason", *reason)?;
        }
        _ => {}
    }
    // The names an error carries as attributes are withheld as its message
    // is, should one be a key given in the wrong place (a handler's own
    // code and message are the handler's).
    if !matches!(e, tribe::Error::Remote { .. }) {
        for (k, v) in attrs.clone().iter() {
            if let Ok(text) = v.extract::<String>() {
                let kept = tribe::keyfile::withhold_keys(&text);
                if kept != text {
                    attrs.set_item(k, kept.into_owned())?;
                }
            }
        }
    }
    let kind = if matches!(e, tribe::Error::Remote { .. }) {
        "remote".to_string()
    } else {
        code.clone()
    };
    let exc = make.call1((kind, code, message, attrs))?;
    Ok(PyErr::from_value(exc))
}

/// A bad value: `InvalidArgumentError` (a `ValueError`), as the library's
/// own checks raise, so one `except` catches both; a plain `ValueError`
/// should the package's error module be unusable.
pub(crate) fn value_error(msg: impl Into<String>) -> PyErr {
    let msg = msg.into();
    Python::attach(|py| {
        let e = tribe::Error::InvalidArgument(msg);
        built(py, &e, || PyValueError::new_err(e.to_string()))
    })
}

/// Maps a `tribe::Result` to a `PyResult`.
pub(crate) fn check<T>(py: Python<'_>, r: tribe::Result<T>) -> PyResult<T> {
    r.map_err(|e| to_py(py, e))
}
