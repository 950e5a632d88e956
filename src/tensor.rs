//! Batch-major `f32` tensors and the dual numbers built from them.
//!
//! A [`Tensor`] is a row-major buffer with a shape whose first axis is the batch. A
//! [`Dual`] pairs a primal tensor with `k >= 0` tangents of the same shape, stacked along the
//! batch axis: tangent `j` of sample `i` is row `j * n + i`. `k == 0` is the structural zero
//! of forward-mode differentiation: no tangent is allocated, propagated or multiplied.
//!
//! Buffers are reused: [`Tensor::resize`] keeps the allocation when the size does not grow,
//! which is what lets a training step run without allocating once it has warmed up.

use ndarray::{ArrayD, ArrayView2, ArrayViewD, ArrayViewMut2, ArrayViewMutD, IxDyn};

use crate::error::{Error, Result};

/// A batch-major, row-major `f32` tensor (`[N, F]` or `[N, C, H, W]`).
///
/// ```
/// use fdfa::Tensor;
/// let t = Tensor::from_vec(&[2, 3], vec![1., 2., 3., 4., 5., 6.])?;
/// assert_eq!(t.shape(), &[2, 3]);
/// assert_eq!(t.batch(), 2);
/// assert_eq!(t.row(1), &[4., 5., 6.]);
/// # Ok::<(), fdfa::Error>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Tensor {
    data: Vec<f32>,
    shape: Vec<usize>,
}

impl Tensor {
    /// A tensor of zeros.
    pub fn zeros(shape: &[usize]) -> Self {
        Self {
            data: vec![0.0; shape.iter().product()],
            shape: shape.to_vec(),
        }
    }

    /// A tensor holding `data` in row-major order.
    ///
    /// # Errors
    /// [`Error::Shape`] when `data.len()` is not the product of `shape`.
    pub fn from_vec(shape: &[usize], data: Vec<f32>) -> Result<Self> {
        if shape.iter().product::<usize>() != data.len() {
            return Err(Error::shape(
                "Tensor::from_vec",
                format!(
                    "{} elements for shape {shape:?}",
                    shape.iter().product::<usize>()
                ),
                &[data.len()],
            ));
        }
        Ok(Self {
            data,
            shape: shape.to_vec(),
        })
    }

    /// Converts an `ndarray` array (any layout) into a tensor.
    pub fn from_array(array: ArrayD<f32>) -> Self {
        let shape = array.shape().to_vec();
        let data = if array.is_standard_layout() {
            array.into_raw_vec_and_offset().0
        } else {
            array.iter().copied().collect()
        };
        Self { data, shape }
    }

    /// A copy as an `ndarray` array.
    pub fn to_array(&self) -> ArrayD<f32> {
        self.view().to_owned()
    }

    /// The shape, batch axis first.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The number of samples (the first axis), 0 for a scalar.
    pub fn batch(&self) -> usize {
        self.shape.first().copied().unwrap_or(0)
    }

    /// The number of values per sample.
    pub fn row_len(&self) -> usize {
        self.shape.iter().skip(1).product()
    }

    /// All values in row-major order.
    pub fn data(&self) -> &[f32] {
        &self.data
    }

    /// All values in row-major order, mutable.
    pub fn data_mut(&mut self) -> &mut [f32] {
        &mut self.data
    }

    /// Consumes the tensor and returns its values.
    pub fn into_vec(self) -> Vec<f32> {
        self.data
    }

    /// The values of sample `i`.
    ///
    /// # Panics
    /// When `i` is not below [`batch`](Self::batch).
    pub fn row(&self, i: usize) -> &[f32] {
        let len = self.row_len();
        &self.data[i * len..(i + 1) * len]
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether the tensor holds no element.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// An `ndarray` view with the tensor's shape.
    pub fn view(&self) -> ArrayViewD<'_, f32> {
        // The constructor and `resize` keep `data.len() == product(shape)`.
        ArrayViewD::from_shape(IxDyn(&self.shape), &self.data)
            .unwrap_or_else(|_| unreachable!("tensor invariant: length matches shape"))
    }

    /// A mutable `ndarray` view with the tensor's shape.
    pub fn view_mut(&mut self) -> ArrayViewMutD<'_, f32> {
        ArrayViewMutD::from_shape(IxDyn(&self.shape), &mut self.data)
            .unwrap_or_else(|_| unreachable!("tensor invariant: length matches shape"))
    }

    /// The tensor as a matrix `[batch, row_len]`.
    pub fn matrix(&self) -> ArrayView2<'_, f32> {
        let (n, f) = (self.batch(), self.row_len());
        ArrayView2::from_shape((n, f), &self.data)
            .unwrap_or_else(|_| unreachable!("tensor invariant: length matches shape"))
    }

    /// The transpose of a 2-D tensor; any other tensor unchanged.
    pub(crate) fn transposed(&self) -> Tensor {
        let [rows, cols] = self.shape[..] else {
            return self.clone();
        };
        let mut data = vec![0.0; rows * cols];
        transpose_into(&self.data, rows, cols, &mut data);
        Tensor {
            shape: vec![cols, rows],
            data,
        }
    }

    /// The tensor as a mutable matrix `[batch, row_len]`.
    pub fn matrix_mut(&mut self) -> ArrayViewMut2<'_, f32> {
        let (n, f) = (self.batch(), self.row_len());
        ArrayViewMut2::from_shape((n, f), &mut self.data)
            .unwrap_or_else(|_| unreachable!("tensor invariant: length matches shape"))
    }

    /// Gives the tensor a new shape, reusing the allocation when it is large enough.
    ///
    /// The values are unspecified afterwards (callers overwrite them); use
    /// [`fill`](Self::fill) where zeros are needed.
    pub fn resize(&mut self, shape: &[usize]) {
        if self.shape != shape {
            self.shape.clear();
            self.shape.extend_from_slice(shape);
        }
        let len = shape.iter().product();
        if self.data.len() != len {
            self.data.resize(len, 0.0);
        }
    }

    /// Sets every element to `value`.
    pub fn fill(&mut self, value: f32) {
        self.data.fill(value);
    }

    /// Copies `other` into `self`, reusing the allocation.
    pub fn assign(&mut self, other: &Tensor) {
        self.resize(&other.shape);
        self.data.copy_from_slice(&other.data);
    }

    /// Whether every element is finite.
    pub fn is_finite(&self) -> bool {
        self.data.iter().all(|v| v.is_finite())
    }
}

impl From<ArrayD<f32>> for Tensor {
    fn from(array: ArrayD<f32>) -> Self {
        Self::from_array(array)
    }
}

/// A primal tensor with `k` tangents (Jacobian-vector products) travelling along.
///
/// ```
/// use fdfa::{Dual, Tensor};
/// let x = Tensor::from_vec(&[2, 2], vec![1., 2., 3., 4.])?;
/// let plain = Dual::new(x.clone());
/// assert_eq!(plain.directions(), 0);
/// assert!(plain.tangent().is_none());
///
/// let dx = Tensor::from_vec(&[2, 2], vec![0., 1., 0., 1.])?;
/// let dual = Dual::with_tangent(x, dx)?;
/// assert_eq!(dual.directions(), 1);
/// # Ok::<(), fdfa::Error>(())
/// ```
#[derive(Clone, Debug, Default)]
pub struct Dual {
    primal: Tensor,
    tangent: Tensor,
    k: usize,
}

impl Dual {
    /// A dual number whose tangent is the structural zero.
    pub fn new(primal: Tensor) -> Self {
        Self {
            primal,
            tangent: Tensor::default(),
            k: 0,
        }
    }

    /// A dual number with one tangent of the primal's shape.
    ///
    /// # Errors
    /// [`Error::Shape`] when the shapes differ.
    pub fn with_tangent(primal: Tensor, tangent: Tensor) -> Result<Self> {
        Self::with_tangents(primal, tangent, 1)
    }

    /// A dual number with `k` tangents stacked along the batch axis (`[k * n, ...]`).
    ///
    /// # Errors
    /// [`Error::Shape`] when the tangent is not `k` times the primal along the batch axis.
    pub fn with_tangents(primal: Tensor, tangent: Tensor, k: usize) -> Result<Self> {
        let mut expected = primal.shape().to_vec();
        if let Some(n) = expected.first_mut() {
            *n *= k;
        }
        if k == 0 || tangent.shape() != expected.as_slice() {
            return Err(Error::shape(
                "Dual",
                format!("tangents of shape {expected:?} (k = {k})"),
                tangent.shape(),
            ));
        }
        Ok(Self { primal, tangent, k })
    }

    /// The primal value.
    pub fn primal(&self) -> &Tensor {
        &self.primal
    }

    /// The primal value, mutable.
    pub fn primal_mut(&mut self) -> &mut Tensor {
        &mut self.primal
    }

    /// The stacked tangents (`[k * n, ...]`), `None` when they are the structural zero.
    pub fn tangent(&self) -> Option<&Tensor> {
        (self.k > 0).then_some(&self.tangent)
    }

    /// The stacked tangents, mutable; `None` when they are the structural zero.
    pub fn tangent_mut(&mut self) -> Option<&mut Tensor> {
        (self.k > 0).then_some(&mut self.tangent)
    }

    /// The number of tangents carried (0 when none).
    pub fn directions(&self) -> usize {
        self.k
    }

    /// Splits into the primal and the tangent (if any).
    pub fn parts_mut(&mut self) -> (&mut Tensor, Option<&mut Tensor>) {
        let k = self.k;
        (&mut self.primal, (k > 0).then_some(&mut self.tangent))
    }

    /// Reshapes the primal to `shape` and declares `k` tangents of the same shape, reusing
    /// buffers: what a layer's forward does to its output. Values are unspecified afterwards.
    ///
    /// # Panics
    /// When `shape` has more than 8 axes.
    pub fn resize(&mut self, shape: &[usize], k: usize) {
        self.primal.resize(shape);
        self.k = k;
        if k > 0 {
            let mut tshape = [0usize; 8];
            let t = &mut tshape[..shape.len()];
            t.copy_from_slice(shape);
            t[0] *= k;
            self.tangent.resize(t);
        }
    }

    /// Makes the tangent the structural zero again (keeping its buffer).
    pub fn clear_tangent(&mut self) {
        self.k = 0;
    }

    /// Turns a structural-zero tangent into `k` explicit zero tangents (a no-op when tangents
    /// are already present), e.g. in a [`Model::forward_train`](crate::model::Model::forward_train) hook
    /// that adds directions.
    ///
    /// ```
    /// use fdfa::{Dual, Tensor};
    /// let mut h = Dual::new(Tensor::zeros(&[2, 3]));
    /// h.ensure_tangent(4);
    /// assert_eq!(h.tangent().map(|t| t.shape().to_vec()), Some(vec![8, 3]));
    /// ```
    pub fn ensure_tangent(&mut self, k: usize) {
        if self.k == 0 {
            let shape = self.primal.shape().to_vec();
            self.resize(&shape, k);
            self.tangent.fill(0.0);
        }
    }

    /// Sets the primal to a copy of `x` and drops the tangent.
    pub(crate) fn assign_primal(&mut self, x: &Tensor) {
        self.primal.assign(x);
        self.k = 0;
    }
}

/// Writes the transpose of `src` (`[rows, cols]`, row-major) into `dst` (`[cols, rows]`).
pub(crate) fn transpose_into(src: &[f32], rows: usize, cols: usize, dst: &mut [f32]) {
    debug_assert_eq!(src.len(), rows * cols);
    debug_assert_eq!(dst.len(), rows * cols);
    // Tile by tile: walking a whole column of a large matrix misses the cache on every value,
    // and the lines of a taller tile of a matrix whose width is a large power of two fall in
    // the same cache sets, so a small square tile is the sweet spot.
    const TILE: usize = 16;
    for r0 in (0..rows).step_by(TILE) {
        for c0 in (0..cols).step_by(TILE) {
            let c1 = (c0 + TILE).min(cols);
            for r in r0..(r0 + TILE).min(rows) {
                for (c, &v) in src[r * cols + c0..r * cols + c1].iter().enumerate() {
                    dst[(c0 + c) * rows + r] = v;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transposed_moves_every_value_and_leaves_other_ranks_alone() {
        let (rows, cols) = (37, 50);
        let data: Vec<f32> = (0..rows * cols).map(|v| v as f32).collect();
        let t = Tensor::from_vec(&[rows, cols], data).unwrap();
        let tt = t.transposed();
        assert_eq!(tt.shape(), &[cols, rows]);
        for r in 0..rows {
            for c in 0..cols {
                assert_eq!(tt.data()[c * rows + r], t.data()[r * cols + c]);
            }
        }
        assert_eq!(tt.transposed(), t);
        let v = Tensor::from_vec(&[2, 3, 4], vec![1.0; 24]).unwrap();
        assert_eq!(v.transposed(), v);
    }
}
