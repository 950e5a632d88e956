//! Attacks on the `mnist` example: run folders shared by runs started in the same second
//! (item 1), paths in `state.json` (item 2), two resumes at once (item 3), full disks and
//! stale temporary files (item 4), dry runs of resumed runs (item 5), absurd flag values
//! (item 6), data that does not fit the run (item 8), and the resume message (item 10).

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Command;

use fdfa::train::checkpoint::CheckpointLock;

use super::checksum::without_checksums;
use super::data_files::mnist_like;
use super::{TempDir, after, mnist_example, names, run, run_err, run_ok, small, texts};

/// The checkpoint folder a run reported.
fn checkpoint_of(stdout: &str) -> PathBuf {
    PathBuf::from(after(stdout, "checkpoint saved to ", " ("))
}

/// The CSV log a run reported.
fn log_of(stdout: &str) -> PathBuf {
    PathBuf::from(after(stdout, "logging to ", "\n"))
}

/// Every file under `dir` with its bytes, sorted by path.
fn tree(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut all = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let bytes = fs::read(&p).unwrap();
                all.push((p, bytes));
            }
        }
    }
    all.sort();
    all
}

/// Edits `state.json` of `ckpt` with its checksums removed (as an older fdfa wrote it), so
/// that what is tested is the check of the field, not the checksum.
fn edit_legacy(ckpt: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = ckpt.join("state.json");
    let text = without_checksums(&fs::read_to_string(&path).unwrap());
    let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
    edit(&mut json);
    fs::write(&path, serde_json::to_string_pretty(&json).unwrap()).unwrap();
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

#[test]
fn runs_started_together_into_one_log_dir_stay_separate_and_complete() {
    let Some(_) = crate::common::mnist_or_skip(
        "runs_started_together_into_one_log_dir_stay_separate_and_complete",
    ) else {
        return;
    };
    let tmp = TempDir::new("sweep");
    let logs = tmp.path().join("results");
    // A seed sweep: 4 processes started in the same instant.
    let children: Vec<_> = (1..=4)
        .map(|seed| {
            let seed = seed.to_string();
            Command::new(mnist_example())
                .args(small(&logs, &["--epochs", "1", "--seed", &seed]))
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        let (stdout, stderr) = texts(&out);
        assert!(out.status.success(), "{stdout}\n{stderr}");
    }
    // And one more after them, in the same second or not.
    run_ok(&small(&logs, &["--epochs", "1"]));
    let files = names(&logs.join("FDFA"));
    let csvs: Vec<&String> = files.iter().filter(|f| f.ends_with(".csv")).collect();
    let ckpts: Vec<&String> = files.iter().filter(|f| f.ends_with(".ckpt")).collect();
    assert_eq!((csvs.len(), ckpts.len()), (5, 5), "{files:?}");
    for csv in csvs {
        let text = fs::read_to_string(logs.join("FDFA").join(csv)).unwrap();
        assert_eq!(text.lines().count(), 2, "{csv}: {text}");
        let ckpt = logs.join("FDFA").join(csv.replace(".csv", ".ckpt"));
        assert_eq!(
            names(&ckpt),
            ["lock", "model-000001.safetensors", "state.json"]
        );
    }
}

#[test]
fn paths_in_state_json_are_not_trusted_and_the_log_follows_the_checkpoint() {
    let Some(_) = crate::common::mnist_or_skip(
        "paths_in_state_json_are_not_trusted_and_the_log_follows_the_checkpoint",
    ) else {
        return;
    };
    let tmp = TempDir::new("log-path");
    let stdout = run_ok(&small(&tmp.path().join("a"), &["--epochs", "1"]));
    let ckpt = checkpoint_of(&stdout);
    let log = log_of(&stdout);
    let evil = tmp.path().join("evil");
    edit_legacy(&ckpt, |json| {
        json["run"]["log"] = evil.join("x/a/b.csv").display().to_string().into();
        json["run"]["settings"]["log-dir"] = evil.display().to_string().into();
    });
    // Nothing left to train: nothing written anywhere.
    let before = fs::read(&log).unwrap();
    let out = run_ok(&strings(&[
        "--resume",
        ckpt.to_str().unwrap(),
        "--epochs",
        "1",
    ]));
    assert!(out.contains("nothing to train"), "{out}");
    assert!(!evil.exists());
    assert_eq!(fs::read(&log).unwrap(), before);

    // Training on: the log next to the checkpoint grows.
    let out = run_ok(&strings(&[
        "--resume",
        ckpt.to_str().unwrap(),
        "--epochs",
        "2",
    ]));
    assert_eq!(log_of(&out), log);
    assert!(!evil.exists());
    assert_eq!(fs::read_to_string(&log).unwrap().lines().count(), 3);

    // A relative escape is not followed either.
    edit_legacy(&ckpt, |json| json["run"]["log"] = "../x/a/b.csv".into());
    run_ok(&strings(&[
        "--resume",
        ckpt.to_str().unwrap(),
        "--epochs",
        "3",
    ]));
    assert!(!ckpt.join("../x").exists());

    // --log-dir on resume is honoured.
    let other = tmp.path().join("other");
    let out = run_ok(&strings(&[
        "--resume",
        ckpt.to_str().unwrap(),
        "--epochs",
        "4",
        "--log-dir",
        other.to_str().unwrap(),
    ]));
    let moved_log = other.join("FDFA").join(log.file_name().unwrap());
    assert_eq!(log_of(&out), moved_log);
    assert_eq!(fs::read_to_string(&moved_log).unwrap().lines().count(), 5);

    // A checkpoint moved elsewhere writes its log next to itself.
    let elsewhere = tmp.path().join("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    let moved = elsewhere.join(ckpt.file_name().unwrap());
    fs::rename(&ckpt, &moved).unwrap();
    let out = run_ok(&strings(&[
        "--resume",
        moved.to_str().unwrap(),
        "--epochs",
        "5",
    ]));
    let next_to_it = elsewhere.join(log.file_name().unwrap());
    assert_eq!(log_of(&out), next_to_it);
    assert_eq!(fs::read_to_string(&next_to_it).unwrap().lines().count(), 6);
}

#[test]
fn a_second_process_on_the_same_checkpoint_is_refused() {
    let Some(_) =
        crate::common::mnist_or_skip("a_second_process_on_the_same_checkpoint_is_refused")
    else {
        return;
    };
    let tmp = TempDir::new("two-resumes");
    let stdout = run_ok(&small(tmp.path(), &["--epochs", "1"]));
    let ckpt = checkpoint_of(&stdout);
    let before = tree(tmp.path());
    let held = CheckpointLock::acquire(&ckpt).unwrap();
    let stderr = run_err(&strings(&[
        "--resume",
        ckpt.to_str().unwrap(),
        "--epochs",
        "2",
    ]));
    assert!(
        stderr.contains(&format!(
            "error: checkpoint {}: in use by another run (a process holds {}); wait for it to \
             finish or stop it",
            ckpt.display(),
            ckpt.join("lock").display()
        )),
        "{stderr}"
    );
    assert_eq!(tree(tmp.path()), before, "the refused run changed files");
    drop(held);
    run_ok(&strings(&[
        "--resume",
        ckpt.to_str().unwrap(),
        "--epochs",
        "2",
    ]));
}

#[test]
fn two_processes_resuming_one_checkpoint_at_once_let_one_through() {
    let Some(_) = crate::common::mnist_or_skip(
        "two_processes_resuming_one_checkpoint_at_once_let_one_through",
    ) else {
        return;
    };
    let tmp = TempDir::new("two-processes");
    let stdout = run_ok(&small(tmp.path(), &["--epochs", "1"]));
    let ckpt = checkpoint_of(&stdout);
    let ckpt_arg = ckpt.to_str().unwrap();
    let mut first = Command::new(mnist_example())
        .args(["--resume", ckpt_arg, "--epochs", "100000"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // It prints `resuming from` once it holds the lock.
    let mut reader = BufReader::new(first.stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains("resuming from") {
        line.clear();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "the first resume ended"
        );
    }
    let stderr = run_err(&strings(&["--resume", ckpt_arg, "--epochs", "3"]));
    assert!(
        stderr.contains(&format!(
            "error: checkpoint {}: in use by another run",
            ckpt.display()
        )),
        "{stderr}"
    );
    first.kill().unwrap();
    first.wait().unwrap();
    // The operating system released the killed process's lock.
    run_ok(&strings(&["--resume", ckpt_arg, "--epochs", "3"]));
}

/// Runs the example under a file-size limit of `kib` KiB, as a full disk would stop it (with
/// SIGXFSZ ignored, writes past the limit fail with "File too large").
fn run_limited(kib: u64, args: &[String]) -> (Option<i32>, String, String) {
    let mut script = format!("trap '' XFSZ; ulimit -f {kib}; exec \"$0\"");
    for i in 1..=args.len() {
        script.push_str(&format!(" \"${i}\""));
    }
    let out = Command::new("bash")
        .arg("-c")
        .arg(script)
        .arg(mnist_example())
        .args(args)
        .output()
        .unwrap();
    let (stdout, stderr) = texts(&out);
    (out.status.code(), stdout, stderr)
}

#[cfg(unix)]
#[test]
fn a_full_disk_leaves_no_partial_files_and_resume_clears_stale_ones() {
    let Some(_) = crate::common::mnist_or_skip(
        "a_full_disk_leaves_no_partial_files_and_resume_clears_stale_ones",
    ) else {
        return;
    };
    let tmp = TempDir::new("full-disk");
    let stdout = run_ok(&small(tmp.path(), &["--epochs", "1"]));
    let ckpt = checkpoint_of(&stdout);
    let whole = names(&ckpt);
    assert_eq!(whole, ["lock", "model-000001.safetensors", "state.json"]);
    for _ in 0..2 {
        let resume = strings(&["--resume", ckpt.to_str().unwrap(), "--epochs", "2"]);
        let (code, _, stderr) = run_limited(1024, &resume);
        assert_eq!(code, Some(1), "{stderr}");
        assert!(stderr.contains("File too large"), "{stderr}");
        assert!(
            stderr.contains(&format!("the last good checkpoint is {}", ckpt.display())),
            "{stderr}"
        );
        // Each failed save cleans up after itself; the previous checkpoint stays whole.
        assert_eq!(names(&ckpt), whole);
    }

    // Temporary files a crash left are removed when the run resumes.
    fs::write(ckpt.join("model-000009.safetensors.tmp"), [0u8; 64]).unwrap();
    fs::write(ckpt.join("state.json.tmp"), b"{").unwrap();
    let out = run_ok(&strings(&[
        "--resume",
        ckpt.to_str().unwrap(),
        "--epochs",
        "2",
    ]));
    assert!(
        out.contains("removed 2 temporary file(s) of an interrupted save"),
        "{out}"
    );
    assert_eq!(
        names(&ckpt),
        ["lock", "model-000002.safetensors", "state.json"]
    );
}

#[test]
fn a_dry_run_of_a_resumed_run_touches_none_of_its_files() {
    let Some(_) =
        crate::common::mnist_or_skip("a_dry_run_of_a_resumed_run_touches_none_of_its_files")
    else {
        return;
    };
    let tmp = TempDir::new("dry-resume");
    let stdout = run_ok(&small(tmp.path(), &["--epochs", "1"]));
    let ckpt = checkpoint_of(&stdout);
    let before = tree(tmp.path());
    let out = run_ok(&strings(&[
        "--resume",
        ckpt.to_str().unwrap(),
        "--epochs",
        "2",
        "--dry-run",
    ]));
    assert!(out.contains("Epoch 2:"), "{out}");
    assert!(out.contains("and the checkpoint stay as they are"), "{out}");
    assert_eq!(
        tree(tmp.path()),
        before,
        "a dry run changed the run's files"
    );
}

#[test]
fn absurd_flag_values_are_refused_or_capped_before_anything_is_trained() {
    let Some(_) = crate::common::mnist_or_skip(
        "absurd_flag_values_are_refused_or_capped_before_anything_is_trained",
    ) else {
        return;
    };
    let tmp = TempDir::new("absurd");
    let dry = |more: &[&str]| {
        let mut args = small(tmp.path(), more);
        args.push("--dry-run".into());
        args
    };
    // Batches larger than the data are the data: they run (one batch, one chunk).
    for flag in ["--batch-size", "--test-batch-size"] {
        for value in ["18446744073709551615", "100000000000"] {
            let out = run_ok(&dry(&[flag, value]));
            assert!(out.contains("Epoch 1:"), "{flag} {value}: {out}");
        }
    }
    // What the machine cannot hold is refused, naming the flag, the estimate and the limit.
    for (flag, value, env) in [
        ("--directions", "1000000", None),
        ("--n-layers", "100000", None),
        ("--n-layers", "1000", Some("1G")),
    ] {
        let mut cmd = Command::new(mnist_example());
        cmd.args(dry(&[flag, value]));
        if let Some(limit) = env {
            cmd.env("FDFA_MEMORY_LIMIT", limit);
        }
        let out = cmd.output().unwrap();
        let (stdout, stderr) = texts(&out);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{flag} {value}: {stdout}\n{stderr}"
        );
        assert!(
            stderr.contains(&format!(
                "error: command line: invalid `{flag}`: the run would need about "
            )),
            "{stderr}"
        );
        assert!(stderr.contains("of memory ("), "{stderr}");
        assert!(stderr.contains(" available ("), "{stderr}");
        assert!(stderr.contains(&format!("; lower {flag}")), "{stderr}");
        if env.is_some() {
            assert!(stderr.contains("FDFA_MEMORY_LIMIT=1G"), "{stderr}");
        }
        assert!(!stdout.contains("Epoch"), "{stdout}");
    }
    // Threads are capped at a few per core, with a warning; also when state.json asks.
    let cores = std::thread::available_parallelism().unwrap().get();
    let out = run(&dry(&["--threads", "100000"]));
    let (stdout, stderr) = texts(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "warning: --threads 100000 is more than 4 per core on this machine's {cores} core(s); \
             using {}",
            4 * cores
        )),
        "{stderr}"
    );
    assert!(
        stdout.contains(&format!("on {} thread(s)", 4 * cores)),
        "{stdout}"
    );

    let stdout = run_ok(&small(&tmp.path().join("t"), &["--epochs", "1"]));
    let ckpt = checkpoint_of(&stdout);
    edit_legacy(&ckpt, |json| {
        json["run"]["settings"]["threads"] = "100000".into();
    });
    let out = run(&strings(&[
        "--resume",
        ckpt.to_str().unwrap(),
        "--epochs",
        "2",
    ]));
    let (_, stderr) = texts(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning: --threads 100000 is more than"),
        "{stderr}"
    );
    assert!(stderr.contains("has no checksums"), "{stderr}");
}

/// Flags of a run on the synthetic dataset in `data`.
fn synthetic(log_dir: &Path, data: &Path, more: &[&str]) -> Vec<String> {
    let mut args = strings(&["--n-layers", "1", "--seed", "2", "--batch-size", "16"]);
    args.extend(strings(&["--data-dir", data.to_str().unwrap()]));
    args.extend(strings(&["--log-dir", log_dir.to_str().unwrap()]));
    args.extend(strings(more));
    args
}

#[test]
fn data_that_does_not_fit_the_run_is_refused() {
    let tmp = TempDir::new("data-fit");
    let logs = tmp.path().join("results");
    // 16x49 images hold 784 pixels, as 28x28 ones do: still not the network's input.
    let odd = mnist_like(&tmp.path().join("odd"), 32, 16, 16, 49);
    for conv in [false, true] {
        let mut args = synthetic(&logs, &odd, &["--epochs", "1"]);
        if conv {
            args.push("--conv".into());
        }
        let stderr = run_err(&args);
        assert!(
            stderr.contains(&format!(
                "error: {}: header and size disagree: the images are 1x16x49, but the network \
                 takes 1x28x28",
                odd.display()
            )),
            "{stderr}"
        );
    }
    // An IDX file of 0 images.
    let empty = mnist_like(&tmp.path().join("empty"), 0, 16, 28, 28);
    let stderr = run_err(&synthetic(&logs, &empty, &["--epochs", "1"]));
    assert!(
        stderr.contains(&format!(
            "error: {}: holds no images (the header's count is 0)",
            empty.join("train-images-idx3-ubyte").display()
        )),
        "{stderr}"
    );

    // --data-dir on resume may move the data, not change it.
    let a = mnist_like(&tmp.path().join("a"), 48, 16, 28, 28);
    let b = mnist_like(&tmp.path().join("b"), 64, 16, 28, 28);
    let stdout = run_ok(&synthetic(&logs, &a, &["--epochs", "1"]));
    let ckpt = checkpoint_of(&stdout);
    let stderr = run_err(&strings(&[
        "--resume",
        ckpt.to_str().unwrap(),
        "--epochs",
        "2",
        "--data-dir",
        b.to_str().unwrap(),
    ]));
    assert!(
        stderr.contains(
            "error: incompatible train-data (--data-dir): saved `48 samples of 1x28x28`, \
             requested `64 samples of 1x28x28`"
        ),
        "{stderr}"
    );
    let copy = tmp.path().join("a-copy");
    mnist_like(&copy, 48, 16, 28, 28);
    run_ok(&strings(&[
        "--resume",
        ckpt.to_str().unwrap(),
        "--epochs",
        "2",
        "--data-dir",
        copy.to_str().unwrap(),
    ]));

    // A position past the end of an epoch (3 batches of 16).
    edit_legacy(&ckpt, |json| json["progress"]["batch"] = 99.into());
    let stderr = run_err(&strings(&[
        "--resume",
        ckpt.to_str().unwrap(),
        "--epochs",
        "3",
    ]));
    assert!(
        stderr.contains(&format!(
            "error: checkpoint {}: `progress.batch` is 99, but an epoch of this run has 3 \
             batches",
            ckpt.join("state.json").display()
        )),
        "{stderr}"
    );
}

#[test]
fn resuming_a_finished_run_says_how_many_epochs_it_has_done() {
    let Some(_) =
        crate::common::mnist_or_skip("resuming_a_finished_run_says_how_many_epochs_it_has_done")
    else {
        return;
    };
    let tmp = TempDir::new("finished");
    let stdout = run_ok(&small(tmp.path(), &["--epochs", "2"]));
    let ckpt = checkpoint_of(&stdout);
    let out = run_ok(&strings(&[
        "--resume",
        ckpt.to_str().unwrap(),
        "--epochs",
        "1",
    ]));
    assert!(
        out.contains(
            "nothing to train: the run has done 2 epoch(s) and --epochs asks for 1; ask for \
             more with --epochs"
        ),
        "{out}"
    );
}
