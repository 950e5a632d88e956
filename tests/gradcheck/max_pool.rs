//! `MaxPool2d`.
//!
//! Inputs are random permutations of a grid of spacing [`SPACING`] and directions are bounded
//! by 1, so a finite-difference step of [`H`] moves two values of a window by at most `2 H <
//! SPACING` relative to each other and never changes which one is the maximum. At a tie the
//! max is not differentiable, and a central difference would average the slopes of the tied
//! elements instead of routing to the first one.

use fdfa::layers::{Layer, MaxPool2d};
use fdfa::{Dual, Tensor};

use crate::common::*;

const H: f64 = 1e-2;
const SPACING: f32 = 0.1;

/// Directions uniform in `[-1, 1)`.
fn bounded_directions(shape: &[usize], k: usize, seed: u64) -> Vec<Tensor> {
    (0..k)
        .map(|j| uniform(shape, 1.0, seed + j as u64))
        .collect()
}

/// `(kernel, stride, [n, c, h, w])`: windows that tile the input, leave a row or column out
/// (floor rounding) and overlap; batch size 1.
const CASES: [(usize, usize, [usize; 4]); 5] = [
    (2, 2, [2, 3, 6, 6]),
    (2, 2, [1, 2, 5, 7]),
    (3, 2, [2, 2, 7, 9]),
    (3, 2, [1, 3, 6, 5]),
    (3, 3, [2, 1, 3, 3]),
];

fn pool(kernel: usize, stride: usize) -> MaxPool2d {
    MaxPool2d::new("pool", kernel, stride).unwrap()
}

fn describe(&(k, s, shape): &(usize, usize, [usize; 4])) -> String {
    format!("maxpool k{k} s{s} on {shape:?}")
}

/// The window maxima, directly.
fn naive(x: &Tensor, k: usize, s: usize) -> (Vec<usize>, Vec<f32>) {
    let [n, c, h, w] = x.shape().try_into().unwrap();
    let (oh, ow) = ((h - k) / s + 1, (w - k) / s + 1);
    let mut y = Vec::new();
    for plane in 0..n * c {
        for oy in 0..oh {
            for ox in 0..ow {
                let mut best = f32::NEG_INFINITY;
                for ky in 0..k {
                    for kx in 0..k {
                        best = best.max(x.data()[(plane * h + oy * s + ky) * w + ox * s + kx]);
                    }
                }
                y.push(best);
            }
        }
    }
    (vec![n, c, oh, ow], y)
}

#[test]
fn primal_matches_naive() {
    for (t, case) in CASES.iter().enumerate() {
        let &(k, s, shape) = case;
        let x = distinct(&shape, SPACING, 800 + t as u64);
        let y = train_primal(&pool(k, s), &x);
        let (want_shape, want) = naive(&x, k, s);
        assert_eq!(y.shape(), want_shape.as_slice(), "{}", describe(case));
        assert_bits_eq(&describe(case), y.data(), &want);
        let mut inferred = Tensor::default();
        pool(k, s).infer(&x, &mut inferred).unwrap();
        assert_bits_eq(&describe(case), inferred.data(), &want);
    }
}

#[test]
fn jvp_matches_finite_differences() {
    for (t, case) in CASES.iter().enumerate() {
        let &(k, s, shape) = case;
        let x = distinct(&shape, SPACING, 810 + t as u64);
        for kk in [1, 3] {
            let dirs = bounded_directions(&shape, kk, 820);
            check_jvp(
                &format!("{} k={kk}", describe(case)),
                &pool(k, s),
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
        let &(k, s, shape) = case;
        let x = distinct(&shape, SPACING, 830 + t as u64);
        check_backward(&describe(case), &pool(k, s), &x, 840, H, usize::MAX);
    }
}

#[test]
fn adjoint_identity() {
    for (t, case) in CASES.iter().enumerate() {
        let &(k, s, shape) = case;
        let x = distinct(&shape, SPACING, 850 + t as u64);
        check_adjoint(&describe(case), &pool(k, s), &x, 860, false);
    }
}

/// At a tie the signal goes through the first maximum in row-major window order, as in
/// PyTorch; an overlapping window (kernel 3, stride 2) routes twice through a shared maximum
/// and the backward adds both.
#[test]
fn ties_route_through_the_first_maximum() {
    let x = Tensor::from_vec(&[1, 1, 2, 2], vec![1.0, 3.0, 3.0, 3.0]).unwrap();
    let dx = Tensor::from_vec(&[1, 1, 2, 2], vec![10.0, 20.0, 30.0, 40.0]).unwrap();
    let mut p = pool(2, 2);
    let mut y = Dual::default();
    p.forward(&Dual::with_tangent(x.clone(), dx).unwrap(), &mut y)
        .unwrap();
    assert_eq!(y.tangent().unwrap().data(), &[20.0]);
    let mut gx = Tensor::default();
    let g = Tensor::from_vec(&[1, 1, 1, 1], vec![1.0]).unwrap();
    p.backward(&x, y.primal(), &g, Some(&mut gx)).unwrap();
    assert_eq!(gx.data(), &[0.0, 1.0, 0.0, 0.0]);

    // The centre of a 5x5 input is the maximum of all four 3x3 windows.
    let mut x = distinct(&[1, 1, 5, 5], SPACING, 870);
    x.data_mut()[12] = 100.0;
    let mut p = pool(3, 2);
    let mut y = Dual::default();
    p.forward(&Dual::new(x.clone()), &mut y).unwrap();
    assert_eq!(y.primal().data(), &[100.0; 4]);
    let g = Tensor::from_vec(&[1, 1, 2, 2], vec![1.0, 2.0, 3.0, 4.0]).unwrap();
    p.backward(&x, y.primal(), &g, Some(&mut gx)).unwrap();
    assert_eq!(gx.data()[12], 10.0);
    assert_eq!(gx.data().iter().sum::<f32>(), 10.0);
}

#[test]
fn batched_equals_per_sample() {
    for (t, case) in CASES.iter().enumerate() {
        let &(k, s, shape) = case;
        let x = distinct(&shape, SPACING, 880 + t as u64);
        let dirs = bounded_directions(&shape, 3, 890);
        check_per_sample(&describe(case), &pool(k, s), &x, &dirs, &[]);
    }
}

#[test]
fn wrong_shapes_are_errors() {
    let p = MaxPool2d::new("pool_2", 3, 2).unwrap();
    check_rejects(&p, &[1, 2, 2, 5]); // smaller than the window
    check_rejects(&p, &[1, 2, 5, 2]);
    check_rejects(&p, &[2, 25]);
    check_rejects(&p, &[0, 1, 5, 5]);
    check_rejects_grad(&p, &distinct(&[1, 2, 5, 5], SPACING, 899));
}

#[test]
fn reused_buffers_give_fresh_results() {
    for (t, case) in CASES.iter().enumerate() {
        let &(k, s, shape) = case;
        let x = distinct(&shape, SPACING, 900 + t as u64);
        for kk in [0, 1, 3] {
            let dirs = bounded_directions(&shape, kk, 910);
            check_buffer_reuse(
                &format!("{} k={kk}", describe(case)),
                &pool(k, s),
                &x,
                &dirs,
                &[],
            );
        }
    }
}

/// Window maxima equal a direct computation for the specialised window sizes (2, 3) and the
/// general path (1, 4), with strides that tile, skip and overlap; a NaN wins its window.
#[test]
fn maxima_match_a_direct_computation_and_nan_wins() {
    for (k, s) in [
        (1, 1),
        (2, 1),
        (2, 2),
        (3, 1),
        (3, 2),
        (3, 3),
        (4, 2),
        (4, 3),
    ] {
        let shape = [2, 3, 9, 11];
        let mut x = uniform(&shape, 1.0, 40 + k as u64);
        x.data_mut()[5 * 11 + 4] = f32::NAN;
        let mut y = Tensor::default();
        pool(k, s).infer(&x, &mut y).unwrap();
        let (oh, ow) = ((9 - k) / s + 1, (11 - k) / s + 1);
        assert_eq!(y.shape(), &[2, 3, oh, ow]);
        for plane in 0..6 {
            let xs = &x.data()[plane * 99..][..99];
            for oy in 0..oh {
                for ox in 0..ow {
                    let window = (0..k).flat_map(|ky| (0..k).map(move |kx| (ky, kx)));
                    let values: Vec<f32> = window
                        .map(|(ky, kx)| xs[(oy * s + ky) * 11 + ox * s + kx])
                        .collect();
                    let got = y.data()[(plane * oh + oy) * ow + ox];
                    if values.iter().any(|v| v.is_nan()) {
                        assert!(got.is_nan(), "k{k} s{s} ({oy}, {ox})");
                    } else {
                        let want = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                        assert_eq!(got, want, "k{k} s{s} plane {plane} ({oy}, {ox})");
                    }
                }
            }
        }
    }
}
