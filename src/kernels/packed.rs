//! A matrix product whose packing buffers belong to the caller.
//!
//! `matrixmultiply::sgemm` allocates its packing buffer on every call and takes none from its
//! caller. A convolution multiplies one sample at a time, so through sgemm a training step
//! would allocate (and fault in) packing memory in proportion to its batch. This product packs
//! into [`Packing`] buffers that the caller keeps from call to call, so a steady step
//! allocates nothing for it.
//!
//! It gives sgemm's bits, not merely sgemm's accuracy: every element of `C` is summed over the
//! inner dimension in 256-deep passes, each pass a chain of multiply-adds in order from zero,
//! added to `C` as `round(pass + round(beta C))` (the first pass with the caller's `beta`, the
//! others with 1) — fused multiply-adds where matrixmultiply's dispatch picks an FMA kernel
//! (AVX-512, or AVX2 with FMA, on x86; always on aarch64), a multiply then an add elsewhere.
//! The tile sizes follow the instruction set, but no element's arithmetic depends on them:
//! padding only ever extends the rows and columns of a tile, never its inner dimension.
//! `alpha` is 1: the crate folds any other into an operand first (see `gemm`).

use ndarray::{ArrayView2, ArrayViewMut2, Axis, s};

/// The inner dimension of one pass: matrixmultiply's `kc` for `f32`, which the bits follow.
const KC: usize = 256;
/// Rows of `A` packed at a time.
const MC: usize = 64;
/// Columns of `B` packed at a time.
const NC: usize = 1024;

/// Packing buffers, kept by the caller from product to product.
#[derive(Default)]
pub(crate) struct Packing {
    a: Vec<f32>,
    b: Vec<f32>,
}

/// `C <- A B + beta * C`, packing into `buf`. `beta = 0` does not read `C`.
pub(crate) fn gemm_packed(
    a: ArrayView2<'_, f32>,
    b: ArrayView2<'_, f32>,
    beta: f32,
    c: ArrayViewMut2<'_, f32>,
    buf: &mut Packing,
) {
    debug_assert_eq!(a.ncols(), b.nrows());
    debug_assert_eq!(c.dim(), (a.nrows(), b.ncols()));
    match kernel_class() {
        Class::Avx512 => fused_16x16(a, b, beta, c, buf),
        Class::Fused => fused_8x8(a, b, beta, c, buf),
        Class::Unfused => unfused_8x8(a, b, beta, c, buf),
    }
}

#[derive(Clone, Copy)]
enum Class {
    /// Fused multiply-adds on 16-lane vectors.
    Avx512,
    /// Fused multiply-adds.
    Fused,
    /// A multiply then an add, each rounded.
    Unfused,
}

/// The arithmetic matrixmultiply's dispatch would use on this processor.
fn kernel_class() -> Class {
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            Class::Avx512
        } else if std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("avx2")
        {
            Class::Fused
        } else {
            Class::Unfused
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        Class::Fused
    }
    #[cfg(not(any(target_arch = "x86", target_arch = "x86_64", target_arch = "aarch64")))]
    {
        Class::Unfused
    }
}

#[multiversion::multiversion(targets(
    "x86_64+avx+avx2+fma+avx512f+avx512vl+avx512bw+avx512dq",
    "x86+avx+avx2+fma+avx512f+avx512vl+avx512bw+avx512dq"
))]
fn fused_16x16(
    a: ArrayView2<'_, f32>,
    b: ArrayView2<'_, f32>,
    beta: f32,
    c: ArrayViewMut2<'_, f32>,
    buf: &mut Packing,
) {
    product::<16, 16, Fused16>(a, b, beta, c, buf);
}

#[multiversion::multiversion(targets("x86_64+avx+avx2+fma", "x86+avx+avx2+fma"))]
fn fused_8x8(
    a: ArrayView2<'_, f32>,
    b: ArrayView2<'_, f32>,
    beta: f32,
    c: ArrayViewMut2<'_, f32>,
    buf: &mut Packing,
) {
    product::<8, 8, Fused8>(a, b, beta, c, buf);
}

#[multiversion::multiversion(targets("x86_64+avx", "x86+avx"))]
fn unfused_8x8(
    a: ArrayView2<'_, f32>,
    b: ArrayView2<'_, f32>,
    beta: f32,
    c: ArrayViewMut2<'_, f32>,
    buf: &mut Packing,
) {
    product::<8, 8, Unfused8>(a, b, beta, c, buf);
}

/// A tile kernel: `MR x NR` sums of a pass over packed panels.
///
/// A trait rather than a function value: a function passed by value is called through a shim
/// that LLVM need not inline, and outside the caller's target features its multiply-adds
/// would compile to library calls.
trait Tile<const MR: usize, const NR: usize> {
    fn tile(a: &[f32], b: &[f32]) -> [[f32; NR]; MR];
}

/// AVX-512: 16 rows of one 16-lane vector each.
struct Fused16;
/// AVX2 with FMA, or aarch64: 8 rows of 8 lanes.
struct Fused8;
/// Without FMA: 8 rows of 8 lanes, a multiply then an add.
struct Unfused8;

impl Tile<16, 16> for Fused16 {
    #[inline(always)]
    fn tile(a: &[f32], b: &[f32]) -> [[f32; 16]; 16] {
        tile_16::<16, true>(a, b)
    }
}

impl Tile<8, 8> for Fused8 {
    #[inline(always)]
    fn tile(a: &[f32], b: &[f32]) -> [[f32; 8]; 8] {
        tile_8::<8, true>(a, b)
    }
}

impl Tile<8, 8> for Unfused8 {
    #[inline(always)]
    fn tile(a: &[f32], b: &[f32]) -> [[f32; 8]; 8] {
        tile_8::<8, false>(a, b)
    }
}

/// The blocked product with `MR x NR` tiles computed by `T`.
#[inline(always)]
fn product<const MR: usize, const NR: usize, T: Tile<MR, NR>>(
    a: ArrayView2<'_, f32>,
    b: ArrayView2<'_, f32>,
    beta: f32,
    mut c: ArrayViewMut2<'_, f32>,
    buf: &mut Packing,
) {
    let (m, k) = a.dim();
    let n = b.ncols();
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        // No pass: C <- beta C, as sgemm does.
        if beta == 0.0 {
            c.fill(0.0);
        } else {
            c.map_inplace(|v| *v *= beta);
        }
        return;
    }
    let (ldc, col_stride) = (c.strides()[0], c.strides()[1]);
    let mut out = match c.as_slice_mut() {
        Some(data) if col_stride == 1 && ldc >= 0 => Out::Rows(data, ldc.unsigned_abs()),
        _ => Out::View(c),
    };
    for j0 in (0..n).step_by(NC) {
        let nc = NC.min(n - j0);
        let panels_b = nc.div_ceil(NR);
        for p0 in (0..k).step_by(KC) {
            let kc = KC.min(k - p0);
            let beta = if p0 == 0 { beta } else { 1.0 };
            buf.b.resize(panels_b * NR * kc, 0.0);
            pack_b::<NR>(b.slice(s![p0..p0 + kc, j0..j0 + nc]), &mut buf.b);
            for i0 in (0..m).step_by(MC) {
                let mc = MC.min(m - i0);
                let panels_a = mc.div_ceil(MR);
                buf.a.resize(panels_a * MR * kc, 0.0);
                for (ip, dst) in buf.a.chunks_exact_mut(MR * kc).enumerate() {
                    let i = i0 + ip * MR;
                    let rows = MR.min(i0 + mc - i);
                    pack::<MR>(a.slice(s![i..i + rows, p0..p0 + kc]), dst);
                }
                for (jp, bp) in buf.b.chunks_exact(NR * kc).enumerate() {
                    let j = j0 + jp * NR;
                    let cols = NR.min(j0 + nc - j);
                    for (ip, ap) in buf.a.chunks_exact(MR * kc).enumerate() {
                        let i = i0 + ip * MR;
                        let rows = MR.min(i0 + mc - i);
                        out.store(&T::tile(ap, bp), i, j, rows, cols, beta);
                    }
                }
            }
        }
    }
}

/// `C`, as rows of a slice when it has that layout.
enum Out<'a, 'b> {
    /// Row `i` starts at `i * ldc`.
    Rows(&'a mut [f32], usize),
    View(ArrayViewMut2<'b, f32>),
}

impl Out<'_, '_> {
    /// `C[i.., j..] <- tile + beta C` over `rows x cols` (`tile` alone when `beta` is 0).
    #[inline(always)]
    fn store<const MR: usize, const NR: usize>(
        &mut self,
        tile: &[[f32; NR]; MR],
        i: usize,
        j: usize,
        rows: usize,
        cols: usize,
        beta: f32,
    ) {
        match self {
            Out::Rows(data, ldc) if rows == MR && cols == NR => {
                // A whole tile: rows of a fixed length, which vectorize.
                for (r, t) in tile.iter().enumerate() {
                    let c: &mut [f32; NR] = (&mut data[(i + r) * *ldc + j..][..NR])
                        .try_into()
                        .unwrap_or_else(|_| unreachable!("a slice of NR values"));
                    add_row(t, beta, c);
                }
            }
            Out::Rows(data, ldc) => {
                for (r, t) in tile.iter().take(rows).enumerate() {
                    let c = &mut data[(i + r) * *ldc + j..][..cols];
                    add_row(&t[..cols], beta, c);
                }
            }
            Out::View(c) => {
                let mut c = c.slice_mut(s![i..i + rows, j..j + cols]);
                for (t, mut c) in tile.iter().zip(c.axis_iter_mut(Axis(0))) {
                    for (&t, v) in t.iter().zip(c.iter_mut()) {
                        *v = if beta == 0.0 { t } else { t + beta * *v };
                    }
                }
            }
        }
    }
}

/// `c <- t + beta c`, or `c <- t` when `beta` is 0.
#[inline(always)]
fn add_row(t: &[f32], beta: f32, c: &mut [f32]) {
    if beta == 0.0 {
        c.copy_from_slice(t);
    } else if beta == 1.0 {
        c.iter_mut().zip(t).for_each(|(v, &t)| *v += t);
    } else {
        c.iter_mut().zip(t).for_each(|(v, &t)| *v = t + beta * *v);
    }
}

/// Packs `src` (`kc x nc`) as panels of `NR` columns, each `kc` groups of `NR` values, the
/// columns past `nc` zero.
#[inline(always)]
fn pack_b<const NR: usize>(src: ArrayView2<'_, f32>, dst: &mut [f32]) {
    let (kc, nc) = src.dim();
    for (jp, panel) in dst.chunks_exact_mut(NR * kc).enumerate() {
        let j = jp * NR;
        let cols = NR.min(nc - j);
        // Panel by panel, so that the writes run in order.
        pack::<NR>(src.slice(s![.., j..j + cols]).t(), panel);
    }
}

/// Copies `src` (`rows <= width` by `kc`) into `dst` as `kc` groups of `width` values, column
/// `p` of `src` in group `p`, the rows past `rows` zero.
#[inline(always)]
fn pack<const W: usize>(src: ArrayView2<'_, f32>, dst: &mut [f32]) {
    let width = W;
    let (rows, kc) = src.dim();
    debug_assert_eq!(dst.len(), width * kc);
    if rows < width {
        dst.fill(0.0);
    }
    if let Some(cols) = (src.strides()[0] == 1 || rows == 1)
        .then(|| src.axis_iter(Axis(1)))
    {
        // Columns of unit stride: each is a group.
        for (group, col) in dst.chunks_exact_mut(width).zip(cols) {
            match col.to_slice() {
                // A whole group as one fixed-size copy: `copy_from_slice` would call `memmove`
                // for every 16 values.
                Some(col) if rows == W => {
                    let group: &mut [f32; W] = group.try_into().unwrap_or_else(|_| unreachable!());
                    let col: &[f32; W] = col.try_into().unwrap_or_else(|_| unreachable!());
                    *group = *col;
                }
                Some(col) => group[..rows].copy_from_slice(col),
                None => group.iter_mut().zip(col).for_each(|(d, &v)| *d = v),
            }
        }
    } else {
        // Rows of any stride, read side by side so that the writes run in order.
        let mut lines = [&[][..]; 16];
        let lines = &mut lines[..rows.min(16)];
        if rows <= 16 && src.axis_iter(Axis(0)).all(|r| r.to_slice().is_some()) {
            for (line, row) in lines.iter_mut().zip(src.axis_iter(Axis(0))) {
                *line = row.to_slice().unwrap_or_default();
            }
            for (p, group) in dst.chunks_exact_mut(width).enumerate() {
                for (d, line) in group.iter_mut().zip(lines.iter()) {
                    *d = line[p];
                }
            }
        } else {
            for (i, row) in src.axis_iter(Axis(0)).enumerate() {
                for (group, &v) in dst.chunks_exact_mut(width).zip(row.iter()) {
                    group[i] = v;
                }
            }
        }
    }
}

/// `acc[j] <- acc[j] + a b[j]`, fused or not.
#[inline(always)]
fn multiply_add<const NR: usize, const FUSED: bool>(acc: &mut [f32; NR], a: f32, b: &[f32; NR]) {
    for (v, &bj) in acc.iter_mut().zip(b) {
        *v = if FUSED { a.mul_add(bj, *v) } else { *v + a * bj };
    }
}

/// Defines `$name`, one tile of `$mr` rows of a pass: `sum_p a[p][i] * b[p][j]`, in order
/// from zero.
///
/// Each row's sums are a local of their own: held in one array, LLVM keeps the tile in memory
/// past 64 values and vectorizes across the inner dimension with gathers instead, 20 to 40
/// times slower.
macro_rules! tile_kernel {
    ($name:ident, $mr:literal, $(($row:ident $i:literal))*) => {
        #[inline(always)]
        fn $name<const NR: usize, const FUSED: bool>(a: &[f32], b: &[f32]) -> [[f32; NR]; $mr] {
            let (a, _) = a.as_chunks::<$mr>();
            let (b, _) = b.as_chunks::<NR>();
            $(let mut $row = [0.0f32; NR];)*
            // Two steps per iteration, so that the loop's own bookkeeping is paid half as often.
            let (a2, a1) = a.as_chunks::<2>();
            let (b2, b1) = b.as_chunks::<2>();
            for ([a, a_next], [b, b_next]) in a2.iter().zip(b2) {
                // One load of the whole group: used in place, LLVM assembles it from pieces.
                let b = *b;
                $(multiply_add::<NR, FUSED>(&mut $row, a[$i], &b);)*
                let b = *b_next;
                $(multiply_add::<NR, FUSED>(&mut $row, a_next[$i], &b);)*
            }
            for (a, b) in a1.iter().zip(b1) {
                let b = *b;
                $(multiply_add::<NR, FUSED>(&mut $row, a[$i], &b);)*
            }
            [$($row),*]
        }
    };
}

tile_kernel!(tile_8, 8, (r0 0) (r1 1) (r2 2) (r3 3) (r4 4) (r5 5) (r6 6) (r7 7));
tile_kernel!(tile_16, 16, (r0 0) (r1 1) (r2 2) (r3 3) (r4 4) (r5 5) (r6 6) (r7 7) (r8 8) (r9 9)
    (r10 10) (r11 11) (r12 12) (r13 13) (r14 14) (r15 15));

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::linalg::general_mat_mul;

    /// sgemm's own bits, on shapes with edge tiles on every side, inner dimensions of one pass,
    /// of several and of a partial one, operands in both memory orders, and both `beta`s.
    #[test]
    fn gives_sgemm_bits() {
        let mut rng = crate::init::rng(4);
        let mut buf = Packing::default();
        for (m, k, n) in [
            (1, 1, 1),
            (7, 3, 5),
            (32, 25, 576),
            (64, 800, 64),
            (37, 513, 41),
            (70, 256, 1030),
            (17, 257, 9),
        ] {
            let a = crate::init::uniform(&[m, k], 1.0, &mut rng);
            let at = crate::init::uniform(&[k, m], 1.0, &mut rng);
            let b = crate::init::uniform(&[k, n], 1.0, &mut rng);
            let c0 = crate::init::uniform(&[m, n], 1.0, &mut rng);
            for a in [a.matrix(), at.matrix().reversed_axes()] {
                for beta in [0.0, 1.0, 0.5] {
                    let mut want = c0.clone();
                    general_mat_mul(1.0, &a, &b.matrix(), beta, &mut want.matrix_mut());
                    let mut got = c0.clone();
                    gemm_packed(a, b.matrix(), beta, got.matrix_mut(), &mut buf);
                    assert!(
                        want.data()
                            .iter()
                            .zip(got.data())
                            .all(|(x, y)| x.to_bits() == y.to_bits()),
                        "{m}x{k}x{n}, beta {beta}"
                    );
                }
            }
        }
    }

    #[test]
    fn beta_zero_ignores_what_c_held() {
        let a = ndarray::Array2::from_elem((3, 4), 1.0f32);
        let b = ndarray::Array2::from_elem((4, 2), 2.0f32);
        let mut c = ndarray::Array2::from_elem((3, 2), f32::NAN);
        gemm_packed(a.view(), b.view(), 0.0, c.view_mut(), &mut Packing::default());
        assert!(c.iter().all(|&v| v == 8.0));
    }
}
#[cfg(test)]
mod speed_tmp {
    use super::*;
    use ndarray::linalg::general_mat_mul;
    #[test]
    #[ignore]
    fn speed() {
        let mut rng = crate::init::rng(4);
        let mut buf = Packing::default();
        for (m, k, n, ta) in [(15, 25, 576, false), (15, 576, 25, false), (40, 375, 400, false), (40, 400, 375, false), (400, 40, 375, true),
                          (64, 363, 3025, false), (192, 1600, 729, false), (729, 192, 1600, true), (192, 729, 1600, false), (384, 1728, 169, false), (169,384,1728,true), (256, 3456, 169, false)] {
            let a = if ta { crate::init::uniform(&[k, m], 1.0, &mut rng) } else { crate::init::uniform(&[m, k], 1.0, &mut rng) };
            let av = if ta { a.matrix().reversed_axes() } else { a.matrix() };
            let b = crate::init::uniform(&[k, n], 1.0, &mut rng);
            let mut c = crate::init::uniform(&[m, n], 1.0, &mut rng);
            let reps = (2e9 / (m * n * k) as f64).max(3.0) as usize;
            let t = std::time::Instant::now();
            for _ in 0..reps { general_mat_mul(1.0, &av, &b.matrix(), 1.0, &mut c.matrix_mut()); }
            let mm = t.elapsed().as_secs_f64() / reps as f64;
            let t = std::time::Instant::now();
            for _ in 0..reps { gemm_packed(av, b.matrix(), 1.0, c.matrix_mut(), &mut buf); }
            let me = t.elapsed().as_secs_f64() / reps as f64;
            let gf = 2.0 * (m * n * k) as f64 / 1e9;
            println!("{m}x{k}x{n} t={ta}: sgemm {:.1} GF/s  packed {:.1} GF/s  ratio {:.2}", gf / mm, gf / me, mm / me);
        }
    }
}
#[cfg(test)]
mod speed_tmp2 {
    use super::*;
    #[test]
    #[ignore]
    fn parts() {
        let mut rng = crate::init::rng(4);
        for (m, k, n) in [(40usize, 375usize, 400usize), (192, 1600, 729)] {
            let a = crate::init::uniform(&[m, k], 1.0, &mut rng);
            let b = crate::init::uniform(&[k, n], 1.0, &mut rng);
            let mut buf = Packing::default();
            let reps = 200;
            let kc = 256.min(k);
            let t = std::time::Instant::now();
            for _ in 0..reps {
                buf.b.resize(n.div_ceil(16) * 16 * kc, 0.0);
                pack_b::<16>(b.matrix().slice(s![0..kc, ..]), &mut buf.b);
            }
            let tb = t.elapsed().as_secs_f64() / reps as f64;
            let t = std::time::Instant::now();
            for _ in 0..reps {
                buf.a.resize(64 * kc, 0.0);
                for (ip, dst) in buf.a.chunks_exact_mut(16 * kc).enumerate() {
                    let i = ip * 16; let rows = 16.min(m.min(64) - i.min(m.min(64)));
                    if rows == 0 { break; }
                    pack::<16>(a.matrix().slice(s![i..i + rows, 0..kc]), dst);
                }
            }
            let ta = t.elapsed().as_secs_f64() / reps as f64;
            let flops = 2.0 * (m.min(64) * kc * n) as f64;
            println!("{m}x{k}x{n}: pack B {:.1} us ({} el), pack A(64 rows) {:.1} us, compute of one mc block at 200GF/s {:.1} us", tb*1e6, kc*n, ta*1e6, flops/200e9*1e6);
        }
    }
}
