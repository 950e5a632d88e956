//! Feedback matrices `B_l` (`classes x D_l`), one per feedback point.

use crate::error::Result;
use crate::init::{Rng, fill_uniform, kaiming_bound};
use crate::kernels::gemm::gemm;
use crate::layers::Param;
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
    pub matrices: Vec<Param>,
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

    /// Visits every matrix with its name.
    pub fn visit(&mut self, f: &mut dyn FnMut(&str, &mut Param)) {
        for (name, m) in self.names.iter().zip(&mut self.matrices) {
            f(name, m);
        }
    }

    /// Writes the signal `g_l = e B_l` into `out`, shaped like `model.hidden(l)`.
    pub fn signal(&self, l: usize, model: &Model, logits_grad: &Tensor, out: &mut Tensor) {
        out.resize(model.hidden(l).primal().shape());
        let b = self.matrices[l].value.matrix();
        gemm(1.0, logits_grad.matrix(), b, 0.0, out.matrix_mut());
    }

    /// Trains every block with `e` (the output block) and `e B_l` (hidden blocks): the
    /// delivery shared by DFA, DKP and FDFA. The blocks train in parallel
    /// ([`Model::backward_local`]).
    ///
    /// # Errors
    /// [`crate::Error::Shape`] when `logits_grad` does not match the last forward.
    pub fn deliver(&self, model: &mut Model, logits_grad: &Tensor) -> Result<()> {
        model.backward_local(&|target, out| {
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
