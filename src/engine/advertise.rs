//! Where peers' datagrams come from, against the address they advertise: a
//! wrong advertise address otherwise fails silently (peers reach nothing
//! there, and the node flaps between alive and suspect).

use std::net::SocketAddr;

use super::Engine;

/// How often a member sending from another host than it advertises is said.
const ADVERTISE_MISMATCH_EVERY_MS: u64 = 600_000;

impl Engine {
    /// A peer advertising `advertised` sent a datagram from `from`. Another
    /// host than the one it advertises is how a wrong advertise address
    /// shows (peers reach nothing there, and the node flaps between alive
    /// and suspect with no other word), unless a NAT forwards the address:
    /// said, at most once every 10 minutes.
    pub(super) fn check_advertised(&mut self, advertised: SocketAddr, from: SocketAddr) {
        if advertised.ip().to_canonical() == from.ip().to_canonical() {
            return;
        }
        if self.log_due_every("advertise_mismatch", ADVERTISE_MISMATCH_EVERY_MS) {
            tracing::warn!(
                kind = "advertise_mismatch",
                "a member advertising {advertised} sends its datagrams from {from}: unless a NAT \
                 forwards {advertised} to it, its advertise address is wrong (peers reach \
                 nothing there, and it flaps between alive and suspect)"
            );
        }
    }
}
