//! Hostile and unlucky users: each test reproduces an attack on the examples or the
//! checkpoints (issue 15) and asserts that it is refused with a message that names the
//! file, the field or the flag, or that the run does the right thing.
//!
//! One binary (`cargo test --test hostile`), one file per area. Library tests train FC-1
//! of width 16 on synthetic 28x28 images; example tests run the `mnist` example of this
//! profile on a few hundred samples of the repository's MNIST.

#[path = "../common/mod.rs"]
mod common;

mod accepted;
mod checksum;
mod data_files;
mod examples;
mod files;
mod tensor_file;

use std::fs;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use fdfa::data::Dataset;
use fdfa::rules::RuleKind;
use fdfa::train::checkpoint::{RunInfo, save_trainer};
use fdfa::train::{TrainConfig, Trainer};

/// A fresh folder under the system's temporary folder, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("fdfa-hostile-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// 128 synthetic 28x28 images of 10 classes.
pub fn data() -> &'static Dataset {
    static DATA: OnceLock<Dataset> = OnceLock::new();
    DATA.get_or_init(|| {
        let n = 128;
        let pixels = (0..n * 784)
            .map(|i| ((i * 37 + i / 784 * 11) % 256) as u8)
            .collect();
        let labels = (0..n).map(|i| (i % 10) as u32).collect();
        Dataset::new(pixels, labels, [1, 28, 28], 10).unwrap()
    })
}

/// An FDFA trainer of FC-`layers` (width 16) on [`data`].
pub fn trainer(layers: usize) -> Trainer {
    let mut rng = fdfa::init::rng(5);
    let model = fdfa::model::fc(&[1, 28, 28], layers, 16, 10, &mut rng).unwrap();
    let rule = RuleKind::Fdfa.build(&model, 1, &mut rng).unwrap();
    let config = TrainConfig::default()
        .with_batch_size(32)
        .with_test_batch_size(64)
        .with_epochs(2)
        .with_lr(1e-3)
        .with_b_lr(1e-3)
        .with_seed(5);
    Trainer::new(model, rule, config).unwrap()
}

/// A checkpoint of FC-`layers` after two batches (so that the optimizers hold moments) in
/// `dir`; returns the path of its tensor file.
pub fn saved(dir: &Path, layers: usize) -> PathBuf {
    let mut t = trainer(layers);
    t.train_epoch(data(), &mut |ev| match ev.batch {
        2 => ControlFlow::Break(()),
        _ => ControlFlow::Continue(()),
    })
    .unwrap();
    save_trainer(dir, &mut t, &RunInfo::default()).unwrap();
    dir.join("model-000001.safetensors")
}

/// The `mnist` example of this test binary's profile, built once in the same target folder.
pub fn mnist_example() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        // <target>/<profile>/deps/hostile-<hash>
        let exe = std::env::current_exe().unwrap();
        let profile_dir = exe.parent().and_then(Path::parent).unwrap();
        let target = profile_dir.parent().unwrap();
        let mut cargo = Command::new(env!("CARGO"));
        cargo.args(["build", "--quiet", "--example", "mnist", "--target-dir"]);
        cargo.arg(target);
        if profile_dir.file_name().is_some_and(|p| p == "release") {
            cargo.arg("--release");
        }
        let status = cargo.status().unwrap();
        assert!(status.success(), "cargo build --example mnist failed");
        let bin = profile_dir
            .join("examples")
            .join(format!("mnist{}", std::env::consts::EXE_SUFFIX));
        assert!(bin.is_file(), "{} was not built", bin.display());
        bin
    })
}

/// Flags of a small, quick FC-1 run logging under `log_dir`; `more` may override them.
pub fn small(log_dir: &Path, more: &[&str]) -> Vec<String> {
    let log_dir = log_dir.display().to_string();
    let defaults = [
        ("--train-samples", "192"),
        ("--test-samples", "64"),
        ("--n-layers", "1"),
        ("--seed", "3"),
        (
            "--data-dir",
            concat!(env!("CARGO_MANIFEST_DIR"), "/data/mnist"),
        ),
        ("--log-dir", log_dir.as_str()),
    ];
    let mut args = Vec::new();
    for (flag, value) in defaults {
        if !more.contains(&flag) {
            args.extend([flag.to_string(), value.to_string()]);
        }
    }
    args.extend(more.iter().map(|s| s.to_string()));
    args
}

/// Runs the example with `args`.
pub fn run(args: &[String]) -> Output {
    Command::new(mnist_example()).args(args).output().unwrap()
}

/// stdout and stderr of a run, as text.
pub fn texts(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The text after `prefix` up to `end` on the first line that has it.
pub fn after(output: &str, prefix: &str, end: &str) -> String {
    let line = output.lines().find(|l| l.contains(prefix));
    let rest = line.and_then(|l| l.split(prefix).nth(1));
    let rest = rest.unwrap_or_else(|| panic!("no `{prefix}` in:\n{output}"));
    rest.split(end).next().unwrap_or(rest).to_string()
}

/// Runs the example, which must succeed; returns its stdout.
pub fn run_ok(args: &[String]) -> String {
    let out = run(args);
    let (stdout, stderr) = texts(&out);
    assert!(out.status.success(), "{args:?}:\n{stdout}\n{stderr}");
    stdout
}

/// Runs the example, which must fail with status 1; returns its stderr.
pub fn run_err(args: &[String]) -> String {
    let out = run(args);
    let (stdout, stderr) = texts(&out);
    assert_eq!(out.status.code(), Some(1), "{args:?}:\n{stdout}\n{stderr}");
    stderr
}

/// The files and folders in `dir`, sorted.
pub fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}
