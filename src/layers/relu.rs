//! Rectified linear unit.

use super::{Layer, check_grad};
use crate::error::{Error, Result};
use crate::tensor::{Dual, Tensor};

/// `y = max(x, 0)`; its JVP and backward pass the signal where `x > 0` (PyTorch's convention
/// of a zero derivative at the kink).
///
/// ```
/// use fdfa::layers::{Layer, Relu};
/// use fdfa::Tensor;
/// let relu = Relu::new("relu");
/// let mut y = Tensor::default();
/// relu.infer(&Tensor::from_vec(&[1, 3], vec![-1., 0., 2.])?, &mut y)?;
/// assert_eq!(y.data(), &[0., 0., 2.]);
/// # Ok::<(), fdfa::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Relu {
    name: String,
}

impl Relu {
    /// A ReLU named `name`.
    pub fn new(name: impl Into<String>) -> Self {
        Self { name: name.into() }
    }
}

impl Layer for Relu {
    fn name(&self) -> &str {
        &self.name
    }

    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        if input.first().is_none_or(|&n| n == 0) {
            return Err(Error::shape(&self.name, "[N, ...] with N > 0", input));
        }
        Ok(input.to_vec())
    }

    fn forward(&mut self, input: &Dual, output: &mut Dual) -> Result<()> {
        let x = input.primal();
        self.output_shape(x.shape())?;
        output.resize(x.shape(), input.directions());
        let (y, dy) = output.parts_mut();
        y.data_mut()
            .iter_mut()
            .zip(x.data())
            .for_each(|(y, &x)| *y = x.max(0.0));
        if let (Some(dy), Some(dx)) = (dy, input.tangent()) {
            for (dyb, dxb) in dy
                .data_mut()
                .chunks_mut(x.len())
                .zip(dx.data().chunks(x.len()))
            {
                for ((d, &t), &v) in dyb.iter_mut().zip(dxb).zip(x.data()) {
                    *d = if v > 0.0 { t } else { 0.0 };
                }
            }
        }
        Ok(())
    }

    fn infer(&self, input: &Tensor, output: &mut Tensor) -> Result<()> {
        self.output_shape(input.shape())?;
        output.resize(input.shape());
        output
            .data_mut()
            .iter_mut()
            .zip(input.data())
            .for_each(|(y, &x)| *y = x.max(0.0));
        Ok(())
    }

    fn backward(
        &mut self,
        _input: &Tensor,
        output: &Tensor,
        grad_output: &Tensor,
        grad_input: Option<&mut Tensor>,
    ) -> Result<()> {
        check_grad(&self.name, output, grad_output)?;
        if let Some(gx) = grad_input {
            gx.resize(output.shape());
            for ((d, &g), &y) in gx
                .data_mut()
                .iter_mut()
                .zip(grad_output.data())
                .zip(output.data())
            {
                *d = if y > 0.0 { g } else { 0.0 };
            }
        }
        Ok(())
    }
}
