//! No public way in can break a layer's invariants: every setter given a tensor of the wrong
//! shape returns an error naming the tensor and leaves the layer computing as before.

use fdfa::layers::{BatchNormConfig, Conv2dConfig, Layer, LinearConfig, StateMut};
use fdfa::model::fc;
use fdfa::rules::RuleKind;
use fdfa::{Error, Tensor};

/// `result` is an [`Error::Shape`] whose layer starts with `layer`.
fn assert_shape<T: std::fmt::Debug>(result: fdfa::Result<T>, layer: &str) {
    match result {
        Err(Error::Shape { layer: got, .. }) => {
            assert!(
                got.starts_with(layer),
                "error names {got}, expected {layer}"
            )
        }
        other => panic!("expected a shape error naming {layer}, got {other:?}"),
    }
}

/// The inference output of `layer` on `x`.
fn infer(layer: &dyn Layer, x: &Tensor) -> Tensor {
    let mut y = Tensor::default();
    layer.infer(x, &mut y).unwrap();
    y
}

#[test]
fn conv2d_weight_of_the_wrong_shape_is_an_error_not_a_panic() {
    let mut rng = fdfa::init::rng(0);
    let mut conv = Conv2dConfig::new(1, 2, 3)
        .with_name("conv")
        .init(&mut rng)
        .unwrap();
    let x = Tensor::from_vec(&[1, 1, 4, 4], (0..16).map(|i| i as f32).collect()).unwrap();
    let before = infer(&conv, &x);
    // Same number of values as [2, 1, 3, 3] would be 18; this one panicked inside ndarray.
    assert_shape(
        conv.set_weight(&Tensor::zeros(&[2, 1, 3, 4])),
        "conv.weight",
    );
    assert_shape(conv.set_weight(&Tensor::zeros(&[18])), "conv.weight");
    assert_shape(conv.set_bias(&Tensor::zeros(&[3])), "conv.bias");
    assert_eq!(infer(&conv, &x), before);
    conv.set_weight(&Tensor::zeros(&[2, 1, 3, 3])).unwrap();
    conv.set_bias(&Tensor::zeros(&[2])).unwrap();
    assert!(infer(&conv, &x).data().iter().all(|&v| v == 0.0));
}

#[test]
fn linear_and_batch_norm_setters_check_shapes() {
    let mut rng = fdfa::init::rng(0);
    let mut fc_layer = LinearConfig::new(3, 2)
        .with_name("fc")
        .init(&mut rng)
        .unwrap();
    let x = Tensor::from_vec(&[1, 3], vec![0.5, -1.0, 2.0]).unwrap();
    let before = infer(&fc_layer, &x);
    // `[3, 2]` is the layout the layer computes with, not PyTorch's.
    assert_shape(fc_layer.set_weight(&Tensor::zeros(&[3, 2])), "fc.weight");
    assert_shape(fc_layer.set_bias(&Tensor::zeros(&[3])), "fc.bias");
    assert_eq!(infer(&fc_layer, &x), before);
    assert!(
        LinearConfig::new(3, 2)
            .with_bias(false)
            .init(&mut rng)
            .unwrap()
            .set_bias(&Tensor::zeros(&[2]))
            .is_err()
    );

    let mut bn = BatchNormConfig::d1(3).with_name("bn").init().unwrap();
    for name in ["weight", "bias", "running_mean", "running_var"] {
        assert_shape(bn.set(name, &Tensor::zeros(&[4])), &format!("bn.{name}"));
    }
    assert!(matches!(
        bn.set("gamma", &Tensor::zeros(&[3])),
        Err(Error::InvalidConfig { .. })
    ));
}

#[test]
fn state_views_and_feedback_check_shapes() {
    let mut rng = fdfa::init::rng(0);
    let mut model = fc(&[1, 2, 2], 1, 5, 3, &mut rng).unwrap();
    let x = Tensor::from_vec(&[2, 1, 2, 2], (0..8).map(|i| i as f32 * 0.1).collect()).unwrap();
    let before = model.infer(&x).unwrap().clone();
    let mut errors = 0;
    model.visit_state_mut(&mut |_, state| {
        let bad = Tensor::zeros(&[7]);
        match state {
            StateMut::Param(mut p) => {
                errors += usize::from(p.set_value(&bad).is_err());
                errors += usize::from(p.set_grad(&bad).is_err());
            }
            StateMut::Buffer(mut b) => errors += usize::from(b.set(&bad).is_err()),
            StateMut::Counter(_) => {}
        }
    });
    // Two parameters of each linear layer and of BatchNorm, each twice; two buffers.
    assert_eq!(errors, 2 * 6 + 2);
    assert_eq!(model.infer(&x).unwrap(), &before);

    let mut rule = RuleKind::Fdfa.build(&model, 1, &mut rng).unwrap();
    let fb = rule.feedback_mut().unwrap();
    assert_shape(fb.set(0, &Tensor::zeros(&[5, 3])), "fc_dfa.0.feedbacks");
    assert!(fb.set(1, &Tensor::zeros(&[3, 5])).is_err());
    fb.set(0, &Tensor::zeros(&[3, 5])).unwrap();
}

/// A rule built for another model is refused with a message that says so, before any work.
#[test]
fn a_rule_built_for_another_model_is_an_error() {
    let mut rng = fdfa::init::rng(0);
    let small = fc(&[1, 2, 2], 1, 5, 3, &mut rng).unwrap();
    let mut big = fc(&[1, 2, 2], 1, 8, 3, &mut rng).unwrap();
    let x = Tensor::zeros(&[2, 1, 2, 2]);
    for kind in [RuleKind::Dfa, RuleKind::Dkp, RuleKind::Fdfa] {
        let mut rule = kind.build(&small, 1, &mut rng).unwrap();
        let err = rule.step(&mut big, &x, &[0, 1], &mut rng).unwrap_err();
        assert!(
            err.to_string().contains("built for another model"),
            "{kind}: {err}"
        );
    }
}

/// Data with more classes than the model has logits is refused before the first batch, with
/// its own error kind; so is a label the model cannot score at evaluation.
#[test]
fn a_class_count_mismatch_is_its_own_error_before_any_batch() {
    use fdfa::data::Dataset;
    use fdfa::train::{TrainConfig, Trainer};
    let pixels: Vec<u8> = (0..40 * 4).map(|i| (i * 7 % 256) as u8).collect();
    let labels: Vec<u32> = (0..40).map(|i| i % 10).collect();
    let data = Dataset::new(pixels, labels, [1, 2, 2], 10).unwrap();
    let mut rng = fdfa::init::rng(0);
    let model = fc(&[1, 2, 2], 1, 5, 2, &mut rng).unwrap();
    let rule = RuleKind::Fdfa.build(&model, 1, &mut rng).unwrap();
    let config = TrainConfig::default().with_batch_size(8).with_epochs(1);
    let mut trainer = Trainer::new(model, rule, config).unwrap();
    let err = trainer
        .fit(&data, &data, &mut |_| std::ops::ControlFlow::Continue(()))
        .unwrap_err();
    assert!(
        matches!(err, Error::ClassMismatch { data: 10, model: 2 }),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "the data has 10 classes but the model outputs 2 logits per sample"
    );
    assert_eq!(trainer.progress().batch, 0, "no batch ran");
}
