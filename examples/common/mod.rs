//! The command line shared by the dataset examples, with the reference's flags and defaults.

#![allow(dead_code)]

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use fdfa::data::{DataSource, DatasetName};
use fdfa::model::Model;
use fdfa::rules::RuleKind;
use fdfa::train::{CsvLog, TrainConfig, Trainer};
use indicatif::{ProgressBar, ProgressStyle};

/// Flags of the reference's training scripts, plus `--data-dir`, `--threads` and
/// `--directions`.
#[derive(Parser, Debug, Clone)]
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
    /// Worker threads (default: one per core).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub threads: Option<u64>,
    /// Random directions per sample for FDFA and FGA.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub directions: u64,
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

fn parse_rule(s: &str) -> Result<RuleKind, String> {
    s.parse().map_err(|e: fdfa::Error| e.to_string())
}

impl Args {
    /// The trainer settings these flags describe.
    pub fn train_config(&self) -> TrainConfig {
        TrainConfig {
            batch_size: self.batch_size as usize,
            test_batch_size: self.test_batch_size as usize,
            epochs: self.epochs,
            lr: self.lr,
            b_lr: self.b_lr,
            gamma: self.gamma,
            weight_decay: self.weight_decay,
            feedback_decay: self.feedback_decay,
            seed: self.seed,
            dry_run: self.dry_run,
        }
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

/// Parses the flags, loads the dataset, builds the network with `build`, trains and logs.
/// Exits with a message (not a panic) on any error.
pub fn main_with(
    dataset: DatasetName,
    build: impl Fn(&Args, &mut fdfa::init::Rng) -> fdfa::Result<Model>,
) {
    let args = Args::parse();
    if let Err(e) = run(dataset, &args, build) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run(
    dataset: DatasetName,
    args: &Args,
    build: impl Fn(&Args, &mut fdfa::init::Rng) -> fdfa::Result<Model>,
) -> fdfa::Result<()> {
    if let Some(t) = args.threads {
        // Only fails when a global pool already exists, which cannot happen this early.
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(t as usize)
            .build_global();
    }
    let (train, test) = fdfa::data::load(dataset, args.data_dir.as_deref())?;
    let mut rng = fdfa::init::rng(args.seed);
    let mut model = build(args, &mut rng)?;
    let rule = args
        .train_mode
        .build(&model, args.directions as usize, &mut rng)?;
    println!(
        "{dataset}: {} training and {} test samples; {} with {} parameters on {} thread(s)",
        train.len(),
        test.len(),
        args.train_mode,
        model.param_count(),
        fdfa::parallel::threads()
    );
    let mut trainer = Trainer::new(model, rule, args.train_config())?;
    let log_path = args
        .log_dir
        .join(args.train_mode.as_str())
        .join(format!("{}.csv", timestamp()));
    let mut log = CsvLog::open(&log_path)?;
    println!("logging to {}", log_path.display());
    train_loop(&mut trainer, &*train, &*test, &mut log, args)
}

/// Epochs with a progress bar, a line per epoch, and a CSV row per epoch.
pub fn train_loop(
    trainer: &mut Trainer,
    train: &dyn DataSource,
    test: &dyn DataSource,
    log: &mut CsvLog,
    args: &Args,
) -> fdfa::Result<()> {
    let bs = args.batch_size as usize;
    while !trainer.finished() {
        let epoch = trainer.progress().epoch + 1;
        let batches = train.len().div_ceil(bs) as u64;
        let bar = ProgressBar::new(batches).with_prefix(format!("epoch {epoch}"));
        bar.set_style(
            ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ({eta})")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_position(trainer.progress().batch as u64);
        let start = Instant::now();
        let mut samples = 0usize;
        let result = trainer.train_epoch(train, &mut |ev| {
            samples += ev.samples;
            let rate = samples as f64 / start.elapsed().as_secs_f64().max(1e-9);
            bar.set_position(ev.batch as u64);
            bar.set_message(format!("loss {:.4}, {rate:.0} samples/s", ev.running_loss));
            if (ev.batch as u64).is_multiple_of(args.log_interval) {
                let done = ((ev.batch - 1) * bs + ev.samples).min(train.len());
                let line = format!(
                    "Train Epoch: {} [{}/{} ({:.0}%)]\tLoss: {:.6}",
                    ev.epoch,
                    done,
                    train.len(),
                    100.0 * ev.batch as f64 / ev.batches as f64,
                    ev.loss
                );
                if bar.is_hidden() {
                    println!("{line}");
                } else {
                    bar.println(line);
                }
            }
            ControlFlow::Continue(())
        });
        bar.finish_and_clear();
        let train_loss = match result? {
            Some(loss) => loss,
            None => trainer.progress().loss_sum / trainer.progress().batch.max(1) as f64,
        };
        let elapsed = start.elapsed().as_secs_f64();
        let record = trainer.finish_epoch(train_loss, test)?;
        println!(
            "Epoch {}: training loss {:.4}, test loss {:.4}, test accuracy {:.2}% ({:.0} samples/s)",
            record.epoch,
            record.train_loss,
            record.test_loss,
            record.test_accuracy,
            samples as f64 / elapsed.max(1e-9)
        );
        log.append(&record)?;
        if args.dry_run {
            break;
        }
    }
    Ok(())
}

/// Where a dataset example's flags say the data is, for error messages.
pub fn describe(path: &Path) -> String {
    path.display().to_string()
}
