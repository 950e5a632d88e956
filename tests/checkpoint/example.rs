//! The `mnist` example end to end: a NaN stops it with a message naming the epoch, the batch
//! and the tensor, and keeps the last good checkpoint; Ctrl-C saves and exits cleanly; a
//! resumed run writes the same log as the run that was never stopped.
//!
//! The example trains on a few hundred samples (hidden `--train-samples`/`--test-samples`)
//! so that a debug build takes seconds.

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use super::TempDir;

/// The `mnist` example of this test binary's profile, built once (a no-op when it is up to
/// date) in the same target folder.
fn mnist_example() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        // <target>/<profile>/deps/checkpoint-<hash>
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

/// Flags of a small, quick run logging under `log_dir`.
fn small(log_dir: &Path, more: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "--train-samples",
        "256",
        "--test-samples",
        "128",
        "--seed",
        "3",
        "--log-dir",
    ]
    .map(String::from)
    .to_vec();
    args.push(log_dir.display().to_string());
    args.extend(more.iter().map(|s| s.to_string()));
    args
}

fn run(args: &[String]) -> Output {
    Command::new(mnist_example()).args(args).output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The text after `prefix` up to `end` on the first line that has it.
fn after(output: &str, prefix: &str, end: &str) -> String {
    let line = output.lines().find(|l| l.contains(prefix));
    let rest = line.and_then(|l| l.split(prefix).nth(1));
    let rest = rest.unwrap_or_else(|| panic!("no `{prefix}` in:\n{output}"));
    rest.split(end).next().unwrap_or(rest).to_string()
}

/// The CSV log of a run, from the `logging to` line of its output.
fn log_of(stdout: &str) -> String {
    fs::read_to_string(after(stdout, "logging to ", "\n")).unwrap()
}

#[test]
fn a_nan_stops_the_example_which_then_resumes_from_its_last_checkpoint() {
    let Some(_) = crate::common::mnist_or_skip(
        "a_nan_stops_the_example_which_then_resumes_from_its_last_checkpoint",
    ) else {
        return;
    };
    let tmp = TempDir::new("example-nan");
    let one = ["--n-layers", "1", "--epochs", "2"];
    // 4 batches an epoch: the poison lands before epoch 2's second batch.
    let mut args = small(&tmp.path().join("a"), &one);
    args.extend(["--inject-nan-at-batch", "6"].map(String::from));
    let out = run(&args);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("error: non-finite value in fc_dfa.0.feedbacks.grad at epoch 2, batch 2"),
        "{stderr}"
    );
    let dir = after(&stderr, "the last good checkpoint is ", ";");
    assert!(stdout.contains(&format!("checkpoint saved to {dir} (after epoch 1)")));

    let resumed = run(&["--resume".to_string(), dir]);
    let resumed_out = text(&resumed.stdout);
    assert!(
        resumed.status.success(),
        "{resumed_out}\n{}",
        text(&resumed.stderr)
    );
    assert!(resumed_out.contains("(after epoch 1)"), "{resumed_out}");

    let clean = run(&small(&tmp.path().join("b"), &one));
    assert!(clean.status.success());
    let log = log_of(&text(&clean.stdout));
    assert_eq!(log.lines().count(), 3, "{log}");
    assert_eq!(log_of(&resumed_out), log);
}

#[test]
fn an_absurd_learning_rate_stops_the_example_with_the_tensor_named() {
    let Some(_) = crate::common::mnist_or_skip(
        "an_absurd_learning_rate_stops_the_example_with_the_tensor_named",
    ) else {
        return;
    };
    let tmp = TempDir::new("example-lr");
    let out = run(&small(
        tmp.path(),
        &["--n-layers", "1", "--epochs", "1", "--lr", "1e30"],
    ));
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let message = after(&stderr, "error: non-finite value in ", "\n");
    let (tensor, position) = message.split_once(" at ").unwrap();
    assert!(!tensor.is_empty());
    assert!(position.starts_with("epoch 1, batch "), "{message}");
    assert!(stderr.contains("no checkpoint was saved before the error"));
}

#[test]
fn resuming_with_another_rule_is_refused_naming_the_setting() {
    let Some(_) =
        crate::common::mnist_or_skip("resuming_with_another_rule_is_refused_naming_the_setting")
    else {
        return;
    };
    let tmp = TempDir::new("example-refused");
    let out = run(&small(tmp.path(), &["--n-layers", "0", "--epochs", "1"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let dir = after(&text(&out.stdout), "checkpoint saved to ", " (");
    let refused = run(&[
        "--resume".to_string(),
        dir.clone(),
        "--train-mode".to_string(),
        "DKP".to_string(),
    ]);
    assert_eq!(refused.status.code(), Some(1));
    assert_eq!(
        text(&refused.stderr).trim(),
        "error: incompatible train-mode: saved `FDFA`, requested `DKP`"
    );
    // The number of epochs may change.
    let more = run(&[
        "--resume".to_string(),
        dir,
        "--epochs".to_string(),
        "2".to_string(),
    ]);
    assert!(more.status.success(), "{}", text(&more.stderr));
    assert_eq!(log_of(&text(&more.stdout)).lines().count(), 3);
}

#[cfg(unix)]
#[test]
fn ctrl_c_saves_exits_cleanly_and_the_run_resumes_exactly() {
    let Some(_) =
        crate::common::mnist_or_skip("ctrl_c_saves_exits_cleanly_and_the_run_resumes_exactly")
    else {
        return;
    };
    let tmp = TempDir::new("example-ctrl-c");
    let mut args = small(&tmp.path().join("a"), &["--n-layers", "0"]);
    args.extend(["--epochs", "1000", "--checkpoint-every", "3"].map(String::from));
    let mut child = Command::new(mnist_example())
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut seen = String::new();
    while !seen.contains("checkpoint saved to") {
        let mut line = String::new();
        assert_ne!(stdout.read_line(&mut line).unwrap(), 0, "{seen}");
        seen.push_str(&line);
    }
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    stdout.read_to_string(&mut seen).unwrap();
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(status.code(), Some(0), "{seen}\n{stderr}");
    assert!(
        stderr.contains("Ctrl-C: stopping after this batch"),
        "{stderr}"
    );
    let dir = after(&seen, "; continue with --resume ", "\n");

    let state: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(Path::new(&dir).join("state.json")).unwrap())
            .unwrap();
    let done = state["progress"]["epoch"].as_u64().unwrap();
    let epochs = (done + 2).to_string();
    let resumed = run(&[
        "--resume".to_string(),
        dir,
        "--epochs".to_string(),
        epochs.clone(),
    ]);
    assert!(resumed.status.success(), "{}", text(&resumed.stderr));

    let clean = run(&small(
        &tmp.path().join("b"),
        &["--n-layers", "0", "--epochs", &epochs],
    ));
    assert!(clean.status.success());
    let log = log_of(&text(&clean.stdout));
    assert_eq!(log.lines().count() as u64, done + 3, "{log}");
    assert_eq!(log_of(&text(&resumed.stdout)), log);
}
