//! Metric batches: the JSON form in which metrics travel between steps.
//!
//! Metrics travel as a JSON array of objects:
//!
//! ```json
//! [{"name": "load/1min", "value": 0.25, "tags": {"plugin": "proc"}, "timestamp_ms": 1700000000000}]
//! ```
//!
//! `tags` may be left out (no tags). [`decode_metrics`] refuses batches of more
//! than 100 000 metrics or 32 MiB, names that are empty, longer than 256 bytes
//! or hold control characters, more than 64 tags, tag keys of 0 or more than
//! 128 bytes, tag values over 256 bytes, control characters in tags, and
//! values that are not finite. Unknown fields in a metric are ignored, so
//! newer agents can add some. [`encode_metrics`] leaves out the metrics decode
//! would refuse (JSON cannot hold NaN or infinities); split batches larger
//! than 100 000 metrics before sending them.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{Error as _, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use super::manifest::{has_control, invalid, quoted, ManifestError};
use super::object::object_only;

/// Most metrics in one decoded batch.
pub const MAX_METRICS: usize = 100_000;
/// Largest encoded metric batch [`decode_metrics`] looks at, in bytes.
pub const MAX_METRICS_BYTES: usize = 32 * 1024 * 1024;
/// Longest metric name, in bytes.
pub const MAX_METRIC_NAME_LEN: usize = 256;
/// Most tags on one metric.
pub const MAX_METRIC_TAGS: usize = 64;
/// Longest tag key, in bytes.
pub const MAX_TAG_KEY_LEN: usize = 128;
/// Longest tag value, in bytes.
pub const MAX_TAG_VALUE_LEN: usize = 256;

/// One measurement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(remote = "Self")]
pub struct Metric {
    /// Name like `load/1min`.
    pub name: String,
    /// The value; must be finite to travel.
    pub value: f64,
    /// Tags like `host=node-1`.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// When it was measured, in milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
}

object_only!(
    Metric,
    "a metric object with name, value, tags and timestamp_ms",
    serialize
);

impl Metric {
    /// A metric without tags.
    pub fn new(name: impl Into<String>, value: f64, timestamp_ms: u64) -> Metric {
        Metric {
            name: name.into(),
            value,
            tags: BTreeMap::new(),
            timestamp_ms,
        }
    }

    /// Checks the rules [`decode_metrics`] applies to each metric.
    pub fn validate(&self) -> Result<(), ManifestError> {
        check_metric("metric", self)
    }
}

fn check_metric(at: &str, metric: &Metric) -> Result<(), ManifestError> {
    let name = &metric.name;
    let name_problem = if name.is_empty() {
        Some("is empty")
    } else if name.len() > MAX_METRIC_NAME_LEN {
        Some("is longer than 256 bytes")
    } else if has_control(name) {
        Some("holds control characters")
    } else {
        None
    };
    if let Some(reason) = name_problem {
        return Err(invalid(
            format!("{at}.name"),
            format!("{} {reason}", quoted(name)),
        ));
    }
    if !metric.value.is_finite() {
        return Err(invalid(
            format!("{at}.value"),
            format!("{} is not finite", metric.value),
        ));
    }
    if metric.tags.len() > MAX_METRIC_TAGS {
        return Err(invalid(
            format!("{at}.tags"),
            format!(
                "has {} tags, more than {MAX_METRIC_TAGS}",
                metric.tags.len()
            ),
        ));
    }
    check_tags(&format!("{at}.tags"), &metric.tags)
}

/// Checks tags against the rules [`decode_metrics`] applies to a metric's
/// (`at` names them in the error).
pub fn check_tags(at: &str, tags: &BTreeMap<String, String>) -> Result<(), ManifestError> {
    for (key, value) in tags {
        let problem = if key.is_empty() {
            Some("key is empty")
        } else if key.len() > MAX_TAG_KEY_LEN {
            Some("key is longer than 128 bytes")
        } else if value.len() > MAX_TAG_VALUE_LEN {
            Some("value is longer than 256 bytes")
        } else if has_control(key) || has_control(value) {
            Some("holds control characters")
        } else {
            None
        };
        if let Some(reason) = problem {
            return Err(invalid(
                at.to_string(),
                format!("tag {} {reason}", quoted(key)),
            ));
        }
    }
    Ok(())
}

/// Encodes metrics as a JSON array, leaving out those [`decode_metrics`]
/// would refuse (non-finite values above all, which JSON cannot hold).
pub fn encode_metrics(metrics: &[Metric]) -> Vec<u8> {
    let kept: Vec<&Metric> = metrics.iter().filter(|m| m.validate().is_ok()).collect();
    // Strings, finite floats and string-keyed maps always serialise, so the
    // fallback is never taken; it only avoids a panic path.
    serde_json::to_vec(&kept).unwrap_or_else(|_| b"[]".to_vec())
}

/// Decodes and checks a JSON array of metrics; see the
/// [module documentation](self) for the limits.
pub fn decode_metrics(bytes: &[u8]) -> Result<Vec<Metric>, ManifestError> {
    const WHAT: &str = "metric batch";
    if bytes.len() > MAX_METRICS_BYTES {
        return Err(ManifestError::TooLarge {
            what: WHAT,
            len: bytes.len(),
            max: MAX_METRICS_BYTES,
        });
    }
    let Bounded(metrics) = serde_json::from_slice(bytes).map_err(|e| ManifestError::Json {
        what: WHAT,
        message: e.to_string(),
    })?;
    check_batch(&metrics)?;
    Ok(metrics)
}

/// Checks every metric of a decoded batch.
pub(crate) fn check_batch(metrics: &[Metric]) -> Result<(), ManifestError> {
    for (i, metric) in metrics.iter().enumerate() {
        check_metric(&format!("metrics[{i}]"), metric)?;
    }
    Ok(())
}

/// A metric array that stops parsing past [`MAX_METRICS`] elements, so a
/// hostile batch cannot grow the vector first and be counted afterwards.
pub(crate) struct Bounded(pub(crate) Vec<Metric>);

impl<'de> Deserialize<'de> for Bounded {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_seq(BoundedVisitor)
    }
}

struct BoundedVisitor;

impl<'de> Visitor<'de> for BoundedVisitor {
    type Value = Bounded;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "an array of at most {MAX_METRICS} metrics")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Bounded, A::Error> {
        // The size hint comes from the input, so it only seeds a small buffer.
        let mut metrics = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some(metric) = seq.next_element::<Metric>()? {
            if metrics.len() == MAX_METRICS {
                return Err(A::Error::custom(format_args!(
                    "more than {MAX_METRICS} metrics"
                )));
            }
            metrics.push(metric);
        }
        Ok(Bounded(metrics))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metric(name: &str, value: f64) -> Metric {
        let mut m = Metric::new(name, value, 1_700_000_000_000);
        m.tags.insert("plugin".into(), "proc".into());
        m
    }

    #[test]
    fn metrics_round_trip() {
        let metrics = vec![
            metric("load/1min", 0.25),
            Metric::new("mem/free_kb", 1024.0, 7),
        ];
        let bytes = encode_metrics(&metrics);
        assert_eq!(decode_metrics(&bytes).unwrap(), metrics);
        assert_eq!(decode_metrics(b"[]").unwrap(), Vec::<Metric>::new());
        // Tags may be absent and unknown fields are ignored.
        let m = decode_metrics(br#"[{"name":"a","value":1,"timestamp_ms":2,"unit":"s"}]"#).unwrap();
        assert_eq!(m, vec![Metric::new("a", 1.0, 2)]);
    }

    #[test]
    fn metrics_and_step_requests_written_as_arrays_are_refused() {
        let e = decode_metrics(br#"[["a",1,{},2]]"#).unwrap_err();
        assert!(e.to_string().contains("a metric object"), "{e}");
        for body in [
            r#"[{"env":"x"},[{"name":"a","value":1,"timestamp_ms":2}]]"#,
            r#"{"metrics":[["a",1,{},2]]}"#,
        ] {
            let e = crate::workflow::StepRequest::decode(body.as_bytes()).unwrap_err();
            assert_eq!(e.code(), "bad_json", "{body}");
        }
        // The same in object form passes.
        let ok = br#"{"config":{"env":"x"},"metrics":[{"name":"a","value":1,"timestamp_ms":2}]}"#;
        assert!(crate::workflow::StepRequest::decode(ok).is_ok());
    }

    #[test]
    fn encode_skips_what_decode_refuses() {
        let metrics = vec![
            metric("a", f64::NAN),
            metric("b", 1.0),
            metric("c", f64::INFINITY),
            metric("", 2.0),
        ];
        let decoded = decode_metrics(&encode_metrics(&metrics)).unwrap();
        assert_eq!(decoded, vec![metric("b", 1.0)]);
    }

    #[test]
    fn decode_refuses_bad_batches() {
        for bad in [
            &b""[..],
            b"{}",
            b"[1]",
            b"[{\"name\":\"a\",\"value\":1}]",
            b"[{\"name\":\"a\",\"value\":1,\"timestamp_ms\":-1}]",
            b"[{\"name\":\"a\",\"value\":1e999,\"timestamp_ms\":1}]",
            b"[{\"name\":\"a\",\"value\":null,\"timestamp_ms\":1}]",
            b"\xff",
        ] {
            assert_eq!(
                decode_metrics(bad).unwrap_err().code(),
                "bad_json",
                "{bad:?}"
            );
        }
        let long = "n".repeat(257);
        let json = format!(
            r#"[{{"name":"ok","value":1,"timestamp_ms":1}},{{"name":"{long}","value":1,"timestamp_ms":1}}]"#
        );
        let e = decode_metrics(json.as_bytes()).unwrap_err().to_string();
        assert!(e.starts_with("metrics[1].name:"), "{e}");
        let e =
            decode_metrics(br#"[{"name":"a\u001b[2J","value":1,"timestamp_ms":1}]"#).unwrap_err();
        assert!(e.to_string().contains("control"), "{e}");

        let mut many_tags = Metric::new("a", 1.0, 1);
        for i in 0..65 {
            many_tags.tags.insert(format!("k{i}"), "v".into());
        }
        let json = serde_json::to_vec(&[&many_tags]).unwrap();
        let e = decode_metrics(&json).unwrap_err().to_string();
        assert_eq!(e, "metrics[0].tags: has 65 tags, more than 64");
        assert!(encode_metrics(&[many_tags]).starts_with(b"[]"));
    }

    #[test]
    fn decode_stops_past_the_count_limit() {
        let one = r#"{"name":"a","value":1,"timestamp_ms":1}"#;
        let at_limit = format!("[{}]", vec![one; MAX_METRICS].join(","));
        assert_eq!(
            decode_metrics(at_limit.as_bytes()).unwrap().len(),
            MAX_METRICS
        );
        let over = format!("[{}]", vec![one; MAX_METRICS + 1].join(","));
        let e = decode_metrics(over.as_bytes()).unwrap_err();
        assert!(e.to_string().contains("more than 100000 metrics"), "{e}");
        let huge = vec![b' '; MAX_METRICS_BYTES + 1];
        assert_eq!(decode_metrics(&huge).unwrap_err().code(), "too_large");
    }
}
