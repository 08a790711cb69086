//! Task manifests: what a task collects, how it processes the metrics and
//! where it publishes them. Metric batches are in [`super::batch`] and
//! metric-name globs in [`super::glob`]; their public items are re-exported
//! here, where they used to live.
//!
//! # Task manifest schema
//!
//! A task manifest is one JSON object. The task id is given separately (it
//! names the task record), so `id` may be left out; when present it must equal
//! the task id.
//!
//! ```json
//! {"id": "cpu-to-storage",
//!  "schedule": {"interval": "5s"},
//!  "collect": {"plugin": "proc", "metrics": ["load/*", "mem/*"]},
//!  "process": [{"plugin": "tag", "version": "1", "tribe": "core"}],
//!  "publish": [{"plugin": "file", "tribe": "storage"}]}
//! ```
//!
//! | Field | Type | Required | Rule |
//! |---|---|---|---|
//! | `id` | string | no | equals the task id |
//! | `schedule.interval` | string | yes | whole number and unit `ms`, `s`, `m` or `h` (`500ms`, `5s`, `1m`, `2h`); 100ms ..= 24h |
//! | `collect.plugin` | string | yes | a name |
//! | `collect.version` | string | no | a plugin version |
//! | `collect.metrics` | array of strings | no | at most 64 glob patterns of 1..=128 bytes; `*` matches any run of characters, `/` included; empty or absent means every metric |
//! | `process` | array of steps | no | at most 16; run in order |
//! | `publish` | array of steps | no | at most 16; none is allowed |
//!
//! A step is an object:
//!
//! | Field | Type | Required | Rule |
//! |---|---|---|---|
//! | `plugin` | string | yes | a name |
//! | `version` | string | no | a plugin version |
//! | `tribe` | string | no | a name: the tribe whose members run the step; absent means the local node |
//! | `config` | object of strings | no | at most 32 entries; keys 1..=64 bytes, values at most 256 bytes, no control characters |
//!
//! A *name* is 1..=64 bytes of ASCII letters, digits, `_`, `-`, `.`, `:` or
//! `@`, starting with a letter or digit; a *plugin version* is a name of at
//! most 32 bytes. Unknown fields are refused at every level, and a manifest
//! text larger than 64 KiB (what a task record holds, as compact JSON) is
//! refused before it is parsed.
//!
//! Serialising a [`Manifest`] gives the same shape back: `id` is always
//! written, the interval is written in the largest unit that divides it
//! exactly (`"90s"`, `"1m"`, `"500ms"`), absent versions and tribes and empty
//! `config` objects are left out.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize, Serializer};

use super::object::object_only;

use crate::names;

// Their old paths (`workflow::manifest::encode_metrics`, ...), which the
// tribe binary, the tests and the fuzz helpers use.
pub use super::batch::{
    decode_metrics, encode_metrics, Metric, MAX_METRICS, MAX_METRICS_BYTES, MAX_METRIC_NAME_LEN,
    MAX_METRIC_TAGS, MAX_TAG_KEY_LEN, MAX_TAG_VALUE_LEN,
};
pub use super::glob::{metric_matches, pattern_problem, MAX_PATTERN_LEN};

/// Shortest schedule interval.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);
/// Longest schedule interval.
pub const MAX_INTERVAL: Duration = Duration::from_secs(24 * 3600);
/// Largest manifest text [`Manifest::parse`] looks at, in bytes: what a
/// task record holds.
pub const MAX_MANIFEST_BYTES: usize = crate::records::limits::MAX_MANIFEST_LEN;
/// Most process steps, and separately most publish steps, in a manifest.
pub const MAX_STEPS: usize = 16;
/// Most metric patterns in `collect.metrics`.
pub const MAX_METRIC_PATTERNS: usize = 64;
/// Most `config` entries in one step.
pub const MAX_CONFIG_ENTRIES: usize = 32;
/// Longest `config` key, in bytes.
pub const MAX_CONFIG_KEY_LEN: usize = 64;
/// Longest `config` value, in bytes.
pub const MAX_CONFIG_VALUE_LEN: usize = 256;

/// Why a manifest or a metric batch was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    /// The input was larger than the limit, so it was not parsed.
    #[error("{what} is {len} bytes, more than the limit of {max}")]
    TooLarge {
        /// What was refused ("task manifest", "metric batch").
        what: &'static str,
        /// Its size in bytes.
        len: usize,
        /// The limit in bytes.
        max: usize,
    },
    /// The input was not JSON of the expected shape (unknown fields included).
    #[error("{what} is not valid JSON of the expected shape: {message}")]
    Json {
        /// What was refused ("task manifest", "metric batch").
        what: &'static str,
        /// The parser's message, with line and column.
        message: String,
    },
    /// A field held a value that breaks a rule.
    #[error("{field}: {reason}")]
    Invalid {
        /// Path of the field, like `process[2].tribe`.
        field: String,
        /// The rule it broke, quoting the value.
        reason: String,
    },
}

impl ManifestError {
    /// A stable short code for RPC replies and logs.
    pub fn code(&self) -> &'static str {
        match self {
            ManifestError::TooLarge { .. } => "too_large",
            ManifestError::Json { .. } => "bad_json",
            ManifestError::Invalid { .. } => "invalid",
        }
    }
}

pub(super) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ManifestError {
    ManifestError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Keeps messages bounded when the input holds something huge.
pub(super) fn quoted(text: &str) -> String {
    let short: String = text.chars().take(80).collect();
    format!("{short:?}")
}

/// A task: collect metrics on a schedule, run them through the process steps
/// in order, hand them to every publish step. Build one with
/// [`Manifest::parse`]; see the [module documentation](self) for the schema.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Manifest {
    /// The task id.
    pub id: String,
    /// When the task runs.
    pub schedule: Schedule,
    /// Where the metrics come from.
    pub collect: Collect,
    /// Steps that transform the metrics, in order.
    pub process: Vec<Step>,
    /// Steps that each receive the processed metrics.
    pub publish: Vec<Step>,
}

/// When a task runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Schedule {
    /// Time between runs; [`MIN_INTERVAL`] ..= [`MAX_INTERVAL`]. Written in
    /// JSON as a string like `"5s"`.
    #[serde(serialize_with = "serialize_interval")]
    pub interval: Duration,
}

/// The collecting plugin and which of its metrics to keep.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(remote = "Self", deny_unknown_fields)]
pub struct Collect {
    /// Plugin name.
    pub plugin: String,
    /// Plugin version; absent means any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Glob patterns (see [`metric_matches`]); empty keeps every metric.
    #[serde(default)]
    pub metrics: Vec<String>,
}

/// A process or publish step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(remote = "Self", deny_unknown_fields)]
pub struct Step {
    /// Plugin name.
    pub plugin: String,
    /// Plugin version; absent means any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Tribe whose members run the step; absent means the local node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tribe: Option<String>,
    /// Plugin settings.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub config: BTreeMap<String, String>,
}

/// The manifest as written, before its fields are checked; kept private so
/// only validated manifests escape.
#[derive(Deserialize)]
#[serde(remote = "Self", deny_unknown_fields)]
struct RawManifest {
    #[serde(default)]
    id: Option<String>,
    schedule: RawSchedule,
    collect: Collect,
    #[serde(default)]
    process: Vec<Step>,
    #[serde(default)]
    publish: Vec<Step>,
}

#[derive(Deserialize)]
#[serde(remote = "Self", deny_unknown_fields)]
struct RawSchedule {
    interval: String,
}

object_only!(
    Collect,
    "an object with plugin, version and metrics",
    serialize
);
object_only!(
    Step,
    "an object with plugin, version, tribe and config",
    serialize
);
object_only!(
    RawManifest,
    "an object with schedule, collect, process and publish"
);
object_only!(RawSchedule, "an object with interval");

/// Parses a manifest's JSON; an error names the field it is in
/// (`process[1].tribe: invalid type: integer `7`, expected a string`).
fn parse_naming_the_field(json: &str) -> Result<RawManifest, ManifestError> {
    let error = |message: String| ManifestError::Json {
        what: "task manifest",
        message,
    };
    let mut de = serde_json::Deserializer::from_str(json);
    let raw: RawManifest = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            error(e.inner().to_string())
        } else {
            error(format!("{path}: {}", e.inner()))
        }
    })?;
    de.end().map_err(|e| error(e.to_string()))?;
    Ok(raw)
}

impl Manifest {
    /// Parses and checks the manifest of task `task_id`.
    pub fn parse(task_id: &str, json: &str) -> Result<Manifest, ManifestError> {
        if json.len() > MAX_MANIFEST_BYTES {
            return Err(ManifestError::TooLarge {
                what: "task manifest",
                len: json.len(),
                max: MAX_MANIFEST_BYTES,
            });
        }
        names::check("task", task_id).map_err(|e| invalid("id", e.to_string()))?;
        let raw: RawManifest = parse_naming_the_field(json)?;
        if let Some(id) = &raw.id {
            if id != task_id {
                return Err(invalid(
                    "id",
                    format!("{} does not match the task id {task_id:?}", quoted(id)),
                ));
            }
        }
        let manifest = Manifest {
            id: task_id.to_string(),
            schedule: Schedule {
                interval: parse_interval(&raw.schedule.interval)?,
            },
            collect: raw.collect,
            process: raw.process,
            publish: raw.publish,
        };
        manifest.validate()?;
        Ok(manifest)
    }

    /// Checks every rule of the schema; for manifests built in code.
    pub fn validate(&self) -> Result<(), ManifestError> {
        names::check("task", &self.id).map_err(|e| invalid("id", e.to_string()))?;
        check_interval(self.schedule.interval)?;
        check_collect(&self.collect)?;
        check_steps("process", &self.process)?;
        check_steps("publish", &self.publish)?;
        Ok(())
    }
}

/// Parses an interval like `500ms`, `5s`, `1m` or `2h` and checks its bounds.
pub fn parse_interval(text: &str) -> Result<Duration, ManifestError> {
    const FIELD: &str = "schedule.interval";
    let not_a_duration = || {
        invalid(
            FIELD,
            format!("{} is not a duration like 500ms, 5s, 1m", quoted(text)),
        )
    };
    let out_of_range = || invalid(FIELD, format!("{} is outside 100ms ..= 24h", quoted(text)));
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    if digits.is_empty() {
        return Err(not_a_duration());
    }
    let millis_per_unit: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(not_a_duration()),
    };
    // Digits only, so a parse failure can only be overflow.
    let count: u64 = digits.parse().map_err(|_| out_of_range())?;
    let millis = count
        .checked_mul(millis_per_unit)
        .ok_or_else(out_of_range)?;
    let interval = Duration::from_millis(millis);
    if !(MIN_INTERVAL..=MAX_INTERVAL).contains(&interval) {
        return Err(out_of_range());
    }
    Ok(interval)
}

/// Writes an interval in the largest unit that divides it exactly (`"1m"`,
/// `"90s"`, `"500ms"`). Parts below a millisecond are dropped.
pub fn format_interval(interval: Duration) -> String {
    let millis = interval.as_millis();
    if millis == 0 {
        "0ms".to_string()
    } else if millis.is_multiple_of(3_600_000) {
        format!("{}h", millis / 3_600_000)
    } else if millis.is_multiple_of(60_000) {
        format!("{}m", millis / 60_000)
    } else if millis.is_multiple_of(1_000) {
        format!("{}s", millis / 1_000)
    } else {
        format!("{millis}ms")
    }
}

fn serialize_interval<S: Serializer>(interval: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_interval(*interval))
}

fn check_interval(interval: Duration) -> Result<(), ManifestError> {
    if (MIN_INTERVAL..=MAX_INTERVAL).contains(&interval) {
        Ok(())
    } else {
        Err(invalid(
            "schedule.interval",
            format!("{interval:?} is outside 100ms ..= 24h"),
        ))
    }
}

fn check_name(field: String, what: &'static str, name: &str) -> Result<(), ManifestError> {
    names::check(what, name).map_err(|e| invalid(field, e.to_string()))
}

fn check_version(field: String, version: &Option<String>) -> Result<(), ManifestError> {
    match version {
        Some(v) => names::check_version(v).map_err(|e| invalid(field, e.to_string())),
        None => Ok(()),
    }
}

pub(super) fn has_control(text: &str) -> bool {
    text.chars().any(char::is_control)
}

fn check_collect(collect: &Collect) -> Result<(), ManifestError> {
    check_name("collect.plugin".into(), "plugin", &collect.plugin)?;
    check_version("collect.version".into(), &collect.version)?;
    if collect.metrics.len() > MAX_METRIC_PATTERNS {
        return Err(invalid(
            "collect.metrics",
            format!(
                "has {} patterns, more than {MAX_METRIC_PATTERNS}",
                collect.metrics.len()
            ),
        ));
    }
    for (i, pattern) in collect.metrics.iter().enumerate() {
        if let Some(reason) = pattern_problem(pattern) {
            return Err(invalid(
                format!("collect.metrics[{i}]"),
                format!("{} {reason}", quoted(pattern)),
            ));
        }
    }
    Ok(())
}

fn check_steps(list: &str, steps: &[Step]) -> Result<(), ManifestError> {
    if steps.len() > MAX_STEPS {
        return Err(invalid(
            list,
            format!("has {} steps, more than {MAX_STEPS}", steps.len()),
        ));
    }
    for (i, step) in steps.iter().enumerate() {
        let at = format!("{list}[{i}]");
        check_name(format!("{at}.plugin"), "plugin", &step.plugin)?;
        check_version(format!("{at}.version"), &step.version)?;
        if let Some(tribe) = &step.tribe {
            check_name(format!("{at}.tribe"), "tribe", tribe)?;
        }
        check_config(&format!("{at}.config"), &step.config)?;
    }
    Ok(())
}

fn check_config(field: &str, config: &BTreeMap<String, String>) -> Result<(), ManifestError> {
    if config.len() > MAX_CONFIG_ENTRIES {
        return Err(invalid(
            field,
            format!(
                "has {} entries, more than {MAX_CONFIG_ENTRIES}",
                config.len()
            ),
        ));
    }
    for (key, value) in config {
        let key_problem = if key.is_empty() {
            Some("is empty")
        } else if key.len() > MAX_CONFIG_KEY_LEN {
            Some("is longer than 64 bytes")
        } else if has_control(key) {
            Some("holds control characters")
        } else {
            None
        };
        if let Some(reason) = key_problem {
            return Err(invalid(field, format!("key {} {reason}", quoted(key))));
        }
        let value_problem = if value.len() > MAX_CONFIG_VALUE_LEN {
            Some("is longer than 256 bytes")
        } else if has_control(value) {
            Some("holds control characters")
        } else {
            None
        };
        if let Some(reason) = value_problem {
            return Err(invalid(
                format!("{field}.{key}"),
                format!("value {} {reason}", quoted(value)),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"{"id": "cpu-to-storage",
 "schedule": {"interval": "5s"},
 "collect": {"plugin": "proc", "metrics": ["load/*", "mem/*"]},
 "process": [{"plugin": "tag", "version": "1", "tribe": "core"}],
 "publish": [{"plugin": "file", "tribe": "storage"}]}"#;

    fn err(task: &str, json: &str) -> String {
        match Manifest::parse(task, json) {
            Ok(m) => panic!("accepted {json}: {m:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn with_publish_steps(steps: &str) -> String {
        format!(
            r#"{{"schedule":{{"interval":"5s"}},"collect":{{"plugin":"proc"}},"publish":[{steps}]}}"#
        )
    }

    #[test]
    fn parses_the_documented_example() {
        let m = Manifest::parse("cpu-to-storage", EXAMPLE).unwrap();
        assert_eq!(m.id, "cpu-to-storage");
        assert_eq!(m.schedule.interval, Duration::from_secs(5));
        assert_eq!(m.collect.plugin, "proc");
        assert_eq!(m.collect.version, None);
        assert_eq!(m.collect.metrics, ["load/*", "mem/*"]);
        assert_eq!(m.process.len(), 1);
        assert_eq!(m.process[0].version.as_deref(), Some("1"));
        assert_eq!(m.process[0].tribe.as_deref(), Some("core"));
        assert!(m.process[0].config.is_empty());
        assert_eq!(m.publish[0].plugin, "file");
        assert_eq!(m.publish[0].tribe.as_deref(), Some("storage"));
    }

    #[test]
    fn a_wrong_type_or_an_unknown_field_names_where_it_is() {
        let cases = [
            (
                r#"{"schedule":{"interval":"5s"},"collect":{"plugin":"proc"},"process":[{"plugin":"tag"},{"plugin":"tag","tribe":7}]}"#,
                "process[1].tribe: invalid type: integer `7`",
            ),
            (
                r#"{"schedule":{"interval":"5s"},"collect":{"plugin":5}}"#,
                "collect.plugin: invalid type: integer `5`",
            ),
            (
                &with_publish_steps(r#"{"plugin":"file","retries":3}"#),
                "publish[0].retries: unknown field `retries`",
            ),
        ];
        for (json, want) in cases {
            let got = err("t", json);
            assert!(got.contains(want), "{json}: {got}");
        }
        // Trailing text is still refused.
        let got = err("t", &format!("{} x", with_publish_steps("")));
        assert!(got.contains("trailing characters"), "{got}");
    }

    #[test]
    fn id_and_lists_are_optional() {
        let m = Manifest::parse(
            "t1",
            r#"{"schedule":{"interval":"1m"},"collect":{"plugin":"proc"}}"#,
        )
        .unwrap();
        assert_eq!(m.id, "t1");
        assert!(m.collect.metrics.is_empty());
        assert!(m.process.is_empty());
        assert!(m.publish.is_empty());
    }

    #[test]
    fn id_must_match_the_task() {
        assert_eq!(
            err("other", EXAMPLE),
            r#"id: "cpu-to-storage" does not match the task id "other""#
        );
        assert!(err("bad id", EXAMPLE).starts_with("id: invalid task"));
    }

    #[test]
    fn refuses_unknown_fields_everywhere() {
        for json in [
            r#"{"schedule":{"interval":"5s"},"collect":{"plugin":"proc"},"extra":1}"#,
            r#"{"schedule":{"interval":"5s","jitter":"1s"},"collect":{"plugin":"proc"}}"#,
            r#"{"schedule":{"interval":"5s"},"collect":{"plugin":"proc","metric":[]}}"#,
            &with_publish_steps(r#"{"plugin":"file","tribes":"x"}"#),
        ] {
            let e = Manifest::parse("t", json).unwrap_err();
            assert_eq!(e.code(), "bad_json", "{json}");
            assert!(e.to_string().contains("unknown field"), "{e}");
        }
    }

    /// serde's derive takes a struct from an array of its fields too; the
    /// schema says objects, and a kept array would read back in that shape.
    #[test]
    fn refuses_structs_written_as_arrays() {
        for json in [
            r#"["t",{"interval":"5s"},{"plugin":"proc"}]"#,
            r#"{"schedule":["5s"],"collect":{"plugin":"proc"}}"#,
            r#"{"schedule":{"interval":"5s"},"collect":["proc",null,[]]}"#,
            &with_publish_steps(r#"["file",null,"t"]"#),
        ] {
            let e = Manifest::parse("t", json).unwrap_err();
            assert_eq!(e.code(), "bad_json", "{json}");
            assert!(e.to_string().contains("an object with"), "{e}");
        }
    }

    #[test]
    fn refuses_malformed_json_and_missing_fields() {
        for json in [
            "",
            "[]",
            "{",
            "null",
            r#"{"collect":{"plugin":"proc"}}"#,
            r#"{"schedule":{"interval":5},"collect":{"plugin":"proc"}}"#,
            r#"{"schedule":{"interval":"5s"}}"#,
            r#"{"schedule":{"interval":"5s"},"collect":{"plugin":"proc"},"publish":{}}"#,
        ] {
            assert_eq!(
                Manifest::parse("t", json).unwrap_err().code(),
                "bad_json",
                "{json}"
            );
        }
    }

    #[test]
    fn refuses_oversized_input() {
        let json = " ".repeat(MAX_MANIFEST_BYTES + 1);
        assert_eq!(Manifest::parse("t", &json).unwrap_err().code(), "too_large");
    }

    #[test]
    fn parses_intervals() {
        for (text, millis) in [
            ("100ms", 100),
            ("500ms", 500),
            ("5s", 5_000),
            ("1m", 60_000),
            ("2h", 7_200_000),
            ("24h", 86_400_000),
            ("1440m", 86_400_000),
        ] {
            assert_eq!(
                parse_interval(text).unwrap(),
                Duration::from_millis(millis),
                "{text}"
            );
        }
    }

    #[test]
    fn refuses_bad_intervals() {
        assert_eq!(
            parse_interval("5 parsecs").unwrap_err().to_string(),
            r#"schedule.interval: "5 parsecs" is not a duration like 500ms, 5s, 1m"#
        );
        for text in [
            "", "s", "5", "-5s", "+5s", "5S", "1.5s", " 5s", "5s ", "5sec", "1m30s", "٣s",
        ] {
            let e = parse_interval(text).unwrap_err().to_string();
            assert!(e.contains("is not a duration"), "{text}: {e}");
        }
        for text in [
            "99ms",
            "0s",
            "25h",
            "86400001ms",
            "99999999999999999999999h",
            "18446744073709551615h",
        ] {
            let e = parse_interval(text).unwrap_err().to_string();
            assert!(e.contains("outside 100ms ..= 24h"), "{text}: {e}");
        }
        let e = err(
            "t",
            r#"{"schedule":{"interval":"5 parsecs"},"collect":{"plugin":"proc"}}"#,
        );
        assert!(e.starts_with("schedule.interval:"), "{e}");
    }

    #[test]
    fn formats_intervals_in_the_largest_exact_unit() {
        for (millis, text) in [
            (0, "0ms"),
            (100, "100ms"),
            (1_500, "1500ms"),
            (5_000, "5s"),
            (90_000, "90s"),
            (60_000, "1m"),
            (7_200_000, "2h"),
            (5_400_000, "90m"),
        ] {
            assert_eq!(format_interval(Duration::from_millis(millis)), text);
        }
        assert_eq!(format_interval(Duration::from_micros(5_000_700)), "5s");
    }

    #[test]
    fn serialises_back_to_the_same_shape() {
        let m = Manifest::parse("cpu-to-storage", EXAMPLE).unwrap();
        let json = serde_json::to_value(&m).unwrap();
        let expected: serde_json::Value = serde_json::from_str(EXAMPLE).unwrap();
        assert_eq!(json, expected);
        let again = Manifest::parse("cpu-to-storage", &json.to_string()).unwrap();
        assert_eq!(again, m);

        let mut m = m;
        m.schedule.interval = Duration::from_millis(500);
        m.publish[0]
            .config
            .insert("path".into(), "/var/log/m.jsonl".into());
        let json = serde_json::to_string(&m).unwrap();
        assert!(json.contains(r#""interval":"500ms""#), "{json}");
        assert!(
            json.contains(r#""config":{"path":"/var/log/m.jsonl"}"#),
            "{json}"
        );
        assert_eq!(Manifest::parse("cpu-to-storage", &json).unwrap(), m);
    }

    #[test]
    fn checks_names_and_versions() {
        let e = err("t", &with_publish_steps(r#"{"plugin":"sp ace"}"#));
        assert!(e.starts_with("publish[0].plugin: invalid plugin"), "{e}");
        let e = err(
            "t",
            &with_publish_steps(r#"{"plugin":"file"},{"plugin":"f","tribe":"-x"}"#),
        );
        assert!(e.starts_with("publish[1].tribe: invalid tribe"), "{e}");
        let long = "1".repeat(33);
        let e = err(
            "t",
            &with_publish_steps(&format!(r#"{{"plugin":"f","version":"{long}"}}"#)),
        );
        assert!(e.starts_with("publish[0].version:"), "{e}");
        let e = err(
            "t",
            r#"{"schedule":{"interval":"5s"},"collect":{"plugin":""}}"#,
        );
        assert!(e.starts_with("collect.plugin:"), "{e}");
        let e = err(
            "t",
            r#"{"schedule":{"interval":"5s"},"collect":{"plugin":"p","version":"v 1"}}"#,
        );
        assert!(e.starts_with("collect.version:"), "{e}");
    }

    #[test]
    fn enforces_limits() {
        let step = r#"{"plugin":"file"}"#;
        let sixteen = vec![step; 16].join(",");
        assert!(Manifest::parse("t", &with_publish_steps(&sixteen)).is_ok());
        let seventeen = vec![step; 17].join(",");
        let e = err("t", &with_publish_steps(&seventeen));
        assert_eq!(e, "publish: has 17 steps, more than 16");
        let e = err(
            "t",
            &format!(
                r#"{{"schedule":{{"interval":"5s"}},"collect":{{"plugin":"proc"}},"process":[{seventeen}]}}"#
            ),
        );
        assert_eq!(e, "process: has 17 steps, more than 16");

        let patterns = |n: usize, len: usize| {
            let list: Vec<String> = (0..n).map(|_| format!("\"{}\"", "x".repeat(len))).collect();
            format!(
                r#"{{"schedule":{{"interval":"5s"}},"collect":{{"plugin":"proc","metrics":[{}]}}}}"#,
                list.join(",")
            )
        };
        assert!(Manifest::parse("t", &patterns(64, 128)).is_ok());
        assert!(err("t", &patterns(65, 1)).starts_with("collect.metrics: has 65 patterns"));
        assert!(err("t", &patterns(1, 129)).starts_with("collect.metrics[0]:"));
        assert!(err("t", &patterns(1, 0)).contains("is empty"));

        let config = |n: usize| {
            let entries: Vec<String> = (0..n).map(|i| format!(r#""k{i}":"v""#)).collect();
            with_publish_steps(&format!(
                r#"{{"plugin":"f","config":{{{}}}}}"#,
                entries.join(",")
            ))
        };
        assert!(Manifest::parse("t", &config(32)).is_ok());
        assert!(err("t", &config(33)).starts_with("publish[0].config: has 33 entries"));
        let e = err(
            "t",
            &with_publish_steps(r#"{"plugin":"f","config":{"":"v"}}"#),
        );
        assert!(e.contains("is empty"), "{e}");
        let e = err(
            "t",
            &with_publish_steps(r#"{"plugin":"f","config":{"k":"a\nb"}}"#),
        );
        assert!(e.starts_with("publish[0].config.k: value"), "{e}");
        let value = "v".repeat(257);
        let e = err(
            "t",
            &with_publish_steps(&format!(r#"{{"plugin":"f","config":{{"k":"{value}"}}}}"#)),
        );
        assert!(e.contains("longer than 256"), "{e}");
    }

    #[test]
    fn validate_checks_manifests_built_in_code() {
        let mut m = Manifest::parse("cpu-to-storage", EXAMPLE).unwrap();
        assert!(m.validate().is_ok());
        m.schedule.interval = Duration::from_millis(10);
        assert!(m
            .validate()
            .unwrap_err()
            .to_string()
            .starts_with("schedule.interval:"));
    }
}
