//! The non-finite guard: a NaN or an infinity in the loss, a gradient or a parameter stops
//! training with an error naming the tensor, the epoch and the batch.

use fdfa::Error;
use fdfa::layers::{State, StateMut};
use fdfa::rules::RuleKind;
use fdfa::train::checkpoint::{RunInfo, save_trainer};

use super::{Setup, TempDir, go, mnist};

/// `(tensor, epoch, batch)` of an [`Error::NonFinite`], checking its message.
fn nonfinite(err: Error) -> (String, usize, usize) {
    let message = err.to_string();
    match err {
        Error::NonFinite {
            tensor,
            epoch,
            batch,
        } => {
            assert_eq!(
                message,
                format!("non-finite value in {tensor} at epoch {epoch}, batch {batch}")
            );
            (tensor, epoch, batch)
        }
        other => panic!("expected Error::NonFinite, got {other:?}"),
    }
}

#[test]
fn a_nan_weight_stops_training_at_the_loss() {
    let Some(_) = crate::common::mnist_or_skip("a_nan_weight_stops_training_at_the_loss") else {
        return;
    };
    let mut t = Setup::new(RuleKind::Dkp).trainer();
    t.model_mut().visit_state_mut(&mut |name, state| {
        if let (true, StateMut::Param(mut p)) = (name == "fc_out.weight", state) {
            p.storage_mut().0[0] = f32::NAN;
        }
    });
    let err = t.train_epoch(&mnist().0, &mut go).unwrap_err();
    assert_eq!(nonfinite(err), ("loss".to_string(), 1, 1));
}

#[test]
fn a_nan_feedback_matrix_stops_training_at_the_gradient_it_reaches() {
    let Some(_) = crate::common::mnist_or_skip(
        "a_nan_feedback_matrix_stops_training_at_the_gradient_it_reaches",
    ) else {
        return;
    };
    let mut t = Setup::new(RuleKind::Fdfa).trainer();
    let (train, _) = mnist();
    t.train_epoch(train, &mut |ev| match ev.batch {
        2 => std::ops::ControlFlow::Break(()),
        _ => std::ops::ControlFlow::Continue(()),
    })
    .unwrap();
    let fb = t.rule_mut().feedback_mut().unwrap();
    let mut b1 = fb.matrices()[1].value.clone();
    b1.data_mut()[7] = f32::NAN;
    fb.set(1, &b1).unwrap();
    let err = t.train_epoch(train, &mut go).unwrap_err();
    // The forward pass does not use B_1, so the loss stays finite; the NaN first shows in
    // the gradient of B_1 itself (B - d u^T / N), and the feedback group is checked first
    // because its optimizer steps first.
    assert_eq!(
        nonfinite(err),
        ("fc_dfa.1.feedbacks.grad".to_string(), 1, 3)
    );
    // Block 1's weights, trained with e B_1, are poisoned too.
    let mut poisoned = false;
    t.model().visit_state(&mut |name, state| {
        if let (true, State::Param(p)) = (name == "fc_hidden.1.weight", state) {
            poisoned = !p.grad().is_finite();
        }
    });
    assert!(poisoned);
}

#[test]
fn an_absurd_learning_rate_stops_training() {
    let Some(_) = crate::common::mnist_or_skip("an_absurd_learning_rate_stops_training") else {
        return;
    };
    let mut t = Setup {
        lr: 1e30,
        ..Setup::new(RuleKind::Fdfa)
    }
    .trainer();
    let (tensor, epoch, batch) = nonfinite(t.train_epoch(&mnist().0, &mut go).unwrap_err());
    assert_eq!(epoch, 1);
    assert!((1..=16).contains(&batch), "{batch}");
    assert!(!tensor.is_empty());
}

#[test]
fn a_non_finite_record_is_not_saved() {
    let Some(_) = crate::common::mnist_or_skip("a_non_finite_record_is_not_saved") else {
        return;
    };
    let tmp = TempDir::new("nonfinite-record");
    let mut t = Setup::new(RuleKind::Bp).trainer();
    // Infinite logits make the test loss NaN (inf - inf) at the end of epoch 1.
    t.model_mut().visit_state_mut(&mut |name, state| {
        if let (true, StateMut::Param(mut p)) = (name == "fc_out.weight", state) {
            p.storage_mut().0.fill(f32::MAX);
        }
    });
    let record = t.finish_epoch(2.0, &mnist().1).unwrap();
    assert!(!record.test_loss.is_finite());
    let err = save_trainer(tmp.path(), &mut t, &RunInfo::default()).unwrap_err();
    assert_eq!(nonfinite(err), ("test loss".to_string(), 1, 0));
    assert!(!tmp.path().join("state.json").exists());
}
