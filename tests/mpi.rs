//! Data-parallel training over MPI, end to end: the `mnist` example under
//! `mpirun -n 2` and `-n 3` (ranks on this machine's loopback) against one process, for
//! every rule on FC-2 and the CNN; bit-identical repeats; and a checkpoint of 3 ranks resumed
//! on 2 ranks, on 3 and on one process.
//!
//! Needs the `mpi` feature and Open MPI's `mpirun`; without `mpirun` the tests skip, unless
//! `FDFA_REQUIRE_MPI=1` (as CI sets it) makes that a failure.

#![cfg(feature = "mpi")]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

/// Training samples: 8 batches of 64 and a last batch of 8, which 3 ranks split 2, 3, 3.
const TRAIN: &str = "520";
const TEST: &str = "300";

fn mpirun_or_skip(test: &str) -> bool {
    let found = Command::new("mpirun").arg("--version").output().is_ok();
    if !found {
        assert!(
            std::env::var("FDFA_REQUIRE_MPI").as_deref() != Ok("1"),
            "{test}: mpirun is not installed and FDFA_REQUIRE_MPI=1"
        );
        eprintln!("{test}: skipped, mpirun is not installed (apt-get install openmpi-bin)");
    }
    found
}

/// The `mnist` example built with the `mpi` feature, next to this test's binary.
fn example() -> PathBuf {
    let status = Command::new(env!("CARGO"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "build",
            "--quiet",
            "--release",
            "--features",
            "mpi",
            "--example",
            "mnist",
        ])
        .status()
        .unwrap();
    assert!(status.success(), "building the mnist example failed");
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test> -> target/release/examples/mnist
    let target = exe.parent().unwrap().parent().unwrap().parent().unwrap();
    target.join("release/examples/mnist")
}

struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn scratch(name: &str) -> Scratch {
    let dir = std::env::temp_dir().join(format!("fdfa-mpi-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    Scratch(dir)
}

/// Runs the example on `ranks` MPI ranks (0: one process without MPI) with one thread each;
/// returns its stdout.
fn run(exe: &Path, ranks: usize, args: &[&str]) -> String {
    let mut cmd = match ranks {
        0 => Command::new(exe),
        n => {
            let mut c = Command::new("mpirun");
            c.args([
                "--allow-run-as-root",
                "--oversubscribe",
                "-n",
                &n.to_string(),
            ])
            .arg(exe)
            .arg("--distributed");
            c
        }
    };
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/mnist");
    let out = cmd
        .args([
            "--threads",
            "1",
            "--train-samples",
            TRAIN,
            "--test-samples",
            TEST,
        ])
        .arg("--data-dir")
        .arg(&data)
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{ranks} ranks, {args:?}:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The folder a run printed as its checkpoint folder.
fn checkpoint_of(stdout: &str) -> PathBuf {
    let line = stdout
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("checkpoint saved to "))
        .unwrap_or_else(|| panic!("no checkpoint in:\n{stdout}"));
    PathBuf::from(line.split(" (").next().unwrap())
}

/// The CSV records (epoch, training loss, test loss, test accuracy) of a run.
fn records(stdout: &str) -> Vec<[f64; 4]> {
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("logging to "))
        .unwrap_or_else(|| panic!("no log in:\n{stdout}"));
    std::fs::read_to_string(line)
        .unwrap()
        .lines()
        .skip(1)
        .map(|row| {
            let v: Vec<f64> = row.split(',').map(|x| x.parse().unwrap()).collect();
            [v[0], v[1], v[2], v[3]]
        })
        .collect()
}

/// Two runs of one algorithm: the same epochs, and losses and accuracy that differ only as
/// f32 summation order allows (Adam turns gradients near zero into full steps, so single
/// weights move by up to the learning rate; what the network computes agrees closely).
fn assert_same_algorithm(what: &str, got: &[[f64; 4]], want: &[[f64; 4]]) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g[0], w[0], "{what}");
        for k in [1, 2] {
            assert!(
                (g[k] - w[k]).abs() < 2e-3 * w[k],
                "{what}: {g:?} against {w:?}"
            );
        }
        // Three test samples of 300: a network one epoch into training has many inputs
        // near a decision boundary.
        assert!((g[3] - w[3]).abs() <= 1.0, "{what}: {g:?} against {w:?}");
    }
}

#[test]
fn every_rule_on_two_and_three_ranks_trains_as_one_process() {
    if !mpirun_or_skip("every_rule_on_two_and_three_ranks_trains_as_one_process")
        || common::mnist_or_skip("mpi").is_none()
    {
        return;
    }
    let exe = example();
    let dir = scratch("rules");
    for net in [&[][..], &["--conv"][..]] {
        for rule in ["BP", "DFA", "DKP", "FDFA"] {
            let log = dir.0.join(format!("{rule}{}", net.len()));
            let log = log.to_str().unwrap();
            let mut args = vec!["--epochs", "1", "--train-mode", rule, "--log-dir", log];
            args.extend(net);
            let alone = records(&run(&exe, 0, &args));
            for ranks in [2, 3] {
                let got = records(&run(&exe, ranks, &args));
                assert_same_algorithm(&format!("{rule} {net:?} on {ranks} ranks"), &got, &alone);
            }
        }
    }
}

#[test]
fn runs_repeat_bit_for_bit_and_checkpoints_resume_on_any_number_of_ranks() {
    if !mpirun_or_skip("runs_repeat_bit_for_bit_and_checkpoints_resume_on_any_number_of_ranks")
        || common::mnist_or_skip("mpi").is_none()
    {
        return;
    }
    let exe = example();
    let dir = scratch("resume");
    let log = |name: &str| dir.0.join(name).to_str().unwrap().to_string();
    let weights = |stdout: &str| {
        let dir = checkpoint_of(stdout);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
            .collect();
        files.sort();
        std::fs::read(files.last().expect("a model file")).unwrap()
    };
    let args = |epochs: &'static str, log: &str| -> Vec<String> {
        [
            "--conv",
            "--train-mode",
            "FDFA",
            "--epochs",
            epochs,
            "--log-dir",
            log,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    // Two epochs on 3 ranks, twice: the same bytes.
    let a = run(&exe, 3, &strs(&args("2", &log("a"))));
    let b = run(&exe, 3, &strs(&args("2", &log("b"))));
    assert_eq!(weights(&a), weights(&b), "two runs on 3 ranks");
    let whole = records(&a);
    // One epoch on 3 ranks, then the second on 3, on 2 and on one process.
    let first = run(&exe, 3, &strs(&args("1", &log("c"))));
    let saved = checkpoint_of(&first);
    for ranks in [3, 2, 0] {
        let copy = dir.0.join(format!("resume-{ranks}"));
        copy_dir(&saved, &copy);
        let resumed = run(
            &exe,
            ranks,
            &["--resume", copy.to_str().unwrap(), "--epochs", "2"],
        );
        assert!(resumed.contains("resuming from"), "{resumed}");
        let got = records(&resumed);
        if ranks == 3 {
            assert_eq!(got, whole, "resumed on the same 3 ranks");
            assert_eq!(
                weights(&resumed),
                weights(&a),
                "resumed on the same 3 ranks"
            );
        } else {
            assert_same_algorithm(&format!("resumed on {ranks} ranks"), &got, &whole);
        }
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn block_parallel_on_two_and_three_ranks_is_the_single_process_run_bit_for_bit() {
    if !mpirun_or_skip("block_parallel_on_two_and_three_ranks_is_the_single_process_run")
        || common::mnist_or_skip("mpi").is_none()
    {
        return;
    }
    let exe = example();
    let dir = scratch("blocks");
    // FC-2 has 3 blocks and the CNN 4: every split of them over 2 and 3 ranks.
    for net in [&[][..], &["--conv"][..]] {
        for rule in ["BP", "DFA", "DKP", "FDFA"] {
            let log = dir.0.join(format!("{rule}{}", net.len()));
            let log = log.to_str().unwrap();
            let mut args = vec!["--epochs", "2", "--train-mode", rule, "--log-dir", log];
            args.extend(net);
            let alone = records(&run(&exe, 0, &args));
            args.push("--block-parallel");
            for ranks in [2, 3] {
                let got = records(&run(&exe, ranks, &args));
                assert_eq!(got, alone, "{rule} {net:?} block-parallel on {ranks} ranks");
            }
        }
    }
}
