//! The library as a new user drives it: a network from the builder, inference from `&self`,
//! a training loop of one's own through `Trainer::train_batch`, and forward-mode JVPs of a
//! whole network checked against finite differences.

use fdfa::model::{Mode, Sequential};
use fdfa::prelude::*;

fn input(n: usize, d: usize, seed: u32) -> Tensor {
    let data = (0..n * d)
        .map(|i| {
            let v = (i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8;
            (v % 2000) as f32 / 1000.0 - 1.0
        })
        .collect();
    Tensor::from_vec(&[n, d], data).unwrap()
}

/// A network with every kind of layer whose JVP differs between its training and inference
/// maps (BatchNorm) and piecewise-linear ones (ReLU, max pooling).
fn cnn(rng: &mut fdfa::init::Rng) -> Model {
    Sequential::new(&[1, 6, 6])
        .conv2d(3, 3)
        .batch_norm()
        .relu()
        .max_pool(2, 2)
        .feedback()
        .flatten()
        .linear(5)
        .batch_norm()
        .relu()
        .feedback()
        .linear(3)
        .build(rng)
        .unwrap()
}

/// Moves the running statistics away from their initial values, so that inference and
/// training differ.
fn warm(model: &mut Model, x: &Tensor) {
    for _ in 0..3 {
        model.forward_train(x, &mut |_, _| Ok(())).unwrap();
    }
}

/// Every buffer and counter of a model (the running statistics).
fn buffers(model: &Model) -> Vec<f32> {
    let mut all = Vec::new();
    model.visit_state(&mut |_, s| match s {
        State::Buffer(t) => all.extend_from_slice(t.data()),
        State::Counter(c) => all.push(c as f32),
        State::Param(_) => {}
    });
    all
}

/// Central differences of `f` at `x` along `v`, in f64 steps of `h`.
fn central(f: &mut dyn FnMut(&Tensor) -> Tensor, x: &Tensor, v: &Tensor, h: f32) -> Vec<f32> {
    let shifted = |s: f32| {
        let data = x
            .data()
            .iter()
            .zip(v.data())
            .map(|(a, b)| a + s * h * b)
            .collect();
        Tensor::from_vec(x.shape(), data).unwrap()
    };
    let (up, down) = (f(&shifted(1.0)), f(&shifted(-1.0)));
    up.data()
        .iter()
        .zip(down.data())
        .map(|(u, d)| (u - d) / (2.0 * h))
        .collect()
}

fn assert_close(jvp: &[f32], fd: &[f32], what: &str) {
    let scale = fd.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    for (i, (a, b)) in jvp.iter().zip(fd).enumerate() {
        assert!(
            (a - b).abs() <= 2e-2 * scale,
            "{what}[{i}]: jvp {a}, finite difference {b}"
        );
    }
}

#[test]
fn jvp_in_eval_mode_matches_finite_differences_of_inference() {
    let mut rng = fdfa::init::rng(3);
    let mut model = cnn(&mut rng);
    let x = input(4, 36, 1);
    let x = Tensor::from_vec(&[4, 1, 6, 6], x.into_vec()).unwrap();
    warm(&mut model, &x);
    let v = Tensor::from_vec(&[4, 1, 6, 6], input(4, 36, 9).into_vec()).unwrap();
    let (logits, tangent) = model.jvp(&x, &v, Mode::Eval).unwrap();
    assert_eq!(logits, model.logits(&x).unwrap());
    let fd = central(&mut |x| model.logits(x).unwrap(), &x, &v, 1e-3);
    assert_close(tangent.data(), &fd, "eval tangent");
}

#[test]
fn jvp_in_train_mode_matches_finite_differences_and_keeps_running_statistics() {
    let mut rng = fdfa::init::rng(4);
    let mut model = cnn(&mut rng);
    let x = Tensor::from_vec(&[4, 1, 6, 6], input(4, 36, 2).into_vec()).unwrap();
    warm(&mut model, &x);
    let before = buffers(&model);
    let v = Tensor::from_vec(&[4, 1, 6, 6], input(4, 36, 5).into_vec()).unwrap();
    let (logits, tangent) = model.jvp(&x, &v, Mode::Train).unwrap();
    assert_eq!(before, buffers(&model));
    // The training map, batch statistics included, differentiated by finite differences.
    let mut train_logits = |x: &Tensor| {
        model
            .forward_train(x, &mut |_, _| Ok(()))
            .unwrap()
            .primal()
            .clone()
    };
    assert_eq!(logits, train_logits(&x));
    let fd = central(&mut train_logits, &x, &v, 1e-3);
    assert_close(tangent.data(), &fd, "train tangent");
}

#[test]
fn k_directions_at_once_equal_k_single_jvps() {
    let mut rng = fdfa::init::rng(5);
    let mut model = cnn(&mut rng);
    let x = Tensor::from_vec(&[3, 1, 6, 6], input(3, 36, 3).into_vec()).unwrap();
    warm(&mut model, &x);
    let dirs: Vec<Tensor> = (0..4)
        .map(|s| Tensor::from_vec(&[3, 1, 6, 6], input(3, 36, 10 + s).into_vec()).unwrap())
        .collect();
    let stacked = Tensor::from_vec(
        &[4, 3, 1, 6, 6],
        dirs.iter().flat_map(|d| d.data().to_vec()).collect(),
    )
    .unwrap();
    for mode in [Mode::Eval, Mode::Train] {
        let (_, all) = model.jvp(&x, &stacked, mode).unwrap();
        assert_eq!(all.shape(), &[4, 3, 3]);
        for (i, d) in dirs.iter().enumerate() {
            let (_, one) = model.jvp(&x, d, mode).unwrap();
            assert_eq!(one.shape(), &[3, 3]);
            assert_eq!(
                &all.data()[i * 9..(i + 1) * 9],
                one.data(),
                "{mode:?}, direction {i}"
            );
        }
    }
}

#[test]
fn jvp_refuses_bad_directions_and_a_backward_after_it() {
    let mut rng = fdfa::init::rng(6);
    let mut model = Sequential::new(&[4])
        .linear(3)
        .relu()
        .feedback()
        .linear(2)
        .build(&mut rng)
        .unwrap();
    let x = input(2, 4, 1);
    model.forward_train(&x, &mut |_, _| Ok(())).unwrap();
    assert!(matches!(
        model.jvp(&x, &input(3, 4, 1), Mode::Eval),
        Err(Error::Shape { .. })
    ));
    assert!(matches!(
        model.jvp(&x, &Tensor::zeros(&[0, 2, 4]), Mode::Eval),
        Err(Error::Shape { .. })
    ));
    model.jvp(&x, &input(2, 4, 7), Mode::Eval).unwrap();
    let err = model.backward(&Tensor::zeros(&[2, 2])).unwrap_err();
    assert!(matches!(err, Error::BackwardBeforeForward), "{err}");
}

#[test]
fn inference_from_shared_references_takes_flat_inputs() {
    let mut rng = fdfa::init::rng(7);
    let mut model = cnn(&mut rng);
    let images = Tensor::from_vec(&[5, 1, 6, 6], input(5, 36, 4).into_vec()).unwrap();
    warm(&mut model, &images);
    let flat = input(5, 36, 4);
    let expected = model.infer(&images).unwrap().clone();
    let model = &model;
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| model.logits(&flat).unwrap());
        let b = s.spawn(|| model.logits(&images).unwrap());
        (a.join().unwrap(), b.join().unwrap())
    });
    assert_eq!(a, expected);
    assert_eq!(b, expected);
    let p = model.predict_proba(&flat).unwrap();
    let classes = model.predict(&flat).unwrap();
    for (i, row) in p.data().chunks(3).enumerate() {
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        let best = expected.data()[i * 3..(i + 1) * 3]
            .iter()
            .enumerate()
            .fold(0, |b, (j, v)| {
                if *v > expected.data()[i * 3 + b] {
                    j
                } else {
                    b
                }
            });
        assert_eq!(classes[i], best);
    }
    // Images of another size with as many values are not the model's input.
    let wrong = Tensor::from_vec(&[5, 1, 4, 9], flat.data().to_vec()).unwrap();
    assert!(matches!(model.logits(&wrong), Err(Error::Shape { .. })));
}

#[test]
fn a_loop_of_ones_own_trains_with_train_batch() {
    let mut rng = fdfa::init::rng(8);
    let model = Sequential::new(&[4])
        .linear(16)
        .batch_norm()
        .relu()
        .feedback()
        .linear(2)
        .build(&mut rng)
        .unwrap();
    let rule = RuleKind::Fdfa.build(&model, 1, &mut rng).unwrap();
    let config = TrainConfig::default().with_lr(1e-2).with_b_lr(1e-2);
    let mut trainer = Trainer::new(model, rule, config).unwrap();
    let x = input(64, 4, 2);
    // Class 1 when the first two features sum above zero.
    let targets: Vec<usize> = x
        .data()
        .chunks(4)
        .map(|r| usize::from(r[0] + r[1] > 0.0))
        .collect();
    let first = trainer.train_batch(&x, &targets).unwrap();
    let mut last = first;
    for _ in 0..200 {
        last = trainer.train_batch(&x, &targets).unwrap();
    }
    assert!(last < 0.5 * first, "{first} -> {last}");
    let right = trainer
        .model()
        .predict(&x)
        .unwrap()
        .iter()
        .zip(&targets)
        .filter(|(p, t)| p == t)
        .count();
    assert!(right >= 60, "{right} of 64");
    // The schedule and the position are the loop's: untouched.
    assert_eq!(trainer.progress().epoch, 0);
    assert_eq!(trainer.progress().batch, 0);

    let err = trainer.train_batch(&x, &targets[..10]).unwrap_err();
    assert!(matches!(err, Error::Shape { .. }), "{err}");
    let mut bad = targets.clone();
    bad[5] = 2;
    let err = trainer.train_batch(&x, &bad).unwrap_err();
    assert!(
        matches!(
            err,
            Error::LabelOutOfRange {
                label: 2,
                index: 5,
                classes: 2,
                ..
            }
        ),
        "{err}"
    );
    let err = trainer.train_batch(&input(64, 5, 1), &targets).unwrap_err();
    assert!(matches!(err, Error::InputMismatch { .. }), "{err}");
    let mut poisoned = x.clone();
    poisoned.data_mut()[3] = f32::NAN;
    let err = trainer.train_batch(&poisoned, &targets).unwrap_err();
    assert!(matches!(err, Error::NonFinite { .. }), "{err}");
}
