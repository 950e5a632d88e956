//! Forward direct feedback alignment (Bacho & Chu, 2024).

use super::{Feedback, LearningRule, StepReport, draw_directions, perturbed_forward};
use crate::error::{Error, Result};
use crate::init::Rng;
use crate::kernels::gemm::gemm;
use crate::layers::ParamMut;
use crate::loss::cross_entropy;
use crate::model::Model;
use crate::tensor::Tensor;

/// FDFA: feedback matrices learned from forward-mode directional derivatives.
///
/// At every feedback point the training forward adds a fresh direction `u_l ~ N(0, I)` to the
/// tangent; the tangent reaching the logits, `d`, sums the directional derivatives of the
/// output along every point's direction. `B_l` receives the gradient
/// `B_l - mean_i(d_i u_{l,i}^T)` (its optimizer's momentum makes it track `E[d u_l^T]`, the
/// Jacobian of the output with respect to `h_l`), and the hidden blocks are trained with
/// `e B_l` using the matrices from before this step's update.
///
/// With `k` directions per sample ([`with_directions`](Self::with_directions)) the mean runs
/// over all `k * N` tangents.
#[derive(Clone, Debug)]
pub struct Fdfa {
    feedback: Feedback,
    directions: usize,
    buffers: Vec<Tensor>,
    logits_grad: Tensor,
    /// The output tangent times `-1/(kN)`, shared by every feedback point's gradient.
    scaled: Tensor,
}

impl Fdfa {
    /// The rule for `model`, feedback matrices at zero, one direction per sample.
    pub fn new(model: &Model) -> Self {
        Self {
            feedback: Feedback::zeros(model),
            directions: 1,
            buffers: Vec::new(),
            logits_grad: Tensor::default(),
            scaled: Tensor::default(),
        }
    }

    /// Uses `k >= 1` directions per sample and feedback point.
    #[must_use]
    pub fn with_directions(mut self, k: usize) -> Self {
        self.directions = k.max(1);
        self
    }

    /// Directions per sample.
    pub fn directions(&self) -> usize {
        self.directions
    }

    /// One step with given directions (`[k * N, point shape...]` per feedback point, in forward
    /// order) instead of drawn ones, e.g. to replay the reference's numbers.
    ///
    /// # Errors
    /// [`Error::Shape`] when the batch or a direction does not fit the model.
    pub fn step_with_directions(
        &mut self,
        model: &mut Model,
        x: &Tensor,
        targets: &[usize],
        directions: &[Tensor],
    ) -> Result<StepReport> {
        self.feedback.check_model(model)?;
        crate::parallel::run(|| {
            let logits = perturbed_forward(model, x, directions)?;
            let loss = cross_entropy(logits.primal(), targets, &mut self.logits_grad)?;
            if let Some(d) = logits.tangent() {
                let kn = d.batch() as f32;
                // `-1/(kN)` folded into the (small) output tangent once, each value rounded
                // once: the products then take an exact `alpha` (see `kernels::gemm`) and
                // need no scaled copy of their own.
                let alpha = -1.0 / kn;
                self.scaled.resize(d.shape());
                for (s, &v) in self.scaled.data_mut().iter_mut().zip(d.data()) {
                    *s = alpha * v;
                }
                for (b, u) in self.feedback.matrices.iter_mut().zip(directions) {
                    // grad = B - d^T u / (k N)
                    b.grad.assign(&b.value);
                    let mut grad = b.grad.matrix_mut();
                    let grad_shape = grad.dim();
                    if u.batch() != d.batch() || grad_shape.1 != u.row_len() {
                        return Err(Error::shape(
                            "FDFA feedback",
                            format!("[{}, {}]", d.batch(), grad_shape.1),
                            u.shape(),
                        ));
                    }
                    gemm(
                        1.0,
                        self.scaled.matrix().t(),
                        u.matrix(),
                        1.0,
                        grad.view_mut(),
                    );
                }
            }
            self.feedback.deliver(model, &self.logits_grad)?;
            Ok(StepReport { loss })
        })
    }
}

impl LearningRule for Fdfa {
    fn name(&self) -> &str {
        "FDFA"
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

    fn visit_learned(&mut self, f: &mut dyn FnMut(&str, ParamMut<'_>)) {
        self.feedback.visit_mut(f);
    }

    fn feedback(&self) -> Option<&Feedback> {
        Some(&self.feedback)
    }

    fn feedback_mut(&mut self) -> Option<&mut Feedback> {
        Some(&mut self.feedback)
    }

    fn block_parallel(&self) -> Option<super::BlockRule> {
        Some(super::BlockRule::Fdfa {
            directions: self.directions,
        })
    }
}
