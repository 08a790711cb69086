//! A tribe this node created blind (it never heard of the tribe's deletion
//! and re-creation) takes the era of the incarnation its creation beat when
//! the two meet (see `State`). What this node wrote into it meanwhile
//! carries the era it had then, and would stop being the tribe's: a join
//! made while cut off would be lost at the heal. Such writes are made again,
//! into the era the tribe has now.
//!
//! Only this node's own writes into its own creation: while its creation
//! stood in its store, it wrote into nothing else, so the later era is the
//! one they were meant for. A peer's write, or one made into a record it
//! did not create, may belong to an older incarnation, deleted since.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::view::View;
use super::{lock, Engine};
use crate::records::{Key, Value};

impl Engine {
    /// Writes again this node's writes into its own tribe creations whose
    /// era grew among `changes`.
    pub(super) fn rewrite_into_later_eras(&mut self, changes: &BTreeSet<Arc<Key>>) {
        let me = self.name.as_str();
        let stale: Vec<(Key, Option<Value>)> = {
            let sh = lock(&self.shared);
            let view = View { state: &sh.state };
            changes
                .iter()
                .filter_map(|key| match &**key {
                    Key::Tribe(tribe) => Some((tribe, sh.state.entry(key)?)),
                    _ => None,
                })
                .filter(|(_, created)| created.version.node == me)
                .flat_map(|(tribe, created)| {
                    let era = match &created.value {
                        Some(Value::Tribe(t)) => t.era.as_ref(),
                        _ => None,
                    };
                    view.child_entries(tribe)
                        .into_iter()
                        .filter(move |(_, e)| {
                            era.is_some()
                                && e.version.node == me
                                && e.version > created.version
                                && e.era.as_ref() < era
                        })
                        .map(|(k, e)| (k.clone(), e.value.clone()))
                })
                .collect()
        };
        for (key, value) in stale {
            self.write(key, value);
        }
    }
}
