//! 2-D convolution through im2col, one sample per parallel task.

use ndarray::{ArrayView2, ArrayViewMut2};

use super::{
    Layer, Param, ParamMut, ParamRef, State, StateMut, check_direction, check_grad, check_shape,
    explicit_tangent,
};
use crate::error::{Error, Result};
use crate::init::{Rng, default_bound, uniform};
use crate::kernels::im2col::{Geometry, col2im_add, im2col_rows, im2col_t_rows};
use crate::kernels::packed::{Operand, PackRows, Prepacked, gemm_packed};
use crate::parallel::{
    KeptBuffer, PAR_MIN_WORK, Scratch, par_chunks_mut, par_chunks_scratch, par_zip_chunks_scratch,
    reserve_scratch,
};
use crate::tensor::{Dual, Tensor};

/// Samples whose weight gradients one parallel task sums before the ordered reduction.
const SAMPLES_PER_TASK: usize = 4;

/// Configuration of a [`Conv2d`] layer.
///
/// ```
/// use fdfa::layers::{Conv2dConfig, Layer};
/// let mut rng = fdfa::init::rng(0);
/// let conv = Conv2dConfig::new(1, 15, 5).with_name("conv_1").init(&mut rng)?;
/// assert_eq!(conv.output_shape(&[8, 1, 28, 28])?, vec![8, 15, 24, 24]);
/// let strided = Conv2dConfig::new(3, 64, 11).with_stride(4).with_padding(2).init(&mut rng)?;
/// assert_eq!(strided.output_shape(&[1, 3, 224, 224])?, vec![1, 64, 55, 55]);
/// # Ok::<(), fdfa::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Conv2dConfig {
    /// Input channels.
    pub c_in: usize,
    /// Output channels.
    pub c_out: usize,
    /// Square kernel size.
    pub kernel: usize,
    /// Stride (default 1).
    pub stride: usize,
    /// Zero padding on every side (default 0).
    pub padding: usize,
    /// Whether the layer has a bias (default `true`).
    pub bias: bool,
    /// The layer's name (default: none, and [`Model::new`](crate::model::Model::new) names
    /// the layer by its position).
    pub name: String,
}

impl Conv2dConfig {
    /// A `kernel x kernel` convolution from `c_in` to `c_out` channels, stride 1, no padding.
    pub fn new(c_in: usize, c_out: usize, kernel: usize) -> Self {
        Self {
            c_in,
            c_out,
            kernel,
            stride: 1,
            padding: 0,
            bias: true,
            name: String::new(),
        }
    }

    /// Sets the stride.
    #[must_use]
    pub fn with_stride(mut self, stride: usize) -> Self {
        self.stride = stride;
        self
    }

    /// Sets the zero padding.
    #[must_use]
    pub fn with_padding(mut self, padding: usize) -> Self {
        self.padding = padding;
        self
    }

    /// Sets whether the layer has a bias.
    #[must_use]
    pub fn with_bias(mut self, bias: bool) -> Self {
        self.bias = bias;
        self
    }

    /// Sets the layer's name.
    #[must_use]
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Builds the layer with PyTorch's default initialisation (uniform in
    /// `+-1/sqrt(c_in * kernel * kernel)`).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when a size or the stride is zero.
    pub fn init(&self, rng: &mut Rng) -> Result<Conv2d> {
        for (field, v) in [
            ("c_in", self.c_in),
            ("c_out", self.c_out),
            ("kernel", self.kernel),
            ("stride", self.stride),
        ] {
            if v == 0 {
                let label = if self.name.is_empty() {
                    "Conv2d"
                } else {
                    &self.name
                };
                return Err(Error::config(label, field, "must be positive"));
            }
        }
        let fan_in = self.c_in * self.kernel * self.kernel;
        let bound = default_bound(fan_in);
        let weight = Param::new(uniform(
            &[self.c_out, self.c_in, self.kernel, self.kernel],
            bound,
            rng,
        ));
        let bias = self
            .bias
            .then(|| Param::new(uniform(&[self.c_out], bound, rng)));
        Ok(Conv2d {
            config: self.clone(),
            weight,
            bias,
            partials: Vec::new(),
            jvp: KeptBuffer::default(),
            packed_weight: KeptBuffer::default(),
        })
    }
}

/// 2-D convolution on `[N, c_in, h, w]` inputs.
///
/// ```
/// use fdfa::layers::Conv2dConfig;
/// use fdfa::Tensor;
/// let mut conv = Conv2dConfig::new(1, 2, 3).init(&mut fdfa::init::rng(0))?;
/// assert_eq!(conv.weight().shape(), &[2, 1, 3, 3]);
/// assert!(conv.set_weight(&Tensor::zeros(&[2, 1, 3, 4])).is_err());
/// # Ok::<(), fdfa::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Conv2d {
    config: Conv2dConfig,
    /// `[c_out, c_in, kernel, kernel]`.
    weight: Param,
    /// `[c_out]`, if the layer has a bias.
    bias: Option<Param>,
    /// Per-task partial weight gradients, reduced in task order.
    partials: Vec<f32>,
    /// The parameter direction's JVP before it is added to every tangent block.
    jvp: KeptBuffer,
    /// The weight packed once per call for the products of every sample.
    packed_weight: KeptBuffer<Prepacked>,
}

impl Conv2d {
    /// The layer's configuration.
    pub fn config(&self) -> &Conv2dConfig {
        &self.config
    }

    fn geometry(&self, shape: &[usize]) -> Result<Geometry> {
        let c = &self.config;
        check_shape(&c.name, shape, &[None, Some(c.c_in), None, None])?;
        Geometry::new(c.c_in, shape[2], shape[3], c.kernel, c.stride, c.padding).ok_or_else(|| {
            Error::shape(
                &c.name,
                format!(
                    "[N, {}, h, w] with h, w + 2 * {} >= {}",
                    c.c_in, c.padding, c.kernel
                ),
                shape,
            )
        })
    }

    /// The weight, `[c_out, c_in, kernel, kernel]`.
    pub fn weight(&self) -> &Tensor {
        &self.weight.value
    }

    /// The bias, `[c_out]`, if the layer has one.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref().map(|b| &b.value)
    }

    /// Sets the weight.
    ///
    /// # Errors
    /// [`Error::Shape`] for a shape other than `[c_out, c_in, kernel, kernel]`.
    pub fn set_weight(&mut self, weight: &Tensor) -> Result<()> {
        let want = format!("{:?}", self.weight.value.shape());
        ParamMut::new(&mut self.weight)
            .set_value(weight)
            .map_err(|_| {
                Error::shape(
                    &format!("{}.weight", self.config.name),
                    want,
                    weight.shape(),
                )
            })
    }

    /// Sets the bias.
    ///
    /// # Errors
    /// [`Error::Shape`] for a shape other than `[c_out]`; [`Error::InvalidConfig`] when the
    /// layer has no bias.
    pub fn set_bias(&mut self, bias: &Tensor) -> Result<()> {
        let c = &self.config;
        let Some(b) = &mut self.bias else {
            return Err(Error::config(&c.name, "bias", "the layer has no bias"));
        };
        ParamMut::new(b).set_value(bias).map_err(|_| {
            Error::shape(
                &format!("{}.bias", c.name),
                format!("[{}]", c.c_out),
                bias.shape(),
            )
        })
    }

    fn weight_matrix(w: &[f32], c_out: usize) -> ArrayView2<'_, f32> {
        let len = w.len() / c_out;
        ArrayView2::from_shape((c_out, len), w)
            .unwrap_or_else(|_| unreachable!("weight is [c_out, c_in, k, k]"))
    }

    fn bias_data(&self) -> Option<&[f32]> {
        self.bias.as_ref().map(|b| b.value.data())
    }

    /// `y <- W · im2col(x)ᵀ + b` for every sample; `y` is `[n, c_out, out_h, out_w]`.
    fn convolve(
        &self,
        g: &Geometry,
        x: &Tensor,
        weight: &[f32],
        bias: Option<&[f32]>,
        y: &mut Tensor,
    ) {
        let c_out = self.config.c_out;
        let (p, pl) = (g.out_pixels(), g.patch_len());
        let w = Self::weight_matrix(weight, c_out);
        let work = y.len() * pl;
        if work >= PAR_MIN_WORK {
            reserve_scratch(p * pl, pl);
        }
        self.packed_weight.with(|packed| {
            packed.pack_a(w);
            let w = Operand::Packed(packed);
            // The scratch `a` holds the sample's im2col matrix.
            // The sample's im2col matrix goes straight into the packed order, through
            // scratch `a` one row at a time.
            par_chunks_scratch(y.data_mut(), c_out * p, work, |s, i, out| {
                let Scratch { a, pack, cols, .. } = s;
                im2col_t_rows(g, x.row(i), &mut PackRows::new(cols, a, pl, p));
                let beta = match bias {
                    Some(b) => {
                        for (row, &bv) in out.chunks_mut(p).zip(b) {
                            row.fill(bv);
                        }
                        1.0
                    }
                    None => 0.0,
                };
                let out =
                    ArrayViewMut2::from_shape((c_out, p), out).unwrap_or_else(|_| unreachable!());
                gemm_packed(w, Operand::Packed(cols), beta, out, pack);
            });
        });
    }
}

/// The sum of `x` with 16 running sums (added pairwise at the end, a fixed order), so that
/// the additions pipeline and vectorize.
#[multiversion::multiversion(targets = "simd")]
fn plane_sum(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    let chunks = x.chunks_exact(16);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += v;
        }
    }
    for (a, v) in acc.iter_mut().zip(tail) {
        *a += v;
    }
    let mut width = 16;
    while width > 1 {
        width /= 2;
        for j in 0..width {
            acc[j] += acc[j + width];
        }
    }
    acc[0]
}

impl Layer for Conv2d {
    fn name(&self) -> &str {
        &self.config.name
    }

    fn set_name(&mut self, name: &str) {
        self.config.name = name.to_string();
    }

    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        let g = self.geometry(input)?;
        Ok(vec![input[0], self.config.c_out, g.out_h, g.out_w])
    }

    fn forward(&mut self, input: &Dual, output: &mut Dual) -> Result<()> {
        let x = input.primal();
        let g = self.geometry(x.shape())?;
        let n = x.batch();
        let c_out = self.config.c_out;
        output.resize(&[n, c_out, g.out_h, g.out_w], input.directions());
        let (y, dy) = output.parts_mut();
        let w = self.weight.value.data();
        self.convolve(&g, x, w, self.bias_data(), y);
        // The convolution is linear in its input: its JVP is the same convolution, bias-free.
        if let (Some(dy), Some(dx)) = (dy, input.tangent()) {
            self.convolve(&g, dx, w, None, dy);
        }
        Ok(())
    }

    fn infer(&self, input: &Tensor, output: &mut Tensor) -> Result<()> {
        let g = self.geometry(input.shape())?;
        output.resize(&[input.batch(), self.config.c_out, g.out_h, g.out_w]);
        self.convolve(
            &g,
            input,
            self.weight.value.data(),
            self.bias_data(),
            output,
        );
        Ok(())
    }

    fn backward(
        &mut self,
        input: &Tensor,
        output: &Tensor,
        grad_output: &Tensor,
        grad_input: Option<&mut Tensor>,
    ) -> Result<()> {
        check_grad(&self.config.name, output, grad_output)?;
        let g = self.geometry(input.shape())?;
        let n = input.batch();
        let c_out = self.config.c_out;
        let (p, pl) = (g.out_pixels(), g.patch_len());
        let tasks = n.div_ceil(SAMPLES_PER_TASK);
        self.partials.resize(tasks * c_out * pl, 0.0);
        let w = Self::weight_matrix(self.weight.value.data(), c_out);
        let work = n * p * pl * c_out * 2;
        if work >= PAR_MIN_WORK {
            reserve_scratch(p * pl, pl);
        }
        let partials = &mut self.partials;
        self.packed_weight.with(|packed| {
            if grad_input.is_some() {
                packed.pack_b(w);
            }
            let w_packed = Operand::Packed(packed);
            // Each task sums the weight gradient of its samples (recomputing their im2col, which
            // is cheap next to the product) and, when asked, writes their input gradient.
            // Scratch `cols` holds a sample's im2col matrix, packed through `a` one row at a
            // time; `b` holds its gradient.
            let task = |s: &mut Scratch, t: usize, partial: &mut [f32], gx: Option<&mut [f32]>| {
                let mut partial = ArrayViewMut2::from_shape((c_out, pl), partial)
                    .unwrap_or_else(|_| unreachable!());
                partial.fill(0.0);
                let first = t * SAMPLES_PER_TASK;
                let mut gx = gx;
                for (j, i) in (first..(first + SAMPLES_PER_TASK).min(n)).enumerate() {
                    let Scratch { a, cols, pack, .. } = &mut *s;
                    im2col_rows(&g, input.row(i), &mut PackRows::new(cols, a, p, pl));
                    let gi = ArrayView2::from_shape((c_out, p), grad_output.row(i))
                        .unwrap_or_else(|_| unreachable!());
                    gemm_packed(
                        Operand::View(gi),
                        Operand::Packed(cols),
                        1.0,
                        partial.view_mut(),
                        pack,
                    );
                    if let Some(gx) = gx.as_deref_mut() {
                        s.b.resize(p * pl, 0.0);
                        let dcols = ArrayViewMut2::from_shape((p, pl), &mut s.b[..])
                            .unwrap_or_else(|_| unreachable!());
                        gemm_packed(Operand::View(gi.t()), w_packed, 0.0, dcols, &mut s.pack);
                        let gxi = &mut gx[j * g.in_len()..(j + 1) * g.in_len()];
                        gxi.fill(0.0);
                        col2im_add(&g, &s.b, gxi);
                    }
                }
            };
            match grad_input {
                Some(gx) => {
                    gx.resize(input.shape());
                    par_zip_chunks_scratch(
                        partials,
                        c_out * pl,
                        gx.data_mut(),
                        SAMPLES_PER_TASK * g.in_len(),
                        work,
                        |s, t, partial, gx| task(s, t, partial, Some(gx)),
                    );
                }
                None => par_chunks_scratch(partials, c_out * pl, work, |s, t, partial| {
                    task(s, t, partial, None)
                }),
            }
        });
        let wg = &mut self.weight.grad;
        wg.resize(self.weight.value.shape());
        wg.fill(0.0);
        for partial in self.partials.chunks(c_out * pl) {
            wg.data_mut()
                .iter_mut()
                .zip(partial)
                .for_each(|(a, b)| *a += b);
        }
        if let Some(bias) = &mut self.bias {
            bias.grad.resize(&[c_out]);
            // One task per channel, samples added in order: a single accumulator over a whole
            // gradient would wait on every addition in turn.
            let g = grad_output.data();
            par_chunks_mut(bias.grad.data_mut(), 1, 1, n * c_out * p, |ch, b| {
                b[0] = 0.0;
                for i in 0..n {
                    b[0] += plane_sum(&g[(i * c_out + ch) * p..][..p]);
                }
            });
        }
        Ok(())
    }

    fn visit_state(&self, f: &mut dyn FnMut(&str, State<'_>)) {
        f("weight", State::Param(ParamRef::new(&self.weight)));
        if let Some(b) = &self.bias {
            f("bias", State::Param(ParamRef::new(b)));
        }
    }

    fn visit_state_mut(&mut self, f: &mut dyn FnMut(&str, StateMut<'_>)) {
        f("weight", StateMut::Param(ParamMut::new(&mut self.weight)));
        if let Some(b) = &mut self.bias {
            f("bias", StateMut::Param(ParamMut::new(b)));
        }
    }

    fn add_param_jvp(&self, input: &Tensor, v: &[&[f32]], output: &mut Dual) -> Result<()> {
        let mut lens = vec![self.weight.value.len()];
        lens.extend(self.bias.as_ref().map(|b| b.value.len()));
        check_direction(&self.config.name, v, &lens)?;
        let g = self.geometry(input.shape())?;
        // Linear in (W, b): the JVP along (dW, db) is the convolution with (dW, db).
        self.jvp.with(|extra| {
            extra.resize(&[input.batch(), self.config.c_out, g.out_h, g.out_w]);
            self.convolve(&g, input, v[0], v.get(1).copied(), extra);
            let (dy, block) = explicit_tangent(output);
            for t in dy.data_mut().chunks_mut(block) {
                t.iter_mut().zip(extra.data()).for_each(|(a, b)| *a += b);
            }
        });
        Ok(())
    }

    fn flops_per_sample(&self, input: &[usize]) -> usize {
        self.geometry(input)
            .map(|g| g.out_pixels() * g.patch_len() * self.config.c_out)
            .unwrap_or(0)
    }
}
