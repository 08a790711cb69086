//! What the simulator records from the nodes' events: when each node first
//! saw a watched change, live-member counts, false failure reports, and a
//! running digest of the whole trace (the determinism check).

use std::collections::BTreeMap;

use crate::engine::Event;

/// A change whose spread is measured.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Watch {
    /// Nodes learn that this node is alive.
    MemberJoined(String),
    /// Nodes declare this node failed.
    MemberFailed(String),
    /// Nodes joining this tribe.
    TribeJoined(String),
    /// Nodes leaving this tribe.
    TribeLeft(String),
    /// Nodes are told to load this plugin of this tribe.
    PluginLoad {
        /// Tribe.
        tribe: String,
        /// Plugin name.
        name: String,
    },
}

/// Summary of when nodes saw a change, in µs after it began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spread {
    /// Nodes that saw it.
    pub seen: usize,
    /// Nodes asked about.
    pub of: usize,
    /// First, median, 99th percentile, 99.99th percentile and last, µs.
    pub first: u64,
    /// Median.
    pub p50: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.99th percentile.
    pub p9999: u64,
    /// Last.
    pub max: u64,
}

impl Spread {
    /// Summarises `times` (one per node; `None`: not seen), or `None` when
    /// no node saw it.
    pub fn of(times: &[Option<u64>]) -> Option<Spread> {
        let mut seen: Vec<u64> = times.iter().flatten().copied().collect();
        if seen.is_empty() {
            return None;
        }
        seen.sort_unstable();
        let at = |q: f64| seen[((seen.len() - 1) as f64 * q).round() as usize];
        Some(Spread {
            seen: seen.len(),
            of: times.len(),
            first: seen[0],
            p50: at(0.5),
            p99: at(0.99),
            p9999: at(0.9999),
            max: seen[seen.len() - 1],
        })
    }
}

#[derive(Default)]
pub(super) struct Observer {
    /// Per watch: when it began and when each node saw it.
    watches: BTreeMap<Watch, (u64, Vec<Option<u64>>)>,
    alive: Vec<usize>,
    false_failures: Vec<(usize, String, u64)>,
    trace: u64,
}

impl Observer {
    pub(super) fn watch(&mut self, watch: Watch, now: u64) {
        self.watches.insert(watch, (now, Vec::new()));
    }

    pub(super) fn seen(&self, watch: &Watch, nodes: usize) -> Vec<Option<u64>> {
        let mut out = self
            .watches
            .get(watch)
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        out.resize(nodes, None);
        out
    }

    pub(super) fn false_failures(&self) -> &[(usize, String, u64)] {
        &self.false_failures
    }

    pub(super) fn alive_count(&self, node: usize) -> usize {
        self.alive.get(node).copied().unwrap_or(0)
    }

    pub(super) fn trace_digest(&self) -> u64 {
        self.trace
    }

    /// A node (re)started: it knows only itself.
    pub(super) fn booted(&mut self, node: usize) {
        if self.alive.len() <= node {
            self.alive.resize(node + 1, 0);
        }
        self.alive[node] = 1;
    }

    pub(super) fn event(&mut self, node: usize, e: &Event, now: u64, down: impl Fn(&str) -> bool) {
        let (kind, subject): (u8, &str) = match e {
            Event::Joined => (1, ""),
            Event::Isolated => (2, ""),
            Event::MemberJoined { name, .. } => {
                self.alive[node] += 1;
                self.mark(&Watch::MemberJoined(name.clone()), node, now);
                (3, name)
            }
            Event::MemberUpdated { name } => (4, name),
            Event::MemberLeft { name } => {
                self.alive[node] = self.alive[node].saturating_sub(1);
                (5, name)
            }
            Event::MemberFailed { name } => {
                self.alive[node] = self.alive[node].saturating_sub(1);
                if !down(name) {
                    self.false_failures.push((node, name.clone(), now));
                }
                self.mark(&Watch::MemberFailed(name.clone()), node, now);
                (6, name)
            }
            Event::TribeJoined { tribe, .. } => {
                self.mark(&Watch::TribeJoined(tribe.clone()), node, now);
                (8, tribe)
            }
            Event::TribeLeft { tribe } => {
                self.mark(&Watch::TribeLeft(tribe.clone()), node, now);
                (9, tribe)
            }
            Event::PluginLoad(p) => {
                let w = Watch::PluginLoad {
                    tribe: p.tribe.clone(),
                    name: p.name.clone(),
                };
                self.mark(&w, node, now);
                (7, &p.name)
            }
            _ => (0, ""),
        };
        self.hash(&(node as u64).to_le_bytes());
        self.hash(&now.to_le_bytes());
        self.hash(&[kind]);
        self.hash(subject.as_bytes());
    }

    fn mark(&mut self, watch: &Watch, node: usize, now: u64) {
        if let Some((start, seen)) = self.watches.get_mut(watch) {
            if seen.len() <= node {
                seen.resize(node + 1, None);
            }
            if seen[node].is_none() {
                seen[node] = Some(now.saturating_sub(*start));
            }
        }
    }

    /// FNV-1a over the trace.
    fn hash(&mut self, bytes: &[u8]) {
        if self.trace == 0 {
            self.trace = 0xcbf2_9ce4_8422_2325;
        }
        for b in bytes {
            self.trace ^= u64::from(*b);
            self.trace = self.trace.wrapping_mul(0x0100_0000_01b3);
        }
    }
}
