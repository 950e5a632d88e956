//! Forward-gradient baselines: weight perturbation (FG-W) and activity perturbation (FG-A).

use super::{LearningRule, StepReport, draw_directions, perturbed_forward};
use crate::error::Result;
use crate::init::{Rng, fill_normal};
use crate::layers::StateMut;
use crate::loss::{cross_entropy, cross_entropy_jvp, per_sample_jvp_into};
use crate::model::Model;
use crate::tensor::Tensor;

/// FG-W: one direction `v ~ N(0, I)` over all parameters per step; the forward pass carries
/// the JVP along it ([`Model::forward_param_jvp`]), giving the directional derivative
/// `dL . v` of the mean loss, and every parameter's gradient estimate is `(dL . v) v`:
/// unbiased, with a total variance of `(P + 1) |g|^2` for `P` parameters (`tests/research`
/// checks both).
#[derive(Clone, Debug, Default)]
pub struct ForwardGradientWeight {
    /// The direction, one flat run per parameter in the model's visiting order.
    direction: Vec<Vec<f32>>,
    logits_grad: Tensor,
}

impl ForwardGradientWeight {
    /// The rule.
    pub fn new() -> Self {
        Self::default()
    }
}

impl LearningRule for ForwardGradientWeight {
    fn name(&self) -> &str {
        "FGW"
    }

    fn step(
        &mut self,
        model: &mut Model,
        x: &Tensor,
        targets: &[usize],
        rng: &mut Rng,
    ) -> Result<StepReport> {
        crate::parallel::run(|| {
            // The direction is elementwise, so it is drawn in each parameter's storage order.
            let mut i = 0;
            let direction = &mut self.direction;
            model.visit_state_mut(&mut |_, state| {
                if let StateMut::Param(mut p) = state {
                    if direction.len() <= i {
                        direction.push(Vec::new());
                    }
                    let v = &mut direction[i];
                    v.resize(p.storage_mut().0.len(), 0.0);
                    fill_normal(v, rng);
                    i += 1;
                }
            });
            direction.truncate(i);
            let v: Vec<&[f32]> = direction.iter().map(Vec::as_slice).collect();
            let logits = model.forward_param_jvp(x, &v)?;
            let loss = cross_entropy(logits.primal(), targets, &mut self.logits_grad)?;
            let dl = match logits.tangent() {
                Some(d) => cross_entropy_jvp(&self.logits_grad, d)?[0],
                None => 0.0,
            };
            let mut i = 0;
            model.visit_state_mut(&mut |_, state| {
                if let StateMut::Param(mut p) = state {
                    let (_, grad) = p.storage_mut();
                    grad.iter_mut()
                        .zip(&direction[i])
                        .for_each(|(g, v)| *g = dl * v);
                    i += 1;
                }
            });
            Ok(StepReport { loss })
        })
    }
}

/// FG-A: the directions of FDFA perturb every feedback point; each sample's own loss
/// derivative along them, `s_i = dL_i . (u_1, ..., u_L)`, gives the block signal
/// `g_{l,i} = s_i u_{l,i}` (averaged over `k` directions), followed by the in-block
/// backward. The output layer gets its true gradient.
///
/// Without layers that couple samples the estimate is unbiased, with a total variance of
/// `(A + 1) |a_i|^2` per sample for `A` perturbed activations (`tests/research`). BatchNorm
/// in training mode couples the samples: `s_i` then also carries other samples' directions,
/// which average out, but the expected signal is then sample `i`'s own path
/// `(dy_i / dh_{l,i})^T e_i`, without the part of the true gradient that reaches `h_{l,i}`
/// through the other samples' losses.
#[derive(Clone, Debug)]
pub struct ForwardGradientActivity {
    directions: usize,
    buffers: Vec<Tensor>,
    logits_grad: Tensor,
    /// Each (direction, sample) pair's loss derivative, kept from step to step.
    sample_jvp: Vec<f32>,
}

impl Default for ForwardGradientActivity {
    fn default() -> Self {
        Self::new()
    }
}

impl ForwardGradientActivity {
    /// The rule with one direction per sample.
    pub fn new() -> Self {
        Self {
            directions: 1,
            buffers: Vec::new(),
            logits_grad: Tensor::default(),
            sample_jvp: Vec::new(),
        }
    }

    /// Uses `k >= 1` directions per sample.
    #[must_use]
    pub fn with_directions(mut self, k: usize) -> Self {
        self.directions = k.max(1);
        self
    }

    /// One step with given directions (`[k * N, point shape...]` per feedback point).
    ///
    /// # Errors
    /// [`crate::Error::Shape`] when the batch or a direction does not fit the model.
    pub fn step_with_directions(
        &mut self,
        model: &mut Model,
        x: &Tensor,
        targets: &[usize],
        directions: &[Tensor],
    ) -> Result<StepReport> {
        crate::parallel::run(|| {
            let logits = perturbed_forward(model, x, directions)?;
            let loss = cross_entropy(logits.primal(), targets, &mut self.logits_grad)?;
            let n = x.batch();
            // s_{j,i} = e_i . d_{j,i}: the derivative of the *mean* loss's sample-i term.
            let s = &mut self.sample_jvp;
            s.clear();
            if let Some(d) = logits.tangent() {
                per_sample_jvp_into(&self.logits_grad, d, s)?;
                s.iter_mut().for_each(|v| *v /= n as f32);
            }
            let s = &*s;
            let e = &self.logits_grad;
            model.backward_local(&|target, out| {
                let Some(l) = target else {
                    out.assign(e);
                    return Ok(());
                };
                let u = &directions[l];
                let k = u.batch() / n;
                let row = u.row_len();
                out.fill(0.0);
                for (r, (ur, sr)) in u.data().chunks(row).zip(s).enumerate() {
                    let out = &mut out.data_mut()[(r % n) * row..][..row];
                    let scale = sr / k as f32;
                    out.iter_mut().zip(ur).for_each(|(o, v)| *o += scale * v);
                }
                Ok(())
            })?;
            Ok(StepReport { loss })
        })
    }
}

impl LearningRule for ForwardGradientActivity {
    fn name(&self) -> &str {
        "FGA"
    }

    fn step(
        &mut self,
        model: &mut Model,
        x: &Tensor,
        targets: &[usize],
        rng: &mut Rng,
    ) -> Result<StepReport> {
        crate::parallel::run(|| {
            let mut buffers = std::mem::take(&mut self.buffers);
            let drawn = draw_directions(model, x.batch(), self.directions, rng, &mut buffers);
            let report =
                drawn.and_then(|()| self.step_with_directions(model, x, targets, &buffers));
            self.buffers = buffers;
            report
        })
    }
}
