//! What a node keeps across restarts: the peers it knew (so it can rejoin
//! without seeds) and its own memberships by hand with their versions (so it
//! is back in its tribes even if every peer forgot them). The engine only
//! builds and takes this value; the runtime reads and writes the file.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::delta::lock;
use super::Engine;
use crate::records::{Entry, Key};

/// Durable part of a node's knowledge.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Durable {
    /// Addresses of the members that were up, this node excluded.
    pub peers: Vec<SocketAddr>,
    /// This node's membership records (deletions included, so a leave is not
    /// undone by a restart) and the tribe records they belong to.
    pub records: Vec<(Key, Entry)>,
}

impl Engine {
    /// The durable part of what this node knows now.
    pub fn durable(&self) -> Durable {
        let mut peers: Vec<SocketAddr> = self
            .members
            .iter()
            .filter(|(_, r)| r.state.is_up())
            .map(|(_, r)| r.id.addr)
            .collect();
        peers.sort();
        let sh = lock(&self.shared);
        let mut records = Vec::new();
        for (key, entry) in sh.state.iter() {
            if let Key::Member { tribe, node } = key {
                if *node == self.name {
                    records.push((key.clone(), entry.clone()));
                    let tribe_key = Key::Tribe(tribe.clone());
                    if let Some(t) = sh.state.entry(&tribe_key) {
                        records.push((tribe_key, t.clone()));
                    }
                }
            }
        }
        Durable { peers, records }
    }

    /// Takes back what an earlier run kept. Records go through the same
    /// checks and last-writer-wins merge as records from a peer, so a newer
    /// change made while this node was down still wins. Call before
    /// [`Engine::start`]; the peers become extra seeds.
    pub fn restore(&mut self, now_ms: u64, durable: Durable) {
        self.tick(now_ms);
        {
            let mut sh = lock(&self.shared);
            for (key, entry) in durable.records {
                sh.accept_remote(key, entry);
            }
        }
        let me = self.swim.identity().addr;
        for peer in durable.peers {
            if peer != me && !self.seeds.contains(&peer) {
                self.seeds.push(peer);
            }
        }
    }
}
