//! fdfa: training neural networks with forward-mode feedback alignment.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod data;
pub mod error;

pub use error::{DataErrorKind, Error, Result};
