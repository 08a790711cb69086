//! Accepted connections still in their setup (hello, channel frame), per
//! remote host. The listener's places are shared by every peer; without a
//! bound per host, one host that opens connections and never sends a hello
//! (no key needed) holds all of them for the setup timeout, and the
//! tribe's own exchanges are closed at the cap.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

/// Setups one remote host may have under way at once: far above what the
/// exchanges and call streams of the nodes of one host open together.
pub const MAX_SETUPS_PER_HOST: usize = 32;

/// Setups under way, by remote host.
#[derive(Debug, Clone, Default)]
pub struct SetupSlots {
    by_host: Arc<Mutex<HashMap<IpAddr, usize>>>,
    /// The address the node listens on: connections from it (other nodes
    /// of this host, a local tribe of many nodes on 127.0.0.1) are not
    /// bounded per host.
    own: Option<IpAddr>,
}

/// One setup's place; dropping it ends the setup.
#[derive(Debug)]
pub struct SetupSlot {
    /// The host counted, none for this node's own address.
    host: Option<IpAddr>,
    slots: SetupSlots,
}

impl SetupSlots {
    /// Slots for a node listening on `own`.
    pub fn new(own: Option<IpAddr>) -> SetupSlots {
        SetupSlots {
            own,
            ..SetupSlots::default()
        }
    }

    fn is_own(&self, host: IpAddr) -> bool {
        match self.own {
            Some(own) if own.is_unspecified() => host.is_loopback(),
            Some(own) => own == host,
            None => false,
        }
    }

    /// A place for a setup from `host`, if it has fewer than
    /// [`MAX_SETUPS_PER_HOST`] under way (or is this node's own address).
    pub fn try_take(&self, host: IpAddr) -> Option<SetupSlot> {
        if self.is_own(host) {
            return Some(SetupSlot {
                host: None,
                slots: self.clone(),
            });
        }
        let mut by_host = self.by_host.lock().unwrap_or_else(PoisonError::into_inner);
        let n = by_host.entry(host).or_insert(0);
        if *n >= MAX_SETUPS_PER_HOST {
            return None;
        }
        *n += 1;
        Some(SetupSlot {
            host: Some(host),
            slots: self.clone(),
        })
    }
}

impl Drop for SetupSlot {
    fn drop(&mut self) {
        let Some(host) = self.host else {
            return;
        };
        let mut by_host = self
            .slots
            .by_host
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = by_host.get_mut(&host) {
            *n -= 1;
            if *n == 0 {
                by_host.remove(&host);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_gets_its_share_and_others_theirs() {
        let slots = SetupSlots::default();
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let held: Vec<SetupSlot> = (0..MAX_SETUPS_PER_HOST)
            .map(|_| slots.try_take(a).unwrap())
            .collect();
        assert!(slots.try_take(a).is_none());
        assert!(slots.try_take(b).is_some());
        drop(held);
        assert!(slots.try_take(a).is_some());
        assert!(
            slots.by_host.lock().unwrap().is_empty(),
            "ended setups leave nothing"
        );
    }

    #[test]
    fn the_nodes_own_address_is_not_bounded() {
        let own: IpAddr = [127, 0, 0, 1].into();
        let other: IpAddr = [127, 0, 0, 2].into();
        let slots = SetupSlots::new(Some(own));
        let mut held: Vec<SetupSlot> = (0..100).map(|_| slots.try_take(own).unwrap()).collect();
        held.extend((0..MAX_SETUPS_PER_HOST).map(|_| slots.try_take(other).unwrap()));
        assert!(slots.try_take(other).is_none());
        // Listening on every address, loopback peers are this host's.
        let any = SetupSlots::new(Some([0, 0, 0, 0].into()));
        held.extend((0..100).map(|_| any.try_take(own).unwrap()));
        assert!(any.by_host.lock().unwrap().is_empty());
    }
}
