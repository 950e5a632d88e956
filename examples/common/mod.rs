//! The command line shared by the dataset examples, with the reference's flags and defaults.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::OsString;

/// Whether this process stays silent: a rank other than 0 of a `--distributed` run, whose
/// lines would repeat rank 0's.
static QUIET: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// `println!` on rank 0 (or the only process) alone.
macro_rules! say {
    ($($t:tt)*) => {
        if !$crate::common::quiet() {
            println!($($t)*);
        }
    };
}

/// Whether this process prints nothing but errors ([`QUIET`]).
pub fn quiet() -> bool {
    QUIET.load(Ordering::Relaxed)
}

mod budget;
mod download;
mod run_dir;
mod train_loop;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser};
use fdfa::data::{Augmented, CIFAR100_SIZE, DataSource, DatasetName};
use fdfa::diagnostics::{AlignmentLog, AlignmentProbe, MeasureConfig, alignment_log_path};
use fdfa::distributed::{BatchNormSync, Communicator};
use fdfa::model::Model;
use fdfa::rules::RuleKind;
use fdfa::train::checkpoint::{self, CheckpointLock, RunInfo};
use fdfa::train::{CsvLog, TrainConfig, Trainer};

use train_loop::position;
#[allow(unused_imports)] // `train_loop` is for examples that save no checkpoints.
pub use train_loop::{Outcome, Saving, train_loop, train_loop_with};

/// Settings that may change when a run is resumed; every other saved setting must match.
pub const FREE_ON_RESUME: [&str; 7] = [
    "epochs",
    "test-batch-size",
    "log-dir",
    "log-interval",
    "data-dir",
    "threads",
    "checkpoint-every",
];
/// What a checkpoint records about the dataset (`<n> samples of <shape>`), checked on resume
/// rather than compared as flags: `--data-dir` may change, the data it points at may not.
const DATA_FACTS: [&str; 2] = ["train-data", "test-data"];
/// Flags that describe one invocation rather than the run: neither saved nor adopted.
/// `--distributed` and `--batch-norm-sync` among them: a run may resume on another number of
/// ranks, or on one process.
const NOT_SAVED: [&str; 6] = [
    "resume",
    "dry-run",
    "inject-nan-at-batch",
    "distributed",
    "batch-norm-sync",
    "block-parallel",
];
/// Flags without a value.
const SWITCHES: [&str; 2] = ["conv", "dry-run"];

/// Flags of the reference's training scripts, plus `--data-dir`, `--threads`,
/// `--directions`, the checkpoint flags `--resume` and `--checkpoint-every`, and the
/// alignment diagnostics.
#[derive(Parser, Debug, Clone)]
#[command(allow_negative_numbers = true)]
pub struct Args {
    /// Input batch size for training.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..))]
    pub batch_size: u64,
    /// Input batch size for testing.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub test_batch_size: u64,
    /// Number of epochs to train.
    #[arg(long, default_value_t = 100)]
    pub epochs: usize,
    /// Learning rate of the forward parameters.
    #[arg(long, default_value_t = 1e-4, value_parser = non_negative)]
    pub lr: f32,
    /// Learning rate of the feedback matrices.
    #[arg(long, default_value_t = 1e-4, value_parser = non_negative)]
    pub b_lr: f32,
    /// Learning-rate step decay per epoch.
    #[arg(long, default_value_t = 0.95, value_parser = unit_interval)]
    pub gamma: f32,
    /// L2 weight decay of the forward parameters.
    #[arg(long, default_value_t = 0.0, value_parser = non_negative)]
    pub weight_decay: f32,
    /// L2 weight decay of the feedback matrices (1e-6 suggested for DKP).
    #[arg(long, default_value_t = 0.0, value_parser = non_negative)]
    pub feedback_decay: f32,
    /// Learning rule: BP, DFA, DKP, FDFA (or the baselines FGW, FGA).
    #[arg(long, default_value = "FDFA", value_parser = parse_rule)]
    pub train_mode: RuleKind,
    /// Folder of the CSV logs (`<log-dir>/<mode>/<timestamp>.csv`).
    #[arg(long, default_value = "results/")]
    pub log_dir: PathBuf,
    /// Hidden layers of the fully connected network.
    #[arg(long, default_value_t = 2)]
    pub n_layers: usize,
    /// Train the shallow CNN instead of the fully connected network.
    #[arg(long)]
    pub conv: bool,
    /// Random seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Batches between two log lines.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    pub log_interval: u64,
    /// Train one batch, evaluate, and stop.
    #[arg(long)]
    pub dry_run: bool,
    /// Folder holding the dataset's files (default: $FDFA_DATA/<dataset>, ./data/<dataset>,
    /// /usr/share/datasets/<dataset>).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Fetch the dataset into --data-dir (default ./data/<dataset>) when it is not found:
    /// MNIST and Fashion-MNIST from their public mirrors, verified by SHA-256 (a build with
    /// `--features download`).
    #[arg(long)]
    pub download: bool,
    /// Worker threads (default: one per core).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub threads: Option<u64>,
    /// Random directions per sample for FDFA and FGA.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub directions: u64,
    /// Continue the run saved in this checkpoint folder (flags not given take their saved
    /// values; the network, rule, dataset and optimisation settings must match).
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Also save a checkpoint every N batches (one is always saved after every epoch).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub checkpoint_every: Option<u64>,
    /// Poisons a tensor with NaN before the N-th batch this process trains (tests the guard).
    #[arg(long, hide = true, value_parser = clap::value_parser!(u64).range(1..))]
    pub inject_nan_at_batch: Option<u64>,
    /// Trains on the first N training samples only (quick runs and tests).
    #[arg(long, hide = true)]
    pub train_samples: Option<usize>,
    /// Evaluates on the first N test samples only (quick runs and tests).
    #[arg(long, hide = true)]
    pub test_samples: Option<usize>,
    /// Measure, before every EVERY-th batch (100 when no value is given), how the rule's
    /// updates align with backpropagation's on that batch; rows go to `<log>.alignment.csv`.
    #[arg(
        long,
        value_name = "EVERY",
        num_args = 0..=1,
        default_missing_value = "100",
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub measure_alignment: Option<u64>,
    /// Draws of the random directions per alignment measurement (for the variances).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(2..))]
    pub alignment_repeats: u64,
    /// Samples of the batch over which the Jacobian of an alignment measurement is averaged
    /// (default: all); each costs one backward pass per class.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub alignment_jacobian_samples: Option<u64>,
    /// Data-parallel training over MPI: run under `mpirun -n N` (or `srun`); every rank
    /// trains on its share of each batch, rank 0 writes the log and the checkpoints. Needs
    /// the `mpi` feature.
    #[arg(long)]
    pub distributed: bool,
    /// BatchNorm under `--distributed`: `sync` normalises over the global batch (the
    /// single-process algorithm), `per-rank` over each rank's share (PyTorch DDP's default,
    /// a different algorithm).
    #[arg(long, default_value = "sync", value_parser = parse_batch_norm_sync)]
    pub batch_norm_sync: BatchNormSync,
    /// Under `--distributed`: block-parallel instead of data-parallel. Rank r owns a
    /// consecutive share of the network's blocks; activations flow forward rank to rank, the
    /// last rank broadcasts the error, and every rank updates its blocks at once (DFA, DKP,
    /// FDFA; BP sends its gradient back rank to rank).
    #[arg(long, requires = "distributed")]
    pub block_parallel: bool,
    /// Whether `--log-dir` was given on this command line (not taken from a checkpoint).
    #[arg(skip)]
    pub log_dir_given: bool,
}

fn non_negative(s: &str) -> Result<f32, String> {
    let v: f32 = s
        .parse()
        .map_err(|e| format!("`{s}` is not a number: {e}"))?;
    if v.is_finite() && v >= 0.0 {
        Ok(v)
    } else {
        Err(format!("`{s}` must be a finite, non-negative number"))
    }
}

fn unit_interval(s: &str) -> Result<f32, String> {
    let v: f32 = s
        .parse()
        .map_err(|e| format!("`{s}` is not a number: {e}"))?;
    if v > 0.0 && v <= 1.0 {
        Ok(v)
    } else {
        Err(format!("`{s}` must lie in (0, 1]"))
    }
}

fn parse_batch_norm_sync(s: &str) -> Result<BatchNormSync, String> {
    s.parse().map_err(|e: fdfa::Error| e.to_string())
}

fn parse_rule(s: &str) -> Result<RuleKind, String> {
    s.parse().map_err(|e: fdfa::Error| e.to_string())
}

impl Args {
    /// Every saved setting, by flag name, as the command line would spell it. The alignment
    /// flags are not saved: measuring does not change training, and a resumed run measures
    /// only when asked again.
    pub fn settings(&self, dataset: DatasetName) -> BTreeMap<String, String> {
        let mut s = BTreeMap::new();
        let mut put = |key: &str, value: String| {
            s.insert(key.to_string(), value);
        };
        put("dataset", dataset.to_string());
        put("batch-size", self.batch_size.to_string());
        put("test-batch-size", self.test_batch_size.to_string());
        put("epochs", self.epochs.to_string());
        put("lr", self.lr.to_string());
        put("b-lr", self.b_lr.to_string());
        put("gamma", self.gamma.to_string());
        put("weight-decay", self.weight_decay.to_string());
        put("feedback-decay", self.feedback_decay.to_string());
        put("train-mode", self.train_mode.to_string());
        put("log-dir", self.log_dir.display().to_string());
        put("n-layers", self.n_layers.to_string());
        put("conv", self.conv.to_string());
        put("seed", self.seed.to_string());
        put("log-interval", self.log_interval.to_string());
        put("directions", self.directions.to_string());
        let optional = [
            (
                "data-dir",
                self.data_dir.as_ref().map(|p| p.display().to_string()),
            ),
            ("threads", self.threads.map(|t| t.to_string())),
            (
                "checkpoint-every",
                self.checkpoint_every.map(|n| n.to_string()),
            ),
            ("train-samples", self.train_samples.map(|n| n.to_string())),
            ("test-samples", self.test_samples.map(|n| n.to_string())),
        ];
        for (key, value) in optional {
            if let Some(v) = value {
                put(key, v);
            }
        }
        s
    }

    /// The trainer settings these flags describe.
    pub fn train_config(&self) -> TrainConfig {
        TrainConfig::default()
            .with_batch_size(self.batch_size as usize)
            .with_test_batch_size(self.test_batch_size as usize)
            .with_epochs(self.epochs)
            .with_lr(self.lr)
            .with_b_lr(self.b_lr)
            .with_gamma(self.gamma)
            .with_weight_decay(self.weight_decay)
            .with_feedback_decay(self.feedback_decay)
            .with_seed(self.seed)
    }
}

/// `YYYY-MM-DD_HH-MM-SS` in UTC, for log file names.
pub fn timestamp() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}_{:02}-{:02}-{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Parses the command line. With `--resume`, flags not given take the values saved in the
/// checkpoint, and the result must match the saved run (except [`FREE_ON_RESUME`]).
pub fn parse_args(dataset: DatasetName) -> Result<(Args, Option<RunInfo>), String> {
    let argv: Vec<OsString> = std::env::args_os().collect();
    let matches = Args::command().get_matches_from(&argv);
    let mut args = Args::from_arg_matches(&matches).map_err(|e| e.to_string())?;
    let log_dir_given = matches.value_source("log_dir") == Some(ValueSource::CommandLine);
    args.log_dir_given = log_dir_given;
    let Some(dir) = args.resume.clone() else {
        return Ok((args, None));
    };
    let saved = checkpoint::read_run_info(&dir).map_err(|e| e.to_string())?;
    let command = Args::command();
    let known = |key: &str| command.get_arguments().any(|a| a.get_long() == Some(key));
    let mut merged = argv;
    for (key, value) in &saved.settings {
        if NOT_SAVED.contains(&key.as_str()) || !known(key) {
            continue;
        }
        if matches.value_source(&key.replace('-', "_")) == Some(ValueSource::CommandLine) {
            continue;
        }
        if !SWITCHES.contains(&key.as_str()) {
            merged.push(format!("--{key}={value}").into());
        } else if value == "true" {
            merged.push(format!("--{key}").into());
        }
    }
    let mut args = Args::try_parse_from(merged)
        .map_err(|e| format!("the settings saved in {}: {e}", dir.display()))?;
    args.log_dir_given = log_dir_given;
    let free: Vec<&str> = FREE_ON_RESUME.iter().chain(&DATA_FACTS).copied().collect();
    saved
        .check_settings(&args.settings(dataset), &free)
        .map_err(|e| e.to_string())?;
    Ok((args, Some(saved)))
}

/// The hidden width of the reference's FC-n for `dataset` (800 on MNIST and Fashion-MNIST,
/// 1000 on CIFAR-10), `None` where the network has no `--n-layers` (AlexNet on CIFAR-100).
pub fn fc_width(dataset: DatasetName) -> Option<usize> {
    match dataset {
        DatasetName::Mnist | DatasetName::FashionMnist => Some(800),
        DatasetName::Cifar10 => Some(1000),
        DatasetName::Cifar100 => None,
    }
}

/// The reference's network for `dataset`: FC-n, or the shallow CNN with `--conv`, on MNIST,
/// Fashion-MNIST and CIFAR-10; AlexNet with BatchNorm on CIFAR-100.
pub fn reference_network(
    dataset: DatasetName,
    args: &Args,
    rng: &mut fdfa::init::Rng,
) -> fdfa::Result<Model> {
    let input: &[usize] = match dataset {
        DatasetName::Mnist | DatasetName::FashionMnist => &[1, 28, 28],
        DatasetName::Cifar10 => &[3, 32, 32],
        DatasetName::Cifar100 => return fdfa::model::alexnet_bn(100, rng),
    };
    match fc_width(dataset) {
        Some(width) if !args.conv => fdfa::model::fc(input, args.n_layers, width, 10, rng),
        _ => fdfa::model::shallow_cnn(input, 10, rng),
    }
}

/// The dataset example's whole program: [`main_with`] and the reference's network.
pub fn run_reference(dataset: DatasetName) {
    main_with(dataset, fc_width(dataset), move |args, rng| {
        reference_network(dataset, args, rng)
    });
}

/// Parses the flags, loads the dataset, builds the network with `build`, trains and logs,
/// saving checkpoints. Exits with a message (not a panic) on any error, naming the last good
/// checkpoint; exits cleanly (status 0) after a checkpoint when Ctrl-C is pressed.
///
/// `fc_width` is the width of the hidden layers of the fully connected network `build`
/// makes without `--conv` (`None` when it ignores `--n-layers`), so that an absurd
/// `--n-layers` is refused before the network is allocated.
pub fn main_with(
    dataset: DatasetName,
    fc_width: Option<usize>,
    build: impl Fn(&Args, &mut fdfa::init::Rng) -> fdfa::Result<Model>,
) {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    let handler = ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            // A second Ctrl-C does not wait for the batch.
            std::process::exit(130);
        }
        eprintln!("\nCtrl-C: stopping after this batch (press again to quit at once)");
    });
    if let Err(e) = handler {
        eprintln!("warning: Ctrl-C will not save a checkpoint: {e}");
    }
    let (args, resume) = match parse_args(dataset) {
        Ok(parsed) => parsed,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    let mut last_good = args.resume.clone();
    if let Err(e) = run(
        dataset,
        &args,
        resume,
        fc_width,
        build,
        &stop,
        &mut last_good,
    ) {
        eprintln!("error: {e}");
        match last_good {
            Some(dir) => eprintln!(
                "the last good checkpoint is {0}; continue with --resume {0}",
                dir.display()
            ),
            None => eprintln!("no checkpoint was saved before the error"),
        }
        std::process::exit(1);
    }
}

/// Loads `dataset`, keeping the first `--train-samples`/`--test-samples` samples if given.
fn load_data(
    dataset: DatasetName,
    args: &Args,
) -> fdfa::Result<(Box<dyn DataSource>, Box<dyn DataSource>)> {
    if args.download && fdfa::data::locate(dataset, args.data_dir.as_deref()).is_err() {
        let dir = args
            .data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("data").join(dataset.folder()));
        download::download(dataset, &dir)?;
    }
    if args.train_samples.is_none() && args.test_samples.is_none() {
        return fdfa::data::load(dataset, args.data_dir.as_deref());
    }
    let (train, test) = fdfa::data::load_raw(dataset, args.data_dir.as_deref())?;
    let train = train.subset(0..args.train_samples.unwrap_or(train.len()))?;
    let test = test.subset(0..args.test_samples.unwrap_or(test.len()))?;
    Ok(match dataset {
        DatasetName::Cifar100 => (
            Box::new(Augmented::train(train, CIFAR100_SIZE)?),
            Box::new(Augmented::test(test, CIFAR100_SIZE)?),
        ),
        _ => (Box::new(train), Box::new(test)),
    })
}

/// A flag's value refused before anything large is allocated.
fn refused(flag: &'static str, reason: String) -> fdfa::Error {
    fdfa::Error::InvalidConfig {
        layer: "command line".to_string(),
        field: flag,
        reason,
    }
}

/// `60000 samples of 1x28x28`.
fn describe(source: &dyn DataSource) -> String {
    let shape: Vec<String> = source
        .sample_shape()
        .iter()
        .map(|d| d.to_string())
        .collect();
    format!("{} samples of {}", source.len(), shape.join("x"))
}

fn run(
    dataset: DatasetName,
    args: &Args,
    resume: Option<RunInfo>,
    fc_width: Option<usize>,
    build: impl Fn(&Args, &mut fdfa::init::Rng) -> fdfa::Result<Model>,
    stop: &AtomicBool,
    last_good: &mut Option<PathBuf>,
) -> fdfa::Result<Outcome> {
    if let Some(t) = budget::threads(args) {
        // Only fails when a global pool already exists, which cannot happen this early.
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build_global();
    }
    // Every rank joins before anything else, so that a failure to start is everyone's.
    let group = connect(args)?;
    let root = group.as_ref().is_none_or(|g| g.rank() == 0);
    QUIET.store(!root, Ordering::Relaxed);
    let (train, test) = load_data(dataset, args)?;
    for (flag, source) in [("--train-samples", &train), ("--test-samples", &test)] {
        if source.is_empty() {
            return Err(refused(flag, "leaves no sample to train or test on".into()));
        }
    }
    if let (false, Some(width)) = (args.conv, fc_width) {
        let input = train.sample_shape().iter().product();
        budget::check_fc(args, dataset, input, width).map_err(|(flag, e)| refused(flag, e))?;
    }
    let mut rng = fdfa::init::rng(args.seed);
    let mut model = build(args, &mut rng)?;
    if !fdfa::data::fits_input(train.sample_shape(), model.input_shape()) {
        let dir = fdfa::data::locate(dataset, args.data_dir.as_deref())
            .unwrap_or_else(|_| args.data_dir.clone().unwrap_or_default());
        let dims = |s: &[usize]| {
            s.iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join("x")
        };
        return Err(fdfa::Error::Data {
            path: dir,
            kind: fdfa::DataErrorKind::SizeMismatch {
                detail: format!(
                    "the images are {}, but the network takes {}",
                    dims(train.sample_shape()),
                    dims(model.input_shape())
                ),
            },
        });
    }
    budget::check(args, &mut model, train.len(), test.len())
        .map_err(|(flag, e)| refused(flag, e))?;
    let rule = args
        .train_mode
        .build(&model, args.directions as usize, &mut rng)?;
    say!(
        "{dataset}: {} training and {} test samples; {} with {} parameters on {} thread(s){}",
        train.len(),
        test.len(),
        args.train_mode,
        model.param_count(),
        fdfa::parallel::threads(),
        match (&group, args.block_parallel) {
            (Some(g), true) => format!(" x {} ranks, block-parallel", g.size()),
            (Some(g), false) => format!(
                " x {} ranks ({:?} BatchNorm)",
                g.size(),
                args.batch_norm_sync
            ),
            (None, _) => String::new(),
        }
    );
    let mut trainer = Trainer::new(model, rule, args.train_config())?;
    let mut settings = args.settings(dataset);
    settings.insert(DATA_FACTS[0].to_string(), describe(&*train));
    settings.insert(DATA_FACTS[1].to_string(), describe(&*test));
    let mode = args.train_mode.as_str();
    // Held until the run ends: no other process may train into or resume the same folder.
    let _lock: Option<CheckpointLock>;
    let (log_path, dir) = match (&args.resume, resume) {
        (Some(dir), Some(saved)) => {
            for key in DATA_FACTS {
                if let (Some(was), Some(now)) = (saved.settings.get(key), settings.get(key))
                    && was != now
                {
                    return Err(fdfa::Error::Incompatible {
                        setting: format!("{key} (--data-dir)"),
                        saved: was.clone(),
                        requested: now.clone(),
                    });
                }
            }
            // Rank 0 alone owns the folder; the other ranks only read it.
            _lock = match args.dry_run || !root {
                true => None,
                false => Some(CheckpointLock::acquire(dir)?),
            };
            if let Some(lock) = &_lock {
                let removed = checkpoint::remove_temporaries(lock)?;
                if !removed.is_empty() {
                    say!(
                        "removed {} temporary file(s) of an interrupted save",
                        removed.len()
                    );
                }
            }
            if root && !checkpoint::has_checksums(dir)? {
                eprintln!(
                    "warning: {} has no checksums (saved by an older fdfa): damage to its \
                     files cannot be detected; the next checkpoint will have them",
                    dir.display()
                );
            }
            checkpoint::load_trainer(dir, &mut trainer)?;
            let batches = train.len().div_ceil(args.batch_size as usize);
            if trainer.progress().batch > batches {
                return Err(fdfa::Error::Checkpoint {
                    path: dir.join(checkpoint::STATE_FILE),
                    reason: format!(
                        "`progress.batch` is {}, but an epoch of this run has {batches} batches",
                        trainer.progress().batch
                    ),
                });
            }
            say!("resuming from {} ({})", dir.display(), position(&trainer));
            if trainer.finished() {
                say!(
                    "nothing to train: the run has done {} epoch(s) and --epochs asks for {}; \
                     ask for more with --epochs",
                    trainer.progress().epoch,
                    args.epochs
                );
                return Ok(Outcome::Finished);
            }
            let given = args.log_dir_given.then_some(args.log_dir.as_path());
            let log = run_dir::resumed_log(dir, given, mode)?;
            (log, (!args.dry_run && root).then(|| dir.clone()))
        }
        // The other ranks of a distributed run write nothing.
        _ if !root => (PathBuf::new(), None),
        _ => {
            let folder = args.log_dir.join(mode);
            let (csv, ckpt) = run_dir::reserve(&folder, &timestamp(), args.dry_run)?;
            _lock = ckpt.as_deref().map(CheckpointLock::acquire).transpose()?;
            (csv, ckpt)
        }
    };
    // A dry run of a resumed run leaves the run's files as they are.
    let touch = root && !(args.dry_run && args.resume.is_some());
    let mut log = match touch {
        true => Some(CsvLog::rewrite(&log_path, &trainer.progress().records)?),
        false => None,
    };
    if touch {
        say!("logging to {}", log_path.display());
    } else {
        say!(
            "dry run: {} and the checkpoint stay as they are",
            log_path.display()
        );
    }
    let alignment = match args.measure_alignment {
        Some(every) => {
            let config = MeasureConfig {
                repeats: args.alignment_repeats as usize,
                jacobian_samples: args.alignment_jacobian_samples.map(|m| m as usize),
            };
            // Measured before each due step, on that step's batch, by a trainer hook.
            let probe = Arc::new(Mutex::new(AlignmentProbe::new(every as usize, config)?));
            let hook = probe.clone();
            trainer.set_before_step(Some(Box::new(move |mut step| {
                let position = (step.epoch, step.batch, step.batches);
                match hook.lock() {
                    Ok(mut probe) => probe.observe(
                        step.model,
                        step.rule,
                        step.x,
                        step.targets,
                        position,
                        &mut step.rng,
                    ),
                    Err(_) => Ok(()),
                }
            })));
            let path = alignment_log_path(&log_path);
            match touch {
                true => {
                    say!("alignment every {every} batches to {}", path.display());
                    Some((AlignmentLog::open(&path)?, probe))
                }
                false => None,
            }
        }
        None => None,
    };
    if let Some(g) = &group {
        // After any resume: the ranks compare what they loaded.
        match args.block_parallel {
            true => trainer.set_block_parallel(g.clone())?,
            false => trainer.set_distributed(g.clone(), args.batch_norm_sync)?,
        }
    }
    let mut saving = Saving {
        group,
        dir,
        run: RunInfo {
            settings,
            // The name only: the log lives next to the checkpoint folder.
            log: log_path.file_name().map(PathBuf::from),
        },
        stop,
        last_good,
        alignment,
    };
    train_loop_with(
        &mut trainer,
        &*train,
        &*test,
        log.as_mut(),
        args,
        &mut saving,
    )
}

/// The MPI world when `--distributed` is given.
#[cfg(feature = "mpi")]
fn connect(args: &Args) -> fdfa::Result<Option<Arc<dyn Communicator>>> {
    if !args.distributed {
        return Ok(None);
    }
    let world = fdfa::distributed::MpiCommunicator::init()?;
    Ok(Some(Arc::new(world)))
}

/// `--distributed` needs the `mpi` feature.
#[cfg(not(feature = "mpi"))]
fn connect(args: &Args) -> fdfa::Result<Option<Arc<dyn Communicator>>> {
    match args.distributed {
        false => Ok(None),
        true => Err(refused(
            "--distributed",
            "this example was built without MPI; build it with `--features mpi` (see the \
             README's section on distributed training)"
                .into(),
        )),
    }
}
