//! `Conv2d` through im2col, against a direct convolution loop.

use fdfa::Tensor;
use fdfa::layers::{Conv2d, Conv2dConfig, Layer};

use crate::common::*;

/// The convolution is linear in its input and in its parameters: central differences are exact
/// up to rounding.
const H: f64 = 1e-2;

/// Input elements (and parameter elements) checked against finite differences per tensor.
const FD_ELEMENTS: usize = 48;

/// A geometry: `(c_in, c_out, kernel, stride, padding, [n, h, w])`.
type Case = (usize, usize, usize, usize, usize, [usize; 3]);

/// Odd sizes, batch size 1, stride 2, padding 2, kernels from 1 to 5 (an even one too), a
/// window that overhangs the input on the right and bottom, and padding as large as the kernel.
const CASES: [Case; 8] = [
    (2, 3, 3, 1, 0, [2, 7, 6]),
    (2, 3, 3, 1, 1, [1, 5, 7]),
    (1, 2, 3, 2, 1, [2, 9, 7]),
    (2, 2, 5, 2, 2, [1, 7, 9]),
    (3, 2, 1, 1, 0, [2, 5, 3]),
    (2, 3, 4, 3, 2, [1, 8, 7]),
    (2, 2, 2, 2, 0, [3, 5, 5]),
    (1, 2, 3, 1, 3, [1, 3, 4]),
];

fn layer(&(c_in, c_out, k, s, p, _): &Case, bias: bool) -> Conv2d {
    Conv2dConfig::new(c_in, c_out, k)
        .with_stride(s)
        .with_padding(p)
        .with_bias(bias)
        .with_name("conv")
        .init(&mut fdfa::init::rng(2))
        .unwrap()
}

fn input_shape(&(c_in, _, _, _, _, [n, h, w]): &Case) -> [usize; 4] {
    [n, c_in, h, w]
}

fn describe(&(c_in, c_out, k, s, p, [n, h, w]): &Case) -> String {
    format!("conv {c_in}->{c_out} k{k} s{s} p{p} on {n}x{c_in}x{h}x{w}")
}

/// A direct convolution in `f64`: `y[i, o, oy, ox] = b[o] + sum x[i, c, oy s + ky - p,
/// ox s + kx - p] w[o, c, ky, kx]`, with zeros outside the input.
fn naive(x: &Tensor, l: &Conv2d) -> (Vec<usize>, Vec<f64>) {
    let c = l.config();
    let (n, ci, h, w) = (x.shape()[0], x.shape()[1], x.shape()[2], x.shape()[3]);
    let (k, s, p) = (c.kernel, c.stride, c.padding);
    let oh = (h + 2 * p - k) / s + 1;
    let ow = (w + 2 * p - k) / s + 1;
    let wt = l.weight().data();
    let mut y = Vec::with_capacity(n * c.c_out * oh * ow);
    for i in 0..n {
        for o in 0..c.c_out {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = l.bias().map_or(0.0, |b| b.data()[o] as f64);
                    for ch in 0..ci {
                        for ky in 0..k {
                            for kx in 0..k {
                                let yy = (oy * s + ky) as isize - p as isize;
                                let xx = (ox * s + kx) as isize - p as isize;
                                if yy < 0 || xx < 0 || yy >= h as isize || xx >= w as isize {
                                    continue;
                                }
                                let xv =
                                    x.data()[((i * ci + ch) * h + yy as usize) * w + xx as usize];
                                let wv = wt[((o * ci + ch) * k + ky) * k + kx];
                                acc += xv as f64 * wv as f64;
                            }
                        }
                    }
                    y.push(acc);
                }
            }
        }
    }
    (vec![n, c.c_out, oh, ow], y)
}

#[test]
fn primal_matches_direct_convolution() {
    for (t, case) in CASES.iter().enumerate() {
        for bias in [true, false] {
            let l = layer(case, bias);
            let x = randn(&input_shape(case), 100 + t as u64);
            let got = train_primal(&l, &x);
            let (shape, want) = naive(&x, &l);
            let name = format!("{} bias={bias}", describe(case));
            assert_eq!(got.shape(), shape.as_slice(), "{name}: shape");
            assert_eq!(l.output_shape(x.shape()).unwrap(), shape, "{name}");
            let got64: Vec<f64> = got.data().iter().map(|&v| v as f64).collect();
            assert_close_f64(&name, &got64, &want, 1e-5, 1e-5);
            let mut inferred = Tensor::default();
            l.infer(&x, &mut inferred).unwrap();
            assert_bits_eq(&name, inferred.data(), got.data());
        }
    }
}

#[test]
fn jvp_matches_finite_differences() {
    for (t, case) in CASES.iter().enumerate() {
        let l = layer(case, true);
        let shape = input_shape(case);
        let x = randn(&shape, 110 + t as u64);
        for k in [1, 3] {
            let dirs = directions(&shape, k, 120);
            check_jvp(&format!("{} k={k}", describe(case)), &l, &x, &dirs, &[], H);
        }
    }
}

#[test]
fn backward_matches_finite_differences() {
    for (t, case) in CASES.iter().enumerate() {
        for bias in [true, false] {
            let l = layer(case, bias);
            let x = randn(&input_shape(case), 130 + t as u64);
            let name = format!("{} bias={bias}", describe(case));
            check_backward(&name, &l, &x, 140 + t as u64, H, FD_ELEMENTS);
        }
    }
}

#[test]
fn adjoint_identity() {
    for (t, case) in CASES.iter().enumerate() {
        let l = layer(case, true);
        let x = randn(&input_shape(case), 150 + t as u64);
        check_adjoint(&describe(case), &l, &x, 160, false);
        check_adjoint(&format!("{} + params", describe(case)), &l, &x, 161, true);
    }
}

/// `d(y) = conv(d(x), W) + conv(x, d(W)) + d(b)`, with zero, one and three input tangents.
#[test]
fn parameter_tangents_match_finite_differences() {
    for (t, case) in CASES.iter().enumerate().take(4) {
        for bias in [true, false] {
            let mut l = layer(case, bias);
            let shape = input_shape(case);
            let x = randn(&shape, 170 + t as u64);
            let all = param_directions(&mut l, 180);
            for k in [0, 1, 3] {
                let dirs = directions(&shape, k, 190);
                let name = format!("{} bias={bias} params k={k}", describe(case));
                check_jvp(&name, &l, &x, &dirs, &all, H);
            }
            // Each parameter direction alone, the other parameter without a tangent.
            for one in all.iter().filter(|_| bias) {
                let name = format!("{} {} only", describe(case), one.0);
                check_jvp(&name, &l, &x, &[], std::slice::from_ref(one), H);
            }
        }
    }
}

/// Samples straddle the per-task groups of four of the backward, and parameter tangents are
/// included.
#[test]
fn batched_equals_per_sample() {
    let case: Case = (2, 3, 3, 2, 1, [6, 7, 5]);
    let mut l = layer(&case, true);
    let shape = input_shape(&case);
    let x = randn(&shape, 200);
    let dirs = directions(&shape, 3, 210);
    check_per_sample(&describe(&case), &l, &x, &dirs, &[]);
    let p = param_directions(&mut l, 220);
    check_per_sample(&format!("{} + params", describe(&case)), &l, &x, &dirs, &p);
}

/// The parameter gradients sum over samples: batch 6 (two backward tasks, one partial) equals
/// the sum of the per-sample gradients.
#[test]
fn parameter_gradients_sum_over_samples() {
    let case: Case = (2, 3, 3, 1, 1, [6, 5, 4]);
    let l = layer(&case, true);
    let x = randn(&input_shape(&case), 230);
    let r = randn(&l.output_shape(x.shape()).unwrap(), 231);
    let (_, batched) = gradients(&l, &x, &r);
    for (pname, g) in &batched {
        let mut sum = vec![0.0f64; g.len()];
        for i in 0..x.batch() {
            let (_, gi) = gradients(&l, &sample(&x, i), &sample(&r, i));
            let gi = &gi.iter().find(|(n, _)| n == pname).unwrap().1;
            sum.iter_mut()
                .zip(gi.data())
                .for_each(|(s, &v)| *s += v as f64);
        }
        let got: Vec<f64> = g.data().iter().map(|&v| v as f64).collect();
        assert_close_f64(&format!("conv {pname} gradient"), &got, &sum, 1e-5, 1e-5);
    }
}

#[test]
fn wrong_shapes_are_errors() {
    let l = layer(&(2, 3, 5, 1, 0, [1, 5, 5]), true);
    check_rejects(&l, &[1, 3, 6, 6]); // wrong channels
    check_rejects(&l, &[1, 2, 4, 6]); // smaller than the kernel
    check_rejects(&l, &[2, 6, 6]); // rank 3
    check_rejects(&l, &[0, 2, 6, 6]); // empty batch
    check_rejects_grad(&l, &randn(&[2, 2, 6, 6], 240));
    let padded = layer(&(2, 3, 5, 1, 1, [1, 3, 3]), true);
    assert_eq!(
        padded.output_shape(&[1, 2, 3, 3]).unwrap(),
        vec![1, 3, 1, 1]
    );
    check_rejects(&padded, &[1, 2, 2, 3]);
}

#[test]
fn reused_buffers_give_fresh_results() {
    let case: Case = (2, 3, 3, 2, 1, [5, 7, 6]);
    let mut l = layer(&case, true);
    let shape = input_shape(&case);
    let x = randn(&shape, 250);
    let p = param_directions(&mut l, 251);
    for k in [0, 1, 3] {
        let dirs = directions(&shape, k, 252);
        check_buffer_reuse(&format!("conv k={k}"), &l, &x, &dirs, &[]);
        check_buffer_reuse(&format!("conv k={k} + params"), &l, &x, &dirs, &p);
    }
}
