//! Probes the running host for the facts in [`COLLECTED_FACTS`]: os-release,
//! kernel, host name, CPUs, memory and default addresses, each read from a
//! bounded `/proc` or `/etc` file and omitted when it cannot be known.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::Path;

use super::route::{
    default_ipv4, default_ipv6, parse_fib_trie_locals, parse_if_inet6, parse_route4, parse_route6,
};
use super::{validate_fact, Facts, COLLECTED_FACTS};

/// Most bytes read from any one host file; a larger file counts as unreadable,
/// so its facts are omitted rather than derived from a truncated prefix.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// `/proc/cpuinfo` grows with the CPU count (~1.5 KiB per CPU on x86), so it
/// gets a larger bound to keep `processor_count` right on big machines.
const MAX_CPUINFO_BYTES: u64 = 8 * MAX_FILE_BYTES;

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

// ---------------------------------------------------------- default addresses

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::route::tests::{
        eth0_routes, route_line, FIB_TRIE, IF_INET6, IPV6_ROUTE, ROUTE_HEADER,
    };
    use crate::facts::MAX_FACT_VALUE_LEN;
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
