//! A learning rule written outside the crate: direct feedback alignment with *sign-only*
//! feedback, where every hidden block receives `e S_l` through a fixed matrix of random signs
//! scaled by `1/sqrt(classes)`. It uses nothing but the public `Model` primitives, and trains
//! with the crate's `Trainer` like the built-in rules.
//!
//! ```text
//! cargo run --release --example custom_rule -- 1      # epochs (default 1)
//! ```

use std::ops::ControlFlow;

use fdfa::init::Rng;
use fdfa::loss::cross_entropy;
use fdfa::model::Model;
use fdfa::rules::{LearningRule, StepReport};
use fdfa::{Result, Tensor};
use ndarray::linalg::general_mat_mul;
use ndarray_rand::rand::Rng as _;

/// DFA with fixed random-sign feedback.
#[derive(Debug)]
struct SignDfa {
    /// One `[classes, D_l]` matrix of `+-1/sqrt(classes)` per feedback point.
    signs: Vec<Tensor>,
    logits_grad: Tensor,
}

impl SignDfa {
    fn new(model: &Model, rng: &mut Rng) -> Self {
        let classes = model.classes();
        let scale = 1.0 / (classes as f32).sqrt();
        let signs = model
            .feedback_points()
            .iter()
            .map(|p| {
                let values = (0..classes * p.features())
                    .map(|_| if rng.random::<bool>() { scale } else { -scale })
                    .collect();
                Tensor::from_vec(&[classes, p.features()], values)
            })
            .collect::<Result<_>>()
            .unwrap_or_default();
        Self {
            signs,
            logits_grad: Tensor::default(),
        }
    }
}

impl LearningRule for SignDfa {
    fn name(&self) -> &str {
        "SignDFA"
    }

    fn step(
        &mut self,
        model: &mut Model,
        x: &Tensor,
        targets: &[usize],
        _rng: &mut Rng,
    ) -> Result<StepReport> {
        // 1. A plain forward (no tangents needed), the loss and e = dL/dy.
        let logits = model.forward_train(x, &mut |_, _| Ok(()))?;
        let loss = cross_entropy(logits.primal(), targets, &mut self.logits_grad)?;
        // 2. Every block learns at once, each from the gradient of its own output: the output
        //    layer from its true gradient e, every hidden block from e S_l (shaped like h_l).
        let e = &self.logits_grad;
        model.backward_local(&|point, out| {
            match point {
                None => out.assign(e),
                Some(l) => general_mat_mul(
                    1.0,
                    &e.matrix(),
                    &self.signs[l].matrix(),
                    0.0,
                    &mut out.matrix_mut(),
                ),
            }
            Ok(())
        })?;
        Ok(StepReport { loss })
    }
}

fn main() -> Result<()> {
    let epochs: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1);
    let (train, test) = fdfa::data::load(fdfa::data::DatasetName::Mnist, None)?;
    let mut rng = fdfa::init::rng(1);
    let model = fdfa::model::fc(&[1, 28, 28], 2, 800, 10, &mut rng)?;
    let rule = Box::new(SignDfa::new(&model, &mut rng));
    let config = fdfa::train::TrainConfig::default().with_epochs(epochs);
    let mut trainer = fdfa::train::Trainer::new(model, rule, config)?;
    for r in trainer.fit(&*train, &*test, &mut |_| ControlFlow::Continue(()))? {
        println!(
            "epoch {}: training loss {:.4}, test loss {:.4}, test accuracy {:.2}%",
            r.epoch, r.train_loss, r.test_loss, r.test_accuracy
        );
    }
    Ok(())
}
