//! The sole entry to matrix products.
//!
//! `C <- alpha * A B + beta * C` through `ndarray::linalg::general_mat_mul`, which hands `f32`
//! to `matrixmultiply::sgemm` with arbitrary strides, so a transpose is only a view. Large
//! products are split into blocks of `C` (rows or columns) computed in parallel; each element
//! is still computed by one sgemm over the whole inner dimension, so the result does not
//! depend on the number of threads.

use std::cell::RefCell;

use ndarray::linalg::general_mat_mul;
use ndarray::{ArrayView2, ArrayViewMut2, Axis};
use rayon::prelude::*;

use crate::parallel::PAR_MIN_WORK;

/// Parallel blocks per worker thread: two, so that work stealing evens out a core that
/// delivers less than the others.
///
/// The split depends on the thread count but the bits do not: matrixmultiply rounds an edge
/// tile of `C` differently from an interior one (`round(beta C) + round(alpha AB)` against
/// one fused step), but every block boundary is a multiple of 16, and so of every sgemm
/// kernel's tile (8x4, 8x8 or 16x16). Each block's tile grid is then the whole product's, and
/// every element goes through the same kernel path whatever the split.
const BLOCKS_PER_THREAD: usize = 2;

/// Parallel blocks for a product on the current thread pool.
fn blocks() -> usize {
    rayon::current_num_threads() * BLOCKS_PER_THREAD
}

/// The width of a block along an axis of length `len` cut into `blocks`: a multiple of 16,
/// at least 16.
fn block_len(len: usize, blocks: usize) -> usize {
    len.div_ceil(blocks.max(1)).div_ceil(16).max(1) * 16
}

/// Whether `alpha * x` is exact for every normal `x` whose product stays normal: 1, or a power
/// of two.
///
/// matrixmultiply's FMA kernels (AVX2 8x8 tiles, AVX-512 16x16 tiles) apply `alpha` in one
/// fused step inside a tile, `round(alpha AB + C)`, and in two roundings on an edge tile,
/// `round(round(alpha AB) + C)`, with `C` the previous 256-deep pass's sum after the first;
/// which elements lie on an edge tile follows the tile size, so the bits would follow the
/// instruction set. The two agree when `alpha AB` is exact; any other `alpha` is folded into
/// a copy of the smaller operand first ([`with_scaled`]), so that the kernels only ever see
/// an exact one.
fn exact_alpha(alpha: f32) -> bool {
    alpha == 1.0 || (alpha.is_normal() && alpha.to_bits() & 0x007f_ffff == 0)
}

thread_local! {
    /// Scaled copies of operands, one per product in progress on this thread; reused, so
    /// that steady steps allocate nothing.
    static SCALED: RefCell<Vec<Vec<f32>>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f(1, A', B')` with `alpha` folded into whichever of `A` and `B` is smaller
/// (`A' = alpha A` or `B' = alpha B`, each element rounded once), when `alpha` is not
/// [`exact_alpha`]; otherwise `f(alpha, A, B)`.
fn with_scaled(
    alpha: f32,
    a: ArrayView2<'_, f32>,
    b: ArrayView2<'_, f32>,
    f: impl FnOnce(f32, ArrayView2<'_, f32>, ArrayView2<'_, f32>),
) {
    if exact_alpha(alpha) {
        return f(alpha, a, b);
    }
    // Taken out of the thread-local rather than borrowed: a product split over the pool may
    // run another product on this thread while waiting, which takes a buffer of its own. The
    // pool keeps every buffer it has handed out, so that such nesting allocates only the
    // first time it reaches a new depth.
    let mut buf = SCALED
        .with(|pool| pool.borrow_mut().pop())
        .unwrap_or_default();
    let scale_a = a.len() <= b.len();
    let src = if scale_a { a } else { b };
    buf.clear();
    buf.extend(src.iter().map(|&v| alpha * v));
    match ArrayView2::from_shape(src.dim(), &buf[..]) {
        Ok(scaled) if scale_a => f(1.0, scaled, b),
        Ok(scaled) => f(1.0, a, scaled),
        // Unreachable: the buffer holds the operand's elements in logical order.
        Err(_) => f(alpha, a, b),
    }
    SCALED.with(|pool| pool.borrow_mut().push(buf));
}

/// `C <- alpha * A B + beta * C`.
pub(crate) fn gemm(
    alpha: f32,
    a: ArrayView2<'_, f32>,
    b: ArrayView2<'_, f32>,
    beta: f32,
    c: ArrayViewMut2<'_, f32>,
) {
    with_scaled(alpha, a, b, |alpha, a, b| {
        gemm_parallel(alpha, a, b, beta, c)
    });
}

/// [`gemm`] once `alpha` is exact.
fn gemm_parallel(
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
        let block = block_len(m, blocks());
        c.axis_chunks_iter_mut(Axis(0), block)
            .into_par_iter()
            .zip(a.axis_chunks_iter(Axis(0), block))
            .for_each(|(mut c, a)| general_mat_mul(alpha, &a, &b, beta, &mut c));
    } else {
        let block = block_len(n, blocks());
        c.axis_chunks_iter_mut(Axis(1), block)
            .into_par_iter()
            .zip(b.axis_chunks_iter(Axis(1), block))
            .for_each(|(mut c, b)| general_mat_mul(alpha, &a, &b, beta, &mut c));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    /// Every product gives the same bits whatever the number of threads, with values whose
    /// products round (integers would hide a change of rounding), shapes with edge tiles on
    /// both sides, an inner dimension over matrixmultiply's 256-deep pass, and the scalars the
    /// crate uses.
    #[test]
    fn bits_do_not_depend_on_the_thread_count() {
        let mut rng = crate::init::rng(9);
        for (m, k, n) in [(64, 300, 200), (203, 77, 150), (37, 520, 411)] {
            let a = crate::init::uniform(&[m, k], 1.0, &mut rng);
            let b = crate::init::uniform(&[k, n], 1.0, &mut rng);
            let c0 = crate::init::uniform(&[m, n], 1.0, &mut rng);
            for (alpha, beta) in [(1.0, 0.0), (1.0, 1.0), (-1.0 / 64.0, 1.0), (0.37, 0.0)] {
                let product = |threads: usize| {
                    let pool = rayon::ThreadPoolBuilder::new()
                        .num_threads(threads)
                        .build()
                        .unwrap();
                    let mut c = c0.clone();
                    pool.install(|| gemm(alpha, a.matrix(), b.matrix(), beta, c.matrix_mut()));
                    c
                };
                let one = product(1);
                for threads in [2, 3, 5, 16] {
                    assert!(
                        one.data()
                            .iter()
                            .zip(product(threads).data())
                            .all(|(x, y)| x.to_bits() == y.to_bits()),
                        "{m}x{k}x{n}, alpha {alpha}, beta {beta}: 1 vs {threads} threads"
                    );
                }
            }
        }
    }

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
