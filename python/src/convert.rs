//! Snapshots and events as plain Python values (dicts, lists, str, int,
//! bool, None) in the admin API's JSON schema; the package's pure-Python
//! face turns them into frozen dataclasses.

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use serde_json::{json, Value};
use tribe::admin::json as schema;
use tribe::Event;

/// A JSON value as a Python object.
pub(crate) fn to_py<'py>(py: Python<'py>, v: &Value) -> PyResult<Bound<'py, PyAny>> {
    Ok(match v {
        Value::Null => py.None().into_bound(py),
        Value::Bool(b) => b.into_pyobject(py)?.to_owned().into_any(),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                i.into_pyobject(py)?.into_any()
            } else if let Some(u) = n.as_u64() {
                u.into_pyobject(py)?.into_any()
            } else {
                n.as_f64().unwrap_or(f64::NAN).into_pyobject(py)?.into_any()
            }
        }
        Value::String(s) => s.into_pyobject(py)?.into_any(),
        Value::Array(items) => {
            let list = PyList::empty(py);
            for item in items {
                list.append(to_py(py, item)?)?;
            }
            list.into_any()
        }
        Value::Object(map) => {
            let dict = PyDict::new(py);
            for (k, item) in map {
                dict.set_item(k, to_py(py, item)?)?;
            }
            dict.into_any()
        }
    })
}

pub(crate) fn value<T: serde::Serialize>(t: &T) -> Value {
    serde_json::to_value(t).unwrap_or(Value::Null)
}

pub(crate) fn member(m: &tribe::MemberInfo) -> Value {
    value(&schema::Member::from(m))
}

pub(crate) fn tribe_info(t: &tribe::TribeInfo) -> Value {
    value(&schema::Tribe::from(t))
}

pub(crate) fn policy(p: &tribe::Policy) -> Value {
    value(&schema::PolicyJson::from(p))
}

pub(crate) fn keys(k: &tribe::KeyringStatus) -> Value {
    value(&schema::Keys::from(k))
}

fn plugin(p: &tribe::PluginEntry) -> Value {
    let mut v = value(&schema::Plugin::from(p));
    if let Value::Object(map) = &mut v {
        map.insert("tribe".into(), Value::String(p.tribe.clone()));
        map.entry("sha256").or_insert(Value::Null);
        map.entry("size").or_insert(Value::Null);
    }
    v
}

fn task(t: &tribe::Task) -> Value {
    let mut v = value(&schema::TaskJson::from(t));
    if let Value::Object(map) = &mut v {
        map.insert("tribe".into(), Value::String(t.tribe.clone()));
    }
    v
}

fn with_kind(kind: &str, mut v: Value) -> Value {
    if let Value::Object(map) = &mut v {
        map.insert("kind_".into(), Value::String(kind.into()));
    }
    v
}

/// An event as `{"kind_": kind, ...fields}`. (`kind_` because a plugin's
/// own field is called `kind`.)
pub(crate) fn event(e: &Event) -> Value {
    match e {
        Event::Joined => with_kind("joined", json!({})),
        Event::Isolated => with_kind("isolated", json!({})),
        Event::MemberJoined { name, addr } => {
            with_kind("member_up", json!({"name": name, "addr": addr.to_string()}))
        }
        Event::MemberUpdated { name } => with_kind("member_updated", json!({ "name": name })),
        Event::MemberLeft { name } => with_kind("member_left", json!({ "name": name })),
        Event::MemberFailed { name } => with_kind("member_failed", json!({ "name": name })),
        Event::MemberReaped { name } => with_kind("member_reaped", json!({ "name": name })),
        Event::TribeCreated { tribe } => with_kind("tribe_created", json!({ "tribe": tribe })),
        Event::TribeDeleted { tribe } => with_kind("tribe_deleted", json!({ "tribe": tribe })),
        Event::TribeJoined { tribe, by } => with_kind(
            "tribe_joined",
            json!({"tribe": tribe, "by_hand": by.by_hand, "by_policy": by.by_policy}),
        ),
        Event::TribeLeft { tribe } => with_kind("tribe_left", json!({ "tribe": tribe })),
        Event::PluginLoad(p) => with_kind("plugin_load", plugin(p)),
        Event::PluginUnload(p) => with_kind("plugin_unload", plugin(p)),
        Event::TaskRun(t) => with_kind("task_run", task(t)),
        Event::TaskStop(t) => with_kind("task_stop", task(t)),
        Event::ArtifactCorrupt { plugin: p, holder } => with_kind(
            "artifact_corrupt",
            json!({"plugin": plugin(p), "holder": holder}),
        ),
        Event::ArtifactUnavailable { plugin: p, reason } => with_kind(
            "artifact_unavailable",
            json!({"plugin": plugin(p), "reason": reason}),
        ),
        Event::PolicyError { policy, message } => with_kind(
            "policy_error",
            json!({"policy": policy, "message": message}),
        ),
        Event::IdentityClaimed { addr, generation } => with_kind(
            "identity_claimed",
            json!({"addr": addr.to_string(), "generation": generation}),
        ),
        Event::ClockSkew { peer, offset_ms } => {
            with_kind("clock_skew", json!({"name": peer, "offset_ms": offset_ms}))
        }
        other => with_kind("unknown", json!({ "text": format!("{other:?}") })),
    }
}
