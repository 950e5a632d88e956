//! Block-parallel training: consecutive blocks on consecutive ranks.
//!
//! Rank `r` owns blocks `bounds[r]..bounds[r + 1]`, consecutive blocks split so that the
//! busiest rank has the least work (by the blocks' multiply-adds per sample). The batch's activations (and FDFA's
//! tangents) flow forward rank to rank; the rank owning the output block computes the loss
//! and broadcasts the error `e` (and FDFA's output tangent), and every rank trains its own
//! blocks from it at once, with no backward pass between ranks. BP, for comparison, sends
//! the gradient back rank to rank. Every rank keeps a whole copy of the model, but only its
//! own blocks' copy is current between synchronisations ([`BlockParallel::sync`]), which the
//! trainer runs before it hands control back (evaluation, checkpoints, the end of a run).

use std::ops::Range;
use std::sync::Arc;

use crate::distributed::Communicator;
use crate::error::{Error, Result};
use crate::init::Rng;
use crate::kernels::gemm::gemm;
use crate::layers::{ParamMut, StateMut};
use crate::loss::cross_entropy;
use crate::model::{BlockInput, Model};
use crate::optim::{Adam, Parameters};
use crate::rules::{BlockRule, LearningRule, StepReport};
use crate::tensor::{Dual, Tensor};

/// One rank's share of a block-parallel run, with its buffers.
#[derive(Debug)]
pub(crate) struct BlockParallel {
    comm: Arc<dyn Communicator>,
    /// Rank `r` owns blocks `bounds[r]..bounds[r + 1]`.
    bounds: Vec<usize>,
    rule: BlockRule,
    received: Dual,
    message: Vec<f32>,
    logits_grad: Tensor,
    output_tangent: Tensor,
    scaled: Tensor,
    directions: Vec<Tensor>,
    grad: Tensor,
}

/// The split of consecutive blocks of `costs` over `ranks` ranks (each at least one block)
/// whose busiest rank has the least work: rank `r` gets `bounds[r]..bounds[r + 1]`. Ties
/// go to the split found first (earlier boundaries), so every rank computes the same one.
fn balanced_bounds(costs: &[usize], ranks: usize) -> Vec<usize> {
    let n = costs.len();
    let mut prefix = vec![0u128; n + 1];
    for (i, &c) in costs.iter().enumerate() {
        prefix[i + 1] = prefix[i] + c as u128;
    }
    // best[p][i]: the least busiest-rank work splitting the first i blocks over p ranks.
    let mut best = vec![vec![u128::MAX; n + 1]; ranks + 1];
    let mut cut = vec![vec![0usize; n + 1]; ranks + 1];
    best[0][0] = 0;
    for p in 1..=ranks {
        for i in p..=n {
            for j in (p - 1)..i {
                if best[p - 1][j] == u128::MAX {
                    continue;
                }
                let load = best[p - 1][j].max(prefix[i] - prefix[j]);
                if load < best[p][i] {
                    best[p][i] = load;
                    cut[p][i] = j;
                }
            }
        }
    }
    let mut bounds = vec![n; ranks + 1];
    let mut i = n;
    for p in (1..=ranks).rev() {
        i = cut[p][i];
        bounds[p - 1] = i;
    }
    bounds
}

impl BlockParallel {
    /// The share of `comm`'s rank of `model`'s blocks, for `rule`.
    pub(crate) fn new(
        comm: Arc<dyn Communicator>,
        model: &Model,
        rule: &dyn LearningRule,
    ) -> Result<Self> {
        let fail = |reason: String| Error::Distributed {
            rank: comm.rank(),
            reason,
        };
        let Some(kind) = rule.block_parallel() else {
            return Err(fail(format!(
                "{} does not support block-parallel training",
                rule.name()
            )));
        };
        let blocks = model.blocks().len();
        if comm.size() > blocks {
            return Err(fail(format!(
                "{} ranks for a model of {blocks} blocks: at most one rank per block",
                comm.size()
            )));
        }
        Ok(Self {
            bounds: balanced_bounds(&model.block_flops_per_sample(), comm.size()),
            comm,
            rule: kind,
            received: Dual::default(),
            message: Vec::new(),
            logits_grad: Tensor::default(),
            output_tangent: Tensor::default(),
            scaled: Tensor::default(),
            directions: Vec::new(),
            grad: Tensor::default(),
        })
    }

    pub(crate) fn comm(&self) -> &Arc<dyn Communicator> {
        &self.comm
    }

    fn blocks_of(&self, rank: usize) -> Range<usize> {
        self.bounds[rank]..self.bounds[rank + 1]
    }

    /// The feedback points of `rank`'s blocks (point `l` ends block `l`).
    fn points_of(&self, rank: usize, model: &Model) -> Range<usize> {
        let b = self.blocks_of(rank);
        let points = model.feedback_points().len();
        b.start.min(points)..b.end.min(points)
    }

    /// One step: this rank's blocks' gradients (and feedback gradients) for the batch.
    pub(crate) fn step(
        &mut self,
        model: &mut Model,
        rule: &mut dyn LearningRule,
        x: &Tensor,
        targets: &[usize],
        rng: &mut Rng,
    ) -> Result<StepReport> {
        let (rank, size) = (self.comm.rank(), self.comm.size());
        let last = size - 1;
        let owned = self.blocks_of(rank);
        let points = self.points_of(rank, model);
        let n = x.batch();
        let classes = model.classes();
        let k = match self.rule {
            BlockRule::Fdfa { directions } => directions,
            _ => 0,
        };
        if k > 0 {
            // Every rank draws every point's seed, so each fills its points' directions
            // exactly as one process would.
            crate::rules::draw_directions_at(
                model,
                n,
                k,
                rng,
                &mut self.directions,
                points.clone(),
            )?;
        }
        let Self {
            comm,
            received,
            directions,
            ..
        } = self;
        let input = match rank {
            0 => BlockInput::Batch(x),
            _ => {
                let point = &model.feedback_points()[owned.start - 1];
                let mut shape = vec![n];
                shape.extend_from_slice(&point.shape);
                received.resize(&shape, k);
                let (primal, tangent) = received.parts_mut();
                comm.receive_f32(rank - 1, primal.data_mut())?;
                if let Some(t) = tangent {
                    comm.receive_f32(rank - 1, t.data_mut())?;
                }
                BlockInput::Activation(received)
            }
        };
        let out = model.forward_blocks(owned.clone(), input, &mut |l, h| match k {
            0 => Ok(()),
            _ => crate::rules::add_direction(h, &directions[l], n),
        })?;
        let message_len = 1 + n * classes + k * n * classes;
        self.message.resize(message_len, 0.0);
        if rank < last {
            self.comm.send_f32(rank + 1, out.primal().data())?;
            if k > 0 {
                let t = out.tangent().ok_or_else(|| {
                    Error::config(
                        "block-parallel",
                        "tangent",
                        "FDFA's forward lost its tangent",
                    )
                })?;
                self.comm.send_f32(rank + 1, t.data())?;
            }
        } else {
            let loss = cross_entropy(out.primal(), targets, &mut self.logits_grad)?;
            self.message[0] = loss;
            self.message[1..1 + n * classes].copy_from_slice(self.logits_grad.data());
            if k > 0 {
                let d = out.tangent().ok_or_else(|| {
                    Error::config(
                        "block-parallel",
                        "tangent",
                        "FDFA's forward lost its tangent",
                    )
                })?;
                self.message[1 + n * classes..].copy_from_slice(d.data());
            }
        }
        // The error (and the output tangent) for every rank at once.
        self.comm.broadcast_f32(last, &mut self.message)?;
        let loss = self.message[0];
        self.logits_grad.resize(&[n, classes]);
        self.logits_grad
            .data_mut()
            .copy_from_slice(&self.message[1..1 + n * classes]);
        if self.rule == BlockRule::Bp {
            self.backward_chain(model, n, owned)?;
            return Ok(StepReport { loss });
        }
        let feedback = rule.feedback_mut().ok_or_else(|| Error::Distributed {
            rank,
            reason: format!("{} has no feedback matrices", self.rule_name()),
        })?;
        let matrices = feedback.matrices_mut();
        if k > 0 {
            // FDFA: B_l's gradient is B_l - d^T u_l / (kN), as `rules::Fdfa` computes it.
            let rows = k * n;
            self.output_tangent.resize(&[rows, classes]);
            self.output_tangent
                .data_mut()
                .copy_from_slice(&self.message[1 + n * classes..]);
            let alpha = -1.0 / rows as f32;
            self.scaled.resize(&[rows, classes]);
            for (s, &v) in self
                .scaled
                .data_mut()
                .iter_mut()
                .zip(self.output_tangent.data())
            {
                *s = alpha * v;
            }
            for l in points {
                let b = &mut matrices[l];
                b.grad.assign(&b.value);
                gemm(
                    1.0,
                    self.scaled.matrix().t(),
                    self.directions[l].matrix(),
                    1.0,
                    b.grad.matrix_mut(),
                );
            }
        } else if self.rule == BlockRule::Dkp {
            // DKP: B_l's gradient is e^T h_l, as `rules::Dkp` computes it.
            for l in points {
                let b = &mut matrices[l];
                b.grad.resize(b.value.shape());
                gemm(
                    1.0,
                    self.logits_grad.matrix().t(),
                    model.hidden(l).primal().matrix(),
                    0.0,
                    b.grad.matrix_mut(),
                );
            }
        }
        // The blocks train from the error, through the matrices from before this step.
        let feedback = rule.feedback().ok_or_else(|| Error::Distributed {
            rank,
            reason: format!("{} has no feedback matrices", self.rule_name()),
        })?;
        feedback.deliver_blocks(model, &self.logits_grad, owned)?;
        Ok(StepReport { loss })
    }

    fn rule_name(&self) -> &'static str {
        match self.rule {
            BlockRule::Bp => "BP",
            BlockRule::Dfa => "DFA",
            BlockRule::Dkp => "DKP",
            BlockRule::Fdfa { .. } => "FDFA",
        }
    }

    /// BP across the ranks: the gradient of each rank's output comes from the next rank, goes
    /// back through the rank's blocks, and its input gradient on to the previous rank.
    fn backward_chain(&mut self, model: &mut Model, n: usize, owned: Range<usize>) -> Result<()> {
        let (rank, last) = (self.comm.rank(), self.comm.size() - 1);
        if rank == last {
            self.grad.assign(&self.logits_grad);
        } else {
            let point = &model.feedback_points()[owned.end - 1];
            let mut shape = vec![n];
            shape.extend_from_slice(&point.shape);
            self.grad.resize(&shape);
            self.comm.receive_f32(rank + 1, self.grad.data_mut())?;
        }
        for b in owned.rev() {
            if let Some(g) = model.backward_block(b, &self.grad, b > 0)? {
                self.grad.assign(g);
            }
        }
        if rank > 0 {
            self.comm.send_f32(rank - 1, self.grad.data())?;
        }
        Ok(())
    }

    /// The parameters of this rank's blocks, for the forward optimizer.
    pub(crate) fn owned_params<'a>(&self, model: &'a mut Model) -> OwnedBlocks<'a> {
        OwnedBlocks {
            model,
            blocks: self.blocks_of(self.comm.rank()),
        }
    }

    /// The learned feedback matrices of this rank's points, for the feedback optimizer.
    pub(crate) fn owned_feedback<'a>(
        &self,
        model: &Model,
        rule: &'a mut dyn LearningRule,
    ) -> OwnedFeedback<'a> {
        let points = self.points_of(self.comm.rank(), model);
        let names = rule
            .feedback()
            .map(|f| f.names()[points].to_vec())
            .unwrap_or_default();
        OwnedFeedback { rule, names }
    }

    /// Makes every rank's copy whole: each rank broadcasts its blocks' state (parameters,
    /// BatchNorm statistics and counters), its feedback matrices and both optimizers'
    /// moments of them. After it, every rank holds the state one process would.
    pub(crate) fn sync(
        &mut self,
        model: &mut Model,
        rule: &mut dyn LearningRule,
        forward: &mut Adam,
        feedback: &mut Adam,
    ) -> Result<()> {
        for owner in 0..self.comm.size() {
            let blocks = self.blocks_of(owner);
            let points = self.points_of(owner, model);
            let mut values = Vec::new();
            visit_owned(model, rule, forward, feedback, &blocks, &points, &mut |v| {
                values.extend_from_slice(v)
            });
            self.comm.broadcast_f32(owner, &mut values)?;
            if owner != self.comm.rank() {
                let mut at = 0;
                visit_owned(model, rule, forward, feedback, &blocks, &points, &mut |v| {
                    v.copy_from_slice(&values[at..at + v.len()]);
                    at += v.len();
                });
            }
        }
        Ok(())
    }
}

/// Visits, in one fixed order, every value of the state of `blocks` and `points`: the
/// blocks' parameters, buffers and counters (each counter as two f32 halves of 24 bits,
/// exact), the points' feedback matrices, and both optimizers' moments of them.
fn visit_owned(
    model: &mut Model,
    rule: &mut dyn LearningRule,
    forward: &mut Adam,
    feedback: &mut Adam,
    blocks: &Range<usize>,
    points: &Range<usize>,
    f: &mut dyn FnMut(&mut [f32]),
) {
    for b in blocks.clone() {
        model.visit_block_state_mut(b, &mut |name, s| match s {
            StateMut::Param(mut p) => {
                let shape = p.view().stored_shape().to_vec();
                f(p.storage_mut().0);
                let m = forward.moments_mut(name, &shape);
                f(m.exp_avg.data_mut());
                f(m.exp_avg_sq.data_mut());
            }
            StateMut::Buffer(mut t) => f(t.data_mut()),
            StateMut::Counter(c) => {
                let mut halves = [(*c >> 24) as f32, (*c & 0xff_ffff) as f32];
                f(&mut halves);
                *c = ((halves[0] as u64) << 24) | halves[1] as u64;
            }
        });
    }
    let names: Vec<String> = rule
        .feedback()
        .map(|fb| fb.names()[points.clone()].to_vec())
        .unwrap_or_default();
    if let Some(fb) = rule.feedback_mut() {
        for l in points.clone() {
            f(fb.matrices_mut()[l].value.data_mut());
        }
    }
    // Only learned matrices have moments (DFA's are fixed).
    rule.visit_learned(&mut |name, mut p| {
        if names.iter().any(|n| n == name) {
            let shape = p.view().stored_shape().to_vec();
            let _ = p.storage_mut();
            let m = feedback.moments_mut(name, &shape);
            f(m.exp_avg.data_mut());
            f(m.exp_avg_sq.data_mut());
        }
    });
}

/// The parameters of some blocks, as an optimizer's parameter group.
pub(crate) struct OwnedBlocks<'a> {
    model: &'a mut Model,
    blocks: Range<usize>,
}

impl Parameters for OwnedBlocks<'_> {
    fn visit_params(&mut self, f: &mut dyn FnMut(&str, ParamMut<'_>)) {
        for b in self.blocks.clone() {
            self.model.visit_block_state_mut(b, &mut |name, s| {
                if let StateMut::Param(p) = s {
                    f(name, p);
                }
            });
        }
    }
}

/// Some of a rule's learned feedback matrices, as an optimizer's parameter group.
pub(crate) struct OwnedFeedback<'a> {
    rule: &'a mut dyn LearningRule,
    names: Vec<String>,
}

impl Parameters for OwnedFeedback<'_> {
    fn visit_params(&mut self, f: &mut dyn FnMut(&str, ParamMut<'_>)) {
        let names = &self.names;
        self.rule.visit_learned(&mut |name, p| {
            if names.iter().any(|n| n == name) {
                f(name, p);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::balanced_bounds;

    #[test]
    fn blocks_split_so_that_the_busiest_rank_has_the_least_work() {
        assert_eq!(balanced_bounds(&[1, 1, 1, 1], 2), [0, 2, 4]);
        // A heavy first block gets a rank to itself.
        assert_eq!(balanced_bounds(&[10, 4, 3, 1], 2), [0, 1, 4]);
        assert_eq!(balanced_bounds(&[1, 1, 10], 2), [0, 2, 3]);
        // Every rank gets a block, even a cheap one.
        assert_eq!(balanced_bounds(&[5, 0, 0], 3), [0, 1, 2, 3]);
        assert_eq!(balanced_bounds(&[3, 3, 3, 3, 3], 3), [0, 1, 3, 5]);
    }
}
