//! Numerical kernels shared by the layers: matrix products, im2col, pooling windows.
//!
//! Kernels take views whose shapes were checked at the layer's entry and only
//! `debug_assert!` them.

pub(crate) mod gemm;
pub(crate) mod im2col;
pub(crate) mod packed;

/// The same bits on every instruction set: the crate's kernels run on fixed inputs natively
/// and under `qemu-x86_64` emulating older processors, so that every version the run-time
/// dispatch picks (multiversion's AVX-512, AVX2 and SSE builds; matrixmultiply's AVX-512,
/// FMA-AVX2, AVX and SSE2 kernels) meets the same inputs, and their bits are compared.
#[cfg(all(test, target_arch = "x86_64", target_os = "linux"))]
mod isa;
