//! One epoch on real MNIST with the reference's defaults (batch 64, Adam 1e-4), the
//! accuracies the reference reaches: FC-2 at least 96.5% under BP and FDFA and 94% under DFA
//! and DKP; the shallow CNN at least 98% under FDFA.
//!
//! These train for real and need `cargo test --release`; a debug build skips them, and so
//! does a copy without `data/mnist` (the published package), saying so.

mod common;

use std::ops::ControlFlow;
use std::path::Path;

use fdfa::data::{DatasetName, load};
use fdfa::rules::RuleKind;
use fdfa::train::{TrainConfig, Trainer};

fn one_epoch(dir: &Path, kind: RuleKind, conv: bool) -> f64 {
    let (train, test) = load(DatasetName::Mnist, Some(dir)).unwrap();
    let mut rng = fdfa::init::rng(1);
    let model = if conv {
        fdfa::model::shallow_cnn(&[1, 28, 28], 10, &mut rng).unwrap()
    } else {
        fdfa::model::fc(&[1, 28, 28], 2, 800, 10, &mut rng).unwrap()
    };
    let rule = kind.build(&model, 1, &mut rng).unwrap();
    let config = TrainConfig::default().with_epochs(1);
    let mut trainer = Trainer::new(model, rule, config).unwrap();
    let records = trainer
        .fit(&*train, &*test, &mut |_| ControlFlow::Continue(()))
        .unwrap();
    let r = records[0];
    eprintln!(
        "{kind} {}: training loss {:.4}, test loss {:.4}, accuracy {:.2}%",
        if conv { "CNN" } else { "FC-2" },
        r.train_loss,
        r.test_loss,
        r.test_accuracy
    );
    r.test_accuracy
}

macro_rules! accuracy_test {
    ($($name:ident: $kind:expr, $conv:expr, $min:expr;)*) => {$(
        #[test]
        #[cfg_attr(debug_assertions, ignore = "trains on all of MNIST: run with --release")]
        fn $name() {
            let Some(dir) = common::mnist_or_skip(stringify!($name)) else { return };
            let acc = one_epoch(&dir, $kind, $conv);
            assert!(acc >= $min, "test accuracy {acc:.2}% below {}%", $min);
        }
    )*};
}

accuracy_test! {
    fc2_bp_one_epoch: RuleKind::Bp, false, 96.5;
    fc2_fdfa_one_epoch: RuleKind::Fdfa, false, 96.5;
    fc2_dfa_one_epoch: RuleKind::Dfa, false, 94.0;
    fc2_dkp_one_epoch: RuleKind::Dkp, false, 94.0;
    cnn_fdfa_one_epoch: RuleKind::Fdfa, true, 98.0;
}
