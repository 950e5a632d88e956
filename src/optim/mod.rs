//! Optimisation: Adam with PyTorch's semantics and the per-epoch step decay.

mod adam;
mod schedule;

pub use adam::{Adam, AdamConfig, AdamState};
pub use schedule::StepLr;

use crate::layers::Param;

/// Anything that owns trainable parameters: a [`Model`](crate::model::Model), or a learning
/// rule's feedback matrices.
pub trait Parameters {
    /// Visits every parameter in a fixed order, with its name.
    fn visit_params(&mut self, f: &mut dyn FnMut(&str, &mut Param));
}
