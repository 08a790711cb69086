//! The hosts of each call target, kept between calls. A call reads them
//! under the engine's lock, and working them out walks every node record
//! and copies every member's name, so each call paid for the size of the
//! cluster. An entry holds while nothing it was made from changed: the
//! replicated state (its revision), which members are up, this node's own
//! endpoints and whether it left. Suspicion, which changes none of these,
//! is marked on every read.

use crate::records::Endpoint;
use crate::PluginKind;

use super::delta::lock;
use super::view::{Provider, View};
use super::Engine;

/// Targets kept at most; past it the cache starts afresh (a node calls a
/// handful of targets, so this bounds a caller that names many).
const MAX_ENTRIES: usize = 64;

/// What an entry was made from, but for this node's endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// The replicated state's revision.
    pub state: u64,
    /// Grows whenever a member goes up or down.
    pub up: u64,
    /// This node left.
    pub left: bool,
}

struct Entry {
    tribe: String,
    plugin: String,
    version: Option<String>,
    kind: PluginKind,
    stamp: Stamp,
    own: Vec<Endpoint>,
    /// `None`: the tribe does not exist.
    providers: Option<Vec<Provider>>,
}

/// A call target.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub tribe: &'a str,
    pub plugin: &'a str,
    pub version: Option<&'a str>,
    pub kind: PluginKind,
}

impl Entry {
    fn is(&self, t: &Target<'_>) -> bool {
        self.kind == t.kind
            && self.tribe == t.tribe
            && self.plugin == t.plugin
            && self.version.as_deref() == t.version
    }
}

#[derive(Default)]
pub struct Cache {
    entries: Vec<Entry>,
}

impl Cache {
    /// The providers kept for `target`, if made from `stamp` and `own`.
    pub fn get(
        &self,
        target: &Target<'_>,
        stamp: Stamp,
        own: &[Endpoint],
    ) -> Option<Option<Vec<Provider>>> {
        self.entries
            .iter()
            .find(|e| e.is(target))
            .filter(|e| e.stamp == stamp && e.own == own)
            .map(|e| e.providers.clone())
    }

    /// Keeps `providers` for `target`, made from `stamp` and `own`.
    pub fn put(
        &mut self,
        target: &Target<'_>,
        stamp: Stamp,
        own: &[Endpoint],
        providers: Option<Vec<Provider>>,
    ) {
        if let Some(e) = self.entries.iter_mut().find(|e| e.is(target)) {
            e.stamp = stamp;
            e.own = own.to_vec();
            e.providers = providers;
            return;
        }
        if self.entries.len() >= MAX_ENTRIES {
            self.entries.clear();
        }
        self.entries.push(Entry {
            tribe: target.tribe.to_string(),
            plugin: target.plugin.to_string(),
            version: target.version.map(str::to_string),
            kind: target.kind,
            stamp,
            own: own.to_vec(),
            providers,
        });
    }
}

impl Engine {
    /// Live members of `tribe` that serve `plugin` of `kind` (any version,
    /// or `version`), highest version per member; `None` when the tribe does
    /// not exist. Cheaper than a full snapshot: the call router asks per call.
    pub fn providers(
        &mut self,
        tribe: &str,
        plugin: &str,
        version: Option<&str>,
        kind: PluginKind,
    ) -> Option<Vec<Provider>> {
        let target = Target {
            tribe,
            plugin,
            version,
            kind,
        };
        let stamp = Stamp {
            state: lock(&self.shared).state.revision(),
            up: self.members.revision(),
            left: self.left,
        };
        let mut found = match self.providers.get(&target, stamp, &self.record.endpoints) {
            Some(kept) => kept,
            None => {
                let found = self.find_providers(tribe, plugin, version, kind);
                self.providers
                    .put(&target, stamp, &self.record.endpoints, found.clone());
                found
            }
        };
        // Suspicion changes no stamp (it is foca's, read at housekeeping):
        // marked on every read.
        if !self.suspects_seen.is_empty() {
            for p in found.iter_mut().flatten() {
                p.suspect = self.members.get(&p.name).is_some_and(|row| {
                    let key = (row.id.name.clone(), row.id.generation);
                    self.suspects_seen.contains(&key)
                });
            }
        }
        found
    }

    /// [`Engine::providers`] worked out afresh.
    fn find_providers(
        &self,
        tribe: &str,
        plugin: &str,
        version: Option<&str>,
        kind: PluginKind,
    ) -> Option<Vec<Provider>> {
        let sh = lock(&self.shared);
        let view = View { state: &sh.state };
        if !view.tribe_exists(tribe) {
            return None;
        }
        let mut out = Vec::new();
        for name in view.tribe_members(tribe) {
            if !self.is_up(&name) {
                continue;
            }
            // A member restarted under its name is up at its new address
            // before its new record arrives: the record of its last run
            // names the old one (calls went there, and failed, for up to a
            // few hundred ms). It is called where it is now; one that does
            // not serve the plugin any more refuses, and the call moves on.
            let mut moved = None;
            let endpoints = if name == self.name {
                &self.record.endpoints
            } else {
                match view.node_record(&name) {
                    Some(r) => {
                        moved = self
                            .members
                            .get(&name)
                            .filter(|row| row.id.generation > r.generation && row.id.addr != r.addr)
                            .map(|row| (r.addr, row.id.addr));
                        &r.endpoints
                    }
                    None => continue,
                }
            };
            let mut served: Vec<_> = endpoints
                .iter()
                .filter(|e| {
                    e.name == plugin && e.kind == kind && version.is_none_or(|v| v == e.version)
                })
                .collect();
            served.sort_by(|a, b| b.version.cmp(&a.version));
            if let Some((e, rest)) = served.split_first() {
                let addr = match moved {
                    Some((old, now)) if e.addr == old => now,
                    _ => e.addr,
                };
                out.push(Provider {
                    local: name == self.name,
                    name,
                    addr,
                    version: e.version.clone(),
                    older: rest.iter().map(|e| e.version.clone()).collect(),
                    suspect: false,
                });
            }
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(version: Option<&str>) -> Target<'_> {
        Target {
            tribe: "t",
            plugin: "p",
            version,
            kind: PluginKind::Processor,
        }
    }

    fn host(name: &str) -> Provider {
        Provider {
            name: name.into(),
            addr: "127.0.0.1:7000".parse().unwrap(),
            version: "1".into(),
            older: Vec::new(),
            local: false,
            suspect: false,
        }
    }

    #[test]
    fn an_entry_holds_only_while_what_it_was_made_from_holds() {
        let stamp = Stamp {
            state: 3,
            up: 2,
            left: false,
        };
        let mut cache = Cache::default();
        assert_eq!(cache.get(&target(None), stamp, &[]), None);
        cache.put(&target(None), stamp, &[], Some(vec![host("a")]));
        assert_eq!(cache.get(&target(None), stamp, &[]), Some(Some(vec![host("a")])));
        // Another version asked for is another target.
        assert_eq!(cache.get(&target(Some("1")), stamp, &[]), None);
        for changed in [
            Stamp { state: 4, ..stamp },
            Stamp { up: 3, ..stamp },
            Stamp {
                left: true,
                ..stamp
            },
        ] {
            assert_eq!(cache.get(&target(None), changed, &[]), None);
        }
        let serving = [Endpoint {
            name: "p".into(),
            version: "1".into(),
            kind: PluginKind::Processor,
            addr: "127.0.0.1:7001".parse().unwrap(),
        }];
        assert_eq!(cache.get(&target(None), stamp, &serving), None);
        // Replaced in place, never two entries for one target.
        cache.put(&target(None), stamp, &serving, None);
        assert_eq!(cache.get(&target(None), stamp, &serving), Some(None));
        assert_eq!(cache.entries.len(), 1);
    }

    #[test]
    fn the_cache_stays_bounded() {
        let stamp = Stamp {
            state: 0,
            up: 0,
            left: false,
        };
        let mut cache = Cache::default();
        let names: Vec<String> = (0..3 * MAX_ENTRIES).map(|i| format!("p{i}")).collect();
        for name in &names {
            let t = Target {
                plugin: name,
                ..target(None)
            };
            cache.put(&t, stamp, &[], None);
            assert!(cache.entries.len() <= MAX_ENTRIES);
            assert_eq!(cache.get(&t, stamp, &[]), Some(None));
        }
    }
}
