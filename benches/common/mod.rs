//! Helpers shared by the benchmark programs.
#![allow(dead_code)]

/// Reads the arguments of a bench that only knows `--quick`: `true` for a
/// short run. `--help` prints `usage` and exits 0; anything else exits 2.
pub fn quick_flag(usage: &str) -> bool {
    flags(usage, &["--quick"]).contains("--quick")
}

/// Reads flags that take no value: the set of `known` flags given.
/// `--help` prints `usage` and exits 0; anything else exits 2.
pub fn flags(usage: &str, known: &[&str]) -> std::collections::BTreeSet<String> {
    let mut given = std::collections::BTreeSet::new();
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            // cargo passes `--bench` to harness-less bench targets.
            "--bench" => {}
            "-h" | "--help" => {
                eprintln!("{usage}");
                std::process::exit(0);
            }
            flag if known.contains(&flag) => {
                given.insert(arg);
            }
            other => {
                eprintln!("unknown argument {other:?}\n{usage}");
                std::process::exit(2);
            }
        }
    }
    given
}

/// The CPU model from /proc/cpuinfo, for the machine line of a table.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}
