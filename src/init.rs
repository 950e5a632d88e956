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
/// This is the bulk of the random numbers a step needs (FDFA's directions, a few million a
/// step on a CNN), so it is built to run in SIMD registers: the Box-Muller transform that
/// `torch.randn` uses on the CPU (radius `sqrt(-2 ln u1)` from `u1` in `(0, 1]`, angle
/// `2 pi u2`, both 24-bit uniforms, so `|z| <= 5.77`), fed by SplitMix64 evaluated at a
/// counter, which passes BigCrush and, unlike a sequential generator, lets every lane work
/// on its own pair. The values depend on `(seed, stream)` and the length only, and every
/// compiled vector width gives the same bits: no operation is fused or approximated by the
/// hardware, and `ln`, `sin` and `cos` are polynomials (within 2 ulp, and within 2.5e-7,
/// of the exact values, as tests check on every input).
pub fn fill_normal_fast(data: &mut [f32], seed: u64, stream: u64) {
    let key = splitmix(seed ^ stream.wrapping_add(1).wrapping_mul(GOLDEN));
    box_muller(data, key);
}

/// SplitMix64's increment (2^64 / golden ratio).
const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// Values per Box-Muller block: pair `j` of a block fills `j` and `j + BLOCK / 2`, as
/// `torch.randn` pairs its 16-value blocks, here wide enough for one AVX-512 register of f32.
const BLOCK: usize = 32;

/// SplitMix64's output function.
#[inline(always)]
fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(GOLDEN);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[multiversion::multiversion(targets = "simd")]
fn box_muller(data: &mut [f32], key: u64) {
    let mut blocks = data.chunks_exact_mut(BLOCK);
    let mut counter = 0u64;
    for block in &mut blocks {
        let (cos, sin) = block.split_at_mut(BLOCK / 2);
        for j in 0..BLOCK / 2 {
            (cos[j], sin[j]) = normal_pair(key, counter + j as u64);
        }
        counter += (BLOCK / 2) as u64;
    }
    let rest = blocks.into_remainder();
    for (i, pair) in rest.chunks_mut(2).enumerate() {
        let (a, b) = normal_pair(key, counter + i as u64);
        pair[0] = a;
        if let Some(v) = pair.get_mut(1) {
            *v = b;
        }
    }
}

/// Two independent standard normal values from the `index`-th draw of stream `key`.
#[inline(always)]
fn normal_pair(key: u64, index: u64) -> (f32, f32) {
    let r = splitmix(key.wrapping_add(index.wrapping_mul(GOLDEN)));
    // 1 - k / 2^24 for a 24-bit k: exact, and never 0.
    let u1 = 1.0 - ((r >> 40) as u32) as f32 * (1.0 / 16_777_216.0);
    let radius = (-2.0 * ln_unit(u1)).sqrt();
    let (c, s) = sin_cos_turn(r as u32);
    (radius * c, radius * s)
}

/// `ln(x)` for `x` in `[2^-24, 1]`: `x = m 2^e` with `m` in `[sqrt(1/2), sqrt(2))`, and
/// `ln(m) = 2 atanh(t)`, `t = (m - 1) / (m + 1)`, `|t| <= 0.172`, to the `t^9` term.
#[inline(always)]
fn ln_unit(x: f32) -> f32 {
    let bits = x.to_bits();
    let mut e = ((bits >> 23) & 0xff) as i32 - 127;
    let mut m = f32::from_bits((bits & 0x007f_ffff) | 0x3f80_0000);
    let big = m > std::f32::consts::SQRT_2;
    m = if big { m * 0.5 } else { m };
    e += i32::from(big);
    let t = (m - 1.0) / (m + 1.0);
    let t2 = t * t;
    let r = 2.0 * t;
    let tail = r * t2 * (1.0 / 3.0 + t2 * (1.0 / 5.0 + t2 * (1.0 / 7.0 + t2 * (1.0 / 9.0))));
    // ln 2 split so that e * LN2_HI is exact (Cody and Waite).
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let e = e as f32;
    e * LN2_HI + (r + (e * LN2_LO + tail))
}

/// `(cos, sin)` of a uniform angle given by 32 random bits: the top two pick the quadrant,
/// the next 22 an angle `phi` in `[-pi/4, pi/4)`, whose cosine and sine are Taylor
/// polynomials (to `phi^8` and `phi^9`) that the quadrant then rotates.
#[inline(always)]
fn sin_cos_turn(bits: u32) -> (f32, f32) {
    use std::f32::consts::FRAC_PI_4;
    let quadrant = bits >> 30;
    let phi = ((bits >> 8) & 0x003f_ffff) as f32 * (2.0 * FRAC_PI_4 / 4_194_304.0) - FRAC_PI_4;
    let p2 = phi * phi;
    let c =
        1.0 + p2 * (-1.0 / 2.0 + p2 * (1.0 / 24.0 + p2 * (-1.0 / 720.0 + p2 * (1.0 / 40_320.0))));
    let s = phi
        * (1.0
            + p2 * (-1.0 / 6.0
                + p2 * (1.0 / 120.0 + p2 * (-1.0 / 5_040.0 + p2 * (1.0 / 362_880.0)))));
    // Rotating (c, s) by q quarter turns: q = 1 gives (-s, c), 2 (-c, -s), 3 (s, -c).
    let (x, y) = if quadrant & 1 == 1 { (s, c) } else { (c, s) };
    let x_sign = ((quadrant + 1) & 2) << 30;
    let y_sign = (quadrant & 2) << 30;
    (
        f32::from_bits(x.to_bits() ^ x_sign),
        f32::from_bits(y.to_bits() ^ y_sign),
    )
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ulps(got: f32, want: f64) -> f64 {
        let want32 = want as f32;
        let ulp = f64::from(f32::from_bits(want32.abs().to_bits() + 1) - want32.abs());
        (f64::from(got) - want).abs() / ulp
    }

    #[test]
    fn ln_is_within_two_ulp_on_every_radius_input() {
        let mut worst = 0.0f64;
        for k in 0..(1u32 << 24) {
            let x = 1.0 - k as f32 / 16_777_216.0;
            if k == 0 {
                assert_eq!(ln_unit(x), 0.0);
                continue;
            }
            worst = worst.max(ulps(ln_unit(x), f64::from(x).ln()));
        }
        assert!(worst <= 2.0, "worst error {worst} ulp");
    }

    #[test]
    fn sine_and_cosine_are_within_2_5e_7_on_every_angle() {
        let mut worst = 0.0f64;
        for top in 0..(1u32 << 24) {
            let bits = top << 8;
            let (c, s) = sin_cos_turn(bits);
            let q = f64::from(bits >> 30);
            let phi = f64::from((bits >> 8) & 0x003f_ffff)
                * (std::f64::consts::FRAC_PI_2 / 4_194_304.0)
                - std::f64::consts::FRAC_PI_4;
            let angle = q * std::f64::consts::FRAC_PI_2 + phi;
            worst = worst
                .max((f64::from(c) - angle.cos()).abs())
                .max((f64::from(s) - angle.sin()).abs());
        }
        // The f32 rounding of phi itself is up to 6e-8.
        assert!(worst < 2.5e-7, "worst absolute error {worst}");
    }

    /// The standard normal CDF, from Abramowitz and Stegun's approximation 7.1.26 of erfc
    /// (absolute error below 1.5e-7).
    fn phi(x: f64) -> f64 {
        let z = x.abs() / std::f64::consts::SQRT_2;
        let t = 1.0 / (1.0 + 0.327_591_1 * z);
        let poly = t
            * (0.254_829_592
                + t * (-0.284_496_736
                    + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
        let erfc = poly * (-z * z).exp();
        if x >= 0.0 {
            1.0 - 0.5 * erfc
        } else {
            0.5 * erfc
        }
    }

    #[test]
    fn fast_normals_have_the_normal_distribution() {
        let n = 1 << 21;
        let mut data = vec![0.0f32; n + 7];
        fill_normal_fast(&mut data, 42, 3);
        let values: Vec<f64> = data.iter().map(|&v| f64::from(v)).collect();
        let len = values.len() as f64;
        let mean = values.iter().sum::<f64>() / len;
        let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / len;
        let kurtosis = values.iter().map(|v| (v - mean).powi(4)).sum::<f64>() / len / (var * var);
        // Standard errors at 2M values: mean 7e-4, variance 1e-3, kurtosis 3.4e-3.
        assert!(mean.abs() < 4e-3, "mean {mean}");
        assert!((var - 1.0).abs() < 6e-3, "variance {var}");
        assert!((kurtosis - 3.0).abs() < 2e-2, "kurtosis {kurtosis}");
        for x in [-3.0, -2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0, 3.0] {
            let below = values.iter().filter(|&&v| v < x).count() as f64 / len;
            assert!(
                (below - phi(x)).abs() < 2e-3,
                "P(z < {x}) = {below}, want {}",
                phi(x)
            );
        }
        assert!(values.iter().all(|v| v.abs() <= 5.8));
        // The two values of a pair (j and j + 16 of a block) are uncorrelated.
        let (mut cross, mut count) = (0.0, 0.0);
        for block in values.chunks_exact(BLOCK) {
            for j in 0..BLOCK / 2 {
                cross += block[j] * block[j + BLOCK / 2];
                count += 1.0;
            }
        }
        assert!(
            (cross / count).abs() < 5e-3,
            "pair correlation {}",
            cross / count
        );
    }

    #[test]
    fn fast_normal_streams_are_reproducible_and_distinct() {
        let draw = |seed, stream, n| {
            let mut v = vec![0.0f32; n];
            fill_normal_fast(&mut v, seed, stream);
            v
        };
        assert_eq!(draw(5, 0, 100), draw(5, 0, 100));
        // Whole blocks do not depend on the length.
        assert_eq!(draw(5, 0, 100)[..96], draw(5, 0, 200)[..96]);
        let a = draw(5, 0, 1000);
        for other in [draw(5, 1, 1000), draw(6, 0, 1000)] {
            let same = a.iter().zip(&other).filter(|(x, y)| x == y).count();
            assert_eq!(same, 0);
        }
    }
}
