//! Shared test support: tolerant comparisons, seeded fixtures and a finite-difference harness
//! for [`Layer`]s.
//!
//! Finite differences are central, `(f(x + h v) - f(x - h v)) / 2h`, with the layer evaluated
//! in `f32` and the difference and every projection taken in `f64`. The step `h` is chosen per
//! layer by the caller: for piecewise-linear layers the truncation error is zero and the noise
//! is the `f32` rounding of the outputs, about `1e-7 |y| / h`; for BatchNorm and the loss the
//! truncation error is `O(h²)`, about `1e-4` relative for `h = 1e-2` at unit scale. Measured
//! with the suite's seeds, the worst finite-difference comparison uses under a tenth of the
//! [`FD_REL`] tolerance and the worst adjoint gap under a thousandth of [`ADJOINT_REL`].
//!
//! Set `FDFA_TEST_VERBOSE=1` (with `--nocapture`) to print how close every comparison came to
//! its tolerance.

// Each test binary uses its own subset of these helpers.
#![allow(dead_code)]

mod data_skip;
pub mod models;

#[allow(unused_imports)] // used by the binaries that read data/mnist
pub use data_skip::mnist_or_skip;

use fdfa::layers::{Layer, Param, ParamMut, State, StateMut};
use fdfa::{Dual, Error, Tensor};

/// Relative tolerance of a layer's analytic derivative against finite differences.
pub const FD_REL: f64 = 1e-2;

/// Absolute floor of the finite-difference comparison, relative to the largest expected
/// value: an element whose true value is near zero still carries the FD noise of the others.
pub const FD_FLOOR: f64 = 1e-3;

/// Relative tolerance of the adjoint identity, which involves no finite differences.
pub const ADJOINT_REL: f64 = 1e-4;

/// Asserts `|got - want| <= abs + rel * |want|` element by element, reporting the worst
/// element (the one furthest over its tolerance), its index and the tolerance used.
pub fn assert_close(name: &str, got: &[f32], want: &[f32], rel: f64, abs: f64) {
    let got: Vec<f64> = got.iter().map(|&v| v as f64).collect();
    let want: Vec<f64> = want.iter().map(|&v| v as f64).collect();
    assert_close_f64(name, &got, &want, rel, abs);
}

/// [`assert_close`] on `f64` values.
pub fn assert_close_f64(name: &str, got: &[f64], want: &[f64], rel: f64, abs: f64) {
    assert_eq!(
        got.len(),
        want.len(),
        "{name}: {} values, expected {}",
        got.len(),
        want.len()
    );
    let mut worst: Option<(usize, f64)> = None;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let (diff, tol) = ((g - w).abs(), abs + rel * w.abs());
        // How far over its tolerance the element is; a NaN ranks worst.
        let ratio = if diff.is_nan() {
            f64::INFINITY
        } else if diff == 0.0 {
            0.0
        } else {
            diff / tol
        };
        if worst.is_none_or(|(_, r)| ratio > r) {
            worst = Some((i, ratio));
        }
    }
    if let Some((i, ratio)) = worst {
        let (g, w) = (got[i], want[i]);
        if std::env::var_os("FDFA_TEST_VERBOSE").is_some() {
            eprintln!("{name}: worst [{i}] at {ratio:.2e} of the tolerance");
        }
        assert!(
            ratio <= 1.0,
            "{name}: worst element [{i}] of {}: got {g:e}, want {w:e}, |diff| {:e} > tol {:e} \
             (rel {rel:e}, abs {abs:e}; {ratio:.3}x the tolerance)",
            got.len(),
            (g - w).abs(),
            abs + rel * w.abs(),
        );
    }
}

/// Compares an analytic derivative with its finite-difference estimate: relative tolerance
/// [`FD_REL`], with an absolute floor of [`FD_FLOOR`] times the largest expected magnitude.
pub fn assert_fd_close(name: &str, got: &[f32], want: &[f64]) {
    let got: Vec<f64> = got.iter().map(|&v| v as f64).collect();
    let scale = max_abs(want);
    assert!(scale > 0.0, "{name}: the expected derivative is all zeros");
    assert_close_f64(name, &got, want, FD_REL, FD_FLOOR * scale);
}

/// Asserts bit-identical values (so `-0.0 != 0.0` and NaNs compare by payload), reporting the
/// first difference.
pub fn assert_bits_eq(name: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{name}: lengths differ");
    if let Some(i) = (0..got.len()).find(|&i| got[i].to_bits() != want[i].to_bits()) {
        panic!(
            "{name}: first difference at [{i}] of {}: {:e} vs {:e}",
            got.len(),
            got[i],
            want[i]
        );
    }
}

/// The largest magnitude.
pub fn max_abs(v: &[f64]) -> f64 {
    v.iter().fold(0.0, |m, x| m.max(x.abs()))
}

/// `sum a_i b_i` in `f64`.
pub fn dot(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
}

/// `sum |a_i b_i|` in `f64`: the scale the rounding error of `dot(a, b)` is relative to.
pub fn dot_abs(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 * y as f64).abs())
        .sum()
}

// ---------------------------------------------------------------------------------------
// Fixtures.

/// Standard normal values.
pub fn randn(shape: &[usize], seed: u64) -> Tensor {
    let mut t = Tensor::zeros(shape);
    fdfa::init::fill_normal(t.data_mut(), &mut fdfa::init::rng(seed));
    t
}

/// Values uniform in `[-bound, bound)`.
pub fn uniform(shape: &[usize], bound: f32, seed: u64) -> Tensor {
    fdfa::init::uniform(shape, bound, &mut fdfa::init::rng(seed))
}

/// Values of magnitude in `[margin, margin + 1)` with a random sign: at least `margin` away
/// from zero.
pub fn away_from_zero(shape: &[usize], margin: f32, seed: u64) -> Tensor {
    let mut t = uniform(shape, 1.0, seed);
    for v in t.data_mut() {
        *v += margin.copysign(*v);
    }
    t
}

/// A random permutation of `spacing * (0..len)`, centred on zero: every two values differ by
/// at least `spacing`.
pub fn distinct(shape: &[usize], spacing: f32, seed: u64) -> Tensor {
    let len: usize = shape.iter().product();
    let keys = uniform(&[len], 1.0, seed).into_vec();
    let mut order: Vec<usize> = (0..len).collect();
    order.sort_by(|&a, &b| keys[a].total_cmp(&keys[b]));
    let mut t = Tensor::zeros(shape);
    let mid = (len as f32 - 1.0) / 2.0;
    for (v, &rank) in t.data_mut().iter_mut().zip(&order) {
        *v = (rank as f32 - mid) * spacing;
    }
    t
}

/// `k` standard normal directions of `shape`, seeds `seed, seed + 1, ...`.
pub fn directions(shape: &[usize], k: usize, seed: u64) -> Vec<Tensor> {
    (0..k).map(|j| randn(shape, seed + j as u64)).collect()
}

/// Stacks tensors of one shape along the batch axis (`[k * n, ...]`), as a [`Dual`] holds its
/// tangents.
pub fn stack(blocks: &[Tensor]) -> Tensor {
    let mut shape = blocks[0].shape().to_vec();
    shape[0] *= blocks.len();
    let data = blocks
        .iter()
        .flat_map(|b| b.data().iter().copied())
        .collect();
    Tensor::from_vec(&shape, data).unwrap()
}

/// A dual number whose tangents are `dirs` (none: the structural zero).
pub fn dual(x: &Tensor, dirs: &[Tensor]) -> Dual {
    if dirs.is_empty() {
        Dual::new(x.clone())
    } else {
        Dual::with_tangents(x.clone(), stack(dirs), dirs.len()).unwrap()
    }
}

/// Sample `i` of `t` as a batch of one.
pub fn sample(t: &Tensor, i: usize) -> Tensor {
    let mut shape = t.shape().to_vec();
    shape[0] = 1;
    Tensor::from_vec(&shape, t.row(i).to_vec()).unwrap()
}

/// `x + t v`, computed in `f32` as the layer will see it.
pub fn axpy(x: &Tensor, t: f64, v: &Tensor) -> Tensor {
    assert_eq!(x.shape(), v.shape());
    let data = x
        .data()
        .iter()
        .zip(v.data())
        .map(|(&a, &b)| (a as f64 + t * b as f64) as f32)
        .collect();
    Tensor::from_vec(x.shape(), data).unwrap()
}

/// Central difference `(f(h) - f(-h)) / 2h` of a vector function of one real variable.
pub fn central_difference(h: f64, mut f: impl FnMut(f64) -> Vec<f32>) -> Vec<f64> {
    let (plus, minus) = (f(h), f(-h));
    assert_eq!(plus.len(), minus.len());
    plus.iter()
        .zip(&minus)
        .map(|(&p, &m)| (p as f64 - m as f64) / (2.0 * h))
        .collect()
}

/// `count` distinct indices below `len` (all of them when `count >= len`), always including
/// the first and the last.
pub fn subset(len: usize, count: usize, seed: u64) -> Vec<usize> {
    if count >= len {
        return (0..len).collect();
    }
    let keys = uniform(&[len], 1.0, seed).into_vec();
    let mut order: Vec<usize> = (1..len - 1).collect();
    order.sort_by(|&a, &b| keys[a].total_cmp(&keys[b]));
    let mut picked = vec![0, len - 1];
    picked.extend_from_slice(&order[..count.saturating_sub(2)]);
    picked.sort_unstable();
    picked
}

// ---------------------------------------------------------------------------------------
// Parameters.

/// The names of the layer's trainable parameters, in visiting order.
pub fn param_names(layer: &dyn Layer) -> Vec<String> {
    let mut names = Vec::new();
    layer.visit_state(&mut |name, state| {
        if let State::Param(_) = state {
            names.push(name.to_string());
        }
    });
    names
}

/// Runs `f` on the parameter `name`.
///
/// # Panics
/// When the layer has no such parameter.
pub fn with_param<R>(layer: &mut dyn Layer, name: &str, f: impl FnOnce(ParamMut<'_>) -> R) -> R {
    let mut f = Some(f);
    let mut out = None;
    layer.visit_state_mut(&mut |n, state| {
        if let (true, StateMut::Param(p)) = (n == name, state) {
            out = f.take().map(|f| f(p));
        }
    });
    out.unwrap_or_else(|| panic!("{}: no parameter `{name}`", layer.name()))
}

/// A copy of the parameter `name` (value and gradient) in PyTorch's layout.
pub fn param(layer: &mut dyn Layer, name: &str) -> Param {
    with_param(layer, name, |p| Param {
        value: p.value().into_owned(),
        grad: p.grad().into_owned(),
    })
}

/// A random direction for every parameter of the layer (seeds `seed, seed + 1, ...`), in
/// PyTorch's layout.
pub fn param_directions(layer: &mut dyn Layer, seed: u64) -> Vec<(String, Tensor)> {
    let names = param_names(layer);
    names
        .into_iter()
        .enumerate()
        .map(|(i, name)| {
            let shape = param(layer, &name).value.shape().to_vec();
            (name, randn(&shape, seed + i as u64))
        })
        .collect()
}

/// A training forward whose tangents also carry the JVP along the parameter directions
/// `param_dirs` (PyTorch's layout; parameters not named get none), through
/// [`Layer::add_param_jvp`].
pub fn forward_with<L: Layer + Clone>(
    l: &mut L,
    input: &Dual,
    param_dirs: &[(String, Tensor)],
    out: &mut Dual,
) -> fdfa::Result<()> {
    l.forward(input, out)?;
    if param_dirs.is_empty() {
        return Ok(());
    }
    // The layer's own views translate PyTorch's layout into its storage order: write each
    // direction as the value of a scratch copy and read it back in storage order.
    let mut scratch = l.clone();
    let mut v = Vec::new();
    scratch.visit_state_mut(&mut |name, state| {
        if let StateMut::Param(mut p) = state {
            let zero = Tensor::zeros(&p.shape());
            let d = param_dirs
                .iter()
                .find(|(n, _)| n == name)
                .map_or(&zero, |(_, d)| d);
            p.set_value(d).unwrap();
            v.push(p.storage_mut().0.to_vec());
        }
    });
    let v: Vec<&[f32]> = v.iter().map(Vec::as_slice).collect();
    l.add_param_jvp(input.primal(), &v, out)
}

/// Moves every parameter `name` by `t * d` for `(name, d)` in `dirs`.
pub fn shift_params(layer: &mut dyn Layer, t: f64, dirs: &[(String, Tensor)]) {
    for (name, d) in dirs {
        with_param(layer, name, |mut p| {
            let v = axpy(&p.value(), t, d);
            p.set_value(&v).unwrap()
        });
    }
}

// ---------------------------------------------------------------------------------------
// Checks of a layer against finite differences and against itself.

/// The primal output of a fresh training forward (tangent-free) on a clone of `layer`, so
/// that BatchNorm recomputes its batch statistics at every evaluation.
pub fn train_primal<L: Layer + Clone>(layer: &L, x: &Tensor) -> Tensor {
    let mut l = layer.clone();
    let mut y = Dual::default();
    l.forward(&Dual::new(x.clone()), &mut y).unwrap();
    assert!(y.tangent().is_none());
    y.primal().clone()
}

/// JVP check: the training forward of `layer` with input tangents `dirs` (`k =
/// dirs.len()`, possibly 0) and parameter tangents `param_dirs`; each of the output's
/// tangent blocks must match the central difference of the primal along the combined
/// direction (input block `j`, every parameter).
pub fn check_jvp<L: Layer + Clone>(
    name: &str,
    layer: &L,
    x: &Tensor,
    dirs: &[Tensor],
    param_dirs: &[(String, Tensor)],
    h: f64,
) {
    let mut l = layer.clone();
    let mut y = Dual::default();
    forward_with(&mut l, &dual(x, dirs), param_dirs, &mut y).unwrap();
    let k = if param_dirs.is_empty() {
        dirs.len()
    } else {
        dirs.len().max(1)
    };
    assert_eq!(y.directions(), k, "{name}: number of output tangents");
    if k == 0 {
        assert!(
            y.tangent().is_none(),
            "{name}: the zero tangent is structural"
        );
        return;
    }
    let tangent = y.tangent().unwrap();
    let block = y.primal().len();
    assert_eq!(tangent.len(), k * block, "{name}: tangent size");
    assert_eq!(tangent.shape()[1..], y.primal().shape()[1..]);
    for j in 0..k {
        let want = central_difference(h, |t| {
            let mut l = layer.clone();
            shift_params(&mut l, t, param_dirs);
            let xt = match dirs.get(j) {
                Some(v) => axpy(x, t, v),
                None => x.clone(),
            };
            train_primal(&l, &xt).into_vec()
        });
        let got = &tangent.data()[j * block..(j + 1) * block];
        assert_fd_close(&format!("{name}: tangent {j} of {k}"), got, &want);
    }
}

/// The parameter gradients and input gradient of a training forward and backward with
/// output gradient `r`: `(grad_input, [(name, grad)])`.
pub fn gradients<L: Layer + Clone>(
    layer: &L,
    x: &Tensor,
    r: &Tensor,
) -> (Tensor, Vec<(String, Tensor)>) {
    let mut l = layer.clone();
    let mut y = Dual::default();
    l.forward(&Dual::new(x.clone()), &mut y).unwrap();
    let mut gx = Tensor::default();
    l.backward(x, y.primal(), r, Some(&mut gx)).unwrap();
    assert_eq!(gx.shape(), x.shape(), "{}: input gradient shape", l.name());
    let grads = param_names(&l)
        .into_iter()
        .map(|n| {
            let g = param(&mut l, &n).grad;
            (n, g)
        })
        .collect();
    (gx, grads)
}

/// Backward check: the input gradient and every parameter gradient for the output gradient
/// `r` must match the central differences of `<r, f(x)>`, along each input element and each
/// parameter element (at most `max_elements` of each tensor, a random subset beyond).
pub fn check_backward<L: Layer + Clone>(
    name: &str,
    layer: &L,
    x: &Tensor,
    seed: u64,
    h: f64,
    max_elements: usize,
) {
    let out_shape = layer.output_shape(x.shape()).unwrap();
    let r = randn(&out_shape, seed);
    let (gx, grads) = gradients(layer, x, &r);
    let project64 = |l: &L, x: &Tensor| dot(r.data(), train_primal(l, x).data());

    let idx = subset(x.len(), max_elements, seed + 1);
    let mut want = Vec::with_capacity(idx.len());
    for &i in &idx {
        let mut e = Tensor::zeros(x.shape());
        e.data_mut()[i] = 1.0;
        let (p, m) = (
            project64(layer, &axpy(x, h, &e)),
            project64(layer, &axpy(x, -h, &e)),
        );
        want.push((p - m) / (2.0 * h));
    }
    let got: Vec<f32> = idx.iter().map(|&i| gx.data()[i]).collect();
    assert_fd_close(&format!("{name}: input gradient"), &got, &want);

    for (pname, grad) in &grads {
        let shape = grad.shape().to_vec();
        let idx = subset(grad.len(), max_elements, seed + 2);
        let mut want = Vec::with_capacity(idx.len());
        for &i in &idx {
            let mut e = Tensor::zeros(&shape);
            e.data_mut()[i] = 1.0;
            let dirs = [(pname.clone(), e)];
            let at = |t: f64| {
                let mut l = layer.clone();
                shift_params(&mut l, t, &dirs);
                project64(&l, x)
            };
            want.push((at(h) - at(-h)) / (2.0 * h));
        }
        let got: Vec<f32> = idx.iter().map(|&i| grad.data()[i]).collect();
        assert_fd_close(&format!("{name}: gradient of `{pname}`"), &got, &want);
    }
}

/// Adjoint identity `<r, J v> = <Jᵀ r, v>` from the layer's own JVP and backward: along a
/// random input direction and, when `with_params`, along a random direction of each parameter
/// alone (the input tangent the structural zero) and along all of them together. Three draws
/// of the directions and of `r`, so that an error confined to a few elements of a Jacobian
/// cannot hide behind one unlucky draw that gives them little weight.
pub fn check_adjoint<L: Layer + Clone>(
    name: &str,
    layer: &L,
    x: &Tensor,
    seed: u64,
    with_params: bool,
) {
    for draw in 0..3 {
        let seed = seed + 100 * draw;
        let name = format!("{name} (draw {draw})");
        let v = randn(x.shape(), seed);
        adjoint_once(&name, layer, x, Some(&v), &[], seed + 1);
        if with_params {
            let all = param_directions(&mut layer.clone(), seed + 10);
            for one in &all {
                let name = format!("{name}: `{}` alone", one.0);
                adjoint_once(&name, layer, x, None, std::slice::from_ref(one), seed + 2);
            }
            let name = format!("{name}: input and all parameters");
            adjoint_once(&name, layer, x, Some(&v), &all, seed + 3);
        }
    }
}

/// `<r, J (v, dθ)> = <Jᵀ r, (v, dθ)>` for one random `r` (seed `r_seed`); `v = None` is the
/// structural-zero input tangent. The tolerance is [`ADJOINT_REL`] of the sum of the absolute
/// terms of either side, the scale of their rounding errors.
fn adjoint_once<L: Layer + Clone>(
    name: &str,
    layer: &L,
    x: &Tensor,
    v: Option<&Tensor>,
    param_dirs: &[(String, Tensor)],
    r_seed: u64,
) {
    let mut l = layer.clone();
    let mut y = Dual::default();
    let dirs: Vec<Tensor> = v.into_iter().cloned().collect();
    forward_with(&mut l, &dual(x, &dirs), param_dirs, &mut y).unwrap();
    assert_eq!(y.directions(), 1, "{name}: one output tangent");
    let r = randn(y.primal().shape(), r_seed);
    let jv = y.tangent().unwrap();
    let lhs = dot(r.data(), jv.data());
    let lhs_scale = dot_abs(r.data(), jv.data());

    let mut gx = Tensor::default();
    l.backward(x, y.primal(), &r, Some(&mut gx)).unwrap();
    let (mut rhs, mut rhs_scale) = match v {
        Some(v) => (dot(gx.data(), v.data()), dot_abs(gx.data(), v.data())),
        None => (0.0, 0.0),
    };
    for (pname, d) in param_dirs {
        let g = param(&mut l, pname).grad;
        rhs += dot(g.data(), d.data());
        rhs_scale += dot_abs(g.data(), d.data());
    }
    let tol = ADJOINT_REL * lhs_scale.max(rhs_scale);
    if std::env::var_os("FDFA_TEST_VERBOSE").is_some() {
        eprintln!(
            "{name}: adjoint gap at {:.2e} of the tolerance",
            (lhs - rhs).abs() / tol
        );
    }
    assert!(
        (lhs - rhs).abs() <= tol,
        "{name}: <r, J v> = {lhs:e} but <J^T r, v> = {rhs:e}, |diff| {:e} > tol {tol:e} \
         (rel {ADJOINT_REL:e} of sum |terms| {:e})",
        (lhs - rhs).abs(),
        lhs_scale.max(rhs_scale),
    );
}

/// Batched results equal per-sample results, bit for bit: the training forward's primal and
/// tangents (input tangents `dirs`, parameter tangents `param_dirs`), the inference forward
/// and the input gradient of the backward.
pub fn check_per_sample<L: Layer + Clone>(
    name: &str,
    layer: &L,
    x: &Tensor,
    dirs: &[Tensor],
    param_dirs: &[(String, Tensor)],
) {
    let n = x.batch();
    let mut l = layer.clone();
    let mut y = Dual::default();
    forward_with(&mut l, &dual(x, dirs), param_dirs, &mut y).unwrap();
    let r = randn(y.primal().shape(), 99);
    let mut gx = Tensor::default();
    l.backward(x, y.primal(), &r, Some(&mut gx)).unwrap();
    let mut inferred = Tensor::default();
    layer.infer(x, &mut inferred).unwrap();
    let k = y.directions();

    for i in 0..n {
        let xi = sample(x, i);
        let di: Vec<Tensor> = dirs.iter().map(|d| sample(d, i)).collect();
        let mut li = layer.clone();
        let mut yi = Dual::default();
        forward_with(&mut li, &dual(&xi, &di), param_dirs, &mut yi).unwrap();
        assert_bits_eq(
            &format!("{name}: primal of sample {i}"),
            yi.primal().data(),
            y.primal().row(i),
        );
        assert_eq!(yi.directions(), k);
        for j in 0..k {
            assert_bits_eq(
                &format!("{name}: tangent {j} of sample {i}"),
                yi.tangent().unwrap().row(j),
                y.tangent().unwrap().row(j * n + i),
            );
        }
        let mut gxi = Tensor::default();
        li.backward(&xi, yi.primal(), &sample(&r, i), Some(&mut gxi))
            .unwrap();
        assert_bits_eq(
            &format!("{name}: input gradient of sample {i}"),
            gxi.data(),
            gx.row(i),
        );
        let mut inferred_i = Tensor::default();
        layer.infer(&xi, &mut inferred_i).unwrap();
        assert_bits_eq(
            &format!("{name}: inference of sample {i}"),
            inferred_i.data(),
            inferred.row(i),
        );
    }
}

/// Output buffers are reused from step to step: a training forward into a [`Dual`] left over
/// from a different shape and number of tangents, all NaN, and a backward into NaN gradient
/// buffers of the wrong size must give bit for bit what fresh buffers give. A forward without
/// tangents into a buffer that had some leaves the structural zero.
pub fn check_buffer_reuse<L: Layer + Clone>(
    name: &str,
    layer: &L,
    x: &Tensor,
    dirs: &[Tensor],
    param_dirs: &[(String, Tensor)],
) {
    let run = |y: &mut Dual, gx: &mut Tensor, nan_grads: bool| {
        let mut l = layer.clone();
        if nan_grads {
            for n in param_names(&l) {
                with_param(&mut l, &n, |mut p| {
                    let shape = p.shape();
                    let len = shape.iter().product();
                    p.set_grad(&Tensor::from_vec(&shape, vec![f32::NAN; len]).unwrap())
                        .unwrap()
                });
            }
        }
        forward_with(&mut l, &dual(x, dirs), param_dirs, y).unwrap();
        let r = randn(y.primal().shape(), 77);
        l.backward(x, y.primal(), &r, Some(gx)).unwrap();
        let grads: Vec<Tensor> = param_names(&l)
            .iter()
            .map(|n| param(&mut l, n).grad)
            .collect();
        grads
    };
    let (mut fresh_y, mut fresh_gx) = (Dual::default(), Tensor::default());
    let fresh_grads = run(&mut fresh_y, &mut fresh_gx, false);

    let mut stale_shape = fresh_y.primal().shape().to_vec();
    stale_shape[0] += 1;
    let stale: usize = stale_shape.iter().product();
    let nan = |len: usize| vec![f32::NAN; len];
    let primal = Tensor::from_vec(&stale_shape, nan(stale)).unwrap();
    let mut tshape = stale_shape.clone();
    tshape[0] *= 2;
    let tangent = Tensor::from_vec(&tshape, nan(2 * stale)).unwrap();
    let mut y = Dual::with_tangents(primal, tangent, 2).unwrap();
    let mut gx = Tensor::from_vec(&[x.len() + 3], nan(x.len() + 3)).unwrap();
    let grads = run(&mut y, &mut gx, true);

    assert_eq!(y.primal().shape(), fresh_y.primal().shape(), "{name}");
    assert_bits_eq(
        &format!("{name}: reused output"),
        y.primal().data(),
        fresh_y.primal().data(),
    );
    assert_eq!(
        y.directions(),
        fresh_y.directions(),
        "{name}: reused tangents"
    );
    if let Some(t) = fresh_y.tangent() {
        assert_eq!(y.tangent().unwrap().shape(), t.shape(), "{name}");
        assert_bits_eq(
            &format!("{name}: reused tangents"),
            y.tangent().unwrap().data(),
            t.data(),
        );
    }
    assert_eq!(
        gx.shape(),
        fresh_gx.shape(),
        "{name}: reused input gradient"
    );
    assert_bits_eq(
        &format!("{name}: reused input gradient"),
        gx.data(),
        fresh_gx.data(),
    );
    for (g, f) in grads.iter().zip(&fresh_grads) {
        assert_eq!(g.shape(), f.shape(), "{name}: reused parameter gradient");
        assert_bits_eq(
            &format!("{name}: reused parameter gradient"),
            g.data(),
            f.data(),
        );
    }

    let mut l = layer.clone();
    l.forward(&Dual::new(x.clone()), &mut y).unwrap();
    assert!(
        y.tangent().is_none(),
        "{name}: tangent after a tangent-free forward"
    );
    assert_bits_eq(
        &format!("{name}: primal after reuse"),
        y.primal().data(),
        &train_primal(layer, x).into_vec(),
    );
}

/// Asserts that `result` is an [`Error::Shape`] raised by `layer` for the shape `got`, and
/// that its message names both.
pub fn assert_shape_error<T: std::fmt::Debug>(result: fdfa::Result<T>, layer: &str, got: &[usize]) {
    match result {
        Err(e @ Error::Shape { .. }) => {
            let message = e.to_string();
            let Error::Shape {
                layer: l, got: g, ..
            } = &e
            else {
                unreachable!()
            };
            assert!(l.starts_with(layer), "error from `{l}`, expected `{layer}`");
            assert_eq!(g, got, "shape reported by `{layer}`");
            assert!(
                message.contains(layer) && message.contains(&format!("{got:?}")),
                "message `{message}` should name `{layer}` and {got:?}"
            );
        }
        other => panic!("{layer}: expected a shape error for {got:?}, got {other:?}"),
    }
}

/// Asserts that the training forward, the inference forward and the shape inference of
/// `layer` all refuse an input of shape `shape` with an [`Error::Shape`] naming the layer.
pub fn check_rejects<L: Layer + Clone>(layer: &L, shape: &[usize]) {
    let name = layer.name().to_string();
    let x = Tensor::zeros(shape);
    let mut l = layer.clone();
    assert_shape_error(
        l.forward(&Dual::new(x.clone()), &mut Dual::default()),
        &name,
        shape,
    );
    assert_shape_error(layer.infer(&x, &mut Tensor::default()), &name, shape);
    assert_shape_error(layer.output_shape(shape), &name, shape);
}

/// Asserts that the backward refuses an output gradient whose shape differs from the
/// forward's output.
pub fn check_rejects_grad<L: Layer + Clone>(layer: &L, x: &Tensor) {
    let mut l = layer.clone();
    let mut y = Dual::default();
    l.forward(&Dual::new(x.clone()), &mut y).unwrap();
    let mut bad = y.primal().shape().to_vec();
    *bad.last_mut().unwrap() += 1;
    let r = Tensor::zeros(&bad);
    let name = format!("{} (backward)", l.name());
    assert_shape_error(
        l.backward(x, y.primal(), &r, Some(&mut Tensor::default())),
        &name,
        &bad,
    );
}
