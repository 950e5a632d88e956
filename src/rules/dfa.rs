//! Direct feedback alignment (Nøkland, 2016).

use super::{Feedback, FeedbackInit, LearningRule, StepReport};
use crate::error::Result;
use crate::init::Rng;
use crate::loss::cross_entropy;
use crate::model::Model;
use crate::tensor::Tensor;

/// DFA: each hidden block receives `e B_l` through a fixed random feedback matrix
/// (Kaiming-uniform, bound `sqrt(6 / D_l)`).
#[derive(Clone, Debug)]
pub struct Dfa {
    feedback: Feedback,
    logits_grad: Tensor,
}

impl Dfa {
    /// The rule for `model`, its feedback matrices drawn from `rng`.
    pub fn new(model: &Model, rng: &mut Rng) -> Self {
        Self {
            feedback: Feedback::new(model, FeedbackInit::KaimingUniform, rng),
            logits_grad: Tensor::default(),
        }
    }
}

impl LearningRule for Dfa {
    fn name(&self) -> &str {
        "DFA"
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
            self.feedback.deliver(model, &self.logits_grad)?;
            Ok(StepReport { loss })
        })
    }

    fn feedback(&self) -> Option<&Feedback> {
        Some(&self.feedback)
    }

    fn feedback_mut(&mut self) -> Option<&mut Feedback> {
        Some(&mut self.feedback)
    }

    fn block_parallel(&self) -> Option<super::BlockRule> {
        Some(super::BlockRule::Dfa)
    }
}
