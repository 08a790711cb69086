//! Accepted connections still in their setup (hello, channel frame), per
//! remote host. The listener's places are shared by every peer; without a
//! bound per host, one host that opens connections and never sends a hello
//! (no key needed) holds all of them for the setup timeout, and the
//! tribe's own exchanges are closed at the cap. With the bound, a few hosts
//! together still fill every place; so when every place is taken, a new
//! connection pushes out the oldest setup of the busiest host (in the
//! busiest /24) instead of being closed: a peer with one setup under way
//! is never the one pushed out while a flooding host holds more.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::oneshot;

/// Setups one remote host may have under way at once: far above what the
/// exchanges and call streams of the nodes of one host open together.
pub const MAX_SETUPS_PER_HOST: usize = 32;

/// Setups under way, by remote host.
#[derive(Debug, Clone, Default)]
pub struct SetupSlots {
    table: Arc<Mutex<Table>>,
    /// The address the node listens on: connections from it (other nodes
    /// of this host, a local tribe of many nodes on 127.0.0.1) are not
    /// bounded per host, but are pushed out as any host's are: a local
    /// process holding every place with silent connections would
    /// otherwise lock every peer out.
    own: Option<IpAddr>,
    /// The address the node advertises, which other nodes of its host
    /// dial: its own too.
    advertised: Option<IpAddr>,
}

#[derive(Debug, Default)]
struct Table {
    next: u64,
    /// Per host, its setups by age (oldest first).
    by_host: HashMap<IpAddr, Vec<Entry>>,
}

#[derive(Debug)]
struct Entry {
    seq: u64,
    /// Tells the setup to make way.
    tell: oneshot::Sender<()>,
    /// Still waiting for the place another setup makes for it: pushing it
    /// out would free no place, and the newcomer would wait for a setup
    /// to end on its own (up to the setup timeout).
    waiting: bool,
}

impl Entry {
    fn may_make_way_for(&self, newcomer: u64) -> bool {
        self.seq != newcomer && !self.waiting
    }
}

/// One setup's place; dropping it ends the setup.
#[derive(Debug)]
pub struct SetupSlot {
    /// The host counted and this setup's number.
    counted: (IpAddr, u64),
    /// Fires when the setup is to make way for a newer connection.
    evicted: Option<oneshot::Receiver<()>>,
    slots: SetupSlots,
}

/// The host a remote address counts as: the address itself, or its /64 for
/// IPv6, where one party holds a whole /64 as easily as one address.
fn host_of(addr: IpAddr) -> IpAddr {
    match addr.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
        v4 => v4,
    }
}

/// The network a host counts in when one is chosen to make way: its /24,
/// or its /64 for IPv6 (the host itself).
fn network_of(host: IpAddr) -> IpAddr {
    match host {
        IpAddr::V4(v4) => IpAddr::V4((u32::from(v4) & !0xff).into()),
        v6 => v6,
    }
}

impl SetupSlots {
    /// Slots for a node listening on `own` and advertising `advertised`.
    pub fn new(own: Option<IpAddr>, advertised: Option<IpAddr>) -> SetupSlots {
        SetupSlots {
            own,
            advertised: advertised.map(|a| a.to_canonical()),
            ..SetupSlots::default()
        }
    }

    /// The host this node's own connections count as, all of them one
    /// (listening on every address, each loopback address is its own: a
    /// local process spreading its connections over 127.N.0.0/24s would
    /// otherwise rank as many small networks).
    fn own_host(&self, addr: IpAddr) -> Option<IpAddr> {
        let own = self.own?.to_canonical();
        let addr = addr.to_canonical();
        let is_own = if own.is_unspecified() {
            addr.is_loopback()
        } else {
            own == addr
        };
        (is_own || self.advertised == Some(addr)).then_some(own)
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A place for a setup from `addr`, if its host has fewer than
    /// [`MAX_SETUPS_PER_HOST`] under way (or it is this node's own address).
    pub fn try_take(&self, addr: IpAddr) -> Option<SetupSlot> {
        let own = self.own_host(addr);
        let host = own.unwrap_or_else(|| host_of(addr));
        let mut table = self.table();
        let seq = table.next;
        let setups = table.by_host.entry(host).or_default();
        if setups.len() >= MAX_SETUPS_PER_HOST && own.is_none() {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        setups.push(Entry {
            seq,
            tell: tx,
            waiting: false,
        });
        table.next += 1;
        Some(SetupSlot {
            counted: (host, seq),
            evicted: Some(rx),
            slots: self.clone(),
        })
    }

    /// Accepted connections still in their setup (less those told to make
    /// way).
    pub fn under_way(&self) -> usize {
        self.table().by_host.values().map(Vec::len).sum()
    }

    /// Tells the oldest setup of the host with the most setups under way,
    /// in the network with the most, to make way for `newcomer` (never
    /// itself); false when no other setup is under way. Ties go to the
    /// oldest setup, so a newcomer is never pushed out before those that
    /// came before it.
    pub fn evict_one(&self, newcomer: &SetupSlot) -> bool {
        let (_, except) = newcomer.counted;
        let mut table = self.table();
        let others =
            |setups: &[Entry]| setups.iter().filter(|e| e.may_make_way_for(except)).count();
        let mut per_network: HashMap<IpAddr, usize> = HashMap::new();
        for (host, setups) in &table.by_host {
            *per_network.entry(network_of(*host)).or_default() += others(setups);
        }
        let busiest = table
            .by_host
            .iter()
            .filter_map(|(host, setups)| {
                let oldest = setups.iter().find(|e| e.may_make_way_for(except))?.seq;
                let network = per_network[&network_of(*host)];
                // Most in its network, then most of its own, then oldest.
                Some(((network, others(setups), std::cmp::Reverse(oldest)), *host))
            })
            .max_by_key(|(rank, _)| *rank)
            .map(|(_, host)| host);
        let Some(host) = busiest else {
            return false;
        };
        let Some(setups) = table.by_host.get_mut(&host) else {
            return false;
        };
        let Some(at) = setups.iter().position(|e| e.may_make_way_for(except)) else {
            return false;
        };
        let tell = setups.remove(at).tell;
        if setups.is_empty() {
            table.by_host.remove(&host);
        }
        // Its place counts as free from now on; the setup itself ends when
        // its task sees this (or has just ended on its own).
        let _ = tell.send(());
        true
    }
}

impl SetupSlot {
    /// A handle that marks this setup waiting for its place, or placed.
    pub fn marker(&self) -> SetupMarker {
        SetupMarker {
            counted: self.counted,
            table: self.slots.table.clone(),
        }
    }

    /// Resolves (once) when this setup is to make way for a newer
    /// connection; never for one that cannot be pushed out.
    pub async fn evicted(&mut self) {
        if let Some(rx) = self.evicted.as_mut() {
            // An error would be an entry gone without a word, which only
            // this slot's own drop does.
            let told = rx.await.is_ok();
            self.evicted = None;
            if told {
                return;
            }
        }
        std::future::pending::<()>().await
    }
}

impl Drop for SetupSlot {
    fn drop(&mut self) {
        let (host, seq) = self.counted;
        let mut table = self.slots.table();
        if let Some(setups) = table.by_host.get_mut(&host) {
            setups.retain(|e| e.seq != seq);
            if setups.is_empty() {
                table.by_host.remove(&host);
            }
        }
    }
}

/// Marks one setup as waiting for its place (never told to make way
/// meanwhile) or as holding it.
#[derive(Debug, Clone)]
pub struct SetupMarker {
    counted: (IpAddr, u64),
    table: Arc<Mutex<Table>>,
}

impl SetupMarker {
    pub fn waiting(&self, waiting: bool) {
        let (host, seq) = self.counted;
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = table
            .by_host
            .get_mut(&host)
            .and_then(|setups| setups.iter_mut().find(|e| e.seq == seq))
        {
            entry.waiting = waiting;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taken(slots: &SetupSlots) -> usize {
        slots.under_way()
    }

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
        assert_eq!(taken(&slots), 0, "ended setups leave nothing");
    }

    /// This host's connections are not bounded per host, yet they make way
    /// as any host's do: a local process that holds every place with
    /// silent connections does not lock the other hosts' peers out, also
    /// spread over many loopback networks.
    #[tokio::test]
    async fn the_nodes_own_address_is_not_bounded_but_makes_way() {
        let own: IpAddr = [127, 0, 0, 1].into();
        let other: IpAddr = [127, 0, 0, 2].into();
        let slots = SetupSlots::new(Some(own), None);
        let mut held: Vec<SetupSlot> = (0..100).map(|_| slots.try_take(own).unwrap()).collect();
        let mut others: Vec<SetupSlot> = (0..MAX_SETUPS_PER_HOST)
            .map(|_| slots.try_take(other).unwrap())
            .collect();
        assert!(slots.try_take(other).is_none());
        // The busiest host is this one: its oldest setup makes way.
        let first = slots.try_take([127, 0, 0, 3].into()).unwrap();
        assert!(slots.evict_one(&first));
        tokio::time::timeout(std::time::Duration::from_secs(1), held[0].evicted())
            .await
            .expect("the oldest of this host's setups was told");
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(50), others[0].evicted())
                .await
                .is_err()
        );
        // Listening on every address, loopback peers are this host's, all
        // one host: spread over 127.N.0.0/24s, they still rank as one.
        let lan: IpAddr = [192, 0, 2, 7].into();
        let any = SetupSlots::new(Some([0, 0, 0, 0].into()), Some(lan));
        // Other nodes of this host dial its advertised address: unbounded.
        held.extend((0..MAX_SETUPS_PER_HOST + 1).map(|_| any.try_take(lan).unwrap()));
        let mut peer = any.try_take([10, 0, 0, 5].into()).unwrap();
        held.extend((0..=255u8).map(|n| any.try_take([127, n, 0, 1].into()).unwrap()));
        let mapped: IpAddr = std::net::Ipv4Addr::new(127, 0, 0, 1)
            .to_ipv6_mapped()
            .into();
        held.extend((0..MAX_SETUPS_PER_HOST + 1).map(|_| any.try_take(mapped).unwrap()));
        let newcomer = any.try_take([10, 0, 0, 9].into()).unwrap();
        assert!(any.evict_one(&newcomer));
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(50), peer.evicted())
                .await
                .is_err(),
            "the other host's lone setup made way for a local flood"
        );
        drop((held, others, first, newcomer, peer));
        assert_eq!(taken(&slots) + taken(&any), 0);
    }

    /// A newcomer never makes way for itself: with no other setup under
    /// way (every place holding an exchange), none is told.
    #[test]
    fn a_newcomer_alone_makes_way_for_no_one() {
        let slots = SetupSlots::default();
        let newcomer = slots.try_take([10, 0, 0, 1].into()).unwrap();
        assert!(!slots.evict_one(&newcomer));
        assert_eq!(taken(&slots), 1);
    }

    #[test]
    fn one_ipv6_64_counts_as_one_host() {
        let slots = SetupSlots::default();
        let held: Vec<SetupSlot> = (0..MAX_SETUPS_PER_HOST as u16)
            .map(|i| {
                let addr = std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, i + 1);
                slots.try_take(addr.into()).unwrap()
            })
            .collect();
        let same_64 = std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0xffff, 0, 0, 1);
        let next_64 = std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 2, 0, 0, 0, 1);
        assert!(slots.try_take(same_64.into()).is_none());
        assert!(slots.try_take(next_64.into()).is_some());
        drop(held);
    }

    #[tokio::test]
    async fn the_busiest_host_in_the_busiest_network_makes_way_oldest_first() {
        let slots = SetupSlots::default();
        let peer: IpAddr = [10, 0, 1, 5].into();
        let mut lone = slots.try_take(peer).unwrap();
        let flood: Vec<IpAddr> = (2..6).map(|i| IpAddr::from([192, 0, 2, i])).collect();
        let mut held: Vec<SetupSlot> = Vec::new();
        for _ in 0..3 {
            for addr in &flood {
                held.push(slots.try_take(*addr).unwrap());
            }
        }
        // One more from .2 comes: the flooding hosts tie, the oldest setup
        // goes first.
        let newcomer = slots.try_take(flood[0]).unwrap();
        assert!(slots.evict_one(&newcomer));
        let (first, rest) = held.split_first_mut().unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(1), first.evicted())
            .await
            .expect("the oldest setup of the busiest host was told");
        // Then .2 has fewer: .3's first.
        assert!(slots.evict_one(&newcomer));
        tokio::time::timeout(std::time::Duration::from_secs(1), rest[0].evicted())
            .await
            .expect("the next oldest of the busiest network was told");
        // The lone peer is not pushed out while the flood holds more.
        for _ in 0..(held.len() - 4) {
            assert!(slots.evict_one(&newcomer));
        }
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(50), lone.evicted())
                .await
                .is_err()
        );
        for _ in 0..3 {
            assert!(slots.evict_one(&newcomer));
        }
        lone.evicted().await;
        assert!(!slots.evict_one(&newcomer), "only the newcomer is left");
        drop((held, newcomer));
        assert_eq!(taken(&slots), 0);
    }
}
