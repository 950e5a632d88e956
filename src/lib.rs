//! # fdfa
//!
//! Train neural networks with **Forward Direct Feedback Alignment** (FDFA), **Direct Feedback
//! Alignment** (DFA), **Direct Kolen-Pollack** (DKP) or **backpropagation** (BP), exactly as
//! the PyTorch reference implementation of FDFA computes them, on the CPU.
//!
//! The crate carries its own forward-mode automatic differentiation: a [`Dual`] tensor holds
//! a batch of values and, optionally, `k` tangents, and every layer propagates the tangents
//! by its exact Jacobian-vector product in the same pass (BatchNorm's coupling of the batch
//! included). A tangent that is absent is an exact zero and costs nothing. Rayon spreads
//! each batch over the cores in fixed chunks, so results do not depend on the number of
//! threads.
//!
//! ## Quick start
//!
//! ```
//! use std::ops::ControlFlow;
//! use fdfa::data::Dataset;
//! use fdfa::rules::RuleKind;
//! use fdfa::train::{TrainConfig, Trainer};
//!
//! // A toy task: 128 4x4 images whose class is the brighter half.
//! let mut pixels = Vec::new();
//! let mut labels = Vec::new();
//! for i in 0..128u32 {
//!     let class = i % 2;
//!     for p in 0..16u32 {
//!         let bright = (p < 8) == (class == 0);
//!         pixels.push(if bright { 200 } else { 20 } + ((i * 7 + p * 13) % 30) as u8);
//!     }
//!     labels.push(class);
//! }
//! let data = Dataset::new(pixels, labels, [1, 4, 4], 2)?;
//!
//! let mut rng = fdfa::init::rng(0);
//! let model = fdfa::model::fc(&[1, 4, 4], 2, 32, 2, &mut rng)?;   // FC-2, width 32
//! let rule = RuleKind::Fdfa.build(&model, 1, &mut rng)?;
//! let config = TrainConfig::default().with_batch_size(16).with_epochs(3).with_lr(1e-2).with_b_lr(1e-2);
//! let mut trainer = Trainer::new(model, rule, config)?;
//! let records = trainer.fit(&data, &data, &mut |_| ControlFlow::Continue(()))?;
//! assert!(records[2].test_accuracy > 90.0);
//! # Ok::<(), fdfa::Error>(())
//! ```
//!
//! ## Where to go next
//!
//! - **Recommended path:** [`model`] builds the reference's networks ([`model::fc`],
//!   [`model::shallow_cnn`], [`model::alexnet_bn`]); [`rules::RuleKind`] builds a rule;
//!   [`train::Trainer`] runs epochs with the reference's defaults ([`train::TrainConfig`]);
//!   [`data`] reads MNIST, Fashion-MNIST and CIFAR. The examples (`cargo run --release
//!   --example mnist`) add the reference's command line.
//! - **Expert path:** assemble your own [`model::Block`]s from [`layers`], drive
//!   [`rules::LearningRule::step`] and the two [`optim::Adam`] groups yourself, or write a
//!   rule of your own on the [`model::Model`] primitives (see `examples/custom_rule.rs`).
//! - **More than one machine:** [`distributed`] trains data-parallel (synchronised
//!   BatchNorm, the single-process algorithm) or block-parallel (DFA's blocks updating at
//!   once on their own ranks), over MPI with the `mpi` feature or over threads.
//! - Coming from PyTorch: [`doc::pytorch_users`].

#![deny(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod csv;
pub mod data;
pub mod diagnostics;
pub mod distributed;
pub mod doc;
pub mod error;
pub mod init;
mod kernels;
pub mod layers;
pub mod loss;
pub mod model;
pub mod optim;
pub mod parallel;
pub mod rules;
pub mod tensor;
pub mod train;

pub use error::{DataErrorKind, Error, Result};
pub use tensor::{Dual, Tensor};

/// The `ndarray` this crate is built with, so that arrays passed to
/// [`Tensor::from_array`] and returned by [`Tensor::to_array`] come from the matching version.
pub use ndarray;

/// The types most programs need, in one import: `use fdfa::prelude::*;`.
///
/// ```
/// use fdfa::prelude::*;
/// let mut rng = fdfa::init::rng(0);
/// let model = Model::new(
///     &[4],
///     vec![
///         Block::hidden("h", vec![Box::new(LinearConfig::new(4, 8).init(&mut rng)?), Box::new(Relu::new("relu"))]),
///         Block::output(vec![Box::new(LinearConfig::new(8, 3).init(&mut rng)?)]),
///     ],
/// )?;
/// let rule = RuleKind::Fdfa.build(&model, 1, &mut rng)?;
/// let trainer = Trainer::new(model, rule, TrainConfig::default())?;
/// assert_eq!(trainer.model().classes(), 3);
/// # Ok::<(), fdfa::Error>(())
/// ```
pub mod prelude {
    pub use crate::data::{DataSource, Dataset, FeatureDataset, Normalize};
    pub use crate::error::{Error, Result};
    pub use crate::layers::{
        AdaptiveAvgPool2d, BatchNormConfig, Conv2dConfig, Flatten, Layer, LinearConfig, MaxPool2d,
        Relu, State, StateMut,
    };
    pub use crate::model::{Block, Mode, Model, Sequential};
    pub use crate::optim::{Adam, AdamConfig, Parameters};
    pub use crate::rules::{LearningRule, RuleKind};
    pub use crate::tensor::{Dual, Tensor};
    pub use crate::train::checkpoint::{load_model, save_model};
    pub use crate::train::{TrainConfig, Trainer};
}
