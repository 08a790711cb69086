//! Node configuration and the timing profiles (`lan`, `wan`, `local`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use crate::error::Error;

/// The largest rpc in-flight or stream bound: far above any real load, and
/// well inside what a tokio semaphore holds.
pub const MAX_RPC_BOUND: usize = 1 << 24;

/// The largest [`Config::max_frame`]: above 1 GiB a frame length could be
/// mistaken for a stream hello.
pub(crate) const MAX_FRAME_LIMIT: usize = 1 << 30;

/// The largest payload of a call or reply a node can be configured to take:
/// 1 GiB less 1 KiB (see [`Config::set_max_payload`]).
pub const MAX_PAYLOAD: usize = MAX_FRAME_LIMIT - 1024;

/// Timing profile, in the spirit of memberlist's default configs.
///
/// | knob | lan | wan | local |
/// |---|---|---|---|
/// | probe period / rtt | 1 s / 500 ms | 5 s / 3 s | 1 s / 200 ms |
/// | indirect probes | 3 | 3 | 1 |
/// | suspicion multiplier | 4 | 6 | 3 |
/// | retransmit multiplier | 4 | 4 | 2 |
/// | gossip interval / fanout | 200 ms / 3 | 500 ms / 4 | 100 ms / 3 |
/// | push-pull interval (≤ 32 nodes) | 30 s | 60 s | 15 s |
/// | reconnect to failed nodes | 30 s | 60 s | 5 s |
/// | reap failed / left nodes | 24 h | 24 h | 5 min |
///
/// Faster probing detects failures sooner but costs bandwidth and raises false
/// positives on loaded hosts; `wan` trades detection time for tolerance of
/// latency; `local` is for one host or a fast LAN (tests, the demo).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Profile {
    /// Data-centre LAN (default).
    #[default]
    Lan,
    /// Wide area: slower probes, longer suspicion.
    Wan,
    /// Loopback or a single fast LAN segment.
    Local,
}

impl std::str::FromStr for Profile {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "lan" => Ok(Profile::Lan),
            "wan" => Ok(Profile::Wan),
            "local" => Ok(Profile::Local),
            other => Err(Error::InvalidArgument(format!(
                "profile {other:?} is not lan, wan or local"
            ))),
        }
    }
}

/// Concrete protocol timings, derived from a [`Profile`] and overridable
/// (take [`Profile::timings`] and change fields; `#[non_exhaustive]`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Timings {
    /// How often a random member is probed.
    pub probe_period: Duration,
    /// How long to wait for a direct ack before asking others to probe.
    pub probe_rtt: Duration,
    /// Members asked to probe indirectly.
    pub indirect_probes: usize,
    /// Suspicion timeout = multiplier × max(1, log10 N) × probe period.
    pub suspicion_mult: u32,
    /// Retransmissions of an update = multiplier × ceil(log10(N + 1)), at least
    /// ceil(ln N + 4.6) (about 1 % of the nodes miss an update otherwise).
    pub retransmit_mult: u32,
    /// How often updates are gossiped, and to how many members.
    pub gossip_interval: Duration,
    /// Members gossiped to per interval.
    pub gossip_fanout: usize,
    /// Anti-entropy interval for clusters up to 32 nodes (grows above).
    pub push_pull_interval: Duration,
    /// How often a failed (not left) node is tried again, to heal partitions.
    pub reconnect_interval: Duration,
    /// How long a failed or left node stays listed before it is reaped.
    pub reap_after: Duration,
    /// How long deletions are remembered before tombstones are collected.
    pub tombstone_grace: Duration,
    /// First retry of a join that has not become active; doubles up to 30 s.
    pub join_retry: Duration,
}

impl Profile {
    /// The timings of this profile.
    pub fn timings(self) -> Timings {
        let ms = Duration::from_millis;
        let s = Duration::from_secs;
        match self {
            Profile::Lan => Timings {
                probe_period: s(1),
                probe_rtt: ms(500),
                indirect_probes: 3,
                suspicion_mult: 4,
                retransmit_mult: 4,
                gossip_interval: ms(200),
                gossip_fanout: 3,
                push_pull_interval: s(30),
                reconnect_interval: s(30),
                reap_after: s(24 * 3600),
                tombstone_grace: s(24 * 3600),
                join_retry: s(1),
            },
            Profile::Wan => Timings {
                probe_period: s(5),
                probe_rtt: s(3),
                indirect_probes: 3,
                suspicion_mult: 6,
                retransmit_mult: 4,
                gossip_interval: ms(500),
                gossip_fanout: 4,
                push_pull_interval: s(60),
                reconnect_interval: s(60),
                reap_after: s(24 * 3600),
                tombstone_grace: s(24 * 3600),
                join_retry: s(2),
            },
            Profile::Local => Timings {
                probe_period: s(1),
                probe_rtt: ms(200),
                indirect_probes: 1,
                suspicion_mult: 3,
                retransmit_mult: 2,
                gossip_interval: ms(100),
                gossip_fanout: 3,
                push_pull_interval: s(15),
                reconnect_interval: s(5),
                reap_after: s(300),
                tombstone_grace: s(3600),
                join_retry: ms(500),
            },
        }
    }
}

/// Everything a node needs to start. Made with [`Config::new`] and then
/// changed field by field: it is `#[non_exhaustive]`, so that fields can be
/// added without breaking programs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// Unique node name (see [`crate::names::check`]).
    pub name: String,
    /// Where to bind the UDP gossip socket and the TCP listener (same port).
    /// Port 0 picks a free port.
    pub bind: SocketAddr,
    /// Address peers should use, when it differs from `bind` (NAT, 0.0.0.0).
    /// Port 0 advertises the port bound; an unspecified address (0.0.0.0,
    /// ::) is refused.
    pub advertise: Option<SocketAddr>,
    /// Nodes to join through.
    pub seeds: Vec<SocketAddr>,
    /// Nodes to join through, by name (`host:port`, see [`Config::add_seed`]):
    /// resolved when the node starts and again while it has no live peer,
    /// so a name that does not resolve yet (DNS not up at boot, a peer not
    /// scheduled yet) is tried later rather than failing the start. (The
    /// simulator looks nothing up: its nodes take addresses.)
    pub seed_names: Vec<String>,
    /// Timing profile.
    pub profile: Profile,
    /// Overrides of the profile's timings.
    pub timings: Option<Timings>,
    /// How long a failed or left member stays listed before it is reaped,
    /// over the timings in force (the profile's, or `timings`): set with
    /// [`Config::set_reap_after`]. A reap deletes the member's record and
    /// memberships by hand for the whole tribe, so the shortest value in a
    /// tribe decides for every node: keep it alike everywhere, and longer
    /// than any pause a member may come back from (hours, not seconds).
    pub reap_after: Option<Duration>,
    /// User facts; they override collected facts of the same name.
    pub facts: BTreeMap<String, String>,
    /// Whether to collect host facts (architecture, os_dist, ...).
    pub collect_facts: bool,
    /// Cluster label: nodes with different labels never talk.
    pub cluster_label: String,
    /// Piggyback state deltas on gossip (the fast path). Off leaves only
    /// anti-entropy, which tests use to prove it alone converges.
    pub gossip_deltas: bool,
    /// Largest stream frame accepted, in bytes.
    pub max_frame: usize,
    /// Start generation; `None` uses the wall clock, so a restart is newer.
    pub generation: Option<u64>,
    /// Directory for what must survive a restart (known peers, memberships
    /// by hand, the keyring). `None` keeps nothing: a restarted node needs
    /// seeds again. Created at start when missing, with its missing
    /// parents (mode 0700); a relative path is made absolute at start (a
    /// later change of the working directory does not move it); the node
    /// must be able to write in it.
    pub data_dir: Option<std::path::PathBuf>,
    /// Keys for sealing traffic; `None` leaves it in plaintext. With a data
    /// dir, a keyring kept there by an earlier run takes precedence (the
    /// cluster may have rotated keys since) and this key is added to it.
    pub keyring: Option<crate::crypto::Keyring>,
    /// How strictly encryption is applied when a keyring is set.
    pub encryption: Encryption,
    /// Bounds of remote calls (payload size, calls in flight).
    pub rpc: crate::rpc::RpcLimits,
    /// Versions and generations further ahead of this node's notion of
    /// cluster time are refused as forged. Clocks that disagree by less are
    /// reported but still converge; a node whose clock is *behind* is never
    /// deaf, since its notion of cluster time follows the median of its
    /// peers. Between 1 minute and 30 days; 1 hour by default.
    pub max_clock_skew: Duration,
    /// How many records of each kind the replicated state may hold.
    pub limits: StateLimits,
}

/// Caps on the replicated state, per kind of record (tombstones included).
/// A command that would pass one fails with [`Error::LimitReached`]; a record
/// from a peer that would pass one is refused and counted. Keep them equal
/// cluster-wide. Start from [`StateLimits::default`] (`#[non_exhaustive]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct StateLimits {
    /// Node records (members known).
    pub nodes: usize,
    /// Tribes.
    pub tribes: usize,
    /// Memberships by hand.
    pub members: usize,
    /// Policies.
    pub policies: usize,
    /// Plugin entries (all tribes).
    pub plugins: usize,
    /// Tasks (all tribes).
    pub tasks: usize,
}

impl Default for StateLimits {
    fn default() -> Self {
        StateLimits {
            nodes: 20_000,
            tribes: 10_000,
            members: 200_000,
            policies: 1_000,
            plugins: 20_000,
            tasks: 20_000,
        }
    }
}

impl StateLimits {
    /// The cap for records of `kind`.
    pub(crate) fn of(&self, kind: crate::records::Kind) -> usize {
        use crate::records::Kind;
        match kind {
            Kind::Node => self.nodes,
            Kind::Tribe => self.tribes,
            Kind::Member => self.members,
            Kind::Policy => self.policies,
            Kind::Plugin => self.plugins,
            Kind::Task => self.tasks,
            // Installed keys and removed ones until their tombstones are
            // collected: a rotation a day takes a handful; room for an
            // automated one every few minutes, and for an emergency after.
            Kind::Ring => MAX_RING_RECORDS,
        }
    }
}

/// Keyring records the replicated state holds: installed keys, and removed
/// ones until their tombstones are collected.
pub const MAX_RING_RECORDS: usize = 1024;

/// How a node with a keyring treats plaintext: the three steps of turning
/// encryption on in a running cluster (memberlist's verify-incoming and
/// verify-outgoing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Encryption {
    /// Send plaintext, accept sealed and plaintext (step 1: every node gets
    /// the key while nobody depends on it).
    Accept,
    /// Send sealed, accept sealed and plaintext (step 2).
    Send,
    /// Send sealed, refuse plaintext (step 3, and the default).
    #[default]
    Require,
}

impl Encryption {
    /// Lower-case name used in flags and APIs.
    pub fn as_str(self) -> &'static str {
        match self {
            Encryption::Accept => "accept",
            Encryption::Send => "send",
            Encryption::Require => "require",
        }
    }
}

impl std::str::FromStr for Encryption {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "accept" => Ok(Encryption::Accept),
            "send" => Ok(Encryption::Send),
            "require" => Ok(Encryption::Require),
            other => Err(Error::InvalidArgument(format!(
                "encryption mode {other:?} is not accept, send or require"
            ))),
        }
    }
}

/// The longest a failed or left member may stay listed.
const MAX_REAP_AFTER: Duration = Duration::from_secs(365 * 24 * 3600);

/// Refuses timings that would spin (zero intervals) or overflow timers and
/// clock arithmetic (huge durations, multipliers).
fn check_durations(t: &Timings) -> Result<(), Error> {
    const HOUR: u64 = 3600;
    let bounded = [
        ("probe period", t.probe_period, HOUR),
        ("probe rtt", t.probe_rtt, HOUR),
        ("gossip interval", t.gossip_interval, HOUR),
        ("push-pull interval", t.push_pull_interval, 24 * HOUR),
        ("reconnect interval", t.reconnect_interval, 24 * HOUR),
        ("join retry", t.join_retry, HOUR),
        ("reap after", t.reap_after, MAX_REAP_AFTER.as_secs()),
        ("tombstone grace", t.tombstone_grace, 365 * 24 * HOUR),
    ];
    for (what, value, max_secs) in bounded {
        if value < Duration::from_millis(1) || value > Duration::from_secs(max_secs) {
            return Err(Error::Config(format!(
                "{what} must be between 1 ms and {} s",
                max_secs
            )));
        }
    }
    if !(1..=100).contains(&t.suspicion_mult) || !(1..=100).contains(&t.retransmit_mult) {
        return Err(Error::Config(
            "suspicion and retransmit multipliers must be between 1 and 100".into(),
        ));
    }
    if t.indirect_probes > 64 || t.gossip_fanout > 64 {
        return Err(Error::Config(
            "indirect probes and gossip fanout must be at most 64".into(),
        ));
    }
    Ok(())
}

/// Seeds by name a config may hold.
pub const MAX_SEED_NAMES: usize = 64;

/// Why an address with an IPv6 zone id is refused.
const ZONE_IDS: &str = "IPv6 zone ids (%) are not supported; use an address that needs none";

/// Resolves `host:port` (a literal address, `[v6]:port`, or a host name;
/// may block on DNS) for a bind or advertise address. Port 0 is allowed
/// (any free port). A bad text is `InvalidArgument` whose message says why:
/// no port, a port out of range, an IPv6 address without brackets or with a
/// zone id by name, a host that does not resolve.
pub fn resolve_address(what: &str, text: &str) -> Result<SocketAddr, Error> {
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    let bad =
        |why: &str| Error::InvalidArgument(format!("{what} {text:?} is not host:port: {why}"));
    // A zone id by name does not parse (a numeric one is refused at start).
    if text.starts_with('[') && text.contains('%') {
        return Err(bad(ZONE_IDS));
    }
    // The port follows the host; a bracketed IPv6 host holds colons.
    let after_host = text.rsplit_once(']').map_or(text, |(_, rest)| rest);
    let Some((host, port)) = after_host.rsplit_once(':') else {
        return Err(bad("no port"));
    };
    if !text.starts_with('[') && host.contains(':') {
        return Err(bad("an IPv6 address goes in brackets: [ADDRESS]:PORT"));
    }
    if port.parse::<u16>().is_err() {
        return Err(bad("the port is not 0 to 65535"));
    }
    use std::net::ToSocketAddrs as _;
    text.to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or_else(|| bad("the host is not an address or a name that resolves"))
}

/// A place [`crate::Node::join_cluster`] joins through: an address, or a
/// name the runtime looks up.
pub(crate) enum JoinPlace {
    Addr(SocketAddr),
    Name(String),
}

/// Checks a place to join through as a seed is checked: `host:port`, the
/// port 1 to 65535, no zone id, no multicast or broadcast address. A bad
/// one is `InvalidArgument`. Looks nothing up.
pub(crate) fn join_place(text: &str) -> Result<JoinPlace, Error> {
    let bad = |why: String| Error::InvalidArgument(format!("join address {why}"));
    let Ok(addr) = text.parse::<SocketAddr>() else {
        // Its message names a seed: this one is a join's address.
        check_seed_name(text).map_err(|e| match e {
            Error::Config(why) => bad(why.strip_prefix("seed ").unwrap_or(&why).to_string()),
            other => other,
        })?;
        return Ok(JoinPlace::Name(text.to_string()));
    };
    if addr.port() == 0 {
        return Err(bad(format!(
            "{addr}: port 0 reaches no node (the port is 1 to 65535)"
        )));
    }
    if matches!(addr, SocketAddr::V6(v6) if v6.scope_id() != 0) {
        return Err(bad(format!("{addr}: {ZONE_IDS}")));
    }
    if is_shared(&addr) {
        return Err(bad(format!(
            "{addr}: a multicast or broadcast address is no node's own"
        )));
    }
    if let SocketAddr::V6(v6) = addr {
        if let Some(v4) = v6.ip().to_ipv4_mapped() {
            return Err(bad(format!(
                "{addr}: an IPv4-mapped address; give the IPv4 one ({v4}:{})",
                addr.port()
            )));
        }
    }
    Ok(JoinPlace::Addr(addr))
}

/// Refuses a bind and advertise address pair that cannot work: an IPv6
/// zone id (the socket calls drop it), a multicast or broadcast address, or
/// an advertise address of another family than a socket bound to one
/// address receives (`[::]` receives both).
fn check_addresses(bind: SocketAddr, advertise: Option<SocketAddr>) -> Result<(), Error> {
    let scoped = |a: &SocketAddr| matches!(a, SocketAddr::V6(v6) if v6.scope_id() != 0);
    for (what, addr) in [("bind", Some(bind)), ("advertise", advertise)] {
        let Some(addr) = addr else { continue };
        if scoped(&addr) {
            return Err(Error::Config(format!("{what} {addr}: {ZONE_IDS}")));
        }
        if is_shared(&addr) {
            return Err(Error::Config(format!(
                "{what} {addr}: a multicast or broadcast address is no node's own"
            )));
        }
        if matches!(addr, SocketAddr::V6(v6) if v6.ip().to_ipv4_mapped().is_some()) {
            return Err(Error::Config(format!(
                "{what} {addr}: an IPv4-mapped address reaches no IPv4 peer; use the IPv4 \
                 address ({})",
                addr.ip().to_canonical()
            )));
        }
    }
    if let Some(advertise) = advertise {
        let both = bind.is_ipv6() && bind.ip().is_unspecified();
        if !both && bind.is_ipv4() != advertise.is_ipv4() {
            return Err(Error::Config(format!(
                "advertise {advertise} and bind {bind} are of two address families: a socket bound \
                 there receives nothing at the advertised address (bind [::] receives both)"
            )));
        }
    }
    Ok(())
}

/// Whether `addr` is a multicast or broadcast address, no one node's (an
/// IPv4-mapped IPv6 address, `[::ffff:a.b.c.d]`, counts as the IPv4 one).
fn is_shared(addr: &SocketAddr) -> bool {
    let ip = addr.ip().to_canonical();
    ip.is_multicast() || matches!(ip, std::net::IpAddr::V4(v4) if v4.is_broadcast())
}

/// Checks that a node bound to `bind` can reach its seeds: none is a
/// multicast or broadcast address (no one node's), and one at least is of
/// the bind's address family (a socket bound to `[::]` reaches both; a
/// list shared by hosts of both families may hold some of the other).
fn check_seeds(bind: SocketAddr, seeds: &[SocketAddr]) -> Result<(), Error> {
    if let Some(seed) = seeds
        .iter()
        .find(|s| matches!(s, SocketAddr::V6(v6) if v6.scope_id() != 0))
    {
        return Err(Error::Config(format!("seed {seed}: {ZONE_IDS}")));
    }
    if let Some(seed) = seeds.iter().find(|s| is_shared(s)) {
        return Err(Error::Config(format!(
            "seed {seed}: a multicast or broadcast address is no node's own"
        )));
    }
    let both = bind.is_ipv6() && bind.ip().is_unspecified();
    // Of the bind's family, and no IPv4-mapped one unless bound to `[::]`.
    let reachable = |s: &&SocketAddr| {
        s.is_ipv4() == bind.is_ipv4() && s.ip().to_canonical().is_ipv4() == bind.is_ipv4()
    };
    if !both && !seeds.is_empty() && !seeds.iter().any(|s| reachable(&s)) {
        return Err(Error::Config(format!(
            "seeds {} and bind {bind} are of two address families: a socket bound there \
             cannot send to them (bind [::] reaches both)",
            seeds
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    Ok(())
}

/// Checks a seed name's form: `host:port`, the host 1 to 253 bytes of
/// letters, digits, `-`, `_` and `.`, the port 1 to 65535.
fn check_seed_name(seed: &str) -> Result<(), Error> {
    let bad = |why: &str| {
        Err(Error::Config(format!(
            "seed {seed:?} is not host:port: {why}"
        )))
    };
    // The port follows the host; a bracketed IPv6 host holds colons.
    let after_host = seed.rsplit_once(']').map_or(seed, |(_, rest)| rest);
    let Some((_, port)) = after_host.rsplit_once(':') else {
        return bad("no port");
    };
    let host = &seed[..seed.len() - port.len() - 1];
    if host.starts_with('[') && host.contains('%') {
        return bad(ZONE_IDS);
    }
    if !host.starts_with('[') && host.contains(':') {
        return bad("an IPv6 address goes in brackets: [ADDRESS]:PORT");
    }
    if !matches!(port.parse::<u16>(), Ok(p) if p > 0) {
        return bad("the port is not 1 to 65535");
    }
    let host_ok = (1..=253).contains(&host.len())
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !host_ok {
        return bad("the host is not a DNS name or an address");
    }
    Ok(())
}

impl Config {
    /// A config with defaults: bind 127.0.0.1:0, `lan` profile, facts collected.
    pub fn new(name: impl Into<String>) -> Self {
        Config {
            name: name.into(),
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            advertise: None,
            seeds: Vec::new(),
            seed_names: Vec::new(),
            profile: Profile::Lan,
            timings: None,
            reap_after: None,
            facts: BTreeMap::new(),
            collect_facts: true,
            cluster_label: String::new(),
            gossip_deltas: true,
            max_frame: 16 * 1024 * 1024,
            generation: None,
            data_dir: None,
            keyring: None,
            encryption: Encryption::Require,
            rpc: crate::rpc::RpcLimits::default(),
            max_clock_skew: crate::engine::MAX_CLOCK_DRIFT,
            limits: StateLimits::default(),
        }
    }

    /// The timings in force: the overrides, or the profile's, with
    /// `reap_after` over them.
    pub fn effective_timings(&self) -> Timings {
        let mut timings = self
            .timings
            .clone()
            .unwrap_or_else(|| self.profile.timings());
        if let Some(after) = self.reap_after {
            timings.reap_after = after;
        }
        timings
    }

    /// Sets [`Config::reap_after`]: 1 ms to 365 days, `InvalidArgument`
    /// otherwise (the agents' `--reap-after`, C's
    /// `tribe_config_set_reap_after`).
    pub fn set_reap_after(&mut self, after: Duration) -> Result<(), Error> {
        if after < Duration::from_millis(1) || after > MAX_REAP_AFTER {
            return Err(Error::InvalidArgument(format!(
                "reap after {after:?}: give 1 ms to 365 days"
            )));
        }
        self.reap_after = Some(after);
        Ok(())
    }

    /// Names of the limits [`Config::set_limit`] takes, as the C ABI, the
    /// bindings and the agent's `[limits]` table spell them.
    pub const LIMIT_NAMES: [&'static str; 10] = [
        "nodes",
        "tribes",
        "members",
        "policies",
        "plugins",
        "tasks",
        "max_streams",
        "max_inflight_per_conn",
        "max_inflight",
        "max_serving",
    ];

    /// Sets a limit by name (see [`Config::LIMIT_NAMES`]): a cap of
    /// [`StateLimits`], or `max_streams`, `max_inflight_per_conn`,
    /// `max_inflight` or `max_serving` of [`RpcLimits`](crate::rpc::RpcLimits).
    /// Zero, a call bound over 16,777,216 and unknown names are
    /// [`Error::InvalidArgument`].
    pub fn set_limit(&mut self, name: &str, value: usize) -> Result<(), Error> {
        if value == 0 {
            return Err(Error::InvalidArgument(format!(
                "limit {name:?} must be at least 1"
            )));
        }
        let l = &mut self.limits;
        let (slot, most) = match name {
            "nodes" => (&mut l.nodes, usize::MAX),
            "tribes" => (&mut l.tribes, usize::MAX),
            "members" => (&mut l.members, usize::MAX),
            "policies" => (&mut l.policies, usize::MAX),
            "plugins" => (&mut l.plugins, usize::MAX),
            "tasks" => (&mut l.tasks, usize::MAX),
            "max_streams" => (&mut self.rpc.max_streams, MAX_RPC_BOUND),
            "max_inflight_per_conn" => (&mut self.rpc.max_inflight_per_conn, MAX_RPC_BOUND),
            "max_inflight" => (&mut self.rpc.max_inflight, MAX_RPC_BOUND),
            "max_serving" => (&mut self.rpc.max_serving, MAX_RPC_BOUND),
            other => {
                return Err(Error::InvalidArgument(format!(
                    "unknown limit {other:?} (known: {})",
                    Self::LIMIT_NAMES.join(", ")
                )))
            }
        };
        // Refused here, naming the limit, rather than at the start.
        if value > most {
            return Err(Error::InvalidArgument(format!(
                "limit {name:?} must be at most {most}"
            )));
        }
        *slot = value;
        Ok(())
    }

    /// Sets the largest payload of a call or reply ([`RpcLimits::max_payload`](crate::rpc::RpcLimits::max_payload))
    /// and raises [`Config::max_frame`] to carry it (the payload and 64 KiB
    /// of headroom, at most 1 GiB), so that any payload up to
    /// [`MAX_PAYLOAD`] starts. Setting the field alone leaves the frame at
    /// its 16 MiB default, which [`Node::start`](crate::Node::start) checks.
    pub fn set_max_payload(&mut self, bytes: usize) {
        self.rpc.max_payload = bytes;
        self.max_frame = self
            .max_frame
            .max(bytes.saturating_add(64 * 1024).min(MAX_FRAME_LIMIT));
    }

    /// Adds a seed: an address (`10.0.0.5:7946`, `[fd00::5]:7946`) to
    /// [`Config::seeds`], or a name (`tribe-0.tribe.svc:7946`) to
    /// [`Config::seed_names`]. Looks nothing up: a name is checked for its
    /// form only.
    pub fn add_seed(&mut self, seed: &str) -> Result<(), Error> {
        if let Ok(addr) = seed.parse::<SocketAddr>() {
            if !self.seeds.contains(&addr) {
                self.seeds.push(addr);
            }
            return Ok(());
        }
        check_seed_name(seed)?;
        if !self.seed_names.iter().any(|n| n == seed) {
            self.seed_names.push(seed.to_string());
        }
        Ok(())
    }

    /// Whether the node will hold a key: one given in [`Config::keyring`],
    /// or a keyring kept in the data dir by an earlier run. The bindings
    /// refuse an encryption mode asked for without one, rather than run in
    /// plaintext. Errors: the kept keyring file cannot be read.
    pub fn will_hold_keys(&self) -> Result<bool, Error> {
        if self.keyring.is_some() {
            return Ok(true);
        }
        match &self.data_dir {
            Some(dir) => Ok(crate::datadir::load_keyring(dir)?.is_some()),
            None => Ok(false),
        }
    }

    /// What a start would refuse before it opens any socket: this
    /// config's values ([`Config::validate`]), then an existing data dir
    /// as the start would take it ([`crate::datadir::check`]: nothing is
    /// created or changed). The bindings' configuration checks
    /// (`tribe_config_check`, Go's `Config.Check`, pytribe's
    /// `Node.check_config`) are this. Reads the file system; no network.
    pub fn check(&self) -> Result<(), Error> {
        self.validate()?;
        match &self.data_dir {
            Some(dir) => crate::datadir::check(dir, &self.name),
            None => Ok(()),
        }
    }

    /// Checks this config's values: names, facts, label, addresses and
    /// seeds, timings, limits, and that a data dir given is not empty.
    pub fn validate(&self) -> Result<(), Error> {
        crate::names::check("node name", &self.name)?;
        if self
            .data_dir
            .as_ref()
            .is_some_and(|d| d.as_os_str().is_empty())
        {
            // Not the current directory, which a node would take over.
            return Err(Error::InvalidArgument("the data dir is empty".into()));
        }
        if self.advertise.is_none() && self.bind.ip().is_unspecified() {
            return Err(Error::Config(
                "binding to an unspecified address needs an advertise address".into(),
            ));
        }
        if let Some(a) = self.advertise.filter(|a| a.ip().is_unspecified()) {
            return Err(Error::Config(format!(
                "advertise {a}: peers need an address they can reach, not an unspecified one"
            )));
        }
        check_addresses(self.bind, self.advertise)?;
        if let Some(seed) = self.seeds.iter().find(|s| s.port() == 0) {
            return Err(Error::Config(format!(
                "seed {seed}: port 0 reaches no node (the port is 1 to 65535)"
            )));
        }
        check_seeds(self.bind, &self.seeds)?;
        if self.seed_names.len() > MAX_SEED_NAMES {
            return Err(Error::Config(format!(
                "at most {MAX_SEED_NAMES} seeds by name"
            )));
        }
        for name in &self.seed_names {
            check_seed_name(name)?;
        }
        if self.cluster_label.len() > crate::wire::MAX_LABEL_LEN {
            return Err(Error::Config(
                "cluster label is longer than 64 bytes".into(),
            ));
        }
        // Sent in the clear in every datagram: a key given here by mistake
        // would go to the whole network.
        if crate::keyfile::withhold_keys(&self.cluster_label) != self.cluster_label.as_str() {
            return Err(Error::Config(
                "the cluster label holds an encryption key (a key of `tribe keygen`), refused: \
                 a label is sent in the clear in every datagram"
                    .into(),
            ));
        }
        // Logged and shown as is: no control characters.
        if self.cluster_label.chars().any(char::is_control) {
            return Err(Error::Config(
                "cluster label holds a control character".into(),
            ));
        }
        for (k, v) in &self.facts {
            crate::facts::validate_fact(k, v).map_err(|e| Error::Config(e.to_string()))?;
        }
        // Peers refuse a record with more facts: the node would stay known
        // to them with its old record, serving nothing new.
        let collected = if self.collect_facts {
            crate::facts::COLLECTED_FACTS
                .iter()
                .filter(|k| !self.facts.contains_key(**k))
                .count()
        } else {
            0
        };
        if self.facts.len() + collected > crate::records::limits::MAX_FACTS {
            return Err(Error::Config(format!(
                "a node has at most {} facts, the {collected} it collects included",
                crate::records::limits::MAX_FACTS
            )));
        }
        let t = self.effective_timings();
        if t.probe_rtt.is_zero() || t.probe_rtt >= t.probe_period {
            return Err(Error::Config(
                "probe rtt must be non-zero and shorter than the probe period".into(),
            ));
        }
        if t.indirect_probes == 0 || t.gossip_fanout == 0 || t.gossip_interval.is_zero() {
            return Err(Error::Config(
                "indirect probes, gossip fanout and gossip interval must be non-zero".into(),
            ));
        }
        check_durations(&t)?;
        if !(Duration::from_secs(60)..=Duration::from_secs(30 * 86_400))
            .contains(&self.max_clock_skew)
        {
            return Err(Error::Config(
                "max clock skew must be between 1 minute and 30 days".into(),
            ));
        }
        let l = &self.limits;
        if [l.nodes, l.tribes, l.members, l.policies, l.plugins, l.tasks].contains(&0) {
            return Err(Error::Config("state limits must be non-zero".into()));
        }
        if self.max_frame < 64 * 1024 || self.max_frame > MAX_FRAME_LIMIT {
            return Err(Error::Config(
                "max frame must be between 64 KiB and 1 GiB".into(),
            ));
        }
        let r = &self.rpc;
        if r.max_payload == 0 || r.max_payload > self.max_frame.saturating_sub(1024) {
            return Err(Error::Config(format!(
                "rpc max payload {} must be non-zero and at most {} (1 KiB below the max frame \
                 of {} bytes; the largest payload a node takes is {MAX_PAYLOAD})",
                r.max_payload,
                self.max_frame.saturating_sub(1024),
                self.max_frame
            )));
        }
        let bounds = [
            r.max_inflight_per_conn,
            r.max_inflight,
            r.max_serving,
            r.max_streams,
        ];
        if bounds.iter().any(|&b| b == 0 || b > MAX_RPC_BOUND) {
            return Err(Error::Config(format!(
                "rpc in-flight and stream bounds must be 1 to {MAX_RPC_BOUND}"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `reap_after` holds over the profile whichever is set first, and
    /// over timings set whole; out of range it is refused as given.
    #[test]
    fn reap_after_holds_over_the_profile_and_the_timings() {
        let mut cfg = Config::new("r");
        cfg.set_reap_after(Duration::from_secs(90)).unwrap();
        cfg.profile = Profile::Wan;
        assert_eq!(cfg.effective_timings().reap_after, Duration::from_secs(90));
        assert_eq!(
            cfg.effective_timings().probe_period,
            Profile::Wan.timings().probe_period
        );
        cfg.timings = Some(Profile::Local.timings());
        assert_eq!(cfg.effective_timings().reap_after, Duration::from_secs(90));
        for bad in [Duration::ZERO, MAX_REAP_AFTER + Duration::from_millis(1)] {
            assert!(matches!(
                cfg.set_reap_after(bad),
                Err(Error::InvalidArgument(_))
            ));
        }
        assert_eq!(cfg.reap_after, Some(Duration::from_secs(90)));
    }

    fn with(f: impl FnOnce(&mut Timings)) -> Result<(), Error> {
        let mut cfg = Config::new("n");
        let mut t = Profile::Lan.timings();
        f(&mut t);
        cfg.timings = Some(t);
        cfg.validate()
    }

    /// An empty data dir would be the current directory, which the node
    /// would take over (its lock and state written there).
    #[test]
    fn an_empty_data_dir_is_refused() {
        let mut cfg = Config::new("n");
        cfg.data_dir = Some(std::path::PathBuf::new());
        assert!(matches!(cfg.validate(), Err(Error::InvalidArgument(_))));
        assert!(matches!(cfg.check(), Err(Error::InvalidArgument(_))));
    }

    #[test]
    fn a_label_with_a_control_character_is_refused() {
        let mut cfg = Config::new("n");
        cfg.cluster_label = "a\0".into();
        assert!(cfg.validate().is_err());
        cfg.cluster_label = "prod-eu".into();
        assert!(cfg.validate().is_ok());
    }

    #[test]
    fn a_key_given_as_the_label_is_refused_without_quoting_it() {
        let key = crate::crypto::SecretKey::generate().to_base64();
        let mut cfg = Config::new("n");
        for label in [key.clone(), format!("prod-{key}")] {
            cfg.cluster_label = label;
            let err = cfg.validate().unwrap_err().to_string();
            assert!(err.contains("encryption key"), "{err}");
            assert!(!err.contains(&key[..20]), "{err}");
        }
    }

    /// Addresses that parse but can never work are refused with the reason,
    /// not left to fail in silence once running.
    #[test]
    fn addresses_that_cannot_work_are_refused() {
        let check = |bind: &str, advertise: Option<&str>, seed: Option<&str>| {
            let mut cfg = Config::new("n");
            cfg.bind = bind.parse().unwrap();
            cfg.advertise = advertise.map(|a| a.parse().unwrap());
            if let Some(seed) = seed {
                cfg.add_seed(seed).unwrap();
            }
            cfg.validate().map_err(|e| e.to_string())
        };
        assert!(check("[::]:0", Some("[::1]:7946"), Some("127.0.0.1:7946")).is_ok());
        let mut mixed = Config::new("n");
        mixed.add_seed("[::1]:7946").unwrap();
        mixed.add_seed("127.0.0.1:7946").unwrap();
        assert!(mixed.validate().is_ok());
        assert!(check("[::]:0", Some("10.0.0.7:7946"), None).is_ok());
        for (bind, advertise, seed, why) in [
            ("127.0.0.1:0", Some("[::1]:0"), None, "two address families"),
            ("[::1]:0", Some("127.0.0.1:0"), None, "two address families"),
            (
                "0.0.0.0:0",
                Some("[fd00::1]:0"),
                None,
                "two address families",
            ),
            ("[fe80::1%3]:0", None, None, "zone ids"),
            ("[::ffff:127.0.0.1]:0", None, None, "IPv4-mapped"),
            (
                "[::]:0",
                Some("[::ffff:10.0.0.7]:7946"),
                None,
                "IPv4-mapped",
            ),
            ("127.0.0.1:0", Some("255.255.255.255:0"), None, "broadcast"),
            ("127.0.0.1:0", Some("224.0.0.1:0"), None, "multicast"),
            ("127.0.0.1:0", None, Some("[::1]:0"), "port 0"),
            (
                "127.0.0.1:0",
                None,
                Some("[::1]:7946"),
                "two address families",
            ),
            (
                "[::1]:0",
                None,
                Some("127.0.0.1:7946"),
                "two address families",
            ),
            ("127.0.0.1:0", None, Some("224.0.0.1:7946"), "multicast"),
            (
                "127.0.0.1:0",
                None,
                Some("255.255.255.255:7946"),
                "broadcast",
            ),
            ("127.0.0.1:0", None, Some("[ff02::1]:7946"), "multicast"),
            ("[::1]:0", None, Some("[fe80::1%1]:7946"), "zone ids"),
            (
                "[::1]:0",
                None,
                Some("[::ffff:127.0.0.1]:7946"),
                "two address families",
            ),
            (
                "127.0.0.1:0",
                None,
                Some("[::ffff:127.0.0.1]:7946"),
                "two address families",
            ),
            (
                "127.0.0.1:0",
                None,
                Some("[::ffff:224.0.0.1]:7946"),
                "multicast",
            ),
        ] {
            let e = check(bind, advertise, seed).unwrap_err();
            assert!(e.contains(why), "{bind} {advertise:?} {seed:?}: {e}");
        }
        let e = resolve_address("bind", "[fe80::1%eth0]:0").unwrap_err();
        assert!(e.to_string().contains("zone ids"), "{e}");
        for (seed, why) in [
            ("fd00::1:7946", "in brackets"),
            ("[fe80::1%eth0]:7946", "zone ids"),
            ("[fd00::1]", "no port"),
            ("host:0", "1 to 65535"),
        ] {
            let e = Config::new("n").add_seed(seed).unwrap_err();
            assert!(e.to_string().contains(why), "{seed}: {e}");
        }
    }

    #[test]
    fn intervals_that_would_spin_or_overflow_are_refused() {
        assert!(with(|_| {}).is_ok());
        // Zero reconnect or reap intervals used to pass and spin the timers.
        assert!(with(|t| t.reconnect_interval = Duration::ZERO).is_err());
        assert!(with(|t| t.tombstone_grace = Duration::ZERO).is_err());
        assert!(with(|t| t.reap_after = Duration::ZERO).is_err());
        // Huge ones overflowed the suspicion arithmetic (a panic at start).
        assert!(with(|t| t.probe_period = Duration::MAX).is_err());
        assert!(with(|t| t.push_pull_interval = Duration::from_secs(u64::MAX)).is_err());
        assert!(with(|t| t.suspicion_mult = u32::MAX).is_err());
        assert!(with(|t| t.gossip_fanout = usize::MAX).is_err());
        let mut cfg = Config::new("n");
        cfg.max_clock_skew = Duration::ZERO;
        assert!(cfg.validate().is_err());
        cfg.max_clock_skew = Duration::from_secs(600);
        cfg.limits.tasks = 0;
        assert!(cfg.validate().is_err());
        let mut cfg = Config::new("n");
        cfg.rpc.max_streams = 0;
        assert!(cfg.validate().is_err());
        // Huge rpc bounds wrapped the payload check or made a semaphore
        // panic at start.
        for set in [
            |r: &mut crate::rpc::RpcLimits| r.max_payload = usize::MAX,
            |r: &mut crate::rpc::RpcLimits| r.max_inflight = usize::MAX,
            |r: &mut crate::rpc::RpcLimits| r.max_inflight_per_conn = usize::MAX,
            |r: &mut crate::rpc::RpcLimits| r.max_serving = MAX_RPC_BOUND + 1,
            |r: &mut crate::rpc::RpcLimits| r.max_streams = usize::MAX,
        ] {
            let mut cfg = Config::new("n");
            set(&mut cfg.rpc);
            assert!(cfg.validate().is_err());
        }
        let mut cfg = Config::new("n");
        cfg.rpc.max_serving = MAX_RPC_BOUND;
        assert!(cfg.validate().is_ok());
    }

    #[test]
    fn any_payload_up_to_the_largest_fits_its_frame() {
        for bytes in [1, 4 << 20, 17 << 20, MAX_PAYLOAD] {
            let mut cfg = Config::new("n");
            cfg.set_max_payload(bytes);
            assert!(cfg.validate().is_ok(), "{bytes}");
        }
        // The frame only grows: a smaller payload set after keeps it.
        let mut cfg = Config::new("n");
        cfg.set_max_payload(64 << 20);
        cfg.set_max_payload(1 << 20);
        assert_eq!(
            (cfg.rpc.max_payload, cfg.max_frame),
            (1 << 20, (64 << 20) + 65_536)
        );
        cfg.set_max_payload(MAX_PAYLOAD + 1);
        let Err(Error::Config(message)) = cfg.validate() else {
            panic!("one byte over the largest payload passed")
        };
        assert!(message.contains(&MAX_PAYLOAD.to_string()), "{message}");
        // Set by hand, the payload is checked against the frame as it is.
        let mut cfg = Config::new("n");
        cfg.rpc.max_payload = 17 << 20;
        assert!(cfg.validate().is_err());
    }

    #[test]
    fn limits_are_set_by_name() {
        let mut cfg = Config::new("n");
        for (i, name) in Config::LIMIT_NAMES.iter().enumerate() {
            cfg.set_limit(name, 10 + i).unwrap();
        }
        let l = cfg.limits;
        assert_eq!(
            [
                l.nodes,
                l.tribes,
                l.members,
                l.policies,
                l.plugins,
                l.tasks,
                cfg.rpc.max_streams,
                cfg.rpc.max_inflight_per_conn,
                cfg.rpc.max_inflight,
                cfg.rpc.max_serving,
            ],
            [10, 11, 12, 13, 14, 15, 16, 17, 18, 19]
        );
        assert!(cfg.validate().is_ok());
        assert!(matches!(
            cfg.set_limit("tribes", 0),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            cfg.set_limit("moons", 3),
            Err(Error::InvalidArgument(_))
        ));
        assert_eq!(cfg.limits.tribes, 11);
    }

    #[test]
    fn the_engine_starts_with_the_largest_valid_timings() {
        let mut cfg = Config::new("n");
        let mut t = Profile::Wan.timings();
        t.probe_period = Duration::from_secs(3600);
        t.probe_rtt = Duration::from_secs(3599);
        t.suspicion_mult = 100;
        t.retransmit_mult = 100;
        t.push_pull_interval = Duration::from_secs(86_400);
        t.reap_after = Duration::from_secs(365 * 86_400);
        t.tombstone_grace = Duration::from_secs(365 * 86_400);
        cfg.timings = Some(t);
        cfg.validate().unwrap();
        let addr = "127.0.0.1:1".parse().unwrap();
        let mut engine =
            crate::engine::Engine::new(&cfg, addr, 1, Default::default(), 1, 1).unwrap();
        engine.start(1);
    }
}
