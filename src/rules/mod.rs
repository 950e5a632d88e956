//! Learning rules.
//!
//! A [`LearningRule`] turns a batch into gradients: after [`LearningRule::step`], every
//! forward parameter of the model holds its gradient in `grad`, and so does every feedback
//! matrix the rule learns. The optimizers are never called inside a rule; the trainer steps
//! the feedback optimizer, then the forward one, both from the gradients of the same step.
//!
//! A new rule needs nothing but the [`Model`]'s primitives. See the `custom_rule` example
//! for one written outside the crate.

mod bp;
mod dfa;
mod dkp;
mod fdfa;
mod feedback;
mod forward_gradient;

pub use bp::Bp;
pub use dfa::Dfa;
pub use dkp::Dkp;
pub use fdfa::Fdfa;
pub use feedback::{Feedback, FeedbackInit};
pub use forward_gradient::{ForwardGradientActivity, ForwardGradientWeight};

use std::fmt::Debug;
use std::str::FromStr;

use crate::error::{Error, Result};
use ndarray_rand::rand::RngCore;

use crate::init::Rng;
use crate::layers::ParamMut;
use crate::model::Model;
use crate::parallel::par_chunks_mut;
use crate::tensor::Tensor;

/// What a step reports besides the gradients.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepReport {
    /// Mean cross-entropy of the batch, before any update.
    pub loss: f32,
}

/// A learning rule: BP, DFA, DKP, FDFA, the forward-gradient baselines, or your own.
pub trait LearningRule: Send + Debug {
    /// The rule's short name as the command line spells it (`FDFA`).
    fn name(&self) -> &str;

    /// Computes the gradients of one batch `x` with class indices `targets`, drawing any
    /// random numbers from `rng`.
    ///
    /// # Errors
    /// [`Error::Shape`] when the batch does not fit the model.
    fn step(
        &mut self,
        model: &mut Model,
        x: &Tensor,
        targets: &[usize],
        rng: &mut Rng,
    ) -> Result<StepReport>;

    /// Visits the feedback matrices the rule learns (they get their own optimizer); rules
    /// without learned feedback visit nothing.
    fn visit_learned(&mut self, _f: &mut dyn FnMut(&str, ParamMut<'_>)) {}

    /// The rule's feedback matrices, learned or fixed, if it has any.
    fn feedback(&self) -> Option<&Feedback> {
        None
    }

    /// The rule's feedback matrices, mutable (for loading a checkpoint).
    fn feedback_mut(&mut self) -> Option<&mut Feedback> {
        None
    }

    /// What the rule computes when its blocks are spread over processes
    /// ([`Trainer::set_block_parallel`](crate::train::Trainer::set_block_parallel)); `None`
    /// (the default) for a rule that does not support it.
    fn block_parallel(&self) -> Option<BlockRule> {
        None
    }
}

/// The rules that block-parallel training knows how to spread over processes: each rank
/// computes its blocks' updates from what the output rank broadcasts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BlockRule {
    /// Backpropagation: the gradient travels back rank to rank (backward locking), the
    /// baseline block-parallel DFA is measured against.
    Bp,
    /// DFA: every block trains from the broadcast error through its fixed feedback matrix.
    Dfa,
    /// DKP: as DFA, each rank learning its blocks' feedback matrices from the error and its
    /// activations.
    Dkp,
    /// FDFA with `directions` directions per sample: the output tangent is broadcast with
    /// the error, and each rank learns its matrices from it and its own directions.
    Fdfa {
        /// Directions per sample.
        directions: usize,
    },
}

/// The learned feedback matrices of a rule, as an optimizer's parameter group.
pub struct Learned<'a>(pub &'a mut dyn LearningRule);

impl crate::optim::Parameters for Learned<'_> {
    fn visit_params(&mut self, f: &mut dyn FnMut(&str, ParamMut<'_>)) {
        self.0.visit_learned(f);
    }
}

/// The rules the crate ships, by their command-line names.
///
/// ```
/// use fdfa::rules::RuleKind;
/// assert_eq!("fdfa".parse::<RuleKind>()?, RuleKind::Fdfa);
/// assert!("SGD".parse::<RuleKind>().is_err());
/// # Ok::<(), fdfa::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RuleKind {
    /// Backpropagation.
    Bp,
    /// Direct feedback alignment.
    Dfa,
    /// Direct Kolen-Pollack.
    Dkp,
    /// Forward direct feedback alignment.
    Fdfa,
    /// Forward gradient, weight perturbation.
    Fgw,
    /// Forward gradient, activity perturbation.
    Fga,
}

impl RuleKind {
    /// Every rule, in the order the reference lists them, then the baselines.
    pub const ALL: [RuleKind; 6] = [
        Self::Bp,
        Self::Dfa,
        Self::Dkp,
        Self::Fdfa,
        Self::Fgw,
        Self::Fga,
    ];

    /// The command-line name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Bp => "BP",
            Self::Dfa => "DFA",
            Self::Dkp => "DKP",
            Self::Fdfa => "FDFA",
            Self::Fgw => "FGW",
            Self::Fga => "FGA",
        }
    }

    /// Builds the rule for `model` with the reference's feedback initialisation and
    /// `directions` random directions per sample (FDFA and FG-A; others ignore it).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when `directions` is zero.
    pub fn build(
        self,
        model: &Model,
        directions: usize,
        rng: &mut Rng,
    ) -> Result<Box<dyn LearningRule>> {
        if directions == 0 {
            return Err(Error::config(
                self.as_str(),
                "directions",
                "must be at least 1",
            ));
        }
        Ok(match self {
            Self::Bp => Box::new(Bp::new()),
            Self::Dfa => Box::new(Dfa::new(model, rng)),
            Self::Dkp => Box::new(Dkp::new(model)),
            Self::Fdfa => Box::new(Fdfa::new(model).with_directions(directions)),
            Self::Fgw => Box::new(ForwardGradientWeight::new()),
            Self::Fga => Box::new(ForwardGradientActivity::new().with_directions(directions)),
        })
    }
}

impl std::fmt::Display for RuleKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RuleKind {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                Error::config(
                    "train-mode",
                    "train_mode",
                    format!("`{s}` is not one of BP, DFA, DKP, FDFA, FGW, FGA"),
                )
            })
    }
}

/// Rows of directions one generator stream fills.
const DIRECTION_ROWS: usize = 8;

/// Draws `k` standard-normal directions for every feedback point of the last forward's batch
/// of `n` samples into `out` (`[k * n, point shape...]` each).
///
/// `rng` gives one seed per point; fixed blocks of rows are filled in parallel from streams
/// of that seed, so the numbers do not depend on the number of threads. When the model
/// trains on one rank's share of a split batch ([`Model::batch_group`]), the rank fills
/// exactly its rows of the directions drawn for the whole batch, so they do not depend on the
/// number of ranks either.
pub(crate) fn draw_directions(
    model: &Model,
    n: usize,
    k: usize,
    rng: &mut Rng,
    out: &mut Vec<Tensor>,
) -> Result<()> {
    draw_directions_at(model, n, k, rng, out, 0..usize::MAX)
}

/// [`draw_directions`] filling only the feedback points in `points` (the others' seeds are
/// drawn all the same, so the numbers do not depend on which points a process fills).
pub(crate) fn draw_directions_at(
    model: &Model,
    n: usize,
    k: usize,
    rng: &mut Rng,
    out: &mut Vec<Tensor>,
    points: std::ops::Range<usize>,
) -> Result<()> {
    let shard = model.batch_group().map(|g| g.shard());
    if let Some(shard) = shard
        && shard.len != n
    {
        return Err(Error::shape(
            "directions",
            format!("a batch of this rank's {} samples", shard.len),
            &[n],
        ));
    }
    out.resize_with(model.feedback_points().len(), Tensor::default);
    for (l, (point, u)) in model
        .feedback_points()
        .iter()
        .zip(out.iter_mut())
        .enumerate()
    {
        let seed = rng.next_u64();
        if !points.contains(&l) {
            continue;
        }
        let mut shape = vec![k * n];
        shape.extend_from_slice(&point.shape);
        u.resize(&shape);
        let row = point.features();
        match shard.filter(|s| s.len != s.total) {
            None => {
                let work = k * n * row * 16;
                par_chunks_mut(u.data_mut(), row, DIRECTION_ROWS, work, |block, values| {
                    crate::init::fill_normal_fast(values, seed, block as u64);
                });
            }
            Some(shard) => {
                // Row `i` of direction `j` is row `j * total + offset + i` of the whole
                // batch's draw; each block of rows is drawn at its full length, as the
                // single process draws it, and the rows of this share copied out.
                let all_rows = k * shard.total;
                par_chunks_mut(u.data_mut(), row, n, k * n * row * 16, |j, dst| {
                    let first = j * shard.total + shard.offset;
                    let last = first + n;
                    let mut scratch = Vec::new();
                    for block in first / DIRECTION_ROWS..last.div_ceil(DIRECTION_ROWS) {
                        let start = block * DIRECTION_ROWS;
                        let end = (start + DIRECTION_ROWS).min(all_rows);
                        scratch.resize((end - start) * row, 0.0);
                        crate::init::fill_normal_fast(&mut scratch, seed, block as u64);
                        let (lo, hi) = (first.max(start), last.min(end));
                        dst[(lo - first) * row..(hi - first) * row]
                            .copy_from_slice(&scratch[(lo - start) * row..(hi - start) * row]);
                    }
                });
            }
        }
    }
    Ok(())
}

/// A forward pass that adds `directions[l]` to the tangent at every feedback point.
pub(crate) fn perturbed_forward<'m>(
    model: &'m mut Model,
    x: &Tensor,
    directions: &[Tensor],
) -> Result<&'m crate::tensor::Dual> {
    if directions.len() != model.feedback_points().len() {
        return Err(Error::config(
            "directions",
            "directions",
            format!(
                "one per feedback point ({}), got {}",
                model.feedback_points().len(),
                directions.len()
            ),
        ));
    }
    let n = x.batch();
    model.forward_train(x, &mut |l, h| add_direction(h, &directions[l], n))
}

/// Adds the direction `u` (`[k * n, ...]`) to the tangents of the activation `h` of `n`
/// samples at a feedback point: `u` itself when `h` carries the structural zero.
pub(crate) fn add_direction(h: &mut crate::tensor::Dual, u: &Tensor, n: usize) -> Result<()> {
    {
        let rows = h.primal().batch();
        if !u.batch().is_multiple_of(rows.max(1))
            || u.row_len() != h.primal().row_len()
            || u.batch() == 0
            || rows != n
        {
            return Err(Error::shape(
                "direction",
                format!("[k * {n}, {:?}]", &h.primal().shape()[1..]),
                u.shape(),
            ));
        }
        let k = u.batch() / rows;
        if h.directions() != 0 && h.directions() != k {
            return Err(Error::shape(
                "direction",
                format!("{} stacked tangents", h.directions()),
                u.shape(),
            ));
        }
        if h.directions() == 0 {
            // The tangent arriving is the structural zero: the one leaving is `u` itself.
            let shape = h.primal().shape().to_vec();
            h.resize(&shape, k);
            if let Some(t) = h.tangent_mut() {
                t.data_mut().copy_from_slice(u.data());
            }
        } else if let Some(t) = h.tangent_mut() {
            t.data_mut()
                .iter_mut()
                .zip(u.data())
                .for_each(|(a, b)| *a += b);
        }
        Ok(())
    }
}
