//! Direct Kolen-Pollack (Webster, Choi & Ahn, 2021).

use super::{Feedback, LearningRule, StepReport};
use crate::error::Result;
use crate::init::Rng;
use crate::kernels::gemm::gemm;
use crate::layers::ParamMut;
use crate::loss::cross_entropy;
use crate::model::Model;
use crate::tensor::Tensor;

/// DKP: like DFA, with feedback matrices starting at zero and learned from the gradient
/// `e^T h_l` (summed over the batch; `e` already carries `1/N`).
#[derive(Clone, Debug)]
pub struct Dkp {
    feedback: Feedback,
    logits_grad: Tensor,
}

impl Dkp {
    /// The rule for `model`, feedback matrices at zero.
    pub fn new(model: &Model) -> Self {
        Self {
            feedback: Feedback::zeros(model),
            logits_grad: Tensor::default(),
        }
    }
}

impl LearningRule for Dkp {
    fn name(&self) -> &str {
        "DKP"
    }

    fn step(
        &mut self,
        model: &mut Model,
        x: &Tensor,
        targets: &[usize],
        _rng: &mut Rng,
    ) -> Result<StepReport> {
        self.feedback.check_model(model)?;
        crate::parallel::run(|| {
            let logits = model.forward_train(x, &mut |_, _| Ok(()))?;
            let loss = cross_entropy(logits.primal(), targets, &mut self.logits_grad)?;
            for (l, b) in self.feedback.matrices.iter_mut().enumerate() {
                let h = model.hidden(l).primal();
                b.grad.resize(b.value.shape());
                gemm(
                    1.0,
                    self.logits_grad.matrix().t(),
                    h.matrix(),
                    0.0,
                    b.grad.matrix_mut(),
                );
            }
            self.feedback.deliver(model, &self.logits_grad)?;
            Ok(StepReport { loss })
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
        Some(super::BlockRule::Dkp)
    }
}
