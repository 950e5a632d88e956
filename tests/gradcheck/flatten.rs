//! `Flatten`: a copy under a new shape.

use fdfa::Tensor;
use fdfa::layers::Flatten;

use crate::common::*;

const H: f64 = 1e-2;

#[test]
fn primal_is_the_input_reshaped() {
    let x = randn(&[2, 3, 4, 5], 700);
    let y = train_primal(&Flatten::new("flatten"), &x);
    assert_eq!(y.shape(), &[2, 60]);
    assert_bits_eq("flatten", y.data(), x.data());
    let y = train_primal(&Flatten::new("flatten"), &randn(&[3, 4], 701));
    assert_eq!(y.shape(), &[3, 4]);
}

#[test]
fn jvp_matches_finite_differences() {
    let shape = [2, 3, 2, 3];
    let x = randn(&shape, 710);
    for k in [1, 3] {
        let dirs = directions(&shape, k, 720);
        check_jvp(
            &format!("flatten k={k}"),
            &Flatten::new("flatten"),
            &x,
            &dirs,
            &[],
            H,
        );
    }
}

#[test]
fn backward_matches_finite_differences() {
    let x = randn(&[2, 3, 2, 3], 730);
    check_backward("flatten", &Flatten::new("flatten"), &x, 740, H, usize::MAX);
}

#[test]
fn adjoint_identity() {
    let x = randn(&[3, 2, 5, 1], 750);
    check_adjoint("flatten", &Flatten::new("flatten"), &x, 760, false);
}

#[test]
fn batched_equals_per_sample() {
    let shape = [4, 2, 3, 3];
    let x = randn(&shape, 770);
    check_per_sample(
        "flatten",
        &Flatten::new("flatten"),
        &x,
        &directions(&shape, 3, 780),
        &[],
    );
}

#[test]
fn wrong_shapes_are_errors() {
    let f = Flatten::new("flatten_1");
    check_rejects(&f, &[6]);
    check_rejects(&f, &[0, 2, 3]);
    check_rejects_grad(&f, &Tensor::zeros(&[2, 2, 3]));
}

#[test]
fn reused_buffers_give_fresh_results() {
    let shape = [3, 2, 2, 3];
    let x = randn(&shape, 790);
    for k in [0, 1, 3] {
        let dirs = directions(&shape, k, 791);
        check_buffer_reuse(
            &format!("flatten k={k}"),
            &Flatten::new("flatten"),
            &x,
            &dirs,
            &[],
        );
    }
}
