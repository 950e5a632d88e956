//! Feedback matrices `B_l` (`classes x D_l`), one per feedback point.

use crate::error::{Error, Result};
use crate::init::{Rng, fill_uniform, kaiming_bound};
use crate::kernels::gemm::gemm;
use crate::layers::{Param, ParamMut};
use crate::model::Model;
use crate::tensor::Tensor;

/// How the feedback matrices start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeedbackInit {
    /// All zeros (DKP and FDFA in the reference).
    Zeros,
    /// Kaiming-uniform with bound `sqrt(6 / D_l)` (DFA in the reference).
    KaimingUniform,
}

/// The feedback matrices of a model's feedback points, named `<point>.feedbacks` and shaped
/// `[classes, point shape...]` as in the reference's `state_dict`.
#[derive(Clone, Debug)]
pub struct Feedback {
    names: Vec<String>,
    /// One matrix per feedback point, in forward order.
    pub(super) matrices: Vec<Param>,
}

impl Feedback {
    /// Feedback matrices for every feedback point of `model`.
    pub fn new(model: &Model, init: FeedbackInit, rng: &mut Rng) -> Self {
        match init {
            FeedbackInit::Zeros => Self::zeros(model),
            FeedbackInit::KaimingUniform => Self::build(model, |values, features| {
                fill_uniform(values, kaiming_bound(features), rng)
            }),
        }
    }

    /// Zero feedback matrices (DKP and FDFA in the reference): no random numbers needed.
    pub fn zeros(model: &Model) -> Self {
        Self::build(model, |_, _| {})
    }

    /// Matrices of zeros, each then filled by `fill(values, D_l)`.
    fn build(model: &Model, mut fill: impl FnMut(&mut [f32], usize)) -> Self {
        let classes = model.classes();
        let mut names = Vec::new();
        let mut matrices = Vec::new();
        for point in model.feedback_points() {
            let mut shape = vec![classes];
            shape.extend_from_slice(&point.shape);
            let mut value = Tensor::zeros(&shape);
            fill(value.data_mut(), point.features());
            names.push(format!("{}.feedbacks", point.name));
            matrices.push(Param::new(value));
        }
        Self { names, matrices }
    }

    /// The number of matrices.
    pub fn len(&self) -> usize {
        self.matrices.len()
    }

    /// Whether there is none (a model without hidden blocks).
    pub fn is_empty(&self) -> bool {
        self.matrices.is_empty()
    }

    /// The matrices with their gradients, one per feedback point in forward order
    /// (`[classes, point shape...]`).
    pub fn matrices(&self) -> &[Param] {
        &self.matrices
    }

    /// The names, `<point>.feedbacks`, in the order of [`matrices`](Self::matrices).
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Sets matrix `l`.
    ///
    /// # Errors
    /// [`Error::Shape`] when `value` does not have the matrix's shape;
    /// [`Error::InvalidConfig`] when there is no matrix `l`.
    pub fn set(&mut self, l: usize, value: &Tensor) -> Result<()> {
        let count = self.matrices.len();
        let (Some(name), Some(m)) = (self.names.get(l), self.matrices.get_mut(l)) else {
            return Err(Error::config(
                "feedback",
                "index",
                format!("matrix {l} of {count}"),
            ));
        };
        ParamMut::new(m)
            .set_value(value)
            .map_err(|_| Error::shape(name, format!("{:?}", m.value.shape()), value.shape()))
    }

    /// Visits every matrix with its name.
    pub fn visit_mut(&mut self, f: &mut dyn FnMut(&str, ParamMut<'_>)) {
        for (name, m) in self.names.iter().zip(&mut self.matrices) {
            f(name, ParamMut::new(m));
        }
    }

    /// Checks that there is one matrix per feedback point of `model`, of the point's shape.
    pub(super) fn check_model(&self, model: &Model) -> Result<()> {
        let points = model.feedback_points();
        if points.len() != self.matrices.len() {
            return Err(Error::config(
                "feedback",
                "matrices",
                format!(
                    "built for {} feedback points, the model has {}",
                    self.matrices.len(),
                    points.len()
                ),
            ));
        }
        for ((point, m), name) in points.iter().zip(&self.matrices).zip(&self.names) {
            // Compared in place: this runs on every step.
            let shape = m.value.shape();
            if shape.first() != Some(&model.classes()) || shape[1..] != point.shape[..] {
                let mut want = vec![model.classes()];
                want.extend_from_slice(&point.shape);
                return Err(Error::Shape {
                    layer: format!("{name} (built for another model?)"),
                    expected: format!("{want:?} for feedback point {}", point.name),
                    got: shape.to_vec(),
                });
            }
        }
        Ok(())
    }

    /// Writes the signal `g_l = e B_l` into `out`, shaped like `model.hidden(l)`.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] or [`Error::Shape`] when the matrices were built for
    /// another model, or `logits_grad` is not `[N, classes]` of the last forward.
    pub fn signal(
        &self,
        l: usize,
        model: &Model,
        logits_grad: &Tensor,
        out: &mut Tensor,
    ) -> Result<()> {
        self.check_model(model)?;
        if l >= self.matrices.len() {
            return Err(Error::config(
                "feedback",
                "index",
                format!("point {l} of {}", self.matrices.len()),
            ));
        }
        let h = model.hidden(l).primal();
        if logits_grad.shape() != [h.batch(), model.classes()] {
            return Err(Error::shape(
                "logits gradient",
                format!("[{}, {}]", h.batch(), model.classes()),
                logits_grad.shape(),
            ));
        }
        out.resize(h.shape());
        let b = self.matrices[l].value.matrix();
        gemm(1.0, logits_grad.matrix(), b, 0.0, out.matrix_mut());
        Ok(())
    }

    /// Trains every block with `e` (the output block) and `e B_l` (hidden blocks): the
    /// delivery shared by DFA, DKP and FDFA. The blocks train in parallel
    /// ([`Model::backward_local`]).
    ///
    /// # Errors
    /// [`crate::Error::Shape`] when `logits_grad` does not match the last forward.
    pub fn deliver(&self, model: &mut Model, logits_grad: &Tensor) -> Result<()> {
        self.deliver_blocks(model, logits_grad, 0..model.blocks().len())
    }

    /// The matrices, to set their gradients (block-parallel training).
    pub(crate) fn matrices_mut(&mut self) -> &mut [Param] {
        &mut self.matrices
    }

    /// [`deliver`](Self::deliver) to the blocks `blocks` alone.
    pub(crate) fn deliver_blocks(
        &self,
        model: &mut Model,
        logits_grad: &Tensor,
        blocks: std::ops::Range<usize>,
    ) -> Result<()> {
        self.check_model(model)?;
        model.backward_local_blocks(blocks, &|target, out| {
            match target {
                // A gradient of the wrong shape is the output layer's error to report.
                None => out.assign(logits_grad),
                Some(l) => {
                    let b = self.matrices[l].value.matrix();
                    if logits_grad.batch() != out.batch() || b.nrows() != logits_grad.row_len() {
                        return Err(crate::Error::shape(
                            "logits gradient",
                            format!("[{}, {}]", out.batch(), b.nrows()),
                            logits_grad.shape(),
                        ));
                    }
                    gemm(1.0, logits_grad.matrix(), b, 0.0, out.matrix_mut());
                }
            }
            Ok(())
        })
    }
}
