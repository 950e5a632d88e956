//! Rectified linear unit.

use super::{Layer, check_grad};
use crate::error::{Error, Result};
use crate::parallel::par_chunks_mut;
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

    fn set_name(&mut self, name: &str) {
        self.name = name.to_string();
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
        elementwise(y.data_mut(), x.data(), x.data(), |_, v| v.max(0.0));
        if let (Some(dy), Some(dx)) = (dy, input.tangent()) {
            for (dyb, dxb) in dy
                .data_mut()
                .chunks_mut(x.len())
                .zip(dx.data().chunks(x.len()))
            {
                elementwise(dyb, dxb, x.data(), |t, v| if v > 0.0 { t } else { 0.0 });
            }
        }
        Ok(())
    }

    fn infer(&self, input: &Tensor, output: &mut Tensor) -> Result<()> {
        self.output_shape(input.shape())?;
        output.resize(input.shape());
        elementwise(output.data_mut(), input.data(), input.data(), |_, v| {
            v.max(0.0)
        });
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
        if output.len() != grad_output.len() {
            // Equal shapes but not equal lengths: an empty tensor that never held values.
            return Err(Error::shape(
                &self.name,
                "the output of a forward pass",
                output.shape(),
            ));
        }
        if let Some(gx) = grad_input {
            gx.resize(output.shape());
            elementwise(gx.data_mut(), grad_output.data(), output.data(), |g, y| {
                if y > 0.0 { g } else { 0.0 }
            });
        }
        Ok(())
    }
}

/// Values per parallel task of the elementwise maps.
const CHUNK: usize = 1 << 14;

/// `out[i] = f(a[i], b[i])`, in parallel chunks for large tensors (a CNN's activations are
/// a million values; FC-2's fifty thousand stay on the calling thread).
fn elementwise(out: &mut [f32], a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32 + Sync) {
    par_chunks_mut(out, CHUNK, 1, out.len(), |i, chunk| {
        let start = i * CHUNK;
        let (a, b) = (
            &a[start..start + chunk.len()],
            &b[start..start + chunk.len()],
        );
        for ((o, &x), &y) in chunk.iter_mut().zip(a).zip(b) {
            *o = f(x, y);
        }
    });
}
