//! Max pooling and adaptive average pooling over `[N, C, H, W]`.

use super::{Layer, check_grad, check_shape};
use crate::error::{Error, Result};
use crate::parallel::{par_chunks_mut, par_zip_chunks_scratch};
use crate::tensor::{Dual, Tensor};

/// Max pooling with a square window, no padding, floor rounding (PyTorch's defaults).
///
/// The JVP and the backward route the signal through the first maximum of each window, as
/// PyTorch does.
///
/// ```
/// use fdfa::layers::{Layer, MaxPool2d};
/// let pool = MaxPool2d::new("pool", 3, 2)?;
/// assert_eq!(pool.output_shape(&[1, 64, 55, 55])?, vec![1, 64, 27, 27]);
/// assert!(MaxPool2d::new("pool", 0, 2).is_err());
/// # Ok::<(), fdfa::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct MaxPool2d {
    name: String,
    kernel: usize,
    stride: usize,
    /// For each output of the last training forward, the flat index of its maximum within
    /// the sample.
    argmax: Vec<u32>,
}

impl MaxPool2d {
    /// A `kernel x kernel` max pool with the given stride.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when `kernel` or `stride` is zero.
    pub fn new(name: impl Into<String>, kernel: usize, stride: usize) -> Result<Self> {
        let name = name.into();
        if kernel == 0 {
            return Err(Error::config(&name, "kernel", "must be positive"));
        }
        if stride == 0 {
            return Err(Error::config(&name, "stride", "must be positive"));
        }
        Ok(Self {
            name,
            kernel,
            stride,
            argmax: Vec::new(),
        })
    }

    fn dims(&self, shape: &[usize]) -> Result<(usize, usize, usize, usize, usize)> {
        check_shape(&self.name, shape, &[None, None, None, None])?;
        let (c, h, w) = (shape[1], shape[2], shape[3]);
        if h < self.kernel || w < self.kernel {
            return Err(Error::shape(
                &self.name,
                format!("[N, C, h, w] with h, w >= {}", self.kernel),
                shape,
            ));
        }
        let oh = (h - self.kernel) / self.stride + 1;
        let ow = (w - self.kernel) / self.stride + 1;
        Ok((c, h, w, oh, ow))
    }

    /// Writes the window maxima of one sample and, if asked, their flat indices. The first
    /// maximum wins, and a NaN wins over any number, as in PyTorch.
    fn pool_sample(
        (kernel, stride): (usize, usize),
        (c, h, w, oh, ow): (usize, usize, usize, usize, usize),
        x: &[f32],
        y: &mut [f32],
        mut arg: Option<&mut [u32]>,
    ) {
        for ch in 0..c {
            let plane = &x[ch * h * w..][..h * w];
            let ys = &mut y[ch * oh * ow..][..oh * ow];
            let args = arg
                .as_deref_mut()
                .map(|a| &mut a[ch * oh * ow..][..oh * ow]);
            let geometry = (w, stride, oh, ow);
            let base = (ch * h * w) as u32;
            // Constant window sizes let the compiler unroll the window and keep the running
            // maximum in registers.
            match kernel {
                2 => pool_plane::<2>(plane, geometry, ys, args, base),
                3 => pool_plane::<3>(plane, geometry, ys, args, base),
                _ => pool_plane_any(plane, kernel, geometry, ys, args, base),
            }
        }
    }
}

/// Whether `v` replaces the running maximum `best`: larger, or NaN over a number. Non
/// short-circuit operators keep it free of branches, which mispredict on activations.
#[inline(always)]
fn beats(v: f32, best: f32) -> bool {
    (v > best) | (v.is_nan() & !best.is_nan())
}

/// Max pooling of one plane with a `K x K` window; `arg` gets `base` plus the flat index of
/// each maximum.
#[multiversion::multiversion(targets = "simd")]
fn pool_plane<const K: usize>(
    plane: &[f32],
    (w, stride, oh, ow): (usize, usize, usize, usize),
    y: &mut [f32],
    mut arg: Option<&mut [u32]>,
    base: u32,
) {
    for oy in 0..oh {
        let top = oy * stride * w;
        // The K input rows under this output row, cut to the columns the windows read.
        let span = (ow - 1) * stride + K;
        let rows: [&[f32]; K] = std::array::from_fn(|ky| &plane[top + ky * w..][..span]);
        let ys = &mut y[oy * ow..][..ow];
        for (ox, o) in ys.iter_mut().enumerate() {
            let left = ox * stride;
            let (mut best, mut at) = (rows[0][left], 0);
            for (ky, row) in rows.iter().enumerate() {
                for (kx, &v) in row[left..left + K].iter().enumerate() {
                    let take = beats(v, best);
                    best = if take { v } else { best };
                    at = if take { ky * w + kx } else { at };
                }
            }
            *o = best;
            if let Some(arg) = arg.as_deref_mut() {
                arg[oy * ow + ox] = base + (top + left + at) as u32;
            }
        }
    }
}

/// [`pool_plane`] for any window size. It is a separate body because a run-time size rules
/// out `pool_plane`'s array of row slices, which is what lets the compiler drop its bounds
/// checks, so one body with a run-time size for both would slow the usual sizes down.
fn pool_plane_any(
    plane: &[f32],
    kernel: usize,
    (w, stride, oh, ow): (usize, usize, usize, usize),
    y: &mut [f32],
    mut arg: Option<&mut [u32]>,
    base: u32,
) {
    for oy in 0..oh {
        for ox in 0..ow {
            let corner = oy * stride * w + ox * stride;
            let (mut best, mut at) = (plane[corner], corner);
            for ky in 0..kernel {
                let row = corner + ky * w;
                for (kx, &v) in plane[row..row + kernel].iter().enumerate() {
                    if beats(v, best) {
                        best = v;
                        at = row + kx;
                    }
                }
            }
            let o = oy * ow + ox;
            y[o] = best;
            if let Some(arg) = arg.as_deref_mut() {
                arg[o] = base + at as u32;
            }
        }
    }
}

impl Layer for MaxPool2d {
    fn name(&self) -> &str {
        &self.name
    }

    fn set_name(&mut self, name: &str) {
        self.name = name.to_string();
    }

    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        let (c, _, _, oh, ow) = self.dims(input)?;
        Ok(vec![input[0], c, oh, ow])
    }

    fn forward(&mut self, input: &Dual, output: &mut Dual) -> Result<()> {
        let x = input.primal();
        let d = self.dims(x.shape())?;
        let (n, out_len) = (x.batch(), d.0 * d.3 * d.4);
        output.resize(&[n, d.0, d.3, d.4], input.directions());
        self.argmax.resize(n * out_len, 0);
        let ks = (self.kernel, self.stride);
        let (y, dy) = output.parts_mut();
        let work = x.len();
        par_zip_chunks_scratch(
            y.data_mut(),
            out_len,
            &mut self.argmax,
            out_len,
            work,
            |_, i, ys, arg| {
                Self::pool_sample(ks, d, x.row(i), ys, Some(arg));
            },
        );
        if let (Some(dy), Some(dx)) = (dy, input.tangent()) {
            let argmax = &self.argmax;
            let work = dy.len() * 4;
            par_chunks_mut(dy.data_mut(), out_len, 1, work, |j, dys| {
                let (dxs, arg) = (dx.row(j), &argmax[(j % n) * out_len..][..out_len]);
                dys.iter_mut()
                    .zip(arg)
                    .for_each(|(o, &a)| *o = dxs[a as usize]);
            });
        }
        Ok(())
    }

    fn infer(&self, input: &Tensor, output: &mut Tensor) -> Result<()> {
        let d = self.dims(input.shape())?;
        let out_len = d.0 * d.3 * d.4;
        output.resize(&[input.batch(), d.0, d.3, d.4]);
        par_chunks_mut(output.data_mut(), out_len, 1, input.len(), |i, ys| {
            Self::pool_sample((self.kernel, self.stride), d, input.row(i), ys, None);
        });
        Ok(())
    }

    fn backward(
        &mut self,
        input: &Tensor,
        output: &Tensor,
        grad_output: &Tensor,
        grad_input: Option<&mut Tensor>,
    ) -> Result<()> {
        check_grad(&self.name, output, grad_output)?;
        if let Some(gx) = grad_input {
            gx.resize(input.shape());
            let (in_len, out_len) = (input.row_len(), output.row_len());
            let argmax = &self.argmax;
            // Samples are independent, and within one the scatter keeps its order.
            par_chunks_mut(gx.data_mut(), in_len, 1, input.len(), |i, gxs| {
                gxs.fill(0.0);
                let arg = &argmax[i * out_len..][..out_len];
                for (&a, &g) in arg.iter().zip(grad_output.row(i)) {
                    gxs[a as usize] += g;
                }
            });
        }
        Ok(())
    }
}

/// Adaptive average pooling to a fixed `out_h x out_w` grid, with PyTorch's windows
/// (`start = floor(i h / out_h)`, `end = ceil((i + 1) h / out_h)`).
///
/// ```
/// use fdfa::layers::{AdaptiveAvgPool2d, Layer};
/// let pool = AdaptiveAvgPool2d::new("avgpool", 6, 6)?;
/// assert_eq!(pool.output_shape(&[2, 256, 6, 6])?, vec![2, 256, 6, 6]);
/// assert_eq!(pool.output_shape(&[2, 256, 13, 13])?, vec![2, 256, 6, 6]);
/// # Ok::<(), fdfa::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct AdaptiveAvgPool2d {
    name: String,
    out_h: usize,
    out_w: usize,
}

/// The window `[start, end)` of output `i` of `out` over an axis of length `len`.
fn window(i: usize, len: usize, out: usize) -> (usize, usize) {
    ((i * len) / out, ((i + 1) * len).div_ceil(out))
}

impl AdaptiveAvgPool2d {
    /// Pools every channel to `out_h x out_w`.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when a size is zero.
    pub fn new(name: impl Into<String>, out_h: usize, out_w: usize) -> Result<Self> {
        let name = name.into();
        if out_h == 0 || out_w == 0 {
            return Err(Error::config(&name, "output_size", "must be positive"));
        }
        Ok(Self { name, out_h, out_w })
    }

    fn dims(&self, shape: &[usize]) -> Result<(usize, usize, usize)> {
        check_shape(&self.name, shape, &[None, None, None, None])?;
        if shape[2] == 0 || shape[3] == 0 {
            return Err(Error::shape(
                &self.name,
                "[N, C, h, w] with h, w > 0",
                shape,
            ));
        }
        Ok((shape[1], shape[2], shape[3]))
    }

    /// Applies the pooling (a linear map) to every sample of `x` into `y`.
    fn pool(&self, (c, h, w): (usize, usize, usize), x: &Tensor, y: &mut Tensor) {
        let out_len = c * self.out_h * self.out_w;
        par_chunks_mut(y.data_mut(), out_len, 1, x.len(), |i, ys| {
            let xs = x.row(i);
            for ch in 0..c {
                for oy in 0..self.out_h {
                    let (y0, y1) = window(oy, h, self.out_h);
                    for ox in 0..self.out_w {
                        let (x0, x1) = window(ox, w, self.out_w);
                        let mut sum = 0.0;
                        for yy in y0..y1 {
                            sum += xs[(ch * h + yy) * w + x0..(ch * h + yy) * w + x1]
                                .iter()
                                .sum::<f32>();
                        }
                        ys[(ch * self.out_h + oy) * self.out_w + ox] =
                            sum / ((y1 - y0) * (x1 - x0)) as f32;
                    }
                }
            }
        });
    }
}

impl Layer for AdaptiveAvgPool2d {
    fn name(&self) -> &str {
        &self.name
    }

    fn set_name(&mut self, name: &str) {
        self.name = name.to_string();
    }

    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        let (c, _, _) = self.dims(input)?;
        Ok(vec![input[0], c, self.out_h, self.out_w])
    }

    fn forward(&mut self, input: &Dual, output: &mut Dual) -> Result<()> {
        let x = input.primal();
        let d = self.dims(x.shape())?;
        output.resize(
            &[x.batch(), d.0, self.out_h, self.out_w],
            input.directions(),
        );
        let (y, dy) = output.parts_mut();
        self.pool(d, x, y);
        if let (Some(dy), Some(dx)) = (dy, input.tangent()) {
            self.pool(d, dx, dy);
        }
        Ok(())
    }

    fn infer(&self, input: &Tensor, output: &mut Tensor) -> Result<()> {
        let d = self.dims(input.shape())?;
        output.resize(&[input.batch(), d.0, self.out_h, self.out_w]);
        self.pool(d, input, output);
        Ok(())
    }

    fn backward(
        &mut self,
        input: &Tensor,
        output: &Tensor,
        grad_output: &Tensor,
        grad_input: Option<&mut Tensor>,
    ) -> Result<()> {
        check_grad(&self.name, output, grad_output)?;
        let (c, h, w) = self.dims(input.shape())?;
        if let Some(gx) = grad_input {
            gx.resize(input.shape());
            let (out_h, out_w) = (self.out_h, self.out_w);
            par_chunks_mut(gx.data_mut(), c * h * w, 1, input.len(), |i, gxs| {
                gxs.fill(0.0);
                let gs = grad_output.row(i);
                for ch in 0..c {
                    for oy in 0..out_h {
                        let (y0, y1) = window(oy, h, out_h);
                        for ox in 0..out_w {
                            let (x0, x1) = window(ox, w, out_w);
                            let g =
                                gs[(ch * out_h + oy) * out_w + ox] / ((y1 - y0) * (x1 - x0)) as f32;
                            for yy in y0..y1 {
                                gxs[(ch * h + yy) * w + x0..(ch * h + yy) * w + x1]
                                    .iter_mut()
                                    .for_each(|v| *v += g);
                            }
                        }
                    }
                }
            });
        }
        Ok(())
    }
}
