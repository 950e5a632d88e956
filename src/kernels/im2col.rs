//! im2col and its adjoint col2im, one sample at a time.
//!
//! A sample `[c, h, w]` becomes a matrix with one row per output pixel and one column per
//! `(channel, kernel row, kernel column)`, in the order of a `Conv2d` weight's flattened
//! `[c_out, c_in * kernel * kernel]`, so the convolution is `cols · weightᵀ`.

/// The geometry of a 2-D convolution or pooling window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Geometry {
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
    pub out_h: usize,
    pub out_w: usize,
}

impl Geometry {
    /// `None` when the window does not fit the padded input.
    pub fn new(
        c: usize,
        h: usize,
        w: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Option<Self> {
        let (ph, pw) = (h + 2 * padding, w + 2 * padding);
        if kernel == 0 || stride == 0 || ph < kernel || pw < kernel {
            return None;
        }
        Some(Self {
            c,
            h,
            w,
            kernel,
            stride,
            padding,
            out_h: (ph - kernel) / stride + 1,
            out_w: (pw - kernel) / stride + 1,
        })
    }

    /// Values in one input sample.
    pub fn in_len(&self) -> usize {
        self.c * self.h * self.w
    }

    /// Output pixels per channel.
    pub fn out_pixels(&self) -> usize {
        self.out_h * self.out_w
    }

    /// Columns of the im2col matrix.
    pub fn patch_len(&self) -> usize {
        self.c * self.kernel * self.kernel
    }
}

/// Runs `$f::<K>(args)` with the kernel size `$k` as a constant for the usual sizes (0, read
/// as "use the run-time size", otherwise): the per-row copies then compile to fixed moves
/// and the loop over kernel rows unrolls, where a size tested on every row cost a compare
/// and an indirect jump per five values.
macro_rules! with_kernel_size {
    ($k:expr, $f:ident($($arg:expr),*)) => {
        match $k {
            1 => $f::<1>($($arg),*),
            2 => $f::<2>($($arg),*),
            3 => $f::<3>($($arg),*),
            5 => $f::<5>($($arg),*),
            7 => $f::<7>($($arg),*),
            11 => $f::<11>($($arg),*),
            _ => $f::<0>($($arg),*),
        }
    };
}

/// `dst.copy_from_slice(src)` for the short rows of an image (a few dozen values), in
/// blocks of 8 that compile to vector moves: `copy_from_slice` of a run-time length calls
/// `memcpy`, whose set-up costs as much as a copy this short.
#[inline(always)]
fn copy_short(dst: &mut [f32], src: &[f32]) {
    let mut d = dst.chunks_exact_mut(8);
    let mut s = src.chunks_exact(8);
    for (d, s) in (&mut d).zip(&mut s) {
        let s: [f32; 8] = s.try_into().unwrap_or_else(|_| unreachable!());
        d.copy_from_slice(&s);
    }
    for (d, s) in d.into_remainder().iter_mut().zip(s.remainder()) {
        *d = *s;
    }
}

/// Where the rows of an im2col matrix go.
pub(crate) trait Rows {
    /// The buffer for row `r`, written whole, then handed to [`Rows::finish`].
    fn row(&mut self, r: usize) -> &mut [f32];
    /// Row `r` is written.
    fn finish(&mut self, r: usize);
}

/// Rows in place in a matrix of rows of `p` values.
struct InPlace<'a> {
    cols: &'a mut [f32],
    p: usize,
}

impl Rows for InPlace<'_> {
    #[inline(always)]
    fn row(&mut self, r: usize) -> &mut [f32] {
        &mut self.cols[r * self.p..][..self.p]
    }

    #[inline(always)]
    fn finish(&mut self, _: usize) {}
}

/// Writes the transposed im2col matrix of `input` (`[c, h, w]`) into `cols`
/// (`[patch_len, out_pixels]`): one row per kernel tap, so that the forward product
/// `W · cols` reads both operands in the layout the sgemm packs fastest, and unit-stride
/// convolutions copy whole output rows at once.
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) fn im2col_t(g: &Geometry, input: &[f32], cols: &mut [f32]) {
    debug_assert_eq!(cols.len(), g.out_pixels() * g.patch_len());
    let p = g.out_pixels();
    im2col_t_rows(g, input, &mut InPlace { cols, p });
}

/// [`im2col_t`] row by row into `rows`.
pub(crate) fn im2col_t_rows(g: &Geometry, input: &[f32], rows: &mut impl Rows) {
    debug_assert_eq!(input.len(), g.in_len());
    with_kernel_size!(g.kernel, im2col_t_k(g, input, rows));
}

/// [`im2col_t`] for kernel size `K` (`0`: `g.kernel`).
fn im2col_t_k<const K: usize>(g: &Geometry, input: &[f32], rows: &mut impl Rows) {
    let k = if K == 0 { g.kernel } else { K };
    let (s, pad) = (g.stride, g.padding as isize);
    for ch in 0..g.c {
        let plane = &input[ch * g.h * g.w..][..g.h * g.w];
        for ky in 0..k {
            for kx in 0..k {
                let r = (ch * k + ky) * k + kx;
                let row = rows.row(r);
                // Output columns whose input column lies inside the image: the same for
                // every output row of this tap.
                let x0 = kx as isize - pad;
                let first = if x0 >= 0 {
                    0
                } else {
                    ((-x0) as usize).div_ceil(s)
                };
                let last = if (g.w as isize) > x0 {
                    (((g.w as isize - 1 - x0) / s as isize) as usize + 1).min(g.out_w)
                } else {
                    0
                };
                let first = first.min(last);
                let start = (first as isize * s as isize + x0).max(0) as usize;
                for (oy, out) in row.chunks_exact_mut(g.out_w).enumerate() {
                    let y = (oy * s) as isize + ky as isize - pad;
                    if y < 0 || y as usize >= g.h {
                        out.fill(0.0);
                        continue;
                    }
                    let line = &plane[y as usize * g.w..][..g.w];
                    out[..first].fill(0.0);
                    out[last..].fill(0.0);
                    if s == 1 {
                        copy_short(&mut out[first..last], &line[start..start + last - first]);
                    } else {
                        for (o, v) in out[first..last]
                            .iter_mut()
                            .zip(line[start..].iter().step_by(s))
                        {
                            *o = *v;
                        }
                    }
                }
                rows.finish(r);
            }
        }
    }
}

/// Writes the im2col matrix of `input` (`[c, h, w]`) into `cols` (`[out_pixels, patch_len]`).
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) fn im2col(g: &Geometry, input: &[f32], cols: &mut [f32]) {
    debug_assert_eq!(cols.len(), g.out_pixels() * g.patch_len());
    let p = g.patch_len();
    im2col_rows(g, input, &mut InPlace { cols, p });
}

/// [`im2col`] row by row (one output pixel's patch each) into `rows`.
pub(crate) fn im2col_rows(g: &Geometry, input: &[f32], rows: &mut impl Rows) {
    debug_assert_eq!(input.len(), g.in_len());
    with_kernel_size!(g.kernel, im2col_k(g, input, rows));
}

/// [`im2col`] for kernel size `K` (`0`: `g.kernel`).
fn im2col_k<const K: usize>(g: &Geometry, input: &[f32], rows: &mut impl Rows) {
    let k = if K == 0 { g.kernel } else { K };
    for oy in 0..g.out_h {
        for ox in 0..g.out_w {
            let r = oy * g.out_w + ox;
            let row = rows.row(r);
            let y0 = (oy * g.stride) as isize - g.padding as isize;
            let x0 = (ox * g.stride) as isize - g.padding as isize;
            let interior = y0 >= 0 && x0 >= 0 && y0 as usize + k <= g.h && x0 as usize + k <= g.w;
            for ch in 0..g.c {
                let plane = &input[ch * g.h * g.w..][..g.h * g.w];
                let dst = &mut row[ch * k * k..][..k * k];
                if interior {
                    let (y0, x0) = (y0 as usize, x0 as usize);
                    for ky in 0..k {
                        let src = &plane[(y0 + ky) * g.w + x0..][..k];
                        dst[ky * k..][..k].copy_from_slice(src);
                    }
                } else {
                    for ky in 0..k {
                        let y = y0 + ky as isize;
                        for kx in 0..k {
                            let x = x0 + kx as isize;
                            dst[ky * k + kx] =
                                if y >= 0 && x >= 0 && (y as usize) < g.h && (x as usize) < g.w {
                                    plane[y as usize * g.w + x as usize]
                                } else {
                                    0.0
                                };
                        }
                    }
                }
            }
            rows.finish(r);
        }
    }
}

/// Adds the adjoint of [`im2col`]: `grad_input += col2im(cols)`.
pub(crate) fn col2im_add(g: &Geometry, cols: &[f32], grad_input: &mut [f32]) {
    debug_assert_eq!(grad_input.len(), g.in_len());
    debug_assert_eq!(cols.len(), g.out_pixels() * g.patch_len());
    with_kernel_size!(g.kernel, col2im_add_k(g, cols, grad_input));
}

/// [`col2im_add`] for kernel size `K` (`0`: `g.kernel`).
fn col2im_add_k<const K: usize>(g: &Geometry, cols: &[f32], grad_input: &mut [f32]) {
    let k = if K == 0 { g.kernel } else { K };
    let pl = g.patch_len();
    for oy in 0..g.out_h {
        for ox in 0..g.out_w {
            let row = &cols[(oy * g.out_w + ox) * pl..][..pl];
            let y0 = (oy * g.stride) as isize - g.padding as isize;
            let x0 = (ox * g.stride) as isize - g.padding as isize;
            let interior = y0 >= 0 && x0 >= 0 && y0 as usize + k <= g.h && x0 as usize + k <= g.w;
            for ch in 0..g.c {
                let plane = &mut grad_input[ch * g.h * g.w..][..g.h * g.w];
                let src = &row[ch * k * k..][..k * k];
                if interior {
                    let (y0, x0) = (y0 as usize, x0 as usize);
                    for ky in 0..k {
                        let dst = &mut plane[(y0 + ky) * g.w + x0..][..k];
                        for (d, s) in dst.iter_mut().zip(&src[ky * k..][..k]) {
                            *d += s;
                        }
                    }
                    continue;
                }
                for ky in 0..k {
                    let y = y0 + ky as isize;
                    if y < 0 || y as usize >= g.h {
                        continue;
                    }
                    for kx in 0..k {
                        let x = x0 + kx as isize;
                        if x >= 0 && (x as usize) < g.w {
                            plane[y as usize * g.w + x as usize] += src[ky * k + kx];
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The transposed layout holds the same numbers as the row layout.
    #[test]
    fn im2col_t_is_the_transpose_of_im2col() {
        for &(c, h, w, k, s, p) in &[
            (2, 5, 6, 3, 1, 1),
            (3, 7, 7, 3, 2, 0),
            (1, 4, 4, 4, 1, 2),
            (3, 9, 8, 5, 3, 2),
            (2, 6, 6, 11, 4, 2),
        ] {
            let Some(g) = Geometry::new(c, h, w, k, s, p) else {
                continue;
            };
            let x: Vec<f32> = (0..g.in_len()).map(|i| i as f32 + 1.0).collect();
            let (rows, taps) = (g.out_pixels(), g.patch_len());
            let mut a = vec![f32::NAN; rows * taps];
            let mut b = vec![f32::NAN; rows * taps];
            im2col(&g, &x, &mut a);
            im2col_t(&g, &x, &mut b);
            for r in 0..rows {
                for t in 0..taps {
                    assert_eq!(
                        a[r * taps + t],
                        b[t * rows + r],
                        "{:?} pixel {r} tap {t}",
                        (c, h, w, k, s, p)
                    );
                }
            }
        }
    }

    /// ⟨im2col(x), c⟩ = ⟨x, col2im(c)⟩ for any x and c: the two kernels are adjoint.
    #[test]
    fn col2im_is_the_adjoint_of_im2col() {
        for &(c, h, w, k, s, p) in &[(2, 5, 6, 3, 1, 1), (3, 7, 7, 3, 2, 0), (1, 4, 4, 4, 1, 2)] {
            let g = Geometry::new(c, h, w, k, s, p).unwrap();
            let x: Vec<f32> = (0..g.in_len())
                .map(|i| ((i * 37) % 17) as f32 - 8.0)
                .collect();
            let r: Vec<f32> = (0..g.out_pixels() * g.patch_len())
                .map(|i| ((i * 13) % 7) as f32 - 3.0)
                .collect();
            let mut cols = vec![0.0; r.len()];
            im2col(&g, &x, &mut cols);
            let mut back = vec![0.0; x.len()];
            col2im_add(&g, &r, &mut back);
            let lhs: f32 = cols.iter().zip(&r).map(|(a, b)| a * b).sum();
            let rhs: f32 = x.iter().zip(&back).map(|(a, b)| a * b).sum();
            assert_eq!(lhs, rhs);
        }
    }
}
