//! The `sweep` example: its statistics on hand-checked numbers, and an interrupted sweep that,
//! started again, finishes the grid without redoing finished runs and prints the same summary
//! as an uninterrupted one.

mod common;

#[path = "../examples/sweep/grid.rs"]
mod grid;
#[path = "../examples/sweep/stats.rs"]
mod stats;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::SystemTime;

use fdfa::data::DatasetName;
use grid::{Network, dataset_key, parse_seeds};
use stats::{Group, SeedCurve, Stat, best_epoch, mean_curve, mean_std, summarize};

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-12 * b.abs().max(1.0)
}

#[test]
fn grid_names() {
    assert_eq!(parse_seeds("0-4").unwrap(), vec![0, 1, 2, 3, 4]);
    assert_eq!(parse_seeds("1-3,7, 2").unwrap(), vec![1, 2, 3, 7]);
    assert!(parse_seeds("4-0").unwrap_err().contains("backwards"));
    assert!(parse_seeds("a").is_err());
    assert!(parse_seeds(",").is_err());
    for (s, n) in [
        ("fc2", Network::Fc(2)),
        ("FC-3", Network::Fc(3)),
        ("cnn", Network::Cnn),
    ] {
        assert_eq!(s.parse::<Network>().unwrap(), n);
    }
    assert!("fc0".parse::<Network>().is_err());
    assert!("mlp".parse::<Network>().is_err());
    assert_eq!(Network::Fc(2).to_string(), "FC-2");
    assert_eq!(Network::Fc(2).key(), "fc2");
    assert_eq!(Network::Fc(2).flags(), ["--n-layers", "2"]);
    assert_eq!(Network::Cnn.flags(), ["--conv"]);
    assert!(Network::Cnn.fits(DatasetName::Mnist));
    assert!(!Network::Cnn.fits(DatasetName::Cifar100));
    assert!(Network::AlexNet.fits(DatasetName::Cifar100));
    // The folder and table names parse back to their dataset.
    for d in DatasetName::ALL {
        assert_eq!(dataset_key(d).parse::<DatasetName>().unwrap(), d);
    }
}

#[test]
fn mean_and_sample_std() {
    // Deviations -0.1, 0, 0.1: variance (0.01 + 0 + 0.01) / (3 - 1) = 0.01.
    let s = mean_std(&[96.9, 97.0, 97.1]);
    assert!(close(s.mean, 97.0) && close(s.std, 0.1), "{s:?}");
    // Deviations -1.5, -0.5, 0.5, 1.5: variance 5 / 3 (the population one would be 5 / 4).
    let s = mean_std(&[1.0, 2.0, 3.0, 4.0]);
    assert!(
        close(s.mean, 2.5) && close(s.std, (5.0f64 / 3.0).sqrt()),
        "{s:?}"
    );
    let one = mean_std(&[96.5]);
    assert_eq!(one.mean, 96.5);
    assert!(one.std.is_nan(), "one seed has no sample std");
    let none = mean_std(&[]);
    assert!(none.mean.is_nan() && none.std.is_nan());
}

#[test]
fn mean_curve_and_best_epoch() {
    let a = [90.0, 95.0, 96.0, 94.0];
    let b = [92.0, 97.0, 94.0];
    let curve = mean_curve(&[&a, &b]);
    // Up to the shorter curve; epoch 2: mean 96, std sqrt(2 * 1 / 1) = sqrt 2.
    assert_eq!(curve.len(), 3);
    assert!(close(curve[1].mean, 96.0) && close(curve[1].std, 2f64.sqrt()));
    assert!(close(curve[2].mean, 95.0) && close(curve[2].std, 2f64.sqrt()));
    let means: Vec<f64> = curve.iter().map(|s| s.mean).collect();
    assert_eq!(best_epoch(&means), Some(2));
    // Ties go to the earlier epoch; NaN is never best.
    assert_eq!(best_epoch(&[1.0, f64::NAN, 3.0, 3.0, 2.0]), Some(3));
    assert_eq!(best_epoch(&[f64::NAN]), None);
    assert_eq!(best_epoch(&[]), None);
}

#[test]
fn summary_tables() {
    let seed = |seed, accuracy: &[f64], test_loss: &[f64]| SeedCurve {
        seed,
        accuracy: accuracy.to_vec(),
        test_loss: test_loss.to_vec(),
    };
    let groups = [
        Group {
            dataset: "mnist".into(),
            network: "FC-2".into(),
            rule: "BP".into(),
            curves: vec![
                seed(0, &[96.0, 97.5, 97.0], &[0.2, 0.1, 0.12]),
                seed(1, &[96.5, 97.0, 97.5], &[0.18, 0.11, 0.1]),
            ],
        },
        Group {
            dataset: "mnist".into(),
            network: "FC-2".into(),
            rule: "FDFA".into(),
            curves: vec![seed(0, &[95.0, 96.0, 96.25], &[0.3, 0.2, 0.1])],
        },
    ];
    let rows = summarize(&groups, &[1, 3]);
    assert_eq!(rows[0].seeds, 2);
    let at3 = rows[0].at[1];
    assert_eq!(at3.epoch, 3);
    let acc = at3.accuracy.unwrap();
    // 97.0 and 97.5: mean 97.25, std sqrt(2 * 0.25^2 / 1) = 0.25 sqrt 2.
    assert!(close(acc.mean, 97.25) && close(acc.std, 0.25 * 2f64.sqrt()));
    // The mean curve is 96.25, 97.25, 97.25: the first of the tied maxima.
    let (best, stat) = rows[0].best.unwrap();
    assert_eq!(best, 2);
    assert!(close(stat.mean, 97.25));
    let md = stats::markdown(&rows);
    let lines: Vec<&str> = md.lines().collect();
    assert_eq!(
        lines[0],
        "| dataset | network | rule | seeds | test accuracy (%), epoch 1 | test loss, epoch 1 \
         | test accuracy (%), epoch 3 | test loss, epoch 3 | best epoch \
         | test accuracy (%) at best |"
    );
    assert_eq!(
        lines[2],
        "| mnist | FC-2 | BP | 2 | 96.25 ± 0.35 | 0.1900 ± 0.0141 | 97.25 ± 0.35 \
         | 0.1100 ± 0.0141 | 2 | 97.25 ± 0.35 |"
    );
    // One seed: the mean alone.
    assert_eq!(
        lines[3],
        "| mnist | FC-2 | FDFA | 1 | 95.00 | 0.3000 | 96.25 | 0.1000 | 3 | 96.25 |"
    );
    let csv = stats::csv(&rows);
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 1 + 2 * 2);
    assert_eq!(lines[3], "mnist,FC-2,FDFA,1,1,95,,0.3,,3,96.25,");
    assert!(lines[2].starts_with("mnist,FC-2,BP,2,3,97.25,0.35355339059327"));
    let _: Stat = acc;
}

/// A scratch folder, removed when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn scratch(name: &str) -> Scratch {
    let dir = std::env::temp_dir().join(format!("fdfa-sweep-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    Scratch(dir)
}

/// `cargo run --example sweep` on a tiny grid (two rules, two seeds, two epochs of 128
/// samples) into `out`, with `extra` sweep flags.
fn sweep(out: &Path, extra: &[&str]) -> Output {
    let grid = ["--rules", "BP,FDFA", "--seeds", "0-1", "--epochs", "2"];
    sweep_grid(out, &grid, &["--report-epochs", "1,2"], extra)
}

/// `cargo run --example sweep` of FC-1 on 128 MNIST samples with the `grid` and `extra`
/// flags.
fn sweep_grid(out: &Path, grid: &[&str], report: &[&str], extra: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO"));
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["run", "--quiet", "--example", "sweep"]);
    if !cfg!(debug_assertions) {
        cmd.arg("--release");
    }
    cmd.arg("--")
        .args(["--datasets", "mnist", "--networks", "fc1"])
        .args(grid)
        .args(report)
        .args(["--jobs", "1", "--threads", "1", "--out"])
        .arg(out)
        .args(extra)
        .args(["--", "--train-samples", "128", "--test-samples", "100"])
        .args(["--batch-size", "32", "--log-interval", "1"])
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Every file under `dir` with its modification time and bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (SystemTime, Vec<u8>)> {
    let mut files = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let modified = std::fs::metadata(&path).unwrap().modified().unwrap();
                files.insert(path.clone(), (modified, std::fs::read(&path).unwrap()));
            }
        }
    }
    files
}

#[test]
fn interrupted_sweep_resumes_and_summarises_like_an_uninterrupted_one() {
    let Some(_) =
        common::mnist_or_skip("interrupted_sweep_resumes_and_summarises_like_an_uninterrupted_one")
    else {
        return;
    };
    let whole = scratch("whole");
    let out = sweep(&whole.0, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("4 runs: 0 finished before, 0 to resume, 4 to start"));

    let broken = scratch("broken");
    // Killed after the third end-of-epoch checkpoint: BP seed 0 has finished its two epochs,
    // BP seed 1 has a checkpoint after its first, the FDFA runs have not started.
    let out = sweep(&broken.0, &["--halt-after-checkpoints", "3"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let bp0 = broken.0.join("mnist/fc1/BP/seed-0");
    assert!(bp0.join("finished.json").exists(), "{}", text(&out));
    assert!(!broken.0.join("mnist/fc1/BP/seed-1/finished.json").exists());
    assert!(
        !broken.0.join("summary").exists(),
        "a halted sweep summarises nothing"
    );
    let before = snapshot(&bp0);

    let out = sweep(&broken.0, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let said = text(&out);
    assert!(
        said.contains("4 runs: 1 finished before, 1 to resume, 2 to start"),
        "{said}"
    );
    assert!(said.contains("resuming mnist/fc1/BP/seed-1"), "{said}");
    assert!(!said.contains("mnist/fc1/BP/seed-0"), "{said}");
    // The finished run was not touched: same files, same bytes, same modification times.
    assert_eq!(snapshot(&bp0), before);
    let resumed = std::fs::read_to_string(broken.0.join("mnist/fc1/BP/seed-1/output.log")).unwrap();
    assert!(resumed.contains("resuming from"), "{resumed}");

    for file in ["summary.md", "summary.csv"] {
        let a = std::fs::read_to_string(whole.0.join("summary").join(file)).unwrap();
        let b = std::fs::read_to_string(broken.0.join("summary").join(file)).unwrap();
        assert_eq!(a, b, "{file} differs after the interruption");
    }
    let csv = std::fs::read_to_string(whole.0.join("summary/summary.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 2 * 2, "{csv}");
    for png in ["mnist-fc1-accuracy.png", "mnist-fc1-loss.png"] {
        let bytes = std::fs::read(whole.0.join("summary").join(png)).unwrap();
        assert!(bytes.starts_with(b"\x89PNG"), "{png}");
    }

    // Nothing left to train: the same command summarises again, starting no run.
    let out = sweep(&broken.0, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("4 runs: 4 finished before, 0 to resume, 0 to start"));
}

#[test]
fn a_missing_dataset_is_refused_before_any_run_starts() {
    let dir = scratch("missing");
    let missing = dir.0.join("no-data");
    let mut cmd = Command::new(env!("CARGO"));
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["run", "--quiet", "--example", "sweep"]);
    if !cfg!(debug_assertions) {
        cmd.arg("--release");
    }
    let out = cmd
        .args(["--", "--seeds", "0", "--epochs", "1", "--out"])
        .arg(dir.0.join("out"))
        .arg("--")
        .arg(format!("--data-dir={}", missing.display()))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("not found"), "{}", text(&out));
    assert!(!dir.0.join("out").exists(), "nothing was created");
}

#[test]
fn more_epochs_continue_finished_runs() {
    let Some(_) = common::mnist_or_skip("more_epochs_continue_finished_runs") else {
        return;
    };
    let grid = ["--rules", "FDFA", "--seeds", "3", "--epochs", "2"];
    let report = ["--report-epochs", "1,2"];
    let once = scratch("once");
    let out = sweep_grid(&once.0, &grid, &report, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let twice = scratch("twice");
    let first = ["--rules", "FDFA", "--seeds", "3", "--epochs", "1"];
    let out = sweep_grid(&twice.0, &first, &[], &[]);
    assert!(out.status.success(), "{}", text(&out));
    let out = sweep_grid(&twice.0, &grid, &report, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("1 runs: 0 finished before, 1 to resume, 0 to start"),
        "{}",
        text(&out)
    );
    let csv = |dir: &Scratch| std::fs::read_to_string(dir.0.join("summary/summary.csv")).unwrap();
    assert_eq!(csv(&once), csv(&twice));
}
