//! `tribe-sim` as a user runs it: every scenario at a small size, its
//! summary, its CSV and its PNG chart.

use std::path::Path;
use std::process::Command;

const SIM: &str = env!("CARGO_BIN_EXE_tribe-sim");

fn run(args: &[&str], dir: &Path, name: &str) -> (String, String, Vec<u8>) {
    let csv = dir.join(format!("{name}.csv"));
    let png = dir.join(format!("{name}.png"));
    let out = Command::new(SIM)
        .args(["-n", "40", "--warmup-secs", "10", "--csv"])
        .arg(&csv)
        .arg("--png")
        .arg(&png)
        .args(args)
        .output()
        .expect("tribe-sim runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{args:?}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let csv = std::fs::read_to_string(&csv).expect("csv written");
    let png = std::fs::read(&png).expect("png written");
    (stdout, csv, png)
}

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("tribe-sim-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// A PNG of the chart's size, with more than one colour drawn on it.
fn assert_chart(png: &[u8]) {
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "a PNG signature");
    let width = u32::from_be_bytes(png[16..20].try_into().unwrap());
    let height = u32::from_be_bytes(png[20..24].try_into().unwrap());
    assert_eq!((width, height), (1000, 560));
    // A blank white image compresses to a few hundred bytes; axes, text
    // (the embedded font) and lines make it tens of kilobytes.
    assert!(
        png.len() > 20_000,
        "a chart with content: {} bytes",
        png.len()
    );
}

fn last_row(csv: &str) -> Vec<f64> {
    let line = csv.lines().last().expect("rows");
    line.split(',')
        .map(|c| c.parse().expect("a number"))
        .collect()
}

#[test]
fn each_scenario_writes_its_summary_csv_and_chart() {
    let dir = scratch("all");
    let (out, csv, png) = run(&["mass-join"], &dir, "mass");
    assert!(out.contains("every node saw all 40 alive after"), "{out}");
    assert!(csv.starts_with("t_s,nodes_converged\n"));
    assert_eq!(csv.lines().count(), 101, "a row per 100 ms of warm-up");
    assert_eq!(last_row(&csv)[1], 40.0);
    assert_chart(&png);

    let (out, csv, png) = run(&["join"], &dir, "join");
    assert!(out.contains("late join known by 40/40 nodes"), "{out}");
    assert!(csv.starts_with("t_s,nodes_knowing_joiner\n"));
    assert_eq!(last_row(&csv)[1], 40.0);
    // 10 ms samples, up to one second after every node knows.
    assert!(csv.lines().count() > 100, "{csv}");
    assert!(last_row(&csv)[0] < 3.0, "{csv}");
    assert_chart(&png);

    let (out, csv, png) = run(
        &["--loss", "0.1", "crash", "--observe-secs", "15"],
        &dir,
        "crash",
    );
    assert!(out.contains("crash declared by 39/39 nodes"), "{out}");
    assert!(csv.starts_with("t_s,nodes_declaring_crash,false_failures\n"));
    assert_eq!(last_row(&csv)[1..], [39.0, 0.0]);
    assert_chart(&png);

    let (out, _, png) = run(&["catalog"], &dir, "catalog");
    assert!(out.contains("plugin entry reached 40/40 nodes"), "{out}");
    assert_chart(&png);

    let (out, csv, png) = run(&["policy"], &dir, "policy");
    assert!(
        out.contains("before the change: 4 nodes in tribe hot"),
        "{out}"
    );
    assert!(out.contains("joined by 4/4 nodes"), "{out}");
    assert!(out.contains("left by 4/4 nodes"), "{out}");
    assert!(out.contains("view of tribe hot is not shard 1: 0"), "{out}");
    assert!(csv.starts_with("t_s,joined,left,nodes_holding_the_whole_change\n"));
    assert_eq!(last_row(&csv)[1..], [4.0, 4.0, 40.0]);
    assert_chart(&png);

    let (out, _, png) = run(&["partition", "--secs", "10"], &dir, "partition");
    assert!(out.contains("nodes missing a write: 0"), "{out}");
    assert!(!out.contains("not within"), "{out}");
    assert_chart(&png);

    let (out, csv, png) = run(&["rest", "--secs", "10"], &dir, "rest");
    assert!(out.contains("at rest over 10 s"), "{out}");
    assert_eq!(csv.lines().count(), 11, "a row per second: {csv}");
    assert!(last_row(&csv)[1] > 0.0, "gossip at rest: {csv}");
    assert_chart(&png);

    let (out, csv, png) = run(
        &["churn", "--secs", "10", "--every-secs", "2"],
        &dir,
        "churn",
    );
    assert!(out.contains("during churn (5 crashes)"), "{out}");
    assert!(
        out.contains(
            "false failure reports (a node neither crashed nor paused declared failed): 0"
        ),
        "{out}"
    );
    let rest_rate = |csv: &str| {
        let rows: Vec<Vec<f64>> = csv
            .lines()
            .skip(1)
            .map(|l| l.split(',').map(|c| c.parse().unwrap()).collect())
            .collect();
        rows.iter().map(|r| r[1]).sum::<f64>() / rows.len() as f64
    };
    let rest_csv = std::fs::read_to_string(dir.join("rest.csv")).unwrap();
    assert!(
        rest_rate(&csv) > rest_rate(&rest_csv),
        "churn costs more than rest: {csv}"
    );
    assert_chart(&png);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn timing_overrides_are_taken_and_shown() {
    let dir = scratch("timings");
    let (out, _, _) = run(
        &[
            "--suspicion-mult",
            "8",
            "--indirect-probes",
            "1",
            "rest",
            "--secs",
            "2",
        ],
        &dir,
        "t",
    );
    assert!(
        out.starts_with(
            "# tribe-sim: 40 nodes, seed 1, profile Lan, suspicion ×8, 1 indirect probes,"
        ),
        "{out}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn same_seed_same_output() {
    let dir = scratch("seed");
    let args = [
        "--seed",
        "7",
        "--loss",
        "0.05",
        "crash",
        "--observe-secs",
        "10",
    ];
    let a = run(&args, &dir, "a");
    let b = run(&args, &dir, "b");
    let strip = |s: &str| {
        s.lines()
            .filter(|l| !l.starts_with("- wall time"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(strip(&a.0), strip(&b.0));
    assert_eq!(a.1, b.1, "the same CSV");
    assert_eq!(a.2, b.2, "the same PNG");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_flags_are_errors_not_panics() {
    for args in [
        vec!["-n", "1", "rest"],
        vec!["--loss", "2", "rest"],
        vec!["--warmup-secs=-1", "rest"],
        vec!["crash", "--paused", "7"],
        vec!["churn", "--every-secs", "nan"],
        vec!["--formed", "mass-join"],
        // Timings every node would refuse: no empty run reported as a result.
        vec!["--indirect-probes", "0", "crash"],
        vec!["--indirect-probes", "65", "crash"],
        vec!["--suspicion-mult", "101", "crash"],
        // Samples reach 100 times the median: virtual time would wrap.
        vec!["--latency-us", "100000000000", "mass-join"],
        // Found before the run, not after it.
        vec!["--csv", "/nonexistent-dir/x.csv", "rest"],
        vec!["--png", "/nonexistent-dir/x.png", "rest"],
        // Not silently replaced by something else.
        vec!["--png", "/tmp/x.jpg", "rest"],
        vec!["--bandwidth", "0", "rest"],
        vec!["--suspicion-mult", "0", "crash"],
        vec!["--seeds", "0", "rest"],
        vec!["--latency-us", "0", "rest"],
        vec!["churn", "--every-secs", "0"],
        vec!["-n", "3", "churn"],
        vec!["-n", "100000000", "--formed", "rest"],
        vec!["partition", "--secs", "18446744073709.6"],
    ] {
        let out = Command::new(SIM)
            .args(&args)
            .output()
            .expect("tribe-sim runs");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.starts_with("tribe-sim: "), "{args:?}: {err}");
    }
}

#[test]
fn churn_counts_only_the_crashes_it_made() {
    // Four nodes, three of them seeds: one victim, down 10 s of every crash
    // turn of 2 s, so most turns find it still down.
    let out = Command::new(SIM)
        .args(["-n", "4", "--warmup-secs", "5", "churn", "--secs", "20"])
        .output()
        .expect("tribe-sim runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let line = text
        .lines()
        .find(|l| l.contains("during churn"))
        .unwrap_or_else(|| panic!("no churn line: {text}"));
    assert!(
        line.contains("(2 crashes, 8 skipped: the victim was still down)"),
        "{line}"
    );
}

/// `--loss` applies to the mass join it measures (it was ignored there,
/// while the output said it applied); other scenarios' warm-up says it is
/// lossless.
#[test]
fn a_mass_join_runs_with_the_loss_asked_for() {
    let dir = scratch("massloss");
    let events = |loss: &str| {
        let out = Command::new(SIM)
            .args([
                "-n",
                "40",
                "--warmup-secs",
                "10",
                "--loss",
                loss,
                "mass-join",
            ])
            .output()
            .expect("tribe-sim runs");
        assert!(out.status.success());
        let out = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(!out.contains("(lossless)"), "{out}");
        out.lines()
            .find(|l| l.contains("queue events"))
            .map(|l| l.split(", ").nth(1).unwrap_or_default().to_string())
            .expect("a wall-time line")
    };
    assert_ne!(events("0"), events("0.5"));
    let (out, _, _) = run(&["--loss", "0.1", "rest", "--secs", "2"], &dir, "restloss");
    assert!(out.contains("mass join (lossless)"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}
