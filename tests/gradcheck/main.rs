//! Numerical checks of every layer and of the loss: tangents and gradients against finite
//! differences, the adjoint identity between a layer's JVP and its backward, primal values
//! against naive `f64` implementations, batched against per-sample results, and shape errors.
//!
//! One test binary with one file per layer (see `tests/common/mod.rs` for the harness).

#[path = "../common/mod.rs"]
mod common;

mod adaptive_avg_pool;
mod batch_norm;
mod conv2d;
mod flatten;
mod harness;
mod linear;
mod loss;
mod max_pool;
mod relu;
