//! The SWIM identity: small on purpose (name, address, generation). The name
//! is the conflict key, so one name is one node; a restart or a rejoin after
//! being declared down bumps the generation, which wins the conflict.

use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::Arc;

use serde::{Deserialize, Serialize, Serializer};
use sha2::{Digest, Sha256};

/// Identity of a node in the membership protocol. Built with
/// [`NodeId::new`]; its fields are read through `Deref` (the parts); on the wire it
/// is the name, the address and the generation.
///
/// 16 bytes: every node keeps one per member in foca's list and one in its
/// own member table, so a cluster of N nodes holds N² of them, and clones
/// share the parts.
#[derive(Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(from = "Parts")]
pub struct NodeId {
    parts: Arc<Parts>,
    /// 64 bits of SHA-256 of the name: what foca compares, scanning its
    /// whole member list, for every update it applies. Comparing the name
    /// itself cost two atomic reference-count changes per member scanned.
    key: u64,
}

/// What a [`NodeId`] names, and its wire form.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Parts {
    /// Unique node name.
    pub name: Arc<str>,
    /// Advertised gossip and stream address.
    pub addr: SocketAddr,
    /// Increases on every restart and every rejoin.
    pub generation: u64,
}

impl From<Parts> for NodeId {
    fn from(p: Parts) -> NodeId {
        NodeId {
            key: name_key(&p.name),
            parts: Arc::new(p),
        }
    }
}

impl Serialize for NodeId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.parts.serialize(s)
    }
}

impl std::fmt::Debug for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeId")
            .field("name", &self.name)
            .field("addr", &self.addr)
            .field("generation", &self.generation)
            .finish()
    }
}

impl Deref for NodeId {
    type Target = Parts;

    fn deref(&self) -> &Parts {
        &self.parts
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
        NodeId::from(Parts {
            name: name.into(),
            addr,
            generation,
        })
    }

    /// The same node in another generation.
    pub fn with_generation(&self, generation: u64) -> NodeId {
        NodeId {
            parts: Arc::new(Parts {
                generation,
                ..Parts::clone(&self.parts)
            }),
            key: self.key,
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
        Some(self.with_generation(self.generation.checked_add(1)?))
    }

    fn addr(&self) -> u64 {
        // The parts are never changed in place (an `Arc` shared by clones),
        // so the key made with them still holds.
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

    #[test]
    fn an_identity_is_two_words_and_clones_share_its_parts() {
        // N² of these live in a cluster of N nodes (foca's list and the
        // member table of every node).
        assert_eq!(std::mem::size_of::<NodeId>(), 16);
        let a = NodeId::new("node-a", ([127, 0, 0, 1], 7000).into(), 5);
        let b = a.clone();
        assert!(Arc::ptr_eq(&a.parts, &b.parts));
        let next = a.with_generation(6);
        assert_eq!(
            (&*next.name, next.addr, next.generation),
            ("node-a", a.addr, 6)
        );
        assert_eq!(next.addr(), a.addr());
        assert_ne!(next, a);
        assert_eq!(
            format!("{a:?}"),
            "NodeId { name: \"node-a\", addr: 127.0.0.1:7000, generation: 5 }"
        );
    }
}
