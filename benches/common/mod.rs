//! Helpers shared by the benchmark programs.
#![allow(dead_code)]

/// Reads the arguments of a bench that only knows `--quick`: `true` for a
/// short run. `--help` prints `usage` and exits 0; anything else exits 2.
pub fn quick_flag(usage: &str) -> bool {
    let mut quick = false;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--quick" => quick = true,
            // cargo passes `--bench` to harness-less bench targets.
            "--bench" => {}
            "-h" | "--help" => {
                eprintln!("{usage}");
                std::process::exit(0);
            }
            other => {
                eprintln!("unknown argument {other:?}\n{usage}");
                std::process::exit(2);
            }
        }
    }
    quick
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
