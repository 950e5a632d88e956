//! Per-epoch step decay of the learning rate.

use serde::{Deserialize, Serialize};

/// `lr_e = lr_0 * gamma^e` after `e` epochs (PyTorch's `StepLR(step_size=1, gamma)`).
///
/// ```
/// let s = fdfa::optim::StepLr::new(1e-4, 0.95);
/// assert!((s.lr(2) - 1e-4 * 0.95 * 0.95).abs() < 1e-12);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepLr {
    /// The initial learning rate.
    pub base_lr: f32,
    /// The factor applied after every epoch.
    pub gamma: f32,
}

impl StepLr {
    /// A schedule from `base_lr`, decayed by `gamma` per epoch.
    pub fn new(base_lr: f32, gamma: f32) -> Self {
        Self { base_lr, gamma }
    }

    /// The learning rate after `epochs_done` epochs.
    pub fn lr(&self, epochs_done: usize) -> f32 {
        // PyTorch multiplies the current rate by gamma at each step; repeat that product.
        (0..epochs_done).fold(self.base_lr, |lr, _| lr * self.gamma)
    }
}
