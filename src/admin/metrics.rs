//! `GET /metrics`: the node's counters and sizes in the Prometheus text
//! format. A registry is built per scrape from one snapshot, so the numbers
//! of one scrape are consistent with each other.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::counters::Counters;
use crate::engine::view::{MemberInfo, TribeInfo};
use crate::MemberState;

/// What one scrape reports.
pub struct Snapshot {
    /// Every member, this node included.
    pub members: Vec<MemberInfo>,
    /// Every tribe.
    pub tribes: Vec<TribeInfo>,
    /// Number of policies.
    pub policies: usize,
    /// Engine counters.
    pub counters: Counters,
    /// Gossip updates waiting to be sent.
    pub broadcast_backlog: usize,
    /// Keys this node holds (0 without encryption).
    pub keys_held: usize,
    /// Remote call counters.
    pub rpc: crate::rpc::RpcStats,
    /// Whether another live node holds this node's name (it keeps out).
    pub name_held_elsewhere: bool,
    /// Whether a peer refused this node's key in the last minute.
    pub key_refused: bool,
    /// Admin requests refused for their token or `Host`.
    pub admin_refusals: u64,
    /// The runs of the tasks the host runs (none when it runs none).
    pub task_runs: Vec<super::TaskRunCounts>,
}

type Labels = Vec<(String, String)>;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: usize) {
    let g = Gauge::<i64>::default();
    g.set(i64::try_from(value).unwrap_or(i64::MAX));
    registry.register(name, help, g);
}

fn counter(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let c = Counter::<u64>::default();
    c.inc_by(value);
    registry.register(name, help, c);
}

fn counter_family(registry: &mut Registry, name: &str, help: &str, rows: &[(Labels, u64)]) {
    let family = Family::<Labels, Counter<u64>>::default();
    for (l, v) in rows {
        family.get_or_create(l).inc_by(*v);
    }
    registry.register(name, help, family);
}

/// Whether the `Accept` header values ask for OpenMetrics over the classic
/// text format: by their `q` weights (1 when absent), OpenMetrics when it
/// weighs more than 0 and no less than `text/plain` or a wildcard.
pub(super) fn wants_openmetrics<'a>(accept: impl Iterator<Item = &'a str>) -> bool {
    let (mut openmetrics, mut plain) = (0.0f32, 0.0f32);
    for range in accept.flat_map(|v| v.split(',')) {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or_default().to_ascii_lowercase();
        let q = parts
            .filter_map(|p| p.strip_prefix("q="))
            .find_map(|q| q.parse::<f32>().ok())
            .unwrap_or(1.0);
        match media.as_str() {
            "application/openmetrics-text" => openmetrics = openmetrics.max(q),
            "text/plain" | "text/*" | "*/*" => plain = plain.max(q),
            _ => {}
        }
    }
    openmetrics > 0.0 && openmetrics >= plain
}

/// Renders a snapshot in the Prometheus text exposition format.
pub fn render(s: &Snapshot) -> String {
    let mut r = Registry::with_prefix("tribe");

    let members = Family::<Labels, Gauge<i64>>::default();
    for state in [
        MemberState::Alive,
        MemberState::Suspect,
        MemberState::Failed,
        MemberState::Left,
    ] {
        let n = s.members.iter().filter(|m| m.state == state).count();
        members
            .get_or_create(&labels(&[("state", state.as_str())]))
            .set(n as i64);
    }
    r.register("members", "Members known to this node, by state", members);
    gauge(&mut r, "tribes", "Tribes that exist", s.tribes.len());
    gauge(&mut r, "policies", "Policies", s.policies);
    let plugins: usize = s.tribes.iter().map(|t| t.plugins.len()).sum();
    let tasks: usize = s.tribes.iter().map(|t| t.tasks.len()).sum();
    gauge(
        &mut r,
        "catalog_plugins",
        "Plugin entries over all tribes",
        plugins,
    );
    gauge(&mut r, "catalog_tasks", "Tasks over all tribes", tasks);
    gauge(
        &mut r,
        "broadcast_backlog",
        "Gossip updates waiting to be sent",
        s.broadcast_backlog,
    );
    gauge(
        &mut r,
        "name_held_elsewhere",
        "1 while another live node runs under this node's name and this node keeps out of the cluster for it",
        usize::from(s.name_held_elsewhere),
    );
    gauge(
        &mut r,
        "key_refused",
        "1 while a peer refused this node's key in the last minute: the tribe may have rotated its keys without this node",
        usize::from(s.key_refused),
    );

    gauge(
        &mut r,
        "tasks_running",
        "Tasks of the catalogs this host runs",
        s.task_runs.len(),
    );
    let runs: Vec<(Labels, u64)> = s
        .task_runs
        .iter()
        .flat_map(|t| {
            t.runs.iter().map(|(outcome, n)| {
                (
                    labels(&[
                        ("tribe", &t.tribe),
                        ("task", &t.task),
                        ("outcome", outcome.as_str()),
                    ]),
                    *n,
                )
            })
        })
        .collect();
    counter_family(
        &mut r,
        "task_runs",
        "Runs of the tasks this host runs, by outcome (ok, collect_failed, step_failed)",
        &runs,
    );

    counter(
        &mut r,
        "admin_refused",
        "Admin API requests refused for a wrong or missing token or a Host that is not an address",
        s.admin_refusals,
    );

    let c = &s.counters;
    let dir = |t: &str, d: &str| labels(&[("transport", t), ("direction", d)]);
    counter_family(
        &mut r,
        "packets",
        "Datagrams (udp) and stream frames (tcp) by direction",
        &[
            (dir("udp", "in"), c.datagrams_in),
            (dir("udp", "out"), c.datagrams_out),
            (dir("tcp", "in"), c.frames_in),
            (dir("tcp", "out"), c.frames_out),
        ],
    );
    counter_family(
        &mut r,
        "bytes",
        "Bytes of datagrams (udp) and stream frames (tcp) by direction",
        &[
            (dir("udp", "in"), c.datagram_bytes_in),
            (dir("udp", "out"), c.datagram_bytes_out),
            (dir("tcp", "in"), c.frame_bytes_in),
            (dir("tcp", "out"), c.frame_bytes_out),
        ],
    );
    counter_family(
        &mut r,
        "decode_errors",
        "Datagrams and frames dropped as malformed",
        &[
            (labels(&[("transport", "udp")]), c.datagram_decode_errors),
            (labels(&[("transport", "tcp")]), c.frame_decode_errors),
        ],
    );
    counter(
        &mut r,
        "auth_failures",
        "Datagrams dropped for an unknown key or a failed authentication (tampered or corrupted)",
        c.datagram_auth_errors,
    );
    gauge(&mut r, "keyring_keys", "Keys this node holds", s.keys_held);
    counter_family(
        &mut r,
        "plaintext_refused",
        "Plaintext datagrams and streams refused because encryption is required",
        &[
            (
                labels(&[("transport", "udp")]),
                c.plaintext_datagrams_refused,
            ),
            (labels(&[("transport", "tcp")]), c.plaintext_streams_refused),
        ],
    );
    counter(
        &mut r,
        "stream_auth_failures",
        "Streams cut because a frame failed authentication (another cluster label, or tampered, replayed, reordered)",
        c.stream_auth_errors,
    );
    counter(
        &mut r,
        "streams_stalled",
        "Streams whose peer did not finish the setup in time, or whose unfinished setup made way for a newer connection at the cap",
        c.streams_stalled,
    );
    counter(
        &mut r,
        "suspects_confirmed",
        "Suspects declared down early: their address refused a connection",
        c.suspects_confirmed,
    );
    counter(
        &mut r,
        "suspects_told",
        "Pings that told a member this node suspects it, so that it can refute at once",
        c.suspects_told,
    );
    counter(
        &mut r,
        "streams_over_cap",
        "Accepted connections closed at once: the cap of streams in setup or exchange was reached",
        c.streams_over_cap,
    );
    counter(
        &mut r,
        "seed_lookups_failed",
        "Lookups of a seed given by name that failed; retried while the node is alone",
        c.seed_lookups_failed,
    );
    counter(
        &mut r,
        "accept_errors",
        "Connections the TCP listener failed to accept (out of file descriptors, say)",
        c.accept_errors,
    );
    counter(
        &mut r,
        "data_dir_errors",
        "Writes of the data dir (state or keyring) that failed",
        c.data_dir_errors,
    );
    counter(
        &mut r,
        "stream_unknown_keys",
        "Streams refused for using a key this node does not hold",
        c.stream_unknown_keys,
    );
    counter(
        &mut r,
        "key_rejections",
        "Streams on which a peer refused this node's key (behind a rotation)",
        c.key_rejections,
    );
    counter(
        &mut r,
        "label_mismatches",
        "Datagrams dropped for carrying another cluster's label",
        c.label_mismatches,
    );
    counter(
        &mut r,
        "gossip_errors",
        "Datagrams the membership protocol refused",
        c.gossip_errors,
    );
    counter(
        &mut r,
        "invalid_records",
        "Records from peers refused by validation",
        c.invalid_records,
    );
    counter(
        &mut r,
        "clock_drift_rejections",
        "Records refused for a version too far in the future",
        c.clock_drift_rejections,
    );
    counter(
        &mut r,
        "identities_refused",
        "Member identities refused for a generation beyond the clock horizon",
        c.identities_refused,
    );
    counter(
        &mut r,
        "identity_claims",
        "Identities heard that claim this node's name and would displace it",
        c.identity_claims,
    );
    counter(
        &mut r,
        "renewals",
        "New generations this node took because peers had found it down while it ran (repeated: they do not hear its gossip)",
        c.renewals,
    );
    counter(
        &mut r,
        "clock_skew_reports",
        "Peers found with a clock off this node's by more than 30 s",
        c.clock_skew_reports,
    );
    // Signed, and in seconds as Prometheus names a unit (`promtool check
    // metrics` refuses `_ms`); the counters' JSON keeps `clock_offset_ms`.
    let offset = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
    offset.set(c.clock_offset_ms as f64 / 1000.0);
    r.register(
        "clock_offset_seconds",
        "Median offset of the peers' clocks from this node's clock (positive: theirs ahead)",
        offset,
    );
    gauge(
        &mut r,
        "members_failing_exchanges",
        "Members heard alive whose state exchanges with this node failed 3 or more times in a row",
        c.members_failing_exchanges as usize,
    );
    counter(
        &mut r,
        "stale_records_dropped",
        "Records dropped as deleted: kept from before a long absence, or written into a tribe as it was deleted",
        c.stale_records_dropped,
    );
    counter(
        &mut r,
        "stale_gossip_refused",
        "Records in gossip datagrams written longer ago than the tombstone grace, refused (replayed traffic, or a clock that far behind)",
        c.stale_gossip_refused,
    );
    counter(
        &mut r,
        "keyring_records_refused",
        "Keyring records from peers refused because this node does not require encryption",
        c.keyring_records_refused,
    );
    counter(
        &mut r,
        "records_over_limit",
        "Records from peers refused because their kind is at its limit",
        c.records_over_limit,
    );
    counter(
        &mut r,
        "records_merged",
        "Records merged that were news",
        c.records_merged,
    );
    counter_family(
        &mut r,
        "deltas",
        "Local writes by how they were disseminated",
        &[
            (labels(&[("path", "gossip")]), c.deltas_broadcast),
            (labels(&[("path", "too_large")]), c.deltas_too_large),
        ],
    );
    counter_family(
        &mut r,
        "push_pulls",
        "Anti-entropy exchanges by outcome",
        &[
            (labels(&[("outcome", "started")]), c.push_pulls_started),
            (labels(&[("outcome", "completed")]), c.push_pulls_completed),
            (labels(&[("outcome", "failed")]), c.push_pulls_failed),
        ],
    );
    counter(
        &mut r,
        "push_pulls_in_sync",
        "Completed anti-entropy exchanges that found both sides in step from digests alone",
        c.push_pulls_in_sync,
    );
    counter(
        &mut r,
        "tombstones_collected",
        "Deletion records collected after their grace period",
        c.tombstones_collected,
    );
    counter(
        &mut r,
        "events_dropped",
        "Events dropped for subscribers that fell behind",
        c.events_dropped,
    );

    let rpc = &s.rpc;
    let outcome = |o: &str| labels(&[("outcome", o)]);
    counter_family(
        &mut r,
        "rpc_calls",
        "Remote calls made by this node, by outcome",
        &[
            (outcome("ok"), rpc.ok),
            (outcome("no_provider"), rpc.no_provider),
            (outcome("timeout"), rpc.timeout),
            (outcome("remote_error"), rpc.remote_error),
            (outcome("too_large"), rpc.too_large),
            (outcome("overloaded"), rpc.overloaded),
            (outcome("disconnected"), rpc.disconnected),
            (outcome("not_sent"), rpc.not_sent),
            (outcome("unknown_tribe"), rpc.unknown_tribe),
        ],
    );
    counter(
        &mut r,
        "rpc_failovers",
        "Calls moved to another host",
        rpc.failovers,
    );
    counter(
        &mut r,
        "rpc_served",
        "Calls this node's handlers ran",
        rpc.served,
    );
    counter(
        &mut r,
        "rpc_refused",
        "Calls this node refused to run",
        rpc.refused,
    );
    counter(
        &mut r,
        "rpc_handler_panics",
        "Handlers that panicked",
        rpc.panics,
    );
    counter(
        &mut r,
        "rpc_stream_errors",
        "Call streams cut or refused (malformed, unauthentic, stalled, key refused)",
        rpc.stream_errors,
    );
    counter(
        &mut r,
        "rpc_streams_refused",
        "Call streams refused at the bound of streams served at once",
        rpc.streams_refused,
    );
    counter(
        &mut r,
        "rpc_replies_too_large",
        "Replies of this node's handlers over max_payload, failed instead of sent",
        rpc.replies_too_large,
    );
    counter(
        &mut r,
        "rpc_cancelled",
        "Calls served here that their caller abandoned before the answer",
        rpc.cancelled,
    );
    counter(
        &mut r,
        "rpc_abandoned",
        "Calls made here that their caller gave up on before they ended",
        rpc.abandoned,
    );
    // What is open now: each back to its resting level when the load is.
    gauge(
        &mut r,
        "rpc_in_flight",
        "Calls made here and not over yet",
        rpc.in_flight as usize,
    );
    gauge(
        &mut r,
        "rpc_serving",
        "Calls served here whose handler still holds its place (at max_serving new calls are refused)",
        rpc.serving as usize,
    );
    gauge(
        &mut r,
        "rpc_streams_accepted",
        "Call streams other nodes opened to this one, open now",
        rpc.streams_accepted as usize,
    );
    counter_family(
        &mut r,
        "artifacts",
        "Plugin artifacts by outcome",
        &[
            (outcome("fetched"), rpc.artifacts_fetched),
            (outcome("corrupt_holder"), rpc.artifacts_corrupt),
            (outcome("unavailable"), rpc.artifacts_unavailable),
        ],
    );
    counter(
        &mut r,
        "artifact_chunks_served",
        "Artifact chunks served",
        rpc.chunks_served,
    );

    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, &r);
    samples_in_order(&out)
}

/// OpenMetrics text (as [`render`] gives it) in the classic Prometheus text
/// format (0.0.4): a counter's family is named as its samples, with
/// `_total`, and there is no `# EOF` or `# UNIT` line.
pub fn classic(openmetrics: &str) -> String {
    let counters: std::collections::BTreeSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                out.push_str(prefix);
                out.push_str(name);
                if counters.contains(name) {
                    out.push_str("_total");
                }
                out.push(' ');
                out.push_str(tail);
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// The same text with the samples of each metric in label order: a family
/// keeps its series in a hash map, whose order changed from one scrape to
/// the next (harmless for Prometheus, noise for a person diffing scrapes).
fn samples_in_order(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut samples: Vec<&str> = Vec::new();
    let flush = |samples: &mut Vec<&str>, out: &mut String| {
        samples.sort_unstable();
        for line in samples.drain(..) {
            out.push_str(line);
            out.push('\n');
        }
    };
    for line in text.lines() {
        if line.starts_with('#') {
            flush(&mut samples, &mut out);
            out.push_str(line);
            out.push('\n');
        } else {
            samples.push(line);
        }
    }
    flush(&mut samples, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openmetrics_goes_to_who_prefers_it() {
        let wants = |v: &str| wants_openmetrics(std::iter::once(v));
        // What Prometheus sends.
        assert!(wants("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"));
        assert!(wants("application/openmetrics-text"));
        assert!(!wants("application/openmetrics-text;q=0"));
        assert!(!wants(
            "text/plain;version=0.0.4;q=0.9, application/openmetrics-text;q=0.1"
        ));
        assert!(!wants("*/*"));
        assert!(!wants(""));
    }

    #[test]
    fn renders_states_counters_and_eof() {
        let counters = Counters {
            datagrams_in: 7,
            push_pulls_failed: 2,
            ..Counters::default()
        };
        let text = render(&Snapshot {
            members: Vec::new(),
            tribes: Vec::new(),
            policies: 3,
            counters,
            broadcast_backlog: 1,
            keys_held: 2,
            rpc: crate::rpc::RpcStats {
                ok: 4,
                ..Default::default()
            },
            name_held_elsewhere: true,
            key_refused: true,
            admin_refusals: 4,
            task_runs: Vec::new(),
        });
        assert!(text.contains("tribe_members{state=\"alive\"} 0"), "{text}");
        assert!(text.contains("tribe_name_held_elsewhere 1"), "{text}");
        assert!(text.contains("tribe_key_refused 1"), "{text}");
        assert!(text.contains("tribe_admin_refused_total 4"), "{text}");
        assert!(text.contains("tribe_policies 3"), "{text}");
        assert!(
            text.contains("tribe_packets_total{transport=\"udp\",direction=\"in\"} 7"),
            "{text}"
        );
        assert!(
            text.contains("tribe_push_pulls_total{outcome=\"failed\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("tribe_rpc_calls_total{outcome=\"ok\"} 4"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn the_classic_format_names_each_family_as_its_samples() {
        let text = classic(&render(&Snapshot {
            members: Vec::new(),
            tribes: Vec::new(),
            policies: 1,
            counters: Counters {
                datagrams_in: 7,
                ..Counters::default()
            },
            broadcast_backlog: 0,
            keys_held: 0,
            rpc: crate::rpc::RpcStats {
                ok: 4,
                ..Default::default()
            },
            name_held_elsewhere: false,
            key_refused: false,
            admin_refusals: 0,
            task_runs: {
                let runs = super::super::TaskRuns::default();
                runs.started("web", "cpu \"load\"");
                runs.ran("web", "cpu \"load\"", super::super::TaskOutcome::StepFailed);
                runs.counts()
            },
        }));
        assert!(
            text.contains(
                "tribe_task_runs_total{tribe=\"web\",task=\"cpu \\\"load\\\"\",outcome=\"step_failed\"} 1\n"
            ),
            "{text}"
        );
        assert!(text.contains("tribe_tasks_running 1\n"), "{text}");
        assert!(
            !text.contains("# EOF") && !text.contains("# UNIT"),
            "{text}"
        );
        let mut typed = std::collections::BTreeSet::new();
        let mut helped = std::collections::BTreeSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(matches!(kind, "counter" | "gauge"), "{line}");
                assert_eq!(kind == "counter", name.ends_with("_total"), "{line}");
                typed.insert(name.to_string());
            } else if let Some(rest) = line.strip_prefix("# HELP ") {
                helped.insert(rest.split_once(' ').unwrap().0.to_string());
            } else {
                // A sample: its name is a family's, declared before it.
                let name = line.split(['{', ' ']).next().unwrap();
                assert!(typed.contains(name), "no # TYPE for {line}");
                assert!(helped.contains(name), "no # HELP for {line}");
            }
        }
        assert!(
            text.contains("# TYPE tribe_rpc_calls_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains("tribe_rpc_calls_total{outcome=\"ok\"} 4\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE tribe_policies gauge\ntribe_policies 1\n"),
            "{text}"
        );
    }

    #[test]
    fn every_scrape_lists_the_series_in_the_same_order() {
        let snapshot = || Snapshot {
            members: Vec::new(),
            tribes: Vec::new(),
            policies: 0,
            counters: Counters::default(),
            broadcast_backlog: 0,
            keys_held: 0,
            rpc: crate::rpc::RpcStats {
                ok: 1,
                timeout: 2,
                no_provider: 3,
                ..Default::default()
            },
            name_held_elsewhere: false,
            key_refused: false,
            admin_refusals: 0,
            task_runs: Vec::new(),
        };
        let first = render(&snapshot());
        for _ in 0..20 {
            assert_eq!(render(&snapshot()), first);
        }
        let calls: Vec<&str> = first
            .lines()
            .filter(|l| l.starts_with("tribe_rpc_calls_total"))
            .collect();
        let mut sorted = calls.clone();
        sorted.sort_unstable();
        assert_eq!(calls, sorted);
    }
}
