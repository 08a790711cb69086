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

mod probe;
mod route;
mod validate;

pub use probe::{collect, collect_from, MAX_FILE_BYTES};
pub use validate::{parse_fact_arg, validate_fact, FactError};

use std::collections::BTreeMap;

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn collected_fact_names_are_valid_and_unique() {
        assert_eq!(COLLECTED_FACTS.len(), 11);
        let unique: BTreeSet<_> = COLLECTED_FACTS.iter().collect();
        assert_eq!(unique.len(), COLLECTED_FACTS.len());
        for key in COLLECTED_FACTS {
            assert_eq!(validate_fact(key, "x"), Ok(()), "{key}");
        }
    }
}
