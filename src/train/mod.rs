//! The training loop: epochs of shuffled batches, the two optimizers, the learning-rate
//! schedule, evaluation and per-epoch records.
//!
//! Everything random is derived from the seed: the epoch's shuffle from `(seed, epoch)`,
//! augmentation from `(seed, epoch, batch)`, and the rule's directions from one generator
//! whose state travels with the trainer, so a run resumed from a checkpoint continues
//! exactly as the uninterrupted run would.

mod atomic;
mod blocks;
pub mod checkpoint;
pub(crate) mod csv_log;

pub use csv_log::CsvLog;

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::sync::Arc;

use ndarray_rand::rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use crate::data::DataSource;
use crate::distributed::{BatchGroup, BatchNormSync, Communicator, Shard};
use crate::error::{Error, Result};
use crate::init::{Rng, rng};
use crate::layers::ParamMut;
use crate::loss::evaluate_rows;
use crate::model::Model;
use crate::optim::Parameters;
use crate::optim::{Adam, AdamConfig, AdamState, StepLr};
use crate::rules::{Learned, LearningRule};
use crate::tensor::Tensor;

/// The training settings; `Default` holds the reference's command-line defaults, and the
/// `with_*` methods change one each (the struct may gain fields, so it is built that way).
///
/// ```
/// use fdfa::train::TrainConfig;
/// let config = TrainConfig::default().with_batch_size(16).with_epochs(3).with_lr(1e-2);
/// assert_eq!((config.batch_size, config.epochs, config.b_lr), (16, 3, 1e-4));
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TrainConfig {
    /// Samples per training batch (64).
    pub batch_size: usize,
    /// Samples per evaluation chunk (1000); the test loss does not depend on it.
    pub test_batch_size: usize,
    /// Epochs to train (100).
    pub epochs: usize,
    /// Forward learning rate (1e-4), decayed by `gamma` after every epoch.
    pub lr: f32,
    /// Feedback learning rate (1e-4), not decayed.
    pub b_lr: f32,
    /// Per-epoch decay of `lr` (0.95).
    pub gamma: f32,
    /// L2 weight decay of the forward parameters (0).
    pub weight_decay: f32,
    /// L2 weight decay of the feedback matrices (0).
    pub feedback_decay: f32,
    /// Seed of every random choice of the run.
    pub seed: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            batch_size: 64,
            test_batch_size: 1000,
            epochs: 100,
            lr: 1e-4,
            b_lr: 1e-4,
            gamma: 0.95,
            weight_decay: 0.0,
            feedback_decay: 0.0,
            seed: 1,
        }
    }
}

impl TrainConfig {
    /// Sets the samples per training batch.
    #[must_use]
    pub fn with_batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size;
        self
    }

    /// Sets the samples per evaluation chunk.
    #[must_use]
    pub fn with_test_batch_size(mut self, test_batch_size: usize) -> Self {
        self.test_batch_size = test_batch_size;
        self
    }

    /// Sets the number of epochs.
    #[must_use]
    pub fn with_epochs(mut self, epochs: usize) -> Self {
        self.epochs = epochs;
        self
    }

    /// Sets the forward learning rate.
    #[must_use]
    pub fn with_lr(mut self, lr: f32) -> Self {
        self.lr = lr;
        self
    }

    /// Sets the feedback learning rate.
    #[must_use]
    pub fn with_b_lr(mut self, b_lr: f32) -> Self {
        self.b_lr = b_lr;
        self
    }

    /// Sets the per-epoch decay of the forward learning rate.
    #[must_use]
    pub fn with_gamma(mut self, gamma: f32) -> Self {
        self.gamma = gamma;
        self
    }

    /// Sets the L2 weight decay of the forward parameters.
    #[must_use]
    pub fn with_weight_decay(mut self, weight_decay: f32) -> Self {
        self.weight_decay = weight_decay;
        self
    }

    /// Sets the L2 weight decay of the feedback matrices.
    #[must_use]
    pub fn with_feedback_decay(mut self, feedback_decay: f32) -> Self {
        self.feedback_decay = feedback_decay;
        self
    }

    /// Sets the seed of every random choice of the run.
    #[must_use]
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Checks every value once, so that a run cannot start with a setting it cannot honour.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the first offending field.
    pub fn validate(&self) -> Result<()> {
        let bad = |field, reason: &str| Err(Error::config("training", field, reason));
        if self.batch_size == 0 {
            return bad("batch_size", "must be positive");
        }
        if self.test_batch_size == 0 {
            return bad("test_batch_size", "must be positive");
        }
        for (field, v) in [
            ("lr", self.lr),
            ("b_lr", self.b_lr),
            ("weight_decay", self.weight_decay),
            ("feedback_decay", self.feedback_decay),
        ] {
            if !v.is_finite() || v < 0.0 {
                return bad(field, "must be finite and non-negative");
            }
        }
        if !(self.gamma > 0.0 && self.gamma <= 1.0) {
            return bad("gamma", "must lie in (0, 1]");
        }
        Ok(())
    }
}

/// One row of the training log.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// The epoch, from 1.
    pub epoch: usize,
    /// Mean of the epoch's batch losses.
    pub train_loss: f64,
    /// Mean over test batches of `batch_size` of the batch-mean cross-entropy (the
    /// reference's definition).
    pub test_loss: f64,
    /// Fraction of the test set classified correctly, in percent.
    pub test_accuracy: f64,
}

/// What the trainer reports after every batch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BatchEvent {
    /// The epoch, from 1.
    pub epoch: usize,
    /// Batches done in this epoch (from 1).
    pub batch: usize,
    /// Batches in this epoch.
    pub batches: usize,
    /// This batch's loss.
    pub loss: f32,
    /// Mean loss of the epoch so far.
    pub running_loss: f64,
    /// Samples in this batch.
    pub samples: usize,
}

/// Where a run stands: everything besides tensors that a checkpoint must save to resume
/// exactly.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Epochs completed.
    pub epoch: usize,
    /// Batches completed in the current epoch.
    pub batch: usize,
    /// Sum of the current epoch's batch losses so far.
    pub loss_sum: f64,
    /// The generator of the rule's random numbers.
    pub rng: Rng,
    /// The records of the completed epochs.
    pub records: Vec<EpochRecord>,
}

/// Trains a model with a learning rule.
///
/// ```
/// use fdfa::data::{DataSource, Dataset};
/// use fdfa::rules::RuleKind;
/// use fdfa::train::{TrainConfig, Trainer};
///
/// // 64 random 4x4 "images" of 2 classes.
/// let pixels: Vec<u8> = (0..64 * 16).map(|i| ((i * 37) % 256) as u8).collect();
/// let labels: Vec<u32> = (0..64).map(|i| (i % 2) as u32).collect();
/// let data = Dataset::new(pixels, labels, [1, 4, 4], 2)?;
///
/// let mut rng = fdfa::init::rng(0);
/// let model = fdfa::model::fc(&[1, 4, 4], 1, 8, 2, &mut rng)?;
/// let rule = RuleKind::Fdfa.build(&model, 1, &mut rng)?;
/// let config = TrainConfig::default().with_batch_size(16).with_epochs(2);
/// let mut trainer = Trainer::new(model, rule, config)?;
/// let records = trainer.fit(&data, &data, &mut |_| std::ops::ControlFlow::Continue(()))?;
/// assert_eq!(records.len(), 2);
/// assert!(records[1].test_accuracy >= 0.0);
/// # Ok::<(), fdfa::Error>(())
/// ```
#[derive(Debug)]
pub struct Trainer {
    model: Model,
    rule: Box<dyn LearningRule>,
    forward_opt: Adam,
    feedback_opt: Adam,
    schedule: StepLr,
    config: TrainConfig,
    progress: Progress,
    x: Tensor,
    targets: Vec<usize>,
    order: Vec<usize>,
    before_step: Hook,
    dist: Option<Distributed>,
    blocks: Option<blocks::BlockParallel>,
}

/// A trainer's place in a data-parallel run ([`Trainer::set_distributed`]).
#[derive(Debug)]
struct Distributed {
    comm: Arc<dyn Communicator>,
    batch_norm: BatchNormSync,
    /// The step's flag, loss and gradients, packed for one sum over the ranks.
    exchange: Vec<f32>,
}

impl Distributed {
    /// The rule's step on this rank's share, then the sum of every rank's gradients (and
    /// loss) weighted by its share of the batch; a failure on any rank fails every rank at
    /// the same step.
    #[allow(clippy::too_many_arguments)]
    fn step(
        &mut self,
        model: &mut Model,
        rule: &mut dyn LearningRule,
        x: &Tensor,
        targets: &[usize],
        rng: &mut Rng,
        shard: Shard,
        (epoch, batch): (usize, usize),
    ) -> Result<crate::rules::StepReport> {
        let group = BatchGroup::new(self.comm.clone(), shard, self.batch_norm);
        let local = model
            .set_batch_group(Some(group.clone()))
            .and_then(|()| rule.step(model, x, targets, rng));
        model.set_batch_group(None)?;
        // [failed, loss, forward gradients..., feedback gradients...]
        let mut buf = std::mem::take(&mut self.exchange);
        buf.clear();
        buf.push(f32::from(local.is_err()));
        buf.push(local.as_ref().map_or(0.0, |r| r.loss));
        model.visit_params(&mut |_, mut p| buf.extend_from_slice(p.storage_mut().1));
        rule.visit_learned(&mut |_, mut p| buf.extend_from_slice(p.storage_mut().1));
        self.exchange = self.comm.sum_f32_owned(buf, group.weights())?;
        let buf = &self.exchange;
        if buf[0] != 0.0 {
            return Err(local.err().unwrap_or_else(|| Error::Distributed {
                rank: self.comm.rank(),
                reason: format!("another rank failed at epoch {epoch}, batch {batch}"),
            }));
        }
        let mut at = 2;
        let mut unpack = |_: &str, mut p: ParamMut<'_>| {
            let g = p.storage_mut().1;
            g.copy_from_slice(&buf[at..at + g.len()]);
            at += g.len();
        };
        model.visit_params(&mut unpack);
        rule.visit_learned(&mut unpack);
        if self.batch_norm == BatchNormSync::PerRank {
            // Each rank's running statistics saw only its share: keep rank 0's, as DDP does.
            let mut stats = Vec::new();
            model.visit_state(&mut |_, s| {
                if let crate::layers::State::Buffer(b) = s {
                    stats.extend_from_slice(b.data());
                }
            });
            self.comm.broadcast_f32(0, &mut stats)?;
            let mut at = 0;
            model.visit_state_mut(&mut |_, s| {
                if let crate::layers::StateMut::Buffer(mut b) = s {
                    let d = b.data_mut();
                    d.copy_from_slice(&stats[at..at + d.len()]);
                    at += d.len();
                }
            });
        }
        Ok(crate::rules::StepReport { loss: buf[1] })
    }
}

/// The batch a training step is about to train on, as a
/// [`Trainer::set_before_step`] hook sees it.
pub struct StepContext<'a> {
    /// The network, before the step.
    pub model: &'a mut Model,
    /// The learning rule, before the step.
    pub rule: &'a mut dyn LearningRule,
    /// The batch's inputs.
    pub x: &'a Tensor,
    /// The batch's class indices.
    pub targets: &'a [usize],
    /// The epoch, from 1.
    pub epoch: usize,
    /// The batch within the epoch, from 1.
    pub batch: usize,
    /// Batches in the epoch.
    pub batches: usize,
    /// A generator for the hook's own random numbers, derived from the run's seed, the epoch
    /// and the batch (training's generator is not touched).
    pub rng: Rng,
}

/// A hook run before every training step ([`Trainer::set_before_step`]).
pub type BeforeStep = Box<dyn FnMut(StepContext<'_>) -> Result<()> + Send>;

/// The trainer's optional hook, shown by `Debug` as present or not.
#[derive(Default)]
struct Hook(Option<BeforeStep>);

impl std::fmt::Debug for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Some(<hook>)"
        } else {
            "None"
        })
    }
}

/// A generator for one purpose of one epoch (and batch) of a run.
fn derived_rng(seed: u64, purpose: u64, epoch: usize, batch: usize) -> Rng {
    let mut r = rng(seed ^ purpose.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    r.set_stream(((epoch as u64) << 32) | batch as u64);
    r
}

const SHUFFLE: u64 = 1;
const AUGMENT: u64 = 2;
const DIRECTIONS: u64 = 3;
const HOOK: u64 = 4;

impl Trainer {
    /// A trainer at epoch 0.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when `config` does not validate.
    pub fn new(model: Model, rule: Box<dyn LearningRule>, config: TrainConfig) -> Result<Self> {
        config.validate()?;
        let forward_opt = AdamConfig::default()
            .with_lr(config.lr)
            .with_weight_decay(config.weight_decay)
            .init()?;
        let feedback_opt = AdamConfig::default()
            .with_lr(config.b_lr)
            .with_weight_decay(config.feedback_decay)
            .init()?;
        Ok(Self {
            model,
            rule,
            forward_opt,
            feedback_opt,
            schedule: StepLr::new(config.lr, config.gamma),
            progress: Progress {
                epoch: 0,
                batch: 0,
                loss_sum: 0.0,
                rng: derived_rng(config.seed, DIRECTIONS, 0, 0),
                records: Vec::new(),
            },
            config,
            x: Tensor::default(),
            targets: Vec::new(),
            order: Vec::new(),
            before_step: Hook::default(),
            dist: None,
            blocks: None,
        })
    }

    /// Sets (or, with `None`, removes) a hook that runs before every training step on the
    /// batch the step is about to train on, e.g. a diagnostic such as
    /// [`AlignmentProbe`](crate::diagnostics::AlignmentProbe). The hook must leave the model
    /// and the rule as it found them for training to be unchanged; its random numbers come
    /// from [`StepContext::rng`], not from training's generator.
    ///
    /// ```
    /// use std::ops::ControlFlow;
    /// use std::sync::{Arc, Mutex};
    /// use fdfa::data::Dataset;
    /// use fdfa::diagnostics::{AlignmentProbe, MeasureConfig};
    /// use fdfa::rules::RuleKind;
    /// use fdfa::train::{TrainConfig, Trainer};
    ///
    /// let pixels: Vec<u8> = (0..64 * 16).map(|i| ((i * 37) % 256) as u8).collect();
    /// let labels: Vec<u32> = (0..64).map(|i| (i % 2) as u32).collect();
    /// let data = Dataset::new(pixels, labels, [1, 4, 4], 2)?;
    /// let mut rng = fdfa::init::rng(0);
    /// let model = fdfa::model::fc(&[1, 4, 4], 1, 8, 2, &mut rng)?;
    /// let rule = RuleKind::Fdfa.build(&model, 1, &mut rng)?;
    /// let config = TrainConfig::default().with_batch_size(16).with_epochs(1);
    /// let mut trainer = Trainer::new(model, rule, config)?;
    /// let probe = Arc::new(Mutex::new(AlignmentProbe::new(2, MeasureConfig::default())?));
    /// let hook = probe.clone();
    /// trainer.set_before_step(Some(Box::new(move |mut step| {
    ///     let position = (step.epoch, step.batch, step.batches);
    ///     let mut probe = hook.lock().unwrap();
    ///     probe.observe(step.model, step.rule, step.x, step.targets, position, &mut step.rng)
    /// })));
    /// trainer.fit(&data, &data, &mut |_| ControlFlow::Continue(()))?;
    /// // Batches 2 and 4 of 4, one row per hidden block.
    /// assert_eq!(probe.lock().unwrap().take_rows().len(), 2);
    /// # Ok::<(), fdfa::Error>(())
    /// ```
    pub fn set_before_step(&mut self, hook: Option<BeforeStep>) {
        self.before_step = Hook(hook);
    }

    /// Makes this trainer one rank of a data-parallel run over `comm`'s ranks (see
    /// [`distributed`](crate::distributed)): every rank builds the same trainer (same
    /// configuration, model, rule and position: from the same seed, or from the same
    /// checkpoint), calls this, and runs the same loop. Each rank then trains on its share of
    /// every global batch, the gradients are summed over the ranks before the optimizers
    /// step, and evaluation splits the test set among the ranks; every rank ends each step
    /// with the same weights. With [`BatchNormSync::Synchronized`] it is the single-process
    /// algorithm, up to the order of f32 summation.
    ///
    /// ```
    /// use std::ops::ControlFlow;
    /// use std::sync::Arc;
    /// use fdfa::data::Dataset;
    /// use fdfa::distributed::{BatchNormSync, ThreadGroup};
    /// use fdfa::rules::RuleKind;
    /// use fdfa::train::{TrainConfig, Trainer};
    ///
    /// let pixels: Vec<u8> = (0..64 * 16).map(|i| ((i * 37) % 256) as u8).collect();
    /// let labels: Vec<u32> = (0..64).map(|i| (i % 2) as u32).collect();
    /// let data = Dataset::new(pixels, labels, [1, 4, 4], 2)?;
    /// let train = |comm: Option<ThreadGroup>| -> fdfa::Result<Vec<f32>> {
    ///     let mut rng = fdfa::init::rng(0);
    ///     let model = fdfa::model::fc(&[1, 4, 4], 1, 8, 2, &mut rng)?;
    ///     let rule = RuleKind::Fdfa.build(&model, 1, &mut rng)?;
    ///     let config = TrainConfig::default().with_batch_size(16).with_epochs(2);
    ///     let mut trainer = Trainer::new(model, rule, config)?;
    ///     if let Some(comm) = comm {
    ///         trainer.set_distributed(Arc::new(comm), BatchNormSync::Synchronized)?;
    ///     }
    ///     trainer.fit(&data, &data, &mut |_| ControlFlow::Continue(()))?;
    ///     let mut weights = Vec::new();
    ///     trainer.model().visit_state(&mut |_, s| {
    ///         if let fdfa::layers::State::Param(p) = s { weights.extend(p.value().data()) }
    ///     });
    ///     Ok(weights)
    /// };
    /// let alone = train(None)?;
    /// // Two ranks, as two threads of this process with a worker thread each.
    /// let ranks = ThreadGroup::run(2, 1, |comm| train(Some(comm)))?;
    /// let ranks: Vec<Vec<f32>> = ranks.into_iter().collect::<fdfa::Result<_>>()?;
    /// assert_eq!(ranks[0], ranks[1]);
    /// let worst = alone.iter().zip(&ranks[0]).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    /// assert!(worst < 1e-5, "{worst}");
    /// # Ok::<(), fdfa::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Distributed`] when the ranks disagree on the configuration, the model's
    /// architecture or state, the rule or the position (the error names the first rank that
    /// differs from rank 0), or the global batch is smaller than the number of ranks; as the
    /// transport fails.
    pub fn set_distributed(
        &mut self,
        comm: Arc<dyn Communicator>,
        batch_norm: BatchNormSync,
    ) -> Result<()> {
        let size = comm.size();
        let fail = |reason: String| Error::Distributed {
            rank: comm.rank(),
            reason,
        };
        if self.config.batch_size < size {
            return Err(fail(format!(
                "a batch of {} samples cannot be split over {size} ranks",
                self.config.batch_size
            )));
        }
        if self.blocks.is_some() {
            return Err(fail("the trainer already trains block-parallel".into()));
        }
        self.check_ranks_agree(comm.as_ref(), &format!("data-parallel, {batch_norm:?}"))?;
        self.dist = Some(Distributed {
            comm,
            batch_norm,
            exchange: Vec::new(),
        });
        Ok(())
    }

    /// Makes this trainer one rank of a block-parallel run over `comm`'s ranks: rank `r`
    /// owns a consecutive share of the model's blocks (split so that the busiest rank has
    /// the least work, by [`Model::block_flops_per_sample`]), the
    /// batch's activations (and FDFA's tangents) flow forward rank to rank, the rank owning
    /// the output broadcasts the error (and FDFA's output tangent), and every rank updates
    /// its own blocks at once, with no backward pass between ranks. This is the
    /// single-process algorithm, bit for bit, for DFA, DKP and FDFA; BP runs the same
    /// placement with its gradient sent back rank to rank, the baseline to compare with.
    ///
    /// Every rank builds the same trainer and runs the same loop (every rank reads the whole
    /// batch). Between steps only a rank's own blocks are current on it; the trainer makes
    /// every copy whole (each rank broadcasting its blocks' state and moments) before it
    /// hands control back: at the end of an epoch (so evaluation and checkpoints see the
    /// whole model), when `on_batch` breaks, and after each
    /// [`train_batch`](Self::train_batch).
    ///
    /// ```
    /// use std::ops::ControlFlow;
    /// use fdfa::data::Dataset;
    /// use fdfa::distributed::ThreadGroup;
    /// use fdfa::rules::RuleKind;
    /// use fdfa::train::{TrainConfig, Trainer};
    ///
    /// let pixels: Vec<u8> = (0..64 * 16).map(|i| ((i * 37) % 256) as u8).collect();
    /// let labels: Vec<u32> = (0..64).map(|i| (i % 2) as u32).collect();
    /// let data = Dataset::new(pixels, labels, [1, 4, 4], 2)?;
    /// let train = |comm: Option<ThreadGroup>| -> fdfa::Result<Vec<f32>> {
    ///     let mut rng = fdfa::init::rng(0);
    ///     // Three blocks: two hidden ones and the output.
    ///     let model = fdfa::model::fc(&[1, 4, 4], 2, 8, 2, &mut rng)?;
    ///     let rule = RuleKind::Fdfa.build(&model, 1, &mut rng)?;
    ///     let config = TrainConfig::default().with_batch_size(16).with_epochs(2);
    ///     let mut trainer = Trainer::new(model, rule, config)?;
    ///     if let Some(comm) = comm {
    ///         trainer.set_block_parallel(std::sync::Arc::new(comm))?;
    ///     }
    ///     trainer.fit(&data, &data, &mut |_| ControlFlow::Continue(()))?;
    ///     let mut weights = Vec::new();
    ///     trainer.model().visit_state(&mut |_, s| {
    ///         if let fdfa::layers::State::Param(p) = s { weights.extend(p.value().data()) }
    ///     });
    ///     Ok(weights)
    /// };
    /// let alone = train(None)?;
    /// let ranks = ThreadGroup::run(2, 1, |comm| train(Some(comm)))?;
    /// for weights in ranks {
    ///     assert_eq!(weights?, alone);
    /// }
    /// # Ok::<(), fdfa::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Distributed`] when the rule does not support it (FG-W, FG-A, a rule of your
    /// own), there are more ranks than blocks, the trainer is already data-parallel, or the
    /// ranks disagree (as for [`set_distributed`](Self::set_distributed)).
    pub fn set_block_parallel(&mut self, comm: Arc<dyn Communicator>) -> Result<()> {
        if self.dist.is_some() {
            return Err(Error::Distributed {
                rank: comm.rank(),
                reason: "the trainer already trains data-parallel".into(),
            });
        }
        let placement = blocks::BlockParallel::new(comm.clone(), &self.model, self.rule.as_ref())?;
        self.check_ranks_agree(comm.as_ref(), "block-parallel")?;
        self.blocks = Some(placement);
        Ok(())
    }

    /// Checks that every rank of `comm` holds the same configuration, position, rule, mode
    /// and state.
    fn check_ranks_agree(&self, comm: &dyn Communicator, mode: &str) -> Result<()> {
        // Both serialize without fail (plain fields); an empty string would still compare.
        let settings = format!(
            "{}|{}|{}|{mode}",
            serde_json::to_string(&self.config).unwrap_or_default(),
            serde_json::to_string(&self.progress).unwrap_or_default(),
            self.rule.name(),
        );
        crate::distributed::check_agreement(
            comm,
            "the configuration, the position, the rule or the parallel mode",
            crate::distributed::fingerprint(settings.as_bytes()),
        )?;
        crate::distributed::check_agreement(
            comm,
            "the model's architecture or state, or the rule's feedback matrices",
            self.state_fingerprint(),
        )
    }

    /// The ranks of a data-parallel or block-parallel run, if any (this trainer's rank is
    /// [`Communicator::rank`]).
    pub fn communicator(&self) -> Option<&dyn Communicator> {
        match (&self.dist, &self.blocks) {
            (Some(d), _) => Some(d.comm.as_ref()),
            (None, Some(b)) => Some(b.comm().as_ref()),
            (None, None) => None,
        }
    }

    /// Whether this trainer writes what a run writes once (logs, checkpoints, progress):
    /// rank 0 of a distributed run, or the only process.
    pub fn is_root(&self) -> bool {
        self.communicator().is_none_or(|c| c.rank() == 0)
    }

    /// Makes every rank's copy of a block-parallel run whole (nothing otherwise).
    fn sync_blocks(&mut self) -> Result<()> {
        match &mut self.blocks {
            Some(b) => b.sync(
                &mut self.model,
                self.rule.as_mut(),
                &mut self.forward_opt,
                &mut self.feedback_opt,
            ),
            None => Ok(()),
        }
    }

    /// A hash of the names, shapes and values of the model's state and of the rule's
    /// feedback matrices.
    fn state_fingerprint(&self) -> u64 {
        let mut bytes = Vec::new();
        let mut add = |name: &str, shape: &[usize], data: &[f32]| {
            bytes.extend_from_slice(name.as_bytes());
            for d in shape {
                bytes.extend_from_slice(&(*d as u64).to_le_bytes());
            }
            // One word per value keeps the hash cheap on large models.
            let h = data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, v| {
                (h ^ u64::from(v.to_bits())).wrapping_mul(0x0000_0100_0000_01b3)
            });
            bytes.extend_from_slice(&h.to_le_bytes());
        };
        self.model.visit_state(&mut |name, s| match s {
            crate::layers::State::Param(p) => add(name, &p.shape(), p.value().data()),
            crate::layers::State::Buffer(b) => add(name, b.shape(), b.data()),
            crate::layers::State::Counter(c) => add(name, &[c as usize], &[]),
        });
        if let Some(feedback) = self.rule.feedback() {
            for (name, b) in feedback.names().iter().zip(feedback.matrices()) {
                add(name, b.value.shape(), b.value.data());
            }
        }
        crate::distributed::fingerprint(&bytes)
    }

    /// The settings.
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    /// Where the run stands.
    pub fn progress(&self) -> &Progress {
        &self.progress
    }

    /// The network.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The network, to read or edit its state ([`Model::visit_state_mut`] checks every
    /// write). The rule was built for this model's feedback points: a model of another
    /// architecture swapped in makes the next step fail with a shape error.
    pub fn model_mut(&mut self) -> &mut Model {
        &mut self.model
    }

    /// The learning rule (owning its feedback matrices).
    pub fn rule(&self) -> &dyn LearningRule {
        self.rule.as_ref()
    }

    /// The learning rule, to read or edit its feedback matrices.
    pub fn rule_mut(&mut self) -> &mut dyn LearningRule {
        self.rule.as_mut()
    }

    /// The network and the rule at once (e.g. for
    /// [`diagnostics::measure`](crate::diagnostics::measure)).
    pub fn parts_mut(&mut self) -> (&mut Model, &mut dyn LearningRule) {
        (&mut self.model, self.rule.as_mut())
    }

    /// The forward parameters' optimizer.
    pub fn forward_optimizer(&self) -> &Adam {
        &self.forward_opt
    }

    /// The learned feedback matrices' optimizer.
    pub fn feedback_optimizer(&self) -> &Adam {
        &self.feedback_opt
    }

    /// Restores, together, both optimizers' step counts and moments (by parameter name, in
    /// the parameters' storage layout) and the position; the forward learning rate follows
    /// the schedule. The checkpoint loader's one operation on the trainer.
    pub(crate) fn restore(
        &mut self,
        forward: (u64, BTreeMap<String, AdamState>),
        feedback: (u64, BTreeMap<String, AdamState>),
        progress: Progress,
    ) {
        self.forward_opt.restore(forward.0, forward.1);
        self.feedback_opt.restore(feedback.0, feedback.1);
        self.forward_opt.set_lr(self.schedule.lr(progress.epoch));
        self.progress = progress;
    }

    /// One training step on a batch of your own, for a training loop of your own: the
    /// rule's step, then both optimizers, with the non-finite guard, exactly as
    /// [`train_epoch`](Self::train_epoch) runs each batch. It leaves the epoch, the batch
    /// position and the learning-rate schedule alone (they are the loop's business) and
    /// does not run the [`set_before_step`](Self::set_before_step) hook. Returns the loss.
    ///
    /// `x` is `[N, ...]` with samples of the model's input shape (or of another layout with
    /// as many values, as [`check_fits`](crate::data::check_fits) allows), `targets` one
    /// class per sample. In a distributed run every rank passes the same batch: a
    /// data-parallel rank trains on its share of it, and a block-parallel run's ranks are
    /// whole again when the call returns.
    ///
    /// ```
    /// use fdfa::prelude::*;
    ///
    /// let mut rng = fdfa::init::rng(0);
    /// let model = Sequential::new(&[2]).linear(8).relu().feedback().linear(2).build(&mut rng)?;
    /// let rule = RuleKind::Fdfa.build(&model, 1, &mut rng)?;
    /// let config = TrainConfig::default().with_lr(1e-2).with_b_lr(1e-2);
    /// let mut trainer = Trainer::new(model, rule, config)?;
    /// // Which of two coordinates is larger.
    /// let x = Tensor::from_vec(&[4, 2], vec![1.0, -1.0, -0.5, 0.5, 0.2, -0.9, -1.0, 0.3])?;
    /// let targets = [0, 1, 0, 1];
    /// let first = trainer.train_batch(&x, &targets)?;
    /// let mut last = first;
    /// for _ in 0..50 {
    ///     last = trainer.train_batch(&x, &targets)?;
    /// }
    /// assert!(last < first);
    /// assert_eq!(trainer.model().predict(&x)?, targets);
    /// # Ok::<(), fdfa::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::InputMismatch`] when the samples do not fit the model; [`Error::Shape`] for
    /// an empty batch or a number of targets other than `N`; [`Error::LabelOutOfRange`] for a
    /// target not below the model's classes; [`Error::NonFinite`] (at the next epoch, batch
    /// 0) when the loss, a gradient or a parameter stops being finite; whatever the rule
    /// reports.
    pub fn train_batch(&mut self, x: &Tensor, targets: &[usize]) -> Result<f32> {
        let input = self.model.input_shape();
        let Some((&n, sample)) = x.shape().split_first().filter(|(n, _)| **n > 0) else {
            return Err(Error::shape(
                "train_batch",
                "[N, ...] with N > 0",
                x.shape(),
            ));
        };
        if !crate::data::fits_input(sample, input) {
            return Err(Error::InputMismatch {
                data: sample.to_vec(),
                model: input.to_vec(),
            });
        }
        if targets.len() != n {
            return Err(Error::shape(
                "train_batch targets",
                format!("[{n}] (one per sample)"),
                &[targets.len()],
            ));
        }
        let classes = self.model.classes();
        if let Some((index, &label)) = targets.iter().enumerate().find(|(_, t)| **t >= classes) {
            return Err(Error::LabelOutOfRange {
                context: "train_batch".into(),
                label,
                index,
                classes,
            });
        }
        // Every rank of a data-parallel run passes the same batch and trains on its share.
        let shard = match &self.dist {
            Some(d) if n < d.comm.size() => {
                return Err(Error::Distributed {
                    rank: d.comm.rank(),
                    reason: format!(
                        "a batch of {n} samples cannot be split over {} ranks",
                        d.comm.size()
                    ),
                });
            }
            Some(d) => Shard::of(n, d.comm.rank(), d.comm.size()),
            None => Shard::whole(n),
        };
        let mut shape = vec![shard.len];
        shape.extend_from_slice(input);
        self.x.resize(&shape);
        let row = x.len() / n;
        let rows = shard.offset * row..(shard.offset + shard.len) * row;
        self.x.data_mut().copy_from_slice(&x.data()[rows]);
        self.targets.clear();
        self.targets
            .extend_from_slice(&targets[shard.offset..shard.offset + shard.len]);
        let loss = self.step(self.progress.epoch + 1, 0, shard)?;
        self.sync_blocks()?;
        Ok(loss)
    }

    /// Whether every epoch has run.
    pub fn finished(&self) -> bool {
        self.progress.epoch >= self.config.epochs
    }

    /// Runs the current epoch from where it stands. `on_batch` is called after every
    /// batch; returning `Break` stops after that batch with the position saved in
    /// [`progress`](Self::progress) (for a checkpoint or a clean Ctrl-C).
    ///
    /// Returns the epoch's mean training loss when the epoch completed.
    ///
    /// # Errors
    /// [`Error::NonFinite`] when the loss, a gradient or a parameter stops being finite;
    /// whatever the data source or the rule reports.
    pub fn train_epoch(
        &mut self,
        train: &dyn DataSource,
        on_batch: &mut dyn FnMut(&BatchEvent) -> ControlFlow<()>,
    ) -> Result<Option<f64>> {
        let epoch = self.progress.epoch + 1;
        let n = train.len();
        let bs = self.config.batch_size;
        let batches = n.div_ceil(bs);
        self.order.clear();
        self.order.extend(0..n);
        self.order
            .shuffle(&mut derived_rng(self.config.seed, SHUFFLE, epoch, 0));
        let mut shape = self.batch_shape(0, train)?;
        if self.progress.batch > batches {
            return Err(Error::config(
                "training",
                "progress.batch",
                format!(
                    "{} batches done, but an epoch of {n} samples has {batches}",
                    self.progress.batch
                ),
            ));
        }
        while self.progress.batch < batches {
            let b = self.progress.batch;
            let batch = &self.order[b * bs..((b + 1) * bs).min(n)];
            let m = batch.len();
            // A rank of a data-parallel run trains on its share of the global batch.
            let shard = match &self.dist {
                Some(d) => {
                    let shard = Shard::of(m, d.comm.rank(), d.comm.size());
                    if shard.len == 0 {
                        return Err(Error::Distributed {
                            rank: d.comm.rank(),
                            reason: format!(
                                "batch {} of epoch {epoch} holds {m} samples, fewer than the {} ranks",
                                b + 1,
                                d.comm.size()
                            ),
                        });
                    }
                    shard
                }
                None => Shard::whole(m),
            };
            let indices = &batch[shard.offset..shard.offset + shard.len];
            shape[0] = shard.len;
            self.x.resize(&shape);
            self.targets.resize(shard.len, 0);
            let seed = derived_seed(self.config.seed, AUGMENT, epoch, b);
            train.fill_batch_at(
                indices,
                seed,
                shard.offset,
                self.x.data_mut(),
                &mut self.targets,
            )?;
            if let Some(hook) = &mut self.before_step.0 {
                hook(StepContext {
                    model: &mut self.model,
                    rule: self.rule.as_mut(),
                    x: &self.x,
                    targets: &self.targets,
                    epoch,
                    batch: b + 1,
                    batches,
                    rng: derived_rng(self.config.seed, HOOK, epoch, b),
                })?;
            }
            // Batches are counted from 1 in errors, as in the progress lines.
            let report = self.step(epoch, b + 1, shard)?;
            self.progress.batch += 1;
            self.progress.loss_sum += report as f64;
            let event = BatchEvent {
                epoch,
                batch: b + 1,
                batches,
                loss: report,
                running_loss: self.progress.loss_sum / (b + 1) as f64,
                samples: m,
            };
            if on_batch(&event).is_break() {
                self.sync_blocks()?;
                return Ok(None);
            }
        }
        self.sync_blocks()?;
        Ok(Some(self.progress.loss_sum / batches.max(1) as f64))
    }

    /// One training step on the batch in `self.x` (this rank's `shard` of the global
    /// batch): gradients (summed over the ranks of a data-parallel run), then the feedback
    /// optimizer, then the forward one, with the non-finite guard.
    fn step(&mut self, epoch: usize, batch: usize, shard: Shard) -> Result<f32> {
        let nonfinite = |tensor: String| Error::NonFinite {
            tensor,
            epoch,
            batch,
        };
        // One entry into the pool for the whole step (see `parallel::run`).
        let (rule, model) = (&mut self.rule, &mut self.model);
        let (feedback_opt, forward_opt) = (&mut self.feedback_opt, &mut self.forward_opt);
        let (x, targets, rng) = (&self.x, &self.targets, &mut self.progress.rng);
        let (dist, blocks) = (&mut self.dist, &mut self.blocks);
        crate::parallel::run(|| -> Result<_> {
            let report = match (dist, &mut *blocks) {
                (None, None) => rule.step(model, x, targets, rng)?,
                (Some(d), _) => {
                    d.step(model, rule.as_mut(), x, targets, rng, shard, (epoch, batch))?
                }
                (None, Some(b)) => b.step(model, rule.as_mut(), x, targets, rng)?,
            };
            if !report.loss.is_finite() {
                return Err(nonfinite("loss".into()));
            }
            // The optimizers check every gradient and updated value as they go; a rank of
            // a block-parallel run updates its own blocks.
            let (feedback, forward) = match blocks {
                None => (
                    feedback_opt.step(&mut Learned(rule.as_mut())),
                    forward_opt.step(model),
                ),
                Some(b) => {
                    let feedback = feedback_opt.step(&mut b.owned_feedback(model, rule.as_mut()));
                    let forward = forward_opt.step(&mut b.owned_params(model));
                    // Every rank stops at the same step when one rank's update failed.
                    let failed = feedback.is_err() || forward.is_err();
                    let mut flag = [f64::from(u8::from(failed))];
                    b.comm().add_f64(&mut flag)?;
                    if flag[0] > 0.0 && !failed {
                        return Err(Error::Distributed {
                            rank: b.comm().rank(),
                            reason: format!(
                                "another rank's update failed at epoch {epoch}, batch {batch}"
                            ),
                        });
                    }
                    (feedback, forward)
                }
            };
            feedback.and(forward).map_err(|e| match e {
                Error::NonFiniteUpdate { tensor } => nonfinite(tensor),
                other => other,
            })?;
            Ok(report.loss)
        })
    }

    /// The shape of a batch of `m` samples of `source` as the model takes it, after checking
    /// that the source fits the model ([`check_fits`](crate::data::check_fits)): checked
    /// before the first batch.
    fn batch_shape(&self, m: usize, source: &dyn DataSource) -> Result<Vec<usize>> {
        crate::data::check_fits(source, self.model.input_shape(), self.model.classes())?;
        let mut shape = vec![m];
        shape.extend_from_slice(self.model.input_shape());
        Ok(shape)
    }

    /// Closes the current epoch: records it with the test results and decays the learning
    /// rate.
    ///
    /// # Errors
    /// As [`evaluate`](Self::evaluate).
    pub fn finish_epoch(&mut self, train_loss: f64, test: &dyn DataSource) -> Result<EpochRecord> {
        let (test_loss, test_accuracy) = self.evaluate(test)?;
        self.progress.epoch += 1;
        self.progress.batch = 0;
        self.progress.loss_sum = 0.0;
        let record = EpochRecord {
            epoch: self.progress.epoch,
            train_loss,
            test_loss,
            test_accuracy,
        };
        self.progress.records.push(record);
        self.forward_opt
            .set_lr(self.schedule.lr(self.progress.epoch));
        Ok(record)
    }

    /// Test loss and accuracy (percent) in inference mode.
    ///
    /// # Errors
    /// [`Error::Shape`] when the samples do not fit the model; [`Error::ClassMismatch`] when
    /// the data has more classes than the model has logits; [`Error::LabelOutOfRange`] for a
    /// label not below the model's classes; whatever the source reports.
    pub fn evaluate(&mut self, test: &dyn DataSource) -> Result<(f64, f64)> {
        let n = test.len();
        // A batch larger than the test set is the test set: the same groups, and no
        // allocation sized by a setting rather than by the data.
        let bs = self.config.batch_size.min(n.max(1));
        // Chunks are whole multiples of the training batch size, so that the test loss can be
        // averaged over batches of that size as the reference does; one chunk at most holds
        // the whole set.
        let chunk = (self.config.test_batch_size / self.config.batch_size)
            .max(1)
            .saturating_mul(bs)
            .min(n.max(1));
        let classes = self.model.classes();
        // Per group of `bs` samples its mean loss, then the number classified correctly: a
        // rank of a data-parallel run fills the chunks it owns (every `size`-th) and zeros
        // elsewhere, so the sum over ranks holds every value exactly, and the loss is added
        // up in the same order as on one process.
        let groups = n.div_ceil(bs);
        let mut results = vec![0.0f64; groups + 1];
        let (rank, size) = self.communicator().map_or((0, 1), |c| (c.rank(), c.size()));
        let mut indices = Vec::with_capacity(chunk);
        let mut x = Tensor::default();
        let mut targets = Vec::new();
        let mut shape = self.batch_shape(0, test)?;
        for (c, start) in (0..n).step_by(chunk).enumerate() {
            if c % size != rank {
                continue;
            }
            let m = chunk.min(n - start);
            indices.clear();
            indices.extend(start..start + m);
            shape[0] = m;
            x.resize(&shape);
            targets.resize(m, 0);
            test.fill_batch(&indices, 0, x.data_mut(), &mut targets)?;
            let logits = self.model.infer(&x)?;
            if let Some((index, &label)) = targets.iter().enumerate().find(|&(_, &t)| t >= classes)
            {
                return Err(Error::LabelOutOfRange {
                    context: "evaluate".into(),
                    label,
                    index,
                    classes,
                });
            }
            let pairs = logits.data().chunks(bs * classes).zip(targets.chunks(bs));
            for (g, (rows, ts)) in pairs.enumerate() {
                let (sum, ok) = evaluate_rows(rows, classes, ts);
                results[start / bs + g] = sum / ts.len() as f64;
                results[groups] += ok as f64;
            }
        }
        if let Some(c) = self.communicator() {
            c.add_f64(&mut results)?;
        }
        let (losses, correct) = (&results[..groups], results[groups]);
        let loss_sum = losses.iter().fold(0.0f64, |a, l| a + l);
        Ok((
            loss_sum / losses.len().max(1) as f64,
            100.0 * correct / n.max(1) as f64,
        ))
    }

    /// Trains until every epoch has run, calling `on_batch` after every batch; returns the
    /// epoch records. When `on_batch` returns `Break`, training stops after that batch with
    /// the position saved in [`progress`](Self::progress) (a smoke test of one batch, a
    /// checkpoint, Ctrl-C), and the records of the completed epochs are returned.
    ///
    /// # Errors
    /// As [`train_epoch`](Self::train_epoch) and [`evaluate`](Self::evaluate).
    pub fn fit(
        &mut self,
        train: &dyn DataSource,
        test: &dyn DataSource,
        on_batch: &mut dyn FnMut(&BatchEvent) -> ControlFlow<()>,
    ) -> Result<Vec<EpochRecord>> {
        while !self.finished() {
            match self.train_epoch(train, on_batch)? {
                Some(loss) => {
                    self.finish_epoch(loss, test)?;
                }
                None => break,
            }
        }
        Ok(self.progress.records.clone())
    }
}

/// A `u64` seed for one purpose of one batch.
fn derived_seed(seed: u64, purpose: u64, epoch: usize, batch: usize) -> u64 {
    use ndarray_rand::rand::RngCore;
    derived_rng(seed, purpose, epoch, batch).next_u64()
}
