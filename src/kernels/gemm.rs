//! The sole entry to matrix products.
//!
//! `C <- alpha * A B + beta * C` through `ndarray::linalg::general_mat_mul`, which hands `f32`
//! to `matrixmultiply::sgemm` with arbitrary strides, so a transpose is only a view. Large
//! products are split into fixed blocks of `C` (rows or columns) computed in parallel; each
//! element is still computed by one sgemm over the whole inner dimension, so the result does
//! not depend on the number of threads.

use ndarray::linalg::general_mat_mul;
use ndarray::{ArrayView2, ArrayViewMut2, Axis};
use rayon::prelude::*;

use crate::parallel::PAR_MIN_WORK;

/// Parallel blocks a large product is split into, along the larger side of `C`.
///
/// A fixed count, not the number of threads, keeps the split (and so the bits) the same on
/// every machine; four blocks keep both cores of a small machine busy while each sgemm call
/// still repacks the shared operand only four times.
const BLOCKS: usize = 4;

/// The width of a block along an axis of length `len`: a multiple of 16 (the micro-kernels'
/// tile), at least 16.
fn block_len(len: usize) -> usize {
    len.div_ceil(BLOCKS).div_ceil(16).max(1) * 16
}

/// `C <- alpha * A B + beta * C`.
pub(crate) fn gemm(
    alpha: f32,
    a: ArrayView2<'_, f32>,
    b: ArrayView2<'_, f32>,
    beta: f32,
    mut c: ArrayViewMut2<'_, f32>,
) {
    let (m, k) = a.dim();
    let n = b.ncols();
    debug_assert_eq!(b.nrows(), k);
    debug_assert_eq!(c.dim(), (m, n));
    if m * n * k < PAR_MIN_WORK * 4 || (m <= 32 && n <= 32) {
        general_mat_mul(alpha, &a, &b, beta, &mut c);
    } else if m >= n {
        let block = block_len(m);
        c.axis_chunks_iter_mut(Axis(0), block)
            .into_par_iter()
            .zip(a.axis_chunks_iter(Axis(0), block))
            .for_each(|(mut c, a)| general_mat_mul(alpha, &a, &b, beta, &mut c));
    } else {
        let block = block_len(n);
        c.axis_chunks_iter_mut(Axis(1), block)
            .into_par_iter()
            .zip(b.axis_chunks_iter(Axis(1), block))
            .for_each(|(mut c, b)| general_mat_mul(alpha, &a, &b, beta, &mut c));
    }
}

/// `C <- alpha * A B + beta * C` on the calling thread, for products already inside a
/// parallel loop.
pub(crate) fn gemm_serial(
    alpha: f32,
    a: ArrayView2<'_, f32>,
    b: ArrayView2<'_, f32>,
    beta: f32,
    mut c: ArrayViewMut2<'_, f32>,
) {
    general_mat_mul(alpha, &a, &b, beta, &mut c);
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    #[test]
    fn blocked_product_matches_naive() {
        let (m, k, n) = (150, 70, 90);
        let a = Array2::from_shape_fn((m, k), |(i, j)| ((i * 7 + j * 3) % 11) as f32 - 5.0);
        let b = Array2::from_shape_fn((k, n), |(i, j)| ((i * 5 + j) % 13) as f32 - 6.0);
        let mut c = Array2::<f32>::ones((m, n));
        gemm(2.0, a.view(), b.view(), 1.0, c.view_mut());
        for i in 0..m {
            for j in 0..n {
                let want: f32 = 1.0 + 2.0 * (0..k).map(|p| a[[i, p]] * b[[p, j]]).sum::<f32>();
                assert_eq!(c[[i, j]], want, "({i}, {j})");
            }
        }
    }
}
