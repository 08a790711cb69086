//! The SWIM identity: small on purpose (name, address, generation). The name
//! is the conflict key, so one name is one node; a restart or a rejoin after
//! being declared down bumps the generation, which wins the conflict.

use std::net::SocketAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Identity of a node in the membership protocol.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeId {
    /// Unique node name, shared: foca compares it on every update it
    /// applies (scanning its member list), which must not allocate.
    pub name: Arc<str>,
    /// Advertised gossip and stream address.
    pub addr: SocketAddr,
    /// Increases on every restart and every rejoin.
    pub generation: u64,
}

impl foca::Identity for NodeId {
    type Addr = Arc<str>;

    fn renew(&self) -> Option<Self> {
        // Never wraps: a wrapped generation would lose every conflict.
        Some(NodeId {
            generation: self.generation.checked_add(1)?,
            ..self.clone()
        })
    }

    fn addr(&self) -> Arc<str> {
        self.name.clone()
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        (self.generation, self.addr) > (adversary.generation, adversary.addr)
    }
}
