//! Numerical kernels shared by the layers: matrix products, im2col, pooling windows.
//!
//! Kernels take views whose shapes were checked at the layer's entry and only
//! `debug_assert!` them.

pub(crate) mod gemm;
pub(crate) mod im2col;
