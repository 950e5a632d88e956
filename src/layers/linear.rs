//! Fully connected layer.

use ndarray::{ArrayView1, ArrayView2};

use super::{
    Layer, Layout, Param, ParamMut, ParamRef, State, StateMut, check_direction, check_grad,
    check_shape, explicit_tangent,
};
use crate::error::{Error, Result};
use crate::init::{Rng, default_bound, uniform};
use crate::kernels::gemm::gemm;
use crate::parallel::KeptBuffer;
use crate::tensor::{Dual, Tensor};

/// Configuration of a [`Linear`] layer.
///
/// ```
/// use fdfa::layers::{Layer, LinearConfig};
/// let mut rng = fdfa::init::rng(0);
/// let fc = LinearConfig::new(784, 800).with_name("fc_hidden.0").init(&mut rng)?;
/// assert_eq!(fc.output_shape(&[64, 784])?, vec![64, 800]);
/// assert!(fc.output_shape(&[64, 100]).is_err());
/// # Ok::<(), fdfa::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct LinearConfig {
    /// Input features.
    pub d_in: usize,
    /// Output features.
    pub d_out: usize,
    /// Whether the layer has a bias (default `true`).
    pub bias: bool,
    /// The layer's name (default: none, and [`Model::new`](crate::model::Model::new) names
    /// the layer by its position).
    pub name: String,
}

impl LinearConfig {
    /// A layer from `d_in` to `d_out` features, with bias.
    pub fn new(d_in: usize, d_out: usize) -> Self {
        Self {
            d_in,
            d_out,
            bias: true,
            name: String::new(),
        }
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

    /// Builds the layer with PyTorch's default initialisation (weight and bias uniform in
    /// `+-1/sqrt(d_in)`).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when a size is zero.
    pub fn init(&self, rng: &mut Rng) -> Result<Linear> {
        for (field, v) in [("d_in", self.d_in), ("d_out", self.d_out)] {
            if v == 0 {
                let label = if self.name.is_empty() {
                    "Linear"
                } else {
                    &self.name
                };
                return Err(Error::config(label, field, "must be positive"));
            }
        }
        let bound = default_bound(self.d_in);
        // Drawn in PyTorch's [d_out, d_in] order, so a seed gives PyTorch's layer.
        let weight = Param::new(uniform(&[self.d_out, self.d_in], bound, rng).transposed());
        let bias = self
            .bias
            .then(|| Param::new(uniform(&[self.d_out], bound, rng)));
        Ok(Linear {
            name: self.name.clone(),
            d_in: self.d_in,
            d_out: self.d_out,
            weight,
            bias,
            jvp: KeptBuffer::default(),
        })
    }
}

/// `y = x Wᵀ + b` on `[N, d_in]` inputs.
///
/// Every public view of the weight is PyTorch's `[d_out, d_in]`
/// ([`weight`](Self::weight), [`set_weight`](Self::set_weight), the state visitors,
/// checkpoints). Inside, the layer keeps `Wᵀ`, `[d_in, d_out]` (as burn's `Linear` does), so
/// that the forward product `x Wᵀ` reads it row by row: matrixmultiply packs the other
/// layout for that product one value at a time. The optimizers, being elementwise, step on
/// the stored layout without a copy ([`ParamMut::storage_mut`]).
///
/// ```
/// use fdfa::layers::{Layer, LinearConfig, State};
/// use fdfa::Tensor;
/// let mut fc = LinearConfig::new(3, 2).with_name("fc").init(&mut fdfa::init::rng(0))?;
/// assert_eq!(fc.weight().shape(), &[2, 3]);
/// let mut torch = Vec::new();
/// fc.visit_state(&mut |name, state| {
///     if let State::Param(p) = state {
///         torch.push((name.to_string(), p.shape()));
///     }
/// });
/// assert_eq!(torch, vec![("weight".to_string(), vec![2, 3]), ("bias".to_string(), vec![2])]);
/// // A weight of another shape is refused, not stored.
/// assert!(fc.set_weight(&Tensor::zeros(&[3, 2])).is_err());
/// # Ok::<(), fdfa::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Linear {
    name: String,
    d_in: usize,
    d_out: usize,
    /// `Wᵀ`, `[d_in, d_out]`; its gradient shares that layout.
    weight: Param,
    /// `[d_out]`, if the layer has a bias.
    bias: Option<Param>,
    /// The parameter direction's JVP before it is added to every tangent block.
    jvp: KeptBuffer,
}

impl Linear {
    fn check(&self, shape: &[usize]) -> Result<()> {
        check_shape(&self.name, shape, &[None, Some(self.d_in)])
    }

    /// Input features.
    pub fn d_in(&self) -> usize {
        self.d_in
    }

    /// Output features.
    pub fn d_out(&self) -> usize {
        self.d_out
    }

    /// The weight in PyTorch's layout, `[d_out, d_in]` (a transposed copy).
    pub fn weight(&self) -> Tensor {
        self.weight.value.transposed()
    }

    /// The bias, `[d_out]`, if the layer has one.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref().map(|b| &b.value)
    }

    /// Sets the weight from PyTorch's layout, `[d_out, d_in]`.
    ///
    /// # Errors
    /// [`Error::Shape`] for any other shape.
    pub fn set_weight(&mut self, weight: &Tensor) -> Result<()> {
        ParamMut::stored(&mut self.weight, Layout::Transposed)
            .set_value(weight)
            .map_err(|_| {
                Error::shape(
                    &format!("{}.weight", self.name),
                    format!("[{}, {}]", self.d_out, self.d_in),
                    weight.shape(),
                )
            })
    }

    /// Sets the bias.
    ///
    /// # Errors
    /// [`Error::Shape`] for a shape other than `[d_out]`; [`Error::InvalidConfig`] when the
    /// layer has no bias.
    pub fn set_bias(&mut self, bias: &Tensor) -> Result<()> {
        let name = format!("{}.bias", self.name);
        let Some(b) = &mut self.bias else {
            return Err(Error::config(&self.name, "bias", "the layer has no bias"));
        };
        ParamMut::new(b)
            .set_value(bias)
            .map_err(|_| Error::shape(&name, format!("[{}]", self.d_out), bias.shape()))
    }

    /// `y <- x Wᵀ + b` (the bias only when given), `w` in the stored layout.
    fn affine(
        x: ArrayView2<'_, f32>,
        w: ArrayView2<'_, f32>,
        bias: Option<&[f32]>,
        y: &mut Tensor,
    ) {
        let mut ym = y.matrix_mut();
        let beta = match bias {
            Some(b) => {
                for mut row in ym.rows_mut() {
                    row.assign(&ArrayView1::from(b));
                }
                1.0
            }
            None => 0.0,
        };
        gemm(1.0, x, w, beta, ym);
    }

    fn bias_data(&self) -> Option<&[f32]> {
        self.bias.as_ref().map(|b| b.value.data())
    }
}

impl Layer for Linear {
    fn name(&self) -> &str {
        &self.name
    }

    fn set_name(&mut self, name: &str) {
        self.name = name.to_string();
    }

    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        self.check(input)?;
        Ok(vec![input[0], self.d_out])
    }

    fn forward(&mut self, input: &Dual, output: &mut Dual) -> Result<()> {
        let x = input.primal();
        self.check(x.shape())?;
        let n = x.batch();
        output.resize(&[n, self.d_out], input.directions());
        let (y, dy) = output.parts_mut();
        Self::affine(x.matrix(), self.weight.value.matrix(), self.bias_data(), y);
        // The map is affine in its input: the JVP is the same product, bias-free.
        if let (Some(dy), Some(dx)) = (dy, input.tangent()) {
            gemm(
                1.0,
                dx.matrix(),
                self.weight.value.matrix(),
                0.0,
                dy.matrix_mut(),
            );
        }
        Ok(())
    }

    fn infer(&self, input: &Tensor, output: &mut Tensor) -> Result<()> {
        self.check(input.shape())?;
        output.resize(&[input.batch(), self.d_out]);
        Self::affine(
            input.matrix(),
            self.weight.value.matrix(),
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
        check_grad(&self.name, output, grad_output)?;
        self.check(input.shape())?;
        let g = grad_output.matrix();
        self.weight.grad.resize(&[self.d_in, self.d_out]);
        gemm(
            1.0,
            input.matrix().t(),
            g,
            0.0,
            self.weight.grad.matrix_mut(),
        );
        if let Some(bias) = &mut self.bias {
            bias.grad.resize(&[self.d_out]);
            column_sums(grad_output, bias.grad.data_mut());
        }
        if let Some(gx) = grad_input {
            gx.resize(input.shape());
            gemm(1.0, g, self.weight.value.matrix().t(), 0.0, gx.matrix_mut());
        }
        Ok(())
    }

    fn visit_state(&self, f: &mut dyn FnMut(&str, State<'_>)) {
        f(
            "weight",
            State::Param(ParamRef::stored(&self.weight, Layout::Transposed)),
        );
        if let Some(b) = &self.bias {
            f("bias", State::Param(ParamRef::new(b)));
        }
    }

    fn visit_state_mut(&mut self, f: &mut dyn FnMut(&str, StateMut<'_>)) {
        f(
            "weight",
            StateMut::Param(ParamMut::stored(&mut self.weight, Layout::Transposed)),
        );
        if let Some(b) = &mut self.bias {
            f("bias", StateMut::Param(ParamMut::new(b)));
        }
    }

    fn add_param_jvp(&self, input: &Tensor, v: &[&[f32]], output: &mut Dual) -> Result<()> {
        let mut lens = vec![self.weight.value.len()];
        lens.extend(self.bias.as_ref().map(|b| b.value.len()));
        check_direction(&self.name, v, &lens)?;
        self.check(input.shape())?;
        let dw = ArrayView2::from_shape((self.d_in, self.d_out), v[0])
            .unwrap_or_else(|_| unreachable!("length checked"));
        // Affine in (W, b): the JVP along (dW, db) is the layer itself with (dW, db).
        self.jvp.with(|extra| {
            extra.resize(&[input.batch(), self.d_out]);
            Self::affine(input.matrix(), dw, v.get(1).copied(), extra);
            let (dy, block) = explicit_tangent(output);
            for t in dy.data_mut().chunks_mut(block) {
                t.iter_mut().zip(extra.data()).for_each(|(a, b)| *a += b);
            }
        });
        Ok(())
    }

    fn flops_per_sample(&self, _input: &[usize]) -> usize {
        self.d_in * self.d_out
    }
}

/// `out[j] = sum_i m[i, j]`, rows added in order.
pub(crate) fn column_sums(m: &Tensor, out: &mut [f32]) {
    out.fill(0.0);
    for row in m.data().chunks(m.row_len().max(1)) {
        out.iter_mut().zip(row).for_each(|(o, v)| *o += v);
    }
}
