//! Every dataset example runs end to end with `--dry-run`: MNIST from the repository,
//! Fashion-MNIST from the system folder when installed (else MNIST's files, which have the
//! same layout), and CIFAR-10/100 from tiny files in the official binary layout written here.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

/// A scratch folder, removed when dropped.
struct Scratch(PathBuf);

impl std::ops::Deref for Scratch {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn scratch(name: &str) -> Scratch {
    let dir = std::env::temp_dir().join(format!("fdfa-examples-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    Scratch(dir)
}

/// Runs `cargo run --example <name> -- <args>` in this test's profile; returns the CSV logs
/// it wrote under `log_dir`.
fn run_example(name: &str, args: &[&str], log_dir: &Path) -> Vec<String> {
    let mut cmd = Command::new(env!("CARGO"));
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["run", "--quiet", "--example", name]);
    if !cfg!(debug_assertions) {
        cmd.arg("--release");
    }
    let out = cmd
        .arg("--")
        .args(args)
        .args(["--dry-run", "--log-dir", log_dir.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{name} {args:?} failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("Epoch 1:"),
        "{name} printed no epoch summary:\n{stdout}"
    );
    let mut logs = Vec::new();
    for mode in std::fs::read_dir(log_dir).unwrap() {
        for file in std::fs::read_dir(mode.unwrap().path()).unwrap() {
            logs.push(std::fs::read_to_string(file.unwrap().path()).unwrap());
        }
    }
    logs
}

fn assert_one_row(logs: &[String]) {
    assert_eq!(logs.len(), 1);
    let lines: Vec<&str> = logs[0].lines().collect();
    assert_eq!(lines[0], "Epoch,Training Loss,Test Loss,Test Accuracy");
    assert_eq!(lines.len(), 2, "one row per epoch: {lines:?}");
    let fields: Vec<f64> = lines[1].split(',').map(|f| f.parse().unwrap()).collect();
    assert_eq!(fields[0], 1.0);
    assert!(fields[1..].iter().all(|v| v.is_finite()));
}

/// Writes `records` CIFAR records of `label_bytes` label bytes (1 for CIFAR-10, 2 for
/// CIFAR-100) and 3072 pixels.
fn write_cifar(path: &Path, records: usize, label_bytes: usize, classes: u8) {
    let mut bytes = Vec::new();
    for i in 0..records {
        for _ in 0..label_bytes {
            bytes.push((i % classes as usize) as u8);
        }
        bytes.extend((0..3072).map(|j| ((i * 31 + j * 7) % 256) as u8));
    }
    std::fs::write(path, bytes).unwrap();
}

#[test]
#[cfg_attr(
    debug_assertions,
    ignore = "builds and runs the examples: run with --release"
)]
fn mnist_fc_and_conv_dry_runs() {
    let Some(_) = common::mnist_or_skip("mnist_fc_and_conv_dry_runs") else {
        return;
    };
    for args in [
        &["--train-mode", "FDFA"][..],
        &["--conv", "--train-mode", "DKP"],
        &["--n-layers", "3", "--train-mode", "BP"],
    ] {
        let logs = scratch("mnist");
        assert_one_row(&run_example("mnist", args, &logs));
    }
}

#[test]
#[cfg_attr(
    debug_assertions,
    ignore = "builds and runs the examples: run with --release"
)]
fn fashion_mnist_dry_run() {
    let system = Path::new("/usr/share/datasets/fashion-mnist");
    let dir = if system.join("train-images-idx3-ubyte.gz").exists() {
        system.to_path_buf()
    } else {
        let Some(mnist) = common::mnist_or_skip("fashion_mnist_dry_run") else {
            return;
        };
        mnist
    };
    let logs = scratch("fashion");
    assert_one_row(&run_example(
        "fashion_mnist",
        &["--data-dir", dir.to_str().unwrap()],
        &logs,
    ));
}

#[test]
#[cfg_attr(
    debug_assertions,
    ignore = "builds and runs the examples: run with --release"
)]
fn cifar10_dry_runs_on_tiny_binary_files() {
    let data = scratch("cifar10-data");
    for i in 1..=5 {
        write_cifar(&data.join(format!("data_batch_{i}.bin")), 16, 1, 10);
    }
    write_cifar(&data.join("test_batch.bin"), 16, 1, 10);
    for args in [&[][..], &["--conv"]] {
        let logs = scratch("cifar10");
        let mut all = vec!["--data-dir", data.to_str().unwrap(), "--batch-size", "8"];
        all.extend_from_slice(args);
        assert_one_row(&run_example("cifar10", &all, &logs));
    }
}

#[test]
#[cfg_attr(
    debug_assertions,
    ignore = "builds and runs the examples: run with --release"
)]
fn cifar100_alexnet_dry_run_on_tiny_binary_files() {
    let data = scratch("cifar100-data");
    write_cifar(&data.join("train.bin"), 8, 2, 100);
    write_cifar(&data.join("test.bin"), 4, 2, 100);
    let logs = scratch("cifar100");
    let args = [
        "--data-dir",
        data.to_str().unwrap(),
        "--batch-size",
        "4",
        "--test-batch-size",
        "4",
    ];
    assert_one_row(&run_example("cifar100", &args, &logs));
}

#[test]
#[cfg_attr(
    debug_assertions,
    ignore = "builds and runs the examples: run with --release"
)]
fn wrong_flag_values_get_a_clear_message() {
    // A folder without MNIST: `--download` either says this build cannot download (the
    // default features) or which mirrors it could not reach (this machine reaches none).
    let empty = scratch("no-mnist");
    for (args, needle) in [
        (&["--train-mode", "SGD"][..], "SGD"),
        (&["--lr", "-1"], "non-negative"),
        (&["--batch-size", "0"], "batch-size"),
        (&["--gamma", "2"], "(0, 1]"),
        (
            &[
                "--download",
                "--dry-run",
                "--data-dir",
                empty.to_str().unwrap(),
            ],
            "download",
        ),
    ] {
        let mut cmd = Command::new(env!("CARGO"));
        cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["run", "--quiet", "--example", "mnist"]);
        if !cfg!(debug_assertions) {
            cmd.arg("--release");
        }
        let out = cmd.arg("--").args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}

#[test]
#[cfg_attr(
    debug_assertions,
    ignore = "builds and runs the examples: run with --release"
)]
fn a_rule_written_outside_the_crate_trains() {
    let Some(_) = common::mnist_or_skip("a_rule_written_outside_the_crate_trains") else {
        return;
    };
    let mut cmd = Command::new(env!("CARGO"));
    cmd.current_dir(env!("CARGO_MANIFEST_DIR")).args([
        "run",
        "--quiet",
        "--release",
        "--example",
        "custom_rule",
        "--",
        "1",
    ]);
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let accuracy: f64 = stdout
        .split("test accuracy ")
        .nth(1)
        .and_then(|s| s.trim().trim_end_matches('%').parse().ok())
        .unwrap_or_else(|| panic!("no accuracy in {stdout}"));
    assert!(
        accuracy > 90.0,
        "sign-feedback DFA reached {accuracy}% after one epoch"
    );
}

#[test]
#[cfg_attr(
    debug_assertions,
    ignore = "builds and runs the examples: run with --release"
)]
fn mnist_dry_run_measures_alignment_beside_the_log() {
    let Some(_) = common::mnist_or_skip("mnist_dry_run_measures_alignment_beside_the_log") else {
        return;
    };
    let logs = scratch("alignment");
    let args = [
        "--train-mode",
        "FDFA",
        "--measure-alignment",
        "1",
        "--alignment-repeats",
        "2",
        "--alignment-jacobian-samples",
        "2",
    ];
    let files = run_example("mnist", &args, &logs);
    let (alignment, training): (Vec<&String>, Vec<&String>) =
        files.iter().partition(|f| f.starts_with("epoch,batch,"));
    assert_one_row(&training.into_iter().cloned().collect::<Vec<_>>());
    assert_eq!(alignment.len(), 1);
    let lines: Vec<&str> = alignment[0].lines().collect();
    // Measured before the first (and, in a dry run, only) batch, at both hidden layers.
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(lines[1].starts_with("1,1,938,0,fc_dfa.0,"), "{}", lines[1]);
    assert!(lines[2].starts_with("1,1,938,1,fc_dfa.1,"), "{}", lines[2]);
}

/// Runs an example without arguments and returns what it printed.
fn run_plain(name: &str) -> String {
    let mut cmd = Command::new(env!("CARGO"));
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["run", "--quiet", "--example", name]);
    if !cfg!(debug_assertions) {
        cmd.arg("--release");
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{name} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The number after `prefix` on the line that starts with it.
fn number_after(text: &str, prefix: &str) -> f64 {
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no line starting with {prefix:?} in:\n{text}"));
    let digits: String = line
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == '-' || *c == 'e')
        .collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("no number in {line:?}"))
}

#[test]
fn the_library_example_trains_predicts_saves_and_differentiates() {
    let out = run_plain("library");
    assert!(number_after(&out, "epoch 3: test accuracy") > 90.0, "{out}");
    assert!(number_after(&out, "predict:") >= 460.0, "{out}");
    assert!(out.contains("reloaded: same predictions: true"), "{out}");
    let jvp = out.lines().find(|l| l.starts_with("jvp:")).unwrap();
    let numbers: Vec<f32> = jvp
        .split(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-'))
        .filter_map(|s| s.parse().ok())
        .collect();
    assert_eq!(numbers.len(), 4, "{jvp}");
    for o in 0..2 {
        let (exact, fd) = (numbers[o], numbers[2 + o]);
        assert!((exact - fd).abs() <= 1e-2 * exact.abs().max(1.0), "{jvp}");
    }
}

#[test]
fn the_jvp_example_agrees_with_central_differences() {
    let out = run_plain("jvp");
    assert!(
        out.contains("Jacobian: 64 columns (one per pixel) of 3 logits"),
        "{out}"
    );
    assert!(out.contains("agreement: ok"), "{out}");
    let worst = number_after(&out, "worst |JVP - central difference|:");
    let scale = number_after(&out, "largest |d logit / d pixel|:");
    assert!(scale > 0.0 && worst <= 1e-2 * scale, "{out}");
}

/// Runs `replay_epoch` with `args`; returns its status, stdout and stderr.
fn run_replay(args: &[&str]) -> (bool, String, String) {
    let mut cmd = Command::new(env!("CARGO"));
    cmd.current_dir(env!("CARGO_MANIFEST_DIR")).args([
        "run",
        "--quiet",
        "--example",
        "replay_epoch",
    ]);
    if !cfg!(debug_assertions) {
        cmd.arg("--release");
    }
    let out = cmd.arg("--").args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The number after `"key":` in a JSON line.
fn json_number(line: &str, key: &str) -> f64 {
    let pat = format!("\"{key}\":");
    let rest = &line[line
        .find(&pat)
        .unwrap_or_else(|| panic!("no {key} in {line}"))
        + pat.len()..];
    let end = rest.find([',', '}']).unwrap();
    rest[..end].parse().unwrap()
}

#[test]
#[cfg_attr(
    debug_assertions,
    ignore = "builds and runs the examples: run with --release"
)]
fn replay_epoch_is_the_library_loop_on_the_given_batches() {
    use fdfa::prelude::*;
    let Some(dir) = common::mnist_or_skip("replay_epoch_is_the_library_loop_on_the_given_batches")
    else {
        return;
    };
    let tmp = scratch("replay");
    // DKP: the second optimizer too. Two epochs of 100 samples (a batch of 64, then a short
    // one of 36), in an order that is not the identity.
    let mut rng = fdfa::init::rng(7);
    let model = fdfa::model::fc(&[1, 28, 28], 2, 800, 10, &mut rng).unwrap();
    let init = tmp.join("init.safetensors");
    save_model(&init, &model).unwrap();
    let order: Vec<usize> = (0..200).map(|i| (i * 7919 + 13) % 60_000).collect();
    let order_file = tmp.join("order.txt");
    let text: String = order.iter().map(|i| format!("{i}\n")).collect();
    std::fs::write(&order_file, text).unwrap();
    let (ok, stdout, stderr) = run_replay(&[
        "--init",
        init.to_str().unwrap(),
        "--order",
        order_file.to_str().unwrap(),
        "--epochs",
        "2",
        "--rule",
        "DKP",
        "--data-dir",
        dir.to_str().unwrap(),
    ]);
    assert!(ok, "replay_epoch failed:\n{stdout}\n{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");

    // The same epochs through the library: the rule on a model loaded from the same file.
    let (train, test) = fdfa::data::load_mnist(&dir).unwrap();
    let mut model = fdfa::model::fc(&[1, 28, 28], 2, 800, 10, &mut fdfa::init::rng(99)).unwrap();
    load_model(&init, &mut model).unwrap();
    let rule = RuleKind::Dkp
        .build(&model, 1, &mut fdfa::init::rng(99))
        .unwrap();
    let mut trainer = Trainer::new(model, rule, TrainConfig::default()).unwrap();
    for (e, part) in order.chunks(100).enumerate() {
        let mut sum = 0.0;
        for batch in part.chunks(64) {
            let mut x = Tensor::zeros(&[batch.len(), 1, 28, 28]);
            let mut t = vec![0; batch.len()];
            train.fill_batch(batch, 0, x.data_mut(), &mut t).unwrap();
            sum += f64::from(trainer.train_batch(&x, &t).unwrap());
        }
        let record = trainer.finish_epoch(sum / 2.0, &test).unwrap();
        let line = lines[e];
        assert_eq!(json_number(line, "epoch"), (e + 1) as f64, "{line}");
        assert_eq!(json_number(line, "batches"), 2.0, "{line}");
        // JSON keeps every digit of an f64: the same computation gives the same bits.
        assert_eq!(json_number(line, "train_loss"), record.train_loss, "{line}");
        assert_eq!(json_number(line, "test_loss"), record.test_loss, "{line}");
        assert_eq!(
            json_number(line, "test_accuracy"),
            record.test_accuracy,
            "{line}"
        );
    }

    // An index past the training set, and an order that does not split into the epochs:
    // a message and a failure status, no panic.
    std::fs::write(&order_file, "3\n60000\n").unwrap();
    let base = [
        "--init",
        init.to_str().unwrap(),
        "--order",
        order_file.to_str().unwrap(),
        "--data-dir",
        dir.to_str().unwrap(),
    ];
    let (ok, _, stderr) = run_replay(&base);
    assert!(
        !ok && stderr.starts_with("error:") && !stderr.contains("panicked"),
        "{stderr}"
    );
    std::fs::write(&order_file, "3\n4\n5\n").unwrap();
    let (ok, _, stderr) = run_replay(&[&base[..], &["--epochs", "2"]].concat());
    assert!(!ok && stderr.contains("equal epochs"), "{stderr}");
}
