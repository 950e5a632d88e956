//! Results do not depend on the number of threads: a training forward (with tangents) and
//! backward give bit-identical outputs, tangents and gradients in a pool of one thread and in
//! a pool of two.

mod common;

use fdfa::layers::{Conv2dConfig, Layer, LinearConfig};
use fdfa::{Dual, Tensor};

use common::{assert_bits_eq, forward_with, param_directions, randn, stack};

/// Everything a training step computes: the output and its tangents, the input gradient and
/// the parameter gradients.
fn step<L: Layer + Clone>(
    layer: &L,
    x: &Tensor,
    dirs: &[Tensor],
    seed: u64,
) -> Vec<(String, Tensor)> {
    let mut l = layer.clone();
    let p = param_directions(&mut l, seed);
    let mut y = Dual::default();
    forward_with(
        &mut l,
        &Dual::with_tangents(x.clone(), stack(dirs), dirs.len()).unwrap(),
        &p,
        &mut y,
    )
    .unwrap();
    let r = randn(y.primal().shape(), seed + 10);
    let mut gx = Tensor::default();
    l.backward(x, y.primal(), &r, Some(&mut gx)).unwrap();
    let mut out = vec![
        ("output".to_string(), y.primal().clone()),
        ("tangents".to_string(), y.tangent().unwrap().clone()),
        ("input gradient".to_string(), gx),
    ];
    for name in common::param_names(&l) {
        let g = common::param(&mut l, &name).grad;
        out.push((format!("{name} gradient"), g));
    }
    out
}

fn in_pool<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> T {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
        .install(f)
}

fn assert_same(name: &str, one: &[(String, Tensor)], two: &[(String, Tensor)]) {
    assert_eq!(one.len(), two.len());
    for ((what, a), (_, b)) in one.iter().zip(two) {
        assert_eq!(a.shape(), b.shape(), "{name}: {what} shape");
        assert_bits_eq(
            &format!("{name}: {what}, 1 vs 2 threads"),
            a.data(),
            b.data(),
        );
    }
}

/// Batch 64 of 3x32x32 through a 3->16 5x5 convolution: well above the parallel threshold
/// (`64 * 16 * 28 * 28 * 75` multiply-adds), and 16 backward tasks of 4 samples whose weight
/// gradients are reduced in task order.
#[test]
fn conv2d_is_bit_identical_with_one_and_two_threads() {
    let conv = Conv2dConfig::new(3, 16, 5)
        .init(&mut fdfa::init::rng(5))
        .unwrap();
    let x = randn(&[64, 3, 32, 32], 1);
    let dirs = vec![randn(&[64, 3, 32, 32], 2), randn(&[64, 3, 32, 32], 3)];
    let one = in_pool(1, || step(&conv, &x, &dirs, 4));
    let two = in_pool(2, || step(&conv, &x, &dirs, 4));
    assert_same("conv", &one, &two);
}

/// Batch 64 through a 512x512 linear layer: the matrix products are split into blocks of 64
/// rows or columns computed in parallel.
#[test]
fn linear_is_bit_identical_with_one_and_two_threads() {
    let fc = LinearConfig::new(512, 512)
        .init(&mut fdfa::init::rng(6))
        .unwrap();
    let x = randn(&[64, 512], 11);
    let dirs = vec![randn(&[64, 512], 12), randn(&[64, 512], 13)];
    let one = in_pool(1, || step(&fc, &x, &dirs, 14));
    let two = in_pool(2, || step(&fc, &x, &dirs, 14));
    assert_same("linear", &one, &two);
}
