//! Host facts: small key/value strings a node publishes about its host.
//!
//! [`collect`] gathers the facts named in [`COLLECTED_FACTS`] from the running
//! host. On Linux they come from plain `/proc` and `/etc` files (no extra
//! crates, no `unsafe`, no sockets); elsewhere only what `std` knows
//! (`architecture`, `processor_count`). A fact that cannot be determined is
//! omitted, never guessed.
//!
//! User-supplied facts (for example `--fact rack=r12` on a command line) are
//! checked with [`validate_fact`] / [`parse_fact_arg`] so that every key can be
//! used in a CEL policy as `facts.key`.
//!
//! Every reader is bounded (see [`MAX_FILE_BYTES`]) and every parser is total:
//! unreadable, oversized, truncated or malformed input yields omitted facts,
//! never a panic.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::Read;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;

/// Fact map: key -> value. BTreeMap for deterministic order.
pub type Facts = BTreeMap<String, String>;

/// Names of the facts this module collects.
///
/// * `architecture`: CPU architecture as Rust names it (`x86_64`, `aarch64`, ...).
/// * `os_dist`: os-release `ID` (`ubuntu`, `debian`, ...).
/// * `os_dist_release`: os-release `VERSION_CODENAME` (`jammy`, `bookworm`, ...).
/// * `os_dist_version`: os-release `VERSION_ID` (`22.04`, `12`, ...).
/// * `hostname`: kernel host name.
/// * `kernel`: kernel release (`6.1.0-18-amd64`).
/// * `processor_type`: `/proc/cpuinfo` `model name`, trimmed.
/// * `processor_count`: logical processors, decimal.
/// * `memtotal`: `/proc/meminfo` `MemTotal` in **kB** (KiB), decimal.
/// * `default_ipv4`: source address of the default IPv4 route.
/// * `default_ipv6`: global address on the default IPv6 route's interface.
pub const COLLECTED_FACTS: &[&str] = &[
    "architecture",
    "os_dist",
    "os_dist_release",
    "os_dist_version",
    "hostname",
    "kernel",
    "processor_type",
    "processor_count",
    "memtotal",
    "default_ipv4",
    "default_ipv6",
];

/// Longest allowed fact key, in bytes.
pub const MAX_FACT_KEY_LEN: usize = 64;

/// Longest allowed fact value, in bytes (UTF-8).
pub const MAX_FACT_VALUE_LEN: usize = 1024;

/// Most bytes read from any one host file; a larger file counts as unreadable,
/// so its facts are omitted rather than derived from a truncated prefix.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// `/proc/cpuinfo` grows with the CPU count (~1.5 KiB per CPU on x86), so it
/// gets a larger bound to keep `processor_count` right on big machines.
const MAX_CPUINFO_BYTES: u64 = 8 * MAX_FILE_BYTES;

/// CEL keywords, which cannot be field selectors (`facts.in` does not parse).
/// CEL's other reserved words (`package`, `namespace`, ...) are allowed as
/// selectors by the CEL spec, so `facts.namespace` is fine and stays allowed.
const CEL_KEYWORDS: &[&str] = &["true", "false", "null", "in"];

/// How much of an offending key or argument an error message quotes.
const MAX_QUOTED_LEN: usize = 80;

/// Why a user-supplied fact was rejected. Messages name the key and the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FactError {
    /// The key is the empty string.
    #[error("fact key is empty: keys must be 1..={max} bytes", max = MAX_FACT_KEY_LEN)]
    EmptyKey,
    /// The key is longer than [`MAX_FACT_KEY_LEN`] bytes.
    #[error("fact key {key:?} is {len} bytes long: keys must be at most {max} bytes", max = MAX_FACT_KEY_LEN)]
    KeyTooLong {
        /// The key (shortened if very long).
        key: String,
        /// Its length in bytes.
        len: usize,
    },
    /// The key has a character outside `[A-Za-z_][A-Za-z0-9_]*`.
    #[error("fact key {key:?} has invalid character {ch:?} at byte {pos}: keys must match [A-Za-z_][A-Za-z0-9_]*")]
    InvalidKeyChar {
        /// The key (shortened if very long).
        key: String,
        /// The first offending character.
        ch: char,
        /// Its byte offset in the key.
        pos: usize,
    },
    /// The key is a CEL keyword (`true`, `false`, `null`, `in`), so
    /// `facts.key` would not parse.
    #[error("fact key {key:?} is a CEL keyword (true, false, null, in) and cannot be used as `facts.{key}`")]
    ReservedKey {
        /// The key.
        key: String,
    },
    /// The value is longer than [`MAX_FACT_VALUE_LEN`] bytes.
    #[error("value of fact {key:?} is {len} bytes long: values must be at most {max} bytes", max = MAX_FACT_VALUE_LEN)]
    ValueTooLong {
        /// The key.
        key: String,
        /// The value's length in bytes.
        len: usize,
    },
    /// The value contains a control character (newline, tab, DEL, ...).
    #[error("value of fact {key:?} has control character U+{code:04X} at byte {pos}: values must not contain control characters", code = u32::from(*ch))]
    ControlCharInValue {
        /// The key.
        key: String,
        /// The first offending character.
        ch: char,
        /// Its byte offset in the value.
        pos: usize,
    },
    /// A command-line fact argument has no `=`.
    #[error("fact argument {arg:?} is not of the form key=value")]
    MissingSeparator {
        /// The argument (shortened if very long).
        arg: String,
    },
}

/// Collects facts of this host; absent ones are omitted.
///
/// On Linux this is [`collect_from`]`("/")` plus `architecture` (from
/// `std::env::consts::ARCH`); elsewhere only the std-derived facts.
/// `processor_count` comes from `/proc/cpuinfo` (the host's logical CPUs) and
/// falls back to `std::thread::available_parallelism` when that is unknown.
pub fn collect() -> Facts {
    let mut facts = if cfg!(target_os = "linux") {
        collect_from(Path::new("/"))
    } else {
        Facts::new()
    };
    add_std_facts(&mut facts);
    facts
}

/// Same as [`collect`], but reading files below `root` instead of `/` (so
/// tests can feed fixture trees); `collect()` == `collect_from(Path::new("/"))`
/// plus std-derived facts. Only file-derived facts are returned here.
pub fn collect_from(root: &std::path::Path) -> Facts {
    let mut facts = Facts::new();
    add_os_release(root, &mut facts);
    add_kernel_facts(root, &mut facts);
    add_cpu_facts(root, &mut facts);
    add_mem_facts(root, &mut facts);
    add_default_ipv4(root, &mut facts);
    add_default_ipv6(root, &mut facts);
    facts
}

/// Validates a user-supplied fact; never panics.
///
/// Keys: 1..=[`MAX_FACT_KEY_LEN`] bytes matching `[A-Za-z_][A-Za-z0-9_]*` and
/// not a CEL keyword (`true`, `false`, `null`, `in`), so `facts.key` is a
/// valid CEL field selection.
/// Values: at most [`MAX_FACT_VALUE_LEN`] bytes, no control characters; the
/// empty value is allowed.
pub fn validate_fact(key: &str, value: &str) -> Result<(), FactError> {
    validate_key(key)?;
    validate_value(key, value)
}

/// Parses `"key=value"` (as given on a command line) and validates it.
///
/// Splits at the first `=`, so the value may itself contain `=`. Nothing is
/// trimmed: stray spaces are reported, not silently dropped.
pub fn parse_fact_arg(arg: &str) -> Result<(String, String), FactError> {
    let (key, value) = arg
        .split_once('=')
        .ok_or_else(|| FactError::MissingSeparator { arg: shorten(arg) })?;
    validate_fact(key, value)?;
    Ok((key.to_owned(), value.to_owned()))
}

fn validate_key(key: &str) -> Result<(), FactError> {
    if key.is_empty() {
        return Err(FactError::EmptyKey);
    }
    if key.len() > MAX_FACT_KEY_LEN {
        return Err(FactError::KeyTooLong {
            key: shorten(key),
            len: key.len(),
        });
    }
    for (pos, ch) in key.char_indices() {
        let ok = ch == '_' || ch.is_ascii_alphabetic() || (pos > 0 && ch.is_ascii_digit());
        if !ok {
            return Err(FactError::InvalidKeyChar {
                key: key.to_owned(),
                ch,
                pos,
            });
        }
    }
    if CEL_KEYWORDS.contains(&key) {
        return Err(FactError::ReservedKey {
            key: key.to_owned(),
        });
    }
    Ok(())
}

fn validate_value(key: &str, value: &str) -> Result<(), FactError> {
    if value.len() > MAX_FACT_VALUE_LEN {
        return Err(FactError::ValueTooLong {
            key: key.to_owned(),
            len: value.len(),
        });
    }
    match value.char_indices().find(|(_, ch)| ch.is_control()) {
        Some((pos, ch)) => Err(FactError::ControlCharInValue {
            key: key.to_owned(),
            ch,
            pos,
        }),
        None => Ok(()),
    }
}

/// Keeps error messages readable when the input is huge.
fn shorten(s: &str) -> String {
    if s.len() <= MAX_QUOTED_LEN {
        return s.to_owned();
    }
    let mut end = MAX_QUOTED_LEN;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// Inserts a collected fact unless it is empty or would fail validation, so
/// collected facts obey the same limits as user-supplied ones.
fn insert(facts: &mut Facts, key: &str, value: &str) {
    debug_assert!(COLLECTED_FACTS.contains(&key), "uncatalogued fact {key}");
    let value = value.trim();
    if !value.is_empty() && validate_fact(key, value).is_ok() {
        facts.insert(key.to_owned(), value.to_owned());
    }
}

fn add_std_facts(facts: &mut Facts) {
    insert(facts, "architecture", std::env::consts::ARCH);
    if !facts.contains_key("processor_count") {
        if let Ok(n) = std::thread::available_parallelism() {
            insert(facts, "processor_count", &n.to_string());
        }
    }
}

/// Reads `rel` below `root`, at most `limit` bytes; `None` if missing,
/// unreadable or larger than `limit`. Invalid UTF-8 is replaced, not fatal.
fn read_bounded(root: &Path, rel: &str, limit: u64) -> Option<String> {
    let file = File::open(root.join(rel)).ok()?;
    let mut buf = Vec::new();
    // One byte past the limit tells "exactly limit" from "too big";
    // /proc files report size 0, so metadata cannot be used for this.
    file.take(limit.saturating_add(1))
        .read_to_end(&mut buf)
        .ok()?;
    if buf.len() as u64 > limit {
        return None;
    }
    Some(String::from_utf8_lossy(&buf).into_owned())
}

fn read_file(root: &Path, rel: &str) -> Option<String> {
    read_bounded(root, rel, MAX_FILE_BYTES)
}

// ---------------------------------------------------------------- os-release

fn add_os_release(root: &Path, facts: &mut Facts) {
    // os-release(5): /etc/os-release wins, /usr/lib/os-release is the fallback.
    let Some(text) =
        read_file(root, "etc/os-release").or_else(|| read_file(root, "usr/lib/os-release"))
    else {
        return;
    };
    let fields = parse_os_release(&text);
    for (fact, field) in [
        ("os_dist", "ID"),
        ("os_dist_release", "VERSION_CODENAME"),
        ("os_dist_version", "VERSION_ID"),
    ] {
        if let Some(value) = fields.get(field) {
            insert(facts, fact, value);
        }
    }
}

/// Parses os-release `KEY=value` lines; malformed lines are skipped.
fn parse_os_release(text: &str) -> BTreeMap<String, String> {
    let mut fields = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, raw)) = line.split_once('=') else {
            continue;
        };
        if let Some(value) = unquote_shell(raw.trim()) {
            fields.insert(key.trim().to_owned(), value);
        }
    }
    fields
}

/// Undoes the shell-style quoting os-release allows: `"..."` with backslash
/// escapes, `'...'` literally, or a bare word. Unbalanced quotes give `None`.
fn unquote_shell(raw: &str) -> Option<String> {
    if let Some(rest) = raw.strip_prefix('"') {
        return unescape_double_quoted(rest.strip_suffix('"')?);
    }
    if let Some(rest) = raw.strip_prefix('\'') {
        let inner = rest.strip_suffix('\'')?;
        return (!inner.contains('\'')).then(|| inner.to_owned());
    }
    if raw.contains(['"', '\'']) {
        return None;
    }
    Some(raw.to_owned())
}

/// Inside double quotes only `\"`, `\\`, `` \` `` and `\$` are escapes; an
/// unescaped `"` means the line is malformed.
fn unescape_double_quoted(inner: &str) -> Option<String> {
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(ch) = chars.next() {
        match ch {
            '"' => return None,
            '\\' => match chars.next() {
                Some(next @ ('"' | '\\' | '`' | '$')) => out.push(next),
                Some(next) => {
                    out.push('\\');
                    out.push(next);
                }
                None => return None,
            },
            _ => out.push(ch),
        }
    }
    Some(out)
}

// ------------------------------------------------------------ kernel, hostname

fn add_kernel_facts(root: &Path, facts: &mut Facts) {
    if let Some(host) = read_hostname(root) {
        insert(facts, "hostname", &host);
    }
    if let Some(release) = read_file(root, "proc/sys/kernel/osrelease") {
        insert(facts, "kernel", first_line(&release));
    }
}

fn read_hostname(root: &Path) -> Option<String> {
    let from_kernel = read_file(root, "proc/sys/kernel/hostname")
        .map(|text| first_line(&text).to_owned())
        // "(none)" is what the kernel reports before a name is set.
        .filter(|name| !name.is_empty() && name != "(none)");
    from_kernel.or_else(|| {
        let text = read_file(root, "etc/hostname")?;
        text.lines()
            .map(str::trim)
            .find(|line| !line.is_empty() && !line.starts_with('#'))
            .map(str::to_owned)
    })
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or_default().trim()
}

// ------------------------------------------------------------------ cpu, memory

fn add_cpu_facts(root: &Path, facts: &mut Facts) {
    let Some(text) = read_bounded(root, "proc/cpuinfo", MAX_CPUINFO_BYTES) else {
        return;
    };
    let info = parse_cpuinfo(&text);
    if let Some(model) = info.model {
        insert(facts, "processor_type", &model);
    }
    if info.count > 0 {
        insert(facts, "processor_count", &info.count.to_string());
    }
}

#[derive(Debug, Default, PartialEq)]
struct CpuInfo {
    model: Option<String>,
    count: usize,
}

/// Counts `processor : N` lines and takes the first processor name. Non-x86
/// kernels lack `model name`; `Processor` (old ARM) and `cpu` (POWER) are the
/// closest equivalents there.
fn parse_cpuinfo(text: &str) -> CpuInfo {
    const MODEL_KEYS: [&str; 3] = ["model name", "Processor", "cpu"];
    let mut info = CpuInfo::default();
    let mut model_rank = MODEL_KEYS.len();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let (key, value) = (key.trim(), value.trim());
        if key == "processor" && value.parse::<u32>().is_ok() {
            info.count += 1;
        }
        let rank = MODEL_KEYS.iter().position(|k| *k == key);
        if let Some(rank) = rank.filter(|r| *r < model_rank && !value.is_empty()) {
            model_rank = rank;
            info.model = Some(value.to_owned());
        }
    }
    info
}

fn add_mem_facts(root: &Path, facts: &mut Facts) {
    if let Some(kb) = read_file(root, "proc/meminfo").and_then(|t| parse_memtotal_kb(&t)) {
        insert(facts, "memtotal", &kb.to_string());
    }
}

/// `MemTotal:  16318412 kB` -> 16318412. The kernel always uses kB (KiB).
fn parse_memtotal_kb(text: &str) -> Option<u64> {
    let rest = text.lines().find_map(|l| l.strip_prefix("MemTotal:"))?;
    let mut words = rest.split_whitespace();
    let kb = words.next()?.parse().ok()?;
    match (words.next(), words.next()) {
        (None | Some("kB"), None) => Some(kb),
        _ => None,
    }
}

// -------------------------------------------------------------- default IPv4

const RTF_UP: u32 = 0x0001;
const RTF_GATEWAY: u32 = 0x0002;
const RTF_REJECT: u32 = 0x0200;

/// One row of `/proc/net/route`.
#[derive(Debug, Clone, PartialEq)]
struct Route4 {
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

fn add_default_ipv4(root: &Path, facts: &mut Facts) {
    let Some(routes) = read_file(root, "proc/net/route") else {
        return;
    };
    let Some(trie) = read_file(root, "proc/net/fib_trie") else {
        return;
    };
    let routes = parse_route4(&routes);
    let locals = parse_fib_trie_locals(&trie);
    if let Some(addr) = default_ipv4(&routes, &locals) {
        insert(facts, "default_ipv4", &addr.to_string());
    }
}

/// Parses `/proc/net/route`; the header and malformed rows are skipped.
fn parse_route4(text: &str) -> Vec<Route4> {
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
fn parse_fib_trie_locals(text: &str) -> BTreeSet<Ipv4Addr> {
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
fn default_ipv4(routes: &[Route4], locals: &BTreeSet<Ipv4Addr>) -> Option<Ipv4Addr> {
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
struct Route6 {
    prefix_len: u32,
    next_hop: Ipv6Addr,
    metric: u32,
    flags: u32,
    iface: String,
}

/// One row of `/proc/net/if_inet6`.
#[derive(Debug, Clone, PartialEq)]
struct Addr6 {
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

fn add_default_ipv6(root: &Path, facts: &mut Facts) {
    let Some(routes) = read_file(root, "proc/net/ipv6_route") else {
        return;
    };
    let Some(addrs) = read_file(root, "proc/net/if_inet6") else {
        return;
    };
    if let Some(addr) = default_ipv6(&parse_route6(&routes), &parse_if_inet6(&addrs)) {
        insert(facts, "default_ipv6", &addr.to_string());
    }
}

fn parse_route6(text: &str) -> Vec<Route6> {
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

fn parse_if_inet6(text: &str) -> Vec<Addr6> {
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
fn default_ipv6(routes: &[Route6], addrs: &[Addr6]) -> Option<Ipv6Addr> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A throw-away directory tree standing in for `/`.
    struct Fixture {
        root: PathBuf,
    }

    impl Fixture {
        fn new(name: &str) -> Self {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let unique = format!(
                "tribe-facts-{}-{}-{}",
                std::process::id(),
                name,
                NEXT.fetch_add(1, Ordering::Relaxed)
            );
            let root = std::env::temp_dir().join(unique);
            std::fs::create_dir_all(&root).expect("create fixture root");
            Fixture { root }
        }

        fn write(&self, rel: &str, contents: impl AsRef<[u8]>) -> &Self {
            let path = self.root.join(rel);
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).expect("create fixture dir");
            }
            std::fs::write(path, contents).expect("write fixture file");
            self
        }

        fn collect(&self) -> Facts {
            collect_from(&self.root)
        }
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }

    /// Formats an address the way `/proc/net/route` prints it on this host.
    fn route_hex(addr: &str) -> String {
        let ip: Ipv4Addr = addr.parse().expect("test address");
        format!("{:08X}", u32::from_ne_bytes(ip.octets()))
    }

    fn route_line(
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

    const ROUTE_HEADER: &str =
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n";

    /// fib_trie of a host with 10.0.0.5/24 on eth0 and docker's 172.17.0.1/16.
    const FIB_TRIE: &str = "\
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

    fn eth0_routes(gw_flags: u32) -> String {
        let mut text = ROUTE_HEADER.to_owned();
        text += &route_line("docker0", "172.17.0.0", "0.0.0.0", 0x1, 0, "255.255.0.0");
        text += &route_line("eth0", "0.0.0.0", "10.0.0.1", gw_flags, 100, "0.0.0.0");
        text += &route_line("eth0", "10.0.0.0", "0.0.0.0", 0x1, 100, "255.255.255.0");
        text
    }

    const UBUNTU_OS_RELEASE: &str = r#"PRETTY_NAME="Ubuntu 22.04.4 LTS"
NAME="Ubuntu"
VERSION_ID="22.04"
VERSION="22.04.4 LTS (Jammy Jellyfish)"
VERSION_CODENAME=jammy
ID=ubuntu
ID_LIKE=debian
HOME_URL="https://www.ubuntu.com/"
UBUNTU_CODENAME=jammy
"#;

    const X86_CPUINFO: &str = "\
processor\t: 0
vendor_id\t: GenuineIntel
model name\t:   Intel(R) Xeon(R) CPU E5-2680 v4 @ 2.40GHz  
flags\t\t: fpu vme de pse
cpu MHz\t\t: 2400.000

processor\t: 1
vendor_id\t: GenuineIntel
model name\t:   Intel(R) Xeon(R) CPU E5-2680 v4 @ 2.40GHz  
flags\t\t: fpu vme de pse
";

    const IPV6_ROUTE: &str = "\
20010db8000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0
fe800000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000002 00000000 00000001     eth0
00000000000000000000000000000000 00 00000000000000000000000000000000 00 20010db8000000000000000000000001 00000400 00000002 00000000 00000003     eth0
00000000000000000000000000000001 80 00000000000000000000000000000000 00 00000000000000000000000000000000 00000000 00000002 00000000 80200001       lo
00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo
";

    const IF_INET6: &str = "\
00000000000000000000000000000001 01 80 10 80       lo
20010db8000000000000000000000002 02 40 00 80     eth0
fe800000000000000000000000000abc 02 40 20 80     eth0
fd000000000000000000000000000009 03 40 00 80  docker0
";

    #[test]
    fn collected_fact_names_are_valid_and_unique() {
        assert_eq!(COLLECTED_FACTS.len(), 11);
        let unique: BTreeSet<_> = COLLECTED_FACTS.iter().collect();
        assert_eq!(unique.len(), COLLECTED_FACTS.len());
        for key in COLLECTED_FACTS {
            assert_eq!(validate_fact(key, "x"), Ok(()), "{key}");
        }
    }

    #[test]
    fn ubuntu_os_release() {
        let fx = Fixture::new("ubuntu");
        fx.write("etc/os-release", UBUNTU_OS_RELEASE);
        let facts = fx.collect();
        assert_eq!(facts["os_dist"], "ubuntu");
        assert_eq!(facts["os_dist_release"], "jammy");
        assert_eq!(facts["os_dist_version"], "22.04");
        assert_eq!(facts.len(), 3, "{facts:?}");
    }

    #[test]
    fn os_release_falls_back_to_usr_lib() {
        let fx = Fixture::new("usrlib");
        fx.write("usr/lib/os-release", "ID=fedora\nVERSION_ID=40\n");
        let facts = fx.collect();
        assert_eq!(facts["os_dist"], "fedora");
        assert_eq!(facts["os_dist_version"], "40");
        assert!(!facts.contains_key("os_dist_release"));
    }

    #[test]
    fn missing_files_omit_every_key() {
        let fx = Fixture::new("empty");
        assert_eq!(fx.collect(), Facts::new());
        assert_eq!(collect_from(&fx.root.join("does-not-exist")), Facts::new());
    }

    #[test]
    fn debian_testing_without_version_id_omits_it() {
        let fx = Fixture::new("sid");
        fx.write("etc/os-release", "ID=debian\nVERSION_CODENAME=trixie\n");
        let facts = fx.collect();
        assert_eq!(facts["os_dist"], "debian");
        assert_eq!(facts["os_dist_release"], "trixie");
        assert!(!facts.contains_key("os_dist_version"));
    }

    #[test]
    fn os_release_quoting() {
        let text = concat!(
            "# comment=ignored\n",
            "\n",
            "  ID = \"arch\"  \n",
            "DQ=\"say \\\"hi\\\" \\\\ \\$HOME \\n\"\n",
            "SQ='it is \"literal\" \\$'\n",
            "BARE=plain\n",
            "UNBALANCED=\"open\n",
            "MIXED=\"a\"b\"\n",
            "HALF=ab\"c\n",
            "EMPTY=\"\"\n",
            "no separator here\n",
        );
        let fields = parse_os_release(text);
        assert_eq!(fields["ID"], "arch");
        assert_eq!(fields["DQ"], r#"say "hi" \ $HOME \n"#);
        assert_eq!(fields["SQ"], r#"it is "literal" \$"#);
        assert_eq!(fields["BARE"], "plain");
        assert_eq!(fields["EMPTY"], "");
        for bad in ["UNBALANCED", "MIXED", "HALF", "# comment"] {
            assert!(!fields.contains_key(bad), "{bad} should be skipped");
        }
    }

    #[test]
    fn quoted_and_empty_values_in_collected_facts() {
        let fx = Fixture::new("quoted");
        fx.write(
            "etc/os-release",
            "ID='rhel'\nVERSION_ID=\"9.3\"\nVERSION_CODENAME=\"\"\n",
        );
        let facts = fx.collect();
        assert_eq!(facts["os_dist"], "rhel");
        assert_eq!(facts["os_dist_version"], "9.3");
        assert!(
            !facts.contains_key("os_dist_release"),
            "empty value is absent"
        );
    }

    #[test]
    fn cpuinfo_and_meminfo() {
        let fx = Fixture::new("cpu");
        fx.write("proc/cpuinfo", X86_CPUINFO);
        fx.write(
            "proc/meminfo",
            "MemFree:          123 kB\nMemTotal:       16318412 kB\nMemAvailable:  1 kB\n",
        );
        let facts = fx.collect();
        assert_eq!(
            facts["processor_type"],
            "Intel(R) Xeon(R) CPU E5-2680 v4 @ 2.40GHz"
        );
        assert_eq!(facts["processor_count"], "2");
        assert_eq!(facts["memtotal"], "16318412");
    }

    #[test]
    fn cpuinfo_without_model_name() {
        let arm64 = "processor\t: 0\nBogoMIPS\t: 48.00\nCPU implementer\t: 0x41\n\n\
                     processor\t: 1\nBogoMIPS\t: 48.00\n";
        assert_eq!(
            parse_cpuinfo(arm64),
            CpuInfo {
                model: None,
                count: 2
            }
        );
        let old_arm = "Processor\t: ARMv7 Processor rev 4 (v7l)\nprocessor\t: 0\n";
        let info = parse_cpuinfo(old_arm);
        assert_eq!(info.model.as_deref(), Some("ARMv7 Processor rev 4 (v7l)"));
        assert_eq!(info.count, 1);
        let power = "processor\t: 0\ncpu\t\t: POWER9 (raw), altivec supported\n";
        assert_eq!(
            parse_cpuinfo(power).model.as_deref(),
            Some("POWER9 (raw), altivec supported")
        );
        // "model name" wins even when a lower-ranked key comes first.
        let both = "cpu\t: generic\nmodel name\t: Specific CPU\n";
        assert_eq!(parse_cpuinfo(both).model.as_deref(), Some("Specific CPU"));
    }

    #[test]
    fn meminfo_rejects_malformed_totals() {
        assert_eq!(parse_memtotal_kb("MemTotal: 42\n"), Some(42));
        for bad in [
            "MemTotal: lots kB\n",
            "MemTotal: -5 kB\n",
            "MemTotal: 12 MB\n",
            "MemTotal:\n",
            "MemTotal: 99999999999999999999999 kB\n",
            "MemFree: 12 kB\n",
            "",
        ] {
            assert_eq!(parse_memtotal_kb(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn hostname_and_kernel() {
        let fx = Fixture::new("kernel");
        fx.write("proc/sys/kernel/hostname", "node-7\n");
        fx.write("proc/sys/kernel/osrelease", "6.1.0-18-amd64\n");
        let facts = fx.collect();
        assert_eq!(facts["hostname"], "node-7");
        assert_eq!(facts["kernel"], "6.1.0-18-amd64");

        let fx = Fixture::new("hostname-fallback");
        fx.write("proc/sys/kernel/hostname", "(none)\n");
        fx.write("etc/hostname", "# set by installer\n\nfrom-etc\n");
        assert_eq!(fx.collect()["hostname"], "from-etc");

        let fx = Fixture::new("hostname-unset");
        fx.write("proc/sys/kernel/hostname", "(none)\n");
        assert!(!fx.collect().contains_key("hostname"));
    }

    #[test]
    fn default_ipv4_from_route_and_fib_trie() {
        let fx = Fixture::new("v4");
        fx.write("proc/net/route", eth0_routes(0x3));
        fx.write("proc/net/fib_trie", FIB_TRIE);
        assert_eq!(fx.collect()["default_ipv4"], "10.0.0.5");
    }

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
    fn default_ipv4_absent() {
        // No default route at all.
        let fx = Fixture::new("v4-none");
        let mut text = ROUTE_HEADER.to_owned();
        text += &route_line("eth0", "10.0.0.0", "0.0.0.0", 0x1, 100, "255.255.255.0");
        fx.write("proc/net/route", text);
        fx.write("proc/net/fib_trie", FIB_TRIE);
        assert!(!fx.collect().contains_key("default_ipv4"));

        // Default route present but down (RTF_UP clear).
        let fx = Fixture::new("v4-down");
        fx.write("proc/net/route", eth0_routes(0x2));
        fx.write("proc/net/fib_trie", FIB_TRIE);
        assert!(!fx.collect().contains_key("default_ipv4"));

        // Route table without fib_trie: cannot name the address.
        let fx = Fixture::new("v4-notrie");
        fx.write("proc/net/route", eth0_routes(0x3));
        assert!(!fx.collect().contains_key("default_ipv4"));

        // Header only.
        let fx = Fixture::new("v4-header");
        fx.write("proc/net/route", ROUTE_HEADER);
        fx.write("proc/net/fib_trie", FIB_TRIE);
        assert!(!fx.collect().contains_key("default_ipv4"));
    }

    #[test]
    fn default_ipv6_from_route_and_if_inet6() {
        let fx = Fixture::new("v6");
        fx.write("proc/net/ipv6_route", IPV6_ROUTE);
        fx.write("proc/net/if_inet6", IF_INET6);
        assert_eq!(fx.collect()["default_ipv6"], "2001:db8::2");
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

    #[test]
    fn default_ipv6_absent() {
        // Only the kernel's unreachable default on lo (RTF_REJECT, not up).
        let fx = Fixture::new("v6-none");
        let no_default: String = IPV6_ROUTE
            .lines()
            .filter(|l| !l.ends_with("eth0") || !l.starts_with(&"0".repeat(32)))
            .map(|l| format!("{l}\n"))
            .collect();
        fx.write("proc/net/ipv6_route", no_default);
        fx.write("proc/net/if_inet6", IF_INET6);
        assert!(!fx.collect().contains_key("default_ipv6"));

        // Default route, but only link-local addresses on its interface.
        let fx = Fixture::new("v6-linklocal");
        fx.write("proc/net/ipv6_route", IPV6_ROUTE);
        fx.write(
            "proc/net/if_inet6",
            "fe800000000000000000000000000abc 02 40 20 80     eth0\n",
        );
        assert!(!fx.collect().contains_key("default_ipv6"));

        // IPv6 disabled: files missing.
        assert!(!Fixture::new("v6-off")
            .collect()
            .contains_key("default_ipv6"));
    }

    #[test]
    fn full_fixture_tree() {
        let fx = Fixture::new("full");
        fx.write("etc/os-release", UBUNTU_OS_RELEASE)
            .write("proc/sys/kernel/hostname", "node-7\n")
            .write("proc/sys/kernel/osrelease", "6.1.0-18-amd64\n")
            .write("proc/cpuinfo", X86_CPUINFO)
            .write("proc/meminfo", "MemTotal:       2048 kB\n")
            .write("proc/net/route", eth0_routes(0x3))
            .write("proc/net/fib_trie", FIB_TRIE)
            .write("proc/net/ipv6_route", IPV6_ROUTE)
            .write("proc/net/if_inet6", IF_INET6);
        let facts = fx.collect();
        let keys: Vec<&str> = facts.keys().map(String::as_str).collect();
        let mut expected: Vec<&str> = COLLECTED_FACTS
            .iter()
            .copied()
            .filter(|k| *k != "architecture")
            .collect();
        expected.sort_unstable();
        assert_eq!(
            keys, expected,
            "collect_from yields every file-derived fact"
        );
    }

    /// Deterministic pseudo-random bytes (no extra crates).
    fn noise(seed: u64, len: usize) -> Vec<u8> {
        let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
        (0..len)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (state >> 56) as u8
            })
            .collect()
    }

    const ALL_FILES: &[&str] = &[
        "etc/os-release",
        "usr/lib/os-release",
        "etc/hostname",
        "proc/sys/kernel/hostname",
        "proc/sys/kernel/osrelease",
        "proc/cpuinfo",
        "proc/meminfo",
        "proc/net/route",
        "proc/net/fib_trie",
        "proc/net/ipv6_route",
        "proc/net/if_inet6",
    ];

    fn assert_sane(facts: &Facts) {
        for (key, value) in facts {
            assert!(COLLECTED_FACTS.contains(&key.as_str()), "{key}");
            assert_eq!(validate_fact(key, value), Ok(()), "{key}={value:?}");
        }
    }

    #[test]
    fn garbage_files_do_not_panic() {
        let payloads: Vec<Vec<u8>> = vec![
            Vec::new(),
            b"\n\n\n".to_vec(),
            b"=\n==\n\"\n'\n\\\n:\n::\n|--\n/32 host LOCAL\n".to_vec(),
            b"MemTotal: kB\nprocessor : \nmodel name :\n".to_vec(),
            b"eth0 00000000 ZZZZZZZZ 0003 0 0 0 00000000\neth0 0 0 0 0 0 0 0 0 0 0\n".to_vec(),
            format!(
                "{} 00 {} 00 {} ffffffffff 1 1 fffffffff eth0\n",
                "f".repeat(32),
                "0".repeat(32),
                "g".repeat(32)
            )
            .into_bytes(),
            b"00000000000000000000000000000000 ff 80 zz 80 eth0\n".to_vec(),
            b"|-- 999.1.1.1\n/32 host LOCAL\n|-- 1.2.3.4\n".to_vec(),
            vec![0xff, 0xfe, 0x00, b'\n', 0xc3],
            noise(1, 4096),
            noise(2, 65536),
            // Truncated mid-line versions of the good fixtures.
            IPV6_ROUTE.as_bytes()[..150].to_vec(),
            FIB_TRIE.as_bytes()[..200].to_vec(),
        ];
        for (i, payload) in payloads.iter().enumerate() {
            let fx = Fixture::new(&format!("garbage{i}"));
            for file in ALL_FILES {
                fx.write(file, payload);
            }
            assert_sane(&fx.collect());
        }
    }

    #[test]
    fn control_characters_and_oversized_values_are_omitted() {
        let fx = Fixture::new("ctrl");
        fx.write("etc/os-release", "ID=\"a\tb\"\nVERSION_ID=\"1\x1b[31m\"\n");
        fx.write(
            "proc/sys/kernel/hostname",
            "x".repeat(MAX_FACT_VALUE_LEN + 1),
        );
        fx.write("proc/sys/kernel/osrelease", "6.1\u{85}evil\n");
        assert_eq!(fx.collect(), Facts::new());
    }

    #[test]
    fn huge_and_odd_files_are_skipped() {
        let fx = Fixture::new("huge");
        let mut big = b"ID=ubuntu\n".to_vec();
        big.resize(MAX_FILE_BYTES as usize + 1, b'#');
        fx.write("etc/os-release", &big);
        // A directory where a file should be.
        std::fs::create_dir_all(fx.root.join("proc/meminfo")).expect("mkdir");
        assert_eq!(fx.collect(), Facts::new());

        // Exactly at the limit is still read.
        let fx = Fixture::new("at-limit");
        let mut text = b"ID=ubuntu\n".to_vec();
        text.resize(MAX_FILE_BYTES as usize, b'\n');
        fx.write("etc/os-release", &text);
        assert_eq!(fx.collect()["os_dist"], "ubuntu");
    }

    #[test]
    fn validate_fact_accepts() {
        let long_key = "k".repeat(MAX_FACT_KEY_LEN);
        let long_value = "v".repeat(MAX_FACT_VALUE_LEN);
        let umlauts = "ü".repeat(MAX_FACT_VALUE_LEN / 2);
        for (key, value) in [
            ("rack", "r12"),
            ("_private", ""),
            ("A1_b2", "spaces and = signs are fine"),
            ("in_", "Grüße, 東京 🚀"),
            ("namespace", "CEL reserves it, but allows it as a selector"),
            ("null_", "keywords only as exact words"),
            (long_key.as_str(), long_value.as_str()),
            ("k", umlauts.as_str()),
        ] {
            assert_eq!(validate_fact(key, value), Ok(()), "{key}={value}");
        }
    }

    #[test]
    fn validate_fact_rejects_keys() {
        assert_eq!(validate_fact("", "v"), Err(FactError::EmptyKey));
        let long = "k".repeat(MAX_FACT_KEY_LEN + 1);
        assert!(matches!(
            validate_fact(&long, "v"),
            Err(FactError::KeyTooLong { len: 65, .. })
        ));
        for (key, ch, pos) in [
            ("1abc", '1', 0),
            ("a-b", '-', 1),
            ("a.b", '.', 1),
            ("sp ace", ' ', 2),
            ("ümlaut", 'ü', 0),
            ("new\nline", '\n', 3),
        ] {
            assert_eq!(
                validate_fact(key, "v"),
                Err(FactError::InvalidKeyChar {
                    key: key.to_owned(),
                    ch,
                    pos
                })
            );
        }
        for key in ["in", "true", "false", "null"] {
            assert_eq!(
                validate_fact(key, "v"),
                Err(FactError::ReservedKey {
                    key: key.to_owned()
                })
            );
        }
        // A long run of multi-byte chars: length is checked first, in bytes.
        let wide = "é".repeat(40);
        assert!(matches!(
            validate_fact(&wide, "v"),
            Err(FactError::KeyTooLong { len: 80, .. })
        ));
    }

    #[test]
    fn validate_fact_rejects_values() {
        let over = "v".repeat(MAX_FACT_VALUE_LEN + 1);
        assert_eq!(
            validate_fact("rack", &over),
            Err(FactError::ValueTooLong {
                key: "rack".into(),
                len: MAX_FACT_VALUE_LEN + 1
            })
        );
        // 1023 ASCII bytes + one 2-byte char = 1025 bytes.
        let wide = format!("{}é", "v".repeat(MAX_FACT_VALUE_LEN - 1));
        assert!(matches!(
            validate_fact("rack", &wide),
            Err(FactError::ValueTooLong { len: 1025, .. })
        ));
        for (value, ch, pos) in [
            ("a\nb", '\n', 1),
            ("\ttab", '\t', 0),
            ("del\u{7f}", '\u{7f}', 3),
            ("é\u{85}", '\u{85}', 2),
            ("nul\0", '\0', 3),
        ] {
            assert_eq!(
                validate_fact("rack", value),
                Err(FactError::ControlCharInValue {
                    key: "rack".into(),
                    ch,
                    pos
                })
            );
        }
    }

    #[test]
    fn error_messages_name_key_and_rule() {
        let msg = validate_fact("a-b", "v").expect_err("invalid").to_string();
        assert!(
            msg.contains("\"a-b\"") && msg.contains("[A-Za-z_][A-Za-z0-9_]*"),
            "{msg}"
        );
        let msg = validate_fact("rack", "a\nb")
            .expect_err("invalid")
            .to_string();
        assert!(msg.contains("\"rack\"") && msg.contains("U+000A"), "{msg}");
        let msg = validate_fact("in", "v").expect_err("reserved").to_string();
        assert!(msg.contains("\"in\"") && msg.contains("keyword"), "{msg}");
        let over = "v".repeat(MAX_FACT_VALUE_LEN + 1);
        let msg = validate_fact("rack", &over).expect_err("long").to_string();
        assert!(msg.contains("\"rack\"") && msg.contains("1024"), "{msg}");
        // Huge inputs are quoted shortened, on a char boundary.
        let huge = "é".repeat(10_000);
        let msg = parse_fact_arg(&huge).expect_err("no =").to_string();
        assert!(msg.len() < 200, "{msg}");
    }

    #[test]
    fn parse_fact_arg_accepts() {
        let ok = |arg: &str, k: &str, v: &str| {
            assert_eq!(
                parse_fact_arg(arg),
                Ok((k.to_owned(), v.to_owned())),
                "{arg}"
            );
        };
        ok("rack=r12", "rack", "r12");
        ok("url=http://x/?a=b", "url", "http://x/?a=b");
        ok("empty=", "empty", "");
        ok("role= spaced value ", "role", " spaced value ");
    }

    #[test]
    fn parse_fact_arg_rejects() {
        assert_eq!(
            parse_fact_arg("novalue"),
            Err(FactError::MissingSeparator {
                arg: "novalue".into()
            })
        );
        assert_eq!(
            parse_fact_arg(""),
            Err(FactError::MissingSeparator { arg: String::new() })
        );
        assert_eq!(parse_fact_arg("=v"), Err(FactError::EmptyKey));
        assert!(matches!(
            parse_fact_arg(" rack=v"),
            Err(FactError::InvalidKeyChar {
                ch: ' ',
                pos: 0,
                ..
            })
        ));
        assert!(matches!(
            parse_fact_arg("rack =v"),
            Err(FactError::InvalidKeyChar {
                ch: ' ',
                pos: 4,
                ..
            })
        ));
        assert!(matches!(
            parse_fact_arg("rack=a\nb"),
            Err(FactError::ControlCharInValue { .. })
        ));
        assert!(matches!(
            parse_fact_arg("null=1"),
            Err(FactError::ReservedKey { .. })
        ));
    }

    #[test]
    fn collect_on_this_host() {
        let facts = collect();
        assert_sane(&facts);
        assert_eq!(facts["architecture"], std::env::consts::ARCH);
        assert!(facts.contains_key("processor_count"), "{facts:?}");
        if cfg!(target_os = "linux") {
            assert!(facts.contains_key("hostname"), "{facts:?}");
            assert!(facts.contains_key("kernel"), "{facts:?}");
        }
    }
}
