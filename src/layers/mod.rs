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

use std::borrow::Cow;
use std::fmt::Debug;

use crate::error::{Error, Result};
use crate::tensor::{Dual, Tensor, transpose_into};

/// A trainable tensor: its value and the gradient set by the last backward pass, in the same
/// layout.
///
/// Layers keep theirs private and hand them out through [`ParamRef`] and [`ParamMut`]; a
/// `Param` of one's own (a rule's feedback matrix, a custom [`Parameters`] collection) is in
/// PyTorch's layout.
///
/// [`Parameters`]: crate::optim::Parameters
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Param {
    /// The current value.
    pub value: Tensor,
    /// The gradient computed by the last backward pass (same shape as `value`).
    pub grad: Tensor,
}

impl Param {
    /// A parameter with a zero gradient.
    pub fn new(value: Tensor) -> Self {
        let grad = Tensor::zeros(value.shape());
        Self { value, grad }
    }
}

/// How a layer stores a parameter relative to PyTorch's layout: the layer's private business,
/// carried by the views so that every public read and write is in PyTorch's layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Layout {
    /// PyTorch's layout.
    Torch,
    /// The transpose of PyTorch's 2-D layout (a [`Linear`] weight, `[in, out]`).
    Transposed,
}

impl Layout {
    /// `stored` (in this layout) in PyTorch's layout; borrowed when no conversion is needed.
    pub(crate) fn torch_view(self, stored: &Tensor) -> Cow<'_, Tensor> {
        match self {
            Self::Torch => Cow::Borrowed(stored),
            Self::Transposed => Cow::Owned(stored.transposed()),
        }
    }

    /// The PyTorch shape of a tensor stored as `stored`.
    pub(crate) fn torch_shape(self, stored: &[usize]) -> Vec<usize> {
        match self {
            Self::Torch => stored.to_vec(),
            Self::Transposed => stored.iter().rev().copied().collect(),
        }
    }

    /// Writes `torch` (PyTorch's layout, shape checked by the caller) into `stored`, whose
    /// shape is kept.
    pub(crate) fn store(self, torch: &[f32], stored: &mut Tensor) {
        match self {
            Self::Torch => stored.data_mut().copy_from_slice(torch),
            Self::Transposed => {
                // Stored `[rows, cols]`; PyTorch's `[cols, rows]`.
                let (rows, cols) = (stored.batch(), stored.row_len());
                transpose_into(torch, cols, rows, stored.data_mut());
            }
        }
    }

    /// `torch` (PyTorch's layout) as a new tensor in this layout.
    pub(crate) fn stored_from_torch(self, torch: &Tensor) -> Tensor {
        match self {
            Self::Torch => torch.clone(),
            Self::Transposed => torch.transposed(),
        }
    }
}

/// A read-only view of a trainable parameter, as [`Layer::visit_state`] hands it out: every
/// tensor it shows is in PyTorch's layout (a [`Linear`] weight is `[out, in]`), whatever
/// layout the layer computes with.
#[derive(Clone, Copy, Debug)]
pub struct ParamRef<'a> {
    param: &'a Param,
    layout: Layout,
}

impl<'a> ParamRef<'a> {
    /// A view of a parameter kept in PyTorch's layout.
    pub fn new(param: &'a Param) -> Self {
        Self {
            param,
            layout: Layout::Torch,
        }
    }

    pub(crate) fn stored(param: &'a Param, layout: Layout) -> Self {
        Self { param, layout }
    }

    /// The shape in PyTorch's layout.
    pub fn shape(&self) -> Vec<usize> {
        self.layout.torch_shape(self.param.value.shape())
    }

    /// The number of values.
    pub fn len(&self) -> usize {
        self.param.value.len()
    }

    /// Whether the parameter holds no value.
    pub fn is_empty(&self) -> bool {
        self.param.value.is_empty()
    }

    /// The value in PyTorch's layout (borrowed unless the layer stores another layout).
    pub fn value(&self) -> Cow<'a, Tensor> {
        self.layout.torch_view(&self.param.value)
    }

    /// The gradient of the last backward pass in PyTorch's layout.
    pub fn grad(&self) -> Cow<'a, Tensor> {
        self.layout.torch_view(&self.param.grad)
    }

    /// The value and the gradient as flat slices in the order the layer stores them: the
    /// same order for both and for every call, so that elementwise consumers (norms, dot
    /// products between two models' gradients) need no copy.
    pub fn storage(&self) -> (&'a [f32], &'a [f32]) {
        (self.param.value.data(), self.param.grad.data())
    }

    /// `stored`, a tensor kept beside this parameter in its storage order (an optimizer's
    /// moment), in PyTorch's layout.
    pub(crate) fn torch_view<'t>(&self, stored: &'t Tensor) -> Cow<'t, Tensor> {
        self.layout.torch_view(stored)
    }

    /// `torch` (PyTorch's layout) in this parameter's storage layout.
    pub(crate) fn stored_from_torch(&self, torch: &Tensor) -> Tensor {
        self.layout.stored_from_torch(torch)
    }

    /// The shape the layer stores the parameter in.
    pub(crate) fn stored_shape(&self) -> &'a [usize] {
        self.param.value.shape()
    }
}

/// A mutable view of a trainable parameter, as [`Layer::visit_state_mut`] hands it out:
/// reads and writes are in PyTorch's layout and checked against the parameter's shape, so
/// that no visitor can leave a layer in a state it cannot compute with.
#[derive(Debug)]
pub struct ParamMut<'a> {
    param: &'a mut Param,
    layout: Layout,
}

impl<'a> ParamMut<'a> {
    /// A view of a parameter kept in PyTorch's layout (for a [`Parameters`] collection of
    /// one's own).
    ///
    /// [`Parameters`]: crate::optim::Parameters
    pub fn new(param: &'a mut Param) -> Self {
        Self {
            param,
            layout: Layout::Torch,
        }
    }

    pub(crate) fn stored(param: &'a mut Param, layout: Layout) -> Self {
        Self { param, layout }
    }

    /// The read-only view.
    pub fn view(&self) -> ParamRef<'_> {
        ParamRef::stored(self.param, self.layout)
    }

    /// The shape in PyTorch's layout.
    pub fn shape(&self) -> Vec<usize> {
        self.view().shape()
    }

    /// The value in PyTorch's layout.
    pub fn value(&self) -> Cow<'_, Tensor> {
        self.layout.torch_view(&self.param.value)
    }

    /// The gradient in PyTorch's layout.
    pub fn grad(&self) -> Cow<'_, Tensor> {
        self.layout.torch_view(&self.param.grad)
    }

    fn check(&self, what: &str, t: &Tensor) -> Result<()> {
        let want = self.shape();
        if t.shape() == want {
            Ok(())
        } else {
            Err(Error::shape(what, format!("{want:?}"), t.shape()))
        }
    }

    /// Sets the value from a tensor in PyTorch's layout.
    ///
    /// # Errors
    /// [`Error::Shape`] when `value` does not have the parameter's shape.
    pub fn set_value(&mut self, value: &Tensor) -> Result<()> {
        self.check("parameter value", value)?;
        self.layout.store(value.data(), &mut self.param.value);
        Ok(())
    }

    /// Sets the gradient from a tensor in PyTorch's layout.
    ///
    /// # Errors
    /// [`Error::Shape`] when `grad` does not have the parameter's shape.
    pub fn set_grad(&mut self, grad: &Tensor) -> Result<()> {
        self.check("parameter gradient", grad)?;
        let shape = self.param.value.shape().to_vec();
        self.param.grad.resize(&shape);
        self.layout.store(grad.data(), &mut self.param.grad);
        Ok(())
    }

    /// The value and the gradient as flat slices in the order the layer stores them (see
    /// [`ParamRef::storage`]): the optimizers' copy-free per-step path. A layer's gradient
    /// is sized like its value (zeros before the first backward pass); a [`Param`] of one's
    /// own must keep it so, or an optimizer reports the mismatch.
    pub fn storage_mut(&mut self) -> (&mut [f32], &mut [f32]) {
        let p = &mut *self.param;
        (p.value.data_mut(), p.grad.data_mut())
    }
}

/// A mutable view of a buffer: its values can change, its shape cannot.
#[derive(Debug)]
pub struct BufferMut<'a>(&'a mut Tensor);

impl<'a> BufferMut<'a> {
    pub(crate) fn new(t: &'a mut Tensor) -> Self {
        Self(t)
    }

    /// The buffer.
    pub fn get(&self) -> &Tensor {
        self.0
    }

    /// The buffer's values, to change in place.
    pub fn data_mut(&mut self) -> &mut [f32] {
        self.0.data_mut()
    }

    /// Sets the buffer.
    ///
    /// # Errors
    /// [`Error::Shape`] when `value` does not have the buffer's shape.
    pub fn set(&mut self, value: &Tensor) -> Result<()> {
        if value.shape() != self.0.shape() {
            return Err(Error::shape(
                "buffer",
                format!("{:?}", self.0.shape()),
                value.shape(),
            ));
        }
        self.0.data_mut().copy_from_slice(value.data());
        Ok(())
    }
}

/// One named piece of a layer's state, read-only ([`Layer::visit_state`]).
#[derive(Debug)]
pub enum State<'a> {
    /// A trainable parameter (`weight`, `bias`).
    Param(ParamRef<'a>),
    /// A non-trainable buffer (`running_mean`, `running_var`).
    Buffer(&'a Tensor),
    /// An integer counter (`num_batches_tracked`).
    Counter(u64),
}

/// One named piece of a layer's state, mutable ([`Layer::visit_state_mut`]).
#[derive(Debug)]
pub enum StateMut<'a> {
    /// A trainable parameter (`weight`, `bias`).
    Param(ParamMut<'a>),
    /// A non-trainable buffer (`running_mean`, `running_var`).
    Buffer(BufferMut<'a>),
    /// An integer counter (`num_batches_tracked`).
    Counter(&'a mut u64),
}

/// A differentiable layer.
///
/// Shapes include the batch axis. Implementations check their input's shape on entry and
/// return [`Error::Shape`] naming the layer; past that point they may assume it.
pub trait Layer: Send + Sync + Debug {
    /// The layer's name, e.g. `fc_hidden.0`; used in errors and in parameter paths. Empty
    /// for a layer the user did not name: [`Model::new`](crate::model::Model::new) then names
    /// it by its position.
    fn name(&self) -> &str;

    /// Sets the name; [`Model::new`](crate::model::Model::new) calls it on every unnamed
    /// layer with its position, `<block>.<layer>` (PyTorch's path in a sequence of
    /// sequences). A layer that keeps no name may ignore it, but then its state must be
    /// named apart by hand.
    fn set_name(&mut self, _name: &str) {}

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

    /// Inference forward with tangents: the primal as [`infer`](Self::infer) computes it
    /// (BatchNorm with its running statistics) and the tangents by that map's exact JVP, for
    /// [`Model::jvp`](crate::model::Model::jvp) in [`Mode::Eval`](crate::model::Mode::Eval).
    /// It changes nothing that inference reads (no running statistics), but it may overwrite
    /// what the last training forward kept for its backward.
    ///
    /// The default runs the training [`forward`](Self::forward), which is right for every
    /// layer whose training map is its inference map (everything but BatchNorm here); a layer
    /// whose maps differ (BatchNorm, dropout) overrides it.
    ///
    /// # Errors
    /// [`Error::Shape`] when `input` does not fit.
    fn forward_eval(&mut self, input: &Dual, output: &mut Dual) -> Result<()> {
        self.forward(input, output)
    }

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

    /// Tells the layer that the next training passes see one rank's share of a batch split
    /// over several ranks (`None`: the whole batch, the default state). Only a layer that
    /// couples the samples of a batch needs it: BatchNorm sums its statistics over the
    /// group's ranks. A custom layer that couples samples must do the same, or data-parallel
    /// training changes its algorithm.
    ///
    /// # Errors
    /// Whatever the layer cannot honour (e.g. a setting it does not support).
    fn set_batch_group(&mut self, _group: Option<&crate::distributed::BatchGroup>) -> Result<()> {
        Ok(())
    }

    /// Visits the layer's state under PyTorch `state_dict` suffixes (`weight`, `bias`,
    /// `running_mean`, `running_var`, `num_batches_tracked`), in a fixed order. Stateless
    /// layers visit nothing.
    ///
    /// This and [`visit_state_mut`](Self::visit_state_mut) are one visitor in its shared
    /// and its exclusive flavour: the same entries, names and order. Both exist because
    /// saving needs only `&self` (a model can be saved while it serves inference) while
    /// loading and optimizing need `&mut self`, and Rust cannot hand out `&mut` from `&self`.
    /// Parameters come as views that show PyTorch's layout whatever layout the layer
    /// computes with.
    fn visit_state(&self, _f: &mut dyn FnMut(&str, State<'_>)) {}

    /// The exclusive flavour of [`visit_state`](Self::visit_state): the same entries, whose
    /// views check every write.
    fn visit_state_mut(&mut self, _f: &mut dyn FnMut(&str, StateMut<'_>)) {}

    /// Adds to the tangents of `output` (the result of the last training
    /// [`forward`](Self::forward) of `input`) the JVP along a direction `v` in the layer's
    /// parameter space: `d(y) += J_theta(x) v`, the same for every tangent block. `v` holds
    /// one flat slice per parameter, in visiting order and in the order of
    /// [`ParamMut::storage_mut`]. A structural-zero tangent becomes one explicit tangent.
    ///
    /// Every layer of the crate with parameters is affine in them, so it does this with its
    /// own primal kernel, the direction in place of the parameters. The default does nothing
    /// for a layer without parameters and refuses a direction for one with parameters (a
    /// silently missing term would bias the estimate).
    ///
    /// # Errors
    /// [`Error::Shape`] when `v` does not hold one slice per parameter of the right length;
    /// [`Error::InvalidConfig`] from the default for a layer with parameters.
    fn add_param_jvp(&self, _input: &Tensor, v: &[&[f32]], _output: &mut Dual) -> Result<()> {
        if v.is_empty() {
            Ok(())
        } else {
            Err(Error::config(
                self.name(),
                "add_param_jvp",
                "the layer has parameters but does not implement their JVP",
            ))
        }
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

/// Checks that `v` holds slices of `lens` values, one per parameter, for
/// [`Layer::add_param_jvp`].
pub(crate) fn check_direction(layer: &str, v: &[&[f32]], lens: &[usize]) -> Result<()> {
    let got: Vec<usize> = v.iter().map(|s| s.len()).collect();
    if got == lens {
        Ok(())
    } else {
        Err(Error::shape(
            &format!("{layer} (parameter direction)"),
            format!("slices of {lens:?} values"),
            &got,
        ))
    }
}

/// Makes `output`'s tangent explicit (zeros when it was the structural zero) and returns it
/// with the number of values of one tangent block.
pub(crate) fn explicit_tangent(output: &mut Dual) -> (&mut Tensor, usize) {
    output.ensure_tangent(1);
    let block = output.primal().len();
    let t = output
        .tangent_mut()
        .unwrap_or_else(|| unreachable!("ensure_tangent made it explicit"));
    (t, block)
}
