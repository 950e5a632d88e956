//! fdfa: training neural networks with forward-mode feedback alignment.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod data;
pub mod diagnostics;
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
