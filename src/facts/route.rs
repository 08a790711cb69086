//! Reads the kernel's route tables (`/proc/net/route`, `fib_trie`,
//! `ipv6_route`, `if_inet6`) to name the address this host reaches the
//! default route from. Pure text-to-address functions; probe.rs reads the
//! files.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, Ipv6Addr};

// -------------------------------------------------------------- default IPv4

const RTF_UP: u32 = 0x0001;
const RTF_GATEWAY: u32 = 0x0002;
const RTF_REJECT: u32 = 0x0200;

/// One row of `/proc/net/route`.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Route4 {
    iface: String,
    dest: Ipv4Addr,
    gateway: Ipv4Addr,
    flags: u32,
    metric: u32,
    mask: Ipv4Addr,
}

impl Route4 {
    fn usable(&self) -> bool {
        self.flags & RTF_UP != 0 && self.flags & RTF_REJECT == 0
    }

    fn is_default(&self) -> bool {
        self.dest.is_unspecified() && self.mask.is_unspecified()
    }

    fn contains(&self, addr: Ipv4Addr) -> bool {
        u32::from(addr) & u32::from(self.mask) == u32::from(self.dest)
    }
}

/// Parses `/proc/net/route`; the header and malformed rows are skipped.
pub(super) fn parse_route4(text: &str) -> Vec<Route4> {
    text.lines().filter_map(parse_route4_line).collect()
}

fn parse_route4_line(line: &str) -> Option<Route4> {
    // Iface Destination Gateway Flags RefCnt Use Metric Mask MTU Window IRTT
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.len() < 8 {
        return None;
    }
    Some(Route4 {
        iface: f[0].to_owned(),
        dest: parse_route_ipv4(f[1])?,
        gateway: parse_route_ipv4(f[2])?,
        flags: u32::from_str_radix(f[3], 16).ok()?,
        metric: f[6].parse().ok()?,
        mask: parse_route_ipv4(f[7])?,
    })
}

/// The kernel prints the in-memory (network order) address as a native u32,
/// so native byte order turns it back into octets on any endianness.
fn parse_route_ipv4(hex: &str) -> Option<Ipv4Addr> {
    if hex.len() != 8 {
        return None;
    }
    let raw = u32::from_str_radix(hex, 16).ok()?;
    Some(Ipv4Addr::from(raw.to_ne_bytes()))
}

/// Local host addresses from `/proc/net/fib_trie`: a `|-- a.b.c.d` leaf
/// followed by a `/32 host LOCAL` entry.
pub(super) fn parse_fib_trie_locals(text: &str) -> BTreeSet<Ipv4Addr> {
    let mut locals = BTreeSet::new();
    let mut leaf = None;
    for line in text.lines() {
        let line = line.trim();
        if let Some(addr) = line.strip_prefix("|--") {
            leaf = addr.trim().parse::<Ipv4Addr>().ok();
        } else if line.starts_with("+--") || line.ends_with(':') {
            leaf = None;
        } else if line.split_whitespace().eq(["/32", "host", "LOCAL"]) {
            locals.extend(leaf);
        }
    }
    locals
}

/// The source address of the lowest-metric default route: a local address in
/// a connected subnet of its interface, preferring the gateway's subnet. With
/// no such subnet (e.g. point-to-point links) a single non-loopback local
/// address is unambiguous; anything else is left unknown.
pub(super) fn default_ipv4(routes: &[Route4], locals: &BTreeSet<Ipv4Addr>) -> Option<Ipv4Addr> {
    let default = routes
        .iter()
        .filter(|r| r.usable() && r.is_default())
        .min_by_key(|r| r.metric)?;
    let subnets: Vec<&Route4> = routes
        .iter()
        .filter(|r| r.iface == default.iface && r.usable() && !r.is_default())
        .filter(|r| r.flags & RTF_GATEWAY == 0)
        .collect();
    let candidates: Vec<Ipv4Addr> = locals
        .iter()
        .copied()
        .filter(|a| !a.is_loopback() && !a.is_unspecified() && !a.is_broadcast())
        .collect();
    let in_subnet = |a: &Ipv4Addr, gw_only: bool| {
        subnets
            .iter()
            .any(|s| s.contains(*a) && (!gw_only || s.contains(default.gateway)))
    };
    let has_gateway = !default.gateway.is_unspecified();
    candidates
        .iter()
        .find(|a| has_gateway && in_subnet(a, true))
        .or_else(|| candidates.iter().find(|a| in_subnet(a, false)))
        .or(match candidates.as_slice() {
            [only] => Some(only),
            _ => None,
        })
        .copied()
}

// -------------------------------------------------------------- default IPv6

const IFA_F_TEMPORARY: u32 = 0x01;
const IFA_F_DADFAILED: u32 = 0x08;
const IFA_F_DEPRECATED: u32 = 0x20;
const IFA_F_TENTATIVE: u32 = 0x40;
/// `if_inet6` scope value of global addresses (ULAs included).
const SCOPE_GLOBAL: u32 = 0x00;

/// One row of `/proc/net/ipv6_route`.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Route6 {
    prefix_len: u32,
    next_hop: Ipv6Addr,
    metric: u32,
    flags: u32,
    iface: String,
}

/// One row of `/proc/net/if_inet6`.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Addr6 {
    addr: Ipv6Addr,
    prefix_len: u32,
    scope: u32,
    flags: u32,
    iface: String,
}

impl Addr6 {
    /// Global, and neither still under duplicate detection nor on its way out.
    fn usable(&self) -> bool {
        let bad = IFA_F_DADFAILED | IFA_F_DEPRECATED | IFA_F_TENTATIVE;
        self.scope == SCOPE_GLOBAL && self.flags & bad == 0
    }
}

pub(super) fn parse_route6(text: &str) -> Vec<Route6> {
    text.lines().filter_map(parse_route6_line).collect()
}

fn parse_route6_line(line: &str) -> Option<Route6> {
    // dest dest_plen src src_plen next_hop metric refcnt use flags iface
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.len() != 10 {
        return None;
    }
    parse_hex_ipv6(f[0])?;
    Some(Route6 {
        prefix_len: u32::from_str_radix(f[1], 16).ok()?,
        next_hop: parse_hex_ipv6(f[4])?,
        metric: u32::from_str_radix(f[5], 16).ok()?,
        flags: u32::from_str_radix(f[8], 16).ok()?,
        iface: f[9].to_owned(),
    })
}

pub(super) fn parse_if_inet6(text: &str) -> Vec<Addr6> {
    text.lines().filter_map(parse_if_inet6_line).collect()
}

fn parse_if_inet6_line(line: &str) -> Option<Addr6> {
    // address ifindex prefix_len scope flags iface
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.len() != 6 {
        return None;
    }
    Some(Addr6 {
        addr: parse_hex_ipv6(f[0])?,
        prefix_len: u32::from_str_radix(f[2], 16).ok()?,
        scope: u32::from_str_radix(f[3], 16).ok()?,
        flags: u32::from_str_radix(f[4], 16).ok()?,
        iface: f[5].to_owned(),
    })
}

/// 32 hex digits in network order, as `/proc/net/*` print IPv6 addresses.
fn parse_hex_ipv6(hex: &str) -> Option<Ipv6Addr> {
    if hex.len() != 32 {
        return None;
    }
    u128::from_str_radix(hex, 16).ok().map(Ipv6Addr::from)
}

fn same_prefix(a: Ipv6Addr, b: Ipv6Addr, prefix_len: u32) -> bool {
    let mask = match prefix_len {
        0 => 0,
        1..=128 => u128::MAX << (128 - prefix_len),
        _ => return false,
    };
    u128::from(a) & mask == u128::from(b) & mask
}

/// A usable global address on the lowest-metric default route's interface,
/// preferring the gateway's prefix, then stable over temporary addresses (a
/// host fact should not change every privacy-address rotation).
pub(super) fn default_ipv6(routes: &[Route6], addrs: &[Addr6]) -> Option<Ipv6Addr> {
    let default = routes
        .iter()
        .filter(|r| r.prefix_len == 0 && r.iface != "lo")
        .filter(|r| r.flags & RTF_UP != 0 && r.flags & RTF_REJECT == 0)
        .min_by_key(|r| r.metric)?;
    let candidates: Vec<&Addr6> = addrs
        .iter()
        .filter(|a| a.iface == default.iface && a.usable())
        .collect();
    let stable = |a: &&&Addr6| a.flags & IFA_F_TEMPORARY == 0;
    let on_link = |a: &&&Addr6| same_prefix(a.addr, default.next_hop, a.prefix_len);
    candidates
        .iter()
        .find(|a| on_link(a) && stable(a))
        .or_else(|| candidates.iter().find(stable))
        .or_else(|| candidates.first())
        .map(|a| a.addr)
}

// Visible to the facts module: probe.rs's fixture-tree tests write these
// sample `/proc/net` files too.
#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// Formats an address the way `/proc/net/route` prints it on this host.
    fn route_hex(addr: &str) -> String {
        let ip: Ipv4Addr = addr.parse().expect("test address");
        format!("{:08X}", u32::from_ne_bytes(ip.octets()))
    }

    pub(in crate::facts) fn route_line(
        iface: &str,
        dest: &str,
        gw: &str,
        flags: u32,
        metric: u32,
        mask: &str,
    ) -> String {
        format!(
            "{iface}\t{}\t{}\t{flags:04X}\t0\t0\t{metric}\t{}\t0\t0\t0\n",
            route_hex(dest),
            route_hex(gw),
            route_hex(mask)
        )
    }

    pub(in crate::facts) const ROUTE_HEADER: &str =
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n";

    /// fib_trie of a host with 10.0.0.5/24 on eth0 and docker's 172.17.0.1/16.
    pub(in crate::facts) const FIB_TRIE: &str = "\
Main:
  +-- 0.0.0.0/0 3 0 5
     |-- 0.0.0.0
        /0 universe UNICAST
     +-- 10.0.0.0/24 2 0 2
        +-- 10.0.0.0/29 2 0 2
           |-- 10.0.0.0
              /24 link UNICAST
           |-- 10.0.0.5
              /32 host LOCAL
        |-- 10.0.0.255
           /32 link BROADCAST
     +-- 127.0.0.0/8 2 0 2
        |-- 127.0.0.1
           /32 host LOCAL
     +-- 172.17.0.0/16 2 0 2
        |-- 172.17.0.1
           /32 host LOCAL
Local:
  +-- 0.0.0.0/0 3 0 5
     |-- 10.0.0.5
        /32 host LOCAL
";

    pub(in crate::facts) fn eth0_routes(gw_flags: u32) -> String {
        let mut text = ROUTE_HEADER.to_owned();
        text += &route_line("docker0", "172.17.0.0", "0.0.0.0", 0x1, 0, "255.255.0.0");
        text += &route_line("eth0", "0.0.0.0", "10.0.0.1", gw_flags, 100, "0.0.0.0");
        text += &route_line("eth0", "10.0.0.0", "0.0.0.0", 0x1, 100, "255.255.255.0");
        text
    }

    pub(in crate::facts) const IPV6_ROUTE: &str = "\
20010db8000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0
fe800000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000002 00000000 00000001     eth0
00000000000000000000000000000000 00 00000000000000000000000000000000 00 20010db8000000000000000000000001 00000400 00000002 00000000 00000003     eth0
00000000000000000000000000000001 80 00000000000000000000000000000000 00 00000000000000000000000000000000 00000000 00000002 00000000 80200001       lo
00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo
";

    pub(in crate::facts) const IF_INET6: &str = "\
00000000000000000000000000000001 01 80 10 80       lo
20010db8000000000000000000000002 02 40 00 80     eth0
fe800000000000000000000000000abc 02 40 20 80     eth0
fd000000000000000000000000000009 03 40 00 80  docker0
";

    #[test]
    fn default_ipv4_real_kernel_format() {
        // Captured from a Linux host (192.0.2.2/24 via 192.0.2.1), in the
        // kernel's own spacing; hex converted for this host's endianness.
        let routes = format!(
            "{ROUTE_HEADER}eth0\t{}\t{}\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
             eth0\t{}\t00000000\t0001\t0\t0\t0\t{}\t0\t0\t0\n",
            route_hex("0.0.0.0"),
            route_hex("192.0.2.1"),
            route_hex("192.0.2.0"),
            route_hex("255.255.255.0"),
        );
        let trie = "Main:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 0.0.0.0\n        /0 universe UNICAST\n\
                    \x20    +-- 192.0.2.0/24 2 0 2\n        +-- 192.0.2.0/30 2 0 2\n\
                    \x20          |-- 192.0.2.0\n              /24 link UNICAST\n\
                    \x20          |-- 192.0.2.2\n              /32 host LOCAL\n\
                    \x20       |-- 192.0.2.255\n           /32 link BROADCAST\n";
        let addr = default_ipv4(&parse_route4(&routes), &parse_fib_trie_locals(trie));
        assert_eq!(addr, Some(Ipv4Addr::new(192, 0, 2, 2)));
    }

    #[test]
    fn default_ipv4_picks_lowest_metric() {
        let mut text = ROUTE_HEADER.to_owned();
        text += &route_line("wlan0", "0.0.0.0", "192.168.1.1", 0x3, 600, "0.0.0.0");
        text += &route_line("eth0", "0.0.0.0", "10.0.0.1", 0x3, 100, "0.0.0.0");
        text += &route_line("eth0", "10.0.0.0", "0.0.0.0", 0x1, 100, "255.255.255.0");
        text += &route_line("wlan0", "192.168.1.0", "0.0.0.0", 0x1, 600, "255.255.255.0");
        let locals = ["192.168.1.20", "10.0.0.5"].map(|a| a.parse().expect("addr"));
        let addr = default_ipv4(&parse_route4(&text), &locals.into_iter().collect());
        assert_eq!(addr, Some(Ipv4Addr::new(10, 0, 0, 5)));
    }

    #[test]
    fn default_ipv4_point_to_point_single_address() {
        let mut text = ROUTE_HEADER.to_owned();
        text += &route_line("ppp0", "0.0.0.0", "0.0.0.0", 0x1, 0, "0.0.0.0");
        let locals = ["127.0.0.1", "203.0.113.9"].map(|a| a.parse().expect("addr"));
        let addr = default_ipv4(&parse_route4(&text), &locals.into_iter().collect());
        assert_eq!(addr, Some(Ipv4Addr::new(203, 0, 113, 9)));
        // Two candidates and no subnet to tell them apart: unknown.
        let locals = ["198.51.100.1", "203.0.113.9"].map(|a| a.parse().expect("addr"));
        assert_eq!(
            default_ipv4(&parse_route4(&text), &locals.into_iter().collect()),
            None
        );
    }

    #[test]
    fn default_ipv6_skips_tentative_and_prefers_stable() {
        let route = "00000000000000000000000000000000 00 00000000000000000000000000000000 00 \
                     fe800000000000000000000000000001 00000400 00000002 00000000 00000003 eth0\n";
        let addrs = "20010db8000000000000000000000011 02 40 00 40 eth0\n\
                     20010db8000000000000000000000022 02 40 00 01 eth0\n\
                     20010db8000000000000000000000033 02 40 00 00 eth0\n";
        let addr = default_ipv6(&parse_route6(route), &parse_if_inet6(addrs));
        assert_eq!(addr, Some("2001:db8::33".parse().expect("addr")));
        // Only a temporary address left: still a real address of the host.
        let addrs = "20010db8000000000000000000000022 02 40 00 01 eth0\n";
        let addr = default_ipv6(&parse_route6(route), &parse_if_inet6(addrs));
        assert_eq!(addr, Some("2001:db8::22".parse().expect("addr")));
    }
}
