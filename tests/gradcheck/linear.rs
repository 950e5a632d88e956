//! `Linear`: `y = x Wᵀ + b`.

use fdfa::Tensor;
use fdfa::layers::{Layer, Linear, LinearConfig};

use crate::common::*;

/// The affine map is exact under central differences; the step only sets the rounding noise.
const H: f64 = 1e-2;

fn layer(d_in: usize, d_out: usize, bias: bool) -> Linear {
    LinearConfig::new(d_in, d_out)
        .with_bias(bias)
        .with_name("fc")
        .init(&mut fdfa::init::rng(1))
        .unwrap()
}

/// `x Wᵀ + b` in `f64`, from the layer's weight in PyTorch's layout (`[d_out, d_in]`).
fn naive(x: &Tensor, l: &Linear) -> Vec<f64> {
    let (n, d_in, d_out) = (x.batch(), l.d_in(), l.d_out());
    let weight = l.weight();
    let w = weight.data();
    let mut y = vec![0.0; n * d_out];
    for i in 0..n {
        for o in 0..d_out {
            let b = l.bias().map_or(0.0, |b| b.data()[o] as f64);
            y[i * d_out + o] = b
                + (0..d_in)
                    .map(|p| x.data()[i * d_in + p] as f64 * w[o * d_in + p] as f64)
                    .sum::<f64>();
        }
    }
    y
}

#[test]
fn primal_matches_naive() {
    for bias in [true, false] {
        let l = layer(7, 5, bias);
        let x = randn(&[3, 7], 10);
        let got = train_primal(&l, &x);
        assert_eq!(got.shape(), &[3, 5]);
        let want = naive(&x, &l);
        let got64: Vec<f64> = got.data().iter().map(|&v| v as f64).collect();
        assert_close_f64(&format!("linear bias={bias}"), &got64, &want, 1e-5, 1e-6);
        let mut inferred = Tensor::default();
        l.infer(&x, &mut inferred).unwrap();
        assert_bits_eq("infer == training primal", inferred.data(), got.data());
    }
}

#[test]
fn jvp_matches_finite_differences() {
    for bias in [true, false] {
        let l = layer(7, 5, bias);
        for (n, k) in [(3, 1), (3, 3), (1, 1), (1, 3)] {
            let x = randn(&[n, 7], 11);
            let dirs = directions(&[n, 7], k, 20);
            check_jvp(
                &format!("linear n={n} k={k} bias={bias}"),
                &l,
                &x,
                &dirs,
                &[],
                H,
            );
        }
    }
}

#[test]
fn backward_matches_finite_differences() {
    for (n, bias) in [(3, true), (1, true), (4, false)] {
        let l = layer(7, 5, bias);
        let x = randn(&[n, 7], 12);
        check_backward(
            &format!("linear n={n} bias={bias}"),
            &l,
            &x,
            30,
            H,
            usize::MAX,
        );
    }
}

#[test]
fn adjoint_identity() {
    for bias in [true, false] {
        let l = layer(9, 6, bias);
        let x = randn(&[4, 9], 13);
        check_adjoint(&format!("linear bias={bias}"), &l, &x, 40, false);
        check_adjoint(&format!("linear bias={bias} + params"), &l, &x, 41, true);
    }
}

/// `d(y) = d(x) Wᵀ + x d(W)ᵀ + d(b)`: with no input tangent (k = 0 becomes one tangent), one
/// or three input tangents, and with the weight or the bias direction alone.
#[test]
fn parameter_tangents_match_finite_differences() {
    let mut l = layer(7, 5, true);
    let x = randn(&[3, 7], 14);
    let all = param_directions(&mut l, 50);
    for k in [0, 1, 3] {
        let dirs = directions(&[3, 7], k, 60);
        check_jvp(&format!("linear params k={k}"), &l, &x, &dirs, &all, H);
        for one in &all {
            let name = format!("linear {} only k={k}", one.0);
            check_jvp(&name, &l, &x, &dirs, std::slice::from_ref(one), H);
        }
    }
    let mut l = layer(7, 5, false);
    let w = param_directions(&mut l, 51);
    check_jvp("linear no bias, weight tangent", &l, &x, &[], &w, H);
}

#[test]
fn batched_equals_per_sample() {
    let mut l = layer(7, 5, true);
    let x = randn(&[5, 7], 15);
    let dirs = directions(&[5, 7], 3, 70);
    check_per_sample("linear", &l, &x, &dirs, &[]);
    let p = param_directions(&mut l, 80);
    check_per_sample("linear + params", &l, &x, &dirs, &p);
    check_per_sample("linear k=0 + params", &l, &x, &[], &p);
}

/// Large enough for the matrix product to be split into parallel blocks (more than 64 output
/// columns and `m n k` above the parallel threshold): per-sample results still agree bit for
/// bit.
#[test]
fn batched_equals_per_sample_in_parallel_blocks() {
    let l = layer(300, 130, true);
    let x = randn(&[9, 300], 16);
    let dirs = directions(&[9, 300], 2, 90);
    check_per_sample("linear 300x130", &l, &x, &dirs, &[]);
}

#[test]
fn wrong_shapes_are_errors() {
    let l = layer(7, 5, true);
    check_rejects(&l, &[2, 6]);
    check_rejects(&l, &[2, 7, 1]);
    check_rejects(&l, &[7]);
    check_rejects(&l, &[0, 7]);
    check_rejects_grad(&l, &randn(&[2, 7], 17));
}

/// A weight of the wrong shape (the stored `[in, out]`, another rank) is refused by every
/// way in, naming the tensor, and the layer is left as it was; PyTorch's layout goes through.
#[test]
fn a_weight_of_the_wrong_shape_is_an_error() {
    let x = randn(&[2, 7], 21);
    let mut before = Tensor::default();
    layer(7, 5, true).infer(&x, &mut before).unwrap();
    for bad in [vec![5, 6], vec![7, 5], vec![5, 7, 1]] {
        let mut l = layer(7, 5, true);
        let err = l.set_weight(&Tensor::zeros(&bad)).unwrap_err();
        assert!(
            matches!(&err, fdfa::Error::Shape { layer, .. } if layer.starts_with("fc.weight")),
            "{bad:?}: {err}"
        );
        assert!(with_param(&mut l, "weight", |mut p| p.set_value(&Tensor::zeros(&bad))).is_err());
        assert!(with_param(&mut l, "weight", |mut p| p.set_grad(&Tensor::zeros(&bad))).is_err());
        let mut out = Tensor::default();
        l.infer(&x, &mut out).unwrap();
        assert_eq!(out, before, "{bad:?}: the layer is unchanged");
    }
    let mut l = layer(7, 5, true);
    assert!(l.set_bias(&Tensor::zeros(&[4])).is_err());
    assert!(with_param(&mut l, "bias", |mut p| p.set_value(&Tensor::zeros(&[4]))).is_err());
    // The right shape in PyTorch's layout goes through.
    l.set_weight(&Tensor::zeros(&[5, 7])).unwrap();
    with_param(&mut l, "weight", |mut p| {
        p.set_value(&Tensor::zeros(&[5, 7]))
    })
    .unwrap();
    let mut out = Tensor::default();
    l.infer(&x, &mut out).unwrap();
}

#[test]
fn reused_buffers_give_fresh_results() {
    let mut l = layer(7, 5, true);
    let x = randn(&[3, 7], 18);
    let p = param_directions(&mut l, 19);
    for k in [0, 1, 3] {
        let dirs = directions(&[3, 7], k, 20);
        check_buffer_reuse(&format!("linear k={k}"), &l, &x, &dirs, &[]);
        check_buffer_reuse(&format!("linear k={k} + params"), &l, &x, &dirs, &p);
    }
}
