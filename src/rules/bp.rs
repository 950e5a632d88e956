//! Backpropagation.

use super::{LearningRule, StepReport};
use crate::error::Result;
use crate::init::Rng;
use crate::loss::cross_entropy;
use crate::model::Model;
use crate::tensor::Tensor;

/// Backpropagation: every block receives the true gradient of the loss.
#[derive(Clone, Debug, Default)]
pub struct Bp {
    logits_grad: Tensor,
}

impl Bp {
    /// The rule.
    pub fn new() -> Self {
        Self::default()
    }
}

impl LearningRule for Bp {
    fn name(&self) -> &str {
        "BP"
    }

    fn step(
        &mut self,
        model: &mut Model,
        x: &Tensor,
        targets: &[usize],
        _rng: &mut Rng,
    ) -> Result<StepReport> {
        crate::parallel::run(|| {
            let logits = model.forward_train(x, &mut |_, _| Ok(()))?;
            let loss = cross_entropy(logits.primal(), targets, &mut self.logits_grad)?;
            model.backward(&self.logits_grad)?;
            Ok(StepReport { loss })
        })
    }

    fn block_parallel(&self) -> Option<super::BlockRule> {
        Some(super::BlockRule::Bp)
    }
}
