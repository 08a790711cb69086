//! The SWIM identity: small on purpose (name, address, generation). The name
//! is the conflict key, so one name is one node; a restart or a rejoin after
//! being declared down bumps the generation, which wins the conflict.

use std::net::SocketAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Identity of a node in the membership protocol. Built with
/// [`NodeId::new`]; on the wire it is the name, the address and the
/// generation.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "WireNodeId")]
pub struct NodeId {
    /// Unique node name. Not to be changed in place: the key below is
    /// derived from it.
    pub name: Arc<str>,
    /// Advertised gossip and stream address.
    pub addr: SocketAddr,
    /// Increases on every restart and every rejoin.
    pub generation: u64,
    /// 64 bits of SHA-256 of the name: what foca compares, scanning its
    /// whole member list, for every update it applies. Comparing the name
    /// itself cost two atomic reference-count changes per member scanned.
    #[serde(skip)]
    key: u64,
}

/// [`NodeId`] as it travels.
#[derive(Deserialize)]
struct WireNodeId {
    name: Arc<str>,
    addr: SocketAddr,
    generation: u64,
}

impl From<WireNodeId> for NodeId {
    fn from(w: WireNodeId) -> NodeId {
        NodeId::new(w.name, w.addr, w.generation)
    }
}

fn name_key(name: &str) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&Sha256::digest(name.as_bytes())[..8]);
    u64::from_le_bytes(word)
}

impl NodeId {
    /// The identity of `name` at `addr`, in its `generation`.
    pub fn new(name: impl Into<Arc<str>>, addr: SocketAddr, generation: u64) -> NodeId {
        let name = name.into();
        NodeId {
            key: name_key(&name),
            name,
            addr,
            generation,
        }
    }
}

impl NodeId {
    /// 8 bytes naming this identity as a packet's destination: the first 4
    /// of SHA-256 of the name (the low bytes of the key), then the first 4
    /// of SHA-256 of name, address and generation.
    pub(crate) fn dst_print(&self) -> [u8; 8] {
        let mut whole = Sha256::new();
        whole.update(self.name.as_bytes());
        match self.addr {
            SocketAddr::V4(a) => whole.update(a.ip().octets()),
            SocketAddr::V6(a) => whole.update(a.ip().octets()),
        }
        whole.update(self.addr.port().to_le_bytes());
        whole.update(self.generation.to_le_bytes());
        let mut out = [0u8; 8];
        out[..4].copy_from_slice(&self.key.to_le_bytes()[..4]);
        out[4..].copy_from_slice(&whole.finalize()[..4]);
        out
    }
}

impl foca::Identity for NodeId {
    type Addr = u64;

    fn renew(&self) -> Option<Self> {
        // Never wraps: a wrapped generation would lose every conflict.
        let mut next = self.clone();
        next.generation = self.generation.checked_add(1)?;
        Some(next)
    }

    fn addr(&self) -> u64 {
        debug_assert_eq!(self.key, name_key(&self.name), "name changed in place");
        self.key
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        (self.generation, self.addr) > (adversary.generation, adversary.addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use foca::Identity;

    #[test]
    fn the_key_follows_the_name_and_survives_the_wire() {
        let a = NodeId::new("node-a", ([127, 0, 0, 1], 7000).into(), 5);
        let a2 = NodeId::new("node-a", ([127, 0, 0, 2], 7001).into(), 9);
        let b = NodeId::new("node-b", ([127, 0, 0, 1], 7000).into(), 5);
        assert_eq!(a.addr(), a2.addr(), "one name, one member");
        assert_ne!(a.addr(), b.addr());
        let back: NodeId = postcard::from_bytes(&postcard::to_allocvec(&a).unwrap()).unwrap();
        assert_eq!(back, a);
        assert_eq!(back.addr(), a.addr());
        // The wire form is the name, the address and the generation only.
        let plain = postcard::to_allocvec(&(&a.name, a.addr, a.generation)).unwrap();
        assert_eq!(postcard::to_allocvec(&a).unwrap(), plain);
        assert_eq!(a.renew().unwrap().addr(), a.addr());
    }
}
