//! Optimisation: Adam with PyTorch's semantics and the per-epoch step decay.

mod adam;
mod schedule;

pub use adam::{Adam, AdamConfig, AdamState};
pub use schedule::StepLr;

use crate::layers::ParamMut;

/// Anything that owns trainable parameters: a [`Model`](crate::model::Model), or a learning
/// rule's feedback matrices.
///
/// `Send`, because an optimizer updates them from a worker thread of the rayon pool (see
/// [`parallel::run`](crate::parallel::run)).
pub trait Parameters: Send {
    /// Visits every parameter with its name, each name once.
    fn visit_params(&mut self, f: &mut dyn FnMut(&str, ParamMut<'_>));
}
