//! Alignment and variance diagnostics: how close a rule's updates are to backpropagation's.
//!
//! [`measure`] takes one batch and, without changing anything that training depends on,
//! computes for every hidden block (feedback point `l`):
//! - the cosine between the rule's gradient and BP's for the block's main weight (its first
//!   parameter of rank 2 or more, e.g. `fc_hidden.0.weight`) and over all the block's
//!   parameters;
//! - for rules with feedback matrices, the cosine between `B_l` and the batch-mean Jacobian
//!   of the output with respect to `h_l`, `J_l = (1/N) sum_i dy_i / dh_{l,i}` (what FDFA's
//!   `B_l` estimates: the expectation of `d u_l^T`);
//! - the spread of the rule's estimates over repeated draws of its random directions: the
//!   total variance (summed over elements) of the main weight's gradient and of the learned
//!   feedback's target `B_l - grad(B_l)` (for FDFA, `mean_i d_i u_{l,i}^T`), and each relative
//!   to the squared norm of its expected value.
//!
//! The Jacobian is exact: one reverse pass per sample and class (chained
//! [`Model::backward_block`]s), reading only sample `i`'s row. A pass with a one-hot
//! cotangent on every sample at once would not do: BatchNorm couples the samples, and the
//! sum of those cross-sample terms cancels the per-sample Jacobian (for the first block of
//! FC-n it is exactly zero, since BatchNorm removes any shift common to the batch).
//! [`MeasureConfig::jacobian_samples`] bounds that cost by averaging over the first samples
//! of the batch only.
//!
//! Training does not see the measurement: parameter gradients, BatchNorm running statistics
//! and counters, and the learned feedback's gradients are restored afterwards, and the
//! random directions come from the caller's own generator.
//!
//! ```
//! use fdfa::diagnostics::{MeasureConfig, measure};
//! use fdfa::rules::RuleKind;
//! use fdfa::Tensor;
//!
//! let mut rng = fdfa::init::rng(0);
//! let mut model = fdfa::model::fc(&[1, 2, 2], 2, 6, 3, &mut rng)?;
//! let mut rule = RuleKind::Bp.build(&model, 1, &mut rng)?;
//! let x = Tensor::from_vec(&[3, 1, 2, 2], (0..12).map(|i| (i as f32 * 0.7).sin()).collect())?;
//! let layers = measure(&mut model, rule.as_mut(), &x, &[0, 2, 1], &mut rng, &MeasureConfig::default())?;
//! assert_eq!(layers.len(), 2);
//! assert!((layers[0].update_cosine - 1.0).abs() < 1e-6); // BP agrees with itself
//! assert_eq!(layers[0].variance, 0.0); // and draws nothing
//! # Ok::<(), fdfa::Error>(())
//! ```

mod log;

pub use log::{ALIGNMENT_HEADER, AlignmentLog, AlignmentRow, alignment_log_path};

use crate::error::{Error, Result};
use crate::init::Rng;
use crate::layers::{State, StateMut};
use crate::model::Model;
use crate::rules::{Bp, LearningRule};
use crate::tensor::Tensor;

/// Settings of a measurement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MeasureConfig {
    /// Draws of the rule's random directions (at least 1; 8 by default). Variances need 2.
    pub repeats: usize,
    /// Samples of the batch over which the Jacobian is averaged (`None`, the default: all).
    /// Each costs `classes` reverse passes.
    pub jacobian_samples: Option<usize>,
}

impl Default for MeasureConfig {
    fn default() -> Self {
        Self {
            repeats: 8,
            jacobian_samples: None,
        }
    }
}

impl MeasureConfig {
    /// Checks the settings.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when `repeats` or `jacobian_samples` is zero.
    pub fn validate(&self) -> Result<()> {
        if self.repeats == 0 {
            return Err(Error::config("measure", "repeats", "must be at least 1"));
        }
        if self.jacobian_samples == Some(0) {
            return Err(Error::config(
                "measure",
                "jacobian_samples",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

/// What [`measure`] found at one hidden block.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerAlignment {
    /// The feedback point's index, in forward order.
    pub layer: usize,
    /// The feedback point's name, e.g. `fc_dfa.0`.
    pub point: String,
    /// The block's main weight, e.g. `fc_hidden.0.weight`.
    pub weight: String,
    /// Cosine between the rule's gradient of the main weight and BP's, averaged over draws.
    pub update_cosine: f64,
    /// The same over all the block's parameters together.
    pub block_cosine: f64,
    /// Cosine between `B_l` and the batch-mean Jacobian `J_l`; `None` without feedback.
    pub feedback_cosine: Option<f64>,
    /// Total variance (sum over elements) of the main weight's gradient over draws.
    pub variance: f64,
    /// [`variance`](Self::variance) over the squared norm of the expected gradient (estimated
    /// without the `variance / repeats` bias of the mean's norm; NaN when the draws cannot
    /// tell it from zero).
    pub relative_variance: f64,
    /// Total variance of the learned feedback's target `B_l - grad(B_l)` over draws; `None`
    /// when the rule learns no feedback.
    pub feedback_variance: Option<f64>,
    /// [`feedback_variance`](Self::feedback_variance) over the squared norm of the expected
    /// target, estimated as for [`relative_variance`](Self::relative_variance).
    pub feedback_relative_variance: Option<f64>,
}

/// A measurement every `every` batches of a training run, before that batch's update, with
/// its rows kept until taken: what a [`Trainer::set_before_step`] hook calls (see there for
/// an example).
///
/// [`Trainer::set_before_step`]: crate::train::Trainer::set_before_step
#[derive(Clone, Debug)]
pub struct AlignmentProbe {
    every: usize,
    config: MeasureConfig,
    rows: Vec<AlignmentRow>,
}

impl AlignmentProbe {
    /// A probe measuring every `every` batches with `config`.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when `every`, `config.repeats` or `config.jacobian_samples`
    /// is zero.
    pub fn new(every: usize, config: MeasureConfig) -> Result<Self> {
        if every == 0 {
            return Err(Error::config("measure", "every", "must be positive"));
        }
        config.validate()?;
        Ok(Self {
            every,
            config,
            rows: Vec::new(),
        })
    }

    /// Measures on the batch `x` (with class indices `targets`) at `(epoch, batch,
    /// batches)` (epoch and batch from 1) when the batch is due, drawing from `rng`; nothing
    /// that training depends on changes ([`measure`]).
    ///
    /// # Errors
    /// As [`measure`].
    pub fn observe(
        &mut self,
        model: &mut Model,
        rule: &mut dyn LearningRule,
        x: &Tensor,
        targets: &[usize],
        (epoch, batch, batches): (usize, usize, usize),
        rng: &mut Rng,
    ) -> Result<()> {
        if !batch.is_multiple_of(self.every) {
            return Ok(());
        }
        let layers = measure(model, rule, x, targets, rng, &self.config)?;
        self.rows
            .extend(layers.into_iter().map(|alignment| AlignmentRow {
                epoch,
                batch,
                batches,
                alignment,
            }));
        Ok(())
    }

    /// The rows measured since the last call.
    pub fn take_rows(&mut self) -> Vec<AlignmentRow> {
        std::mem::take(&mut self.rows)
    }
}

/// Element-wise running mean and sum of squared deviations (Welford), in `f64`.
#[derive(Clone, Debug, Default)]
struct Moments {
    count: usize,
    mean: Vec<f64>,
    m2: Vec<f64>,
}

impl Moments {
    fn push(&mut self, values: impl ExactSizeIterator<Item = f32>) {
        if self.count == 0 {
            self.mean = vec![0.0; values.len()];
            self.m2 = vec![0.0; values.len()];
        }
        self.count += 1;
        let n = self.count as f64;
        for ((m, s), v) in self.mean.iter_mut().zip(&mut self.m2).zip(values) {
            let v = f64::from(v);
            let delta = v - *m;
            *m += delta / n;
            *s += delta * (v - *m);
        }
    }

    /// Total variance `V` (unbiased per element, summed) and its ratio to the squared norm
    /// of the expected value; zeros with fewer than two draws.
    ///
    /// The squared norm of the sample mean of `R` draws overestimates that of the expected
    /// value by `V / R` (which would cap the ratio near `R` for a noisy estimator), so the
    /// ratio uses the unbiased `|mean|^2 - V / R`, and is NaN when that is not positive: the
    /// draws cannot tell the expected value from zero.
    fn variance(&self) -> (f64, f64) {
        if self.count < 2 {
            return (0.0, 0.0);
        }
        let total = self.m2.iter().sum::<f64>() / (self.count - 1) as f64;
        let norm2 = self.mean.iter().map(|m| m * m).sum::<f64>() - total / self.count as f64;
        let relative = if total == 0.0 {
            0.0
        } else if norm2 > 0.0 {
            total / norm2
        } else {
            f64::NAN
        };
        (total, relative)
    }
}

/// The cosine of two vectors given their dot product and squared norms; 0 when either is
/// zero.
fn cosine(dot: f64, a2: f64, b2: f64) -> f64 {
    if a2 > 0.0 && b2 > 0.0 {
        dot / (a2 * b2).sqrt()
    } else {
        0.0
    }
}

/// `(a . b, |a|^2, |b|^2)` in `f64`.
fn dot_norms(a: &[f32], b: &[f32]) -> (f64, f64, f64) {
    a.iter()
        .zip(b)
        .fold((0.0, 0.0, 0.0), |(d, x, y), (&a, &b)| {
            let (a, b) = (f64::from(a), f64::from(b));
            (d + a * b, x + a * a, y + b * b)
        })
}

/// The gradients of the parameters of block `block`, in visiting order, each in its
/// storage order (elementwise comparisons need no layout).
fn block_grads(model: &Model, block: usize) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let mut out = Vec::new();
    model.visit_block_state(block, &mut |name, state| {
        if let State::Param(p) = state {
            out.push((name.to_string(), p.shape(), p.storage().1.to_vec()));
        }
    });
    out
}

/// The index, among a block's parameters, of its main weight: the first of rank 2 or more.
fn main_weight(params: &[(String, Vec<usize>, Vec<f32>)]) -> Option<usize> {
    params.iter().position(|(_, shape, _)| shape.len() >= 2)
}

/// Everything the measurement may touch and must give back, in visiting order.
struct Snapshot {
    grads: Vec<Vec<f32>>,
    buffers: Vec<Tensor>,
    counters: Vec<u64>,
    learned: Vec<Vec<f32>>,
}

impl Snapshot {
    fn take(model: &mut Model, rule: &mut dyn LearningRule) -> Self {
        let (mut grads, mut buffers, mut counters, mut learned) = (vec![], vec![], vec![], vec![]);
        model.visit_state_mut(&mut |_, state| match state {
            StateMut::Param(mut p) => grads.push(p.storage_mut().1.to_vec()),
            StateMut::Buffer(t) => buffers.push(t.get().clone()),
            StateMut::Counter(c) => counters.push(*c),
        });
        rule.visit_learned(&mut |_, mut p| learned.push(p.storage_mut().1.to_vec()));
        Self {
            grads,
            buffers,
            counters,
            learned,
        }
    }

    /// Gives everything back; the model and the rule are those the snapshot was taken of,
    /// so every entry fits.
    fn restore(self, model: &mut Model, rule: &mut dyn LearningRule) {
        let mut grads = self.grads.into_iter();
        let mut buffers = self.buffers.into_iter();
        let mut counters = self.counters.into_iter();
        model.visit_state_mut(&mut |_, state| match state {
            StateMut::Param(mut p) => {
                if let Some(g) = grads.next() {
                    p.storage_mut().1.copy_from_slice(&g);
                }
            }
            StateMut::Buffer(mut t) => {
                if let Some(b) = buffers.next() {
                    t.data_mut().copy_from_slice(b.data());
                }
            }
            StateMut::Counter(c) => {
                if let Some(v) = counters.next() {
                    *c = v;
                }
            }
        });
        let mut learned = self.learned.into_iter();
        rule.visit_learned(&mut |_, mut p| {
            if let Some(g) = learned.next() {
                p.storage_mut().1.copy_from_slice(&g);
            }
        });
    }
}

/// Measures, on the batch `x` (`[N, input shape...]`) with class indices `targets`, how the
/// updates of `rule` align with backpropagation's at every hidden block (see the
/// [module docs](self)). The rule's random directions are drawn from `rng`.
///
/// Nothing that training depends on changes: the gradients of the model and of the rule's
/// learned feedback, and BatchNorm's running statistics and counters, are restored before
/// returning (also on error). The rule must keep no state across steps besides its feedback
/// matrices' values and gradients, which holds for every rule of the crate.
///
/// # Errors
/// [`Error::InvalidConfig`] when `config.repeats` or `config.jacobian_samples` is zero;
/// whatever the rule's step reports (a batch that does not fit the model).
pub fn measure(
    model: &mut Model,
    rule: &mut dyn LearningRule,
    x: &Tensor,
    targets: &[usize],
    rng: &mut Rng,
    config: &MeasureConfig,
) -> Result<Vec<LayerAlignment>> {
    config.validate()?;
    let snapshot = Snapshot::take(model, rule);
    let result = measure_inner(model, rule, x, targets, rng, config);
    snapshot.restore(model, rule);
    result
}

fn measure_inner(
    model: &mut Model,
    rule: &mut dyn LearningRule,
    x: &Tensor,
    targets: &[usize],
    rng: &mut Rng,
    config: &MeasureConfig,
) -> Result<Vec<LayerAlignment>> {
    let points = model.feedback_points().len();

    // Backpropagation's gradients of the hidden blocks (block `l` ends in point `l`).
    Bp::new().step(model, x, targets, rng)?;
    let bp: Vec<_> = (0..points).map(|l| block_grads(model, l)).collect();
    let main: Vec<Option<usize>> = bp.iter().map(|b| main_weight(b)).collect();
    let jacobians = match rule.feedback() {
        Some(_) => Some(batch_jacobians(model, config.jacobian_samples)?),
        None => None,
    };

    let mut main_moments = vec![Moments::default(); points];
    let mut feedback_moments = vec![Moments::default(); points];
    let mut update_cos = vec![0.0; points];
    let mut block_cos = vec![0.0; points];
    for _ in 0..config.repeats {
        rule.step(model, x, targets, rng)?;
        for l in 0..points {
            // Dot with BP, |rule|^2, |BP|^2 over the block.
            let mut acc = (0.0, 0.0, 0.0);
            let mut j = 0;
            model.visit_block_state(l, &mut |_, state| {
                if let State::Param(p) = state {
                    let grad = p.storage().1;
                    let (d, a, b) = dot_norms(grad, &bp[l][j].2);
                    acc = (acc.0 + d, acc.1 + a, acc.2 + b);
                    if main[l] == Some(j) {
                        update_cos[l] += cosine(d, a, b);
                        main_moments[l].push(grad.iter().copied());
                    }
                    j += 1;
                }
            });
            block_cos[l] += cosine(acc.0, acc.1, acc.2);
        }
        let mut l = 0;
        rule.visit_learned(&mut |_, p| {
            if let Some(m) = feedback_moments.get_mut(l) {
                let (value, grad) = p.view().storage();
                m.push(value.iter().zip(grad).map(|(v, g)| v - g));
            }
            l += 1;
        });
    }

    let repeats = config.repeats as f64;
    let learns = feedback_moments.iter().any(|m| m.count > 0);
    let mut layers = Vec::with_capacity(points);
    for l in 0..points {
        let feedback_cosine = match (rule.feedback(), &jacobians) {
            (Some(fb), Some(js)) => fb.matrices().get(l).map(|b| {
                let (d, a, c) = dot_norms(b.value.data(), js[l].data());
                cosine(d, a, c)
            }),
            _ => None,
        };
        let (variance, relative_variance) = main_moments[l].variance();
        let feedback = learns.then(|| feedback_moments[l].variance());
        layers.push(LayerAlignment {
            layer: l,
            point: model.feedback_points()[l].name.clone(),
            weight: main[l].map(|j| bp[l][j].0.clone()).unwrap_or_default(),
            update_cosine: update_cos[l] / repeats,
            block_cosine: block_cos[l] / repeats,
            feedback_cosine,
            variance,
            relative_variance,
            feedback_variance: feedback.map(|f| f.0),
            feedback_relative_variance: feedback.map(|f| f.1),
        });
    }
    Ok(layers)
}

/// The batch-mean Jacobians `J_l = (1/M) sum_i dy_i / dh_{l,i}` (`[classes, point shape...]`)
/// of the last training forward, over its first `M` samples (all by default): one reverse
/// pass per sample and class, reading only that sample's row.
///
/// Overwrites the gradients of the blocks after the first feedback point.
///
/// # Errors
/// [`Error::Shape`] when the model has not run a training forward yet.
pub fn batch_jacobians(model: &mut Model, samples: Option<usize>) -> Result<Vec<Tensor>> {
    let n = model.output()?.primal().batch();
    if n == 0 {
        return Err(Error::shape(
            "batch_jacobians",
            "the logits of a training forward",
            &[0],
        ));
    }
    let classes = model.classes();
    let m = samples.unwrap_or(n).min(n);
    let mut jacobians: Vec<Tensor> = model
        .feedback_points()
        .iter()
        .map(|p| {
            let mut shape = vec![classes];
            shape.extend_from_slice(&p.shape);
            Tensor::zeros(&shape)
        })
        .collect();
    let mut cotangent = Tensor::zeros(&[n, classes]);
    let mut grad = Tensor::default();
    let scale = 1.0 / m.max(1) as f32;
    let last = model.blocks().len() - 1;
    for i in 0..m {
        for c in 0..classes {
            cotangent.fill(0.0);
            cotangent.data_mut()[i * classes + c] = 1.0;
            grad.assign(&cotangent);
            // Backpropagation from the logits down to the first feedback point: the input
            // gradient of block `b` is the gradient of `h_{b-1}`.
            for b in (1..=last).rev() {
                let Some(g) = model.backward_block(b, &grad, true)? else {
                    unreachable!("backward_block returns the input gradient when asked")
                };
                let j = &mut jacobians[b - 1];
                let len = j.row_len();
                j.data_mut()[c * len..(c + 1) * len]
                    .iter_mut()
                    .zip(g.row(i))
                    .for_each(|(a, v)| *a += scale * v);
                grad.assign(g);
            }
        }
    }
    Ok(jacobians)
}
