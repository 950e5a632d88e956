//! PyTorch's default initialisers, seeded.
//!
//! Every random number of the crate comes from an explicit generator of type [`Rng`]
//! (ChaCha8: portable, fast, and its state can be saved and restored exactly).

use ndarray_rand::rand::{Rng as _, SeedableRng};
use ndarray_rand::rand_distr::StandardNormal;

use crate::tensor::Tensor;

/// The crate's random generator.
pub type Rng = rand_chacha::ChaCha8Rng;

/// A generator seeded from a `u64`.
///
/// ```
/// use ndarray_rand::rand::Rng as _;
/// let mut a = fdfa::init::rng(7);
/// let mut b = fdfa::init::rng(7);
/// assert_eq!(a.random::<u64>(), b.random::<u64>());
/// ```
pub fn rng(seed: u64) -> Rng {
    Rng::seed_from_u64(seed)
}

/// A tensor of values uniform in `[-bound, bound)`.
pub fn uniform(shape: &[usize], bound: f32, rng: &mut Rng) -> Tensor {
    let mut t = Tensor::zeros(shape);
    fill_uniform(t.data_mut(), bound, rng);
    t
}

/// Fills `data` with values uniform in `[-bound, bound)`.
pub fn fill_uniform(data: &mut [f32], bound: f32, rng: &mut Rng) {
    for v in data {
        *v = (rng.random::<f32>() * 2.0 - 1.0) * bound;
    }
}

/// Fills `data` with standard normal values.
pub fn fill_normal(data: &mut [f32], rng: &mut Rng) {
    for v in data {
        *v = rng.sample(StandardNormal);
    }
}

/// Fills `data` with standard normal values from stream `stream` of `seed`.
///
/// For the bulk of random numbers a step needs (FDFA's directions, a few million a step on
/// a CNN), a xoshiro256++ generator does the work at a fraction of ChaCha8's cost; it is
/// seeded from `(seed, stream)`, so the values depend on nothing else.
pub fn fill_normal_fast(data: &mut [f32], seed: u64, stream: u64) {
    let mixed = seed ^ stream.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(mixed);
    for v in data {
        *v = rng.sample(StandardNormal);
    }
}

/// PyTorch's default for `Linear` and `Conv2d` weights: Kaiming-uniform with `a = sqrt(5)`,
/// i.e. uniform in `+-1/sqrt(fan_in)`; biases use the same bound.
pub fn default_bound(fan_in: usize) -> f32 {
    if fan_in == 0 {
        0.0
    } else {
        1.0 / (fan_in as f32).sqrt()
    }
}

/// Kaiming-uniform bound for ReLU gain, `sqrt(6 / fan_in)`, which the reference uses for
/// DFA's fixed feedback matrices (with `fan_in` the feature count of the feedback point).
pub fn kaiming_bound(fan_in: usize) -> f32 {
    if fan_in == 0 {
        0.0
    } else {
        (6.0 / fan_in as f32).sqrt()
    }
}
