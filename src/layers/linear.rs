//! Fully connected layer.

use ndarray::{ArrayView1, ArrayView2};

use super::{Layer, Param, StateMut, check_grad, check_shape};
use crate::error::{Error, Result};
use crate::init::{Rng, default_bound, uniform};
use crate::kernels::gemm::gemm;
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
    /// The layer's name (default `linear`).
    pub name: String,
}

impl LinearConfig {
    /// A layer from `d_in` to `d_out` features, with bias.
    pub fn new(d_in: usize, d_out: usize) -> Self {
        Self {
            d_in,
            d_out,
            bias: true,
            name: "linear".into(),
        }
    }

    /// Sets whether the layer has a bias.
    pub fn with_bias(mut self, bias: bool) -> Self {
        self.bias = bias;
        self
    }

    /// Sets the layer's name.
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
                return Err(Error::config(&self.name, field, "must be positive"));
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
        })
    }
}

/// `y = x Wᵀ + b` on `[N, d_in]` inputs.
///
/// The weight is kept as `Wᵀ`, `[d_in, d_out]` (as burn's `Linear` keeps it), so that the
/// forward product `x Wᵀ` reads it row by row: matrixmultiply packs the other layout for that
/// product one value at a time, which cost a quarter of the product at FC-2's sizes. Every
/// boundary that promises PyTorch's layout sees `[d_out, d_in]`:
/// [`visit_state`](Layer::visit_state) (checkpoints, `state_dict` names, tests) hands out a
/// transposed copy and stores back what the visitor leaves in it, while
/// [`visit_params`](Layer::visit_params) (the optimizers, once per step) hands out the
/// parameter itself.
///
/// ```
/// use fdfa::layers::{Layer, LinearConfig, StateMut};
/// let mut fc = LinearConfig::new(3, 2).with_name("fc").init(&mut fdfa::init::rng(0))?;
/// assert_eq!(fc.weight.value.shape(), &[3, 2]);
/// let mut torch = Vec::new();
/// fc.visit_state(&mut |name, state| {
///     if let StateMut::Param(p) = state {
///         torch.push((name.to_string(), p.value.shape().to_vec(), p.value.data().to_vec()));
///     }
/// });
/// assert_eq!(torch[0].0, "weight");
/// assert_eq!(torch[0].1, vec![2, 3]);
/// // W[o][i] in PyTorch's layout is Wᵀ[i][o] here.
/// assert_eq!(torch[0].2[1 * 3 + 2], fc.weight.value.data()[2 * 2 + 1]);
/// # Ok::<(), fdfa::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Linear {
    name: String,
    d_in: usize,
    d_out: usize,
    /// `Wᵀ`, `[d_in, d_out]`; its gradient and tangent share that layout.
    pub weight: Param,
    /// `[d_out]`, if the layer has a bias.
    pub bias: Option<Param>,
}

impl Linear {
    fn check(&self, shape: &[usize]) -> Result<()> {
        check_shape(&self.name, shape, &[None, Some(self.d_in)])?;
        // The weight is public and `visit_state` stores back what a visitor leaves.
        let tangent = self.weight.tangent.as_ref().map(Tensor::shape);
        for (what, got) in [
            ("weight", Some(self.weight.value.shape())),
            ("weight tangent", tangent),
        ] {
            if let Some(got) = got.filter(|got| *got != [self.d_in, self.d_out]) {
                return Err(Error::shape(
                    &format!("{}.{what} (stored as Wᵀ)", self.name),
                    format!("[{}, {}]", self.d_in, self.d_out),
                    got,
                ));
            }
        }
        let bias = self
            .bias
            .iter()
            .flat_map(|b| [Some(&b.value), b.tangent.as_ref()]);
        match bias.flatten().find(|b| b.shape() != [self.d_out]) {
            Some(b) => Err(Error::shape(
                &format!("{}.bias", self.name),
                format!("[{}]", self.d_out),
                b.shape(),
            )),
            None => Ok(()),
        }
    }

    /// Input features.
    pub fn d_in(&self) -> usize {
        self.d_in
    }

    /// Output features.
    pub fn d_out(&self) -> usize {
        self.d_out
    }

    /// `y <- x Wᵀ + b` (the bias only when `with_bias`).
    fn affine(
        &self,
        x: ArrayView2<'_, f32>,
        weight: &Tensor,
        bias: Option<&Tensor>,
        y: &mut Tensor,
    ) {
        let mut ym = y.matrix_mut();
        let beta = match bias {
            Some(b) => {
                for mut row in ym.rows_mut() {
                    row.assign(&ArrayView1::from(b.data()));
                }
                1.0
            }
            None => 0.0,
        };
        gemm(1.0, x, weight.matrix(), beta, ym);
    }
}

impl Layer for Linear {
    fn name(&self) -> &str {
        &self.name
    }

    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        self.check(input)?;
        Ok(vec![input[0], self.d_out])
    }

    fn forward(&mut self, input: &Dual, output: &mut Dual) -> Result<()> {
        let x = input.primal();
        self.check(x.shape())?;
        let n = x.batch();
        let k_in = input.directions();
        let param_tangent = self.weight.tangent.is_some()
            || self.bias.as_ref().is_some_and(|b| b.tangent.is_some());
        let k = if param_tangent { k_in.max(1) } else { k_in };
        output.resize(&[n, self.d_out], k);
        let (y, dy) = output.parts_mut();
        self.affine(
            x.matrix(),
            &self.weight.value,
            self.bias.as_ref().map(|b| &b.value),
            y,
        );
        let Some(dy) = dy else { return Ok(()) };
        // d(y) = d(x) Wᵀ + x d(W)ᵀ + d(b), the product rule of the affine map.
        match input.tangent() {
            Some(dx) => gemm(
                1.0,
                dx.matrix(),
                self.weight.value.matrix(),
                0.0,
                dy.matrix_mut(),
            ),
            None => dy.fill(0.0),
        }
        if param_tangent {
            let zero_w;
            let dw = match &self.weight.tangent {
                Some(t) => t,
                None => {
                    zero_w = Tensor::zeros(self.weight.value.shape());
                    &zero_w
                }
            };
            let db = self.bias.as_ref().and_then(|b| b.tangent.as_ref());
            let mut scratch = Tensor::zeros(&[n, self.d_out]);
            self.affine(x.matrix(), dw, db, &mut scratch);
            for block in dy.data_mut().chunks_mut(n * self.d_out) {
                block
                    .iter_mut()
                    .zip(scratch.data())
                    .for_each(|(a, b)| *a += b);
            }
        }
        Ok(())
    }

    fn infer(&self, input: &Tensor, output: &mut Tensor) -> Result<()> {
        self.check(input.shape())?;
        output.resize(&[input.batch(), self.d_out]);
        self.affine(
            input.matrix(),
            &self.weight.value,
            self.bias.as_ref().map(|b| &b.value),
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

    fn visit_state(&mut self, f: &mut dyn FnMut(&str, StateMut<'_>)) {
        // A visitor that leaves a tensor of another rank gets it back as it left it, and the
        // next forward reports the shape.
        let mut torch = Param {
            value: self.weight.value.transposed(),
            grad: self.weight.grad.transposed(),
            tangent: self.weight.tangent.as_ref().map(Tensor::transposed),
        };
        f("weight", StateMut::Param(&mut torch));
        self.weight = Param {
            value: torch.value.transposed(),
            grad: torch.grad.transposed(),
            tangent: torch.tangent.as_ref().map(Tensor::transposed),
        };
        if let Some(b) = &mut self.bias {
            f("bias", StateMut::Param(b));
        }
    }

    fn visit_stored_state(&mut self, f: &mut dyn FnMut(&str, StateMut<'_>, bool)) {
        f("weight", StateMut::Param(&mut self.weight), true);
        if let Some(b) = &mut self.bias {
            f("bias", StateMut::Param(b), false);
        }
    }

    fn visit_params(&mut self, f: &mut dyn FnMut(&str, &mut Param)) {
        f("weight", &mut self.weight);
        if let Some(b) = &mut self.bias {
            f("bias", b);
        }
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
