//! `BatchNorm` in training mode (batch statistics, which couple the samples) and in inference
//! mode (running statistics), 1-D and 2-D.

use fdfa::layers::{BatchNorm, BatchNormConfig, Layer};
use fdfa::{Dual, Tensor};

use crate::common::*;

/// BatchNorm is smooth; with inputs of unit scale the `O(h²)` truncation error of a step of
/// `1e-2` is about `1e-4` relative.
const H: f64 = 1e-2;

/// `[N, F]` and `[N, C, H, W]` inputs, batch size 1 in 2-D (several values per channel).
const SHAPES: [&[usize]; 4] = [&[5, 4], &[3, 3], &[3, 2, 3, 4], &[1, 3, 3, 5]];

/// A layer with a non-trivial scale and shift (and running statistics).
fn layer(shape: &[usize], seed: u64) -> BatchNorm {
    configured(shape, seed, |c| c)
}

/// [`layer`] with its configuration changed by `f`.
fn configured(
    shape: &[usize],
    seed: u64,
    f: impl FnOnce(BatchNormConfig) -> BatchNormConfig,
) -> BatchNorm {
    let c = shape[1];
    let config = if shape.len() == 2 {
        BatchNormConfig::d1(c)
    } else {
        BatchNormConfig::d2(c)
    };
    let mut l = f(config.with_name("bn")).init().unwrap();
    let ones = Tensor::from_vec(&[c], vec![1.0; c]).unwrap();
    l.set("weight", &axpy(&ones, 0.5, &randn(&[c], seed)))
        .unwrap();
    l.set("bias", &randn(&[c], seed + 1)).unwrap();
    l.set("running_mean", &randn(&[c], seed + 2)).unwrap();
    l.set(
        "running_var",
        &axpy(&ones, 0.5, &uniform(&[c], 1.0, seed + 3)),
    )
    .unwrap();
    l
}

/// An input with a different mean and scale per element: `1.5 z + 0.3`.
fn input(shape: &[usize], seed: u64) -> Tensor {
    let z = randn(shape, seed);
    let shift = Tensor::from_vec(shape, vec![0.3; z.len()]).unwrap();
    axpy(&shift, 1.5, &z)
}

fn describe(shape: &[usize]) -> String {
    format!(
        "bn{}d {shape:?}",
        shape.len() - 2 + usize::from(shape.len() == 2)
    )
}

/// Per-channel `(mean, biased variance)` over the batch and spatial axes, in `f64`.
fn batch_stats(x: &Tensor) -> (Vec<f64>, Vec<f64>) {
    let (n, c) = (x.shape()[0], x.shape()[1]);
    let s: usize = x.shape()[2..].iter().product();
    let m = (n * s) as f64;
    let at = |i: usize, ch: usize, j: usize| x.data()[(i * c + ch) * s + j] as f64;
    let mut mean = vec![0.0; c];
    let mut var = vec![0.0; c];
    for ch in 0..c {
        for i in 0..n {
            for j in 0..s {
                mean[ch] += at(i, ch, j) / m;
            }
        }
        for i in 0..n {
            for j in 0..s {
                var[ch] += (at(i, ch, j) - mean[ch]).powi(2) / m;
            }
        }
    }
    (mean, var)
}

/// `gamma (x - mean) / sqrt(var + eps) + beta` per channel, in `f64`.
fn normalise(x: &Tensor, mean: &[f64], var: &[f64], l: &BatchNorm) -> Vec<f64> {
    let c = x.shape()[1];
    let s: usize = x.shape()[2..].iter().product();
    let eps = l.config().eps as f64;
    x.data()
        .iter()
        .enumerate()
        .map(|(idx, &v)| {
            let ch = (idx / s) % c;
            let (g, b) = (l.weight().data()[ch] as f64, l.bias().data()[ch] as f64);
            g * (v as f64 - mean[ch]) / (var[ch] + eps).sqrt() + b
        })
        .collect()
}

fn to_f64(t: &Tensor) -> Vec<f64> {
    t.data().iter().map(|&v| v as f64).collect()
}

#[test]
fn training_primal_matches_naive() {
    for (t, shape) in SHAPES.iter().enumerate() {
        let l = layer(shape, 300 + t as u64);
        let x = input(shape, 310 + t as u64);
        let (mean, var) = batch_stats(&x);
        let want = normalise(&x, &mean, &var, &l);
        let got = train_primal(&l, &x);
        assert_close_f64(&describe(shape), &to_f64(&got), &want, 1e-5, 1e-5);
    }
}

#[test]
fn training_jvp_matches_finite_differences() {
    for (t, shape) in SHAPES.iter().enumerate() {
        let l = layer(shape, 320 + t as u64);
        let x = input(shape, 330 + t as u64);
        for k in [1, 3] {
            let dirs = directions(shape, k, 340);
            check_jvp(&format!("{} k={k}", describe(shape)), &l, &x, &dirs, &[], H);
        }
    }
}

#[test]
fn training_backward_matches_finite_differences() {
    for (t, shape) in SHAPES.iter().enumerate() {
        let l = layer(shape, 350 + t as u64);
        let x = input(shape, 360 + t as u64);
        check_backward(&describe(shape), &l, &x, 370 + t as u64, H, usize::MAX);
    }
}

#[test]
fn training_adjoint_identity() {
    for (t, shape) in SHAPES.iter().enumerate() {
        let l = layer(shape, 380 + t as u64);
        let x = input(shape, 390 + t as u64);
        check_adjoint(&describe(shape), &l, &x, 400, false);
        check_adjoint(&format!("{} + params", describe(shape)), &l, &x, 401, true);
    }
}

/// `d(y) = gamma d(x̂) + d(gamma) x̂ + d(beta)`, with zero, one and three input tangents, and
/// each parameter direction alone.
#[test]
fn parameter_tangents_match_finite_differences() {
    for (t, shape) in SHAPES.iter().enumerate() {
        let mut l = layer(shape, 410 + t as u64);
        let x = input(shape, 420 + t as u64);
        let all = param_directions(&mut l, 430);
        for k in [0, 1, 3] {
            let dirs = directions(shape, k, 440);
            let name = format!("{} params k={k}", describe(shape));
            check_jvp(&name, &l, &x, &dirs, &all, H);
        }
        for one in &all {
            let name = format!("{} {} only", describe(shape), one.0);
            check_jvp(
                &name,
                &l,
                &x,
                &directions(shape, 1, 450),
                std::slice::from_ref(one),
                H,
            );
        }
    }
}

/// One training forward moves the running statistics by `momentum` towards the batch mean
/// and the unbiased batch variance (`m / (m - 1)` times the biased one, `m = n h w`), and
/// counts the batch; inference then uses them. Momentum 0 keeps the old statistics, 1 takes
/// the batch's.
#[test]
fn running_statistics_follow_the_momentum_update() {
    for (t, shape) in SHAPES.iter().enumerate() {
        assert_eq!(layer(shape, 0).config().momentum, 0.1, "PyTorch's default");
        for momentum in [0.1f32, 0.3, 0.0, 1.0] {
            let name = format!("{} momentum {momentum}", describe(shape));
            let mut l = configured(shape, 460 + t as u64, |c| c.with_momentum(momentum));
            let (old_mean, old_var) = (to_f64(l.running_mean()), to_f64(l.running_var()));
            let x = input(shape, 470 + t as u64);
            let (mean, var) = batch_stats(&x);
            let s: usize = shape[2..].iter().product();
            let m = (shape[0] * s) as f64;
            let mo = momentum as f64;
            let want_mean: Vec<f64> = old_mean
                .iter()
                .zip(&mean)
                .map(|(o, b)| (1.0 - mo) * o + mo * b)
                .collect();
            let want_var: Vec<f64> = old_var
                .iter()
                .zip(&var)
                .map(|(o, b)| (1.0 - mo) * o + mo * b * m / (m - 1.0))
                .collect();
            l.forward(&Dual::new(x.clone()), &mut Dual::default())
                .unwrap();
            assert_close_f64(
                &format!("{name}: running_mean"),
                &to_f64(l.running_mean()),
                &want_mean,
                1e-6,
                1e-6,
            );
            assert_close_f64(
                &format!("{name}: running_var"),
                &to_f64(l.running_var()),
                &want_var,
                1e-6,
                1e-6,
            );
            assert_eq!(l.num_batches_tracked(), 1, "{name}: num_batches_tracked");

            let x2 = input(shape, 480 + t as u64);
            let mut y = Tensor::default();
            l.infer(&x2, &mut y).unwrap();
            let want = normalise(&x2, &to_f64(l.running_mean()), &to_f64(l.running_var()), &l);
            assert_close_f64(
                &format!("{name}: inference after the update"),
                &to_f64(&y),
                &want,
                1e-5,
                1e-5,
            );
        }
    }
}

/// Inference uses the running statistics (set to non-trivial values), does not couple the
/// samples (batched equals per-sample, bit for bit) and takes a batch of one.
#[test]
fn inference_uses_running_statistics() {
    for (t, shape) in SHAPES.iter().enumerate() {
        let l = layer(shape, 490 + t as u64);
        let x = input(shape, 500 + t as u64);
        let mut y = Tensor::default();
        l.infer(&x, &mut y).unwrap();
        let want = normalise(&x, &to_f64(l.running_mean()), &to_f64(l.running_var()), &l);
        assert_close_f64(&describe(shape), &to_f64(&y), &want, 1e-5, 1e-5);
        for i in 0..x.batch() {
            let mut yi = Tensor::default();
            l.infer(&sample(&x, i), &mut yi).unwrap();
            assert_bits_eq(
                &format!("{} sample {i}", describe(shape)),
                yi.data(),
                y.row(i),
            );
        }
    }
}

/// With one value per channel the batch variance is zero and the unbiased one undefined;
/// PyTorch refuses the batch ("Expected more than 1 value per channel when training") and so
/// does the layer, leaving its running statistics untouched. Inference takes it.
#[test]
fn training_with_one_value_per_channel_is_an_error() {
    for shape in [&[1usize, 4][..], &[1, 3, 1, 1]] {
        let mut l = layer(shape, 510);
        let before = (l.running_mean().clone(), l.running_var().clone());
        let x = input(shape, 511);
        assert_shape_error(
            l.forward(&Dual::new(x.clone()), &mut Dual::default()),
            "bn",
            shape,
        );
        assert_eq!((l.running_mean().clone(), l.running_var().clone()), before);
        assert_eq!(l.num_batches_tracked(), 0);
        let mut y = Tensor::default();
        l.infer(&x, &mut y).unwrap();
        assert!(y.is_finite());
    }
}

#[test]
fn wrong_shapes_are_errors() {
    let d1 = layer(&[2, 4], 520);
    check_rejects(&d1, &[2, 5]);
    check_rejects(&d1, &[2, 4, 3, 3]);
    check_rejects(&d1, &[0, 4]);
    check_rejects_grad(&d1, &input(&[3, 4], 521));
    let d2 = layer(&[2, 3, 4, 4], 522);
    check_rejects(&d2, &[2, 3]);
    check_rejects(&d2, &[2, 4, 4, 4]);
    check_rejects(&d2, &[2, 3, 4]);
    check_rejects_grad(&d2, &input(&[2, 3, 2, 2], 523));
}

#[test]
fn reused_buffers_give_fresh_results() {
    for (t, shape) in SHAPES.iter().enumerate() {
        let mut l = layer(shape, 530 + t as u64);
        let x = input(shape, 540 + t as u64);
        let p = param_directions(&mut l, 550);
        for k in [0, 1, 3] {
            let dirs = directions(shape, k, 560);
            check_buffer_reuse(&format!("{} k={k}", describe(shape)), &l, &x, &dirs, &[]);
            let name = format!("{} k={k} + params", describe(shape));
            check_buffer_reuse(&name, &l, &x, &dirs, &p);
        }
    }
}

/// A large `eps` (0.5, against unit variances) weighs as much as the variance: the JVP, the
/// backward and the primal must all normalise by `sqrt(var + eps)`, not `sqrt(var)`.
#[test]
fn large_eps_is_honoured() {
    for (t, shape) in SHAPES.iter().enumerate() {
        let mut l = configured(shape, 570 + t as u64, |c| c.with_eps(0.5));
        let x = input(shape, 580 + t as u64);
        let name = format!("{} eps 0.5", describe(shape));
        let (mean, var) = batch_stats(&x);
        let got = train_primal(&l, &x);
        assert_close_f64(
            &name,
            &to_f64(&got),
            &normalise(&x, &mean, &var, &l),
            1e-5,
            1e-5,
        );
        let p = param_directions(&mut l, 590);
        check_jvp(&name, &l, &x, &directions(shape, 2, 591), &p, H);
        check_backward(&name, &l, &x, 592, H, usize::MAX);
        check_adjoint(&name, &l, &x, 593, true);
        let mut y = Tensor::default();
        l.infer(&x, &mut y).unwrap();
        let want = normalise(&x, &to_f64(l.running_mean()), &to_f64(l.running_var()), &l);
        assert_close_f64(&format!("{name} inference"), &to_f64(&y), &want, 1e-5, 1e-5);
    }
}
