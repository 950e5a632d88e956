//! Flattening `[N, C, H, W]` to `[N, C * H * W]`.

use super::{Layer, check_grad};
use crate::error::{Error, Result};
use crate::tensor::{Dual, Tensor};

/// Reshapes every sample to a vector (a copy into the output buffer).
///
/// ```
/// use fdfa::layers::{Flatten, Layer};
/// assert_eq!(Flatten::new("flatten").output_shape(&[2, 40, 10, 10])?, vec![2, 4000]);
/// # Ok::<(), fdfa::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Flatten {
    name: String,
}

impl Flatten {
    /// A flatten layer named `name`.
    pub fn new(name: impl Into<String>) -> Self {
        Self { name: name.into() }
    }
}

impl Layer for Flatten {
    fn name(&self) -> &str {
        &self.name
    }

    fn set_name(&mut self, name: &str) {
        self.name = name.to_string();
    }

    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        if input.len() < 2 || input[0] == 0 {
            return Err(Error::shape(&self.name, "[N, ...] with N > 0", input));
        }
        Ok(vec![input[0], input[1..].iter().product()])
    }

    fn forward(&mut self, input: &Dual, output: &mut Dual) -> Result<()> {
        let shape = self.output_shape(input.primal().shape())?;
        output.resize(&shape, input.directions());
        let (y, dy) = output.parts_mut();
        y.data_mut().copy_from_slice(input.primal().data());
        if let (Some(dy), Some(dx)) = (dy, input.tangent()) {
            dy.data_mut().copy_from_slice(dx.data());
        }
        Ok(())
    }

    fn infer(&self, input: &Tensor, output: &mut Tensor) -> Result<()> {
        let shape = self.output_shape(input.shape())?;
        output.resize(&shape);
        output.data_mut().copy_from_slice(input.data());
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
            gx.data_mut().copy_from_slice(grad_output.data());
        }
        Ok(())
    }
}
