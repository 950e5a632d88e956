//! `Relu`.
//!
//! Inputs are kept at least [`MARGIN`] away from zero and directions are bounded by 1, so a
//! finite-difference step of [`H`] never crosses the kink at zero, where the function has no
//! derivative and a central difference straddling it would read half the slope.

use fdfa::layers::{Layer, Relu};
use fdfa::{Dual, Tensor};

use crate::common::*;

const H: f64 = 1e-2;
const MARGIN: f32 = 0.1;

/// Directions uniform in `[-1, 1)`: a step moves an input by at most `H < MARGIN`.
fn bounded_directions(shape: &[usize], k: usize, seed: u64) -> Vec<Tensor> {
    (0..k)
        .map(|j| uniform(shape, 1.0, seed + j as u64))
        .collect()
}

const SHAPES: [&[usize]; 3] = [&[3, 7], &[2, 3, 4, 5], &[1, 6]];

#[test]
fn primal_is_the_positive_part() {
    for (t, shape) in SHAPES.iter().enumerate() {
        let x = away_from_zero(shape, MARGIN, 600 + t as u64);
        let y = train_primal(&Relu::new("relu"), &x);
        let want: Vec<f32> = x
            .data()
            .iter()
            .map(|&v| if v > 0.0 { v } else { 0.0 })
            .collect();
        assert_bits_eq(&format!("relu {shape:?}"), y.data(), &want);
        assert!(want.contains(&0.0) && want.iter().any(|&v| v > 0.0));
    }
}

#[test]
fn jvp_matches_finite_differences() {
    for (t, shape) in SHAPES.iter().enumerate() {
        let x = away_from_zero(shape, MARGIN, 610 + t as u64);
        for k in [1, 3] {
            let dirs = bounded_directions(shape, k, 620);
            check_jvp(
                &format!("relu {shape:?} k={k}"),
                &Relu::new("relu"),
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
    for (t, shape) in SHAPES.iter().enumerate() {
        let x = away_from_zero(shape, MARGIN, 630 + t as u64);
        check_backward(
            &format!("relu {shape:?}"),
            &Relu::new("relu"),
            &x,
            640,
            H,
            usize::MAX,
        );
    }
}

#[test]
fn adjoint_identity() {
    for (t, shape) in SHAPES.iter().enumerate() {
        let x = away_from_zero(shape, MARGIN, 650 + t as u64);
        check_adjoint(
            &format!("relu {shape:?}"),
            &Relu::new("relu"),
            &x,
            660,
            false,
        );
    }
}

/// PyTorch's convention at the kink: the derivative at exactly zero is zero, in the JVP and
/// in the backward alike.
#[test]
fn derivative_at_zero_is_zero() {
    let x = Tensor::from_vec(&[1, 3], vec![0.0, -0.0, 1.0]).unwrap();
    let dx = Tensor::from_vec(&[1, 3], vec![1.0, 1.0, 1.0]).unwrap();
    let mut relu = Relu::new("relu");
    let mut y = Dual::default();
    relu.forward(&Dual::with_tangent(x.clone(), dx.clone()).unwrap(), &mut y)
        .unwrap();
    assert_eq!(y.tangent().unwrap().data(), &[0.0, 0.0, 1.0]);
    let mut gx = Tensor::default();
    relu.backward(&x, y.primal(), &dx, Some(&mut gx)).unwrap();
    assert_eq!(gx.data(), &[0.0, 0.0, 1.0]);
}

#[test]
fn batched_equals_per_sample() {
    let shape = [4, 2, 3, 3];
    let x = away_from_zero(&shape, MARGIN, 670);
    check_per_sample(
        "relu",
        &Relu::new("relu"),
        &x,
        &bounded_directions(&shape, 3, 680),
        &[],
    );
}

#[test]
fn wrong_shapes_are_errors() {
    let relu = Relu::new("relu_3");
    check_rejects(&relu, &[0, 3]);
    check_rejects(&relu, &[]);
    check_rejects_grad(&relu, &away_from_zero(&[2, 3], MARGIN, 690));
    // A backward with tensors that never held values (no forward ran).
    let empty = Tensor::default();
    let mut gx = Tensor::default();
    assert!(
        relu.clone()
            .backward(&empty, &empty, &Tensor::zeros(&[]), Some(&mut gx))
            .is_err()
    );
}

#[test]
fn reused_buffers_give_fresh_results() {
    let shape = [3, 2, 2, 3];
    let x = away_from_zero(&shape, MARGIN, 695);
    for k in [0, 1, 3] {
        let dirs = bounded_directions(&shape, k, 696);
        check_buffer_reuse(&format!("relu k={k}"), &Relu::new("relu"), &x, &dirs, &[]);
    }
}
