//! Where peers' datagrams come from, against the address they advertise: a
//! wrong advertise address otherwise fails silently (peers reach nothing
//! there, and the node flaps between alive and failed).

use std::net::SocketAddr;

use super::Engine;

/// How long a member declared failed counts as not reached where it
/// advertises, and how often one member is said to be so.
const ADVERTISE_MISMATCH_EVERY_MS: u64 = 600_000;
/// Most members remembered here; forgotten all at once past it.
const MAX_ADVERTISE_SEEN: usize = 1024;

/// When a member advertising an address was last declared failed, how many
/// times in a row within 10 minutes of the one before, and when it was said
/// to send from elsewhere.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct AdvertiseSeen {
    failed_ms: Option<u64>,
    failures: u32,
    warned_ms: Option<u64>,
}

impl Engine {
    /// A member advertising `advertised` was declared failed.
    pub(super) fn note_failed_at(&mut self, advertised: SocketAddr) {
        let now = self.now_ms();
        let seen = self.advertise_seen(advertised);
        let again = seen.failed_ms.is_some_and(|t| now.saturating_sub(t) < ADVERTISE_MISMATCH_EVERY_MS);
        seen.failures = if again { seen.failures.saturating_add(1) } else { 1 };
        seen.failed_ms = Some(now);
    }

    /// A peer advertising `advertised` sent a datagram from `from`. Another
    /// address (host or port) than the one it advertises is how a wrong
    /// advertise address shows when the member also flaps: declared failed
    /// twice or more, each within 10 minutes of the one before (peers reach
    /// nothing there, and it comes back each time it hears so). A member
    /// reached where it advertises is fine wherever it sends from: a NAT
    /// forwarding that address, a host bound to `0.0.0.0` whose kernel
    /// picks another source address, also after one real crash and
    /// restart. Said at most once every 10 minutes per member.
    pub(super) fn check_advertised(&mut self, advertised: SocketAddr, from: SocketAddr) {
        if advertised.ip().to_canonical() == from.ip().to_canonical()
            && advertised.port() == from.port()
        {
            return;
        }
        let now = self.now_ms();
        let Some(seen) = self.advertise_seen.get(&advertised).copied() else {
            return;
        };
        let recent = |t: Option<u64>| t.is_some_and(|t| now.saturating_sub(t) < ADVERTISE_MISMATCH_EVERY_MS);
        if !recent(seen.failed_ms) || seen.failures < 2 || recent(seen.warned_ms) {
            return;
        }
        self.advertise_seen(advertised).warned_ms = Some(now);
        tracing::warn!(
            kind = "advertise_mismatch",
            "a member advertising {advertised} sends its datagrams from {from}, and was declared \
             failed again and again: its advertise address is wrong (peers reach nothing there, and it flaps \
             between alive and failed), or a NAT does not forward it"
        );
    }

    fn advertise_seen(&mut self, advertised: SocketAddr) -> &mut AdvertiseSeen {
        if self.advertise_seen.len() >= MAX_ADVERTISE_SEEN
            && !self.advertise_seen.contains_key(&advertised)
        {
            self.advertise_seen.clear();
        }
        self.advertise_seen.entry(advertised).or_default()
    }
}
