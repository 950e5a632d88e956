//! Layers: primal computation, exact forward-mode JVP and reverse-mode backward, side by side.
//!
//! Every layer implements [`Layer`]. A training forward takes a [`Dual`] and writes a
//! [`Dual`] (the tangents follow the layer's exact Jacobian-vector product; a structural-zero
//! tangent stays zero at no cost), keeping what its backward needs. Inference takes plain
//! tensors and `&self`. Output buffers are passed in by the caller and reused from step to
//! step.

mod batch_norm;
mod conv2d;
mod flatten;
mod linear;
mod pool;
mod relu;

pub use batch_norm::{BatchNorm, BatchNormConfig};
pub use conv2d::{Conv2d, Conv2dConfig};
pub use flatten::Flatten;
pub use linear::{Linear, LinearConfig};
pub use pool::{AdaptiveAvgPool2d, MaxPool2d};
pub use relu::Relu;

use std::fmt::Debug;

use crate::error::{Error, Result};
use crate::tensor::{Dual, Tensor};

/// A trainable tensor: its value, the gradient set by the last backward pass and, for
/// weight-perturbation forward gradients, an optional tangent.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Param {
    /// The current value.
    pub value: Tensor,
    /// The gradient computed by the last backward pass (same shape as `value`).
    pub grad: Tensor,
    /// A direction in parameter space whose JVP the training forward adds to the output
    /// tangent (`d(y) = d(x) Wᵀ + x d(W)ᵀ`). `None` for the usual activity tangents only.
    pub tangent: Option<Tensor>,
}

impl Param {
    /// A parameter with a zero gradient and no tangent.
    pub fn new(value: Tensor) -> Self {
        let grad = Tensor::zeros(value.shape());
        Self {
            value,
            grad,
            tangent: None,
        }
    }
}

/// One named piece of a layer's state, as a visitor sees it.
#[derive(Debug)]
pub enum StateMut<'a> {
    /// A trainable parameter (`weight`, `bias`).
    Param(&'a mut Param),
    /// A non-trainable buffer (`running_mean`, `running_var`).
    Buffer(&'a mut Tensor),
    /// An integer counter (`num_batches_tracked`).
    Counter(&'a mut u64),
}

/// A differentiable layer.
///
/// Shapes include the batch axis. Implementations check their input's shape on entry and
/// return [`Error::Shape`] naming the layer; past that point they may assume it.
pub trait Layer: Send + Sync + Debug {
    /// The layer's name, e.g. `fc_hidden.0`; used in errors and in parameter paths.
    fn name(&self) -> &str;

    /// The output shape for an input shape.
    ///
    /// # Errors
    /// [`Error::Shape`] when the layer cannot take `input`.
    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>>;

    /// Training forward: writes `input`'s image into `output`, its tangents propagated by the
    /// exact JVP (batch statistics included for BatchNorm, whose running statistics it
    /// updates), and keeps what [`backward`](Self::backward) needs.
    ///
    /// # Errors
    /// [`Error::Shape`] when `input` does not fit.
    fn forward(&mut self, input: &Dual, output: &mut Dual) -> Result<()>;

    /// Inference forward (BatchNorm uses its running statistics).
    ///
    /// # Errors
    /// [`Error::Shape`] when `input` does not fit.
    fn infer(&self, input: &Tensor, output: &mut Tensor) -> Result<()>;

    /// Backward of the last training forward, whose primal `input` and `output` are passed
    /// back: sets every parameter's `grad` from `grad_output`, and writes the input gradient
    /// into `grad_input` when one is given (a block-local backward skips it).
    ///
    /// # Errors
    /// [`Error::Shape`] when `grad_output` does not match the last forward's output.
    fn backward(
        &mut self,
        input: &Tensor,
        output: &Tensor,
        grad_output: &Tensor,
        grad_input: Option<&mut Tensor>,
    ) -> Result<()>;

    /// Visits the layer's state under PyTorch `state_dict` suffixes (`weight`, `bias`,
    /// `running_mean`, `running_var`, `num_batches_tracked`). Stateless layers visit nothing.
    fn visit_state(&mut self, _f: &mut dyn FnMut(&str, StateMut<'_>)) {}

    /// Visits the layer's trainable parameters under the same suffixes, in the layout the
    /// layer computes with: the optimizers' per-step path. The default visits the parameters
    /// [`visit_state`](Self::visit_state) visits, which is right for every layer that keeps
    /// PyTorch's layout; a layer that does not (such as [`Linear`]) overrides both.
    fn visit_params(&mut self, f: &mut dyn FnMut(&str, &mut Param)) {
        self.visit_state(&mut |name, state| {
            if let StateMut::Param(p) = state {
                f(name, p);
            }
        });
    }

    /// Visits the same state as [`visit_state`](Self::visit_state), in the layout the layer
    /// stores it, without copies; the flag is set for a tensor stored as the transpose of its
    /// 2-D PyTorch layout, which is also the layout [`visit_params`](Self::visit_params)
    /// hands out and anything kept beside it (an optimizer's moments) must be transposed
    /// from on its way to a file. For consumers that transpose only what they need (a
    /// checkpoint writes each weight once) or need no layout at all (saving and restoring
    /// gradients). The default is `visit_state` with the flag clear; a layer that overrides
    /// `visit_params` for its layout overrides this too.
    fn visit_stored_state(&mut self, f: &mut dyn FnMut(&str, StateMut<'_>, bool)) {
        self.visit_state(&mut |suffix, state| f(suffix, state, false));
    }

    /// Multiply-adds of one training forward for one sample (primal only), for throughput
    /// reports.
    fn flops_per_sample(&self, _input: &[usize]) -> usize {
        0
    }
}

/// Checks that `shape` has `rank` axes, and the trailing axes `expect` where given.
pub(crate) fn check_shape(layer: &str, shape: &[usize], expect: &[Option<usize>]) -> Result<()> {
    let describe = || {
        let dims: Vec<String> = expect
            .iter()
            .enumerate()
            .map(|(i, d)| match (i, d) {
                (0, _) => "N".to_string(),
                (_, Some(d)) => d.to_string(),
                (_, None) => "_".to_string(),
            })
            .collect();
        format!("[{}]", dims.join(", "))
    };
    let fits = shape.len() == expect.len()
        && shape.iter().zip(expect).enumerate().all(|(i, (s, e))| {
            if i == 0 {
                *s > 0
            } else {
                e.is_none_or(|e| e == *s)
            }
        });
    if fits {
        Ok(())
    } else {
        Err(Error::shape(layer, describe(), shape))
    }
}

/// Checks that `grad_output` has the shape of the forward output.
pub(crate) fn check_grad(layer: &str, output: &Tensor, grad_output: &Tensor) -> Result<()> {
    if output.shape() == grad_output.shape() {
        Ok(())
    } else {
        Err(Error::shape(
            &format!("{layer} (backward)"),
            format!("{:?}", output.shape()),
            grad_output.shape(),
        ))
    }
}
