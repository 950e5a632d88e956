//! Runs a grid of (dataset, network, rule, seed) trainings and prints the table a paper
//! would: test accuracy and loss as mean ± std over the seeds, the best epoch, and plots of
//! the mean curves with a band of ± one standard deviation.
//!
//! ```text
//! cargo run --release --example sweep -- --datasets mnist --networks fc2,cnn \
//!     --rules BP,DFA,DKP,FDFA --seeds 0-4 --epochs 10 --out sweeps/mnist
//! ```
//!
//! Every run is a child process (this binary again, training like the dataset examples
//! with their flags and defaults) with its own folder, `<out>/<dataset>/<network>/<rule>/
//! seed-<s>/`, holding its CSV log, its checkpoint and its output. Started again with the
//! same command, the sweep skips the runs that finished, resumes the others from their
//! checkpoints, and prints the same summary as an uninterrupted sweep (training resumes
//! bit-exactly). Flags after `--` go to every run (e.g. `-- --lr 1e-3 --data-dir data/mnist`);
//! they must stay the same for a sweep folder. `--jobs` runs go at once, each with
//! `--threads` worker threads (default: the cores shared out between them).
//!
//! Writes `<out>/summary/summary.md`, `summary.csv`, and per dataset and network
//! `<dataset>-<network>-accuracy.png` and `-loss.png`.
//!
//! Ctrl-C in the terminal reaches the runs too: each saves a checkpoint and stops, and the
//! sweep starts nothing new. A sweep killed outright (SIGKILL) cannot stop its runs: each
//! fails at its next log line, whose output has nowhere to go (within `--log-interval`
//! batches), and resumes from its last checkpoint when the sweep is started again; wait
//! until they have gone before starting it.

mod common;
#[path = "sweep/grid.rs"]
mod grid;
mod plotting;
#[path = "sweep/stats.rs"]
mod stats;

use std::collections::{HashMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use clap::Parser;
use fdfa::data::DatasetName;
use fdfa::rules::RuleKind;
use fdfa::train::checkpoint;
use grid::{Network, dataset_key, parse_seeds};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

/// Set in a child's environment to the dataset it trains on: the binary then trains one run.
const WORKER_ENV: &str = "FDFA_SWEEP_WORKER";
/// Written into a run's folder when it finished its epochs.
const FINISHED: &str = "finished.json";
/// The settings every run of a sweep folder shares.
const SWEEP_FILE: &str = "sweep.json";
/// A run's captured output (stdout and stderr of every attempt, appended).
const OUTPUT: &str = "output.log";

/// Runs a grid of trainings over seeds and summarises them as mean ± std.
#[derive(Parser, Debug)]
struct Args {
    /// Datasets, comma-separated: mnist, fashion-mnist, cifar10, cifar100.
    #[arg(long, value_delimiter = ',', default_value = "mnist")]
    datasets: Vec<String>,
    /// Networks, comma-separated: fc1, fc2, fc3, ... (FC-n, `--n-layers n`), cnn (the shallow
    /// CNN, `--conv`), alexnet (CIFAR-100's network).
    #[arg(long, value_delimiter = ',', default_value = "fc2")]
    networks: Vec<String>,
    /// Learning rules, comma-separated: BP, DFA, DKP, FDFA, FGW, FGA.
    #[arg(long, value_delimiter = ',', default_value = "BP,DFA,DKP,FDFA")]
    rules: Vec<String>,
    /// Seeds: ranges and single seeds, comma-separated, e.g. `0-4` or `1-3,7`.
    #[arg(long, default_value = "0-4")]
    seeds: String,
    /// Epochs per run.
    #[arg(long, default_value_t = 10)]
    epochs: usize,
    /// Epochs whose statistics the table reports, comma-separated (default: the last).
    #[arg(long, value_delimiter = ',')]
    report_epochs: Vec<usize>,
    /// The sweep's folder.
    #[arg(long, default_value = "sweeps/")]
    out: PathBuf,
    /// Runs at once (default: one per core).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    jobs: Option<u64>,
    /// Worker threads per run (default: the cores divided by --jobs, at least 1).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    threads: Option<u64>,
    /// Train nothing: summarise the runs of the grid that have finished.
    #[arg(long)]
    summary_only: bool,
    /// Kills every run and exits with status 3 once the runs of this invocation have saved
    /// N end-of-epoch checkpoints (tests an interrupted sweep).
    #[arg(long, hide = true)]
    halt_after_checkpoints: Option<u64>,
    /// Flags for every run, as the dataset examples take them (after `--`).
    #[arg(last = true)]
    train_args: Vec<String>,
}

/// One run of the grid.
#[derive(Clone, Debug)]
struct Run {
    dataset: DatasetName,
    network: Network,
    rule: RuleKind,
    seed: u64,
    /// `<out>/<dataset>/<network>/<rule>/seed-<s>`.
    dir: PathBuf,
}

impl Run {
    fn name(&self) -> String {
        format!(
            "{}/{}/{}/seed-{}",
            dataset_key(self.dataset),
            self.network.key(),
            self.rule,
            self.seed
        )
    }
}

/// What `finished.json` records.
#[derive(Serialize, Deserialize, Debug)]
struct Finished {
    /// The epochs the run trained.
    epochs: usize,
    /// The CSV log, relative to the run's folder.
    log: PathBuf,
}

/// What `sweep.json` records.
#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct SweepFile {
    /// The flags every run got after `--`.
    train_args: Vec<String>,
}

/// Where a run stands.
enum State {
    /// Finished at least the requested epochs; its log.
    Finished(PathBuf),
    /// Has a checkpoint to continue from.
    Resume(PathBuf),
    /// Has nothing worth keeping.
    Fresh,
}

type Res<T> = Result<T, String>;

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> String + '_ {
    move |e| format!("{}: {e}", path.display())
}

fn read_finished(dir: &Path) -> Option<Finished> {
    let text = fs::read_to_string(dir.join(FINISHED)).ok()?;
    serde_json::from_str(&text).ok()
}

/// The checkpoint folders under a run's folder (a checkpoint is a folder whose state reads).
fn checkpoints(dir: &Path, depth: usize, found: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let mut subdirs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    subdirs.sort();
    for sub in subdirs {
        if checkpoint::read_run_info(&sub).is_ok() {
            found.push(sub);
        } else if depth > 0 {
            checkpoints(&sub, depth - 1, found);
        }
    }
}

fn checkpoint_of(run: &Run) -> Res<Option<PathBuf>> {
    let mut found = Vec::new();
    checkpoints(&run.dir, 2, &mut found);
    match found.len() {
        0 => Ok(None),
        1 => Ok(found.pop()),
        _ => Err(format!(
            "{}: several checkpoints ({}); keep the one to continue and remove the others",
            run.dir.display(),
            found
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

fn state(run: &Run, epochs: usize) -> Res<State> {
    if let Some(f) = read_finished(&run.dir)
        && f.epochs >= epochs
    {
        return Ok(State::Finished(run.dir.join(f.log)));
    }
    Ok(match checkpoint_of(run)? {
        Some(ckpt) => State::Resume(ckpt),
        None => State::Fresh,
    })
}

/// The CSV log of the run checkpointed in `ckpt`: the dataset examples keep it beside the
/// folder, named after it (`<run>.csv` beside `<run>.ckpt`).
fn log_of(ckpt: &Path) -> Option<PathBuf> {
    let mut file = ckpt.file_stem()?.to_os_string();
    file.push(".csv");
    Some(ckpt.with_file_name(file))
}

fn epochs_logged(log: &Path) -> usize {
    plotting::read_training_log(log).map_or(0, |rows| rows.len())
}

/// Writes `finished.json` when the run's log holds `epochs` epochs; returns whether it did.
fn mark_finished(run: &Run, epochs: usize) -> Res<bool> {
    let Some(log) = checkpoint_of(run)?.and_then(|c| log_of(&c)) else {
        return Ok(false);
    };
    if epochs_logged(&log) < epochs {
        return Ok(false);
    }
    let rel = log.strip_prefix(&run.dir).unwrap_or(&log).to_path_buf();
    let text =
        serde_json::to_string_pretty(&Finished { epochs, log: rel }).map_err(|e| e.to_string())?;
    let path = run.dir.join(FINISHED);
    let tmp = run.dir.join(format!("{FINISHED}.tmp"));
    fs::write(&tmp, text).map_err(io_err(&tmp))?;
    fs::rename(&tmp, &path).map_err(io_err(&path))?;
    Ok(true)
}

/// What the children tell the sweep.
enum Event {
    /// A line of a run's standard output.
    Line(usize, String),
    /// A run closed its standard output.
    Eof(usize),
}

/// Where a running child stands, for the progress bar: epochs done and the fraction of the
/// current one.
#[derive(Clone, Copy, Default)]
struct Position {
    epochs: usize,
    fraction: f64,
}

/// Reads `Train Epoch: 2 [6400/60000 (11%)]` and `Epoch 2: training loss ...` into `p`.
fn parse_progress(line: &str, p: &mut Position) {
    if let Some(rest) = line.strip_prefix("Train Epoch: ") {
        let pct = rest
            .split('(')
            .nth(1)
            .and_then(|t| t.split('%').next())
            .and_then(|t| t.trim().parse::<f64>().ok());
        if let Some(pct) = pct {
            p.fraction = (pct / 100.0).clamp(0.0, 1.0);
        }
    } else if let Some(rest) = line.strip_prefix("Epoch ")
        && let Some(Ok(e)) = rest.split(':').next().map(str::parse::<usize>)
        && rest.contains("test accuracy")
    {
        p.epochs = e;
        p.fraction = 0.0;
    }
}

/// The value of `--flag value` or `--flag=value` among `args`, the last one given.
fn flag_value(args: &[String], flag: &str) -> Option<String> {
    let mut value = None;
    for (i, a) in args.iter().enumerate() {
        if a == flag {
            value = args.get(i + 1).cloned();
        } else if let Some(v) = a.strip_prefix(flag).and_then(|r| r.strip_prefix('=')) {
            value = Some(v.to_string());
        }
    }
    value
}

struct Sweep {
    args: Args,
    runs: Vec<Run>,
    threads: u64,
    jobs: usize,
}

fn setup(args: Args) -> Res<Sweep> {
    if args.epochs == 0 {
        return Err("--epochs must be at least 1".into());
    }
    let datasets = args
        .datasets
        .iter()
        .map(|d| d.parse::<DatasetName>().map_err(|e| e.to_string()))
        .collect::<Res<Vec<_>>>()?;
    let networks = args
        .networks
        .iter()
        .map(|n| n.parse::<Network>())
        .collect::<Res<Vec<_>>>()?;
    let rules = args
        .rules
        .iter()
        .map(|r| r.parse::<RuleKind>().map_err(|e| e.to_string()))
        .collect::<Res<Vec<_>>>()?;
    let seeds = parse_seeds(&args.seeds)?;
    for &e in &args.report_epochs {
        if e == 0 || e > args.epochs {
            return Err(format!(
                "--report-epochs {e}: the runs train epochs 1 to {}",
                args.epochs
            ));
        }
    }
    const OWN: [&str; 5] = [
        "--train-mode",
        "--seed",
        "--log-dir",
        "--resume",
        "--epochs",
    ];
    const NET: [&str; 2] = ["--conv", "--n-layers"];
    for a in &args.train_args {
        let flag = a.split('=').next().unwrap_or(a);
        if flag == "--dry-run" {
            return Err(
                "`--dry-run` after `--`: a dry run saves no checkpoint, so the sweep \
                        could neither resume nor tell that it finished"
                    .into(),
            );
        }
        if OWN.contains(&flag) || NET.contains(&flag) || flag == "--threads" {
            return Err(format!(
                "`{flag}` after `--`: the sweep sets it for every run (use --rules, --seeds, \
                 --networks, --epochs, --threads)"
            ));
        }
    }
    // Every run would fail the same way on a missing dataset: say so once, before any starts.
    if !args.train_args.iter().any(|a| a == "--download") {
        let data_dir = flag_value(&args.train_args, "--data-dir").map(PathBuf::from);
        for &d in &datasets {
            fdfa::data::locate(d, data_dir.as_deref()).map_err(|e| e.to_string())?;
        }
    }
    fs::create_dir_all(&args.out).map_err(io_err(&args.out))?;
    let out = fs::canonicalize(&args.out).map_err(io_err(&args.out))?;
    let sweep_file = out.join(SWEEP_FILE);
    let ours = SweepFile {
        train_args: args.train_args.clone(),
    };
    match fs::read_to_string(&sweep_file) {
        Ok(text) => {
            let saved: SweepFile = serde_json::from_str(&text)
                .map_err(|e| format!("{}: {e}", sweep_file.display()))?;
            if saved != ours {
                return Err(format!(
                    "{} was swept with the run flags {:?}, not {:?}: give the same flags after \
                     `--`, or another --out",
                    out.display(),
                    saved.train_args,
                    ours.train_args
                ));
            }
        }
        Err(_) => {
            let text = serde_json::to_string_pretty(&ours).map_err(|e| e.to_string())?;
            fs::write(&sweep_file, text).map_err(io_err(&sweep_file))?;
        }
    }
    let mut runs = Vec::new();
    for &dataset in &datasets {
        for &network in &networks {
            if !network.fits(dataset) {
                if networks.iter().any(|n| n.fits(dataset)) {
                    continue;
                }
                return Err(format!(
                    "no network of --networks trains on {0} ({0} takes {1})",
                    dataset_key(dataset),
                    if dataset == DatasetName::Cifar100 {
                        "alexnet"
                    } else {
                        "fc1, fc2, ... or cnn"
                    }
                ));
            }
            for &rule in &rules {
                for &seed in &seeds {
                    let dir = out
                        .join(dataset_key(dataset))
                        .join(network.key())
                        .join(rule.as_str())
                        .join(format!("seed-{seed}"));
                    runs.push(Run {
                        dataset,
                        network,
                        rule,
                        seed,
                        dir,
                    });
                }
            }
        }
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let jobs = args.jobs.unwrap_or(cores).min(runs.len().max(1) as u64);
    let threads = args.threads.unwrap_or((cores / jobs).max(1));
    Ok(Sweep {
        args: Args { out, ..args },
        runs,
        threads,
        jobs: jobs as usize,
    })
}

/// Starts `run` as a child process; returns it with its standard output.
fn spawn(sweep: &Sweep, run: &Run, resume: Option<&Path>) -> Res<Child> {
    if resume.is_none() {
        // Nothing of an earlier attempt is kept: a log without a checkpoint would otherwise
        // sit beside the new run's.
        if run.dir.exists() {
            fs::remove_dir_all(&run.dir).map_err(io_err(&run.dir))?;
        }
    }
    fs::create_dir_all(&run.dir).map_err(io_err(&run.dir))?;
    let out_path = run.dir.join(OUTPUT);
    let out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&out_path)
        .map_err(io_err(&out_path))?;
    let exe = std::env::current_exe().map_err(|e| format!("this program's path: {e}"))?;
    let mut cmd = Command::new(exe);
    cmd.env(WORKER_ENV, dataset_key(run.dataset))
        .arg("--train-mode")
        .arg(run.rule.as_str())
        .arg("--seed")
        .arg(run.seed.to_string())
        .arg("--epochs")
        .arg(sweep.args.epochs.to_string())
        .arg("--threads")
        .arg(sweep.threads.to_string())
        .arg("--log-dir")
        .arg(&run.dir)
        .args(run.network.flags())
        .args(&sweep.args.train_args);
    if let Some(ckpt) = resume {
        cmd.arg("--resume").arg(ckpt);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(out.try_clone().map_err(io_err(&out_path))?));
    cmd.spawn()
        .map_err(|e| format!("starting {}: {e}", run.name()))
}

/// The last lines of a run's output, for an error message.
fn tail(run: &Run, lines: usize) -> String {
    let text = fs::read_to_string(run.dir.join(OUTPUT)).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// How the sweep ended.
#[derive(PartialEq, Eq)]
enum End {
    Complete,
    Stopped,
    Halted,
}

/// Runs what is left of the grid; returns how it ended and the runs that failed.
fn train(sweep: &Sweep, stop: &AtomicBool) -> Res<(End, Vec<String>)> {
    let epochs = sweep.args.epochs;
    let mut queue = VecDeque::new();
    let mut done_units = 0u64;
    let mut starts: Vec<Position> = vec![Position::default(); sweep.runs.len()];
    let mut skipped = 0;
    for (i, run) in sweep.runs.iter().enumerate() {
        match state(run, epochs)? {
            State::Finished(_) => {
                skipped += 1;
                done_units += epochs as u64 * 100;
            }
            State::Resume(ckpt) => {
                let logged = log_of(&ckpt).map_or(0, |l| epochs_logged(&l)).min(epochs);
                starts[i].epochs = logged;
                queue.push_back((i, Some(ckpt)));
            }
            State::Fresh => queue.push_back((i, None)),
        }
    }
    let total = sweep.runs.len() as u64 * epochs as u64 * 100;
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "[{elapsed_precise}] [{bar:30}] {percent}% of the grid ({eta} left) {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let say = |line: String| {
        if bar.is_hidden() {
            println!("{line}");
        } else {
            bar.println(line);
        }
    };
    say(format!(
        "{} runs: {} finished before, {} to resume, {} to start; {} at once, {} thread(s) each",
        sweep.runs.len(),
        skipped,
        queue.iter().filter(|(_, c)| c.is_some()).count(),
        queue.iter().filter(|(_, c)| c.is_none()).count(),
        sweep.jobs,
        sweep.threads
    ));
    let (tx, rx) = mpsc::channel::<Event>();
    let mut running: HashMap<usize, (Child, Position)> = HashMap::new();
    let mut failed = Vec::new();
    let mut finished = skipped;
    let mut checkpoints_seen = 0u64;
    let progress = |running: &HashMap<usize, (Child, Position)>, done_units: u64| {
        let live: u64 = running
            .values()
            .map(|(_, p)| (p.epochs as f64 * 100.0 + p.fraction * 100.0) as u64)
            .sum();
        done_units + live
    };
    let mut end = End::Complete;
    loop {
        while running.len() < sweep.jobs && !stop.load(Ordering::SeqCst) {
            let Some((i, ckpt)) = queue.pop_front() else {
                break;
            };
            let run = &sweep.runs[i];
            let mut child = spawn(sweep, run, ckpt.as_deref())?;
            let stdout = child.stdout.take().ok_or("a child without stdout")?;
            let out_path = run.dir.join(OUTPUT);
            let mut out = OpenOptions::new()
                .append(true)
                .open(&out_path)
                .map_err(io_err(&out_path))?;
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    let _ = writeln!(out, "{line}");
                    if tx.send(Event::Line(i, line)).is_err() {
                        return;
                    }
                }
                let _ = tx.send(Event::Eof(i));
            });
            say(format!(
                "{} {}",
                if ckpt.is_some() {
                    "resuming"
                } else {
                    "starting"
                },
                run.name()
            ));
            running.insert(i, (child, starts[i]));
        }
        if running.is_empty() {
            if stop.load(Ordering::SeqCst) && !queue.is_empty() {
                end = End::Stopped;
            }
            break;
        }
        let names: Vec<String> = {
            let mut v: Vec<&usize> = running.keys().collect();
            v.sort();
            v.iter()
                .map(|&&i| {
                    let p = running[&i].1;
                    let epoch = (p.epochs + 1).min(epochs);
                    format!("{} (epoch {epoch}/{epochs})", sweep.runs[i].name())
                })
                .collect()
        };
        bar.set_message(format!(
            "{finished}/{} runs done; {}",
            sweep.runs.len(),
            names.join(", ")
        ));
        match rx.recv_timeout(Duration::from_millis(250)) {
            Ok(Event::Line(i, line)) => {
                if let Some((_, p)) = running.get_mut(&i) {
                    parse_progress(&line, p);
                }
                if line.starts_with("checkpoint saved to ") && line.contains("(after epoch ") {
                    checkpoints_seen += 1;
                    if sweep.args.halt_after_checkpoints == Some(checkpoints_seen) {
                        for (_, (mut child, _)) in running.drain() {
                            let _ = child.kill();
                            let _ = child.wait();
                        }
                        end = End::Halted;
                        break;
                    }
                }
                bar.set_position(progress(&running, done_units));
            }
            Ok(Event::Eof(i)) => {
                let Some((mut child, _)) = running.remove(&i) else {
                    continue;
                };
                let status = child.wait().map_err(|e| e.to_string())?;
                let run = &sweep.runs[i];
                if status.success() && mark_finished(run, epochs)? {
                    finished += 1;
                    done_units += epochs as u64 * 100;
                    say(format!("finished {}", run.name()));
                } else if status.success() {
                    say(format!("stopped {} (resumable)", run.name()));
                } else {
                    failed.push(run.name());
                    say(format!(
                        "FAILED {} ({status}); its output ends with:\n{}",
                        run.name(),
                        tail(run, 5)
                    ));
                }
                bar.set_position(progress(&running, done_units));
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    bar.finish_and_clear();
    if end == End::Complete && stop.load(Ordering::SeqCst) {
        end = End::Stopped;
    }
    Ok((end, failed))
}

/// The finished runs' curves grouped by (dataset, network, rule), in grid order.
fn groups(sweep: &Sweep) -> Res<Vec<stats::Group>> {
    let mut groups: Vec<stats::Group> = Vec::new();
    for run in &sweep.runs {
        let (dataset, network, rule) = (
            dataset_key(run.dataset).to_string(),
            run.network.to_string(),
            run.rule.to_string(),
        );
        let idx = match groups
            .iter()
            .position(|g| g.dataset == dataset && g.network == network && g.rule == rule)
        {
            Some(i) => i,
            None => {
                groups.push(stats::Group {
                    dataset,
                    network,
                    rule,
                    curves: Vec::new(),
                });
                groups.len() - 1
            }
        };
        let State::Finished(log) = state(run, sweep.args.epochs)? else {
            continue;
        };
        let rows = plotting::read_training_log(&log).map_err(|e| e.to_string())?;
        let rows = &rows[..rows.len().min(sweep.args.epochs)];
        groups[idx].curves.push(stats::SeedCurve {
            seed: run.seed,
            accuracy: rows.iter().map(|r| r.test_accuracy).collect(),
            test_loss: rows.iter().map(|r| r.test_loss).collect(),
        });
    }
    Ok(groups)
}

/// Writes the tables and plots into `<out>/summary/`; returns the Markdown table.
fn summarize(sweep: &Sweep) -> Res<String> {
    let groups = groups(sweep)?;
    let report = if sweep.args.report_epochs.is_empty() {
        vec![sweep.args.epochs]
    } else {
        sweep.args.report_epochs.clone()
    };
    let rows = stats::summarize(&groups, &report);
    let dir = sweep.args.out.join("summary");
    fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    let md = stats::markdown(&rows);
    for (name, text) in [("summary.md", &md), ("summary.csv", &stats::csv(&rows))] {
        let path = dir.join(name);
        let mut f = File::create(&path).map_err(io_err(&path))?;
        f.write_all(text.as_bytes()).map_err(io_err(&path))?;
    }
    // One chart per (dataset, network) and quantity, a mean curve per rule.
    let mut cells: Vec<(String, String)> = Vec::new();
    for g in &groups {
        let cell = (g.dataset.clone(), g.network.clone());
        if !cells.contains(&cell) {
            cells.push(cell);
        }
    }
    for (dataset, network) in cells {
        let of_cell: Vec<&stats::Group> = groups
            .iter()
            .filter(|g| g.dataset == dataset && g.network == network && !g.curves.is_empty())
            .collect();
        if of_cell.is_empty() {
            continue;
        }
        let key = network.to_lowercase().replace('-', "");
        type Pick = fn(&stats::SeedCurve) -> &[f64];
        let quantities: [(&str, &str, Pick); 2] = [
            ("accuracy", "test accuracy (%)", |c| &c.accuracy),
            ("loss", "test loss", |c| &c.test_loss),
        ];
        for (file, y_desc, f) in quantities {
            let curves: Vec<plotting::MeanCurve> = of_cell
                .iter()
                .map(|g| {
                    let per_seed: Vec<&[f64]> = g.curves.iter().map(f).collect();
                    plotting::MeanCurve {
                        label: format!("{} (n = {})", g.rule, g.curves.len()),
                        points: stats::mean_curve(&per_seed)
                            .iter()
                            .enumerate()
                            .map(|(e, s)| ((e + 1) as f64, s.mean, s.std))
                            .collect(),
                    }
                })
                .collect();
            let path = dir.join(format!("{dataset}-{key}-{file}.png"));
            let title = format!("{dataset}, {network}: {y_desc}, mean ± one std over seeds");
            plotting::plot_mean_curves(&curves, &path, &title, y_desc)
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(md)
}

fn main() {
    if let Ok(name) = std::env::var(WORKER_ENV) {
        let dataset = match name.parse::<DatasetName>() {
            Ok(d) => d,
            Err(e) => {
                eprintln!("error: {WORKER_ENV}: {e}");
                std::process::exit(1);
            }
        };
        common::run_reference(dataset);
        return;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    // The runs share the terminal's process group: Ctrl-C reaches them too, and each saves a
    // checkpoint and stops; the sweep starts no new run and waits for them.
    let handler = ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("\nCtrl-C: waiting for the runs to save their checkpoints");
    });
    if let Err(e) = handler {
        eprintln!("warning: Ctrl-C will not stop the sweep cleanly: {e}");
    }
    let sweep = match setup(Args::parse()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    let (end, failed) = if sweep.args.summary_only {
        (End::Complete, Vec::new())
    } else {
        match train(&sweep, &stop) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("error: {e}");
                std::process::exit(1);
            }
        }
    };
    if end == End::Halted {
        eprintln!(
            "halted after {:?} checkpoints",
            sweep.args.halt_after_checkpoints
        );
        std::process::exit(3);
    }
    match summarize(&sweep) {
        Ok(md) => {
            println!("\n{md}");
            println!(
                "summary and plots in {}",
                sweep.args.out.join("summary").display()
            );
        }
        Err(e) => {
            eprintln!("error: summarising: {e}");
            std::process::exit(1);
        }
    }
    if end == End::Stopped {
        println!("interrupted: run the same command again to finish the grid");
        std::process::exit(130);
    }
    if !failed.is_empty() {
        eprintln!(
            "{} run(s) failed: {}; run the same command again to retry them",
            failed.len(),
            failed.join(", ")
        );
        std::process::exit(1);
    }
}
