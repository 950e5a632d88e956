//! Batch normalisation over `[N, F]` (BatchNorm1d) or `[N, C, H, W]` (BatchNorm2d) inputs.
//!
//! Both views share one core on a `[n, c, s]` layout (`s = 1` for 1-D, `h * w` for 2-D);
//! statistics are taken over `n * s` values per channel.

use super::{
    BufferMut, Layer, Param, ParamMut, ParamRef, State, StateMut, check_direction, check_grad,
    check_shape, explicit_tangent,
};
use crate::distributed::{BatchGroup, BatchNormSync};
use crate::error::{Error, Result};
use crate::parallel::{KeptBuffer, par_chunks_mut, par_zip_chunks_scratch};
use crate::tensor::{Dual, Tensor};

/// Configuration of a [`BatchNorm`] layer (PyTorch defaults: `eps = 1e-5`, `momentum = 0.1`,
/// weight 1, bias 0, running mean 0 and variance 1).
///
/// ```
/// use fdfa::layers::{BatchNormConfig, Layer};
/// let bn = BatchNormConfig::d2(15).with_name("bn_1").init()?;
/// assert_eq!(bn.output_shape(&[4, 15, 24, 24])?, vec![4, 15, 24, 24]);
/// assert!(bn.output_shape(&[4, 15]).is_err());
/// # Ok::<(), fdfa::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct BatchNormConfig {
    /// Features (1-D) or channels (2-D).
    pub features: usize,
    /// Whether the input is `[N, C, H, W]` (BatchNorm2d) rather than `[N, F]`.
    pub spatial: bool,
    /// Added to the variance for stability.
    pub eps: f32,
    /// Weight of the new batch statistics in the running averages.
    pub momentum: f32,
    /// The layer's name (default: none, and [`Model::new`](crate::model::Model::new) names
    /// the layer by its position).
    pub name: String,
}

impl BatchNormConfig {
    /// BatchNorm1d over `[N, features]`.
    pub fn d1(features: usize) -> Self {
        Self {
            features,
            spatial: false,
            eps: 1e-5,
            momentum: 0.1,
            name: String::new(),
        }
    }

    /// BatchNorm2d over `[N, channels, H, W]`.
    pub fn d2(channels: usize) -> Self {
        Self {
            spatial: true,
            ..Self::d1(channels)
        }
    }

    /// Sets the layer's name.
    #[must_use]
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Sets `eps`.
    #[must_use]
    pub fn with_eps(mut self, eps: f32) -> Self {
        self.eps = eps;
        self
    }

    /// Sets the momentum of the running statistics.
    #[must_use]
    pub fn with_momentum(mut self, momentum: f32) -> Self {
        self.momentum = momentum;
        self
    }

    /// Builds the layer.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for zero features, a non-positive `eps` or a momentum outside
    /// `[0, 1]`.
    pub fn init(&self) -> Result<BatchNorm> {
        let label = if self.name.is_empty() {
            "BatchNorm"
        } else {
            &self.name
        };
        if self.features == 0 {
            return Err(Error::config(label, "features", "must be positive"));
        }
        if self.eps.is_nan() || self.eps <= 0.0 {
            return Err(Error::config(label, "eps", "must be positive"));
        }
        if !(0.0..=1.0).contains(&self.momentum) {
            return Err(Error::config(label, "momentum", "must lie in [0, 1]"));
        }
        let f = self.features;
        Ok(BatchNorm {
            config: self.clone(),
            weight: Param::new(Tensor::from_vec(&[f], vec![1.0; f])?),
            bias: Param::new(Tensor::zeros(&[f])),
            running_mean: Tensor::zeros(&[f]),
            running_var: Tensor::from_vec(&[f], vec![1.0; f])?,
            num_batches_tracked: 0,
            normalized: Tensor::default(),
            inv_std: vec![0.0; f],
            mean: vec![0.0; f],
            acc: vec![0.0; 2 * f],
            scale: vec![0.0; f],
            jvp: KeptBuffer::default(),
            group: None,
        })
    }
}

/// Batch normalisation (training mode: batch statistics; inference: running statistics).
#[derive(Clone, Debug)]
pub struct BatchNorm {
    config: BatchNormConfig,
    /// Scale `gamma`, `[features]`.
    weight: Param,
    /// Shift `beta`, `[features]`.
    bias: Param,
    /// Running mean, `[features]`.
    running_mean: Tensor,
    /// Running (unbiased) variance, `[features]`.
    running_var: Tensor,
    /// Training batches seen.
    num_batches_tracked: u64,
    /// `x̂` of the last training forward, kept for backward.
    normalized: Tensor,
    /// `1 / sqrt(var + eps)` and the batch mean of the last training forward, in f64: the
    /// JVP and backward subtract nearly equal terms, and f32 would lose their digits.
    inv_std: Vec<f64>,
    mean: Vec<f64>,
    acc: Vec<f64>,
    /// `gamma / sqrt(var + eps)` per channel, for the JVP and backward maps.
    scale: Vec<f64>,
    /// The parameter direction's JVP before it is added to every tangent block.
    jvp: KeptBuffer,
    /// The ranks to sum statistics over, while training on a share of a batch with
    /// synchronised BatchNorm.
    group: Option<BatchGroup>,
}

/// `(n, c, s)` of a checked shape.
fn layout(shape: &[usize]) -> (usize, usize, usize) {
    (shape[0], shape[1], shape[2..].iter().product())
}

/// Features per parallel task of BatchNorm1d's per-feature sums.
const FEATURES_PER_TASK: usize = 128;
/// Rows per parallel task of BatchNorm1d's elementwise maps.
const ROWS_PER_TASK: usize = 8;

// The inner loops below are compiled for each vector width and picked at run time: f64
// arithmetic on f32 data is compute-bound, and AVX-512 runs it several times faster than
// the SSE2 baseline. Elementwise code and fixed-order sums give the same bits in every
// version.

/// `(sum f(a_i, b_i).0, sum f(a_i, b_i).1)` in f64 with four partial sums per component, so
/// the loop vectorizes; the order is fixed, so the result is too.
#[multiversion::multiversion(targets = "simd")]
fn pair_sums<F: Fn(f32, f32) -> (f64, f64)>(a: &[f32], b: &[f32], f: &F) -> (f64, f64) {
    let (mut s1, mut s2) = ([0.0f64; 4], [0.0f64; 4]);
    let (ca, cb) = (a.chunks_exact(4), b.chunks_exact(4));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (xa, xb) in ca.zip(cb) {
        for l in 0..4 {
            let (u, v) = f(xa[l], xb[l]);
            s1[l] += u;
            s2[l] += v;
        }
    }
    for (&x, &y) in ra.iter().zip(rb) {
        let (u, v) = f(x, y);
        s1[0] += u;
        s2[0] += v;
    }
    (
        (s1[0] + s1[1]) + (s1[2] + s1[3]),
        (s2[0] + s2[1]) + (s2[2] + s2[3]),
    )
}

/// Per-channel sums `(sum f(a), sum g(a, b))` over an `[n, c, s]` layout, in f64, into
/// `acc = [first c sums, second c sums]`.
fn channel_sums2(
    a: &[f32],
    b: &[f32],
    (n, c, s): (usize, usize, usize),
    acc: &mut [f64],
    f: impl Fn(f32, f32) -> (f64, f64) + Sync,
) {
    acc.fill(0.0);
    let (first, second) = acc.split_at_mut(c);
    if s == 1 {
        // BatchNorm1d: one task per block of features, running along each row so that the
        // loop vectorizes across features; rows are added in order.
        par_zip_chunks_scratch(
            first,
            FEATURES_PER_TASK,
            second,
            FEATURES_PER_TASK,
            n * c * 8,
            |_, t, s1, s2| {
                let start = t * FEATURES_PER_TASK;
                for (ra, rb) in a.chunks_exact(c).zip(b.chunks_exact(c)) {
                    let (ra, rb) = (&ra[start..start + s1.len()], &rb[start..start + s1.len()]);
                    add_row_sums(s1, s2, ra, rb, &f);
                }
            },
        );
        return;
    }
    // BatchNorm2d: one task per channel, samples added in order.
    par_zip_chunks_scratch(first, 1, second, 1, n * s * c, |_, ch, s1, s2| {
        for i in 0..n {
            let off = (i * c + ch) * s;
            let (u, v) = pair_sums(&a[off..off + s], &b[off..off + s], &f);
            s1[0] += u;
            s2[0] += v;
        }
    });
}

/// `s1[j] += f(a_j, b_j).0` and `s2[j] += f(a_j, b_j).1`.
#[multiversion::multiversion(targets = "simd")]
fn add_row_sums<F: Fn(f32, f32) -> (f64, f64)>(
    s1: &mut [f64],
    s2: &mut [f64],
    a: &[f32],
    b: &[f32],
    f: &F,
) {
    for ((s1, s2), (&x, &y)) in s1.iter_mut().zip(s2.iter_mut()).zip(a.iter().zip(b)) {
        let (u, v) = f(x, y);
        *s1 += u;
        *s2 += v;
    }
}

/// `acc[j] += (x_j - mean_j)^2`.
#[multiversion::multiversion(targets = "simd")]
fn add_centred_squares(acc: &mut [f64], x: &[f32], mean: &[f64]) {
    for ((a, &v), mu) in acc.iter_mut().zip(x).zip(mean) {
        *a += (v as f64 - mu) * (v as f64 - mu);
    }
}

/// `out_j = f(a_j, b_j, [coef_0[j], ...])`: one row of BatchNorm1d, `j` the feature.
///
/// The per-feature coefficients come in as slices cut to the row's length, so that the loop
/// has no bounds checks and vectorizes; a closure indexing them by feature did not.
#[multiversion::multiversion(targets = "simd")]
fn map_row<T: Copy, const K: usize, F: Fn(f32, f32, [T; K]) -> f32>(
    out: &mut [f32],
    a: &[f32],
    b: &[f32],
    coef: [&[T]; K],
    f: &F,
) {
    let n = out.len();
    let (a, b) = (&a[..n], &b[..n]);
    let coef = coef.map(|c| &c[..n]);
    for j in 0..n {
        out[j] = f(a[j], b[j], coef.map(|c| c[j]));
    }
}

/// `out_j = f(a_j, b_j, coef)`: one plane of BatchNorm2d, whose channel's coefficients are
/// constants.
#[multiversion::multiversion(targets = "simd")]
fn map_plane<T: Copy, const K: usize, F: Fn(f32, f32, [T; K]) -> f32>(
    out: &mut [f32],
    a: &[f32],
    b: &[f32],
    coef: [T; K],
    f: &F,
) {
    for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
        *o = f(x, y, coef);
    }
}

/// `scale = gamma / sqrt(var + eps)` from the current `gamma` and the last batch's variance.
fn update_scale(scale: &mut [f64], gamma: &[f32], inv_std: &[f64]) {
    for ((s, &g), &inv) in scale.iter_mut().zip(gamma).zip(inv_std) {
        *s = g as f64 * inv;
    }
}

/// Per-channel sums of `(x - mean)^2` over an `[n, c, s]` layout, in f64.
fn centred_squares(x: &[f32], dims: (usize, usize, usize), mean: &[f64], acc: &mut [f64]) {
    let (n, c, s) = dims;
    if s == 1 {
        par_chunks_mut(&mut acc[..c], FEATURES_PER_TASK, 1, n * c * 8, |t, acc| {
            let start = t * FEATURES_PER_TASK;
            let mean = &mean[start..start + acc.len()];
            acc.fill(0.0);
            for row in x.chunks_exact(c) {
                add_centred_squares(acc, &row[start..start + mean.len()], mean);
            }
        });
        return;
    }
    par_chunks_mut(&mut acc[..c], 1, 1, n * s * c, |ch, a| {
        let mu = mean[ch];
        a[0] = 0.0;
        for i in 0..n {
            let off = (i * c + ch) * s;
            let seg = &x[off..off + s];
            a[0] += pair_sums(seg, seg, &|v, _| ((v as f64 - mu) * (v as f64 - mu), 0.0)).0;
        }
    });
}

/// Applies `out = f(x, y, [coef_0[ch], ...])` elementwise over an `[n, c, s]` layout, `ch`
/// the channel of the element.
fn channel_map<T: Copy + Send + Sync, const K: usize>(
    out: &mut [f32],
    a: &[f32],
    b: &[f32],
    (n, c, s): (usize, usize, usize),
    coef: [&[T]; K],
    f: impl Fn(f32, f32, [T; K]) -> f32 + Sync,
) {
    if s == 1 {
        par_chunks_mut(out, c, ROWS_PER_TASK, n * c * 8, |t, rows| {
            for (r, ro) in rows.chunks_exact_mut(c).enumerate() {
                let i = t * ROWS_PER_TASK + r;
                map_row(ro, &a[i * c..(i + 1) * c], &b[i * c..(i + 1) * c], coef, &f);
            }
        });
        return;
    }
    par_chunks_mut(out, c * s, 1, n * c * s, |i, sample| {
        for (ch, plane) in sample.chunks_mut(s).enumerate() {
            let off = (i * c + ch) * s;
            let k = coef.map(|v| v[ch]);
            map_plane(plane, &a[off..off + s], &b[off..off + s], k, &f);
        }
    });
}

impl BatchNorm {
    /// The scale `gamma`, `[features]`.
    pub fn weight(&self) -> &Tensor {
        &self.weight.value
    }

    /// The shift `beta`, `[features]`.
    pub fn bias(&self) -> &Tensor {
        &self.bias.value
    }

    /// The running mean, `[features]`.
    pub fn running_mean(&self) -> &Tensor {
        &self.running_mean
    }

    /// The running (unbiased) variance, `[features]`.
    pub fn running_var(&self) -> &Tensor {
        &self.running_var
    }

    /// Training batches seen.
    pub fn num_batches_tracked(&self) -> u64 {
        self.num_batches_tracked
    }

    /// Sets one of the per-feature tensors (`weight`, `bias`, `running_mean`,
    /// `running_var`) by its `state_dict` suffix.
    ///
    /// ```
    /// use fdfa::layers::BatchNormConfig;
    /// use fdfa::Tensor;
    /// let mut bn = BatchNormConfig::d1(3).init()?;
    /// bn.set("weight", &Tensor::from_vec(&[3], vec![0.5, 1.0, 2.0])?)?;
    /// assert_eq!(bn.weight().data(), &[0.5, 1.0, 2.0]);
    /// assert!(bn.set("running_var", &Tensor::zeros(&[4])).is_err());
    /// # Ok::<(), fdfa::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Shape`] for a shape other than `[features]`; [`Error::InvalidConfig`] for
    /// another name.
    pub fn set(&mut self, name: &str, value: &Tensor) -> Result<()> {
        let f = self.config.features;
        let target = match name {
            "weight" => &mut self.weight.value,
            "bias" => &mut self.bias.value,
            "running_mean" => &mut self.running_mean,
            "running_var" => &mut self.running_var,
            _ => {
                return Err(Error::config(
                    &self.config.name,
                    "name",
                    format!("`{name}` is not one of weight, bias, running_mean, running_var"),
                ));
            }
        };
        if value.shape() != [f] {
            return Err(Error::shape(
                &format!("{}.{name}", self.config.name),
                format!("[{f}]"),
                value.shape(),
            ));
        }
        target.assign(value);
        Ok(())
    }

    /// The layer's configuration.
    pub fn config(&self) -> &BatchNormConfig {
        &self.config
    }

    /// Rows of the batch whose statistics this pass uses: all ranks' under synchronised
    /// BatchNorm, else the `local` rows at hand.
    fn batch_rows(&self, local: usize) -> usize {
        self.group.as_ref().map_or(local, |g| g.shard().total)
    }

    /// Sums `acc[range]` over the ranks of a synchronised batch (nothing on one process):
    /// plainly, or with each rank's weight in the global mean (`weighted`). Returns this
    /// rank's weight when weighted, else 1.
    fn sum_over_ranks(
        &mut self,
        range: impl std::slice::SliceIndex<[f64], Output = [f64]>,
        weighted: bool,
    ) -> Result<f64> {
        let Some(group) = &self.group else {
            return Ok(1.0);
        };
        let values = &mut self.acc[range];
        if weighted {
            group.comm().sum_f64(values, group.weights())?;
            Ok(group.weight())
        } else {
            group.sum(values)?;
            Ok(1.0)
        }
    }

    fn check(&self, shape: &[usize]) -> Result<()> {
        let f = Some(self.config.features);
        if self.config.spatial {
            check_shape(&self.config.name, shape, &[None, f, None, None])
        } else {
            check_shape(&self.config.name, shape, &[None, f])
        }
    }

    /// Per-channel sums of `a` and of `a x̂` into `acc` (first `c`, then `c` more).
    fn sums_with_normalized(&mut self, a: &[f32], dims: (usize, usize, usize)) {
        let xh = self.normalized.data();
        channel_sums2(a, xh, dims, &mut self.acc, |v, h| {
            (v as f64, (v * h) as f64)
        });
    }

    /// `out = gamma / sqrt(var + eps) * (a - mean(a) - x̂ mean(a x̂))`, from the sums that
    /// [`Self::sums_with_normalized`] left in `acc` (which it turns into means).
    ///
    /// This is the Jacobian of the training-mode normalisation times `gamma`. It is its own
    /// adjoint, so it gives both the JVP (`a` a tangent) and the input gradient (`a` the
    /// output gradient): the coupling of every sample through the batch statistics.
    ///
    /// `m` is the number of values per channel in the (global) batch; the means are divided
    /// by `share` besides, this rank's weight in the global mean when `a` is a gradient of
    /// its share's mean loss (1 otherwise).
    fn normalization_jacobian(
        &mut self,
        a: &[f32],
        out: &mut [f32],
        dims: (usize, usize, usize),
        m: f64,
        share: f64,
    ) {
        update_scale(&mut self.scale, self.weight.value.data(), &self.inv_std);
        self.acc.iter_mut().for_each(|s| *s /= m * share);
        let (mean_a, mean_ah) = self.acc.split_at(dims.1);
        let scale = &self.scale;
        channel_map(
            out,
            a,
            self.normalized.data(),
            dims,
            [mean_a, mean_ah, scale],
            |v, h, [mean_a, mean_ah, scale]| {
                let centred = v as f64 - mean_a - h as f64 * mean_ah;
                (scale * centred) as f32
            },
        );
    }
}

impl Layer for BatchNorm {
    fn name(&self) -> &str {
        &self.config.name
    }

    fn set_name(&mut self, name: &str) {
        self.config.name = name.to_string();
    }

    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        self.check(input)?;
        Ok(input.to_vec())
    }

    fn forward(&mut self, input: &Dual, output: &mut Dual) -> Result<()> {
        let x = input.primal();
        self.check(x.shape())?;
        let dims = layout(x.shape());
        let (_, c, s) = dims;
        // Values per channel in the batch, all ranks' when the batch is split.
        let m = self.batch_rows(dims.0) * s;
        if m < 2 {
            return Err(Error::shape(
                &self.config.name,
                "more than one value per channel in training mode",
                x.shape(),
            ));
        }
        // Mean, then the variance around it (two passes, f64 sums: one pass loses digits).
        channel_sums2(x.data(), x.data(), dims, &mut self.acc, |v, _| {
            (v as f64, 0.0)
        });
        self.sum_over_ranks(..c, false)?;
        for (mu, sum) in self.mean.iter_mut().zip(&self.acc[..c]) {
            *mu = sum / m as f64;
        }
        let mean = &self.mean;
        centred_squares(x.data(), dims, mean, &mut self.acc[..c]);
        self.sum_over_ranks(..c, false)?;
        let mean = &self.mean;
        let eps = self.config.eps as f64;
        let momentum = self.config.momentum;
        // Five per-channel arrays move together; an index reads better than a zip of five.
        #[allow(clippy::needless_range_loop)]
        for ch in 0..c {
            let var = self.acc[ch] / m as f64;
            self.inv_std[ch] = 1.0 / (var + eps).sqrt();
            let unbiased = (self.acc[ch] / (m - 1) as f64) as f32;
            let rm = &mut self.running_mean.data_mut()[ch];
            *rm = (1.0 - momentum) * *rm + momentum * mean[ch] as f32;
            let rv = &mut self.running_var.data_mut()[ch];
            *rv = (1.0 - momentum) * *rv + momentum * unbiased;
        }
        self.num_batches_tracked += 1;

        self.normalized.resize(x.shape());
        let inv_std = &self.inv_std;
        channel_map(
            self.normalized.data_mut(),
            x.data(),
            x.data(),
            dims,
            [mean, inv_std],
            |v, _, [mean, inv_std]| ((v as f64 - mean) * inv_std) as f32,
        );
        output.resize(x.shape(), input.directions());
        let (y, dy) = output.parts_mut();
        let (gamma, beta) = (self.weight.value.data(), self.bias.value.data());
        channel_map(
            y.data_mut(),
            self.normalized.data(),
            x.data(),
            dims,
            [gamma, beta],
            |h, _, [gamma, beta]| gamma * h + beta,
        );
        if let (Some(dy), Some(dx)) = (dy, input.tangent()) {
            let block = x.len();
            for (dxb, dyb) in dx.data().chunks(block).zip(dy.data_mut().chunks_mut(block)) {
                self.sums_with_normalized(dxb, dims);
                self.sum_over_ranks(.., false)?;
                self.normalization_jacobian(dxb, dyb, dims, m as f64, 1.0);
            }
        }
        Ok(())
    }

    fn forward_eval(&mut self, input: &Dual, output: &mut Dual) -> Result<()> {
        let x = input.primal();
        output.resize(x.shape(), input.directions());
        let (y, dy) = output.parts_mut();
        self.infer(x, y)?;
        if let (Some(dx), Some(dy)) = (input.tangent(), dy) {
            // With the statistics fixed the map is affine per channel: its JVP is the scale.
            let eps = self.config.eps;
            let scale: Vec<f32> = (self.weight.value.data().iter())
                .zip(self.running_var.data())
                .map(|(g, v)| g / (v + eps).sqrt())
                .collect();
            channel_map(
                dy.data_mut(),
                dx.data(),
                dx.data(),
                layout(dx.shape()),
                [&scale],
                |v, _, [s]| v * s,
            );
        }
        Ok(())
    }

    fn infer(&self, input: &Tensor, output: &mut Tensor) -> Result<()> {
        self.check(input.shape())?;
        let dims = layout(input.shape());
        output.resize(input.shape());
        let eps = self.config.eps;
        let (rm, rv) = (self.running_mean.data(), self.running_var.data());
        let (gamma, beta) = (self.weight.value.data(), self.bias.value.data());
        let std_dev: Vec<f32> = rv.iter().map(|v| (v + eps).sqrt()).collect();
        channel_map(
            output.data_mut(),
            input.data(),
            input.data(),
            dims,
            [rm, &std_dev, gamma, beta],
            |v, _, [rm, std_dev, gamma, beta]| gamma * (v - rm) / std_dev + beta,
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
        self.check(input.shape())?;
        let dims = layout(input.shape());
        let c = dims.1;
        self.sums_with_normalized(grad_output.data(), dims);
        self.weight.grad.resize(&[c]);
        self.bias.grad.resize(&[c]);
        for ch in 0..c {
            self.bias.grad.data_mut()[ch] = self.acc[ch] as f32;
            self.weight.grad.data_mut()[ch] = self.acc[c + ch] as f32;
        }
        if let Some(gx) = grad_input {
            gx.resize(input.shape());
            // `grad_output` is a gradient of this rank's mean loss: the sums are combined
            // with each rank's weight in the global mean, and the result is brought back to
            // this rank's scale (see `distributed`).
            let share = self.sum_over_ranks(.., true)?;
            let m = (self.batch_rows(dims.0) * dims.2) as f64;
            self.normalization_jacobian(grad_output.data(), gx.data_mut(), dims, m, share);
        }
        Ok(())
    }

    fn set_batch_group(&mut self, group: Option<&BatchGroup>) -> Result<()> {
        self.group = group
            .filter(|g| g.batch_norm() == BatchNormSync::Synchronized && g.comm().size() > 1)
            .cloned();
        Ok(())
    }

    fn visit_state(&self, f: &mut dyn FnMut(&str, State<'_>)) {
        f("weight", State::Param(ParamRef::new(&self.weight)));
        f("bias", State::Param(ParamRef::new(&self.bias)));
        f("running_mean", State::Buffer(&self.running_mean));
        f("running_var", State::Buffer(&self.running_var));
        f(
            "num_batches_tracked",
            State::Counter(self.num_batches_tracked),
        );
    }

    fn visit_state_mut(&mut self, f: &mut dyn FnMut(&str, StateMut<'_>)) {
        f("weight", StateMut::Param(ParamMut::new(&mut self.weight)));
        f("bias", StateMut::Param(ParamMut::new(&mut self.bias)));
        f(
            "running_mean",
            StateMut::Buffer(BufferMut::new(&mut self.running_mean)),
        );
        f(
            "running_var",
            StateMut::Buffer(BufferMut::new(&mut self.running_var)),
        );
        f(
            "num_batches_tracked",
            StateMut::Counter(&mut self.num_batches_tracked),
        );
    }

    fn add_param_jvp(&self, input: &Tensor, v: &[&[f32]], output: &mut Dual) -> Result<()> {
        let c = self.config.features;
        check_direction(&self.config.name, v, &[c, c])?;
        self.check(input.shape())?;
        if self.normalized.shape() != input.shape() {
            return Err(Error::shape(
                &format!("{} (parameter direction)", self.config.name),
                format!(
                    "the input of the last training forward, {:?}",
                    self.normalized.shape()
                ),
                input.shape(),
            ));
        }
        let dims = layout(input.shape());
        let (dg, db) = (v[0], v[1]);
        let xh = self.normalized.data();
        // Affine in (gamma, beta): d(y) += d(gamma) x̂ + d(beta).
        let (dy, block) = explicit_tangent(output);
        self.jvp.with(|prev| {
            prev.resize(&[block]);
            for dyb in dy.data_mut().chunks_mut(block) {
                prev.data_mut().copy_from_slice(dyb);
                channel_map(dyb, prev.data(), xh, dims, [dg, db], |d, h, [dg, db]| {
                    d + dg * h + db
                });
            }
        });
        Ok(())
    }
}
