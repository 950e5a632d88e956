//! `AdaptiveAvgPool2d`, with PyTorch's windows.

use fdfa::Tensor;
use fdfa::layers::{AdaptiveAvgPool2d, Layer};

use crate::common::*;

/// The pooling is linear: central differences are exact up to rounding.
const H: f64 = 1e-2;

/// PyTorch's windows `[floor(i in / out), ceil((i + 1) in / out))`, written out by hand.
fn windows(len: usize, out: usize) -> &'static [(usize, usize)] {
    match (len, out) {
        (13, 6) => &[(0, 3), (2, 5), (4, 7), (6, 9), (8, 11), (10, 13)],
        (5, 2) => &[(0, 3), (2, 5)],
        (7, 3) => &[(0, 3), (2, 5), (4, 7)],
        (6, 6) => &[(0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (5, 6)],
        (4, 1) => &[(0, 4)],
        _ => unreachable!("no windows written for {len} -> {out}"),
    }
}

/// `(out_h, out_w, [n, c, h, w])`: AlexNet's 13x13 to 6x6, a non-square 5x7 to 2x3 with
/// overlapping windows, the identity 6x6 and a global average.
const CASES: [(usize, usize, [usize; 4]); 4] = [
    (6, 6, [2, 2, 13, 13]),
    (2, 3, [2, 3, 5, 7]),
    (6, 6, [2, 2, 6, 6]),
    (1, 1, [1, 3, 4, 4]),
];

fn pool(oh: usize, ow: usize) -> AdaptiveAvgPool2d {
    AdaptiveAvgPool2d::new("avgpool", oh, ow).unwrap()
}

fn describe(&(oh, ow, shape): &(usize, usize, [usize; 4])) -> String {
    format!("avgpool to {oh}x{ow} on {shape:?}")
}

fn naive(x: &Tensor, oh: usize, ow: usize) -> Vec<f64> {
    let [n, c, h, w] = x.shape().try_into().unwrap();
    let mut y = Vec::new();
    for plane in 0..n * c {
        for &(y0, y1) in windows(h, oh) {
            for &(x0, x1) in windows(w, ow) {
                let mut sum = 0.0;
                for yy in y0..y1 {
                    for xx in x0..x1 {
                        sum += x.data()[(plane * h + yy) * w + xx] as f64;
                    }
                }
                y.push(sum / ((y1 - y0) * (x1 - x0)) as f64);
            }
        }
    }
    y
}

#[test]
fn primal_matches_naive() {
    for (t, case) in CASES.iter().enumerate() {
        let &(oh, ow, shape) = case;
        let x = randn(&shape, 900 + t as u64);
        let y = train_primal(&pool(oh, ow), &x);
        assert_eq!(y.shape(), &[shape[0], shape[1], oh, ow]);
        let got: Vec<f64> = y.data().iter().map(|&v| v as f64).collect();
        assert_close_f64(&describe(case), &got, &naive(&x, oh, ow), 1e-6, 1e-6);
        let mut inferred = Tensor::default();
        pool(oh, ow).infer(&x, &mut inferred).unwrap();
        assert_bits_eq(&describe(case), inferred.data(), y.data());
    }
}

/// Pooling a 6x6 input to 6x6 averages single elements: the identity, exactly.
#[test]
fn same_size_is_the_identity() {
    let x = randn(&[2, 2, 6, 6], 910);
    let dx = randn(&[2, 2, 6, 6], 911);
    let mut p = pool(6, 6);
    let mut y = fdfa::Dual::default();
    p.forward(
        &fdfa::Dual::with_tangent(x.clone(), dx.clone()).unwrap(),
        &mut y,
    )
    .unwrap();
    assert_bits_eq("identity primal", y.primal().data(), x.data());
    assert_bits_eq("identity tangent", y.tangent().unwrap().data(), dx.data());
}

#[test]
fn jvp_matches_finite_differences() {
    for (t, case) in CASES.iter().enumerate() {
        let &(oh, ow, shape) = case;
        let x = randn(&shape, 920 + t as u64);
        for k in [1, 3] {
            let dirs = directions(&shape, k, 930);
            check_jvp(
                &format!("{} k={k}", describe(case)),
                &pool(oh, ow),
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
    for (t, case) in CASES.iter().enumerate() {
        let &(oh, ow, shape) = case;
        let x = randn(&shape, 940 + t as u64);
        check_backward(&describe(case), &pool(oh, ow), &x, 950, H, usize::MAX);
    }
}

#[test]
fn adjoint_identity() {
    for (t, case) in CASES.iter().enumerate() {
        let &(oh, ow, shape) = case;
        let x = randn(&shape, 960 + t as u64);
        check_adjoint(&describe(case), &pool(oh, ow), &x, 970, false);
    }
}

#[test]
fn batched_equals_per_sample() {
    for (t, case) in CASES.iter().enumerate() {
        let &(oh, ow, shape) = case;
        let x = randn(&shape, 980 + t as u64);
        check_per_sample(
            &describe(case),
            &pool(oh, ow),
            &x,
            &directions(&shape, 3, 990),
            &[],
        );
    }
}

#[test]
fn wrong_shapes_are_errors() {
    let p = AdaptiveAvgPool2d::new("avgpool_1", 6, 6).unwrap();
    check_rejects(&p, &[2, 13, 13]);
    check_rejects(&p, &[1, 2, 0, 13]);
    check_rejects(&p, &[0, 2, 13, 13]);
    check_rejects_grad(&p, &randn(&[1, 2, 13, 13], 999));
}

#[test]
fn reused_buffers_give_fresh_results() {
    for (t, case) in CASES.iter().enumerate() {
        let &(oh, ow, shape) = case;
        let x = randn(&shape, 1000 + t as u64);
        for k in [0, 1, 3] {
            let dirs = directions(&shape, k, 1010);
            check_buffer_reuse(
                &format!("{} k={k}", describe(case)),
                &pool(oh, ow),
                &x,
                &dirs,
                &[],
            );
        }
    }
}
