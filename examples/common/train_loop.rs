//! The training loop of the dataset examples: progress bar, log lines, CSV rows, checkpoints
//! after every epoch and every `--checkpoint-every` batches, Ctrl-C, and the hidden NaN
//! injection that tests the non-finite guard.

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use fdfa::data::DataSource;
use fdfa::diagnostics::{AlignmentLog, AlignmentProbe};
use fdfa::distributed::Communicator;
use fdfa::layers::StateMut;
use fdfa::train::checkpoint::{self, RunInfo};
use fdfa::train::{CsvLog, Trainer};
use indicatif::{ProgressBar, ProgressStyle};

use super::Args;

/// How a run ended without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every epoch ran (or the dry run's batch).
    Finished,
    /// Stopped by Ctrl-C after a batch, with a checkpoint saved.
    Interrupted,
}

/// Where and when a run saves checkpoints, and the Ctrl-C flag.
pub struct Saving<'a> {
    /// The ranks of a distributed run, which must agree on when to stop.
    pub group: Option<Arc<dyn Communicator>>,
    /// The checkpoint folder; `None` saves nothing.
    pub dir: Option<PathBuf>,
    /// What the checkpoints record about the run.
    pub run: RunInfo,
    /// Set by Ctrl-C: stop after the current batch.
    pub stop: &'a AtomicBool,
    /// The last checkpoint saved (or resumed from).
    pub last_good: &'a mut Option<PathBuf>,
    /// Where the alignment rows go, and the probe that measures them before training steps.
    pub alignment: Option<(AlignmentLog, Arc<Mutex<AlignmentProbe>>)>,
}

impl Saving<'_> {
    /// Whether to stop after this batch: Ctrl-C on any rank stops every rank at the same
    /// batch (a rank that stopped alone would leave the others waiting for it).
    fn stopping(&self) -> fdfa::Result<bool> {
        let mine = self.stop.load(Ordering::SeqCst);
        let Some(group) = &self.group else {
            return Ok(mine);
        };
        let mut flag = [f64::from(u8::from(mine))];
        group.add_f64(&mut flag)?;
        Ok(flag[0] > 0.0)
    }

    /// Saves a checkpoint, if there is a folder, and says so on `say`.
    fn save(&mut self, trainer: &mut Trainer, say: &dyn Fn(String)) -> fdfa::Result<()> {
        let Some(dir) = &self.dir else {
            return Ok(());
        };
        checkpoint::save_trainer(dir, trainer, &self.run)?;
        say(format!(
            "checkpoint saved to {} ({})",
            dir.display(),
            position(trainer)
        ));
        *self.last_good = Some(dir.clone());
        Ok(())
    }
}

/// Where the run stands, in words: `after epoch 2` or `in epoch 3, after batch 40`.
pub(super) fn position(trainer: &Trainer) -> String {
    let p = trainer.progress();
    if p.batch == 0 {
        format!("after epoch {}", p.epoch)
    } else {
        format!("in epoch {}, after batch {}", p.epoch + 1, p.batch)
    }
}

/// Why the trainer paused within an epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pause {
    Stop,
    Checkpoint,
    Inject,
}

/// Sets an element of the first feedback matrix (or, without one, of the first parameter)
/// to NaN; returns the tensor's name.
fn poison(trainer: &mut Trainer) -> String {
    let mut name = None;
    if let Some(fb) = trainer.rule_mut().feedback_mut() {
        fb.visit_mut(&mut |n, mut p| {
            if name.is_none() {
                p.storage_mut().0[0] = f32::NAN;
                name = Some(n.to_string());
            }
        });
    }
    if name.is_none() {
        trainer.model_mut().visit_state_mut(&mut |n, state| {
            if let (None, StateMut::Param(mut p)) = (&name, state) {
                p.storage_mut().0[0] = f32::NAN;
                name = Some(n.to_string());
            }
        });
    }
    name.unwrap_or_default()
}

/// Epochs with a progress bar, a line per epoch, and a CSV row per epoch, without
/// checkpoints.
pub fn train_loop(
    trainer: &mut Trainer,
    train: &dyn DataSource,
    test: &dyn DataSource,
    log: &mut CsvLog,
    args: &Args,
) -> fdfa::Result<Outcome> {
    let log = Some(log);
    let (stop, mut last_good) = (AtomicBool::new(false), None);
    let mut saving = Saving {
        group: None,
        dir: None,
        run: RunInfo::default(),
        stop: &stop,
        last_good: &mut last_good,
        alignment: None,
    };
    train_loop_with(trainer, train, test, log, args, &mut saving)
}

/// Epochs with a progress bar, a line per epoch, a CSV row and a checkpoint per epoch,
/// checkpoints every `--checkpoint-every` batches, and a checkpoint and a clean stop on
/// Ctrl-C. Without a `log` no row is written (a dry run of a resumed run).
pub fn train_loop_with(
    trainer: &mut Trainer,
    train: &dyn DataSource,
    test: &dyn DataSource,
    mut log: Option<&mut CsvLog>,
    args: &Args,
    saving: &mut Saving<'_>,
) -> fdfa::Result<Outcome> {
    let bs = args.batch_size as usize;
    let mut inject = args.inject_nan_at_batch;
    let mut done = 0u64;
    while !trainer.finished() {
        let epoch = trainer.progress().epoch + 1;
        let batches = train.len().div_ceil(bs) as u64;
        let bar = match super::quiet() {
            true => ProgressBar::hidden(),
            false => ProgressBar::new(batches),
        }
        .with_prefix(format!("epoch {epoch}"));
        bar.set_style(
            ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ({eta})")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_position(trainer.progress().batch as u64);
        let say = |line: String| {
            if bar.is_hidden() {
                say!("{line}");
            } else {
                bar.println(line);
            }
        };
        let mut failed = None;
        let start = Instant::now();
        let mut samples = 0usize;
        let train_loss = loop {
            if inject == Some(done + 1) {
                let name = poison(trainer);
                eprintln!("injecting NaN into {name} before batch {}", done + 1);
                inject = None;
            }
            let mut pause = None;
            let result = trainer.train_epoch(train, &mut |ev| {
                done += 1;
                samples += ev.samples;
                let rate = samples as f64 / start.elapsed().as_secs_f64().max(1e-9);
                bar.set_position(ev.batch as u64);
                bar.set_message(format!("loss {:.4}, {rate:.0} samples/s", ev.running_loss));
                if (ev.batch as u64).is_multiple_of(args.log_interval) {
                    let seen = ((ev.batch - 1) * bs + ev.samples).min(train.len());
                    say(format!(
                        "Train Epoch: {} [{}/{} ({:.0}%)]\tLoss: {:.6}",
                        ev.epoch,
                        seen,
                        train.len(),
                        100.0 * ev.batch as f64 / ev.batches as f64,
                        ev.loss
                    ));
                }
                let every = args.checkpoint_every.map(|n| n as usize);
                let stopping = saving.stopping().unwrap_or_else(|e| {
                    failed = Some(e);
                    true
                });
                pause = if stopping {
                    Some(Pause::Stop)
                } else if inject == Some(done + 1) {
                    Some(Pause::Inject)
                } else if every.is_some_and(|n| ev.batch % n == 0 && ev.batch < ev.batches) {
                    Some(Pause::Checkpoint)
                } else {
                    None
                };
                // A dry run is one batch: the command line's business, not the trainer's.
                if pause.is_some() || args.dry_run {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            });
            // The rows measured so far, also when the epoch stopped on an error.
            if let Some((alignment, probe)) = &mut saving.alignment {
                let rows = probe.lock().map(|mut p| p.take_rows()).unwrap_or_default();
                alignment.append(&rows)?;
            }
            if let Some(e) = failed.take() {
                return Err(e);
            }
            let p = trainer.progress();
            let partial = p.loss_sum / p.batch.max(1) as f64;
            match (result?, pause) {
                (Some(loss), _) => break loss,
                (None, _) if args.dry_run => break partial,
                (None, Some(Pause::Stop)) => {
                    bar.finish_and_clear();
                    return interrupted(trainer, saving);
                }
                (None, Some(Pause::Checkpoint)) => saving.save(trainer, &say)?,
                (None, Some(Pause::Inject) | None) => {}
            }
        };
        bar.finish_and_clear();
        let elapsed = start.elapsed().as_secs_f64();
        let record = trainer.finish_epoch(train_loss, test)?;
        say!(
            "Epoch {}: training loss {:.4}, test loss {:.4}, test accuracy {:.2}% ({:.0} samples/s)",
            record.epoch,
            record.train_loss,
            record.test_loss,
            record.test_accuracy,
            samples as f64 / elapsed.max(1e-9)
        );
        if let Some(log) = log.as_deref_mut() {
            log.append(&record)?;
        }
        if args.dry_run {
            break;
        }
        saving.save(trainer, &|line| say!("{line}"))?;
        if saving.stopping()? && !trainer.finished() {
            return interrupted(trainer, saving);
        }
    }
    Ok(Outcome::Finished)
}

/// Saves after Ctrl-C and says how to continue.
fn interrupted(trainer: &mut Trainer, saving: &mut Saving<'_>) -> fdfa::Result<Outcome> {
    saving.save(trainer, &|line| say!("{line}"))?;
    match &saving.dir {
        Some(dir) => say!(
            "interrupted {}; continue with --resume {}",
            position(trainer),
            dir.display()
        ),
        None => say!("interrupted; no checkpoint saved"),
    }
    Ok(Outcome::Interrupted)
}
